package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
)

const machinesTestToken = "api-token-for-machines-test"

// fakeInventory holds two machines. Like the real store it answers at
// most pageSize events or log lines per call, so the CLI must page. The
// install of web-01 moves on by one log line each time its state is
// asked for, so "logs -f" must poll to see it all. It refuses MACs it
// does not know, as the real store does.
type fakeInventory struct {
	mu       sync.Mutex
	pageSize int
	events   []admin.EventView
	log      []admin.LogView
	pending  []string // lines that later state polls reveal, one per poll
	logAfter []int64  // the cursors Log was asked with
	done     []string
}

func newFakeInventory() *fakeInventory {
	return &fakeInventory{
		pageSize: 2,
		events: []admin.EventView{
			{ID: 1, Time: time.Date(2026, 11, 28, 9, 58, 0, 0, time.UTC), State: "booting", Message: "PXE boot, image nixos"},
			{ID: 2, Time: time.Date(2026, 11, 28, 9, 59, 0, 0, time.UTC), State: "installing", Phase: "disko", Message: "partitioning"},
		},
		log:     []admin.LogView{{Seq: 1, Line: "[probe] disks: /dev/vda"}},
		pending: []string{"[disko] formatting /dev/vda", "[nixos-install] done"},
	}
}

var testMachines = []admin.MachineView{
	{MAC: "52:54:00:00:00:01", Hostname: "web-01", Profile: "web", State: "installing", Phase: "disko", IP: "10.77.0.57",
		UpdatedAt: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)},
	{MAC: "52:54:00:00:00:02", Hostname: "db-01", Profile: "db", State: "failed", Error: "disko: exit 1\n/dev/sdb: no such device",
		UpdatedAt: time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC), DecidedBy: "rule", DecidedWhy: `rule "db" (rules[0]) matched: serial="SN-77" (pattern "SN-*") (after discovery)`,
		Facts: &admin.FactsView{Hardware: json.RawMessage(`{"vendor":"Acme","serial":"SN-77"}`), DHCP: json.RawMessage(`{"circuit_id":"Eth1/0/7"}`), Addr: "10.77.0.58"}},
}

func (f *fakeInventory) Machines(ctx context.Context) ([]admin.MachineView, error) {
	return testMachines, nil
}

func machineByMAC(mac string) (admin.MachineView, error) {
	for _, m := range testMachines {
		if m.MAC == mac {
			return m, nil
		}
	}
	return admin.MachineView{}, fmt.Errorf("%w: machine %s", admin.ErrNotFound, mac)
}

