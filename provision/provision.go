// Package provision is the one place where the protocol servers meet the
// machine inventory: it decides, for each machine that asks, whether it
// boots and what, issues the per-boot token and host key, accepts the
// installer's callback (or notices the installer on its own), and drives
// the install engine to the end, recording every step in the state store.
//
// It owns no sockets. dhcp asks it through dhcp.Decider, httpboot through
// httpboot.Booter, admin through admin.Inventory; cmd/pxe-anywhere wires them.
package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// tokenLifetime bounds how long a boot token stays good for the extra
// initrd and the callback: a machine that has not called back by then
// has failed to boot, and an old token must not unlock a host key.
const tokenLifetime = 2 * time.Hour

// Provisioner implements dhcp.Decider, httpboot.Booter and
// admin.Inventory over one state store and one engine.
type Provisioner struct {
	store   *profiles.Store
	cfg     atomic.Pointer[profiles.Config]
	signer  ssh.Signer
	keyFile string
	authKey []byte // our install key in authorized_keys form
	log     *slog.Logger
	metrics *Metrics
	engine  Engine

	slots chan struct{} // at most server.max_installs engines at once

	mu       sync.Mutex
	unknown  map[string]bool               // MACs already logged as unknown
	polling  map[string]context.CancelFunc // token → SSH poller of a machine without callback
	running  map[string]bool               // MAC → an install is running
	subs     map[chan admin.MachineView]struct{}
	wg       sync.WaitGroup
	baseCtx  context.Context
	pollWait time.Duration
}

// Engine runs one install; installer.Run in production.
type Engine func(ctx context.Context, opts installer.Options, sink installer.Sink) error

// Options are what New needs beyond the config.
type Options struct {
	Store  *profiles.Store
	Signer ssh.Signer // the install key that every booted installer trusts
	// KeyFile is the same key as a file, for the OpenSSH that nix copy
	// starts.
	KeyFile string
	Log     *slog.Logger
	Metrics *Metrics // may be nil
	Engine  Engine   // nil: installer.Run
	// PollDelay is how long to wait for a callback after a machine
	// fetched its extra initrd before polling its SSH port; images
	// without a callback rely on it. Zero means 20 s.
	PollDelay time.Duration
}

