#!/usr/bin/env bash
# Runs on the GPU machine (stage with scripts/h100/stage.sh): gpuvisord's
# scheduling measured side by side with the baselines in one run -- plain
# processes on the GPU's own time slicing, and MPS -- and writes sched.json.
#
# Clients are gv_load processes. gpuvisor's run them through the guest
# driver over the vhost-user direct transport (a host process drives the
# backend's virtqueues; DESIGN.md says why not TCG guests for timing), one
# backend per "VM", all registered with one gpuvisord. Backends also log each
# request's latency from its arrival to its completion on the GPU.
#
#   scripts/h100/sched.sh [OUTDIR]     (default $OUT, else ./h100-out)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
mkdir -p "$out"
. scripts/h100/lib.sh
h100_setup /tmp/gpuvisor-sched
SECS=${SECS:-15}
SLICE_MS=${SLICE_MS:-5}
# ENGINE=sim runs the gpuvisor half anywhere, to try the script.

start_daemon() { h100_start_daemon --slice-ms "$SLICE_MS"; }
start_backend() {  # name [backend args...]
    h100_start_backend "$1" --quota-mib 8192 --latency-log "$R/$tag-$1.lat" "${@:2}"
}
# Runs gv_load for "VM" $1 through its backend (direct transport), or natively
# when $1 starts with "native".
client() { h100_client gv_load "$1" "$R/$tag-$1.out" "${@:2}"; }
# Waits for the clients started in the background (not the daemon or backends).
wait_clients() {
    local p
    for p in $(jobs -p); do
        case " $daemon_pid ${backend_pids[*]} " in *" $p "*) ;; *) wait "$p" ;; esac
    done
}

# 0. Calibration: how long one gv_burn kernel takes alone, natively.
h100_calibrate
log "hog kernel: $HOG_ITERS iterations; latency kernel: $LC_ITERS iterations"
HOG=(saturate --seconds "$SECS" --iters "$HOG_ITERS" --blocks 264 --depth 4)
LC=(latency --seconds "$SECS" --kernels 4 --iters "$LC_ITERS" --blocks 264 --gap-us 1000)

# 1. share_error: three saturating VMs, weights 1:1:2.
log "share: gpuvisor, weights 1:1:2"
tag=share
start_daemon
start_backend a --daemon "$work/d.sock" --weight 1
start_backend b --daemon "$work/d.sock" --weight 1
start_backend c --daemon "$work/d.sock" --weight 2
client a "${HOG[@]}" & client b "${HOG[@]}" & client c "${HOG[@]}" &
sleep $((SECS - 3)); snapshot "$R/share-api.json"; wait_clients
stop_backends; stop_daemon
log "share: native processes (the GPU's own time slicing)"
tag=share
client native-a "${HOG[@]}" & client native-b "${HOG[@]}" & client native-c "${HOG[@]}" & wait_clients

# 2. latency_p99_colocated: a latency-critical VM beside a saturating one.
log "latency: gpuvisor alone, then beside a saturating VM (QoS on)"
start_daemon
tag=lat-alone; start_backend lc --daemon "$work/d.sock" --class guaranteed --priority 10 --weight 1
client lc "${LC[@]}"; stop_backends
tag=lat-qos; start_backend lc --daemon "$work/d.sock" --class guaranteed --priority 10 --weight 1
start_backend hog --daemon "$work/d.sock" --class burstable --weight 1
client hog "${HOG[@]}" & sleep 1; client lc "${LC[@]}"; snapshot "$R/lat-qos-api.json"; wait_clients
stop_backends; stop_daemon
log "latency: gpuvisor without gpuvisord (backends alone on the GPU's time slicing)"
tag=lat-nodaemon-alone; start_backend lc; client lc "${LC[@]}"; stop_backends
tag=lat-nodaemon; start_backend lc; start_backend hog
client hog "${HOG[@]}" & sleep 1; client lc "${LC[@]}"; wait_clients; stop_backends
log "latency: native processes"
tag=lat-native-alone; client native-lc "${LC[@]}"
tag=lat-native; client native-hog "${HOG[@]}" & sleep 1; client native-lc "${LC[@]}"; wait_clients
log "latency: MPS (private pipe directory, stopped afterwards)"
export CUDA_MPS_PIPE_DIRECTORY=$work/mps-pipe CUDA_MPS_LOG_DIRECTORY=$work/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
if nvidia-cuda-mps-control -d; then
    sleep 1
    tag=lat-mps-alone; client native-lc "${LC[@]}"
    tag=lat-mps; client native-hog "${HOG[@]}" & sleep 1; client native-lc "${LC[@]}"; wait_clients
    echo quit | nvidia-cuda-mps-control
    sleep 1
