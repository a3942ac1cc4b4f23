#!/usr/bin/env bash
# Installs redis-cli and redis-benchmark (Debian package redis-tools) when they are missing.
# Called by .ci/run and the benchmark scripts; a no-op when the tools are already there.
set -euo pipefail
if command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; then
  exit 0
fi
. "$(dirname "$0")/lib/apt.sh"
apt_root install-redis-tools
apt_install redis-tools
redis-cli --version
