#!/usr/bin/env bash
# meshdns beside dnsmasq, unbound (one thread) and stock `twistd dns`, on
# loopback, with the same 1,000 local names and the same (fake) upstream.
# See bench/README.md for what is measured and how to read the table.
#
#   bench/run.sh                 # the full benchmark (as root: installs packages)
#   bench/run.sh --smoke         # 2 s against meshdns alone (CI); installs nothing
#
# Options:
#   --duration N        seconds of each saturation run (default 10)
#   --light-duration N  seconds of each 300 qps latency run (default 20)
#   --servers "A B"     servers to measure (default "meshdns dnsmasq unbound twistd")
#   --no-table-build    skip the 1k/10k/100k table build measurement
#   --no-wait           do not wait for the machine to be idle first
#   --out FILE          also write the report to FILE (Markdown)
#   --json FILE         also write the parsed figures to FILE
#   --keep              keep the scratch folder (configs, logs, raw dnsperf output)
# Environment: PYTHON, the interpreter with meshdns installed (default: .venv,
# created and filled like test.sh does).
#
# Everything listens on 127.0.0.x only; the only upstream is the fake one
# (tests/fakeupstream.py) on 127.0.0.153:53. Every process this script starts
# is stopped by its PID when it exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

SMOKE=0
DURATION=10
LIGHT_DURATION=20
SERVERS="meshdns dnsmasq unbound twistd"
WORKLOADS="local upstream nxdomain"
TABLE_BUILD=1
WAIT_IDLE=1
OUT=""
JSON=""
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --duration) DURATION=$2; shift ;;
        --light-duration) LIGHT_DURATION=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --no-table-build) TABLE_BUILD=0 ;;
        --no-wait) WAIT_IDLE=0 ;;
        --out) OUT=$2; shift ;;
        --json) JSON=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$SMOKE" = 1 ]; then
    SERVERS="meshdns"
    WORKLOADS="local"
    DURATION=2
    LIGHT_DURATION=1
    TABLE_BUILD=0
    WAIT_IDLE=0
fi

HOSTS=1000
UPSTREAM_ADDRESS=127.0.0.153
UPSTREAM_PORT=53
PORT=5300
declare -A ADDRESS=([meshdns]=127.0.0.154 [dnsmasq]=127.0.0.155 [unbound]=127.0.0.156 [twistd]=127.0.0.157)

log() { echo "run.sh: $*" >&2; }

# --- what we need -----------------------------------------------------------

if [ "$SMOKE" = 0 ]; then
    missing=()
    for pair in dnsperf:dnsperf dnsmasq-base:dnsmasq unbound:unbound; do
        command -v "${pair#*:}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair#*:}" ] \
            || missing+=("${pair%%:*}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            log "missing ${missing[*]}; run as root to install them"; exit 1
        fi
        log "installing ${missing[*]}"
        # dnsmasq-base is the binary without the system service, and the
        # policy-rc.d guard keeps unbound's package from starting a system
        # resolver (with root hints) on hosts where services start.
        guard=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            guard=1
        fi
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        [ "$guard" = 0 ] || rm -f /usr/sbin/policy-rc.d
    fi
else
    command -v dnsperf >/dev/null || { log "dnsperf is not installed"; exit 3; }
fi
PATH=$PATH:/usr/sbin

if [ -z "${PYTHON:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
    PYTHON=$REPO/.venv/bin/python
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TWISTD=("$PYTHON" -c "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()" -n --pidfile=)

# Servers on core 0, dnsperf (and the fake upstream) on core 1.
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 0)
    CLIENT_CPU=(taskset -c 1)
else
    log "fewer than 2 CPUs (or no taskset): not pinning"
    SERVER_CPU=()
    CLIENT_CPU=()
fi

# --- start and stop ---------------------------------------------------------

WORK=$(mktemp -d /tmp/meshdns-bench.XXXXXX)
chmod 755 "$WORK"  # dnsmasq reads its hosts file after dropping privileges
RESULTS=$WORK/results
mkdir -p "$RESULTS"
declare -A PID=()

cleanup() {
    local name pid
    for name in "${!PID[@]}"; do
        pid=${PID[$name]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        pid=${PID[$name]}
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start "$@" in the background as server $1, logging to $WORK/$1.log.
start() {
    local name=$1; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
}

# Fail with the server's log if it is gone.
alive() {
    if ! kill -0 "${PID[$1]}" 2>/dev/null; then
        log "$1 exited; its log:"; cat "$WORK/$1.log" >&2; exit 1
    fi
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("'"$1"'", 0)); print(s.getsockname()[1])'
}

"$PYTHON" bench/gen_entries.py --hosts "$HOSTS" --out "$WORK" --servers

if [ "$SMOKE" = 1 ]; then
    ADDRESS[meshdns]=127.0.0.1
    PORT=$(free_port 127.0.0.1)
else
    start upstream "${CLIENT_CPU[@]}" "$PYTHON" tests/fakeupstream.py \
        --address "$UPSTREAM_ADDRESS" --port "$UPSTREAM_PORT"
    for _ in $(seq 100); do grep -q '^READY' "$WORK/upstream.log" && break; alive upstream; sleep 0.1; done
    grep -q '^READY' "$WORK/upstream.log" || { log "fake upstream not ready"; exit 1; }
fi

printf '# meshdns bench: no nameservers, no search list\n' > "$WORK/empty-resolv.conf"

for server in $SERVERS; do
    address=${ADDRESS[$server]}
    case "$server" in
    meshdns)
        cat > "$WORK/meshdns.yaml" <<EOF
listen: {address: $address, port: $PORT}
upstream:
  servers: ["$UPSTREAM_ADDRESS:$UPSTREAM_PORT"]
  resolv_conf: $WORK/empty-resolv.conf
mesh: {search: [], ttl: 30}
entries: [$WORK/entries]
cache: {max_entries: 100000}
admin: {port: 0}
EOF
        start meshdns "${SERVER_CPU[@]}" "${TWISTD[@]}" meshdns --config "$WORK/meshdns.yaml"
        ;;
    dnsmasq)
        start dnsmasq "${SERVER_CPU[@]}" dnsmasq --keep-in-foreground --conf-file=/dev/null \
            --pid-file= --log-facility=- --bind-interfaces --listen-address="$address" \
            --port="$PORT" --no-resolv --no-hosts --no-poll \
            --server="$UPSTREAM_ADDRESS#$UPSTREAM_PORT" --addn-hosts="$WORK/hosts" \
            --local-ttl=30 --cache-size=10000
        ;;
    unbound)
        cat > "$WORK/unbound.conf" <<EOF
