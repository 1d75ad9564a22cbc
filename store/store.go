package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"modernc.org/sqlite" // the pure-Go driver: no cgo in the server binary
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrNotFound is returned for a machine or boot the store does not know.
var ErrNotFound = errors.New("not found")

// ErrNoTransition is returned (wrapped) for a state change that the
// state graph does not allow: a mistake of the caller, which retrying
// does not mend.
var ErrNoTransition = errors.New("no transition")

// ErrTokenUsed is returned when a boot token is presented a second time.
var ErrTokenUsed = errors.New("boot token already used")

// State is where a machine is in its life.
type State string

// The machine states; see Transition for the allowed moves.
const (
	StateNew         State = "new"
	StateDiscovered  State = "discovered"
	StateBooting     State = "booting"
	StateInstallerUp State = "installer-up"
	StateInstalling  State = "installing"
	StateInstalled   State = "installed"
	StateFailed      State = "failed"
)

// allowed lists, for each state, the states it may move to. Failing is
// always allowed; an installed machine only boots again (the caller
// checks the reinstall flag before asking).
var allowed = map[State][]State{
	StateNew:         {StateBooting},
	StateDiscovered:  {StateBooting},
	StateBooting:     {StateBooting, StateInstallerUp},
	StateInstallerUp: {StateBooting, StateInstalling},
	StateInstalling:  {StateInstalling, StateInstalled},
	StateInstalled:   {StateBooting},
	StateFailed:      {StateBooting},
}

