package profiles

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pxe-anywhere/pxe-anywhere/images"
	"github.com/pxe-anywhere/pxe-anywhere/rules"
)

// decoder walks the YAML node tree by hand, rather than through
// yaml.Unmarshal, so that every problem keeps its line and all of them
// are reported at once.
type decoder struct {
	file string
	dir  string // absolute directory of the config file
	errs []*Error

	// Document order of names, so cross-checks report in a stable order.
	imageOrder   []string
	profileOrder []string
	// Lines of entries, for cross-check errors.
	lines map[string]int
}

func (d *decoder) errf(n *yaml.Node, where, hint, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errAt(line, where, hint, format, args...)
}

func (d *decoder) errAt(line int, where, hint, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Where: where, Msg: fmt.Sprintf(format, args...), Hint: hint})
}

// join builds the dotted path of a field.
func join(where, key string) string {
	if where == "" {
		return key
	}
	return where + "." + key
}

// deref follows aliases; the depth bound guards against a malformed tree.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 32; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", n.Value)
	default:
		return "an alias"
	}
}

var kindWords = map[yaml.Kind]string{
	yaml.MappingNode:  "a mapping",
	yaml.SequenceNode: "a list",
	yaml.ScalarNode:   "a single value",
}

// want returns n, aliases followed, when it is of kind; nil when it is
// unset; and reports it and returns nil when it is of another kind.
func (d *decoder) want(n *yaml.Node, where string, kind yaml.Kind, hint string) *yaml.Node {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != kind {
		d.errf(n, where, hint, "must be %s, got %s", kindWords[kind], kindName(n))
		return nil
	}
	return n
}

type entry struct {
	key string
	kn  *yaml.Node // key node, for the line
	v   *yaml.Node
}

// entries returns a mapping's pairs in order, reporting non-mappings,
// non-scalar keys and repeated keys (which yaml.v3 leaves in a Node).
func (d *decoder) entries(n *yaml.Node, where string) []entry {
	n = d.want(n, where, yaml.MappingNode, "write key: value pairs")
	if n == nil {
		return nil
	}
	var out []entry
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k == nil || k.Kind != yaml.ScalarNode {
			d.errf(n.Content[i], where, "", "keys must be plain names")
			continue
		}
		if first, ok := seen[k.Value]; ok {
			d.errf(k, where, fmt.Sprintf("first at line %d", first), "duplicate field %q", k.Value)
			continue
		}
		seen[k.Value] = k.Line
		out = append(out, entry{key: k.Value, kn: k, v: v})
	}
	return out
}

// fields returns the values of a mapping with a fixed set of keys and
// reports every other key with the closest known one.
func (d *decoder) fields(n *yaml.Node, where string, known ...string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	for _, e := range d.entries(n, where) {
		if !contains(known, e.key) {
			d.errf(e.kn, where, suggest(e.key, known, "known fields: "+strings.Join(known, ", ")), "unknown field %q", e.key)
			continue
		}
		// Key lines serve errors about the entry as a whole, which
		// are found later, and about fields that are missing.
		d.lines[join(where, e.key)] = e.kn.Line
		if !isNull(e.v) {
			out[e.key] = e.v
		}
	}
	return out
}

// str returns a scalar's text; ok is false when it is unset or not a scalar.
func (d *decoder) str(n *yaml.Node, where string) (string, bool) {
	n = d.want(n, where, yaml.ScalarNode, "")
	if n == nil {
		return "", false
	}
	return n.Value, true
}

func (d *decoder) setStr(dst *string, n *yaml.Node, where string) {
	if s, ok := d.str(n, where); ok {
		*dst = s
	}
}

