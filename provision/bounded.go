package provision

import lru "github.com/hashicorp/golang-lru/v2"

// recent remembers values by MAC, at most a given number, forgetting
// the least recently put first. What DHCP tells of unknown machines is
// kept in one: DHCP packets are unauthenticated, and one host can invent
// as many MACs as it likes. The bound comes with each put, so that a
// config reload applies to what is already kept. Safe for concurrent use.
type recent[V any] struct {
	c *lru.Cache[string, V]
}

func newRecent[V any]() *recent[V] {
	c, err := lru.New[string, V](1)
	if err != nil {
		panic(err) // only for a size below 1
	}
	return &recent[V]{c: c}
}

// put keeps v for mac as the most recent, within limit MACs (at least 1).
// It reports whether mac was kept already.
func (r *recent[V]) put(mac string, v V, limit int) (known bool) {
	r.c.Resize(max(limit, 1))
	known = r.c.Contains(mac)
	r.c.Add(mac, v)
	return known
}

func (r *recent[V]) get(mac string) (V, bool) { return r.c.Peek(mac) }

func (r *recent[V]) len() int { return r.c.Len() }
