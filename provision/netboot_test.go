package provision

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

func TestNetbootHTTPLeavesPXEWithoutBootFile(t *testing.T) {
	// The same config, with macA on netboot: http.
	yaml := `images:
  test:
    kernel: /srv/bzImage
profiles:
  web:
    image: test
    flake: ".#web"
machines:
  - {mac: "` + macA + `", profile: web, netboot: http}
  - {mac: "` + macB + `", profile: web}
`
	cfg, err := profiles.Parse(filepath.Join(t.TempDir(), "config.yaml"), []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, cfg, "")
	ctx := context.Background()
	uefiPXE := dhcp.Firmware{Arch: dhcp.ArchEFIx64}
	for _, tc := range []struct {
		name string
		mac  string
		fw   dhcp.Firmware
		want dhcp.Decision
	}{
		{"http machine, firmware PXE", macA, uefiPXE, dhcp.Ignore},
		{"http machine, BIOS PXE", macA, dhcp.Firmware{Arch: dhcp.ArchBIOS}, dhcp.Ignore},
		{"http machine, UEFI HTTP Boot", macA, dhcp.Firmware{Arch: dhcp.ArchEFIx64, HTTPBoot: true}, dhcp.Boot},
		{"http machine, iPXE", macA, dhcp.Firmware{Arch: dhcp.ArchEFIx64, IPXE: true}, dhcp.Boot},
		{"other machine, firmware PXE", macB, uefiPXE, dhcp.Boot},
	} {
		if got := f.p.Decide(ctx, dhcp.Machine{MAC: mac(tc.mac), Firmware: tc.fw}); got != tc.want {
			t.Errorf("%s: Decide = %v, want %v", tc.name, got, tc.want)
		}
	}
	_, err = profiles.Parse("config.yaml", []byte(strings.Replace(yaml, "netboot: http", "netboot: tftp", 1)))
	if err == nil || !strings.Contains(err.Error(), `machines[0].netboot: bad value "tftp"`) {
		t.Fatalf("netboot: tftp: %v", err)
	}
}
