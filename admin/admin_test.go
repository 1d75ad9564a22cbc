package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
	"github.com/pxe-anywhere/pxe-anywhere/internal/testhttp"
)

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
	{MAC: "52:54:00:00:00:04", Hostname: "web-04", Profile: "web", State: "failed", Error: "boot secrets requested twice: install withheld", Held: true, UpdatedAt: time.Date(2026, 11, 28, 7, 0, 0, 0, time.UTC)},
}

func (f *fakeInventory) Machines(ctx context.Context) ([]MachineView, error) { return machines, nil }
func (f *fakeInventory) Machine(ctx context.Context, mac string) (MachineView, error) {
	f.mu.Lock()
	late := f.oneShot
	f.mu.Unlock()
	if late != nil && late.MAC == mac {
		return *late, nil
	}
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

// record notes an action; the API must name itself "operator (API)",
// and the page "operator (web, <address>)".
func (f *fakeInventory) record(action, mac, by string) error {
	if by != byAPI && !strings.HasPrefix(by, "operator (web, ") {
		return fmt.Errorf("%s %s by %q: who asked is not named as it should be", action, mac, by)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if by == byAPI {
		f.done = append(f.done, action+" "+mac)
	} else {
		f.done = append(f.done, action+" "+mac+" by "+by)
	}
	return nil
}
func (f *fakeInventory) Reinstall(ctx context.Context, mac, by string) error {
	if _, err := f.Machine(ctx, mac); err != nil {
		return err
	}
	return f.record("reinstall", mac, by)
}
func (f *fakeInventory) Cancel(ctx context.Context, mac, by string) (string, error) {
	if mac != "52:54:00:00:00:01" {
		return "", fmt.Errorf("%w: machine %s has no install running or queued: nothing to cancel", ErrConflict, mac)
	}
	return "", f.record("cancel", mac, by)
}
func (f *fakeInventory) Forget(ctx context.Context, mac, by string) error {
	if mac == "52:54:00:00:00:01" {
		return fmt.Errorf("%w: installing", ErrConflict)
	}
	if _, err := f.Machine(ctx, mac); err != nil {
		return err
	}
	return f.record("forget", mac, by)
}

func (f *fakeInventory) Assign(ctx context.Context, mac, profile, hostname, by string) error {
	if profile != "web" {
		return fmt.Errorf("%w: no profile %q in the config", ErrInvalid, profile)
	}
	if _, err := f.Machine(ctx, mac); err != nil {
		return err
	}
	return f.record("assign "+profile+" "+hostname, mac, by)
}

// bootToken is the fake's boot token: no page may ever show it.
const bootToken = "b00770ce2b00770ce2b00770ce2b00770ce2"

func (f *fakeInventory) LatestBoot(ctx context.Context, mac string) (BootView, error) {
	if mac != "52:54:00:00:00:03" {
		return BootView{}, fmt.Errorf("%w: machine %s has no boot", ErrNotFound, mac)
	}
	return BootView{TokenFingerprint: "3f2a9c01", HostKey: "SHA256:abcdefFAKEhostKEY", IP: "10.0.0.13", Firmware: "x86_64",
		CreatedAt: time.Date(2026, 11, 28, 7, 50, 0, 0, time.UTC)}, nil
}
func (f *fakeInventory) PhaseHistory(ctx context.Context) (map[string][]time.Duration, error) {
	return map[string][]time.Duration{"kexec": {time.Minute}, "install": {8 * time.Minute, 12 * time.Minute}}, nil
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

const testAPIToken = "sekrit-token-0123456789"

type harness struct {
	srv  *httptest.Server
	logs *syncbuf.Buffer
	inv  *fakeInventory
	// client keeps the cookies a browser would.
	client *http.Client
}

// harnessMode is how the admin listener is set up: open on loopback,
// or behind the login, over plain HTTP or TLS.
type harnessMode struct {
	requireLogin, tls bool
	warnings          []string
}

// newHarness serves the admin side as it is on loopback: the page open.
func newHarness(t *testing.T) *harness { return newHarnessMode(t, harnessMode{}) }

func newHarnessMode(t *testing.T, mode harnessMode) *harness {
	t.Helper()
	h := &harness{inv: &fakeInventory{}, logs: &syncbuf.Buffer{}}
	s := New(Config{
		APIToken:     testAPIToken,
		RequireLogin: mode.requireLogin,
		Log:          slog.New(slog.NewTextHandler(h.logs, nil)),
		Metrics:      prometheus.NewRegistry(),
		Reload:       func(context.Context) error { return errors.New("config.yaml:3: bad") },
		Warnings:     func() []string { return mode.warnings },
	}, h.inv)
	if mode.tls {
		h.srv = httptest.NewTLSServer(s)
		h.client = h.srv.Client()
	} else {
		h.srv = httptest.NewServer(s)
		h.client = &http.Client{}
	}
	t.Cleanup(h.srv.Close)
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	h.client.Jar = jar
	// Redirects are looked at, not followed.
	h.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return h
}

func (h *harness) get(t *testing.T, path string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return h.do(t, http.MethodGet, path, "", hdr...)
}

// do sends one request with the header pairs in hdr and returns the
// response with its whole body. An event stream has no end: its body
// is what arrived within a few seconds.
func (h *harness) do(t *testing.T, method, path, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return testhttp.Do(t, h.client, method, h.srv.URL+path, body, hdr...)
}

func TestAPIAuthAndRoutes(t *testing.T) {
	h := newHarness(t)
	auth := []string{"Authorization", "Bearer " + testAPIToken}
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", testAPIToken}} {
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
		{"POST", "/api/v1/machines/52:54:00:00:00:02/cancel", 409, "nothing to cancel"},
		{"POST", "/api/v1/machines/52:54:00:00:00:01/cancel", 200, "cancelled by operator"},
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
	if resp, _ := h.do(t, http.MethodPost, "/api/v1/machines/52:54:00:00:00:01/cancel", "", "Authorization", "Bearer wrong"); resp.StatusCode != 401 {
		t.Fatalf("cancel without the token: %d", resp.StatusCode)
	}
	if strings.Join(h.inv.done, ",") != "reinstall 52:54:00:00:00:02,cancel 52:54:00:00:00:01" {
		t.Fatalf("inventory changes %v: want exactly the authorised reinstall and cancel", h.inv.done)
	}
	if resp, b := h.get(t, "/metrics"); resp.StatusCode != 200 || !strings.Contains(string(b), `pxe_anywhere_http_requests_total{code="401",listener="admin",route="/api/v1/*"}`) {
		t.Fatalf("metrics: %d\n%s", resp.StatusCode, b)
	}
	// The admin side serves nothing a booting machine needs. (The login
	// is there on loopback too: the page's actions ask for it.)
	for _, p := range []string{"/healthz", "/boot/52-54-00-00-00-01.ipxe", "/ipxe/ipxe.efi", "/images/nixos/kernel"} {
		if resp, _ := h.get(t, p); resp.StatusCode != 404 {
			t.Errorf("%s: %d, want 404 on the admin side", p, resp.StatusCode)
		}
	}
	if resp, _ := h.do(t, http.MethodPost, "/api/v1/callback", `{"token":"x"}`); resp.StatusCode != 401 {
		t.Errorf("callback on the admin side: %d, want 401 (it is an API path that is not routed here)", resp.StatusCode)
	}
}

// streamUpdate subscribes to /events, publishes m, and returns what the
// stream carried up to the end of m's event.
func streamUpdate(t *testing.T, h *harness, m MachineView) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.srv.URL+"/events", nil)
	resp, err := h.client.Do(req)
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
	if resp, b := h.get(t, "/api/v1/machines/52:54:00:00:00:03", "Authorization", "Bearer "+testAPIToken); resp.StatusCode != 200 || !strings.Contains(string(b), tailMarker) {
		t.Fatalf("API with the token lost the full error: %d %s", resp.StatusCode, b)
	}

	// Its last event, "install failed in disko: <the full error>", is cut
	// the same way.
	failed := machines[2]
	failed.LastEvent = &EventView{ID: 9, State: "failed", Phase: "disko", Message: "install failed in disko: " + failedError}
	_, got := streamUpdate(t, h, failed)
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
	netlab.RequireTools(t, "chromium")
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

// TestServeShutsDownWithOpenStream checks that an open status stream
// does not hold up shutdown: the streams end with the server's context.
func TestServeShutsDownWithOpenStream(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := New(Config{Log: log}, &fakeInventory{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- httpserve.Serve(ctx, l, s, log) }()
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

// TestStatusWarnsAndShowsHeld: a weakening setting is named above the
// machines, and a held machine says so.
func TestStatusWarnsAndShowsHeld(t *testing.T) {
	h := newHarnessMode(t, harnessMode{warnings: []string{"profiles.web say trust: mac & co"}})
	_, body := h.get(t, "/")
	for _, want := range []string{
		`<p class="warning" role="alert">profiles.web say trust: mac &amp; co</p>`,
		`<td class="failed">failed (held)</td>`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Count(string(body), " (held)</td>") != 1 {
		t.Errorf("only the held machine may say held:\n%s", body)
	}
	_, body = newHarness(t).get(t, "/")
	if strings.Contains(string(body), `class="warning"`) {
		t.Error("a warning without one configured")
	}
}
