package provision

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// inventedMAC is the i-th of a flood of made-up, locally administered
// MACs.
func inventedMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x00, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
}

// TestUnknownMACFlood: 200k invented MACs through Decide under
// unknown_machines: ignore leave at most max_unknown_macs of them
// remembered, bounded memory, and one log line a minute that says how
// many were ignored.
func TestUnknownMACFlood(t *testing.T) {
	cfg := testConfig(t, "ignore")
	f := newFixture(t, cfg, "")
	var logs syncbuf.Buffer
	f.p.log = slog.New(slog.NewTextHandler(&logs, nil))
	f.p.limited = &lograte.Limiter{Log: f.p.log, Every: time.Minute}
	clock := time.Now()
	f.p.unknown.now = func() time.Time { return clock }
	ctx := context.Background()

	const flood = 200_000
	limit := cfg.Server.MaxUnknownMACs
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range flood {
		if d := f.p.Decide(ctx, dhcp.Machine{MAC: inventedMAC(i), Interface: "br0"}); d != dhcp.Ignore {
			t.Fatalf("unknown MAC %d: decision %v, want ignore", i, d)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := f.p.unknown.len(); n != limit {
		t.Errorf("%d unknown MACs remembered after %d, want the limit %d", n, flood, limit)
	}
	// What the server keeps is the limit's worth of MACs, a few hundred
	// KiB; without the limit 200k MACs took 11 MiB.
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 4<<20 {
		t.Errorf("heap grew by %d KiB over %d unknown MACs, want under 4 MiB", grew>>10, flood)
	}
	if n := strings.Count(logs.String(), "\n"); n != 1 || !strings.Contains(logs.String(), "mac="+inventedMAC(0).String()) {
		t.Fatalf("log after the flood, within a minute: %d lines, want the first MAC's alone:\n%.1000s", n, logs.String())
	}
	// A MAC still remembered is not new; one forgotten is.
	f.p.Decide(ctx, dhcp.Machine{MAC: inventedMAC(flood - 1)})
	f.p.Decide(ctx, dhcp.Machine{MAC: inventedMAC(0)})
	clock = clock.Add(unknownLogEvery)
	f.p.sweep(ctx)
	if !strings.Contains(logs.String(), fmt.Sprintf("not logged one by one\" count=%d", flood)) {
		t.Fatalf("a minute later the sweep should sum up %d MACs (199999 of the flood and a forgotten one):\n%.1000s", flood, logs.String())
	}
	f.p.sweep(ctx)
	if n := strings.Count(logs.String(), "\n"); n != 2 {
		t.Fatalf("log: %d lines, want 2 (nothing new to sum up):\n%s", n, logs.String())
	}
}

// TestDiscoverLimit: under unknown_machines: discover, invented MACs
// get machine rows up to max_discovered; beyond it a new MAC gets no
// boot and no row, the ones recorded still boot, and forgetting one
// makes room.
func TestDiscoverLimit(t *testing.T) {
	cfg := testConfig(t, "discover")
	cfg.Server.MaxDiscovered = 3
	f := newFixture(t, cfg, "")
	var logs syncbuf.Buffer
	f.p.log = slog.New(slog.NewTextHandler(&logs, nil))
	f.p.limited = &lograte.Limiter{Log: f.p.log, Every: time.Minute}
	ctx := context.Background()
	boot := func(i int) httpboot.BootPlan {
		t.Helper()
		m, addr := inventedMAC(i), netip.AddrFrom4([4]byte{10, 77, 1, byte(i)})
		f.p.Bound(ctx, dhcp.Binding{MAC: m, Addr: addr, Interface: "br0", Expires: time.Now().Add(time.Hour)})
		plan, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: m, RemoteAddr: addr})
		if err != nil {
			t.Fatalf("boot of invented MAC %d: %v", i, err)
		}
		return plan
	}
	const flood = 50
	for i := range flood {
		plan := boot(i)
		if want := map[bool]httpboot.Action{true: httpboot.ActionInstall, false: httpboot.ActionIgnore}[i < 3]; plan.Action != want {
			t.Fatalf("invented MAC %d: action %v, want %v", i, plan.Action, want)
		}
	}
	recs, err := f.store.Machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	discovered := 0
	for _, r := range recs {
		if r.Profile == "" {
			discovered++
		}
	}
	if discovered != 3 {
		t.Fatalf("%d discovered machines recorded after %d invented MACs, want the limit 3", discovered, flood)
	}
	if n := strings.Count(logs.String(), "discovery refused"); n != 1 {
		t.Errorf("discovery refused logged %d times, want once (a minute):\n%s", n, logs.String())
	}
	// A machine discovered already boots again at the limit.
	if plan := boot(1); plan.Action != httpboot.ActionInstall {
		t.Fatalf("recorded machine at the limit: action %v, want install", plan.Action)
	}
	if err := f.p.Forget(ctx, inventedMAC(0).String(), "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if plan := boot(10); plan.Action != httpboot.ActionInstall {
		t.Fatalf("after a forget: action %v, want install", plan.Action)
	}
	if _, err := f.store.Discover(ctx, inventedMAC(11).String(), 3); !errors.Is(err, store.ErrLimit) {
		t.Fatalf("store.Discover past the limit: %v, want ErrLimit", err)
	}
}

