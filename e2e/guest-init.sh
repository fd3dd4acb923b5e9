#!/bin/busybox sh
# /init of the `make e2e` guest: busybox only, no driver for the device.
#
# It prints one line per check on the serial console, "E2E PASS <check>: ..." or
# "E2E FAIL <check>: ...", which the host side (e2e/run_guest.py) collects, then
# powers the guest off.  The device is reached the way a user-space tool without a
# driver reaches it: found by vendor/device id in sysfs, enabled through the sysfs
# `enable` file (sets Memory Space in the command register), and accessed with
# busybox devmem at the BAR's physical address.  Without a guest driver nobody
# enables MSI-X, so the error interrupt is not delivered in the guest; the guest
# sees the error by polling the error-queue count register instead.
#
# The values it checks against come from /etc/e2e.conf, written by the host from
# the device model: VENDOR_ID DEVICE_ID, ID_OFFSET ID_WIDTH ID_VALUE (BAR0),
# DATA_BAR DATA_OFFSET (the write/read-back target), ERRQ_COUNT_OFFSET
# ERRQ_RECORD_OFFSET ERRQ_RECORD_ADDR_OFFSET (BAR0 error queue), POISON_BAR
# POISON_OFFSET (what the host will poison), INJECT_TIMEOUT (seconds).

/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
. /etc/e2e.conf

FAILED=0
pass() { echo "E2E PASS $1: $2"; }
fail() { echo "E2E FAIL $1: $2"; FAILED=1; }
finish() {
    echo "E2E DONE failed=$FAILED"
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger   # poweroff -f failed; power off through sysrq
}
hex() { printf '0x%x' "$1"; }

pass boot "kernel $(uname -r) running busybox init"
if [ "$INTERACTIVE" = 1 ]; then   # by hand: a shell on the console, the checks via `sh /init`
    exec setsid cttyhack sh
fi
[ -n "$VENDOR_ID" ] || finish   # run_guest.py --no-device: booting was the whole test

# --- find the device ---------------------------------------------------------------
DEV=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = "$VENDOR_ID" ] && [ "$(cat "$d/device")" = "$DEVICE_ID" ] && DEV=$d && break
done
if [ -z "$DEV" ]; then
    fail find-device "no PCI function with id $VENDOR_ID:$DEVICE_ID (have: $(cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device 2>/dev/null | tr '\n' ' '))"
    finish
fi
pass find-device "$VENDOR_ID:$DEVICE_ID at $(basename "$DEV") class $(cat "$DEV/class")"

bar_start() {  # bar_start N: physical start address of BAR N (line N+1 of the resource file)
    sed -n "$(($1 + 1))p" "$DEV/resource" | cut -d' ' -f1
}
bar_size() {
    local line start end
    line=$(sed -n "$(($1 + 1))p" "$DEV/resource")
    start=$(echo "$line" | cut -d' ' -f1); end=$(echo "$line" | cut -d' ' -f2)
    [ "$((end))" -gt 0 ] && hex $((end - start + 1)) || echo 0
}

BAR0=$(bar_start 0)
BARD=$(bar_start "$DATA_BAR")
if [ "$((BAR0))" = 0 ] || [ "$((BARD))" = 0 ]; then
    fail bars "BAR0 at $BAR0, BAR$DATA_BAR at $BARD: not assigned by the firmware/kernel"
    finish
fi
pass bars "BAR0 at $BAR0 size $(bar_size 0), BAR$DATA_BAR at $BARD size $(bar_size "$DATA_BAR")"

echo 1 >"$DEV/enable" 2>/dev/null || true   # pci_enable_device: Memory Space on

# --- identity register -------------------------------------------------------------
ID=$(devmem $(hex $((BAR0 + ID_OFFSET))) "$ID_WIDTH" 2>&1)
if [ "$((ID))" = "$((ID_VALUE))" ] 2>/dev/null; then
    pass identity "BAR0+$ID_OFFSET reads $ID"
else
    fail identity "BAR0+$ID_OFFSET reads '$ID', expected $ID_VALUE"
fi

# --- device memory through the data BAR --------------------------------------------
ADDR=$(hex $((BARD + DATA_OFFSET)))
ok=1; detail=
for pattern in 0x5a5aa5a5 0xdeadbeef 0x01234567; do
    devmem "$ADDR" 32 "$pattern"
    got=$(devmem "$ADDR" 32)
    [ "$((got))" = "$((pattern))" ] || { ok=0; detail="$detail wrote $pattern read $got;"; }
done
WIDE=$(hex $((BARD + DATA_OFFSET + 8)))
devmem "$WIDE" 64 0x0123456789abcdef
got=$(devmem "$WIDE" 64)
[ "$((got))" = "$((0x0123456789abcdef))" ] || { ok=0; detail="$detail 64-bit read $got;"; }
if [ $ok = 1 ]; then
    pass bar-memory "BAR$DATA_BAR+$DATA_OFFSET: 32-bit and 64-bit writes read back"
else
    fail bar-memory "BAR$DATA_BAR+$DATA_OFFSET:$detail"
fi

# --- poison injected by the host ---------------------------------------------------
COUNT_ADDR=$(hex $((BAR0 + ERRQ_COUNT_OFFSET)))
BEFORE=$(devmem "$COUNT_ADDR" 32)
echo "E2E READY-FOR-INJECT error-queue count $BEFORE"
waited=0
COUNT=$BEFORE
while [ "$((COUNT))" = "$((BEFORE))" ] && [ "$waited" -lt "$INJECT_TIMEOUT" ]; do
    sleep 1
    waited=$((waited + 1))
    COUNT=$(devmem "$COUNT_ADDR" 32)
done
if [ "$((COUNT))" = "$((BEFORE))" ]; then
    fail error-queue "count stayed $COUNT for ${INJECT_TIMEOUT}s after READY-FOR-INJECT"
    finish
fi
pass error-queue "count went $BEFORE -> $COUNT within ${waited}s (polled; no guest MSI-X driver)"

# The record of the newest error: ERRQ_RECORD_OFFSET is the window showing the head
# record; ERRQ_RECORD_ADDR_OFFSET the field with the poisoned offset inside the BAR.
REC_ADDR=$(devmem $(hex $((BAR0 + ERRQ_RECORD_OFFSET + ERRQ_RECORD_ADDR_OFFSET))) 64)
EXPECT=$((POISON_OFFSET & ~4095))
if [ "$(( REC_ADDR & ~4095 ))" = "$EXPECT" ]; then
    pass error-record "record names BAR$POISON_BAR offset $REC_ADDR (poisoned $(hex "$POISON_OFFSET"))"
else
    fail error-record "record names $REC_ADDR, expected page $(hex "$EXPECT") of BAR$POISON_BAR"
fi

finish
