package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// TestOperatorViews: what the status pages read of a real store. The
// latest boot shows a fingerprint of its token, never the token; the
// phase history holds the phases that ended well; an action's events
// name who asked, and become the machine's last event.
func TestOperatorViews(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), filepath.Join(t.TempDir(), "state.db"))
	plan := f.boot(t, macA)
	f.up(t, macA, plan.Token)
	waitState(t, f, macA, store.StateInstalled)

	b, err := f.p.LatestBoot(ctx, macA)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(plan.Token))
	if b.TokenFingerprint != hex.EncodeToString(sum[:4]) || !strings.HasPrefix(b.HostKey, "SHA256:") || b.UsedAt == nil {
		t.Fatalf("latest boot %+v: want the token's sha256 prefix, the host key's fingerprint, used", b)
	}
	if strings.Contains(b.TokenFingerprint+b.HostKey, plan.Token) {
		t.Fatal("the boot view carries the token")
	}

	h, err := f.p.PhaseHistory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 1 || len(h["disko"]) != 1 || h["disko"][0] != time.Millisecond {
		t.Fatalf("phase history %v, want disko's one run of 1ms", h)
	}

	by := "operator (web, 192.0.2.7)"
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	updates := f.p.Subscribe(sctx)
	if err := f.p.Reinstall(ctx, macA, by); err != nil {
		t.Fatal(err)
	}
	// The status page's stream carries the new last event too.
	if u := <-updates; u.MAC != macA || u.LastEvent == nil || !strings.Contains(u.LastEvent.Message, by) {
		t.Fatalf("published %+v: want %s with the reinstall as its last event", u, macA)
	}
	if evs := f.events(t, macA); !strings.Contains(evs, "reinstall requested by "+by+": the next PXE boot installs again") {
		t.Fatalf("events do not name who asked:\n%s", evs)
	}
	ms, err := f.p.Machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var last *admin.EventView
	for _, m := range ms {
		if m.MAC == macA {
			last = m.LastEvent
		}
	}
	if last == nil || !strings.Contains(last.Message, by) {
		t.Fatalf("machines %+v: want the reinstall as %s's last event", ms, macA)
	}
	m, err := f.p.Machine(ctx, macA)
	if err != nil || m.LastEvent == nil || m.LastEvent.ID != last.ID {
		t.Fatalf("machine %+v %v: want the same last event", m, err)
	}
}
