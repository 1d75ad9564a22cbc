package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/rules"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// Who decided a machine's profile: the config, a rule, or an operator
// (machines assign). The config wins over the others, an assignment
// over nothing.
const (
	byConfig   = "config"
	byRule     = "rule"
	byOperator = "operator"
)

// factsTimeout bounds reading a discovered machine's facts.
const factsTimeout = 2 * time.Minute

// dhcpSeen is the DHCP context of a machine's latest boot request, as
// the rules and the store see it.
type dhcpSeen struct {
	Interface   string `json:"interface,omitempty"`
	Relay       string `json:"relay,omitempty"`
	Addr        string `json:"addr,omitempty"`
	CircuitID   string `json:"circuit_id,omitempty"`
	RemoteID    string `json:"remote_id,omitempty"`
	VendorClass string `json:"vendor_class,omitempty"`
	Arch        string `json:"arch,omitempty"`
	Firmware    string `json:"firmware,omitempty"`
}

// seenOf is what DHCP told of m. Option 93 tells the firmware and the
// architecture the machine will run.
func seenOf(m dhcp.Machine) dhcpSeen {
	s := dhcpSeen{Interface: m.Interface, CircuitID: m.CircuitID, RemoteID: m.RemoteID, VendorClass: m.VendorClass}
	if m.Relay.IsValid() {
		s.Relay = m.Relay.String()
	}
	if m.Addr.IsValid() {
		s.Addr = m.Addr.String() // authoritative mode: the address it is leased
	}
	switch m.Firmware.Arch {
	case dhcp.ArchBIOS:
		s.Firmware, s.Arch = "bios", "x86_64"
	case dhcp.ArchEFIx64:
		s.Firmware, s.Arch = "uefi", "x86_64"
	case dhcp.ArchEFI32:
		s.Firmware, s.Arch = "uefi", "i686"
	case dhcp.ArchEFIarm64:
		s.Firmware, s.Arch = "uefi", "aarch64"
	}
	return s
}

// input is what rules see of a machine: its DHCP context and, once it
// was discovered, its facts.
func (s dhcpSeen) input(mac string, facts *rules.Facts) rules.Input {
	in := rules.Input{MAC: mustMAC(mac), Facts: facts, Arch: s.Arch, Firmware: s.Firmware,
		DHCP: rules.DHCP{Interface: s.Interface, CircuitID: s.CircuitID, RemoteID: s.RemoteID, VendorClass: s.VendorClass}}
	in.DHCP.Relay, _ = netip.ParseAddr(s.Relay)
	in.DHCP.Addr, _ = netip.ParseAddr(s.Addr)
	if facts != nil {
		if facts.Arch != "" {
			in.Arch = facts.Arch
		}
		if facts.Firmware != "" {
			in.Firmware = facts.Firmware
		}
	}
	return in
}

// dhcpContexts remembers the DHCP context of the latest boot request of
// the machines DHCP let boot that the config does not list, until
// their script request comes, for at most max_unknown_macs machines.
type dhcpContexts = recent[dhcpSeen]

// decideUnlisted answers DHCP for a machine the config does not list:
// boot it when unknown machines are discovered, or when a rule that
// needs only DHCP context (a switch port, a MAC prefix) matches. The
// context is kept for the script request that follows.
func (p *Provisioner) decideUnlisted(cfg *profiles.Config, m dhcp.Machine) (dhcp.Decision, string) {
	mac := m.MAC.String()
	seen := seenOf(m)
	if p.assigned.has(mac) {
		// A rule or an operator gave it a profile: it boots whatever
		// the policy for unknown machines says now.
		p.contexts.put(mac, seen, cfg.Server.MaxUnknownMACs)
		return dhcp.Boot, "assigned"
	}
	if cfg.Server.UnknownMachines == profiles.UnknownDiscover {
		p.contexts.put(mac, seen, cfg.Server.MaxUnknownMACs)
		return dhcp.Boot, "unknown-discover"
	}
	if len(cfg.Rules) > 0 {
		if d := rules.Evaluate(cfg.Rules, seen.input(mac, nil)); d.Rule != nil {
			p.contexts.put(mac, seen, cfg.Server.MaxUnknownMACs)
			return dhcp.Boot, "rule"
		}
	}
	if cfg.Server.UnknownMachines == profiles.UnknownIgnore {
		return dhcp.Ignore, "ignored"
	}
	return dhcp.Boot, "unknown-" + string(cfg.Server.UnknownMachines)
}

