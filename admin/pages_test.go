package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// rack is an inventory that changes: actions move machines and leave
// events as provision's do, so that a page can show what it did.
type rack struct {
	mu       sync.Mutex
	order    []string
	machines map[string]MachineView
	events   map[string][]EventView
	logs     map[string][]LogView
	boots    map[string]BootView
	history  map[string][]time.Duration
	nextID   int64
	subs     []chan MachineView
	// onSubscribe, if set, runs (once) after the first subscriber is
	// in: a change made then reaches a page that is already loaded.
	onSubscribe func()
	// runsElsewhere, if set, is the server that runs the installs: a
	// cancel is asked of it, as provision does with several servers.
	runsElsewhere string
	// endStreams ends every stream after what is pending: a browser
	// under a virtual time budget waits for the network to go idle,
	// which an endless stream never does.
	endStreams bool
	actions    []string
}

func newRack() *rack {
	return &rack{machines: map[string]MachineView{}, events: map[string][]EventView{},
		logs: map[string][]LogView{}, boots: map[string]BootView{}}
}

func (r *rack) add(m MachineView, events ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order = append(r.order, m.MAC)
	for i, e := range events {
		r.nextID++
		r.events[m.MAC] = append(r.events[m.MAC], EventView{ID: r.nextID, Time: m.UpdatedAt.Add(time.Duration(i-len(events)) * time.Minute), State: m.State, Phase: m.Phase, Message: e})
	}
	if n := len(r.events[m.MAC]); n > 0 {
		last := r.events[m.MAC][n-1]
		m.LastEvent = &last
	}
	r.machines[m.MAC] = m
}

// note adds an event and publishes the machine; r.mu is held.
func (r *rack) note(mac, msg string) {
	m := r.machines[mac]
	r.nextID++
	e := EventView{ID: r.nextID, Time: time.Now().UTC(), State: m.State, Phase: m.Phase, Message: msg}
	r.events[mac] = append(r.events[mac], e)
	m.LastEvent = &e
	m.UpdatedAt = e.Time
	r.machines[mac] = m
	for _, c := range r.subs {
		select {
		case c <- m:
		default:
		}
	}
	if r.endStreams {
		for _, c := range r.subs {
			close(c)
		}
		r.subs = nil
	}
}

// set changes a machine as an install would, and publishes it.
func (r *rack) set(mac, state, phase, errMsg, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.machines[mac]
	m.State, m.Phase, m.Error = state, phase, errMsg
	r.machines[mac] = m
	r.note(mac, msg)
}

func (r *rack) Machines(ctx context.Context) ([]MachineView, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []MachineView
	for _, mac := range r.order {
		if m, ok := r.machines[mac]; ok {
			out = append(out, m)
		}
	}
	return out, nil
}

func (r *rack) Machine(ctx context.Context, mac string) (MachineView, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.machines[mac]
	if !ok {
		return MachineView{}, fmt.Errorf("%w: machine %s", ErrNotFound, mac)
	}
	return m, nil
}

func (r *rack) Events(ctx context.Context, mac string, after int64) ([]EventView, error) {
	if _, err := r.Machine(ctx, mac); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []EventView
	for _, e := range r.events[mac] {
		if e.ID > after {
			out = append(out, e)
		}
	}
	return out, nil
}

func (r *rack) Log(ctx context.Context, mac string, after int64) ([]LogView, error) {
	if _, err := r.Machine(ctx, mac); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []LogView
	for _, l := range r.logs[mac] {
		if l.Seq > after {
			out = append(out, l)
		}
	}
	return out, nil
}

func (r *rack) LatestBoot(ctx context.Context, mac string) (BootView, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.boots[mac]
	if !ok {
		return BootView{}, fmt.Errorf("%w: machine %s has no boot", ErrNotFound, mac)
	}
	return b, nil
}

func (r *rack) PhaseHistory(ctx context.Context) (map[string][]time.Duration, error) {
	return r.history, nil
}

// act checks who asked as provision would be told it, and records it.
func (r *rack) act(action, mac, by string) error {
	if by != byAPI && !strings.HasPrefix(by, "operator (web, ") {
		return fmt.Errorf("%s by %q: who asked is not named", action, by)
	}
	r.actions = append(r.actions, action+" "+mac+" by "+by)
	return nil
}

