// Package dhcp is pxe-anywhere's DHCPv4 server, on insomniacslk/dhcp. In
// proxy mode it adds boot options for network-booting firmware next to
// the network's own DHCP server (ports 67 and 4011, no addresses); in
// authoritative mode it also leases addresses. It tells firmware apart
// (BIOS, UEFI, HTTP Boot, iPXE) but decides nothing about machines: it
// asks a Decider, which cmd/pxe-anywhere wires to provision.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"

	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
)

// Mode is how the server takes part in DHCP.
type Mode int

const (
	// Proxy answers only network-booting firmware, with boot options and
	// no address (PXE's ProxyDHCP); another server leases addresses.
	Proxy Mode = iota
	// Authoritative leases addresses as well.
	Authoritative
)

func (m Mode) String() string {
	if m == Authoritative {
		return "authoritative"
	}
	return "proxy"
}

// Machine is a network-booting client as DHCP sees it, with where its
// request came from: the Decider may place a machine by its switch port.
type Machine struct {
	MAC       net.HardwareAddr
	Firmware  Firmware
	Interface string
	// Relay is the giaddr of a relayed request; zero when direct.
	Relay netip.Addr
	// CircuitID and RemoteID are option 82's sub-options 1 and 2 of a
	// relayed request (RFC 3046), as text, or "0x" and hex when they are
	// not printable; "" when absent. A direct request's option 82 is
	// not read: only a relay may speak for a port.
	CircuitID, RemoteID string
	// VendorClass is option 60.
	VendorClass string
	// Addr is the address this server leases the machine in
	// authoritative mode: the one it offers (DISCOVER), acknowledges
	// (REQUEST), or the one of its lease that an INFORM names. Zero in
	// proxy mode, where another server gives the address.
	Addr netip.Addr
}

// Decision is the Decider's answer.
type Decision int

const (
	// Ignore: no boot options for this machine (and in proxy mode, no
	// answer at all).
	Ignore Decision = iota
	// Boot: chain the machine into iPXE and its script.
	Boot
)

// Decider says which machines boot from us.
type Decider interface {
	Decide(ctx context.Context, m Machine) Decision
}

// Config configures a Server.
type Config struct {
	Interfaces []string
	Mode       Mode
	// ServerIP goes into siaddr and option 54: where TFTP and the next
	// DHCP exchanges go. Required: the caller knows which address the
	// other servers listen on, so dhcp never guesses one.
	ServerIP netip.Addr
	// ScriptURL is the iPXE script of a machine; iPXE clients get it.
	ScriptURL func(mac net.HardwareAddr) string
	// HTTPBootURL is the iPXE binary over HTTP for UEFI HTTP Boot; ""
	// means there is none for that machine's architecture.
	HTTPBootURL func(m Machine) string
	// BootFiles are the TFTP file names of iPXE per architecture; an
	// architecture without one is not booted.
	BootFiles map[Arch]string

	// Authoritative mode.
	Subnet       netip.Prefix
	RangeStart   netip.Addr
	RangeEnd     netip.Addr
	Router       netip.Addr
	DNS          []netip.Addr
	Domain       string
	LeaseTime    time.Duration
	Reservations map[string]netip.Addr // MAC → address; SetReservations replaces them
	LeaseFile    string

	// Binder hears of every address DHCP sees a machine take; nil: no
	// one listens.
	Binder Binder
	// ProxyBindingTime is how long a proxy-mode binding lasts; zero
	// means two hours.
	ProxyBindingTime time.Duration

	// Relays are the relay agents whose forwarded requests (giaddr set)
	// are answered, by the packet's source address; a relayed request
	// from anywhere else is dropped. Empty: none is answered. A relay
	// writes option 82 (the switch port); believing it from any host
	// would let that host claim any port, and have its replies sent to
	// any address it names as giaddr.
	Relays []netip.Prefix

	Metrics prometheus.Registerer // may be nil
}

