package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
	"golang.org/x/crypto/ssh"
)

var stranger = netip.MustParseAddr("10.77.0.66")

// TestBootNeedsABinding: a script request from an address that DHCP did
// not give to the MAC is refused with an event and makes no boot; one
// from a bound address works until the binding ends (expiry, release).
func TestBootNeedsABinding(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	if _, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: stranger}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("unbound address: %v", err)
	}
	if _, err := f.store.LatestBoot(ctx, macA); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused request made a boot: %v", err)
	}
	if ev := f.events(t, macA); !strings.Contains(ev, "boot script asked by 10.77.0.66, which DHCP did not give to "+macA+" (its addresses: none): refused") {
		t.Fatalf("events:\n%s", ev)
	}
	// Bound to another MAC is not bound to this one.
	f.bind(t, macB, stranger)
	if _, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: stranger}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("address of another machine: %v", err)
	}
	// An expired binding counts for nothing.
	f.p.Bound(ctx, dhcp.Binding{MAC: mac(macA), Addr: machineIP, Interface: "br0", Expires: time.Now().Add(-time.Second)})
	if _, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: machineIP}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("expired binding: %v", err)
	}
	f.bind(t, macA, machineIP)
	if plan, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: machineIP}); err != nil || plan.Token == "" {
		t.Fatalf("bound address: %+v %v", plan, err)
	}
	// A release ends it, in memory and in the store.
	f.p.Released(ctx, dhcp.Binding{MAC: mac(macA), Addr: machineIP})
	if _, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: machineIP}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("released binding: %v", err)
	}
	if saved, _ := f.store.Bindings(ctx, time.Now()); len(saved) != 1 || saved[0].MAC != macB {
		t.Fatalf("stored bindings %+v, want only %s's", saved, macB)
	}
}

// TestTrustMAC: a profile that says trust: mac boots from any address;
// the one-shot initrd and the owner of a live boot still hold.
func TestTrustMAC(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, "ignore")
	cfg.Profile("web").Trust = profiles.TrustMAC
	f := newFixture(t, cfg, "")
	plan, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: stranger})
	if err != nil || plan.Token == "" {
		t.Fatalf("trust: mac: %+v %v", plan, err)
	}
	if _, err := f.p.ExtraInitrd(ctx, plan.Token, machineIP); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("initrd from another address than the script's: %v", err)
	}
	if _, err := f.p.ExtraInitrd(ctx, plan.Token, stranger); err != nil {
		t.Fatal(err)
	}
	if err := f.p.Callback(ctx, plan.Token, stranger, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	waitState(t, f, macA, store.StateInstalled)
	if w := cfg.WeakTrust(); len(w) != 1 || w[0] != "profiles.web" {
		t.Fatalf("WeakTrust %v", w)
	}
}

// TestCallbackChecks: the body cannot point the engine elsewhere; a
// callback needs the initrd fetched; a fresh binding of the installer's
// own DHCP client is where the engine goes.
func TestCallbackChecks(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	plan := f.boot(t, macA)
	if err := f.p.Callback(ctx, plan.Token, machineIP, netip.Addr{}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("callback before the initrd: %v", err)
	}
	f.initrd(t, macA, plan.Token)
	if err := f.p.Callback(ctx, plan.Token, machineIP, stranger); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("callback naming another address: %v", err)
	}
	// The installer's DHCP client takes another address after the
	// initrd went out: that is where the engine connects.
	installerIP := netip.MustParseAddr("10.77.0.120")
	f.bind(t, macA, installerIP)
	if err := f.p.Callback(ctx, plan.Token, installerIP, installerIP); err != nil {
		t.Fatal(err)
	}
	waitState(t, f, macA, store.StateInstalled)
	if o := f.engine.runs[0]; o.Target.Host != installerIP.String() {
		t.Fatalf("engine went to %s, want %s", o.Target.Host, installerIP)
	}
	ev := f.events(t, macA)
	for _, w := range []string{
		"before its extra initrd was fetched: refused",
		"from 10.77.0.100 names address 10.77.0.66: refused",
		"installer up at 10.77.0.120 (callback)",
	} {
		if !strings.Contains(ev, w) {
			t.Errorf("events lack %q:\n%s", w, ev)
		}
	}
}

