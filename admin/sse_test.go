package admin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
)

// offer gives m to every subscriber that has room, as provision's
// publish does, and returns how many subscribers there are.
func (f *fakeInventory) offer(m MachineView) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.subs {
		select {
		case c <- m:
		default:
		}
	}
	return len(f.subs)
}

func (f *fakeInventory) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// smallSendBuffers makes each accepted connection's send buffer small,
// so that a client that reads nothing blocks the server's writes after
// a few kilobytes.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

// eventually polls cond; the deadline only ends a broken run.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSSEStalledClientDropped: a client that opens /events and never
// reads is dropped once an event waits longer than SSEWriteTimeout; its
// subscription ends and its goroutines are gone.
func TestSSEStalledClientDropped(t *testing.T) {
	logs := &syncbuf.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	inv := &fakeInventory{}
	s := New(Config{Log: log, SSEWriteTimeout: 300 * time.Millisecond}, inv)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- httpserve.Serve(ctx, smallSendBuffers{l}, s, log) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	baseline := runtime.NumGoroutine()

	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(16 << 10)
	io.WriteString(c, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	eventually(t, "the stream subscribes", func() bool { return inv.subscribers() == 1 })
	// Events of 4 KB until the buffers are full and the server's write
	// waits; the subscription must then end.
	m := machines[0]
	m.Hostname = strings.Repeat("h", 4000)
	sent := 0
	eventually(t, "the stalled client is dropped", func() bool {
		sent++
		return inv.offer(m) == 0
	})
	t.Logf("dropped after %d events offered", sent)
	eventually(t, "the stream's goroutines end", func() bool { return runtime.NumGoroutine() <= baseline+1 })
	if s.streams.Load() != 0 {
		t.Fatalf("%d streams counted open", s.streams.Load())
	}
	if !strings.Contains(logs.String(), "event stream client dropped") {
		t.Fatalf("drop not logged:\n%s", logs.String())
	}
}

// TestSSESubscriberCap: past SSEMaxSubscribers, /events answers 503
// with Retry-After; when a stream ends, a new one is served.
func TestSSESubscriberCap(t *testing.T) {
	inv := &fakeInventory{}
	s := New(Config{Log: slog.New(slog.DiscardHandler), SSEMaxSubscribers: 2}, inv)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	open := func() *http.Response {
		resp, err := http.Get(srv.URL + "/events")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if resp.StatusCode == http.StatusOK {
			// The opening comment proves the stream is served.
			if _, err := resp.Body.Read(make([]byte, 64)); err != nil {
				t.Fatal(err)
			}
		}
		return resp
	}
	first := open()
	if second := open(); second.StatusCode != http.StatusOK {
		t.Fatalf("second stream: %d", second.StatusCode)
	}
	third := open()
	if third.StatusCode != http.StatusServiceUnavailable || third.Header.Get("Retry-After") == "" {
		t.Fatalf("third stream: %d, Retry-After %q", third.StatusCode, third.Header.Get("Retry-After"))
	}
	first.Body.Close()
	eventually(t, "the closed stream ends", func() bool { return s.streams.Load() == 1 })
	if again := open(); again.StatusCode != http.StatusOK {
		t.Fatalf("after one closed: %d", again.StatusCode)
	}
}
