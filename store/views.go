package store

import (
	"context"
	"fmt"
	"time"
)

// viewsSchema is the migration that records each server's view of the
// machines its config lists, so that servers sharing the database can
// find where their configs disagree about a machine.
const viewsSchema = `CREATE TABLE config_views (
		server TEXT NOT NULL,
		mac TEXT NOT NULL,
		hostname TEXT NOT NULL,
		profile TEXT NOT NULL,
		updated_at INTEGER NOT NULL,
		PRIMARY KEY (server, mac)
	);`

// ConfigMachine is one machine as one server's config defines it.
type ConfigMachine struct {
	Server   string
	MAC      string
	Hostname string
	Profile  string
}

// SetConfigView replaces server's recorded view with machines (its
// config's, at start and at each reload), in one transaction.
func (s *DB) SetConfigView(ctx context.Context, server string, machines []ConfigMachine) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("config view of %s: %w", server, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM config_views WHERE server = ?`, server); err != nil {
		return fmt.Errorf("config view of %s: %w", server, err)
	}
	now := unix(time.Now())
	for _, m := range machines {
		if _, err := tx.ExecContext(ctx, `INSERT INTO config_views (server, mac, hostname, profile, updated_at) VALUES (?, ?, ?, ?, ?)`,
			server, normMAC(m.MAC), m.Hostname, m.Profile, now); err != nil {
			return fmt.Errorf("config view of %s: %w", server, err)
		}
	}
	return tx.Commit()
}

// ConfigConflicts returns, for the machines in server's view, the other
// servers' views that define the same MAC with another hostname or
// profile, ordered by MAC and server.
func (s *DB) ConfigConflicts(ctx context.Context, server string) ([]ConfigMachine, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT o.server, o.mac, o.hostname, o.profile
		FROM config_views m JOIN config_views o ON o.mac = m.mac AND o.server <> m.server
		WHERE m.server = ? AND (o.hostname <> m.hostname OR o.profile <> m.profile)
		ORDER BY o.mac, o.server`, server)
	if err != nil {
		return nil, fmt.Errorf("config conflicts of %s: %w", server, err)
	}
	defer rows.Close()
	var out []ConfigMachine
	for rows.Next() {
		var c ConfigMachine
		if err := rows.Scan(&c.Server, &c.MAC, &c.Hostname, &c.Profile); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