// MachineRecord is a machine as the store keeps it.
type MachineRecord struct {
	MAC       string `json:"mac"`
	Hostname  string `json:"hostname"`
	Profile   string `json:"profile"`
	State     State  `json:"state"`
	Phase     string `json:"phase"`
	Error     string `json:"error"`
	Reinstall bool   `json:"reinstall"`
	IP        string `json:"ip"`
	Firmware  string `json:"firmware"`
	// Held is set by a security event (a boot's secrets asked for
	// twice): the machine boots nothing from us until a reinstall is
	// requested.
	Held      bool      `json:"held"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Event is one recorded change or note on a machine.
type Event struct {
	ID      int64
	MAC     string
	Time    time.Time
	State   State
	Phase   string
	Message string
}

// LogLine is one line of a machine's install output.
type LogLine struct {
	Seq  int64
	Time time.Time
	Line string
}

// Boot is one PXE boot into the installer: its token and the host key
// generated for it. IP is the address that asked for the boot script
// (one that DHCP gave to the machine): the boot belongs to it.
// HostKeyPrivate is a secret: it leaves the store only inside the extra
// initrd, once, and is erased when the boot is used, voided or expired;
// the public key stays for the record.
type Boot struct {
	Token          string
	MAC            string
	IP             string
	Firmware       string
	HostKeyPublic  string
	HostKeyPrivate []byte
	CreatedAt      time.Time
	UsedAt         *time.Time
	InitrdAt       *time.Time // when the extra initrd was served
	VoidedAt       *time.Time
	VoidReason     string
}

// BootBinding is an address that DHCP saw a machine hold, until
// Expires: the boot side answers a machine's secrets only to such
// addresses. Via names where DHCP saw it: an interface, or a relay.
type BootBinding struct {
	MAC     string
	Addr    string
	Via     string
	Seen    time.Time // the last DHCP exchange that bound it
	Expires time.Time
}

// DB is the machine inventory and state in a SQL database: one SQLite
// file (OpenSQLite) or a PostgreSQL database shared by several servers.
type DB struct {
	db *sqlDB
	// pgcfg is how to reach PostgreSQL again, for Watch's own
	// connection (nil on SQLite); onWatchErr hears why it broke.
	pgcfg      *pgx.ConnConfig
	onWatchErr func(error)
}

// migrations are applied in order, each once, each in a transaction;
// the dialect's version record counts the applied ones (SQLite's PRAGMA
// user_version, a schema_version table on PostgreSQL). They are the one
// schema of both backends, written as SQLite reads it; dialect.schema
// turns them into PostgreSQL's DDL. Never edit one that has shipped: add
// another.
var migrations = []string{
	`CREATE TABLE machines (
		mac TEXT PRIMARY KEY,
		hostname TEXT NOT NULL DEFAULT '',
		profile TEXT NOT NULL DEFAULT '',
		state TEXT NOT NULL,
		phase TEXT NOT NULL DEFAULT '',
		error TEXT NOT NULL DEFAULT '',
		reinstall INTEGER NOT NULL DEFAULT 0,
		ip TEXT NOT NULL DEFAULT '',
		firmware TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE events (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		mac TEXT NOT NULL,
		time INTEGER NOT NULL,
		state TEXT NOT NULL,
		phase TEXT NOT NULL,
		message TEXT NOT NULL
	);
	CREATE INDEX events_mac ON events(mac, id);
	CREATE TABLE boots (
		token TEXT PRIMARY KEY,
		mac TEXT NOT NULL,
		ip TEXT NOT NULL,
		firmware TEXT NOT NULL,
		host_key_public TEXT NOT NULL,
		host_key_private BLOB NOT NULL,
		created_at INTEGER NOT NULL,
		used_at INTEGER
	);
	CREATE INDEX boots_mac ON boots(mac, created_at);
	CREATE TABLE logs (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		mac TEXT NOT NULL,
		time INTEGER NOT NULL,
		line TEXT NOT NULL
	);
	CREATE INDEX logs_mac ON logs(mac, seq);`,
	`ALTER TABLE machines ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE boots ADD COLUMN initrd_at INTEGER;
	ALTER TABLE boots ADD COLUMN voided_at INTEGER;
	ALTER TABLE boots ADD COLUMN void_reason TEXT NOT NULL DEFAULT '';
	CREATE TABLE bindings (
		mac TEXT NOT NULL,
		addr TEXT NOT NULL,
		via TEXT NOT NULL,
		seen_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		PRIMARY KEY (mac, addr)
	);`,
	factsSchema,  // facts.go
	claimsSchema, // claims.go
	viewsSchema,  // views.go
	cancelSchema, // claims.go
}

// OpenSQLite opens (creating, mode 0600) the database at path and brings
// its schema up to date.
func OpenSQLite(ctx context.Context, path string) (*DB, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state database: %w", err)
	}
	f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("state database: %w", err)
	}
	// auto_vacuum takes effect only in a database that has no tables
	// yet, so it comes first: a fresh database hands the pages that
	// Prune frees back to the file system (see Prune). One made before
	// keeps auto_vacuum off and reuses its free pages instead.
	// journal_size_limit truncates the WAL after a checkpoint, so that
	// a burst of writes does not leave a large WAL behind for good.
	dsn := "file:" + path + "?_pragma=auto_vacuum(INCREMENTAL)&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=journal_size_limit(16777216)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	// One connection: SQLite takes one writer at a time anyway, and a
	// pool of connections turns a boot storm into "database is locked"
	// errors instead of a short queue.
	db.SetMaxOpenConns(1)
	s := &DB{db: &sqlDB{DB: db, d: sqliteDialect}}
	if err := connect(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	return s, nil
}

// connect opens the first connection, which applies the DSN's pragmas.
// Switching a fresh file to WAL needs an exclusive lock, and SQLite
// answers SQLITE_BUSY at once, without busy_timeout, to a connection
// that already holds a read lock (waiting could deadlock). So while
// another process sets up the same file, try again; once the file is
// in WAL mode the pragma takes no lock.
func connect(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := db.PingContext(ctx)
		var se *sqlite.Error
		if err == nil || !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Close closes the database.
func (s *DB) Close() error { return s.db.Close() }

// migrate applies the missing migrations. It reads the version inside
// each write transaction (on SQLite, user_version under BEGIN IMMEDIATE,
// from _txlock in the DSN; on PostgreSQL, a table under an advisory
// lock), so that when several processes open a fresh database at once,
// one migrates and the others find the new version instead of creating
// the tables again.
func (s *DB) migrate(ctx context.Context) error {
	for {
		done, err := s.migrateOne(ctx)
		if err != nil || done {
			return err
		}
	}
}

// migrateOne applies the next migration, if any, in one transaction.
func (s *DB) migrateOne(ctx context.Context) (done bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	d := s.db.d
	if err := d.lockMigrations(ctx, tx); err != nil {
		return false, err
	}
	version, err := d.version(ctx, tx)
	if err != nil {
		return false, err
	}
	if version > len(migrations) {
		return false, fmt.Errorf("schema version %d is newer than this binary knows (%d): upgrade pxe-anywhere", version, len(migrations))
	}
	if version == len(migrations) {
		return true, nil
	}
	if _, err := tx.ExecContext(ctx, d.schema(migrations[version])); err != nil {
		return false, fmt.Errorf("migration %d: %w", version+1, err)
	}
	if err := d.setVersion(ctx, tx, version+1); err != nil {
		return false, fmt.Errorf("migration %d: %w", version+1, err)
	}
	return false, tx.Commit()
}

func normMAC(mac string) string { return strings.ToLower(mac) }

func unix(t time.Time) int64 { return t.UnixNano() }

func fromUnix(n int64) time.Time { return time.Unix(0, n).UTC() }

const machineCols = `mac, hostname, profile, state, phase, error, reinstall, ip, firmware, held, created_at, updated_at`

type scanner interface{ Scan(...any) error }

func scanMachine(r scanner) (MachineRecord, error) {
	var m MachineRecord
	var created, updated int64
	var reinstall, held int
	err := r.Scan(&m.MAC, &m.Hostname, &m.Profile, &m.State, &m.Phase, &m.Error, &reinstall, &m.IP, &m.Firmware, &held, &created, &updated)
	m.Reinstall, m.Held = reinstall != 0, held != 0
	m.CreatedAt, m.UpdatedAt = fromUnix(created), fromUnix(updated)
	return m, err
}

// UpsertMachine registers a machine in state new, or in state
// discovered when it has no profile (an unknown machine that the
// discover policy boots, or a config entry without one), or updates the
// hostname and profile of a known one. It never changes a known
// machine's state.
func (s *DB) UpsertMachine(ctx context.Context, mac, hostname, profile string) (MachineRecord, error) {
	mac = normMAC(mac)
	now := unix(time.Now())
	state := StateNew
	if profile == "" {
		state = StateDiscovered
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO machines (mac, hostname, profile, state, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT(mac) DO UPDATE SET hostname = excluded.hostname, profile = excluded.profile
		WHERE machines.hostname != excluded.hostname OR machines.profile != excluded.profile`,
		mac, hostname, profile, state, now, now)
	if err != nil {
		return MachineRecord{}, fmt.Errorf("register machine %s: %w", mac, err)
	}
	return s.Machine(ctx, mac)
}

