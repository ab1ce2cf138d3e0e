//! Host RAM for device memory swapped out of the GPU (`Engine::swap_out`):
//! pinned chunks that a pool of worker threads maps, faults in and registers
//! ahead of the copies, so that the copy engine never waits for the CPU.
//!
//! Getting host pages ready is far slower than the copy itself. Measured on
//! an H200 host: pinned copies run at 55 GB/s, `cuMemHostAlloc` at 2 GB/s
//! (bench/results/h100/probe-evict.json); fresh private huge pages written
//! at 27 GB/s by 8 threads, and with `cuMemHostRegister` after the writes
//! 25 GB/s by 8 threads, 29 by 16 (prefault.json): registration is
//! serialized within a process (two processes register twice as fast,
//! register-procs.json). So workers
//! prepare chunks while the calling thread queues asynchronous copies into
//! those already prepared, and the store keeps prepared chunks, up to a
//! bound, for the next swap-out: chunks that a swap-in gives back, and chunks
//! made in the background after a swap-out. Only a swap-out that finds too
//! few (the first one) runs at the rate the workers prepare them.
//!
//! Where gpuvisord keeps a swap pool (`--swap-pool-mib`), chunks come from
//! it first: pinned host memory the driver allocated once, which the
//! workers import and map at a device address at 69 GB/s or more
//! (host-share.json), so a swap-out into them runs at the copy rate; they go
//! back to the pool as soon as they come free (`swap_pool`), unmapped, or
//! still mapped for their next lease here with `keep_pool_maps`.
//!
//! A swap-out lays the allocations it moves end to end on a "tape" of
//! chunks; an allocation may span several chunks and a chunk may hold parts
//! of several allocations, so each chunk counts the host copies that use it
//! and comes free with the last of them.

use super::cuda::{check, run_pushed};
use super::swap_pool::{self, PoolLink, Pooled};
use super::{CuError, EngineResult};
use cudarc::driver::sys;
use protocol::cuda::*;
use std::ffi::c_void;
use std::fs::File;
use std::path::Path;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Bytes of one host chunk: large enough that one copy per chunk runs at the
/// copy engine's full rate, small enough that the first copy of a cold swap
/// starts after little preparation. A multiple of `HUGE_PAGE`.
pub const CHUNK_BYTES: u64 = 64 << 20;
/// Chunks are aligned to transparent huge pages, so faulting one in takes 32
/// faults instead of 16384.
const HUGE_PAGE: usize = 2 << 20;
/// Stride of the writes that fault a chunk in (the smallest page size).
const PAGE: usize = 4096;
/// Where each allocation's bytes start on the tape: page-aligned host
/// addresses keep the DMA at full rate.
const PIECE_ALIGN: u64 = 4096;
/// Host RAM that a swap-out leaves to everyone else: pages of a MAP_NORESERVE
/// mapping that cannot be had are not an error but the OOM killer, so chunks
/// are only made while the kernel reports this much more available.
const HOST_RESERVE: u64 = 1 << 30;
/// The most chunks one swap-out plans for (64 TiB of 64 MiB chunks): far
/// beyond any device, small enough that a nonsense size is refused before
/// the plan is built.
const MAX_TAPE_CHUNKS: u64 = 1 << 20;

/// Most worker threads a store starts.
pub const MAX_THREADS: u32 = 64;

/// How a chunk's fresh pages are brought in before it is registered (the
/// backend's `--swap-prefault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Prefault {
    /// A write to each 4 KiB page.
    #[default]
    Touch,
    /// One madvise(MADV_POPULATE_WRITE) a chunk (Linux 5.14 and later; a
    /// write to each page where the kernel refuses it): no trap per page,
    /// but the process's memory map stays read-locked meanwhile, which the
    /// other workers' mmap calls wait for.
    Populate,
}

/// How a store prepares host memory (the backend's `--swap-threads`,
/// `--swap-cache-mib` and `--swap-prefault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapConfig {
    /// Worker threads that prepare chunks (0: the copying thread prepares
    /// them itself, one at a time, between copies). A swap-out into fresh
    /// pages runs at the rate these threads fault in and pin them, up to the
    /// copy rate.
    pub threads: u32,
    /// MiB of prepared chunks kept for the next swap-out once they come free.
    pub cache_mib: u64,
    pub prefault: Prefault,
    /// Whether swap pool chunks stay mapped once given back, so that when
    /// the pool leases one here again it needs no import.
    pub keep_pool_maps: bool,
}

impl Default for SwapConfig {
    fn default() -> Self {
        SwapConfig { threads: 8, cache_mib: 4096, prefault: Prefault::Touch, keep_pool_maps: false }
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.trim_start_matches("MemAvailable:").trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// How many more chunks of `chunk` bytes host RAM can take now, leaving
/// `HOST_RESERVE`; unlimited where the kernel does not say.
fn host_chunks_available(chunk: u64) -> usize {
    host_chunks_beyond(chunk, HOST_RESERVE)
}

/// How many more chunks of `chunk` bytes host RAM can take now, leaving
/// `reserve`; unlimited where the kernel does not say.
fn host_chunks_beyond(chunk: u64, reserve: u64) -> usize {
    let Some(avail) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_mem_available) else {
        return usize::MAX;
    };
    let n = avail.saturating_sub(reserve) / chunk.max(1);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// One contiguous part of an allocation's bytes on the tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Index of the chunk on the tape.
    chunk: usize,
    /// Offset in that chunk.
    host_off: u64,
    /// Offset from the start of the allocation.
    dev_off: u64,
    len: u64,
}

/// The spans of tape bytes `start..start + len` in chunks of `chunk` bytes.
/// The caller makes sure `start + len` does not overflow and `chunk > 0`.
fn split(start: u64, len: u64, chunk: u64) -> impl Iterator<Item = Span> {
    let mut dev_off = 0u64;
    std::iter::from_fn(move || {
        if dev_off >= len {
            return None;
        }
        let at = start + dev_off;
        let host_off = at % chunk;
        let n = (chunk - host_off).min(len - dev_off);
        let span = Span { chunk: usize::try_from(at / chunk).ok()?, host_off, dev_off, len: n };
        dev_off += n;
        Some(span)
    })
}

/// Where a swap-out puts each allocation's bytes.
#[derive(Debug, PartialEq, Eq)]
struct TapePlan {
    /// Per chunk, in tape order, the spans it holds with the index of the
    /// allocation each belongs to.
    per_chunk: Vec<Vec<(usize, Span)>>,
    /// Per allocation, the chunk that holds its last byte (`None` for an
    /// empty one, which needs no chunk).
    last_chunk: Vec<Option<usize>>,
}

/// Lays allocations of `lens` bytes end to end, each from an `align`
/// boundary, over chunks of `chunk` bytes. `None` if the tape would take
/// more than `MAX_TAPE_CHUNKS` or `chunk` is 0.
fn plan_tape(lens: &[u64], chunk: u64, align: u64) -> Option<TapePlan> {
    if chunk == 0 || align == 0 {
        return None;
    }
    let mut tape = 0u64;
    for &len in lens {
        tape = tape.checked_next_multiple_of(align)?.checked_add(len)?;
    }
    if tape.div_ceil(chunk) > MAX_TAPE_CHUNKS {
        return None;
    }
    let mut per_chunk: Vec<Vec<(usize, Span)>> = Vec::new();
    let mut last_chunk = Vec::with_capacity(lens.len());
    let mut at = 0u64;
    for (i, &len) in lens.iter().enumerate() {
        let start = at.checked_next_multiple_of(align)?;
        let end = start.checked_add(len)?;
        for span in split(start, len, chunk) {
            if per_chunk.len() <= span.chunk {
                per_chunk.resize_with(span.chunk + 1, Vec::new);
            }
            per_chunk[span.chunk].push((i, span));
        }
        last_chunk.push(if len == 0 { None } else { Some(usize::try_from((end - 1) / chunk).ok()?) });
        at = end;
    }
    Some(TapePlan { per_chunk, last_chunk })
}

impl TapePlan {
    /// How many allocations, from the first, have every byte in the first
    /// `filled` chunks.
    fn complete(&self, filled: usize) -> usize {
        self.last_chunk.iter().take_while(|last| last.is_none_or(|c| c < filled)).count()
    }
}

/// Items kept for reuse, at most `cap` of them.
#[derive(Debug)]
struct Bounded<T> {
    items: Vec<T>,
    cap: usize,
}

impl<T> Bounded<T> {
    fn new(cap: usize) -> Self {
        Bounded { items: Vec::new(), cap }
    }

