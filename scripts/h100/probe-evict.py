#!/usr/bin/env python3
"""Measures the two ways GPU memory can leave the GPU and come back, to choose
the overcommit mechanism: the driver's checkpoint API applied to another
process, and copies to pinned host memory (with the cost of pinning it).
Prints one JSON object. Modes: pinned, pages, warm, register, register-procs, register-contexts, host-alloc, host-share, prefault, contention (see each function)."""
import ctypes, json, mmap, os, subprocess, sys, threading, time

GIB = 1 << 30
cu = ctypes.CDLL("libcuda.so.1")

def anon(n):
    """A private anonymous mapping of `n` bytes, as the backend's swap chunks
    are. Python's anon(n) alone is MAP_SHARED: shmem pages, 4 KiB
    where shmem has no THP, which is not what a backend makes."""
    return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)


def ck(r, what):
    if r != 0:
        raise RuntimeError(f"{what}: CUresult {r}")

def ctx():
    ck(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    ck(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    c = ctypes.c_void_p()
    ck(cu.cuDevicePrimaryCtxRetain(ctypes.byref(c), dev), "retain")
    ck(cu.cuCtxSetCurrent(c), "setcurrent")

def used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return int(out.split()[0])

def child(gib):
    ctx()
    cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    bufs = []
    for i in range(gib):
        p = ctypes.c_uint64()
        ck(cu.cuMemAlloc_v2(ctypes.byref(p), GIB), "alloc")
        ck(cu.cuMemsetD32_v2(ctypes.c_uint64(p.value), ctypes.c_uint(0xA5000000 + i), ctypes.c_size_t(GIB // 4)), "memset")
        bufs.append(p.value)
    # guest RAM stand-in: a memfd mapping registered with the driver, as the backend does
    fd = os.memfd_create("guest-ram")
    os.ftruncate(fd, 256 << 20)
    m = mmap.mmap(fd, 256 << 20)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    reg = cu.cuMemHostRegister_v2(ctypes.c_void_p(addr), ctypes.c_size_t(256 << 20), ctypes.c_uint(0))
    ck(cu.cuCtxSynchronize(), "sync")
    print(json.dumps({"ready": True, "host_register": reg}), flush=True)
    sys.stdin.readline()
    bad = 0
    host = (ctypes.c_uint32 * (1 << 18))()
    for i, p in enumerate(bufs):
        for off in (0, GIB - (1 << 20)):
            ck(cu.cuMemcpyDtoH_v2(host, ctypes.c_uint64(p + off), ctypes.c_size_t(1 << 20)), "dtoh")
            bad += sum(1 for v in host if v != 0xA5000000 + i)
    # and the GPU still runs work after the restore
    ck(cu.cuMemsetD32_v2(ctypes.c_uint64(bufs[0]), ctypes.c_uint(7), ctypes.c_size_t(16)), "memset-after")
    ck(cu.cuCtxSynchronize(), "sync-after")
    print(json.dumps({"bad_words": bad}), flush=True)

def checkpoint(gib):
    ctx()
    p = subprocess.Popen([sys.executable, __file__, "child", str(gib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    ready = json.loads(p.stdout.readline())
    pid = ctypes.c_int(p.pid)
    res = {"gib": gib, "host_register_in_child": ready["host_register"], "used_before_mib": used_mib()}
    st = ctypes.c_int(-1)
    for name in ("Lock", "Checkpoint", "Restore", "Unlock"):
        f = getattr(cu, "cuCheckpointProcess" + name)
        t = time.perf_counter()
        r = f(pid, None)
        res[name.lower() + "_s"] = round(time.perf_counter() - t, 4)
        res[name.lower() + "_rc"] = r
        cu.cuCheckpointProcessGetState(pid, ctypes.byref(st))
        res[name.lower() + "_state"] = st.value
        if name == "Checkpoint":
            res["used_checkpointed_mib"] = used_mib()
        if r != 0:
            break
    res["checkpoint_gbps"] = round(gib * GIB / 1e9 / res["checkpoint_s"], 2) if res.get("checkpoint_rc") == 0 else None
    if res.get("restore_rc") == 0:
        res["restore_gbps"] = round(gib * GIB / 1e9 / res["restore_s"], 2)
    p.stdin.write("go\n"); p.stdin.flush()
    res.update(json.loads(p.stdout.readline()))
    p.wait()
    return res

def pinned(gib):
    ctx()
    n = gib * GIB
    res = {"gib": gib}
    h = ctypes.c_void_p()
    t = time.perf_counter()
    ck(cu.cuMemHostAlloc(ctypes.byref(h), ctypes.c_size_t(n), ctypes.c_uint(0)), "hostalloc")
    res["host_alloc_gbps"] = round(n / 1e9 / (time.perf_counter() - t), 2)
    d = ctypes.c_uint64()
    ck(cu.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(n)), "alloc")
    for name, f, args in (("dtoh", cu.cuMemcpyDtoH_v2, (h, d)), ("htod", cu.cuMemcpyHtoD_v2, (d, h))):
        best = 0
        for _ in range(3):
            t = time.perf_counter()
            ck(f(args[0], args[1], ctypes.c_size_t(n)), name)
            best = max(best, n / 1e9 / (time.perf_counter() - t))
        res[name + "_pinned_gbps"] = round(best, 2)
    t = time.perf_counter()
    ck(cu.cuMemFreeHost(h), "freehost")
    res["host_free_s"] = round(time.perf_counter() - t, 3)
    # pinning memory that already exists (anonymous mapping, pages touched first)
    m = anon(n)
    t = time.perf_counter()
    for off in range(0, n, 4096):
        m[off] = 1
    res["touch_gbps"] = round(n / 1e9 / (time.perf_counter() - t), 2)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    t = time.perf_counter()
    ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(addr), ctypes.c_size_t(n), ctypes.c_uint(0)), "register")
    res["host_register_gbps"] = round(n / 1e9 / (time.perf_counter() - t), 2)
    t = time.perf_counter()
    ck(cu.cuMemcpyDtoH_v2(ctypes.c_void_p(addr), d, ctypes.c_size_t(n)), "dtoh-reg")
    res["dtoh_registered_gbps"] = round(n / 1e9 / (time.perf_counter() - t), 2)
    ck(cu.cuMemHostUnregister(ctypes.c_void_p(addr)), "unregister")
    res["touch_c_gbps"] = touch_rates()
    return res


def touch_rates(gib=4):
    """How fast fresh host pages come into being (fault + zero), written at
    C speed (memset) by 1, 8 and 16 threads, with and without transparent
    huge pages: what the backend's swap threads do before a swap-out can
    copy into them. {"4k": {threads: GB/s}, "thp": {...}}."""
    out = {}
    for kind in ("4k", "thp"):
        out[kind] = {}
        for threads in (1, 8, 16):
            n = gib * GIB
            m = anon(n)
            if kind == "thp" and hasattr(m, "madvise"):
                m.madvise(mmap.MADV_HUGEPAGE)
            base = ctypes.addressof(ctypes.c_char.from_buffer(m))
            out[kind][threads] = memset_rate(base, n, threads)
            del base
            m.close()
    return out

def on_threads(target, args_each):
    """Runs `target` on one thread per argument tuple, all at once; the
    seconds from the first start to the last finish."""
    ts = [threading.Thread(target=target, args=a) for a in args_each]
    t = time.perf_counter()
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    return time.perf_counter() - t


def make_on_threads(make, n, threads, context):
    """Calls `make()` `n` times, spread over `threads` threads that each make
    `context` current first: (what was made, seconds, the first errors). A
    thread stops at its first error."""
    made, errs = [], []

    def work(k):
        ck(cu.cuCtxSetCurrent(context), "setcurrent")
        try:
            for _ in range(k):
                made.append(make())
        except Exception as e:  # noqa: BLE001 (reported to the caller)
            errs.append(str(e))
    dt = on_threads(work, [(n // threads + (i < n % threads),) for i in range(threads)])
    return made, dt, errs[:2]


def memset_rate(base, n, threads):
    """GB/s of `threads` threads writing `n` bytes from `base` (memset)."""
    part = n // threads
    return round(n / 1e9 / on_threads(ctypes.memset, [(base + i * part, 2, part) for i in range(threads)]), 2)


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"unreadable: {e.strerror}"


def pages(gib=4, threads=8):
    """Where the time of fresh host pages goes (why a swap-out into new
    pages runs far below the copy rate on the GPU machine): the machine's
    virtualization and balloon, then writes into new pages (fault + zero
    + write), into the same pages again (write only), and into new pages
    of a second mapping made after the first was unmapped (pages the
    kernel just freed, if they are still backed), each by `threads`
    threads and by one."""
    n = gib * GIB
    # A virtual machine's CPUs carry the "hypervisor" flag; DMI names the maker.
    virt = {"cpu_hypervisor_flag": " hypervisor" in read_text("/proc/cpuinfo"),
            "dmi_sys_vendor": read_text("/sys/class/dmi/id/sys_vendor"),
            "dmi_product_name": read_text("/sys/class/dmi/id/product_name")}
    res = {
        "gib": gib, "threads": threads, "virtualization": virt,
        "virtio_balloon_bound": os.path.isdir("/sys/bus/virtio/drivers/virtio_balloon")
        and any(e.startswith("virtio") for e in os.listdir("/sys/bus/virtio/drivers/virtio_balloon")),
        "thp_enabled": read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_defrag": read_text("/sys/kernel/mm/transparent_hugepage/defrag"),
        "init_on_free": "init_on_free=1" in read_text("/proc/cmdline"),
    }

    def mapping():
        m = anon(n)
        m.madvise(mmap.MADV_HUGEPAGE)
        return m, ctypes.addressof(ctypes.c_char.from_buffer(m))

    for t in (threads, 1):
        m, base = mapping()
        res[f"new_pages_gbps_{t}t"] = memset_rate(base, n, t)
        res[f"same_pages_again_gbps_{t}t"] = memset_rate(base, n, t)
        del base
        m.close()
        m, base = mapping()
        res[f"new_pages_after_unmap_gbps_{t}t"] = memset_rate(base, n, t)
        del base
        m.close()
    return res


def mem_available():
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def warm(gib=4, threads=8, leave_gib=8):
    """Whether fresh host pages are slow because the GPU machine's own host
    backs its RAM on first touch: the fresh-page rate, then every available
    page touched once (in 4 GiB mappings, each timed) and freed, then the
    fresh-page rate again. Also what a shared swap pool would pay: pages of a
    memfd that exist already, mapped again and written, and registered with
    the driver, against fresh memfd pages."""
    n = gib * GIB
    res = {"gib": gib, "threads": threads, "mem_available_gib_before": round(mem_available() / GIB, 1)}

    def anon():
        m = anon(n)
        m.madvise(mmap.MADV_HUGEPAGE)
        return m, ctypes.addressof(ctypes.c_char.from_buffer(m))

    m, base = anon()
    res["new_pages_gbps_before"] = memset_rate(base, n, threads)
    del base
    m.close()
    # memfd (shmem) pages: fresh, then the same pages through a second mapping
    fd = os.memfd_create("probe-pool")
    os.ftruncate(fd, n)
    m = mmap.mmap(fd, n)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    res["memfd_new_pages_gbps"] = memset_rate(base, n, threads)
    del base
    m.close()
    m = mmap.mmap(fd, n)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    res["memfd_existing_pages_new_mapping_gbps"] = memset_rate(base, n, threads)
    res["memfd_existing_pages_same_mapping_gbps"] = memset_rate(base, n, threads)
    del base
    m.close()
    t = time.perf_counter()
    m = mmap.mmap(fd, n, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    res["memfd_existing_pages_map_populate_gbps"] = round(n / 1e9 / (time.perf_counter() - t), 2)
    m.close()
    m = mmap.mmap(fd, n)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    ctx()
    t = time.perf_counter()
    ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(base), ctypes.c_size_t(n), ctypes.c_uint(1)), "register")
    res["memfd_existing_pages_register_gbps"] = round(n / 1e9 / (time.perf_counter() - t), 2)
    d = ctypes.c_uint64()
    ck(cu.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(n)), "alloc")
    t = time.perf_counter()
    ck(cu.cuMemcpyDtoH_v2(ctypes.c_void_p(base), d, ctypes.c_size_t(n)), "dtoh")
    res["memfd_registered_dtoh_gbps"] = round(n / 1e9 / (time.perf_counter() - t), 2)
    t = time.perf_counter()
    ck(cu.cuMemHostUnregister(ctypes.c_void_p(base)), "unregister")
    res["memfd_unregister_s"] = round(time.perf_counter() - t, 4)
    ck(cu.cuMemFree_v2(d), "free")
    del base
    m.close()
    os.close(fd)
    # touch what is available, 4 GiB at a time
    maps, rates = [], []
    while mem_available() > (leave_gib + gib) * GIB and len(maps) < 64:
        m, base = anon()
        rates.append(memset_rate(base, n, threads))
        del base
        maps.append(m)
    res["warm_touched_gib"] = len(maps) * gib
    res["warm_rates_gbps"] = rates
    for m in maps:
        m.close()
    maps = None
    time.sleep(1)
    for k in range(3):
        m, base = anon()
        res[f"new_pages_gbps_after_warm_{k}"] = memset_rate(base, n, threads)
        del base
        m.close()
    res["mem_available_gib_after"] = round(mem_available() / GIB, 1)
    return res


def register_rates(gib=8, threads=8, chunk_mib=64):
    """What bounds a swap-out into host pages the backend has not pinned yet:
    cuMemHostRegister of 64 MiB chunks by 1 and by `threads` threads at
    once, for anonymous memory with transparent huge pages (what a backend
    makes itself: fresh, and touched first) and for memfd pages that exist
    already (what a shared pool would hand over: 4 KiB shmem pages), mapped
    with MAP_POPULATE. GB/s of chunks made ready, all threads together."""
    ctx()
    cur = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(cur)), "getcurrent")
    n, chunk = gib * GIB, chunk_mib << 20
    res = {"gib": gib, "chunk_mib": chunk_mib, "threads": threads,
           "shmem_enabled": read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled")}

    def anon_fresh():
        m = anon(n)
        m.madvise(mmap.MADV_HUGEPAGE)
        return m, False

    def anon_touched():
        m, _ = anon_fresh()
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        memset_rate(base, n, threads)
        del base
        return m, False

    def memfd_made():
        fd = os.memfd_create("probe-reg")
        os.ftruncate(fd, n)
        m = mmap.mmap(fd, n)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m))
        memset_rate(base, n, threads)
        del base
        m.close()
        m = mmap.mmap(fd, n, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        os.close(fd)
        return m, False

    for name, make in (("anon_thp_touched", anon_touched), ("anon_thp_fresh_touch_then_register", anon_fresh),
                       ("memfd_existing_populated", memfd_made)):
        for t in (1, threads):
            m, _ = make()
            base = ctypes.addressof(ctypes.c_char.from_buffer(m))
            offs = list(range(0, n, chunk))
            errs = []

            def work(mine):
                ck(cu.cuCtxSetCurrent(cur), "setcurrent")
                for off in mine:
                    if name == "anon_thp_fresh_touch_then_register":
                        ctypes.memset(base + off, 0, chunk)
                    r = cu.cuMemHostRegister_v2(ctypes.c_void_p(base + off), ctypes.c_size_t(chunk), ctypes.c_uint(1))
                    if r != 0:
                        errs.append(r)
            res[f"{name}_gbps_{t}t"] = round(n / 1e9 / on_threads(work, [(offs[i::t],) for i in range(t)]), 2)
            if errs:
                res[f"{name}_errors_{t}t"] = errs[:4]
            for off in offs:
                cu.cuMemHostUnregister(ctypes.c_void_p(base + off))
            del base
            m.close()
    return res


def vmstat():
    out = {}
    for line in read_text("/proc/vmstat").splitlines():
        k, _, v = line.partition(" ")
        if k in ("thp_fault_alloc", "thp_fault_fallback", "compact_stall", "pgfault"):
            out[k] = int(v)
    return out


def prefault(gib=8, chunk_mib=64, thread_counts=(1, 8, 16)):
    """How a swap chunk's fresh pages are best brought in, as the backend
    makes chunks (64 MiB mappings, MADV_HUGEPAGE, then registered with the
    driver): a write to every 4 KiB page (what Chunk::prepare does) against
    one madvise(MADV_POPULATE_WRITE) per chunk (Linux 5.14+: the kernel
    faults the range in without a trap per page), by 1, 8 and 16 threads,
    in one process and, for the writes, in several processes at once (a
    process's page faults share its memory map's lock). GB/s of chunks made
    ready, with the kernel's huge-page and compaction counters over each."""
    import multiprocessing as mp
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    MADV_HUGEPAGE, MADV_POPULATE_WRITE = 14, 23
    chunk, n_chunks = chunk_mib << 20, (gib << 30) // (chunk_mib << 20)
    ctx()
    cur = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(cur)), "getcurrent")
    res = {"gib": gib, "chunk_mib": chunk_mib, "kernel": os.uname().release,
           "thp_enabled": read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
           "thp_defrag": read_text("/sys/kernel/mm/transparent_hugepage/defrag")}

    def make(how, register):
        a = libc.mmap(None, chunk, 3, 0x22 | 0x4000, -1, 0)  # RW, PRIVATE|ANONYMOUS|NORESERVE
        if a in (None, ctypes.c_void_p(-1).value):
            raise OSError("mmap")
        libc.madvise(a, chunk, MADV_HUGEPAGE)
        if how == "populate":
            if libc.madvise(a, chunk, MADV_POPULATE_WRITE) != 0:
                raise OSError(ctypes.get_errno(), "MADV_POPULATE_WRITE")
        else:
            buf = (ctypes.c_char * chunk).from_address(a)
            for off in range(0, chunk, 1 << 21):  # memset per 2 MiB: every page written
                ctypes.memset(ctypes.addressof(buf) + off, 0, 1 << 21)
        if register:
            ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(a), ctypes.c_size_t(chunk), ctypes.c_uint(1)), "register")
        return a

    def timed(how, threads, register):
        before = vmstat()
        made, dt, errs = make_on_threads(lambda: make(how, register), n_chunks, threads, cur)
        after = vmstat()
        for a in made:
            if register:
                cu.cuMemHostUnregister(ctypes.c_void_p(a))
            libc.munmap(a, chunk)
        r = {"gbps": round(len(made) * chunk / 1e9 / dt, 2)}
        r.update({k: after[k] - before[k] for k in before if k in after})
        if errs:
            r["errors"] = errs
        return r

    timed("touch", 1, False)  # warm-up (the first mappings of a process come slower), not reported
    for how in ("touch", "populate"):
        for register in (False, True):
            for t in thread_counts:
                res[f"{how}{'_register' if register else ''}_{t}t"] = timed(how, t, register)
    # The writes from several processes at once, no registration (no CUDA
    # in the children): does the rate scale past one process's?
    def child(k, q):
        t = time.perf_counter()
        made = [make("touch", False) for _ in range(k)]
        q.put((len(made) * chunk, time.perf_counter() - t))
        for a in made:
            libc.munmap(a, chunk)
    for procs in (2, 4, 8):
        q = mp.get_context("fork").Queue()
        per = n_chunks // procs
        ps = [mp.get_context("fork").Process(target=child, args=(per, q)) for _ in range(procs)]
        t = time.perf_counter()
        for p in ps:
            p.start()
        got = [q.get() for _ in ps]
        dt = time.perf_counter() - t
        for p in ps:
            p.join()
        res[f"touch_{procs}procs"] = {"gbps": round(sum(b for b, _ in got) / 1e9 / dt, 2)}
    return res


