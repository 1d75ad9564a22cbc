// Package rules decides a profile and a hostname for a machine that the
// config does not list, from what is known of it: the DHCP context of
// its boot (interface, relay, option 82 circuit-id and remote-id, vendor
// class, MAC) and, once it was discovered, its hardware facts. Rules are
// tried in order and the first that matches wins.
//
// It owns the matching and the hostname templates, and the checks that
// reject a bad rule before it runs. It does not read the config file
// (profiles does, and reports errors with their line), store anything,
// or boot anything (provision does).
package rules

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// DHCP is what DHCP saw of a machine's boot request.
type DHCP struct {
	Interface   string     // where the request came in
	Relay       netip.Addr // giaddr of a relayed request; zero when direct
	Addr        netip.Addr // the address DHCP saw the machine take, if any
	CircuitID   string     // option 82 sub-option 1
	RemoteID    string     // option 82 sub-option 2
	VendorClass string     // option 60
}

// Disk is one block device of the machine.
type Disk struct {
	Name       string `json:"name"`
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	Bytes      int64  `json:"bytes"`
	Rotational bool   `json:"rotational"`
}

// NIC is one network interface of the machine.
type NIC struct {
	Name   string `json:"name"`
	MAC    string `json:"mac"`
	Driver string `json:"driver,omitempty"`
	Link   string `json:"link,omitempty"`  // operstate: up, down, ...
	Speed  int    `json:"speed,omitempty"` // Mb/s; 0 when unknown
}

// Facts are what discovery read on the machine.
type Facts struct {
	Vendor      string `json:"vendor"`
	Product     string `json:"product"`
	Serial      string `json:"serial"`
	UUID        string `json:"uuid"`
	BoardSerial string `json:"board_serial"`
	CPUModel    string `json:"cpu_model"`
	CPUCount    int    `json:"cpu_count"`
	MemoryBytes int64  `json:"memory_bytes"`
	Disks       []Disk `json:"disks"`
	NICs        []NIC  `json:"nics"`
	Firmware    string `json:"firmware"` // "bios" or "uefi"
	Arch        string `json:"arch"`     // x86_64, aarch64, i686
	// BMCAddress is the machine's own BMC's IPv4 address, as discovery
	// read it (ipmitool lan print); "" when it could not. A bmc: block
	// with address: facts uses it.
	BMCAddress string `json:"bmc_address,omitempty"`
}

// Input is everything rules may look at. Facts is nil until the machine
// was discovered. Arch and Firmware come from the facts when there are
// some, else from DHCP's firmware detection ("" when unknown).
type Input struct {
	MAC      net.HardwareAddr
	DHCP     DHCP
	Facts    *Facts
	Arch     string
	Firmware string
}

// Spec is a rule as the config writes it.
type Spec struct {
	Name     string
	Match    map[string]string // matcher name → pattern
	Profile  string
	Hostname string // template; "" leaves the hostname unset
}

// FieldError is a problem with one field of a Spec: Field is
// "match.<name>" or "hostname".
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Rule is a compiled Spec.
type Rule struct {
	Name       string
	Profile    string
	matchers   []matcher
	tmpl       []piece
	needsFacts bool
}

// NeedsFacts reports whether the rule can only be decided after
// discovery.
func (r *Rule) NeedsFacts() bool { return r.needsFacts }

// Reads reports whether the rule's match, and its hostname template,
// read field (a matcher name or a template field, such as circuit_id).
func (r *Rule) Reads(field string) (inMatch, inHostname bool) {
	for _, m := range r.matchers {
		inMatch = inMatch || m.name == field
	}
	for _, p := range r.tmpl {
		inHostname = inHostname || p.field == field
	}
	return inMatch, inHostname
}

type matcher struct {
	name    string
	pattern string
	facts   bool
	match   func(in Input) (bool, string) // whether, and the value it saw
}

// source says where a matcher or a template field reads from.
type source int

const (
	fromDHCP source = iota
	fromFacts
)

