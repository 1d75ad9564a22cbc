package installer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Conn is one verified SSH connection to the target, with the command
// prefix (sudo/doas) that makes a command run as root.
type Conn struct {
	client  *ssh.Client
	hostKey ssh.PublicKey
	addr    string
	sudo    string
	// sudoPassword is typed to a sudo that asks (sudo -S): the first
	// line of the stdin of each command run as root.
	sudoPassword string
	sink         Sink
	phase        string

	maxLine   int   // longest line passed on whole
	maxOutput int64 // most output kept in memory for one command
	// stalled is set when keepalives went unanswered and the
	// connection was closed for it; it says why commands failed.
	stalled atomic.Pointer[string]
}

// tailLines is how much command output a PhaseError keeps.
const tailLines = 30

// pollInterval is the pause between reachability checks while waiting
// for a host to go away or come back.
var pollInterval = time.Second

type run struct {
	opts  Options
	sink  Sink
	conn  *Conn
	facts Facts
	known []ssh.PublicKey // host keys accepted so far (pinned, or seen first)
	// afterKexec: the host now answering is the installer kexec started.
	afterKexec bool
	// sudoPassword: what Options.SudoPassword gave for a sudo that asks.
	sudoPassword string
	// jump is the connection to Options.ProxyJump, whose host keys
	// accepted so far are jumpKnown.
	jump      *ssh.Client
	jumpKnown []ssh.PublicKey
	tmpDir    string
	agentLn   net.Listener
	hwDone    bool
	// substDone: the configuration's substituters went to the target.
	substDone bool
}

func (r *run) close() {
	if r.conn != nil {
		r.conn.client.Close()
	}
	if r.jump != nil {
		r.jump.Close()
	}
	if r.agentLn != nil {
		r.agentLn.Close()
	}
	if r.tmpDir != "" {
		os.RemoveAll(r.tmpDir)
	}
}

func (r *run) addr(port int) string {
	return net.JoinHostPort(r.opts.Target.Host, strconv.Itoa(port))
}

func (r *run) connectTimeout() time.Duration {
	if v, err := strconv.Atoi(r.opts.SSHOptions["ConnectTimeout"]); err == nil && v > 0 {
		return time.Duration(v) * time.Second
	}
	return 10 * time.Second
}

// hostKeyCallback accepts only the pinned key, keys already seen in this
// run (the kexec image keeps the old host keys), or, without a pin, what
// known_hosts says, as ssh's StrictHostKeyChecking would: an unknown host
// is trusted on first use and recorded (unless "yes"), a changed key is
// refused (unless "no", which warns).
// The second callback is known_hosts' own, when it is consulted.
func (r *run) hostKeyCallback() (ssh.HostKeyCallback, ssh.HostKeyCallback, error) {
	if r.opts.HostKey != nil && len(r.known) == 0 {
		r.known = append(r.known, r.opts.HostKey)
	}
	return r.verifier(&r.known, r.afterKexec, r.knownHostsFile(), r.opts.SSHOptions)
}

