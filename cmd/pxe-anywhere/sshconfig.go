package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
)

// sshOptionKeys are the ssh options the install command acts on, in
// OpenSSH's spelling; --ssh-option refuses any other, so that none is
// dropped silently.
var sshOptionKeys = []string{
	"HostName", "User", "Port", "IdentityFile", "ProxyJump",
	"UserKnownHostsFile", "StrictHostKeyChecking", "HashKnownHosts",
	"ConnectTimeout", "ServerAliveInterval", "ServerAliveCountMax",
}

// addSSHOption reads one --ssh-option, as ssh's -o takes it: "Key=Value"
// or "Key Value", the key in any case.
func addSSHOption(opts map[string]string, v string) error {
	v = strings.TrimSpace(v)
	i := strings.IndexAny(v, "= \t")
	if i <= 0 {
		return fmt.Errorf("--ssh-option %q: use KEY=VALUE or \"KEY VALUE\"", v)
	}
	// As ssh reads a config line: the key, blanks, at most one "=".
	k, val := v[:i], strings.TrimLeft(v[i:], " \t")
	val = strings.TrimSpace(strings.TrimPrefix(val, "="))
	if val == "" {
		return fmt.Errorf("--ssh-option %q: %s has no value", v, k)
	}
	for _, known := range sshOptionKeys {
		if strings.EqualFold(k, known) {
			opts[known] = val
			return nil
		}
	}
	return fmt.Errorf("--ssh-option %q: pxe-anywhere does not act on %s; it acts on %s", v, k, strings.Join(sshOptionKeys, ", "))
}

// sshTarget is a target as OpenSSH resolves it (`ssh -G`).
type sshTarget struct {
	Host, User string
	Port       int
	// Identities are the IdentityFile entries, ~ expanded: those given,
	// or ssh's defaults ~/.ssh/id_*.
	Identities []string
	ProxyJump  string // "" for none
	KnownHosts string // the first UserKnownHostsFile: read, and written on first use
	Options    map[string]string
}

