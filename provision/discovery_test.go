package provision

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// discoverTail turns discovery on, with one rule on product and serial
// whose serial pattern is serial.
func discoverTail(serial string) string {
	return `rules:
  - name: rack9000
    match: {product: "Rack 9000", serial: "` + serial + `", memory: ">= 1GiB"}
    profile: web
    hostname: "node-{serial}"
`
}

// discoverServer is what the handoff server's config gets on top for
// discovery: the discover image is the test image.
func newDiscoveryHandoff(t *testing.T, serial string) *handoff {
	t.Helper()
	h := newHandoffWith(t, false, "  unknown_machines: discover\n  discover_image: test\n", discoverTail(serial))
	if h == nil {
		return nil
	}
	// The profile's installer would listen on 22, where nothing does:
	// a machine installed in its discovery boot is reached where the
	// discover image's sshd is.
	cfg, err := profiles.Parse(h.dir+"/config.yaml", []byte(h.cfgText(22)))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.p.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	return h
}

// rackMachine is the discovered machine's installer: a real sshd with
// the keys of its extra initrd and the DMI of a rack server.
func (h *handoff) rackMachine(t *testing.T, hostKey, authKeys []byte) *sshtarget.Target {
	t.Helper()
	reboot := `cp -a /mnt "$PXE_TARGET_DIR/disk"; rm -f "$PXE_TARGET_DIR/next"; kill "$(cat "$PXE_TARGET_DIR/sshd.pid")"` + "\n"
	// Its BMC's LAN settings, as ipmitool prints them.
	ipmitool := `[ "$*" = "lan print" ] || exit 2; printf 'IP Address Source       : Static Address\nIP Address              : 10.77.9.9\nSubnet Mask             : 255.255.255.0\n'` + "\n"
	tg := sshtarget.Start(t, sshtarget.Options{HostKeyPEM: hostKey, AuthorizedKeys: authKeys, StandIns: map[string]string{"reboot": reboot, "ipmitool": ipmitool},
		NetNS: h.client.Name, ListenAddr: h.ip,
		DMI:   map[string]string{"sys_vendor": "Acme\n", "product_name": "Rack 9000\n", "product_serial": "SN-77\n", "product_uuid": "4c4c4544-0000\n"},
		Files: map[string]string{"/proc/meminfo": "MemTotal:        4194304 kB\n"}})
	tg.WriteFile(t, "disk-keys", "/run/keys/disk.key\n")
	return tg
}

func (h *handoff) machineView(t *testing.T) admin.MachineView {
	t.Helper()
	out, err := h.adminCurl(t, "-f", "-H", "Authorization: Bearer "+h.apiToken, h.admin+"/api/v1/machines/"+macA)
	if err != nil {
		t.Fatalf("GET machine: %v %s", err, out)
	}
	var v admin.MachineView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("machine view %q: %v", out, err)
	}
	return v
}

// TestDiscoveryRuleInstallsInSameBoot: an unknown machine boots the
// discover image; once its installer is up the server reads its facts
// over SSH with the injected host key, a rule on product and serial
// matches, and the machine is installed in that same boot, with the
// hostname the rule's template makes.
func TestDiscoveryRuleInstallsInSameBoot(t *testing.T) {
	h := newDiscoveryHandoff(t, "SN-*")
	if h == nil {
		return
	}
	script, token, hostKey, authKeys := h.pxeBoot(t)
	if token == "" || !strings.Contains(script, "with image test") {
		t.Fatalf("unknown machine not booted into the discover image:\n%s", script)
	}
	tg := h.rackMachine(t, hostKey, authKeys)
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	rec := h.waitFor(t, store.StateInstalled)
	if rec.Profile != "web" || rec.Hostname != "node-sn-77" {
		t.Fatalf("installed as %+v, want profile web, hostname node-sn-77", rec)
	}
	if got, _ := os.ReadFile(filepath.Join(tg.Dir, "disk/etc/hostname")); string(got) != "node-sn-77\n" {
		t.Fatalf("installed system's /etc/hostname: %q, want the rule's node-sn-77", got)
	}
	calls := tg.Calls()
	if len(calls) < 4 || calls[0] != "ipmitool lan print" || calls[1] != "disko" || calls[len(calls)-1] != "reboot" {
		t.Fatalf("target calls %q", calls)
	}
	ev := h.events(t)
	for _, w := range []string{
		"PXE boot into the installer (discover)",
		`facts collected: Acme Rack 9000, serial "SN-77"`,
		"; BMC at 10.77.9.9",
		`assigned profile web, hostname node-sn-77, by rule: rule "rack9000" (rules[0]) matched: memory="4294967296" (pattern ">= 1GiB"), product="Rack 9000" (pattern "Rack 9000"), serial="SN-77" (pattern "SN-*") (after discovery)`,
		"its installer is up at " + h.ip + ": installing with profile web in this boot",
		"installed with profile web",
	} {
		if !strings.Contains(ev, w) {
			t.Fatalf("events lack %q:\n%s", w, ev)
		}
	}
	if n := strings.Count(ev, "PXE boot into the installer"); n != 1 {
		t.Fatalf("%d PXE boots, want one:\n%s", n, ev)
	}
	v := h.machineView(t)
	if v.DecidedBy != "rule" || !strings.Contains(v.DecidedWhy, `rule "rack9000"`) || v.Facts == nil {
		t.Fatalf("view: decided %q %q, facts %v", v.DecidedBy, v.DecidedWhy, v.Facts)
	}
	var hw struct {
		Product     string `json:"product"`
		Serial      string `json:"serial"`
		MemoryBytes int64  `json:"memory_bytes"`
		BMCAddress  string `json:"bmc_address"`
	}
	if err := json.Unmarshal(v.Facts.Hardware, &hw); err != nil || hw.Product != "Rack 9000" || hw.Serial != "SN-77" || hw.MemoryBytes != 4<<30 || hw.BMCAddress != "10.77.9.9" {
		t.Fatalf("facts in the API: %s (%v)", v.Facts.Hardware, err)
	}
	var dc struct {
		Interface string `json:"interface"`
		Addr      string `json:"addr"`
	}
	if err := json.Unmarshal(v.Facts.DHCP, &dc); err != nil || dc.Interface != "br0" || dc.Addr != h.ip {
		t.Fatalf("DHCP context in the API: %s (%v)", v.Facts.DHCP, err)
	}
	// Installed: its next PXE boot goes to its disk, rule or not.
	if script, _, _, _ := h.pxeBoot(t); !strings.Contains(script, "\nexit\n") {
		t.Fatalf("installed machine's script:\n%s", script)
	}
}