func (r *rack) Reinstall(ctx context.Context, mac, by string) error {
	if _, err := r.Machine(ctx, mac); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.act("reinstall", mac, by); err != nil {
		return err
	}
	m := r.machines[mac]
	m.Reinstall = true
	r.machines[mac] = m
	r.note(mac, "reinstall requested by "+by+": the next PXE boot installs again")
	return nil
}

func (r *rack) Cancel(ctx context.Context, mac, by string) (string, error) {
	m, err := r.Machine(ctx, mac)
	if err != nil {
		return "", err
	}
	if r.runsElsewhere != "" {
		return r.runsElsewhere, r.act("cancel", mac, by)
	}
	if m.State != "installing" {
		return "", fmt.Errorf("%w: machine %s has no install running or queued: nothing to cancel", ErrConflict, mac)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.act("cancel", mac, by); err != nil {
		return "", err
	}
	m.State, m.Error = "failed", "cancelled by operator"
	r.machines[mac] = m
	r.note(mac, "install cancelled by "+by+" during "+m.Phase+"; the slot is free")
	return "", nil
}

func (r *rack) Assign(ctx context.Context, mac, profile, hostname, by string) error {
	m, err := r.Machine(ctx, mac)
	if err != nil {
		return err
	}
	if profile != "web" && profile != "db" {
		return fmt.Errorf("%w: no profile %q in the config", ErrInvalid, profile)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.act("assign "+profile+" "+hostname, mac, by); err != nil {
		return err
	}
	m.Profile, m.Hostname, m.DecidedBy, m.DecidedWhy = profile, hostname, "operator", "by "+by
	r.machines[mac] = m
	return nil
}

func (r *rack) Forget(ctx context.Context, mac, by string) error {
	if _, err := r.Machine(ctx, mac); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.act("forget", mac, by); err != nil {
		return err
	}
	delete(r.machines, mac)
	for _, c := range r.subs {
		select {
		case c <- MachineView{MAC: mac, State: "forgotten"}:
		default:
		}
	}
	return nil
}

func (r *rack) Subscribe(ctx context.Context) <-chan MachineView {
	ch := make(chan MachineView, 16)
	r.mu.Lock()
	r.subs = append(r.subs, ch)
	hook := r.onSubscribe
	r.onSubscribe = nil
	r.mu.Unlock()
	if hook != nil {
		hook()
	}
	if r.endStreams {
		r.mu.Lock()
		if i := slices.Index(r.subs, ch); i >= 0 {
			r.subs = slices.Delete(r.subs, i, i+1)
			close(ch)
		}
		r.mu.Unlock()
		return ch
	}
	go func() {
		<-ctx.Done()
		r.mu.Lock()
		defer r.mu.Unlock()
		if i := slices.Index(r.subs, ch); i >= 0 {
			r.subs = slices.Delete(r.subs, i, i+1)
			close(ch)
		}
	}()
	return ch
}

// A rack that looks like a morning's work: a few machines installing
// at different phases, some installed, one failed with the installer's
// full error and log, one waiting for its first boot.
const (
	macFailed     = "52:54:00:12:00:07"
	macInstalling = "52:54:00:12:00:03"
	macInstalled  = "52:54:00:12:00:01"
)

func fillRack(now time.Time) *rack {
	r := newRack()
	r.history = map[string][]time.Duration{
		"kexec": {40 * time.Second, 50 * time.Second, 45 * time.Second}, "disko": {20 * time.Second, 25 * time.Second},
		"install": {7 * time.Minute, 9 * time.Minute, 8 * time.Minute}, "reboot": {50 * time.Second},
	}
	r.add(MachineView{MAC: macInstalled, Hostname: "rack1-db-01", Profile: "db", State: "installed", IP: "10.20.0.11", Firmware: "efi-x64",
		UpdatedAt: now.Add(-50 * time.Minute)}, "phase install done in 8m12s", "installed: booted into the new system")
	r.add(MachineView{MAC: "52:54:00:12:00:02", Hostname: "rack1-db-02", Profile: "db", State: "installed", IP: "10.20.0.12", Firmware: "efi-x64",
		UpdatedAt: now.Add(-48 * time.Minute)}, "installed: booted into the new system")
	r.add(MachineView{MAC: macInstalling, Hostname: "rack1-web-01", Profile: "web", State: "installing", Phase: "install", IP: "10.20.0.13", Firmware: "x86_64",
		UpdatedAt: now.Add(-3 * time.Minute)}, "PXE boot into the installer (new machine) from 10.20.0.13", "phase 3/4: install")
	r.add(MachineView{MAC: "52:54:00:12:00:04", Hostname: "rack1-web-02", Profile: "web", State: "installing", Phase: "disko", IP: "10.20.0.14", Firmware: "efi-x64",
		UpdatedAt: now.Add(-10 * time.Second)}, "phase 2/4: disko")
	r.add(MachineView{MAC: "52:54:00:12:00:05", Hostname: "rack1-arm-01", Profile: "arm", State: "installing", Phase: "kexec", IP: "10.20.0.15", Firmware: "arm64",
		UpdatedAt: now.Add(-20 * time.Second)}, "phase 1/4: kexec")
	r.add(MachineView{MAC: "52:54:00:12:00:06", Hostname: "rack1-web-03", Profile: "web", State: "booting", IP: "10.20.0.16", Firmware: "bios",
		UpdatedAt: now.Add(-30 * time.Second)}, "PXE boot into the installer (new machine) from 10.20.0.16")
	r.add(MachineView{MAC: macFailed, Hostname: "rack1-web-04", Profile: "web", State: "failed", Phase: "disko", IP: "10.20.0.17", Firmware: "efi-x64",
		Error: failedError, UpdatedAt: now.Add(-6 * time.Minute)}, "phase 2/4: disko", "install failed in disko: "+failedError)
	r.add(MachineView{MAC: "52:54:00:12:00:08", Hostname: "rack1-web-05", Profile: "web", State: "new", UpdatedAt: now.Add(-time.Hour)}, "added from the config")
	r.logs[macFailed] = []LogView{
		{Seq: 1, Line: "[kexec] kexec into the NixOS installer"},
		{Seq: 2, Line: "[disko] wiping /dev/vdz"},
		{Seq: 3, Line: "[disko] " + tailMarker},
		{Seq: 4, Line: "[disko] error: /dev/vdz: no such device"},
	}
	r.boots[macFailed] = BootView{TokenFingerprint: "3f2a9c01", HostKey: "SHA256:q0sV1mX2bNn3Jp8Rz7Wd4Ke5Ty6Uh9Lc0Ag1Fi2Oo3", IP: "10.20.0.17",
		Firmware: "efi-x64", CreatedAt: now.Add(-9 * time.Minute)}
	return r
}

// pageServer serves r as the admin side, and records the requests it
// got, method and path, to check what a page sent.
type pageServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string
}

func (p *pageServer) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.reqs)
}

