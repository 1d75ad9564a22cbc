package provision

import (
	"sync"
	"time"
)

// unknownLogEvery is the least time between two log lines about ignored
// unknown MACs: a flood of invented MACs must not flood the log.
const unknownLogEvery = time.Minute

// unknownMACs remembers the unknown MACs that were ignored, so that each
// is counted once, and keeps the log of them to a line a minute. It
// holds at most a given number of MACs and forgets the least recently
// seen first: DHCP packets are unauthenticated, and one host can invent
// as many MACs as it likes.
type unknownMACs struct {
	mu      sync.Mutex
	macs    *recent[struct{}]
	pending int // new MACs not logged yet
	lastLog time.Time
	now     func() time.Time
}

func newUnknownMACs() *unknownMACs {
	return &unknownMACs{macs: newRecent[struct{}](), now: time.Now}
}

// seen records mac, keeping at most limit MACs. logNow says whether a
// line naming mac may be logged now; others is then how many new MACs
// went unlogged before it.
func (u *unknownMACs) seen(mac string, limit int) (logNow bool, others int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.macs.put(mac, struct{}{}, limit) {
		return false, 0
	}
	now := u.now()
	if !u.lastLog.IsZero() && now.Sub(u.lastLog) < unknownLogEvery {
		u.pending++
		return false, 0
	}
	others, u.pending, u.lastLog = u.pending, 0, now
	return true, others
}

// due returns how many new MACs went unlogged, and counts them as
// logged, once a minute has passed since the last line; 0 otherwise.
func (u *unknownMACs) due() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	if u.pending == 0 || now.Sub(u.lastLog) < unknownLogEvery {
		return 0
	}
	n := u.pending
	u.pending, u.lastLog = 0, now
	return n
}

// len is how many MACs are remembered.
func (u *unknownMACs) len() int { return u.macs.len() }
