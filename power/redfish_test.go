package power

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// redfishStandIn is a STAND-IN for a Redfish BMC (no Redfish service
// exists in Debian's archive). It is strict where DMTF's Redfish
// specification and the ComputerSystem schema are: the service root is
// the only resource readable without credentials; everything else
// answers 401 without HTTP Basic credentials; PATCH of a system accepts
// only Boot's BootSourceOverrideEnabled and BootSourceOverrideTarget
// with the values the system lists as allowed (400
// PropertyValueNotInList otherwise, 400 PropertyUnknown for any other
// property); ComputerSystem.Reset accepts only the ResetType values of
// its @Redfish.AllowableValues; other methods get 405. It records what
// was asked, for the tests to check.
type redfishStandIn struct {
	user, password string
	resetTypes     []string
	bootTargets    []string

	mu         sync.Mutex
	power      string // "On" or "Off"
	enabled    string // BootSourceOverrideEnabled
	target     string // BootSourceOverrideTarget
	resets     []string
	unauthHits int
}

func newRedfishStandIn(user, password string) *redfishStandIn {
	return &redfishStandIn{user: user, password: password, power: "Off", enabled: "Disabled", target: "None",
		resetTypes:  []string{"On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart"},
		bootTargets: []string{"None", "Pxe", "Hdd", "Cd", "BiosSetup"},
	}
}

const sysPath = "/redfish/v1/Systems/1"

func (s *redfishStandIn) writeError(w http.ResponseWriter, status int, id, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": "Base.1.8." + id, "message": msg,
		"@Message.ExtendedInfo": []map[string]any{{"MessageId": "Base.1.8." + id, "Message": msg}},
	}})
}

func (s *redfishStandIn) writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("OData-Version", "4.0")
	json.NewEncoder(w).Encode(v)
}

