package httpboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
	"github.com/pxe-anywhere/pxe-anywhere/internal/testhttp"
)

var update = flag.Bool("update", false, "rewrite golden files")

const testToken = "0123456789abcdef0123456789abcdef"

// fakeBooter stands in for provision: it knows one machine per action
// and one token, and refuses everything else.
type fakeBooter struct {
	mu        sync.Mutex
	fetched   []string
	callbacks []netip.Addr
}

func (b *fakeBooter) Boot(ctx context.Context, r BootRequest) (BootPlan, error) {
	if !r.RemoteAddr.IsLoopback() || (r.Arch != "" && r.Arch != "x86_64") {
		return BootPlan{}, fmt.Errorf("fake booter: unexpected request %+v", r)
	}
	switch r.MAC.String() {
	case "52:54:00:00:00:01":
		return BootPlan{Action: ActionInstall, Image: "nixos", Token: testToken, Params: []string{"console=ttyS0,115200"}, Hostname: "web-01"}, nil
	case "52:54:00:00:00:02":
		return BootPlan{Action: ActionLocal, Hostname: "web-02"}, nil
	case "52:54:00:00:00:03":
		return BootPlan{Action: ActionInstall, Image: "nixos", Token: testToken, Params: []string{"evil ${x}"}}, nil
	case "52:54:00:00:00:04":
		return BootPlan{Action: ActionInstall, Image: "multi", Token: testToken}, nil
	case "52:54:00:00:00:05":
		return BootPlan{Action: ActionInstall, Image: "nixos", Token: testToken, Params: []string{"a=b\nkernel http://evil/x"}}, nil
	case "52:54:00:00:00:06":
		return BootPlan{Action: ActionInstall, Image: "gone", Token: testToken}, nil
	}
	return BootPlan{Action: ActionIgnore}, nil
}

func (b *fakeBooter) ExtraInitrd(ctx context.Context, token string, remote netip.Addr) ([]ExtraFile, error) {
	if token != testToken {
		return nil, ErrUnknownToken
	}
	if !remote.IsLoopback() {
		return nil, ErrForbidden
	}
	return RemoteAccessFiles([]byte("ssh-ed25519 AAAAinstall pxe\n"), []byte("PRIVATE\n"), []byte("ssh-ed25519 AAAAhost\n")), nil
}

func (b *fakeBooter) Callback(ctx context.Context, token string, remote, claimed netip.Addr) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if token != testToken || len(b.callbacks) > 0 || (claimed.IsValid() && claimed != remote) {
		return ErrForbidden
	}
	b.callbacks = append(b.callbacks, remote)
	return nil
}

func (b *fakeBooter) Fetched(ctx context.Context, f Fetch) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f.Token != testToken || !f.Remote.IsLoopback() {
		return ErrForbidden
	}
	if f.Whole {
		b.fetched = append(b.fetched, f.Token+" "+f.What)
	}
	return nil
}

type harness struct {
	srv     *httptest.Server
	logs    *syncbuf.Buffer
	booter  *fakeBooter
	metrics *prometheus.Registry
	kernel  []byte
	ipxe    string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{booter: &fakeBooter{}, metrics: prometheus.NewRegistry(), kernel: make([]byte, 1<<20+17), ipxe: t.TempDir()}
	rand.Read(h.kernel)
	os.WriteFile(filepath.Join(dir, "bzImage"), h.kernel, 0o644)
	os.WriteFile(filepath.Join(dir, "initrd"), []byte("INITRD"), 0o644)
	os.WriteFile(filepath.Join(h.ipxe, "ipxe.efi"), []byte("MZ-ipxe"), 0o644)
	img := Image{Name: "nixos", Kernel: filepath.Join(dir, "bzImage"), Initrds: []string{filepath.Join(dir, "initrd")},
		Init: "/nix/store/aaaa-nixos-system/init", Params: []string{"loglevel=4"}}
	multi := Image{Name: "multi", Kernel: img.Kernel, Initrds: []string{img.Initrds[0], img.Initrds[0]}}
	h.logs = &syncbuf.Buffer{}
	s := New(Config{
		BaseURL: "http://10.77.0.1:8080/",
		Images:  func() map[string]Image { return map[string]Image{"nixos": img, "multi": multi} },
		IPXEDir: h.ipxe,
		Log:     slog.New(slog.NewTextHandler(h.logs, nil)),
		Metrics: h.metrics,
	}, h.booter)
	h.srv = httptest.NewServer(s)
	t.Cleanup(h.srv.Close)
	return h
}

func (h *harness) get(t *testing.T, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return h.do(t, http.MethodGet, path, "", hdr...)
}

