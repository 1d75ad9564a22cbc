package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// selfSigned writes a self-signed certificate for ips and its key as
// PEM files in dir, as an operator makes one with openssl.
func selfSigned(t *testing.T, dir, name string, ips ...string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "pxe-anywhere admin " + name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestCLIOverTLS: the admin listener with server.tls_cert and
// server.tls_key speaks HTTPS; the CLI trusts it with --ca-file (or
// PXE_ANYWHERE_CA_FILE) naming its self-signed certificate, and refuses
// it, with a certificate error, without that file or with another.
func TestCLIOverTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir, "admin", "127.0.0.1")
	other, _ := selfSigned(t, dir, "other", "127.0.0.1")
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644)

	tc, err := adminTLS(profiles.Server{TLSCert: cert, TLSKey: key})
	if err != nil || tc == nil {
		t.Fatalf("adminTLS: %v", err)
	}
	l, loopback, err := listenAdmin("127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if !loopback {
		t.Fatal("127.0.0.1 not taken for loopback")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := admin.New(admin.Config{APIToken: machinesTestToken, Log: log}, newFakeInventory())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpserve.Serve(ctx, l, h, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	server := "https://" + l.Addr().String()
	tokenFile := filepath.Join(dir, "api-token")
	os.WriteFile(tokenFile, []byte(machinesTestToken), 0o600)

	tests := []struct {
		name    string
		args    []string
		env     string // PXE_ANYWHERE_CA_FILE
		wantErr string
	}{
		{name: "ca-file is the server's certificate", args: []string{"--ca-file", cert}},
		{name: "ca-file from the environment", env: cert},
		{name: "system roots do not know it", wantErr: "certificate"},
		{name: "another certificate", args: []string{"--ca-file", other}, wantErr: "certificate"},
		{name: "ca-file without a certificate", args: []string{"--ca-file", notPEM}, wantErr: "no PEM certificate"},
		{name: "plain HTTP to the TLS port", args: []string{"--server", "http://" + l.Addr().String()}, wantErr: "400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PXE_ANYWHERE_CA_FILE", tt.env)
			var stdout bytes.Buffer
			args := append([]string{"list", "--server", server, "--token-file", tokenFile}, tt.args...)
			err := runMachines(context.Background(), args, &stdout, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(stdout.String(), "web-01") {
				t.Fatalf("list over TLS: %v\n%s", err, stdout.String())
			}
		})
	}
	// config reload shares the flags.
	err = run(context.Background(), []string{"config", "reload", "--server", server, "--token-file", tokenFile, "--ca-file", cert}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "this server cannot reload (HTTP 501)") {
		t.Fatalf("config reload over TLS: %v, want the server's 501", err)
	}
}

func TestAdminTLSRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	cert, _ := selfSigned(t, dir, "a", "127.0.0.1")
	_, otherKey := selfSigned(t, dir, "b", "127.0.0.1")
	if tc, err := adminTLS(profiles.Server{}); tc != nil || err != nil {
		t.Fatalf("no files: %v %v, want plain HTTP", tc, err)
	}
	_, err := adminTLS(profiles.Server{TLSCert: cert, TLSKey: otherKey})
	if err == nil || !strings.Contains(err.Error(), "server.tls_cert and server.tls_key") {
		t.Fatalf("a key of another certificate: %v", err)
	}
}

