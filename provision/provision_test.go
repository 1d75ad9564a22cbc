package provision

import (
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

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
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
	store  *profiles.Store
	engine *recordingEngine
	cancel context.CancelFunc
	path   string
}

func newFixture(t *testing.T, cfg *profiles.Config, path string) *fixture {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "state.db")
	}
	ctx, cancel := context.WithCancel(context.Background())
	store, err := profiles.OpenStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	eng := &recordingEngine{}
	p, err := New(ctx, cfg, Options{Store: store, Signer: signer, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Engine: eng.run, PollDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{p: p, store: store, engine: eng, cancel: cancel, path: path}
	t.Cleanup(func() {
		cancel()
		p.Wait()
		store.Close()
	})
	return f
}

func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

func (f *fixture) boot(t *testing.T, m string) httpboot.BootPlan {
	t.Helper()
	plan, err := f.p.Boot(context.Background(), httpboot.BootRequest{MAC: mac(m), RemoteAddr: netip.MustParseAddr("10.77.0.100")})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

func (f *fixture) state(t *testing.T, m string) profiles.MachineRecord {
	t.Helper()
	r, err := f.store.Machine(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func waitState(t *testing.T, f *fixture, m string, want profiles.State) profiles.MachineRecord {
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
				if err := f.p.Callback(context.Background(), plan.Token, netip.MustParseAddr("10.77.0.100")); err != nil {
					t.Fatal(err)
				}
				f.p.Wait()
				if r := f.state(t, macX); r.State != profiles.StateInstallerUp || len(f.engine.runs) != 0 {
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
	if r := f.state(t, macA); r.State != profiles.StateBooting || r.IP != "10.77.0.100" {
		t.Fatalf("after boot: %+v", r)
	}
	files, err := f.p.ExtraInitrd(ctx, first.Token)
	if err != nil {
		t.Fatal(err)
	}
	var hostKey []byte
	for _, fl := range files {
		if fl.Path == "ssh/ssh_host_ed25519_key" {
			hostKey = fl.Data
		}
	}
	if _, err := ssh.ParsePrivateKey(hostKey); err != nil {
		t.Fatalf("host key in the extra initrd: %v", err)
	}
	// A second boot supersedes the first token.
	second := f.boot(t, macA)
	if _, err := f.p.ExtraInitrd(ctx, first.Token); !errors.Is(err, httpboot.ErrUnknownToken) {
		t.Fatalf("superseded token still opens the initrd: %v", err)
	}
	for _, tok := range []string{"nope", first.Token} {
		if err := f.p.Callback(ctx, tok, netip.MustParseAddr("10.77.0.100")); !errors.Is(err, httpboot.ErrForbidden) {
			t.Fatalf("callback with %q: %v", tok, err)
		}
	}
	if err := f.p.Callback(ctx, second.Token, netip.MustParseAddr("10.77.0.100")); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Callback(ctx, second.Token, netip.MustParseAddr("10.77.0.100")); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("replayed callback: %v", err)
	}
	r := waitState(t, f, macA, profiles.StateInstalled)
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
	for _, want := range []string{"callback refused", "installer up at 10.77.0.100", "phase 1/3: disko", "installed with profile web"} {
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
	if err := f.p.Reinstall(ctx, macA); err != nil {
		t.Fatal(err)
	}
	if plan := f.boot(t, macA); plan.Action != httpboot.ActionInstall {
		t.Fatalf("after reinstall got %v", plan.Action)
	}
	_ = r
}

func TestFailedInstallAndRestart(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, "ignore")
	path := filepath.Join(t.TempDir(), "state.db")
	f := newFixture(t, cfg, path)
	f.engine.err = &installer.PhaseError{Phase: "disko", Command: "/nix/store/x-disko", ExitCode: 1, Err: errors.New("exit code 1")}
	plan := f.boot(t, macA)
	if err := f.p.Callback(ctx, plan.Token, netip.MustParseAddr("10.77.0.100")); err != nil {
		t.Fatal(err)
	}
	r := waitState(t, f, macA, profiles.StateFailed)
	if r.Phase != "disko" || !strings.Contains(r.Error, "exit code 1") {
		t.Fatalf("failed machine %+v", r)
	}
	// An install cut off by a server stop is failed, never installed.
	f.engine.err = nil
	f.engine.block = make(chan struct{})
	plan = f.boot(t, macB)
	if err := f.p.Callback(ctx, plan.Token, netip.MustParseAddr("10.77.0.101")); err != nil {
		t.Fatal(err)
	}
	waitState(t, f, macB, profiles.StateInstalling)
	// A machine that PXE-boots mid-install is not handed the installer.
	if p := f.boot(t, macB); p.Action != httpboot.ActionLocal {
		t.Fatalf("PXE boot during install got %v", p.Action)
	}
	f.cancel()
	f.p.Wait()
	r = f.state(t, macB)
	if r.State != profiles.StateFailed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("after stop: %+v", r)
	}
}

func TestRestartMarksInterrupted(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, "ignore")
	path := filepath.Join(t.TempDir(), "state.db")
	// A previous run died (no graceful stop) with an install under way.
	store, err := profiles.OpenStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	store.UpsertMachine(ctx, macA, "web-01", "web")
	for _, s := range []profiles.State{profiles.StateBooting, profiles.StateInstallerUp, profiles.StateInstalling} {
		if err := store.Transition(ctx, macA, s, "install", "", "before the crash"); err != nil {
			t.Fatal(err)
		}
	}
	store.Close()
	f := newFixture(t, cfg, path)
	r := f.state(t, macA)
	if r.State != profiles.StateFailed || r.Error != "interrupted: server restarted during install" {
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
	err := f.p.Forget(ctx, macA)
	if !errors.Is(err, httpboot.ErrConflict) || !strings.Contains(err.Error(), "still in the config") {
		t.Fatalf("forgetting a configured machine: %v", err)
	}
	f.boot(t, macX) // discovered, not in the config
	if err := f.p.Forget(ctx, macX); err != nil {
		t.Fatalf("forgetting a discovered machine: %v", err)
	}
	if _, err := f.store.Machine(ctx, macX); !errors.Is(err, profiles.ErrNotFound) {
		t.Fatalf("still there: %v", err)
	}
}
