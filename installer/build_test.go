package installer_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// Local nix command lines the disko phase of "/src/flake#web" may run.
const (
	nixConfigShow       = `nix config show --extra-experimental-features nix-command flakes`
	nixShowConfig       = `nix show-config --extra-experimental-features nix-command flakes`
	nixEvalSubst        = `nix eval --extra-experimental-features nix-command flakes --json --no-write-lock-file /src/flake#nixosConfigurations."web".config.nix.settings.substituters`
	nixEvalKeys         = `nix eval --extra-experimental-features nix-command flakes --json --no-write-lock-file /src/flake#nixosConfigurations."web".config.nix.settings.trusted-public-keys`
	nixBuildDisko       = `nix build --extra-experimental-features nix-command flakes --print-out-paths --no-link --no-write-lock-file /src/flake#nixosConfigurations."web".config.system.build.diskoScript`
	nixBuildDiskoRemote = `nix build --extra-experimental-features nix-command flakes --print-out-paths --no-link --no-write-lock-file --eval-store auto --store ssh-ng://root@127.0.0.1?compress=true ` +
		`/src/flake#nixosConfigurations."web".config.system.build.diskoScript`
	nixCopyDiskoSubst = `nix copy --extra-experimental-features nix-command flakes --substitute-on-destination --to ssh://root@127.0.0.1?compress=true BIN/disko-script`
	nixCopyDisko      = `nix copy --extra-experimental-features nix-command flakes --to ssh://root@127.0.0.1?compress=true BIN/disko-script`
)

// diskoRun runs the disko phase of a flake install against a fresh
// target with the fake nix, after set adjusts the options and the fake's
// directory. It returns the nix calls (BIN standing for the target's
// stand-in directory), the sink, the target and the run's error.
func diskoRun(t *testing.T, outs map[string]string, set func(o *installer.Options, nixDir string)) ([]string, *recSink, env, error) {
	t.Helper()
	e := start(t, sshtarget.Options{StandIns: map[string]string{"disko-script": sshtarget.DiskoScriptStandIn}})
	disko := filepath.Join(e.tg.Bin, "disko-script")
	all := map[string]string{"diskoScript": disko}
	for k, v := range outs {
		all[k] = v
	}
	nix, calls := fakeNix(t, all)
	o := e.opts()
	o.LocalNix = nix
	o.Phases = []string{"disko"}
	o.Flake = "/src/flake#web"
	if set != nil {
		set(&o, filepath.Dir(calls))
	}
	sink := &recSink{}
	err := installer.Run(context.Background(), o, sink)
	var got []string
	for _, l := range readLines(t, calls) {
		got = append(got, strings.ReplaceAll(l, e.tg.Bin, "BIN"))
	}
	return got, sink, e, err
}

func TestMachineSubstituters(t *testing.T) {
	subst := map[string]string{
		"substituters":        `["https://cache.nixos.org/", "https://cache.example.org"]`,
		"trusted-public-keys": `["cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]`,
	}
	const wantConf = "extra-substituters = https://cache.nixos.org/ https://cache.example.org\n" +
		"extra-trusted-public-keys = cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n"
	tests := []struct {
		name     string
		outs     map[string]string
		set      func(o *installer.Options)
		wantNix  []string
		wantConf string // the target's ~/.config/nix/nix.conf; "" when absent
		wantErr  string
	}{
		{
			name:     "default: the target gets the configuration's caches",
			outs:     subst,
			wantNix:  []string{nixConfigShow, nixEvalSubst, nixEvalKeys, nixBuildDisko, nixCopyDiskoSubst},
			wantConf: wantConf,
		},
		{
			name:    "--no-use-machine-substituters",
			outs:    subst,
			set:     func(o *installer.Options) { o.NoUseMachineSubstituters = true },
			wantNix: []string{nixConfigShow, nixBuildDisko, nixCopyDiskoSubst},
		},
		{
			name:    "--no-substitute-on-destination implies it",
			outs:    subst,
			set:     func(o *installer.Options) { o.NoSubstituteOnDestination = true },
			wantNix: []string{nixConfigShow, nixBuildDisko, nixCopyDisko},
		},
		{
			name:    "no caches configured: nothing written",
			outs:    map[string]string{"substituters": `[]`, "trusted-public-keys": `[]`},
			wantNix: []string{nixConfigShow, nixEvalSubst, nixEvalKeys, nixBuildDisko, nixCopyDiskoSubst},
		},
		{
			name:    "a substituter nix.conf cannot carry",
			outs:    map[string]string{"substituters": `["https://cache.example.org\nrequire-sigs = false"]`, "trusted-public-keys": `[]`},
			wantNix: []string{nixConfigShow, nixEvalSubst},
			wantErr: "holds whitespace",
		},
		{
			name:    "evaluation fails",
			wantNix: []string{nixConfigShow, nixEvalSubst},
			wantErr: "no value for substituters",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _, e, err := diskoRun(t, tc.outs, func(o *installer.Options, _ string) {
				if tc.set != nil {
					tc.set(o)
				}
			})
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Run: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
			}
			if !slices.Equal(got, tc.wantNix) {
				t.Errorf("nix calls:\n got %q\nwant %q", got, tc.wantNix)
			}
			conf := e.tg.Shell(t, "cat /root/.config/nix/nix.conf 2>/dev/null || true")
			if conf != tc.wantConf {
				t.Errorf("target nix.conf %q, want %q", conf, tc.wantConf)
			}
			if tc.wantErr != "" && slices.Contains(e.tg.Calls(), "disko-script") {
				t.Error("disko ran after the failure")
			}
		})
	}
}