// browserDriver is a page of the test only (same origin as the admin
// pages): it logs in the way the login form does, then opens target in
// a frame and clicks each selector in clicks, one per page load; at
// the end the browser goes to wherever the frame is, so that the dump
// shows that page as the server renders it.
const browserDriver = `<!doctype html><html><body><iframe id="f" width="1000" height="600"></iframe><script>
var p=new URLSearchParams(location.search), clicks=p.getAll("click"), f=document.getElementById("f"), step=0;
function go(){
  f.onload=function(){
    var d=f.contentDocument;
    if(step<clicks.length){var b=d.querySelector(clicks[step++]);if(!b){document.title="missing "+clicks[step-1];return}
      d.defaultView.confirm=function(){return true};b.click();return}
    location.replace(f.contentWindow.location.href);
  };
  f.src=p.get("target");
}
if(p.get("token")){fetch("/login",{method:"POST",credentials:"same-origin",body:new URLSearchParams({token:p.get("token")})}).then(go)}else{go()}
</script></body></html>`

func servePages(t *testing.T, r *rack, requireLogin bool) *pageServer {
	t.Helper()
	return servePagesConfig(t, r, Config{APIToken: testAPIToken, RequireLogin: requireLogin})
}

// servePagesConfig is servePages with the admin side's whole config.
func servePagesConfig(t *testing.T, r *rack, cfg Config) *pageServer {
	t.Helper()
	cfg.Log = slog.New(slog.NewTextHandler(&syncbuf.Buffer{}, nil))
	s := New(cfg, r)
	p := &pageServer{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/test-driver" {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			io.WriteString(w, browserDriver)
			return
		}
		p.mu.Lock()
		p.reqs = append(p.reqs, req.Method+" "+req.URL.Path)
		p.mu.Unlock()
		s.ServeHTTP(w, req)
	}))
	t.Cleanup(p.Close)
	return p
}

