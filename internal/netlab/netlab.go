// Package netlab builds throwaway network namespaces for tests and
// benchmarks: a bridge in a "server" namespace and client namespaces
// joined to it by veth pairs. Nothing it creates touches a real interface
// of the host, and everything is removed when the test ends.
//
// Tests that need it call Require, which skips when the machine cannot
// make namespaces (not root, no iproute2) unless PXE_LAB_REQUIRED=1, as
// in CI, where a skip would hide a missing package.
package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Require skips t unless namespaces can be made here; with
// PXE_LAB_REQUIRED=1 in the environment it fails instead.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	skipOrFail(t, "network lab unavailable", append(missing, missingTools(append([]string{"ip"}, tools...))...))
}

// RequireTools is Require for a test that needs the tools but no
// namespace (and so no root).
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	skipOrFail(t, "test tools", missingTools(tools))
}

func missingTools(tools []string) []string {
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	return missing
}

// skipOrFail skips t when something is missing, or fails it under
// PXE_LAB_REQUIRED=1 (CI), where a skip would hide a missing package.
func skipOrFail(t testing.TB, what string, missing []string) {
	t.Helper()
	if len(missing) == 0 {
		return
	}
	msg := what + ": missing " + strings.Join(missing, ", ")
	if os.Getenv("PXE_LAB_REQUIRED") == "1" {
		t.Fatal(msg + " (PXE_LAB_REQUIRED=1)")
	}
	t.Skip(msg)
}

// Lab is a bridge in its own namespace with the server address on it.
// Prefix is the lab subnet; the server holds its first address.
type Lab struct {
	t      testing.TB
	id     string
	Server *NS
	Bridge string
	Prefix netip.Prefix
	Addr   netip.Addr
	next   int
}

// NS is one network namespace made by the lab.
type NS struct {
	Name string
	// Link is the interface inside the namespace that faces the bridge
	// (the bridge itself for the server namespace).
	Link string
}

