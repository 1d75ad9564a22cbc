package admin

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// installPhases are the install's phases in order, as the installer
// runs them (installer.DefaultPhases; a test keeps the two equal).
var installPhases = []string{"kexec", "disko", "install", "reboot"}

// defaultPhaseDurations are what a phase is taken to last before any
// install has finished one: a kexec and a reboot are quick, building
// and copying the system is most of the work.
var defaultPhaseDurations = map[string]time.Duration{
	"kexec": time.Minute, "disko": time.Minute, "install": 10 * time.Minute, "reboot": time.Minute,
}

// typicalInstall is how long each phase usually takes: the median of
// the history where there is one, the default where there is not.
type typicalInstall map[string]time.Duration

func newTypicalInstall(history map[string][]time.Duration) typicalInstall {
	t := typicalInstall{}
	for _, p := range installPhases {
		t[p] = defaultPhaseDurations[p]
		if h := history[p]; len(h) > 0 {
			t[p] = max(median(h), time.Second)
		}
	}
	return t
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (t typicalInstall) total() time.Duration {
	var sum time.Duration
	for _, p := range installPhases {
		sum += t[p]
	}
	return sum
}

// share is phase's part of a typical install, 0 to 1.
func (t typicalInstall) share(phase string) float64 {
	return float64(t[phase]) / float64(t.total())
}

// Progress is how far an install is, as the page draws it.
type Progress struct {
	Phase      string
	Index      int     // 1-based place of Phase in installPhases
	Done       float64 // the finished phases' shares, 0 to 1
	PhaseShare float64 // Phase's share of a typical install
	Typical    time.Duration
	Since      time.Time // when Phase started
	Elapsed    time.Duration
	Percent    int
}

// progressCap keeps a phase that runs long from reaching the next
// phase's start: the bar stops just short until the phase ends.
const progressCap = 0.95

// progress estimates how far m's install is at now; ok is false when m
// is not installing a known phase.
func (t typicalInstall) progress(m MachineView, now time.Time) (Progress, bool) {
	i := slices.Index(installPhases, m.Phase)
	if m.State != "installing" || i < 0 {
		return Progress{}, false
	}
	p := Progress{Phase: m.Phase, Index: i + 1, PhaseShare: t.share(m.Phase), Typical: t[m.Phase], Since: m.UpdatedAt}
	for _, done := range installPhases[:i] {
		p.Done += t.share(done)
	}
	if !m.UpdatedAt.IsZero() && now.After(m.UpdatedAt) {
		p.Elapsed = now.Sub(m.UpdatedAt)
	}
	frac := min(float64(p.Elapsed)/float64(p.Typical), progressCap)
	p.Percent = int(100 * (p.Done + frac*p.PhaseShare))
	return p, true
}

// firmwareLabel says what firmware a machine booted with, as far as
// its boot request told: iPXE's build architecture names arm64 (always
// UEFI) and the EFI builds, but an x86 iPXE may be either.
func firmwareLabel(fw string) string {
	f := strings.ToLower(fw)
	switch {
	case f == "":
		return "unknown"
	case strings.Contains(f, "arm64"), strings.Contains(f, "aarch64"):
		return "arm64"
	case strings.Contains(f, "efi"):
		return "UEFI"
	case strings.Contains(f, "bios"), f == "pcbios":
		return "BIOS"
	case f == "x86_64", f == "i386":
		return "unknown (" + fw + ", BIOS or UEFI)"
	}
	return "unknown (" + fw + ")"
}

// stateGroup is the overview's count a state falls in.
func stateGroup(state string) string {
	switch state {
	case "installed", "failed", "discovered":
		return state
	case "booting", "installer-up", "installing":
		return "installing"
	case "new":
		return "waiting"
	}
	return state
}

// shortDuration is d for a person: "45s", "3m10s", "1h05m".
func shortDuration(d time.Duration) string {
	d = d.Round(time.Second)
	if d < time.Hour {
		return d.String()
	}
	return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
}
