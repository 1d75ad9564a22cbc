package admin

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

// pageCSS is the pages' one stylesheet, inline: no other request, no
// external asset. Colours keep a contrast of 4.5:1 or more on white.
const pageCSS = `
body{font:14px system-ui,sans-serif;margin:1.5em 2em;color:#1a1a1a}
a{color:#0b57d0}
table{border-collapse:collapse;width:100%}
th,td{padding:.35em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}
.installed{color:#136c43}.failed{color:#b3261e}.installing,.installer-up,.booting{color:#8a5300}
.muted{color:#595959;font-size:12px}
.warning{background:#fff4e5;border-left:4px solid #8a5300;padding:.5em 1em;margin:1em 0}
.counts{display:flex;gap:.5em;flex-wrap:wrap;padding:0;list-style:none}
.counts a{display:block;padding:.4em .8em;border:1px solid #ccc;border-radius:4px;text-decoration:none;color:inherit}
.counts b{font-size:18px;margin-right:.3em}
progress{width:9em;vertical-align:middle}
form.filter{margin:1em 0}
input,select,button{font:inherit;padding:.25em .4em}
:focus-visible{outline:3px solid #0b57d0;outline-offset:1px}
pre{background:#f6f6f6;padding:.6em;max-height:30em;overflow:auto;white-space:pre-wrap}
ol.timeline{padding-left:1.4em}
ol.timeline li{margin:.2em 0}
.actions form{display:inline-block;margin-right:.5em}
header{display:flex;justify-content:space-between;align-items:baseline}
`

var pageFuncs = template.FuncMap{
	"indentJSON": indentJSON,
	"firmware":   firmwareLabel,
	"group":      stateGroup,
	"summary":    errorSummary,
	"dur":        shortDuration,
	"pct":        func(f float64) int { return int(f*100 + 0.5) },
	"when": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05")
	},
	"iso":    func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"millis": func(d time.Duration) int64 { return d.Milliseconds() },
}

