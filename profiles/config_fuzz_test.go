package profiles

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse: it must never panic, every
// error must name the file, and an accepted config must hold together.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("testdata/*")
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		base,
		base + "machines:\n  - {mac: \"52:54:00:12:34:01\", profile: web, ip: 10.77.0.5}\n",
		base + "    bmc: {type: ipmi, user: admin}\nmachines:\n  - {mac: \"52:54:00:12:34:01\", profile: web, netboot: http, bmc: {address: \"10.0.0.5:623\", timeout: 5s}}\n",
		base + "    bmc: {type: ipmi, user: admin}\nserver:\n  unknown_machines: discover\n  discover_image: nixos\nrules:\n  - {match: {serial: \"R3-*\"}, profile: web, bmc: {address: facts}}\n",
		"a: &x [*x]\n",
		"server: &s {max_installs: 2}\ndhcp: *s\n",
		"{\"images\": {\"a\": {\"kernel\": \"k\", \"initrd\": [\"i\"]}}}",
		"dhcp: {mode: authoritative, subnet: 10.0.0.0/8, range: [10.0.0.9, 10.0.0.1]}\n",
		"\xff\xfe",
		"---\n---\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("pxe.yaml", data)
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "pxe.yaml:") {
					// A multi-line message from the YAML parser is the
					// one exception; it is still one *Error.
					var e *Error
					if !errors.As(err, &e) {
						t.Fatalf("error line without file: %q", line)
					}
				}
			}
			return
		}
		for _, m := range c.Machines {
			if len(m.MAC) != 6 || c.Profile(m.Profile) == nil || c.MachineByMAC(m.MAC) == nil {
				t.Fatalf("accepted machine %+v that does not hold together", m)
			}
		}
		for name, p := range c.Profiles {
			if c.Images[p.Image] == nil || p.Name != name || (p.Flake == "") == (p.StorePaths == nil) {
				t.Fatalf("accepted profile %+v that does not hold together", p)
			}
		}
		for _, im := range c.Images {
			if k := im.Kind(); k == ImageFiles && im.Kernel == "" {
				t.Fatalf("accepted image %+v with no boot files", im)
			}
		}
	})
}
