#!/usr/bin/env bash
# meshdns beside dnsmasq, unbound (one thread) and stock `twistd dns`, on
# loopback, with the same 1,000 local names and the same upstreams.
# See bench/README.md for what is measured and how to read the table.
#
#   bench/run.sh                 # the full benchmark (as root: installs packages)
#   bench/run.sh --smoke         # 2 s against meshdns alone (CI); installs nothing
#   bench/run.sh --workloads forward   # the forward workload alone
#   bench/run.sh --workloads down --servers "meshdns dnsmasq unbound"
#                                # the first of two upstreams blackholed
#
# Options:
#   --duration N        seconds of each saturation run (default 10)
#   --light-duration N  seconds of each 300 qps latency run (default 20)
#   --servers "A B"     servers to measure (default "meshdns dnsmasq unbound twistd")
#   --workloads "A B"   workloads to run (default "local upstream nxdomain forward";
#                       "down" is run only when named)
#   --no-table-build    skip the 1k/10k/100k table build measurement
#   --no-wait           do not wait for the machine to be idle first
#   --out FILE          also write the report to FILE (Markdown)
#   --json FILE         also write the parsed figures to FILE
#   --keep              keep the scratch folder (configs, logs, raw dnsperf output)
# Environment: PYTHON, the interpreter with meshdns installed (default: .venv,
# created and filled like test.sh does).
#
# Everything listens on 127.0.0.x only; the upstreams are the fake one
# (tests/support/fakeupstream.py) on 127.0.0.153:53 for the cached workloads, and NSD
# on 127.0.0.163:53 for the forward and down workloads, and for down a blackhole
# (bench/blackhole.py) on 127.0.0.173:53 before it. Every process this script starts
# is stopped by its PID when it exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

SMOKE=0
DURATION=10
LIGHT_DURATION=20
SERVERS="meshdns dnsmasq unbound twistd"
WORKLOADS="local upstream nxdomain forward"
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
        --workloads) WORKLOADS=$2; shift ;;
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
for workload in $WORKLOADS; do
    case "$workload" in
        local|upstream|nxdomain|forward|down) ;;
        *) echo "run.sh: unknown workload $workload (local upstream nxdomain forward down)" >&2; exit 2 ;;
    esac
done