// machineFor is the machine mac stands for: its config entry, or, for
// a machine that the config does not list, the profile a rule or an
// operator assigned (nil when none did). by says which.
func (p *Provisioner) machineFor(ctx context.Context, cfg *profiles.Config, mac string) (m *profiles.Machine, by string, err error) {
	if m := cfg.MachineByMAC(mustMAC(mac)); m != nil {
		return m, byConfig, nil
	}
	a, err := p.store.GetAssignment(ctx, mac)
	if errors.Is(err, store.ErrNotFound) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	rec, err := p.store.Machine(ctx, mac)
	if err != nil {
		return nil, "", err
	}
	if rec.Profile == "" || cfg.Profile(rec.Profile) == nil {
		return nil, "", nil
	}
	return &profiles.Machine{MAC: mustMAC(mac), Profile: rec.Profile, Hostname: rec.Hostname}, a.Source, nil
}

// storedInput is what the store knows of mac for the rules: its facts,
// if it was discovered, and the DHCP context of its latest boot.
func (p *Provisioner) storedInput(ctx context.Context, mac string) (dhcpSeen, *rules.Facts, error) {
	var seen dhcpSeen
	f, err := p.store.Facts(ctx, mac)
	if errors.Is(err, store.ErrNotFound) {
		return seen, nil, nil
	}
	if err != nil {
		return seen, nil, err
	}
	if f.DHCP != "" {
		_ = json.Unmarshal([]byte(f.DHCP), &seen) // written by saveDHCP
	}
	if f.Facts == "" {
		return seen, nil, nil
	}
	var facts rules.Facts
	if err := json.Unmarshal([]byte(f.Facts), &facts); err != nil {
		return seen, nil, fmt.Errorf("facts of %s in the store: %w", mac, err)
	}
	return seen, &facts, nil
}

// byRule decides, at a script request, whether a rule installs an
// unlisted machine: with the DHCP context of this boot and the facts
// of an earlier discovery, if any. On a match the machine is recorded
// and assigned, and returned; nil means nothing decided it (yet).
func (p *Provisioner) byRule(ctx context.Context, cfg *profiles.Config, mac string, r httpboot.BootRequest) (*profiles.Machine, error) {
	if len(cfg.Rules) == 0 {
		return nil, nil
	}
	seen, _ := p.contexts.get(mac)
	seen.Addr = addrString(r.RemoteAddr)
	_, facts, err := p.storedInput(ctx, mac)
	if err != nil {
		return nil, p.unavailable(mac, "reading its facts", err)
	}
	d := rules.Evaluate(cfg.Rules, seen.input(mac, facts))
	if d.Rule == nil {
		return nil, nil
	}
	// A stranger's request must leave no trace, as for listed machines.
	if err := p.checkSource(ctx, mac, r.RemoteAddr, cfg.TrustOf(cfg.Profile(d.Rule.Profile)), "boot script"); err != nil {
		return nil, err
	}
	// A host can invent MACs that match a MAC-prefix rule: past
	// server.max_discovered assigned machines, a new one is refused.
	err = p.store.AssignNew(ctx, mac, d.Rule.Profile, d.Hostname, byRule, d.Why+" (at the PXE request)", cfg.Server.MaxDiscovered)
	if errors.Is(err, store.ErrLimit) {
		p.logLimited("assign-limit", assignLimitMsg, "mac", mac)
		return nil, fmt.Errorf("%w: %d machines assigned by rules or operators (server.max_discovered)", httpboot.ErrForbidden, cfg.Server.MaxDiscovered)
	}
	if err != nil {
		return nil, p.unavailable(mac, "assigning it by rule", err)
	}
	p.saveDHCP(ctx, mac, seen)
	p.refreshAssigned(ctx)
	p.metrics.dhcpDecisions.WithLabelValues("rule").Inc()
	return &profiles.Machine{MAC: mustMAC(mac), Profile: d.Rule.Profile, Hostname: d.Hostname}, nil
}

