package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// startServer serves a root holding a real iPXE binary (when installed),
// a random 3 MB file, and symlinks that point out of the root.
func startServer(t *testing.T) (*Server, string, map[string][]byte) {
	return startServerLogging(t, io.Discard)
}

// startServerLogging is startServer with the server's log, as JSON
// lines, going to w.
func startServerLogging(t *testing.T, w io.Writer) (*Server, string, map[string][]byte) {
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
	for name, target := range map[string]string{
		"escape": "/etc/passwd",
		"etcdir": "/etc",
		// Relative, and deep enough to climb out of any temp dir.
		"climb": strings.Repeat("../", 16),
	} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(root, slog.New(slog.NewJSONHandler(w, nil)), nil)
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

// escapes are names a client may send to read outside the root: dot
// segments, deep or after a directory, with slashes or the backslashes
// of old ROMs; absolute paths (served from the root, where they do not
// exist); and symlinks in the root that point out of it.
var escapes = []string{
	"../../../../etc/passwd",
	strings.Repeat("../", 40) + "etc/passwd",
	"/../etc/passwd",
	"a/../../etc/passwd",
	"big.bin/../../etc/passwd",
	`..\..\..\..\etc\passwd`,
	`\..\etc\passwd`,
	`a\..\..\etc\passwd`,
	`..\../..\../etc/passwd`,
	"/etc/passwd",
	"//etc/passwd",
	`\etc\passwd`,
	"escape",
	"etcdir/passwd",
	"climb/etc/passwd",
}

// TestRefusals sends every escape, as written, with each real client
// and requires the server to refuse it and the client to get no byte.
// curl resolves dot segments itself unless told --path-as-is, and
// tftp-hpa reports a server error but exits 0: the server's own log
// says whether it saw the name unchanged, and the counters whether it
// refused.
func TestRefusals(t *testing.T) {
	netlab.Require(t, "tftp", "atftp", "curl")
	var log lockedBuffer
	s, root, _ := startServerLogging(t, &log)
	clients := []struct {
		name string
		cmd  func(ctx context.Context, file, out string) *exec.Cmd
	}{
		{"tftp-hpa", func(ctx context.Context, file, out string) *exec.Cmd {
			return exec.CommandContext(ctx, "tftp", "-m", "binary", "127.0.0.1", port(s), "-c", "get", file, out)
		}},
		{"atftp", func(ctx context.Context, file, out string) *exec.Cmd {
			return exec.CommandContext(ctx, "atftp", "-g", "-r", file, "-l", out, "127.0.0.1", port(s))
		}},
		{"curl --path-as-is", func(ctx context.Context, file, out string) *exec.Cmd {
			return exec.CommandContext(ctx, "curl", "-sS", "--path-as-is", "-o", out, "tftp://127.0.0.1:"+port(s)+"/"+file)
		}},
	}
	names := append([]string{"nope.bin"}, escapes...)
	for _, c := range clients {
		for _, name := range names {
			t.Run(c.name+" "+name, func(t *testing.T) {
				refused := value(s.transfers.WithLabelValues("refused")) + value(s.transfers.WithLabelValues("not-found"))
				ok := value(s.transfers.WithLabelValues("ok"))
				out := filepath.Join(t.TempDir(), "out")
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				b, err := c.cmd(ctx, name, out).CombinedOutput()
				if got, _ := os.ReadFile(out); len(got) > 0 {
					t.Fatalf("%s received %d bytes for %q (/etc/passwd: %v)", c.name, len(got), name, bytes.Contains(got, []byte("root:")))
				}
				if err == nil && !bytes.Contains(b, []byte("Error code")) {
					t.Fatalf("%s reported no error for %q: %s", c.name, name, b)
				}
				if got := value(s.transfers.WithLabelValues("refused")) + value(s.transfers.WithLabelValues("not-found")); got != refused+1 {
					t.Fatalf("refused+not-found went from %v to %v for %q, want one more; client said: %s", refused, got, name, b)
				}
				if got := value(s.transfers.WithLabelValues("ok")); got != ok {
					t.Fatalf("transfers{result=ok} went from %v to %v for %q", ok, got, name)
				}
				if !log.refused(t, name) {
					t.Fatalf("server logged no refusal of %q as sent: the client changed the name, so the test proves nothing", name)
				}
			})
		}
	}
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

// lockedBuffer collects the server's JSON log lines.
type lockedBuffer struct{ syncbuf.Buffer }

// refused says whether the server logged a refusal of exactly name.
func (b *lockedBuffer) refused(t *testing.T, name string) bool {
	t.Helper()
	for _, l := range strings.Split(b.String(), "\n") {
		if l == "" {
			continue
		}
		var rec struct{ Msg, File string }
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("server log line %q: %v", l, err)
		}
		if rec.Msg == "tftp request refused" && rec.File == name {
			return true
		}
	}
	return false
}

// TestResolve checks the resolver alone, on names no client would
// send unchanged as well as on those it would.
func TestResolve(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub"), 0o755))
	must(os.WriteFile(filepath.Join(root, "a"), []byte("a"), 0o644))
	must(os.WriteFile(filepath.Join(root, "sub", "b"), []byte("b"), 0o644))
	for name, target := range map[string]string{
		"escape":  "/etc/passwd",
		"etcdir":  "/etc",
		"climb":   strings.Repeat("../", 16),
		"sibling": "../outside",   // a file next to the root
		"inside":  "sub/b",        // stays in the root: allowed
		"subdir":  "sub",          // likewise
		"loop":    "loop",         // never resolves
		"dangles": "sub/not-here", // points at nothing
	} {
		must(os.Symlink(target, filepath.Join(root, name)))
	}
	// The root seen through a symlink: what the server was given may
	// not be the real path, and that must not refuse everything.
	linked := filepath.Join(t.TempDir(), "linked-root")
	must(os.Symlink(root, linked))
	real, err := filepath.EvalSymlinks(root)
	must(err)
	deep := strings.Repeat("../", 60) + "etc/passwd"
	tests := []struct {
		name     string
		root     string // "": root
		file     string
		want     string // path under the real root; "": refused
		notExist bool   // refused with fs.ErrNotExist
	}{
		{name: "plain", file: "a", want: "a"},
		{name: "in a directory", file: "sub/b", want: "sub/b"},
		{name: "leading slash", file: "/a", want: "a"},
		{name: "leading slashes", file: "///sub/b", want: "sub/b"},
		{name: "backslashes", file: `sub\b`, want: "sub/b"},
		{name: "leading backslash", file: `\sub\b`, want: "sub/b"},
		{name: "dot segment", file: "./sub/./b", want: "sub/b"},
		{name: "symlink inside the root", file: "inside", want: "sub/b"},
		{name: "through a symlinked directory inside the root", file: "subdir/b", want: "sub/b"},
		{name: "root given through a symlink", root: linked, file: "sub/b", want: "sub/b"},

		{name: "dot-dot", file: "../etc/passwd"},
		{name: "deep dot-dot", file: "../../../../../../../../etc/passwd"},
		{name: "deeper than any path", file: deep},
		{name: "dot-dot after a slash", file: "/../etc/passwd"},
		{name: "dot-dot after a directory", file: "a/../../etc/passwd"},
		{name: "dot-dot after dot", file: "./../etc/passwd"},
		{name: "dot-dot at the end", file: "sub/../.."},
		{name: "only dot-dot", file: ".."},
		{name: "dot-dot slash", file: "../"},
		// Refused although it stays inside: no ".." is ever followed,
		// so where one would land never has to be worked out.
		{name: "dot-dot that stays inside", file: "sub/../a"},
		{name: "dot-dot with backslashes", file: `..\..\..\..\etc\passwd`},
		{name: "dot-dot after a backslash", file: `\..\etc\passwd`},
		{name: "dot-dot after a directory, backslashes", file: `sub\..\..\etc\passwd`},
		{name: "mixed separators", file: `..\../..\../etc/passwd`},
		{name: "dot-dot through a symlinked root", root: linked, file: "../linked-root/a"},
		{name: "symlink to a file outside", file: "escape"},
		{name: "symlink to a directory outside", file: "etcdir/passwd"},
		{name: "relative symlink climbing out", file: "climb/etc/passwd"},
		{name: "symlink to the root's sibling", file: "sibling"},
		{name: "symlink loop", file: "loop"},
		{name: "NUL", file: "a\x00b"},
		{name: "NUL after dot-dot", file: "../etc/passwd\x00"},
		{name: "empty", file: ""},
		{name: "only slashes", file: "//"},
		{name: "too long", file: strings.Repeat("a/", 128) + "a"},

		{name: "absolute path is looked up in the root", file: "/etc/passwd", notExist: true},
		{name: "absolute path with backslashes", file: `\etc\passwd`, notExist: true},
		{name: "missing", file: "nope.bin", notExist: true},
		{name: "dangling symlink", file: "dangles", notExist: true},
	}
	must(os.WriteFile(filepath.Join(filepath.Dir(root), "outside"), []byte("outside"), 0o644))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.root
			if r == "" {
				r = root
			}
			got, err := Resolve(r, tt.file)
			if tt.want != "" {
				if want := filepath.Join(real, tt.want); err != nil || got != want {
					t.Fatalf("Resolve(%q) = %q, %v; want %q", tt.file, got, err, want)
				}
				return
			}
			if err == nil || got != "" {
				t.Fatalf("Resolve(%q) = %q, %v; want it refused", tt.file, got, err)
			}
			if errors.Is(err, fs.ErrNotExist) != tt.notExist {
				t.Fatalf("Resolve(%q): %v; want errors.Is(err, fs.ErrNotExist) = %v", tt.file, err, tt.notExist)
			}
			// The error goes to the client: it names what was asked,
			// never a server path.
			if strings.Contains(err.Error(), root) || strings.Contains(err.Error(), real) {
				t.Fatalf("Resolve(%q): error %q reveals the root", tt.file, err)
			}
		})
	}
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

