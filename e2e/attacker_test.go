package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// attacker is a second host on the provisioning bridge while a VM
// installs: it has a lease of its own and no credentials, and keeps
// asking for the VM's boot script and calling back with made-up
// tokens, as the four requests that once took a machine's disk keys
// began. Its SSH port counts every connection: the engine must never
// come there.
type attacker struct {
	lab    *netlab.Lab
	ns     *netlab.NS
	ip     string
	victim string
	conns  atomic.Int32
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	codes map[string]int // "what|status" → count
}

func startAttacker(t *testing.T, lab *netlab.Lab, victimMAC string) *attacker {
	t.Helper()
	a := &attacker{lab: lab, victim: victimMAC, codes: map[string]int{}, done: make(chan struct{})}
	a.ns = lab.Client("52:54:00:66:66:01")
	dir := t.TempDir()
	sc := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(sc, []byte("#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\necho \"$ip\" > "+dir+"/ip\n"), 0o755)
	if out, err := lab.Command(a.ns, "udhcpc", "-q", "-n", "-f", "-i", "eth0", "-t", "10", "-T", "2", "-s", sc).CombinedOutput(); err != nil {
		t.Fatalf("attacker's DHCP: %v\n%s", err, out)
	}
	ip, _ := os.ReadFile(filepath.Join(dir, "ip"))
	a.ip = strings.TrimSpace(string(ip))
	var ln net.Listener
	if err := netlab.Do(a.ns, func() (err error) { ln, err = net.Listen("tcp", ":22"); return err }); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.conns.Add(1)
			c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go a.run(ctx)
	t.Cleanup(func() { a.stop(); ln.Close() })
	t.Logf("attacker at %s on the lab bridge", a.ip)
	return a
}

// run repeats the attack every two seconds until stopped.
func (a *attacker) run(ctx context.Context) {
	defer close(a.done)
	base := "http://" + serverIP + ":8080"
	script := base + "/boot/" + strings.ReplaceAll(a.victim, ":", "-") + ".ipxe"
	for ctx.Err() == nil {
		var tok [24]byte
		rand.Read(tok[:])
		a.try(ctx, "script", script)
		a.try(ctx, "callback", base+"/api/v1/callback", "-H", "Content-Type: application/json",
			"-d", `{"token":"`+hex.EncodeToString(tok[:])+`","address":"`+a.ip+`"}`)
		a.try(ctx, "status page", base+"/")
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

func (a *attacker) try(ctx context.Context, what, url string, args ...string) {
	cmd := a.lab.Command(a.ns, "curl", append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url}, args...)...)
	out, _ := cmd.Output()
	if ctx.Err() != nil {
		return
	}
	a.mu.Lock()
	a.codes[what+"|"+strings.TrimSpace(string(out))]++
	a.mu.Unlock()
}

func (a *attacker) stop() {
	a.cancel()
	<-a.done
}

// check stops the attack and fails t if any request got anything but a
// refusal, if the engine connected to the attacker, or if the machine's
// events do not name the attacker's refused requests.
func (a *attacker) check(t *testing.T, events string) {
	t.Helper()
	a.stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	t.Logf("attacker's answers: %v", a.codes)
	for k, n := range a.codes {
		what, code, _ := strings.Cut(k, "|")
		switch {
		case what == "script" && code == "403",
			what == "callback" && code == "403",
			what == "status page" && (code == "404" || code == "401"):
		default:
			t.Errorf("attacker's %s request answered %s (%d times)", what, code, n)
		}
	}
	if a.codes["script|403"] == 0 || a.codes["callback|403"] == 0 {
		t.Errorf("the attack did not run: %v", a.codes)
	}
	if n := a.conns.Load(); n != 0 {
		t.Errorf("the attacker's SSH port saw %d connections", n)
	}
	if want := "boot script asked by " + a.ip + ", which DHCP did not give to " + a.victim; !strings.Contains(events, want) {
		t.Errorf("the machine's events lack %q", want)
	}
}
