package power

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/power/powertest"
)

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
func waitMachine(t *testing.T, s *powertest.IPMISim, want bool) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := s.MachinePIDs()
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
	sim := powertest.StartIPMISim(t, powertest.IPMISimConfig{Password: password})
	ctx := context.Background()
	c, err := New(Config{Type: TypeIPMI, Address: sim.Addr, User: "admin",
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
	waitMachine(t, sim, false)

	if err := c.On(ctx); err != nil {
		t.Fatal(err)
	}
	status(On)
	first := waitMachine(t, sim, true)

	// A cycle of a running machine really restarts it.
	if err := c.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	status(On)
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := sim.MachinePIDs()
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
	waitMachine(t, sim, false)

	// A cycle of a machine that is off powers it on.
	if err := c.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	status(On)
	waitMachine(t, sim, true)

	// ipmi_sim refuses boot devices ("Invalid data field in request"):
	// that is ErrUnsupported, which callers take as a warning.
	err = c.BootPXEOnce(ctx)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("BootPXEOnce = %v, want ErrUnsupported from ipmi_sim", err)
	}
	var pe *Error
	if !errors.As(err, &pe) || pe.Op != "boot pxe once" || pe.Address != sim.Addr {
		t.Fatalf("BootPXEOnce error %#v: want a *Error naming the BMC and the operation", err)
	}
}

func TestIPMIWrongPasswordIsAuthAndNeverShown(t *testing.T) {
	sim := powertest.StartIPMISim(t, powertest.IPMISimConfig{Password: "right-password"})
	c, err := New(Config{Type: TypeIPMI, Address: sim.Addr, User: "admin",
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
	if len(sim.MachinePIDs()) != 0 {
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
