package installer_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

func TestKexec(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(t *testing.T, tg *sshtarget.Target)
		files     map[string]string
		accept    bool     // AcceptNewHostKeyAfterKexec
		wantErr   []string // substrings; nil: success
		wantCalls []string
		wantLine  string // a substring of a line the sink got
	}{
		{
			name:      "comes back with another host key",
			setup:     newKeyAfterKexec,
			wantErr:   []string{"phase kexec failed", "host key mismatch", "the old system had", "pass --accept-new-host-key-after-kexec"},
			wantCalls: []string{"run --kexec-extra-flags --no-sync"},
		},
		{
			name:      "comes back with another host key, accepted by flag",
			setup:     newKeyAfterKexec,
			accept:    true,
			wantCalls: []string{"run --kexec-extra-flags --no-sync"},
		},
		{
			name:      "comes back as installer on another port",
			wantCalls: []string{"run --kexec-extra-flags --no-sync"},
		},
		{
			name:      "never comes back",
			setup:     func(t *testing.T, tg *sshtarget.Target) { tg.WriteFile(t, "never-returns", "") },
			wantErr:   []string{"phase kexec failed", "did not come back within 2s"},
			wantCalls: []string{"run --kexec-extra-flags --no-sync"},
		},
		{
			name:      "kexec/run fails",
			setup:     func(t *testing.T, tg *sshtarget.Target) { tg.WriteFile(t, "kexec-fails", "") },
			wantErr:   []string{"phase kexec failed", "exited with code 1", "kexec_load failed", "dmesg | tail:"},
			wantCalls: []string{"run --kexec-extra-flags --no-sync"},
		},
		{
			name:      "comes back but refuses our key",
			setup:     func(t *testing.T, tg *sshtarget.Target) { tg.WriteFile(t, "keys-lost", "") },
			wantErr:   []string{"phase kexec failed", "is up but refused our key for root", "unable to authenticate"},
			wantCalls: []string{"run --kexec-extra-flags --no-sync"},
		},
		{
			// A warning, not a refusal: nixos-anywhere's limited-RAM
			// how-to installs 1 GiB machines.
			name:      "little RAM warns and goes on",
			files:     map[string]string{"/proc/meminfo": "MemTotal:         524288 kB\nMemFree: 1 kB\n"},
			wantCalls: []string{"run --kexec-extra-flags --no-sync"},
			wantLine:  "target has 512 MiB RAM, the kexec image",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{OSRelease: sshtarget.DebianOSRelease, Files: tc.files})
			post := sshtarget.FreePort(t)
			e.tg.WriteFile(t, "post-kexec-port", strconv.Itoa(post))
			if tc.setup != nil {
				tc.setup(t, e.tg)
			}
			o := e.opts()
			o.Phases = []string{"kexec"}
			o.Kexec = sshtarget.WriteKexecTarball(t, t.TempDir())
			o.KexecExtraFlags = "--no-sync"
			o.PostKexecSSHPort = post
			o.AcceptNewHostKeyAfterKexec = tc.accept
			o.WaitTimeout = 2 * time.Second
			sink := &recSink{}
			err := installer.Run(context.Background(), o, sink)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Run: %v", err)
			}
			if tc.wantLine != "" && !slices.ContainsFunc(sink.lines, func(l string) bool { return strings.Contains(l, tc.wantLine) }) {
				t.Errorf("no line says %q; lines %q", tc.wantLine, sink.lines)
			}
			for _, w := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not say %q", err, w)
				}
			}
			if got := e.tg.Calls(); !slices.Equal(got, tc.wantCalls) {
				t.Errorf("calls: got %q want %q", got, tc.wantCalls)
			}
		})
	}
}

// newKeyAfterKexec makes the installer that kexec starts present a host
// key of its own, as an image that does not keep the old ones would.
func newKeyAfterKexec(t *testing.T, tg *sshtarget.Target) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	blk, err := ssh.MarshalPrivateKey(k, "")
	must(t, err)
	tg.WriteFile(t, "new-host-key", string(pem.EncodeToMemory(blk)))
}