// TestDiscoveryRuleAtAssignLimit: a rule that matches a discovered
// machine's facts assigns it only while fewer than max_discovered
// machines hold an assignment; past that the machine stays up, untouched
// but for its facts, and its events say what makes room.
func TestDiscoveryRuleAtAssignLimit(t *testing.T) {
	h := newDiscoveryHandoff(t, "SN-*")
	if h == nil {
		return
	}
	ctx := context.Background()
	cfg, err := profiles.Parse(h.dir+"/config.yaml", []byte(h.cfgText(22)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Server.MaxDiscovered = 1
	if err := h.p.Reload(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	const other = "52:54:00:77:24:99" // holds the one assignment
	if _, err := h.store.UpsertMachine(ctx, other, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := h.store.Assign(ctx, other, "web", "", "rule", "earlier"); err != nil {
		t.Fatal(err)
	}
	_, token, hostKey, authKeys := h.pxeBoot(t)
	tg := h.rackMachine(t, hostKey, authKeys)
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	h.waitEvent(t, "but server.max_discovered machines are assigned already")
	if r, _ := h.store.Machine(ctx, macA); r.State != store.StateInstallerUp || r.Profile != "" {
		t.Fatalf("machine past the limit: %+v", r)
	}
	if c := tg.Calls(); len(c) != 1 || c[0] != "ipmitool lan print" {
		t.Fatalf("machine past the limit was touched: %q", c)
	}
}

// TestDiscoveryAssignStartsAtOnce: no rule matches a discovered
// machine, whose installer stays up; an operator's assign over the API
// installs it at once, in that boot. A config reload does not take an
// operator's assignment back.
func TestDiscoveryAssignStartsAtOnce(t *testing.T) {
	h := newDiscoveryHandoff(t, "PROD-*")
	if h == nil {
		return
	}
	_, token, hostKey, authKeys := h.pxeBoot(t)
	tg := h.rackMachine(t, hostKey, authKeys)
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	h.waitEvent(t, "discovered: no rule matched")
	if r, _ := h.store.Machine(context.Background(), macA); r.State != store.StateInstallerUp || r.Profile != "" {
		t.Fatalf("unmatched machine: %+v", r)
	}
	// Discovery only read its facts (ipmitool lan print among them).
	if c := tg.Calls(); len(c) != 1 || c[0] != "ipmitool lan print" {
		t.Fatalf("unmatched machine was touched: %q", c)
	}
	if code, _ := h.adminCurl(t, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", `{"profile":"web"}`, h.admin+"/api/v1/machines/"+macA+"/assign"); code != "401" {
		t.Fatalf("assign without the API token: %s", code)
	}
	if code, _ := h.adminCurl(t, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Authorization: Bearer "+h.apiToken, "-d", `{"profile":"nope"}`, h.admin+"/api/v1/machines/"+macA+"/assign"); code != "400" {
		t.Fatalf("assign of an unknown profile: %s", code)
	}
	if out, err := h.adminCurl(t, "-f", "-X", "POST", "-H", "Authorization: Bearer "+h.apiToken, "-d", `{"profile":"web","hostname":"db-7"}`, h.admin+"/api/v1/machines/"+macA+"/assign"); err != nil {
		t.Fatalf("assign: %v %s", err, out)
	}
	rec := h.waitFor(t, store.StateInstalled)
	if rec.Hostname != "db-7" || rec.Profile != "web" {
		t.Fatalf("installed as %+v", rec)
	}
	if got, _ := os.ReadFile(filepath.Join(tg.Dir, "disk/etc/hostname")); string(got) != "db-7\n" {
		t.Fatalf("installed system's /etc/hostname: %q, want the operator's db-7", got)
	}
	if v := h.machineView(t); v.DecidedBy != "operator" || v.DecidedWhy != "by operator (API)" {
		t.Fatalf("decided %q %q", v.DecidedBy, v.DecidedWhy)
	}
	ev := h.events(t)
	if !strings.Contains(ev, "installing with profile web in this boot") || strings.Count(ev, "PXE boot into the installer") != 1 {
		t.Fatalf("events:\n%s", ev)
	}
}

// waitEvent waits until one of macA's events holds want.
func (h *handoff) waitEvent(t *testing.T, want string) {
	t.Helper()
	for i := 0; i < 1200; i++ {
		if strings.Contains(h.events(t), want) {
			return
		}
		sleepBriefly()
	}
	t.Fatalf("no event %q:\n%s", want, h.events(t))
}

func sleepBriefly() { time.Sleep(100 * time.Millisecond) }
