// Package sshtarget runs a real OpenSSH server on 127.0.0.1 (or on an
// address in a test network namespace) inside a private mount namespace,
// as a stand-in for a machine to install: /run, /mnt and /root are fresh
// tmpfs mounts, /etc/os-release says what the test wants, and strict
// stand-in commands that record their calls come first on PATH. It is
// used only by tests (root needed).
package sshtarget

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// InstallerOSRelease is what a NixOS installer's /etc/os-release says.
const InstallerOSRelease = "NAME=NixOS\nID=nixos\nVARIANT_ID=installer\nVARIANT=installer\n"

// DebianOSRelease is a host that must be kexec'd first.
const DebianOSRelease = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\n"

// record is the prologue of every stand-in: it appends "NAME ARGS" to
// $PXE_TARGET_DIR/calls.
const record = `echo "$(basename "$0")${*:+ $*}" >> "$PXE_TARGET_DIR/calls"
`

// NixosInstallStandIn accepts exactly what the engine must pass and
// leaves the system path in /mnt/nixos-system.
const NixosInstallStandIn = `if [ $# -ne 4 ] || [ "$1" != --no-root-passwd ] || [ "$2" != --no-channel-copy ] || [ "$3" != --system ]; then
  echo "nixos-install stand-in: unexpected arguments: $*" >&2; exit 2
fi
mountpoint -q /mnt || { echo "nixos-install stand-in: /mnt is not mounted" >&2; exit 3; }
echo "$4" > /mnt/nixos-system
echo "installation finished!"
`

// DiskoScriptStandIn takes no arguments; for each path listed in
// $PXE_TARGET_DIR/disk-keys it records "key MODE SHA256 PATH" (or "key
// missing PATH"), so a test sees what existed when disko ran, down to
// the last byte of each key.
const DiskoScriptStandIn = `if [ $# -ne 0 ]; then echo "disko stand-in: unexpected arguments: $*" >&2; exit 2; fi
if [ -f "$PXE_TARGET_DIR/disk-keys" ]; then
  while read -r k; do
    if [ -f "$k" ]; then
      sum=$(sha256sum < "$k") || exit 3
      echo "key $(stat -c %a "$k") ${sum%% *} $k" >> "$PXE_TARGET_DIR/calls"
    else
      echo "key missing $k" >> "$PXE_TARGET_DIR/calls"
    fi
  done < "$PXE_TARGET_DIR/disk-keys"
fi
echo "disko: partitioned and mounted /mnt"
`

// KexecRunStandIn is kexec/run inside a test kexec tarball: it accepts
// no arguments or --kexec-extra-flags FLAGS, then "reboots": sshd stops
// and, unless $PXE_TARGET_DIR/never-returns exists, comes back as an
// installer on the port in $PXE_TARGET_DIR/post-kexec-port (or the same
// port), with the same host key (the real image copies it too) and, as
// the real image, only root to log in as; with our authorized keys
// unless $PXE_TARGET_DIR/keys-lost exists.
const KexecRunStandIn = `case "$#:$1" in
  0:) ;;
  2:--kexec-extra-flags) ;;
  *) echo "kexec/run stand-in: unexpected arguments: $*" >&2; exit 2 ;;
esac
if [ -f "$PXE_TARGET_DIR/kexec-fails" ]; then echo "kexec_load failed: Operation not permitted"; exit 1; fi
if [ ! -f "$PXE_TARGET_DIR/never-returns" ]; then
  port=$(cat "$PXE_TARGET_DIR/post-kexec-port" 2>/dev/null || true)
  {
    [ -n "$port" ] && echo "sed -i 's/^Port .*/Port $port/' \"\$PXE_TARGET_DIR/sshd_config\""
    echo "echo 'AllowUsers root' >> \"\$PXE_TARGET_DIR/sshd_config\""
    [ -f "$PXE_TARGET_DIR/keys-lost" ] && echo ": > \"\$PXE_TARGET_DIR/authorized_keys\""
    # As nixos-images' kexec-run.sh, the sudo user's keys too.
    [ -n "${SUDO_USER-}" ] && echo "mkdir -p /root/.ssh; cat /home/$SUDO_USER/.ssh/authorized_keys >> /root/.ssh/authorized_keys"
    [ -f "$PXE_TARGET_DIR/new-host-key" ] && echo "cp \"\$PXE_TARGET_DIR/new-host-key\" \"\$PXE_TARGET_DIR/host_key\""
    echo "printf 'NAME=NixOS\nID=nixos\nVARIANT_ID=installer\n' > /etc/os-release"
  } > "$PXE_TARGET_DIR/next"
fi
echo "machine will boot into nixos in 1s..."
(sleep 1; kill "$(cat "$PXE_TARGET_DIR/sshd.pid")") >/dev/null 2>&1 </dev/null &
`

