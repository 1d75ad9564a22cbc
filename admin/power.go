package admin

import (
	"context"
	"errors"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
)

// ErrBMC is what Power's errors wrap when the machine's BMC failed or
// refused: the API answers 502, with the BMC's error.
var ErrBMC = errors.New("BMC failed")

// The power actions of the API.
const (
	PowerOn     = "on"
	PowerOff    = "off"
	PowerCycle  = "cycle"
	PowerStatus = "status"
)

// PowerView is the answer to a power request.
type PowerView struct {
	MAC    string `json:"mac"`
	Action string `json:"action"`
	// Power is what the BMC said of the machine's power after a status
	// request: "on", "off" or "unknown"; empty after other actions.
	Power string `json:"power,omitempty"`
	// Status says what was done, for a person.
	Status string `json:"status"`
	// Warnings are what went wrong without stopping the action, such as
	// a BMC that refused "boot from the network once".
	Warnings []string `json:"warnings,omitempty"`
}

// Power drives machines' BMCs; provision implements it. Each action
// is recorded in the machine's events with by, as Inventory's are.
type Power interface {
	// Power runs action (PowerOn, PowerOff, PowerCycle, PowerStatus) on
	// mac's BMC. ErrNotFound: mac is not in the config; ErrConflict: it
	// has no BMC; ErrBMC: the BMC failed.
	Power(ctx context.Context, mac, action, by string) (PowerView, error)
	// ReinstallPowerCycle arms a reinstall of mac, asks its BMC to boot
	// from the network once, and power-cycles it.
	ReinstallPowerCycle(ctx context.Context, mac, by string) (PowerView, error)
}

func (s *Server) noPower(w http.ResponseWriter) bool {
	if s.cfg.Power == nil {
		httpserve.WriteError(w, http.StatusNotImplemented, errors.New("this server has no power control"))
		return true
	}
	return false
}

// power answers GET /machines/{mac}/power (status) and
// POST /machines/{mac}/power/{action}.
func (s *Server) power(w http.ResponseWriter, r *http.Request) {
	if s.noPower(w) {
		return
	}
	mac, ok := macParam(w, r)
	if !ok {
		return
	}
	action := PowerStatus
	if r.Method == http.MethodPost {
		action = chi.URLParam(r, "action")
		switch action {
		case PowerOn, PowerOff, PowerCycle:
		default:
			httpserve.WriteError(w, http.StatusBadRequest, errors.New("power action: want on, off or cycle (GET .../power for the status)"))
			return
		}
	}
	v, err := s.cfg.Power.Power(r.Context(), mac, action, byAPI)
	if err != nil {
		s.inventoryError(w, err)
		return
	}
	httpserve.WriteJSON(w, http.StatusOK, v)
}

// reinstallPowerCycle is POST /machines/{mac}/reinstall?power_cycle=1.
func (s *Server) reinstallPowerCycle(w http.ResponseWriter, r *http.Request, mac string) {
	if s.noPower(w) {
		return
	}
	v, err := s.cfg.Power.ReinstallPowerCycle(r.Context(), mac, byAPI)
	if err != nil {
		s.inventoryError(w, err)
		return
	}
	httpserve.WriteJSON(w, http.StatusOK, v)
}
