package provision

import (
	"context"
	"sync"
)

// installQueue runs installs: at most one per machine, and at most a
// given number at once (server.max_installs); the others wait for a
// slot. It knows nothing of what an install does.
type installQueue struct {
	base  context.Context // every install runs under it
	slots chan struct{}
	wg    *sync.WaitGroup // the Provisioner's: Wait waits for installs too

	mu      sync.Mutex
	running map[string]*installRun // MAC → its install, queued or running
}

// installRun is an install that has been started: queued for a slot
// or running. cancel stops it; done is closed once it has ended, its
// state is recorded and its slot is free.
type installRun struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

func newInstallQueue(base context.Context, slots int, wg *sync.WaitGroup) *installQueue {
	return &installQueue{base: base, slots: make(chan struct{}, max(slots, 1)), wg: wg, running: map[string]*installRun{}}
}

// start queues an install of mac and returns false when mac has one
// queued or running already. Once a slot is free, run runs under a
// context of the queue's base that cancel ends; if that context ends
// while the install waits for a slot, unqueued runs instead.
func (q *installQueue) start(mac string, run, unqueued func(ctx context.Context)) bool {
	ctx, cancel := context.WithCancelCause(q.base)
	r := &installRun{cancel: cancel, done: make(chan struct{})}
	q.mu.Lock()
	if q.running[mac] != nil {
		q.mu.Unlock()
		cancel(nil)
		return false
	}
	q.running[mac] = r
	q.mu.Unlock()
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		defer close(r.done)
		defer func() {
			q.mu.Lock()
			delete(q.running, mac)
			q.mu.Unlock()
			cancel(nil)
		}()
		select {
		case q.slots <- struct{}{}:
		case <-ctx.Done():
			unqueued(ctx)
			return
		}
		defer func() { <-q.slots }()
		run(ctx)
	}()
	return true
}

// busy reports whether mac has an install queued or running.
func (q *installQueue) busy(mac string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.running[mac] != nil
}

// stop stops mac's install with cause without waiting for it to end,
// and returns it (nil when mac has no install).
func (q *installQueue) stop(mac string, cause error) *installRun {
	q.mu.Lock()
	r := q.running[mac]
	q.mu.Unlock()
	if r != nil {
		r.cancel(cause)
	}
	return r
}

// cancel stops mac's install with cause and waits until it has ended
// or ctx is done. It returns false when mac has no install.
func (q *installQueue) cancel(ctx context.Context, mac string, cause error) (bool, error) {
	r := q.stop(mac, cause)
	if r == nil {
		return false, nil
	}
	select {
	case <-r.done:
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}
