// Package profiles owns the pxe-anywhere configuration file (server,
// DHCP, images, profiles and the MAC→profile machine list, with strict
// validation that names file and line). The machine inventory and its
// state are in package store. It does not serve, boot or install anything.
package profiles

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pxe-anywhere/pxe-anywhere/installer"
	"github.com/pxe-anywhere/pxe-anywhere/rules"
)

// Config is a loaded and validated configuration file.
type Config struct {
	Server   Server
	DHCP     DHCP
	Images   map[string]*Image
	Profiles map[string]*Profile
	Machines []*Machine
	// Rules decide a profile for machines that Machines does not list,
	// first match wins (rules package).
	Rules []*rules.Rule
	// ruleBMC holds the bmc: block of each rule that has one (see
	// RuleBMC).
	ruleBMC map[*rules.Rule]*BMC
}

// UnknownPolicy says what to do with a machine whose MAC is not listed.
type UnknownPolicy string

// The unknown_machines values.
const (
	UnknownIgnore    UnknownPolicy = "ignore"
	UnknownLocalBoot UnknownPolicy = "local-boot"
	UnknownDiscover  UnknownPolicy = "discover"
)

// RAMode says whether serve answers IPv6 router solicitations on its
// interfaces (package ra).
type RAMode string

// The router_advertisements values.
const (
	// RAAuto answers, except on an interface where another router
	// advertises.
	RAAuto RAMode = "auto"
	RAOff  RAMode = "off"
)

// Server is the `server:` section.
type Server struct {
	Interfaces []string
	// Advertise is the zero Addr when unset; the caller picks the first
	// IPv4 address of Interfaces[0] then.
	Advertise netip.Addr
	// HTTPListen is the boot side (scripts, images, callback); "" when
	// unset: the caller listens on Advertise, port 8080, then.
	HTTPListen string
	// AdminListen is the operator side (API, status page, metrics).
	AdminListen string
	// TLSCert and TLSKey, both set or both "", make AdminListen HTTPS.
	TLSCert    string
	TLSKey     string
	TFTPListen string
	StateDir   string
	IPXEDir    string
	// APITokenFile and SSHKey are "" when unset: the caller derives them
	// from StateDir, because only then may it create them.
	APITokenFile string
	SSHKey       string
	MaxInstalls  int
	// Database is a postgres:// URL: the state lives in that
	// PostgreSQL database instead of SQLite in StateDir ("").
	// DatabasePasswordFile, when set, holds its password (a private
	// file); else the URL's host takes it from the standard PostgreSQL
	// environment (PGPASSWORD, PGPASSFILE, ~/.pgpass).
	Database             string
	DatabasePasswordFile string
	// ID names this server among those that share the database ("":
	// the caller derives one and keeps it in StateDir). ClaimLease is
	// how long an install claim lives without a heartbeat: the bound
	// after which the other servers take a dead server's installs over.
	ID         string
	ClaimLease time.Duration

	// limits (engine): bounds on what a target feeds the
	// engine. A line longer than TargetLineBytes is cut; command output
	// kept in memory (probe, hardware config) beyond TargetOutputBytes
	// fails the command; an install's log keeps its first
	// InstallLogHead and last InstallLogTail lines, with one line in
	// between that says how many were dropped.
	TargetLineBytes   int
	TargetOutputBytes int
	InstallLogHead    int
	InstallLogTail    int
	UnknownMachines   UnknownPolicy
	DiscoverImage     string
	// Trust is how boots are bound to machines, for profiles that do
	// not say and for discovered machines.
	Trust Trust
	// RouterAdvertisements ends iPXE's wait for IPv6 routers (auto) or
	// leaves it to run out (off).
	RouterAdvertisements RAMode

	// limits (state): what strangers can make the server
	// keep is bounded.

	// KeepBoots is how many ended boots (used, voided or expired) the
	// store keeps per machine, for the record; older ones are pruned.
	KeepBoots int
	// KeepEvents is how many events the store keeps per machine.
	KeepEvents int
	// MaxUnknownMACs is how many ignored unknown MACs the server
	// remembers, so that each is counted once in the log.
	MaxUnknownMACs int
	// MaxDiscovered is how many machines unknown_machines: discover
	// may record; past it, discovery of another MAC is refused.
	MaxDiscovered int
	// limits (protocol bounds)
	Limits Limits
}