// New makes a Provisioner for cfg. ctx bounds every install and poller
// it starts. It marks installs that a previous run left unfinished as
// interrupted, registers the configured machines, and resumes the SSH
// polling of machines that were still booting.
func New(ctx context.Context, cfg *profiles.Config, o Options) (*Provisioner, error) {
	if o.Engine == nil {
		o.Engine = installer.Run
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.PollDelay == 0 {
		o.PollDelay = 20 * time.Second
	}
	p := &Provisioner{
		store:    o.Store,
		signer:   o.Signer,
		keyFile:  o.KeyFile,
		authKey:  ssh.MarshalAuthorizedKey(o.Signer.PublicKey()),
		log:      o.Log,
		metrics:  o.Metrics,
		engine:   o.Engine,
		slots:    make(chan struct{}, max(cfg.Server.MaxInstalls, 1)),
		unknown:  map[string]bool{},
		polling:  map[string]context.CancelFunc{},
		running:  map[string]bool{},
		subs:     map[chan admin.MachineView]struct{}{},
		baseCtx:  ctx,
		pollWait: o.PollDelay,
	}
	n, err := p.store.MarkInterrupted(ctx)
	if err != nil {
		return nil, fmt.Errorf("mark interrupted installs: %w", err)
	}
	if n > 0 {
		p.log.Warn("installs cut off by the previous server run are marked failed", "count", n)
	}
	if err := p.Reload(ctx, cfg); err != nil {
		return nil, err
	}
	if err := p.resumePolls(ctx); err != nil {
		return nil, fmt.Errorf("resume SSH polling: %w", err)
	}
	return p, nil
}

// resumePolls starts again the SSH pollers that a previous run lost:
// for every machine still booting whose latest boot's token is live, it
// polls the address that boot came from. Without this an image that
// does not call back would stay booting until its token expired. It is
// safe for a machine that never fetched its extra initrd: the poller
// accepts only the host key injected into that boot, and the callback
// still wins through claim.
func (p *Provisioner) resumePolls(ctx context.Context) error {
	recs, err := p.store.Machines(ctx)
	if err != nil {
		return err
	}
	for _, m := range recs {
		if m.State != profiles.StateBooting {
			continue
		}
		latest, err := p.store.LatestBoot(ctx, m.MAC)
		if errors.Is(err, profiles.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		b, err := p.liveBoot(ctx, latest.Token)
		if err != nil {
			continue // used or expired: only a new PXE boot helps
		}
		addr, err := netip.ParseAddr(b.IP)
		if err != nil {
			p.event(ctx, b.MAC, "", "server restarted during the boot, which has no address to poll: waiting for a callback only; PXE-boot the machine again if its image does not call back")
			continue
		}
		p.event(ctx, b.MAC, "", fmt.Sprintf("server restarted during the boot: polling SSH at %s again", b.IP))
		p.startPoll(b, addr)
	}
	return nil
}

// Reload switches to cfg and registers its machines. Machines that left
// the config keep their records; forget removes them.
func (p *Provisioner) Reload(ctx context.Context, cfg *profiles.Config) error {
	for _, m := range cfg.Machines {
		if _, err := p.store.UpsertMachine(ctx, m.MAC.String(), m.Hostname, m.Profile); err != nil {
			return fmt.Errorf("register machine %s: %w", m.MAC, err)
		}
	}
	p.cfg.Store(cfg)
	return nil
}

// Config is the configuration in force.
func (p *Provisioner) Config() *profiles.Config { return p.cfg.Load() }

// Wait blocks until every install and poller started so far has ended.
func (p *Provisioner) Wait() { p.wg.Wait() }

// Decide answers dhcp: boot the machines the config knows, and unknown
// ones only when the policy says so. An unknown MAC is logged once.
func (p *Provisioner) Decide(ctx context.Context, m dhcp.Machine) dhcp.Decision {
	cfg := p.cfg.Load()
	mac := m.MAC.String()
	if cfg.MachineByMAC(m.MAC) != nil {
		p.metrics.dhcpDecisions.WithLabelValues("known").Inc()
		return dhcp.Boot
	}
	if cfg.Server.UnknownMachines == profiles.UnknownIgnore {
		p.mu.Lock()
		first := !p.unknown[mac]
		p.unknown[mac] = true
		p.mu.Unlock()
		if first {
			p.log.Info("ignoring unknown machine (server.unknown_machines: ignore)", "mac", mac, "firmware", m.Firmware, "interface", m.Interface)
		}
		p.metrics.dhcpDecisions.WithLabelValues("ignored").Inc()
		return dhcp.Ignore
	}
	p.metrics.dhcpDecisions.WithLabelValues("unknown-" + string(cfg.Server.UnknownMachines)).Inc()
	return dhcp.Boot
}

// Boot chooses the iPXE script of one machine. Installed machines boot
// their disk unless a reinstall was asked for; everything else that the
// config maps to a profile gets the installer with a fresh token.
func (p *Provisioner) Boot(ctx context.Context, r httpboot.BootRequest) (httpboot.BootPlan, error) {
	cfg := p.cfg.Load()
	mac := r.MAC.String()
	m := cfg.MachineByMAC(r.MAC)
	if m == nil {
		switch cfg.Server.UnknownMachines {
		case profiles.UnknownDiscover:
			return p.discover(ctx, cfg, mac, r)
		case profiles.UnknownLocalBoot:
			return httpboot.BootPlan{Action: httpboot.ActionLocal}, nil
		default:
			return httpboot.BootPlan{Action: httpboot.ActionIgnore}, nil
		}
	}
	rec, err := p.store.UpsertMachine(ctx, mac, m.Hostname, m.Profile)
	if err != nil {
		return httpboot.BootPlan{}, err
	}
	if rec.State == profiles.StateInstalled && !rec.Reinstall {
		p.event(ctx, mac, "", "PXE boot: installed, booting from local disk")
		p.metrics.boots.WithLabelValues("local").Inc()
		return httpboot.BootPlan{Action: httpboot.ActionLocal, Hostname: m.Hostname}, nil
	}
	p.mu.Lock()
	busy := p.running[mac]
	p.mu.Unlock()
	if busy {
		// The machine rebooted in the middle of its own install (or a
		// second NIC asked): booting the installer again would race the
		// running engine, so let it fall through to whatever it has.
		p.event(ctx, mac, "", "PXE boot during a running install: local boot")
		return httpboot.BootPlan{Action: httpboot.ActionLocal, Hostname: m.Hostname}, nil
	}
	prof := cfg.Profile(m.Profile)
	if prof == nil {
		return httpboot.BootPlan{}, fmt.Errorf("machine %s: profile %q is not in the config", mac, m.Profile)
	}
	token, err := p.newBoot(ctx, mac, r, "install")
	if err != nil {
		return httpboot.BootPlan{}, err
	}
	p.metrics.boots.WithLabelValues("install").Inc()
	return httpboot.BootPlan{
		Action:   httpboot.ActionInstall,
		Image:    prof.Image,
		Token:    token,
		Params:   prof.KernelParams,
		Hostname: m.Hostname,
	}, nil
}

// discover boots an unknown machine into the installer so that an
// operator can look at it and assign a profile; it is never installed.
func (p *Provisioner) discover(ctx context.Context, cfg *profiles.Config, mac string, r httpboot.BootRequest) (httpboot.BootPlan, error) {
	if _, err := p.store.UpsertMachine(ctx, mac, "", ""); err != nil {
		return httpboot.BootPlan{}, err
	}
	token, err := p.newBoot(ctx, mac, r, "discover")
	if err != nil {
		return httpboot.BootPlan{}, err
	}
	p.metrics.boots.WithLabelValues("discover").Inc()
	return httpboot.BootPlan{Action: httpboot.ActionInstall, Image: cfg.Server.DiscoverImage, Token: token}, nil
}

// newBoot records a boot: a random token and a host key made for this
// boot alone, which the extra initrd carries and the engine pins.
func (p *Provisioner) newBoot(ctx context.Context, mac string, r httpboot.BootRequest, why string) (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	token := hex.EncodeToString(b[:])
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, "pxe-anywhere boot "+mac)
	if err != nil {
		return "", err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", err
	}
	boot := profiles.Boot{
		Token:          token,
		MAC:            mac,
		IP:             addrString(r.RemoteAddr),
		Firmware:       r.Arch,
		HostKeyPublic:  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))),
		HostKeyPrivate: pem.EncodeToMemory(block),
		CreatedAt:      time.Now(),
	}
	if err := p.store.CreateBoot(ctx, boot); err != nil {
		return "", fmt.Errorf("record boot of %s: %w", mac, err)
	}
	msg := fmt.Sprintf("PXE boot into the installer (%s) from %s", why, boot.IP)
	if err := p.transition(ctx, mac, profiles.StateBooting, "", "", msg); err != nil {
		return "", err
	}
	return token, nil
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

