package installer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/pxe-anywhere/pxe-anywhere/images"
)

// kexecURL is the nixos-images release used when no --kexec is given,
// the one nixos-anywhere's script downloads; %s is the target's uname -m,
// and nixos-images builds it for x86_64 and aarch64 only.
const kexecURL = "https://github.com/nix-community/nixos-images/releases/download/nixos-25.05/nixos-kexec-installer-noninteractive-%s-linux.tar.gz"

// DefaultKexecURL is the kexec tarball for a target whose uname -m is
// arch, or an error for an architecture nixos-images has no image for.
func DefaultKexecURL(arch string) (string, error) {
	switch arch {
	case "x86_64", "aarch64":
		return fmt.Sprintf(kexecURL, arch), nil
	}
	return "", fmt.Errorf("nixos-images has no kexec installer for %q (only x86_64 and aarch64): build one and pass it with --kexec, or boot the installer by PXE", arch)
}

// tarFlags is how tar on the target unpacks the kexec tarball name
// (a path or URL): GNU tar does not detect compression on a pipe, so
// the suffix decides, as with nixos-anywhere; an unknown suffix is taken
// for gzip, the format nixos-images publishes.
func tarFlags(name string) string {
	if u, err := url.Parse(name); err == nil && images.IsURL(name) {
		name = u.Path
	}
	n := strings.ToLower(name)
	switch {
	case strings.HasSuffix(n, ".tar.xz"), strings.HasSuffix(n, ".txz"):
		return "-xJf -"
	case strings.HasSuffix(n, ".tar.zst"), strings.HasSuffix(n, ".tzst"):
		return "--zstd -xf -"
	case strings.HasSuffix(n, ".tar"):
		return "-xf -"
	}
	return "-xzf -"
}

// sniffTarFlags is tarFlags for a local tarball, read from its first
// bytes rather than its name: a download cached by
// --kexec-download-locally is named .tar.gz whatever it holds.
func sniffTarFlags(f *os.File) (string, error) {
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return "-xzf -", nil
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "-xJf -", nil
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "--zstd -xf -", nil
	case n >= 262 && string(head[257:262]) == "ustar":
		return "-xf -", nil
	}
	return tarFlags(f.Name()), nil
}

// minKexecRAM is what the kexec installer needs besides its image: the
// image unpacks into RAM and then runs from there.
const minKexecRAM = 1 << 30

func (r *run) setPhase(p string) { r.conn.phase = p }

