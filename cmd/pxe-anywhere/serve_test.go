package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

func TestServeHelpDocumentsEveryFlag(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"serve", "--help"}, &out, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	var f serveFlags
	fs := serveFlagSet(&bytes.Buffer{}, &f)
	fs.VisitAll(func(fl *flag.Flag) {
		if !strings.Contains(out.String(), "-"+fl.Name) || fl.Usage == "" {
			t.Errorf("flag -%s is not documented", fl.Name)
		}
	})
}

func TestServeRefusesBadStarts(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing config", []string{"--config", filepath.Join(dir, "nope.yaml")}, "nope.yaml"},
		{"config error names the line", []string{"--config", write("typo.yaml", "server:\n  interfaces: [lo]\nprofiles:\n  web:\n    flak: x\n")}, `typo.yaml:5`},
		{"no interfaces", []string{"--config", write("noif.yaml", "server:\n  max_installs: 2\n")}, "server.interfaces is empty"},
		{"interface that does not exist", []string{"--config", write("badif.yaml", "server:\n  interfaces: [pxe-nope0]\n  state_dir: "+dir+"/state\n")}, `interface "pxe-nope0" does not exist`},
		// Names the image once (it used to say image "custom": twice).
		{"missing image file", []string{"--ipxe-dir", filepath.Dir(write("ipxe/undionly.kpxe", "undionly")), "--config", write("noimg.yaml", "server:\n  interfaces: [lo]\n  state_dir: "+dir+"/state\nimages:\n  custom: {kernel: "+dir+"/nope, initrd: ["+dir+"/nope]}\n")},
			`image "custom": stat ` + dir + `/nope: no such file or directory`},
		{"stray argument", []string{"extra"}, `unexpected argument "extra"`},
		{"bad log level", []string{"--log-level", "loud"}, "--log-level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), append([]string{"serve"}, tt.args...), &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
			if strings.Count(err.Error(), `image "`) > 1 {
				t.Fatalf("err = %v: names the image more than once", err)
			}
		})
	}
}

