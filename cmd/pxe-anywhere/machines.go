package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pxe-anywhere/pxe-anywhere/admin"
	"github.com/pxe-anywhere/pxe-anywhere/internal/macaddr"
)

const machinesUsage = `Usage:
  pxe-anywhere machines list [--json]          every machine the server knows, with its state
  pxe-anywhere machines show [--json] MAC      one machine and all its events
  pxe-anywhere machines logs [-f] MAC          the whole install log; -f follows it until the install ends
  pxe-anywhere machines reinstall MAC          make the next PXE boot of MAC install again
  pxe-anywhere machines reinstall --power-cycle MAC
                                               ... and boot it now: PXE once and a power cycle through its BMC
  pxe-anywhere machines power MAC on|off|cycle|status
                                               drive MAC's BMC (bmc: in the config)
  pxe-anywhere machines cancel MAC             stop MAC's running or queued install; MAC becomes failed
  pxe-anywhere machines forget MAC             drop MAC's state and history
  pxe-anywhere machines assign MAC PROFILE [--hostname H]
                                               give a discovered MAC a profile; if its installer
                                               is up, the install starts at once

Flags (all subcommands):
`

// logPollInterval is how often "logs -f" asks for new lines. Polling
// keeps the client to plain GETs that any proxy passes.
var logPollInterval = time.Second

// apiClient talks to the operator API of a running server.
type apiClient struct {
	base  string
	token string
	hc    *http.Client
}

// apiFlagValues are the flags every API subcommand shares.
type apiFlagValues struct {
	server, tokenFile, caFile *string
}

// apiFlags adds the flags every API subcommand shares.
func apiFlags(fs *flag.FlagSet) apiFlagValues {
	return apiFlagValues{
		server: fs.String("server", envOr("PXE_ANYWHERE_SERVER", "http://127.0.0.1:8081"),
			"URL of the running server's admin side, server.admin_listen (env PXE_ANYWHERE_SERVER)"),
		tokenFile: fs.String("token-file", envOr("PXE_ANYWHERE_TOKEN_FILE", "/var/lib/pxe-anywhere/api-token"),
			"file holding the API token that the server wrote (env PXE_ANYWHERE_TOKEN_FILE)"),
		caFile: fs.String("ca-file", envOr("PXE_ANYWHERE_CA_FILE", ""),
			"PEM `file` of the certificates that an https --server must chain to, instead of the system's roots; the server's own self-signed certificate will do (env PXE_ANYWHERE_CA_FILE)"),
	}
}

// client reads the token and checks the server URL.
func (f apiFlagValues) client() (*apiClient, error) {
	return newAPIClient(*f.server, *f.tokenFile, *f.caFile)
}

// newAPIClient reads the token and checks the server URL. An https
// server's certificate is verified against the system's roots, or
// against caFile's certificates alone when it is set; never skipped.
func newAPIClient(server, tokenFile, caFile string) (*apiClient, error) {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want a URL like http://127.0.0.1:8081 or https://10.99.0.1:8081", server)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if u.Scheme == "https" && caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading the API token: %w (pass --token-file or set PXE_ANYWHERE_TOKEN_FILE; the server writes it at start)", err)
	}
	t := strings.TrimSpace(string(tok))
	if t == "" {
		return nil, fmt.Errorf("API token file %s is empty", tokenFile)
	}
	return &apiClient{base: strings.TrimRight(server, "/"), token: t, hc: &http.Client{Timeout: 30 * time.Second, Transport: transport}}, nil
}

// newAPIClientFlags parses the shared flags of a subcommand that takes
// no arguments and returns its client.
func newAPIClientFlags(name string, args []string, stderr io.Writer) (*apiClient, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := apiFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() != 0 {
		return nil, fmt.Errorf("%s: unexpected argument %q", name, fs.Arg(0))
	}
	return api.client()
}

// do sends one API request and decodes a JSON answer into out (if not
// nil). Errors name the server and say what to check.
func (c *apiClient) do(ctx context.Context, method, path string, out any) error {
	return c.doBody(ctx, method, path, nil, out)
}

