// Package installer owns the SSH install engine: it connects to a Linux
// host (a booted NixOS installer, or any Linux reachable over SSH that it
// first kexecs into one), partitions with disko, uploads disk keys and
// extra files, copies the system closure, runs nixos-install and reboots.
// It reports progress to a Sink and never writes secrets into command
// lines or its own messages. It does not own netbooting, machine state
// or configuration files.
package installer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/rules"
	"golang.org/x/crypto/ssh"
)

// Target is the SSH endpoint of the machine to install.
type Target struct {
	Host string
	Port int
	User string
}

// JumpHost is the host the target is reached through (ssh -J), with
// its own known hosts file and StrictHostKeyChecking and HashKnownHosts
// in SSHOptions, as ssh resolves them for it; empty ones are the
// target's.
type JumpHost struct {
	Target
	KnownHostsFile string
	SSHOptions     map[string]string
}

// KeyFile is a disk encryption key: read from Local on this machine and
// written to Remote on the target before disko runs.
type KeyFile struct{ Remote, Local string }

// Chown sets the owner of a path (relative to the installed system's
// root) after the extra files are copied.
type Chown struct {
	Path     string
	UID, GID int
}

// StorePaths are prebuilt store paths used instead of building a flake.
type StorePaths struct{ Disko, System string }

// Phase names, in their default order.
const (
	PhaseKexec   = "kexec"
	PhaseDisko   = "disko"
	PhaseInstall = "install"
	PhaseReboot  = "reboot"
)

// DefaultPhases is the order used when Options.Phases is empty.
var DefaultPhases = []string{PhaseKexec, PhaseDisko, PhaseInstall, PhaseReboot}

// Options describe one install. The zero value of each field means the
// nixos-anywhere default.
type Options struct {
	Target Target
	// Signers authenticate us; IdentityFile, when set, is also handed to
	// the local ssh that nix copy starts (besides that, it gets the
	// signers through a private, per-run agent socket).
	Signers      []ssh.Signer
	IdentityFile string
	// Password (from SSHPASS with --env-password) is used once, to
	// install a generated key, so that nix copy can log in too.
	Password string
	// SudoPassword is asked for the login user's password when sudo on
	// the target wants one (nil: such a target fails with a message
	// saying so); it is given to sudo -S on stdin, never on a command
	// line.
	SudoPassword func(user, host string) (string, error)
	// HostKey pins the target's host key; any other key stops the install.
	HostKey ssh.PublicKey
	// KnownHostsFile is consulted when HostKey is nil (default
	// ~/.ssh/known_hosts). By SSHOptions["StrictHostKeyChecking"]:
	// an unknown host is trusted on first use and recorded there
	// (hashed if SSHOptions["HashKnownHosts"] is yes) unless it is
	// "yes"; a changed key is refused unless it is "no", which warns.
	KnownHostsFile string
	SSHOptions     map[string]string // ConnectTimeout (seconds), StrictHostKeyChecking, HashKnownHosts
	// ProxyJump, when set, is the one jump host the target is reached
	// through (ssh -J): the engine's connections are direct-tcpip
	// channels from it, and the ssh that nix starts gets a ProxyCommand
	// through it. Its host key is checked against KnownHostsFile too.
	ProxyJump *JumpHost
	// AcceptNewHostKeyAfterKexec accepts an installer whose host key is
	// not the old system's (an image that does not keep the keys).
	AcceptNewHostKeyAfterKexec bool

	Phases     []string
	Flake      string // FLAKE#NAME
	StorePaths *StorePaths
	DiskoMode  string // disko (default) | mount | format

	Kexec            string // local tarball path or http(s) URL; default: nixos-images release for the target arch
	KexecExtractPath string // default /root/kexec
	KexecExtraFlags  string
	PostKexecSSHPort int
	ForceKexec       bool
	KexecLaunchPath  string // remote command that starts the kexec; default: the extracted kexec/run

	DiskKeys     []KeyFile
	ExtraFiles   string // local directory copied to /mnt
	Chowns       []Chown
	CopyHostKeys bool
	// Hostname, when set, is written to the installed system's
	// /etc/hostname, unless the extra files brought one: the name of a
	// machine that shares its profile's system with others (a rule's
	// template, `machines assign --hostname`). A NixOS system reads it
	// when its networking.hostName is "".
	Hostname string

	BuildOn                   string // auto (default) | local | remote
	NoSubstituteOnDestination bool
	From                      string
	NixOptions                [][2]string
	SSHStoreSettings          [][2]string
	NoUseMachineSubstituters  bool
	NoDiskoDeps               bool
	GenerateHardwareConfig    string // nixos-facter | nixos-generate-config
	HardwareConfigPath        string
	PrintBuildLogs            bool
	Debug                     bool
	ShowTrace                 bool

	// NixOSNoCheck, when not nil, is passed to nixos-install as
	// NIXOS_NO_CHECK (pxe-anywhere install passes its own environment's).
	NixOSNoCheck *string

	AfterInstall string        // reboot (default) | poweroff | stay
	WaitTimeout  time.Duration // default 10 minutes
	LocalNix     string        // default "nix" from PATH

	// Timeouts bound each phase and the probe ("probe"); a phase not in
	// the map gets DefaultTimeouts. TimeoutHint, when set, says in a
	// phase's timeout error what raises it (a config key, a flag).
	Timeouts    map[string]time.Duration
	TimeoutHint func(phase string) string
	// KeepaliveInterval and KeepaliveCountMax: a keepalive goes to the
	// target every interval, and after CountMax unanswered ones the
	// connection is closed, as ssh's ServerAliveInterval and
	// ServerAliveCountMax (which the ssh that nix copy starts gets too).
	// Defaults 15s and 3.
	KeepaliveInterval time.Duration
	KeepaliveCountMax int
	// MaxLineBytes cuts a line of output longer than this (default 64
	// KiB); MaxOutputBytes bounds the output the engine keeps in memory
	// (probe, hardware config; default 16 MiB): more fails the command.
	MaxLineBytes   int
	MaxOutputBytes int64
}

