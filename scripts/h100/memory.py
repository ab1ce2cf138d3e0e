#!/usr/bin/env python3
"""Turns scripts/h100/memory.sh's raw results into memory.json (issue 5)."""
import argparse, datetime, glob, json, os, re, socket

GIB = 1 << 30


def gvmem(path):
    try:
        for line in open(path):
            if line.startswith("GVMEM "):
                return json.loads(line[6:])
    except OSError:
        pass
    return None


def backend_lines(res, what):
    """(backend log's name, line without colour codes) for each line of the
    backends' logs that contains `what`."""
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for log in sorted(glob.glob(os.path.join(res, "backend-*.log"))):
        for line in open(log, errors="replace"):
            line = ansi.sub("", line)
            if what in line:
                yield os.path.basename(log), line


def swaps(res, what, least=GIB):
    """Swaps of at least `least` bytes the backends logged: (bytes, seconds)
    each, in log order per backend, as {backend log: [(bytes, seconds), ...]}."""
    pat = re.compile(r"moved=(\d+) ms=([\d.]+)")
    out = {}
    for log, line in backend_lines(res, what):
        m = pat.search(line)
        if m and int(m.group(1)) >= least:
            out.setdefault(log, []).append((int(m.group(1)), float(m.group(2)) / 1e3))
    return out


SIZE_EDGES_GIB = (0, 1, 2, 8)


def size_groups(rows):
    """(from GiB, below GiB or None, the rows in it) for each size group of
    SIZE_EDGES_GIB (the last open) that holds any of `rows`, (bytes, ...)
    tuples."""
    for i, lo in enumerate(SIZE_EDGES_GIB):
        hi = SIZE_EDGES_GIB[i + 1] if i + 1 < len(SIZE_EDGES_GIB) else None
        sel = [r for r in rows if r[0] >= lo * GIB and (hi is None or r[0] < hi * GIB)]
        if sel:
            yield lo, hi, sel


def rates(per_log):
    """Overall GB/s, the first swap of each backend (fresh host pages) and the later ones."""
    def gbps(items):
        b = sum(x[0] for x in items)
        t = sum(x[1] for x in items)
        return (b / 1e9 / t) if t else None
    every = [x for v in per_log.values() for x in v]
    first = [v[0] for v in per_log.values() if v]
    later = [x for v in per_log.values() for x in v[1:]]
    return {"all": gbps(every), "first": gbps(first), "later": gbps(later),
            "count": len(every), "bytes": sum(x[0] for x in every)}


def by_size(per_log):
    """Swaps grouped by size (`size_groups`): count, bytes, seconds and GB/s
    each. The small ones come while VMs fill their memory a step at a time,
    the large ones when a whole VM leaves."""
    out = []
    for lo, hi, sel in size_groups([x for v in per_log.values() for x in v]):
        b, t = sum(x[0] for x in sel), sum(x[1] for x in sel)
        out.append({"gib_from": lo, "gib_below": hi, "count": len(sel), "bytes": b, "seconds": round(t, 3),
                    "gbps": round(b / 1e9 / t, 3) if t else None})
    return out


def swap_out_time(res):
    """Where the swap-outs' time went, by size as in `by_size`, from the cuda
    engine's log lines (backends from 2026-12-03 on): seconds in all,
    waiting for chunks the workers were making, waiting for the copies,
    zeroing, unmapping; chunks taken ready against chunks waited for; and
    the workers' time meanwhile (summed over them) in mapping chunks,
    faulting their pages in, registering them and releasing others."""
    keys = ("seconds", "chunk_wait_s", "copy_wait_s", "zero_s", "unmap_s", "chunks_ready", "chunks_waited",
            "made_chunks", "worker_map_s", "worker_prefault_s", "worker_register_s", "worker_release_s",
            "imported_chunks", "worker_import_s", "reused_maps")
    rows = []
    for _, line in backend_lines(res, "device memory swapped out to host RAM"):
        if "chunk_wait_s=" not in line:
            continue
        f = dict(re.findall(r"(\w+)=([\d.e+-]+)", line))
        try:
            rows.append((int(f["bytes"]), {k: float(f.get(k, 0)) for k in keys}))
        except (KeyError, ValueError):
            continue
    return [dict({"gib_from": lo, "gib_below": hi, "count": len(sel)},
                 **{k: round(sum(r[k] for _, r in sel), 3) for k in keys}) for lo, hi, sel in size_groups(rows)]