// doBody is do with a JSON request body (none when in is nil).
func (c *apiClient) doBody(ctx context.Context, method, path string, in, out any) error {
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, reqBody)
	if err != nil {
		return fmt.Errorf("request %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var certErr *tls.CertificateVerificationError
		if errors.As(err, &certErr) {
			return fmt.Errorf("server %s: its TLS certificate is not trusted: %w (pass --ca-file with the server's certificate or its CA)", c.base, certErr.Err)
		}
		return fmt.Errorf("server %s unreachable: %w (is pxe-anywhere serve running there? see --server)", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("reading the answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return errors.New("wrong API token (see --token-file)")
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("server: %s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("server answered %s to %s %s: is %s a pxe-anywhere server?", resp.Status, method, path, c.base)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding the answer to %s %s: %w", method, path, err)
	}
	return nil
}

// parseInterspersed parses flags that may come before or after the
// positional arguments ("show MAC --json" as well as "show --json MAC").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func runMachines(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, machinesUsage)
		return errors.New("machines: want a subcommand: list, show, logs, reinstall, power, cancel, forget or assign")
	}
	sub := args[0]
	fs := flag.NewFlagSet("machines "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, machinesUsage); fs.PrintDefaults() }
	api := apiFlags(fs)
	var asJSON, follow, powerCycle *bool
	var hostname *string
	switch sub {
	case "assign":
		hostname = fs.String("hostname", "", "the machine's hostname (default: none)")
	case "list", "show":
		asJSON = fs.Bool("json", false, "print JSON instead of a table")
	case "logs":
		follow = fs.Bool("f", false, "follow the log until the install ends (Ctrl-C stops)")
	case "reinstall":
		powerCycle = fs.Bool("power-cycle", false, "also set the next boot to PXE and power-cycle the machine through its BMC")
	case "power":
		asJSON = fs.Bool("json", false, "print JSON")
	case "cancel", "forget":
	case "-h", "--help", "help":
		fmt.Fprint(stdout, machinesUsage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return nil
	default:
		fmt.Fprint(stderr, machinesUsage)
		return fmt.Errorf("machines: unknown subcommand %q (want list, show, logs, reinstall, power, cancel, forget or assign)", sub)
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	var mac, profile, action string
	if sub == "assign" {
		if len(pos) != 2 {
			return fmt.Errorf("machines assign: want MAC PROFILE, got %d arguments", len(pos))
		}
		profile, pos = pos[1], pos[:1]
	}
	switch sub {
	case "list":
		if len(pos) != 0 {
			return fmt.Errorf("machines list: unexpected argument %q", pos[0])
		}
	case "power":
		if len(pos) != 2 {
			return fmt.Errorf("machines power: want MAC and one of on, off, cycle, status; got %d arguments", len(pos))
		}
		switch action = pos[1]; action {
		case admin.PowerOn, admin.PowerOff, admin.PowerCycle, admin.PowerStatus:
		default:
			return fmt.Errorf("machines power: action %q: want on, off, cycle or status", action)
		}
		pos = pos[:1]
		fallthrough
	default:
		if len(pos) != 1 {
			return fmt.Errorf("machines %s: want exactly one MAC, got %d arguments", sub, len(pos))
		}
		hw, err := macaddr.Parse(pos[0])
		if err != nil {
			return fmt.Errorf("machines %s: %w (write it like 52:54:00:12:34:56)", sub, err)
		}
		mac = hw.String()
	}
	c, err := api.client()
	if err != nil {
		return err
	}
	machinePath := "/api/v1/machines/" + url.PathEscape(mac)
	switch sub {
	case "list":
		var ms []admin.MachineView
		if err := c.do(ctx, http.MethodGet, "/api/v1/machines", &ms); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, ms)
		}
		return printMachines(stdout, ms)
	case "show":
		var m admin.MachineView
		if err := c.do(ctx, http.MethodGet, machinePath, &m); err != nil {
			return err
		}
		evs, err := machineEvents(ctx, c, machinePath)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, struct {
				admin.MachineView
				Events []admin.EventView `json:"events"`
			}{m, evs})
		}
		return printMachine(stdout, m, evs)
	case "logs":
		return machineLogs(ctx, c, stdout, machinePath, *follow)
	case "assign":
		var out struct {
			Status string `json:"status"`
		}
		in := map[string]string{"profile": profile, "hostname": *hostname}
		if err := c.doBody(ctx, http.MethodPost, machinePath+"/assign", in, &out); err != nil {
			return fmt.Errorf("machines assign %s: %w", mac, err)
		}
		fmt.Fprintf(stdout, "%s: %s\n", mac, out.Status)
	case "power":
		return machinePower(ctx, c, stdout, machinePath, mac, action, *asJSON)
	case "reinstall", "cancel", "forget":
		method := http.MethodPost
		path := machinePath + "/" + sub
		if sub == "forget" {
			method, path = http.MethodDelete, machinePath
		}
		if sub == "reinstall" && *powerCycle {
			return reinstallPowerCycle(ctx, c, stdout, path+"?power_cycle=1", mac)
		}
		var out struct {
			Status string `json:"status"`
		}
		if err := c.do(ctx, method, path, &out); err != nil {
			return fmt.Errorf("machines %s %s: %w", sub, mac, err)
		}
		fmt.Fprintf(stdout, "%s: %s\n", mac, out.Status)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// stateText is the state as an operator reads it: a pending reinstall,
