#!/bin/sh
# run.sh FUSETRACE [WORK]
#
# Checks a static aarch64 fusetrace on Debian's newest arm64 kernel: boots it
# under qemu-system-aarch64 from a busybox initramfs and runs guest.sh there.
# Software emulation (TCG), because the hosts are x86_64 without arm64 KVM.
# WORK caches the downloads (default: target/vm/arm64 of this repository).
# Exits 0 only when the guest printed `arm64: PASS`.
# META_VER=<version of linux-image-arm64> boots an older kernel instead.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "${1:-}" ] || { echo "usage: run.sh FUSETRACE_AARCH64_BINARY [WORK_DIR]" >&2; exit 2; }
BIN=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
WORK=${2:-$HERE/../../target/vm/arm64}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
START=$(date +%s)
log() { echo "run.sh: $*" >&2; }
fail() { said=1; echo "arm64: FAIL: $*"; exit 1; }
# A command failing under set -e still ends with a verdict line.
said=
trap '[ -n "$said" ] || echo "arm64: FAIL: run.sh stopped on the error above"' EXIT

# An x86_64 binary would only fail inside the guest, less clearly (ELF
# e_machine 0xb7 is aarch64).
[ "$(od -An -tx1 -j18 -N1 "$BIN" | tr -d ' ')" = b7 ] || fail "$BIN is not an aarch64 binary"

# The host tools, installed like the x86 VM tests' (root, Debian).
missing=
command -v qemu-system-aarch64 >/dev/null || missing="$missing qemu-system-arm"
command -v cpio >/dev/null || missing="$missing cpio"
if [ -n "$missing" ]; then
    log "installing$missing"
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086 # package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# A private apt for arm64, so that the host's apt state stays untouched. The
# archive is the host's own; backports or unstable carry the newest kernel,
# (old)stable the older ones that META_VER may name.
A=$WORK/apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs" "$A/parts"
# shellcheck disable=SC2016 # $(REPO_URI) is apt's, not the shell's
ARCHIVE=$(apt-get indextargets --format '$(REPO_URI)' | grep debian | grep -v security | head -n1)
[ -n "$ARCHIVE" ] || fail "the host's apt sources name no Debian archive"
for s in oldstable stable stable-backports unstable; do
    echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $ARCHIVE $s main"
done >"$A/sources.list"
: >"$A/status"
apt_() {
    tool=$1; shift
    "$tool" -q -o Dir::State="$A" -o Dir::State::Lists="$A/lists" -o Dir::State::status="$A/status" \
        -o Dir::Cache="$A/cache" -o Dir::Etc::SourceList="$A/sources.list" \
        -o Dir::Etc::SourceParts="$A/parts" -o Dir::Etc::Parts="$A/parts" \
        -o Dir::Etc::Preferences="$A/parts/none" -o Dir::Etc::PreferencesParts="$A/parts" -o APT::Architecture=arm64 \
        -o APT::Architectures::=arm64 -o Acquire::Languages=none -o APT::Sandbox::User=root "$@"
}
# Fetched when the list changed, else daily: a warm run needs no network,
# and a new kernel still comes.
if ! cmp -s "$A/sources.list" "$A/fetched.list" || [ -n "$(find "$A/fetched.list" -mmin +1440)" ]; then
    log "apt-get update (arm64)"
    apt_ apt-get update >/dev/null
    cp "$A/sources.list" "$A/fetched.list"
