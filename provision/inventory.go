package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

func view(r store.MachineRecord) admin.MachineView {
	return admin.MachineView{
		MAC: r.MAC, Hostname: r.Hostname, Profile: r.Profile, State: string(r.State),
		Phase: r.Phase, Error: r.Error, IP: r.IP, Firmware: r.Firmware, Reinstall: r.Reinstall, Held: r.Held, UpdatedAt: r.UpdatedAt,
	}
}

func notFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %v", admin.ErrNotFound, err)
	}
	return err
}

// Machines lists every machine the store knows.
func (p *Provisioner) Machines(ctx context.Context) ([]admin.MachineView, error) {
	recs, err := p.store.Machines(ctx)
	if err != nil {
		return nil, err
	}
	last, err := p.store.LastEvents(ctx)
	if err != nil {
		return nil, err
	}
	assigned, err := p.store.Assignments(ctx)
	if err != nil {
		return nil, err
	}
	cfg := p.cfg.Load()
	out := make([]admin.MachineView, 0, len(recs))
	for _, r := range recs {
		v := view(r)
		a, has := assigned[r.MAC]
		decidedBy(&v, cfg, a, has)
		if e, ok := last[r.MAC]; ok {
			v.LastEvent = eventView(e)
		}
		out = append(out, v)
	}
	return out, nil
}

func eventView(e store.Event) *admin.EventView {
	return &admin.EventView{ID: e.ID, Time: e.Time, State: string(e.State), Phase: e.Phase, Message: e.Message}
}

// withLastEvent adds the machine's latest event to v, if it has one.
func (p *Provisioner) withLastEvent(ctx context.Context, v admin.MachineView) admin.MachineView {
	if e, err := p.store.LastEvent(ctx, v.MAC); err == nil {
		v.LastEvent = eventView(e)
	}
	return v
}

// LatestBoot is the machine's latest boot, its token reduced to a fingerprint.
func (p *Provisioner) LatestBoot(ctx context.Context, mac string) (admin.BootView, error) {
	b, err := p.store.LatestBoot(ctx, mac)
	if err != nil {
		return admin.BootView{}, notFound(err)
	}
	sum := sha256.Sum256([]byte(b.Token))
	v := admin.BootView{TokenFingerprint: hex.EncodeToString(sum[:4]), IP: b.IP, Firmware: b.Firmware,
		CreatedAt: b.CreatedAt, UsedAt: b.UsedAt, VoidedAt: b.VoidedAt, VoidReason: b.VoidReason}
	if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKeyPublic)); err == nil {
		v.HostKey = ssh.FingerprintSHA256(k)
	}
	return v, nil
}

// phaseHistoryEvents bounds the history PhaseHistory reads: enough for
// a median per phase over the last hundred or so installs.
const phaseHistoryEvents = 500

// PhaseHistory is how long phases that ended well took, from the
// "phase X done in D" events of the recent past.
func (p *Provisioner) PhaseHistory(ctx context.Context) (map[string][]time.Duration, error) {
	evs, err := p.store.PhaseDoneMessages(ctx, phaseHistoryEvents)
	if err != nil {
		return nil, err
	}
	out := map[string][]time.Duration{}
	for _, e := range evs {
		_, d, ok := strings.Cut(e.Message, " done in ")
		if !ok {
			continue
		}
		if dur, err := time.ParseDuration(d); err == nil && dur >= 0 {
			out[e.Phase] = append(out[e.Phase], dur)
		}
	}
	return out, nil
}

// Machine is one machine by MAC.
func (p *Provisioner) Machine(ctx context.Context, mac string) (admin.MachineView, error) {
	r, err := p.store.Machine(ctx, mac)
	if err != nil {
		return admin.MachineView{}, notFound(err)
	}
	v := p.withLastEvent(ctx, view(r))
	a, err := p.store.GetAssignment(ctx, mac)
	decidedBy(&v, p.cfg.Load(), a, err == nil)
	v.Facts = p.factsView(ctx, mac)
	return v, nil
}

// Events are a machine's state changes and notes after ID after.
func (p *Provisioner) Events(ctx context.Context, mac string, after int64) ([]admin.EventView, error) {
	if _, err := p.store.Machine(ctx, mac); err != nil {
		return nil, notFound(err)
	}
	evs, err := p.store.Events(ctx, mac, after, 1000)
	if err != nil {
		return nil, err
	}
	out := make([]admin.EventView, 0, len(evs))
	for _, e := range evs {
		out = append(out, admin.EventView{ID: e.ID, Time: e.Time, State: string(e.State), Phase: e.Phase, Message: e.Message})
	}
	return out, nil
}

// Log is a machine's install output after line seq after.
func (p *Provisioner) Log(ctx context.Context, mac string, after int64) ([]admin.LogView, error) {
	if _, err := p.store.Machine(ctx, mac); err != nil {
		return nil, notFound(err)
	}
	lines, err := p.store.Log(ctx, mac, after, 5000)
	if err != nil {
		return nil, err
	}
	out := make([]admin.LogView, 0, len(lines))
	for _, l := range lines {
		out = append(out, admin.LogView{Seq: l.Seq, Time: l.Time, Line: l.Line})
	}
	return out, nil
}

// Reinstall makes the machine's next PXE boot install again. It is the
// only way an installed machine is ever installed again.
func (p *Provisioner) Reinstall(ctx context.Context, mac, by string) error {
	if err := p.store.RequestReinstall(ctx, mac); err != nil {
		return notFound(err)
	}
	// A boot handed out before the request must not be the one that
	// installs: the next PXE boot starts afresh.
	if n, err := p.store.VoidBoots(ctx, mac, "reinstall requested"); err != nil {
		return err
	} else if n > 0 {
		p.event(ctx, mac, "", "reinstall requested by "+by+": the unused boot handed out before it is voided")
	}
	p.event(ctx, mac, "", "reinstall requested by "+by+": the next PXE boot installs again")
	p.publish(ctx, mac)
	return nil
}

// Forget removes a machine and its history; a machine whose install is
// running cannot be forgotten.
// The machine's events go with it, so who forgot it is in the server's
// log.
func (p *Provisioner) Forget(ctx context.Context, mac, by string) error {
	if p.queue.busy(mac) {
		return fmt.Errorf("%w: machine %s is being installed; wait for it to end", admin.ErrConflict, mac)
	}
	// A machine still in the config would come back as "new" on its
	// next PXE boot and be installed again: forgetting must never be a
	// back door around reinstall.
	if m, err := net.ParseMAC(mac); err == nil && p.cfg.Load().MachineByMAC(m) != nil {
		return fmt.Errorf("%w: machine %s is still in the config; remove it there and reload first (to install it again, use reinstall)", admin.ErrConflict, mac)
	}
	if err := p.store.Forget(ctx, mac); err != nil {
		return notFound(err)
	}
	p.bindings.forget(mac)
	p.refreshAssigned(ctx)
	p.log.Info("machine forgotten", "mac", mac, "by", by)
	p.feed.send(admin.MachineView{MAC: mac, State: "forgotten"})
	return nil
}

// Subscribe streams machine changes until ctx is done. A subscriber that
// does not keep up misses updates rather than slowing installs down.
func (p *Provisioner) Subscribe(ctx context.Context) <-chan admin.MachineView {
	return p.feed.subscribe(ctx)
}

func (p *Provisioner) publish(ctx context.Context, mac string) {
	r, err := p.store.Machine(ctx, mac)
	if err != nil {
		return
	}
	p.feed.send(p.withLastEvent(ctx, view(r)))
}
