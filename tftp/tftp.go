// Package tftp serves the iPXE binaries that PXE firmware loads first,
// read-only, from one directory, on pin/tftp. It knows nothing about
// machines: any client may read any file under the root, and nothing
// else.
package tftp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tftplib "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"

	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
)

// Server is a read-only TFTP server over one directory.
type Server struct {
	root      string
	log       *slog.Logger
	srv       *tftplib.Server
	conn      net.PacketConn
	transfers *prometheus.CounterVec
	bytes     prometheus.Counter
	active    prometheus.Gauge
	limited   *lograte.Limiter

	// running counts the transfers under way; past maxTransfers a new
	// request is refused with an ERROR packet.
	running      atomic.Int64
	maxTransfers atomic.Int64

	mu     sync.Mutex
	cache  map[string]cachedFile // resolved path → contents
	cached int64                 // bytes held in cache
}

// cachedFile is a file's bytes as last read, valid while the file's size
// and modification time stay the same.
type cachedFile struct {
	data  []byte
	size  int64
	mtime time.Time
}

// maxCached bounds the size of a file kept in memory, and maxCache all of
// them: iPXE binaries are well under a megabyte each, and a root that
// holds more than a few is not what the cache is for; the rest is read
// from disk block by block.
const (
	maxCached = 8 << 20
	maxCache  = 64 << 20
)

// DefaultMaxTransfers is the cap on concurrent transfers when
// SetMaxTransfers is not called: a rack booting at once is a few dozen,
// and each transfer holds a socket and a goroutine until its client
// finishes or times out.
const DefaultMaxTransfers = 256

// errBusy is what a client past the cap reads in its ERROR packet. PXE
// ROMs and iPXE retry a failed download; with an answer they do it at
// once instead of after their own timeouts.
var errBusy = errors.New("server busy: too many transfers, try again")

// New serves root, which must be a directory. reg may be nil.
func New(root string, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(abs); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("tftp root %s: not a directory", root)
	}
	s := &Server{
		root:  abs,
		log:   log,
		cache: map[string]cachedFile{},
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pxe_anywhere_tftp_transfers_total", Help: "TFTP read requests, by result (ok, failed, refused, not-found, busy).",
		}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pxe_anywhere_tftp_bytes_sent_total", Help: "Bytes of files sent over TFTP.",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pxe_anywhere_tftp_transfers_active", Help: "TFTP transfers under way.",
		}),
		limited: &lograte.Limiter{Log: log, Every: time.Minute},
	}
	s.maxTransfers.Store(DefaultMaxTransfers)
	if reg != nil {
		reg.MustRegister(s.transfers, s.bytes, s.active)
	}
	// A nil write handler makes pin/tftp refuse every write request.
	s.srv = tftplib.NewServer(s.read, nil)
	// PXE ROMs retransmit slowly and some drop the first packets while
	// the link settles: a few seconds per try, five tries.
	s.srv.SetTimeout(5 * time.Second)
	s.srv.SetRetries(5)
	return s, nil
}

// SetMaxTransfers caps the transfers under way at once (n >= 1); a
// request past the cap gets an ERROR packet, counted as "busy".
func (s *Server) SetMaxTransfers(n int) {
	if n < 1 {
		n = 1
	}
	s.maxTransfers.Store(int64(n))
}

// SetWindow makes each transfer send up to n blocks before it waits for
// their ACKs (pin/tftp's sender anticipation, at most 60); n <= 1 is
// RFC 1350's lock step, the default. Clients need not know: they ACK
// each block as it comes. A block lost in a window costs the whole
// window again after the retransmit timeout. Call it before Serve.
func (s *Server) SetWindow(n int) {
	if n < 1 {
		n = 1
	}
	s.srv.SetAnticipate(uint(n))
}

// Listen opens the server's socket on addr (":69" in production).
func (s *Server) Listen(addr string) error {
	conn, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return fmt.Errorf("tftp listen %s: %w", addr, err)
	}
	// pin/tftp learns the receiving interface, and from its MTU the
	// largest blksize it may grant, from IP_PKTINFO, which it turns on
	// only once Serve runs: a request queued before then would get 512.
	// Turning it on here covers those too.
	if uc, ok := conn.(*net.UDPConn); ok {
		_ = ipv4.NewPacketConn(uc).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	}
	s.conn = conn
	return nil
}

// Addr is the address Listen bound.
func (s *Server) Addr() net.Addr { return s.conn.LocalAddr() }

// Close closes the socket that Listen opened, for a start that fails
// before Serve; Serve closes it itself when its context ends.
func (s *Server) Close() {
	if s.conn != nil {
		s.conn.Close()
	}
}

// Serve answers requests until ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	if s.conn == nil {
		return errors.New("tftp: Serve before Listen")
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			// Shutdown lets running transfers finish; closing the
			// socket unblocks the read loop in single-port mode.
			s.srv.Shutdown()
			s.conn.Close()
		case <-stopped:
		}
	}()
	err := s.srv.Serve(s.conn)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tftp serve on %s: %w", s.conn.LocalAddr(), err)
	}
	return nil
}

