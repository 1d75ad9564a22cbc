package profiles

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openTestStore(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenStore(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestStorePersistsAcrossReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openTestStore(t)
	if _, err := s.UpsertMachine(ctx, "52:54:00:AA:00:01", "web-01", "web"); err != nil {
		t.Fatal(err)
	}
	if err := s.Transition(ctx, "52:54:00:aa:00:01", StateBooting, "", "", "booted"); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendLog(ctx, "52:54:00:aa:00:01", "one", "two"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("database mode %o, want 600", st.Mode().Perm())
	}
	s2, err := OpenStore(ctx, path)
	if err != nil {
		t.Fatalf("reopen (migrations must be idempotent): %v", err)
	}
	defer s2.Close()
	m, err := s2.Machine(ctx, "52:54:00:aa:00:01")
	if err != nil {
		t.Fatal(err)
	}
	if m.State != StateBooting || m.Hostname != "web-01" || m.Profile != "web" {
		t.Fatalf("after reopen: %+v", m)
	}
	lines, err := s2.Log(ctx, m.MAC, 0, 10)
	if err != nil || len(lines) != 2 || lines[1].Line != "two" {
		t.Fatalf("log after reopen: %v %v", lines, err)
	}
	evs, err := s2.Events(ctx, m.MAC, 0, 10)
	if err != nil || len(evs) != 1 || evs[0].Message != "booted" || evs[0].State != StateBooting {
		t.Fatalf("events after reopen: %+v %v", evs, err)
	}
}

func TestStoreTransitions(t *testing.T) {
	tests := []struct {
		name string
		path []State
		ok   bool
	}{
		{"full install", []State{StateBooting, StateInstallerUp, StateInstalling, StateInstalling, StateInstalled}, true},
		{"fail from anywhere", []State{StateBooting, StateInstallerUp, StateFailed}, true},
		{"retry after failure", []State{StateBooting, StateFailed, StateBooting}, true},
		{"installed boots again", []State{StateBooting, StateInstallerUp, StateInstalling, StateInstalled, StateBooting}, true},
		{"no skipping the installer", []State{StateBooting, StateInstalling}, false},
		{"new is not installed", []State{StateInstalled}, false},
		{"installer-up is not installed", []State{StateBooting, StateInstallerUp, StateInstalled}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s, _ := openTestStore(t)
			if _, err := s.UpsertMachine(ctx, "52:54:00:00:00:01", "h", "p"); err != nil {
				t.Fatal(err)
			}
			var err error
			for _, st := range tt.path {
				if err = s.Transition(ctx, "52:54:00:00:00:01", st, "", "", "to "+string(st)); err != nil {
					break
				}
			}
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestStoreUseTokenOnce(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t)
	if _, err := s.UpsertMachine(ctx, "52:54:00:00:00:02", "h", "p"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateBoot(ctx, Boot{Token: "tok", MAC: "52:54:00:00:00:02", IP: "10.0.0.5", HostKeyPublic: "ssh-ed25519 AAAA", HostKeyPrivate: []byte("secret"), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, used := 0, 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UseToken(ctx, "tok")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, ErrTokenUsed):
				used++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || used != 19 {
		t.Fatalf("wins=%d used=%d, want exactly one winner", wins, used)
	}
	if _, err := s.UseToken(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown token: %v", err)
	}
	m, _ := s.Machine(ctx, "52:54:00:00:00:02")
	if m.IP != "10.0.0.5" {
		t.Fatalf("boot did not record the IP: %+v", m)
	}
}

func TestStoreMarkInterrupted(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t)
	for _, mac := range []string{"52:54:00:00:00:10", "52:54:00:00:00:11", "52:54:00:00:00:12"} {
		if _, err := s.UpsertMachine(ctx, mac, "", "p"); err != nil {
			t.Fatal(err)
		}
		_ = s.Transition(ctx, mac, StateBooting, "", "", "")
		_ = s.Transition(ctx, mac, StateInstallerUp, "", "", "")
	}
	_ = s.Transition(ctx, "52:54:00:00:00:11", StateInstalling, "disko", "", "")
	_ = s.Transition(ctx, "52:54:00:00:00:12", StateInstalling, "install", "", "")
	_ = s.Transition(ctx, "52:54:00:00:00:12", StateInstalled, "", "", "")
	// Discovered: no profile, its installer waits for one; nothing ran.
	discovered := "52:54:00:00:00:13"
	if _, err := s.UpsertMachine(ctx, discovered, "", ""); err != nil {
		t.Fatal(err)
	}
	for _, st := range []State{StateBooting, StateInstallerUp} {
		if err := s.Transition(ctx, discovered, st, "", "", ""); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.MarkInterrupted(ctx)
	if err != nil || n != 2 {
		t.Fatalf("n=%d err=%v, want 2", n, err)
	}
	m, _ := s.Machine(ctx, "52:54:00:00:00:11")
	if m.State != StateFailed || m.Phase != "disko" || m.Error != "interrupted: server restarted during disko" {
		t.Fatalf("interrupted machine: %+v", m)
	}
	if m, _ := s.Machine(ctx, "52:54:00:00:00:12"); m.State != StateInstalled {
		t.Fatalf("installed machine touched: %+v", m)
	}
	if m, _ := s.Machine(ctx, discovered); m.State != StateInstallerUp || m.Error != "" {
		t.Fatalf("discovered machine touched: %+v", m)
	}
}

func TestStoreReinstallAndForget(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t)
	mac := "52:54:00:00:00:20"
	if _, err := s.UpsertMachine(ctx, mac, "", "p"); err != nil {
		t.Fatal(err)
	}
	if err := s.RequestReinstall(ctx, mac); err != nil {
		t.Fatal(err)
	}
	if m, _ := s.Machine(ctx, mac); !m.Reinstall {
		t.Fatal("reinstall flag not set")
	}
	for _, st := range []State{StateBooting, StateInstallerUp, StateInstalling, StateInstalled} {
		if err := s.Transition(ctx, mac, st, "", "", ""); err != nil {
			t.Fatal(err)
		}
	}
	if m, _ := s.Machine(ctx, mac); m.Reinstall {
		t.Fatal("installing did not clear the reinstall flag")
	}
	if err := s.Forget(ctx, mac); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Machine(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("forgotten machine still there: %v", err)
	}
	if evs, _ := s.Events(ctx, mac, 0, 10); len(evs) != 0 {
		t.Fatalf("events left behind: %v", evs)
	}
	if err := s.RequestReinstall(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reinstall of unknown machine: %v", err)
	}
}

// Two servers (or a server and `machines list`) may open a fresh
// database at the same moment: exactly one migrates, and the others
// see its schema instead of creating the tables a second time.
func TestStoreConcurrentOpenOfFreshDatabase(t *testing.T) {
	for round := 0; round < 5; round++ {
		path := filepath.Join(t.TempDir(), "state.db")
		const n = 8
		start := make(chan struct{})
		errs := make([]error, n)
		stores := make([]*Store, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				stores[i], errs[i] = OpenStore(context.Background(), path)
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: open %d of %d: %v", round, i+1, n, err)
			}
			t.Cleanup(func() { stores[i].Close() })
		}
		// Every store works on the one schema.
		for i, s := range stores {
			if _, err := s.UpsertMachine(context.Background(), "52:54:00:00:00:30", "h", "p"); err != nil {
				t.Fatalf("round %d: store %d: %v", round, i+1, err)
			}
		}
		var version int
		if err := stores[0].db.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil || version != len(migrations) {
			t.Fatalf("round %d: user_version %d (%v), want %d", round, version, err, len(migrations))
		}
	}
}

// A boot recorded without a time is a boot of now: token expiry and the
// choice of the latest boot are reckoned from CreatedAt.
func TestStoreCreateBootWithoutTime(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t)
	mac := "52:54:00:00:00:40"
	if _, err := s.UpsertMachine(ctx, mac, "h", "p"); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	older := Boot{Token: "older", MAC: mac, IP: "10.0.0.6", HostKeyPublic: "ssh-ed25519 AAAA", HostKeyPrivate: []byte("x"), CreatedAt: before.Add(-time.Minute)}
	untimed := Boot{Token: "untimed", MAC: mac, IP: "10.0.0.6", HostKeyPublic: "ssh-ed25519 AAAA", HostKeyPrivate: []byte("x")}
	for _, b := range []Boot{older, untimed} {
		if err := s.CreateBoot(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	after := time.Now()
	b, err := s.BootByToken(ctx, "untimed")
	if err != nil {
		t.Fatal(err)
	}
	if b.CreatedAt.Before(before) || b.CreatedAt.After(after) {
		t.Fatalf("CreatedAt %v, want between %v and %v", b.CreatedAt, before, after)
	}
	if latest, err := s.LatestBoot(ctx, mac); err != nil || latest.Token != "untimed" {
		t.Fatalf("latest boot %q (%v), want the untimed one", latest.Token, err)
	}
}