// A host logged into as another user is kexec'd into an installer that
// has only root: the engine, and the ssh that nix copy starts, must log
// in as root from then on. The user is an alias of uid 0 because the
// stand-ins cannot gain root through sudo.
func TestKexecLogsInAsRoot(t *testing.T) {
	passwd, err := os.ReadFile("/etc/passwd")
	must(t, err)
	e := start(t, sshtarget.Options{
		OSRelease: sshtarget.DebianOSRelease,
		StandIns:  map[string]string{"disko-script": sshtarget.DiskoScriptStandIn},
		Files:     map[string]string{"/etc/passwd": string(passwd) + "ubuntu:x:0:0:ubuntu:/root:/bin/sh\n"},
	})
	post := sshtarget.FreePort(t)
	e.tg.WriteFile(t, "post-kexec-port", strconv.Itoa(post))
	nix, nixCalls := fakeNix(t, nil)
	o := e.opts()
	o.Target.User = "ubuntu"
	o.LocalNix = nix
	o.Phases = []string{"kexec", "disko"}
	o.Kexec = sshtarget.WriteKexecTarball(t, t.TempDir())
	o.PostKexecSSHPort = post
	o.StorePaths = &installer.StorePaths{Disko: filepath.Join(e.tg.Bin, "disko-script"), System: system}
	o.WaitTimeout = 5 * time.Second
	if err := installer.Run(context.Background(), o, &recSink{}); err != nil {
		t.Fatalf("Run: %v", err)
	}
	wantNix := []string{`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?compress=true ` + o.StorePaths.Disko}
	if got := readLines(t, nixCalls); !slices.Equal(got, wantNix) {
		t.Errorf("nix calls:\n got %q\nwant %q", got, wantNix)
	}
	if got, want := e.tg.Calls(), []string{"run", "disko-script"}; !slices.Equal(got, want) {
		t.Errorf("target calls: got %q want %q", got, want)
	}
}

func TestHostKeys(t *testing.T) {
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, _ := ssh.NewPublicKey(other.Public())
	tests := []struct {
		name    string
		rsa     bool // the target also has an RSA host key
		opts    func(o *installer.Options, e env)
		wantErr string
	}{
		{name: "pinned key matches", opts: func(o *installer.Options, e env) {}},
		{name: "pinned key matches, the host also has an RSA key", rsa: true, opts: func(o *installer.Options, e env) {}},
		{name: "pinned key differs", opts: func(o *installer.Options, e env) { o.HostKey = otherPub }, wantErr: "host key mismatch"},
		{name: "unknown host refused under StrictHostKeyChecking=yes", opts: func(o *installer.Options, e env) {
			o.HostKey = nil
			o.KnownHostsFile = filepath.Join(t.TempDir(), "none")
			o.SSHOptions = map[string]string{"StrictHostKeyChecking": "yes"}
		}, wantErr: "is not in"},
		{name: "unknown host accepted when asked", opts: func(o *installer.Options, e env) {
			o.HostKey = nil
			o.KnownHostsFile = filepath.Join(t.TempDir(), "none")
			o.SSHOptions = map[string]string{"StrictHostKeyChecking": "accept-new"}
		}},
		{name: "known_hosts has the ed25519 key, the host also has an RSA key", rsa: true, opts: func(o *installer.Options, e env) {
			kh := filepath.Join(t.TempDir(), "known_hosts")
			line := "[127.0.0.1]:" + strconv.Itoa(e.tg.Port) + " " + string(ssh.MarshalAuthorizedKey(o.HostKey))
			must(t, os.WriteFile(kh, []byte(line), 0o600))
			o.HostKey = nil
			o.KnownHostsFile = kh
		}},
		{name: "known_hosts has another key", opts: func(o *installer.Options, e env) {
			o.HostKey = nil
			kh := filepath.Join(t.TempDir(), "known_hosts")
			line := "[127.0.0.1]:" + strconv.Itoa(e.tg.Port) + " " + string(ssh.MarshalAuthorizedKey(otherPub))
			must(t, os.WriteFile(kh, []byte(line), 0o600))
			o.KnownHostsFile = kh
		}, wantErr: "differs from known_hosts ("},
		{name: "known_hosts has another key, both fingerprints shown", opts: func(o *installer.Options, e env) {
			o.HostKey = nil
			kh := filepath.Join(t.TempDir(), "known_hosts")
			line := "[127.0.0.1]:" + strconv.Itoa(e.tg.Port) + " " + string(ssh.MarshalAuthorizedKey(otherPub))
			must(t, os.WriteFile(kh, []byte(line), 0o600))
			o.KnownHostsFile = kh
		}, wantErr: ssh.FingerprintSHA256(otherPub)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{RSAHostKey: tc.rsa})
			o := e.opts()
			o.Phases = []string{"reboot"}
			o.AfterInstall = "stay"
			tc.opts(&o, e)
			err := installer.Run(context.Background(), o, &recSink{})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				return
			}
			if !errors.Is(err, installer.ErrHostKeyMismatch) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v: want ErrHostKeyMismatch saying %q", err, tc.wantErr)
			}
			if c := e.tg.Calls(); len(c) != 0 {
				t.Errorf("commands ran on a refused host: %q", c)
			}
		})
	}
}

