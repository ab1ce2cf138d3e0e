#!/usr/bin/env bash
# Runs on the GPU machine (stage with scripts/h100/stage.sh): what telemetry
# costs and whether its figures are true (issue 6); writes telemetry.json.
#
# 1. telemetry_overhead: one VM saturating the GPU through the guest driver
#    (vhost-user direct transport), under a gpuvisord that samples every 1 s
#    into its history and alert rules (examples/alerts.toml) while /metrics is
#    scraped every second, over the same with collection off
#    (--telemetry-interval-ms 0, no scrape). ROUNDS rounds of SECS each,
#    the order swapped every round.
# 2. share_vs_nvml: two VMs of weights 1 and 3 saturating the GPU for
#    SHARE_SECS; each VM's share of gpuvisor_vm_gpu_seconds_total against
#    NVML's per-process utilisation samples of the backends (nvml_share.py).
#
#   scripts/h100/telemetry.sh [OUTDIR]     (default $OUT, else ./h100-out)
# Knobs (env): SECS (15), ROUNDS (3), SHARE_SECS (30), SLICE_MS (5), ENGINE (cuda).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
mkdir -p "$out"
. scripts/h100/lib.sh
h100_setup /tmp/gpuvisor-telemetry
SECS=${SECS:-15}
ROUNDS=${ROUNDS:-3}
SHARE_SECS=${SHARE_SECS:-30}
SLICE_MS=${SLICE_MS:-5}
RULES=$PWD/examples/alerts.toml

h100_calibrate
log "hog kernel: $HOG_ITERS iterations"
HOG=(saturate --seconds "$SECS" --iters "$HOG_ITERS" --blocks 264 --depth 4)

scraper() {  # what a Prometheus at a 1 s scrape interval costs gpuvisord
    python3 - <<'EOF'
import time, urllib.request
while True:
    try:
        urllib.request.urlopen("http://127.0.0.1:9400/metrics", timeout=2).read()
    except Exception:
        pass
    time.sleep(1)
EOF
}

run_round() {  # mode (on|off) round
    local mode=$1 i=$2 sp=
    if [ "$mode" = on ]; then
        h100_start_daemon --slice-ms "$SLICE_MS" --telemetry-interval-ms 1000 --alert-rules "$RULES" || return
        scraper & sp=$!
    else
        h100_start_daemon --slice-ms "$SLICE_MS" --telemetry-interval-ms 0 || return
    fi
    h100_start_backend a --quota-mib 8192 --daemon "$work/d.sock"
    h100_client gv_load a "$R/ovh-$mode-$i.out" "${HOG[@]}"
    [ -n "$sp" ] && { kill "$sp"; wait "$sp" 2>/dev/null; }
    stop_backends; stop_daemon
}

for i in $(seq "$ROUNDS"); do
    if [ $((i % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do
        log "overhead: round $i, collection $mode"
        run_round "$mode" "$i"
    done
done

log "shares: two VMs, weights 1 and 3, gpuvisord's GPU seconds against NVML's process samples"
h100_start_daemon --slice-ms "$SLICE_MS" --telemetry-interval-ms 1000 --alert-rules "$RULES"
h100_start_backend a --quota-mib 8192 --daemon "$work/d.sock" --weight 1
h100_start_backend b --quota-mib 8192 --daemon "$work/d.sock" --weight 3
# Deep queues: a VM that waits for its results after every few kernels gives
# the GPU up each time its queue runs dry, and takes about a turn per burst
# whatever its weight (docs/architecture.md); with work always queued, the
# weights decide the split.
LONG=(saturate --seconds $((SHARE_SECS + 8)) --iters "$HOG_ITERS" --blocks 264 --depth 64)
h100_client gv_load a "$R/share-a.out" "${LONG[@]}" & pa=$!
h100_client gv_load b "$R/share-b.out" "${LONG[@]}" & pb=$!
sleep 4
python3 scripts/h100/nvml_share.py --vms a,b --seconds "$SHARE_SECS" > "$R/share.json" 2> "$R/share.err"
snapshot "$R/share-api.json"
wait "$pa" "$pb"
stop_backends; stop_daemon

cp "$R"/*.out "$R"/*.json "$out/" 2>/dev/null
cat "$R"/backend-*.log "$R/gpuvisord.log" 2>/dev/null | gzip > "$out/telemetry-logs.txt.gz"
python3 scripts/h100/telemetry.py --res "$R" --revision "$(cat "$stage/REVISION" 2>/dev/null)" \
    --command "scripts/h100/telemetry.sh" --secs "$SECS" --rounds "$ROUNDS" --slice-ms "$SLICE_MS" \
    --hog-iters "$HOG_ITERS" > "$out/telemetry.json"
cat "$out/telemetry.json"
