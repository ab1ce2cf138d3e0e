#!/usr/bin/env python3
"""The host's PyTorch and CuPy inside a VM (issue 7), for
scripts/h100/vm-frameworks.sh. One file, several modes:

    vm_frameworks.py discover --out FILE
        (host) where this Python, PyTorch and CuPy live: prints `EXE path`,
        `EXPORT dir` (the host directories the VM must export, /usr first)
        and `ENV K=V` (variables the guest should set: CUDA_PATH,
        PYTHONPATH, ...); writes them as JSON.
    vm_frameworks.py driver|torch|cupy [--driver-sha256 HEX] [--n N]
        (natively, and in the guest through gpuvisor-host-run) the checks:
        `CHECK vmfw.<mode>.<name>: PASS|FAIL detail` lines as they go, and
        one `VMFW {json}` line at the end. With --driver-sha256 the
        libcuda.so.1 that the process mapped must be that file (the guest
        driver), and no other libcuda may be mapped.
    vm_frameworks.py report --res DIR [--revision R]
        (host) vm-frameworks.json from the native outputs and the console.
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import socket
import sys
import time

T0 = time.perf_counter()
RES = {}
FAILED = []


def check(mode, name, ok, detail=""):
    if not ok:
        FAILED.append(name)
    RES.setdefault("checks", {})[name] = bool(ok)
    print(f"CHECK vmfw.{mode}.{name}: {'PASS' if ok else 'FAIL'} {detail}", flush=True)


def is_driver_file(path):
    """A CUDA driver library (libcuda.so, .so.1, .so.580...), not the runtime (libcudart)."""
    return os.path.basename(path).startswith("libcuda.so")


def mapped_libcuda():
    """The CUDA driver libraries this process has mapped."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and is_driver_file(parts[-1]):
                out.add(parts[-1])
    return sorted(out)


def recheck_driver(side):
    """Recomputes libcuda_is_the_guest_driver from the mapped files a result
    lists, with the driver's own step as reference: runs before the check
    matched libcuda.so* counted PyTorch's libcudart.so.13 as a second libcuda."""
    want = side.get("driver", {}).get("result", {}).get("libcuda_sha256", {})
    if len(want) != 1:
        return
    want = next(iter(want.values()))
    for mode, v in side.items():
        c = v.get("checks", {}).get("libcuda_is_the_guest_driver")
        sums = v.get("result", {}).get("libcuda_sha256")
        if c is None or c[0] or not sums:
            continue
        drivers = {m: h for m, h in sums.items() if is_driver_file(m)}
        ok = len(drivers) == 1 and next(iter(drivers.values())) == want
        v["checks"]["libcuda_is_the_guest_driver"] = [ok, f"recomputed from the mapped files: {sorted(drivers)} "
                                                          f"(was: {c[1]})"]


def driver_check(mode, a):
    """Which libcuda the process loaded, and whether it is the guest driver."""
    maps = mapped_libcuda()
    RES["libcuda_mapped"] = maps
    if not a.driver_sha256:
        check(mode, "libcuda_loaded", len(maps) >= 1, str(maps))
        return
    sums = {}
    for m in maps:
        try:
            with open(m, "rb") as f:
                sums[m] = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            sums[m] = f"unreadable: {e}"
    RES["libcuda_sha256"] = sums
    ok = len(maps) == 1 and sums[maps[0]] == a.driver_sha256
    check(mode, "libcuda_is_the_guest_driver", ok, f"{maps} (sha256 {[s[:12] for s in sums.values()]})")


def rel_err(got, ref):
    import numpy as np
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def t_rel_err(got, ref):
    """rel_err for torch tensors, without numpy."""
    got, ref = got.double(), ref.double()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def step(name, fn):
    t = time.perf_counter()
    try:
        fn()
    except Exception as e:  # one failed step does not stop the others
        check(RES["mode"], name, False, f"{type(e).__name__}: {e}")
    RES.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 3)