func (d *decoder) setInt(dst *int, n *yaml.Node, where string, min, max int) {
	s, ok := d.str(n, where)
	if !ok {
		return
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < min || v > max {
		d.errf(n, where, fmt.Sprintf("a whole number from %d to %d", min, max), "bad number %q", s)
		return
	}
	*dst = v
}

func (d *decoder) strList(n *yaml.Node, where string) []string {
	n = d.want(n, where, yaml.SequenceNode, "write [a, b]")
	if n == nil {
		return nil
	}
	var out []string
	for i, c := range n.Content {
		if s, ok := d.str(c, fmt.Sprintf("%s[%d]", where, i)); ok {
			out = append(out, s)
		}
	}
	return out
}

func (d *decoder) enum(n *yaml.Node, where string, valid ...string) (string, bool) {
	s, ok := d.str(n, where)
	if !ok {
		return "", false
	}
	if !contains(valid, s) {
		d.errf(n, where, suggest(s, valid, "one of "+strings.Join(valid, ", ")), "bad value %q", s)
		return "", false
	}
	return s, true
}

// ipv4 parses an IPv4 address: everything DHCP hands out is DHCPv4.
func (d *decoder) ipv4(n *yaml.Node, where string) (netip.Addr, bool) {
	s, ok := d.str(n, where)
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		d.errf(n, where, "an IPv4 address like 10.77.0.1", "bad address %q", s)
		return netip.Addr{}, false
	}
	return a, true
}

func (d *decoder) setIPv4(dst *netip.Addr, n *yaml.Node, where string) {
	if a, ok := d.ipv4(n, where); ok {
		*dst = a
	}
}

// path resolves a local path against the config file's directory, so a
// config works the same whatever the working directory.
func (d *decoder) path(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(d.dir, p)
}

func (d *decoder) setPath(dst *string, n *yaml.Node, where string) {
	if s, ok := d.str(n, where); ok && s != "" {
		*dst = d.path(s)
	}
}

