package httpboot

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// gateBooter is fakeBooter whose Boot for MAC ...:01 waits at a gate,
// to hold requests in flight.
type gateBooter struct {
	fakeBooter
	entered chan struct{}
	gate    chan struct{}
}

func (b *gateBooter) Boot(ctx context.Context, r BootRequest) (BootPlan, error) {
	if r.MAC.String() == "52:54:00:00:00:01" {
		b.entered <- struct{}{}
		<-b.gate
	}
	return b.fakeBooter.Boot(ctx, r)
}

// limitedServer serves a boot side with source limits on loopback.
func limitedServer(t *testing.T, lim SourceLimits) (*Server, *httptest.Server, *gateBooter, *syncbuf.Buffer) {
	t.Helper()
	b := &gateBooter{entered: make(chan struct{}, 16), gate: make(chan struct{})}
	logs := &syncbuf.Buffer{}
	s := New(Config{
		BaseURL: "http://10.77.0.1:8080/",
		Images: func() map[string]Image {
			return map[string]Image{"nixos": {Name: "nixos", Kernel: "/nonexistent/bzImage", Initrds: []string{"/nonexistent/initrd"}}}
		},
		Log:    slog.New(slog.NewTextHandler(logs, nil)),
		Limits: lim,
	}, b)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-b.gate:
		default:
			close(b.gate)
		}
	})
	return s, srv, b, logs
}

// from is an HTTP client whose connections come from source address ip
// (any address of 127.0.0.0/8 is loopback on Linux).
func from(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func getFrom(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestSourceInFlightLimit: one address with its requests in flight at
// the cap gets 429 with Retry-After; another address is still served,
// and so is the first once its requests end.
func TestSourceInFlightLimit(t *testing.T) {
	_, srv, b, logs := limitedServer(t, SourceLimits{MaxInFlight: 2})
	a := from("127.0.0.11")
	held := make(chan int, 2)
	for i := 0; i < 2; i++ {
		go func() {
			resp, err := a.Get(srv.URL + "/boot/52-54-00-00-00-01.ipxe")
			if err != nil {
				held <- 0
				return
			}
			resp.Body.Close()
			held <- resp.StatusCode
		}()
		<-b.entered
	}
	resp, body := getFrom(t, a, srv.URL+"/boot/52-54-00-00-00-02.ipxe")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third request in flight from one address: %d %q Retry-After=%q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	// Images and the per-boot initrd count against the same cap.
	if resp, _ := getFrom(t, a, srv.URL+"/images/nixos/kernel"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("image request past the cap: %d", resp.StatusCode)
	}
	if resp, body := getFrom(t, from("127.0.0.12"), srv.URL+"/boot/52-54-00-00-00-02.ipxe"); resp.StatusCode != http.StatusOK {
		t.Fatalf("another address: %d %q", resp.StatusCode, body)
	}
	close(b.gate)
	for i := 0; i < 2; i++ {
		if code := <-held; code != http.StatusOK {
			t.Fatalf("held request ended with %d", code)
		}
	}
	if resp, body := getFrom(t, a, srv.URL+"/boot/52-54-00-00-00-02.ipxe"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after its requests ended: %d %q", resp.StatusCode, body)
	}
	if n := strings.Count(logs.String(), "too many requests at once"); n != 1 {
		t.Fatalf("%d log lines for refused requests, want 1 (rate-limited):\n%s", n, logs.String())
	}
}

// TestSourceScriptRate: past its allowance of scripts an address gets
// 429 with the wait in Retry-After; others are served; the allowance
// comes back with time (the table's clock is moved by hand).
func TestSourceScriptRate(t *testing.T) {
	s, srv, _, _ := limitedServer(t, SourceLimits{MaxInFlight: 4, ScriptsPerMinute: 5})
	now := time.Now()
	s.sources.now = func() time.Time { return now }
	a := from("127.0.0.21")
	url := srv.URL + "/boot/52-54-00-00-00-02.ipxe"
	for i := 0; i < 5; i++ {
		if resp, body := getFrom(t, a, url); resp.StatusCode != http.StatusOK {
			t.Fatalf("script %d: %d %q", i, resp.StatusCode, body)
		}
	}
	resp, body := getFrom(t, a, url)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("sixth script in a minute: %d %q", resp.StatusCode, body)
	}
	// One script per 12 s comes back.
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra != 12 {
		t.Fatalf("Retry-After = %q, want 12", resp.Header.Get("Retry-After"))
	}
	if resp, _ := getFrom(t, from("127.0.0.22"), url); resp.StatusCode != http.StatusOK {
		t.Fatalf("another address: %d", resp.StatusCode)
	}
	// Images are not scripts: the rate does not apply to them.
	if resp, _ := getFrom(t, a, srv.URL+"/ipxe/ipxe.efi"); resp.StatusCode == http.StatusTooManyRequests {
		t.Fatal("iPXE binary refused by the script rate")
	}
	now = now.Add(12 * time.Second)
	if resp, body := getFrom(t, a, url); resp.StatusCode != http.StatusOK {
		t.Fatalf("after 12 s: %d %q", resp.StatusCode, body)
	}
}

// TestSourceTableBounded: requests from ever new addresses never grow
// the table past maxSources; sources whose allowance is back are swept
// to make room, and until then a new address is answered 429.
func TestSourceTableBounded(t *testing.T) {
	s, _, _, _ := limitedServer(t, SourceLimits{MaxInFlight: 4, ScriptsPerMinute: 5})
	now := time.Now()
	s.sources.now = func() time.Time { return now }
	ask := func(i int) int {
		r := httptest.NewRequest(http.MethodGet, "/boot/52-54-00-00-00-02.ipxe", nil)
		r.RemoteAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)}), 40000).String()
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w.Code
	}
	refused := 0
	for i := 0; i < 3*maxSources; i++ {
		if ask(i) == http.StatusTooManyRequests {
			refused++
		}
		if n := s.sources.size(); n > maxSources {
			t.Fatalf("table holds %d sources, bound %d", n, maxSources)
		}
	}
	if refused != 2*maxSources {
		t.Fatalf("%d new addresses refused with the table full, want %d", refused, 2*maxSources)
	}
	// A minute on, every allowance is whole again: the table makes room.
	now = now.Add(time.Minute)
	if code := ask(3 * maxSources); code != http.StatusOK {
		t.Fatalf("new address after the sweep: %d", code)
	}
	if n := s.sources.size(); n != 1 {
		t.Fatalf("after the sweep the table holds %d sources, want 1", n)
	}
}
