package profiles

import (
	"fmt"
	"path"
	"strings"
)

// validate runs the checks that span sections: references between
// entries, duplicates, and the authoritative-mode address plan.
func (d *decoder) validate(c *Config) {
	// errAt reports at the line decoding remembered for key.
	errAt := func(key, where, hint, format string, args ...any) {
		d.errAt(d.lines[key], where, hint, format, args...)
	}

	if s := c.Server; s.DiscoverImage != "" && c.Images[s.DiscoverImage] == nil {
		errAt("server.discover_image", "server.discover_image", suggest(s.DiscoverImage, d.imageOrder, "add it under images:"), "unknown image %q", s.DiscoverImage)
	} else if s.UnknownMachines == UnknownDiscover && s.DiscoverImage == "" {
		errAt("server.unknown_machines", "server", "set discover_image to one of the images: entries", "unknown_machines: discover needs discover_image")
	}

	d.validateBMCs(c)

	// limits (protocol bounds)
	if l := c.Server.Limits; l.HTTPHeaderTimeout > l.HTTPReadTimeout {
		errAt("server.http_header_timeout", "server.http_header_timeout", "the headers are part of the request: make it at most http_read_timeout",
			"http_header_timeout %s is longer than http_read_timeout %s", l.HTTPHeaderTimeout, l.HTTPReadTimeout)
	}

	for _, name := range d.profileOrder {
		p := c.Profiles[name]
		if p.Image != "" && c.Images[p.Image] == nil {
			w := "profiles." + name + ".image"
			errAt(w, w, suggest(p.Image, d.imageOrder, "add it under images:"), "unknown image %q", p.Image)
		}
	}

	d.validateDHCP(c, errAt)

	macs := map[string]int{}
	hosts := map[string]int{}
	ips := map[string]int{}
	for i, m := range c.Machines {
		w := fmt.Sprintf("machines[%d]", i)
		if m.Profile != "" && c.Profiles[m.Profile] == nil {
			errAt(w+".profile", w+".profile", suggest(m.Profile, d.profileOrder, "add it under profiles:"), "unknown profile %q", m.Profile)
		}
		if m.MAC != nil {
			k := m.MAC.String()
			if first, ok := macs[k]; ok {
				errAt(w+".mac", w+".mac", fmt.Sprintf("first at machines[%d], line %d", first, d.lines[fmt.Sprintf("machines[%d].mac", first)]), "duplicate MAC %s", k)
			} else {
				macs[k] = i
			}
		}
		if m.Hostname != "" {
			k := strings.ToLower(m.Hostname)
			if first, ok := hosts[k]; ok {
				errAt(w+".hostname", w+".hostname", fmt.Sprintf("first at machines[%d], line %d", first, d.lines[fmt.Sprintf("machines[%d].hostname", first)]), "duplicate hostname %q", m.Hostname)
			} else {
				hosts[k] = i
			}
		}
		if !m.IP.IsValid() {
			continue
		}
		k := m.IP.String()
		if first, ok := ips[k]; ok {
			errAt(w+".ip", w+".ip", fmt.Sprintf("first at machines[%d], line %d", first, d.lines[fmt.Sprintf("machines[%d].ip", first)]), "duplicate reservation %s", k)
		} else {
			ips[k] = i
		}
		dh := c.DHCP
		if dh.Subnet.IsValid() && !dh.Subnet.Contains(m.IP) {
			errAt(w+".ip", w+".ip", "pick an address in dhcp.subnet "+dh.Subnet.String(), "reservation %s is outside the subnet", k)
		}
		if dh.RangeStart.IsValid() && dh.RangeStart.Compare(m.IP) <= 0 && m.IP.Compare(dh.RangeEnd) <= 0 {
			errAt(w+".ip", w+".ip", fmt.Sprintf("pick one outside dhcp.range %s-%s, or the lease pool may hand it out", dh.RangeStart, dh.RangeEnd), "reservation %s is inside the dynamic range", k)
		}
	}
}

func (d *decoder) validateDHCP(c *Config, errAt func(key, where, hint, format string, args ...any)) {
	dh := c.DHCP
	if dh.Mode == DHCPAuthoritative {
		if !dh.Subnet.IsValid() {
			errAt("dhcp.mode", "dhcp", "add subnet: 10.77.0.0/24 (the network the machines are on)", "authoritative mode needs subnet")
		}
		if !dh.RangeStart.IsValid() {
			errAt("dhcp.mode", "dhcp", "add range: [first, last] of the addresses to lease", "authoritative mode needs range")
		}
	}
	if dh.RangeStart.IsValid() {
		if dh.RangeStart.Compare(dh.RangeEnd) > 0 {
			errAt("dhcp.range", "dhcp.range", "write the lower address first", "range start %s is after end %s", dh.RangeStart, dh.RangeEnd)
		}
		if dh.Subnet.IsValid() && (!dh.Subnet.Contains(dh.RangeStart) || !dh.Subnet.Contains(dh.RangeEnd)) {
			errAt("dhcp.range", "dhcp.range", "both ends must be in dhcp.subnet "+dh.Subnet.String(), "range %s-%s is outside the subnet", dh.RangeStart, dh.RangeEnd)
		}
	}
	if dh.Router.IsValid() && dh.Subnet.IsValid() && !dh.Subnet.Contains(dh.Router) {
		errAt("dhcp.router", "dhcp.router", "the router must be reachable on dhcp.subnet "+dh.Subnet.String(), "router %s is outside the subnet", dh.Router)
	}
}

// suggest names the candidate closest to s by edit distance, when one is
// close enough to be a typo; otherwise it returns fallback.
func suggest(s string, candidates []string, fallback string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		dist := editDistance(strings.ToLower(s), strings.ToLower(c))
		if bestD < 0 || dist < bestD {
			best, bestD = c, dist
		}
	}
	// A third of the length, at least 1, at most 3: close enough to be a
	// slip of the fingers, far enough to skip unrelated names.
	limit := min(max(len(s)/3, 1), 3)
	if bestD >= 0 && bestD <= limit {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return fallback
}

// editDistance is the optimal-string-alignment distance between a and b
// in bytes: Levenshtein plus swapping two neighbours, the commonest typo.
func editDistance(a, b string) int {
	rows := make([][]int, len(a)+1)
	for i := range rows {
		rows[i] = make([]int, len(b)+1)
		rows[i][0] = i
	}
	for j := range rows[0] {
		rows[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			rows[i][j] = min(rows[i-1][j]+1, rows[i][j-1]+1, rows[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				rows[i][j] = min(rows[i][j], rows[i-2][j-2]+1)
			}
		}
	}
	return rows[len(a)][len(b)]
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

// isStorePath accepts /nix/store/<name> and paths below it, after
// cleaning, so "/nix/store/../etc" is refused.
func isStorePath(p string) bool {
	rest, ok := strings.CutPrefix(path.Clean(p), "/nix/store/")
	return ok && rest != "" && p == path.Clean(p)
}