// ErrLimit is returned when a configured limit refuses another row.
var ErrLimit = errors.New("limit reached")

// Discover registers an unknown machine, with no profile, as
// UpsertMachine does, unless the store already holds limit machines
// without a profile: then it returns ErrLimit. A machine the store
// knows is never refused. The count and the insert are one statement,
// so concurrent discoveries cannot pass the limit together.
func (s *DB) Discover(ctx context.Context, mac string, limit int) (MachineRecord, error) {
	mac = normMAC(mac)
	if _, err := s.Machine(ctx, mac); err == nil {
		return s.UpsertMachine(ctx, mac, "", "")
	} else if !errors.Is(err, ErrNotFound) {
		return MachineRecord{}, err
	}
	n, err := s.discoverInsert(ctx, mac, limit)
	if err != nil {
		return MachineRecord{}, fmt.Errorf("register machine %s: %w", mac, err)
	}
	if n == 0 {
		if _, err := s.Machine(ctx, mac); err == nil {
			return s.UpsertMachine(ctx, mac, "", "") // registered meanwhile
		}
		return MachineRecord{}, fmt.Errorf("register machine %s: %d machines without a profile recorded: %w", mac, limit, ErrLimit)
	}
	return s.Machine(ctx, mac)
}

// discoverInsert inserts a discovered machine unless limit machines
// without a profile are recorded, and reports whether it did. The
// discovery lock keeps concurrent discoveries, on any server, from
// counting the same rows (PostgreSQL: an advisory lock; SQLite's
// writers take turns).
func (s *DB) discoverInsert(ctx context.Context, mac string, limit int) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	if err := s.db.d.lock(ctx, tx, "discover"); err != nil {
		return 0, err
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM machines WHERE profile = ''`).Scan(&n); err != nil {
		return 0, err
	}
	if n >= limit {
		return 0, nil
	}
	now := unix(time.Now())
	res, err := tx.ExecContext(ctx, insertDiscovered, mac, StateDiscovered, now, now)
	if err != nil {
		return 0, err
	}
	added, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	return added, tx.Commit()
}

// insertDiscovered records a machine (mac, state, created and updated
// at) with no profile, unless it is recorded already.
const insertDiscovered = `INSERT INTO machines (mac, state, created_at, updated_at) VALUES (?, ?, ?, ?)
	ON CONFLICT(mac) DO NOTHING`

// Machine returns one machine.
func (s *DB) Machine(ctx context.Context, mac string) (MachineRecord, error) {
	m, err := scanMachine(s.db.QueryRowContext(ctx, `SELECT `+machineCols+` FROM machines WHERE mac = ?`, normMAC(mac)))
	if errors.Is(err, sql.ErrNoRows) {
		return m, fmt.Errorf("machine %s: %w", mac, ErrNotFound)
	}
	return m, err
}

// Machines returns every machine, sorted by MAC.
func (s *DB) Machines(ctx context.Context) ([]MachineRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+machineCols+` FROM machines ORDER BY mac`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []MachineRecord
	for rows.Next() {
		m, err := scanMachine(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Transition moves a machine to state to, with phase and error, and
// records message as an event, in one transaction. Moves the state graph
// does not allow are refused; failing is always allowed. Reaching
// installed clears the reinstall flag.
func (s *DB) Transition(ctx context.Context, mac string, to State, phase, errMsg, message string) error {
	mac = normMAC(mac)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var from State
	if err := tx.QueryRowContext(ctx, `SELECT state FROM machines WHERE mac = ?`+s.db.d.forUpdate, mac).Scan(&from); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("machine %s: %w", mac, ErrNotFound)
		}
		return err
	}
	if !canMove(from, to) {
		return fmt.Errorf("machine %s: %w from %s to %s", mac, ErrNoTransition, from, to)
	}
	now := unix(time.Now())
	q := `UPDATE machines SET state = ?, phase = ?, error = ?, updated_at = ? WHERE mac = ?`
	if to == StateInstalled {
		q = `UPDATE machines SET state = ?, phase = ?, error = ?, updated_at = ?, reinstall = 0 WHERE mac = ?`
	}
	if _, err := tx.ExecContext(ctx, q, to, phase, errMsg, now, mac); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (mac, time, state, phase, message) VALUES (?, ?, ?, ?, ?)`,
		mac, now, to, phase, message); err != nil {
		return err
	}
	return tx.Commit()
}

