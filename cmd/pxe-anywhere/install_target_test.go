package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// TestInstallCommandDetails runs the command against the real sshd of
// a test target: NIXOS_NO_CHECK of the command's environment reaches
// nixos-install, and the exit code is the failing command's.
func TestInstallCommandDetails(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(home, "id_test")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	// The local nix is the strict stand-in of the installer tests.
	fake, err := filepath.Abs("../../installer/testdata/fake-nix")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(fake, filepath.Join(bin, "nix")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_NIX_DIR", t.TempDir())
	// -s paths must exist here; the target only sees their names.
	store := t.TempDir()
	disko, system := filepath.Join(store, "disko"), filepath.Join(store, "system")
	for _, p := range []string{disko, system} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	install := `echo "env ${NIXOS_NO_CHECK-unset}" >> "$PXE_TARGET_DIR/calls"
[ ! -f "$PXE_TARGET_DIR/install-fails" ] || { echo "error: bootloader install failed" >&2; exit 7; }
` + sshtarget.NixosInstallStandIn
	tests := []struct {
		name     string
		noCheck  string // "" : unset
		fails    bool
		wantEnv  string
		wantExit int
	}{
		{name: "NIXOS_NO_CHECK passed", noCheck: "1", wantEnv: "env 1"},
		{name: "unset stays unset", wantEnv: "env unset"},
		{name: "exit code of nixos-install", fails: true, wantEnv: "env unset", wantExit: 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: ssh.MarshalAuthorizedKey(signer.PublicKey()), StandIns: map[string]string{"nixos-install": install}})
			if tc.fails {
				tg.WriteFile(t, "install-fails", "")
			}
			line := knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(tg.Host, strconv.Itoa(tg.Port)))}, tg.HostKey)
			if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(home, ".ssh", "known_hosts"), []byte(line+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.noCheck != "" {
				t.Setenv("NIXOS_NO_CHECK", tc.noCheck)
			} else {
				t.Setenv("NIXOS_NO_CHECK", "") // restored after the test
				os.Unsetenv("NIXOS_NO_CHECK")
			}
			var out bytes.Buffer
			err := runInstall(context.Background(), []string{"-s", disko, system, "--phases", "install", "-i", keyFile, "-p", strconv.Itoa(tg.Port), "root@" + tg.Host}, &out, &out)
			if got := installer.ExitCode(err); got != tc.wantExit {
				t.Errorf("exit code %d (%v), want %d", got, err, tc.wantExit)
			}
			calls := tg.Calls()
			if !slices.Contains(calls, tc.wantEnv) {
				t.Errorf("target calls %q: want %q", calls, tc.wantEnv)
			}
			if !tc.fails && !strings.Contains(out.String(), "installation finished!") {
				t.Errorf("output %q", out.String())
			}
		})
	}
}