def mode_driver(a):
    import ctypes
    cuda = ctypes.CDLL("libcuda.so.1")
    driver_check("driver", a)
    n, name = ctypes.c_int(), ctypes.create_string_buffer(256)
    check("driver", "cuInit", cuda.cuInit(0) == 0)
    cuda.cuDeviceGetCount(ctypes.byref(n))
    cuda.cuDeviceGetName(name, 256, 0)
    RES.update(device_count=n.value, device=name.value.decode(errors="replace"))
    check("driver", "device", n.value >= 1, f"{n.value} x {RES['device']}")


def mode_torch(a):
    t = time.perf_counter()
    import torch
    RES.update(torch=torch.__version__, torch_file=torch.__file__, torch_cuda=torch.version.cuda,
               import_s=round(time.perf_counter() - t, 3))
    print(f"INFO vmfw.torch: torch {torch.__version__} imported in {RES['import_s']} s", flush=True)
    t = time.perf_counter()
    ok = torch.cuda.is_available()
    RES["is_available_s"] = round(time.perf_counter() - t, 3)
    check("torch", "cuda_is_available", ok, f"in {RES['is_available_s']} s")
    if not ok:
        return
    p = torch.cuda.get_device_properties(0)
    RES.update(device=p.name, device_count=torch.cuda.device_count(), total_mib=p.total_memory >> 20,
               cc=f"{p.major}.{p.minor}")
    check("torch", "device", RES["device_count"] >= 1, f"{RES['device_count']} x {p.name}, {RES['total_mib']} MiB")
    driver_check("torch", a)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def matmul():
        g = torch.Generator().manual_seed(0)
        A = torch.randn(a.n, a.n, generator=g)
        B = torch.randn(a.n, a.n, generator=g)
        ref = A.double() @ B.double()
        got = (A.cuda() @ B.cuda()).cpu()
        e = t_rel_err(got, ref)
        RES["matmul"] = {"n": a.n, "rel_err": e, "checksum": float(got.double().sum())}
        check("torch", "matmul_vs_cpu", e < 1e-4, f"{a.n}x{a.n} fp32, max error {e:.2e} of max |C|")

    def elementwise():
        x = torch.linspace(-10, 10, 1 << 20)
        ref = (x.double().sin() * 2 + 1).sum().item()
        got = (x.cuda().sin() * 2 + 1).sum().item()
        e = abs(got - ref) / max(abs(ref), 1.0)
        RES["elementwise"] = {"got": got, "ref": ref}
        check("torch", "elementwise_sum_vs_cpu", e < 1e-3, f"{got:.6g} vs {ref:.6g}")

    def conv():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(8, 3, 32, 32, generator=g)
        conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        ref = conv(x).detach()
        got = conv.cuda()(x.cuda()).detach().cpu()
        e = t_rel_err(got, ref)
        RES["conv"] = {"rel_err": e}
        check("torch", "conv2d_vs_cpu", e < 1e-4, f"max error {e:.2e}")

    def train_step():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).cuda()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(256, 64, generator=g).cuda(), torch.randint(0, 10, (256,), generator=g).cuda()
        losses = []
        for _ in range(20):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
        RES["train_losses"] = losses
        check("torch", "train_loss_falls", losses[-1] < losses[0], f"{losses[0]:.4f} -> {losses[-1]:.4f}")

    step("matmul_vs_cpu", matmul)
    step("elementwise_sum_vs_cpu", elementwise)
    step("conv2d_vs_cpu", conv)
    step("train_loss_falls", train_step)


