#!/usr/bin/env python3
"""Over one window, each VM's share of GPU time two ways: from gpuvisord's
exported counters (gpuvisor_vm_gpu_seconds_total on /metrics) and from
NVML's per-process utilisation samples of the VMs' backend processes
(nvmlDeviceGetProcessUtilization: per sample, the percentage of time a
kernel of that process ran). Needs no GPU setting changed: the samples are
kept by the driver whether or not accounting mode is on.

    nvml_share.py --api http://127.0.0.1:9400 --vms a,b --seconds 30 > share.json
"""
import argparse
import ctypes
import json
import re
import sys
import time
import urllib.request


class Sample(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("timeStamp", ctypes.c_ulonglong), ("smUtil", ctypes.c_uint),
                ("memUtil", ctypes.c_uint), ("encUtil", ctypes.c_uint), ("decUtil", ctypes.c_uint)]


NVML_SUCCESS, NVML_ERROR_NOT_FOUND, NVML_ERROR_INSUFFICIENT_SIZE = 0, 6, 7


class Nvml:
    def __init__(self, index):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        self.check(self.lib.nvmlInit_v2(), "nvmlInit_v2")
        self.dev = ctypes.c_void_p()
        self.check(self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.dev)), "GetHandleByIndex")

    def check(self, rc, what):
        if rc != NVML_SUCCESS:
            raise RuntimeError(f"{what}: NVML error {rc}")

    def samples(self, since_us):
        """Process utilisation samples newer than since_us (driver time, us)."""
        n = ctypes.c_uint(0)
        rc = self.lib.nvmlDeviceGetProcessUtilization(self.dev, None, ctypes.byref(n), ctypes.c_ulonglong(since_us))
        if rc == NVML_ERROR_NOT_FOUND or n.value == 0:
            return []
        if rc not in (NVML_SUCCESS, NVML_ERROR_INSUFFICIENT_SIZE):
            self.check(rc, "GetProcessUtilization (size)")
        buf = (Sample * (n.value + 16))()
        n = ctypes.c_uint(len(buf))
        rc = self.lib.nvmlDeviceGetProcessUtilization(self.dev, buf, ctypes.byref(n), ctypes.c_ulonglong(since_us))
        if rc == NVML_ERROR_NOT_FOUND:
            return []
        self.check(rc, "GetProcessUtilization")
        return [(s.pid, s.timeStamp, s.smUtil) for s in buf[: n.value]]


def nvml_shares(series, pids, vms):
    """Each VM's share of the busy time NVML saw. The driver samples at a
    fixed period and reports a process only for periods in which it ran, so
    the sum of a process's samples is proportional to its busy time (a
    missing sample is time it did not run, not a gap to fill in)."""
    busy = {v: sum(sm for _, sm in series.get(pids.get(v), [])) for v in vms}
    total = sum(busy.values())
    return {
        "nvml_sm_util_sum": busy,
        "nvml_samples": {v: len(series.get(pids.get(v), [])) for v in vms},
        "nvml_other_pids": {str(p): sum(sm for _, sm in pts) for p, pts in series.items() if p not in pids.values()},
        "nvml_share": {v: busy[v] / total if total > 0 else None for v in vms},
    }


def get(api, path):
    with urllib.request.urlopen(api + path, timeout=5) as r:
        return r.read().decode()


def exported_gpu_seconds(api, vms):
    """gpuvisor_vm_gpu_seconds_total per VM, from one scrape of /metrics."""
    out = {}
    for line in get(api, "/metrics").splitlines():
        m = re.match(r'gpuvisor_vm_gpu_seconds_total\{([^}]*)\} (\S+)$', line)
        if m:
            vm = re.search(r'vm="([^"]*)"', m.group(1)).group(1)
            if vm in vms:
                out[vm] = float(m.group(2))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", default="http://127.0.0.1:9400")
    ap.add_argument("--vms", required=True, help="comma-separated VM names")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--gpu-index", type=int, default=0)
    ap.add_argument("--poll", type=float, default=0.05, help="seconds between NVML reads")
    a = ap.parse_args()
    vms = a.vms.split(",")
    pids = {v["name"]: v["pid"] for v in json.loads(get(a.api, "/v1/vms")) if v["name"] in vms}
    out = {"vms": vms, "pids": pids, "seconds": a.seconds}
    try:
        nvml = Nvml(a.gpu_index)
    except (OSError, RuntimeError) as e:
        nvml = None
        out["nvml_error"] = str(e)
    seen = {}
    # Samples from before the window are skipped by their time stamps. The
    # driver keeps few samples per process, so poll often.
    t0_us = int(time.time() * 1e6)
    g0 = exported_gpu_seconds(a.api, vms)
    t0 = time.monotonic()
    last = t0_us
    while time.monotonic() - t0 < a.seconds:
        time.sleep(a.poll)
        if nvml:
            for pid, ts, sm in nvml.samples(last):
                seen[(pid, ts)] = sm
            if seen:
                last = max(last, max(ts for _, ts in seen))
    g1 = exported_gpu_seconds(a.api, vms)
    t1_us = int(time.time() * 1e6)
    if nvml:
        for pid, ts, sm in nvml.samples(last):
            seen[(pid, ts)] = sm
    dg = {v: g1.get(v, 0.0) - g0.get(v, 0.0) for v in vms}
    total = sum(dg.values())
    out["gpuvisor_gpu_seconds"] = dg
    out["gpuvisor_share"] = {v: dg[v] / total if total > 0 else None for v in vms}
    if nvml:
        series = {}
        for (pid, ts), sm in sorted(seen.items(), key=lambda kv: kv[0][1]):
            if t0_us <= ts <= t1_us:
                series.setdefault(pid, []).append((ts, sm))
        out.update(nvml_shares(series, pids, vms))
        out["nvml_samples_raw"] = {v: series.get(pids.get(v), []) for v in vms}
        errs = [abs(out["gpuvisor_share"][v] - out["nvml_share"][v]) * 100 for v in vms
                if out["gpuvisor_share"][v] is not None and out["nvml_share"][v] is not None]
        out["max_error_pts"] = max(errs) if len(errs) == len(vms) else None
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
