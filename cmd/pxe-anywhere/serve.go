package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/provision"
	"github.com/pxe-anywhere/pxe-anywhere/tftp"
)

const defaultConfig = "/etc/pxe-anywhere/config.yaml"

type serveFlags struct {
	config     string
	stateDir   string
	ipxeDir    string
	httpListen string
	tftpListen string
	logLevel   string
	logFormat  string
}

func serveFlagSet(stderr io.Writer, f *serveFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", envOr("PXE_ANYWHERE_CONFIG", defaultConfig), "config `file` (YAML or JSON; env PXE_ANYWHERE_CONFIG)")
	fs.StringVar(&f.stateDir, "state-dir", "", "state `dir` (database, leases, keys, image cache); overrides server.state_dir")
	fs.StringVar(&f.ipxeDir, "ipxe-dir", "", "`dir` holding the iPXE binaries (undionly.kpxe, ipxe.efi); overrides server.ipxe_dir; default: found in /usr/lib/ipxe or /usr/share/ipxe")
	fs.StringVar(&f.httpListen, "http-listen", "", "HTTP listen `address`; overrides server.http_listen")
	fs.StringVar(&f.tftpListen, "tftp-listen", "", "TFTP listen `address`; overrides server.tftp_listen")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log `format`: text or json")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: pxe-anywhere serve [flags]

Serves DHCP (proxy or authoritative), TFTP and HTTP on the interfaces that
the config names, netboots the machines it lists into the installer image of
their profile, and installs them over SSH. State survives restarts. SIGHUP
(or "pxe-anywhere config reload") reloads the config; a config with an error
is refused and the running one stays.

Flags:
`)
		fs.PrintDefaults()
	}
	return fs
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// loadServeConfig reads the config and applies the flags that override it.
func loadServeConfig(f *serveFlags) (*profiles.Config, error) {
	cfg, err := profiles.Load(f.config)
	if err != nil {
		return nil, err
	}
	if f.stateDir != "" {
		cfg.Server.StateDir = f.stateDir
	}
	if f.ipxeDir != "" {
		cfg.Server.IPXEDir = f.ipxeDir
	}
	if f.httpListen != "" {
		cfg.Server.HTTPListen = f.httpListen
	}
	if f.tftpListen != "" {
		cfg.Server.TFTPListen = f.tftpListen
	}
	if len(cfg.Server.Interfaces) == 0 {
		return nil, fmt.Errorf("%s: server.interfaces is empty: name the interfaces to serve DHCP on (DHCP never binds anywhere else)", f.config)
	}
	return cfg, nil
}

// checkInterfaces fails on an interface that does not exist here, and
// finds the address to advertise when the config leaves it out.
func checkInterfaces(cfg *profiles.Config) (netip.Addr, error) {
	var names []string
	if all, err := net.Interfaces(); err == nil {
		for _, i := range all {
			names = append(names, i.Name)
		}
	}
	var first netip.Addr
	for n, name := range cfg.Server.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("server.interfaces: interface %q does not exist on this machine (it has: %s)", name, strings.Join(names, ", "))
		}
		if n > 0 || first.IsValid() {
			continue
		}
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				first = p.Addr()
				break
			}
		}
	}
	if cfg.Server.Advertise.IsValid() {
		return cfg.Server.Advertise, nil
	}
	if !first.IsValid() {
		return netip.Addr{}, fmt.Errorf("server.advertise is not set and interface %q has no IPv4 address to advertise", cfg.Server.Interfaces[0])
	}
	return first, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := serveFlagSet(stderr, &f)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve: unexpected argument %q (see --help)", fs.Arg(0))
	}
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	cfg, err := loadServeConfig(&f)
	if err != nil {
		return err
	}
	advertise, err := checkInterfaces(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.Server.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	signer, err := loadOrCreateKey(installKeyPath(cfg))
	if err != nil {
		return err
	}
	apiToken, err := loadOrCreateToken(apiTokenPath(cfg))
	if err != nil {
		return err
	}
	ipxeSrc, err := tftp.FindIPXEDir(cfg.Server.IPXEDir)
	if err != nil {
		return err
	}
	// TFTP and HTTP Boot serve a copy taken now: the strict resolver
	// then never has to follow the distribution's symlinks.
	ipxeDir := filepath.Join(cfg.Server.StateDir, "ipxe")
	bootFiles := []string{"undionly.kpxe", "ipxe.efi", "snponly.efi"}
	if cfg.DHCP.EFIx64Boot != "" {
		bootFiles = append(bootFiles, cfg.DHCP.EFIx64Boot)
	}
	if cfg.DHCP.ARM64Boot != "" {
		bootFiles = append(bootFiles, cfg.DHCP.ARM64Boot)
	}
	staged, err := tftp.Stage(ipxeSrc, ipxeDir, bootFiles)
	if err != nil {
		return fmt.Errorf("iPXE binaries: %w", err)
	}
	for _, name := range []string{cfg.DHCP.EFIx64Boot, cfg.DHCP.ARM64Boot} {
		if name != "" && !slices.Contains(staged, name) {
			log.Warn("boot file named in the config is not in the iPXE directory: those machines will not boot", "file", name, "ipxe_dir", ipxeSrc)
		}
	}
	_, httpPort, err := net.SplitHostPort(cfg.Server.HTTPListen)
	if err != nil {
		return fmt.Errorf("server.http_listen %q: %w", cfg.Server.HTTPListen, err)
	}
	baseURL := "http://" + net.JoinHostPort(advertise.String(), httpPort)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	cache := images.NewCache(filepath.Join(cfg.Server.StateDir, "images"), log)
	imgs, err := prepareImages(ctx, cache, cfg, log)
	if err != nil {
		return err
	}
	var current imageSet
	current.Store(&imgs)

	store, err := profiles.OpenStore(ctx, filepath.Join(cfg.Server.StateDir, "state.db"))
	if err != nil {
		return err
	}
	defer store.Close()

	// A start that fails after provision.New must still stop the
	// pollers it resumed before the store closes.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	prov, err := provision.New(gctx, cfg, provision.Options{
		Store: store, Signer: signer, KeyFile: installKeyPath(cfg), Log: log.With("component", "provision"), Metrics: provision.NewMetrics(reg),
	})
	if err != nil {
		return err
	}
	defer func() {
		cancel()
		prov.Wait()
	}()

	dsrv, err := dhcp.New(dhcpConfig(cfg, advertise, baseURL, reg), prov, log.With("component", "dhcp"))
	if err != nil {
		return err
	}
	// A socket that fails to open closes the ones opened before it, so
	// that a failed start leaves nothing bound. TFTP goes last: it is
	// the one without a Close.
	if err := dsrv.Listen(); err != nil {
		return err
	}
	hl, err := net.Listen("tcp", cfg.Server.HTTPListen)
	if err != nil {
		dsrv.Close()
		return fmt.Errorf("server.http_listen: %w", err)
	}
	tsrv, err := tftp.New(ipxeDir, log.With("component", "tftp"), reg)
	if err == nil {
		err = tsrv.Listen(cfg.Server.TFTPListen)
	}
	if err != nil {
		dsrv.Close()
		hl.Close()
		return err
	}

	rl := &reloader{
		load: func() (*profiles.Config, error) { return loadServeConfig(&f) },
		prepare: func(ctx context.Context, cfg *profiles.Config) (map[string]httpboot.Image, error) {
			return prepareImages(ctx, cache, cfg, log)
		},
		images:  &current,
		prov:    prov,
		dhcp:    dsrv,
		log:     log,
		running: cfg,
	}

	hsrv := httpboot.New(httpboot.Config{
		BaseURL:  baseURL,
		Images:   func() map[string]httpboot.Image { return *current.Load() },
		IPXEDir:  ipxeDir,
		APIToken: apiToken,
		Log:      log.With("component", "http"),
		Metrics:  reg,
		Reload:   rl.reload,
	}, prov, prov)

	log.Info("serving",
		"interfaces", cfg.Server.Interfaces, "dhcp_mode", cfg.DHCP.Mode, "advertise", advertise,
		"http", hl.Addr().String(), "tftp", tsrv.Addr().String(), "ipxe_dir", ipxeSrc, "ipxe_files", staged,
		"machines", len(cfg.Machines), "unknown_machines", cfg.Server.UnknownMachines)

	g.Go(func() error { return dsrv.Serve(gctx) })
	g.Go(func() error { return tsrv.Serve(gctx) })
	g.Go(func() error { return hsrv.Serve(gctx, hl) })
	g.Go(func() error {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-hup:
				_ = rl.reload(gctx)
			}
		}
	})
	err = g.Wait()
	prov.Wait()
	if ctx.Err() != nil {
		log.Info("stopped")
		return nil
	}
	return err
}

func dhcpConfig(cfg *profiles.Config, advertise netip.Addr, baseURL string, reg prometheus.Registerer) dhcp.Config {
	d := dhcp.Config{
		Interfaces: cfg.Server.Interfaces,
		Mode:       dhcp.Proxy,
		ServerIP:   advertise,
		ScriptURL: func(mac net.HardwareAddr) string {
			return baseURL + "/boot/" + strings.ReplaceAll(mac.String(), ":", "-") + ".ipxe"
		},
		HTTPBootURL: func(m dhcp.Machine) string {
			name := cfg.DHCP.EFIx64Boot
			if m.Firmware.Arch == dhcp.ArchEFIarm64 {
				name = cfg.DHCP.ARM64Boot
			}
			if name == "" {
				// No offer at all: a URL without a file would 404 only
				// after the firmware has taken the offer.
				return ""
			}
			return baseURL + "/ipxe/" + name
		},
		BootFiles: map[dhcp.Arch]string{
			dhcp.ArchBIOS:   "undionly.kpxe",
			dhcp.ArchEFIx64: cfg.DHCP.EFIx64Boot,
		},
		Metrics: reg,
	}
	if cfg.DHCP.ARM64Boot != "" {
		d.BootFiles[dhcp.ArchEFIarm64] = cfg.DHCP.ARM64Boot
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

// prepareImages fetches and unpacks every image the config names and
// warns about images that will not restore our SSH keys.
func prepareImages(ctx context.Context, cache *images.Cache, cfg *profiles.Config, log *slog.Logger) (map[string]httpboot.Image, error) {
	out := map[string]httpboot.Image{}
	for name, img := range cfg.Images {
		src := images.Source{
			Name: name, KexecTarball: img.KexecTarball, SHA256: img.SHA256, NetbootDir: img.NetbootDir,
			Kernel: img.Kernel, Initrd: img.Initrd, Cmdline: img.Cmdline,
		}
		var last int64
		prepared, err := cache.Prepare(ctx, src, func(done, total int64) {
			if total > 0 && done*10/total != last {
				last = done * 10 / total
				log.Info("downloading image", "image", name, "done_mb", done>>20, "total_mb", total>>20)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("image %q: %w", name, err)
		}
		if !prepared.Restores {
			log.Warn("image may not restore injected SSH keys: machines booting it are found only if it calls back or trusts our key another way (use a nixos-images kexec tarball or netboot-installer-nixos build)", "image", name, "kind", prepared.Kind)
		}
		out[name] = httpboot.Image{Name: name, Kernel: prepared.Kernel, Initrds: prepared.Initrds, Init: prepared.Init, Params: prepared.Params}
	}
	return out, nil
}

func installKeyPath(cfg *profiles.Config) string {
	if cfg.Server.SSHKey != "" {
		return cfg.Server.SSHKey
	}
	return filepath.Join(cfg.Server.StateDir, "ssh", "id_ed25519")
}

func apiTokenPath(cfg *profiles.Config) string {
	if cfg.Server.APITokenFile != "" {
		return cfg.Server.APITokenFile
	}
	return filepath.Join(cfg.Server.StateDir, "api-token")
}

// imageSet is the image table in force; reload swaps it whole.
type imageSet = atomic.Pointer[map[string]httpboot.Image]
