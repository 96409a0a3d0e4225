#!/usr/bin/env bash
# Installs Prometheus and promtool from Debian's `prometheus` package, only when they are missing.
#
#   sudo ops/install_prometheus.sh      # or as root in CI; prints nothing when already installed
#
# The package's own service is kept from starting (policy-rc.d for the duration of the install) and,
# should one be running afterwards anyway, stopped: cadence's tests start their own Prometheus servers.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

need() {
    echo "install_prometheus: $1" >&2
    echo "install_prometheus: install it yourself with: sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus" >&2
    echo "install_prometheus: or download prometheus + promtool from https://prometheus.io/download/ and put both on PATH." >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || need "prometheus/promtool are missing and this script must run as root to install them."
command -v apt-get >/dev/null 2>&1 || need "prometheus/promtool are missing and apt-get is not available on this machine."

# Keep the package's init script / unit from starting a server during the install (invoke-rc.d honours
# policy-rc.d exit code 101). Leave an existing policy-rc.d (e.g. Docker images ship one) untouched.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    need "apt-get could not install the prometheus package (output above)."
fi
rm -f "$log"

# Whatever the init system did, no background Prometheus is left running from the package.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
    || need "the prometheus package installed but prometheus/promtool are not on PATH."