func (r *run) kexec(ctx context.Context) error {
	r.setPhase(PhaseKexec)
	if r.facts.IsInstaller && !r.opts.ForceKexec {
		r.sink.Line(PhaseKexec, "info", "target already runs a NixOS installer; skipping kexec")
		return r.hardwareConfig(ctx)
	}
	if r.facts.InContainer {
		return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("%s runs in a container: kexec cannot replace its kernel; install from a VM or bare metal", r.opts.Target.Host)}
	}
	p := r.opts.KexecExtractPath
	src := r.opts.Kexec
	if src == "" {
		u, err := DefaultKexecURL(r.facts.Arch)
		if err != nil {
			return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: err}
		}
		src = u
	}
	prep := "rm -rf " + quote(p) + " && mkdir -p " + quote(p)
	untar := "tar -C " + quote(p) + " " + tarFlags(src)
	if images.IsURL(src) {
		r.checkKexecRAM(minKexecRAM, "the kexec installer")
		var fetch string
		switch {
		case r.facts.Has["curl"]:
			fetch = "curl -fsSL " + quote(src)
		case r.facts.Has["wget"]:
			fetch = "wget -qO- " + quote(src)
		default:
			return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("target has neither curl nor wget to download %s: pass a local tarball with --kexec, or use --kexec-download-locally", src)}
		}
		if err := r.conn.exec(ctx, prep+" && "+fetch+" | "+untar, nil); err != nil {
			return err
		}
	} else {
		f, err := os.Open(src)
		if err != nil {
			return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("opening kexec image: %w", err)}
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("kexec image %s: %w", src, err)}
		}
		r.checkKexecRAM(max(4*st.Size(), int64(minKexecRAM)), fmt.Sprintf("the kexec image %s (%d MiB)", src, st.Size()>>20))
		if untar, err = sniffTarFlags(f); err != nil {
			return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("kexec image %s: %w", src, err)}
		}
		untar = "tar -C " + quote(p) + " " + untar
		pr := images.NewProgressReader(f, st.Size(), r.progress(PhaseKexec))
		if err := r.conn.exec(ctx, prep+" && "+untar, pr); err != nil {
			return err
		}
	}
	launch := r.opts.KexecLaunchPath
	if launch == "" {
		launch = path.Join(p, "kexec", "run")
	}
	cmd := "nohup " + quote(launch)
	if r.opts.KexecExtraFlags != "" {
		cmd += " --kexec-extra-flags " + quote(r.opts.KexecExtraFlags)
	}
	log := quote(path.Join(p, "kexec.log"))
	// run loads the new kernel and schedules the switch in the
	// background itself; its exit status says whether loading worked.
	cmd = "cd " + quote(p) + " && " + cmd + " >" + log + " 2>&1 </dev/null || { rc=$?; echo 'kexec/run failed; its log:'; cat " + log +
		"; echo 'dmesg | tail:'; dmesg 2>/dev/null | tail -n 10; exit $rc; }"
	if err := r.conn.exec(ctx, cmd, nil); err != nil {
		return err
	}
	old := r.conn.addr
	r.conn.client.Close()
	r.sink.Line(PhaseKexec, "info", "waiting for "+old+" to go down")
	if err := r.waitGone(ctx, old); err != nil {
		return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("after kexec: %w", err)}
	}
	// The installer image has only root, whoever we logged in as before.
	r.opts.Target.User = "root"
	port := r.opts.Target.Port
	if r.opts.PostKexecSSHPort != 0 {
		port = r.opts.PostKexecSSHPort
	}
	r.sink.Line(PhaseKexec, "info", "waiting for the installer on "+r.addr(port))
	r.afterKexec = true
	if err := r.waitBack(ctx, r.addr(port)); err != nil {
		return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("after kexec: %w", err)}
	}
	r.facts.Sudo = ""
	if err := r.connect(ctx, port); err != nil {
		return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("after kexec: %w", err)}
	}
	r.setPhase(PhaseKexec)
	f, err := Probe(ctx, r.conn)
	if err != nil {
		return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("after kexec: %w", err)}
	}
	if !f.IsInstaller {
		return &PhaseError{Phase: PhaseKexec, ExitCode: -1, Err: fmt.Errorf("after kexec, %s does not run a NixOS installer (os-release ID=%q): the kexec image did not boot", r.conn.addr, f.ID)}
	}
	r.facts = f
	r.opts.Target.Port = port
	// As nixos-anywhere: the hardware is described by the installer,
	// right after kexec, also when --phases stops here.
	return r.hardwareConfig(ctx)
}

// checkKexecRAM warns when the target has less RAM than need: the
// estimate is rough, and nixos-anywhere's limited-RAM how-to installs
// 1 GiB machines, so it is no reason to refuse.
func (r *run) checkKexecRAM(need int64, what string) {
	if r.facts.MemKB > 0 && r.facts.MemKB*1024 < need {
		r.sink.Line(PhaseKexec, "warning", fmt.Sprintf("target has %d MiB RAM, %s may need %d MiB: if the kexec fails or the installer runs out of memory, see --no-disko-deps, or boot the installer by PXE",
			r.facts.MemKB/1024, what, need>>20))
	}
}

// progress reports an upload's bytes to the sink.
func (r *run) progress(phase string) func(done, total int64) {
	return func(done, total int64) { r.sink.Progress(phase, done, total) }
}

