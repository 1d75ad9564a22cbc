#!/usr/bin/env bash
# bench/run.sh [dhcp|tftp|http|storm|all]: pxe-anywhere against reference
# servers (dnsmasq, Kea, tftpd-hpa, nginx), each run inside network namespaces
# this script makes and always removes. Nothing binds to a real interface.
# Prints a table per section: ours, reference, ratio (>1 means ours wins).
#
# Environment: PXA_BIN (default bin/pxe-anywhere, built if missing),
# REPS (interleaved repetitions per pair, default 3; median reported),
# DHCP_RATES, DHCP_SECS, PERF_CLIENTS, TFTP_CLIENTS, STORM_N,
# STORM_INITRD_MB, HTTP_INITRD_MB, KEEP_LOGS=1 (keep the work dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-all}
case $MODE in dhcp|tftp|http|storm|storm-pg|all) ;; *) echo "usage: $0 [dhcp|tftp|http|storm|storm-pg|all]" >&2; exit 2;; esac
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces)" >&2; exit 1; }

REPS=${REPS:-3}
PXA_BIN=${PXA_BIN:-$ROOT/bin/pxe-anywhere}
IPXE_DIR=${IPXE_DIR:-/usr/lib/ipxe}
WORK=$(mktemp -d /tmp/pxe-bench.XXXXXX)
chmod 700 "$WORK"
TAG=pxb$$
SRV=$TAG-srv
CL=$TAG-cl
# storm-pg: a second segment, its own server namespace and client.
SRV2=$TAG-srv2
CL2=$TAG-cl2
PIDS=()

cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for ns in "$CL" "$SRV" "$CL2" "$SRV2"; do
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
		ip netns del "$ns" 2>/dev/null
	done
	if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "bench: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() { for t in "$@"; do command -v "$t" >/dev/null || { echo "bench: missing $t (see scripts/apt-packages.txt)" >&2; exit 1; }; done; }
need ip perfdhcp dnsmasq in.tftpd nginx curl go awk bc pgrep

inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# The lab: server namespace with bridge br0 (10.77.0.1/16 for pxe-anywhere,
# .3 for tftpd-hpa, .4 for dnsmasq TFTP), one client namespace on a veth.
lab() {
	ip netns add "$SRV"
	ip netns add "$CL"
	inns "$SRV" ip link set lo up
	inns "$SRV" ip link add br0 type bridge forward_delay 0 stp_state 0
	for a in 10.77.0.1 10.77.0.3 10.77.0.4; do inns "$SRV" ip addr add $a/16 dev br0; done
	inns "$SRV" ip link set br0 up
	# Both ends are born in their namespaces: the host never sees them.
	ip link add "${TAG}h" netns "$SRV" type veth peer name eth0 netns "$CL"
	inns "$SRV" ip link set "${TAG}h" master br0 up
	inns "$CL" ip link set lo up
	inns "$CL" ip addr add 10.77.0.2/16 dev eth0
	inns "$CL" ip link set eth0 up
}

