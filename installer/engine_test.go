package installer_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// recSink records what the engine reports.
type recSink struct {
	mu     sync.Mutex
	events []string
	lines  []string
}

func (s *recSink) PhaseStarted(p string, i, n int) { s.add("start " + p) }
func (s *recSink) PhaseDone(p string, _ time.Duration, err error) {
	if err != nil {
		s.add("failed " + p)
		return
	}
	s.add("done " + p)
}
func (s *recSink) Line(p, stream, l string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, l)
}
func (s *recSink) Progress(string, int64, int64) {}
func (s *recSink) add(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

func clientKey(t *testing.T) (ssh.Signer, []byte) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, ssh.MarshalAuthorizedKey(s.PublicKey())
}

// fakeNix sets up testdata/fake-nix with outputs per built attribute or
// evaluated nix.settings name, and a nix config whose system is this
// machine's (the test target's) own, and returns its path and the file
// its calls go to.
func fakeNix(t *testing.T, outs map[string]string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	for attr, out := range outs {
		if err := os.WriteFile(filepath.Join(dir, "out-"+attr), []byte(out+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.WriteFile(filepath.Join(dir, "config"), []byte("sandbox = true\nsystem = "+hostSystem(t)+"\nextra-platforms = \n"), 0o644))
	t.Setenv("FAKE_NIX_DIR", dir)
	p, err := filepath.Abs("testdata/fake-nix")
	if err != nil {
		t.Fatal(err)
	}
	return p, filepath.Join(dir, "calls")
}

// hostSystem is this machine's Nix system; the test target shares its
// kernel, so the engine's probe sees the same.
func hostSystem(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("uname", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)) + "-linux"
}

func readLines(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

type env struct {
	tg     *sshtarget.Target
	signer ssh.Signer
}

func start(t *testing.T, o sshtarget.Options) env {
	t.Helper()
	s, auth := clientKey(t)
	o.AuthorizedKeys = auth
	return env{tg: sshtarget.Start(t, o), signer: s}
}

func (e env) opts() installer.Options {
	return installer.Options{
		Target:      installer.Target{Host: e.tg.Host, Port: e.tg.Port, User: "root"},
		Signers:     []ssh.Signer{e.signer},
		HostKey:     e.tg.HostKey,
		WaitTimeout: time.Minute,
	}
}

const system = "/nix/store/0000000000000000000000000000000a-nixos-system-web"

func TestFlows(t *testing.T) {
	// A key of this run only, so that no copy left anywhere by another
	// run can pass for it.
	key := []byte("s3cret-disk-key-" + rand.Text())
	keyFile := filepath.Join(t.TempDir(), "disk.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	keySum := fmt.Sprintf("%x", sha256.Sum256(key))
	tests := []struct {
		name      string
		flake     bool
		phases    []string
		after     string
		wantNix   []string
		wantCalls []string
	}{
		{
			name:  "flake",
			flake: true,
			after: "stay",
			wantNix: []string{
				`nix config show --extra-experimental-features nix-command flakes`,
				`nix eval --extra-experimental-features nix-command flakes --json --no-write-lock-file /src/flake#nixosConfigurations."web".config.nix.settings.substituters`,
				`nix eval --extra-experimental-features nix-command flakes --json --no-write-lock-file /src/flake#nixosConfigurations."web".config.nix.settings.trusted-public-keys`,
				`nix build --extra-experimental-features nix-command flakes --print-out-paths --no-link --no-write-lock-file /src/flake#nixosConfigurations."web".config.system.build.diskoScript`,
				`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?compress=true BIN/disko-script`,
				`nix build --extra-experimental-features nix-command flakes --print-out-paths --no-link --no-write-lock-file /src/flake#nixosConfigurations."web".config.system.build.toplevel`,
				`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?remote-store=local%3Froot%3D%2Fmnt&compress=true ` + system,
			},
			wantCalls: []string{"disko-script", "key 600 KEYSUM /run/keys/disk.key", "nixos-install --no-root-passwd --no-channel-copy --system " + system, "umount -Rv /mnt"},
		},
		{
			name:   "store paths, no reboot phase",
			phases: []string{"disko", "install"},
			wantNix: []string{
				`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?compress=true BIN/disko-script`,
				`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?remote-store=local%3Froot%3D%2Fmnt&compress=true ` + system,
			},
			wantCalls: []string{"disko-script", "key 600 KEYSUM /run/keys/disk.key", "nixos-install --no-root-passwd --no-channel-copy --system " + system},
		},
		{
			name:   "only install",
			phases: []string{"install"},
			wantNix: []string{
				`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?remote-store=local%3Froot%3D%2Fmnt&compress=true ` + system,
			},
			wantCalls: []string{"nixos-install --no-root-passwd --no-channel-copy --system " + system},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": sshtarget.DiskoScriptStandIn}})
			e.tg.WriteFile(t, "disk-keys", "/run/keys/disk.key\n")
			disko := filepath.Join(e.tg.Bin, "disko-script")
			nix, nixCalls := fakeNix(t, map[string]string{"diskoScript": disko, "toplevel": system,
				"substituters": `["https://cache.nixos.org/"]`, "trusted-public-keys": `[]`})
			extra := t.TempDir()
			must(t, os.MkdirAll(filepath.Join(extra, "home/alice/.config"), 0o755))
			must(t, os.WriteFile(filepath.Join(extra, "home/alice/.config/app"), []byte("x"), 0o600))
			must(t, os.MkdirAll(filepath.Join(extra, "etc"), 0o755))
			must(t, os.WriteFile(filepath.Join(extra, "etc/motd"), []byte("hi"), 0o644))
			o := e.opts()
			o.LocalNix = nix
			o.Phases = tc.phases
			o.AfterInstall = tc.after
			o.DiskKeys = []installer.KeyFile{{Remote: "/run/keys/disk.key", Local: keyFile}}
			o.ExtraFiles = extra
			o.Chowns = []installer.Chown{{Path: "/home/alice", UID: 1000, GID: 100}}
			if tc.flake {
				o.Flake = "/src/flake#web"
			} else {
				o.StorePaths = &installer.StorePaths{Disko: disko, System: system}
			}
			sink := &recSink{}
			if err := installer.Run(context.Background(), o, sink); err != nil {
				t.Fatalf("Run: %v", err)
			}
			var want []string
			for _, l := range tc.wantNix {
				want = append(want, strings.ReplaceAll(l, "BIN", e.tg.Bin))
			}
			if got := readLines(t, nixCalls); !slices.Equal(got, want) {
				t.Errorf("nix calls:\n got %q\nwant %q", got, want)
			}
			// Each copy reached this target over the pinned key.
			var copied []string
			for _, l := range want {
				if f := strings.Fields(l); f[1] == "copy" {
					copied = append(copied, f[len(f)-1])
				}
			}
			if got := readLines(t, filepath.Join(e.tg.Dir, "received")); !slices.Equal(got, copied) {
				t.Errorf("target received %q, want %q", got, copied)
			}
			want = nil
			for _, c := range tc.wantCalls {
				want = append(want, strings.ReplaceAll(c, "KEYSUM", keySum))
			}
			if got := e.tg.Calls(); !slices.Equal(got, want) {
				t.Errorf("target calls:\n got %q\nwant %q", got, want)
			}
			// The target's /run is its own: the key went there, not here.
			if b, err := os.ReadFile("/run/keys/disk.key"); err == nil && bytes.Equal(b, key) {
				t.Error("the disk key is in this host's /run/keys/disk.key, outside the target")
			}
			phases := tc.phases
			if phases == nil {
				phases = installer.DefaultPhases
			}
			var wantEv []string
			for _, p := range phases {
				wantEv = append(wantEv, "start "+p, "done "+p)
			}
			if !slices.Equal(sink.events, wantEv) {
				t.Errorf("events: got %q want %q", sink.events, wantEv)
			}
			got := e.tg.Shell(t, "cat /mnt/nixos-system; stat -c '%u:%g %a %n' /mnt/home/alice /mnt/home/alice/.config/app /mnt/etc/motd")
			wantFS := system + "\n1000:100 755 /mnt/home/alice\n1000:100 600 /mnt/home/alice/.config/app\n0:0 644 /mnt/etc/motd\n"
			if got != wantFS {
				t.Errorf("/mnt: got\n%s\nwant\n%s", got, wantFS)
			}
			for _, l := range sink.lines {
				if strings.Contains(l, "s3cret") {
					t.Errorf("secret reached the sink: %q", l)
				}
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
