// Package macaddr parses Ethernet MAC addresses as URLs and operators
// write them. It is shared by the boot side (script URLs), the admin API
// (machine paths) and the command line.
package macaddr

import (
	"fmt"
	"net"
	"strings"
)

// Parse accepts a MAC written with colons or dashes, in either case,
// as iPXE's ${net0/mac} and ${mac:hexhyp} give it.
func Parse(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(strings.ReplaceAll(s, "-", ":"))
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	return mac, nil
}
