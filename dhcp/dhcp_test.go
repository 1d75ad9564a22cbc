package dhcp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// allowList is a Decider that boots the MACs it holds and records who
// asked.
type allowList struct {
	mu    sync.Mutex
	boot  map[string]bool
	asked []Machine
}

func (a *allowList) Decide(ctx context.Context, m Machine) Decision {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asked = append(a.asked, m)
	if a.boot[m.MAC.String()] {
		return Boot
	}
	return Ignore
}

const (
	knownMAC   = "52:54:00:12:34:01"
	unknownMAC = "52:54:00:12:34:99"
)

func testConfig(mode Mode, leaseFile string) Config {
	return Config{
		Interfaces: []string{"br0"},
		Mode:       mode,
		ServerIP:   netip.MustParseAddr("10.80.0.1"),
		ScriptURL: func(mac net.HardwareAddr) string {
			return "http://10.80.0.1:8080/boot/" + strings.ReplaceAll(mac.String(), ":", "-") + ".ipxe"
		},
		HTTPBootURL: func(m Machine) string { return "http://10.80.0.1:8080/ipxe/ipxe.efi" },
		BootFiles:   map[Arch]string{ArchBIOS: "undionly.kpxe", ArchEFIx64: "ipxe.efi", ArchEFIarm64: "arm64/ipxe.efi"},
		Subnet:      netip.MustParsePrefix("10.80.0.0/24"),
		RangeStart:  netip.MustParseAddr("10.80.0.100"),
		RangeEnd:    netip.MustParseAddr("10.80.0.110"),
		Router:      netip.MustParseAddr("10.80.0.1"),
		DNS:         []netip.Addr{netip.MustParseAddr("10.80.0.1")},
		Domain:      "lab",
		LeaseTime:   time.Hour,
		Reservations: map[string]netip.Addr{
			"52:54:00:12:34:05": netip.MustParseAddr("10.80.0.50"),
		},
		LeaseFile: leaseFile,
	}
}

func newTestServer(t *testing.T, cfg Config) (*Server, *allowList) {
	t.Helper()
	d := &allowList{boot: map[string]bool{knownMAC: true, "52:54:00:12:34:05": true}}
	s, err := New(cfg, d, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, d
}

// pxeRequest crafts what firmware sends: a DISCOVER (or another type)
// with the given option 93 codes, vendor class and user class.
func pxeRequest(t *testing.T, mt dhcpv4.MessageType, mac string, vendor string, archs []uint16, userClass string, guid bool) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(mt), dhcpv4.WithHwAddr(hw)}
	if vendor != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendor)))
	}
	if len(archs) > 0 {
		var raw []byte
		for _, a := range archs {
			raw = append(raw, byte(a>>8), byte(a))
		}
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, raw))
	}
	if userClass != "" {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte(userClass)))
	}
	if guid {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat([]byte{0xab}, 16)...)))
	}
	req, err := dhcpv4.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestFirmwareBootOptions(t *testing.T) {
	tests := []struct {
		name      string
		vendor    string
		archs     []uint16
		userClass string
		guid      bool
		file      string
		class     string
		opt43     bool
	}{
		{"BIOS", "PXEClient:Arch:00000:UNDI:002001", []uint16{0}, "", true, "undionly.kpxe", "PXEClient", true},
		{"BIOS without option 93 or 97", "PXEClient:Arch:00000:UNDI:002001", nil, "", false, "undionly.kpxe", "PXEClient", true},
		{"UEFI x64 (7)", "PXEClient:Arch:00007:UNDI:003016", []uint16{7}, "", true, "ipxe.efi", "PXEClient", false},
		{"UEFI x64 (9)", "PXEClient:Arch:00009:UNDI:003016", []uint16{9}, "", false, "ipxe.efi", "PXEClient", false},
		{"UEFI x64 arch only in option 60", "PXEClient:Arch:00007:UNDI:003016", []uint16{0}, "", false, "ipxe.efi", "PXEClient", false},
		{"UEFI x64 listed second", "PXEClient", []uint16{0xff, 7}, "", false, "ipxe.efi", "PXEClient", false},
		{"UEFI arm64", "PXEClient:Arch:00011:UNDI:003000", []uint16{11}, "", false, "arm64/ipxe.efi", "PXEClient", false},
		{"HTTP Boot x64", "HTTPClient:Arch:00016:UNDI:003000", []uint16{16}, "", false, "http://10.80.0.1:8080/ipxe/ipxe.efi", "HTTPClient", false},
		{"iPXE on BIOS", "PXEClient:Arch:00000:UNDI:002001", []uint16{0}, "iPXE", false, "http://10.80.0.1:8080/boot/52-54-00-12-34-01.ipxe", "PXEClient", false},
		{"iPXE on UEFI (RFC 3004 form)", "PXEClient:Arch:00007:UNDI:003010", []uint16{7}, "\x04iPXE", false, "http://10.80.0.1:8080/boot/52-54-00-12-34-01.ipxe", "PXEClient", false},
	}
	for _, mode := range []Mode{Proxy, Authoritative} {
		for _, tt := range tests {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				s, _ := newTestServer(t, testConfig(mode, filepath.Join(t.TempDir(), "leases.json")))
				req := pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, tt.vendor, tt.archs, tt.userClass, tt.guid)
				resp, err := s.Handle(context.Background(), req, "br0", 67)
				if err != nil || resp == nil {
					t.Fatalf("no reply: %v", err)
				}
				if resp.MessageType() != dhcpv4.MessageTypeOffer || resp.TransactionID != req.TransactionID {
					t.Fatalf("reply %s xid %s", resp.MessageType(), resp.TransactionID)
				}
				if resp.BootFileName != tt.file || string(resp.Options.Get(dhcpv4.OptionBootfileName)) != tt.file {
					t.Errorf("boot file %q / option 67 %q, want %q", resp.BootFileName, resp.Options.Get(dhcpv4.OptionBootfileName), tt.file)
				}
				// UEFI's own PXE client gets a plain authoritative offer
				// (no "PXEClient"), which it takes without asking again
				// on 4011.
				wantClass := tt.class
				if mode == Authoritative && tt.class == "PXEClient" && !tt.opt43 && tt.userClass == "" {
					wantClass = ""
				}
				if got := string(resp.Options.Get(dhcpv4.OptionClassIdentifier)); got != wantClass {
					t.Errorf("option 60 %q, want %q", got, wantClass)
				}
				if !resp.ServerIPAddr.Equal(net.ParseIP("10.80.0.1")) || !resp.ServerIdentifier().Equal(net.ParseIP("10.80.0.1")) {
					t.Errorf("siaddr %s, option 54 %s", resp.ServerIPAddr, resp.ServerIdentifier())
				}
				if got := resp.Options.Get(dhcpv4.OptionVendorSpecificInformation); tt.opt43 != (got != nil) || (tt.opt43 && !bytes.Equal(got, pxeVendorOptions)) {
					t.Errorf("option 43 %x, want present=%v", got, tt.opt43)
				}
				if got, want := resp.Options.Get(dhcpv4.OptionClientMachineIdentifier), req.Options.Get(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(got, want) {
					t.Errorf("option 97 %x, want echo of %x", got, want)
				}
				if mode == Proxy && !resp.YourIPAddr.IsUnspecified() {
					t.Errorf("proxy offer carries address %s", resp.YourIPAddr)
				}
				if mode == Authoritative && !resp.YourIPAddr.Equal(net.ParseIP("10.80.0.100")) {
					t.Errorf("authoritative offer address %s", resp.YourIPAddr)
				}
			})
		}
	}
}

