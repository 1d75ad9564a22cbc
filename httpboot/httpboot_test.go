package httpboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
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

type fakeInventory struct {
	// oneShot, if set, is the only update each subscriber gets before
	// its stream ends: a browser under a virtual time budget waits for
	// the network to go idle, which an endless stream never does.
	oneShot *MachineView
	mu      sync.Mutex
	subs    []chan MachineView
	done    []string
}

// tailMarker stands for whatever an install printed before it failed:
// it is in the full error, which only the API may show.
const tailMarker = "TAIL-MARKER-only-behind-the-token"

// failedError is a failed phase's error as the installer words it.
const failedError = `phase disko failed: command "disko --mode destroy,format,mount /tmp/disko.nix" exited with code 1; last output:
  ` + tailMarker + `
  error: /dev/vdz: no such device`

var machines = []MachineView{
	{MAC: "52:54:00:00:00:01", Hostname: "web-01", Profile: "web", State: "installing", Phase: "disko", UpdatedAt: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)},
	{MAC: "52:54:00:00:00:02", Hostname: "web-02", Profile: "web", State: "installed", UpdatedAt: time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)},
	{MAC: "52:54:00:00:00:03", Hostname: "web-03", Profile: "web", State: "failed", Phase: "disko", Error: failedError, UpdatedAt: time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)},
}

func (f *fakeInventory) Machines(ctx context.Context) ([]MachineView, error) { return machines, nil }
func (f *fakeInventory) Machine(ctx context.Context, mac string) (MachineView, error) {
	for _, m := range machines {
		if m.MAC == mac {
			return m, nil
		}
	}
	return MachineView{}, fmt.Errorf("%w: machine %s", ErrNotFound, mac)
}
func (f *fakeInventory) Events(ctx context.Context, mac string, after int64) ([]EventView, error) {
	if _, err := f.Machine(ctx, mac); err != nil {
		return nil, err
	}
	all := []EventView{{ID: 1, State: "booting", Message: "PXE boot"}, {ID: 2, State: "installer-up", Message: "up"}}
	var out []EventView
	for _, e := range all {
		if e.ID > after {
			out = append(out, e)
		}
	}
	return out, nil
}
func (f *fakeInventory) Log(ctx context.Context, mac string, after int64) ([]LogView, error) {
	if _, err := f.Machine(ctx, mac); err != nil {
		return nil, err
	}
	return []LogView{{Seq: 1, Line: "[disko] formatting"}}, nil
}
func (f *fakeInventory) Reinstall(ctx context.Context, mac string) error {
	if _, err := f.Machine(ctx, mac); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = append(f.done, "reinstall "+mac)
	return nil
}
func (f *fakeInventory) Forget(ctx context.Context, mac string) error {
	if mac == "52:54:00:00:00:01" {
		return fmt.Errorf("%w: installing", ErrConflict)
	}
	return f.Reinstall(ctx, mac)
}
func (f *fakeInventory) Subscribe(ctx context.Context) <-chan MachineView {
	ch := make(chan MachineView, 8)
	f.mu.Lock()
	if f.oneShot != nil {
		ch <- *f.oneShot
		close(ch)
		f.mu.Unlock()
		return ch
	}
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, c := range f.subs {
			if c == ch {
				f.subs = append(f.subs[:i], f.subs[i+1:]...)
			}
		}
		close(ch)
	}()
	return ch
}
func (f *fakeInventory) publish(m MachineView) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.subs {
		c <- m
	}
	return len(f.subs)
}

type harness struct {
	srv    *httptest.Server
	logs   *syncBuffer
	booter *fakeBooter
	inv    *fakeInventory
	kernel []byte
	ipxe   string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{booter: &fakeBooter{}, inv: &fakeInventory{}, kernel: make([]byte, 1<<20+17), ipxe: t.TempDir()}
	rand.Read(h.kernel)
	os.WriteFile(filepath.Join(dir, "bzImage"), h.kernel, 0o644)
	os.WriteFile(filepath.Join(dir, "initrd"), []byte("INITRD"), 0o644)
	os.WriteFile(filepath.Join(h.ipxe, "ipxe.efi"), []byte("MZ-ipxe"), 0o644)
	img := Image{Name: "nixos", Kernel: filepath.Join(dir, "bzImage"), Initrds: []string{filepath.Join(dir, "initrd")},
		Init: "/nix/store/aaaa-nixos-system/init", Params: []string{"loglevel=4"}}
	multi := Image{Name: "multi", Kernel: img.Kernel, Initrds: []string{img.Initrds[0], img.Initrds[0]}}
	h.logs = &syncBuffer{}
	s := New(Config{
		BaseURL:  "http://10.77.0.1:8080/",
		Images:   func() map[string]Image { return map[string]Image{"nixos": img, "multi": multi} },
		IPXEDir:  h.ipxe,
		APIToken: "sekrit-token-0123456789",
		Log:      slog.New(slog.NewTextHandler(h.logs, nil)),
		Metrics:  prometheus.NewRegistry(),
		Reload:   func(context.Context) error { return errors.New("config.yaml:3: bad") },
	}, h.booter, h.inv)
	h.srv = httptest.NewServer(s)
	t.Cleanup(h.srv.Close)
	return h
}