// pageTmpl holds the overview, the machine page, the confirmation page
// and the overview's row, which the script fetches when a machine
// changes: every piece of HTML comes from here, none from the script.
var pageTmpl = template.Must(template.New("pages").Funcs(pageFuncs).Parse(`
{{define "head"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.}}</title><style>` + pageCSS + `</style></head><body>{{end}}

{{define "top"}}<header><h1><a href="/" style="color:inherit;text-decoration:none">pxe-anywhere</a></h1>
<div>{{if .LoggedIn}}<form method="post" action="/logout"><button type="submit">Log out</button></form>{{else}}<a href="/login?next={{.Path}}">Log in</a> <span class="muted">(to act on machines and see full errors and logs)</span>{{end}}</div></header>
{{range .Warnings}}<p class="warning" role="alert">{{.}}</p>
{{end}}{{end}}

{{define "progress"}}{{with .Progress}}<progress max="100" value="{{.Percent}}" aria-label="install progress">{{.Percent}}%</progress>
<span class="elapsed" data-since="{{iso .Since}}" data-done="{{.Done}}" data-share="{{.PhaseShare}}" data-typical="{{millis .Typical}}">{{.Percent}}% · {{.Phase}} ({{.Index}}/4) for {{dur .Elapsed}}</span>
<span class="muted">{{.Phase}} is ~{{pct .PhaseShare}}% of a typical install</span>{{else}}{{.M.Phase}}{{end}}{{end}}

{{define "row"}}<tr id="m-{{.M.MAC}}" data-state="{{group .M.State}}" data-search="{{.M.MAC}} {{.M.Hostname}} {{.M.Profile}} {{.M.State}}">
<td><a href="/machines/{{.M.MAC}}">{{.M.MAC}}</a></td><td>{{.M.Hostname}}</td><td>{{.M.Profile}}</td>
<td class="{{.M.State}}">{{.M.State}}{{if .M.Held}} (held){{end}}{{if .M.Reinstall}} (reinstall requested){{end}}</td>
<td>{{template "progress" .}}</td>
<td>{{.M.IP}}</td><td>{{firmware .M.Firmware}}</td>
<td>{{if .M.Error}}<span class="failed">{{summary .M.Error}}</span><br>{{end}}{{with .M.LastEvent}}<span class="muted">{{when .Time}}</span> {{$.LastNote}}{{end}}</td></tr>
{{end}}

{{define "overview"}}{{template "head" "pxe-anywhere"}}{{template "top" .}}
<ul class="counts" aria-label="machines by state">{{range .Counts}}<li><a href="/?state={{.Name}}" data-count="{{.Name}}"><b>{{.N}}</b>{{.Name}}</a></li>{{end}}</ul>
<form class="filter" method="get" action="/" role="search">
<label>Search <input type="search" name="q" id="q" value="{{.Q}}" placeholder="MAC, hostname, profile, state"></label>
<label>State <select name="state" id="state"><option value="">all</option>{{range .Counts}}<option value="{{.Name}}"{{if eq .Name $.State}} selected{{end}}>{{.Name}}</option>{{end}}</select></label>
<button type="submit">Filter</button> <span id="live" class="muted" aria-live="polite">{{.Shown}} of {{.Total}} machines · live updates off</span>
</form>
<table><thead><tr><th scope="col">MAC</th><th scope="col">Hostname</th><th scope="col">Profile</th><th scope="col">State</th><th scope="col">Progress</th><th scope="col">Address</th><th scope="col">Firmware</th><th scope="col">Error · last event</th></tr></thead>
<tbody id="machines">
{{range .Rows}}{{template "row" .}}{{end}}</tbody></table>
<p class="muted">Errors are cut to one line here; a machine's page shows the full error and its log to a logged-in operator.</p>
{{template "script"}}</body></html>{{end}}

{{define "machine"}}{{template "head" (print "pxe-anywhere: " .Row.M.MAC)}}{{template "top" .}}
{{with .Row.M}}<h2>{{.Hostname}} <span class="muted">{{.MAC}}</span></h2>
<div id="summary"><table><tbody>
<tr><th scope="row">State</th><td class="{{.State}}" id="state-cell">{{.State}}{{if .Held}} (held: a boot's secrets were asked for twice; reinstall to release){{end}}{{if .Reinstall}} (reinstall requested){{end}}</td></tr>
<tr><th scope="row">Progress</th><td>{{template "progress" $.Row}}</td></tr>
<tr><th scope="row">Profile</th><td>{{.Profile}}</td></tr>
{{if .DecidedBy}}<tr><th scope="row">Decided by</th><td id="decided">{{.DecidedBy}}{{with .DecidedWhy}}: {{.}}{{end}}</td></tr>{{end}}
<tr><th scope="row">Address</th><td>{{.IP}}</td></tr>
<tr><th scope="row">Firmware</th><td>{{firmware .Firmware}}</td></tr>
<tr><th scope="row">Updated</th><td>{{when .UpdatedAt}}</td></tr>
{{if .Error}}<tr><th scope="row">Error</th><td class="failed">{{if $.LoggedIn}}<pre id="error">{{.Error}}</pre>{{else}}{{summary .Error}} <span class="muted">(log in for the full error)</span>{{end}}</td></tr>{{end}}
</tbody></table></div>{{end}}
{{if .Done}}<p role="status" class="warning">{{.Done}}</p>{{end}}
<h3>Actions</h3>
<div class="actions">{{if .LoggedIn}}{{range .Actions}}<form method="get" action="/machines/{{$.Row.M.MAC}}/{{.}}"><button type="submit">{{.}}…</button></form>{{end}}
{{else}}<p><a href="/login?next={{.Path}}">Log in</a> to reinstall, cancel or forget this machine.</p>{{end}}</div>
<h3>Facts</h3>
<div id="facts">{{with .Row.M.Facts}}<p class="muted">{{with .CollectedAt}}Read over SSH {{when .}}{{end}}{{with $.Row.M.Facts.Addr}} from {{.}}{{end}}{{if .Facter}} · nixos-facter report kept{{end}}</p>
{{with .Hardware}}<pre id="hardware">{{indentJSON .}}</pre>{{end}}
{{with .DHCP}}<p>DHCP context of its latest boot:</p><pre id="dhcp">{{indentJSON .}}</pre>{{end}}
{{else}}<p class="muted">No facts: the machine was not discovered (server.unknown_machines: discover reads them when an unlisted machine boots).</p>{{end}}</div>
<h3>Current boot</h3>
<div id="boot">{{with .Boot}}<table><tbody>
<tr><th scope="row">Token</th><td><code>{{.TokenFingerprint}}</code> <span class="muted">(sha256 prefix; the token itself is never shown)</span></td></tr>
<tr><th scope="row">Host key</th><td><code>{{.HostKey}}</code></td></tr>
<tr><th scope="row">From</th><td>{{.IP}} · {{firmware .Firmware}}</td></tr>
<tr><th scope="row">Handed out</th><td>{{when .CreatedAt}}{{with .UsedAt}} · used {{when .}}{{end}}{{with .VoidedAt}} · voided {{when .}} ({{$.Boot.VoidReason}}){{end}}</td></tr>
</tbody></table>{{else}}<p class="muted">No boot yet.</p>{{end}}</div>
<h3>Events</h3>
<ol class="timeline" id="events">{{range .Events}}<li><time datetime="{{iso .Time}}">{{when .Time}}</time> <span class="{{.State}}">{{.State}}</span>{{if .Phase}} · {{.Phase}}{{end}}: {{if $.LoggedIn}}{{.Message}}{{else}}{{summary .Message}}{{end}}</li>
{{end}}</ol>
<h3>Install log</h3>
{{if .LoggedIn}}<pre id="log" data-after="{{.LogAfter}}" aria-live="off">{{range .Log}}{{.Line}}
{{end}}</pre><p class="muted" id="logstate">live updates off</p>{{else}}<p><a href="/login?next={{.Path}}">Log in</a> to read the install log: it holds whatever the install printed.</p>{{end}}
{{template "script"}}</body></html>{{end}}

{{define "confirm"}}{{template "head" (print "pxe-anywhere: " .Action " " .M.MAC)}}
<h1>{{.Action}} {{.M.Hostname}} ({{.M.MAC}})?</h1>
<p>{{.What}}</p>
<form method="post" action="/machines/{{.M.MAC}}/{{.Action}}">
<input type="hidden" name="csrf" value="{{.CSRF}}">
{{if eq .Action "assign"}}<p><label>Profile <input name="profile" required></label> <label>Hostname <input name="hostname" placeholder="(none)"></label></p>{{end}}
<button type="submit" id="confirm">Yes, {{.Action}}</button> <a href="/machines/{{.M.MAC}}">No, back</a>
</form></body></html>{{end}}

{{define "script"}}<script>
(function(){
  var live=document.getElementById("live")||document.getElementById("logstate");
  var table=document.getElementById("machines"), q=document.getElementById("q"), st=document.getElementById("state");
  var page=location.pathname.indexOf("/machines/")===0?decodeURIComponent(location.pathname.split("/")[2]):"";
  function shown(tr){
    var want=st&&st.value, text=q&&q.value.toLowerCase();
    return (!want||tr.dataset.state===want)&&(!text||tr.dataset.search.toLowerCase().indexOf(text)>=0);
  }
  function recount(){
    if(!table){return}
    var n={}, rows=table.rows, vis=0;
    for(var i=0;i<rows.length;i++){var s=rows[i].dataset.state;n[s]=(n[s]||0)+1;rows[i].hidden=!shown(rows[i]);if(!rows[i].hidden){vis++}}
    document.querySelectorAll("[data-count]").forEach(function(a){a.firstChild.textContent=n[a.dataset.count]||0});
    if(live){live.firstChild.textContent=vis+" of "+rows.length+" machines · "}
  }
  function tick(){
    document.querySelectorAll(".elapsed").forEach(function(e){
      var ms=Date.now()-Date.parse(e.dataset.since); if(!(ms>0)){return}
      var p=Math.floor(100*(+e.dataset.done+Math.min(ms/e.dataset.typical,0.95)*e.dataset.share));
      var bar=e.previousElementSibling; if(bar){bar.value=p}
      var s=Math.floor(ms/1000), d=s<60?s+"s":s<3600?Math.floor(s/60)+"m"+(s%60)+"s":Math.floor(s/3600)+"h"+Math.floor(s%3600/60)+"m";
      e.textContent=e.textContent.replace(/^\d+%/,p+"%").replace(/for \S+$/,"for "+d);
    });
  }
  if(q){q.addEventListener("input",recount);st.addEventListener("change",recount);
    q.form.addEventListener("submit",function(e){e.preventDefault();recount();history.replaceState(null,"","?q="+encodeURIComponent(q.value)+"&state="+encodeURIComponent(st.value))})}
  setInterval(tick,5000);
  function refresh(mac){
    if(table){
      fetch("/machines/"+mac+"/row",{credentials:"same-origin"}).then(function(r){return r.status===200?r.text():""}).then(function(html){
        var old=document.getElementById("m-"+mac);
        if(!html){if(old){old.remove()}recount();return}
        var t=document.createElement("tbody");t.innerHTML=html;var tr=t.querySelector("tr");
        if(old){old.replaceWith(tr)}else{table.appendChild(tr)}
        recount();
      });
    }else if(mac===page){
      fetch(location.pathname,{credentials:"same-origin"}).then(function(r){return r.text()}).then(function(html){
        var d=new DOMParser().parseFromString(html,"text/html");
        ["summary","boot","events"].forEach(function(id){var n=d.getElementById(id),o=document.getElementById(id);if(n&&o){o.replaceWith(n)}});
      });
    }
  }
  if(window.EventSource&&(table||page)){
    var es=new EventSource("/events");
    es.onopen=function(){if(table&&live){live.lastChild.textContent="live"}};
    es.onerror=function(){if(table&&live){live.lastChild.textContent="reconnecting…"}};
    es.onmessage=function(e){refresh(JSON.parse(e.data).mac)};
    if(table&&live){live.appendChild(document.createTextNode(""));live.firstChild.textContent=live.firstChild.textContent.replace(/ · live updates off$/," · ")}
  }
  recount();
  var log=document.getElementById("log");
  if(log){
    var after=+log.dataset.after, busy=false;
    // The log follows live as "machines logs -f" does: ask for the lines
    // after the last one seen, again and again.
    function follow(){
      if(busy){return} busy=true;
      fetch(location.pathname+"/log?after="+after,{credentials:"same-origin"}).then(function(r){return r.ok?r.json():[]}).then(function(ls){
        busy=false; live.textContent="following the log";
        if(!ls.length){return}
        var end=log.scrollTop+log.clientHeight>=log.scrollHeight-4;
        log.appendChild(document.createTextNode(ls.map(function(l){return l.line+"\n"}).join("")));
        after=ls[ls.length-1].seq; if(end){log.scrollTop=log.scrollHeight}
        if(ls.length>=100){follow()}
      },function(){busy=false;live.textContent="log: reconnecting…"});
    }
    follow(); setInterval(follow,2000);
  }
})();
</script>{{end}}
`))