func TestSilence(t *testing.T) {
	tests := []struct {
		name string
		mode Mode
		req  func(t *testing.T) *dhcpv4.DHCPv4
		port int
	}{
		{"proxy ignores non-PXE", Proxy, func(t *testing.T) *dhcpv4.DHCPv4 {
			return pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, "", nil, "", false)
		}, 67},
		{"proxy ignores unknown machines", Proxy, func(t *testing.T) *dhcpv4.DHCPv4 {
			return pxeRequest(t, dhcpv4.MessageTypeDiscover, unknownMAC, "PXEClient", []uint16{0}, "", false)
		}, 67},
		{"proxy leaves other servers' REQUESTs alone", Proxy, func(t *testing.T) *dhcpv4.DHCPv4 {
			r := pxeRequest(t, dhcpv4.MessageTypeRequest, knownMAC, "PXEClient", []uint16{0}, "", false)
			r.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.254")))
			return r
		}, 67},
		{"reply packets are not requests", Proxy, func(t *testing.T) *dhcpv4.DHCPv4 {
			r := pxeRequest(t, dhcpv4.MessageTypeOffer, knownMAC, "PXEClient", []uint16{0}, "", false)
			r.OpCode = dhcpv4.OpcodeBootReply
			return r
		}, 67},
		{"arch without iPXE binary", Proxy, func(t *testing.T) *dhcpv4.DHCPv4 {
			return pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, "PXEClient:Arch:00006", []uint16{6}, "", false)
		}, 67},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestServer(t, testConfig(tt.mode, ""))
			resp, _ := s.Handle(context.Background(), tt.req(t), "br0", tt.port)
			if resp != nil {
				t.Fatalf("answered: %s", resp.Summary())
			}
		})
	}
}

// TestNoBootFile: firmware that no iPXE binary is configured for gets no
// boot options (no offer at all from a proxy), and the reason is logged
// once per kind of firmware, not on every retry.
func TestNoBootFile(t *testing.T) {
	tests := []struct {
		name   string
		vendor string
		archs  []uint16
	}{
		{"UEFI ia32", "PXEClient:Arch:00006:UNDI:003000", []uint16{6}},
		{"HTTP Boot arm64 without an arm64 binary", "HTTPClient:Arch:00019:UNDI:003000", []uint16{19}},
	}
	for _, mode := range []Mode{Proxy, Authoritative} {
		for _, tt := range tests {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				cfg := testConfig(mode, "")
				cfg.HTTPBootURL = func(m Machine) string {
					if m.Firmware.Arch == ArchEFIarm64 {
						return ""
					}
					return "http://10.80.0.1:8080/ipxe/ipxe.efi"
				}
				// Handle logs on the test's goroutine: a plain buffer will do.
				var logs bytes.Buffer
				s, err := New(cfg, &allowList{boot: map[string]bool{knownMAC: true}}, slog.New(slog.NewTextHandler(&logs, nil)))
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < 3; i++ {
					req := pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, tt.vendor, tt.archs, "", false)
					resp, err := s.Handle(context.Background(), req, "br0", 67)
					if err != nil {
						t.Fatalf("Handle: %v", err)
					}
					switch {
					case mode == Proxy && resp != nil:
						t.Fatalf("proxy answered: %s", resp.Summary())
					case mode == Authoritative && (resp == nil || resp.BootFileName != "" || resp.Options.Get(dhcpv4.OptionBootfileName) != nil):
						t.Fatalf("authoritative reply, want a lease without a boot file: %v", resp)
					}
				}
				if n := strings.Count(logs.String(), "no iPXE binary for this firmware"); n != 1 {
					t.Fatalf("reason logged %d times, want once:\n%s", n, logs.String())
				}
			})
		}
	}
}

// TestSetReservations walks a config reload that moves reservations:
// the moved client is refused its old address at renewal and offered
// the new one, and a client whose dynamic address is now reserved for
// another machine loses it.
func TestSetReservations(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "leases.json")
	s, _ := newTestServer(t, testConfig(Authoritative, file))
	reserved, dynamic, newcomer := "52:54:00:12:34:05", "52:54:00:00:00:0a", "52:54:00:00:00:0b"
	lease := func(mac string) net.IP {
		t.Helper()
		offer, err := s.Handle(ctx, pxeRequest(t, dhcpv4.MessageTypeDiscover, mac, "", nil, "", false), "br0", 67)
		if err != nil || offer == nil {
			t.Fatalf("%s: no offer: %v", mac, err)
		}
		req := pxeRequest(t, dhcpv4.MessageTypeRequest, mac, "", nil, "", false)
		req.UpdateOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))
		req.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.1")))
		ack, err := s.Handle(ctx, req, "br0", 67)
		if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("%s: no ACK: %v %v", mac, err, ack)
		}
		return ack.YourIPAddr
	}
	renew := func(mac, ip string) dhcpv4.MessageType {
		t.Helper()
		req := pxeRequest(t, dhcpv4.MessageTypeRequest, mac, "", nil, "", false)
		req.ClientIPAddr = net.ParseIP(ip)
		resp, err := s.Handle(ctx, req, "br0", 67)
		if err != nil || resp == nil {
			t.Fatalf("%s: no answer to a renewal: %v", mac, err)
		}
		return resp.MessageType()
	}
	if ip := lease(reserved); !ip.Equal(net.ParseIP("10.80.0.50")) {
		t.Fatalf("reserved MAC got %s", ip)
	}
	if ip := lease(dynamic); !ip.Equal(net.ParseIP("10.80.0.100")) {
		t.Fatalf("dynamic client got %s", ip)
	}

	if err := s.SetReservations(map[string]netip.Addr{"52:54:00:12:34:06": netip.MustParseAddr("10.99.0.1")}); err == nil || !strings.Contains(err.Error(), "outside subnet") {
		t.Fatalf("reservation outside the subnet: err = %v", err)
	}
	if mt := renew(reserved, "10.80.0.50"); mt != dhcpv4.MessageTypeAck {
		t.Fatalf("a refused SetReservations changed the reservations: renewal got %s", mt)
	}

	if err := s.SetReservations(map[string]netip.Addr{
		"52-54-00-12-34-05": netip.MustParseAddr("10.80.0.60"),
		newcomer:            netip.MustParseAddr("10.80.0.100"),
	}); err != nil {
		t.Fatal(err)
	}
	if mt := renew(reserved, "10.80.0.50"); mt != dhcpv4.MessageTypeNak {
		t.Fatalf("renewal of the old reservation got %s, want NAK", mt)
	}
	if ip := lease(reserved); !ip.Equal(net.ParseIP("10.80.0.60")) {
		t.Fatalf("moved reservation: got %s, want 10.80.0.60", ip)
	}
	if mt := renew(dynamic, "10.80.0.100"); mt != dhcpv4.MessageTypeNak {
		t.Fatalf("renewal of an address now reserved for another MAC got %s, want NAK", mt)
	}
	if ip := lease(newcomer); !ip.Equal(net.ParseIP("10.80.0.100")) {
		t.Fatalf("new reservation: got %s", ip)
	}
	if ip := lease(dynamic); ip.Equal(net.ParseIP("10.80.0.100")) {
		t.Fatalf("dynamic client offered an address reserved for another")
	}
	if got := readLeaseFile(t, file); got[reserved] != "10.80.0.60" || got[newcomer] != "10.80.0.100" || got[dynamic] == "10.80.0.100" {
		t.Fatalf("lease file after the change: %v", got)
	}

	proxy, _ := newTestServer(t, testConfig(Proxy, ""))
	if err := proxy.SetReservations(map[string]netip.Addr{reserved: netip.MustParseAddr("10.80.0.60")}); err == nil || !strings.Contains(err.Error(), "authoritative") {
		t.Fatalf("proxy took reservations: %v", err)
	}
	if err := proxy.SetReservations(nil); err != nil {
		t.Fatalf("proxy refused an empty set: %v", err)
	}
}

