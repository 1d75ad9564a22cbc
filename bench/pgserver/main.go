// Command pgserver runs a throwaway PostgreSQL for the benchmarks (as
// the tests do, internal/pgtest: initdb in a temporary directory, a Unix
// socket there, as nobody when root) with one empty database. It writes
// the database's URL (without the password) to -url and the password to
// -password (mode 0600), then runs until SIGTERM or SIGINT, and removes
// everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pxe-anywhere/pxe-anywhere/internal/pgtest"
)

func main() {
	urlFile := flag.String("url", "", "file to write the database URL to")
	pwFile := flag.String("password", "", "file to write the password to (0600)")
	flag.Parse()
	if err := run(*urlFile, *pwFile); err != nil {
		fmt.Fprintln(os.Stderr, "pgserver:", err)
		os.Exit(1)
	}
}

func run(urlFile, pwFile string) error {
	bindir := pgtest.BinDir()
	if bindir == "" {
		return fmt.Errorf("no PostgreSQL server binaries (apt-get install postgresql)")
	}
	ctx := context.Background()
	pg, err := pgtest.Start(ctx, bindir)
	if err != nil {
		return err
	}
	defer pg.Stop()
	db, err := pg.NewDatabase(ctx)
	if err != nil {
		return err
	}
	if err := os.WriteFile(pwFile, []byte(pg.Password+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(urlFile, []byte(pg.URLWithoutPassword(db)+"\n"), 0o644); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}
