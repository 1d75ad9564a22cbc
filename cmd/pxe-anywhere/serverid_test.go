package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// TestServerID: server.id wins; without it, an id is made once and kept
// in state_dir, so the next start is the same server (and knows its
// install claims); another state_dir is another server; a spoiled file
// is an error naming it.
func TestServerID(t *testing.T) {
	if id, err := serverID(profiles.Server{ID: "rack1", StateDir: t.TempDir()}); err != nil || id != "rack1" {
		t.Fatalf("server.id: %q %v", id, err)
	}
	dir := t.TempDir()
	first, err := serverID(profiles.Server{StateDir: dir})
	if err != nil || !profiles.ValidServerID(first) {
		t.Fatalf("made id %q: %v", first, err)
	}
	again, err := serverID(profiles.Server{StateDir: dir})
	if err != nil || again != first {
		t.Fatalf("second start: %q %v, want %q", again, err, first)
	}
	other, _ := serverID(profiles.Server{StateDir: t.TempDir()})
	if other == first {
		t.Fatalf("two state_dirs, one id %q", first)
	}
	os.WriteFile(filepath.Join(dir, serverIDFile), []byte("no good\n"), 0o644)
	if _, err := serverID(profiles.Server{StateDir: dir}); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, serverIDFile)) {
		t.Fatalf("spoiled file: %v", err)
	}
}
