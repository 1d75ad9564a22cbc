package tftp

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// slowReader asks for a file and never ACKs: it holds a transfer open
// as a stalled client does. It returns once the first DATA packet came,
// so the server counts the transfer; abort ends it from the client side.
type slowReader struct {
	conn *net.UDPConn
	tid  *net.UDPAddr // the server's transfer port
}

func rrq(name string) []byte {
	b := []byte{0, 1}
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, "octet"...)
	return append(b, 0)
}

// readPacket reads one TFTP packet; the deadline only ends a broken run.
func readPacket(t *testing.T, conn *net.UDPConn) ([]byte, *net.UDPAddr) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	return buf[:n], from
}

func startSlowReader(t *testing.T, server string) *slowReader {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	to, _ := net.ResolveUDPAddr("udp4", server)
	if _, err := conn.WriteTo(rrq("big.bin"), to); err != nil {
		t.Fatal(err)
	}
	p, from := readPacket(t, conn)
	if binary.BigEndian.Uint16(p) != 3 {
		t.Fatalf("slow reader: first packet is opcode %d (%q), want DATA", binary.BigEndian.Uint16(p), p)
	}
	r := &slowReader{conn: conn, tid: from}
	t.Cleanup(r.abort)
	return r
}

// abort sends an ERROR to the transfer, as a client that gives up does,
// so the server frees the transfer without waiting out its retries.
func (r *slowReader) abort() {
	if r.conn == nil {
		return
	}
	r.conn.WriteTo(append([]byte{0, 5, 0, 0}, "client gives up\x00"...), r.tid)
	r.conn.Close()
	r.conn = nil
}

// TestTransferCap: with the cap reached by stalled clients, one more
// request gets an ERROR packet (tftp-hpa and curl report it), is counted
// as busy, and is logged once; when a transfer ends, a client is served
// again.
func TestTransferCap(t *testing.T) {
	netlab.Require(t, "tftp", "curl")
	var log lockedBuffer
	s, _, files := startServerLogging(t, &log)
	const max = 3
	s.SetMaxTransfers(max)
	addr := s.Addr().String()
	var readers []*slowReader
	for i := 0; i < max; i++ {
		readers = append(readers, startSlowReader(t, addr))
	}
	// A raw request past the cap reads an ERROR packet that says why.
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.WriteTo(rrq("big.bin"), s.Addr()); err != nil {
		t.Fatal(err)
	}
	p, _ := readPacket(t, conn)
	if binary.BigEndian.Uint16(p) != 5 || !bytes.Contains(p, []byte("busy")) {
		t.Fatalf("past the cap: got %q…, want an ERROR packet saying busy", p[:min(len(p), 32)])
	}
	// Real clients past the cap fail at once with the server's message.
	out := filepath.Join(t.TempDir(), "out")
	b, err := exec.Command("tftp", "127.0.0.1", port(s), "-m", "binary", "-c", "get", "big.bin", out).CombinedOutput()
	if !strings.Contains(string(b), "busy") {
		t.Fatalf("tftp-hpa past the cap: %v %s", err, b)
	}
	b, err = exec.Command("curl", "-sS", "-o", out, "tftp://"+addr+"/big.bin").CombinedOutput()
	if err == nil {
		t.Fatalf("curl past the cap succeeded: %s", b)
	}
	if got := value(s.transfers.WithLabelValues("busy")); got != 3 {
		t.Fatalf("transfers{result=busy} = %v, want 3", got)
	}
	if n := strings.Count(log.String(), "too many transfers"); n != 1 {
		t.Fatalf("%d log lines for refused transfers, want 1 (rate-limited):\n%s", n, log.String())
	}
	// One stalled client gives up: its slot is free, curl is served.
	readers[0].abort()
	deadline := time.Now().Add(30 * time.Second)
	for s.running.Load() >= max && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if b, err := exec.Command("curl", "-sS", "-o", out, "tftp://"+addr+"/big.bin").CombinedOutput(); err != nil {
		t.Fatalf("curl after a slot freed: %v %s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, files["big.bin"]) {
		t.Fatal("download after the cap differs")
	}
}
