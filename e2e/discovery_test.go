package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// TestDiscoveryRuleInstall: a VM whose MAC no config lists, with a DMI
// that qemu sets (vendor, product, serial), PXE-boots into the discover
// image; the server reads its facts over SSH, a rule on its product and
// serial matches, and the machine is installed in that one boot, its
// hostname from the rule's template. Its next PXE boot goes to its
// disk.
func TestDiscoveryRuleInstall(t *testing.T) {
	requireE2E(t)
	t.Parallel()
	const mac = "52:54:00:77:20:01"
	lab := netlab.New(t, labPrefix)
	system := systemToplevel(t)
	disko := storeAdd(t, filepath.Join(repoRoot, "lab", "disko-standin.sh"))
	s := startServer(t, lab, profileSpec{disko: disko, system: system, mac: mac,
		unknown: "  unknown_machines: discover\n  discover_image: test",
		machines: `rules:
  - name: lab-racks
    match: {vendor: "PXE Lab", product: "Rack 9000*", serial: "E2E-*", memory: ">= 512MiB"}
    profile: e2e
    hostname: "node-{serial}"
`})
	if m := s.machine(mac); m.State != "" {
		t.Fatalf("before boot the server knows %s: %+v", mac, m)
	}
	v := launchVMOpts(t, lab, bios, mac, nil, vmOpts{Extra: []string{"-smbios", "type=1,manufacturer=PXE Lab,product=Rack 9000 Gen2,serial=E2E-0042"}})
	st := &stateTimer{}
	waitFor(t, v, bootBound, "discover boot", func() bool { return s.logHas("PXE boot into the installer (discover)") })
	waitFor(t, v, bootBound, "installer callback", func() bool {
		st.observe(t, v, s.machine(mac))
		return v.SerialHas("callback:") && v.SerialHas("accepted")
	})
	waitFor(t, v, bootBound, "facts collected", func() bool {
		st.observe(t, v, s.machine(mac))
		return strings.Contains(s.text("/api/v1/machines/"+mac+"/events"), "facts collected")
	})
	waitFor(t, v, 2*bootBound, "state installed", func() bool {
		m := s.machine(mac)
		st.observe(t, v, m)
		if m.State == "failed" {
			t.Fatalf("install failed in phase %s: %s\nevents:\n%s\nlog:\n%s", m.Phase, m.Error, s.text("/api/v1/machines/"+mac+"/events"), s.text("/api/v1/machines/"+mac+"/log"))
		}
		return m.State == "installed"
	})
	waitFor(t, v, bootBound, "second PXE boot sent to the local disk", func() bool {
		return strings.Contains(s.text("/api/v1/machines/"+mac+"/events"), "booting from local disk")
	})
	v.Stop()

	var m struct {
		Hostname   string `json:"hostname"`
		Profile    string `json:"profile"`
		DecidedBy  string `json:"decided_by"`
		DecidedWhy string `json:"decided_why"`
		Facts      struct {
			Hardware struct {
				Vendor, Product, Serial string
				Firmware                string
				MemoryBytes             int64 `json:"memory_bytes"`
				Disks                   []struct {
					Name  string
					Bytes int64
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(s.text("/api/v1/machines/"+mac)), &m); err != nil {
		t.Fatal(err)
	}
	hw := m.Facts.Hardware
	if m.Hostname != "node-e2e-0042" || m.Profile != "e2e" || m.DecidedBy != "rule" || !strings.Contains(m.DecidedWhy, `rule "lab-racks"`) {
		t.Fatalf("machine: %+v", m)
	}
	if hw.Vendor != "PXE Lab" || hw.Product != "Rack 9000 Gen2" || hw.Serial != "E2E-0042" || hw.Firmware != "bios" || hw.MemoryBytes < 512<<20 || len(hw.Disks) == 0 || hw.Disks[0].Bytes != 2<<30 {
		t.Fatalf("facts: %+v", hw)
	}
	events := s.text("/api/v1/machines/" + mac + "/events")
	if n := strings.Count(events, "PXE boot into the installer"); n != 1 {
		t.Fatalf("%d installer boots, want one (discovery and install in the same boot):\n%s", n, events)
	}
	checkInstalledDisk(t, v.Disk, system, []extraFile{
		{Path: "/etc/e2e-extra", UID: 0, GID: 0, Content: "extra file from pxe-anywhere"},
		{Path: "/etc/hostname", UID: 0, GID: 0, Content: "node-e2e-0042\n"},
	})
}
