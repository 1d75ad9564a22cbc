package dhcp

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// lastOption returns the code of the last option before End in a
// packet's bytes (RFC 3046 2.1: option 82 must be last).
func lastOption(t *testing.T, b []byte) byte {
	t.Helper()
	i := 240 // fixed header and magic cookie
	last := byte(0)
	for i < len(b) {
		switch b[i] {
		case 0:
			i++
			continue
		case 255:
			return last
		}
		if i+1 >= len(b) {
			t.Fatal("truncated option")
		}
		last = b[i]
		i += 2 + int(b[i+1])
	}
	t.Fatal("no End option")
	return 0
}

// TestRelayAgentInfo: in both modes a relayed request's option 82
// reaches the Decider as circuit-id and remote-id, and every reply
// echoes it whole, as the last option. A direct request's option 82 is
// not believed.
func TestRelayAgentInfo(t *testing.T) {
	rai := dhcpv4.OptRelayAgentInfo(
		dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte("Eth1/0/7")),
		dhcpv4.OptGeneric(dhcpv4.AgentRemoteIDSubOption, []byte{0x00, 0x06, 0xaa, 0xbb}),
		dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(151), []byte("vendor-specific")), // unknown sub-options are echoed too
	)
	for _, mode := range []Mode{Proxy, Authoritative} {
		t.Run(mode.String(), func(t *testing.T) {
			s, d := newTestServer(t, testConfig(mode, ""))
			req := pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, "PXEClient:Arch:00000:UNDI:002001", []uint16{0}, "", false)
			req.GatewayIPAddr = net.ParseIP("10.80.0.2")
			req.UpdateOption(rai)
			resp, err := s.Handle(context.Background(), req, "br0", 67)
			if err != nil || resp == nil {
				t.Fatalf("no reply: %v", err)
			}
			got := d.asked[len(d.asked)-1]
			if got.CircuitID != "Eth1/0/7" || got.RemoteID != "0x0006aabb" || got.Relay.String() != "10.80.0.2" || got.VendorClass != "PXEClient:Arch:00000:UNDI:002001" {
				t.Fatalf("decider saw %+v", got)
			}
			want := req.Options.Get(dhcpv4.OptionRelayAgentInformation)
			if echoed := resp.Options.Get(dhcpv4.OptionRelayAgentInformation); !bytes.Equal(echoed, want) {
				t.Fatalf("option 82 echoed as %x, want %x", echoed, want)
			}
			if last := lastOption(t, resp.ToBytes()); last != 82 {
				t.Fatalf("last option is %d, want 82", last)
			}

			direct := pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, "PXEClient", []uint16{0}, "", false)
			direct.UpdateOption(rai)
			if _, err := s.Handle(context.Background(), direct, "br0", 67); err != nil {
				t.Fatal(err)
			}
			if got := d.asked[len(d.asked)-1]; got.CircuitID != "" || got.RemoteID != "" || got.Relay.IsValid() {
				t.Fatalf("a direct request's option 82 was believed: %+v", got)
			}
		})
	}
}

func TestRelayFieldBounds(t *testing.T) {
	if got := field(bytes.Repeat([]byte("a"), 300)); len(got) != maxRelayField {
		t.Errorf("field kept %d bytes", len(got))
	}
	if got := field(bytes.Repeat([]byte{0xff}, 300)); got != "0x"+strings.Repeat("ff", maxRelayField) {
		t.Errorf("binary field rendered %q", got)
	}
}