// chromium runs headless Chromium on url and returns the DOM it ends
// with; shot, if set, is where a screenshot goes instead.
func chromium(t *testing.T, url, shot string, size string) []byte {
	t.Helper()
	netlab.RequireTools(t, "chromium")
	dir := t.TempDir()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=" + size, "--virtual-time-budget=5000"}
	if shot != "" {
		args = append(args, "--screenshot="+shot)
	} else {
		args = append(args, "--dump-dom")
	}
	// The deadline only keeps a wedged browser from hanging the suite;
	// nothing asserts on how long rendering takes.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "chromium", append(args, url)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, stderr.Bytes()[max(0, stderr.Len()-4000):])
	}
	return out
}

func driverURL(p *pageServer, target, token string, clicks ...string) string {
	q := url.Values{"target": {target}}
	if token != "" {
		q.Set("token", token)
	}
	q["click"] = clicks
	return p.URL + "/test-driver?" + q.Encode()
}

// rowOf is the overview row of mac in a dumped DOM.
func rowOf(t *testing.T, dom []byte, mac string) string {
	t.Helper()
	s := string(dom)
	i := strings.Index(s, `<tr id="m-`+mac+`"`)
	if i < 0 {
		t.Fatalf("no row for %s in:\n%s", mac, dom)
	}
	j := strings.Index(s[i:], "</tr>")
	return s[i : i+j]
}

// TestOverviewUpdatesLive: a machine that changes after the overview
// has loaded changes on it, counts too, with no reload.
func TestOverviewUpdatesLive(t *testing.T) {
	r := fillRack(time.Now())
	r.endStreams = true
	r.onSubscribe = func() {
		r.set(macInstalling, "installed", "", "", "installed: booted into the new system")
	}
	p := servePages(t, r, false)
	dom := chromium(t, p.URL+"/", "", "1400,900")
	row := rowOf(t, dom, macInstalling)
	if !strings.Contains(row, `data-state="installed"`) || !strings.Contains(row, `<td class="installed">installed</td>`) {
		t.Fatalf("row after the change:\n%s", row)
	}
	if !strings.Contains(string(dom), `data-count="installed"><b>3</b>`) || !strings.Contains(string(dom), `data-count="installing"><b>3</b>`) {
		t.Fatalf("counts did not follow the change:\n%s", dom)
	}
	// An installing machine: its phase as a progress bar with the time
	// in it and the phase's share (disko: 22.5 s of a typical 10 m 2.5 s),
	// its address and firmware, its last event.
	row = rowOf(t, dom, "52:54:00:12:00:04")
	for _, want := range []string{`<progress max="100" value="`, "disko (2/4) for ", "disko is ~4% of a typical install", "<td>10.20.0.14</td><td>UEFI</td>", "phase 2/4: disko"} {
		if !strings.Contains(row, want) {
			t.Fatalf("installing row lacks %q:\n%s", want, row)
		}
	}
	if !slices.Contains(p.requests(), "GET /machines/"+macInstalling+"/row") {
		t.Fatalf("the page did not fetch the changed row: %v", p.requests())
	}
}

// TestFailedMachineInBrowser: the overview shows a failed machine's
// error cut to its first line; its page, to a logged-in operator, shows
// the full error and the install log; to one who is not, neither.
func TestFailedMachineInBrowser(t *testing.T) {
	r := fillRack(time.Now())
	r.endStreams = true
	p := servePages(t, r, false)
	dom := chromium(t, p.URL+"/", "", "1400,900")
	row := rowOf(t, dom, macFailed)
	if !strings.Contains(row, "exited with code 1") || strings.Contains(string(dom), tailMarker) {
		t.Fatalf("overview must show the error's first line and never its output:\n%s", row)
	}
	if strings.Count(row, "exited with code 1") != 1 {
		t.Fatalf("the last event repeats the error the row shows:\n%s", row)
	}
	if row := rowOf(t, dom, macInstalling); !strings.Contains(row, "phase 3/4: install") {
		t.Fatalf("an installing machine's row lacks its last event:\n%s", row)
	}
	dom = chromium(t, driverURL(p, "/machines/"+macFailed, testAPIToken), "", "1200,900")
	log := string(dom)
	if i := strings.Index(log, `<pre id="log"`); i < 0 {
		t.Fatalf("logged-in machine page has no log:\n%s", dom)
	} else {
		log = html.UnescapeString(log[i:])
	}
	for _, want := range []string{"[disko] wiping /dev/vdz", "[disko] " + tailMarker, "error: /dev/vdz: no such device"} {
		if !strings.Contains(log, want) {
			t.Fatalf("machine page's log lacks %q:\n%s", want, dom)
		}
	}
	if !strings.Contains(string(dom), `<pre id="error">`) || !strings.Contains(string(dom), "3f2a9c01") || strings.Contains(string(dom), bootToken) {
		t.Fatalf("machine page: want the full error and the boot's fingerprint:\n%s", dom)
	}
	dom = chromium(t, p.URL+"/machines/"+macFailed, "", "1200,900")
	if strings.Contains(string(dom), tailMarker) || strings.Contains(string(dom), `id="log"`) {
		t.Fatalf("machine page shows the install's output without a login:\n%s", dom)
	}
}