// DefaultTimeouts are the phase timeouts when Options.Timeouts says
// nothing: generous, since a slow disk or link is no fault; they only
// make sure that no wait lasts forever.
var DefaultTimeouts = map[string]time.Duration{
	"probe":      5 * time.Minute,
	PhaseKexec:   20 * time.Minute,
	PhaseDisko:   30 * time.Minute,
	PhaseInstall: 2 * time.Hour,
	PhaseReboot:  15 * time.Minute,
}

// TimeoutError is a phase that ran out of time.
type TimeoutError struct {
	Phase string
	After time.Duration
	Hint  string // what raises it; may be ""
}

func (e *TimeoutError) Error() string {
	s := fmt.Sprintf("phase %s timed out after %s", e.Phase, e.After)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// ErrTargetStalled is returned (wrapped) when the target stopped
// answering keepalives and the engine closed the connection.
var ErrTargetStalled = errors.New("target stopped answering")

func (o *Options) timeout(phase string) *TimeoutError {
	d, ok := o.Timeouts[phase]
	if !ok || d <= 0 {
		d = DefaultTimeouts[phase]
	}
	e := &TimeoutError{Phase: phase, After: d}
	if o.TimeoutHint != nil {
		e.Hint = o.TimeoutHint(phase)
	}
	return e
}

// Sink receives progress. Lines are what the target's commands and the
// local nix print, unfiltered; the engine itself never puts a secret
// into a command line or into a line it writes (keys and files go over
// stdin, nix option values are left out of shown commands).
type Sink interface {
	PhaseStarted(phase string, index, total int)
	PhaseDone(phase string, elapsed time.Duration, err error)
	Line(phase, stream, line string)
	Progress(phase string, done, total int64)
}

// PhaseError is a failed phase: which command (nix option values left
// out), its exit code (-1 when there is none: connection lost,
// interrupted, or a local check) and the last lines it printed.
type PhaseError struct {
	Phase    string
	Command  string
	ExitCode int
	Tail     []string
	Err      error
}

func (e *PhaseError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s failed", e.Phase)
	describe(&b, e.Command, e.ExitCode, e.Err, e.Tail)
	return b.String()
}

// describe appends what is known of a failure: the command and its exit
// code (negative: none), the error, the last lines of output.
func describe(b *strings.Builder, command string, code int, err error, tail []string) {
	if command != "" {
		fmt.Fprintf(b, ": command %q", command)
		if code >= 0 {
			fmt.Fprintf(b, " exited with code %d", code)
		}
	}
	if err != nil {
		fmt.Fprintf(b, ": %v", err)
	}
	if len(tail) > 0 {
		b.WriteString("; last output:\n  ")
		b.WriteString(strings.Join(tail, "\n  "))
	}
}

func (e *PhaseError) Unwrap() error { return e.Err }

// ExitCode is the exit status a command line tool reports for err, as
// nixos-anywhere does: the exit code of the remote or local command that
// failed, else 1 (a timeout, a lost connection, a refused host key, a
// bad flag); 0 for nil.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var pe *PhaseError
	if errors.As(err, &pe) && pe.ExitCode > 0 && pe.ExitCode < 256 {
		return pe.ExitCode
	}
	return 1
}

