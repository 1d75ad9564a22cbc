package store

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestStorePrune: a machine with 5000 boots and 5000 events shrinks to
// the limits, keeping its newest boots (the live one among them) and
// events; a machine under the limits, and boots that have not ended,
// are untouched; the freed pages go back to the file system.
func TestStorePrune(t *testing.T) { forBackends(t, testStorePrune) }

func testStorePrune(t *testing.T, be backend) {
	ctx := context.Background()
	s, _ := be.open(t)
	const (
		flooded = "52:54:00:00:02:01"
		quiet   = "52:54:00:00:02:02"
		odd     = "52:54:00:00:02:03" // boots that never ended (not a state provision makes)
		n       = 5000
		keepB   = 20
		keepE   = 1000
	)
	for _, mac := range []string{flooded, quiet, odd} {
		if _, err := s.UpsertMachine(ctx, mac, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	cutoff := now.Add(-2 * time.Hour)
	// Rows are written directly, in one transaction: 5000 CreateBoot
	// calls would test nothing more and take long under -race.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	addBoot := func(mac, token string, created time.Time, ended string) {
		q := `INSERT INTO boots (token, mac, ip, firmware, host_key_public, host_key_private, created_at` + map[string]string{"used": ", used_at", "voided": ", voided_at", "": ""}[ended] + `)
			VALUES (?, ?, '10.0.0.5', 'bios', 'ssh-ed25519 AAAA', x'', ?` + map[string]string{"used": ", ?", "voided": ", ?", "": ""}[ended] + `)`
		args := []any{token, mac, unix(created)}
		if ended != "" {
			args = append(args, unix(created))
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
	}
	addEvent := func(mac string, i int) {
		if _, err := tx.ExecContext(ctx, `INSERT INTO events (mac, time, state, phase, message) VALUES (?, ?, 'booting', '', ?)`,
			mac, unix(now), fmt.Sprintf("event %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n - 1 {
		// Recent boots that were superseded or used, and older ones
		// that merely expired.
		created := now.Add(-time.Duration(n-i) * time.Second)
		ended := []string{"used", "voided"}[i%2]
		if i < 100 {
			created, ended = cutoff.Add(-time.Duration(n-i)*time.Second), ""
		}
		addBoot(flooded, fmt.Sprintf("f%05d", i), created, ended)
	}
	addBoot(flooded, "live", now, "") // the machine's live boot
	for i := range n {
		addEvent(flooded, i)
	}
	for i := range 10 {
		addBoot(quiet, fmt.Sprintf("q%05d", i), now.Add(-time.Duration(10-i)*time.Second), "voided")
		addEvent(quiet, i)
	}
	for i := range keepB + 5 {
		addBoot(odd, fmt.Sprintf("o%05d", i), now.Add(-time.Duration(100-i)*time.Second), "")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	pages := func() (count, free int) {
		t.Helper()
		if be.name != "sqlite" {
			return 0, 0 // PostgreSQL's autovacuum returns space in its own time
		}
		if err := s.db.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&count); err != nil {
			t.Fatal(err)
		}
		if err := s.db.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
			t.Fatal(err)
		}
		return count, free
	}
	before, _ := pages()

	got, err := s.Prune(ctx, keepB, keepE, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if got.Boots != n-keepB || got.Events != n-keepE {
		t.Errorf("Prune = %+v, want %d boots and %d events", got, n-keepB, n-keepE)
	}
	count := func(table, mac string) int {
		t.Helper()
		var c int
		if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM `+table+` WHERE mac = ?`, mac).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := count("boots", flooded); c != keepB {
		t.Errorf("flooded machine keeps %d boots, want %d", c, keepB)
	}
	if c := count("events", flooded); c != keepE {
		t.Errorf("flooded machine keeps %d events, want %d", c, keepE)
	}
	if b, err := s.LatestBoot(ctx, flooded); err != nil || b.Token != "live" {
		t.Errorf("latest boot after pruning: %q, %v; want the live one", b.Token, err)
	}
	// The newest boots are the ones kept.
	for i := n - keepB; i < n-1; i++ {
		if _, err := s.BootByToken(ctx, fmt.Sprintf("f%05d", i)); err != nil {
			t.Errorf("boot f%05d, among the newest %d: %v", i, keepB, err)
		}
	}
	if _, err := s.BootByToken(ctx, fmt.Sprintf("f%05d", n-keepB-1)); err == nil {
		t.Errorf("boot f%05d, older than the newest %d, was kept", n-keepB-1, keepB)
	}
	evs, err := s.Events(ctx, flooded, 0, 2)
	if err != nil || len(evs) == 0 || evs[0].Message != fmt.Sprintf("event %d", n-keepE) {
		t.Errorf("oldest event kept: %+v, %v; want \"event %d\"", evs, err, n-keepE)
	}
	if c := count("boots", quiet); c != 10 {
		t.Errorf("quiet machine has %d boots after pruning, want its 10", c)
	}
	if c := count("events", quiet); c != 10 {
		t.Errorf("quiet machine has %d events after pruning, want its 10", c)
	}
	if c := count("boots", odd); c != keepB+5 {
		t.Errorf("boots that have not ended: %d kept, want all %d", c, keepB+5)
	}
	after, free := pages()
	if be.name == "sqlite" && (after >= before || free != 0) {
		t.Errorf("pages: %d before pruning, %d after with %d free; want fewer and none free (auto_vacuum)", before, after, free)
	}
	if again, err := s.Prune(ctx, keepB, keepE, cutoff); err != nil || again != (Pruned{}) {
		t.Errorf("second Prune = %+v, %v; want nothing left to prune", again, err)
	}
}
