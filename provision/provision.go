// Package provision is the one place where the protocol servers meet the
// machine inventory: it decides, for each machine that asks, whether it
// boots and what, issues the per-boot token and host key, accepts the
// installer's callback (or notices the installer on its own), and drives
// the install engine to the end, recording every step in the state store.
// It binds every boot to the addresses DHCP saw the machine take, and
// answers a boot's secrets only to them (docs/security.md).
// Machines the config does not list are decided by rules (rules
// package) on their DHCP context or, after discovery, on the hardware
// facts it reads over SSH, or by an operator's assignment
// (discovery.go).
//
// It owns no sockets. dhcp asks it through dhcp.Decider and tells it of
// addresses through dhcp.Binder, httpboot asks through httpboot.Booter,
// admin through admin.Inventory; cmd/pxe-anywhere wires them.
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

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// tokenLifetime bounds how long a boot token stays good for the extra
// initrd and the callback: a machine that has not called back by then
// has failed to boot, and an old token must not unlock a host key.
const tokenLifetime = 2 * time.Hour

// ownerWindow is how long a boot whose extra initrd was not fetched yet
// still belongs to the address that asked for its script. Within it, a
// script request for the same MAC from another address is refused: it
// is either an impostor racing the machine, or the machine moved, and
// only an operator can tell (machines reinstall). Past it, the boot
// plainly failed and another bound address may start a new one.
const ownerWindow = 5 * time.Minute

// sweepEvery is how often expired boots lose their private keys and
// expired DHCP bindings are dropped from the store.
const sweepEvery = time.Minute

// Provisioner implements dhcp.Decider, dhcp.Binder, httpboot.Booter and
// admin.Inventory over one state store and one engine.
type Provisioner struct {
	store   store.Store
	cfg     atomic.Pointer[profiles.Config]
	signer  ssh.Signer
	keyFile string
	authKey []byte // our install key in authorized_keys form
	log     *slog.Logger
	metrics *Metrics
	engine  Engine

	queue *installQueue // installs, at most server.max_installs at once
	feed  *feed         // machine changes for the operator's live views

	bindings *bindingTable
	unknown  *unknownMACs  // unknown MACs ignored, for the log
	contexts *dhcpContexts // DHCP context of unlisted machines DHCP let boot, for the rules
	assigned assignedMACs  // unlisted MACs with a profile assignment (assigned.go)
	assignMu sync.Mutex    // one writer of assigned at a time

	mu       sync.Mutex
	limited  *lograte.Limiter  // logLimited
	firmware map[string]string // configured MAC → firmware DHCP saw last (bounded by the config)
	// firmwareWrites holds a token per firmware note being written.
	firmwareWrites chan struct{}
	polling        map[string]context.CancelFunc // token → SSH poller of a machine without callback
	wg             sync.WaitGroup                // installs and pollers
	bg             sync.WaitGroup                // the sweeper, which runs until ctx ends
	baseCtx        context.Context
	pollWait       time.Duration
	discPort       int // Options.DiscoverSSHPort

	// State writes: writeErr says why the last one failed ("" when it
	// worked), writeMAC on which machine; pending holds final states
	// that could not be written at all, until writes work again.
	writeMu  sync.Mutex
	flushMu  sync.Mutex // one flushPending at a time: each state once
	writeErr string
	writeMAC string
	pending  map[string]pendingState

	// serverID names this server in install claims (claims.go); held
	// counts the holders of each claim this server has.
	serverID string
	claimMu  sync.Mutex
	held     map[string]int
	lastBeat time.Time // the last heartbeat the store took
}

// pendingState is a machine's final state kept in memory because the
// store refused it.
type pendingState struct {
	phase, errMsg, msg string
}

// Engine runs one install; installer.Run in production.
type Engine func(ctx context.Context, opts installer.Options, sink installer.Sink) error

