package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("config: want check FILE or reload (see pxe-anywhere config --help)")
	}
	switch args[0] {
	case "check":
		fs := flag.NewFlagSet("config check", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() {
			fmt.Fprintln(stderr, "Usage: pxe-anywhere config check FILE\n\nValidates FILE and prints every error with its line.")
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
		fmt.Fprintf(stdout, "%s: ok (%d images, %d profiles, %d machines, DHCP %s on %s)\n", fs.Arg(0),
			len(cfg.Images), len(cfg.Profiles), len(cfg.Machines), cfg.DHCP.Mode, strings.Join(cfg.Server.Interfaces, ", "))
		if w := weakTrustWarning(cfg); w != "" {
			fmt.Fprintln(stdout, "warning: "+w)
		}
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
		fmt.Fprintln(stdout, "Usage:\n  pxe-anywhere config check FILE   validate a config file\n  pxe-anywhere config reload       make the running server reload its config (refused if it has an error)")
		return nil
	}
	return fmt.Errorf("config: unknown subcommand %q (want check or reload)", args[0])
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
