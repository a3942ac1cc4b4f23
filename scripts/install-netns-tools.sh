#!/usr/bin/env bash
# Installs iptables and nftables (the nemesis test's partitions and packet loss) when missing.
# Called by .ci/run; a no-op when both are already there. `ip` (iproute2) must exist already.
set -euo pipefail
if command -v iptables >/dev/null 2>&1 && command -v nft >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-netns-tools: need root (or sudo) to apt-get install iptables nftables" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq iptables nftables >/dev/null
iptables --version
