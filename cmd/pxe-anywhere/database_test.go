package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// TestServeOnPostgres: with server.database set, the real binary keeps
// its state in that PostgreSQL database (a real server the test starts;
// the password from a private file), not in state_dir: the config's
// machine is recorded there at start, and a machine's DHCP exchange
// writes its firmware there.
func TestServeOnPostgres(t *testing.T) {
	netlab.Require(t, "udhcpc")
	ctx := context.Background()
	fx := newPGServe(t)
	pg, dbname, dir, bin, ipxe := fx.pg, fx.db, fx.dir, fx.bin, fx.ipxe
	const mac = "52:54:00:8d:00:01"
	url := pg.URLWithoutPassword(dbname)
	cfgPath := fx.writeConfig(t, "config.yaml", filepath.Join(dir, "state"), "", "10.141.0",
		fmt.Sprintf("machines:\n  - {mac: %q, profile: web, hostname: pg-01}\n", mac))

	lab := netlab.New(t, "10.141.0.0/24")
	cl := lab.Client(mac)
	srv := serveInLab(t, lab, bin, "serve", "--config", cfgPath, "--ipxe-dir", ipxe)
	logs, exited := srv.logs, srv.exited

	st, err := store.OpenPostgres(ctx, store.PostgresOptions{URL: url, Password: pg.Password})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	waitFor := func(what string, ok func(store.MachineRecord) bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			m, err := st.Machine(ctx, mac)
			if err == nil && ok(m) {
				return
			}
			select {
			case err := <-exited:
				t.Fatalf("serve exited (%v) before %s", err, what)
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within a minute (last: %+v, %v)", what, m, err)
			}
		}
	}
	waitFor("the config's machine recorded in PostgreSQL", func(m store.MachineRecord) bool {
		return m.Hostname == "pg-01" && m.Profile == "web" && m.State == store.StateNew
	})
	// The firmware's DHCP exchange; udhcpc retries until the server
	// answers, each attempt bounded.
	if out, err := lab.Command(cl, "udhcpc", "-q", "-n", "-f", "-i", "eth0", "-t", "10", "-T", "1", "-s", "/bin/true",
		"-V", "PXEClient:Arch:00000:UNDI:002001").CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	waitFor("the firmware DHCP saw, recorded in PostgreSQL", func(m store.MachineRecord) bool { return m.Firmware == "bios" })
	if _, err := os.Stat(filepath.Join(dir, "state", "state.db")); !os.IsNotExist(err) {
		t.Errorf("state.db in state_dir with server.database set: %v", err)
	}
	if strings.Contains(logs.String(), pg.Password) {
		t.Error("the database password is in the server's log")
	}
	srv.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30 s of SIGTERM")
	}
}
