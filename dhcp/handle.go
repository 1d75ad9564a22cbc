package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// pxeVendorOptions is option 43 for BIOS PXE ROMs: sub-option 6
// (PXE_DISCOVERY_CONTROL) = 8 tells the ROM to skip boot server
// discovery and take the boot file of this offer.
var pxeVendorOptions = []byte{6, 1, 8, 255}

// Handle computes the reply to one request that arrived on iface and
// port (67, or 4011 for PXE boot server requests); nil means silence.
func (s *Server) Handle(ctx context.Context, req *dhcpv4.DHCPv4, iface string, port int) (*dhcpv4.DHCPv4, error) {
	mt := req.MessageType()
	count := func(result string) { s.packets.WithLabelValues(strings.ToLower(mt.String()), result).Inc() }
	if req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
		count("not-a-request")
		return nil, nil
	}
	fw, pxe := detect(req)
	m := machineOf(req, fw, iface)
	return s.handle(ctx, req, m, pxe, port)
}

// handle is Handle for a request from machine m.
func (s *Server) handle(ctx context.Context, req *dhcpv4.DHCPv4, m Machine, pxe bool, port int) (*dhcpv4.DHCPv4, error) {
	mt := req.MessageType()
	count := func(result string) { s.packets.WithLabelValues(strings.ToLower(mt.String()), result).Inc() }
	fw, iface := m.Firmware, m.Interface
	if s.cfg.Mode == Proxy {
		s.observeProxy(ctx, req, iface)
	}
	if s.cfg.Mode == Proxy || port == 4011 {
		if !pxe {
			count("not-pxe")
			return nil, nil
		}
		// Ask the Decider only about packets that a proxy answers, so
		// that a REQUEST meant for the network's own DHCP server is not
		// counted as one more boot attempt.
		if !s.proxyAnswers(req, port) {
			count("not-ours")
			return nil, nil
		}
		if s.decider.Decide(ctx, m) != Boot {
			count("ignored")
			return nil, nil
		}
		resp, err := s.proxyReply(req, m)
		if s.noBootFile(err, m) {
			count("no-boot-file")
			return nil, nil
		}
		if err != nil {
			count("error")
			return nil, err
		}
		count("answered")
		s.log.Info("proxy DHCP: boot options sent", "mac", m.MAC.String(), "firmware", fw, "type", mt, "port", port, "file", resp.BootFileName)
		return resp, nil
	}
	// Authoritative: everybody gets a lease; boot options only for PXE
	// clients that the Decider lets boot, asked once the address is
	// known, so that a rule may place a machine by it.
	if mt == dhcpv4.MessageTypeDecline {
		count(s.decline(ctx, req, m))
		return nil, nil
	}
	boot := false
	decide := func(addr netip.Addr) bool {
		m.Addr = addr
		boot = pxe && s.decider.Decide(ctx, m) == Boot
		return boot
	}
	resp, err := s.authoritativeReply(ctx, req, m, decide)
	switch {
	case err != nil:
		count("error")
	case resp == nil:
		count("no-reply")
	default:
		count(strings.ToLower(resp.MessageType().String()))
		s.log.Info("DHCP", "mac", m.MAC.String(), "type", mt, "reply", resp.MessageType(), "ip", resp.YourIPAddr,
			"pxe", pxe, "boot", boot, "firmware", fw, "file", resp.BootFileName)
	}
	return resp, err
}

// proxyAnswers tells whether a proxy replies to this packet at all: on
// 67 a DISCOVER (the network's DHCP server gives the address) or a
// REQUEST/INFORM that names us as server; on 4011, where PXE firmware
// asks the boot server directly, a REQUEST or INFORM.
func (s *Server) proxyAnswers(req *dhcpv4.DHCPv4, port int) bool {
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		return port != 4011
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		if port == 4011 {
			return true
		}
		sid := req.ServerIdentifier()
		return sid != nil && sid.Equal(s.cfg.ServerIP.AsSlice())
	}
	return false
}

// proxyReply answers a PXE client without an address: a DISCOVER gets
// an OFFER, a REQUEST or INFORM an ACK. The caller checked proxyAnswers.
func (s *Server) proxyReply(req *dhcpv4.DHCPv4, m Machine) (*dhcpv4.DHCPv4, error) {
	mt := dhcpv4.MessageTypeAck
	if req.MessageType() == dhcpv4.MessageTypeDiscover {
		mt = dhcpv4.MessageTypeOffer
	}
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(net.IPv4zero),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice())),
	)
	if err != nil {
		return nil, err
	}
	if err := s.bootOptions(req, resp, m); err != nil {
		return nil, err
	}
	return resp, nil
}

