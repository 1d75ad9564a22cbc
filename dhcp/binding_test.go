package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// bindCall is one call to a Binder.
type bindCall struct {
	released bool
	b        Binding
}

func (c bindCall) String() string {
	kind := "Bound"
	if c.released {
		kind = "Released"
	}
	return fmt.Sprintf("%s(%s %s iface=%q relay=%v)", kind, c.b.MAC, c.b.Addr, c.b.Interface, c.b.Relay)
}

// recorder is a Binder that keeps every call, for the test to read
// while the server runs.
type recorder struct {
	mu    sync.Mutex
	calls []bindCall
}

func (r *recorder) Bound(ctx context.Context, b Binding) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, bindCall{b: b})
}

func (r *recorder) Released(ctx context.Context, b Binding) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, bindCall{released: true, b: b})
}

// take returns the calls so far and forgets them.
func (r *recorder) take() []bindCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// waitBound waits until the server has told r of a binding of mac to
// addr, and returns it. The server reads the client's REQUEST on its own
// socket, so it may hear it a moment after the client is done; the
// deadline only bounds a broken run.
func (r *recorder) waitBound(t *testing.T, mac, addr string) Binding {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r.mu.Lock()
		for _, c := range r.calls {
			if !c.released && c.b.MAC.String() == mac && c.b.Addr.String() == addr {
				r.mu.Unlock()
				return c.b
			}
		}
		calls := fmt.Sprint(r.calls)
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no Bound(%s %s); the Binder heard %s", mac, addr, calls)
		}
	}
}

// request is a client's DHCP packet of type mt from plainMAC; change
// adjusts it.
func request(t *testing.T, mt dhcpv4.MessageType, vendor string, change func(r *dhcpv4.DHCPv4)) *dhcpv4.DHCPv4 {
	t.Helper()
	r := pxeRequest(t, mt, plainMAC, vendor, nil, "", false)
	if change != nil {
		change(r)
	}
	return r
}

const (
	plainMAC = "52:54:00:00:00:5a"
	// otherServer is the network's own DHCP server, in proxy mode.
	otherServer = "10.80.0.254"
	bootVendor  = "PXEClient:Arch:00007:UNDI:003016"
)

func selecting(addr, server string) func(r *dhcpv4.DHCPv4) {
	return func(r *dhcpv4.DHCPv4) {
		r.UpdateOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(addr)))
		r.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP(server)))
	}
}

func withCiaddr(addr string) func(r *dhcpv4.DHCPv4) {
	return func(r *dhcpv4.DHCPv4) { r.ClientIPAddr = net.ParseIP(addr) }
}

// binderCase is a packet and what the Binder should hear of it.
type binderCase struct {
	name  string
	mode  Mode
	cfg   func(c *Config)
	setup func(t *testing.T, s *Server) // runs before the recorder starts
	req   *dhcpv4.DHCPv4
	port  int // 67 when zero
	want  []wantCall
	// life is how long a Bound lasts, from the Handle call.
	life time.Duration
}

type wantCall struct {
	released bool
	addr     string
	relay    string
}

