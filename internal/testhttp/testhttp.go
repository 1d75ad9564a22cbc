// Package testhttp sends the requests of the HTTP tests: one request
// with its headers, the whole body read, bounded in time so that a
// handler that never ends fails its test instead of hanging it. It is
// used only by tests.
package testhttp

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Do sends method url with body (JSON when not empty) and the header
// pairs in hdr through c, and returns the response and its body. An
// event stream has no end: its body is what arrived within 5 seconds.
func Do(t testing.TB, c *http.Client, method, url, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}
