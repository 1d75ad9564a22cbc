// Package ra answers IPv6 router solicitations on the interfaces the
// server boots machines on, with a router advertisement that says "no
// router here": router lifetime 0, no M or O flag, no options.
//
// Why: iPXE's ifconf runs IPv6 router discovery beside DHCP and fetches
// nothing until one of them configures the link or router discovery
// gives up, which takes about 13 s of doubling solicitations on a
// segment without a router (iPXE src/net/ndp.c). An advertisement
// without M and O flags ends that wait at once. To other hosts the
// advertisement is inert: lifetime 0 makes no default route, no prefix
// makes no address, and zero hop limit, reachable time and retransmit
// timer mean "unspecified", so nothing they use changes.
//
// It never speaks where a real router does: at start it solicits
// routers itself and stays silent while it listens, and any router
// advertisement it hears on an interface that is not its own silences
// it there until the server restarts. It answers solicitations only,
// never advertises unprompted, and bounds how often it answers.
//
// The package owns the ICMPv6 socket and that policy; which interfaces
// it runs on, and whether at all, is the caller's (cmd) decision.
package ra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// Defaults of the answering policy.
const (
	// DefaultListenFirst is how long after start the server only
	// listens. A router answers a solicitation within 0.5 s
	// (MAX_RA_DELAY_TIME), later only if it advertised less than 3 s
	// before (MIN_DELAY_BETWEEN_RAS, RFC 4861 section 6.2.6).
	DefaultListenFirst = 4 * time.Second
	// DefaultPerSource is the least time between two answers to one
	// soliciting address. iPXE solicits again after 0.3 s, then at
	// doubling intervals; one answer is enough.
	DefaultPerSource = time.Second
	// DefaultPerInterface caps answers per second on one interface, so
	// that solicitations from forged sources cannot make it a flooder.
	DefaultPerInterface = 20
	// maxSources bounds the per-source memory.
	maxSources = 4096
)

// Config says where to answer and how.
type Config struct {
	// Interfaces to answer on, by name.
	Interfaces []string
	Log        *slog.Logger
	// Metrics may be nil.
	Metrics prometheus.Registerer
	// ListenFirst, PerSource and PerInterface default (when zero) to
	// the constants above.
	ListenFirst  time.Duration
	PerSource    time.Duration
	PerInterface int
}

// Server is the responder. Make it with New, then Listen and Serve.
type Server struct {
	cfg   Config
	log   *slog.Logger
	conn  *ipv6.PacketConn
	raw   *icmp.PacketConn
	links map[int]*link // by interface index

	solicits *prometheus.CounterVec
	sent     *prometheus.CounterVec
	foreign  *prometheus.CounterVec
	silenced *prometheus.GaugeVec
}

// link is one interface's state.
type link struct {
	ifi *net.Interface

	mu sync.Mutex
	// answerFrom is when the start-up listening ends.
	answerFrom time.Time
	// silent is set for good when another router was heard.
	silent bool
	// lastTo is when each source was last answered, for PerSource.
	lastTo map[netip.Addr]time.Time
	// second and inSecond count answers in the current second.
	second   time.Time
	inSecond int
}

// New checks cfg and prepares a server; it opens nothing.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		return nil, errors.New("ra: no logger")
	}
	if cfg.ListenFirst == 0 {
		cfg.ListenFirst = DefaultListenFirst
	}
	if cfg.PerSource == 0 {
		cfg.PerSource = DefaultPerSource
	}
	if cfg.PerInterface == 0 {
		cfg.PerInterface = DefaultPerInterface
	}
	s := &Server{
		cfg: cfg, log: cfg.Log, links: map[int]*link{},
		solicits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_ra_solicitations_total",
			Help: "IPv6 router solicitations received, by interface and what was done (answered, listening, silenced, rate-limited, invalid).",
		}, []string{"interface", "result"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_ra_advertisements_sent_total",
			Help: "Router advertisements (lifetime 0, no flags, no options) sent, by interface.",
		}, []string{"interface"}),
		foreign: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_ra_foreign_advertisements_total",
			Help: "Router advertisements heard from other routers, by interface; the first one silences the responder there.",
		}, []string{"interface"}),
		silenced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pxe_anywhere_ra_silenced",
			Help: "1 on an interface where another router advertises and the responder stays silent.",
		}, []string{"interface"}),
	}
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(s.solicits, s.sent, s.foreign, s.silenced)
	}
	return s, nil
}

