package ra

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// start runs a responder on the lab's bridge and returns its metrics
// and log; it stops when the test ends.
func start(t *testing.T, lab *netlab.Lab, listenFirst time.Duration) (*prometheus.Registry, *syncbuf.Buffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	var logs syncbuf.Buffer
	s, err := New(Config{
		Interfaces: []string{lab.Bridge}, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics: reg, ListenFirst: listenFirst,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := netlab.Do(lab.Server, s.Listen); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("responder log:\n%s", logs.String())
		}
	})
	return reg, &logs
}

// solicit is netlab.Solicit that fails t on error.
func solicit(t *testing.T, ns *netlab.NS, n int, gap, wait time.Duration) []netlab.Advert {
	t.Helper()
	got, err := netlab.Solicit(ns, n, gap, wait)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func from(hs []netlab.Advert, a netip.Addr) []netlab.Advert {
	var out []netlab.Advert
	for _, h := range hs {
		if h.From == a {
			out = append(out, h)
		}
	}
	return out
}

// icmpIn is the count of ICMPv6 messages of one kind the kernel of ns
// received (from /proc/net/snmp6, e.g. Icmp6InRouterAdvertisements).
func icmpIn(t *testing.T, lab *netlab.Lab, ns *netlab.NS, counter string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + counter + `\s+(\d+)$`).FindStringSubmatch(lab.Run(ns, "cat", "/proc/net/snmp6"))
	if m == nil {
		t.Fatalf("no %s in /proc/net/snmp6", counter)
	}
	return m[1]
}

