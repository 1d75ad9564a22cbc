package installer_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// kexecTarball writes the test kexec tarball compressed as ext says
// (.tar.gz, .tar.xz, .tar.zst, .tar), with the tools a user would use.
func kexecTarball(t *testing.T, ext string) string {
	t.Helper()
	gz, err := os.Open(sshtarget.WriteKexecTarball(t, t.TempDir()))
	must(t, err)
	defer gz.Close()
	zr, err := gzip.NewReader(gz)
	must(t, err)
	plain, err := io.ReadAll(zr)
	must(t, err)
	p := filepath.Join(t.TempDir(), "nixos-kexec-installer"+ext)
	var comp []string
	switch ext {
	case ".tar.gz":
		comp = []string{"gzip", "-c"}
	case ".tar.xz":
		comp = []string{"xz", "-c"}
	case ".tar.zst":
		comp = []string{"zstd", "-q", "-c"}
	case ".tar":
		must(t, os.WriteFile(p, plain, 0o644))
		return p
	}
	cmd := exec.Command(comp[0], comp[1:]...)
	cmd.Stdin = bytes.NewReader(plain)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", comp[0], err)
	}
	must(t, os.WriteFile(p, out, 0o644))
	return p
}

// The target's own tar unpacks each format nixos-anywhere accepts: GNU
// tar cannot tell the compression on a pipe, so the engine must.
func TestKexecTarballFormats(t *testing.T) {
	for _, ext := range []string{".tar.gz", ".tar.xz", ".tar.zst", ".tar", ".tar.xz as .tar.gz", ".tar.zst as .tar.gz", ".tar as .tar.gz"} {
		t.Run(ext, func(t *testing.T) {
			e := start(t, sshtarget.Options{OSRelease: sshtarget.DebianOSRelease})
			post := sshtarget.FreePort(t)
			e.tg.WriteFile(t, "post-kexec-port", strconv.Itoa(post))
			o := e.opts()
			o.Phases = []string{"kexec"}
			o.PostKexecSSHPort = post
			if real, ok := strings.CutSuffix(ext, " as .tar.gz"); ok {
				// --kexec-download-locally caches every download as
				// sha256-….tar.gz: the content decides.
				o.Kexec = filepath.Join(t.TempDir(), "sha256-0.tar.gz")
				must(t, os.Rename(kexecTarball(t, real), o.Kexec))
			} else {
				o.Kexec = kexecTarball(t, ext)
			}
			o.WaitTimeout = 5 * time.Second
			if err := installer.Run(context.Background(), o, &recSink{}); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := e.tg.Calls(); !slices.Equal(got, []string{"run"}) {
				t.Errorf("calls %q, want the unpacked kexec/run to have run", got)
			}
		})
	}
	// A URL is downloaded on the target, and its name's suffix decides.
	// The curl stand-in serves the file instead of a network; the URL
	// is never fetched.
	for _, ext := range []string{".tar.gz", ".tar.xz", ".tar.zst", ".tar"} {
		t.Run("URL "+ext, func(t *testing.T) {
			curl := `[ "$1" = -fsSL ] && [ $# -eq 2 ] || { echo "curl stand-in: unexpected $*" >&2; exit 2; }
exec cat "$PXE_TARGET_DIR/tarball"` + "\n"
			e := start(t, sshtarget.Options{OSRelease: sshtarget.DebianOSRelease, StandIns: map[string]string{"curl": curl}})
			b, err := os.ReadFile(kexecTarball(t, ext))
			must(t, err)
			must(t, os.WriteFile(filepath.Join(e.tg.Dir, "tarball"), b, 0o644))
			post := sshtarget.FreePort(t)
			e.tg.WriteFile(t, "post-kexec-port", strconv.Itoa(post))
			o := e.opts()
			o.Phases = []string{"kexec"}
			o.PostKexecSSHPort = post
			o.Kexec = "https://images.invalid/nixos-kexec-installer-noninteractive-x86_64-linux" + ext + "?x=1"
			o.WaitTimeout = 5 * time.Second
			if err := installer.Run(context.Background(), o, &recSink{}); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got, want := e.tg.Calls(), []string{"curl -fsSL " + o.Kexec, "run"}; !slices.Equal(got, want) {
				t.Errorf("calls %q, want %q", got, want)
			}
		})
	}
}