func (s *Server) read(name string, rf io.ReaderFrom) error {
	var client string
	ot, _ := rf.(tftplib.OutgoingTransfer)
	if ot != nil {
		addr := ot.RemoteAddr()
		client = addr.String()
	}
	if s.running.Add(1) > s.maxTransfers.Load() {
		s.running.Add(-1)
		s.transfers.WithLabelValues("busy").Inc()
		s.limited.Warn("busy", "tftp request refused: too many transfers under way (server.tftp_max_transfers)",
			"file", name, "client", client, "max", s.maxTransfers.Load())
		return errBusy
	}
	s.active.Inc()
	defer func() {
		s.running.Add(-1)
		s.active.Dec()
	}()
	log := s.log.With("file", name, "client", client)
	// refuse counts and logs err; the client is told toClient.
	refuse := func(err, toClient error) error {
		result := "refused"
		if errors.Is(err, fs.ErrNotExist) {
			result = "not-found"
		}
		s.transfers.WithLabelValues(result).Inc()
		log.Warn("tftp request refused", "result", result, "err", err)
		return toClient
	}
	path, err := Resolve(s.root, name)
	if err != nil {
		return refuse(err, err)
	}
	src, size, err := s.open(path)
	if err != nil {
		return refuse(err, fmt.Errorf("%s: cannot be read", name))
	}
	if c, ok := src.(io.Closer); ok {
		defer c.Close()
	}
	if ot != nil {
		ot.SetSize(size) // tsize (RFC 2349): iPXE and UEFI ask for it
	}
	start := time.Now()
	n, err := rf.ReadFrom(src)
	s.bytes.Add(float64(n))
	dur := time.Since(start).Round(time.Millisecond)
	if err != nil {
		s.transfers.WithLabelValues("failed").Inc()
		log.Warn("tftp transfer failed", "bytes", n, "size", size, "duration", dur, "err", err)
		return err
	}
	s.transfers.WithLabelValues("ok").Inc()
	log.Info("tftp sent", "bytes", n, "duration", dur)
	return nil
}

// open returns the file's contents to send. A burst of machines asks
// for the same few iPXE binaries, and pin/tftp reads its source one block
// per call: serving them from memory saves a read(2) per block, about a
// tenth of the server's CPU under load (see docs/BENCHMARKS.md). The
// cache entry is dropped when the file's size or mtime change.
func (s *Server) open(path string) (io.Reader, int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, errors.New("not a regular file")
	}
	if st.Size() > maxCached {
		f, err := os.Open(path)
		return f, st.Size(), err
	}
	s.mu.Lock()
	c, ok := s.cache[path]
	s.mu.Unlock()
	if ok && c.size == st.Size() && c.mtime.Equal(st.ModTime()) {
		return bytes.NewReader(c.data), c.size, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	if int64(len(data)) == st.Size() {
		s.remember(path, cachedFile{data: data, size: st.Size(), mtime: st.ModTime()})
	}
	return bytes.NewReader(data), int64(len(data)), nil
}

// remember caches c for path, replacing what was there, unless the cache
// would outgrow maxCache.
func (s *Server) remember(path string, c cachedFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cached -= int64(len(s.cache[path].data))
	delete(s.cache, path)
	if s.cached+c.size > maxCache {
		return
	}
	s.cache[path] = c
	s.cached += c.size
}

// Resolve maps a requested file name to a path inside root, refusing
// anything that could leave it: "..", NUL bytes, and symlinks that point
// outside. Leading slashes are dropped, since some firmwares send
// "/undionly.kpxe"; backslashes count as separators, as Windows-era
// ROMs send them.
func Resolve(root, name string) (string, error) {
	if name == "" || len(name) > 255 {
		return "", errors.New("bad file name length")
	}
	if strings.ContainsRune(name, 0) {
		return "", errors.New("NUL in file name")
	}
	clean := strings.ReplaceAll(name, `\`, "/")
	clean = strings.TrimLeft(clean, "/")
	for _, part := range strings.Split(clean, "/") {
		if part == ".." {
			return "", fmt.Errorf("%q leaves the TFTP root", name)
		}
	}
	if clean == "" || !fs.ValidPath(filepath.ToSlash(filepath.Clean(clean))) {
		return "", fmt.Errorf("%q is not a valid file name", name)
	}
	path := filepath.Join(root, filepath.FromSlash(clean))
	real, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%q: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		// The underlying error names server paths; the client gets less.
		return "", fmt.Errorf("%q cannot be read", name)
	}
	rootReal, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", err
	}
	if real != rootReal && !strings.HasPrefix(real, rootReal+string(filepath.Separator)) {
		return "", fmt.Errorf("%q leaves the TFTP root through a symlink", name)
	}
	return real, nil
}

// ipxeDirs are where operating systems install iPXE's binaries: Debian
// and Ubuntu, Fedora, and a NixOS system profile.
var ipxeDirs = []string{"/usr/lib/ipxe", "/usr/share/ipxe", "/run/current-system/sw/share/ipxe"}

// nixIPXE matches pkgs.ipxe's output, which holds the binaries at its
// top level, so a NixOS host finds them even when no profile links them.
const nixIPXE = "/nix/store/*-ipxe-*"

// FindIPXEDir returns override if given, else the first directory that
// holds iPXE's binaries (undionly.kpxe for BIOS or ipxe.efi for UEFI).
func FindIPXEDir(override string) (string, error) {
	if override != "" {
		if !hasIPXE(override) {
			return "", fmt.Errorf("ipxe dir %s holds neither undionly.kpxe nor ipxe.efi: point it at the ipxe package's directory", override)
		}
		return override, nil
	}
	for _, d := range ipxeDirs {
		if hasIPXE(d) {
			return d, nil
		}
	}
	// Store paths sort by hash, not version: take any one that works.
	nix, _ := filepath.Glob(nixIPXE)
	for _, d := range nix {
		if hasIPXE(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no iPXE binaries (undionly.kpxe or ipxe.efi) in %s or %s: install them (Debian/Ubuntu: apt install ipxe; Fedora: dnf install ipxe-bootimgs-x86; NixOS: add pkgs.ipxe) or set server.ipxe_dir",
		strings.Join(ipxeDirs, ", "), nixIPXE)
}

func hasIPXE(dir string) bool {
	for _, f := range []string{"undionly.kpxe", "ipxe.efi"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err == nil && st.Mode().IsRegular() {
			return true
		}
	}
	return false
}
