package netlab

import (
	"bytes"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// Advert is a router advertisement a namespace received.
type Advert struct {
	From     netip.Addr
	HopLimit int
	// Msg is the ICMPv6 message, from its type byte on.
	Msg []byte
}

// Solicit sends n router solicitations from ns's link to all routers,
// gap apart, as a host (iPXE, a Linux kernel) does at link-up, and
// returns the router advertisements that arrive until wait after the
// last one.
func Solicit(ns *NS, n int, gap, wait time.Duration) ([]Advert, error) {
	var got []Advert
	err := Do(ns, func() error {
		ifi, err := net.InterfaceByName(ns.Link)
		if err != nil {
			return err
		}
		raw, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		defer raw.Close()
		c := raw.IPv6PacketConn()
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeRouterAdvertisement)
		for _, err := range []error{
			c.SetICMPFilter(&f),
			c.SetControlMessage(ipv6.FlagHopLimit, true),
			c.SetMulticastHopLimit(255),
			c.SetReadDeadline(time.Now().Add(time.Duration(n-1)*gap + wait)),
		} {
			if err != nil {
				return err
			}
		}
		rs, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterSolicitation, Body: &icmp.RawBody{Data: make([]byte, 4)}}).Marshal(nil)
		sent := make(chan error, 1)
		go func() {
			for i := 0; i < n; i++ {
				if i > 0 {
					time.Sleep(gap)
				}
				if _, err := c.WriteTo(rs, &ipv6.ControlMessage{IfIndex: ifi.Index}, &net.IPAddr{IP: net.IPv6linklocalallrouters}); err != nil {
					sent <- err
					return
				}
			}
			sent <- nil
		}()
		buf := make([]byte, 1500)
		for {
			m, cm, src, err := c.ReadFrom(buf)
			if err != nil {
				return <-sent // the deadline ended the reading
			}
			ip, _ := src.(*net.IPAddr)
			a, _ := netip.AddrFromSlice(ip.IP)
			h := Advert{From: a.Unmap(), Msg: bytes.Clone(buf[:m])}
			if cm != nil {
				h.HopLimit = cm.HopLimit
			}
			got = append(got, h)
		}
	})
	return got, err
}

// QuietKernel stops the kernel of ns from soliciting routers on dev
// again (it does at link-up, three times, 4 s apart), so that only the
// test's own solicitations are answered, and counted, from then on.
func (l *Lab) QuietKernel(ns *NS, dev string) {
	l.t.Helper()
	l.Run(ns, "sysctl", "-qw", "net.ipv6.conf."+dev+".router_solicitations=0")
}

var linkLocalRE = regexp.MustCompile(`inet6 (fe80::[0-9a-f:]+)/64 scope link`)

// LinkLocal waits until dev in ns has a link-local address that passed
// duplicate address detection (a second or two after link-up), and
// returns it.
func (l *Lab) LinkLocal(ns *NS, dev string) netip.Addr {
	l.t.Helper()
	var out string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out = l.Run(ns, "ip", "-6", "addr", "show", "dev", dev)
		if m := linkLocalRE.FindStringSubmatch(out); m != nil && !strings.Contains(out, "tentative") {
			return netip.MustParseAddr(m[1])
		}
	}
	l.t.Fatalf("%s has no usable link-local address after 20 s:\n%s", dev, out)
	return netip.Addr{}
}
