// Package store keeps the machine inventory and its state: machines and
// their state graph, boots and their one-shot tokens, DHCP bindings,
// events, install logs, discovery facts, profile assignments, and the
// claims by which one of several servers that share the database drives
// a machine's install.
//
// It owns the schema and its versioned migrations, and the atomicity of
// each operation (a token is used once, an initrd is taken once, however
// many ask at once). It does not own policy: what a restart means for an
// install (provision), who may boot (provision), or the configuration
// (profiles).
package store

import (
	"context"
	"time"
)

// Store is what the rest of pxe-anywhere asks of the state store. *DB
// implements it on SQLite and on PostgreSQL.
type Store interface {
	Close() error

	UpsertMachine(ctx context.Context, mac, hostname, profile string) (MachineRecord, error)
	Discover(ctx context.Context, mac string, limit int) (MachineRecord, error)
	Machine(ctx context.Context, mac string) (MachineRecord, error)
	Machines(ctx context.Context) ([]MachineRecord, error)
	Transition(ctx context.Context, mac string, to State, phase, errMsg, message string) error
	Hold(ctx context.Context, mac, errMsg, message string) error
	SetFirmware(ctx context.Context, mac, firmware string) error
	RequestReinstall(ctx context.Context, mac string) error
	Forget(ctx context.Context, mac string) error

	AddEvent(ctx context.Context, mac, phase, message string) error
	Events(ctx context.Context, mac string, afterID int64, limit int) ([]Event, error)
	LastEvent(ctx context.Context, mac string) (Event, error)
	LastEvents(ctx context.Context) (map[string]Event, error)
	PhaseDoneMessages(ctx context.Context, limit int) ([]Event, error)

	AppendLog(ctx context.Context, mac string, lines ...string) error
	LastLogSeq(ctx context.Context, mac string) (int64, error)
	TrimLog(ctx context.Context, mac string, after int64, head, tail int, marker string) error
	Log(ctx context.Context, mac string, afterSeq int64, limit int) ([]LogLine, error)

	CreateBoot(ctx context.Context, b Boot) error
	BootByToken(ctx context.Context, token string) (Boot, error)
	LatestBoot(ctx context.Context, mac string) (Boot, error)
	UseToken(ctx context.Context, token string) (Boot, error)
	TakeInitrd(ctx context.Context, token string) (b Boot, first bool, err error)
	VoidBoot(ctx context.Context, token, reason string) (bool, error)
	VoidBoots(ctx context.Context, mac, reason string) (int, error)
	EraseExpiredKeys(ctx context.Context, cutoff time.Time) (int, error)
	Prune(ctx context.Context, keepBoots, keepEvents int, expiredBefore time.Time) (Pruned, error)

	SaveBinding(ctx context.Context, b BootBinding) error
	DeleteBinding(ctx context.Context, mac, addr string) error
	Bindings(ctx context.Context, now time.Time) ([]BootBinding, error)

	SaveFacts(ctx context.Context, mac, facts, facter, addr string) error
	SaveDHCPContext(ctx context.Context, mac, dhcp string) error
	Facts(ctx context.Context, mac string) (MachineFacts, error)
	Assign(ctx context.Context, mac, profile, hostname, source, reason string) error
	AssignNew(ctx context.Context, mac, profile, hostname, source, reason string, limit int) error
	Unassign(ctx context.Context, mac, why string) error
	GetAssignment(ctx context.Context, mac string) (Assignment, error)
	Assignments(ctx context.Context) (map[string]Assignment, error)

	// Claims: which server drives a machine's install (claims.go).
	Claim(ctx context.Context, mac, server string, lease time.Duration, now time.Time) (Claim, error)
	ClaimOf(ctx context.Context, mac string) (Claim, error)
	Heartbeat(ctx context.Context, server string, lease time.Duration, now time.Time) (int, error)
	Release(ctx context.Context, mac, server string) (bool, error)
	LapsedClaims(ctx context.Context, now time.Time) ([]Claim, error)
	ReapClaim(ctx context.Context, c Claim, now time.Time) (bool, error)
	RequestCancel(ctx context.Context, mac, from, by string, now time.Time) (Claim, error)

	// Each server's view of its configured machines (views.go).
	SetConfigView(ctx context.Context, server string, machines []ConfigMachine) error
	ConfigConflicts(ctx context.Context, server string) ([]ConfigMachine, error)
}

var _ Store = (*DB)(nil)
