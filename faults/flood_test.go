package faults

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// Bounds on what a flood may cost serve, from issue 11: memory (the
// growth of the peak resident set) and the state database with its WAL.
// Handling 200k DISCOVERs from one MAC, which leaves nothing to
// remember, raised the peak by 8 MiB (garbage between collections);
// remembering every spoofed MAC or address raised it by 18 to 30 MiB.
// The memory bound sits between the two; the database may grow by a
// few hundred events' worth.
const (
	floodHWMBoundMB = 16
	floodDBBoundKB  = 2048
)

// Sizes of the floods.
const (
	declineFlood  = 200_000
	discoverFlood = 200_000
	bootFlood     = 20_000
)

// footprint is what serve holds at one moment.
type footprint struct {
	rssKB, hwmKB int64
	dbBytes      int64
}

func (f *fixture) footprint(t *testing.T) footprint {
	t.Helper()
	rss, hwm := f.memory(t)
	return footprint{rssKB: rss, hwmKB: hwm, dbBytes: f.dbSize(t)}
}

// growth logs the figures of a flood in the RELIABILITY form and fails
// t if they pass the bounds.
func growth(t *testing.T, fault string, before, after footprint, extra ...any) {
	t.Helper()
	hwm := after.hwmKB - before.hwmKB
	rss := after.rssKB - before.rssKB
	db := (after.dbBytes - before.dbBytes) / 1024
	reliability(t, fault, append([]any{"rss_growth_mb", mb(rss), "hwm_growth_mb", mb(hwm), "rss_after_mb", mb(after.rssKB),
		"db_growth_kb", db, "db_after_kb", after.dbBytes / 1024}, extra...)...)
	if hwm > floodHWMBoundMB*1024 {
		t.Errorf("%s: serve's peak memory grew by %s MiB, bound %d MiB", fault, mb(hwm), floodHWMBoundMB)
	}
	if db > floodDBBoundKB {
		t.Errorf("%s: the state database and WAL grew by %d KiB, bound %d KiB", fault, db, floodDBBoundKB)
	}
}

// randomMAC is a locally administered unicast MAC.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	for i := range m {
		m[i] = byte(rand.IntN(256))
	}
	m[0] = m[0]&^1 | 2
	return m
}

// dhcpFlood sends n packets that build makes from the other host on the
// bridge (from a static address that DHCP never gave), paced so that
// serve reads them rather than the kernel dropping them: after each
// batch it waits until serve counted them all or stopped counting. It
// returns how many serve counted, and fails t if fewer than half.
func (f *fixture) dhcpFlood(t *testing.T, n int, build func(i int) *dhcpv4.DHCPv4) int {
	t.Helper()
	const batch = 64
	f.lab.Run(f.other, "ip", "addr", "add", "10.86.0.250/24", "dev", "eth0")
	t.Cleanup(func() { _ = f.lab.Command(f.other, "ip", "addr", "flush", "dev", "eth0").Run() })
	var conn *net.UDPConn
	if err := netlab.Do(f.other, func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 86, 0, 250), Port: dhcpv4.ClientPort})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	server := &net.UDPAddr{IP: net.ParseIP(serverIP), Port: dhcpv4.ServerPort}
	const counter = "pxe_anywhere_dhcp_requests_total"
	base := f.metric(t, counter)
	counted := 0.0
	for sent := 0; sent < n; {
		for end := min(sent+batch, n); sent < end; sent++ {
			if _, err := conn.WriteToUDP(build(sent).ToBytes(), server); err != nil {
				t.Fatalf("sending packet %d: %v", sent, err)
			}
		}
		// Pacing, not a timing assertion: a count that stays put for a
		// few milliseconds means serve read all the kernel kept.
		for last := -1.0; counted < float64(sent) && counted != last; {
			last = counted
			time.Sleep(2 * time.Millisecond)
			counted = f.metric(t, counter) - base
		}
	}
	if counted < float64(n)/2 {
		t.Fatalf("serve counted %.0f of %d packets: the flood did not reach it", counted, n)
	}
	return int(counted)
}

