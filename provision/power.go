package provision

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/power"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/rules"
)

// maxPowerCalls bounds the BMC operations under way at once: each holds
// a goroutine and a socket for up to its timeout, and a script that
// cycles a whole rack must not open hundreds of sessions together.
const maxPowerCalls = 16

// powerSlots is shared by every Provisioner of the process; there is
// one in practice.
var powerSlots = make(chan struct{}, maxPowerCalls)

// newController builds a machine's power.Controller; tests may replace
// it. The password file is read here, at each use, and never kept.
var newController = func(b *profiles.BMC) (power.Controller, error) {
	return power.New(power.Config{Type: b.Type, Address: b.Address, User: b.User,
		PasswordFile: b.PasswordFile, Timeout: b.Timeout, CAFile: b.CAFile})
}

// bmcOf returns the controller of mac's BMC and a name for it in
// events ("BMC ipmi 10.0.0.5"). A machine the config lists has its
// block over its profile's; one that a rule assigned, the rule's block
// (if the rule that matches it now still names its profile) over the
// profile's; one an operator assigned, its profile's. The address
// "facts" is the one discovery read on the machine.
func (p *Provisioner) bmcOf(ctx context.Context, mac string) (power.Controller, string, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", admin.ErrNotFound, err)
	}
	cfg := p.cfg.Load()
	b, err := p.bmcBlock(ctx, cfg, hw.String())
	if err != nil {
		return nil, "", err
	}
	if b.Address == profiles.BMCAddressFacts {
		_, facts, err := p.storedInput(ctx, hw.String())
		switch {
		case err != nil:
			return nil, "", err
		case facts == nil || facts.BMCAddress == "":
			return nil, "BMC " + b.Type + " (address from facts)", fmt.Errorf("%w: %s: address: facts, but discovery read no BMC address on machine %s (ipmitool lan print)", admin.ErrConflict, b.Where, mac)
		}
		c := *b
		c.Address = facts.BMCAddress
		b = &c
	}
	name := "BMC " + b.Type + " " + b.Address
	c, err := newController(b)
	if err != nil {
		return nil, name, fmt.Errorf("%w: %v", admin.ErrBMC, err)
	}
	return c, name, nil
}

// bmcBlock is the merged bmc: block that applies to mac (see bmcOf).
func (p *Provisioner) bmcBlock(ctx context.Context, cfg *profiles.Config, mac string) (*profiles.BMC, error) {
	if cfg.MachineByMAC(mustMAC(mac)) != nil {
		if b := cfg.BMCOf(mustMAC(mac)); b != nil {
			return b, nil
		}
		return nil, fmt.Errorf("%w: machine %s has no bmc: in the config (on the machine or its profile)", admin.ErrConflict, mac)
	}
	m, by, err := p.machineFor(ctx, cfg, mac)
	if err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("%w: machine %s is not in the config, and no rule or operator assigned it a profile", admin.ErrNotFound, mac)
	}
	var b *profiles.BMC
	if prof := cfg.Profile(m.Profile); prof != nil {
		b = prof.BMC
	}
	if by == byRule && len(cfg.Rules) > 0 {
		seen, facts, err := p.storedInput(ctx, mac)
		if err != nil {
			return nil, err
		}
		if d := rules.Evaluate(cfg.Rules, seen.input(mac, facts)); d.Rule != nil && d.Rule.Profile == m.Profile {
			b = b.Merge(cfg.RuleBMC(d.Rule))
		}
	}
	if b == nil {
		return nil, fmt.Errorf("%w: machine %s has no bmc: in the config (on its rule or its profile %s)", admin.ErrConflict, mac, m.Profile)
	}
	if b.Type == "" || b.Address == "" {
		return nil, fmt.Errorf("%w: %s of machine %s: missing type or address", admin.ErrConflict, b.Where, mac)
	}
	return b, nil
}

