package power

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBoundedDoesNotWaitForALibraryThatHangs(t *testing.T) {
	// A library call that ignores its context: bounded returns anyway.
	hang := make(chan struct{})
	defer close(hang)
	start := time.Now()
	err := bounded(context.Background(), 100*time.Millisecond, func(context.Context) error { <-hang; return nil })
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("bounded = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("bounded returned after %s, bound 100ms", d)
	}
	// The caller's own cancel is not a timeout.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := bounded(ctx, time.Minute, func(context.Context) error { <-hang; return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("bounded after cancel = %v, want context.Canceled", err)
	}
}
