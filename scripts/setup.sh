#!/usr/bin/env bash
# Installs what pxe-anywhere's tests, lab and benchmarks need on Debian 12,
# as root, without letting the packages start their services (tftpd-hpa,
# nginx and sshd must never come up on this machine's real interfaces).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "setup.sh: run as root (it installs Debian packages)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
added_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	added_policy=1
fi
missing=$(grep -v '^#' scripts/apt-packages.txt | while read -r p; do
	[ -n "$p" ] && ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && echo "$p"
done || true)
if [ -n "$missing" ]; then
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
fi
if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || { echo "setup.sh: Go is not installed (want Go >= 1.26 at /usr/local/go or on PATH)" >&2; exit 1; }
go mod download
echo "setup: ok"
