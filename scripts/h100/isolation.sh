#!/usr/bin/env bash
# Runs on the GPU machine (stage with scripts/h100/stage.sh): fault isolation
# between VMs, written to isolation.json (issue 8).
#
# Two "VMs" (backends on the cuda engine, driven through the guest driver
# over the vhost-user direct transport by gv_isolation client processes):
#   steady  runs KERNELS checked kernels (fill a buffer, read it back, check
#           every word), first alone, then beside the faulting VM;
#   faulty  gets a new client process every FAULT_EVERY_S seconds whose
#           kernel faults, illegal address and trap in turn, and which
#           reports the error it saw (700 / 719 expected, and the same from a
#           later call). Its backend runs with --no-restart and exits (status
#           80 / 81); this script starts it again. The time from the faulting
#           client's error to a new client's first checked kernel on that VM
#           is the recovery time.
# Then a kernel that never ends under --watchdog-ms WATCHDOG_MS (the client
# should get CUDA_ERROR_LAUNCH_TIMEOUT, 702, and the backend, --no-restart,
# exit with 82), with the steady VM running beside it.
# Then a VM's serving backend killed mid-run with SIGKILL, under its
# supervisor (the default): a client running checked kernels on it should
# get CUDA_ERROR_CONTEXT_IS_DESTROYED (709), the supervisor start a new
# serving child on the same socket, and the next client work, while the
# steady VM beside sees no error. KILL_AFTER_S (2) is how long the client
# runs before the kill.
#
#   scripts/h100/isolation.sh [OUTDIR]     (default $OUT, else ./h100-out)
# Knobs (env): KERNELS (270000), WORDS (1024 per kernel), FAULT_EVERY_S (1),
# FAULT_PHASE_S (60: the steady VM runs at least this long beside the faults),
# WATCHDOG_MS (2000), FAULTY_ARGS (more arguments for the faulty VM's
# backend), CLIENT_TIMEOUT (s, 300: bounds each steady client; a faulting
# client gets 60 s, the hanging one the watchdog's limit and 30 s), ENGINE (cuda; sim
# to try it anywhere), LOCAL_BUILD (e.g. target/debug: run from this
# checkout's build instead of the staged bundle). A dry run on any machine:
#   cargo build -p gpuvisor-backend -p gpuvisor-guest
#   ENGINE=sim LOCAL_BUILD=target/debug KERNELS=20000 scripts/h100/isolation.sh /tmp/iso
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-$PWD/h100-out}}
mkdir -p "$out"
. scripts/h100/lib.sh
h100_setup /tmp/gpuvisor-isolation
KERNELS=${KERNELS:-270000}
WORDS=${WORDS:-1024}
FAULT_EVERY_S=${FAULT_EVERY_S:-1}
FAULT_PHASE_S=${FAULT_PHASE_S:-60}
WATCHDOG_MS=${WATCHDOG_MS:-2000}
export CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-300}
HANG_TIMEOUT=$(( WATCHDOG_MS / 1000 + 30 ))
read -r -a faulty_args <<< "${FAULTY_ARGS:-}"

now() { date +%s.%N; }
# Waits up to $2 s for process $1 (a child of this shell: not in a
# subshell, where `wait` cannot reach it) to end. Sets `ended` to its exit
# status, "supervised" when it stays alive with a child of its own (a
# supervisor restarting the backend), or "running".
exit_of() {
    local pid=$1 until=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -le "$until" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"; ended=$?; return
        fi
        if pgrep -P "$pid" > /dev/null 2>&1; then ended=supervised; return; fi
        sleep 0.02
    done
    ended=running
}
faulty_pid=
# This script restarts the faulty VM's backend itself (and records its exit
# status), so it runs without its supervisor.
start_faulty() { h100_start_backend faulty --no-restart "${faulty_args[@]}" && faulty_pid=${backend_pids[-1]}; }
# A new client process on VM $2 (default faulty), until one runs a checked
# kernel (up to 30 tries): prints the time its kernel was checked, or nothing.
serve_again() {  # tag [vm]
    local n vm=${2:-faulty}
    for n in $(seq 30); do
        if CLIENT_TIMEOUT=30 h100_client gv_isolation "$vm" "$R/$1-probe.out" steady --kernels 1 --words "$WORDS"; then
            python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("GVISO "): print(json.loads(l[6:])["end_unix"])' "$R/$1-probe.out"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

log "baseline: the steady VM alone, $KERNELS checked kernels"
h100_start_backend steady
h100_client gv_isolation steady "$R/steady-alone.out" steady --kernels "$KERNELS" --words "$WORDS"
stop_backends

log "the steady VM beside a VM whose kernels fault every ${FAULT_EVERY_S}s"
h100_start_backend steady
start_faulty
# At least KERNELS, and on for FAULT_PHASE_S so that the faults come for a minute.
h100_client gv_isolation steady "$R/steady-faults.out" steady --kernels "$KERNELS" --words "$WORDS" \
    --min-seconds "$FAULT_PHASE_S" &
steady_client=$!
: > "$R/faults.jsonl"
i=0
t_start=$(now)
while kill -0 "$steady_client" 2>/dev/null; do
    kind=illegal-address; [ $((i % 2)) = 1 ] && kind=trap
    CLIENT_TIMEOUT=60 h100_client gv_isolation faulty "$R/fault-$i.out" fault --kind "$kind"
    exit_of "$faulty_pid" 10
    status=$ended
    case $status in
        supervised) ;;
        running) log "fault $i: the faulty VM's backend did not end" ;;
        *) start_faulty ;;
    esac
    served=$(serve_again "fault-$i")
    python3 - "$R/fault-$i.out" "$i" "$kind" "$status" "${served:-}" >> "$R/faults.jsonl" <<'EOF'
