package power

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/common"
	"github.com/stmcginnis/gofish/redfish"
)

// maxRedfishBody bounds what one Redfish answer may make us read: a
// ComputerSystem is a few KiB, and a BMC is not trusted to be small.
const maxRedfishBody = 1 << 20

// redfishBMC talks Redfish to one BMC, with HTTP Basic authentication
// on every request (which the Redfish specification requires services
// to accept), so no session is left behind when a call is cut short.
type redfishBMC struct {
	endpoint   string // scheme://host[:port]
	systemPath string // "" : the service's only system
	user       string
	password   string
	hc         *http.Client
	cfg        Config
}

func newRedfish(cfg Config, password string) (*redfishBMC, error) {
	addr := cfg.Address
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("bmc %s: want an http(s) URL or a host for redfish", cfg.Address)
	}
	b := &redfishBMC{endpoint: u.Scheme + "://" + u.Host, user: cfg.User, password: password, cfg: cfg}
	if p := strings.TrimRight(u.Path, "/"); p != "" {
		if !strings.HasPrefix(p, "/redfish/v1/Systems/") {
			return nil, fmt.Errorf("bmc %s: a path must name a system, /redfish/v1/Systems/ID", cfg.Address)
		}
		b.systemPath = p
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil // a BMC is on the management network, never behind the host's proxy
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bmc %s: ca_file: %w", cfg.Address, err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bmc %s: ca_file %s: no PEM certificate in it", cfg.Address, cfg.CAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	// No Client.Timeout: each operation's context bounds its requests
	// (gofish makes them with the context it connected with), and its
	// deadline is reported as ErrTimeout.
	b.hc = &http.Client{Transport: limitBody{transport}}
	return b, nil
}

// limitBody cuts every response body at maxRedfishBody.
type limitBody struct{ rt http.RoundTripper }

func (l limitBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err == nil {
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, maxRedfishBody), resp.Body}
	}
	return resp, err
}

// system connects and runs f on the machine's ComputerSystem, bounded
// by the timeout.
func (b *redfishBMC) system(ctx context.Context, op string, f func(sys *redfish.ComputerSystem) error) error {
	err := bounded(ctx, b.cfg.Timeout, func(ctx context.Context) error {
		c, err := gofish.ConnectContext(ctx, gofish.ClientConfig{
			Endpoint: b.endpoint, Username: b.user, Password: b.password,
			BasicAuth: true, HTTPClient: b.hc,
		})
		if err != nil {
			return classifyRedfish(fmt.Errorf("service root: %w", err))
		}
		defer b.hc.CloseIdleConnections()
		var sys *redfish.ComputerSystem
		if b.systemPath != "" {
			sys, err = redfish.GetComputerSystem(c, b.systemPath)
			if err != nil {
				return classifyRedfish(fmt.Errorf("system %s: %w", b.systemPath, err))
			}
		} else {
			systems, err := c.Service.Systems()
			if err != nil {
				return classifyRedfish(fmt.Errorf("systems: %w", err))
			}
			if len(systems) != 1 {
				ids := make([]string, 0, len(systems))
				for _, s := range systems {
					ids = append(ids, s.ODataID)
				}
				return fmt.Errorf("the service has %d systems %v: name one in the address (https://BMC/redfish/v1/Systems/ID)", len(systems), ids)
			}
			sys = systems[0]
		}
		return classifyRedfish(f(sys))
	})
	if err != nil {
		return &Error{Type: TypeRedfish, Address: b.cfg.Address, Op: op, Err: err}
	}
	return nil
}

// classifyRedfish wraps the sentinel that fits err, and cuts the BMC's
// error body, which gofish puts in the text whole, to a readable size.
func classifyRedfish(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	status := 0
	var re *common.Error
	if errors.As(err, &re) {
		status = re.HTTPReturnedStatusCode
	} else {
		// gofish reports a collection's failed members as text only
		// (`"error":"401: …"`): the status is read from there.
		for _, code := range []int{http.StatusUnauthorized, http.StatusForbidden} {
			if strings.Contains(msg, fmt.Sprintf(`"error":"%d: `, code)) {
				status = code
			}
		}
	}
	switch status {
	case 0:
		return err
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%w: %s", ErrAuth, msg)
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return fmt.Errorf("%w: %s", ErrUnsupported, msg)
	}
	return errors.New(msg)
}

// reset posts ComputerSystem.Reset with the first of want that the
// system allows. A system that lists no allowed values is asked for the
// first.
func reset(sys *redfish.ComputerSystem, want ...redfish.ResetType) error {
	rt := want[0]
	if len(sys.SupportedResetTypes) > 0 {
		i := slices.IndexFunc(want, func(w redfish.ResetType) bool { return slices.Contains(sys.SupportedResetTypes, w) })
		if i < 0 {
			return fmt.Errorf("%w: reset %v (the system allows %v)", ErrUnsupported, want, sys.SupportedResetTypes)
		}
		rt = want[i]
	}
	if err := sys.Reset(rt); err != nil {
		return fmt.Errorf("reset %s: %w", rt, err)
	}
	return nil
}

func (b *redfishBMC) On(ctx context.Context) error {
	return b.system(ctx, "on", func(sys *redfish.ComputerSystem) error {
		return reset(sys, redfish.OnResetType, redfish.ForceOnResetType)
	})
}

func (b *redfishBMC) Off(ctx context.Context) error {
	return b.system(ctx, "off", func(sys *redfish.ComputerSystem) error {
		return reset(sys, redfish.ForceOffResetType)
	})
}

// Cycle restarts a system that is on, and powers on one that is off:
// ForceRestart (or PowerCycle) of a system that is off does nothing on
// some BMCs.
func (b *redfishBMC) Cycle(ctx context.Context) error {
	return b.system(ctx, "cycle", func(sys *redfish.ComputerSystem) error {
		if sys.PowerState == redfish.OffPowerState {
			return reset(sys, redfish.OnResetType, redfish.ForceOnResetType)
		}
		return reset(sys, redfish.ForceRestartResetType, redfish.PowerCycleResetType)
	})
}

func (b *redfishBMC) Status(ctx context.Context) (State, error) {
	st := Unknown
	err := b.system(ctx, "status", func(sys *redfish.ComputerSystem) error {
		switch sys.PowerState {
		case redfish.OnPowerState:
			st = On
		case redfish.OffPowerState:
			st = Off
		}
		return nil
	})
	if err != nil {
		return Unknown, err
	}
	return st, nil
}

// BootPXEOnce PATCHes the system's Boot: override Once, target Pxe. A
// system whose Boot lists allowed targets without Pxe is not asked.
func (b *redfishBMC) BootPXEOnce(ctx context.Context) error {
	return b.system(ctx, "boot pxe once", func(sys *redfish.ComputerSystem) error {
		var raw struct {
			Boot struct {
				Targets []string `json:"BootSourceOverrideTarget@Redfish.AllowableValues"`
			}
		}
		if err := json.Unmarshal(sys.RawData, &raw); err == nil && len(raw.Boot.Targets) > 0 &&
			!slices.Contains(raw.Boot.Targets, string(redfish.PxeBootSourceOverrideTarget)) {
			return fmt.Errorf("%w: boot override to Pxe (the system allows %v)", ErrUnsupported, raw.Boot.Targets)
		}
		return sys.SetBoot(redfish.Boot{
			BootSourceOverrideEnabled: redfish.OnceBootSourceOverrideEnabled,
			BootSourceOverrideTarget:  redfish.PxeBootSourceOverrideTarget,
		})
	})
}
