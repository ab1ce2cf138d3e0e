#!/usr/bin/env python3
"""Turns the raw output of scripts/h100/telemetry.sh into telemetry.json:
telemetry_overhead (throughput with collection at 1 s over without, same
run) and the GPU time shares gpuvisord exports against NVML's."""
import argparse
import datetime
import json
import socket
import sys

from nvml_share import nvml_shares  # beside this file
from sched import gvload  # scripts/h100/sched.py, beside this file


def rate(r):
    """Kernels per second of a saturate run."""
    if not r or not r.get("ok") or not r.get("seconds"):
        return None
    return r["kernels"] / r["seconds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", required=True)
    ap.add_argument("--revision", default="")
    ap.add_argument("--command", default="scripts/h100/telemetry.sh")
    ap.add_argument("--secs", type=float)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--slice-ms", type=float)
    ap.add_argument("--hog-iters", type=int)
    a = ap.parse_args()
    gpu = open(f"{a.res}/gpu.txt").read().strip() if a.res else ""
    rounds = []
    for i in range(1, (a.rounds or 0) + 1):
        on = rate(gvload(f"{a.res}/ovh-on-{i}.out"))
        off = rate(gvload(f"{a.res}/ovh-off-{i}.out"))
        rounds.append({"round": i, "kernels_per_s_on": on, "kernels_per_s_off": off,
                       "ratio": on / off if on and off else None})
    ons = [r["kernels_per_s_on"] for r in rounds if r["kernels_per_s_on"]]
    offs = [r["kernels_per_s_off"] for r in rounds if r["kernels_per_s_off"]]
    overhead = (sum(ons) / len(ons)) / (sum(offs) / len(offs)) if ons and offs else None
    try:
        share = json.load(open(f"{a.res}/share.json"))
    except (FileNotFoundError, ValueError) as e:
        share = {"error": str(e)}
    raw = share.get("nvml_samples_raw")
    if raw:
        # Recomputed from the raw samples, so that every figure comes from
        # this revision's estimator whichever one wrote share.json.
        pids = {v: i for i, v in enumerate(share["vms"])}
        share.update(nvml_shares({pids[v]: pts for v, pts in raw.items()}, pids, share["vms"]))
        share.pop("nvml_busy_s", None)
        share.pop("nvml_share_unweighted", None)
        errs = [abs(share["gpuvisor_share"][v] - share["nvml_share"][v]) * 100 for v in share["vms"]
                if share["gpuvisor_share"].get(v) is not None and share["nvml_share"].get(v) is not None]
        share["max_error_pts"] = max(errs) if len(errs) == len(share["vms"]) else None
    # Kernels each VM ran over its whole run (a few seconds longer than the
    # window): a third view of the split, from the workload itself.
    kernels = {v: (gvload(f"{a.res}/share-{v}.out") or {}).get("kernels") for v in share.get("vms", [])}
    if kernels and all(kernels.values()):
        share["kernel_share"] = {v: k / sum(kernels.values()) for v, k in kernels.items()}
    out = {
        "issue": 6,
        "command": a.command,
        "revision": a.revision,
        "machine": {"host": socket.gethostname(), "gpu": gpu},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"secs": a.secs, "rounds": a.rounds, "slice_ms": a.slice_ms, "hog_iters": a.hog_iters},
        "telemetry_overhead": overhead,
        "telemetry_overhead_target": 0.99,
        "overhead_rounds": rounds,
        "share_vs_nvml": share,
        "share_error_pts": share.get("max_error_pts"),
        "share_error_target_pts": 3,
    }
    out["met"] = {
        "telemetry_overhead": overhead is not None and overhead >= 0.99,
        "share_vs_nvml": out["share_error_pts"] is not None and out["share_error_pts"] <= 3,
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
