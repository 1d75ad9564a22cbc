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

// TestInNamespace fetches over a veth link inside a lab, as a PXE ROM
// on the lab network would.
func TestInNamespace(t *testing.T) {
	netlab.Require(t, "curl")
	lab := netlab.New(t, "10.78.0.0/24")
	cl := lab.Client("52:54:00:78:00:02")
	lab.Run(cl, "ip", "addr", "add", "10.78.0.50/24", "dev", "eth0")
	root := t.TempDir()
	want := []byte(strings.Repeat("pxe-anywhere ", 50000))
	if err := os.WriteFile(filepath.Join(root, "ipxe.efi"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(root, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	serveIn(t, lab.Server, s, lab.Addr.String()+":69")
	out := filepath.Join(t.TempDir(), "out")
	if b, err := lab.Command(cl, "curl", "-sS", "--tftp-blksize", "1468", "-o", out, "tftp://10.78.0.1/ipxe.efi").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
}

// serveIn runs s inside ns until the test ends. Per-transfer sockets
// would be opened from threads outside the namespace, so transfers use
// the listening socket; Serve itself runs in the namespace because
// pin/tftp looks up the receiving interface's MTU by index there.
func serveIn(t *testing.T, ns *netlab.NS, s *Server, addr string) {
	t.Helper()
	if err := netlab.Do(ns, func() error { return s.Listen(addr) }); err != nil {
		t.Fatal(err)
	}
	s.singlePort()
	serveUntilCleanup(t, func(ctx context.Context) error {
		return netlab.Do(ns, func() error { return s.Serve(ctx) })
	})
}

// serveUntilCleanup runs serve until the test ends, then checks that it
// stopped cleanly.
func serveUntilCleanup(t *testing.T, serve func(context.Context) error) {
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

// TestBlksizeNegotiated speaks RFC 2347 by hand over a veth link (MTU
// 1500; pin/tftp grants at most MTU-48) to see the OACK and the size of the
// first data block.
func TestBlksizeNegotiated(t *testing.T) {
	netlab.Require(t)
	lab := netlab.New(t, "10.79.0.0/24")
	cl := lab.Client("52:54:00:79:00:02")
	lab.Run(cl, "ip", "addr", "add", "10.79.0.50/24", "dev", "eth0")
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "big.bin"), make([]byte, 100000), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(root, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	serveIn(t, lab.Server, s, lab.Addr.String()+":69")
	var c net.PacketConn
	if err := netlab.Do(cl, func() (err error) { c, err = net.ListenPacket("udp4", "10.79.0.50:0"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := []byte("\x00\x01big.bin\x00octet\x00blksize\x001428\x00tsize\x000\x00")
	if _, err := c.WriteTo(req, &net.UDPAddr{IP: net.ParseIP("10.79.0.1"), Port: 69}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if buf[1] != 6 {
		t.Fatalf("want OACK (opcode 6), got opcode %d: %q", buf[1], buf[:n])
	}
	opts := strings.Split(string(buf[2:n]), "\x00")
	got := map[string]string{}
	for i := 0; i+1 < len(opts); i += 2 {
		got[opts[i]] = opts[i+1]
	}
	if got["blksize"] != "1428" || got["tsize"] != "100000" {
		t.Fatalf("OACK options %v, want blksize 1428 and tsize 100000", got)
	}
	if _, err := c.WriteTo([]byte{0, 4, 0, 0}, from); err != nil { // ACK 0 accepts the OACK
		t.Fatal(err)
	}
	n, _, err = c.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if buf[1] != 3 || n != 4+1428 {
		t.Fatalf("first DATA: opcode %d, %d bytes; want 3 and %d", buf[1], n, 4+1428)
	}
	_, _ = c.WriteTo([]byte{0, 5, 0, 0, 0}, from) // ERROR: stop the transfer
}

// TestAtftpNegotiatesBlksize checks, from a real client's side, that the
// server granted the block size asked for: atftp's trace prints the OACK
// and every DATA block with its size.
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