def mode_cupy(a):
    t = time.perf_counter()
    import cupy as cp
    import numpy as np
    RES.update(cupy=cp.__version__, cupy_file=cp.__file__, import_s=round(time.perf_counter() - t, 3))
    print(f"INFO vmfw.cupy: cupy {cp.__version__} imported in {RES['import_s']} s", flush=True)
    n = cp.cuda.runtime.getDeviceCount()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    RES.update(device_count=n, device=name)
    check("cupy", "device", n >= 1, f"{n} x {name}")
    driver_check("cupy", a)

    def elementwise():
        x = np.linspace(-10, 10, 1 << 20, dtype=np.float32)
        ref = float((np.sin(x.astype(np.float64)) * 2 + 1).sum())
        got = float((cp.sin(cp.asarray(x)) * 2 + 1).sum())
        check("cupy", "elementwise_sum_vs_numpy", abs(got - ref) / max(abs(ref), 1.0) < 1e-3, f"{got:.6g} vs {ref:.6g}")

    def matmul():
        rs = np.random.RandomState(0)
        A = rs.standard_normal((a.n, a.n)).astype(np.float32)
        B = rs.standard_normal((a.n, a.n)).astype(np.float32)
        got = cp.asnumpy(cp.asarray(A) @ cp.asarray(B))
        e = rel_err(got, A.astype(np.float64) @ B.astype(np.float64))
        RES["matmul"] = {"n": a.n, "rel_err": e}
        check("cupy", "matmul_vs_numpy", e < 1e-4, f"{a.n}x{a.n} fp32, max error {e:.2e}")

    def kernel():
        # Compiled by NVRTC in the guest, loaded through the guest driver.
        k = cp.ElementwiseKernel("float32 a", "float32 b", "b = a * a + 1", "vmfw_sq1")
        x = np.arange(4096, dtype=np.float32)
        got = cp.asnumpy(k(cp.asarray(x)))
        check("cupy", "elementwise_kernel_vs_numpy", np.array_equal(got, x * x + 1), "b = a * a + 1 over 4096")

    step("elementwise_sum_vs_numpy", elementwise)
    step("matmul_vs_numpy", matmul)
    step("elementwise_kernel_vs_numpy", kernel)


def discover(a):
    """The host directories a VM must export to run this Python with its
    PyTorch and CuPy, outermost first, /usr first."""
    info = {"executable": sys.executable, "realpath": os.path.realpath(sys.executable), "version": sys.version,
            "prefix": sys.prefix, "base_prefix": sys.base_prefix}
    need = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.dirname(info["realpath"]))}
    # sys.path[0] is this script's directory: not the Python's.
    need.update(p for p in sys.path[1:] if p and os.path.isabs(p) and os.path.isdir(p))
    # The CUDA toolkit CuPy compiles against, if the environment names one.
    env = {k: os.environ[k] for k in ("CUDA_PATH", "CUDA_HOME", "PYTHONPATH") if os.environ.get(k)}
    for k in ("CUDA_PATH", "CUDA_HOME"):
        if k in env and os.path.isdir(env[k]):
            need.add(env[k])
    try:
        import site
        env["PYTHONUSERBASE"] = site.getuserbase()
    except Exception:
        pass
    info["env"] = env
    for mod in ("torch", "cupy", "numpy"):
        try:
            m = __import__(mod)
            info[mod] = {"version": getattr(m, "__version__", "?"), "file": m.__file__}
            need.add(os.path.dirname(os.path.dirname(m.__file__)))
        except Exception as e:
            info[mod] = {"error": f"{type(e).__name__}: {e}"}
    exports = ["/usr"]
    # A host without merged /usr keeps the C library and loader in /lib*.
    exports += [d for d in ("/lib", "/lib64") if os.path.isdir(d) and not os.path.islink(d)]
    skip = ("/proc", "/sys", "/dev")
    under = lambda p, d: p == d or p.startswith(d.rstrip("/") + "/")
    for p in sorted({os.path.normpath(p) for p in need}, key=len):
        if any(under(p, s) for s in skip) or any(under(p, e) for e in exports):
            continue
        exports.append(p)
    info["exports"] = exports
    with open(a.out, "w") as f:
        json.dump(info, f, indent=1)
    print("EXE", sys.executable)
    for e in exports:
        print("EXPORT", e)
    for k, v in env.items():
        print("ENV", f"{k}={v}")


