// Package httpserve is what the boot and the admin HTTP handlers share:
// the request log and its metrics, JSON answers, and the server loop that
// shuts down with its context. It owns no routes and decides nothing
// about a request; httpboot and admin do.
package httpserve

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// Timeouts bound how long a client may hold a connection without
// making progress. There is no http.Server.WriteTimeout: it would cut a
// 300 MB initrd on a slow link. Writes are bounded per request instead
// (WriteDeadline, and ProgressWriter for files and streams).
type Timeouts struct {
	// Header bounds reading a request's headers (slowloris).
	Header time.Duration
	// Read bounds reading the whole request, body included.
	Read time.Duration
	// Idle bounds a keep-alive connection between requests.
	Idle time.Duration
	// Write bounds writing a small response (WriteDeadline), and each
	// block of a file or each event of a stream (ProgressWriter).
	Write time.Duration
}

// DefaultTimeouts are the timeouts when the config sets none.
var DefaultTimeouts = Timeouts{Header: 10 * time.Second, Read: 30 * time.Second, Idle: 60 * time.Second, Write: 30 * time.Second}

// Serve serves h on l with DefaultTimeouts; see ServeTimeouts.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	return ServeTimeouts(ctx, l, h, log, DefaultTimeouts)
}

// ServeTimeouts serves h on l until ctx is done, then shuts down
// gracefully: requests in flight get a few seconds, and streams that
// follow the request's context (the status page's events) end at once.
// Every request gets the write deadline t.Write (WriteDeadline); the
// handlers of long responses replace it with their own.
func ServeTimeouts(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger, t Timeouts) error {
	srv := &http.Server{
		Handler:           WriteDeadline(t.Write)(h),
		ReadHeaderTimeout: t.Header,
		ReadTimeout:       t.Read,
		IdleTimeout:       t.Idle,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		// TLS handshakes that fail and recovered panics go to the
		// server log rather than to stderr unformatted.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http serve on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}

// WriteDeadline returns middleware that gives each response d to be
// written, counted from when the handler starts writing it (a reload
// may take minutes to prepare its answer); a client that does not read
// its answer in that time loses the connection. A handler that sets a
// deadline itself (ProgressWriter) keeps its own. Zero sets none.
func WriteDeadline(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if d <= 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(&deadlineWriter{ResponseWriter: w, d: d}, r)
		})
	}
}

// deadlineWriter sets the write deadline at the first write.
type deadlineWriter struct {
	http.ResponseWriter
	d     time.Duration
	armed bool // a deadline is set, by the first write or by the handler
}

func (w *deadlineWriter) arm() {
	if !w.armed {
		w.armed = true
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Now().Add(w.d))
	}
}

func (w *deadlineWriter) WriteHeader(code int) {
	w.arm()
	w.ResponseWriter.WriteHeader(code)
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.arm()
	return w.ResponseWriter.Write(b)
}

func (w *deadlineWriter) ReadFrom(src io.Reader) (int64, error) {
	w.arm()
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(w.ResponseWriter, src)
}