// TestOwnerOfALiveBoot: another bound address cannot take over a live
// boot; the same address boots again (a reboot); once the boot is old
// and never fetched, or after a reinstall, another address may.
func TestOwnerOfALiveBoot(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	first := f.boot(t, macA)
	other := netip.MustParseAddr("10.77.0.121")
	f.bind(t, macA, other)
	if _, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: other}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("another address took a live boot: %v", err)
	}
	if b, _ := f.store.LatestBoot(ctx, macA); b.Token != first.Token || b.VoidedAt != nil {
		t.Fatalf("live boot touched: %+v", b)
	}
	second := f.boot(t, macA) // the same address: the machine rebooted
	if second.Token == first.Token {
		t.Fatal("no new boot")
	}
	// Reinstall voids the live boot: the next request, from anywhere
	// bound, starts a new one.
	if err := f.p.Reinstall(ctx, macA, "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if b, _ := f.store.BootByToken(ctx, second.Token); b.VoidedAt == nil || b.VoidReason != "reinstall requested" || len(b.HostKeyPrivate) != 0 {
		t.Fatalf("reinstall left the boot live: %+v", b)
	}
	plan, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macA), RemoteAddr: other})
	if err != nil || plan.Token == "" {
		t.Fatalf("after reinstall: %+v %v", plan, err)
	}
	// A boot never fetched past ownerWindow belongs to nobody.
	old := store.Boot{Token: "old-token", MAC: macB, IP: "10.77.0.101", HostKeyPublic: "ssh-ed25519 AAAA",
		HostKeyPrivate: []byte("x"), CreatedAt: time.Now().Add(-ownerWindow - time.Minute)}
	if err := f.store.CreateBoot(ctx, old); err != nil {
		t.Fatal(err)
	}
	f.bind(t, macB, other)
	if _, err := f.p.Boot(ctx, httpboot.BootRequest{MAC: mac(macB), RemoteAddr: other}); err != nil {
		t.Fatalf("a stale unfetched boot blocked a new one: %v", err)
	}
}

// TestExpiredKeysErased: the sweep erases the private keys of boots
// older than the token lifetime and keeps the public ones.
func TestExpiredKeysErased(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	old := store.Boot{Token: "expired", MAC: macA, IP: "10.77.0.100", HostKeyPublic: "ssh-ed25519 AAAA",
		HostKeyPrivate: []byte("secret"), CreatedAt: time.Now().Add(-tokenLifetime - time.Minute)}
	young := store.Boot{Token: "young", MAC: macB, IP: "10.77.0.101", HostKeyPublic: "ssh-ed25519 BBBB",
		HostKeyPrivate: []byte("secret")}
	for _, b := range []store.Boot{old, young} {
		if err := f.store.CreateBoot(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	f.p.sweep(ctx)
	if b, _ := f.store.BootByToken(ctx, "expired"); len(b.HostKeyPrivate) != 0 || b.HostKeyPublic == "" {
		t.Fatalf("expired boot: %+v", b)
	}
	if b, _ := f.store.BootByToken(ctx, "young"); string(b.HostKeyPrivate) != "secret" {
		t.Fatalf("young boot lost its key: %+v", b)
	}
	if _, err := f.p.ExtraInitrd(ctx, "expired", machineIP); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("expired token: %v", err)
	}
}

// TestBindingLimits: what DHCP packets can make the table keep is
// bounded, and an address taken by two MACs is reported on both.
func TestBindingLimits(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, "discover")
	f := newFixture(t, cfg, "")
	for i := 0; i < maxAddrsPerMAC+5; i++ {
		f.bind(t, macA, netip.AddrFrom4([4]byte{10, 2, 0, byte(i + 1)}))
	}
	if got := len(f.p.bindings.addrs(macA)); got != maxAddrsPerMAC {
		t.Fatalf("%d addresses for one MAC, want %d", got, maxAddrsPerMAC)
	}
	f.bind(t, macB, netip.MustParseAddr("10.2.0.13"))
	for _, m := range []string{macA, macB} {
		if ev := f.events(t, m); !strings.Contains(ev, "address conflict: DHCP saw "+macB+" take 10.2.0.13, which "+macA+" held too") {
			t.Fatalf("no conflict event on %s:\n%s", m, ev)
		}
	}
	for i := 0; i < maxBoundMACs+10; i++ {
		m := fmt.Sprintf("02:00:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff)
		f.p.Bound(ctx, dhcp.Binding{MAC: mac(m), Addr: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Interface: "br0", Expires: time.Now().Add(time.Hour)})
	}
	f.p.bindings.mu.Lock()
	n := len(f.p.bindings.byMAC)
	f.p.bindings.mu.Unlock()
	if n != maxBoundMACs {
		t.Fatalf("%d MACs bound, want the cap %d", n, maxBoundMACs)
	}
	// A full table refuses new MACs and keeps the ones it has.
	if _, ok := f.p.bindings.lookup(macA, netip.MustParseAddr("10.2.0.13")); !ok {
		t.Fatal("a full table dropped a live binding")
	}
	// MACs that are never booted leave nothing behind.
	g := newFixture(t, testConfig(t, "ignore"), "")
	g.p.Bound(ctx, dhcp.Binding{MAC: mac(macX), Addr: stranger, Interface: "br0", Expires: time.Now().Add(time.Hour)})
	if saved, _ := g.store.Bindings(ctx, time.Now()); len(saved) != 0 {
		t.Fatalf("an unknown MAC's binding was kept: %+v", saved)
	}
}

// TestSecretsTwiceFromTheMachine: iPXE fetches each file once, so even
// the machine's own second request voids the boot and holds it; an
// expired token opens nothing either.
func TestSecretsTwiceFromTheMachine(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	plan := f.boot(t, macA)
	f.initrd(t, macA, plan.Token)
	if _, err := f.p.ExtraInitrd(ctx, plan.Token, machineIP); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("second fetch: %v", err)
	}
	r := f.state(t, macA)
	if r.State != store.StateFailed || !r.Held {
		t.Fatalf("after the second fetch: %+v", r)
	}
	if err := f.p.Callback(ctx, plan.Token, machineIP, netip.Addr{}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("callback of the voided boot: %v", err)
	}
	if p := f.boot(t, macA); p.Action != httpboot.ActionLocal {
		t.Fatalf("held machine got %v", p.Action)
	}
	f.p.Wait()
	if len(f.engine.runs) != 0 {
		t.Fatal("an engine ran for a voided boot")
	}
	if err := f.p.Reinstall(ctx, macA, "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if p := f.boot(t, macA); p.Action != httpboot.ActionInstall {
		t.Fatalf("after reinstall got %v", p.Action)
	}

	// An expired boot: no initrd, no callback.
	old := store.Boot{Token: "expired-b", MAC: macB, IP: ipOf(macB).String(), HostKeyPublic: "ssh-ed25519 AAAA",
		HostKeyPrivate: []byte("x"), CreatedAt: time.Now().Add(-tokenLifetime - time.Second)}
	if err := f.store.CreateBoot(ctx, old); err != nil {
		t.Fatal(err)
	}
	f.bind(t, macB, ipOf(macB))
	if _, err := f.p.ExtraInitrd(ctx, old.Token, ipOf(macB)); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("expired initrd: %v", err)
	}
	if err := f.p.Callback(ctx, old.Token, ipOf(macB), netip.Addr{}); !errors.Is(err, httpboot.ErrForbidden) {
		t.Fatalf("expired callback: %v", err)
	}
	if ev := f.events(t, macB); !strings.Contains(ev, "boot token expired") {
		t.Fatalf("events:\n%s", ev)
	}
}

