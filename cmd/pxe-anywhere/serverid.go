package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// serverIDFile is where a server without server.id keeps the id it
// made up, in its state_dir, so that a restart knows its own install
// claims again.
const serverIDFile = "server-id"

// serverID is the id this server claims installs under: server.id, or
// else the one kept in state_dir, made once from the host name and a
// random suffix (two servers on one host have two state_dirs, so two
// ids).
func serverID(s profiles.Server) (string, error) {
	if s.ID != "" {
		return s.ID, nil
	}
	path := filepath.Join(s.StateDir, serverIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if !profiles.ValidServerID(id) {
			return "", fmt.Errorf("%s: bad server id %q: remove the file (a new id is made) or set server.id", path, id)
		}
		return id, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("server id: %w", err)
	}
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, strings.SplitN(host, ".", 2)[0])
	if len(host) > 40 {
		host = host[:40]
	}
	if host == "" {
		host = "server"
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return "", err
	}
	id := host + "-" + hex.EncodeToString(suffix)
	// Written whole beside the file, then linked into place: a crash or
	// a full disk never leaves an empty server-id behind, and of two
	// starts at once the second finds the first one's id.
	f, err := os.CreateTemp(s.StateDir, ".server-id-*")
	if err != nil {
		return "", fmt.Errorf("server id: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(id + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Link(f.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		return serverID(s)
	}
	if err != nil {
		return "", fmt.Errorf("server id: %w", err)
	}
	return id, nil
}