# True if workload $1 is to be run.
has_workload() { case " $WORKLOADS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

HOSTS=1000
UPSTREAM_ADDRESS=127.0.0.153
UPSTREAM_PORT=53
# The forward workload's upstream: NSD, authoritative for fwd.bench. with a
# wildcard. Port 53, because stock Twisted's client always uses port 53.
FORWARD_NS=127.0.0.163
FORWARD_NS_PORT=53
# The down workload's first upstream, which reads every query and answers none;
# NSD is its second.
BLACKHOLE=127.0.0.173
BLACKHOLE_PORT=53
# Names in the forward workload's saturation file, per second of the run:
# more than any server forwards (unbound, the fastest, about 33,000/s on a
# 2-core machine), because dnsperf reads it once (-n 1) and stops at its end.
FORWARD_NAMES_PER_SECOND=60000
PORT=5300
# Every server instance's address. Each server runs twice at most: NAME for
# local, upstream and nxdomain, forwarding to the fake upstream; NAME-fwd for
# forward, forwarding to NSD (meshdns and stock twistd dns have one upstream
# list for every name, so a per-zone upstream cannot be the same for all).
declare -A ADDRESS=([meshdns]=127.0.0.154 [dnsmasq]=127.0.0.155 [unbound]=127.0.0.156 [twistd]=127.0.0.157
                    [meshdns-fwd]=127.0.0.164 [dnsmasq-fwd]=127.0.0.165 [unbound-fwd]=127.0.0.166
                    [twistd-fwd]=127.0.0.167
                    [meshdns-down]=127.0.0.174 [dnsmasq-down]=127.0.0.175 [unbound-down]=127.0.0.176)
MAIN=0
for workload in local upstream nxdomain; do has_workload "$workload" && MAIN=1; done

log() { echo "run.sh: $*" >&2; }

# --- what we need -----------------------------------------------------------

if [ "$SMOKE" = 0 ]; then
    missing=()
    pairs=(dnsperf:dnsperf dnsmasq-base:dnsmasq unbound:unbound)
    if has_workload forward || has_workload down; then pairs+=(nsd:nsd); fi
    for pair in "${pairs[@]}"; do
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
        # resolver (with root hints), and nsd's a system server on port 53,
        # on hosts where services start.
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

# Servers on core 0, dnsperf (and the upstreams) on core 1.
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

# The PIDs of what is left of NSD, found by its config file (unique to this
# run): NSD forks into xfrd, main and server processes, and the one we
# started (xfrd) may be gone while a server child it restarted lingers.
nsd_pids() {
    local file pid
    for file in /proc/[0-9]*/cmdline; do
        pid=${file#/proc/}
        pid=${pid%/cmdline}
        if { tr '\0' ' ' < "$file"; } 2>/dev/null | grep -qF -- "-c $WORK/nsd.conf"; then
            echo "$pid"
        fi
    done
    return 0
}

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
    if [ -n "${PID[nsd]:-}" ]; then
        for pid in $(nsd_pids); do kill -TERM "$pid" 2>/dev/null || true; done
        for _ in $(seq 30); do [ -z "$(nsd_pids)" ] && break; sleep 0.1; done
        for pid in $(nsd_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    fi
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

FORWARD_NAMES=0
FORWARD_LIGHT_NAMES=0
if has_workload forward || has_workload down; then
    FORWARD_NAMES=$((DURATION * FORWARD_NAMES_PER_SECOND))
    # The latency run sends 300 a second; half as many again to spare.
    FORWARD_LIGHT_NAMES=$((LIGHT_DURATION * 450 + 1000))
fi
"$PYTHON" bench/gen_entries.py --hosts "$HOSTS" --out "$WORK" --servers \
    --forward-names "$FORWARD_NAMES" --forward-light-names "$FORWARD_LIGHT_NAMES" \
    --forward-ns "$FORWARD_NS"

if [ "$SMOKE" = 1 ]; then
    ADDRESS[meshdns]=127.0.0.1
    PORT=$(free_port 127.0.0.1)
elif has_workload upstream || has_workload nxdomain; then
    start upstream "${CLIENT_CPU[@]}" "$PYTHON" tests/support/fakeupstream.py \
        --address "$UPSTREAM_ADDRESS" --port "$UPSTREAM_PORT"
    for _ in $(seq 100); do grep -q '^READY' "$WORK/upstream.log" && break; alive upstream; sleep 0.1; done
    grep -q '^READY' "$WORK/upstream.log" || { log "fake upstream not ready"; exit 1; }
fi

# NSD's queries received so far (its own count, read over its control socket).
nsd_queries() {
    nsd-control -c "$WORK/nsd.conf" stats_noreset | sed -n 's/^num\.queries=//p'
}

if has_workload forward || has_workload down; then
    mkdir -p "$WORK/nsd"
    cat > "$WORK/nsd.conf" <<EOF
server:
    ip-address: $FORWARD_NS
    port: $FORWARD_NS_PORT
    server-count: 1
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "$WORK"
    database: ""
    zonelistfile: "$WORK/nsd/zone.list"
    xfrdfile: "$WORK/nsd/xfrd.state"
    xfrdir: "$WORK/nsd"
    pidfile: ""
    logfile: "$WORK/nsd/nsd.log"
    verbosity: 0
    # The answer and the SOA only: no NS and glue in every reply.
    minimal-responses: yes
    # No response rate limiting: every query comes from 127.0.0.x, and NSD
    # would otherwise limit that /24 to 200 answers a second.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: yes
    control-interface: $WORK/nsd/control.sock
zone:
    name: fwd.bench.
    zonefile: fwd.bench.zone
EOF
    start nsd "${CLIENT_CPU[@]}" nsd -d -c "$WORK/nsd.conf"
    for _ in $(seq 100); do nsd_queries >/dev/null 2>&1 && break; alive nsd; sleep 0.1; done
    nsd_queries >/dev/null || { log "NSD not ready; its log:"; cat "$WORK/nsd/nsd.log" >&2; exit 1; }
fi

# The datagrams the blackhole received so far (it writes its count on SIGUSR1).
blackhole_queries() {
    rm -f "$WORK/blackhole.count"
    kill -USR1 "${PID[blackhole]}"
    for _ in $(seq 50); do [ -s "$WORK/blackhole.count" ] && break; sleep 0.02; done
    cat "$WORK/blackhole.count"
}

if has_workload down; then
    start blackhole "${CLIENT_CPU[@]}" "$PYTHON" bench/blackhole.py --address "$BLACKHOLE" \
        --port "$BLACKHOLE_PORT" --count-file "$WORK/blackhole.count"
    for _ in $(seq 100); do grep -q '^READY' "$WORK/blackhole.log" && break; alive blackhole; sleep 0.1; done
    grep -q '^READY' "$WORK/blackhole.log" || { log "blackhole not ready"; exit 1; }
fi

printf '# meshdns bench: no nameservers, no search list\n' > "$WORK/empty-resolv.conf"

# Start instance $1 of server $2, forwarding what it does not answer itself
# to $3 port $4; with $5 and $6, to $5 port $6 first, then to $3 port $4
# (the down workload: the first upstream never answers).
start_server() {
    local name=$1 server=$2 upstream=$3 upstream_port=$4 first=${5:-} first_port=${6:-}
    local address=${ADDRESS[$name]}
    local meshdns_first="" dnsmasq_first=() unbound_first=""
    if [ -n "$first" ]; then
        meshdns_first="\"$first:$first_port\", "
        dnsmasq_first=(--server="$first#$first_port")
        unbound_first="forward-addr: $first@$first_port"
    fi
    case "$server" in
    meshdns)
        cat > "$WORK/$name.yaml" <<EOF
listen: {address: $address, port: $PORT}
upstream:
  servers: [$meshdns_first"$upstream:$upstream_port"]
  resolv_conf: $WORK/empty-resolv.conf
mesh: {search: [], ttl: 30}
entries: [$WORK/entries]
cache: {max_entries: 100000}
admin: {port: 0}
EOF
        start "$name" "${SERVER_CPU[@]}" "${TWISTD[@]}" meshdns --config "$WORK/$name.yaml"
        ;;
    dnsmasq)
        start "$name" "${SERVER_CPU[@]}" dnsmasq --keep-in-foreground --conf-file=/dev/null \
            --pid-file= --log-facility=- --bind-interfaces --listen-address="$address" \
            --port="$PORT" --no-resolv --no-hosts --no-poll \
            "${dnsmasq_first[@]}" --server="$upstream#$upstream_port" --addn-hosts="$WORK/hosts" \
            --local-ttl=30 --cache-size=10000
        ;;
    unbound)
        cat > "$WORK/$name.conf" <<EOF
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
# Everything goes to the upstreams: the root hints are never used.
forward-zone:
    name: "."
    $unbound_first
    forward-addr: $upstream@$upstream_port
EOF
        start "$name" "${SERVER_CPU[@]}" unbound -d -c "$WORK/$name.conf"
        ;;
    twistd)
        # Stock Twisted's client reads port-53 nameserver lines only: hence
        # both upstreams on port 53.
        [ "$upstream_port" = 53 ] || { log "stock twistd dns needs an upstream on port 53"; exit 2; }
        [ -z "$first" ] || { log "the down workload does not run stock twistd dns"; exit 2; }
        printf 'nameserver %s\n' "$upstream" > "$WORK/$name-resolv.conf"
        start "$name" "${SERVER_CPU[@]}" "${TWISTD[@]}" --logfile="$WORK/$name.log" dns \
            --interface "$address" --port "$PORT" --bindzone "$WORK/bench.internal.zone" \
            --cache --recursive --resolv-conf "$WORK/$name-resolv.conf"
        ;;
    *) log "unknown server $server"; exit 2 ;;
    esac
}

