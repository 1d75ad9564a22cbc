package dhcp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// declineFor crafts a DECLINE of ip from mac, as a client (or anyone
// spoofing one) sends it.
func declineFor(t testing.TB, mac, ip string) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	req, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline), dhcpv4.WithHwAddr(hw),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(ip))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.1"))))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestDeclineRules: a DECLINE takes an address out of the pool only
// when it comes from the MAC that was offered it or holds it.
func TestDeclineRules(t *testing.T) {
	const a, b = "52:54:00:00:00:0a", "52:54:00:00:00:0b"
	ctx := context.Background()
	discover := func(t *testing.T, s *Server, mac string) string {
		offer, err := s.Handle(ctx, pxeRequest(t, dhcpv4.MessageTypeDiscover, mac, "", nil, "", false), "br0", 67)
		if err != nil || offer == nil {
			t.Fatalf("%s: no offer: %v", mac, err)
		}
		return offer.YourIPAddr.String()
	}
	tests := []struct {
		name string
		// setup returns the DECLINE to send.
		setup  func(t *testing.T, s *Server) *dhcpv4.DHCPv4
		result string
	}{
		{"the offered MAC declines its offer", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			return declineFor(t, a, discover(t, s, a))
		}, "declined"},
		{"the holder declines its lease", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			ip := discover(t, s, a)
			if ok, _ := s.pool.ack(a, netip.MustParseAddr(ip), time.Hour); !ok {
				t.Fatal("no ack")
			}
			return declineFor(t, a, ip)
		}, "declined"},
		{"another MAC declines a's offer", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			return declineFor(t, b, discover(t, s, a))
		}, "decline-ignored"},
		{"a MAC with nothing declines a free address", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			return declineFor(t, b, "10.80.0.105")
		}, "decline-ignored"},
		{"the offered MAC declines another address", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			discover(t, s, a)
			return declineFor(t, a, "10.80.0.105")
		}, "decline-ignored"},
		{"an address out of the range", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			return declineFor(t, a, "10.80.0.7")
		}, "decline-ignored"},
		{"a reservation outside the range", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			return declineFor(t, "52:54:00:12:34:05", discover(t, s, "52:54:00:12:34:05"))
		}, "decline-ignored"},
		{"another server's DECLINE", func(t *testing.T, s *Server) *dhcpv4.DHCPv4 {
			d := declineFor(t, a, discover(t, s, a))
			d.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.9")))
			return d
		}, "not-ours"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestServer(t, testConfig(Authoritative, ""))
			d := tt.setup(t, s)
			ip := netip.MustParseAddr(d.RequestedIPAddress().String())
			if r, err := s.Handle(ctx, d, "br0", 67); r != nil || err != nil {
				t.Fatalf("DECLINE answered: %v %v", r, err)
			}
			if got := testutil.ToFloat64(s.packets.WithLabelValues("decline", tt.result)); got != 1 {
				t.Fatalf("decline counted as %q: %v, want 1", tt.result, got)
			}
			declined := s.pool.declinedCount()
			if want := map[bool]int{true: 1, false: 0}[tt.result == "declined"]; declined != want {
				t.Fatalf("declined set holds %d, want %d", declined, want)
			}
			// Whoever asks next for the address gets it unless it was
			// declined for real.
			s.pool.release(a, netip.Addr{})
			got, _ := s.pool.offer("52:54:00:00:00:0c", ip)
			if (got == ip) == (tt.result == "declined") && s.pool.inRange(ip) {
				t.Fatalf("after %s, %s offered %s", tt.result, ip, got)
			}
		})
	}
}

// TestDeclinedSetPruned: the declined set keeps an address for
// declineHold, then prunes it, so it never holds more than the range.
func TestDeclinedSetPruned(t *testing.T) {
	p, err := newPool(netip.MustParseAddr("10.80.0.100"), netip.MustParseAddr("10.80.0.103"), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return now }
	// Each round declines k addresses after the last round's hold ran
	// out: the set holds this round's k alone, the others were pruned.
	for round, k := range []int{4, 1, 2} {
		for i := 0; i < k; i++ {
			mac := fmt.Sprintf("52:54:00:00:%02x:%02x", round, i)
			ip, ok := p.offer(mac, netip.Addr{})
			if !ok {
				t.Fatalf("round %d: pool empty for %s", round, mac)
			}
			if ok, _ := p.decline(mac, ip); !ok {
				t.Fatalf("round %d: %s's DECLINE of its offer %s refused", round, mac, ip)
			}
		}
		if k == 4 {
			if ip, ok := p.offer("52:54:00:00:ff:ff", netip.Addr{}); ok {
				t.Fatalf("round %d: declined address %s offered within declineHold", round, ip)
			}
		}
		if n := p.declinedCount(); n != k {
			t.Fatalf("round %d: declined set holds %d, want the %d of this round", round, n, k)
		}
		now = now.Add(declineHold)
	}
}