def register_child(nbytes, threads, chunk_mib=64):
    """One process of `register_procs`: touches `nbytes` of THP memory
    (untimed), says ready, waits for a line on stdin, registers it in 64 MiB
    chunks by `threads` threads and prints the seconds that took."""
    ctx()
    cur = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(cur)), "getcurrent")
    chunk = chunk_mib << 20
    m = anon(nbytes)
    m.madvise(mmap.MADV_HUGEPAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    memset_rate(base, nbytes, threads)
    offs = list(range(0, nbytes, chunk))
    print("ready", flush=True)
    sys.stdin.readline()

    def work(mine):
        ck(cu.cuCtxSetCurrent(cur), "setcurrent")
        for off in mine:
            ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(base + off), ctypes.c_size_t(chunk), ctypes.c_uint(1)), "register")
    print(on_threads(work, [(offs[i::threads],) for i in range(threads)]), flush=True)
    for off in offs:
        cu.cuMemHostUnregister(ctypes.c_void_p(base + off))


def register_procs(gib=16, threads=4):
    """Whether cuMemHostRegister is serialized per process or across the
    driver: the same `gib` of touched THP memory registered by 1, 2 and 4
    processes at once (each with its own context and `threads` threads),
    GB/s of all of them together from a common start."""
    res = {"gib": gib, "threads_per_process": threads, "chunk_mib": 64}
    for procs in (1, 2, 4):
        each = (gib << 30) // procs
        ps = [subprocess.Popen([sys.executable, __file__, "register-child", str(each), str(threads)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        for p in ps:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("register child did not start")
        t = time.perf_counter()
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        secs = [float(p.stdout.readline()) for p in ps]
        dt = time.perf_counter() - t
        for p in ps:
            p.wait()
        res[f"{procs}procs"] = {"gbps": round((gib << 30) / 1e9 / dt, 2),
                                "per_process_gbps": [round(each / 1e9 / s, 2) for s in secs]}
    return res


def fresh_rate(gib=8, threads=8, chunk_mib=64):
    """GB/s at which `threads` threads make swap chunks the way the backend
    does (a fresh THP mapping per 64 MiB, every page written, registered),
    all threads together; the chunks are released afterwards."""
    ctx()
    cur = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(cur)), "getcurrent")
    chunk, n = chunk_mib << 20, (gib << 30) // (chunk_mib << 20)

    def make():
        m = anon(chunk)
        m.madvise(mmap.MADV_HUGEPAGE)
        a = ctypes.addressof(ctypes.c_char.from_buffer(m))
        ctypes.memset(a, 0, chunk)
        ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(a), ctypes.c_size_t(chunk), ctypes.c_uint(1)), "register")
        return m, a
    made, dt, errs = make_on_threads(make, n, threads, cur)
    for e in errs:
        print(f"fresh_rate: {e}", file=sys.stderr)
    for m, a in made:
        cu.cuMemHostUnregister(ctypes.c_void_p(a))
    return round(len(made) * chunk / 1e9 / dt, 2)


