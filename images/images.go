// Package images turns an installer image as the config names it (a
// nixos-images kexec tarball, a netboot build directory, or explicit
// files) into local kernel and initrd files plus the kernel command line
// to boot them with. Downloads are cached by checksum. It serves nothing;
// httpboot does.
package images

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/pxe-anywhere/pxe-anywhere/internal/privfile"
)

// Image is what a machine boots: files on this machine and the command
// line that goes with them.
type Image struct {
	Name    string
	Kind    string // kexec, netboot or files
	Kernel  string
	Initrds []string
	Init    string // the init= value; empty when the image sets none
	Params  []string
	// Restores tells whether the image's initrd copies ssh/authorized_keys
	// and ssh/ssh_host_* from an appended initrd (nixos-images'
	// restore-remote-access); only then do our per-boot keys arrive.
	Restores bool
}

// Source is one image as the config gives it; exactly one of
// KexecTarball, NetbootDir and Kernel is set.
type Source struct {
	Name, KexecTarball, SHA256, NetbootDir, Kernel string
	Initrd                                         []string
	Cmdline                                        string
}

// Cache keeps downloaded tarballs and their unpacked files in one dir.
type Cache struct {
	dir       string
	log       *slog.Logger
	client    *http.Client
	maxMember int64 // largest file unpacked from a tarball
}

// NewCache uses dir, created 0700 on first use.
func NewCache(dir string, log *slog.Logger) *Cache {
	return &Cache{dir: dir, log: log, client: http.DefaultClient, maxMember: maxMember}
}

// maxMember bounds one file unpacked from a tarball: an installer
// initrd is a few hundred MB, never tens of GB.
const maxMember = 4 << 30

// Prepare makes src bootable from local files.
func (c *Cache) Prepare(ctx context.Context, src Source, progress func(done, total int64)) (*Image, error) {
	switch {
	case src.KexecTarball != "":
		return c.kexec(ctx, src, progress)
	case src.NetbootDir != "":
		return netboot(src)
	case src.Kernel != "":
		return files(src)
	}
	return nil, errors.New("image names none of kexec_tarball, netboot_dir, kernel")
}

// Check tells, without downloading, unpacking or caching anything,
// whether Prepare could find src's local files: the kernel and initrds
// of explicit files, a netboot build, or a local kexec tarball (with
// its sha256, when one is given). A URL is not fetched, and a local
// tarball's contents are not unpacked; Prepare checks those.
func Check(src Source) error {
	switch {
	case src.KexecTarball != "":
		if IsURL(src.KexecTarball) {
			return nil
		}
		st, err := os.Stat(src.KexecTarball)
		if err != nil {
			return fmt.Errorf("kexec tarball: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("kexec tarball %s is not a file", src.KexecTarball)
		}
		if src.SHA256 == "" {
			return nil
		}
		got, err := fileSHA256(src.KexecTarball)
		if err != nil {
			return fmt.Errorf("kexec tarball: %w", err)
		}
		if want := strings.ToLower(src.SHA256); got != want {
			return fmt.Errorf("kexec tarball %s: sha256 is %s, the config says %s", src.KexecTarball, got, want)
		}
		return nil
	case src.NetbootDir != "":
		_, err := netboot(src)
		return err
	case src.Kernel != "":
		_, err := files(src)
		return err
	}
	return errors.New("image names none of kexec_tarball, netboot_dir, kernel")
}

// IsURL says whether an image source is downloaded rather than read
// from a local path: an http or https URL with a host, the scheme in any
// case, as URLs allow.
func IsURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Host != "" && (u.Scheme == "http" || u.Scheme == "https")
}

