#!/usr/bin/env bash
# Istio's "DNS Proxying" guide, reproduced with meshdns on this machine.
#
# Everything happens inside a throwaway network namespace that has only its
# own loopback interface, so nothing is sent anywhere else and the host's
# iptables, routes and resolv.conf are never touched:
#
#   - a stand-in for the cluster DNS (tests/support/fakeupstream.py) at 127.0.0.53,
#     the nameserver of the namespace's resolv.conf; it knows the two tcp-echo
#     services' real addresses, and nothing of the ServiceEntries;
#   - the two tcp-echo services of the guide, both on port 9000, at
#     127.0.0.21 and 127.0.0.22, answering with different prefixes;
#   - meshdns, as uid 1337 like Istio's sidecar, with the guide's
#     ServiceEntries (conf/entries/istio-dns-proxying.yaml) and its VIP
#     listeners on (Envoy's part of the guide);
#   - `meshdns capture install`: iptables sends the DNS traffic for
#     127.0.0.53 to meshdns, except meshdns's own (uid 1337), which goes on
#     to the real server.
#
# Then it asks with unmodified tools (getent, curl, Python's socket module),
# shows the guide's outputs, and cleans everything up on exit, even on error
# or Ctrl-C.
#
# Run as root, from anywhere:
#
#   sudo examples/walkthrough.sh
#   sudo PYTHON=/path/to/venv/bin/python examples/walkthrough.sh
#
# PYTHON is an interpreter that can import meshdns (default: the checkout's
# .venv, else python3). Needs ip (iproute2) and iptables. If no user has uid
# 1337, a system user meshdns-walkthrough is created for the run and removed
# at the end (twistd --uid needs a passwd entry).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
NS=meshdns-walkthrough-$$
PROXY_ID=1337
USER_NAME=meshdns-walkthrough
NAMESERVER=127.0.0.53
UPSTREAM_RECORDS=(
    --record tcp-echo.external-1.svc.cluster.local=127.0.0.21
    --record tcp-echo.external-2.svc.cluster.local=127.0.0.22
)

die() { echo "walkthrough: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run me as root (network namespaces and iptables need it)"
command -v ip >/dev/null || die "ip not found: install iproute2"
command -v iptables >/dev/null || die "iptables not found: install iptables"
"$PYTHON" -c "import meshdns_plugin, twisted" 2>/dev/null \
    || die "$PYTHON cannot import meshdns: set PYTHON to a Python that has it installed"
export PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH}

