package httpserve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// smallBuffers makes every accepted connection's send buffer small, so
// that a client that stops reading blocks the server's writes after a
// few dozen kilobytes instead of the megabytes that loopback autotuning
// allows.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(64 << 10)
	}
	return c, err
}

// serveTest runs ServeTimeouts on a loopback listener until the test
// ends and returns its address.
func serveTest(t *testing.T, h http.Handler, to Timeouts) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeTimeouts(ctx, smallBuffers{l}, h, slog.New(slog.DiscardHandler), to) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// dialSlow connects with a small receive buffer, for clients that stop
// reading.
func dialSlow(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	tc.SetReadBuffer(64 << 10)
	t.Cleanup(func() { c.Close() })
	return tc
}

// closedByServer reads until the server closes the connection. The
// deadline only ends a broken run; what is asserted is that the server
// closed it, long before.
func closedByServer(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept the connection open")
	}
}

var short = Timeouts{Header: 200 * time.Millisecond, Read: 500 * time.Millisecond, Idle: 300 * time.Millisecond, Write: 300 * time.Millisecond}

// TestSlowlorisClosed: headers that never end are cut by the header
// timeout.
func TestSlowlorisClosed(t *testing.T) {
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), short)
	c := dialSlow(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-a: 1\r\n")
	closedByServer(t, c)
}

// TestIdleKeepAliveClosed: a keep-alive connection with no next request
// is closed by the idle timeout, after a first answer.
func TestIdleKeepAliveClosed(t *testing.T) {
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }), short)
	c := dialSlow(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 || resp.Close {
		t.Fatalf("first answer: %v %v", resp, err)
	}
	closedByServer(t, c)
}

// TestSmallResponseWriteDeadline: a client that does not read its
// answer is cut after the write timeout; the handler's write fails and
// it returns.
func TestSmallResponseWriteDeadline(t *testing.T) {
	returned := make(chan error, 1)
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 4096)
		for i := 0; i < 1<<16; i++ { // 256 MiB: more than any buffer holds
			if _, err := w.Write(chunk); err != nil {
				returned <- err
				return
			}
		}
		returned <- nil
	}), short)
	c := dialSlow(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case err := <-returned:
		if err == nil {
			t.Fatal("256 MiB written to a client that reads nothing")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler is still writing to a client that reads nothing")
	}
	closedByServer(t, c)
}

// TestSlowHandlerAnswers: the write timeout counts from the first
// write, so a handler that takes longer than it to prepare a small
// answer (a reload that fetches an image) still gets it out.
func TestSlowHandlerAnswers(t *testing.T) {
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(3 * short.Write)
		io.WriteString(w, "done")
	}), Timeouts{Header: time.Second, Read: 5 * time.Second, Idle: time.Second, Write: short.Write})
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "done" {
		t.Fatalf("slow handler's answer: %q %v", b, err)
	}
}

// TestProgressWriter serves a file through ProgressWriter: a client
// that keeps reading, slowly, gets all of it although the whole takes
// far longer than the write and the read timeout, with its request's
// context intact; one that stops is cut.
func TestProgressWriter(t *testing.T) {
	data := make([]byte, 3<<20)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	to := Timeouts{Header: time.Second, Read: 300 * time.Millisecond, Idle: time.Second, Write: time.Second}
	ended := make(chan error, 4)
	addr := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		pw := ProgressWriter(w, to.Write)
		pw.Header().Set("Content-Length", "3145728")
		_, err = io.Copy(pw, f)
		if err == nil {
			err = r.Context().Err()
		}
		ended <- err
	}), to)

	t.Run("slow reader gets all", func(t *testing.T) {
		c := dialSlow(t, addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		// 32 KiB per 20 ms: the 3 MiB take at least 1.9 s of sleeps,
		// longer than both the write and the read timeout; each 256 KiB
		// block takes 160 ms of them.
		var got bytes.Buffer
		buf := make([]byte, 32<<10)
		var rerr error
		for rerr == nil {
			var n int
			n, rerr = io.ReadFull(resp.Body, buf)
			got.Write(buf[:n])
			time.Sleep(20 * time.Millisecond)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Fatalf("slow reader got %d of %d bytes: %v", got.Len(), len(data), rerr)
		}
		if err := <-ended; err != nil {
			t.Fatalf("handler: %v", err)
		}
	})
	t.Run("stalled reader is cut", func(t *testing.T) {
		c := dialSlow(t, addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		select {
		case err := <-ended:
			if err == nil || !strings.Contains(err.Error(), "timeout") {
				t.Fatalf("handler ended with %v, want a write timeout", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the handler is still writing to a client that reads nothing")
		}
	})
}

// readerFromRecorder records what ReadFrom is handed.
type readerFromRecorder struct {
	http.ResponseWriter
	srcs []io.Reader
	n    int64
}

func (r *readerFromRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.srcs = append(r.srcs, src)
	n, err := io.Copy(io.Discard, src)
	r.n += n
	return n, err
}

// TestProgressWriterKeepsSendfile: ServeContent's body reaches the
// connection as io.LimitedReaders directly over the *os.File, the one
// form that net's sendfile takes, one block at a time.
func TestProgressWriterKeepsSendfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	size := 3*progressBlock + 17
	os.WriteFile(path, make([]byte, size), 0o644)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec := &readerFromRecorder{ResponseWriter: httptest.NewRecorder()}
	st, _ := f.Stat()
	http.ServeContent(ProgressWriter(rec, time.Second), httptest.NewRequest("GET", "/f", nil), "f", st.ModTime(), f)
	if rec.n != int64(size) || len(rec.srcs) != 4 {
		t.Fatalf("%d bytes in %d blocks, want %d in 4", rec.n, len(rec.srcs), size)
	}
	for i, src := range rec.srcs {
		lr, ok := src.(*io.LimitedReader)
		if !ok {
			t.Fatalf("block %d: %T, want *io.LimitedReader", i, src)
		}
		if _, ok := lr.R.(*os.File); !ok {
			t.Fatalf("block %d reads from %T, want *os.File (sendfile)", i, lr.R)
		}
	}
}
