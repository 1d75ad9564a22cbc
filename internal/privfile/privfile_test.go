package privfile

import (
	"os"
	"path/filepath"
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
