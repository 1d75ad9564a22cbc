package profiles

import (
	"os"
	"strings"
	"testing"
)

// TestDocumentedExampleParses keeps docs/config.md honest: its example
// must be a valid config.
func TestDocumentedExampleParses(t *testing.T) {
	doc, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/config.md has no yaml example")
	}
	cfg, err := Parse("docs/config.md", []byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Images) != 3 || cfg.Profile("web") == nil || len(cfg.Machines) != 1 {
		t.Fatalf("example parsed to %d images, %d machines", len(cfg.Images), len(cfg.Machines))
	}
}
