package tftp

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Stage copies the named iPXE binaries from src into dst and returns
// the names it copied; dst is what the server then serves. Distributions
// install iPXE as symlinks that leave its directory (Debian:
// /usr/lib/ipxe/ipxe.efi → /boot/ipxe.efi), which Resolve rightly
// refuses at request time; following them once here, where the operator
// chose src, keeps the request path strict. Names missing from src are
// skipped; a name that is not a regular file once resolved is an error.
func Stage(src, dst string, names []string) ([]string, error) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	var copied []string
	for _, name := range names {
		if name == "" || filepath.IsAbs(name) || !fs.ValidPath(filepath.ToSlash(name)) {
			return nil, fmt.Errorf("boot file %q: must be a relative path inside the iPXE directory", name)
		}
		in, err := os.Open(filepath.Join(src, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("boot file %s: %w", name, err)
		}
		st, err := in.Stat()
		if err != nil || !st.Mode().IsRegular() {
			in.Close()
			return nil, fmt.Errorf("boot file %s in %s is not a regular file", name, src)
		}
		out := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			in.Close()
			return nil, err
		}
		tmp, err := os.CreateTemp(filepath.Dir(out), ".stage-*")
		if err != nil {
			in.Close()
			return nil, err
		}
		_, err = io.Copy(tmp, in)
		in.Close()
		if err == nil {
			err = tmp.Chmod(0o644)
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), out)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return nil, fmt.Errorf("staging %s: %w", name, err)
		}
		copied = append(copied, name)
	}
	if len(copied) == 0 {
		return nil, fmt.Errorf("none of %v found in %s", names, src)
	}
	return copied, nil
}
