package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// serverBinary builds cmd/pxe-anywhere once per test binary: the tests
// run the real program, as an operator would. PXE_E2E_BIN names one
// built already (make e2e builds bin/pxe-anywhere first).
func serverBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("PXE_E2E_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	binOnce.Do(func() {
		binPath = filepath.Join(tmpRoot, "pxe-anywhere")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/pxe-anywhere")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/pxe-anywhere: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// server is pxe-anywhere serve running in the lab's server namespace.
type server struct {
	t        *testing.T
	lab      *netlab.Lab
	stateDir string
	logPath  string
	http     *http.Client
	pid      int // the serve process (ip netns exec execs it in place)
}

// profileSpec is what a test varies in the profile it installs.
type profileSpec struct {
	disko  string // store path of the disko stand-in
	system string // store path of the system toplevel
	mac    string
	proxy  bool // proxy DHCP beside another server, not authoritative
	// unknown is the server's unknown_machines line ("": ignore) and
	// machines the config's last sections ("": mac under machines:;
	// rack_test.go and discovery_test.go write their own).
	unknown, machines string
	raOff             bool // server.router_advertisements: off
}

// startServer writes a config for one machine and starts the server.
func startServer(t *testing.T, lab *netlab.Lab, p profileSpec) *server {
	t.Helper()
	bin := serverBinary(t)
	kernel, initrd := installerImage(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	extra := filepath.Join(dir, "extra")
	writeFile(t, filepath.Join(extra, "etc", "e2e-extra"), "extra file from pxe-anywhere\n", 0o644)
	writeFile(t, filepath.Join(extra, "home", "alice", "hello"), "hello alice\n", 0o644)
	diskKey := filepath.Join(dir, "disk.key")
	writeFile(t, diskKey, "e2e disk key\n", 0o600)
	cfg := fmt.Sprintf(`server:
  interfaces: [br0]
  advertise: %[1]s
  tftp_listen: ":69"
  state_dir: %[2]s
%[11]s
  router_advertisements: %[13]s
%[10]s
images:
  test:
    kernel: %[3]s
    initrd: [%[4]s]
    cmdline: "console=ttyS0"
profiles:
  e2e:
    image: test
    store_paths: {disko: %[5]s, system: %[6]s}
    disk_encryption_keys: {/tmp/disk.key: %[7]s}
    extra_files: %[8]s
    chown: {/home/alice: "1000:100"}
    after_install: reboot
%[12]s`, serverIP, state, kernel, initrd, p.disko, p.system, diskKey, extra, p.mac, dhcpConfig(p.proxy), p.unknownLine(), p.machinesSection(), raMode(p.raOff))
	cfgPath := filepath.Join(dir, "config.yaml")
	writeFile(t, cfgPath, cfg, 0o600)

	s := &server{t: t, lab: lab, stateDir: state, logPath: filepath.Join(dir, "server.log")}
	logf, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", lab.Server.Name, bin, "serve", "--config", cfgPath, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting pxe-anywhere serve: %v", err)
	}
	s.pid = cmd.Process.Pid
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		logf.Close()
		if t.Failed() {
			dst := filepath.Join(repoRoot, "e2e", "artifacts", sanitize(t.Name()))
			if os.MkdirAll(dst, 0o755) == nil {
				if data, err := os.ReadFile(s.logPath); err == nil {
					_ = os.WriteFile(filepath.Join(dst, "server.log"), data, 0o644)
				}
			}
			// Without the API polls this test makes, which bury the story.
			var lines []string
			for _, l := range fileLines(s.logPath) {
				if !strings.Contains(l, "msg=http ") {
					lines = append(lines, l)
				}
			}
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("server log tail (kept in %s):\n%s", dst, strings.Join(lines, "\n"))
		}
	})
	// API calls dial from inside the lab: the server is only there.
	s.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = netlab.Do(lab.Server, func() (e error) { c, e = (&net.Dialer{}).DialContext(ctx, network, addr); return e })
			return c, err
		},
	}}
	// Ready when the boot side and the API answer; bounded in case the
	// server died.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-done:
			t.Fatalf("pxe-anywhere serve exited; log:\n%s", tail(s.logPath, 40))
		default:
		}
		if _, err := s.fetch(bootURL + "/healthz"); err == nil {
			if _, err := s.get("/api/v1/machines"); err == nil {
				// The machines' network finds no API on the boot side.
				if body, err := s.fetch(bootURL + "/api/v1/machines"); err == nil || !strings.Contains(err.Error(), "404") {
					t.Fatalf("the boot side serves the API: %v %s", err, body)
				}
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pxe-anywhere serve not answering on %s and %s; log:\n%s", bootURL, adminURL, tail(s.logPath, 40))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (p profileSpec) unknownLine() string {
	if p.unknown != "" {
		return p.unknown
	}
	return "  unknown_machines: ignore"
}

func (p profileSpec) machinesSection() string {
	if p.machines != "" {
		return p.machines
	}
	return "machines:\n  - mac: \"" + p.mac + "\"\n    profile: e2e\n    hostname: e2e-01\n"
}

func dhcpConfig(proxy bool) string {
	if proxy {
		return "dhcp:\n  mode: proxy"
	}
	return `dhcp:
  mode: authoritative
  subnet: 10.77.0.0/24
  range: [10.77.0.100, 10.77.0.200]
  router: ` + serverIP + `
  lease_time: 1h`
}

func raMode(off bool) string {
	if off {
		return "off"
	}
	return "auto"
}

// plainDHCP runs dnsmasq as the site's existing DHCP server: addresses
// only, no PXE options, which pxe-anywhere in proxy mode adds. extra
// are more dnsmasq options (a --dhcp-host reservation, say).
func plainDHCP(t *testing.T, lab *netlab.Lab, extra ...string) {
	t.Helper()
	dir := t.TempDir()
	cmd := lab.Command(lab.Server, "dnsmasq", append([]string{"--keep-in-foreground", "--port=0", "--interface=br0", "--bind-interfaces",
		"--dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0,1h", "--dhcp-leasefile=" + filepath.Join(dir, "leases"),
		"--pid-file=" + filepath.Join(dir, "pid"), "--log-dhcp", "--log-facility=" + filepath.Join(dir, "dnsmasq.log")}, extra...)...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting dnsmasq: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("dnsmasq log tail:\n%s", tail(filepath.Join(dir, "dnsmasq.log"), 20))
		}
	})
}