// authoritativeReply leases addresses to every client and adds boot
// options for the network-booting ones that decide, given the address
// the client gets, lets boot.
func (s *Server) authoritativeReply(ctx context.Context, req *dhcpv4.DHCPv4, m Machine, decide func(netip.Addr) bool) (*dhcpv4.DHCPv4, error) {
	mac := macKey(m.MAC)
	if gw := addrOf(req.GatewayIPAddr); gw.IsValid() && !s.cfg.Subnet.Contains(gw) {
		// A relay forwarded this from another segment: we only lease our
		// subnet, so it must be that relay's.
		return nil, fmt.Errorf("relayed from %s, outside subnet %s", gw, s.cfg.Subnet)
	}
	sidOK := func() bool {
		sid := req.ServerIdentifier()
		return sid == nil || sid.Equal(s.cfg.ServerIP.AsSlice())
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		ip, ok := s.pool.offer(mac, addrOf(req.RequestedIPAddress()))
		if !ok {
			return nil, fmt.Errorf("no free address in %s-%s for %s", s.cfg.RangeStart, s.cfg.RangeEnd, mac)
		}
		return s.lease(req, m, dhcpv4.MessageTypeOffer, ip, decide(ip))
	case dhcpv4.MessageTypeRequest:
		if !sidOK() {
			return nil, nil // the client took another server's offer
		}
		want := addrOf(req.RequestedIPAddress())
		if !want.IsValid() {
			want = addrOf(req.ClientIPAddr)
		}
		ok, err := s.pool.ack(mac, want, s.cfg.LeaseTime)
		if err != nil {
			s.log.Error("saving leases failed", "err", err)
		}
		if !ok {
			return dhcpv4.NewReplyFromRequest(req,
				dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice())),
				dhcpv4.WithOption(dhcpv4.OptMessage(fmt.Sprintf("address %s is not yours", want))),
			)
		}
		// Decided before the binding is reported: a machine that a rule
		// places by its address is one the Binder keeps bindings of.
		boot := decide(want)
		if s.cfg.Binder != nil {
			s.cfg.Binder.Bound(ctx, s.binding(req, m.Interface, want, s.cfg.LeaseTime))
		}
		return s.lease(req, m, dhcpv4.MessageTypeAck, want, boot)
	case dhcpv4.MessageTypeRelease:
		if sidOK() {
			s.released(ctx, req, addrOf(req.ClientIPAddr))
			return nil, s.pool.release(mac, addrOf(req.ClientIPAddr))
		}
		return nil, nil
	case dhcpv4.MessageTypeInform:
		resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
		if err != nil {
			return nil, err
		}
		s.networkOptions(resp)
		// ciaddr is the client's word: it counts only as the address of
		// a lease of ours.
		var held netip.Addr
		if l, ok := s.pool.lookup(mac); ok && l.IP == addrOf(req.ClientIPAddr) {
			held = l.IP
		}
		if decide(held) {
			if err := s.bootOptions(req, resp, m); err != nil {
				return nil, err
			}
		}
		return resp, nil
	}
	return nil, nil
}

// decline handles a client's DECLINE (it found its address in use) and
// returns the result to count: "declined" when the address leaves the
// pool for a while, "decline-ignored" when the DECLINE does not come
// from the address's holder (see pool.decline). Ignored ones are logged
// at most once a minute: a flood of them must not flood the log.
func (s *Server) decline(ctx context.Context, req *dhcpv4.DHCPv4, m Machine) string {
	mac := macKey(m.MAC)
	ip := addrOf(req.RequestedIPAddress())
	if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(s.cfg.ServerIP.AsSlice()) {
		return "not-ours"
	}
	ok, err := s.pool.decline(mac, ip)
	if err != nil {
		s.log.Error("saving leases failed", "err", err)
	}
	if !ok {
		s.limited.Warn("decline-ignored", "DHCP DECLINE ignored: the address is not one this MAC was offered or holds", "mac", mac, "ip", ip)
		return "decline-ignored"
	}
	s.log.Warn("client declined an address: something else uses it; it rests out of the pool", "mac", mac, "ip", ip, "for", declineHold)
	s.released(ctx, req, ip)
	return "declined"
}

// released tells the Binder that a lease of this server ended early.
func (s *Server) released(ctx context.Context, req *dhcpv4.DHCPv4, ip netip.Addr) {
	if s.cfg.Binder != nil && ip.IsValid() {
		s.cfg.Binder.Released(ctx, s.binding(req, "", ip, 0))
	}
}

// errNoBootFile is bootOptions' answer for firmware that no iPXE binary
// is configured for.
var errNoBootFile = errors.New("no iPXE binary configured for this firmware")

// noBootFile reports whether err is errNoBootFile, and logs that once
// per kind of firmware: such machines ask again every few seconds, and
// the reason does not change until the config does.
func (s *Server) noBootFile(err error, m Machine) bool {
	if !errors.Is(err, errNoBootFile) {
		return false
	}
	kind := m.Firmware.String()
	s.mu.Lock()
	first := !s.warned[kind]
	s.warned[kind] = true
	s.mu.Unlock()
	if first {
		s.log.Warn("no iPXE binary for this firmware: machines with it get no boot options (set dhcp.efi_x64_boot or dhcp.arm64_boot); logged once",
			"firmware", kind, "mac", m.MAC.String())
	}
	return true
}