// TestConfigCheck: config check refuses what serve would refuse at
// start, each with one clear error, and says what it cannot check
// away from the server.
func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("img/bzImage", "kernel", 0o644)
	write("img/initrd", "initrd", 0o644)
	write("ipxe/undionly.kpxe", "undionly", 0o644)
	os.MkdirAll(filepath.Join(dir, "empty"), 0o755)
	worldKey := write("keys/open", "key", 0o644)
	// A config that serve accepts here, with one server line and one
	// images line left to each case.
	cfg := func(server, image string) string {
		if !strings.Contains(server, "ipxe_dir:") {
			server += "\n  ipxe_dir: " + dir + "/ipxe"
		}
		return write("c.yaml", fmt.Sprintf(`server:
%[2]s
images:
  custom: {kernel: %[1]s/img/bzImage, initrd: [%[1]s/img/initrd]}
%[3]s
`, dir, server, image), 0o644)
	}
	const notChecked = `warning: server.interfaces (br0) not checked: whether they exist, and the address to advertise, can only be told on the server (config check --here)`
	tests := []struct {
		name     string
		server   string
		image    string
		here     bool
		want     string // in the error; "" means ok
		wantOut  string // in the output
		wantOnce string // in the error exactly once
	}{
		{name: "ok away from the server", server: "  interfaces: [br0]", wantOut: notChecked},
		{name: "ok here", server: "  interfaces: [lo]", here: true},
		{name: "no interfaces", server: "  max_installs: 2", want: "server.interfaces is empty"},
		{name: "interface missing here", server: "  interfaces: [pxe-nope0]", here: true, want: `interface "pxe-nope0" does not exist on this machine`},
		{name: "interface not checked away", server: "  interfaces: [pxe-nope0]", wantOut: "warning: server.interfaces (pxe-nope0) not checked"},
		{name: "missing kernel", server: "  interfaces: [br0]", image: "  gone: {kernel: " + dir + "/img/nope, initrd: [" + dir + "/img/initrd]}",
			want: `image "gone": stat ` + dir + `/img/nope: no such file or directory`, wantOnce: `image "gone"`},
		{name: "missing initrd", server: "  interfaces: [br0]", image: "  gone: {kernel: " + dir + "/img/bzImage, initrd: [" + dir + "/img/nope]}",
			want: `image "gone": stat ` + dir + `/img/nope: no such file or directory`, wantOnce: `image "gone"`},
		{name: "initrd is a directory", server: "  interfaces: [br0]", image: "  gone: {kernel: " + dir + "/img/bzImage, initrd: [" + dir + "/img]}",
			want: `image "gone": ` + dir + `/img is not a file`, wantOnce: `image "gone"`},
		{name: "missing netboot dir", server: "  interfaces: [br0]", image: "  nb: {netboot_dir: " + dir + "/nope}",
			want: `image "nb": netboot dir ` + dir + `/nope`, wantOnce: `image "nb"`},
		{name: "missing kexec tarball", server: "  interfaces: [br0]", image: "  kx: {kexec_tarball: " + dir + "/nope.tar.gz}",
			want: `image "kx": kexec tarball: stat ` + dir + `/nope.tar.gz: no such file or directory`, wantOnce: `image "kx"`},
		{name: "kexec tarball with another sha256", server: "  interfaces: [br0]", image: "  kx: {kexec_tarball: " + dir + "/img/initrd, sha256: \"" + strings.Repeat("0", 64) + "\"}",
			want: `image "kx": kexec tarball ` + dir + `/img/initrd: sha256 is`, wantOnce: `image "kx"`},
		{name: "URL tarball is not fetched", server: "  interfaces: [br0]", image: "  kx: {kexec_tarball: \"http://192.0.2.1/x.tar.gz\", sha256: \"" + strings.Repeat("0", 64) + "\"}", wantOut: "ok ("},
		{name: "TLS files missing", server: "  interfaces: [br0]\n  tls_cert: " + dir + "/nope.crt\n  tls_key: " + dir + "/nope.key", want: "server.tls_cert and server.tls_key"},
		{name: "tls_cert without tls_key", server: "  interfaces: [br0]\n  tls_cert: " + dir + "/nope.crt", want: "tls_key is missing"},
		{name: "ipxe_dir without binaries", server: "  interfaces: [br0]\n  ipxe_dir: " + dir + "/empty", want: "holds neither undionly.kpxe nor ipxe.efi"},
		{name: "install key readable by others", server: "  interfaces: [br0]\n  ssh_key: " + worldKey, want: "readable by others"},
		{name: "API token readable by others", server: "  interfaces: [br0]\n  api_token_file: " + worldKey, want: "readable by others"},
		{name: "rule with an unknown matcher", server: "  interfaces: [br0]", image: "rules:\n  - match: {prodcut: x}\n    profile: custom",
			want: `c.yaml:7: rules[0].match.prodcut: unknown matcher "prodcut"`},
		{name: "trust mac is named", server: "  interfaces: [br0]\n  trust: mac", wantOut: "warning: server say trust: mac: those boots are bound to the MAC alone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := cfg(tt.server, tt.image)
			args := []string{"config", "check"}
			if tt.here {
				args = append(args, "--here")
			}
			var out bytes.Buffer
			err := run(context.Background(), append(args, p), &out, &out)
			if tt.want == "" {
				if err != nil || !strings.Contains(out.String(), "ok (") {
					t.Fatalf("err = %v, want ok\n%s", err, out.String())
				}
				if tt.wantOut == "" && strings.Contains(out.String(), "warning") {
					t.Fatalf("warning where none was due:\n%s", out.String())
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to say %q\n%s", err, tt.want, out.String())
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Fatalf("output lacks %q:\n%s", tt.wantOut, out.String())
			}
			if tt.wantOnce != "" {
				if n := strings.Count(err.Error(), tt.wantOnce); n != 1 {
					t.Fatalf("error names %s %d times, want once: %v", tt.wantOnce, n, err)
				}
			}
		})
	}
	// A syntax or validation error still names the file and line.
	p := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(p, []byte("machines:\n  - mac: nope\n"), 0o644)
	err := run(context.Background(), []string{"config", "check", p}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:2") {
		t.Fatalf("err = %v", err)
	}
}

