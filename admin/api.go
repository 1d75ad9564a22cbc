package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/macaddr"
)

// byAPI names who asked for an action through the API: the bearer
// token is one secret shared by every operator, so no more can be said.
const byAPI = "operator (API)"

// statusOf is the HTTP status of an Inventory or Power error that the
// operator may read whole, or 0 for any other: an internal error, for
// the log only. A BMC's error names the BMC and never holds a password.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrBMC):
		return http.StatusBadGateway
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	}
	return 0
}

// inventoryError answers an Inventory or Power error with its status.
func (s *Server) inventoryError(w http.ResponseWriter, err error) {
	if code := statusOf(err); code != 0 {
		httpserve.WriteError(w, code, err)
		return
	}
	s.cfg.Log.Error("API request failed", "err", err)
	httpserve.WriteError(w, http.StatusInternalServerError, errors.New("internal error"))
}

// macParam returns the {mac} of the route in the store's form
// (lower-case, colons), or answers 400.
func macParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	mac, err := macaddr.Parse(chi.URLParam(r, "mac"))
	if err != nil {
		httpserve.WriteError(w, http.StatusBadRequest, err)
		return "", false
	}
	httpserve.NoteMAC(r, mac.String())
	return mac.String(), true
}

func afterParam(w http.ResponseWriter, r *http.Request) (int64, bool) {
	v := r.URL.Query().Get("after")
	if v == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		httpserve.WriteError(w, http.StatusBadRequest, errors.New("after: want a non-negative integer"))
		return 0, false
	}
	return n, true
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	ms, err := s.inv.Machines(r.Context())
	if err != nil {
		s.inventoryError(w, err)
		return
	}
	if ms == nil {
		ms = []MachineView{}
	}
	httpserve.WriteJSON(w, http.StatusOK, ms)
}

// machineParam is the machine the route's {mac} names, or answers 400
// or 404.
func (s *Server) machineParam(w http.ResponseWriter, r *http.Request) (MachineView, bool) {
	mac, ok := macParam(w, r)
	if !ok {
		return MachineView{}, false
	}
	m, err := s.inv.Machine(r.Context(), mac)
	if err != nil {
		s.inventoryError(w, err)
		return MachineView{}, false
	}
	return m, true
}

func (s *Server) showMachine(w http.ResponseWriter, r *http.Request) {
	if m, ok := s.machineParam(w, r); ok {
		httpserve.WriteJSON(w, http.StatusOK, m)
	}
}

func (s *Server) machineEvents(w http.ResponseWriter, r *http.Request) {
	listAfter(s, w, r, s.inv.Events)
}

func (s *Server) machineLog(w http.ResponseWriter, r *http.Request) {
	listAfter(s, w, r, s.inv.Log)
}

// listAfter answers a machine's events or log lines after ?after=N. The
// inventory caps one answer, so clients ask again with the last ID until
// an answer is empty: the same loop reads a long history and follows a
// live one.
func listAfter[T any](s *Server, w http.ResponseWriter, r *http.Request, list func(ctx context.Context, mac string, after int64) ([]T, error)) {
	mac, ok := macParam(w, r)
	if !ok {
		return
	}
	after, ok := afterParam(w, r)
	if !ok {
		return
	}
	items, err := list(r.Context(), mac, after)
	if err != nil {
		s.inventoryError(w, err)
		return
	}
	if items == nil {
		items = []T{}
	}
	httpserve.WriteJSON(w, http.StatusOK, items)
}

func (s *Server) reinstall(w http.ResponseWriter, r *http.Request) {
	mac, ok := macParam(w, r)
	if !ok {
		return
	}
	if pc := r.URL.Query().Get("power_cycle"); pc != "" {
		if pc != "1" && pc != "true" {
			httpserve.WriteError(w, http.StatusBadRequest, errors.New("power_cycle: want 1 or true"))
			return
		}
		s.reinstallPowerCycle(w, r, mac)
		return
	}
	if err := s.inv.Reinstall(r.Context(), mac, byAPI); err != nil {
		s.inventoryError(w, err)
		return
	}
	httpserve.WriteJSON(w, http.StatusOK, map[string]string{"status": "reinstall requested: the next PXE boot installs again"})
}

func (s *Server) cancel(w http.ResponseWriter, r *http.Request) {
	mac, ok := macParam(w, r)
	if !ok {
		return
	}
	asked, err := s.inv.Cancel(r.Context(), mac, byAPI)
	if err != nil {
		s.inventoryError(w, err)
		return
	}
	httpserve.WriteJSON(w, http.StatusOK, map[string]string{"status": cancelStatus(asked)})
}

// assignRequest is the body of POST /api/v1/machines/{mac}/assign.
type assignRequest struct {
	Profile  string `json:"profile"`
	Hostname string `json:"hostname"`
}

func (s *Server) assign(w http.ResponseWriter, r *http.Request) {
	mac, ok := macParam(w, r)
	if !ok {
		return
	}
	var req assignRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpserve.WriteError(w, http.StatusBadRequest, fmt.Errorf("body: want {\"profile\": \"NAME\", \"hostname\": \"HOST\"}: %w", err))
		return
	}
	if req.Profile == "" {
		httpserve.WriteError(w, http.StatusBadRequest, errors.New("body: profile is required"))
		return
	}
	if err := s.inv.Assign(r.Context(), mac, req.Profile, req.Hostname, byAPI); err != nil {
		s.inventoryError(w, err)
		return
	}
	httpserve.WriteJSON(w, http.StatusOK, map[string]string{"status": "assigned: the install starts at once if the machine's installer is up, else at its next PXE boot"})
}

func (s *Server) forget(w http.ResponseWriter, r *http.Request) {
	mac, ok := macParam(w, r)
	if !ok {
		return
	}
	if err := s.inv.Forget(r.Context(), mac, byAPI); err != nil {
		s.inventoryError(w, err)
		return
	}
	httpserve.WriteJSON(w, http.StatusOK, map[string]string{"status": "forgotten"})
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Reload == nil {
		httpserve.WriteError(w, http.StatusNotImplemented, errors.New("this server cannot reload"))
		return
	}
	if err := s.cfg.Reload(r.Context()); err != nil {
		httpserve.WriteError(w, http.StatusUnprocessableEntity, err)
		return
	}
	httpserve.WriteJSON(w, http.StatusOK, map[string]string{"status": "reloaded"})
}

// cancelStatus says what a cancel did: stopped the install here, or
// asked the server that runs it (asked).
func cancelStatus(asked string) string {
	if asked == "" {
		return "install cancelled: the machine is failed (cancelled by operator)"
	}
	return "cancel asked of server " + asked + ", which runs the install: it stops it when it hears of it (at once through the database's change notifications; at the latest at its next heartbeat, every server.claim_lease/3)"
}
