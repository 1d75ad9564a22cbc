package provision

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

const (
	macA = "52:54:00:12:34:01"
	macB = "52:54:00:12:34:02"
	macX = "52:54:00:12:34:99" // not in the config
)

func testConfig(t *testing.T, unknown string) *profiles.Config {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"bzImage", "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	yaml := `server:
  interfaces: [br0]
  unknown_machines: ` + unknown + `
  discover_image: test
  max_installs: 1
images:
  test:
    kernel: ` + dir + `/bzImage
    initrd: [` + dir + `/initrd]
    cmdline: "console=ttyS0"
profiles:
  web:
    image: test
    store_paths: {disko: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko, system: /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system}
    kernel_params: [loglevel=4]
machines:
  - {mac: "` + macA + `", profile: web, hostname: web-01}
  - {mac: "` + macB + `", profile: web, hostname: web-02}
`
	cfg, err := profiles.Parse(filepath.Join(dir, "config.yaml"), []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// recordingEngine stands in for installer.Run in these unit tests of
// the decisions around it; the handoff test runs the real engine
// against a real OpenSSH server.
type recordingEngine struct {
	mu    sync.Mutex
	runs  []installer.Options
	err   error
	block chan struct{}
}

func (r *recordingEngine) run(ctx context.Context, o installer.Options, s installer.Sink) error {
	r.mu.Lock()
	r.runs = append(r.runs, o)
	r.mu.Unlock()
	s.PhaseStarted("disko", 1, 3)
	s.Line("disko", "stdout", "formatting /dev/vda")
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.PhaseDone("disko", time.Millisecond, r.err)
	return r.err
}

type fixture struct {
	p      *Provisioner
	store  *store.DB
	engine *recordingEngine
	cancel context.CancelFunc
	path   string
	signer ssh.Signer
	stop   func() // stops the server: cancel, wait, close the store
}

func newFixture(t *testing.T, cfg *profiles.Config, path string) *fixture {
	t.Helper()
	return startFixture(t, cfg, path, nil, time.Hour)
}

// startFixture starts a server on the state at path ("" for a new one)
// with the install key signer (nil for a new one), as a restart keeps
// its key file.
func startFixture(t *testing.T, cfg *profiles.Config, path string, signer ssh.Signer, pollDelay time.Duration) *fixture {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "state.db")
	}
	if signer == nil {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		signer, _ = ssh.NewSignerFromKey(priv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	eng := &recordingEngine{}
	p, err := New(ctx, cfg, Options{Store: st, Signer: signer, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Engine: eng.run, PollDelay: pollDelay})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			p.Wait()
			st.Close()
		})
	}
	t.Cleanup(stop)
	return &fixture{p: p, store: st, engine: eng, cancel: cancel, path: path, signer: signer, stop: stop}
}

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

// machineIP is where the test machines boot from: macA's address.
var machineIP = netip.MustParseAddr("10.77.0.100")

// ipOf is the address DHCP gives to each test machine.
func ipOf(m string) netip.Addr {
	switch m {
	case macB:
		return netip.MustParseAddr("10.77.0.101")
	case macX:
		return netip.MustParseAddr("10.77.0.199")
	}
	return machineIP
}

// bind is DHCP telling the Provisioner that m took addr on br0.
func (f *fixture) bind(t *testing.T, m string, addr netip.Addr) {
	t.Helper()
	f.p.Bound(context.Background(), dhcp.Binding{MAC: mac(m), Addr: addr, Interface: "br0", Expires: time.Now().Add(time.Hour)})
}

// boot is machine m, bound to ipOf(m), asking for its script.
func (f *fixture) boot(t *testing.T, m string) httpboot.BootPlan {
	t.Helper()
	f.bind(t, m, ipOf(m))
	plan, err := f.p.Boot(context.Background(), httpboot.BootRequest{MAC: mac(m), RemoteAddr: ipOf(m)})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// initrd fetches the extra initrd of m's boot token from ipOf(m).
func (f *fixture) initrd(t *testing.T, m, token string) []httpboot.ExtraFile {
	t.Helper()
	files, err := f.p.ExtraInitrd(context.Background(), token, ipOf(m))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// up is m's installer fetching its extra initrd and calling back.
func (f *fixture) up(t *testing.T, m, token string) {
	t.Helper()
	f.initrd(t, m, token)
	if err := f.p.Callback(context.Background(), token, ipOf(m), netip.Addr{}); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) state(t *testing.T, m string) store.MachineRecord {
	t.Helper()
	r, err := f.store.Machine(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func waitState(t *testing.T, f *fixture, m string, want store.State) store.MachineRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := f.state(t, m)
		if r.State == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine %s stayed %s (%s), want %s", m, r.State, r.Error, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestUnknownMachinePolicies(t *testing.T) {
	tests := []struct {
		policy   string
		decision dhcp.Decision
		action   httpboot.Action
	}{
		{"ignore", dhcp.Ignore, httpboot.ActionIgnore},
		{"local-boot", dhcp.Boot, httpboot.ActionLocal},
		{"discover", dhcp.Boot, httpboot.ActionInstall},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			f := newFixture(t, testConfig(t, tt.policy), "")
			if d := f.p.Decide(context.Background(), dhcp.Machine{MAC: mac(macX)}); d != tt.decision {
				t.Fatalf("decision %v, want %v", d, tt.decision)
			}
			plan := f.boot(t, macX)
			if plan.Action != tt.action {
				t.Fatalf("action %v, want %v", plan.Action, tt.action)
			}
			_, err := f.store.Machine(context.Background(), macX)
			if registered := err == nil; registered != (tt.policy == "discover") {
				t.Fatalf("registered=%v for policy %s", registered, tt.policy)
			}
			if tt.policy == "discover" {
				// Its installer comes up, but nothing is installed on it.
				f.up(t, macX, plan.Token)
				f.p.Wait()
				if r := f.state(t, macX); r.State != store.StateInstallerUp || len(f.engine.runs) != 0 {
					t.Fatalf("discovered machine: %+v, %d installs", r, len(f.engine.runs))
				}
			}
		})
	}
	f := newFixture(t, testConfig(t, "ignore"), "")
	if d := f.p.Decide(context.Background(), dhcp.Machine{MAC: mac(macA)}); d != dhcp.Boot {
		t.Fatal("known machine not booted")
	}
}

func TestTokensAndCallback(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	first := f.boot(t, macA)
	if first.Action != httpboot.ActionInstall || first.Image != "test" || len(first.Token) < 32 || first.Params[0] != "loglevel=4" {
		t.Fatalf("plan %+v", first)
	}
	if r := f.state(t, macA); r.State != store.StateBooting || r.IP != "10.77.0.100" {
		t.Fatalf("after boot: %+v", r)
	}
	var hostKey []byte
	for _, fl := range f.initrd(t, macA, first.Token) {
		if fl.Path == "ssh/ssh_host_ed25519_key" {
			hostKey = fl.Data
		}
	}
	if _, err := ssh.ParsePrivateKey(hostKey); err != nil {
		t.Fatalf("host key in the extra initrd: %v", err)
	}
	// A second boot supersedes the first token.
	second := f.boot(t, macA)
	if b, _ := f.store.BootByToken(ctx, first.Token); b.VoidedAt == nil || len(b.HostKeyPrivate) != 0 {
		t.Fatalf("superseded boot not voided, or its key kept: %+v", b)
	}
	for _, tok := range []string{"nope", first.Token} {
		if err := f.p.Callback(ctx, tok, machineIP, netip.Addr{}); !errors.Is(err, httpboot.ErrForbidden) {
			t.Fatalf("callback with %q: %v", tok, err)
		}
	}
	f.initrd(t, macA, second.Token)
	if err := f.p.Callback(ctx, second.Token, machineIP, machineIP); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Callback(ctx, second.Token, machineIP, netip.Addr{}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("replayed callback: %v", err)
	}
	if b, _ := f.store.BootByToken(ctx, second.Token); b.UsedAt == nil || len(b.HostKeyPrivate) != 0 || b.HostKeyPublic == "" {
		t.Fatalf("used boot: the private key must be erased and the public key kept: %+v", b)
	}
	r := waitState(t, f, macA, store.StateInstalled)
	if len(f.engine.runs) != 1 {
		t.Fatalf("%d installs, want 1", len(f.engine.runs))
	}
	o := f.engine.runs[0]
	if o.Target.Host != "10.77.0.100" || o.HostKey == nil || o.StorePaths.System != "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system" {
		t.Fatalf("engine options %+v", o)
	}
	evs, _ := f.store.Events(ctx, macA, 0, 100)
	var msgs []string
	for _, e := range evs {
		msgs = append(msgs, e.Message)
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"refused: boot voided: superseded", "refused: boot token already used", "installer up at 10.77.0.100", "phase 1/3: disko", "installed with profile web"} {
		if !strings.Contains(all, want) {
			t.Fatalf("events lack %q:\n%s", want, all)
		}
	}
	if lines, _ := f.store.Log(ctx, macA, 0, 10); len(lines) != 1 || lines[0].Line != "[disko] formatting /dev/vda" {
		t.Fatalf("log %v", lines)
	}
	// Installed: local boot, until a reinstall is asked for.
	if plan := f.boot(t, macA); plan.Action != httpboot.ActionLocal {
		t.Fatalf("installed machine got %v", plan.Action)
	}
	if err := f.p.Reinstall(ctx, macA, "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if plan := f.boot(t, macA); plan.Action != httpboot.ActionInstall {
		t.Fatalf("after reinstall got %v", plan.Action)
	}
	_ = r
}

func TestFailedInstallAndRestart(t *testing.T) {
	cfg := testConfig(t, "ignore")
	path := filepath.Join(t.TempDir(), "state.db")
	f := newFixture(t, cfg, path)
	f.engine.err = &installer.PhaseError{Phase: "disko", Command: "/nix/store/x-disko", ExitCode: 1, Err: errors.New("exit code 1")}
	plan := f.boot(t, macA)
	f.up(t, macA, plan.Token)
	r := waitState(t, f, macA, store.StateFailed)
	if r.Phase != "disko" || !strings.Contains(r.Error, "exit code 1") {
		t.Fatalf("failed machine %+v", r)
	}
	// An install cut off by a server stop is failed, never installed.
	f.engine.err = nil
	f.engine.block = make(chan struct{})
	plan = f.boot(t, macB)
	f.up(t, macB, plan.Token)
	waitState(t, f, macB, store.StateInstalling)
	// A machine that PXE-boots mid-install is not handed the installer.
	if p := f.boot(t, macB); p.Action != httpboot.ActionLocal {
		t.Fatalf("PXE boot during install got %v", p.Action)
	}
	f.cancel()
	f.p.Wait()
	r = f.state(t, macB)
	if r.State != store.StateFailed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("after stop: %+v", r)
	}
}

func TestRestartMarksInterrupted(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, "ignore")
	path := filepath.Join(t.TempDir(), "state.db")
	// A previous run died (no graceful stop) with an install under way.
	st, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	st.UpsertMachine(ctx, macA, "web-01", "web")
	for _, s := range []store.State{store.StateBooting, store.StateInstallerUp, store.StateInstalling} {
		if err := st.Transition(ctx, macA, s, "install", "", "before the crash"); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	f := newFixture(t, cfg, path)
	r := f.state(t, macA)
	if r.State != store.StateFailed || r.Error != "interrupted: server restarted during install" {
		t.Fatalf("after restart: %+v", r)
	}
	evs, _ := f.store.Events(ctx, macA, 0, 100)
	if len(evs) != 4 {
		t.Fatalf("events lost: %d", len(evs))
	}
}

func TestForgetRefusesConfiguredMachines(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "discover"), "")
	err := f.p.Forget(ctx, macA, "operator (API)")
	if !errors.Is(err, admin.ErrConflict) || !strings.Contains(err.Error(), "still in the config") {
		t.Fatalf("forgetting a configured machine: %v", err)
	}
	f.boot(t, macX) // discovered, not in the config
	if err := f.p.Forget(ctx, macX, "operator (API)"); err != nil {
		t.Fatalf("forgetting a discovered machine: %v", err)
	}
	if _, err := f.store.Machine(ctx, macX); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("still there: %v", err)
	}
}

// bootFromLoopback is a machine at 127.0.0.1 that PXE-boots and fetches
// its extra initrd, so a poller starts. It returns the token and the
// host key and authorized keys that the initrd carried.
func (f *fixture) bootFromLoopback(t *testing.T, m string) (token string, hostKey, authKeys []byte) {
	t.Helper()
	ctx := context.Background()
	lo := netip.MustParseAddr("127.0.0.1")
	f.bind(t, m, lo)
	plan, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(m), RemoteAddr: lo})
	if err != nil {
		t.Fatal(err)
	}
	files, err := f.p.ExtraInitrd(ctx, plan.Token, lo)
	if err != nil {
		t.Fatal(err)
	}
	for _, fl := range files {
		switch fl.Path {
		case "ssh/ssh_host_ed25519_key":
			hostKey = fl.Data
		case "ssh/authorized_keys":
			authKeys = fl.Data
		}
	}
	if !f.polling(plan.Token) {
		t.Fatal("no SSH poller after the extra initrd was fetched")
	}
	return plan.Token, hostKey, authKeys
}

func (f *fixture) polling(token string) bool {
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	_, ok := f.p.polling[token]
	return ok
}

func (f *fixture) events(t *testing.T, m string) string {
	t.Helper()
	evs, err := f.store.Events(context.Background(), m, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(e.Message + "\n")
	}
	return b.String()
}

func waitEvent(t *testing.T, f *fixture, m, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(f.events(t, m), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no event %q on %s:\n%s", want, m, f.events(t, m))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sshConfig is the test config with the web profile's SSH on port.
func sshConfig(t *testing.T, port int) *profiles.Config {
	t.Helper()
	cfg := testConfig(t, "ignore")
	cfg.Profile("web").SSH.Port = port
	return cfg
}

// A machine whose image does not call back is found by the SSH poller.
// A server restart must not lose it: the new run polls the boot's
// address again, still accepting only the host key that boot injected.
func TestRestartResumesSSHPoll(t *testing.T) {
	first := startFixture(t, testConfig(t, "ignore"), "", nil, time.Hour)
	token, hostKey, authKeys := first.bootFromLoopback(t, macA)
	first.stop()

	// Another host answers at the boot's address: its key is refused,
	// and it never gets a command.
	other := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: authKeys})
	second := startFixture(t, sshConfig(t, other.Port), first.path, first.signer, time.Millisecond)
	if !second.polling(token) {
		t.Fatal("the restart did not resume the poller")
	}
	waitEvent(t, second, macA, "answers with a host key other than the one this boot injected")
	if r := second.state(t, macA); r.State != store.StateBooting {
		t.Fatalf("after a foreign host key: %+v", r)
	}
	second.stop()
	other.Stop()
	if calls := other.Calls(); len(calls) != 0 {
		t.Fatalf("commands ran on a host with the wrong key: %q", calls)
	}

	// The installer with the injected key is up: the next run finds it.
	tg := sshtarget.Start(t, sshtarget.Options{HostKeyPEM: hostKey, AuthorizedKeys: authKeys})
	third := startFixture(t, sshConfig(t, tg.Port), first.path, first.signer, time.Millisecond)
	waitState(t, third, macA, store.StateInstalled)
	third.engine.mu.Lock()
	runs := third.engine.runs
	third.engine.mu.Unlock()
	if len(runs) != 1 {
		t.Fatalf("%d installs, want 1", len(runs))
	}
	if o := runs[0]; o.Target.Host != "127.0.0.1" || o.Target.Port != tg.Port || !bytes.Equal(o.HostKey.Marshal(), tg.HostKey.Marshal()) {
		t.Fatalf("engine options %+v, want 127.0.0.1:%d pinned to the boot's host key", o.Target, tg.Port)
	}
	ev := third.events(t, macA)
	for _, want := range []string{"server restarted during the boot: polling SSH at 127.0.0.1 again", "installer up at 127.0.0.1 (ssh-poll)"} {
		if !strings.Contains(ev, want) {
			t.Fatalf("events lack %q:\n%s", want, ev)
		}
	}
	if strings.Contains(ev, "callback refused") {
		t.Fatalf("a refusal was recorded:\n%s", ev)
	}
}

// A resumed poller is only a second door: the callback still wins, stops
// it, and a poller that reaches the door late leaves no trace. Boots that
// can no longer be used are not polled.
func TestResumedPollLosesToCallback(t *testing.T) {
	ctx := context.Background()
	lo := netip.MustParseAddr("127.0.0.1")
	first := startFixture(t, testConfig(t, "ignore"), "", nil, time.Hour)
	token, _, _ := first.bootFromLoopback(t, macA)
	// macB booted three hours ago and never came up: its token expired.
	old := store.Boot{Token: "expired-token", MAC: macB, IP: "127.0.0.1", HostKeyPublic: "ssh-ed25519 AAAA",
		HostKeyPrivate: []byte("x"), CreatedAt: time.Now().Add(-3 * time.Hour)}
	if err := first.store.CreateBoot(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := first.store.Transition(ctx, macB, store.StateBooting, "", "", "booted long ago"); err != nil {
		t.Fatal(err)
	}
	first.stop()

	second := startFixture(t, testConfig(t, "ignore"), first.path, first.signer, time.Hour)
	if !second.polling(token) {
		t.Fatal("the restart did not resume the poller")
	}
	if second.polling(old.Token) || strings.Contains(second.events(t, macB), "polling SSH") {
		t.Fatal("an expired boot is polled")
	}
	b, err := second.store.BootByToken(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.p.Callback(ctx, token, lo, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if second.polling(token) {
		t.Fatal("the callback left the poller running")
	}
	waitState(t, second, macA, store.StateInstalled)
	before := second.events(t, macA)
	if err := second.p.claim(ctx, b, lo, "ssh-poll"); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("late poller: %v", err)
	}
	if after := second.events(t, macA); after != before {
		t.Fatalf("a late poller left events:\n%s", strings.TrimPrefix(after, before))
	}
	done := make(chan struct{})
	go func() { second.p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the poller did not stop after the callback")
	}
	if n := len(second.engine.runs); n != 1 {
		t.Fatalf("%d installs, want 1", n)
	}
}

// A poller whose boot token runs out while no installer has answered
// says so, instead of leaving the machine in booting without a word.
func TestPollGivesUpWhenTokenExpires(t *testing.T) {
	ctx := context.Background()
	first := startFixture(t, testConfig(t, "ignore"), "", nil, time.Hour)
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(first.signer.PublicKey())))
	// Booted just under tokenLifetime ago, so the restart resumes its
	// poller and the token runs out at the poller's second look.
	b := store.Boot{Token: "nearly-expired", MAC: macB, IP: "127.0.0.1", HostKeyPublic: pub,
		HostKeyPrivate: []byte("x"), CreatedAt: time.Now().Add(-tokenLifetime + 2*time.Second)}
	if err := first.store.CreateBoot(ctx, b); err != nil {
		t.Fatal(err)
	}
	// Only a boot whose extra initrd went out can have an installer up.
	if _, ok, err := first.store.TakeInitrd(ctx, b.Token); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := first.store.Transition(ctx, macB, store.StateBooting, "", "", "booted"); err != nil {
		t.Fatal(err)
	}
	first.stop()

	second := startFixture(t, testConfig(t, "ignore"), first.path, first.signer, 10*time.Millisecond)
	if !second.polling(b.Token) {
		t.Fatal("the restart did not resume the poller")
	}
	deadline := time.Now().Add(20 * time.Second)
	for second.polling(b.Token) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if second.polling(b.Token) {
		t.Fatal("the poller of an expired boot is still running")
	}
	ev := second.events(t, macB)
	if !strings.Contains(ev, "gave up polling SSH at 127.0.0.1:22") || !strings.Contains(ev, "boot the machine into PXE again") {
		t.Fatalf("events do not say the poller gave up:\n%s", ev)
	}
	if m, err := second.store.Machine(ctx, macB); err != nil || m.State != store.StateBooting {
		t.Fatalf("machine %+v, %v; want it still booting", m, err)
	}
}
