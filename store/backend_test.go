package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/pgtest"
)

// The conformance suite: every TestStore… test runs against both
// backends, SQLite in a temporary file and a real PostgreSQL that the
// tests start (internal/pgtest), each test on a fresh database. Without
// PostgreSQL's server binaries the postgres half skips, or fails under
// PXE_LAB_REQUIRED=1.

// backend is one engine the suite runs against.
type backend struct {
	name string
	// create makes a fresh, empty database and returns where it is (a
	// file, a connection string); openAt opens it.
	create func(t *testing.T) string
	openAt func(ctx context.Context, where string) (*DB, error)
}

// open opens a fresh store, closed when t ends, and says where it is.
func (b backend) open(t *testing.T) (*DB, string) {
	t.Helper()
	where := b.create(t)
	s, err := b.openAt(context.Background(), where)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, where
}

var sqliteBackend = backend{
	name:   "sqlite",
	create: func(t *testing.T) string { return filepath.Join(t.TempDir(), "state.db") },
	openAt: OpenSQLite,
}

var pg struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
}

var postgresBackend = backend{
	name: "postgres",
	create: func(t *testing.T) string {
		t.Helper()
		bindir := pgtest.Require(t)
		pg.once.Do(func() { pg.srv, pg.err = pgtest.Start(context.Background(), bindir) })
		if pg.err != nil {
			t.Fatalf("starting PostgreSQL: %v", pg.err)
		}
		db, err := pg.srv.NewDatabase(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return pg.srv.URLWithoutPassword(db)
	},
	openAt: func(ctx context.Context, url string) (*DB, error) {
		return OpenPostgres(ctx, PostgresOptions{URL: url, Password: pg.srv.Password})
	},
}

// forBackends runs f once per backend, as subtests named for it.
func forBackends(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range []backend{sqliteBackend, postgresBackend} {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pg.srv != nil {
		if err := pg.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping PostgreSQL:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// TestPostgresPasswordFromEnvironment: with no password given, the
// standard PostgreSQL environment supplies it (PGPASSWORD here; pgx
// reads PGPASSFILE and ~/.pgpass the same way), and a wrong one is
// refused with an error that does not show it.
func TestPostgresPasswordFromEnvironment(t *testing.T) {
	url := postgresBackend.create(t)
	ctx := context.Background()
	t.Setenv("PGPASSWORD", pg.srv.Password)
	s, err := OpenPostgres(ctx, PostgresOptions{URL: url})
	if err != nil {
		t.Fatalf("PGPASSWORD: %v", err)
	}
	s.Close()
	t.Setenv("PGPASSWORD", "wrong-password-123")
	if _, err := OpenPostgres(ctx, PostgresOptions{URL: url}); err == nil || strings.Contains(err.Error(), "wrong-password-123") {
		t.Fatalf("wrong PGPASSWORD: %v", err)
	}
	if _, err := OpenPostgres(ctx, PostgresOptions{URL: "postgres://u:hunter2@[bad"}); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("unparsable URL: %v", err)
	}
}

// TestPostgresRestart: the database restarts under a writer; the store
// reconnects on its own (the writes during the outage fail, the ones
// after succeed) and what was committed before is all there.
func TestPostgresRestart(t *testing.T) {
	ctx := context.Background()
	s, _ := postgresBackend.open(t)
	const mac = "52:54:00:00:09:01"
	if _, err := s.UpsertMachine(ctx, mac, "h", "p"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan [2]int)
	go func() {
		ok, failed := 0, 0
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- [2]int{ok, failed}
				return
			default:
			}
			if s.AddEvent(ctx, mac, "", fmt.Sprintf("event %d", i)) == nil {
				ok++
			} else {
				failed++
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	if err := pg.srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// Every pooled connection broke; each is found out and replaced.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := s.AddEvent(ctx, mac, "", "after the restart")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write within 30 s of the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range 20 {
		if err := s.AddEvent(ctx, mac, "", fmt.Sprintf("steady %d", i)); err != nil {
			t.Fatalf("write %d after the store reconnected: %v", i, err)
		}
	}
	close(stop)
	n := <-done
	ok, failed := n[0], n[1]
	if failed == 0 {
		t.Fatalf("the writer saw no failure: the restart was not felt (%d writes)", ok)
	}
	evs, err := s.Events(ctx, mac, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	// Every write that was acknowledged is there: the writer's, the
	// first after the restart, and the 20 steady ones.
	if len(evs) != ok+1+20 {
		t.Fatalf("%d events after the restart, want %d acknowledged ones", len(evs), ok+1+20)
	}
}
