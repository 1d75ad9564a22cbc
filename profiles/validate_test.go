package profiles

import (
	"errors"
	"strings"
	"testing"
)

// base is a valid config of 7 lines that the cases below extend, so the
// line numbers in their expected errors can be counted by eye.
const base = `images:
  nixos:
    kexec_tarball: /srv/k.tar.gz
profiles:
  web:
    image: nixos
    flake: ".#web"
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // every error, in order
	}{
		{
			name: "unknown field with suggestion",
			in:   "images:\n  nixos:\n    kexec_tarball: /k\nprofiles:\n  web:\n    image: nixos\n    flak: \".#web\"\n",
			want: []string{
				`pxe.yaml:5: profiles.web: neither flake nor store_paths set (set flake: "github:you/infra#host" or store_paths: {disko: ..., system: ...})`,
				`pxe.yaml:7: profiles.web: unknown field "flak" (did you mean "flake"?)`,
			},
		},
		{
			name: "unknown top-level field without close match",
			in:   base + "zzzzzzzz: 1\n",
			want: []string{`pxe.yaml:8: unknown field "zzzzzzzz" (known fields: server, dhcp, images, profiles, machines, rules)`},
		},
		{
			name: "duplicate key",
			in:   base + "    image: nixos\n",
			want: []string{`pxe.yaml:8: profiles.web: duplicate field "image" (first at line 6)`},
		},
		{
			name: "bad MAC and missing profile",
			in:   base + "machines:\n  - mac: \"52:54:00:12:34\"\n",
			want: []string{
				`pxe.yaml:9: machines[0].mac: bad MAC "52:54:00:12:34" (an Ethernet address like "52:54:00:12:34:01")`,
				`pxe.yaml:9: machines[0]: missing profile (name one of the profiles: entries)`,
			},
		},
		{
			name: "missing mac, long MAC refused",
			in:   base + "machines:\n  - profile: web\n  - mac: 00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01\n    profile: web\n",
			want: []string{
				`pxe.yaml:9: machines[0]: missing mac (every machine is found by its MAC)`,
				`pxe.yaml:10: machines[1].mac: bad MAC "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01" (an Ethernet address like "52:54:00:12:34:01")`,
			},
		},
		{
			name: "duplicate MAC hostname and reservation",
			in: base + "machines:\n" +
				"  - {mac: \"52:54:00:12:34:01\", profile: web, hostname: a, ip: 10.0.0.5}\n" +
				"  - {mac: 52-54-00-12-34-01, profile: web, hostname: A, ip: 10.0.0.5}\n",
			want: []string{
				`pxe.yaml:10: machines[1].mac: duplicate MAC 52:54:00:12:34:01 (first at machines[0], line 9)`,
				`pxe.yaml:10: machines[1].hostname: duplicate hostname "A" (first at machines[0], line 9)`,
				`pxe.yaml:10: machines[1].ip: duplicate reservation 10.0.0.5 (first at machines[0], line 9)`,
			},
		},
		{
			name: "missing profile and image with suggestions",
			in:   "images:\n  nixos:\n    kexec_tarball: /k\nprofiles:\n  web:\n    image: nixs\n    flake: \".#web\"\nmachines:\n  - {mac: \"52:54:00:12:34:01\", profile: wbe}\n",
			want: []string{
				`pxe.yaml:6: profiles.web.image: unknown image "nixs" (did you mean "nixos"?)`,
				`pxe.yaml:9: machines[0].profile: unknown profile "wbe" (did you mean "web"?)`,
			},
		},
		{
			name: "both flake and store paths",
			in:   base + "    store_paths: {disko: /nix/store/a-disko, system: /nix/store/b-sys}\n",
			want: []string{`pxe.yaml:5: profiles.web: both flake and store_paths set (a profile installs either a flake or prebuilt store_paths)`},
		},
		{
			name: "flake without name",
			in:   "images:\n  nixos:\n    kexec_tarball: /k\nprofiles:\n  web:\n    image: nixos\n    flake: github:example/infra\n",
			want: []string{`pxe.yaml:7: profiles.web.flake: flake "github:example/infra" has no #name (name the configuration: "github:example/infra#web")`},
		},
		{
			name: "store paths outside the store and missing",
			in:   "images:\n  nixos:\n    kexec_tarball: /k\nprofiles:\n  web:\n    image: nixos\n    store_paths:\n      disko: /nix/store/../etc/passwd\n",
			want: []string{
				`pxe.yaml:7: profiles.web.store_paths: missing system (store_paths needs both disko and system)`,
				`pxe.yaml:8: profiles.web.store_paths.disko: "/nix/store/../etc/passwd" is not under /nix/store (a path like /nix/store/<hash>-name)`,
			},
		},
		{
			name: "image kinds",
			in:   "images:\n  empty: {cmdline: x}\n  two: {netboot_dir: /n, kernel: /k}\n  kx: {kexec_tarball: /k, cmdline: x}\n  ird: {netboot_dir: /n, initrd: [/i]}\n",
			want: []string{
				`pxe.yaml:2: images.empty: image has no boot files (set one of kexec_tarball, netboot_dir or kernel)`,
				`pxe.yaml:3: images.two: image names more than one kind of boot files (set only one of kexec_tarball, netboot_dir or kernel)`,
				`pxe.yaml:4: images.kx.cmdline: cmdline with kexec_tarball (the kexec tarball brings its own command line; use the profile's kernel_params)`,
				`pxe.yaml:5: images.ird.initrd: initrd without kernel (initrd goes with kernel; netboot_dir and kexec_tarball bring their own)`,
			},
		},
		{
			name: "URL tarball without or with bad sha256",
			in:   "images:\n  a:\n    kexec_tarball: HTTPS://example.org/k.tar.gz\n  b:\n    kexec_tarball: https://example.org/k.tar.gz\n    sha256: abc\n  c:\n    kexec_tarball: ftp://example.org/k\n    sha256: \"" + strings.Repeat("0", 64) + "\"\n  d:\n    netboot_dir: /n\n    sha256: \"" + strings.Repeat("a", 64) + "\"\n  e:\n    kexec_tarball: \"http://\"\n    sha256: \"" + strings.Repeat("0", 64) + "\"\n",
			want: []string{
				`pxe.yaml:3: images.a.kexec_tarball: URL tarball without sha256 (add sha256: <64 hex digits> so a tampered download is refused)`,
				`pxe.yaml:6: images.b.sha256: bad sha256 "abc" (64 hex digits, as sha256sum prints)`,
				`pxe.yaml:8: images.c.kexec_tarball: bad URL "ftp://example.org/k" (use an http:// or https:// URL or a local path)`,
				`pxe.yaml:12: images.d.sha256: sha256 without kexec_tarball (sha256 only checks a kexec_tarball)`,
				`pxe.yaml:14: images.e.kexec_tarball: bad URL "http://" (use an http:// or https:// URL or a local path)`,
			},
		},
		{
			name: "authoritative without subnet and range",
			in:   "dhcp:\n  mode: authoritative\n",
			want: []string{
				`pxe.yaml:2: dhcp: authoritative mode needs subnet (add subnet: 10.77.0.0/24 (the network the machines are on))`,
				`pxe.yaml:2: dhcp: authoritative mode needs range (add range: [first, last] of the addresses to lease)`,
			},
		},
		{
			name: "range and router outside subnet, start after end",
			in:   "dhcp:\n  mode: authoritative\n  subnet: 10.77.0.0/24\n  range: [10.77.1.200, 10.77.0.100]\n  router: 10.0.0.1\n",
			want: []string{
				`pxe.yaml:4: dhcp.range: range start 10.77.1.200 is after end 10.77.0.100 (write the lower address first)`,
				`pxe.yaml:4: dhcp.range: range 10.77.1.200-10.77.0.100 is outside the subnet (both ends must be in dhcp.subnet 10.77.0.0/24)`,
				`pxe.yaml:5: dhcp.router: router 10.0.0.1 is outside the subnet (the router must be reachable on dhcp.subnet 10.77.0.0/24)`,
			},
		},
		{
			name: "bad subnet, range shape, dns",
			in:   "dhcp:\n  subnet: 10.77.0.1/24\n  range: [10.77.0.1]\n  dns: [\"::1\"]\n  mode: proxi\n",
			want: []string{
				`pxe.yaml:2: dhcp.subnet: subnet "10.77.0.1/24" has host bits set (did you mean "10.77.0.0/24"?)`,
				`pxe.yaml:3: dhcp.range: must be a list of two addresses (write [first, last], e.g. [10.77.0.100, 10.77.0.200])`,
				`pxe.yaml:4: dhcp.dns[0]: bad address "::1" (an IPv4 address like 10.77.0.1)`,
				`pxe.yaml:5: dhcp.mode: bad value "proxi" (did you mean "proxy"?)`,
			},
		},
		{
			name: "reservation outside subnet and inside range",
			in: base + "dhcp:\n  mode: authoritative\n  subnet: 10.77.0.0/24\n  range: [10.77.0.100, 10.77.0.200]\n" +
				"machines:\n  - {mac: \"52:54:00:12:34:01\", profile: web, ip: 10.78.0.1}\n  - {mac: \"52:54:00:12:34:02\", profile: web, ip: 10.77.0.150}\n",
			want: []string{
				`pxe.yaml:13: machines[0].ip: reservation 10.78.0.1 is outside the subnet (pick an address in dhcp.subnet 10.77.0.0/24)`,
				`pxe.yaml:14: machines[1].ip: reservation 10.77.0.150 is inside the dynamic range (pick one outside dhcp.range 10.77.0.100-10.77.0.200, or the lease pool may hand it out)`,
			},
		},
		{
			name: "bad durations",
			in:   "dhcp:\n  lease_time: 1 hour\n",
			want: []string{`pxe.yaml:2: dhcp.lease_time: bad duration "1 hour" (a duration of at least 1m, like "1h" or "30m")`},
		},
		{
			name: "bad relays",
			in:   "dhcp:\n  relays: [10.88.0.2, 10.88.0.1/24, fe80::1, relay1, ~, 0.0.0.0/0, 0.0.0.0, 224.0.0.1, 255.255.255.255]\n",
			want: []string{
				`pxe.yaml:2: dhcp.relays[1]: prefix "10.88.0.1/24" has host bits set (did you mean "10.88.0.0/24"?)`,
				`pxe.yaml:2: dhcp.relays[2]: bad relay address "fe80::1" (an IPv4 address like 10.88.0.2 or a prefix like 10.88.0.0/24)`,
				`pxe.yaml:2: dhcp.relays[3]: bad relay address "relay1" (an IPv4 address like 10.88.0.2 or a prefix like 10.88.0.0/24)`,
				`pxe.yaml:2: dhcp.relays[4]: empty relay entry (an IPv4 address like 10.88.0.2 or a prefix like 10.88.0.0/24)`,
				`pxe.yaml:2: dhcp.relays[5]: "0.0.0.0/0" is not a relay's address (list the unicast addresses the relays send from; a client without an address sends from 0.0.0.0)`,
				`pxe.yaml:2: dhcp.relays[6]: "0.0.0.0" is not a relay's address (list the unicast addresses the relays send from; a client without an address sends from 0.0.0.0)`,
				`pxe.yaml:2: dhcp.relays[7]: "224.0.0.1" is not a relay's address (list the unicast addresses the relays send from; a client without an address sends from 0.0.0.0)`,
				`pxe.yaml:2: dhcp.relays[8]: "255.255.255.255" is not a relay's address (list the unicast addresses the relays send from; a client without an address sends from 0.0.0.0)`,
			},
		},
		{
			name: "relays not a list",
			in:   "dhcp:\n  relays: 10.88.0.2\n",
			want: []string{`pxe.yaml:2: dhcp.relays: must be a list, got the value "10.88.0.2" (write [10.88.0.2, 10.90.0.0/24])`},
		},
		{
			name: "short lease",
			in:   "dhcp:\n  lease_time: 5s\n",
			want: []string{`pxe.yaml:2: dhcp.lease_time: bad duration "5s" (a duration of at least 1m, like "1h" or "30m")`},
		},
		{
			name: "bad enums and numbers",
			in:   base + "    after_install: shutdown\n    retries: -1\n    ssh: {port: 70000, user: \"\"}\nserver:\n  max_installs: 0\n  unknown_machines: local_boot\n",
			want: []string{
				`pxe.yaml:8: profiles.web.after_install: bad value "shutdown" (one of reboot, poweroff, stay)`,
				`pxe.yaml:9: profiles.web.retries: bad number "-1" (a whole number from 0 to 100)`,
				`pxe.yaml:10: profiles.web.ssh.user: bad user "" (a login name like root)`,
				`pxe.yaml:10: profiles.web.ssh.port: bad number "70000" (a whole number from 1 to 65535)`,
				`pxe.yaml:12: server.max_installs: bad number "0" (a whole number from 1 to 1024)`,
				`pxe.yaml:13: server.unknown_machines: bad value "local_boot" (did you mean "local-boot"?)`,
			},
		},
		{
			name: "router advertisements",
			in:   "server:\n  router_advertisements: no\n",
			want: []string{`pxe.yaml:2: server.router_advertisements: bad value "no" (one of auto, off)`},
		},
		{
			name: "limits (state)",
			in:   "server:\n  keep_boots: 0\n  keep_events: 5\n  max_unknown_macs: many\n  max_discovered: -1\n",
			want: []string{
				`pxe.yaml:2: server.keep_boots: bad number "0" (a whole number from 1 to 100000)`,
				`pxe.yaml:3: server.keep_events: bad number "5" (a whole number from 10 to 10000000)`,
				`pxe.yaml:4: server.max_unknown_macs: bad number "many" (a whole number from 1 to 1048576)`,
				`pxe.yaml:5: server.max_discovered: bad number "-1" (a whole number from 1 to 1048576)`,
			},
		},
		{
			name: "engine limits",
			in:   base + "    timeouts: {disko: 45, instal: 1h, reboot: 0.5s}\n    ssh: {keepalive_interval: 0s, keepalive_count_max: 0}\nserver:\n  install_log_tail: 5\n",
			want: []string{
				`pxe.yaml:8: profiles.web.timeouts.disko: bad duration "45" (a duration from 1s to 168h0m0s, like "45m" or "2h")`,
				`pxe.yaml:8: profiles.web.timeouts.instal: unknown phase "instal" (did you mean "install"?)`,
				`pxe.yaml:8: profiles.web.timeouts.reboot: bad duration "0.5s" (a duration from 1s to 168h0m0s, like "45m" or "2h")`,
				`pxe.yaml:9: profiles.web.ssh.keepalive_interval: bad duration "0s" (a duration from 1s to 1h0m0s, like "45m" or "2h")`,
				`pxe.yaml:9: profiles.web.ssh.keepalive_count_max: bad number "0" (a whole number from 1 to 1000)`,
				`pxe.yaml:11: server.install_log_tail: bad number "5" (a whole number from 10 to 1000000)`,
			},
		},
		{
			name: "unknown and repeated phases",
			in:   base + "    phases: [disko, instal, disko, format]\n",
			want: []string{
				`pxe.yaml:8: profiles.web.phases: unknown phase "instal" (did you mean "install"?)`,
				`pxe.yaml:8: profiles.web.phases: phase "disko" repeated (list each phase once)`,
				`pxe.yaml:8: profiles.web.phases: unknown phase "format" (valid: kexec, disko, install, reboot)`,
			},
		},
		{
			name: "chown parse and path",
			in:   base + "    chown:\n      /home/a: \"1000\"\n      /home/b: \"x:1\"\n      rel: \"1:1\"\n      /home/c: \"1:-1\"\n      /home/d: [1]\n",
			want: []string{
				`pxe.yaml:9: profiles.web.chown./home/a: bad owner "1000" (write "UID:GID" with numbers, like "1000:100")`,
				`pxe.yaml:10: profiles.web.chown./home/b: bad owner "x:1" (write "UID:GID" with numbers, like "1000:100")`,
				`pxe.yaml:11: profiles.web.chown.rel: chown path "rel" is not absolute (a path in the installed system, like /home/alice)`,
				`pxe.yaml:12: profiles.web.chown./home/c: bad owner "1:-1" (write "UID:GID" with numbers, like "1000:100")`,
				`pxe.yaml:13: profiles.web.chown./home/d: must be a single value, got a list`,
			},
		},
		{
			name: "disk key remote must be absolute",
			in:   base + "    disk_encryption_keys: {tmp/disk.key: /k, /tmp/x.key: }\n",
			want: []string{
				`pxe.yaml:8: profiles.web.disk_encryption_keys.tmp/disk.key: remote key path "tmp/disk.key" is not absolute (the path on the installer, like /tmp/disk.key)`,
				`pxe.yaml:8: profiles.web.disk_encryption_keys./tmp/x.key: missing local key file (write remote: local-path)`,
			},
		},
		{
			name: "discover needs discover_image",
			in:   base + "server:\n  unknown_machines: discover\n",
			want: []string{`pxe.yaml:9: server: unknown_machines: discover needs discover_image (set discover_image to one of the images: entries)`},
		},
		{
			name: "discover_image must exist",
			in:   base + "server:\n  unknown_machines: discover\n  discover_image: nixoss\n",
			want: []string{`pxe.yaml:10: server.discover_image: unknown image "nixoss" (did you mean "nixos"?)`},
		},
		{
			name: "wrong shapes",
			in:   "server: [a]\ndhcp: 3\nimages: [x]\nprofiles: {web: [1]}\nmachines: {a: b}\n",
			want: []string{
				`pxe.yaml:1: server: must be a mapping, got a list (write key: value pairs)`,
				`pxe.yaml:2: dhcp: must be a mapping, got the value "3" (write key: value pairs)`,
				`pxe.yaml:3: images: must be a mapping, got a list (write key: value pairs)`,
				`pxe.yaml:4: profiles.web: must be a mapping, got a list (write key: value pairs)`,
				`pxe.yaml:4: profiles.web: missing image (name one of the images: entries)`,
				`pxe.yaml:4: profiles.web: neither flake nor store_paths set (set flake: "github:you/infra#host" or store_paths: {disko: ..., system: ...})`,
				`pxe.yaml:5: machines: must be a list, got a mapping (write a list of - mac: ... entries)`,
			},
		},
		{
			name: "bad names, listen, boot file, interface, hostname",
			in: base + "  bad/name: {netboot_dir: /n}\nserver:\n  http_listen: 8080\n  interfaces: [\"a b\"]\n  advertise: nowhere\n" +
				"dhcp:\n  efi_x64_boot: ../../etc/shadow\n  domain: -lab\nmachines:\n  - {mac: \"52:54:00:12:34:01\", profile: web, hostname: web_01}\n",
			want: []string{
				`pxe.yaml:8: profiles.bad/name: bad name "bad/name" (use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63)`,
				`pxe.yaml:10: server.http_listen: bad listen address "8080" (host:port like ":8080" or "10.77.0.1:8080")`,
				`pxe.yaml:11: server.interfaces[0]: bad interface name "a b" (a Linux interface name like br0)`,
				`pxe.yaml:12: server.advertise: bad address "nowhere" (an IPv4 address like 10.77.0.1)`,
				`pxe.yaml:14: dhcp.efi_x64_boot: bad boot file "../../etc/shadow" (a file name relative to server.ipxe_dir, like ipxe.efi or snponly.efi)`,
				`pxe.yaml:15: dhcp.domain: bad domain "-lab" (a DNS name like lab or example.org)`,
				`pxe.yaml:17: machines[0].hostname: bad hostname "web_01" (letters, digits and '-', dot-separated labels of at most 63)`,
			},
		},
		{
			name: "tls key without its certificate",
			in:   "server:\n  admin_listen: \"10.99.0.1\"\n  tls_key: /k.pem\n",
			want: []string{
				`pxe.yaml:2: server.admin_listen: bad listen address "10.99.0.1" (host:port like ":8080" or "10.77.0.1:8080")`,
				`pxe.yaml:3: server: tls_cert is missing (HTTPS needs the certificate and its key: set both PEM files, or neither)`,
			},
		},
		{
			name: "tls certificate with an empty key",
			in:   "server:\n  tls_cert: /c.pem\n  tls_key: \"\"\n",
			want: []string{`pxe.yaml:2: server: tls_key is missing (HTTPS needs the certificate and its key: set both PEM files, or neither)`},
		},
		{
			name: "bad image name",
			in:   "images:\n  bad/name: {netboot_dir: /n}\n",
			want: []string{`pxe.yaml:2: images.bad/name: bad name "bad/name" (use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63)`},
		},
		{
			name: "ssh option injection",
			in:   base + "    ssh:\n      options: {\"ProxyCommand=x\": y, Port: \"1\\nProxyCommand x\"}\n",
			want: []string{
				`pxe.yaml:9: profiles.web.ssh.options.ProxyCommand=x: bad ssh option (an ssh_config option name and one-line value, like ConnectTimeout: "10")`,
				`pxe.yaml:9: profiles.web.ssh.options.Port: bad ssh option (an ssh_config option name and one-line value, like ConnectTimeout: "10")`,
			},
		},
		{
			name: "yaml syntax error",
			in:   "images:\n  a: b\n c: d\n",
			want: []string{`pxe.yaml:2: did not find expected key (fix the YAML syntax)`},
		},
		{
			name: "two documents",
			in:   base + "---\nserver: {}\n",
			want: []string{`pxe.yaml:8: a second document starts here; the config is one document (fix the YAML syntax)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("pxe.yaml", []byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want errors:\n%s", c, strings.Join(tt.want, "\n"))
			}
			if c != nil {
				t.Errorf("Parse returned a config with an error")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n got:\n%s\nwant:\n%s", err, strings.Join(tt.want, "\n"))
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "pxe.yaml" {
				t.Errorf("errors.As(*Error) = %v, %+v", errors.As(err, &e), e)
			}
		})
	}
}

func TestBaseIsValid(t *testing.T) {
	// The error cases rely on base being valid on its own.
	if _, err := Parse("pxe.yaml", []byte(base)); err != nil {
		t.Fatal(err)
	}
}

func TestSuggest(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{name: "one deletion", in: "flak", want: `did you mean "flake"?`},
		{name: "transposition", in: "iamge", want: `did you mean "image"?`},
		{name: "case", in: "Flake", want: `did you mean "flake"?`},
		{name: "too far", in: "colour", want: "none"},
		{name: "empty", in: "", want: "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := suggest(tt.in, []string{"flake", "image", "store_paths"}, "none"); got != tt.want {
				t.Errorf("suggest(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
