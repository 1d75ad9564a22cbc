// Package admin is the operator's side of the HTTP server: the JSON API
// under /api/v1 (machines, their events and logs, reinstall, forget,
// config reload), the status pages (an overview and a page a machine,
// with its actions) with their live event stream, /metrics, and the
// login that guards the pages when the listener is not on loopback and
// every page action everywhere. What the inventory holds is asked of
// one small interface, Inventory. It serves nothing a booting machine
// needs: that is httpboot's, on its own listener.
package admin

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
)

// Errors that Inventory returns to get a specific status.
var (
	ErrNotFound = errors.New("not found") // 404
	ErrConflict = errors.New("conflict")  // 409
	ErrInvalid  = errors.New("invalid")   // 400
)

// MachineView is a machine as the API shows it.
type MachineView struct {
	MAC      string `json:"mac"`
	Hostname string `json:"hostname"`
	Profile  string `json:"profile"`
	State    string `json:"state"`
	Phase    string `json:"phase,omitempty"`
	Error    string `json:"error,omitempty"`
	IP       string `json:"ip,omitempty"`
	// Firmware is what the machine's last boot told of itself (iPXE's
	// build architecture, when the boot URL carried it); often empty.
	Firmware  string `json:"firmware,omitempty"`
	Reinstall bool   `json:"reinstall"`
	// Held: a security event (a boot's secrets asked for twice) holds
	// the machine until a reinstall is requested.
	Held      bool      `json:"held,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	// LastEvent is the machine's latest event, if any.
	LastEvent *EventView `json:"last_event,omitempty"`
	// DecidedBy says what gave the machine its profile: "config" (its
	// entry under machines:), "rule" or "operator" (machines assign);
	// "" when nothing did. DecidedWhy says how (which rule matched on
	// which values, or who assigned it).
	DecidedBy  string `json:"decided_by,omitempty"`
	DecidedWhy string `json:"decided_why,omitempty"`
	// Facts are what discovery read on the machine; only the view of one
	// machine carries them.
	Facts *FactsView `json:"facts,omitempty"`
}

// FactsView is what discovery learned of a machine: its hardware as
// read over SSH, and the DHCP context of its latest boot (interface,
// relay, option 82 circuit-id and remote-id, vendor class).
type FactsView struct {
	Hardware    json.RawMessage `json:"hardware,omitempty"`
	DHCP        json.RawMessage `json:"dhcp,omitempty"`
	Addr        string          `json:"addr,omitempty"` // where the installer answered
	CollectedAt *time.Time      `json:"collected_at,omitempty"`
	// Facter: a nixos-facter report is kept too (it is large; the store
	// holds it).
	Facter bool `json:"facter,omitempty"`
}

// BootView is a machine's latest boot as the operator may see it: never
// its token, only a fingerprint of it.
type BootView struct {
	TokenFingerprint string     `json:"token_fingerprint"` // first 8 hex digits of sha256(token)
	HostKey          string     `json:"host_key"`          // SHA256:... of the boot's SSH host key
	IP               string     `json:"ip,omitempty"`
	Firmware         string     `json:"firmware,omitempty"`
	CreatedAt        time.Time  `json:"created_at"`
	UsedAt           *time.Time `json:"used_at,omitempty"`
	VoidedAt         *time.Time `json:"voided_at,omitempty"`
	VoidReason       string     `json:"void_reason,omitempty"`
}

// EventView is one event of a machine.
type EventView struct {
	ID      int64     `json:"id"`
	Time    time.Time `json:"time"`
	State   string    `json:"state"`
	Phase   string    `json:"phase,omitempty"`
	Message string    `json:"message"`
}

// LogView is one line of a machine's install log.
type LogView struct {
	Seq  int64     `json:"seq"`
	Time time.Time `json:"time"`
	Line string    `json:"line"`
}

// Inventory is the operator's view of the machines. provision
// implements it.
type Inventory interface {
	Machines(ctx context.Context) ([]MachineView, error)
	Machine(ctx context.Context, mac string) (MachineView, error)
	Events(ctx context.Context, mac string, after int64) ([]EventView, error)
	Log(ctx context.Context, mac string, after int64) ([]LogView, error)
	// LatestBoot is the machine's latest boot; ErrNotFound when it has none.
	LatestBoot(ctx context.Context, mac string) (BootView, error)
	// PhaseHistory is how long each install phase took when it ended
	// well, over the recent past: what the page's progress is drawn
	// from. Empty when nothing was installed yet.
	PhaseHistory(ctx context.Context) (map[string][]time.Duration, error)
	// The actions: by names who asked, "operator (API)" or
	// "operator (web, 192.0.2.1)", and goes into the machine's events.
	Reinstall(ctx context.Context, mac, by string) error
	// Cancel stops the install of mac that is queued or running, and
	// returns ""; the machine becomes failed. When another server that
	// shares the store runs it, Cancel asks that server to, and returns
	// its name. ErrConflict when none runs.
	Cancel(ctx context.Context, mac, by string) (asked string, err error)
	Forget(ctx context.Context, mac, by string) error
	// Assign gives a machine that the config does not list a profile
	// and a hostname ("": none); if its installer is up, the install
	// starts at once. ErrInvalid for an unknown profile or a bad
	// hostname, ErrConflict for a machine in the config or installing.
	Assign(ctx context.Context, mac, profile, hostname, by string) error
	Subscribe(ctx context.Context) <-chan MachineView
}

// Config configures a Server.
type Config struct {
	// APIToken is the bearer token of the API, and what the login form
	// asks for.
	APIToken string
	// RequireLogin puts the status page, its event stream and /metrics
	// behind the API token too: a browser logs in once with a form that
	// sets a cookie, a scraper sends the bearer token. cmd sets it when
	// the listener is not on loopback; on loopback, whoever can connect
	// is already on the server.
	RequireLogin bool
	Log          *slog.Logger
	// Metrics is served at /metrics and counts this side's requests;
	// it may be nil.
	Metrics *prometheus.Registry
	// Power, if set, drives the machines' BMCs (power on, off, cycle,
	// status; reinstall with a power cycle). Nil: those answer 501.
	Power Power
	// Reload, if set, is what POST /api/v1/config/reload runs.
	Reload func(ctx context.Context) error
	// Warnings, if set, are shown above the machines on the status
	// page: settings that weaken what the server promises, such as
	// boots trusted on the MAC alone. Called per page view.
	Warnings func() []string
	// SSEWriteTimeout is how long an event-stream client may take to
	// accept one event (or keepalive) before it is dropped; zero: 10 s.
	SSEWriteTimeout time.Duration
	// SSEMaxSubscribers caps the event streams open at once; past it
	// /events answers 503. Zero: 32.
	SSEMaxSubscribers int
}

// Server is the operator's HTTP handler.
type Server struct {
	cfg    Config
	inv    Inventory
	router chi.Router
	// session is the login cookie's value: an HMAC of the API token, so
	// that a cookie that leaks opens the status page but not the API,
	// and a new token voids every cookie.
	session string
	// streams counts the open event streams, against SSEMaxSubscribers.
	streams atomic.Int64
	limited *lograte.Limiter
}

// New builds the router.
func New(cfg Config, inv Inventory) *Server {
	mac := hmac.New(sha256.New, []byte(cfg.APIToken))
	mac.Write([]byte("pxe-anywhere status page session"))
	if cfg.SSEWriteTimeout <= 0 {
		cfg.SSEWriteTimeout = 10 * time.Second
	}
	if cfg.SSEMaxSubscribers <= 0 {
		cfg.SSEMaxSubscribers = 32
	}
	s := &Server{cfg: cfg, inv: inv, session: hex.EncodeToString(mac.Sum(nil)),
		limited: &lograte.Limiter{Log: cfg.Log, Every: time.Minute}}
	r := chi.NewRouter()
	var metrics prometheus.Registerer
	if cfg.Metrics != nil {
		metrics = cfg.Metrics
	}
	r.Use(httpserve.Observe(httpserve.ObserveConfig{
		Listener: "admin", Log: cfg.Log, Metrics: metrics, Quiet: []string{"/metrics", "/events"},
	}))
	r.Route("/api/v1", func(r chi.Router) {
		r.Use(s.requireToken)
		r.Get("/machines", s.listMachines)
		r.Get("/machines/{mac}", s.showMachine)
		r.Get("/machines/{mac}/events", s.machineEvents)
		r.Get("/machines/{mac}/log", s.machineLog)
		r.Post("/machines/{mac}/reinstall", s.reinstall)
		r.Get("/machines/{mac}/power", s.power)
		r.Post("/machines/{mac}/power/{action}", s.power)
		r.Post("/machines/{mac}/cancel", s.cancel)
		r.Post("/machines/{mac}/assign", s.assign)
		r.Delete("/machines/{mac}", s.forget)
		r.Post("/config/reload", s.reload)
	})
	r.Group(func(r chi.Router) {
		if cfg.RequireLogin {
			r.Use(s.requireLogin)
		}
		r.Get("/", s.statusPage)
		r.Get("/machines/{mac}", s.machinePage)
		r.Get("/machines/{mac}/row", s.machineRow)
		r.Get("/machines/{mac}/log", s.pageLog)
		r.Get("/machines/{mac}/{action}", s.confirmAction)
		r.Post("/machines/{mac}/{action}", s.doAction)
		r.Get("/events", s.statusEvents)
		if cfg.Metrics != nil {
			r.Handle("/metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{}))
		}
	})
	// The login is there on loopback too: the pages can be read there
	// without it, but every action asks for it.
	r.Get("/login", s.loginForm)
	r.Post("/login", s.login)
	r.Post("/logout", s.logout)
	s.router = r
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// bearerOK reports whether r carries the API token as a bearer token.
func (s *Server) bearerOK(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && s.cfg.APIToken != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.APIToken)) == 1
}

func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.bearerOK(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pxe-anywhere"`)
			httpserve.WriteError(w, http.StatusUnauthorized, errors.New("missing or wrong API token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}