WORK=
PIDS=()
CREATED_USER=
cleanup() {
    set +e
    if [ -n "$WORK" ] && ip netns list | grep -qw "$NS"; then
        in_ns "$PYTHON" -c "$MESHDNS" capture remove --config "$WORK/meshdns.yaml" \
            --record "$WORK/capture.json" >/dev/null 2>&1
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    ip netns del "$NS" 2>/dev/null
    rm -rf "/etc/netns/$NS"
    rmdir /etc/netns 2>/dev/null
    [ -n "$WORK" ] && rm -rf "$WORK"
    [ -n "$CREATED_USER" ] && userdel "$USER_NAME"
    echo "== cleaned up: namespace $NS, /etc/netns/$NS, processes${CREATED_USER:+, user $USER_NAME}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { ip netns exec "$NS" "$@"; }
MESHDNS='import sys; from meshdns_plugin.cli import main; sys.exit(main())'
meshdns() { in_ns "$PYTHON" -c "$MESHDNS" "$@"; }
show() { echo "\$ $*"; "$@"; }               # a command, as typed
app() { echo "\$ $*"; in_ns "$@"; }           # an application in the namespace
app_python() { echo "\$ python3 -c '$1'"; in_ns "$PYTHON" -c "$1"; }
wait_for_line() {  # FILE PATTERN: wait up to 10 s for a line matching PATTERN
    for _ in $(seq 100); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "timed out waiting for '$2' in $1:$(echo; cat "$1")"
}

# -- set up --------------------------------------------------------------------
if ! getent passwd "$PROXY_ID" >/dev/null; then
    useradd --no-create-home --no-user-group --shell /usr/sbin/nologin \
        --uid "$PROXY_ID" "$USER_NAME"
    CREATED_USER=1
fi
ip netns add "$NS"
in_ns ip link set lo up
mkdir -p "/etc/netns/$NS"
printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$NAMESERVER" >"/etc/netns/$NS/resolv.conf"

WORK=$(mktemp -d /tmp/meshdns-walkthrough.XXXXXX)
chmod 755 "$WORK"
chown "$PROXY_ID:$PROXY_ID" "$WORK"  # meshdns, as uid 1337, reads and writes here
mkdir "$WORK/entries"
cp "$HERE/conf/entries/istio-dns-proxying.yaml" "$WORK/entries/"
: >"$WORK/resolv.conf"  # no search list

# Background processes start with `ip netns exec` itself, not through in_ns:
# $! is then the process's own PID (ip execs it), which cleanup can kill.
ip netns exec "$NS" "$PYTHON" "$HERE/tests/support/fakeupstream.py" --port 53 --address "$NAMESERVER" \
    "${UPSTREAM_RECORDS[@]}" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/upstream.log" '^READY '

for n in 1 2; do
    ip netns exec "$NS" "$PYTHON" "$HERE/tests/support/tcpecho.py" "127.0.0.2$n" 9000 "external-$n says:" \
        >"$WORK/echo-$n.log" 2>&1 &
    PIDS+=($!)
    wait_for_line "$WORK/echo-$n.log" '^ready'
done

cat >"$WORK/meshdns.yaml" <<EOF
listen: {address: 127.0.0.1, port: 15053}
upstream:
  servers: ["$NAMESERVER:53"]
  resolv_conf: $WORK/resolv.conf
admin: {port: 0}
vip_listeners: {enabled: true}
entries: [entries]
EOF

echo "== meshdns as uid $PROXY_ID in namespace $NS, DNS capture installed"
show meshdns capture install --config "$WORK/meshdns.yaml" \
    --resolv-conf "/etc/netns/$NS/resolv.conf" --vip-routes --record "$WORK/capture.json"
show meshdns capture show --config "$WORK/meshdns.yaml"
ip netns exec "$NS" \
    "$PYTHON" -c 'import sys; sys.argv[0] = "twistd"; from twisted.scripts.twistd import run; run()' \
    -n --pidfile= --uid "$PROXY_ID" --gid "$PROXY_ID" --logfile "$WORK/meshdns.log" \
    meshdns --config "$WORK/meshdns.yaml" >"$WORK/twistd.out" 2>&1 &
PIDS+=($!)
wait_for_line "$WORK/meshdns.log" 'MeshDNSServerFactory starting on'

echo
echo "== DNS capture in action: address.internal has addresses: [198.51.100.1]"
app getent hosts address.internal

echo
echo "== Address auto allocation: auto.internal gets a VIP from 240.240.0.0/16"
app_python 'import socket; print(socket.gethostbyname("auto.internal"))'
if command -v curl >/dev/null; then
    # Like the guide's curl: it reaches the VIP (meshdns then closes the
    # connection, since the stand-in DNS has no real auto.internal).
    app curl -sS -v --max-time 3 -4 http://auto.internal/ 2>&1 | grep -E '^\$|Trying|Connected|reply' || true
fi

echo
echo "== External TCP services without VIPs: one listener per VIP (istioctl pc listener)"
echo "\$ meshdns listeners | grep tcp-echo | awk '{printf \"ADDRESS=%s, DESTINATION=%s %s\\n\", \$1, \$4, \$5}'"
meshdns listeners --config "$WORK/meshdns.yaml" | grep tcp-echo \
    | awk '{printf "ADDRESS=%s, DESTINATION=%s %s\n", $1, $4, $5}'
echo
echo "Both on port 9000, each reaching its own backend:"
in_ns "$PYTHON" -c '
import socket
for n in (1, 2):
    name = f"tcp-echo.external-{n}.svc.cluster.local"
    with socket.create_connection((name, 9000), timeout=5) as conn:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        print(f"{name} -> {conn.getpeername()[0]}:9000: {conn.recv(100).decode()}")
'

echo
echo "== Names the mesh does not know are forwarded upstream"
app_python 'import socket; print(socket.gethostbyname("www.upstream.test"))'

echo
echo "== meshdns's log (VIP listeners)"
grep 'VIP listener' "$WORK/meshdns.log" | sed 's/^[^ ]* //'

echo
echo "== Clean-up: capture removed"
show meshdns capture remove --config "$WORK/meshdns.yaml" --record "$WORK/capture.json"
show meshdns capture show --config "$WORK/meshdns.yaml"
echo "Without capture, queries go straight to the cluster DNS, which knows no ServiceEntry:"
app getent hosts address.internal || echo "(exit code $?: not found)"