// or a hold after a security event, matters as much as the state itself.
func stateText(m admin.MachineView) string {
	if m.Held {
		return m.State + " (held: security event; reinstall to arm)"
	}
	if m.Reinstall {
		return m.State + " (reinstall pending)"
	}
	return m.State
}

func printMachines(w io.Writer, ms []admin.MachineView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC\tHOSTNAME\tPROFILE\tSTATE\tPHASE\tIP\tUPDATED\tERROR")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.MAC, orDash(m.Hostname), orDash(m.Profile),
			stateText(m), orDash(m.Phase), orDash(m.IP), when(m.UpdatedAt), oneLine(m.Error))
	}
	return tw.Flush()
}

// oneLine keeps a multi-line error from breaking the table.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return orDash(s)
}

func printMachine(w io.Writer, m admin.MachineView, evs []admin.EventView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, kv := range [][2]string{
		{"MAC", m.MAC}, {"Hostname", orDash(m.Hostname)}, {"Profile", orDash(m.Profile)},
		{"State", stateText(m)}, {"Phase", orDash(m.Phase)}, {"IP", orDash(m.IP)},
		{"Updated", when(m.UpdatedAt)},
		{"Decided by", decided(m)},
		// Continuation lines of a long error stay in the value column.
		{"Error", strings.ReplaceAll(orDash(strings.TrimSpace(m.Error)), "\n", "\n\t")},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if m.Facts != nil {
		printFacts(w, m.Facts)
	}
	fmt.Fprintln(w, "\nEvents:")
	if len(evs) == 0 {
		fmt.Fprintln(w, "  (none)")
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TIME\tSTATE\tPHASE\tMESSAGE")
	for _, e := range evs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", when(e.Time), e.State, orDash(e.Phase), e.Message)
	}
	return tw.Flush()
}

// getAfter asks for one page of a machine's events or log lines after
// the cursor. The server caps how many one answer holds (a size the
// client does not know), so only an empty page says the client has
// caught up; next is the highest ID seen, and a page that does not move
// past the cursor is an error rather than an endless loop.
func getAfter[T any](ctx context.Context, c *apiClient, path string, after int64, id func(T) int64) (items []T, next int64, err error) {
	if err := c.do(ctx, http.MethodGet, path+"?after="+strconv.FormatInt(after, 10), &items); err != nil {
		return nil, after, err
	}
	next = after
	for _, it := range items {
		next = max(next, id(it))
	}
	if len(items) > 0 && next == after {
		return nil, after, fmt.Errorf("server answered %s?after=%d with nothing newer: is %s a pxe-anywhere server of this version?", path, after, c.base)
	}
	return items, next, nil
}

// machineEvents returns all of a machine's events, page by page.
func machineEvents(ctx context.Context, c *apiClient, machinePath string) ([]admin.EventView, error) {
	all := []admin.EventView{}
	var after int64
	for {
		evs, next, err := getAfter(ctx, c, machinePath+"/events", after, func(e admin.EventView) int64 { return e.ID })
		if err != nil {
			return nil, err
		}
		if len(evs) == 0 {
			return all, nil
		}
		all, after = append(all, evs...), next
	}
}

// machineLogs prints the install log page by page as it arrives, so a
// long log is never held in memory. Without follow it stops at the first
// empty page; with follow it keeps asking until the machine is installed
// or failed (then the log is complete) or ctx ends.
func machineLogs(ctx context.Context, c *apiClient, w io.Writer, machinePath string, follow bool) error {
	var after int64
	for {
		lines, next, err := getAfter(ctx, c, machinePath+"/log", after, func(l admin.LogView) int64 { return l.Seq })
		if err != nil {
			if follow && errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		for _, l := range lines {
			if l.Time.IsZero() {
				fmt.Fprintln(w, l.Line)
			} else {
				fmt.Fprintf(w, "%s %s\n", l.Time.Local().Format("15:04:05"), l.Line)
			}
		}
		after = next
		if len(lines) > 0 {
			continue
		}
		if !follow {
			return nil
		}
		var m admin.MachineView
		if err := c.do(ctx, http.MethodGet, machinePath, &m); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		// The engine writes its last line before it records the end
		// state, so an empty poll after a terminal state is the end.
		if (m.State == "installed" || m.State == "failed") && !m.Reinstall {
			fmt.Fprintf(w, "-- %s %s --\n", m.MAC, m.State)
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(logPollInterval):
		}
	}
}

// decided says what gave the machine its profile, and why.
func decided(m admin.MachineView) string {
	if m.DecidedBy == "" {
		return "-"
	}
	if m.DecidedWhy == "" {
		return m.DecidedBy
	}
	return m.DecidedBy + ": " + m.DecidedWhy
}

// printFacts prints what discovery learned of a machine, indented JSON
// as the API has it: the facts are what rules match on, by these names.
func printFacts(w io.Writer, f *admin.FactsView) {
	fmt.Fprintln(w, "\nFacts:")
	if f.CollectedAt != nil {
		fmt.Fprintf(w, "  collected %s from %s%s\n", when(*f.CollectedAt), orDash(f.Addr), map[bool]string{true: " (nixos-facter report kept)", false: ""}[f.Facter])
	}
	for _, part := range []struct {
		name string
		raw  json.RawMessage
	}{{"hardware", f.Hardware}, {"dhcp", f.DHCP}} {
		if len(part.raw) == 0 {
			continue
		}
		var b bytes.Buffer
		if json.Indent(&b, part.raw, "  ", "  ") == nil {
			fmt.Fprintf(w, "  %s: %s\n", part.name, b.String())
		}
	}
}

// machinePower asks the server to drive mac's BMC.
func machinePower(ctx context.Context, c *apiClient, stdout io.Writer, machinePath, mac, action string, asJSON bool) error {
	method, path := http.MethodPost, machinePath+"/power/"+action
	if action == admin.PowerStatus {
		method, path = http.MethodGet, machinePath+"/power"
	}
	var v admin.PowerView
	if err := c.do(ctx, method, path, &v); err != nil {
		return fmt.Errorf("machines power %s %s: %w", mac, action, err)
	}
	if asJSON {
		return printJSON(stdout, v)
	}
	fmt.Fprintf(stdout, "%s: %s\n", mac, v.Status)
	return nil
}

// reinstallPowerCycle arms a reinstall and power-cycles the machine.
// The server's warnings (a BMC that does not set the boot device) are
// printed; they do not fail the command.
func reinstallPowerCycle(ctx context.Context, c *apiClient, stdout io.Writer, path, mac string) error {
	var v admin.PowerView
	if err := c.do(ctx, http.MethodPost, path, &v); err != nil {
		return fmt.Errorf("machines reinstall --power-cycle %s: %w", mac, err)
	}
	for _, w := range v.Warnings {
		fmt.Fprintf(stdout, "%s: warning: %s\n", mac, w)
	}
	fmt.Fprintf(stdout, "%s: %s\n", mac, v.Status)
	return nil
}
