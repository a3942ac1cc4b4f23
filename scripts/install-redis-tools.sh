#!/usr/bin/env bash
# Installs redis-cli and redis-benchmark (Debian package redis-tools) when they are missing.
# Called by .ci/run and the benchmark scripts; a no-op when the tools are already there.
set -euo pipefail
if command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-redis-tools: need root (or sudo) to apt-get install redis-tools" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq redis-tools >/dev/null
redis-cli --version
