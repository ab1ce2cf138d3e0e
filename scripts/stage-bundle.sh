#!/usr/bin/env bash
# Stages a relocatable bundle for another x86-64 Linux host that has no QEMU and no
# internet (e.g. the Ubuntu 24.04 GPU host): this host's QEMU with every library it
# needs except glibc, the firmware and QEMU modules our q35 VMs load, the guest
# kernel and initramfs, and any extra binaries (gpuvisor-vm, gpuvisor-backend, ...).
# Packs it as a .tar.xz and prints its size.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/stage-bundle.sh [--out DIR] [--guest DIR] [--bin PATH]... [--qemu PATH] [--tar FILE]

  --out DIR     staging directory (default: .stage/bundle; emptied first)
  --guest DIR   guest image from images/build-guest.sh (default: build/guest)
  --bin PATH    extra binary to ship in bin/, with its libraries (repeatable); e.g.
                target/release/gpuvisor-vm, target/release/gpuvisor-backend,
                /usr/lib/qemu/vhost-user-gpu
  --qemu PATH   QEMU binary to ship (default: qemu-system-x86_64 on PATH)
  --tar FILE    archive to write (default: <out>.tar.xz)

On the target:  tar -xJf bundle.tar.xz && bundle/bin/qemu-system-x86_64 --version
The bin/ entries are wrappers that set LD_LIBRARY_PATH (and, for QEMU, the firmware
dir with -L and QEMU_MODULE_DIR) and exec the real binaries in libexec/.
EOF
}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$repo_root/.stage/bundle"
guest="$repo_root/build/guest"
qemu=$(command -v qemu-system-x86_64 || true)
tarball=""
bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --guest) guest=$2; shift 2 ;;
        --bin) bins+=("$2"); shift 2 ;;
        --qemu) qemu=$2; shift 2 ;;
        --tar) tarball=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "stage-bundle: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
log() { echo "stage-bundle: $*" >&2; }
die() { echo "stage-bundle: error: $*" >&2; exit 1; }

[ -n "$qemu" ] && [ -x "$qemu" ] || die "qemu-system-x86_64 not found (scripts/install-prereqs.sh)"
qemu=$(readlink -f "$qemu")
[ -n "$tarball" ] || tarball="${out%/}.tar.xz"

# Modules our VMs load (vhost-user-gpu-pci lives in these; checked with strace) and
# firmware: SeaBIOS, the -kernel option ROMs and the KVM vAPIC ROM.
qemu_modules=(hw-display-virtio-gpu.so hw-display-virtio-gpu-pci.so)
firmware=(bios-256k.bin kvmvapic.bin linuxboot_dma.bin linuxboot.bin multiboot_dma.bin pvh.bin)
firmware_dirs=(/usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu /usr/share/qemu-efi)
module_dirs=(/usr/lib/x86_64-linux-gnu/qemu /usr/lib/qemu /usr/lib64/qemu)

# glibc's own libraries come from the target: mixing glibc versions breaks
# (GLIBC_PRIVATE symbols), and the target's is newer and compatible.
is_glibc() {
    case "$1" in
        libc.so.*|ld-linux*|libm.so.*|libmvec.so.*|libpthread.so.*|libdl.so.*|librt.so.*|\
        libresolv.so.*|libutil.so.*|libanl.so.*|libnsl.so.1|libBrokenLocale.so.*|\
        libthread_db.so.*|libnss_*|linux-vdso.so.*) return 0 ;;
    esac
    return 1
}

rm -rf "$out"
mkdir -p "$out"/{bin,libexec,lib/qemu,share/qemu,guest}
out=$(cd "$out" && pwd)

