package installer

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseHardwareBounds(t *testing.T) {
	var b strings.Builder
	b.WriteString("vendor\tA\x01cme\x7f\n")
	b.WriteString("product\t" + strings.Repeat("é", 300) + "\n")
	b.WriteString("mem_kb\t-5\n")
	b.WriteString("firmware\tcoreboot\n")
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "disk\tsd%d\t%d\t1\tM\tS\n", i, 2048)
		fmt.Fprintf(&b, "nic\teth%d\t52:54:00:00:00:%02x\te1000\tup\t-1\n", i, i)
	}
	b.WriteString("unknown\tline\n")
	hw, err := parseHardware([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if hw.Vendor != "Acme" || len(hw.Product) > maxFactValue || !strings.HasPrefix(hw.Product, "é") || strings.ContainsRune(hw.Product, 0xfffd) {
		t.Errorf("values not cleaned: %q, %d bytes", hw.Vendor, len(hw.Product))
	}
	if hw.MemoryBytes != 0 || hw.Firmware != "" {
		t.Errorf("bad values kept: %+v", hw)
	}
	if len(hw.Disks) != maxDevices || len(hw.NICs) != maxDevices {
		t.Errorf("%d disks, %d NICs kept, want at most %d", len(hw.Disks), len(hw.NICs), maxDevices)
	}
	if d := hw.Disks[0]; d.Bytes != 2048*512 || !d.Rotational || d.Model != "M" || d.Serial != "S" {
		t.Errorf("disk %+v", d)
	}
	if n := hw.NICs[0]; n.Speed != 0 || n.Driver != "e1000" || n.Link != "up" {
		t.Errorf("nic %+v", n)
	}
	if _, err := parseHardware([]byte("hello\n")); err == nil {
		t.Error("output without a DMI section accepted")
	}
	if _, err := parseHardware([]byte("vendor\t" + strings.Repeat("x", 5000) + "\n")); err == nil {
		t.Error("a line longer than the scanner's buffer accepted")
	}
}

func FuzzParseHardware(f *testing.F) {
	f.Add([]byte("vendor\tQEMU\nproduct\tStandard PC\ndisk\tvda\t16777216\t0\t\t\nnic\teth0\t52:54:00:00:00:01\te1000\tup\t1000\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		hw, err := parseHardware(b)
		if err != nil {
			return
		}
		if len(hw.Disks) > maxDevices || len(hw.NICs) > maxDevices || len(hw.Vendor) > maxFactValue || len(hw.Serial) > maxFactValue {
			t.Fatalf("bounds broken: %+v", hw)
		}
	})
}
