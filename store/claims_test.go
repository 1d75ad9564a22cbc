package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestStoreClaims: a machine's claim is one server's until its lease
// lapses; the holder renews it, releases it, or loses it to another
// server once it lapsed; a lapsed claim is not revived by a late
// heartbeat.
func TestStoreClaims(t *testing.T) { forBackends(t, testStoreClaims) }

func testStoreClaims(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	const mac = "52:54:00:00:07:01"
	t0 := time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)
	lease := time.Minute
	if _, err := s.ClaimOf(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim before any: %v", err)
	}
	c, err := s.Claim(ctx, "52:54:00:00:07:01", "a", lease, t0)
	if err != nil || c.Server != "a" || !c.ClaimedAt.Equal(t0) || !c.Expires.Equal(t0.Add(lease)) {
		t.Fatalf("first claim: %+v %v", c, err)
	}
	if c, err := s.Claim(ctx, mac, "b", lease, t0.Add(30*time.Second)); !errors.Is(err, ErrClaimed) || c.Server != "a" || !strings.Contains(err.Error(), " a ") {
		t.Fatalf("claim of a live claim by another server: %+v %v; want ErrClaimed naming a", c, err)
	}
	// The holder renews: by claiming again (claimed_at stays) or by
	// heartbeat.
	if c, err := s.Claim(ctx, mac, "a", lease, t0.Add(10*time.Second)); err != nil || !c.ClaimedAt.Equal(t0) || !c.Expires.Equal(t0.Add(70*time.Second)) {
		t.Fatalf("renewal by claiming again: %+v %v", c, err)
	}
	if n, err := s.Heartbeat(ctx, "a", lease, t0.Add(50*time.Second)); err != nil || n != 1 {
		t.Fatalf("heartbeat: %d %v", n, err)
	}
	if _, err := s.Claim(ctx, mac, "b", lease, t0.Add(100*time.Second)); !errors.Is(err, ErrClaimed) {
		t.Fatalf("claim within the renewed lease: %v", err)
	}
	if n, err := s.Heartbeat(ctx, "b", lease, t0.Add(100*time.Second)); err != nil || n != 0 {
		t.Fatalf("heartbeat of a server without claims: %d %v", n, err)
	}
	if lapsed, err := s.LapsedClaims(ctx, t0.Add(100*time.Second)); err != nil || len(lapsed) != 0 {
		t.Fatalf("lapsed claims within the lease: %+v %v", lapsed, err)
	}
	// a stops renewing: after the lease its heartbeat is too late, and
	// b takes the machine over.
	late := t0.Add(111 * time.Second)
	if n, err := s.Heartbeat(ctx, "a", lease, late); err != nil || n != 0 {
		t.Fatalf("late heartbeat revived %d claims (%v)", n, err)
	}
	lapsed, err := s.LapsedClaims(ctx, late)
	if err != nil || len(lapsed) != 1 || lapsed[0].Server != "a" || lapsed[0].MAC != mac {
		t.Fatalf("lapsed claims: %+v %v", lapsed, err)
	}
	if c, err := s.Claim(ctx, mac, "b", lease, late); err != nil || c.Server != "b" || !c.ClaimedAt.Equal(late) {
		t.Fatalf("takeover of a lapsed claim: %+v %v", c, err)
	}
	// What a saw lapsed was taken over meanwhile: reaping it does nothing.
	if ok, err := s.ReapClaim(ctx, lapsed[0], late); err != nil || ok {
		t.Fatalf("reap of a claim taken over: %v %v", ok, err)
	}
	if ok, err := s.Release(ctx, mac, "a"); err != nil || ok {
		t.Fatalf("release by a server that lost the claim: %v %v", ok, err)
	}
	if ok, err := s.Release(ctx, mac, "b"); err != nil || !ok {
		t.Fatalf("release by the holder: %v %v", ok, err)
	}
	if _, err := s.ClaimOf(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim after release: %v", err)
	}
	// A renewed claim is not reaped on a stale view.
	if _, err := s.Claim(ctx, mac, "a", lease, t0); err != nil {
		t.Fatal(err)
	}
	stale := Claim{MAC: mac, Server: "a"}
	if _, err := s.Heartbeat(ctx, "a", lease, t0.Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.ReapClaim(ctx, stale, t0.Add(80*time.Second)); err != nil || ok {
		t.Fatalf("reap of a renewed claim: %v %v", ok, err)
	}
	// Forget takes the claim with the machine.
	if _, err := s.UpsertMachine(ctx, mac, "h", "p"); err != nil {
		t.Fatal(err)
	}
	if err := s.Forget(ctx, mac); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimOf(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim after Forget: %v", err)
	}
}