// verifier is hostKeyCallback for one host, whose keys accepted so far
// are *known (the target's, or the jump host's), with its known hosts
// file and its StrictHostKeyChecking and HashKnownHosts in opts.
func (r *run) verifier(known *[]ssh.PublicKey, afterKexec bool, file string, opts map[string]string) (ssh.HostKeyCallback, ssh.HostKeyCallback, error) {
	var khCB ssh.HostKeyCallback
	if len(*known) == 0 {
		if _, err := os.Stat(file); err == nil {
			cb, err := knownhosts.New(file)
			if err != nil {
				return nil, nil, fmt.Errorf("reading known hosts file %s: %w", file, err)
			}
			khCB = cb
		}
	}
	strict := strictness(opts["StrictHostKeyChecking"])
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		for _, k := range *known {
			if bytes.Equal(k.Marshal(), key.Marshal()) {
				return nil
			}
		}
		if len(*known) > 0 {
			if afterKexec && r.opts.AcceptNewHostKeyAfterKexec {
				r.sink.Line(PhaseKexec, "info", fmt.Sprintf("warning: the installer presents %s %s, not the old system's %s; accepted (--accept-new-host-key-after-kexec)",
					key.Type(), ssh.FingerprintSHA256(key), ssh.FingerprintSHA256((*known)[0])))
				*known = append(*known, key)
				return nil
			}
			if afterKexec {
				return fmt.Errorf("%w: after kexec %s presented %s %s, but the old system had %s (the nixos-images installer keeps the old host keys); if the new key is expected, pass --accept-new-host-key-after-kexec",
					ErrHostKeyMismatch, hostname, key.Type(), ssh.FingerprintSHA256(key), ssh.FingerprintSHA256((*known)[0]))
			}
			return fmt.Errorf("%w: %s presented %s %s, expected %s; refusing to continue (is this the right machine?)",
				ErrHostKeyMismatch, hostname, key.Type(), ssh.FingerprintSHA256(key), ssh.FingerprintSHA256((*known)[0]))
		}
		if khCB != nil {
			err := khCB(hostname, remote, key)
			var ke *knownhosts.KeyError
			if err == nil {
				*known = append(*known, key)
				return nil
			}
			if errors.As(err, &ke) && len(ke.Want) > 0 {
				was := ke.Want[0]
				if strict == "no" {
					r.sink.Line("connect", "info", fmt.Sprintf("warning: %s presented %s %s, but %s:%d has %s; accepted because StrictHostKeyChecking=no",
						hostname, key.Type(), ssh.FingerprintSHA256(key), was.Filename, was.Line, ssh.FingerprintSHA256(was.Key)))
					*known = append(*known, key)
					return nil
				}
				return fmt.Errorf("%w: %s presented %s %s, which differs from known_hosts (%s:%d has %s %s): if the host was reinstalled, remove that line (ssh-keygen -R)",
					ErrHostKeyMismatch, hostname, key.Type(), ssh.FingerprintSHA256(key), was.Filename, was.Line, was.Key.Type(), ssh.FingerprintSHA256(was.Key))
			}
		}
		if strict == "yes" {
			return fmt.Errorf("%w: %s (%s %s) is not in %s and StrictHostKeyChecking=yes; add it, or use --ssh-option StrictHostKeyChecking=accept-new",
				ErrHostKeyMismatch, hostname, key.Type(), ssh.FingerprintSHA256(key), file)
		}
		*known = append(*known, key)
		msg := fmt.Sprintf("%s is new: trusting its %s key %s on first use", hostname, key.Type(), ssh.FingerprintSHA256(key))
		if strict != "no" {
			if err := recordHostKey(file, opts, hostname, key); err != nil {
				msg += " (not recorded: " + err.Error() + ")"
			} else {
				msg += ", recorded in " + file
			}
		}
		r.sink.Line("connect", "info", msg)
		return nil
	}, khCB, nil
}

// strictness maps ssh's spellings of StrictHostKeyChecking (ssh -G
// prints true/false) to yes, no or ask; accept-new and ask both trust
// a new host on first use, since the engine cannot ask.
func strictness(v string) string {
	switch strings.ToLower(v) {
	case "yes", "true":
		return "yes"
	case "no", "false", "off":
		return "no"
	}
	return "ask"
}

// knownHostsFile is where host keys are looked up and new ones recorded.
func (r *run) knownHostsFile() string {
	if r.opts.KnownHostsFile != "" {
		return r.opts.KnownHostsFile
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".ssh", "known_hosts")
}