    /// Keeps `item` if there is room; gives it back otherwise.
    fn offer(&mut self, item: T) -> Option<T> {
        if self.items.len() < self.cap {
            self.items.push(item);
            None
        } else {
            Some(item)
        }
    }

    fn take(&mut self) -> Option<T> {
        self.items.pop()
    }

    /// A new cap; returns the items beyond it, to be released.
    fn set_cap(&mut self, cap: usize) -> Vec<T> {
        self.cap = cap;
        self.items.split_off(cap.min(self.items.len()))
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
    }
}

/// Items in use, each with the number of users it has; an item leaves when
/// its last user lets go.
#[derive(Debug)]
struct Slots<T> {
    entries: Vec<Option<(T, u32)>>,
    free: Vec<usize>,
}

impl<T> Slots<T> {
    fn new() -> Self {
        Slots { entries: Vec::new(), free: Vec::new() }
    }

    /// Adds `item` with no users yet.
    fn insert(&mut self, item: T) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.entries[id] = Some((item, 0));
                id
            }
            None => {
                self.entries.push(Some((item, 0)));
                self.entries.len() - 1
            }
        }
    }

    fn get(&self, id: usize) -> Option<&T> {
        self.entries.get(id)?.as_ref().map(|(item, _)| item)
    }

    fn add_user(&mut self, id: usize) -> bool {
        match self.entries.get_mut(id) {
            Some(Some((_, users))) => {
                *users += 1;
                true
            }
            _ => false,
        }
    }

    fn take(&mut self, id: usize) -> Option<T> {
        let (item, _) = self.entries.get_mut(id)?.take()?;
        self.free.push(id);
        Some(item)
    }

    /// One user fewer; the item itself once it has none.
    fn drop_user(&mut self, id: usize) -> Option<T> {
        let Some(Some((_, users))) = self.entries.get_mut(id) else {
            return None;
        };
        *users = users.saturating_sub(1);
        if *users == 0 {
            self.take(id)
        } else {
            None
        }
    }

    /// The item, if nobody uses it.
    fn take_unused(&mut self, id: usize) -> Option<T> {
        match self.entries.get(id) {
            Some(Some((_, 0))) => self.take(id),
            _ => None,
        }
    }

    fn in_use(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    fn drain(&mut self) -> Vec<T> {
        self.free.clear();
        std::mem::take(&mut self.entries).into_iter().flatten().map(|(item, _)| item).collect()
    }
}

/// Pinned host memory for swapped-out bytes: either this process's own
/// (mapped, faulted in and registered with the driver, portable to every
/// context; `addr` a host address) or a chunk leased from gpuvisord's swap
/// pool (`pooled`; `addr` the device address it is mapped at). Never
/// unmapped by dropping: `release` must run with a context current, so a
/// dropped chunk leaks rather than unregistering from the wrong thread.
#[derive(Debug)]
struct Chunk {
    addr: usize,
    len: usize,
    pooled: Option<Pooled>,
}