// pageActions are the actions the page offers, as the CLI has them;
// "assign" joins them with discovery.
var pageActions = []string{"reinstall", "cancel", "forget", "assign"}

// pagePowerActions drive the machine's BMC; offered when the server
// has power control (Config.Power).
var pagePowerActions = []string{"power-on", "power-off", "power-cycle"}

// actions are the page actions this server offers.
func (s *Server) actions() []string {
	if s.cfg.Power == nil {
		return pageActions
	}
	return append(slices.Clip(pageActions), pagePowerActions...)
}

var actionWhat = map[string]string{
	"reinstall":   "The machine's next PXE boot installs it again, wiping its disks as its profile says. An unused boot handed out before is voided.",
	"cancel":      "The running or queued install stops now; the machine becomes failed and its slot goes to the next machine.",
	"forget":      "The machine and its whole history are removed. A machine still in the config cannot be forgotten.",
	"assign":      "The machine gets this profile (and hostname). If its installer is up, the install starts at once, wiping its disks as the profile says; else at its next PXE boot. Machines listed in the config cannot be assigned here.",
	"power-on":    "The machine's BMC powers it on.",
	"power-off":   "The machine's BMC cuts its power now (a hard power-off: the running system is not shut down).",
	"power-cycle": "The machine's BMC power-cycles it now (the running system is not shut down); a machine that is off is powered on.",
}

