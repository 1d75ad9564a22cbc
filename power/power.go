// Package power drives a machine's BMC: power on, off, cycle, status,
// and "boot from the network once", over IPMI (bougou/go-ipmi, IPMI 2.0
// lanplus) or Redfish (stmcginnis/gofish). It owns the BMC session and
// the bounds on every call; it knows nothing of machines, states or
// events: provision decides when to call it and records what happened.
package power

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/privfile"
)

// State is what a BMC says of the machine's power.
type State string

// The power states.
const (
	On  State = "on"
	Off State = "off"
	// Unknown: the BMC answered with a state that is neither, such as
	// Redfish's PoweringOn.
	Unknown State = "unknown"
)

// Controller is one machine's BMC. Every method is bounded by the
// Config's Timeout as well as by ctx.
type Controller interface {
	On(ctx context.Context) error
	Off(ctx context.Context) error
	// Cycle powers a running machine off and on again, and powers on a
	// machine that is off: either way it boots afresh.
	Cycle(ctx context.Context) error
	Status(ctx context.Context) (State, error)
	// BootPXEOnce makes the next boot (only) a network boot. A BMC that
	// refuses the boot device returns an error that wraps
	// ErrUnsupported: callers may go on, if the machine boots from the
	// network first anyway.
	BootPXEOnce(ctx context.Context) error
}

// Errors that a Controller's errors wrap, to tell what went wrong.
var (
	// ErrUnsupported: the BMC refused the request as one it does not
	// implement (ipmi_sim's "chassis bootdev", a Redfish service
	// without a boot override or that reset type).
	ErrUnsupported = errors.New("not supported by the BMC")
	// ErrAuth: the BMC refused the user or password.
	ErrAuth = errors.New("BMC refused the credentials")
	// ErrTimeout: the BMC did not answer in time.
	ErrTimeout = errors.New("BMC did not answer in time")
)

// Error is a failed BMC call: which BMC, which operation, and why. Its
// text never holds the password.
type Error struct {
	Type    string // "ipmi" or "redfish"
	Address string
	Op      string // "on", "off", "cycle", "status", "boot pxe once", "connect"
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("BMC %s %s: %s: %v", e.Type, e.Address, e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// The BMC types.
const (
	TypeIPMI    = "ipmi"
	TypeRedfish = "redfish"
)

// DefaultTimeout bounds one BMC operation (its session set-up included)
// when Config.Timeout is zero.
const DefaultTimeout = 20 * time.Second

// Config says how to reach one BMC.
type Config struct {
	Type string // TypeIPMI or TypeRedfish
	// Address is host or host:port for IPMI (port 623 by default), and
	// for Redfish an http(s) URL or a host (then https://host).
	Address string
	User    string
	// PasswordFile holds the password (one line; the trailing newline
	// is dropped). It must not be readable by group or others.
	PasswordFile string
	// Timeout bounds each operation; zero means DefaultTimeout.
	Timeout time.Duration
	// CAFile, for Redfish over https, is a PEM file of the certificates
	// that the BMC's must chain to; BMCs mostly have self-signed ones.
	// Empty: the system's roots.
	CAFile string
}

// New reads the password file and returns the Controller for cfg. It
// does not contact the BMC.
func New(cfg Config) (Controller, error) {
	if cfg.Address == "" {
		return nil, fmt.Errorf("bmc: no address")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	password := ""
	if cfg.PasswordFile != "" {
		data, err := privfile.Read(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("bmc %s: password_file: %w", cfg.Address, err)
		}
		password = strings.TrimRight(string(data), "\r\n")
	}
	switch cfg.Type {
	case TypeIPMI:
		return newIPMI(cfg, password)
	case TypeRedfish:
		return newRedfish(cfg, password)
	default:
		return nil, fmt.Errorf("bmc %s: type %q: want ipmi or redfish", cfg.Address, cfg.Type)
	}
}

// bounded runs f under ctx limited to d, and turns a deadline into
// ErrTimeout: a library that blocks past its context still cannot hold
// the caller, since f runs in its own goroutine and the buffered result
// is dropped if it comes too late.
func bounded(ctx context.Context, d time.Duration, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	select {
	case err := <-done:
		if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w (after %s): %v", ErrTimeout, d, err)
		}
		return err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w (after %s)", ErrTimeout, d)
		}
		return ctx.Err()
	}
}