// assignLimitMsg is the log line of a rule's match refused past
// server.max_discovered (store.AssignNew).
const assignLimitMsg = "a rule matched, but server.max_discovered machines are assigned already; `pxe-anywhere machines forget MAC` makes room, or raise the limit"

// saveDHCP keeps the DHCP context of a boot of an unlisted machine.
func (p *Provisioner) saveDHCP(ctx context.Context, mac string, seen dhcpSeen) {
	b, _ := json.Marshal(seen)
	if err := p.store.SaveDHCPContext(ctx, mac, string(b)); err != nil {
		p.logLimited("dhcp-context", "recording a boot's DHCP context failed", "mac", mac, "err", err)
	}
}

// discovered runs once the installer of a machine that nothing decided
// yet is up: it reads the machine's facts over SSH (only from the host
// key this boot injected), keeps them, and runs the rules again. A
// match installs the machine in this same boot.
func (p *Provisioner) discovered(b store.Boot, ip string) {
	if err := p.hold(p.baseCtx, b.MAC); err != nil {
		p.log.Warn("not reading the facts of a discovered machine: claiming it failed", "mac", b.MAC, "err", err)
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.let(b.MAC)
		ctx, cancel := context.WithTimeout(p.baseCtx, factsTimeout)
		defer cancel()
		if err := p.collectFacts(ctx, b, ip); err != nil {
			p.event(context.WithoutCancel(ctx), b.MAC, "", fmt.Sprintf("discovered, but reading its facts at %s failed: %v; the installer stays up: `pxe-anywhere machines assign %s PROFILE` installs it", ip, err, b.MAC))
			p.publish(context.WithoutCancel(ctx), b.MAC)
			return
		}
		p.decideDiscovered(context.WithoutCancel(ctx), b, ip)
	}()
}

func (p *Provisioner) collectFacts(ctx context.Context, b store.Boot, ip string) error {
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKeyPublic))
	if err != nil {
		return fmt.Errorf("host key of boot: %w", err)
	}
	hw, err := installer.CollectHardware(ctx, installer.HardwareOptions{
		Target:         installer.Target{Host: ip, Port: p.discPort},
		Signers:        []ssh.Signer{p.signer},
		HostKey:        hostKey,
		MaxFacterBytes: store.MaxFacterBytes,
		Timeout:        factsTimeout,
	})
	if err != nil {
		return err
	}
	facts, err := json.Marshal(hw)
	if err != nil {
		return err
	}
	if err := p.store.SaveFacts(ctx, b.MAC, string(facts), string(hw.Facter), ip); err != nil {
		return err
	}
	var disks []string
	for _, d := range hw.Disks {
		disks = append(disks, fmt.Sprintf("%s %s", d.Name, gib(d.Bytes)))
	}
	msg := fmt.Sprintf("facts collected: %s %s, serial %q; %d CPUs; %s memory; disks: %s; firmware %s %s",
		orNone(hw.Vendor), orNone(hw.Product), hw.Serial, hw.CPUCount, gib(hw.MemoryBytes), orNone(strings.Join(disks, ", ")), hw.Firmware, hw.Arch)
	if hw.BMCAddress != "" {
		msg += "; BMC at " + hw.BMCAddress
	}
	if hw.Facter != nil {
		msg += "; nixos-facter report kept"
	}
	p.event(ctx, b.MAC, "", msg)
	return nil
}