func (r *run) disko(ctx context.Context) error {
	r.setPhase(PhaseDisko)
	if err := r.hardwareConfig(ctx); err != nil {
		return err
	}
	for _, k := range r.opts.DiskKeys {
		// Read once, fully: LOCAL may be a pipe such as <(pass ...).
		b, err := os.ReadFile(k.Local)
		if err != nil {
			return &PhaseError{Phase: PhaseDisko, ExitCode: -1, Err: fmt.Errorf("reading disk key for %s: %w", k.Remote, err)}
		}
		dir := path.Dir(k.Remote)
		cmd := "umask 077; mkdir -p " + quote(dir) + " && cat > " + quote(k.Remote) + " && chmod 600 " + quote(k.Remote)
		if err := r.conn.exec(ctx, cmd, strings.NewReader(string(b))); err != nil {
			return err
		}
	}
	var script string
	if sp := r.opts.StorePaths; sp != nil {
		script = sp.Disko
	} else {
		attr := map[string]string{"disko": "diskoScript", "format": "formatScript", "mount": "mountScript"}[r.opts.DiskoMode]
		if r.opts.NoDiskoDeps {
			attr += "NoDeps"
		}
		out, err := r.build(ctx, PhaseDisko, attr, false)
		if err != nil {
			return err
		}
		script = out
	}
	if !r.builtRemotely() {
		if err := r.nixCopy(ctx, PhaseDisko, script, false); err != nil {
			return err
		}
	}
	return r.conn.exec(ctx, quote(script), nil)
}

// hardwareConfig runs once, before the disks are touched, as
// nixos-anywhere does.
func (r *run) hardwareConfig(ctx context.Context) error {
	if r.opts.GenerateHardwareConfig == "" || r.hwDone {
		return nil
	}
	r.hwDone = true
	var cmd string
	switch r.opts.GenerateHardwareConfig {
	case "nixos-facter":
		cmd = "nixos-facter"
	case "nixos-generate-config":
		cmd = "nixos-generate-config --no-filesystems --show-hardware-config"
	default:
		return &PhaseError{Phase: r.conn.phase, ExitCode: -1, Err: fmt.Errorf("unknown hardware config generator %q: use nixos-facter or nixos-generate-config", r.opts.GenerateHardwareConfig)}
	}
	out, err := r.conn.output(ctx, r.conn.wrap(cmd), cmd, nil)
	if err != nil {
		return r.conn.inPhase(err)
	}
	if err := os.MkdirAll(filepath.Dir(r.opts.HardwareConfigPath), 0o755); err != nil {
		return &PhaseError{Phase: r.conn.phase, ExitCode: -1, Err: fmt.Errorf("writing hardware config: %w", err)}
	}
	if err := os.WriteFile(r.opts.HardwareConfigPath, out, 0o644); err != nil {
		return &PhaseError{Phase: r.conn.phase, ExitCode: -1, Err: fmt.Errorf("writing hardware config: %w", err)}
	}
	return r.gitIntentToAdd(ctx, r.opts.HardwareConfigPath)
}

// gitIntentToAdd makes a new file visible to a flake in the git work
// tree it lies in (flakes see only files git knows), as nixos-anywhere
// does; outside a work tree, or without git, it does nothing.
func (r *run) gitIntentToAdd(ctx context.Context, file string) error {
	if _, err := exec.LookPath("git"); err != nil {
		return nil
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil
	}
	dir := filepath.Dir(abs)
	inside := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "--is-inside-work-tree")
	if out, err := inside.Output(); err != nil || strings.TrimSpace(string(out)) != "true" {
		return nil
	}
	add := exec.CommandContext(ctx, "git", "-C", dir, "add", "--intent-to-add", "--force", "--", abs)
	if out, err := add.CombinedOutput(); err != nil {
		return &PhaseError{Phase: r.conn.phase, Command: strings.Join(add.Args, " "), ExitCode: add.ProcessState.ExitCode(), Tail: lines(out),
			Err: fmt.Errorf("the hardware config is written, but git does not know it: a flake will not see it until it is git-added")}
	}
	r.sink.Line(r.conn.phase, "info", "hardware config "+abs+" added to git with --intent-to-add")
	return nil
}

