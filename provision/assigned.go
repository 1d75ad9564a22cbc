package provision

import (
	"context"
	"errors"
	"maps"
	"sync/atomic"

	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// DHCP decides without the store: its loop answers one packet at a
// time, and a database that is slow or away must not hold up every
// machine's lease. What DHCP needs from the store, which MACs a rule or
// an operator assigned a profile, is kept here as a snapshot: read at
// start, again after each local change of an assignment, at each change
// another server makes (when the store notifies), and every sweep.

// assignedMACs is the snapshot: the MACs that have an assignment.
type assignedMACs struct {
	set atomic.Pointer[map[string]struct{}]
}

func (a *assignedMACs) has(mac string) bool {
	s := a.set.Load()
	if s == nil {
		return false
	}
	_, ok := (*s)[mac]
	return ok
}

// refreshAssigned reads the assignments from the store into the
// snapshot; on failure the old snapshot stays (and the next refresh
// tries again).
func (p *Provisioner) refreshAssigned(ctx context.Context) {
	// Read and stored under assignMu: an older read must not replace
	// a newer one.
	p.assignMu.Lock()
	defer p.assignMu.Unlock()
	all, err := p.store.Assignments(ctx)
	if err != nil {
		p.logLimited("assigned", "reading profile assignments for DHCP failed; DHCP keeps the ones read before", "err", err)
		return
	}
	s := make(map[string]struct{}, len(all))
	for mac := range all {
		s[mac] = struct{}{}
	}
	p.assigned.set.Store(&s)
}

// refreshAssignedMAC reads one machine's assignment into the snapshot,
// for a change that another server made to it.
func (p *Provisioner) refreshAssignedMAC(ctx context.Context, mac string) {
	p.assignMu.Lock()
	defer p.assignMu.Unlock()
	_, err := p.store.GetAssignment(ctx, mac)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return // the next sweep reads them all
	}
	if (err == nil) == p.assigned.has(mac) {
		return
	}
	s := map[string]struct{}{}
	if old := p.assigned.set.Load(); old != nil {
		s = maps.Clone(*old)
	}
	if err == nil {
		s[mac] = struct{}{}
	} else {
		delete(s, mac)
	}
	p.assigned.set.Store(&s)
}
