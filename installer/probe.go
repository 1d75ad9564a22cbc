package installer

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Facts is what the probe learned about the target.
type Facts struct {
	OS          string // uname -s
	Arch        string // uname -m
	ID          string // os-release ID
	IsRoot      bool
	Sudo        string // "", "sudo" or "doas": prefix that makes a command run as root
	SudoAsks    bool   // sudo wants a password (sudo -n fails)
	IsNixOS     bool
	IsInstaller bool
	InContainer bool
	Has         map[string]bool // commands found on PATH
	MemKB       int64
}

// probeCommands are looked up on the target's PATH.
var probeCommands = []string{"sudo", "doas", "curl", "wget", "tar", "gzip", "setsid", "nohup",
	"kexec", "zpool", "nixos-install", "nix-store", "nixos-facter", "nixos-generate-config", "umount", "reboot", "poweroff"}

// probeScript prints key=value lines; it sources os-release in a
// subshell so that nothing in it can change what the rest prints.
var probeScript = `echo "os=$(uname -s)"; echo "arch=$(uname -m)"; echo "uid=$(id -u)"
(. /etc/os-release 2>/dev/null; echo "id=$ID"; echo "variant_id=$VARIANT_ID"; echo "variant=$VARIANT")
for c in ` + strings.Join(probeCommands, " ") + `; do command -v "$c" >/dev/null 2>&1 && echo "has=$c"; done
sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/memkb=\1/p' /proc/meminfo 2>/dev/null
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && ! sudo -n true >/dev/null 2>&1; then echo sudo_asks=1; fi
if [ -f /.dockerenv ] || [ -f /run/.containerenv ] || grep -qa 'container=' /proc/1/environ 2>/dev/null; then echo container=1; fi
true`

// Probe runs one script on the target and parses what it prints.
func Probe(ctx context.Context, c *Conn) (Facts, error) {
	out, err := c.output(ctx, probeScript, "probe script", nil)
	if err != nil {
		return Facts{}, fmt.Errorf("probing the target: %w", err)
	}
	f := parseFacts(out)
	if !f.IsRoot {
		switch {
		case f.Has["sudo"]:
			f.Sudo = "sudo"
			if f.SudoAsks && c.sudoPassword != "" {
				// -S: the password comes first on stdin (see run).
				f.Sudo = sudoWithPassword
			}
		case f.Has["doas"]:
			f.Sudo = "doas"
			f.SudoAsks = false
		default:
			return f, fmt.Errorf("probing %s: logged in as a user that is not root and neither sudo nor doas exists: log in as root", c.addr)
		}
	}
	c.sudo = f.Sudo
	return f, nil
}

// parseFacts reads the probe output; unknown or malformed lines are
// ignored because the target's shell or os-release may print anything.
func parseFacts(out []byte) Facts {
	f := Facts{Has: map[string]bool{}}
	var variantID, variant string
	for _, l := range lines(out) {
		k, v, ok := strings.Cut(strings.TrimSpace(l), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "os":
			f.OS = v
		case "arch":
			f.Arch = v
		case "uid":
			f.IsRoot = v == "0"
		case "id":
			f.ID = v
		case "variant_id":
			variantID = v
		case "variant":
			variant = v
		case "has":
			f.Has[v] = true
		case "memkb":
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				f.MemKB = n
			}
		case "container":
			f.InContainer = v == "1"
		case "sudo_asks":
			f.SudoAsks = v == "1"
		}
	}
	f.IsNixOS = f.ID == "nixos"
	f.IsInstaller = f.IsNixOS && (variantID == "installer" || variant == "installer")
	return f
}
