// Command pxe-anywhere installs NixOS on bare metal with nobody at the
// machine: `serve` netboots machines into a NixOS installer and installs
// them by profile; `install` does the same to a machine that already runs
// Linux, with nixos-anywhere's flags; `machines` talks to a running server.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `pxe-anywhere: zero-touch NixOS installs on bare metal

Usage:
  pxe-anywhere serve [flags]              netboot and install machines (DHCP, TFTP, HTTP)
  pxe-anywhere install [flags] [user@]host install NixOS on a running Linux host over SSH
  pxe-anywhere machines list|show|logs|reinstall|forget   operate a running server
  pxe-anywhere config check [--here] FILE validate a config file and what serve checks at start
  pxe-anywhere config reload              make a running server reload its config
  pxe-anywhere image fetch|inspect ...    download and cache, or look into, an installer image
  pxe-anywhere version

Run "pxe-anywhere COMMAND --help" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pxe-anywhere:", err)
		// The failing command's exit code, as nixos-anywhere exits with
		// it; 1 for our own errors.
		os.Exit(installer.ExitCode(err))
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "install":
		return runInstall(ctx, args[1:], stdout, stderr)
	case "machines":
		return runMachines(ctx, args[1:], stdout, stderr)
	case "config":
		return runConfig(ctx, args[1:], stdout, stderr)
	case "image":
		return runImage(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "pxe-anywhere", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