/// Brings every page of the fresh private mapping `addr..addr + len` in,
/// written (a read would only map the shared zero page), as `how` says;
/// `Populate` writes each page where the kernel does not know
/// MADV_POPULATE_WRITE. Errors are the kernel's (no memory for it). The
/// caller owns the mapping, writable, page-aligned.
fn prefault(addr: usize, len: usize, how: Prefault) -> std::io::Result<()> {
    if how == Prefault::Populate {
        // SAFETY: advice on the caller's own mapping; it only faults pages in.
        if unsafe { libc::madvise(addr as *mut c_void, len, libc::MADV_POPULATE_WRITE) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    for off in (0..len).step_by(PAGE) {
        // SAFETY: `addr + off` lies in the caller's writable mapping, which
        // nothing else knows of yet.
        unsafe { ((addr + off) as *mut u8).write_volatile(0) };
    }
    Ok(())
}

impl Chunk {
    /// Makes a chunk of `len` bytes (a multiple of `HUGE_PAGE`), its pages
    /// brought in as `how` says. A context must be current on the calling
    /// thread.
    fn prepare(len: usize, how: Prefault, stats: &PrepStats) -> EngineResult<Chunk> {
        let oom = CuError(CUDA_ERROR_OUT_OF_MEMORY);
        let mapping = Instant::now();
        let span = len.checked_add(HUGE_PAGE).ok_or(oom)?;
        // SAFETY: a new private anonymous mapping at an address the kernel
        // chooses; no existing memory is touched. NORESERVE: the pages are
        // faulted in below anyway, and the caller checked that RAM is there.
        let raw = unsafe {
            libc::mmap(
                null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(oom);
        }
        let raw = raw as usize;
        // Over-mapped by one huge page, trimmed to a huge-page-aligned range.
        let addr = raw.next_multiple_of(HUGE_PAGE);
        let head = addr - raw;
        let tail = span - head - len;
        for (at, n) in [(raw, head), (addr + len, tail)] {
            // SAFETY: page-aligned ranges (mmap returns pages; HUGE_PAGE and
            // `len` are page multiples) inside the mapping made above, outside
            // the chunk kept.
            if n > 0 && unsafe { libc::munmap(at as *mut c_void, n) } != 0 {
                debug!(bytes = n, "trimming a swap chunk's mapping failed; its address space stays reserved");
            }
        }
        // SAFETY: advice on the mapping made above; failure (THP disabled)
        // only makes faulting in slower.
        if unsafe { libc::madvise(addr as *mut c_void, len, libc::MADV_HUGEPAGE) } != 0 {
            debug!("MADV_HUGEPAGE refused for a swap chunk");
        }
        PrepStats::add(&stats.map_ns, mapping);
        // Fault every page in now, off the copying thread; registering
        // touched memory is several times faster than letting the driver
        // fault it in.
        let faulting = Instant::now();
        let faulted = prefault(addr, len, how);
        PrepStats::add(&stats.prefault_ns, faulting);
        if let Err(e) = faulted {
            debug!(error = %e, "faulting a swap chunk in failed");
            // SAFETY: the chunk's own mapping, never registered, unknown to
            // anyone else.
            unsafe { libc::munmap(addr as *mut c_void, len) };
            return Err(oom);
        }
        // SAFETY: the range is a live mapping owned by this chunk until
        // `release` unregisters it before unmapping; PORTABLE pins it for
        // every context, not only the one current here.
        let registering = Instant::now();
        let registered =
            check(unsafe { sys::cuMemHostRegister_v2(addr as *mut c_void, len, sys::CU_MEMHOSTREGISTER_PORTABLE) });
        PrepStats::add(&stats.register_ns, registering);
        if let Err(e) = registered {
            // SAFETY: the chunk's own mapping, never registered, unknown to
            // anyone else.
            unsafe { libc::munmap(addr as *mut c_void, len) };
            return Err(e);
        }
        stats.made.fetch_add(1, Ordering::Relaxed);
        Ok(Chunk { addr, len, pooled: None })
    }

    /// Pool chunk `id` of connection `generation` (`file`, `len` bytes),
    /// mapped for device `ordinal`: the mapping `link` kept of it, else a
    /// new import. A context must be current on the calling thread.
    fn import(
        id: u32,
        generation: u64,
        file: File,
        len: usize,
        ordinal: i32,
        link: &PoolLink,
        stats: &PrepStats,
    ) -> EngineResult<Chunk> {
        let importing = Instant::now();
        let r = match link.take_kept(id, generation) {
            Some(mapping) => {
                stats.reused.fetch_add(1, Ordering::Relaxed);
                Ok(mapping)
            }
            None => swap_pool::import(file, len, ordinal).inspect(|_| {
                stats.imported.fetch_add(1, Ordering::Relaxed);
            }),
        };
        PrepStats::add(&stats.import_ns, importing);
        let (va, handle) = r?;
        Ok(Chunk { addr: va as usize, len, pooled: Some(Pooled { id, generation, handle }) })
    }

    /// Queues the copy of `len` bytes of device memory at `src` to offset
    /// `off` of the chunk. The caller keeps the chunk until the stream synced.
    fn copy_from_device(&self, off: u64, src: u64, len: u64, stream: sys::CUstream) -> EngineResult<()> {
        let at = self.addr + off as usize;
        // SAFETY: `off + len <= self.len` (the tape's spans stay in their
        // chunk); the chunk is registered host memory, or pool memory mapped
        // at device address `addr`; `src..src + len` is the caller's mapped
        // allocation.
        check(unsafe {
            match self.pooled {
                None => sys::cuMemcpyDtoHAsync_v2(at as *mut c_void, src, len as usize, stream),
                Some(_) => sys::cuMemcpyDtoDAsync_v2(at as u64, src, len as usize, stream),
            }
        })
    }

    /// Queues the copy of `len` bytes from offset `off` of the chunk to
    /// device memory at `dst`.
    fn copy_to_device(&self, off: u64, dst: u64, len: u64, stream: sys::CUstream) -> EngineResult<()> {
        let at = self.addr + off as usize;
        // SAFETY: as in `copy_from_device`, the other way.
        check(unsafe {
            match self.pooled {
                None => sys::cuMemcpyHtoDAsync_v2(dst, at as *const c_void, len as usize, stream),
                Some(_) => sys::cuMemcpyDtoDAsync_v2(dst, at as u64, len as usize, stream),
            }
        })
    }

    /// Unregisters and unmaps; a pool chunk goes back to the pool (through
    /// `link`, if it is still up), mapped still where the link keeps its
    /// mappings. A context must be current on the calling thread, and no
    /// copy may still use the chunk.
    fn release(self, link: Option<&PoolLink>) {
        if let Some(p) = self.pooled {
            match link {
                Some(link) => link.release(p.id, p.generation, (self.addr as u64, p.handle)),
                None => swap_pool::unmap(self.addr as u64, self.len, p.handle),
            }
            return;
        }
        // SAFETY: registered in `prepare`; no copy uses it (the store only
        // releases chunks that no host copy holds, after its copies synced).
        if let Err(e) = check(unsafe { sys::cuMemHostUnregister(self.addr as *mut c_void) }) {
            // Unmapping pinned pages is safe: the driver keeps them until the
            // process ends, so this only leaks.
            warn!(error = %e, bytes = self.len, "unregistering a swap chunk");
        }
        // SAFETY: the chunk's own mapping, no longer used by anyone.
        if unsafe { libc::munmap(self.addr as *mut c_void, self.len) } != 0 {
            warn!(bytes = self.len, "unmapping a swap chunk failed; it leaks");
        }
    }
}

enum Job {
    /// Make a chunk of this many bytes, its pages brought in so, and send it
    /// back.
    Prepare(usize, Prefault),
    /// Import and map this pool chunk (its id and connection generation),
    /// and send it back.
    Import(u32, u64, File),
    Release(Chunk),
}

type Prepared = EngineResult<Chunk>;

/// Time spent making and releasing chunks, summed over the threads that
/// did it, in nanoseconds: what a swap-out that waited for chunks waited on.
#[derive(Debug, Default)]
struct PrepStats {
    made: AtomicU64,
    map_ns: AtomicU64,
    prefault_ns: AtomicU64,
    register_ns: AtomicU64,
    release_ns: AtomicU64,
    imported: AtomicU64,
    /// Pool chunks leased again whose mapping was kept (no import).
    reused: AtomicU64,
    import_ns: AtomicU64,
}

impl PrepStats {
    fn add(counter: &AtomicU64, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 8] {
        [
            &self.made,
            &self.map_ns,
            &self.prefault_ns,
            &self.register_ns,
            &self.release_ns,
            &self.imported,
            &self.import_ns,
            &self.reused,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// Threads that prepare and release chunks, each with the engine's primary
/// context current.
struct Pool {
    /// `None` once shutting down: the workers end when the queue closes.
    jobs: Option<Sender<Job>>,
    ready: Receiver<Prepared>,
    /// Set while a swap-out that stopped early waits for the chunks it asked
    /// for: the workers answer the remaining requests without work.
    cancel: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Up to `threads` workers; `None` if none could be started.
    fn start(
        ctx: u64,
        threads: usize,
        stats: &Arc<PrepStats>,
        link: Option<&Arc<PoolLink>>,
        ordinal: i32,
    ) -> Option<Pool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (done, ready) = mpsc::channel::<Prepared>();
        let queue = Arc::new(Mutex::new(queue));
        let cancel = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (queue, done, cancel, stats) = (queue.clone(), done.clone(), cancel.clone(), stats.clone());
            let link = link.cloned();
            match std::thread::Builder::new()
                .name(format!("gv-swap-{i}"))
                .spawn(move || worker(ctx, &queue, &done, &cancel, &stats, link.as_deref(), ordinal))
            {
                Ok(h) => workers.push(h),
                Err(e) => warn!(error = %e, "starting a swap worker thread"),
            }
        }
        if workers.is_empty() {
            return None;
        }
        Some(Pool { jobs: Some(jobs), ready, cancel, workers })
    }

    /// Queues a job; gives it back if no worker is left to take it.
    fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|mpsc::SendError(j)| j),
            None => Err(job),
        }
    }
}

fn worker(
    ctx: u64,
    queue: &Mutex<Receiver<Job>>,
    done: &Sender<Prepared>,
    cancel: &AtomicBool,
    stats: &PrepStats,
    link: Option<&PoolLink>,
    ordinal: i32,
) {
    // SAFETY: the engine's primary context, retained until after the store
    // has joined this thread. Registration and unregistration need a current
    // context; this thread does nothing else.
    if let Err(e) = check(unsafe { sys::cuCtxSetCurrent(ctx as sys::CUcontext) }) {
        warn!(error = %e, "swap worker could not make the primary context current");
    }
    loop {
        // The lock is held only while waiting for a job, never during one.
        let job = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else {
            break; // the store closed the queue
        };
        match job {
            Job::Prepare(len, how) => {
                let result = if cancel.load(Ordering::Acquire) {
                    Err(CuError(CUDA_ERROR_OUT_OF_MEMORY))
                } else {
                    // A panic must still answer: the copying thread counts on
                    // one answer per request.
                    std::panic::catch_unwind(move || Chunk::prepare(len, how, stats))
                        .unwrap_or(Err(CuError(CUDA_ERROR_UNKNOWN)))
                };
                if let Err(mpsc::SendError(Ok(chunk))) = done.send(result) {
                    chunk.release(link);
                }
            }
            Job::Import(id, generation, file) => {
                let result = match link {
                    // Only a store with a link leases chunks.
                    None => Err(CuError(CUDA_ERROR_UNKNOWN)),
                    Some(link) if cancel.load(Ordering::Acquire) => {
                        link.give_back(id, generation);
                        Err(CuError(CUDA_ERROR_OUT_OF_MEMORY))
                    }
                    Some(link) => {
                        let len = link.chunk_bytes() as usize;
                        let r = std::panic::catch_unwind(move || {
                            Chunk::import(id, generation, file, len, ordinal, link, stats)
                        })
                        .unwrap_or(Err(CuError(CUDA_ERROR_UNKNOWN)));
                        if let Err(e) = &r {
                            warn!(id, error = %e, "importing a swap pool chunk; giving it back");
                            link.give_back(id, generation);
                        }
                        r
                    }
                };
                if let Err(mpsc::SendError(Ok(chunk))) = done.send(result) {
                    chunk.release(link);
                }
            }
            Job::Release(chunk) => {
                let releasing = Instant::now();
                chunk.release(link);
                PrepStats::add(&stats.release_ns, releasing);
            }
        }
    }
}

/// The device of the current context.
fn device_ordinal() -> EngineResult<i32> {
    let mut dev: sys::CUdevice = 0;
    // SAFETY: valid out-pointer; the caller made a context current.
    check(unsafe { sys::cuCtxGetDevice(&mut dev) })?;
    Ok(dev)
}

fn host_numa_node(dev: i32) -> i32 {
    let mut node = -1;
    // SAFETY: valid out-pointer and device.
    let r = check(unsafe {
        sys::cuDeviceGetAttribute(&mut node, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, dev)
    });
    if r.is_ok() && node >= 0 {
        node
    } else {
        0
    }
}

/// A thread that unmaps kept mappings of a pool that is gone, and makes
/// chunks for gpuvisord's swap pool while it is short (as its answers say)
/// and the store has been idle a moment: making
/// pinned memory that can be shared runs at 3-4 GB/s
/// (bench/results/h100/host-share.json), far below the copy rate, so it is
/// done ahead, never while a swap waits.
struct Grower {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Chunks the grower makes before it donates them and asks again.
const GROW_BATCH: usize = 8;
/// How long the store must have been idle before the grower works.
const GROW_IDLE: Duration = Duration::from_millis(300);
/// How often the grower asks a pool that needed nothing whether it is short.
const ASK_EVERY: Duration = Duration::from_secs(2);
/// How long the grower waits after the driver refused to make a chunk.
const GROW_BACKOFF: Duration = Duration::from_secs(30);
/// Host RAM the grower leaves free. Pool chunks stay pinned once made, and
/// the host still needs memory for chunks pinned by backends that found
/// the pool empty and for everything else (on the H200 host, a pool grown
/// to its size beside the fill phase's own chunks ran the host out of
/// memory and the OOM killer took a backend).
const GROW_RESERVE: u64 = 8 << 30;
/// How long a swap-out waits for pool chunks given back elsewhere before it
/// moves what it has, asking every `POOL_WAIT_STEP` for up to
/// `POOL_WAIT_BATCH` at a time.
const POOL_WAIT: Duration = Duration::from_millis(500);
const POOL_WAIT_STEP: Duration = Duration::from_millis(5);
const POOL_WAIT_BATCH: usize = 8;

impl Grower {
    fn start(ctx: u64, link: Arc<PoolLink>, last_busy: Arc<Mutex<Instant>>) -> Option<Grower> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("gv-swap-grow".into())
            .spawn(move || grow(ctx, &link, &last_busy, &s))
            .map_err(|e| warn!(error = %e, "starting the swap pool grower"))
            .ok()?;
        Some(Grower { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            warn!("the swap pool grower panicked");
        }
    }
}

fn grow(ctx: u64, link: &PoolLink, last_busy: &Mutex<Instant>, stop: &AtomicBool) {
    // SAFETY: the engine's primary context, retained until the store joined
    // this thread.
    if let Err(e) = check(unsafe { sys::cuCtxSetCurrent(ctx as sys::CUcontext) }) {
        warn!(error = %e, "the swap pool grower has no context; not growing the pool");
        return;
    }
    let ordinal = device_ordinal();
    let numa = ordinal.as_ref().map_or(0, |&d| host_numa_node(d));
    let len = link.chunk_bytes() as usize;
    let mut wanted = 0usize;
    // When the grower may next ask the pool how short it is: every
    // ASK_EVERY while it is full, GROW_BACKOFF after making a chunk failed.
    let mut ask_after = Instant::now();
    // When the grower may next map chunks ahead (a link that keeps maps):
    // at once while there are chunks it never had, ASK_EVERY once there
    // were none, GROW_BACKOFF after an import failed.
    let mut map_after = Instant::now();
    let mut made_total = 0u64;
    let mut mapped_total = 0u64;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(Duration::from_millis(100));
        // A pool gone (gpuvisord restarted or killed) is held by the
        // mappings kept of it until they are unmapped, so they go at once.
        link.unmap_kept(false);
        if last_busy.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < GROW_IDLE {
            continue;
        }
        if wanted == 0 {
            if Instant::now() >= ask_after {
                ask_after = Instant::now() + ASK_EVERY;
                wanted = link.lease(0).1;
                if wanted > 0 {
                    continue;
                }
            }
            // The pool is full: map the chunks this backend never had, so
            // that its swap-outs find every one mapped.
            let Ok(dev) = ordinal else {
                continue;
            };
            if Instant::now() < map_after {
                continue;
            }
            match swap_pool::map_ahead(link, GROW_BATCH, dev) {
                Ok(0) => map_after = Instant::now() + ASK_EVERY,
                Ok(n) => {
                    mapped_total += n as u64;
                    debug!(chunks = n, total_mib = (mapped_total * len as u64) >> 20, "swap pool chunks mapped ahead");
                }
                Err(e) => {
                    warn!(error = %e, "mapping swap pool chunks ahead; trying again later");
                    map_after = Instant::now() + GROW_BACKOFF;
                }
            }
            continue;
        }
        let n = wanted.min(GROW_BATCH).min(host_chunks_beyond(len as u64, GROW_RESERVE));
        if n == 0 {
            wanted = 0;
            continue;
        }
        let started = Instant::now();
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            match swap_pool::make_shareable(len, numa) {
                Ok(f) => files.push(f),
                Err(e) => {
                    warn!(error = %e, "making a chunk for the swap pool; trying again later");
                    wanted = 0;
                    ask_after = Instant::now() + GROW_BACKOFF;
                    break;
                }
            }
        }
        link.donate(&files);
        made_total += files.len() as u64;
        wanted = wanted.saturating_sub(files.len());
        debug!(
            chunks = files.len(),
            gbps = (files.len() * len) as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e9,
            total_mib = (made_total * len as u64) >> 20,
            "chunks made for the swap pool"
        );
    }
}

