#!/bin/busybox sh
# /init of the `make e2e` guest: busybox only, no driver for the device.
#
# It prints one line per check on the serial console, "E2E PASS <check>: ..." or
# "E2E FAIL <check>: ...", which the host side (e2e/run_guest.py) collects, then
# powers the guest off.  The device is reached the way a user-space tool without a
# driver reaches it: found by vendor/device id in sysfs, enabled through the sysfs
# `enable` file (sets Memory Space in the command register), configured through the
# sysfs `config` file, and accessed with busybox devmem at the BAR's physical
# address.  It waits for the error by polling the error-queue count register and
# confirms the MSI-X interrupt from the kernel log (see the MSI-X section).
#
# The values it checks against come from /etc/e2e.conf, written by the host from
# the device model (e2e/device_facts.py): VENDOR_ID DEVICE_ID; ID_OFFSET ID_WIDTH
# ID_VALUE (identity register in BAR0); DATA_BAR DATA_OFFSET (write/read-back
# target); DATA_BAR_SIZE DATA_MEMORY_SIZE (the memory BAR's window and the memory behind
# it, for the whole-BAR checks); ERROR_VECTOR (MSI-X entry of the error interrupt) APIC_VECTOR (where the
# guest points it); ERRQ_COUNT_OFFSET ERRQ_HEAD_OFFSET ERRQ_WINDOW_OFFSET RECORD_SIZE
# RECORD_BAR_FIELD RECORD_OFFSET_FIELD (the BAR0 error queue and record layout);
# POISON_BAR POISON_OFFSET POISON_GRANULARITY (what the host poisons);
# INJECT_TIMEOUT (seconds).  INTERACTIVE=1 gives a shell after the boot check.

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
# Where firmware put the memory BAR, for the host to compare with the device's own view.
echo "E2E BAR $DATA_BAR $BARD $(bar_size "$DATA_BAR")"