func TestProxy4011(t *testing.T) {
	s, _ := newTestServer(t, testConfig(Proxy, ""))
	req := pxeRequest(t, dhcpv4.MessageTypeRequest, knownMAC, "PXEClient:Arch:00007:UNDI:003016", []uint16{7}, "", true)
	req.ClientIPAddr = net.ParseIP("10.80.0.77")
	resp, err := s.Handle(context.Background(), req, "br0", 4011)
	if err != nil || resp == nil {
		t.Fatalf("no ACK on 4011: %v", err)
	}
	if resp.MessageType() != dhcpv4.MessageTypeAck || resp.BootFileName != "ipxe.efi" {
		t.Fatalf("got %s", resp.Summary())
	}
	dst := s.destination(req, resp, &net.UDPAddr{IP: net.ParseIP("10.80.0.77"), Port: 4011}, 4011)
	if dst.String() != "10.80.0.77:4011" {
		t.Fatalf("4011 reply goes to %s", dst)
	}
}

func TestAuthoritativeLeases(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "leases.json")
	s, _ := newTestServer(t, testConfig(Authoritative, file))
	exchange := func(mac string, vendor string) *dhcpv4.DHCPv4 {
		offer, err := s.Handle(ctx, pxeRequest(t, dhcpv4.MessageTypeDiscover, mac, vendor, nil, "", false), "br0", 67)
		if err != nil || offer == nil {
			t.Fatalf("%s: no offer: %v", mac, err)
		}
		req := pxeRequest(t, dhcpv4.MessageTypeRequest, mac, vendor, nil, "", false)
		req.UpdateOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))
		req.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.1")))
		ack, err := s.Handle(ctx, req, "br0", 67)
		if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("%s: no ack: %v %v", mac, err, ack)
		}
		return ack
	}
	a := exchange("52:54:00:00:00:0a", "")
	if !a.YourIPAddr.Equal(net.ParseIP("10.80.0.100")) || a.BootFileName != "" || a.Options.Get(dhcpv4.OptionClassIdentifier) != nil {
		t.Fatalf("non-PXE lease: %s", a.Summary())
	}
	if lt := a.IPAddressLeaseTime(0); lt != time.Hour || !a.Router()[0].Equal(net.ParseIP("10.80.0.1")) || a.DomainName() != "lab" {
		t.Fatalf("lease options: %s", a.Summary())
	}
	if r := exchange("52:54:00:12:34:05", "PXEClient"); !r.YourIPAddr.Equal(net.ParseIP("10.80.0.50")) || r.BootFileName != "undionly.kpxe" {
		t.Fatalf("reservation: %s", r.Summary())
	}
	// Someone else asking for a's address is refused.
	req := pxeRequest(t, dhcpv4.MessageTypeRequest, "52:54:00:00:00:0b", "", nil, "", false)
	req.UpdateOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.80.0.100")))
	if nak, _ := s.Handle(ctx, req, "br0", 67); nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("stolen address not NAKed: %v", nak)
	}
	// A DECLINE takes the address out of the pool.
	dec := pxeRequest(t, dhcpv4.MessageTypeDecline, "52:54:00:00:00:0a", "", nil, "", false)
	dec.UpdateOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.80.0.100")))
	s.Handle(ctx, dec, "br0", 67)
	if b := exchange("52:54:00:00:00:0c", ""); b.YourIPAddr.Equal(net.ParseIP("10.80.0.100")) {
		t.Fatal("declined address handed out again")
	}
	// Relayed requests go back to the relay; foreign relays are refused.
	rel := pxeRequest(t, dhcpv4.MessageTypeDiscover, "52:54:00:00:00:0d", "", nil, "", false)
	rel.GatewayIPAddr = net.ParseIP("10.80.0.2")
	offer, err := s.Handle(ctx, rel, "br0", 67)
	if err != nil || offer == nil {
		t.Fatalf("relayed: %v", err)
	}
	if dst := s.destination(rel, offer, nil, 67); dst.String() != "10.80.0.2:67" {
		t.Fatalf("relayed reply to %s", dst)
	}
	rel.GatewayIPAddr = net.ParseIP("192.0.2.1")
	if r, err := s.Handle(ctx, rel, "br0", 67); r != nil || err == nil {
		t.Fatal("answered a relay outside the subnet")
	}
	// Leases survive a restart; RELEASE frees them.
	s2, _ := newTestServer(t, testConfig(Authoritative, file))
	if l, ok := s2.pool.lookup("52:54:00:00:00:0c"); !ok || !l.IP.IsValid() {
		t.Fatal("lease lost across restart")
	}
	relq := pxeRequest(t, dhcpv4.MessageTypeRelease, "52:54:00:00:00:0c", "", nil, "", false)
	l, _ := s2.pool.lookup("52:54:00:00:00:0c")
	relq.ClientIPAddr = l.IP.AsSlice()
	s2.Handle(ctx, relq, "br0", 67)
	if _, ok := s2.pool.lookup("52:54:00:00:00:0c"); ok {
		t.Fatal("RELEASE did not free the lease")
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o600 {
		t.Fatalf("lease file mode %o", st.Mode().Perm())
	}
}

// startInLab runs the server inside the lab's server namespace, bound
// to its bridge; stop ends it (also run at cleanup) and reports Serve's
// error.
func startInLab(t *testing.T, lab *netlab.Lab, cfg Config) (*Server, *allowList, func()) {
	t.Helper()
	s, d := newTestServer(t, cfg)
	if err := netlab.Do(lab.Server, s.Listen); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, d, stop
}

// udhcpcScript dumps udhcpc's environment for the bound event.
const udhcpcScript = `#!/bin/sh
[ "$1" = bound ] || exit 0
env | grep -E '^(ip|siaddr|boot_file|serverid|subnet|router|lease|domain|opt60)=' | sort > "$OUT"
`

func writeScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// runUdhcpc gets one lease with busybox udhcpc in ns and returns what
// its script saw.
func runUdhcpc(t *testing.T, lab *netlab.Lab, ns *netlab.NS, extra ...string) map[string]string {
	t.Helper()
	script := writeScript(t, udhcpcScript)
	out := filepath.Join(t.TempDir(), "env")
	args := append([]string{"-q", "-n", "-f", "-i", "eth0", "-t", "5", "-T", "2", "-s", script}, extra...)
	cmd := lab.Command(ns, "udhcpc", args...)
	cmd.Env = append(os.Environ(), "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(l, "=")
		env[k] = v
	}
	return env
}

func readLeaseFile(t *testing.T, file string) map[string]string {
	t.Helper()
	var leases []Lease
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &leases); err != nil {
		t.Fatalf("lease file: %v\n%s", err, b)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("lease file mode: %v %v", st.Mode(), err)
	}
	got := map[string]string{}
	for _, l := range leases {
		got[l.MAC] = l.IP.String()
	}
	return got
}

