#!/usr/bin/env python3
"""Combines the three runs of scripts/h100/foundation.sh into one JSON
document: each benchmark entry with native and gpuvisor values, unit and
ratio (direct-transport entries under the plain names, VM entries prefixed
guest_), the targets, and the guest checks compared line by line."""
import argparse, datetime, json, re

# name -> (unit, higher is better, target description, target test)
TARGETS = {
    "sync_rtt_ctx": ("us", False, "direct: at most 25 us above native", lambda n, g: g - n <= 25),
    "sync_rtt_dtoh4": ("us", False, "direct: at most 25 us above native", lambda n, g: g - n <= 25),
    "launch_throughput": ("launches/s", True, "direct: at least 0.5x native", lambda n, g: g >= 0.5 * n),
    "h2d_pinned": ("GB/s", True, "at least 0.8x native pinned", lambda n, g: g >= 0.8 * n),
    "d2h_pinned": ("GB/s", True, "at least 0.8x native pinned", lambda n, g: g >= 0.8 * n),
    "h2d_pageable": ("GB/s", True, "reported", None),
    "compute": ("ms", False, "within 2% of native", lambda n, g: abs(g - n) <= 0.02 * n),
}
VM_TARGETS = {"h2d_pinned", "d2h_pinned", "compute"}


def load(path):
    out = {}
    try:
        for line in open(path, errors="replace"):
            line = line.strip()
            if line.startswith("{"):
                try:
                    d = json.loads(line)
                    out[d["name"]] = d
                except (ValueError, KeyError):
                    pass
    except OSError:
        pass
    return out


def checks(path):
    passed, lines = 0, []
    try:
        for line in open(path, errors="replace"):
            line = line.rstrip("\r\n")
            m = re.match(r"^CHECK (\S+): (PASS|FAIL)(.*)$", line)
            if m:
                lines.append(line)
    except OSError:
        pass
    return lines


def main():
    a = argparse.ArgumentParser()
    for k in ("native", "direct", "vm", "native_log", "direct_log", "vm_log", "gpu", "revision", "command"):
        a.add_argument("--" + k.replace("_", "-"), default="")
    args = a.parse_args()
    nat, dire, vm = load(args.native), load(args.direct), load(args.vm)
    entries = []
    for name in sorted(set(nat) | set(dire) | set(vm)):
        unit, higher, target, test = TARGETS.get(name, (nat.get(name, {}).get("unit", ""), True, "reported", None))
        for prefix, src in (("", dire), ("guest_", vm)):
            if name not in nat or name not in src:
                continue
            n, g = float(nat[name]["value"]), float(src[name]["value"])
            e = {"name": prefix + name, "native": n, "gpuvisor": g, "unit": unit,
                 "ratio": (g / n) if n else None}
            if name.startswith("sync_rtt"):
                e["above_native"] = g - n
            if test and (prefix == "" or name in VM_TARGETS):
                e["target"] = target
                e["meets_target"] = bool(test(n, g))
            entries.append(e)
    cn, cd, cv = checks(args.native_log), checks(args.direct_log), checks(args.vm_log)
    def summary(lines):
        return {"passed": sum(" PASS" in l for l in lines), "total": len(lines)}
    native_pass = [l for l in cn if ": PASS" in l]
    def same_as_native(lines):
        mine = {l for l in lines if ": PASS" in l and not l.startswith("CHECK probe.")}
        missing = [l for l in native_pass if l not in mine]
        return {"identical_pass_lines": not missing, "differs_from_native": missing[:20]}
    doc = {
        "benchmark": "foundation",
        "command": args.command,
        "git_revision": args.revision.strip(),
        "machine": args.gpu and open(args.gpu).read().strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "entries": entries,
        "checks": {
            "native": summary(cn),
            "direct": {**summary(cd), **same_as_native(cd)},
            "vm": {**summary(cv), **same_as_native(cv)},
            "failed": {"native": [l for l in cn if ": FAIL" in l][:20], "direct": [l for l in cd if ": FAIL" in l][:20],
                       "vm": [l for l in cv if ": FAIL" in l][:20]},
        },
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
