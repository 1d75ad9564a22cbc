package profiles

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBMCBlock(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "bmc.pw")
	if err := os.WriteFile(pw, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open.pw")
	if err := os.WriteFile(open, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	groupRead := filepath.Join(dir, "group.pw")
	if err := os.WriteFile(groupRead, []byte("x\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(groupRead, 0o640); err != nil {
		t.Fatal(err)
	}
	cfgWith := func(profileBMC, machineBMC string) string {
		s := "images:\n  nixos:\n    kexec_tarball: /srv/k.tar.gz\nprofiles:\n  web:\n    image: nixos\n    flake: \".#web\"\n"
		s += profileBMC
		s += "machines:\n  - mac: \"52:54:00:77:10:01\"\n    profile: web\n"
		return s + machineBMC
	}
	t.Run("profile and machine merge", func(t *testing.T) {
		c, err := Parse(filepath.Join(dir, "pxe.yaml"), []byte(cfgWith(
			"    bmc: {type: ipmi, user: admin, password_file: "+pw+", timeout: 30s}\n",
			"    bmc: {address: \"10.0.0.5:623\"}\n")))
		if err != nil {
			t.Fatal(err)
		}
		b := c.BMCOf(c.Machines[0].MAC)
		want := BMC{Type: BMCIPMI, Address: "10.0.0.5:623", User: "admin", PasswordFile: pw, Timeout: 30 * time.Second, Where: "machines[0].bmc"}
		if b == nil || *b != want {
			t.Fatalf("BMCOf = %+v, want %+v", b, want)
		}
	})
	t.Run("machine overrides profile", func(t *testing.T) {
		c, err := Parse(filepath.Join(dir, "pxe.yaml"), []byte(cfgWith(
			"    bmc: {type: ipmi, user: admin, password_file: "+pw+"}\n",
			"    bmc: {type: redfish, address: \"https://10.0.0.6\", user: root}\n")))
		if err != nil {
			t.Fatal(err)
		}
		if b := c.BMCOf(c.Machines[0].MAC); b.Type != BMCRedfish || b.User != "root" || b.PasswordFile != pw {
			t.Fatalf("BMCOf = %+v", b)
		}
	})
	for _, tc := range []struct {
		name, prof, mach, want string
	}{
		{"password file readable by others", "", "    bmc: {type: ipmi, address: 10.0.0.5, password_file: " + open + "}\n",
			"pxe.yaml:11: machines[0].bmc.password_file: " + open + " is readable by others (mode 644)"},
		{"password file readable by its group", "", "    bmc: {type: ipmi, address: 10.0.0.5, password_file: " + groupRead + "}\n",
			"machines[0].bmc.password_file: " + groupRead + " is readable by others (mode 640)"},
		// Reported when used (a secrets manager may write it later).
		{"password file missing", "", "    bmc: {type: ipmi, address: 10.0.0.5, password_file: /nonexistent/pw}\n", ""},
		{"address from the profile", "    bmc: {type: ipmi, address: 10.0.0.5}\n", "",
			""},
		{"missing address", "    bmc: {type: ipmi}\n", "",
			"pxe.yaml:8: machines[0] (52:54:00:77:10:01): bmc: missing address"},
		{"missing type", "", "    bmc: {address: 10.0.0.5}\n",
			"pxe.yaml:11: machines[0] (52:54:00:77:10:01): bmc: missing type"},
		{"bad type", "", "    bmc: {type: ipmy, address: 10.0.0.5}\n",
			`pxe.yaml:11: machines[0].bmc.type: bad value "ipmy" (did you mean "ipmi"?)`},
		{"ipmi with URL", "", "    bmc: {type: ipmi, address: \"https://10.0.0.5\"}\n",
			`machines[0] (52:54:00:77:10:01): bmc: address "https://10.0.0.5" is a URL`},
		{"unknown field", "", "    bmc: {type: ipmi, address: 10.0.0.5, pasword: x}\n",
			`machines[0].bmc: unknown field "pasword"`},
		{"bad timeout", "", "    bmc: {type: ipmi, address: 10.0.0.5, timeout: 1h}\n",
			`machines[0].bmc.timeout: bad duration "1h"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(filepath.Join(dir, "pxe.yaml"), []byte(cfgWith(tc.prof, tc.mach)))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			var ce *Error
			if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
