package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/ipxescript"
	"github.com/pxe-anywhere/pxe-anywhere/internal/netlab"
	"github.com/pxe-anywhere/pxe-anywhere/internal/syncbuf"
	"github.com/pxe-anywhere/pxe-anywhere/store"
)

// TestServeDatabaseRestartUnderLoad: a real server on a real PostgreSQL
// answers a stream of boot-script requests (one per machine, each a new
// boot with its token) while PostgreSQL restarts. Every script the
// server answered 200 carries a token that is in the database
// afterwards (nothing acknowledged is lost); the others were refused
// with 503 (the store unavailable), never another error; and the
// server answers again after the restart.
func TestServeDatabaseRestartUnderLoad(t *testing.T) {
	netlab.Require(t, "curl")
	ctx := context.Background()
	fx := newPGServe(t)
	pg, dbname, dir, bin, ipxe := fx.pg, fx.db, fx.dir, fx.bin, fx.ipxe
	const n = 150
	var machines strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&machines, "  - {mac: \"52:54:00:8f:%02x:%02x\", profile: web}\n", i/256, i%256)
	}
	cfg := fx.writeConfig(t, "config.yaml", filepath.Join(dir, "state"),
		"  trust: mac\n  boot_scripts_per_minute: 100000\n", "10.144.0", "machines:\n"+machines.String())
	lab := netlab.New(t, "10.144.0.0/24")
	cl := lab.Client("52:54:00:8f:ff:ff")
	lab.Run(cl, "ip", "addr", "add", "10.144.0.50/24", "dev", "eth0")
	logs := serveInLab(t, lab, bin, "serve", "--config", cfg, "--ipxe-dir", ipxe).logs
	// One request per machine, in order, each bounded; a file per
	// answer: the body, then the status on the last line.
	out := filepath.Join(dir, "answers")
	os.Mkdir(out, 0o755)
	script := fmt.Sprintf(`for i in $(seq 0 %d); do
  mac=$(printf '52-54-00-8f-%%02x-%%02x' $((i/256)) $((i%%256)))
  until curl -s --max-time 5 -o /dev/null http://10.144.0.1:8080/healthz; do sleep 0.1; done
  curl -s --max-time 15 -w '\n%%{http_code}' http://10.144.0.1:8080/boot/$mac.ipxe > %s/$i
  sleep 0.02
done`, n-1, out)
	load := lab.Command(cl, "sh", "-c", script)
	var loadOut syncbuf.Buffer
	load.Stdout, load.Stderr = &loadOut, &loadOut
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	// Restart PostgreSQL once a third of the machines have booted.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(out, fmt.Sprint(n/3))); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the load did not get going:\n%s", loadOut.String())
		}
	}
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := load.Wait(); err != nil {
		t.Fatalf("load: %v\n%s", err, loadOut.String())
	}
	st, err := store.OpenPostgres(ctx, store.PostgresOptions{URL: pg.URLWithoutPassword(dbname), Password: pg.Password})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	codes := map[string]int{}
	lastOK := -1
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(out, fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		body, code, _ := strings.Cut(string(b), "\n")
		if j := strings.LastIndex(string(b), "\n"); j >= 0 {
			body, code = string(b[:j]), string(b[j+1:])
		}
		codes[code]++
		switch code {
		case "200":
			lastOK = i
			s, err := ipxescript.Parse([]byte(body))
			if err != nil || s.Token == "" {
				t.Fatalf("answer %d: no token (%v):\n%s", i, err, body)
			}
			if _, err := st.BootByToken(ctx, s.Token); err != nil {
				t.Errorf("answer %d: the server handed out token %s… but the database lost it: %v", i, s.Token[:8], err)
			}
		case "503":
		default:
			t.Errorf("answer %d: HTTP %s\n%s", i, code, body)
		}
	}
	if lastOK != n-1 {
		t.Errorf("the server did not answer after the restart: last 200 was request %d of %d", lastOK, n)
	}
	// The restart broke the server's connections (its listener says
	// so), and it went on.
	if !strings.Contains(logs.String(), "live updates from the other servers paused") {
		t.Error("the server never saw the database go away")
	}
	t.Logf("answers across the restart: %v", codes)
}