func TestRealClientsAuthoritative(t *testing.T) {
	netlab.Require(t, "udhcpc", "dhclient")
	lab := netlab.New(t, "10.80.0.0/24")
	file := filepath.Join(t.TempDir(), "leases.json")
	_, d, stop := startInLab(t, lab, testConfig(Authoritative, file))

	tests := []struct {
		name  string
		mac   string
		args  []string
		want  map[string]string
		notIn []string
	}{
		{"udhcpc as UEFI PXE firmware", knownMAC, []string{"-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"},
			map[string]string{"ip": "10.80.0.100", "boot_file": "ipxe.efi", "siaddr": "10.80.0.1", "serverid": "10.80.0.1",
				"router": "10.80.0.1", "subnet": "255.255.255.0", "lease": "3600", "domain": "lab"}, nil},
		{"udhcpc reservation, BIOS PXE", "52:54:00:12:34:05", []string{"-V", "PXEClient:Arch:00000:UNDI:002001"},
			map[string]string{"ip": "10.80.0.50", "boot_file": "undionly.kpxe", "siaddr": "10.80.0.1"}, nil},
		{"udhcpc PXE but Decider says Ignore: plain lease", unknownMAC, []string{"-V", "PXEClient:Arch:00000:UNDI:002001"},
			map[string]string{"ip": "10.80.0.101"}, []string{"boot_file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := runUdhcpc(t, lab, lab.Client(tt.mac), tt.args...)
			for k, v := range tt.want {
				if env[k] != v {
					t.Errorf("%s = %q, want %q (all: %v)", k, env[k], v, env)
				}
			}
			for _, k := range tt.notIn {
				if _, ok := env[k]; ok {
					t.Errorf("%s set: %v", k, env)
				}
			}
		})
	}
	t.Run("dhclient plain lease", func(t *testing.T) {
		c := lab.Client("52:54:00:00:00:33")
		dir := t.TempDir()
		out := filepath.Join(dir, "env")
		script := writeScript(t, "#!/bin/sh\ncase $reason in BOUND) env | grep -E '^new_(ip_address|filename|routers|domain_name)=' | sort > "+out+";; esac\nexit 0\n")
		pid := filepath.Join(dir, "pid")
		if b, err := lab.Command(c, "dhclient", "-1", "-v", "-sf", script, "-lf", filepath.Join(dir, "lease"), "-pf", pid, "eth0").CombinedOutput(); err != nil {
			t.Fatalf("dhclient: %v\n%s", err, b)
		}
		// dhclient stays as a daemon after -1 succeeds; -x stops it
		// without a RELEASE, so its lease stays in the file.
		t.Cleanup(func() { _ = lab.Command(c, "dhclient", "-x", "-pf", pid).Run() })
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"new_ip_address=10.80.0.102", "new_routers=10.80.0.1", "new_domain_name=lab"} {
			if !strings.Contains(string(b), want+"\n") {
				t.Errorf("dhclient env lacks %s:\n%s", want, b)
			}
		}
		if strings.Contains(string(b), "new_filename") {
			t.Errorf("plain client got a boot file:\n%s", b)
		}
	})
	// dhclient sends no vendor class: a plain client is never a boot
	// candidate, so the Decider never hears of it.
	d.mu.Lock()
	for _, m := range d.asked {
		if m.MAC.String() == "52:54:00:00:00:33" {
			t.Errorf("Decider asked about a non-PXE client: %+v", m)
		}
	}
	d.mu.Unlock()
	want := map[string]string{knownMAC: "10.80.0.100", "52:54:00:12:34:05": "10.80.0.50", unknownMAC: "10.80.0.101", "52:54:00:00:00:33": "10.80.0.102"}
	if got := readLeaseFile(t, file); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lease file holds %v, want %v", got, want)
	}

	// A restarted server reads the file back: a client that is not the
	// first to ask still gets its own address, not the lowest free one.
	stop()
	startInLab(t, lab, testConfig(Authoritative, file))
	env := runUdhcpc(t, lab, lab.Client(unknownMAC))
	if env["ip"] != "10.80.0.101" {
		t.Fatalf("after restart %s got %v, want 10.80.0.101", unknownMAC, env)
	}
}

// TestRealClientReservationChange: a reservation changed while the
// server runs (a config reload) is what a real client gets next.
func TestRealClientReservationChange(t *testing.T) {
	netlab.Require(t, "udhcpc")
	lab := netlab.New(t, "10.80.0.0/24")
	file := filepath.Join(t.TempDir(), "leases.json")
	s, _, stop := startInLab(t, lab, testConfig(Authoritative, file))
	c := lab.Client("52:54:00:12:34:05")
	if env := runUdhcpc(t, lab, c); env["ip"] != "10.80.0.50" {
		t.Fatalf("before the change: %v", env)
	}
	if err := s.SetReservations(map[string]netip.Addr{"52:54:00:12:34:05": netip.MustParseAddr("10.80.0.51")}); err != nil {
		t.Fatal(err)
	}
	if env := runUdhcpc(t, lab, c); env["ip"] != "10.80.0.51" {
		t.Fatalf("after the change: %v, want ip=10.80.0.51", env)
	}
	stop() // writes the lease file a last time
	if got := readLeaseFile(t, file); got["52:54:00:12:34:05"] != "10.80.0.51" {
		t.Fatalf("lease file: %v", got)
	}
}