// macKey is how leases and reservations name a MAC: net's canonical
// lower-case, colon-separated text.
func macKey(mac net.HardwareAddr) string { return mac.String() }

func addrOf(ip net.IP) netip.Addr {
	if ip == nil || ip.IsUnspecified() {
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

func (s *Server) lease(req *dhcpv4.DHCPv4, m Machine, mt dhcpv4.MessageType, ip netip.Addr, boot bool) (*dhcpv4.DHCPv4, error) {
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(ip.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(s.cfg.LeaseTime)),
	)
	if err != nil {
		return nil, err
	}
	s.networkOptions(resp)
	if boot {
		// Still lease the address when there are no boot options: the
		// machine may boot from disk.
		if err := s.bootOptions(req, resp, m); err != nil && !s.noBootFile(err, m) {
			s.log.Warn("no boot options for this machine", "mac", m.MAC.String(), "err", err)
		}
	}
	return resp, nil
}

func (s *Server) networkOptions(resp *dhcpv4.DHCPv4) {
	resp.UpdateOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice()))
	resp.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(s.cfg.Subnet.Bits(), 32)))
	if s.cfg.Router.IsValid() {
		resp.UpdateOption(dhcpv4.OptRouter(s.cfg.Router.AsSlice()))
	}
	if len(s.cfg.DNS) > 0 {
		var ips []net.IP
		for _, a := range s.cfg.DNS {
			ips = append(ips, a.AsSlice())
		}
		resp.UpdateOption(dhcpv4.OptDNS(ips...))
	}
	if s.cfg.Domain != "" {
		resp.UpdateOption(dhcpv4.OptDomainName(s.cfg.Domain))
	}
}

// bootOptions adds what the client's firmware needs to load its next
// stage: iPXE (over TFTP, or over HTTP for HTTP Boot), or, when iPXE is
// already running, its script URL.
func (s *Server) bootOptions(req, resp *dhcpv4.DHCPv4, m Machine) error {
	fw := m.Firmware
	var file string
	switch {
	case fw.IPXE:
		// iPXE asks again after it starts; handing it the iPXE binary
		// once more would chainload it forever.
		file = s.cfg.ScriptURL(m.MAC)
	case fw.HTTPBoot:
		if s.cfg.HTTPBootURL != nil {
			file = s.cfg.HTTPBootURL(m)
		}
	default:
		file = s.cfg.BootFiles[fw.Arch]
	}
	if file == "" {
		// A boot file that does not exist would only make the firmware
		// fail later, after a TFTP or HTTP round trip.
		return errNoBootFile
	}
	resp.ServerIPAddr = s.cfg.ServerIP.AsSlice()
	resp.BootFileName = file
	resp.UpdateOption(dhcpv4.OptBootFileName(file))
	// UEFI's own PXE client (EDK2) takes an authoritative offer without
	// "PXEClient" as a plain DHCP offer with a boot file and fetches it
	// at once; with "PXEClient" and no PXE vendor options it first asks
	// again on port 4011 (a BINL offer), which cost OVMF 1.1 s before
	// its TFTP request (docs/BENCHMARKS.md, chain timings).
	if fw.HTTPBoot {
		// UEFI HTTP Boot accepts only offers that echo its vendor class.
		resp.UpdateOption(dhcpv4.OptClassIdentifier("HTTPClient"))
	} else if s.cfg.Mode == Proxy || fw.IPXE || fw.Arch == ArchBIOS {
		// PXE ROMs take boot options only from offers that carry
		// "PXEClient" in option 60. So does iPXE, which then skips
		// its wait for ProxyDHCP offers (up to 2 s, which dnsmasq's
		// plain offers cost it).
		resp.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
	}
	if !fw.IPXE && !fw.HTTPBoot {
		resp.UpdateOption(dhcpv4.OptTFTPServerName(s.cfg.ServerIP.String()))
	}
	// Option 43 sub-option 6 only for BIOS ROMs: several UEFI firmwares
	// treat a proxy offer with PXE vendor options as a boot-server
	// discovery answer and ignore it, then ask on 4011, which we answer.
	if fw.Arch == ArchBIOS && !fw.IPXE && !fw.HTTPBoot {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, pxeVendorOptions))
	}
	// Option 97 (the client's UUID): PXE ROMs may drop an answer that
	// does not echo it. Real ROMs sometimes omit it; then so do we.
	if guid := req.Options.Get(dhcpv4.OptionClientMachineIdentifier); len(guid) > 0 {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, guid))
	}
	return nil
}
