package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestStorePersistsAcrossReopen(t *testing.T) { forBackends(t, testStorePersistsAcrossReopen) }

func testStorePersistsAcrossReopen(t *testing.T, be backend) {
	ctx := context.Background()
	s, where := be.open(t)
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
	if be.name == "sqlite" {
		st, err := os.Stat(where)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("database mode %o, want 600", st.Mode().Perm())
		}
	}
	s2, err := be.openAt(ctx, where)
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

func TestStoreTransitions(t *testing.T) { forBackends(t, testStoreTransitions) }

func testStoreTransitions(t *testing.T, be backend) {
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
			s, _ := be.open(t)
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

func TestStoreUseTokenOnce(t *testing.T) { forBackends(t, testStoreUseTokenOnce) }

func testStoreUseTokenOnce(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
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

func TestStoreReinstallAndForget(t *testing.T) { forBackends(t, testStoreReinstallAndForget) }

func testStoreReinstallAndForget(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
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
	forBackends(t, testStoreConcurrentOpenOfFreshDatabase)
}

func testStoreConcurrentOpenOfFreshDatabase(t *testing.T, be backend) {
	for round := 0; round < 5; round++ {
		where := be.create(t)
		const n = 8
		start := make(chan struct{})
		errs := make([]error, n)
		stores := make([]*DB, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				stores[i], errs[i] = be.openAt(context.Background(), where)
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
		if version := schemaVersion(t, stores[0]); version != len(migrations) {
			t.Fatalf("round %d: schema version %d, want %d", round, version, len(migrations))
		}
	}
}

// A boot recorded without a time is a boot of now: token expiry and the
// choice of the latest boot are reckoned from CreatedAt.
func TestStoreCreateBootWithoutTime(t *testing.T) { forBackends(t, testStoreCreateBootWithoutTime) }

func testStoreCreateBootWithoutTime(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
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

// newBoot records a boot of mac with a private key that names it, and
// returns its token.
func newBoot(t *testing.T, s *DB, mac, token string, created time.Time) string {
	t.Helper()
	if err := s.CreateBoot(context.Background(), Boot{Token: token, MAC: mac, IP: "10.0.0.5", Firmware: "bios",
		HostKeyPublic: "ssh-ed25519 AAAA" + token, HostKeyPrivate: []byte("private key of " + token), CreatedAt: created}); err != nil {
		t.Fatal(err)
	}
	return token
}

func bootOf(t *testing.T, s *DB, token string) Boot {
	t.Helper()
	b, err := s.BootByToken(context.Background(), token)
	if err != nil {
		t.Fatalf("boot %s: %v", token, err)
	}
	return b
}

// liveKey reports whether a boot still holds its private key, and
// checks that the public key stays whatever happens to the private one.
func liveKey(t *testing.T, s *DB, token string) bool {
	t.Helper()
	b := bootOf(t, s, token)
	if b.HostKeyPublic != "ssh-ed25519 AAAA"+token {
		t.Fatalf("boot %s: public key %q lost", token, b.HostKeyPublic)
	}
	switch string(b.HostKeyPrivate) {
	case "private key of " + token:
		return true
	case "":
		return false
	}
	t.Fatalf("boot %s: private key %q", token, b.HostKeyPrivate)
	return false
}

// TestStoreTakeInitrdOnce: the extra initrd, which carries the boot's
// private key, goes to one caller however many ask at once; the losers
// void the boot, as provision does, and the winner still holds the key
// it was promised. A used or voided boot gives its initrd to nobody.
func TestStoreTakeInitrdOnce(t *testing.T) { forBackends(t, testStoreTakeInitrdOnce) }

func testStoreTakeInitrdOnce(t *testing.T, be backend) {
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		s, _ := be.open(t)
		mac := "52:54:00:00:01:01"
		tok := newBoot(t, s, mac, "tok", time.Now())
		const n = 16
		type result struct {
			b     Boot
			first bool
			err   error
		}
		results := make([]result, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				b, first, err := s.TakeInitrd(ctx, tok)
				if err == nil && !first {
					_, err = s.VoidBoot(ctx, tok, "boot secrets requested twice")
				}
				results[i] = result{b, first, err}
			}()
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, r := range results {
			switch {
			case r.err != nil:
				t.Fatalf("round %d: caller %d: %v", round, i, r.err)
			case r.first:
				winners++
				if string(r.b.HostKeyPrivate) != "private key of tok" || r.b.InitrdAt == nil {
					t.Fatalf("round %d: the winner got key %q, initrd_at %v", round, r.b.HostKeyPrivate, r.b.InitrdAt)
				}
			case len(r.b.HostKeyPrivate) != 0:
				t.Fatalf("round %d: caller %d, not first, got the private key %q", round, i, r.b.HostKeyPrivate)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d of %d callers were first, want exactly one", round, winners, n)
		}
	}

	s, _ := be.open(t)
	used := newBoot(t, s, "52:54:00:00:01:02", "used", time.Now())
	if _, err := s.UseToken(ctx, used); err != nil {
		t.Fatal(err)
	}
	voided := newBoot(t, s, "52:54:00:00:01:03", "voided", time.Now())
	if ok, err := s.VoidBoot(ctx, voided, "test"); err != nil || !ok {
		t.Fatalf("VoidBoot: %v %v", ok, err)
	}
	for _, tok := range []string{used, voided} {
		b, first, err := s.TakeInitrd(ctx, tok)
		if err != nil || first || len(b.HostKeyPrivate) != 0 || b.InitrdAt != nil {
			t.Errorf("TakeInitrd of the %s boot: first=%v key=%q initrd_at=%v err=%v; want nothing", tok, first, b.HostKeyPrivate, b.InitrdAt, err)
		}
	}
	if _, _, err := s.TakeInitrd(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("TakeInitrd of an unknown token: %v", err)
	}
	// The installer that got the initrd then uses its token.
	taken := newBoot(t, s, "52:54:00:00:01:04", "taken", time.Now())
	if _, first, err := s.TakeInitrd(ctx, taken); err != nil || !first {
		t.Fatalf("TakeInitrd: first=%v %v", first, err)
	}
	if _, err := s.UseToken(ctx, taken); err != nil {
		t.Fatalf("UseToken after the initrd was served: %v", err)
	}
}

func TestStoreUseTokenErasesPrivateKey(t *testing.T) {
	forBackends(t, testStoreUseTokenErasesPrivateKey)
}

func testStoreUseTokenErasesPrivateKey(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	tok := newBoot(t, s, "52:54:00:00:01:10", "tok", time.Now())
	if !liveKey(t, s, tok) {
		t.Fatal("a new boot has no private key")
	}
	used, err := s.UseToken(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if len(used.HostKeyPrivate) != 0 || used.UsedAt == nil {
		t.Errorf("UseToken returned key %q, used_at %v", used.HostKeyPrivate, used.UsedAt)
	}
	if liveKey(t, s, tok) {
		t.Fatal("private key kept after the token was used")
	}
}

// TestStoreNewBootSupersedes: a new boot voids the machine's earlier
// boot that was never used, but leaves a used one alone (its install
// may be running) and other machines' boots.
func TestStoreNewBootSupersedes(t *testing.T) { forBackends(t, testStoreNewBootSupersedes) }

func testStoreNewBootSupersedes(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	mac, other := "52:54:00:aa:01:20", "52:54:00:00:01:21"
	t0 := time.Now().Add(-time.Hour)
	usedTok := newBoot(t, s, mac, "used", t0)
	if _, err := s.UseToken(ctx, usedTok); err != nil {
		t.Fatal(err)
	}
	older := newBoot(t, s, mac, "older", t0.Add(time.Minute))
	otherTok := newBoot(t, s, other, "other", t0.Add(2*time.Minute))
	// The MAC as firmware spells it: the store keys machines in lower case.
	newer := newBoot(t, s, strings.ToUpper(mac), "newer", t0.Add(3*time.Minute))

	b := bootOf(t, s, older)
	if b.VoidedAt == nil || !b.VoidedAt.Equal(t0.Add(3*time.Minute)) || b.VoidReason != "superseded by a newer boot" {
		t.Errorf("older unused boot: voided_at %v reason %q, want voided when the newer one was made", b.VoidedAt, b.VoidReason)
	}
	if liveKey(t, s, older) {
		t.Error("superseded boot kept its private key")
	}
	if _, err := s.UseToken(ctx, older); !errors.Is(err, ErrBootVoided) {
		t.Errorf("UseToken of the superseded boot: %v, want ErrBootVoided", err)
	}
	if b := bootOf(t, s, usedTok); b.VoidedAt != nil || b.VoidReason != "" {
		t.Errorf("used boot voided: %v %q", b.VoidedAt, b.VoidReason)
	}
	for _, tok := range []string{otherTok, newer} {
		if b := bootOf(t, s, tok); b.VoidedAt != nil || !liveKey(t, s, tok) {
			t.Errorf("boot %s: voided_at %v reason %q, key erased: want it live", tok, b.VoidedAt, b.VoidReason)
		}
	}
}

// TestStoreVoid: voiding touches live boots only; it never rewrites
// how a boot ended, and a voided token opens nothing.
func TestStoreVoid(t *testing.T) { forBackends(t, testStoreVoid) }

func testStoreVoid(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	mac, other := "52:54:00:aa:01:30", "52:54:00:00:01:31"
	t0 := time.Now().Add(-time.Hour)
	used := newBoot(t, s, mac, "used", t0)
	if _, err := s.UseToken(ctx, used); err != nil {
		t.Fatal(err)
	}
	superseded := newBoot(t, s, mac, "superseded", t0.Add(time.Minute))
	live := newBoot(t, s, mac, "live", t0.Add(2*time.Minute))
	otherTok := newBoot(t, s, other, "other", t0.Add(3*time.Minute))

	n, err := s.VoidBoots(ctx, strings.ToUpper(mac), "reinstall requested")
	if err != nil || n != 1 {
		t.Fatalf("VoidBoots = %d, %v; want the one live boot", n, err)
	}
	want := map[string]string{used: "", superseded: "superseded by a newer boot", live: "reinstall requested", otherTok: ""}
	for tok, reason := range want {
		b := bootOf(t, s, tok)
		if b.VoidReason != reason || (b.VoidedAt != nil) != (reason != "") {
			t.Errorf("boot %s: voided_at %v reason %q, want reason %q", tok, b.VoidedAt, b.VoidReason, reason)
		}
	}
	if liveKey(t, s, live) || !liveKey(t, s, otherTok) {
		t.Error("VoidBoots: keys of the voided boot kept, or of another machine's erased")
	}
	if b := bootOf(t, s, used); b.UsedAt == nil {
		t.Error("VoidBoots changed a used boot")
	}

	for _, tok := range []string{used, live} {
		before := bootOf(t, s, tok)
		if ok, err := s.VoidBoot(ctx, tok, "again"); err != nil || ok {
			t.Errorf("VoidBoot of the ended boot %s: %v %v, want false", tok, ok, err)
		}
		if after := bootOf(t, s, tok); after.VoidReason != before.VoidReason || (after.VoidedAt == nil) != (before.VoidedAt == nil) ||
			(after.VoidedAt != nil && !after.VoidedAt.Equal(*before.VoidedAt)) {
			t.Errorf("VoidBoot rewrote the ended boot %s: %v %q → %v %q", tok, before.VoidedAt, before.VoidReason, after.VoidedAt, after.VoidReason)
		}
	}
	if ok, err := s.VoidBoot(ctx, otherTok, "initrd asked twice"); err != nil || !ok {
		t.Fatalf("VoidBoot of a live boot: %v %v", ok, err)
	}
	if b := bootOf(t, s, otherTok); b.VoidReason != "initrd asked twice" || b.VoidedAt == nil || liveKey(t, s, otherTok) {
		t.Errorf("voided boot: %v %q, key kept %v", b.VoidedAt, b.VoidReason, len(b.HostKeyPrivate) > 0)
	}
	for _, tok := range []string{live, otherTok} {
		if b, err := s.UseToken(ctx, tok); !errors.Is(err, ErrBootVoided) || b.UsedAt != nil {
			t.Errorf("UseToken of voided boot %s: %v, used_at %v; want ErrBootVoided and unused", tok, err, b.UsedAt)
		}
	}
	if _, err := s.UseToken(ctx, used); !errors.Is(err, ErrTokenUsed) {
		t.Errorf("UseToken of the used boot: %v, want ErrTokenUsed", err)
	}
	if ok, err := s.VoidBoot(ctx, "nope", "x"); err != nil || ok {
		t.Errorf("VoidBoot of an unknown token: %v %v", ok, err)
	}
}

func TestStoreEraseExpiredKeys(t *testing.T) { forBackends(t, testStoreEraseExpiredKeys) }

func testStoreEraseExpiredKeys(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	cutoff := time.Now().Add(-time.Hour)
	// Each boot on its own machine: a newer boot of the same machine
	// would void (and erase) the older one itself.
	old := newBoot(t, s, "52:54:00:00:01:40", "old", cutoff.Add(-time.Second))
	fresh := newBoot(t, s, "52:54:00:00:01:41", "fresh", cutoff.Add(time.Second))
	n, err := s.EraseExpiredKeys(ctx, cutoff)
	if err != nil || n != 1 {
		t.Fatalf("EraseExpiredKeys = %d, %v; want 1", n, err)
	}
	if liveKey(t, s, old) || !liveKey(t, s, fresh) {
		t.Fatalf("after EraseExpiredKeys: old key kept %v, fresh key kept %v; want false, true", liveKey(t, s, old), liveKey(t, s, fresh))
	}
	if n, err := s.EraseExpiredKeys(ctx, cutoff); err != nil || n != 0 {
		t.Fatalf("second EraseExpiredKeys = %d, %v; want 0 (nothing left to erase)", n, err)
	}
}

func TestStoreHoldAndRelease(t *testing.T) { forBackends(t, testStoreHoldAndRelease) }

func testStoreHoldAndRelease(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	mac := "52:54:00:aa:01:50"
	if _, err := s.UpsertMachine(ctx, mac, "h", "p"); err != nil {
		t.Fatal(err)
	}
	if err := s.Transition(ctx, mac, StateBooting, "", "", "booted"); err != nil {
		t.Fatal(err)
	}
	if err := s.Hold(ctx, strings.ToUpper(mac), "boot secrets requested twice", "SECURITY: held"); err != nil {
		t.Fatal(err)
	}
	m, err := s.Machine(ctx, mac)
	if err != nil || !m.Held || m.State != StateFailed || m.Error != "boot secrets requested twice" || m.Reinstall {
		t.Fatalf("held machine: %+v %v", m, err)
	}
	if evs, _ := s.Events(ctx, mac, 0, 10); len(evs) != 2 || evs[1].Message != "SECURITY: held" || evs[1].State != StateFailed {
		t.Fatalf("events: %+v", evs)
	}
	if err := s.RequestReinstall(ctx, mac); err != nil {
		t.Fatal(err)
	}
	if m, _ := s.Machine(ctx, mac); m.Held || !m.Reinstall {
		t.Fatalf("after RequestReinstall: held %v reinstall %v, want false, true", m.Held, m.Reinstall)
	}
	if err := s.Hold(ctx, "52:54:00:00:01:59", "x", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Hold of an unknown machine: %v", err)
	}
}

func TestStoreBindings(t *testing.T) { forBackends(t, testStoreBindings) }

func testStoreBindings(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	a, b := "52:54:00:aa:01:60", "52:54:00:bb:01:61"
	for _, mac := range []string{a, b} {
		if _, err := s.UpsertMachine(ctx, mac, "", "p"); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	later := now.Add(2 * time.Hour)
	save := func(bb BootBinding) {
		t.Helper()
		if err := s.SaveBinding(ctx, bb); err != nil {
			t.Fatal(err)
		}
	}
	save(BootBinding{MAC: strings.ToUpper(a), Addr: "10.0.0.5", Via: "br0", Seen: now.Add(-time.Hour), Expires: now.Add(time.Hour)})
	// The same address seen again, through a relay: one binding, updated.
	save(BootBinding{MAC: a, Addr: "10.0.0.5", Via: "relay 10.0.0.2", Seen: now, Expires: later})
	save(BootBinding{MAC: a, Addr: "10.0.0.6", Via: "br0", Seen: now, Expires: now.Add(-time.Second)})
	save(BootBinding{MAC: a, Addr: "10.0.0.7", Via: "br0", Seen: now, Expires: later})
	save(BootBinding{MAC: b, Addr: "10.0.0.8", Via: "br0", Seen: now, Expires: later})
	save(BootBinding{MAC: b, Addr: "10.0.0.9", Via: "br0", Seen: now, Expires: now.Add(-time.Hour)})

	list := func() string {
		t.Helper()
		got, err := s.Bindings(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, bb := range got {
			if !bb.Seen.Equal(now) || !bb.Expires.Equal(later) {
				t.Errorf("binding %s %s seen %v, expires %v; want %v, %v", bb.MAC, bb.Addr, bb.Seen, bb.Expires, now, later)
			}
			out = append(out, bb.MAC+" "+bb.Addr+" "+bb.Via)
		}
		return strings.Join(out, "; ")
	}
	rows := func() int {
		t.Helper()
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM bindings`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	want := a + " 10.0.0.5 relay 10.0.0.2; " + a + " 10.0.0.7 br0; " + b + " 10.0.0.8 br0"
	if got := list(); got != want {
		t.Fatalf("bindings:\n got %s\nwant %s", got, want)
	}
	if n := rows(); n != 3 {
		t.Fatalf("%d rows in bindings after Bindings, want the 3 live ones (expired ones deleted)", n)
	}
	if err := s.DeleteBinding(ctx, strings.ToUpper(a), "10.0.0.7"); err != nil {
		t.Fatal(err)
	}
	if got, want := list(), a+" 10.0.0.5 relay 10.0.0.2; "+b+" 10.0.0.8 br0"; got != want {
		t.Fatalf("after DeleteBinding:\n got %s\nwant %s", got, want)
	}
	if err := s.Forget(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got, want := list(), b+" 10.0.0.8 br0"; got != want {
		t.Fatalf("after Forget(%s):\n got %s\nwant %s", a, got, want)
	}
}

// TestStoreMigratesVersion1: a database that an earlier release made
// (migration 1 only) opens, keeps its machines and boots, and reads
// them with the new fields empty.
func TestStoreMigratesVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for _, q := range []string{
		migrations[0],
		`PRAGMA user_version = 1`,
		fmt.Sprintf(`INSERT INTO machines (mac, hostname, profile, state, reinstall, ip, firmware, created_at, updated_at)
			VALUES ('52:54:00:00:01:70', 'web-01', 'web', 'booting', 1, '10.0.0.5', 'bios', %d, %d)`, unix(created), unix(created)),
		fmt.Sprintf(`INSERT INTO boots (token, mac, ip, firmware, host_key_public, host_key_private, created_at)
			VALUES ('tok', '52:54:00:00:01:70', '10.0.0.5', 'bios', 'ssh-ed25519 AAAAtok', x'6b6579', %d)`, unix(created)),
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("opening a version 1 database: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if version := schemaVersion(t, s); version != len(migrations) {
		t.Fatalf("user_version %d, want %d", version, len(migrations))
	}
	m, err := s.Machine(ctx, "52:54:00:00:01:70")
	if err != nil || m.Hostname != "web-01" || m.State != StateBooting || !m.Reinstall || m.Held || !m.CreatedAt.Equal(created) {
		t.Fatalf("machine after migration: %+v %v", m, err)
	}
	b, err := s.BootByToken(ctx, "tok")
	if err != nil {
		t.Fatalf("boot after migration: %v", err)
	}
	if b.MAC != m.MAC || b.IP != "10.0.0.5" || b.HostKeyPublic != "ssh-ed25519 AAAAtok" || string(b.HostKeyPrivate) != "key" ||
		!b.CreatedAt.Equal(created) || b.UsedAt != nil || b.InitrdAt != nil || b.VoidedAt != nil || b.VoidReason != "" {
		t.Fatalf("boot after migration: %+v", b)
	}
	// The old boot takes part in the new rules like any other.
	if _, first, err := s.TakeInitrd(ctx, "tok"); err != nil || !first {
		t.Fatalf("TakeInitrd of the migrated boot: %v %v", first, err)
	}
	if err := s.SaveBinding(ctx, BootBinding{MAC: m.MAC, Addr: "10.0.0.5", Via: "br0", Seen: time.Now(), Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatalf("SaveBinding after migration: %v", err)
	}
}

// schemaVersion is how many migrations s's database has applied.
func schemaVersion(t *testing.T, s *DB) int {
	t.Helper()
	tx, err := s.db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if err := s.db.d.lockMigrations(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	v, err := s.db.d.version(context.Background(), tx)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
