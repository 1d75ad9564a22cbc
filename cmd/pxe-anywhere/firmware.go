package main

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/tftp"
)

// ipxeBinaries is the one table of which iPXE binary each firmware
// loads: the files staged for TFTP and HTTP Boot, the boot file that
// DHCP names, and the HTTP Boot URL all come from it. A firmware missing
// from it gets no boot options: a file that is not there would fail only
// after the firmware took the offer.
func ipxeBinaries(d profiles.DHCP) map[dhcp.Arch]string {
	files := map[dhcp.Arch]string{
		dhcp.ArchBIOS:   "undionly.kpxe",
		dhcp.ArchEFIx64: d.EFIx64Boot,
	}
	if d.ARM64Boot != "" {
		files[dhcp.ArchEFIarm64] = d.ARM64Boot
	}
	return files
}

// stageIPXE finds the iPXE binaries and copies the table's into
// <state_dir>/ipxe: TFTP and HTTP Boot serve that copy, so that the
// strict resolver never has to follow the distribution's symlinks.
func stageIPXE(cfg *profiles.Config, log *slog.Logger) (src, dir string, staged []string, err error) {
	src, err = tftp.FindIPXEDir(cfg.Server.IPXEDir)
	if err != nil {
		return "", "", nil, err
	}
	dir = filepath.Join(cfg.Server.StateDir, "ipxe")
	files := ipxeBinaries(cfg.DHCP)
	staged, err = tftp.Stage(src, dir, slices.Compact(slices.Sorted(maps.Values(files))))
	if err != nil {
		return "", "", nil, fmt.Errorf("iPXE binaries: %w", err)
	}
	for _, arch := range slices.Sorted(maps.Keys(files)) {
		if !slices.Contains(staged, files[arch]) {
			log.Warn("iPXE binary missing from the iPXE directory: machines with this firmware will not boot", "firmware", arch, "file", files[arch], "ipxe_dir", src)
		}
	}
	return src, dir, staged, nil
}

func dhcpConfig(cfg *profiles.Config, advertise netip.Addr, baseURL string, reg prometheus.Registerer) dhcp.Config {
	files := ipxeBinaries(cfg.DHCP)
	d := dhcp.Config{
		Interfaces: cfg.Server.Interfaces,
		Mode:       dhcp.Proxy,
		ServerIP:   advertise,
		ScriptURL: func(mac net.HardwareAddr) string {
			return httpboot.ScriptURL(baseURL, mac)
		},
		HTTPBootURL: func(m dhcp.Machine) string {
			arch := m.Firmware.Arch
			if arch == dhcp.ArchBIOS {
				// HTTP Boot is UEFI's: a client that names no
				// architecture is taken as x64.
				arch = dhcp.ArchEFIx64
			}
			name := files[arch]
			if name == "" {
				return ""
			}
			return httpboot.IPXEBinaryURL(baseURL, name)
		},
		BootFiles: files,
		Relays:    cfg.DHCP.Relays,
		Metrics:   reg,
	}
	if cfg.DHCP.Mode == profiles.DHCPAuthoritative {
		d.Mode = dhcp.Authoritative
		d.Subnet = cfg.DHCP.Subnet
		d.RangeStart, d.RangeEnd = cfg.DHCP.RangeStart, cfg.DHCP.RangeEnd
		d.Router = cfg.DHCP.Router
		d.DNS = cfg.DHCP.DNS
		d.Domain = cfg.DHCP.Domain
		d.LeaseTime = cfg.DHCP.LeaseTime
		d.LeaseFile = filepath.Join(cfg.Server.StateDir, "leases.json")
		d.Reservations = reservations(cfg)
	}
	return d
}
