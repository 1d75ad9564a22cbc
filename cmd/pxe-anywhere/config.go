package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
	"github.com/pxe-anywhere/pxe-anywhere/tftp"
)

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("config: want check FILE or reload (see pxe-anywhere config --help)")
	}
	switch args[0] {
	case "check":
		fs := flag.NewFlagSet("config check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		here := fs.Bool("here", false, "this is the server: also check that server.interfaces exist here, the address to advertise, and the iPXE binaries that serve would find")
		fs.Usage = func() {
			fmt.Fprint(stderr, `Usage: pxe-anywhere config check [--here] FILE

Validates FILE and prints every error with its line, then refuses what
serve would refuse at start: no server.interfaces, a missing image file
(kernel, initrd, netboot_dir, local kexec_tarball and its sha256), TLS
files that do not load, an ipxe_dir without iPXE binaries, an install key
or API token file that exists but is unusable. Image URLs are not
downloaded. Whether the interfaces exist can only be told on the server:
without --here it is a warning.

Flags:
`)
			fs.PrintDefaults()
		}
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return errors.New("config check: want exactly one FILE")
		}
		cfg, err := profiles.Load(fs.Arg(0))
		if err != nil {
			return err
		}
		warnings, err := preflight(fs.Arg(0), cfg, *here)
		for _, w := range warnings {
			fmt.Fprintln(stdout, "warning: "+w)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: ok (%d images, %d profiles, %d machines, DHCP %s on %s)\n", fs.Arg(0),
			len(cfg.Images), len(cfg.Profiles), len(cfg.Machines), cfg.DHCP.Mode, strings.Join(cfg.Server.Interfaces, ", "))
		return nil
	case "reload":
		c, err := newAPIClientFlags("config reload", args[1:], stderr)
		if err != nil {
			return err
		}
		var out struct {
			Status string `json:"status"`
		}
		if err := c.do(ctx, http.MethodPost, "/api/v1/config/reload", &out); err != nil {
			return fmt.Errorf("config reload: %w", err)
		}
		fmt.Fprintln(stdout, "config reloaded")
		return nil
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, "Usage:\n  pxe-anywhere config check [--here] FILE   validate a config file, and what serve checks at start\n  pxe-anywhere config reload       make the running server reload its config (refused if it has an error)")
		return nil
	}
	return fmt.Errorf("config: unknown subcommand %q (want check or reload)", args[0])
}

// preflight makes, without side effects, the checks that serve makes
// at start beyond the config's own validation, so that config check
// refuses what serve would. It returns every failure joined, and
// warnings for what it could not check or what serve only warns
// about. here says this is the server: the interfaces and the iPXE
// search are this machine's.
func preflight(file string, cfg *profiles.Config, here bool) (warnings []string, err error) {
	var errs []error
	if err := requireInterfaces(file, cfg); err != nil {
		errs = append(errs, err)
	} else if here {
		if _, err := checkInterfaces(cfg); err != nil {
			errs = append(errs, err)
		}
	} else {
		warnings = append(warnings, fmt.Sprintf("server.interfaces (%s) not checked: whether they exist, and the address to advertise, can only be told on the server (config check --here)", strings.Join(cfg.Server.Interfaces, ", ")))
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Images)) {
		if err := images.Check(imageSource(name, cfg.Images[name])); err != nil {
			errs = append(errs, fmt.Errorf("image %q: %w", name, err))
		}
	}
	if _, err := adminTLS(cfg.Server); err != nil {
		errs = append(errs, err)
	}
	if cfg.Server.IPXEDir != "" || here {
		if _, err := tftp.FindIPXEDir(cfg.Server.IPXEDir); err != nil {
			errs = append(errs, err)
		}
	}
	// Files serve creates when missing are checked only when present:
	// then serve reads them, and refuses them if they are unusable.
	for _, f := range []struct {
		path  string
		check func(string) error
	}{
		{cfg.Server.SSHKey, func(p string) error { _, err := loadOrCreateKey(p); return err }},
		{cfg.Server.APITokenFile, func(p string) error { _, err := loadOrCreateToken(p); return err }},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err == nil {
			if err := f.check(f.path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if w := weakTrustWarning(cfg); w != "" {
		warnings = append(warnings, w)
	}
	return warnings, errors.Join(errs...)
}

// weakTrustWarning says which parts of cfg bind boots to the MAC alone,
// or is "" when none does.
func weakTrustWarning(cfg *profiles.Config) string {
	weak := cfg.WeakTrust()
	if len(weak) == 0 {
		return ""
	}
	return strings.Join(weak, ", ") + " say trust: mac: those boots are bound to the MAC alone, not to an address that DHCP gave, so any host that reaches the boot listener can ask for them (see docs/security.md)"
}
