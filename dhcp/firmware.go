package dhcp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Arch is the client system architecture of option 93 (RFC 4578, and
// IANA's "Processor Architecture Types" registry), folded to what needs
// a different boot file.
type Arch int

// The architectures pxe-anywhere tells apart.
const (
	ArchUnknown Arch = iota
	ArchBIOS
	ArchEFI32
	ArchEFIx64
	ArchEFIarm64
)

func (a Arch) String() string {
	switch a {
	case ArchBIOS:
		return "bios"
	case ArchEFI32:
		return "efi-ia32"
	case ArchEFIx64:
		return "efi-x64"
	case ArchEFIarm64:
		return "efi-arm64"
	}
	return "unknown"
}

// Firmware is what a DHCP client told about the program that sends it.
type Firmware struct {
	Arch Arch
	// HTTPBoot: UEFI HTTP Boot (vendor class "HTTPClient"), which wants a
	// URL and no TFTP.
	HTTPBoot bool
	// IPXE: iPXE is already running (user class "iPXE"); handing it iPXE
	// again would loop forever, so it gets the script URL.
	IPXE bool
}

func (f Firmware) String() string {
	s := f.Arch.String()
	if f.HTTPBoot {
		s += "+httpboot"
	}
	if f.IPXE {
		s += "+ipxe"
	}
	return s
}

// archFromCode maps one option 93 value. 7 and 9 are both x64 UEFI:
// the registry calls 7 "EFI BC" but every x64 firmware that sends it
// means x64, and 9 is what the RFC's errata intended.
func archFromCode(code uint16) (arch Arch, http bool) {
	switch code {
	case 0:
		return ArchBIOS, false
	case 6:
		return ArchEFI32, false
	case 7, 9:
		return ArchEFIx64, false
	case 11:
		return ArchEFIarm64, false
	case 15:
		return ArchEFI32, true
	case 16:
		return ArchEFIx64, true
	case 19:
		return ArchEFIarm64, true
	}
	return ArchUnknown, false
}

// detect reads options 60, 77 and 93. ok is false for clients that are
// not network-booting firmware: those get no boot options, ever.
func detect(req *dhcpv4.DHCPv4) (fw Firmware, ok bool) {
	vendor := string(req.Options.Get(dhcpv4.OptionClassIdentifier))
	switch {
	case strings.HasPrefix(vendor, "PXEClient"):
	case strings.HasPrefix(vendor, "HTTPClient"):
		fw.HTTPBoot = true
	default:
		return fw, false
	}
	fw.IPXE = isIPXE(req.Options.Get(dhcpv4.OptionUserClassInformation))
	// Option 93 may list several architectures; the first one we know
	// wins. Some UEFI ROMs send none, or 0, and put the arch only into
	// the vendor class as "PXEClient:Arch:00007:UNDI:003016".
	if raw := req.Options.Get(dhcpv4.OptionClientSystemArchitectureType); len(raw) >= 2 {
		for i := 0; i+1 < len(raw); i += 2 {
			if a, http := archFromCode(binary.BigEndian.Uint16(raw[i:])); a != ArchUnknown {
				fw.Arch = a
				fw.HTTPBoot = fw.HTTPBoot || http
				break
			}
		}
	}
	if fw.Arch == ArchUnknown || fw.Arch == ArchBIOS {
		if a, http, found := archFromVendor(vendor); found && a != ArchUnknown && a != ArchBIOS {
			fw.Arch = a
			fw.HTTPBoot = fw.HTTPBoot || http
		}
	}
	if fw.Arch == ArchUnknown {
		// A PXE client that names no architecture is a legacy BIOS ROM:
		// option 93 came with the later UEFI ROMs.
		fw.Arch = ArchBIOS
	}
	return fw, true
}

func archFromVendor(vendor string) (Arch, bool, bool) {
	parts := strings.Split(vendor, ":")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == "Arch" {
			n, err := strconv.ParseUint(parts[i+1], 10, 16)
			if err != nil {
				return ArchUnknown, false, false
			}
			a, http := archFromCode(uint16(n))
			return a, http, true
		}
	}
	return ArchUnknown, false, false
}

// isIPXE tells whether option 77 says iPXE. iPXE sends the bare string
// "iPXE", not the RFC 3004 length-prefixed list, so both forms are read.
func isIPXE(raw []byte) bool {
	if bytes.Equal(raw, []byte("iPXE")) {
		return true
	}
	for len(raw) > 0 {
		n := int(raw[0])
		if n == 0 || 1+n > len(raw) {
			return false
		}
		if string(raw[1:1+n]) == "iPXE" {
			return true
		}
		raw = raw[1+n:]
	}
	return false
}

// describe is a short text of a request for logs.
func describe(req *dhcpv4.DHCPv4) string {
	return fmt.Sprintf("%s from %s xid %s", req.MessageType(), req.ClientHWAddr, req.TransactionID)
}
