package provision

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// startInstall queues the install of a machine whose installer is up.
// The install runs under the server's context, not the callback's.
func (p *Provisioner) startInstall(b profiles.Boot, m *profiles.Machine, ip string) {
	p.mu.Lock()
	p.running[b.MAC] = true
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() {
			p.mu.Lock()
			delete(p.running, b.MAC)
			p.mu.Unlock()
		}()
		ctx := p.baseCtx
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			p.interrupted(b.MAC, "queued")
			return
		}
		defer func() { <-p.slots }()
		p.install(ctx, b, m, ip)
	}()
}

// interrupted records that the server stopped under an install. It uses
// a fresh context: the server's own is already done.
func (p *Provisioner) interrupted(mac, phase string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.transition(ctx, mac, profiles.StateFailed, phase, "interrupted: server stopped",
		fmt.Sprintf("install interrupted during %s: server stopped", phase))
}

func (p *Provisioner) install(ctx context.Context, b profiles.Boot, m *profiles.Machine, ip string) {
	cfg := p.cfg.Load()
	prof := cfg.Profile(m.Profile)
	fail := func(phase string, err error) {
		p.metrics.installs.WithLabelValues("failed").Inc()
		_ = p.transition(context.WithoutCancel(ctx), b.MAC, profiles.StateFailed, phase, err.Error(),
			fmt.Sprintf("install failed in %s: %v", phaseName(phase), err))
	}
	if prof == nil {
		fail("", fmt.Errorf("profile %q of machine %s is no longer in the config", m.Profile, b.MAC))
		return
	}
	opts, err := p.engineOptions(b, prof, ip)
	if err != nil {
		fail("", err)
		return
	}
	s := &machineSink{p: p, ctx: context.WithoutCancel(ctx), mac: b.MAC}
	attempts := prof.Retries + 1
	for attempt := 1; attempt <= attempts; attempt++ {
		if attempt > 1 {
			p.event(s.ctx, b.MAC, "", fmt.Sprintf("retrying the install, attempt %d of %d", attempt, attempts))
		}
		if err = p.engine(ctx, opts, s); err == nil || ctx.Err() != nil {
			break
		}
	}
	switch {
	case ctx.Err() != nil:
		p.interrupted(b.MAC, s.phase)
	case err != nil:
		phase := s.phase
		var pe *installer.PhaseError
		if errors.As(err, &pe) && pe.Phase != "" {
			phase = pe.Phase
		}
		fail(phase, err)
	default:
		p.metrics.installs.WithLabelValues("installed").Inc()
		_ = p.transition(s.ctx, b.MAC, profiles.StateInstalled, "", "",
			fmt.Sprintf("installed with profile %s; next PXE boot goes to the local disk", prof.Name))
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
func (p *Provisioner) engineOptions(b profiles.Boot, prof *profiles.Profile, ip string) (installer.Options, error) {
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKeyPublic))
	if err != nil {
		return installer.Options{}, fmt.Errorf("host key of boot: %w", err)
	}
	if _, err := netip.ParseAddr(ip); err != nil {
		return installer.Options{}, fmt.Errorf("installer address %q: %w", ip, err)
	}
	o := installer.Options{
		Target:       installer.Target{Host: ip, Port: prof.SSH.Port, User: prof.SSH.User},
		Signers:      []ssh.Signer{p.signer},
		IdentityFile: p.keyFile,
		HostKey:      hostKey,
		SSHOptions:   prof.SSH.Options,
		Phases:       prof.Phases,
		Flake:        prof.Flake,
		ExtraFiles:   prof.ExtraFiles,
		AfterInstall: prof.AfterInstall,
	}
	if sp := prof.StorePaths; sp != nil {
		o.StorePaths = &installer.StorePaths{Disko: sp.Disko, System: sp.System}
	}
	for _, k := range prof.DiskEncryptionKeys {
		o.DiskKeys = append(o.DiskKeys, installer.KeyFile{Remote: k.Remote, Local: k.Local})
	}
	for _, c := range prof.Chown {
		o.Chowns = append(o.Chowns, installer.Chown{Path: c.Path, UID: c.UID, GID: c.GID})
	}
	return o, nil
}

// machineSink writes the engine's steps into the machine's state,
// events and log.
type machineSink struct {
	p     *Provisioner
	ctx   context.Context
	mac   string
	phase string
	start time.Time
}

func (s *machineSink) PhaseStarted(phase string, index, total int) {
	s.phase, s.start = phase, time.Now()
	_ = s.p.transition(s.ctx, s.mac, profiles.StateInstalling, phase, "",
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
	if err := s.p.store.AppendLog(s.ctx, s.mac, fmt.Sprintf("[%s] %s", phase, line)); err != nil {
		s.p.log.Warn("appending install log failed", "mac", s.mac, "err", err)
	}
}

func (s *machineSink) Progress(phase string, done, total int64) {}

// pollSSH finds an installer that does not call back: after the machine
// fetched its initrds, its SSH port is tried at the address it booted
// from until the host key that this boot injected answers. Any other
// host key is refused, and said so once.
func (p *Provisioner) pollSSH(ctx context.Context, b profiles.Boot, addr netip.Addr) {
	defer func() {
		p.mu.Lock()
		delete(p.polling, b.Token)
		p.mu.Unlock()
	}()
	port, user := 22, ""
	if m := p.cfg.Load().MachineByMAC(mustMAC(b.MAC)); m != nil {
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
