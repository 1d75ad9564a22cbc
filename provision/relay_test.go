package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// TestRelayCircuitIDRule: a machine on a segment of its own PXE-boots
// through a real DHCP relay (isc-dhcp-relay's dhcrelay -a, which adds
// option 82 with the port's name as circuit-id); pxe-anywhere, which
// ignores unknown machines, leases it an address on that segment, and a
// rule on the circuit-id decides at its first script request that it
// installs, with a hostname made from the port.
func TestRelayCircuitIDRule(t *testing.T) {
	netlab.Require(t, "udhcpc", "curl", "dhcrelay")
	const mac = "52:54:00:77:21:01"
	lab := netlab.New(t, "10.88.0.0/24")
	relay := lab.Client("")
	machine, down := lab.Behind(relay, mac)
	lab.Run(relay, "ip", "addr", "add", "10.88.0.2/24", "dev", "eth0")
	lab.Run(relay, "ip", "addr", "add", "10.89.0.1/24", "dev", down)
	lab.Run(relay, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	lab.Run(lab.Server, "ip", "route", "add", "10.89.0.0/24", "via", "10.88.0.2")

	h := startHandoff(t, lab, "relay-api-token-0123456789", `server:
  interfaces: [br0]
  advertise: 10.88.0.1
  unknown_machines: ignore
dhcp:
  mode: authoritative
  subnet: 10.89.0.0/24
  range: [10.89.0.100, 10.89.0.110]
  router: 10.89.0.1
  relays: [10.88.0.2]   # dhcrelay sends from here; its giaddr is 10.89.0.1
images:
  test:
    kernel: %[1]s/bzImage
    initrd: [%[1]s/initrd]
profiles:
  web:
    image: test
    flake: ".#web"
rules:
  - name: rack3
    match: {circuit_id: "down*"}
    profile: web
    hostname: "r3-{circuit_id}"
`)

	dir := t.TempDir()
	rl := lab.Command(relay, "dhcrelay", "-d", "-q", "-4", "-a", "-pf", filepath.Join(dir, "relay.pid"), "-id", down, "-iu", "eth0", "10.88.0.1")
	var relayLog strings.Builder
	rl.Stdout, rl.Stderr = &relayLog, &relayLog
	if err := rl.Start(); err != nil {
		t.Fatalf("dhcrelay: %v", err)
	}
	t.Cleanup(func() { _ = rl.Process.Kill(); _ = rl.Wait() })

	// The machine as iPXE: DHCP through the relay, then its script.
	sc := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(sc, []byte("#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\nip route add default via \"$router\"\necho \"$ip $boot_file\" > "+dir+"/lease\n"), 0o755)
	var lease []string
	for try := 0; try < 3 && len(lease) != 2; try++ { // dhcrelay may take a moment to listen
		out, err := lab.Command(machine, "udhcpc", "-q", "-n", "-f", "-i", "eth0", "-t", "4", "-T", "2", "-s", sc,
			"-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845").CombinedOutput()
		b, _ := os.ReadFile(filepath.Join(dir, "lease"))
		lease = strings.Fields(string(b))
		if err != nil && try == 2 {
			t.Fatalf("udhcpc through the relay: %v\n%s\nrelay:\n%s", err, out, relayLog.String())
		}
	}
	if len(lease) != 2 || !strings.HasPrefix(lease[0], "10.89.0.1") || !strings.HasSuffix(lease[1], "/boot/52-54-00-77-21-01.ipxe") {
		t.Fatalf("lease through the relay: %q\nrelay:\n%s", lease, relayLog.String())
	}
	out, err := lab.Command(machine, "curl", "-sS", "-f", "--max-time", "30", lease[1]).CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v %s", err, out)
	}
	want := "# pxe-anywhere: install r3-" + down + " with image test"
	if !strings.Contains(string(out), want) || !strings.Contains(string(out), "\nkernel ") {
		t.Fatalf("script lacks %q:\n%s", want, out)
	}
	ctx := context.Background()
	rec, err := h.store.Machine(ctx, mac)
	if err != nil || rec.Profile != "web" || rec.Hostname != "r3-"+down || rec.State != store.StateBooting {
		t.Fatalf("machine %+v, %v", rec, err)
	}
	a, err := h.store.GetAssignment(ctx, mac)
	if err != nil || a.Source != "rule" || !strings.Contains(a.Reason, fmt.Sprintf(`rule "rack3" (rules[0]) matched: circuit_id=%q`, down)) {
		t.Fatalf("assignment %+v, %v", a, err)
	}
	f, err := h.store.Facts(ctx, mac)
	var seen dhcpSeen
	if err != nil || json.Unmarshal([]byte(f.DHCP), &seen) != nil || seen.CircuitID != down || seen.Relay != "10.89.0.1" || seen.Addr != lease[0] {
		t.Fatalf("DHCP context kept: %q, %v", f.DHCP, err)
	}
}

