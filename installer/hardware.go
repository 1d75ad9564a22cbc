package installer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/rules"
	"golang.org/x/crypto/ssh"
)

// Hardware is what CollectHardware read on a machine: the facts that
// rules match on (their JSON names are the fact names), and the
// nixos-facter report, kept apart.
type Hardware struct {
	rules.Facts
	// Facter is the nixos-facter report (JSON), when the image has the
	// tool and its report fits the limit; nil otherwise.
	Facter json.RawMessage `json:"-"`
}

// Limits of what a target's report may make the server keep: the
// machine is not trusted.
const (
	maxHardwareOutput = 64 << 10 // the script's output
	maxFactValue      = 256      // one value
	maxDevices        = 64       // disks, and NICs
)

// hardwareScript reads facts from /sys and /proc only, with POSIX sh
// and tools that every NixOS installer (and busybox) has: a minimal
// image needs nothing else. Values are cut and their newlines dropped
// on the target already; the parser bounds them again.
const hardwareScript = `export LC_ALL=C
v() { [ -r "$1" ] && head -c 256 "$1" 2>/dev/null | tr -d '\n\t\r'; }
d=/sys/class/dmi/id
printf 'vendor\t%s\nproduct\t%s\nserial\t%s\nuuid\t%s\nboard_serial\t%s\n' "$(v $d/sys_vendor)" "$(v $d/product_name)" "$(v $d/product_serial)" "$(v $d/product_uuid)" "$(v $d/board_serial)"
printf 'cpu_model\t%s\n' "$(grep -m1 -E '^(model name|Model|cpu model)' /proc/cpuinfo | cut -d: -f2- | head -c 256)"
printf 'cpu_count\t%s\n' "$(grep -c '^processor' /proc/cpuinfo)"
printf 'mem_kb\t%s\n' "$(grep -m1 '^MemTotal:' /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
if [ -d /sys/firmware/efi ]; then echo 'firmware	uefi'; else echo 'firmware	bios'; fi
printf 'arch\t%s\n' "$(uname -m)"
n=0
for b in /sys/block/*; do
	[ -e "$b" ] || continue
	name=${b##*/}
	case $name in loop*|ram*|zram*|sr*|fd*|dm-*|md*|nbd*) continue ;; esac
	n=$((n + 1)); [ $n -gt 64 ] && break
	s=$(v "$b/device/serial"); [ -n "$s" ] || s=$(v "$b/serial")
	printf 'disk\t%s\t%s\t%s\t%s\t%s\n' "$name" "$(v $b/size)" "$(v $b/queue/rotational)" "$(v $b/device/model)" "$s"
done
n=0
for i in /sys/class/net/*; do
	[ -e "$i/address" ] || continue
	name=${i##*/}
	[ "$name" = lo ] && continue
	n=$((n + 1)); [ $n -gt 64 ] && break
	drv=; [ -e "$i/device/driver" ] && drv=$(readlink "$i/device/driver")
	printf 'nic\t%s\t%s\t%s\t%s\t%s\n' "$name" "$(v $i/address)" "${drv##*/}" "$(v $i/operstate)" "$(v $i/speed 2>/dev/null)"
done
if command -v ipmitool >/dev/null 2>&1; then
	a=$(timeout 15 ipmitool lan print 2>/dev/null </dev/null | head -c 16384 | grep -m1 -E '^IP Address +:' | cut -d: -f2- | head -c 64 | tr -d ' \t\r')
	printf 'bmc_address\t%s\n' "$a"
fi
`

// facterCommand prints nixos-facter's report, or exits 3 when the image
// has no nixos-facter.
const facterCommand = `command -v nixos-facter >/dev/null 2>&1 || exit 3; nixos-facter`

// HardwareOptions are what CollectHardware needs.
type HardwareOptions struct {
	Target  Target
	Signers []ssh.Signer
	// HostKey is the only host key accepted: the one injected into the
	// machine's boot.
	HostKey ssh.PublicKey
	// MaxFacterBytes bounds the nixos-facter report; a larger one is
	// dropped. Zero means 1 MiB.
	MaxFacterBytes int64
	// Timeout bounds the whole collection; zero means a minute.
	Timeout time.Duration
}

