package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// handoff is the whole server without a VM: DHCP and the boot side of
// HTTP inside a lab namespace, the admin side on its loopback, the
// provisioner with the real install engine, and a
// simulated machine in a client namespace that does what firmware,
// iPXE and the installer do. The installer's sshd is a real OpenSSH
// server started with the keys the machine found in its extra initrd.
type handoff struct {
	lab      *netlab.Lab
	client   *netlab.NS
	p        *Provisioner
	store    *profiles.Store
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

func newHandoff(t *testing.T) *handoff {
	t.Helper()
	netlab.Require(t, "udhcpc", "curl", "cpio", "nix-store", "/usr/sbin/sshd")
	h := &handoff{dir: t.TempDir(), apiToken: "handoff-api-token-0123456789"}
	h.lab = netlab.New(t, "10.82.0.0/24")
	h.client = h.lab.Client(macA)

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
	h.cfgText = func(port int) string {
		return fmt.Sprintf(`server:
  interfaces: [br0]
  advertise: 10.82.0.1
  max_installs: 2
dhcp:
  mode: authoritative
  subnet: 10.82.0.0/24
  range: [10.82.0.100, 10.82.0.150]
  router: 10.82.0.1
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
machines:
  - {mac: "%[5]s", profile: web, hostname: web-01}
`, h.dir, disko, system, port, macA)
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
	store, err := profiles.OpenStore(ctx, dbPath)
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
	p, err := New(ctx, cfg, Options{Store: store, Signer: signer, KeyFile: keyPath, Log: log, PollDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var hl, al net.Listener
	if err := netlab.Do(h.lab.Server, func() (err error) {
		if hl, err = net.Listen("tcp", "10.82.0.1:0"); err != nil {
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
	ds, err := dhcp.New(dhcp.Config{
		Interfaces: []string{"br0"}, Mode: dhcp.Authoritative, ServerIP: h.lab.Addr,
		ScriptURL: func(m net.HardwareAddr) string { return httpboot.ScriptURL(h.base, m) },
		BootFiles: map[dhcp.Arch]string{dhcp.ArchBIOS: "undionly.kpxe"},
		Subnet:    cfg.DHCP.Subnet, RangeStart: cfg.DHCP.RangeStart, RangeEnd: cfg.DHCP.RangeEnd, Router: cfg.DHCP.Router,
		LeaseTime: time.Hour, LeaseFile: filepath.Join(h.dir, "leases.json"),
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
	h.p, h.store = p, store
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
		store.Close()
	}
	t.Cleanup(h.stop)
}

// curl runs curl in the machine's namespace and returns its body.
func (h *handoff) curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := h.lab.Command(h.client, "curl", append([]string{"-sS", "--max-time", "30"}, args...)...).Output()
	return string(out), err
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
	dir := t.TempDir()
	sc := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(sc, []byte("#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr flush dev \"$interface\"\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\necho \"$ip $boot_file\" > "+dir+"/lease\n"), 0o755)
	if out, err := h.lab.Command(h.client, "udhcpc", "-q", "-n", "-f", "-i", "eth0", "-t", "5", "-T", "2", "-s", sc,
		"-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845").CombinedOutput(); err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	lease, _ := os.ReadFile(filepath.Join(dir, "lease"))
	f := strings.Fields(string(lease))
	if len(f) != 2 || !strings.HasPrefix(f[0], "10.82.0.1") || !strings.HasSuffix(f[1], "/boot/52-54-00-12-34-01.ipxe") {
		t.Fatalf("DHCP as iPXE got %q", lease)
	}
	script, err := h.curl(t, "-f", f[1])
	if err != nil {
		t.Fatalf("script: %v", err)
	}
	if !strings.Contains(script, "\nkernel ") {
		return script, "", nil, nil
	}
	for _, line := range strings.Split(script, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		var url string
		switch fields[0] {
		case "kernel":
			url = fields[1]
			for _, a := range fields[2:] {
				if v, ok := strings.CutPrefix(a, "pxe_anywhere.token="); ok {
					token = v
				}
			}
			if _, err := h.curl(t, "-f", "-r", "0-99", "-o", "/dev/null", url); err != nil {
				t.Fatalf("kernel range: %v", err)
			}
		case "initrd":
			url = fields[len(fields)-1]
		default:
			continue
		}
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
	if token == "" || hostKey == nil || authKeys == nil {
		t.Fatalf("incomplete boot: token %q, host key %d bytes, keys %d bytes\n%s", token, len(hostKey), len(authKeys), script)
	}
	return script, token, hostKey, authKeys
}

// installerUp starts the "installer": a real sshd with the keys from the
// initrd, and points the profile at its port.
func (h *handoff) installerUp(t *testing.T, hostKey, authKeys []byte) *sshtarget.Target {
	t.Helper()
	// Rebooting keeps what the "disk" (/mnt) holds, for the test to read
	// after the machine is gone.
	reboot := `cp -a /mnt "$PXE_TARGET_DIR/disk"; rm -f "$PXE_TARGET_DIR/next"; kill "$(cat "$PXE_TARGET_DIR/sshd.pid")"` + "\n"
	tg := sshtarget.Start(t, sshtarget.Options{HostKeyPEM: hostKey, AuthorizedKeys: authKeys, StandIns: map[string]string{"reboot": reboot}})
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

func (h *handoff) callback(t *testing.T, token string) string {
	t.Helper()
	out, _ := h.curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
		"-d", `{"token":"`+token+`","address":"127.0.0.1"}`, h.base+"/api/v1/callback")
	return out
}

func (h *handoff) waitFor(t *testing.T, want profiles.State) profiles.MachineRecord {
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
	h.waitFor(t, profiles.StateInstalled)

	// What the target saw, in order: keys before disko, then the system.
	calls := tg.Calls()
	want := []string{"disko", "key 600 /run/keys/disk.key"}
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
	for _, w := range []string{"callback refused", "installer up at 127.0.0.1 (callback)", "phase 1/3: disko", "phase 2/3: install", "phase 3/3: reboot", "installed with profile web"} {
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
	_, token, _, authKeys := h.pxeBoot(t)
	// Something else answers at the installer's address, with its own key.
	tg := h.installerUp(t, nil, authKeys)
	if code := h.callback(t, token); code != "200" {
		t.Fatalf("callback: %s", code)
	}
	r := h.waitFor(t, profiles.StateFailed)
	if !strings.Contains(r.Error, "host key") {
		t.Fatalf("failure %q does not name the host key", r.Error)
	}
	if calls := tg.Calls(); len(calls) != 0 {
		t.Fatalf("commands ran on a host with the wrong key: %q", calls)
	}
}

func TestHandoffServerRestartDuringInstall(t *testing.T) {
	h := newHandoff(t)
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
		if r.State == profiles.StateInstalling {
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
	if r.State != profiles.StateFailed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("after restart: %+v", r)
	}
	if after := h.events(t); !strings.HasPrefix(after, before) {
		t.Fatalf("events lost across restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