// New makes a lab whose server namespace owns bridge "br0" with the
// first host address of prefix (for example 10.77.0.0/24 → 10.77.0.1).
// The prefix only ever exists inside the lab's namespaces.
func New(t testing.TB, prefix string) *Lab {
	t.Helper()
	p := netip.MustParsePrefix(prefix).Masked()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	l := &Lab{t: t, id: hex.EncodeToString(b[:]), Bridge: "br0", Prefix: p, Addr: p.Addr().Next()}
	l.Server = l.addNS("srv")
	l.Server.Link = "br0"
	l.Run(l.Server, "ip", "link", "set", "lo", "up")
	l.Run(l.Server, "ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
	l.Run(l.Server, "ip", "addr", "add", fmt.Sprintf("%s/%d", l.Addr, p.Bits()), "dev", "br0")
	l.Run(l.Server, "ip", "link", "set", "br0", "up")
	return l
}

func (l *Lab) addNS(role string) *NS {
	name := fmt.Sprintf("pxe-%s-%s-%d", l.id, role, l.next)
	l.next++
	l.Run(nil, "ip", "netns", "add", name)
	l.t.Cleanup(func() {
		// Killing what still runs inside lets the namespace go away.
		if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			self := fmt.Sprint(os.Getpid())
			for _, pid := range strings.Fields(string(out)) {
				// Do may have left a thread of this very process in the
				// namespace (the main thread cannot be thrown away).
				if pid == self {
					continue
				}
				_ = exec.Command("kill", "-9", pid).Run()
			}
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	})
	return &NS{Name: name}
}

// Client makes a namespace joined to the bridge by a veth pair; its end
// is called "eth0" and has the given MAC (empty: random) and no address.
func (l *Lab) Client(mac string) *NS {
	l.t.Helper()
	ns := l.addNS("cl")
	ns.Link = "eth0"
	// The server end: a port of the bridge.
	port := fmt.Sprintf("v%s%d", l.id, l.next)
	// Both ends are born in their namespaces: a pair made on the host and
	// then moved would be seen by the host's network managers meanwhile,
	// and left behind there if a step in between failed.
	peer := []string{"peer", "name", "eth0", "netns", ns.Name}
	if mac != "" {
		peer = append(peer, "address", mac)
	}
	l.Run(nil, "ip", append([]string{"link", "add", port, "netns", l.Server.Name, "type", "veth"}, peer...)...)
	l.Run(l.Server, "ip", "link", "set", port, "master", "br0", "up")
	l.Run(ns, "ip", "link", "set", "lo", "up")
	l.Run(ns, "ip", "link", "set", "eth0", "up")
	return ns
}

// Tap makes a tap device on the bridge for a qemu guest and returns its
// name; qemu must then run inside the server namespace.
func (l *Lab) Tap() string {
	l.t.Helper()
	name := fmt.Sprintf("tap%d", l.next)
	l.next++
	l.Run(l.Server, "ip", "tuntap", "add", "dev", name, "mode", "tap")
	l.Run(l.Server, "ip", "link", "set", name, "master", "br0", "up")
	return name
}

// Command returns cmd to run inside ns (the host namespace when ns is nil).
func (l *Lab) Command(ns *NS, name string, args ...string) *exec.Cmd {
	if ns == nil {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command inside ns and fails the test if it fails.
func (l *Lab) Run(ns *NS, name string, args ...string) string {
	l.t.Helper()
	out, err := l.Command(ns, name, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs fn on an OS thread that has entered ns, so that sockets fn
// opens belong to that namespace for their whole life. The thread is
// thrown away afterwards rather than returned to the Go scheduler.
func Do(ns *NS, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread dies with the goroutine, so no other
		// goroutine ever runs in the namespace by accident.
		f, err := os.Open("/var/run/netns/" + ns.Name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// labEnv carries a lab into a test process that RunInServer started.
const labEnv = "PXE_NETLAB_INHERITED"

// RunInServer runs the test t again, in a process of its own inside the
// lab's server namespace, and fails t if that run fails. Code under
// test that opens sockets from many goroutines (an SSH client, the
// OpenSSH that nix copy starts) then lives where the server lives in
// production, and reaches the clients over the bridge. The child finds
// the lab with Inherited; clients are the namespaces it may use, in
// order. It reports whether this is the parent, which should return.
func (l *Lab) RunInServer(t *testing.T, clients ...*NS) bool {
	t.Helper()
	if os.Getenv(labEnv) != "" {
		return false
	}
	names := []string{l.Server.Name, l.Prefix.String()}
	for _, c := range clients {
		names = append(names, c.Name)
	}
	// -test.v makes the child say which tests passed: a run that
	// matched no test also ends in PASS.
	args := []string{"-test.run=^" + t.Name() + "$", "-test.count=1", "-test.timeout=10m", "-test.v"}
	cmd := l.Command(l.Server, os.Args[0], args...)
	cmd.Env = append(os.Environ(), labEnv+"="+strings.Join(names, ","))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()+" ") {
		t.Fatalf("%s in the lab's server namespace: %v\n%s", t.Name(), err, out)
	}
	if testing.Verbose() {
		t.Logf("in the lab's server namespace:\n%s", out)
	}
	return true
}

// Inherited returns the lab and client namespaces that RunInServer
// handed to this process, or nil outside such a run. The namespaces
// belong to the parent, which removes them.
func Inherited(t testing.TB) (*Lab, []*NS) {
	t.Helper()
	v := os.Getenv(labEnv)
	if v == "" {
		return nil, nil
	}
	f := strings.Split(v, ",")
	if len(f) < 2 {
		t.Fatalf("%s=%q: want server,prefix[,clients]", labEnv, v)
	}
	p := netip.MustParsePrefix(f[1])
	l := &Lab{t: t, Server: &NS{Name: f[0], Link: "br0"}, Bridge: "br0", Prefix: p, Addr: p.Addr().Next()}
	var clients []*NS
	for _, name := range f[2:] {
		clients = append(clients, &NS{Name: name, Link: "eth0"})
	}
	return l, clients
}