/// An allocation's bytes in host RAM: spans of chunks, in device order.
#[derive(Debug)]
pub struct HostCopy {
    /// (slot of the chunk, offset in it, length).
    pieces: Vec<(usize, u64, u64)>,
    len: u64,
}

impl HostCopy {
    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy that holds no chunk, for tests of the bookkeeping around it.
    #[cfg(test)]
    pub(super) fn detached(len: u64) -> HostCopy {
        HostCopy { pieces: Vec::new(), len }
    }
}

/// An allocation to move to host RAM.
#[derive(Debug, Clone, Copy)]
pub struct Victim {
    pub dptr: u64,
    /// Bytes to copy.
    pub len: u64,
    /// Bytes to zero once copied: the whole physical allocation, which goes
    /// back to the driver.
    pub scrub_len: u64,
}

/// What `copy_out` did.
#[derive(Debug)]
pub struct CopyOut {
    /// Host copies of the first `copies.len()` victims, in order; their
    /// device memory is zeroed.
    pub copies: Vec<HostCopy>,
    /// Why the rest were not copied (host RAM exhausted, a copy failed).
    pub error: Option<CuError>,
    /// Where the time went, for the log.
    pub timing: CopyOutTiming,
}

/// Where a swap-out's time went: waiting for chunks the workers were still
/// preparing, for the copies after the last was queued, and for zeroing.
#[derive(Debug, Default, Clone, Copy)]
pub struct CopyOutTiming {
    /// Chunks taken ready (cached or prepared ahead).
    pub chunks_ready: usize,
    /// Chunks waited for while the workers made them.
    pub chunks_waited: usize,
    pub chunk_wait: Duration,
    pub copy_wait: Duration,
    pub zero: Duration,
    /// Chunks the workers made while the swap-out ran (some for the next
    /// one), and their time in mapping, faulting pages in, registering and,
    /// for chunks given back, releasing: summed over the workers.
    pub made: u64,
    pub map: Duration,
    pub prefault: Duration,
    pub register: Duration,
    pub release: Duration,
    /// Pool chunks the workers imported and mapped meanwhile, and their
    /// time (with the lookups of kept mappings).
    pub imported: u64,
    pub import: Duration,
    /// Pool chunks leased again whose mapping was kept: no import.
    pub reused: u64,
}

