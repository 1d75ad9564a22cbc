package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// TestServeRouterAdvertisements: serve answers a host's router
// solicitations on its interface by default (after listening for other
// routers first) and counts it on /metrics; with
// server.router_advertisements: off it sends nothing.
func TestServeRouterAdvertisements(t *testing.T) {
	netlab.Require(t, "curl")
	dir := t.TempDir()
	bin := filepath.Join(dir, "pxe-anywhere")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, mode := range []string{"auto", "off"} {
		t.Run(mode, func(t *testing.T) {
			lab := netlab.New(t, "10.154.0.0/24")
			host := lab.Client("52:54:00:97:04:01")
			lab.LinkLocal(host, "eth0")
			lab.QuietKernel(host, "eth0")
			ours := lab.LinkLocal(lab.Server, lab.Bridge)
			cfg := filepath.Join(dir, mode+".yaml")
			os.WriteFile(cfg, []byte(fmt.Sprintf("server:\n  interfaces: [br0]\n  state_dir: %s/state-%s\n  router_advertisements: %s\n", dir, mode, mode)), 0o644)
			var logs syncbuf.Buffer
			srv := lab.Command(lab.Server, bin, "serve", "--config", cfg)
			srv.Stdout, srv.Stderr = &logs, &logs
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				srv.Process.Kill()
				srv.Wait()
				if t.Failed() {
					t.Logf("server log:\n%s", logs.String())
				}
			})
			var metrics []byte
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				if b, err := lab.Command(lab.Server, "curl", "-sSf", "--max-time", "5", "http://127.0.0.1:8081/metrics").Output(); err == nil {
					metrics = b
					break
				}
			}
			if metrics == nil {
				t.Fatal("serve did not come up")
			}
			// Past the start-up listening (4 s), iPXE's first
			// solicitations and their retries.
			time.Sleep(4 * time.Second)
			got, err := netlab.Solicit(host, 3, 300*time.Millisecond, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, a := range got {
				if a.From == ours {
					n++
				}
			}
			metrics, _ = lab.Command(lab.Server, "curl", "-sSf", "--max-time", "5", "http://127.0.0.1:8081/metrics").Output()
			counted := bytes.Contains(metrics, []byte(`pxe_anywhere_ra_advertisements_sent_total{interface="br0"} 1`))
			switch {
			case mode == "auto" && (n != 1 || !counted):
				t.Fatalf("auto: %d advertisements from us for 3 solicitations (want 1); counted on /metrics: %v", n, counted)
			case mode == "off" && (len(got) != 0 || strings.Contains(string(metrics), "pxe_anywhere_ra_")):
				t.Fatalf("off: %d advertisements, and /metrics has ra series: %v", len(got), strings.Contains(string(metrics), "pxe_anywhere_ra_"))
			}
		})
	}
}
