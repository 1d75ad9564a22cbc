// Profiling benchmarks for bench/run.sh findings: they run pxe-anywhere's
// servers in-process on loopback so that `go test -cpuprofile` shows
// where the time goes. They assert nothing about speed.
package bench

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	pintftp "github.com/pin/tftp/v3"

	"github.com/pxe-anywhere/pxe-anywhere/dhcp"
	"github.com/pxe-anywhere/pxe-anywhere/tftp"
)

// ipxeCopy copies file from the system's iPXE directory into a temp dir
// as a regular file: Debian ships ipxe.efi as a symlink into /boot,
// which the TFTP server rightly refuses to follow out of its root.
func ipxeCopy(b *testing.B, file string) string {
	src, err := tftp.FindIPXEDir("")
	if err != nil {
		b.Skip("no iPXE directory:", err)
	}
	data, err := os.ReadFile(filepath.Join(src, file))
	if err != nil {
		b.Skip(err)
	}
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkTFTPFetch fetches one iPXE binary per iteration from a
// pxe-anywhere TFTP server on loopback.
func BenchmarkTFTPFetch(b *testing.B) {
	for _, tc := range []struct {
		name    string
		file    string
		blksize int
	}{
		{name: "ipxe.efi/1468", file: "ipxe.efi", blksize: 1468},
		{name: "undionly.kpxe/512", file: "undionly.kpxe", blksize: 512},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir := ipxeCopy(b, tc.file)
			srv, err := tftp.New(dir, slog.New(slog.DiscardHandler), nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := srv.Listen("127.0.0.1:0"); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx) }()
			b.Cleanup(func() { cancel(); <-done })
			c, err := pintftp.NewClient(srv.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			if tc.blksize != 512 {
				c.SetBlockSize(tc.blksize)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				wt, err := c.Receive(tc.file, "octet")
				if err != nil {
					b.Fatalf("RRQ %s from %s: %v", tc.file, dir, err)
				}
				n, err := wt.WriteTo(io.Discard)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(n)
			}
		})
	}
}

// BenchmarkPinTFTPSource isolates one choice inside tftp.Server.read:
// pin/tftp handed the open file (one read(2) per block) or the file's
// bytes from memory. Same server library, same client, same file.
func BenchmarkPinTFTPSource(b *testing.B) {
	dir := ipxeCopy(b, "ipxe.efi")
	path := filepath.Join(dir, "ipxe.efi")
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		open func() (io.Reader, func(), error)
	}{
		{name: "file", open: func() (io.Reader, func(), error) {
			f, err := os.Open(path)
			if err != nil {
				return nil, nil, err
			}
			return f, func() { f.Close() }, nil
		}},
		{name: "memory", open: func() (io.Reader, func(), error) {
			return bytes.NewReader(data), func() {}, nil
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			srv := pintftp.NewServer(func(_ string, rf io.ReaderFrom) error {
				r, done, err := tc.open()
				if err != nil {
					return err
				}
				defer done()
				_, err = rf.ReadFrom(r)
				return err
			}, nil)
			conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = srv.Serve(conn.(*net.UDPConn)) }()
			b.Cleanup(srv.Shutdown)
			c, err := pintftp.NewClient(conn.LocalAddr().String())
			if err != nil {
				b.Fatal(err)
			}
			c.SetBlockSize(1468)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				wt, err := c.Receive("ipxe.efi", "octet")
				if err != nil {
					b.Fatal(err)
				}
				n, err := wt.WriteTo(io.Discard)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(n)
			}
		})
	}
}

type bootAll struct{}

func (bootAll) Decide(context.Context, dhcp.Machine) dhcp.Decision { return dhcp.Boot }

// BenchmarkDHCPHandle runs dhcp.Server.Handle on PXE DISCOVERs from
// distinct MACs, without sockets: the cost of deciding and building a
// reply, in proxy and authoritative mode (the latter with and without a
// lease file, whose saving is part of every ACK), and with the logger
// writing text (as serve does) or discarding.
func BenchmarkDHCPHandle(b *testing.B) {
	for _, tc := range []struct {
		name      string
		mode      dhcp.Mode
		leaseFile bool
		textLog   bool
	}{
		{name: "proxy/discard-log", mode: dhcp.Proxy},
		{name: "proxy/text-log", mode: dhcp.Proxy, textLog: true},
		{name: "authoritative/DORA/no-lease-file/text-log", mode: dhcp.Authoritative, textLog: true},
		{name: "authoritative/DORA/lease-file/text-log", mode: dhcp.Authoritative, leaseFile: true, textLog: true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			log := slog.New(slog.DiscardHandler)
			if tc.textLog {
				f, err := os.Create(filepath.Join(b.TempDir(), "log"))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { f.Close() })
				log = slog.New(slog.NewTextHandler(f, nil))
			}
			cfg := dhcp.Config{
				Interfaces: []string{"lo"},
				Mode:       tc.mode,
				ServerIP:   netip.MustParseAddr("10.77.0.1"),
				ScriptURL:  func(net.HardwareAddr) string { return "http://10.77.0.1:8080/boot/x.ipxe" },
				BootFiles:  map[dhcp.Arch]string{dhcp.ArchBIOS: "undionly.kpxe", dhcp.ArchEFIx64: "ipxe.efi"},
			}
			if tc.mode == dhcp.Authoritative {
				cfg.Subnet = netip.MustParsePrefix("10.77.0.0/16")
				cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.77.1.0"), netip.MustParseAddr("10.77.250.255")
				cfg.LeaseTime = time.Hour
				if tc.leaseFile {
					cfg.LeaseFile = filepath.Join(b.TempDir(), "leases.json")
				}
			}
			srv, err := dhcp.New(cfg, bootAll{}, log)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			pxe := []dhcpv4.Modifier{
				dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
				dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				mac := net.HardwareAddr{0x52, 0x54, 0x02, byte(i >> 16), byte(i >> 8), byte(i)}
				disc, err := dhcpv4.NewDiscovery(mac, pxe...)
				if err != nil {
					b.Fatal(err)
				}
				offer, err := srv.Handle(ctx, disc, "lo", dhcpv4.ServerPort)
				if err != nil || offer == nil {
					b.Fatalf("DISCOVER from %s: reply %v, err %v", mac, offer, err)
				}
				if tc.mode != dhcp.Authoritative {
					continue
				}
				req, err := dhcpv4.NewRequestFromOffer(offer, pxe...)
				if err != nil {
					b.Fatal(err)
				}
				if ack, err := srv.Handle(ctx, req, "lo", dhcpv4.ServerPort); err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
					b.Fatalf("REQUEST from %s: reply %v, err %v", mac, ack, err)
				}
			}
		})
	}
}