// TestRuleAssignLimit: a MAC-prefix rule matches any MAC a host invents;
// invented MACs that ask for their scripts at once get assignments up to
// max_discovered, and past it are refused with no machine row; forgetting
// one makes room.
func TestRuleAssignLimit(t *testing.T) {
	cfg := withRules(t, "ignore", "  - {match: {mac_prefix: \"02:00\"}, profile: web}\n")
	cfg.Server.MaxDiscovered = 3
	f := newFixture(t, cfg, "")
	ctx := context.Background()
	boot := func(i int) (httpboot.BootPlan, error) {
		m, addr := inventedMAC(i), netip.AddrFrom4([4]byte{10, 77, 2, byte(10 + i)})
		f.p.Decide(ctx, dhcp.Machine{MAC: m, Interface: "br0"}) // the PXE request, as DHCP asks
		f.p.Bound(ctx, dhcp.Binding{MAC: m, Addr: addr, Interface: "br0", Expires: time.Now().Add(time.Hour)})
		return f.p.Boot(ctx, httpboot.BootRequest{MAC: m, RemoteAddr: addr})
	}
	const n = 12
	plans, errs := make([]httpboot.BootPlan, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); plans[i], errs[i] = boot(i) }()
	}
	wg.Wait()
	installs := 0
	for i := range n {
		switch {
		case errs[i] == nil && plans[i].Action == httpboot.ActionInstall:
			installs++
		case errors.Is(errs[i], httpboot.ErrForbidden) && strings.Contains(errs[i].Error(), "server.max_discovered"):
		default:
			t.Fatalf("invented MAC %d: plan %v, err %v", i, plans[i].Action, errs[i])
		}
	}
	recs, err := f.store.Machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if installs != 3 || len(recs) != 3+1 { // and the listed machine
		t.Fatalf("%d invented MACs installing, %d machines recorded; want 3 and 3+1", installs, len(recs))
	}
	var assigned []string
	for _, r := range recs {
		if r.Profile == "web" && r.MAC != macA {
			assigned = append(assigned, r.MAC)
		}
	}
	if len(assigned) != 3 {
		t.Fatalf("assigned by the rule: %v, want 3", assigned)
	}
	if err := f.p.Forget(ctx, assigned[0], "operator (API)"); err != nil {
		t.Fatal(err)
	}
	// The room goes to the first MAC that asks (the forgotten one
	// too, now as new), and to one only.
	var took []string
	for i := range n {
		m := inventedMAC(i).String()
		if plan, err := boot(i); err == nil && plan.Action == httpboot.ActionInstall && !slices.Contains(assigned[1:], m) {
			took = append(took, m)
		}
	}
	if len(took) != 1 {
		t.Fatalf("after a forget, new MACs assigned: %v, want one", took)
	}
}

// TestSweepPrunes: the minute's sweep applies server.keep_boots and
// server.keep_events, and the machine's live boot survives it.
func TestSweepPrunes(t *testing.T) {
	cfg := testConfig(t, "ignore")
	cfg.Server.KeepBoots, cfg.Server.KeepEvents = 2, 10
	f := newFixture(t, cfg, "")
	ctx := context.Background()
	var tokens []string
	for range 15 {
		tokens = append(tokens, f.boot(t, macA).Token)
	}
	token := tokens[14]
	f.p.sweep(ctx)
	evs, err := f.store.Events(ctx, macA, 0, 1000)
	if err != nil || len(evs) != 10 {
		t.Fatalf("events after the sweep: %d, %v; want 10", len(evs), err)
	}
	if b, err := f.store.LatestBoot(ctx, macA); err != nil || b.Token != token {
		t.Fatalf("latest boot after the sweep: %v; want the live one", err)
	}
	// The store keeps 2 boots of 15: the live one and the newest voided.
	if _, err := f.store.BootByToken(ctx, tokens[13]); err != nil {
		t.Errorf("second newest boot: %v, want it kept", err)
	}
	if _, err := f.store.BootByToken(ctx, tokens[12]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("third newest boot: %v, want it pruned", err)
	}
	f.initrd(t, macA, token) // the live boot still works
	if err := f.p.Callback(ctx, token, ipOf(macA), netip.Addr{}); err != nil {
		t.Fatalf("callback of the live boot after the sweep: %v", err)
	}
}