// TestSubnetRuleDirect: under unknown_machines: ignore, a rule on
// subnet places a machine on the server's own segment by the address
// this (authoritative) server leases it: DHCP asks the rules with the
// offered address, so the machine gets boot options, and its script
// request installs it. A machine whose address falls outside the rule's
// subnet gets a lease and nothing to boot.
func TestSubnetRuleDirect(t *testing.T) {
	netlab.Require(t, "udhcpc", "curl")
	const mac, other = "52:54:00:77:22:01", "52:54:00:77:22:02"
	lab := netlab.New(t, "10.87.0.0/24")
	h := startHandoff(t, lab, "subnet-api-token-0123456789", `server:
  interfaces: [br0]
  advertise: 10.87.0.1
  unknown_machines: ignore
dhcp:
  mode: authoritative
  subnet: 10.87.0.0/24
  range: [10.87.0.100, 10.87.0.140]
  router: 10.87.0.1
images:
  test:
    kernel: %[1]s/bzImage
    initrd: [%[1]s/initrd]
profiles:
  web:
    image: test
    flake: ".#web"
rules:
  - name: low
    match: {subnet: 10.87.0.96/27}
    profile: web
`)
	dir := t.TempDir()
	sc := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(sc, []byte("#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\necho \"$ip $boot_file\" > \"$OUT\"\n"), 0o755)
	dhcpAs := func(ns *netlab.NS, out string, extra ...string) []string {
		args := append([]string{"-q", "-n", "-f", "-i", "eth0", "-t", "4", "-T", "2", "-s", sc,
			"-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845"}, extra...)
		cmd := lab.Command(ns, "udhcpc", args...)
		cmd.Env = append(os.Environ(), "OUT="+out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("udhcpc: %v\n%s", err, b)
		}
		b, _ := os.ReadFile(out)
		return strings.Fields(string(b))
	}
	machine := lab.Client(mac)
	lease := dhcpAs(machine, filepath.Join(dir, "lease"))
	if len(lease) != 2 || !strings.HasPrefix(lease[0], "10.87.0.1") || !strings.HasSuffix(lease[1], "/boot/52-54-00-77-22-01.ipxe") {
		t.Fatalf("lease: %q: want an address in 10.87.0.96/27 and the script as boot file", lease)
	}
	out, err := lab.Command(machine, "curl", "-sS", "-f", "--max-time", "30", lease[1]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "# pxe-anywhere: install ") {
		t.Fatalf("script: %v %s", err, out)
	}
	ctx := context.Background()
	a, err := h.store.GetAssignment(ctx, mac)
	if err != nil || a.Source != "rule" || !strings.Contains(a.Reason, fmt.Sprintf(`rule "low" (rules[0]) matched: subnet=%q`, lease[0])) {
		t.Fatalf("assignment %+v, %v", a, err)
	}

	// Another machine asks for 10.87.0.130, outside the rule's subnet:
	// it gets that address and no boot file, and is not recorded.
	got := dhcpAs(lab.Client(other), filepath.Join(dir, "other"), "-r", "10.87.0.130")
	if len(got) != 1 || got[0] != "10.87.0.130" {
		t.Fatalf("machine outside the rule's subnet: lease %q, want 10.87.0.130 and no boot file", got)
	}
	if _, err := h.store.Machine(ctx, other); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("machine outside the rule's subnet recorded: %v", err)
	}
}

// startHandoff serves config (%[1]s in it is the directory of its image
// files) on lab, with a SQLite store, for a test of the whole boot
// side.
func startHandoff(t *testing.T, lab *netlab.Lab, apiToken, config string) *handoff {
	t.Helper()
	h := &handoff{dir: t.TempDir(), apiToken: apiToken, lab: lab}
	for _, f := range []string{"bzImage", "initrd"} {
		os.WriteFile(filepath.Join(h.dir, f), []byte("image file "+f), 0o644)
	}
	cfg, err := profiles.Parse(filepath.Join(h.dir, "config.yaml"), []byte(fmt.Sprintf(config, h.dir)))
	if err != nil {
		t.Fatal(err)
	}
	h.start(t, cfg, filepath.Join(h.dir, "state.db"))
	return h
}
