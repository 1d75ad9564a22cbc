package dhcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/privfile"
)

// offerHold is how long an offered address stays set aside for the
// client that was offered it, waiting for its REQUEST.
const offerHold = 60 * time.Second

// declineHold keeps an address that a client found in use (DECLINE) out
// of the pool for a while: something else on the segment owns it.
const declineHold = 10 * time.Minute

// Lease is one address bound to one MAC.
type Lease struct {
	MAC    string     `json:"mac"`
	IP     netip.Addr `json:"ip"`
	Expiry time.Time  `json:"expiry"`
}

// pool hands out addresses from a range, honours reservations, and
// persists bound leases to a file so a restart keeps them.
type pool struct {
	mu           sync.Mutex
	start, end   netip.Addr
	reservations map[string]netip.Addr // mac → ip
	reservedIPs  map[netip.Addr]string
	byMAC        map[string]*Lease
	byIP         map[netip.Addr]*Lease
	declined     map[netip.Addr]time.Time
	// next is where the search for a free address starts: one past
	// the last address it found. Scanning from the start of the range
	// each time costs a map lookup per address already leased, which
	// capped a pool with thousands of leases at about 1000 new clients
	// a second (docs/BENCHMARKS.md, Kea); Kea's default allocator
	// iterates the same way.
	next netip.Addr
	file string
	now  func() time.Time
	// flush, while a flusher runs (Serve), asks it to write the lease
	// file; without one, every change is written at once.
	flush chan struct{}
}

func newPool(start, end netip.Addr, reservations map[string]netip.Addr, file string) (*pool, error) {
	p := &pool{
		start: start, end: end, reservations: reservations,
		reservedIPs: map[netip.Addr]string{}, byMAC: map[string]*Lease{}, byIP: map[netip.Addr]*Lease{},
		declined: map[netip.Addr]time.Time{}, file: file, now: time.Now,
	}
	for mac, ip := range reservations {
		p.reservedIPs[ip] = mac
	}
	if file == "" {
		return p, nil
	}
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease file: %w", err)
	}
	var leases []Lease
	if err := json.Unmarshal(data, &leases); err != nil {
		return nil, fmt.Errorf("lease file %s: %w (move it away to start with no leases)", file, err)
	}
	for i := range leases {
		l := leases[i]
		// Leases that ran out, or whose address the config no longer
		// lets this MAC have (range or reservations changed), are
		// dropped rather than handed out again.
		if !l.IP.IsValid() || p.now().After(l.Expiry) || !p.usable(l.IP, l.MAC) || p.byIP[l.IP] != nil {
			continue
		}
		p.byMAC[l.MAC] = &l
		p.byIP[l.IP] = &l
	}
	return p, nil
}

// setReservations switches to new reservations and drops the leases
// that they make unusable; an error is only about writing the lease
// file, after the switch.
func (p *pool) setReservations(res map[string]netip.Addr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reservations = res
	p.reservedIPs = make(map[netip.Addr]string, len(res))
	for mac, ip := range res {
		p.reservedIPs[ip] = mac
	}
	dropped := false
	for mac, l := range p.byMAC {
		if !p.usable(l.IP, mac) {
			delete(p.byMAC, mac)
			if p.byIP[l.IP] == l {
				delete(p.byIP, l.IP)
			}
			dropped = true
		}
	}
	if !dropped {
		return nil
	}
	return p.persist()
}

func (p *pool) inRange(ip netip.Addr) bool {
	return ip.IsValid() && p.start.Compare(ip) <= 0 && ip.Compare(p.end) <= 0
}

// usable reports whether ip may be given to mac now.
func (p *pool) usable(ip netip.Addr, mac string) bool {
	if owner, ok := p.reservedIPs[ip]; ok {
		return owner == mac
	}
	// A MAC with a reservation gets that address alone: a client that
	// renews another one (its reservation is new or changed) is refused
	// and comes back for its reservation.
	if r, ok := p.reservations[mac]; ok && r != ip {
		return false
	}
	if !p.inRange(ip) {
		return false
	}
	if until, ok := p.declined[ip]; ok && p.now().Before(until) {
		return false
	}
	if l, ok := p.byIP[ip]; ok && l.MAC != mac && p.now().Before(l.Expiry) {
		return false
	}
	return true
}

// free returns the first address usable by mac from next on, wrapping
// around at the end of the range once, or an invalid Addr when the
// range is full; the caller holds p.mu.
func (p *pool) free(mac string) netip.Addr {
	from := p.next
	if !p.inRange(from) {
		from = p.start
	}
	for ip := from; ip.IsValid() && ip.Compare(p.end) <= 0; ip = ip.Next() {
		if p.usable(ip, mac) {
			p.next = ip.Next()
			return ip
		}
	}
	for ip := p.start; ip.IsValid() && ip.Compare(from) < 0; ip = ip.Next() {
		if p.usable(ip, mac) {
			p.next = ip.Next()
			return ip
		}
	}
	return netip.Addr{}
}

