#!/usr/bin/env bash
# Installs what Warren needs on a fresh Debian 12 host, builds and installs it, fetches
# the guest kernel and the default images, runs a first workspace, then runs the
# all-in-one server (API on 127.0.0.1:8484, gateway on 127.0.0.1:8485).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
command -v cargo >/dev/null || { echo "Rust is needed: install it with rustup (https://rustup.rs)"; exit 1; }
bindir=$(scripts/build.sh --release)
install -D -m 0755 "$bindir/warren" /usr/local/bin/warren
install -D -m 0755 target/x86_64-unknown-linux-gnu/agent/warren-agent /usr/local/lib/warren/warren-agent
echo "installed /usr/local/bin/warren and /usr/local/lib/warren/warren-agent"

scripts/build-kernel.sh   # the minimal guest kernel (the faster default); cached
warren image-build busybox
warren image-build debian-12
echo "first workspace:"
warren run --image debian-12 -- sh -c 'echo "hello from $(hostname): $(uname -sr), Debian $(cat /etc/debian_version)"'
# Warren itself: API, gateway and node agent in one process (state in /var/lib/warren).
exec warren server