// TestActionFromBrowser: reinstall from a machine's page, confirmed,
// posts the action with its CSRF token; the inventory hears who asked,
// and the page shows the event.
func TestActionFromBrowser(t *testing.T) {
	r := fillRack(time.Now())
	r.endStreams = true
	p := servePages(t, r, false)
	dom := chromium(t, driverURL(p, "/machines/"+macFailed, testAPIToken,
		`form[action$="/reinstall"] button`, "#confirm"), "", "1200,900")
	want := "reinstall " + macFailed + " by operator (web, 127.0.0.1)"
	if !slices.Equal(r.actions, []string{want}) {
		t.Fatalf("inventory heard %q, want %q; requests %v", r.actions, want, p.requests())
	}
	if !slices.Contains(p.requests(), "POST /machines/"+macFailed+"/reinstall") {
		t.Fatalf("no POST of the action: %v", p.requests())
	}
	for _, want := range []string{"reinstall requested by operator (web, 127.0.0.1)", "(reinstall requested)", "Reinstall requested: the next PXE boot installs again."} {
		if !strings.Contains(string(dom), want) {
			t.Fatalf("page after the action lacks %q:\n%s", want, dom)
		}
	}
}

// TestUnauthenticatedBrowserSeesLogin: off loopback, a browser without
// the login sees the login form on the overview and on a machine's
// page, and no machine data.
func TestUnauthenticatedBrowserSeesLogin(t *testing.T) {
	r := fillRack(time.Now())
	r.endStreams = true
	p := servePages(t, r, true)
	for _, path := range []string{"/", "/machines/" + macFailed} {
		dom := chromium(t, p.URL+path, "", "1200,900")
		if !strings.Contains(string(dom), `action="/login"`) {
			t.Fatalf("%s: no login form:\n%s", path, dom)
		}
		// (The login form carries the path asked for, to come back to
		// it: a machine page's own MAC is the browser's, not the
		// inventory's.)
		for _, d := range []string{macInstalled, macInstalling, "rack1-", "installing", "disko", "10.20.0.", "3f2a9c01"} {
			if strings.Contains(string(dom), d) {
				t.Fatalf("%s without login shows %q:\n%s", path, d, dom)
			}
		}
	}
}

// TestScreenshots writes the README's pictures of the pages when
// PXE_SCREENSHOTS names a directory (make screenshots).
func TestScreenshots(t *testing.T) {
	dir := os.Getenv("PXE_SCREENSHOTS")
	if dir == "" {
		t.Skip("PXE_SCREENSHOTS not set")
	}
	r := fillRack(time.Now())
	r.endStreams = true
	p := servePages(t, r, false)
	chromium(t, p.URL+"/", filepath.Join(dir, "status-overview.png"), "1400,640")
	chromium(t, driverURL(p, "/machines/"+macFailed, testAPIToken), filepath.Join(dir, "status-machine.png"), "1100,1300")
}

func TestInstallPhasesMatchInstaller(t *testing.T) {
	if !slices.Equal(installPhases, installer.DefaultPhases) {
		t.Fatalf("the page's phases %v are not the installer's %v", installPhases, installer.DefaultPhases)
	}
}

