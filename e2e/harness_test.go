package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// TestHarnessDnsmasq proves the lab and the test installer image without
// pxe-anywhere: dnsmasq answers DHCP, a small HTTP server in this test
// serves the iPXE script, kernel, initrd and a per-boot key initrd, and
// the test itself does the install steps over SSH with the pinned host
// key (disk key, disko stand-in, nix copy, nixos-install stand-in,
// reboot). If this passes and the pxe-anywhere tests fail, the fault is
// in pxe-anywhere, not in the lab. It is dev tooling, not part of make
// e2e: PXE_E2E_HARNESS=1 runs it.
func TestHarnessDnsmasq(t *testing.T) {
	if os.Getenv("PXE_E2E_HARNESS") != "1" {
		t.Skip("lab self-check without pxe-anywhere: set PXE_E2E=1 PXE_E2E_HARNESS=1")
	}
	requireE2E(t, "dnsmasq", "nix")
	for _, tc := range []struct {
		name string
		fw   firmware
		mac  string
	}{
		{name: "bios", fw: bios, mac: "52:54:00:77:00:01"},
		{name: "uefi", fw: uefi, mac: "52:54:00:77:00:02"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			harness(t, tc.fw, tc.mac)
		})
	}
}

func harness(t *testing.T, fw firmware, mac string) {
	kernel, initrd := installerImage(t)
	lab := netlab.New(t, labPrefix)
	dir := t.TempDir()

	// Keys: ours (authorized) and the per-boot host key we pin.
	clientSigner, clientPub := newEd25519(t, dir, "id_ed25519")
	hostSigner, hostPub := newEd25519(t, dir, "hostkey")
	extra := keyInitrd(t, dir, clientPub, filepath.Join(dir, "hostkey"), hostPub)
	writeFile(t, filepath.Join(dir, "known_hosts"), "* "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostSigner.PublicKey())))+"\n", 0o600)

	var mu sync.Mutex
	var cbAddr string
	var scripts, kernels int
	const token = "harness-token"
	base := "http://" + serverIP + ":8081"
	mux := http.NewServeMux()
	mux.HandleFunc("/boot.ipxe", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		scripts++
		n := scripts
		mu.Unlock()
		if n > 1 {
			fmt.Fprint(w, "#!ipxe\necho local boot\nexit\n")
			return
		}
		// Named initrds and initrd= let the EFI stub load both under UEFI;
		// BIOS iPXE concatenates them anyway.
		fmt.Fprintf(w, "#!ipxe\nkernel %[1]s/vmlinuz initrd=image initrd=extra console=ttyS0 pxe_anywhere.token=%[2]s pxe_anywhere.callback=%[1]s/cb\ninitrd --name image %[1]s/initrd.img\ninitrd --name extra %[1]s/extra.cpio.gz\nboot\n", base, token)
	})
	mux.HandleFunc("/vmlinuz", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		kernels++
		mu.Unlock()
		http.ServeFile(w, r, kernel)
	})
	mux.HandleFunc("/initrd.img", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, initrd) })
	mux.HandleFunc("/extra.cpio.gz", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, extra) })
	mux.HandleFunc("/cb", func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Token, Address string }
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&body) != nil || body.Token != token {
			http.Error(w, "bad callback", http.StatusBadRequest)
			return
		}
		mu.Lock()
		cbAddr = body.Address
		mu.Unlock()
	})
	var ln net.Listener
	if err := netlab.Do(lab.Server, func() (err error) { ln, err = net.Listen("tcp", serverIP+":8081"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	dns := lab.Command(lab.Server, "dnsmasq", "--keep-in-foreground", "--no-daemon", "--port=0", "--interface=br0", "--bind-interfaces",
		"--dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h", "--dhcp-leasefile="+filepath.Join(dir, "leases"),
		"--dhcp-userclass=set:ipxe,iPXE", "--dhcp-match=set:efi64,option:client-arch,7",
		"--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe", "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
		"--dhcp-boot=tag:ipxe,"+base+"/boot.ipxe", "--enable-tftp", "--tftp-root=/usr/lib/ipxe", "--log-dhcp")
	dnsLog, err := os.Create(filepath.Join(dir, "dnsmasq.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dnsLog.Close() })
	dns.Stdout, dns.Stderr = dnsLog, dnsLog
	if err := dns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })

	v := startVM(t, lab, fw, mac)
	counter := func(n *int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return *n > 0 }
	}
	acks := func() int {
		data, _ := os.ReadFile(filepath.Join(dir, "dnsmasq.log"))
		return bytes.Count(data, []byte("DHCPACK"))
	}
	waitFor(t, v, bootBound, "first DHCP ack", func() bool { return acks() > 0 })
	waitFor(t, v, bootBound, "iPXE script", counter(&scripts))
	waitFor(t, v, bootBound, "kernel fetched", counter(&kernels))
	waitFor(t, v, bootBound, "kernel running", func() bool { return v.SerialHas("Linux version") })
	waitFor(t, v, bootBound, "callback", func() bool { mu.Lock(); defer mu.Unlock(); return cbAddr != "" })
	mu.Lock()
	ip := cbAddr
	mu.Unlock()

	client := dialPinned(t, lab, ip, clientSigner, hostSigner.PublicKey())
	run(t, client, "", "grep -qx VARIANT_ID=installer /etc/os-release && grep -qx ID=nixos /etc/os-release")
	run(t, client, "sekrit\n", "umask 077; cat > /tmp/disk.key")
	disko, err := os.ReadFile(filepath.Join(repoRoot, "lab", "disko-standin.sh"))
	if err != nil {
		t.Fatal(err)
	}
	run(t, client, string(disko), "sh -s")
	system := systemToplevel(t)
	cp := lab.Command(lab.Server, "nix", "--extra-experimental-features", "nix-command", "copy", "--no-check-sigs",
		"--to", "ssh://root@"+ip+"?remote-store=local%3Froot%3D%2Fmnt", system)
	cp.Env = append(os.Environ(), "NIX_SSHOPTS=-i "+filepath.Join(dir, "id_ed25519")+" -o UserKnownHostsFile="+filepath.Join(dir, "known_hosts")+" -o StrictHostKeyChecking=yes")
	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("nix copy to the installer: %v\n%s", err, out)
	}
	if out, err := runErr(client, "", "nixos-install --bogus"); err == nil || !strings.Contains(out, "unexpected argument") {
		t.Fatalf("nixos-install stand-in accepted a bogus argument: %v\n%s", err, out)
	}
	run(t, client, "", "mkdir -p /mnt/home/alice && echo hi > /mnt/home/alice/hello && chown -R 1000:100 /mnt/home/alice")
	run(t, client, "", "nixos-install --no-root-passwd --no-channel-copy --system "+system)
	t.Logf("timing %s: installed (nixos-install done) at %s", v.name, v.Elapsed())
	_, _ = runErr(client, "", "reboot")
	client.Close()
	waitFor(t, v, bootBound, "second PXE boot gets the local-boot script", func() bool { mu.Lock(); defer mu.Unlock(); return scripts >= 2 })
	v.Stop()
	checkInstalledDisk(t, v.Disk, system, []extraFile{{Path: "/home/alice/hello", UID: 1000, GID: 100, Content: "hi"}})
}

