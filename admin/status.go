package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
)

// The status pages are server-rendered (pages.go); on loopback they
// need no login to be read, off loopback they are behind it
// (Config.RequireLogin). Either way the full error, which quotes the
// failing command and its last output (anything an install printed),
// and the install log are shown only to a logged-in operator, and every
// action needs a login (see doAction).

// sseKeepalive is how often an idle event stream gets a comment line:
// a client that stopped reading is then found (its write times out)
// even when no machine changes.
const sseKeepalive = 30 * time.Second

// statusEvents streams machine changes as server-sent events. Each
// event must be taken within SSEWriteTimeout, or the client is dropped
// and its subscription ends; at most SSEMaxSubscribers streams are open.
func (s *Server) statusEvents(w http.ResponseWriter, r *http.Request) {
	if n := s.streams.Add(1); n > int64(s.cfg.SSEMaxSubscribers) {
		s.streams.Add(-1)
		s.limited.Warn("sse-full", "event stream refused: too many open (server.sse_max_subscribers)",
			"remote", r.RemoteAddr, "max", s.cfg.SSEMaxSubscribers)
		w.Header().Set("Retry-After", "5")
		http.Error(w, "too many event streams open; retry later", http.StatusServiceUnavailable)
		return
	}
	defer s.streams.Add(-1)
	pw := httpserve.ProgressWriter(w, s.cfg.SSEWriteTimeout)
	flusher := pw.(interface{ FlushError() error })
	pw.Header().Set("Content-Type", "text/event-stream")
	pw.Header().Set("Cache-Control", "no-store")
	pw.WriteHeader(http.StatusOK)
	// retry: a restarted server is back within seconds; browsers
	// would otherwise wait their own default before reconnecting.
	fmt.Fprint(pw, ": pxe-anywhere machine updates\nretry: 2000\n\n")
	if flusher.FlushError() != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // ends the subscription when the client is dropped
	events := s.inv.Subscribe(ctx)
	tick := time.NewTicker(sseKeepalive)
	defer tick.Stop()
	for {
		var err error
		select {
		case m, ok := <-events:
			if !ok {
				return
			}
			b, jerr := json.Marshal(statusView(m))
			if jerr != nil {
				continue
			}
			_, err = fmt.Fprintf(pw, "data: %s\n\n", b)
		case <-tick.C:
			_, err = fmt.Fprint(pw, ": keepalive\n\n")
		}
		if err == nil {
			err = flusher.FlushError()
		}
		if err != nil {
			s.limited.Warn("sse-drop", "event stream client dropped: it did not take an event in time (server.sse_write_timeout)",
				"remote", r.RemoteAddr, "err", err)
			return
		}
	}
}

// statusErrorMax bounds an error summary on the status page, in runes.
const statusErrorMax = 120

// statusView is a machine as the status page and its event stream show
// it: the error cut to a summary.
func statusView(m MachineView) MachineView {
	m.Error = errorSummary(m.Error)
	if m.LastEvent != nil {
		e := *m.LastEvent
		e.Message = errorSummary(e.Message)
		m.LastEvent = &e
	}
	return m
}

// errorSummary is the first line of an install error (which names the
// phase, the command and its exit code), without the output that
// follows it, cut to statusErrorMax runes.
func errorSummary(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	line = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(line), "; last output:"))
	r := []rune(line)
	if len(r) <= statusErrorMax {
		return line
	}
	// Cut from the middle: the start names the phase and the command,
	// the end the exit code or the cause.
	tail := statusErrorMax / 3
	return string(r[:statusErrorMax-tail-1]) + "…" + string(r[len(r)-tail:])
}