// liveBoot returns the boot of token if it may still be used: the latest
// boot of its machine, not called back yet, and young enough.
// errTokenExpired: the boot is older than tokenLifetime.
var errTokenExpired = errors.New("boot token expired")

func (p *Provisioner) liveBoot(ctx context.Context, token string) (profiles.Boot, error) {
	b, err := p.store.BootByToken(ctx, token)
	if err != nil {
		return profiles.Boot{}, err
	}
	if b.UsedAt != nil {
		return profiles.Boot{}, profiles.ErrTokenUsed
	}
	if time.Since(b.CreatedAt) > tokenLifetime {
		return profiles.Boot{}, errTokenExpired
	}
	latest, err := p.store.LatestBoot(ctx, b.MAC)
	if err != nil {
		return profiles.Boot{}, err
	}
	if latest.Token != b.Token {
		return profiles.Boot{}, errors.New("boot token superseded by a newer boot")
	}
	return b, nil
}

// ExtraInitrd returns the files of the per-boot initrd: our install key
// and the boot's host key, laid out as nixos-images restores them.
func (p *Provisioner) ExtraInitrd(ctx context.Context, token string) ([]httpboot.ExtraFile, error) {
	b, err := p.liveBoot(ctx, token)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", httpboot.ErrUnknownToken, err)
	}
	return httpboot.RemoteAccessFiles(p.authKey, b.HostKeyPrivate, []byte(b.HostKeyPublic+"\n")), nil
}

