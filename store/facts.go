package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// factsSchema is the migration that adds discovery: the facts a
// discovered machine reported, and who assigned a profile to a machine
// that the config does not list (a rule or an operator).
const factsSchema = `CREATE TABLE facts (
		mac TEXT PRIMARY KEY,
		facts TEXT NOT NULL DEFAULT '',
		facter TEXT NOT NULL DEFAULT '',
		dhcp TEXT NOT NULL DEFAULT '',
		addr TEXT NOT NULL DEFAULT '',
		collected_at INTEGER NOT NULL DEFAULT 0,
		dhcp_at INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE assignments (
		mac TEXT PRIMARY KEY,
		source TEXT NOT NULL,
		reason TEXT NOT NULL,
		at INTEGER NOT NULL
	);`

// Limits of what one machine's facts may take in the store: the
// machine that reports them is not trusted.
const (
	MaxFactsBytes  = 64 << 10
	MaxFacterBytes = 1 << 20
	MaxDHCPBytes   = 4 << 10
)

// MachineFacts are what discovery learned of a machine, as JSON texts
// that provision writes and reads ("" when not known yet).
type MachineFacts struct {
	MAC    string
	Facts  string // the hardware facts (rules.Facts)
	Facter string // a nixos-facter report, when the image has the tool
	DHCP   string // the DHCP context of the machine's latest boot
	// Addr is where the installer answered when the facts were read.
	Addr        string
	CollectedAt time.Time // zero when no facts were read yet
	DHCPAt      time.Time
}

// SaveFacts records the facts read from a machine, replacing older ones.
func (s *DB) SaveFacts(ctx context.Context, mac, facts, facter, addr string) error {
	if len(facts) > MaxFactsBytes || len(facter) > MaxFacterBytes {
		return fmt.Errorf("facts of %s: %d + %d bytes, more than the store keeps (%d, %d)", mac, len(facts), len(facter), MaxFactsBytes, MaxFacterBytes)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO facts (mac, facts, facter, addr, collected_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT(mac) DO UPDATE SET facts = excluded.facts, facter = excluded.facter, addr = excluded.addr, collected_at = excluded.collected_at`,
		normMAC(mac), facts, facter, addr, unix(time.Now()))
	if err != nil {
		return fmt.Errorf("save facts of %s: %w", mac, err)
	}
	return nil
}

// SaveDHCPContext records the DHCP context of a machine's boot.
func (s *DB) SaveDHCPContext(ctx context.Context, mac, dhcp string) error {
	if len(dhcp) > MaxDHCPBytes {
		return fmt.Errorf("DHCP context of %s: %d bytes, more than %d", mac, len(dhcp), MaxDHCPBytes)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO facts (mac, dhcp, dhcp_at) VALUES (?, ?, ?)
		ON CONFLICT(mac) DO UPDATE SET dhcp = excluded.dhcp, dhcp_at = excluded.dhcp_at`,
		normMAC(mac), dhcp, unix(time.Now()))
	if err != nil {
		return fmt.Errorf("save DHCP context of %s: %w", mac, err)
	}
	return nil
}

// Facts returns what discovery learned of mac; ErrNotFound when nothing.
func (s *DB) Facts(ctx context.Context, mac string) (MachineFacts, error) {
	f := MachineFacts{MAC: normMAC(mac)}
	var collected, dhcpAt int64
	err := s.db.QueryRowContext(ctx, `SELECT facts, facter, dhcp, addr, collected_at, dhcp_at FROM facts WHERE mac = ?`, f.MAC).
		Scan(&f.Facts, &f.Facter, &f.DHCP, &f.Addr, &collected, &dhcpAt)
	if errors.Is(err, sql.ErrNoRows) {
		return f, fmt.Errorf("facts of %s: %w", mac, ErrNotFound)
	}
	if collected != 0 {
		f.CollectedAt = fromUnix(collected)
	}
	if dhcpAt != 0 {
		f.DHCPAt = fromUnix(dhcpAt)
	}
	return f, err
}

// Assignment says who gave a machine that the config does not list its
// profile, and why.
type Assignment struct {
	MAC    string
	Source string // "rule" or "operator"
	Reason string
	At     time.Time
}

// Assign gives a recorded machine a profile and hostname and records
// who did and why, with an event, in one transaction.
func (s *DB) Assign(ctx context.Context, mac, profile, hostname, source, reason string) error {
	mac = normMAC(mac)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := assignIn(ctx, tx, mac, profile, hostname, source, reason); err != nil {
		return err
	}
	return tx.Commit()
}

// AssignNew is Assign for a rule's match, bounded: a machine that holds
// no assignment yet is refused (ErrLimit) when limit machines hold one
// already, and a machine the store does not know is recorded first. A
// machine that holds one (a rule renames it, or gives it another
// profile) is never refused. A rule can match any MAC that a host
// invents; the count, the insert and the assignment are one transaction
// under the discovery lock, so matches at once, on one server or
// several, cannot pass the limit together.
func (s *DB) AssignNew(ctx context.Context, mac, profile, hostname, source, reason string, limit int) error {
	mac = normMAC(mac)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := s.db.d.lock(ctx, tx, "discover"); err != nil {
		return err
	}
	var has, n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM assignments WHERE mac = ?`, mac).Scan(&has); err != nil {
		return fmt.Errorf("assign %s: %w", mac, err)
	}
	if has == 0 {
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM assignments`).Scan(&n); err != nil {
			return fmt.Errorf("assign %s: %w", mac, err)
		}
		if n >= limit {
			return fmt.Errorf("assign %s: %d machines assigned: %w", mac, n, ErrLimit)
		}
	}
	now := unix(time.Now())
	if _, err := tx.ExecContext(ctx, insertDiscovered, mac, StateDiscovered, now, now); err != nil {
		return fmt.Errorf("register machine %s: %w", mac, err)
	}
	if err := assignIn(ctx, tx, mac, profile, hostname, source, reason); err != nil {
		return err
	}
	return tx.Commit()
}

