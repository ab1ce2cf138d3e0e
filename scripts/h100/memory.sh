#!/usr/bin/env bash
# Runs on the GPU machine (stage with scripts/h100/stage.sh): memory
# overcommit and scrubbing, measured beside their native baselines, written
# to memory.json (issue 5).
#
# Three "VMs" (backends on the cuda engine, each with its own quota, driven
# through the guest driver over the vhost-user direct transport) share a GPU
# whose memory gpuvisord is told is LIMIT_MIB; their quotas add to more. Each
# fills its memory with checksummed data and burns GPU time; gpuvisord
# schedules them in 5 s slices and its memory broker swaps the descheduled
# ones out to host RAM and back.
#
#   scripts/h100/memory.sh [OUTDIR]     (default $OUT, else ./h100-out)
# Knobs (env): QUOTA_MIB (40960), LIMIT_MIB (81920), SECS (60: overcommitted
# run), ALONE_SECS (15), FILL_WAIT (120 s for the fills before the common
# start), SLICE_MS (5000), CHUNK_MIB (256), SWAP_THREADS (8: the backends'
# --swap-threads), SWAP_CACHE_MIB (4096: the backends' --swap-cache-mib,
# pinned host memory each keeps after a restore; swap-outs into it run at
# the copy rate, into fresh pages at the rate the host faults them in),
# SWAP_PREFAULT (touch: the backends' --swap-prefault, touch or populate),
# SWAP_LIMIT_MIB (host RAM for
# evicted state; default gpuvisord's, half the host's RAM), SWAP_POOL_MIB
# (gpuvisord's --swap-pool-mib: pinned host memory the backends make ahead
# and share for swap-outs; default none), SWAP_POOL_KEEP_MAPS (true: the
# backends' --swap-pool-keep-maps, keeping pool chunks mapped once given
# back; false unmaps them), DAEMON_LOG (gpuvisord's RUST_LOG,
# info,gpuvisord=debug), ENGINE (cuda; sim to try the
# script anywhere, with small QUOTA_MIB/LIMIT_MIB).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
# The knobs this run was given, for the JSON's command line.
given=$(for v in ENGINE QUOTA_MIB LIMIT_MIB SECS ALONE_SECS FILL_WAIT SLICE_MS CHUNK_MIB SWAP_THREADS \
    SWAP_CACHE_MIB SWAP_PREFAULT SWAP_LIMIT_MIB SWAP_POOL_MIB SWAP_POOL_KEEP_MAPS BACKEND_ARGS; do [ -n "${!v:-}" ] && printf '%s=%q ' "$v" "${!v}"; done)
mkdir -p "$out"
. scripts/h100/lib.sh
h100_setup /tmp/gpuvisor-memory
QUOTA_MIB=${QUOTA_MIB:-40960}
LIMIT_MIB=${LIMIT_MIB:-81920}
SECS=${SECS:-60}
ALONE_SECS=${ALONE_SECS:-15}
FILL_WAIT=${FILL_WAIT:-120}
SLICE_MS=${SLICE_MS:-5000}
CHUNK_MIB=${CHUNK_MIB:-256}
SWAP_THREADS=${SWAP_THREADS:-8}
SWAP_CACHE_MIB=${SWAP_CACHE_MIB:-4096}
SWAP_PREFAULT=${SWAP_PREFAULT:-touch}
SWAP_POOL_KEEP_MAPS=${SWAP_POOL_KEEP_MAPS:-true}
DIRECT_MEM_MIB=256
BURN=(--iters 400000 --blocks 264 --depth 4)

start_daemon() {
    # Each VM's memory needs and limits are debug lines: the timeline of a run.
    RUST_LOG=${DAEMON_LOG:-info,gpuvisord=debug} h100_start_daemon --slice-ms "$SLICE_MS" ${SWAP_LIMIT_MIB:+--swap-limit-mib "$SWAP_LIMIT_MIB"} \
        ${SWAP_POOL_MIB:+--swap-pool-mib "$SWAP_POOL_MIB"} || return 1
    # The broker's view of the GPU: LIMIT_MIB of memory, quotas up to 2x that.
    python3 - "$LIMIT_MIB" <<'EOF'
import json, sys, urllib.request
api = "http://127.0.0.1:9400/v1/gpus"
for g in json.load(urllib.request.urlopen(api, timeout=5)):
    body = json.dumps({"memory_limit_bytes": int(sys.argv[1]) << 20, "overcommit_ratio": 2.0}).encode()
    req = urllib.request.Request(f"{api}/{g['id']}", data=body, method="PATCH",
                                 headers={"Content-Type": "application/json"})
    print(urllib.request.urlopen(req, timeout=5).read().decode(), file=sys.stderr)
EOF
}
start_backend() {
    h100_start_backend "$1" --quota-mib "$QUOTA_MIB" --swap-threads "$SWAP_THREADS" --swap-cache-mib "$SWAP_CACHE_MIB" \
        --swap-prefault "$SWAP_PREFAULT" --swap-pool-keep-maps "$SWAP_POOL_KEEP_MAPS" "${@:2}"
}
client() {  # name tag args... : gv_mem for "VM" name (native when name starts with native)
    h100_client gv_mem "$1" "$R/$2-$1.out" "${@:3}"
}

