package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/pxe-anywhere/pxe-anywhere/profiles"
)

// defaultBootPort is the boot side's port when server.http_listen is
// unset.
const defaultBootPort = "8080"

// bootListenAddr is where the boot side listens: server.http_listen, or
// else the advertised address on port 8080. Machines reach the server
// there anyway, and no other network the host is on sees the boot side.
func bootListenAddr(s profiles.Server, advertise netip.Addr) string {
	if s.HTTPListen != "" {
		return s.HTTPListen
	}
	return net.JoinHostPort(advertise.String(), defaultBootPort)
}

// listenBoot opens the boot side's listener.
func listenBoot(s profiles.Server, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if s.HTTPListen == "" {
			return nil, fmt.Errorf("server.http_listen (unset: the advertised address, port %s): %w", defaultBootPort, err)
		}
		return nil, fmt.Errorf("server.http_listen: %w", err)
	}
	return l, nil
}

// privilegeHint names, in a permission error from opening a socket,
// the capability an unprivileged serve most likely lacks. Errors that
// name one already (the DHCP socket's) pass as they are.
func privilegeHint(err error) error {
	if err == nil || !errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "CAP_") {
		return err
	}
	return fmt.Errorf("%w: ports below 1024 need CAP_NET_BIND_SERVICE; run serve as root or grant it (docs/operations.md, \"Running as a service\")", err)
}

// adminTLS loads server.tls_cert and server.tls_key; nil when the
// config names none, and the admin side then speaks plain HTTP.
func adminTLS(s profiles.Server) (*tls.Config, error) {
	if s.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(s.TLSCert, s.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("server.tls_cert and server.tls_key: %w (want PEM files: the certificate, then its private key)", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// listenAdmin opens the operator side's listener, with TLS when tc is
// set. loopback tells whether it is bound to a loopback address, read
// from the bound socket so that "localhost:8081" counts and ":8081"
// (every address) does not.
func listenAdmin(addr string, tc *tls.Config) (l net.Listener, loopback bool, err error) {
	l, err = net.Listen("tcp", addr)
	if err != nil {
		return nil, false, fmt.Errorf("server.admin_listen: %w", err)
	}
	if a, ok := l.Addr().(*net.TCPAddr); ok {
		loopback = a.IP.IsLoopback()
	}
	if tc != nil {
		l = tls.NewListener(l, tc)
	}
	return l, loopback, nil
}

// warnExposure logs the listener choices that put a side on more
// networks than it needs; they are the operator's to make, so serve
// starts all the same.
func warnExposure(log *slog.Logger, boot, admin net.Addr, adminLoopback, adminTLS bool) {
	if a, ok := boot.(*net.TCPAddr); ok && a.IP.IsUnspecified() {
		log.Warn("the boot side listens on all addresses: every network routed to this host can fetch boot scripts and images; set server.http_listen to the provisioning address", "http", boot.String())
	}
	if !adminLoopback && !adminTLS {
		log.Warn("the admin side listens off loopback without TLS: the API token and the status page cross the network in clear; set server.tls_cert and server.tls_key, or keep server.admin_listen on loopback and use an SSH tunnel", "admin", admin.String())
	}
}

// closers is a stack of what serve opened (sockets, listeners). A start
// that fails part way closes it, newest first, so that nothing stays
// bound and serve can be started again at once; once serving, each
// server closes its own at shutdown and closing again is harmless.
type closers []func()

func (c *closers) add(close func()) { *c = append(*c, close) }

func (c *closers) close() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}
