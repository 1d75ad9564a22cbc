package profiles

import (
	"strings"
	"testing"
	"time"
)

// TestLimits: the protocol bounds have defaults, take
// values, and refuse values that would disable them.
func TestLimits(t *testing.T) {
	set := base + `server:
  tftp_max_transfers: 16
  http_header_timeout: 5s
  http_read_timeout: 1m
  http_idle_timeout: 90s
  http_write_timeout: 45s
  boot_max_per_source: 2
  boot_scripts_per_minute: 10
  sse_write_timeout: 3s
  sse_max_subscribers: 4
  tftp_window: 8
`
	c, err := Parse("pxe.yaml", []byte(set))
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{TFTPMaxTransfers: 16, TFTPWindow: 8, HTTPHeaderTimeout: 5 * time.Second, HTTPReadTimeout: time.Minute,
		HTTPIdleTimeout: 90 * time.Second, HTTPWriteTimeout: 45 * time.Second, BootMaxPerSource: 2,
		BootScriptsPerMinute: 10, SSEWriteTimeout: 3 * time.Second, SSEMaxSubscribers: 4}
	if c.Server.Limits != want {
		t.Fatalf("Limits = %+v, want %+v", c.Server.Limits, want)
	}
	tests := []struct {
		name, in, want string
	}{
		{"window past pin/tftp's 60", "server:\n  tftp_window: 61\n", `pxe.yaml:9: server.tftp_window: bad number "61" (a whole number from 1 to 60)`},
		{"zero transfers", "server:\n  tftp_max_transfers: 0\n", `pxe.yaml:9: server.tftp_max_transfers: bad number "0" (a whole number from 1 to 65535)`},
		{"no unit", "server:\n  http_idle_timeout: 30\n", `pxe.yaml:9: server.http_idle_timeout: bad duration "30"`},
		{"zero write timeout", "server:\n  http_write_timeout: 0s\n", `pxe.yaml:9: server.http_write_timeout: bad duration "0s"`},
		{"header longer than request", "server:\n  http_header_timeout: 1m\n", `pxe.yaml:9: server.http_header_timeout: http_header_timeout 1m0s is longer than http_read_timeout 30s`},
		{"zero subscribers", "server:\n  sse_max_subscribers: 0\n", `server.sse_max_subscribers: bad number "0"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("pxe.yaml", []byte(base+tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
