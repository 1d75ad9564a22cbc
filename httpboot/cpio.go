package httpboot

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// WriteCPIO writes files as a newc ("070701") cpio archive, the format
// the Linux kernel unpacks from an initrd. Entries are written with
// their parent directories first and owned by root; the archive ends
// with the TRAILER!!! entry. No library is used: newc is 110 bytes of
// ASCII hex per header, and the few cpio packages for Go are unkept.
func WriteCPIO(w io.Writer, files []ExtraFile) error {
	// Explicit entries first, so that a directory listed after its
	// files still keeps its own mode (ssh/ must stay 0700).
	seen := map[string]bool{}
	var entries []ExtraFile
	for _, f := range files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" {
			return fmt.Errorf("cpio: bad path %q: it names the archive root", f.Path)
		}
		if seen[p] {
			return fmt.Errorf("cpio: path %q given twice", f.Path)
		}
		seen[p] = true
		f.Path = p
		entries = append(entries, f)
	}
	for _, f := range entries {
		for dir := path.Dir(f.Path); dir != "."; dir = path.Dir(dir) {
			if !seen[dir] {
				seen[dir] = true
				entries = append(entries, ExtraFile{Path: dir, Mode: fs.ModeDir | 0o755})
			}
		}
	}
	// Parents sort before children, so the kernel never meets a file
	// whose directory does not exist yet.
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	ino := 1
	for _, e := range entries {
		mode := uint32(e.Mode.Perm())
		data := e.Data
		if e.Mode.IsDir() {
			mode |= 0o040000
			data = nil
		} else {
			mode |= 0o100000
		}
		if err := writeEntry(w, ino, mode, e.Path, data); err != nil {
			return err
		}
		ino++
	}
	return writeEntry(w, 0, 0, "TRAILER!!!", nil)
}

func writeEntry(w io.Writer, ino int, mode uint32, name string, data []byte) error {
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	buf := append([]byte(hdr), name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	buf = append(buf, data...)
	buf = append(buf, make([]byte, pad4(len(data)))...)
	_, err := w.Write(buf)
	return err
}

func pad4(n int) int { return (4 - n%4) % 4 }

// RemoteAccessFiles is the per-boot initrd that nixos-images' installer
// images restore at boot (nix/restore-remote-access.nix, and the
// postMountCommands of older kexec images):
//   - ssh/authorized_keys: our install key, copied to /root/.ssh;
//   - ssh/ssh_host_ed25519_key(.pub): the host key made for this boot,
//     copied to /etc/ssh; the copy is unguarded, so it must exist;
//   - networkd/ and iproute2/*.json: the newer unit copies both dirs
//     unguarded; empty lists restore no static network and leave DHCP on;
//   - *.json at the top: older images copy these unguarded and start
//     their network-restore unit when all four exist.
func RemoteAccessFiles(authorizedKeys, hostKeyPriv, hostKeyPub []byte) []ExtraFile {
	empty := []byte("[]\n")
	return []ExtraFile{
		{Path: "ssh", Mode: fs.ModeDir | 0o700},
		{Path: "ssh/authorized_keys", Mode: 0o600, Data: authorizedKeys},
		{Path: "ssh/ssh_host_ed25519_key", Mode: 0o600, Data: hostKeyPriv},
		{Path: "ssh/ssh_host_ed25519_key.pub", Mode: 0o644, Data: hostKeyPub},
		{Path: "networkd", Mode: fs.ModeDir | 0o755},
		{Path: "iproute2", Mode: fs.ModeDir | 0o755},
		{Path: "iproute2/addrs.json", Mode: 0o644, Data: empty},
		{Path: "iproute2/routes-v4.json", Mode: 0o644, Data: empty},
		{Path: "iproute2/routes-v6.json", Mode: 0o644, Data: empty},
		{Path: "addrs-v4.json", Mode: 0o644, Data: empty},
		{Path: "addrs-v6.json", Mode: 0o644, Data: empty},
		{Path: "routes-v4.json", Mode: 0o644, Data: empty},
		{Path: "routes-v6.json", Mode: 0o644, Data: empty},
	}
}