// offer picks an address for mac: its reservation, its current lease,
// the address it asks for, or the first free one; and holds it briefly.
func (p *pool) offer(mac string, requested netip.Addr) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pick := netip.Addr{}
	switch {
	case p.reservations[mac].IsValid():
		pick = p.reservations[mac]
	case p.byMAC[mac] != nil && p.usable(p.byMAC[mac].IP, mac):
		pick = p.byMAC[mac].IP
	case requested.IsValid() && p.usable(requested, mac):
		pick = requested
	default:
		pick = p.free(mac)
	}
	if !pick.IsValid() {
		return pick, false
	}
	if l := p.byMAC[mac]; l == nil || l.IP != pick || l.Expiry.Before(p.now().Add(offerHold)) {
		p.bind(mac, pick, offerHold)
	}
	return pick, true
}

// bind records mac's lease of ip for d; the caller holds p.mu.
func (p *pool) bind(mac string, ip netip.Addr, d time.Duration) {
	if old := p.byMAC[mac]; old != nil && p.byIP[old.IP] == old {
		delete(p.byIP, old.IP)
	}
	if prev := p.byIP[ip]; prev != nil && prev.MAC != mac {
		// The address's earlier holder let its lease run out (usable
		// checked that); it must not keep a record of the address, or
		// a later rebind of that MAC would drop this new lease.
		delete(p.byMAC, prev.MAC)
	}
	l := &Lease{MAC: mac, IP: ip, Expiry: p.now().Add(d)}
	p.byMAC[mac] = l
	p.byIP[ip] = l
}

// ack confirms mac's REQUEST for ip; false means NAK.
func (p *pool) ack(mac string, ip netip.Addr, d time.Duration) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.usable(ip, mac) {
		return false, nil
	}
	p.bind(mac, ip, d)
	return true, p.persist()
}

// release frees mac's lease of ip.
func (p *pool) release(mac string, ip netip.Addr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.byMAC[mac]; l != nil && (l.IP == ip || !ip.IsValid()) {
		delete(p.byMAC, mac)
		delete(p.byIP, l.IP)
	}
	return p.persist()
}

// decline takes ip out of the pool for declineHold, if mac may say
// that it is in use: ip is in the range and is the address this MAC was
// offered or holds now. Anything else is a stranger's claim (anyone can
// send a DECLINE with any MAC and any address) and changes nothing, so
// spoofed DECLINEs can neither empty the pool nor grow the declined set,
// which never holds more than the range and is pruned here.
func (p *pool) decline(mac string, ip netip.Addr) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	l := p.byMAC[mac]
	if !p.inRange(ip) || l == nil || l.IP != ip || !now.Before(l.Expiry) {
		return false, nil
	}
	for a, until := range p.declined {
		if !now.Before(until) {
			delete(p.declined, a)
		}
	}
	p.declined[ip] = now.Add(declineHold)
	delete(p.byMAC, mac)
	delete(p.byIP, ip)
	return true, p.persist()
}

// declinedCount is the size of the declined set, for tests.
func (p *pool) declinedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.declined)
}

// lookup returns mac's current lease.
func (p *pool) lookup(mac string) (Lease, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.byMAC[mac]
	if l == nil || p.now().After(l.Expiry) {
		return Lease{}, false
	}
	return *l, true
}

// persist has the lease file written; the caller holds p.mu. Under
// load, writing (and fsyncing) the whole file on every ACK would make
// the disk the pace of DHCP: while Serve runs, a flusher coalesces the
// writes instead, at most one per flushEvery, and writes a last time
// when Serve ends. A crash can lose the leases of that last moment;
// their clients keep their addresses and REQUEST them again.
func (p *pool) persist() error {
	if p.flush == nil {
		return p.save()
	}
	select {
	case p.flush <- struct{}{}:
	default: // a write is already pending
	}
	return nil
}

// flushEvery bounds how often the flusher writes the lease file.
const flushEvery = 200 * time.Millisecond

// runFlusher writes the lease file when asked until ctx is done, then
// once more, and returns.
func (p *pool) runFlusher(ctx context.Context, onErr func(error)) {
	p.mu.Lock()
	p.flush = make(chan struct{}, 1)
	p.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.flush = nil
			err := p.save()
			p.mu.Unlock()
			if err != nil {
				onErr(err)
			}
			return
		case <-p.flush:
			// Only the copy is made under the lock: encoding and
			// writing thousands of leases there held up every packet
			// for as long. This goroutine is the only writer while
			// p.flush is set.
			p.mu.Lock()
			leases := p.current()
			p.mu.Unlock()
			if err := p.write(leases); err != nil {
				onErr(err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(flushEvery):
			}
		}
	}
}

// save writes the bound leases to the lease file atomically, mode 0600;
// the caller holds p.mu.
func (p *pool) save() error {
	return p.write(p.current())
}

// current copies the leases in force; the caller holds p.mu.
func (p *pool) current() []Lease {
	leases := make([]Lease, 0, len(p.byMAC))
	now := p.now()
	for _, l := range p.byMAC {
		if now.Before(l.Expiry) {
			leases = append(leases, *l)
		}
	}
	return leases
}

// write writes leases to the lease file atomically, mode 0600.
func (p *pool) write(leases []Lease) error {
	if p.file == "" {
		return nil
	}
	data, err := json.MarshalIndent(leases, "", "  ")
	if err != nil {
		return err
	}
	if err := privfile.Write(p.file, data); err != nil {
		return fmt.Errorf("saving leases: %w (is the state directory writable?)", err)
	}
	return nil
}