// TestCopyHoldsTheHostKey: the ssh that nix copy starts must accept
// only the host key the engine verified, not whatever answers at the
// address. The target's key changes after the engine has logged in and
// before the closure is copied (while the hardware config is read), as
// when another machine takes the address: the copy must be refused by
// ssh, the phase fail there, and the target receive nothing.
func TestCopyHoldsTheHostKey(t *testing.T) {
	// The stand-in holds the install phase between the engine's login
	// and the copy until the test lets it go on.
	facter := `echo $$ > "$PXE_TARGET_DIR/facter-running"
while [ ! -f "$PXE_TARGET_DIR/go-on" ]; do sleep 0.05; done
echo '{}'
`
	tests := []struct {
		name    string
		replace bool
	}{
		{name: "same host key: the closure arrives"},
		{name: "host key replaced: the copy is refused", replace: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{StandIns: map[string]string{"nixos-facter": facter}})
			nix, nixCalls := fakeNix(t, nil)
			o := e.opts()
			o.LocalNix = nix
			o.Phases = []string{"install"}
			o.StorePaths = &installer.StorePaths{Disko: filepath.Join(e.tg.Bin, "disko-script"), System: system}
			o.GenerateHardwareConfig = "nixos-facter"
			o.HardwareConfigPath = filepath.Join(t.TempDir(), "facter.json")
			errc := make(chan error, 1)
			go func() { errc <- installer.Run(context.Background(), o, &recSink{}) }()
			for {
				if _, err := os.Stat(filepath.Join(e.tg.Dir, "facter-running")); err == nil {
					break
				}
				select {
				case err := <-errc:
					t.Fatalf("Run ended before the hardware config: %v", err)
				case <-time.After(20 * time.Millisecond):
				}
			}
			if tc.replace {
				e.tg.ReplaceHostKey(t)
			}
			e.tg.WriteFile(t, "go-on", "")
			var err error
			select {
			case err = <-errc:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return within 30s")
			}
			// The copy was tried either way: a refusal must come from it.
			wantNix := []string{`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?remote-store=local%3Froot%3D%2Fmnt&compress=true ` + system}
			if got := readLines(t, nixCalls); !slices.Equal(got, wantNix) {
				t.Errorf("nix calls:\n got %q\nwant %q", got, wantNix)
			}
			received := readLines(t, filepath.Join(e.tg.Dir, "received"))
			if !tc.replace {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if !slices.Equal(received, []string{system}) {
					t.Fatalf("target received %q, want the system", received)
				}
				return
			}
			if len(received) != 0 {
				t.Errorf("a host with another key received %q", received)
			}
			if c := e.tg.Calls(); !slices.Equal(c, []string{"nixos-facter"}) {
				t.Errorf("target calls %q, want only the hardware config", c)
			}
			var pe *installer.PhaseError
			if !errors.As(err, &pe) || pe.Phase != "install" || !strings.Contains(pe.Command, " copy ") {
				t.Fatalf("error %v: want the install phase's nix copy to fail", err)
			}
			for _, w := range []string{"REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
		})
	}
}

