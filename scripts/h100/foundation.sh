#!/usr/bin/env bash
# Runs on the GPU machine (see scripts/h100/stage.sh): the guest checks and
# the benchmark three ways side by side -- natively on NVIDIA's driver,
# through gpuvisor's guest driver over the vhost-user direct transport from a
# host process, and inside a QEMU VM -- and writes the combined JSON.
#
#   scripts/h100/foundation.sh [OUTDIR]     (default $OUT, else ./h100-out)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
mkdir -p "$out"
stage=$PWD/.stage
work=/tmp/gpuvisor-h100
rm -rf "$work" && mkdir -p "$work"
tar -xJf "$stage/bundle.tar.xz" -C "$work"
B=$work/bundle
T=$stage/guest-tests
OURS=$stage/lib/libcuda.so.1
log() { echo "== $*" >&2; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$work/gpu.txt" 2>&1
log "GPU: $(cat "$work/gpu.txt")"

# 1. Native: the same binaries on NVIDIA's libcuda.so.1.
log "native checks"
(cd "$T" && ./run-all.sh) > "$out/native.log" 2>&1
log "native bench"
"$T/gv_bench" > "$work/bench-native.jsonl" 2>>"$out/native.log"

# 2. Direct transport: a host process drives the backend's socket itself.
start_backend() {  # $1 socket, $2 log
    rm -f "$1"
    "$B/bin/gpuvisor-backend" --socket-path "$1" --engine cuda --vm-name direct --quota-mib "${QUOTA:-16384}" > "$2" 2>&1 &
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "backend did not start" >&2; return 1
}
sock=$work/direct.sock
log "direct checks"
: > "$out/direct.log"
for p in gv_devinfo gv_vector_add gv_memcpy gv_streams gv_events gv_errors; do
    start_backend "$sock" "$work/backend-direct-$p.log"
    GV_LIBCUDA=$OURS GPUVISOR_TRANSPORT=direct:$sock GV_EXPECT_QUOTA_MIB=${QUOTA:-16384} \
        "$T/run-all.sh" "$p" >> "$out/direct.log" 2>&1
    kill %1 2>/dev/null; wait 2>/dev/null
done
start_backend "$sock" "$work/backend-direct-probe.log"
GV_LIBCUDA=$OURS GPUVISOR_TRANSPORT=direct:$sock "$B/bin/gpuvisor-probe" bad-input >> "$out/direct.log" 2>&1
kill %1 2>/dev/null; wait 2>/dev/null
log "direct bench"
start_backend "$sock" "$work/backend-direct-bench.log"
GV_LIBCUDA=$OURS GPUVISOR_TRANSPORT=direct:$sock GPUVISOR_DIRECT_MEM_MIB=1536 "$T/gv_bench" \
    > "$work/bench-direct.jsonl" 2>>"$out/direct.log"
kill %1 2>/dev/null; wait 2>/dev/null

# 3. Inside a VM (TCG on this host; see DESIGN.md), cuda engine.
log "VM checks and bench"
"$B/bin/gpuvisor-vm" run --name h100 --qemu "$B/bin/qemu-system-x86_64" --backend "$B/bin/gpuvisor-backend" \
    --kernel "$B/guest/vmlinuz" --initramfs "$B/guest/initramfs.cpio.gz" --engine cuda --quota-mib 4096 \
    --memory-mib 3072 --timeout-s 420 \
    --run "env GV_EXPECT_QUOTA_MIB=4096 /opt/gpuvisor/tests/run-all.sh; gpuvisor-probe bad-input; /opt/gpuvisor/tests/gv_bench" \
    > "$out/vm.log" 2>&1
grep -a '^{"name"' "$out/vm.log" | tr -d '\r' > "$work/bench-vm.jsonl"
cat "$work"/backend-*.log > "$out/backend.log" 2>/dev/null

python3 scripts/h100/combine.py --native "$work/bench-native.jsonl" --direct "$work/bench-direct.jsonl" \
    --vm "$work/bench-vm.jsonl" --native-log "$out/native.log" --direct-log "$out/direct.log" --vm-log "$out/vm.log" \
    --gpu "$work/gpu.txt" --revision "$(cat "$stage/REVISION" 2>/dev/null)" \
    --command "scripts/h100/foundation.sh" > "$out/foundation.json"
cat "$out/foundation.json"
