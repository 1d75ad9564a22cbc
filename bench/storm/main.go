// Command storm simulates a boot storm against one pxe-anywhere server:
// N machines, each with its own MAC, start within a spread of seconds and
// walk the chain a PXE ROM and iPXE walk: DHCP DISCOVER/REQUEST as a BIOS
// PXE ROM, DHCP again with user class "iPXE", GET /boot/{mac}.ipxe, the
// kernel and initrds in Range pieces, the per-boot extra initrd, then the
// callback with the token from the script. It prints one line of
// key=value results; any machine that fails is an error.
//
// It must run inside a client namespace of the bench lab: it binds UDP
// port 68 on the given interface and sends broadcasts there.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/pxe-anywhere/pxe-anywhere/bench/internal/loadstat"
	"github.com/pxe-anywhere/pxe-anywhere/internal/ipxescript"
)

type options struct {
	iface   string
	n       int
	spread  time.Duration
	prefix  string
	ranges  int
	timeout time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.iface, "iface", "eth0", "interface to broadcast DHCP on")
	flag.IntVar(&o.n, "n", 500, "machines")
	flag.DurationVar(&o.spread, "spread", 10*time.Second, "machines start evenly within this time")
	flag.StringVar(&o.prefix, "mac-prefix", "52:54:01", "first three bytes of the MACs; machine i gets PREFIX:00:hi(i):lo(i)")
	flag.IntVar(&o.ranges, "ranges", 4, "Range requests per kernel/initrd")
	flag.DurationVar(&o.timeout, "dhcp-timeout", 4*time.Second, "first wait for a DHCP reply; it doubles on each of 4 tries, as the PXE spec has ROMs do (4, 8, 16, 32 s)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
}

// MAC returns machine i's MAC address.
func MAC(prefix string, i int) (net.HardwareAddr, error) {
	return net.ParseMAC(fmt.Sprintf("%s:00:%02x:%02x", prefix, i>>8&0xff, i&0xff))
}

func run(o options) error {
	conn, err := listen68(o.iface)
	if err != nil {
		return err
	}
	defer conn.Close()
	d := newDispatcher(conn)
	go d.read()

	var (
		rec loadstat.Recorder
		wg  sync.WaitGroup
	)
	start := time.Now()
	for i := 0; i < o.n; i++ {
		mac, err := MAC(o.prefix, i+1)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(time.Duration(i) * o.spread / time.Duration(o.n))
			t0 := time.Now()
			n, err := machine(d, mac, o)
			rec.Add(time.Since(t0), n, err)
		}(i)
	}
	wg.Wait()
	wall := time.Since(start)
	s := rec.Summary()
	fmt.Printf("machines=%d called_back=%d errors=%d all_done_s=%.2f p50_s=%.2f p99_s=%.2f max_s=%.2f bytes=%d dhcp_retransmits=%d\n",
		o.n, s.OK, s.Errors, wall.Seconds(), s.Pct(50).Seconds(), s.Pct(99).Seconds(), s.Pct(100).Seconds(), s.Bytes, d.retransmits.Load())
	if s.FirstErr != nil {
		return fmt.Errorf("%d machines failed; first: %w", s.Errors, s.FirstErr)
	}
	return nil
}

// listen68 opens the DHCP client port on iface with broadcast allowed.
func listen68(iface string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1); serr != nil {
				return
			}
			if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); serr != nil {
				return
			}
			serr = syscall.BindToDevice(int(fd), iface)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", ":68")
	if err != nil {
		return nil, fmt.Errorf("listen on UDP 68 of %s (run inside the bench client namespace): %w", iface, err)
	}
	_ = pc.(*net.UDPConn).SetReadBuffer(4 << 20)
	return pc.(*net.UDPConn), nil
}

// dispatcher hands each reply to the machine waiting for its xid: all
// machines share one socket, as they would share one wire.
type dispatcher struct {
	retransmits atomic.Int64
	conn        *net.UDPConn
	mu          sync.Mutex
	waiting     map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
}

func newDispatcher(conn *net.UDPConn) *dispatcher {
	return &dispatcher{conn: conn, waiting: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}}
}

func (d *dispatcher) read() {
	buf := make([]byte, 2048)
	for {
		n, _, err := d.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		d.mu.Lock()
		ch := d.waiting[m.TransactionID]
		d.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	}
}

// exchange broadcasts req until a reply of type want arrives: 4 tries,
// the wait doubling after each, like a PXE ROM.
func (d *dispatcher) exchange(req *dhcpv4.DHCPv4, want dhcpv4.MessageType, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	ch := make(chan *dhcpv4.DHCPv4, 4)
	d.mu.Lock()
	d.waiting[req.TransactionID] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.waiting, req.TransactionID)
		d.mu.Unlock()
	}()
	dst := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ServerPort}
	for try := 0; try < 4; try++ {
		if try > 0 {
			d.retransmits.Add(1)
		}
		if _, err := d.conn.WriteTo(req.ToBytes(), dst); err != nil {
			return nil, fmt.Errorf("send %s: %w", req.MessageType(), err)
		}
		deadline := time.After(timeout << try)
	wait:
		for {
			select {
			case m := <-ch:
				if m.MessageType() == want {
					return m, nil
				}
				if m.MessageType() == dhcpv4.MessageTypeNak {
					return nil, fmt.Errorf("%s for %s: NAK %q", req.MessageType(), req.ClientHWAddr, m.Message())
				}
			case <-deadline:
				break wait
			}
		}
	}
	return nil, fmt.Errorf("%s for %s: no %s after 4 tries (%s)", req.MessageType(), req.ClientHWAddr, want, timeout*15)
}

