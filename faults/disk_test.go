package faults

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fill writes a file in dir until the file system is full and returns
// its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := fh.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			// The last partial block, down to the byte.
			for _, err := fh.Write(buf[:1]); err == nil; _, err = fh.Write(buf[:1]) {
			}
			return p
		}
	}
}

// TestFaultStateDirFull: the state directory (database, leases, keys)
// is on a 4 MiB tmpfs, filled to the last byte. DHCP keeps answering;
// a new boot gets a clear error (500 or 503 with a message) and the boot
// side's /healthz says 503; once the filler is gone, /healthz is 200
// again, the machine installs, the events from before are there and
// the database is intact.
//
// Needs part B for /healthz and for the state write that fails to be
// answered rather than left half done.
func TestFaultStateDirFull(t *testing.T) {
	f := newFixture(t, options{tmpfs: "4m"})
	if f == nil {
		return
	}
	f.install(t)
	before := f.events(t)
	f.reinstall(t)
	filler := fill(t, f.state)

	// DHCP answers a plain client and the machine (as iPXE, inside
	// askScript) though the lease file cannot be written.
	if ip, _, err := f.udhcpc(t, f.other, false); err != nil || !strings.HasPrefix(ip, "10.86.0.1") {
		t.Fatalf("DHCP with the state directory full: %q %v", ip, err)
	}
	code, body := f.askScript(t)
	if (code != http.StatusInternalServerError && code != http.StatusServiceUnavailable) || !saysStorage(body) {
		t.Errorf("boot script with the state directory full: HTTP %d %q, want 500 or 503 with a message that names the state store", code, body)
	}
	// Both are checked, and the recovery measured, whatever they say.
	if c, b := httpGet(bootBase + "/healthz"); c != http.StatusServiceUnavailable {
		t.Errorf("/healthz with the state directory full: HTTP %d %q, want 503", c, b)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	deadline := freed.Add(time.Minute)
	for {
		if c, _ := httpGet(bootBase + "/healthz"); c == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/healthz not 200 a minute after space returned")
		}
		time.Sleep(50 * time.Millisecond)
	}
	healthy := time.Since(freed)
	f.install(t)
	recovered := time.Since(freed)
	eventsKept(t, before, f.events(t))
	f.integrity(t)
	reliability(t, "state-dir-full", "boot_http", code, "healthy_s", secs(healthy), "recover_s", secs(recovered))
}

// saysStorage tells whether an error answer says that the state could
// not be written, rather than a bare "internal error".
func saysStorage(body string) bool {
	body = strings.ToLower(body)
	for _, w := range []string{"state", "database", "disk", "space", "storage"} {
		if strings.Contains(body, w) {
			return true
		}
	}
	return false
}
