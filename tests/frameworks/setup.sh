#!/usr/bin/env bash
# Installs what the framework tests need, pinned, once per lock file: the npm packages
# (package-lock.json, `npm ci`) into tests/frameworks/node_modules, and the Python clients
# (requirements.txt) into a virtualenv. A package that cannot be had fails the setup: the
# tests never skip. Sourced by common.sh; safe to run again (it does nothing when current).
set -euo pipefail
FRAMEWORKS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRAMEWORKS_VENV=${FRAMEWORKS_VENV:-${TMPDIR:-/tmp}/wsrouter-frameworks-venv}

stamp() { sha256sum "$1" | cut -c1-16; }

npm_stamp="$FRAMEWORKS/node_modules/.wsrouter-lock-$(stamp "$FRAMEWORKS/package-lock.json")"
if [[ ! -e $npm_stamp ]]; then
  (cd "$FRAMEWORKS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  touch "$npm_stamp"
fi

py_stamp="$FRAMEWORKS_VENV/.wsrouter-req-$(stamp "$FRAMEWORKS/requirements.txt")"
if [[ ! -e $py_stamp ]]; then
  python3 -m venv "$FRAMEWORKS_VENV"
  "$FRAMEWORKS_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$FRAMEWORKS/requirements.txt"
  touch "$py_stamp"
fi
export FRAMEWORKS FRAMEWORKS_VENV
