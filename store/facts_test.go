package store

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestStoreFactsAndAssignments(t *testing.T) { forBackends(t, testStoreFactsAndAssignments) }

func testStoreFactsAndAssignments(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	const mac = "52:54:00:77:20:09"
	if _, err := s.Facts(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("facts of an unknown machine: %v", err)
	}
	if _, err := s.Discover(ctx, mac, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDHCPContext(ctx, mac, `{"circuit_id":"x"}`); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveFacts(ctx, mac, `{"serial":"A"}`, "", "10.0.0.5"); err != nil {
		t.Fatal(err)
	}
	// A newer discovery replaces the facts and keeps the DHCP context.
	if err := s.SaveFacts(ctx, strings.ToUpper(mac), `{"serial":"B"}`, `{"facter":1}`, "10.0.0.6"); err != nil {
		t.Fatal(err)
	}
	f, err := s.Facts(ctx, mac)
	if err != nil || f.Facts != `{"serial":"B"}` || f.Facter != `{"facter":1}` || f.DHCP != `{"circuit_id":"x"}` || f.Addr != "10.0.0.6" || f.CollectedAt.IsZero() || f.DHCPAt.IsZero() {
		t.Fatalf("facts %+v, %v", f, err)
	}
	if err := s.SaveFacts(ctx, mac, strings.Repeat("x", MaxFactsBytes+1), "", ""); err == nil {
		t.Fatal("oversized facts stored")
	}
	if err := s.SaveDHCPContext(ctx, mac, strings.Repeat("x", MaxDHCPBytes+1)); err == nil {
		t.Fatal("oversized DHCP context stored")
	}

	if err := s.Assign(ctx, "52:54:00:77:20:0a", "web", "", "rule", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("assigning an unknown machine: %v", err)
	}
	if err := s.Assign(ctx, mac, "web", "node-b", "rule", `rule "lab" matched`); err != nil {
		t.Fatal(err)
	}
	m, _ := s.Machine(ctx, mac)
	a, err := s.GetAssignment(ctx, mac)
	if m.Profile != "web" || m.Hostname != "node-b" || err != nil || a.Source != "rule" || a.Reason != `rule "lab" matched` {
		t.Fatalf("after assign: machine %+v, assignment %+v, %v", m, a, err)
	}
	if all, err := s.Assignments(ctx); err != nil || len(all) != 1 {
		t.Fatalf("assignments %v, %v", all, err)
	}
	if e, _ := s.LastEvent(ctx, mac); !strings.Contains(e.Message, "assigned profile web, hostname node-b, by rule") {
		t.Fatalf("no assignment event: %q", e.Message)
	}
	if err := s.Unassign(ctx, mac, "no rule matches any more"); err != nil {
		t.Fatal(err)
	}
	m, _ = s.Machine(ctx, mac)
	if _, err := s.GetAssignment(ctx, mac); !errors.Is(err, ErrNotFound) || m.Profile != "" || m.Hostname != "" {
		t.Fatalf("after unassign: %+v, %v", m, err)
	}
	if err := s.Assign(ctx, mac, "web", "", "operator", "by admin"); err != nil {
		t.Fatal(err)
	}
	if err := s.Forget(ctx, mac); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Facts(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("facts outlived forget: %v", err)
	}
	if _, err := s.GetAssignment(ctx, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("assignment outlived forget: %v", err)
	}
}
