#!/usr/bin/env bash
# Runs on the GPU machine (stage with scripts/h100/stage.sh): the host's own
# Python with PyTorch and CuPy, run INSIDE a VM (TCG, cuda engine) straight
# from the host's directories -- exported read-only over 9p (VM spec
# host_paths, gpuvisor-vm --host-path) and entered with gpuvisor-host-run in
# the guest -- on the guest driver (issue 7). Nothing of either framework is
# in the guest image. Writes vm-frameworks.json.
#
# 1. Where $PY, torch and cupy live (vm_frameworks.py discover): /usr and
#    the prefixes and site-packages outside it are exported.
# 2. Natively, for reference (beside the VM, to save time): vm_frameworks.py
#    driver, torch (is_available, a matmul, an elementwise sum, a conv2d
#    against the CPU, a training step) and cupy (elementwise, matmul against
#    NumPy, an NVRTC-compiled kernel).
# 3. One VM runs the same three, each under its own timeout, and checks that
#    the libcuda.so.1 each process mapped is the guest driver (SHA-256).
# About 4 to 9 minutes: on the project machine's TCG guest, importing torch
# 2.15 with its CUDA 13 wheels over 9p took 56 s and CuPy 19 s.
#
#   scripts/h100/vm-frameworks.sh [OUTDIR]     (default $OUT, else ./h100-out)
# Knobs (env): PY (python3), ENGINE (cuda; sim tries the plumbing anywhere),
# VM_TIMEOUT (570 s, the whole VM), TORCH_TIMEOUT (330 s), CUPY_TIMEOUT
# (180 s), NATIVE_TIMEOUT (180 s per native step), SKIP_NATIVE=1, QUOTA_MIB (16384),
# MEM_MIB (8192), VCPUS (4), N (1024, the matmul size), EXTRA_HOST_PATHS
# (more host directories to export, colon-separated).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
mkdir -p "$out"
. scripts/h100/lib.sh
h100_setup /tmp/gpuvisor-vmfw
PY=${PY:-python3}
VM_TIMEOUT=${VM_TIMEOUT:-570}
TORCH_TIMEOUT=${TORCH_TIMEOUT:-330}
CUPY_TIMEOUT=${CUPY_TIMEOUT:-180}
NATIVE_TIMEOUT=${NATIVE_TIMEOUT:-180}
QUOTA_MIB=${QUOTA_MIB:-16384}
MEM_MIB=${MEM_MIB:-8192}
VCPUS=${VCPUS:-4}
N=${N:-1024}
FW=scripts/h100/vm_frameworks.py
share=$work/share
mkdir -p "$share"
cp "$FW" "$share/vm_frameworks.py"
# The host loader's cache, for the guest tree's /etc (which is not exported):
# libraries resolve as they do natively (LD_LIBRARY_PATH would not do, it
# outranks RUNPATH).
cp /etc/ld.so.cache "$share/ld.so.cache" 2>/dev/null || log "no /etc/ld.so.cache here"

finish() {  # writes the JSON (whatever ran) and copies the logs
    cp "$R"/native-*.out "$R"/discover.* "$R"/vm-console.log "$R"/vm-stderr.log "$out/" 2>/dev/null
    for f in backend.log qemu.log qemu.cmdline; do
        [ -f "$work/run/$f" ] && cp "$work/run/$f" "$out/vm-frameworks-$f"
    done
    "$PY" "$FW" report --res "$R" --engine "$ENGINE" --revision "$(cat "$stage/REVISION" 2>/dev/null)" \
        > "$out/vm-frameworks.json"
    log "wrote $out/vm-frameworks.json: $("$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print("pass" if d["pass"] else "FAIL", d["verdict"])' "$out/vm-frameworks.json" 2>&1)"
}

# 1. What to export.
log "discovering $PY's prefix, PyTorch and CuPy"
if ! timeout 120 "$PY" "$FW" discover --out "$R/discover.json" > "$R/discover.txt" 2> "$R/discover.err"; then
    log "discover failed: $(tail -n 3 "$R/discover.err")"
    finish
    exit 1
