package profiles

import (
	"fmt"
	"strings"
	"testing"
)

// discoverBase is base with discovery on, 11 lines.
const discoverBase = base + `server:
  unknown_machines: discover
  discover_image: nixos
rules:
`

func TestRulesParse(t *testing.T) {
	c, err := Parse("pxe.yaml", []byte(discoverBase+`  - name: lab
    match: {product: "Standard PC*", serial: "LAB-*", memory: ">= 512MiB"}
    profile: web
    hostname: "node-{serial}"
  - match: {circuit_id: "Eth1/0/*"}
    profile: web
dhcp:
  relays: [10.9.0.1, 10.90.0.0/24]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Rules) != 2 || c.Rules[0].Name != "lab" || !c.Rules[0].NeedsFacts() || c.Rules[1].NeedsFacts() || c.Rules[1].Profile != "web" {
		t.Fatalf("rules decoded wrong: %+v", c.Rules)
	}
	if fmt.Sprint(c.DHCP.Relays) != "[10.9.0.1/32 10.90.0.0/24]" {
		t.Fatalf("dhcp.relays decoded as %v", c.DHCP.Relays)
	}
}

func TestRulesErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "unknown matcher, bad glob, unknown template field, unknown profile",
			in: discoverBase + `  - name: a
    match:
      prodcut: "x"
      serial: "R[67]"
    profile: wbe
    hostname: "n-{serail}"
`,
			want: []string{
				`pxe.yaml:14: rules[0].match.prodcut: unknown matcher "prodcut"`,
				`pxe.yaml:15: rules[0].match.serial: "R[67]": character classes ([...]) are not supported; use * and ?`,
				`pxe.yaml:16: rules[0].profile: unknown profile "wbe" (did you mean "web"?)`,
				`pxe.yaml:17: rules[0].hostname: template field {serail} is unknown`,
			},
		},
		{
			name: "missing match and profile, duplicate name",
			in:   discoverBase + "  - name: a\n    match: {mac_prefix: \"52:54\"}\n    profile: web\n  - name: a\n",
			want: []string{
				`pxe.yaml:15: rules[1].name: duplicate rule name "a" (first at line 12)`,
				`pxe.yaml:15: rules[1]: missing profile`,
				`pxe.yaml:15: rules[1]: missing match`,
			},
		},
		{
			name: "facts without discovery",
			in:   base + "rules:\n  - match: {serial: \"X*\"}\n    profile: web\n",
			want: []string{`pxe.yaml:9: rules[0]: the rule needs hardware facts, which only discovery collects`},
		},
		{
			name: "option 82 without relays",
			in:   discoverBase + "  - match: {circuit_id: \"Eth1/*\", remote_id: \"tor-3\"}\n    profile: web\n    hostname: \"r3-{circuit_id}\"\n",
			want: []string{
				`pxe.yaml:12: rules[0].match.circuit_id: circuit_id comes from a relay's option 82, and dhcp.relays lists no relay (list the relay agents that add option 82 under dhcp.relays; requests relayed from anywhere else are dropped)`,
				`pxe.yaml:12: rules[0].match.remote_id: remote_id comes from a relay's option 82, and dhcp.relays lists no relay (list the relay agents that add option 82 under dhcp.relays; requests relayed from anywhere else are dropped)`,
				`pxe.yaml:14: rules[0].hostname: {circuit_id} comes from a relay's option 82, and dhcp.relays lists no relay (list the relay agents that add option 82 under dhcp.relays; requests relayed from anywhere else are dropped)`,
			},
		},
		{
			name: "bad size",
			in:   discoverBase + "  - match: {memory: \"lots\"}\n    profile: web\n",
			want: []string{`pxe.yaml:12: rules[0].match.memory: "lots" is not a comparison`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("pxe.yaml", []byte(tt.in))
			if err == nil {
				t.Fatal("parsed")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("error %d:\n got %s\nwant %s...", i, lines[i], w)
				}
			}
		})
	}
}
