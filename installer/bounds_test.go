package installer_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// runDisko runs the disko phase with a stand-in disko script and
// returns the error and what the sink got.
func runDisko(t *testing.T, e env, set func(o *installer.Options), during func()) (*recSink, error) {
	t.Helper()
	nix, _ := fakeNix(t, nil)
	o := e.opts()
	o.LocalNix = nix
	o.Phases = []string{"disko"}
	o.StorePaths = &installer.StorePaths{Disko: filepath.Join(e.tg.Bin, "disko-script"), System: system}
	if set != nil {
		set(&o)
	}
	sink := &recSink{}
	errc := make(chan error, 1)
	go func() { errc <- installer.Run(context.Background(), o, sink) }()
	if during != nil {
		during()
	}
	select {
	case err := <-errc:
		return sink, err
	case <-time.After(60 * time.Second):
		// The stand-ins wait 600 s: only the bound under test ends
		// the run this soon.
		t.Fatal("Run did not return within 60s")
		return nil, nil
	}
}

func wantPhaseError(t *testing.T, err error, phase string, says ...string) {
	t.Helper()
	var pe *installer.PhaseError
	if !errors.As(err, &pe) || pe.Phase != phase {
		t.Fatalf("error %v: want a PhaseError in %s", err, phase)
	}
	for _, w := range says {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

func TestPhaseTimeout(t *testing.T) {
	e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": blocking("disko")}})
	_, err := runDisko(t, e, func(o *installer.Options) {
		o.Timeouts = map[string]time.Duration{"disko": 2 * time.Second}
		o.TimeoutHint = func(p string) string { return "raise timeouts." + p }
	}, nil)
	wantPhaseError(t, err, "disko", "phase disko failed", "phase disko timed out after 2s (raise timeouts.disko)")
	var te *installer.TimeoutError
	if !errors.As(err, &te) || te.Phase != "disko" {
		t.Errorf("error %v does not wrap a TimeoutError of disko", err)
	}
	// The hung command is silent: only the guard ends it.
	waitGone(t, e.tg, "disko")
}

func TestKeepaliveNoticesAStoppedTarget(t *testing.T) {
	e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": blocking("disko")}})
	_, err := runDisko(t, e, func(o *installer.Options) {
		o.KeepaliveInterval = 200 * time.Millisecond
		o.KeepaliveCountMax = 3
	}, func() {
		waitFile(t, filepath.Join(e.tg.Dir, "disko-running"))
		e.tg.Freeze(t)
	})
	wantPhaseError(t, err, "disko", "phase disko failed", "target stopped answering", "no answer to 3 SSH keepalives sent 200ms apart")
	if !errors.Is(err, installer.ErrTargetStalled) {
		t.Errorf("error %v does not wrap ErrTargetStalled", err)
	}
}

func TestLongLineIsCut(t *testing.T) {
	// 50 MB without a newline, then a normal line.
	script := `head -c 50000000 /dev/zero | tr '\0' x; echo; echo after-the-long-line` + "\n"
	e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": script}})
	sink, err := runDisko(t, e, func(o *installer.Options) { o.MaxLineBytes = 1000 }, nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := strings.Repeat("x", 1000) + " … [line cut: 49999000 more bytes dropped]"
	var cut, after bool
	for _, l := range sink.lines {
		cut = cut || l == want
		after = after || l == "after-the-long-line"
		if len(l) > 2000 {
			t.Errorf("a line of %d bytes reached the sink", len(l))
		}
	}
	if !cut || !after {
		t.Errorf("lines %.300q: want the cut line %.60q… and the next line", sink.lines, want)
	}
}

func TestEndlessCapturedOutputIsStopped(t *testing.T) {
	facter := `echo $$ > "$PXE_TARGET_DIR/facter-running"; exec yes '{"endless":"report"}'` + "\n"
	e := start(t, sshtarget.Options{StandIns: map[string]string{"nixos-facter": facter, "disko-script": sshtarget.DiskoScriptStandIn}})
	hw := filepath.Join(t.TempDir(), "facter.json")
	_, err := runDisko(t, e, func(o *installer.Options) {
		o.MaxOutputBytes = 1 << 20
		o.GenerateHardwareConfig = "nixos-facter"
		o.HardwareConfigPath = hw
	}, nil)
	wantPhaseError(t, err, "disko", `"nixos-facter"`, "its output exceeds 1048576 bytes: stopped")
	if _, err := os.Stat(hw); !os.IsNotExist(err) {
		t.Errorf("hardware config written from cut output (stat: %v)", err)
	}
	waitGone(t, e.tg, "facter")
}

func TestHardwareConfigContent(t *testing.T) {
	// Strict stand-ins: exactly the arguments the engine must pass.
	const facterJSON = `{"version":1,"system":"x86_64-linux","hardware":{"cpu":[{"vendor_name":"GenuineIntel"}]}}`
	const nixHW = "{ config, lib, ... }:\n{\n  boot.initrd.availableKernelModules = [ \"ahci\" \"nvme\" ];\n}\n"
	tests := []struct {
		name, gen, standIn, want string
	}{
		{"nixos-facter", "nixos-facter", `if [ $# -ne 0 ]; then echo "nixos-facter stand-in: unexpected arguments: $*" >&2; exit 2; fi
printf '%s\n' '` + facterJSON + `'`, facterJSON + "\n"},
		{"nixos-generate-config", "nixos-generate-config", `if [ "$*" != "--no-filesystems --show-hardware-config" ]; then echo "stand-in: unexpected arguments: $*" >&2; exit 2; fi
cat <<'NIX'
` + nixHW + `NIX`, nixHW},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, sshtarget.Options{StandIns: map[string]string{tc.gen: tc.standIn + "\n", "disko-script": sshtarget.DiskoScriptStandIn}})
			hw := filepath.Join(t.TempDir(), "sub", "hardware")
			_, err := runDisko(t, e, func(o *installer.Options) {
				o.GenerateHardwareConfig = tc.gen
				o.HardwareConfigPath = hw
			}, nil)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			got, err := os.ReadFile(hw)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("hardware config:\n%q\nwant\n%q", got, tc.want)
			}
		})
		// As nixos-anywhere: right after kexec, from the installer, also
		// when --phases stops there; in a git work tree the file is
		// added with --intent-to-add so that the flake sees it.
		t.Run(tc.name+" after kexec, in a git work tree", func(t *testing.T) {
			e := start(t, sshtarget.Options{OSRelease: sshtarget.DebianOSRelease, StandIns: map[string]string{tc.gen: tc.standIn + "\n"}})
			post := sshtarget.FreePort(t)
			e.tg.WriteFile(t, "post-kexec-port", strconv.Itoa(post))
			repo := t.TempDir()
			if out, err := exec.Command("git", "init", "-q", repo).CombinedOutput(); err != nil {
				t.Fatalf("git init: %v: %s", err, out)
			}
			hw := filepath.Join(repo, "machines", "web", "hardware")
			o := e.opts()
			o.Phases = []string{"kexec"}
			o.Kexec = sshtarget.WriteKexecTarball(t, t.TempDir())
			o.PostKexecSSHPort = post
			o.WaitTimeout = 5 * time.Second
			o.GenerateHardwareConfig = tc.gen
			o.HardwareConfigPath = hw
			if err := installer.Run(context.Background(), o, &recSink{}); err != nil {
				t.Fatalf("Run: %v", err)
			}
			calls := e.tg.Calls()
			if len(calls) != 2 || calls[0] != "run" || !strings.HasPrefix(calls[1], tc.gen) {
				t.Errorf("target calls %q: want kexec/run, then %s", calls, tc.gen)
			}
			if got, err := os.ReadFile(hw); err != nil || string(got) != tc.want {
				t.Errorf("hardware config %q (%v), want %q", got, err, tc.want)
			}
			out, err := exec.Command("git", "-C", repo, "ls-files", "--", "machines/web/hardware").Output()
			if err != nil || strings.TrimSpace(string(out)) != "machines/web/hardware" {
				t.Errorf("git ls-files: %q (%v): the hardware config is not known to git", out, err)
			}
		})
	}
}