// Fetched notes what a booting machine downloaded. Once it has its extra
// initrd, its installer will come up soon: images that do not call back
// are then found by polling their SSH port.
func (p *Provisioner) Fetched(ctx context.Context, token, what string, remote netip.Addr) {
	b, err := p.liveBoot(ctx, token)
	if err != nil {
		return
	}
	p.event(ctx, b.MAC, "", fmt.Sprintf("fetched %s from %s", what, addrString(remote)))
	if what != httpboot.FetchedExtraInitrd {
		return
	}
	p.startPoll(b, remote)
}

// startPoll starts the SSH poller of boot b at addr, unless it runs
// already. It stops at the server's stop or when claim cancels it.
func (p *Provisioner) startPoll(b profiles.Boot, addr netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.polling[b.Token]; ok {
		return
	}
	pctx, cancel := context.WithCancel(p.baseCtx)
	p.polling[b.Token] = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer cancel()
		p.pollSSH(pctx, b, addr)
	}()
}

// Callback is the installer saying it is up. The token is good once.
func (p *Provisioner) Callback(ctx context.Context, token string, addr netip.Addr) error {
	b, err := p.liveBoot(ctx, token)
	if err != nil {
		p.rejectToken(ctx, token, err)
		return fmt.Errorf("%w: %v", httpboot.ErrForbidden, err)
	}
	if err := p.claim(ctx, b, addr, "callback"); err != nil {
		return err
	}
	return nil
}

// rejectToken leaves an event on the machine a bad token belongs to, if
// any: a replayed callback is worth an operator's attention.
func (p *Provisioner) rejectToken(ctx context.Context, token string, why error) {
	p.metrics.callbacks.WithLabelValues("rejected").Inc()
	b, err := p.store.BootByToken(ctx, token)
	if err != nil {
		p.log.Warn("callback with an unknown token refused", "token", httpboot.ShortToken(token))
		return
	}
	p.event(ctx, b.MAC, "", fmt.Sprintf("callback refused: %v", why))
}

// claim uses the boot's token and starts the install. It is the single
// door for both the callback and the SSH poller, so exactly one of them
// wins.
func (p *Provisioner) claim(ctx context.Context, b profiles.Boot, addr netip.Addr, how string) error {
	if _, err := p.store.UseToken(ctx, b.Token); err != nil {
		// A poller that finds the token used lost to the callback:
		// nothing was refused, so nothing is worth an event.
		if how == "callback" {
			p.rejectToken(ctx, b.Token, err)
		}
		return fmt.Errorf("%w: %v", httpboot.ErrForbidden, err)
	}
	p.metrics.callbacks.WithLabelValues(how).Inc()
	p.mu.Lock()
	if cancel, ok := p.polling[b.Token]; ok && how == "callback" {
		cancel()
	}
	delete(p.polling, b.Token)
	p.mu.Unlock()
	ip := addrString(addr)
	if err := p.transition(ctx, b.MAC, profiles.StateInstallerUp, "", "", fmt.Sprintf("installer up at %s (%s)", ip, how)); err != nil {
		return err
	}
	rec, err := p.store.Machine(ctx, b.MAC)
	if err != nil {
		return err
	}
	cfg := p.cfg.Load()
	m := cfg.MachineByMAC(mustMAC(b.MAC))
	if m == nil || rec.Profile == "" {
		p.event(ctx, b.MAC, "", "discovered: the installer stays up; assign a profile in the config to install")
		return nil
	}
	p.startInstall(b, m, ip)
	return nil
}

func mustMAC(s string) net.HardwareAddr {
	mac, _ := net.ParseMAC(s)
	return mac
}

// transition records a state change and tells the subscribers.
func (p *Provisioner) transition(ctx context.Context, mac string, to profiles.State, phase, errMsg, msg string) error {
	if err := p.store.Transition(ctx, mac, to, phase, errMsg, msg); err != nil {
		p.log.Error("state transition refused", "mac", mac, "to", to, "err", err)
		return err
	}
	p.log.Info(msg, "mac", mac, "state", to, "phase", phase)
	p.publish(ctx, mac)
	return nil
}

// event records a note on a machine without changing its state.
func (p *Provisioner) event(ctx context.Context, mac, phase, msg string) {
	if err := p.store.AddEvent(ctx, mac, phase, msg); err != nil {
		p.log.Warn("recording event failed", "mac", mac, "err", err)
		return
	}
	p.log.Info(msg, "mac", mac)
}
