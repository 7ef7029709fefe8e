#!/usr/bin/env bash
# Installs the host packages Warren needs on Debian 12. Idempotent and quick when
# everything is already there.
set -euo pipefail

PACKAGES=(
  qemu-system-x86   # the VMM: QEMU's microvm machine (KVM or TCG)
  qemu-utils        # qemu-img, for disk overlays
  e2fsprogs         # mkfs.ext4 -d builds root images; debugfs reads them in tests
  busybox-static    # the tiny `busybox` image
  debootstrap       # the Debian-based catalog images
  iproute2          # taps and addresses
  nftables          # the workspace firewall
  ca-certificates
  curl
  lz4               # (debugging) lz4 -d of kernel payloads
  openssh-client    # ssh, ssh-keygen: the SSH gateway's tests
  openssl           # test certificates and s_client: the ACME tests
  pebble            # pebble and pebble-challtestsrv (test ACME CA, mock DNS): the ACME tests
)
# Node.js runs the oblien SDK compatibility tests; any Node >= 18 will do, so keep one
# the machine already has.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# apt-get download (guest kernel, busybox) needs package lists even when nothing was missing.
if ! apt-cache show linux-image-6.1.0-56-cloud-amd64 >/dev/null 2>&1; then
  apt-get update -q
fi