def load_child(kind, mib=256):
    """Background load for `contention` until a line arrives on stdin, then
    prints its own GB/s. htod: what a filling VM's backend does (the guest
    driver writes 256 MiB into registered shared memory, the backend copies
    it to the device); alloc: device allocations made, set and freed."""
    ctx()
    n = mib << 20
    d = ctypes.c_uint64()
    cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    fd = os.memfd_create("load")
    os.ftruncate(fd, n)
    m = mmap.mmap(fd, n)
    h = ctypes.addressof(ctypes.c_char.from_buffer(m))
    ctypes.memset(h, 1, n)
    if kind == "htod":
        ck(cu.cuMemAlloc_v2(ctypes.byref(d), n), "alloc")
        ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(h), ctypes.c_size_t(n), ctypes.c_uint(1)), "register")
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    moved, t = 0, time.perf_counter()
    while not stop.is_set():
        if kind == "htod":
            ctypes.memset(h, moved & 0xFF, n)
            ck(cu.cuMemcpyHtoD_v2(ctypes.c_uint64(d.value), ctypes.c_void_p(h), ctypes.c_size_t(n)), "htod")
        else:
            ck(cu.cuMemAlloc_v2(ctypes.byref(d), n), "alloc")
            ck(cu.cuMemsetD8_v2(ctypes.c_uint64(d.value), ctypes.c_ubyte(7), ctypes.c_size_t(n)), "memset")
            ck(cu.cuCtxSynchronize(), "sync")
            ck(cu.cuMemFree_v2(ctypes.c_uint64(d.value)), "free")
        moved += n
    print(round(moved / 1e9 / (time.perf_counter() - t), 2), flush=True)


