package provision

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/power"
	"github.com/pxe-anywhere/pxe-anywhere/power/powertest"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// TestRuleBMCWithFactsAddress: a machine that a rule assigned gets the
// rule's bmc: block over its profile's, with the address discovery
// read on it (address: facts), and that drives a real BMC (ipmi_sim).
// An operator's machine of the same profile gets the profile's block
// only; a machine whose facts hold no BMC address gets a clear error
// in its events.
//
// The fact is an address without a port, so the BMC is at port 623;
// ipmi_sim listens on a free port of 127.0.0.1, and the controller
// the test builds dials that port on the address it was given, which
// must be the fact.
func TestRuleBMCWithFactsAddress(t *testing.T) {
	const password = "rule-bmc-pw"
	sim := powertest.StartIPMISim(t, powertest.IPMISimConfig{Password: password})
	_, simPort, _ := net.SplitHostPort(sim.Addr)
	pw := filepath.Join(t.TempDir(), "bmc.pw")
	if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var dialed []string
	orig := newController
	newController = func(b *profiles.BMC) (power.Controller, error) {
		dialed = append(dialed, b.Address)
		if b.Address != "127.0.0.1" {
			return nil, errors.New("test: BMC address " + b.Address + ", want the fact 127.0.0.1")
		}
		c := *b
		c.Address, c.Timeout = net.JoinHostPort(b.Address, simPort), 15*time.Second
		return orig(&c)
	}
	t.Cleanup(func() { newController = orig })

	cfg := withProfileBMC(t, "    bmc: {user: admin, password_file: "+pw+"}\n", `  - name: rack3
    match: {serial: "R3-*"}
    profile: web
    hostname: "r-{serial}"
    bmc: {type: ipmi, address: facts}
`)
	f := newFixture(t, cfg, filepath.Join(t.TempDir(), "state.db"))
	ctx := context.Background()
	const (
		byRuleMAC  = "52:54:00:77:25:01"
		noFactMAC  = "52:54:00:77:25:02"
		operatorMA = "52:54:00:77:25:03"
	)
	for mac, facts := range map[string]string{
		byRuleMAC:  `{"serial":"R3-1","bmc_address":"127.0.0.1"}`,
		noFactMAC:  `{"serial":"R3-2"}`,
		operatorMA: `{"serial":"R3-3","bmc_address":"127.0.0.1"}`,
	} {
		if _, err := f.store.Discover(ctx, mac, 10); err != nil {
			t.Fatal(err)
		}
		if err := f.store.SaveFacts(ctx, mac, facts, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.p.Reload(ctx, cfg); err != nil { // the rule assigns the R3 ones
		t.Fatal(err)
	}
	if err := f.p.Assign(ctx, operatorMA, "web", "op-3", "test"); err != nil {
		t.Fatal(err)
	}

	if _, err := f.p.Power(ctx, byRuleMAC, admin.PowerOn, "operator (API)"); err != nil {
		t.Fatalf("power on through the rule's BMC: %v (dialed %v)", err, dialed)
	}
	// ipmi_sim starts the machine after it answers.
	for deadline := time.Now().Add(10 * time.Second); len(sim.MachinePIDs()) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("ipmi_sim did not power the machine on within 10 s")
		}
	}
	v, err := f.p.Power(ctx, byRuleMAC, admin.PowerStatus, "operator (API)")
	if err != nil || v.Power != "on" {
		t.Fatalf("status = %+v, %v; want on", v, err)
	}
	if _, err := f.p.Power(ctx, byRuleMAC, admin.PowerOff, "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if ev := f.events(t, byRuleMAC); !strings.Contains(ev, "power on through BMC ipmi 127.0.0.1 requested by operator (API): done") {
		t.Fatalf("events of %s:\n%s", byRuleMAC, ev)
	}

	_, err = f.p.Power(ctx, noFactMAC, admin.PowerOn, "operator (API)")
	if !errors.Is(err, admin.ErrConflict) || !strings.Contains(err.Error(), "rules[0].bmc: address: facts, but discovery read no BMC address") {
		t.Fatalf("power on without a BMC address in the facts: %v", err)
	}
	if ev := f.events(t, noFactMAC); !strings.Contains(ev, "discovery read no BMC address") {
		t.Fatalf("events of %s:\n%s", noFactMAC, ev)
	}
	// The operator's machine: the profile's block, which has no
	// address; the rule that matches it too did not assign it.
	_, err = f.p.Power(ctx, operatorMA, admin.PowerOn, "operator (API)")
	if !errors.Is(err, admin.ErrConflict) || !strings.Contains(err.Error(), "missing type or address") {
		t.Fatalf("power on of an operator-assigned machine: %v", err)
	}
	if len(dialed) != 3 {
		t.Errorf("BMC dialed %d times (%v), want 3", len(dialed), dialed)
	}
}

// withProfileBMC is withRules with a bmc: block under profile web.
func withProfileBMC(t *testing.T, block, rules string) *profiles.Config {
	t.Helper()
	base := testConfig(t, "discover")
	dir := filepath.Dir(base.Images["test"].Kernel)
	text := `server:
  interfaces: [br0]
  unknown_machines: discover
  discover_image: test
images:
  test:
    kernel: ` + dir + `/bzImage
    initrd: [` + dir + `/initrd]
profiles:
  web:
    image: test
    flake: ".#web"
` + block + `rules:
` + rules
	cfg, err := profiles.Parse(filepath.Join(dir, "config.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
