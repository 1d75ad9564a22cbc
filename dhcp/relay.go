package dhcp

import (
	"encoding/hex"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// maxRelayField bounds what one option 82 sub-option or option 60 may
// make the server keep (and what a rule compares): the bytes come from
// the network.
const maxRelayField = 64

// Option 82 in replies: RFC 3046 2.2 asks a server that understands it
// to echo it whole in every reply (a relay that added it may drop a
// reply without it, and finds the port to answer on by it), as the last
// option (2.1). dhcpv4.NewReplyFromRequest, which builds every reply
// here, copies it, and the library writes it last; TestRelayAgentInfo
// holds both modes to that.

// machineOf is what a request tells of its machine and where it came
// from.
func machineOf(req *dhcpv4.DHCPv4, fw Firmware, iface string) Machine {
	m := Machine{MAC: req.ClientHWAddr, Firmware: fw, Interface: iface, VendorClass: field([]byte(req.ClassIdentifier()))}
	if m.Relay = addrOf(req.GatewayIPAddr); m.Relay.IsValid() {
		if rai := req.RelayAgentInfo(); rai != nil {
			m.CircuitID = field(rai.Get(dhcpv4.AgentCircuitIDSubOption))
			m.RemoteID = field(rai.Get(dhcpv4.AgentRemoteIDSubOption))
		}
	}
	return m
}

// field renders b as text when it is printable ASCII, else as "0x" and
// hex (switches send both kinds of circuit-ids), cut to maxRelayField
// bytes first.
func field(b []byte) string {
	if len(b) > maxRelayField {
		b = b[:maxRelayField]
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return "0x" + hex.EncodeToString(b)
		}
	}
	return string(b)
}