declare -A have_lib=()
add_libs() {  # copies the non-glibc libraries ldd finds for each file
    local f name path
    for f in "$@"; do
        if ldd "$f" 2>/dev/null | grep -q 'not found'; then
            die "$f needs libraries missing here: $(ldd "$f" | awk '/not found/ {print $1}' | tr '\n' ' ')"
        fi
        while read -r name path; do
            is_glibc "$name" && continue
            [ -n "${have_lib[$name]:-}" ] && continue
            cp -L "$path" "$out/lib/$name"
            have_lib[$name]=1
        done < <(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
    done
}

write_wrapper() {  # name, extra shell lines, exec line
    local name=$1 extra=$2 exec_line=$3
    cat > "$out/bin/$name" <<EOF
#!/bin/sh
# Runs the bundled $name with the bundle's libraries (not the host's).
root=\$(cd "\$(dirname "\$(readlink -f "\$0")")/.." && pwd)
export LD_LIBRARY_PATH="\$root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
$extra
$exec_line
EOF
    chmod 755 "$out/bin/$name"
}

# --- QEMU -------------------------------------------------------------------------
cp "$qemu" "$out/libexec/qemu-system-x86_64"
add_libs "$qemu"
for m in "${qemu_modules[@]}"; do
    found=""
    for d in "${module_dirs[@]}"; do
        if [ -f "$d/$m" ]; then found=$d/$m; break; fi
    done
    if [ -n "$found" ]; then
        cp "$found" "$out/lib/qemu/$m"
        add_libs "$found"
    else
        log "warning: QEMU module $m not found (built in?)"
    fi
done
for fw in "${firmware[@]}"; do
    found=""
    for d in "${firmware_dirs[@]}"; do
        if [ -e "$d/$fw" ]; then found=$d/$fw; break; fi
    done
    [ -n "$found" ] || die "firmware $fw not found in ${firmware_dirs[*]}"
    cp -L "$found" "$out/share/qemu/$fw"
done
write_wrapper qemu-system-x86_64 'export QEMU_MODULE_DIR="$root/lib/qemu"' \
    'exec "$root/libexec/qemu-system-x86_64" -L "$root/share/qemu" "$@"'

# --- extra binaries ------------------------------------------------------------------
for b in ${bins[@]+"${bins[@]}"}; do
    [ -f "$b" ] && [ -x "$b" ] || die "--bin $b is not an executable file"
    name=${b##*/}
    cp -L "$b" "$out/libexec/$name"
    add_libs "$b"
    write_wrapper "$name" '' "exec \"\$root/libexec/$name\" \"\$@\""
done

# --- guest image --------------------------------------------------------------------
if [ -f "$guest/vmlinuz" ] && [ -f "$guest/initramfs.cpio.gz" ]; then
    cp -p "$guest/vmlinuz" "$guest/initramfs.cpio.gz" "$out/guest/"
else
    log "warning: no guest image in $guest (run images/build-guest.sh); left out"
fi

cat > "$out/README" <<'EOF'
gpuvisor bundle: QEMU (with its libraries except glibc, firmware in share/qemu, modules
in lib/qemu), the guest kernel and initramfs in guest/, and extra binaries.
Run everything through bin/: the wrappers set LD_LIBRARY_PATH, -L and QEMU_MODULE_DIR.
Example (with gpuvisor-vm and a backend in the bundle):
  bundle/bin/gpuvisor-vm run --qemu bundle/bin/qemu-system-x86_64 \
      --kernel bundle/guest/vmlinuz --initramfs bundle/guest/initramfs.cpio.gz \
      --backend bundle/bin/gpuvisor-backend
EOF

# Every library must now resolve inside the bundle or to the target's glibc.
for f in "$out"/libexec/* "$out"/lib/qemu/*.so; do
    bad=$(env -i LD_LIBRARY_PATH="$out/lib" ldd "$f" 2>/dev/null | awk '$2 == "=>" {print $1, $3}' |
        while read -r name path; do
            is_glibc "$name" && continue
            case "$path" in "$out"/*) ;; *) echo "$name=$path" ;; esac
        done)
    [ -z "$bad" ] || die "$f resolves outside the bundle: $bad"
done

# --- pack ------------------------------------------------------------------------------
mkdir -p "$(dirname "$tarball")"
tar -C "$(dirname "$out")" -cf - "$(basename "$out")" | xz -T0 -6 > "$tarball.tmp"
mv "$tarball.tmp" "$tarball"
log "staged $out ($(du -sh "$out" | cut -f1), $(ls "$out/lib" | wc -l) libraries)"
echo "$tarball $(du -h "$tarball" | cut -f1) ($(stat -c %s "$tarball") bytes)"
