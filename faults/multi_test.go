package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pxe-anywhere/pxe-anywhere/internal/ipxescript"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/pgtest"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// Two servers, one PostgreSQL database: rack-a is the fixture's server
// (authoritative DHCP on the bridge); rack-b runs in the namespace of
// the fixture's "other" host on the same bridge, at 10.86.0.2, in proxy
// mode, with its own state_dir.
const (
	rackBIP    = "10.86.0.2"
	claimLease = 3 * time.Second
)

// multiDB starts PostgreSQL (in the lab's child run only) and returns
// the server lines that put a fixture's state there as server id.
func multiDB(t *testing.T, id string) (server string, pg *pgtest.Server) {
	server, pg, _ = multiDBURL(t, id)
	return server, pg
}

// multiDBURL is multiDB that also returns the database's URL (with its
// password), for a test that reads the shared rows itself.
func multiDBURL(t *testing.T, id string) (server string, pg *pgtest.Server, url string) {
	t.Helper()
	pgtest.Require(t)
	if l, _ := netlab.Inherited(t); l == nil {
		return "", nil, "" // the parent only makes the lab
	}
	pg, db := pgtest.ForTest(t)
	pw := filepath.Join(t.TempDir(), "db-password")
	if err := os.WriteFile(pw, []byte(pg.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("  database: %s\n  database_password_file: %s\n  id: %s\n  claim_lease: %s\n", pg.URLWithoutPassword(db), pw, id, claimLease), pg, pg.URL(db)
}

// rackB is the second server: serve in ns, its admin API reached there.
type rackB struct {
	f     *fixture
	ns    *netlab.NS
	state string
	token string
	srv   *exec.Cmd
}

// startRackB runs a second serve on rack-a's config, changed to be
// another server on the same segment: its own address, state_dir and
// id, DHCP in proxy mode.
func startRackB(t *testing.T, f *fixture) *rackB {
	t.Helper()
	b := &rackB{f: f, ns: f.other, state: filepath.Join(f.dir, "state-b")}
	f.lab.Run(b.ns, "ip", "addr", "add", rackBIP+"/24", "dev", "eth0")
	raw, err := os.ReadFile(f.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		switch strings.TrimSpace(strings.SplitN(line, ":", 2)[0]) {
		case "subnet", "range", "router":
			continue // proxy mode: rack-a's DHCP gives the addresses
		}
		line = strings.Replace(line, "interfaces: [br0]", "interfaces: [eth0]", 1)
		line = strings.Replace(line, "advertise: "+serverIP, "advertise: "+rackBIP, 1)
		line = strings.Replace(line, "state_dir: "+f.state, "state_dir: "+b.state, 1)
		line = strings.Replace(line, "id: rack-a", "id: rack-b", 1)
		line = strings.Replace(line, "mode: authoritative", "mode: proxy", 1)
		line = strings.Replace(line, ", ip: "+ipA+"}", "}", 1)
		line = strings.Replace(line, ", ip: "+ipB+"}", "}", 1)
		out = append(out, line)
	}
	cfg := filepath.Join(f.dir, "config-b.yaml")
	if err := os.WriteFile(cfg, []byte(strings.Join(out, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	b.srv = f.lab.Command(b.ns, f.bin, "serve", "--config", cfg)
	b.srv.Stdout, b.srv.Stderr = logs, logs
	if err := b.srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- b.srv.Wait() }()
	t.Cleanup(func() {
		_ = b.srv.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("rack-b log:\n%s", tail(logs.String(), 200))
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case err := <-exited:
			t.Fatalf("rack-b exited at start: %v\n%s", err, logs.String())
		default:
		}
		if code, _ := httpGet("http://" + rackBIP + ":8080/healthz"); code != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rack-b did not answer within a minute\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(b.state, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	b.token = strings.TrimSpace(string(tok))
	return b
}

// api calls rack-b's admin side (127.0.0.1 in its namespace) and
// decodes into out; it returns the HTTP status.
func (b *rackB) api(t *testing.T, method, path string, out any) int {
	t.Helper()
	body, err := b.f.curl(b.ns, "-X", method, "-H", "Authorization: Bearer "+b.token, "-w", "\n%{http_code}", "http://127.0.0.1:8081"+path)
	if err != nil {
		t.Fatalf("rack-b %s %s: %v", method, path, err)
	}
	i := strings.LastIndex(body, "\n")
	var code int
	fmt.Sscanf(body[i+1:], "%d", &code)
	if out != nil && code/100 == 2 {
		if err := json.Unmarshal([]byte(body[:i]), out); err != nil {
			t.Fatalf("rack-b %s %s: %v\n%s", method, path, err, body)
		}
	}
	return code
}

// TestMultiKill9Takeover: rack-a installs a machine (disko hangs on the
// real sshd of its installer) and is killed with SIGKILL. rack-b, on
// the same database, finds rack-a's claim lapsed and fails the install
// as interrupted, naming rack-a, within the lease and a heartbeat period
// (plus slack for a loaded machine); rack-a's events from before the
// kill are all there. Then the reinstall works through rack-b: armed on
// its API, the machine boots again from rack-b (script, kernel, initrds,
// a new installer with the new keys, callback) and rack-b installs it:
// disko and nixos-install run once on the new installer, the row in the
// shared database says installed with rack-b's claim gone, and the
// events name the takeover, then rack-b's install.
func TestMultiKill9Takeover(t *testing.T) {
	server, _, dbURL := multiDBURL(t, "rack-a")
	f := newFixture(t, options{server: server})
	if f == nil {
		return
	}
	// rack-a alone answers the machine's boot (rack-b's proxy offer
	// might come first); rack-b starts while rack-a installs.
	tg := f.installerUpHanging(t)
	b := startRackB(t, f)
	var list []struct{ MAC, State string }
	if code := b.api(t, "GET", "/api/v1/machines", &list); code != 200 || len(list) != 2 {
		t.Fatalf("rack-b's machine list: HTTP %d, %+v", code, list)
	}
	// Two leases: rack-a's heartbeat keeps its claim; rack-b leaves
	// the install alone.
	time.Sleep(2 * claimLease)
	var m machineView
	if b.api(t, "GET", "/api/v1/machines/"+f.mac, &m); m.State != "installing" {
		t.Fatalf("with rack-a alive, rack-b shows %s (%q), want installing", m.State, m.Error)
	}
	before := f.events(t)

	killed := time.Now()
	f.stop(t, syscall.SIGKILL)
	tg.Stop()
	// rack-a's disko died with its installer, holding the lock that
	// finds two engines at once; the machine's next installer starts
	// with it free.
	if err := os.Remove(filepath.Join(f.engines, "lock")); err != nil {
		t.Fatalf("rack-a's disko held no lock: %v", err)
	}
	for {
		if code := b.api(t, "GET", "/api/v1/machines/"+f.mac, &m); code != 200 {
			t.Fatalf("rack-b: machine: HTTP %d", code)
		}
		if m.State != "installing" {
			break
		}
		if time.Since(killed) > time.Minute {
			t.Fatal("rack-b never took over rack-a's install")
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(killed)
	if m.State != "failed" || m.Error != "interrupted: server rack-a stopped" {
		t.Fatalf("after rack-a's kill, rack-b shows %s (%q), want failed, interrupted by rack-a", m.State, m.Error)
	}
	// The bound: the lease, then at most a heartbeat period until
	// rack-b's reaper runs; the rest is slack, not a speed claim.
	if bound := claimLease + claimLease/3 + 5*time.Second; took > bound {
		t.Errorf("rack-b took %s to fail rack-a's install, bound %s", took, bound)
	}
	var evs []event
	b.api(t, "GET", "/api/v1/machines/"+f.mac+"/events?after=0", &evs)
	eventsKept(t, before, evs[:min(len(evs), len(before))])
	if !strings.Contains(eventText(evs), "server rack-a stopped renewing its claim") {
		t.Fatalf("no event naming rack-a:\n%s", eventText(evs))
	}
	if code := b.api(t, "POST", "/api/v1/machines/"+f.mac+"/reinstall", nil); code/100 != 2 {
		t.Fatalf("reinstall through rack-b: HTTP %d", code)
	}
	t.Logf("rack-b failed rack-a's install %s after the kill (claim_lease %s)", took.Round(time.Millisecond), claimLease)

	// The machine boots again. rack-a's DHCP went with rack-a; the
	// machine's lease from it still holds (its address stays on its
	// link), and its PXE boot goes to rack-b, the server left.
	started := time.Now()
	token, hostKey, authKeys := f.fetchBoot(t, "http://"+rackBIP+":8080")
	tg2 := f.installerUp(t, hostKey, authKeys)
	code, _ := f.curl(f.machine, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
		"-d", `{"token":"`+token+`","address":"`+f.ip+`"}`, "http://"+rackBIP+":8080/api/v1/callback")
	if code != "200" {
		t.Fatalf("callback to rack-b: HTTP %s", code)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if code := b.api(t, "GET", "/api/v1/machines/"+f.mac, &m); code != 200 {
			t.Fatalf("rack-b: machine: HTTP %d", code)
		}
		if m.State == "installed" {
			break
		}
		if m.State == "failed" || time.Now().After(deadline) {
			b.api(t, "GET", "/api/v1/machines/"+f.mac+"/events?after=0", &evs)
			t.Fatalf("rack-b's reinstall: machine %s (%q), want installed; events:\n%s", m.State, m.Error, eventText(evs))
		}
		time.Sleep(100 * time.Millisecond)
	}
	reinstalled := time.Since(started)
	// Exactly once more, on the machine's new installer: rack-a's
	// installer is gone with its boot, and rack-a is dead.
	count := func(calls []string, name string) (n int) {
		for _, c := range calls {
			if c == name || strings.HasPrefix(c, name+" ") {
				n++
			}
		}
		return n
	}
	if calls := tg2.Calls(); count(calls, "disko") != 1 || count(calls, "nixos-install") != 1 || calls[len(calls)-1] != "reboot" {
		t.Fatalf("the new installer's calls %q, want disko and nixos-install once, then reboot", calls)
	}
	if old := tg.Calls(); count(old, "disko") != 1 || count(old, "nixos-install") != 0 {
		t.Fatalf("rack-a's installer got more calls after the kill: %q", old)
	}
	if o, err := os.ReadFile(filepath.Join(f.engines, "overlaps")); err == nil {
		t.Fatalf("two engines at once on the machine: %s", o)
	}
	// The shared database itself, not a server's view of it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var state, errText string
	var claims int
	if err := conn.QueryRow(ctx, "SELECT state, error FROM machines WHERE mac = $1", f.mac).Scan(&state, &errText); err != nil {
		t.Fatalf("the machine's row in PostgreSQL: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM claims WHERE mac = $1", f.mac).Scan(&claims); err != nil {
		t.Fatalf("the machine's claims in PostgreSQL: %v", err)
	}
	if state != "installed" || errText != "" || claims != 0 {
		t.Fatalf("PostgreSQL: the machine is %s (%q) with %d claims, want installed and none", state, errText, claims)
	}
	// The events: rack-a's, the takeover, then rack-b's new install.
	evs = nil
	for {
		var page []event
		b.api(t, "GET", fmt.Sprintf("/api/v1/machines/%s/events?after=%d", f.mac, lastID(evs)), &page)
		if len(page) == 0 {
			break
		}
		evs = append(evs, page...)
	}
	eventsKept(t, before, evs)
	text := eventText(evs)
	takeover, installing := -1, -1
	for i, e := range evs {
		switch {
		case takeover < 0 && strings.Contains(e.Message, "server rack-a stopped renewing its claim"):
			takeover = i
		case takeover >= 0 && installing < 0 && e.State == "installing":
			installing = i
		}
	}
	if takeover < 0 || installing < 0 || evs[len(evs)-1].State != "installed" {
		t.Fatalf("events do not show the takeover, then a new install to installed:\n%s", text)
	}
	t.Logf("rack-b reinstalled the machine in %s (boot, callback, install)", reinstalled.Round(time.Millisecond))
}

// bootFrom is the machine's PXE boot up to its installer, with the
// boot script of the server at base: the machine got an address from
// rack-a's DHCP, and the boot options of whichever server answered
// first, so the test names the server itself.
func (f *fixture) bootFrom(t *testing.T, base string) (token string, hostKey, authKeys []byte) {
	t.Helper()
	for i := 0; ; i++ {
		ip, _, err := f.udhcpc(t, f.machine, true)
		if err == nil && ip == f.ip {
			break
		}
		if i == 10 {
			t.Fatalf("no lease at %s from rack-a's DHCP: %s %v", f.ip, ip, err)
		}
	}
	return f.fetchBoot(t, base)
}

// fetchBoot is the rest of a PXE boot, once the machine has its
// address: the script from the server at base, every file it names,
// and the extra initrd's keys.
func (f *fixture) fetchBoot(t *testing.T, base string) (token string, hostKey, authKeys []byte) {
	t.Helper()
	script, err := f.curl(f.machine, "-f", base+scriptOf(f.mac))
	if err != nil || !strings.Contains(script, "\nkernel ") {
		t.Fatalf("script from %s: %v\n%s", base, err, script)
	}
	s, err := ipxescript.Parse([]byte(script))
	if err != nil || len(s.Initrds) < 2 {
		t.Fatalf("script without token or files (%v):\n%s", err, script)
	}
	dir := t.TempDir()
	for _, url := range s.URLs() {
		out := filepath.Join(dir, "fetched")
		if _, err := f.curl(f.machine, "-f", "-o", out, url); err != nil {
			t.Fatalf("fetching %s: %v", url, err)
		}
		if strings.Contains(url, "extra.cpio.gz") {
			x := filepath.Join(dir, "x")
			os.Mkdir(x, 0o700)
			if b, err := exec.Command("sh", "-c", "cd "+x+" && gzip -dc "+out+" | cpio -id --quiet").CombinedOutput(); err != nil {
				t.Fatalf("unpacking the extra initrd: %v %s", err, b)
			}
			hostKey, _ = os.ReadFile(filepath.Join(x, "ssh/ssh_host_ed25519_key"))
			authKeys, _ = os.ReadFile(filepath.Join(x, "ssh/authorized_keys"))
		}
	}
	if hostKey == nil || authKeys == nil {
		t.Fatalf("incomplete boot: host key %d bytes, keys %d bytes", len(hostKey), len(authKeys))
	}
	return s.Token, hostKey, authKeys
}

// TestMultiOneSegmentOneInstall: rack-a and rack-b serve one segment
// (rack-b in proxy mode) on one database, and one machine boots there.
// Its installer calls back to both servers with its token (as an image
// that knows both would), and mid-install it PXE-boots again to rack-b,
// which leaves it to rack-a (local boot); exactly one install runs, seen from the
// machine's real sshd: disko ran once, no engine overlapped, and after
// two more leases nothing installed it again.
func TestMultiOneSegmentOneInstall(t *testing.T) {
	server, _ := multiDB(t, "rack-a")
	f := newFixture(t, options{server: server})
	if f == nil {
		return
	}
	b := startRackB(t, f)
	token, hostKey, authKeys := f.bootFrom(t, bootBase)
	tg := f.installerUp(t, hostKey, authKeys)
	tg.WriteFile(t, "hang", "")
	f.callback(t, token)
	code, _ := f.curl(f.machine, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
		"-d", `{"token":"`+token+`","address":"`+f.ip+`"}`, "http://"+rackBIP+":8080/api/v1/callback")
	if code == "200" {
		t.Fatal("rack-b took the callback of a machine rack-a installs")
	}
	f.waitState(t, "installing", time.Minute)
	// The machine PXE-boots again mid-install and asks rack-b: rack-b
	// sees rack-a's live claim and sends it to its disk, neither
	// failing the install as stale nor starting a second one.
	script, err := f.curl(f.machine, "-f", "http://"+rackBIP+":8080"+scriptOf(f.mac))
	if err != nil || strings.Contains(script, "\nkernel ") {
		t.Fatalf("rack-b's script for a machine rack-a installs (%v):\n%s", err, script)
	}
	if m := f.machineState(t); m.State != "installing" {
		t.Fatalf("after the PXE boot to rack-b the machine is %s (%q)", m.State, m.Error)
	}
	if ev := eventText(f.events(t)); !strings.Contains(ev, "while server rack-a holds the machine's install claim") {
		t.Fatalf("no event for rack-b leaving the machine alone:\n%s", ev)
	}
	os.Remove(filepath.Join(tg.Dir, "hang"))
	f.waitState(t, "installed", 2*time.Minute)
	time.Sleep(2 * claimLease)
	disko := 0
	for _, c := range tg.Calls() {
		if c == "disko" {
			disko++
		}
	}
	if disko != 1 {
		t.Fatalf("disko ran %d times on the machine, want 1: %q", disko, tg.Calls())
	}
	if o, err := os.ReadFile(filepath.Join(f.engines, "overlaps")); err == nil {
		t.Fatalf("two engines at once on the machine: %s", o)
	}
	var m machineView
	if b.api(t, "GET", "/api/v1/machines/"+f.mac, &m); m.State != "installed" {
		t.Fatalf("rack-b shows %s (%q), want installed", m.State, m.Error)
	}
	t.Logf("rack-b answered the second callback with HTTP %s", code)
}

// TestMultiCancelThroughOtherServer: rack-a installs a machine (disko
// hangs); an operator asks rack-b, which does not run the install, to
// cancel it. rack-b leaves the cancel on rack-a's claim and says so;
// rack-a stops the install (hearing of it through the database's change
// notifications, or at its next heartbeat): the machine is failed
// ("cancelled by operator") in disko, its events name who asked and
// through which server. Then nothing runs anywhere: a second cancel
// through rack-b is a conflict.
func TestMultiCancelThroughOtherServer(t *testing.T) { cancelThroughRackB(t, claimLease) }

// TestMultiCancelHeardAtOnce is TestMultiCancelThroughOtherServer with a
// claim lease of an hour: rack-a's next heartbeat is twenty minutes
// away, so only the change notification can stop the install within
// the minute the test waits.
func TestMultiCancelHeardAtOnce(t *testing.T) { cancelThroughRackB(t, time.Hour) }

func cancelThroughRackB(t *testing.T, lease time.Duration) {
	server, _ := multiDB(t, "rack-a")
	server = strings.Replace(server, "claim_lease: "+claimLease.String(), "claim_lease: "+lease.String(), 1)
	f := newFixture(t, options{server: server})
	if f == nil {
		return
	}
	tg := f.installerUpHanging(t)
	b := startRackB(t, f)
	var out struct{ Status string }
	asked := time.Now()
	if code := b.api(t, "POST", "/api/v1/machines/"+f.mac+"/cancel", &out); code != 200 || !strings.Contains(out.Status, "cancel asked of server rack-a, which runs the install") {
		t.Fatalf("cancel through rack-b: HTTP %d, %q", code, out.Status)
	}
	m := f.waitState(t, "failed", time.Minute)
	took := time.Since(asked)
	if m.Error != "cancelled by operator" || m.Phase != "disko" {
		t.Fatalf("after the cancel: %q in %q, want cancelled by operator in disko", m.Error, m.Phase)
	}
	// A heartbeat period at most; the rest is slack, not a speed claim.
	if bound := lease/3 + 5*time.Second; took > bound {
		t.Errorf("rack-a stopped the install %s after the cancel through rack-b, bound %s", took, bound)
	}
	ev := eventText(f.events(t))
	for _, want := range []string{
		"cancel asked by operator (API) through server rack-b; server rack-a runs the install",
		"install cancelled by operator (API) through server rack-b during disko",
	} {
		if !strings.Contains(ev, want) {
			t.Fatalf("events lack %q:\n%s", want, ev)
		}
	}
	// rack-a let its claim go with the install: nothing to cancel now.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code := b.api(t, "POST", "/api/v1/machines/"+f.mac+"/cancel", nil)
		if code == 409 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a second cancel through rack-b: HTTP %d, want 409 (nothing runs)", code)
		}
	}
	if c := tg.Calls(); slices.Contains(c, "nixos-install") {
		t.Fatalf("the cancelled install went on: %q", c)
	}
	t.Logf("rack-a stopped the install %s after the cancel through rack-b (claim_lease %s)", took.Round(time.Millisecond), lease)
}
