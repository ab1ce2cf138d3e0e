#!/usr/bin/env python3
"""Positive control for the backends' seccomp audit (scripts/h100/lib.sh).

The cuda engine's seccomp list runs in "log" mode until it is proven on a
GPU: a call it lacks is allowed and logged by the kernel (audit type=1326).
An empty seccomp-audit.log proves the list complete only if such lines reach
the kernel log on this machine at all. This child installs a filter that logs
every call (SECCOMP_RET_LOG), makes one, and the parent looks for it in dmesg.
Prints {"dmesg_readable": ..., "logged": ...}.
"""
import ctypes
import json
import os
import struct
import subprocess
import sys
import time

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_LOG = 0x7FFC0000
BPF_RET_K = 0x06  # BPF_RET | BPF_K


def child():
    libc = ctypes.CDLL(None, use_errno=True)
    # One instruction: return SECCOMP_RET_LOG (allow, and log).
    insn = struct.pack("HBBI", BPF_RET_K, 0, 0, SECCOMP_RET_LOG)
    buf = ctypes.create_string_buffer(insn)

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Fprog(1, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(2)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        sys.exit(3)
    os.getppid()
    os._exit(0)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child()
    p = subprocess.Popen([sys.executable, __file__, "child"])
    rc = p.wait(timeout=30)
    time.sleep(0.5)
    try:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30)
        readable = dmesg.returncode == 0
        text = dmesg.stdout
    except (OSError, subprocess.TimeoutExpired):
        readable, text = False, ""
    logged = any("type=1326" in l and f"pid={p.pid} " in l for l in text.splitlines())
    print(json.dumps({"child_rc": rc, "dmesg_readable": readable, "logged": logged}))


if __name__ == "__main__":
    main()
