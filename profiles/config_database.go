package profiles

import (
	"net/url"

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
	if p := s.DatabasePasswordFile; p != "" {
		if s.Database == "" {
			d.errf(f["database_password_file"], w+".database_password_file", "set server.database too, or remove this key", "without server.database")
		} else if err := privfile.CheckPrivate(p); err != nil {
			d.errf(f["database_password_file"], w+".database_password_file", "", "%v", err)
		}
	}
}