def parse(lines):
    """{mode: {"checks": {name: [pass, detail]}, "result": VMFW json}} from output lines."""
    out = {}
    for l in lines:
        l = l.rstrip("\r\n")
        m = re.match(r"^CHECK vmfw\.(\w+)\.(\w+): (PASS|FAIL) ?(.*)$", l)
        if m:
            out.setdefault(m[1], {}).setdefault("checks", {})[m[2]] = [m[3] == "PASS", m[4]]
        elif l.startswith("VMFW "):
            try:
                r = json.loads(l[5:])
                out.setdefault(r.get("mode", "?"), {})["result"] = r
            except ValueError:
                pass
    return out


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def report(a):
    res = a.res
    native = {}
    for mode in ("driver", "torch", "cupy"):
        native.update(parse(read(f"{res}/native-{mode}.out")))
    console = read(f"{res}/vm-console.log")
    guest = parse(console)
    recheck_driver(guest)
    recheck_driver(native)
    steps = {}
    for l in console:
        m = re.match(r"^VMFW-STEP (\w+) (start|exit (\d+)) ([\d.]+)", l.rstrip("\r"))
        if m:
            s = steps.setdefault(m[1], {})
            if m[2] == "start":
                s["start_s"] = float(m[4])
            else:
                s["rc"], s["end_s"] = int(m[3]), float(m[4])
                s["seconds"] = round(s["end_s"] - s.get("start_s", s["end_s"]), 1)
    for mode in ("driver", "torch", "cupy"):
        if mode in steps:
            guest.setdefault(mode, {})["step"] = steps[mode]
    try:
        with open(f"{res}/discover.json") as f:
            disc = json.load(f)
    except (OSError, ValueError):
        disc = None
    vm_rc = None
    for l in read(f"{res}/vm.rc"):
        vm_rc = int(l) if l.strip().lstrip("-").isdigit() else vm_rc

    def all_pass(side, mode):
        c = side.get(mode, {}).get("checks", {})
        return bool(c) and all(v[0] for v in c.values())

    verdict = {f"{mode}_in_vm": all_pass(guest, mode) for mode in ("driver", "torch", "cupy")}
    # The same interpreter and libraries as natively, not the tree's others.
    version = lambda side: next((side[m]["result"].get("version") for m in ("torch", "cupy", "driver")
                                 if side.get(m, {}).get("result")), None)
    verdict["same_python_as_native"] = version(guest) is not None and version(guest) == version(native)
    verdict.update({f"{mode}_native": all_pass(native, mode) for mode in ("torch", "cupy")})
    nm = native.get("torch", {}).get("result", {}).get("matmul", {})
    gm = guest.get("torch", {}).get("result", {}).get("matmul", {})
    doc = {
        "what": "the host's Python, PyTorch and CuPy run inside a TCG VM from the host's directories "
                "(VM spec host_paths, read-only 9p; gpuvisor-host-run in the guest) on the guest driver",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "revision": a.revision,
        "command": "scripts/h100/vm-frameworks.sh",
        "gpu": " ".join(read(f"{res}/gpu.txt")),
        "engine": a.engine,
        "python": disc,
        "vm_exit": vm_rc,
        "verdict": verdict,
        "pass": all(verdict[k] for k in ("driver_in_vm", "torch_in_vm", "cupy_in_vm")),
        "torch_matmul_checksum_native_vs_vm": [nm.get("checksum"), gm.get("checksum")],
        "guest": guest,
        "native": native,
        "guest_tree": [l.rstrip("\r") for l in console if "gpuvisor-host-run" in l][:8],
    }
    json.dump(doc, sys.stdout, indent=1)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["discover", "driver", "torch", "cupy", "report"])
    ap.add_argument("--driver-sha256", default="")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--out", default="discover.json")
    ap.add_argument("--res", default=".")
    ap.add_argument("--revision", default="")
    ap.add_argument("--engine", default="cuda")
    a = ap.parse_args()
    if a.mode == "discover":
        return discover(a)
    if a.mode == "report":
        return report(a)
    RES.update(mode=a.mode, python=sys.executable, version=sys.version.split()[0])
    try:
        {"driver": mode_driver, "torch": mode_torch, "cupy": mode_cupy}[a.mode](a)
    except Exception as e:  # the JSON line still comes, saying what failed
        check(a.mode, "ran", False, f"{type(e).__name__}: {e}")
    RES["failed"] = FAILED
    RES["total_s"] = round(time.perf_counter() - T0, 3)
    print("VMFW " + json.dumps(RES), flush=True)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