type row struct {
	M        MachineView
	Progress *Progress
}

// LastNote is the row's last event cut to one line, or "" when it only
// repeats the error the row already shows ("install failed in disko:
// <the error>").
func (r row) LastNote() string {
	if r.M.LastEvent == nil {
		return ""
	}
	first, _, _ := strings.Cut(r.M.Error, "\n")
	if first = strings.TrimSpace(first); first != "" && strings.Contains(r.M.LastEvent.Message, first) {
		return ""
	}
	return errorSummary(r.M.LastEvent.Message)
}

type count struct {
	Name string
	N    int
}

var countOrder = []string{"installed", "installing", "failed", "waiting", "discovered"}

type pageBase struct {
	LoggedIn bool
	Path     string
	Warnings []string
}

func (s *Server) base(r *http.Request) pageBase {
	b := pageBase{LoggedIn: s.sessionOK(r) || s.bearerOK(r), Path: r.URL.Path}
	if s.cfg.Warnings != nil {
		b.Warnings = s.cfg.Warnings()
	}
	return b
}

// typical reads the phase history; without one, the defaults do.
func (s *Server) typical(r *http.Request) typicalInstall {
	h, err := s.inv.PhaseHistory(r.Context())
	if err != nil {
		s.cfg.Log.Warn("status page: phase history", "err", err)
	}
	return newTypicalInstall(h)
}

