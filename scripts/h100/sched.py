#!/usr/bin/env python3
"""Turns the raw output of scripts/h100/sched.sh into sched.json: the four
scheduling figures of issue 4, each beside its baseline from the same run."""
import argparse
import datetime
import gzip
import json
import os
import socket


def gvload(path):
    """The GVLOAD line of one gv_load run (None when it did not run)."""
    try:
        for line in open(path, errors="replace"):
            if line.startswith("GVLOAD "):
                return json.loads(line[7:])
    except FileNotFoundError:
        return None
    return None


def fleet_gvload(path):
    """The GVLOAD figures of each VM of a gpuvisor-vm fleet run, by name."""
    out = {}
    try:
        for line in open(path, errors="replace"):
            line = line.rstrip("\r\n").replace("\r", "")
            if line.startswith("[") and "] GVLOAD " in line:
                name, rest = line[1:].split("] GVLOAD ", 1)
                try:
                    out[name] = json.loads(rest)
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def backend_latencies(path, skip=10):
    """Request latencies the backend logged, in us, without the first few
    (context creation, module load)."""
    try:
        f = gzip.open(path + ".gz", "rt") if not os.path.exists(path) and os.path.exists(path + ".gz") else open(path)
        v = [int(x) / 1000.0 for x in f if x.strip()]
    except FileNotFoundError:
        return None
    v = sorted(v[skip:])
    if not v:
        return None
    pct = lambda p: v[int(round((len(v) - 1) * p))]
    return {"requests": len(v), "p50_us": round(pct(0.5), 1), "p99_us": round(pct(0.99), 1)}


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", required=True)
    ap.add_argument("--revision", default="")
    ap.add_argument("--command", default="")
    ap.add_argument("--slice-ms", type=float)
    ap.add_argument("--hog-iters", type=int)
    ap.add_argument("--lc-iters", type=int)
    a = ap.parse_args()
    R = a.res
    res = lambda name: os.path.join(R, name)
    out = {
        "benchmark": "sched",
        "issue": 4,
        "command": a.command,
        "revision": a.revision,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "gpu": open(res("gpu.txt")).read().strip() if os.path.exists(res("gpu.txt")) else None,
        "transport": "vhost-user direct (host processes through the guest driver), cuda engine",
        "slice_ms": a.slice_ms,
        "workloads": {},
    }
    calib = {it: gvload(res(f"calib-native-{it}.out")) for it in (20000, 200000)}
    out["workloads"] = {
        "hog": f"gv_load saturate: gv_burn kernels of {a.hog_iters} iterations on 264x256 threads, 8 queued by the client",
        "latency_critical": f"gv_load latency: 4 gv_burn kernels of {a.lc_iters} iterations, then a synchronize; 1 ms between requests",
        "calibration_native_p50_us": {str(k): (v or {}).get("p50_us") for k, v in calib.items()},
    }

    # share_error
    weights = {"a": 1, "b": 1, "c": 2}
    def steady(r):
        """Kernels over the run without its first and last 2 seconds, when
        every client was running (TCG guests start their load unevenly)."""
        ps = r.get("per_second") or []
        return sum(ps[2:-2]) if len(ps) > 6 else r["kernels"]

    def shares(prefix):
        runs = {vm: gvload(res(f"share-{prefix}{vm}.out")) for vm in weights}
        if not all(r and r.get("ok") for r in runs.values()):
            return None, runs
        total = sum(steady(r) for r in runs.values())
        return {vm: steady(r) / total for vm, r in runs.items()}, runs
    ours, ours_runs = shares("")
    native, _ = shares("native-")
    target = {vm: w / sum(weights.values()) for vm, w in weights.items()}
    err = lambda s: round(max(abs(s[vm] - target[vm]) * 100 for vm in s), 2) if s else None
    api = {}
    try:
        api = json.load(open(res("share-api.json")))
    except (FileNotFoundError, ValueError):
        pass
    out["share_error"] = {
        "value_points": err(ours),
        "target_points_max": 3,
        "met": err(ours) is not None and err(ours) <= 3,
        "weights": weights,
        "measured_share": {vm: round(s, 4) for vm, s in (ours or {}).items()},
        "share_method": "each client's kernels over the sum, without the first and last 2 seconds of its run",
        "kernels": {vm: (r or {}).get("kernels") for vm, r in ours_runs.items()},
        "daemon_share_used": {v["name"]: v.get("share_used") for v in api.get("vms", []) if isinstance(v, dict)}
        if isinstance(api.get("vms"), list) else api.get("vms"),
        "baseline_native_time_slicing": {
            "value_points": err(native),
            "measured_share": {vm: round(s, 4) for vm, s in (native or {}).items()},
            "note": "plain processes cannot be weighted: the GPU shares time equally",
        },
    }

    # latency_p99_colocated
    def lat(name):
        r = gvload(res(name + ".out"))
        return r if r and r.get("ok") else None
    def p99(r):
        return r["p99_us"] if r else None
    alone, qos = lat("lat-alone-lc"), lat("lat-qos-lc")
    b_alone, b_qos = backend_latencies(res("lat-alone-lc.lat")), backend_latencies(res("lat-qos-lc.lat"))
    nd = lat("lat-nodaemon-lc")
    n_alone, n_col = lat("lat-native-alone-native-lc"), lat("lat-native-native-lc")
    m_alone, m_col = lat("lat-mps-alone-native-lc"), lat("lat-mps-native-lc")
    hog_qos = gvload(res("lat-qos-hog.out"))
    hog_native = gvload(res("lat-native-native-hog.out"))
    hog_mps = gvload(res("lat-mps-native-hog.out"))
    hog_nd = gvload(res("lat-nodaemon-hog.out"))
    v = ratio(p99(qos), p99(alone))
    out["latency_p99_colocated"] = {
        "value": v,
        "target_max": 1.5,
        "met": v is not None and v <= 1.5,
        "client_p99_us": {"alone": p99(alone), "colocated_qos": p99(qos)},
        "client_p50_us": {"alone": (alone or {}).get("p50_us"), "colocated_qos": (qos or {}).get("p50_us")},
        "backend_measured": {
            "alone": b_alone,
            "colocated_qos": b_qos,
            "ratio_p99": ratio((b_qos or {}).get("p99_us"), (b_alone or {}).get("p99_us")),
        },
        "hog_kernels_per_s_beside_it": {
            "gpuvisor_qos": round(hog_qos["kernels"] / hog_qos["seconds"], 1) if hog_qos and hog_qos.get("ok") else None,
            "gpuvisor_no_daemon": round(hog_nd["kernels"] / hog_nd["seconds"], 1) if hog_nd and hog_nd.get("ok") else None,
            "native": round(hog_native["kernels"] / hog_native["seconds"], 1) if hog_native and hog_native.get("ok") else None,
            "mps": round(hog_mps["kernels"] / hog_mps["seconds"], 1) if hog_mps and hog_mps.get("ok") else None,
        },
        "baseline_native_time_slicing": {"value": ratio(p99(n_col), p99(n_alone)), "p99_us": {"alone": p99(n_alone), "colocated": p99(n_col)}},
        "baseline_mps": {"value": ratio(p99(m_col), p99(m_alone)), "p99_us": {"alone": p99(m_alone), "colocated": p99(m_col)}},
        "gpuvisor_without_daemon": {
            "value": ratio(p99(nd), p99(lat("lat-nodaemon-alone-lc"))),
            "p99_us": {"alone": p99(lat("lat-nodaemon-alone-lc")), "colocated": p99(nd)},
            "p50_us": {"alone": (lat("lat-nodaemon-alone-lc") or {}).get("p50_us"), "colocated": (nd or {}).get("p50_us")},
            "backend_measured": backend_latencies(res("lat-nodaemon-lc.lat")),
        },
    }

    # single_vm_overhead
    s_nd, s_d = gvload(res("single-nodaemon-a.out")), gvload(res("single-daemon-a.out"))
    rate = lambda r: r["kernels"] / r["seconds"] if r and r.get("ok") else None
    v = ratio(rate(s_d), rate(s_nd))
    out["single_vm_overhead"] = {
        "value": v,
        "target_min": 0.98,
        "met": v is not None and v >= 0.98,
        "kernels_per_s": {"without_daemon": rate(s_nd), "with_daemon": rate(s_d)},
    }

    # work_conservation
    wa, wb = gvload(res("wc-a.out")), gvload(res("wc-b.out"))
    wc = None
    detail = {}
    if wa and wb and wa.get("ok") and wb.get("ok") and rate(s_d):
        ps_a = wa["per_second"]
        half = len(wb["per_second"])
        solo = ps_a[half + 1: len(ps_a) - 1]
        both = [x + y for x, y in zip(ps_a[1:half - 1], wb["per_second"][1:half - 1])]
        if solo:
            wc = round(sum(solo) / len(solo) / rate(s_d), 3)
        detail = {
            "alone_kernels_per_s": rate(s_d),
            "one_idle_kernels_per_s": round(sum(solo) / len(solo), 1) if solo else None,
            "both_busy_busy_fraction": round(sum(both) / len(both) / rate(s_d), 3) if both else None,
        }
    try:
        wapi = json.load(open(res("wc-api.json")))
        detail["daemon_busy_fraction"] = [g.get("busy_fraction") for g in wapi.get("gpus", []) if isinstance(g, dict)]
    except (FileNotFoundError, ValueError, AttributeError):
        pass
    out["work_conservation"] = {"value": wc, "target_min": 0.95, "met": wc is not None and wc >= 0.95, **detail}
    # The same in TCG VMs: guest-observed figures, beside.
    vs = fleet_gvload(res("vm-share.log"))
    if all(vm in vs and vs[vm].get("ok") for vm in weights):
        total = sum(steady(vs[vm]) for vm in weights)
        vshare = {vm: steady(vs[vm]) / total for vm in weights}
        out["share_error"]["vm"] = {"value_points": err(vshare), "measured_share": {k: round(v, 4) for k, v in vshare.items()}}
    else:
        out["share_error"]["vm"] = {"error": "not all VMs reported", "got": list(vs)}
    va = fleet_gvload(res("vm-lat-alone.log")).get("lc")
    vq = fleet_gvload(res("vm-lat-qos.log")).get("lc")
    vb_a, vb_q = backend_latencies(res("vm-lat-alone-lc.lat")), backend_latencies(res("vm-lat-qos-lc.lat"))
    out["latency_p99_colocated"]["vm"] = {
        "guest_p99_us": {"alone": p99(va), "colocated_qos": p99(vq)},
        "guest_p50_us": {"alone": (va or {}).get("p50_us"), "colocated_qos": (vq or {}).get("p50_us")},
        "guest_ratio_p99": ratio(p99(vq), p99(va)),
        "backend_measured": {"alone": vb_a, "colocated_qos": vb_q,
                             "ratio_p99": ratio((vb_q or {}).get("p99_us"), (vb_a or {}).get("p99_us"))},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
