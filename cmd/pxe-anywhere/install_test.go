package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseInstallArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, a *installArgs)
	}{
		{name: "flake and target", args: []string{"--flake", ".#web", "admin@10.0.0.5", "-p", "2222"}, check: func(t *testing.T, a *installArgs) {
			if a.opts.Flake != ".#web" || a.opts.Target.User != "admin" || a.opts.Target.Host != "10.0.0.5" || a.opts.Target.Port != 2222 {
				t.Errorf("got %+v", a.opts)
			}
		}},
		{name: "equals form and two-arg flags", args: []string{"--flake=.#web", "--disk-encryption-keys", "/tmp/k", "/dev/fd/63", "--chown", "/home/a", "1000:100", "--option", "cores", "4", "h"}, check: func(t *testing.T, a *installArgs) {
			if len(a.opts.DiskKeys) != 1 || a.opts.DiskKeys[0].Local != "/dev/fd/63" || a.opts.Chowns[0].UID != 1000 || a.opts.NixOptions[0] != [2]string{"cores", "4"} {
				t.Errorf("got %+v", a.opts)
			}
		}},
		{name: "no-reboot", args: []string{"-f", ".#a", "--no-reboot", "h"}, check: func(t *testing.T, a *installArgs) {
			if !slices.Equal(a.opts.Phases, []string{"kexec", "disko", "install"}) {
				t.Errorf("phases %q", a.opts.Phases)
			}
		}},
		{name: "stop-after-disko", args: []string{"-f", ".#a", "--stop-after-disko", "h"}, check: func(t *testing.T, a *installArgs) {
			if !slices.Equal(a.opts.Phases, []string{"kexec", "disko"}) {
				t.Errorf("phases %q", a.opts.Phases)
			}
		}},
		{name: "build-on-remote", args: []string{"-f", ".#a", "--build-on-remote", "h"}, check: func(t *testing.T, a *installArgs) {
			if a.opts.BuildOn != "remote" {
				t.Errorf("build-on %q", a.opts.BuildOn)
			}
		}},
		{name: "substituter flags", args: []string{"-f", ".#a", "--no-use-machine-substituters", "--build-on", "auto", "h"}, check: func(t *testing.T, a *installArgs) {
			if !a.opts.NoUseMachineSubstituters || a.opts.NoSubstituteOnDestination || a.opts.BuildOn != "auto" {
				t.Errorf("got %+v", a.opts)
			}
		}},
		{name: "download locally, scheme in capitals", args: []string{"-f", ".#a", "--kexec-download-locally", "--kexec", "HTTPS://example.org/k.tar.gz", "h"}, check: func(t *testing.T, a *installArgs) {
			if !a.downloadKexec || a.opts.Kexec != "HTTPS://example.org/k.tar.gz" {
				t.Errorf("got %+v", a)
			}
		}},
		{name: "download locally needs a URL", args: []string{"-f", ".#a", "--kexec-download-locally", "--kexec", "/tmp/k.tar.gz", "h"}, wantErr: "needs --kexec URL"},
		{name: "timeouts and keepalives", args: []string{"-f", ".#a", "--phase-timeout", "disko=45m", "--phase-timeout=probe=1m", "--ssh-option", "ServerAliveInterval=5", "--ssh-option", "ServerAliveCountMax=2", "h"}, check: func(t *testing.T, a *installArgs) {
			o := a.opts
			if o.Timeouts["disko"] != 45*time.Minute || o.Timeouts["probe"] != time.Minute || len(o.Timeouts) != 2 || o.KeepaliveInterval != 5*time.Second || o.KeepaliveCountMax != 2 {
				t.Errorf("timeouts %v, keepalive %s x %d", o.Timeouts, o.KeepaliveInterval, o.KeepaliveCountMax)
			}
			if h := o.TimeoutHint("disko"); h != "raise it with --phase-timeout disko=DURATION" {
				t.Errorf("hint %q", h)
			}
		}},
		{name: "unknown phase timeout", args: []string{"-f", ".#a", "--phase-timeout", "format=1h", "h"}, wantErr: "PHASE one of probe, kexec, disko, install, reboot"},
		{name: "bad phase timeout", args: []string{"-f", ".#a", "--phase-timeout", "disko=soon", "h"}, wantErr: `bad duration "soon"`},
		{name: "bad keepalive", args: []string{"-f", ".#a", "--ssh-option", "ServerAliveInterval=0", "h"}, wantErr: "ServerAliveInterval=0: want a whole number of at least 1"},
		{name: "unknown flag", args: []string{"--flak", ".#a", "h"}, wantErr: "unknown flag"},
		{name: "missing target", args: []string{"-f", ".#a"}, wantErr: "no target host"},
		{name: "flake without name", args: []string{"-f", ".", "h"}, wantErr: "FLAKE#NAME"},
		{name: "flake and store paths", args: []string{"-f", ".#a", "-s", "/nix/store/a", "/nix/store/b", "h"}, wantErr: "exclude each other"},
		{name: "missing second argument", args: []string{"--chown", "/x"}, wantErr: "needs 2 argument"},
		{name: "bad chown", args: []string{"--chown", "/x", "alice", "h"}, wantErr: "UID:GID"},
		{name: "switch given a value", args: []string{"-f", ".#a", "--debug=false", "h"}, wantErr: "--debug takes no value"},
		{name: "another switch given a value", args: []string{"-f", ".#a", "--print-build-logs=0", "h"}, wantErr: "--print-build-logs takes no value"},
		{name: "full attribute path", args: []string{"-f", ".#nixosConfigurations.x.config.virtualisation.vmVariant", "h"}, check: func(t *testing.T, a *installArgs) {
			if a.opts.Flake != ".#nixosConfigurations.x.config.virtualisation.vmVariant" {
				t.Errorf("flake %q", a.opts.Flake)
			}
		}},
		{name: "disko mode with store paths", args: []string{"-s", "/nix/store/a", "/nix/store/b", "--disko-mode", "mount", "h"}, wantErr: "--disko-mode cannot be used with --store-paths"},
		{name: "vm-test needs no target", args: []string{"--vm-test", "-f", ".#a"}, check: func(t *testing.T, a *installArgs) {
			if !a.vmTest {
				t.Error("vmTest not set")
			}
		}},
		{name: "vm-test with store paths", args: []string{"--vm-test", "-s", "/nix/store/a", "/nix/store/b"}, wantErr: "--vm-test is not supported with --store-paths"},
		{name: "vm-test building remotely", args: []string{"--vm-test", "-f", ".#a", "--build-on", "remote"}, wantErr: "--vm-test is not supported with --build-on remote"},
		{name: "vm-test, deprecated remote flag", args: []string{"--vm-test", "-f", ".#a", "--build-on-remote"}, wantErr: "--vm-test is not supported with --build-on remote"},
		{name: "vm-test with extra files", args: []string{"--vm-test", "-f", ".#a", "--extra-files", "/tmp/x"}, wantErr: "--vm-test is not supported with --extra-files"},
		{name: "vm-test with disk keys", args: []string{"--vm-test", "-f", ".#a", "--disk-encryption-keys", "/r", "/l"}, wantErr: "--vm-test is not supported with --disk-encryption-keys"},
		{name: "vm-test with hardware config", args: []string{"--vm-test", "-f", ".#a", "--generate-hardware-config", "nixos-facter", "f.json"}, wantErr: "--vm-test is not supported with --generate-hardware-config"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := parseInstallArgs(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, a)
		})
	}
}