def contention(gib=8, threads=8):
    """Why swap-outs made while other VMs fill their memory ran at 4-7 GB/s
    on the H200 where the same chunk making alone runs at ~25 GB/s: the
    rate of `fresh_rate` alone, then while one and two other processes load
    the machine the way a filling VM does (`load_child`)."""
    res = {"gib": gib, "threads": threads, "alone_gbps": fresh_rate(gib, threads)}
    for kind, procs in (("htod", 1), ("htod", 2), ("alloc", 1)):
        ps = [subprocess.Popen([sys.executable, __file__, "load-child", kind], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        for p in ps:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("load child did not start")
        time.sleep(0.5)
        rate = fresh_rate(gib, threads)
        for p in ps:
            p.stdin.write("stop\n")
            p.stdin.flush()
        loads = [float(p.stdout.readline()) for p in ps]
        for p in ps:
            p.wait()
        res[f"with_{kind}_x{procs}"] = {"gbps": rate, "load_gbps": loads}
    res["alone_again_gbps"] = fresh_rate(gib, threads)
    return res


def register_contexts(gib=16, threads=8, chunk_mib=64):
    """Whether registration is serialized per process or per context: the
    same `gib` of touched private THP memory registered (PORTABLE) by
    `threads` threads spread over 1, 2 and 4 contexts of one process (the
    primary, then contexts made with cuCtxCreate). Also whether a copy from
    the primary context into memory another context registered runs at the
    pinned rate, and whether the primary context may unregister it (what a
    backend using several contexts for its swap chunks would rely on)."""
    ctx()
    primary = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(primary)), "getcurrent")
    dev = ctypes.c_int()
    ck(cu.cuCtxGetDevice(ctypes.byref(dev)), "getdevice")
    extra = []
    for _ in range(3):
        c = ctypes.c_void_p()
        try:
            r = cu.cuCtxCreate_v2(ctypes.byref(c), ctypes.c_uint(0), dev)
        except AttributeError:  # a driver that only has the v4 entry point (params may be NULL)
            r = cu.cuCtxCreate_v4(ctypes.byref(c), None, ctypes.c_uint(0), dev)
        ck(r, "ctxcreate")
        extra.append(c)
        ck(cu.cuCtxSetCurrent(primary), "setcurrent")
    n, chunk = gib << 30, chunk_mib << 20
    m = anon(n)
    m.madvise(mmap.MADV_HUGEPAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    memset_rate(base, n, threads)
    offs = list(range(0, n, chunk))
    res = {"gib": gib, "threads": threads, "chunk_mib": chunk_mib}
    for k in (1, 2, 4):
        ctxs = [primary] + extra[:k - 1]

        def work(i):
            ck(cu.cuCtxSetCurrent(ctxs[i % k]), "setcurrent")
            for off in offs[i::threads]:
                ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(base + off), ctypes.c_size_t(chunk), ctypes.c_uint(1)),
                   "register")
        res[f"{k}contexts_gbps"] = round(n / 1e9 / on_threads(work, [(i,) for i in range(threads)]), 2)
        if k == 2:
            # chunk 1 was registered by the second context (thread 1): copy into it from the primary
            d = ctypes.c_uint64()
            cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
            ck(cu.cuMemAlloc_v2(ctypes.byref(d), chunk), "alloc")
            best = 0
            for _ in range(5):
                t = time.perf_counter()
                ck(cu.cuMemcpyDtoH_v2(ctypes.c_void_p(base + offs[1]), ctypes.c_uint64(d.value), ctypes.c_size_t(chunk)),
                   "dtoh")
                best = max(best, chunk / 1e9 / (time.perf_counter() - t))
            res["dtoh_from_primary_into_second_context_registration_gbps"] = round(best, 2)
            cu.cuMemFree_v2(ctypes.c_uint64(d.value))
            res["unregister_from_primary_of_second_context_registration"] = cu.cuMemHostUnregister(
                ctypes.c_void_p(base + offs[1]))
        ck(cu.cuCtxSetCurrent(primary), "setcurrent")
        for off in offs:
            cu.cuMemHostUnregister(ctypes.c_void_p(base + off))
    return res