// dora runs DISCOVER/OFFER/REQUEST/ACK as a BIOS PXE ROM, or as iPXE.
func dora(d *dispatcher, mac net.HardwareAddr, ipxe bool, timeout time.Duration) (*dhcpv4.DHCPv4, error) {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat(mac[3:4], 16)...))),
	}
	if ipxe {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	}
	disc, err := dhcpv4.NewDiscovery(mac, mods...)
	if err != nil {
		return nil, err
	}
	offer, err := d.exchange(disc, dhcpv4.MessageTypeOffer, timeout)
	if err != nil {
		return nil, err
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, mods...)
	if err != nil {
		return nil, err
	}
	return d.exchange(req, dhcpv4.MessageTypeAck, timeout)
}

// fromAddr takes the address DHCP gave a machine onto the interface and
// returns an HTTP client whose connections come from it: the server
// answers a machine's boot only to an address that DHCP gave that MAC.
func fromAddr(iface string, ip net.IP) (*http.Client, error) {
	if out, err := exec.Command("ip", "addr", "add", ip.String()+"/32", "dev", iface).CombinedOutput(); err != nil && !strings.Contains(string(out), "File exists") {
		return nil, fmt.Errorf("adding %s to %s: %v: %s", ip, iface, err, out)
	}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 4, DisableCompression: true}, Timeout: 5 * time.Minute}, nil
}

// machine walks the whole chain for one MAC and returns bytes fetched.
func machine(d *dispatcher, mac net.HardwareAddr, o options) (int64, error) {
	ack, err := dora(d, mac, false, o.timeout)
	if err != nil {
		return 0, fmt.Errorf("PXE DHCP: %w", err)
	}
	if ack.BootFileName != "undionly.kpxe" {
		return 0, fmt.Errorf("%s: PXE ACK boot file %q, want undionly.kpxe", mac, ack.BootFileName)
	}
	ack, err = dora(d, mac, true, o.timeout)
	if err != nil {
		return 0, fmt.Errorf("iPXE DHCP: %w", err)
	}
	script := ack.BootFileName
	if !strings.HasPrefix(script, "http://") {
		return 0, fmt.Errorf("%s: iPXE ACK boot file %q, want the script URL", mac, script)
	}
	c, err := fromAddr(o.iface, ack.YourIPAddr)
	if err != nil {
		return 0, err
	}
	defer c.CloseIdleConnections()
	body, err := getAll(c, script)
	if err != nil {
		return 0, err
	}
	s, err := parseScript(body)
	if err != nil {
		return 0, fmt.Errorf("%s: script %s: %w", mac, script, err)
	}
	total := int64(len(body))
	for _, u := range s.ranged {
		n, err := getRanges(c, u, o.ranges)
		total += n
		if err != nil {
			return total, fmt.Errorf("%s: %w", mac, err)
		}
	}
	for _, u := range s.whole {
		b, err := getAll(c, u)
		total += int64(len(b))
		if err != nil {
			return total, fmt.Errorf("%s: %w", mac, err)
		}
	}
	cb, _ := json.Marshal(struct {
		Token   string `json:"token"`
		Address string `json:"address"`
	}{s.token, ack.YourIPAddr.String()})
	resp, err := c.Post(s.callback, "application/json", bytes.NewReader(cb))
	if err != nil {
		return total, fmt.Errorf("%s: callback: %w", mac, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return total, fmt.Errorf("%s: callback: %s", mac, resp.Status)
	}
	return total, nil
}

type script struct {
	ranged   []string // kernel and image initrds: big, fetched in pieces
	whole    []string // the per-boot extra initrd
	token    string
	callback string
}

// parseScript reads the kernel/initrd lines of an install script.
func parseScript(b []byte) (script, error) {
	p, err := ipxescript.Parse(b)
	if err != nil || p.Callback == "" {
		return script{}, fmt.Errorf("not an install script (no kernel, token or callback):\n%s", b)
	}
	s := script{token: p.Token, callback: p.Callback, ranged: []string{p.Kernel}}
	for _, u := range p.Initrds {
		if strings.Contains(u, "/extra.cpio") {
			s.whole = append(s.whole, u)
		} else {
			s.ranged = append(s.ranged, u)
		}
	}
	return s, nil
}

func getAll(c *http.Client, u string) ([]byte, error) {
	resp, err := c.Get(u)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return b, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return b, nil
}

// getRanges learns the size with HEAD, then fetches k pieces in order.
func getRanges(c *http.Client, u string, k int) (int64, error) {
	resp, err := c.Head(u)
	if err != nil {
		return 0, fmt.Errorf("HEAD %s: %w", u, err)
	}
	resp.Body.Close()
	size := resp.ContentLength
	if resp.StatusCode != http.StatusOK || size <= 0 {
		return 0, fmt.Errorf("HEAD %s: %s, length %d", u, resp.Status, size)
	}
	var total int64
	piece := (size + int64(k) - 1) / int64(k)
	for off := int64(0); off < size; off += piece {
		end := min(off+piece, size) - 1
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			return total, err
		}
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(end, 10))
		resp, err := c.Do(req)
		if err != nil {
			return total, fmt.Errorf("GET %s range %d-%d: %w", u, off, end, err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		total += n
		if err != nil {
			return total, fmt.Errorf("GET %s range %d-%d: %w", u, off, end, err)
		}
		if resp.StatusCode != http.StatusPartialContent || n != end-off+1 {
			return total, fmt.Errorf("GET %s range %d-%d: %s, %d bytes", u, off, end, resp.Status, n)
		}
	}
	return total, nil
}