// Server is the DHCP server.
type Server struct {
	cfg     Config
	decider Decider
	log     *slog.Logger
	pool    *pool
	conns   []listener
	packets *prometheus.CounterVec

	// ifaces names the configured interfaces by index, for requests on
	// port 4011, whose socket is not bound to one.
	ifaces map[int]string

	// limited logs what strangers can send as often as they like.
	limited *lograte.Limiter

	mu     sync.Mutex
	warned map[string]bool // firmware kinds already logged as having no boot file
}

type listener struct {
	conn  net.PacketConn
	iface string
	port  int
	// pc, on the 4011 socket only, reads the interface each request
	// came in on (IP_PKTINFO).
	pc *ipv4.PacketConn
}

// New checks cfg and makes a Server; Listen opens its sockets.
func New(cfg Config, d Decider, log *slog.Logger) (*Server, error) {
	if len(cfg.Interfaces) == 0 {
		return nil, errors.New("dhcp: no interfaces to serve")
	}
	if cfg.ScriptURL == nil {
		return nil, errors.New("dhcp: no script URL")
	}
	if d == nil {
		return nil, errors.New("dhcp: no Decider: nothing would say which machines boot")
	}
	if !cfg.ServerIP.IsValid() {
		return nil, errors.New("dhcp: no server address: set server.advertise, or give the first interface an IPv4 address")
	}
	if !cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcp: server address %s is not IPv4", cfg.ServerIP)
	}
	s := &Server{
		cfg: cfg, decider: d, log: log, warned: map[string]bool{},
		limited: &lograte.Limiter{Log: log, Every: time.Minute},
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_dhcp_requests_total", Help: "DHCP packets received, by message type and what was done.",
		}, []string{"type", "result"}),
	}
	if cfg.Metrics != nil {
		// A second Server on the same registry (a restart in-process)
		// counts into the first one's series instead of panicking.
		if err := cfg.Metrics.Register(s.packets); err != nil {
			var are prometheus.AlreadyRegisteredError
			cv, ok := (*prometheus.CounterVec)(nil), false
			if errors.As(err, &are) {
				cv, ok = are.ExistingCollector.(*prometheus.CounterVec)
			}
			if !ok {
				return nil, fmt.Errorf("dhcp: registering metrics: %w", err)
			}
			s.packets = cv
		}
	}
	if cfg.Mode == Authoritative {
		if !cfg.Subnet.IsValid() || !cfg.Subnet.Addr().Is4() || !cfg.Subnet.Contains(cfg.RangeStart) || !cfg.Subnet.Contains(cfg.RangeEnd) {
			return nil, fmt.Errorf("dhcp: authoritative range %s-%s is not inside IPv4 subnet %s: fix dhcp.range or dhcp.subnet", cfg.RangeStart, cfg.RangeEnd, cfg.Subnet)
		}
		if cfg.RangeEnd.Less(cfg.RangeStart) {
			return nil, fmt.Errorf("dhcp: authoritative range %s-%s ends before it starts", cfg.RangeStart, cfg.RangeEnd)
		}
		if s.cfg.LeaseTime <= 0 {
			s.cfg.LeaseTime = time.Hour
		}
		res, err := checkReservations(cfg.Reservations, cfg.Subnet)
		if err != nil {
			return nil, err
		}
		p, err := newPool(cfg.RangeStart, cfg.RangeEnd, res, cfg.LeaseFile)
		if err != nil {
			return nil, err
		}
		s.pool = p
	}
	return s, nil
}

// checkReservations validates reservations against subnet and keys them
// by the MAC's canonical text, whatever spelling (upper case, dashes)
// the caller used.
func checkReservations(in map[string]netip.Addr, subnet netip.Prefix) (map[string]netip.Addr, error) {
	res := make(map[string]netip.Addr, len(in))
	owner := make(map[netip.Addr]string, len(in))
	for key, ip := range in {
		mac, err := net.ParseMAC(key)
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("dhcp: reservation %q: not an Ethernet MAC address", key)
		}
		if !subnet.Contains(ip) {
			return nil, fmt.Errorf("dhcp: reservation %s → %s is outside subnet %s", key, ip, subnet)
		}
		k := macKey(mac)
		if other, dup := res[k]; dup && other != ip {
			return nil, fmt.Errorf("dhcp: MAC %s is reserved twice (%s and %s)", key, other, ip)
		}
		if o, dup := owner[ip]; dup && o != k {
			return nil, fmt.Errorf("dhcp: address %s is reserved for both %s and %s", ip, o, k)
		}
		res[k], owner[ip] = ip, k
	}
	return res, nil
}

