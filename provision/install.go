package provision

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// cancelled is the cause of an install that an operator stopped.
type cancelled struct{ by string }

func (c *cancelled) Error() string { return "cancelled by " + c.by }

// startInstall queues the install of a machine whose installer is up.
// The install runs under the server's context, not the callback's.
func (p *Provisioner) startInstall(b store.Boot, m *profiles.Machine, ip string) {
	p.startInstallPort(b, m, ip, 0)
}

// startInstallPort is startInstall on an installer whose sshd listens
// on port, not where the profile says (0: the profile's): the discover
// image, when a discovered machine installs in the boot that found it.
//
// The install holds this server's claim on the machine (claims.go)
// from here until it has ended; a machine another server claimed is
// left alone.
func (p *Provisioner) startInstallPort(b store.Boot, m *profiles.Machine, ip string, port int) {
	if err := p.hold(p.baseCtx, b.MAC); err != nil {
		if errors.Is(err, store.ErrClaimed) {
			_ = p.claimedElsewhere(p.baseCtx, b.MAC, "install", err)
			return
		}
		p.finalFail(context.WithoutCancel(p.baseCtx), b.MAC, "", "claiming the install failed: "+err.Error(), "install not started: claiming it failed: "+err.Error())
		return
	}
	if !p.queue.start(b.MAC,
		func(ctx context.Context) { defer p.let(b.MAC); p.install(ctx, b, m, ip, port) },
		func(ctx context.Context) { defer p.let(b.MAC); p.stopped(ctx, b.MAC, "queued") }) {
		p.let(b.MAC)
	}
}

// Cancel stops the install of mac, queued or running: the engine's
// connection closes, which ends the remote command, the machine becomes
// failed ("cancelled by operator") and its slot goes to the next one.
// It returns once all that is done. When another server that shares
// the store holds the install's claim, the cancel is left on that
// claim, and Cancel returns that server's name: the holder stops the
// install when the change notification reaches it (cancelAsked), or at
// its next heartbeat. A machine with no install running anywhere is a
// conflict.
func (p *Provisioner) Cancel(ctx context.Context, mac, by string) (string, error) {
	if _, err := p.store.Machine(ctx, mac); err != nil {
		return "", notFound(err)
	}
	found, err := p.queue.cancel(ctx, mac, &cancelled{by: by})
	if found {
		return "", err
	}
	c, err := p.store.RequestCancel(ctx, mac, p.serverID, by+" through server "+p.serverID, time.Now())
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("%w: machine %s has no install running or queued: nothing to cancel", admin.ErrConflict, mac)
	}
	if err != nil {
		return "", err
	}
	p.event(ctx, mac, "", fmt.Sprintf("cancel asked by %s through server %s; server %s runs the install", by, p.serverID, c.Server))
	return c.Server, nil
}

// stopped records why an install ended under its context: an operator
// cancelled it, or the server stopped. It uses a fresh context: the
// install's own is done.
func (p *Provisioner) stopped(ctx context.Context, mac, phase string) {
	var c *cancelled
	if errors.As(context.Cause(ctx), &c) {
		p.metrics.installs.WithLabelValues("cancelled").Inc()
		wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.finalFail(wctx, mac, phase, "cancelled by operator",
			fmt.Sprintf("install cancelled by %s during %s; the slot is free", c.by, phaseName(phase)))
		return
	}
	var lost *claimLost
	if errors.As(context.Cause(ctx), &lost) {
		p.metrics.installs.WithLabelValues("failed").Inc()
		wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.finalFail(wctx, mac, phase, "interrupted: "+lost.Error(),
			fmt.Sprintf("install interrupted during %s: server %s %v", phaseName(phase), p.serverID, lost))
		return
	}
	p.interrupted(mac, phase)
}

// interrupted records that the server stopped under an install. It uses
// a fresh context: the server's own is already done.
func (p *Provisioner) interrupted(mac, phase string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.transition(ctx, mac, store.StateFailed, phase, "interrupted: server stopped",
		fmt.Sprintf("install interrupted during %s: server stopped", phase))
}

