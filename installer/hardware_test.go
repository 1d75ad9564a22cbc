package installer_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// rackServer makes a real sshd's host look like a rack server: the
// facts script reads these through the same paths as on a machine.
func rackServer(o sshtarget.Options) sshtarget.Options {
	o.DMI = map[string]string{
		"sys_vendor":     "Acme Computers\n",
		"product_name":   "Rack 9000\n",
		"product_serial": "SN-77\tX\n",
		"board_serial":   strings.Repeat("B", 1000) + "\n",
	}
	o.Files = map[string]string{"/proc/meminfo": "MemTotal:        2048 kB\nMemFree: 1 kB\n"}
	return o
}

func TestCollectHardware(t *testing.T) {
	e := start(t, rackServer(sshtarget.Options{}))
	hw, err := installer.CollectHardware(context.Background(), installer.HardwareOptions{
		Target:  installer.Target{Host: e.tg.Host, Port: e.tg.Port},
		Signers: []ssh.Signer{e.signer},
		HostKey: e.tg.HostKey,
	})
	if err != nil {
		t.Fatal(err)
	}
	if hw.Vendor != "Acme Computers" || hw.Product != "Rack 9000" || hw.Serial != "SN-77X" || hw.MemoryBytes != 2048<<10 {
		t.Fatalf("facts %+v", hw)
	}
	if len(hw.BoardSerial) != 256 {
		t.Errorf("board serial of %d bytes kept, want it cut to 256", len(hw.BoardSerial))
	}
	if hw.CPUCount < 1 || hw.Arch == "" || (hw.Firmware != "bios" && hw.Firmware != "uefi") {
		t.Errorf("cpu/arch/firmware not read: %+v", hw)
	}
	if len(hw.NICs) == 0 {
		t.Errorf("no NICs read: %+v", hw)
	}
	for _, n := range hw.NICs {
		if n.Name == "lo" || n.MAC == "" {
			t.Errorf("NIC %+v", n)
		}
	}
	if hw.Facter != nil {
		t.Errorf("facter report without nixos-facter: %s", hw.Facter)
	}
}

// TestCollectHardwareFacter: a nixos-facter on the target is run and
// its report kept when it is JSON and fits; a larger one is dropped.
func TestCollectHardwareFacter(t *testing.T) {
	for _, tt := range []struct {
		name, script string
		want         bool
	}{
		{"report", `echo '{"version": 1, "hardware": {}}'`, true},
		{"not json", `echo 'hello'`, false},
		{"too large", `printf '{"x": "'; head -c 8000 /dev/zero | tr '\0' 'x'; echo '"}'`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, rackServer(sshtarget.Options{StandIns: map[string]string{"nixos-facter": tt.script + "\n"}}))
			hw, err := installer.CollectHardware(context.Background(), installer.HardwareOptions{
				Target:  installer.Target{Host: e.tg.Host, Port: e.tg.Port},
				Signers: []ssh.Signer{e.signer}, HostKey: e.tg.HostKey, MaxFacterBytes: 4096,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := hw.Facter != nil; got != tt.want {
				t.Fatalf("facter kept %v, want %v (%q)", got, tt.want, hw.Facter)
			}
		})
	}
}

// TestCollectHardwareRefusesOtherHostKey: facts come only from the host
// whose key the boot injected.
func TestCollectHardwareRefusesOtherHostKey(t *testing.T) {
	e := start(t, rackServer(sshtarget.Options{}))
	other := start(t, sshtarget.Options{})
	_, err := installer.CollectHardware(context.Background(), installer.HardwareOptions{
		Target:  installer.Target{Host: e.tg.Host, Port: e.tg.Port},
		Signers: []ssh.Signer{e.signer},
		HostKey: other.tg.HostKey,
	})
	if !errors.Is(err, installer.ErrHostKeyMismatch) {
		t.Fatalf("err %v, want a host key mismatch", err)
	}
}

// lanPrint is `ipmitool lan print` of a BMC at 10.20.30.40, as
// ipmitool 1.8 prints it.
const lanPrint = `Set in Progress         : Set Complete
Auth Type Support       : NONE MD2 MD5 PASSWORD
IP Address Source       : Static Address
IP Address              : %s
Subnet Mask             : 255.255.255.0
MAC Address             : 00:11:22:33:44:55
Default Gateway IP      : 10.20.30.1
`

// TestCollectHardwareBMCAddress: an ipmitool on the target (first on
// its PATH) tells the BMC's LAN address; one that fails, prints no
// address, 0.0.0.0, or garbage leaves the fact empty, and the rest of
// the facts stand.
func TestCollectHardwareBMCAddress(t *testing.T) {
	for _, tt := range []struct {
		name, script, want string
	}{
		{"lan print", `[ "$*" = "lan print" ] || exit 2; cat <<'E'
` + strings.ReplaceAll(lanPrint, "%s", "10.20.30.40") + "E\n", "10.20.30.40"},
		{"no BMC", `echo "Could not open device at /dev/ipmi0: No such file or directory" >&2; exit 1`, ""},
		{"unset address", "cat <<'E'\n" + strings.ReplaceAll(lanPrint, "%s", "0.0.0.0") + "E\n", ""},
		{"not an address", "cat <<'E'\n" + strings.ReplaceAll(lanPrint, "%s", "10.20.30.40; rm -rf /") + "E\n", ""},
		{"endless output", `yes "IP Address Source       : Static Address"`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, rackServer(sshtarget.Options{StandIns: map[string]string{"ipmitool": tt.script + "\n"}}))
			hw, err := installer.CollectHardware(context.Background(), installer.HardwareOptions{
				Target:  installer.Target{Host: e.tg.Host, Port: e.tg.Port},
				Signers: []ssh.Signer{e.signer}, HostKey: e.tg.HostKey,
			})
			if err != nil {
				t.Fatal(err)
			}
			if hw.BMCAddress != tt.want || hw.Vendor != "Acme Computers" {
				t.Fatalf("bmc_address %q (vendor %q), want %q", hw.BMCAddress, hw.Vendor, tt.want)
			}
		})
	}
}
