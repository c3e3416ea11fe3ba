#!/usr/bin/env bash
# Build migsafe's patched QEMU (x86_64 system emulator only) and install it under a prefix
# that migsafe finds. Two sources, one series each (see README.md):
#
#   build.sh [--tarball PATH|URL]   official QEMU 8.1.2 release + qemu-patches/8.1.2/
#   build.sh --debian [--source DIR] Debian bookworm's qemu 7.2 source + qemu-patches/7.2-debian/
#   build.sh --tree DIR --series DIR  any unpacked tree + any series (porting/verification)
#
# Options: --prefix DIR (default $MIGSAFE_QEMU_PREFIX or <repo>/.cache/qemu)
#          --workdir DIR (default <repo>/.cache/qemu-build), --jobs N (default 2), --force
#
# The build is cached: <prefix>/.migsafe-build records a hash of the series, this script and
# the source's identity; when it matches and the binary exists, nothing is rebuilt. That is
# what lets CI and the tests call this script unconditionally.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

# sha256 of https://download.qemu.org/qemu-8.1.2.tar.xz. Not downloaded on the machine where
# this was written (offline); taken from two independent public build recipes (a Nix flake's
# fetchurl hash and a Yocto SRC_URI[sha256sum]) that agree. The check below refuses any other file.
QEMU_812_URL="https://download.qemu.org/qemu-8.1.2.tar.xz"
QEMU_812_SHA256="541526a764576eb494d2ff5ec46aeb253e62ea29035d1c23c0a8af4e6cd4f087"

mode=release tarball="" source_dir="" tree="" series=""
prefix="${MIGSAFE_QEMU_PREFIX:-$repo/.cache/qemu}"
workdir="${MIGSAFE_QEMU_WORKDIR:-$repo/.cache/qemu-build}"
jobs="${MIGSAFE_QEMU_JOBS:-2}" force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --debian) mode=debian ;;
    --tarball) tarball="$2"; shift ;;
    --source) source_dir="$2"; shift ;;
    --tree) mode=tree; tree="$2"; shift ;;
    --series) series="$2"; shift ;;
    --prefix) prefix="$2"; shift ;;
    --workdir) workdir="$2"; shift ;;
    --jobs|-j) jobs="$2"; shift ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

case "$mode" in
  release) series="${series:-$here/8.1.2}" ;;
  debian)  series="${series:-$here/7.2-debian}" ;;
  tree)    [ -n "$series" ] || die "--tree needs --series DIR" ;;
esac
[ -d "$series" ] || die "no series directory $series"
series="$(cd "$series" && pwd)"
mkdir -p "$workdir" "$prefix"
workdir="$(cd "$workdir" && pwd)"; prefix="$(cd "$prefix" && pwd)"

# --- identify the source (cheaply: this runs on every test start) ----------------------------
case "$mode" in
  release)
    if [ -z "$tarball" ]; then
      tarball="$workdir/qemu-8.1.2.tar.xz"
      [ -f "$tarball" ] || tarball="$QEMU_812_URL"
    fi
    source_id="qemu-8.1.2 sha256:$QEMU_812_SHA256" ;;
  debian)
    if [ -n "$source_dir" ]; then
      source_id="debian-dir $(cd "$source_dir" && pwd) $(head -1 "$source_dir/debian/changelog")"
    else
      ver="$(apt-cache showsrc qemu 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1)"
      [ -n "$ver" ] || die "apt-cache showsrc qemu found nothing: add a deb-src entry (README.md) and apt-get update"
      source_id="debian qemu $ver"
    fi ;;
  tree) tree="$(cd "$tree" && pwd)"; source_id="tree $tree $(git -C "$tree" rev-parse HEAD 2>/dev/null || echo nogit)" ;;
esac