func (d *decoder) config(root *yaml.Node) *Config {
	c := &Config{
		Server: Server{
			AdminListen: "127.0.0.1:8081", TFTPListen: ":69", StateDir: "/var/lib/pxe-anywhere",
			MaxInstalls: 4, UnknownMachines: UnknownIgnore, Trust: TrustDHCP, RouterAdvertisements: RAAuto,
			KeepBoots: DefaultKeepBoots, KeepEvents: DefaultKeepEvents, ClaimLease: DefaultClaimLease,
			MaxUnknownMACs: DefaultMaxUnknownMACs, MaxDiscovered: DefaultMaxDiscovered,
			Limits: DefaultLimits(),
			// limits (engine)
			TargetLineBytes: 64 << 10, TargetOutputBytes: 16 << 20, InstallLogHead: 2000, InstallLogTail: 3000,
		},
		DHCP:     DHCP{Mode: DHCPProxy, EFIx64Boot: "ipxe.efi", LeaseTime: time.Hour},
		Images:   map[string]*Image{},
		Profiles: map[string]*Profile{},
	}
	if root == nil {
		return c
	}
	f := d.fields(root, "", "server", "dhcp", "images", "profiles", "machines", "rules")
	d.server(&c.Server, f["server"])
	d.dhcp(&c.DHCP, f["dhcp"])
	for _, e := range d.named(f["images"], "images") {
		c.Images[e.key] = d.image(e.key, e.v, "images."+e.key)
		d.imageOrder = append(d.imageOrder, e.key)
	}
	for _, e := range d.named(f["profiles"], "profiles") {
		c.Profiles[e.key] = d.profile(e.key, e.v, "profiles."+e.key)
		d.profileOrder = append(d.profileOrder, e.key)
	}
	d.machines(c, f["machines"])
	d.rules(c, f["rules"])
	return c
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// named returns the entries of images: or profiles: whose names are
// valid (they end up in URLs and logs) and remembers their lines.
func (d *decoder) named(n *yaml.Node, section string) []entry {
	var out []entry
	for _, e := range d.entries(n, section) {
		where := section + "." + e.key
		if !nameRE.MatchString(e.key) {
			d.errf(e.kn, where, "use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63", "bad name %q", e.key)
			continue
		}
		d.lines[where] = e.kn.Line
		out = append(out, e)
	}
	return out
}

func (d *decoder) server(s *Server, n *yaml.Node) {
	const w = "server"
	f := d.fields(n, w, "interfaces", "advertise", "http_listen", "admin_listen", "tls_cert", "tls_key", "tftp_listen",
		"state_dir", "ipxe_dir", "api_token_file", "ssh_key", "max_installs", "unknown_machines", "discover_image", "trust",
		"router_advertisements",
		// limits (state)
		"keep_boots", "keep_events", "max_unknown_macs", "max_discovered",
		// limits (protocol bounds)
		"tftp_max_transfers", "tftp_window", "http_header_timeout", "http_read_timeout", "http_idle_timeout", "http_write_timeout",
		"boot_max_per_source", "boot_scripts_per_minute", "sse_write_timeout", "sse_max_subscribers",
		// limits (engine)
		"target_line_bytes", "target_output_bytes", "install_log_head", "install_log_tail",
		// the shared state store
		"database", "database_password_file", "id", "claim_lease")
	s.Interfaces = d.strList(f["interfaces"], w+".interfaces")
	for i, ifc := range s.Interfaces {
		if ifc == "" || len(ifc) > 15 || strings.ContainsAny(ifc, "/ \t") {
			d.errf(f["interfaces"], fmt.Sprintf("%s.interfaces[%d]", w, i), "a Linux interface name like br0", "bad interface name %q", ifc)
		}
	}
	d.setIPv4(&s.Advertise, f["advertise"], w+".advertise")
	d.setListen(&s.HTTPListen, f["http_listen"], w+".http_listen")
	d.setListen(&s.AdminListen, f["admin_listen"], w+".admin_listen")
	d.setPath(&s.TLSCert, f["tls_cert"], w+".tls_cert")
	d.setPath(&s.TLSKey, f["tls_key"], w+".tls_key")
	if (s.TLSCert == "") != (s.TLSKey == "") {
		set, missing := f["tls_cert"], "tls_key"
		if s.TLSCert == "" {
			set, missing = f["tls_key"], "tls_cert"
		}
		d.errf(set, w, "HTTPS needs the certificate and its key: set both PEM files, or neither", "%s is missing", missing)
	}
	d.setListen(&s.TFTPListen, f["tftp_listen"], w+".tftp_listen")
	d.setPath(&s.StateDir, f["state_dir"], w+".state_dir")
	d.setPath(&s.IPXEDir, f["ipxe_dir"], w+".ipxe_dir")
	d.setPath(&s.APITokenFile, f["api_token_file"], w+".api_token_file")
	d.setPath(&s.SSHKey, f["ssh_key"], w+".ssh_key")
	d.setInt(&s.MaxInstalls, f["max_installs"], w+".max_installs", 1, 1024)
	d.database(s, f, w)
	// limits (engine)
	d.setInt(&s.TargetLineBytes, f["target_line_bytes"], w+".target_line_bytes", 256, 64<<20)
	d.setInt(&s.TargetOutputBytes, f["target_output_bytes"], w+".target_output_bytes", 4096, 1<<30)
	d.setInt(&s.InstallLogHead, f["install_log_head"], w+".install_log_head", 10, 1000000)
	d.setInt(&s.InstallLogTail, f["install_log_tail"], w+".install_log_tail", 10, 1000000)
	if v, ok := d.enum(f["unknown_machines"], w+".unknown_machines", string(UnknownIgnore), string(UnknownLocalBoot), string(UnknownDiscover)); ok {
		s.UnknownMachines = UnknownPolicy(v)
	}
	d.setStr(&s.DiscoverImage, f["discover_image"], w+".discover_image")
	if v, ok := d.enum(f["trust"], w+".trust", string(TrustDHCP), string(TrustMAC)); ok {
		s.Trust = Trust(v)
	}
	if v, ok := d.enum(f["router_advertisements"], w+".router_advertisements", string(RAAuto), string(RAOff)); ok {
		s.RouterAdvertisements = RAMode(v)
	}
	// limits (state)
	d.setInt(&s.KeepBoots, f["keep_boots"], w+".keep_boots", 1, 100000)
	d.setInt(&s.KeepEvents, f["keep_events"], w+".keep_events", 10, 10000000)
	d.setInt(&s.MaxUnknownMACs, f["max_unknown_macs"], w+".max_unknown_macs", 1, 1<<20)
	d.setInt(&s.MaxDiscovered, f["max_discovered"], w+".max_discovered", 1, 1<<20)
	d.limits(&s.Limits, f, w)
}

// limits decodes the protocol bounds of `server:`.
func (d *decoder) limits(l *Limits, f map[string]*yaml.Node, w string) {
	d.setInt(&l.TFTPMaxTransfers, f["tftp_max_transfers"], w+".tftp_max_transfers", 1, 65535)
	d.setInt(&l.TFTPWindow, f["tftp_window"], w+".tftp_window", 1, 60)
	d.setDuration(&l.HTTPHeaderTimeout, f["http_header_timeout"], w+".http_header_timeout", time.Second, time.Hour)
	d.setDuration(&l.HTTPReadTimeout, f["http_read_timeout"], w+".http_read_timeout", time.Second, time.Hour)
	d.setDuration(&l.HTTPIdleTimeout, f["http_idle_timeout"], w+".http_idle_timeout", time.Second, time.Hour)
	d.setDuration(&l.HTTPWriteTimeout, f["http_write_timeout"], w+".http_write_timeout", time.Second, time.Hour)
	d.setInt(&l.BootMaxPerSource, f["boot_max_per_source"], w+".boot_max_per_source", 1, 10000)
	d.setInt(&l.BootScriptsPerMinute, f["boot_scripts_per_minute"], w+".boot_scripts_per_minute", 1, 100000)
	d.setDuration(&l.SSEWriteTimeout, f["sse_write_timeout"], w+".sse_write_timeout", time.Second, time.Hour)
	d.setInt(&l.SSEMaxSubscribers, f["sse_max_subscribers"], w+".sse_max_subscribers", 1, 10000)
}

// setDuration parses a duration like "45m" between min and max.
func (d *decoder) setDuration(dst *time.Duration, n *yaml.Node, where string, min, max time.Duration) bool {
	s, ok := d.str(n, where)
	if !ok {
		return false
	}
	t, err := time.ParseDuration(s)
	if err != nil || t < min || t > max {
		d.errf(n, where, fmt.Sprintf(`a duration from %s to %s, like "45m" or "2h"`, min, max), "bad duration %q", s)
		return false
	}
	*dst = t
	return true
}

func (d *decoder) setListen(dst *string, n *yaml.Node, where string) {
	s, ok := d.str(n, where)
	if !ok {
		return
	}
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		var p int
		p, err = strconv.Atoi(port)
		if err == nil && (p < 1 || p > 65535) {
			err = fmt.Errorf("port out of range")
		}
	}
	if err != nil {
		d.errf(n, where, `host:port like ":8080" or "10.77.0.1:8080"`, "bad listen address %q", s)
		return
	}
	*dst = s
}

