#!/usr/bin/env bash
# Installs everything the tests need, then runs the whole test suite.
#
# Debian packages (iptables, iproute2 for the capture and network-namespace
# tests, dnsperf for the benchmark smoke test; nsd, unbound and ldnsutils for
# the DNSSEC conformance lab) are installed with apt-get when missing and we
# are root. Debian's kubectl (package kubernetes-client), which checks the test
# Kubernetes API server, is downloaded and unpacked into .cache/kubectl/ instead
# of installed, so that it cannot clash with another kubectl on the machine. Without them those tests skip with a reason, except the conformance
# tests, which fail when we are root (this script should have installed them).
# Python packages go into .venv beside this file. meshdns itself is installed
# from its wheel (not editable), so that the integration tests run it as it
# ships; the unit tests import the source tree. Extra arguments go to pytest:
# ./test.sh tests/unit runs the fast tests only.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    for pair in iptables:iptables iproute2:ip dnsperf:dnsperf \
        nsd:nsd unbound:unbound ldnsutils:ldns-signzone; do
        command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "test.sh: installing ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ! -x .cache/kubectl/root/usr/bin/kubectl ]; then
        echo "test.sh: unpacking Debian's kubernetes-client into .cache/kubectl"
        mkdir -p .cache/kubectl
        (cd .cache/kubectl && rm -f kubernetes-client_*.deb \
            && { apt-get download kubernetes-client >/dev/null 2>&1 \
                 || { apt-get update -qq >/dev/null \
                      && apt-get download kubernetes-client >/dev/null; }; } \
            && dpkg-deb -x kubernetes-client_*.deb root)
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check '.[test]'
exec .venv/bin/python -m pytest "$@"
