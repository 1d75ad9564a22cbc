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
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pin/tftp/v3"
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
		mu       sync.Mutex
		lat      []time.Duration
		total    int64
		errs     int
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for r := 0; r < *rounds; r++ {
				name := names[(i+r)%len(names)]
				t0 := time.Now()
				n, err := fetch(*server, name, *blksize, *timeout)
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					total += n
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	wall := time.Since(start)
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	fmt.Printf("wall_s=%.3f bytes=%d mbps=%.1f transfers=%d errors=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
		wall.Seconds(), total, float64(total)*8/1e6/wall.Seconds(), len(lat), errs,
		pct(lat, 50), pct(lat, 99), pct(lat, 100))
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "tftpload: first error:", firstErr)
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

// pct returns the p-th percentile of sorted durations in milliseconds.
func pct(sorted []time.Duration, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	return float64(sorted[i]) / 1e6
}
