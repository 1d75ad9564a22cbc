package macaddr

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"colons", "52:54:00:00:00:01", "52:54:00:00:00:01"},
		{"dashes upper case", "52-54-00-AB-00-01", "52:54:00:ab:00:01"},
		{"dotted form is not a URL's", "5254.0000.0001", "52:54:00:00:00:01"},
		{"too long", "52:54:00:00:00:01:02:03", ""},
		{"not a MAC", "web-01", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mac, err := Parse(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %s, want an error", tt.in, mac)
				}
				return
			}
			if err != nil || mac.String() != tt.want {
				t.Fatalf("Parse(%q) = %s, %v; want %s", tt.in, mac, err, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"52:54:00:00:00:01", "52-54-00-00-00-01", "5254.0000.0001", "", "zz", "52:54:00:00:00:01:02:03"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mac, err := Parse(s)
		if err == nil && len(mac) != 6 {
			t.Fatalf("%q parsed to %d bytes", s, len(mac))
		}
	})
}
