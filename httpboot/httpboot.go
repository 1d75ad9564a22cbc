// Package httpboot is the HTTP side of the boot chain and the operator's
// window: iPXE scripts, kernels and initrds (with Range and sendfile), the
// per-boot extra initrd, the installer's callback, the JSON API, metrics
// and the status page. What a machine boots and what the inventory holds
// are asked of two small interfaces, Booter and Inventory.
package httpboot

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Errors that Booter and Inventory return to get a specific status.
var (
	ErrUnknownToken = errors.New("unknown or expired boot token") // 404
	ErrForbidden    = errors.New("forbidden")                     // 403
	ErrNotFound     = errors.New("not found")                     // 404
	ErrConflict     = errors.New("conflict")                      // 409
)

// Action is what a machine's iPXE script makes it do.
type Action int

const (
	// ActionIgnore answers 404: the machine is not ours to boot.
	ActionIgnore Action = iota
	// ActionLocal exits iPXE so the firmware boots the next device.
	ActionLocal
	// ActionInstall boots the installer image with a per-boot token.
	ActionInstall
)

// What a booting machine fetched, as told to Booter.Fetched.
const (
	FetchedKernel = "kernel"
	FetchedInitrd = "initrd"
)

// BootRequest is a machine asking for its script.
type BootRequest struct {
	MAC        net.HardwareAddr
	RemoteAddr netip.Addr
	Arch       string // iPXE's ${buildarch}, when the script URL carries it
}

// BootPlan is the answer to a BootRequest.
type BootPlan struct {
	Action   Action
	Image    string
	Token    string
	Params   []string
	Hostname string
}

// ExtraFile is one entry of the per-boot initrd; directories have
// fs.ModeDir in Mode and no Data.
type ExtraFile struct {
	Path string
	Mode fs.FileMode
	Data []byte
}

// Booter decides what machines boot and who may speak for them.
// provision implements it. PXE has no client authentication: every
// request is judged by the address it comes from (remote), and the
// Booter answers ErrForbidden (403) to one that may not have what it
// asks for.
type Booter interface {
	// Boot chooses the script of the machine r.MAC.
	Boot(ctx context.Context, r BootRequest) (BootPlan, error)
	// ExtraInitrd returns a boot's files, which hold its private host
	// key: to the address the boot belongs to, and once.
	ExtraInitrd(ctx context.Context, token string, remote netip.Addr) ([]ExtraFile, error)
	// Callback is a boot's installer saying that it is up. claimed is
	// the address the body names (zero when none); the engine only
	// ever connects to remote.
	Callback(ctx context.Context, token string, remote, claimed netip.Addr) error
	// Fetched is asked before an image file goes to a request that
	// carries a boot token; an error refuses the download.
	Fetched(ctx context.Context, f Fetch) error
}

// Fetch is a download of an image file that carries a boot token.
type Fetch struct {
	Token  string
	What   string // FetchedKernel or FetchedInitrd
	Remote netip.Addr
	// Whole is a GET of the whole file, the one worth a note; HEAD and
	// Range requests are checked all the same.
	Whole bool
}

// MachineView is a machine as the API shows it.
type MachineView struct {
	MAC       string    `json:"mac"`
	Hostname  string    `json:"hostname"`
	Profile   string    `json:"profile"`
	State     string    `json:"state"`
	Phase     string    `json:"phase,omitempty"`
	Error     string    `json:"error,omitempty"`
	IP        string    `json:"ip,omitempty"`
	Reinstall bool      `json:"reinstall"`
	UpdatedAt time.Time `json:"updated_at"`
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
	Reinstall(ctx context.Context, mac string) error
	Forget(ctx context.Context, mac string) error
	Subscribe(ctx context.Context) <-chan MachineView
}

// Image is a bootable image: local files and its command line.
type Image struct {
	Name    string
	Kernel  string
	Initrds []string
	Init    string
	Params  []string
}

// Config configures a Server.
type Config struct {
	// BaseURL is how machines reach this server: http://10.0.0.1:8080.
	BaseURL string
	// Images returns the image table in force; it may change on reload.
	Images   func() map[string]Image
	IPXEDir  string // served at /ipxe/ for UEFI HTTP Boot clients
	APIToken string // bearer token of the operator API
	Log      *slog.Logger
	Metrics  *prometheus.Registry // served at /metrics; may be nil
	// Reload, if set, is what POST /api/v1/config/reload runs.
	Reload func(ctx context.Context) error
}

