package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/power/powertest"
)

// The rack's machines. rackBMC is the one behind ipmi_sim.
const (
	rackAlone    = "52:54:00:77:10:05" // BIOS e1000, installed alone first: the baseline
	rackBMC      = "52:54:00:77:10:01" // BIOS e1000, two NICs (the second uncabled), powered by ipmi_sim
	rackUncabled = "52:54:00:77:10:81"
	rackBIOS2    = "52:54:00:77:10:02" // BIOS e1000 (virtio-net with pxe-virtio.rom did not boot under TCG: see below)
	rackUEFI     = "52:54:00:77:10:03" // UEFI, OVMF PXE (TFTP) on virtio-net
	rackHTTP     = "52:54:00:77:10:04" // UEFI HTTP Boot (netboot: http), virtio-net
	// The BMC listens on the server namespace's loopback: only the
	// server (and the CLI beside it) reach it.
	bmcPort   = 9623
	bmcSerial = 9002
	bmcSecret = "rack-bmc-secret"
)

// TestRack: one server, one bridge, four machines powered on together
// (two BIOS, two UEFI on virtio-net; one with two NICs of which one is
// cabled; one by UEFI HTTP Boot), all installed unattended at once; then the one
// behind a real IPMI BMC (ipmi_sim, which starts its qemu) is
// reinstalled by `machines reinstall --power-cycle` without the test
// touching the VM. It logs the wall time of the four installs against
// one install alone (docs/BENCHMARKS.md); that is a figure, not an
// assertion.
//
// Not parallel: its timings compare one install with four, and the
// other e2e tests (parallel ones wait for it) would skew them.
func TestRack(t *testing.T) {
	requireE2E(t, "ipmi_sim")
	lab := netlab.New(t, labPrefix)
	system := systemToplevel(t)
	disko := storeAdd(t, filepath.Join(repoRoot, "lab", "disko-standin.sh"))
	pwFile := filepath.Join(t.TempDir(), "bmc-password")
	writeFile(t, pwFile, bmcSecret+"\n", 0o600)
	machines := fmt.Sprintf(`machines:
  - {mac: "%s", profile: e2e, hostname: rack-alone}
  - mac: "%s"
    profile: e2e
    hostname: rack-bmc
    bmc: {type: ipmi, address: "127.0.0.1:%d", user: admin, password_file: %s, timeout: 30s}
  - {mac: "%s", profile: e2e, hostname: rack-bios2}
  - {mac: "%s", profile: e2e, hostname: rack-uefi}
  - {mac: "%s", profile: e2e, hostname: rack-http, netboot: http}
`, rackAlone, rackBMC, bmcPort, pwFile, rackBIOS2, rackUEFI, rackHTTP)
	s := startServer(t, lab, profileSpec{disko: disko, system: system, machines: machines})

	// One install alone: the baseline.
	alone := launchVM(t, lab, bios, rackAlone, nil)
	alone.name += "-alone"
	aloneTime := waitInstalled(t, s, alone, rackAlone)
	aloneCPU := procCPU(alone.cmd.Process.Pid)
	alone.Stop()
	t.Logf("RACK one install alone (BIOS e1000): %s; its qemu used %s CPU", aloneTime, aloneCPU)

	// The BMC's machine: ipmi_sim starts (and after a power cycle,
	// restarts) its qemu, which connects back over the BMC's serial
	// port, so that IPMI power commands reach it.
	bmcVM, args := vmArgs(t, lab, bios, rackBMC, nil, vmOpts{SerialAppend: true, Extra: []string{
		"-device", "e1000,mac=" + rackUncabled + ",romfile=", // no netdev: the uncabled NIC
		"-chardev", fmt.Sprintf("socket,id=ipmi0,host=127.0.0.1,port=%d,reconnect=10", bmcSerial),
		"-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0", "-device", "isa-ipmi-kcs,bmc=bmc0",
	}})
	bmcVM.name += "-bmc"
	pidFile := filepath.Join(filepath.Dir(bmcVM.Disk), "qemu.pid")
	args = append(args, "-pidfile", pidFile)
	for _, a := range args {
		if strings.ContainsAny(a, " \"") {
			t.Fatalf("qemu argument %q cannot go into ipmi_sim's startcmd", a)
		}
	}
	sim := powertest.StartIPMISim(t, powertest.IPMISimConfig{Password: bmcSecret, IP: "127.0.0.1", Port: bmcPort, SerialPort: bmcSerial,
		StartCmd: "qemu-system-x86_64 " + strings.Join(args, " "), Wrap: []string{"ip", "netns", "exec", lab.Server.Name}})
	t.Cleanup(func() { killPidFile(pidFile) })

	// Power on together: the BMC's machine through the server's API
	// and its BMC, the other three as qemu starts.
	start := time.Now()
	serverCPU0, machineCPU0 := procCPU(s.pid), machineCPU()
	out := cli(t, s, lab, "power", rackBMC, "on")
	if !strings.Contains(out, "power on through BMC ipmi 127.0.0.1:9623: done") {
		t.Fatalf("machines power on: %s", out)
	}
	bmcVM.start = start
	// qemu runs under ipmi_sim, not under the test: make sure it started.
	for deadline := time.Now().Add(time.Minute); !qemuRunning(pidFile); {
		if time.Now().After(deadline) {
			t.Fatalf("the BMC's qemu is not running a minute after power on; ipmi_sim output:\n%s", sim.Output())
		}
		time.Sleep(time.Second)
	}
	// The second BIOS machine has an e1000: with virtio-net-pci and
	// qemu's pxe-virtio.rom, SeaBIOS never ran the ROM under TCG either
	// (it went to the disk, then "No bootable device"), as LAB.md saw
	// under KVM. The two UEFI machines are the virtio-net ones.
	bios2 := launchVM(t, lab, bios, rackBIOS2, nil)
	bios2.name += "-bios2"
	uefiVM := launchVMOpts(t, lab, uefi, rackUEFI, nil, vmOpts{})
	uefiVM.name += "-uefi"
	// PXE off in the firmware, IPv4 and IPv6, as a machine set up for
	// HTTP Boot usually is: OVMF then offers no PXE boot options and
	// goes straight to UEFI HTTPv4. With IPv4 PXE on, it tried PXE four
	// times on the offer without a boot file first (about 60 s here).
	httpVM := launchVMOpts(t, lab, uefi, rackHTTP, nil, vmOpts{Extra: []string{
		"-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
		"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"}})
	httpVM.name += "-httpboot"
	rack := []struct {
		v   *vm
		mac string
	}{{bmcVM, rackBMC}, {bios2, rackBIOS2}, {uefiVM, rackUEFI}, {httpVM, rackHTTP}}
	// Each must reach the server within minutes: a firmware that never
	// sends DHCP fails here, not after the install bound.
	for _, m := range rack {
		waitFor(t, m.v, 5*time.Minute, m.mac+" first DHCP", func() bool { return s.logLineWith("msg=DHCP", "mac="+m.mac) != "" })
	}
	for _, m := range rack {
		d := waitInstalled(t, s, m.v, m.mac)
		t.Logf("RACK %s installed at %s", m.v.name, d)
	}
	rackTime := time.Since(start).Round(100 * time.Millisecond)
	t.Logf("RACK four installs at once: %s; one alone: %s; ratio %.2f (goal <= 1.5; TCG, %d CPUs)",
		rackTime, aloneTime, float64(rackTime)/float64(aloneTime), runtime.NumCPU())
	// Where the CPU went while the four installed: the server, each
	// qemu (started with the phase, so its total is its share), and
	// the whole machine (other work on it included).
	serverCPU, allCPU := procCPU(s.pid)-serverCPU0, machineCPU()-machineCPU0
	qemuCPU := pidFileCPU(pidFile)
	cpus := fmt.Sprintf("qemu %s %s", bmcVM.name, qemuCPU)
	for _, m := range rack[1:] {
		c := procCPU(m.v.cmd.Process.Pid)
		qemuCPU += c
		cpus += fmt.Sprintf(", qemu %s %s", m.v.name, c)
	}
	t.Logf("RACK CPU over the four installs (%s wall, %d CPUs = %s available): server %s (%.1f%%), qemus %s (%.1f%%; %s), whole machine busy %s (%.1f%%)",
		rackTime, runtime.NumCPU(), rackTime*time.Duration(runtime.NumCPU()),
		serverCPU, pct(serverCPU, rackTime, runtime.NumCPU()), qemuCPU, pct(qemuCPU, rackTime, runtime.NumCPU()), cpus,
		allCPU, pct(allCPU, rackTime, runtime.NumCPU()))
	// The four guests' CPU spread over every core, at best: a floor
	// that no server can lower.
	floor := qemuCPU / time.Duration(runtime.NumCPU())
	t.Logf("RACK the qemus' CPU alone needs %s of wall on %d CPUs: ratio floor %.2f; other processes used %s",
		floor.Round(100*time.Millisecond), runtime.NumCPU(), float64(floor)/float64(aloneTime), allCPU-serverCPU-qemuCPU)

	// The HTTP Boot machine's firmware PXE got an address without a
	// boot file, and its HTTP Boot got iPXE.
	if l := s.logLineWith("mac="+rackHTTP, "+httpboot", "reply=ACK"); l == "" || !strings.Contains(l, "file=http://") {
		t.Errorf("no DHCP answer to %s's UEFI HTTP Boot with an http:// boot file: %q", rackHTTP, l)
	}
	// Its firmware PXE is off: had it tried PXE anyway, it would have
	// had an address without a boot file (netboot: http), which the
	// log would show.
	if l := s.logLineWith("mac="+rackHTTP, "pxe=true", "boot=false"); l != "" {
		t.Logf("RACK %s's firmware still tried PXE (answered without a boot file): %s", rackHTTP, l)
	} else {
		t.Logf("RACK %s's firmware went straight to HTTP Boot (no PXE attempt)", rackHTTP)
	}
	// The uncabled NIC never reached the server.
	if s.logHas(rackUncabled) {
		t.Errorf("the uncabled NIC %s was seen by the server", rackUncabled)
	}
	for _, m := range rack[1:] {
		m.v.Stop()
	}

	// Reinstall through the BMC: nobody touches the VM.
	reStart := time.Now()
	out = cli(t, s, lab, "reinstall", "--power-cycle", rackBMC)
	// ipmi_sim refuses "boot device PXE": a warning, the cycle goes on.
	if !strings.Contains(out, "warning:") || !strings.Contains(out, "power-cycled the machine") {
		t.Fatalf("machines reinstall --power-cycle: %s", out)
	}
	waitFor(t, bmcVM, 2*bootBound, "installed again after the power cycle", func() bool {
		m := s.machine(rackBMC)
		if m.State == "failed" {
			t.Fatalf("reinstall failed in phase %s: %s", m.Phase, m.Error)
		}
		return m.State == "installed" && countEvents(t, s, rackBMC, "installed with profile") == 2
	})
	t.Logf("RACK reinstall through the BMC: %s", time.Since(reStart).Round(100*time.Millisecond))
	evs := s.text("/api/v1/machines/" + rackBMC + "/events")
	for _, want := range []string{
		"power on through BMC ipmi 127.0.0.1:9623 requested by operator (API): done",
		"reinstall requested by operator (API)",
		"power cycle through BMC ipmi 127.0.0.1:9623 requested by operator (API) for the reinstall: done",
	} {
		if !strings.Contains(evs, want) {
			t.Errorf("events of %s lack %q", rackBMC, want)
		}
	}
	if data, _ := os.ReadFile(s.logPath); strings.Contains(string(data), bmcSecret) {
		t.Error("the BMC password is in the server's log")
	}
	// Its disk is read next: the BMC powers the machine off first, so
	// that ipmi_sim does not start its qemu again behind the test (a
	// kill alone once left a restarted qemu holding the disk), and the
	// test makes sure no qemu of it runs any more.
	if out := cli(t, s, lab, "power", rackBMC, "off"); !strings.Contains(out, "done") {
		t.Logf("machines power off: %s", out)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		killPidFile(pidFile)
		if time.Sleep(time.Second); !qemuRunning(pidFile) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the BMC's qemu still runs a minute after power off; ipmi_sim output:\n%s", sim.Output())
		}
	}
	files := []extraFile{{Path: "/etc/e2e-extra", UID: 0, GID: 0, Content: "extra file from pxe-anywhere"}}
	for _, m := range rack {
		checkInstalledDisk(t, m.v.Disk, system, files)
	}
}

