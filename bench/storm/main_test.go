package main

import (
	"strings"
	"testing"
)

const installScript = `#!ipxe
kernel http://10.77.0.1:8080/images/bench/kernel?token=abc initrd=initrd0 initrd=extra pxe_anywhere.token=abc pxe_anywhere.callback=http://10.77.0.1:8080/api/v1/callback
initrd --name initrd0 http://10.77.0.1:8080/images/bench/initrd/0?token=abc
initrd --name extra http://10.77.0.1:8080/boot/abc/extra.cpio.gz
boot
`

func TestParseScript(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
		ranged  int
		whole   int
	}{
		{name: "install", in: installScript, ranged: 2, whole: 1},
		{name: "local boot", in: "#!ipxe\nexit\n", wantErr: true},
		{name: "kernel without token", in: "kernel http://x/k\n", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseScript([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if len(s.ranged) != tc.ranged || len(s.whole) != tc.whole {
				t.Fatalf("ranged %q whole %q, want %d and %d", s.ranged, s.whole, tc.ranged, tc.whole)
			}
			if s.token != "abc" || !strings.HasSuffix(s.callback, "/api/v1/callback") {
				t.Fatalf("token %q callback %q", s.token, s.callback)
			}
		})
	}
}

func FuzzParseScript(f *testing.F) {
	f.Add([]byte(installScript))
	f.Add([]byte("#!ipxe\nexit\n"))
	f.Add([]byte("initrd\nkernel a pxe_anywhere.token= pxe_anywhere.callback=\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseScript(b)
		if err == nil && (len(s.ranged) == 0 || s.token == "" || s.callback == "") {
			t.Fatalf("accepted a script without kernel, token or callback: %+v", s)
		}
	})
}

func TestMAC(t *testing.T) {
	tests := []struct {
		name string
		i    int
		want string
	}{
		{name: "first", i: 1, want: "52:54:01:00:00:01"},
		{name: "past a byte", i: 500, want: "52:54:01:00:01:f4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MAC("52:54:01", tc.i)
			if err != nil || got.String() != tc.want {
				t.Fatalf("MAC(%d) = %v, %v; want %s", tc.i, got, err, tc.want)
			}
		})
	}
}
