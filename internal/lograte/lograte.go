// Package lograte keeps warnings about what strangers send from burying
// the log: one line per kind of event per interval, with the count of
// those left out. It owns no logger; callers pass theirs.
package lograte

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter logs at most once per Every for each key. Keys are kinds of
// events chosen by the caller (a fixed set, never a peer's address), so
// its memory is bounded by the code, not by the traffic.
type Limiter struct {
	Log   *slog.Logger
	Every time.Duration

	mu   sync.Mutex
	keys map[string]*state
}

type state struct {
	last       time.Time
	suppressed int
}

// Warn logs msg with args at warning level unless key was logged less
// than Every ago; the line that goes out says how many were left out
// since the last one ("suppressed").
func (l *Limiter) Warn(key, msg string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	if l.keys == nil {
		l.keys = map[string]*state{}
	}
	st := l.keys[key]
	if st == nil {
		st = &state{}
		l.keys[key] = st
	}
	if !st.last.IsZero() && now.Sub(st.last) < l.Every {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	n := st.suppressed
	st.last, st.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Log.Log(context.Background(), slog.LevelWarn, msg, args...)
}