func (p *Provisioner) install(ctx context.Context, b store.Boot, m *profiles.Machine, ip string, port int) {
	cfg := p.cfg.Load()
	prof := cfg.Profile(m.Profile)
	fail := func(phase string, err error) {
		p.metrics.installs.WithLabelValues("failed").Inc()
		p.finalFail(context.WithoutCancel(ctx), b.MAC, phase, err.Error(),
			fmt.Sprintf("install failed in %s: %v", phaseName(phase), err))
	}
	if prof == nil {
		fail("", fmt.Errorf("profile %q of machine %s is no longer in the config", m.Profile, b.MAC))
		return
	}
	opts, err := p.engineOptions(b, prof, ip)
	if port != 0 {
		opts.Target.Port = port
	}
	opts.Hostname = m.Hostname
	if err != nil {
		fail("", err)
		return
	}
	s := p.newSink(context.WithoutCancel(ctx), b.MAC)
	defer s.finish()
	attempts := prof.Retries + 1
	for attempt := 1; attempt <= attempts; attempt++ {
		if attempt > 1 {
			p.event(s.ctx, b.MAC, "", fmt.Sprintf("retrying the install, attempt %d of %d", attempt, attempts))
		}
		if err = p.engine(ctx, opts, s); err == nil || ctx.Err() != nil {
			break
		}
		if p.poweroffByBMC(s.ctx, b.MAC, prof, err) {
			err = nil
			break
		}
	}
	switch {
	case ctx.Err() != nil:
		p.stopped(ctx, b.MAC, s.phase)
	case err != nil:
		phase := s.phase
		var pe *installer.PhaseError
		if errors.As(err, &pe) && pe.Phase != "" {
			phase = pe.Phase
		}
		fail(phase, err)
	default:
		p.metrics.installs.WithLabelValues("installed").Inc()
		err := p.transition(s.ctx, b.MAC, store.StateInstalled, "", "",
			fmt.Sprintf("installed with profile %s; next PXE boot goes to the local disk", prof.Name))
		if err != nil && !permanent(err) {
			// Unrecorded, the install cannot count: failed is the state
			// that never boots a machine from a disk nobody vouched for.
			p.finalFail(s.ctx, b.MAC, "", "the install ended but recording it failed: "+err.Error(),
				"install ended, but recording it as installed failed: "+err.Error())
		}
	}
}

func phaseName(phase string) string {
	if phase == "" {
		return "setup"
	}
	return phase
}

// engineOptions turns a profile into an engine run against the booted
// installer, pinned to the host key this boot injected.
func (p *Provisioner) engineOptions(b store.Boot, prof *profiles.Profile, ip string) (installer.Options, error) {
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKeyPublic))
	if err != nil {
		return installer.Options{}, fmt.Errorf("host key of boot: %w", err)
	}
	if _, err := netip.ParseAddr(ip); err != nil {
		return installer.Options{}, fmt.Errorf("installer address %q: %w", ip, err)
	}
	srv := p.cfg.Load().Server
	o := installer.Options{
		Timeouts: prof.Timeouts,
		TimeoutHint: func(phase string) string {
			return fmt.Sprintf("raise profiles.%s.timeouts.%s in the config", prof.Name, phase)
		},
		KeepaliveInterval: prof.SSH.KeepaliveInterval,
		KeepaliveCountMax: prof.SSH.KeepaliveCountMax,
		MaxLineBytes:      srv.TargetLineBytes,
		MaxOutputBytes:    int64(srv.TargetOutputBytes),
		Target:            installer.Target{Host: ip, Port: prof.SSH.Port, User: prof.SSH.User},
		Signers:           []ssh.Signer{p.signer},
		IdentityFile:      p.keyFile,
		HostKey:           hostKey,
		SSHOptions:        prof.SSH.Options,
		Phases:            prof.Phases,
		Flake:             prof.Flake,
		ExtraFiles:        prof.ExtraFiles,
		AfterInstall:      prof.AfterInstall,
	}
	// Copies: the options of one install never share memory with the
	// config, which a reload replaces.
	if sp := prof.StorePaths; sp != nil {
		c := *sp
		o.StorePaths = &c
	}
	o.DiskKeys = slices.Clone(prof.DiskEncryptionKeys)
	o.Chowns = slices.Clone(prof.Chown)
	return o, nil
}

// machineSink writes the engine's steps into the machine's state,
// events and log. The log of one install keeps its first head and last
// tail lines; the lines between become one line that counts them.
type machineSink struct {
	p     *Provisioner
	ctx   context.Context
	mac   string
	phase string
	start time.Time

	mu         sync.Mutex
	base       int64 // the machine's last log line before this install
	head, tail int
	lines      int // lines of this install so far
	untrimmed  int // lines since the last trim
}

func (p *Provisioner) newSink(ctx context.Context, mac string) *machineSink {
	srv := p.cfg.Load().Server
	s := &machineSink{p: p, ctx: ctx, mac: mac, head: max(srv.InstallLogHead, 1), tail: max(srv.InstallLogTail, 1)}
	if seq, err := p.store.LastLogSeq(ctx, mac); err == nil {
		s.base = seq
	} else {
		p.log.Warn("reading the install log failed", "mac", mac, "err", err)
	}
	return s
}

