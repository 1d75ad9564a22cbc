package installer_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
)

// TestNonRootInstaller: a NixOS installer logged into as "nixos" (the
// how-to's nixos@host) with the real sudo: the engine copies that
// user's authorized keys to root and goes on as root, so that the ssh
// of nix copy logs in as root too. A sudo that asks gets the password
// from Options.SudoPassword on stdin; a password login (--env-password)
// first installs a generated key, which then reaches root as well.
func TestNonRootInstaller(t *testing.T) {
	const pw = "correct horse"
	tests := []struct {
		name     string
		sudo     string // sshtarget.Options.Sudo
		password bool   // log in with the user's password, no key
		sudoPW   func(user, host string) (string, error)
		wantErr  string
	}{
		{name: "sudo without password", sudo: "nopasswd"},
		{name: "sudo asks, password given", sudo: "password", sudoPW: func(u, h string) (string, error) {
			if u != "nixos" || h != "127.0.0.1" {
				return "", errors.New("asked for " + u + "@" + h)
			}
			return pw, nil
		}},
		{name: "sudo asks, no way to ask", sudo: "password", wantErr: "sudo on 127.0.0.1 asks nixos for a password"},
		{name: "sudo asks, wrong password", sudo: "password", sudoPW: func(string, string) (string, error) { return "wrong", nil }, wantErr: "refused the password of nixos"},
		{name: "password login", sudo: "nopasswd", password: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			signer, auth := clientKey(t)
			tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth, User: "nixos", UserPassword: pw, Sudo: tc.sudo,
				StandIns: map[string]string{"disko-script": sshtarget.DiskoScriptStandIn}})
			nix, nixCalls := fakeNix(t, nil)
			o := installer.Options{
				Target:       installer.Target{Host: "127.0.0.1", Port: tg.Port, User: "nixos"},
				Signers:      []ssh.Signer{signer},
				HostKey:      tg.HostKey,
				LocalNix:     nix,
				Phases:       []string{"disko"},
				StorePaths:   &installer.StorePaths{Disko: filepath.Join(tg.Bin, "disko-script"), System: system},
				WaitTimeout:  time.Minute,
				SudoPassword: tc.sudoPW,
			}
			if tc.password {
				// A key the target does not know, besides the password.
				o.Signers, o.Password = []ssh.Signer{otherSigner(t)}, pw
			}
			sink := &recSink{}
			err := installer.Run(context.Background(), o, sink)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				if c := tg.Calls(); len(c) != 0 {
					t.Errorf("calls %q", c)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v\n%q", err, sink.lines)
			}
			if got, want := tg.Calls(), []string{"disko-script"}; !slices.Equal(got, want) {
				t.Errorf("calls %q, want %q", got, want)
			}
			if got := readLines(t, nixCalls); len(got) != 1 || !strings.Contains(got[0], "ssh://root@127.0.0.1?compress=true ") {
				t.Errorf("nix calls %q: want one nix copy as root", got)
			}
			if got, want := readLines(t, filepath.Join(tg.Dir, "received")), []string{o.StorePaths.Disko}; !slices.Equal(got, want) {
				t.Errorf("received %q, want %q", got, want)
			}
			rootKeys := tg.Shell(t, "cat /root/.ssh/authorized_keys")
			want := strings.TrimSpace(string(auth))
			if tc.password {
				want = "pxe-anywhere-install"
			}
			if !strings.Contains(rootKeys, want) {
				t.Errorf("root's authorized_keys lacks %q:\n%s", want, rootKeys)
			}
		})
	}
}

// TestNonRootKexec: a Debian host logged into as a user whose sudo asks
// for a password: the tarball goes through sudo -S on the same stdin
// as the password, kexec/run runs as root, and the installer (which
// carries the sudo user's keys, as nixos-images does) is logged into as
// root.
func TestNonRootKexec(t *testing.T) {
	const pw = "correct horse"
	signer, auth := clientKey(t)
	tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth, User: "nixos", UserPassword: pw, Sudo: "password", OSRelease: sshtarget.DebianOSRelease})
	post := sshtarget.FreePort(t)
	tg.WriteFile(t, "post-kexec-port", strconv.Itoa(post))
	o := installer.Options{
		Target:           installer.Target{Host: "127.0.0.1", Port: tg.Port, User: "nixos"},
		Signers:          []ssh.Signer{signer},
		HostKey:          tg.HostKey,
		Phases:           []string{"kexec"},
		Kexec:            sshtarget.WriteKexecTarball(t, t.TempDir()),
		PostKexecSSHPort: post,
		WaitTimeout:      time.Minute,
		SudoPassword:     func(string, string) (string, error) { return pw, nil },
	}
	sink := &recSink{}
	if err := installer.Run(context.Background(), o, sink); err != nil {
		t.Fatalf("Run: %v\n%q", err, sink.lines)
	}
	if got, want := tg.Calls(), []string{"run"}; !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if err := installer.CheckSSH(context.Background(), installer.Target{Host: "127.0.0.1", Port: post, User: "root"}, []ssh.Signer{signer}, tg.HostKey); err != nil {
		t.Errorf("root login on the installer: %v", err)
	}
}

func otherSigner(t *testing.T) ssh.Signer {
	s, _ := clientKey(t)
	return s
}