class _MemLocation(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class _AllocProp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", _MemLocation),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", _AllocFlags)]


class _AccessDesc(ctypes.Structure):
    _fields_ = [("location", _MemLocation), ("flags", ctypes.c_int)]


def host_alloc(gib=8, chunk_mib=64, thread_counts=(1, 8, 16)):
    """Host memory the driver allocates pinned itself, so nothing needs
    registering: cuMemHostAlloc of 64 MiB chunks by 1, 8 and 16 threads, and
    cuMemCreate with a host location (CUDA 12.2+; pinned host memory mapped
    at a device address, made, mapped and given device access per chunk),
    GB/s of chunks made, all threads together; then the copy rate from
    device memory into such a chunk. Whether either scales with threads
    where registration does not (25 GB/s a process)."""
    ctx()
    cur = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(cur)), "getcurrent")
    chunk, n_chunks = chunk_mib << 20, (gib << 30) // (chunk_mib << 20)
    res = {"gib": gib, "chunk_mib": chunk_mib}
    cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    prop = _AllocProp()
    prop.type = 1  # CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location = _MemLocation(2, 0)  # CU_MEM_LOCATION_TYPE_HOST
    gran = ctypes.c_size_t()
    r = cu.cuMemGetAllocationGranularity(ctypes.byref(gran), ctypes.byref(prop), ctypes.c_int(0))
    res["vmm_host_granularity"] = gran.value if r == 0 else f"CUresult {r}"
    access = _AccessDesc(_MemLocation(1, 0), 3)  # device 0, read-write

    def make_hostalloc():
        h = ctypes.c_void_p()
        ck(cu.cuMemHostAlloc(ctypes.byref(h), ctypes.c_size_t(chunk), ctypes.c_uint(1)), "hostalloc")  # PORTABLE
        return ("hostalloc", h.value)

    def make_vmm():
        handle = ctypes.c_ulonglong()
        ck(cu.cuMemCreate(ctypes.byref(handle), ctypes.c_size_t(chunk), ctypes.byref(prop), ctypes.c_ulonglong(0)),
           "memcreate(host)")
        va = ctypes.c_uint64()
        ck(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(chunk), ctypes.c_size_t(0), ctypes.c_uint64(0),
                                  ctypes.c_ulonglong(0)), "reserve")
        ck(cu.cuMemMap(ctypes.c_uint64(va.value), ctypes.c_size_t(chunk), ctypes.c_size_t(0), handle,
                       ctypes.c_ulonglong(0)), "map")
        ck(cu.cuMemSetAccess(ctypes.c_uint64(va.value), ctypes.c_size_t(chunk), ctypes.byref(access), ctypes.c_size_t(1)),
           "setaccess")
        return ("vmm", va.value, handle.value)

    def free(c):
        if c[0] == "hostalloc":
            cu.cuMemFreeHost(ctypes.c_void_p(c[1]))
        else:
            cu.cuMemUnmap(ctypes.c_uint64(c[1]), ctypes.c_size_t(chunk))
            cu.cuMemRelease(ctypes.c_ulonglong(c[2]))
            cu.cuMemAddressFree(ctypes.c_uint64(c[1]), ctypes.c_size_t(chunk))

    def timed(make, threads):
        made, dt, errs = make_on_threads(make, n_chunks, threads, cur)
        r = {"gbps": round(len(made) * chunk / 1e9 / dt, 2)}
        if errs:
            r["errors"] = errs
        return r, made

    d = ctypes.c_uint64()
    ck(cu.cuMemAlloc_v2(ctypes.byref(d), chunk), "alloc")
    for name, make in (("hostalloc", make_hostalloc), ("vmm_host", make_vmm)):
        for t in thread_counts:
            r, made = timed(make, t)
            if made and t == thread_counts[-1]:
                dst = made[0][1]
                best = 0
                for _ in range(5):
                    t0 = time.perf_counter()
                    rc = cu.cuMemcpyDtoH_v2(ctypes.c_void_p(dst), ctypes.c_uint64(d.value), ctypes.c_size_t(chunk)) \
                        if name == "hostalloc" else \
                        cu.cuMemcpyDtoD_v2(ctypes.c_uint64(dst), ctypes.c_uint64(d.value), ctypes.c_size_t(chunk))
                    if rc != 0:
                        r["copy_error"] = rc
                        break
                    best = max(best, chunk / 1e9 / (time.perf_counter() - t0))
                r["copy_from_device_gbps"] = round(best, 2)
            res[f"{name}_{t}t"] = r
            for c in made:
                free(c)
    cu.cuMemFree_v2(ctypes.c_uint64(d.value))
    return res