// TestFloodDecline: 200k DHCP DECLINEs from random MACs that were never
// offered anything, a quarter of them for addresses in the pool, the
// rest for addresses anywhere. Serve's memory and database stay within
// bounds, the pool still leases to a new client, and the machine
// installs.
//
// Needs part A: a DECLINE counts only for an in-range address that
// this MAC was offered or holds; the declined set is bounded.
func TestFloodDecline(t *testing.T) {
	f := newFixture(t, options{server: floodServer, top: floodTop})
	if f == nil {
		return
	}
	before := f.footprint(t)
	start := time.Now()
	counted := f.dhcpFlood(t, declineFlood, func(i int) *dhcpv4.DHCPv4 {
		ip := net.IPv4(10, 86, byte(1+rand.IntN(254)), byte(1+rand.IntN(254)))
		if i%4 == 0 {
			ip = net.IPv4(10, 86, 0, byte(100+rand.IntN(51)))
		}
		p, err := dhcpv4.New(dhcpv4.WithHwAddr(randomMAC()), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(serverIP))))
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
	flood := time.Since(start)
	after := f.footprint(t)
	if ip, _, err := f.udhcpc(t, f.other, false); err != nil || !strings.HasPrefix(ip, "10.86.0.1") {
		t.Errorf("a new client after the DECLINE flood: %q %v (the pool must not be emptied by spoofed DECLINEs)", ip, err)
	}
	start = time.Now()
	f.install(t)
	growth(t, "decline-flood", before, after, "sent", declineFlood, "counted", counted, "flood_s", secs(flood), "install_after_s", secs(time.Since(start)))
	f.integrity(t)
}

// TestFloodDiscover: 200k PXE DISCOVERs from random MACs that the config
// does not know (unknown_machines: ignore, the default). Serve's memory
// and database stay within bounds and the machine installs.
//
// Needs part C: unknown-MAC tracking capped.
func TestFloodDiscover(t *testing.T) {
	f := newFixture(t, options{server: floodServer, top: floodTop})
	if f == nil {
		return
	}
	before := f.footprint(t)
	start := time.Now()
	counted := f.dhcpFlood(t, discoverFlood, func(i int) *dhcpv4.DHCPv4 {
		p, err := dhcpv4.NewDiscovery(randomMAC(), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")))
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
	flood := time.Since(start)
	after := f.footprint(t)
	start = time.Now()
	f.install(t)
	growth(t, "discover-flood", before, after, "sent", discoverFlood, "counted", counted, "flood_s", secs(flood), "install_after_s", secs(time.Since(start)))
	f.integrity(t)
}

// TestFloodBootRequests: 20k GET /boot/<MAC>.ipxe for the known
// machine from an address DHCP never gave it. Every one is refused (403,
// or 429 past the per-source limit); serve's memory and database stay
// within bounds, and the machine installs.
//
// Needs parts A (per-source limit on /boot) and C (events pruned to the
// last N per machine) for the database bound.
func TestFloodBootRequests(t *testing.T) {
	f := newFixture(t, options{server: floodServer, top: floodTop})
	if f == nil {
		return
	}
	f.lab.Run(f.other, "ip", "addr", "add", "10.86.0.66/24", "dev", "eth0")
	cfg := filepath.Join(f.dir, "flood.curl")
	var b strings.Builder
	for range bootFlood {
		fmt.Fprintf(&b, "url = \"%s%s\"\noutput = \"/dev/null\"\n", bootBase, scriptOf(macA))
	}
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	before := f.footprint(t)
	start := time.Now()
	out, err := f.lab.Command(f.other, "curl", "-s", "--max-time", "600", "-K", cfg, "-w", "%{http_code}\n").Output()
	if err != nil && len(out) == 0 {
		t.Fatalf("curl: %v", err)
	}
	flood := time.Since(start)
	codes := map[string]int{}
	for _, c := range strings.Fields(string(out)) {
		codes[c]++
	}
	after := f.footprint(t)
	if codes["403"]+codes["429"] != bootFlood {
		t.Errorf("answers to %d unbound script requests: %v, want only 403 and 429", bootFlood, codes)
	}
	start = time.Now()
	f.install(t)
	growth(t, "boot-flood", before, after, "sent", bootFlood, "http_403", codes["403"], "http_429", codes["429"], "flood_s", secs(flood), "install_after_s", secs(time.Since(start)))
	evs := f.events(t)
	for i := 1; i < len(evs); i++ {
		if evs[i].ID <= evs[i-1].ID {
			t.Fatalf("events out of order after the flood: %d then %d", evs[i-1].ID, evs[i].ID)
		}
	}
	if !strings.Contains(eventText(evs), "installed with profile web") {
		t.Fatalf("the install after the flood left no event:\n%s", tail(eventText(evs), 20))
	}
	f.integrity(t)
}
