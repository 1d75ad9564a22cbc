package dhcp

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// listenOnDevice opens a broadcast-capable UDP socket on port, bound to
// the interface iface, so that nothing is answered on any other. It
// does what server4.NewIPv4UDPConn does, but keeps the errno in its
// errors (that one formats it away), so that a missing privilege can
// be named: the one thing an operator who runs serve unprivileged
// needs to hear.
func listenOnDevice(iface string, port int) (*net.UDPConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("UDP socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "dhcp-"+iface)
	defer f.Close() // FilePacketConn dups it
	for _, opt := range []int{unix.SO_BROADCAST, unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 1); err != nil {
			return nil, fmt.Errorf("socket option %d: %w", opt, err)
		}
	}
	if err := unix.BindToDevice(fd, iface); err != nil {
		if errors.Is(err, unix.EPERM) {
			// Linux before 5.7 lets only CAP_NET_RAW bind a socket to
			// a device; later ones let anyone bind a fresh socket.
			return nil, fmt.Errorf("bind to interface %s: %w: binding a socket to an interface needs CAP_NET_RAW on this kernel (Linux before 5.7); run serve as root or grant it", iface, err)
		}
		return nil, fmt.Errorf("bind to interface %s: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		if errors.Is(err, unix.EACCES) {
			// The caller names the capability, as for every port.
			return nil, fmt.Errorf("bind port %d: %w", port, err)
		}
		return nil, fmt.Errorf("bind port %d: %w (is another DHCP server running there?)", port, err)
	}
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	conn, ok := c.(*net.UDPConn)
	if !ok {
		c.Close()
		return nil, errors.New("not a UDP socket")
	}
	return conn, nil
}