tools() {
	if [ ! -x "$PXA_BIN" ]; then
		(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$PXA_BIN" ./cmd/pxe-anywhere)
	fi
	mkdir -p "$WORK/bin"
	for t in tftpload httpload storm pgserver; do
		(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$WORK/bin/$t" ./bench/$t)
	done
}

# Files the images point at: random bytes, so nothing compresses.
mkimage() { # name kernel_mb initrd_mb
	mkdir -p "$WORK/img/$1"
	head -c $(($2 << 20)) /dev/urandom >"$WORK/img/$1/bzImage"
	head -c $(($3 << 20)) /dev/urandom >"$WORK/img/$1/initrd"
}

# pxe-anywhere config: mode (proxy|authoritative), machines (count, MACs
# as storm makes them), unknown policy.
pxa_config() { # file mode nmachines unknown image
	local f=$1 mode=$2 n=$3 unknown=$4 img=$5
	cat >"$f" <<-YAML
	server:
	  interfaces: [br0]
	  advertise: 10.77.0.1
	  http_listen: "10.77.0.1:8080"
	  tftp_listen: "10.77.0.1:69"
	  state_dir: $WORK/state-$RANDOM
	  ipxe_dir: $WORK/tftproot
	  max_installs: 2
	  unknown_machines: $unknown
	  # One client namespace (one address) makes all the HTTP load:
	  # the per-source cap (default 8) would answer most of it 429.
	  boot_max_per_source: 10000
	dhcp:
	  mode: $mode
	  subnet: 10.77.0.0/16
	  range: [10.77.1.0, 10.77.250.255]
	  router: 10.77.0.1
	  lease_time: 1h
	images:
	  bench:
	    kernel: $WORK/img/$img/bzImage
	    initrd: [$WORK/img/$img/initrd]
	    cmdline: "init=/nix/store/bench-init/init"
	profiles:
	  bench:
	    image: bench
	    store_paths: {disko: /nix/store/00000000000000000000000000000000-disko, system: /nix/store/00000000000000000000000000000000-bench}
	machines:
	YAML
	[ "$n" -gt 0 ] || { sed -i 's/^machines:$/machines: []/' "$f"; return; }
	for i in $(seq 1 "$n"); do
		printf '  - {mac: "52:54:01:00:%02x:%02x", profile: bench}\n' $((i >> 8)) $((i & 255)) >>"$f"
	done
}

# start_bg name cmd...: runs cmd in the server namespace, logs to WORK.
start_bg() {
	local name=$1; shift
	ip netns exec "$SRV" "$@" >"$WORK/$name.log" 2>&1 &
	LASTPID=$!
	PIDS+=("$LASTPID")
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_pxa() { # config
	start_bg pxa-$RANDOM "$PXA_BIN" serve --config "$1"
	PXA_PID=$LASTPID
	for _ in $(seq 1 300); do
		inns "$CL" curl -fsS -o /dev/null http://10.77.0.1:8080/healthz 2>/dev/null && return 0
		kill -0 "$PXA_PID" 2>/dev/null || break
		sleep 0.1
	done
	echo "bench: pxe-anywhere did not come up; its log:" >&2
	tail -n 30 "$WORK"/pxa-*.log >&2
	exit 1
}

# CPU seconds (utime+stime) of a set of pids, and sum of their VmHWM in MB.
cpu_s() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; awk -v t=$t -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t/hz}'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a-b}'; }
hwm_mb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmHWM/{print $2}' /proc/$p/status))); done; echo $((t / 1024)); }
# Resets VmHWM so that peak RSS is the peak of one run (Linux ≥ 4.0).
reset_hwm() { for p in "$@"; do echo 5 >/proc/$p/clear_refs; done; }

median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"}else if(NR%2){print a[(NR+1)/2]}else{print (a[NR/2]+a[NR/2+1])/2}}'; }
kv() { tr ' ' '\n' | awk -F= -v k="$1" '$1==k{print $2}'; }
iszero() { awk -v x="$1" 'BEGIN{exit !(x != "nan" && x+0 == 0)}'; }
ratio() { echo "$1 $2" | awk '{ if ($2+0==0) print "n/a"; else printf "%.2f", $1/$2 }'; }

ROWS=()
row() { ROWS+=("$(printf '| %s | %s | %s | %s | %s |' "$@")"); }
table() { # title, header for ours/ref
	echo
	echo "### $1"
	echo
	echo "| case | pxe-anywhere | $2 | ratio | note |"
	echo "|---|---|---|---|---|"
	printf '%s\n' "${ROWS[@]}"
	ROWS=()
}

machine_info() {
	echo "## Bench run $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "- machine: $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r), $(awk '/MemTotal/{printf "%d MB RAM", $2/1024}' /proc/meminfo)"
	echo "- load generator and servers share these cores; REPS=$REPS interleaved runs per pair, median shown"
	echo "- pxe-anywhere $("$PXA_BIN" version 2>/dev/null | head -1), $(dnsmasq --version | head -1), $(in.tftpd -V 2>&1 | head -1), $(nginx -v 2>&1), perfdhcp $(perfdhcp -v 2>&1 | head -1)"
}