func canMove(from, to State) bool {
	if to == StateFailed {
		return true
	}
	for _, s := range allowed[from] {
		if s == to {
			return true
		}
	}
	return false
}

// noteEvent records a note (time, phase, message) on a machine (mac) in
// its current state; it inserts nothing for a machine not recorded.
const noteEvent = `INSERT INTO events (mac, time, state, phase, message)
		SELECT mac, CAST(? AS BIGINT), state, ?, ? FROM machines WHERE mac = ?`

// AddEvent records a note on a machine in its current state.
func (s *DB) AddEvent(ctx context.Context, mac, phase, message string) error {
	res, err := s.db.ExecContext(ctx, noteEvent, unix(time.Now()), phase, message, normMAC(mac))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("machine %s: %w", mac, ErrNotFound)
	}
	return nil
}

// Events returns up to limit events of a machine with ID above afterID.
func (s *DB) Events(ctx context.Context, mac string, afterID int64, limit int) ([]Event, error) {
	return s.queryEvents(ctx, `WHERE mac = ? AND id > ? ORDER BY id LIMIT ?`, normMAC(mac), afterID, limit)
}

// queryEvents returns the events that where (a WHERE clause with its
// ORDER and LIMIT) selects.
func (s *DB) queryEvents(ctx context.Context, where string, args ...any) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, mac, time, state, phase, message FROM events `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var t int64
		if err := rows.Scan(&e.ID, &e.MAC, &t, &e.State, &e.Phase, &e.Message); err != nil {
			return nil, err
		}
		e.Time = fromUnix(t)
		out = append(out, e)
	}
	return out, rows.Err()
}

// AppendLog adds lines to a machine's install log.
func (s *DB) AppendLog(ctx context.Context, mac string, lines ...string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := unix(time.Now())
	for _, l := range lines {
		if _, err := tx.ExecContext(ctx, `INSERT INTO logs (mac, time, line) VALUES (?, ?, ?)`, normMAC(mac), now, l); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// LastLogSeq is the seq of a machine's latest log line, 0 if none: an
// install's lines are those after it.
func (s *DB) LastLogSeq(ctx context.Context, mac string) (int64, error) {
	var seq sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT MAX(seq) FROM logs WHERE mac = ?`, normMAC(mac)).Scan(&seq)
	return seq.Int64, err
}