// bootFile checks an iPXE binary name, which is looked up under ipxe_dir
// and served over TFTP, so it must stay inside that directory. optional
// lets "" mean "none" (arm64 machines are then not booted).
func (d *decoder) bootFile(dst *string, n *yaml.Node, where string, optional bool) {
	s, ok := d.str(n, where)
	if !ok {
		return
	}
	if s == "" && optional {
		*dst = ""
		return
	}
	if s == "" || filepath.IsAbs(s) || strings.Contains("/"+s+"/", "/../") {
		d.errf(n, where, "a file name relative to server.ipxe_dir, like ipxe.efi or snponly.efi", "bad boot file %q", s)
		return
	}
	*dst = s
}

func (d *decoder) dhcp(c *DHCP, n *yaml.Node) {
	const w = "dhcp"
	f := d.fields(n, w, "mode", "efi_x64_boot", "arm64_boot", "subnet", "range", "router", "dns", "domain", "lease_time", "relays")
	if v, ok := d.enum(f["mode"], w+".mode", string(DHCPProxy), string(DHCPAuthoritative)); ok {
		c.Mode = DHCPMode(v)
	}
	d.bootFile(&c.EFIx64Boot, f["efi_x64_boot"], w+".efi_x64_boot", false)
	d.bootFile(&c.ARM64Boot, f["arm64_boot"], w+".arm64_boot", true)
	if s, ok := d.str(f["subnet"], w+".subnet"); ok {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil || !p.Addr().Is4():
			d.errf(f["subnet"], w+".subnet", "an IPv4 prefix like 10.77.0.0/24", "bad subnet %q", s)
		case p.Masked() != p:
			d.errf(f["subnet"], w+".subnet", fmt.Sprintf("did you mean %q?", p.Masked().String()), "subnet %q has host bits set", s)
		default:
			c.Subnet = p
		}
	}
	if rn := deref(f["range"]); rn != nil {
		if rn.Kind != yaml.SequenceNode || len(rn.Content) != 2 {
			d.errf(rn, w+".range", "write [first, last], e.g. [10.77.0.100, 10.77.0.200]", "must be a list of two addresses")
		} else {
			a, okA := d.ipv4(rn.Content[0], w+".range[0]")
			b, okB := d.ipv4(rn.Content[1], w+".range[1]")
			if okA && okB {
				c.RangeStart, c.RangeEnd = a, b
			}
		}
	}
	d.setIPv4(&c.Router, f["router"], w+".router")
	if dn := d.want(f["dns"], w+".dns", yaml.SequenceNode, "write [10.77.0.1]"); dn != nil {
		for i, e := range dn.Content {
			if a, ok := d.ipv4(e, fmt.Sprintf("%s.dns[%d]", w, i)); ok {
				c.DNS = append(c.DNS, a)
			}
		}
	}
	d.setStr(&c.Domain, f["domain"], w+".domain")
	if c.Domain != "" && !rules.ValidHostname(c.Domain) {
		d.errf(f["domain"], w+".domain", "a DNS name like lab or example.org", "bad domain %q", c.Domain)
	}
	if s, ok := d.str(f["lease_time"], w+".lease_time"); ok {
		t, err := time.ParseDuration(s)
		if err != nil || t < time.Minute {
			d.errf(f["lease_time"], w+".lease_time", `a duration of at least 1m, like "1h" or "30m"`, "bad duration %q", s)
		} else {
			c.LeaseTime = t
		}
	}
	if rn := d.want(f["relays"], w+".relays", yaml.SequenceNode, "write [10.88.0.2, 10.90.0.0/24]"); rn != nil {
		if len(rn.Content) > maxRelays {
			d.errf(rn, w+".relays", "list the relay agents, or the prefixes they send from", "%d entries; at most %d", len(rn.Content), maxRelays)
		} else {
			for i, e := range rn.Content {
				if p, ok := d.ipv4Prefix(e, fmt.Sprintf("%s.relays[%d]", w, i)); ok {
					c.Relays = append(c.Relays, p)
				}
			}
		}
	}
}

