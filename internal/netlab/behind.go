package netlab

import "fmt"

// Behind makes a namespace on a segment of its own behind router: a
// veth pair whose end in router is called "down<N>" (returned) and
// whose end in the new namespace is "eth0", with the given MAC (empty:
// random) and no address. A DHCP relay in router then stands between
// the two segments, as a top-of-rack switch does.
func (l *Lab) Behind(router *NS, mac string) (ns *NS, down string) {
	l.t.Helper()
	ns = l.addNS("bh")
	ns.Link = "eth0"
	down = fmt.Sprintf("down%d", l.next)
	peer := []string{"peer", "name", "eth0", "netns", ns.Name}
	if mac != "" {
		peer = append(peer, "address", mac)
	}
	l.Run(nil, "ip", append([]string{"link", "add", down, "netns", router.Name, "type", "veth"}, peer...)...)
	l.Run(router, "ip", "link", "set", down, "up")
	l.Run(ns, "ip", "link", "set", "lo", "up")
	l.Run(ns, "ip", "link", "set", "eth0", "up")
	return ns, down
}