var (
	allNodes   = &net.IPAddr{IP: net.IPv6linklocalallnodes}
	allRouters = &net.IPAddr{IP: net.IPv6linklocalallrouters}
)

// Listen opens the ICMPv6 socket, joins the all-routers group on each
// interface (solicitations go there) and solicits routers there, so
// that one already on the segment is heard before anything is answered.
// An interface where IPv6 is off is left out with a warning; an error
// means the socket could not be opened at all.
func (s *Server) Listen() error {
	raw, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return fmt.Errorf("router advertisements: ICMPv6 socket: %w", err)
	}
	conn := raw.IPv6PacketConn()
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	f.Accept(ipv6.ICMPTypeRouterAdvertisement)
	for _, step := range []struct {
		what string
		err  error
	}{
		{"ICMPv6 filter", conn.SetICMPFilter(&f)},
		{"control messages", conn.SetControlMessage(ipv6.FlagInterface|ipv6.FlagHopLimit|ipv6.FlagDst, true)},
		// Neighbor discovery messages are valid only with hop limit
		// 255: proof that they were not routed here.
		{"hop limit", conn.SetHopLimit(255)},
		{"multicast hop limit", conn.SetMulticastHopLimit(255)},
		// Our own multicasts must not come back as "another router".
		{"multicast loopback", conn.SetMulticastLoopback(false)},
	} {
		if step.err != nil {
			raw.Close()
			return fmt.Errorf("router advertisements: %s: %w", step.what, step.err)
		}
	}
	now := time.Now()
	for _, name := range s.cfg.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			err = conn.JoinGroup(ifi, allRouters)
		}
		if err != nil {
			s.log.Warn("router advertisements off on this interface: cannot receive router solicitations there (is IPv6 disabled on it?)", "interface", name, "err", err)
			continue
		}
		s.links[ifi.Index] = &link{ifi: ifi, answerFrom: now.Add(s.cfg.ListenFirst), lastTo: map[netip.Addr]time.Time{}}
		s.silenced.WithLabelValues(name).Set(0)
		rs, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterSolicitation, Body: &icmp.RawBody{Data: make([]byte, 4)}}).Marshal(nil)
		if _, err := conn.WriteTo(rs, &ipv6.ControlMessage{IfIndex: ifi.Index}, allRouters); err != nil {
			// Periodic advertisements of a router are still heard.
			s.log.Debug("router solicitation at start not sent", "interface", name, "err", err)
		}
	}
	s.raw, s.conn = raw, conn
	return nil
}

// Close closes the socket that Listen opened, for a start that fails
// before Serve; Serve closes it itself when its context ends.
func (s *Server) Close() {
	if s.raw != nil {
		s.raw.Close()
	}
}

// Serve answers solicitations until ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	if s.conn == nil {
		return errors.New("ra: Serve before Listen")
	}
	stop := context.AfterFunc(ctx, func() { s.raw.Close() })
	defer stop()
	buf := make([]byte, 1500)
	for {
		n, cm, src, err := s.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("router advertisements: read: %w", err)
		}
		if cm == nil {
			continue
		}
		l := s.links[cm.IfIndex]
		if l == nil {
			continue // an interface we do not serve
		}
		from, ok := netip.AddrFromSlice(ipOf(src))
		if !ok {
			continue
		}
		s.handle(l, buf[:n], cm.HopLimit, from.Unmap(), time.Now())
	}
}

func ipOf(a net.Addr) net.IP {
	if ip, ok := a.(*net.IPAddr); ok {
		return ip.IP
	}
	return nil
}

// handle acts on one message received on l.
func (s *Server) handle(l *link, msg []byte, hopLimit int, from netip.Addr, now time.Time) {
	if len(msg) < 8 || msg[1] != 0 {
		return // no ND message; the filter let only types 133 and 134 in
	}
	switch ipv6.ICMPType(msg[0]) {
	case ipv6.ICMPTypeRouterAdvertisement:
		s.heardAdvertisement(l, from, hopLimit)
	case ipv6.ICMPTypeRouterSolicitation:
		s.solicited(l, from, hopLimit, now)
	}
}

