#!/usr/bin/env python3
"""Turns the raw output of scripts/h100/runtime.sh into runtime.json: each
CUDA runtime sample's output against its native run, and the frameworks'
results and time ratios (gemm_ratio, train_step_ratio), guest over native."""
import argparse
import datetime
import glob
import json
import math
import os
import socket
import statistics
import sys


def lines(path):
    try:
        return open(path, errors="replace").read().splitlines()
    except FileNotFoundError:
        return None


def fw(path):
    out = None
    for l in lines(path) or []:
        if l.startswith("FW "):
            try:
                out = json.loads(l[3:])
            except ValueError:
                pass
    return out


def unsupported(res, name):
    try:
        return json.load(open(f"{res}/unsupported-{name}.json"))
    except (FileNotFoundError, ValueError):
        return None


def sample(res, name):
    n, g = lines(f"{res}/native-{name}.out"), lines(f"{res}/guest-{name}.out")
    if n is None:
        return None
    keep = lambda ls: [l for l in (ls or []) if not l.startswith("TIME ")]
    times = lambda ls: [l[5:] for l in (ls or []) if l.startswith("TIME ")]
    return {
        "same_output": keep(n) == keep(g),
        "native_pass": "PASS" in (n or []),
        "guest_pass": "PASS" in (g or []),
        "native": keep(n)[-6:], "guest": keep(g)[-6:],
        "native_times": times(n), "guest_times": times(g),
        "unsupported": unsupported(res, name),
    }


def checks(path):
    """{check: PASS|FAIL} from a guest-test program's CHECK lines."""
    out = {}
    for l in lines(path) or []:
        if l.startswith("CHECK ") and ": " in l:
            name, rest = l[6:].split(": ", 1)
            out[name] = rest.split(" ", 1)[0]
    return out


# Checks of what gpuvisor does on purpose and NVIDIA's driver does not: the
# native verdict is expected to differ (cudaMallocManaged succeeds natively;
# the guest driver refuses managed memory and the check is that it does so
# cleanly). Reported apart, not counted against same_verdicts.
VGPU_ONLY = {"gv_cudart.unsupported_fails_cleanly"}


def program(res, name):
    n, g = checks(f"{res}/native-{name}.out"), checks(f"{res}/guest-{name}.out")
    if not n and not g:
        return None
    differ = sorted(k for k in set(n) | set(g) if n.get(k) != g.get(k) and k not in VGPU_ONLY)
    return {"native_checks": len(n), "guest_checks": len(g),
            "native_failed": sorted(k for k, v in n.items() if v != "PASS"),
            "guest_failed": sorted(k for k, v in g.items() if v != "PASS"),
            "vgpu_only": {k: {"native": n.get(k), "guest": g.get(k)} for k in sorted(VGPU_ONLY) if k in n or k in g},
            "differ": differ, "same_verdicts": not differ, "unsupported": unsupported(res, name)}


def tensor_diff(a, b):
    try:
        import torch
        x, y = torch.load(a), torch.load(b)
        d = (x - y).abs().max().item()
        scale = y.abs().max().item() or 1.0
        return {"max_abs": d, "max_rel": d / scale}
    except Exception as e:  # torch missing or a file absent
        return {"error": str(e)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", required=True)
    ap.add_argument("--revision", default="")
    ap.add_argument("--command", default="scripts/h100/runtime.sh")
    a = ap.parse_args()
    r = a.res
    samples = {}
    for s in ["vector_add", "matmul", "bandwidth", "streams", "vector_add_static", "matmul_static"]:
        v = sample(r, s)
        if v is not None:
            samples[s] = v
    programs = {p: v for p in ("gv_graphs", "gv_cudart_13s") if (v := program(r, p)) is not None}
    fws = {}
    for p in sorted(glob.glob(f"{r}/native-fw-*.out")):
        name = os.path.basename(p)[len("native-fw-"):-4]
        if ".r" in name:
            continue  # a repeated training run, taken with its first below
        fws[name] = {"native": fw(p), "guest": fw(f"{r}/guest-fw-{name}.out"),
                     "unsupported": unsupported(r, f"fw-{name}")}
    out = {
        "issue": 7,
        "command": a.command,
        "revision": a.revision,
        "machine": {"host": socket.gethostname(), "gpu": (lines(f"{r}/gpu.txt") or [""])[0]},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "samples": samples,
        "samples_same_output": bool(samples) and all(v["same_output"] and v["guest_pass"] for v in samples.values()),
        "programs": programs,
        "programs_same_verdicts": bool(programs) and all(v["same_verdicts"] for v in programs.values()),
        "frameworks": fws,
    }
    g = fws.get("gemm", {})
    if g.get("native") and g.get("guest") and "sgemm" in (g["guest"] or {}):
        for k in ("sgemm", "hgemm"):
            out[f"gemm_ratio_{k}"] = g["guest"][k]["wall_ms"] / g["native"][k]["wall_ms"]
            # The GPU's own time for one product (CUDA events), beside the
            # wall time above that also counts launching and the final wait.
            out[f"gemm_gpu_time_ratio_{k}"] = g["guest"][k]["ms"] / g["native"][k]["ms"]
            out[f"gemm_{k}_diff"] = tensor_diff(f"{r}/guest-fw-gemm/{k}.pt", f"{r}/native-fw-gemm/{k}.pt")
        out["gemm_ratio"] = max(out["gemm_ratio_sgemm"], out["gemm_ratio_hgemm"])
    for m in ("cnn", "cnn-graphs", "transformer", "transformer-graphs"):
        t = fws.get(m, {})
        n, gg = t.get("native"), t.get("guest")
        if n and gg and "losses" in gg and "losses" in n:
            diffs = [abs(x - y) / max(abs(y), 1e-6) for x, y in zip(gg["losses"], n["losses"])]
            # Every run's step time, native and guest in turn; the ratio
            # of the medians.
            runs = [(n, gg)] + [(fw(q), fw(q.replace("/native-fw-", "/guest-fw-")))
                                for q in sorted(glob.glob(f"{r}/native-fw-{m}.r*.out"))]
            ns = [x["step_ms"] for x, _ in runs if x and "step_ms" in x]
            gs = [y["step_ms"] for _, y in runs if y and "step_ms" in y]
            out[f"train_{m}"] = {
                "step_ratio": statistics.median(gs) / statistics.median(ns),
                "native_step_ms": statistics.median(ns), "guest_step_ms": statistics.median(gs),
                "runs": {"native_step_ms": ns, "guest_step_ms": gs},
                "max_loss_rel_diff": max(diffs) if diffs else None,
                "losses_match": bool(diffs) and len(gg["losses"]) == len(n["losses"]) and max(diffs) <= 1e-3,
            }
    ratios = [out[k]["step_ratio"] for k in out if k.startswith("train_") and "-graphs" not in k]
    if ratios:
        out["train_step_ratio"] = max(ratios)
    gratios = [out[k]["step_ratio"] for k in out if k.startswith("train_") and "-graphs" in k]
    if gratios:
        out["train_step_ratio_graphs"] = max(gratios)
    json.dump(out, sys.stdout, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    print()


if __name__ == "__main__":
    main()