# ---------------------------------------------------------------- DHCP
# perfdhcp: DORA at a fixed rate for DHCP_SECS; reports exchanges/s
# (completed DORAs), drops and average latency of both exchanges.
perf() { # rate extra-args...
	local rate=$1; shift
	local out
	out=$(inns "$CL" perfdhcp -4 -l eth0 -r "$rate" -R "${PERF_CLIENTS:-20000}" -p "${DHCP_SECS:-5}" -d 1 -W 1000000 "$@" 2>&1 || true)
	echo "$out" >>"$WORK/perfdhcp.log"
	# Summary: the last "sent"/"received"/"drops" and delays per exchange.
	echo "$out" | awk -v rate="$rate" -v secs="${DHCP_SECS:-5}" '
		/^\*\*\*\*\*\*\* Results/ {ex=""}
		/^\*\*\*Statistics for: DISCOVER-OFFER/ {ex="DO"}
		/^\*\*\*Statistics for: REQUEST-ACK/ {ex="RA"}
		/^received packets:/ {rcv[ex]=$3}
		/^sent packets:/ {snt[ex]=$3}
		/^drops:/ {drp[ex]=$2}
		/^avg delay:/ {d[ex]=$3}
		END {
			last = ("RA" in rcv) ? "RA" : "DO"
			printf "rate=%s sent=%d done=%d per_s=%.0f drops=%d drop_pct=%.2f do_ms=%s ra_ms=%s\n", rate, snt["DO"], rcv[last], rcv[last]/secs, drp["DO"]+drp["RA"], (snt["DO"]? 100*(drp["DO"]+drp["RA"])/snt["DO"] : 0), d["DO"], d["RA"]
		}'
}

dnsmasq_dhcp() { # extra args
	start_bg dnsmasq-$RANDOM dnsmasq --port=0 --no-daemon --interface=br0 --bind-interfaces \
		--listen-address=10.77.0.1 --no-ping --dhcp-lease-max=100000 \
		--dhcp-leasefile="$WORK/dnsmasq-$RANDOM.leases" --pid-file= "$@"
	REF_PID=$LASTPID
	sleep 0.5
}

# Kea's DHCPv4 server with its memfile lease file (persisted, appended to
# on every lease change), raw sockets on br0 as for clients on the link.
kea_dhcp() {
	local n=$RANDOM
	cat >"$WORK/kea-$n.json" <<-JSON
	{"Dhcp4": {
	  "interfaces-config": {"interfaces": ["br0/10.77.0.1"], "dhcp-socket-type": "raw"},
	  "lease-database": {"type": "memfile", "persist": true, "name": "$WORK/kea-$n.leases", "lfc-interval": 0},
	  "valid-lifetime": 3600,
	  "subnet4": [{"id": 1, "subnet": "10.77.0.0/16", "pools": [{"pool": "10.77.1.0 - 10.77.250.255"}],
	    "option-data": [{"name": "routers", "data": "10.77.0.1"}]}],
	  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "$WORK/kea-$n.log"}], "severity": "WARN"}]
	}}
	JSON
	KEA_LEASES=$WORK/kea-$n.leases
	start_bg kea-$n env KEA_PIDFILE_DIR="$WORK" KEA_LOCKFILE_DIR="$WORK" kea-dhcp4 -c "$WORK/kea-$n.json"
	REF_PID=$LASTPID
	sleep 1
}

# Leases a stopped server left on disk: ours (leases.json in state_dir)
# and Kea's memfile (a CSV appended to on each change: distinct addresses).
leases_ours() { grep -o '"mac"' "$1/leases.json" 2>/dev/null | wc -l; }
leases_kea() { tail -n +2 "$1" 2>/dev/null | cut -d, -f1 | sort -u | wc -l; }

