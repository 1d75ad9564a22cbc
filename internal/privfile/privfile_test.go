package privfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteIsPrivateAndReplaces(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "secret")
	for _, body := range []string{"one", "two"} {
		if err := Write(p, []byte(body)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != body {
			t.Fatalf("read %q %v, want %q", b, err, body)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("mode %o", st.Mode().Perm())
		}
	}
	st, _ := os.Stat(filepath.Dir(p))
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %o", st.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestReadSecretRefusesOpenFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pw")
	if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadSecret(p); err != nil || s != "s3cret" {
		t.Fatalf("ReadSecret = %q, %v", s, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620} {
		os.Chmod(p, mode)
		s, err := ReadSecret(p)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("mode %o: ReadSecret = %q, %v; want a refusal that names chmod 600 and not the secret", mode, s, err)
		}
	}
	if err := CheckPrivate(dir); err == nil {
		t.Error("a directory passed as a private file")
	}
}