// syncBuffer is the server log; handlers write it from their own
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (h *harness) get(t *testing.T, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return h.do(t, http.MethodGet, path, "", hdr...)
}

// do sends one request with the header pairs in hdr and returns the
// response with its whole body.
func (h *harness) do(t *testing.T, method, path, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
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
		requireTools(t, "curl")
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

// requireTools skips unless the tools are installed, or fails when the
// lab is required (CI), like netlab.Require without the need for root.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("PXE_LAB_REQUIRED") == "1" {
				t.Fatalf("%s missing (PXE_LAB_REQUIRED=1): install it", tool)
			}
			t.Skipf("%s missing", tool)
		}
	}
}

func TestExtraInitrdUnpacksWithGNUCpio(t *testing.T) {
	requireTools(t, "cpio", "gzip")
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

func TestAPIAuthAndRoutes(t *testing.T) {
	h := newHarness(t)
	auth := []string{"Authorization", "Bearer sekrit-token-0123456789"}
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "sekrit-token-0123456789"}} {
		if resp, _ := h.get(t, "/api/v1/machines", hdr...); resp.StatusCode != 401 {
			t.Fatalf("without the right token: %d", resp.StatusCode)
		}
	}
	tests := []struct {
		method, path string
		code         int
		contains     string
	}{
		{"GET", "/api/v1/machines", 200, `"hostname": "web-02"`},
		{"GET", "/api/v1/machines/52-54-00-00-00-01", 200, `"phase": "disko"`},
		{"GET", "/api/v1/machines/52:54:00:00:00:09", 404, "not found"},
		{"GET", "/api/v1/machines/zz", 400, "not an Ethernet MAC"},
		{"GET", "/api/v1/machines/52:54:00:00:00:01/events?after=1", 200, `"installer-up"`},
		{"GET", "/api/v1/machines/52:54:00:00:00:01/events?after=-1", 400, "after"},
		{"GET", "/api/v1/machines/52:54:00:00:00:01/log", 200, "formatting"},
		{"POST", "/api/v1/machines/52:54:00:00:00:02/reinstall", 200, "reinstall requested"},
		{"DELETE", "/api/v1/machines/52:54:00:00:00:01", 409, "installing"},
		{"POST", "/api/v1/config/reload", 422, "config.yaml:3: bad"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp, b := h.do(t, tt.method, tt.path, "", auth...)
			if resp.StatusCode != tt.code || !strings.Contains(string(b), tt.contains) {
				t.Fatalf("%d %s, want %d containing %q", resp.StatusCode, b, tt.code, tt.contains)
			}
		})
	}
	if resp, _ := h.do(t, http.MethodPost, "/api/v1/machines/52:54:00:00:00:01/reinstall", "", "Authorization", "Bearer "); resp.StatusCode != 401 {
		t.Fatalf("reinstall without token: %d", resp.StatusCode)
	}
	if strings.Join(h.inv.done, ",") != "reinstall 52:54:00:00:00:02" {
		t.Fatalf("inventory changes %v: want exactly the one authorised reinstall", h.inv.done)
	}
	if resp, b := h.get(t, "/metrics"); resp.StatusCode != 200 || !strings.Contains(string(b), `pxe_anywhere_http_requests_total{code="401",route="/api/v1/*"}`) {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
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
}

// streamUpdate subscribes to /events, publishes m, and returns what the
// stream carried up to the end of m's event.
func streamUpdate(t *testing.T, h *harness, m MachineView) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.srv.URL+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	for h.inv.publish(m) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	buf := make([]byte, 4096)
	var got []byte
	for !bytes.Contains(got, []byte(`"mac":"`+m.MAC+`"`)) || !bytes.HasSuffix(got, []byte("\n\n")) {
		n, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatalf("stream ended: %v (got %q)", err, got)
		}
		got = append(got, buf[:n]...)
	}
	return resp, got
}

func TestStatusEventsStream(t *testing.T) {
	h := newHarness(t)
	resp, got := streamUpdate(t, h, MachineView{MAC: "52:54:00:00:00:07", State: "booting"})
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	if !bytes.Contains(got, []byte("data: {")) {
		t.Fatalf("not an SSE data line: %q", got)
	}
}