// trim drops the middle of the install's log once it has grown by a
// quarter of its tail since the last time, so that the store holds at
// most head + 1 + 1.25 tail lines of it.
func (s *machineSink) trim(force bool) {
	dropped := s.lines - s.head - s.tail
	if dropped <= 0 || !force && s.untrimmed < s.tail/4+1 {
		return
	}
	s.untrimmed = 0
	marker := fmt.Sprintf("[… %d lines dropped: the install log keeps the first %d and the last %d lines (server.install_log_head, server.install_log_tail) …]", dropped, s.head, s.tail)
	if err := s.p.store.TrimLog(s.ctx, s.mac, s.base, s.head, s.tail, marker); err != nil {
		s.p.storeFailed(s.mac, "trimming the install log", err)
	}
}

// finish trims the log to its exact bounds once the install ended.
func (s *machineSink) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trim(true)
}

func (s *machineSink) PhaseStarted(phase string, index, total int) {
	s.phase, s.start = phase, time.Now()
	_ = s.p.transition(s.ctx, s.mac, store.StateInstalling, phase, "",
		fmt.Sprintf("phase %d/%d: %s", index, total, phase))
}

func (s *machineSink) PhaseDone(phase string, elapsed time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	s.p.metrics.phaseSeconds.WithLabelValues(phase, result).Observe(elapsed.Seconds())
	msg := fmt.Sprintf("phase %s done in %s", phase, elapsed.Round(time.Millisecond))
	if err != nil {
		msg = fmt.Sprintf("phase %s failed after %s", phase, elapsed.Round(time.Millisecond))
	}
	s.p.event(s.ctx, s.mac, phase, msg)
}

func (s *machineSink) Line(phase, stream, line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.p.store.AppendLog(s.ctx, s.mac, fmt.Sprintf("[%s] %s", phase, line)); err != nil {
		s.p.storeFailed(s.mac, "appending to the install log", err)
		return
	}
	s.p.storeOK()
	s.lines++
	s.untrimmed++
	s.trim(false)
}

func (s *machineSink) Progress(phase string, done, total int64) {}

// pollSSH finds an installer that does not call back: after the machine
// fetched its initrds, its SSH port is tried at the address it booted
// from until the host key that this boot injected answers. Any other
// host key is refused, and said so once.
func (p *Provisioner) pollSSH(ctx context.Context, b store.Boot, addr netip.Addr) {
	defer func() {
		p.mu.Lock()
		delete(p.polling, b.Token)
		p.mu.Unlock()
	}()
	port, user := p.discPort, ""
	if m, _, _ := p.machineFor(ctx, p.cfg.Load(), b.MAC); m != nil {
		if prof := p.cfg.Load().Profile(m.Profile); prof != nil {
			if prof.SSH.Port != 0 {
				port = prof.SSH.Port
			}
			user = prof.SSH.User
		}
	}
	want, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKeyPublic))
	if err != nil {
		p.log.Error("cannot poll SSH: the boot's host key does not parse", "mac", b.MAC, "err", err)
		return
	}
	target := net.JoinHostPort(addr.Unmap().String(), strconv.Itoa(port))
	deadline := time.Now().Add(tokenLifetime)
	warned := false
	wait := p.pollWait
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = 5 * time.Second
		if _, err := p.liveBoot(ctx, b.Token); err != nil {
			if errors.Is(err, errTokenExpired) {
				break
			}
			return // called back or superseded
		}
		err := installer.CheckSSH(ctx, installer.Target{Host: addr.Unmap().String(), Port: port, User: user}, []ssh.Signer{p.signer}, want)
		if err == nil {
			if err := p.claim(ctx, b, addr, "ssh-poll"); err != nil {
				p.log.Debug("ssh poll lost to callback", "mac", b.MAC, "err", err)
			}
			return
		}
		if errors.Is(err, installer.ErrHostKeyMismatch) && !warned {
			warned = true
			p.event(ctx, b.MAC, "", fmt.Sprintf("SSH at %s answers with a host key other than the one this boot injected: refusing it", target))
		}
	}
	// Without this the machine would sit in booting with no word why.
	p.event(ctx, b.MAC, "", fmt.Sprintf("gave up polling SSH at %s: no installer answered with the injected host key while the boot token lived (%s); boot the machine into PXE again", target, tokenLifetime))
}
