package provision

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
)

// TestInstallQueueSlots: no more installs run at once than there are
// slots, one machine never has two, and a queued install that is
// cancelled never runs.
func TestInstallQueueSlots(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	q := newInstallQueue(ctx, 2, &wg)
	var now, most atomic.Int32
	release := make(chan struct{})
	started := make(chan string, 8)
	run := func(mac string) func(context.Context) {
		return func(ctx context.Context) {
			n := now.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			started <- mac
			select {
			case <-release:
			case <-ctx.Done():
			}
			now.Add(-1)
		}
	}
	unqueued := make(chan string, 8)
	for _, mac := range []string{"a", "b", "c"} {
		mac := mac
		if !q.start(mac, run(mac), func(context.Context) { unqueued <- mac }) {
			t.Fatalf("start %s refused", mac)
		}
		if mac != "c" {
			<-started // so that c is the one left waiting
		}
	}
	if q.start("a", run("a"), func(context.Context) {}) {
		t.Fatal("a second install of the same machine was queued")
	}
	select {
	case mac := <-started:
		t.Fatalf("%s started while two installs hold both slots", mac)
	case <-time.After(100 * time.Millisecond):
	}
	// c waits for a slot: cancelling it runs unqueued, not the install.
	if !q.busy("a") || !q.busy("b") || !q.busy("c") {
		t.Fatal("busy does not report the queued and running installs")
	}
	found, err := q.cancel(ctx, "c", errors.New("operator"))
	if !found || err != nil {
		t.Fatalf("cancel c: found %v, err %v", found, err)
	}
	if got := <-unqueued; got != "c" {
		t.Fatalf("unqueued ran for %s", got)
	}
	close(release)
	wg.Wait()
	if most.Load() != 2 {
		t.Fatalf("at most %d installs ran at once, want 2", most.Load())
	}
	if q.busy("a") || q.busy("c") {
		t.Fatal("ended installs still reported busy")
	}
	if found, _ := q.cancel(ctx, "a", nil); found {
		t.Fatal("cancel found an install that ended")
	}
	// The machine may be installed again once its install ended.
	if !q.start("a", func(context.Context) {}, func(context.Context) {}) {
		t.Fatal("a new install after the first ended was refused")
	}
	wg.Wait()
}

// TestFeedDropsForSlowSubscribers: a subscriber that does not read
// loses changes instead of blocking the sender, and leaves when its
// context ends.
func TestFeedDropsForSlowSubscribers(t *testing.T) {
	f := newFeed()
	ctx, cancel := context.WithCancel(context.Background())
	slow := f.subscribe(ctx)
	fast := f.subscribe(context.Background())
	done := make(chan struct{})
	go func() {
		for i := 0; i < feedBuffer*3; i++ {
			f.send(admin.MachineView{MAC: strconv.Itoa(i)})
		}
		close(done)
	}()
	got := 0
	for got < feedBuffer*3 {
		select {
		case <-fast:
			got++
		case <-done:
			// The sender finished: whatever fast still has buffered
			// was sent too.
			for len(fast) > 0 {
				<-fast
				got++
			}
			goto sent
		case <-time.After(5 * time.Second):
			t.Fatal("send blocked on the subscriber that does not read")
		}
	}
	<-done
sent:
	if len(slow) != feedBuffer {
		t.Fatalf("slow subscriber holds %d changes, want its buffer (%d)", len(slow), feedBuffer)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for f.len() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if f.len() != 1 {
		t.Fatalf("%d subscribers after one left, want 1", f.len())
	}
	for range slow { // closed once it left
	}
}