// do sends one request with the header pairs in hdr and returns the
// response with its whole body.
func (h *harness) do(t *testing.T, method, path, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return testhttp.Do(t, http.DefaultClient, method, h.srv.URL+path, body, hdr...)
}

func TestScriptsGolden(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name, path string
		code       int
		golden     string
	}{
		{"install", "/boot/52-54-00-00-00-01.ipxe?arch=x86_64", 200, "install.ipxe"},
		{"install colons upper case", "/boot/52:54:00:00:00:01.ipxe", 200, "install.ipxe"},
		{"install with several initrds", "/boot/52-54-00-00-00-04.ipxe", 200, "install-multi.ipxe"},
		{"installed boots locally", "/boot/52-54-00-00-00-02.ipxe", 200, "local.ipxe"},
		{"unknown machine", "/boot/52-54-00-00-00-09.ipxe", 404, "unknown.txt"},
		{"bad mac", "/boot/not-a-mac.ipxe", 400, ""},
		{"not a script", "/boot/52-54-00-00-00-01.txt", 404, ""},
		{"space and ${} refused", "/boot/52-54-00-00-00-03.ipxe", 500, ""},
		{"newline refused", "/boot/52-54-00-00-00-05.ipxe", 500, ""},
		{"image not loaded", "/boot/52-54-00-00-00-06.ipxe", 500, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := h.get(t, tt.path)
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.code, body)
			}
			if tt.golden == "" {
				return
			}
			golden := filepath.Join("testdata", tt.golden)
			if *update {
				os.WriteFile(golden, body, 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(body, want) {
				t.Fatalf("script differs from %s:\n%s", golden, body)
			}
		})
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "mac=52:54:00:00:00:01") {
		t.Errorf("request log lacks the MAC:\n%s", logs)
	}
	if strings.Contains(logs, testToken) {
		t.Errorf("request log holds a whole boot token:\n%s", logs)
	}
}

func TestImageRangeAndHead(t *testing.T) {
	h := newHarness(t)
	resp, body := h.get(t, "/images/nixos/kernel?token="+testToken, "Range", "bytes=100-1099")
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-1099/%d", len(h.kernel)) {
		t.Fatalf("status %d, Content-Range %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}
	if !bytes.Equal(body, h.kernel[100:1100]) {
		t.Fatal("range body differs")
	}
	t.Run("curl", func(t *testing.T) {
		netlab.RequireTools(t, "curl")
		out := filepath.Join(t.TempDir(), "k")
		if b, err := exec.Command("curl", "-sSf", "-r", "0-99", "-o", out, h.srv.URL+"/images/nixos/kernel").CombinedOutput(); err != nil {
			t.Fatalf("curl: %v %s", err, b)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, h.kernel[:100]) {
			t.Fatal("curl range differs")
		}
	})
	resp, body = h.get(t, "/images/nixos/kernel?token="+testToken)
	if !bytes.Equal(body, h.kernel) {
		t.Fatalf("full kernel differs: %d bytes", len(body))
	}
	etag := resp.Header.Get("ETag")
	if etag == "" || resp.Header.Get("Last-Modified") == "" {
		t.Fatalf("no ETag/Last-Modified: %v", resp.Header)
	}
	if resp, _ := h.get(t, "/images/nixos/kernel", "If-None-Match", etag); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d, want 304", resp.StatusCode)
	}
	for _, p := range []string{"/images/nixos/initrd?token=" + testToken, "/images/nixos/initrd/0", "/images/multi/initrd/1"} {
		if resp, body := h.get(t, p); resp.StatusCode != 200 || string(body) != "INITRD" {
			t.Fatalf("%s: %d %q", p, resp.StatusCode, body)
		}
	}
	req, _ := http.NewRequest(http.MethodHead, h.srv.URL+"/images/nixos/kernel", nil)
	hr, err := http.DefaultClient.Do(req)
	if err != nil || hr.ContentLength != int64(len(h.kernel)) {
		t.Fatalf("HEAD: %v %d", err, hr.ContentLength)
	}
	for _, p := range []string{"/images/other/kernel", "/images/nixos/initrd/1", "/images/nixos/initrd/x", "/images/multi/initrd", "/images/nixos/initrd/-1"} {
		if resp, _ := h.get(t, p); resp.StatusCode != 404 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
	h.booter.mu.Lock()
	defer h.booter.mu.Unlock()
	if strings.Join(h.booter.fetched, ",") != testToken+" kernel,"+testToken+" initrd" {
		t.Fatalf("fetched notes %v: want one kernel and one initrd fetch (range, HEAD and untokened requests are not noted)", h.booter.fetched)
	}
}

func TestExtraInitrdUnpacksWithGNUCpio(t *testing.T) {
	netlab.RequireTools(t, "cpio", "gzip")
	h := newHarness(t)
	resp, body := h.get(t, "/boot/"+testToken+"/extra.cpio.gz")
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("status %d %v", resp.StatusCode, resp.Header)
	}
	dir := t.TempDir()
	gz := filepath.Join(dir, "extra.cpio.gz")
	os.WriteFile(gz, body, 0o600)
	if b, err := exec.Command("gzip", "-t", gz).CombinedOutput(); err != nil {
		t.Fatalf("gzip -t: %v %s", err, b)
	}
	list, err := exec.Command("sh", "-c", "gzip -dc "+gz+" | cpio -itv --quiet").CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v %s", err, list)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Fields(l)
		got = append(got, f[0]+" "+f[len(f)-1])
	}
	want := []string{
		"-rw-r--r-- addrs-v4.json", "-rw-r--r-- addrs-v6.json",
		"drwxr-xr-x iproute2", "-rw-r--r-- iproute2/addrs.json", "-rw-r--r-- iproute2/routes-v4.json", "-rw-r--r-- iproute2/routes-v6.json",
		"drwxr-xr-x networkd", "-rw-r--r-- routes-v4.json", "-rw-r--r-- routes-v6.json",
		"drwx------ ssh", "-rw------- ssh/authorized_keys", "-rw------- ssh/ssh_host_ed25519_key", "-rw-r--r-- ssh/ssh_host_ed25519_key.pub",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("cpio listing:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	ex := filepath.Join(dir, "x")
	os.Mkdir(ex, 0o755)
	if b, err := exec.Command("sh", "-c", "cd "+ex+" && gzip -dc "+gz+" | cpio -id --quiet").CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v %s", err, b)
	}
	if b, _ := os.ReadFile(filepath.Join(ex, "ssh/authorized_keys")); string(b) != "ssh-ed25519 AAAAinstall pxe\n" {
		t.Fatalf("authorized_keys %q", b)
	}
	if resp, _ := h.get(t, "/boot/wrongtoken/extra.cpio.gz"); resp.StatusCode != 404 {
		t.Fatalf("wrong token: %d", resp.StatusCode)
	}
}