// standard stand-ins, present unless Options.StandIns replaces them.
var standard = map[string]string{
	"nixos-install": NixosInstallStandIn,
	// reboot and poweroff take the host off the network: sshd stops.
	"reboot":   `rm -f "$PXE_TARGET_DIR/next"; kill "$(cat "$PXE_TARGET_DIR/sshd.pid")"` + "\n",
	"poweroff": `rm -f "$PXE_TARGET_DIR/next"; kill "$(cat "$PXE_TARGET_DIR/sshd.pid")"` + "\n",
	// umount only records: the tmpfs /mnt goes with the namespace.
	"umount": `case "$*" in "-Rv /mnt"|"/mnt") ;; *) echo "umount stand-in: unexpected arguments: $*" >&2; exit 2 ;; esac` + "\n",
}

// Options configure a target.
type Options struct {
	HostKeyPEM     []byte            // OpenSSH private host key; nil: generate an ed25519 key
	RSAHostKey     bool              // also serve an RSA host key, as stock sshd does; clients that prefer RSA then get it
	AuthorizedKeys []byte            // authorized_keys content for every user
	OSRelease      string            // /etc/os-release inside the namespace; "": InstallerOSRelease
	StandIns       map[string]string // command name → sh script body, first on PATH (after the standard ones)
	Files          map[string]string // absolute path → content bind-mounted over it inside the namespace (e.g. /proc/meminfo)
	// DMI, when set, replaces /sys/class/dmi/id inside the namespace
	// with these files (name → content), so that the host looks like the
	// machine a test wants even where it has no DMI: /sys/class becomes
	// a tmpfs holding only dmi/id and the host's own net.
	DMI map[string]string
	// User, when set, is a login user that is not root (with an id no
	// account of this host has, home /home/USER, a tmpfs inside the namespace):
	// AuthorizedKeys go to its ~/.ssh/authorized_keys, and sshd reads
	// each user's own file, so root logs in only once someone puts keys
	// into /root/.ssh. UserPassword, when set, is its password (in
	// /etc/shadow; sshd then takes passwords too). Sudo is what the real
	// sudo lets it do: "" nothing, "nopasswd", or "password" (sudo asks
	// for UserPassword).
	User, UserPassword, Sudo string
	// NetNS, when set, runs the target in that network namespace (a
	// netlab client: the machine itself), listening on ListenAddr, an
	// address it holds there. The caller must be able to reach it.
	NetNS      string
	ListenAddr string
}

