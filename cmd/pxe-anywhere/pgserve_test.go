package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/internal/pgtest"
)

// pgServe is what a test of the real binary on PostgreSQL starts from:
// a PostgreSQL server of its own with a fresh database, the binary
// built into dir, the database password in a private file, and an
// ipxe_dir and image files that config check accepts.
type pgServe struct {
	pg                     *pgtest.Server
	db                     string // the database's name
	dir, bin, pwfile, ipxe string
}

func newPGServe(t *testing.T) *pgServe {
	t.Helper()
	pg, db := pgtest.ForTest(t)
	s := &pgServe{pg: pg, db: db, dir: t.TempDir()}
	s.bin = filepath.Join(s.dir, "pxe-anywhere")
	if out, err := exec.Command("go", "build", "-o", s.bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	s.pwfile = filepath.Join(s.dir, "db-password")
	s.ipxe = filepath.Join(s.dir, "ipxe")
	files := map[string]string{
		s.pwfile:                               pg.Password + "\n",
		filepath.Join(s.ipxe, "undionly.kpxe"): "undionly",
		filepath.Join(s.dir, "bzImage"):        "bzImage",
		filepath.Join(s.dir, "initrd"):         "initrd",
	}
	for path, data := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return s
}