// resolveSSH asks the local ssh how it would reach host (`ssh -G`),
// with the user, port, identity and options of the command line, so that
// ~/.ssh/config (Host patterns, Match, Include) applies exactly as for
// ssh. $HOME is the home directory: ssh itself takes the one in the
// password database, so when they differ the config is named with -F
// and paths under the database's home are moved under $HOME.
func resolveSSH(ctx context.Context, t installer.Target, identity string, opts map[string]string) (*sshTarget, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil, fmt.Errorf("resolving %s with ssh -G: %w", t.Host, err)
	}
	pwHome := home
	if u, err := user.Current(); err == nil {
		pwHome = u.HomeDir
	}
	args := []string{"-G"}
	if cfg := filepath.Join(home, ".ssh", "config"); filepath.Clean(pwHome) != filepath.Clean(home) {
		if _, err := os.Stat(cfg); err == nil {
			args = append(args, "-F", cfg)
		}
	}
	if t.User != "" {
		args = append(args, "-l", t.User)
	}
	if t.Port != 0 {
		args = append(args, "-p", strconv.Itoa(t.Port))
	}
	if identity != "" {
		args = append(args, "-i", identity)
	}
	for _, k := range sshOptionKeys {
		if v, ok := opts[k]; ok {
			args = append(args, "-o", k+"="+v)
		}
	}
	args = append(args, "--", t.Host)
	cmd := exec.CommandContext(ctx, "ssh", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("resolving %s with ssh %s: %w: %s", t.Host, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	expand := func(p string) string {
		switch {
		case p == "~":
			return home
		case strings.HasPrefix(p, "~/"):
			return filepath.Join(home, p[2:])
		case pwHome != home && strings.HasPrefix(p, pwHome+"/"):
			return filepath.Join(home, strings.TrimPrefix(p, pwHome+"/"))
		}
		return p
	}
	return parseSSHG(bytes.NewReader(out), expand)
}

// parseSSHG reads the "key value" lines of `ssh -G`.
func parseSSHG(r io.Reader, expand func(string) string) (*sshTarget, error) {
	st := &sshTarget{Options: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		switch k {
		case "hostname":
			st.Host = v
		case "user":
			st.User = v
		case "port":
			p, err := strconv.Atoi(v)
			if err != nil || p <= 0 || p > 65535 {
				return nil, fmt.Errorf("ssh -G: port %q", v)
			}
			st.Port = p
		case "identityfile":
			st.Identities = append(st.Identities, expand(v))
		case "proxyjump":
			if v != "none" {
				st.ProxyJump = v
			}
		case "userknownhostsfile":
			if f := strings.Fields(v); len(f) > 0 && st.KnownHosts == "" {
				st.KnownHosts = expand(f[0])
			}
		case "stricthostkeychecking":
			st.Options["StrictHostKeyChecking"] = v
		case "hashknownhosts":
			st.Options["HashKnownHosts"] = v
		case "connecttimeout":
			if v != "none" {
				st.Options["ConnectTimeout"] = v
			}
		case "serveraliveinterval":
			if v != "0" {
				st.Options["ServerAliveInterval"] = v
			}
		case "serveralivecountmax":
			st.Options["ServerAliveCountMax"] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("ssh -G: %w", err)
	}
	if st.Host == "" || st.Port == 0 || st.User == "" {
		return nil, errors.New("ssh -G printed no hostname, port or user")
	}
	return st, nil
}

// loadIdentities reads the identity files ssh would offer. An explicit
// -i must load; a default or configured one that is missing is skipped,
// as ssh skips it, and one with a passphrase is skipped with a note
// (load it into the agent).
func loadIdentities(files []string, explicit string, warn io.Writer) ([]ssh.Signer, error) {
	var out []ssh.Signer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if f == explicit {
				return nil, fmt.Errorf("-i %s: %w", f, err)
			}
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		var pe *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pe) && f != explicit:
			fmt.Fprintf(warn, "skipping %s: it has a passphrase (load it into ssh-agent)\n", f)
			continue
		case err != nil && f != explicit:
			fmt.Fprintf(warn, "skipping %s: %v\n", f, err)
			continue
		case err != nil:
			return nil, fmt.Errorf("identity %s: %w (passphrase-protected keys: load them into ssh-agent instead)", f, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// resolveTarget fills o's target, known_hosts file, ssh options and
// keys as OpenSSH would use them: `ssh -G` for the target, then the
// identity files it names (an explicit -i first), $SSH_PRIVATE_KEY, and
// the agent's keys. The installer after kexec listens on 22 unless
// --post-kexec-ssh-port says otherwise, whatever port the old system
// used.
func resolveTarget(ctx context.Context, o *installer.Options, identity string, warn io.Writer) error {
	st, err := resolveSSH(ctx, o.Target, identity, o.SSHOptions)
	if err != nil {
		return err
	}
	if st.ProxyJump != "" {
		j, err := resolveJump(ctx, st.ProxyJump)
		if err != nil {
			return fmt.Errorf("%s: ProxyJump %s: %w", o.Target.Host, st.ProxyJump, err)
		}
		o.ProxyJump = j
	}
	o.Target = installer.Target{Host: st.Host, Port: st.Port, User: st.User}
	o.KnownHostsFile = st.KnownHosts
	for k, v := range st.Options {
		o.SSHOptions[k] = v
	}
	// Keepalives from ~/.ssh/config, as --ssh-option gives them.
	if v, ok := st.Options["ServerAliveInterval"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			o.KeepaliveInterval = time.Duration(n) * time.Second
		}
	}
	if n, err := strconv.Atoi(st.Options["ServerAliveCountMax"]); err == nil && n > 0 {
		o.KeepaliveCountMax = n
	}
	if o.PostKexecSSHPort == 0 {
		o.PostKexecSSHPort = 22
	}
	signers, err := loadIdentities(st.Identities, identity, warn)
	if err != nil {
		return err
	}
	o.Signers = append(o.Signers, signers...)
	if identity != "" {
		o.IdentityFile = identity
	}
	// SSH_PRIVATE_KEY, as nixos-anywhere takes it (CI secrets).
	if k := os.Getenv("SSH_PRIVATE_KEY"); k != "" {
		s, err := ssh.ParsePrivateKey([]byte(k))
		if err != nil {
			return fmt.Errorf("SSH_PRIVATE_KEY: %w (it must hold an unencrypted private key)", err)
		}
		o.Signers = append(o.Signers, s)
	}
	return nil
}

// resolveJump reads a ProxyJump value, [user@]host[:port] or
// ssh://[user@]host[:port], and resolves the jump host through the ssh
// config as ssh -J does. One jump host is supported.
func resolveJump(ctx context.Context, spec string) (*installer.JumpHost, error) {
	if strings.Contains(spec, ",") {
		return nil, errors.New("pxe-anywhere reaches a target through one jump host, not a chain")
	}
	var t installer.Target
	rest := strings.TrimPrefix(spec, "ssh://")
	if u, h, ok := strings.Cut(rest, "@"); ok {
		t.User, rest = u, h
	}
	t.Host = rest
	if h, p, err := net.SplitHostPort(rest); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			return nil, fmt.Errorf("port %q", p)
		}
		t.Host, t.Port = h, n
	}
	if t.Host == "" {
		return nil, errors.New("no jump host")
	}
	st, err := resolveSSH(ctx, t, "", nil)
	if err != nil {
		return nil, err
	}
	if st.ProxyJump != "" {
		return nil, fmt.Errorf("the jump host has a ProxyJump of its own (%s): pxe-anywhere reaches a target through one jump host", st.ProxyJump)
	}
	return &installer.JumpHost{Target: installer.Target{Host: st.Host, Port: st.Port, User: st.User}, KnownHostsFile: st.KnownHosts, SSHOptions: st.Options}, nil
}
