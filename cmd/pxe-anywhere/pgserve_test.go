package main

import (
	"fmt"
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

// writeConfig writes name (in dir) and returns its path: a config on
// this database, with state in stateDir, authoritative DHCP on net
// ("10.141.0": its /24, leasing .100 to .120), the test image and the
// web profile; server holds extra lines under server: (indented two
// spaces), tail the sections after profiles: (machines:, rules:).
func (s *pgServe) writeConfig(t *testing.T, name, stateDir, server, net, tail string) string {
	t.Helper()
	path := filepath.Join(s.dir, name)
	text := fmt.Sprintf(`server:
  interfaces: [br0]
  state_dir: %[1]s
  database: %[2]s
  database_password_file: %[3]s
%[4]sdhcp:
  mode: authoritative
  subnet: %[5]s.0/24
  range: [%[5]s.100, %[5]s.120]
images:
  test: {kernel: %[6]s/bzImage, initrd: [%[6]s/initrd]}
profiles:
  web:
    image: test
    store_paths: {disko: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko, system: /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system}
%[7]s`, stateDir, s.pg.URLWithoutPassword(s.db), s.pwfile, server, net, s.dir, tail)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