// TestStoreCancelRequest: a cancel asked through one server rides on
// another server's live claim until the holder releases it; it is not
// put on the asker's own claim, nor on a lapsed one, and a takeover
// starts without it.
func TestStoreCancelRequest(t *testing.T) { forBackends(t, testStoreCancelRequest) }

func testStoreCancelRequest(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	const mac = "52:54:00:00:07:02"
	t0 := time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)
	lease := time.Minute
	if _, err := s.RequestCancel(ctx, mac, "b", "operator (API)", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel request without a claim: %v", err)
	}
	if _, err := s.Claim(ctx, mac, "a", lease, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RequestCancel(ctx, mac, "a", "operator (API)", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel request on the asker's own claim: %v", err)
	}
	c, err := s.RequestCancel(ctx, "52:54:00:00:07:02", "b", "operator (API) through server b", t0.Add(time.Second))
	if err != nil || c.Server != "a" || c.CancelBy != "operator (API) through server b" {
		t.Fatalf("cancel request through b: %+v %v", c, err)
	}
	// The holder's heartbeat keeps it; it reads it with the claim.
	if _, err := s.Heartbeat(ctx, "a", lease, t0.Add(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if c, err := s.ClaimOf(ctx, mac); err != nil || c.CancelBy != "operator (API) through server b" {
		t.Fatalf("claim after a heartbeat: %+v %v", c, err)
	}
	if c, err := s.Claim(ctx, mac, "a", lease, t0.Add(30*time.Second)); err != nil || c.CancelBy == "" {
		t.Fatalf("the holder's renewal by Claim dropped the request: %+v %v", c, err)
	}
	// Lapsed: no request is put on it, and the server that takes it
	// over starts clean.
	late := t0.Add(5 * time.Minute)
	if _, err := s.RequestCancel(ctx, mac, "c", "operator (API)", late); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel request on a lapsed claim: %v", err)
	}
	if lapsed, err := s.LapsedClaims(ctx, late); err != nil || len(lapsed) != 1 || lapsed[0].CancelBy == "" {
		t.Fatalf("lapsed claims: %+v %v", lapsed, err)
	}
	if c, err := s.Claim(ctx, mac, "b", lease, late); err != nil || c.Server != "b" || c.CancelBy != "" {
		t.Fatalf("takeover: %+v %v, want b's claim without a's cancel request", c, err)
	}
}

// TestStoreClaimConcurrent: of servers that claim one machine at once,
// or reap one lapsed claim at once, exactly one succeeds.
func TestStoreClaimConcurrent(t *testing.T) { forBackends(t, testStoreClaimConcurrent) }

func testStoreClaimConcurrent(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	t0 := time.Date(2026, 12, 2, 2, 0, 0, 0, time.UTC)
	for round := range 20 {
		mac := fmt.Sprintf("52:54:00:00:08:%02x", round)
		const n = 8
		won := make([]bool, n)
		race(n, func(i int) {
			_, err := s.Claim(ctx, mac, fmt.Sprintf("server-%d", i), time.Minute, t0)
			if err != nil && !errors.Is(err, ErrClaimed) {
				t.Error(err)
			}
			won[i] = err == nil
		})
		winners := 0
		for _, w := range won {
			if w {
				winners++
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d servers hold the claim, want 1", round, winners)
		}
		// Its lease lapses; every other server reaps it at once.
		c, err := s.ClaimOf(ctx, mac)
		if err != nil {
			t.Fatal(err)
		}
		later := t0.Add(2 * time.Minute)
		reaped := make([]bool, n)
		race(n, func(i int) {
			ok, err := s.ReapClaim(ctx, c, later)
			if err != nil {
				t.Error(err)
			}
			reaped[i] = ok
		})
		winners = 0
		for _, r := range reaped {
			if r {
				winners++
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d servers reaped one lapsed claim, want 1", round, winners)
		}
	}
}
