#!/usr/bin/env python3
"""Traces how the CUDA libraries call the private export tables of NVIDIA's
own driver (issue 7): which slots of a table they call, with what
arguments, what each call returns, and what it writes through its pointer
arguments. The guest driver has to answer those slots; this shows what the
real driver answers, in the real call sequence.

It builds a libcuda.so.1 in OUTDIR that forwards every symbol of the real
driver (a jump through a pointer filled by dlsym at load) except
cuGetProcAddress(_v2) and cuGetExportTable, which hand out a copy of each
traced table whose slots go through a logging wrapper. Run a program with
LD_LIBRARY_PATH=OUTDIR and the trace goes to stderr (or GV_TRACE_FILE).

    python3 scripts/h100/export-trace.py OUTDIR [--real PATH] [--table UUID]...
    LD_LIBRARY_PATH=OUTDIR python3 scripts/h100/frameworks.py cupy

Default table: the context table {21318c60-...} that cuBLASLt uses.
"""
import argparse
import os
import re
import subprocess

SLOTS = 256  # wrappers generated; a table with more slots is traced up to this

C_BODY = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <pthread.h>

typedef int CUresult;
typedef uint64_t (*fn6)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

static void *real;
static FILE *trace;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

struct traced { unsigned char id[16]; void **copy; void **orig; size_t n; };
static struct traced tables[NTABLES];
static int ntables;
static unsigned calls[NTABLES][SLOTS];

/* Reads n words at p without faulting (process_vm_readv on ourselves). */
static int peek(uint64_t p, uint64_t *w, size_t n) {
    struct iovec local = { w, n * 8 }, remote = { (void *)p, n * 8 };
    return p > 0x10000 && process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)(n * 8);
}

static void dump(const char *when, int a, uint64_t p, size_t n) {
    uint64_t w[64];
    if (n > 64 || !peek(p, w, n)) return;
    fprintf(trace, "    %s arg%d %#lx:", when, a, (unsigned long)p);
    for (size_t i = 0; i < n; i++) fprintf(trace, " %lx", (unsigned long)w[i]);
    fprintf(trace, "\n");
}

static uint64_t call(int t, int s, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5) {
    uint64_t args[6] = { a0, a1, a2, a3, a4, a5 };
    pthread_mutex_lock(&lock);
    unsigned k = ++calls[t][s];
    int loud = k <= 4;
    if (loud) {
        fprintf(trace, "[table %d slot %d call %u] args %lx %lx %lx %lx %lx %lx\n", t, s, k,
                (unsigned long)a0, (unsigned long)a1, (unsigned long)a2, (unsigned long)a3,
                (unsigned long)a4, (unsigned long)a5);
        for (int i = 0; i < 6; i++) dump("before", i, args[i], 16);
        fflush(trace);
    }
    pthread_mutex_unlock(&lock);
    uint64_t r = ((fn6)tables[t].orig[s])(a0, a1, a2, a3, a4, a5);
    if (loud) {
        pthread_mutex_lock(&lock);
        fprintf(trace, "[table %d slot %d call %u] returned %#lx\n", t, s, k, (unsigned long)r);
        for (int i = 0; i < 6; i++) {
            dump("after", i, args[i], 16);
            uint64_t inner;  /* an out-pointer's target, one level down */
            if (peek(args[i], &inner, 1)) dump("after *", i, inner, 64);
        }
        fflush(trace);
        pthread_mutex_unlock(&lock);
    }
    return r;
}

WRAPPERS

static CUresult (*real_export)(const void **, const unsigned char *);
static CUresult (*real_gpa)(const char *, void **, int, uint64_t);
static CUresult (*real_gpa2)(const char *, void **, int, uint64_t, void *);

CUresult cuGetExportTable(const void **out, const unsigned char *id) {
    CUresult r = real_export(out, id);
    if (id) {
        fprintf(trace, "[cuGetExportTable] ");
        for (int i = 0; i < 16; i++) fprintf(trace, "%02x", id[i]);
        fprintf(trace, " -> %d\n", r);
    }
    if (r != 0 || !out || !*out) return r;
    pthread_mutex_lock(&lock);
    for (int t = 0; t < ntables; t++) {
        if (memcmp(tables[t].id, id, 16)) continue;
        if (!tables[t].copy) {
            void **orig = (void **)*out;
            size_t n = (size_t)(uintptr_t)orig[0] / 8;
            if (n == 0 || n > 4096) n = SLOTS;  /* no size word: trace the first SLOTS */
            tables[t].copy = calloc(n, sizeof(void *));
            memcpy(tables[t].copy, orig, n * sizeof(void *));
            for (size_t s = 1; s < n && s < SLOTS; s++) tables[t].copy[s] = wrappers[t][s];
            tables[t].orig = orig;
            tables[t].n = n;
            fprintf(trace, "[table %d] %zu slots, size word %#lx\n", t, n, (unsigned long)(uintptr_t)orig[0]);
        }
        *out = tables[t].copy;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

CUresult cuGetProcAddress(const char *sym, void **pfn, int v, uint64_t f);
CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int v, uint64_t f, void *status);

/* The runtime may also ask for cuGetProcAddress itself and resolve the
   rest through what it gets. */
static void *ours(const char *sym, int v) {
    if (!strcmp(sym, "cuGetExportTable")) return (void *)cuGetExportTable;
    if (!strcmp(sym, "cuGetProcAddress")) return v >= 12000 ? (void *)cuGetProcAddress_v2 : (void *)cuGetProcAddress;
    return NULL;
}

CUresult cuGetProcAddress(const char *sym, void **pfn, int v, uint64_t f) {
    void *o = ours(sym, v);
    if (o && pfn) { *pfn = o; return 0; }
    return real_gpa(sym, pfn, v, f);
}

CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int v, uint64_t f, void *status) {
    void *o = ours(sym, v);
    if (o && pfn) { *pfn = o; if (status) *(int *)status = 1; return 0; }
    return real_gpa2(sym, pfn, v, f, status);
}