// Server is the HTTP boot and API server; it is an http.Handler.
type Server struct {
	cfg      Config
	booter   Booter
	inv      Inventory
	router   chi.Router
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

// New builds the router.
func New(cfg Config, b Booter, inv Inventory) *Server {
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	s := &Server{
		cfg: cfg, booter: b, inv: inv,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_http_requests_total", Help: "HTTP requests, by route and status code.",
		}, []string{"route", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_http_bytes_sent_total", Help: "Bytes of response bodies sent, by route.",
		}, []string{"route"}),
	}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(s.requests, s.bytes)
	}
	r := chi.NewRouter()
	r.Use(s.observe)
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	if cfg.Metrics != nil {
		r.Handle("/metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{}))
	}
	r.Get("/boot/{file}", s.script)
	r.Get("/boot/{token}/extra.cpio.gz", s.extraInitrd)
	r.Get("/images/{name}/kernel", s.imageFile)
	r.Head("/images/{name}/kernel", s.imageFile)
	r.Get("/images/{name}/initrd", s.imageFile)
	r.Head("/images/{name}/initrd", s.imageFile)
	r.Get("/images/{name}/initrd/{i}", s.imageFile)
	r.Head("/images/{name}/initrd/{i}", s.imageFile)
	r.Get("/ipxe/{file}", s.ipxeBinary)
	r.Head("/ipxe/{file}", s.ipxeBinary)
	r.Post("/api/v1/callback", s.callback)
	r.Route("/api/v1", func(r chi.Router) {
		r.Use(s.requireToken)
		r.Get("/machines", s.listMachines)
		r.Get("/machines/{mac}", s.showMachine)
		r.Get("/machines/{mac}/events", s.machineEvents)
		r.Get("/machines/{mac}/log", s.machineLog)
		r.Post("/machines/{mac}/reinstall", s.reinstall)
		r.Delete("/machines/{mac}", s.forget)
		r.Post("/config/reload", s.reload)
	})
	r.Get("/", s.statusPage)
	r.Get("/events", s.statusEvents)
	s.router = r
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// Serve serves on l until ctx is done, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}

// statusRecorder remembers the status and body size of a response. It
// forwards ReadFrom so that file bodies still go out with sendfile.
type statusRecorder struct {
	http.ResponseWriter
	status int
	n      int64
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.n += int64(n)
	return n, err
}

func (r *statusRecorder) ReadFrom(src io.Reader) (int64, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(r.ResponseWriter, src)
	}
	r.n += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		note := &requestNote{}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), requestNoteKey{}, note)))
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		s.requests.WithLabelValues(route, fmt.Sprint(rec.status)).Inc()
		s.bytes.WithLabelValues(route).Add(float64(rec.n))
		level := slog.LevelDebug
		if route != "/healthz" && route != "/metrics" && route != "/events" {
			level = slog.LevelInfo
		}
		attrs := []any{"method", r.Method, "path", redactPath(r.URL.Path), "status", rec.status,
			"bytes", rec.n, "remote", r.RemoteAddr, "duration", time.Since(start).Round(time.Millisecond)}
		if note.mac != "" {
			attrs = append(attrs, "mac", note.mac)
		}
		s.cfg.Log.Log(r.Context(), level, "http", attrs...)
	})
}

// requestNote carries what a handler learnt about a request (the MAC)
// back to the request log.
type requestNote struct{ mac string }

type requestNoteKey struct{}

func noteMAC(r *http.Request, mac string) {
	if n, ok := r.Context().Value(requestNoteKey{}).(*requestNote); ok {
		n.mac = mac
	}
}

// redactPath keeps boot tokens out of the log: a token is as good as a
// host key until it is used.
func redactPath(p string) string {
	if rest, ok := strings.CutPrefix(p, "/boot/"); ok {
		if tok, file, ok := strings.Cut(rest, "/"); ok {
			return "/boot/" + ShortToken(tok) + "/" + file
		}
	}
	return p
}

// ShortToken is a boot token cut to its first characters, for logs: a
// token is as good as a host key until it is used, and the prefix is
// enough to tell boots apart.
func ShortToken(t string) string {
	if len(t) > 6 {
		return t[:6] + "…"
	}
	return t
}

func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || s.cfg.APIToken == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.APIToken)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pxe-anywhere"`)
			writeError(w, http.StatusUnauthorized, errors.New("missing or wrong API token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
