// Package e2e holds the end-to-end tests: qemu guests PXE-boot, inside a
// network namespace, from a server on a bridge into the test installer
// image that lab/build-installer-image.sh makes, and get installed; and
// a guest that runs a plain Linux is installed by `pxe-anywhere install
// --kexec` with a real kexec into that image (kexec_test.go). They run
// only with PXE_E2E=1 (make e2e) because each boot takes minutes under
// TCG.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

const (
	labPrefix = "10.77.0.0/24"
	serverIP  = "10.77.0.1"
	// bootBound bounds one VM boot; it is a safety net for a hung guest,
	// not an assertion about speed.
	bootBound = 12 * time.Minute
)

var (
	repoRoot  string
	imageOnce sync.Once
	imageDir  string
	imageErr  error
	tmpRoot   string
)

func TestMain(m *testing.M) {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	repoRoot = filepath.Dir(wd)
	tmpRoot, err = os.MkdirTemp("", "pxe-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

// requireE2E skips unless PXE_E2E=1 and the lab's tools are here.
func requireE2E(t *testing.T, tools ...string) {
	t.Helper()
	if os.Getenv("PXE_E2E") != "1" {
		t.Skip("end-to-end test: set PXE_E2E=1 (make e2e)")
	}
	netlab.Require(t, append([]string{"qemu-system-x86_64", "qemu-img", "cpio", "nix-store", "sfdisk", "debugfs", "fsck.fat", "go"}, tools...)...)
}

// installerImage builds the test installer image once per test binary.
func installerImage(t *testing.T) (kernel, initrd string) {
	t.Helper()
	imageOnce.Do(func() {
		imageDir = filepath.Join(tmpRoot, "image")
		out, err := exec.Command(filepath.Join(repoRoot, "lab", "build-installer-image.sh"), imageDir).CombinedOutput()
		if err != nil {
			imageErr = fmt.Errorf("lab/build-installer-image.sh: %w\n%s", err, out)
		}
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return filepath.Join(imageDir, "vmlinuz"), filepath.Join(imageDir, "initrd.img")
}

// storeAdd puts path into the host's Nix store and returns the store path.
func storeAdd(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("nix-store", "--add", path).Output()
	if err != nil {
		t.Fatalf("nix-store --add %s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

// systemToplevel makes a stand-in NixOS system: a store directory with
// an init, the way store_paths.system names one.
func systemToplevel(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "nixos-system-e2e")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "init"), "#!/bin/sh\necho pxe-anywhere e2e system\n", 0o755)
	writeFile(t, filepath.Join(dir, "nixos-version"), "e2e\n", 0o644)
	return storeAdd(t, dir)
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// firmware is how a VM network-boots.
type firmware string

const (
	// bios: SeaBIOS runs the e1000's iPXE ROM, which DHCPs as iPXE.
	bios firmware = "bios"
	// uefi: OVMF's own PXE client fetches ipxe.efi over TFTP first.
	uefi firmware = "uefi"
)

// vm is one qemu guest running inside the lab's server namespace.
type vm struct {
	t      *testing.T
	name   string
	Serial string
	Disk   string
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	start  time.Time
}

// kernelBoot is a guest booted by qemu straight from a kernel and an
// initrd (-kernel, -initrd), with no firmware network boot.
type kernelBoot struct {
	Kernel, Initrd, Cmdline string
	MemMiB                  int
}

// startVM boots a guest with an empty 2G disk behind its NIC in the boot
// order. It is killed when the test ends; its serial log is kept in
// e2e/artifacts/ when the test fails.
func startVM(t *testing.T, lab *netlab.Lab, fw firmware, mac string) *vm {
	t.Helper()
	return launchVM(t, lab, fw, mac, nil)
}

// startKernelVM boots a guest with an empty 2G disk from kb.
func startKernelVM(t *testing.T, lab *netlab.Lab, mac string, kb kernelBoot) *vm {
	t.Helper()
	return launchVM(t, lab, "", mac, &kb)
}

func launchVM(t *testing.T, lab *netlab.Lab, fw firmware, mac string, kb *kernelBoot) *vm {
	t.Helper()
	return launchVMOpts(t, lab, fw, mac, kb, vmOpts{})
}

// vmOpts vary a guest beyond its firmware (rack_test.go).
type vmOpts struct {
	// NIC is the cabled NIC's model ("": e1000 for BIOS, virtio-net-pci
	// for UEFI); ROM its BIOS option ROM ("": the model's iPXE ROM).
	NIC, ROM string
	// Extra are more qemu arguments (a second NIC, a BMC, fw_cfg).
	Extra []string
	// SerialAppend keeps the serial log across qemu restarts (a BMC
	// that power-cycles the guest starts qemu again).
	SerialAppend bool
}

func launchVMOpts(t *testing.T, lab *netlab.Lab, fw firmware, mac string, kb *kernelBoot, o vmOpts) *vm {
	t.Helper()
	v, args := vmArgs(t, lab, fw, mac, kb, o)
	return v.run(lab.Server.Name, args)
}

// vmArgs prepares a guest's disk and firmware files and returns its qemu
// command line (without qemu-system-x86_64 itself).
func vmArgs(t *testing.T, lab *netlab.Lab, fw firmware, mac string, kb *kernelBoot, o vmOpts) (*vm, []string) {
	t.Helper()
	dir := t.TempDir()
	v := &vm{t: t, name: t.Name(), Serial: filepath.Join(dir, "serial.log"), Disk: filepath.Join(dir, "disk.qcow2"), done: make(chan struct{})}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", v.Disk, "2G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	tap := lab.Tap()
	accel := os.Getenv("PXE_E2E_ACCEL")
	if accel == "" {
		accel = "tcg"
	}
	mem := 1024
	if kb != nil && kb.MemMiB != 0 {
		mem = kb.MemMiB
	}
	serial := "file,id=ser0,path=" + v.Serial
	if o.SerialAppend {
		serial += ",append=on"
	}
	args := []string{"-nodefaults", "-display", "none", "-accel", accel, "-m", strconv.Itoa(mem), "-smp", "1",
		"-chardev", serial, "-serial", "chardev:ser0",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
		"-drive", "file=" + v.Disk + ",if=none,id=d0,format=qcow2",
		"-device", "virtio-blk-pci,drive=d0,bootindex=2",
	}
	switch {
	case kb != nil:
		args = append(args, "-machine", "pc", "-kernel", kb.Kernel, "-initrd", kb.Initrd, "-append", kb.Cmdline,
			"-device", "e1000,netdev=n0,mac="+mac+",romfile=")
	case fw == bios:
		nic, rom := "e1000", "/usr/lib/ipxe/qemu/pxe-e1000.rom"
		if o.NIC != "" {
			nic, rom = o.NIC, o.ROM
		}
		args = append(args, "-machine", "pc",
			"-device", nic+",netdev=n0,mac="+mac+",romfile="+rom+",bootindex=1",
			"-chardev", "file,id=dbg,path="+filepath.Join(dir, "seabios.log"), "-device", "isa-debugcon,iobase=0x402,chardev=dbg")
	case fw == uefi:
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		data, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
		if err != nil {
			t.Fatalf("OVMF variables (apt-get install ovmf): %v", err)
		}
		writeFile(t, vars, string(data), 0o600)
		args = append(args, "-machine", "q35",
			"-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
			"-drive", "if=pflash,format=raw,file="+vars,
			"-device", "virtio-net-pci,netdev=n0,mac="+mac+",romfile=,bootindex=1")
	}
	args = append(args, o.Extra...)
	t.Cleanup(func() {
		if t.Failed() {
			v.keepLogs(dir)
		}
	})
	return v, args
}

// run starts qemu with args inside the network namespace ns.
func (v *vm) run(ns string, args []string) *vm {
	t := v.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*bootBound)
	v.cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "qemu-system-x86_64"}, args...)...)
	var stderr bytes.Buffer
	v.cmd.Stderr = &stderr
	v.start = time.Now()
	if err := v.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("qemu: %v", err)
	}
	go func() {
		v.err = v.cmd.Wait()
		if stderr.Len() > 0 {
			v.err = fmt.Errorf("%v: %s", v.err, bytes.TrimSpace(stderr.Bytes()))
		}
		close(v.done)
	}()
	t.Cleanup(func() {
		v.Stop()
		cancel()
	})
	return v
}

