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

// ErrReadableByOthers is what Read returns for a secret file whose mode
// lets its group or others read or write it.
var ErrReadableByOthers = errors.New("readable by others")

// Read returns the contents of a secret file (a password, a token),
// refusing one that its group or others may read or write: a secret
// that anyone on the host can read is no secret, and saying so at once
// beats finding out later.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is %w (mode %o): chmod 600 it", path, ErrReadableByOthers, st.Mode().Perm())
	}
	// A secret file is small; a huge one is a mistake, not a password.
	const maxSecret = 64 << 10
	data, err := io.ReadAll(io.LimitReader(f, maxSecret+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSecret {
		return nil, fmt.Errorf("%s: larger than %d bytes: not a secret file", path, maxSecret)
	}
	return data, nil
}