// TestRealClientProxy: a real udhcpc DISCOVER reaches the proxy, whose
// broadcast OFFER (no address, boot options) is read off the wire in
// the client's namespace.
func TestRealClientProxy(t *testing.T) {
	netlab.Require(t, "udhcpc")
	lab := netlab.New(t, "10.80.0.0/24")
	_, d, _ := startInLab(t, lab, testConfig(Proxy, ""))
	c := lab.Client(knownMAC)
	var conn net.PacketConn
	if err := netlab.Do(c, func() (err error) {
		conn, err = net.ListenPacket("udp4", "0.0.0.0:68")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// udhcpc gets no address from a proxy and gives up after its tries;
	// its DISCOVERs are what matter.
	cmd := lab.Command(c, "udhcpc", "-q", "-n", "-f", "-i", "eth0", "-t", "3", "-T", "1", "-s", "/bin/true",
		"-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// The deadline only bounds a broken run; nothing is asserted on time.
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			d.mu.Lock()
			asked := len(d.asked)
			d.mu.Unlock()
			t.Fatalf("no proxy offer seen: %v (decider asked %d times)", err, asked)
		}
		resp, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || resp.MessageType() != dhcpv4.MessageTypeOffer {
			continue
		}
		if !resp.YourIPAddr.IsUnspecified() || resp.BootFileName != "undionly.kpxe" || !resp.ServerIPAddr.Equal(net.ParseIP("10.80.0.1")) ||
			string(resp.Options.Get(dhcpv4.OptionClassIdentifier)) != "PXEClient" || !resp.ServerIdentifier().Equal(net.ParseIP("10.80.0.1")) ||
			!bytes.Equal(resp.Options.Get(dhcpv4.OptionVendorSpecificInformation), pxeVendorOptions) {
			t.Fatalf("proxy offer: %s", resp.Summary())
		}
		return
	}
}

// peer is a client namespace with address ip on the lab subnet and a
// UDP socket on ip:port, for tests that send crafted packets.
func peer(t *testing.T, lab *netlab.Lab, mac, ip string, port int) *net.UDPConn {
	t.Helper()
	ns := lab.Client(mac)
	lab.Run(ns, "ip", "addr", "add", ip+"/24", "dev", "eth0")
	var conn *net.UDPConn
	if err := netlab.Do(ns, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// exchange sends packets to dst in order and returns the first reply.
func exchange(t *testing.T, conn *net.UDPConn, dst string, packets ...[]byte) (*dhcpv4.DHCPv4, string) {
	t.Helper()
	to, err := net.ResolveUDPAddr("udp4", dst)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range packets {
		if _, err := conn.WriteTo(b, to); err != nil {
			t.Fatal(err)
		}
	}
	// The deadline only bounds a broken run; nothing is asserted on time.
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := conn.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no answer from %s: %v", dst, err)
	}
	resp, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	return resp, from.String()
}

// TestRealPort4011: UEFI firmware that ignored the proxy offer asks the
// boot server again, unicast to port 4011, and the ACK comes back to
// the port it asked from.
func TestRealPort4011(t *testing.T) {
	netlab.Require(t)
	for _, mode := range []Mode{Proxy, Authoritative} {
		t.Run(mode.String(), func(t *testing.T) {
			lab := netlab.New(t, "10.80.0.0/24")
			startInLab(t, lab, testConfig(mode, filepath.Join(t.TempDir(), "leases.json")))
			conn := peer(t, lab, knownMAC, "10.80.0.5", 68)
			req := pxeRequest(t, dhcpv4.MessageTypeRequest, knownMAC, "PXEClient:Arch:00007:UNDI:003016", []uint16{7}, "", true)
			req.ClientIPAddr = net.ParseIP("10.80.0.5")
			resp, from := exchange(t, conn, "10.80.0.1:4011", req.ToBytes())
			if from != "10.80.0.1:4011" || resp.MessageType() != dhcpv4.MessageTypeAck || resp.BootFileName != "ipxe.efi" ||
				!resp.YourIPAddr.IsUnspecified() || resp.Options.Get(dhcpv4.OptionVendorSpecificInformation) != nil ||
				!bytes.Equal(resp.Options.Get(dhcpv4.OptionClientMachineIdentifier), req.Options.Get(dhcpv4.OptionClientMachineIdentifier)) {
				t.Fatalf("from %s: %s", from, resp.Summary())
			}
		})
	}
}

// TestPort4011Interface: the 4011 socket is bound to an address, not a
// device, so the interface a request came in on is read per packet: a
// machine is reported on the interface it is on, not the first one
// configured, and a request through an interface that the config does
// not name is dropped like one on port 67 would be.
func TestPort4011Interface(t *testing.T) {
	netlab.Require(t)
	for _, tt := range []struct {
		name       string
		interfaces []string
		answered   bool
	}{
		{"second of two interfaces", []string{"pxebr1", "br0"}, true},
		{"interface not configured", []string{"pxebr1"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lab := netlab.New(t, "10.80.0.0/24")
			// A second bridge with no ports stands in for a second NIC.
			lab.Run(lab.Server, "ip", "link", "add", "pxebr1", "type", "bridge")
			lab.Run(lab.Server, "ip", "addr", "add", "10.81.0.1/24", "dev", "pxebr1")
			lab.Run(lab.Server, "ip", "link", "set", "pxebr1", "up")
			cfg := testConfig(Proxy, "")
			cfg.Interfaces = tt.interfaces
			s, d, _ := startInLab(t, lab, cfg)
			conn := peer(t, lab, knownMAC, "10.80.0.5", 68)
			req := pxeRequest(t, dhcpv4.MessageTypeRequest, knownMAC, "PXEClient:Arch:00007:UNDI:003016", []uint16{7}, "", false)
			req.ClientIPAddr = net.ParseIP("10.80.0.5")
			if !tt.answered {
				to := &net.UDPAddr{IP: net.ParseIP("10.80.0.1"), Port: 4011}
				if _, err := conn.WriteTo(req.ToBytes(), to); err != nil {
					t.Fatal(err)
				}
				// The deadline only bounds a broken run: the drop is seen
				// in the counter, which the server bumps when it reads the
				// packet.
				dropped := s.packets.WithLabelValues("request", "other-interface")
				for deadline := time.Now().Add(30 * time.Second); testutil.ToFloat64(dropped) != 1; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("request on an unconfigured interface not dropped")
					}
				}
				d.mu.Lock()
				defer d.mu.Unlock()
				if len(d.asked) != 0 {
					t.Fatalf("Decider asked about a request from an unconfigured interface: %+v", d.asked)
				}
				return
			}
			resp, _ := exchange(t, conn, "10.80.0.1:4011", req.ToBytes())
			if resp.MessageType() != dhcpv4.MessageTypeAck {
				t.Fatalf("got %s", resp.Summary())
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if len(d.asked) != 1 || d.asked[0].Interface != "br0" {
				t.Fatalf("Decider saw %+v, want one machine on br0", d.asked)
			}
		})
	}
}

// TestRelayAndMalformed plays a DHCP relay (RFC 1542) from a namespace
// with an address on the lab subnet: garbage is dropped and counted,
// and a relayed DISCOVER is answered to the relay's port 67. Another
// host, not in Relays, that sends relayed requests, one naming the
// real relay as giaddr and carrying option 82, is not answered and
// its option 82 reaches no one.
func TestRelayAndMalformed(t *testing.T) {
	netlab.Require(t)
	lab := netlab.New(t, "10.80.0.0/24")
	cfg := testConfig(Authoritative, filepath.Join(t.TempDir(), "leases.json"))
	cfg.Relays = []netip.Prefix{netip.MustParsePrefix("10.80.0.2/32")}
	s, d, _ := startInLab(t, lab, cfg)

	stranger := peer(t, lab, "", "10.80.0.3", 67)
	to := &net.UDPAddr{IP: net.ParseIP("10.80.0.1"), Port: 67}
	for _, giaddr := range []string{"10.80.0.2", "10.80.0.3"} {
		spoof := pxeRequest(t, dhcpv4.MessageTypeDiscover, "52:54:00:00:00:66", "PXEClient:Arch:00000", []uint16{0}, "", false)
		spoof.GatewayIPAddr = net.ParseIP(giaddr)
		spoof.HopCount = 1
		spoof.UpdateOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte("Eth1/0/1"))))
		if _, err := stranger.WriteTo(spoof.ToBytes(), to); err != nil {
			t.Fatal(err)
		}
	}
	untrusted := s.packets.WithLabelValues("discover", "untrusted-relay")
	for deadline := time.Now().Add(10 * time.Second); testutil.ToFloat64(untrusted) != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("relayed DISCOVERs from a host not in Relays counted as untrusted: %v, want 2", testutil.ToFloat64(untrusted))
		}
	}

	conn := peer(t, lab, "", "10.80.0.2", 67)
	req := pxeRequest(t, dhcpv4.MessageTypeDiscover, "52:54:00:00:00:77", "PXEClient:Arch:00000", []uint16{0}, "", false)
	req.GatewayIPAddr = net.ParseIP("10.80.0.2")
	req.HopCount = 1
	resp, from := exchange(t, conn, "10.80.0.1:67", []byte{1, 1, 6, 0, 0xde, 0xad}, req.ToBytes())
	// Had the spoofed request naming 10.80.0.2 been answered, its OFFER
	// would have reached this socket first.
	if resp.MessageType() != dhcpv4.MessageTypeOffer || resp.TransactionID != req.TransactionID ||
		!resp.YourIPAddr.Equal(net.ParseIP("10.80.0.100")) || !resp.GatewayIPAddr.Equal(net.ParseIP("10.80.0.2")) {
		t.Fatalf("relay got %s", resp.Summary())
	}
	if from != "10.80.0.1:67" {
		t.Errorf("reply from %s, want 10.80.0.1:67", from)
	}
	// The server reads one socket in order: the garbage was handled
	// before the DISCOVER whose reply we hold.
	if got := testutil.ToFloat64(s.packets.WithLabelValues("malformed", "dropped")); got != 1 {
		t.Errorf("malformed packets counted: %v, want 1", got)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.asked {
		if m.MAC.String() != "52:54:00:00:00:77" || m.CircuitID != "" {
			t.Errorf("the Decider was asked about %+v: only the relay's machine should reach it", m)
		}
	}
}