/// Pinned host memory for one engine's swapped-out allocations, and the
/// stream (of the primary context) its copies run on. Every method that
/// issues copies needs that context current on the calling thread.
pub struct HostStore {
    ctx: u64,
    stream: u64,
    chunk_bytes: u64,
    /// Chunks holding host copies.
    slots: Slots<Chunk>,
    /// Prepared chunks holding nothing, for the next swap-out. Its cap is
    /// `cache_cap`, raised while a likely swap-out is prepared for
    /// (`prepare_ahead`).
    cache: Bounded<Chunk>,
    /// Chunks the cache keeps when no swap-out is prepared for.
    cache_cap: usize,
    /// Chunks still prepared for a likely swap-out (`prepare_ahead`); each
    /// swap-out spends those it fills, so one prepared for comes in steps.
    ahead: usize,
    /// `None`: chunks are prepared and released on the calling thread.
    pool: Option<Pool>,
    /// Chunks asked of the workers and not yet received: for the swap-out
    /// under way, or ahead of the next one (`refill`).
    outstanding: usize,
    prefault: Prefault,
    stats: Arc<PrepStats>,
    /// gpuvisord's swap pool, where it has one: chunks are leased from it
    /// before any is pinned here.
    link: Option<Arc<PoolLink>>,
    /// Makes chunks for the pool while it is short and the store idle.
    grower: Option<Grower>,
    /// When the store last copied or was asked for chunks, for the grower.
    last_busy: Arc<Mutex<Instant>>,
}

impl HostStore {
    /// A store whose chunks are registered from `ctx`, the engine's primary
    /// context, which must outlive the store, and leased first from the swap
    /// pool at `pool_socket` where gpuvisord offers one.
    pub fn new(ctx: u64, config: SwapConfig, pool_socket: Option<&Path>) -> EngineResult<HostStore> {
        let threads = config.threads.min(MAX_THREADS) as usize;
        let mut stream: sys::CUstream = null_mut();
        run_pushed(ctx, || {
            // SAFETY: `stream` is a valid out-pointer; NON_BLOCKING keeps
            // swap copies from waiting on the primary context's legacy stream.
            check(unsafe {
                sys::cuStreamCreateWithPriority(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32, 0)
            })
        })??;
        let stats = Arc::new(PrepStats::default());
        // Pool chunks are imported by the workers; without workers none.
        let link =
            pool_socket.filter(|_| threads > 0).and_then(|p| PoolLink::connect(p, CHUNK_BYTES, config.keep_pool_maps));
        // With a pool, chunks that come free go back to it at once rather
        // than wait here for this backend's next swap-out: the pool is sized
        // for the evicted memory of all its backends (seen on the H200: three
        // backends each keeping 4 GiB of pool chunks left the others short,
        // and the memory they pinned instead ran the host out of RAM).
        let cache_mib = if link.is_some() { 0 } else { config.cache_mib };
        let cache_chunks = cache_mib.saturating_mul(1 << 20) / CHUNK_BYTES;
        let ordinal = run_pushed(ctx, device_ordinal)??;
        let pool = Pool::start(ctx, threads, &stats, link.as_ref(), ordinal);
        let last_busy = Arc::new(Mutex::new(Instant::now()));
        let grower = link.as_ref().and_then(|l| Grower::start(ctx, l.clone(), last_busy.clone()));
        info!(
            threads = pool.as_ref().map_or(0, |p| p.workers.len()),
            cache_mib,
            chunk_mib = CHUNK_BYTES >> 20,
            prefault = ?config.prefault,
            swap_pool = link.is_some(),
            "host swap store ready"
        );
        Ok(HostStore {
            ctx,
            stream: stream as u64,
            chunk_bytes: CHUNK_BYTES,
            slots: Slots::new(),
            cache: Bounded::new(usize::try_from(cache_chunks).unwrap_or(usize::MAX)),
            cache_cap: usize::try_from(cache_chunks).unwrap_or(usize::MAX),
            ahead: 0,
            pool,
            outstanding: 0,
            prefault: config.prefault,
            stats,
            link,
            grower,
            last_busy,
        })
    }

    fn mark_busy(&self) {
        *self.last_busy.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.stream as sys::CUstream
    }

    fn chunk_len(&self) -> usize {
        // CHUNK_BYTES fits every usize this builds for (64-bit only: cudarc).
        self.chunk_bytes as usize
    }

    /// Bytes of host RAM the store holds pinned: chunks in use and cached.
    pub fn pinned_bytes(&self) -> u64 {
        (self.slots.in_use() + self.cache.len()) as u64 * self.chunk_bytes
    }

    /// Asks the workers for up to `n` more chunks, to be taken by
    /// `next_chunk` or collected into the cache: pool chunks to import as
    /// far as the pool has them, then chunks pinned here as far as host RAM
    /// allows. How many were asked for; none without workers.
    fn request(&mut self, n: usize) -> usize {
        let len = self.chunk_len();
        let Some(pool) = &self.pool else {
            return 0;
        };
        self.mark_busy();
        let mut asked = 0;
        // How many chunks this process may pin itself; bounded below by
        // host RAM.
        let mut own_cap = usize::MAX;
        if let Some(link) = self.link.as_ref().filter(|_| n > 0) {
            let (leased, grow, generation) = link.lease(n);
            if generation != 0 {
                // The pool, sized by the admin, holds evicted memory: chunks
                // pinned here beside it once it is full would take host RAM
                // beyond that size (on the H200 host, backends short of pool
                // chunks pinned their own at once and the OOM killer took
                // one). While it grows, as many as it would still take.
                own_cap = grow;
            }
            for (id, file) in leased {
                if let Err(job) = pool.send(Job::Import(id, generation, file)) {
                    if let Job::Import(id, generation, _) = job {
                        link.give_back(id, generation);
                    }
                    continue;
                }
                self.outstanding += 1;
                asked += 1;
            }
        }
        // Beside a pool, whose chunks stay pinned, this process pins its own
        // only while host RAM keeps the grower's reserve.
        let reserve = if self.link.is_some() { GROW_RESERVE } else { HOST_RESERVE };
        let own = (n - asked).min(own_cap).min(host_chunks_beyond(self.chunk_bytes, reserve));
        for _ in 0..own {
            if pool.send(Job::Prepare(len, self.prefault)).is_err() {
                break; // no worker left: fewer chunks, reported as OOM
            }
            self.outstanding += 1;
            asked += 1;
        }
        asked
    }

