package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// startServer serves a root holding a real iPXE binary (when installed),
// a random 3 MB file, and a symlink that points out of the root.
func startServer(t *testing.T) (*Server, string, map[string][]byte) {
	t.Helper()
	root := t.TempDir()
	files := map[string][]byte{}
	big := make([]byte, 3<<20+123)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	files["big.bin"] = big
	if b, err := os.ReadFile("/usr/lib/ipxe/undionly.kpxe"); err == nil {
		files["undionly.kpxe"] = b
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(root, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	s, err := New(root, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, s.Serve)
	return s, root, files
}

func port(s *Server) string { return fmt.Sprint(s.Addr().(*net.UDPAddr).Port) }

func TestRealClientsDownloadByteIdentical(t *testing.T) {
	netlab.Require(t, "tftp", "atftp", "curl")
	s, _, files := startServer(t)
	if _, ok := files["undionly.kpxe"]; !ok && os.Getenv("PXE_LAB_REQUIRED") == "1" {
		t.Fatal("/usr/lib/ipxe/undionly.kpxe missing (apt install ipxe)")
	}
	clients := []struct {
		name string
		cmd  func(file, out string) *exec.Cmd
	}{
		// tftp-hpa's client has no option negotiation: plain 512-byte blocks.
		{"tftp-hpa", func(file, out string) *exec.Cmd {
			return exec.Command("tftp", "-m", "binary", "127.0.0.1", port(s), "-c", "get", file, out)
		}},
		{"atftp blksize 1468", func(file, out string) *exec.Cmd {
			return exec.Command("atftp", "--option", "blksize 1468", "--option", "tsize 0", "-g", "-r", file, "-l", out, "127.0.0.1", port(s))
		}},
		{"curl blksize 1468", func(file, out string) *exec.Cmd {
			return exec.Command("curl", "-sS", "--tftp-blksize", "1468", "-o", out, "tftp://127.0.0.1:"+port(s)+"/"+file)
		}},
		{"curl default blksize", func(file, out string) *exec.Cmd {
			return exec.Command("curl", "-sS", "--tftp-no-options", "-o", out, "tftp://127.0.0.1:"+port(s)+"/"+file)
		}},
	}
	for _, c := range clients {
		for name, want := range files {
			t.Run(c.name+"/"+name, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "out")
				if b, err := c.cmd(name, out).CombinedOutput(); err != nil {
					t.Fatalf("%v: %s", err, b)
				}
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("download differs: %d bytes, want %d", len(got), len(want))
				}
			})
		}
	}
}

func TestRefusals(t *testing.T) {
	netlab.Require(t, "tftp", "curl")
	s, root, _ := startServer(t)
	for _, name := range []string{"../../etc/passwd", "/etc/passwd", "/../etc/passwd", "escape", `..\..\etc\passwd`, "nope.bin"} {
		t.Run("get "+name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			b, err := exec.Command("curl", "-sS", "-o", out, "tftp://127.0.0.1:"+port(s)+"/"+name).CombinedOutput()
			if err == nil {
				t.Fatalf("download of %q succeeded: %s", name, b)
			}
			if got, _ := os.ReadFile(out); bytes.Contains(got, []byte("root:")) {
				t.Fatal("/etc/passwd leaked")
			}
		})
	}
	t.Run("refusals counted", func(t *testing.T) {
		refused := value(s.transfers.WithLabelValues("refused")) + value(s.transfers.WithLabelValues("not-found"))
		if refused != 6 || value(s.transfers.WithLabelValues("ok")) != 0 {
			t.Fatalf("refused+not-found = %v, want 6; ok = %v, want 0", refused, value(s.transfers.WithLabelValues("ok")))
		}
	})
	t.Run("put refused", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "up")
		if err := os.WriteFile(src, []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
		b, _ := exec.Command("tftp", "-m", "binary", "127.0.0.1", port(s), "-c", "put", src, "up").CombinedOutput()
		if _, err := os.Stat(filepath.Join(root, "up")); err == nil {
			t.Fatalf("write request created a file: %s", b)
		}
		if !strings.Contains(strings.ToLower(string(b)), "error") {
			t.Fatalf("tftp put did not report an error: %s", b)
		}
	})
}