// maxRelays bounds dhcp.relays: every relayed packet is checked
// against it.
const maxRelays = 256

// ipv4Prefix reads an IPv4 address (a /32) or an IPv4 prefix.
// A relay's source must be a unicast address: a client with no address
// yet sends from 0.0.0.0, so a prefix holding it would trust every such
// client's giaddr and option 82.
func (d *decoder) ipv4Prefix(n *yaml.Node, where string) (netip.Prefix, bool) {
	const want = "an IPv4 address like 10.88.0.2 or a prefix like 10.88.0.0/24"
	s, ok := d.str(n, where)
	if !ok {
		if isNull(n) {
			d.errf(n, where, want, "empty relay entry")
		}
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(s)
	if a, aerr := netip.ParseAddr(s); aerr == nil {
		p, err = netip.PrefixFrom(a, a.BitLen()), nil
	}
	switch {
	case err != nil || !p.Addr().Is4():
		d.errf(n, where, want, "bad relay address %q", s)
	case p.Masked() != p:
		d.errf(n, where, fmt.Sprintf("did you mean %q?", p.Masked().String()), "prefix %q has host bits set", s)
	case p.Contains(netip.IPv4Unspecified()), p.Addr().IsMulticast(), p.Addr() == netip.AddrFrom4([4]byte{255, 255, 255, 255}), p.Addr().IsLoopback():
		d.errf(n, where, "list the unicast addresses the relays send from; a client without an address sends from 0.0.0.0", "%q is not a relay's address", s)
	default:
		return p, true
	}
	return netip.Prefix{}, false
}

func (d *decoder) image(name string, n *yaml.Node, w string) *Image {
	im := &Image{Name: name}
	f := d.fields(n, w, "kexec_tarball", "sha256", "netboot_dir", "kernel", "initrd", "cmdline")
	if s, ok := d.str(f["kexec_tarball"], w+".kexec_tarball"); ok && s != "" {
		if strings.Contains(s, "://") {
			if !images.IsURL(s) {
				d.errf(f["kexec_tarball"], w+".kexec_tarball", "use an http:// or https:// URL or a local path", "bad URL %q", s)
			}
			im.KexecTarball = s
		} else {
			im.KexecTarball = d.path(s)
		}
	}
	if s, ok := d.str(f["sha256"], w+".sha256"); ok {
		s = strings.ToLower(s)
		if !isHex64(s) {
			d.errf(f["sha256"], w+".sha256", "64 hex digits, as sha256sum prints", "bad sha256 %q", s)
		} else {
			im.SHA256 = s
		}
	}
	d.setPath(&im.NetbootDir, f["netboot_dir"], w+".netboot_dir")
	d.setPath(&im.Kernel, f["kernel"], w+".kernel")
	for _, p := range d.strList(f["initrd"], w+".initrd") {
		if p == "" {
			d.errf(f["initrd"], w+".initrd", "remove the empty entry", "empty initrd path")
			continue
		}
		im.Initrd = append(im.Initrd, d.path(p))
	}
	d.setStr(&im.Cmdline, f["cmdline"], w+".cmdline")

	set := 0
	for _, k := range []string{im.KexecTarball, im.NetbootDir, im.Kernel} {
		if k != "" {
			set++
		}
	}
	switch {
	case set == 0:
		d.errAt(d.lines[w], w, "set one of kexec_tarball, netboot_dir or kernel", "image has no boot files")
	case set > 1:
		d.errAt(d.lines[w], w, "set only one of kexec_tarball, netboot_dir or kernel", "image names more than one kind of boot files")
	}
	if strings.Contains(im.KexecTarball, "://") && im.SHA256 == "" && f["sha256"] == nil {
		d.errf(f["kexec_tarball"], w+".kexec_tarball", "add sha256: <64 hex digits> so a tampered download is refused", "URL tarball without sha256")
	}
	if im.SHA256 != "" && im.KexecTarball == "" {
		d.errf(f["sha256"], w+".sha256", "sha256 only checks a kexec_tarball", "sha256 without kexec_tarball")
	}
	if len(im.Initrd) > 0 && im.Kernel == "" {
		d.errf(f["initrd"], w+".initrd", "initrd goes with kernel; netboot_dir and kexec_tarball bring their own", "initrd without kernel")
	}
	if im.Cmdline != "" && im.KexecTarball != "" {
		d.errf(f["cmdline"], w+".cmdline", "the kexec tarball brings its own command line; use the profile's kernel_params", "cmdline with kexec_tarball")
	}
	return im
}

var phases = []string{PhaseKexec, PhaseDisko, PhaseInstall, PhaseReboot}

func (d *decoder) profile(name string, n *yaml.Node, w string) *Profile {
	p := &Profile{
		Name:         name,
		SSH:          SSHSettings{User: "root", Port: 22, KeepaliveInterval: 15 * time.Second, KeepaliveCountMax: 3},
		AfterInstall: AfterReboot,
		Phases:       []string{PhaseDisko, PhaseInstall, PhaseReboot},
	}
	f := d.fields(n, w, "image", "flake", "store_paths", "disk_encryption_keys", "extra_files",
		"chown", "kernel_params", "ssh", "after_install", "retries", "phases", "trust",
		"timeouts", // limits (engine)
		"bmc")
	d.setStr(&p.Image, f["image"], w+".image")
	if p.Image == "" {
		d.errAt(d.lines[w], w, "name one of the images: entries", "missing image")
	}
	d.setStr(&p.Flake, f["flake"], w+".flake")
	if f["store_paths"] != nil {
		sf := d.fields(f["store_paths"], w+".store_paths", "disko", "system")
		sp := &StorePaths{}
		for _, k := range []struct {
			key string
			dst *string
		}{{"disko", &sp.Disko}, {"system", &sp.System}} {
			where := w + ".store_paths." + k.key
			s, ok := d.str(sf[k.key], where)
			switch {
			case !ok:
				if sf[k.key] == nil {
					d.errAt(d.lines[w+".store_paths"], w+".store_paths", "store_paths needs both disko and system", "missing %s", k.key)
				}
			case !isStorePath(s):
				d.errf(sf[k.key], where, "a path like /nix/store/<hash>-name", "%q is not under /nix/store", s)
			default:
				*k.dst = s
			}
		}
		p.StorePaths = sp
	}
	switch {
	case p.Flake != "" && f["store_paths"] != nil:
		d.errAt(d.lines[w], w, "a profile installs either a flake or prebuilt store_paths", "both flake and store_paths set")
	case p.Flake == "" && f["store_paths"] == nil:
		d.errAt(d.lines[w], w, `set flake: "github:you/infra#host" or store_paths: {disko: ..., system: ...}`, "neither flake nor store_paths set")
	case p.Flake != "":
		if i := strings.LastIndex(p.Flake, "#"); i <= 0 || i == len(p.Flake)-1 {
			d.errf(f["flake"], w+".flake", fmt.Sprintf("name the configuration: %q", strings.TrimSuffix(p.Flake, "#")+"#"+name), "flake %q has no #name", p.Flake)
		}
	}
	for _, e := range d.entries(f["disk_encryption_keys"], w+".disk_encryption_keys") {
		where := w + ".disk_encryption_keys." + e.key
		local, ok := d.str(e.v, where)
		if !ok || local == "" {
			if ok || isNull(e.v) {
				d.errf(e.kn, where, "write remote: local-path", "missing local key file")
			}
			continue
		}
		if !filepath.IsAbs(e.key) {
			d.errf(e.kn, where, "the path on the installer, like /tmp/disk.key", "remote key path %q is not absolute", e.key)
			continue
		}
		p.DiskEncryptionKeys = append(p.DiskEncryptionKeys, KeyFile{Remote: e.key, Local: d.path(local)})
	}
	sort.Slice(p.DiskEncryptionKeys, func(i, j int) bool { return p.DiskEncryptionKeys[i].Remote < p.DiskEncryptionKeys[j].Remote })
	d.setPath(&p.ExtraFiles, f["extra_files"], w+".extra_files")
	for _, e := range d.entries(f["chown"], w+".chown") {
		where := w + ".chown." + e.key
		s, ok := d.str(e.v, where)
		if !ok && !isNull(e.v) {
			continue // d.str said what is wrong
		}
		uid, gid, ok := parseOwner(s)
		if !ok {
			d.errf(e.v, where, `write "UID:GID" with numbers, like "1000:100"`, "bad owner %q", s)
			continue
		}
		if !filepath.IsAbs(e.key) {
			d.errf(e.kn, where, "a path in the installed system, like /home/alice", "chown path %q is not absolute", e.key)
			continue
		}
		p.Chown = append(p.Chown, Chown{Path: e.key, UID: uid, GID: gid})
	}
	p.KernelParams = d.strList(f["kernel_params"], w+".kernel_params")
	if f["ssh"] != nil {
		sf := d.fields(f["ssh"], w+".ssh", "user", "port", "options", "keepalive_interval", "keepalive_count_max")
		// limits (engine)
		d.setDuration(&p.SSH.KeepaliveInterval, sf["keepalive_interval"], w+".ssh.keepalive_interval", time.Second, time.Hour)
		d.setInt(&p.SSH.KeepaliveCountMax, sf["keepalive_count_max"], w+".ssh.keepalive_count_max", 1, 1000)
		d.setStr(&p.SSH.User, sf["user"], w+".ssh.user")
		if p.SSH.User == "" || strings.ContainsAny(p.SSH.User, " \t@:/") {
			d.errf(sf["user"], w+".ssh.user", "a login name like root", "bad user %q", p.SSH.User)
		}
		d.setInt(&p.SSH.Port, sf["port"], w+".ssh.port", 1, 65535)
		for _, e := range d.entries(sf["options"], w+".ssh.options") {
			where := w + ".ssh.options." + e.key
			v, ok := d.str(e.v, where)
			// ssh -o takes Key=Value; a space or '=' in the key would
			// let a value smuggle in a second option.
			if !ok || e.key == "" || strings.ContainsAny(e.key, " \t=\n") || strings.ContainsAny(v, "\n\r") {
				d.errf(e.kn, where, "an ssh_config option name and one-line value, like ConnectTimeout: \"10\"", "bad ssh option")
				continue
			}
			if p.SSH.Options == nil {
				p.SSH.Options = map[string]string{}
			}
			p.SSH.Options[e.key] = v
		}
	}
	if v, ok := d.enum(f["after_install"], w+".after_install", AfterReboot, AfterPoweroff, AfterStay); ok {
		p.AfterInstall = v
	}
	d.setInt(&p.Retries, f["retries"], w+".retries", 0, 100)
	// limits (engine)
	for _, e := range d.entries(f["timeouts"], w+".timeouts") {
		where := w + ".timeouts." + e.key
		if e.key != "probe" && !contains(phases, e.key) {
			d.errf(e.kn, where, suggest(e.key, append([]string{"probe"}, phases...), "valid: probe, "+strings.Join(phases, ", ")), "unknown phase %q", e.key)
			continue
		}
		var t time.Duration
		if d.setDuration(&t, e.v, where, time.Second, 7*24*time.Hour) {
			if p.Timeouts == nil {
				p.Timeouts = map[string]time.Duration{}
			}
			p.Timeouts[e.key] = t
		}
	}
	if v, ok := d.enum(f["trust"], w+".trust", string(TrustDHCP), string(TrustMAC)); ok {
		p.Trust = Trust(v)
	}
	if f["bmc"] != nil {
		p.BMC = d.bmc(f["bmc"], w+".bmc")
	}
	if pn := f["phases"]; pn != nil {
		list := d.strList(pn, w+".phases")
		p.Phases = nil
		for _, ph := range list {
			switch {
			case !contains(phases, ph):
				d.errf(pn, w+".phases", suggest(ph, phases, "valid: "+strings.Join(phases, ", ")), "unknown phase %q", ph)
			case contains(p.Phases, ph):
				d.errf(pn, w+".phases", "list each phase once", "phase %q repeated", ph)
			default:
				p.Phases = append(p.Phases, ph)
			}
		}
	}
	return p
}

func (d *decoder) machines(c *Config, n *yaml.Node) {
	n = d.want(n, "machines", yaml.SequenceNode, "write a list of - mac: ... entries")
	if n == nil {
		return
	}
	for i, mn := range n.Content {
		w := fmt.Sprintf("machines[%d]", i)
		f := d.fields(mn, w, "mac", "profile", "hostname", "ip", "bmc", "netboot")
		m := &Machine{}
		if s, ok := d.str(f["mac"], w+".mac"); ok {
			hw, err := net.ParseMAC(s)
			if err != nil || len(hw) != 6 {
				d.errf(f["mac"], w+".mac", `an Ethernet address like "52:54:00:12:34:01"`, "bad MAC %q", s)
			} else {
				m.MAC = hw
			}
		} else if f["mac"] == nil {
			d.errf(mn, w, "every machine is found by its MAC", "missing mac")
		}
		d.setStr(&m.Profile, f["profile"], w+".profile")
		if m.Profile == "" {
			d.errf(mn, w, "name one of the profiles: entries", "missing profile")
		}
		d.setStr(&m.Hostname, f["hostname"], w+".hostname")
		if m.Hostname != "" && !rules.ValidHostname(m.Hostname) {
			d.errf(f["hostname"], w+".hostname", "letters, digits and '-', dot-separated labels of at most 63", "bad hostname %q", m.Hostname)
		}
		d.setIPv4(&m.IP, f["ip"], w+".ip")
		if f["bmc"] != nil {
			m.BMC = d.bmc(f["bmc"], w+".bmc")
		}
		if v, ok := d.enum(f["netboot"], w+".netboot", NetbootAny, NetbootHTTP); ok && v != NetbootAny {
			m.Netboot = v
		}
		c.Machines = append(c.Machines, m)
	}
}

func parseOwner(s string) (uid, gid int, ok bool) {
	u, g, found := strings.Cut(s, ":")
	if !found {
		return 0, 0, false
	}
	uv, err1 := strconv.ParseUint(u, 10, 32)
	gv, err2 := strconv.ParseUint(g, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return int(uv), int(gv), true
}
