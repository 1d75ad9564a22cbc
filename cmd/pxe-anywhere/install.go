package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh/agent"

	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
)

const installUsage = `Usage: pxe-anywhere install [options] [<user@>]<host>

Install NixOS on a Linux host over SSH (kexec into an installer when needed).

  -f, --flake <flake#name>          the flake and configuration to install
  -s, --store-paths <disko> <system>  prebuilt disko script and system closure instead of a flake
  -i <identity>                     SSH private key to log in with (besides ~/.ssh/id_*, SSH_PRIVATE_KEY, the agent)
  -p, --ssh-port <port>             SSH port (default: Port in ~/.ssh/config, else 22)
  --target-host <[user@]host>       the host, instead of the positional argument
  --ssh-option <KEY=VALUE>          ssh option, "KEY=VALUE" or "KEY VALUE" (HostName, User, Port, IdentityFile,
                                    UserKnownHostsFile, StrictHostKeyChecking, HashKnownHosts, ConnectTimeout,
                                    ServerAliveInterval, ServerAliveCountMax: keepalives, default 15 s and 3;
                                    others are refused); repeatable. ~/.ssh/config applies as for ssh
  --phase-timeout <PHASE=DURATION>  timeout of a phase or of the probe (defaults: probe 5m, kexec 20m,
                                    disko 30m, install 2h, reboot 15m); repeatable
  --env-password                    log in with the password in $SSHPASS once, then with a generated key
                                    (also the password of a sudo that asks, when no terminal is attached)
  -t, --tty                         accepted for nixos-anywhere; a terminal is detected (sudo asks there)
  --kexec <path|url>                kexec installer tarball (default: nixos-images release)
  --kexec-extract-path <path>       where the tarball is unpacked on the host (default /root/kexec)
  --kexec-extra-flags <flags>       extra flags for kexec
  --kexec-launch-path <cmd>         remote command that starts the kexec (default: extracted kexec/run)
  --force-kexec                     kexec even if the host already runs a NixOS installer
  --kexec-download-locally          download the --kexec URL here (cached by checksum in
                                    ~/.cache/pxe-anywhere) and upload it: for hosts without internet
  --post-kexec-ssh-port <port>      SSH port of the installer after kexec (default 22)
  --accept-new-host-key-after-kexec accept an installer whose host key is not the old system's
  --disk-encryption-keys <remote> <local>  copy LOCAL to REMOTE (mode 0600) before disko; repeatable
  --extra-files <dir>               copy the directory's contents to / of the new system
  --chown <path> <uid>:<gid>        owner for an extra-files path; repeatable
  --copy-host-keys                  keep the host's SSH host keys in the new system
  --phases <list>                   comma-separated subset of kexec,disko,install,reboot
  --disko-mode <disko|mount|format> which disko script to run (default disko)
  --no-disko-deps                   build the disko script without its dependencies
  --build-on <auto|local|remote>    where to build (default auto: here if local nix builds for the
                                    target's uname -m, natively or by extra-platforms; else on the target)
  --build-on-remote                 deprecated: --build-on remote
  --generate-hardware-config <nixos-facter|nixos-generate-config> <path>  write the host's hardware config to PATH
  --no-substitute-on-destination    let the host not fetch from its substituters during nix copy
                                    (implies --no-use-machine-substituters)
  --from <store-uri>                copy closures from this store
  --option <key> <value>            nix option; repeatable
  --ssh-store-setting <key> <value> ssh store setting; repeatable
  --no-use-machine-substituters     do not add the flake configuration's nix.settings substituters
                                    and trusted-public-keys to the host's ~/.config/nix/nix.conf
  -L, --print-build-logs            print full build logs
  --debug                           verbose nix output
  --show-trace                      show nix evaluation traces
  --vm-test                         build the configuration's installTest and exit
  --no-reboot                       deprecated: phases without reboot
  --stop-after-disko                deprecated: --phases kexec,disko
  -h, --help                        this text
`

