package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/httpboot"
	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/provision"
	"github.com/pxe-anywhere/pxe-anywhere/tftp"
)

const defaultConfig = "/etc/pxe-anywhere/config.yaml"

type serveFlags struct {
	config      string
	stateDir    string
	ipxeDir     string
	httpListen  string
	adminListen string
	tftpListen  string
	logLevel    string
	logFormat   string
}

func serveFlagSet(stderr io.Writer, f *serveFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", envOr("PXE_ANYWHERE_CONFIG", defaultConfig), "config `file` (YAML or JSON; env PXE_ANYWHERE_CONFIG)")
	fs.StringVar(&f.stateDir, "state-dir", "", "state `dir` (database, leases, keys, image cache); overrides server.state_dir")
	fs.StringVar(&f.ipxeDir, "ipxe-dir", "", "`dir` holding the iPXE binaries (undionly.kpxe, ipxe.efi); overrides server.ipxe_dir; default: found in /usr/lib/ipxe or /usr/share/ipxe")
	fs.StringVar(&f.httpListen, "http-listen", "", "boot HTTP listen `address` (scripts, images, callback); overrides server.http_listen; default: the advertised address, port 8080")
	fs.StringVar(&f.adminListen, "admin-listen", "", "admin HTTP listen `address` (API, status page, metrics); overrides server.admin_listen; default 127.0.0.1:8081")
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
	if f.adminListen != "" {
		cfg.Server.AdminListen = f.adminListen
	}
	if f.tftpListen != "" {
		cfg.Server.TFTPListen = f.tftpListen
	}
	if err := requireInterfaces(f.config, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// requireInterfaces refuses a config that names no interface: serve
// needs one, and config check says so too.
func requireInterfaces(file string, cfg *profiles.Config) error {
	if len(cfg.Server.Interfaces) == 0 {
		return fmt.Errorf("%s: server.interfaces is empty: name the interfaces to serve DHCP on (DHCP never binds anywhere else)", file)
	}
	return nil
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
	ipxeSrc, ipxeDir, staged, err := stageIPXE(cfg, log)
	if err != nil {
		return err
	}
	tc, err := adminTLS(cfg.Server)
	if err != nil {
		return err
	}
	bootAddr := bootListenAddr(cfg.Server, advertise)
	_, httpPort, err := net.SplitHostPort(bootAddr)
	if err != nil {
		return fmt.Errorf("server.http_listen %q: %w", bootAddr, err)
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

	id, err := serverID(cfg.Server)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, cfg.Server, id, log.With("component", "store"))
	if err != nil {
		return err
	}
	defer st.Close()
	log.Info("server id (install claims)", "id", id, "claim_lease", cfg.Server.ClaimLease)

	// A start that fails after provision.New must still stop the
	// pollers it resumed before the store closes.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	prov, err := provision.New(gctx, cfg, provision.Options{
		Store: st, Signer: signer, KeyFile: installKeyPath(cfg), Log: log.With("component", "provision"), Metrics: provision.NewMetrics(reg),
		ServerID: id,
	})
	if err != nil {
		return err
	}
	defer func() {
		cancel()
		prov.Wait()
	}()

	dcfg := dhcpConfig(cfg, advertise, baseURL, reg)
	dcfg.Binder = prov // the boot side answers only addresses DHCP saw
	dsrv, err := dhcp.New(dcfg, prov, log.With("component", "dhcp"))
	if err != nil {
		return err
	}
	var opened closers
	defer opened.close()
	if err := dsrv.Listen(); err != nil {
		return privilegeHint(err)
	}
	opened.add(dsrv.Close)
	bl, err := listenBoot(cfg.Server, bootAddr)
	if err != nil {
		return privilegeHint(err)
	}
	opened.add(func() { bl.Close() })
	al, adminLoopback, err := listenAdmin(cfg.Server.AdminListen, tc)
	if err != nil {
		return privilegeHint(err)
	}
	opened.add(func() { al.Close() })
	tsrv, err := tftp.New(ipxeDir, log.With("component", "tftp"), reg)
	if err != nil {
		return err
	}
	lim := cfg.Server.Limits // read at start; a reload does not change them
	tsrv.SetMaxTransfers(lim.TFTPMaxTransfers)
	tsrv.SetWindow(lim.TFTPWindow)
	if err := tsrv.Listen(cfg.Server.TFTPListen); err != nil {
		return privilegeHint(err)
	}
	opened.add(tsrv.Close)
	rsrv, err := listenRA(cfg, log, reg)
	if err != nil {
		return err
	}
	if rsrv != nil {
		opened.add(rsrv.Close)
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

	// Two HTTP sides on two listeners: what booting machines need on
	// the provisioning address, what operators need on admin_listen.
	sides := []struct {
		l net.Listener
		h http.Handler
	}{
		{bl, httpboot.New(httpboot.Config{
			BaseURL: baseURL,
			Images:  func() map[string]httpboot.Image { return *current.Load() },
			IPXEDir: ipxeDir,
			Log:     log.With("component", "http"),
			Metrics: reg,
			Limits: httpboot.SourceLimits{
				MaxInFlight:      lim.BootMaxPerSource,
				ScriptsPerMinute: lim.BootScriptsPerMinute,
			},
			WriteTimeout: lim.HTTPWriteTimeout,
			Health:       prov.Health,
		}, prov)},
		{al, admin.New(admin.Config{
			APIToken:          apiToken,
			RequireLogin:      !adminLoopback,
			Log:               log.With("component", "admin"),
			Metrics:           reg,
			Reload:            rl.reload,
			Power:             prov,
			SSEWriteTimeout:   lim.SSEWriteTimeout,
			SSEMaxSubscribers: lim.SSEMaxSubscribers,
			Warnings: func() []string {
				if w := weakTrustWarning(prov.Config()); w != "" {
					return []string{w}
				}
				return nil
			},
		}, prov)},
	}

	log.Info("serving",
		"interfaces", cfg.Server.Interfaces, "dhcp_mode", cfg.DHCP.Mode, "advertise", advertise,
		"http", bl.Addr().String(), "admin", al.Addr().String(), "admin_tls", tc != nil, "admin_login", !adminLoopback,
		"tftp", tsrv.Addr().String(), "ipxe_dir", ipxeSrc, "ipxe_files", staged,
		"machines", len(cfg.Machines), "unknown_machines", cfg.Server.UnknownMachines)
	warnExposure(log, bl.Addr(), al.Addr(), adminLoopback, tc != nil)

	g.Go(func() error { return dsrv.Serve(gctx) })
	g.Go(func() error { return tsrv.Serve(gctx) })
	if rsrv != nil {
		g.Go(func() error { return rsrv.Serve(gctx) })
	}
	for _, side := range sides {
		g.Go(func() error {
			return httpserve.ServeTimeouts(gctx, side.l, side.h, log, httpserve.Timeouts{
				Header: lim.HTTPHeaderTimeout, Read: lim.HTTPReadTimeout, Idle: lim.HTTPIdleTimeout, Write: lim.HTTPWriteTimeout,
			})
		})
	}
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

// prepareImages fetches and unpacks every image the config names and
// warns about images that will not restore our SSH keys.
func prepareImages(ctx context.Context, cache *images.Cache, cfg *profiles.Config, log *slog.Logger) (map[string]httpboot.Image, error) {
	out := map[string]httpboot.Image{}
	for name, img := range cfg.Images {
		var last int64
		prepared, err := cache.Prepare(ctx, imageSource(name, img), func(done, total int64) {
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

// imageSource is what the images package needs of a config image.
func imageSource(name string, img *profiles.Image) images.Source {
	return images.Source{
		Name: name, KexecTarball: img.KexecTarball, SHA256: img.SHA256, NetbootDir: img.NetbootDir,
		Kernel: img.Kernel, Initrd: img.Initrd, Cmdline: img.Cmdline,
	}
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
