package installer_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
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
		wantErr   []string // substrings; nil: success
		wantCalls []string
	}{
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
			name:    "not enough RAM",
			files:   map[string]string{"/proc/meminfo": "MemTotal:         524288 kB\nMemFree: 1 kB\n"},
			wantErr: []string{"target has 512 MiB RAM", "needs at least 1024 MiB"},
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
			o.WaitTimeout = 2 * time.Second
			err := installer.Run(context.Background(), o, &recSink{})
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Run: %v", err)
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

func TestHostKeys(t *testing.T) {
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, _ := ssh.NewPublicKey(other.Public())
	tests := []struct {
		name    string
		opts    func(o *installer.Options, e env)
		wantErr string
	}{
		{name: "pinned key matches", opts: func(o *installer.Options, e env) {}},
		{name: "pinned key differs", opts: func(o *installer.Options, e env) { o.HostKey = otherPub }, wantErr: "host key mismatch"},
		{name: "unknown host refused", opts: func(o *installer.Options, e env) {
			o.HostKey = nil
			o.KnownHostsFile = filepath.Join(t.TempDir(), "none")
		}, wantErr: "not in known_hosts"},
		{name: "unknown host accepted when asked", opts: func(o *installer.Options, e env) {
			o.HostKey = nil
			o.KnownHostsFile = filepath.Join(t.TempDir(), "none")
			o.SSHOptions = map[string]string{"StrictHostKeyChecking": "accept-new"}
		}},
		{name: "known_hosts has another key", opts: func(o *installer.Options, e env) {
			o.HostKey = nil
			kh := filepath.Join(t.TempDir(), "known_hosts")
			line := "[127.0.0.1]:" + strconv.Itoa(e.tg.Port) + " " + string(ssh.MarshalAuthorizedKey(otherPub))
			must(t, os.WriteFile(kh, []byte(line), 0o600))
			o.KnownHostsFile = kh
			o.SSHOptions = map[string]string{"StrictHostKeyChecking": "no"}
		}, wantErr: "differs from known_hosts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{})
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

// blockingDisko signals that it runs, then waits to be killed.
const blockingDisko = `touch "$PXE_TARGET_DIR/disko-running"; exec sleep 600` + "\n"

func waitFile(t *testing.T, p string) {
	t.Helper()
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPhaseFailures(t *testing.T) {
	tests := []struct {
		name     string
		standIns map[string]string
		during   func(t *testing.T, tg *sshtarget.Target, cancel context.CancelFunc)
		wantErr  []string
		phase    string
		code     int
	}{
		{
			name:     "connection dropped during disko",
			standIns: map[string]string{"disko-script": blockingDisko},
			during: func(t *testing.T, tg *sshtarget.Target, _ context.CancelFunc) {
				waitFile(t, filepath.Join(tg.Dir, "disko-running"))
				tg.Stop()
			},
			wantErr: []string{"phase disko failed", "connection to 127.0.0.1:", "lost"},
			phase:   "disko", code: -1,
		},
		{
			name:     "interrupted during disko",
			standIns: map[string]string{"disko-script": blockingDisko},
			during: func(t *testing.T, tg *sshtarget.Target, cancel context.CancelFunc) {
				waitFile(t, filepath.Join(tg.Dir, "disko-running"))
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
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			errc := make(chan error, 1)
			go func() { errc <- installer.Run(ctx, o, &recSink{}) }()
			if tc.during != nil {
				tc.during(t, e.tg, cancel)
			}
			err := <-errc
			var pe *installer.PhaseError
			if !errors.As(err, &pe) || pe.Phase != tc.phase || pe.ExitCode != tc.code {
				t.Fatalf("error %#v: want PhaseError in %s with code %d", err, tc.phase, tc.code)
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