// heardAdvertisement silences l if the advertisement is not ours. Any
// advertisement counts, even one a host would reject: where something
// advertises, staying silent costs only seconds of a boot.
func (s *Server) heardAdvertisement(l *link, from netip.Addr, hopLimit int) {
	if s.ours(l, from) {
		return
	}
	s.foreign.WithLabelValues(l.ifi.Name).Inc()
	l.mu.Lock()
	was := l.silent
	l.silent = true
	l.mu.Unlock()
	if !was {
		s.silenced.WithLabelValues(l.ifi.Name).Set(1)
		s.log.Warn("another router advertises on this interface: router advertisements stay off there until restart",
			"interface", l.ifi.Name, "router", from, "hop_limit", hopLimit)
	}
}

// ours reports whether from is an address of l's interface.
func (s *Server) ours(l *link, from netip.Addr) bool {
	addrs, err := l.ifi.Addrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().WithZone("") == from.WithZone("") {
			return true
		}
	}
	return false
}

// solicited answers a solicitation when the policy allows.
func (s *Server) solicited(l *link, from netip.Addr, hopLimit int, now time.Time) {
	result := s.decide(l, from, hopLimit, now)
	if result == "answered" {
		if err := s.advertise(l, from); err != nil {
			result = "failed"
			s.log.Warn("router advertisement not sent", "interface", l.ifi.Name, "to", from, "err", err)
		}
	}
	s.solicits.WithLabelValues(l.ifi.Name, result).Inc()
	s.log.Debug("router solicitation", "interface", l.ifi.Name, "from", from, "result", result)
}

// decide is the answering policy: a valid solicitation, on an interface
// not silenced, after the start-up listening, within the rates.
func (s *Server) decide(l *link, from netip.Addr, hopLimit int, now time.Time) string {
	// RFC 4861 section 6.1.1: hop limit 255, and from a link-local or
	// the unspecified address (anything else came from elsewhere).
	if hopLimit != 255 || !(from.IsLinkLocalUnicast() || from.IsUnspecified()) {
		return "invalid"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.silent:
		return "silenced"
	case now.Before(l.answerFrom):
		return "listening"
	}
	key := from.WithZone("")
	if last, ok := l.lastTo[key]; ok && now.Sub(last) < s.cfg.PerSource {
		return "rate-limited"
	}
	if now.Sub(l.second) >= time.Second {
		l.second, l.inSecond = now, 0
	}
	if l.inSecond >= s.cfg.PerInterface {
		return "rate-limited"
	}
	if len(l.lastTo) >= maxSources {
		for a, t := range l.lastTo {
			if now.Sub(t) >= s.cfg.PerSource {
				delete(l.lastTo, a)
			}
		}
		if len(l.lastTo) >= maxSources {
			return "rate-limited"
		}
	}
	l.lastTo[key] = now
	l.inSecond++
	return "answered"
}

// Advertisement is the message sent: type 134, code 0, current hop
// limit 0 (unspecified), no M or O flag, router lifetime 0 (not a
// default router), reachable time and retransmit timer 0 (unspecified),
// no options (no prefix, no MTU, no link-layer address). The kernel
// fills in the checksum.
func Advertisement() []byte {
	b, _ := (&icmp.Message{Type: ipv6.ICMPTypeRouterAdvertisement, Body: &icmp.RawBody{Data: make([]byte, 12)}}).Marshal(nil)
	return b
}

// advertise sends the advertisement to the solicitor, or to all nodes
// when it solicited from the unspecified address (RFC 4861 6.2.6).
func (s *Server) advertise(l *link, to netip.Addr) error {
	dst := allNodes
	if !to.IsUnspecified() {
		// No zone: the interface index of the control message scopes
		// the link-local address. (A zone name would go through the
		// net package's process-wide name→index cache.)
		dst = &net.IPAddr{IP: to.AsSlice()}
	}
	if _, err := s.conn.WriteTo(Advertisement(), &ipv6.ControlMessage{IfIndex: l.ifi.Index, HopLimit: 255}, dst); err != nil {
		return err
	}
	s.sent.WithLabelValues(l.ifi.Name).Inc()
	return nil
}
