package provision

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/power/powertest"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// powerConfig is testConfig with macA's BMC at the Redfish stand-in
// bmcURL (password file with password) and macB without a BMC.
func powerConfig(t *testing.T, bmcURL, password, afterInstall string) *profiles.Config {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"bzImage", "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pw := filepath.Join(dir, "bmc.pw")
	if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := `server:
  interfaces: [br0]
images:
  test:
    kernel: ` + dir + `/bzImage
    initrd: [` + dir + `/initrd]
profiles:
  web:
    image: test
    store_paths: {disko: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko, system: /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system}
    after_install: ` + afterInstall + `
    bmc: {type: redfish, user: root, password_file: ` + pw + `}
machines:
  - {mac: "` + macA + `", profile: web, hostname: web-01, bmc: {address: "` + bmcURL + `"}}
  - {mac: "` + macB + `", profile: plain, hostname: web-02}
`
	yaml = strings.Replace(yaml, "machines:", `  plain:
    image: test
    after_install: `+afterInstall+`
    store_paths: {disko: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko, system: /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system}
machines:`, 1)
	cfg, err := profiles.Parse(filepath.Join(dir, "config.yaml"), []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startStandIn(t *testing.T, password string) (*powertest.RedfishStandIn, string) {
	bmc := powertest.NewRedfishStandIn("root", password)
	srv := httptest.NewServer(bmc)
	t.Cleanup(srv.Close)
	return bmc, srv.URL
}

func TestPowerActionsAreEvents(t *testing.T) {
	bmc, url := startStandIn(t, "pw-a")
	f := newFixture(t, powerConfig(t, url, "pw-a", "reboot"), "")
	ctx := context.Background()
	v, err := f.p.Power(ctx, macA, admin.PowerStatus, "operator (API)")
	if err != nil || v.Power != "off" {
		t.Fatalf("status = %+v, %v; want off", v, err)
	}
	for _, a := range []string{admin.PowerOn, admin.PowerCycle, admin.PowerOff} {
		if _, err := f.p.Power(ctx, macA, a, "operator (API)"); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	if _, _, _, resets := bmc.Snapshot(); !slices.Equal(resets, []string{"On", "ForceRestart", "ForceOff"}) {
		t.Fatalf("BMC saw %v", resets)
	}
	evs := f.events(t, macA)
	for _, a := range []string{"on", "cycle", "off"} {
		want := "power " + a + " through BMC redfish " + url + " requested by operator (API): done"
		if !strings.Contains(evs, want) {
			t.Fatalf("events lack %q:\n%s", want, evs)
		}
	}
	if strings.Contains(evs, "power status") {
		t.Fatalf("a status that worked is no event:\n%s", evs)
	}
	// A machine without a BMC, and one not in the config.
	if _, err := f.p.Power(ctx, macB, admin.PowerOn, "operator (API)"); !errors.Is(err, admin.ErrConflict) || !strings.Contains(err.Error(), "no bmc") {
		t.Fatalf("power on without a BMC: %v", err)
	}
	if _, err := f.p.Power(ctx, macX, admin.PowerOn, "operator (API)"); !errors.Is(err, admin.ErrNotFound) {
		t.Fatalf("power on of an unknown MAC: %v", err)
	}
}

func TestPowerBMCErrorIsNamedInEvents(t *testing.T) {
	bmc, url := startStandIn(t, "the-right-one")
	f := newFixture(t, powerConfig(t, url, "a-wrong-one", "reboot"), "")
	_, err := f.p.Power(context.Background(), macA, admin.PowerOn, "operator (API)")
	if !errors.Is(err, admin.ErrBMC) {
		t.Fatalf("power on with a wrong password: %v, want ErrBMC", err)
	}
	evs := f.events(t, macA)
	want := "power on through BMC redfish " + url + " requested by operator (API) failed: BMC redfish " + url + ": on: BMC refused the credentials"
	if !strings.Contains(evs, want) {
		t.Fatalf("events lack %q:\n%s", want, evs)
	}
	if strings.Contains(evs, "a-wrong-one") || strings.Contains(err.Error(), "a-wrong-one") {
		t.Fatal("the password reached an event or an error")
	}
	if power, _, _, _ := bmc.Snapshot(); power != "Off" {
		t.Fatal("powered on with a wrong password")
	}
}

func TestReinstallPowerCycle(t *testing.T) {
	bmc, url := startStandIn(t, "pw")
	f := newFixture(t, powerConfig(t, url, "pw", "reboot"), "")
	ctx := context.Background()
	plan := f.boot(t, macA)
	f.up(t, macA, plan.Token)
	waitState(t, f, macA, store.StateInstalled)
	bmc.SetPower("On")

	v, err := f.p.ReinstallPowerCycle(ctx, macA, "operator (API)")
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Warnings) != 0 || !strings.Contains(v.Status, "power-cycled") {
		t.Fatalf("answer %+v", v)
	}
	if !f.state(t, macA).Reinstall {
		t.Fatal("the reinstall is not armed")
	}
	// The override was set before the restart, which used it up.
	power, enabled, target, resets := bmc.Snapshot()
	if power != "On" || target != "Pxe" || enabled != "Disabled" || !slices.Equal(resets, []string{"ForceRestart"}) {
		t.Fatalf("BMC: power %s override %s/%s resets %v", power, enabled, target, resets)
	}
	evs := f.events(t, macA)
	for _, want := range []string{"reinstall requested by operator (API)", "power cycle through BMC redfish " + url + " requested by operator (API) for the reinstall: done"} {
		if !strings.Contains(evs, want) {
			t.Fatalf("events lack %q:\n%s", want, evs)
		}
	}

	// A BMC that cannot set the boot device: a warning, and the cycle
	// still happens.
	bmc.BootTargets = []string{"None", "Hdd"}
	v, err = f.p.ReinstallPowerCycle(ctx, macA, "operator (API)")
	if err != nil || len(v.Warnings) != 1 || !strings.Contains(v.Warnings[0], "does not set the boot device") {
		t.Fatalf("ReinstallPowerCycle = %+v, %v; want one warning", v, err)
	}
	if _, _, _, resets := bmc.Snapshot(); len(resets) != 2 {
		t.Fatalf("resets %v: the cycle must go on after the warning", resets)
	}

	// No BMC: refused before anything is armed.
	plan = f.boot(t, macB)
	f.up(t, macB, plan.Token)
	waitState(t, f, macB, store.StateInstalled)
	if _, err := f.p.ReinstallPowerCycle(ctx, macB, "operator (API)"); !errors.Is(err, admin.ErrConflict) {
		t.Fatalf("without a BMC: %v", err)
	}
	if f.state(t, macB).Reinstall {
		t.Fatal("a reinstall was armed although the power cycle could not be done")
	}
}

func TestPoweroffFallsBackToBMC(t *testing.T) {
	bmc, url := startStandIn(t, "pw")
	bmc.SetPower("On")
	f := newFixture(t, powerConfig(t, url, "pw", "poweroff"), "")
	f.engine.err = &installer.PhaseError{Phase: installer.PhaseReboot, ExitCode: -1, Err: errors.New("10.77.0.100:22 still answers after 15m0s")}
	plan := f.boot(t, macA)
	f.up(t, macA, plan.Token)
	waitState(t, f, macA, store.StateInstalled)
	if power, _, _, resets := bmc.Snapshot(); power != "Off" || !slices.Equal(resets, []string{"ForceOff"}) {
		t.Fatalf("BMC: power %s resets %v, want Off by ForceOff", power, resets)
	}
	if evs := f.events(t, macA); !strings.Contains(evs, "powered off through BMC redfish "+url) {
		t.Fatalf("events:\n%s", evs)
	}
	if len(f.engine.runs) != 1 {
		t.Fatalf("%d engine runs: the fallback must not retry the install", len(f.engine.runs))
	}

	// Without a BMC the failure stands.
	plan = f.boot(t, macB)
	f.up(t, macB, plan.Token)
	waitState(t, f, macB, store.StateFailed)
}

func TestPoweroffFallbackOnlyForPoweroffInRebootPhase(t *testing.T) {
	for _, tc := range []struct {
		name, afterInstall, phase string
	}{
		{"after_install reboot", "reboot", installer.PhaseReboot},
		{"failure before the reboot phase", "poweroff", installer.PhaseDisko},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bmc, url := startStandIn(t, "pw")
			bmc.SetPower("On")
			f := newFixture(t, powerConfig(t, url, "pw", tc.afterInstall), "")
			f.engine.err = &installer.PhaseError{Phase: tc.phase, ExitCode: 1, Err: errors.New("exit code 1")}
			plan := f.boot(t, macA)
			f.up(t, macA, plan.Token)
			waitState(t, f, macA, store.StateFailed)
			if power, _, _, resets := bmc.Snapshot(); power != "On" || len(resets) != 0 {
				t.Fatalf("BMC used: power %s resets %v", power, resets)
			}
		})
	}
}