// Stop kills the guest and waits for qemu to be gone, so that its disk
// can be read.
func (v *vm) Stop() {
	if v.cmd == nil {
		return // started by a BMC, which stops it
	}
	select {
	case <-v.done:
		return
	default:
	}
	_ = v.cmd.Process.Kill()
	<-v.done
}

// Exited reports whether qemu has ended, and how.
func (v *vm) Exited() (bool, error) {
	select {
	case <-v.done:
		return true, v.err
	default:
		return false, nil
	}
}

// Elapsed is the time since qemu started, for the timing report.
func (v *vm) Elapsed() time.Duration { return time.Since(v.start).Round(100 * time.Millisecond) }

// SerialHas reports whether the serial console log contains s.
func (v *vm) SerialHas(s string) bool {
	data, _ := os.ReadFile(v.Serial)
	return bytes.Contains(data, []byte(s))
}

func (v *vm) keepLogs(dir string) {
	dst := filepath.Join(repoRoot, "e2e", "artifacts", sanitize(v.name))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		v.t.Logf("keeping logs: %v", err)
		return
	}
	for _, f := range []string{"serial.log", "seabios.log"} {
		if data, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
			_ = os.WriteFile(filepath.Join(dst, f), data, 0o644)
		}
	}
	v.t.Logf("VM logs kept in %s; serial tail:\n%s", dst, tail(v.Serial, 40))
}

