package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// engineLab drives the real engine (installer.Run) against stand-in
// machines: real OpenSSH servers on loopback (installer/sshtarget),
// one profile each, with a disko script that records, in a file all
// of them share, how many installs are inside disko at once.
type engineLab struct {
	p       *Provisioner
	store   *store.DB
	cfg     *profiles.Config
	targets []*sshtarget.Target
	macs    []string
	shared  string // the counter: cur (inside now), seen (one line per entry: the count then)
	signer  ssh.Signer
}

// newEngineLab starts n targets and a Provisioner with max_installs
// slots; profile is appended to every profile's YAML.
func newEngineLab(t *testing.T, n, slots int, profile string) *engineLab {
	return newEngineLabSSH(t, n, slots, profile, "")
}

// newEngineLabSSH is newEngineLab with sshExtra added to each profile's
// ssh: settings.
func newEngineLabSSH(t *testing.T, n, slots int, profile, sshExtra string) *engineLab {
	t.Helper()
	l := buildEngineLab(t, n, slots, profile, sshExtra, "")
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(ctx, l.cfg, Options{Store: st, Signer: l.signer, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		p.Wait()
		st.Close()
	})
	l.p, l.store = p, st
	return l
}

// buildEngineLab makes the targets and the config of an engineLab,
// with server appended to the config's server: section, without a
// Provisioner.
func buildEngineLab(t *testing.T, n, slots int, profile, sshExtra, server string) *engineLab {
	t.Helper()
	netlab.Require(t, "nix-store", "/usr/sbin/sshd", "flock")
	shared, err := os.MkdirTemp("", "i11b-engine-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	if err := os.WriteFile(filepath.Join(shared, "cur"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fakeDir := t.TempDir()
	abs, _ := filepath.Abs("../installer/testdata/fake-nix")
	if err := os.Symlink(abs, filepath.Join(fakeDir, "nix")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", fakeDir+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_NIX_DIR", t.TempDir())
	// Per target: fail-once fails the first run, hang waits to be
	// killed; the gate (shared) holds every install inside disko.
	disko := addToStore(t, "i11b-disko", `#!/bin/sh
S=`+shared+`
count() { flock "$S/lock" sh -c 'n=$(( $(cat "$1/cur") + $2 )); echo $n > "$1/cur"; [ $2 -lt 0 ] || echo $n >> "$1/seen"' _ "$S" "$1"; }
echo disko >> "$PXE_TARGET_DIR/calls"
echo $$ > "$PXE_TARGET_DIR/disko-running"
count 1
if [ -f "$PXE_TARGET_DIR/fail-once" ]; then rm -f "$PXE_TARGET_DIR/fail-once"; count -1; echo "disko: /dev/vda busy" >&2; exit 1; fi
if [ -f "$PXE_TARGET_DIR/hang" ]; then exec sleep 600; fi
while [ -f "$S/gate" ]; do sleep 0.05; done
count -1
mkdir -p /mnt/etc
echo "disko: partitioned and mounted /mnt"
`)
	system := addToStore(t, "i11b-system", "#!/bin/sh\n# init\n")

	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	l := &engineLab{shared: shared, signer: signer}
	dir := t.TempDir()
	for _, f := range []string{"bzImage", "initrd"} {
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	var y strings.Builder
	fmt.Fprintf(&y, "server:\n  interfaces: [br0]\n  max_installs: %d\n%simages:\n  test:\n    kernel: %s/bzImage\n    initrd: [%s/initrd]\nprofiles:\n", slots, server, dir, dir)
	var machines strings.Builder
	for i := 0; i < n; i++ {
		tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: ssh.MarshalAuthorizedKey(signer.PublicKey())})
		l.targets = append(l.targets, tg)
		mac := fmt.Sprintf("52:54:00:aa:00:%02x", i)
		l.macs = append(l.macs, mac)
		fmt.Fprintf(&y, "  m%d:\n    image: test\n    store_paths: {disko: %s, system: %s}\n    ssh: {port: %d%s}\n    phases: [disko, install]\n%s", i, disko, system, tg.Port, sshExtra, profile)
		fmt.Fprintf(&machines, "  - {mac: %q, profile: m%d}\n", mac, i)
	}
	y.WriteString("machines:\n" + machines.String())
	cfg, err := profiles.Parse(filepath.Join(dir, "config.yaml"), []byte(y.String()))
	if err != nil {
		t.Fatal(err)
	}
	l.cfg = cfg
	return l
}

