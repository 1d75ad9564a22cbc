package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/pxe-anywhere/pxe-anywhere/internal/privfile"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// openStore opens the state store that cfg names: PostgreSQL at
// server.database, or SQLite in state_dir when that is unset.
func openStore(ctx context.Context, s profiles.Server, id string, log *slog.Logger) (*store.DB, error) {
	if s.Database == "" {
		return store.OpenSQLite(ctx, filepath.Join(s.StateDir, "state.db"))
	}
	// The server id names its connections: change notifications
	// carry it (store.Watch).
	o := store.PostgresOptions{URL: s.Database, Name: id, OnWatchError: func(err error) {
		log.Warn("live updates from the other servers paused: reconnecting", "err", err)
	}}
	if s.DatabasePasswordFile != "" {
		pw, err := privfile.ReadSecret(s.DatabasePasswordFile)
		if err != nil {
			return nil, fmt.Errorf("server.database_password_file: %w", err)
		}
		o.Password = pw
	}
	return store.OpenPostgres(ctx, o)
}