func (r *run) install(ctx context.Context) error {
	r.setPhase(PhaseInstall)
	if err := r.hardwareConfig(ctx); err != nil {
		return err
	}
	if r.opts.ExtraFiles != "" {
		if err := r.extraFiles(ctx); err != nil {
			return err
		}
	}
	for _, c := range r.opts.Chowns {
		p := path.Join("/mnt", path.Clean("/"+c.Path))
		if err := r.conn.exec(ctx, fmt.Sprintf("chown -R %d:%d %s", c.UID, c.GID, quote(p)), nil); err != nil {
			return err
		}
	}
	if h := r.opts.Hostname; h != "" {
		if err := r.hostname(ctx, h); err != nil {
			return err
		}
	}
	if r.opts.CopyHostKeys {
		cmd := `mkdir -m 755 -p /mnt/etc/ssh && for p in /etc/ssh/ssh_host_*; do [ -e "$p" ] && cp -a "$p" /mnt/etc/ssh/; done; true`
		if err := r.conn.exec(ctx, cmd, nil); err != nil {
			return err
		}
	}
	var system string
	if sp := r.opts.StorePaths; sp != nil {
		system = sp.System
	} else {
		out, err := r.build(ctx, PhaseInstall, "toplevel", true)
		if err != nil {
			return err
		}
		system = out
	}
	if !r.builtRemotely() {
		if err := r.nixCopy(ctx, PhaseInstall, system, true); err != nil {
			return err
		}
	}
	// /mnt/tmp exists, world-writable and sticky, as /tmp: nixos-install's
	// chroot needs it when initrd secrets are used.
	if err := r.conn.exec(ctx, "[ -d /mnt/tmp ] || { mkdir -p /mnt/tmp && chmod 1777 /mnt/tmp; }", nil); err != nil {
		return err
	}
	cmd := ""
	if r.opts.NixOSNoCheck != nil {
		cmd += "NIXOS_NO_CHECK=" + quote(*r.opts.NixOSNoCheck) + " "
	}
	return r.conn.exec(ctx, cmd+"nixos-install --no-root-passwd --no-channel-copy --system "+quote(system), nil)
}

// hostname writes h (checked by Options.validate, before any phase)
// into /mnt/etc/hostname, leaving one that the extra files brought
// alone; the target's output line says which.
func (r *run) hostname(ctx context.Context, h string) error {
	cmd := `if [ -e /mnt/etc/hostname ]; then echo "/etc/hostname of the extra files kept"; ` +
		`else mkdir -m 755 -p /mnt/etc && printf '%s\n' ` + quote(h) + ` > /mnt/etc/hostname.tmp && ` +
		`chmod 644 /mnt/etc/hostname.tmp && mv /mnt/etc/hostname.tmp /mnt/etc/hostname && echo "hostname written to /etc/hostname: "` + quote(h) + `; fi`
	return r.conn.exec(ctx, cmd, nil)
}

// extraFiles streams the directory as a tar archive owned by root; the
// --chown entries then give paths their owners.
func (r *run) extraFiles(ctx context.Context) error {
	root := r.opts.ExtraFiles
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return &PhaseError{Phase: PhaseInstall, ExitCode: -1, Err: fmt.Errorf("extra files %s: not a directory (%v)", root, err)}
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, root)) }()
	defer pr.Close()
	return r.conn.exec(ctx, "mkdir -p /mnt && tar -C /mnt -xf -", images.NewProgressReader(pr, -1, r.progress(PhaseInstall)))
}

func writeTar(w io.Writer, root string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("extra file %s: %w", p, err)
		}
		h.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "root", "root"
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("packing extra files from %s: %w", root, err)
	}
	return tw.Close()
}

