#!/bin/bash
# Build (once) the Debian trixie root that `make e2e` runs QEMU and the guest kernel from.
#
#   e2e/build-root.sh CACHE_DIR
#
# The root lands in CACHE_DIR/trixie-root and is marked complete by a stamp file;
# a later call returns at once.  A half-built root stays in CACHE_DIR/trixie-root.partial
# and is thrown away on the next attempt.  Every failure is one line on stderr
# (with the last line of the log when a command failed) and a non-zero exit status.
set -euo pipefail

CACHE=${1:?usage: build-root.sh CACHE_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$CACHE/trixie-root
PARTIAL=$ROOT.partial
STAMP=$ROOT/.hugepfn-root-complete
LOG=$CACHE/build-root.log
SUITE=trixie
# QEMU gained vfio-user-pci in 10.1; trixie itself ships 10.0, so the backport is taken when needed.
QEMU_MIN=1:10.1

fail() { echo "e2e: cannot build the trixie root: $*" >&2; exit 1; }

if [ -f "$STAMP" ]; then
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "debootstrap and chroot need root privileges (run 'make e2e' as root)"
mkdir -p "$CACHE"
: >"$LOG"

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "e2e: installing debootstrap from the host's Debian packages"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >>"$LOG" 2>&1 \
        || fail "debootstrap is missing and 'apt-get install debootstrap' failed (see $LOG)"
fi
command -v debootstrap >/dev/null 2>&1 || fail "debootstrap is not installed"

MIRROR=$(python3 "$HERE/apt_mirror.py") || fail "no Debian mirror in this machine's apt configuration"

# The trixie Release file may be signed only by keys that the host's combined keyring lacks
# (bookworm's keyring ships the trixie keys as separate files): gpgv accepts concatenated keyrings.
KEYRING=$CACHE/debian-keyring.gpg
cat /usr/share/keyrings/debian-archive-keyring.gpg \
    /usr/share/keyrings/debian-archive-"$SUITE"-*.gpg >"$KEYRING" 2>/dev/null \
    || cat /usr/share/keyrings/debian-archive-keyring.gpg >"$KEYRING" 2>/dev/null \
    || fail "no Debian archive keyring in /usr/share/keyrings (apt-get install debian-archive-keyring)"

# Runs a command inside the root in a private mount namespace, so /proc, /sys and /dev
# disappear with the command and nothing stays mounted on the host.
in_root() {
    local root=$1; shift
    unshare --mount --propagation private -- /bin/sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" &&
        mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"' sh "$root" "$@"
}

step() {  # step "what" command...: log the command's output, fail in one line with the log's tail
    local what=$1; shift
    echo "e2e: $what"
    if ! "$@" >>"$LOG" 2>&1; then
        fail "$what failed: $(grep -v '^[[:space:]]*$' "$LOG" | tail -n 1) (full log: $LOG)"
    fi
}

rm -rf "$PARTIAL"
START=$(date +%s)
echo "e2e: building the $SUITE root in $ROOT from $MIRROR (once; several minutes)"
step "debootstrap $SUITE (minbase)" \
    debootstrap --variant=minbase --keyring="$KEYRING" "$SUITE" "$PARTIAL" "$MIRROR"

cat >"$PARTIAL/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-backports main
EOF
# No daemons may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$PARTIAL/usr/sbin/policy-rc.d"
chmod 755 "$PARTIAL/usr/sbin/policy-rc.d"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
APT="apt-get -y -q -o Dpkg::Use-Pty=0 --no-install-recommends"

step "apt-get update" in_root "$PARTIAL" apt-get -q update
step "installing linux-image-amd64 and busybox-static" \
    in_root "$PARTIAL" $APT install linux-image-amd64 busybox-static

TRIXIE_QEMU=$(in_root "$PARTIAL" apt-cache madison qemu-system-x86 \
    | awk -v s="$SUITE/main" '$0 ~ s && $0 !~ "backports" {print $3; exit}')
echo "e2e: qemu-system-x86 in $SUITE is ${TRIXIE_QEMU:-absent}; need $QEMU_MIN or later" | tee -a "$LOG"
if [ -n "$TRIXIE_QEMU" ] && dpkg --compare-versions "$TRIXIE_QEMU" ge "$QEMU_MIN"; then
    step "installing qemu-system-x86 from $SUITE" in_root "$PARTIAL" $APT install qemu-system-x86 seabios
else
    step "installing qemu-system-x86 from $SUITE-backports" \
        in_root "$PARTIAL" $APT -t "$SUITE-backports" install qemu-system-x86 seabios
fi
in_root "$PARTIAL" apt-get clean >>"$LOG" 2>&1 || true

INSTALLED=$(in_root "$PARTIAL" dpkg-query -W -f '${Version}' qemu-system-x86)
dpkg --compare-versions "$INSTALLED" ge "$QEMU_MIN" || fail "installed QEMU $INSTALLED is older than $QEMU_MIN"
ls "$PARTIAL"/boot/vmlinuz-* >/dev/null 2>&1 || fail "no kernel in $PARTIAL/boot"
[ -x "$PARTIAL/bin/busybox" ] || fail "busybox-static is not in the root"

rm -rf "$ROOT"
mv "$PARTIAL" "$ROOT"
echo "qemu-system-x86 $INSTALLED, kernel $(basename "$ROOT"/boot/vmlinuz-*)" >"$STAMP"
echo "e2e: root ready in $(( $(date +%s) - START )) s: $(cat "$STAMP")"
