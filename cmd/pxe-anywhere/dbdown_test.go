package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
)

// TestServeDatabaseDown: while PostgreSQL is down, every kind of boot
// script request (a configured machine, an unlisted one that a
// MAC-prefix rule matches, an unknown one under discovery) is answered
// 503 with Retry-After, never 500: the machine retries. /healthz names
// the failing store. Once PostgreSQL is back, the same requests get
// their scripts without a restart of the server.
func TestServeDatabaseDown(t *testing.T) {
	netlab.Require(t, "curl")
	ctx := context.Background()
	fx := newPGServe(t)
	cfg := fx.writeConfig(t, "config.yaml", filepath.Join(fx.dir, "state"),
		"  trust: mac\n  unknown_machines: discover\n  discover_image: test\n", "10.145.0", `rules:
  - {name: rack, match: {mac_prefix: "52:54:00:90"}, profile: web, hostname: "r-{mac}"}
machines:
  - {mac: "52:54:00:91:00:01", profile: web}
`)
	lab := netlab.New(t, "10.145.0.0/24")
	cl := lab.Client("52:54:00:91:ff:ff")
	lab.Run(cl, "ip", "addr", "add", "10.145.0.50/24", "dev", "eth0")
	serveInLab(t, lab, fx.bin, "serve", "--config", cfg, "--ipxe-dir", fx.ipxe)
	// get fetches url from the client: the status, the Retry-After
	// header and the body.
	get := func(url string) (code, retryAfter, body string) {
		out, _ := lab.Command(cl, "curl", "-s", "--max-time", "15", "-D", "-", url).CombinedOutput()
		head, body, _ := strings.Cut(strings.ReplaceAll(string(out), "\r\n", "\n"), "\n\n")
		lines := strings.Split(head, "\n")
		if f := strings.Fields(lines[0]); len(f) >= 2 {
			code = f[1]
		}
		for _, l := range lines[1:] {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "Retry-After") {
				retryAfter = strings.TrimSpace(v)
			}
		}
		return code, retryAfter, body
	}
	base := "http://10.145.0.1:8080"
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if code, _, _ := get(base + "/healthz"); code == "200" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server did not answer within a minute")
		}
	}
	scripts := map[string]string{
		"configured machine":     "52-54-00-91-00-01",
		"machine a rule matches": "52-54-00-90-00-07",
		"unknown machine":        "52-54-00-92-00-01",
	}
	if err := fx.pg.Down(); err != nil {
		t.Fatal(err)
	}
	for what, mac := range scripts {
		code, retry, body := get(base + "/boot/" + mac + ".ipxe")
		if code != "503" || retry == "" || !strings.Contains(body, "state store") {
			t.Errorf("%s with the database down: HTTP %s, Retry-After %q, want 503 with Retry-After:\n%s", what, code, retry, body)
		}
	}
	if code, _, body := get(base + "/healthz"); code != "503" || !strings.Contains(body, "state store fails") {
		t.Errorf("/healthz with the database down: HTTP %s, want 503 naming the store:\n%s", code, body)
	}
	if err := fx.pg.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for what, mac := range scripts {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			code, _, body := get(base + "/boot/" + mac + ".ipxe")
			if code == "200" && strings.Contains(body, "#!ipxe") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after the database came back: HTTP %s\n%s", what, code, body)
			}
		}
	}
}