    /// The next chunk for the tape: a cached one, else one asked of the
    /// workers (waiting for it), else, without workers, one made here while
    /// `inline_budget` lasts.
    fn next_chunk(&mut self, inline_budget: &mut usize) -> EngineResult<Chunk> {
        if let Some(c) = self.cache.take() {
            return Ok(c);
        }
        if self.pool.is_some() && self.outstanding == 0 && !self.wait_for_pool() {
            return Err(CuError(CUDA_ERROR_OUT_OF_MEMORY));
        }
        match &self.pool {
            Some(pool) => {
                self.outstanding -= 1;
                pool.ready.recv().unwrap_or(Err(CuError(CUDA_ERROR_UNKNOWN)))
            }
            None => {
                if *inline_budget == 0 {
                    return Err(CuError(CUDA_ERROR_OUT_OF_MEMORY));
                }
                *inline_budget -= 1;
                Chunk::prepare(self.chunk_len(), self.prefault, &self.stats)
            }
        }
    }

    /// With a pool that came short, asks it again for a moment: chunks
    /// other backends give back (gpuvisord withdrew what they held for a
    /// likely eviction that went to this one) reach it within milliseconds.
    /// Whether a chunk is on its way.
    fn wait_for_pool(&mut self) -> bool {
        if self.link.is_none() {
            return false;
        }
        let until = Instant::now() + POOL_WAIT;
        loop {
            if self.request(POOL_WAIT_BATCH) > 0 {
                return true;
            }
            if Instant::now() >= until {
                warn!(
                    waited_ms = POOL_WAIT.as_millis() as u64,
                    "the swap pool has no chunk left for this swap-out; moving what fits"
                );
                return false;
            }
            std::thread::sleep(POOL_WAIT_STEP);
        }
    }

    /// Takes in the chunks the workers have finished, without waiting.
    fn collect_ready(&mut self) {
        let mut got = Vec::new();
        if let Some(pool) = &self.pool {
            while self.outstanding > 0 {
                match pool.ready.try_recv() {
                    Ok(r) => {
                        self.outstanding -= 1;
                        got.extend(r.ok());
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.outstanding = 0;
                        break;
                    }
                }
            }
        }
        for c in got {
            self.recycle(c);
        }
    }

    /// Has the workers prepare chunks in the background until the store
    /// holds as many as the cache may keep (in use, cached or on their way),
    /// host RAM permitting: the next swap-out then only copies, also when it
    /// comes before any swap-in gave chunks back.
    fn refill(&mut self) {
        if self.pool.is_none() {
            return;
        }
        let held = self.cache.len() + self.slots.in_use() + self.outstanding;
        let n = self.cache.cap.saturating_sub(held);
        if n > 0 {
            let asked = self.request(n);
            debug!(chunks = asked, "preparing swap chunks ahead");
        }
    }

    /// Makes chunks ready for a swap-out of about `bytes` that is likely soon
    /// (gpuvisord's `PrepareEviction`), in the background and as host RAM
    /// allows, so that it only copies: pinning as it goes runs at half the
    /// copy rate at best (the driver registers one range at a time per
    /// process). They are kept until that swap-out; `bytes` 0 lets them go.
    pub fn prepare_ahead(&mut self, bytes: u64) {
        self.collect_ready();
        let want = usize::try_from(bytes.div_ceil(self.chunk_bytes)).unwrap_or(usize::MAX);
        self.set_ahead(want);
        if want <= self.cache_cap {
            return;
        }
        let have = self.cache.len() + self.outstanding;
        let n = want.saturating_sub(have);
        if n > 0 {
            let n = self.request(n);
            info!(
                mib = (n as u64 * self.chunk_bytes) >> 20,
                ready_mib = (self.cache.len() as u64 * self.chunk_bytes) >> 20,
                "pinning host memory ahead of a likely swap-out"
            );
        }
    }

    /// Keeps `ahead` chunks prepared (at least the configured cache); those
    /// prepared beyond it are released.
    fn set_ahead(&mut self, ahead: usize) {
        self.ahead = ahead;
        let extra = self.cache.set_cap(self.cache_cap.max(ahead));
        if !extra.is_empty() {
            debug!(chunks = extra.len(), "releasing host memory prepared for a swap-out");
        }
        for c in extra {
            self.recycle(c);
        }
    }

    /// Waits for every chunk asked for and keeps or releases it (a swap-out
    /// that stopped early, shutdown): no request is left in flight.
    fn settle_requests(&mut self) {
        let n = std::mem::take(&mut self.outstanding);
        let Some(pool) = &self.pool else {
            return;
        };
        if n == 0 {
            return;
        }
        pool.cancel.store(true, Ordering::Release);
        let mut spare = Vec::new();
        for _ in 0..n {
            match pool.ready.recv() {
                Ok(Ok(c)) => spare.push(c),
                Ok(Err(_)) => {}
                Err(_) => break, // every worker is gone
            }
        }
        pool.cancel.store(false, Ordering::Release);
        for c in spare {
            self.recycle(c);
        }
    }

    /// A chunk that holds nothing any more: kept for the next swap-out if
    /// the cache has room, released off this thread otherwise.
    fn recycle(&mut self, chunk: Chunk) {
        // With a pool, the host RAM of this process's own chunks is better
        // spent on pool chunks, which any backend can use.
        let keep = chunk.pooled.is_some() || self.link.is_none();
        let Some(chunk) = (if keep { self.cache.offer(chunk) } else { Some(chunk) }) else {
            return;
        };
        let chunk = match &self.pool {
            Some(pool) => match pool.send(Job::Release(chunk)) {
                Ok(()) => return,
                Err(Job::Release(c)) => c,
                Err(Job::Prepare(..) | Job::Import(..)) => return,
            },
            None => chunk,
        };
        let link = self.link.as_deref();
        if run_pushed(self.ctx, || chunk.release(link)).is_err() {
            warn!("no context to release a swap chunk in; it leaks");
        }
    }