# Once a second, the kernel's counters that say how host pages come into
# being (huge pages faulted or fallen back to 4 KiB, direct compactions) and
# how much RAM is free: a swap-out into fresh pages runs at the rate the
# host makes them, and that rate has differed several-fold between phases of
# one run (bench/results/h100/memory-logs/89b684c-20g).
( while :; do
      printf '%s ' "$(date +%s.%N)"
      awk '/^(thp_fault_alloc|thp_fault_fallback|compact_stall|compact_success|compact_fail|pgfault|pgmajfault) /{printf "%s=%s ", $1, $2}' /proc/vmstat
      awk '/^(MemFree|MemAvailable|AnonHugePages):/{sub(":", "", $1); printf "%s=%s ", $1, $2}' /proc/meminfo
      echo
      sleep 1
  done ) > "$R/vmstat.log" 2>/dev/null &
vmstat_pid=$!
# However the script ends: a sampler left behind would hold the device call open.
trap 'kill "$vmstat_pid" 2>/dev/null' EXIT

log "native pinned copy bandwidth"
python3 scripts/h100/probe-evict.py pinned 8 > "$R/pinned.json" 2> "$R/pinned.err" || true

log "baseline: the three VMs one after another, each alone with its memory"
export CLIENT_TIMEOUT=$((ALONE_SECS + 150))
start_daemon
for v in a b c; do
    start_backend "$v" --daemon "$work/d.sock"
    client "$v" alone hold --fill --chunk-mib "$CHUNK_MIB" --seconds "$ALONE_SECS" --seed "$(printf %d "'$v")" "${BURN[@]}"
    stop_backends
done

log "overcommit: the three at once, ${SECS}s after a common start"
# Fills, the run, and every byte checked at the end (restores included).
export CLIENT_TIMEOUT=$((FILL_WAIT + SECS + 200))
for v in a b c; do start_backend "$v" --daemon "$work/d.sock"; done
start_at=$(( $(date +%s) + FILL_WAIT ))
echo "$start_at" > "$R/start_at"
cpids=()
for v in a b c; do
    client "$v" over hold --fill --chunk-mib "$CHUNK_MIB" --seconds "$SECS" --start-at "$start_at" \
        --seed "$(printf %d "'$v")" "${BURN[@]}" &
    cpids+=($!)
done
sleep $((FILL_WAIT + SECS / 2)); snapshot "$R/over-api-mid.json"
wait "${cpids[@]}"
snapshot "$R/over-api-end.json"
stop_backends

log "scrub: one VM writes a marker over all its memory, frees it and exits; another allocates all it can"
export CLIENT_TIMEOUT=150
start_backend x --daemon "$work/d.sock"
client x scrub scrub-write --fill --chunk-mib "$CHUNK_MIB"
stop_backends
start_backend y --daemon "$work/d.sock"
client y scrub scrub-check --fill --chunk-mib "$CHUNK_MIB"
stop_backends
stop_daemon
log "scrub: native baseline of the same frees"
if [ "$ENGINE" = cuda ]; then client native-x scrub scrub-write --mib "$QUOTA_MIB" --chunk-mib "$CHUNK_MIB"; fi

kill "$vmstat_pid" 2>/dev/null || true

python3 scripts/h100/memory.py --res "$R" --revision "$(cat "$stage/REVISION" | tr '\n' ' ')" \
    --command "${given}scripts/h100/memory.sh" \
    --quota-mib "$QUOTA_MIB" --limit-mib "$LIMIT_MIB" --secs "$SECS" --slice-ms "$SLICE_MS" \
    --swap-threads "$SWAP_THREADS" --swap-cache-mib "$SWAP_CACHE_MIB" --fill-wait "$FILL_WAIT" \
    --swap-prefault "$SWAP_PREFAULT" ${SWAP_LIMIT_MIB:+--swap-limit-mib "$SWAP_LIMIT_MIB"} \
    ${SWAP_POOL_MIB:+--swap-pool-mib "$SWAP_POOL_MIB"} --swap-pool-keep-maps "$SWAP_POOL_KEEP_MAPS" > "$out/memory.json"
cat "$out/memory.json"
# The clients' outputs, API snapshots and every log (gpuvisord's has each
# eviction and restore), for reading a run's timeline afterwards.
mkdir -p "$out/logs"
cp "$R"/*.out "$R"/*.json "$out/logs/" 2>/dev/null
for f in "$R"/*.log; do [ -f "$f" ] && gzip -c "$f" > "$out/logs/$(basename "$f").gz"; done
