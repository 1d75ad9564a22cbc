package power

import (
	"context"
	"errors"
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

// simBMC is a real IPMI BMC: OpenIPMI's ipmi_sim (Debian's openipmi),
// on loopback, whose "machine" is a sleep command that it starts on
// power on and kills on power off.
type simBMC struct {
	addr   string
	pid    int
	marker string // the sleep's argument, unique to this simulator
}

// startSim runs ipmi_sim with user admin and the given password.
func startSim(t *testing.T, password string) *simBMC {
	t.Helper()
	if _, err := exec.LookPath("ipmi_sim"); err != nil {
		if os.Getenv("PXE_LAB_REQUIRED") == "1" {
			t.Fatal("ipmi_sim missing (Debian package openipmi) (PXE_LAB_REQUIRED=1)")
		}
		t.Skip("ipmi_sim missing (Debian package openipmi)")
	}
	dir := t.TempDir()
	lanPort, serialPort := freePort(t, "udp"), freePort(t, "tcp")
	// A sleep of a length unique to this test finds "the machine"
	// among the host's processes.
	marker := strconv.Itoa(900000 + os.Getpid()%10000*10 + lanPort%10)
	conf := fmt.Sprintf(`name "pxetest"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  serial 15 127.0.0.1 %d codec VM
  startcmd "sleep %s"
  startnow false
  user 2 true "admin" %q admin 10 none md2 md5 straight
`, lanPort, serialPort, marker, password)
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
	cmd := exec.Command("ipmi_sim", "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "sim.emu"), "-n", "-s", state)
	// A file, not a pipe: the simulator's child inherits it and
	// outlives a killed simulator, and would hold a pipe (and Wait) open.
	logPath := filepath.Join(dir, "ipmi_sim.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// The simulator's child outlives it when killed; end it too.
		for _, pid := range pidsOf(marker) {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
		if t.Failed() {
			t.Logf("ipmi_sim output:\n%s", out())
		}
	})
	// Wait until ipmi_sim has bound its LAN port (the kernel's socket
	// table says so); asking earlier gets "connection refused".
	want := fmt.Sprintf("0100007F:%04X", lanPort)
	for deadline := time.Now().Add(10 * time.Second); ; {
		b, _ := os.ReadFile("/proc/net/udp")
		if strings.Contains(string(b), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipmi_sim did not bind 127.0.0.1:%d in 10 s:\n%s", lanPort, out())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &simBMC{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(lanPort)), pid: cmd.Process.Pid, marker: marker}
}

// freePort is a port that was free a moment ago on 127.0.0.1.
func freePort(t *testing.T, network string) int {
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

// pidsOf lists the processes running "sleep marker".
func pidsOf(marker string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Join(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), " ") == "sleep "+marker {
			pids = append(pids, pid)
		}
	}
	return pids
}

// passwordFile writes a password file of the given mode.
func passwordFile(t *testing.T, password string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bmc-password")
	if err := os.WriteFile(p, []byte(password+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitMachine waits until "the machine" runs (want true) or not.
func (s *simBMC) waitMachine(t *testing.T, want bool) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := pidsOf(s.marker)
		if (len(pids) > 0) == want {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine running = %v after 10 s, want %v", len(pids) > 0, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestIPMIAgainstIPMISim(t *testing.T) {
	const password = "s3cret-ipmi"
	sim := startSim(t, password)
	ctx := context.Background()
	c, err := New(Config{Type: TypeIPMI, Address: sim.addr, User: "admin",
		PasswordFile: passwordFile(t, password, 0o600), Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// A BMC carries out power commands after answering them: the
	// state is polled, as an operator would.
	status := func(want State) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); ; {
			got, err := c.Status(ctx)
			if err == nil && got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("Status = %q, %v; want %q", got, err, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	status(Off)
	sim.waitMachine(t, false)

	if err := c.On(ctx); err != nil {
		t.Fatal(err)
	}
	status(On)
	first := sim.waitMachine(t, true)

	// A cycle of a running machine really restarts it.
	if err := c.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	status(On)
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := pidsOf(sim.marker)
		if len(now) == 1 && now[0] != first[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a power cycle the machine is %v, was %v: not restarted", now, first)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if err := c.Off(ctx); err != nil {
		t.Fatal(err)
	}
	status(Off)
	sim.waitMachine(t, false)

	// A cycle of a machine that is off powers it on.
	if err := c.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	status(On)
	sim.waitMachine(t, true)

	// ipmi_sim refuses boot devices ("Invalid data field in request"):
	// that is ErrUnsupported, which callers take as a warning.
	err = c.BootPXEOnce(ctx)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("BootPXEOnce = %v, want ErrUnsupported from ipmi_sim", err)
	}
	var pe *Error
	if !errors.As(err, &pe) || pe.Op != "boot pxe once" || pe.Address != sim.addr {
		t.Fatalf("BootPXEOnce error %#v: want a *Error naming the BMC and the operation", err)
	}
}

func TestIPMIWrongPasswordIsAuthAndNeverShown(t *testing.T) {
	sim := startSim(t, "right-password")
	c, err := New(Config{Type: TypeIPMI, Address: sim.addr, User: "admin",
		PasswordFile: passwordFile(t, "wrong-password", 0o600), Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = c.On(context.Background())
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("On with a wrong password = %v, want ErrAuth", err)
	}
	if strings.Contains(err.Error(), "wrong-password") || strings.Contains(err.Error(), "right-password") {
		t.Fatalf("error %q holds a password", err)
	}
	if len(pidsOf(sim.marker)) != 0 {
		t.Fatal("the machine was powered on with a wrong password")
	}
}

func TestIPMISilentBMCTimesOut(t *testing.T) {
	// A UDP socket that never answers: a BMC that is down or filtered.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := New(Config{Type: TypeIPMI, Address: pc.LocalAddr().String(), User: "admin", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.Status(context.Background())
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Status of a silent BMC = %v, want ErrTimeout", err)
	}
	// The bound holds (with slack for a loaded machine); this is not a
	// speed check, it proves the call does not hang.
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Status of a silent BMC returned after %s, bound 2 s", d)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	good := passwordFile(t, "pw", 0o600)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"group-readable password", Config{Type: TypeIPMI, Address: "10.0.0.1", PasswordFile: passwordFile(t, "pw", 0o640)}, "readable by others"},
		{"world-readable password", Config{Type: TypeRedfish, Address: "10.0.0.1", PasswordFile: passwordFile(t, "pw", 0o644)}, "readable by others"},
		{"missing password file", Config{Type: TypeIPMI, Address: "10.0.0.1", PasswordFile: "/nonexistent/pw"}, "no such file"},
		{"unknown type", Config{Type: "snmp", Address: "10.0.0.1", PasswordFile: good}, `type "snmp"`},
		{"no address", Config{Type: TypeIPMI}, "no address"},
		{"bad ipmi port", Config{Type: TypeIPMI, Address: "10.0.0.1:99999", PasswordFile: good}, "port"},
		{"ipmi user too long", Config{Type: TypeIPMI, Address: "10.0.0.1", User: strings.Repeat("u", 17), PasswordFile: good}, "16"},
		{"redfish ftp", Config{Type: TypeRedfish, Address: "ftp://10.0.0.1", PasswordFile: good}, "http(s)"},
		{"redfish odd path", Config{Type: TypeRedfish, Address: "https://10.0.0.1/other", PasswordFile: good}, "/redfish/v1/Systems/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