// text are the fields that globs match and templates print.
var text = map[string]struct {
	src source
	get func(in Input) string
}{
	"vendor":       {fromFacts, func(in Input) string { return in.Facts.Vendor }},
	"product":      {fromFacts, func(in Input) string { return in.Facts.Product }},
	"serial":       {fromFacts, func(in Input) string { return in.Facts.Serial }},
	"uuid":         {fromFacts, func(in Input) string { return in.Facts.UUID }},
	"board_serial": {fromFacts, func(in Input) string { return in.Facts.BoardSerial }},
	"cpu_model":    {fromFacts, func(in Input) string { return in.Facts.CPUModel }},
	"circuit_id":   {fromDHCP, func(in Input) string { return in.DHCP.CircuitID }},
	"remote_id":    {fromDHCP, func(in Input) string { return in.DHCP.RemoteID }},
	"interface":    {fromDHCP, func(in Input) string { return in.DHCP.Interface }},
	"vendor_class": {fromDHCP, func(in Input) string { return in.DHCP.VendorClass }},
	"arch":         {fromDHCP, func(in Input) string { return in.Arch }},
	"firmware":     {fromDHCP, func(in Input) string { return in.Firmware }},
	"mac":          {fromDHCP, func(in Input) string { return strings.ReplaceAll(in.MAC.String(), ":", "") }},
}

// sizes are the fields that comparisons match.
var sizes = map[string]struct {
	unit bool // the value is bytes: the pattern may carry a unit
	get  func(f *Facts) []int64
}{
	"memory":     {true, func(f *Facts) []int64 { return []int64{f.MemoryBytes} }},
	"cpu_count":  {false, func(f *Facts) []int64 { return []int64{int64(f.CPUCount)} }},
	"disk_count": {false, func(f *Facts) []int64 { return []int64{int64(len(f.Disks))} }},
	"disk_size": {true, func(f *Facts) []int64 { // any disk
		var out []int64
		for _, d := range f.Disks {
			out = append(out, d.Bytes)
		}
		return out
	}},
}

// Names lists every matcher a rule may use, for messages and docs.
func Names() []string {
	var out []string
	for n := range text {
		if n != "mac" {
			out = append(out, n)
		}
	}
	for n := range sizes {
		out = append(out, n)
	}
	out = append(out, "subnet", "mac_prefix")
	sort.Strings(out)
	return out
}

