package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
)

// fakePower records what the CLI asked through the real admin API; the
// BMC side itself is tested in power and provision.
type fakePower struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakePower) Power(_ context.Context, mac, action, by string) (admin.PowerView, error) {
	f.mu.Lock()
	f.calls = append(f.calls, action+" "+mac+" by "+by)
	f.mu.Unlock()
	if mac == "52:54:00:00:00:02" {
		return admin.PowerView{}, fmt.Errorf("%w: BMC ipmi 10.0.0.9:623: on: BMC did not answer in time", admin.ErrBMC)
	}
	v := admin.PowerView{MAC: mac, Action: action, Status: "power " + action + " through BMC ipmi 10.0.0.8: done"}
	if action == admin.PowerStatus {
		v.Power, v.Status = "on", "power is on"
	}
	return v, nil
}

func (f *fakePower) ReinstallPowerCycle(_ context.Context, mac, by string) (admin.PowerView, error) {
	f.mu.Lock()
	f.calls = append(f.calls, "reinstall+cycle "+mac+" by "+by)
	f.mu.Unlock()
	return admin.PowerView{MAC: mac, Status: "reinstall armed; BMC ipmi 10.0.0.8 power-cycled the machine",
		Warnings: []string{"BMC ipmi 10.0.0.8 does not set the boot device"}}, nil
}

func TestMachinesPower(t *testing.T) {
	pw := &fakePower{}
	srv := httptest.NewServer(admin.New(admin.Config{APIToken: machinesTestToken,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Power: pw}, newFakeInventory()))
	t.Cleanup(srv.Close)
	tokenFile := filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(tokenFile, []byte(machinesTestToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		wantErr string
		call    string
	}{
		{"status", []string{"power", "52:54:00:00:00:01", "status"}, "52:54:00:00:00:01: power is on", "", "status 52:54:00:00:00:01 by operator (API)"},
		{"cycle", []string{"power", "52-54-00-00-00-01", "cycle"}, "power cycle through BMC ipmi 10.0.0.8: done", "", "cycle 52:54:00:00:00:01 by operator (API)"},
		{"status json", []string{"power", "--json", "52:54:00:00:00:01", "status"}, `"power": "on"`, "", "status 52:54:00:00:00:01 by operator (API)"},
		{"BMC failure", []string{"power", "52:54:00:00:00:02", "on"}, "", "BMC did not answer in time (HTTP 502)", "on 52:54:00:00:00:02 by operator (API)"},
		{"bad action", []string{"power", "52:54:00:00:00:01", "reset"}, "", `action "reset": want on, off, cycle or status`, ""},
		{"no action", []string{"power", "52:54:00:00:00:01"}, "", "want MAC and one of on, off, cycle, status", ""},
		{"reinstall power cycle", []string{"reinstall", "--power-cycle", "52:54:00:00:00:01"},
			"52:54:00:00:00:01: warning: BMC ipmi 10.0.0.8 does not set the boot device\n52:54:00:00:00:01: reinstall armed", "", "reinstall+cycle 52:54:00:00:00:01 by operator (API)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pw.mu.Lock()
			pw.calls = nil
			pw.mu.Unlock()
			var stdout, stderr bytes.Buffer
			args := append([]string{tc.args[0], "--server", srv.URL, "--token-file", tokenFile}, tc.args[1:]...)
			err := runMachines(context.Background(), args, &stdout, &stderr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
			} else if err != nil || !strings.Contains(stdout.String(), tc.want) {
				t.Fatalf("runMachines = %v, output %q; want %q", err, stdout.String(), tc.want)
			}
			pw.mu.Lock()
			defer pw.mu.Unlock()
			if got := strings.Join(pw.calls, ","); got != tc.call {
				t.Fatalf("server calls %q, want %q", got, tc.call)
			}
		})
	}
	// A server without power control says so.
	url, tf := serveInventory(t, newFakeInventory())
	var out bytes.Buffer
	err := runMachines(context.Background(), []string{"power", "--server", url, "--token-file", tf, "52:54:00:00:00:01", "on"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "no power control (HTTP 501)") {
		t.Fatalf("without power control: %v", err)
	}

	// The power routes need the API token, like every other action.
	pw.mu.Lock()
	pw.calls = nil
	pw.mu.Unlock()
	for _, path := range []string{"/api/v1/machines/52:54:00:00:00:01/power/on", "/api/v1/machines/52:54:00:00:00:01/reinstall?power_cycle=1"} {
		resp, err := http.Post(srv.URL+path, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("POST %s without token: %d", path, resp.StatusCode)
		}
	}
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if len(pw.calls) != 0 {
		t.Fatalf("calls without a token reached the BMC: %v", pw.calls)
	}
}
