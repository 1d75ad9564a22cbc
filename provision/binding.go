package provision

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// Limits of the binding table: DHCP packets are unauthenticated, so
// what they can make the server keep is bounded.
const (
	maxBoundMACs     = 4096 // machines with live bindings
	maxAddrsPerMAC   = 8    // addresses per machine (iPXE, the installer, renewals)
	bindingSaveSlack = time.Minute
)

// bound is one address DHCP saw a machine hold.
type bound struct {
	via     string
	seen    time.Time // the last DHCP exchange that bound it
	expires time.Time
	saved   time.Time // the expiry last written to the store
}

// bindingTable is every live binding, by MAC, with the store as its
// copy across restarts. The boot side asks it whether an address may
// speak for a machine.
type bindingTable struct {
	mu     sync.Mutex
	byMAC  map[string]map[netip.Addr]*bound
	byAddr map[netip.Addr]string // the MAC that last took each address
	now    func() time.Time
}

func newBindingTable() *bindingTable {
	return &bindingTable{byMAC: map[string]map[netip.Addr]*bound{}, byAddr: map[netip.Addr]string{}, now: time.Now}
}

// put records a binding. It returns whether the store needs writing,
// the MAC that held the same address before (a conflict, or ""), and
// false in ok when the table is full.
func (t *bindingTable) put(mac string, a netip.Addr, via string, seen, expires time.Time) (save bool, other string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	addrs := t.byMAC[mac]
	if addrs == nil {
		if len(t.byMAC) >= maxBoundMACs {
			t.expireLocked(now)
		}
		if len(t.byMAC) >= maxBoundMACs {
			return false, "", false
		}
		addrs = map[netip.Addr]*bound{}
		t.byMAC[mac] = addrs
	}
	if prev, held := t.byAddr[a]; held && prev != mac {
		if pb := t.byMAC[prev][a]; pb != nil && now.Before(pb.expires) {
			other = prev
		}
	}
	b := addrs[a]
	if b == nil {
		if len(addrs) >= maxAddrsPerMAC {
			t.dropSoonestLocked(mac, addrs)
		}
		b = &bound{}
		addrs[a] = b
	}
	save = b.via != via || expires.Sub(b.saved) > bindingSaveSlack
	b.via, b.seen, b.expires = via, seen, expires
	if save {
		b.saved = expires
	}
	t.byAddr[a] = mac
	return save, other, true
}

// dropSoonestLocked makes room for one more address of mac.
func (t *bindingTable) dropSoonestLocked(mac string, addrs map[netip.Addr]*bound) {
	var soonest netip.Addr
	for a, b := range addrs {
		if !soonest.IsValid() || b.expires.Before(addrs[soonest].expires) {
			soonest = a
		}
	}
	delete(addrs, soonest)
	if t.byAddr[soonest] == mac {
		delete(t.byAddr, soonest)
	}
}

func (t *bindingTable) remove(mac string, a netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if addrs := t.byMAC[mac]; addrs != nil {
		delete(addrs, a)
		if len(addrs) == 0 {
			delete(t.byMAC, mac)
		}
	}
	if t.byAddr[a] == mac {
		delete(t.byAddr, a)
	}
}

// forget drops every binding of mac.
func (t *bindingTable) forget(mac string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for a := range t.byMAC[mac] {
		if t.byAddr[a] == mac {
			delete(t.byAddr, a)
		}
	}
	delete(t.byMAC, mac)
}

func (t *bindingTable) expireLocked(now time.Time) {
	for mac, addrs := range t.byMAC {
		for a, b := range addrs {
			if !now.Before(b.expires) {
				delete(addrs, a)
				if t.byAddr[a] == mac {
					delete(t.byAddr, a)
				}
			}
		}
		if len(addrs) == 0 {
			delete(t.byMAC, mac)
		}
	}
}

// lookup returns mac's binding of a, if it lives.
func (t *bindingTable) lookup(mac string, a netip.Addr) (bound, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.byMAC[mac][a.Unmap()]
	if b == nil || !t.now().Before(b.expires) {
		return bound{}, false
	}
	return *b, true
}

