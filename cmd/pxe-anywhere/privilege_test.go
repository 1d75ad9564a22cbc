package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// unitPath is the systemd unit the repository ships.
const unitPath = "../../contrib/systemd/pxe-anywhere.service"

// unitSettings returns the values of key in the shipped unit, in order.
func unitSettings(t *testing.T, key string) []string {
	t.Helper()
	f, err := os.Open(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// unitCaps are the capabilities the unit gives serve, in setpriv's
// spelling (net_bind_service). The ambient set and the bounding set
// must be the same: serve gets exactly these and can never gain others.
func unitCaps(t *testing.T) []string {
	t.Helper()
	amb, bnd := unitSettings(t, "AmbientCapabilities"), unitSettings(t, "CapabilityBoundingSet")
	if len(amb) != 1 || len(bnd) != 1 || amb[0] != bnd[0] {
		t.Fatalf("unit: AmbientCapabilities %q and CapabilityBoundingSet %q must be one line each, and the same", amb, bnd)
	}
	var caps []string
	for _, c := range strings.Fields(amb[0]) {
		caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	return caps
}

// TestSystemdUnit: the shipped unit passes systemd-analyze verify, and
// its exposure score stays that of a hardened service.
func TestSystemdUnit(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("PXE_LAB_REQUIRED") == "1" {
			t.Fatal("systemd-analyze missing (Debian package systemd) (PXE_LAB_REQUIRED=1)")
		}
		t.Skip("systemd-analyze missing (Debian package systemd)")
	}
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	// verify checks that ExecStart's program exists: point it at one
	// that does, this test's own binary.
	const bin = "/usr/local/bin/pxe-anywhere"
	if n := bytes.Count(unit, []byte("ExecStart="+bin+" serve ")); n != 1 {
		t.Fatalf("unit: %d ExecStart lines running %s serve, want 1", n, bin)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "pxe-anywhere.service")
	os.WriteFile(p, bytes.ReplaceAll(unit, []byte(bin), []byte(self)), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", p).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for pxe-anywhere\.service: ([0-9.]+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score > 2.5 {
		t.Fatalf("exposure level %.1f, want at most 2.5 (a hardened service):\n%s", score, out)
	}
	if caps := unitCaps(t); len(caps) != 1 || caps[0] != "net_bind_service" {
		t.Fatalf("unit grants %q; serve needs net_bind_service alone (TestServeUnprivileged shows it)", caps)
	}
}

// TestServeUnprivileged runs the real binary as an unprivileged user
// (nobody) with exactly the capabilities of the shipped unit, in a lab
// namespace, with authoritative DHCP: a DHCP client gets a lease and
// the boot side's /healthz answers, and the state it writes is that
// user's, private. Started again it takes its own files back. Without
// the capability it refuses to start, naming the capability.
func TestServeUnprivileged(t *testing.T) {
	netlab.Require(t, "udhcpc", "curl", "setpriv")
	if _, err := os.Stat("/usr/lib/ipxe/undionly.kpxe"); err != nil {
		if os.Getenv("PXE_LAB_REQUIRED") == "1" {
			t.Fatal("ipxe package missing")
		}
		t.Skip("ipxe package missing")
	}
	const uid = 65534 // nobody
	// A directory nobody can traverse: t.TempDir's are root's alone.
	dir, err := os.MkdirTemp("", "pxe-unpriv-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "pxe-anywhere")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// What StateDirectory= makes: the user's, 0700.
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, uid, uid); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(`server:
  interfaces: [br0]
  state_dir: `+state+`
dhcp:
  mode: authoritative
  subnet: 10.86.0.0/24
  range: [10.86.0.100, 10.86.0.120]
`), 0o644)
	lab := netlab.New(t, "10.86.0.0/24")
	cl := lab.Client("52:54:00:86:00:01")

	serve := func(caps []string) (*exec.Cmd, *syncbuf.Buffer, chan error) {
		set := "-all"
		for _, c := range caps {
			set += ",+" + c
		}
		var logs syncbuf.Buffer
		cmd := lab.Command(lab.Server, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups", "--no-new-privs",
			"--inh-caps="+set, "--ambient-caps="+set, "--bounding-set="+set, "--", bin, "serve", "--config", cfg)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			if t.Failed() {
				t.Logf("server log (capabilities %q):\n%s", caps, logs.String())
			}
		})
		return cmd, &logs, exited
	}
	started := func(logs *syncbuf.Buffer, exited chan error) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(logs.String(), "msg=serving") {
			select {
			case err := <-exited:
				t.Fatalf("serve exited: %v\n%s", err, logs.String())
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("serve did not start:\n%s", logs.String())
			}
		}
	}
	stop := func(cmd *exec.Cmd, exited chan error) {
		t.Helper()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("serve exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("serve did not stop on SIGTERM")
		}
	}

	// Without the capability: a clear refusal.
	_, logs, exited := serve(nil)
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(logs.String(), "port 67") || !strings.Contains(logs.String(), "need CAP_NET_BIND_SERVICE") {
			t.Fatalf("serve without capabilities: %v, want a refusal naming CAP_NET_BIND_SERVICE\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve without capabilities did not exit")
	}

	caps := unitCaps(t)
	cmd, logs, exited := serve(caps)
	started(logs, exited)
	// The process is nobody, with the unit's capabilities and no other
	// (ip netns exec and setpriv exec, so the PID is serve's).
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fmt.Sprintf("Uid:\t%[1]d\t%[1]d\t%[1]d\t%[1]d", uid), "CapEff:\t0000000000000400", "CapBnd:\t0000000000000400", "NoNewPrivs:\t1"} {
		if !strings.Contains(string(status), want+"\n") {
			t.Fatalf("serve's /proc status lacks %q:\n%s", want, status)
		}
	}
	script := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\necho \"$ip\" > \"$OUT\"\n"), 0o755)
	lease := filepath.Join(dir, "lease")
	dh := lab.Command(cl, "udhcpc", "-q", "-n", "-f", "-i", "eth0", "-t", "10", "-T", "1", "-s", script)
	dh.Env = append(os.Environ(), "OUT="+lease)
	if out, err := dh.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	if ip, _ := os.ReadFile(lease); !strings.HasPrefix(string(ip), "10.86.0.1") || len(strings.TrimSpace(string(ip))) != len("10.86.0.100") {
		t.Fatalf("lease %q, want one of 10.86.0.100-120", ip)
	}
	if b, err := lab.Command(cl, "curl", "-sSf", "--max-time", "10", "http://10.86.0.1:8080/healthz").CombinedOutput(); err != nil || string(b) != "ok\n" {
		t.Fatalf("healthz: %v %q", err, b)
	}
	// What it wrote is nobody's and private.
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"state.db", 0o600}, {"api-token", 0o600}, {"ssh", 0o700 | os.ModeDir}, {"ssh/id_ed25519", 0o600}, {"leases.json", 0o600},
	} {
		st, err := os.Stat(filepath.Join(state, f.path))
		if err != nil {
			t.Errorf("state: %v", err)
			continue
		}
		if owner := st.Sys().(*syscall.Stat_t).Uid; owner != uid || st.Mode() != f.mode {
			t.Errorf("state %s: owner %d mode %v, want %d %v", f.path, owner, st.Mode(), uid, f.mode)
		}
	}
	stop(cmd, exited)

	// A restart reads its own key, token and database back.
	cmd, logs, exited = serve(caps)
	started(logs, exited)
	stop(cmd, exited)
}
