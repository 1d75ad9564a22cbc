// Package privfile writes files that only their owner may read (keys,
// tokens, leases), atomically: a reader or a crash sees the old file or
// the new one, never a partial or world-readable one; and reads secret
// files, refusing those that others can read.
package privfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Write replaces path with data, mode 0600, creating its directory
// (0700) if needed.
func Write(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
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
	// Flushed before the rename, so a crash leaves the old file or the
	// new one, never an empty one.
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// ErrReadableByOthers is what the readers return for a secret file
// whose mode lets its group or others read or write it.
var ErrReadableByOthers = errors.New("readable by others")

// maxSecret bounds a secret file: a huge one is a mistake, not a password.
const maxSecret = 64 << 10

// checkMode refuses what is not a regular file that only its owner may
// read or write: a secret that anyone on the host can read is no
// secret, and saying so at once beats finding out later.
func checkMode(path string, st os.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is %w (mode %o): chmod 600 it", path, ErrReadableByOthers, st.Mode().Perm())
	}
	return nil
}

// CheckPrivate returns an error unless path is a regular file that no
// one but its owner may read or write.
func CheckPrivate(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkMode(path, st)
}

// Read returns the contents of a secret file (a password, a token),
// refusing one that CheckPrivate refuses or that is over 64 KiB. The
// mode is checked on the open file, so a swap after the check changes
// nothing.
func Read(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO (or a device) put where a secret
	// should be must not wait for a writer; the mode check refuses it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkMode(path, st); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSecret+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSecret {
		return nil, fmt.Errorf("%s: larger than %d bytes: not a secret file", path, maxSecret)
	}
	return data, nil
}

// ReadSecret reads a one-line secret from a file that Read accepts,
// without its line end. The secret never appears in an error.
func ReadSecret(path string) (string, error) {
	b, err := Read(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}
