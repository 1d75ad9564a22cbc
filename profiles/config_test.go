package profiles

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

func TestLoadFull(t *testing.T) {
	dir, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Config{
		Server: Server{
			Interfaces:      []string{"br0", "eth1"},
			Advertise:       netip.MustParseAddr("10.77.0.1"),
			HTTPListen:      "10.77.0.1:8080",
			AdminListen:     "10.99.0.1:8443",
			TLSCert:         filepath.Join(dir, "tls/admin.crt"),
			TLSKey:          "/etc/pxe-anywhere/admin.key",
			TFTPListen:      ":69",
			StateDir:        filepath.Join(dir, "state"),
			IPXEDir:         "/usr/lib/ipxe",
			APITokenFile:    "/etc/pxe-anywhere/api-token",
			SSHKey:          filepath.Join(dir, "keys/id_ed25519"),
			MaxInstalls:     2,
			TargetLineBytes: 4096, TargetOutputBytes: 1 << 20, InstallLogHead: 100, InstallLogTail: 200,
			UnknownMachines: UnknownDiscover, Trust: TrustDHCP, RouterAdvertisements: RAOff,
			DiscoverImage: "nixos",
			// limits (state)
			KeepBoots: 5, KeepEvents: 200, ClaimLease: DefaultClaimLease, MaxUnknownMACs: 100, MaxDiscovered: 10,
			Limits: DefaultLimits(),
		},
		DHCP: DHCP{
			Mode:       DHCPAuthoritative,
			EFIx64Boot: "snponly.efi",
			ARM64Boot:  "arm64-efi/snponly.efi",
			Subnet:     netip.MustParsePrefix("10.77.0.0/24"),
			RangeStart: netip.MustParseAddr("10.77.0.100"),
			RangeEnd:   netip.MustParseAddr("10.77.0.200"),
			Router:     netip.MustParseAddr("10.77.0.1"),
			DNS:        []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")},
			Domain:     "lab",
			LeaseTime:  30 * time.Minute,
		},
		Images: map[string]*Image{
			"nixos": {
				Name:         "nixos",
				KexecTarball: "https://example.org/nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz",
				SHA256:       "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			},
			"local":     {Name: "local", KexecTarball: filepath.Join(dir, "images/kexec.tar.gz")},
			"mynetboot": {Name: "mynetboot", NetbootDir: "/srv/netboot"},
			"custom": {
				Name:    "custom",
				Kernel:  filepath.Join(dir, "custom/bzImage"),
				Initrd:  []string{filepath.Join(dir, "custom/initrd"), "/srv/custom/extra.cpio"},
				Cmdline: "init=/nix/store/abc-init loglevel=4",
			},
		},
		Profiles: map[string]*Profile{
			"web": {
				Name:  "web",
				Image: "nixos",
				Flake: "github:example/infra#web",
				DiskEncryptionKeys: []KeyFile{
					{Remote: "/tmp/a.key", Local: "/etc/pxe-anywhere/keys/a.key"},
					{Remote: "/tmp/disk.key", Local: filepath.Join(dir, "keys/web.key")},
				},
				ExtraFiles:   filepath.Join(dir, "extra/web"),
				Chown:        []Chown{{Path: "/home/alice", UID: 1000, GID: 100}, {Path: "/var/lib/app"}},
				KernelParams: []string{"console=ttyS0", "115200", "quiet"},
				SSH:          SSHSettings{User: "admin", Port: 2222, Options: map[string]string{"ConnectTimeout": "10", "StrictHostKeyChecking": "no"}, KeepaliveInterval: 5 * time.Second, KeepaliveCountMax: 4},
				Timeouts:     map[string]time.Duration{"disko": 45 * time.Minute, "probe": time.Minute},
				AfterInstall: AfterPoweroff,
				Retries:      2,
				Phases:       []string{PhaseKexec, PhaseDisko, PhaseInstall},
			},
			"db": {
				Name:  "db",
				Image: "custom",
				StorePaths: &StorePaths{
					Disko:  "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko",
					System: "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-db",
				},
				SSH:          SSHSettings{User: "root", Port: 22, KeepaliveInterval: 15 * time.Second, KeepaliveCountMax: 3},
				AfterInstall: AfterReboot,
				Phases:       []string{PhaseDisko, PhaseInstall, PhaseReboot},
			},
		},
		Machines: []*Machine{
			{MAC: mustMAC(t, "52:54:00:12:34:01"), Profile: "web", Hostname: "web-01", IP: netip.MustParseAddr("10.77.0.10")},
			{MAC: mustMAC(t, "52:54:00:12:34:02"), Profile: "web", Hostname: "web-02", IP: netip.MustParseAddr("10.77.0.11")},
			{MAC: mustMAC(t, "52:54:00:12:34:03"), Profile: "db"},
		},
	}
	// Compare piecewise so a failure says which part differs.
	if !reflect.DeepEqual(c.Server, want.Server) {
		t.Errorf("Server:\n got %+v\nwant %+v", c.Server, want.Server)
	}
	if !reflect.DeepEqual(c.DHCP, want.DHCP) {
		t.Errorf("DHCP:\n got %+v\nwant %+v", c.DHCP, want.DHCP)
	}
	for name, w := range want.Images {
		if !reflect.DeepEqual(c.Images[name], w) {
			t.Errorf("Images[%s]:\n got %+v\nwant %+v", name, c.Images[name], w)
		}
	}
	for name, w := range want.Profiles {
		if !reflect.DeepEqual(c.Profiles[name], w) {
			t.Errorf("Profiles[%s]:\n got %+v\nwant %+v", name, c.Profiles[name], w)
		}
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Config differs beyond the parts above (extra entries?)")
	}
	kinds := map[string]string{"nixos": ImageKexec, "local": ImageKexec, "mynetboot": ImageNetboot, "custom": ImageFiles}
	for name, k := range kinds {
		if got := c.Images[name].Kind(); got != k {
			t.Errorf("Images[%s].Kind() = %q, want %q", name, got, k)
		}
	}
}

func TestDefaults(t *testing.T) {
	tests := []struct {
		name string
		file string
	}{
		{name: "minimal", file: "testdata/minimal.yaml"},
		{name: "empty", file: "testdata/empty.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.file)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			wantServer := Server{AdminListen: "127.0.0.1:8081", TFTPListen: ":69", StateDir: "/var/lib/pxe-anywhere", MaxInstalls: 4, UnknownMachines: UnknownIgnore, Trust: TrustDHCP, RouterAdvertisements: RAAuto,
				KeepBoots: DefaultKeepBoots, KeepEvents: DefaultKeepEvents, ClaimLease: DefaultClaimLease, MaxUnknownMACs: DefaultMaxUnknownMACs, MaxDiscovered: DefaultMaxDiscovered, Limits: DefaultLimits(),

				TargetLineBytes: 64 << 10, TargetOutputBytes: 16 << 20, InstallLogHead: 2000, InstallLogTail: 3000}
			if !reflect.DeepEqual(c.Server, wantServer) {
				t.Errorf("Server = %+v, want %+v", c.Server, wantServer)
			}
			wantDHCP := DHCP{Mode: DHCPProxy, EFIx64Boot: "ipxe.efi", LeaseTime: time.Hour}
			if !reflect.DeepEqual(c.DHCP, wantDHCP) {
				t.Errorf("DHCP = %+v, want %+v", c.DHCP, wantDHCP)
			}
			if tt.name == "empty" {
				if len(c.Images)+len(c.Profiles)+len(c.Machines) != 0 {
					t.Errorf("empty config has entries: %+v", c)
				}
				return
			}
			p := c.Profile("web")
			want := &Profile{Name: "web", Image: "nixos", Flake: ".#web", SSH: SSHSettings{User: "root", Port: 22, KeepaliveInterval: 15 * time.Second, KeepaliveCountMax: 3}, AfterInstall: AfterReboot, Phases: []string{"disko", "install", "reboot"}}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("Profile(web) = %+v, want %+v", p, want)
			}
		})
	}
}