func (w *deadlineWriter) FlushError() error {
	w.arm()
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// SetWriteDeadline is what http.ResponseController calls: a handler's
// own deadline replaces this one.
func (w *deadlineWriter) SetWriteDeadline(t time.Time) error {
	w.armed = true
	return http.NewResponseController(w.ResponseWriter).SetWriteDeadline(t)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// progressBlock is the N of "at least N bytes per T" for files: each
// block of a file body must be taken by the client within the write
// timeout. 256 KiB per 30 s is 8.7 kB/s, far below any link that can
// boot a 300 MB initrd in reasonable time, and far above a client
// that stopped reading.
const progressBlock = 256 << 10

// ProgressWriter wraps w for a long response (an image file, an event
// stream): before each block of at most progressBlock bytes, or each
// Write, the write deadline moves to d from now, so a response of any
// length goes through as long as the client keeps taking it, and a
// client that stops is cut after d. (http.Server.ReadTimeout does not
// cut such a response: net/http lifts the read deadline once the
// request body is read.) File bodies still go out with sendfile: each
// block is handed to the connection as an io.LimitedReader over the
// file.
func ProgressWriter(w http.ResponseWriter, d time.Duration) http.ResponseWriter {
	return &progressWriter{ResponseWriter: w, rc: http.NewResponseController(w), d: d}
}

type progressWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (p *progressWriter) extend() { _ = p.rc.SetWriteDeadline(time.Now().Add(p.d)) }

func (p *progressWriter) Write(b []byte) (int, error) {
	p.extend()
	return p.ResponseWriter.Write(b)
}

func (p *progressWriter) ReadFrom(src io.Reader) (int64, error) {
	// ServeContent hands over the file as an io.LimitedReader (the
	// range); the block keeps the file one level down, where sendfile
	// finds it.
	inner, limit := src, int64(-1)
	if lr, ok := src.(*io.LimitedReader); ok {
		inner, limit = lr.R, lr.N
		defer func() { lr.N = limit }()
	}
	var total int64
	for limit != 0 {
		n := int64(progressBlock)
		if limit > 0 && limit < n {
			n = limit
		}
		p.extend()
		var got int64
		var err error
		if rf, ok := p.ResponseWriter.(io.ReaderFrom); ok {
			got, err = rf.ReadFrom(&io.LimitedReader{R: inner, N: n})
		} else {
			got, err = io.Copy(p.ResponseWriter, &io.LimitedReader{R: inner, N: n})
		}
		total += got
		if limit > 0 {
			limit -= got
		}
		if err != nil {
			return total, err
		}
		if got < n {
			return total, nil // the source ended
		}
	}
	return total, nil
}

// Flush sends what is buffered, under the same deadline as a write.
func (p *progressWriter) Flush() {
	p.extend()
	_ = p.rc.Flush()
}

// FlushError is Flush that says whether the client took it.
func (p *progressWriter) FlushError() error {
	p.extend()
	return p.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (p *progressWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

// WriteJSON answers v as indented JSON with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError answers {"error": err} with status code.
func WriteError(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, map[string]string{"error": err.Error()})
}

// ObserveConfig configures Observe.
type ObserveConfig struct {
	// Listener names the handler in the metrics ("boot" or "admin"):
	// both count into the same metric names, told apart by this label.
	Listener string
	Log      *slog.Logger
	// Metrics registers the request counters; nil counts nothing.
	Metrics prometheus.Registerer
	// Quiet route patterns are logged at debug level: probes, scrapes
	// and streams that would bury the requests that tell a story.
	Quiet []string
	// Redact, if set, is what the log shows of a request path.
	Redact func(path string) string
}

// Observe returns chi middleware that logs every request (with the MAC
// that a handler noted, see NoteMAC) and counts it by route pattern and
// status, and the bytes of its body by route.
func Observe(cfg ObserveConfig) func(http.Handler) http.Handler {
	labels := prometheus.Labels{"listener": cfg.Listener}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxe_anywhere_http_requests_total", Help: "HTTP requests, by listener, route and status code.", ConstLabels: labels,
	}, []string{"route", "code"})
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pxe_anywhere_http_bytes_sent_total", Help: "Bytes of response bodies sent, by listener and route.", ConstLabels: labels,
	}, []string{"route"})
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(requests, sent)
	}
	quiet := map[string]bool{}
	for _, q := range cfg.Quiet {
		quiet[q] = true
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rec := &statusRecorder{ResponseWriter: w}
			note := &requestNote{}
			next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), requestNoteKey{}, note)))
			route := "unmatched"
			if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
				route = rc.RoutePattern()
			}
			if rec.status == 0 {
				rec.status = http.StatusOK
			}
			requests.WithLabelValues(route, fmt.Sprint(rec.status)).Inc()
			sent.WithLabelValues(route).Add(float64(rec.n))
			level := slog.LevelInfo
			if quiet[route] {
				level = slog.LevelDebug
			}
			path := r.URL.Path
			if cfg.Redact != nil {
				path = cfg.Redact(path)
			}
			attrs := []any{"method", r.Method, "path", path, "status", rec.status,
				"bytes", rec.n, "remote", r.RemoteAddr, "duration", time.Since(start).Round(time.Millisecond)}
			if note.mac != "" {
				attrs = append(attrs, "mac", note.mac)
			}
			cfg.Log.Log(r.Context(), level, "http", attrs...)
		})
	}
}

// requestNote carries what a handler learnt about a request (the MAC)
// back to the request log.
type requestNote struct{ mac string }

type requestNoteKey struct{}

// NoteMAC puts mac on the request's log line.
func NoteMAC(r *http.Request, mac string) {
	if n, ok := r.Context().Value(requestNoteKey{}).(*requestNote); ok {
		n.mac = mac
	}
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

func (r *statusRecorder) Flush() { _ = r.FlushError() }

// FlushError is Flush that reports a client that did not take it, for
// http.ResponseController.
func (r *statusRecorder) FlushError() error {
	return http.NewResponseController(r.ResponseWriter).Flush()
}