func (s *Server) row(t typicalInstall, m MachineView, now time.Time) row {
	rw := row{M: m}
	if p, ok := t.progress(m, now); ok {
		rw.Progress = &p
	}
	return rw
}

func (s *Server) render(w http.ResponseWriter, code int, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := pageTmpl.ExecuteTemplate(w, name, data); err != nil {
		s.cfg.Log.Warn("status page", "page", name, "err", err)
	}
}

// statusPage is the overview: counts by state, the filter, and a row a
// machine. Filtering is done here too, so that it works without the
// script.
func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	ms, err := s.inv.Machines(r.Context())
	if err != nil {
		s.inventoryError(w, err)
		return
	}
	t, now := s.typical(r), time.Now()
	q, state := strings.TrimSpace(r.URL.Query().Get("q")), r.URL.Query().Get("state")
	n := map[string]int{}
	var rows []row
	for _, m := range ms {
		g := stateGroup(m.State)
		n[g]++
		if state != "" && g != state {
			continue
		}
		hay := strings.ToLower(strings.Join([]string{m.MAC, m.Hostname, m.Profile, m.State}, " "))
		if q != "" && !strings.Contains(hay, strings.ToLower(q)) {
			continue
		}
		rows = append(rows, s.row(t, m, now))
	}
	var counts []count
	for _, c := range countOrder {
		counts = append(counts, count{c, n[c]})
	}
	s.render(w, http.StatusOK, "overview", struct {
		pageBase
		Counts       []count
		Rows         []row
		Q, State     string
		Shown, Total int
	}{s.base(r), counts, rows, q, state, len(rows), len(ms)})
}

// machineRow is one overview row, for the script to swap in when the
// machine changes; 404 once it is forgotten.
func (s *Server) machineRow(w http.ResponseWriter, r *http.Request) {
	m, ok := s.machineParam(w, r)
	if !ok {
		return
	}
	s.render(w, http.StatusOK, "row", s.row(s.typical(r), m, time.Now()))
}

// machinePage shows one machine. The full error, the events' full text
// and the log are for a logged-in operator only: they quote whatever
// the install printed.
func (s *Server) machinePage(w http.ResponseWriter, r *http.Request) {
	m, ok := s.machineParam(w, r)
	if !ok {
		return
	}
	mac, b := m.MAC, s.base(r)
	data := struct {
		pageBase
		Row      row
		Boot     *BootView
		Events   []EventView
		Log      []LogView
		LogAfter int64
		Actions  []string
		Done     string
	}{pageBase: b, Row: s.row(s.typical(r), m, time.Now()), Actions: s.actions(), Done: doneMessages[r.URL.Query().Get("done")]}
	if bv, err := s.inv.LatestBoot(r.Context(), mac); err == nil {
		data.Boot = &bv
	} else if !errors.Is(err, ErrNotFound) {
		s.inventoryError(w, err)
		return
	}
	for after := int64(0); ; {
		evs, err := s.inv.Events(r.Context(), mac, after)
		if err != nil {
			s.inventoryError(w, err)
			return
		}
		if len(evs) == 0 {
			break
		}
		data.Events = append(data.Events, evs...)
		after = evs[len(evs)-1].ID
	}
	if b.LoggedIn {
		// The first page of the log; the script follows the rest.
		lines, err := s.inv.Log(r.Context(), mac, 0)
		if err != nil {
			s.inventoryError(w, err)
			return
		}
		data.Log = lines
		if len(lines) > 0 {
			data.LogAfter = lines[len(lines)-1].Seq
		}
	}
	s.render(w, http.StatusOK, "machine", data)
}

// pageLog is the install log for the machine page's script: the API's
// answer, for the session cookie instead of the bearer token.
func (s *Server) pageLog(w http.ResponseWriter, r *http.Request) {
	if !s.sessionOK(r) && !s.bearerOK(r) {
		http.Error(w, "log in to read the install log", http.StatusUnauthorized)
		return
	}
	s.machineLog(w, r)
}

