package provision

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// engineFunc adapts a function to the engine's place.
func withEngine(f *fixture, eng Engine) { f.p.engine = eng }

func TestInstallLogKeepsHeadAndTail(t *testing.T) {
	cfg := testConfig(t, "ignore")
	cfg.Server.InstallLogHead, cfg.Server.InstallLogTail = 10, 20
	f := newFixture(t, cfg, "")
	withEngine(f, func(ctx context.Context, o installer.Options, s installer.Sink) error {
		s.PhaseStarted("install", 1, 1)
		for i := 1; i <= 1000; i++ {
			s.Line("install", "stdout", fmt.Sprintf("line %d", i))
		}
		s.PhaseDone("install", 0, nil)
		return nil
	})
	// A line from before this install stays.
	if err := f.store.AppendLog(context.Background(), macA, "earlier install"); err != nil {
		t.Fatal(err)
	}
	plan := f.boot(t, macA)
	f.up(t, macA, plan.Token)
	waitState(t, f, macA, store.StateInstalled)
	f.p.Wait()
	log, err := f.store.Log(context.Background(), macA, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range log {
		got = append(got, l.Line)
	}
	want := []string{"earlier install"}
	for i := 1; i <= 10; i++ {
		want = append(want, fmt.Sprintf("[install] line %d", i))
	}
	want = append(want, "[… 970 lines dropped: the install log keeps the first 10 and the last 20 lines (server.install_log_head, server.install_log_tail) …]")
	for i := 981; i <= 1000; i++ {
		want = append(want, fmt.Sprintf("[install] line %d", i))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// fullDisk is the state directory on a small tmpfs that the test can
// fill and empty again.
type fullDisk struct {
	dir    string
	filler string
}

func newFullDisk(t *testing.T) *fullDisk {
	t.Helper()
	netlab.Require(t, "mount", "umount")
	dir, err := os.MkdirTemp("", "i11b-state-")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=700", "tmpfs", dir).CombinedOutput(); err != nil {
		os.Remove(dir)
		t.Skipf("cannot mount a tmpfs (%v: %s)", err, out)
	}
	t.Cleanup(func() {
		exec.Command("umount", "-l", dir).Run()
		os.Remove(dir)
	})
	return &fullDisk{dir: dir, filler: filepath.Join(dir, "filler")}
}

// fill takes every free block, after folding SQLite's WAL into the
// database, so that the next write needs a block that is not there.
func (d *fullDisk) fill(t *testing.T, db string) {
	t.Helper()
	c, err := sql.Open("sqlite", "file:"+db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	c.Close()
	f, err := os.Create(d.filler)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

func (d *fullDisk) free(t *testing.T) {
	t.Helper()
	if err := os.Remove(d.filler); err != nil {
		t.Fatal(err)
	}
}

// TestStateWritesFail: the install ends while the disk is full. The
// machine's final state cannot be written; Health says so (503 on
// /healthz); the machine's next PXE boot, once there is room again, is
// served, and the state kept in memory is written.
func TestStateWritesFail(t *testing.T) {
	disk := newFullDisk(t)
	db := filepath.Join(disk.dir, "state.db")
	f := startFixture(t, testConfig(t, "ignore"), db, nil, 0)
	release := make(chan struct{})
	withEngine(f, func(ctx context.Context, o installer.Options, s installer.Sink) error {
		s.PhaseStarted("disko", 1, 1)
		<-release
		s.Line("disko", "stdout", "partitioned")
		s.PhaseDone("disko", 0, nil)
		return nil
	})
	ctx := context.Background()
	plan := f.boot(t, macA)
	f.up(t, macA, plan.Token)
	waitState(t, f, macA, store.StateInstalling)
	if err := f.p.Health(ctx); err != nil {
		t.Fatalf("Health before the fault: %v", err)
	}

	disk.fill(t, db)
	close(release)
	waitFor(t, "the install to end", func() bool {
		f.p.mu.Lock()
		defer f.p.mu.Unlock()
		return !f.p.queue.busy(macA)
	})
	err := f.p.Health(ctx)
	if err == nil || !strings.Contains(err.Error(), "state store fails") || !strings.Contains(err.Error(), "full") ||
		!strings.Contains(err.Error(), "the final state of 1 machine(s) is kept in memory only") {
		t.Fatalf("Health while the disk is full: %v", err)
	}
	if r := f.state(t, macA); r.State != store.StateInstalling {
		t.Fatalf("state %s: the full disk should have kept it installing on disk", r.State)
	}
	// A new boot while full gets an error, not a crash or a wrong state.
	f.bind(t, macA, ipOf(macA))
	if _, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: ipOf(macA)}); err == nil {
		t.Fatal("Boot with a full state disk: no error")
	}

	disk.free(t)
	plan = f.boot(t, macA)
	if plan.Action != httpboot.ActionInstall {
		t.Fatalf("boot once writes work: %+v", plan)
	}
	if err := f.p.Health(ctx); err != nil {
		t.Fatalf("Health once writes work: %v", err)
	}
	ev := f.events(t, macA)
	for _, want := range []string{"install ended, but recording it as installed failed", "(written late: state writes failed when the install ended)", "PXE boot into the installer"} {
		if !strings.Contains(ev, want) {
			t.Errorf("events do not say %q:\n%s", want, ev)
		}
	}
}

// TestStaleInstallingBootsAgain: a machine recorded as installing with
// no engine running (its final write was lost) is booted again, with
// an event, instead of "no transition from installing to booting".
func TestStaleInstallingBootsAgain(t *testing.T) {
	f := newFixture(t, testConfig(t, "ignore"), "")
	ctx := context.Background()
	for _, s := range []store.State{store.StateBooting, store.StateInstallerUp, store.StateInstalling} {
		if err := f.store.Transition(ctx, macA, s, "disko", "", "test"); err != nil {
			t.Fatal(err)
		}
	}
	if plan := f.boot(t, macA); plan.Action != httpboot.ActionInstall {
		t.Fatalf("plan %+v", plan)
	}
	if r := f.state(t, macA); r.State != store.StateBooting {
		t.Fatalf("state %s, want booting", r.State)
	}
	if ev := f.events(t, macA); !strings.Contains(ev, "recorded as installing with no engine running for it") {
		t.Errorf("no event says why:\n%s", ev)
	}
}