func TestCallback(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name, body string
		code       int
	}{
		{"bad json", `{"token":`, 400},
		{"unknown field", `{"token":"x","tok":1}`, 400},
		{"wrong token", `{"token":"nope","address":"127.0.0.1"}`, 403},
		{"body names another address", `{"token":"` + testToken + `","address":"10.77.0.50"}`, 403},
		{"good", `{"token":"` + testToken + `","address":"127.0.0.1"}`, 200},
		{"replayed", `{"token":"` + testToken + `"}`, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := h.do(t, http.MethodPost, "/api/v1/callback", tt.body)
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.code, b)
			}
		})
	}
	// The address the callback came from is what the Booter hears.
	if len(h.booter.callbacks) != 1 || h.booter.callbacks[0] != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("callbacks %v", h.booter.callbacks)
	}
}

// TestBootSideServesNoOperatorRoutes: the boot listener faces every
// machine on the provisioning network, so the API, the status page, its
// stream and the metrics are not there at all, token or not; the admin
// package serves them on its own listener.
func TestBootSideServesNoOperatorRoutes(t *testing.T) {
	h := newHarness(t)
	auth := []string{"Authorization", "Bearer sekrit-token-0123456789"}
	for _, tt := range []struct{ method, path string }{
		{"GET", "/"},
		{"GET", "/events"},
		{"GET", "/metrics"},
		{"GET", "/login"},
		{"GET", "/api/v1/machines"},
		{"GET", "/api/v1/machines/52:54:00:00:00:01"},
		{"GET", "/api/v1/machines/52:54:00:00:00:01/log"},
		{"POST", "/api/v1/machines/52:54:00:00:00:01/reinstall"},
		{"DELETE", "/api/v1/machines/52:54:00:00:00:01"},
		{"POST", "/api/v1/config/reload"},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp, body := h.do(t, tt.method, tt.path, "", auth...)
			// chi answers 405 for a known path with another method;
			// either way nothing is served.
			if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
				t.Fatalf("%d %s: the boot side serves an operator route", resp.StatusCode, body)
			}
			if bytes.Contains(body, []byte("web-0")) || bytes.Contains(body, []byte("pxe_anywhere_")) {
				t.Fatalf("the boot side answered with operator data: %s", body)
			}
		})
	}
}

