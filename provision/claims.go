package provision

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// Several servers may share one database. A machine's install (and the
// reading of a discovered machine's facts) is driven by the one server
// that holds the machine's claim in the store (store.Claim). This
// server takes the claim before it starts, renews all its claims every
// third of server.claim_lease (the heartbeat), and gives a claim back
// when the work ends. A claim that lapses belongs to a server that
// stopped: any server that finds it reaps it, and the machine, cut off
// mid-install, is failed ("interrupted"), never installed.
//
// Inside one server, the claim of a machine is counted: the callback,
// the SSH poller and the install each hold it while they work on the
// machine, and only the last one to let go releases it in the store.

// claimLost is the cause of an install stopped because this server's
// claim on the machine lapsed or went to another server.
type claimLost struct{ why string }

func (c *claimLost) Error() string { return "claim lost: " + c.why }

// lease is the claim lease in force.
func (p *Provisioner) lease() time.Duration {
	if l := p.cfg.Load().Server.ClaimLease; l > 0 {
		return l
	}
	return profiles.DefaultClaimLease
}

// hold takes this server's claim on mac, or one more count of it when
// this server holds it already. It fails, wrapping store.ErrClaimed,
// when another server holds a live claim: then the caller leaves the
// machine alone.
func (p *Provisioner) hold(ctx context.Context, mac string) error {
	p.claimMu.Lock()
	defer p.claimMu.Unlock()
	if p.held[mac] > 0 {
		p.held[mac]++
		return nil
	}
	if _, err := p.store.Claim(ctx, mac, p.serverID, p.lease(), time.Now()); err != nil {
		return err
	}
	p.held[mac] = 1
	return nil
}

// let gives back one count of this server's claim on mac; the last one
// releases it in the store. It uses its own context: it runs when the
// work on the machine has ended, often because the server's did.
func (p *Provisioner) let(mac string) {
	p.claimMu.Lock()
	defer p.claimMu.Unlock()
	if p.held[mac] == 0 {
		return
	}
	if p.held[mac]--; p.held[mac] > 0 {
		return
	}
	delete(p.held, mac)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.store.Release(ctx, mac, p.serverID); err != nil {
		// The claim lapses on its own; another server will then find
		// the machine no longer installing and leave it.
		p.log.Warn("releasing an install claim failed; it lapses after server.claim_lease", "mac", mac, "err", err)
	}
}

// claimedByOther names the server other than this one that holds a
// live claim on mac, or is "".
func (p *Provisioner) claimedByOther(ctx context.Context, mac string) string {
	c, err := p.store.ClaimOf(ctx, mac)
	if err != nil || c.Server == p.serverID || !c.Expires.After(time.Now()) {
		return ""
	}
	return c.Server
}

// claimedElsewhere records that another server holds mac's claim, so
// this one leaves the machine alone; err wraps store.ErrClaimed.
func (p *Provisioner) claimedElsewhere(ctx context.Context, mac, what string, err error) error {
	p.event(ctx, mac, "", fmt.Sprintf("%s: left alone by server %s: %v", what, p.serverID, err))
	return fmt.Errorf("%w: %v", admin.ErrConflict, err)
}

// claimLoop renews this server's claims and reaps the lapsed claims of
// others, every third of the lease, until ctx ends.
func (p *Provisioner) claimLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.lease() / 3):
		}
		p.heartbeat(ctx)
		p.reap(ctx)
	}
}

// heartbeat renews the claims this server holds, then checks each: one
// that lapsed before it was renewed may be another server's now, or
// reaped, and its machine failed; the install this server still runs
// for it is stopped.
func (p *Provisioner) heartbeat(ctx context.Context) {
	now := time.Now()
	p.claimMu.Lock()
	macs := make([]string, 0, len(p.held))
	for mac := range p.held {
		macs = append(macs, mac)
	}
	if p.lastBeat.IsZero() {
		p.lastBeat = now
	}
	last := p.lastBeat
	p.claimMu.Unlock()
	_, err := p.store.Heartbeat(ctx, p.serverID, p.lease(), now)
	if err == nil {
		p.claimMu.Lock()
		p.lastBeat = now
		p.claimMu.Unlock()
	} else {
		p.logLimited("heartbeat", "renewing install claims failed; they lapse after server.claim_lease", "err", err)
		if now.Sub(last) < p.lease() {
			return
		}
		// Cut off from the database for a whole lease: the other
		// servers may have reaped these claims and failed the
		// installs; this server must not finish them.
	}
	for _, mac := range macs {
		c := store.Claim{Server: p.serverID}
		var cerr error
		if err == nil {
			c, cerr = p.store.ClaimOf(ctx, mac)
		}
		var why string
		switch {
		case errors.Is(cerr, store.ErrNotFound):
			why = "it lapsed and another server reaped it"
		case cerr != nil:
			continue // the next heartbeat tells
		case c.Server != p.serverID:
			why = "server " + c.Server + " holds it now"
		case err != nil:
			why = "this server could not renew it for a whole server.claim_lease: " + err.Error()
		case !c.Expires.After(now):
			why = "it lapsed before this server renewed it"
		case c.CancelBy != "":
			// An operator asked another server; the claim carried it.
			// Not waited for: the heartbeat must go on renewing the
			// other claims while this install unwinds.
			p.queue.stop(mac, &cancelled{by: c.CancelBy})
			continue
		default:
			continue
		}
		msg := fmt.Sprintf("server %s lost its claim on the machine (%s): its install here stops", p.serverID, why)
		p.log.Warn(msg, "mac", mac)
		p.event(ctx, mac, "", msg)
		p.queue.stop(mac, &claimLost{why: why}) // not waited for, as above
	}
}

