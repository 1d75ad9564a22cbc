package profiles

import (
	"errors"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/pxe-anywhere/pxe-anywhere/rules"
)

// maxRules bounds the rules: list; every unknown machine's PXE request
// runs through it.
const maxRules = 1000

// rules decodes `rules:`, a list tried in order, first match wins:
//
//	rules:
//	  - name: rack3-storage
//	    match: {product: "PowerEdge R7*", memory: ">= 250GiB"}
//	    profile: storage
//	    hostname: "st-{serial}"
//	    bmc: {address: facts}   # over the profile's bmc: block
//
// Each rule is compiled here, so that `config check` reports a bad
// pattern, an unknown matcher or template field, or a profile that does
// not exist at its line.
func (d *decoder) rules(c *Config, n *yaml.Node) {
	n = d.want(n, "rules", yaml.SequenceNode, "write a list of - match: ... entries")
	if n == nil {
		return
	}
	if len(n.Content) > maxRules {
		d.errf(n, "rules", "", "%d rules; at most %d", len(n.Content), maxRules)
		return
	}
	names := map[string]int{}
	for i, rn := range n.Content {
		w := fmt.Sprintf("rules[%d]", i)
		f := d.fields(rn, w, "name", "match", "profile", "hostname", "bmc")
		var s rules.Spec
		d.setStr(&s.Name, f["name"], w+".name")
		if s.Name != "" {
			if first, ok := names[s.Name]; ok {
				d.errf(f["name"], w+".name", fmt.Sprintf("first at line %d", first), "duplicate rule name %q", s.Name)
			}
			names[s.Name] = f["name"].Line
		}
		d.setStr(&s.Profile, f["profile"], w+".profile")
		switch {
		case f["profile"] == nil:
			d.errf(rn, w, "name one of the profiles: entries", "missing profile")
		case c.Profiles[s.Profile] == nil:
			d.errf(f["profile"], w+".profile", suggest(s.Profile, d.profileOrder, "add it under profiles:"), "unknown profile %q", s.Profile)
		}
		d.setStr(&s.Hostname, f["hostname"], w+".hostname")
		var rb *BMC // decoded even when the rule has other errors
		if f["bmc"] != nil {
			rb = d.bmc(f["bmc"], w+".bmc")
		}
		matchNodes := map[string]*yaml.Node{}
		if f["match"] == nil {
			d.errf(rn, w, "for example match: {mac_prefix: \"52:54:00\"}", "missing match")
			continue
		}
		s.Match = map[string]string{}
		for _, e := range d.entries(f["match"], w+".match") {
			v, ok := d.str(e.v, w+".match."+e.key)
			if !ok {
				if isNull(e.v) {
					d.errf(e.kn, w+".match."+e.key, "", "empty pattern")
				}
				continue
			}
			s.Match[e.key] = v
			matchNodes[e.key] = e.kn
		}
		r, err := rules.Compile(s)
		if err != nil {
			d.ruleErrors(err, w, rn, f, matchNodes)
			continue
		}
		if r.NeedsFacts() && c.Server.UnknownMachines != UnknownDiscover {
			d.errf(f["match"], w, "set server.unknown_machines: discover, or match on DHCP context only (mac_prefix, circuit_id, remote_id, interface, subnet, vendor_class, arch, firmware)",
				"the rule needs hardware facts, which only discovery collects")
		}
		if len(c.DHCP.Relays) == 0 {
			d.needRelays(r, w, f, matchNodes)
		}
		c.Rules = append(c.Rules, r)
		if rb != nil {
			if c.ruleBMC == nil {
				c.ruleBMC = map[*rules.Rule]*BMC{}
			}
			c.ruleBMC[r] = rb
		}
	}
}

// ruleErrors reports what rules.Compile found, each at the line of its
// field.
func (d *decoder) ruleErrors(err error, w string, rn *yaml.Node, f map[string]*yaml.Node, match map[string]*yaml.Node) {
	var list []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		list = j.Unwrap()
	} else {
		list = []error{err}
	}
	for _, e := range list {
		var fe *rules.FieldError
		if !errors.As(e, &fe) {
			d.errf(rn, w, "", "%v", e)
			continue
		}
		node := rn
		switch {
		case fe.Field == "hostname":
			node = f["hostname"]
		case strings.HasPrefix(fe.Field, "match."):
			node = match[strings.TrimPrefix(fe.Field, "match.")]
		case fe.Field == "match":
			node = f["match"]
		}
		if node == nil {
			node = rn
		}
		d.errf(node, w+"."+fe.Field, "", "%v", fe.Err)
	}
}

// needRelays refuses a rule that reads option 82 (circuit_id or
// remote_id, in its match or its hostname) when dhcp.relays lists no
// relay: relayed requests are then all dropped, and the rule could
// never see what it asks for.
func (d *decoder) needRelays(r *rules.Rule, w string, f, match map[string]*yaml.Node) {
	const hint = "list the relay agents that add option 82 under dhcp.relays; requests relayed from anywhere else are dropped"
	for _, key := range []string{"circuit_id", "remote_id"} {
		inMatch, inHostname := r.Reads(key)
		if inMatch {
			d.errf(match[key], w+".match."+key, hint, "%s comes from a relay's option 82, and dhcp.relays lists no relay", key)
		}
		if inHostname {
			d.errf(f["hostname"], w+".hostname", hint, "{%s} comes from a relay's option 82, and dhcp.relays lists no relay", key)
		}
	}
}