// start hands machine i to the engine as the callback would: its
// installer is up at the target, with the target's host key pinned.
func (l *engineLab) start(t *testing.T, i int) {
	t.Helper()
	ctx := context.Background()
	mac := l.macs[i]
	for _, s := range []store.State{store.StateBooting, store.StateInstallerUp} {
		if err := l.store.Transition(ctx, mac, s, "", "", "test: "+string(s)); err != nil {
			t.Fatal(err)
		}
	}
	b := store.Boot{MAC: mac, HostKeyPublic: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(l.targets[i].HostKey)))}
	l.p.startInstall(b, l.cfg.MachineByMAC(mustMAC(mac)), "127.0.0.1")
}

func (l *engineLab) wait(t *testing.T, i int, want store.State) store.MachineRecord {
	t.Helper()
	// Not a timing assertion: the bound only turns a hang into a
	// failure.
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := l.store.Machine(context.Background(), l.macs[i])
		if err != nil {
			t.Fatal(err)
		}
		if r.State == want {
			return r
		}
		if r.State == store.StateFailed || r.State == store.StateInstalled || time.Now().After(deadline) {
			t.Fatalf("machine %d is %s (%s), want %s", i, r.State, r.Error, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *engineLab) events(t *testing.T, i int) string {
	t.Helper()
	evs, err := l.store.Events(context.Background(), l.macs[i], 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(e.Message + "\n")
	}
	return b.String()
}

// seen is the number of installs inside disko at each entry.
func (l *engineLab) seen(t *testing.T) []int {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(l.shared, "seen"))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: gave up after 60s", what)
		}
	}
}

// remoteGone waits until the disko stand-in of target i no longer runs.
func (l *engineLab) remoteGone(t *testing.T, i int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(l.targets[i].Dir, "disko-running"))
	if err != nil {
		t.Fatal(err)
	}
	proc := "/proc/" + strings.TrimSpace(string(b))
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(proc); os.IsNotExist(err) {
			return
		}
	}
	t.Errorf("machine %d: disko (%s) still runs on the target after its install ended", i, proc)
}

func (l *engineLab) running(i int) bool {
	_, err := os.Stat(filepath.Join(l.targets[i].Dir, "disko-running"))
	return err == nil
}

func TestMaxInstallsSeenFromTargets(t *testing.T) {
	l := newEngineLab(t, 3, 2, "")
	gate := filepath.Join(l.shared, "gate")
	os.WriteFile(gate, nil, 0o644)
	for i := range l.macs {
		l.start(t, i)
	}
	waitFor(t, "two installs inside disko", func() bool { return len(l.seen(t)) == 2 })
	// Two are held inside disko by the gate; the third waits for a
	// slot, so it has not reached its target.
	queued := -1
	for i := range l.macs {
		if !l.running(i) {
			queued = i
		}
	}
	if queued < 0 {
		t.Fatalf("all three installs reached their targets with max_installs 2 (seen %v)", l.seen(t))
	}
	if r := l.wait(t, queued, store.StateInstallerUp); r.Phase != "" {
		t.Fatalf("queued machine is in phase %q", r.Phase)
	}
	os.Remove(gate)
	for i := range l.macs {
		l.wait(t, i, store.StateInstalled)
	}
	seen := l.seen(t)
	most := 0
	for _, n := range seen {
		most = max(most, n)
	}
	if len(seen) != 3 || most != 2 {
		t.Fatalf("concurrent installs at each entry into disko: %v; want 3 entries, never more than 2 at once", seen)
	}
}

