#!/bin/bash
# build-installer-image.sh [--seed] OUTDIR: builds the end-to-end test's
# stand-in for the nixos-images installer (OUTDIR/vmlinuz, OUTDIR/initrd.img)
# from Debian packages installed on this machine. The server sees what it
# would see from the real image: os-release says ID=nixos VARIANT_ID=installer,
# injected keys under /ssh/ are restored like restore-remote-access.nix,
# sshd takes root by key only, and the installer calls back.
#
# --seed builds instead the machine that `pxe-anywhere install` kexecs: a
# plain Linux (os-release ID=debian) with sshd, kexec-tools and iproute2,
# whose host keys and authorized_keys come from a cpio the test appends
# (lab/seed-image/init).
#
# Needs: linux-image-amd64, busybox-static, openssh-server, fdisk,
# e2fsprogs, dosfstools, nix-bin, cpio, go (for the callback helper).
# KVER chooses the Debian kernel (default: newest in /boot with modules).
# The host's running kernel is never used: it may not match /lib/modules.
set -euo pipefail
umask 022

SEED=
if [ "${1:-}" = --seed ]; then
	SEED=1
	shift
fi
OUT=${1:?usage: build-installer-image.sh [--seed] OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -z "${KVER:-}" ]; then
	KVER=''
	for v in $(printf '%s\n' /boot/vmlinuz-* | sed 's|/boot/vmlinuz-||' | sort -V); do
		if [ -f "/lib/modules/$v/modules.dep" ]; then KVER=$v; fi
	done
fi
if [ -z "$KVER" ] || [ ! -f "/boot/vmlinuz-$KVER" ]; then
	echo "build-installer-image: no Debian kernel with modules found in /boot (sudo scripts/setup.sh installs linux-image-amd64)" >&2
	exit 1
fi
MODDIR=/lib/modules/$KVER

tools="busybox sshd ssh-keygen cpio gzip ldd"
if [ -n "$SEED" ]; then tools="$tools kexec ip"; else tools="$tools sfdisk mke2fs mkfs.fat nix go"; fi
for tool in $tools; do
	command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v "$tool" >/dev/null || {
		echo "build-installer-image: $tool missing (sudo scripts/setup.sh installs it)" >&2
		exit 1
	}
done
export PATH=$PATH:/usr/sbin:/sbin

