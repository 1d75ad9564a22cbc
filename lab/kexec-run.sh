#!/bin/sh
# kexec/run of the test kexec tarball (lab/build-kexec-tarball.sh): the
# part of nixos-images' kexec-run.sh that `pxe-anywhere install` relies
# on, written for the lab. It runs on the machine being installed, from
# the unpacked tarball:
#  1. packs this machine's SSH host keys and root's (and the sudo user's)
#     authorized keys under ssh/, and its network state as `ip --json`
#     output, into a cpio appended to kexec/initrd, where the installer's
#     /init restores them (restore-remote-access.nix upstream);
#  2. loads kexec/bzImage with that initrd (kexec --load);
#  3. returns, and switches kernels (kexec -e) a few seconds later in the
#     background, so the SSH session that started it ends cleanly.
set -eu

extra=
while [ $# -gt 0 ]; do
	case "$1" in
	--kexec-extra-flags)
		[ $# -ge 2 ] || { echo "run: --kexec-extra-flags needs a value" >&2; exit 2; }
		extra=$2
		shift
		;;
	*) echo "run: unexpected argument '$1'" >&2; exit 2 ;;
	esac
	shift
done

# Replaced by lab/build-kexec-tarball.sh.
params="@kernelParams@"

dir=$(dirname "$(readlink -f "$0")")
stage=$(mktemp -d "$dir/carry.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/ssh"

# Only the key lines: Debian's files may carry options before a key.
keys_of() {
	for f in "$1/.ssh/authorized_keys" "$1/.ssh/authorized_keys2"; do
		[ -f "$f" ] && grep -oE '(ssh|ecdsa|sk)-[^ ]+ .*' "$f" >>"$stage/ssh/authorized_keys" || true
	done
}
keys_of /root
user=${SUDO_USER:-${DOAS_USER:-}}
if [ -n "$user" ]; then
	keys_of "$(getent passwd "$user" | cut -d: -f6)"
fi
for k in /etc/ssh/ssh_host_*; do
	[ -e "$k" ] && cp -p "$k" "$stage/ssh/"
done
echo "run: carrying $(ls "$stage/ssh" | tr '\n' ' ')"

"$dir/ip" --json addr >"$stage/addrs.json"
"$dir/ip" -4 --json route >"$stage/routes-v4.json"
"$dir/ip" -6 --json route >"$stage/routes-v6.json"

(cd "$stage" && find . | cpio -o -H newc 2>/dev/null | gzip -9) >>"$dir/initrd"

# The file-based kexec syscall where the kernel is recent enough for it
# (nixos-images does the same from 6.1 on).
syscall=
if printf '%s\n' 6.1 "$(uname -r)" | sort -c -V 2>/dev/null; then
	syscall=--kexec-syscall-auto
fi
# shellcheck disable=SC2086 # extra flags are words
if ! "$dir/kexec" --load "$dir/bzImage" $syscall $extra --initrd="$dir/initrd" --command-line "init=/init $params"; then
	echo "run: kexec --load failed; dmesg:" >&2
	dmesg | tail -n 30 >&2
	exit 1
fi
echo "run: loaded; switching kernels in 6 s"
# shellcheck disable=SC2086
nohup sh -c "sleep 6; '$dir/kexec' -e $extra" >/dev/null 2>&1 &
