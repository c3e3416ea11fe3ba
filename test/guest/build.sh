#!/bin/bash
# Builds the migsafe test guest: Debian's cloud kernel + an initramfs with busybox,
# the virtio-net modules and the self-checking workloads (test/guest/src).
#
#   bash test/guest/build.sh            # build if inputs changed, else "up to date"
#   bash test/guest/build.sh --force    # rebuild
#   bash test/guest/build.sh --update   # look for a newer kernel/busybox with apt first
#
# Without --update, a built guest stays on the packages it was built from (named in
# out/manifest.json, kept in out/debs): the up-to-date check needs no apt and takes ~0.5 s.
#
# Outputs (gitignored): test/guest/out/{vmlinuz,initrd.img,manifest.json}
# Needs: Debian bookworm (or later), apt access to Debian mirrors. Installs, if missing
# and run as root: gcc libc6-dev cpio kmod busybox-static (busybox is taken from the
# downloaded .deb, not from the host).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${MIGSAFE_GUEST_OUT:-$HERE/out}
KPKG_META=${MIGSAFE_GUEST_KERNEL:-linux-image-cloud-amd64}
FORCE=0 UPDATE=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --update) UPDATE=1 ;;
    *) echo "usage: build.sh [--force] [--update]" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT/debs"
exec 9>"$OUT/.lock"
flock 9 # concurrent builds (parallel test runs) wait for each other

log() { echo "build.sh: $*" >&2; }

# ---- host tools
need=()
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/include/stdio.h ] && { [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/libc.a ]; } || need+=(libc6-dev)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || [ -x /sbin/depmod ] || need+=(kmod)
command -v flock >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { log "missing tools: ${need[*]} (run as root or install them)"; exit 1; }
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi
DEPMOD=$(command -v depmod || echo /sbin/depmod)

