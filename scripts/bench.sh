#!/usr/bin/env bash
# Boot benchmark (see bench/src/main.rs). Extra arguments go to warren-bench, e.g.
#   scripts/bench.sh --images busybox --runs 10
# WARREN_BENCH_KERNEL=/path/to/vmlinux also measures a custom kernel against Debian's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
bindir=$(scripts/build.sh --release)
cargo build -q --release -p warren-bench
export WARREN_AGENT="$PWD/target/x86_64-unknown-linux-gnu/agent/warren-agent"
exec target/release/warren-bench "$@"
