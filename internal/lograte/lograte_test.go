package lograte

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var buf bytes.Buffer
	l := &Limiter{Log: slog.New(slog.NewTextHandler(&buf, nil)), Every: time.Hour}
	for i := 0; i < 5; i++ {
		l.Warn("a", "flood", "i", i)
	}
	l.Warn("b", "other")
	if got := strings.Count(buf.String(), "flood"); got != 1 {
		t.Fatalf("%d lines for key a, want 1:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "other") {
		t.Fatalf("key b not logged:\n%s", buf.String())
	}
	// Past the interval the next line says how many were left out.
	l.keys["a"].last = time.Now().Add(-2 * time.Hour)
	l.Warn("a", "flood", "i", 5)
	if !strings.Contains(buf.String(), "suppressed=4") {
		t.Fatalf("no count of the suppressed lines:\n%s", buf.String())
	}
}