func (f *fakeInventory) Machine(ctx context.Context, mac string) (admin.MachineView, error) {
	m, err := machineByMAC(mac)
	if err != nil || mac != "52:54:00:00:00:01" {
		return m, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// The state is read before the next line appears, as the engine
	// writes its last line before it records the end.
	if len(f.pending) == 0 {
		m.State, m.Phase = "installed", ""
		return m, nil
	}
	f.log = append(f.log, admin.LogView{Seq: int64(len(f.log) + 1), Line: f.pending[0]})
	f.pending = f.pending[1:]
	return m, nil
}

// page is what the store answers: up to n items with an ID above after.
func page[T any](items []T, after int64, n int, id func(T) int64) []T {
	var out []T
	for _, it := range items {
		if id(it) > after && len(out) < n {
			out = append(out, it)
		}
	}
	return out
}

func (f *fakeInventory) Events(ctx context.Context, mac string, after int64) ([]admin.EventView, error) {
	if _, err := machineByMAC(mac); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return page(f.events, after, f.pageSize, func(e admin.EventView) int64 { return e.ID }), nil
}

func (f *fakeInventory) Log(ctx context.Context, mac string, after int64) ([]admin.LogView, error) {
	if _, err := machineByMAC(mac); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logAfter = append(f.logAfter, after)
	return page(f.log, after, f.pageSize, func(l admin.LogView) int64 { return l.Seq }), nil
}

func (f *fakeInventory) Reinstall(ctx context.Context, mac, by string) error {
	if by != "operator (API)" {
		return fmt.Errorf("reinstall by %q: the API must name itself", by)
	}
	if _, err := machineByMAC(mac); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = append(f.done, "reinstall "+mac)
	return nil
}

func (f *fakeInventory) Cancel(ctx context.Context, mac, by string) (string, error) {
	if by != "operator (API)" {
		return "", fmt.Errorf("cancel by %q: the API must name itself", by)
	}
	if mac != "52:54:00:00:00:01" {
		if _, err := machineByMAC(mac); err != nil {
			return "", err
		}
		return "", fmt.Errorf("%w: machine %s has no install running or queued: nothing to cancel", admin.ErrConflict, mac)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = append(f.done, "cancel "+mac)
	return "", nil
}

func (f *fakeInventory) Assign(ctx context.Context, mac, profile, hostname, by string) error {
	if by != "operator (API)" {
		return fmt.Errorf("assign by %q: the API must name itself", by)
	}
	if profile != "web" {
		return fmt.Errorf("%w: no profile %q in the config", admin.ErrInvalid, profile)
	}
	if _, err := machineByMAC(mac); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = append(f.done, "assign "+mac+" "+profile+" "+hostname)
	return nil
}

func (f *fakeInventory) Forget(ctx context.Context, mac, by string) error {
	if by != "operator (API)" {
		return fmt.Errorf("forget by %q: the API must name itself", by)
	}
	if mac == "52:54:00:00:00:01" {
		return fmt.Errorf("%w: machine %s is being installed; wait for it to end", admin.ErrConflict, mac)
	}
	if _, err := machineByMAC(mac); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = append(f.done, "forget "+mac)
	return nil
}

func (f *fakeInventory) LatestBoot(ctx context.Context, mac string) (admin.BootView, error) {
	return admin.BootView{}, fmt.Errorf("%w: no boot", admin.ErrNotFound)
}

func (f *fakeInventory) PhaseHistory(ctx context.Context) (map[string][]time.Duration, error) {
	return nil, nil
}

func (f *fakeInventory) Subscribe(ctx context.Context) <-chan admin.MachineView {
	ch := make(chan admin.MachineView)
	go func() { <-ctx.Done(); close(ch) }()
	return ch
}

func newMachinesServer(t *testing.T) (*fakeInventory, string, string) {
	t.Helper()
	inv := newFakeInventory()
	url, tokenFile := serveInventory(t, inv)
	return inv, url, tokenFile
}

// serveInventory serves inv's operator API on loopback and writes the
// token file a client needs.
func serveInventory(t *testing.T, inv *fakeInventory) (url, tokenFile string) {
	t.Helper()
	srv := httptest.NewServer(admin.New(admin.Config{
		APIToken: machinesTestToken,
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, inv))
	t.Cleanup(srv.Close)
	tokenFile = filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(tokenFile, []byte(machinesTestToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, tokenFile
}

func TestRunMachines(t *testing.T) {
	old := logPollInterval
	logPollInterval = time.Millisecond
	t.Cleanup(func() { logPollInterval = old })
	tests := []struct {
		name    string
		args    []string
		want    []string // substrings of stdout, in order
		wantErr string
		done    string
	}{
		{name: "list", args: []string{"list"}, want: []string{"MAC", "HOSTNAME", "52:54:00:00:00:01", "web-01", "installing", "disko", "10.77.0.57",
			"52:54:00:00:00:02", "db-01", "failed", "disko: exit 1 /dev/sdb: no such device"}},
		{name: "list json", args: []string{"list", "--json"}, want: []string{`"mac": "52:54:00:00:00:01"`, `"updated_at": "2026-11-28T10:00:00Z"`}},
		{name: "show with flag after MAC", args: []string{"show", "52-54-00-00-00-01", "--json"}, want: []string{`"hostname": "web-01"`, `"events": [`, `"partitioning"`}},
		{name: "show table", args: []string{"show", "52:54:00:00:00:01"}, want: []string{"Hostname:", "web-01", "Events:", "booting", "PXE boot, image nixos", "disko", "partitioning"}},
		{name: "show facts and who decided", args: []string{"show", "52:54:00:00:00:02"}, want: []string{"Decided by:", `rule: rule "db" (rules[0]) matched: serial="SN-77"`, "Facts:", `"vendor": "Acme"`, `"circuit_id": "Eth1/0/7"`, "Events:"}},
		{name: "show unknown", args: []string{"show", "52:54:00:00:00:09"}, wantErr: "server: not found: machine 52:54:00:00:00:09 (HTTP 404)"},
		{name: "logs once", args: []string{"logs", "52:54:00:00:00:01"}, want: []string{"[probe] disks: /dev/vda\n"}},
		{name: "logs follow to the end", args: []string{"logs", "-f", "52:54:00:00:00:01"},
			want: []string{"[probe] disks", "[disko] formatting /dev/vda", "[nixos-install] done", "-- 52:54:00:00:00:01 installed --"}},
		{name: "reinstall", args: []string{"reinstall", "52:54:00:00:00:02"}, want: []string{"52:54:00:00:00:02: reinstall requested"}, done: "reinstall 52:54:00:00:00:02"},
		{name: "cancel", args: []string{"cancel", "52:54:00:00:00:01"}, want: []string{"52:54:00:00:00:01: install cancelled: the machine is failed (cancelled by operator)"}, done: "cancel 52:54:00:00:00:01"},
		{name: "cancel without install", args: []string{"cancel", "52:54:00:00:00:02"}, wantErr: "has no install running or queued: nothing to cancel (HTTP 409)"},
		{name: "forget", args: []string{"forget", "52-54-00-00-00-02"}, want: []string{"52:54:00:00:00:02: forgotten"}, done: "forget 52:54:00:00:00:02"},
		{name: "forget refused while installing", args: []string{"forget", "52:54:00:00:00:01"}, wantErr: "is being installed"},
		{name: "assign", args: []string{"assign", "52:54:00:00:00:02", "web", "--hostname", "web-07"}, want: []string{"52:54:00:00:00:02: assigned"}, done: "assign 52:54:00:00:00:02 web web-07"},
		{name: "assign unknown profile", args: []string{"assign", "52:54:00:00:00:02", "wbe"}, wantErr: `no profile "wbe" in the config (HTTP 400)`},
		{name: "assign wants a profile", args: []string{"assign", "52:54:00:00:00:02"}, wantErr: "want MAC PROFILE"},
		{name: "bad mac", args: []string{"show", "web-01"}, wantErr: "not an Ethernet MAC"},
		{name: "missing mac", args: []string{"reinstall"}, wantErr: "want exactly one MAC"},
		{name: "list takes no args", args: []string{"list", "x"}, wantErr: "unexpected argument"},
		{name: "unknown subcommand", args: []string{"wipe"}, wantErr: `unknown subcommand "wipe"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv, url, tokenFile := newMachinesServer(t)
			var stdout, stderr bytes.Buffer
			args := append([]string{tt.args[0], "--server", url, "--token-file", tokenFile}, tt.args[1:]...)
			err := runMachines(context.Background(), args, &stdout, &stderr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("runMachines %v: %v (stderr %s)", tt.args, err, stderr.String())
			}
			out := stdout.String()
			rest := out
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order):\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
			if tt.done != "" && strings.Join(inv.done, ",") != tt.done {
				t.Fatalf("inventory changes %v, want %q", inv.done, tt.done)
			}
		})
	}
}

// TestRunMachinesPages checks that "logs" and "show" ask page after
// page until the server has nothing more, where one page once was all.
func TestRunMachinesPages(t *testing.T) {
	inv := newFakeInventory()
	inv.pageSize = 5
	inv.pending = nil
	inv.events, inv.log = nil, nil
	var wantLog, wantEvents []string
	for i := int64(1); i <= 12; i++ {
		inv.events = append(inv.events, admin.EventView{ID: i, State: "installing", Message: fmt.Sprintf("event %02d", i)})
		inv.log = append(inv.log, admin.LogView{Seq: i, Line: fmt.Sprintf("line %02d", i)})
		wantEvents = append(wantEvents, fmt.Sprintf("event %02d", i))
		wantLog = append(wantLog, fmt.Sprintf("line %02d", i))
	}
	url, tokenFile := serveInventory(t, inv)
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		var stdout bytes.Buffer
		args = append([]string{args[0], "--server", url, "--token-file", tokenFile}, args[1:]...)
		if err := runMachines(context.Background(), args, &stdout, io.Discard); err != nil {
			t.Fatalf("runMachines %v: %v", args, err)
		}
		return stdout.String()
	}

	t.Run("logs", func(t *testing.T) {
		inv.mu.Lock()
		inv.logAfter = nil
		inv.mu.Unlock()
		got := strings.Split(strings.TrimSuffix(run(t, "logs", "52:54:00:00:00:01"), "\n"), "\n")
		if !slices.Equal(got, wantLog) {
			t.Errorf("logs printed\n%q\nwant\n%q", got, wantLog)
		}
		inv.mu.Lock()
		defer inv.mu.Unlock()
		if want := []int64{0, 5, 10, 12}; !slices.Equal(inv.logAfter, want) {
			t.Errorf("log cursors %v, want %v: three pages and an empty one", inv.logAfter, want)
		}
	})
	t.Run("logs -f", func(t *testing.T) {
		got := strings.Split(strings.TrimSuffix(run(t, "logs", "-f", "52:54:00:00:00:01"), "\n"), "\n")
		want := append(slices.Clone(wantLog), "-- 52:54:00:00:00:01 installed --")
		if !slices.Equal(got, want) {
			t.Errorf("logs -f printed\n%q\nwant\n%q", got, want)
		}
	})
	t.Run("show json", func(t *testing.T) {
		var m struct {
			Events []admin.EventView `json:"events"`
		}
		if err := json.Unmarshal([]byte(run(t, "show", "--json", "52:54:00:00:00:01")), &m); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range m.Events {
			got = append(got, e.Message)
		}
		if !slices.Equal(got, wantEvents) {
			t.Errorf("show --json --no-write-lock-file events %q, want %q", got, wantEvents)
		}
	})
	t.Run("show table", func(t *testing.T) {
		out := run(t, "show", "52:54:00:00:00:01")
		rest := out
		for _, w := range wantEvents {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Fatalf("show lacks %q (in order):\n%s", w, out)
			}
			rest = rest[i+len(w):]
		}
	})
}

// TestRunMachinesStuckCursor: a server that answers the same page
// whatever the cursor must not keep the client looping.
func TestRunMachinesStuckCursor(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !strings.HasSuffix(r.URL.Path, "/log") && !strings.HasSuffix(r.URL.Path, "/events") {
			io.WriteString(w, `{"mac": "52:54:00:00:00:01", "state": "installing"}`)
			return
		}
		io.WriteString(w, `[{"seq": 1, "id": 1, "line": "again", "state": "installing", "message": "again"}]`)
	}))
	t.Cleanup(srv.Close)
	tokenFile := filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(tokenFile, []byte(machinesTestToken), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"logs", "show"} {
		t.Run(sub, func(t *testing.T) {
			err := runMachines(context.Background(), []string{sub, "--server", srv.URL, "--token-file", tokenFile, "52:54:00:00:00:01"}, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "with nothing newer") {
				t.Fatalf("error %v, want one about the cursor not moving", err)
			}
		})
	}
}

func TestRunMachinesJSONIsParseable(t *testing.T) {
	_, url, tokenFile := newMachinesServer(t)
	var stdout bytes.Buffer
	if err := runMachines(context.Background(), []string{"list", "--json", "--server", url, "--token-file", tokenFile}, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	var ms []admin.MachineView
	if err := json.Unmarshal(stdout.Bytes(), &ms); err != nil || len(ms) != 2 || ms[1].Error == "" {
		t.Fatalf("list --json: %v %+v", err, ms)
	}
}

func TestRunMachinesErrors(t *testing.T) {
	_, url, _ := newMachinesServer(t)
	dir := t.TempDir()
	wrong := filepath.Join(dir, "wrong")
	empty := filepath.Join(dir, "empty")
	os.WriteFile(wrong, []byte("not-the-token\n"), 0o600)
	os.WriteFile(empty, nil, 0o600)
	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	tests := []struct {
		name, server, tokenFile, wantErr string
	}{
		{"wrong token", url, wrong, "wrong API token (see --token-file)"},
		{"empty token file", url, empty, "is empty"},
		{"no token file", url, filepath.Join(dir, "absent"), "reading the API token"},
		{"unreachable", closed, wrong, "unreachable"},
		{"bad server url", "10.77.0.1:8080", wrong, "want a URL like"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runMachines(context.Background(), []string{"list", "--server", tt.server, "--token-file", tt.tokenFile}, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	t.Run("env defaults", func(t *testing.T) {
		t.Setenv("PXE_ANYWHERE_SERVER", url)
		t.Setenv("PXE_ANYWHERE_TOKEN_FILE", wrong)
		err := runMachines(context.Background(), []string{"list"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "wrong API token") {
			t.Fatalf("error %v: the env defaults were not used", err)
		}
	})
}

// TestAPIClientFlags covers the client that "config reload" shares.
func TestAPIClientFlags(t *testing.T) {
	_, url, tokenFile := newMachinesServer(t)
	c, err := newAPIClientFlags("config reload", []string{"--server", url + "/", "--token-file", tokenFile}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// The test server has no Reload hook, so the API says so.
	err = c.do(context.Background(), "POST", "/api/v1/config/reload", nil)
	if err == nil || !strings.Contains(err.Error(), "this server cannot reload (HTTP 501)") {
		t.Fatalf("reload: %v", err)
	}
	if _, err := newAPIClientFlags("config reload", []string{"--server", url, "--token-file", tokenFile, "extra"}, io.Discard); err == nil {
		t.Fatal("an extra argument was accepted")
	}
}

func TestStateText(t *testing.T) {
	tests := []struct {
		name string
		m    admin.MachineView
		want string
	}{
		{"plain", admin.MachineView{State: "installed"}, "installed"},
		{"reinstall", admin.MachineView{State: "installed", Reinstall: true}, "installed (reinstall pending)"},
		{"held", admin.MachineView{State: "failed", Held: true}, "failed (held: security event; reinstall to arm)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := stateText(tt.m); got != tt.want {
				t.Fatalf("stateText = %q, want %q", got, tt.want)
			}
		})
	}
}