// TemplateFields lists the fields a hostname template may name.
func TemplateFields() []string {
	var out []string
	for n := range text {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Compile checks s and makes a Rule. It returns every problem found,
// each as a *FieldError, joined.
func Compile(s Spec) (*Rule, error) {
	r := &Rule{Name: s.Name, Profile: s.Profile}
	var errs []error
	bad := func(field string, err error) { errs = append(errs, &FieldError{Field: field, Err: err}) }
	names := make([]string, 0, len(s.Match))
	for n := range s.Match {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		bad("match", errors.New("no matchers: a rule that matches every machine would install every unknown machine; write at least one (for example mac_prefix)"))
	}
	for _, n := range names {
		m, err := compileMatcher(n, s.Match[n])
		if err != nil {
			bad("match."+n, err)
			continue
		}
		r.matchers = append(r.matchers, m)
		r.needsFacts = r.needsFacts || m.facts
	}
	tmpl, facts, err := parseTemplate(s.Hostname)
	if err != nil {
		bad("hostname", err)
	}
	r.tmpl = tmpl
	r.needsFacts = r.needsFacts || facts
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

func compileMatcher(name, pattern string) (matcher, error) {
	m := matcher{name: name, pattern: pattern}
	if strings.TrimSpace(pattern) == "" {
		return m, errors.New("empty pattern")
	}
	if f, ok := text[name]; ok {
		re, err := glob(pattern)
		if err != nil {
			return m, err
		}
		m.facts = f.src == fromFacts
		m.match = func(in Input) (bool, string) {
			v := f.get(in)
			return re.MatchString(v), v
		}
		return m, nil
	}
	if sz, ok := sizes[name]; ok {
		cmp, err := parseComparison(pattern, sz.unit)
		if err != nil {
			return m, err
		}
		m.facts = true
		m.match = func(in Input) (bool, string) {
			var seen []string
			for _, v := range sz.get(in.Facts) {
				seen = append(seen, strconv.FormatInt(v, 10))
				if cmp(v) {
					return true, strconv.FormatInt(v, 10)
				}
			}
			return false, strings.Join(seen, ",")
		}
		return m, nil
	}
	switch name {
	case "subnet":
		pfx, err := netip.ParsePrefix(pattern)
		if err != nil {
			return m, fmt.Errorf("%q is not a subnet such as 10.1.2.0/24: %w", pattern, err)
		}
		pfx = pfx.Masked()
		m.match = func(in Input) (bool, string) {
			// A relayed request is placed by its relay; a direct one by
			// the address it took.
			a := in.DHCP.Relay
			if !a.IsValid() {
				a = in.DHCP.Addr
			}
			return a.IsValid() && pfx.Contains(a.Unmap()), addrString(a)
		}
		return m, nil
	case "mac_prefix":
		prefix, err := parseMACPrefix(pattern)
		if err != nil {
			return m, err
		}
		m.match = func(in Input) (bool, string) {
			return len(in.MAC) >= len(prefix) && string(in.MAC[:len(prefix)]) == string(prefix), in.MAC.String()
		}
		return m, nil
	}
	return m, fmt.Errorf("unknown matcher %q (known: %s)", name, strings.Join(Names(), ", "))
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

// glob compiles a shell-style pattern, case-insensitive: * is any run
// of characters (slashes too: circuit-ids name ports such as Eth1/0/5),
// ? one character, everything else itself.
func glob(p string) (*regexp.Regexp, error) {
	if strings.ContainsAny(p, "[]") {
		return nil, fmt.Errorf("%q: character classes ([...]) are not supported; use * and ?", p)
	}
	var b strings.Builder
	b.WriteString("(?is)^")
	for _, r := range p {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// units are the size suffixes comparisons accept.
var units = map[string]int64{
	"": 1, "B": 1,
	"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
}

var comparison = regexp.MustCompile(`^\s*(>=|<=|==|!=|>|<)?\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$`)

// parseComparison reads ">= 64GiB", "< 2TB", "4" (equal).
func parseComparison(p string, unit bool) (func(int64) bool, error) {
	m := comparison.FindStringSubmatch(p)
	if m == nil {
		return nil, fmt.Errorf("%q is not a comparison such as \">= 64GiB\" or \"== 2\"", p)
	}
	n, err := strconv.ParseFloat(m[2], 64)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", p, err)
	}
	mul, ok := units[strings.ToUpper(m[3])]
	if !ok || (!unit && m[3] != "") {
		if !unit {
			return nil, fmt.Errorf("%q: a count takes no unit", p)
		}
		return nil, fmt.Errorf("%q: unknown unit %q (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)", p, m[3])
	}
	if n*float64(mul) > 1<<62 {
		return nil, fmt.Errorf("%q: too large", p)
	}
	want := int64(n * float64(mul))
	switch m[1] {
	case ">=":
		return func(v int64) bool { return v >= want }, nil
	case "<=":
		return func(v int64) bool { return v <= want }, nil
	case ">":
		return func(v int64) bool { return v > want }, nil
	case "<":
		return func(v int64) bool { return v < want }, nil
	case "!=":
		return func(v int64) bool { return v != want }, nil
	}
	return func(v int64) bool { return v == want }, nil
}

// parseMACPrefix reads one to six hex bytes, separated by : or -.
func parseMACPrefix(p string) ([]byte, error) {
	parts := strings.FieldsFunc(p, func(r rune) bool { return r == ':' || r == '-' })
	if len(parts) == 0 || len(parts) > 6 {
		return nil, fmt.Errorf("%q is not a MAC prefix such as 52:54:00", p)
	}
	out := make([]byte, 0, len(parts))
	for _, s := range parts {
		if len(s) != 2 {
			return nil, fmt.Errorf("%q is not a MAC prefix such as 52:54:00 (each byte two hex digits)", p)
		}
		v, err := strconv.ParseUint(s, 16, 8)
		if err != nil {
			return nil, fmt.Errorf("%q is not a MAC prefix such as 52:54:00", p)
		}
		out = append(out, byte(v))
	}
	return out, nil
}

// piece is a literal or a field of a hostname template.
type piece struct {
	lit   string
	field string
}

// parseTemplate reads a hostname template: literal text with {field}
// for the fields TemplateFields lists. facts says whether it names a
// field only discovery knows.
func parseTemplate(s string) (out []piece, facts bool, err error) {
	for s != "" {
		i := strings.IndexAny(s, "{}")
		if i < 0 {
			out = append(out, piece{lit: s})
			break
		}
		if s[i] == '}' {
			return nil, false, fmt.Errorf("unbalanced } in %q", s)
		}
		if i > 0 {
			out = append(out, piece{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return nil, false, fmt.Errorf("unclosed { in %q", s)
		}
		name := s[i+1 : i+j]
		f, ok := text[name]
		if !ok {
			return nil, false, fmt.Errorf("template field {%s} is unknown (known: %s)", name, strings.Join(TemplateFields(), ", "))
		}
		facts = facts || f.src == fromFacts
		out = append(out, piece{field: name})
		s = s[i+j+1:]
	}
	for _, p := range out {
		if strings.Trim(p.lit, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
			return nil, false, fmt.Errorf("literal %q in the template is not hostname text (letters, digits, -)", p.lit)
		}
	}
	return out, facts, nil
}

// ValidHostname reports whether h is an RFC 1123 hostname: dot-separated
// labels of letters, digits and '-', neither starting nor ending with
// '-', at most 63 bytes each and 253 in all. Configured hostnames,
// operators' and the ones written into installed systems must be.
func ValidHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// maxHostname is the longest hostname a template makes (one DNS label).
const maxHostname = 63

// sanitize makes s hostname text: lower case, runs of anything but
// letters and digits become one -, none at either end.
func sanitize(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimRight(b.String(), "-")
}

// hostname renders the rule's template for in.
func (r *Rule) hostname(in Input) (string, error) {
	if len(r.tmpl) == 0 {
		return "", nil
	}
	var b strings.Builder
	for _, p := range r.tmpl {
		if p.field == "" {
			b.WriteString(p.lit)
			continue
		}
		v := sanitize(text[p.field].get(in))
		if v == "" {
			return "", fmt.Errorf("the hostname template's {%s} is empty for this machine", p.field)
		}
		b.WriteString(v)
	}
	h := strings.Trim(sanitize(b.String()), "-")
	if len(h) > maxHostname {
		h = strings.TrimRight(h[:maxHostname], "-")
	}
	if h == "" {
		return "", errors.New("the hostname template gave an empty hostname")
	}
	return h, nil
}

// Decision is what Evaluate found.
type Decision struct {
	// Rule is the rule that matched; nil when none did.
	Rule *Rule
	// Index is the rule's place in the list, from 0.
	Index    int
	Hostname string
	// Why says which values matched, or why nothing was decided.
	Why string
	// NeedFacts: a rule that needs facts came before any match, and
	// there are none yet; discovery decides.
	NeedFacts bool
}

// Evaluate tries rules in order and returns the first that matches.
// Without facts it stops at the first rule that needs them: a later
// rule must not win over an earlier one that discovery may yet match.
// A rule whose hostname template cannot be filled for this machine does
// not match; Why of the result says so when nothing else matched.
func Evaluate(rules []*Rule, in Input) Decision {
	var skipped []string
	for i, r := range rules {
		if r.needsFacts && in.Facts == nil {
			return Decision{NeedFacts: true, Why: fmt.Sprintf("rule %s needs facts: waiting for discovery", r.label(i))}
		}
		why, ok := r.matches(in)
		if !ok {
			continue
		}
		h, err := r.hostname(in)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("rule %s matched but %v", r.label(i), err))
			continue
		}
		return Decision{Rule: r, Index: i, Hostname: h, Why: fmt.Sprintf("rule %s matched: %s", r.label(i), why)}
	}
	if len(skipped) > 0 {
		return Decision{Why: strings.Join(skipped, "; ")}
	}
	return Decision{Why: "no rule matched"}
}

func (r *Rule) label(i int) string {
	if r.Name != "" {
		return fmt.Sprintf("%q (rules[%d])", r.Name, i)
	}
	return fmt.Sprintf("rules[%d]", i)
}

// matches says whether every matcher of r matches in, and the values
// that did.
func (r *Rule) matches(in Input) (string, bool) {
	var why []string
	for _, m := range r.matchers {
		ok, v := m.match(in)
		if !ok {
			return "", false
		}
		why = append(why, fmt.Sprintf("%s=%q (pattern %q)", m.name, v, m.pattern))
	}
	return strings.Join(why, ", "), true
}
