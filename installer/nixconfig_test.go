package installer

import (
	"slices"
	"testing"
)

func TestParseNixConfig(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		system string
		extra  []string
	}{
		{name: "nix config show", in: "sandbox = true\nsystem = x86_64-linux\nsystem-features = benchmark big-parallel kvm nixos-test\nextra-platforms = i686-linux x86_64-v1-linux\n",
			system: "x86_64-linux", extra: []string{"i686-linux", "x86_64-v1-linux"}},
		{name: "no extra platforms", in: "extra-platforms = \nsystem = aarch64-linux\n", system: "aarch64-linux"},
		{name: "no system", in: "warning: something\nsubstituters = https://cache.nixos.org/\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			system, extra := parseNixConfig([]byte(tc.in))
			if system != tc.system || !slices.Equal(extra, tc.extra) {
				t.Errorf("got %q %q, want %q %q", system, extra, tc.system, tc.extra)
			}
		})
	}
}

func FuzzParseNixConfig(f *testing.F) {
	f.Add([]byte("system = x86_64-linux\nextra-platforms = i686-linux\n"))
	f.Add([]byte("= =\n\x00system"))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = parseNixConfig(b) })
}