// TrimLog bounds the log lines of a machine after seq after: it keeps
// the first head and the last tail of them, and the line after the
// first head becomes marker, standing for all the lines between.
func (s *DB) TrimLog(ctx context.Context, mac string, after int64, head, tail int, marker string) error {
	mac = normMAC(mac)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var markerSeq, tailStart int64
	err = tx.QueryRowContext(ctx, `SELECT seq FROM logs WHERE mac = ? AND seq > ? ORDER BY seq LIMIT 1 OFFSET ?`, mac, after, head).Scan(&markerSeq)
	if err == nil {
		err = tx.QueryRowContext(ctx, `SELECT seq FROM logs WHERE mac = ? AND seq > ? ORDER BY seq DESC LIMIT 1 OFFSET ?`, mac, after, max(tail-1, 0)).Scan(&tailStart)
	}
	if errors.Is(err, sql.ErrNoRows) || err == nil && markerSeq >= tailStart {
		return nil // not more than head + tail lines
	}
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM logs WHERE mac = ? AND seq > ? AND seq < ?`, mac, markerSeq, tailStart); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE logs SET line = ? WHERE seq = ?`, marker, markerSeq); err != nil {
		return err
	}
	return tx.Commit()
}

// Log returns up to limit log lines of a machine after seq afterSeq.
func (s *DB) Log(ctx context.Context, mac string, afterSeq int64, limit int) ([]LogLine, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, time, line FROM logs WHERE mac = ? AND seq > ? ORDER BY seq LIMIT ?`,
		normMAC(mac), afterSeq, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []LogLine
	for rows.Next() {
		var l LogLine
		var t int64
		if err := rows.Scan(&l.Seq, &t, &l.Line); err != nil {
			return nil, err
		}
		l.Time = fromUnix(t)
		out = append(out, l)
	}
	return out, rows.Err()
}

// CreateBoot records a boot and the machine's address and firmware, and
// voids the machine's unused earlier boots. A
// zero CreatedAt means now: token expiry and "latest boot" are reckoned
// from it.
func (s *DB) CreateBoot(ctx context.Context, b Boot) error {
	if b.CreatedAt.IsZero() {
		b.CreatedAt = time.Now()
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Two boots of one machine at once take turns, so that one of them
	// voids the other and a machine has one live boot at most.
	if err := s.db.d.lock(ctx, tx, "boot "+normMAC(b.MAC)); err != nil {
		return err
	}
	// A new boot ends the machine's earlier ones that were never used:
	// their tokens open nothing and their keys are erased.
	if _, err := tx.ExecContext(ctx, `UPDATE boots SET voided_at = ?, void_reason = 'superseded by a newer boot', host_key_private = x''
		WHERE mac = ? AND used_at IS NULL AND voided_at IS NULL`, unix(b.CreatedAt), normMAC(b.MAC)); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO boots (token, mac, ip, firmware, host_key_public, host_key_private, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, b.Token, normMAC(b.MAC), b.IP, b.Firmware, b.HostKeyPublic, b.HostKeyPrivate, unix(b.CreatedAt)); err != nil {
		return err
	}
	// A boot URL without ?arch= leaves the firmware DHCP saw in place.
	if _, err := tx.ExecContext(ctx, `UPDATE machines SET ip = ?, firmware = COALESCE(NULLIF(?, ''), firmware) WHERE mac = ?`, b.IP, b.Firmware, normMAC(b.MAC)); err != nil {
		return err
	}
	return tx.Commit()
}

const bootCols = `token, mac, ip, firmware, host_key_public, host_key_private, created_at, used_at, initrd_at, voided_at, void_reason`

func scanBoot(r scanner) (Boot, error) {
	var b Boot
	var created int64
	var used, initrd, voided sql.NullInt64
	err := r.Scan(&b.Token, &b.MAC, &b.IP, &b.Firmware, &b.HostKeyPublic, &b.HostKeyPrivate, &created, &used, &initrd, &voided, &b.VoidReason)
	b.CreatedAt = fromUnix(created)
	b.UsedAt, b.InitrdAt, b.VoidedAt = optTime(used), optTime(initrd), optTime(voided)
	if errors.Is(err, sql.ErrNoRows) {
		return b, fmt.Errorf("boot: %w", ErrNotFound)
	}
	return b, err
}

// BootByToken returns the boot of a token.
func (s *DB) BootByToken(ctx context.Context, token string) (Boot, error) {
	return scanBoot(s.db.QueryRowContext(ctx, `SELECT `+bootCols+` FROM boots WHERE token = ?`, token))
}

// LatestBoot returns the newest boot of a machine.
func (s *DB) LatestBoot(ctx context.Context, mac string) (Boot, error) {
	return scanBoot(s.db.QueryRowContext(ctx, `SELECT `+bootCols+` FROM boots WHERE mac = ? ORDER BY created_at DESC, rowid DESC LIMIT 1`, normMAC(mac)))
}

func optTime(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := fromUnix(n.Int64)
	return &t
}

// ErrBootVoided is returned for a boot that was voided.
var ErrBootVoided = errors.New("boot voided")

// UseToken marks a boot's token used and erases its private host key:
// the installer has it now, and nothing else may. Exactly one caller
// wins; the others get ErrTokenUsed (or ErrBootVoided).
func (s *DB) UseToken(ctx context.Context, token string) (Boot, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE boots SET used_at = ?, host_key_private = x''
		WHERE token = ? AND used_at IS NULL AND voided_at IS NULL`, unix(time.Now()), token)
	if err != nil {
		return Boot{}, err
	}
	n, _ := res.RowsAffected()
	b, err := s.BootByToken(ctx, token)
	if err != nil {
		return Boot{}, err
	}
	if n == 0 {
		if b.VoidedAt != nil {
			return b, ErrBootVoided
		}
		return b, ErrTokenUsed
	}
	return b, nil
}

