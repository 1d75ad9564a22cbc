// Package powertest holds BMCs for tests: a strict Redfish STAND-IN
// (no Redfish service exists in Debian's archive) and a runner for
// OpenIPMI's real ipmi_sim. Only tests import it.
package powertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// RedfishStandIn is a STAND-IN for a Redfish BMC (no Redfish service
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
type RedfishStandIn struct {
	user, password string

	// ResetTypes and BootTargets are what the system allows; a test
	// may change them (under no concurrent request).
	ResetTypes  []string
	BootTargets []string

	mu         sync.Mutex
	power      string // "On" or "Off"
	enabled    string // BootSourceOverrideEnabled
	target     string // BootSourceOverrideTarget
	resets     []string
	unauthHits int
}

// NewRedfishStandIn is a powered-off system with one user.
func NewRedfishStandIn(user, password string) *RedfishStandIn {
	return &RedfishStandIn{user: user, password: password, power: "Off", enabled: "Disabled", target: "None",
		ResetTypes:  []string{"On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart"},
		BootTargets: []string{"None", "Pxe", "Hdd", "Cd", "BiosSetup"},
	}
}

// SystemPath is the one system's resource.
const SystemPath = "/redfish/v1/Systems/1"

func (s *RedfishStandIn) writeError(w http.ResponseWriter, status int, id, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": "Base.1.8." + id, "message": msg,
		"@Message.ExtendedInfo": []map[string]any{{"MessageId": "Base.1.8." + id, "Message": msg}},
	}})
}

func (s *RedfishStandIn) writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("OData-Version", "4.0")
	json.NewEncoder(w).Encode(v)
}

// ServeHTTP implements http.Handler.
func (s *RedfishStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
			"Members": []map[string]string{{"@odata.id": SystemPath}},
		})
	case SystemPath:
		switch r.Method {
		case http.MethodGet:
			s.writeJSON(w, s.system())
		case http.MethodPatch:
			s.patch(w, r)
		default:
			s.writeError(w, http.StatusMethodNotAllowed, "ActionNotSupported", "GET or PATCH")
		}
	case SystemPath + "/Actions/ComputerSystem.Reset":
		if r.Method != http.MethodPost {
			s.writeError(w, http.StatusMethodNotAllowed, "ActionNotSupported", "POST an action")
			return
		}
		s.reset(w, r)
	default:
		s.writeError(w, http.StatusNotFound, "ResourceMissingAtURI", "no resource at "+r.URL.Path)
	}
}

func (s *RedfishStandIn) system() map[string]any {
	return map[string]any{
		"@odata.id": SystemPath, "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
		"Id": "1", "Name": "stand-in system", "SystemType": "Physical", "PowerState": s.power,
		"Boot": map[string]any{
			"BootSourceOverrideEnabled":                         s.enabled,
			"BootSourceOverrideTarget":                          s.target,
			"BootSourceOverrideEnabled@Redfish.AllowableValues": []string{"Disabled", "Once", "Continuous"},
			"BootSourceOverrideTarget@Redfish.AllowableValues":  s.BootTargets,
		},
		"Actions": map[string]any{"#ComputerSystem.Reset": map[string]any{
			"target":                            SystemPath + "/Actions/ComputerSystem.Reset",
			"ResetType@Redfish.AllowableValues": s.ResetTypes,
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

func (s *RedfishStandIn) patch(w http.ResponseWriter, r *http.Request) {
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
			if !slices.Contains(s.BootTargets, v) {
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

func (s *RedfishStandIn) reset(w http.ResponseWriter, r *http.Request) {
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
	if !slices.Contains(s.ResetTypes, rt) {
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

// Snapshot is the system's power state, boot override and the resets
// asked so far.
func (s *RedfishStandIn) Snapshot() (power, enabled, target string, resets []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.power, s.enabled, s.target, slices.Clone(s.resets)
}

// SetPower sets the system's power state ("On" or "Off") as if someone
// pressed the button.
func (s *RedfishStandIn) SetPower(state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.power = state
}
