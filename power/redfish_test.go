package power

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/power/powertest"
)

// startRedfish serves the stand-in over TLS and returns a Config that
// trusts its certificate.
func startRedfish(t *testing.T, s *powertest.RedfishStandIn, password string) Config {
	t.Helper()
	srv := httptest.NewTLSServer(s)
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "bmc.crt")
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, crt, 0o600); err != nil {
		t.Fatal(err)
	}
	return Config{Type: TypeRedfish, Address: srv.URL, User: "root",
		PasswordFile: passwordFile(t, password, 0o600), CAFile: ca, Timeout: 10 * time.Second}
}

func TestRedfishAgainstStandIn(t *testing.T) {
	const password = "s3cret-redfish"
	bmc := powertest.NewRedfishStandIn("root", password)
	// Both restarts allowed: ForceRestart, the one every service has,
	// is preferred.
	bmc.ResetTypes = append(bmc.ResetTypes, "PowerCycle")
	c, err := New(startRedfish(t, bmc, password))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if st, err := c.Status(ctx); err != nil || st != Off {
		t.Fatalf("Status = %q, %v; want off", st, err)
	}
	if err := c.BootPXEOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, enabled, target, _ := bmc.Snapshot(); enabled != "Once" || target != "Pxe" {
		t.Fatalf("boot override %s/%s, want Once/Pxe", enabled, target)
	}
	// A cycle of a machine that is off powers it on (and uses up the
	// one-time override, as the firmware would).
	if err := c.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Status(ctx); err != nil || st != On {
		t.Fatalf("Status = %q, %v; want on", st, err)
	}
	if err := c.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Off(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.On(ctx); err != nil {
		t.Fatal(err)
	}
	power, enabled, _, resets := bmc.Snapshot()
	if want := []string{"On", "ForceRestart", "ForceOff", "On"}; !slices.Equal(resets, want) || power != "On" || enabled != "Disabled" {
		t.Fatalf("resets %v power %s override %s; want %v, On, Disabled", resets, power, enabled, want)
	}
}

func TestRedfishCycleUsesWhatTheSystemAllows(t *testing.T) {
	bmc := powertest.NewRedfishStandIn("root", "pw")
	bmc.ResetTypes = []string{"On", "ForceOff", "PowerCycle"} // no ForceRestart
	bmc.SetPower("On")
	c, err := New(startRedfish(t, bmc, "pw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Cycle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, resets := bmc.Snapshot(); !slices.Equal(resets, []string{"PowerCycle"}) {
		t.Fatalf("resets %v, want [PowerCycle]", resets)
	}
	// A system that allows neither restart is not sent one it refuses.
	bmc.ResetTypes = []string{"On", "ForceOff"}
	if err := c.Cycle(context.Background()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Cycle = %v, want ErrUnsupported", err)
	}
	// Nor a boot override to a target it does not list.
	bmc.BootTargets = []string{"None", "Hdd"}
	if err := c.BootPXEOnce(context.Background()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("BootPXEOnce = %v, want ErrUnsupported", err)
	}
	if _, _, target, resets := bmc.Snapshot(); target != "None" || len(resets) != 1 {
		t.Fatalf("target %s resets %v: a refused request reached the BMC", target, resets)
	}
}

func TestRedfishWrongPasswordIsAuthAndNeverShown(t *testing.T) {
	bmc := powertest.NewRedfishStandIn("root", "right-password")
	cfg := startRedfish(t, bmc, "wrong-password")
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = c.On(context.Background())
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("On with a wrong password = %v, want ErrAuth", err)
	}
	if strings.Contains(err.Error(), "password") {
		t.Fatalf("error %q holds a password", err)
	}
	if power, _, _, resets := bmc.Snapshot(); power != "Off" || len(resets) != 0 {
		t.Fatalf("a wrong password powered the machine: %s %v", power, resets)
	}
}

func TestRedfishStandInIsStrict(t *testing.T) {
	// The stand-in itself must refuse what a real service refuses, or
	// the tests above prove nothing.
	bmc := powertest.NewRedfishStandIn("root", "pw")
	srv := httptest.NewServer(bmc)
	defer srv.Close()
	do := func(method, path, body string, auth bool) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if auth {
			req.SetBasicAuth("root", "pw")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		method, path, body string
		auth               bool
		want               int
	}{
		{"GET", "/redfish/v1/", "", false, 200},
		{"GET", "/redfish/v1/Systems", "", false, 401},
		{"GET", powertest.SystemPath, "", false, 401},
		{"PATCH", powertest.SystemPath, `{"Boot":{"BootSourceOverrideTarget":"Pxe"}}`, false, 401},
		{"POST", powertest.SystemPath + "/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`, false, 401},
		{"PATCH", powertest.SystemPath, `{"Boot":{"BootSourceOverrideTarget":"Floppy"}}`, true, 400},
		{"PATCH", powertest.SystemPath, `{"Boot":{"BootSourceOverrideEnabled":"Twice"}}`, true, 400},
		{"PATCH", powertest.SystemPath, `{"Boot":{"BootOrder":"x"}}`, true, 400},
		{"PATCH", powertest.SystemPath, `{"PowerState":"On"}`, true, 400},
		{"POST", powertest.SystemPath + "/Actions/ComputerSystem.Reset", `{"ResetType":"Nmi"}`, true, 400},
		{"POST", powertest.SystemPath + "/Actions/ComputerSystem.Reset", `{}`, true, 400},
		{"DELETE", powertest.SystemPath, "", true, 405},
		{"GET", "/redfish/v1/Managers", "", true, 404},
		{"PATCH", powertest.SystemPath, `{"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideTarget":"Pxe"}}`, true, 204},
		{"POST", powertest.SystemPath + "/Actions/ComputerSystem.Reset", `{"ResetType":"ForceRestart"}`, true, 204},
	} {
		if got := do(tc.method, tc.path, tc.body, tc.auth); got != tc.want {
			t.Errorf("%s %s %s (auth %v) = %d, want %d", tc.method, tc.path, tc.body, tc.auth, got, tc.want)
		}
	}
}

func TestRedfishSilentBMCTimesOut(t *testing.T) {
	// A BMC that accepts the connection and never answers.
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer srv.Close()
	defer close(hang)
	c, err := New(Config{Type: TypeRedfish, Address: srv.URL, User: "root", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Status of a silent BMC = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("returned after %s, bound 1 s", d)
	}
}