// blocking is a stand-in that leaves its pid in NAME-running, then
// waits silently to be killed.
func blocking(name string) string {
	return `echo $$ > "$PXE_TARGET_DIR/` + name + `-running"; exec sleep 600` + "\n"
}

// chatty is blocking, but prints a line every 100ms, as disko and nix
// do: sshd refuses to signal a root session, so writing to the closed
// connection is what ends a remote command after an interrupt.
func chatty(name string) string {
	return `echo $$ > "$PXE_TARGET_DIR/` + name + `-running"; while :; do echo working; sleep 0.1; done` + "\n"
}

func waitFile(t *testing.T, p string) {
	t.Helper()
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitGone waits until the stand-in NAME of tg no longer runs.
func waitGone(t *testing.T, tg *sshtarget.Target, name string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(tg.Dir, name+"-running"))
	must(t, err)
	proc := "/proc/" + strings.TrimSpace(string(b))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(proc); os.IsNotExist(err) {
			return
		}
	}
	t.Errorf("%s still runs on the target 10s after the interrupt", name)
}

func TestPhaseFailures(t *testing.T) {
	tests := []struct {
		name     string
		standIns map[string]string
		set      func(o *installer.Options)
		during   func(t *testing.T, tg *sshtarget.Target, cancel context.CancelFunc)
		stopped  string // a stand-in that must have been stopped
		wantErr  []string
		phase    string
		code     int
	}{
		{
			name:     "connection dropped during disko",
			standIns: map[string]string{"disko-script": blocking("disko")},
			during: func(t *testing.T, tg *sshtarget.Target, _ context.CancelFunc) {
				waitFile(t, filepath.Join(tg.Dir, "disko-running"))
				tg.Stop()
			},
			wantErr: []string{"phase disko failed", "connection to 127.0.0.1:", "lost"},
			phase:   "disko", code: -1,
		},
		{
			name:     "interrupted during disko",
			standIns: map[string]string{"disko-script": blocking("disko")},
			during: func(t *testing.T, tg *sshtarget.Target, cancel context.CancelFunc) {
				waitFile(t, filepath.Join(tg.Dir, "disko-running"))
				cancel()
			},
			stopped: "disko", // silent: the guard, not a write, ends it
			wantErr: []string{"interrupted during disko"},
			phase:   "disko", code: -1,
		},
		{
			name:     "interrupted during disko that prints: it ends",
			standIns: map[string]string{"disko-script": chatty("disko")},
			during: func(t *testing.T, tg *sshtarget.Target, cancel context.CancelFunc) {
				waitFile(t, filepath.Join(tg.Dir, "disko-running"))
				cancel()
			},
			stopped: "disko",
			wantErr: []string{"interrupted during disko"},
			phase:   "disko", code: -1,
		},
		{
			// The hardware config is captured, not streamed: the same
			// interrupt must stop it.
			name:     "interrupted while reading the hardware config",
			standIns: map[string]string{"nixos-facter": blocking("facter")},
			set: func(o *installer.Options) {
				o.GenerateHardwareConfig = "nixos-facter"
				o.HardwareConfigPath = filepath.Join(t.TempDir(), "facter.json")
			},
			during: func(t *testing.T, tg *sshtarget.Target, cancel context.CancelFunc) {
				waitFile(t, filepath.Join(tg.Dir, "facter-running"))
				cancel()
			},
			wantErr: []string{"interrupted during disko"},
			phase:   "disko", code: -1,
		},
		{
			name: "nixos-install fails, no reboot",
			standIns: map[string]string{
				"disko-script":  sshtarget.DiskoScriptStandIn,
				"nixos-install": `echo "error: bootloader install failed" >&2; exit 1` + "\n",
			},
			wantErr: []string{"phase install failed", `"nixos-install --no-root-passwd --no-channel-copy --system ` + system + `" exited with code 1`, "bootloader install failed"},
			phase:   "install", code: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{StandIns: tc.standIns})
			nix, _ := fakeNix(t, nil)
			o := e.opts()
			o.LocalNix = nix
			o.Phases = []string{"disko", "install", "reboot"}
			o.StorePaths = &installer.StorePaths{Disko: filepath.Join(e.tg.Bin, "disko-script"), System: system}
			if tc.set != nil {
				tc.set(&o)
			}
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			errc := make(chan error, 1)
			go func() { errc <- installer.Run(ctx, o, &recSink{}) }()
			if tc.during != nil {
				tc.during(t, e.tg, cancel)
			}
			var err error
			select {
			case err = <-errc:
			case <-time.After(30 * time.Second):
				// The stand-ins sleep for 600s: only a stopped command
				// ends this soon.
				t.Fatal("Run did not return within 30s")
			}
			if tc.stopped != "" {
				waitGone(t, e.tg, tc.stopped)
			}
			var pe *installer.PhaseError
			if !errors.As(err, &pe) || pe.Phase != tc.phase || pe.ExitCode != tc.code {
				t.Fatalf("error %#v: want PhaseError in %s with code %d", err, tc.phase, tc.code)
			}
			// What pxe-anywhere install exits with: the command's code,
			// as nixos-anywhere; 1 when no command failed.
			wantExit := tc.code
			if wantExit <= 0 {
				wantExit = 1
			}
			if got := installer.ExitCode(err); got != wantExit {
				t.Errorf("ExitCode = %d, want %d", got, wantExit)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, c := range e.tg.Calls() {
				if strings.HasPrefix(c, "reboot") || strings.HasPrefix(c, "umount") {
					t.Errorf("failed install went on to %q", c)
				}
			}
		})
	}
}

