#!/usr/bin/env bash
# Builds Warren's minimal guest kernel from Debian's linux-source-6.1 with
# guest/kernel/workspace.config merged over allnoconfig, and caches the vmlinux by the
# hash of (source version, config). Prints the vmlinux path.
#   scripts/build-kernel.sh            # build (or reuse) and print the path
# Only the benchmark and `--kernel` use it; the default kernel is Debian's.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${WARREN_CACHE_DIR:-/var/cache/warren}/kernel-custom"
pkg=linux-source-6.1
ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
[ -n "$ver" ] && [ "$ver" != "(none)" ] || { echo "apt-get update first: no candidate for $pkg" >&2; exit 1; }
key=$( (echo "$ver"; cat guest/kernel/workspace.config) | sha256sum | cut -c1-16)
out="$cache/$key/vmlinux"
if [ -f "$out" ]; then ln -sfn "$key" "$cache/current"; echo "$out"; exit 0; fi
# One build at a time (parallel CI steps, setup and test scripts).
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$out" ]; then ln -sfn "$key" "$cache/current"; echo "$out"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
need=()
for p in build-essential bc bison flex libelf-dev libssl-dev xz-utils cpio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then apt-get install -y -q --no-install-recommends "${need[@]}" >&2; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/warren-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$pkg=$ver" >&2 && dpkg -x ./*.deb x)
tar -C "$work" -xf "$work"/x/usr/src/linux-source-6.1.tar.xz
src="$work/linux-source-6.1"
make -C "$src" -s allnoconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" guest/kernel/workspace.config >&2
make -C "$src" -s olddefconfig >&2
# Report options the merge could not set (a typo or a missing dependency).
grep -E '^CONFIG_[A-Z0-9_]+=y' guest/kernel/workspace.config | while read -r line; do
  grep -qx "$line" "$src/.config" || echo "note: $line did not take" >&2
done
nice make -C "$src" -s -j"$(nproc)" vmlinux >&2
mkdir -p "$cache/$key"
cp "$src/vmlinux" "$out.tmp" && mv "$out.tmp" "$out"
cp "$src/.config" "$cache/$key/config"
# The node boots $cache/current/vmlinux when --kernel is auto or minimal.
ln -sfn "$key" "$cache/current"
echo "$out"
