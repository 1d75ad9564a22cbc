package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/ipxescript"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// handoff is the whole server without a VM: DHCP, the boot side of HTTP
// (and the admin side on the namespace's loopback), the provisioner
// and the real install engine run in a test process inside the lab's
// server namespace, as serve does on its host; a simulated machine in a
// client namespace does what firmware, iPXE and the installer do, and
// its installer's sshd is a real OpenSSH server in that namespace, on
// the address DHCP gave it, started with the keys the machine found in
// its extra initrd. A second client namespace on the same bridge is an
// attacker with curl, udhcpc and an sshd of its own.
type handoff struct {
	lab      *netlab.Lab
	client   *netlab.NS
	attacker *netlab.NS
	ip       string // the address DHCP gave the machine
	p        *Provisioner
	store    *store.DB
	base     string
	admin    string
	apiToken string
	cfgText  func(sshPort int) string
	dir      string
	stop     context.CancelFunc
}

// addToStore makes a real Nix store path holding one executable script.
func addToStore(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", p).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// attackerMAC is the attacker's own MAC, for its own DHCP exchanges.
const attackerMAC = "52:54:00:66:66:66"

// newHandoff makes the lab and runs the calling test again inside it,
// returning nil: the caller returns at once. In that run it returns the
// harness.
func newHandoff(t *testing.T) *handoff { return newHandoffMode(t, false) }

// newHandoffMode is newHandoff with, when proxy is set, dnsmasq as the
// network's own DHCP server and pxe-anywhere in proxy mode beside it.
func newHandoffMode(t *testing.T, proxy bool) *handoff {
	t.Helper()
	return newHandoffWith(t, proxy, "", fmt.Sprintf("machines:\n  - {mac: %q, profile: web, hostname: web-01}\n", macA))
}

// newHandoffWith is newHandoffMode with server lines added to the
// server: section and tail as the end of the config (its machines: or
// rules: sections).
func newHandoffWith(t *testing.T, proxy bool, server, tail string) *handoff {
	t.Helper()
	netlab.Require(t, "udhcpc", "curl", "cpio", "nix-store", "/usr/sbin/sshd", "dnsmasq")
	lab, clients := netlab.Inherited(t)
	if lab == nil {
		lab = netlab.New(t, "10.82.0.0/24")
		lab.RunInServer(t, lab.Client(macA), lab.Client(attackerMAC))
		return nil
	}
	h := &handoff{dir: t.TempDir(), apiToken: "handoff-api-token-0123456789"}
	h.lab, h.client, h.attacker = lab, clients[0], clients[1]

	// The local side of nix copy is the engine's strict fake (it proves
	// the pinned host key works for OpenSSH, too); the store paths are
	// real and, since the target shares this machine's /nix, present.
	fakeDir := t.TempDir()
	abs, _ := filepath.Abs("../installer/testdata/fake-nix")
	if err := os.Symlink(abs, filepath.Join(fakeDir, "nix")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", fakeDir+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_NIX_DIR", t.TempDir())
	disko := addToStore(t, "pxe-handoff-disko", "#!/bin/sh\necho disko >> \"$PXE_TARGET_DIR/calls\"\n"+
		"if [ -f \"$PXE_TARGET_DIR/hang\" ]; then sleep 600; fi\n"+sshtarget.DiskoScriptStandIn)
	system := addToStore(t, "pxe-handoff-system", "#!/bin/sh\n# init\n")

	for _, f := range []string{"bzImage", "initrd"} {
		os.WriteFile(filepath.Join(h.dir, f), []byte("image file "+f+strings.Repeat(".", 5000)), 0o644)
	}
	keyFile := filepath.Join(h.dir, "disk.key")
	os.WriteFile(keyFile, []byte("disk-secret-do-not-log"), 0o600)
	extra := filepath.Join(h.dir, "extra")
	os.MkdirAll(filepath.Join(extra, "home/alice"), 0o755)
	os.WriteFile(filepath.Join(extra, "home/alice/notes"), []byte("hello"), 0o644)
	dhcpSection := `dhcp:
  mode: authoritative
  subnet: 10.82.0.0/24
  range: [10.82.0.100, 10.82.0.150]
  router: 10.82.0.1`
	if proxy {
		dhcpSection = "dhcp:\n  mode: proxy"
		h.siteDHCP(t)
	}
	h.cfgText = func(port int) string {
		return fmt.Sprintf(`server:
  interfaces: [br0]
  advertise: 10.82.0.1
  max_installs: 2
%[7]s%[6]s
images:
  test:
    kernel: %[1]s/bzImage
    initrd: [%[1]s/initrd]
    cmdline: "console=ttyS0"
profiles:
  web:
    image: test
    store_paths: {disko: %[2]s, system: %[3]s}
    disk_encryption_keys: {/run/keys/disk.key: %[1]s/disk.key}
    extra_files: %[1]s/extra
    chown: {/home/alice: "1000:100"}
    ssh: {port: %[4]d, options: {ConnectTimeout: "5"}}
    after_install: reboot
%[5]s`, h.dir, disko, system, port, tail, dhcpSection, server)
	}
	cfg, err := profiles.Parse(filepath.Join(h.dir, "config.yaml"), []byte(h.cfgText(22)))
	if err != nil {
		t.Fatal(err)
	}
	h.start(t, cfg, filepath.Join(h.dir, "state.db"))
	return h
}

// start runs the provisioner, DHCP and HTTP on the lab, as serve does.
func (h *handoff) start(t *testing.T, cfg *profiles.Config, dbPath string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.OpenSQLite(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	keyPath := filepath.Join(h.dir, "id_ed25519")
	os.WriteFile(keyPath, pem.EncodeToMemory(block), 0o600)
	signer, _ := ssh.NewSignerFromKey(priv)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	p, err := New(ctx, cfg, Options{Store: st, Signer: signer, KeyFile: keyPath, Log: log, PollDelay: time.Hour, DiscoverSSHPort: sshtarget.NetNSPort})
	if err != nil {
		t.Fatal(err)
	}
	var hl, al net.Listener
	if err := netlab.Do(h.lab.Server, func() (err error) {
		if hl, err = net.Listen("tcp", h.lab.Addr.String()+":0"); err != nil {
			return err
		}
		al, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	h.base = "http://" + hl.Addr().String()
	h.admin = "http://" + al.Addr().String()
	cache := images.NewCache(filepath.Join(h.dir, "cache"), log)
	img := cfg.Images["test"]
	prepared, err := cache.Prepare(ctx, images.Source{Name: "test", Kernel: img.Kernel, Initrd: img.Initrd, Cmdline: img.Cmdline}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hs := httpboot.New(httpboot.Config{
		BaseURL: h.base,
		Images: func() map[string]httpboot.Image {
			return map[string]httpboot.Image{"test": {Name: "test", Kernel: prepared.Kernel, Initrds: prepared.Initrds, Init: prepared.Init, Params: prepared.Params}}
		},
		Log: log,
	}, p)
	as := admin.New(admin.Config{APIToken: h.apiToken, Log: log}, p)
	mode := dhcp.Authoritative
	if cfg.DHCP.Mode == profiles.DHCPProxy {
		mode = dhcp.Proxy
	}
	ds, err := dhcp.New(dhcp.Config{
		Binder:     p,
		Interfaces: []string{"br0"}, Mode: mode, ServerIP: h.lab.Addr,
		ScriptURL: func(m net.HardwareAddr) string { return httpboot.ScriptURL(h.base, m) },
		BootFiles: map[dhcp.Arch]string{dhcp.ArchBIOS: "undionly.kpxe"},
		Subnet:    cfg.DHCP.Subnet, RangeStart: cfg.DHCP.RangeStart, RangeEnd: cfg.DHCP.RangeEnd, Router: cfg.DHCP.Router,
		LeaseTime: time.Hour, LeaseFile: filepath.Join(h.dir, "leases.json"),
		Relays: cfg.DHCP.Relays,
	}, p, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlab.Do(h.lab.Server, ds.Listen); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 3)
	go func() { ds.Serve(ctx); done <- struct{}{} }()
	go func() { httpserve.Serve(ctx, hl, hs, log); done <- struct{}{} }()
	go func() { httpserve.Serve(ctx, al, as, log); done <- struct{}{} }()
	h.p, h.store = p, st
	var once bool
	h.stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		<-done
		<-done
		<-done
		p.Wait()
		st.Close()
	}
	t.Cleanup(h.stop)
}

// siteDHCP runs dnsmasq as the network's own DHCP server: addresses
// only, keyed by client identifier when there is one, as most are.
func (h *handoff) siteDHCP(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("dnsmasq", "--keep-in-foreground", "--port=0", "--interface=br0", "--bind-interfaces", "--no-ping",
		"--dhcp-range=10.82.0.160,10.82.0.200,255.255.255.0,1h", "--dhcp-leasefile="+filepath.Join(dir, "leases"),
		"--pid-file="+filepath.Join(dir, "pid"), "--log-facility="+filepath.Join(dir, "log"))
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting dnsmasq: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}

// curl runs curl in the machine's namespace and returns its body.
func (h *handoff) curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return h.curlFrom(t, h.client, args...)
}

// curlFrom runs curl in namespace ns and returns its body.
func (h *handoff) curlFrom(t *testing.T, ns *netlab.NS, args ...string) (string, error) {
	t.Helper()
	out, err := h.lab.Command(ns, "curl", append([]string{"-sS", "--max-time", "30"}, args...)...).Output()
	return string(out), err
}

// dhcpAs runs udhcpc in ns as iPXE would, with the client's own MAC or
// with mac (spoofed: the attacker's link takes mac for the exchange),
// and returns the address it was given and the boot file.
func (h *handoff) dhcpAs(t *testing.T, ns *netlab.NS, extra ...string) (ip, bootFile string) {
	t.Helper()
	dir := t.TempDir()
	sc := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(sc, []byte("#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr flush dev \"$interface\"\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\necho \"$ip $boot_file\" > "+dir+"/lease\n"), 0o755)
	args := []string{"-q", "-n", "-f", "-i", "eth0", "-t", "5", "-T", "2", "-s", sc}
	if !h.proxied() {
		args = append(args, "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845")
	}
	// In proxy mode a PXE client merges the site's offer with ours;
	// udhcpc would take whichever came first, so it asks as a plain
	// client: the site's server gives the address, and pxe-anywhere
	// sees the REQUEST that takes it.
	args = append(args, extra...)
	if out, err := h.lab.Command(ns, "udhcpc", args...).CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	lease, _ := os.ReadFile(filepath.Join(dir, "lease"))
	f := strings.Fields(string(lease))
	if len(f) == 1 {
		return f[0], ""
	}
	if len(f) != 2 {
		t.Fatalf("DHCP as iPXE got %q", lease)
	}
	return f[0], f[1]
}

// adminCurl runs curl on the server, where the admin side listens.
func (h *handoff) adminCurl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := h.lab.Command(h.lab.Server, "curl", append([]string{"-sS", "--max-time", "30"}, args...)...).Output()
	return string(out), err
}

// pxeBoot is the machine's side up to its installer: DHCP as iPXE, the
// script, kernel and initrds. It returns the script and the token, and
// the host key and authorized keys from the extra initrd ("" for the
// token and keys when the script boots the disk).
func (h *handoff) pxeBoot(t *testing.T) (script, token string, hostKey, authKeys []byte) {
	t.Helper()
	script, token, urls := h.askScript(t)
	if token == "" {
		return script, "", nil, nil
	}
	hostKey, authKeys = h.fetchFiles(t, urls)
	return script, token, hostKey, authKeys
}

// scriptURL is the machine's script, as DHCP names it to iPXE.
const scriptURL = "/boot/52-54-00-12-34-01.ipxe"

// askScript is the machine's DHCP as iPXE and its script request. It
// returns the script, its token ("" for a local boot) and the URLs of
// the kernel and initrds in the script's order.
func (h *handoff) askScript(t *testing.T) (script, token string, urls []string) {
	t.Helper()
	ip, bootFile := h.dhcpAs(t, h.client)
	if bootFile == "" && h.proxied() {
		// udhcpc takes the site's offer and ignores ours; iPXE merges
		// the two. The URL is the same.
		bootFile = h.base + scriptURL
	}
	if !strings.HasPrefix(ip, "10.82.0.1") || !strings.HasSuffix(bootFile, scriptURL) {
		t.Fatalf("DHCP as iPXE got %s %s", ip, bootFile)
	}
	h.ip = ip
	script, err := h.curl(t, "-f", bootFile)
	if err != nil {
		t.Fatalf("script: %v", err)
	}
	if !strings.Contains(script, "\nkernel ") {
		return script, "", nil
	}
	s, err := ipxescript.Parse([]byte(script))
	if err != nil || len(s.Initrds) < 2 {
		t.Fatalf("script without token or files (%v):\n%s", err, script)
	}
	return script, s.Token, s.URLs()
}

// fetchFiles is iPXE downloading what the script names; it returns the
// host key and authorized keys of the extra initrd.
func (h *handoff) fetchFiles(t *testing.T, urls []string) (hostKey, authKeys []byte) {
	t.Helper()
	dir := t.TempDir()
	if _, err := h.curl(t, "-f", "-r", "0-99", "-o", "/dev/null", urls[0]); err != nil {
		t.Fatalf("kernel range: %v", err)
	}
	for _, url := range urls {
		out := filepath.Join(dir, "fetched")
		if _, err := h.curl(t, "-f", "-o", out, url); err != nil {
			t.Fatalf("fetching %s: %v", url, err)
		}
		if strings.Contains(url, "extra.cpio.gz") {
			x := filepath.Join(dir, "x")
			os.Mkdir(x, 0o700)
			if b, err := exec.Command("sh", "-c", "cd "+x+" && gzip -dc "+out+" | cpio -id --quiet").CombinedOutput(); err != nil {
				t.Fatalf("unpacking the extra initrd: %v %s", err, b)
			}
			hostKey, _ = os.ReadFile(filepath.Join(x, "ssh/ssh_host_ed25519_key"))
			authKeys, _ = os.ReadFile(filepath.Join(x, "ssh/authorized_keys"))
		}
	}
	if hostKey == nil || authKeys == nil {
		t.Fatalf("incomplete boot: host key %d bytes, keys %d bytes", len(hostKey), len(authKeys))
	}
	return hostKey, authKeys
}

func (h *handoff) proxied() bool { return h.p.Config().DHCP.Mode == profiles.DHCPProxy }

// installerUp starts the "installer": a real sshd with the keys from the
// initrd, and points the profile at its port.
func (h *handoff) installerUp(t *testing.T, hostKey, authKeys []byte) *sshtarget.Target {
	t.Helper()
	// Rebooting keeps what the "disk" (/mnt) holds, for the test to read
	// after the machine is gone.
	reboot := `cp -a /mnt "$PXE_TARGET_DIR/disk"; rm -f "$PXE_TARGET_DIR/next"; kill "$(cat "$PXE_TARGET_DIR/sshd.pid")"` + "\n"
	tg := sshtarget.Start(t, sshtarget.Options{HostKeyPEM: hostKey, AuthorizedKeys: authKeys, StandIns: map[string]string{"reboot": reboot},
		NetNS: h.client.Name, ListenAddr: h.ip})
	tg.WriteFile(t, "disk-keys", "/run/keys/disk.key\n")
	cfg, err := profiles.Parse(filepath.Join(h.dir, "config.yaml"), []byte(h.cfgText(tg.Port)))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.p.Reload(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	return tg
}

// callback is the machine's installer calling back; it returns the
// HTTP status.
func (h *handoff) callback(t *testing.T, token string) string {
	t.Helper()
	return h.callbackFrom(t, h.client, `{"token":"`+token+`","address":"`+h.ip+`"}`)
}

func (h *handoff) callbackFrom(t *testing.T, ns *netlab.NS, body string) string {
	t.Helper()
	out, _ := h.curlFrom(t, ns, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
		"-d", body, h.base+"/api/v1/callback")
	return out
}

func (h *handoff) waitFor(t *testing.T, want store.State) store.MachineRecord {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r, err := h.store.Machine(context.Background(), macA)
		if err == nil && r.State == want {
			return r
		}
		if time.Now().After(deadline) {
			evs, _ := h.store.Events(context.Background(), macA, 0, 100)
			t.Fatalf("machine is %s (%s), want %s; events: %+v", r.State, r.Error, want, evs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *handoff) events(t *testing.T) string {
	evs, _ := h.store.Events(context.Background(), macA, 0, 1000)
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%s %s %s\n", e.State, e.Phase, e.Message)
	}
	return b.String()
}

func TestHandoffInstallsAndBootsLocally(t *testing.T) {
	h := newHandoff(t)
	if h == nil {
		return
	}
	_, token, hostKey, authKeys := h.pxeBoot(t)
	tg := h.installerUp(t, hostKey, authKeys)
	if code := h.callback(t, "not-"+token); code != "403" {
		t.Fatalf("wrong token: %s", code)
	}
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	if code := h.callback(t, token); code != "403" {
		t.Fatalf("replayed token: %s", code)
	}
	h.waitFor(t, store.StateInstalled)

	// What the target saw, in order: keys before disko, then the system.
	calls := tg.Calls()
	want := []string{"disko", fmt.Sprintf("key 600 %x /run/keys/disk.key", sha256.Sum256([]byte("disk-secret-do-not-log")))}
	if len(calls) < 4 || !slices.Equal(calls[:2], want) || !strings.HasPrefix(calls[2], "nixos-install --no-root-passwd --no-channel-copy --system /nix/store/") || calls[len(calls)-1] != "reboot" {
		t.Fatalf("target calls %q", calls)
	}
	disk := filepath.Join(tg.Dir, "disk")
	if out, err := exec.Command("stat", "-c", "%u:%g %a", disk+"/home/alice", disk+"/home/alice/notes").Output(); err != nil || string(out) != "1000:100 755\n1000:100 644\n" {
		t.Fatalf("extra files on the disk: %q %v", out, err)
	}
	if sys, _ := os.ReadFile(disk + "/nixos-system"); !strings.HasPrefix(string(sys), "/nix/store/") || !strings.HasSuffix(strings.TrimSpace(string(sys)), "pxe-handoff-system") {
		t.Fatalf("installed system %q", sys)
	}
	ev := h.events(t)
	for _, w := range []string{"refused: boot token already used", "installer up at " + h.ip + " (callback)", "phase 1/3: disko", "phase 2/3: install", "phase 3/3: reboot", "installed with profile web"} {
		if !strings.Contains(ev, w) {
			t.Fatalf("events lack %q:\n%s", w, ev)
		}
	}
	lines, _ := h.store.Log(context.Background(), macA, 0, 10000)
	for _, l := range lines {
		if strings.Contains(l.Line, "disk-secret-do-not-log") {
			t.Fatalf("a disk key reached the install log: %q", l.Line)
		}
	}

	// Its next PXE boot goes to the disk ...
	script, _, _, _ := h.pxeBoot(t)
	if !strings.Contains(script, "\nexit\n") {
		t.Fatalf("installed machine's script:\n%s", script)
	}
	// ... until reinstall flips it back, which only the admin side
	// does: the machine's network finds no reinstall on the boot side,
	// even with the token.
	if code, _ := h.curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Authorization: Bearer "+h.apiToken, h.base+"/api/v1/machines/"+macA+"/reinstall"); code != "404" {
		t.Fatalf("reinstall on the boot side: HTTP %s, want 404", code)
	}
	if out, err := h.adminCurl(t, "-f", "-X", "POST", "-H", "Authorization: Bearer "+h.apiToken, h.admin+"/api/v1/machines/"+macA+"/reinstall"); err != nil {
		t.Fatalf("reinstall: %v %s", err, out)
	}
	if code, _ := h.adminCurl(t, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", h.admin+"/api/v1/machines/"+macA+"/reinstall"); code != "401" {
		t.Fatalf("reinstall without the API token: %s", code)
	}
	if _, token2, _, _ := h.pxeBoot(t); token2 == "" || token2 == token {
		t.Fatalf("after reinstall the script does not install again (token %q)", token2)
	}
}

func TestHandoffRefusesAnotherHostKey(t *testing.T) {
	h := newHandoff(t)
	if h == nil {
		return
	}
	_, token, _, authKeys := h.pxeBoot(t)
	// Something else answers at the installer's address, with its own key.
	tg := h.installerUp(t, nil, authKeys)
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	r := h.waitFor(t, store.StateFailed)
	if !strings.Contains(r.Error, "host key") {
		t.Fatalf("failure %q does not name the host key", r.Error)
	}
	if calls := tg.Calls(); len(calls) != 0 {
		t.Fatalf("commands ran on a host with the wrong key: %q", calls)
	}
}

func TestHandoffServerRestartDuringInstall(t *testing.T) {
	h := newHandoff(t)
	if h == nil {
		return
	}
	_, token, hostKey, authKeys := h.pxeBoot(t)
	tg := h.installerUp(t, hostKey, authKeys)
	// disko hangs, as a long format would.
	tg.WriteFile(t, "hang", "")
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	// Wait until the engine is inside an install phase, then stop the
	// server under it and start a new one on the same state.
	deadline := time.Now().Add(time.Minute)
	for {
		r, _ := h.store.Machine(context.Background(), macA)
		if r.State == store.StateInstalling {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("install never started: %+v", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := h.events(t)
	h.stop()
	cfg, _ := profiles.Parse(filepath.Join(h.dir, "config.yaml"), []byte(h.cfgText(tg.Port)))
	h.start(t, cfg, filepath.Join(h.dir, "state.db"))
	r, _ := h.store.Machine(context.Background(), macA)
	if r.State != store.StateFailed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("after restart: %+v", r)
	}
	if after := h.events(t); !strings.HasPrefix(after, before) {
		t.Fatalf("events lost across restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// attackerListener is a TCP listener on the SSH port of the installers
// inside the attacker's namespace: it counts every connection, so that
// a test can show that the engine never went there.
func (h *handoff) attackerListener(t *testing.T, port int) *atomic.Int32 {
	t.Helper()
	var ln net.Listener
	if err := netlab.Do(h.attacker, func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return &n
}

// code is the HTTP status that ns gets for a GET of url.
func (h *handoff) code(t *testing.T, ns *netlab.NS, url string) string {
	t.Helper()
	out, _ := h.curlFrom(t, ns, "-o", "/dev/null", "-w", "%{http_code}", url)
	return out
}

// TestHandoffAttacker replays, from a second host on the provisioning
// bridge, what once took a machine's disk keys with four requests: the
// boot script, the extra initrd, image downloads and callbacks, from its
// own address and after a DHCP exchange with the machine's MAC; with
// live, used and voided tokens. Every request is refused and leaves an
// event, the attacker's SSH port sees no connection, and the machine
// still installs. Proxy mode beside the site's own DHCP server, where a
// spoofed exchange gets an address of its own.
func TestHandoffAttacker(t *testing.T) {
	h := newHandoffMode(t, true)
	if h == nil {
		return
	}
	ctx := context.Background()
	victim := h.base + scriptURL
	attackerSSH := h.attackerListener(t, 2222)
	// The attacker's own lease, from the site's server.
	a2, _ := h.dhcpAs(t, h.attacker)

	// 1. Before the machine boots: its script from another address.
	if c := h.code(t, h.attacker, victim); c != "403" {
		t.Fatalf("script for the machine asked by the attacker at %s: %s, want 403", a2, c)
	}
	if _, err := h.store.LatestBoot(ctx, macA); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused script request made a boot: %v", err)
	}

	// 2. The machine asks for its script; the attacker learns the token
	// (as if it could read the machine's traffic) and tries it.
	_, token, urls := h.askScript(t)
	extra := urls[len(urls)-1]
	for _, u := range []string{extra, urls[0], urls[1]} {
		if c := h.code(t, h.attacker, u); c != "403" {
			t.Fatalf("%s asked by the attacker: %s, want 403", u, c)
		}
	}
	for _, body := range []string{
		`{"token":"` + token + `"}`,
		`{"token":"` + token + `","address":"` + a2 + `"}`,
		`{"token":"` + token + `","address":"` + h.ip + `"}`, // names the machine, comes from elsewhere
	} {
		if c := h.callbackFrom(t, h.attacker, body); c != "403" {
			t.Fatalf("callback %s from the attacker: %s, want 403", body, c)
		}
	}

	// 3. The attacker takes the machine's MAC for a DHCP exchange of its
	// own (another client identifier, so the site's server gives it
	// another address), then asks for the script from there.
	h.lab.Run(h.attacker, "ip", "link", "set", "eth0", "address", macA)
	a3, _ := h.dhcpAs(t, h.attacker, "-x", "0x3d:ff0a0b0c0d")
	if a3 == h.ip || a3 == a2 {
		t.Fatalf("spoofed exchange got %s (machine %s, attacker %s): the test needs an address of its own", a3, h.ip, a2)
	}
	if c := h.code(t, h.attacker, victim); c != "403" {
		t.Fatalf("script asked by the attacker with the machine's MAC at %s: %s, want 403", a3, c)
	}
	if c := h.callbackFrom(t, h.attacker, `{"token":"`+token+`"}`); c != "403" {
		t.Fatalf("callback from the spoofed binding before the machine fetched its initrd: %s, want 403", c)
	}
	h.lab.Run(h.attacker, "ip", "link", "set", "eth0", "address", attackerMAC)
	// The server still has the spoofed MAC for a3 in its neighbour
	// table, so its answers to a3 would go to the machine; an attacker
	// would announce itself (gratuitous ARP): forget the entry.
	h.lab.Run(h.lab.Server, "ip", "neigh", "flush", "to", a3)
	if b, err := h.store.LatestBoot(ctx, macA); err != nil || b.Token != token || b.VoidedAt != nil || b.InitrdAt != nil {
		t.Fatalf("the live boot was touched: %+v %v", b, err)
	}

	// 4. The machine boots on; after its initrd went out, the spoofed
	// binding (older than that) still cannot call back.
	hostKey, authKeys := h.fetchFiles(t, urls)
	tg := h.installerUp(t, hostKey, authKeys)
	if c := h.callbackFrom(t, h.attacker, `{"token":"`+token+`"}`); c != "403" {
		t.Fatalf("callback from the spoofed binding: %s, want 403", c)
	}
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("the machine's callback: %s", code)
	}
	h.waitFor(t, store.StateInstalled)

	// 5. Used and voided tokens: refused, from anywhere.
	if c := h.callbackFrom(t, h.attacker, `{"token":"`+token+`"}`); c != "403" {
		t.Fatalf("used token: %s", c)
	}
	if c := h.code(t, h.attacker, extra); c != "403" {
		t.Fatalf("used boot's initrd from the attacker: %s", c)
	}
	if b, _ := h.store.BootByToken(ctx, token); len(b.HostKeyPrivate) != 0 {
		t.Fatal("the used boot kept its private key")
	}
	if n := attackerSSH.Load(); n != 0 {
		t.Fatalf("the attacker's SSH port saw %d connections", n)
	}
	if calls := tg.Calls(); len(calls) < 3 || calls[len(calls)-1] != "reboot" {
		t.Fatalf("machine's installer calls %q", calls)
	}
	ev := h.events(t)
	for _, w := range []string{
		"boot script asked by " + a2 + ", which DHCP did not give to " + macA,
		"extra initrd of boot " + token[:6] + "… asked by " + a2 + ", but the boot belongs to " + h.ip,
		"kernel of boot " + token[:6] + "… asked by " + a2,
		"callback of boot " + token[:6] + "… from " + a2 + " names address " + h.ip,
		"callback asked by " + a2 + ", which DHCP did not give",
		"conflict: boot script asked by " + a3 + " while boot " + token[:6] + "…",
		"callback of boot " + token[:6] + "… from " + a3 + " before its extra initrd was fetched",
		"callback of boot " + token[:6] + "… from " + a3 + ", an address DHCP last gave to " + macA + " before",
		"installer up at " + h.ip + " (callback)",
		"installed with profile web",
		"refused: boot token already used",
	} {
		if !strings.Contains(ev, w) {
			t.Errorf("events lack %q", w)
		}
	}
	if t.Failed() {
		t.Logf("events:\n%s", ev)
	}
}

// TestHandoffSecretsTwice: a second request for a boot's extra initrd,
// here from another host that learnt the token, voids the boot and
// holds the machine; its callback is refused and nothing is installed,
// until an operator asks for a reinstall. (The unit tests ask twice from
// the machine's own address.)
func TestHandoffSecretsTwice(t *testing.T) {
	h := newHandoff(t)
	if h == nil {
		return
	}
	ctx := context.Background()
	_, token, urls := h.askScript(t)
	hostKey, authKeys := h.fetchFiles(t, urls)
	h.dhcpAs(t, h.attacker) // a lease of its own
	if c := h.code(t, h.attacker, urls[len(urls)-1]); c != "403" {
		t.Fatalf("second fetch of the extra initrd: %s, want 403", c)
	}
	r := h.waitFor(t, store.StateFailed)
	if !r.Held || !strings.Contains(r.Error, "boot secrets requested twice") {
		t.Fatalf("machine after the second fetch: %+v", r)
	}
	tg := h.installerUp(t, hostKey, authKeys)
	if code := h.callback(t, token); code != "403" {
		t.Fatalf("callback of a voided boot: %s", code)
	}
	if b, _ := h.store.BootByToken(ctx, token); b.VoidedAt == nil || len(b.HostKeyPrivate) != 0 {
		t.Fatalf("boot not voided or key kept: %+v", b)
	}
	// Held: the next PXE boot goes nowhere near the installer.
	if script, tok, _ := h.askScript(t); tok != "" || !strings.Contains(script, "\nexit\n") {
		t.Fatalf("held machine was given:\n%s", script)
	}
	time.Sleep(200 * time.Millisecond)
	if calls := tg.Calls(); len(calls) != 0 {
		t.Fatalf("the engine ran on a voided boot: %q", calls)
	}
	if !strings.Contains(h.events(t), "SECURITY: boot secrets requested twice") {
		t.Fatalf("no security event:\n%s", h.events(t))
	}
	if err := h.p.Reinstall(ctx, macA, "operator (API)"); err != nil {
		t.Fatal(err)
	}
	if _, tok, _ := h.askScript(t); tok == "" || tok == token {
		t.Fatalf("after reinstall: token %q", tok)
	}
}

// targetProcs are the processes of target tg whose command line is
// cmdline (NUL-separated words).
func targetProcs(tg *sshtarget.Target, cmdline string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || string(c) != cmdline {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if strings.Contains("\x00"+string(env)+"\x00", "\x00PXE_TARGET_DIR="+tg.Dir+"\x00") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestHandoffCancelDuringInstall: an operator cancels, over the admin
// API, an install whose disko hangs. The command on the target is
// killed, the machine is failed "cancelled by operator", an event names
// who did it, and a second cancel finds nothing to cancel.
func TestHandoffCancelDuringInstall(t *testing.T) {
	h := newHandoff(t)
	if h == nil {
		return
	}
	_, token, hostKey, authKeys := h.pxeBoot(t)
	tg := h.installerUp(t, hostKey, authKeys)
	tg.WriteFile(t, "hang", "")
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	const hung = "sleep\x00600\x00"
	deadline := time.Now().Add(time.Minute)
	for len(targetProcs(tg, hung)) == 0 {
		if time.Now().After(deadline) {
			r, _ := h.store.Machine(context.Background(), macA)
			t.Fatalf("disko never hung: %+v", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
	url := h.admin + "/api/v1/machines/" + macA + "/cancel"
	if out, _ := h.adminCurl(t, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Authorization: Bearer wrong", url); out != "401" {
		t.Fatalf("cancel with a wrong token: %s", out)
	}
	out, err := h.adminCurl(t, "-f", "-X", "POST", "-H", "Authorization: Bearer "+h.apiToken, url)
	if err != nil || !strings.Contains(out, "cancelled by operator") {
		t.Fatalf("cancel: %v %s", err, out)
	}
	r, _ := h.store.Machine(context.Background(), macA)
	if r.State != store.StateFailed || r.Error != "cancelled by operator" || r.Phase != "disko" {
		t.Fatalf("after cancel: %+v", r)
	}
	if ev := h.events(t); !strings.Contains(ev, "install cancelled by operator (API) during disko") {
		t.Errorf("no event names who cancelled:\n%s", ev)
	}
	for deadline := time.Now().Add(15 * time.Second); len(targetProcs(tg, hung)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("disko's sleep still runs on the target after the cancel: pids %v", targetProcs(tg, hung))
		}
	}
	out, _ = h.adminCurl(t, "-X", "POST", "-H", "Authorization: Bearer "+h.apiToken, "-w", " %{http_code}", url)
	if !strings.HasSuffix(out, " 409") || !strings.Contains(out, "nothing to cancel") {
		t.Fatalf("second cancel: %s", out)
	}
}
