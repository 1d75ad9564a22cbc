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
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/internal/privfile"
)

// loadOrCreateKey returns the install key at path, generating an
// ed25519 key (0600, its directory 0700) the first time.
func loadOrCreateKey(path string) (ssh.Signer, error) {
	data, err := privfile.Read(path)
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
		if err := privfile.Write(path, data); err != nil {
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
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("install key %s: %w (an unencrypted OpenSSH private key is needed)", path, err)
	}
	return signer, nil
}

// loadOrCreateToken returns the API bearer token kept in path,
// generating one (0600) the first time.
func loadOrCreateToken(path string) (string, error) {
	data, err := privfile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		tok := hex.EncodeToString(b[:])
		if err := privfile.Write(path, []byte(tok+"\n")); err != nil {
			return "", fmt.Errorf("API token: %w", err)
		}
		return tok, nil
	}
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if len(tok) < 16 {
		return "", fmt.Errorf("API token %s: shorter than 16 characters; write a longer random token or delete the file to have one generated", path)
	}
	return tok, nil
}
