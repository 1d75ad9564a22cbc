package dhcp

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Binding is an address that DHCP saw a machine hold. PXE has no client
// authentication, so this is the one thing that ties a network request
// to a machine: the boot side answers a machine's secrets only to its
// bindings. Authoritative mode binds the leases it gives; proxy mode
// binds the address a client asks another server for (option 50, or
// ciaddr), which it sees because REQUESTs are broadcast.
type Binding struct {
	MAC       net.HardwareAddr
	Addr      netip.Addr
	Interface string     // where the request came in
	Relay     netip.Addr // giaddr of a relayed request; zero when direct
	Expires   time.Time
}

// Binder is told of every binding that starts or ends. It must return
// quickly: DHCP waits for it.
type Binder interface {
	Bound(ctx context.Context, b Binding)
	Released(ctx context.Context, b Binding)
}

// defaultProxyBindingTime is how long a proxy binding lives: a proxy
// never sees the lease time that the other server gave.
const defaultProxyBindingTime = 2 * time.Hour

// bindable reports whether a client may be bound to a: a unicast IPv4
// address that is not ours. An address a client names is the client's
// word only; loopback or our own address would let the binding stand
// for the server itself.
func (s *Server) bindable(a netip.Addr) bool {
	return a.IsValid() && a.Is4() && a.IsGlobalUnicast() && !a.IsLinkLocalUnicast() &&
		a != s.cfg.ServerIP && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func (s *Server) binding(req *dhcpv4.DHCPv4, iface string, a netip.Addr, d time.Duration) Binding {
	b := Binding{MAC: req.ClientHWAddr, Addr: a, Interface: iface, Expires: time.Now().Add(d)}
	if gw := addrOf(req.GatewayIPAddr); gw.IsValid() {
		b.Relay = gw
	}
	return b
}

// observeProxy tells the Binder which address a client takes from the
// network's own DHCP server: a REQUEST names it in option 50 (selecting
// an offer, or rebooting) or in ciaddr (rebinding; iPXE's request on
// 4011). Every client counts, PXE or not: the installer's own DHCP
// client, after iPXE, may get another address.
func (s *Server) observeProxy(ctx context.Context, req *dhcpv4.DHCPv4, iface string) {
	if s.cfg.Binder == nil {
		return
	}
	var a netip.Addr
	switch req.MessageType() {
	case dhcpv4.MessageTypeRequest:
		a = addrOf(req.RequestedIPAddress())
		if !a.IsValid() {
			a = addrOf(req.ClientIPAddr)
		}
	case dhcpv4.MessageTypeInform:
		a = addrOf(req.ClientIPAddr)
	case dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		// A RELEASE goes unicast to the other server and is rarely
		// seen; a DECLINE says the client does not use the address.
		a = addrOf(req.RequestedIPAddress())
		if !a.IsValid() {
			a = addrOf(req.ClientIPAddr)
		}
		if a.IsValid() {
			s.cfg.Binder.Released(ctx, s.binding(req, "", a, 0))
		}
		return
	default:
		return
	}
	if !s.bindable(a) {
		return
	}
	d := s.cfg.ProxyBindingTime
	if d <= 0 {
		d = defaultProxyBindingTime
	}
	s.cfg.Binder.Bound(ctx, s.binding(req, iface, a, d))
}
