package provision

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// withRules is testConfig with unknown_machines policy and rules.
func withRules(t *testing.T, unknown, rules string) *profiles.Config {
	t.Helper()
	base := testConfig(t, unknown)
	dir := filepath.Dir(base.Images["test"].Kernel)
	text := `server:
  interfaces: [br0]
  unknown_machines: ` + unknown + `
  discover_image: test
images:
  test:
    kernel: ` + dir + `/bzImage
    initrd: [` + dir + `/initrd]
profiles:
  web:
    image: test
    flake: ".#web"
machines:
  - {mac: "` + macA + `", profile: web, hostname: web-01}
dhcp:
  relays: [10.9.0.1]
rules:
` + rules
	cfg, err := profiles.Parse(filepath.Join(dir, "config.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func serialRule(pattern string) string {
	return "  - {name: s, match: {serial: \"" + pattern + "\"}, profile: web, hostname: \"n-{serial}\"}\n"
}

// TestReloadReevaluatesRules: a config reload runs the rules again for
// discovered machines that are not installed, assigning and taking
// back what rules decided, and never touches an operator's assignment,
// an installed machine, or a machine the config lists.
func TestReloadReevaluatesRules(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, withRules(t, "discover", serialRule("A-*")), filepath.Join(t.TempDir(), "state.db"))
	const (
		found     = "52:54:00:77:23:01"
		assigned  = "52:54:00:77:23:02"
		installed = "52:54:00:77:23:03"
	)
	for _, m := range []string{found, assigned, installed} {
		if _, err := f.store.Discover(ctx, m, 10); err != nil {
			t.Fatal(err)
		}
		if err := f.store.SaveFacts(ctx, m, `{"serial":"B-`+m[len(m)-1:]+`"}`, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.p.Assign(ctx, assigned, "web", "op-2", "test"); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Assign(ctx, installed, "web", "n-b-3", "rule", "earlier"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []store.State{store.StateBooting, store.StateInstallerUp, store.StateInstalling, store.StateInstalled} {
		if err := f.store.Transition(ctx, installed, s, "", "", "test"); err != nil {
			t.Fatal(err)
		}
	}
	check := func(mac, profile, hostname, by string) {
		t.Helper()
		r, _ := f.store.Machine(ctx, mac)
		a, err := f.store.GetAssignment(ctx, mac)
		gotBy := a.Source
		if errors.Is(err, store.ErrNotFound) {
			gotBy = ""
		}
		if r.Profile != profile || r.Hostname != hostname || gotBy != by {
			t.Fatalf("%s: profile %q hostname %q by %q, want %q %q %q", mac, r.Profile, r.Hostname, gotBy, profile, hostname, by)
		}
	}
	check(found, "", "", "")

	if err := f.p.Reload(ctx, withRules(t, "discover", serialRule("B-*"))); err != nil {
		t.Fatal(err)
	}
	check(found, "web", "n-b-1", "rule")
	check(assigned, "web", "op-2", "operator")
	check(installed, "web", "n-b-3", "rule")
	if ev := f.events(t, found); !strings.Contains(ev, "config reload") || !strings.Contains(ev, "installs with profile web at its next PXE boot") {
		t.Fatalf("events of %s:\n%s", found, ev)
	}

	if err := f.p.Reload(ctx, withRules(t, "discover", serialRule("C-*"))); err != nil {
		t.Fatal(err)
	}
	check(found, "", "", "")
	check(assigned, "web", "op-2", "operator")
	check(installed, "web", "n-b-3", "rule")
	check(macA, "web", "web-01", "")
}

// TestReloadRespectsAssignLimit: a reload whose rule matches more
// discovered machines than max_discovered allows assigns up to the limit
// and goes on; the rest stay discovered.
func TestReloadRespectsAssignLimit(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, withRules(t, "discover", serialRule("A-*")), filepath.Join(t.TempDir(), "state.db"))
	for i := range 4 {
		m := fmt.Sprintf("52:54:00:77:25:%02x", i)
		if _, err := f.store.Discover(ctx, m, 10); err != nil {
			t.Fatal(err)
		}
		if err := f.store.SaveFacts(ctx, m, `{"serial":"B-`+strconv.Itoa(i)+`"}`, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	next := withRules(t, "discover", serialRule("B-*"))
	next.Server.MaxDiscovered = 2
	if err := f.p.Reload(ctx, next); err != nil {
		t.Fatalf("reload past the limit: %v", err)
	}
	as, err := f.store.Assignments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := f.store.Machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	for _, r := range recs {
		if r.Profile == "" {
			left++
		}
	}
	if len(as) != 2 || left != 2 {
		t.Fatalf("%d machines assigned, %d left discovered; want 2 and 2", len(as), left)
	}
}

// TestDecideByRuleBeforeDiscovery: under unknown_machines: ignore, a
// rule on DHCP context alone boots a machine; a rule that needs facts
// cannot, and other unknown machines stay ignored. What one MAC's DHCP
// context may keep is bounded.
func TestDecideByRuleBeforeDiscovery(t *testing.T) {
	cfg := withRules(t, "ignore", "  - {match: {mac_prefix: \"52:54:00:77:24\", circuit_id: \"Eth1/*\"}, profile: web}\n")
	f := newFixture(t, cfg, filepath.Join(t.TempDir(), "state.db"))
	ctx := context.Background()
	m := dhcp.Machine{MAC: mac("52:54:00:77:24:01"), Interface: "br0", CircuitID: "Eth1/0/3", Relay: netip.MustParseAddr("10.9.0.1")}
	if got := f.p.Decide(ctx, m); got != dhcp.Boot {
		t.Fatalf("a machine a rule matches: %v", got)
	}
	if got := f.p.Decide(ctx, dhcp.Machine{MAC: mac("52:54:00:77:24:02"), CircuitID: "Eth2/0/3"}); got != dhcp.Ignore {
		t.Fatalf("a machine no rule matches: %v", got)
	}
	if got := f.p.Decide(ctx, dhcp.Machine{MAC: mac(macX)}); got != dhcp.Ignore {
		t.Fatalf("an unknown machine: %v", got)
	}
	seen, ok := f.p.contexts.get("52:54:00:77:24:01")
	if !ok || seen.CircuitID != "Eth1/0/3" || seen.Relay != "10.9.0.1" || seen.Interface != "br0" {
		t.Fatalf("context kept: %+v %v", seen, ok)
	}
	if _, ok := f.p.contexts.get("52:54:00:77:24:02"); ok {
		t.Fatal("the context of an ignored machine was kept")
	}
	// A flood of invented MACs that match keeps at most max_unknown_macs.
	limit := cfg.Server.MaxUnknownMACs
	for i := 0; i < limit+100; i++ {
		hw := net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x24, 0}
		hw[3], hw[5] = byte(i>>8), byte(i)
		hw[4] = 0x24
		f.p.Decide(ctx, dhcp.Machine{MAC: net.HardwareAddr{0x52, 0x54, 0x00, 0x77, 0x24, byte(i)}, CircuitID: "Eth1/x"})
		f.p.contexts.put(hw.String(), dhcpSeen{}, limit)
	}
	if n := f.p.contexts.len(); n > limit {
		t.Fatalf("%d DHCP contexts kept, limit %d", n, limit)
	}
}