POSIX_FD = 1  # CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
PATTERN = 0x5A17C0DE


def _host_prop(shareable):
    prop = _AllocProp()
    prop.type = 1  # CU_MEM_ALLOCATION_TYPE_PINNED
    # HOST allocations are not IPC capable; HOST_NUMA (node 0) ones may be.
    prop.location = _MemLocation(3, 0) if shareable else _MemLocation(2, 0)
    prop.requestedHandleTypes = POSIX_FD if shareable else 0
    return prop


def _map_device(handle, size):
    """Maps a physical allocation at a fresh device address, read-write for
    device 0: its address."""
    va = ctypes.c_uint64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(size), ctypes.c_size_t(0), ctypes.c_uint64(0),
                              ctypes.c_ulonglong(0)), "reserve")
    ck(cu.cuMemMap(ctypes.c_uint64(va.value), ctypes.c_size_t(size), ctypes.c_size_t(0), ctypes.c_ulonglong(handle),
                   ctypes.c_ulonglong(0)), "map")
    access = _AccessDesc(_MemLocation(1, 0), 3)
    ck(cu.cuMemSetAccess(ctypes.c_uint64(va.value), ctypes.c_size_t(size), ctypes.byref(access), ctypes.c_size_t(1)),
       "setaccess")
    return va.value