// TestFirmwareFromDHCP: the firmware DHCP saw is what the operator's
// views show, and a boot URL without ?arch= does not erase it.
func TestFirmwareFromDHCP(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, testConfig(t, "ignore"), "")
	f.p.Decide(ctx, dhcp.Machine{MAC: mac(macA), Firmware: dhcp.Firmware{Arch: dhcp.ArchEFIx64}})
	// Written beside the DHCP loop, not in it.
	waitFor(t, "the firmware after DHCP", func() bool { return f.state(t, macA).Firmware == "efi-x64" })
	f.boot(t, macA)
	if r := f.state(t, macA); r.Firmware != "efi-x64" {
		t.Fatalf("firmware after a boot without arch: %q", r.Firmware)
	}
}

// failingAssignments is the state store with its assignment reads
// failing on demand, as a database that went away between two reads
// does.
type failingAssignments struct {
	store.Store
	fail atomic.Bool
}

func (s *failingAssignments) GetAssignment(ctx context.Context, mac string) (store.Assignment, error) {
	if s.fail.Load() {
		return store.Assignment{}, errors.New("connection to the database lost")
	}
	return s.Store.GetAssignment(ctx, mac)
}

// TestCallbackTrustWhenStoreFails: server.trust is mac, the assigned
// machine's profile says dhcp. When its profile cannot be read at the
// callback, the callback is answered "unavailable" (the installer
// retries), never checked against the weaker server-wide trust: a
// stranger's callback must not start the install.
func TestCallbackTrustWhenStoreFails(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := testConfig(t, "ignore")
	cfg.Server.Trust = profiles.TrustMAC
	cfg.Profile("web").Trust = profiles.TrustDHCP
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	fs := &failingAssignments{Store: st}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	eng := &recordingEngine{}
	p, err := New(ctx, cfg, Options{Store: fs, Signer: signer, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Engine: eng.run, PollDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); p.Wait(); st.Close() }()
	if _, err := st.UpsertMachine(ctx, macX, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := p.Assign(ctx, macX, "web", "", "operator (API)"); err != nil {
		t.Fatal(err)
	}
	p.Decide(ctx, dhcp.Machine{MAC: mac(macX)})
	p.Bound(ctx, dhcp.Binding{MAC: mac(macX), Addr: machineIP, Interface: "br0", Expires: time.Now().Add(time.Hour)})
	plan, err := p.Boot(ctx, httpboot.BootRequest{MAC: mac(macX), RemoteAddr: machineIP})
	if err != nil || plan.Token == "" {
		t.Fatalf("boot: %+v %v", plan, err)
	}
	if _, err := p.ExtraInitrd(ctx, plan.Token, machineIP); err != nil {
		t.Fatal(err)
	}
	fs.fail.Store(true)
	if err := p.Callback(ctx, plan.Token, stranger, netip.Addr{}); !errors.Is(err, httpboot.ErrUnavailable) {
		t.Fatalf("a stranger's callback while the profile cannot be read: %v, want unavailable", err)
	}
	if r, _ := st.Machine(ctx, macX); r.State != store.StateBooting {
		t.Fatalf("the machine went on to %s", r.State)
	}
}
