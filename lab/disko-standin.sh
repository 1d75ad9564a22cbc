#!/bin/sh
# Stand-in for a disko script (the profile's store_paths.disko), run by the
# install engine on the test installer. It does for real what disko would:
# GPT with an EFI system partition and a Linux root, file systems, and
# mounts at /mnt and /mnt/boot. First it checks that the disk-encryption
# key the profile sends was written where disko would read it, 0600.
set -eu
KEY_FILE=${PXE_DISKO_KEY_FILE:-/tmp/disk.key}
say() { echo "disko-standin: $*"; }
die() { echo "disko-standin: $*" >&2; exit 1; }

[ -f "$KEY_FILE" ] || die "disk key $KEY_FILE missing: the engine must send disk_encryption_keys before disko"
mode=$(stat -c %a "$KEY_FILE")
[ "$mode" = 600 ] || die "disk key $KEY_FILE has mode $mode, want 600"
[ -s "$KEY_FILE" ] || die "disk key $KEY_FILE is empty"
say "disk key $KEY_FILE present, mode 600"

disk=
for d in /dev/vda /dev/sda /dev/nvme0n1; do
	[ -b "$d" ] && { disk=$d; break; }
done
[ -n "$disk" ] || die "no disk found (looked for /dev/vda, /dev/sda, /dev/nvme0n1)"
case "$disk" in *[0-9]) p=${disk}p ;; *) p=$disk ;; esac
say "partitioning $disk"

umount -r /mnt/boot 2>/dev/null || true
umount -r /mnt 2>/dev/null || true
sfdisk --wipe always --label gpt "$disk" <<TABLE
size=256MiB, type=U, name=ESP
type=L, name=nixos
TABLE
# The kernel announces the new partitions asynchronously.
i=0
while [ ! -b "${p}2" ]; do
	i=$((i + 1))
	[ $i -le 50 ] || die "${p}1/${p}2 did not appear after partitioning $disk"
	sleep 0.2
done
mkfs.vfat -F 32 -n ESP "${p}1"
mkfs.ext4 -q -F -L nixos "${p}2"
mkdir -p /mnt
mount -t ext4 "${p}2" /mnt
mkdir -p /mnt/boot
mount -t vfat "${p}1" /mnt/boot
say "mounted ${p}2 on /mnt and ${p}1 on /mnt/boot"
