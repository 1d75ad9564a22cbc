package power

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
)

// ipmiBMC talks IPMI 2.0 (RMCP+, "lanplus") to one BMC. Each operation
// opens its own session and closes it: BMCs hold few sessions and drop
// idle ones, and power commands are rare.
type ipmiBMC struct {
	host     string
	port     int
	user     string
	password string
	timeout  time.Duration
	address  string
}

func newIPMI(cfg Config, password string) (*ipmiBMC, error) {
	host, port := cfg.Address, 623
	if h, p, err := net.SplitHostPort(cfg.Address); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("bmc %s: port %q: want 1-65535", cfg.Address, p)
		}
		host, port = h, n
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		return nil, fmt.Errorf("bmc %s: want host or host:port for ipmi", cfg.Address)
	}
	// go-ipmi refuses longer user names; say so here, before any call.
	if len(cfg.User) > 16 {
		return nil, fmt.Errorf("bmc %s: user name longer than IPMI's 16 characters", cfg.Address)
	}
	return &ipmiBMC{host: host, port: port, user: cfg.User, password: password, timeout: cfg.Timeout, address: cfg.Address}, nil
}

// session runs f in a fresh session, bounded by the timeout.
func (b *ipmiBMC) session(ctx context.Context, op string, f func(ctx context.Context, c *client.Client) error) error {
	err := bounded(ctx, b.timeout, func(ctx context.Context) error {
		c, err := client.NewClient(b.host, b.port, b.user, b.password)
		if err != nil {
			return err
		}
		// One UDP exchange waits at most 2 s (a third of the bound, if
		// less) and is tried 3 times, so a BMC that lost one packet
		// still answers within the operation's bound.
		c.WithTimeout(min(2*time.Second, b.timeout/3)).WithRetry(2)
		// Naming the suites skips "Get Channel Cipher Suites", which
		// many BMCs (ipmi_sim among them) leave unanswered: that cost
		// three timeouts per session. They are tried strongest first.
		c.WithCipherSuiteID(types.PreferredCiphers...)
		if err := c.Connect(ctx); err != nil {
			return classifyIPMI(fmt.Errorf("open session: %w", err))
		}
		defer c.Close(context.WithoutCancel(ctx)) //nolint:errcheck // the operation's result is what counts
		return classifyIPMI(f(ctx, c))
	})
	if err != nil {
		return &Error{Type: TypeIPMI, Address: b.address, Op: op, Err: err}
	}
	return nil
}

// classifyIPMI wraps the sentinel that fits err: a completion code that
// means "not implemented here", or a session refused for its
// credentials.
func classifyIPMI(err error) error {
	if err == nil {
		return nil
	}
	var re *types.ResponseError
	if errors.As(err, &re) {
		switch re.CompletionCode() {
		case types.CodeRequestDataFieldInvalid, types.CodeInvalidCommand,
			types.CodeParameterOutOfRange, types.CodeNotSupported, types.CodeIllegalCommand:
			return fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
	}
	msg := strings.ToLower(err.Error())
	// No answer at all: go-ipmi says so in text only.
	if strings.Contains(msg, "before deadline") || strings.Contains(msg, "i/o timeout") {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	// go-ipmi reports a refused RAKP exchange (wrong user or password)
	// as an RMCP+ status code in the error text only.
	for _, s := range []string{"unauthorized name", "invalid integrity check", "unauthorized role", "password", "rakp"} {
		if strings.Contains(msg, s) {
			return fmt.Errorf("%w: %w", ErrAuth, err)
		}
	}
	return err
}

func (b *ipmiBMC) control(ctx context.Context, op string, ctl chassis.ChassisControl) error {
	return b.session(ctx, op, func(ctx context.Context, c *client.Client) error {
		_, err := c.ChassisControl(ctx, ctl)
		return err
	})
}

func (b *ipmiBMC) On(ctx context.Context) error {
	return b.control(ctx, "on", chassis.ChassisControlPowerUp)
}

func (b *ipmiBMC) Off(ctx context.Context) error {
	return b.control(ctx, "off", chassis.ChassisControlPowerDown)
}

// Cycle asks for a power cycle when the machine is on, and power up
// when it is off: IPMI says a power cycle of a machine that is off may
// do nothing.
func (b *ipmiBMC) Cycle(ctx context.Context) error {
	return b.session(ctx, "cycle", func(ctx context.Context, c *client.Client) error {
		st, err := c.GetChassisStatus(ctx)
		if err != nil {
			return fmt.Errorf("chassis status: %w", err)
		}
		ctl := chassis.ChassisControlPowerCycle
		if !st.PowerIsOn {
			ctl = chassis.ChassisControlPowerUp
		}
		_, err = c.ChassisControl(ctx, ctl)
		return err
	})
}

func (b *ipmiBMC) Status(ctx context.Context) (State, error) {
	var on bool
	err := b.session(ctx, "status", func(ctx context.Context, c *client.Client) error {
		st, err := c.GetChassisStatus(ctx)
		if err != nil {
			return err
		}
		on = st.PowerIsOn
		return nil
	})
	if err != nil {
		return Unknown, err
	}
	if on {
		return On, nil
	}
	return Off, nil
}

// BootPXEOnce sets the boot flags: PXE, valid for the next boot only.
// The firmware type is left to the BIOS (legacy flag): BMCs apply PXE
// to either.
func (b *ipmiBMC) BootPXEOnce(ctx context.Context) error {
	return b.session(ctx, "boot pxe once", func(ctx context.Context, c *client.Client) error {
		return c.SetBootDevice(ctx, types.BootDeviceSelectorForcePXE, types.BIOSBootTypeLegacy, false)
	})
}
