package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

func TestSSHOptionForms(t *testing.T) {
	tests := []struct {
		in, key, val, wantErr string
	}{
		{in: "Port=2222", key: "Port", val: "2222"},
		{in: "port 2222", key: "Port", val: "2222"},
		{in: "StrictHostKeyChecking = no", key: "StrictHostKeyChecking", val: "no"},
		{in: "UserKnownHostsFile\t~/kh", key: "UserKnownHostsFile", val: "~/kh"},
		{in: "ProxyJump=admin@jump:2200", key: "ProxyJump", val: "admin@jump:2200"},
		{in: "Compression=yes", wantErr: "does not act on Compression"},
		{in: "ForwardAgent yes", wantErr: "does not act on ForwardAgent"},
		{in: "Port", wantErr: "use KEY=VALUE"},
		{in: "Port=", wantErr: "has no value"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			opts := map[string]string{}
			err := addSSHOption(opts, tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(opts) != 1 || opts[tc.key] != tc.val {
				t.Fatalf("got %q, %v; want %s=%s", opts, err, tc.key, tc.val)
			}
		})
	}
}

// newKey writes an unencrypted ed25519 key in OpenSSH format to path
// (when not "") and returns it with its authorized_keys line.
func newKey(t *testing.T, path string) ([]byte, []byte) {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	priv := pem.EncodeToMemory(blk)
	if path != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, priv, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return priv, ssh.MarshalAuthorizedKey(s.PublicKey())
}

// TestTargetAsOpenSSHResolvesIt runs the install command against a real
// sshd with a HOME of its own: the target and key come from where ssh
// would take them, the host key is trusted on first use and recorded
// where UserKnownHostsFile says (hashed under HashKnownHosts), and the
// second run finds it there.
func TestTargetAsOpenSSHResolvesIt(t *testing.T) {
	netlab.RequireTools(t, "ssh", "ssh-agent", "ssh-add", "ssh-keygen")
	tests := []struct {
		name string
		// setup writes HOME's files and returns the command's arguments
		// and the known_hosts file it must record the key in.
		setup  func(t *testing.T, home string, tg *sshtarget.Target) ([]string, string)
		hashed bool // else as the system's ssh_config says
	}{
		{name: "Host pattern in ~/.ssh/config", hashed: true, setup: func(t *testing.T, home string, tg *sshtarget.Target) ([]string, string) {
			cfg := "Host web-*\n  HostName 127.0.0.1\n  Port " + strconv.Itoa(tg.Port) + "\n  User root\n  IdentityFile ~/.ssh/custom\n  UserKnownHostsFile ~/hosts/kh\n  HashKnownHosts yes\n"
			writeFile(t, filepath.Join(home, ".ssh", "config"), cfg)
			return []string{"web-1"}, filepath.Join(home, "hosts", "kh")
		}},
		{name: "default identity, --ssh-option in the KEY VALUE form", setup: func(t *testing.T, home string, tg *sshtarget.Target) ([]string, string) {
			return []string{"-p", strconv.Itoa(tg.Port), "--ssh-option", "UserKnownHostsFile ~/kh2", "root@127.0.0.1"}, filepath.Join(home, "kh2")
		}},
		{name: "SSH_PRIVATE_KEY", setup: func(t *testing.T, home string, tg *sshtarget.Target) ([]string, string) {
			return []string{"--ssh-option", "Port=" + strconv.Itoa(tg.Port), "root@127.0.0.1"}, filepath.Join(home, ".ssh", "known_hosts")
		}},
		{name: "agent", setup: func(t *testing.T, home string, tg *sshtarget.Target) ([]string, string) {
			return []string{"-p", strconv.Itoa(tg.Port), "root@127.0.0.1"}, filepath.Join(home, ".ssh", "known_hosts")
		}},
	}
	// Debian's /etc/ssh/ssh_config says HashKnownHosts yes: ssh -G
	// applies it, and so do we.
	g, err := exec.Command("ssh", "-G", "example.org").Output()
	if err != nil {
		t.Fatal(err)
	}
	sysHashed := strings.Contains(string(g), "\nhashknownhosts yes\n")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.hashed {
				tc.hashed = sysHashed
			}
			home := t.TempDir()
			t.Setenv("HOME", home)
			t.Setenv("SSH_AUTH_SOCK", "")
			t.Setenv("SSH_PRIVATE_KEY", "")
			var auth []byte
			switch tc.name {
			case "Host pattern in ~/.ssh/config":
				_, auth = newKey(t, filepath.Join(home, ".ssh", "custom"))
				// A default key the server does not know: ssh's own
				// defaults are replaced by IdentityFile, ours too.
				newKey(t, filepath.Join(home, ".ssh", "id_ed25519"))
			case "default identity, --ssh-option in the KEY VALUE form":
				_, auth = newKey(t, filepath.Join(home, ".ssh", "id_ed25519"))
			case "SSH_PRIVATE_KEY":
				var priv []byte
				priv, auth = newKey(t, "")
				t.Setenv("SSH_PRIVATE_KEY", string(priv))
			case "agent":
				keyFile := filepath.Join(t.TempDir(), "agent-key")
				_, auth = newKey(t, keyFile)
				t.Setenv("SSH_AUTH_SOCK", startAgent(t, keyFile))
			}
			tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth})
			args, kh := tc.setup(t, home, tg)
			for run := 1; run <= 2; run++ {
				var out bytes.Buffer
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				// The target is an installer already: kexec is skipped and
				// it stays up for the second run.
				err := runInstall(ctx, append([]string{"--phases", "kexec"}, args...), &out, &out)
				cancel()
				if err != nil {
					t.Fatalf("run %d: %v\n%s", run, err, out.String())
				}
				tofu := strings.Contains(out.String(), "trusting its ssh-ed25519 key "+ssh.FingerprintSHA256(tg.HostKey))
				if tofu != (run == 1) {
					t.Errorf("run %d: trust-on-first-use line printed: %v, want %v\n%s", run, tofu, run == 1, out.String())
				}
			}
			b, err := os.ReadFile(kh)
			if err != nil {
				t.Fatalf("the host key was not recorded in %s: %v", kh, err)
			}
			if strings.HasPrefix(string(b), "|1|") != tc.hashed || strings.Count(string(b), "\n") != 1 {
				t.Errorf("%s (hashed=%v):\n%s", kh, tc.hashed, b)
			}
			host := "[127.0.0.1]:" + strconv.Itoa(tg.Port)
			if out, err := exec.Command("ssh-keygen", "-F", host, "-f", kh).CombinedOutput(); err != nil {
				t.Errorf("ssh-keygen -F %s -f %s: %v\n%s", host, kh, err, out)
			}
		})
	}
}