// Options are what New needs beyond the config.
type Options struct {
	Store  store.Store
	Signer ssh.Signer // the install key that every booted installer trusts
	// KeyFile is the same key as a file, for the OpenSSH that nix copy
	// starts.
	KeyFile string
	Log     *slog.Logger
	Metrics *Metrics // may be nil
	Engine  Engine   // nil: installer.Run
	// DiscoverSSHPort is where the discover image's sshd listens, for
	// reading facts; zero means 22.
	DiscoverSSHPort int
	// PollDelay is how long to wait for a callback after a machine
	// fetched its extra initrd before polling its SSH port; images
	// without a callback rely on it. Zero means 20 s.
	PollDelay time.Duration
	// ServerID names this server among those that share the store
	// (server.id); "" means "local".
	ServerID string
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
	if o.DiscoverSSHPort == 0 {
		o.DiscoverSSHPort = 22
	}
	if o.PollDelay == 0 {
		o.PollDelay = 20 * time.Second
	}
	p := &Provisioner{
		store:          o.Store,
		signer:         o.Signer,
		keyFile:        o.KeyFile,
		authKey:        ssh.MarshalAuthorizedKey(o.Signer.PublicKey()),
		log:            o.Log,
		metrics:        o.Metrics,
		engine:         o.Engine,
		feed:           newFeed(),
		bindings:       newBindingTable(),
		limited:        &lograte.Limiter{Log: o.Log, Every: time.Minute},
		firmware:       map[string]string{},
		firmwareWrites: make(chan struct{}, firmwareWrites),
		unknown:        newUnknownMACs(),
		contexts:       newRecent[dhcpSeen](),
		polling:        map[string]context.CancelFunc{},
		pending:        map[string]pendingState{},
		baseCtx:        ctx,
		pollWait:       o.PollDelay,
		discPort:       o.DiscoverSSHPort,
		serverID:       o.ServerID,
		held:           map[string]int{},
	}
	if p.serverID == "" {
		p.serverID = "local"
	}
	p.queue = newInstallQueue(ctx, cfg.Server.MaxInstalls, &p.wg)
	n, err := markInterrupted(ctx, p.store, p.serverID)
	if err != nil {
		return nil, fmt.Errorf("mark interrupted installs: %w", err)
	}
	if n > 0 {
		p.log.Warn("installs cut off by the previous server run are marked failed", "count", n)
	}
	if err := p.reload(ctx, cfg, false); err != nil {
		return nil, err
	}
	if err := p.loadBindings(ctx); err != nil {
		return nil, fmt.Errorf("load DHCP bindings: %w", err)
	}
	p.sweep(ctx) // reads the assignments for DHCP too (reload did already)
	if err := p.resumePolls(ctx); err != nil {
		return nil, fmt.Errorf("resume SSH polling: %w", err)
	}
	if weak := cfg.WeakTrust(); len(weak) > 0 {
		p.log.Warn("trust: mac: boots of these machines are bound to the MAC alone, not to an address DHCP gave; any host that reaches the boot listener can ask for them", "where", weak)
	}
	p.bg.Add(2)
	go func() {
		defer p.bg.Done()
		p.claimLoop(ctx)
	}()
	if w, ok := o.Store.(watcher); ok {
		p.bg.Add(1)
		go func() {
			defer p.bg.Done()
			p.watch(ctx, w)
		}()
	}
	go func() {
		defer p.bg.Done()
		t := time.NewTicker(sweepEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.sweep(ctx)
			}
		}
	}()
	return p, nil
}