func TestFindIPXEDir(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		ok    bool
	}{
		{"empty dir", nil, false},
		{"only snponly.efi", []string{"snponly.efi"}, false},
		{"ipxe.efi", []string{"ipxe.efi"}, true},
		{"undionly.kpxe", []string{"undionly.kpxe"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := FindIPXEDir(dir)
			if tt.ok && (err != nil || got != dir) {
				t.Fatalf("FindIPXEDir(%s) = %q, %v", dir, got, err)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), dir)) {
				t.Fatalf("FindIPXEDir(%s) = %q, %v; want an error naming the dir", dir, got, err)
			}
		})
	}
	t.Run("found on this machine", func(t *testing.T) {
		if _, err := os.Stat("/usr/lib/ipxe/undionly.kpxe"); err != nil {
			if os.Getenv("PXE_LAB_REQUIRED") == "1" {
				t.Fatal("ipxe package not installed (apt install ipxe)")
			}
			t.Skip("ipxe package not installed")
		}
		if got, err := FindIPXEDir(""); err != nil || got != "/usr/lib/ipxe" {
			t.Fatalf("FindIPXEDir() = %q, %v", got, err)
		}
	})
}

func FuzzResolve(f *testing.F) {
	root := f.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		f.Fatal(err)
	}
	for _, n := range []string{"a", "sub/a", "../x", "/etc/passwd", `..\x`, "sub/../../x", "a\x00b", "//a", "."} {
		_ = os.WriteFile(filepath.Join(root, "a"), nil, 0o644)
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := Resolve(root, name)
		if err != nil {
			return
		}
		if p != root && !strings.HasPrefix(p, root+"/") {
			t.Fatalf("Resolve(%q) = %q, outside %q", name, p, root)
		}
	})
}

func TestAtftpNegotiatesBlksize(t *testing.T) {
	netlab.Require(t, "atftp")
	s, _, files := startServer(t)
	out := filepath.Join(t.TempDir(), "out")
	b, err := exec.Command("atftp", "--verbose", "--trace", "--option", "blksize 1468", "-g", "-r", "big.bin", "-l", out, "127.0.0.1", port(s)).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, files["big.bin"]) {
		t.Fatal("download differs")
	}
	for _, want := range []string{"received OACK <blksize: 1468", "DATA <block: 1, size 1468>"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Fatalf("atftp trace lacks %q:\n%s", want, b[:min(len(b), 2000)])
		}
	}
	if got := value(s.bytes); got != float64(len(files["big.bin"])) {
		t.Fatalf("tftp_bytes_sent_total = %v, want %d", got, len(files["big.bin"]))
	}
	if got := value(s.transfers.WithLabelValues("ok")); got != 1 {
		t.Fatalf("transfers{result=ok} = %v, want 1", got)
	}
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// serveUntilCleanup runs serve until the test ends and checks that it
// stopped cleanly.
func serveUntilCleanup(t *testing.T, serve func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// TestChangedFileServedFresh: files are served from memory after the
// first read; replacing one (an operator upgrading iPXE in place) must
// take effect on the next request, also when the size stays the same.
func TestChangedFileServedFresh(t *testing.T) {
	netlab.Require(t, "curl")
	s, root, files := startServer(t)
	get := func() []byte {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out")
		if b, err := exec.Command("curl", "-sS", "--tftp-blksize", "1468", "-o", out, "tftp://127.0.0.1:"+port(s)+"/big.bin").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if !bytes.Equal(get(), files["big.bin"]) {
		t.Fatal("first download differs")
	}
	path := filepath.Join(root, "big.bin")
	same := bytes.Repeat([]byte{0xa5}, len(files["big.bin"]))
	if err := os.WriteFile(path, same, 0o644); err != nil {
		t.Fatal(err)
	}
	// A coarse-grained mtime could leave the old value: move it on.
	later := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(get(), same) {
		t.Fatal("download after a same-size rewrite still has the old bytes")
	}
	shorter := []byte("replaced\n")
	if err := os.WriteFile(path, shorter, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := get(); !bytes.Equal(got, shorter) {
		t.Fatalf("download after shrinking the file: %d bytes, want %d", len(got), len(shorter))
	}
}
