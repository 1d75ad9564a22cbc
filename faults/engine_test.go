package faults

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// endsWait tells whether a machine's error says that a wait on the
// target ended: a phase timeout or the SSH keepalive.
func endsWait(msg string) bool {
	msg = strings.ToLower(msg)
	for _, w := range []string{"timed out", "timeout", "keepalive", "not responding", "no answer", "unresponsive", "deadline"} {
		if strings.Contains(msg, w) {
			return true
		}
	}
	return false
}

// TestFaultLinkCutDuringCopy: the target's link goes down while nix
// copy sends the closure (the copy stalls on the wire). The install
// phase ends with an error that names it and says that a wait ended;
// with the link back, the machine reinstalls.
//
// Needs part B: keepalives and a per-profile phase timeout.
func TestFaultLinkCutDuringCopy(t *testing.T) {
	f := newFixture(t, options{profile: phaseTimeout("install", "20s"), sshOptions: keepaliveOptions})
	if f == nil {
		return
	}
	// The system's closure, which the install phase copies (disko's
	// goes in the disko phase).
	if err := os.WriteFile(f.stall, []byte("pxe-faults-system"), 0o644); err != nil {
		t.Fatal(err)
	}
	tg := f.startInstall(t)
	waitFile(t, filepath.Join(tg.Dir, "copying"), time.Minute)
	before := f.events(t)
	f.lab.Run(f.machine, "ip", "link", "set", "eth0", "down")
	cut := time.Now()
	m := f.waitState(t, "failed", 2*time.Minute)
	noticed := time.Since(cut)
	if !strings.Contains(m.Error, "phase install") || !endsWait(m.Error) {
		t.Fatalf("machine failed with %q: want the install phase named and a timeout or keepalive", m.Error)
	}
	f.lab.Run(f.machine, "ip", "link", "set", "eth0", "up")
	os.Remove(f.stall)
	tg.Stop()
	eventsKept(t, before, f.events(t))

	f.reinstall(t)
	f.install(t)
	f.integrity(t)
	reliability(t, "link-cut-copy", "detect_s", secs(noticed), "phase_timeout_s", 20)
}

// TestFaultSSHDStopped: the target's sshd (listener and sessions) is
// stopped with SIGSTOP while disko runs: the connection stays open and
// says nothing. The keepalive notices, the disko phase fails naming
// itself, and the install slot (max_installs: 1) is free: the next
// install runs.
//
// Needs part B: SSH keepalives. No phase timeout is set, so only the
// keepalive can end the wait within the test's bound.
func TestFaultSSHDStopped(t *testing.T) {
	f := newFixture(t, options{sshOptions: keepaliveOptions})
	if f == nil {
		return
	}
	tg := f.installerUpHanging(t)
	before := f.events(t)
	pids := sshdPIDs(t, tg)
	if len(pids) < 2 {
		t.Fatalf("sshd processes of the target: %v, want the listener and a session", pids)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	cont := func() {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(cont)
	stopped := time.Now()
	m := f.waitState(t, "failed", 90*time.Second)
	noticed := time.Since(stopped)
	if !strings.Contains(m.Error, "phase disko") || !endsWait(m.Error) {
		t.Fatalf("machine failed with %q: want the disko phase named and the keepalive", m.Error)
	}
	cont()
	tg.Stop()
	eventsKept(t, before, f.events(t))

	// One slot: this install runs only if the stuck one let go of it.
	f.reinstall(t)
	f.install(t)
	f.integrity(t)
	reliability(t, "sshd-sigstop", "detect_s", secs(noticed), "keepalive", "1s*3")
}