func sanitize(s string) string {
	return regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(s, "_")
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond until it holds, failing the test if the guest dies
// or bound passes first. what names the step in the failure.
func waitFor(t *testing.T, v *vm, bound time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		if cond() {
			d := v.Elapsed()
			t.Logf("timing %s: %s at %s", v.name, what, d)
			return d
		}
		if done, err := v.Exited(); done {
			t.Fatalf("waiting for %s: qemu ended (%v); serial tail:\n%s", what, err, tail(v.Serial, 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not reached within %s; serial tail:\n%s", what, bound, tail(v.Serial, 40))
		}
		time.Sleep(time.Second)
	}
}

// installedDisk is what the host reads back from a guest's disk.
type installedDisk struct {
	Label      string
	Partitions []partition
	RootImage  string // the Linux root partition, extracted
	ESPImage   string
}

type partition struct {
	Node  string `json:"node"`
	Start int64  `json:"start"`
	Size  int64  `json:"size"`
	Type  string `json:"type"`
	Name  string `json:"name"`
}

// readDisk converts a stopped guest's qcow2 disk to raw, reads its
// partition table with sfdisk and extracts both partitions.
func readDisk(t *testing.T, qcow2 string) installedDisk {
	t.Helper()
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", qcow2, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v\n%s", qcow2, err, out)
	}
	out, err := exec.Command("sfdisk", "--json", raw).Output()
	if err != nil {
		t.Fatalf("sfdisk --json %s (no partition table written?): %v", raw, err)
	}
	var pt struct {
		PartitionTable struct {
			Label      string      `json:"label"`
			SectorSize int64       `json:"sectorsize"`
			Partitions []partition `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil {
		t.Fatalf("sfdisk --json: %v\n%s", err, out)
	}
	d := installedDisk{Label: pt.PartitionTable.Label, Partitions: pt.PartitionTable.Partitions}
	ss := pt.PartitionTable.SectorSize
	if ss == 0 {
		ss = 512
	}
	for i, p := range d.Partitions {
		img := filepath.Join(dir, fmt.Sprintf("part%d.img", i+1))
		extract(t, raw, img, p.Start*ss, p.Size*ss)
		switch p.Type {
		case "C12A7328-F81F-11D2-BA4B-00A0C93EC93B":
			d.ESPImage = img
		case "0FC63DAF-8483-4772-8E79-3D69D8477DE4":
			d.RootImage = img
		}
	}
	return d
}

// extract copies one partition out of a raw image, leaving holes where
// the source is zero so that a mostly empty 2G disk stays cheap.
func extract(t *testing.T, raw, dst string, off, size int64) {
	t.Helper()
	in, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, 1<<20)
	zero := make([]byte, len(buf))
	for pos := int64(0); pos < size; {
		n, err := in.ReadAt(buf[:min(int64(len(buf)), size-pos)], off+pos)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := out.WriteAt(buf[:n], pos); werr != nil {
				t.Fatalf("writing %s: %v", dst, werr)
			}
		}
		pos += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the partition at %d from %s: %v", off, raw, err)
		}
	}
	if err := out.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// debugfs runs one debugfs request against an ext4 image.
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v\n%s", request, img, err, out)
	}
	return string(out)
}

var ownerRE = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
var modeRE = regexp.MustCompile(`Mode:\s+0?(\d+)`)

// statOwner returns uid, gid and permission bits of path in an ext4
// image, or ok=false when it does not exist.
func statOwner(t *testing.T, img, path string) (uid, gid int, mode string, ok bool) {
	t.Helper()
	out := debugfs(t, img, "stat "+path)
	m := ownerRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, "", false
	}
	uid, _ = strconv.Atoi(m[1])
	gid, _ = strconv.Atoi(m[2])
	if mm := modeRE.FindStringSubmatch(out); mm != nil {
		mode = mm[1]
	}
	return uid, gid, mode, true
}

// checkInstalledDisk asserts what a successful install leaves on disk:
// GPT with an ESP holding a clean FAT and a Linux root whose ext4 has the
// nixos-install marker naming system, and extra files with their owners.
func checkInstalledDisk(t *testing.T, qcow2, system string, files []extraFile) {
	t.Helper()
	d := readDisk(t, qcow2)
	if d.Label != "gpt" || len(d.Partitions) != 2 || d.ESPImage == "" || d.RootImage == "" {
		t.Fatalf("partition table: got label %q, partitions %+v; want GPT with one ESP and one Linux root", d.Label, d.Partitions)
	}
	if out, err := exec.Command("fsck.fat", "-n", d.ESPImage).CombinedOutput(); err != nil {
		t.Errorf("ESP is not a clean FAT file system: %v\n%s", err, out)
	}
	if out, err := exec.Command("e2fsck", "-n", "-f", d.RootImage).CombinedOutput(); err != nil {
		t.Errorf("root is not a clean ext4 file system: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(debugfs(t, d.RootImage, "cat /etc/pxe-anywhere-installed")); !strings.HasSuffix(got, system) {
		t.Errorf("/etc/pxe-anywhere-installed on the root file system: got %q, want %q", got, system)
	}
	if !strings.Contains(debugfs(t, d.RootImage, "ls -l "+system), "init") {
		t.Errorf("system %s was not copied to the installed disk's store", system)
	}
	for _, f := range files {
		uid, gid, mode, ok := statOwner(t, d.RootImage, f.Path)
		if !ok {
			t.Errorf("extra file %s missing on the installed disk", f.Path)
			continue
		}
		if uid != f.UID || gid != f.GID {
			t.Errorf("extra file %s: owner %d:%d, want %d:%d", f.Path, uid, gid, f.UID, f.GID)
		}
		if f.Content != "" {
			if got := debugfs(t, d.RootImage, "cat "+f.Path); !strings.Contains(got, f.Content) {
				t.Errorf("extra file %s: content %q, want %q", f.Path, got, f.Content)
			}
		}
		_ = mode
	}
}

type extraFile struct {
	Path     string
	UID, GID int
	Content  string
}

// lineScanner returns the lines of a file, for logs written by servers.
func fileLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	return lines
}