INSTANCES=()
for server in $SERVERS; do
    if [ "$MAIN" = 1 ]; then
        start_server "$server" "$server" "$UPSTREAM_ADDRESS" "$UPSTREAM_PORT"
        INSTANCES+=("$server")
    fi
    if has_workload forward; then
        start_server "$server-fwd" "$server" "$FORWARD_NS" "$FORWARD_NS_PORT"
        INSTANCES+=("$server-fwd")
    fi
    if has_workload down && [ "$server" != twistd ]; then
        start_server "$server-down" "$server" "$FORWARD_NS" "$FORWARD_NS_PORT" \
            "$BLACKHOLE" "$BLACKHOLE_PORT"
        INSTANCES+=("$server-down")
    fi
done

# Run bench/probe.py against instance $1 (the rest: its options).
probe() {
    "${CLIENT_CPU[@]}" "$PYTHON" bench/probe.py --server "${ADDRESS[$1]}" --port "$PORT" \
        --data "$WORK" --hosts "$HOSTS" "${@:2}"
}

for name in "${INSTANCES[@]}"; do
    probe "$name" --wait-only || { alive "$name"; exit 1; }
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
    echo "workloads: $WORKLOADS"
    if has_workload forward; then
        echo "forward: -n 1 over $FORWARD_NAMES fresh names (saturation)," \
            "$FORWARD_LIGHT_NAMES (latency); upstream $(nsd -v 2>&1 | head -1)" \
            "on $FORWARD_NS:$FORWARD_NS_PORT, core ${CLIENT_CPU[2]:-any}"
    fi
    if has_workload down; then
        echo "down: the forward workload's names, upstreams $BLACKHOLE:$BLACKHOLE_PORT" \
            "(blackholed) then NSD on $FORWARD_NS:$FORWARD_NS_PORT"
    fi
} > "$RESULTS/machine.txt"