// TestBinder: which packets bind an address to a machine, and for how
// long, in each mode. Handle is called directly: the Binder hears of a
// packet before any reply goes out.
func TestBinder(t *testing.T) {
	tests := []binderCase{
		{name: "proxy: installer's client selects the other server's offer", mode: Proxy,
			req:  request(t, dhcpv4.MessageTypeRequest, "udhcp 1.35.0", selecting("10.80.0.123", otherServer)),
			want: []wantCall{{addr: "10.80.0.123"}}, life: 2 * time.Hour},
		{name: "proxy: binding time from the config", mode: Proxy, cfg: func(c *Config) { c.ProxyBindingTime = 10 * time.Minute },
			req:  request(t, dhcpv4.MessageTypeRequest, "", selecting("10.80.0.123", otherServer)),
			want: []wantCall{{addr: "10.80.0.123"}}, life: 10 * time.Minute},
		{name: "proxy: PXE firmware selects the other server's offer", mode: Proxy,
			req:  request(t, dhcpv4.MessageTypeRequest, bootVendor, selecting("10.80.0.124", otherServer)),
			want: []wantCall{{addr: "10.80.0.124"}}, life: 2 * time.Hour},
		{name: "proxy: rebinding client names its address in ciaddr", mode: Proxy,
			req:  request(t, dhcpv4.MessageTypeRequest, "", withCiaddr("10.80.0.125")),
			want: []wantCall{{addr: "10.80.0.125"}}, life: 2 * time.Hour},
		{name: "proxy: relayed request", mode: Proxy,
			req: request(t, dhcpv4.MessageTypeRequest, "", func(r *dhcpv4.DHCPv4) {
				selecting("10.81.0.20", "10.81.0.254")(r)
				r.GatewayIPAddr = net.ParseIP("10.81.0.1")
			}),
			want: []wantCall{{addr: "10.81.0.20", relay: "10.81.0.1"}}, life: 2 * time.Hour},
		{name: "proxy: iPXE asks on 4011 from its address", mode: Proxy, port: 4011,
			req:  request(t, dhcpv4.MessageTypeRequest, bootVendor, withCiaddr("10.80.0.126")),
			want: []wantCall{{addr: "10.80.0.126"}}, life: 2 * time.Hour},
		{name: "proxy: INFORM from a configured address", mode: Proxy,
			req:  request(t, dhcpv4.MessageTypeInform, "", withCiaddr("10.80.0.127")),
			want: []wantCall{{addr: "10.80.0.127"}}, life: 2 * time.Hour},
		{name: "proxy: DISCOVER binds nothing, even with option 50", mode: Proxy,
			req: request(t, dhcpv4.MessageTypeDiscover, bootVendor, func(r *dhcpv4.DHCPv4) {
				r.UpdateOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("10.80.0.123")))
			})},
		{name: "proxy: REQUEST without any address", mode: Proxy,
			req: request(t, dhcpv4.MessageTypeRequest, "", nil)},
		{name: "proxy: DECLINE", mode: Proxy,
			req:  request(t, dhcpv4.MessageTypeDecline, "", selecting("10.80.0.123", otherServer)),
			want: []wantCall{{released: true, addr: "10.80.0.123"}}},
		{name: "proxy: RELEASE", mode: Proxy,
			req: request(t, dhcpv4.MessageTypeRelease, "", func(r *dhcpv4.DHCPv4) {
				withCiaddr("10.80.0.123")(r)
				r.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP(otherServer)))
			}),
			want: []wantCall{{released: true, addr: "10.80.0.123"}}},
		{name: "proxy: reply packets bind nothing", mode: Proxy,
			req: request(t, dhcpv4.MessageTypeRequest, "", func(r *dhcpv4.DHCPv4) {
				selecting("10.80.0.123", otherServer)(r)
				r.OpCode = dhcpv4.OpcodeBootReply
			})},

		{name: "authoritative: ACK", mode: Authoritative, cfg: func(c *Config) { c.LeaseTime = 45 * time.Minute },
			req:  request(t, dhcpv4.MessageTypeRequest, "", selecting("10.80.0.100", "10.80.0.1")),
			want: []wantCall{{addr: "10.80.0.100"}}, life: 45 * time.Minute},
		{name: "authoritative: renewal ACK", mode: Authoritative, setup: lease("10.80.0.101"),
			req:  request(t, dhcpv4.MessageTypeRequest, "", withCiaddr("10.80.0.101")),
			want: []wantCall{{addr: "10.80.0.101"}}, life: time.Hour},
		{name: "authoritative: relayed ACK", mode: Authoritative,
			req: request(t, dhcpv4.MessageTypeRequest, "", func(r *dhcpv4.DHCPv4) {
				selecting("10.80.0.102", "10.80.0.1")(r)
				r.GatewayIPAddr = net.ParseIP("10.80.0.2")
			}),
			want: []wantCall{{addr: "10.80.0.102", relay: "10.80.0.2"}}, life: time.Hour},
		{name: "authoritative: NAK of an address outside the range", mode: Authoritative,
			req: request(t, dhcpv4.MessageTypeRequest, "", selecting("10.80.0.200", "10.80.0.1"))},
		{name: "authoritative: NAK of another client's address", mode: Authoritative,
			setup: func(t *testing.T, s *Server) {
				if ok, err := s.pool.ack("52:54:00:00:00:01", netip.MustParseAddr("10.80.0.100"), time.Hour); !ok || err != nil {
					t.Fatalf("ack: %v %v", ok, err)
				}
			},
			req: request(t, dhcpv4.MessageTypeRequest, "", selecting("10.80.0.100", "10.80.0.1"))},
		{name: "authoritative: REQUEST for another server's offer", mode: Authoritative,
			req: request(t, dhcpv4.MessageTypeRequest, "", selecting("10.80.0.100", otherServer))},
		{name: "authoritative: DISCOVER", mode: Authoritative,
			req: request(t, dhcpv4.MessageTypeDiscover, "", nil)},
		{name: "authoritative: RELEASE of the lease", mode: Authoritative, setup: lease("10.80.0.101"),
			req: request(t, dhcpv4.MessageTypeRelease, "", func(r *dhcpv4.DHCPv4) {
				withCiaddr("10.80.0.101")(r)
				r.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP("10.80.0.1")))
			}),
			want: []wantCall{{released: true, addr: "10.80.0.101"}}},
		{name: "authoritative: DECLINE", mode: Authoritative, setup: lease("10.80.0.101"),
			req:  request(t, dhcpv4.MessageTypeDecline, "", selecting("10.80.0.101", "10.80.0.1")),
			want: []wantCall{{released: true, addr: "10.80.0.101"}}},
		{name: "authoritative: RELEASE to another server", mode: Authoritative, setup: lease("10.80.0.101"),
			req: request(t, dhcpv4.MessageTypeRelease, "", func(r *dhcpv4.DHCPv4) {
				withCiaddr("10.80.0.101")(r)
				r.UpdateOption(dhcpv4.OptServerIdentifier(net.ParseIP(otherServer)))
			})},
	}
	// Addresses a client may name but never be bound to: they would let
	// its binding stand for the server itself, or for nobody.
	for _, bad := range []string{"127.0.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "169.254.1.1", "10.80.0.1"} {
		tests = append(tests,
			binderCase{name: "proxy: option 50 names " + bad, mode: Proxy,
				req: request(t, dhcpv4.MessageTypeRequest, "", selecting(bad, otherServer))},
			binderCase{name: "proxy: ciaddr on 4011 names " + bad, mode: Proxy, port: 4011,
				req: request(t, dhcpv4.MessageTypeRequest, bootVendor, withCiaddr(bad))},
		)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(tt.mode, "")
			rec := &recorder{}
			cfg.Binder = rec
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			s, _ := newTestServer(t, cfg)
			if tt.setup != nil {
				tt.setup(t, s)
				rec.take()
			}
			port := tt.port
			if port == 0 {
				port = 67
			}
			before := time.Now()
			if _, err := s.Handle(context.Background(), tt.req, "lan7", port); err != nil {
				t.Fatalf("Handle: %v", err)
			}
			after := time.Now()
			got := rec.take()
			if len(got) != len(tt.want) {
				t.Fatalf("the Binder heard %v, want %d calls: %+v", got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				c := got[i]
				var relay netip.Addr
				if w.relay != "" {
					relay = netip.MustParseAddr(w.relay)
				}
				if c.released != w.released || c.b.MAC.String() != plainMAC || c.b.Addr.String() != w.addr || c.b.Relay != relay {
					t.Errorf("call %d: %v, want released=%v %s %s relay %v", i, c, w.released, plainMAC, w.addr, relay)
				}
				if w.released {
					continue
				}
				if c.b.Interface != "lan7" {
					t.Errorf("binding on interface %q, want the one the request came in on (lan7)", c.b.Interface)
				}
				if c.b.Expires.Before(before.Add(tt.life)) || c.b.Expires.After(after.Add(tt.life)) {
					t.Errorf("binding expires %v after the request, want %v", c.b.Expires.Sub(before), tt.life)
				}
			}
		})
	}
}

