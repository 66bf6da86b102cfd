#!/bin/sh
# PID 1 of the User-Mode Linux guest started by kernel_sandbox.runner.
#
# The guest's root is the host's / (hostfs, read-only). The host passes, as
# kernel command-line variables (which the kernel hands to init as
# environment): SANDBOX_DIR (a writable host directory holding cmd.sh; the
# exit status is written back there), SANDBOX_MOUNTS (colon-separated host
# directories to mount read-write at the same path), SANDBOX_MODULES
# (colon-separated modules to load; "name,arg=value" adds parameters) and
# SANDBOX_MODULES_DIR (the module tree: <dir>/<release>/modules.dep).
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts
# The console is a tty: without this every line would end in CR LF on the host.
stty -onlcr < /dev/console 2>/dev/null

# Host directories the command may write to (the repository, results).
old_ifs=$IFS
IFS=:
for dir in $SANDBOX_MOUNTS; do
    mkdir -p "$dir" 2>/dev/null
    mount -t hostfs -o "$dir" hostfs "$dir" || echo "sandbox: cannot mount $dir read-write" >&2
done
IFS=$old_ifs

# /lib/modules does not exist on the (read-only) host root; give modprobe a
# private module tree instead (Debian's, or one with rebuilt netfilter modules).
release=$(uname -r)
modroot=/run/sandbox-modules
mkdir -p "$modroot/lib/modules/$release"
mount --bind "${SANDBOX_MODULES_DIR:-/usr/lib/uml/modules}/$release" "$modroot/lib/modules/$release"
IFS=:
for spec in $SANDBOX_MODULES; do
    IFS=,
    # shellcheck disable=SC2086 # word splitting on "," is the point
    set -- $spec
    IFS=:
    modprobe -d "$modroot" "$@" || echo "sandbox: cannot load module $1" >&2
done
IFS=$old_ifs

[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
ip link set lo up
hostname sandbox

# Run the command; its output goes through cat so that it does not see a tty.
{ sh "$SANDBOX_DIR/cmd.sh"; echo "$?" > "$SANDBOX_DIR/rc"; } 2>&1 < /dev/null | cat
sync
echo o > /proc/sysrq-trigger
# PID 1 must not exit before the power-off completes (that would panic).
while :; do sleep 1; done
