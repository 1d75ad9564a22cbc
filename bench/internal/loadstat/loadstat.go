// Package loadstat collects the outcome of the bench load generators'
// operations (downloads, transfers, whole simulated boots) from many
// goroutines and summarises them: count, errors, bytes, percentiles.
package loadstat

import (
	"sort"
	"sync"
	"time"
)

// Recorder is safe for concurrent use; the zero value is ready.
type Recorder struct {
	mu    sync.Mutex
	lat   []time.Duration
	bytes int64
	errs  int
	first error
}

// Add records one operation that took d and moved n bytes; a failed one
// (err != nil) counts as an error and adds no latency.
func (r *Recorder) Add(d time.Duration, n int64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bytes += n
	if err != nil {
		r.errs++
		if r.first == nil {
			r.first = err
		}
		return
	}
	r.lat = append(r.lat, d)
}

// Summary is a snapshot of a Recorder.
type Summary struct {
	OK, Errors int
	Bytes      int64
	FirstErr   error
	sorted     []time.Duration
}

// Summary returns what was recorded so far.
func (r *Recorder) Summary() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Summary{OK: len(r.lat), Errors: r.errs, Bytes: r.bytes, FirstErr: r.first}
	s.sorted = append([]time.Duration(nil), r.lat...)
	sort.Slice(s.sorted, func(a, b int) bool { return s.sorted[a] < s.sorted[b] })
	return s
}

// Pct returns the p-th percentile (nearest rank) of the successful
// operations' durations, 0 when there were none.
func (s Summary) Pct(p int) time.Duration {
	if len(s.sorted) == 0 {
		return 0
	}
	i := (len(s.sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s.sorted[i]
}

// Mbps is the throughput of all bytes over wall.
func (s Summary) Mbps(wall time.Duration) float64 {
	return float64(s.Bytes) * 8 / 1e6 / wall.Seconds()
}
