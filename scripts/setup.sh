#!/usr/bin/env bash
# Installs what pxe-anywhere's tests, lab and benchmarks need on Debian 12,
# as root. The network daemons among those packages (sshd, nginx,
# tftpd-hpa) must never serve this machine's real interfaces: no service
# starts while apt runs (policy-rc.d), and the services of the daemons
# that this run newly installs are disabled, so they do not come up at the
# next boot either; the tests and benchmarks start their own copies inside
# network namespaces. Services of packages that were already installed are
# left as they were. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "setup.sh: run as root (it installs Debian packages)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# Packages whose services listen on the network: those that
# apt-packages.txt pulls in (nginx.service and /etc/init.d/nginx belong to
# nginx-common) and the DHCP servers it could come to pull in. Only these
# are disabled; dbus, udev and the like also arrive as dependencies, and
# the system needs them.
DAEMONS="openssh-server nginx-common tftpd-hpa dnsmasq isc-dhcp-server isc-dhcp-relay
	kea-dhcp4-server kea-dhcp6-server kea-ctrl-agent kea-dhcp-ddns-server postgresql-common
	openipmi ipmitool"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

# disable_services PKG: removes the boot-time links of PKG's services.
# update-rc.d turns SysV S links into K links and also disables a systemd
# unit of the same name (through systemctl, or by itself when systemd is
# not installed); systemctl --root=/ disables the other units by editing
# links, which works whether or not systemd runs as PID 1. A later upgrade
# of the package keeps them disabled.
disable_services() {
	local f unit failed=''
	for f in $(dpkg-query -L "$1"); do
		unit=${f##*/}
		case $f in
		/etc/init.d/*)
			update-rc.d "$unit" disable >/dev/null 2>&1 || failed="$failed $unit" ;;
		*@.service | *@.socket) ;; # templates: nothing enables them by default
		/lib/systemd/system/*.service | /lib/systemd/system/*.socket | \
			/usr/lib/systemd/system/*.service | /usr/lib/systemd/system/*.socket)
			# Without systemctl, systemd is not installed and nothing
			# starts these units.
			if command -v systemctl >/dev/null; then
				systemctl --root=/ --quiet disable "$unit" >/dev/null 2>&1 || failed="$failed $unit"
			fi ;;
		esac
	done
	if [ -n "$failed" ]; then
		echo "setup.sh: could not disable$failed (package $1); disable it before the next boot" >&2
		return 1
	fi
}

# disable_new_daemons: disable_services for each of DAEMONS that was not
# installed before this run and is now.
absent_daemons=''
disable_new_daemons() {
	local p disabled='' rc=0
	for p in $absent_daemons; do
		installed "$p" || continue
		if disable_services "$p"; then disabled="$disabled $p"; else rc=1; fi
	done
	absent_daemons=''
	if [ -n "$disabled" ]; then
		echo "setup: services of newly installed$disabled disabled (tests start their own, in namespaces)"
	fi
	return "$rc"
}

added_policy=''
finish() {
	local rc=$?
	trap - EXIT
	# After a failed apt-get too: what it configured before failing is
	# enabled.
	disable_new_daemons || rc=1
	if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
	exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

missing=''
while read -r p; do
	case $p in '' | '#'*) continue ;; esac
	installed "$p" || missing="$missing $p"
done <scripts/apt-packages.txt
if [ -n "$missing" ]; then
	for p in $DAEMONS; do
		installed "$p" || absent_daemons="$absent_daemons $p"
	done
	# A policy-rc.d that is already there (Docker images have one that
	# forbids everything) is someone else's: it stays as it is.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		added_policy=1
		printf '#!/bin/sh\n# pxe-anywhere scripts/setup.sh is installing packages: start nothing.\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
	fi
	# PostgreSQL's package would make a "main" cluster under
	# /var/lib/postgresql; the store tests run their own in a temporary
	# directory, so none is made (pg_createcluster reads this drop-in).
	if ! installed postgresql-common; then
		mkdir -p /etc/postgresql-common/createcluster.d
		printf '# pxe-anywhere scripts/setup.sh: tests start their own PostgreSQL.\ncreate_main_cluster = false\n' \
			>/etc/postgresql-common/createcluster.d/pxe-anywhere.conf
	fi
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
	disable_new_daemons
fi
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || { echo "setup.sh: Go is not installed (want Go >= 1.26 at /usr/local/go or on PATH)" >&2; exit 1; }
go mod download
echo "setup: ok"