// recordHostKey appends key for hostname (host:port as ssh writes it)
// to the known hosts file, hashed when HashKnownHosts says so.
func recordHostKey(file string, opts map[string]string, hostname string, key ssh.PublicKey) error {
	name := knownhosts.Normalize(hostname)
	if h := strings.ToLower(opts["HashKnownHosts"]); h == "yes" || h == "true" {
		name = knownhosts.HashHostname(name)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(knownhosts.Line([]string{name}, key) + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// probeKey is a key no known_hosts file holds: offering it to the
// known_hosts callback makes it list the keys it has for a host.
var probeKey, _ = ssh.NewPublicKey(ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public())

// knownKeys are the keys known_hosts holds for addr (host:port).
func knownKeys(kh ssh.HostKeyCallback, addr string) []ssh.PublicKey {
	var ke *knownhosts.KeyError
	if err := kh(addr, &net.TCPAddr{IP: net.IPv4zero}, probeKey); !errors.As(err, &ke) {
		return nil
	}
	keys := make([]ssh.PublicKey, 0, len(ke.Want))
	for _, k := range ke.Want {
		keys = append(keys, k.Key)
	}
	return keys
}

// clientConfig is the SSH client configuration for addr (host:port).
func (r *run) clientConfig(addr string) (*ssh.ClientConfig, error) {
	cb, kh, err := r.hostKeyCallback()
	if err != nil {
		return nil, err
	}
	return r.sshConfig(r.opts.Target.User, addr, cb, kh, r.known), nil
}

// sshConfig logs in as user at addr with our credentials, accepting the
// host keys cb accepts.
func (r *run) sshConfig(user, addr string, cb, kh ssh.HostKeyCallback, known []ssh.PublicKey) *ssh.ClientConfig {
	var auth []ssh.AuthMethod
	if len(r.opts.Signers) > 0 {
		auth = append(auth, ssh.PublicKeys(r.opts.Signers...))
	}
	if r.opts.Password != "" {
		auth = append(auth, ssh.Password(r.opts.Password))
	}
	var algos []string
	keys := known
	if len(keys) == 0 && kh != nil {
		keys = knownKeys(kh, addr)
	}
	for _, k := range keys {
		for _, a := range hostKeyAlgorithms(k) {
			if !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	if len(algos) == 0 {
		// Nothing known yet: OpenSSH's order, ed25519 first (the Go
		// client would ask for RSA first), so that the key trusted now
		// is the one ssh would have recorded.
		algos = []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return &ssh.ClientConfig{
		User:            user,
		Auth:            auth,
		HostKeyCallback: cb,
		// Ask for the types of the keys we would accept (pinned, seen
		// in this run, or in known_hosts for addr): by default the client
		// asks for RSA or ECDSA before ed25519, and a host that has
		// several keys would present one we refuse.
		HostKeyAlgorithms: algos,
		Timeout:           r.connectTimeout(),
	}
}

// hostKeyAlgorithms are the algorithms under which a server presents k.
func hostKeyAlgorithms(k ssh.PublicKey) []string {
	if k.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{k.Type()}
}

// dialTCP opens a TCP connection to addr: directly, or from the jump
// host (a direct-tcpip channel, as ssh -J does).
func (r *run) dialTCP(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	if r.opts.ProxyJump == nil {
		d := net.Dialer{Timeout: timeout}
		return d.DialContext(ctx, "tcp", addr)
	}
	j, err := r.jumpClient(ctx)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := j.DialContext(dctx, "tcp", addr)
	var oe *ssh.OpenChannelError
	if err != nil && !errors.As(err, &oe) && ctx.Err() == nil {
		// Not the jump host refusing: the connection to it is gone.
		j.Close()
		r.jump = nil
	}
	if err != nil {
		return nil, fmt.Errorf("via jump host %s: %w", r.jumpAddr(), err)
	}
	return c, nil
}

func (r *run) jumpAddr() string {
	return net.JoinHostPort(r.opts.ProxyJump.Host, strconv.Itoa(r.opts.ProxyJump.Port))
}

// jumpClient is the SSH connection to the jump host, made once and kept
// across the kexec; its host key is checked as the target's is.
func (r *run) jumpClient(ctx context.Context) (*ssh.Client, error) {
	if r.jump != nil {
		return r.jump, nil
	}
	addr := r.jumpAddr()
	j := r.opts.ProxyJump
	file, opts := j.KnownHostsFile, j.SSHOptions
	if file == "" {
		file = r.knownHostsFile()
	}
	if opts == nil {
		opts = r.opts.SSHOptions
	}
	cb, kh, err := r.verifier(&r.jumpKnown, false, file, opts)
	if err != nil {
		return nil, err
	}
	cfg := r.sshConfig(j.User, addr, cb, kh, r.jumpKnown)
	d := net.Dialer{Timeout: cfg.Timeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("jump host %s@%s: %w", cfg.User, addr, err)
	}
	c, err := handshake(ctx, nc, addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("jump host %s@%s: %w", cfg.User, addr, err)
	}
	r.jump = c
	return c, nil
}

func (r *run) dialContext(ctx context.Context, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	nc, err := r.dialTCP(ctx, addr, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	return handshake(ctx, nc, addr, cfg)
}

// handshake makes nc an SSH client connection; it fails with ctx.
func handshake(ctx context.Context, nc net.Conn, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	// The handshake has no context: close the socket when ctx ends.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	_ = nc.SetDeadline(time.Now().Add(cfg.Timeout))
	c, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

func (r *run) connect(ctx context.Context, port int) error {
	addr := r.addr(port)
	cfg, err := r.clientConfig(addr)
	if err != nil {
		return err
	}
	c, err := r.dialContext(ctx, addr, cfg)
	if err != nil {
		return fmt.Errorf("ssh to %s@%s: %w", r.opts.Target.User, addr, err)
	}
	if r.conn != nil {
		r.conn.client.Close()
	}
	r.conn = &Conn{client: c, addr: addr, sink: r.sink, sudo: r.facts.Sudo, sudoPassword: r.sudoPassword, hostKey: r.known[len(r.known)-1],
		maxLine: r.opts.MaxLineBytes, maxOutput: r.opts.MaxOutputBytes}
	go r.conn.keepalive(r.opts.KeepaliveInterval, r.opts.KeepaliveCountMax)
	if r.opts.Password != "" {
		if err := r.installGeneratedKey(ctx); err != nil {
			return err
		}
	}
	return nil
}

// installGeneratedKey turns a password login into a key login, because
// the ssh that nix copy starts cannot type the password and the
// installer after kexec takes keys only. It does so whenever a password
// is given, even besides keys: those may be the ones the target lacks.
func (r *run) installGeneratedKey(ctx context.Context) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generating an ssh key: %w", err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return fmt.Errorf("generating an ssh key: %w", err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
	cmd := "umask 077; mkdir -p ~/.ssh && cat >> ~/.ssh/authorized_keys"
	if err := r.conn.runPlain(ctx, cmd, strings.NewReader(pub+" pxe-anywhere-install\n")); err != nil {
		return fmt.Errorf("installing a generated key with the password login: %w", err)
	}
	// First, so that the ssh of nix copy offers it first.
	r.opts.Signers = append([]ssh.Signer{s}, r.opts.Signers...)
	r.opts.Password = ""
	return nil
}

// quote makes s one word for POSIX sh.
func quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./=:,+@%", c))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// keepalive asks the target for a reply every interval, as ssh's
// ServerAliveInterval does; after max intervals without one it closes
// the connection, which ends every command waiting on it. A target
// that stalls with its TCP connection open (a stopped sshd, a frozen
// kernel) would otherwise hold the install forever.
func (c *Conn) keepalive(interval time.Duration, max int) {
	closed := make(chan struct{})
	go func() { _ = c.client.Wait(); close(closed) }()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-closed:
			return
		case <-t.C:
		}
		reply := make(chan error, 1)
		go func() {
			// OpenSSH answers this request with a failure: any answer
			// means the other side lives.
			_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		for missed := 0; ; {
			select {
			case <-closed:
				return
			case err := <-reply:
				if err != nil {
					return
				}
			case <-t.C:
				if missed++; missed >= max {
					why := fmt.Sprintf("no answer to %d SSH keepalives sent %s apart; connection closed", max, interval)
					c.stalled.Store(&why)
					c.client.Close()
					return
				}
				continue
			}
			break
		}
	}
}

// guard runs a command so that it dies with the SSH session: sshd
// neither signals a root session's command nor kills it when the
// connection drops, so the command runs in a process group of its own
// (setsid) beside a watchdog that kills the group once the sshd
// process that started the shell ($PPID of the login shell, passed as
// $1) is gone. Its stdin stays the session's.
const guard = `w=$1; c=
exec 3<&0
if command -v setsid >/dev/null 2>&1; then setsid sh -c "$2" <&3 & c=$!; else sh -c "$2" <&3 & c=$!; fi
exec 3<&-
( while kill -0 "$w" 2>/dev/null; do sleep 1; done
  kill -s TERM -- -$c 2>/dev/null || kill -s TERM $c 2>/dev/null; sleep 2
  kill -s KILL -- -$c 2>/dev/null || kill -s KILL $c 2>/dev/null ) </dev/null >/dev/null 2>&1 &
g=$!
wait $c; rc=$?
kill $g 2>/dev/null
exit $rc`

// sudoWithPassword is the sudo prefix for a sudo that asks: the password
// is read from stdin, with no prompt (and no terminal needed).
const sudoWithPassword = "sudo -S -p ''"

// wrap makes cmd run as root, guarded so that it ends with the session.
func (c *Conn) wrap(cmd string) string {
	g := "sh -c " + quote(guard) + ` pxe-anywhere-guard "$PPID" ` + quote(cmd)
	if c.sudo == "" {
		return g
	}
	return c.sudo + " " + g
}

// runPlain runs cmd as the login user and ignores its output.
func (c *Conn) runPlain(ctx context.Context, cmd string, stdin io.Reader) error {
	return c.run(ctx, cmd, cmd, stdin, io.Discard)
}

// output runs cmd as the login user and returns its stdout; errors
// show the command as shown. Output beyond maxOutput fails the command
// and closes the connection, which ends a command that prints forever.
func (c *Conn) output(ctx context.Context, cmd, shown string, stdin io.Reader) ([]byte, error) {
	out := &capWriter{max: c.maxOutput, over: func() { c.client.Close() }}
	err := c.run(ctx, cmd, shown, stdin, out)
	if out.exceeded {
		return nil, &cmdError{Command: shown, ExitCode: -1, Err: fmt.Errorf("its output exceeds %d bytes: stopped", c.maxOutput)}
	}
	if err != nil {
		return nil, err
	}
	return out.buf.Bytes(), nil
}

// capWriter keeps up to max bytes and calls over once when more come.
type capWriter struct {
	buf      bytes.Buffer
	max      int64
	exceeded bool
	over     func()
}

func (w *capWriter) Write(p []byte) (int, error) {
	if w.exceeded {
		return len(p), nil
	}
	if int64(w.buf.Len()+len(p)) > w.max {
		w.exceeded = true
		w.over()
		return len(p), nil
	}
	return w.buf.Write(p)
}

// exec runs cmd as root, streaming its output lines to the sink, and
// returns a *PhaseError on failure.
func (c *Conn) exec(ctx context.Context, cmd string, stdin io.Reader) error {
	return c.inPhase(c.run(ctx, c.wrap(cmd), cmd, stdin, nil))
}

// run is the one way a command runs on the target: cmd as given (wrap
// it to run as root), stdout to out or, when out is nil, line by line to
// the sink, stderr to the sink; the last lines of both are kept for the
// *cmdError it returns on failure. Cancelling ctx makes it return at
// once and closes the connection.
func (c *Conn) run(ctx context.Context, cmd, shown string, stdin io.Reader, out io.Writer) error {
	fail := func(code int, tail []string, err error) error {
		return &cmdError{Command: shown, ExitCode: code, Tail: tail, Err: err}
	}
	s, err := c.client.NewSession()
	if err != nil {
		return fail(-1, nil, fmt.Errorf("opening a session on %s: %w", c.addr, err))
	}
	defer s.Close()
	tail := &tailWriter{sink: c.sink, phase: c.phase, stream: "stdout", max: c.maxLine}
	etail := &tailWriter{sink: c.sink, phase: c.phase, stream: "stderr", shared: tail, max: c.maxLine}
	s.Stdout, s.Stderr = tail, etail
	if out != nil {
		s.Stdout = out
	}
	if strings.HasPrefix(cmd, sudoWithPassword+" ") {
		// sudo reads the password line byte by byte; the rest of
		// stdin is the command's.
		if stdin == nil {
			stdin = strings.NewReader("")
		}
		stdin = io.MultiReader(strings.NewReader(c.sudoPassword+"\n"), stdin)
	}
	if stdin != nil {
		s.Stdin = stdin
	}
	stop := context.AfterFunc(ctx, func() {
		_ = s.Signal(ssh.SIGTERM)
		s.Close()
		// sshd keeps the channel open until the command ends and will not
		// signal a root login's command: only closing the connection ends
		// the wait, and then the guard (see wrap) kills the command.
		c.client.Close()
	})
	defer stop()
	err = s.Run(cmd)
	tail.flush()
	etail.flush()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fail(-1, tail.lines(), fmt.Errorf("interrupted: %w", context.Cause(ctx)))
	}
	if why := c.stalled.Load(); why != nil {
		return fail(-1, tail.lines(), fmt.Errorf("%w: %s", ErrTargetStalled, *why))
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return fail(ee.ExitStatus(), tail.lines(), nil)
	}
	return fail(-1, tail.lines(), fmt.Errorf("connection to %s lost: %w", c.addr, err))
}

// cmdError is a failed remote command; inPhase turns it into the
// failure of the phase it ran in.
type cmdError struct {
	Command  string
	ExitCode int
	Tail     []string
	Err      error
}

func (e *cmdError) Error() string {
	var b strings.Builder
	describe(&b, e.Command, e.ExitCode, e.Err, e.Tail)
	return strings.TrimPrefix(b.String(), ": ")
}

func (e *cmdError) Unwrap() error { return e.Err }

// inPhase makes a failed command the *PhaseError of the current phase.
func (c *Conn) inPhase(err error) error {
	var ce *cmdError
	if !errors.As(err, &ce) {
		return err
	}
	return &PhaseError{Phase: c.phase, Command: ce.Command, ExitCode: ce.ExitCode, Tail: ce.Tail, Err: ce.Err}
}

// tailWriter splits output into lines for the sink and keeps the last
// few for errors. stdout and stderr share one tail.
// A line longer than max is cut there: its first max bytes are kept,
// the rest counted and dropped, so a target that prints without a
// newline cannot fill memory.
type tailWriter struct {
	sink    Sink
	phase   string
	stream  string
	shared  *tailWriter
	max     int // 0: 64 KiB
	mu      sync.Mutex
	buf     []byte
	dropped int64 // bytes of the current line dropped beyond max
	last    []string
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	max := w.max
	if max <= 0 {
		max = 64 << 10
	}
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		room := max - len(w.buf)
		if room > len(chunk) {
			room = len(chunk)
		}
		w.buf = append(w.buf, chunk[:room]...)
		w.dropped += int64(len(chunk) - room)
		if i < 0 {
			break
		}
		w.endLine()
		p = p[i+1:]
	}
	return n, nil
}

// endLine passes the line collected so far on, marked if it was cut.
func (w *tailWriter) endLine() {
	line := string(w.buf)
	if w.dropped > 0 {
		line += fmt.Sprintf(" … [line cut: %d more bytes dropped]", w.dropped)
	}
	w.buf, w.dropped = w.buf[:0], 0
	w.emit(line)
}

func (w *tailWriter) emit(line string) {
	line = strings.TrimRight(line, "\r")
	w.sink.Line(w.phase, w.stream, line)
	t := w
	if w.shared != nil {
		t = w.shared
		t.mu.Lock()
		defer t.mu.Unlock()
	}
	t.last = append(t.last, line)
	if len(t.last) > tailLines {
		t.last = t.last[len(t.last)-tailLines:]
	}
}

func (w *tailWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 || w.dropped > 0 {
		w.endLine()
	}
}

func (w *tailWriter) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.last...)
}

// ErrAuthRefused is returned (wrapped) when the target presented a host
// key we accept but refused every key we offered.
var ErrAuthRefused = errors.New("login refused")

// CheckSSH logs in to t as t.User (default root) with signers,
// accepting only hostKey, and logs out again: nil means Run can start.
// A host that presents another key fails with ErrHostKeyMismatch, one
// that presents hostKey but refuses the login with ErrAuthRefused; any
// other error means that nothing answers SSH there yet.
func CheckSSH(ctx context.Context, t Target, signers []ssh.Signer, hostKey ssh.PublicKey) error {
	if hostKey == nil {
		return errors.New("checking SSH: no host key to accept")
	}
	r := &run{opts: Options{Target: t, Signers: signers, HostKey: hostKey}}
	r.opts.defaults()
	return r.checkSSH(ctx, r.addr(r.opts.Target.Port))
}

// checkSSH is CheckSSH at addr with this run's credentials and the host
// keys it accepts.
func (r *run) checkSSH(ctx context.Context, addr string) error {
	cfg, err := r.clientConfig(addr)
	if err != nil {
		return err
	}
	cfg.Timeout = 5 * time.Second
	var verified atomic.Bool
	accept := cfg.HostKeyCallback
	cfg.HostKeyCallback = func(host string, remote net.Addr, key ssh.PublicKey) error {
		if err := accept(host, remote, key); err != nil {
			return err
		}
		verified.Store(true)
		return nil
	}
	c, err := r.dialContext(ctx, addr, cfg)
	if err == nil {
		return c.Close()
	}
	var ne net.Error
	// After the host key only authentication is left: a failure that is
	// not the connection dropping is the server saying no.
	if verified.Load() && !errors.Is(err, io.EOF) && !errors.As(err, &ne) {
		return fmt.Errorf("ssh to %s@%s: %w: %v", cfg.User, addr, ErrAuthRefused, err)
	}
	return fmt.Errorf("ssh to %s@%s: %w", cfg.User, addr, err)
}

// waitGone waits until addr stops answering.
func (r *run) waitGone(ctx context.Context, addr string) error {
	deadline := time.Now().Add(r.opts.WaitTimeout)
	for {
		nc, err := r.dialTCP(ctx, addr, 2*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
		nc.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still answers after %s: the host did not go down", addr, r.opts.WaitTimeout)
		}
		if err := sleep(ctx, pollInterval); err != nil {
			return err
		}
	}
}

// waitBack waits until we can log in at addr, the host presenting a
// key we accept.
func (r *run) waitBack(ctx context.Context, addr string) error {
	deadline := time.Now().Add(r.opts.WaitTimeout)
	for {
		err := r.checkSSH(ctx, addr)
		if err == nil || errors.Is(err, ErrHostKeyMismatch) {
			return err
		}
		if errors.Is(err, ErrAuthRefused) {
			// An installer that shows our host key and refuses our
			// keys will not change its mind: waiting on hides the cause.
			return fmt.Errorf("the installer is up but refused our key for %s: %w", r.opts.Target.User, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not come back within %s: check the machine's console (did kexec boot? is SSH on that port?)", addr, r.opts.WaitTimeout)
		}
		if err := sleep(ctx, pollInterval); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// sshEnv prepares what the local ssh that nix starts needs: a known_hosts
// file holding only the verified host key, and either the identity file
// or a private agent socket serving our signers. It returns NIX_SSHOPTS.
func (r *run) sshEnv() (string, error) {
	if r.tmpDir == "" {
		d, err := os.MkdirTemp("", "pxe-anywhere-install-")
		if err != nil {
			return "", fmt.Errorf("making a private temp dir: %w", err)
		}
		r.tmpDir = d
	}
	kh := filepath.Join(r.tmpDir, "known_hosts")
	host := r.opts.Target.Host
	if r.conn != nil {
		if h, p, err := net.SplitHostPort(r.conn.addr); err == nil && p != "22" {
			host = "[" + h + "]:" + p
		}
	}
	var b strings.Builder
	for _, k := range r.known {
		b.WriteString(knownhosts.Line([]string{host}, k) + "\n")
	}
	for _, k := range r.jumpKnown {
		b.WriteString(knownhosts.Line([]string{knownhosts.Normalize(r.jumpAddr())}, k) + "\n")
	}
	if err := os.WriteFile(kh, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("writing %s: %w", kh, err)
	}
	port := strconv.Itoa(r.opts.Target.Port)
	if r.conn != nil {
		_, port, _ = net.SplitHostPort(r.conn.addr)
	}
	opts := []string{"-p", port, "-o", "UserKnownHostsFile=" + kh, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", fmt.Sprintf("ServerAliveInterval=%d", max(1, int(r.opts.KeepaliveInterval/time.Second))),
		"-o", fmt.Sprintf("ServerAliveCountMax=%d", r.opts.KeepaliveCountMax)}
	if r.opts.IdentityFile != "" {
		opts = append(opts, "-i", r.opts.IdentityFile)
	}
	if len(r.opts.Signers) > 0 {
		sock, err := r.serveAgent()
		if err != nil {
			return "", err
		}
		opts = append(opts, "-o", "IdentityAgent="+sock)
	}
	if r.opts.IdentityFile != "" || len(r.opts.Signers) > 0 {
		opts = append(opts, "-o", "IdentitiesOnly=no")
	}
	if r.opts.ProxyJump != nil {
		// NIX_SSHOPTS is split at blanks, so the jump goes in a script:
		// an ssh held to the same known_hosts file and keys, and to
		// the target's address as the engine reached it.
		jump := filepath.Join(r.tmpDir, "proxy-jump")
		targetHost, targetPort, _ := net.SplitHostPort(r.addr(r.opts.Target.Port))
		if r.conn != nil {
			targetHost, targetPort, _ = net.SplitHostPort(r.conn.addr)
		}
		words := append([]string{"exec", "ssh", "-F", "/dev/null"}, opts[2:]...)
		words = append(words, "-p", strconv.Itoa(r.opts.ProxyJump.Port), "-l", r.opts.ProxyJump.User,
			"-W", net.JoinHostPort(targetHost, targetPort), "--", r.opts.ProxyJump.Host)
		for i, w := range words {
			words[i] = quote(w)
		}
		if err := os.WriteFile(jump, []byte("#!/bin/sh\n"+strings.Join(words, " ")+"\n"), 0o700); err != nil {
			return "", fmt.Errorf("writing %s: %w", jump, err)
		}
		opts = append(opts, "-o", "ProxyCommand="+jump)
	}
	return strings.Join(opts, " "), nil
}

func (r *run) serveAgent() (string, error) {
	sock := filepath.Join(r.tmpDir, "agent.sock")
	if r.agentLn != nil {
		return sock, nil
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return "", fmt.Errorf("starting the private ssh agent at %s: %w", sock, err)
	}
	r.agentLn = ln
	a := &signerAgent{signers: r.opts.Signers}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = agent.ServeAgent(a, c)
			}()
		}
	}()
	return sock, nil
}

// signerAgent is a read-only ssh agent over in-memory signers, so that
// the install key never has to be written to a file.
type signerAgent struct{ signers []ssh.Signer }

var errReadOnly = errors.New("read-only agent")

func (a *signerAgent) List() ([]*agent.Key, error) {
	var keys []*agent.Key
	for _, s := range a.signers {
		p := s.PublicKey()
		keys = append(keys, &agent.Key{Format: p.Type(), Blob: p.Marshal(), Comment: "pxe-anywhere"})
	}
	return keys, nil
}

func (a *signerAgent) Sign(key ssh.PublicKey, data []byte) (*ssh.Signature, error) {
	return a.SignWithFlags(key, data, 0)
}

func (a *signerAgent) SignWithFlags(key ssh.PublicKey, data []byte, flags agent.SignatureFlags) (*ssh.Signature, error) {
	for _, s := range a.signers {
		if !bytes.Equal(s.PublicKey().Marshal(), key.Marshal()) {
			continue
		}
		if as, ok := s.(ssh.AlgorithmSigner); ok {
			switch {
			case flags&agent.SignatureFlagRsaSha512 != 0:
				return as.SignWithAlgorithm(rand.Reader, data, ssh.KeyAlgoRSASHA512)
			case flags&agent.SignatureFlagRsaSha256 != 0:
				return as.SignWithAlgorithm(rand.Reader, data, ssh.KeyAlgoRSASHA256)
			}
		}
		return s.Sign(rand.Reader, data)
	}
	return nil, errors.New("no such key")
}

func (a *signerAgent) Add(agent.AddedKey) error       { return errReadOnly }
func (a *signerAgent) Remove(ssh.PublicKey) error     { return errReadOnly }
func (a *signerAgent) RemoveAll() error               { return errReadOnly }
func (a *signerAgent) Lock([]byte) error              { return errReadOnly }
func (a *signerAgent) Unlock([]byte) error            { return errReadOnly }
func (a *signerAgent) Signers() ([]ssh.Signer, error) { return a.signers, nil }
func (a *signerAgent) Extension(string, []byte) ([]byte, error) {
	return nil, agent.ErrExtensionUnsupported
}

// lines splits command output for the sink.
func lines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
