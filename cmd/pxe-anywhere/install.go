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
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh/agent"

	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
)

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

	target                   string // --target-host or the positional argument
	noReboot, stopAfterDisko bool   // deprecated flags, turned into phases
}

// installFlag is one row of the install command's flag table: the
// parser and --help are both read from installFlags, so that a flag
// cannot be parsed without being documented, or documented without
// being parsed.
type installFlag struct {
	names []string // "-f", "--flake"
	args  []string // argument names as --help shows them; len(args) values are read
	help  string   // lines after the first are printed indented under it
	apply func(a *installArgs, vs []string) error
}

// setString returns an apply that stores the flag's one value in *p.
func setString(p func(a *installArgs) *string) func(*installArgs, []string) error {
	return func(a *installArgs, vs []string) error { *p(a) = vs[0]; return nil }
}

// setTrue returns an apply for a switch that sets *p.
func setTrue(p func(a *installArgs) *bool) func(*installArgs, []string) error {
	return func(a *installArgs, _ []string) error { *p(a) = true; return nil }
}

var installFlags = []installFlag{
	{[]string{"-f", "--flake"}, []string{"<flake#name>"}, "the flake and configuration to install; a full attribute path\n(FLAKE#nixosConfigurations.NAME.config.virtualisation.vmVariant) is used as given",
		setString(func(a *installArgs) *string { return &a.opts.Flake })},
	{[]string{"-s", "--store-paths"}, []string{"<disko>", "<system>"}, "prebuilt disko script and system closure instead of a flake\n(resolved here like readlink -f; both must exist)",
		func(a *installArgs, vs []string) error {
			a.opts.StorePaths = &installer.StorePaths{Disko: vs[0], System: vs[1]}
			return nil
		}},
	{[]string{"-i"}, []string{"<identity>"}, "SSH private key to log in with (besides ~/.ssh/id_*, SSH_PRIVATE_KEY, the agent)",
		setString(func(a *installArgs) *string { return &a.identity })},
	{[]string{"-p", "--ssh-port"}, []string{"<port>"}, "SSH port (default: Port in ~/.ssh/config, else 22)",
		func(a *installArgs, vs []string) (err error) {
			a.opts.Target.Port, err = parsePort("--ssh-port", vs[0])
			return err
		}},
	{[]string{"--target-host"}, []string{"<[user@]host>"}, "the host, instead of the positional argument",
		setString(func(a *installArgs) *string { return &a.target })},
	{[]string{"--ssh-option"}, []string{"<KEY=VALUE>"}, "ssh option, \"KEY=VALUE\" or \"KEY VALUE\" (HostName, User, Port, IdentityFile,\nUserKnownHostsFile, StrictHostKeyChecking, HashKnownHosts, ConnectTimeout,\nServerAliveInterval, ServerAliveCountMax: keepalives, default 15 s and 3;\nothers are refused); repeatable. ~/.ssh/config applies as for ssh",
		func(a *installArgs, vs []string) error { return addSSHOption(a.opts.SSHOptions, vs[0]) }},
	{[]string{"--phase-timeout"}, []string{"<PHASE=DURATION>"}, "timeout of a phase or of the probe (defaults: probe 5m, kexec 20m,\ndisko 30m, install 2h, reboot 15m); repeatable",
		func(a *installArgs, vs []string) error { return parsePhaseTimeout(&a.opts, vs[0]) }},
	{[]string{"--env-password"}, nil, "log in with the password in $SSHPASS once, then with a generated key\n(also the password of a sudo that asks, when no terminal is attached)",
		setTrue(func(a *installArgs) *bool { return &a.envPass })},
	{[]string{"-t", "--tty"}, nil, "accepted for nixos-anywhere; a terminal is detected (sudo asks there)",
		func(a *installArgs, vs []string) error { return nil }},
	{[]string{"--accept-new-host-key-after-kexec"}, nil, "accept an installer whose host key is not the old system's",
		setTrue(func(a *installArgs) *bool { return &a.opts.AcceptNewHostKeyAfterKexec })},
	{[]string{"--kexec"}, []string{"<path|url>"}, "kexec installer tarball, .tar.gz, .tar.xz, .tar.zst or .tar\n(default: the nixos-images release for the target's architecture)",
		setString(func(a *installArgs) *string { return &a.opts.Kexec })},
	{[]string{"--kexec-extract-path"}, []string{"<path>"}, "where the tarball is unpacked on the host (default /root/kexec)",
		setString(func(a *installArgs) *string { return &a.opts.KexecExtractPath })},
	{[]string{"--kexec-extra-flags"}, []string{"<flags>"}, "extra flags for kexec",
		setString(func(a *installArgs) *string { return &a.opts.KexecExtraFlags })},
	{[]string{"--kexec-launch-path"}, []string{"<cmd>"}, "remote command that starts the kexec (default: extracted kexec/run)",
		setString(func(a *installArgs) *string { return &a.opts.KexecLaunchPath })},
	{[]string{"--force-kexec"}, nil, "kexec even if the host already runs a NixOS installer",
		setTrue(func(a *installArgs) *bool { return &a.opts.ForceKexec })},
	{[]string{"--kexec-download-locally"}, nil, "download the --kexec URL here (cached by checksum in\n~/.cache/pxe-anywhere) and upload it: for hosts without internet",
		setTrue(func(a *installArgs) *bool { return &a.downloadKexec })},
	{[]string{"--post-kexec-ssh-port"}, []string{"<port>"}, "SSH port of the installer after kexec",
		func(a *installArgs, vs []string) (err error) {
			a.opts.PostKexecSSHPort, err = parsePort("--post-kexec-ssh-port", vs[0])
			return err
		}},
	{[]string{"--disk-encryption-keys"}, []string{"<remote>", "<local>"}, "copy LOCAL to REMOTE (mode 0600) before disko; repeatable",
		func(a *installArgs, vs []string) error {
			a.opts.DiskKeys = append(a.opts.DiskKeys, installer.KeyFile{Remote: vs[0], Local: vs[1]})
			return nil
		}},
	{[]string{"--extra-files"}, []string{"<dir>"}, "copy the directory's contents to / of the new system",
		setString(func(a *installArgs) *string { return &a.opts.ExtraFiles })},
	{[]string{"--chown"}, []string{"<path>", "<uid>:<gid>"}, "owner for an extra-files path; repeatable",
		func(a *installArgs, vs []string) error {
			u, g, ok := strings.Cut(vs[1], ":")
			uid, e1 := strconv.Atoi(u)
			gid, e2 := strconv.Atoi(g)
			if !ok || e1 != nil || e2 != nil || uid < 0 || gid < 0 {
				return fmt.Errorf("--chown %s %q: use UID:GID (numbers)", vs[0], vs[1])
			}
			a.opts.Chowns = append(a.opts.Chowns, installer.Chown{Path: vs[0], UID: uid, GID: gid})
			return nil
		}},
	{[]string{"--copy-host-keys"}, nil, "keep the host's SSH host keys in the new system",
		setTrue(func(a *installArgs) *bool { return &a.opts.CopyHostKeys })},
	{[]string{"--phases"}, []string{"<list>"}, "comma-separated subset of kexec,disko,install,reboot",
		func(a *installArgs, vs []string) error { a.opts.Phases = strings.Split(vs[0], ","); return nil }},
	{[]string{"--disko-mode"}, []string{"<disko|mount|format>"}, "which disko script to run (default disko; not with --store-paths)",
		setString(func(a *installArgs) *string { return &a.opts.DiskoMode })},
	{[]string{"--no-disko-deps"}, nil, "build the disko script without its dependencies",
		setTrue(func(a *installArgs) *bool { return &a.opts.NoDiskoDeps })},
	{[]string{"--build-on"}, []string{"<auto|local|remote>"}, "where to build (default auto: here if local nix builds for the\ntarget's uname -m, natively or by extra-platforms; else on the target)",
		setString(func(a *installArgs) *string { return &a.opts.BuildOn })},
	{[]string{"--build-on-remote"}, nil, "deprecated: --build-on remote",
		func(a *installArgs, _ []string) error { a.opts.BuildOn = "remote"; return nil }},
	{[]string{"--generate-hardware-config"}, []string{"<nixos-facter|nixos-generate-config>", "<path>"}, "write the host's hardware config to PATH right after kexec\n(git add --intent-to-add when PATH is in a git work tree)",
		func(a *installArgs, vs []string) error {
			if vs[0] != "nixos-facter" && vs[0] != "nixos-generate-config" {
				return fmt.Errorf("--generate-hardware-config %q: use nixos-facter or nixos-generate-config", vs[0])
			}
			a.opts.GenerateHardwareConfig, a.opts.HardwareConfigPath = vs[0], vs[1]
			return nil
		}},
	{[]string{"--no-substitute-on-destination"}, nil, "let the host not fetch from its substituters during nix copy\n(implies --no-use-machine-substituters)",
		setTrue(func(a *installArgs) *bool { return &a.opts.NoSubstituteOnDestination })},
	{[]string{"--from"}, []string{"<store-uri>"}, "copy closures from this store",
		setString(func(a *installArgs) *string { return &a.opts.From })},
	{[]string{"--option"}, []string{"<key>", "<value>"}, "nix option; repeatable",
		func(a *installArgs, vs []string) error {
			a.opts.NixOptions = append(a.opts.NixOptions, [2]string{vs[0], vs[1]})
			return nil
		}},
	{[]string{"--ssh-store-setting"}, []string{"<key>", "<value>"}, "ssh store setting, appended to the store URI as given (URI-encode\nthe value); repeatable; compress=true comes first unless set",
		func(a *installArgs, vs []string) error {
			a.opts.SSHStoreSettings = append(a.opts.SSHStoreSettings, [2]string{vs[0], vs[1]})
			return nil
		}},
	{[]string{"--no-use-machine-substituters"}, nil, "do not add the flake configuration's nix.settings substituters\nand trusted-public-keys to the host's ~/.config/nix/nix.conf",
		setTrue(func(a *installArgs) *bool { return &a.opts.NoUseMachineSubstituters })},
	{[]string{"-L", "--print-build-logs"}, nil, "print full build logs",
		setTrue(func(a *installArgs) *bool { return &a.opts.PrintBuildLogs })},
	{[]string{"--debug"}, nil, "verbose nix output",
		setTrue(func(a *installArgs) *bool { return &a.opts.Debug })},
	{[]string{"--show-trace"}, nil, "show nix evaluation traces",
		setTrue(func(a *installArgs) *bool { return &a.opts.ShowTrace })},
	{[]string{"--vm-test"}, nil, "build the configuration's installTest and exit (not with --store-paths,\n--build-on remote, --extra-files, --disk-encryption-keys, --generate-hardware-config)",
		setTrue(func(a *installArgs) *bool { return &a.vmTest })},
	{[]string{"--no-reboot"}, nil, "deprecated: phases without reboot",
		setTrue(func(a *installArgs) *bool { return &a.noReboot })},
	{[]string{"--stop-after-disko"}, nil, "deprecated: --phases kexec,disko",
		setTrue(func(a *installArgs) *bool { return &a.stopAfterDisko })},
	{[]string{"-h", "--help"}, nil, "this text",
		setTrue(func(a *installArgs) *bool { return &a.help })},
}

