package profiles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDatabaseKeys: server.database selects PostgreSQL by URL; a
// password never sits in the config file, and a password file that
// others can read is refused, each error with file and line.
func TestDatabaseKeys(t *testing.T) {
	dir := t.TempDir()
	private := filepath.Join(dir, "pw")
	open := filepath.Join(dir, "open")
	os.WriteFile(private, []byte("s3cret\n"), 0o600)
	os.WriteFile(open, []byte("s3cret\n"), 0o644)
	tests := []struct {
		name   string
		server string
		want   string // "" means accepted
	}{
		{"unset: SQLite", "  max_installs: 2\n", ""},
		{"URL", "  database: postgres://pxe@db.example/pxe?sslmode=verify-full\n", ""},
		{"URL and password file", "  database: postgresql://pxe@/pxe?host=/run/postgresql\n  database_password_file: " + private + "\n", ""},
		{"password in the URL", "  database: postgres://pxe:hunter2@db/pxe\n", "pxe.yaml:10: server.database: holds a password"},
		{"password parameter", "  database: postgres://pxe@db/pxe?password=hunter2\n", "pxe.yaml:10: server.database: holds a password"},
		{"other engine", "  database: mysql://pxe@db/pxe\n", `pxe.yaml:10: server.database: scheme "mysql": only PostgreSQL is supported`},
		{"open password file", "  database: postgres://pxe@db/pxe\n  database_password_file: " + open + "\n", "pxe.yaml:11: server.database_password_file: " + open + " is readable by others (mode 644): chmod 600 it"},
		{"missing password file", "  database: postgres://pxe@db/pxe\n  database_password_file: " + dir + "/nope\n", "pxe.yaml:11: server.database_password_file: stat " + dir + "/nope: no such file"},
		{"password file alone", "  database_password_file: " + private + "\n", "pxe.yaml:10: server.database_password_file: without server.database"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("pxe.yaml", []byte(base+"server:\n  interfaces: [br0]\n"+tt.server))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(tt.server, "database:") == (c.Server.Database == "") {
					t.Fatalf("database %q", c.Server.Database)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
}

// TestServerIDAndClaimLease: server.id names the server in install
// claims; server.claim_lease bounds how long a dead server's installs
// stay claimed. Bad values are errors with file and line.
func TestServerIDAndClaimLease(t *testing.T) {
	tests := []struct {
		name, server string
		id           string
		lease        time.Duration
		want         string // "" means accepted
	}{
		{"defaults", "  max_installs: 2\n", "", DefaultClaimLease, ""},
		{"set", "  id: rack1.dc-2\n  claim_lease: 10s\n", "rack1.dc-2", 10 * time.Second, ""},
		{"bad id", "  id: \"rack 1\"\n", "", 0, `pxe.yaml:10: server.id: bad server id "rack 1"`},
		{"long id", "  id: " + strings.Repeat("a", 65) + "\n", "", 0, "pxe.yaml:10: server.id: bad server id"},
		{"short lease", "  claim_lease: 1s\n", "", 0, `pxe.yaml:10: server.claim_lease: bad duration "1s"`},
		{"not a duration", "  claim_lease: soon\n", "", 0, `pxe.yaml:10: server.claim_lease: bad duration "soon"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("pxe.yaml", []byte(base+"server:\n  interfaces: [br0]\n"+tt.server))
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v, want %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Server.ID != tt.id || c.Server.ClaimLease != tt.lease {
				t.Fatalf("id %q lease %s, want %q %s", c.Server.ID, c.Server.ClaimLease, tt.id, tt.lease)
			}
		})
	}
}
