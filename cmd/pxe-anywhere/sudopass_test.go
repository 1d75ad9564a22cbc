package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// TestSudoPasswordFromTerminal: on a real pseudo-terminal the prompt
// names user and host, the typed password is not echoed, and the
// terminal's echo is back on afterwards.
func TestSudoPasswordFromTerminal(t *testing.T) {
	m, tty := openPTY(t)
	ask := sudoPassword(tty, tty, false)
	if ask == nil {
		t.Fatal("no password function on a terminal")
	}
	got := make(chan string, 1)
	go func() {
		pw, err := ask("nixos", "203.0.113.7")
		if err != nil {
			pw = "error: " + err.Error()
		}
		got <- pw
	}()
	var seen bytes.Buffer
	buf := make([]byte, 256)
	for !strings.Contains(seen.String(), "[sudo] password for nixos@203.0.113.7: ") {
		n, err := m.Read(buf)
		if err != nil {
			t.Fatalf("reading the terminal: %v (so far %q)", err, seen.String())
		}
		seen.Write(buf[:n])
	}
	if _, err := m.Write([]byte("s3cret pw\n")); err != nil {
		t.Fatal(err)
	}
	if pw := <-got; pw != "s3cret pw" {
		t.Fatalf("password %q", pw)
	}
	_ = m.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	n, _ := m.Read(buf)
	seen.Write(buf[:n])
	if strings.Contains(seen.String(), "s3cret") {
		t.Errorf("the password was echoed: %q", seen.String())
	}
	tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil || tio.Lflag&unix.ECHO == 0 {
		t.Errorf("echo not restored: %v", err)
	}
	// Not a terminal: no prompt; with --env-password, $SSHPASS.
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if sudoPassword(f, tty, false) != nil {
		t.Error("a password function without a terminal or --env-password")
	}
	t.Setenv("SSHPASS", "from env")
	if pw, _ := sudoPassword(f, tty, true)("u", "h"); pw != "from env" {
		t.Errorf("--env-password: %q", pw)
	}
}

// TestNixosAtHostWithEnvPassword is the how-to's case: the installer
// is reached as nixos@host with a password (SSHPASS) and a sudo that
// asks for it, no key anywhere. The command logs in with the password,
// installs a temporary key, gives sudo the same password, copies the
// keys to root and goes on as root.
func TestNixosAtHostWithEnvPassword(t *testing.T) {
	const pw = "how-to password"
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("SSH_PRIVATE_KEY", "")
	t.Setenv("SSHPASS", pw)
	tg := sshtarget.Start(t, sshtarget.Options{User: "nixos", UserPassword: pw, Sudo: "password"})
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := runInstall(ctx, []string{"-t", "--env-password", "--phases", "kexec", "-p", strconv.Itoa(tg.Port), "nixos@127.0.0.1"}, &out, &out)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "copying its authorized keys to root and going on as root") {
		t.Errorf("output:\n%s", out.String())
	}
	if keys := tg.Shell(t, "cat /root/.ssh/authorized_keys"); !strings.Contains(keys, "pxe-anywhere-install") {
		t.Errorf("root's authorized_keys: %q", keys)
	}
}