def _unmap_device(va, size):
    ck(cu.cuMemUnmap(ctypes.c_uint64(va), ctypes.c_size_t(size)), "unmap")
    ck(cu.cuMemAddressFree(ctypes.c_uint64(va), ctypes.c_size_t(size)), "addressfree")


def _send_fds(sock, fds):
    import socket
    for i in range(0, len(fds), 200):
        socket.send_fds(sock, [b"x"], fds[i:i + 200])
    socket.send_fds(sock, [b"."], [])


def _recv_fds(sock):
    import socket
    fds = []
    while True:
        msg, got, _, _ = socket.recv_fds(sock, 1, 253)
        fds.extend(got)
        if msg == b"." or not msg:
            return fds


def share_maker(chunk_mib, n, sock_fd):
    """Child of host_share: makes `n` shareable host chunks, writes the
    pattern into each, exports them, sends the fds to fd 3 and exits
    without freeing anything itself (its handles die with it)."""
    import socket
    ctx()
    size = chunk_mib << 20
    prop = _host_prop(True)
    fds = []
    for _ in range(n):
        h = ctypes.c_ulonglong()
        ck(cu.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(size), ctypes.byref(prop), ctypes.c_ulonglong(0)), "create")
        va = _map_device(h.value, size)
        ck(cu.cuMemsetD32_v2(ctypes.c_uint64(va), ctypes.c_uint(PATTERN), ctypes.c_size_t(size // 4)), "memset")
        ck(cu.cuCtxSynchronize(), "sync")
        _unmap_device(va, size)
        fd = ctypes.c_int(-1)
        ck(cu.cuMemExportToShareableHandle(ctypes.byref(fd), ctypes.c_ulonglong(h.value), POSIX_FD,
                                           ctypes.c_ulonglong(0)), "export")
        fds.append(fd.value)
    _send_fds(socket.socket(fileno=sock_fd), fds)


def share_importer(chunk_mib, threads_list, sock_fd):
    """Child of host_share: takes fds from fd 3 and imports and maps them
    (GB/s by 1 and more threads), checks the pattern its maker wrote, and
    times a device-to-chunk copy. Prints one JSON object."""
    import socket
    fds = _recv_fds(socket.socket(fileno=sock_fd))
    ctx()
    cur = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(cur)), "getcurrent")
    size = chunk_mib << 20
    res = {"chunks": len(fds), "chunk_mib": chunk_mib}
    for threads in threads_list:
        todo = list(fds)
        lock = threading.Lock()

        def imp():
            with lock:
                fd = todo.pop()
            h = ctypes.c_ulonglong()
            ck(cu.cuMemImportFromShareableHandle(ctypes.byref(h), ctypes.c_void_p(fd), POSIX_FD), "import")
            return (_map_device(h.value, size), h.value)
        made, dt, errs = make_on_threads(imp, len(fds), threads, cur)
        r = {"gbps": round(len(made) * size / 1e9 / dt, 2)}
        if errs:
            r["errors"] = errs
        if made and threads == threads_list[-1]:
            # the maker's pattern, at both ends of a chunk
            words = (ctypes.c_uint32 * (1 << 16))()
            bad = 0
            for va, _ in made[:4]:
                for off in (0, size - (1 << 18)):
                    ck(cu.cuMemcpyDtoH_v2(words, ctypes.c_uint64(va + off), ctypes.c_size_t(1 << 18)), "dtoh")
                    bad += sum(1 for w in words if w != PATTERN)
            r["pattern_bad_words"] = bad
            cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
            d = ctypes.c_uint64()
            ck(cu.cuMemAlloc_v2(ctypes.byref(d), size), "alloc")
            best = 0
            for _ in range(5):
                t0 = time.perf_counter()
                ck(cu.cuMemcpyDtoD_v2(ctypes.c_uint64(made[0][0]), ctypes.c_uint64(d.value), ctypes.c_size_t(size)),
                   "dtod")
                best = max(best, size / 1e9 / (time.perf_counter() - t0))
            r["copy_from_device_gbps"] = round(best, 2)
            cu.cuMemFree_v2(ctypes.c_uint64(d.value))
        t0 = time.perf_counter()
        for va, h in made:
            _unmap_device(va, size)
            ck(cu.cuMemRelease(ctypes.c_ulonglong(h)), "release")
        r["unmap_release_gbps"] = round(len(made) * size / 1e9 / max(time.perf_counter() - t0, 1e-9), 2)
        res[f"import_map_{threads}t"] = r
    print(json.dumps(res), flush=True)


def host_share(gib=8, chunk_mibs=(64, 512), threads_list=(1, 8)):
    """Pinned host memory that the driver allocates (cuMemCreate at a host
    location) made in one process and used in another through POSIX fds,
    as a host-wide pool of swap chunks would be: a maker process creates
    the chunks, writes a pattern, exports them and exits; this process holds
    only the fds; an importer process imports and maps them (GB/s by 1 and
    8 threads), finds the pattern, and copies device memory into one. Also
    the making rate with a shareable handle type requested, in this
    process, by 1 and 8 threads."""
    import socket
    ctx()
    cur = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(cur)), "getcurrent")
    res = {"gib": gib}
    size = 64 << 20
    prop = _host_prop(True)
    for threads in (1, 8):
        def make():
            h = ctypes.c_ulonglong()
            ck(cu.cuMemCreate(ctypes.byref(h), ctypes.c_size_t(size), ctypes.byref(prop), ctypes.c_ulonglong(0)),
               "create")
            fd = ctypes.c_int(-1)
            ck(cu.cuMemExportToShareableHandle(ctypes.byref(fd), ctypes.c_ulonglong(h.value), POSIX_FD,
                                               ctypes.c_ulonglong(0)), "export")
            return (h.value, fd.value)
        made, dt, errs = make_on_threads(make, (gib << 30) // size, threads, cur)
        res[f"create_export_64m_{threads}t"] = {"gbps": round(len(made) * size / 1e9 / dt, 2), "errors": errs}
        t0 = time.perf_counter()
        for h, fd in made:
            cu.cuMemRelease(ctypes.c_ulonglong(h))
            os.close(fd)
        res[f"create_export_64m_{threads}t"]["free_gbps"] = round(len(made) * size / 1e9 / (time.perf_counter() - t0), 2)
    for chunk_mib in chunk_mibs:
        n = (gib << 30) // (chunk_mib << 20)
        a, b = socket.socketpair()
        t0 = time.perf_counter()
        maker = subprocess.Popen([sys.executable, __file__, "share-maker", str(chunk_mib), str(n), str(b.fileno())],
                                 pass_fds=(b.fileno(),))
        b.close()
        fds = _recv_fds(a)
        maker.wait()
        made_s = time.perf_counter() - t0
        c, d = socket.socketpair()
        imp = subprocess.Popen([sys.executable, __file__, "share-importer", str(chunk_mib),
                                ",".join(map(str, threads_list)), str(d.fileno())], stdout=subprocess.PIPE,
                               text=True, pass_fds=(d.fileno(),))
        d.close()
        _send_fds(c, fds)
        out = imp.stdout.read()
        imp.wait()
        r = {"maker_exit": maker.returncode, "maker_s_incl_start": round(made_s, 2), "fds": len(fds),
             "importer_exit": imp.returncode}
        try:
            r.update(json.loads(out))
        except ValueError:
            r["importer_output"] = out[-500:]
        for fd in fds:
            os.close(fd)
        res[f"chunks_{chunk_mib}m"] = r
    return res


if __name__ == "__main__":
    # Modes that take no argument and print one JSON object.
    plain = {"prefault": prefault, "register": register_rates, "register-procs": register_procs, "register-contexts": register_contexts, "host-alloc": host_alloc, "host-share": host_share, "contention": contention, "warm": warm, "pages": pages}
    if len(sys.argv) > 1 and sys.argv[1] in plain:
        print(json.dumps(plain[sys.argv[1]](), indent=1))
        sys.exit(0)
    if len(sys.argv) > 3 and sys.argv[1] == "register-child":
        register_child(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) > 4 and sys.argv[1] == "share-maker":
        share_maker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    if len(sys.argv) > 4 and sys.argv[1] == "share-importer":
        share_importer(int(sys.argv[2]), [int(t) for t in sys.argv[3].split(",")], int(sys.argv[4]))
        sys.exit(0)
    if len(sys.argv) > 2 and sys.argv[1] == "load-child":
        load_child(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(int(sys.argv[2]))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "pinned":
        # The native baseline of scripts/h100/memory.sh.
        print(json.dumps(pinned(int(sys.argv[2]) if len(sys.argv) > 2 else 8)))
        sys.exit(0)
    out = {"pinned": pinned(8)}
    out["checkpoint_4g"] = checkpoint(4)
    out["checkpoint_24g"] = checkpoint(24)
    print(json.dumps(out, indent=1))
