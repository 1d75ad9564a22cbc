package faults

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// TestFaultKill9: serve is killed with SIGKILL while disko runs on the
// target, and started again on the same state. The machine shows as
// failed, "interrupted"; every event from before is there, in order;
// after a reinstall the machine installs; the database is intact.
func TestFaultKill9(t *testing.T) {
	f := newFixture(t, options{})
	if f == nil {
		return
	}
	tg := f.installerUpHanging(t)
	before := f.events(t)

	killed := time.Now()
	f.stop(t, syscall.SIGKILL)
	tg.Stop() // the machine's installer goes with the install it ran
	f.start(t)
	m := f.machineState(t)
	recovered := time.Since(killed)
	if m.State != "failed" || !strings.Contains(m.Error, "interrupted") {
		t.Fatalf("after the restart the machine is %s (%q), want failed, interrupted", m.State, m.Error)
	}
	eventsKept(t, before, f.events(t))

	f.reinstall(t)
	start := time.Now()
	f.install(t)
	reinstalled := time.Since(start)
	f.integrity(t)
	reliability(t, "kill9", "recover_s", secs(recovered), "reinstall_s", secs(reinstalled), "events_kept", len(before))
}

// installerUpHanging starts an install whose disko hangs, as a long
// format does, and returns once disko runs on the target.
func (f *fixture) installerUpHanging(t *testing.T) *sshtarget.Target {
	t.Helper()
	token, hostKey, authKeys := f.boot(t)
	target := f.installerUp(t, hostKey, authKeys)
	target.WriteFile(t, "hang", "")
	f.callback(t, token)
	f.waitState(t, "installing", time.Minute)
	deadline := time.Now().Add(time.Minute)
	for !slices.Contains(target.Calls(), "disko") {
		if time.Now().After(deadline) {
			t.Fatalf("disko never ran: %q", target.Calls())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return target
}
