package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/internal/pgtest"
	"golang.org/x/crypto/ssh"
)

// TestAssignedBootsUnderIgnore: under unknown_machines: ignore, DHCP
// still lets a machine boot that an operator assigned a profile (its
// reinstall must not stop working when discovery is turned off), and
// stops once it is forgotten. An assignment written by another server
// counts from the next refresh (a sweep, or the store's notification).
func TestAssignedBootsUnderIgnore(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	decide := func(m string) dhcp.Decision { return f.p.Decide(ctx, dhcp.Machine{MAC: mac(m)}) }
	if d := decide(macX); d != dhcp.Ignore {
		t.Fatalf("unlisted machine under ignore: %v", d)
	}
	if _, err := f.store.UpsertMachine(ctx, macX, "", ""); err != nil { // discovered earlier
		t.Fatal(err)
	}
	if err := f.p.Assign(ctx, macX, "web", "db-1", "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if d := decide(macX); d != dhcp.Boot {
		t.Fatalf("operator-assigned machine under ignore: %v, want boot", d)
	}
	if err := f.p.Forget(ctx, macX, "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if d := decide(macX); d != dhcp.Ignore {
		t.Fatalf("forgotten machine under ignore: %v", d)
	}
	// Another server's assignment: the store has it, this server's
	// snapshot not yet.
	const macY = "52:54:00:aa:bb:07"
	if _, err := f.store.UpsertMachine(ctx, macY, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Assign(ctx, macY, "web", "", "operator", "by operator (API) on another server"); err != nil {
		t.Fatal(err)
	}
	f.p.sweep(ctx)
	if d := decide(macY); d != dhcp.Boot {
		t.Fatalf("machine assigned through another server, after a sweep: %v, want boot", d)
	}
}

// TestDHCPDoesNotWaitForTheStore: while another connection holds the
// state store's write lock, DHCP still decides (the firmware note it
// makes is written beside it), a new binding's save gives up after its
// bound (the binding kept in memory), and the note lands once the lock
// goes.
func TestDHCPDoesNotWaitForTheStore(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	db, err := sql.Open("sqlite", "file:"+f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	decided := make(chan dhcp.Decision, 1)
	go func() {
		decided <- f.p.Decide(ctx, dhcp.Machine{MAC: mac(macA), Firmware: dhcp.Firmware{Arch: dhcp.ArchEFIx64}})
	}()
	// A Decide that wrote in line would wait out the store's busy
	// timeout (10 s) here; half of it is slack enough for a loaded
	// machine, for a decision that takes microseconds.
	select {
	case d := <-decided:
		if d != dhcp.Boot {
			t.Fatalf("configured machine: %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("DHCP's decision waited for the store's write lock")
	}
	// A new binding is saved before its ACK (a restart must know it),
	// but not for longer than bindingWriteTimeout: still under the
	// lock, Bound returns well before the store's 10 s busy timeout,
	// and the binding holds in memory.
	bound := make(chan struct{})
	go func() {
		f.p.Bound(ctx, dhcp.Binding{MAC: mac(macB), Addr: netip.MustParseAddr("10.77.0.12"), Interface: "br0", Expires: time.Now().Add(time.Hour)})
		close(bound)
	}()
	select {
	case <-bound:
	case <-time.After(bindingWriteTimeout + 4*time.Second):
		t.Fatal("DHCP's binding write waited for the store's write lock past its bound")
	}
	if _, ok := f.p.bindings.lookup(macB, netip.MustParseAddr("10.77.0.12")); !ok {
		t.Fatal("a binding the store could not take was not kept in memory")
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	// The first note may have given up on the lock; the machine's next
	// request writes it again.
	waitFor(t, "the firmware note", func() bool {
		f.p.Decide(ctx, dhcp.Machine{MAC: mac(macA), Firmware: dhcp.Firmware{Arch: dhcp.ArchEFIx64}})
		return f.state(t, macA).Firmware == "efi-x64"
	})
}

// TestAssignedThroughOtherServer: two servers on one PostgreSQL, both
// under unknown_machines: ignore. An operator assigns a machine through
// rack-a; rack-b's DHCP lets it boot long before rack-b's next sweep:
// from the store's notification, or, when rack-b's listener connected
// only after the assignment, from the full read it makes on connecting.
// It ignores the machine again once it is forgotten through rack-a.
func TestAssignedThroughOtherServer(t *testing.T) {
	pg, db := pgtest.ForTest(t)
	ctx := context.Background()
	cfg := testConfig(t, "ignore")
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	pa, _ := startOnPostgres(t, pg, db, cfg, signer, "rack-a")
	pb, _ := startOnPostgres(t, pg, db, cfg, signer, "rack-b")
	decideB := func() dhcp.Decision { return pb.Decide(ctx, dhcp.Machine{MAC: mac(macX)}) }
	if d := decideB(); d != dhcp.Ignore {
		t.Fatalf("rack-b, before the assignment: %v", d)
	}
	if _, err := pa.store.UpsertMachine(ctx, macX, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := pa.Assign(ctx, macX, "web", "", "operator (API)"); err != nil {
		t.Fatal(err)
	}
	until := func(what string, want dhcp.Decision) {
		t.Helper()
		// Well inside the one-minute sweep: only the notification can
		// have told rack-b.
		for deadline := time.Now().Add(20 * time.Second); decideB() != want; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("rack-b %s: still not %v after 20 s", what, want)
			}
		}
	}
	until("after the assignment through rack-a", dhcp.Boot)
	if err := pa.Forget(ctx, macX, "operator (API)"); err != nil {
		t.Fatal(err)
	}
	until("after the machine was forgotten through rack-a", dhcp.Ignore)
}

// TestAssignedBootsUnderIgnoreOverDHCP is TestAssignedBootsUnderIgnore
// with a real DHCP client (udhcpc as iPXE) against the real DHCP
// server, and the operator's actions through the admin API: an
// unlisted machine gets a lease and no boot file; assigned, its next
// DHCP names its script; forgotten, no boot file again.
func TestAssignedBootsUnderIgnoreOverDHCP(t *testing.T) {
	h := newHandoffWith(t, false, "  unknown_machines: ignore\n", "")
	if h == nil {
		return
	}
	if _, boot := h.dhcpAs(t, h.client); boot != "" {
		t.Fatalf("unlisted machine under ignore got boot file %q", boot)
	}
	if _, err := h.store.UpsertMachine(context.Background(), macA, "", ""); err != nil { // discovered before
		t.Fatal(err)
	}
	auth := "Authorization: Bearer " + h.apiToken
	if out, err := h.adminCurl(t, "-f", "-X", "POST", "-H", auth, "-d", `{"profile":"web"}`, h.admin+"/api/v1/machines/"+macA+"/assign"); err != nil {
		t.Fatalf("assign: %v %s", err, out)
	}
	if _, boot := h.dhcpAs(t, h.client); !strings.HasSuffix(boot, scriptURL) {
		t.Fatalf("assigned machine under ignore: boot file %q, want its script", boot)
	}
	if out, err := h.adminCurl(t, "-f", "-X", "DELETE", "-H", auth, h.admin+"/api/v1/machines/"+macA); err != nil {
		t.Fatalf("forget: %v %s", err, out)
	}
	if _, boot := h.dhcpAs(t, h.client); boot != "" {
		t.Fatalf("forgotten machine under ignore got boot file %q", boot)
	}
}
