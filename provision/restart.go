package provision

import (
	"context"

	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// markInterrupted fails every install that a previous server run left
// half done: those machines are neither installed nor still installing,
// and nothing will finish them. It is restart policy, so it lives here;
// the store only gives the primitives (Machines, Transition).
func markInterrupted(ctx context.Context, st store.Store) (int, error) {
	recs, err := st.Machines(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range recs {
		if m.State != store.StateInstallerUp && m.State != store.StateInstalling {
			continue
		}
		// A discovered machine (no profile) waits in installer-up with
		// no install running: a restart cut nothing off.
		if m.State == store.StateInstallerUp && m.Profile == "" {
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
		n++
	}
	return n, nil
}