func TestEndlessProbeOutputIsStopped(t *testing.T) {
	// The probe prints what sed finds in /proc/meminfo: a target whose
	// sed never stops printing must not fill the engine's memory.
	sed := `exec yes memkb=1` + "\n"
	e := start(t, sshtarget.Options{StandIns: map[string]string{"sed": sed}})
	_, err := runDisko(t, e, func(o *installer.Options) { o.MaxOutputBytes = 64 << 10 }, nil)
	wantPhaseError(t, err, "probe", `"probe script"`, "its output exceeds 65536 bytes: stopped")
}

// procsWith are the processes of target tg whose command line holds s.
func procsWith(tg *sshtarget.Target, s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(c), s) {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if strings.Contains("\x00"+string(env)+"\x00", "\x00PXE_TARGET_DIR="+tg.Dir+"\x00") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestNixCopyNoticesAStoppedTarget: the ssh that nix copy starts gets
// the keepalive settings, so a target that stalls in the middle of a
// copy fails the phase instead of holding it.
func TestNixCopyNoticesAStoppedTarget(t *testing.T) {
	e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": sshtarget.DiskoScriptStandIn}})
	// The fake nix copy ends by writing to "received" on the target: a
	// FIFO without a reader holds it there.
	fifo := filepath.Join(e.tg.Dir, "received")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	// The remote command outlives the session (nix's ssh runs it
	// unguarded): a reader lets it finish.
	t.Cleanup(func() {
		if f, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			for end := time.Now().Add(10 * time.Second); len(procsWith(e.tg, "received")) > 0 && time.Now().Before(end); {
				io.Copy(io.Discard, f)
				time.Sleep(20 * time.Millisecond)
			}
			f.Close()
		}
	})
	_, err := runDisko(t, e, func(o *installer.Options) {
		o.KeepaliveInterval = time.Second
		o.KeepaliveCountMax = 2
	}, func() {
		waitFor(t, func() bool { return len(procsWith(e.tg, "received")) > 0 })
		e.tg.Freeze(t)
	})
	wantPhaseError(t, err, "disko", "nix copy", "not responding")
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("gave up waiting after 30s")
		}
	}
}
