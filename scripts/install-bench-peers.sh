#!/usr/bin/env bash
# Installs what bench/compare runs next to RaftKV, from Debian packages, when missing:
# etcd (server + etcdctl), redis-server, redis-tools (redis-cli, redis-benchmark), and
# matplotlib for the chart. A no-op when everything is there.
set -euo pipefail
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
/usr/bin/python3 -c "import matplotlib" >/dev/null 2>&1 || need+=(python3-matplotlib)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "install-bench-peers: installing ${need[*]}"
. "$(dirname "$0")/lib/apt.sh"
apt_root install-bench-peers
# policy-rc.d keeps the packages from starting system-wide etcd/redis services.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt_install "${need[@]}"