func TestBuildOnAuto(t *testing.T) {
	host := hostSystem(t)
	other := "aarch64-linux"
	if host == other {
		other = "x86_64-linux"
	}
	tests := []struct {
		name     string
		buildOn  string
		config   *string // the local nix config; nil: none, so nix config show fails
		oldNix   bool    // the local nix has only show-config
		wantNix  []string
		wantLine string
	}{
		{
			name:     "same system: here",
			config:   ptr("system = " + host + "\nextra-platforms = \n"),
			wantNix:  []string{nixConfigShow, nixBuildDisko, nixCopyDiskoSubst},
			wantLine: "building here: local nix builds " + host + ", the target is " + host,
		},
		{
			name:     "other system: on the target",
			config:   ptr("system = " + other + "\nextra-platforms = i686-linux\n"),
			wantNix:  []string{nixConfigShow, nixBuildDiskoRemote},
			wantLine: "building on the target: local nix builds " + other + " (extra-platforms i686-linux), the target is " + host,
		},
		{
			name:     "other system that emulates the target's: here",
			config:   ptr("system = " + other + "\nextra-platforms = riscv64-linux " + host + "\n"),
			wantNix:  []string{nixConfigShow, nixBuildDisko, nixCopyDiskoSubst},
			wantLine: "building here",
		},
		{
			name:     "old nix: show-config",
			config:   ptr("system = " + other + "\n"),
			oldNix:   true,
			wantNix:  []string{nixConfigShow, nixShowConfig, nixBuildDiskoRemote},
			wantLine: "building on the target",
		},
		{
			name:     "local nix config unreadable: here, as before",
			wantNix:  []string{nixConfigShow, nixShowConfig, nixBuildDisko, nixCopyDiskoSubst},
			wantLine: "cannot read the local nix's system",
		},
		{
			name:    "--build-on local is not second-guessed",
			buildOn: "local",
			config:  ptr("system = " + other + "\n"),
			wantNix: []string{nixBuildDisko, nixCopyDiskoSubst},
		},
		{
			name:    "--build-on remote is not second-guessed",
			buildOn: "remote",
			config:  ptr("system = " + host + "\n"),
			wantNix: []string{nixBuildDiskoRemote},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, sink, e, err := diskoRun(t, nil, func(o *installer.Options, nixDir string) {
				o.BuildOn = tc.buildOn
				o.NoUseMachineSubstituters = true
				p := filepath.Join(nixDir, "config")
				if tc.config == nil {
					must(t, os.Remove(p))
				} else {
					must(t, os.WriteFile(p, []byte(*tc.config), 0o644))
				}
				if tc.oldNix {
					must(t, os.WriteFile(filepath.Join(nixDir, "old-nix"), nil, 0o644))
				}
			})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !slices.Equal(got, tc.wantNix) {
				t.Errorf("nix calls:\n got %q\nwant %q", got, tc.wantNix)
			}
			if !slices.Contains(e.tg.Calls(), "disko-script") {
				t.Errorf("disko did not run: target calls %q", e.tg.Calls())
			}
			if tc.wantLine != "" && !slices.ContainsFunc(sink.lines, func(l string) bool { return strings.Contains(l, tc.wantLine) }) {
				t.Errorf("no line says %q:\n%s", tc.wantLine, strings.Join(sink.lines, "\n"))
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// nix option values (access-tokens, say) reach nix but no error or
// line: errors are printed, logged and stored by the server.
func TestNixOptionValuesHidden(t *testing.T) {
	const token = "ghp_s3cretToken"
	tests := []struct {
		name    string
		outs    map[string]string
		noSubst bool
		wantErr string
	}{
		{name: "nix fails", wantErr: "no value for substituters"},
		{name: "evaluated value unusable", outs: map[string]string{"substituters": `["a b"]`, "trusted-public-keys": `[]`}, wantErr: "holds whitespace"},
		{name: "build prints no store path", outs: map[string]string{"diskoScript": ""}, noSubst: true, wantErr: "printed no store path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, sink, _, err := diskoRun(t, tc.outs, func(o *installer.Options, _ string) {
				o.NixOptions = [][2]string{{"access-tokens", "github.com=" + token}, {"cores", "4"}}
				o.NoUseMachineSubstituters = tc.noSubst
			})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), "--option access-tokens … --option cores …") {
				t.Errorf("error %q does not show the options without their values", err)
			}
			if strings.Contains(err.Error(), token) {
				t.Errorf("error shows the token: %q", err)
			}
			for _, l := range sink.lines {
				if strings.Contains(l, token) {
					t.Errorf("the token reached the sink: %q", l)
				}
			}
			if len(got) == 0 || !strings.Contains(got[len(got)-1], "--option access-tokens github.com="+token+" --option cores 4") {
				t.Errorf("nix did not get the options: %q", got)
			}
		})
	}
}
