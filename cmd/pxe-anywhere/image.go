package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/pxe-anywhere/pxe-anywhere/images"
)

func runImage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sum := fs.String("sha256", "", "expected SHA-256 `hex` of a downloaded tarball (required for URLs)")
	cacheDir := fs.String("cache", "/var/lib/pxe-anywhere/images", "image cache `dir`")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage:
  pxe-anywhere image fetch [--sha256 HEX] [--cache DIR] URL_OR_PATH
      download (once, cached by checksum) and unpack a nixos-images kexec tarball
  pxe-anywhere image inspect [--cache DIR] PATH
      show the kernel, initrd, init and kernel parameters that serve would boot
      (PATH: a kexec tarball or a netboot-installer-nixos build directory)

Flags:
`)
		fs.PrintDefaults()
	}
	if len(args) == 0 {
		fs.Usage()
		return errors.New("image: want fetch or inspect")
	}
	sub := args[0]
	if sub == "-h" || sub == "--help" {
		fs.Usage()
		return flag.ErrHelp
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("image %s: want exactly one URL or path", sub)
	}
	src := images.Source{Name: filepath.Base(fs.Arg(0)), SHA256: *sum}
	switch sub {
	case "fetch", "inspect":
		if fi := fs.Arg(0); strings.HasSuffix(fi, ".tar.gz") || strings.Contains(fi, "://") {
			src.KexecTarball = fi
		} else {
			src.NetbootDir = fi
		}
	default:
		return fmt.Errorf("image: unknown subcommand %q (want fetch or inspect)", sub)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cache := images.NewCache(*cacheDir, log)
	img, err := cache.Prepare(ctx, src, func(done, total int64) {
		if total > 0 {
			fmt.Fprintf(stderr, "\r%d/%d MiB", done>>20, total>>20)
		}
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kind:     %s\nkernel:   %s\ninitrds:  %s\ninit:     %s\nparams:   %s\nrestores injected SSH keys: %v\n",
		img.Kind, img.Kernel, strings.Join(img.Initrds, " "), img.Init, strings.Join(img.Params, " "), img.Restores)
	return nil
}
