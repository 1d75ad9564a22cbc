package provision

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/internal/pgtest"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// TestClaimsTwoServers: two servers (two Provisioners, each with its own
// connection pool) share one real PostgreSQL database. Server rack-a
// installs the machine (the real engine against a real sshd whose disko
// hangs); rack-b, handed the same machine's installer, finds the claim
// and leaves it alone with an event, without using the boot's token.
// rack-a's heartbeat keeps the claim past several leases. When rack-a
// loses the database (its pool closed: to the others it is dead), rack-b
// reaps the lapsed claim and fails the install naming rack-a, within a
// few leases, and a reinstall through rack-b is accepted.
func TestClaimsTwoServers(t *testing.T) {
	pgtest.Require(t)
	l := buildEngineLab(t, 1, 2, "", "", "  claim_lease: 3s\n")
	ctx := context.Background()
	pg, db := pgtest.ForTest(t)
	pa, sta := startOnPostgres(t, pg, db, l.cfg, l.signer, "rack-a")
	pb, stb := startOnPostgres(t, pg, db, l.cfg, l.signer, "rack-b")
	l.p, l.store = pa, stb // rack-b's pool reads the state: it outlives rack-a's

	mac := l.macs[0]
	if err := os.WriteFile(filepath.Join(l.targets[0].Dir, "hang"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l.start(t, 0)
	waitFor(t, "disko running on the target", func() bool {
		_, err := os.Stat(filepath.Join(l.targets[0].Dir, "disko-running"))
		return err == nil
	})
	if c, err := stb.ClaimOf(ctx, mac); err != nil || c.Server != "rack-a" {
		t.Fatalf("claim = %+v, %v; want rack-a's", c, err)
	}

	// rack-b is handed the machine's installer (a callback of a boot
	// of its own): it must leave the machine alone.
	b := store.Boot{Token: "tok-rack-b-" + mac, MAC: mac, IP: "127.0.0.1", HostKeyPrivate: []byte("unused"),
		HostKeyPublic: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(l.targets[0].HostKey)))}
	if err := stb.CreateBoot(ctx, b); err != nil {
		t.Fatal(err)
	}
	err := pb.claim(ctx, b, netip.MustParseAddr("127.0.0.1"), "callback")
	if !errors.Is(err, admin.ErrConflict) || !strings.Contains(err.Error(), "rack-a") {
		t.Fatalf("rack-b's claim: %v; want a conflict naming rack-a", err)
	}
	if got, _ := stb.BootByToken(ctx, b.Token); got.UsedAt != nil {
		t.Fatal("rack-b used the token of a machine rack-a installs")
	}
	if pb.queue.busy(mac) {
		t.Fatal("rack-b queued an install of a machine rack-a installs")
	}
	if ev := l.events(t, 0); !strings.Contains(ev, "left alone by server rack-b") {
		t.Fatalf("no event for rack-b leaving the machine alone:\n%s", ev)
	}

	// Three leases: rack-a's heartbeat keeps the claim, rack-b's
	// reaper leaves the install alone.
	time.Sleep(9 * time.Second)
	if r, _ := stb.Machine(ctx, mac); r.State != store.StateInstalling {
		t.Fatalf("after 3 leases with rack-a alive: %s (%s), want installing", r.State, r.Error)
	}

	// rack-a is cut off: its claim lapses, rack-b reaps it.
	sta.Close()
	lost := time.Now()
	var r store.MachineRecord
	waitFor(t, "rack-b failing rack-a's install", func() bool {
		r, _ = stb.Machine(ctx, mac)
		return r.State == store.StateFailed
	})
	// The bound: the lease, plus a heartbeat period on each side; the
	// slack only keeps a loaded machine from failing the test.
	if took := time.Since(lost); took > 3*time.Second+2*time.Second+5*time.Second {
		t.Errorf("rack-b took %s to reap rack-a's claim (lease 3s)", took)
	}
	if r.Error != "interrupted: server rack-a stopped" {
		t.Fatalf("error = %q", r.Error)
	}
	if ev := l.events(t, 0); !strings.Contains(ev, "server rack-a stopped renewing its claim during") || !strings.Contains(ev, "reaped by server rack-b") {
		t.Fatalf("no event naming the dead server:\n%s", ev)
	}
	if _, err := stb.ClaimOf(ctx, mac); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim after reaping: %v", err)
	}
	if err := pb.Reinstall(ctx, mac, "test"); err != nil {
		t.Fatalf("reinstall through rack-b: %v", err)
	}
	if r, _ := stb.Machine(ctx, mac); !r.Reinstall {
		t.Fatalf("reinstall not recorded: %+v", r)
	}
	// rack-a, still running its install but cut off for a whole lease,
	// stops it rather than finish an install the others failed.
	l.remoteGone(t, 0)
}

// TestConfigConflictReported: another server sharing the store defines
// this server's machine with another hostname and profile: at start the
// machine gets an event naming both servers and both definitions. A
// server that agrees is not reported; once the other server's config
// agrees, a reload reports nothing new.
func TestConfigConflictReported(t *testing.T) {
	l := buildEngineLab(t, 1, 1, "", "", "")
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	mac := l.macs[0]
	if err := st.SetConfigView(ctx, "rack-b", []store.ConfigMachine{{MAC: mac, Hostname: "db-07", Profile: "db"}}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetConfigView(ctx, "rack-c", []store.ConfigMachine{{MAC: mac, Hostname: "", Profile: "m0"}}); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	p, err := New(pctx, l.cfg, Options{Store: st, Signer: l.signer, ServerID: "rack-a", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); p.Wait() })
	l.store = st
	ev := l.events(t, 0)
	want := `config conflict: server rack-a defines this machine as hostname "" profile "m0", server rack-b as hostname "db-07" profile "db"`
	if !strings.Contains(ev, want) {
		t.Fatalf("no conflict event %q in:\n%s", want, ev)
	}
	if strings.Contains(ev, "rack-c") {
		t.Fatalf("a server that agrees is reported:\n%s", ev)
	}
	if err := st.SetConfigView(ctx, "rack-b", []store.ConfigMachine{{MAC: mac, Hostname: "", Profile: "m0"}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(ctx, l.cfg); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(l.events(t, 0), "config conflict"); n != 1 {
		t.Fatalf("%d conflict events after the configs agree, want the 1 from before", n)
	}
}

// startOnPostgres starts a server named id on database db of pg, as
// one of several that share it; the test's end stops it.
func startOnPostgres(t *testing.T, pg *pgtest.Server, db string, cfg *profiles.Config, signer ssh.Signer, id string) (*Provisioner, *store.DB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.OpenPostgres(ctx, store.PostgresOptions{URL: pg.URLWithoutPassword(db), Password: pg.Password})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	p, err := New(ctx, cfg, Options{Store: st, Signer: signer, ServerID: id, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		p.Wait()
		st.Close()
	})
	return p, st
}