// TestWindowSendsAhead: with SetWindow(8) the server sends blocks 2 to 8
// before block 1 is acknowledged; in lock step (the default) it sends
// nothing more until then. Real clients download byte-identical files
// either way (tftp-hpa, atftp with blksize 1468, curl).
func TestWindowSendsAhead(t *testing.T) {
	netlab.RequireTools(t, "tftp", "atftp", "curl")
	for _, window := range []int{1, 8} {
		t.Run(fmt.Sprint("window ", window), func(t *testing.T) {
			root := t.TempDir()
			big := make([]byte, 1<<20+77)
			rand.Read(big)
			os.WriteFile(filepath.Join(root, "big.bin"), big, 0o644)
			s, err := New(root, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
			if err != nil {
				t.Fatal(err)
			}
			s.SetWindow(window)
			if err := s.Listen("127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
			serveUntilCleanup(t, s.Serve)
			addr := s.Addr().String()

			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.WriteTo([]byte("\x00\x01big.bin\x00octet\x00"), s.Addr())
			var blocks []int
			buf := make([]byte, 600)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					break
				}
				if n >= 4 && buf[1] == 3 {
					blocks = append(blocks, int(buf[2])<<8|int(buf[3]))
				}
			}
			want := []int{1}
			if window == 8 {
				want = []int{1, 2, 3, 4, 5, 6, 7, 8}
			}
			if fmt.Sprint(blocks) != fmt.Sprint(want) {
				t.Fatalf("blocks sent before any ACK (2 s): %v, want %v", blocks, want)
			}

			host, p, _ := net.SplitHostPort(addr)
			out := filepath.Join(t.TempDir(), "out")
			for _, cmd := range [][]string{
				{"tftp", host, p, "-m", "binary", "-c", "get", "big.bin", out},
				{"atftp", "--option", "blksize 1468", "-g", "-r", "big.bin", "-l", out, host, p},
				{"curl", "-sS", "--max-time", "30", "-o", out, "tftp://" + addr + "/big.bin"},
			} {
				os.Remove(out)
				if b, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v %s", cmd[0], err, b)
				}
				if got, _ := os.ReadFile(out); !bytes.Equal(got, big) {
					t.Fatalf("%s with window %d: download differs", cmd[0], window)
				}
			}
		})
	}
}