// addrs lists mac's live bound addresses, for messages.
func (t *bindingTable) addrs(mac string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var out []string
	for a, b := range t.byMAC[mac] {
		if now.Before(b.expires) {
			out = append(out, a.String())
		}
	}
	sort.Strings(out)
	return out
}

// via names where DHCP saw a binding: the interface, or the relay.
func via(b dhcp.Binding) string {
	if b.Relay.IsValid() {
		return "relay " + b.Relay.String()
	}
	return b.Interface
}

// wantsBinding reports whether a MAC's bindings are worth keeping: the
// machine is in the config, unknown machines are booted to be
// discovered, or a rule let DHCP boot it (its context is kept, bounded,
// since Decide). Other MACs are never answered with a boot.
func (p *Provisioner) wantsBinding(b dhcp.Binding) bool {
	cfg := p.cfg.Load()
	if cfg.MachineByMAC(b.MAC) != nil || cfg.Server.UnknownMachines == profiles.UnknownDiscover {
		return true
	}
	_, ok := p.contexts.get(b.MAC.String())
	return ok
}

// bindingWriteTimeout bounds each store write that DHCP's loop makes
// for a binding: a binding is saved before its ACK goes out, so that a
// restarted server still knows it, but a store that hangs (a database
// behind a broken network) must not hold up every lease for minutes.
// A write that runs out leaves the binding in memory only (logged).
const bindingWriteTimeout = 3 * time.Second

// Bound implements dhcp.Binder: DHCP saw b.MAC take b.Addr.
func (p *Provisioner) Bound(ctx context.Context, b dhcp.Binding) {
	if !p.wantsBinding(b) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bindingWriteTimeout)
	defer cancel()
	mac := b.MAC.String()
	a := b.Addr.Unmap()
	now := time.Now()
	save, other, ok := p.bindings.put(mac, a, via(b), now, b.Expires)
	if !ok {
		p.logLimited("binding-table-full", "binding table full: a DHCP binding was not recorded, so that machine's boot requests will be refused", "mac", mac, "ip", a.String(), "limit", maxBoundMACs)
		return
	}
	if save {
		if err := p.store.SaveBinding(ctx, store.BootBinding{MAC: mac, Addr: a.String(), Via: via(b), Seen: now, Expires: b.Expires}); err != nil {
			p.log.Warn("saving a DHCP binding failed; it lives until the server stops", "mac", mac, "ip", a.String(), "err", err)
		}
		p.log.Debug("DHCP binding", "mac", mac, "ip", a.String(), "via", via(b), "expires", b.Expires.Format(time.RFC3339))
	}
	if other != "" {
		msg := fmt.Sprintf("address conflict: DHCP saw %s take %s, which %s held too: one of them may be impersonating the other", mac, a, other)
		p.securityEvent(ctx, mac, msg)
		p.securityEvent(ctx, other, msg)
	}
}

// Released implements dhcp.Binder: the binding ended early.
func (p *Provisioner) Released(ctx context.Context, b dhcp.Binding) {
	mac := b.MAC.String()
	a := b.Addr.Unmap()
	if _, ok := p.bindings.lookup(mac, a); !ok {
		return
	}
	p.bindings.remove(mac, a)
	ctx, cancel := context.WithTimeout(ctx, bindingWriteTimeout)
	defer cancel()
	if err := p.store.DeleteBinding(ctx, mac, a.String()); err != nil {
		p.log.Warn("deleting a DHCP binding failed", "mac", mac, "ip", a.String(), "err", err)
	}
}

// loadBindings fills the table from the store at start: a restart
// must not make the machines that are booting strangers.
func (p *Provisioner) loadBindings(ctx context.Context) error {
	saved, err := p.store.Bindings(ctx, time.Now())
	if err != nil {
		return err
	}
	for _, b := range saved {
		a, err := netip.ParseAddr(b.Addr)
		if err != nil {
			continue
		}
		p.bindings.put(b.MAC, a, b.Via, b.Seen, b.Expires)
	}
	return nil
}