// lease gives plainMAC the address addr in an authoritative server.
func lease(addr string) func(t *testing.T, s *Server) {
	return func(t *testing.T, s *Server) {
		t.Helper()
		ack, err := s.Handle(context.Background(), request(t, dhcpv4.MessageTypeRequest, "", selecting(addr, "10.80.0.1")), "lan7", 67)
		if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("leasing %s: %v %v", addr, err, ack)
		}
	}
}

// siteDHCP runs dnsmasq as the network's own DHCP server in the lab's
// server namespace, on the bridge beside the proxy: addresses only,
// keyed by client identifier, as most servers do.
func siteDHCP(t *testing.T, lab *netlab.Lab, first, last string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	cmd := lab.Command(lab.Server, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--interface=br0", "--bind-interfaces", "--no-ping", "--dhcp-range="+first+","+last+",255.255.255.0,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"),
		"--log-dhcp", "--log-facility="+log)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		// TERM, not KILL: dnsmasq writes its log when it exits.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("dnsmasq log:\n%s", b)
		}
	})
}

// TestRealClientsProxyBinding: dnsmasq leases addresses and the proxy
// only listens; what a real non-PXE client (the installer's own DHCP
// client) takes from dnsmasq is what the Binder hears, and a second
// lease of the same MAC under another client identifier is a second
// binding.
func TestRealClientsProxyBinding(t *testing.T) {
	netlab.Require(t, "udhcpc", "dhclient", "dnsmasq")
	lab := netlab.New(t, "10.80.0.0/24")
	// dnsmasq serves from the lab's first address; the proxy has one of
	// its own, so that the clients' REQUESTs name another server.
	lab.Run(lab.Server, "ip", "addr", "add", "10.80.0.2/24", "dev", "br0")
	siteDHCP(t, lab, "10.80.0.150", "10.80.0.199")
	cfg := testConfig(Proxy, "")
	cfg.ServerIP = netip.MustParseAddr("10.80.0.2")
	rec := &recorder{}
	cfg.Binder = rec
	startInLab(t, lab, cfg)

	c := lab.Client(plainMAC)
	first := runUdhcpc(t, lab, c)
	if first["serverid"] != "10.80.0.1" || !strings.HasPrefix(first["ip"], "10.80.0.1") {
		t.Fatalf("udhcpc got %v, want a lease from dnsmasq (10.80.0.1)", first)
	}
	t.Logf("udhcpc took %s from dnsmasq", first["ip"])
	b := rec.waitBound(t, plainMAC, first["ip"])
	if b.Interface != "br0" || b.Relay.IsValid() {
		t.Errorf("binding %+v, want on br0 and not relayed", b)
	}
	if life := time.Until(b.Expires); life < time.Hour || life > 2*time.Hour {
		t.Errorf("binding lives %v, want about the proxy binding time (2h)", life)
	}

	// The same machine again under another client identifier, as a
	// second DHCP client on it would be (iPXE, then the installer's):
	// dnsmasq gives it another address.
	second := runUdhcpc(t, lab, c, "-x", "0x3d:ff0000000000000000000002")
	if second["ip"] == "" || second["ip"] == first["ip"] {
		t.Fatalf("second client identifier got %v, want an address other than %s", second, first["ip"])
	}
	t.Logf("udhcpc with another client identifier took %s", second["ip"])
	rec.waitBound(t, plainMAC, second["ip"])

	t.Run("dhclient", func(t *testing.T) {
		const mac = "52:54:00:00:00:5b"
		c := lab.Client(mac)
		dir := t.TempDir()
		out := filepath.Join(dir, "env")
		script := writeScript(t, "#!/bin/sh\ncase $reason in BOUND) echo \"$new_ip_address\" > "+out+";; esac\nexit 0\n")
		pid := filepath.Join(dir, "pid")
		if b, err := lab.Command(c, "dhclient", "-1", "-v", "-sf", script, "-lf", filepath.Join(dir, "lease"), "-pf", pid, "eth0").CombinedOutput(); err != nil {
			t.Fatalf("dhclient: %v\n%s", err, b)
		}
		// -x stops the daemon that dhclient leaves without a RELEASE.
		t.Cleanup(func() { _ = lab.Command(c, "dhclient", "-x", "-pf", pid).Run() })
		ip, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		rec.waitBound(t, mac, strings.TrimSpace(string(ip)))
	})

	// Nothing but what the clients took was bound.
	taken := map[string]bool{first["ip"]: true, second["ip"]: true}
	for _, c := range rec.take() {
		if c.released || (c.b.MAC.String() == plainMAC && !taken[c.b.Addr.String()]) || !strings.HasPrefix(c.b.Addr.String(), "10.80.0.1") {
			t.Errorf("unexpected %v", c)
		}
	}
}
