#!/usr/bin/env bash
# Builds the gpuvisor guest image: the host's Debian kernel (vmlinuz) and a busybox
# initramfs with the virtio-gpu, 9p and overlay modules, the host's C library, the
# guest driver (as libcuda.so.1 on the loader's default path), the guest test
# programs and gpuvisor-host-run (host programs in the guest over 9p).
# Re-runnable; takes a few seconds. See --help and images/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: images/build-guest.sh [--out DIR] [--driver PATH] [--tests DIR] [--extra SRC:DST]...
                             [--kernel-version KVER]

Builds DIR/vmlinuz and DIR/initramfs.cpio.gz (DIR defaults to build/guest).

  --out DIR          output directory (default: build/guest, relative to the repo root)
  --driver PATH      guest driver .so, installed as /usr/lib/gpuvisor/libcuda.so.1 and
                     linked from /usr/lib/x86_64-linux-gnu so dlopen("libcuda.so.1") finds it
  --tests DIR        directory of guest test programs, copied to /opt/gpuvisor/tests
  --extra SRC:DST    copy host file or directory SRC to DST in the image (repeatable)
  --kernel-version K kernel to use (default: newest /boot/vmlinuz-*)

Missing optional inputs (a --driver or --tests path that does not exist) are left out
with a warning. Shared libraries the driver and test programs need (ldd) are added.

Kernel command line understood by the guest's /init:
  gpuvisor.run=CMD     command to run; commas stand for spaces, the result runs under
                       `sh -c` (e.g. gpuvisor.run=cat,/mnt/host/hello.txt). Default: every
                       executable in /opt/gpuvisor/tests, in name order.
  gpuvisor.share=TAG   mount the 9p share TAG read-only at /mnt/host
  gpuvisor.hostfs=P1:P2:...
                       mount 9p tags hostfs0, hostfs1, ... read-only at /host/P1,
                       /host/P2, ... and build the tree gpuvisor-host-run runs
                       commands in (overlay, changes in RAM; guest driver as
                       libcuda.so.1). gpuvisor-vm sets it from host_paths.
  gpuvisor.shell=1     start a shell on the console instead of powering off
EOF
}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$repo_root/build/guest"
driver=""
tests=""
kver=""
extras=()

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --driver) driver=$2; shift 2 ;;
        --tests) tests=$2; shift 2 ;;
        --extra) extras+=("$2"); shift 2 ;;
        --kernel-version) kver=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-guest: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

start_ns=$(date +%s%N)

# --- kernel ---------------------------------------------------------------
if [ -z "$kver" ]; then
    newest=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$newest" ] || die "no /boot/vmlinuz-* found (run scripts/install-prereqs.sh)"
    kver=${newest#/boot/vmlinuz-}
fi
vmlinuz=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$vmlinuz" ] || die "kernel $vmlinuz not readable"
[ -r "$moddir/modules.dep" ] || die "$moddir/modules.dep missing"

busybox=/bin/busybox
[ -x "$busybox" ] || busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found"
if ldd "$busybox" >/dev/null 2>&1; then
    # A dynamic busybox would still run (we ship the loader), but say so.
    log "warning: $busybox is not statically linked"
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(mktemp -d "${TMPDIR:-/tmp}/gpuvisor-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

# --- layout (merged /usr, like Debian) --------------------------------------
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,usr/lib/gpuvisor}
mkdir -p "$root"/{dev,proc,sys,tmp,run,mnt/host,host,root,etc/gpuvisor,opt/gpuvisor/tests}
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
chmod 1777 "$root/tmp"

cp "$busybox" "$root/usr/bin/busybox"
install -m 755 "$repo_root/images/gpuvisor-host-run" "$root/usr/bin/gpuvisor-host-run"
# Symlinks to /bin/busybox, which resolves to usr/bin/busybox in the image.
"$busybox" --install -s "$root/usr/bin"

# --- kernel modules -----------------------------------------------------------
# Wanted roots; dependencies come from modules.dep. A module that is built in
# (modules.builtin or =y in the config) is skipped.
# overlay: gpuvisor-host-run's writable tree over the read-only host export.
wanted=(virtio_pci virtio_gpu 9pnet_virtio 9p overlay virtio_console virtio_blk)

declare -A dep_of=() path_of=() seen=()
order=()
# norm sets $N to a module's name: file name without .ko*, '-' as '_'.
norm() { N=${1##*/}; N=${N%%.ko*}; N=${N//-/_}; }
while IFS= read -r line; do
    mod=${line%%:*}
    norm "$mod"
    path_of[$N]=$mod
    deps=${line#*:}
    dep_of[$N]=${deps# }
done < "$moddir/modules.dep"

builtin_mod() {
    local n=$1
    if [ -r "$moddir/modules.builtin" ] && sed 's/.*\///; s/\.ko.*//; s/-/_/g' "$moddir/modules.builtin" | grep -qx "$n"; then
        return 0
    fi
    return 1
}

visit() {
    local n=$1 d
    [ -n "${seen[$n]:-}" ] && return 0
    seen[$n]=1
    for d in ${dep_of[$n]:-}; do norm "$d"; visit "$N"; done
    order+=("$n")
}

for m in "${wanted[@]}"; do
    norm "$m"
    n=$N
    if [ -z "${path_of[$n]:-}" ]; then
        if builtin_mod "$n"; then
            log "module $n is built in"
        else
            log "warning: module $n is neither a module nor built in to $kver; left out"
        fi
        continue
    fi
    visit "$n"
done

kmods="$root/usr/lib/modules/$kver"
mkdir -p "$kmods"
: > "$root/etc/gpuvisor/modules"
for n in "${order[@]}"; do
    src=$moddir/${path_of[$n]}
    dst=$kmods/$n.ko
    case "$src" in
        *.ko.xz) xz -dc "$src" > "$dst" ;;
        *.ko.zst) zstd -q -dc "$src" > "$dst" ;;
        *.ko.gz) gzip -dc "$src" > "$dst" ;;
        *.ko) cp "$src" "$dst" ;;
        *) die "unknown module format: $src" ;;
    esac
    echo "/lib/modules/$kver/$n.ko" >> "$root/etc/gpuvisor/modules"
