package rules

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func compile(t *testing.T, specs ...Spec) []*Rule {
	t.Helper()
	var out []*Rule
	for _, s := range specs {
		r, err := Compile(s)
		if err != nil {
			t.Fatalf("compile %+v: %v", s, err)
		}
		out = append(out, r)
	}
	return out
}

var labFacts = &Facts{
	Vendor: "QEMU", Product: "Standard PC (i440FX + PIIX, 1996)", Serial: "LAB-0042", UUID: "1234",
	CPUModel: "QEMU Virtual CPU", CPUCount: 2, MemoryBytes: 1 << 30,
	Disks:    []Disk{{Name: "vda", Bytes: 8 << 30}, {Name: "vdb", Bytes: 2 << 40}},
	Firmware: "bios", Arch: "x86_64",
}

func TestEvaluate(t *testing.T) {
	relayed := DHCP{Interface: "br0", Relay: netip.MustParseAddr("10.9.0.1"), CircuitID: "Eth1/0/7", RemoteID: "tor-3", VendorClass: "PXEClient:Arch:00000"}
	direct := DHCP{Interface: "lab0", Addr: netip.MustParseAddr("192.168.7.20")}
	mac := mustMAC("52:54:00:77:20:01")
	tests := []struct {
		name      string
		specs     []Spec
		in        Input
		wantRule  int // -1: none
		hostname  string
		needFacts bool
		why       string // substring of Why
	}{
		{name: "product and serial glob, template from serial",
			specs:    []Spec{{Match: map[string]string{"product": "standard pc*", "serial": "LAB-*"}, Profile: "web", Hostname: "node-{serial}"}},
			in:       Input{MAC: mac, Facts: labFacts},
			wantRule: 0, hostname: "node-lab-0042"},
		{name: "serial does not match",
			specs:    []Spec{{Match: map[string]string{"serial": "PROD-*"}, Profile: "web"}},
			in:       Input{MAC: mac, Facts: labFacts},
			wantRule: -1, why: "no rule matched"},
		{name: "first match wins",
			specs: []Spec{
				{Match: map[string]string{"vendor": "qemu"}, Profile: "a"},
				{Match: map[string]string{"vendor": "QEMU"}, Profile: "b"},
			},
			in: Input{MAC: mac, Facts: labFacts}, wantRule: 0},
		{name: "circuit-id with slashes decides before discovery",
			specs:    []Spec{{Match: map[string]string{"circuit_id": "Eth1/0/*"}, Profile: "web", Hostname: "r3-{circuit_id}"}},
			in:       Input{MAC: mac, DHCP: relayed},
			wantRule: 0, hostname: "r3-eth1-0-7"},
		{name: "remote-id and subnet of the relay",
			specs:    []Spec{{Match: map[string]string{"remote_id": "tor-3", "subnet": "10.9.0.0/24"}, Profile: "web"}},
			in:       Input{MAC: mac, DHCP: relayed},
			wantRule: 0},
		{name: "subnet of a direct request is its address",
			specs:    []Spec{{Match: map[string]string{"subnet": "10.9.0.0/24"}, Profile: "a"}, {Match: map[string]string{"subnet": "192.168.7.0/24", "interface": "lab*"}, Profile: "b"}},
			in:       Input{MAC: mac, DHCP: direct},
			wantRule: 1},
		{name: "a rule needing facts stops evaluation before discovery",
			specs: []Spec{
				{Match: map[string]string{"product": "*"}, Profile: "a"},
				{Match: map[string]string{"mac_prefix": "52:54:00"}, Profile: "b"},
			},
			in: Input{MAC: mac}, wantRule: -1, needFacts: true},
		{name: "a template needing facts makes the rule need them",
			specs: []Spec{{Match: map[string]string{"mac_prefix": "52:54:00"}, Profile: "a", Hostname: "n-{serial}"}},
			in:    Input{MAC: mac}, wantRule: -1, needFacts: true},
		{name: "mac prefix before discovery, template from mac",
			specs:    []Spec{{Match: map[string]string{"mac_prefix": "52-54-00-77"}, Profile: "a", Hostname: "m{mac}"}},
			in:       Input{MAC: mac},
			wantRule: 0, hostname: "m525400772001"},
		{name: "mac prefix does not match",
			specs:    []Spec{{Match: map[string]string{"mac_prefix": "52:54:01"}, Profile: "a"}},
			in:       Input{MAC: mac},
			wantRule: -1},
		{name: "memory and disk sizes",
			specs: []Spec{
				{Match: map[string]string{"memory": ">= 2GiB"}, Profile: "big"},
				{Match: map[string]string{"memory": "< 2GiB", "disk_size": ">= 1TiB", "disk_count": "2", "cpu_count": ">1"}, Profile: "storage"},
			},
			in: Input{MAC: mac, Facts: labFacts}, wantRule: 1},
		{name: "arch and firmware",
			specs:    []Spec{{Match: map[string]string{"firmware": "uefi"}, Profile: "a"}, {Match: map[string]string{"firmware": "bios", "arch": "x86_64"}, Profile: "b"}},
			in:       Input{MAC: mac, Arch: "x86_64", Firmware: "bios"},
			wantRule: 1},
		{name: "empty template field skips the rule and says why",
			specs:    []Spec{{Match: map[string]string{"vendor": "QEMU"}, Profile: "a", Hostname: "n-{board_serial}"}},
			in:       Input{MAC: mac, Facts: labFacts},
			wantRule: -1, why: "{board_serial} is empty"},
		{name: "hostname is cut to one DNS label",
			specs: []Spec{{Match: map[string]string{"vendor": "QEMU"}, Profile: "a", Hostname: "{product}-{product}"}},
			in:    Input{MAC: mac, Facts: labFacts}, wantRule: 0,
			hostname: "standard-pc-i440fx-piix-1996-standard-pc-i440fx-piix-1996"},
		{name: "missing circuit id does not match a glob that needs text",
			specs: []Spec{{Match: map[string]string{"circuit_id": "?*"}, Profile: "a"}},
			in:    Input{MAC: mac, DHCP: direct}, wantRule: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Evaluate(compile(t, tt.specs...), tt.in)
			got := -1
			if d.Rule != nil {
				got = d.Index
			}
			if got != tt.wantRule {
				t.Fatalf("rule %d matched, want %d (%s)", got, tt.wantRule, d.Why)
			}
			if d.NeedFacts != tt.needFacts {
				t.Errorf("NeedFacts %v, want %v (%s)", d.NeedFacts, tt.needFacts, d.Why)
			}
			if tt.hostname != "" && d.Hostname != tt.hostname {
				t.Errorf("hostname %q, want %q", d.Hostname, tt.hostname)
			}
			if tt.why != "" && !strings.Contains(d.Why, tt.why) {
				t.Errorf("why %q does not say %q", d.Why, tt.why)
			}
			if d.Rule != nil && len(d.Hostname) > maxHostname {
				t.Errorf("hostname %q longer than %d", d.Hostname, maxHostname)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name  string
		spec  Spec
		field string
		says  string
	}{
		{"unknown matcher", Spec{Match: map[string]string{"prodcut": "x"}}, "match.prodcut", "unknown matcher"},
		{"no matchers", Spec{}, "match", "no matchers"},
		{"bad glob", Spec{Match: map[string]string{"product": "R[67]*"}}, "match.product", "character classes"},
		{"empty pattern", Spec{Match: map[string]string{"serial": " "}}, "match.serial", "empty"},
		{"bad size", Spec{Match: map[string]string{"memory": "lots"}}, "match.memory", "not a comparison"},
		{"bad unit", Spec{Match: map[string]string{"memory": ">= 4 GX"}}, "match.memory", "unknown unit"},
		{"unit on a count", Spec{Match: map[string]string{"cpu_count": ">= 4GB"}}, "match.cpu_count", "no unit"},
		{"bad subnet", Spec{Match: map[string]string{"subnet": "10.0.0.0/33"}}, "match.subnet", "not a subnet"},
		{"bad mac prefix", Spec{Match: map[string]string{"mac_prefix": "52:5"}}, "match.mac_prefix", "MAC prefix"},
		{"unknown template field", Spec{Match: map[string]string{"serial": "*"}, Hostname: "n-{serail}"}, "hostname", "{serail} is unknown"},
		{"unclosed template", Spec{Match: map[string]string{"serial": "*"}, Hostname: "n-{serial"}, "hostname", "unclosed"},
		{"bad literal", Spec{Match: map[string]string{"serial": "*"}, Hostname: "n.{serial}"}, "hostname", "not hostname text"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(tt.spec)
			if err == nil {
				t.Fatal("compiled")
			}
			var fe *FieldError
			if !asField(err, &fe) || fe.Field != tt.field {
				t.Fatalf("error %v is not about field %s", err, tt.field)
			}
			if !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("error %q does not say %q", err, tt.says)
			}
		})
	}
}

func asField(err error, fe **FieldError) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if f, ok := e.(*FieldError); ok {
				*fe = f
				return true
			}
		}
	}
	return false
}

// FuzzCompile: no pattern or template crashes Compile or Evaluate.
func FuzzCompile(f *testing.F) {
	f.Add("product", "Standard*", "n-{serial}")
	f.Add("memory", ">= 1.5GiB", "{mac}")
	f.Add("mac_prefix", "52:54", "{")
	f.Add("subnet", "10.0.0.0/8", "}")
	f.Fuzz(func(t *testing.T, field, pattern, tmpl string) {
		r, err := Compile(Spec{Match: map[string]string{field: pattern}, Hostname: tmpl})
		if err != nil {
			return
		}
		d := Evaluate([]*Rule{r}, Input{MAC: mustMAC("52:54:00:77:20:01"), Facts: labFacts})
		if len(d.Hostname) > maxHostname {
			t.Fatalf("hostname %q too long", d.Hostname)
		}
	})
}
