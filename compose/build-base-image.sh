#!/usr/bin/env bash
# Make the local base image (default localhost/debian:bookworm) that compose/*.Dockerfile build
# FROM, with no container registry: debootstrap a minbase Debian 12 rootfs from the mirror this
# machine's apt already uses, clean it, `docker import` it.
# Does nothing when the image already exists: re-importing would create a new image id and
# throw away every build cache layered on top of it.
#   BASE_IMAGE=localhost/debian:bookworm   tag to create (fully qualified: nothing is ever pulled)
#   ROOTFS=/var/cache/sheepdog/rootfs-bookworm   debootstrap target, kept as a cache
#   MIRROR=http://deb.debian.org/debian   default: taken from the apt sources
#   FORCE=1   re-import even if the image exists
set -euo pipefail
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm}
ROOTFS=${ROOTFS:-/var/cache/sheepdog/rootfs-bookworm}
SUITE=bookworm

if [[ -z ${FORCE:-} ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "build-base-image: $BASE_IMAGE present" >&2
  exit 0
fi
if [[ -z ${MIRROR:-} ]]; then
  MIRROR=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [[ -z ${MIRROR:-} ]]; then
  MIRROR=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}
command -v debootstrap >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }

if [[ ! -x $ROOTFS/bin/bash || ! -f $ROOTFS/.sheepdog-rootfs-complete ]]; then
  echo "build-base-image: debootstrap $SUITE from $MIRROR into $ROOTFS" >&2
  rm -rf "$ROOTFS"
  mkdir -p "$(dirname "$ROOTFS")"
  # a flaky mirror connection should not fail a CI run: one more try from scratch
  if ! debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >&2; then
    echo "build-base-image: debootstrap failed; retrying once" >&2
    tail -5 "$ROOTFS/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >&2
  fi
  rm -f "$ROOTFS"/var/cache/apt/archives/*.deb
  rm -rf "$ROOTFS"/var/lib/apt/lists/*
  : >"$ROOTFS/etc/resolv.conf"
  rm -f "$ROOTFS/etc/hostname"
  cat >"$ROOTFS/etc/apt/sources.list" <<SRC
deb ${MIRROR} ${SUITE} main
deb ${MIRROR} ${SUITE}-updates main
deb ${MIRROR%/debian}/debian-security ${SUITE}-security main
SRC
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$ROOTFS/etc/apt/apt.conf.d/90norecommends"
  # keep images small: no docs or man pages from later apt-get installs
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
    >"$ROOTFS/etc/dpkg/dpkg.cfg.d/90nodoc"
  touch "$ROOTFS/.sheepdog-rootfs-complete"
fi
tar -C "$ROOTFS" --exclude=./.sheepdog-rootfs-complete -c . \
  | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
echo "build-base-image: $BASE_IMAGE imported" >&2