// helpColumn is where a flag's help text starts in --help.
const helpColumn = 36

// installUsage prints --help from installFlags.
func installUsage() string {
	var b strings.Builder
	b.WriteString("Usage: pxe-anywhere install [options] [<user@>]<host>\n\n" +
		"Install NixOS on a Linux host over SSH (kexec into an installer when needed).\n\n")
	for _, f := range installFlags {
		head := "  " + strings.Join(f.names, ", ")
		if len(f.args) > 0 {
			head += " " + strings.Join(f.args, " ")
		}
		lines := strings.Split(f.help, "\n")
		if len(head)+2 > helpColumn {
			head += "  "
		} else {
			head += strings.Repeat(" ", helpColumn-len(head))
		}
		b.WriteString(head + lines[0] + "\n")
		for _, l := range lines[1:] {
			b.WriteString(strings.Repeat(" ", helpColumn) + l + "\n")
		}
	}
	return b.String()
}

// lookupInstallFlag finds the table row of a flag name.
func lookupInstallFlag(name string) *installFlag {
	for i := range installFlags {
		if slices.Contains(installFlags[i].names, name) {
			return &installFlags[i]
		}
	}
	return nil
}

// parseInstallArgs parses nixos-anywhere style flags: --flag v and
// --flag=v, and flags that take two arguments.
func parseInstallArgs(args []string) (*installArgs, error) {
	a := &installArgs{}
	o := &a.opts
	o.SSHOptions = map[string]string{}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		name, inline, hasInline := arg, "", false
		if strings.HasPrefix(arg, "--") {
			name, inline, hasInline = strings.Cut(arg, "=")
		}
		f := lookupInstallFlag(name)
		if f == nil {
			if strings.HasPrefix(arg, "-") {
				return nil, fmt.Errorf("unknown flag %q (see pxe-anywhere install --help)", arg)
			}
			if a.target != "" {
				return nil, fmt.Errorf("more than one target host: %q and %q", a.target, arg)
			}
			a.target = arg
			continue
		}
		if hasInline && len(f.args) == 0 {
			// --debug=false would otherwise switch debugging on.
			return nil, fmt.Errorf("%s takes no value", name)
		}
		var vs []string
		if hasInline {
			vs = append(vs, inline)
		}
		for len(vs) < len(f.args) {
			i++
			if i >= len(args) {
				return nil, fmt.Errorf("%s needs %d argument(s): %s", name, len(f.args), strings.Join(f.args, " "))
			}
			vs = append(vs, args[i])
		}
		if err := f.apply(a, vs); err != nil {
			return nil, err
		}
	}
	if a.help {
		return a, nil
	}
	if a.stopAfterDisko {
		o.Phases = []string{installer.PhaseKexec, installer.PhaseDisko}
	}
	if a.noReboot {
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
	if o.StorePaths != nil && o.DiskoMode != "" {
		// As nixos-anywhere: the prebuilt disko script has its mode built in.
		return nil, errors.New("--disko-mode cannot be used with --store-paths: the disko script's mode is fixed when it is built")
	}
	if a.vmTest {
		// The combinations nixos-anywhere refuses: the VM test builds
		// from the flake and has no target to copy files or keys to.
		for _, c := range []struct {
			set  bool
			flag string
		}{
			{o.StorePaths != nil, "--store-paths (use --flake, or build config.system.build.installTest yourself)"},
			{o.BuildOn == "remote", "--build-on remote"},
			{o.ExtraFiles != "", "--extra-files"},
			{len(o.DiskKeys) > 0, "--disk-encryption-keys"},
			{o.GenerateHardwareConfig != "", "--generate-hardware-config (generate the hardware configuration before the VM test)"},
		} {
			if c.set {
				return nil, errors.New("--vm-test is not supported with " + c.flag)
			}
		}
		if o.Flake == "" {
			return nil, errors.New("--vm-test needs --flake FLAKE#NAME")
		}
		return a, nil
	}
	if a.downloadKexec && !images.IsURL(o.Kexec) {
		return nil, errors.New("--kexec-download-locally needs --kexec URL")
	}
	target := a.target
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
		fmt.Fprint(stdout, installUsage())
		return nil
	}
	if a.vmTest {
		cmd := exec.CommandContext(ctx, "nix", "build", "--extra-experimental-features", "nix-command flakes", "--no-write-lock-file", "--no-link",
			installer.ConfigAttr(a.opts.Flake, "system.build.installTest"))
		cmd.Stdout, cmd.Stderr = stdout, stderr
		return cmd.Run()
	}
	o := a.opts
	if o.StorePaths != nil {
		// Before anything runs on the target, as nixos-anywhere's
		// readlink -f and existence check.
		if o.StorePaths.Disko, err = resolveStorePath(o.StorePaths.Disko); err != nil {
			return err
		}
		if o.StorePaths.System, err = resolveStorePath(o.StorePaths.System); err != nil {
			return err
		}
	}
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
	if v, ok := os.LookupEnv("NIXOS_NO_CHECK"); ok {
		o.NixOSNoCheck = &v
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

// resolveStorePath follows the symlinks of a --store-paths argument (a
// ./result link, say) to the store path it names, which must exist here.
func resolveStorePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("--store-paths %s: %w (give existing store paths or ./result links)", p, err)
	}
	return abs, nil
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
