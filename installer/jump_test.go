package installer_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/installer/sshtarget"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// TestProxyJump: the target listens on the loopback of the jump host's
// namespace, so only the jump host reaches it. The engine goes through
// the jump host, checks both host keys (trusted on first use, both
// recorded), and the ssh that nix copy starts goes through it too,
// held to the same two keys. A jump host whose key differs from
// known_hosts stops the run before anything runs on the target.
func TestProxyJump(t *testing.T) {
	netlab.Require(t, "ip", "ssh")
	lab, clients := netlab.Inherited(t)
	if lab == nil {
		lab = netlab.New(t, "10.118.0.0/24")
		jump := lab.Client("")
		lab.Run(jump, "ip", "addr", "add", "10.118.0.2/24", "dev", "eth0")
		if lab.RunInServer(t, jump) {
			return
		}
	}
	ns := clients[0].Name
	signer, auth := clientKey(t)
	jump := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth, NetNS: ns, ListenAddr: "10.118.0.2"})
	for _, tc := range []struct {
		name      string
		jumpKnown ssh.PublicKey // a known_hosts line for the jump host
		wantErr   string
	}{
		{name: "both keys new"},
		{name: "jump host key changed", jumpKnown: otherKey(t), wantErr: "differs from known_hosts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := sshtarget.Start(t, sshtarget.Options{AuthorizedKeys: auth, NetNS: ns, ListenAddr: "127.0.0.1",
				StandIns: map[string]string{"disko-script": sshtarget.DiskoScriptStandIn}})
			if c, err := net.DialTimeout("tcp", tg.Addr, time.Second); err == nil {
				c.Close()
				t.Fatalf("the target at %s is reachable without the jump host", tg.Addr)
			}
			kh := filepath.Join(t.TempDir(), "known_hosts")
			if tc.jumpKnown != nil {
				must(t, os.WriteFile(kh, []byte("[10.118.0.2]:2222 "+string(ssh.MarshalAuthorizedKey(tc.jumpKnown))), 0o600))
			}
			nix, nixCalls := fakeNix(t, nil)
			o := installer.Options{
				Target:         installer.Target{Host: "127.0.0.1", Port: tg.Port, User: "root"},
				ProxyJump:      &installer.JumpHost{Target: installer.Target{Host: "10.118.0.2", Port: jump.Port, User: "root"}},
				Signers:        []ssh.Signer{signer},
				KnownHostsFile: kh,
				LocalNix:       nix,
				Phases:         []string{"disko"},
				StorePaths:     &installer.StorePaths{Disko: filepath.Join(tg.Bin, "disko-script"), System: system},
				WaitTimeout:    time.Minute,
			}
			sink := &recSink{}
			err := installer.Run(context.Background(), o, sink)
			if tc.wantErr != "" {
				if !errors.Is(err, installer.ErrHostKeyMismatch) || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "jump host") {
					t.Fatalf("err %v, want a jump host key mismatch", err)
				}
				if c := tg.Calls(); len(c) != 0 {
					t.Errorf("commands ran behind a refused jump host: %q", c)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v\n%q", err, sink.lines)
			}
			if got, want := tg.Calls(), []string{"disko-script"}; !slices.Equal(got, want) {
				t.Errorf("target calls %q, want %q", got, want)
			}
			// fake nix's copy ran ssh with NIX_SSHOPTS: it reached the
			// target through the jump host.
			if got := readLines(t, nixCalls); len(got) != 1 || !strings.HasPrefix(got[0], "nix copy") {
				t.Errorf("nix calls %q", got)
			}
			if got, want := readLines(t, filepath.Join(tg.Dir, "received")), []string{o.StorePaths.Disko}; !slices.Equal(got, want) {
				t.Errorf("the target received %q by nix copy, want %q", got, want)
			}
			b, err := os.ReadFile(kh)
			must(t, err)
			for _, k := range []ssh.PublicKey{jump.HostKey, tg.HostKey} {
				if !strings.Contains(string(b), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))) {
					t.Errorf("known_hosts lacks %s:\n%s", ssh.FingerprintSHA256(k), b)
				}
			}
		})
	}
}

func otherKey(t *testing.T) ssh.PublicKey {
	s, _ := clientKey(t)
	return s.PublicKey()
}