bench_dhcp() {
	local rates=${DHCP_RATES:-"200 300 400 500 600 800 1000 1200 1600 2400 3200"} zero_ours_dhcp=0 zero_ref_dhcp=0 zero_ours_pxe=0 zero_ref_pxe=0 zero_kea=0 zero_ours_k=0
	local have_kea=0
	command -v kea-dhcp4 >/dev/null && have_kea=1
	local KROWS=()
	local cfg="$WORK/dhcp-auth.yaml" cfgp="$WORK/dhcp-proxy.yaml"
	pxa_config "$cfg" authoritative 0 ignore small
	pxa_config "$cfgp" proxy 0 local-boot small
	# PXE DISCOVER: option 60 "PXEClient:Arch:00000:UNDI:002001", 93 = 0.
	# shellcheck disable=SC2054 # perfdhcp's -o takes CODE,HEX
	local pxeopts=(-o 60,505845436c69656e743a417263683a30303030303a554e44493a303032303031 -o 93,0000)
	for rate in $rates; do
		for _ in $(seq 1 "$REPS"); do
			# Fresh servers each run: an empty lease table for both.
			local st=$WORK/state-$RANDOM
			sed -i "s|state_dir: .*|state_dir: $st|" "$cfg"
			start_pxa "$cfg"; perf "$rate" >>"$WORK/dhcp-ours-$rate"; stop "$PXA_PID"
			echo "leases=$(leases_ours "$st")" >>"$WORK/leases-ours-$rate"
			if [ $have_kea = 1 ]; then
				kea_dhcp; perf "$rate" >>"$WORK/dhcp-kea-$rate"; stop "$REF_PID"
				echo "leases=$(leases_kea "$KEA_LEASES")" >>"$WORK/leases-kea-$rate"
			fi
			dnsmasq_dhcp --dhcp-range=10.77.1.0,10.77.250.255,1h; perf "$rate" >>"$WORK/dhcp-ref-$rate"; stop "$REF_PID"
			sed -i "s|state_dir: .*|state_dir: $WORK/state-$RANDOM|" "$cfgp"
			start_pxa "$cfgp"; perf "$rate" -i "${pxeopts[@]}" >>"$WORK/pxe-ours-$rate"; stop "$PXA_PID"
			dnsmasq_dhcp --dhcp-range=10.77.0.0,proxy --pxe-service=x86PC,"bench",undionly; perf "$rate" -i "${pxeopts[@]}" >>"$WORK/pxe-ref-$rate"; stop "$REF_PID"
		done
		for kind in dhcp pxe; do
			local o r
			o=$(kv per_s <"$WORK/$kind-ours-$rate" | median); r=$(kv per_s <"$WORK/$kind-ref-$rate" | median)
			local od rd ol rl
			od=$(kv drop_pct <"$WORK/$kind-ours-$rate" | median); rd=$(kv drop_pct <"$WORK/$kind-ref-$rate" | median)
			ol=$(kv do_ms <"$WORK/$kind-ours-$rate" | median); rl=$(kv do_ms <"$WORK/$kind-ref-$rate" | median)
			local what="DORA/s"; [ $kind = pxe ] && what="proxy PXE DISCOVER→OFFER/s"
			row "$what offered $rate/s" "$o/s, drops $od %, DO $ol ms" "$r/s, drops $rd %, DO $rl ms" "$(ratio "$o" "$r")" ""
			if iszero "$od"; then eval "zero_ours_$kind=$rate"; fi
			if iszero "$rd"; then eval "zero_ref_$kind=$rate"; fi
		done
		if [ $have_kea = 1 ]; then
			local o k od kd ol kl ok kk
			o=$(kv per_s <"$WORK/dhcp-ours-$rate" | median); k=$(kv per_s <"$WORK/dhcp-kea-$rate" | median)
			od=$(kv drop_pct <"$WORK/dhcp-ours-$rate" | median); kd=$(kv drop_pct <"$WORK/dhcp-kea-$rate" | median)
			ol=$(kv do_ms <"$WORK/dhcp-ours-$rate" | median); kl=$(kv do_ms <"$WORK/dhcp-kea-$rate" | median)
			ok=$(kv leases <"$WORK/leases-ours-$rate" | median); kk=$(kv leases <"$WORK/leases-kea-$rate" | median)
			KROWS+=("$(printf '| %s | %s | %s | %s | %s |' "DORA/s offered $rate/s" "$o/s, drops $od %, DO $ol ms, leases on disk $ok" "$k/s, drops $kd %, DO $kl ms, leases on disk $kk" "$(ratio "$o" "$k")" "")")
			if iszero "$kd"; then zero_kea=$rate; fi
			if iszero "$od"; then zero_ours_k=$rate; fi
		fi
	done
	local zod=${zero_ours_dhcp:-0} zrd=${zero_ref_dhcp:-0} zop=${zero_ours_pxe:-0} zrp=${zero_ref_pxe:-0}
	row "highest offered DORA/s with 0 drops" "$zod" "$zrd" "$(ratio "$zod" "$zrd")" "of the rates tried"
	row "highest offered PXE DISCOVER/s with 0 drops" "$zop" "$zrp" "$(ratio "$zop" "$zrp")" "of the rates tried"
	table "DHCP (perfdhcp, ${PERF_CLIENTS:-20000} clients, ${DHCP_SECS:-5} s per run)" "dnsmasq"
	if [ $have_kea = 1 ]; then
		ROWS=("${KROWS[@]}")
		row "highest offered DORA/s with 0 drops" "$zero_ours_k" "$zero_kea" "$(ratio "$zero_ours_k" "$zero_kea")" "of the rates tried"
		table "DHCP DORA against Kea (perfdhcp, ${PERF_CLIENTS:-20000} clients, ${DHCP_SECS:-5} s per run; leases on disk after the server stopped)" "Kea $(kea-dhcp4 -v 2>&1 | head -1), memfile"
	fi
}

