package ipxescript

import (
	"errors"
	"slices"
	"testing"
)

const install = `#!ipxe
# pxe-anywhere: install web-01 with image nixos
kernel http://10.77.0.1:8080/images/nixos/kernel?token=abc initrd=initrd0 initrd=extra pxe_anywhere.token=abc pxe_anywhere.callback=http://10.77.0.1:8080/api/v1/callback
initrd --name initrd0 http://10.77.0.1:8080/images/nixos/initrd/0?token=abc
initrd --name extra http://10.77.0.1:8080/boot/abc/extra.cpio.gz
boot
`

func TestParse(t *testing.T) {
	s, err := Parse([]byte(install))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"http://10.77.0.1:8080/images/nixos/kernel?token=abc", "http://10.77.0.1:8080/images/nixos/initrd/0?token=abc", "http://10.77.0.1:8080/boot/abc/extra.cpio.gz"}
	if !slices.Equal(s.URLs(), want) || s.Token != "abc" || s.Callback != "http://10.77.0.1:8080/api/v1/callback" || s.Extra() != want[2] {
		t.Fatalf("parsed %+v", s)
	}
	for _, in := range []string{"#!ipxe\nexit\n", "", "kernel http://x/k\n", "kernel http://x/k pxe_anywhere.token=a\n"} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrNotInstall) {
			t.Errorf("Parse(%q) = %v, want ErrNotInstall", in, err)
		}
	}
}
