#!/usr/bin/env bash
# Installs what the nemesis test's network faults need when missing: iptables and nftables
# (partitions, packet loss), iproute2 (`ip netns`, veth, bridge) and procps (`sysctl`).
# Called by .ci/run; a no-op when everything is already there.
set -euo pipefail
if command -v iptables >/dev/null 2>&1 && command -v nft >/dev/null 2>&1 \
  && command -v ip >/dev/null 2>&1 && command -v sysctl >/dev/null 2>&1; then
  exit 0
fi
. "$(dirname "$0")/lib/apt.sh"
apt_root install-netns-tools
apt_install iptables nftables iproute2 procps
iptables --version
