package httpboot

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
)

// The status page is read-only and shows what a rack label shows: MACs,
// hostnames, profiles and states. It carries no secret, so it needs no
// token; everything that changes a machine is behind the API token.
var statusTmpl = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pxe-anywhere</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;min-width:60%}
th,td{padding:.35em .8em;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}
.installed{color:#18794e}.failed{color:#c62828}.installing,.installer-up,.booting{color:#b26a00}
#live{color:#888;font-size:12px}
</style></head><body>
<h1>pxe-anywhere</h1>
<p id="live">{{len .}} machines · live updates off</p>
<table><thead><tr><th>MAC</th><th>Hostname</th><th>Profile</th><th>State</th><th>Phase</th><th>Error</th><th>Updated</th></tr></thead>
<tbody id="machines">
{{range .}}<tr id="m-{{.MAC}}"><td>{{.MAC}}</td><td>{{.Hostname}}</td><td>{{.Profile}}</td><td class="{{.State}}">{{.State}}</td><td>{{.Phase}}</td><td>{{.Error}}</td><td>{{if not .UpdatedAt.IsZero}}{{.UpdatedAt.Format "2006-01-02 15:04:05"}}{{end}}</td></tr>
{{end}}</tbody></table>
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
    var cells=[m.mac,m.hostname,m.profile,m.state,m.phase||"",m.error||"",(m.updated_at&&m.updated_at.indexOf("0001-")!==0)?m.updated_at.replace("T"," ").slice(0,19):""];
    row.textContent="";
    cells.forEach(function(c,i){var td=document.createElement("td");td.textContent=c;if(i===3){td.className=c}row.appendChild(td)});
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
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusTmpl.Execute(w, ms); err != nil {
		s.cfg.Log.Warn("status page", "err", err)
	}
}

// statusEvents streams machine changes as server-sent events.
func (s *Server) statusEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// retry: a restarted server is back within seconds; browsers
	// would otherwise wait their own default before reconnecting.
	fmt.Fprint(w, ": pxe-anywhere machine updates\nretry: 2000\n\n")
	flusher.Flush()
	for m := range s.inv.Subscribe(r.Context()) {
		b, err := json.Marshal(m)
		if err != nil {
			continue
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return
		}
		flusher.Flush()
	}
}
