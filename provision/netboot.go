package provision

import (
	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// awaitsHTTPBoot reports whether m is a netboot: http machine whose
// firmware is asking by PXE: it gets an address and no boot file, so
// that UEFI firmware tries its HTTP Boot option next. iPXE, once
// running (user class iPXE), gets its script as always.
func awaitsHTTPBoot(m *profiles.Machine, fw dhcp.Firmware) bool {
	return m.Netboot == profiles.NetbootHTTP && !fw.HTTPBoot && !fw.IPXE
}