fi
exe=$(awk '$1 == "EXE" { print $2 }' "$R/discover.txt")
mapfile -t exports < <(awk '$1 == "EXPORT" { print $2 }' "$R/discover.txt")
IFS=: read -r -a extra <<< "${EXTRA_HOST_PATHS:-}"
exports+=("${extra[@]}")
host_flags=()
for e in "${exports[@]}"; do [ -n "$e" ] && host_flags+=(--host-path "$e"); done
log "python $exe; exporting ${exports[*]}"
log "$(grep -E '"(torch|cupy)"' -A2 "$R/discover.json" | tr -s ' \n' ' ')"

# 2. Natively, in the background while the VM boots and imports.
native_pid=
if [ "${SKIP_NATIVE:-0}" != 1 ]; then
    (
        for mode in driver torch cupy; do
            timeout "$NATIVE_TIMEOUT" "$exe" "$share/vm_frameworks.py" "$mode" --n "$N" > "$R/native-$mode.out" 2>&1
            echo "exit $?" >> "$R/native-$mode.out"
            log "native $mode: $(grep -c ': PASS' "$R/native-$mode.out") passed, $(grep -c ': FAIL' "$R/native-$mode.out") failed"
        done
    ) &
    native_pid=$!
fi

# 3. In the VM. The guest script: the guest driver's checksum, then each
# step through gpuvisor-host-run under its own timeout. Uptime marks time
# each step.
{
    echo 'up() { cut -d" " -f1 /proc/uptime; }'
    echo 'sum=$(sha256sum /usr/lib/gpuvisor/libcuda.so.1 | cut -c1-64)'
    echo 'gpuvisor-host-run --status'
    echo 'root=$(gpuvisor-host-run --root)'
    echo '[ ! -f /mnt/host/ld.so.cache ] || cp /mnt/host/ld.so.cache "$root/etc/ld.so.cache" || echo "no ld.so.cache in the tree"'
    awk '$1 == "ENV" { sub(/^ENV /, ""); i = index($0, "="); printf "export %s='\''%s'\''\n", substr($0, 1, i - 1), substr($0, i + 1) }' \
        "$R/discover.txt"
    echo 'rc=0'
    echo "for s in 'driver 90' 'torch $TORCH_TIMEOUT' 'cupy $CUPY_TIMEOUT'; do"
    echo '    set -- $s'
    echo '    echo "VMFW-STEP $1 start $(up)"'
    echo "    timeout \"\$2\" gpuvisor-host-run '$exe' /mnt/host/vm_frameworks.py \"\$1\" --driver-sha256 \"\$sum\" --n $N"
    echo '    r=$?'
    echo '    echo "VMFW-STEP $1 exit $r $(up)"'
    echo '    [ $r -eq 0 ] || rc=$r'
    echo 'done'
    echo 'exit $rc'
} > "$share/run.sh"
log "VM ($ENGINE engine, TCG, ${MEM_MIB} MiB, $VCPUS vCPUs, timeout ${VM_TIMEOUT} s): $(tr '\n' ';' < "$share/run.sh" | head -c 300)..."
rm -rf "$work/run"
timeout $((VM_TIMEOUT + 60)) "$B/bin/gpuvisor-vm" run --name vmfw --qemu "$B/bin/qemu-system-x86_64" \
    --backend "$B/bin/gpuvisor-backend" --kernel "$B/guest/vmlinuz" --initramfs "$B/guest/initramfs.cpio.gz" \
    --engine "$ENGINE" --quota-mib "$QUOTA_MIB" --memory-mib "$MEM_MIB" --vcpus "$VCPUS" --accel tcg \
    --timeout-s "$VM_TIMEOUT" --share-dir "$share" "${host_flags[@]}" --run "sh /mnt/host/run.sh" \
    --run-dir "$work/run" > "$R/vm-console.log" 2> "$R/vm-stderr.log"
echo $? > "$R/vm.rc"
log "VM exit $(cat "$R/vm.rc"); $(grep -a 'gpuvisor-host-run: host tree' "$R/vm-console.log" | head -n 1)"
grep -a '^VMFW-STEP\|^CHECK vmfw' "$R/vm-console.log" | tr -d '\r' | while read -r l; do log "guest: $l"; done
grep -a 'warning\|error' "$R/vm-stderr.log" | tail -n 5 | while read -r l; do log "gpuvisor-vm: $l"; done
[ -z "$native_pid" ] || wait "$native_pid"

finish