func (c *Cache) kexec(ctx context.Context, src Source, progress func(done, total int64)) (*Image, error) {
	path := src.KexecTarball
	sum := strings.ToLower(src.SHA256)
	if IsURL(path) {
		p, err := c.Fetch(ctx, path, sum, progress)
		if err != nil {
			return nil, err
		}
		path = p
	} else {
		got, err := fileSHA256(path)
		if err != nil {
			return nil, fmt.Errorf("kexec tarball: %w", err)
		}
		if sum != "" && got != sum {
			return nil, fmt.Errorf("kexec tarball %s: sha256 is %s, the config says %s", path, got, sum)
		}
		sum = got
	}
	dir := filepath.Join(c.dir, sum)
	if _, err := os.Stat(filepath.Join(dir, "run")); err != nil {
		if err := c.unpack(path, dir); err != nil {
			return nil, fmt.Errorf("kexec tarball %s: %w", src.KexecTarball, err)
		}
	}
	run, err := os.ReadFile(filepath.Join(dir, "run"))
	if err != nil {
		return nil, err
	}
	init, params, err := ParseRun(run)
	if err != nil {
		return nil, fmt.Errorf("kexec tarball %s: kexec/run: %w", src.KexecTarball, err)
	}
	return &Image{
		Name: src.Name, Kind: "kexec",
		Kernel: filepath.Join(dir, "bzImage"), Initrds: []string{filepath.Join(dir, "initrd")},
		Init: init, Params: params, Restores: true,
	}, nil
}

// unpack extracts kexec/bzImage, kexec/initrd and kexec/run into dir,
// through a temporary dir renamed into place, so a half-unpacked image is
// never used.
func (c *Cache) unpack(tarball, dir string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("not a gzip'd tarball: %w", err)
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(c.dir, ".unpack-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	want := map[string]bool{"kexec/bzImage": true, "kexec/initrd": true, "kexec/run": true}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tarball: %w", err)
		}
		// Nothing but the three wanted files is ever written, so no entry
		// could escape dir; a tarball that tries is still refused, since
		// it was not built by nixos-images.
		if !filepath.IsLocal(h.Name) || (h.Linkname != "" && !filepath.IsLocal(h.Linkname)) {
			return fmt.Errorf("tar entry %q (link %q) points outside the tarball: refusing it", h.Name, h.Linkname)
		}
		name := strings.TrimPrefix(filepath.ToSlash(filepath.Clean(h.Name)), "./")
		if !want[name] || h.Typeflag != tar.TypeReg {
			continue // only the three files we boot are taken; nothing else is written
		}
		if h.Size > c.maxMember {
			return fmt.Errorf("%s is %d bytes, more than an installer image holds (%d)", name, h.Size, c.maxMember)
		}
		out, err := os.OpenFile(filepath.Join(tmp, filepath.Base(name)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, io.LimitReader(tr, c.maxMember)); err != nil {
			out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
		delete(want, name)
	}
	if len(want) > 0 {
		var missing []string
		for n := range want {
			missing = append(missing, n)
		}
		return fmt.Errorf("not a nixos-images kexec tarball: missing %s", strings.Join(missing, ", "))
	}
	_ = os.RemoveAll(dir)
	return os.Rename(tmp, dir)
}

