package profiles

import (
	"errors"
	"strings"
	"testing"
)

// ruleBMCConfig is base with a profile bmc: line (line 8, "" for none),
// discovery on, and rules: at line 12, its first entry at 13.
func ruleBMCConfig(profileBMC, rulesText string) string {
	if profileBMC == "" {
		profileBMC = "    description: no bmc\n"
	}
	return base + profileBMC + "server:\n  unknown_machines: discover\n  discover_image: nixos\nrules:\n" + rulesText
}

func TestRuleBMC(t *testing.T) {
	c, err := Parse("pxe.yaml", []byte(ruleBMCConfig("    bmc: {type: ipmi, user: admin, address: 10.9.9.9}\n",
		`  - name: rack3
    match: {serial: "R3-*"}
    profile: web
    bmc: {address: facts, user: rack3}
  - match: {serial: "*"}
    profile: web
`)))
	if err != nil {
		t.Fatal(err)
	}
	rb := c.RuleBMC(c.Rules[0])
	if rb == nil || rb.Address != BMCAddressFacts || rb.User != "rack3" || rb.Type != "" || rb.Where != "rules[0].bmc" {
		t.Fatalf("rules[0] bmc = %+v", rb)
	}
	if c.RuleBMC(c.Rules[1]) != nil {
		t.Fatalf("rules[1] has no bmc: block, got %+v", c.RuleBMC(c.Rules[1]))
	}
	// Over the profile's: the rule's fields win, the type comes from
	// the profile.
	m := c.Profile("web").BMC.Merge(rb)
	if m.Type != BMCIPMI || m.Address != BMCAddressFacts || m.User != "rack3" {
		t.Fatalf("merged %+v", m)
	}
}

func TestRuleBMCErrors(t *testing.T) {
	for _, tc := range []struct {
		name, prof, rule, want string
	}{
		{"missing type", "", "    bmc: {address: facts}\n",
			"pxe.yaml:16: rules[0]: bmc: missing type"},
		{"missing address", "", "    bmc: {type: ipmi}\n",
			"pxe.yaml:16: rules[0]: bmc: missing address"},
		{"type from the profile, address from facts", "    bmc: {type: ipmi}\n", "    bmc: {address: facts}\n", ""},
		{"address from the profile", "    bmc: {type: redfish, address: \"https://10.0.0.5\"}\n", "    bmc: {user: root}\n", ""},
		{"ipmi with a URL", "", "    bmc: {type: ipmi, address: \"https://10.0.0.5\"}\n",
			`pxe.yaml:16: rules[0]: bmc: address "https://10.0.0.5" is a URL`},
		{"bad type", "", "    bmc: {type: ipmy, address: facts}\n",
			`pxe.yaml:16: rules[0].bmc.type: bad value "ipmy"`},
		{"unknown field", "", "    bmc: {type: ipmi, adress: facts}\n",
			`pxe.yaml:16: rules[0].bmc: unknown field "adress"`},
		{"bad address", "", "    bmc: {type: redfish, address: \"ftp://x\"}\n",
			`pxe.yaml:16: rules[0].bmc.address: bad URL "ftp://x"`},
		{"not a mapping", "", "    bmc: facts\n",
			"pxe.yaml:16: rules[0].bmc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("pxe.yaml", []byte(ruleBMCConfig(tc.prof, "  - match: {serial: \"R3-*\"}\n    profile: web\n    hostname: \"r-{serial}\"\n"+tc.rule)))
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

// TestMachineBMCFactsAddress: a listed machine is never discovered, so
// address: facts cannot serve it, whether its own or its profile's.
func TestMachineBMCFactsAddress(t *testing.T) {
	for _, tc := range []struct{ prof, mach string }{
		{"", "    bmc: {type: ipmi, address: facts}\n"},
		{"    bmc: {type: ipmi, address: facts}\n", ""},
	} {
		in := base + tc.prof + "machines:\n  - mac: \"52:54:00:77:10:01\"\n    profile: web\n" + tc.mach
		_, err := Parse("pxe.yaml", []byte(in))
		if err == nil || !strings.Contains(err.Error(), "machines[0] (52:54:00:77:10:01): bmc: address: facts") {
			t.Errorf("Parse(%q) = %v, want the listed machine's address: facts refused", in, err)
		}
	}
}
