package admin

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Power is the rack's BMC, for the page's power actions: it records
// each action as the inventory's are, and macInstalled's BMC fails.
func (r *rack) Power(ctx context.Context, mac, action, by string) (PowerView, error) {
	if _, err := r.Machine(ctx, mac); err != nil {
		return PowerView{}, err
	}
	if mac == macInstalled {
		return PowerView{}, fmt.Errorf("%w: BMC ipmi 10.20.9.1: power %s: no answer in 20s", ErrBMC, action)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.act("power "+action, mac, by); err != nil {
		return PowerView{}, err
	}
	r.note(mac, "power "+action+" through BMC ipmi 10.20.9.1 requested by "+by+": done")
	return PowerView{MAC: mac, Action: action, Status: "done"}, nil
}

func (r *rack) ReinstallPowerCycle(ctx context.Context, mac, by string) (PowerView, error) {
	return PowerView{}, fmt.Errorf("%w: not offered on the page", ErrInvalid)
}

// TestPowerFromBrowser: with power control, a machine's page offers
// power on, off and cycle; a confirmed power-cycle reaches the BMC
// with who asked, and the page says so.
func TestPowerFromBrowser(t *testing.T) {
	r := fillRack(time.Now())
	r.endStreams = true
	p := servePagesConfig(t, r, Config{APIToken: testAPIToken, Power: r})
	dom := chromium(t, driverURL(p, "/machines/"+macFailed, testAPIToken,
		`form[action$="/power-cycle"] button`, "#confirm"), "", "1200,900")
	want := "power cycle " + macFailed + " by operator (web, 127.0.0.1)"
	if !slices.Equal(r.actions, []string{want}) {
		t.Fatalf("BMC heard %q, want %q; requests %v", r.actions, want, p.requests())
	}
	if !slices.Contains(p.requests(), "POST /machines/"+macFailed+"/power-cycle") {
		t.Fatalf("no POST of the action: %v", p.requests())
	}
	for _, want := range []string{"Power-cycled through the BMC.", "power cycle through BMC ipmi 10.20.9.1 requested by operator (web, 127.0.0.1): done",
		`action="/machines/` + macFailed + `/power-on"`, `action="/machines/` + macFailed + `/power-off"`} {
		if !strings.Contains(string(dom), want) {
			t.Fatalf("page after the action lacks %q:\n%s", want, dom)
		}
	}
}

// TestPowerPageActions: the power actions need the session and the
// CSRF token like the others; a BMC's failure comes back as 502 with
// its error; without power control they are neither offered nor
// served.
func TestPowerPageActions(t *testing.T) {
	for _, withPower := range []bool{true, false} {
		r := fillRack(time.Now())
		h := newHarness(t)
		cfg := Config{APIToken: testAPIToken, Log: slog.New(slog.NewTextHandler(h.logs, nil))}
		if withPower {
			cfg.Power = r
		}
		h.srv.Config.Handler = New(cfg, r)
		form := []string{"Content-Type", "application/x-www-form-urlencoded"}
		path := "/machines/" + macFailed + "/power-off"
		if resp, _ := h.do(t, http.MethodPost, path, "csrf=x", form...); resp.StatusCode != http.StatusUnauthorized && withPower {
			t.Fatalf("power-off without a session: %d, want 401", resp.StatusCode)
		}
		if resp, _ := h.login(t, testAPIToken); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("login: %d", resp.StatusCode)
		}
		resp, page := h.get(t, path)
		if !withPower {
			_, machine := h.get(t, "/machines/"+macFailed)
			if resp.StatusCode != http.StatusNotFound || strings.Contains(string(machine), "power-") {
				t.Fatalf("without power control: confirmation %d, machine page offers power: %v", resp.StatusCode, strings.Contains(string(machine), "power-"))
			}
			continue
		}
		m := regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`).FindSubmatch(page)
		if m == nil {
			t.Fatalf("confirmation page has no CSRF token:\n%s", page)
		}
		if resp, _ := h.do(t, http.MethodPost, path, "csrf="+strings.Repeat("0", 64), form...); resp.StatusCode != http.StatusForbidden || len(r.actions) != 0 {
			t.Fatalf("power-off with a wrong CSRF token: %d, BMC heard %v", resp.StatusCode, r.actions)
		}
		resp, _ = h.do(t, http.MethodPost, path, "csrf="+string(m[1]), form...)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/machines/"+macFailed+"?done=power-off" {
			t.Fatalf("confirmed power-off: %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		if want := "power off " + macFailed + " by operator (web, 127.0.0.1)"; !slices.Equal(r.actions, []string{want}) {
			t.Fatalf("BMC heard %v, want %q", r.actions, want)
		}
		resp, body := h.do(t, http.MethodPost, "/machines/"+macInstalled+"/power-on", "csrf="+string(m[1]), form...)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "BMC ipmi 10.20.9.1: power on: no answer in 20s") {
			t.Fatalf("power-on through a failing BMC: %d %s", resp.StatusCode, body)
		}
	}
}
