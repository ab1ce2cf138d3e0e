#!/usr/bin/env bash
# Runs on the GPU machine (stage with scripts/h100/stage.sh): CUDA runtime
# programs and frameworks on the guest driver (issue 7), each beside its
# native run; writes runtime.json.
#
# 1. guest-tests/cuda/*.cu built here with nvcc (shared cudart, and static
#    for two of them), run natively and through the guest driver over the
#    vhost-user direct transport to a cuda-engine backend: every output line
#    but the TIME lines must match.
# 2. scripts/h100/frameworks.py with the host's PyTorch and CuPy, natively
#    and on the guest driver: device info, SGEMM/HGEMM 8192 (results and
#    time: gemm_ratio), a CuPy sample, training steps of a small CNN and a
#    small transformer (losses step by step, step time: train_step_ratio),
#    also with CUDA graphs.
# 2b. guest-tests' gv_graphs and gv_cudart_13s (static cudart 13.0),
#    natively and on the guest driver: CHECK verdicts must agree.
# Each guest run writes the guest driver's unsupported-call report.
#
#   scripts/h100/runtime.sh [OUTDIR]     (default $OUT, else ./h100-out)
# Knobs (env): STEP_TIMEOUT (180 s per run), QUOTA_MIB (65536), PY (python3),
# GEMM_REPS (200: products timed back to back, one synchronize after them;
# with 20 the guest's fixed 1.5-2 ms of first launch and last wait showed as 5%),
# TRAIN_RUNS (3: native and guest training runs in turn; the ratio is of the
# medians),
# GUEST_WRAP (a command the guest runs go through, e.g. "gdb -batch -ex run
# -ex bt --args" for a backtrace of a crash), SKIP_FRAMEWORKS=1, ONLY="names"
# (run only these steps: vector_add, matmul,
# bandwidth, streams, *_static, gv_graphs, gv_cudart_13s, fw-info, fw-gemm,
# fw-cupy, fw-cnn, fw-cnn-graphs, fw-transformer, fw-transformer-graphs).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
mkdir -p "$out"
. scripts/h100/lib.sh
h100_setup /tmp/gpuvisor-runtime
STEP_TIMEOUT=${STEP_TIMEOUT:-180}
QUOTA_MIB=${QUOTA_MIB:-65536}
PY=${PY:-python3}
TRAIN_RUNS=${TRAIN_RUNS:-3}
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
mkdir -p "$work/bin" "$work/drv"
ln -sf "$OURS" "$work/drv/libcuda.so.1"

log "building the samples with $NVCC ($("$NVCC" --version | tail -n1))"
for s in vector_add matmul bandwidth streams; do
    want "$s" || continue
    "$NVCC" -O2 -arch=sm_90 -cudart shared -o "$work/bin/$s" "guest-tests/cuda/$s.cu" > "$R/nvcc-$s.log" 2>&1 \
        || log "nvcc $s failed"
done
for s in vector_add matmul; do
    want "${s}_static" || continue
    "$NVCC" -O2 -arch=sm_90 -cudart static -o "$work/bin/${s}_static" "guest-tests/cuda/$s.cu" >> "$R/nvcc-$s.log" 2>&1 \
        || log "nvcc $s (static) failed"
done

n=0
guest() {  # name command... : one run on the guest driver, through a fresh backend
    local name=$1; shift
    n=$((n + 1))
    h100_start_backend "g$n" --quota-mib "$QUOTA_MIB" || return 1
    LD_LIBRARY_PATH="$work/drv${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" GPUVISOR_TRANSPORT="direct:$work/g$n.sock" \
        GPUVISOR_DIRECT_MEM_MIB=${DIRECT_MEM_MIB:-2048} GPUVISOR_UNSUPPORTED_REPORT="$R/unsupported-$name.json" \
        timeout "$STEP_TIMEOUT" ${GUEST_WRAP:-} "$@" > "$R/guest-$name.out" 2>&1
    echo "exit $?" >> "$R/guest-$name.out"
    stop_backends
}
native() {  # name command...
    local name=$1; shift
    timeout "$STEP_TIMEOUT" "$@" > "$R/native-$name.out" 2>&1
    echo "exit $?" >> "$R/native-$name.out"
}

for s in vector_add matmul bandwidth streams vector_add_static matmul_static; do
    [ -x "$work/bin/$s" ] && want "$s" || continue
    log "sample $s"
    native "$s" "$work/bin/$s"
    guest "$s" "$work/bin/$s"
done

# The guest-test programs that exercise graphs and the runtime's export
# tables, natively (the host's libcuda.so.1) and on the guest driver: their
# CHECK verdicts must agree (native error codes confirm the guest's).
for p in gv_graphs gv_cudart_13s; do
    [ -x "$T/$p" ] && want "$p" || continue
    log "program $p"
    native "$p" "$T/$p"
    guest "$p" "$T/$p"
done

if [ "${SKIP_FRAMEWORKS:-0}" != 1 ]; then
    FW=(scripts/h100/frameworks.py)
    for spec in "info|info" "gemm|gemm --n 8192 --reps ${GEMM_REPS:-200}" "cupy|cupy" \
        "cnn|train --model cnn --steps 30" "cnn-graphs|train --model cnn --steps 30 --graphs" \
        "transformer|train --model transformer --steps 30" \
        "transformer-graphs|train --model transformer --steps 30 --graphs"; do
        IFS='|' read -r name args <<< "$spec"
        want "fw-$name" || continue
        # Training steps are CPU-bound Python and their time moves between
        # runs by more than the target's margin: TRAIN_RUNS pairs, native
        # and guest in turn (the first named fw-NAME, the others fw-NAME.rI).
        runs=1; [[ $name == cnn* || $name == transformer* ]] && runs=$TRAIN_RUNS
        for i in $(seq "$runs"); do
            tag="fw-$name"; [ "$i" -gt 1 ] && tag="fw-$name.r$i"
            log "framework $name (run $i of $runs)"
            # shellcheck disable=SC2086
            native "$tag" "$PY" "${FW[@]}" $args --out "$R/native-$tag"
            # shellcheck disable=SC2086
            guest "$tag" "$PY" "${FW[@]}" $args --out "$R/guest-$tag"
        done
    done
fi

cp "$R"/*.out "$R"/*.json "$out/" 2>/dev/null
cat "$R"/backend-*.log 2>/dev/null | gzip > "$out/runtime-backend-logs.txt.gz"
"$PY" scripts/h100/runtime.py --res "$R" --revision "$(cat "$stage/REVISION" 2>/dev/null)" \
    --command "scripts/h100/runtime.sh" > "$out/runtime.json"
cat "$out/runtime.json"