func TestGeneratedJSON(t *testing.T) {
	c, err := Load("testdata/generated.json")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Server.UnknownMachines != UnknownLocalBoot || c.Server.MaxInstalls != 1 || c.DHCP.LeaseTime != time.Hour {
		t.Errorf("server/dhcp = %+v %+v", c.Server, c.DHCP)
	}
	// MACs match whatever case and separator the file used.
	m := c.MachineByMAC(mustMAC(t, "aa-bb-cc-dd-ee-ff"))
	if m == nil || m.Hostname != "box" || c.Profile(m.Profile) == nil {
		t.Fatalf("MachineByMAC = %+v", m)
	}
}

func TestLookups(t *testing.T) {
	c, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		mac      string
		wantHost string // "" means no machine
	}{
		{name: "known colon", mac: "52:54:00:12:34:01", wantHost: "web-01"},
		{name: "known written with dashes in file", mac: "52:54:00:12:34:02", wantHost: "web-02"},
		{name: "neighbour of a known one", mac: "52:54:00:12:34:0A", wantHost: ""},
		{name: "unknown", mac: "52:54:00:ff:ff:ff", wantHost: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := c.MachineByMAC(mustMAC(t, tt.mac))
			switch {
			case tt.wantHost == "" && m != nil:
				t.Errorf("MachineByMAC(%s) = %+v, want nil", tt.mac, m)
			case tt.wantHost != "" && (m == nil || m.Hostname != tt.wantHost):
				t.Errorf("MachineByMAC(%s) = %+v, want hostname %s", tt.mac, m, tt.wantHost)
			}
		})
	}
	if c.Profile("nope") != nil {
		t.Error("Profile(nope) is not nil")
	}
	if c.Profile("db") == nil {
		t.Error("Profile(db) is nil")
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("Load(missing) = %v, want a not-exist error naming the file", err)
	}
}

func TestRelativePathsFollowTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "pxe.yaml")
	data := base + "    extra_files: extra/web\n    disk_encryption_keys: {/tmp/k: ../keys/k}\n" +
		"  ip:\n    image: nixos\n    flake: \".#ip\"\nserver: {state_dir: ./state}\n"
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(name)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{name: "extra_files", got: c.Profile("web").ExtraFiles, want: filepath.Join(dir, "extra/web")},
		{name: "disk key local", got: c.Profile("web").DiskEncryptionKeys[0].Local, want: filepath.Join(filepath.Dir(dir), "keys/k")},
		{name: "state_dir", got: c.Server.StateDir, want: filepath.Join(dir, "state")},
		{name: "absolute stays", got: c.Images["nixos"].KexecTarball, want: "/srv/k.tar.gz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("%s = %q, want %q", tt.name, tt.got, tt.want)
			}
		})
	}
}
