#!/usr/bin/env bash
# Builds the `warren` binary and the statically linked guest agent.
#   scripts/build.sh [--release]
# Prints the directory holding `warren`. The static guest agent is at
# target/x86_64-unknown-linux-gnu/agent/warren-agent (its own target directory, so a
# plain `cargo build`/`cargo test`, which builds a dynamic debug warren-agent into
# target/debug, never overwrites it).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
args=()
if [ "${1:-}" = "--release" ]; then profile=release; args=(--release); fi

# The guest agent is PID 1 of every VM: link it statically (there is no musl target
# here, so glibc with crt-static) and build it small.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile agent \
  -p warren-agent --target x86_64-unknown-linux-gnu >&2
cargo build -q "${args[@]}" -p warren-cli >&2
echo "$PWD/target/$profile"