func (r *run) reboot(ctx context.Context) error {
	r.setPhase(PhaseReboot)
	cmd := "if mountpoint -q /mnt; then umount -Rv /mnt || umount /mnt; fi; true"
	if err := r.conn.exec(ctx, cmd, nil); err != nil {
		return err
	}
	// Pools are exported so that the new system imports them without
	// -f; a swap on a zvol keeps its pool busy, so it goes first. A
	// failed export is reported, and the reboot goes on, as with
	// nixos-anywhere: the system may then need a forced import.
	zfs := `command -v zpool >/dev/null 2>&1 || exit 0; ` +
		`for s in $(awk 'NR > 1 && $1 ~ "^/dev/zd" { print $1 }' /proc/swaps); do swapoff "$s"; done; ` +
		`zpool export -a`
	if err := r.conn.exec(ctx, zfs, nil); err != nil {
		var pe *PhaseError
		if ctx.Err() != nil || !errors.As(err, &pe) || pe.ExitCode < 0 {
			return err
		}
		r.sink.Line(PhaseReboot, "warning", fmt.Sprintf("zpool export -a failed (exit code %d): rebooting anyway; the new system may need zpool import -f", pe.ExitCode))
	}
	var action string
	switch r.opts.AfterInstall {
	case "stay":
		return nil
	case "poweroff":
		action = "poweroff"
	default:
		action = "reboot"
	}
	// Detached and delayed, so that the session ends cleanly before the
	// host goes down.
	if err := r.conn.exec(ctx, "nohup sh -c 'sleep 1; "+action+"' >/dev/null 2>&1 </dev/null &", nil); err != nil {
		return err
	}
	addr := r.conn.addr
	r.conn.client.Close()
	if err := r.waitGone(ctx, addr); err != nil {
		return &PhaseError{Phase: PhaseReboot, ExitCode: -1, Err: err}
	}
	return nil
}

func (r *run) builtRemotely() bool { return r.opts.BuildOn == "remote" && r.opts.StorePaths == nil }

// storeURL is the target's store, or with mnt the store of the system
// being installed under /mnt.
func (r *run) storeURL(scheme string, mnt bool) string {
	u := scheme + "://" + r.opts.Target.User + "@" + r.opts.Target.Host
	var q []string
	if mnt {
		q = append(q, "remote-store="+url.QueryEscape("local?root=/mnt"))
	}
	// As nixos-anywhere: compress=true unless set, and the settings as
	// given (its docs tell users to URI-encode values).
	if !slices.ContainsFunc(r.opts.SSHStoreSettings, func(kv [2]string) bool { return kv[0] == "compress" }) {
		q = append(q, "compress=true")
	}
	for _, kv := range r.opts.SSHStoreSettings {
		q = append(q, kv[0]+"="+kv[1])
	}
	if len(q) > 0 {
		u += "?" + strings.Join(q, "&")
	}
	return u
}

// nixArgs starts a local nix command line: the subcommand words, then
// the flags every local nix call gets.
func (r *run) nixArgs(sub ...string) []string {
	args := append(slices.Clone(sub), "--extra-experimental-features", "nix-command flakes")
	for _, kv := range r.opts.NixOptions {
		args = append(args, "--option", kv[0], kv[1])
	}
	if r.opts.PrintBuildLogs {
		args = append(args, "-L")
	}
	if r.opts.ShowTrace {
		args = append(args, "--show-trace")
	}
	if r.opts.Debug {
		args = append(args, "--debug")
	}
	return args
}

// configAttr names ATTR of the flake's NixOS configuration.
func (r *run) configAttr(attr string) string { return ConfigAttr(r.opts.Flake, attr) }

// ConfigAttr names ATTR (system.build.toplevel, say) of the NixOS
// configuration that flake names as FLAKE#NAME, which means
// nixosConfigurations."NAME".config, or, as with nixos-anywhere, as a
// full attribute path starting with nixosConfigurations. (such as
// FLAKE#nixosConfigurations.x.config.virtualisation.vmVariant), which is
// used as given.
func ConfigAttr(flake, attr string) string {
	f, name, _ := strings.Cut(flake, "#")
	if strings.HasPrefix(name, "nixosConfigurations.") {
		return f + "#" + name + "." + attr
	}
	return fmt.Sprintf("%s#nixosConfigurations.%q.config.%s", f, name, attr)
}

