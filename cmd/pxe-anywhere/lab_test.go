package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// TestServeBinaryInLab runs the real binary inside a lab namespace, as
// an operator would on a real interface, and boots a simulated machine
// through every service it started: DHCP (as the firmware, then as
// iPXE), TFTP (the iPXE binary) and HTTP (the script). The boot side is
// on the advertised address by default and serves no operator route;
// the admin side is on loopback, where the CLI finds it. Then SIGHUP
// with a broken config is refused, SIGHUP with a new reservation gives
// the machine its new address, and SIGTERM stops it cleanly.
func TestServeBinaryInLab(t *testing.T) {
	netlab.Require(t, "udhcpc", "curl", "tftp")
	if _, err := os.Stat("/usr/lib/ipxe/undionly.kpxe"); err != nil {
		if os.Getenv("PXE_LAB_REQUIRED") == "1" {
			t.Fatal("ipxe package missing")
		}
		t.Skip("ipxe package missing")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "pxe-anywhere")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	lab := netlab.New(t, "10.83.0.0/24")
	cl := lab.Client("52:54:00:83:00:01")
	for _, f := range []string{"bzImage", "initrd"} {
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	cfgTmpl := `server:
  interfaces: [br0]
  state_dir: %[1]s/state
  boot_scripts_per_minute: 1
  http_header_timeout: 1s
  tftp_max_transfers: 1
  sse_max_subscribers: 1
dhcp:
  mode: authoritative
  subnet: 10.83.0.0/24
  range: [10.83.0.100, 10.83.0.120]
  relays: [10.83.0.10]
images:
  test: {kernel: %[1]s/bzImage, initrd: [%[1]s/initrd], cmdline: "console=ttyS0"}
profiles:
  web:
    image: test
    store_paths: {disko: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko, system: /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system}
machines:
  - {mac: "52:54:00:83:00:01", profile: web, hostname: lab-01, ip: %[2]s}
`
	cfg := fmt.Sprintf(cfgTmpl, dir, "10.83.0.10")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	srv := serveInLab(t, lab, bin, "serve", "--config", cfgPath)
	logs, exited := srv.logs, srv.exited
	// udhcpc retries until the server is up; each attempt is bounded.
	script := filepath.Join(dir, "udhcpc.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr flush dev \"$interface\"\nip addr add \"$ip/${mask:-24}\" dev \"$interface\"\necho \"$ip $siaddr $boot_file\" > \"$OUT\"\n"), 0o755)
	dhcpAs := func(out string, extra ...string) []string {
		cmd := lab.Command(cl, "udhcpc", append([]string{"-q", "-n", "-f", "-i", "eth0", "-t", "10", "-T", "1", "-s", script}, extra...)...)
		cmd.Env = append(os.Environ(), "OUT="+out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("udhcpc: %v\n%s", err, b)
		}
		b, _ := os.ReadFile(out)
		return strings.Fields(string(b))
	}
	fw := dhcpAs(filepath.Join(dir, "fw"), "-V", "PXEClient:Arch:00000:UNDI:002001")
	if len(fw) != 3 || fw[0] != "10.83.0.10" || fw[1] != "10.83.0.1" || fw[2] != "undionly.kpxe" {
		t.Fatalf("firmware DHCP: %q", fw)
	}
	// dhcp.relays reaches DHCP: a DISCOVER relayed from the listed
	// address (the client's, here) is answered to its port 67.
	var relay *net.UDPConn
	if err := netlab.Do(cl, func() (err error) {
		relay, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.83.0.10"), Port: 67})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	relayed, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithHwAddr(net.HardwareAddr{0x52, 0x54, 0, 0x83, 0, 0x99}),
		dhcpv4.WithGatewayIP(net.ParseIP("10.83.0.10")))
	if err != nil {
		t.Fatal(err)
	}
	relay.WriteTo(relayed.ToBytes(), &net.UDPAddr{IP: net.ParseIP("10.83.0.1"), Port: 67})
	relay.SetReadDeadline(time.Now().Add(20 * time.Second))
	rbuf := make([]byte, 1500)
	rn, _, err := relay.ReadFrom(rbuf)
	if offer, perr := dhcpv4.FromBytes(rbuf[:rn]); err != nil || perr != nil || offer.MessageType() != dhcpv4.MessageTypeOffer || offer.TransactionID != relayed.TransactionID {
		t.Fatalf("relayed DISCOVER from the listed relay: no offer: %v %v", err, perr)
	}
	relay.Close()
	// ipxe.efi is a symlink out of /usr/lib/ipxe on Debian: it must be
	// served all the same.
	for _, name := range []string{"undionly.kpxe", "ipxe.efi"} {
		got := filepath.Join(dir, name)
		if b, err := lab.Command(cl, "curl", "-sS", "--max-time", "30", "--tftp-blksize", "1428", "-o", got, "tftp://10.83.0.1/"+name).CombinedOutput(); err != nil {
			t.Fatalf("TFTP %s: %v %s", name, err, b)
		}
		want, _ := os.ReadFile("/usr/lib/ipxe/" + name)
		if b, _ := os.ReadFile(got); len(want) == 0 || !bytes.Equal(b, want) {
			t.Fatalf("TFTP download of %s differs from the iPXE binary", name)
		}
	}
	// tftp_max_transfers: 1 reaches TFTP: with a transfer held open
	// by a client that never ACKs, tftp-hpa reads the server's refusal.
	var held *net.UDPConn
	if err := netlab.Do(cl, func() (err error) {
		held, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.83.0.10")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.WriteTo([]byte("\x00\x01undionly.kpxe\x00octet\x00"), &net.UDPAddr{IP: net.ParseIP("10.83.0.1"), Port: 69})
	held.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 1500)
	n, tid, err := held.ReadFrom(buf)
	if err != nil || n < 4 || buf[1] != 3 {
		t.Fatalf("held transfer: no first DATA packet: %v %q", err, buf[:n])
	}
	if b, err := lab.Command(cl, "tftp", "10.83.0.1", "-m", "binary", "-c", "get", "undionly.kpxe", filepath.Join(dir, "busy")).CombinedOutput(); !bytes.Contains(b, []byte("busy")) {
		t.Fatalf("TFTP past tftp_max_transfers: 1: %v %s", err, b)
	}
	held.WriteTo([]byte("\x00\x05\x00\x00gave up\x00"), tid)
	ipxe := dhcpAs(filepath.Join(dir, "ipxe"), "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845")
	if len(ipxe) != 3 || ipxe[2] != "http://10.83.0.1:8080/boot/52-54-00-83-00-01.ipxe" {
		t.Fatalf("iPXE DHCP: %q", ipxe)
	}
	body, err := lab.Command(cl, "curl", "-sSf", "--max-time", "30", ipxe[2]).Output()
	if err != nil || !bytes.Contains(body, []byte("pxe_anywhere.token=")) || !bytes.Contains(body, []byte("initrd --name extra http://10.83.0.1:8080/boot/")) {
		t.Fatalf("script: %v\n%s", err, body)
	}
	// The limits of the config reach the servers: a second script in
	// the minute is refused with the wait, and headers that never end
	// are cut.
	out, _ := lab.Command(cl, "curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "30", ipxe[2]).Output()
	if !bytes.Contains(out, []byte("HTTP/1.1 429")) || !bytes.Contains(out, []byte("Retry-After: 60")) {
		t.Fatalf("second script within boot_scripts_per_minute: 1:\n%s", out)
	}
	if err := netlab.Do(cl, func() error {
		c, err := net.Dial("tcp4", "10.83.0.1:8080")
		if err != nil {
			return err
		}
		defer c.Close()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
		// The deadline only ends a broken run: the server closes first.
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = io.Copy(io.Discard, c)
		return err
	}); err != nil {
		t.Fatalf("unfinished headers past http_header_timeout: %v", err)
	}
	// The machine's network reaches the boot side only: the operator
	// routes are not on its port, and the admin port is not on its
	// address.
	for _, p := range []string{"/", "/events", "/metrics", "/api/v1/machines"} {
		if code, _ := lab.Command(cl, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "http://10.83.0.1:8080"+p).Output(); string(code) != "404" {
			t.Errorf("boot port %s from the machine's network: HTTP %s, want 404", p, code)
		}
	}
	if b, err := lab.Command(cl, "curl", "-sS", "--max-time", "10", "http://10.83.0.1:8081/").CombinedOutput(); err == nil {
		t.Errorf("the admin port answers on the provisioning address: %s", b)
	}
	// The boot side is on the advertised address, not on all of them.
	if b, err := lab.Command(lab.Server, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:8080/healthz").CombinedOutput(); err == nil {
		t.Errorf("the boot side answers on loopback too: it listens on all addresses (%s)", b)
	}
	if b, _ := lab.Command(lab.Server, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:8081/metrics").Output(); !bytes.Contains(b, []byte("pxe_anywhere_tftp_transfers_total")) || !bytes.Contains(b, []byte("pxe_anywhere_dhcp_requests_total")) || !bytes.Contains(b, []byte(`listener="boot",route="/boot/{file}"`)) {
		t.Fatalf("admin metrics lack the DHCP, TFTP and boot HTTP counters:\n%.2000s", b)
	}
	// sse_max_subscribers: 1 reaches the admin side: with one stream
	// open, the next is refused with 503. A probe that connects before
	// the held stream does takes the slot itself and the held one is
	// refused; then the held stream is started again.
	var stream *exec.Cmd
	var ended chan struct{}
	hold := func() {
		stream = lab.Command(lab.Server, "curl", "-sSN", "--max-time", "60", "-o", "/dev/null", "http://127.0.0.1:8081/events")
		if err := stream.Start(); err != nil {
			t.Fatal(err)
		}
		ended = make(chan struct{})
		go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(stream, ended)
	}
	hold()
	defer func() { stream.Process.Kill(); <-ended }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-ended:
			hold()
		default:
		}
		time.Sleep(200 * time.Millisecond)
		code, _ := lab.Command(lab.Server, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "http://127.0.0.1:8081/events").Output()
		if string(code) == "503" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second event stream with sse_max_subscribers: 1: HTTP %s, want 503", code)
		}
	}
	// The CLI's default server is the admin side on loopback.
	if out, err := lab.Command(lab.Server, bin, "machines", "list", "--token-file", filepath.Join(dir, "state", "api-token")).CombinedOutput(); err != nil || !bytes.Contains(out, []byte("lab-01")) {
		t.Fatalf("machines list against the default server: %v\n%s", err, out)
	}
	// A broken config on SIGHUP is refused; the server keeps serving.
	os.WriteFile(cfgPath, []byte(cfg+"bogus: 1\n"), 0o644)
	srv.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "config reload refused") {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP with a broken config was not refused")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b, err := lab.Command(cl, "curl", "-sSf", "--max-time", "10", "http://10.83.0.1:8080/healthz").Output(); err != nil || string(b) != "ok\n" {
		t.Fatalf("server stopped serving after a refused reload: %v %q", err, b)
	}
	// A reload that moves the machine's reservation reaches DHCP.
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(cfgTmpl, dir, "10.83.0.11")), 0o644)
	srv.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "config reloaded") {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP with a new reservation was not applied")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := dhcpAs(filepath.Join(dir, "moved"), "-V", "PXEClient:Arch:00000:UNDI:002001"); len(got) != 3 || got[0] != "10.83.0.11" {
		t.Fatalf("after the reload the machine got %q, want its new reservation 10.83.0.11", got)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "pxe_anywhere.token=") {
			t.Fatalf("a boot token reached the log: %s", line)
		}
	}
	srv.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
}