// TestWarnExposure: serve warns when the boot side listens on every
// address and when the admin side is off loopback without TLS.
func TestWarnExposure(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	tests := []struct {
		name          string
		boot, admin   string
		loopback, tls bool
		want          []string
	}{
		{"defaults", "10.77.0.1:8080", "127.0.0.1:8081", true, false, nil},
		{"boot on all addresses", "0.0.0.0:8080", "127.0.0.1:8081", true, false, []string{"boot side listens on all addresses"}},
		{"admin off loopback with TLS", "10.77.0.1:8080", "10.99.0.1:8081", false, true, nil},
		{"admin off loopback in clear", "[::]:8080", "10.99.0.1:8081", false, false, []string{"boot side listens on all addresses", "admin side listens off loopback without TLS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			warnExposure(slog.New(slog.NewTextHandler(&buf, nil)), tcp(tt.boot), tcp(tt.admin), tt.loopback, tt.tls)
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if len(tt.want) == 0 {
				if buf.Len() != 0 {
					t.Fatalf("warned:\n%s", buf.String())
				}
				return
			}
			if len(lines) != len(tt.want) {
				t.Fatalf("warnings:\n%s\nwant %d", buf.String(), len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(lines[i], "level=WARN") || !strings.Contains(lines[i], w) {
					t.Errorf("warning %d %q, want %q", i, lines[i], w)
				}
			}
		})
	}
}

// TestServeAdminOffLoopback runs the binary with the admin side on the
// lab's address with TLS, as on a management network: from another host
// the status page wants the login, the CLI works with --ca-file, and
// curl without the certificate is refused. The boot side, which this
// config puts on every address, is warned about.
func TestServeAdminOffLoopback(t *testing.T) {
	netlab.Require(t, "curl")
	dir := t.TempDir()
	bin := filepath.Join(dir, "pxe-anywhere")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	lab := netlab.New(t, "10.86.0.0/24")
	cl := lab.Client("52:54:00:86:00:01")
	if out, err := lab.Command(cl, "ip", "addr", "add", "10.86.0.50/24", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("client address: %v %s", err, out)
	}
	cert, key := selfSigned(t, dir, "admin", "10.86.0.1")
	ipxe := filepath.Join(dir, "ipxe")
	os.MkdirAll(ipxe, 0o755)
	os.WriteFile(filepath.Join(ipxe, "undionly.kpxe"), []byte("undionly"), 0o644)
	cfgPath := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`server:
  interfaces: [br0]
  http_listen: ":8080"
  admin_listen: "10.86.0.1:8443"
  tls_cert: %[1]s
  tls_key: %[2]s
  state_dir: %[3]s/state
`, cert, key, dir)), 0o644)
	var logs syncbuf.Buffer
	srv := lab.Command(lab.Server, bin, "serve", "--config", cfgPath, "--ipxe-dir", ipxe)
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		srv.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	tokenFile := filepath.Join(dir, "state", "api-token")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "msg=serving") {
		if time.Now().After(deadline) {
			t.Fatal("serve did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range []string{"admin=10.86.0.1:8443 admin_tls=true admin_login=true", "boot side listens on all addresses"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("server log lacks %q", w)
		}
	}
	if strings.Contains(logs.String(), "without TLS") {
		t.Error("warned about clear text although the admin side has TLS")
	}

	curl := func(args ...string) (string, error) {
		out, err := lab.Command(cl, "curl", append([]string{"-sS", "--max-time", "10"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := curl("https://10.86.0.1:8443/"); err == nil {
		t.Errorf("curl trusted the self-signed certificate without --cacert: %s", out)
	}
	out, err := curl("--cacert", cert, "-o", "/dev/null", "-w", "%{http_code}", "https://10.86.0.1:8443/")
	if err != nil || out != "401" {
		t.Errorf("status page from another host without login: %v %q, want 401", err, out)
	}
	token, _ := os.ReadFile(tokenFile)
	out, err = curl("--cacert", cert, "-o", "/dev/null", "-w", "%{http_code}", "-d", "token="+strings.TrimSpace(string(token)), "https://10.86.0.1:8443/login")
	if err != nil || out != "303" {
		t.Errorf("login from another host: %v %q, want 303", err, out)
	}
	cli, err := lab.Command(cl, bin, "machines", "list", "--server", "https://10.86.0.1:8443", "--token-file", tokenFile, "--ca-file", cert).CombinedOutput()
	if err != nil || !bytes.Contains(cli, []byte("MAC")) {
		t.Errorf("machines list over TLS from another host: %v\n%s", err, cli)
	}
	cli, err = lab.Command(cl, bin, "machines", "list", "--server", "https://10.86.0.1:8443", "--token-file", tokenFile).CombinedOutput()
	if err == nil || !bytes.Contains(cli, []byte("certificate")) {
		t.Errorf("machines list without --ca-file: %v\n%s", err, cli)
	}
	srv.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("serve exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
}

// TestListenAdminLoopback: whether the admin side is on loopback is read
// from the bound socket: names that resolve to loopback count, the
// wildcard and other addresses do not.
func TestListenAdminLoopback(t *testing.T) {
	netlab.Require(t)
	lab := netlab.New(t, "10.87.0.0/24")
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:0", true},
		{"localhost:0", true},
		{"[::1]:0", true},
		{":0", false},
		{"10.87.0.1:0", false},
	} {
		t.Run(tt.addr, func(t *testing.T) {
			// Inside the lab's namespace, so that the wildcard binds
			// no real interface of the host.
			err := netlab.Do(lab.Server, func() error {
				l, loopback, err := listenAdmin(tt.addr, nil)
				if err != nil {
					return err
				}
				l.Close()
				if loopback != tt.want {
					return fmt.Errorf("loopback = %v, want %v (bound %s)", loopback, tt.want, l.Addr())
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
