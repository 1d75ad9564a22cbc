package netlab

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// The lab's links are born in its namespaces, so the host never sees one,
// not even for a moment, and its namespaces go away with the test that
// made them.
func TestLabLeavesHostAlone(t *testing.T) {
	Require(t)
	hostLinks := watchLinks(t)
	var id string
	t.Run("lab", func(t *testing.T) {
		l := New(t, "10.78.0.0/24")
		id = l.id
		l.Client("")
		c := l.Client("52:54:00:aa:bb:02")
		if got := l.Run(c, "cat", "/sys/class/net/eth0/address"); got != "52:54:00:aa:bb:02\n" {
			t.Errorf("mac %q", got)
		}
		if got := l.Run(l.Server, "ip", "-o", "link", "show", "master", "br0"); strings.Count(got, "\n") != 2 {
			t.Errorf("want 2 ports on the bridge:\n%s", got)
		}
	})
	seen := map[string]bool{}
	for _, name := range hostLinks() {
		if strings.Contains(name, id) && !seen[name] {
			seen[name] = true
			t.Errorf("link %s of lab %s appeared on the host", name, id)
		}
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), id) {
		t.Errorf("namespaces of lab %s left behind:\n%s", id, out)
	}
}

// watchLinks subscribes to the link events of the calling thread's
// namespace (the host's) and returns a function that reports the names of
// the links created, changed or deleted since.
func watchLinks(t *testing.T) func() []string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// A busy host must not overflow the buffer before the test reads it.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
		t.Fatalf("netlink bind: %v", err)
	}
	return func() []string {
		var names []string
		buf := make([]byte, 1<<16)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err == unix.EAGAIN {
				return names
			}
			if err != nil {
				t.Fatalf("reading link events: %v", err)
			}
			msgs, err := syscall.ParseNetlinkMessage(buf[:n])
			if err != nil {
				t.Fatalf("link event: %v", err)
			}
			for i := range msgs {
				if msgs[i].Header.Type != unix.RTM_NEWLINK && msgs[i].Header.Type != unix.RTM_DELLINK {
					continue
				}
				attrs, err := syscall.ParseNetlinkRouteAttr(&msgs[i])
				if err != nil {
					t.Fatalf("link event: %v", err)
				}
				for _, a := range attrs {
					if a.Attr.Type == unix.IFLA_IFNAME {
						names = append(names, strings.TrimRight(string(a.Value), "\x00"))
					}
				}
			}
		}
	}
}
