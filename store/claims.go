package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// claimsSchema is the migration that adds install claims: when several
// servers share one database, a machine's install is driven by the one
// server that holds its claim, for as long as that server renews the
// lease (heartbeat).
const claimsSchema = `CREATE TABLE claims (
		mac TEXT PRIMARY KEY,
		server TEXT NOT NULL,
		claimed_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	);`

// ErrClaimed is returned (wrapped, naming the holder) when another
// server holds a live claim on the machine.
var ErrClaimed = errors.New("claimed by another server")

// Claim is one server's hold on a machine's install, until Expires.
type Claim struct {
	MAC       string
	Server    string
	ClaimedAt time.Time
	Expires   time.Time
	// CancelBy, when set, is an operator's request, made through
	// another server, that the holder stop the install: who asked
	// (RequestCancel). The holder hears of it through Watch, or finds
	// it at its next heartbeat.
	CancelBy string
}

// cancelSchema is the migration that lets a cancel ride on a claim.
const cancelSchema = `ALTER TABLE claims ADD COLUMN cancel_by TEXT NOT NULL DEFAULT '';`

// The store's claim primitives take the time from the caller: the
// servers that share a database must keep their clocks close (NTP),
// well within the lease. Policy (when to claim, how long a lease, what a
// lapsed claim means for the install) is provision's.

// Claim takes the claim on mac for server until now+lease, or renews it
// when server holds it already. A claim that another server holds and
// that has not expired is refused with ErrClaimed. One statement decides,
// so of servers that claim at once exactly one gets it.
func (s *DB) Claim(ctx context.Context, mac, server string, lease time.Duration, now time.Time) (Claim, error) {
	mac = normMAC(mac)
	res, err := s.db.ExecContext(ctx, `INSERT INTO claims (mac, server, claimed_at, expires_at) VALUES (?, ?, ?, ?)
		ON CONFLICT(mac) DO UPDATE SET server = excluded.server, expires_at = excluded.expires_at,
			claimed_at = CASE WHEN claims.server = excluded.server THEN claims.claimed_at ELSE excluded.claimed_at END,
			cancel_by = CASE WHEN claims.server = excluded.server THEN claims.cancel_by ELSE '' END
		WHERE claims.server = excluded.server OR claims.expires_at < ?`,
		mac, server, unix(now), unix(now.Add(lease)), unix(now))
	if err != nil {
		return Claim{}, fmt.Errorf("claim %s: %w", mac, err)
	}
	c, err := s.ClaimOf(ctx, mac)
	if err != nil {
		return Claim{}, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return c, fmt.Errorf("machine %s: %w %s until %s", mac, ErrClaimed, c.Server, c.Expires.Format(time.RFC3339))
	}
	return c, nil
}

// ClaimOf returns the claim on mac, live or lapsed; ErrNotFound when
// there is none.
func (s *DB) ClaimOf(ctx context.Context, mac string) (Claim, error) {
	c := Claim{MAC: normMAC(mac)}
	var at, exp int64
	err := s.db.QueryRowContext(ctx, `SELECT server, claimed_at, expires_at, cancel_by FROM claims WHERE mac = ?`, c.MAC).Scan(&c.Server, &at, &exp, &c.CancelBy)
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("claim on %s: %w", mac, ErrNotFound)
	}
	c.ClaimedAt, c.Expires = fromUnix(at), fromUnix(exp)
	return c, err
}

// Heartbeat renews, until now+lease, every claim of server that has not
// expired, and returns how many it renewed. A lapsed claim stays lapsed:
// the other servers may already have taken the install over.
func (s *DB) Heartbeat(ctx context.Context, server string, lease time.Duration, now time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE claims SET expires_at = ? WHERE server = ? AND expires_at >= ?`,
		unix(now.Add(lease)), server, unix(now))
	if err != nil {
		return 0, fmt.Errorf("heartbeat of %s: %w", server, err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// RequestCancel asks the server that holds a live claim on mac, other
// than from, to stop the install: by (who asked) is kept on the claim
// until the holder releases it. It returns the claim; ErrNotFound when
// no other server holds a live one.
func (s *DB) RequestCancel(ctx context.Context, mac, from, by string, now time.Time) (Claim, error) {
	mac = normMAC(mac)
	res, err := s.db.ExecContext(ctx, `UPDATE claims SET cancel_by = ? WHERE mac = ? AND server <> ? AND expires_at >= ?`,
		by, mac, from, unix(now))
	if err != nil {
		return Claim{}, fmt.Errorf("cancel request on %s: %w", mac, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Claim{}, fmt.Errorf("no other server holds a live claim on %s: %w", mac, ErrNotFound)
	}
	return s.ClaimOf(ctx, mac)
}

// Release gives up server's claim on mac, and reports whether it held
// one.
func (s *DB) Release(ctx context.Context, mac, server string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM claims WHERE mac = ? AND server = ?`, normMAC(mac), server)
	if err != nil {
		return false, fmt.Errorf("release %s: %w", mac, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// LapsedClaims returns the claims whose lease ended before now: their
// servers stopped renewing them.
func (s *DB) LapsedClaims(ctx context.Context, now time.Time) ([]Claim, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT mac, server, claimed_at, expires_at, cancel_by FROM claims WHERE expires_at < ? ORDER BY mac`, unix(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Claim
	for rows.Next() {
		var c Claim
		var at, exp int64
		if err := rows.Scan(&c.MAC, &c.Server, &at, &exp, &c.CancelBy); err != nil {
			return nil, err
		}
		c.ClaimedAt, c.Expires = fromUnix(at), fromUnix(exp)
		out = append(out, c)
	}
	return out, rows.Err()
}

// ReapClaim deletes c if it is still held by c.Server and still lapsed
// at now, and reports whether it did: of the servers that find one
// lapsed claim, exactly one reaps it (and so handles the cut-off
// install), and a claim renewed or taken over meanwhile is left alone.
func (s *DB) ReapClaim(ctx context.Context, c Claim, now time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM claims WHERE mac = ? AND server = ? AND expires_at < ?`,
		normMAC(c.MAC), c.Server, unix(now))
	if err != nil {
		return false, fmt.Errorf("reap claim on %s: %w", c.MAC, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}