func gib(n int64) string { return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30)) }

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// decideDiscovered runs the rules for a discovered machine whose
// installer is up at ip, and installs it on a match.
func (p *Provisioner) decideDiscovered(ctx context.Context, b store.Boot, ip string) {
	cfg := p.cfg.Load()
	if m, _, err := p.machineFor(ctx, cfg, b.MAC); err == nil && m != nil {
		// An operator assigned it while its facts were read.
		return
	}
	seen, facts, err := p.storedInput(ctx, b.MAC)
	if err != nil {
		p.log.Warn("reading a machine's facts failed", "mac", b.MAC, "err", err)
		return
	}
	d := rules.Evaluate(cfg.Rules, seen.input(b.MAC, facts))
	if d.Rule == nil {
		p.event(ctx, b.MAC, "", fmt.Sprintf("discovered: %s; the installer stays up: `pxe-anywhere machines assign %s PROFILE` installs it", d.Why, b.MAC))
		p.publish(ctx, b.MAC)
		return
	}
	err = p.store.AssignNew(ctx, b.MAC, d.Rule.Profile, d.Hostname, byRule, d.Why+" (after discovery)", cfg.Server.MaxDiscovered)
	if errors.Is(err, store.ErrLimit) {
		p.event(ctx, b.MAC, "", fmt.Sprintf("discovered: %s, but server.max_discovered machines are assigned already; the installer stays up: `pxe-anywhere machines forget MAC` of another makes room, `pxe-anywhere machines assign %s %s` installs it", d.Why, b.MAC, d.Rule.Profile))
		p.publish(ctx, b.MAC)
		return
	}
	if err != nil {
		p.log.Warn("assigning a discovered machine failed", "mac", b.MAC, "err", err)
		return
	}
	p.refreshAssigned(ctx)
	p.startUp(ctx, cfg, b.MAC, &profiles.Machine{MAC: mustMAC(b.MAC), Profile: d.Rule.Profile, Hostname: d.Hostname}, &b, ip)
}

// startUp starts the install of a machine whose installer is up, in
// the boot that brought it up; b and ip are that boot and the address
// the installer answered at, or nil and "" to look them up. A machine
// whose installer is not up installs at its next PXE boot.
func (p *Provisioner) startUp(ctx context.Context, cfg *profiles.Config, mac string, m *profiles.Machine, b *store.Boot, ip string) {
	defer p.publish(ctx, mac)
	rec, err := p.store.Machine(ctx, mac)
	if err != nil {
		return
	}
	if b == nil && rec.State == store.StateInstallerUp {
		if latest, err := p.store.LatestBoot(ctx, mac); err == nil && latest.UsedAt != nil && latest.VoidedAt == nil && time.Since(latest.CreatedAt) < tokenLifetime {
			b, ip = &latest, latest.IP
			if f, err := p.store.Facts(ctx, mac); err == nil && f.Addr != "" && f.CollectedAt.After(latest.CreatedAt) {
				ip = f.Addr // where the installer answered, if it moved
			}
		}
	}
	if rec.State != store.StateInstallerUp || b == nil {
		p.event(ctx, mac, "", "the machine installs with profile "+m.Profile+" at its next PXE boot")
		return
	}
	if cfg.Profile(m.Profile) == nil {
		return
	}
	p.event(ctx, mac, "", fmt.Sprintf("its installer is up at %s: installing with profile %s in this boot", ip, m.Profile))
	// Only a discovered machine waits in installer-up: its installer is
	// the discover image, whose sshd is where facts were read.
	p.startInstallPort(*b, m, ip, p.discPort)
}

// Assign gives a machine that the config does not list a profile (and
// a hostname): the operator's answer to a discovered machine. If its
// installer is up, the install starts at once; else at its next PXE
// boot.
func (p *Provisioner) Assign(ctx context.Context, mac, profile, hostname, by string) error {
	cfg := p.cfg.Load()
	if cfg.MachineByMAC(mustMAC(mac)) != nil {
		return fmt.Errorf("%w: machine %s is in the config, which decides its profile: change it there", admin.ErrConflict, mac)
	}
	if cfg.Profile(profile) == nil {
		return fmt.Errorf("%w: no profile %q in the config", admin.ErrInvalid, profile)
	}
	if hostname != "" && !rules.ValidHostname(hostname) {
		return fmt.Errorf("%w: bad hostname %q (letters, digits and '-', dot-separated labels of at most 63)", admin.ErrInvalid, hostname)
	}
	rec, err := p.store.Machine(ctx, mac)
	if err != nil {
		return notFound(err)
	}
	if p.queue.busy(mac) || rec.State == store.StateInstalling {
		return fmt.Errorf("%w: machine %s is being installed; cancel it first", admin.ErrConflict, mac)
	}
	if err := p.store.Assign(ctx, mac, profile, hostname, byOperator, "by "+by); err != nil {
		return notFound(err)
	}
	p.refreshAssigned(ctx)
	p.log.Info("machine assigned", "mac", mac, "profile", profile, "hostname", hostname, "by", by)
	if rec.State == store.StateInstalled && !rec.Reinstall {
		p.event(ctx, mac, "", fmt.Sprintf("the machine is installed: `pxe-anywhere machines reinstall %s` installs it with profile %s", mac, profile))
		p.publish(ctx, mac)
		return nil
	}
	p.startUp(ctx, cfg, mac, &profiles.Machine{MAC: mustMAC(mac), Profile: profile, Hostname: hostname}, nil, "")
	return nil
}