// installArgs is the parsed command line.
type installArgs struct {
	opts     installer.Options
	identity string
	envPass  bool
	vmTest   bool
	help     bool
	// downloadKexec: fetch a --kexec URL here (cached by checksum) and
	// upload it, for targets without internet access.
	downloadKexec bool
}

// parseInstallArgs parses nixos-anywhere style flags: --flag v and
// --flag=v, and flags that take two arguments.
func parseInstallArgs(args []string) (*installArgs, error) {
	a := &installArgs{}
	o := &a.opts
	o.SSHOptions = map[string]string{}
	var target string
	noReboot, stopAfterDisko := false, false
	for i := 0; i < len(args); i++ {
		arg := args[i]
		name, inline, hasInline := arg, "", false
		if strings.HasPrefix(arg, "--") {
			name, inline, hasInline = strings.Cut(arg, "=")
		}
		took := false // the flag read its value(s)
		val := func(n int) ([]string, error) {
			took = true
			var vs []string
			if hasInline {
				vs = append(vs, inline)
			}
			for len(vs) < n {
				i++
				if i >= len(args) {
					return nil, fmt.Errorf("%s needs %d argument(s)", name, n)
				}
				vs = append(vs, args[i])
			}
			return vs, nil
		}
		one := func() (string, error) {
			v, err := val(1)
			if err != nil {
				return "", err
			}
			return v[0], nil
		}
		var err error
		var v string
		var vs []string
		switch name {
		case "-h", "--help":
			a.help = true
		case "-f", "--flake":
			o.Flake, err = one()
		case "-s", "--store-paths":
			if vs, err = val(2); err == nil {
				o.StorePaths = &installer.StorePaths{Disko: vs[0], System: vs[1]}
			}
		case "-i":
			a.identity, err = one()
		case "-p", "--ssh-port":
			if v, err = one(); err == nil {
				o.Target.Port, err = parsePort(name, v)
			}
		case "--target-host":
			target, err = one()
		case "--ssh-option":
			if v, err = one(); err == nil {
				err = addSSHOption(o.SSHOptions, v)
			}
		case "--phase-timeout":
			if v, err = one(); err == nil {
				err = parsePhaseTimeout(o, v)
			}
		case "-t", "--tty":
			// nixos-anywhere accepts it and detects the terminal itself;
			// so does pxe-anywhere (see sudoPassword).
		case "--accept-new-host-key-after-kexec":
			o.AcceptNewHostKeyAfterKexec = true
		case "--env-password":
			a.envPass = true
		case "--kexec":
			o.Kexec, err = one()
		case "--kexec-extract-path":
			o.KexecExtractPath, err = one()
		case "--kexec-extra-flags":
			o.KexecExtraFlags, err = one()
		case "--kexec-launch-path":
			o.KexecLaunchPath, err = one()
		case "--force-kexec":
			o.ForceKexec = true
		case "--kexec-download-locally":
			a.downloadKexec = true
		case "--post-kexec-ssh-port":
			if v, err = one(); err == nil {
				o.PostKexecSSHPort, err = parsePort(name, v)
			}
		case "--disk-encryption-keys":
			if vs, err = val(2); err == nil {
				o.DiskKeys = append(o.DiskKeys, installer.KeyFile{Remote: vs[0], Local: vs[1]})
			}
		case "--extra-files":
			o.ExtraFiles, err = one()
		case "--chown":
			if vs, err = val(2); err == nil {
				u, g, ok := strings.Cut(vs[1], ":")
				uid, e1 := strconv.Atoi(u)
				gid, e2 := strconv.Atoi(g)
				if !ok || e1 != nil || e2 != nil || uid < 0 || gid < 0 {
					err = fmt.Errorf("--chown %s %q: use UID:GID (numbers)", vs[0], vs[1])
				}
				o.Chowns = append(o.Chowns, installer.Chown{Path: vs[0], UID: uid, GID: gid})
			}
		case "--copy-host-keys":
			o.CopyHostKeys = true
		case "--phases":
			if v, err = one(); err == nil {
				o.Phases = strings.Split(v, ",")
			}
		case "--disko-mode":
			o.DiskoMode, err = one()
		case "--no-disko-deps":
			o.NoDiskoDeps = true
		case "--build-on":
			o.BuildOn, err = one()
		case "--build-on-remote":
			o.BuildOn = "remote"
		case "--generate-hardware-config":
			if vs, err = val(2); err == nil {
				o.GenerateHardwareConfig, o.HardwareConfigPath = vs[0], vs[1]
				if vs[0] != "nixos-facter" && vs[0] != "nixos-generate-config" {
					err = fmt.Errorf("--generate-hardware-config %q: use nixos-facter or nixos-generate-config", vs[0])
				}
			}
		case "--no-substitute-on-destination":
			o.NoSubstituteOnDestination = true
		case "--from":
			o.From, err = one()
		case "--option":
			if vs, err = val(2); err == nil {
				o.NixOptions = append(o.NixOptions, [2]string{vs[0], vs[1]})
			}
		case "--ssh-store-setting":
			if vs, err = val(2); err == nil {
				o.SSHStoreSettings = append(o.SSHStoreSettings, [2]string{vs[0], vs[1]})
			}
		case "--no-use-machine-substituters":
			o.NoUseMachineSubstituters = true
		case "-L", "--print-build-logs":
			o.PrintBuildLogs = true
		case "--debug":
			o.Debug = true
		case "--show-trace":
			o.ShowTrace = true
		case "--vm-test":
			a.vmTest = true
		case "--no-reboot":
			noReboot = true
		case "--stop-after-disko":
			stopAfterDisko = true
		default:
			if strings.HasPrefix(arg, "-") {
				return nil, fmt.Errorf("unknown flag %q (see pxe-anywhere install --help)", arg)
			}
			if target != "" {
				return nil, fmt.Errorf("more than one target host: %q and %q", target, arg)
			}
			target = arg
		}
		if err != nil {
			return nil, err
		}
		if hasInline && !took {
			// --debug=false would otherwise switch debugging on.
			return nil, fmt.Errorf("%s takes no value", name)
		}
	}
	if a.help {
		return a, nil
	}
	if stopAfterDisko {
		o.Phases = []string{installer.PhaseKexec, installer.PhaseDisko}
	}
	if noReboot {
		if len(o.Phases) == 0 {
			o.Phases = installer.DefaultPhases
		}
		var ps []string
		for _, p := range o.Phases {
			if p != installer.PhaseReboot {
				ps = append(ps, p)
			}
		}
		o.Phases = ps
	}
	if o.Flake != "" && o.StorePaths != nil {
		return nil, errors.New("--flake and --store-paths exclude each other")
	}
	if o.Flake != "" {
		if f, n, ok := strings.Cut(o.Flake, "#"); !ok || f == "" || n == "" {
			return nil, fmt.Errorf("--flake %q: name the configuration: FLAKE#NAME", o.Flake)
		}
	}
	if a.vmTest {
		if o.Flake == "" {
			return nil, errors.New("--vm-test needs --flake FLAKE#NAME")
		}
		return a, nil
	}
	if a.downloadKexec && !images.IsURL(o.Kexec) {
		return nil, errors.New("--kexec-download-locally needs --kexec URL")
	}
	if target == "" {
		return nil, errors.New("no target host given: pass [user@]host or --target-host")
	}
	if u, h, ok := strings.Cut(target, "@"); ok {
		o.Target.User, o.Target.Host = u, h
	} else {
		o.Target.Host = target
	}
	if o.Target.Host == "" {
		return nil, fmt.Errorf("target %q has no host", target)
	}
	if p, ok := o.SSHOptions["Port"]; ok && o.Target.Port == 0 {
		o.Target.Port, _ = strconv.Atoi(p)
	}
	// Keepalives as ssh takes them: ServerAliveInterval in seconds.
	for key, dst := range map[string]*int{"ServerAliveInterval": nil, "ServerAliveCountMax": &o.KeepaliveCountMax} {
		v, ok := o.SSHOptions[key]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--ssh-option %s=%s: want a whole number of at least 1", key, v)
		}
		if dst == nil {
			o.KeepaliveInterval = time.Duration(n) * time.Second
		} else {
			*dst = n
		}
	}
	o.TimeoutHint = func(phase string) string { return "raise it with --phase-timeout " + phase + "=DURATION" }
	return a, nil
}

