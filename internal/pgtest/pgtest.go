// Package pgtest runs a throwaway PostgreSQL for tests: Debian's
// server binaries, initdb in a temporary directory owned by an
// unprivileged user, listening on a Unix socket in that directory only
// (no TCP, no system service), stopped and removed by Stop. It owns
// nothing else; the store's tests and the server's tests use it.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// BinDir is the newest Debian PostgreSQL server directory
// (/usr/lib/postgresql/N/bin), or "" when none is installed. Debian's,
// by absolute path: an initdb elsewhere on PATH may be another build.
func BinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	return ""
}

func version(bindir string) int {
	var n int
	fmt.Sscanf(filepath.Base(filepath.Dir(bindir)), "%d", &n)
	return n
}

// Require skips t when PostgreSQL's server binaries are missing, or
// fails it under PXE_LAB_REQUIRED=1 (CI), as netlab.RequireTools does.
func Require(t testing.TB) string {
	t.Helper()
	d := BinDir()
	if d == "" {
		d = "/usr/lib/postgresql/15/bin" // what to name as missing
	}
	netlab.RequireTools(t, filepath.Join(d, "initdb"), filepath.Join(d, "postgres"))
	return d
}

// ForTest starts a server for t (skipped or failed as Require says when
// PostgreSQL is missing), stops it when t ends, and returns it with a
// fresh database in it.
func ForTest(t testing.TB) (s *Server, db string) {
	t.Helper()
	bindir := Require(t)
	ctx := context.Background()
	s, err := Start(ctx, bindir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	if db, err = s.NewDatabase(ctx); err != nil {
		t.Fatal(err)
	}
	return s, db
}

// Server is a running throwaway PostgreSQL.
type Server struct {
	Dir      string // the temporary directory: data, socket
	User     string // the superuser
	Password string // its password (scram-sha-256 over the socket)
	bindir   string
	cred     *syscall.Credential // nil: as ourselves
	cmd      *exec.Cmd
	done     chan error
}

// nobody runs the server when the tests run as root: PostgreSQL
// refuses to run as root.
const nobody = 65534

// Start runs initdb and the server under bindir, and waits until it
// answers. The caller must Stop it.
func Start(ctx context.Context, bindir string) (*Server, error) {
	dir, err := os.MkdirTemp("", "pxe-pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, User: "postgres", Password: randomHex(16)}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: nobody, Gid: nobody}
		if err := os.Chown(dir, nobody, nobody); err != nil {
			return fail(err)
		}
	}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(s.Password+"\n"), 0o600); err != nil {
		return fail(err)
	}
	if cred != nil {
		if err := os.Chown(pwfile, nobody, nobody); err != nil {
			return fail(err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bindir, "initdb"), "-D", data, "-U", s.User,
		"--auth=scram-sha-256", "--pwfile="+pwfile, "--no-sync", "--encoding=UTF8", "--locale=C")
	initdb.Dir, initdb.Env = dir, []string{"LC_ALL=C", "PATH=" + bindir + ":/usr/bin:/bin"}
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %w\n%s", err, out))
	}
	os.Remove(pwfile)
	s.bindir, s.cred = bindir, cred
	if err := s.run(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// run starts the server on its data directory and waits until it
// answers.
func (s *Server) run(ctx context.Context) error {
	// Only the socket in Dir; fsync off: the data is thrown away.
	s.cmd = exec.Command(filepath.Join(s.bindir, "postgres"), "-D", filepath.Join(s.Dir, "data"), "-k", s.Dir,
		"-c", "listen_addresses=", "-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "synchronous_commit=off", "-c", "max_connections=500", "-c", "unix_socket_permissions=0700")
	s.cmd.Dir, s.cmd.Env = s.Dir, []string{"LC_ALL=C"}
	// Pdeathsig: a test binary that dies without Stop (a panic, a
	// timeout) takes its server with it; the backends follow their
	// postmaster.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.OpenFile(filepath.Join(s.Dir, "postgres.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Linux sends Pdeathsig when the thread that forked exits, not the
	// process: a goroutine that locks whatever thread it lands on and
	// ends locked (netlab.Do) would kill the server mid-test. So the
	// server is forked from a thread of its own, locked until the
	// server exits.
	started := make(chan error, 1)
	s.done = make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if err := s.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.done <- s.cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case werr := <-s.done:
			s.cmd = nil
			return fmt.Errorf("postgres exited: %v\n%s", werr, s.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return fmt.Errorf("postgres did not answer within a minute: %w", err)
		}
	}
}

// Restart stops the server (fast shutdown: its clients' connections
// break) and starts it again on the same data.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Down(); err != nil {
		return err
	}
	return s.Up(ctx)
}

// Down stops the server (fast shutdown) and keeps its data, for a test
// of its clients while the database is away; Up starts it again.
func (s *Server) Down() error { return s.stop() }

// Up starts a server that Down stopped, and waits until it answers.
func (s *Server) Up(ctx context.Context) error { return s.run(ctx) }

// URL is the connection string of database db, with the password.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://%s@/%s?host=%s&sslmode=disable&password=%s", s.User, db, s.Dir, s.Password)
}

// URLWithoutPassword is URL without the password, for callers that
// pass it another way (a file, PGPASSWORD).
func (s *Server) URLWithoutPassword(db string) string {
	return fmt.Sprintf("postgres://%s@/%s?host=%s&sslmode=disable", s.User, db, s.Dir)
}

// NewDatabase creates an empty database and returns its name.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name := "t_" + randomHex(8)
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return "", err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database: %w", err)
	}
	return name, nil
}

// Stop shuts the server down and removes its directory.
func (s *Server) Stop() error {
	err := s.stop()
	return errors.Join(err, os.RemoveAll(s.Dir))
}

// stop shuts the server down: SIGINT (fast shutdown), then SIGKILL
// after 30 s.
func (s *Server) stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	defer func() { s.cmd = nil }()
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
		return nil
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		return errors.New("postgres did not stop within 30 s; killed")
	}
}

// Log returns what the server wrote so far (for a failing test).
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "postgres.log"))
	return strings.TrimSpace(string(b))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