// TestHarmlessToLinuxHost: a Linux host on the segment gets the
// advertisement (its kernel counts it) and keeps its addresses and
// routes exactly: no default route, no address from a prefix. The
// advertisement is what iPXE needs: hop limit 255, no flags, lifetime
// 0, no options, from our link-local address, unicast to the solicitor;
// one per source per second; none during the start-up listening.
func TestHarmlessToLinuxHost(t *testing.T) {
	netlab.Require(t)
	lab := netlab.New(t, "10.151.0.0/24")
	host := lab.Client("52:54:00:97:01:01")
	lab.LinkLocal(host, "eth0")
	lab.QuietKernel(host, "eth0")
	ours := lab.LinkLocal(lab.Server, lab.Bridge)
	// The host's own kernel solicits at link-up; let those pass first
	// (3 tries, 4 s apart, then it stops) so that "before" is settled.
	state := func() string {
		return lab.Run(host, "ip", "-6", "addr", "show") + lab.Run(host, "ip", "-6", "route", "show", "table", "all") +
			lab.Run(host, "ip", "-4", "route", "show", "table", "all")
	}
	before := state()
	inBefore := icmpIn(t, lab, host, "Icmp6InRouterAdvertisements")

	reg, _ := start(t, lab, 1500*time.Millisecond)
	if got := from(solicit(t, host, 1, 0, time.Second), ours); len(got) != 0 {
		t.Fatalf("answered during the start-up listening: %d advertisements", len(got))
	}
	time.Sleep(time.Second)
	// Three solicitations 0.3 s apart, as iPXE sends them: one answer.
	got := from(solicit(t, host, 3, 300*time.Millisecond, time.Second), ours)
	if len(got) != 1 {
		t.Fatalf("%d advertisements for 3 solicitations within a second, want 1", len(got))
	}
	if h := got[0]; h.HopLimit != 255 || !bytes.Equal(h.Msg[4:], make([]byte, 12)) || h.Msg[0] != 134 || h.Msg[1] != 0 || len(h.Msg) != 16 {
		t.Errorf("advertisement: hop limit %d, % x; want 255 and type 134, code 0, then 12 zero bytes", h.HopLimit, h.Msg)
	}
	// A second later the same host is answered again.
	time.Sleep(time.Second)
	if got := from(solicit(t, host, 1, 0, time.Second), ours); len(got) != 1 {
		t.Fatalf("%d advertisements a second later, want 1", len(got))
	}
	if in := icmpIn(t, lab, host, "Icmp6InRouterAdvertisements"); in == inBefore {
		t.Fatalf("the host's kernel received no advertisement (%s before and after)", in)
	}
	if after := state(); after != before {
		t.Fatalf("the host's addresses or routes changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if n, err := testutil.GatherAndCount(reg, "pxe_anywhere_ra_advertisements_sent_total"); err != nil || n != 1 {
		t.Errorf("advertisement counter: %d series, %v", n, err)
	}
}

// TestForeignRouterSilences: a router already on the segment answers
// the responder's own start-up solicitation, and it never answers;
// a router that starts advertising later silences it from then on.
func TestForeignRouterSilences(t *testing.T) {
	netlab.Require(t)
	t.Run("router before us", func(t *testing.T) {
		lab := netlab.New(t, "10.152.0.0/24")
		host := lab.Client("52:54:00:97:02:01")
		router := lab.Client("52:54:00:97:02:02")
		lab.LinkLocal(host, "eth0")
		lab.QuietKernel(host, "eth0")
		ours := lab.LinkLocal(lab.Server, lab.Bridge)
		// Like radvd with AdvRASolicitedUnicast (its default): it
		// answers each solicitation to the solicitor only.
		stop := runRouter(t, router, false)
		defer stop()
		// The router answers before the responder starts.
		routerLL := lab.LinkLocal(router, "eth0")
		for i := 0; len(from(solicit(t, host, 1, 0, 500*time.Millisecond), routerLL)) == 0; i++ {
			if i == 20 {
				t.Fatal("the test router does not answer")
			}
		}
		reg, logs := start(t, lab, time.Second)
		time.Sleep(1500 * time.Millisecond)
		if got := from(solicit(t, host, 1, 0, 1500*time.Millisecond), ours); len(got) != 0 {
			t.Fatalf("answered with a router on the segment: %d advertisements", len(got))
		}
		checkSilenced(t, reg, logs, lab.Bridge)
	})
	t.Run("router after us", func(t *testing.T) {
		lab := netlab.New(t, "10.153.0.0/24")
		host := lab.Client("52:54:00:97:03:01")
		router := lab.Client("52:54:00:97:03:02")
		lab.LinkLocal(host, "eth0")
		lab.QuietKernel(host, "eth0")
		lab.LinkLocal(router, "eth0")
		ours := lab.LinkLocal(lab.Server, lab.Bridge)
		reg, logs := start(t, lab, 500*time.Millisecond)
		time.Sleep(time.Second)
		if got := from(solicit(t, host, 1, 0, time.Second), ours); len(got) != 1 {
			t.Fatalf("no answer before a router came: %d advertisements", len(got))
		}
		// A router starting up multicasts its first advertisements.
		stop := runRouter(t, router, true)
		defer stop()
		time.Sleep(1500 * time.Millisecond)
		if got := from(solicit(t, host, 1, 0, 1500*time.Millisecond), ours); len(got) != 0 {
			t.Fatalf("answered after a router advertised: %d advertisements", len(got))
		}
		checkSilenced(t, reg, logs, lab.Bridge)
	})
}

func checkSilenced(t *testing.T, reg *prometheus.Registry, logs *syncbuf.Buffer, ifname string) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP pxe_anywhere_ra_silenced 1 on an interface where another router advertises and the responder stays silent.
# TYPE pxe_anywhere_ra_silenced gauge
pxe_anywhere_ra_silenced{interface="`+ifname+`"} 1
`), "pxe_anywhere_ra_silenced"); err != nil {
		t.Error(err)
	}
	if !strings.Contains(logs.String(), "another router advertises") {
		t.Errorf("no log line names the other router:\n%s", logs.String())
	}
}

// runRouter is a router in ns: it answers every solicitation with an
// advertisement (lifetime 1800 s, as a real router), unicast to the
// solicitor, and with announce also multicasts one at start.
func runRouter(t *testing.T, ns *netlab.NS, announce bool) (stop func()) {
	t.Helper()
	ra := Advertisement()
	ra[6], ra[7] = 0x07, 0x08 // router lifetime 1800 s
	ready := make(chan error, 1)
	done := make(chan struct{})
	var raw *icmp.PacketConn
	go func() {
		defer close(done)
		netlab.Do(ns, func() error {
			ifi, err := net.InterfaceByName(ns.Link)
			if err == nil {
				raw, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
			}
			if err != nil {
				ready <- err
				return nil
			}
			c := raw.IPv6PacketConn()
			var f ipv6.ICMPFilter
			f.SetAll(true)
			f.Accept(ipv6.ICMPTypeRouterSolicitation)
			c.SetICMPFilter(&f)
			c.SetHopLimit(255)
			c.SetMulticastHopLimit(255)
			if err := c.JoinGroup(ifi, allRouters); err != nil {
				ready <- err
				return nil
			}
			if announce {
				c.WriteTo(ra, &ipv6.ControlMessage{IfIndex: ifi.Index}, allNodes)
			}
			ready <- nil
			buf := make([]byte, 1500)
			for {
				_, _, src, err := c.ReadFrom(buf)
				if err != nil {
					return nil
				}
				dst := src.(*net.IPAddr)
				dst.Zone = ""
				c.WriteTo(ra, &ipv6.ControlMessage{IfIndex: ifi.Index}, dst)
			}
		})
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	return func() { raw.Close(); <-done }
}
