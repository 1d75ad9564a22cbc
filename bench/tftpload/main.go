// Command tftpload is the benchmark's TFTP load generator: N goroutines
// each fetch files from one server at the same time, and it prints one
// line of key=value results (completion time, throughput, errors). One
// process with goroutines rather than N tftp processes, so that the
// generator does not eat the two cores the server also needs.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/pxe-anywhere/pxe-anywhere/bench/internal/loadstat"
)

func main() {
	server := flag.String("server", "10.77.0.1:69", "TFTP server `host:port`")
	files := flag.String("files", "undionly.kpxe", "comma-separated `names`; client i fetches files[i%len]")
	clients := flag.Int("c", 1, "concurrent clients")
	rounds := flag.Int("rounds", 1, "files each client fetches one after the other")
	blksize := flag.Int("blksize", 512, "TFTP blksize option (512 sends none)")
	timeout := flag.Duration("timeout", 2*time.Second, "per-packet timeout before a retransmit")
	flag.Parse()
	names := strings.Split(*files, ",")

	var (
		rec loadstat.Recorder
		wg  sync.WaitGroup
	)
	start := time.Now()
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for r := 0; r < *rounds; r++ {
				t0 := time.Now()
				n, err := fetch(*server, names[(i+r)%len(names)], *blksize, *timeout)
				rec.Add(time.Since(t0), n, err)
			}
		}(i)
	}
	wg.Wait()
	wall := time.Since(start)
	s := rec.Summary()
	fmt.Printf("wall_s=%.3f bytes=%d mbps=%.1f transfers=%d errors=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
		wall.Seconds(), s.Bytes, s.Mbps(wall), s.OK, s.Errors, ms(s.Pct(50)), ms(s.Pct(99)), ms(s.Pct(100)))
	if s.FirstErr != nil {
		fmt.Fprintln(os.Stderr, "tftpload: first error:", s.FirstErr)
		os.Exit(1)
	}
}

func fetch(server, name string, blksize int, timeout time.Duration) (int64, error) {
	c, err := tftp.NewClient(server)
	if err != nil {
		return 0, fmt.Errorf("tftp client for %s: %w", server, err)
	}
	c.SetTimeout(timeout)
	c.SetRetries(5)
	if blksize != 512 {
		c.SetBlockSize(blksize)
	}
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return 0, fmt.Errorf("RRQ %s from %s: %w", name, server, err)
	}
	n, err := wt.WriteTo(io.Discard)
	if err != nil {
		return n, fmt.Errorf("receiving %s from %s after %d bytes: %w", name, server, n, err)
	}
	return n, nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
