package httpserve

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// TestObserveTwoListenersOneRegistry: serve registers the boot and the
// admin side's counters in one registry; they share the metric names
// and are told apart by the listener label. Each request is logged once,
// with the MAC a handler noted, its path redacted, quiet routes at debug.
func TestObserveTwoListenersOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	router := func(listener string, quiet ...string) *httptest.Server {
		r := chi.NewRouter()
		r.Use(Observe(ObserveConfig{Listener: listener, Log: log, Metrics: reg, Quiet: quiet,
			Redact: func(p string) string { return strings.ReplaceAll(p, "secret", "s…") }}))
		r.Get("/m/{mac}", func(w http.ResponseWriter, r *http.Request) {
			NoteMAC(r, "52:54:00:00:00:01")
			io.WriteString(w, "hello")
		})
		r.Get("/quiet", func(w http.ResponseWriter, r *http.Request) {})
		srv := httptest.NewServer(r)
		t.Cleanup(srv.Close)
		return srv
	}
	boot, admin := router("boot", "/quiet"), router("admin")
	for _, u := range []string{boot.URL + "/m/secret", boot.URL + "/quiet", boot.URL + "/nope", admin.URL + "/m/x", admin.URL + "/m/y"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	want := `
# HELP pxe_anywhere_http_requests_total HTTP requests, by listener, route and status code.
# TYPE pxe_anywhere_http_requests_total counter
pxe_anywhere_http_requests_total{code="200",listener="admin",route="/m/{mac}"} 2
pxe_anywhere_http_requests_total{code="200",listener="boot",route="/m/{mac}"} 1
pxe_anywhere_http_requests_total{code="200",listener="boot",route="/quiet"} 1
pxe_anywhere_http_requests_total{code="404",listener="boot",route="unmatched"} 1
# HELP pxe_anywhere_http_bytes_sent_total Bytes of response bodies sent, by listener and route.
# TYPE pxe_anywhere_http_bytes_sent_total counter
pxe_anywhere_http_bytes_sent_total{listener="admin",route="/m/{mac}"} 10
pxe_anywhere_http_bytes_sent_total{listener="boot",route="/m/{mac}"} 5
pxe_anywhere_http_bytes_sent_total{listener="boot",route="/quiet"} 0
pxe_anywhere_http_bytes_sent_total{listener="boot",route="unmatched"} 19
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	got := logs.String()
	for _, w := range []string{"path=/m/s… ", "mac=52:54:00:00:00:01", "path=/nope status=404", "path=/m/y"} {
		if !strings.Contains(got, w) {
			t.Errorf("log lacks %q:\n%s", w, got)
		}
	}
	for _, w := range []string{"secret", "path=/quiet"} {
		if strings.Contains(got, w) {
			t.Errorf("log holds %q:\n%s", w, got)
		}
	}
}