# ---------------------------------------------------------------- TFTP
# cell FILE: median completion time, throughput, p99 per transfer, server
# CPU, errors.
# tftpd-hpa forks a child per transfer and never reaps them into its own
# counters, so its CPU is not shown.
cell() {
	local cpu=""
	[ -n "$(kv cpu_s <"$1")" ] && cpu=", server CPU $(kv cpu_s <"$1" | median) s"
	echo "$(kv wall_s <"$1" | median) s, $(kv mbps <"$1" | median) Mbit/s, p99 $(kv p99_ms <"$1" | median) ms$cpu, err $(kv errors <"$1" | paste -sd+ | bc)"
}

bench_tftp() {
	local cfg="$WORK/tftp.yaml"
	pxa_config "$cfg" proxy 0 ignore small
	start_pxa "$cfg"
	start_bg tftpd in.tftpd -L -s "$WORK/tftproot" -a 10.77.0.3:69
	local tftpd=$LASTPID
	start_bg dnsmasq-tftp dnsmasq --port=0 --no-daemon --listen-address=10.77.0.4 --bind-interfaces \
		--enable-tftp --tftp-root="$WORK/tftproot" --tftp-max=1000 --pid-file=
	local dm=$LASTPID
	sleep 0.5
	for file in undionly.kpxe ipxe.efi; do
		for bs in 512 1468; do
			for c in ${TFTP_CLIENTS:-1 50 200}; do
				local key="$file-$bs-$c"
				# One client alone: 20 fetches in a row, so the figure is not one
				# 10 ms sample.
				local rounds=1; [ "$c" = 1 ] && rounds=20
				for _ in $(seq 1 "$REPS"); do
					for srv in ours:10.77.0.1:$PXA_PID hpa:10.77.0.3:$tftpd dnsmasq:10.77.0.4:$dm; do
						local name ip pid c0 res
						IFS=: read -r name ip pid <<<"$srv"
						c0=$(cpu_s "$pid")
						res=$(inns "$CL" "$WORK/bin/tftpload" -server "$ip:69" -files "$file" -c "$c" -rounds $rounds -blksize "$bs" \
							2>>"$WORK/tftp-errors.log" || true)
						[ "$name" = hpa ] || res="$res cpu_s=$(sub "$(cpu_s "$pid")" "$c0")"
						echo "$res" >>"$WORK/tftp-$name-$key"
					done
				done
				local o h d
				o=$(kv wall_s <"$WORK/tftp-ours-$key" | median); h=$(kv wall_s <"$WORK/tftp-hpa-$key" | median); d=$(kv wall_s <"$WORK/tftp-dnsmasq-$key" | median)
				# Ratio: reference completion time / ours (>1: ours is faster).
				row "$file blksize $bs, $c clients × $rounds" "$(cell "$WORK/tftp-ours-$key")" \
					"hpa: $(cell "$WORK/tftp-hpa-$key"); dnsmasq: $(cell "$WORK/tftp-dnsmasq-$key")" \
					"vs hpa $(ratio "$h" "$o"), vs dnsmasq $(ratio "$d" "$o")" ""
			done
		done
	done
	stop "$PXA_PID"; stop "$tftpd"; stop "$dm"
	table "TFTP (bench/tftpload, all clients start at once; completion time)" "tftpd-hpa / dnsmasq"
}

