#!/usr/bin/env bash
# Installs redis-py (the `redis` package from PyPI, pinned) into a virtualenv at
# ${RAFTKV_PYENV:-target/pyenv} (under cargo's target directory, so out of the repository),
# for the redis-py compatibility test (crates/raftkv/tests/redis_py.rs). Called by .ci/run; a
# no-op when the virtualenv already has that version. Installs python3-venv when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_PY_VERSION=8.1.0
PYENV="${RAFTKV_PYENV:-target/pyenv}"
if [ -x "$PYENV/bin/python" ] \
  && "$PYENV/bin/python" -c "import redis, sys; sys.exit(redis.__version__ != '$REDIS_PY_VERSION')" 2>/dev/null; then
  exit 0
fi
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  . scripts/lib/apt.sh
  apt_root install-redis-py
  apt_install python3-venv
fi
mkdir -p "$(dirname "$PYENV")"
python3 -m venv "$PYENV"
"$PYENV/bin/pip" install --quiet --disable-pip-version-check "redis==$REDIS_PY_VERSION"
"$PYENV/bin/python" -c "import redis; print('redis-py', redis.__version__)"