func TestCheckSSH(t *testing.T) {
	// The RSA key makes a client that does not ask for the pinned key's
	// type get the wrong one.
	e := start(t, sshtarget.Options{RSAHostKey: true})
	stranger, _ := clientKey(t)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, _ := ssh.NewPublicKey(other.Public())
	here := installer.Target{Host: e.tg.Host, Port: e.tg.Port}
	tests := []struct {
		name    string
		target  installer.Target
		signer  ssh.Signer
		hostKey ssh.PublicKey
		want    error // nil, or the sentinel the error wraps
		down    bool  // an error that is neither sentinel
	}{
		{name: "ready", target: here, signer: e.signer, hostKey: e.tg.HostKey},
		{name: "another host key", target: here, signer: e.signer, hostKey: otherPub, want: installer.ErrHostKeyMismatch},
		{name: "our host key, login refused", target: here, signer: stranger, hostKey: e.tg.HostKey, want: installer.ErrAuthRefused},
		{name: "nothing listening", target: installer.Target{Host: e.tg.Host, Port: sshtarget.FreePort(t)}, signer: e.signer, hostKey: e.tg.HostKey, down: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := installer.CheckSSH(context.Background(), tc.target, []ssh.Signer{tc.signer}, tc.hostKey)
			switch {
			case tc.down:
				if err == nil || errors.Is(err, installer.ErrHostKeyMismatch) || errors.Is(err, installer.ErrAuthRefused) {
					t.Fatalf("error %v: want one that says nothing answers", err)
				}
			case tc.want == nil:
				if err != nil {
					t.Fatalf("CheckSSH: %v", err)
				}
			case !errors.Is(err, tc.want):
				t.Fatalf("error %v: want %v", err, tc.want)
			}
		})
	}
}

