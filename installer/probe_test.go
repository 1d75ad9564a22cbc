package installer

import "testing"

func TestParseFacts(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		installer bool
		root      bool
	}{
		{name: "installer by VARIANT_ID", in: "uid=0\nid=nixos\nvariant_id=installer\n", installer: true, root: true},
		{name: "installer by VARIANT", in: "uid=0\nid=nixos\nvariant=installer\n", installer: true, root: true},
		{name: "plain nixos", in: "uid=1000\nid=nixos\n"},
		{name: "debian", in: "uid=0\nid=debian\nvariant_id=installer\n", root: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := parseFacts([]byte(tc.in))
			if f.IsInstaller != tc.installer || f.IsRoot != tc.root {
				t.Errorf("got %+v", f)
			}
		})
	}
}

func FuzzParseFacts(f *testing.F) {
	f.Add([]byte("uid=0\nid=nixos\nvariant_id=installer\nmemkb=123\nhas=curl\n"))
	f.Add([]byte("memkb=-1\n=\n\x00"))
	f.Fuzz(func(t *testing.T, b []byte) { _ = parseFacts(b) })
}
