package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
)

// The status page is read-only and, on loopback, needs no token: it
// shows what a rack label shows (MACs, hostnames, profiles, states) and a
// one-line summary of a failure. Off loopback it is behind the login
// (Config.RequireLogin). Either way the full error, which quotes the
// failing command and its last output (anything an install printed),
// stays behind the API token with the log; so does everything that
// changes a machine.
var statusTmpl = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pxe-anywhere</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;min-width:60%}
th,td{padding:.35em .8em;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}
.installed{color:#18794e}.failed{color:#c62828}.installing,.installer-up,.booting{color:#b26a00}
#live,#note{color:#888;font-size:12px}
.warning{background:#fff4e5;border-left:4px solid #b26a00;padding:.5em 1em;margin:1em 0}
</style></head><body>
<h1>pxe-anywhere</h1>
{{if .Logout}}<form method="post" action="/logout"><button type="submit">Log out</button></form>{{end}}
{{range .Warnings}}<p class="warning" role="alert">{{.}}</p>
{{end}}<p id="live">{{len .Machines}} machines · live updates off</p>
<table><thead><tr><th>MAC</th><th>Hostname</th><th>Profile</th><th>State</th><th>Phase</th><th>Error</th><th>Updated</th></tr></thead>
<tbody id="machines">
{{range .Machines}}<tr id="m-{{.MAC}}"><td>{{.MAC}}</td><td>{{.Hostname}}</td><td>{{.Profile}}</td><td class="{{.State}}">{{.State}}{{if .Held}} (held){{end}}</td><td>{{.Phase}}</td><td>{{.Error}}</td><td>{{if not .UpdatedAt.IsZero}}{{.UpdatedAt.Format "2006-01-02 15:04:05"}}{{end}}</td></tr>
{{end}}</tbody></table>
<p id="note">Errors are cut to one line here. The full error and the install log: <code>pxe-anywhere machines show MAC</code> and <code>pxe-anywhere machines logs MAC</code>.</p>
<script>
(function(){
  var live=document.getElementById("live");
  if(!window.EventSource){return}
  var es=new EventSource("/events");
  es.onopen=function(){live.textContent="live"};
  es.onerror=function(){live.textContent="reconnecting…"};
  es.onmessage=function(e){
    var m=JSON.parse(e.data), id="m-"+m.mac, row=document.getElementById(id);
    if(m.state==="forgotten"){ if(row){row.remove()} return }
    if(!row){row=document.createElement("tr");row.id=id;document.getElementById("machines").appendChild(row)}
    var cells=[m.mac,m.hostname,m.profile,m.state+(m.held?" (held)":""),m.phase||"",m.error||"",(m.updated_at&&m.updated_at.indexOf("0001-")!==0)?m.updated_at.replace("T"," ").slice(0,19):""];
    row.textContent="";
    cells.forEach(function(c,i){var td=document.createElement("td");td.textContent=c;if(i===3){td.className=m.state}row.appendChild(td)});
  };
})();
</script>
</body></html>
`))

func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	ms, err := s.inv.Machines(r.Context())
	if err != nil {
		s.inventoryError(w, err)
		return
	}
	shown := make([]MachineView, len(ms))
	for i, m := range ms {
		shown[i] = statusView(m)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	var warnings []string
	if s.cfg.Warnings != nil {
		warnings = s.cfg.Warnings()
	}
	data := struct {
		Machines []MachineView
		Logout   bool
		Warnings []string
	}{shown, s.cfg.RequireLogin, warnings}
	if err := statusTmpl.Execute(w, data); err != nil {
		s.cfg.Log.Warn("status page", "err", err)
	}
}

// sseKeepalive is how often an idle event stream gets a comment line:
// a client that stopped reading is then found (its write times out)
// even when no machine changes.
const sseKeepalive = 30 * time.Second

// statusEvents streams machine changes as server-sent events. Each
// event must be taken within SSEWriteTimeout, or the client is dropped
// and its subscription ends; at most SSEMaxSubscribers streams are open.
func (s *Server) statusEvents(w http.ResponseWriter, r *http.Request) {
	if n := s.streams.Add(1); n > int64(s.cfg.SSEMaxSubscribers) {
		s.streams.Add(-1)
		s.limited.Warn("sse-full", "event stream refused: too many open (server.sse_max_subscribers)",
			"remote", r.RemoteAddr, "max", s.cfg.SSEMaxSubscribers)
		w.Header().Set("Retry-After", "5")
		http.Error(w, "too many event streams open; retry later", http.StatusServiceUnavailable)
		return
	}
	defer s.streams.Add(-1)
	pw := httpserve.ProgressWriter(w, s.cfg.SSEWriteTimeout)
	flusher := pw.(interface{ FlushError() error })
	pw.Header().Set("Content-Type", "text/event-stream")
	pw.Header().Set("Cache-Control", "no-store")
	pw.WriteHeader(http.StatusOK)
	// retry: a restarted server is back within seconds; browsers
	// would otherwise wait their own default before reconnecting.
	fmt.Fprint(pw, ": pxe-anywhere machine updates\nretry: 2000\n\n")
	if flusher.FlushError() != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // ends the subscription when the client is dropped
	events := s.inv.Subscribe(ctx)
	tick := time.NewTicker(sseKeepalive)
	defer tick.Stop()
	for {
		var err error
		select {
		case m, ok := <-events:
			if !ok {
				return
			}
			b, jerr := json.Marshal(statusView(m))
			if jerr != nil {
				continue
			}
			_, err = fmt.Fprintf(pw, "data: %s\n\n", b)
		case <-tick.C:
			_, err = fmt.Fprint(pw, ": keepalive\n\n")
		}
		if err == nil {
			err = flusher.FlushError()
		}
		if err != nil {
			s.limited.Warn("sse-drop", "event stream client dropped: it did not take an event in time (server.sse_write_timeout)",
				"remote", r.RemoteAddr, "err", err)
			return
		}
	}
}

// statusErrorMax bounds an error summary on the status page, in runes.
const statusErrorMax = 120

// statusView is a machine as the status page and its event stream show
// it: the error cut to a summary.
func statusView(m MachineView) MachineView {
	m.Error = errorSummary(m.Error)
	return m
}

// errorSummary is the first line of an install error (which names the
// phase, the command and its exit code), without the output that
// follows it, cut to statusErrorMax runes.
func errorSummary(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	line = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(line), "; last output:"))
	r := []rune(line)
	if len(r) <= statusErrorMax {
		return line
	}
	// Cut from the middle: the start names the phase and the command,
	// the end the exit code or the cause.
	tail := statusErrorMax / 3
	return string(r[:statusErrorMax-tail-1]) + "…" + string(r[len(r)-tail:])
}
