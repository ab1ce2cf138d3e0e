#!/usr/bin/env python3
"""What a GPU fault does to a process's contexts, and whether the process can
go on afterwards (issue 8: fault isolation and context recreation).

Runs each case in a child process (a fault or a hung kernel must not leak into
the next case) through the driver API with ctypes, so it needs nothing but
libcuda. Prints one JSON object:

- fault_<kind>: a kernel that writes an unmapped address (illegal_address) or
  executes `trap` (trap) in context A, with a second context B of the same
  process idle beside it: the error each call returns afterwards in A and in
  B, and whether a context created after destroying both (and resetting the
  primary context) allocates, runs a kernel and reads back the right data.
- hang: a kernel that never ends in context A. Another thread destroys A
  after a delay: whether that call returns, how long it took, whether the
  hung kernel's own synchronize returns and with what, and whether a new
  context then works. The case is killed from outside if it is still stuck.
"""
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

PTX = r"""
.version 7.0
.target sm_70
.address_size 64
.visible .entry gv_bad_store(.param .u64 p) {
  .reg .u64 %a; .reg .u32 %v;
  mov.u64 %a, 0xdead0000000;
  mov.u32 %v, 7;
  st.global.u32 [%a], %v;
  ret;
}
.visible .entry gv_trap(.param .u64 p) {
  trap;
  ret;
}
.visible .entry gv_forever(.param .u64 p) {
  .reg .pred %p; .reg .u64 %a; .reg .u32 %v;
  ld.param.u64 %a, [p];
LOOP:
  ld.volatile.global.u32 %v, [%a];
  setp.ne.u32 %p, %v, 12345;
  @%p bra LOOP;
  ret;
}
.visible .entry gv_fill(.param .u64 p) {
  .reg .u64 %a, %o; .reg .u32 %i;
  ld.param.u64 %a, [p];
  mov.u32 %i, %tid.x;
  mul.wide.u32 %o, %i, 4;
  add.u64 %a, %a, %o;
  st.global.u32 [%a], %i;
  ret;
}
"""

cu = ctypes.CDLL("libcuda.so.1")
VP = ctypes.c_void_p


def call(name, *args):
    return int(getattr(cu, name)(*args))


def setup():
    assert call("cuInit", 0) == 0
    dev = ctypes.c_int()
    assert call("cuDeviceGet", ctypes.byref(dev), 0) == 0
    return dev


def new_ctx(dev):
    ctx = VP()
    r = call("cuCtxCreate_v4", ctypes.byref(ctx), None, 0, dev)
    return r, ctx


def load(ctx):
    call("cuCtxSetCurrent", ctx)
    mod = VP()
    r = call("cuModuleLoadData", ctypes.byref(mod), ctypes.c_char_p(PTX.encode() + b"\0"))
    return r, mod


def func(mod, name):
    f = VP()
    r = call("cuModuleGetFunction", ctypes.byref(f), mod, name.encode())
    return r, f


def launch(f, arg, threads=1):
    a = ctypes.c_uint64(arg)
    params = (VP * 1)(ctypes.cast(ctypes.byref(a), VP))
    return call("cuLaunchKernel", f, 1, 1, 1, threads, 1, 1, 0, None, params, None)


def works(dev):
    """A fresh context: allocate, run gv_fill, read back. Returns a dict."""
    out = {}
    r, ctx = new_ctx(dev)
    out["ctx_create"] = r
    if r:
        return out
    r, mod = load(ctx)
    out["module_load"] = r
    if r:
        return out
    _, f = func(mod, "gv_fill")
    d = ctypes.c_uint64()
    out["mem_alloc"] = call("cuMemAlloc_v2", ctypes.byref(d), 256 * 4)
    if out["mem_alloc"]:
        return out
    out["launch"] = launch(f, d.value, 256)
    out["sync"] = call("cuCtxSynchronize")
    host = (ctypes.c_uint32 * 256)()
    out["copy"] = call("cuMemcpyDtoH_v2", host, d, 256 * 4)
    out["data_right"] = list(host) == list(range(256))
    out["destroy"] = call("cuCtxDestroy_v2", ctx)
    return out


def case_fault(kernel):
    dev = setup()
    res = {}
    _, a = new_ctx(dev)
    _, b = new_ctx(dev)
    call("cuCtxSetCurrent", b)
    db = ctypes.c_uint64()
    res["b_alloc_before"] = call("cuMemAlloc_v2", ctypes.byref(db), 4096)
    r, mod = load(a)
    _, f = func(mod, kernel)
    res["launch"] = launch(f, 0)
    res["a_sync"] = call("cuCtxSynchronize")
    res["a_sync_again"] = call("cuCtxSynchronize")
    d = ctypes.c_uint64()
    res["a_alloc_after"] = call("cuMemAlloc_v2", ctypes.byref(d), 4096)
    call("cuCtxSetCurrent", b)
    res["b_sync"] = call("cuCtxSynchronize")
    d2 = ctypes.c_uint64()
    res["b_alloc_after"] = call("cuMemAlloc_v2", ctypes.byref(d2), 4096)
    host = (ctypes.c_uint8 * 16)()
    res["b_copy_after"] = call("cuMemcpyDtoH_v2", host, db, 16)
    res["destroy_a"] = call("cuCtxDestroy_v2", a)
    res["destroy_b"] = call("cuCtxDestroy_v2", b)
    res["primary_reset"] = call("cuDevicePrimaryCtxReset_v2", dev)
    res["new_context"] = works(dev)
    return res


def case_hang():
    dev = setup()
    res = {}
    _, a = new_ctx(dev)
    r, mod = load(a)
    _, f = func(mod, "gv_forever")
    d = ctypes.c_uint64()
    call("cuMemAlloc_v2", ctypes.byref(d), 4096)
    call("cuMemsetD32_v2", d, 0, 1024)
    res["launch"] = launch(f, d.value)
    done = {}

    def waiter():
        call("cuCtxSetCurrent", a)
        t = time.monotonic()
        done["sync"] = call("cuCtxSynchronize")
        done["sync_after_s"] = round(time.monotonic() - t, 3)

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    time.sleep(2.0)
    res["query_while_running"] = call("cuStreamQuery", None)
    t = time.monotonic()
    # Destroy from this thread while the waiter is blocked in the context.
    res["destroy"] = call("cuCtxDestroy_v2", a)
    res["destroy_s"] = round(time.monotonic() - t, 3)
    th.join(10)
    res["waiter"] = done or "still blocked 10 s after the destroy"
    res["new_context"] = works(dev)
    return res


def main():
    if len(sys.argv) > 1:
        which = sys.argv[1]
        out = case_hang() if which == "hang" else case_fault(which)
        print(json.dumps(out))
        return
    result = {"machine": os.uname().nodename}
    for name, arg, limit in [
        ("fault_illegal_address", "gv_bad_store", 60),
        ("fault_trap", "gv_trap", 60),
        ("hang", "hang", 40),
    ]:
        t = time.monotonic()
        try:
            p = subprocess.run([sys.executable, __file__, arg], capture_output=True, text=True, timeout=limit)
            try:
                result[name] = json.loads(p.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                result[name] = {"rc": p.returncode, "stdout": p.stdout[-2000:], "stderr": p.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            result[name] = {"timed_out_after_s": limit}
        result[name]["case_s"] = round(time.monotonic() - t, 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