// A host missing from known_hosts is trusted on first use: its
// fingerprint is printed and the key recorded where KnownHostsFile
// says, hashed under HashKnownHosts=yes; the next run accepts it from
// there. A changed key under StrictHostKeyChecking=no goes on with a
// warning naming both fingerprints.
func TestHostKeyTrustOnFirstUse(t *testing.T) {
	for _, hashed := range []bool{false, true} {
		t.Run(fmt.Sprintf("hashed=%v", hashed), func(t *testing.T) {
			e := start(t, sshtarget.Options{RSAHostKey: true})
			o := e.opts()
			o.HostKey = nil
			o.KnownHostsFile = filepath.Join(t.TempDir(), "ssh", "known_hosts")
			if hashed {
				o.SSHOptions = map[string]string{"HashKnownHosts": "yes"}
			}
			o.Phases = []string{"reboot"}
			o.AfterInstall = "stay"
			sink := &recSink{}
			if err := installer.Run(context.Background(), o, sink); err != nil {
				t.Fatalf("Run: %v", err)
			}
			fp := ssh.FingerprintSHA256(e.tg.HostKey)
			if !slices.ContainsFunc(sink.lines, func(l string) bool { return strings.Contains(l, "trusting its") && strings.Contains(l, fp) }) {
				t.Errorf("no trust-on-first-use line with %s in %q", fp, sink.lines)
			}
			b, err := os.ReadFile(o.KnownHostsFile)
			must(t, err)
			host := "[127.0.0.1]:" + strconv.Itoa(e.tg.Port)
			if hashed == strings.Contains(string(b), host) || hashed != strings.HasPrefix(string(b), "|1|") {
				t.Errorf("known_hosts (hashed=%v):\n%s", hashed, b)
			}
			// ssh itself accepts the recorded line for this host.
			out, err := exec.Command("ssh-keygen", "-F", host, "-f", o.KnownHostsFile).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "found") {
				t.Errorf("ssh-keygen -F %s: %v\n%s", host, err, out)
			}
			// Recorded: a second run with StrictHostKeyChecking=yes passes.
			o.SSHOptions = map[string]string{"StrictHostKeyChecking": "yes"}
			if err := installer.Run(context.Background(), o, &recSink{}); err != nil {
				t.Fatalf("second Run: %v", err)
			}
		})
	}
	t.Run("changed key, StrictHostKeyChecking=no", func(t *testing.T) {
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		otherPub, _ := ssh.NewPublicKey(other.Public())
		e := start(t, sshtarget.Options{})
		o := e.opts()
		o.HostKey = nil
		o.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
		line := "[127.0.0.1]:" + strconv.Itoa(e.tg.Port) + " " + string(ssh.MarshalAuthorizedKey(otherPub))
		must(t, os.WriteFile(o.KnownHostsFile, []byte(line), 0o600))
		o.SSHOptions = map[string]string{"StrictHostKeyChecking": "no"}
		o.Phases = []string{"reboot"}
		o.AfterInstall = "stay"
		sink := &recSink{}
		if err := installer.Run(context.Background(), o, sink); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if !slices.ContainsFunc(sink.lines, func(l string) bool {
			return strings.HasPrefix(l, "warning:") && strings.Contains(l, ssh.FingerprintSHA256(otherPub)) && strings.Contains(l, ssh.FingerprintSHA256(e.tg.HostKey))
		}) {
			t.Errorf("no warning with both fingerprints in %q", sink.lines)
		}
		if b, _ := os.ReadFile(o.KnownHostsFile); string(b) != line {
			t.Errorf("known_hosts changed under StrictHostKeyChecking=no:\n%s", b)
		}
	})
}