import json, sys
res, i, kind, status, served = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
client = None
for l in open(res, errors="replace"):
    if l.startswith("GVISO "):
        client = json.loads(l[6:])
rec = None
if client and served and client.get("error_unix"):
    rec = round(float(served) - client["error_unix"], 3)
print(json.dumps({"i": i, "kind": kind, "client": client, "backend": status, "recovery_s": rec}))
EOF
    [ "$status" = running ] && break
    i=$((i + 1))
    # The next fault on the cadence, or at once if recovering took longer.
    sleep "$(python3 -c "import sys; print(max(0.0, float(sys.argv[1]) + $i * $FAULT_EVERY_S - float(sys.argv[2])))" \
        "$t_start" "$(now)")"
done
wait "$steady_client"
stop_backends

log "watchdog: a kernel that never ends under --watchdog-ms $WATCHDOG_MS, beside the steady VM"
h100_start_backend steady
h100_start_backend hang --no-restart --watchdog-ms "$WATCHDOG_MS"
hang_pid=${backend_pids[-1]}
h100_client gv_isolation steady "$R/steady-hang.out" steady --kernels "$KERNELS" --words "$WORDS" &
steady_client=$!
CLIENT_TIMEOUT=$HANG_TIMEOUT h100_client gv_isolation hang "$R/hang.out" hang
exit_of "$hang_pid" 30
echo "$ended" > "$R/hang-backend-exit"
wait "$steady_client"
stop_backends

KILL_AFTER_S=${KILL_AFTER_S:-2}
log "a VM's serving backend killed mid-run (SIGKILL) under its supervisor, beside the steady VM"
h100_start_backend steady
h100_start_backend killed
killed_pid=${backend_pids[-1]}
h100_client gv_isolation steady "$R/steady-kill.out" steady --kernels "$KERNELS" --words "$WORDS" &
steady_client=$!
# As many kernels as it takes: the kill ends its run (steady stops after
# 1000 errors, and a lost session's every call fails at once).
h100_client gv_isolation killed "$R/killed-client.out" steady --kernels 1000000000 --words "$WORDS" &
killed_client=$!
sleep "$KILL_AFTER_S"
old_child=$(pgrep -P "$killed_pid" | head -1)
t_kill=$(now)
[ -n "$old_child" ] && kill -KILL "$old_child"
wait "$killed_client"
t_client_done=$(now)
served=$(serve_again killed killed)
new_child=$(pgrep -P "$killed_pid" | head -1)
alive=false; kill -0 "$killed_pid" 2>/dev/null && alive=true
python3 - "$t_kill" "$t_client_done" "${served:-}" "${old_child:-}" "${new_child:-}" "$alive" > "$R/kill.json" <<'EOF'
import json, sys
t_kill, t_done, served, old, new, alive = sys.argv[1:7]
print(json.dumps({"kill_unix": float(t_kill), "client_done_unix": float(t_done),
                  "served_unix": float(served) if served else None, "old_child": old or None,
                  "new_child": new or None, "supervisor_alive": alive == "true"}))
EOF
wait "$steady_client"
stop_backends

python3 scripts/h100/isolation.py --res "$R" --revision "$(h100_revision)" --engine "$ENGINE" \
    --kernels "$KERNELS" --words "$WORDS" --fault-every-s "$FAULT_EVERY_S" --fault-phase-s "$FAULT_PHASE_S" --watchdog-ms "$WATCHDOG_MS" \
    > "$out/isolation.json"
cat "$out/isolation.json"
