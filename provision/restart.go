package provision

import (
	"context"
	"errors"

	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// markInterrupted fails the installs that a previous run of this server
// (server id self) left half done: those machines are neither installed
// nor still installing, and nothing will finish them. An install with
// no claim counts as this server's (a store written before claims, or a
// single server). An install claimed by another server is that server's
// to finish; if it stopped, its claim lapses and the reaper (claims.go)
// fails the install. It is restart policy, so it lives here; the store
// only gives the primitives (Machines, ClaimOf, Transition, Release).
func markInterrupted(ctx context.Context, st store.Store, self string) (int, error) {
	recs, err := st.Machines(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range recs {
		if !installing(m) {
			continue
		}
		c, err := st.ClaimOf(ctx, m.MAC)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return n, err
		case c.Server != self:
			continue
		}
		where := m.Phase
		if where == "" {
			where = string(m.State)
		}
		msg := "interrupted: server restarted during " + where
		if err := st.Transition(ctx, m.MAC, store.StateFailed, m.Phase, msg, msg); err != nil {
			return n, err
		}
		if _, err := st.Release(ctx, m.MAC, self); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
