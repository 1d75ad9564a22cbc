#!/bin/bash
# build-kexec-tarball.sh IMAGEDIR OUT.tar.gz: packs the test installer
# image (IMAGEDIR/vmlinuz and IMAGEDIR/initrd.img from
# build-installer-image.sh) in the layout of a nixos-images kexec tarball:
# kexec/bzImage, kexec/initrd, kexec/run (lab/kexec-run.sh), kexec/kexec
# and kexec/ip. Upstream ships static kexec and ip; these are Debian's
# (dynamic), which run on the seed image because it has their libraries.
set -euo pipefail
umask 022
IMG=${1:?usage: build-kexec-tarball.sh IMAGEDIR OUT.tar.gz}
OUT=${2:?usage: build-kexec-tarball.sh IMAGEDIR OUT.tar.gz}
HERE=$(cd "$(dirname "$0")" && pwd)
export PATH=$PATH:/usr/sbin:/sbin
for tool in kexec ip; do
	command -v "$tool" >/dev/null || { echo "build-kexec-tarball: $tool missing (sudo scripts/setup.sh installs it)" >&2; exit 1; }
done
STAGE=$(mktemp -d "$(dirname "$OUT")/.kexec.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir "$STAGE/kexec"
install -m 0644 "$IMG/vmlinuz" "$STAGE/kexec/bzImage"
install -m 0644 "$IMG/initrd.img" "$STAGE/kexec/initrd"
sed 's|@kernelParams@|console=ttyS0|' "$HERE/kexec-run.sh" >"$STAGE/kexec/run"
chmod 0755 "$STAGE/kexec/run"
install -m 0755 "$(command -v kexec)" "$STAGE/kexec/kexec"
install -m 0755 "$(command -v ip)" "$STAGE/kexec/ip"
tar -C "$STAGE" -czf "$OUT.tmp" kexec
mv "$OUT.tmp" "$OUT"
echo "build-kexec-tarball: $OUT ($(du -h "$OUT" | cut -f1))"
