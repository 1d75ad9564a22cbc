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