__attribute__((constructor)) static void init(void) {
    const char *path = getenv("GV_REAL_LIBCUDA");
    real = dlopen(path ? path : REAL, RTLD_NOW | RTLD_LOCAL);
    if (!real) { fprintf(stderr, "export-trace: %s\n", dlerror()); abort(); }
    const char *tf = getenv("GV_TRACE_FILE");
    trace = tf ? fopen(tf, "a") : NULL;
    if (!trace) trace = stderr;
    real_export = dlsym(real, "cuGetExportTable");
    real_gpa = dlsym(real, "cuGetProcAddress");
    real_gpa2 = dlsym(real, "cuGetProcAddress_v2");
    FILL_IDS
    FILL_FORWARDS
}
"""


def loaded_path(name):
    """Where the loader finds `name`: load it here and read our own maps."""
    import ctypes
    ctypes.CDLL(name)
    with open("/proc/self/maps") as f:
        for line in f:
            if name.split(".so")[0] in line and "/" in line:
                return line.split()[-1]
    raise SystemExit(f"export-trace: {name} is not loadable here")


def uuid_bytes(u):
    h = u.strip("{}").replace("-", "")
    return ", ".join(f"0x{h[i:i + 2]}" for i in range(0, 32, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--real", default=None, help="the driver to forward to (default: the libcuda.so.1 the loader finds)")
    ap.add_argument("--table", action="append", default=None)
    a = ap.parse_args()
    tables = a.table or ["{21318c60-9714-3248-8ca6-41ff7324c8f2}"]
    os.makedirs(a.outdir, exist_ok=True)
    real = os.path.realpath(a.real or loaded_path("libcuda.so.1"))
    nm = subprocess.run(["nm", "-D", "--defined-only", real], capture_output=True, text=True)
    if nm.returncode != 0:
        raise SystemExit(f"export-trace: nm -D {real}: {nm.stderr.strip()}")
    nm = nm.stdout
    own = {"cuGetExportTable", "cuGetProcAddress", "cuGetProcAddress_v2"}
    syms = sorted({m.group(1) for m in re.finditer(r" [TW] (\w+)$", nm, re.M)} - own)
    fwd = []
    for s in syms:
        fwd.append(f'__asm__(".globl {s}\\n.type {s},@function\\n{s}: jmp *fwd_{s}(%rip)\\n");')
        fwd.append(f"__attribute__((visibility(\"hidden\"))) void *fwd_{s};")
    wrappers = []
    for t in range(len(tables)):
        for s in range(SLOTS):
            wrappers.append(
                f"static uint64_t w{t}_{s}(uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, "
                f"uint64_t a5) {{ return call({t}, {s}, a0, a1, a2, a3, a4, a5); }}")
    table_rows = ", ".join("{" + ", ".join(f"(void *)w{t}_{s}" for s in range(SLOTS)) + "}" for t in range(len(tables)))
    wrappers.append(f"static void *wrappers[NTABLES][SLOTS] = {{{table_rows}}};")
    fill_ids = [f"{{ static const unsigned char id[16] = {{{uuid_bytes(u)}}}; memcpy(tables[{t}].id, id, 16); }}"
                for t, u in enumerate(tables)]
    fill_ids.append(f"ntables = {len(tables)};")
    fill_fwd = [f'fwd_{s} = dlsym(real, "{s}");' for s in syms]
    src = (C_BODY.replace("WRAPPERS", "\n".join(wrappers))
           .replace("FILL_IDS", "\n    ".join(fill_ids))
           .replace("FILL_FORWARDS", "\n    ".join(fill_fwd)))
    header = f"#define NTABLES {len(tables)}\n#define SLOTS {SLOTS}\n#define REAL \"{real}\"\n"
    body = "\n".join(fwd)
    c = os.path.join(a.outdir, "export-trace.c")
    with open(c, "w") as f:
        f.write(header + body + "\n" + src + "\n")
    lib = os.path.join(a.outdir, "libcuda.so.1")
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", lib, c, "-Wl,-soname,libcuda.so.1", "-ldl", "-lpthread"],
                   check=True)
    print(f"export-trace: {lib} forwards {len(syms)} symbols to {real}; traced tables: {', '.join(tables)}")


if __name__ == "__main__":
    main()