server:
    interface: $address@$PORT
    port: $PORT
    num-threads: 1
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$WORK"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    # No validator: nothing to fetch, no trust anchor.
    module-config: "iterator"
    # test. is one of unbound's default static zones (RFC 6761); the fake
    # upstream's zone is below it.
    local-zone: "test." nodefault
    local-zone: "bench.internal." transparent
    msg-cache-size: 32m
    rrset-cache-size: 64m
    prefetch: no
    qname-minimisation: no
    include: "$WORK/unbound-local.conf"
remote-control:
    control-enable: no
# Everything goes to the fake upstream: the root hints are never used.
forward-zone:
    name: "."
    forward-addr: $UPSTREAM_ADDRESS@$UPSTREAM_PORT
EOF
        start unbound "${SERVER_CPU[@]}" unbound -d -c "$WORK/unbound.conf"
        ;;
    twistd)
        # Stock Twisted's client reads port-53 nameserver lines only: hence
        # the fake upstream on port 53.
        printf 'nameserver %s\n' "$UPSTREAM_ADDRESS" > "$WORK/twistd-resolv.conf"
        start twistd "${SERVER_CPU[@]}" "${TWISTD[@]}" --logfile="$WORK/twistd.log" dns \
            --interface "$address" --port "$PORT" --bindzone "$WORK/bench.internal.zone" \
            --cache --recursive --resolv-conf "$WORK/twistd-resolv.conf"
        ;;
    *) log "unknown server $server"; exit 2 ;;
    esac
done

probe() {
    "${CLIENT_CPU[@]}" "$PYTHON" bench/probe.py --server "${ADDRESS[$1]}" --port "$PORT" \
        --data "$WORK" --hosts "$HOSTS" "${@:2}"
}

for server in $SERVERS; do
    probe "$server" --wait-only || { alive "$server"; exit 1; }
done

# --- measure ----------------------------------------------------------------

# Wait (at most 10 minutes) for the 1-minute load average to drop below 0.5.
if [ "$WAIT_IDLE" = 1 ]; then
    for _ in $(seq 10); do
        load=$(cut -d' ' -f1 /proc/loadavg)
        awk -v l="$load" 'BEGIN { exit !(l < 0.5) }' && break
        log "load average $load: waiting 60 s for the machine to calm down"
        sleep 60
    done
fi

{
    echo "date:    $(date)"
    echo "kernel:  $(uname -sr)"
    echo "nproc:   $(nproc)"
    lscpu | head -n 15
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "dnsperf $(dnsperf -H 2>&1 | sed -n "s/^Version //p" | head -1)," \
        "saturation: -c 4 -q 100 -l $DURATION; latency: -c 1 -Q 300 -l $LIGHT_DURATION"
} > "$RESULTS/machine.txt"

dnsperf_to() {
    local server=$1; shift
    "${CLIENT_CPU[@]}" dnsperf -s "${ADDRESS[$server]}" -p "$PORT" "$@"
}

for server in $SERVERS; do
    for workload in $WORKLOADS; do
        data=$WORK/$workload.txt
        log "$server: $workload"
        if [ "$workload" != local ]; then
            # Warm pass: every name asked once, slowly enough for the upstream.
            dnsperf_to "$server" -d "$data" -n 1 -c 1 -q 20 -Q 1000 -t 5 > "$WORK/$server.$workload.warm.txt"
            probe "$server" --workloads "$workload" || exit 1
        else
            probe "$server" --workloads local || exit 1
        fi
        dnsperf_to "$server" -d "$data" -c 4 -q 100 -l "$DURATION" \
            > "$RESULTS/$server.$workload.sat.txt"
        if [ "$workload" != local ]; then
            # Negative answers live 60 s: warm again before the latency run.
            dnsperf_to "$server" -d "$data" -n 1 -c 1 -q 20 -Q 1000 -t 5 > /dev/null
        fi
        dnsperf_to "$server" -d "$data" -c 1 -Q 300 -l "$LIGHT_DURATION" -v \
            > "$RESULTS/$server.$workload.light.txt"
        alive "$server"
    done
    cp "/proc/${PID[$server]}/status" "$RESULTS/$server.rss"
done
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/machine.txt"

if [ "$TABLE_BUILD" = 1 ]; then
    log "table build: 1k, 10k, 100k hosts"
    "${SERVER_CPU[@]}" "$PYTHON" bench/table_build.py --json > "$RESULTS/table_build.json"
fi

report_args=("$RESULTS")
[ -z "$JSON" ] || report_args+=(--json "$JSON")
"$PYTHON" bench/report.py "${report_args[@]}" | tee "$WORK/report.md"
[ -z "$OUT" ] || cp "$WORK/report.md" "$OUT"
