package profiles

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/privfile"
	"gopkg.in/yaml.v3"

	"github.com/pxe-anywhere/pxe-anywhere/rules"
)

// BMC is a `bmc:` block: how to reach a machine's baseboard management
// controller. A profile's block holds what its machines share (type,
// user, password file); a machine's block adds or overrides fields,
// its address above all. Any block that later carries one (a rule)
// merges the same way, with Merge.
type BMC struct {
	Type         string // "ipmi" or "redfish"
	Address      string
	User         string
	PasswordFile string // absolute; mode 0600 or stricter (checked at load)
	Timeout      time.Duration
	// CAFile (redfish over https): PEM certificates the BMC's must
	// chain to, such as its own self-signed one; "": the system's roots.
	CAFile string
	// Where is the block's place in the config ("machines[2].bmc"),
	// for errors about it.
	Where string
}

// The bmc.type values.
const (
	BMCIPMI    = "ipmi"
	BMCRedfish = "redfish"
)

// BMCAddressFacts is the bmc.address that stands for the address that
// discovery read on the machine itself (`ipmitool lan print`, fact
// bmc_address): for blocks that serve many machines, a rule's or a
// profile's. A machine that the config lists is not discovered, so
// its merged block needs a real address.
const BMCAddressFacts = "facts"

// Merge returns b with the fields that over sets replacing its own. A
// nil side yields the other.
func (b *BMC) Merge(over *BMC) *BMC {
	if b == nil {
		return over
	}
	if over == nil {
		return b
	}
	out := *b
	for _, f := range []struct{ dst, src *string }{
		{&out.Type, &over.Type}, {&out.Address, &over.Address},
		{&out.User, &over.User}, {&out.PasswordFile, &over.PasswordFile},
		{&out.CAFile, &over.CAFile},
	} {
		if *f.src != "" {
			*f.dst = *f.src
		}
	}
	if over.Timeout != 0 {
		out.Timeout = over.Timeout
	}
	out.Where = over.Where
	return &out
}

// BMCOf is the BMC of the machine listed with mac: its profile's block
// under its own. Nil when neither has one, or the MAC is not listed.
func (c *Config) BMCOf(mac net.HardwareAddr) *BMC {
	m := c.MachineByMAC(mac)
	if m == nil {
		return nil
	}
	var prof *BMC
	if p := c.Profile(m.Profile); p != nil {
		prof = p.BMC
	}
	return prof.Merge(m.BMC)
}

// RuleBMC is rule r's bmc: block; nil when it has none.
func (c *Config) RuleBMC(r *rules.Rule) *BMC { return c.ruleBMC[r] }

// bmc decodes a bmc: block. Fields may be missing here and come from
// the block it is merged with; validateBMCs checks the merged whole.
func (d *decoder) bmc(n *yaml.Node, w string) *BMC {
	f := d.fields(n, w, "type", "address", "user", "password_file", "timeout", "ca_file")
	b := &BMC{Where: w}
	if v, ok := d.enum(f["type"], w+".type", BMCIPMI, BMCRedfish); ok {
		b.Type = v
	}
	d.setStr(&b.Address, f["address"], w+".address")
	d.setStr(&b.User, f["user"], w+".user")
	d.setPath(&b.PasswordFile, f["password_file"], w+".password_file")
	d.setDuration(&b.Timeout, f["timeout"], w+".timeout", time.Second, 10*time.Minute)
	d.setPath(&b.CAFile, f["ca_file"], w+".ca_file")
	// A password file that is there must be private; one that is not
	// there yet (written by a secrets manager at boot) is reported when
	// the BMC is used, in the machine's events.
	if b.PasswordFile != "" {
		if err := privfile.CheckPrivate(b.PasswordFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.errf(f["password_file"], w+".password_file", "", "%v", err)
		}
	}
	if b.Address != "" && b.Address != BMCAddressFacts {
		if err := checkBMCAddress(b.Address); err != nil {
			d.errf(f["address"], w+".address", "host, host:port (ipmi) or https://host[/redfish/v1/Systems/ID] (redfish)", "%v", err)
		}
	}
	return b
}

func checkBMCAddress(a string) error {
	if strings.ContainsAny(a, " \t\n") {
		return fmt.Errorf("bad address %q", a)
	}
	if strings.Contains(a, "://") {
		u, err := url.Parse(a)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("bad URL %q", a)
		}
	}
	return nil
}

// validateBMCs checks each machine's merged BMC: complete, and an
// address that fits its type.
func (d *decoder) validateBMCs(c *Config) {
	for i, m := range c.Machines {
		if m.MAC == nil || c.MachineByMAC(m.MAC) != m {
			continue // a bad or repeated MAC has its own error
		}
		b := c.BMCOf(m.MAC)
		if b == nil {
			continue
		}
		line, w := d.lines[b.Where], fmt.Sprintf("machines[%d] (%s): bmc", i, m.MAC)
		switch {
		case b.Type == "":
			d.errAt(line, w, "type: ipmi or type: redfish, on the machine or in its profile's bmc", "missing type")
		case b.Address == "":
			d.errAt(line, w, "each machine's BMC has its own address: set bmc.address on the machine", "missing address")
		case b.Type == BMCIPMI && strings.Contains(b.Address, "://"):
			d.errAt(line, w, "ipmi takes host or host:port", "address %q is a URL", b.Address)
		case b.Address == BMCAddressFacts:
			d.errAt(line, w, "a listed machine is not discovered, so has no BMC address in its facts: set bmc.address on the machine", "address: facts")
		}
	}
	for i, r := range c.Rules {
		rb := c.RuleBMC(r)
		if rb == nil {
			continue
		}
		var prof *BMC
		if p := c.Profile(r.Profile); p != nil {
			prof = p.BMC
		}
		b := prof.Merge(rb)
		line, w := d.lines[rb.Where], fmt.Sprintf("rules[%d]: bmc", i)
		switch {
		case b.Type == "":
			d.errAt(line, w, "type: ipmi or type: redfish, on the rule or in its profile's bmc", "missing type")
		case b.Address == "":
			d.errAt(line, w, "address: facts (what discovery read with ipmitool), or a host", "missing address")
		case b.Type == BMCIPMI && strings.Contains(b.Address, "://"):
			d.errAt(line, w, "ipmi takes host or host:port", "address %q is a URL", b.Address)
		}
	}
}
