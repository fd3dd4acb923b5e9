#!/bin/busybox sh
# /init of the crosscheck guest: load the real VFIO stack, bind the served devices to it,
# and replay each scenario's step file with /probe, reading the kernel's view through
# kprobes (tracefs) and /dev/kmsg.
#
# Everything it says goes to the second serial port (/dev/ttyS1), which the host reads:
#   XC kernel RELEASE            once, after boot
#   XC modules ...               what was loaded, once
#   XC kprobe OK|NO DEFINITION   each kprobe definition, whether this kernel took it
#   XC begin NAME / XC end NAME  around each scenario; the probe's own lines in between
#   XC dev SLOT BDF GROUP DRIVER the device as bound for the scenario
#   XC bar SLOT INDEX START END FLAGS  its BARs, as the guest kernel placed them
#   XC done                      after the last scenario
# A kernel crash ends the run; the host reads the Oops from the console (ttyS0).
#
# The VFIO modules are unloaded and loaded again before each scenario: their static state
# (the dev_dbg rate limit of the fault handler, the device's open count, reset flags) then
# starts fresh for every scenario, as the model's does.

/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /tmp/xc
OUT=$(cat /etc/xc/data_tty 2>/dev/null || echo /dev/ttyS1)   # the second serial port
stty -F "$OUT" raw -echo 2>/dev/null
T=/sys/kernel/tracing
say() { echo "XC $*" >"$OUT"; }

finish() {
    say done
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger
}

say kernel "$(uname -r)"
say tracefs-systems "$(ls $T/events | tr '\n' ' ')"
say tracefs-ras "$(ls $T/events/ras 2>/dev/null | tr '\n' ' ')"
echo 8192 >$T/buffer_size_kb 2>/dev/null
echo 0 >/proc/sys/kernel/printk_ratelimit 2>/dev/null

MODULES=$(cat /etc/xc/modules)
for m in $(cat /etc/xc/boot_modules); do
    insmod "/lib/xc/$m.ko" 2>/dev/null
done
DEBUG_FUNCS=$(cat /etc/xc/dyndbg 2>/dev/null)

load_stack() {
    for m in $MODULES; do
        insmod "/lib/xc/$m.ko" 2>/tmp/insmod.err || say insmod-failed "$m" "$(cat /tmp/insmod.err)"
    done
    for fn in $DEBUG_FUNCS; do
        echo "func $fn +p" >/proc/dynamic_debug/control 2>/dev/null
    done
    while read -r slot bdf driver; do
        [ -n "$bdf" ] && [ "$driver" != none ] || continue
        d=/sys/bus/pci/devices/$bdf
        echo "$driver" >"$d/driver_override"
        echo "$bdf" >/sys/bus/pci/drivers_probe 2>/dev/null
    done </etc/xc/devices
    while read -r line; do
        [ -n "$line" ] && echo "$line" >>$T/kprobe_events 2>/dev/null
    done </etc/xc/kprobes
    # faults of the scenarios' mappings only: not the probe's own stack, heap and text
    echo 'address >= 0x100000000000 && address < 0x7ff000000000' >$T/events/xc/hmf/filter 2>/dev/null
    [ -d $T/events/xc ] && echo 1 >$T/events/xc/enable
    echo >$T/trace
    # WARN_ON_ONCE state of the core kernel (not reloaded with the modules) starts fresh too
    echo 1 >/sys/kernel/debug/clear_warn_once 2>/dev/null
}

unload_stack() {
    [ -d $T/events/xc ] && echo 0 >$T/events/xc/enable
    echo >$T/kprobe_events
    while read -r slot bdf driver; do
        [ -n "$bdf" ] && [ "$driver" != none ] || continue
        echo "$bdf" >"/sys/bus/pci/devices/$bdf/driver/unbind" 2>/dev/null
        echo >"/sys/bus/pci/devices/$bdf/driver_override"
    done </etc/xc/devices
    for m in $(echo "$MODULES" | tr ' ' '\n' | sed '1!G;h;$!d'); do
        rmmod "$m" 2>/dev/null
    done
}

report_devices() {
    while read -r slot bdf driver; do
        [ -n "$bdf" ] || continue
        d=/sys/bus/pci/devices/$bdf
        group=$(basename "$(readlink "$d/iommu_group" 2>/dev/null)" 2>/dev/null)
        bound=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
        say dev "$slot" "$bdf" "${group:-none}" "${bound:-none}"
        i=0
        while read -r start end flags; do
            [ "$i" -lt 6 ] && say bar "$slot" "$i" "$start" "$end" "$flags"
            i=$((i + 1))
        done <"$d/resource"
    done </etc/xc/devices
}

# which kprobe definitions this kernel accepts (each is tried once, on the loaded stack)
load_stack
while read -r line; do
    [ -n "$line" ] || continue
    name=${line%% *}; name=${name#*/}
    if [ -d "$T/events/xc/$name" ]; then say kprobe OK "$line"; else say kprobe NO "$line"; fi
done </etc/xc/kprobes
say modules "$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
report_devices                    # the placement, before any scenario (the host may need it)
unload_stack

for stepfile in /etc/xc/scenarios/*.steps; do
    name=$(basename "$stepfile" .steps)
    load_stack
    say begin "$name"
    report_devices
    /probe "$stepfile" "$OUT"
    say end "$name" "$?"
    unload_stack
done
finish