// build builds system.build.ATTR of the flake's configuration and
// returns its store path. The first build settles where to build and
// hands the target the configuration's substituters.
func (r *run) build(ctx context.Context, phase, attr string, mnt bool) (string, error) {
	if err := r.resolveBuildOn(ctx, phase); err != nil {
		return "", err
	}
	if err := r.machineSubstituters(ctx, phase); err != nil {
		return "", err
	}
	// A flake whose lock file is out of date is evaluated as it is, not
	// rewritten, as with nixos-anywhere.
	args := append(r.nixArgs("build"), "--print-out-paths", "--no-link", "--no-write-lock-file")
	if r.builtRemotely() {
		args = append(args, "--eval-store", "auto", "--store", r.storeURL("ssh-ng", mnt))
	}
	args = append(args, r.configAttr("system.build."+attr))
	out, err := r.localNix(ctx, phase, args)
	if err != nil {
		return "", err
	}
	ls := lines(out)
	if len(ls) == 0 || !strings.HasPrefix(ls[len(ls)-1], "/") {
		return "", &PhaseError{Phase: phase, Command: r.shownNix(args), ExitCode: -1, Err: fmt.Errorf("nix build printed no store path")}
	}
	return ls[len(ls)-1], nil
}

// resolveBuildOn turns --build-on auto into local or remote before the
// first build: local when this machine's nix builds for the target's
// system, natively or through its extra-platforms (binfmt emulation),
// else remote, since the target can always build for itself. Unlike
// nixos-anywhere it tries no test build, so remote builders configured
// here do not count; --build-on local uses them.
func (r *run) resolveBuildOn(ctx context.Context, phase string) error {
	if r.opts.BuildOn != "auto" {
		return nil
	}
	var out []byte
	var err error
	// Older nix names the command show-config; both print "name =
	// value" lines.
	for _, sub := range [][]string{{"config", "show"}, {"show-config"}} {
		if out, err = r.localNix(ctx, phase, r.nixArgs(sub...)); err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil && ctx.Err() != nil {
		return err
	}
	local, extra := parseNixConfig(out)
	if err != nil || local == "" {
		// Building here is what auto meant before it compared systems.
		r.opts.BuildOn = "local"
		r.sink.Line(phase, "info", "--build-on auto: cannot read the local nix's system (nix config show and nix show-config failed); building here")
		return nil
	}
	target := ""
	if r.facts.OS == "Linux" && r.facts.Arch != "" {
		target = r.facts.Arch + "-linux"
	}
	platforms := local
	if len(extra) > 0 {
		platforms += " (extra-platforms " + strings.Join(extra, " ") + ")"
	}
	if target != "" && (target == local || slices.Contains(extra, target)) {
		r.opts.BuildOn = "local"
		r.sink.Line(phase, "info", "--build-on auto: building here: local nix builds "+platforms+", the target is "+target)
		return nil
	}
	if target == "" {
		target = "unknown (uname: " + r.facts.OS + " " + r.facts.Arch + ")"
	}
	r.opts.BuildOn = "remote"
	r.sink.Line(phase, "info", "--build-on auto: building on the target: local nix builds "+platforms+", the target is "+target)
	return nil
}

// parseNixConfig picks system and extra-platforms out of the
// "name = value" lines that nix config show prints.
func parseNixConfig(out []byte) (system string, extra []string) {
	for _, l := range lines(out) {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "system":
			system = strings.TrimSpace(v)
		case "extra-platforms":
			extra = strings.Fields(v)
		}
	}
	return system, extra
}

