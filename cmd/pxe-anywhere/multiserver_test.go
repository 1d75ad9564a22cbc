package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// TestServeTwoSegmentsOneDatabase: two real servers, each in the server
// namespace of its own segment, share one PostgreSQL database (its Unix
// socket reaches both namespaces). Each config lists only its own
// segment's machine. A machine's DHCP exchange in each segment gets an
// address from that segment's server, and only that server logs it;
// both servers' APIs (the CLI, in each namespace) list both machines,
// with the firmware each one's DHCP saw; and seg-a's status page event
// stream shows a change made through seg-b.
func TestServeTwoSegmentsOneDatabase(t *testing.T) {
	netlab.Require(t, "udhcpc", "curl")
	fx := newPGServe(t)
	dir, bin, ipxe := fx.dir, fx.bin, fx.ipxe

	type segment struct {
		id, net, mac, host string
		lab                *netlab.Lab
		state              string
		logs               *syncbuf.Buffer
	}
	segs := []*segment{
		{id: "seg-a", net: "10.142.0", mac: "52:54:00:8e:00:01", host: "seg-a-01"},
		{id: "seg-b", net: "10.143.0", mac: "52:54:00:8e:00:02", host: "seg-b-01"},
	}
	for _, s := range segs {
		s.state = filepath.Join(dir, s.id)
		cfg := fx.writeConfig(t, s.id+".yaml", s.state, "  id: "+s.id+"\n", s.net,
			fmt.Sprintf("machines:\n  - {mac: %q, profile: web, hostname: %s}\n", s.mac, s.host))
		s.lab = netlab.New(t, s.net+".0/24")
		s.logs = &syncbuf.Buffer{}
		srv := s.lab.Command(s.lab.Server, bin, "serve", "--config", cfg, "--ipxe-dir", ipxe)
		srv.Stdout, srv.Stderr = s.logs, s.logs
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		t.Cleanup(func() {
			srv.Process.Kill()
			<-done
			if t.Failed() {
				t.Logf("%s log:\n%s", s.id, s.logs.String())
			}
		})
	}
	// The CLI's list and the API's JSON (which carries the firmware),
	// each from inside the server's namespace.
	list := func(s *segment) string {
		out, _ := s.lab.Command(s.lab.Server, bin, "machines", "list", "--token-file", filepath.Join(s.state, "api-token")).CombinedOutput()
		tok, _ := os.ReadFile(filepath.Join(s.state, "api-token"))
		api, _ := s.lab.Command(s.lab.Server, "curl", "-sS", "--max-time", "10", "-H", "Authorization: Bearer "+strings.TrimSpace(string(tok)), "http://127.0.0.1:8081/api/v1/machines").CombinedOutput()
		return string(out) + string(api)
	}
	for _, s := range segs {
		cl := s.lab.Client(s.mac)
		// udhcpc retries until its segment's server answers, each
		// attempt bounded.
		out, err := s.lab.Command(cl, "udhcpc", "-q", "-n", "-f", "-i", "eth0", "-t", "20", "-T", "1",
			"-s", "/bin/true", "-V", "PXEClient:Arch:00000:UNDI:002001").CombinedOutput()
		if err != nil || !strings.Contains(string(out), s.net+".") {
			t.Fatalf("%s: udhcpc: %v\n%s", s.id, err, out)
		}
	}
	// Not a timing assertion: the bound only ends a hang.
	for _, s := range segs {
		deadline := time.Now().Add(time.Minute)
		for {
			out := list(s)
			if strings.Count(out, `"firmware": "bios"`) == 2 && strings.Contains(out, "seg-a-01") && strings.Contains(out, "seg-b-01") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s's API does not list both machines with their firmware:\n%s", s.id, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Live updates across servers: the status page's event stream on
	// seg-a shows a change made through seg-b (LISTEN/NOTIFY).
	var sse syncbuf.Buffer
	stream := segs[0].lab.Command(segs[0].lab.Server, "curl", "-sSN", "--max-time", "60", "http://127.0.0.1:8081/events")
	stream.Stdout = &sse
	if err := stream.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stream.Process.Kill(); stream.Wait() })
	waitText := func(what string, b *syncbuf.Buffer, text string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(b.String(), text); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no %q in:\n%s", what, text, b.String())
			}
		}
	}
	waitText("seg-a's event stream", &sse, "machine updates")
	if out, err := segs[1].lab.Command(segs[1].lab.Server, bin, "machines", "reinstall", segs[1].mac, "--token-file", filepath.Join(segs[1].state, "api-token")).CombinedOutput(); err != nil {
		t.Fatalf("reinstall through seg-b: %v\n%s", err, out)
	}
	waitText("seg-a's event stream after a change through seg-b", &sse, segs[1].mac)

	for i, s := range segs {
		other := segs[1-i]
		if !strings.Contains(s.logs.String(), "mac="+s.mac) || strings.Contains(s.logs.String(), "mac="+other.mac) {
			t.Errorf("%s's DHCP log: want %s only", s.id, s.mac)
		}
	}
}