    /// Copies each victim's `len` bytes to host RAM, then zeroes its
    /// `scrub_len` bytes of device memory, first victim first. Stops at the
    /// first victim that cannot be copied whole (host RAM exhausted, a
    /// failed copy); the victims before it are copied and zeroed, those
    /// from it on are untouched. The store's context must be current.
    pub fn copy_out(&mut self, victims: &[Victim]) -> CopyOut {
        let lens: Vec<u64> = victims.iter().map(|v| v.len).collect();
        let Some(plan) = plan_tape(&lens, self.chunk_bytes, PIECE_ALIGN) else {
            return CopyOut {
                copies: Vec::new(),
                error: Some(CuError(CUDA_ERROR_INVALID_VALUE)),
                timing: CopyOutTiming::default(),
            };
        };
        self.collect_ready();
        let chunks = plan.per_chunk.len();
        let want = chunks.saturating_sub(self.cache.len() + self.outstanding);
        let mut inline_budget = 0;
        let asked = if self.pool.is_some() {
            self.request(want)
        } else {
            inline_budget = want.min(host_chunks_available(self.chunk_bytes));
            inline_budget
        };
        if asked < want {
            let (wanted_mib, available_mib) =
                ((want as u64 * self.chunk_bytes) >> 20, (asked as u64 * self.chunk_bytes) >> 20);
            if self.link.is_some() {
                // Usual with a pool: chunks other swaps give back come as
                // this one goes (on the H200 most whole-VM switches started
                // short; half waited under 2 ms in all for the rest).
                debug!(wanted_mib, available_mib, "the swap pool is short for now; leasing the rest as it comes");
            } else {
                warn!(wanted_mib, available_mib, "host RAM too short for the whole swap-out; moving what fits");
            }
        }

        // Queue copies chunk by chunk as chunks become ready: the copy engine
        // works through the queue while the workers prepare the next ones.
        let stream = self.cu_stream();
        let mut slot_of: Vec<usize> = Vec::with_capacity(chunks);
        let mut filled = 0;
        let mut error = None;
        let mut timing = CopyOutTiming::default();
        let stats_before = self.stats.snapshot();
        'tape: for (k, spans) in plan.per_chunk.iter().enumerate() {
            let ready = self.cache.len() > 0;
            let asked = Instant::now();
            let chunk = match self.next_chunk(&mut inline_budget) {
                Ok(c) => c,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            if ready {
                timing.chunks_ready += 1;
            } else {
                timing.chunks_waited += 1;
                timing.chunk_wait += asked.elapsed();
            }
            let slot = self.slots.insert(chunk);
            slot_of.push(slot);
            for &(i, span) in spans {
                let v = &victims[i];
                // The chunk stays in `slots` until the copies synchronized;
                // `host_off + len <= chunk_bytes` by `split`, and the source
                // lies in the victim's mapped allocation
                // (`dev_off + len <= v.len`).
                let r = self
                    .slots
                    .get(slot)
                    .ok_or(CuError(CUDA_ERROR_ILLEGAL_STATE))
                    .and_then(|c| c.copy_from_device(span.host_off, v.dptr + span.dev_off, span.len, stream));
                if let Err(e) = r {
                    error = Some(e);
                    break 'tape;
                }
            }
            filled = k + 1;
        }
        if error.is_some() {
            self.settle_requests();
        }

        let synced_at = Instant::now();
        // SAFETY: the store's stream; its context is current.
        let mut done = match check(unsafe { sys::cuStreamSynchronize(stream) }) {
            Ok(()) => plan.complete(filled),
            Err(e) => {
                error = Some(e);
                0
            }
        };
        done = done.min(victims.len());
        timing.copy_wait = synced_at.elapsed();
        let stats_after = self.stats.snapshot();
        let [made, map, prefault, register, release, imported, import, reused] =
            std::array::from_fn(|i| stats_after[i].saturating_sub(stats_before[i]));
        timing.made = made;
        timing.imported = imported;
        timing.reused = reused;
        timing.import = Duration::from_nanos(import);
        (timing.map, timing.prefault, timing.register, timing.release) = (
            Duration::from_nanos(map),
            Duration::from_nanos(prefault),
            Duration::from_nanos(register),
            Duration::from_nanos(release),
        );

        // Zero only what is safely in host RAM, after the copies finished.
        let zeroed_at = Instant::now();
        if done > 0 {
            let mut scrubbed = Ok(());
            for v in &victims[..done] {
                scrubbed = self.zero(v.dptr, v.scrub_len);
                if scrubbed.is_err() {
                    break;
                }
            }
            // SAFETY: as above.
            let synced = check(unsafe { sys::cuStreamSynchronize(stream) });
            if let Err(e) = scrubbed.and(synced) {
                warn!(error = %e, "zeroing swapped-out device memory failed; it goes back unscrubbed");
            }
        }
        timing.zero = zeroed_at.elapsed();

        let mut per_victim: Vec<Vec<(usize, u64, u64)>> = vec![Vec::new(); done];
        for (k, spans) in plan.per_chunk.iter().enumerate().take(slot_of.len()) {
            for &(i, span) in spans {
                if i < done {
                    per_victim[i].push((slot_of[k], span.host_off, span.len));
                }
            }
        }
        let mut copies = Vec::with_capacity(done);
        for (pieces, v) in per_victim.into_iter().zip(victims) {
            for &(slot, _, _) in &pieces {
                self.slots.add_user(slot);
            }
            copies.push(HostCopy { pieces, len: v.len });
        }
        // Chunks that hold no complete victim's bytes come free again.
        let slot_of_len = slot_of.len();
        for slot in slot_of {
            if let Some(c) = self.slots.take_unused(slot) {
                self.recycle(c);
            }
        }
        // The chunks this swap-out filled were what was prepared for it; the
        // rest stays for the steps that may follow.
        self.set_ahead(self.ahead.saturating_sub(slot_of_len));
        if error.is_none() {
            self.refill();
        }
        CopyOut { copies, error, timing }
    }

    /// Queues the copy of `copy` back to device memory at `dptr`. Nothing is
    /// released: the caller calls `sync`, then `release` on success. The
    /// store's context must be current.
    pub fn copy_in(&self, dptr: u64, copy: &HostCopy) -> EngineResult<()> {
        self.mark_busy();
        let mut dev_off = 0u64;
        for &(slot, host_off, len) in &copy.pieces {
            let chunk = self.slots.get(slot).ok_or(CuError(CUDA_ERROR_ILLEGAL_STATE))?;
            // The chunk stays while `copy` holds it (until `release`); the
            // destination is the caller's mapped allocation of at least
            // `copy.len()` bytes.
            chunk.copy_to_device(host_off, dptr + dev_off, len, self.cu_stream())?;
            dev_off += len;
        }
        Ok(())
    }

    /// Queues zeroing `len` bytes of device memory at `dptr`. The store's
    /// context must be current.
    pub fn zero(&self, dptr: u64, len: u64) -> EngineResult<()> {
        let n = usize::try_from(len).map_err(|_| CuError(CUDA_ERROR_INVALID_VALUE))?;
        // SAFETY: the caller's mapped device range; the store's stream.
        check(unsafe { sys::cuMemsetD8Async(dptr, 0, n, self.cu_stream()) })
    }

    /// Waits for every copy queued. The store's context must be current.
    pub fn sync(&self) -> EngineResult<()> {
        // SAFETY: the store's stream.
        check(unsafe { sys::cuStreamSynchronize(self.cu_stream()) })
    }

    /// Drops a host copy (swapped back in, or freed); chunks it was the last
    /// user of come free. No copy from it may be pending.
    pub fn release(&mut self, copy: HostCopy) {
        self.collect_ready();
        for (slot, _, _) in copy.pieces {
            if let Some(c) = self.slots.drop_user(slot) {
                self.recycle(c);
            }
        }
    }
}