// Target is a running test target.
type Target struct {
	Addr    string
	Host    string
	Port    int
	HostKey ssh.PublicKey
	Dir     string // where recordings, sshd_config, the log and the stand-ins live
	Bin     string // the stand-in directory; a stand-in NAME is at Bin/NAME

	cmd      *exec.Cmd
	done     chan struct{}
	stopOnce sync.Once
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// NetNSPort is the port sshd listens on in a test network namespace.
const NetNSPort = 2222

// Start runs sshd and waits until it answers. It stops on t.Cleanup.
func Start(t testing.TB, o Options) *Target {
	t.Helper()
	// Root for the mount namespace; with PXE_LAB_REQUIRED=1 (CI) a
	// missing piece fails the test instead of skipping it.
	netlab.Require(t, "/usr/sbin/sshd", "unshare", "nsenter", "mountpoint")
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	must(t, os.Mkdir(bin, 0o755))
	keyPEM := o.HostKeyPEM
	if keyPEM == nil {
		keyPEM = newHostKey(t)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatalf("sshtarget host key: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "host_key"), keyPEM, 0o600))
	hostKeys := "HostKey " + filepath.Join(dir, "host_key") + "\n"
	if o.RSAHostKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		blk, err := ssh.MarshalPrivateKey(k, "sshtarget RSA host key")
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "host_key_rsa")
		must(t, os.WriteFile(p, pem.EncodeToMemory(blk), 0o600))
		hostKeys += "HostKey " + p + "\n"
	}
	must(t, os.WriteFile(filepath.Join(dir, "authorized_keys"), o.AuthorizedKeys, 0o600))
	files := map[string]string{}
	for k, v := range o.Files {
		files[k] = v
	}
	authFile, passwordAuth, userSetup := filepath.Join(dir, "authorized_keys"), "no", ""
	if o.User != "" {
		netlab.RequireTools(t, "openssl", "sudo")
		authFile = ".ssh/authorized_keys"
		passwd, err := os.ReadFile("/etc/passwd")
		must(t, err)
		group, err := os.ReadFile("/etc/group")
		must(t, err)
		// An id no account of this host has: sudo finds the user by it.
		id := 64017
		for strings.Contains(string(passwd), ":"+strconv.Itoa(id)+":") || strings.Contains(string(group), ":"+strconv.Itoa(id)+":") {
			id++
		}
		ids := strconv.Itoa(id)
		files["/etc/passwd"] = string(passwd) + o.User + ":x:" + ids + ":" + ids + "::/home/" + o.User + ":/bin/sh\n"
		files["/etc/group"] = string(group) + o.User + ":x:" + ids + ":\n"
		hash := "*"
		if o.UserPassword != "" {
			c := exec.Command("openssl", "passwd", "-6", "-stdin")
			c.Stdin = strings.NewReader(o.UserPassword)
			out, err := c.Output()
			must(t, err)
			hash = strings.TrimSpace(string(out))
			passwordAuth = "yes"
		}
		// The shadow file holds the host's hashes too: private to the test.
		shadow, err := os.ReadFile("/etc/shadow")
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, "shadow"), append(shadow, []byte(o.User+":"+hash+":19000:0:99999:7:::\n")...), 0o600))
		sudoers := "Defaults !env_reset\nDefaults lecture=never\nroot ALL=(ALL:ALL) ALL\n"
		switch o.Sudo {
		case "nopasswd":
			sudoers += o.User + " ALL=(ALL:ALL) NOPASSWD: ALL\n"
		case "password":
			sudoers += o.User + " ALL=(ALL:ALL) ALL\n"
		}
		files["/etc/sudoers"] = sudoers
		userSetup = fmt.Sprintf(`mount --bind %[1]s/shadow /etc/shadow
mount -t tmpfs -o mode=755 tmpfs /home
mkdir -p /home/%[2]s/.ssh
cp %[1]s/authorized_keys /home/%[2]s/.ssh/authorized_keys
chown -R %[3]s:%[3]s /home/%[2]s
`, dir, o.User, ids)
	}
	osr := o.OSRelease
	if osr == "" {
		osr = InstallerOSRelease
	}
	must(t, os.WriteFile(filepath.Join(dir, "os-release"), []byte(osr), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "calls"), nil, 0o644))
	standIns := map[string]string{}
	for k, v := range standard {
		standIns[k] = v
	}
	for k, v := range o.StandIns {
		standIns[k] = v
	}
	for name, body := range standIns {
		must(t, os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+record+body), 0o755))
	}
	port, host := 0, "127.0.0.1"
	if o.NetNS != "" {
		// A namespace of its own: nothing else listens there.
		port, host = NetNSPort, o.ListenAddr
	} else {
		port = FreePort(t)
	}
	cfg := fmt.Sprintf(`Port %[1]d
ListenAddress %[5]s
%[4]sPidFile %[2]s/sshd.pid
AuthorizedKeysFile %[6]s
StrictModes no
UsePAM no
PermitRootLogin yes
PasswordAuthentication %[7]s
KbdInteractiveAuthentication no
SetEnv PATH=%[3]s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PXE_TARGET_DIR=%[2]s
`, port, dir, bin, hostKeys, host, authFile, passwordAuth)
	must(t, os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600))

	var mounts strings.Builder
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for i, p := range paths {
		src := filepath.Join(dir, "file"+strconv.Itoa(i))
		must(t, os.WriteFile(src, []byte(files[p]), 0o644))
		fmt.Fprintf(&mounts, "mount --bind %s %s\n", src, p)
	}
	if len(o.DMI) > 0 {
		dmi := filepath.Join(dir, "dmi")
		must(t, os.MkdirAll(filepath.Join(dir, "orig-net"), 0o755))
		must(t, os.MkdirAll(dmi, 0o755))
		for name, v := range o.DMI {
			must(t, os.WriteFile(filepath.Join(dmi, filepath.Base(name)), []byte(v), 0o444))
		}
		fmt.Fprintf(&mounts, `mount --bind /sys/class/net %[1]s/orig-net
mount -t tmpfs -o mode=755 tmpfs /sys/class
mkdir -p /sys/class/net /sys/class/dmi/id
mount --move %[1]s/orig-net /sys/class/net
cp -p %[1]s/dmi/* /sys/class/dmi/id/
`, dir)
	}
	// /run is the machine's own, as on a booted machine: what the engine
	// leaves there (disk keys in /run/keys) stays in the namespace, and
	// nothing an earlier run left in the host's /run can stand in for
	// it; -n keeps mount's bookkeeping out of the host's /run too. The
	// loop is the machine's life: when sshd dies and a stand-in left a
	// "next" script (kexec), the machine "boots" again with it.
	script := fmt.Sprintf(`set -e
mount -n -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd
mount -t tmpfs -o mode=755 tmpfs /mnt
mount -t tmpfs -o mode=700 tmpfs /root
mount --bind %[1]s/os-release /etc/os-release
# A stand-in machine is no container even when this test host is one.
for f in /proc/1/environ /.dockerenv /run/.containerenv; do if [ -e $f ]; then mount --bind /dev/null $f; fi; done
%[2]s%[3]s
set +e
export PXE_TARGET_DIR=%[1]s
while :; do
  rm -f %[1]s/sshd.pid
  /usr/sbin/sshd -D -f %[1]s/sshd_config -E %[1]s/sshd.log
  if [ -f %[1]s/next ]; then . %[1]s/next; rm -f %[1]s/next; else break; fi
done
`, dir, mounts.String(), userSetup)
	argv := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script}
	if o.NetNS != "" {
		argv = append([]string{"ip", "netns", "exec", o.NetNS}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting sshd in a mount namespace: %v", err)
	}
	tg := &Target{
		Addr: net.JoinHostPort(host, strconv.Itoa(port)), Host: host, Port: port,
		HostKey: signer.PublicKey(), Dir: dir, Bin: bin, cmd: cmd, done: make(chan struct{}),
	}
	go func() { _ = cmd.Wait(); close(tg.done) }()
	t.Cleanup(tg.Stop)
	// Wait for the listener; not a timing assertion, sshd either comes
	// up or the namespace script exits.
	for {
		select {
		case <-tg.done:
			log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			t.Fatalf("sshd target exited: %s\n%s", out.String(), log)
		default:
		}
		// From inside the namespace: a target on its loopback (behind
		// a jump host there) is reachable only from it.
		dial := func() error {
			c, err := net.Dial("tcp", tg.Addr)
			if err == nil {
				c.Close()
			}
			return err
		}
		var err error
		if o.NetNS != "" {
			err = netlab.Do(&netlab.NS{Name: o.NetNS}, dial)
		} else {
			err = dial()
		}
		if err == nil {
			return tg
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newHostKey returns a new ed25519 host key in OpenSSH's PEM format.
func newHostKey(t testing.TB) []byte {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "sshtarget host key")
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(blk)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Calls returns the recorded stand-in invocations in order, as
// "NAME ARGS" lines.
func (tg *Target) Calls() []string {
	b, _ := os.ReadFile(filepath.Join(tg.Dir, "calls"))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Shell runs script with sh inside the target's mount namespace (to look
// at /mnt) and returns its combined output.
func (tg *Target) Shell(t testing.TB, script string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--mount", "--target", strconv.Itoa(tg.cmd.Process.Pid), "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("in target namespace: %q: %v\n%s", script, err, out)
	}
	return string(out)
}

// WriteFile writes a file into the target's Dir (e.g. disk-keys,
// post-kexec-port, never-returns).
func (tg *Target) WriteFile(t testing.TB, name, content string) {
	t.Helper()
	must(t, os.WriteFile(filepath.Join(tg.Dir, name), []byte(content), 0o644))
}

// errProbed ends a handshake once the host key has been seen.
var errProbed = errors.New("host key seen")

// ReplaceHostKey gives the target a new ed25519 host key in place of
// the first one, as if another machine now answered at its address,
// while the sessions already open go on: sshd reloads its keys on
// SIGHUP, and each session is a process of its own. It returns once a
// new connection gets the new key, which HostKey then is.
func (tg *Target) ReplaceHostKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	keyPEM := newHostKey(t)
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	want := signer.PublicKey()
	must(t, os.WriteFile(filepath.Join(tg.Dir, "host_key"), keyPEM, 0o600))
	b, err := os.ReadFile(filepath.Join(tg.Dir, "sshd.pid"))
	must(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	must(t, err)
	must(t, syscall.Kill(pid, syscall.SIGHUP))
	// Not a timing assertion: sshd is back within milliseconds, or the
	// reload failed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got ssh.PublicKey
		cfg := &ssh.ClientConfig{
			User:              "probe",
			HostKeyAlgorithms: []string{want.Type()},
			HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
				got = k
				return errProbed
			},
			Timeout: time.Second,
		}
		if c, err := ssh.Dial("tcp", tg.Addr, cfg); err == nil {
			c.Close()
		}
		if got != nil && bytes.Equal(got.Marshal(), want.Marshal()) {
			tg.HostKey = want
			return want
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(tg.Dir, "sshd.log"))
			t.Fatalf("sshd did not present its new host key within 10s\n%s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills sshd with every connection it serves, as a machine that
// drops off the network, and waits for it to end.
func (tg *Target) Stop() {
	tg.stopOnce.Do(func() {
		os.Remove(filepath.Join(tg.Dir, "next"))
		pids := descendants(tg.cmd.Process.Pid)
		_ = tg.cmd.Process.Kill()
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		<-tg.done
	})
}

// Freeze stops (SIGSTOP) every sshd process of the target, the
// listener and each connection's, as a machine whose kernel hangs with
// its TCP connections open: nothing answers, nothing closes. The
// commands sshd started go on. It returns the function that thaws them
// again, which also runs on t.Cleanup.
func (tg *Target) Freeze(t testing.TB) (thaw func()) {
	t.Helper()
	var frozen []int
	for _, p := range descendants(tg.cmd.Process.Pid) {
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "sshd" {
			continue
		}
		if err := syscall.Kill(p, syscall.SIGSTOP); err == nil {
			frozen = append(frozen, p)
		}
	}
	if len(frozen) == 0 {
		t.Fatal("sshtarget: no sshd process to freeze")
	}
	var once sync.Once
	thaw = func() {
		once.Do(func() {
			for _, p := range frozen {
				_ = syscall.Kill(p, syscall.SIGCONT)
			}
		})
	}
	t.Cleanup(thaw)
	return thaw
}

// descendants lists the processes below pid, so that per-connection
// sshd processes (which leave the process group) die too.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// WriteKexecTarball writes a gzip'd tar like nixos-images' kexec
// installer, whose kexec/run is KexecRunStandIn, and returns its path.
func WriteKexecTarball(t testing.TB, dir string) string {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	files := []struct {
		name, body string
		mode       int64
	}{
		{"kexec/run", "#!/bin/sh\n" + record + KexecRunStandIn, 0o755},
		{"kexec/bzImage", "not a kernel", 0o644},
		{"kexec/initrd", "not an initrd", 0o644},
	}
	must(t, tw.WriteHeader(&tar.Header{Name: "kexec/", Typeflag: tar.TypeDir, Mode: 0o755}))
	for _, f := range files {
		must(t, tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), Typeflag: tar.TypeReg}))
		_, err := tw.Write([]byte(f.body))
		must(t, err)
	}
	must(t, tw.Close())
	must(t, gz.Close())
	p := filepath.Join(dir, "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz")
	must(t, os.WriteFile(p, buf.Bytes(), 0o644))
	return p
}
