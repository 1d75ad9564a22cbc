// Package httpboot is the HTTP side of the boot chain: iPXE scripts,
// kernels and initrds (with Range and sendfile), the per-boot extra
// initrd, the installer's callback, and iPXE itself for UEFI HTTP Boot.
// What a machine boots is asked of one small interface, Booter. It
// serves nothing for operators (API, status page, metrics): that is the
// admin package's, on its own listener, so the boot network never sees
// it.
package httpboot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
)

// Errors that Booter returns to get a specific status.
var (
	ErrUnknownToken = errors.New("unknown or expired boot token") // 404
	ErrForbidden    = errors.New("forbidden")                     // 403
	// ErrUnavailable: the server cannot decide or record the boot now
	// (its state store fails to read or write); the machine may try
	// again later.
	ErrUnavailable = errors.New("state store unavailable") // 503
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
	Images  func() map[string]Image
	IPXEDir string // served at /ipxe/ for UEFI HTTP Boot clients
	Log     *slog.Logger
	// Metrics counts this side's requests; it may be nil. The admin
	// side serves it.
	Metrics prometheus.Registerer
	// Limits bound what one source address may ask at once; the zero
	// value sets none.
	Limits SourceLimits
	// WriteTimeout is how long a client may take to accept each block
	// of an image file (httpserve.ProgressWriter); zero: the default
	// httpserve.DefaultTimeouts.Write.
	WriteTimeout time.Duration
	// Health, when set, is asked by /healthz: an error answers 503
	// with its text (state writes failing, say).
	Health func(ctx context.Context) error
}

// Server is the boot side's HTTP handler.
type Server struct {
	cfg     Config
	booter  Booter
	router  chi.Router
	sources *sourceTable
}

// New builds the router. ScriptURL and IPXEBinaryURL below make the
// URLs of its routes that DHCP hands out.
func New(cfg Config, b Booter) *Server {
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = httpserve.DefaultTimeouts.Write
	}
	s := &Server{cfg: cfg, booter: b, sources: newSourceTable(cfg.Limits, &lograte.Limiter{Log: cfg.Log, Every: time.Minute})}
	r := chi.NewRouter()
	r.Use(httpserve.Observe(httpserve.ObserveConfig{
		Listener: "boot", Log: cfg.Log, Metrics: cfg.Metrics, Quiet: []string{"/healthz"}, Redact: redactPath,
	}))
	r.Get("/healthz", s.healthz)
	// What a booting machine fetches is limited per source address.
	r.With(s.sources.limit(true)).Get("/boot/{file}", s.script)
	r.Group(func(r chi.Router) {
		r.Use(s.sources.limit(false))
		r.Get("/boot/{token}/extra.cpio.gz", s.extraInitrd)
		r.Get("/images/{name}/kernel", s.imageFile)
		r.Head("/images/{name}/kernel", s.imageFile)
		r.Get("/images/{name}/initrd", s.imageFile)
		r.Head("/images/{name}/initrd", s.imageFile)
		r.Get("/images/{name}/initrd/{i}", s.imageFile)
		r.Head("/images/{name}/initrd/{i}", s.imageFile)
		r.Get("/ipxe/{file}", s.ipxeBinary)
		r.Head("/ipxe/{file}", s.ipxeBinary)
	})
	r.Post("/api/v1/callback", s.callback)
	s.router = r
	return s
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Health != nil {
		if err := s.cfg.Health(r.Context()); err != nil {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "unhealthy: %v\n", err)
			return
		}
	}
	fmt.Fprintln(w, "ok")
}

// ScriptURL is where iPXE fetches mac's script (the route /boot/{file}):
// the MAC with dashes, as iPXE's ${mac:hexhyp} writes it.
func ScriptURL(base string, mac net.HardwareAddr) string {
	return strings.TrimRight(base, "/") + "/boot/" + strings.ReplaceAll(mac.String(), ":", "-") + ".ipxe"
}

// IPXEBinaryURL is where a UEFI HTTP Boot client fetches the iPXE
// binary file (the route /ipxe/{file}), which others get over TFTP.
func IPXEBinaryURL(base, file string) string {
	return strings.TrimRight(base, "/") + "/ipxe/" + file
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// The callback's answers have the admin API's form, and the request log
// is the one both sides share.
func writeJSON(w http.ResponseWriter, code int, v any)      { httpserve.WriteJSON(w, code, v) }
func writeError(w http.ResponseWriter, code int, err error) { httpserve.WriteError(w, code, err) }
func noteMAC(r *http.Request, mac string)                   { httpserve.NoteMAC(r, mac) }

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

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