func (s *redfishStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimRight(r.URL.Path, "/")
	if path == "/redfish/v1" {
		if r.Method != http.MethodGet {
			s.writeError(w, http.StatusMethodNotAllowed, "ActionNotSupported", "the service root is read-only")
			return
		}
		s.writeJSON(w, map[string]any{
			"@odata.id": "/redfish/v1/", "@odata.type": "#ServiceRoot.v1_11_0.ServiceRoot",
			"Id": "RootService", "Name": "Root Service (stand-in)", "RedfishVersion": "1.11.0",
			"Systems":        map[string]string{"@odata.id": "/redfish/v1/Systems"},
			"SessionService": map[string]string{"@odata.id": "/redfish/v1/SessionService"},
			"Links":          map[string]any{"Sessions": map[string]string{"@odata.id": "/redfish/v1/SessionService/Sessions"}},
		})
		return
	}
	u, p, ok := r.BasicAuth()
	if !ok || u != s.user || p != s.password {
		s.mu.Lock()
		s.unauthHits++
		s.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="stand-in BMC"`)
		s.writeError(w, http.StatusUnauthorized, "InsufficientPrivilege", "authentication required")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch path {
	case "/redfish/v1/Systems":
		if r.Method != http.MethodGet {
			s.writeError(w, http.StatusMethodNotAllowed, "ActionNotSupported", "read-only collection")
			return
		}
		s.writeJSON(w, map[string]any{
			"@odata.id": "/redfish/v1/Systems", "@odata.type": "#ComputerSystemCollection.ComputerSystemCollection",
			"Name": "Computer System Collection", "Members@odata.count": 1,
			"Members": []map[string]string{{"@odata.id": sysPath}},
		})
	case sysPath:
		switch r.Method {
		case http.MethodGet:
			s.writeJSON(w, s.system())
		case http.MethodPatch:
			s.patch(w, r)
		default:
			s.writeError(w, http.StatusMethodNotAllowed, "ActionNotSupported", "GET or PATCH")
		}
	case sysPath + "/Actions/ComputerSystem.Reset":
		if r.Method != http.MethodPost {
			s.writeError(w, http.StatusMethodNotAllowed, "ActionNotSupported", "POST an action")
			return
		}
		s.reset(w, r)
	default:
		s.writeError(w, http.StatusNotFound, "ResourceMissingAtURI", "no resource at "+r.URL.Path)
	}
}

func (s *redfishStandIn) system() map[string]any {
	return map[string]any{
		"@odata.id": sysPath, "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
		"Id": "1", "Name": "stand-in system", "SystemType": "Physical", "PowerState": s.power,
		"Boot": map[string]any{
			"BootSourceOverrideEnabled":                         s.enabled,
			"BootSourceOverrideTarget":                          s.target,
			"BootSourceOverrideEnabled@Redfish.AllowableValues": []string{"Disabled", "Once", "Continuous"},
			"BootSourceOverrideTarget@Redfish.AllowableValues":  s.bootTargets,
		},
		"Actions": map[string]any{"#ComputerSystem.Reset": map[string]any{
			"target":                            sysPath + "/Actions/ComputerSystem.Reset",
			"ResetType@Redfish.AllowableValues": s.resetTypes,
		}},
	}
}

// decodeStrict reads a JSON object body of at most 64 KiB.
func decodeStrict(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("Content-Type %q, want application/json", ct)
	}
	return json.NewDecoder(http.MaxBytesReader(nil, r.Body, 64<<10)).Decode(v)
}

func (s *redfishStandIn) patch(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := decodeStrict(r, &body); err != nil {
		s.writeError(w, http.StatusBadRequest, "MalformedJSON", err.Error())
		return
	}
	for k := range body {
		if k != "Boot" {
			s.writeError(w, http.StatusBadRequest, "PropertyUnknown", "property "+k+" is not writable here")
			return
		}
	}
	var boot map[string]string
	if err := json.Unmarshal(body["Boot"], &boot); err != nil || len(boot) == 0 {
		s.writeError(w, http.StatusBadRequest, "PropertyValueTypeError", "Boot: want an object of strings")
		return
	}
	enabled, target := s.enabled, s.target
	for k, v := range boot {
		switch k {
		case "BootSourceOverrideEnabled":
			if !slices.Contains([]string{"Disabled", "Once", "Continuous"}, v) {
				s.writeError(w, http.StatusBadRequest, "PropertyValueNotInList", k+": "+v)
				return
			}
			enabled = v
		case "BootSourceOverrideTarget":
			if !slices.Contains(s.bootTargets, v) {
				s.writeError(w, http.StatusBadRequest, "PropertyValueNotInList", k+": "+v)
				return
			}
			target = v
		default:
			s.writeError(w, http.StatusBadRequest, "PropertyUnknown", "Boot."+k)
			return
		}
	}
	s.enabled, s.target = enabled, target
	w.WriteHeader(http.StatusNoContent)
}

func (s *redfishStandIn) reset(w http.ResponseWriter, r *http.Request) {
	var body map[string]string
	if err := decodeStrict(r, &body); err != nil {
		s.writeError(w, http.StatusBadRequest, "MalformedJSON", err.Error())
		return
	}
	rt, ok := body["ResetType"]
	if !ok || len(body) != 1 {
		s.writeError(w, http.StatusBadRequest, "ActionParameterMissing", "want exactly ResetType")
		return
	}
	if !slices.Contains(s.resetTypes, rt) {
		s.writeError(w, http.StatusBadRequest, "ActionParameterValueNotInList", "ResetType: "+rt)
		return
	}
	s.resets = append(s.resets, rt)
	switch rt {
	case "On", "ForceOn":
		s.power = "On"
	case "ForceOff", "GracefulShutdown":
		s.power = "Off"
	case "ForceRestart", "GracefulRestart", "PowerCycle":
		s.power = "On"
	}
	// A boot override Once is used up by the boot that follows.
	if s.power == "On" && s.enabled == "Once" {
		s.enabled = "Disabled"
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *redfishStandIn) snapshot() (power, enabled, target string, resets []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.power, s.enabled, s.target, slices.Clone(s.resets)
}

// startRedfish serves the stand-in over TLS and returns a Config that
// trusts its certificate.
func startRedfish(t *testing.T, s *redfishStandIn, password string) Config {
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
	bmc := newRedfishStandIn("root", password)
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
	if _, enabled, target, _ := bmc.snapshot(); enabled != "Once" || target != "Pxe" {
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
	power, enabled, _, resets := bmc.snapshot()
	if want := []string{"On", "ForceRestart", "ForceOff", "On"}; !slices.Equal(resets, want) || power != "On" || enabled != "Disabled" {
		t.Fatalf("resets %v power %s override %s; want %v, On, Disabled", resets, power, enabled, want)
	}
}

func TestRedfishCycleUsesWhatTheSystemAllows(t *testing.T) {
	bmc := newRedfishStandIn("root", "pw")
	bmc.resetTypes = []string{"On", "ForceOff", "PowerCycle"} // no ForceRestart
	bmc.power = "On"
	c, err := New(startRedfish(t, bmc, "pw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Cycle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, _, resets := bmc.snapshot(); !slices.Equal(resets, []string{"PowerCycle"}) {
		t.Fatalf("resets %v, want [PowerCycle]", resets)
	}
	// A system that allows neither restart is not sent one it refuses.
	bmc.resetTypes = []string{"On", "ForceOff"}
	if err := c.Cycle(context.Background()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Cycle = %v, want ErrUnsupported", err)
	}
	// Nor a boot override to a target it does not list.
	bmc.bootTargets = []string{"None", "Hdd"}
	if err := c.BootPXEOnce(context.Background()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("BootPXEOnce = %v, want ErrUnsupported", err)
	}
	if _, _, target, resets := bmc.snapshot(); target != "None" || len(resets) != 1 {
		t.Fatalf("target %s resets %v: a refused request reached the BMC", target, resets)
	}
}

func TestRedfishWrongPasswordIsAuthAndNeverShown(t *testing.T) {
	bmc := newRedfishStandIn("root", "right-password")
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
	if power, _, _, resets := bmc.snapshot(); power != "Off" || len(resets) != 0 {
		t.Fatalf("a wrong password powered the machine: %s %v", power, resets)
	}
}

func TestRedfishStandInIsStrict(t *testing.T) {
	// The stand-in itself must refuse what a real service refuses, or
	// the tests above prove nothing.
	bmc := newRedfishStandIn("root", "pw")
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
		{"GET", sysPath, "", false, 401},
		{"PATCH", sysPath, `{"Boot":{"BootSourceOverrideTarget":"Pxe"}}`, false, 401},
		{"POST", sysPath + "/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`, false, 401},
		{"PATCH", sysPath, `{"Boot":{"BootSourceOverrideTarget":"Floppy"}}`, true, 400},
		{"PATCH", sysPath, `{"Boot":{"BootSourceOverrideEnabled":"Twice"}}`, true, 400},
		{"PATCH", sysPath, `{"Boot":{"BootOrder":"x"}}`, true, 400},
		{"PATCH", sysPath, `{"PowerState":"On"}`, true, 400},
		{"POST", sysPath + "/Actions/ComputerSystem.Reset", `{"ResetType":"Nmi"}`, true, 400},
		{"POST", sysPath + "/Actions/ComputerSystem.Reset", `{}`, true, 400},
		{"DELETE", sysPath, "", true, 405},
		{"GET", "/redfish/v1/Managers", "", true, 404},
		{"PATCH", sysPath, `{"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideTarget":"Pxe"}}`, true, 204},
		{"POST", sysPath + "/Actions/ComputerSystem.Reset", `{"ResetType":"ForceRestart"}`, true, 204},
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