// TestStatusShowsOnlyErrorSummary: the status page and its event stream
// need no token, so a failed install shows there as the first line of
// its error; the output that follows (here tailMarker) is only in the
// API.
func TestStatusShowsOnlyErrorSummary(t *testing.T) {
	h := newHarness(t)
	const summary = `phase disko failed: command "disko --mode destroy,format,mount /tmp/disko.nix" exited with code 1`
	resp, page := h.get(t, "/")
	if resp.StatusCode != 200 || !strings.Contains(string(page), "web-03") {
		t.Fatalf("status page: %d\n%s", resp.StatusCode, page)
	}
	if strings.Contains(string(page), tailMarker) || strings.Contains(string(page), "last output") {
		t.Fatalf("status page shows the failed command's output:\n%s", page)
	}
	// html/template escapes the quotes of the summary.
	if !strings.Contains(html.UnescapeString(string(page)), summary) {
		t.Fatalf("status page lacks the error summary %q:\n%s", summary, page)
	}
	if resp, b := h.get(t, "/api/v1/machines/52:54:00:00:00:03", "Authorization", "Bearer sekrit-token-0123456789"); resp.StatusCode != 200 || !strings.Contains(string(b), tailMarker) {
		t.Fatalf("API with the token lost the full error: %d %s", resp.StatusCode, b)
	}

	_, got := streamUpdate(t, h, machines[2])
	_, data, _ := bytes.Cut(got, []byte("data: "))
	var m MachineView
	if err := json.Unmarshal(bytes.TrimSpace(data), &m); err != nil {
		t.Fatalf("event %q: %v", data, err)
	}
	if m.Error != summary || bytes.Contains(got, []byte(tailMarker)) {
		t.Fatalf("event stream error %q, want %q and no output (stream %q)", m.Error, summary, got)
	}
}

func TestErrorSummary(t *testing.T) {
	long := `phase install failed: command "nixos-install --no-root-passwd --root /mnt --system ` + strings.Repeat("/nix/store/x", 20) + `" exited with code 1`
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"one line", "interrupted: server stopped", "interrupted: server stopped"},
		{"output after the first line is left out", failedError, `phase disko failed: command "disko --mode destroy,format,mount /tmp/disko.nix" exited with code 1`},
		{"long line keeps both ends", long, long[:79] + "…" + long[len(long)-40:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := errorSummary(tt.in)
			if got != tt.want {
				t.Fatalf("errorSummary = %q, want %q", got, tt.want)
			}
			if n := utf8.RuneCountInString(got); n > statusErrorMax {
				t.Fatalf("summary is %d runes, more than %d", n, statusErrorMax)
			}
		})
	}
	if got := errorSummary(strings.Repeat("é", 300)); !utf8.ValidString(got) || utf8.RuneCountInString(got) != statusErrorMax {
		t.Fatalf("multi-byte text cut badly: %q", got)
	}
}

// TestStatusPageInChromium renders the page in headless Chromium, checks
// the machine rows in the live DOM after an update arrives over SSE, and
// keeps a screenshot.
func TestStatusPageInChromium(t *testing.T) {
	requireTools(t, "chromium")
	h := newHarness(t)
	h.inv.mu.Lock()
	h.inv.oneShot = &MachineView{MAC: "52:54:00:00:00:42", Hostname: "late-arrival", Profile: "web", State: "failed", Phase: "disko", Error: failedError}
	h.inv.mu.Unlock()
	dir := t.TempDir()
	shot := filepath.Join(dir, "status.png")
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1200,600", "--virtual-time-budget=2000"}
	// The deadline only keeps a wedged browser from hanging the suite;
	// nothing asserts on how long rendering takes.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "chromium", append(args, "--dump-dom", h.srv.URL+"/")...)
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v\n%s", err, stderr.Bytes()[max(0, stderr.Len()-4000):])
	}
	for _, want := range []string{"web-01", "installing", "web-02", "installed", "late-arrival", "exited with code 1"} {
		if !bytes.Contains(dom, []byte(want)) {
			t.Fatalf("rendered DOM lacks %q:\n%s", want, dom)
		}
	}
	if bytes.Contains(dom, []byte(tailMarker)) {
		t.Fatalf("rendered DOM shows a failed install's output:\n%s", dom)
	}
	if out, err := exec.CommandContext(ctx, "chromium", append(args, "--screenshot="+shot, h.srv.URL+"/")...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v %s", err, out)
	}
	png, err := os.ReadFile(shot)
	if err != nil || len(png) < 5000 || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("screenshot: %d bytes, %v", len(png), err)
	}
	if d := os.Getenv("PXE_ARTIFACTS"); d != "" {
		os.WriteFile(filepath.Join(d, "status.png"), png, 0o644)
	}
}

func FuzzParseMAC(f *testing.F) {
	for _, s := range []string{"52:54:00:00:00:01", "52-54-00-00-00-01", "5254.0000.0001", "", "zz", "52:54:00:00:00:01:02:03"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mac, err := ParseMAC(s)
		if err == nil && len(mac) != 6 {
			t.Fatalf("%q parsed to %d bytes", s, len(mac))
		}
	})
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

// TestServeShutsDownWithOpenStream checks that an open status stream
// does not hold up shutdown: the streams end with the server's context.
func TestServeShutsDownWithOpenStream(t *testing.T) {
	inv := &fakeInventory{}
	s := New(Config{
		BaseURL: "http://127.0.0.1", Images: func() map[string]Image { return nil },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, &fakeBooter{}, inv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/events")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	// Reading the opening comment proves the stream is being served.
	if _, err := resp.Body.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatalf("stream did not end cleanly: %v", err)
	}
}

func TestWriteCPIO(t *testing.T) {
	requireTools(t, "cpio")
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
