package faults

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMaxInstallsSeenFromTargets: with max_installs: 1, two machines
// call back while the first one's disko runs. The second waits: its
// installer sees no command until the first is done, and the lock that
// disko holds on the targets' side was never found taken. Then both
// install.
func TestMaxInstallsSeenFromTargets(t *testing.T) {
	f := newFixture(t, options{})
	if f == nil {
		return
	}
	b := f.forMachine(f.second, macB, ipB)
	ta := f.installerUpHanging(t) // holds the one slot
	tb := b.startInstall(t)
	// A window, not a figure: for two seconds the second machine is up
	// and has called back, and nothing runs on it.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if m := b.machineState(t); m.State != "installer-up" {
			t.Fatalf("second machine is %s (%s) while the only slot is taken", m.State, m.Phase)
		}
		if calls := tb.Calls(); len(calls) != 0 {
			t.Fatalf("a second engine ran on its target while the only slot was taken: %q", calls)
		}
	}
	if err := os.Remove(filepath.Join(ta.Dir, "hang")); err != nil {
		t.Fatal(err)
	}
	f.waitState(t, "installed", 2*time.Minute)
	b.waitState(t, "installed", 2*time.Minute)
	if calls := tb.Calls(); len(calls) < 3 || calls[len(calls)-1] != "reboot" {
		t.Fatalf("second machine's installer calls %q", calls)
	}
	if overlaps, _ := os.ReadFile(filepath.Join(f.engines, "overlaps")); len(overlaps) != 0 {
		t.Fatalf("two engines ran disko at once, seen from the targets:\n%s", overlaps)
	}
	f.integrity(t)
}

// TestRetriesAfterAFailure: with retries: 1, disko fails once on the
// target; the engine tries the whole install again and the machine is
// installed, with the failure and the retry in its events.
func TestRetriesAfterAFailure(t *testing.T) {
	f := newFixture(t, options{profile: "    retries: 1\n"})
	if f == nil {
		return
	}
	token, hostKey, authKeys := f.boot(t)
	tg := f.installerUp(t, hostKey, authKeys)
	tg.WriteFile(t, "fail-once", "")
	f.callback(t, token)
	f.waitState(t, "installed", 2*time.Minute)
	calls := tg.Calls()
	var diskos int
	for _, c := range calls {
		if c == "disko" {
			diskos++
		}
	}
	if diskos != 2 || !slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "nixos-install ") }) || calls[len(calls)-1] != "reboot" {
		t.Fatalf("target calls %q: want disko twice, then the install and the reboot", calls)
	}
	ev := eventText(f.events(t))
	for _, w := range []string{"phase disko failed", "retrying the install, attempt 2 of 2", "installed with profile web"} {
		if !strings.Contains(ev, w) {
			t.Errorf("events lack %q", w)
		}
	}
	var lines []struct{ Line string }
	f.api(t, "GET", "/api/v1/machines/"+f.mac+"/log", &lines)
	if !slices.ContainsFunc(lines, func(l struct{ Line string }) bool { return strings.Contains(l.Line, "failing once, as the test asked") }) {
		t.Errorf("the install log lacks disko's error (%d lines)", len(lines))
	}
	if t.Failed() {
		t.Logf("events:\n%s", ev)
	}
	f.integrity(t)
}