patches=( "$series"/*.patch )
[ -e "${patches[0]}" ] || patches=()
stamp_in="$(printf '%s\n' "$source_id"; cat "$0"; for p in "${patches[@]}"; do basename "$p"; cat "$p"; done)"
stamp="$(printf '%s' "$stamp_in" | sha256sum | cut -d' ' -f1)"
if [ "$force" = 0 ] && [ -x "$prefix/bin/qemu-system-x86_64" ] && [ -f "$prefix/.migsafe-build" ] \
   && [ "$(cat "$prefix/.migsafe-build")" = "$stamp" ]; then
  log "up to date: $prefix/bin/qemu-system-x86_64 ($source_id, ${#patches[@]} patches)"
  echo "$prefix/bin/qemu-system-x86_64"
  exit 0
fi

# --- unpack a fresh tree (patches always go onto pristine source) --------------------------
src="$workdir/src-$mode"
rm -rf "$src" "$workdir/unpack"
mkdir -p "$workdir/unpack"
case "$mode" in
  release)
    if [[ "$tarball" == http*://* ]]; then
      log "downloading $tarball"
      curl -fL --retry 3 -o "$workdir/qemu-8.1.2.tar.xz.part" "$tarball" \
        || die "download failed; pass --tarball /path/to/qemu-8.1.2.tar.xz"
      mv "$workdir/qemu-8.1.2.tar.xz.part" "$workdir/qemu-8.1.2.tar.xz"
      tarball="$workdir/qemu-8.1.2.tar.xz"
    fi
    got="$(sha256sum "$tarball" | cut -d' ' -f1)"
    [ "$got" = "$QEMU_812_SHA256" ] || die "$tarball has sha256 $got, expected $QEMU_812_SHA256"
    tar -C "$workdir/unpack" -xJf "$tarball"
    mv "$workdir/unpack/qemu-8.1.2" "$src" ;;
  debian)
    if [ -n "$source_dir" ]; then
      cp -a "$source_dir" "$src"
    else
      # dpkg-source unpacks and applies Debian's own patches (that is the tree the series targets).
      (cd "$workdir/unpack" && apt-get source -qq qemu >/dev/null) || die "apt-get source qemu failed"
      mv "$workdir/unpack"/qemu-*/ "$src"
    fi
    rm -rf "$src/.pc" ;;
  tree)
    if git -C "$tree" rev-parse HEAD >/dev/null 2>&1; then
      mkdir -p "$src" && git -C "$tree" archive HEAD | tar -C "$src" -x
    else
      cp -a "$tree" "$src"
    fi ;;
esac
rm -rf "$workdir/unpack"

# --- apply the series with git am (a throwaway repository inside the build tree) ------------
if [ ${#patches[@]} -gt 0 ]; then
  log "applying ${#patches[@]} patches from $series"
  (
    cd "$src"
    export GIT_AUTHOR_NAME=migsafe-build GIT_AUTHOR_EMAIL=build@migsafe.invalid
    export GIT_COMMITTER_NAME=migsafe-build GIT_COMMITTER_EMAIL=build@migsafe.invalid
    git init -q . && git add -A . >/dev/null && git commit -qm base --no-verify
    git am -q --whitespace=nowarn "${patches[@]}"
  ) || die "the series does not apply to $source_id"
fi

# --- configure + build + install -------------------------------------------------------------
# Minimal x86_64 system emulator: KVM and TCG, fdt from the system, slirp (-netdev user, for
# the output-commit tests), gnutls (tls-creds-x509: agents with --tls-* encrypt the migration
# stream), no docs/tests/GUI.
# Any subproject the tree lacks (8.1 trees without keycodemapdb, say) would need network;
# we disable everything that could want one.
cd "$src"
mkdir -p build && cd build
log "configuring ($source_id) -> $prefix"
# Firmware: the installed tree's own first (the 8.1.2 tarball ships blobs), then Debian's
# (qemu-system-data, seabios, ipxe-qemu): the dfsg source package has no prebuilt BIOS.
fwpath="$prefix/share/qemu:/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu"
../configure --prefix="$prefix" --firmwarepath="$fwpath" \
  --target-list=x86_64-softmmu --without-default-features \
  --enable-kvm --enable-tcg --enable-fdt=system --enable-slirp --enable-gnutls --disable-docs --disable-werror \
  >configure.log 2>&1 || { tail -40 configure.log >&2; die "configure failed (build/configure.log)"; }
start=$(date +%s)
log "building with -j$jobs"
ninja -j"$jobs" qemu-system-x86_64 >ninja.log 2>&1 || { grep -B2 -A20 -m3 'error' ninja.log >&2 || tail -40 ninja.log >&2; die "build failed ($src/build/ninja.log)"; }
log "built in $(( $(date +%s) - start ))s"

# Install only what migsafe uses: the binary and the firmware blobs the tree ships (the 8.1.2
# tarball has them; Debian's dfsg source has none and uses the system's, see --firmwarepath).
# Not `ninja install`: it would first build every default target (tests, ~900 more steps).
mkdir -p "$prefix/bin" "$prefix/share/qemu"
install -m 0755 qemu-system-x86_64 "$prefix/bin/qemu-system-x86_64"
for f in ../pc-bios/*.bin ../pc-bios/*.rom ../pc-bios/*.img ../pc-bios/*.fd ../pc-bios/*.dtb \
         pc-bios/optionrom/*.bin; do
  [ -f "$f" ] && install -m 0644 "$f" "$prefix/share/qemu/"
done
printf '%s\n' "$stamp" >"$prefix/.migsafe-build"
printf '%s\n' "$source_id" >"$prefix/.migsafe-source"
log "installed $prefix/bin/qemu-system-x86_64"
echo "$prefix/bin/qemu-system-x86_64"