done
log "kernel $kver, ${#order[@]} modules: ${order[*]}"

# --- C library and loader -------------------------------------------------------
multiarch=/usr/lib/x86_64-linux-gnu
[ -d "$multiarch" ] || multiarch=/lib/x86_64-linux-gnu
copy_lib() {
    # Copies a library under its own (soname) file name, following symlinks.
    local src=$1
    local base=${src##*/}
    [ -e "$root/usr/lib/x86_64-linux-gnu/$base" ] && return 0
    cp -L "$src" "$root/usr/lib/x86_64-linux-gnu/$base"
}
for lib in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libgcc_s.so.1 ld-linux-x86-64.so.2; do
    [ -e "$multiarch/$lib" ] || die "$multiarch/$lib missing"
    copy_lib "$multiarch/$lib"
done
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/usr/lib64/ld-linux-x86-64.so.2"

# Adds every library that ldd reports for the given ELF files.
add_needed_libs() {
    local f lib
    for f in "$@"; do
        # ldd fails on scripts and static programs: nothing to add for them.
        ldd "$f" >/dev/null 2>&1 || continue
        while IFS= read -r lib; do
            [ -n "$lib" ] && [ -e "$lib" ] && copy_lib "$lib"
        done < <(ldd "$f" 2>/dev/null | awk '/=> \// { print $3 }')
        if ldd "$f" 2>/dev/null | grep -q 'not found'; then
            log "warning: $f needs libraries not on this host: $(ldd "$f" | awk '/not found/ {print $1}' | grep -v '^libcuda\.so' | tr '\n' ' ')"
        fi
    done
}

# --- guest driver, tests, extras --------------------------------------------------
if [ -n "$driver" ]; then
    if [ -f "$driver" ]; then
        cp -L "$driver" "$root/usr/lib/gpuvisor/libcuda.so.1"
        ln -s ../gpuvisor/libcuda.so.1 "$root/usr/lib/x86_64-linux-gnu/libcuda.so.1"
        ln -s libcuda.so.1 "$root/usr/lib/x86_64-linux-gnu/libcuda.so"
        add_needed_libs "$driver"
        log "driver $driver -> /usr/lib/gpuvisor/libcuda.so.1"
    else
        log "warning: driver $driver not found, left out"
    fi
fi
if [ -n "$tests" ]; then
    if [ -d "$tests" ]; then
        cp -a "$tests"/. "$root/opt/gpuvisor/tests/"
        mapfile -t test_files < <(find "$root/opt/gpuvisor/tests" -type f)
        add_needed_libs "${test_files[@]}"
        log "tests $tests -> /opt/gpuvisor/tests (${#test_files[@]} files)"
    else
        log "warning: tests dir $tests not found, left out"
    fi
fi
for e in ${extras[@]+"${extras[@]}"}; do
    src=${e%%:*}
    dst=${e#*:}
    [ "$src" != "$e" ] && [ -n "$dst" ] || die "--extra wants SRC:DST, got $e"
    if [ ! -e "$src" ]; then log "warning: extra $src not found, left out"; continue; fi
    mkdir -p "$root/$(dirname "$dst")"
    cp -a "$src" "$root/$dst"
    if [ -f "$src" ]; then add_needed_libs "$src"; fi
done

# The loader's default search path already has /usr/lib/x86_64-linux-gnu; the cache
# adds /usr/lib/gpuvisor too, for programs that look there.
cat > "$root/etc/ld.so.conf" <<'EOF'
/usr/lib/gpuvisor
/usr/lib/x86_64-linux-gnu
EOF
if [ "$(id -u)" -eq 0 ] && command -v ldconfig >/dev/null; then
    ldconfig -r "$root" 2>/dev/null || log "warning: ldconfig -r failed; relying on default search path"
fi
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
echo "$kver" > "$root/etc/gpuvisor/kernel-version"

# --- /init ------------------------------------------------------------------
cat > "$root/init" <<'INIT'
#!/bin/sh
# gpuvisor guest init: modules, render node, optional 9p shares, run, power off.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root TERM=${TERM:-linux}
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null

say() { echo "gpuvisor-guest: $*"; }
centis() {  # uptime in 1/100 s, without leading zeros (sh reads those as octal)
    read -r up _ </proc/uptime
    v="${up%.*}${up#*.}"
    while [ "${v#0}" != "$v" ] && [ "${#v}" -gt 1 ]; do v=${v#0}; done
    echo "$v"
}

t0=$(centis)
while read -r ko; do
    insmod "$ko" 2>/tmp/insmod.err || say "insmod $ko failed: $(cat /tmp/insmod.err)"
done </etc/gpuvisor/modules

thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
[ -w "$thp" ] && { echo force >"$thp"; } 2>/dev/null

cmdline=$(cat /proc/cmdline)
arg() {  # value of gpuvisor.$1= on the kernel command line
    for w in $cmdline; do
        case "$w" in "gpuvisor.$1="*) echo "${w#*=}"; return 0 ;; esac
    done
    return 1
}

i=0
while [ ! -e /dev/dri/renderD128 ] && [ $i -lt 3000 ]; do usleep 10000; i=$((i + 1)); done
t1=$(centis)
if [ -e /dev/dri/renderD128 ]; then
    read -r up _ </proc/uptime
    say "render node ready after $(( (t1 - t0) * 10 )) ms (uptime $up s)"
else
    say "FAILED: no /dev/dri/renderD128 after 30 s (virtio-gpu missing or failed to probe)"
fi
dmesg | grep -E '\[drm\]|virtio_gpu|virtio-gpu' | while read -r l; do say "dmesg: $l"; done

if share=$(arg share); then
    if mount -t 9p -o trans=virtio,version=9p2000.L,ro "$share" /mnt/host; then
        say "mounted 9p share $share at /mnt/host"
    else
        say "FAILED: mount 9p share $share"
    fi
fi
if hostfs=$(arg hostfs); then
    gpuvisor-host-run --mount "$hostfs" || say "FAILED: host tree (gpuvisor.hostfs=$hostfs)"
fi

cd /
rc=0
if run=$(arg run); then
    cmd=$(echo "$run" | tr ',' ' ')
    say "run: $cmd"
    sh -c "$cmd"
    rc=$?
else
    for t in /opt/gpuvisor/tests/*; do
        [ -f "$t" ] && [ -x "$t" ] || continue
        say "test ${t##*/}"
        "$t"
        r=$?
        say "test ${t##*/} rc=$r"
        [ $r -ne 0 ] && rc=$r
    done
fi
say "exit $rc"

if [ "$(arg shell)" = 1 ]; then
    say "gpuvisor.shell=1: starting a shell; exit it to power off"
    setsid cttyhack sh -l
fi
sync
poweroff -f
INIT
chmod 755 "$root/init"

# --- pack --------------------------------------------------------------------------
# -p keeps the mtime, so the accel probe cache (keyed on it) survives rebuilds.
cmp -s "$vmlinuz" "$out/vmlinuz" || { cp -p "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"; }
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
    | gzip -6 > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$kver" > "$out/kernel-version"

end_ns=$(date +%s%N)
log "wrote $out/vmlinuz ($(du -h "$out/vmlinuz" | cut -f1)) and $out/initramfs.cpio.gz ($(du -h "$out/initramfs.cpio.gz" | cut -f1)) in $(( (end_ns - start_ns) / 1000000 )) ms"