// sweep erases the private keys of expired boots, drops expired
// bindings from the store, prunes old boots and events beyond the
// configured limits, and logs how many unknown MACs were ignored since
// the last line about them.
func (p *Provisioner) sweep(ctx context.Context) {
	cfg := p.cfg.Load()
	cutoff := time.Now().Add(-tokenLifetime)
	if n, err := p.store.EraseExpiredKeys(ctx, cutoff); err != nil {
		p.log.Warn("erasing expired boot keys failed", "err", err)
	} else if n > 0 {
		p.log.Info("expired boots: private host keys erased", "count", n)
	}
	if _, err := p.store.Bindings(ctx, time.Now()); err != nil {
		p.log.Warn("pruning DHCP bindings failed", "err", err)
	}
	if n, err := p.store.Prune(ctx, cfg.Server.KeepBoots, cfg.Server.KeepEvents, cutoff); err != nil {
		p.log.Warn("pruning old boots and events failed", "err", err)
	} else if n.Boots+n.Events > 0 {
		p.log.Info("pruned old boots and events (server.keep_boots, server.keep_events)", "boots", n.Boots, "events", n.Events)
	}
	if n := p.unknown.due(); n > 0 {
		p.log.Info("ignored unknown machines (server.unknown_machines: ignore), not logged one by one", "count", n)
	}
	p.refreshAssigned(ctx)
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
		if m.State != store.StateBooting {
			continue
		}
		latest, err := p.store.LatestBoot(ctx, m.MAC)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		b, err := p.liveBoot(ctx, latest.Token)
		if err != nil || b.InitrdAt == nil {
			continue // used, expired, or never fetched: only a new PXE boot helps
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
// the config keep their records; forget removes them. The rules run
// again for the machines that are not installed yet (reevaluate).
func (p *Provisioner) Reload(ctx context.Context, cfg *profiles.Config) error {
	return p.reload(ctx, cfg, true)
}

func (p *Provisioner) reload(ctx context.Context, cfg *profiles.Config, start bool) error {
	for _, m := range cfg.Machines {
		if _, err := p.store.UpsertMachine(ctx, m.MAC.String(), m.Hostname, m.Profile); err != nil {
			return fmt.Errorf("register machine %s: %w", m.MAC, err)
		}
	}
	p.cfg.Store(cfg)
	p.checkConfigView(ctx, cfg)
	if err := p.reevaluate(ctx, cfg, start); err != nil {
		return fmt.Errorf("running the rules again: %w", err)
	}
	return nil
}

// Config is the configuration in force.
func (p *Provisioner) Config() *profiles.Config { return p.cfg.Load() }

// Wait blocks until every install and poller started so far has ended,
// and, once New's context is done, the background sweeper too.
func (p *Provisioner) Wait() {
	p.wg.Wait()
	if p.baseCtx.Err() != nil {
		p.bg.Wait()
	}
}

// Decide answers dhcp: boot the machines the config knows, and unknown
// ones only when the policy says so. Ignored unknown MACs are logged at
// most a line a minute (see unknownMACs).
func (p *Provisioner) Decide(ctx context.Context, m dhcp.Machine) dhcp.Decision {
	cfg := p.cfg.Load()
	mac := m.MAC.String()
	if known := cfg.MachineByMAC(m.MAC); known != nil {
		if awaitsHTTPBoot(known, m.Firmware) {
			p.metrics.dhcpDecisions.WithLabelValues("known-awaits-httpboot").Inc()
			return dhcp.Ignore
		}
		p.metrics.dhcpDecisions.WithLabelValues("known").Inc()
		p.noteFirmware(ctx, mac, m.Firmware.Arch.String())
		return dhcp.Boot
	}
	decision, label := p.decideUnlisted(cfg, m)
	if decision == dhcp.Ignore {
		if logNow, others := p.unknown.seen(mac, cfg.Server.MaxUnknownMACs); logNow {
			args := []any{"mac", mac, "firmware", m.Firmware, "interface", m.Interface}
			if others > 0 {
				args = append(args, "also_ignored", others)
			}
			p.log.Info("ignoring unknown machine (server.unknown_machines: ignore)", args...)
		}
	}
	p.metrics.dhcpDecisions.WithLabelValues(label).Inc()
	return decision
}

// noteFirmware records the firmware DHCP saw a configured machine boot
// with, for the operator's views; it writes only when that changed. The
// write runs beside the DHCP loop, bounded in time and in number: a
// slow store must not hold up leases, and a note that finds
// firmwareWrites busy is dropped (the next change writes again).
func (p *Provisioner) noteFirmware(ctx context.Context, mac, fw string) {
	p.mu.Lock()
	same := p.firmware[mac] == fw
	p.firmware[mac] = fw
	p.mu.Unlock()
	if same {
		return
	}
	select {
	case p.firmwareWrites <- struct{}{}:
	default:
		p.logLimited("firmware", "recording a machine's firmware skipped: earlier writes still wait for the store", "mac", mac)
		p.mu.Lock()
		delete(p.firmware, mac) // written at its next DHCP request
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() { <-p.firmwareWrites }()
		ctx, cancel := context.WithTimeout(p.baseCtx, 10*time.Second) // the server stopping ends it
		defer cancel()
		if err := p.store.SetFirmware(ctx, mac, fw); err != nil {
			p.logLimited("firmware", "recording a machine's firmware failed", "mac", mac, "err", err)
			p.mu.Lock()
			if p.firmware[mac] == fw {
				delete(p.firmware, mac) // written at its next DHCP request
			}
			p.mu.Unlock()
		}
	}()
}

// firmwareWrites bounds the firmware notes in flight.
const firmwareWrites = 8

// Boot chooses the iPXE script of one machine. Installed machines boot
// their disk unless a reinstall was asked for; everything else that the
// config maps to a profile gets the installer with a fresh token, if
// the request comes from an address that DHCP gave to that MAC.
func (p *Provisioner) Boot(ctx context.Context, r httpboot.BootRequest) (httpboot.BootPlan, error) {
	cfg := p.cfg.Load()
	mac := r.MAC.String()
	m, _, err := p.machineFor(ctx, cfg, mac)
	if err != nil {
		return httpboot.BootPlan{}, p.unavailable(mac, "reading its assignment", err)
	}
	if m == nil {
		if m, err = p.byRule(ctx, cfg, mac, r); err != nil {
			return httpboot.BootPlan{}, err
		}
	}
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
	prof := cfg.Profile(m.Profile)
	if prof == nil {
		return httpboot.BootPlan{}, fmt.Errorf("machine %s: profile %q is not in the config", mac, m.Profile)
	}
	// The address is checked before anything is recorded: a stranger's
	// request must leave the machine's boots as they were.
	if err := p.checkSource(ctx, mac, r.RemoteAddr, cfg.TrustOf(prof), "boot script"); err != nil {
		return httpboot.BootPlan{}, err
	}
	rec, err := p.store.UpsertMachine(ctx, mac, m.Hostname, m.Profile)
	if err != nil {
		// The database away (a restart): the machine retries.
		return httpboot.BootPlan{}, p.unavailable(mac, "registering the machine", err)
	}
	if rec.Held {
		p.event(ctx, mac, "", fmt.Sprintf("PXE boot from %s refused: the machine is held after a security event; `pxe-anywhere machines reinstall %s` arms it again", addrString(r.RemoteAddr), mac))
		p.metrics.boots.WithLabelValues("held").Inc()
		return httpboot.BootPlan{Action: httpboot.ActionLocal, Hostname: m.Hostname}, nil
	}
	if rec.State == store.StateInstalled && !rec.Reinstall {
		p.event(ctx, mac, "", "PXE boot: installed, booting from local disk")
		p.metrics.boots.WithLabelValues("local").Inc()
		return httpboot.BootPlan{Action: httpboot.ActionLocal, Hostname: m.Hostname}, nil
	}
	busy := p.queue.busy(mac)
	if holder := p.claimedByOther(ctx, mac); !busy && holder != "" {
		// Another server that shares the store installs it: this one
		// must neither settle the install as stale nor start a second.
		p.event(ctx, mac, "", fmt.Sprintf("PXE boot from %s to server %s while server %s holds the machine's install claim: left alone, local boot", addrString(r.RemoteAddr), p.serverID, holder))
		p.metrics.boots.WithLabelValues("local").Inc()
		return httpboot.BootPlan{Action: httpboot.ActionLocal, Hostname: m.Hostname}, nil
	}
	if !busy && rec.State == store.StateInstalling {
		// No engine runs for it: a state write failed when its install
		// ended. It must not stay unbootable until a restart.
		if err := p.settleStale(ctx, rec); err != nil {
			return httpboot.BootPlan{}, p.unavailable(mac, "settling a stale install", err)
		}
	}
	if busy {
		// The machine rebooted in the middle of its own install, or
		// another host speaks for it: booting the installer again would
		// race the running engine, so let it fall through to whatever
		// it has, and say so loudly.
		p.securityEvent(ctx, mac, fmt.Sprintf("conflict: a PXE boot from %s asked for a script while the install of %s runs: if the machine did not reboot by itself, another host is using its identity; local boot", addrString(r.RemoteAddr), mac))
		return httpboot.BootPlan{Action: httpboot.ActionLocal, Hostname: m.Hostname}, nil
	}
	if err := p.checkOwner(ctx, mac, r.RemoteAddr); err != nil {
		return httpboot.BootPlan{}, err
	}
	token, err := p.newBoot(ctx, mac, r, "install")
	if err != nil {
		return httpboot.BootPlan{}, p.unavailable(mac, "recording a boot", err)
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

// discover boots an unknown machine into the discover image: once it
// is up, its facts are read and the rules run again (discovered); an
// operator may assign it a profile too.
func (p *Provisioner) discover(ctx context.Context, cfg *profiles.Config, mac string, r httpboot.BootRequest) (httpboot.BootPlan, error) {
	if err := p.checkSource(ctx, mac, r.RemoteAddr, cfg.TrustOf(nil), "boot script"); err != nil {
		return httpboot.BootPlan{}, err
	}
	// Every discovered MAC is a row that stays until an operator
	// forgets it, and a host can invent MACs: their number is bounded.
	rec, err := p.store.Discover(ctx, mac, cfg.Server.MaxDiscovered)
	if errors.Is(err, store.ErrLimit) {
		p.metrics.boots.WithLabelValues("discover-refused").Inc()
		p.logLimited("discover-limit", "discovery refused: server.max_discovered machines without a profile are recorded already; `pxe-anywhere machines forget MAC` makes room, or raise the limit", "mac", mac, "limit", cfg.Server.MaxDiscovered)
		return httpboot.BootPlan{Action: httpboot.ActionIgnore}, nil
	}
	if err != nil {
		return httpboot.BootPlan{}, p.unavailable(mac, "recording a discovery", err)
	}
	if rec.Held {
		p.event(ctx, mac, "", fmt.Sprintf("PXE boot from %s refused: the machine is held after a security event; `pxe-anywhere machines reinstall %s` arms it again", addrString(r.RemoteAddr), mac))
		return httpboot.BootPlan{Action: httpboot.ActionLocal}, nil
	}
	if err := p.checkOwner(ctx, mac, r.RemoteAddr); err != nil {
		return httpboot.BootPlan{}, err
	}
	seen, _ := p.contexts.get(mac)
	seen.Addr = addrString(r.RemoteAddr)
	p.saveDHCP(ctx, mac, seen)
	token, err := p.newBoot(ctx, mac, r, "discover")
	if err != nil {
		return httpboot.BootPlan{}, p.unavailable(mac, "recording a boot", err)
	}
	p.metrics.boots.WithLabelValues("discover").Inc()
	return httpboot.BootPlan{Action: httpboot.ActionInstall, Image: cfg.Server.DiscoverImage, Token: token}, nil
}

// checkSource refuses a request for mac's boot that comes from an
// address DHCP did not give to mac, unless the machine's trust is the
// MAC alone. A refusal leaves an event on the machine.
func (p *Provisioner) checkSource(ctx context.Context, mac string, remote netip.Addr, trust profiles.Trust, what string) error {
	if trust == profiles.TrustMAC {
		return nil
	}
	if _, ok := p.bindings.lookup(mac, remote); ok {
		return nil
	}
	p.metrics.refusals.WithLabelValues(what, "not-bound").Inc()
	held := "none"
	if addrs := p.bindings.addrs(mac); len(addrs) > 0 {
		held = strings.Join(addrs, ", ")
	}
	p.securityEvent(ctx, mac, fmt.Sprintf("%s asked by %s, which DHCP did not give to %s (its addresses: %s): refused", what, addrString(remote), mac, held))
	return fmt.Errorf("%w: %s is not bound to %s", httpboot.ErrForbidden, addrString(remote), mac)
}

// checkOwner refuses a new boot for mac from remote while the live boot
// of mac belongs to another address (see ownerWindow).
func (p *Provisioner) checkOwner(ctx context.Context, mac string, remote netip.Addr) error {
	latest, err := p.store.LatestBoot(ctx, mac)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return p.unavailable(mac, "reading its latest boot", err)
	}
	b, err := p.liveBoot(ctx, latest.Token)
	if err != nil || b.IP == addrString(remote) {
		return nil // no live boot, or the machine booting again
	}
	if b.InitrdAt == nil && time.Since(b.CreatedAt) > ownerWindow {
		return nil
	}
	p.metrics.refusals.WithLabelValues("boot script", "owned").Inc()
	p.securityEvent(ctx, mac, fmt.Sprintf("conflict: boot script asked by %s while boot %s of %s from %s is live: refused; if the machine really moved, `pxe-anywhere machines reinstall %s` voids that boot",
		addrString(remote), httpboot.ShortToken(b.Token), mac, b.IP, mac))
	return fmt.Errorf("%w: %s has a live boot at %s", httpboot.ErrForbidden, mac, b.IP)
}

// newBoot records a boot: a random token and a host key made for this
// boot alone, which the extra initrd carries and the engine pins. The
// machine's earlier boots that were never used are voided with it.
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
	boot := store.Boot{
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
	if b, ok := p.bindings.lookup(mac, r.RemoteAddr); ok {
		msg += " (DHCP binding on " + b.via + ")"
	}
	if err := p.transition(ctx, mac, store.StateBooting, "", "", msg); err != nil {
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

// Why a boot token no longer opens anything.
var (
	errTokenExpired    = errors.New("boot token expired")
	errTokenSuperseded = errors.New("boot token superseded by a newer boot")
)

// liveBoot returns the boot of token if it may still be used: the latest
// boot of its machine, not called back yet, not voided, and young
// enough.
func (p *Provisioner) liveBoot(ctx context.Context, token string) (store.Boot, error) {
	b, err := p.store.BootByToken(ctx, token)
	if err != nil {
		return store.Boot{}, err
	}
	return p.checkLive(ctx, b)
}

func (p *Provisioner) checkLive(ctx context.Context, b store.Boot) (store.Boot, error) {
	switch {
	case b.VoidedAt != nil:
		return b, fmt.Errorf("%w: %s", store.ErrBootVoided, b.VoidReason)
	case b.UsedAt != nil:
		return b, store.ErrTokenUsed
	case time.Since(b.CreatedAt) > tokenLifetime:
		return b, errTokenExpired
	}
	latest, err := p.store.LatestBoot(ctx, b.MAC)
	if err != nil {
		return b, err
	}
	if latest.Token != b.Token {
		return b, errTokenSuperseded
	}
	return b, nil
}

// ExtraInitrd returns the files of the per-boot initrd, our install key
// and the boot's host key laid out as nixos-images restores them: only
// to the address that asked for the boot's script, and only once. A
// second request, from anywhere, means the key may be in two hands:
// the boot is voided and the machine held until an operator looks.
func (p *Provisioner) ExtraInitrd(ctx context.Context, token string, remote netip.Addr) ([]httpboot.ExtraFile, error) {
	b, err := p.store.BootByToken(ctx, token)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			p.logLimited("unknown-token", "extra initrd asked with an unknown token: refused", "remote", addrString(remote))
			return nil, fmt.Errorf("%w: %v", httpboot.ErrUnknownToken, err)
		}
		return nil, err
	}
	if b.InitrdAt != nil {
		return nil, p.secretsAskedTwice(ctx, b, remote)
	}
	if _, err := p.checkLive(ctx, b); err != nil {
		p.metrics.refusals.WithLabelValues("extra initrd", "not-live").Inc()
		p.securityEvent(ctx, b.MAC, fmt.Sprintf("extra initrd of boot %s asked by %s: refused (%v)", httpboot.ShortToken(token), addrString(remote), err))
		return nil, fmt.Errorf("%w: %v", httpboot.ErrForbidden, err)
	}
	if addrString(remote) != b.IP {
		p.metrics.refusals.WithLabelValues("extra initrd", "not-owner").Inc()
		p.securityEvent(ctx, b.MAC, fmt.Sprintf("extra initrd of boot %s asked by %s, but the boot belongs to %s: refused; the boot stays live", httpboot.ShortToken(token), addrString(remote), b.IP))
		return nil, fmt.Errorf("%w: boot belongs to %s", httpboot.ErrForbidden, b.IP)
	}
	taken, first, err := p.store.TakeInitrd(ctx, token)
	if err != nil {
		return nil, err
	}
	if !first {
		// Another request won the race for the same token.
		return nil, p.secretsAskedTwice(ctx, taken, remote)
	}
	p.event(ctx, b.MAC, "", fmt.Sprintf("fetched extra initrd (boot keys) from %s", b.IP))
	p.startPoll(taken, remote)
	return httpboot.RemoteAccessFiles(p.authKey, taken.HostKeyPrivate, []byte(taken.HostKeyPublic+"\n")), nil
}

// secretsAskedTwice voids boot b, whose extra initrd went out already,
// and holds its machine: nobody can tell which requester holds the key
// now, so no engine may trust it.
func (p *Provisioner) secretsAskedTwice(ctx context.Context, b store.Boot, remote netip.Addr) error {
	p.metrics.refusals.WithLabelValues("extra initrd", "twice").Inc()
	voided, err := p.store.VoidBoot(ctx, b.Token, "boot secrets requested twice")
	if err != nil {
		return err
	}
	p.stopPoll(b.Token)
	msg := fmt.Sprintf("SECURITY: boot secrets requested twice (boot %s, again by %s, first served to %s): install withheld; `pxe-anywhere machines reinstall %s` arms the machine again",
		httpboot.ShortToken(b.Token), addrString(remote), b.IP, b.MAC)
	if !voided {
		// Used or voided already: no engine can start from this boot
		// any more; the request is a replay, worth a word.
		p.securityEvent(ctx, b.MAC, msg+" (the boot had already ended)")
	} else if err := p.store.Hold(ctx, b.MAC, "boot secrets requested twice: install withheld", msg); err != nil {
		p.log.Error("holding a machine after a security event failed", "mac", b.MAC, "err", err)
	} else {
		p.log.Warn(msg, "mac", b.MAC, "security", true)
		p.publish(ctx, b.MAC)
	}
	return fmt.Errorf("%w: boot secrets requested twice", httpboot.ErrForbidden)
}

// Fetched checks an image download that carries a boot token: it must
// come from the address the boot belongs to, while the boot lives.
func (p *Provisioner) Fetched(ctx context.Context, f httpboot.Fetch) error {
	b, err := p.liveBoot(ctx, f.Token)
	if err != nil {
		p.metrics.refusals.WithLabelValues(f.What, "not-live").Inc()
		return fmt.Errorf("%w: %v", httpboot.ErrForbidden, err)
	}
	if addrString(f.Remote) != b.IP {
		p.metrics.refusals.WithLabelValues(f.What, "not-owner").Inc()
		p.securityEvent(ctx, b.MAC, fmt.Sprintf("%s of boot %s asked by %s, but the boot belongs to %s: refused", f.What, httpboot.ShortToken(f.Token), addrString(f.Remote), b.IP))
		return fmt.Errorf("%w: boot belongs to %s", httpboot.ErrForbidden, b.IP)
	}
	if f.Whole {
		p.event(ctx, b.MAC, "", fmt.Sprintf("fetched %s from %s", f.What, b.IP))
	}
	return nil
}

// startPoll starts the SSH poller of boot b at addr, unless it runs
// already. It stops at the server's stop or when claim cancels it.
func (p *Provisioner) startPoll(b store.Boot, addr netip.Addr) {
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

func (p *Provisioner) stopPoll(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cancel, ok := p.polling[token]; ok {
		cancel()
		delete(p.polling, token)
	}
}

// Callback is the installer saying it is up. The token is good once,
// from an address that DHCP gave to the machine, after the machine
// fetched its extra initrd; the engine connects to the address the
// callback came from, whatever its body says.
func (p *Provisioner) Callback(ctx context.Context, token string, remote, claimed netip.Addr) error {
	b, err := p.liveBoot(ctx, token)
	if err != nil {
		p.rejectToken(ctx, token, remote, err)
		return fmt.Errorf("%w: %v", httpboot.ErrForbidden, err)
	}
	refuse := func(why, msg string) error {
		p.metrics.callbacks.WithLabelValues("rejected").Inc()
		p.metrics.refusals.WithLabelValues("callback", why).Inc()
		p.securityEvent(ctx, b.MAC, msg)
		return fmt.Errorf("%w: %s", httpboot.ErrForbidden, why)
	}
	if claimed.IsValid() && claimed != remote.Unmap() {
		return refuse("address", fmt.Sprintf("callback of boot %s from %s names address %s: refused (the engine connects only to where the callback comes from)", httpboot.ShortToken(token), addrString(remote), claimed))
	}
	trust, err := p.trustOfMachine(ctx, b.MAC)
	if err != nil {
		// Never the server-wide trust in place of the profile's: a
		// store that fails must not weaken the check.
		return p.unavailable(b.MAC, "reading its profile", err)
	}
	if err := p.checkSource(ctx, b.MAC, remote, trust, "callback"); err != nil {
		p.metrics.callbacks.WithLabelValues("rejected").Inc()
		return err
	}
	if b.InitrdAt == nil {
		return refuse("no-initrd", fmt.Sprintf("callback of boot %s from %s before its extra initrd was fetched: refused", httpboot.ShortToken(token), addrString(remote)))
	}
	// The installer calls back from the address iPXE had, or from one
	// its own DHCP client took after iPXE fetched the extra initrd. A
	// binding older than that is not the installer's.
	if bb, _ := p.bindings.lookup(b.MAC, remote); trust != profiles.TrustMAC && addrString(remote) != b.IP && bb.seen.Before(*b.InitrdAt) {
		return refuse("stale-binding", fmt.Sprintf("callback of boot %s from %s, an address DHCP last gave to %s before the boot's extra initrd went out (%s): refused; an installer calls back from where iPXE booted or from a fresh DHCP lease",
			httpboot.ShortToken(token), addrString(remote), b.MAC, bb.seen.Format(time.RFC3339)))
	}
	return p.claim(ctx, b, remote, "callback")
}

// trustOfMachine is the trust in force for mac's profile.
func (p *Provisioner) trustOfMachine(ctx context.Context, mac string) (profiles.Trust, error) {
	cfg := p.cfg.Load()
	m, _, err := p.machineFor(ctx, cfg, mac)
	if err != nil {
		return "", err
	}
	if m != nil {
		return cfg.TrustOf(cfg.Profile(m.Profile)), nil
	}
	return cfg.TrustOf(nil), nil
}

// rejectToken leaves an event on the machine a bad token belongs to, if
// any: a replayed callback is worth an operator's attention.
func (p *Provisioner) rejectToken(ctx context.Context, token string, remote netip.Addr, why error) {
	p.metrics.callbacks.WithLabelValues("rejected").Inc()
	b, err := p.store.BootByToken(ctx, token)
	if err != nil {
		p.logLimited("unknown-token", "callback with an unknown token refused", "token", httpboot.ShortToken(token), "remote", addrString(remote))
		return
	}
	p.securityEvent(ctx, b.MAC, fmt.Sprintf("callback of boot %s from %s refused: %v", httpboot.ShortToken(token), addrString(remote), why))
}

// claim uses the boot's token and starts the install. It is the single
// door for both the callback and the SSH poller, so exactly one of them
// wins.
func (p *Provisioner) claim(ctx context.Context, b store.Boot, addr netip.Addr, how string) error {
	// Of several servers that share the store, the one that holds the
	// machine's claim drives it; the others leave it alone.
	if err := p.hold(ctx, b.MAC); err != nil {
		if errors.Is(err, store.ErrClaimed) {
			p.metrics.callbacks.WithLabelValues("rejected").Inc()
			return p.claimedElsewhere(ctx, b.MAC, fmt.Sprintf("installer of boot %s up at %s (%s)", httpboot.ShortToken(b.Token), addrString(addr), how), err)
		}
		return p.unavailable(b.MAC, "claiming the install", err)
	}
	defer p.let(b.MAC)
	if _, err := p.store.UseToken(ctx, b.Token); err != nil {
		// A poller that finds the token used lost to the callback:
		// nothing was refused, so nothing is worth an event.
		if how == "callback" {
			p.rejectToken(ctx, b.Token, addr, err)
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
	if err := p.transition(ctx, b.MAC, store.StateInstallerUp, "", "", fmt.Sprintf("installer up at %s (%s)", ip, how)); err != nil {
		return err
	}
	rec, err := p.store.Machine(ctx, b.MAC)
	if err != nil {
		return err
	}
	m, _, err := p.machineFor(ctx, p.cfg.Load(), b.MAC)
	if err != nil {
		return err
	}
	if m == nil || rec.Profile == "" {
		p.event(ctx, b.MAC, "", "discovered: the installer is up; reading its facts")
		p.discovered(b, ip)
		return nil
	}
	p.startInstall(b, m, ip)
	return nil
}

func mustMAC(s string) net.HardwareAddr {
	mac, _ := net.ParseMAC(s)
	return mac
}

// transition records a state change and tells the subscribers. A
// write that fails is tried again a few times (a busy or briefly full
// disk), then the failure shows on Health.
func (p *Provisioner) transition(ctx context.Context, mac string, to store.State, phase, errMsg, msg string) error {
	err := retryWrite(ctx, func() error { return p.store.Transition(ctx, mac, to, phase, errMsg, msg) })
	if err != nil {
		if permanent(err) {
			p.log.Error("state transition refused", "mac", mac, "to", to, "err", err)
		} else {
			p.storeFailed(mac, fmt.Sprintf("recording state %s", to), err)
		}
		return err
	}
	p.storeOK()
	p.log.Info(msg, "mac", mac, "state", to, "phase", phase)
	p.publish(ctx, mac)
	return nil
}

// writeBackoff are the pauses between the tries of a state write.
var writeBackoff = []time.Duration{100 * time.Millisecond, 400 * time.Millisecond, 1600 * time.Millisecond}

// retryWrite runs write until it works, fails for good, or the tries
// run out.
func retryWrite(ctx context.Context, write func() error) error {
	err := write()
	for _, d := range writeBackoff {
		if err == nil || permanent(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(d):
		}
		err = write()
	}
	return err
}

// permanent errors are answers, not faults: trying again changes
// nothing.
func permanent(err error) bool {
	return errors.Is(err, store.ErrNoTransition) || errors.Is(err, store.ErrNotFound)
}

// finalFail records that an install ended in failure. If even that
// write fails, the machine's state stays in memory until writes work
// again (Health and the machine's next PXE boot write it), and the log
// says so.
func (p *Provisioner) finalFail(ctx context.Context, mac, phase, errMsg, msg string) {
	err := p.transition(ctx, mac, store.StateFailed, phase, errMsg, msg)
	if err == nil || permanent(err) {
		return
	}
	p.writeMu.Lock()
	p.pending[mac] = pendingState{phase: phase, errMsg: errMsg, msg: msg}
	p.writeMu.Unlock()
	p.log.Error("the machine's final state cannot be written: kept in memory until state writes work again; /healthz reports it",
		"mac", mac, "state", store.StateFailed, "error", errMsg, "err", err)
}

// storeFailed notes a failed state write for Health.
func (p *Provisioner) storeFailed(mac, what string, err error) {
	p.writeMu.Lock()
	p.writeErr = fmt.Sprintf("state store fails: %s of %s: %v", what, mac, err)
	p.writeMAC = mac
	p.writeMu.Unlock()
	p.logLimited("state-store", "state store failed", "mac", mac, "what", what, "err", err)
}

// unavailable turns a failed read or write of the state store on the
// boot side into a 503 (the machine retries) and tells Health; answers
// such as a refused transition pass as they are.
func (p *Provisioner) unavailable(mac, what string, err error) error {
	if permanent(err) {
		return err
	}
	p.storeFailed(mac, what, err)
	return fmt.Errorf("%w: %s of %s: %v", httpboot.ErrUnavailable, what, mac, err)
}

// storeOK notes a state write that worked.
func (p *Provisioner) storeOK() {
	p.writeMu.Lock()
	was := p.writeErr
	p.writeErr = ""
	p.writeMu.Unlock()
	if was != "" {
		p.log.Info("state writes work again", "was", was)
	}
}

// Health is nil while state writes work. While they fail it tries one
// (the final states kept in memory, or a note on the machine whose
// write failed) and, if that fails too, says why: the boot side
// answers /healthz with 503 and the reason.
func (p *Provisioner) Health(ctx context.Context) error {
	p.writeMu.Lock()
	failing, mac := p.writeErr != "", p.writeMAC
	pend := len(p.pending) > 0
	p.writeMu.Unlock()
	if !failing && !pend {
		return nil
	}
	p.flushPending(ctx)
	p.writeMu.Lock()
	failing, pend = p.writeErr != "", len(p.pending) > 0
	p.writeMu.Unlock()
	if failing && !pend {
		err := p.store.AddEvent(ctx, mac, "", "state writes work again")
		if err == nil || errors.Is(err, store.ErrNotFound) {
			p.storeOK()
		} else {
			p.storeFailed(mac, "a note", err)
		}
	}
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	switch {
	case p.writeErr != "" && len(p.pending) > 0:
		return fmt.Errorf("%s; the final state of %d machine(s) is kept in memory only", p.writeErr, len(p.pending))
	case p.writeErr != "":
		return errors.New(p.writeErr)
	}
	return nil
}

// flushPending writes the final states kept in memory.
func (p *Provisioner) flushPending(ctx context.Context) {
	p.flushMu.Lock()
	defer p.flushMu.Unlock()
	p.writeMu.Lock()
	pending := make(map[string]pendingState, len(p.pending))
	for mac, ps := range p.pending {
		pending[mac] = ps
	}
	p.writeMu.Unlock()
	for mac, ps := range pending {
		err := p.store.Transition(ctx, mac, store.StateFailed, ps.phase, ps.errMsg, ps.msg+" (written late: state writes failed when the install ended)")
		if err != nil && !permanent(err) {
			p.storeFailed(mac, "recording state failed", err)
			return
		}
		p.writeMu.Lock()
		delete(p.pending, mac)
		p.writeMu.Unlock()
		if err == nil {
			p.storeOK()
			p.publish(ctx, mac)
		}
	}
}

// settleStale fails a machine recorded as installing with no engine
// running for it, so that its PXE boot is served: with the final state
// kept in memory if there is one, else with a note of its own.
func (p *Provisioner) settleStale(ctx context.Context, rec store.MachineRecord) error {
	p.flushPending(ctx)
	cur, err := p.store.Machine(ctx, rec.MAC)
	if err != nil || cur.State != store.StateInstalling {
		return err
	}
	const why = "install left unfinished: no engine runs for it (a state write failed when it ended)"
	return p.transition(ctx, rec.MAC, store.StateFailed, rec.Phase, why,
		"PXE boot of a machine recorded as installing with no engine running for it: "+why+"; marked failed, booting it again")
}

// securityEvent records a refusal or a conflict on a machine, when the
// store knows it, and always in the log, at warning level.
func (p *Provisioner) securityEvent(ctx context.Context, mac, msg string) {
	p.log.Warn(msg, "mac", mac, "security", true)
	if err := p.store.AddEvent(ctx, mac, "", msg); err != nil && !errors.Is(err, store.ErrNotFound) {
		p.log.Warn("recording event failed", "mac", mac, "err", err)
	}
}

// logLimited logs a warning at most once a minute per key (a kind of
// event, never a peer's address): strangers can send as many bad
// requests as they like, the log stays readable.
func (p *Provisioner) logLimited(key, msg string, args ...any) {
	p.limited.Warn(key, msg, args...)
}

// event records a note on a machine without changing its state.
func (p *Provisioner) event(ctx context.Context, mac, phase, msg string) {
	if err := p.store.AddEvent(ctx, mac, phase, msg); err != nil {
		p.log.Warn("recording event failed", "mac", mac, "err", err)
		return
	}
	p.log.Info(msg, "mac", mac)
}