// Limits bound what a client of the protocol servers can hold: time,
// concurrent transfers, requests per source, event subscribers. Each
// has a default (DefaultLimits) and a key in `server:`.
type Limits struct {
	// TFTPMaxTransfers caps TFTP transfers under way at once.
	TFTPMaxTransfers int
	// TFTPWindow is how many blocks a TFTP transfer sends before it
	// waits for their ACKs (1: RFC 1350's lock step).
	TFTPWindow int
	// HTTPHeaderTimeout and HTTPReadTimeout bound reading a request's
	// headers and the whole request; HTTPIdleTimeout a keep-alive
	// connection between requests.
	HTTPHeaderTimeout time.Duration
	HTTPReadTimeout   time.Duration
	HTTPIdleTimeout   time.Duration
	// HTTPWriteTimeout bounds writing a small response, and, for image
	// files, each block of the body: a client that takes longer to
	// accept the next block is cut.
	HTTPWriteTimeout time.Duration
	// BootMaxPerSource caps the boot-side requests one source address
	// has in flight; BootScriptsPerMinute the iPXE scripts it may ask
	// for per minute.
	BootMaxPerSource     int
	BootScriptsPerMinute int
	// SSEWriteTimeout drops an event-stream client that does not take
	// an event in time; SSEMaxSubscribers caps the streams open at once.
	SSEWriteTimeout   time.Duration
	SSEMaxSubscribers int
}

// DefaultLimits are the limits of a config that sets none.
func DefaultLimits() Limits {
	return Limits{
		TFTPMaxTransfers:     256,
		TFTPWindow:           1,
		HTTPHeaderTimeout:    10 * time.Second,
		HTTPReadTimeout:      30 * time.Second,
		HTTPIdleTimeout:      60 * time.Second,
		HTTPWriteTimeout:     30 * time.Second,
		BootMaxPerSource:     8,
		BootScriptsPerMinute: 60,
		SSEWriteTimeout:      10 * time.Second,
		SSEMaxSubscribers:    32,
	}
}

// The defaults of the limits (state).
const (
	DefaultKeepBoots      = 20
	DefaultKeepEvents     = 1000
	DefaultMaxUnknownMACs = 4096
	DefaultMaxDiscovered  = 256
)

// Trust says what a machine must show before the boot side hands it
// its boot's secrets.
type Trust string

// The trust values.
const (
	// TrustDHCP: the request must come from an address that DHCP gave
	// (or saw given) to the machine's MAC. The default.
	TrustDHCP Trust = "dhcp"
	// TrustMAC: the MAC in the URL is enough. For networks where the
	// server cannot see DHCP (a relay that forwards only to a foreign
	// DHCP server, installers with static addresses); any host that
	// can reach the boot listener can then ask for a machine's boot.
	TrustMAC Trust = "mac"
)

// DHCPMode is proxy (another server hands out addresses) or authoritative.
type DHCPMode string

// The dhcp.mode values.
const (
	DHCPProxy         DHCPMode = "proxy"
	DHCPAuthoritative DHCPMode = "authoritative"
)

// DHCP is the `dhcp:` section. Subnet and the fields after it are only
// set (and only used) in authoritative mode.
type DHCP struct {
	Mode       DHCPMode
	EFIx64Boot string
	ARM64Boot  string
	Subnet     netip.Prefix
	RangeStart netip.Addr
	RangeEnd   netip.Addr
	Router     netip.Addr
	DNS        []netip.Addr
	Domain     string
	LeaseTime  time.Duration
	// Relays are the DHCP relay agents whose forwarded requests are
	// answered, matched against a packet's source address (not its
	// giaddr, which the sender writes). Empty: every relayed request is
	// dropped, so no host can claim a switch port with option 82.
	Relays []netip.Prefix
}

// Image is one entry of `images:`; exactly one of KexecTarball,
// NetbootDir and Kernel is set. Local paths are absolute.
type Image struct {
	Name         string
	KexecTarball string // a local path or an http(s) URL
	SHA256       string // lower-case hex; required when KexecTarball is a URL
	NetbootDir   string
	Kernel       string
	Initrd       []string
	Cmdline      string
}

// The values Image.Kind returns.
const (
	ImageKexec   = "kexec"
	ImageNetboot = "netboot"
	ImageFiles   = "files"
)

// Kind says which of the three image forms i is.
func (i *Image) Kind() string {
	switch {
	case i.KexecTarball != "":
		return ImageKexec
	case i.NetbootDir != "":
		return ImageNetboot
	default:
		return ImageFiles
	}
}

// The install vocabulary is the installer's: a profile says what the
// engine does in the engine's own terms, so the two cannot drift apart.
type (
	// StorePaths installs prebuilt closures instead of building a flake.
	StorePaths = installer.StorePaths
	// KeyFile is a disk encryption key: Local on this host is copied to
	// Remote on the installer before disko runs.
	KeyFile = installer.KeyFile
	// Chown sets the owner of a path in the installed system's extra files.
	Chown = installer.Chown
)

// SSHSettings says how to reach the installer.
type SSHSettings struct {
	User    string
	Port    int
	Options map[string]string
	// limits (engine): a keepalive every KeepaliveInterval;
	// after KeepaliveCountMax unanswered the connection is closed and
	// the phase fails.
	KeepaliveInterval time.Duration
	KeepaliveCountMax int
}

// The profile after_install values.
const (
	AfterReboot   = "reboot"
	AfterPoweroff = "poweroff"
	AfterStay     = "stay"
)