// Without --kexec the image is nixos-images' release for the target's
// uname -m, downloaded on the target; other architectures are refused
// before anything is downloaded.
func TestDefaultKexecURL(t *testing.T) {
	tests := []struct {
		arch      string
		wantCalls []string
		wantErr   string
	}{
		{"x86_64", []string{"curl -fsSL https://github.com/nix-community/nixos-images/releases/download/nixos-25.05/nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"}, "phase kexec failed"},
		{"aarch64", []string{"curl -fsSL https://github.com/nix-community/nixos-images/releases/download/nixos-25.05/nixos-kexec-installer-noninteractive-aarch64-linux.tar.gz"}, "phase kexec failed"},
		{"riscv64", nil, `nixos-images has no kexec installer for "riscv64"`},
	}
	for _, tc := range tests {
		t.Run(tc.arch, func(t *testing.T) {
			// Strict: the probe asks uname -s and -m, nothing else; curl
			// records its URL and fails as with no network.
			uname := `case "$*" in -s) echo Linux ;; -m) echo ` + tc.arch + ` ;; *) echo "uname stand-in: unexpected $*" >&2; exit 2 ;; esac` + "\n"
			curl := `echo "curl: (6) Could not resolve host" >&2; exit 6` + "\n"
			e := start(t, sshtarget.Options{OSRelease: sshtarget.DebianOSRelease, StandIns: map[string]string{"uname": uname, "curl": curl}})
			o := e.opts()
			o.Phases = []string{"kexec"}
			err := installer.Run(context.Background(), o, &recSink{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			var got []string
			for _, c := range e.tg.Calls() {
				if strings.HasPrefix(c, "curl ") {
					got = append(got, c)
				}
			}
			if !slices.Equal(got, tc.wantCalls) {
				t.Errorf("downloads %q, want %q", got, tc.wantCalls)
			}
		})
	}
}

// nixos-install finds /mnt/tmp (mode 1777) and NIXOS_NO_CHECK when the
// user set it; the ssh store URL carries compress=true and the user's
// settings as given.
func TestInstallDetails(t *testing.T) {
	yes := "1"
	tests := []struct {
		name      string
		noCheck   *string
		settings  [][2]string
		wantEnv   string
		wantStore string
	}{
		{name: "defaults", wantEnv: "unset", wantStore: "ssh://root@127.0.0.1?remote-store=local%3Froot%3D%2Fmnt&compress=true"},
		{name: "NIXOS_NO_CHECK and store settings", noCheck: &yes, settings: [][2]string{{"max-connections", "4"}, {"remote-program", "%2Frun%2Fcurrent-system%2Fsw%2Fbin%2Fnix-daemon"}},
			wantEnv: "1", wantStore: "ssh://root@127.0.0.1?remote-store=local%3Froot%3D%2Fmnt&compress=true&max-connections=4&remote-program=%2Frun%2Fcurrent-system%2Fsw%2Fbin%2Fnix-daemon"},
		{name: "compress set by the user", settings: [][2]string{{"compress", "false"}},
			wantEnv: "unset", wantStore: "ssh://root@127.0.0.1?remote-store=local%3Froot%3D%2Fmnt&compress=false"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			install := `echo "tmp $(stat -c %a /mnt/tmp) env ${NIXOS_NO_CHECK-unset}" >> "$PXE_TARGET_DIR/calls"` + "\n" + sshtarget.NixosInstallStandIn
			e := start(t, sshtarget.Options{StandIns: map[string]string{"nixos-install": install}})
			nix, nixCalls := fakeNix(t, nil)
			o := e.opts()
			o.LocalNix = nix
			o.Phases = []string{"install"}
			o.StorePaths = &installer.StorePaths{Disko: "/nix/store/unused", System: system}
			o.NixOSNoCheck = tc.noCheck
			o.SSHStoreSettings = tc.settings
			if err := installer.Run(context.Background(), o, &recSink{}); err != nil {
				t.Fatalf("Run: %v", err)
			}
			want := []string{"nixos-install --no-root-passwd --no-channel-copy --system " + system, "tmp 1777 env " + tc.wantEnv}
			if got := e.tg.Calls(); !slices.Equal(got, want) {
				t.Errorf("target calls %q, want %q", got, want)
			}
			wantNix := []string{"nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to " + tc.wantStore + " " + system}
			if got := readLines(t, nixCalls); !slices.Equal(got, wantNix) {
				t.Errorf("nix calls\n got %q\nwant %q", got, wantNix)
			}
		})
	}
}

// Before the reboot a swap on a zvol is turned off and the pools are
// exported; a failed export is reported and the reboot goes on.
func TestRebootExportsPools(t *testing.T) {
	swaps := "Filename\tType\tSize\tUsed\tPriority\n/dev/zd0 partition\t1048572\t0\t-2\n/dev/sda2 partition\t1048572\t0\t-3\n"
	for _, fails := range []bool{false, true} {
		t.Run(map[bool]string{false: "export works", true: "export fails"}[fails], func(t *testing.T) {
			zpool := `[ "$*" = "export -a" ] || { echo "zpool stand-in: unexpected $*" >&2; exit 2; }
[ ! -f "$PXE_TARGET_DIR/zpool-fails" ] || { echo "cannot export 'rpool': pool is busy" >&2; exit 1; }` + "\n"
			swapoff := `[ $# -eq 1 ] || { echo "swapoff stand-in: unexpected $*" >&2; exit 2; }` + "\n"
			e := start(t, sshtarget.Options{StandIns: map[string]string{"zpool": zpool, "swapoff": swapoff}, Files: map[string]string{"/proc/swaps": swaps}})
			if fails {
				e.tg.WriteFile(t, "zpool-fails", "")
			}
			o := e.opts()
			o.Phases = []string{"reboot"}
			o.StorePaths = &installer.StorePaths{Disko: "/nix/store/unused", System: system}
			o.AfterInstall = "stay"
			sink := &recSink{}
			if err := installer.Run(context.Background(), o, sink); err != nil {
				t.Fatalf("Run: %v", err)
			}
			want := []string{"umount -Rv /mnt", "swapoff /dev/zd0", "zpool export -a"}
			if got := e.tg.Calls(); !slices.Equal(got, want) {
				t.Errorf("target calls %q, want %q", got, want)
			}
			reported := slices.ContainsFunc(sink.lines, func(l string) bool { return strings.Contains(l, "zpool export -a failed (exit code 1)") })
			if reported != fails {
				t.Errorf("export failure reported: %v, want %v; lines %q", reported, fails, sink.lines)
			}
		})
	}
}

// The exit code of pxe-anywhere install is the failing command's.
func TestExitCodeIsTheCommands(t *testing.T) {
	e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": `echo "disko: no such disk /dev/vdz" >&2; exit 42` + "\n"}})
	_, err := runDisko(t, e, nil, nil)
	wantPhaseError(t, err, "disko", "exited with code 42")
	if got := installer.ExitCode(err); got != 42 {
		t.Errorf("ExitCode = %d, want 42", got)
	}
}

// A full attribute path is used as given, as nixos-anywhere does, and
// every flake evaluation leaves the lock file alone.
func TestFullAttributePath(t *testing.T) {
	e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": sshtarget.DiskoScriptStandIn}})
	disko := filepath.Join(e.tg.Bin, "disko-script")
	nix, nixCalls := fakeNix(t, map[string]string{"diskoScript": disko, "substituters": `[]`, "trusted-public-keys": `[]`})
	o := e.opts()
	o.LocalNix = nix
	o.Phases = []string{"disko"}
	o.BuildOn = "local"
	o.Flake = "/src/flake#nixosConfigurations.web.config.virtualisation.vmVariant"
	if err := installer.Run(context.Background(), o, &recSink{}); err != nil {
		t.Fatalf("Run: %v", err)
	}
	const attr = "/src/flake#nixosConfigurations.web.config.virtualisation.vmVariant."
	want := []string{
		`nix eval --extra-experimental-features nix-command flakes --json --no-write-lock-file ` + attr + `nix.settings.substituters`,
		`nix eval --extra-experimental-features nix-command flakes --json --no-write-lock-file ` + attr + `nix.settings.trusted-public-keys`,
		`nix build --extra-experimental-features nix-command flakes --print-out-paths --no-link --no-write-lock-file ` + attr + `system.build.diskoScript`,
		`nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?compress=true ` + disko,
	}
	if got := readLines(t, nixCalls); !slices.Equal(got, want) {
		t.Errorf("nix calls\n got %q\nwant %q", got, want)
	}
}

// The machine's hostname goes into the installed system's
// /etc/hostname (mode 644), unless the extra files brought one; a
// hostname that is not one is refused before any phase runs.
func TestHostnameWritten(t *testing.T) {
	tests := []struct {
		name, hostname, extra string // extra: the extra files' /etc/hostname ("": none)
		want, wantLine        string
		wantErr               bool
	}{
		{name: "written", hostname: "node-e2e-0042", want: "node-e2e-0042\n", wantLine: "hostname written to /etc/hostname: node-e2e-0042"},
		{name: "the extra files' kept", hostname: "node-7", extra: "mine\n", want: "mine\n", wantLine: "/etc/hostname of the extra files kept"},
		{name: "not a hostname", hostname: "x;touch /mnt/pwned", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{})
			nix, _ := fakeNix(t, nil)
			o := e.opts()
			o.LocalNix = nix
			o.Phases = []string{"install"}
			o.StorePaths = &installer.StorePaths{Disko: "/nix/store/unused", System: system}
			o.Hostname = tc.hostname
			if tc.extra != "" {
				extra := t.TempDir()
				must(t, os.MkdirAll(filepath.Join(extra, "etc"), 0o755))
				must(t, os.WriteFile(filepath.Join(extra, "etc/hostname"), []byte(tc.extra), 0o644))
				o.ExtraFiles = extra
			}
			sink := &recSink{}
			err := installer.Run(context.Background(), o, sink)
			got := e.tg.Shell(t, `stat -c '%a %U' /mnt/etc/hostname 2>/dev/null && cat /mnt/etc/hostname; ls /mnt`)
			if tc.wantErr {
				// Refused before any phase: nothing ran on the target.
				if err == nil || !strings.Contains(err.Error(), "not an RFC 1123 hostname") || len(e.tg.Calls()) != 0 {
					t.Fatalf("Run: %v, target calls %q; want the hostname refused before any phase", err, e.tg.Calls())
				}
				if strings.Contains(got, "pwned") || strings.Contains(got, "644") {
					t.Fatalf("a refused hostname left files:\n%s", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if want := "644 root\n" + tc.want; !strings.HasPrefix(got, want) {
				t.Errorf("/mnt/etc/hostname: got %q, want %q first", got, want)
			}
			if !slices.Contains(sink.lines, tc.wantLine) {
				t.Errorf("no line %q in %q", tc.wantLine, sink.lines)
			}
		})
	}
}