// assignIn is Assign's work inside tx.
func assignIn(ctx context.Context, tx *sqlTx, mac, profile, hostname, source, reason string) error {
	now := unix(time.Now())
	res, err := tx.ExecContext(ctx, `UPDATE machines SET profile = ?, hostname = ?, updated_at = ? WHERE mac = ?`, profile, hostname, now, mac)
	if err != nil {
		return fmt.Errorf("assign %s: %w", mac, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("machine %s: %w", mac, ErrNotFound)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO assignments (mac, source, reason, at) VALUES (?, ?, ?, ?)
		ON CONFLICT(mac) DO UPDATE SET source = excluded.source, reason = excluded.reason, at = excluded.at`, mac, source, reason, now); err != nil {
		return fmt.Errorf("assign %s: %w", mac, err)
	}
	msg := fmt.Sprintf("assigned profile %s by %s: %s", profile, source, reason)
	if hostname != "" {
		msg = fmt.Sprintf("assigned profile %s, hostname %s, by %s: %s", profile, hostname, source, reason)
	}
	_, err = tx.ExecContext(ctx, noteEvent, now, "", msg, mac)
	return err
}

// Unassign takes back a profile that a rule or an operator gave, with
// an event saying why; a machine without an assignment is left as is.
func (s *DB) Unassign(ctx context.Context, mac, why string) error {
	mac = normMAC(mac)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM assignments WHERE mac = ?`, mac)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil
	}
	now := unix(time.Now())
	if _, err := tx.ExecContext(ctx, `UPDATE machines SET profile = '', hostname = '', updated_at = ? WHERE mac = ?`, now, mac); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, noteEvent, now, "", "assignment taken back: "+why, mac); err != nil {
		return err
	}
	return tx.Commit()
}

// GetAssignment returns mac's assignment; ErrNotFound when it has none.
func (s *DB) GetAssignment(ctx context.Context, mac string) (Assignment, error) {
	a := Assignment{MAC: normMAC(mac)}
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT source, reason, at FROM assignments WHERE mac = ?`, a.MAC).Scan(&a.Source, &a.Reason, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("assignment of %s: %w", mac, ErrNotFound)
	}
	a.At = fromUnix(at)
	return a, err
}

// Assignments returns every assignment by MAC.
func (s *DB) Assignments(ctx context.Context) (map[string]Assignment, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT mac, source, reason, at FROM assignments`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Assignment{}
	for rows.Next() {
		var a Assignment
		var at int64
		if err := rows.Scan(&a.MAC, &a.Source, &a.Reason, &at); err != nil {
			return nil, err
		}
		a.At = fromUnix(at)
		out[a.MAC] = a
	}
	return out, rows.Err()
}