// SetReservations replaces the reservations of an authoritative server
// while it runs, as a config reload does. Leases that the new
// reservations take away are dropped, so their clients are refused at
// their next renewal and come back for their new address. On error
// nothing changes.
func (s *Server) SetReservations(res map[string]netip.Addr) error {
	if s.pool == nil {
		if len(res) > 0 {
			return errors.New("dhcp: address reservations need authoritative mode (dhcp.mode: authoritative)")
		}
		return nil
	}
	checked, err := checkReservations(res, s.cfg.Subnet)
	if err != nil {
		return err
	}
	// The switch is done even when the lease file cannot be written:
	// the next change writes it again, as after an ACK.
	if err := s.pool.setReservations(checked); err != nil {
		s.log.Error("saving leases failed", "err", err)
	}
	return nil
}

// Listen opens port 67 on each interface (bound to the device, so
// nothing is answered anywhere else) and port 4011 on the server
// address. On error no socket stays open.
func (s *Server) Listen() error {
	if err := s.listen(); err != nil {
		s.Close()
		s.conns = nil
		return err
	}
	return nil
}

func (s *Server) listen() error {
	s.ifaces = map[int]string{}
	for _, name := range s.cfg.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("dhcp: interface %q: %w (server.interfaces must name interfaces of this machine)", name, err)
		}
		s.ifaces[ifi.Index] = name
		conn, err := listenOnDevice(name, dhcpv4.ServerPort)
		if err != nil {
			return fmt.Errorf("dhcp: listen on %s port 67: %w", name, err)
		}
		s.conns = append(s.conns, listener{conn: conn, iface: name, port: dhcpv4.ServerPort})
	}
	// Firmware that ignores the boot options of an offer (several UEFI
	// ones do, with a proxy's offer above all) asks the boot server
	// again, unicast, on 4011 (PXE spec 2.1, "PXE boot server"). Open
	// in both modes: it costs nothing and the firmware decides.
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: s.cfg.ServerIP.AsSlice(), Port: 4011})
	if err != nil {
		return fmt.Errorf("dhcp: listen on %s port 4011: %w (is that address on this machine?)", s.cfg.ServerIP, err)
	}
	// The socket is bound to an address, not a device, so the kernel
	// says per packet which interface it came in on.
	pc := ipv4.NewPacketConn(conn)
	s.conns = append(s.conns, listener{conn: conn, iface: s.cfg.ServerIP.String(), port: 4011, pc: pc})
	if err := pc.SetControlMessage(ipv4.FlagInterface, true); err != nil {
		return fmt.Errorf("dhcp: port 4011: asking for the receiving interface: %w", err)
	}
	return nil
}

// read reads one packet and tells which configured interface it came
// in on; ok is false when it came in on another one.
func (s *Server) read(l listener, buf []byte) (n int, iface string, peer net.Addr, ok bool, err error) {
	if l.pc == nil {
		n, peer, err = l.conn.ReadFrom(buf)
		return n, l.iface, peer, true, err
	}
	n, cm, peer, err := l.pc.ReadFrom(buf)
	if err != nil || cm == nil {
		return n, "", peer, err == nil, err
	}
	iface, ok = s.ifaces[cm.IfIndex]
	if !ok {
		iface = fmt.Sprintf("ifindex %d", cm.IfIndex)
		if ifi, err := net.InterfaceByIndex(cm.IfIndex); err == nil {
			iface = ifi.Name
		}
	}
	return n, iface, peer, ok, nil
}

