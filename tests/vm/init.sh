#!/bin/sh
# /init of the kernel-matrix VMs that `cargo xtask vm-test` boots (initramfs: busybox-static,
# this script, /imds-snoop and /vm-guest, both static musl binaries, and each kernel's
# veth module under /lib/modules/<uname -r>/veth.ko: Debian's cloud kernels build veth as a
# module, and vm-guest's drop check routes a "pod" through a "node" namespace over veth
# pairs, all inside the VM). The VM has no NIC
# (qemu -nic none), so putting the IMDS addresses on lo cannot leak a packet anywhere.
# The attach specs come from the kernel command line after `--` (e.g. `fentry kprobe auto=fentry`).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null

# veth for the routed topology; a kernel without it fails vm-guest's drop check, which
# names this line.
if insmod "/lib/modules/$(uname -r)/veth.ko" 2>/tmp/insmod.err || [ -d /sys/module/veth ]; then
    echo "IMDS-INFO veth=loaded"
else
    echo "IMDS-INFO veth=missing ($(cat /tmp/insmod.err))"
fi

ip link set lo up
ip addr add 169.254.169.254/32 dev lo
ip -6 addr add fd00:ec2::254/128 dev lo

echo "IMDS-BOOT kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) specs=$*"
/vm-guest --daemon /imds-snoop --workdir /tmp "$@"
echo "IMDS-EXIT status=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
