// Package ipxescript reads an install script that the boot side wrote,
// as a booting machine's iPXE would: the kernel and initrd URLs in the
// order iPXE fetches them, the boot token and the callback URL. The
// simulated machines of the tests and benchmarks use it; the server
// itself never reads a script.
package ipxescript

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
)

// Script is what an install script tells a machine to fetch and where
// to call back.
type Script struct {
	Kernel   string
	Initrds  []string // the image's initrds, then the per-boot one
	Token    string
	Callback string
}

// ErrNotInstall is returned for a script that installs nothing (a local
// boot's exit, say).
var ErrNotInstall = errors.New("not an install script (no kernel, token or initrd)")

// Parse reads an install script.
func Parse(b []byte) (Script, error) {
	var s Script
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "kernel":
			s.Kernel = f[1]
			for _, a := range f[2:] {
				if v, ok := strings.CutPrefix(a, "pxe_anywhere.token="); ok {
					s.Token = v
				}
				if v, ok := strings.CutPrefix(a, "pxe_anywhere.callback="); ok {
					s.Callback = v
				}
			}
		case "initrd":
			s.Initrds = append(s.Initrds, f[len(f)-1])
		}
	}
	if s.Kernel == "" || s.Token == "" || len(s.Initrds) == 0 {
		return s, ErrNotInstall
	}
	return s, nil
}

// URLs are the kernel and the initrds, in the order iPXE fetches them.
func (s Script) URLs() []string { return append([]string{s.Kernel}, s.Initrds...) }

// Extra is the per-boot initrd's URL: the last one, the one with the
// boot's keys.
func (s Script) Extra() string { return s.Initrds[len(s.Initrds)-1] }