// reevaluate runs the rules again, after a config reload, for the
// machines that the config does not list, that no operator assigned,
// and that are not installed or installing: a rule that now matches
// assigns them (and installs those whose installer is up, when start
// is set), and a rule's assignment that no rule makes any more is
// taken back.
func (p *Provisioner) reevaluate(ctx context.Context, cfg *profiles.Config, start bool) error {
	defer p.refreshAssigned(ctx)
	recs, err := p.store.Machines(ctx)
	if err != nil {
		return err
	}
	assigned, err := p.store.Assignments(ctx)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		a, has := assigned[rec.MAC]
		switch {
		case cfg.MachineByMAC(mustMAC(rec.MAC)) != nil, has && a.Source != byRule,
			rec.State == store.StateInstalled, rec.State == store.StateInstalling, p.queue.busy(rec.MAC):
			continue
		case !has && rec.Profile != "":
			continue // a machine that left the config keeps its record as it was
		}
		seen, facts, err := p.storedInput(ctx, rec.MAC)
		if err != nil {
			return err
		}
		d := rules.Evaluate(cfg.Rules, seen.input(rec.MAC, facts))
		switch {
		case d.Rule == nil && has && !d.NeedFacts:
			if err := p.store.Unassign(ctx, rec.MAC, "config reload: "+d.Why); err != nil {
				return err
			}
			p.publish(ctx, rec.MAC)
		case d.Rule == nil:
		case has && rec.Profile == d.Rule.Profile && rec.Hostname == d.Hostname:
		default:
			err := p.store.AssignNew(ctx, rec.MAC, d.Rule.Profile, d.Hostname, byRule, d.Why+" (config reload)", cfg.Server.MaxDiscovered)
			if errors.Is(err, store.ErrLimit) {
				p.logLimited("assign-limit", assignLimitMsg, "mac", rec.MAC)
				continue
			}
			if err != nil {
				return err
			}
			if start {
				p.startUp(ctx, cfg, rec.MAC, &profiles.Machine{MAC: mustMAC(rec.MAC), Profile: d.Rule.Profile, Hostname: d.Hostname}, nil, "")
			} else {
				p.publish(ctx, rec.MAC)
			}
		}
	}
	return nil
}

// decidedBy fills in who decided v's profile and why.
func decidedBy(v *admin.MachineView, cfg *profiles.Config, a store.Assignment, has bool) {
	switch {
	case cfg.MachineByMAC(mustMAC(v.MAC)) != nil:
		v.DecidedBy, v.DecidedWhy = byConfig, "listed under machines: in the config"
	case has:
		v.DecidedBy, v.DecidedWhy = a.Source, a.Reason
	}
}

// factsView is what the store knows of mac's hardware, for the
// operator; nil when nothing.
func (p *Provisioner) factsView(ctx context.Context, mac string) *admin.FactsView {
	f, err := p.store.Facts(ctx, mac)
	if err != nil {
		return nil
	}
	v := &admin.FactsView{Addr: f.Addr, Facter: f.Facter != ""}
	if !f.CollectedAt.IsZero() {
		t := f.CollectedAt
		v.CollectedAt = &t
	}
	if f.Facts != "" && json.Valid([]byte(f.Facts)) {
		v.Hardware = json.RawMessage(f.Facts)
	}
	if f.DHCP != "" && json.Valid([]byte(f.DHCP)) {
		v.DHCP = json.RawMessage(f.DHCP)
	}
	return v
}
