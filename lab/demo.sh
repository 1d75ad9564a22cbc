#!/bin/bash
# demo.sh: the whole chain on one machine, safe anywhere. It makes a lab
# network namespace (bridge br0, 10.77.0.0/24, a tap for qemu) that no
# real interface of this host joins, runs `pxe-anywhere serve` in it,
# PXE-boots one BIOS qemu VM from it into the test installer image, shows
# the install live until the machine is installed and its second PXE boot
# goes to the local disk, and removes everything on exit.
#
# Root only (namespaces, taps). Env: PXE_E2E_ACCEL=kvm to try KVM (TCG is
# the default: see /work/shared/LAB.md), DEMO_TIMEOUT seconds (default 1800),
# DEMO_KEEP=1 keeps the work directory, PXE_ANYWHERE_BIN uses a built binary.
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ACCEL=${PXE_E2E_ACCEL:-tcg}
TIMEOUT=${DEMO_TIMEOUT:-1800}
MAC=52:54:00:77:99:01
SUBNET=10.77.0
NS=pxe-demo-$$
say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces and a tap device); nothing was changed"

# Packages: the project's one list, installed by scripts/setup.sh (only
# what is missing; their daemons neither start now nor at the next boot).
"$REPO/scripts/setup.sh"
export PATH=$PATH:/usr/sbin:/sbin