// powerCall runs f with a slot, and records a failure in mac's events
// (the error names the BMC and the operation, never the password).
func (p *Provisioner) powerCall(ctx context.Context, mac, what, by string, f func(ctx context.Context) error) error {
	select {
	case powerSlots <- struct{}{}:
		defer func() { <-powerSlots }()
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := f(ctx); err != nil {
		p.event(context.WithoutCancel(ctx), mac, "", fmt.Sprintf("%s requested by %s failed: %v", what, by, err))
		return fmt.Errorf("%w: %w", admin.ErrBMC, err)
	}
	return nil
}

// Power implements admin.Power: on, off, cycle or status of mac's BMC.
// Actions are recorded in the machine's events; a status only when it
// fails.
func (p *Provisioner) Power(ctx context.Context, mac, action, by string) (admin.PowerView, error) {
	v := admin.PowerView{MAC: mac, Action: action}
	c, name, err := p.bmcOf(ctx, mac)
	if err != nil {
		if name != "" {
			p.event(context.WithoutCancel(ctx), mac, "", fmt.Sprintf("power %s requested by %s: %s: %v", action, by, name, err))
		}
		return v, err
	}
	what := "power " + action + " through " + name
	var f func(ctx context.Context) error
	switch action {
	case admin.PowerOn:
		f = c.On
	case admin.PowerOff:
		f = c.Off
	case admin.PowerCycle:
		f = c.Cycle
	case admin.PowerStatus:
		f = func(ctx context.Context) error {
			st, err := c.Status(ctx)
			v.Power = string(st)
			return err
		}
	default:
		return v, fmt.Errorf("power action %q: want on, off, cycle or status", action)
	}
	if err := p.powerCall(ctx, mac, what, by, f); err != nil {
		return v, err
	}
	if action == admin.PowerStatus {
		v.Status = "power is " + v.Power
		return v, nil
	}
	v.Status = what + ": done"
	p.event(context.WithoutCancel(ctx), mac, "", what+" requested by "+by+": done")
	return v, nil
}

// ReinstallPowerCycle implements admin.Power: arm a reinstall, ask the
// BMC for one network boot, and power-cycle the machine. A BMC that
// refuses the boot device (ipmi_sim does) is a warning: a machine that
// boots from the network first still reaches the server, whose armed
// reinstall decides. If the cycle fails the reinstall stays armed, and
// the error says so.
func (p *Provisioner) ReinstallPowerCycle(ctx context.Context, mac, by string) (admin.PowerView, error) {
	v := admin.PowerView{MAC: mac, Action: "reinstall+cycle"}
	// The BMC is checked first, so a machine without one is not left
	// armed by a request that cannot be carried out.
	c, name, err := p.bmcOf(ctx, mac)
	if err != nil {
		return v, err
	}
	if err := p.Reinstall(ctx, mac, by); err != nil {
		return v, err
	}
	err = p.powerCall(ctx, mac, "boot from the network once through "+name, by, c.BootPXEOnce)
	if err != nil {
		if !errors.Is(err, power.ErrUnsupported) {
			return v, fmt.Errorf("reinstall armed, but the machine was not power-cycled: %w", err)
		}
		v.Warnings = append(v.Warnings, fmt.Sprintf("%s does not set the boot device (%v): the machine must boot from the network first by itself", name, err))
	}
	if err := p.powerCall(ctx, mac, "power cycle through "+name, by, c.Cycle); err != nil {
		return v, fmt.Errorf("reinstall armed, but the power cycle failed: %w", err)
	}
	v.Status = "reinstall armed; " + name + " power-cycled the machine: its next PXE boot installs again"
	p.event(context.WithoutCancel(ctx), mac, "", "power cycle through "+name+" requested by "+by+" for the reinstall: done")
	return v, nil
}

// poweroffByBMC is after_install: poweroff's fallback: when the
// installed system did not go down by itself (the reboot phase failed
// waiting for it) and the machine has a BMC, the BMC powers it off. It
// reports whether that happened, and so whether the install stands.
func (p *Provisioner) poweroffByBMC(ctx context.Context, mac string, prof *profiles.Profile, err error) bool {
	var pe *installer.PhaseError
	if prof.AfterInstall != profiles.AfterPoweroff || !errors.As(err, &pe) || pe.Phase != installer.PhaseReboot {
		return false
	}
	c, name, berr := p.bmcOf(ctx, mac)
	if berr != nil {
		return false
	}
	p.event(ctx, mac, installer.PhaseReboot, fmt.Sprintf("the installed system did not power off (%v): powering it off through %s", err, name))
	if perr := p.powerCall(ctx, mac, "power off through "+name, "after_install: poweroff", c.Off); perr != nil {
		return false
	}
	p.event(ctx, mac, installer.PhaseReboot, "powered off through "+name)
	return true
}
