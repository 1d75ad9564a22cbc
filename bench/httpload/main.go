// Command httpload is the benchmark's HTTP load generator: N concurrent
// downloads of one URL, bodies discarded, one line of key=value results.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/bench/internal/loadstat"
)

func main() {
	url := flag.String("url", "", "URL to download")
	clients := flag.Int("c", 1, "concurrent downloads")
	rounds := flag.Int("rounds", 1, "downloads each client makes one after the other")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "httpload: -url is required")
		os.Exit(2)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: *clients, DisableCompression: true}
	client := &http.Client{Transport: tr}

	var (
		rec loadstat.Recorder
		wg  sync.WaitGroup
	)
	start := time.Now()
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < *rounds; r++ {
				t0 := time.Now()
				n, err := get(client, *url)
				rec.Add(time.Since(t0), n, err)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	s := rec.Summary()
	fmt.Printf("wall_s=%.3f bytes=%d mbps=%.1f downloads=%d errors=%d p50_s=%.3f max_s=%.3f\n",
		wall.Seconds(), s.Bytes, s.Mbps(wall), s.OK, s.Errors, s.Pct(50).Seconds(), s.Pct(100).Seconds())
	if s.FirstErr != nil {
		fmt.Fprintln(os.Stderr, "httpload: first error:", s.FirstErr)
		os.Exit(1)
	}
}

func get(c *http.Client, url string) (int64, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return n, fmt.Errorf("GET %s: body after %d bytes: %w", url, n, err)
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("GET %s: status %s", url, resp.Status)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("GET %s: got %d of %d bytes", url, n, resp.ContentLength)
	}
	return n, nil
}
