package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// seedIP is the address dnsmasq reserves for the seed VM, before and
// after kexec: the installer DHCPs on the same NIC.
const seedIP = "10.77.0.50"

var (
	seedOnce sync.Once
	seedDir  string
	seedErr  error
)

// seedImage builds, once per test binary, the seed (a plain Linux with
// sshd and kexec-tools: build-installer-image.sh --seed) and the kexec
// tarball made from the test installer image (build-kexec-tarball.sh).
func seedImage(t *testing.T) (kernel, initrd, tarball string) {
	t.Helper()
	imgKernel, _ := installerImage(t)
	seedOnce.Do(func() {
		seedDir = filepath.Join(tmpRoot, "seed")
		out, err := exec.Command(filepath.Join(repoRoot, "lab", "build-installer-image.sh"), "--seed", seedDir).CombinedOutput()
		if err != nil {
			seedErr = err
			t.Logf("lab/build-installer-image.sh --seed:\n%s", out)
			return
		}
		out, err = exec.Command(filepath.Join(repoRoot, "lab", "build-kexec-tarball.sh"), filepath.Dir(imgKernel),
			filepath.Join(seedDir, "nixos-kexec-installer-test-x86_64-linux.tar.gz")).CombinedOutput()
		if err != nil {
			seedErr = err
			t.Logf("lab/build-kexec-tarball.sh:\n%s", out)
		}
	})
	if seedErr != nil {
		t.Fatalf("building the seed image and kexec tarball: %v", seedErr)
	}
	return filepath.Join(seedDir, "vmlinuz"), filepath.Join(seedDir, "initrd.img"), filepath.Join(seedDir, "nixos-kexec-installer-test-x86_64-linux.tar.gz")
}

// sshKey makes an ed25519 key pair with ssh-keygen and returns the
// private key's path and the public key line.
func sshKey(t *testing.T, path string) (priv, pub string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", filepath.Base(path), "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	data, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return path, strings.TrimSpace(string(data))
}

// fingerprint is ssh-keygen -l's SHA256 fingerprint of a public key file.
func fingerprint(t *testing.T, pubPath string) string {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-l", "-f", pubPath).Output()
	if err != nil {
		t.Fatalf("ssh-keygen -l -f %s: %v", pubPath, err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		t.Fatalf("ssh-keygen -l -f %s: %q", pubPath, out)
	}
	return f[1]
}

// seedInitrd appends to the seed's initrd a cpio with this machine's own
// host key and root's authorized_keys, as a Debian host has them on disk.
func seedInitrd(t *testing.T, base, hostKey, authorized string) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	key, err := os.ReadFile(hostKey)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "etc/ssh/ssh_host_ed25519_key"), string(key), 0o600)
	writeFile(t, filepath.Join(root, "etc/ssh/ssh_host_ed25519_key.pub"), string(pub), 0o644)
	writeFile(t, filepath.Join(root, "root/.ssh/authorized_keys"), authorized+"\n", 0o600)
	if err := os.Chmod(filepath.Join(root, "root/.ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.img")
	baseData, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, out, string(baseData), 0o644)
	// Only the new entries: the directories /etc, /root exist in the base.
	cmd := exec.Command("sh", "-c", "find etc/ssh root/.ssh | cpio --quiet -o -H newc -R 0:0 | gzip >>"+out)
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("appending the seed's keys: %v\n%s", err, o)
	}
	return out
}

