package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"

	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// reloader applies the config file again to the running server, on
// SIGHUP and POST /api/v1/config/reload.
type reloader struct {
	// mu makes reloads take turns: two at once could end in the older
	// one's config, if it was the slower to prepare its images.
	mu      sync.Mutex
	load    func() (*profiles.Config, error)
	prepare func(ctx context.Context, cfg *profiles.Config) (map[string]httpboot.Image, error)
	images  *imageSet
	prov    configTaker
	dhcp    reservationTaker
	log     *slog.Logger
	running *profiles.Config // the config in force; mu guards it
}

// configTaker is what takes the inventory of a reloaded config:
// provision.
type configTaker interface {
	Reload(ctx context.Context, cfg *profiles.Config) error
}

// reservationTaker is what hands out the machines' reserved addresses:
// the DHCP server.
type reservationTaker interface {
	SetReservations(res map[string]netip.Addr) error
}

// reload applies the config file, or refuses it and keeps the running
// config whole.
func (r *reloader) reload(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := r.apply(ctx)
	if err != nil {
		r.log.Error("config reload refused; the running config stays", "err", err)
		return err
	}
	r.running = next
	r.log.Info("config reloaded", "images", len(next.Images), "profiles", len(next.Profiles), "machines", len(next.Machines))
	return nil
}

func (r *reloader) apply(ctx context.Context) (*profiles.Config, error) {
	next, err := r.load()
	if err != nil {
		return nil, err
	}
	if !sameServing(r.running, next) {
		return nil, errors.New("server, interface and DHCP settings change only with a restart; reload refused")
	}
	imgs, err := r.prepare(ctx, next)
	if err != nil {
		return nil, err
	}
	// While the profiles change, both configs' images are served: the
	// old profiles may name an image that the new config drops, and the
	// new ones an image that only it has.
	old := r.images.Load()
	both := maps.Clone(*old)
	maps.Copy(both, imgs)
	r.images.Store(&both)
	if err := r.dhcp.SetReservations(reservations(next)); err != nil {
		r.images.Store(old)
		return nil, err
	}
	if err := r.prov.Reload(ctx, next); err != nil {
		r.images.Store(old)
		if rerr := r.dhcp.SetReservations(reservations(r.running)); rerr != nil {
			r.log.Error("restoring the DHCP reservations of the running config failed", "err", rerr)
		}
		return nil, err
	}
	r.images.Store(&imgs)
	return next, nil
}

// reservations are the machines' `ip:` addresses, which only an
// authoritative server hands out.
func reservations(cfg *profiles.Config) map[string]netip.Addr {
	if cfg.DHCP.Mode != profiles.DHCPAuthoritative {
		return nil
	}
	res := map[string]netip.Addr{}
	for _, m := range cfg.Machines {
		if m.IP.IsValid() {
			res[m.MAC.String()] = m.IP
		}
	}
	return res
}

// sameServing reports whether two configs serve the same sockets: those
// settings need a restart, the inventory does not.
func sameServing(a, b *profiles.Config) bool {
	return fmt.Sprint(a.Server) == fmt.Sprint(b.Server) && fmt.Sprint(a.DHCP) == fmt.Sprint(b.DHCP)
}
