package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

const newRun = `#!/bin/sh
set -eux
init="/nix/store/aaaa-nixos-system/init"
kernelParams="console=ttyS0,115200n8 console=tty0 loglevel=4"
`

// realRun is the shape of nixos-images' current kexec-run.sh after Nix
// substituted it: variables, then a single-quoted command line using them.
const realRun = `#!/bin/sh
set -eux
kexec_extra_flags=""
# provided by nix
init="/nix/store/9999-nixos-system-nixos-kexec/init"
kernelParams="console=tty0 console=ttyS0,115200 loglevel=7"
SCRIPT_DIR=$(dirname "$(readlink -f "$0")")
if ! sh -c "'$SCRIPT_DIR/kexec' --load '$SCRIPT_DIR/bzImage' \\
  --initrd='$SCRIPT_DIR/initrd' --no-checks \\
  --command-line 'init=$init $kernelParams'"
then
  exit 1
fi
`

const oldRun = `#!/usr/bin/env bash
"$SCRIPT_DIR/kexec" --load "${SCRIPT_DIR}/bzImage" \
  --initrd=final-initrd \
  --command-line "init=/nix/store/bbbb-nixos-system/init console=ttyS0 loglevel=4"
`

// tarball builds a gzip'd tar of regular files, then of the extra
// headers (links), as archive/tar would read them from a real one.
func tarball(t testing.TB, members map[string]string, extra ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range members {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range extra {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

func newCache(t *testing.T) *Cache {
	return NewCache(filepath.Join(t.TempDir(), "cache"), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestKexecTarballBothRunForms(t *testing.T) {
	tests := []struct {
		name, run, init, params string
	}{
		{"variables", newRun, "/nix/store/aaaa-nixos-system/init", "console=ttyS0,115200n8 console=tty0 loglevel=4"},
		{"current kexec-run.sh", realRun, "/nix/store/9999-nixos-system-nixos-kexec/init", "console=tty0 console=ttyS0,115200 loglevel=7"},
		{"command-line", oldRun, "/nix/store/bbbb-nixos-system/init", "console=ttyS0 loglevel=4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := tarball(t, map[string]string{"kexec/bzImage": "KERNEL", "kexec/initrd": "INITRD", "kexec/run": tt.run, "kexec/kexec": "x", "kexec/ip": "y"})
			path := filepath.Join(t.TempDir(), "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz")
			if err := os.WriteFile(path, tb, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := newCache(t).Prepare(context.Background(), Source{Name: "n", KexecTarball: path}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if img.Init != tt.init || strings.Join(img.Params, " ") != tt.params || !img.Restores || img.Kind != "kexec" {
				t.Fatalf("got %+v", img)
			}
			if b, _ := os.ReadFile(img.Kernel); string(b) != "KERNEL" {
				t.Fatalf("kernel %q", b)
			}
			if b, _ := os.ReadFile(img.Initrds[0]); string(b) != "INITRD" {
				t.Fatalf("initrd %q", b)
			}
		})
	}
}

func TestKexecTarballRefusals(t *testing.T) {
	good := map[string]string{"kexec/bzImage": "x", "kexec/initrd": "x", "kexec/run": newRun}
	tests := []struct {
		name    string
		members map[string]string
		extra   []*tar.Header
		want    string
	}{
		{"dot-dot entry", map[string]string{"../kexec/bzImage": "x", "kexec/initrd": "x", "kexec/run": newRun}, nil, "points outside"},
		{"absolute entry", map[string]string{"/kexec/bzImage": "x", "kexec/initrd": "x", "kexec/run": newRun}, nil, "points outside"},
		{"symlink out", good, []*tar.Header{{Name: "kexec/evil", Linkname: "../../../etc/passwd", Typeflag: tar.TypeSymlink}}, "points outside"},
		{"missing initrd", map[string]string{"kexec/bzImage": "x", "kexec/run": newRun}, nil, "missing kexec/initrd"},
		{"no init", map[string]string{"kexec/bzImage": "x", "kexec/initrd": "x", "kexec/run": "#!/bin/sh\necho hi\n"}, nil, "not a nixos-images kexec run script"},
		{"init placeholder never substituted", map[string]string{"kexec/bzImage": "x", "kexec/initrd": "x", "kexec/run": "init=\"@init@\"\n"}, nil, "not a nixos-images kexec run script"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "x.tar.gz")
			if err := os.WriteFile(path, tarball(t, tt.members, tt.extra...), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := newCache(t).Prepare(context.Background(), Source{Name: "n", KexecTarball: path}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "kexec")); err == nil {
				t.Fatal("a tar entry escaped")
			}
		})
	}
}

func TestFetchVerifiesAndCaches(t *testing.T) {
	body := tarball(t, map[string]string{"kexec/bzImage": "K", "kexec/initrd": "I", "kexec/run": newRun})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/img.tar.gz" {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	c := newCache(t)
	ctx := context.Background()
	var last int64
	img, err := c.Prepare(ctx, Source{Name: "n", KexecTarball: srv.URL + "/img.tar.gz", SHA256: sum(body)}, func(done, total int64) { last = done })
	if err != nil {
		t.Fatal(err)
	}
	if last != int64(len(body)) || img.Init != "/nix/store/aaaa-nixos-system/init" {
		t.Fatalf("progress %d of %d, image %+v", last, len(body), img)
	}
	if _, err := c.Prepare(ctx, Source{Name: "n", KexecTarball: srv.URL + "/img.tar.gz", SHA256: sum(body)}, nil); err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 1 {
		t.Fatalf("%d requests, want 1 (cached)", hits.Load())
	}
	if filepath.Dir(img.Kernel) != filepath.Join(c.dir, sum(body)) {
		t.Fatalf("kernel unpacked to %s, want under %s", img.Kernel, filepath.Join(c.dir, sum(body)))
	}
	// A cached file that no longer matches its name is fetched again.
	cached := filepath.Join(c.dir, "sha256-"+sum(body)+".tar.gz")
	if err := os.WriteFile(cached, []byte("bit rot"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Fetch(ctx, srv.URL+"/img.tar.gz", sum(body), nil); err != nil || p != cached {
		t.Fatalf("Fetch = %q, %v", p, err)
	}
	if b, _ := os.ReadFile(cached); !bytes.Equal(b, body) || hits.Load() != 2 {
		t.Fatalf("corrupt cache not replaced: %d requests, %d bytes", hits.Load(), len(b))
	}
	_, err = c.Fetch(ctx, srv.URL+"/img.tar.gz", strings.Repeat("0", 64), nil)
	if err == nil || !strings.Contains(err.Error(), "sha256 is "+sum(body)) {
		t.Fatalf("mismatch: %v", err)
	}
	if _, err := c.Fetch(ctx, srv.URL+"/missing", strings.Repeat("1", 64), nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("404: %v", err)
	}
	// Without a checksum (install --kexec-download-locally) the first
	// download's sum is remembered for the URL and the file reused.
	c2 := newCache(t)
	before := hits.Load()
	p1, err := c2.Fetch(ctx, srv.URL+"/img.tar.gz", "", nil)
	if err != nil || !strings.HasSuffix(p1, "sha256-"+sum(body)+".tar.gz") {
		t.Fatalf("fetch without a sum: %q %v", p1, err)
	}
	p2, err := c2.Fetch(ctx, srv.URL+"/img.tar.gz", "", nil)
	if err != nil || p2 != p1 || hits.Load() != before+1 {
		t.Fatalf("second fetch without a sum: %q %v, %d requests", p2, err, hits.Load()-before)
	}
	if _, err := c2.Fetch(ctx, srv.URL+"/img.tar.gz", "abc", nil); err == nil {
		t.Fatal("a malformed sha256 was accepted")
	}
}

func TestIsURL(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{name: "https", in: "https://github.com/nix-community/nixos-images/releases/x.tar.gz", want: true},
		{name: "http with port", in: "http://10.0.0.1:8080/x.tar.gz", want: true},
		{name: "scheme in capitals", in: "HTTP://example.org/x.tar.gz", want: true},
		{name: "absolute path", in: "/srv/images/x.tar.gz"},
		{name: "relative path with a colon", in: "http:x.tar.gz"},
		{name: "no host", in: "http:///x.tar.gz"},
		{name: "other scheme", in: "ftp://example.org/x.tar.gz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsURL(tc.in); got != tc.want {
				t.Errorf("IsURL(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// A URL whose scheme is in capitals is still downloaded, not opened as
// a local file.
func TestKexecTarballURLSchemeAnyCase(t *testing.T) {
	body := tarball(t, map[string]string{"kexec/bzImage": "K", "kexec/initrd": "I", "kexec/run": newRun})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	t.Cleanup(srv.Close)
	u := "HTTP://" + strings.TrimPrefix(srv.URL, "http://") + "/img.tar.gz"
	img, err := newCache(t).Prepare(context.Background(), Source{Name: "n", KexecTarball: u, SHA256: sum(body)}, nil)
	if err != nil {
		t.Fatalf("Prepare(%s): %v", u, err)
	}
	if img.Init != "/nix/store/aaaa-nixos-system/init" {
		t.Fatalf("image %+v", img)
	}
}

func TestProgressReader(t *testing.T) {
	const size = 5<<20/2 + 7 // 2.5 MiB and a bit
	var reports []int64
	pr := NewProgressReader(bytes.NewReader(make([]byte, size)), size, func(done, total int64) {
		if total != size {
			t.Errorf("total %d, want %d", total, size)
		}
		reports = append(reports, done)
	})
	if _, err := io.Copy(io.Discard, pr); err != nil {
		t.Fatal(err)
	}
	if len(reports) != 3 || reports[len(reports)-1] != size {
		t.Fatalf("reports %v: want one per MiB and one at the end (%d)", reports, size)
	}
	for i := 1; i < len(reports)-1; i++ {
		if reports[i]-reports[i-1] < 1<<20 {
			t.Errorf("reports %v: less than a MiB apart", reports)
		}
	}
}

func TestNetbootDirs(t *testing.T) {
	// A store-like tree: the system toplevel (recognised by activate) and
	// the helper path that nixos-images' symlinkJoin points init through.
	store := t.TempDir()
	toplevel := filepath.Join(store, "eeee-nixos-system")
	helper := filepath.Join(store, "ffff-kernel-params")
	for _, d := range []string{toplevel, helper} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for n, b := range map[string]string{"activate": "#!/bin/sh\n", "init": "#!/bin/sh\n", "kernel-params": "loglevel=4 console=ttyS0\n"} {
		if err := os.WriteFile(filepath.Join(toplevel, n), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"init", "kernel-params"} {
		if err := os.Symlink(filepath.Join(toplevel, n), filepath.Join(helper, n)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		files    map[string]string // name → content
		links    map[string]string // name → target
		init     string
		params   string
		restores bool
	}{
		{
			name:  "netboot-installer build, store elsewhere",
			files: map[string]string{"bzImage": "K", "initrd": "I", "kernel-params": "console=ttyS0 loglevel=4\n"},
			links: map[string]string{"init": "/nix/store/cccc-nixos-system/init"},
			init:  "/nix/store/cccc-nixos-system/init", params: "console=ttyS0 loglevel=4", restores: true,
		},
		{
			name:  "netboot-installer build, symlinkJoin through a helper path",
			files: map[string]string{"bzImage": "K", "initrd": "I"},
			links: map[string]string{"init": filepath.Join(helper, "init"), "kernel-params": filepath.Join(helper, "kernel-params")},
			init:  filepath.Join(toplevel, "init"), params: "loglevel=4 console=ttyS0", restores: true,
		},
		{
			name: "plain upstream netboot does not restore keys",
			files: map[string]string{"bzImage-x86_64-linux": "K", "initrd-x86_64-linux": "I",
				"netboot-x86_64-linux.ipxe": "#!ipxe\nkernel bzImage init=/nix/store/dddd/init initrd=initrd loglevel=4\ninitrd initrd\nboot\n"},
			init: "/nix/store/dddd/init", params: "loglevel=4", restores: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, b := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, n), []byte(b), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for n, target := range tt.links {
				if err := os.Symlink(target, filepath.Join(dir, n)); err != nil {
					t.Fatal(err)
				}
			}
			img, err := newCache(t).Prepare(context.Background(), Source{Name: "nb", NetbootDir: dir}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if img.Init != tt.init || strings.Join(img.Params, " ") != tt.params || img.Restores != tt.restores || img.Kind != "netboot" {
				t.Fatalf("got %+v; want init %s, params %q, restores %v", img, tt.init, tt.params, tt.restores)
			}
		})
	}
	t.Run("no init", func(t *testing.T) {
		dir := t.TempDir()
		for _, n := range []string{"bzImage", "initrd"} {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := newCache(t).Prepare(context.Background(), Source{Name: "nb", NetbootDir: dir}, nil); err == nil || !strings.Contains(err.Error(), "no init") {
			t.Fatalf("err = %v, want one about the missing init", err)
		}
	})
}

func TestExplicitFiles(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"k", "i1", "i2"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		src    Source
		init   string
		params string
		err    string
	}{
		{"init and params", Source{Kernel: filepath.Join(dir, "k"), Initrd: []string{filepath.Join(dir, "i1"), filepath.Join(dir, "i2")}, Cmdline: "init=/nix/store/x/init  loglevel=4 console=ttyS0"}, "/nix/store/x/init", "loglevel=4 console=ttyS0", ""},
		{"no init", Source{Kernel: filepath.Join(dir, "k"), Cmdline: "quiet"}, "", "quiet", ""},
		{"missing initrd", Source{Kernel: filepath.Join(dir, "k"), Initrd: []string{filepath.Join(dir, "nope")}}, "", "", "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.src.Name = "custom"
			img, err := newCache(t).Prepare(context.Background(), tt.src, nil)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Init != tt.init || strings.Join(img.Params, " ") != tt.params || img.Restores || img.Kind != "files" {
				t.Fatalf("got %+v", img)
			}
		})
	}
}

func FuzzParseRun(f *testing.F) {
	f.Add([]byte(newRun))
	f.Add([]byte(oldRun))
	f.Add([]byte(realRun))
	f.Add([]byte(`init="@init@"`))
	f.Add([]byte(`init="/nix/store/a b/init"`))
	f.Add([]byte(`--command-line "init=/nix/store/x/init"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		init, params, err := ParseRun(b)
		if err != nil {
			return
		}
		if !strings.HasPrefix(init, "/nix/store/") || strings.ContainsAny(init, " \t\n\"'") {
			t.Fatalf("accepted init %q", init)
		}
		for _, p := range params {
			if p == "" || strings.ContainsAny(p, " \t\n") {
				t.Fatalf("param %q is not one word", p)
			}
		}
	})
}

// FuzzUnpack feeds arbitrary bytes as a kexec tarball: unpack must fail
// cleanly or produce exactly the three boot files inside its dir.
func FuzzUnpack(f *testing.F) {
	f.Add(tarball(f, map[string]string{"kexec/bzImage": "K", "kexec/initrd": "I", "kexec/run": newRun}))
	f.Add(tarball(f, map[string]string{"../kexec/bzImage": "K"}))
	f.Add([]byte("\x1f\x8b\x08\x00garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		base := t.TempDir()
		src := filepath.Join(base, "in.tar.gz")
		if err := os.WriteFile(src, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c := NewCache(filepath.Join(base, "cache"), slog.New(slog.NewTextHandler(io.Discard, nil)))
		c.maxMember = 1 << 20 // a few bytes of input can claim gigabytes of zeros
		dir := filepath.Join(c.dir, "out")
		if err := c.unpack(src, dir); err != nil {
			return
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 3 {
			t.Fatalf("unpacked %d entries (%v), want bzImage, initrd, run", len(entries), err)
		}
		top, _ := os.ReadDir(base)
		if len(top) != 2 {
			t.Fatalf("unpack wrote outside its cache: %v", top)
		}
	})
}

// Without a configured checksum, the one remembered for a URL picks the
// cached file but does not bind the next download: when the URL comes to
// serve another file (nixos-images' rolling releases) and the cached copy
// is gone, the new file is taken, with a warning that names both
// checksums. A configured checksum stays binding.
func TestFetchWithoutSumFollowsTheURL(t *testing.T) {
	var served atomic.Pointer[[]byte]
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write(*served.Load())
	}))
	t.Cleanup(srv.Close)
	serve := func(s string) []byte { b := []byte(s); served.Store(&b); return b }
	var logs bytes.Buffer
	c := NewCache(filepath.Join(t.TempDir(), "cache"), slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	url := srv.URL + "/nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"
	cached := func(b []byte) string { return filepath.Join(c.dir, "sha256-"+sum(b)+".tar.gz") }
	// fetch fetches url without a sum and checks what it got: the file
	// with body want, after n more requests.
	fetch := func(step string, want []byte, n int32) {
		t.Helper()
		before := hits.Load()
		p, err := c.Fetch(ctx, url, "", nil)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if b, _ := os.ReadFile(p); p != cached(want) || !bytes.Equal(b, want) {
			t.Fatalf("%s: got %s holding %q, want %s", step, p, b, cached(want))
		}
		if got := hits.Load() - before; got != n {
			t.Fatalf("%s: %d requests, want %d", step, got, n)
		}
	}
	changed := func(old, new []byte) string {
		return "old_sha256=" + sum(old) + " new_sha256=" + sum(new)
	}

	v1 := serve("release 1")
	fetch("first download", v1, 1)
	v2 := serve("release 2")
	fetch("cached copy", v1, 0)

	if err := os.Remove(cached(v1)); err != nil {
		t.Fatal(err)
	}
	fetch("cache removed, URL changed", v2, 1)
	if !strings.Contains(logs.String(), changed(v1, v2)) {
		t.Fatalf("no warning naming both checksums:\n%s", logs.String())
	}
	fetch("the new checksum is remembered", v2, 0)

	logs.Reset()
	if err := os.WriteFile(cached(v2), []byte("bit rot"), 0o600); err != nil {
		t.Fatal(err)
	}
	fetch("corrupt cache, same file upstream", v2, 1)
	if strings.Contains(logs.String(), "changed") || !strings.Contains(logs.String(), "corrupt") {
		t.Fatalf("logs:\n%s", logs.String())
	}

	v3 := serve("release 3")
	if err := os.WriteFile(cached(v2), []byte("bit rot"), 0o600); err != nil {
		t.Fatal(err)
	}
	fetch("corrupt cache, URL changed", v3, 1)
	if !strings.Contains(logs.String(), changed(v2, v3)) {
		t.Fatalf("no warning naming both checksums:\n%s", logs.String())
	}

	logs.Reset()
	index := filepath.Join(c.dir, "url-"+sha256Hex([]byte(url)))
	if err := os.WriteFile(index, []byte("half a chec"), 0o600); err != nil {
		t.Fatal(err)
	}
	fetch("damaged index", v3, 1)
	if !strings.Contains(logs.String(), "damaged checksum index") {
		t.Fatalf("logs:\n%s", logs.String())
	}
	fetch("index rewritten", v3, 0)

	// A configured checksum binds: the URL's new file is refused.
	_, err := c.Fetch(ctx, url, sum(v2), nil)
	if want := "sha256 is " + sum(v3) + ", the config says " + sum(v2); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("configured sum: %v, want an error saying %q", err, want)
	}
}
