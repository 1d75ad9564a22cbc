package netlab

import (
	"fmt"
	"net"
	"testing"
	"time"
)

func TestLabClientReachesServer(t *testing.T) {
	Require(t)
	l := New(t, "10.77.0.0/24")
	c := l.Client("52:54:00:aa:bb:01")
	l.Run(c, "ip", "addr", "add", "10.77.0.50/24", "dev", "eth0")
	var conn net.PacketConn
	if err := Do(l.Server, func() (err error) {
		conn, err = net.ListenPacket("udp4", l.Addr.String()+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	port := conn.LocalAddr().(*net.UDPAddr).Port
	l.Run(c, "bash", "-c", fmt.Sprintf("echo hello >/dev/udp/%s/%d", l.Addr, port))
	buf := make([]byte, 64)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := conn.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello\n" {
		t.Fatalf("server namespace got %q from %v: %v", buf[:n], from, err)
	}
	if got := l.Run(c, "cat", "/sys/class/net/eth0/address"); got != "52:54:00:aa:bb:01\n" {
		t.Fatalf("mac %q", got)
	}
}