def bandwidth(r, native, native_key, any_size=None):
    """A swap direction's figure: its GB/s over the native pinned copy rate,
    for swaps of at least 1 GiB (`r`); `any_size`, the same over every swap,
    is reported beside it."""
    ratio = r["all"] / native if r["all"] and native else None
    return {
        "value": None if ratio is None else round(ratio, 3),
        "target_min": 0.7,
        "met": bool(ratio and ratio >= 0.7),
        "gbps": None if r["all"] is None else round(r["all"], 3),
        native_key: native,
        "swaps": r["count"],
        "bytes": r["bytes"],
        "gbps_first_swap_of_each_backend": None if r["first"] is None else round(r["first"], 3),
        "gbps_later_swaps": None if r["later"] is None else round(r["later"], 3),
        "swaps_of_any_size": None
        if any_size is None
        else {
            "count": any_size["count"],
            "bytes": any_size["bytes"],
            "gbps": None if any_size["all"] is None else round(any_size["all"], 3),
        },
    }


def host_pages(path, windows):
    """What the kernel did to make host pages in each of `windows` ({name:
    (start, end)} in Unix seconds), from memory.sh's vmstat.log: the growth
    of its counters (huge pages faulted, faults that fell back to 4 KiB
    pages, direct compactions) and the least MemAvailable seen, in GiB."""
    samples = []
    try:
        for line in open(path):
            parts = line.split()
            if not parts:
                continue
            vals = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            samples.append((float(parts[0]), {k: int(v) for k, v in vals.items() if v.isdigit()}))
    except (OSError, ValueError):
        return None
    out = {}
    for name, (t0, t1) in windows.items():
        inside = [v for t, v in samples if t0 <= t <= t1]
        if len(inside) < 2:
            continue
        first, last = inside[0], inside[-1]
        counters = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall", "compact_fail", "pgfault")
        w = {k: last[k] - first[k] for k in counters if k in first and k in last}
        avail = [v["MemAvailable"] for v in inside if "MemAvailable" in v]
        if avail:
            w["mem_available_min_gib"] = round(min(avail) / (1 << 20), 1)
        w["seconds"] = round(t1 - t0, 1)
        out[name] = w
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", required=True)
    ap.add_argument("--revision", default="")
    ap.add_argument("--command", default="scripts/h100/memory.sh", help="the command line the run was started with")
    ap.add_argument("--quota-mib", type=int, required=True)
    ap.add_argument("--limit-mib", type=int, required=True)
    ap.add_argument("--secs", type=float, required=True)
    ap.add_argument("--slice-ms", type=float, required=True)
    ap.add_argument("--swap-threads", type=int, default=None)
    ap.add_argument("--swap-cache-mib", type=int, default=None)
    ap.add_argument("--swap-prefault", default=None)
    ap.add_argument("--swap-limit-mib", type=int, default=None, help="gpuvisord's --swap-limit-mib, if given")
    ap.add_argument("--swap-pool-mib", type=int, default=None, help="gpuvisord's --swap-pool-mib, if given")
    ap.add_argument("--swap-pool-keep-maps", choices=["true", "false"], default="true",
                    help="the backends' --swap-pool-keep-maps")
    ap.add_argument("--fill-wait", type=float, default=None, help="seconds the fills had before the common start")
    a = ap.parse_args()
    R = a.res
    pinned = {}
    try:
        pinned = json.load(open(os.path.join(R, "pinned.json")))
    except (OSError, ValueError):
        pass
    alone = {v: gvmem(f"{R}/alone-{v}.out") for v in "abc"}
    over = {v: gvmem(f"{R}/over-{v}.out") for v in "abc"}
    try:
        start_at = float(open(f"{R}/start_at").read())
    except (OSError, ValueError):
        start_at = 0.0

    intact = all(r and r.get("ok") and r.get("bad_chunks") == 0 for r in list(alone.values()) + list(over.values()))
    base_k = sum(r["kernels"] for r in alone.values() if r)
    base_s = sum(r["run_s"] for r in alone.values() if r)
    baseline = base_k / base_s if base_s else None
    starts = [start_at + r["late_s"] for r in over.values() if r and "late_s" in r]
    ends = [start_at + r["late_s"] + r["run_s"] for r in over.values() if r and "late_s" in r]
    # Each VM counts the kernels done within its --seconds from the common
    # start; the throughput is over that window. A VM off the GPU when the
    # window closes waits for its next turn to finish its last batch, after
    # the others have stopped: the time to that last finish, beside it,
    # holds that tail without the work done in it.
    window = a.secs
    to_last_finish = (max(ends) - min(starts)) if starts else 0
    over_k = sum(r["kernels"] for r in over.values() if r and r.get("ok"))
    aggregate = over_k / window if window else None
    shares = {v: r["kernels"] / over_k for v, r in over.items() if r and r.get("ok") and over_k}
    # Jain's index of the kernels each VM did: 1 when equal, 1/3 when one did all.
    jain = (sum(shares.values()) ** 2 / (len(shares) * sum(x * x for x in shares.values()))) if shares else None

    ev = rates(swaps(R, "swapped out to host RAM"))
    rs = rates(swaps(R, "restored from host RAM"))
    d2h, h2d = pinned.get("dtoh_pinned_gbps"), pinned.get("htod_pinned_gbps")

    wrote = gvmem(f"{R}/scrub-x.out") or {}
    check = gvmem(f"{R}/scrub-y.out") or {}
    native = gvmem(f"{R}/scrub-native-x.out") or {}
    per_gib = None
    if wrote.get("bytes") and "free_s" in wrote and "free_s" in native and native.get("bytes"):
        per_gib = (wrote["free_s"] / (wrote["bytes"] / GIB)) - (native["free_s"] / (native["bytes"] / GIB))

    api = {}
    try:
        api = json.load(open(f"{R}/over-api-end.json"))
    except (OSError, ValueError):
        pass

    def r3(x):
        return None if x is None else round(x, 3)

    out = {
        "benchmark": "memory",
        "issue": 5,
        "command": a.command,
        "revision": a.revision.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "gpu": open(f"{R}/gpu.txt").read().strip() if os.path.exists(f"{R}/gpu.txt") else None,
        "transport": "vhost-user direct (host processes through the guest driver), cuda engine",
        "setup": {
            "vms": 3,
            "quota_gib_each": a.quota_mib / 1024,
            "gpu_memory_gib_for_the_broker": a.limit_mib / 1024,
            "slice_ms": a.slice_ms,
            "backend_swap_threads": a.swap_threads,
            "backend_swap_cache_mib": a.swap_cache_mib,
            "backend_swap_prefault": a.swap_prefault,
            "gpuvisord_swap_limit_mib": a.swap_limit_mib if a.swap_limit_mib else "default: half the host's RAM",
            "gpuvisord_swap_pool_mib": a.swap_pool_mib or 0,
            # Meaningful with a pool only.
            "backend_swap_pool_keep_maps": a.swap_pool_keep_maps == "true" if a.swap_pool_mib else None,
            "overcommitted_run_s": a.secs,
            "workload": "gv_mem hold: fill all free memory in chunks with a seeded pattern, burn kernels, "
            "check every byte at the end",
        },
        "overcommit_data_intact": {
            "value": intact,
            "alone": alone,
            "overcommitted": over,
        },
        "evict_bandwidth": dict(
            bandwidth(ev, d2h, "native_pinned_dtoh_gbps", rates(swaps(R, "swapped out to host RAM", 1))),
            by_size=by_size(swaps(R, "swapped out to host RAM", 1)),
            time_by_size=swap_out_time(R),
        ),
        "restore_bandwidth": dict(
            bandwidth(rs, h2d, "native_pinned_htod_gbps", rates(swaps(R, "restored from host RAM", 1))),
            by_size=by_size(swaps(R, "restored from host RAM", 1)),
        ),
        "overcommit_throughput": {
            "value": r3(aggregate / baseline) if aggregate and baseline else None,
            "target_min": 0.9,
            "met": bool(aggregate and baseline and aggregate / baseline >= 0.9),
            "kernels_per_s": {"one_after_another": r3(baseline), "overcommitted": r3(aggregate)},
            "window_s": r3(window),
            "latest_start_s": r3(max(r["late_s"] for r in over.values() if r and "late_s" in r) if starts else None),
            "to_last_finish_s": r3(to_last_finish),
            "value_over_time_to_last_finish": r3(over_k / to_last_finish / baseline)
            if to_last_finish and baseline
            else None,
            "kernel_shares": {v: r3(x) for v, x in shares.items()},
            "jain_fairness": r3(jain),
        },
        "scrub": {
            "value": bool(check.get("ok")) and check.get("marker_words") == 0 and bool(check.get("bytes")),
            "bytes_written_and_freed": wrote.get("bytes"),
            "bytes_checked": check.get("bytes"),
            "marker_words_found": check.get("marker_words"),
            "scrub_s_per_gib": r3(per_gib),
            "free_s": {"gpuvisor": wrote.get("free_s"), "native": native.get("free_s")},
        },
        "host_pages": host_pages(
            f"{R}/vmstat.log",
            {
                "fill": (start_at - (a.fill_wait or 0), start_at),
                "overcommitted": (start_at, start_at + a.secs),
            },
        )
        if start_at
        else None,
        "api_at_end": api.get("vms"),
        "native_pinned": pinned,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