// TestFailedStartClosesSockets: when a socket cannot be opened, serve
// fails and leaves none of the ones it opened before bound, so that the
// operator (or a supervisor) can start it again at once.
func TestFailedStartClosesSockets(t *testing.T) {
	netlab.Require(t)
	tests := []struct {
		name  string
		taken string // network/address that something else holds
		want  string
		free  []string // network/address that must be bindable afterwards
	}{
		{"boot port taken", "tcp/10.84.0.1:8080", "server.http_listen", []string{"udp/10.84.0.1:4011", "udp/10.84.0.1:69", "tcp/127.0.0.1:8081"}},
		{"admin port taken", "tcp/127.0.0.1:8081", "server.admin_listen", []string{"udp/10.84.0.1:4011", "tcp/10.84.0.1:8080", "udp/10.84.0.1:69"}},
		{"TFTP port taken", "udp/10.84.0.1:69", "tftp listen", []string{"udp/10.84.0.1:4011", "tcp/10.84.0.1:8080", "tcp/127.0.0.1:8081"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ipxe := filepath.Join(dir, "ipxe")
			os.MkdirAll(ipxe, 0o755)
			os.WriteFile(filepath.Join(ipxe, "undionly.kpxe"), []byte("undionly"), 0o644)
			cfgPath := filepath.Join(dir, "config.yaml")
			os.WriteFile(cfgPath, []byte(fmt.Sprintf(`server:
  interfaces: [br0]
  tftp_listen: "10.84.0.1:69"
  state_dir: %s/state
`, dir)), 0o644)
			lab := netlab.New(t, "10.84.0.0/24")
			network, addr, _ := strings.Cut(tt.taken, "/")
			held, err := bindIn(lab.Server, network, addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { held.Close() })
			var out bytes.Buffer
			err = netlab.Do(lab.Server, func() error {
				return run(context.Background(), []string{"serve", "--config", cfgPath, "--ipxe-dir", ipxe}, &out, &out)
			})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("serve: err = %v, want it to mention %q\n%s", err, tt.want, out.String())
			}
			for _, f := range tt.free {
				network, addr, _ := strings.Cut(f, "/")
				c, err := bindIn(lab.Server, network, addr)
				if err != nil {
					t.Errorf("%s %s still bound after the failed start: %v", network, addr, err)
					continue
				}
				c.Close()
			}
		})
	}
}

// bindIn opens a TCP listener or a UDP socket on addr inside ns.
func bindIn(ns *netlab.NS, network, addr string) (io.Closer, error) {
	var c io.Closer
	err := netlab.Do(ns, func() error {
		if network == "tcp" {
			l, err := net.Listen("tcp4", addr)
			c = l
			return err
		}
		pc, err := net.ListenPacket("udp4", addr)
		c = pc
		return err
	})
	return c, err
}

// labServer is `pxe-anywhere serve` that a test started in its lab's
// server namespace.
type labServer struct {
	*exec.Cmd
	logs   *syncbuf.Buffer
	exited chan error // Wait's result, once
}

// serveInLab starts bin with args in lab's server namespace. The test's
// cleanup kills it, waits for it, and logs what it wrote when the test
// failed.
func serveInLab(t *testing.T, lab *netlab.Lab, bin string, args ...string) *labServer {
	t.Helper()
	s := &labServer{Cmd: lab.Command(lab.Server, bin, args...), logs: &syncbuf.Buffer{}, exited: make(chan error, 1)}
	s.Stdout, s.Stderr = s.logs, s.logs
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.exited <- s.Wait(); close(done) }()
	t.Cleanup(func() {
		s.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs.String())
		}
	})
	return s
}