// TakeInitrd marks a boot's extra initrd served and returns the boot,
// with its private key, to the first caller only; later callers get
// first == false (and no key from this call).
func (s *DB) TakeInitrd(ctx context.Context, token string) (b Boot, first bool, err error) {
	// One statement marks and reads: a request that loses the race
	// voids the boot, erasing the key, and may do so between a separate
	// UPDATE and SELECT of the winner.
	b, err = scanBoot(s.db.QueryRowContext(ctx, `UPDATE boots SET initrd_at = ?
		WHERE token = ? AND initrd_at IS NULL AND used_at IS NULL AND voided_at IS NULL
		RETURNING `+bootCols, unix(time.Now()), token))
	if err == nil {
		return b, true, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return Boot{}, false, err
	}
	b, err = s.BootByToken(ctx, token)
	if err != nil {
		return Boot{}, false, err
	}
	b.HostKeyPrivate = nil
	return b, false, nil
}

// VoidBoot ends a boot that is not used yet: its token opens nothing
// any more and its private host key is erased. It reports whether the
// boot was live.
func (s *DB) VoidBoot(ctx context.Context, token, reason string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE boots SET voided_at = ?, void_reason = ?, host_key_private = x''
		WHERE token = ? AND used_at IS NULL AND voided_at IS NULL`, unix(time.Now()), reason, token)
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// VoidBoots voids every boot of a machine that is not used yet.
func (s *DB) VoidBoots(ctx context.Context, mac, reason string) (int, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE boots SET voided_at = ?, void_reason = ?, host_key_private = x''
		WHERE mac = ? AND used_at IS NULL AND voided_at IS NULL`, unix(time.Now()), reason, normMAC(mac))
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// EraseExpiredKeys erases the private host keys of boots created
// before cutoff: their tokens have expired, and the keys are of no use
// to anybody but a thief.
func (s *DB) EraseExpiredKeys(ctx context.Context, cutoff time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE boots SET host_key_private = x''
		WHERE created_at < ? AND length(host_key_private) > 0`, unix(cutoff))
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// Pruned counts what one Prune deleted.
type Pruned struct {
	Boots  int
	Events int
}

// Prune bounds what the store keeps per machine: of a machine's boots,
// those beyond the newest keepBoots that have ended (used, voided, or
// created before expiredBefore) are deleted, and of its events, those
// beyond the newest keepEvents. Strangers can make boots and events
// (every refused request leaves one), so without this the database
// grows with every request. A live boot is never deleted: it is its
// machine's newest, and keepBoots is at least 1. Install logs are not
// touched here. In a database with auto_vacuum on, the freed pages go
// back to the file system.
func (s *DB) Prune(ctx context.Context, keepBoots, keepEvents int, expiredBefore time.Time) (Pruned, error) {
	var p Pruned
	keepBoots, keepEvents = max(keepBoots, 1), max(keepEvents, 1)
	macs, err := s.macsOver(ctx, "boots", keepBoots)
	if err != nil {
		return p, err
	}
	for _, mac := range macs {
		res, err := s.db.ExecContext(ctx, `DELETE FROM boots WHERE rowid IN (
			SELECT rowid FROM boots WHERE mac = ? ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?)
			AND (used_at IS NOT NULL OR voided_at IS NOT NULL OR created_at < ?)`, mac, keepBoots, unix(expiredBefore))
		if err != nil {
			return p, fmt.Errorf("prune boots of %s: %w", mac, err)
		}
		n, _ := res.RowsAffected()
		p.Boots += int(n)
	}
	if macs, err = s.macsOver(ctx, "events", keepEvents); err != nil {
		return p, err
	}
	for _, mac := range macs {
		// Events ids only grow: everything up to the first one past
		// the newest keepEvents goes.
		res, err := s.db.ExecContext(ctx, `DELETE FROM events WHERE mac = ? AND id <= (
			SELECT id FROM events WHERE mac = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`, mac, mac, keepEvents)
		if err != nil {
			return p, fmt.Errorf("prune events of %s: %w", mac, err)
		}
		n, _ := res.RowsAffected()
		p.Events += int(n)
	}
	if p.Boots+p.Events > 0 && s.db.d.vacuum != "" {
		// A no-op unless the database was made with auto_vacuum.
		if _, err := s.db.ExecContext(ctx, s.db.d.vacuum); err != nil {
			return p, fmt.Errorf("incremental vacuum: %w", err)
		}
	}
	return p, nil
}

// macsOver lists the machines with more than keep rows in table.
func (s *DB) macsOver(ctx context.Context, table string, keep int) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT mac FROM `+table+` GROUP BY mac HAVING count(*) > ?`, keep)
	if err != nil {
		return nil, fmt.Errorf("prune %s: %w", table, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var mac string
		if err := rows.Scan(&mac); err != nil {
			return nil, err
		}
		out = append(out, mac)
	}
	return out, rows.Err()
}

// Hold fails a machine after a security event and holds it there: it
// boots nothing from us until RequestReinstall.
func (s *DB) Hold(ctx context.Context, mac, errMsg, message string) error {
	if err := s.Transition(ctx, mac, StateFailed, "", errMsg, message); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `UPDATE machines SET held = 1 WHERE mac = ?`, normMAC(mac))
	return err
}