// waitInstalled waits until mac is installed and returns the time from
// v's start.
func waitInstalled(t *testing.T, s *server, v *vm, mac string) time.Duration {
	t.Helper()
	return waitFor(t, v, 3*bootBound, mac+" installed", func() bool {
		m := s.machine(mac)
		if m.State == "failed" {
			t.Fatalf("%s failed in phase %s: %s\nlog:\n%s", mac, m.Phase, m.Error, s.text("/api/v1/machines/"+mac+"/log"))
		}
		return m.State == "installed"
	})
}

// cli runs `pxe-anywhere machines ARGS` beside the server, as an
// operator on the server would, and returns its output.
func cli(t *testing.T, s *server, lab *netlab.Lab, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"netns", "exec", lab.Server.Name, serverBinary(t), "machines"}, args[0],
		"--server", adminURL, "--token-file", filepath.Join(s.stateDir, "api-token"))
	full = append(full, args[1:]...)
	out, err := exec.CommandContext(ctx, "ip", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("pxe-anywhere machines %v: %v\n%s", args, err, out)
	}
	t.Logf("pxe-anywhere machines %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

func countEvents(t *testing.T, s *server, mac, sub string) int {
	var evs []struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal([]byte(s.text("/api/v1/machines/"+mac+"/events")), &evs)
	n := 0
	for _, e := range evs {
		if strings.Contains(e.Message, sub) {
			n++
		}
	}
	return n
}

// qemuRunning reports whether the qemu of pid file path runs.
func qemuRunning(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/cmdline")
	return err == nil && strings.Contains(string(cmdline), path)
}

// killPidFile ends the qemu that ipmi_sim started, whose pid it wrote;
// only if that process still is this qemu (its command line names the
// pid file), never another that took the number. It waits (up to 10
// s) until that qemu is gone, so that its disk's lock is released.
func killPidFile(path string) {
	defer func() {
		for deadline := time.Now().Add(10 * time.Second); qemuRunning(path) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
	}()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err == nil && strings.Contains(string(cmdline), path) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// pct is d as a percentage of n CPUs over wall.
func pct(d, wall time.Duration, n int) float64 {
	return 100 * float64(d) / float64(wall*time.Duration(n))
}
