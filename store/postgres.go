package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// PostgresOptions say how to reach a PostgreSQL database.
type PostgresOptions struct {
	// URL is a libpq connection string or postgres:// URL. What it
	// leaves out comes from the standard environment (PGHOST,
	// PGPASSWORD, PGPASSFILE and the others), as for psql.
	URL string
	// Password, when set, overrides the URL's and the environment's
	// (the caller reads it from a private file).
	Password string
	// MaxConns bounds the connections the server opens (0: 16).
	MaxConns int
	// Name is the server's name on its connections (application_name):
	// change notifications carry it (Watch), so a server can tell its
	// own changes from the others'.
	Name string
	// OnWatchError, when set, hears why Watch's connection broke.
	OnWatchError func(error)
}

// OpenPostgres connects to a PostgreSQL database and brings its schema
// up to date. Several servers may share the database; the store's
// one-shot operations stay one-shot across them.
//
// It goes through pgx's database/sql driver (stdlib) rather than a
// pgxpool: the store's queries, transactions and scanning are then the
// same code for both engines, and database/sql's pool is enough for a
// provisioning server's load.
func OpenPostgres(ctx context.Context, o PostgresOptions) (*DB, error) {
	cfg, err := pgx.ParseConfig(o.URL)
	if err != nil {
		// pgx's error quotes the connection string, password and all.
		return nil, errors.New("state database: the PostgreSQL connection string does not parse")
	}
	if o.Password != "" {
		cfg.Password = o.Password
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if o.Name != "" {
		cfg.RuntimeParams["application_name"] = o.Name
	}
	where := fmt.Sprintf("state database postgres %s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
	db := stdlib.OpenDB(*cfg)
	if o.MaxConns <= 0 {
		o.MaxConns = 16
	}
	db.SetMaxOpenConns(o.MaxConns)
	db.SetMaxIdleConns(min(o.MaxConns, 4))
	// A connection lost with the database (a restart) is dropped from
	// the pool; recycling bounds how long a stale one can linger.
	db.SetConnMaxLifetime(30 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	s := &DB{db: &sqlDB{DB: db, d: postgresDialect}, pgcfg: cfg.Copy(), onWatchErr: o.OnWatchError}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if err := s.installNotify(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return s, nil
}

// Backend names the engine behind s: "sqlite" or "postgres".
func (s *DB) Backend() string { return s.db.d.name }