ROOT=$(mktemp -d "$OUT/.root.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT

mkdir -p "$ROOT"/{usr/bin,usr/lib,etc/ssh,etc/nix,root,proc,sys,dev,run,tmp,mnt,var/empty,nix/store,nix/var/nix,lib/modules}
# One bin directory: sshd sessions, the engine and busybox all find
# every tool whichever PATH they use.
ln -s usr/bin "$ROOT/bin"
ln -s usr/bin "$ROOT/sbin"
ln -s bin "$ROOT/usr/sbin"
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"

# copy_bin SRC [NAME]: a dynamic binary and its shared-library closure,
# each library at the path the loader looks for it.
copy_bin() {
	local src=$1 name=${2:-$(basename "$1")}
	install -m 0755 "$(readlink -f "$src")" "$ROOT/usr/bin/$name"
	ldd "$src" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
		[ -e "$ROOT$lib" ] && continue
		mkdir -p "$ROOT$(dirname "$lib")"
		cp -L "$lib" "$ROOT$lib"
	done
}

install -m 0755 "$(command -v busybox)" "$ROOT/usr/bin/busybox"
for applet in $(busybox --list); do
	[ -e "$ROOT/usr/bin/$applet" ] || ln -s busybox "$ROOT/usr/bin/$applet"
done
# Real tools where the engine's work must be real: GPT partitioning,
# file systems, sshd and nix. They replace busybox's applets of the same name.
# util-linux mount tools: the engine uses `mountpoint` and `umount -R`,
# which busybox lacks.
# util-linux setsid: the engine runs every command under `setsid sh -c`,
# and busybox's setsid would exec its own ash, which runs busybox's umount.
# ssh-keygen prints the host key's fingerprint on the console.
if [ -n "$SEED" ]; then
	real="sshd ssh-keygen kexec ip"
else
	real="sfdisk mke2fs mkfs.fat sshd ssh-keygen nix mount umount mountpoint setsid"
fi
for b in $real; do
	rm -f "$ROOT/usr/bin/$b"
	copy_bin "$(command -v "$b")"
done
# Debian's busybox ash runs its own applets before PATH (prefer-applets),
# so with busybox as /bin/sh the engine's `umount -R` would reach
# busybox's umount. NixOS's /bin/sh is bash: so is this one. coreutils
# nohup, because this busybox has none and the engine reboots with it.
copy_bin /bin/bash
rm -f "$ROOT/usr/bin/sh"
ln -s bash "$ROOT/usr/bin/sh"
rm -f "$ROOT/usr/bin/nohup"
copy_bin /usr/bin/nohup
if [ -z "$SEED" ]; then
for l in mkfs.ext4 mkfs.ext3 mkfs.ext2; do rm -f "$ROOT/usr/bin/$l"; ln -s mke2fs "$ROOT/usr/bin/$l"; done
for l in mkfs.vfat mkdosfs; do rm -f "$ROOT/usr/bin/$l"; ln -s mkfs.fat "$ROOT/usr/bin/$l"; done
for l in nix-store nix-daemon nix-copy-closure nix-env nix-instantiate nix-build; do ln -sf nix "$ROOT/usr/bin/$l"; done
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOT/etc/"
fi
mkdir -p "$ROOT/usr/lib/openssh"
[ -x /usr/lib/openssh/sftp-server ] && copy_bin /usr/lib/openssh/sftp-server && mv "$ROOT/usr/bin/sftp-server" "$ROOT/usr/lib/openssh/"

if [ -n "$SEED" ]; then
	install -m 0755 "$HERE/seed-image/init" "$ROOT/init"
else
	# The callback helper: busybox wget segfaults in this initramfs.
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$ROOT/usr/bin/pxe-callback" ./e2e/cmd/callback)
	install -m 0755 "$HERE/installer-image/nixos-install" "$ROOT/usr/bin/nixos-install"
	install -m 0755 "$HERE/installer-image/init" "$ROOT/init"
fi
install -m 0755 "$HERE/installer-image/udhcpc.script" "$ROOT/etc/udhcpc.script"

# Kernel modules in load order (dependencies first, from modules.dep).
mods="e1000 virtio_pci virtio_net virtio_blk crc32c_generic ext4 vfat nls_cp437 nls_ascii nls_iso8859-1"
: >"$ROOT/etc/modules.order"
for m in $mods; do
	line=$(grep -E "/${m//[-_]/[-_]}\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" | head -1)
	[ -n "$line" ] || { echo "build-installer-image: module $m not in $MODDIR/modules.dep" >&2; exit 1; }
	deps=$(echo "${line#*:}" | tr ' ' '\n' | tac)
	for ko in $deps "${line%%:*}"; do
		grep -qxF "$ko" "$ROOT/etc/modules.order" && continue
		mkdir -p "$ROOT/lib/modules/$(dirname "$ko")"
		case "$ko" in
		*.ko.xz) xz -dc "$MODDIR/$ko" >"$ROOT/lib/modules/${ko%.xz}"; ko=${ko%.xz} ;;
		*.ko.zst) zstd -qdc "$MODDIR/$ko" >"$ROOT/lib/modules/${ko%.zst}"; ko=${ko%.zst} ;;
		*) cp "$MODDIR/$ko" "$ROOT/lib/modules/$ko" ;;
		esac
		echo "$ko" >>"$ROOT/etc/modules.order"
	done
done

if [ -n "$SEED" ]; then
	cat >"$ROOT/etc/os-release" <<'OS'
PRETTY_NAME="Debian GNU/Linux 12 (bookworm) (pxe-anywhere test seed)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
OS
else
	cat >"$ROOT/etc/os-release" <<'OS'
NAME=NixOS
ID=nixos
PRETTY_NAME="NixOS installer (pxe-anywhere test stand-in)"
VARIANT="installer"
VARIANT_ID=installer
OS
fi
cat >"$ROOT/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/bash
sshd:x:74:74:sshd privsep:/var/empty:/bin/false
nobody:x:65534:65534:nobody:/var/empty:/bin/false
PW
cat >"$ROOT/etc/group" <<'GR'
root:x:0:
users:x:100:
sshd:x:74:
nogroup:x:65534:
GR
# "*": no password, but not locked, so key login works without PAM.
printf 'root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n' >"$ROOT/etc/shadow"
chmod 0600 "$ROOT/etc/shadow"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$ROOT/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"
cat >"$ROOT/etc/ssh/sshd_config" <<'SSHD'
Port 22
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
StrictModes yes
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv PATH=/usr/bin:/bin:/usr/sbin:/sbin
PidFile /run/sshd.pid
SSHD
cat >"$ROOT/etc/nix/nix.conf" <<'NIX'
build-users-group =
sandbox = false
experimental-features = nix-command
# The lab is offline: no substituter to wait for.
substituters =
NIX
cat >"$ROOT/etc/inittab" <<'TAB'
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
TAB

# No ld.so.cache on the host side of the copy: make one for the image.
printf "/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n" >"$ROOT/etc/ld.so.conf"
ldconfig -r "$ROOT"

install -m 0644 "/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -6) >"$OUT/initrd.img.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
echo "build-installer-image: $OUT/vmlinuz ($KVER) and $OUT/initrd.img ($(du -h "$OUT/initrd.img" | cut -f1))"