// CollectHardware logs in to a booted installer, accepting only the
// pinned host key, and reads its hardware facts.
func CollectHardware(ctx context.Context, o HardwareOptions) (Hardware, error) {
	if o.HostKey == nil {
		return Hardware{}, errors.New("collecting facts: no host key to accept")
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	if o.MaxFacterBytes <= 0 {
		o.MaxFacterBytes = 1 << 20
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	r := &run{opts: Options{Target: o.Target, Signers: o.Signers, HostKey: o.HostKey, MaxOutputBytes: maxHardwareOutput, MaxLineBytes: 4096}, sink: discard{}}
	r.opts.defaults()
	defer r.close()
	if err := r.connect(ctx, r.opts.Target.Port); err != nil {
		return Hardware{}, err
	}
	out, err := r.conn.output(ctx, hardwareScript, "read hardware facts", nil)
	if err != nil {
		return Hardware{}, fmt.Errorf("reading hardware facts on %s: %w", r.conn.addr, err)
	}
	hw, err := parseHardware(out)
	if err != nil {
		return Hardware{}, fmt.Errorf("hardware facts of %s: %w", r.conn.addr, err)
	}
	r.conn.maxOutput = o.MaxFacterBytes
	if rep, err := r.conn.output(ctx, facterCommand, "nixos-facter", nil); err == nil && json.Valid(rep) {
		hw.Facter = json.RawMessage(bytes.TrimSpace(rep))
	}
	return hw, nil
}

// discard is the sink of a facts run: its stderr is not worth keeping.
type discard struct{}

func (discard) PhaseStarted(string, int, int)          {}
func (discard) PhaseDone(string, time.Duration, error) {}
func (discard) Line(string, string, string)            {}
func (discard) Progress(string, int64, int64)          {}

// parseHardware reads hardwareScript's output: tab-separated lines,
// every value cut to maxFactValue, at most maxDevices disks and NICs.
// Lines it does not know are skipped (a newer script, or noise).
func parseHardware(out []byte) (Hardware, error) {
	var hw Hardware
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 4096), 4096)
	seen := false
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		for i := range f {
			f[i] = clean(f[i])
		}
		val := func(i int) string {
			if i < len(f) {
				return f[i]
			}
			return ""
		}
		switch f[0] {
		case "vendor":
			hw.Vendor, seen = val(1), true
		case "product":
			hw.Product = val(1)
		case "serial":
			hw.Serial = val(1)
		case "uuid":
			hw.UUID = val(1)
		case "board_serial":
			hw.BoardSerial = val(1)
		case "cpu_model":
			hw.CPUModel = val(1)
		case "cpu_count":
			hw.CPUCount, _ = strconv.Atoi(val(1))
		case "mem_kb":
			if kb, err := strconv.ParseInt(val(1), 10, 64); err == nil && kb >= 0 && kb < 1<<50 {
				hw.MemoryBytes = kb << 10
			}
		case "firmware":
			if v := val(1); v == "uefi" || v == "bios" {
				hw.Firmware = v
			}
		case "arch":
			hw.Arch = val(1)
		case "bmc_address":
			// An IPv4 address a BMC can be reached at; 0.0.0.0 is a
			// BMC without one.
			if ip := net.ParseIP(val(1)).To4(); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() && !ip.IsMulticast() {
				hw.BMCAddress = ip.String()
			}
		case "disk":
			if len(hw.Disks) >= maxDevices {
				continue
			}
			// size counts 512-byte sectors, whatever the disk's own.
			sectors, _ := strconv.ParseInt(val(2), 10, 64)
			if sectors < 0 || sectors > 1<<53 {
				sectors = 0
			}
			hw.Disks = append(hw.Disks, rules.Disk{Name: val(1), Bytes: sectors * 512, Rotational: val(3) == "1", Model: val(4), Serial: val(5)})
		case "nic":
			if len(hw.NICs) >= maxDevices {
				continue
			}
			speed, _ := strconv.Atoi(val(5))
			if speed < 0 {
				speed = 0 // a link that is down reports -1
			}
			hw.NICs = append(hw.NICs, rules.NIC{Name: val(1), MAC: val(2), Driver: val(3), Link: val(4), Speed: speed})
		}
	}
	if err := sc.Err(); err != nil {
		return hw, fmt.Errorf("report: %w", err)
	}
	if !seen {
		return hw, errors.New("report has no DMI section: not the output of the facts script")
	}
	return hw, nil
}

// clean trims a value, drops control characters and cuts it to
// maxFactValue bytes on a character boundary.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > maxFactValue {
		s = strings.ToValidUTF8(s[:maxFactValue], "")
	}
	return strings.TrimSpace(s)
}
