#!/usr/bin/env bash
# Installs what the nemesis test's network faults need when missing: iptables and nftables
# (partitions, packet loss), iproute2 (`ip netns`, veth, bridge) and procps (`sysctl`).
# Called by .ci/run; a no-op when everything is already there.
set -euo pipefail
if command -v iptables >/dev/null 2>&1 && command -v nft >/dev/null 2>&1 \
  && command -v ip >/dev/null 2>&1 && command -v sysctl >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-netns-tools: need root (or sudo) to apt-get install iptables nftables iproute2 procps" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq iptables nftables iproute2 procps >/dev/null
iptables --version