WORK=$(mktemp -d /tmp/pxe-demo.XXXXXX)
QEMU_PID='' SERVE_PID=''
cleanup() {
	set +e
	[ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
	[ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
	if ip netns list | grep -qw "$NS"; then
		for pid in $(ip netns pids "$NS"); do kill -9 "$pid"; done
		ip netns del "$NS"
	fi
	if [ "${DEMO_KEEP:-0}" = 1 ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${PXE_ANYWHERE_BIN:-}" ]; then
	BIN=$(readlink -f "$PXE_ANYWHERE_BIN")
else
	say "building pxe-anywhere"
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$WORK/pxe-anywhere" ./cmd/pxe-anywhere)
	BIN=$WORK/pxe-anywhere
fi
IMG=${DEMO_IMAGE_DIR:-/var/tmp/pxe-anywhere-demo-image}
if [ ! -s "$IMG/initrd.img" ] || [ -n "$(find "$HERE" "$REPO/e2e/cmd" -newer "$IMG/initrd.img" -type f | head -1)" ]; then
	say "building the test installer image in $IMG (about a minute)"
	"$HERE/build-installer-image.sh" "$IMG"
fi

say "store paths: system stand-in and disko stand-in"
mkdir -p "$WORK/nixos-system-demo"
printf '#!/bin/sh\necho pxe-anywhere demo system\n' >"$WORK/nixos-system-demo/init"
chmod 0755 "$WORK/nixos-system-demo" "$WORK/nixos-system-demo/init"
SYSTEM=$(nix-store --add "$WORK/nixos-system-demo" 2>/dev/null)
DISKO=$(nix-store --add "$HERE/disko-standin.sh" 2>/dev/null)
mkdir -p "$WORK/extra/etc" "$WORK/extra/home/alice"
echo "installed by the pxe-anywhere demo" >"$WORK/extra/etc/motd"
echo "hello alice" >"$WORK/extra/home/alice/hello"
chmod -R go+rX "$WORK/extra"
head -c 32 /dev/urandom | base64 >"$WORK/disk.key"

say "lab namespace $NS: br0 $SUBNET.1/24 and a tap, no real interface involved"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge forward_delay 0 stp_state 0
ip -n "$NS" addr add "$SUBNET.1/24" dev br0
ip -n "$NS" link set br0 up
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0 up

cat >"$WORK/config.yaml" <<CFG
server:
  interfaces: [br0]
  advertise: $SUBNET.1
  tftp_listen: ":69"
  state_dir: $WORK/state
dhcp:
  mode: authoritative
  subnet: $SUBNET.0/24
  range: [$SUBNET.100, $SUBNET.200]
  router: $SUBNET.1
  lease_time: 1h
images:
  test:
    kernel: $IMG/vmlinuz
    initrd: [$IMG/initrd.img]
    cmdline: "console=ttyS0"
profiles:
  demo:
    image: test
    store_paths: {disko: $DISKO, system: $SYSTEM}
    disk_encryption_keys: {/tmp/disk.key: $WORK/disk.key}
    extra_files: $WORK/extra
    chown: {/home/alice: "1000:100"}
    after_install: reboot
machines:
  - mac: "$MAC"
    profile: demo
    hostname: demo-01
CFG

say "starting pxe-anywhere serve (log: $WORK/server.log)"
ip netns exec "$NS" "$BIN" serve --config "$WORK/config.yaml" >"$WORK/server.log" 2>&1 &
SERVE_PID=$!
# The CLI talks to the admin side, on the server's loopback (inside the
# namespace); the boot side is on $SUBNET.1:8080.
api() { ip netns exec "$NS" env PXE_ANYWHERE_SERVER=http://127.0.0.1:8081 PXE_ANYWHERE_TOKEN_FILE="$WORK/state/api-token" "$BIN" "$@"; }
for _ in $(seq 60); do
	[ -s "$WORK/state/api-token" ] && api machines list >/dev/null 2>&1 && break
	kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/server.log"; die "pxe-anywhere serve exited"; }
	sleep 1
done

say "booting a BIOS VM ($MAC, $ACCEL; serial console: $WORK/serial.log)"
qemu-img create -q -f qcow2 "$WORK/disk.qcow2" 2G
ip netns exec "$NS" timeout "$TIMEOUT" qemu-system-x86_64 -nodefaults -display none -accel "$ACCEL" -m 1024 \
	-machine pc -serial "file:$WORK/serial.log" \
	-netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
	-device "e1000,netdev=n0,mac=$MAC,romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom,bootindex=1" \
	-drive "file=$WORK/disk.qcow2,if=none,id=d0,format=qcow2" -device virtio-blk-pci,drive=d0,bootindex=2 &
QEMU_PID=$!
START=$(date +%s)

field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -1; }
last='' LOGS_PID=''
while :; do
	kill -0 "$QEMU_PID" 2>/dev/null || die "qemu ended before the install finished; serial tail: $(tail -5 "$WORK/serial.log")"
	now=$(( $(date +%s) - START ))
	[ "$now" -lt "$TIMEOUT" ] || die "not installed after ${TIMEOUT}s"
	json=$(api machines show --json "$MAC" 2>/dev/null || true)
	state=$(echo "$json" | field state)
	phase=
	[ "$state" = installing ] && phase=$(echo "$json" | field phase)
	if [ "$state/$phase" != "$last" ]; then
		say "[${now}s] state ${state:-?}${phase:+ phase $phase}"
		last=$state/$phase
	fi
	if [ "$state" = installing ] && [ -z "$LOGS_PID" ]; then
		# The install's own log, live, until it ends.
		api machines logs -f "$MAC" | sed 's/^/    /' &
		LOGS_PID=$!
	fi
	case "$state" in
	installed) break ;;
	failed) api machines logs "$MAC" || true; die "install failed in phase ${phase:-?}" ;;
	esac
	sleep 2
done
if [ -n "$LOGS_PID" ]; then wait "$LOGS_PID" 2>/dev/null || true; fi
say "waiting for the rebooted VM's second PXE boot to be sent to the local disk"
for _ in $(seq 300); do
	ip netns exec "$NS" curl -fsS -H "Authorization: Bearer $(cat "$WORK/state/api-token")" \
		"http://127.0.0.1:8081/api/v1/machines/$MAC/events" 2>/dev/null | grep -q "booting from local disk" && break
	kill -0 "$QEMU_PID" 2>/dev/null || break
	sleep 2
done
say "done after $(( $(date +%s) - START ))s: $MAC installed, its next boot is from the local disk; tearing the lab down"