# ---------------------------------------------------------------- HTTP
bench_http() {
	local cfg="$WORK/http.yaml" mb=${HTTP_INITRD_MB:-300}
	pxa_config "$cfg" proxy 0 ignore big
	mkdir -p "$WORK/nginx/www/images/bench" "$WORK/nginx/tmp"
	ln -sf "$WORK/img/big/initrd" "$WORK/nginx/www/images/bench/initrd"
	cat >"$WORK/nginx/nginx.conf" <<-CONF
	user root;
	worker_processes auto;
	pid $WORK/nginx/nginx.pid;
	error_log $WORK/nginx/error.log;
	events { worker_connections 1024; }
	http {
	  access_log off;
	  sendfile on;
	  tcp_nopush on;
	  client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
	  fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
	  server { listen 10.77.0.1:8081; root $WORK/nginx/www; }
	}
	CONF
	start_pxa "$cfg"
	start_bg nginx nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
	local ngx=$LASTPID
	sleep 0.5
	local ngxpids; ngxpids=$(pgrep -d ' ' -P "$ngx" || true); ngxpids="$ngx $ngxpids"
	# Warm the page cache so both read from memory.
	cat "$WORK/img/big/initrd" >/dev/null
	for c in 1 50; do
		local rounds=1; [ $c = 1 ] && rounds=5
		for _ in $(seq 1 "$REPS"); do
			for srv in ours ref; do
				local url pids
				if [ $srv = ours ]; then url=http://10.77.0.1:8080/images/bench/initrd; pids=$PXA_PID; else url=http://10.77.0.1:8081/images/bench/initrd; pids=$ngxpids; fi
				reset_hwm $pids
				local c0; c0=$(cpu_s $pids)
				local out; out=$(inns "$CL" "$WORK/bin/httpload" -url "$url" -c $c -rounds $rounds 2>>"$WORK/http-errors.log" || echo "mbps=0 errors=1")
				echo "$out cpu_s=$(sub "$(cpu_s $pids)" "$c0") hwm_mb=$(hwm_mb $pids)" >>"$WORK/http-$srv-$c"
			done
		done
		local o r
		o=$(kv mbps <"$WORK/http-ours-$c" | median); r=$(kv mbps <"$WORK/http-ref-$c" | median)
		row "${mb} MB initrd, $c clients × $rounds" "$o Mbit/s, CPU $(kv cpu_s <"$WORK/http-ours-$c" | median) s, peak RSS $(kv hwm_mb <"$WORK/http-ours-$c" | median) MB, err $(kv errors <"$WORK/http-ours-$c" | paste -sd+ | bc)" \
			"$r Mbit/s, CPU $(kv cpu_s <"$WORK/http-ref-$c" | median) s, peak RSS $(kv hwm_mb <"$WORK/http-ref-$c" | median) MB (all workers), err $(kv errors <"$WORK/http-ref-$c" | paste -sd+ | bc)" \
			"$(ratio "$o" "$r")" "target ≥ 0.90"
	done
	stop "$PXA_PID"; stop "$ngx"
	table "HTTP (bench/httpload; CPU = server utime+stime during the run)" "nginx (sendfile on)"
}

# ---------------------------------------------------------------- storm
# storm-pg: the second segment (10.78.0.0/16), like lab's first.
lab2() {
	ip netns add "$SRV2"
	ip netns add "$CL2"
	inns "$SRV2" ip link set lo up
	inns "$SRV2" ip link add br0 type bridge forward_delay 0 stp_state 0
	inns "$SRV2" ip addr add 10.78.0.1/16 dev br0
	inns "$SRV2" ip link set br0 up
	ip link add "${TAG}i" netns "$SRV2" type veth peer name eth0 netns "$CL2"
	inns "$SRV2" ip link set "${TAG}i" master br0 up
	inns "$CL2" ip link set lo up
	inns "$CL2" ip addr add 10.78.0.2/16 dev eth0
	inns "$CL2" ip link set eth0 up
}