// TestHelpIsTheTable checks that --help and the parser cannot drift:
// every name and argument of every table row is in --help, and every
// flag that --help shows is one the parser takes, with as many
// arguments as --help shows.
func TestHelpIsTheTable(t *testing.T) {
	var out bytes.Buffer
	if err := runInstall(context.Background(), []string{"--help"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	shown := map[string]int{} // flag → arguments shown after it
	for _, l := range strings.Split(help, "\n") {
		if !strings.HasPrefix(l, "  -") {
			continue
		}
		fields := strings.Fields(l)
		var names []string
		nargs := 0
		for _, f := range fields {
			switch {
			case strings.HasPrefix(f, "-"):
				names = append(names, strings.TrimSuffix(f, ","))
				continue
			case strings.HasPrefix(f, "<"):
				nargs++
				continue
			}
			break
		}
		for _, n := range names {
			shown[n] = nargs
		}
	}
	for _, f := range installFlags {
		for _, n := range f.names {
			got, ok := shown[n]
			if !ok {
				t.Errorf("flag %s is parsed but not in --help", n)
			} else if got != len(f.args) {
				t.Errorf("--help shows %d argument(s) for %s, the parser reads %d", got, n, len(f.args))
			}
		}
		if f.help == "" {
			t.Errorf("flag %v has no help text", f.names)
		}
	}
	for n, nargs := range shown {
		f := lookupInstallFlag(n)
		if f == nil {
			t.Errorf("--help shows %s, which the parser does not take", n)
			continue
		}
		if nargs != len(f.args) {
			t.Errorf("%s: --help shows %d argument(s), the parser reads %d", n, nargs, len(f.args))
		}
	}
	// Each flag as --help shows it parses: the names and argument
	// count of the table are what the parser uses.
	for _, f := range installFlags {
		for _, n := range f.names {
			args := []string{n}
			for range f.args {
				args = append(args, "1")
			}
			_, err := parseInstallArgs(append(args, "h"))
			// Other errors (a value "1" that is not a path, say) are
			// the flag's own checks, past the table lookup.
			if err != nil && (strings.Contains(err.Error(), "unknown flag") || strings.Contains(err.Error(), "argument(s)") || strings.Contains(err.Error(), "takes no value")) {
				t.Errorf("%v: %v", args, err)
			}
		}
	}
}

// TestStorePathsResolvedFirst: -s links are followed here, and a missing
// path stops the install before any connection is tried.
func TestStorePathsResolvedFirst(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "system")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "result")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveStorePath(link); err != nil || got != real {
		t.Fatalf("resolveStorePath(%s) = %q, %v; want %q", link, got, err, real)
	}
	// A listener that records any connection: none must come.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			conns <- struct{}{}
			c.Close()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	var out bytes.Buffer
	err = runInstall(context.Background(), []string{"-s", filepath.Join(dir, "missing-disko"), link, "-p", port, "root@127.0.0.1"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "--store-paths "+filepath.Join(dir, "missing-disko")) {
		t.Fatalf("err = %v, want the missing store path named", err)
	}
	select {
	case <-conns:
		t.Error("the target was contacted before the store paths were checked")
	default:
	}
}

func FuzzParseArgs(f *testing.F) {
	f.Add("--flake .#web root@host")
	f.Add("--chown /a 1:2 --option x y h")
	f.Add("--phases=kexec,disko -p 22 h")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = parseInstallArgs(strings.Fields(s))
	})
}

func TestKexecDownloadLocally(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	body := []byte("pretend tarball")
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	var errs bytes.Buffer
	for i := 0; i < 2; i++ {
		p, err := fetchKexecLocally(context.Background(), srv.URL+"/nixos-kexec.tar.gz", &errs)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); !bytes.Equal(b, body) {
			t.Fatalf("cached file %q", b)
		}
	}
	if hits != 1 {
		t.Fatalf("%d downloads, want 1 (cached by checksum)", hits)
	}
	err := runInstall(context.Background(), []string{"--kexec-download-locally", "--kexec", "/tmp/local.tar.gz", "-f", ".#a", "root@h"}, &errs, &errs)
	if err == nil || !strings.Contains(err.Error(), "needs --kexec URL") {
		t.Fatalf("err = %v", err)
	}
}