// SaveBinding records (or extends) an address that DHCP saw a machine
// hold.
func (s *DB) SaveBinding(ctx context.Context, b BootBinding) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO bindings (mac, addr, via, seen_at, expires_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT(mac, addr) DO UPDATE SET via = excluded.via, seen_at = excluded.seen_at, expires_at = excluded.expires_at`,
		normMAC(b.MAC), b.Addr, b.Via, unix(b.Seen), unix(b.Expires))
	return err
}

// DeleteBinding forgets one binding, as a DHCP release does.
func (s *DB) DeleteBinding(ctx context.Context, mac, addr string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM bindings WHERE mac = ? AND addr = ?`, normMAC(mac), addr)
	return err
}

// Bindings deletes the bindings that expired before now and returns
// the others.
func (s *DB) Bindings(ctx context.Context, now time.Time) ([]BootBinding, error) {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM bindings WHERE expires_at < ?`, unix(now)); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT mac, addr, via, seen_at, expires_at FROM bindings ORDER BY mac, addr`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []BootBinding
	for rows.Next() {
		var b BootBinding
		var seen, exp int64
		if err := rows.Scan(&b.MAC, &b.Addr, &b.Via, &seen, &exp); err != nil {
			return nil, err
		}
		b.Seen, b.Expires = fromUnix(seen), fromUnix(exp)
		out = append(out, b)
	}
	return out, rows.Err()
}