// TestPageActionsNeedSessionAndCSRF: on loopback, where the pages are
// open, an action still asks for the login; a post without the
// session, or without the form's CSRF token, changes nothing.
func TestPageActionsNeedSessionAndCSRF(t *testing.T) {
	r := fillRack(time.Now())
	h := newHarness(t)
	h.srv.Config.Handler = New(Config{APIToken: testAPIToken, Log: slog.New(slog.NewTextHandler(h.logs, nil))}, r)
	path := "/machines/" + macFailed + "/reinstall"
	form := []string{"Content-Type", "application/x-www-form-urlencoded"}

	resp, _ := h.get(t, path)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login?next="+url.QueryEscape(path) {
		t.Fatalf("confirmation without a session: %d %q, want a redirect to the login", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := h.do(t, http.MethodPost, path, "csrf=x", form...); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("action without a session: %d, want 401", resp.StatusCode)
	}
	if resp, _ := h.do(t, http.MethodPost, path, "", "Authorization", "Bearer "+testAPIToken); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("page action with the bearer token: %d, want 401 (the API is the way for it)", resp.StatusCode)
	}
	if resp, _ := h.login(t, testAPIToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	_, page := h.get(t, path)
	m := regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`).FindSubmatch(page)
	if m == nil {
		t.Fatalf("confirmation page has no CSRF token:\n%s", page)
	}
	for _, bad := range []string{"", "csrf=" + strings.Repeat("0", 64)} {
		if resp, _ := h.do(t, http.MethodPost, path, bad, form...); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("action with CSRF %q: %d, want 403", bad, resp.StatusCode)
		}
	}
	if len(r.actions) != 0 {
		t.Fatalf("refused actions reached the inventory: %v", r.actions)
	}
	resp, _ = h.do(t, http.MethodPost, path, "csrf="+string(m[1]), form...)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/machines/"+macFailed+"?done=reinstall" {
		t.Fatalf("confirmed action: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if want := "reinstall " + macFailed + " by operator (web, 127.0.0.1)"; !slices.Equal(r.actions, []string{want}) {
		t.Fatalf("inventory heard %v, want %q", r.actions, want)
	}
	// A conflict comes back as the inventory words it.
	resp, body := h.do(t, http.MethodPost, "/machines/"+macInstalled+"/cancel", "csrf="+string(m[1]), form...)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "nothing to cancel") {
		t.Fatalf("cancel of an installed machine: %d %s", resp.StatusCode, body)
	}
	// A cancel that another server carries out is said as asked, not
	// as done.
	r.mu.Lock()
	r.runsElsewhere = "rack-a"
	r.mu.Unlock()
	resp, _ = h.do(t, http.MethodPost, "/machines/"+macFailed+"/cancel", "csrf="+string(m[1]), form...)
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/machines/"+macFailed+"?done=cancel-asked" {
		t.Fatalf("cancel run by another server: %d %q", resp.StatusCode, loc)
	}
	if _, page := h.get(t, "/machines/"+macFailed+"?done=cancel-asked"); !strings.Contains(string(page), "Cancel asked of the server that runs the install") || strings.Contains(string(page), "Install cancelled") {
		t.Fatalf("page after a cancel asked of another server:\n%s", page)
	}
}

// TestMachinePageHidesOutputWithoutLogin: on loopback the machine page
// is open, but the full error, the events' output and the log are for
// a logged-in operator only, as in the API; the boot token never shows.
func TestMachinePageHidesOutputWithoutLogin(t *testing.T) {
	r := fillRack(time.Now())
	p := servePages(t, r, false)
	c := &http.Client{}
	resp, err := c.Get(p.URL + "/machines/" + macFailed)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "exited with code 1") || !strings.Contains(string(body), "3f2a9c01") {
		t.Fatalf("machine page: %d\n%s", resp.StatusCode, body)
	}
	if strings.Contains(string(body), tailMarker) || strings.Contains(string(body), "wiping /dev/vdz") {
		t.Fatalf("machine page without login shows the install's output:\n%s", body)
	}
	resp, err = c.Get(p.URL + "/machines/" + macFailed + "/log")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("log without login: %d, want 401", resp.StatusCode)
	}
}

func TestProgress(t *testing.T) {
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	typical := newTypicalInstall(map[string][]time.Duration{"install": {6 * time.Minute, 10 * time.Minute, 8 * time.Minute, 100 * time.Minute}})
	if typical["install"] != 9*time.Minute || typical["kexec"] != defaultPhaseDurations["kexec"] {
		t.Fatalf("typical install %v: want the median of the history, the default without one", typical)
	}
	// kexec 1m, disko 1m, install 9m, reboot 1m: 12m in all.
	tests := []struct {
		name    string
		m       MachineView
		at      time.Duration
		percent int
	}{
		{"first phase just started", MachineView{State: "installing", Phase: "kexec", UpdatedAt: start}, 0, 0},
		{"half of install", MachineView{State: "installing", Phase: "install", UpdatedAt: start}, 270 * time.Second, 54},            // (2 + 4.5) / 12,
		{"a long phase stops short of the next", MachineView{State: "installing", Phase: "disko", UpdatedAt: start}, time.Hour, 16}, // (1 + 0.95) / 12,
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := typical.progress(tt.m, start.Add(tt.at))
			if !ok || p.Percent != tt.percent {
				t.Fatalf("progress = %d%% (%v), want %d%%", p.Percent, ok, tt.percent)
			}
		})
	}
	if _, ok := typical.progress(MachineView{State: "installed"}, start); ok {
		t.Fatal("an installed machine has no progress bar")
	}
}

func TestFirmwareLabel(t *testing.T) {
	for in, want := range map[string]string{"": "unknown", "arm64": "arm64", "efi-arm64": "arm64", "efi-x64": "UEFI",
		"bios": "BIOS", "x86_64": "unknown (x86_64, BIOS or UEFI)", "riscv64": "unknown (riscv64)"} {
		if got := firmwareLabel(in); got != want {
			t.Errorf("firmwareLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMachinePageFactsAndAssign: a discovered machine's page shows its
// facts (escaped: the machine wrote them) and who decided its profile;
// the assign action posts a profile and a hostname, and an unknown
// profile is the operator's error (400), with nothing assigned.
func TestMachinePageFactsAndAssign(t *testing.T) {
	const mac = "52:54:00:77:22:01"
	r := fillRack(time.Now())
	at := time.Now().Add(-time.Minute)
	r.add(MachineView{MAC: mac, State: "installer-up", UpdatedAt: at, Facts: &FactsView{
		Hardware: json.RawMessage(`{"vendor":"<script>alert(1)</script>","product":"Rack 9000","serial":"SN-77"}`),
		DHCP:     json.RawMessage(`{"circuit_id":"Eth1/0/7","relay":"10.9.0.1"}`), Addr: "10.20.0.99", CollectedAt: &at}}, "facts collected")
	h := newHarness(t)
	h.srv.Config.Handler = New(Config{APIToken: testAPIToken, Log: slog.New(slog.NewTextHandler(h.logs, nil))}, r)
	if resp, _ := h.login(t, testAPIToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	_, page := h.get(t, "/machines/"+mac)
	for _, want := range []string{`&#34;product&#34;: &#34;Rack 9000&#34;`, `&#34;circuit_id&#34;: &#34;Eth1/0/7&#34;`, "from 10.20.0.99", `action="/machines/` + mac + `/assign"`} {
		if !strings.Contains(string(page), want) {
			t.Fatalf("machine page lacks %s:\n%s", want, page)
		}
	}
	if strings.Contains(string(page), "<script>alert") {
		t.Fatal("a fact reached the page unescaped")
	}
	_, confirm := h.get(t, "/machines/"+mac+"/assign")
	m := regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`).FindSubmatch(confirm)
	if m == nil || !strings.Contains(string(confirm), `name="profile"`) {
		t.Fatalf("assign page:\n%s", confirm)
	}
	form := []string{"Content-Type", "application/x-www-form-urlencoded"}
	if resp, body := h.do(t, http.MethodPost, "/machines/"+mac+"/assign", "csrf="+string(m[1])+"&profile=nope", form...); resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `no profile "nope"`) {
		t.Fatalf("assign of an unknown profile: %d %s", resp.StatusCode, body)
	}
	resp, _ := h.do(t, http.MethodPost, "/machines/"+mac+"/assign", "csrf="+string(m[1])+"&profile=web&hostname=web-77", form...)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/machines/"+mac+"?done=assign" {
		t.Fatalf("assign: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if want := "assign web web-77 " + mac + " by operator (web, 127.0.0.1)"; !slices.Equal(r.actions, []string{want}) {
		t.Fatalf("inventory heard %v, want %q", r.actions, want)
	}
	if _, page := h.get(t, "/machines/"+mac); !strings.Contains(string(page), "Decided by</th><td id=\"decided\">operator: by operator (web, 127.0.0.1)") {
		t.Fatalf("page does not say who decided:\n%s", page)
	}
}