# dnsperf against instance $1 (the rest: its options).
dnsperf_to() {
    local name=$1; shift
    "${CLIENT_CPU[@]}" dnsperf -s "${ADDRESS[$name]}" -p "$PORT" "$@"
}

# utime + stime, in clock ticks, of process $1 and all its descendants (NSD
# does its work in a forked child; a process's threads are in its own figure).
tree_ticks() {
    local stat fields child total=0
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return 0; }
    # The fields after "(comm)", which may hold spaces: utime and stime are
    # fields 14 and 15 of the line, 12 and 13 of these.
    read -r -a fields <<< "${stat##*) }"
    total=$((fields[11] + fields[12]))
    local children
    if [ -e "/proc/$1/task/$1/children" ]; then
        children=$(cat /proc/"$1"/task/*/children 2>/dev/null || true)
    else  # a kernel without CONFIG_PROC_CHILDREN
        children=$(ps -o pid= --ppid "$1" || true)
    fi
    for child in $children; do
        total=$((total + $(tree_ticks "$child")))
    done
    echo "$total"
}

# The saturation run of instance $1 under workload $2 (the rest: dnsperf's
# options), into $RESULTS/SERVER.WORKLOAD.sat.txt; beside it, .cpu: the
# server's CPU over the run, dnsperf's, for forward and down NSD's CPU and
# count, and for down the blackhole's count.
saturate() {
    local name=$1 workload=$2; shift 2
    local base=${name%-fwd}
    local out=$RESULTS/${base%-down}.$workload
    local server0 server1 nsd0=0 nsd1=0 queries0=0 queries1=0 wall client_user client_sys
    local dead0=0 dead1=0
    if [ "$workload" = forward ] || [ "$workload" = down ]; then
        nsd0=$(tree_ticks "${PID[nsd]}")
        queries0=$(nsd_queries)
    fi
    if [ "$workload" = down ]; then dead0=$(blackhole_queries); fi
    server0=$(tree_ticks "${PID[$name]}")
    local TIMEFORMAT='%R %U %S'
    { time dnsperf_to "$name" "$@" > "$out.sat.txt" 2>&3; } 3>&2 2> "$out.time"
    server1=$(tree_ticks "${PID[$name]}")
    if [ "$workload" = forward ] || [ "$workload" = down ]; then
        nsd1=$(tree_ticks "${PID[nsd]}")
        queries1=$(nsd_queries)
    fi
    if [ "$workload" = down ]; then dead1=$(blackhole_queries); fi
    read -r wall client_user client_sys < "$out.time"
    {
        echo "clk_tck=$(getconf CLK_TCK)"
        echo "wall_s=$wall"
        echo "server_ticks=$((server1 - server0))"
        echo "client_s=$(awk -v u="$client_user" -v s="$client_sys" 'BEGIN { print u + s }')"
        if [ "$workload" = forward ] || [ "$workload" = down ]; then
            echo "upstream_ticks=$((nsd1 - nsd0))"
            echo "upstream_queries=$((queries1 - queries0))"
            echo "names=$FORWARD_NAMES"
        fi
        if [ "$workload" = down ]; then echo "dead_queries=$((dead1 - dead0))"; fi
    } > "$out.cpu"
    rm -f "$out.time"
}

for server in $SERVERS; do
    for workload in $WORKLOADS; do
        log "$server: $workload"
        if [ "$workload" = forward ]; then
            # Fresh names only, each asked once: every query is a miss at the
            # server and goes to NSD. The probe asks names of its own.
            name=$server-fwd
            probe "$name" --workloads forward || exit 1
            saturate "$name" forward -d "$WORK/forward.sat.txt" -n 1 -c 4 -q 100 -l "$DURATION"
            dnsperf_to "$name" -d "$WORK/forward.light.txt" -n 1 -c 1 -Q 300 \
                -l "$LIGHT_DURATION" -v > "$RESULTS/$server.forward.light.txt"
            alive "$name"
            cp "/proc/${PID[$name]}/status" "$RESULTS/$server.forward.rss"
            continue
        fi
        if [ "$workload" = down ]; then
            # As forward, with the blackhole as the first upstream. The probe's
            # few queries are each server's first misses: the runs measure
            # what comes after them.
            name=$server-down
            if [ -z "${ADDRESS[$name]:-}" ]; then log "$server: no down workload"; continue; fi
            probe "$name" --workloads forward || exit 1
            saturate "$name" down -d "$WORK/forward.sat.txt" -n 1 -c 4 -q 100 -l "$DURATION"
            dnsperf_to "$name" -d "$WORK/forward.light.txt" -n 1 -c 1 -Q 300 \
                -l "$LIGHT_DURATION" -v > "$RESULTS/$server.down.light.txt"
            alive "$name"
            cp "/proc/${PID[$name]}/status" "$RESULTS/$server.down.rss"
            continue
        fi
        data=$WORK/$workload.txt
        if [ "$workload" != local ]; then
            # Warm pass: every name asked once, slowly enough for the upstream.
            dnsperf_to "$server" -d "$data" -n 1 -c 1 -q 20 -Q 1000 -t 5 > "$WORK/$server.$workload.warm.txt"
            probe "$server" --workloads "$workload" || exit 1
        else
            probe "$server" --workloads local || exit 1
        fi
        saturate "$server" "$workload" -d "$data" -c 4 -q 100 -l "$DURATION"
        if [ "$workload" != local ]; then
            # Negative answers live 60 s: warm again before the latency run.
            dnsperf_to "$server" -d "$data" -n 1 -c 1 -q 20 -Q 1000 -t 5 > /dev/null
        fi
        dnsperf_to "$server" -d "$data" -c 1 -Q 300 -l "$LIGHT_DURATION" -v \
            > "$RESULTS/$server.$workload.light.txt"
        alive "$server"
    done
    if [ "$MAIN" = 1 ]; then cp "/proc/${PID[$server]}/status" "$RESULTS/$server.rss"; fi
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