// kexecFlow installs a seed VM, a Linux that is no installer, with
// `pxe-anywhere install --kexec`: the VM really kexecs into the test
// installer, must come back with its own host key, and ends installed.
// With download set, the tarball comes from an HTTP server in the lab
// through --kexec-download-locally.
func kexecFlow(t *testing.T, mac string, download bool) {
	requireE2E(t, "dnsmasq", "ssh-keygen", "kexec")
	t.Parallel()
	bin := serverBinary(t)
	seedKernel, seedBase, tarball := seedImage(t)
	lab := netlab.New(t, labPrefix)
	plainDHCP(t, lab, "--dhcp-host="+mac+","+seedIP, "--no-ping")

	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	clientKey, clientPub := sshKey(t, filepath.Join(home, ".ssh", "id_ed25519"))
	hostKey, hostPub := sshKey(t, filepath.Join(dir, "hostkey", "ssh_host_ed25519_key"))
	// The user has met this host before: its key is in known_hosts.
	writeFile(t, filepath.Join(home, ".ssh", "known_hosts"), seedIP+" "+hostPub+"\n", 0o600)
	wantFP := fingerprint(t, hostKey+".pub")

	system := systemToplevel(t)
	disko := storeAdd(t, filepath.Join(repoRoot, "lab", "disko-standin.sh"))
	diskKey := filepath.Join(dir, "disk.key")
	writeFile(t, diskKey, "e2e disk key\n", 0o600)
	extra := filepath.Join(dir, "extra")
	writeFile(t, filepath.Join(extra, "etc", "e2e-extra"), "extra file from pxe-anywhere install\n", 0o644)
	writeFile(t, filepath.Join(extra, "home", "alice", "hello"), "hello alice\n", 0o644)

	kexecArg := tarball
	var gets *getLog
	if download {
		kexecArg, gets = serveTarball(t, lab, tarball)
	}

	v := startKernelVM(t, lab, mac, kernelBoot{Kernel: seedKernel, Initrd: seedInitrd(t, seedBase, hostKey, clientPub), Cmdline: "console=ttyS0", MemMiB: 2048})
	waitFor(t, v, bootBound, "seed sshd up", func() bool {
		if v.SerialHas("seed: FATAL") {
			t.Fatalf("the seed failed to boot:\n%s", tail(v.Serial, 40))
		}
		return v.SerialHas("seed: sshd started")
	})
	if !v.SerialHas("seed: os-release: ID=debian") {
		t.Fatalf("the seed does not say ID=debian:\n%s", tail(v.Serial, 40))
	}

	args := []string{"netns", "exec", lab.Server.Name, bin, "install", "--kexec", kexecArg,
		"--store-paths", disko, system,
		"--disk-encryption-keys", "/tmp/disk.key", diskKey,
		"--extra-files", extra, "--chown", "/home/alice", "1000:100",
		"-i", clientKey}
	if download {
		args = append(args, "--kexec-download-locally")
	}
	args = append(args, "root@"+seedIP)
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"), "SSH_AUTH_SOCK=")
	logPath := filepath.Join(dir, "install.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("pxe-anywhere install: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if t.Failed() {
			dst := filepath.Join(repoRoot, "e2e", "artifacts", sanitize(t.Name()))
			if os.MkdirAll(dst, 0o755) == nil {
				if data, err := os.ReadFile(logPath); err == nil {
					_ = os.WriteFile(filepath.Join(dst, "install.log"), data, 0o644)
				}
			}
			t.Logf("pxe-anywhere install output tail (kept in %s):\n%s", dst, tail(logPath, 40))
		}
	})
	var runErr error
	exited := func() bool {
		select {
		case runErr = <-done:
			return true
		default:
			return false
		}
	}
	waitFor(t, v, bootBound, "kexec into the installer", func() bool {
		if exited() {
			t.Fatalf("pxe-anywhere install ended before the VM kexecd (%v):\n%s", runErr, tail(logPath, 40))
		}
		return v.SerialHas("pxe-installer: booted")
	})
	waitFor(t, v, 3*bootBound, "pxe-anywhere install done", func() bool {
		return exited()
	})
	logf.Close()
	t.Logf("timing %s: pxe-anywhere install took %s", v.name, time.Since(start).Round(time.Second))
	v.Stop()
	if testing.Verbose() {
		t.Logf("pxe-anywhere install output:\n%s\nserial console, lines of the seed and the installer:\n%s", tail(logPath, 200), grepLines(tail(v.Serial, 2000), "seed:")+"\n"+grepLines(tail(v.Serial, 2000), "pxe-installer:"))
	}

	serial, _ := os.ReadFile(v.Serial)
	installer := strings.Index(string(serial), "pxe-installer: booted")
	if installer < 0 {
		t.Fatalf("the VM never booted the installer:\n%s", tail(v.Serial, 60))
	}
	before, after := string(serial[:installer]), string(serial[installer:])
	// The same key on both sides of the kexec, as the console says it:
	// independent of the engine's own check.
	if want := "seed: host key: 256 " + wantFP; !strings.Contains(before, want) {
		t.Errorf("before kexec the seed does not print %q", want)
	}
	if want := "pxe-installer: host key: 256 " + wantFP; !strings.Contains(after, want) {
		t.Errorf("after kexec the installer does not print %q: its host key is not the seed's\n%s", want, grepLines(after, "host key"))
	}
	if !strings.Contains(after, "pxe-installer: authorized_keys restored (1 keys)") {
		t.Errorf("after kexec the installer did not restore root's authorized_keys:\n%s", grepLines(after, "pxe-installer"))
	}
	// The console first: a failed install is explained by what the VM
	// said, and the host-key check fails here whatever the engine did.
	if runErr != nil {
		t.Fatalf("pxe-anywhere install: %v\n%s", runErr, tail(logPath, 40))
	}
	out, _ := os.ReadFile(logPath)
	// The reboot phase unmounts /mnt before rebooting (umount -R of
	// util-linux, as on NixOS).
	for _, want := range []string{"waiting for the installer on " + seedIP, "installed " + system, "umount: /mnt unmounted"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("pxe-anywhere install output lacks %q", want)
		}
	}
	// Downloaded here, where pxe-anywhere runs (the server's address),
	// once, and never by the target.
	if download {
		if got := gets.clients(); len(got) != 1 || got[0] != serverIP {
			t.Errorf("the tarball was downloaded by %v, want once by %s (pxe-anywhere, not the target)", got, serverIP)
		}
	}
	checkInstalledDisk(t, v.Disk, system, []extraFile{
		{Path: "/etc/e2e-extra", UID: 0, GID: 0, Content: "extra file from pxe-anywhere install"},
		{Path: "/home/alice", UID: 1000, GID: 100},
		{Path: "/home/alice/hello", UID: 1000, GID: 100, Content: "hello alice"},
	})
}

