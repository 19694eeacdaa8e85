#!/usr/bin/env bash
# Build, once, a cached aarch64 Debian userland that the integration tests use as an ARM "board".
#
# Usage: scripts/setup-arm64-rootfs.sh [DIR]        (default DIR: /var/cache/edgekit-tests/arm64-rootfs)
#        scripts/setup-arm64-rootfs.sh --packages-only   (only the Debian packages and binfmt: what a
#                                                        loopback sshd board without the rootfs needs)
#
# What is real: Debian bookworm arm64 binaries (debootstrap --arch=arm64), the rootfs's own python3,
# and the aarch64 wheels of numpy, ai-edge-litert and Pillow (the on-device runtime and its image preprocessing, see
# requirements-runtime.txt).
# What is simulated: the CPU. The host runs those binaries through qemu-user-static via binfmt_misc, so
# the rootfs is good for correctness checks only, never for timing.
#
# Idempotent and quick once built: DIR is (re)built only when it lacks the completion marker written as the
# last step (or the marker names an older recipe). A half-built tree is never used: the build happens in
# DIR.partial and is moved into place once verified. Must run as root (apt-get, mount, debootstrap, chroot).
# Quiet on success; on failure prints one line (with the path of the full log) and exits non-zero.
# Environment: EDGEKIT_DEBIAN_MIRROR overrides the Debian mirror (default: the one apt uses here).
set -euo pipefail

PACKAGES_ONLY=0
if [ "${1:-}" = --packages-only ]; then PACKAGES_ONLY=1; shift; fi
DIR="${1:-/var/cache/edgekit-tests/arm64-rootfs}"
DIR="${DIR%/}"
SUITE=bookworm
# bookworm ships glibc 2.36: wheels tagged manylinux_2_17 (manylinux2014) up to manylinux_2_36 run there.
GLIBC_MINOR_MAX=36
# Same pins as pyproject.toml: the board runs what the host converts and validates with.
WHEELS=("numpy>=2.0,<3" "ai-edge-litert>=2.3,<2.4" "pillow>=10,<13")
PACKAGES=(openssh-server openssh-client debootstrap qemu-user-static binfmt-support debian-archive-keyring)
MARKER=.edgekit-rootfs-complete
# Changing the recipe invalidates existing caches (they get rebuilt).
RECIPE="suite=$SUITE variant=minbase include=python3 wheels=${WHEELS[*]}"

LOG="$(mktemp /tmp/edgekit-arm64-rootfs.XXXXXX.log)"
die() { echo "setup-arm64-rootfs: $* (log: $LOG)" >&2; exit 1; }
log() { "$@" >>"$LOG" 2>&1; }
trap 'rc=$?; [ $rc -eq 0 ] && rm -f "$LOG"; exit $rc' EXIT

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, mount, debootstrap and chroot need it)"

ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # Other jobs on this machine may hold the dpkg lock: wait for it rather than fail.
  log apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive log apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

ensure_binfmt() {
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    log mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
  fi
  if [ "$(head -n1 "$entry" 2>/dev/null)" != enabled ]; then
    log update-binfmts --enable qemu-aarch64 || die "update-binfmts --enable qemu-aarch64 failed"
  fi
  [ "$(head -n1 "$entry" 2>/dev/null)" = enabled ] || die "$entry is not enabled"
}

# The mirror apt uses on this machine (deb822 .sources or one-line sources.list), else deb.debian.org.
debian_mirror() {
  if [ -n "${EDGEKIT_DEBIAN_MIRROR:-}" ]; then echo "$EDGEKIT_DEBIAN_MIRROR"; return; fi
  local uri
  uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v suite="$SUITE" '
      BEGIN { RS = "" }
      { uris = ""; ok = 0
        n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          if (lines[i] ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", lines[i]); split(lines[i], u, /[ \t]+/); uris = u[1] }
          if (lines[i] ~ /^Suites:/) { m = split(lines[i], s, /[ \t]+/); for (j = 2; j <= m; j++) if (s[j] == suite) ok = 1 }
        }
        if (ok && uris != "") { print uris; exit } }')"
  if [ -z "$uri" ]; then
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i < NF; i++) if ($i !~ /^\[/ && $(i+1) == suite) { print $i; exit } }')"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# Remove a tree without ever descending into something mounted under it (debootstrap mounts /proc, /sys).
remove_tree() {
  local tree="$1" m
  [ -e "$tree" ] || return 0
  for m in $(awk -v t="$tree/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r); do
    log umount -l "$m" || die "cannot unmount $m"
  done
  rm -rf --one-file-system "$tree" || die "cannot remove $tree"
}

cached() { [ -f "$DIR/$MARKER" ] && [ "$(cat "$DIR/$MARKER")" = "$RECIPE" ]; }

ensure_packages
ensure_binfmt
[ "$PACKAGES_ONLY" = 1 ] && exit 0

# sshd's ChrootDirectory wants every path component root-owned and not group/world-writable.
PARENT="$(dirname "$DIR")"
mkdir -p "$PARENT"
exec 9>"$PARENT/.$(basename "$DIR").lock"
flock -w 1800 9 || die "timed out waiting for another build of $DIR"

if cached; then
  [ "$(chroot "$DIR" /usr/bin/uname -m 2>>"$LOG")" = aarch64 ] || die "cached rootfs $DIR does not run aarch64 binaries"
  exit 0
fi

BUILD="$DIR.partial"
remove_tree "$BUILD"
MIRROR="$(debian_mirror)"
log debootstrap --arch=arm64 --variant=minbase --include=python3 "$SUITE" "$BUILD" "$MIRROR" \
  || die "debootstrap --arch=arm64 $SUITE from $MIRROR failed"

PY="$(basename "$(readlink -f "$BUILD/usr/bin/python3")")"          # e.g. python3.11
[[ "$PY" =~ ^python3\.[0-9]+$ ]] || die "no python3 in the rootfs (found '$PY')"
PYVER="${PY#python}"                                                  # 3.11
SITE="$BUILD/usr/local/lib/$PY/dist-packages"                       # on Debian's python3 sys.path
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 "$GLIBC_MINOR_MAX"); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
mkdir -p "$SITE"
log python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$SITE" "${PLATFORMS[@]}" --implementation cp --python-version "$PYVER" --abi "cp${PYVER/./}" \
  --only-binary=:all: "${WHEELS[@]}" || die "pip could not install aarch64 wheels of ${WHEELS[*]} for $PY"

ARCH="$(chroot "$BUILD" /usr/bin/python3 -c \
  'import platform, numpy, PIL; from ai_edge_litert.interpreter import Interpreter; print(platform.machine())' 2>>"$LOG")" \
  || die "the rootfs python3 cannot import numpy, PIL and ai_edge_litert"
[ "$ARCH" = aarch64 ] || die "the rootfs python3 reports machine '$ARCH', expected aarch64"

echo "$RECIPE" >"$BUILD/$MARKER"
chmod 0755 "$BUILD"
remove_tree "$DIR"
mv "$BUILD" "$DIR" || die "cannot move $BUILD to $DIR"