# ---- fetch a .deb into $OUT/debs (cached), print its path
fetch_deb() { # <package>
  local pkg=$1 f
  f=$(ls -1 "$OUT/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$f" ]; then
    ( cd "$OUT/debs" && { apt-get download "$pkg" >&2 2>/dev/null || { apt-get update >&2 && apt-get download "$pkg" >&2; }; } ) || true
    f=$(ls -1 "$OUT/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)
  fi
  if [ -z "$f" ]; then # last resort: apt's own cache
    f=$(ls -1 /var/cache/apt/archives/"${pkg}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$f" ]; then cp "$f" "$OUT/debs/" && f="$OUT/debs/$(basename "$f")"; fi
  fi
  [ -n "$f" ] || { log "cannot get $pkg (apt-get download failed)"; return 1; }
  echo "$f"
}

inputs_hash() { # <kernel deb> <busybox deb>
  {
    # Relative names: the same sources in another clone or worktree are the same inputs.
    (cd "$HERE" && sha256sum build.sh init.sh src/*)
    sha256sum "$1" "$2" | awk '{print $1}'
    gcc --version | head -n1
  } | sha256sum | awk '{print $1}'
}
manifest_field() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" "$OUT/manifest.json"; }

# ---- fast path: same packages as the last build, same sources
if [ $FORCE = 0 ] && [ $UPDATE = 0 ] && [ -f "$OUT/manifest.json" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
  KDEB="$OUT/debs/$(manifest_field kernelPackage)"
  BDEB="$OUT/debs/$(manifest_field busyboxPackage)"
  if [ -f "$KDEB" ] && [ -f "$BDEB" ] && [ "$(inputs_hash "$KDEB" "$BDEB")" = "$(manifest_field inputs)" ]; then
    log "up to date ($OUT)"
    exit 0
  fi
fi

# ---- which kernel: the package the metapackage depends on (falls back to what is cached)
KPKG=$(apt-cache depends "$KPKG_META" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}' || true)
if [ -z "$KPKG" ]; then
  apt-get update >&2 || true
  KPKG=$(apt-cache depends "$KPKG_META" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}' || true)
fi
if [ -n "$KPKG" ]; then
  KDEB=$(fetch_deb "$KPKG") || KDEB=
fi
if [ -z "${KDEB:-}" ]; then
  KDEB=$(ls -1 "$OUT"/debs/linux-image-*-cloud-amd64_*.deb /var/cache/apt/archives/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$KDEB" ] || { log "no kernel package: need apt access to Debian for $KPKG_META"; exit 1; }
  log "using cached kernel package $KDEB"
fi
BDEB=$(fetch_deb busybox-static)

# ---- inputs hash: scripts, sources, the two .debs, the compiler
INPUTS=$(inputs_hash "$KDEB" "$BDEB")
if [ $FORCE = 0 ] && [ -f "$OUT/manifest.json" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ] &&
  [ "$INPUTS" = "$(manifest_field inputs)" ]; then
  log "up to date ($OUT)"
  exit 0
fi

log "building guest from $(basename "$KDEB") and $(basename "$BDEB")"
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

dpkg-deb -x "$KDEB" "$WORK/k"
dpkg-deb -x "$BDEB" "$WORK/bb"
KVER=$(ls -1 "$WORK/k/lib/modules" | head -n1)
[ -n "$KVER" ] && [ -f "$WORK/k/boot/vmlinuz-$KVER" ] || { log "unexpected kernel package layout"; exit 1; }
"$DEPMOD" -b "$WORK/k" "$KVER"

# ---- initramfs tree
R=$WORK/root
mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules/"$KVER"}
cp "$WORK/bb/bin/busybox" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done
install -m 0755 "$HERE/init.sh" "$R/init"

# modules: virtio-net (+ virtio_pci) with dependencies, in load order
MODDEP="$WORK/k/lib/modules/$KVER/modules.dep"
declare -A SEEN=()
ORDER=()
visit() { # <module path relative to lib/modules/KVER>
  local m=$1 deps i
  local -a arr
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN[$m]=1
  deps=$(awk -F': *' -v m="$m" '$1 == m {print $2; exit}' "$MODDEP")
  read -r -a arr <<<"$deps"
  for ((i = ${#arr[@]} - 1; i >= 0; i--)); do visit "${arr[$i]}"; done
  ORDER+=("$m")
}
for name in virtio virtio_ring virtio_pci failover net_failover virtio_net; do
  path=$(awk -F: -v n="$name" '{ b=$1; sub(/.*\//, "", b); sub(/\.ko(\.[a-z]+)?$/, "", b); if (b == n) { print $1; exit } }' "$MODDEP")
  if [ -z "$path" ]; then
    grep -qE "/$name\.ko" "$WORK/k/lib/modules/$KVER/modules.builtin" && continue # built in
    log "module $name not found in $KVER"
    exit 1
  fi
  visit "$path"
done
: >"$R/lib/modules/migsafe-load-order"
for m in "${ORDER[@]}"; do
  src="$WORK/k/lib/modules/$KVER/$m"
  dst_rel=${m%.xz}
  dst_rel=${dst_rel%.zst}
  dst_rel=${dst_rel%.gz}
  mkdir -p "$(dirname "$R/lib/modules/$KVER/$dst_rel")"
  case "$m" in
    *.xz) xz -dc "$src" >"$R/lib/modules/$KVER/$dst_rel" ;;
    *.zst) zstd -qdc "$src" >"$R/lib/modules/$KVER/$dst_rel" ;;
    *.gz) gzip -dc "$src" >"$R/lib/modules/$KVER/$dst_rel" ;;
    *) cp "$src" "$R/lib/modules/$KVER/$dst_rel" ;;
  esac
  echo "$dst_rel" >>"$R/lib/modules/migsafe-load-order"
done

# workloads
gcc -static -O2 -Wall -Wextra -Werror -o "$R/bin/migsafe-wl" "$HERE/src/migsafe-wl.c"
strip "$R/bin/migsafe-wl"
if grep -qa -e 'MIGSAFE-PROGRESS' -e 'MIGSAFEP' "$R/bin/migsafe-wl"; then
  log "a magic appears in plain form in migsafe-wl: the RAM image would hold stale copies"
  exit 1
fi

# device nodes (the kernel opens /dev/console before running /init)
if [ "$(id -u)" = 0 ]; then
  mknod -m 600 "$R/dev/console" c 5 1
  mknod -m 666 "$R/dev/null" c 1 3
fi

# ---- pack (uncompressed: faster to unpack under TCG than to decompress)
# reproducible: fixed mtimes, sorted names, no inode numbers from the build host
find "$R" -exec touch -h -d @0 {} +
( cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible -R 0:0 ) >"$WORK/initrd.img"
cp "$WORK/k/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

cat >"$WORK/manifest.json" <<EOF
{
  "kernelPackage": "$(basename "$KDEB")",
  "busyboxPackage": "$(basename "$BDEB")",
  "kernelVersion": "$KVER",
  "modules": [$(printf '"%s",' "${ORDER[@]}" | sed 's/,$//')],
  "workloads": ["idle", "wset", "qsort", "kv", "udp"],
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "inputs": "$INPUTS"
}
EOF
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
mv -f "$WORK/manifest.json" "$OUT/manifest.json" # written last: marks the build complete
log "built $OUT/vmlinuz ($KVER) and $OUT/initrd.img ($(du -h "$OUT/initrd.img" | cut -f1))"
