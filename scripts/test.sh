#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, lints, and runs every test
# (unit tests and tests that boot real microVMs). Needs root (taps, nftables).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The `ws` WebSocket client of tests/compat, which the edge's Rust test drives too.
[ -d tests/compat/node_modules/ws ] || (cd tests/compat && npm ci --no-audit --no-fund --loglevel=error >&2)
bindir=$(scripts/build.sh)
export WARREN_AGENT="$PWD/target/x86_64-unknown-linux-gnu/agent/warren-agent"
export WARREN_CACHE_DIR="${WARREN_CACHE_DIR:-/var/cache/warren}"

cargo fmt --all --check
cargo clippy -q --workspace --all-targets -- -D warnings

# The minimal guest kernel (the default when built): built once per config, cached.
scripts/build-kernel.sh >/dev/null

# Warm the caches the VM tests share (kernel, busybox and debian-12 images) once, so
# parallel tests do not all wait on the same first build.
"$bindir/warren" image-build busybox >/dev/null
"$bindir/warren" image-build debian-12 >/dev/null

# A failing cargo test must not stop the script (set -e with pipefail would): the
# compat tests still run, and the status is reported at the end.
rust_status=0
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/warren-test.log || rust_status=${PIPESTATUS[0]}

# The official oblien client (npm, pinned) against a real `warren server`.
compat_status=0
WARREN_BIN="$bindir/warren" tests/compat/run.sh 2>&1 | tee /tmp/warren-compat.log || compat_status=$?
[ "$rust_status" -eq 0 ] || exit "$rust_status"
exit "$compat_status"