# --- the whole memory BAR ----------------------------------------------------------
# Its size is the profile's, and it lies inside a window of the PCI host bridge: the
# kernel took the placement (a BAR outside every window would be reassigned or dropped).
BARD_END=$((BARD + $(bar_size "$DATA_BAR") - 1))
WINDOW=
for range in $(grep "PCI Bus 0000:00" /proc/iomem | sed 's/^ *//; s/ .*//'); do
    lo=$((0x${range%-*})); hi=$((0x${range#*-}))
    [ "$lo" -le "$((BARD))" ] && [ "$BARD_END" -le "$hi" ] && WINDOW=$range
done
if [ "$(bar_size "$DATA_BAR")" != "$(hex "$DATA_BAR_SIZE")" ]; then
    fail bar-window "BAR$DATA_BAR is $(bar_size "$DATA_BAR"), the profile says $DATA_BAR_SIZE"
elif [ -z "$WINDOW" ]; then
    fail bar-window "BAR$DATA_BAR $BARD-$(hex $BARD_END) is in no PCI Bus 0000:00 window: $(grep 'PCI Bus 0000:00' /proc/iomem | tr '\n' ';')"
else
    pass bar-window "BAR$DATA_BAR $BARD-$(hex $BARD_END) ($DATA_BAR_SIZE) inside host bridge window $WINDOW"
fi

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

# --- the last page ------------------------------------------------------------------
# The last page of the memory reads back what is written, up to its last 8 bytes.  Where
# the BAR is wider than its memory (nvgrace: 96 GiB + 6 MiB behind 128 GiB), the BAR's own
# last page is outside the mmap'ed part: the access is trapped, reads all ones and a write
# there is dropped (the device's rule for bytes past its memory).
# busybox devmem maps the next page as well when the page offset plus the access width *in
# bits* passes the page size, and SeaBIOS puts a big BAR at the very top of the physical
# address space, where there is no next page (mmap fails with EINVAL).  So the 64-bit
# accesses stop at +4032, and the byte at +4088 (the last 8-byte word) is written alone.
MEM_LAST=$((BARD + DATA_MEMORY_SIZE - 4096))
ok=1; detail=
for off in 0 2048 4032; do
    pattern=$(( (0x5a << 56) | (MEM_LAST + off) ))   # holds its own address: no two places alias
    devmem $(hex $((MEM_LAST + off))) 64 "$pattern"
    got=$(devmem $(hex $((MEM_LAST + off))) 64)
    [ "$((got))" = "$pattern" ] || { ok=0; detail="$detail +$off wrote $(hex "$pattern") read $got;"; }
done
devmem $(hex $((MEM_LAST + 4088))) 8 0xa5
got=$(devmem $(hex $((MEM_LAST + 4088))) 8)
[ "$((got))" = "$((0xa5))" ] || { ok=0; detail="$detail +4088 wrote 0xa5 read $got;"; }
if [ "$DATA_MEMORY_SIZE" != "$DATA_BAR_SIZE" ]; then
    BAR_LAST=$(hex $((BARD + DATA_BAR_SIZE - 64)))   # (the last 64 bytes would map the page after)
    devmem "$BAR_LAST" 32 0x12345678
    got=$(devmem "$BAR_LAST" 32)
    [ "$((got))" = "$((0xffffffff))" ] || { ok=0; detail="$detail past the memory at $BAR_LAST read $got;"; }
    beyond=", BAR's last page $BAR_LAST reads $got (past the memory)"
fi
if [ $ok = 1 ]; then
    pass bar-last-page "memory's last page $(hex $MEM_LAST) (BAR$DATA_BAR+$(hex $((DATA_MEMORY_SIZE - 4096)))) reads back 64-bit writes and the byte at +4088${beyond:-}"
else
    fail bar-last-page "BAR$DATA_BAR last page:$detail"
fi

# --- MSI-X: point the error vector at this CPU ------------------------------------
# No guest driver enables MSI-X, and a device that cannot use MSI-X reports errors on
# the vfio ERR index, which QEMU answers by stopping the VM.  So the guest enables it
# by hand, the way setpci would: Bus Master and Memory in COMMAND, the error vector's
# table entry aimed at the local APIC with IDT vector APIC_VECTOR (which no driver
# owns, so its arrival is logged as "No irq handler for vector"), then MSI-X Enable
# with Function Mask clear in Message Control.
cfg_read() {  # cfg_read OFFSET BYTES: little-endian config space value
    echo $(( $(od -An -tu"$2" -j "$1" -N "$2" "$DEV/config") ))
}
cfg_write8() {  # cfg_write8 OFFSET VALUE
    printf "\\$(printf %03o "$2")" | dd of="$DEV/config" bs=1 seek="$1" count=1 conv=notrunc 2>/dev/null
}
cfg_write8 4 $(( $(cfg_read 4 1) | 0x06 ))
CAP=$(cfg_read 0x34 1)
while [ "$CAP" != 0 ] && [ "$(cfg_read "$CAP" 1)" != 17 ]; do   # 0x11: MSI-X
    CAP=$(cfg_read $((CAP + 1)) 1)
done
MSIX_OK=0
if [ "$CAP" = 0 ]; then
    fail msix-setup "no MSI-X capability in config space"
else
    TABLE=$(cfg_read $((CAP + 4)) 4)
    ENTRY=$(hex $(( $(bar_start $((TABLE & 7))) + (TABLE & ~7) + 16 * ERROR_VECTOR )))
    devmem "$ENTRY" 32 0xfee00000               # message address: local APIC, CPU 0
    devmem $(hex $((ENTRY + 4))) 32 0
    devmem $(hex $((ENTRY + 8))) 32 "$APIC_VECTOR"  # message data: fixed delivery, edge
    devmem $(hex $((ENTRY + 12))) 32 0          # vector control: unmasked
    cfg_write8 $((CAP + 3)) $(( ($(cfg_read $((CAP + 3)) 1) | 0x80) & ~0x40 ))
    CONTROL=$(cfg_read $((CAP + 2)) 2)
    DATA=$(devmem $(hex $((ENTRY + 8))) 32)
    if [ $((CONTROL & 0xc000)) = $((0x8000)) ] && [ $((DATA)) = $((APIC_VECTOR)) ]; then
        MSIX_OK=1
        pass msix-setup "cap at $(hex "$CAP"), Message Control $(hex "$CONTROL"), table entry $ERROR_VECTOR at $ENTRY -> APIC vector $APIC_VECTOR"
    else
        fail msix-setup "Message Control $(hex "$CONTROL"), entry $ERROR_VECTOR data $DATA after enabling"
    fi
fi

# --- poison injected by the host ---------------------------------------------------
COUNT_ADDR=$(hex $((BAR0 + ERRQ_COUNT_OFFSET)))
BEFORE=$(devmem "$COUNT_ADDR" 32)
# x86 logs an interrupt on a vector without a handler as "No irq handler for CPU.VECTOR"
# (6.x; older kernels: "...: CPU.VECTOR No irq handler for vector").
NOISE="No irq handler for [0-9]+\.$APIC_VECTOR\$|[0-9]+\.$APIC_VECTOR No irq handler for vector"
SEEN_BEFORE=$(dmesg | grep -cE "$NOISE")
echo "E2E READY-FOR-INJECT error-queue count $BEFORE"
waited=0
COUNT=$BEFORE
while [ "$((COUNT))" = "$((BEFORE))" ] && [ "$waited" -lt "$INJECT_TIMEOUT" ]; do
    sleep 1
    waited=$((waited + 1))
    COUNT=$(devmem "$COUNT_ADDR" 32)
done
if [ "$((COUNT))" = "$((BEFORE))" ]; then
    fail error-queue "ERRQ_COUNT stayed $COUNT for ${INJECT_TIMEOUT}s after READY-FOR-INJECT"
    finish
fi
pass error-queue "ERRQ_COUNT went $BEFORE -> $COUNT within ${waited}s"

if [ $MSIX_OK = 1 ]; then
    # The record is queued before the vector is raised; give the MSI a moment to land.
    n=0
    while [ "$(dmesg | grep -cE "$NOISE")" = "$SEEN_BEFORE" ] && [ $n -lt 10 ]; do
        sleep 1; n=$((n + 1))
    done
    LINE=$(dmesg | grep -E "$NOISE" | tail -n 1)
    if [ "$(dmesg | grep -cE "$NOISE")" != "$SEEN_BEFORE" ]; then
        pass interrupt "MSI-X vector $ERROR_VECTOR arrived as APIC vector $APIC_VECTOR: ${LINE#*] }"
    else
        # QEMU reads the PBA from the device (its own copy of the table is what the
        # guest programs), so a set bit here means the device held the vector back.
        PBA_REG=$(cfg_read $((CAP + 8)) 4)
        PBA=$(devmem $(hex $(( $(bar_start $((PBA_REG & 7))) + (PBA_REG & ~7) ))) 64)
        if [ $(( (PBA >> ERROR_VECTOR) & 1 )) = 1 ]; then
            WHY="pending bit $ERROR_VECTOR set: the device held the vector back as masked"
        else
            WHY="pending bit $ERROR_VECTOR clear: the device sent it or never raised it"
        fi
        fail interrupt "no interrupt on APIC vector $APIC_VECTOR within 10 s of the record; device PBA $PBA, $WHY"
    fi
fi

# The record at HEAD, as dwords for the host to decode with the device's own parser,
# and the two fields the guest checks itself.
WINDOW=$((BAR0 + ERRQ_WINDOW_OFFSET))
DWORDS=
i=0
while [ $i -lt "$RECORD_SIZE" ]; do
    DWORDS="$DWORDS $(devmem $(hex $((WINDOW + i))) 32)"
    i=$((i + 4))
done
echo "E2E RECORD$DWORDS"
REC_BAR=$(devmem $(hex $((WINDOW + RECORD_BAR_FIELD))) 32)
REC_OFF=$(devmem $(hex $((WINDOW + RECORD_OFFSET_FIELD))) 64)
EXPECT=$(( POISON_OFFSET & ~(POISON_GRANULARITY - 1) ))
if [ "$((REC_BAR))" = "$POISON_BAR" ] && [ "$((REC_OFF))" = "$EXPECT" ]; then
    pass error-record "BAR $((REC_BAR)) offset $REC_OFF: the page holding $POISON_OFFSET"
else
    fail error-record "BAR $((REC_BAR)) offset $REC_OFF, expected BAR $POISON_BAR offset $(hex "$EXPECT")"
fi

# Retire the record the way a driver would: HEAD + 1.
HEAD_ADDR=$(hex $((BAR0 + ERRQ_HEAD_OFFSET)))
devmem "$HEAD_ADDR" 32 $(( $(devmem "$HEAD_ADDR" 32) + 1 ))
AFTER=$(devmem "$COUNT_ADDR" 32)
if [ "$((AFTER))" = $((COUNT - 1)) ]; then
    pass error-ack "ERRQ_HEAD advanced, ERRQ_COUNT $COUNT -> $AFTER"
else
    fail error-ack "ERRQ_COUNT $AFTER after retiring one of $COUNT records"
fi

finish
