# Shared by the scripts/h100/*.sh runs (sourced, from the repository root):
# unpacks the staged bundle (scripts/h100/stage.sh) and starts and stops
# gpuvisord, backends and "clients" (guest test programs driving a backend
# through the guest driver over the vhost-user direct transport).
#
# After `h100_setup DIR`: B (bundle), T (guest test programs), OURS (the guest
# driver), R (raw results), stage. ENGINE (default cuda) picks the backends'
# engine. LOCAL_BUILD (a cargo profile directory such as target/debug, with
# the binaries and libcuda.so built) runs a script from this checkout instead
# of the staged bundle, for a dry run with ENGINE=sim before GPU time.

log() { echo "== $(date +%T) $*" >&2; }

h100_setup() {  # scratch dir
    stage=$PWD/.stage
    work=$1
    rm -rf "$work" && mkdir -p "$work/res"
    if [ -n "${LOCAL_BUILD:-}" ]; then
        B=$work/bundle
        mkdir -p "$B/bin"
        for b in gpuvisor-backend gpuvisord gpuvisorctl gpuvisor-probe; do
            [ -e "$LOCAL_BUILD/$b" ] && ln -s "$(realpath "$LOCAL_BUILD/$b")" "$B/bin/$b"
        done
        T=$work/guest-tests
        make -s -C guest-tests OUT="$T"
        OURS=$(realpath "$LOCAL_BUILD/libcuda.so")
    else
        tar -xJf "$stage/bundle.tar.xz" -C "$work"
        B=$work/bundle
        T=$stage/guest-tests
        OURS=$stage/lib/libcuda.so.1
    fi
    R=$work/res
    ENGINE=${ENGINE:-cuda}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$R/gpu.txt" 2>&1 \
        || echo "no GPU (nvidia-smi failed)" > "$R/gpu.txt"
    # Whether the kernel's seccomp audit lines reach dmesg here at all: an
    # empty seccomp-audit.log proves the cuda list complete only if they do.
    python3 scripts/h100/seccomp-control.py > "$R/seccomp-control.json" 2>&1 || true
    log "GPU: $(cat "$R/gpu.txt")"
}

# The revision being measured: the staged one, or this checkout's.
h100_revision() {
    if [ -z "${LOCAL_BUILD:-}" ] && [ -f "$stage/REVISION" ]; then
        tr '\n' ' ' < "$stage/REVISION"
    else
        git rev-parse HEAD | tr -d '\n'
        git status --porcelain | grep -q . && printf ' +uncommitted'
    fi
}

daemon_pid=
h100_start_daemon() {  # [gpuvisord args...]
    rm -rf "$work/state" && mkdir -p "$work/state"
    "$B/bin/gpuvisord" --backend-socket "$work/d.sock" --listen 127.0.0.1:9400 --state-dir "$work/state" \
        --no-auth "$@" >> "$R/gpuvisord.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do [ -S "$work/d.sock" ] && return 0; sleep 0.1; done
    log "gpuvisord did not start"; return 1
}
stop_daemon() { [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null; daemon_pid=; }

backend_pids=()
h100_start_backend() {  # name [backend args...]
    local name=$1; shift
    rm -f "$work/$name.sock"
    # On sim (trying a script anywhere), the backends share one simulated
    # GPU, so they take turns as on the real one.
    local shared=(); [ "$ENGINE" = sim ] && shared=(--sim-shared-gpu "$work/sim-gpu")
    # BACKEND_ARGS (env): more arguments for every backend, split at spaces.
    # shellcheck disable=SC2086
    "$B/bin/gpuvisor-backend" --socket-path "$work/$name.sock" --engine "$ENGINE" --vm-name "$name" "${shared[@]}" "$@" ${BACKEND_ARGS:-} \
        >> "$R/backend-$name.log" 2>&1 &
    backend_pids+=($!)
    for _ in $(seq 100); do [ -S "$work/$name.sock" ] && return 0; sleep 0.1; done
    log "backend $name did not start"; return 1
}
# The backends run with their default seccomp mode (enforce); what the
# kernel logged goes to seccomp-audit.log: a backend killed for a call
# outside its list (SIGSYS, code=0x80000000), or with BACKEND_ARGS-style
# `--seccomp log`, the calls the list lacks (code=0x7ffc0000).
stop_backends() {
    for p in "${backend_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; backend_pids=()
    dmesg 2>/dev/null | grep 'type=1326' > "$R/seccomp-audit.log" || true
}

h100_client() {  # program name out-file args... : through backend `name`, or natively when name starts with native
    # CLIENT_TIMEOUT (s, default 900) bounds each run, so that a run that
    # hangs still leaves its logs and a JSON saying so within the device
    # tool's limit; a client stopped this way prints "exit 124".
    local prog=$1 name=$2 outf=$3 rc=0; shift 3
    if [[ $name == native* ]]; then
        timeout "${CLIENT_TIMEOUT:-900}" "$T/$prog" "$@" > "$outf" 2>&1 || rc=$?
    else
        GV_LIBCUDA=$OURS GPUVISOR_TRANSPORT=direct:$work/$name.sock GPUVISOR_DIRECT_MEM_MIB=${DIRECT_MEM_MIB:-64} \
            timeout "${CLIENT_TIMEOUT:-900}" "$T/$prog" "$@" > "$outf" 2>&1 || rc=$?
    fi
    [ "$rc" = 124 ] && echo "exit 124 (stopped after ${CLIENT_TIMEOUT:-900} s)" >> "$outf"
    return "$rc"
}

snapshot() {  # file: gpuvisord's view of the VMs and GPUs
    python3 - "$1" <<'EOF'
import json, sys, urllib.request
out = {}
for what in ("vms", "gpus"):
    try:
        out[what] = json.load(urllib.request.urlopen(f"http://127.0.0.1:9400/v1/{what}", timeout=5))
    except Exception as e:
        out[what] = {"error": str(e)}
json.dump(out, open(sys.argv[1], "w"))
EOF
}

# Sets HOG_ITERS (gv_burn iterations for a 400 us kernel, which keeps the GPU
# saturated) and LC_ITERS (100 us: a small inference-like request), from two
# native runs of one kernel each.
h100_calibrate() {
    local it
    for it in 20000 200000; do
        h100_client gv_load native-$it "$R/calib-native-$it.out" latency --seconds 1 --kernels 1 --iters $it \
            --blocks 264 --gap-us 0
    done
    read -r HOG_ITERS LC_ITERS < <(python3 - "$R" <<'EOF'
import json, sys
def p50(it):
    for l in open(f"{sys.argv[1]}/calib-native-{it}.out"):
        if l.startswith("GVLOAD "):
            return json.loads(l[7:]).get("p50_us")
a, b = p50(20000), p50(200000)
if not a or not b or b <= a:
    print(400000, 100000)   # no native GPU (ENGINE=sim): the sim engine's 1 ns per iteration
    sys.exit(0)
per_iter = (b - a) / 180000.0
fixed = a - 20000 * per_iter
print(max(int((400 - fixed) / per_iter), 1000), max(int((100 - fixed) / per_iter), 1000))
EOF
)
}
