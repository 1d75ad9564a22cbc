package tftp

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestStageFollowsDistributionSymlinks mirrors Debian's layout, where
// /usr/lib/ipxe/ipxe.efi links to /boot/ipxe.efi: the staged copy is
// served, while a request-time symlink out of the root stays refused.
func TestStageFollowsDistributionSymlinks(t *testing.T) {
	outside := t.TempDir()
	src := t.TempDir()
	dst := filepath.Join(t.TempDir(), "tftp")
	os.WriteFile(filepath.Join(outside, "ipxe.efi"), []byte("MZ efi"), 0o644)
	os.Symlink(filepath.Join(outside, "ipxe.efi"), filepath.Join(src, "ipxe.efi"))
	os.WriteFile(filepath.Join(src, "undionly.kpxe"), []byte("kpxe"), 0o644)
	if _, err := Resolve(src, "ipxe.efi"); err == nil {
		t.Fatal("Resolve followed a symlink out of the root")
	}
	got, err := Stage(src, dst, []string{"undionly.kpxe", "ipxe.efi", "snponly.efi"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"undionly.kpxe", "ipxe.efi"}) {
		t.Fatalf("staged %v", got)
	}
	p, err := Resolve(dst, "ipxe.efi")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, []byte("MZ efi")) {
		t.Fatalf("staged content %q", b)
	}
	for _, bad := range []string{"../x", "/etc/passwd", ""} {
		if _, err := Stage(src, dst, []string{bad}); err == nil {
			t.Fatalf("Stage accepted %q", bad)
		}
	}
	if _, err := Stage(src, dst, []string{"nope.efi"}); err == nil {
		t.Fatal("Stage with nothing to copy succeeded")
	}
}