// TestBootRoutesCountedAndLogged: the boot side's requests go into the
// shared request counters under listener="boot", and /healthz, which
// load balancers poll, is logged at debug level only.
func TestBootRoutesCountedAndLogged(t *testing.T) {
	h := newHarness(t)
	if resp, b := h.get(t, "/healthz"); resp.StatusCode != 200 || string(b) != "ok\n" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, b)
	}
	if resp, b := h.get(t, "/ipxe/ipxe.efi"); resp.StatusCode != 200 || string(b) != "MZ-ipxe" {
		t.Fatalf("ipxe: %d %q", resp.StatusCode, b)
	}
	for _, p := range []string{"/ipxe/..%2f..%2fetc%2fpasswd", "/ipxe/.hidden", "/ipxe/nope.efi"} {
		if resp, _ := h.get(t, p); resp.StatusCode != 404 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}
	var got []string
	mfs, err := h.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pxe_anywhere_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var l []string
			for _, lp := range m.GetLabel() {
				l = append(l, lp.GetName()+"="+lp.GetValue())
			}
			got = append(got, fmt.Sprintf("%s %v", strings.Join(l, ","), m.GetCounter().GetValue()))
		}
	}
	want := []string{
		"code=200,listener=boot,route=/healthz 1",
		"code=200,listener=boot,route=/ipxe/{file} 1",
		"code=404,listener=boot,route=/ipxe/{file} 3",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("request counters:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if logs := h.logs.String(); strings.Contains(logs, "path=/healthz") || !strings.Contains(logs, "path=/ipxe/ipxe.efi") {
		t.Fatalf("request log: /healthz must stay at debug level, /ipxe at info:\n%s", logs)
	}
}

func FuzzCallbackBody(f *testing.F) {
	for _, s := range []string{`{"token":"abc","address":"10.0.0.1"}`, `{"token":"abc"}`, `{}`, `[`, `{"token":"a","address":"::ffff:10.0.0.1"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, addr, err := ParseCallback(bytes.NewReader(b))
		if err == nil && (tok == "" || len(tok) > 128 || (addr.IsValid() && addr.Is4In6())) {
			t.Fatalf("accepted %q → %q %v", b, tok, addr)
		}
	})
}

func TestWriteCPIO(t *testing.T) {
	netlab.RequireTools(t, "cpio")
	tests := []struct {
		name  string
		files []ExtraFile
		want  []string // cpio -itv: mode and name
		err   string
	}{
		{name: "parents made and sorted first", files: []ExtraFile{
			{Path: "a/b/c.txt", Mode: 0o640, Data: []byte("c")},
			{Path: "a", Mode: fs.ModeDir | 0o700},
		}, want: []string{"drwx------ a", "drwxr-xr-x a/b", "-rw-r----- a/b/c.txt"}},
		{name: "escapes cleaned to the root", files: []ExtraFile{
			{Path: "../../etc/x", Mode: 0o600, Data: []byte("x")},
			{Path: "/abs", Mode: 0o644},
		}, want: []string{"-rw-r--r-- abs", "drwxr-xr-x etc", "-rw------- etc/x"}},
		{name: "same path twice refused", files: []ExtraFile{
			{Path: "k", Mode: 0o600, Data: []byte("1")},
			{Path: "./k", Mode: 0o644, Data: []byte("22")},
		}, err: "given twice"},
		{name: "empty path refused", files: []ExtraFile{{Path: "/", Mode: 0o644}}, err: "bad path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteCPIO(&buf, tt.files)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("cpio", "-itv", "--quiet")
			cmd.Stdin = &buf
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("cpio: %v %s", err, out)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(l)
				got = append(got, f[0]+" "+f[len(f)-1])
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("listing:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestHealthzReportsHealth: /healthz answers 503 with the reason while
// Health says the server is unwell (state writes failing), 200 again
// once it is not.
func TestHealthzReportsHealth(t *testing.T) {
	var mu sync.Mutex
	var health error
	s := New(Config{
		BaseURL: "http://10.77.0.1:8080/",
		Images:  func() map[string]Image { return nil },
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Health: func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			return health
		},
	}, &fakeBooter{})
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	get := func() (int, string) {
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 || body != "ok\n" {
		t.Fatalf("healthy: %d %q", code, body)
	}
	mu.Lock()
	health = errors.New("state writes fail: database or disk is full")
	mu.Unlock()
	if code, body := get(); code != 503 || body != "unhealthy: state writes fail: database or disk is full\n" {
		t.Fatalf("unhealthy: %d %q", code, body)
	}
	mu.Lock()
	health = nil
	mu.Unlock()
	if code, body := get(); code != 200 || body != "ok\n" {
		t.Fatalf("healthy again: %d %q", code, body)
	}
}
