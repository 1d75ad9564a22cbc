package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// loadOrCreateKey returns the install key at path, generating an
// ed25519 key (0600, its directory 0700) the first time.
func loadOrCreateKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		block, err := ssh.MarshalPrivateKey(priv, "pxe-anywhere install key")
		if err != nil {
			return nil, err
		}
		data = pem.EncodeToMemory(block)
		if err := writeSecret(path, data); err != nil {
			return nil, fmt.Errorf("install key: %w", err)
		}
		signer, err := ssh.NewSignerFromKey(priv)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
			return nil, fmt.Errorf("install key: %w", err)
		}
		return signer, nil
	}
	if err != nil {
		return nil, fmt.Errorf("install key: %w", err)
	}
	if err := checkPrivate(path); err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("install key %s: %w (an unencrypted OpenSSH private key is needed)", path, err)
	}
	return signer, nil
}

// loadOrCreateToken returns the API bearer token kept in path,
// generating one (0600) the first time.
func loadOrCreateToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		tok := hex.EncodeToString(b[:])
		if err := writeSecret(path, []byte(tok+"\n")); err != nil {
			return "", fmt.Errorf("API token: %w", err)
		}
		return tok, nil
	}
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	if err := checkPrivate(path); err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(data))
	if len(tok) < 16 {
		return "", fmt.Errorf("API token %s: shorter than 16 characters; write a longer random token or delete the file to have one generated", path)
	}
	return tok, nil
}

// writeSecret creates path with mode 0600 in a 0700 directory, never
// leaving a partly written or world-readable file behind.
func writeSecret(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// checkPrivate refuses a secret file that others can read.
func checkPrivate(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is readable by others (mode %o): chmod 600 it", path, st.Mode().Perm())
	}
	return nil
}