// getLog records the client address of each GET.
type getLog struct {
	mu  sync.Mutex
	ips []string
}

func (g *getLog) add(remote string) {
	host, _, _ := net.SplitHostPort(remote)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ips = append(g.ips, host)
}

func (g *getLog) clients() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.ips...)
}

// serveTarball serves the tarball over HTTP from the lab's server
// namespace, and returns its URL and the log of who fetched it.
func serveTarball(t *testing.T, lab *netlab.Lab, tarball string) (string, *getLog) {
	t.Helper()
	gets := &getLog{}
	var ln net.Listener
	if err := netlab.Do(lab.Server, func() (err error) { ln, err = net.Listen("tcp", serverIP+":8090"); return err }); err != nil {
		t.Fatalf("listening in the lab: %v", err)
	}
	const name = "/nixos-kexec-installer-test-x86_64-linux.tar.gz"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != name {
			http.NotFound(w, r)
			return
		}
		if r.Method == http.MethodGet {
			gets.add(r.RemoteAddr)
		}
		http.ServeFile(w, r, tarball)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + serverIP + ":8090" + name, gets
}

// grepLines returns the lines of s holding sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestInstallKexec: `pxe-anywhere install --kexec TARBALL root@vm` on a
// VM that runs a plain Linux, with a real kexec into the installer.
func TestInstallKexec(t *testing.T) { kexecFlow(t, "52:54:00:77:05:01", false) }

// TestInstallKexecDownloadLocally: the same, with the tarball fetched
// from an HTTP server in the lab by --kexec-download-locally.
func TestInstallKexecDownloadLocally(t *testing.T) { kexecFlow(t, "52:54:00:77:06:01", true) }
