package provision

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// TestMarkInterrupted: installs that a server run left half done fail
// at the next start, and their claims go; installed machines, discovered
// machines that wait for a profile, and installs another server claimed
// (that server's to finish, or the reaper's) are left alone.
func TestMarkInterrupted(t *testing.T) {
	ctx := context.Background()
	s, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, mac := range []string{"52:54:00:00:00:10", "52:54:00:00:00:11", "52:54:00:00:00:12", "52:54:00:00:00:14"} {
		if _, err := s.UpsertMachine(ctx, mac, "", "p"); err != nil {
			t.Fatal(err)
		}
		_ = s.Transition(ctx, mac, store.StateBooting, "", "", "")
		_ = s.Transition(ctx, mac, store.StateInstallerUp, "", "", "")
	}
	_ = s.Transition(ctx, "52:54:00:00:00:11", store.StateInstalling, "disko", "", "")
	_ = s.Transition(ctx, "52:54:00:00:00:12", store.StateInstalling, "install", "", "")
	_ = s.Transition(ctx, "52:54:00:00:00:12", store.StateInstalled, "", "", "")
	// Discovered: no profile, its installer waits for one; nothing ran.
	discovered := "52:54:00:00:00:13"
	if _, err := s.UpsertMachine(ctx, discovered, "", ""); err != nil {
		t.Fatal(err)
	}
	for _, st := range []store.State{store.StateBooting, store.StateInstallerUp} {
		if err := s.Transition(ctx, discovered, st, "", "", ""); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.Transition(ctx, "52:54:00:00:00:14", store.StateInstalling, "disko", "", "")
	now := time.Now()
	if _, err := s.Claim(ctx, "52:54:00:00:00:11", "local", time.Minute, now); err != nil {
		t.Fatal(err)
	}
	// Lapsed, even: the reaper handles it, naming the other server.
	if _, err := s.Claim(ctx, "52:54:00:00:00:14", "other", time.Millisecond, now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	n, err := markInterrupted(ctx, s, "local")
	if err != nil || n != 2 {
		t.Fatalf("n=%d err=%v, want 2", n, err)
	}
	m, _ := s.Machine(ctx, "52:54:00:00:00:11")
	if m.State != store.StateFailed || m.Phase != "disko" || m.Error != "interrupted: server restarted during disko" {
		t.Fatalf("interrupted machine: %+v", m)
	}
	if _, err := s.ClaimOf(ctx, "52:54:00:00:00:11"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("own claim kept: %v", err)
	}
	if m, _ := s.Machine(ctx, "52:54:00:00:00:14"); m.State != store.StateInstalling {
		t.Fatalf("install claimed by another server touched: %+v", m)
	}
	if m, _ := s.Machine(ctx, "52:54:00:00:00:12"); m.State != store.StateInstalled {
		t.Fatalf("installed machine touched: %+v", m)
	}
	if m, _ := s.Machine(ctx, discovered); m.State != store.StateInstallerUp || m.Error != "" {
		t.Fatalf("discovered machine touched: %+v", m)
	}
}
