#!/usr/bin/env bash
# The oblien client compatibility tests: installs oblien@2.4.0 (pinned by
# package-lock.json) and runs Node's test runner against a real `warren server`.
#   WARREN_BIN=/path/to/warren tests/compat/run.sh
set -euo pipefail
cd "$(dirname "$0")"
: "${WARREN_BIN:?set WARREN_BIN to the warren binary}"
npm ci --no-audit --no-fund --loglevel=error >&2
# Top-level tests of a file run one after another.
exec node --test ./*.test.mjs