fi
# The highest version over all suites (apt's pinning would prefer unstable).
newest() {
    apt_ apt-cache madison "$1" | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' |
        while read -r v; do
            if [ -z "${best:-}" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
            echo "$best"
        done | tail -n1
}
deps() {
    apt_ apt-cache show "$1=$2" | sed -n 's/^Depends: //p' | head -n1 | tr ',' '\n' | sed 's/[|(].*//; s/ //g'
}
# Downloads PKG=VER and extracts it, once each; prints where it is extracted.
unpack() {
    d=$WORK/x/$1_$(echo "$2" | tr ':~' '__')
    if [ ! -d "$d" ]; then
        deb=$A/debs/$1_$(echo "$2" | sed 's/:/%3a/')_arm64.deb
        [ -f "$deb" ] || (cd "$A/debs" && apt_ apt-get download "$1=$2" >&2)
        rm -rf "$d.tmp" && mkdir -p "$d.tmp" && dpkg-deb -x "$deb" "$d.tmp" && mv "$d.tmp" "$d"
    fi
    echo "$d"
}

# The kernel: linux-image-arm64 names the image package; from 7.x on that
# is empty and its vmlinuz and config are in linux-binary-* and linux-base-*.
VER=${META_VER:-$(newest linux-image-arm64)}
[ -n "$VER" ] || fail "apt knows no linux-image-arm64"
IMG=$(deps linux-image-arm64 "$VER" | grep '^linux-image-.*-arm64$' | head -n1)
[ -n "$IMG" ] || fail "linux-image-arm64 $VER names no kernel image"
log "kernel: linux-image-arm64 $VER -> $IMG"
KDIRS=$(unpack "$IMG" "$VER")
for p in $(deps "$IMG" "$VER" | grep -E '^linux-(binary|base)-'); do KDIRS="$KDIRS $(unpack "$p" "$VER")"; done
# shellcheck disable=SC2086 # KDIRS: a list of directories without spaces
VMLINUZ=$(find $KDIRS -type f -name 'vmlinuz*' | head -n1)
# shellcheck disable=SC2086
CONFIG=$(find $KDIRS -type f \( -name 'config-*' -o -path '*/modules/*/config' \) | head -n1)
if [ -z "$VMLINUZ" ] || [ -z "$CONFIG" ]; then fail "no vmlinuz or config in $IMG $VER"; fi

# The guest's userland: busybox, and fusermount3, through which the reference
# daemon mounts even as root (dynamic: libc6's loader and libc come along).
BB=$(unpack busybox-static "$(newest busybox-static)")
FUSE3=$(unpack fuse3 "$(newest fuse3)")
LIBC=$(unpack libc6 "$(newest libc6)")

R=$WORK/initramfs
rm -rf "$R"
mkdir -p "$R/bin" "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/run" "$R/mnt" "$R/etc" "$R/boot" \
    "$R/lib/modules" "$R/usr/lib/aarch64-linux-gnu"
cp "$BB/usr/bin/busybox" "$R/bin/busybox"
cp "$FUSE3/usr/bin/fusermount3" "$R/bin/"
cp "$BIN" "$R/bin/fusetrace"
cp "$LIBC/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1" "$LIBC/usr/lib/aarch64-linux-gnu/libc.so.6" \
    "$R/usr/lib/aarch64-linux-gnu/"
ln -s ../usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1 "$R/lib/ld-linux-aarch64.so.1"
ln -s /proc/self/mounts "$R/etc/mtab"
cp "$CONFIG" "$R/boot/config"
cp "$HERE/init" "$HERE/guest.sh" "$R/"
# FUSE as a module (Debian's 6.x): busybox's insmod takes it unpacked.
if grep -qx 'CONFIG_FUSE_FS=m' "$CONFIG"; then
    MODS=$(unpack "$(deps "$IMG" "$VER" | grep '^linux-modules-' || echo "$IMG")" "$VER")
    KO=$(find "$MODS" -name 'fuse.ko*' | head -n1)
    case $KO in *.xz) xz -dc "$KO" ;; *.zst) zstd -dc "$KO" ;; *) cat "$KO" ;; esac >"$R/lib/modules/fuse.ko"
fi
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$WORK/initramfs.cpio.gz"
# QEMU boots an arm64 Image only unpacked.
if [ "$(od -An -tx1 -N2 "$VMLINUZ" | tr -d ' ')" = 1f8b ]; then
    gzip -dc "$VMLINUZ" >"$WORK/Image"
else
    cp "$VMLINUZ" "$WORK/Image"
fi
log "prepared in $(($(date +%s) - START)) s; booting (console in $WORK/console.log)"

# -cpu max's default pointer authentication (QARMA5) is slow to emulate; the
# impdef one is cheap. The timeout bounds a hung guest.
timeout 900 qemu-system-aarch64 -M virt -cpu max,pauth-impdef=on -smp 2 -m 2G \
    -nographic -no-reboot -kernel "$WORK/Image" -initrd "$WORK/initramfs.cpio.gz" \
    -append "console=ttyAMA0 panic=-1 rdinit=/init loglevel=4" </dev/null 2>&1 |
    tr -d '\r' | tee "$WORK/console.log" || true
log "whole run: $(($(date +%s) - START)) s"
said=1
grep -q '^arm64: PASS$' "$WORK/console.log" && exit 0
grep -q '^arm64: FAIL' "$WORK/console.log" || fail "the guest gave no verdict (see $WORK/console.log)"
exit 1
