package httpboot

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/pxe-anywhere/pxe-anywhere/internal/httpserve"
	"github.com/pxe-anywhere/pxe-anywhere/internal/macaddr"
)

// script serves GET /boot/{mac}.ipxe.
func (s *Server) script(w http.ResponseWriter, r *http.Request) {
	file := chi.URLParam(r, "file")
	name, ok := strings.CutSuffix(file, ".ipxe")
	if !ok {
		http.NotFound(w, r)
		return
	}
	mac, err := macaddr.Parse(name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	noteMAC(r, mac.String())
	plan, err := s.booter.Boot(r.Context(), BootRequest{MAC: mac, RemoteAddr: remoteAddr(r), Arch: r.URL.Query().Get("arch")})
	if errors.Is(err, ErrForbidden) {
		http.Error(w, "refused: this address may not boot "+mac.String(), http.StatusForbidden)
		return
	}
	if errors.Is(err, ErrUnavailable) {
		// iPXE retries a failed script fetch; the text says why to
		// whoever reads the console, /healthz says it to the operator.
		w.Header().Set("Retry-After", "10")
		http.Error(w, "unavailable: the server's state store cannot be read or written now (database restarting? disk full?); try again later", http.StatusServiceUnavailable)
		return
	}
	if err != nil {
		s.cfg.Log.Error("choosing a boot script failed", "mac", mac.String(), "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	var body []byte
	switch plan.Action {
	case ActionIgnore:
		http.Error(w, "unknown machine", http.StatusNotFound)
		return
	case ActionLocal:
		body = LocalScript(mac)
	case ActionInstall:
		img, ok := s.cfg.Images()[plan.Image]
		if !ok {
			s.cfg.Log.Error("boot plan names an image that is not loaded", "mac", mac.String(), "image", plan.Image)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		body, err = InstallScript(s.cfg.BaseURL, img, plan)
		if err != nil {
			s.cfg.Log.Error("refusing to render a boot script", "mac", mac.String(), "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(body)
}

// LocalScript makes iPXE give the machine back to its firmware, which
// then boots the next device: the installed disk.
func LocalScript(mac net.HardwareAddr) []byte {
	return []byte(fmt.Sprintf("#!ipxe\n# %s: boot from the local disk (installed, or not ours to install)\necho pxe-anywhere: booting from local disk\nexit\n", mac))
}

// safeParam reports whether a kernel parameter can go into an iPXE
// script as one word: no spaces, quotes, or iPXE's ${…} expansion.
func safeParam(p string) bool {
	return p != "" && !strings.ContainsAny(p, " \t\r\n\"'`${}\\;#")
}

// InstallScript renders the script that boots img with the per-boot
// initrd and the token. The kernel gets one initrd= per named initrd
// because the EFI stub loads only the initrds the command line names
// (BIOS iPXE hands them all over anyway). One image initrd is called
// "initrd"; several are "initrd0", "initrd1", … in order.
func InstallScript(base string, img Image, plan BootPlan) ([]byte, error) {
	if !safeParam(plan.Token) || !safeParam(img.Name) || strings.ContainsAny(plan.Token+img.Name, "/?&%") {
		return nil, fmt.Errorf("image %q or its boot token has characters that cannot go into a URL", img.Name)
	}
	if len(img.Initrds) == 0 {
		return nil, fmt.Errorf("image %q has no initrd", img.Name)
	}
	// The token on the file URLs lets Fetched tell which boot is
	// downloading, for images that never call back.
	q := "?token=" + plan.Token
	type initrd struct{ name, url string }
	var initrds []initrd
	if len(img.Initrds) == 1 {
		initrds = append(initrds, initrd{"initrd", base + "/images/" + img.Name + "/initrd" + q})
	} else {
		for i := range img.Initrds {
			initrds = append(initrds, initrd{"initrd" + strconv.Itoa(i), base + "/images/" + img.Name + "/initrd/" + strconv.Itoa(i) + q})
		}
	}
	initrds = append(initrds, initrd{"extra", base + "/boot/" + plan.Token + "/extra.cpio.gz"})
	var args []string
	for _, in := range initrds {
		args = append(args, "initrd="+in.name)
	}
	if img.Init != "" {
		args = append(args, "init="+img.Init)
	}
	args = append(args, img.Params...)
	args = append(args, plan.Params...)
	args = append(args, "pxe_anywhere.token="+plan.Token, "pxe_anywhere.callback="+base+"/api/v1/callback")
	for _, a := range args {
		if !safeParam(a) {
			return nil, fmt.Errorf("kernel parameter %q cannot be put in an iPXE script: no spaces, quotes, newlines, or $ { } \\ ; # allowed", a)
		}
	}
	if !safeParam(base) {
		return nil, fmt.Errorf("base URL %q cannot be put in an iPXE script", base)
	}
	var b bytes.Buffer
	b.WriteString("#!ipxe\n# pxe-anywhere: install")
	if plan.Hostname != "" && safeParam(plan.Hostname) {
		b.WriteString(" " + plan.Hostname)
	}
	fmt.Fprintf(&b, " with image %s\n", img.Name)
	fmt.Fprintf(&b, "kernel %s/images/%s/kernel%s %s\n", base, img.Name, q, strings.Join(args, " "))
	for _, in := range initrds {
		fmt.Fprintf(&b, "initrd --name %s %s\n", in.name, in.url)
	}
	b.WriteString("boot\n")
	return b.Bytes(), nil
}

// imageFile serves a kernel or initrd with Range support; the body goes
// out through sendfile, since ServeContent copies from an *os.File.
func (s *Server) imageFile(w http.ResponseWriter, r *http.Request) {
	img, ok := s.cfg.Images()[chi.URLParam(r, "name")]
	if !ok {
		http.Error(w, "unknown image", http.StatusNotFound)
		return
	}
	path, what := img.Kernel, FetchedKernel
	if strings.HasSuffix(r.URL.Path, "/initrd") {
		if len(img.Initrds) != 1 {
			http.Error(w, "this image has several initrds (or none): ask for /initrd/N", http.StatusNotFound)
			return
		}
		path, what = img.Initrds[0], FetchedInitrd
	} else if i := chi.URLParam(r, "i"); i != "" {
		n, err := strconv.Atoi(i)
		if err != nil || n < 0 || n >= len(img.Initrds) {
			http.Error(w, "unknown initrd", http.StatusNotFound)
			return
		}
		path, what = img.Initrds[n], FetchedInitrd
	}
	f, err := os.Open(path)
	if err != nil {
		s.cfg.Log.Error("image file missing", "image", img.Name, "path", path, "err", err)
		http.Error(w, "image file missing", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "image file unreadable", http.StatusInternalServerError)
		return
	}
	// A request with a boot token is the boot's own download: it goes
	// only to the address the boot belongs to.
	if tok, ok := r.URL.Query()["token"]; ok {
		if len(tok) != 1 || tok[0] == "" || len(tok[0]) > 128 {
			http.Error(w, "bad token", http.StatusBadRequest)
			return
		}
		whole := r.Method == http.MethodGet && r.Header.Get("Range") == ""
		if err := s.booter.Fetched(r.Context(), Fetch{Token: tok[0], What: what, Remote: remoteAddr(r), Whole: whole}); err != nil {
			http.Error(w, "refused: not this address's boot", http.StatusForbidden)
			return
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	// Size and mtime change whenever an image is replaced, which is all
	// a cache needs; hashing gigabytes per request would not pay.
	w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano()))
	// An initrd of hundreds of MB on a slow link takes longer than any
	// fixed write timeout: the deadline moves as blocks go out.
	http.ServeContent(httpserve.ProgressWriter(w, s.cfg.WriteTimeout), r, filepath.Base(path), st.ModTime(), f)
}

// extraInitrd serves the per-boot initrd: once, to the machine.
func (s *Server) extraInitrd(w http.ResponseWriter, r *http.Request) {
	tok := chi.URLParam(r, "token")
	if len(tok) > 128 {
		http.Error(w, "unknown boot", http.StatusNotFound)
		return
	}
	files, err := s.booter.ExtraInitrd(r.Context(), tok, remoteAddr(r))
	switch {
	case errors.Is(err, ErrForbidden):
		http.Error(w, "refused", http.StatusForbidden)
		return
	case errors.Is(err, ErrUnknownToken):
		http.Error(w, "unknown boot", http.StatusNotFound)
		return
	case err != nil:
		s.cfg.Log.Error("extra initrd failed", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := WriteCPIO(zw, files); err != nil {
		s.cfg.Log.Error("writing extra initrd failed", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if err := zw.Close(); err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.Write(buf.Bytes())
}

// ipxeBinary serves iPXE itself to UEFI HTTP Boot clients, which fetch
// their first program over HTTP instead of TFTP.
func (s *Server) ipxeBinary(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "file")
	if s.cfg.IPXEDir == "" || name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(filepath.Join(s.cfg.IPXEDir, name))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/efi")
	http.ServeContent(httpserve.ProgressWriter(w, s.cfg.WriteTimeout), r, name, st.ModTime(), f)
}

// CallbackBody is what the installer posts when it is up.
type CallbackBody struct {
	Token   string `json:"token"`
	Address string `json:"address,omitempty"`
}

// ParseCallback decodes and checks a callback body. addr is the address
// the body names, or the zero Addr.
func ParseCallback(body io.Reader) (token string, addr netip.Addr, err error) {
	var cb CallbackBody
	dec := json.NewDecoder(io.LimitReader(body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cb); err != nil {
		return "", netip.Addr{}, fmt.Errorf("callback body: %w", err)
	}
	if cb.Token == "" || len(cb.Token) > 128 {
		return "", netip.Addr{}, errors.New("callback body: token missing or too long")
	}
	if cb.Address != "" {
		a, err := netip.ParseAddr(cb.Address)
		if err != nil {
			return "", netip.Addr{}, fmt.Errorf("callback body: address %q: %w", cb.Address, err)
		}
		addr = a.Unmap()
	}
	return cb.Token, addr, nil
}

// callback serves POST /api/v1/callback. The token names the boot; the
// address the request comes from is where the engine connects, so a
// body cannot send it elsewhere.
func (s *Server) callback(w http.ResponseWriter, r *http.Request) {
	tok, claimed, err := ParseCallback(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	remote := remoteAddr(r)
	if !remote.IsValid() {
		writeError(w, http.StatusBadRequest, errors.New("no remote address"))
		return
	}
	if err := s.booter.Callback(r.Context(), tok, remote, claimed); err != nil {
		if errors.Is(err, ErrForbidden) {
			writeError(w, http.StatusForbidden, errors.New("token refused"))
			return
		}
		s.cfg.Log.Error("callback failed", "err", err)
		writeError(w, http.StatusInternalServerError, errors.New("internal error"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