var doneMessages = map[string]string{
	"reinstall":    "Reinstall requested: the next PXE boot installs again.",
	"cancel":       "Install cancelled: the machine is failed (cancelled by operator).",
	"cancel-asked": "Cancel asked of the server that runs the install: it stops it when it hears of it (at once through the database's change notifications; at the latest at its next heartbeat, every server.claim_lease/3); the machine's events say when.",
	"assign":       "Assigned: the install starts at once if the machine's installer is up, else at its next PXE boot.",
	"power-on":     "Powered on through the BMC.",
	"power-off":    "Powered off through the BMC.",
	"power-cycle":  "Power-cycled through the BMC.",
}

// csrfToken is the value an action form must carry: tied to the
// session, so that only a page served to this session can post it
// (on top of the cookie's SameSite=Strict).
func (s *Server) csrfToken() string {
	mac := hmac.New(sha256.New, []byte(s.session))
	mac.Write([]byte("pxe-anywhere page actions"))
	return hex.EncodeToString(mac.Sum(nil))
}

// actionParam is the {action} of the route, or 404.
func (s *Server) actionParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	a := chi.URLParam(r, "action")
	if !slices.Contains(s.actions(), a) {
		http.NotFound(w, r)
		return "", false
	}
	return a, true
}

// needSession sends a browser without a session to the login, which
// comes back to this page: every action asks for the login, on
// loopback too, so that the event names an operator who had the token.
func (s *Server) needSession(w http.ResponseWriter, r *http.Request) bool {
	if s.sessionOK(r) {
		return true
	}
	http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.Path), http.StatusSeeOther)
	return false
}

// confirmAction asks whether to go on, with a form that posts the
// action: without a script, a confirmation is a page.
func (s *Server) confirmAction(w http.ResponseWriter, r *http.Request) {
	action, ok := s.actionParam(w, r)
	if !ok || !s.needSession(w, r) {
		return
	}
	m, ok := s.machineParam(w, r)
	if !ok {
		return
	}
	s.render(w, http.StatusOK, "confirm", struct {
		M            MachineView
		Action, What string
		CSRF         string
	}{m, action, actionWhat[action], s.csrfToken()})
}

// doAction runs a confirmed action and goes back to the machine (or,
// once forgotten, to the overview).
func (s *Server) doAction(w http.ResponseWriter, r *http.Request) {
	action, ok := s.actionParam(w, r)
	if !ok {
		return
	}
	if !s.sessionOK(r) {
		http.Error(w, "log in first: actions need a session", http.StatusUnauthorized)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if got := r.PostFormValue("csrf"); subtle.ConstantTimeCompare([]byte(got), []byte(s.csrfToken())) != 1 {
		s.cfg.Log.Warn("page action refused: missing or wrong CSRF token", "remote", r.RemoteAddr, "action", action)
		http.Error(w, "this form is stale or was not sent by the status page; open the machine's page and try again", http.StatusForbidden)
		return
	}
	mac, ok := macParam(w, r)
	if !ok {
		return
	}
	by := "operator (web, " + remoteHost(r) + ")"
	var err error
	switch action {
	case "reinstall":
		err = s.inv.Reinstall(r.Context(), mac, by)
	case "cancel":
		var asked string
		if asked, err = s.inv.Cancel(r.Context(), mac, by); asked != "" {
			action = "cancel-asked" // for the message below
		}
	case "forget":
		err = s.inv.Forget(r.Context(), mac, by)
	case "assign":
		if r.PostFormValue("profile") == "" {
			err = fmt.Errorf("%w: a profile is required", ErrInvalid)
			break
		}
		err = s.inv.Assign(r.Context(), mac, r.PostFormValue("profile"), r.PostFormValue("hostname"), by)
	default: // power-on, power-off, power-cycle: actionParam offers them only with s.cfg.Power
		_, err = s.cfg.Power.Power(r.Context(), mac, strings.TrimPrefix(action, "power-"), by)
	}
	if err != nil {
		code := statusOf(err)
		if code == 0 {
			s.cfg.Log.Error("page action failed", "action", action, "mac", mac, "err", err)
			code, err = http.StatusInternalServerError, errors.New("internal error; see the server's log")
		}
		http.Error(w, fmt.Sprintf("%s %s: %v", action, mac, err), code)
		return
	}
	s.cfg.Log.Info("page action", "action", action, "mac", mac, "by", by)
	if action == "forget" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/machines/"+mac+"?done="+action, http.StatusSeeOther)
}

func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

// indentJSON lays out a machine's facts for reading; the template
// escapes what they say (the machine wrote it).
func indentJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return string(raw)
	}
	return b.String()
}
