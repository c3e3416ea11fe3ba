#!/usr/bin/env bash
# Everything migsafe needs on a fresh Debian bookworm machine: system packages (apt-get), npm
# dependencies, the build (TypeScript + C++ addon) and the test guest. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config            # the addon
  libzstd-dev liblz4-dev zlib1g-dev           # its codecs
  redis-server redis-tools                    # the checkpoint store (and redis-benchmark)
  qemu-system-x86 qemu-utils                  # stock QEMU 7.2: the scan dirty source
  busybox-static cpio kmod gcc libc6-dev      # the test guest (test/guest/build.sh)
  iproute2 socat
  tcpdump                                     # test/e2e/migration-tls: a capture of the migration stream
  clang libclang-rt-14-dev                    # scripts/fuzz.sh (libFuzzer), run by npm test
  libvirt-daemon-system libvirt-clients       # attach --domain (docs/libvirt.md), test/e2e: a real libvirtd
  # the patched QEMU (qemu-patches/build.sh --debian)
  ninja-build meson python3-venv flex bison libglib2.0-dev libpixman-1-dev libfdt-dev
  libslirp-dev libgnutls28-dev dpkg-dev xz-utils qemu-system-data seabios ipxe-qemu
)
want=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || want+=("$p")
done
# `apt-get source qemu` needs a deb-src entry next to Debian's deb one.
if [ -f /etc/apt/sources.list.d/debian.sources ] && ! grep -q 'deb-src' /etc/apt/sources.list.d/debian.sources; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
  need_update=1
fi
if ((${#want[@]})) || [ -n "${need_update:-}" ]; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "setup: installing ${want[*]}"
  $SUDO apt-get update -q
  if ((${#want[@]})); then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${want[@]}"
  fi
fi

# The distribution's redis-server service is not needed: migsafe and the tests start their own.
if command -v systemctl >/dev/null && systemctl is-active -q redis-server 2>/dev/null; then
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

# `npm install`, not `npm ci`: npm 11 writes lock files without the other platforms' optional
# packages of msgpackr-extract and then refuses them in `npm ci`; install keeps the locked versions.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --no-fund --no-audit
fi
npm run build
bash test/guest/build.sh
# QEMU with the fault-tolerance dirty bitmap, from Debian's source package (cached: a second
# run takes a second). Installed under .cache/qemu; stock QEMU stays the default binary.
bash qemu-patches/build.sh --debian >/dev/null
