"""Run in the guest by tests/hostfs.rs with the HOST's Python, through
gpuvisor-host-run: loads libcuda.so.1 with ctypes and drives the vGPU with the
driver API. Prints `CHECK hostfs.<name>: PASS|FAIL ...` lines and one
`HOSTFS {json}` line. Argument: the SHA-256 of the guest's own driver file,
which the loaded libcuda.so.1 must match."""
import ctypes
import hashlib
import json
import os
import sys

res = {"python": sys.executable, "version": sys.version.split()[0], "prefix": sys.prefix}
failed = 0


def check(name, ok, detail=""):
    global failed
    failed += not ok
    print(f"CHECK hostfs.{name}: {'PASS' if ok else 'FAIL'} {detail}", flush=True)


def call(what, rc):
    check(what, rc == 0, f"CUresult {rc}")
    return rc == 0


cuda = ctypes.CDLL("libcuda.so.1")
# Which file the loader mapped as libcuda.so.1, and whether it is the guest driver.
mapped = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libcuda" in l.split()[-1]})
res["libcuda_mapped"] = mapped
check("one_libcuda_mapped", len(mapped) == 1, str(mapped))
digest = hashlib.sha256(open(mapped[0], "rb").read()).hexdigest() if mapped else ""
res["libcuda_sha256"] = digest
check("libcuda_is_the_guest_driver", len(sys.argv) > 1 and digest == sys.argv[1], f"{digest[:16]} vs {sys.argv[1:]}")

u64, cint, cuint = ctypes.c_uint64, ctypes.c_int, ctypes.c_uint
cuda.cuMemAlloc_v2.argtypes = [ctypes.POINTER(u64), ctypes.c_size_t]
cuda.cuMemcpyHtoD_v2.argtypes = [u64, ctypes.c_void_p, ctypes.c_size_t]
cuda.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, u64, ctypes.c_size_t]
cuda.cuMemFree_v2.argtypes = [u64]

if call("cuInit", cuda.cuInit(cuint(0))):
    version, count, dev = cint(), cint(), cint()
    call("cuDriverGetVersion", cuda.cuDriverGetVersion(ctypes.byref(version)))
    res["driver_version"] = version.value
    call("cuDeviceGetCount", cuda.cuDeviceGetCount(ctypes.byref(count)))
    res["device_count"] = count.value
    call("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), 0))
    name = ctypes.create_string_buffer(256)
    call("cuDeviceGetName", cuda.cuDeviceGetName(name, 256, dev))
    res["device_name"] = name.value.decode(errors="replace")
    ctx = ctypes.c_void_p()
    call("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
    call("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))
    n = 4 << 20
    src = bytes((i * 7 + 3) & 0xFF for i in range(256)) * (n // 256)
    dst = ctypes.create_string_buffer(n)
    dptr = u64()
    if call("cuMemAlloc", cuda.cuMemAlloc_v2(ctypes.byref(dptr), n)):
        call("cuMemcpyHtoD", cuda.cuMemcpyHtoD_v2(dptr, src, n))
        call("cuMemcpyDtoH", cuda.cuMemcpyDtoH_v2(dst, dptr, n))
        res["copy_round_trip"] = dst.raw == src
        check("copy_round_trip", dst.raw == src, f"{n} bytes")
        call("cuMemFree", cuda.cuMemFree_v2(dptr))

print("HOSTFS " + json.dumps(res), flush=True)
sys.exit(1 if failed else 0)