// reap takes the lapsed claims that this server is not working under:
// another server's that stopped renewing them (or this server's own,
// left by a failed release). Of the servers that find one, exactly one
// reaps it; an install it cut off is failed, never installed.
func (p *Provisioner) reap(ctx context.Context) {
	now := time.Now()
	lapsed, err := p.store.LapsedClaims(ctx, now)
	if err != nil {
		p.logLimited("reap", "listing lapsed install claims failed", "err", err)
		return
	}
	for _, c := range lapsed {
		p.claimMu.Lock()
		mine := p.held[c.MAC] > 0 && c.Server == p.serverID
		p.claimMu.Unlock()
		if mine {
			continue // heartbeat stops the install
		}
		ok, err := p.store.ReapClaim(ctx, c, now)
		if err != nil || !ok {
			continue
		}
		rec, err := p.store.Machine(ctx, c.MAC)
		if err != nil || !installing(rec) {
			continue
		}
		where := rec.Phase
		if where == "" {
			where = string(rec.State)
		}
		msg := fmt.Sprintf("interrupted: server %s stopped renewing its claim during %s (lapsed %s, server.claim_lease %s); reaped by server %s",
			c.Server, where, c.Expires.UTC().Format(time.RFC3339), p.lease(), p.serverID)
		if err := p.transition(ctx, c.MAC, store.StateFailed, rec.Phase, "interrupted: server "+c.Server+" stopped", msg); err != nil {
			p.log.Warn("failing an install whose server stopped", "mac", c.MAC, "err", err)
			continue
		}
		p.log.Warn(msg, "mac", c.MAC)
	}
}

// installing reports whether m is mid-install: an install runs for it
// (a discovered machine waiting in installer-up with no profile does
// not count).
func installing(m store.MachineRecord) bool {
	switch m.State {
	case store.StateInstalling:
		return true
	case store.StateInstallerUp:
		return m.Profile != ""
	}
	return false
}

// checkConfigView records this server's config view of its machines in
// the store and reports each machine that another server sharing the
// store defines otherwise (another hostname or profile): a warning in
// the log and an event on the machine. The servers' UpsertMachine calls
// would otherwise overwrite each other's definitions in silence. A
// failure to record is logged; it blocks nothing.
func (p *Provisioner) checkConfigView(ctx context.Context, cfg *profiles.Config) {
	view := make([]store.ConfigMachine, 0, len(cfg.Machines))
	mine := map[string]store.ConfigMachine{}
	for _, m := range cfg.Machines {
		c := store.ConfigMachine{Server: p.serverID, MAC: m.MAC.String(), Hostname: m.Hostname, Profile: m.Profile}
		view = append(view, c)
		mine[c.MAC] = c
	}
	if err := p.store.SetConfigView(ctx, p.serverID, view); err != nil {
		p.log.Warn("recording this server's config view failed: conflicts with other servers' configs go unreported", "err", err)
		return
	}
	others, err := p.store.ConfigConflicts(ctx, p.serverID)
	if err != nil {
		p.log.Warn("checking the other servers' configs failed", "err", err)
		return
	}
	for _, o := range others {
		m := mine[o.MAC]
		msg := fmt.Sprintf("config conflict: server %s defines this machine as hostname %q profile %q, server %s as hostname %q profile %q; the last server to start or reload wins: make the configs agree",
			p.serverID, m.Hostname, m.Profile, o.Server, o.Hostname, o.Profile)
		p.log.Warn(msg, "mac", o.MAC)
		p.event(ctx, o.MAC, "", msg)
	}
}