// startAgent runs a real ssh-agent holding keyFile and returns its socket.
func startAgent(t *testing.T, keyFile string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	cmd := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	for i := 0; ; i++ {
		c := exec.Command("ssh-add", keyFile)
		c.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		out, err := c.CombinedOutput()
		if err == nil {
			return sock
		}
		if i > 100 {
			t.Fatalf("ssh-add: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRefusedOptions: options the command does not act on are refused
// by name, from --ssh-option; ProxyJump, from either place, is refused
// until a jump host is supported.
func TestRefusedOptions(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	err := runInstall(context.Background(), []string{"--ssh-option", "Compression yes", "--phases", "reboot", "h"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "does not act on Compression") {
		t.Errorf("err %v", err)
	}
	writeFile(t, filepath.Join(home, ".ssh", "config"), "Host behind\n  ProxyJump a.example,b.example\nHost nested\n  ProxyJump hop\nHost hop\n  ProxyJump other\n")
	for host, want := range map[string]string{
		"behind": "ProxyJump a.example,b.example: pxe-anywhere reaches a target through one jump host, not a chain",
		"nested": "ProxyJump hop: the jump host has a ProxyJump of its own (other)",
	} {
		err = runInstall(context.Background(), []string{"--phases", "reboot", host}, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", host, err, want)
		}
	}
}

// TestJumpHostFromConfig: ~/.ssh/config names a jump host (itself an
// alias in the config) for a target that only it reaches: the command
// goes through it, trusts both hosts on first use and records both
// keys in the user's known_hosts.
func TestJumpHostFromConfig(t *testing.T) {
	netlab.Require(t, "ip", "ssh")
	lab, clients := netlab.Inherited(t)
	if lab == nil {
		lab = netlab.New(t, "10.119.0.0/24")
		jump := lab.Client("")
		lab.Run(jump, "ip", "addr", "add", "10.119.0.2/24", "dev", "eth0")
		if lab.RunInServer(t, jump) {
			return
		}
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("SSH_PRIVATE_KEY", "")
	_, auth := newKey(t, filepath.Join(home, ".ssh", "id_ed25519"))
	jump := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth, NetNS: clients[0].Name, ListenAddr: "10.119.0.2"})
	tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth, NetNS: clients[0].Name, ListenAddr: "127.0.0.1"})
	writeFile(t, filepath.Join(home, ".ssh", "config"), "Host behind\n  HostName 127.0.0.1\n  Port 2222\n  User root\n  ProxyJump gw\n"+
		"Host gw\n  HostName 10.119.0.2\n  Port 2222\n  User root\n  HashKnownHosts no\n  UserKnownHostsFile ~/kh\n")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := runInstall(ctx, []string{"--phases", "kexec", "behind"}, &out, &out); err != nil {
		t.Fatalf("install: %v\n%s", err, out.String())
	}
	for _, k := range []ssh.PublicKey{jump.HostKey, tg.HostKey} {
		if !strings.Contains(out.String(), "trusting its ssh-ed25519 key "+ssh.FingerprintSHA256(k)) {
			t.Errorf("no trust-on-first-use line for %s:\n%s", ssh.FingerprintSHA256(k), out.String())
		}
	}
	// The target's known_hosts is its own (the default one); the jump
	// host's config does not apply to it.
	for file, host := range map[string]string{filepath.Join(home, ".ssh", "known_hosts"): "[127.0.0.1]:2222", filepath.Join(home, "kh"): "[10.119.0.2]:2222"} {
		if out, err := exec.Command("ssh-keygen", "-F", host, "-f", file).CombinedOutput(); err != nil {
			t.Errorf("ssh-keygen -F %s -f %s: %v\n%s", host, file, err, out)
		}
	}
}

// TestPostKexecPortIs22: a host reached on port 2222 comes back after
// kexec as an installer on port 22, where the command looks for it
// without --post-kexec-ssh-port. The host is a namespace of its own, so
// that its port 22 is the installer's.
func TestPostKexecPortIs22(t *testing.T) {
	netlab.Require(t, "ip", "ssh")
	lab, clients := netlab.Inherited(t)
	if lab == nil {
		lab = netlab.New(t, "10.117.0.0/24")
		host := lab.Client("")
		lab.Run(host, "ip", "addr", "add", "10.117.0.2/24", "dev", "eth0")
		if lab.RunInServer(t, host) {
			return
		}
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	_, auth := newKey(t, filepath.Join(home, ".ssh", "id_ed25519"))
	tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth, OSRelease: sshtarget.DebianOSRelease, NetNS: clients[0].Name, ListenAddr: "10.117.0.2"})
	if tg.Port != 2222 {
		t.Fatalf("target on port %d, want 2222", tg.Port)
	}
	tg.WriteFile(t, "post-kexec-port", "22")
	var out bytes.Buffer
	// Bounded: a command that waits on the old port would wait 10 minutes.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := runInstall(ctx, []string{"--phases", "kexec", "--kexec", sshtarget.WriteKexecTarball(t, t.TempDir()), "-p", "2222", "root@10.117.0.2"}, &out, &out)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "waiting for the installer on 10.117.0.2:22\n") {
		t.Errorf("output:\n%s", out.String())
	}
	if got := tg.Calls(); !slices.Equal(got, []string{"run"}) {
		t.Errorf("target calls %q", got)
	}
}

// FuzzSSHConfigParsers: neither the --ssh-option reader nor the ssh -G
// reader panics on any input, and a value read is never empty.
func FuzzSSHConfigParsers(f *testing.F) {
	f.Add("Port=22", "hostname h\nuser root\nport 22\nidentityfile ~/.ssh/id_ed25519\nproxyjump none\n")
	f.Add("UserKnownHostsFile ~/kh", "userknownhostsfile /root/kh /root/kh2\nport 0\n")
	f.Add(" = ", "port 99999\nhostname\n")
	f.Fuzz(func(t *testing.T, opt, out string) {
		opts := map[string]string{}
		if err := addSSHOption(opts, opt); err == nil {
			for k, v := range opts {
				if k == "" || v == "" {
					t.Fatalf("%q: empty key or value in %q", opt, opts)
				}
			}
		}
		st, err := parseSSHG(strings.NewReader(out), func(p string) string { return p })
		if err == nil && (st.Host == "" || st.User == "" || st.Port <= 0 || st.Port > 65535) {
			t.Fatalf("%q: accepted %+v", out, st)
		}
	})
}