else
    log "MPS did not start"
fi
unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY

# 3. single_vm_overhead: one VM with and without the daemon.
log "single VM: without and with gpuvisord"
tag=single-nodaemon; start_backend a; client a "${HOG[@]}"; stop_backends
start_daemon
tag=single-daemon; start_backend a --daemon "$work/d.sock"; client a "${HOG[@]}"; stop_backends

# 4. work_conservation: two VMs, one stops halfway.
log "work conservation: two VMs, one goes idle halfway"
tag=wc; start_backend a --daemon "$work/d.sock"; start_backend b --daemon "$work/d.sock"
half=$((SECS / 2))
client a "${HOG[@]}" & client b saturate --seconds "$half" --iters "$HOG_ITERS" --blocks 264 --depth 4 &
sleep $((SECS - 2)); snapshot "$R/wc-api.json"; wait_clients
stop_backends; stop_daemon

# 5. The same workloads inside VMs (TCG guests, cuda engine), started with
# gpuvisor-vm fleet under a gpuvisord of their own: the guest-observed
# figures, reported beside (guest CPU time is inflated under TCG).
vm_fleet() {  # tag, then "name|backend flags|guest command" per VM
    local tag=$1; shift
    local f=$work/fleet-$tag.toml share=$work/share-$tag
    mkdir -p "$share"; rm -f "$share/go"
    cat > "$f" <<FLEET
[daemon]
binary = "$B/bin/gpuvisord"
listen = "127.0.0.1:9401"
no_auth = true
slice_ms = $SLICE_MS
[defaults]
kernel = "$B/guest/vmlinuz"
initramfs = "$B/guest/initramfs.cpio.gz"
qemu = "$B/bin/qemu-system-x86_64"
memory_mib = 1024
vcpus = 2
accel = "tcg"
timeout_s = 400
share_dir = "$share"
[defaults.backend]
binary = "$B/bin/gpuvisor-backend"
engine = "$ENGINE"
quota_mib = 2048
FLEET
    local n=0 spec name flags cmd a args
    for spec in "$@"; do
        IFS='|' read -r name flags cmd <<< "$spec"
        n=$((n + 1))
        args="\"--latency-log\", \"$R/vm-$tag-$name.lat\""
        for a in $flags; do args="$args, \"$a\""; done
        printf '[[vm]]\nname = "%s"\nrun = "echo GV-READY; while [ ! -e /mnt/host/go ]; do usleep 20000; done; %s"\n[vm.backend]\nextra_args = [%s]\n' \
            "$name" "$cmd" "$args" >> "$f"
    done
    "$B/bin/gpuvisor-vm" fleet --spec "$f" --run-dir "$work/run-$tag" > "$R/vm-$tag.log" 2>&1 &
    local fleet=$!
    for _ in $(seq 600); do
        [ "$(grep -ac 'GV-READY' "$R/vm-$tag.log")" -ge "$n" ] && break
        kill -0 $fleet 2>/dev/null || break
        sleep 0.2
    done
    touch "$share/go"
    wait $fleet
    log "fleet $tag: $(grep -a '^fleet: ' "$R/vm-$tag.log" | tr '\n' ' ')"
}
GLOAD=/opt/gpuvisor/tests/gv_load
VHOG="$GLOAD saturate --seconds ${VSECS:-20} --iters $HOG_ITERS --blocks 264 --depth 4"
VLC="$GLOAD latency --seconds $(( ${VSECS:-20} * 3 / 4 )) --kernels 4 --iters $LC_ITERS --blocks 264 --gap-us 1000"
if [ "${VMS:-1}" = 1 ]; then
    log "VMs: share, weights 1:1:2"
    vm_fleet share "a|--weight 1|$VHOG" "b|--weight 1|$VHOG" "c|--weight 2|$VHOG"
    log "VMs: latency-critical VM alone, then beside a saturating VM"
    vm_fleet lat-alone "lc|--class guaranteed --priority 10|$VLC"
    vm_fleet lat-qos "lc|--class guaranteed --priority 10|sleep 2; $VLC" "hog|--class burstable|$VHOG"
fi

cp "$R"/*.out "$R"/*.json "$out/" 2>/dev/null
cp "$R"/vm-*.log "$out/" 2>/dev/null
cat "$R"/backend-*.log "$R/gpuvisord.log" > "$out/sched-logs.txt" 2>/dev/null
python3 scripts/h100/sched.py --res "$R" --revision "$(cat "$stage/REVISION" 2>/dev/null)" \
    --command "scripts/h100/sched.sh" --slice-ms "$SLICE_MS" --hog-iters "$HOG_ITERS" --lc-iters "$LC_ITERS" \
    > "$out/sched.json"
cat "$out/sched.json"