// ErrHostKeyMismatch is returned (wrapped) when the target presents a
// host key other than the pinned or known one. It is a hard stop.
var ErrHostKeyMismatch = errors.New("host key mismatch")

func (o *Options) defaults() {
	if len(o.Phases) == 0 {
		o.Phases = DefaultPhases
	}
	if o.Target.Port == 0 {
		o.Target.Port = 22
	}
	if o.Target.User == "" {
		o.Target.User = "root"
	}
	if j := o.ProxyJump; j != nil && (j.Port == 0 || j.User == "") {
		jj := *j
		if jj.Port == 0 {
			jj.Port = 22
		}
		if jj.User == "" {
			jj.User = "root"
		}
		o.ProxyJump = &jj
	}
	if o.KexecExtractPath == "" {
		o.KexecExtractPath = "/root/kexec"
	}
	if o.DiskoMode == "" {
		o.DiskoMode = "disko"
	}
	if o.AfterInstall == "" {
		o.AfterInstall = "reboot"
	}
	if o.WaitTimeout == 0 {
		o.WaitTimeout = 10 * time.Minute
	}
	if o.LocalNix == "" {
		o.LocalNix = "nix"
	}
	if o.BuildOn == "" {
		o.BuildOn = "auto"
	}
	if o.KeepaliveInterval <= 0 {
		o.KeepaliveInterval = 15 * time.Second
	}
	if o.KeepaliveCountMax <= 0 {
		o.KeepaliveCountMax = 3
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = 64 << 10
	}
	if o.MaxOutputBytes <= 0 {
		o.MaxOutputBytes = 16 << 20
	}
}

func (o *Options) validate() error {
	for _, p := range o.Phases {
		if !slices.Contains(DefaultPhases, p) {
			return fmt.Errorf("unknown phase %q: use kexec, disko, install, reboot", p)
		}
	}
	if o.Target.Host == "" {
		return errors.New("no target host given")
	}
	needsBuild := slices.Contains(o.Phases, PhaseDisko) || slices.Contains(o.Phases, PhaseInstall)
	if needsBuild && o.Flake == "" && o.StorePaths == nil {
		return errors.New("phases disko/install need a flake (FLAKE#NAME) or store paths")
	}
	if o.Flake != "" && o.StorePaths != nil {
		return errors.New("give either a flake or store paths, not both")
	}
	if o.Flake != "" && !strings.Contains(o.Flake, "#") {
		return fmt.Errorf("flake %q names no configuration: use FLAKE#NAME", o.Flake)
	}
	switch o.DiskoMode {
	case "disko", "mount", "format":
	default:
		return fmt.Errorf("disko mode %q: use disko, mount or format", o.DiskoMode)
	}
	switch o.AfterInstall {
	case "reboot", "poweroff", "stay":
	default:
		return fmt.Errorf("after-install %q: use reboot, poweroff or stay", o.AfterInstall)
	}
	switch o.BuildOn {
	case "auto", "local", "remote":
	default:
		return fmt.Errorf("build-on %q: use auto, local or remote", o.BuildOn)
	}
	if o.GenerateHardwareConfig != "" && o.HardwareConfigPath == "" {
		return errors.New("generating a hardware config needs a path to write it to")
	}
	if o.Hostname != "" && !rules.ValidHostname(o.Hostname) {
		return fmt.Errorf("hostname %q is not an RFC 1123 hostname", o.Hostname)
	}
	return nil
}

// Run installs NixOS on opts.Target. It returns a *PhaseError when a
// phase fails; an install that failed is never rebooted.
func Run(ctx context.Context, opts Options, sink Sink) error {
	opts.defaults()
	if err := opts.validate(); err != nil {
		return err
	}
	r := &run{opts: opts, sink: sink}
	defer r.close()
	if err := r.connect(ctx, opts.Target.Port); err != nil {
		return &PhaseError{Phase: "connect", ExitCode: -1, Err: err}
	}
	r.setPhase("probe")
	facts, err := withTimeout(ctx, &r.opts, "probe", func(ctx context.Context) (Facts, error) { return Probe(ctx, r.conn) })
	var pe *PhaseError
	if err != nil && !errors.As(err, &pe) {
		err = &PhaseError{Phase: "probe", ExitCode: -1, Err: err}
	}
	if err != nil {
		return err
	}
	r.facts = facts
	if err := r.rootAccess(ctx); err != nil {
		return &PhaseError{Phase: "probe", ExitCode: -1, Err: err}
	}
	total := len(opts.Phases)
	for i, p := range opts.Phases {
		sink.PhaseStarted(p, i+1, total)
		start := time.Now()
		_, err := withTimeout(ctx, &r.opts, p, func(ctx context.Context) (struct{}, error) { return struct{}{}, r.phase(ctx, p) })
		var pe *PhaseError
		if err != nil && !errors.As(err, &pe) {
			err = &PhaseError{Phase: p, ExitCode: -1, Err: err}
		}
		sink.PhaseDone(p, time.Since(start), err)
		if err != nil {
			return err
		}
	}
	return nil
}

