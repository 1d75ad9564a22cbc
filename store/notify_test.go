package store

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestWatchAcrossServers: on PostgreSQL, a change that server "a" makes
// to a machine (its row, or an event) reaches server "b"'s
// Watch, named for "a"; after PostgreSQL restarts, Watch reconnects and
// hears the next change. On SQLite, Watch returns at once.
func TestWatchAcrossServers(t *testing.T) {
	ctx := context.Background()
	lite, err := OpenSQLite(ctx, sqliteBackend.create(t))
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	if err := lite.Watch(ctx, time.Second, func(Change) { t.Error("a change on SQLite") }); err != nil {
		t.Fatal(err)
	}

	url := postgresBackend.create(t)
	watchErrs := make(chan error, 100)
	open := func(name string) *DB {
		s, err := OpenPostgres(ctx, PostgresOptions{URL: url, Password: pg.srv.Password, Name: name, OnWatchError: func(err error) {
			t.Logf("watch of %s: %v", name, err)
			select {
			case watchErrs <- err:
			default:
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open("a"), open("b")
	changes := make(chan Change, 100)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Watch(wctx, 200*time.Millisecond, func(c Change) { changes <- c })
	}()
	t.Cleanup(func() { cancel(); <-done })
	// Not a timing assertion: the bound only ends a hang.
	expect := func(mac string, write func()) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		write()
		for {
			select {
			case c := <-changes:
				if c.Server == "a" && c.MAC == mac {
					return
				}
			case <-tick.C:
				write() // Watch may not be listening yet (or again)
			case <-deadline:
				t.Fatalf("no change of %s from a", mac)
			}
		}
	}
	const mac = "52:54:00:77:00:01"
	if _, err := a.UpsertMachine(ctx, mac, "w-01", "p"); err != nil {
		t.Fatal(err)
	}
	// Watch says when it listens: before any change of a's, and again
	// after the restart below.
	listening := func(what string) {
		t.Helper()
		for deadline := time.After(30 * time.Second); ; {
			select {
			case c := <-changes:
				if c.MAC == "" {
					return
				}
			case <-deadline:
				t.Fatalf("Watch never said it listens %s", what)
			}
		}
	}
	listening("at its start")
	expect(mac, func() { a.AddEvent(ctx, mac, "", "an event") })
	expect(mac, func() { a.RequestReinstall(ctx, mac) })
	// While the database is away, Watch says why it cannot reconnect
	// (what pgx says of the connection), never with the password.
	if err := pg.srv.Down(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.After(30 * time.Second); ; {
		var err error
		select {
		case err = <-watchErrs:
		case <-deadline:
			t.Fatal("Watch reported no error while the database was down")
		}
		if strings.Contains(err.Error(), pg.srv.Password) {
			t.Fatalf("a watch error shows the password: %v", err)
		}
		if strings.Contains(err.Error(), "failed to connect") {
			break
		}
	}
	if err := pg.srv.Up(ctx); err != nil {
		t.Fatal(err)
	}
	listening("again after the restart")
	expect(mac, func() {
		if err := a.AddEvent(ctx, mac, "", "after the restart"); err != nil && !strings.Contains(err.Error(), "conn") {
			t.Logf("write during reconnect: %v", err)
		}
	})
}