func TestRetriesAfterAFailure(t *testing.T) {
	l := newEngineLab(t, 1, 1, "    retries: 1\n")
	l.targets[0].WriteFile(t, "fail-once", "")
	l.start(t, 0)
	l.wait(t, 0, store.StateInstalled)
	ev := l.events(t, 0)
	for _, want := range []string{"phase disko failed", "retrying the install, attempt 2 of 2", "installed with profile m0"} {
		if !strings.Contains(ev, want) {
			t.Errorf("events do not say %q:\n%s", want, ev)
		}
	}
	n := 0
	for _, c := range l.targets[0].Calls() {
		if c == "disko" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("disko ran %d times, want 2 (a failure, then the retry)", n)
	}
}

func TestCancelHungInstall(t *testing.T) {
	l := newEngineLab(t, 2, 1, "")
	l.targets[0].WriteFile(t, "hang", "")
	l.start(t, 0)
	waitFor(t, "disko on machine 0", func() bool { return l.running(0) })
	l.start(t, 1) // queued behind 0: one slot
	ctx := context.Background()
	if _, err := l.p.Cancel(ctx, l.macs[1], "operator (API)"); err != nil {
		t.Fatalf("cancel of the queued install: %v", err)
	}
	if r := l.wait(t, 1, store.StateFailed); r.Error != "cancelled by operator" {
		t.Fatalf("queued machine after cancel: error %q", r.Error)
	}
	l.start(t, 1) // queued again
	if _, err := l.p.Cancel(ctx, l.macs[0], "operator (API)"); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	r := l.wait(t, 0, store.StateFailed)
	if r.Error != "cancelled by operator" || r.Phase != "disko" {
		t.Errorf("after cancel: error %q in phase %q, want \"cancelled by operator\" in disko", r.Error, r.Phase)
	}
	if ev := l.events(t, 0); !strings.Contains(ev, "install cancelled by operator (API) during disko") {
		t.Errorf("events do not name who cancelled:\n%s", ev)
	}
	l.remoteGone(t, 0)
	// The slot is free: the queued machine installs.
	l.wait(t, 1, store.StateInstalled)
	_, err := l.p.Cancel(ctx, l.macs[0], "operator (API)")
	if !errors.Is(err, admin.ErrConflict) || !strings.Contains(err.Error(), "has no install running or queued: nothing to cancel") {
		t.Errorf("cancel with nothing running: %v, want a conflict that says so", err)
	}
}

func TestPhaseTimeoutFreesTheSlot(t *testing.T) {
	l := newEngineLab(t, 2, 1, "    timeouts: {disko: 2s}\n")
	l.targets[0].WriteFile(t, "hang", "")
	l.start(t, 0)
	l.start(t, 1)
	r := l.wait(t, 0, store.StateFailed)
	for _, want := range []string{"phase disko failed", "phase disko timed out after 2s (raise profiles.m0.timeouts.disko in the config)"} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q does not say %q", r.Error, want)
		}
	}
	l.remoteGone(t, 0)
	l.wait(t, 1, store.StateInstalled)
}

func TestStoppedTargetFreesTheSlot(t *testing.T) {
	l := newEngineLabSSH(t, 2, 1, "", ", keepalive_interval: 1s, keepalive_count_max: 2")
	l.targets[0].WriteFile(t, "hang", "")
	l.start(t, 0)
	l.start(t, 1)
	waitFor(t, "disko on machine 0", func() bool { return l.running(0) })
	l.targets[0].Freeze(t)
	r := l.wait(t, 0, store.StateFailed)
	for _, want := range []string{"phase disko failed", "target stopped answering: no answer to 2 SSH keepalives sent 1s apart"} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q does not say %q", r.Error, want)
		}
	}
	l.wait(t, 1, store.StateInstalled)
}
