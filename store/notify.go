package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// On PostgreSQL, every change of a machine row and every new event
// raises a notification on changesChannel whose payload is the writing
// connection's application_name (the server's name, see
// PostgresOptions.Name), a space, and the machine's MAC. Servers that
// share the database Watch it to update their live views when another
// server changes a machine. SQLite has one server: nothing to watch.
const changesChannel = "pxe_anywhere_changes"

// notifySQL installs the triggers; it is idempotent and runs at every
// open, under the migrations' advisory lock.
var notifySQL = []string{
	`CREATE OR REPLACE FUNCTION pxe_anywhere_notify() RETURNS trigger AS $$
	BEGIN
		PERFORM pg_notify('` + changesChannel + `', current_setting('application_name') || ' ' ||
			CASE WHEN TG_OP = 'DELETE' THEN OLD.mac ELSE NEW.mac END);
		RETURN NULL;
	END $$ LANGUAGE plpgsql`,
	`CREATE OR REPLACE TRIGGER pxe_anywhere_machines_notify AFTER INSERT OR UPDATE OR DELETE ON machines
		FOR EACH ROW EXECUTE FUNCTION pxe_anywhere_notify()`,
	`CREATE OR REPLACE TRIGGER pxe_anywhere_events_notify AFTER INSERT ON events
		FOR EACH ROW EXECUTE FUNCTION pxe_anywhere_notify()`,
}

// installNotify installs the notification triggers on PostgreSQL.
func (s *DB) installNotify(ctx context.Context) error {
	tx, err := s.db.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, pgMigrationLock); err != nil {
		return fmt.Errorf("change notifications: %w", err)
	}
	for _, q := range notifySQL {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("change notifications: %w", err)
		}
	}
	return tx.Commit()
}

// Change is one notification: a server (by its application_name)
// changed machine MAC or added one of its events. A Change with no MAC
// says that Watch is listening, at its start and after each reconnect:
// changes made before it may have been missed, so what a caller keeps
// from the store it should read again.
type Change struct {
	Server string
	MAC    string
}

// Watch calls fn with every change that any server (this one too)
// makes to a machine, until ctx ends. It listens on a connection of its
// own and reconnects when that breaks (a database restart), every
// retry seconds; changes while it was away are not replayed, but each
// time it starts listening it says so (a Change with no MAC). On
// SQLite it returns at once: one server, nothing to hear.
func (s *DB) Watch(ctx context.Context, retry time.Duration, fn func(Change)) error {
	if s.pgcfg == nil {
		return nil
	}
	for ctx.Err() == nil {
		err := s.listen(ctx, fn)
		if ctx.Err() != nil {
			break
		}
		if s.onWatchErr != nil {
			s.onWatchErr(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
	return nil
}

// listen is one connection's worth of Watch.
func (s *DB) listen(ctx context.Context, fn func(Change)) error {
	cctx, cancel := context.WithTimeout(ctx, s.pgcfg.ConnectTimeout)
	c, err := pgx.ConnectConfig(cctx, s.pgcfg)
	cancel()
	if err != nil {
		// pgx's connect error names user and database, not the password
		// (only its parse error quotes the connection string).
		return fmt.Errorf("listening for changes: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, "LISTEN "+changesChannel); err != nil {
		return fmt.Errorf("listening for changes: %w", err)
	}
	fn(Change{}) // listening (again): what changed before may be missed
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("listening for changes: %w", err)
		}
		server, mac, ok := strings.Cut(n.Payload, " ")
		if !ok {
			continue
		}
		fn(Change{Server: server, MAC: mac})
	}
}