// newEd25519 makes a key pair, writing the private key in OpenSSH
// format to dir/name (0600), and returns the signer and public line.
func newEd25519(t *testing.T, dir, name string) (ssh.Signer, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, name), string(pem.EncodeToMemory(blk)), 0o600)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return signer, string(ssh.MarshalAuthorizedKey(sp))
}

// keyInitrd makes the per-boot initrd the way nixos-images expects it:
// ssh/authorized_keys and ssh/ssh_host_ed25519_key(.pub), gzip'd newc.
func keyInitrd(t *testing.T, dir, authorized, hostKeyFile, hostPub string) string {
	t.Helper()
	root := filepath.Join(dir, "extra")
	writeFile(t, filepath.Join(root, "ssh", "authorized_keys"), authorized, 0o600)
	key, err := os.ReadFile(hostKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "ssh", "ssh_host_ed25519_key"), string(key), 0o600)
	writeFile(t, filepath.Join(root, "ssh", "ssh_host_ed25519_key.pub"), hostPub, 0o644)
	out := filepath.Join(dir, "extra.cpio.gz")
	cmd := exec.Command("sh", "-c", "find ssh | cpio --quiet -o -H newc -R 0:0 | gzip > "+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("making the key initrd: %v\n%s", err, b)
	}
	return out
}

// dialPinned connects as root from inside the lab, accepting only want
// as the host key.
func dialPinned(t *testing.T, lab *netlab.Lab, ip string, signer ssh.Signer, want ssh.PublicKey) *ssh.Client {
	t.Helper()
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: ssh.FixedHostKey(want), Timeout: 30 * time.Second}
	var c *ssh.Client
	var err error
	for i := 0; i < 30; i++ {
		err = netlab.Do(lab.Server, func() (e error) { c, e = ssh.Dial("tcp", net.JoinHostPort(ip, "22"), cfg); return e })
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		time.Sleep(2 * time.Second)
	}
	t.Fatalf("ssh root@%s with the pinned host key: %v", ip, err)
	return nil
}

func runErr(c *ssh.Client, stdin, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	s.Stdin = strings.NewReader(stdin)
	out, err := s.CombinedOutput(cmd)
	return string(out), err
}

func run(t *testing.T, c *ssh.Client, stdin, cmd string) string {
	t.Helper()
	out, err := runErr(c, stdin, cmd)
	if err != nil {
		t.Fatalf("ssh %q: %v\n%s", cmd, err, out)
	}
	return out
}
