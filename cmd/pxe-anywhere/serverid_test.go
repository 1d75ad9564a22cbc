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

// TestServerIDStartsAtOnce: servers that start at once on one fresh
// state_dir agree on one id (the file is made whole, then linked into
// place), and no temporary file stays behind.
func TestServerIDStartsAtOnce(t *testing.T) {
	dir := t.TempDir()
	ids := make(chan string, 8)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			id, err := serverID(profiles.Server{StateDir: dir})
			ids <- id
			errs <- err
		}()
	}
	first := ""
	for range 8 {
		id, err := <-ids, <-errs
		if err != nil {
			t.Fatalf("a start at once: %v", err)
		}
		if first == "" {
			first = id
		}
		if id != first {
			t.Fatalf("two ids for one state_dir: %q and %q", first, id)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != serverIDFile {
		t.Fatalf("state_dir holds %v, want only %s", entries, serverIDFile)
	}
}