// The install phases a profile may list: the installer's.
const (
	PhaseKexec   = installer.PhaseKexec
	PhaseDisko   = installer.PhaseDisko
	PhaseInstall = installer.PhaseInstall
	PhaseReboot  = installer.PhaseReboot
)

// Profile is one entry of `profiles:`; exactly one of Flake and
// StorePaths is set.
type Profile struct {
	Name               string
	Image              string
	Flake              string
	StorePaths         *StorePaths
	DiskEncryptionKeys []KeyFile // sorted by Remote
	ExtraFiles         string
	Chown              []Chown
	KernelParams       []string
	SSH                SSHSettings
	AfterInstall       string
	Retries            int
	Phases             []string
	// limits (engine): the timeout of each phase (and of
	// "probe") that differs from the engine's default.
	Timeouts map[string]time.Duration
	Trust    Trust // "" means server.trust
	// BMC holds what the profile's machines' BMCs share; nil: none.
	BMC *BMC
}

// TrustOf is the trust in force for machines of profile p (nil: a
// discovered machine).
func (c *Config) TrustOf(p *Profile) Trust {
	if p != nil && p.Trust != "" {
		return p.Trust
	}
	if c.Server.Trust == "" {
		return TrustDHCP
	}
	return c.Server.Trust
}

// WeakTrust lists what trusts the MAC alone: "server" when server.trust
// is mac, and the profiles that say trust: mac, sorted.
func (c *Config) WeakTrust() []string {
	var out []string
	if c.Server.Trust == TrustMAC {
		out = append(out, "server")
	}
	names := make([]string, 0, len(c.Profiles))
	for name, p := range c.Profiles {
		if p.Trust == TrustMAC {
			names = append(names, "profiles."+name)
		}
	}
	sort.Strings(names)
	return append(out, names...)
}

// Machine is one entry of `machines:`.
type Machine struct {
	MAC      net.HardwareAddr
	Profile  string
	Hostname string
	IP       netip.Addr // zero when the machine has no reservation
	// BMC is the machine's own bmc: block (merged over its profile's
	// by Config.BMCOf); nil: none.
	BMC *BMC
	// Netboot is NetbootAny ("" when unset) or NetbootHTTP.
	Netboot string
}

// The machine netboot values.
const (
	// NetbootAny: the firmware's PXE and HTTP Boot both get iPXE.
	NetbootAny = "any"
	// NetbootHTTP: UEFI HTTP Boot only. The firmware's PXE attempt gets
	// an address but no boot file, which makes UEFI firmware go on to
	// its HTTP Boot option; for NICs whose PXE is broken, or networks
	// where TFTP does not pass.
	NetbootHTTP = "http"
)

// MachineByMAC returns the machine listed with mac, or nil.
func (c *Config) MachineByMAC(mac net.HardwareAddr) *Machine {
	for _, m := range c.Machines {
		if bytes.Equal(m.MAC, mac) {
			return m
		}
	}
	return nil
}

// Profile returns the named profile, or nil.
func (c *Config) Profile(name string) *Profile {
	return c.Profiles[name]
}

// Error is one problem found in a configuration file. Load and Parse
// return all of them joined (errors.Join), so errors.As finds the first
// and a type switch on Unwrap() []error finds them all.
type Error struct {
	File  string
	Line  int    // 0 when the YAML parser gave none
	Where string // dotted path of the offending entry, e.g. "profiles.web"
	Msg   string
	Hint  string // what was probably meant or what to do; may be ""
}

func (e *Error) Error() string {
	var b bytes.Buffer
	if e.Line > 0 {
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	} else {
		fmt.Fprintf(&b, "%s: ", e.File)
	}
	if e.Where != "" {
		b.WriteString(e.Where + ": ")
	}
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString(" (" + e.Hint + ")")
	}
	return b.String()
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	return Parse(path, data)
}

var yamlLineErr = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Parse validates data as the configuration file name. name appears in
// every error and its directory is where relative paths resolve from.
func Parse(name string, data []byte) (*Config, error) {
	dir, err := filepath.Abs(filepath.Dir(name))
	if err != nil {
		return nil, fmt.Errorf("config %s: find its directory to resolve relative paths: %w", name, err)
	}
	d := &decoder{file: name, dir: dir, lines: map[string]int{}}
	root, err := parseYAML(data)
	if err != nil {
		e := &Error{File: name, Msg: err.Error(), Hint: "fix the YAML syntax"}
		if m := yamlLineErr.FindStringSubmatch(err.Error()); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Msg = m[2]
		}
		return nil, e
	}
	c := d.config(root)
	d.validate(c)
	// Report top to bottom, as a person fixes a file.
	sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].Line < d.errs[j].Line })
	if len(d.errs) > 0 {
		errs := make([]error, len(d.errs))
		for i, e := range d.errs {
			errs[i] = e
		}
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// parseYAML returns the single document's top node, or nil for an
// empty file (which means: all defaults).
func parseYAML(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("yaml: line %d: a second document starts here; the config is one document", more.Line)
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		return doc.Content[0], nil
	}
	return nil, nil
}