// The server's two HTTP sides: the boot side on the advertised address
// (http_listen's default), the admin side on the server's loopback
// (admin_listen's default), which the test reaches from inside the lab.
const (
	bootURL  = "http://" + serverIP + ":8080"
	adminURL = "http://127.0.0.1:8081"
)

// get calls the server's admin API with the bearer token from its state.
func (s *server) get(path string) ([]byte, error) { return s.fetch(adminURL + path) }

// fetch GETs url, with the bearer token from the server's state.
func (s *server) fetch(url string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if tok, err := os.ReadFile(filepath.Join(s.stateDir, "api-token")); err == nil {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body, nil
}

type machineView struct {
	MAC   string `json:"mac"`
	State string `json:"state"`
	Phase string `json:"phase"`
	Error string `json:"error"`
	IP    string `json:"ip"`
}

func (s *server) machine(mac string) machineView {
	var m machineView
	if body, err := s.get("/api/v1/machines/" + mac); err == nil {
		_ = json.Unmarshal(body, &m)
	}
	return m
}

// logHas reports whether the server's log holds s.
func (s *server) logHas(sub string) bool {
	data, _ := os.ReadFile(s.logPath)
	return strings.Contains(string(data), sub)
}

// logLine returns the first line of the server's log holding sub.
func (s *server) logLine(sub string) string {
	for _, l := range fileLines(s.logPath) {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// logLineWith returns the first line of the server's log holding all of
// subs.
func (s *server) logLineWith(subs ...string) string {
	for _, l := range fileLines(s.logPath) {
		all := true
		for _, sub := range subs {
			all = all && strings.Contains(l, sub)
		}
		if all {
			return l
		}
	}
	return ""
}

// text returns a raw API body ("" on error), for substring checks.
func (s *server) text(path string) string {
	body, _ := s.get(path)
	return string(body)
}

// stateTimer records when each machine state was first seen.
type stateTimer struct {
	seen []string
}

func (st *stateTimer) observe(t *testing.T, v *vm, m machineView) {
	key := m.State
	if m.Phase != "" {
		key += "/" + m.Phase
	}
	if key == "" {
		return
	}
	for _, k := range st.seen {
		if k == key {
			return
		}
	}
	st.seen = append(st.seen, key)
	t.Logf("timing %s: state %s at %s", v.name, key, v.Elapsed())
}

// installFlow boots one machine through the whole chain with the real
// server and checks the installed disk from the host.
func installFlow(t *testing.T, fw firmware, mac string, proxy bool) {
	installFlowOpts(t, fw, mac, proxy, false)
}

// installFlowOpts is installFlow, with an attacker on the bridge during
// the whole install when attack is set.
func installFlowOpts(t *testing.T, fw firmware, mac string, proxy, attack bool) {
	if proxy {
		requireE2E(t, "dnsmasq")
	} else {
		requireE2E(t)
	}
	t.Parallel()
	lab := netlab.New(t, labPrefix)
	system := systemToplevel(t)
	disko := storeAdd(t, filepath.Join(repoRoot, "lab", "disko-standin.sh"))
	if proxy {
		plainDHCP(t, lab)
	}
	s := startServer(t, lab, profileSpec{disko: disko, system: system, mac: mac, proxy: proxy})
	if m := s.machine(mac); m.State != "new" {
		t.Fatalf("before boot: machine %s state %q, want new", mac, m.State)
	}
	var a *attacker
	if attack {
		a = startAttacker(t, lab, mac)
	}
	v := startVM(t, lab, fw, mac)
	st := &stateTimer{}
	if !proxy {
		waitFor(t, v, bootBound, "first DHCP ack", func() bool {
			// The attacker's own lease is in the log too: the VM's MAC.
			return s.logLineWith("mac="+mac, "reply=ACK") != ""
		})
	}
	if fw == uefi {
		// OVMF's own PXE client must get iPXE over TFTP: the step that
		// BIOS guests skip because qemu's NIC ROM already is iPXE.
		waitFor(t, v, bootBound, "ipxe.efi sent over TFTP", func() bool {
			// OVMF would go on to HTTP Boot and hide the failure.
			if l := s.logLine(`msg="tftp request refused"`); l != "" {
				t.Fatalf("the UEFI firmware's TFTP request was refused: %s", l)
			}
			return s.logHas(`msg="tftp sent"`)
		})
	}
	waitFor(t, v, bootBound, "iPXE script (state booting)", func() bool { st.observe(t, v, s.machine(mac)); return s.logHas("PXE boot into the installer") })
	waitFor(t, v, bootBound, "kernel running", func() bool { st.observe(t, v, s.machine(mac)); return v.SerialHas("Linux version") })
	waitFor(t, v, bootBound, "installer callback", func() bool {
		st.observe(t, v, s.machine(mac))
		return v.SerialHas("callback:") && v.SerialHas("accepted")
	})
	waitFor(t, v, 2*bootBound, "state installed", func() bool {
		m := s.machine(mac)
		st.observe(t, v, m)
		if m.State == "failed" {
			t.Fatalf("install failed in phase %s: %s\nlog:\n%s", m.Phase, m.Error, s.text("/api/v1/machines/"+mac+"/log"))
		}
		return m.State == "installed"
	})
	waitFor(t, v, bootBound, "second PXE boot sent to the local disk", func() bool {
		return strings.Contains(s.text("/api/v1/machines/"+mac+"/events"), "booting from local disk")
	})
	v.Stop()
	if a != nil {
		a.check(t, s.text("/api/v1/machines/"+mac+"/events"))
	}
	// A state too short for the poller to see is still in the events,
	// each of which carries the state the machine was in.
	var events []struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(s.text("/api/v1/machines/"+mac+"/events")), &events); err != nil {
		t.Fatalf("events: %v", err)
	}
	for _, want := range []string{"booting", "installer-up", "installing", "installed"} {
		found := false
		for _, k := range st.seen {
			found = found || k == want || strings.HasPrefix(k, want+"/")
		}
		for _, e := range events {
			found = found || e.State == want
		}
		if !found {
			t.Errorf("state %s never seen (seen %v, events %+v)", want, st.seen, events)
		}
	}
	checkInstalledDisk(t, v.Disk, system, []extraFile{
		{Path: "/etc/e2e-extra", UID: 0, GID: 0, Content: "extra file from pxe-anywhere"},
		{Path: "/home/alice", UID: 1000, GID: 100},
		{Path: "/home/alice/hello", UID: 1000, GID: 100, Content: "hello alice"},
	})
}

// TestInstallBIOS runs with an attacker on the bridge: a host with a
// lease of its own that keeps asking for the VM's boot and calling back.
func TestInstallBIOS(t *testing.T) { installFlowOpts(t, bios, "52:54:00:77:01:01", false, true) }

func TestInstallUEFI(t *testing.T) { installFlow(t, uefi, "52:54:00:77:02:01", false) }

// TestInstallBIOSProxyDHCP: dnsmasq hands out addresses, pxe-anywhere
// only adds the boot options (proxy mode), as on a network that already
// has a DHCP server.
func TestInstallBIOSProxyDHCP(t *testing.T) { installFlow(t, bios, "52:54:00:77:04:01", true) }

// TestInstallDiskoFails: a failing disko leaves the machine failed in
// phase disko, with the remote error line in its log.
func TestInstallDiskoFails(t *testing.T) {
	requireE2E(t)
	t.Parallel()
	lab := netlab.New(t, labPrefix)
	mac := "52:54:00:77:03:01"
	system := systemToplevel(t)
	disko := storeAdd(t, filepath.Join(repoRoot, "lab", "disko-standin-fail.sh"))
	s := startServer(t, lab, profileSpec{disko: disko, system: system, mac: mac})
	v := startVM(t, lab, bios, mac)
	st := &stateTimer{}
	var m machineView
	waitFor(t, v, 2*bootBound, "state failed", func() bool {
		m = s.machine(mac)
		st.observe(t, v, m)
		if m.State == "installed" {
			t.Fatal("machine installed although disko failed")
		}
		return m.State == "failed"
	})
	v.Stop()
	if m.Phase != "disko" {
		t.Errorf("failed in phase %q, want disko (error %q)", m.Phase, m.Error)
	}
	const line = "simulated disko failure for the e2e test"
	if log := s.text("/api/v1/machines/" + mac + "/log"); !strings.Contains(log, line) && !strings.Contains(m.Error, line) {
		t.Errorf("the remote error line %q is neither in the machine's log nor its error %q; log:\n%s", line, m.Error, log)
	}
}