// Close closes the sockets.
func (s *Server) Close() {
	for _, l := range s.conns {
		l.conn.Close()
	}
}

// Serve answers until ctx is done, then closes the sockets. A socket
// that fails stops all of them, and Serve returns that error.
func (s *Server) Serve(ctx context.Context) error {
	if len(s.conns) == 0 {
		return errors.New("dhcp: Serve before Listen")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	var wg sync.WaitGroup
	if s.pool != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.pool.runFlusher(ctx, func(err error) { s.log.Error("DHCP leases not saved", "err", err) })
		}()
	}
	errc := make(chan error, len(s.conns))
	for _, l := range s.conns {
		wg.Add(1)
		go func(l listener) {
			defer wg.Done()
			if err := s.loop(ctx, l); err != nil {
				errc <- err
				cancel()
			}
		}(l)
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func (s *Server) loop(ctx context.Context, l listener) error {
	buf := make([]byte, 1500)
	for {
		n, iface, peer, ours, err := s.read(l, buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dhcp: read on %s port %d: %w", l.iface, l.port, err)
		}
		req, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			s.packets.WithLabelValues("malformed", "dropped").Inc()
			s.log.Debug("malformed DHCP packet", "from", peer, "err", err)
			continue
		}
		if !ours {
			// Port 67 answers only on the configured interfaces; 4011,
			// reachable through any interface that routes to the server
			// address, must not be a way around that.
			s.packets.WithLabelValues(strings.ToLower(req.MessageType().String()), "other-interface").Inc()
			s.log.Debug("DHCP request on an interface not in server.interfaces dropped", "interface", iface, "from", peer, "port", l.port)
			continue
		}
		if req.OpCode == dhcpv4.OpcodeBootRequest && !s.fromTrustedRelay(req, peer) {
			s.packets.WithLabelValues(strings.ToLower(req.MessageType().String()), "untrusted-relay").Inc()
			s.limited.Warn("untrusted-relay", "relayed DHCP request dropped: its sender is not in dhcp.relays",
				"from", peer, "giaddr", req.GatewayIPAddr.String(), "mac", req.ClientHWAddr.String())
			continue
		}
		resp, err := s.Handle(ctx, req, iface, l.port)
		if err != nil {
			s.log.Warn("DHCP request not answered", "req", describe(req), "err", err)
			continue
		}
		if resp == nil {
			continue
		}
		dst := s.destination(req, resp, peer, l.port)
		if _, err := l.conn.WriteTo(resp.ToBytes(), dst); err != nil {
			s.log.Warn("sending DHCP reply failed", "to", dst, "err", err)
		}
	}
}

// fromTrustedRelay tells whether req may be handled as far as relays
// go: a direct request (giaddr 0) may; a relayed one only when it was
// sent from an address in Config.Relays.
func (s *Server) fromTrustedRelay(req *dhcpv4.DHCPv4, peer net.Addr) bool {
	if !addrOf(req.GatewayIPAddr).IsValid() {
		return true
	}
	ua, ok := peer.(*net.UDPAddr)
	if !ok {
		return false
	}
	src, ok := netip.AddrFromSlice(ua.IP)
	if !ok {
		return false
	}
	src = src.Unmap()
	for _, p := range s.cfg.Relays {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// destination picks where a reply goes: to the relay that forwarded the
// request; back to the sender on 4011; to a client that has an address;
// else broadcast, since a client without an address cannot take unicast
// without an ARP entry that we cannot make from a UDP socket.
func (s *Server) destination(req, resp *dhcpv4.DHCPv4, peer net.Addr, port int) net.Addr {
	switch {
	case port == 4011:
		return peer
	case addrOf(req.GatewayIPAddr).IsValid():
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: dhcpv4.ServerPort}
	case resp.MessageType() == dhcpv4.MessageTypeNak:
		// RFC 2131 4.3.2: a NAK is broadcast, since the client's
		// address is the thing in doubt.
	case !req.ClientIPAddr.IsUnspecified() && req.ClientIPAddr != nil:
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}
