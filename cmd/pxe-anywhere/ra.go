package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/ra"
)

// listenRA starts answering router solicitations on the served
// interfaces unless the config turns it off; it returns nil then. A
// socket that cannot be opened (no CAP_NET_RAW, no IPv6) costs machines
// seconds of boot, not the service: it is a warning.
func listenRA(cfg *profiles.Config, log *slog.Logger, reg prometheus.Registerer) (*ra.Server, error) {
	if cfg.Server.RouterAdvertisements == profiles.RAOff {
		return nil, nil
	}
	log = log.With("component", "ra")
	s, err := ra.New(ra.Config{Interfaces: cfg.Server.Interfaces, Log: log, Metrics: reg})
	if err != nil {
		return nil, err
	}
	if err := s.Listen(); err != nil {
		log.Warn("router advertisements off: iPXE will wait ~13 s for IPv6 routers after DHCP (server.router_advertisements: off silences this)", "err", err)
		return nil, nil
	}
	return s, nil
}
