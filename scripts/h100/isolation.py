#!/usr/bin/env python3
"""Turns scripts/h100/isolation.sh's raw results into isolation.json (issue 8)."""
import argparse, datetime, json, os, socket, statistics

EXPECTED = {"illegal-address": 700, "trap": 719}
EXIT_STATUS = {700: 80, 719: 81, 702: 82}


def gviso(path):
    """The client's `GVISO {json}` line, or None (with a note of how it ended)."""
    try:
        for line in open(path, errors="replace"):
            if line.startswith("GVISO "):
                return json.loads(line[6:])
    except (OSError, ValueError):
        pass
    return None


def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", required=True)
    ap.add_argument("--revision", default="")
    ap.add_argument("--engine", default="cuda")
    ap.add_argument("--kernels", type=int, required=True)
    ap.add_argument("--words", type=int, required=True)
    ap.add_argument("--fault-every-s", type=float, required=True)
    ap.add_argument("--fault-phase-s", type=float, default=None)
    ap.add_argument("--watchdog-ms", type=int, required=True)
    a = ap.parse_args()
    R = a.res

    faults = []
    try:
        faults = [json.loads(l) for l in open(os.path.join(R, "faults.jsonl")) if l.strip()]
    except (OSError, ValueError):
        pass
    seen = {k: {} for k in EXPECTED}
    backend_exits = {}
    as_expected = bool(faults)
    for f in faults:
        c = f.get("client") or {}
        err = c.get("sync_error")
        kind = f.get("kind")
        seen.setdefault(kind, {})
        key = str(err) if err is not None else "no answer"
        seen[kind][key] = seen[kind].get(key, 0) + 1
        status = str(f.get("backend"))
        backend_exits[status] = backend_exits.get(status, 0) + 1
        want = EXPECTED.get(kind)
        status_ok = status == "supervised" or status == str(EXIT_STATUS.get(want))
        if not (c.get("ok") and err == want and c.get("later_error") == want and status_ok):
            as_expected = False
    recoveries = [f["recovery_s"] for f in faults if f.get("recovery_s") is not None]

    alone = gviso(f"{R}/steady-alone.out") or {}
    beside = gviso(f"{R}/steady-faults.out") or {}
    during_hang = gviso(f"{R}/steady-hang.out") or {}
    during_kill = gviso(f"{R}/steady-kill.out") or {}
    killed = gviso(f"{R}/killed-client.out") or {}
    try:
        kill = json.load(open(f"{R}/kill.json"))
    except (OSError, ValueError):
        kill = {}
    hang = gviso(f"{R}/hang.out") or {}
    hang_exit = read(f"{R}/hang-backend-exit")
    rate_alone, rate_beside = alone.get("kernels_per_s"), beside.get("kernels_per_s")
    steady_kernels = beside.get("kernels", 0) + during_hang.get("kernels", 0) + during_kill.get("kernels", 0)
    steady_errors = (
        (beside.get("errors", 0) + during_hang.get("errors", 0) + during_kill.get("errors", 0))
        if beside and during_hang and during_kill
        else None
    )

    def r3(x):
        return None if x is None else round(x, 3)

    gpu = read(f"{R}/gpu.txt")
    out = {
        "benchmark": "isolation",
        "issue": 8,
        "command": "scripts/h100/isolation.sh",
        "revision": a.revision.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": socket.gethostname(), "gpu": gpu},
        "engine": a.engine,
        "transport": f"vhost-user direct (gv_isolation processes through the guest driver), {a.engine} engine",
        "setup": {
            "steady_kernels": a.kernels,
            "words_per_kernel": a.words,
            "fault_every_s": a.fault_every_s,
            "fault_phase_min_s": a.fault_phase_s,
            "watchdog_ms": a.watchdog_ms,
            "supervised": "supervised" in backend_exits,
        },
        "faults_injected": len(faults),
        "faulty_vm_errors": {
            "seen": seen,
            "expected": EXPECTED,
            "all_as_expected": as_expected,
            "backend_exit_status": backend_exits,
        },
        "steady_errors": {
            "value": steady_errors,
            "target": 0,
            "met": steady_errors == 0 and steady_kernels > 0,
            "kernels": steady_kernels,
            "beside_faults": {k: beside.get(k) for k in ("kernels", "errors", "first_error", "ok", "run_s")},
            "beside_watchdog": {k: during_hang.get(k) for k in ("kernels", "errors", "first_error", "ok")},
            "beside_kill": {k: during_kill.get(k) for k in ("kernels", "errors", "first_error", "ok")},
        },
        "steady_throughput": {
            "value": r3(rate_beside / rate_alone) if rate_alone and rate_beside else None,
            "kernels_per_s": {"alone": r3(rate_alone), "beside_faults": r3(rate_beside)},
            "alone": {k: alone.get(k) for k in ("kernels", "errors", "ok", "run_s")},
        },
        "watchdog": {
            "value": hang.get("sync_error") == 702 and hang_exit in ("82", "supervised"),
            "limit_ms": a.watchdog_ms,
            "client_error": hang.get("sync_error"),
            "client_error_name": hang.get("sync_error_name"),
            "client_waited_s": hang.get("waited_s"),
            "backend_exit_status": hang_exit,
            "expected": {"client_error": 702, "backend_exit_status": 82},
        },
        "killed_mid_run": {
            "what": "a VM's serving backend killed with SIGKILL while a client runs checked kernels on it, "
            "under its supervisor: the client's first error, the new serving child, the next client",
            "value": killed.get("first_error") == "CUDA_ERROR_CONTEXT_IS_DESTROYED"
            and bool(kill.get("served_unix"))
            and bool(kill.get("supervisor_alive"))
            and kill.get("new_child") not in (None, kill.get("old_child")),
            "client_first_error": killed.get("first_error"),
            "client_kernels_before_kill": (killed.get("kernels") or 0) - (killed.get("errors") or 0) if killed else None,
            "client_done_after_kill_s": r3(kill["client_done_unix"] - kill["kill_unix"]) if kill else None,
            "next_client_after_kill_s": r3(kill["served_unix"] - kill["kill_unix"]) if kill.get("served_unix") else None,
            "old_child": kill.get("old_child"),
            "new_child": kill.get("new_child"),
            "supervisor_alive": kill.get("supervisor_alive"),
            "expected": {"client_first_error": "CUDA_ERROR_CONTEXT_IS_DESTROYED", "steady_errors": 0},
        },
        "recovery_s": {
            "what": "from the faulting client's error to a new client's first checked kernel on that VM "
            "(backend restart, session, module load, one kernel)",
            "p50": r3(statistics.median(recoveries)) if recoveries else None,
            "max": r3(max(recoveries)) if recoveries else None,
            "each": recoveries,
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