// withTimeout runs f under the timeout of phase. An error after the
// timeout or an interrupt says so, naming the phase, whatever f
// returned: the command's own error is only the symptom.
func withTimeout[T any](ctx context.Context, o *Options, phase string, f func(context.Context) (T, error)) (T, error) {
	te := o.timeout(phase)
	pctx, cancel := context.WithTimeoutCause(ctx, te.After, te)
	defer cancel()
	v, err := f(pctx)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		err = &PhaseError{Phase: phase, ExitCode: -1, Err: fmt.Errorf("interrupted during %s: %w", phase, context.Cause(ctx))}
	case pctx.Err() != nil:
		var pe *PhaseError
		if errors.As(err, &pe) {
			err = &PhaseError{Phase: phase, Command: pe.Command, ExitCode: -1, Tail: pe.Tail, Err: te}
		} else {
			err = &PhaseError{Phase: phase, ExitCode: -1, Err: te}
		}
	}
	return v, err
}

func (r *run) phase(ctx context.Context, p string) error {
	switch p {
	case PhaseKexec:
		return r.kexec(ctx)
	case PhaseDisko:
		return r.disko(ctx)
	case PhaseInstall:
		return r.install(ctx)
	default:
		return r.reboot(ctx)
	}
}

// rootAccess gets the password of a sudo that asks, and, on a NixOS
// installer logged into as another user (nixos@host, as the how-to
// does), copies that user's authorized keys to root and goes on as
// root, as nixos-anywhere does: nix copy and nixos-install need root.
func (r *run) rootAccess(ctx context.Context) error {
	if r.facts.Sudo == "sudo" && r.facts.SudoAsks {
		if r.opts.SudoPassword == nil {
			return fmt.Errorf("sudo on %s asks %s for a password: run from a terminal (it asks), pass it with --env-password, or give %s NOPASSWD in sudoers",
				r.opts.Target.Host, r.opts.Target.User, r.opts.Target.User)
		}
		pw, err := r.opts.SudoPassword(r.opts.Target.User, r.opts.Target.Host)
		if err != nil {
			return fmt.Errorf("reading the sudo password: %w", err)
		}
		r.sudoPassword, r.conn.sudoPassword = pw, pw
		r.facts.Sudo, r.conn.sudo = sudoWithPassword, sudoWithPassword
		if err := r.conn.exec(ctx, "true", nil); err != nil {
			return fmt.Errorf("sudo on %s refused the password of %s: %w", r.opts.Target.Host, r.opts.Target.User, err)
		}
	}
	if !r.facts.IsInstaller || r.facts.IsRoot {
		return nil
	}
	home, err := r.conn.output(ctx, `printf %s "$HOME"`, "printf %s $HOME", nil)
	if err != nil {
		return fmt.Errorf("finding the home of %s: %w", r.opts.Target.User, err)
	}
	keys := quote(strings.TrimSpace(string(home)) + "/.ssh/authorized_keys")
	r.sink.Line("probe", "info", fmt.Sprintf("%s is a NixOS installer logged into as %s: copying its authorized keys to root and going on as root", r.opts.Target.Host, r.opts.Target.User))
	cmd := "umask 077; mkdir -p /root/.ssh && if [ -f " + keys + " ]; then cat " + keys + " >> /root/.ssh/authorized_keys; fi"
	if err := r.conn.exec(ctx, cmd, nil); err != nil {
		return fmt.Errorf("copying %s's authorized keys to root: %w", r.opts.Target.User, err)
	}
	user := r.opts.Target.User
	r.opts.Target.User = "root"
	r.facts.Sudo, r.sudoPassword = "", ""
	if err := r.connect(ctx, r.opts.Target.Port); err != nil {
		return fmt.Errorf("logging in as root after copying %s's authorized keys: %w", user, err)
	}
	facts, err := Probe(ctx, r.conn)
	if err != nil {
		return err
	}
	r.facts = facts
	return nil
}
