package httpboot

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/lograte"
)

// SourceLimits bound what one source address may ask of the boot side.
// A booting machine fetches its script, then its kernel and initrds one
// after the other: a few requests at once, a few scripts a minute. A
// client past either bound is answered 429 with Retry-After, and the
// other sources are served as before.
type SourceLimits struct {
	// MaxInFlight caps the requests a source has under way at once on
	// /boot/, /images/ and /ipxe/; zero means no cap.
	MaxInFlight int
	// ScriptsPerMinute is the rate of iPXE scripts (GET /boot/{mac}.ipxe)
	// a source may ask for, with bursts of as many; zero means no rate.
	ScriptsPerMinute int
}

// maxSources bounds the table of sources. An entry that has nothing
// under way and a full allowance is the same as no entry, and is swept
// when the table is full; a source that finds it full of busy ones is
// answered 429 too, so the table never grows with the number of
// addresses that ask.
const maxSources = 4096

// sourceTable counts, per source address, the requests under way and
// the script allowance (a token bucket).
type sourceTable struct {
	lim SourceLimits
	now func() time.Time
	log *lograte.Limiter

	mu      sync.Mutex
	sources map[netip.Addr]*source
	swept   time.Time // last sweep of a full table
}

type source struct {
	inFlight int
	tokens   float64 // script allowance, up to ScriptsPerMinute
	at       time.Time
}

func newSourceTable(lim SourceLimits, log *lograte.Limiter) *sourceTable {
	return &sourceTable{lim: lim, now: time.Now, log: log, sources: map[netip.Addr]*source{}}
}

// refill brings src's allowance up to now; the caller holds t.mu.
func (t *sourceTable) refill(src *source, now time.Time) {
	if t.lim.ScriptsPerMinute <= 0 {
		return
	}
	rate := float64(t.lim.ScriptsPerMinute) / 60
	src.tokens = math.Min(float64(t.lim.ScriptsPerMinute), src.tokens+now.Sub(src.at).Seconds()*rate)
	src.at = now
}

// idle reports whether src can be forgotten; the caller holds t.mu.
func (t *sourceTable) idle(src *source) bool {
	return src.inFlight == 0 && (t.lim.ScriptsPerMinute <= 0 || src.tokens >= float64(t.lim.ScriptsPerMinute))
}

// acquire admits one request of ip, a script request if script; done
// must be called when it ends. Past a bound, done is nil, retry says
// when to come back, and why names the bound that was hit.
func (t *sourceTable) acquire(ip netip.Addr, script bool) (done func(), retry time.Duration, why string) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	src := t.sources[ip]
	if src == nil {
		if len(t.sources) >= maxSources && now.Sub(t.swept) >= time.Second {
			// A sweep walks the whole table: at most one a second, so
			// that new addresses cannot make every request pay for one.
			t.swept = now
			for a, s := range t.sources {
				t.refill(s, now)
				if t.idle(s) {
					delete(t.sources, a)
				}
			}
		}
		if len(t.sources) >= maxSources {
			return nil, time.Second, "too many sources at once"
		}
		src = &source{tokens: float64(t.lim.ScriptsPerMinute), at: now}
		t.sources[ip] = src
	}
	t.refill(src, now)
	if t.lim.MaxInFlight > 0 && src.inFlight >= t.lim.MaxInFlight {
		return nil, time.Second, "too many requests at once from this address"
	}
	if script && t.lim.ScriptsPerMinute > 0 {
		if src.tokens < 1 {
			wait := time.Duration((1 - src.tokens) / (float64(t.lim.ScriptsPerMinute) / 60) * float64(time.Second))
			return nil, wait, "too many boot scripts asked for from this address"
		}
		src.tokens--
	}
	src.inFlight++
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		src.inFlight--
		if t.sources[ip] == src {
			t.refill(src, t.now())
			if t.idle(src) {
				delete(t.sources, ip)
			}
		}
	}, 0, ""
}

// size is the number of sources in the table, for tests.
func (t *sourceTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.sources)
}

// limit is middleware that admits a request under the source limits,
// or answers 429 with Retry-After.
func (t *sourceTable) limit(script bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ip := remoteAddr(r)
			done, retry, why := t.acquire(ip, script)
			if done == nil {
				secs := int(math.Ceil(retry.Seconds()))
				if secs < 1 {
					secs = 1
				}
				t.log.Warn("limit:"+why, "boot request refused: "+why+" (server.boot_max_per_source, server.boot_scripts_per_minute)",
					"remote", ip.String(), "path", redactPath(r.URL.Path))
				w.Header().Set("Retry-After", strconv.Itoa(secs))
				http.Error(w, fmt.Sprintf("%s: retry in %d s", why, secs), http.StatusTooManyRequests)
				return
			}
			defer done()
			next.ServeHTTP(w, r)
		})
	}
}
