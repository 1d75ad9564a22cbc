package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// TestServeBinaryInLab runs the real binary inside a lab namespace, as
// an operator would on a real interface, and boots a simulated machine
// through every service it started: DHCP (as the firmware, then as
// iPXE), TFTP (the iPXE binary) and HTTP (the script). Then SIGHUP with
// a broken config is refused, and SIGTERM stops it cleanly.
func TestServeBinaryInLab(t *testing.T) {
	netlab.Require(t, "udhcpc", "curl")
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
	cfg := fmt.Sprintf(`server:
  interfaces: [br0]
  http_listen: "10.83.0.1:8080"
  state_dir: %[1]s/state
dhcp:
  mode: authoritative
  subnet: 10.83.0.0/24
  range: [10.83.0.100, 10.83.0.120]
images:
  test: {kernel: %[1]s/bzImage, initrd: [%[1]s/initrd], cmdline: "console=ttyS0"}
profiles:
  web:
    image: test
    store_paths: {disko: /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-disko, system: /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system}
machines:
  - {mac: "52:54:00:83:00:01", profile: web, hostname: lab-01}
`, dir)
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	var logs syncBuffer
	srv := lab.Command(lab.Server, bin, "serve", "--config", cfgPath)
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		srv.Process.Kill()
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
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
	if len(fw) != 3 || fw[1] != "10.83.0.1" || fw[2] != "undionly.kpxe" {
		t.Fatalf("firmware DHCP: %q", fw)
	}
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
	ipxe := dhcpAs(filepath.Join(dir, "ipxe"), "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x4d:69505845")
	if len(ipxe) != 3 || ipxe[2] != "http://10.83.0.1:8080/boot/52-54-00-83-00-01.ipxe" {
		t.Fatalf("iPXE DHCP: %q", ipxe)
	}
	body, err := lab.Command(cl, "curl", "-sSf", "--max-time", "30", ipxe[2]).Output()
	if err != nil || !bytes.Contains(body, []byte("pxe_anywhere.token=")) || !bytes.Contains(body, []byte("initrd --name extra http://10.83.0.1:8080/boot/")) {
		t.Fatalf("script: %v\n%s", err, body)
	}
	if b, _ := lab.Command(cl, "curl", "-sS", "--max-time", "10", "http://10.83.0.1:8080/metrics").Output(); !bytes.Contains(b, []byte("pxe_anywhere_tftp_transfers_total")) || !bytes.Contains(b, []byte("pxe_anywhere_dhcp_requests_total")) {
		t.Fatalf("metrics lack the DHCP and TFTP counters:\n%.2000s", b)
	}
	// A broken config on SIGHUP is refused; the server keeps serving.
	os.WriteFile(cfgPath, []byte(cfg+"bogus: 1\n"), 0o644)
	srv.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "config reload refused") {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP with a broken config was not refused")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b, err := lab.Command(cl, "curl", "-sSf", "--max-time", "10", "http://10.83.0.1:8080/healthz").Output(); err != nil || string(b) != "ok\n" {
		t.Fatalf("server stopped serving after a refused reload: %v %q", err, b)
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

// syncBuffer is a bytes.Buffer that the server's output and the test
// may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