# bench_storm_pg: the storm split over two segments, each with its own
# server, both on one PostgreSQL (a throwaway one, bench/pgserver), next
# to the same storm against one server on SQLite.
bench_storm_pg() {
	local n=${STORM_N:-500} half
	half=$((n / 2))
	lab2
	"$WORK/bin/pgserver" -url "$WORK/pg.url" -password "$WORK/pg.pw" >"$WORK/pgserver.log" 2>&1 &
	local pgpid=$!
	PIDS+=("$pgpid")
	for _ in $(seq 1 300); do [ -s "$WORK/pg.url" ] && break; sleep 0.1; done
	[ -s "$WORK/pg.url" ] || { echo "bench: PostgreSQL did not start:" >&2; cat "$WORK/pgserver.log" >&2; exit 1; }
	local url; url=$(cat "$WORK/pg.url")
	url=${url//&/\\&} # sed's replacement below
	# The same storm against one server on SQLite, for the row next to it.
	local cfg1="$WORK/storm-lite.yaml"
	pxa_config "$cfg1" authoritative "$n" ignore storm
	start_pxa "$cfg1"
	local out1; out1=$(inns "$CL" "$WORK/bin/storm" -n "$n" -spread 10s -ranges 4 2>>"$WORK/storm-errors.log") || true
	stop "$PXA_PID"
	row "$n machines within 10 s, one segment, one server, SQLite" \
		"all called back after $(kv all_done_s <<<"$out1") s; p50 $(kv p50_s <<<"$out1") s, p99 $(kv p99_s <<<"$out1") s; errors $(kv errors <<<"$out1")" "-" "-" "the reference for the rows below"
	# Two servers on PostgreSQL, one per segment, half the machines each.
	# storm leaves its leased addresses on eth0; the next run's server
	# hands out the same ones.
	inns "$CL" ip addr flush dev eth0
	inns "$CL" ip addr add 10.77.0.2/16 dev eth0
	local cfga="$WORK/storm-pg-a.yaml" cfgb="$WORK/storm-pg-b.yaml"
	pxa_config "$cfga" authoritative "$half" ignore storm
	pxa_config "$cfgb" authoritative "$half" ignore storm
	sed -i "s|^  max_installs: 2|  max_installs: 2\n  database: $url\n  database_password_file: $WORK/pg.pw\n  id: seg-a|" "$cfga"
	sed -i -e "s|^  max_installs: 2|  max_installs: 2\n  database: $url\n  database_password_file: $WORK/pg.pw\n  id: seg-b|" \
		-e 's/10\.77\./10.78./g' -e 's/52:54:01:/52:54:02:/' "$cfgb"
	start_pxa "$cfga"
	local pa=$PXA_PID
	ip netns exec "$SRV2" "$PXA_BIN" serve --config "$cfgb" >"$WORK/pxa-b.log" 2>&1 &
	local pb=$!
	PIDS+=("$pb")
	for _ in $(seq 1 300); do inns "$CL2" curl -fsS -o /dev/null http://10.78.0.1:8080/healthz 2>/dev/null && break; sleep 0.1; done
	reset_hwm "$pa" "$pb"
	local c0; c0=$(cpu_s "$pa" "$pb")
	inns "$CL" "$WORK/bin/storm" -n "$half" -spread 10s -ranges 4 >"$WORK/storm-a.out" 2>>"$WORK/storm-errors.log" &
	local sa=$!
	inns "$CL2" "$WORK/bin/storm" -n "$half" -spread 10s -ranges 4 -mac-prefix 52:54:02 >"$WORK/storm-b.out" 2>>"$WORK/storm-errors.log" || true
	wait "$sa" || true
	local cpu; cpu=$(sub "$(cpu_s "$pa" "$pb")" "$c0")
	local hwm; hwm=$(hwm_mb "$pa" "$pb")
	stop "$pa"; stop "$pb"; stop "$pgpid"
	local oa ob; oa=$(cat "$WORK/storm-a.out"); ob=$(cat "$WORK/storm-b.out")
	row "$n machines within 10 s, two segments, two servers, one PostgreSQL" \
		"segment A: all called back after $(kv all_done_s <<<"$oa") s, p50 $(kv p50_s <<<"$oa") s, p99 $(kv p99_s <<<"$oa") s, errors $(kv errors <<<"$oa"); segment B: after $(kv all_done_s <<<"$ob") s, p50 $(kv p50_s <<<"$ob") s, p99 $(kv p99_s <<<"$ob") s, errors $(kv errors <<<"$ob")" \
		"both servers: peak RSS $hwm MB, CPU $cpu s" "-" "target: 0 errors"
	table "Boot storm: two servers on PostgreSQL next to one on SQLite (bench/run.sh storm-pg)" "servers"
	if [ -s "$WORK/storm-errors.log" ]; then echo; echo "storm errors:"; head -5 "$WORK/storm-errors.log"; fi
}

# UDP datagrams the server namespace dropped because a socket's receive
# buffer was full: a DHCP loop that stalls shows up here.
udp_rcvbuf_errors() { inns "$SRV" awk '/^Udp:/ && $2 ~ /^[0-9]/ {print $6}' /proc/net/snmp; }

bench_storm() {
	local n=${STORM_N:-500} cfg="$WORK/storm.yaml"
	pxa_config "$cfg" authoritative "$n" ignore storm
	start_pxa "$cfg"
	reset_hwm "$PXA_PID"
	local c0; c0=$(cpu_s "$PXA_PID")
	local out rb0; rb0=$(udp_rcvbuf_errors)
	out=$(inns "$CL" "$WORK/bin/storm" -n "$n" -spread 10s -ranges 4 2>>"$WORK/storm-errors.log") || true
	local cpu; cpu=$(sub "$(cpu_s "$PXA_PID")" "$c0")
	local hwm; hwm=$(hwm_mb "$PXA_PID")
	local rb; rb=$(($(udp_rcvbuf_errors) - rb0))
	echo "$out cpu_s=$cpu hwm_mb=$hwm udp_rcvbuf_drops=$rb" >>"$WORK/storm"
	stop "$PXA_PID"
	row "$n machines within 10 s, ${STORM_INITRD_MB:-64} MB initrd, 4 ranges" \
		"all called back after $(kv all_done_s <<<"$out") s; per machine p50 $(kv p50_s <<<"$out") s, p99 $(kv p99_s <<<"$out") s; errors $(kv errors <<<"$out"); DHCP retransmits $(kv dhcp_retransmits <<<"$out")" \
		"peak RSS $hwm MB, CPU $cpu s, UDP datagrams dropped for a full receive buffer: $rb" "-" "targets: 0 errors, RSS < 200 MB"
	table "Boot storm (bench/storm against pxe-anywhere alone)" "server"
	if [ -s "$WORK/storm-errors.log" ]; then echo; echo "storm errors:"; head -5 "$WORK/storm-errors.log"; fi
}

# All work happens inside main, which bash reads whole before running it,
# so editing this file during a run cannot change the running one.
main() {
	lab
	tools
	# Regular copies, served by all three TFTP servers: Debian's ipxe.efi
	# is a symlink into /boot, which tftpd-hpa's chroot (-s) cannot follow
	# and pxe-anywhere refuses (it leaves the root).
	mkdir -p "$WORK/tftproot"
	for f in undionly.kpxe ipxe.efi snponly.efi; do cp -L "$IPXE_DIR/$f" "$WORK/tftproot/"; done
	mkimage small 1 1
	case $MODE in http|all) mkimage big 8 "${HTTP_INITRD_MB:-300}" ;; esac
	case $MODE in storm|storm-pg|all) mkimage storm 8 "${STORM_INITRD_MB:-64}" ;; esac
	machine_info
	case $MODE in
	dhcp) bench_dhcp ;;
	tftp) bench_tftp ;;
	http) bench_http ;;
	storm) bench_storm ;;
	storm-pg) bench_storm_pg ;;
	all) bench_dhcp; bench_tftp; bench_http; bench_storm ;;
	esac
}

main "$@"; exit