// TestDeclineFlood: spoofed DECLINEs from many MACs, for addresses in
// and out of the range, leave the pool whole and the memory flat. The
// bound asserted is on sizes (declined set, heap), not on time.
func TestDeclineFlood(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestServer(t, testConfig(Authoritative, ""))
	var logs syncbuf.Buffer
	s.limited = &lograte.Limiter{Log: slog.New(slog.NewTextHandler(&logs, nil)), Every: time.Minute}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	// Packets are built up front so that only the server's memory is
	// measured.
	const n = 100_000
	reqs := make([]*dhcpv4.DHCPv4, 0, 1000)
	for i := 0; i < cap(reqs); i++ {
		mac := fmt.Sprintf("02:00:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff)
		reqs = append(reqs, declineFor(t, mac, fmt.Sprintf("10.80.%d.%d", i>>8&1, i&0xff)))
	}
	before := heap()
	for i := 0; i < n; i++ {
		s.Handle(ctx, reqs[i%len(reqs)], "br0", 67)
	}
	grown := int64(heap()) - int64(before)
	if c := s.pool.declinedCount(); c != 0 {
		t.Fatalf("spoofed DECLINEs put %d addresses in the declined set", c)
	}
	if got := testutil.ToFloat64(s.packets.WithLabelValues("decline", "decline-ignored")); got != n {
		t.Fatalf("ignored DECLINEs counted: %v, want %d", got, n)
	}
	// 100k DECLINEs took 14 MiB before the fix; now nothing is kept.
	if grown > 1<<20 {
		t.Fatalf("heap grew by %d bytes over %d spoofed DECLINEs", grown, n)
	}
	t.Logf("heap after %d spoofed DECLINEs: %+d bytes", n, grown)
	if lines := strings.Count(logs.String(), "DECLINE ignored"); lines != 1 {
		t.Fatalf("%d log lines for %d ignored DECLINEs, want 1 (rate-limited)", lines, n)
	}
	for i := 0; i < 11; i++ {
		if _, ok := s.pool.offer(fmt.Sprintf("52:54:00:00:03:%02x", i), netip.Addr{}); !ok {
			t.Fatalf("pool empty after the flood, at client %d of the 11 the range holds", i)
		}
	}
}

// TestRealDeclineFlood sends spoofed DECLINEs over a real socket in a
// lab; then a real client still gets the first address of the range.
func TestRealDeclineFlood(t *testing.T) {
	netlab.Require(t, "udhcpc")
	lab := netlab.New(t, "10.80.0.0/24")
	s, _, _ := startInLab(t, lab, testConfig(Authoritative, filepath.Join(t.TempDir(), "leases.json")))
	conn := peer(t, lab, "", "10.80.0.2", 68)
	dst := &net.UDPAddr{IP: net.ParseIP("10.80.0.1"), Port: 67}
	const n = 2000
	for i := 0; i < n; i++ {
		d := declineFor(t, fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff), fmt.Sprintf("10.80.0.%d", 100+i%11))
		if _, err := conn.WriteTo(d.ToBytes(), dst); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			// Give the server's socket time to drain, so that what is
			// counted below is what it read; only the counter decides.
			waitFor(t, func() bool {
				return testutil.ToFloat64(s.packets.WithLabelValues("decline", "decline-ignored")) >= float64(i+1)
			})
		}
	}
	if c := s.pool.declinedCount(); c != 0 {
		t.Fatalf("declined set holds %d after spoofed DECLINEs", c)
	}
	env := runUdhcpc(t, lab, lab.Client("52:54:00:00:00:44"))
	if env["ip"] != "10.80.0.100" {
		t.Fatalf("client after the flood got %v, want 10.80.0.100", env)
	}
}

// waitFor polls cond until it holds; the deadline only ends a broken
// run, nothing is asserted about time.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
