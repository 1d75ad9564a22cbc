package powertest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// IPMISimConfig configures an ipmi_sim run.
type IPMISimConfig struct {
	// Password of user "admin" (administrator).
	Password string
	// IP and Port are where the LAN interface listens; "" and 0:
	// 127.0.0.1 and a free port.
	IP   string
	Port int
	// SerialPort is where ipmi_sim listens for the machine's
	// ipmi-bmc-extern chardev (codec VM); 0: a free port.
	SerialPort int
	// StartCmd is what power on runs (a qemu command line that connects
	// back to SerialPort); "": a sleep that stands for the machine, so
	// that MachinePIDs can tell whether it runs.
	StartCmd string
	// Wrap prefixes the ipmi_sim command, such as
	// ["ip", "netns", "exec", "NS"]; it must exec ipmi_sim in the end.
	Wrap []string
}

// IPMISim is a running OpenIPMI ipmi_sim: a real IPMI 2.0 LAN BMC.
type IPMISim struct {
	Addr       string // host:port of the LAN interface
	SerialPort int
	marker     string
	logPath    string
}

// StartIPMISim runs ipmi_sim until the test ends. It skips the test
// when ipmi_sim is missing, or fails it with PXE_LAB_REQUIRED=1.
func StartIPMISim(t testing.TB, cfg IPMISimConfig) *IPMISim {
	t.Helper()
	if _, err := exec.LookPath("ipmi_sim"); err != nil {
		if os.Getenv("PXE_LAB_REQUIRED") == "1" {
			t.Fatal("ipmi_sim missing (Debian package openipmi) (PXE_LAB_REQUIRED=1)")
		}
		t.Skip("ipmi_sim missing (Debian package openipmi)")
	}
	if cfg.IP == "" {
		cfg.IP = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = freePort(t, "udp")
	}
	if cfg.SerialPort == 0 {
		cfg.SerialPort = freePort(t, "tcp")
	}
	dir := t.TempDir()
	s := &IPMISim{Addr: net.JoinHostPort(cfg.IP, strconv.Itoa(cfg.Port)), SerialPort: cfg.SerialPort,
		logPath: filepath.Join(dir, "ipmi_sim.log")}
	if cfg.StartCmd == "" {
		// A sleep of a length unique to this run finds "the machine"
		// among the host's processes.
		s.marker = strconv.Itoa(900000 + os.Getpid()%10000*10 + cfg.Port%10)
		cfg.StartCmd = "sleep " + s.marker
	}
	// ipmi_sim's config has no escapes inside quotes.
	if strings.ContainsAny(cfg.StartCmd+cfg.Password, "\"\n") {
		t.Fatal("ipmi_sim: a start command or password with a quote or newline cannot be written in its config")
	}
	conf := fmt.Sprintf(`name "pxetest"
set_working_mc 0x20
  startlan 1
    addr %s %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 %d codec VM
  startcmd "%s"
  startnow false
  user 2 true "admin" "%s" admin 10 none md2 md5 straight
`, cfg.IP, cfg.Port, cfg.SerialPort, cfg.StartCmd, cfg.Password)
	emu := "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"
	for name, body := range map[string]string{"lan.conf": conf, "sim.emu": emu} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, cfg.Wrap...), "ipmi_sim", "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "sim.emu"), "-n", "-s", state)
	cmd := exec.Command(args[0], args[1:]...)
	// A file, not a pipe: the simulator's child inherits it and
	// outlives a killed simulator, and would hold a pipe (and Wait) open.
	logf, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// The simulator's child outlives it when killed; end it too.
		for _, pid := range s.MachinePIDs() {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
		if t.Failed() {
			t.Logf("ipmi_sim output:\n%s", s.Output())
		}
	})
	// Wait until ipmi_sim has bound its LAN port, as the socket table of
	// its own network namespace says; asking earlier gets "connection
	// refused".
	ip := net.ParseIP(cfg.IP).To4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], cfg.Port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/udp", cmd.Process.Pid))
		if strings.Contains(string(b), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipmi_sim did not bind %s in 10 s:\n%s", s.Addr, s.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// Output is what ipmi_sim printed so far.
func (s *IPMISim) Output() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// MachinePIDs lists the processes of the default StartCmd (none when
// the machine is off, or StartCmd was given).
func (s *IPMISim) MachinePIDs() []int {
	if s.marker == "" {
		return nil
	}
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ") == "sleep "+s.marker {
			pids = append(pids, pid)
		}
	}
	return pids
}

// freePort is a port that was free a moment ago on 127.0.0.1.
func freePort(t testing.TB, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