// machineSubstituters appends the configuration's substituters and
// their keys to the login user's nix.conf on the target, once, as
// nixos-anywhere does: --substitute-on-destination and a build on the
// target then fetch from the caches the configuration trusts instead of
// receiving those paths over SSH. --no-substitute-on-destination implies
// --no-use-machine-substituters there, and so it does here.
func (r *run) machineSubstituters(ctx context.Context, phase string) error {
	if r.substDone || r.opts.Flake == "" || r.opts.NoUseMachineSubstituters || r.opts.NoSubstituteOnDestination {
		return nil
	}
	r.substDone = true
	var conf strings.Builder
	for _, s := range []struct{ attr, key string }{
		{"substituters", "extra-substituters"},
		{"trusted-public-keys", "extra-trusted-public-keys"},
	} {
		vals, err := r.evalStrings(ctx, phase, "nix.settings."+s.attr)
		if err != nil {
			return err
		}
		if len(vals) > 0 {
			fmt.Fprintf(&conf, "%s = %s\n", s.key, strings.Join(vals, " "))
		}
	}
	if conf.Len() == 0 {
		return nil
	}
	// Best effort, as in nixos-anywhere: without the extra caches the
	// install still works, it only moves more over SSH.
	if err := r.conn.runPlain(ctx, "mkdir -p ~/.config/nix && cat >> ~/.config/nix/nix.conf", strings.NewReader(conf.String())); err != nil {
		if ctx.Err() != nil {
			return err
		}
		r.sink.Line(phase, "info", "could not add the configuration's substituters to the target's nix.conf: "+err.Error())
	}
	return nil
}

// evalStrings evaluates ATTR of the flake's configuration, which must be
// a list of strings fit for one nix.conf line.
func (r *run) evalStrings(ctx context.Context, phase, attr string) ([]string, error) {
	args := append(r.nixArgs("eval"), "--json", "--no-write-lock-file", r.configAttr(attr))
	out, err := r.localNix(ctx, phase, args)
	if err != nil {
		return nil, err
	}
	fail := func(err error) error {
		return &PhaseError{Phase: phase, Command: r.shownNix(args), ExitCode: -1, Err: err}
	}
	var vals []string
	if err := json.Unmarshal(out, &vals); err != nil {
		return nil, fail(fmt.Errorf("%s is not a list of strings: %w", attr, err))
	}
	for _, v := range vals {
		if v == "" || strings.IndexFunc(v, unicode.IsSpace) >= 0 {
			return nil, fail(fmt.Errorf("%s entry %q: empty or holds whitespace, which nix.conf cannot carry", attr, v))
		}
	}
	return vals, nil
}

func (r *run) nixCopy(ctx context.Context, phase, storePath string, mnt bool) error {
	args := r.nixArgs("copy")
	if !r.opts.NoSubstituteOnDestination {
		args = append(args, "--substitute-on-destination")
	}
	if r.opts.From != "" {
		args = append(args, "--from", r.opts.From)
	}
	args = append(args, "--to", r.storeURL("ssh", mnt), storePath)
	_, err := r.localNix(ctx, phase, args)
	return err
}

// shownNix is the local nix command line as errors show it: option
// values (access-tokens, say) become "…", because errors reach
// terminals, logs and the server's database.
func (r *run) shownNix(args []string) string {
	shown := slices.Clone(args)
	for i := 0; i+2 < len(shown); i++ {
		if shown[i] == "--option" {
			shown[i+2] = "…"
			i += 2
		}
	}
	return r.opts.LocalNix + " " + strings.Join(shown, " ")
}

// localNix runs nix here with NIX_SSHOPTS that reach only the verified
// target; stdout is returned, stderr goes to the sink.
func (r *run) localNix(ctx context.Context, phase string, args []string) ([]byte, error) {
	shown := r.shownNix(args)
	sshOpts, err := r.sshEnv()
	if err != nil {
		return nil, &PhaseError{Phase: phase, Command: shown, ExitCode: -1, Err: err}
	}
	cmd := exec.CommandContext(ctx, r.opts.LocalNix, args...)
	cmd.Env = append(os.Environ(), "NIX_SSHOPTS="+sshOpts)
	cmd.WaitDelay = 5 * time.Second
	// nix and the ssh it starts share a process group of their own, and
	// an interrupt or timeout ends the group: killing nix alone would
	// leave its ssh to the target running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	tw := &tailWriter{sink: r.sink, phase: phase, stream: "stderr", max: r.opts.MaxLineBytes}
	cmd.Stderr = tw
	out, err := cmd.Output()
	tw.flush()
	if err != nil {
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
			err = nil
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted during %s: %w", phase, context.Cause(ctx))
		}
		return nil, &PhaseError{Phase: phase, Command: shown, ExitCode: code, Tail: tw.lines(), Err: err}
	}
	return out, nil
}