func TestListenRefusesMissingInterface(t *testing.T) {
	cfg := testConfig(Proxy, "")
	cfg.Interfaces = []string{"pxe-nonexistent0"}
	s, _ := newTestServer(t, cfg)
	err := s.Listen()
	if err == nil || !strings.Contains(err.Error(), `interface "pxe-nonexistent0"`) {
		t.Fatalf("err = %v", err)
	}
}

func FuzzHandle(f *testing.F) {
	hw, _ := net.ParseMAC(knownMAC)
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform} {
		for _, opts := range [][]dhcpv4.Modifier{
			{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007")), dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("\x04iPXE"))},
			{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016")), dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 16, 0})},
			{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:")), dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("\x09iPXE"))},
			{dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.1"))), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.80.0.100")))},
		} {
			r, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt), dhcpv4.WithHwAddr(hw)}, opts...)...)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(r.ToBytes(), uint8(0))
			f.Add(r.ToBytes(), uint8(1))
		}
	}
	f.Add([]byte{1, 1, 6, 0}, uint8(0))
	servers := map[uint8]*Server{}
	for i, mode := range []Mode{Proxy, Authoritative} {
		d := &allowList{boot: map[string]bool{knownMAC: true}}
		s, err := New(testConfig(mode, ""), d, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			f.Fatal(err)
		}
		servers[uint8(i)] = s
	}
	f.Fuzz(func(t *testing.T, b []byte, which uint8) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		for _, port := range []int{67, 4011} {
			resp, _ := servers[which%2].Handle(context.Background(), req, "br0", port)
			if resp == nil {
				continue
			}
			if _, err := dhcpv4.FromBytes(resp.ToBytes()); err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if (which%2 == 0 || port == 4011) && !resp.YourIPAddr.IsUnspecified() {
				t.Fatalf("proxy reply with an address: %s", resp.YourIPAddr)
			}
		}
	})
}

func TestNewRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"no interfaces", func(c *Config) { c.Interfaces = nil }, "no interfaces"},
		{"no server address", func(c *Config) { c.ServerIP = netip.Addr{} }, "no server address: set server.advertise"},
		{"IPv6 server address", func(c *Config) { c.ServerIP = netip.MustParseAddr("fd00::1") }, "not IPv4"},
		{"range outside subnet", func(c *Config) { c.RangeEnd = netip.MustParseAddr("10.81.0.1") }, "not inside IPv4 subnet"},
		{"range backwards", func(c *Config) {
			c.RangeStart, c.RangeEnd = c.RangeEnd, c.RangeStart
		}, "ends before it starts"},
		{"reservation not a MAC", func(c *Config) { c.Reservations = map[string]netip.Addr{"web-01": netip.MustParseAddr("10.80.0.9")} }, `reservation "web-01"`},
		{"reservation outside subnet", func(c *Config) {
			c.Reservations = map[string]netip.Addr{"52:54:00:12:34:06": netip.MustParseAddr("10.99.0.9")}
		}, "outside subnet"},
		{"same MAC reserved twice", func(c *Config) {
			c.Reservations = map[string]netip.Addr{"52:54:00:12:34:06": netip.MustParseAddr("10.80.0.9"), "52-54-00-12-34-06": netip.MustParseAddr("10.80.0.8")}
		}, "reserved twice"},
		{"address reserved for two MACs", func(c *Config) {
			c.Reservations = map[string]netip.Addr{"52:54:00:12:34:06": netip.MustParseAddr("10.80.0.9"), "52:54:00:12:34:07": netip.MustParseAddr("10.80.0.9")}
		}, "reserved for both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(Authoritative, "")
			tt.change(&cfg)
			_, err := New(cfg, &allowList{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to say %q", err, tt.want)
			}
		})
	}
}

// TestAuthoritativeWithoutBoot: clients that do not boot from us still
// get a plain lease, and the Decider hears only of PXE clients.
func TestAuthoritativeWithoutBoot(t *testing.T) {
	tests := []struct {
		name   string
		mac    string
		vendor string
		mt     dhcpv4.MessageType
		asked  bool
	}{
		{"PXE client the Decider ignores", unknownMAC, "PXEClient:Arch:00007:UNDI:003016", dhcpv4.MessageTypeDiscover, true},
		{"installed OS, known MAC, no vendor class", knownMAC, "", dhcpv4.MessageTypeDiscover, false},
		{"other vendor class", knownMAC, "MSFT 5.0", dhcpv4.MessageTypeDiscover, false},
		{"INFORM from a plain client", knownMAC, "", dhcpv4.MessageTypeInform, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, d := newTestServer(t, testConfig(Authoritative, ""))
			req := pxeRequest(t, tt.mt, tt.mac, tt.vendor, nil, "", true)
			if tt.mt == dhcpv4.MessageTypeInform {
				req.ClientIPAddr = net.ParseIP("10.80.0.200")
			}
			resp, err := s.Handle(context.Background(), req, "br0", 67)
			if err != nil || resp == nil {
				t.Fatalf("no reply: %v", err)
			}
			if tt.mt == dhcpv4.MessageTypeInform {
				if resp.MessageType() != dhcpv4.MessageTypeAck || !resp.YourIPAddr.IsUnspecified() || resp.DomainName() != "lab" {
					t.Errorf("INFORM answer: %s", resp.Summary())
				}
			} else if resp.MessageType() != dhcpv4.MessageTypeOffer || !resp.YourIPAddr.Equal(net.ParseIP("10.80.0.100")) {
				t.Errorf("offer: %s", resp.Summary())
			}
			for _, o := range []dhcpv4.OptionCode{dhcpv4.OptionClassIdentifier, dhcpv4.OptionBootfileName, dhcpv4.OptionVendorSpecificInformation, dhcpv4.OptionTFTPServerName, dhcpv4.OptionClientMachineIdentifier} {
				if v := resp.Options.Get(o); v != nil {
					t.Errorf("option %s = %q in a reply without boot", o, v)
				}
			}
			if resp.BootFileName != "" || !resp.ServerIPAddr.IsUnspecified() {
				t.Errorf("file %q siaddr %s in a reply without boot", resp.BootFileName, resp.ServerIPAddr)
			}
			if asked := len(d.asked) > 0; asked != tt.asked {
				t.Errorf("Decider asked = %v, want %v", asked, tt.asked)
			}
		})
	}
}