// SetFirmware records the firmware DHCP saw a machine boot with ("bios",
// "efi-x64", "efi-arm64"); it writes only when that changed.
func (s *DB) SetFirmware(ctx context.Context, mac, firmware string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE machines SET firmware = ? WHERE mac = ? AND firmware != ?`, firmware, normMAC(mac), firmware)
	return err
}

// RequestReinstall makes the machine's next PXE boot install again, and
// releases a machine held after a security event.
func (s *DB) RequestReinstall(ctx context.Context, mac string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE machines SET reinstall = 1, held = 0, updated_at = ? WHERE mac = ?`, unix(time.Now()), normMAC(mac))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("machine %s: %w", mac, ErrNotFound)
	}
	return nil
}

// Forget deletes a machine and all it left: boots, events, logs.
func (s *DB) Forget(ctx context.Context, mac string) error {
	mac = normMAC(mac)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM machines WHERE mac = ?`, mac)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("machine %s: %w", mac, ErrNotFound)
	}
	for _, t := range []string{"boots", "events", "logs", "bindings", "facts", "assignments", "claims"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+t+` WHERE mac = ?`, mac); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// LastEvents returns each machine's latest event, by MAC.
func (s *DB) LastEvents(ctx context.Context) (map[string]Event, error) {
	evs, err := s.queryEvents(ctx, `WHERE id IN (SELECT MAX(id) FROM events GROUP BY mac)`)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Event, len(evs))
	for _, e := range evs {
		out[e.MAC] = e
	}
	return out, nil
}

// PhaseDoneMessages returns the latest limit events that record a phase
// that ended well ("phase X done in D", written by provision), newest
// first: the history that the status page's progress estimate is
// drawn from.
func (s *DB) PhaseDoneMessages(ctx context.Context, limit int) ([]Event, error) {
	return s.queryEvents(ctx, `WHERE phase != '' AND message LIKE 'phase % done in %' ORDER BY id DESC LIMIT ?`, limit)
}

// LastEvent returns a machine's latest event; ErrNotFound when it has none.
func (s *DB) LastEvent(ctx context.Context, mac string) (Event, error) {
	evs, err := s.queryEvents(ctx, `WHERE mac = ? ORDER BY id DESC LIMIT 1`, normMAC(mac))
	if err != nil {
		return Event{}, err
	}
	if len(evs) == 0 {
		return Event{}, fmt.Errorf("machine %s has no events: %w", mac, ErrNotFound)
	}
	return evs[0], nil
}