func TestSecretsAreCreatedPrivate(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "ssh", "id_ed25519")
	s1, err := loadOrCreateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := loadOrCreateKey(key)
	if err != nil || !bytes.Equal(s1.PublicKey().Marshal(), s2.PublicKey().Marshal()) {
		t.Fatalf("reloaded key differs: %v", err)
	}
	tok := filepath.Join(dir, "api-token")
	t1, err := loadOrCreateToken(tok)
	if err != nil || len(t1) < 32 {
		t.Fatalf("token %q %v", t1, err)
	}
	for _, p := range []string{key, tok} {
		st, _ := os.Stat(p)
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %o", p, st.Mode().Perm())
		}
	}
	os.Chmod(tok, 0o644)
	if _, err := loadOrCreateToken(tok); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable token accepted: %v", err)
	}
}

// reloadFixture is a running config as serve holds it: a config file
// that the test rewrites, its images, a DHCP server in authoritative
// mode (without sockets: Handle is enough to see its reservations) and
// a provision stand-in that checks what it is handed.
type reloadFixture struct {
	dir  string
	path string
	rl   *reloader
	dsrv *dhcp.Server
	prov *checkingProv
	imgs imageSet
}

const reloadMAC = "52:54:00:83:00:01"

// writeConfig writes the config file with one image, the profile web
// booting it, and one machine reserved at ip.
func (f *reloadFixture) writeConfig(t *testing.T, image, ip string) {
	t.Helper()
	cfg := fmt.Sprintf(`server:
  interfaces: [lo]
  state_dir: %[1]s/state
dhcp:
  mode: authoritative
  subnet: 10.83.0.0/24
  range: [10.83.0.100, 10.83.0.120]
images:
  %[2]s: {kernel: %[1]s/bzImage, initrd: [%[1]s/initrd]}
profiles:
  web:
    image: %[2]s
    store_paths: {disko: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko, system: /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system}
machines:
  - {mac: "%[3]s", profile: web, hostname: lab-01, ip: %[4]s}
`, f.dir, image, reloadMAC, ip)
	if err := os.WriteFile(f.path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkingProv takes configs as provision does, and checks that every
// profile it is handed names an image that is already served.
type checkingProv struct {
	mu     sync.Mutex
	images *imageSet
	served []string // images served when the last config came in
	got    []*profiles.Config
	bad    []string
	err    error
}

func (p *checkingProv) Reload(ctx context.Context, cfg *profiles.Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	imgs := *p.images.Load()
	p.served = slices.Sorted(maps.Keys(imgs))
	for name, prof := range cfg.Profiles {
		if _, ok := imgs[prof.Image]; !ok {
			p.bad = append(p.bad, fmt.Sprintf("profile %s names image %s, not served yet", name, prof.Image))
		}
	}
	if p.err != nil {
		return p.err
	}
	p.got = append(p.got, cfg)
	return nil
}

// neverAsked is a Decider for tests whose DHCP clients are not PXE
// clients: asking it at all is a failure.
type neverAsked struct{ t *testing.T }

func (d neverAsked) Decide(ctx context.Context, m dhcp.Machine) dhcp.Decision {
	d.t.Errorf("Decider asked about %s", m.MAC)
	return dhcp.Ignore
}

func newReloadFixture(t *testing.T) *reloadFixture {
	t.Helper()
	f := &reloadFixture{dir: t.TempDir()}
	f.path = filepath.Join(f.dir, "config.yaml")
	for _, name := range []string{"bzImage", "initrd"} {
		os.WriteFile(filepath.Join(f.dir, name), []byte(name), 0o644)
	}
	f.writeConfig(t, "v1", "10.83.0.10")
	flags := &serveFlags{config: f.path}
	cfg, err := loadServeConfig(flags)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cache := images.NewCache(filepath.Join(f.dir, "cache"), log)
	imgs, err := prepareImages(context.Background(), cache, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	f.imgs.Store(&imgs)
	dcfg := dhcpConfig(cfg, netip.MustParseAddr("10.83.0.1"), "http://10.83.0.1:8080", nil)
	dcfg.LeaseFile = ""
	f.dsrv, err = dhcp.New(dcfg, neverAsked{t}, log)
	if err != nil {
		t.Fatal(err)
	}
	f.prov = &checkingProv{images: &f.imgs}
	f.rl = &reloader{
		load: func() (*profiles.Config, error) { return loadServeConfig(flags) },
		prepare: func(ctx context.Context, cfg *profiles.Config) (map[string]httpboot.Image, error) {
			return prepareImages(ctx, cache, cfg, log)
		},
		images: &f.imgs, prov: f.prov, dhcp: f.dsrv, log: log, running: cfg,
	}
	return f
}

// offered is the address the DHCP server offers the machine now.
func (f *reloadFixture) offered(t *testing.T) string {
	t.Helper()
	hw, _ := net.ParseMAC(reloadMAC)
	req, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithHwAddr(hw))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.dsrv.Handle(context.Background(), req, "lo", 67)
	if err != nil || resp == nil {
		t.Fatalf("no offer: %v", err)
	}
	return resp.YourIPAddr.String()
}

func (f *reloadFixture) served() []string {
	return slices.Sorted(maps.Keys(*f.imgs.Load()))
}

// TestReload: a reload hands DHCP the machines' new `ip:` reservations
// and serves the new images before the profiles that name them take
// over (the old ones too, until then); a reload that fails part way
// leaves the images, the reservations and the running config as they
// were.
func TestReload(t *testing.T) {
	tests := []struct {
		name    string
		provErr error
		// What is in force afterwards: images served, the address the
		// machine is offered, and the running config's image.
		served, offered, image string
	}{
		{"applied", nil, "[v2]", "10.83.0.11", "v2"},
		{"refused part way", errors.New("register machine: database is gone"), "[v1]", "10.83.0.10", "v1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newReloadFixture(t)
			if got := f.offered(t); got != "10.83.0.10" {
				t.Fatalf("before the reload the machine is offered %s", got)
			}
			f.prov.err = tt.provErr
			f.writeConfig(t, "v2", "10.83.0.11")
			if err := f.rl.reload(context.Background()); !errors.Is(err, tt.provErr) {
				t.Fatalf("reload: err = %v, want %v", err, tt.provErr)
			}
			if len(f.prov.bad) > 0 {
				t.Fatalf("profiles handed over before their images: %v", f.prov.bad)
			}
			if got := fmt.Sprint(f.prov.served); got != "[v1 v2]" {
				t.Fatalf("while the profiles changed, images %s were served, want both configs' [v1 v2]", got)
			}
			if got := fmt.Sprint(f.served()); got != tt.served {
				t.Errorf("afterwards images %s are served, want %s", got, tt.served)
			}
			if got := f.offered(t); got != tt.offered {
				t.Errorf("afterwards the machine is offered %s, want %s", got, tt.offered)
			}
			if got := f.rl.running.Profile("web").Image; got != tt.image {
				t.Errorf("the running config's image is %s, want %s", got, tt.image)
			}
		})
	}
}

// TestReloadsTakeTurns: a second reload waits for the first, so a slow
// older reload can never land after a newer one.
func TestReloadsTakeTurns(t *testing.T) {
	f := newReloadFixture(t)
	prepare := f.rl.prepare
	var inFlight atomic.Int32
	entered := make(chan struct{}, 2)
	release := make(chan struct{})
	var calls atomic.Int32
	f.rl.prepare = func(ctx context.Context, cfg *profiles.Config) (map[string]httpboot.Image, error) {
		if inFlight.Add(1) > 1 {
			t.Error("two reloads prepared images at once")
		}
		defer inFlight.Add(-1)
		entered <- struct{}{}
		if calls.Add(1) == 1 {
			<-release
		}
		return prepare(ctx, cfg)
	}
	f.writeConfig(t, "v2", "10.83.0.11")
	errs := make(chan error, 2)
	go func() { errs <- f.rl.reload(context.Background()) }()
	<-entered // the first reload has read v2 and is slow
	f.writeConfig(t, "v3", "10.83.0.12")
	go func() { errs <- f.rl.reload(context.Background()) }()
	// Give the second reload the chance to overtake; a correct server
	// makes it wait, so the wait asserts nothing on time.
	select {
	case <-entered:
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := f.offered(t); got != "10.83.0.12" {
		t.Fatalf("after both reloads the machine is offered %s, want the newer config's 10.83.0.12", got)
	}
	if got := fmt.Sprint(f.served()); got != "[v3]" {
		t.Fatalf("after both reloads images %s are served, want [v3]", got)
	}
	if last := f.prov.got[len(f.prov.got)-1]; last.Profile("web").Image != "v3" {
		t.Fatalf("provision's last config names image %s, want v3", last.Profile("web").Image)
	}
}

// bootAll is a Decider that boots every machine.
type bootAll struct{}

func (bootAll) Decide(context.Context, dhcp.Machine) dhcp.Decision { return dhcp.Boot }

// TestHTTPBootWithoutARM64Binary: without dhcp.arm64_boot, an arm64 UEFI
// HTTP Boot client gets no offer, not a URL that would 404 after the
// firmware took it; x64 still gets its binary. The URLs come from the
// one table of iPXE binaries per firmware.
func TestHTTPBootWithoutARM64Binary(t *testing.T) {
	cfg, err := profiles.Parse("config.yaml", []byte("server:\n  interfaces: [lo]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DHCP.ARM64Boot != "" {
		t.Fatalf("arm64_boot defaults to %q", cfg.DHCP.ARM64Boot)
	}
	s, err := dhcp.New(dhcpConfig(cfg, netip.MustParseAddr("10.83.0.1"), "http://10.83.0.1:8080", nil), bootAll{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	hw, _ := net.ParseMAC(reloadMAC)
	for _, tt := range []struct {
		name   string
		vendor string
		arch   byte
		want   string
	}{
		{"arm64", "HTTPClient:Arch:00019:UNDI:003000", 19, ""},
		{"x64", "HTTPClient:Arch:00016:UNDI:003000", 16, "http://10.83.0.1:8080/ipxe/ipxe.efi"},
		// HTTP Boot is UEFI's: a client that names no architecture
		// is taken as x64, not given the BIOS binary.
		{"no arch named", "HTTPClient", 0, "http://10.83.0.1:8080/ipxe/ipxe.efi"},
		{"ia32, which has no binary", "HTTPClient:Arch:00015:UNDI:003000", 15, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithHwAddr(hw),
				dhcpv4.WithOption(dhcpv4.OptClassIdentifier(tt.vendor)),
				dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, tt.arch}))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := s.Handle(context.Background(), req, "lo", 67)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.want == "" && resp != nil:
				t.Fatalf("offered %q", resp.BootFileName)
			case tt.want != "" && (resp == nil || resp.BootFileName != tt.want):
				t.Fatalf("offer %v, want boot file %s", resp, tt.want)
			}
		})
	}
}