impl Drop for HostStore {
    fn drop(&mut self) {
        if let Some(g) = self.grower.take() {
            g.stop();
        }
        self.settle_requests();
        let mut chunks = self.slots.drain();
        chunks.extend(self.cache.drain());
        let pinned = chunks.len() as u64 * self.chunk_bytes;
        let mut inline = Vec::new();
        if let Some(mut pool) = self.pool.take() {
            for c in chunks {
                if let Err(Job::Release(c)) = pool.send(Job::Release(c)) {
                    inline.push(c);
                }
            }
            // Closing the queue ends the workers once it is empty.
            pool.jobs = None;
            for h in pool.workers.drain(..) {
                if h.join().is_err() {
                    warn!("a swap worker panicked");
                }
            }
            while let Ok(Ok(c)) = pool.ready.try_recv() {
                inline.push(c);
            }
        } else {
            inline = chunks;
        }
        let stream = self.cu_stream();
        let link = self.link.as_deref();
        let r = run_pushed(self.ctx, || {
            for c in inline {
                c.release(link);
            }
            if let Some(link) = link {
                link.unmap_kept(true);
            }
            // SAFETY: the store's stream, idle (every copy was synchronized).
            check(unsafe { sys::cuStreamDestroy_v2(stream) })
        });
        if let Err(e) = r.and_then(|r| r) {
            warn!(error = %e, "shutting the host swap store down");
        }
        debug!(released_mib = pinned >> 20, "host swap store closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = 64;

    fn spans(start: u64, len: u64) -> Vec<(usize, u64, u64, u64)> {
        split(start, len, C).map(|s| (s.chunk, s.host_off, s.dev_off, s.len)).collect()
    }

    #[test]
    fn an_allocation_is_split_at_chunk_boundaries_into_consecutive_spans() {
        assert_eq!(spans(0, 10), vec![(0, 0, 0, 10)]);
        assert_eq!(spans(0, 64), vec![(0, 0, 0, 64)]);
        assert_eq!(spans(60, 4), vec![(0, 60, 0, 4)]);
        assert_eq!(spans(60, 5), vec![(0, 60, 0, 4), (1, 0, 4, 1)]);
        assert_eq!(spans(10, 200), vec![(0, 10, 0, 54), (1, 0, 54, 64), (2, 0, 118, 64), (3, 0, 182, 18)]);
        assert!(spans(5, 0).is_empty());
    }

    #[test]
    fn spans_of_any_size_cover_the_allocation_exactly_and_stay_in_their_chunk() {
        for start in [0u64, 1, 63, 64, 100, 4095] {
            for len in [1u64, 2, 63, 64, 65, 127, 128, 129, 1000, 4096] {
                let mut next = 0;
                for s in split(start, len, C) {
                    assert_eq!(s.dev_off, next, "start {start} len {len}");
                    assert!(s.len > 0 && s.host_off + s.len <= C);
                    assert_eq!(s.chunk as u64 * C + s.host_off, start + s.dev_off);
                    next += s.len;
                }
                assert_eq!(next, len, "start {start} len {len}");
            }
        }
    }

    #[test]
    fn allocations_are_packed_end_to_end_from_aligned_starts() {
        // 10 bytes at 0, 70 at 16 (crossing into chunk 1), 0 bytes, 5 at 96.
        let plan = plan_tape(&[10, 70, 0, 5], C, 16).unwrap();
        assert_eq!(plan.per_chunk.len(), 2);
        let at = |k: usize| -> Vec<(usize, u64, u64, u64)> {
            plan.per_chunk[k].iter().map(|(i, s)| (*i, s.host_off, s.dev_off, s.len)).collect()
        };
        assert_eq!(at(0), vec![(0, 0, 0, 10), (1, 16, 0, 48)]);
        assert_eq!(at(1), vec![(1, 0, 48, 22), (3, 32, 0, 5)]);
        assert_eq!(plan.last_chunk, vec![Some(0), Some(1), None, Some(1)]);
        assert_eq!(plan.complete(0), 0);
        assert_eq!(plan.complete(1), 1, "the second spills into chunk 1");
        assert_eq!(plan.complete(2), 4);
    }

    #[test]
    fn the_real_chunk_size_holds_many_small_allocations_and_splits_large_ones() {
        let mib = 1u64 << 20;
        let plan = plan_tape(&[3 * mib, 1, 200 * mib], CHUNK_BYTES, PIECE_ALIGN).unwrap();
        // 3 MiB + 4 KiB + 200 MiB of tape over 64 MiB chunks.
        assert_eq!(plan.per_chunk.len(), 4);
        let total: u64 = plan.per_chunk.iter().flatten().filter(|(i, _)| *i == 2).map(|(_, s)| s.len).sum();
        assert_eq!(total, 200 * mib);
        assert_eq!(plan.per_chunk[0][1].1.host_off, 3 * mib);
        assert_eq!(plan.per_chunk[0][2].1.host_off, 3 * mib + PIECE_ALIGN);
    }

    #[test]
    fn a_tape_that_overflows_is_refused() {
        assert!(plan_tape(&[u64::MAX, 1], C, 16).is_none());
        assert!(plan_tape(&[u64::MAX - 4, 1], u64::MAX, 16).is_none());
        assert!(plan_tape(&[MAX_TAPE_CHUNKS * C + 1], C, 16).is_none());
        assert_eq!(plan_tape(&[MAX_TAPE_CHUNKS * C], C, 16).unwrap().per_chunk.len() as u64, MAX_TAPE_CHUNKS);
        assert!(plan_tape(&[1], 0, 16).is_none());
        assert_eq!(plan_tape(&[], C, 16).unwrap().per_chunk.len(), 0);
    }

    #[test]
    fn the_cache_keeps_at_most_its_cap_and_hands_back_the_rest() {
        let mut cache = Bounded::new(2);
        assert_eq!(cache.offer(1), None);
        assert_eq!(cache.offer(2), None);
        assert_eq!(cache.offer(3), Some(3), "over the cap: to be released");
        assert_eq!(cache.len(), 2);
        assert!(cache.take().is_some());
        assert_eq!(cache.offer(4), None);
        assert_eq!(cache.drain().len(), 2);
        assert_eq!(cache.len(), 0);
        let mut none = Bounded::new(0);
        assert_eq!(none.offer(7), Some(7));
        // A lower cap hands back what is beyond it; a higher one takes more.
        let mut cache = Bounded::new(4);
        (1..=4).for_each(|i| assert_eq!(cache.offer(i), None));
        assert_eq!(cache.set_cap(1), vec![2, 3, 4]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.set_cap(3), Vec::<i32>::new());
        assert_eq!(cache.offer(5), None);
        assert_eq!(cache.offer(6), None);
        assert_eq!(cache.offer(7), Some(7));
    }

    /// Prefaults a fresh 8 MiB mapping `how` and checks that every page is
    /// then resident and zero.
    fn prefault_fresh_mapping(how: Prefault) {
        let len = 8 << 20;
        // SAFETY: a new private anonymous mapping, unmapped below.
        let addr = unsafe {
            libc::mmap(
                null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let resident = || {
            let mut vec = vec![0u8; len / PAGE];
            // SAFETY: `vec` has a byte for each page of the mapping.
            assert_eq!(unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) }, 0);
            vec.iter().filter(|&&v| v & 1 == 1).count()
        };
        assert_eq!(resident(), 0, "a fresh mapping has no pages yet");
        prefault(addr as usize, len, how).unwrap();
        assert_eq!(resident(), len / PAGE, "every page is in ({how:?})");
        // SAFETY: the mapping made above, `len` bytes, all present now.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        assert!(bytes.iter().all(|&b| b == 0));
        // SAFETY: the mapping made above, no longer used.
        assert_eq!(unsafe { libc::munmap(addr, len) }, 0);
    }

    #[test]
    fn prefaulting_brings_every_page_of_a_fresh_mapping_in_zeroed() {
        prefault_fresh_mapping(Prefault::Touch);
        prefault_fresh_mapping(Prefault::Populate);
    }

    #[test]
    fn a_chunk_comes_free_with_its_last_user() {
        let mut slots = Slots::new();
        let a = slots.insert("a");
        let b = slots.insert("b");
        assert!(slots.add_user(a) && slots.add_user(a));
        assert_eq!(slots.take_unused(a), None, "in use");
        assert_eq!(slots.take_unused(b), Some("b"), "never used");
        assert_eq!(slots.drop_user(a), None);
        assert_eq!(slots.get(a), Some(&"a"));
        assert_eq!(slots.drop_user(a), Some("a"));
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.drop_user(a), None, "already gone");
        assert!(!slots.add_user(a));
        let c = slots.insert("c");
        assert!(c == a || c == b, "ids are reused");
        assert_eq!(slots.drain(), vec!["c"]);
    }

    #[test]
    fn available_host_memory_is_read_from_meminfo() {
        let text = "MemTotal:       131072000 kB\nMemFree:         1000 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    /// cudarc panics on a missing symbol, so every entry point this module
    /// and the swap pool's calls must be in the list the cuda engine checks
    /// before its first call.
    #[test]
    fn every_driver_call_is_checked_for_presence() {
        let mut called = super::super::cuda::tests::driver_calls(include_str!("host_swap.rs"));
        assert!(called.len() >= 8, "parsed {} calls", called.len());
        let pool = super::super::cuda::tests::driver_calls(include_str!("swap_pool.rs"));
        assert!(pool.len() >= 8, "parsed {} calls in swap_pool.rs", pool.len());
        called.extend(pool);
        for name in called {
            assert!(
                super::super::cuda::REQUIRED_SYMBOLS.contains(&name),
                "{name} is called but not in REQUIRED_SYMBOLS"
            );
        }
    }
}