// Fetch downloads url once into the cache and returns its path. The
// file is named by its checksum, verified before it is kept, and
// verified again when found in the cache. With sum empty, the checksum of
// the URL's last download picks the cached file; it does not bind a new
// download, since no config pinned the file.
func (c *Cache) Fetch(ctx context.Context, url, sum string, progress func(done, total int64)) (string, error) {
	sum = strings.ToLower(sum)
	if sum != "" && len(sum) != 64 {
		return "", fmt.Errorf("%s: sha256 %q is not 64 hex digits", url, sum)
	}
	index := filepath.Join(c.dir, "url-"+sha256Hex([]byte(url)))
	want, remembered := sum, ""
	if sum == "" {
		// No checksum given (install --kexec-download-locally, image
		// fetch without --sha256): the cached copy of the first download
		// is reused, verified against the checksum remembered for the URL.
		remembered = c.readIndex(index, url)
		want = remembered
	}
	if want != "" {
		path := filepath.Join(c.dir, "sha256-"+want+".tar.gz")
		if got, err := fileSHA256(path); err == nil {
			if got == want {
				return path, nil
			}
			c.log.Warn("cached image is corrupt; downloading again", "path", path)
		}
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("download %s: %s", url, resp.Status)
	}
	tmp, err := os.CreateTemp(c.dir, ".download-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	pr := NewProgressReader(resp.Body, resp.ContentLength, progress)
	if _, err := io.Copy(io.MultiWriter(tmp, h), pr); err != nil {
		tmp.Close()
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if sum != "" && got != sum {
		return "", fmt.Errorf("download %s: sha256 is %s, the config says %s", url, got, sum)
	}
	if remembered != "" && got != remembered {
		// The URL serves another file now (nixos-images' rolling
		// releases), and the copy of the old one is gone from the cache.
		c.log.Warn("image at URL changed since it was last downloaded; using the new one",
			"url", url, "old_sha256", remembered, "new_sha256", got)
	}
	path := filepath.Join(c.dir, "sha256-"+got+".tar.gz")
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	if err := privfile.Write(index, []byte(got+"\n")); err != nil {
		return "", err
	}
	c.log.Info("image downloaded", "url", url, "path", path, "sha256", got)
	return path, nil
}

// readIndex returns the checksum remembered for url, or "" when there is
// none or the index file is damaged (then the next download rewrites it).
func (c *Cache) readIndex(index, url string) string {
	b, err := os.ReadFile(index)
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if _, err := hex.DecodeString(s); err != nil || len(s) != 64 {
		c.log.Warn("ignoring a damaged checksum index", "url", url, "path", index)
		return ""
	}
	return strings.ToLower(s)
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// ProgressReader counts the bytes read through it and reports them,
// with the expected total (0 or less: unknown), once per MiB and at the
// end, so that every report may be printed.
type ProgressReader struct {
	r                     io.Reader
	total, done, reported int64
	report                func(done, total int64)
}

// NewProgressReader reads from r and reports to report, which may be nil.
func NewProgressReader(r io.Reader, total int64, report func(done, total int64)) *ProgressReader {
	return &ProgressReader{r: r, total: total, report: report}
}

func (p *ProgressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if p.report != nil && (p.done-p.reported >= 1<<20 || err == io.EOF && p.done != p.reported) {
		p.reported = p.done
		p.report(p.done, p.total)
	}
	return n, err
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

var (
	// Newer kexec/run scripts: init="/nix/store/…/init" and
	// kernelParams="…" as shell assignments.
	initVar   = regexp.MustCompile(`(?m)^\s*init="([^"]*)"`)
	paramsVar = regexp.MustCompile(`(?m)^\s*kernelParams="([^"]*)"`)
	// Older ones: --command-line "init=/nix/store/…/init params…".
	cmdlineArg = regexp.MustCompile(`--command-line\s+"init=([^"\s]+)\s*([^"]*)"`)
	// What init may be: it goes on a kernel command line unquoted.
	storePath = regexp.MustCompile(`^/nix/store/[^\s"'$\x60\\]+$`)
)

// ParseRun finds the init path and kernel parameters in a nixos-images
// kexec/run script, in either of the forms it has had.
func ParseRun(run []byte) (init string, params []string, err error) {
	if m := initVar.FindSubmatch(run); m != nil {
		init = string(m[1])
		if p := paramsVar.FindSubmatch(run); p != nil {
			params = strings.Fields(string(p[1]))
		}
	} else if m := cmdlineArg.FindSubmatch(run); m != nil {
		init = string(m[1])
		params = strings.Fields(string(m[2]))
	}
	if init == "" || strings.HasPrefix(init, "@") {
		return "", nil, errors.New(`found neither init="…" nor --command-line "init=…": not a nixos-images kexec run script`)
	}
	if !storePath.MatchString(init) {
		return "", nil, fmt.Errorf("init %q is not a Nix store path", init)
	}
	return init, params, nil
}

// netboot reads a netboot build: bzImage, initrd, init (a symlink to or
// a file naming the init path) and kernel-params, as nixos-images'
// netboot-installer-nixos builds it. nixos-images' published plain
// netboot files (bzImage-<arch>, initrd-<arch>) are recognised too, but
// they do not restore injected keys.
func netboot(src Source) (*Image, error) {
	dir := src.NetbootDir
	img := &Image{Name: src.Name, Kind: "netboot"}
	if plain, _ := filepath.Glob(filepath.Join(dir, "bzImage-*")); len(plain) > 0 {
		arch := strings.TrimPrefix(filepath.Base(plain[0]), "bzImage-")
		img.Kernel = plain[0]
		img.Initrds = []string{filepath.Join(dir, "initrd-"+arch)}
		script, err := os.ReadFile(filepath.Join(dir, "netboot-"+arch+".ipxe"))
		if err != nil {
			return nil, fmt.Errorf("netboot dir %s: %w", dir, err)
		}
		for _, line := range strings.Split(string(script), "\n") {
			f := strings.Fields(line)
			if len(f) > 2 && f[0] == "kernel" {
				for _, p := range f[2:] {
					if v, ok := strings.CutPrefix(p, "init="); ok {
						img.Init = v
					} else if !strings.HasPrefix(p, "initrd=") {
						img.Params = append(img.Params, p)
					}
				}
			}
		}
		return img, checkFiles(img)
	}
	img.Kernel = filepath.Join(dir, "bzImage")
	img.Initrds = []string{filepath.Join(dir, "initrd")}
	if target, err := initTarget(filepath.Join(dir, "init")); err == nil {
		img.Init = target
	} else if b, err := os.ReadFile(filepath.Join(dir, "init")); err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "/nix/store/") {
		img.Init = strings.TrimSpace(string(b))
	} else {
		return nil, fmt.Errorf("netboot dir %s: no init (a symlink to the system's init)", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kernel-params")); err == nil {
		img.Params = strings.Fields(string(b))
	}
	img.Restores = true
	return img, checkFiles(img)
}

// initTarget follows the netboot build's init symlink to the one inside
// the system's toplevel. The build is a symlinkJoin, so its init points
// at a helper store path that links on to <toplevel>/init; only the
// latter is inside the image, so the kernel must be given that one. A
// toplevel is recognised by its activate script.
func initTarget(link string) (string, error) {
	target, err := os.Readlink(link)
	if err != nil {
		return "", err
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(link), target)
	}
	for range 8 {
		if _, err := os.Stat(filepath.Join(filepath.Dir(target), "activate")); err == nil {
			return target, nil
		}
		next, err := os.Readlink(target)
		if err != nil {
			// The end of the chain, or a store that is not on this
			// machine: the last path found is the best there is.
			return target, nil
		}
		if !filepath.IsAbs(next) {
			next = filepath.Join(filepath.Dir(target), next)
		}
		target = next
	}
	return "", fmt.Errorf("%s: init symlink chain too long", link)
}

// files takes explicit kernel, initrds and command line; whether such
// an image restores injected keys cannot be known.
func files(src Source) (*Image, error) {
	img := &Image{Name: src.Name, Kind: "files", Kernel: src.Kernel, Initrds: src.Initrd}
	for _, p := range strings.Fields(src.Cmdline) {
		if v, ok := strings.CutPrefix(p, "init="); ok {
			img.Init = v
		} else {
			img.Params = append(img.Params, p)
		}
	}
	return img, checkFiles(img)
}

// checkFiles checks that an image's kernel and initrds are files. The
// error names the file, not the image: the caller, which knows the
// image by its config name, says that once.
func checkFiles(img *Image) error {
	for _, p := range append([]string{img.Kernel}, img.Initrds...) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a file", p)
		}
	}
	return nil
}
