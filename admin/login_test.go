package admin

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// machineData are strings that only the inventory holds: a page or a
// stream that carries one of them has leaked machine data.
var machineData = []string{"52:54:00:00:00:01", "web-01", "web-02", "installing", "disko"}

func leaks(body []byte) string {
	for _, d := range machineData {
		if bytes.Contains(body, []byte(d)) {
			return d
		}
	}
	return ""
}

// login posts token to the login form.
func (h *harness) login(t *testing.T, token string) (*http.Response, []byte) {
	t.Helper()
	return h.do(t, http.MethodPost, "/login", url.Values{"token": {token}}.Encode(), "Content-Type", "application/x-www-form-urlencoded")
}

// TestLoginGuardsPageOffLoopback: off loopback, the status page, its
// event stream and /metrics need the API token too. Without it the page
// answers 401 with the login form and no machine data; a wrong token is
// refused and sets no cookie; the right one sets an HttpOnly,
// SameSite=Strict cookie that opens the page and the stream, and that is
// not the token itself (so it does not open the API).
func TestLoginGuardsPageOffLoopback(t *testing.T) {
	h := newHarnessMode(t, harnessMode{requireLogin: true})

	resp, body := h.get(t, "/")
	if resp.StatusCode != http.StatusUnauthorized || !bytes.Contains(body, []byte(`action="/login"`)) {
		t.Fatalf("page without login: %d, want 401 with the login form:\n%s", resp.StatusCode, body)
	}
	if d := leaks(body); d != "" {
		t.Fatalf("page without login shows %q:\n%s", d, body)
	}
	for _, p := range []string{"/events", "/metrics"} {
		resp, body := h.get(t, p)
		if resp.StatusCode != http.StatusUnauthorized || leaks(body) != "" || bytes.Contains(body, []byte("pxe_anywhere_")) {
			t.Fatalf("%s without login: %d %s, want a bare 401", p, resp.StatusCode, body)
		}
	}

	resp, body = h.login(t, "not-the-token")
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 || !bytes.Contains(body, []byte("Wrong token")) {
		t.Fatalf("wrong token: %d cookies %v\n%s", resp.StatusCode, resp.Cookies(), body)
	}
	if resp, _ := h.get(t, "/"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("page after a refused login: %d", resp.StatusCode)
	}
	// A cookie that a client made up opens nothing.
	h.client.Jar.SetCookies(mustURL(t, h.srv.URL), []*http.Cookie{{Name: sessionCookie, Value: testAPIToken}})
	if resp, body := h.get(t, "/"); resp.StatusCode != http.StatusUnauthorized || leaks(body) != "" {
		t.Fatalf("page with a forged cookie: %d", resp.StatusCode)
	}

	resp, _ = h.login(t, testAPIToken)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("login: %d to %q, want 303 to /", resp.StatusCode, resp.Header.Get("Location"))
	}
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("login set cookies %v, want one", cookies)
	}
	c := cookies[0]
	if c.Name != sessionCookie || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, and not Secure over plain HTTP", c)
	}
	if strings.Contains(c.Value, testAPIToken) {
		t.Fatal("the session cookie holds the API token itself")
	}

	resp, body = h.get(t, "/")
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("web-02")) || !bytes.Contains(body, []byte(`action="/logout"`)) {
		t.Fatalf("page after login: %d\n%s", resp.StatusCode, body)
	}
	_, got := streamUpdate(t, h, MachineView{MAC: "52:54:00:00:00:07", State: "booting"})
	if !bytes.Contains(got, []byte("data: {")) {
		t.Fatalf("stream after login: %q", got)
	}
	if resp, body := h.get(t, "/metrics"); resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`listener="admin"`)) {
		t.Fatalf("metrics after login: %d", resp.StatusCode)
	}
	// The cookie is for the page: the API still wants the bearer token.
	if resp, _ := h.get(t, "/api/v1/machines"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("API with only the session cookie: %d, want 401", resp.StatusCode)
	}
	if resp, _ := h.get(t, "/api/v1/machines", "Cookie", sessionCookie+"="+c.Value); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("API with only the session cookie: %d, want 401", resp.StatusCode)
	}

	resp, _ = h.do(t, http.MethodPost, "/logout", "")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if resp, _ := h.get(t, "/"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("page after logout: %d", resp.StatusCode)
	}
}

// TestBearerOpensGuardedPage: scrapers and scripts send the API token as
// a bearer token instead of logging in.
func TestBearerOpensGuardedPage(t *testing.T) {
	h := newHarnessMode(t, harnessMode{requireLogin: true})
	auth := []string{"Authorization", "Bearer " + testAPIToken}
	for _, p := range []string{"/", "/metrics"} {
		if resp, _ := h.get(t, p, auth...); resp.StatusCode != http.StatusOK {
			t.Errorf("%s with the bearer token: %d", p, resp.StatusCode)
		}
		if resp, _ := h.get(t, p, "Authorization", "Bearer wrong"); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s with a wrong bearer token: %d", p, resp.StatusCode)
		}
	}
}

// TestSessionCookieSecureOverTLS: over HTTPS the cookie is Secure, so a
// browser never sends it over plain HTTP.
func TestSessionCookieSecureOverTLS(t *testing.T) {
	h := newHarnessMode(t, harnessMode{requireLogin: true, tls: true})
	resp, _ := h.login(t, testAPIToken)
	if c := resp.Cookies(); resp.StatusCode != http.StatusSeeOther || len(c) != 1 || !c[0].Secure || !c[0].HttpOnly {
		t.Fatalf("login over TLS: %d cookies %+v, want one Secure HttpOnly cookie", resp.StatusCode, c)
	}
	if resp, body := h.get(t, "/"); resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("web-01")) {
		t.Fatalf("page after login over TLS: %d", resp.StatusCode)
	}
}

// TestOpenOnLoopback: on loopback the page and the stream need no login
// (as before the split), and there is no login form to find.
func TestOpenOnLoopback(t *testing.T) {
	h := newHarness(t)
	if resp, body := h.get(t, "/"); resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("web-01")) || bytes.Contains(body, []byte("/logout")) {
		t.Fatalf("page on loopback: %d\n%s", resp.StatusCode, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.srv.URL+"/events", nil)
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream on loopback: %d", resp.StatusCode)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
