package profiles

import (
	"net/url"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pxe-anywhere/pxe-anywhere/internal/privfile"
)

// database decodes server.database and server.database_password_file:
// a postgres:// URL without a password (the config file is no place
// for one), and a password file that only its owner may read.
func (d *decoder) database(s *Server, f map[string]*yaml.Node, w string) {
	d.setStr(&s.Database, f["database"], w+".database")
	d.setPath(&s.DatabasePasswordFile, f["database_password_file"], w+".database_password_file")
	const hint = `a URL like postgres://pxe@db.example/pxe?sslmode=verify-full; the password in database_password_file, PGPASSWORD or PGPASSFILE`
	if s.Database != "" {
		u, err := url.Parse(s.Database)
		switch {
		case err != nil:
			d.errf(f["database"], w+".database", hint, "not a URL")
		case u.Scheme != "postgres" && u.Scheme != "postgresql":
			d.errf(f["database"], w+".database", hint, "scheme %q: only PostgreSQL is supported (leave database unset for SQLite in state_dir)", u.Scheme)
		case u.Query().Has("password"):
			d.errf(f["database"], w+".database", hint, "holds a password")
		default:
			if _, set := u.User.Password(); set {
				d.errf(f["database"], w+".database", hint, "holds a password")
			}
		}
	}
	d.setStr(&s.ID, f["id"], w+".id")
	if s.ID != "" && !ValidServerID(s.ID) {
		d.errf(f["id"], w+".id", "1 to 64 letters, digits, '.', '_' or '-', like rack1", "bad server id %q", s.ID)
	}
	d.setDuration(&s.ClaimLease, f["claim_lease"], w+".claim_lease", MinClaimLease, time.Hour)
	if p := s.DatabasePasswordFile; p != "" {
		if s.Database == "" {
			d.errf(f["database_password_file"], w+".database_password_file", "set server.database too, or remove this key", "without server.database")
		} else if err := privfile.CheckPrivate(p); err != nil {
			d.errf(f["database_password_file"], w+".database_password_file", "", "%v", err)
		}
	}
}

// DefaultClaimLease is server.claim_lease when unset; MinClaimLease its
// least value (a heartbeat every third of it must fit several database
// round trips).
const (
	DefaultClaimLease = 30 * time.Second
	MinClaimLease     = 3 * time.Second
)

// ValidServerID reports whether id is usable as server.id: it names the
// server in claims, events and logs.
func ValidServerID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}