// parsePhaseTimeout reads PHASE=DURATION into o.Timeouts.
func parsePhaseTimeout(o *installer.Options, v string) error {
	phase, d, ok := strings.Cut(v, "=")
	if _, known := installer.DefaultTimeouts[phase]; !ok || !known {
		return fmt.Errorf("--phase-timeout %q: use PHASE=DURATION with PHASE one of probe, kexec, disko, install, reboot", v)
	}
	t, err := time.ParseDuration(d)
	if err != nil || t <= 0 {
		return fmt.Errorf("--phase-timeout %q: bad duration %q (like 45m or 3h)", v, d)
	}
	if o.Timeouts == nil {
		o.Timeouts = map[string]time.Duration{}
	}
	o.Timeouts[phase] = t
	return nil
}

// runInstall is `pxe-anywhere install`.
func runInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := parseInstallArgs(args)
	if err != nil {
		return err
	}
	if a.help {
		fmt.Fprint(stdout, installUsage)
		return nil
	}
	if a.vmTest {
		f, n, _ := strings.Cut(a.opts.Flake, "#")
		cmd := exec.CommandContext(ctx, "nix", "build", "--extra-experimental-features", "nix-command flakes", "--no-link",
			fmt.Sprintf("%s#nixosConfigurations.%q.config.system.build.installTest", f, n))
		cmd.Stdout, cmd.Stderr = stdout, stderr
		return cmd.Run()
	}
	o := a.opts
	if a.downloadKexec {
		path, err := fetchKexecLocally(ctx, o.Kexec, stderr)
		if err != nil {
			return err
		}
		o.Kexec = path
	}
	if err := resolveTarget(ctx, &o, a.identity, stderr); err != nil {
		return err
	}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := dialUnix(sock); err == nil {
			if ss, err := agent.NewClient(c).Signers(); err == nil {
				o.Signers = append(o.Signers, ss...)
			}
		}
	}
	if a.envPass {
		o.Password = os.Getenv("SSHPASS")
		if o.Password == "" {
			return errors.New("--env-password: SSHPASS is empty")
		}
	}
	o.SudoPassword = sudoPassword(os.Stdin, stderr, a.envPass)
	isTTY := false
	if f, ok := stdout.(*os.File); ok {
		if st, err := f.Stat(); err == nil {
			isTTY = st.Mode()&os.ModeCharDevice != 0
		}
	}
	return installer.Run(ctx, o, installer.TerminalSink(stdout, isTTY))
}

// parsePort reads the port value v of flag name.
func parsePort(name, v string) (int, error) {
	p, err := strconv.Atoi(v)
	if err != nil || p <= 0 || p > 65535 {
		return 0, fmt.Errorf("%s %q: not a port", name, v)
	}
	return p, nil
}

// fetchKexecLocally downloads url into the user's cache once and
// returns the local file; a cached file is verified before reuse.
func fetchKexecLocally(ctx context.Context, url string, stderr io.Writer) (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("--kexec-download-locally: %w", err)
	}
	cache := images.NewCache(filepath.Join(dir, "pxe-anywhere", "images"), slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	// The cache reports once per MiB and at the end.
	printed := false
	path, err := cache.Fetch(ctx, url, "", func(done, total int64) {
		printed = true
		if total > 0 {
			fmt.Fprintf(stderr, "\rdownloading kexec image: %d/%d MiB", done>>20, total>>20)
		} else {
			fmt.Fprintf(stderr, "\rdownloading kexec image: %d MiB", done>>20)
		}
	})
	if printed {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		return "", fmt.Errorf("--kexec-download-locally: %w", err)
	}
	return path, nil
}

func dialUnix(path string) (net.Conn, error) { return net.Dial("unix", path) }
