package provision

import (
	"context"
	"sync"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// feedBuffer is how many changes a subscriber may lag behind before it
// misses some.
const feedBuffer = 64

// feed fans machine changes out to the subscribers of the operator side
// (the status page's event stream). A subscriber that does not keep up
// misses changes rather than slowing installs down.
type feed struct {
	mu   sync.Mutex
	subs map[chan admin.MachineView]struct{}
}

func newFeed() *feed { return &feed{subs: map[chan admin.MachineView]struct{}{}} }

// subscribe streams changes until ctx is done; the channel is closed
// then.
func (f *feed) subscribe(ctx context.Context) <-chan admin.MachineView {
	ch := make(chan admin.MachineView, feedBuffer)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		delete(f.subs, ch)
		close(ch)
		f.mu.Unlock()
	}()
	return ch
}

// send gives v to every subscriber that has room for it.
func (f *feed) send(v admin.MachineView) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		select {
		case ch <- v:
		default:
		}
	}
}

// len is how many subscribers there are.
func (f *feed) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// watcher is a store that tells of changes that other servers sharing
// it make (store.DB on PostgreSQL; on SQLite its Watch returns at once).
type watcher interface {
	Watch(ctx context.Context, retry time.Duration, fn func(store.Change)) error
}

// watch feeds the live views with the machines that other servers
// change, until ctx ends. This server's own changes reach the feed where
// they are made.
func (p *Provisioner) watch(ctx context.Context, w watcher) {
	_ = w.Watch(ctx, 2*time.Second, func(c store.Change) {
		if c.MAC == "" {
			// Listening (again): another server's assignments made
			// meanwhile would be missed until the next sweep.
			p.refreshAssigned(ctx)
			return
		}
		if c.Server != p.serverID {
			p.refreshAssignedMAC(ctx, c.MAC) // another server may have assigned it
			p.cancelAsked(ctx, c.MAC)
			p.publish(ctx, c.MAC)
		}
	})
}

// cancelAsked stops the install of mac that this server runs when an
// operator asked another server to cancel it (the cancel rides on this
// server's claim, store.RequestCancel): heard here at once, where the
// heartbeat would find it up to a third of server.claim_lease later.
// Not waited for, as in the heartbeat.
func (p *Provisioner) cancelAsked(ctx context.Context, mac string) {
	p.claimMu.Lock()
	held := p.held[mac] > 0
	p.claimMu.Unlock()
	if !held {
		return
	}
	c, err := p.store.ClaimOf(ctx, mac)
	if err != nil || c.Server != p.serverID || c.CancelBy == "" {
		return // the heartbeat looks again
	}
	p.queue.stop(mac, &cancelled{by: c.CancelBy})
}
