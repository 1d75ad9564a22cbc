// Command callback is the test installer image's "I am up" call to the
// pxe-anywhere server: it POSTs {"token","address"} as JSON to the
// callback URL from the kernel command line, retrying until the server
// answers 2xx. It exists because busybox wget segfaults in that image.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	url := flag.String("url", "", "callback URL (pxe_anywhere.callback=)")
	token := flag.String("token", "", "boot token (pxe_anywhere.token=)")
	address := flag.String("address", "", "this machine's IP address")
	tries := flag.Int("tries", 60, "attempts before giving up")
	wait := flag.Duration("wait", 2*time.Second, "pause between attempts")
	flag.Parse()
	if *url == "" || *token == "" {
		fmt.Fprintln(os.Stderr, "callback: -url and -token are required (from pxe_anywhere.callback= and pxe_anywhere.token=)")
		os.Exit(2)
	}
	body, err := json.Marshal(struct {
		Token   string `json:"token"`
		Address string `json:"address,omitempty"`
	}{*token, *address})
	if err != nil {
		fmt.Fprintln(os.Stderr, "callback:", err)
		os.Exit(1)
	}
	for i := 1; i <= *tries; i++ {
		err := post(*url, body)
		if err == nil {
			fmt.Printf("callback: %s accepted (attempt %d)\n", *url, i)
			return
		}
		fmt.Fprintf(os.Stderr, "callback: attempt %d/%d: %v\n", i, *tries, err)
		time.Sleep(*wait)
	}
	fmt.Fprintf(os.Stderr, "callback: %s: gave up after %d attempts\n", *url, *tries)
	os.Exit(1)
}

func post(url string, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("request for %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s: %s", url, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
