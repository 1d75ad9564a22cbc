package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// The one-shot operations hold across connections: on PostgreSQL each
// goroutine below may run on its own connection, as two servers would.
// (UseToken and TakeInitrd have theirs in store_test.go.)

// race runs f(i) for i in [0, n) at once and waits for all.
func race(n int, f func(i int)) {
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f(i)
		}()
	}
	close(start)
	wg.Wait()
}

// succeeded counts the nil errors of a race under a limit, failing the
// test on any error but ErrLimit.
func succeeded(t *testing.T, errs []error) int {
	t.Helper()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrLimit):
			t.Fatalf("call %d: %v", i, err)
		}
	}
	return ok
}

// TestStoreDiscoverLimitConcurrent: discoveries at once never record
// more machines without a profile than the limit.
func TestStoreDiscoverLimitConcurrent(t *testing.T) { forBackends(t, testStoreDiscoverLimitConcurrent) }

func testStoreDiscoverLimitConcurrent(t *testing.T, be backend) {
	ctx := context.Background()
	for round := range 5 {
		s, _ := be.open(t)
		const n, limit = 16, 3
		errs := make([]error, n)
		race(n, func(i int) {
			_, errs[i] = s.Discover(ctx, fmt.Sprintf("52:54:00:00:05:%02x", i), limit)
		})
		ok := succeeded(t, errs)
		ms, err := s.Machines(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok != limit || len(ms) != limit {
			t.Fatalf("round %d: %d discoveries succeeded, %d machines recorded; want %d", round, ok, len(ms), limit)
		}
	}
}

// TestStoreCreateBootConcurrent: boots of one machine made at once leave
// one live boot; the others are voided, their keys erased.
func TestStoreCreateBootConcurrent(t *testing.T) { forBackends(t, testStoreCreateBootConcurrent) }

func testStoreCreateBootConcurrent(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	const mac = "52:54:00:00:05:40"
	if _, err := s.UpsertMachine(ctx, mac, "h", "p"); err != nil {
		t.Fatal(err)
	}
	for round := range 10 {
		const n = 8
		toks := make([]string, n)
		race(n, func(i int) {
			toks[i] = fmt.Sprintf("r%d-%d", round, i)
			if err := s.CreateBoot(ctx, Boot{Token: toks[i], MAC: mac, IP: "10.0.0.5", HostKeyPublic: "ssh-ed25519 AAAA",
				HostKeyPrivate: []byte("key")}); err != nil {
				t.Error(err)
			}
		})
		live := 0
		for _, tok := range toks {
			b, err := s.BootByToken(ctx, tok)
			if err != nil {
				t.Fatal(err)
			}
			if b.VoidedAt == nil {
				live++
			} else if len(b.HostKeyPrivate) != 0 {
				t.Fatalf("round %d: voided boot %s keeps its key", round, tok)
			}
		}
		if live != 1 {
			t.Fatalf("round %d: %d live boots of one machine, want 1", round, live)
		}
	}
}

// TestStoreTransitionConcurrent: a move is checked against the state
// the machine is in when it is made. An install that ends while another
// caller moves it on within installing leaves it installed, or refuses
// the other move: never installing again after installed, which the
// state graph does not allow.
func TestStoreTransitionConcurrent(t *testing.T) { forBackends(t, testStoreTransitionConcurrent) }

func testStoreTransitionConcurrent(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	for round := range 20 {
		mac := fmt.Sprintf("52:54:00:00:06:%02x", round)
		if _, err := s.UpsertMachine(ctx, mac, "h", "p"); err != nil {
			t.Fatal(err)
		}
		for _, st := range []State{StateBooting, StateInstallerUp, StateInstalling} {
			if err := s.Transition(ctx, mac, st, "", "", ""); err != nil {
				t.Fatal(err)
			}
		}
		const n = 8
		errs := make([]error, n)
		race(n, func(i int) {
			to, phase := StateInstalling, "install"
			if i == 0 {
				to, phase = StateInstalled, ""
			}
			errs[i] = s.Transition(ctx, mac, to, phase, "", "")
		})
		for i, err := range errs {
			if err != nil && !errors.Is(err, ErrNoTransition) {
				t.Fatalf("round %d: move %d: %v", round, i, err)
			}
		}
		if errs[0] != nil {
			t.Fatalf("round %d: the install's end was refused: %v", round, errs[0])
		}
		if m, err := s.Machine(ctx, mac); err != nil || m.State != StateInstalled {
			t.Fatalf("round %d: machine %s after an install ended: %s (%v), want installed", round, mac, m.State, err)
		}
	}
}

// TestStoreAssignNewLimitConcurrent: rules that match many new machines
// at once never assign more than the limit, and a machine the store
// knows is assigned whatever the count.
func TestStoreAssignNewLimitConcurrent(t *testing.T) {
	forBackends(t, testStoreAssignNewLimitConcurrent)
}

func testStoreAssignNewLimitConcurrent(t *testing.T, be backend) {
	ctx := context.Background()
	for round := range 5 {
		s, _ := be.open(t)
		const n, limit = 16, 3
		errs := make([]error, n)
		race(n, func(i int) {
			errs[i] = s.AssignNew(ctx, fmt.Sprintf("52:54:00:00:06:%02x", i), "web", "", "rule", "rule r matched", limit)
		})
		ok := succeeded(t, errs)
		as, err := s.Assignments(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ms, err := s.Machines(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok != limit || len(as) != limit || len(ms) != limit {
			t.Fatalf("round %d: %d assignments succeeded, %d recorded, %d machines; want %d", round, ok, len(as), len(ms), limit)
		}
		// At the limit: a machine the store knows without an assignment
		// (a discovered one) is refused too; one that holds an
		// assignment may be given another, and its event says so.
		const discovered = "52:54:00:00:06:ff"
		if _, err := s.Discover(ctx, discovered, 10); err != nil {
			t.Fatal(err)
		}
		if err := s.AssignNew(ctx, discovered, "db", "", "rule", "rule d matched", limit); !errors.Is(err, ErrLimit) {
			t.Fatalf("round %d: a discovered machine at the limit: %v, want ErrLimit", round, err)
		}
		var held string
		for mac := range as {
			held = mac
		}
		if err := s.AssignNew(ctx, held, "db", "db-1", "rule", "rule d matched", limit); err != nil {
			t.Fatalf("round %d: an assigned machine at the limit: %v", round, err)
		}
		m, err := s.Machine(ctx, held)
		if err != nil || m.Profile != "db" || m.Hostname != "db-1" {
			t.Fatalf("round %d: assigned machine after AssignNew: %+v %v", round, m, err)
		}
		if ev, err := s.LastEvent(ctx, held); err != nil || ev.Message != "assigned profile db, hostname db-1, by rule: rule d matched" {
			t.Fatalf("round %d: event %+v %v", round, ev, err)
		}
	}
}
