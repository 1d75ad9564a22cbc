package admin

import (
	"crypto/subtle"
	"html/template"
	"net/http"
	"strings"
)

// sessionCookie holds the session value (see Server.session).
const sessionCookie = "pxe_anywhere_session"

// The login form asks for the API token, the one secret an operator
// already has; a page that needs no account keeps the server free of a
// user database.
var loginTmpl = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pxe-anywhere: log in</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
input{font:inherit;padding:.3em}
.refused{color:#c62828}
</style></head><body>
<h1>pxe-anywhere</h1>
{{if .Msg}}<p class="refused" role="alert">{{.Msg}}</p>{{end}}
<form method="post" action="/login">
<input type="hidden" name="next" value="{{.Next}}">
<label>API token <input type="password" name="token" autocomplete="current-password" autofocus required size="40"></label>
<button type="submit">Log in</button>
</form>
<p>The token is in <code>&lt;state_dir&gt;/api-token</code> on the server (<code>server.api_token_file</code>).</p>
</body></html>
`))

// requireLogin lets through a request with the session cookie or the
// bearer token. Without either, the status page answers 401 with the
// login form; the event stream and /metrics answer a bare 401.
func (s *Server) requireLogin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.sessionOK(r) || s.bearerOK(r) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		if r.Method == http.MethodGet && isPage(r.URL.Path) {
			s.writeLogin(w, http.StatusUnauthorized, r.URL.Path, "")
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="pxe-anywhere"`)
		http.Error(w, "log in at /login, or send the API token as a bearer token", http.StatusUnauthorized)
	})
}

func (s *Server) sessionOK(r *http.Request) bool {
	c, err := r.Cookie(sessionCookie)
	return err == nil && s.cfg.APIToken != "" && subtle.ConstantTimeCompare([]byte(c.Value), []byte(s.session)) == 1
}

// isPage reports whether path is a page a browser opens (the overview,
// a machine's page), which answers with the login form when it needs
// one.
func isPage(path string) bool {
	rest, ok := strings.CutPrefix(path, "/machines/")
	return path == "/" || ok && rest != "" && !strings.Contains(rest, "/")
}

// nextPage is where the login goes on to: a path of this server only,
// never another site's ("//host" or a scheme).
func nextPage(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	return next
}

func (s *Server) writeLogin(w http.ResponseWriter, code int, next, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := loginTmpl.Execute(w, struct{ Next, Msg string }{nextPage(next), msg}); err != nil {
		s.cfg.Log.Warn("login page", "err", err)
	}
}

func (s *Server) loginForm(w http.ResponseWriter, r *http.Request) {
	s.writeLogin(w, http.StatusOK, r.URL.Query().Get("next"), "")
}

// login checks the posted token and sets the session cookie: HttpOnly
// (no script reads it), SameSite=Strict (no other site's page sends
// it), and Secure when the listener speaks TLS.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if s.cfg.APIToken == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.APIToken)) != 1 {
		s.cfg.Log.Warn("status page login refused: wrong API token", "remote", r.RemoteAddr)
		s.writeLogin(w, http.StatusUnauthorized, r.PostFormValue("next"), "Wrong token.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: s.session, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	http.Redirect(w, r, nextPage(r.PostFormValue("next")), http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