func TestProxyAsksDeciderOnlyWhenItWouldAnswer(t *testing.T) {
	tests := []struct {
		name   string
		mt     dhcpv4.MessageType
		sid    string
		port   int
		answer bool
	}{
		{"DISCOVER on 67", dhcpv4.MessageTypeDiscover, "", 67, true},
		{"DISCOVER on 4011", dhcpv4.MessageTypeDiscover, "", 4011, false},
		{"REQUEST to the network's server", dhcpv4.MessageTypeRequest, "10.80.0.254", 67, false},
		{"REQUEST naming us", dhcpv4.MessageTypeRequest, "10.80.0.1", 67, true},
		{"REQUEST on 4011", dhcpv4.MessageTypeRequest, "", 4011, true},
		{"DECLINE", dhcpv4.MessageTypeDecline, "10.80.0.1", 67, false},
		{"RELEASE", dhcpv4.MessageTypeRelease, "10.80.0.1", 67, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, d := newTestServer(t, testConfig(Proxy, ""))
			req := pxeRequest(t, tt.mt, knownMAC, "PXEClient:Arch:00000:UNDI:002001", []uint16{0}, "", false)
			if tt.sid != "" {
				req.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP(tt.sid)))
			}
			resp, err := s.Handle(context.Background(), req, "br0", tt.port)
			if err != nil {
				t.Fatal(err)
			}
			if (resp != nil) != tt.answer || (len(d.asked) > 0) != tt.answer {
				t.Fatalf("answered %v, Decider asked %d times; want both %v", resp != nil, len(d.asked), tt.answer)
			}
			if resp != nil && (resp.MessageType() == dhcpv4.MessageTypeAck) != (tt.mt == dhcpv4.MessageTypeRequest) {
				t.Fatalf("reply type %s to %s", resp.MessageType(), tt.mt)
			}
		})
	}
}

// TestPoolReuse walks the lease pool through address reuse after
// expiry, which once left the old holder pointing at the address.
func TestPoolReuse(t *testing.T) {
	a, b := "52:54:00:00:00:0a", "52:54:00:00:00:0b"
	ip1 := netip.MustParseAddr("10.80.0.100")
	tests := []struct {
		name string
		run  func(t *testing.T, p *pool, wait func(time.Duration))
	}{
		{"expired address goes to the next client, and stays its", func(t *testing.T, p *pool, wait func(time.Duration)) {
			p.ack(a, ip1, time.Minute)
			wait(2 * time.Minute)
			if ip, _ := p.offer(b, netip.Addr{}); ip != ip1 {
				t.Fatalf("b offered %s", ip)
			}
			if ok, _ := p.ack(b, ip1, time.Hour); !ok {
				t.Fatal("b NAKed")
			}
			// a comes back: it must get another address, and b keeps ip1.
			ip, _ := p.offer(a, netip.Addr{})
			if ip == ip1 {
				t.Fatalf("a offered b's address")
			}
			p.ack(a, ip, time.Hour)
			if l, ok := p.lookup(b); !ok || l.IP != ip1 {
				t.Fatalf("b's lease: %+v %v", l, ok)
			}
			if ok, _ := p.ack(a, ip1, time.Hour); ok {
				t.Fatal("a ACKed on b's address")
			}
		}},
		{"reservation is never offered to others", func(t *testing.T, p *pool, wait func(time.Duration)) {
			for i := 0; i < 2; i++ {
				ip, ok := p.offer(fmt.Sprintf("52:54:00:00:01:%02x", i), netip.MustParseAddr("10.80.0.50"))
				if !ok || ip == netip.MustParseAddr("10.80.0.50") {
					t.Fatalf("offered %s %v", ip, ok)
				}
			}
		}},
		{"range runs out", func(t *testing.T, p *pool, wait func(time.Duration)) {
			for i := 0; i < 2; i++ {
				if _, ok := p.offer(fmt.Sprintf("52:54:00:00:02:%02x", i), netip.Addr{}); !ok {
					t.Fatalf("offer %d failed", i)
				}
			}
			if ip, ok := p.offer(b, netip.Addr{}); ok {
				t.Fatalf("third client in a two-address range got %s", ip)
			}
		}},
		{"new clients take addresses in turn; the search wraps around", func(t *testing.T, p *pool, wait func(time.Duration)) {
			c1, c2, c3 := "52:54:00:00:03:01", "52:54:00:00:03:02", "52:54:00:00:03:03"
			ip2 := netip.MustParseAddr("10.80.0.101")
			if ip, _ := p.offer(c1, netip.Addr{}); ip != ip1 {
				t.Fatalf("first client offered %s", ip)
			}
			p.ack(c1, ip1, time.Hour)
			p.release(c1, ip1)
			// The search goes on from where it stopped (not from the
			// start of the range, which costs a lookup per lease).
			if ip, _ := p.offer(c2, netip.Addr{}); ip != ip2 {
				t.Fatalf("second client offered %s, want %s", ip, ip2)
			}
			p.ack(c2, ip2, time.Hour)
			if ip, ok := p.offer(c3, netip.Addr{}); !ok || ip != ip1 {
				t.Fatalf("third client offered %s %v, want %s after wrapping around", ip, ok, ip1)
			}
		}},
		{"declined address rests, then returns", func(t *testing.T, p *pool, wait func(time.Duration)) {
			p.ack(a, ip1, time.Hour)
			p.decline(a, ip1)
			if ip, _ := p.offer(b, ip1); ip == ip1 {
				t.Fatal("declined address offered")
			}
			wait(declineHold + time.Minute)
			if ip, _ := p.offer(a, ip1); ip != ip1 {
				t.Fatalf("after the hold, offered %s", ip)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := newPool(ip1, netip.MustParseAddr("10.80.0.101"),
				map[string]netip.Addr{"52:54:00:12:34:05": netip.MustParseAddr("10.80.0.50")}, "")
			if err != nil {
				t.Fatal(err)
			}
			// The pool's clock is moved by hand: no test waits for real.
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			p.now = func() time.Time { return now }
			tt.run(t, p, func(d time.Duration) { now = now.Add(d) })
		})
	}
}

func TestLeaseFileReload(t *testing.T) {
	tests := []struct {
		name string
		file string
		want map[string]string // mac → ip after reload
		err  string
	}{
		{"keeps valid leases", `[{"mac":"52:54:00:00:00:0a","ip":"10.80.0.101","expiry":"2999-01-01T00:00:00Z"}]`,
			map[string]string{"52:54:00:00:00:0a": "10.80.0.101"}, ""},
		{"drops expired, out-of-range, others' reservations and duplicates", `[
			{"mac":"52:54:00:00:00:0a","ip":"10.80.0.101","expiry":"2000-01-01T00:00:00Z"},
			{"mac":"52:54:00:00:00:0b","ip":"10.80.0.7","expiry":"2999-01-01T00:00:00Z"},
			{"mac":"52:54:00:00:00:0c","ip":"10.80.0.50","expiry":"2999-01-01T00:00:00Z"},
			{"mac":"52:54:00:00:00:0d","ip":"10.80.0.102","expiry":"2999-01-01T00:00:00Z"},
			{"mac":"52:54:00:00:00:0e","ip":"10.80.0.102","expiry":"2999-01-01T00:00:00Z"}]`,
			map[string]string{"52:54:00:00:00:0d": "10.80.0.102"}, ""},
		{"corrupt file is an error naming it", `[{"mac":`, nil, "move it away"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "leases.json")
			if err := os.WriteFile(file, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			p, err := newPool(netip.MustParseAddr("10.80.0.100"), netip.MustParseAddr("10.80.0.110"),
				map[string]netip.Addr{"52:54:00:12:34:05": netip.MustParseAddr("10.80.0.50")}, file)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), file) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for mac, l := range p.byMAC {
				got[mac] = l.IP.String()
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("leases %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDetect(t *testing.T) {
	tests := []struct {
		name      string
		vendor    string
		archs     []uint16
		userClass string
		want      Firmware
		pxe       bool
	}{
		{"no vendor class", "", []uint16{7}, "", Firmware{}, false},
		{"other vendor class", "udhcp 1.35.0", nil, "", Firmware{}, false},
		{"legacy ROM without option 93", "PXEClient", nil, "", Firmware{Arch: ArchBIOS}, true},
		{"EFI ia32", "PXEClient:Arch:00006:UNDI:003000", []uint16{6}, "", Firmware{Arch: ArchEFI32}, true},
		{"93 says BIOS, vendor class says x64", "PXEClient:Arch:00009:UNDI:003016", []uint16{0}, "", Firmware{Arch: ArchEFIx64}, true},
		{"HTTP Boot arm64 from option 93", "HTTPClient:Arch:00019:UNDI:003000", []uint16{19}, "", Firmware{Arch: ArchEFIarm64, HTTPBoot: true}, true},
		{"HTTP Boot x64 from vendor class only", "HTTPClient:Arch:00016:UNDI:003000", nil, "", Firmware{Arch: ArchEFIx64, HTTPBoot: true}, true},
		{"bad number in vendor class", "PXEClient:Arch:xx", nil, "", Firmware{Arch: ArchBIOS}, true},
		{"iPXE bare user class", "PXEClient:Arch:00000:UNDI:002001", []uint16{0}, "iPXE", Firmware{Arch: ArchBIOS, IPXE: true}, true},
		{"iPXE second in an RFC 3004 list", "PXEClient:Arch:00007:UNDI:003010", []uint16{7}, "\x03foo\x04iPXE", Firmware{Arch: ArchEFIx64, IPXE: true}, true},
		{"truncated RFC 3004 list", "PXEClient", nil, "\x09iPXE", Firmware{Arch: ArchBIOS}, true},
		{"user class that only starts with iPXE", "PXEClient", nil, "iPXE-x", Firmware{Arch: ArchBIOS}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, pxe := detect(pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, tt.vendor, tt.archs, tt.userClass, false))
			if pxe != tt.pxe || (pxe && fw != tt.want) {
				t.Fatalf("detect = %+v, %v; want %+v, %v", fw, pxe, tt.want, tt.pxe)
			}
		})
	}
}

func TestDestination(t *testing.T) {
	s, _ := newTestServer(t, testConfig(Authoritative, ""))
	tests := []struct {
		name           string
		giaddr, ciaddr string
		reply          dhcpv4.MessageType
		port           int
		want           string
	}{
		{"offer to a client without address", "", "", dhcpv4.MessageTypeOffer, 67, "255.255.255.255:68"},
		{"ACK to a renewing client", "", "10.80.0.100", dhcpv4.MessageTypeAck, 67, "10.80.0.100:68"},
		{"NAK to a renewing client is broadcast", "", "10.80.0.100", dhcpv4.MessageTypeNak, 67, "255.255.255.255:68"},
		{"relayed", "10.80.0.2", "", dhcpv4.MessageTypeOffer, 67, "10.80.0.2:67"},
		{"relayed NAK", "10.80.0.2", "10.80.0.100", dhcpv4.MessageTypeNak, 67, "10.80.0.2:67"},
		{"port 4011 answers the sender", "", "10.80.0.7", dhcpv4.MessageTypeAck, 4011, "10.80.0.7:1234"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := pxeRequest(t, dhcpv4.MessageTypeRequest, knownMAC, "", nil, "", false)
			req.GatewayIPAddr = net.ParseIP(tt.giaddr)
			req.ClientIPAddr = net.ParseIP(tt.ciaddr)
			resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(tt.reply))
			if err != nil {
				t.Fatal(err)
			}
			got := s.destination(req, resp, &net.UDPAddr{IP: net.ParseIP("10.80.0.7"), Port: 1234}, tt.port)
			if got.String() != tt.want {
				t.Fatalf("reply goes to %s, want %s", got, tt.want)
			}
		})
	}
}

func TestMetricsRegisteredTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig(Proxy, "")
	cfg.Metrics = reg
	a, _ := newTestServer(t, cfg)
	b, _ := newTestServer(t, cfg)
	req := pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, "PXEClient", []uint16{0}, "", false)
	a.Handle(context.Background(), req, "br0", 67)
	b.Handle(context.Background(), req, "br0", 67)
	if got := testutil.ToFloat64(a.packets.WithLabelValues("discover", "answered")); got != 2 {
		t.Fatalf("answered DISCOVERs counted %v, want 2 in one series", got)
	}
}

// TestDeciderSeesLeasedAddress: in authoritative mode the Decider is
// asked once the address is known (offered for a DISCOVER, acknowledged
// for a REQUEST), so a rule can place a machine by it; a proxy knows no
// address and says none.
func TestDeciderSeesLeasedAddress(t *testing.T) {
	s, d := newTestServer(t, testConfig(Authoritative, ""))
	ctx := context.Background()
	disc := pxeRequest(t, dhcpv4.MessageTypeDiscover, knownMAC, "PXEClient:Arch:00000", []uint16{0}, "", false)
	offer, err := s.Handle(ctx, disc, "br0", 67)
	if err != nil || offer == nil {
		t.Fatalf("no offer: %v", err)
	}
	if got := d.asked[len(d.asked)-1].Addr; got.String() != offer.YourIPAddr.String() {
		t.Fatalf("Decider saw address %v at the DISCOVER, want the offered %v", got, offer.YourIPAddr)
	}
	req := pxeRequest(t, dhcpv4.MessageTypeRequest, knownMAC, "PXEClient:Arch:00000", []uint16{0}, "", false)
	req.UpdateOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))
	req.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.1")))
	ack, err := s.Handle(ctx, req, "br0", 67)
	if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("no ACK: %v %v", ack, err)
	}
	if got := d.asked[len(d.asked)-1].Addr; got.String() != offer.YourIPAddr.String() {
		t.Fatalf("Decider saw address %v at the REQUEST, want %v", got, offer.YourIPAddr)
	}

	// An INFORM's ciaddr counts only when it is the client's lease.
	for _, tt := range []struct{ ciaddr, want string }{{offer.YourIPAddr.String(), offer.YourIPAddr.String()}, {"10.80.0.200", "invalid IP"}} {
		inf := pxeRequest(t, dhcpv4.MessageTypeInform, knownMAC, "PXEClient:Arch:00000", []uint16{0}, "", false)
		inf.ClientIPAddr = net.ParseIP(tt.ciaddr)
		if _, err := s.Handle(ctx, inf, "br0", 67); err != nil {
			t.Fatal(err)
		}
		if got := d.asked[len(d.asked)-1].Addr; got.String() != tt.want {
			t.Fatalf("Decider saw address %v at an INFORM from %s, want %s", got, tt.ciaddr, tt.want)
		}
	}

	p, pd := newTestServer(t, testConfig(Proxy, ""))
	if _, err := p.Handle(ctx, disc, "br0", 67); err != nil {
		t.Fatal(err)
	}
	if got := pd.asked[len(pd.asked)-1].Addr; got.IsValid() {
		t.Fatalf("a proxy told the Decider address %v", got)
	}
}
