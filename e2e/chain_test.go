package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/ra"
)

// chainStep is one point of the chain from power-on to the installer's
// kernel, and how to see it for each server.
type chainStep struct {
	name string
	uefi bool // only in a UEFI boot (OVMF's PXE, then ipxe.efi)
}

var chainSteps = []chainStep{
	{name: "first DHCP ACK"},
	{name: "ipxe.efi sent over TFTP", uefi: true},
	{name: "iPXE script asked"},
	{name: "installer kernel running"},
}

// chainServer is one server under comparison: it starts in the lab and
// says which steps its log (or the VM's serial) shows done.
type chainServer struct {
	name  string
	start func(t *testing.T, lab *netlab.Lab, mac string) (done func(step string) bool)
}

// TestChainTimings boots the same BIOS and UEFI guests to the installer
// kernel from pxe-anywhere (router advertisements on and off) and from
// dnsmasq (with its default ping check of each offered address, and
// with --no-ping), one VM at a time, and prints when each step was
// first seen after qemu started (polled every 100 ms). It measures, it
// asserts nothing about speed: `make chain-bench` runs it
// (PXE_E2E_CHAIN=1), under the VM lock.
func TestChainTimings(t *testing.T) {
	if os.Getenv("PXE_E2E_CHAIN") != "1" {
		t.Skip("chain timings: set PXE_E2E=1 PXE_E2E_CHAIN=1 (make chain-bench)")
	}
	requireE2E(t, "dnsmasq")
	servers := []chainServer{
		{name: "pxe-anywhere", start: ourChain(false)},
		{name: "pxe-anywhere RA-off", start: ourChain(true)},
		{name: "dnsmasq", start: dnsmasqChain()},
		{name: "dnsmasq --no-ping", start: dnsmasqChain("--no-ping")},
	}
	reps := 1
	if n, err := strconv.Atoi(os.Getenv("PXE_CHAIN_REPS")); err == nil && n > 0 {
		reps = n
	}
	type row struct {
		fw     firmware
		server string
		runs   []map[string]time.Duration
	}
	var rows []*row
	for _, fw := range []firmware{bios, uefi} {
		for _, srv := range servers {
			rows = append(rows, &row{fw: fw, server: srv.name})
		}
	}
	// Repetitions interleave the servers, so that a slow minute of the
	// machine falls on all of them.
	for rep := 0; rep < reps; rep++ {
		for i, r := range rows {
			srv := servers[i%len(servers)]
			mac := fmt.Sprintf("52:54:00:77:%02x:%02x", 0x20+i%len(servers), map[firmware]int{bios: 1, uefi: 2}[r.fw])
			t.Run(fmt.Sprintf("%s/%s/%d", r.fw, srv.name, rep+1), func(t *testing.T) {
				lab := netlab.New(t, labPrefix)
				done := srv.start(t, lab, mac)
				// A server in production is up long before a machine
				// boots: past its start-up (for ours, the router
				// advertisement responder's listening first).
				time.Sleep(ra.DefaultListenFirst)
				v := startVM(t, lab, r.fw, mac)
				r.runs = append(r.runs, chainTimeline(t, v, r.fw, done))
				v.Stop()
			})
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| firmware | server |")
	for _, s := range chainSteps {
		fmt.Fprintf(&b, " %s |", s.name)
	}
	fmt.Fprintf(&b, "\n|---|---|%s\n", strings.Repeat("---|", len(chainSteps)))
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |", r.fw, r.server)
		for _, s := range chainSteps {
			var all []string
			var secs []float64
			for _, at := range r.runs {
				if d, ok := at[s.name]; ok {
					secs = append(secs, d.Seconds())
					all = append(all, fmt.Sprintf("%.1f", d.Seconds()))
				}
			}
			switch {
			case s.uefi && r.fw != uefi:
				b.WriteString(" – |")
			case len(secs) == 0:
				b.WriteString(" not seen |")
			default:
				// The best run: other work on the machine only ever
				// adds time to a boot.
				sort.Float64s(secs)
				fmt.Fprintf(&b, " %.1f s (%s) |", secs[0], strings.Join(all, ", "))
			}
		}
		b.WriteString("\n")
	}
	t.Logf("chain timings, seconds after qemu started, best of %d (each run):%s", reps, b.String())
}

// chainTimeline polls done every 100 ms until the installer kernel
// runs, and returns when each step was first seen.
func chainTimeline(t *testing.T, v *vm, fw firmware, done func(string) bool) map[string]time.Duration {
	at := map[string]time.Duration{}
	deadline := time.Now().Add(bootBound)
	for {
		for _, s := range chainSteps {
			if _, seen := at[s.name]; seen || (s.uefi && fw != uefi) {
				continue
			}
			if (s.name == "installer kernel running" && v.SerialHas("Linux version")) || done(s.name) {
				at[s.name] = v.Elapsed()
				t.Logf("timing %s: %s at %s", v.name, s.name, at[s.name])
			}
		}
		if _, ok := at["installer kernel running"]; ok {
			return at
		}
		if exited, err := v.Exited(); exited {
			t.Fatalf("qemu ended (%v); serial tail:\n%s", err, tail(v.Serial, 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("installer kernel not running within %s; serial tail:\n%s", bootBound, tail(v.Serial, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ourChain starts pxe-anywhere as the e2e install tests do.
func ourChain(raOff bool) func(*testing.T, *netlab.Lab, string) func(string) bool {
	return func(t *testing.T, lab *netlab.Lab, mac string) func(string) bool {
		disko := storeAdd(t, filepath.Join(repoRoot, "lab", "disko-standin.sh"))
		s := startServer(t, lab, profileSpec{disko: disko, system: systemToplevel(t), mac: mac, raOff: raOff})
		t.Cleanup(func() { keepChainLog(t, s.logPath) })
		return func(step string) bool {
			switch step {
			case "first DHCP ACK":
				return s.logLineWith("mac="+mac, "reply=ACK") != ""
			case "ipxe.efi sent over TFTP":
				return s.logHas(`msg="tftp sent"`)
			case "iPXE script asked":
				return s.logHas("PXE boot into the installer")
			}
			return false
		}
	}
}

// dnsmasqChain starts dnsmasq as the lab's reference (LAB.md), with
// extra options, and serves the same installer image from a plain Go
// HTTP server, with a script like ours (kernel and initrd).
func dnsmasqChain(extra ...string) func(*testing.T, *netlab.Lab, string) func(string) bool {
	return func(t *testing.T, lab *netlab.Lab, mac string) func(string) bool {
		kernel, initrd := installerImage(t)
		dir := t.TempDir()
		base := "http://" + serverIP + ":8081"
		var scripts atomic.Int32
		mux := http.NewServeMux()
		mux.HandleFunc("/boot.ipxe", func(w http.ResponseWriter, r *http.Request) {
			scripts.Add(1)
			fmt.Fprintf(w, "#!ipxe\nkernel %[1]s/vmlinuz initrd=image console=ttyS0\ninitrd --name image %[1]s/initrd.img\nboot\n", base)
		})
		mux.HandleFunc("/vmlinuz", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, kernel) })
		mux.HandleFunc("/initrd.img", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, initrd) })
		var ln net.Listener
		if err := netlab.Do(lab.Server, func() (err error) { ln, err = net.Listen("tcp", serverIP+":8081"); return err }); err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: mux}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		logPath := filepath.Join(dir, "dnsmasq.log")
		dns := lab.Command(lab.Server, "dnsmasq", append([]string{"--keep-in-foreground", "--port=0", "--interface=br0", "--bind-interfaces",
			"--dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h", "--dhcp-leasefile=" + filepath.Join(dir, "leases"),
			"--pid-file=" + filepath.Join(dir, "pid"), "--log-facility=" + logPath,
			"--dhcp-userclass=set:ipxe,iPXE", "--dhcp-match=set:efi64,option:client-arch,7",
			"--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe", "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
			"--dhcp-boot=tag:ipxe," + base + "/boot.ipxe", "--enable-tftp", "--tftp-root=/usr/lib/ipxe"}, extra...)...)
		if err := dns.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dns.Process.Kill(); dns.Wait(); keepChainLog(t, logPath) })
		return func(step string) bool {
			data, _ := os.ReadFile(logPath)
			switch step {
			case "first DHCP ACK":
				return bytes.Contains(data, []byte("DHCPACK(br0)"))
			case "ipxe.efi sent over TFTP":
				return bytes.Contains(data, []byte("sent /usr/lib/ipxe/ipxe.efi"))
			case "iPXE script asked":
				return scripts.Load() > 0
			}
			return false
		}
	}
}

// keepChainLog copies a server's log to e2e/artifacts/chain/, where the
// waits of a run can be read afterwards with the server's timestamps.
func keepChainLog(t *testing.T, path string) {
	dst := filepath.Join(repoRoot, "e2e", "artifacts", "chain")
	if data, err := os.ReadFile(path); err == nil && os.MkdirAll(dst, 0o755) == nil {
		_ = os.WriteFile(filepath.Join(dst, sanitize(t.Name())+".log"), data, 0o644)
	}
}
