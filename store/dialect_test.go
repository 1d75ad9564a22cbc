package store

import (
	"strings"
	"testing"
)

// TestPostgresDialect: the rewrites leave none of SQLite's spellings in
// PostgreSQL's DDL and queries, and number placeholders outside quotes
// only.
func TestPostgresDialect(t *testing.T) {
	for i, m := range migrations {
		ddl := postgresDialect.schema(m)
		for _, word := range []string{"AUTOINCREMENT", "BLOB", "INTEGER"} {
			if strings.Contains(ddl, word) {
				t.Errorf("migration %d for PostgreSQL still says %s:\n%s", i+1, word, ddl)
			}
		}
	}
	tests := []struct{ in, want string }{
		{`SELECT a FROM t WHERE b = ? AND c = ?`, `SELECT a FROM t WHERE b = $1 AND c = $2`},
		{`UPDATE boots SET host_key_private = x'' WHERE token = ?`, `UPDATE boots SET host_key_private = ''::bytea WHERE token = $1`},
		{`SELECT '?', ? FROM t LIMIT -1 OFFSET ?`, `SELECT '?', $1 FROM t OFFSET $2`},
	}
	for _, tt := range tests {
		if got := postgresDialect.rewrite(tt.in); got != tt.want {
			t.Errorf("rewrite(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got := sqliteDialect.rewrite(tt.in); got != tt.in {
			t.Errorf("SQLite rewrote %q to %q", tt.in, got)
		}
	}
}
