package installer

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// TerminalSink prints phases and command output for a person. On a
// terminal, upload progress rewrites one line; elsewhere it is quiet.
func TerminalSink(w io.Writer, isTTY bool) Sink {
	return &terminalSink{w: w, tty: isTTY}
}

type terminalSink struct {
	mu       sync.Mutex
	w        io.Writer
	tty      bool
	index    int
	total    int
	start    time.Time
	progress bool
}

func (s *terminalSink) endProgress() {
	if s.progress {
		fmt.Fprintln(s.w)
		s.progress = false
	}
}

func (s *terminalSink) PhaseStarted(phase string, index, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endProgress()
	s.index, s.total, s.start = index, total, time.Now()
	fmt.Fprintf(s.w, "[%d/%d] %s\n", index, total, phase)
}

func (s *terminalSink) PhaseDone(phase string, elapsed time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endProgress()
	status := "done"
	if err != nil {
		status = "FAILED"
	}
	fmt.Fprintf(s.w, "[%d/%d] %s  %s  %s\n", s.index, s.total, phase, clock(elapsed), status)
}

func (s *terminalSink) Line(phase, stream, line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endProgress()
	fmt.Fprintf(s.w, "  %s\n", line)
}

func (s *terminalSink) Progress(phase string, done, total int64) {
	if !s.tty {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	size := fmt.Sprintf("%.1f MiB", float64(done)/(1<<20))
	if total > 0 {
		size += fmt.Sprintf(" / %.1f MiB", float64(total)/(1<<20))
	}
	fmt.Fprintf(s.w, "\r[%d/%d] %s  %s  %s", s.index, s.total, phase, clock(time.Since(s.start)), size)
	s.progress = true
}

func clock(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%02d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}
