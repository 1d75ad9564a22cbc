package pgtest

import (
	"context"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestOutlivesTheStartingThread: Start runs on a thread that is thrown
// away afterwards (a goroutine that ends locked, as netlab.Do's do);
// the server must outlive it.
func TestOutlivesTheStartingThread(t *testing.T) {
	bindir := Require(t)
	ctx := context.Background()
	var s *Server
	for s == nil {
		started := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			if syscall.Gettid() == os.Getpid() {
				started <- nil // the main thread is kept, not ended: try another
				return
			}
			var err error
			s, err = Start(ctx, bindir)
			started <- err
		}()
		if err := <-started; err != nil {
			t.Fatal(err)
		}
	}
	defer s.Stop()
	time.Sleep(300 * time.Millisecond) // a killed postmaster is reaped
	select {
	case err := <-s.done:
		s.done <- err // for Stop
		t.Fatalf("postgres died with the thread that started it: %v\n%s", err, s.Log())
	default:
	}
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatalf("postgres no longer answers: %v", err)
	}
	c.Close(ctx)
}
