//! The CPU simulator: device memory in host RAM, built-in kernels matched by
//! name (the `gv_*` entry points of the guest tests' PTX), and a per-stream
//! timeline so that stream order, events, queries and elapsed times behave as
//! on a GPU. Data effects happen at submission in program order; the timeline
//! decides when work counts as finished. Kernels can fault as on a GPU: a
//! kernel that touches memory outside every allocation, or one of the fault
//! built-ins, makes every later call of every context fail with the fault's
//! error once the timeline reaches it; a kernel can also never end.

use super::*;
use crate::guest_mem::{GuestSpan, HostDst, HostSrc};
use protocol::module_image;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Device addresses start here, far from zero so that stray small integers
/// are never valid pointers.
const VA_BASE: u64 = 0x7f00_0000_0000;
const VA_ALIGN: u64 = 4096;
const CU_EVENT_DISABLE_TIMING: u32 = 0x2;
/// Granularity of the simulated virtual-memory API: the cuda engine's on
/// current GPUs, so that guests see the same sizes on both.
pub const VMM_GRANULARITY: u64 = 2 << 20;
const CU_STREAM_NON_BLOCKING: u32 = 0x1;
/// How long a kernel that never ends keeps its stream busy: for ever, as far
/// as anyone waiting for it can tell (ten years).
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Empty,
    FillU32,
    VectorAddF32,
    SaxpyF32,
    SpinUs,
    MatmulF32,
    Burn,
    /// Faults as a store to an unmapped address does: CUDA_ERROR_ILLEGAL_ADDRESS.
    FaultIllegalAddress,
    /// Faults as PTX `trap` does: CUDA_ERROR_LAUNCH_FAILED.
    FaultTrap,
    /// Never ends (only a process exit stops it on a GPU).
    SpinForever,
}

impl Builtin {
    /// The built-in of this name, with the parameter sizes it expects.
    fn by_name(name: &str) -> Option<(Builtin, &'static [u32])> {
        Some(match name {
            "gv_empty" => (Builtin::Empty, &[]),
            "gv_fill_u32" => (Builtin::FillU32, &[8, 4, 8]),
            "gv_vector_add_f32" => (Builtin::VectorAddF32, &[8, 8, 8, 8]),
            "gv_saxpy_f32" => (Builtin::SaxpyF32, &[4, 8, 8, 8]),
            "gv_spin_us" => (Builtin::SpinUs, &[8]),
            "gv_matmul_f32" => (Builtin::MatmulF32, &[8, 8, 8, 4]),
            "gv_burn" => (Builtin::Burn, &[8, 8]),
            // guest-tests/fault_kernels.ptx
            "gv_fault_illegal_address" => (Builtin::FaultIllegalAddress, &[8]),
            "gv_fault_trap" => (Builtin::FaultTrap, &[8]),
            "gv_spin_forever" => (Builtin::SpinForever, &[8]),
            _ => return None,
        })
    }
}

struct SimAlloc {
    data: Vec<u8>,
    ctx: u64,
}

/// Physical memory of the virtual-memory API mapped at an address.
struct SimMapping {
    len: u64,
    phys: u64,
}

struct SimCtx {
    /// When the legacy NULL stream's work is done.
    null_ready: Instant,
}

struct SimStream {
    ctx: u64,
    ready: Instant,
    blocking: bool,
}

struct SimEvent {
    ctx: u64,
    time: Option<Instant>,
    timing: bool,
}

struct SimModule {
    ctx: u64,
    /// `None` for an image whose entries are all compressed (as NVIDIA's
    /// libraries ship them), which the sim cannot read.
    kernels: Option<Vec<module_image::KernelInfo>>,
    /// Globals handed out from a compressed image: (name, address).
    globals: Vec<(String, u64)>,
}

/// What a global of a compressed image gets: its real size is inside the
/// compressed image, which the sim cannot read.
const OPAQUE_GLOBAL_BYTES: u64 = 64 << 10;
/// Globals one compressed image may have handed out.
const OPAQUE_GLOBALS_MAX: usize = 1024;

struct SimFunc {
    module: u64,
    builtin: Option<Builtin>,
    params: Vec<ParamLayout>,
    /// CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, as last set.
    non_portable_clusters: bool,
}

/// Freed buffers kept for reuse, at most this many.
const RECYCLED_MAX: usize = 64;

// The occupancy model: a Hopper-like multiprocessor (the device attributes
// in `SimEngine::new`), every built-in using 32 registers per thread and no
// static shared memory. Blocks per multiprocessor are the fewest that warps
// (64), blocks (32), registers (64 K, allocated per warp in units of 256)
// and shared memory (228 KiB, 1 KiB reserved per block, allocated in units
// of 128 bytes) allow, as CUDA's occupancy calculator (cuda_occupancy.h)
// computes them.
const MODEL_MAX_THREADS_PER_BLOCK: u64 = 1024;
const MODEL_REGS_PER_THREAD: u64 = 32;
const MODEL_WARP: u64 = 32;
const MODEL_MAX_WARPS_PER_SM: u64 = 64;
const MODEL_MAX_BLOCKS_PER_SM: u64 = 32;
const MODEL_REGS_PER_SM: u64 = 65536;
const MODEL_REG_ALLOC_UNIT: u64 = 256;
const MODEL_SMEM_PER_SM: u64 = 233472;
const MODEL_SMEM_PER_BLOCK_OPTIN: u64 = 232448;
const MODEL_SMEM_RESERVED_PER_BLOCK: u64 = 1024;
const MODEL_SMEM_ALLOC_UNIT: u64 = 128;
/// Dynamic shared memory a block may use without opting in (48 KiB).
const MODEL_DEFAULT_DYNAMIC_SMEM: u64 = 49152;
/// Largest portable cluster; the model allows no larger ones.
const MODEL_MAX_CLUSTER: u64 = 8;
/// The largest cluster for a function that allows non-portable sizes (the
/// H100's 16; cuBLAS asks about 9 and more).
const MODEL_MAX_CLUSTER_NON_PORTABLE: u64 = 16;
/// CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED.
const FUNC_ATTR_NON_PORTABLE_CLUSTER_SIZE_ALLOWED: u32 = 14;
/// Multiprocessors of the simulated device (attribute 16).
const MODEL_SMS: u64 = 8;

/// Blocks of `block_size` threads, each using `dyn_smem` bytes of dynamic
/// shared memory, that fit on one multiprocessor of the model.
fn model_active_blocks(block_size: u64, dyn_smem: u64) -> u64 {
    if block_size == 0 || block_size > MODEL_MAX_THREADS_PER_BLOCK || dyn_smem > MODEL_SMEM_PER_BLOCK_OPTIN {
        return 0;
    }
    let warps = block_size.div_ceil(MODEL_WARP);
    let by_warps = MODEL_MAX_WARPS_PER_SM / warps;
    let regs_per_warp = (MODEL_REGS_PER_THREAD * MODEL_WARP).next_multiple_of(MODEL_REG_ALLOC_UNIT);
    let by_regs = MODEL_REGS_PER_SM / (regs_per_warp * warps);
    let smem = (dyn_smem + MODEL_SMEM_RESERVED_PER_BLOCK).next_multiple_of(MODEL_SMEM_ALLOC_UNIT);
    let by_smem = MODEL_SMEM_PER_SM / smem;
    by_warps.min(by_regs).min(by_smem).min(MODEL_MAX_BLOCKS_PER_SM)
}

/// Dynamic shared memory each of `num_blocks` blocks of `block_size`
/// threads may use when they share a multiprocessor, or `None` when that
/// many do not fit at all.
fn model_available_smem(block_size: u64, num_blocks: u64) -> Option<u64> {
    if num_blocks == 0 || model_active_blocks(block_size, 0) < num_blocks {
        return None;
    }
    let per_block = (MODEL_SMEM_PER_SM / num_blocks) / MODEL_SMEM_ALLOC_UNIT * MODEL_SMEM_ALLOC_UNIT;
    Some(per_block.saturating_sub(MODEL_SMEM_RESERVED_PER_BLOCK).min(MODEL_SMEM_PER_BLOCK_OPTIN))
}

/// What the driver checks of a cluster or cooperative launch, on the
/// model: the cluster within the function's limit (8 blocks, 16 once it
/// allows non-portable sizes) and dividing the grid; a cooperative grid no
/// larger than the blocks that can be resident at once. Clusters change
/// nothing else: the built-ins compute the same with or without them.
fn check_launch_ex(f: &SimFunc, launch: &Launch<'_>, threads: u64) -> EngineResult<()> {
    let max_cluster = if f.non_portable_clusters { MODEL_MAX_CLUSTER_NON_PORTABLE } else { MODEL_MAX_CLUSTER };
    let cluster = launch.cluster.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
    if cluster > max_cluster || launch.grid.iter().zip(launch.cluster).any(|(&g, c)| c == 0 || g % c != 0) {
        return err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
    }
    if launch.cooperative {
        let blocks = launch.grid.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
        if blocks > model_active_blocks(threads, launch.shared_mem as u64).saturating_mul(MODEL_SMS) {
            return err(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        }
    }
    Ok(())
}

/// A graph node as the simulator keeps it: a replay step.
#[derive(Debug, Clone)]
enum SimStep {
    Kernel {
        func: EngineFunc,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        params: Vec<u8>,
        cluster: [u32; 3],
        cooperative: bool,
    },
    CopyDtoD {
        dst: u64,
        src: u64,
        len: u64,
    },
    CopyHtoD {
        dst: u64,
        host: usize,
    },
    CopyDtoH {
        src: u64,
        host: usize,
    },
    Memset {
        dst: u64,
        pitch: u64,
        value: u32,
        elem_size: u32,
        width: u64,
        height: u64,
    },
    Empty,
    EventRecord(EngineEvent),
    EventWait(EngineEvent),
}

impl SimStep {
    fn of(node: &GraphNode<'_>) -> SimStep {
        match *node {
            GraphNode::Kernel { func, grid, block, shared_mem, params, cluster, cooperative } => {
                SimStep::Kernel { func, grid, block, shared_mem, params: params.to_vec(), cluster, cooperative }
            }
            GraphNode::CopyDtoD { dst, src, len } => SimStep::CopyDtoD { dst, src, len },
            GraphNode::CopyHtoD { dst, host } => SimStep::CopyHtoD { dst, host },
            GraphNode::CopyDtoH { src, host } => SimStep::CopyDtoH { src, host },
            GraphNode::Memset { dst, pitch, value, elem_size, width, height } => {
                SimStep::Memset { dst, pitch, value, elem_size, width, height }
            }
            GraphNode::Empty => SimStep::Empty,
            GraphNode::EventRecord(e) => SimStep::EventRecord(e),
            GraphNode::EventWait(e) => SimStep::EventWait(e),
        }
    }

    fn same_kind(&self, other: &SimStep) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// An instantiated graph: its nodes replayed in a topological order on the
/// launch stream (the simulator runs one stream's work in order anyway).
struct SimGraph {
    ctx: u64,
    steps: Vec<SimStep>,
    order: Vec<u32>,
}

pub struct SimEngine {
    info: DeviceInfo,
    allocs: BTreeMap<u64, SimAlloc>,
    /// Memory freed and not yet handed out again, with its old contents: as
    /// a GPU's allocator does, the next allocation that fits gets it back
    /// dirty. Scrubbing is the VM layer's job (`vm.rs`), and this keeps it
    /// honest.
    recycled: Vec<Vec<u8>>,
    /// Resident bytes.
    allocated: u64,
    /// Allocations swapped out to host RAM: their data, kept off the
    /// simulated device (any access to them is an illegal address, as a
    /// missing restore would be on a GPU).
    evicted: BTreeMap<u64, SimAlloc>,
    evicted_bytes: u64,
    next_va: u64,
    next_id: u64,
    current: Option<u64>,
    ctxs: HashMap<u64, SimCtx>,
    streams: HashMap<u64, SimStream>,
    events: HashMap<u64, SimEvent>,
    modules: HashMap<u64, SimModule>,
    funcs: HashMap<u64, SimFunc>,
    graphs: HashMap<u64, SimGraph>,
    /// Virtual-memory API: reserved ranges (base → size), physical memory
    /// (pinned: counted in `allocated`, never swapped out) and mappings.
    reservations: BTreeMap<u64, u64>,
    phys: HashMap<u64, Vec<u8>>,
    mappings: BTreeMap<u64, SimMapping>,
    /// The simulated GPU shared with other backends, if any: kernels book
    /// their time on it.
    timeline: Option<super::sim_timeline::SharedTimeline>,
    /// The first kernel fault: its error and when the faulting kernel runs.
    /// From then on every call of every context fails with it (`alive`), as
    /// NVIDIA's driver fails a process's calls after a fault.
    fault: Option<(CuResult, Instant)>,
    /// Bytes per second a swap out / in moves (0: at once), so that a run on
    /// the sim can take the time a real GPU's host link and host memory
    /// would (evictions into fresh host pages are far slower than restores).
    swap_rates: SwapRates,
    /// Bytes of host memory made ready for a likely swap-out
    /// (`prepare_swap_out`): a swap-out moves that much at the restore rate,
    /// as a real one into memory pinned beforehand runs at the copy rate.
    swap_prepared: u64,
}

/// How fast the simulated GPU's memory moves to host RAM and back.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwapRates {
    pub out_bytes_per_s: u64,
    pub in_bytes_per_s: u64,
}

impl SwapRates {
    /// Waits the time moving `bytes` at `rate` bytes per second takes.
    fn pace(rate: u64, bytes: u64) {
        Self::wait(Self::secs(rate, bytes));
    }

    fn wait(secs: f64) {
        if secs > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
    }

    fn secs(rate: u64, bytes: u64) -> f64 {
        if rate > 0 {
            bytes as f64 / rate as f64
        } else {
            0.0
        }
    }

    /// Seconds a swap-out of `moved` bytes takes when `prepared` bytes of
    /// host memory were made ready for it: those at the copy rate (the
    /// restore rate), the rest at the swap-out rate.
    pub fn swap_out_secs(&self, moved: u64, prepared: u64) -> f64 {
        let fast = moved.min(prepared);
        Self::secs(self.in_bytes_per_s, fast) + Self::secs(self.out_bytes_per_s, moved - fast)
    }
}

/// A stream's work up to a point: reached when the timeline passes it.
struct SimMark(Instant);

impl WorkMark for SimMark {
    fn reached(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// Fills `d` with copies of `pattern` (a memset's element), leaving a
/// remainder shorter than one element as it is: one element, then copies of
/// what is filled so far, each a memcpy. (A loop per element ran a hog's
/// 384 MiB memsets at seconds each in the debug builds the tests use.)
fn fill_pattern(d: &mut [u8], pattern: &[u8]) {
    let es = pattern.len();
    if es == 0 || d.len() < es {
        return;
    }
    let whole = d.len() / es * es;
    let d = &mut d[..whole];
    d[..es].copy_from_slice(pattern);
    let mut filled = es;
    while filled < whole {
        let n = filled.min(whole - filled);
        d.copy_within(..n, filled);
        filled += n;
    }
}

fn err<T>(code: CuResult) -> EngineResult<T> {
    Err(CuError(code))
}

use protocol::cuda::*;

impl SimEngine {
    /// A simulated device with `total_mem` bytes of memory.
    /// Shares one simulated GPU with every other engine (in this process or
    /// another) that names the same file: their kernels take turns.
    pub fn share_gpu(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        self.timeline = Some(super::sim_timeline::SharedTimeline::open(path)?);
        Ok(())
    }

    /// Bytes made ready for a likely swap-out and not yet used.
    pub fn prepared_swap_out(&self) -> u64 {
        self.swap_prepared
    }

    /// Makes swaps take time, as on a real GPU.
    pub fn set_swap_rates(&mut self, rates: SwapRates) {
        self.swap_rates = rates;
    }

    pub fn new(total_mem: u64) -> Self {
        let mut attrs = [0i32; NUM_DEVICE_ATTRS];
        // (attribute number, value): a small Hopper-like device.
        for (a, v) in [
            (1, 1024),       // MAX_THREADS_PER_BLOCK
            (2, 1024),       // MAX_BLOCK_DIM_X
            (3, 1024),       // MAX_BLOCK_DIM_Y
            (4, 64),         // MAX_BLOCK_DIM_Z
            (5, i32::MAX),   // MAX_GRID_DIM_X
            (6, 65535),      // MAX_GRID_DIM_Y
            (7, 65535),      // MAX_GRID_DIM_Z
            (8, 49152),      // MAX_SHARED_MEMORY_PER_BLOCK
            (9, 65536),      // TOTAL_CONSTANT_MEMORY
            (10, 32),        // WARP_SIZE
            (11, i32::MAX),  // MAX_PITCH
            (12, 65536),     // MAX_REGISTERS_PER_BLOCK
            (13, 1_000_000), // CLOCK_RATE (kHz)
            (14, 512),       // TEXTURE_ALIGNMENT
            (15, 1),         // GPU_OVERLAP
            (16, 8),         // MULTIPROCESSOR_COUNT
            (19, 1),         // CAN_MAP_HOST_MEMORY
            (31, 1),         // CONCURRENT_KERNELS
            (36, 1_000_000), // MEMORY_CLOCK_RATE
            (37, 256),       // GLOBAL_MEMORY_BUS_WIDTH
            (38, 4 << 20),   // L2_CACHE_SIZE
            (39, 2048),      // MAX_THREADS_PER_MULTIPROCESSOR
            (40, 2),         // ASYNC_ENGINE_COUNT
            (41, 1),         // UNIFIED_ADDRESSING
            (75, 9),         // COMPUTE_CAPABILITY_MAJOR
            (76, 0),         // COMPUTE_CAPABILITY_MINOR
            (81, 233472),    // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
            (82, 65536),     // MAX_REGISTERS_PER_MULTIPROCESSOR
            (97, 232448),    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            (102, 1),        // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
            (115, 1),        // MEMORY_POOLS_SUPPORTED
        ] {
            attrs[a] = v;
        }
        let mut uuid = *b"gpuvisor-sim-dev";
        uuid[15] = 1;
        SimEngine {
            info: DeviceInfo {
                name: "gpuvisor simulated GPU".to_string(),
                uuid,
                total_mem,
                driver_version: 13000,
                attrs,
            },
            allocs: BTreeMap::new(),
            recycled: Vec::new(),
            allocated: 0,
            evicted: BTreeMap::new(),
            evicted_bytes: 0,
            next_va: VA_BASE,
            next_id: 1,
            current: None,
            ctxs: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            modules: HashMap::new(),
            funcs: HashMap::new(),
            graphs: HashMap::new(),
            reservations: BTreeMap::new(),
            phys: HashMap::new(),
            mappings: BTreeMap::new(),
            timeline: None,
            fault: None,
            swap_rates: SwapRates::default(),
            swap_prepared: 0,
        }
    }

    /// The fault's error once the timeline has reached the faulting kernel.
    fn alive(&self) -> EngineResult<()> {
        match self.fault {
            Some((code, at)) if Instant::now() >= at => err(code),
            _ => Ok(()),
        }
    }

    /// A kernel starting at `at` faults with `code`; the earliest fault is
    /// the one every call gets.
    fn fault_at(&mut self, code: CuResult, at: Instant) {
        if self.fault.is_none_or(|(_, t)| at < t) {
            self.fault = Some((code, at));
        }
    }

    /// Waits for work that ends at `t`, or for a fault before it: then the
    /// wait ends there with the fault's error, as a synchronization does on
    /// a GPU.
    fn wait_for(&self, t: Instant) -> EngineResult<()> {
        match self.fault {
            Some((code, at)) if at <= t => {
                Self::wait_until(at);
                err(code)
            }
            _ => {
                Self::wait_until(t);
                Ok(())
            }
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn cur(&self) -> EngineResult<u64> {
        self.current.ok_or(CuError(CUDA_ERROR_INVALID_CONTEXT))
    }

    /// Bytes `[dptr, dptr + len)` of device memory, or an illegal-address
    /// error as a GPU would give.
    fn slice_mut(&mut self, dptr: u64, len: u64) -> EngineResult<&mut [u8]> {
        let (base, a) = self.allocs.range_mut(..=dptr).next_back().ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
        let off = dptr - *base;
        let end = off.checked_add(len).ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
        if end > a.data.len() as u64 {
            return err(CUDA_ERROR_ILLEGAL_ADDRESS);
        }
        Ok(&mut a.data[off as usize..end as usize])
    }

    /// Runs `f` on bytes `[dptr, dptr + len)`: of one allocation, or of
    /// mapped memory, where contiguous mappings may lie on different
    /// physical allocations (the bytes are then gathered and written back).
    fn with_mut<R>(&mut self, dptr: u64, len: u64, f: impl FnOnce(&mut [u8]) -> R) -> EngineResult<R> {
        if let Ok(s) = self.slice_mut(dptr, len) {
            return Ok(f(s));
        }
        let pieces = self.mapped_pieces(dptr, len)?;
        if let [(phys, off, n)] = pieces[..] {
            let data = self.phys.get_mut(&phys).ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
            return Ok(f(&mut data[off..off + n]));
        }
        let mut buf = Vec::with_capacity(len as usize);
        for &(phys, off, n) in &pieces {
            let data = self.phys.get(&phys).ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
            buf.extend_from_slice(&data[off..off + n]);
        }
        let r = f(&mut buf);
        let mut at = 0;
        for (phys, off, n) in pieces {
            if let Some(data) = self.phys.get_mut(&phys) {
                data[off..off + n].copy_from_slice(&buf[at..at + n]);
            }
            at += n;
        }
        Ok(r)
    }

    /// The (physical allocation, offset, length) pieces of mapped
    /// `[dptr, dptr + len)`, or an illegal address where any of it is not
    /// mapped.
    fn mapped_pieces(&self, dptr: u64, len: u64) -> EngineResult<Vec<(u64, usize, usize)>> {
        let illegal = CuError(CUDA_ERROR_ILLEGAL_ADDRESS);
        let end = dptr.checked_add(len).ok_or(illegal)?;
        let mut at = dptr;
        let mut pieces = Vec::new();
        loop {
            let (base, m) = self.mappings.range(..=at).next_back().ok_or(illegal)?;
            let off = at - base;
            if off >= m.len {
                return Err(illegal);
            }
            let n = (m.len - off).min(end - at);
            pieces.push((m.phys, off as usize, n as usize));
            at += n;
            if at >= end {
                return Ok(pieces);
            }
        }
    }

    fn read(&mut self, dptr: u64, len: u64) -> EngineResult<Vec<u8>> {
        self.with_mut(dptr, len, |s| s.to_vec())
    }

    /// Memory for `size` bytes: a freed buffer that fits, with its old
    /// contents, or a new one.
    fn take_buffer(&mut self, size: u64) -> EngineResult<Vec<u8>> {
        if self.allocated.checked_add(size).is_none_or(|v| v > self.info.total_mem) {
            return err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        Ok(match self.recycled.iter().position(|b| b.len() as u64 >= size) {
            Some(i) => {
                let mut d = self.recycled.swap_remove(i);
                d.truncate(size as usize);
                d
            }
            None => {
                let mut d = Vec::new();
                d.try_reserve_exact(size as usize).map_err(|_| CuError(CUDA_ERROR_OUT_OF_MEMORY))?;
                d.resize(size as usize, 0);
                d
            }
        })
    }

    /// `size` device addresses at a multiple of `align`, with a guard gap
    /// after them, so an overrun never lands in a neighbour.
    fn take_va(&mut self, size: u64, align: u64) -> EngineResult<u64> {
        let oom = CuError(CUDA_ERROR_OUT_OF_MEMORY);
        let base = self.next_va.checked_next_multiple_of(align.max(VA_ALIGN)).ok_or(oom)?;
        let next = size
            .checked_next_multiple_of(VA_ALIGN)
            .and_then(|s| base.checked_add(s))
            .and_then(|e| e.checked_add(VA_ALIGN))
            .ok_or(oom)?;
        self.next_va = next;
        Ok(base)
    }

    /// When work enqueued now on `stream` may start.
    fn start_time(&self, stream: EngineStream) -> EngineResult<Instant> {
        let now = Instant::now();
        let ctx = self.cur()?;
        let c = self.ctxs.get(&ctx).ok_or(CuError(CUDA_ERROR_INVALID_CONTEXT))?;
        if stream == EngineStream::NULL {
            // The legacy stream waits for every blocking stream of its context.
            let mut t = now.max(c.null_ready);
            for s in self.streams.values().filter(|s| s.ctx == ctx && s.blocking) {
                t = t.max(s.ready);
            }
            Ok(t)
        } else {
            let s = self.streams.get(&stream.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
            let t = now.max(s.ready);
            Ok(if s.blocking { t.max(c.null_ready) } else { t })
        }
    }

    /// Records that `stream` is busy until `t`.
    fn set_ready(&mut self, stream: EngineStream, t: Instant) -> EngineResult<()> {
        if stream == EngineStream::NULL {
            let ctx = self.cur()?;
            if let Some(c) = self.ctxs.get_mut(&ctx) {
                c.null_ready = t;
            }
        } else if let Some(s) = self.streams.get_mut(&stream.0) {
            s.ready = t;
        }
        Ok(())
    }

    /// Enqueues an operation of `busy` duration on `stream`; returns its end.
    fn enqueue(&mut self, stream: EngineStream, busy: Duration) -> EngineResult<Instant> {
        let end = self.start_time(stream)? + busy;
        self.set_ready(stream, end)?;
        Ok(end)
    }

    /// A copy or memset on `stream`: its data effect happens now, in program
    /// order; it counts as done when the stream reaches it, and the
    /// synchronous forms wait for that.
    fn copy_op(
        &mut self,
        stream: EngineStream,
        async_: bool,
        op: impl FnOnce(&mut Self) -> EngineResult<()>,
    ) -> EngineResult<()> {
        self.alive()?;
        let end = self.enqueue(stream, Duration::ZERO)?;
        op(self)?;
        if !async_ {
            self.wait_for(end)?;
        }
        Ok(())
    }

    /// Waits for simulated work to finish: sleeps, then spins the last
    /// stretch, because a sleep can overshoot by far more than a short
    /// kernel lasts (a GPU's own synchronization spins too).
    fn wait_until(t: Instant) {
        const SPIN: Duration = Duration::from_micros(300);
        // A wait for a kernel that never ends sleeps until the process ends.
        loop {
            let now = Instant::now();
            if t <= now + SPIN {
                break;
            }
            std::thread::sleep((t - now - SPIN).min(Duration::from_secs(3600)));
        }
        while Instant::now() < t {
            std::hint::spin_loop();
        }
    }

    fn run_builtin(&mut self, b: Builtin, params: &[u8], layout: &[ParamLayout]) -> EngineResult<Duration> {
        let arg = |i: usize| -> EngineResult<u64> {
            let p = layout.get(i).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
            let (off, size) = (p.offset.get() as usize, p.size.get() as usize);
            let bytes = params.get(off..off + size).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
            let mut v = [0u8; 8];
            v[..size.min(8)].copy_from_slice(&bytes[..size.min(8)]);
            Ok(u64::from_le_bytes(v))
        };
        let f32_of = |v: u64| f32::from_bits(v as u32);
        let to_f32 = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        match b {
            Builtin::Empty => {}
            Builtin::FillU32 => {
                let (ptr, value, n) = (arg(0)?, arg(1)? as u32, arg(2)?);
                let bytes = n.checked_mul(4).ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
                self.with_mut(ptr, bytes, |dst| fill_pattern(dst, &value.to_le_bytes()))?;
            }
            Builtin::VectorAddF32 => {
                let (a, b, c, n) = (arg(0)?, arg(1)?, arg(2)?, arg(3)?);
                let bytes = n.checked_mul(4).ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
                let (va, vb) = (to_f32(&self.read(a, bytes)?), to_f32(&self.read(b, bytes)?));
                self.with_mut(c, bytes, |dst| {
                    for (i, out) in dst.chunks_exact_mut(4).enumerate() {
                        out.copy_from_slice(&(va[i] + vb[i]).to_le_bytes());
                    }
                })?;
            }
            Builtin::SaxpyF32 => {
                let (alpha, x, y, n) = (f32_of(arg(0)?), arg(1)?, arg(2)?, arg(3)?);
                let bytes = n.checked_mul(4).ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
                let vx = to_f32(&self.read(x, bytes)?);
                self.with_mut(y, bytes, |dst| {
                    for (i, out) in dst.chunks_exact_mut(4).enumerate() {
                        let yv = f32::from_le_bytes([out[0], out[1], out[2], out[3]]);
                        out.copy_from_slice(&(alpha * vx[i] + yv).to_le_bytes());
                    }
                })?;
            }
            Builtin::SpinUs => return Ok(Duration::from_micros(arg(0)?.min(60_000_000))),
            // Fixed work: the simulated GPU takes one nanosecond per iteration.
            Builtin::Burn => return Ok(Duration::from_nanos(arg(0)?.min(60_000_000_000))),
            Builtin::FaultIllegalAddress => return err(CUDA_ERROR_ILLEGAL_ADDRESS),
            Builtin::FaultTrap => return err(CUDA_ERROR_LAUNCH_FAILED),
            Builtin::SpinForever => return Ok(FOREVER),
            Builtin::MatmulF32 => {
                let (a, b, c, n) = (arg(0)?, arg(1)?, arg(2)?, arg(3)? as u32 as u64);
                let bytes =
                    n.checked_mul(n).and_then(|v| v.checked_mul(4)).ok_or(CuError(CUDA_ERROR_ILLEGAL_ADDRESS))?;
                let (ma, mb) = (to_f32(&self.read(a, bytes)?), to_f32(&self.read(b, bytes)?));
                let n = n as usize;
                let mut out = vec![0f32; n * n];
                for i in 0..n {
                    for k in 0..n {
                        let aik = ma[i * n + k];
                        for j in 0..n {
                            out[i * n + j] += aik * mb[k * n + j];
                        }
                    }
                }
                self.with_mut(c, bytes, |dst| {
                    for (o, v) in dst.chunks_exact_mut(4).zip(out) {
                        o.copy_from_slice(&v.to_le_bytes());
                    }
                })?;
            }
        }
        Ok(Duration::ZERO)
    }

    /// Destroys everything that belongs to context `ctx`.
    fn recycle(&mut self, data: Vec<u8>) {
        if self.recycled.len() >= RECYCLED_MAX {
            self.recycled.remove(0);
        }
        self.recycled.push(data);
    }

    fn drop_ctx_objects(&mut self, ctx: u64) {
        let bases: Vec<u64> = self.allocs.iter().filter(|(_, a)| a.ctx == ctx).map(|(b, _)| *b).collect();
        for b in bases {
            if let Some(a) = self.allocs.remove(&b) {
                self.allocated -= a.data.len() as u64;
                self.recycle(a.data);
            }
        }
        let gone: Vec<u64> = self.evicted.iter().filter(|(_, a)| a.ctx == ctx).map(|(b, _)| *b).collect();
        for b in gone {
            if let Some(a) = self.evicted.remove(&b) {
                self.evicted_bytes -= a.data.len() as u64;
            }
        }
        self.streams.retain(|_, s| s.ctx != ctx);
        self.events.retain(|_, e| e.ctx != ctx);
        let mods: Vec<u64> = self.modules.iter().filter(|(_, m)| m.ctx == ctx).map(|(k, _)| *k).collect();
        self.modules.retain(|_, m| m.ctx != ctx);
        self.funcs.retain(|_, f| !mods.contains(&f.module));
        self.graphs.retain(|_, g| g.ctx != ctx);
    }

    /// Runs one replay step on `stream`, asynchronously, as the step's own
    /// call would.
    fn run_step(&mut self, step: &SimStep, stream: EngineStream, host: &[GuestSpan<'_>]) -> EngineResult<()> {
        let span = |i: usize| host.get(i).cloned().ok_or(CuError(CUDA_ERROR_INVALID_VALUE));
        match step {
            SimStep::Kernel { func, grid, block, shared_mem, params, cluster, cooperative } => {
                let launch = Launch {
                    grid: *grid,
                    block: *block,
                    shared_mem: *shared_mem,
                    stream,
                    params,
                    cluster: *cluster,
                    cooperative: *cooperative,
                };
                self.launch(*func, &launch)
            }
            SimStep::CopyDtoD { dst, src, len } => self.memcpy_dtod(*dst, *src, *len, stream, true),
            SimStep::CopyHtoD { dst, host } => self.memcpy_htod(*dst, HostSrc::Guest(span(*host)?), stream, true),
            SimStep::CopyDtoH { src, host } => self.memcpy_dtoh(HostDst::Guest(span(*host)?), *src, stream, true),
            SimStep::Memset { dst, pitch, value, elem_size, width, height } => {
                for row in 0..*height {
                    let at = row.checked_mul(*pitch).and_then(|o| dst.checked_add(o));
                    let at = at.ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
                    self.memset(at, *value, *elem_size, *width, stream, true)?;
                }
                Ok(())
            }
            SimStep::Empty => Ok(()),
            SimStep::EventRecord(e) => self.event_record(*e, stream),
            SimStep::EventWait(e) => self.stream_wait_event(stream, *e, 0),
        }
    }

    /// Waits until every context's streams are done.
    fn synchronize_all(&self) {
        let mut t = Instant::now();
        for c in self.ctxs.values() {
            t = t.max(c.null_ready);
        }
        for s in self.streams.values() {
            t = t.max(s.ready);
        }
        Self::wait_until(t);
    }

    /// Bytes of simulated device memory in use (for tests).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

impl Engine for SimEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sim
    }

    fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    fn register_host_memory(&mut self, _regions: &[HostRegion]) -> EngineResult<()> {
        Ok(())
    }

    fn unregister_host_memory(&mut self, _regions: &[HostRegion]) -> EngineResult<()> {
        Ok(())
    }

    fn ctx_create(&mut self, _flags: u32) -> EngineResult<EngineCtx> {
        self.alive()?;
        let id = self.id();
        self.ctxs.insert(id, SimCtx { null_ready: Instant::now() });
        Ok(EngineCtx(id))
    }

    fn ctx_destroy(&mut self, ctx: EngineCtx) -> EngineResult<()> {
        self.ctxs.remove(&ctx.0).ok_or(CuError(CUDA_ERROR_INVALID_CONTEXT))?;
        self.drop_ctx_objects(ctx.0);
        if self.current == Some(ctx.0) {
            self.current = None;
        }
        Ok(())
    }

    fn ctx_set_current(&mut self, ctx: EngineCtx) -> EngineResult<()> {
        self.alive()?;
        if !self.ctxs.contains_key(&ctx.0) {
            return err(CUDA_ERROR_INVALID_CONTEXT);
        }
        self.current = Some(ctx.0);
        Ok(())
    }

    fn ctx_synchronize(&mut self) -> EngineResult<()> {
        self.alive()?;
        let ctx = self.cur()?;
        let mut t = self.ctxs.get(&ctx).map(|c| c.null_ready).unwrap_or_else(Instant::now);
        for s in self.streams.values().filter(|s| s.ctx == ctx) {
            t = t.max(s.ready);
        }
        self.wait_for(t)
    }

    fn mem_get_info(&mut self) -> EngineResult<(u64, u64)> {
        self.alive()?;
        Ok((self.info.total_mem - self.allocated, self.info.total_mem))
    }

    fn mem_alloc(&mut self, size: u64) -> EngineResult<u64> {
        self.alive()?;
        let ctx = self.cur()?;
        if size == 0 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let data = self.take_buffer(size)?;
        let base = self.take_va(size, VA_ALIGN)?;
        self.allocated += size;
        self.allocs.insert(base, SimAlloc { data, ctx });
        Ok(base)
    }

    fn mem_free(&mut self, dptr: u64) -> EngineResult<()> {
        self.alive()?;
        if let Some(a) = self.evicted.remove(&dptr) {
            self.evicted_bytes -= a.data.len() as u64;
            return Ok(());
        }
        let a = self.allocs.remove(&dptr).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        self.allocated -= a.data.len() as u64;
        self.recycle(a.data);
        Ok(())
    }

    fn lost(&mut self) -> Option<CuResult> {
        self.alive().err().map(|e| e.0)
    }

    fn mark(&mut self, stream: EngineStream) -> EngineResult<Box<dyn WorkMark>> {
        self.alive()?;
        // When work enqueued now would start: after everything before it.
        Ok(Box::new(SimMark(self.start_time(stream)?)))
    }

    fn alloc_footprint(&self, size: u64) -> u64 {
        size
    }

    fn mem_is_resident(&self, dptr: u64) -> bool {
        !self.evicted.contains_key(&dptr)
    }

    fn residency(&self) -> Residency {
        Residency { resident: self.allocated, evicted: self.evicted_bytes }
    }

    fn swap_out(&mut self, keep: u64, max_bytes: u64) -> EngineResult<u64> {
        self.alive()?;
        self.synchronize_all();
        let mut moved = 0u64;
        // Largest first: fewest moves for the bytes asked.
        let mut order: Vec<(u64, u64)> = self.allocs.iter().map(|(b, a)| (a.data.len() as u64, *b)).collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        for (len, base) in order {
            if self.allocated <= keep {
                break;
            }
            if moved.checked_add(len).is_none_or(|t| t > max_bytes) {
                continue;
            }
            if let Some(a) = self.allocs.remove(&base) {
                self.allocated -= len;
                self.evicted_bytes += len;
                moved += len;
                self.evicted.insert(base, a);
            }
        }
        SwapRates::wait(self.swap_rates.swap_out_secs(moved, std::mem::take(&mut self.swap_prepared)));
        Ok(moved)
    }

    fn least_swap_out(&self) -> u64 {
        self.allocs.values().map(|a| a.data.len() as u64).min().unwrap_or(0)
    }

    fn prepare_swap_out(&mut self, bytes: u64) {
        self.swap_prepared = bytes;
    }

    fn swap_in(&mut self, max_bytes: u64) -> EngineResult<u64> {
        self.alive()?;
        let mut moved = 0u64;
        while let Some((base, a)) = self.evicted.pop_first() {
            let len = a.data.len() as u64;
            if moved.saturating_add(len) > max_bytes {
                self.evicted.insert(base, a);
                break;
            }
            if self.allocated.checked_add(len).is_none_or(|v| v > self.info.total_mem) {
                self.evicted.insert(base, a);
                return err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            self.allocated += len;
            self.evicted_bytes -= len;
            moved += len;
            self.allocs.insert(base, a);
        }
        SwapRates::pace(self.swap_rates.in_bytes_per_s, moved);
        Ok(moved)
    }

    fn next_swap_in(&self) -> u64 {
        self.evicted.first_key_value().map_or(0, |(_, a)| a.data.len() as u64)
    }

    fn memcpy_htod(&mut self, dst: u64, src: HostSrc<'_>, stream: EngineStream, async_: bool) -> EngineResult<()> {
        self.copy_op(stream, async_, |e| {
            e.with_mut(dst, src.len() as u64, |d| match src {
                HostSrc::Bytes(b) => d.copy_from_slice(b),
                HostSrc::Guest(span) => span.read_into(d),
            })
        })
    }

    fn memcpy_dtoh(&mut self, dst: HostDst<'_>, src: u64, stream: EngineStream, async_: bool) -> EngineResult<()> {
        self.copy_op(stream, async_, |e| {
            e.with_mut(src, dst.len() as u64, |s| match dst {
                HostDst::Bytes(b) => b.copy_from_slice(s),
                HostDst::Guest(span) => span.write_from(s),
            })
        })
    }

    fn memcpy_dtod(&mut self, dst: u64, src: u64, len: u64, stream: EngineStream, async_: bool) -> EngineResult<()> {
        self.copy_op(stream, async_, |e| {
            let data = e.read(src, len)?;
            e.with_mut(dst, len, |d| d.copy_from_slice(&data))
        })
    }

    fn memset(
        &mut self,
        dst: u64,
        value: u32,
        elem_size: u32,
        count: u64,
        stream: EngineStream,
        async_: bool,
    ) -> EngineResult<()> {
        let es = elem_size as usize;
        let bytes = count.checked_mul(elem_size as u64).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        self.copy_op(stream, async_, |e| {
            let v = value.to_le_bytes();
            e.with_mut(dst, bytes, |d| fill_pattern(d, &v[..es]))
        })
    }

    fn module_load(&mut self, image: &[u8]) -> EngineResult<EngineModule> {
        self.alive()?;
        let ctx = self.cur()?;
        // As the driver: a fatbin with no cubin or PTX the device (9.0, see
        // the attributes above) can load is refused.
        if module_image::detect(image) == Some(module_image::ImageKind::Fatbin)
            && module_image::fatbin_for_device(image, 9, 0) == Ok(None)
        {
            return err(CUDA_ERROR_NO_BINARY_FOR_GPU);
        }
        let kernels = match module_image::kernels(image) {
            Ok(k) => Some(k),
            // Loaded with its kernels unknown, so that a library's host-side
            // paths (cuBLAS's handle and heuristics, a framework's start)
            // run on the sim; launching one of them is NOT_SUPPORTED.
            Err(module_image::ImageError::NoReadableEntry) => None,
            Err(_) => return err(CUDA_ERROR_INVALID_IMAGE),
        };
        let id = self.id();
        self.modules.insert(id, SimModule { ctx, kernels, globals: Vec::new() });
        Ok(EngineModule(id))
    }

    fn module_unload(&mut self, module: EngineModule) -> EngineResult<()> {
        self.alive()?;
        let m = self.modules.remove(&module.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        self.funcs.retain(|_, f| f.module != module.0);
        for (_, addr) in m.globals {
            self.mem_free(addr)?;
        }
        Ok(())
    }

    fn module_get_function(&mut self, module: EngineModule, name: &str) -> EngineResult<(EngineFunc, FunctionInfo)> {
        self.alive()?;
        let m = self.modules.get(&module.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        let params: Vec<ParamLayout> = match &m.kernels {
            Some(kernels) => {
                let k = kernels.iter().find(|k| k.name == name).ok_or(CuError(CUDA_ERROR_NOT_FOUND))?;
                k.params.iter().map(|p| ParamLayout { offset: p.offset.into(), size: p.size.into() }).collect()
            }
            // A compressed image's names are taken on trust, with no
            // parameters: the function can be looked up, not run.
            None => Vec::new(),
        };
        // A built-in runs only if the signature matches what it expects.
        let builtin = Builtin::by_name(name)
            .filter(|(_, sizes)| {
                sizes.len() == params.len() && sizes.iter().zip(&params).all(|(s, p)| *s == p.size.get())
            })
            .map(|(b, _)| b);
        // The built-ins' attributes as the occupancy model assumes them (see
        // `occupancy`): no static shared, constant or local memory.
        let mut attrs = [0i32; NUM_FUNC_ATTRS];
        attrs[0] = MODEL_MAX_THREADS_PER_BLOCK as i32; // MAX_THREADS_PER_BLOCK
        attrs[4] = MODEL_REGS_PER_THREAD as i32; // NUM_REGS
        attrs[5] = 90; // PTX_VERSION
        attrs[6] = 90; // BINARY_VERSION
        attrs[8] = MODEL_DEFAULT_DYNAMIC_SMEM as i32; // MAX_DYNAMIC_SHARED_SIZE_BYTES
        let id = self.id();
        self.funcs
            .insert(id, SimFunc { module: module.0, builtin, params: params.clone(), non_portable_clusters: false });
        Ok((EngineFunc(id), FunctionInfo { params, param_source: protocol::PARAMS_FROM_IMAGE, attrs }))
    }

    fn module_get_global(&mut self, module: EngineModule, name: &str) -> EngineResult<(u64, u64)> {
        self.alive()?;
        let m = self.modules.get(&module.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        // The built-in kernels have no globals; a compressed image's are
        // taken on trust, each a zeroed buffer of a fixed size.
        if m.kernels.is_some() {
            return err(CUDA_ERROR_NOT_FOUND);
        }
        if let Some((_, addr)) = m.globals.iter().find(|(n, _)| n == name) {
            return Ok((*addr, OPAQUE_GLOBAL_BYTES));
        }
        if m.globals.len() >= OPAQUE_GLOBALS_MAX {
            return err(CUDA_ERROR_NOT_FOUND);
        }
        let addr = self.mem_alloc(OPAQUE_GLOBAL_BYTES)?;
        if let Some(m) = self.modules.get_mut(&module.0) {
            m.globals.push((name.to_string(), addr));
        }
        Ok((addr, OPAQUE_GLOBAL_BYTES))
    }

    fn func_set_attribute(&mut self, func: EngineFunc, attr: u32, value: i32) -> EngineResult<()> {
        self.alive()?;
        let f = self.funcs.get_mut(&func.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        if attr == FUNC_ATTR_NON_PORTABLE_CLUSTER_SIZE_ALLOWED {
            f.non_portable_clusters = value != 0;
        }
        Ok(())
    }

    fn launch(&mut self, func: EngineFunc, launch: &Launch<'_>) -> EngineResult<()> {
        self.alive()?;
        let f = self.funcs.get(&func.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        let Some(b) = f.builtin else {
            return err(CUDA_ERROR_NOT_SUPPORTED);
        };
        let layout = f.params.clone();
        let threads = launch.block.iter().map(|&d| d as u64).product::<u64>();
        if threads > 1024 {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        if !launch.is_plain() {
            check_launch_ex(f, launch, threads)?;
        }
        let start = self.start_time(launch.stream)?;
        let busy = match self.run_builtin(b, launch.params, &layout) {
            Ok(busy) => busy,
            // A kernel fault is asynchronous, as on a GPU: the launch
            // succeeds, and the fault fails every call once the timeline
            // reaches the kernel.
            Err(CuError(code)) if is_sticky(code) => {
                self.fault_at(code, start);
                Duration::ZERO
            }
            Err(e) => return Err(e),
        };
        let start = match &self.timeline {
            // A kernel that never ends is not booked on the shared GPU: its
            // file outlives the process that the watchdog ends, and a real
            // GPU is free again once that process is gone.
            Some(t) if !busy.is_zero() && busy < FOREVER => t.book(start, busy),
            _ => start,
        };
        self.set_ready(launch.stream, start + busy)
    }

    fn stream_create(&mut self, flags: u32, _priority: i32) -> EngineResult<EngineStream> {
        self.alive()?;
        let ctx = self.cur()?;
        let id = self.id();
        self.streams
            .insert(id, SimStream { ctx, ready: Instant::now(), blocking: flags & CU_STREAM_NON_BLOCKING == 0 });
        Ok(EngineStream(id))
    }

    fn stream_destroy(&mut self, stream: EngineStream) -> EngineResult<()> {
        self.alive()?;
        self.streams.remove(&stream.0).map(|_| ()).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))
    }

    fn stream_synchronize(&mut self, stream: EngineStream) -> EngineResult<()> {
        self.alive()?;
        let t = if stream == EngineStream::NULL {
            self.start_time(stream)?
        } else {
            self.streams.get(&stream.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?.ready
        };
        self.wait_for(t)
    }

    fn stream_query(&mut self, stream: EngineStream) -> EngineResult<()> {
        self.alive()?;
        let t = if stream == EngineStream::NULL {
            self.start_time(stream)?
        } else {
            self.streams.get(&stream.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?.ready
        };
        if Instant::now() >= t {
            Ok(())
        } else {
            err(CUDA_ERROR_NOT_READY)
        }
    }

    fn stream_wait_event(&mut self, stream: EngineStream, event: EngineEvent, _flags: u32) -> EngineResult<()> {
        self.alive()?;
        let t = self.events.get(&event.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?.time;
        if let Some(t) = t {
            let start = self.start_time(stream)?;
            self.set_ready(stream, start.max(t))?;
        }
        Ok(())
    }

    fn event_create(&mut self, flags: u32) -> EngineResult<EngineEvent> {
        self.alive()?;
        let ctx = self.cur()?;
        let id = self.id();
        self.events.insert(id, SimEvent { ctx, time: None, timing: flags & CU_EVENT_DISABLE_TIMING == 0 });
        Ok(EngineEvent(id))
    }

    fn event_destroy(&mut self, event: EngineEvent) -> EngineResult<()> {
        self.alive()?;
        self.events.remove(&event.0).map(|_| ()).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))
    }

    fn event_record(&mut self, event: EngineEvent, stream: EngineStream) -> EngineResult<()> {
        self.alive()?;
        let t = self.start_time(stream)?;
        let e = self.events.get_mut(&event.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        e.time = Some(t);
        Ok(())
    }

    fn event_query(&mut self, event: EngineEvent) -> EngineResult<()> {
        self.alive()?;
        let e = self.events.get(&event.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        match e.time {
            Some(t) if Instant::now() < t => err(CUDA_ERROR_NOT_READY),
            _ => Ok(()),
        }
    }

    fn event_synchronize(&mut self, event: EngineEvent) -> EngineResult<()> {
        self.alive()?;
        let e = self.events.get(&event.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        match e.time {
            Some(t) => self.wait_for(t),
            None => Ok(()),
        }
    }

    fn event_elapsed_ms(&mut self, start: EngineEvent, end: EngineEvent) -> EngineResult<f32> {
        self.alive()?;
        let a = self.events.get(&start.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        let b = self.events.get(&end.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        if !a.timing || !b.timing {
            return err(CUDA_ERROR_INVALID_HANDLE);
        }
        let (Some(ta), Some(tb)) = (a.time, b.time) else {
            return err(CUDA_ERROR_INVALID_HANDLE);
        };
        let now = Instant::now();
        if ta > now || tb > now {
            return err(CUDA_ERROR_NOT_READY);
        }
        let ms = if tb >= ta { (tb - ta).as_secs_f64() * 1e3 } else { -((ta - tb).as_secs_f64() * 1e3) };
        Ok(ms as f32)
    }

    fn graph_instantiate(&mut self, graph: &GraphSpec<'_>, host: &[GuestSpan<'_>]) -> EngineResult<EngineGraphExec> {
        self.alive()?;
        let ctx = self.cur()?;
        for node in &graph.nodes {
            let ok = match *node {
                GraphNode::Kernel { func, .. } => self.funcs.contains_key(&func.0),
                GraphNode::EventRecord(e) | GraphNode::EventWait(e) => self.events.contains_key(&e.0),
                GraphNode::CopyHtoD { host: i, .. } | GraphNode::CopyDtoH { host: i, .. } => i < host.len(),
                _ => true,
            };
            if !ok {
                return err(CUDA_ERROR_INVALID_HANDLE);
            }
        }
        let id = self.id();
        let steps = graph.nodes.iter().map(SimStep::of).collect();
        self.graphs.insert(id, SimGraph { ctx, steps, order: graph.order.clone() });
        Ok(EngineGraphExec(id))
    }

    fn graph_exec_destroy(&mut self, exec: EngineGraphExec) -> EngineResult<()> {
        self.alive()?;
        self.graphs.remove(&exec.0).map(|_| ()).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))
    }

    fn graph_launch(
        &mut self,
        exec: EngineGraphExec,
        stream: EngineStream,
        host: &[GuestSpan<'_>],
    ) -> EngineResult<()> {
        self.alive()?;
        let ctx = self.cur()?;
        let g = self.graphs.get(&exec.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        if g.ctx != ctx {
            return err(CUDA_ERROR_INVALID_CONTEXT);
        }
        // Steps are cloned out so that replaying them may borrow the engine.
        let steps: Vec<SimStep> = g.order.iter().filter_map(|&i| g.steps.get(i as usize).cloned()).collect();
        for step in &steps {
            self.run_step(step, stream, host)?;
        }
        Ok(())
    }

    fn graph_exec_update_node(&mut self, exec: EngineGraphExec, index: u32, node: &GraphNode<'_>) -> EngineResult<()> {
        self.alive()?;
        let new = SimStep::of(node);
        let g = self.graphs.get_mut(&exec.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        let old = g.steps.get_mut(index as usize).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        if !old.same_kind(&new) || matches!(new, SimStep::CopyHtoD { .. } | SimStep::CopyDtoH { .. }) {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        *old = new;
        Ok(())
    }

    fn occupancy(&mut self, func: EngineFunc, kind: u32, _flags: u32, item: &OccupancyItem) -> EngineResult<u64> {
        self.alive()?;
        let f = self.funcs.get(&func.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        let max_cluster = if f.non_portable_clusters { MODEL_MAX_CLUSTER_NON_PORTABLE } else { MODEL_MAX_CLUSTER };
        let block = item.block.iter().map(|d| d.get() as u64).product::<u64>();
        let smem = item.shared_mem.get() as u64;
        match kind {
            protocol::OCCUPANCY_ACTIVE_BLOCKS => Ok(model_active_blocks(block, smem)),
            protocol::OCCUPANCY_AVAILABLE_SMEM => {
                model_available_smem(block, item.num_blocks.get() as u64).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))
            }
            protocol::OCCUPANCY_CLUSTER_SIZE => {
                // As many blocks as fit on the model's multiprocessors, up to
                // the portable limit.
                let fit = model_active_blocks(block, smem).saturating_mul(MODEL_SMS);
                Ok(fit.min(max_cluster))
            }
            protocol::OCCUPANCY_ACTIVE_CLUSTERS => {
                let cluster = item.cluster.iter().map(|d| (d.get() as u64).max(1)).product::<u64>();
                if cluster > max_cluster {
                    return err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
                }
                Ok(model_active_blocks(block, smem).saturating_mul(MODEL_SMS) / cluster)
            }
            _ => err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    fn vmm_granularity(&self) -> Option<u64> {
        Some(VMM_GRANULARITY)
    }

    fn va_reserve(&mut self, size: u64, align: u64, _hint: u64) -> EngineResult<u64> {
        self.alive()?;
        if size == 0
            || !size.is_multiple_of(VMM_GRANULARITY)
            || !align.is_power_of_two()
            || !align.is_multiple_of(VMM_GRANULARITY)
        {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let va = self.take_va(size, align)?;
        self.reservations.insert(va, size);
        Ok(va)
    }

    fn va_free(&mut self, va: u64, size: u64) -> EngineResult<()> {
        self.alive()?;
        if self.reservations.get(&va) != Some(&size) {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        if self.mappings.range(va..va + size).next().is_some() {
            return err(CUDA_ERROR_ILLEGAL_STATE);
        }
        self.reservations.remove(&va);
        Ok(())
    }

    fn phys_create(&mut self, size: u64) -> EngineResult<EnginePhys> {
        self.alive()?;
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        let data = self.take_buffer(size)?;
        self.allocated += size;
        let id = self.id();
        self.phys.insert(id, data);
        Ok(EnginePhys(id))
    }

    fn phys_zero(&mut self, phys: EnginePhys, _mapped_at: Option<u64>) -> EngineResult<()> {
        self.alive()?;
        self.synchronize_all();
        let data = self.phys.get_mut(&phys.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        data.fill(0);
        Ok(())
    }

    fn phys_release(&mut self, phys: EnginePhys) -> EngineResult<()> {
        self.alive()?;
        if self.mappings.values().any(|m| m.phys == phys.0) {
            return err(CUDA_ERROR_ILLEGAL_STATE);
        }
        let data = self.phys.remove(&phys.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        self.allocated -= data.len() as u64;
        // Handed out again as it is, as a GPU's allocator would: the VM
        // layer's `phys_zero` is what keeps the next owner from seeing it.
        self.recycle(data);
        Ok(())
    }

    fn mem_map(&mut self, va: u64, size: u64, phys: EnginePhys) -> EngineResult<()> {
        self.alive()?;
        let end = va.checked_add(size).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        let reserved = self.reservations.range(..=va).next_back().is_some_and(|(b, s)| end <= b + s);
        let overlaps = self.mappings.range(..end).next_back().is_some_and(|(b, m)| b + m.len > va);
        let fits = self.phys.get(&phys.0).is_some_and(|d| size <= d.len() as u64);
        if size == 0 || !reserved || overlaps || !fits {
            return err(CUDA_ERROR_INVALID_VALUE);
        }
        self.mappings.insert(va, SimMapping { len: size, phys: phys.0 });
        Ok(())
    }

    fn mem_unmap(&mut self, va: u64, size: u64) -> EngineResult<()> {
        self.alive()?;
        match self.mappings.get(&va) {
            Some(m) if m.len == size => {
                self.synchronize_all();
                self.mappings.remove(&va);
                Ok(())
            }
            _ => err(CUDA_ERROR_INVALID_VALUE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_repeats_the_element_and_leaves_a_partial_one_alone() {
        for (len, es) in [(0usize, 4usize), (3, 4), (4, 4), (17, 4), (4096 + 6, 2), (1000, 1), (7, 2)] {
            let pattern: Vec<u8> = (1..=es as u8).collect();
            let mut d = vec![0xeeu8; len];
            fill_pattern(&mut d, &pattern);
            let mut want = vec![0xeeu8; len];
            for c in want.chunks_exact_mut(es) {
                c.copy_from_slice(&pattern);
            }
            assert_eq!(d, want, "{len} bytes of {es}-byte elements");
        }
    }

    const FAULT_PTX: &str = include_str!("../../../guest-tests/fault_kernels.ptx");

    /// An engine with the fault kernels loaded in a fresh context, current.
    fn with_fault_kernels(e: &mut SimEngine) -> (EngineCtx, EngineModule) {
        let ctx = e.ctx_create(0).unwrap();
        e.ctx_set_current(ctx).unwrap();
        (ctx, e.module_load(FAULT_PTX.as_bytes()).unwrap())
    }

    fn launch_one(e: &mut SimEngine, m: EngineModule, name: &str, stream: EngineStream) -> EngineResult<()> {
        let (f, _) = e.module_get_function(m, name).unwrap();
        let params = 0u64.to_le_bytes();
        e.launch(f, &Launch::plain([1, 1, 1], [1, 1, 1], stream, &params))
    }

    /// A fatbin with one sm_90 cubin entry marked LZ4-compressed, as
    /// NVIDIA's libraries ship their kernels (layout: module_image.rs).
    fn compressed_fatbin() -> Vec<u8> {
        let payload = [0x5au8; 16];
        let mut entry = Vec::new();
        entry.extend(2u16.to_le_bytes()); // cubin
        entry.extend(0x0101u16.to_le_bytes());
        entry.extend(64u32.to_le_bytes()); // header size
        entry.extend((payload.len() as u64).to_le_bytes());
        entry.extend((payload.len() as u32).to_le_bytes()); // compressed size
        entry.extend(0u32.to_le_bytes()); // no options record
        entry.extend(8u16.to_le_bytes());
        entry.extend(1u16.to_le_bytes());
        entry.extend(90u32.to_le_bytes()); // sm_90
        entry.extend([0u8; 8]); // name
        entry.extend(0x2000u64.to_le_bytes()); // LZ4
        entry.extend([0u8; 8]);
        entry.extend(64u64.to_le_bytes()); // uncompressed size
        entry.extend(payload);
        let mut out = Vec::new();
        out.extend(module_image::FATBIN_MAGIC.to_le_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend((entry.len() as u64).to_le_bytes());
        out.extend(entry);
        out
    }

    #[test]
    fn a_swap_out_prepared_for_moves_that_much_at_the_copy_rate() {
        let rates = SwapRates { out_bytes_per_s: 100, in_bytes_per_s: 1000 };
        assert_eq!(rates.swap_out_secs(500, 0), 5.0);
        assert_eq!(rates.swap_out_secs(500, 300), 0.3 + 2.0);
        assert_eq!(rates.swap_out_secs(500, 800), 0.5, "more prepared than moved");
        let mut e = SimEngine::new(1 << 20);
        e.prepare_swap_out(4096);
        assert_eq!(e.prepared_swap_out(), 4096);
        let ctx = e.ctx_create(0).unwrap();
        e.ctx_set_current(ctx).unwrap();
        e.mem_alloc(8192).unwrap();
        assert_eq!(e.swap_out(0, u64::MAX).unwrap(), 8192);
        assert_eq!(e.prepared_swap_out(), 0, "spent by the swap-out");
    }

    #[test]
    fn a_swap_in_moves_no_allocation_past_its_budget() {
        let mut e = SimEngine::new(64 << 20);
        let ctx = e.ctx_create(0).unwrap();
        e.ctx_set_current(ctx).unwrap();
        let small = e.mem_alloc(4096).unwrap();
        let big = e.mem_alloc(2 << 20).unwrap();
        assert_eq!(e.next_swap_in(), 0, "nothing is swapped out");
        assert_eq!(e.swap_out(0, u64::MAX).unwrap(), (2 << 20) + 4096);
        // Address order: the small one first.
        assert!(small < big);
        assert_eq!(e.next_swap_in(), 4096);
        assert_eq!(e.swap_in(4095).unwrap(), 0, "less than the first allocation moves nothing");
        assert_eq!(e.swap_in(1 << 20).unwrap(), 4096, "the small one fits, the big one does not");
        assert!(e.mem_is_resident(small) && !e.mem_is_resident(big));
        assert_eq!(e.next_swap_in(), 2 << 20);
        assert_eq!(e.swap_in(2 << 20).unwrap(), 2 << 20);
        assert_eq!(e.residency(), Residency { resident: (2 << 20) + 4096, evicted: 0 });
        assert_eq!(e.next_swap_in(), 0);
    }

    #[test]
    fn a_compressed_library_loads_and_its_functions_resolve_but_do_not_run() {
        let mut e = SimEngine::new(64 << 20);
        let ctx = e.ctx_create(0).unwrap();
        e.ctx_set_current(ctx).unwrap();
        let m = e.module_load(&compressed_fatbin()).expect("loads, as NVIDIA's driver loads it");
        let (f, info) = e.module_get_function(m, "any_kernel_of_the_library").unwrap();
        assert!(info.params.is_empty());
        let launch = Launch::plain([1, 1, 1], [1, 1, 1], EngineStream::NULL, &[]);
        assert_eq!(e.launch(f, &launch), Err(CuError(CUDA_ERROR_NOT_SUPPORTED)));
        // Garbage is still no image.
        assert_eq!(e.module_load(&[0x7f; 64]).err(), Some(CuError(CUDA_ERROR_INVALID_IMAGE)));
        // Its globals: a zeroed buffer each, the same one when asked again,
        // released with the module.
        let (addr, size) = e.module_get_global(m, "some_global").unwrap();
        assert_eq!(e.module_get_global(m, "some_global").unwrap(), (addr, size));
        assert_ne!(e.module_get_global(m, "another").unwrap().0, addr);
        let used = e.allocated;
        e.module_unload(m).unwrap();
        assert_eq!(e.allocated, used - 2 * size);
    }

    #[test]
    fn clusters_past_the_portable_size_need_the_function_to_allow_them() {
        use protocol::{OccupancyItem, OCCUPANCY_ACTIVE_CLUSTERS};
        let mut e = SimEngine::new(64 << 20);
        let ctx = e.ctx_create(0).unwrap();
        e.ctx_set_current(ctx).unwrap();
        let m = e.module_load(include_bytes!("../../../guest-tests/kernels.ptx")).unwrap();
        let (f, _) = e.module_get_function(m, "gv_spin_us").unwrap();
        let item = |cluster: u32| OccupancyItem {
            block: [128u32.into(), 1u32.into(), 1u32.into()],
            cluster: [cluster.into(), 1u32.into(), 1u32.into()],
            ..Default::default()
        };
        assert!(e.occupancy(f, OCCUPANCY_ACTIVE_CLUSTERS, 0, &item(8)).unwrap() > 0);
        // cuBLAS probes sizes upwards until this error.
        assert_eq!(
            e.occupancy(f, OCCUPANCY_ACTIVE_CLUSTERS, 0, &item(9)),
            Err(CuError(CUDA_ERROR_INVALID_CLUSTER_SIZE))
        );
        e.func_set_attribute(f, FUNC_ATTR_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1).unwrap();
        assert!(e.occupancy(f, OCCUPANCY_ACTIVE_CLUSTERS, 0, &item(16)).unwrap() > 0);
        assert_eq!(
            e.occupancy(f, OCCUPANCY_ACTIVE_CLUSTERS, 0, &item(17)),
            Err(CuError(CUDA_ERROR_INVALID_CLUSTER_SIZE))
        );
    }

    #[test]
    fn a_kernel_fault_comes_at_the_next_sync_and_then_fails_every_context() {
        for (kernel, code) in
            [("gv_fault_illegal_address", CUDA_ERROR_ILLEGAL_ADDRESS), ("gv_fault_trap", CUDA_ERROR_LAUNCH_FAILED)]
        {
            let mut e = SimEngine::new(64 << 20);
            let other = e.ctx_create(0).unwrap();
            e.ctx_set_current(other).unwrap();
            let mine = e.mem_alloc(4096).unwrap();
            let (ctx, m) = with_fault_kernels(&mut e);
            assert_eq!(e.lost(), None);
            // Asynchronous, as on a GPU: the launch itself succeeds.
            assert_eq!(launch_one(&mut e, m, kernel, EngineStream::NULL), Ok(()), "{kernel}");
            assert_eq!(e.ctx_synchronize(), Err(CuError(code)), "{kernel}");
            assert_eq!(e.ctx_synchronize(), Err(CuError(code)), "{kernel}: sticky");
            assert_eq!(e.lost(), Some(code));
            // Every other context of the engine fails too, new ones included.
            e.ctx_set_current(other).unwrap_err();
            assert_eq!(e.mem_alloc(4096), Err(CuError(code)));
            assert_eq!(e.memset(mine, 0, 1, 16, EngineStream::NULL, false), Err(CuError(code)));
            assert_eq!(e.ctx_create(0), Err(CuError(code)));
            // Destroying contexts still works, as measured on the H200.
            assert_eq!(e.ctx_destroy(ctx), Ok(()));
            assert_eq!(e.ctx_destroy(other), Ok(()));
        }
    }

    #[test]
    fn a_fault_behind_other_work_comes_when_the_stream_reaches_it() {
        let mut e = SimEngine::new(64 << 20);
        let (_, m) = with_fault_kernels(&mut e);
        let kernels = e.module_load(include_bytes!("../../../guest-tests/kernels.ptx")).unwrap();
        let (spin, _) = e.module_get_function(kernels, "gv_spin_us").unwrap();
        let s = e.stream_create(0, 0).unwrap();
        let us = 100_000u64.to_le_bytes();
        e.launch(spin, &Launch::plain([1, 1, 1], [1, 1, 1], s, &us)).unwrap();
        launch_one(&mut e, m, "gv_fault_illegal_address", s).unwrap();
        // Not yet: the stream is still spinning.
        assert_eq!(e.stream_query(s), Err(CuError(CUDA_ERROR_NOT_READY)));
        assert_eq!(e.lost(), None);
        let t = Instant::now();
        assert_eq!(e.stream_synchronize(s), Err(CuError(CUDA_ERROR_ILLEGAL_ADDRESS)));
        assert!(t.elapsed() >= Duration::from_millis(90), "the fault came before the work ahead of it");
    }

    #[test]
    fn a_kernel_that_never_ends_is_never_reached() {
        let mut e = SimEngine::new(64 << 20);
        let (_, m) = with_fault_kernels(&mut e);
        let s = e.stream_create(0, 0).unwrap();
        let before = e.mark(s).unwrap();
        launch_one(&mut e, m, "gv_spin_forever", s).unwrap();
        let after = e.mark(s).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(before.reached());
        assert!(!after.reached());
        assert_eq!(e.stream_query(s), Err(CuError(CUDA_ERROR_NOT_READY)));
        assert_eq!(e.lost(), None, "a kernel that runs is no fault");
    }

    #[test]
    fn the_occupancy_model_is_limited_by_warps_registers_and_shared_memory() {
        // 256 threads: 8 warps; warps allow 8 blocks, registers (1024 per
        // warp) 8 blocks: 2048 threads, the whole multiprocessor.
        assert_eq!(model_active_blocks(256, 0), 8);
        // 1024 threads: 2 blocks; 32 threads: the block limit, 32.
        assert_eq!(model_active_blocks(1024, 0), 2);
        assert_eq!(model_active_blocks(32, 0), 32);
        // 100 KiB of dynamic shared memory each: two blocks fit in 228 KiB.
        assert_eq!(model_active_blocks(128, 100 << 10), 2);
        assert_eq!(model_active_blocks(2048, 0), 0, "larger than a block may be");
        assert_eq!(model_active_blocks(128, 300 << 10), 0, "more shared memory than a block may have");
        // The shared memory that lets exactly that many blocks fit.
        let per_block = model_available_smem(128, 2).unwrap();
        assert_eq!(model_active_blocks(128, per_block), 2);
        assert!(model_active_blocks(128, per_block + 1024) < 2);
        assert_eq!(model_available_smem(1024, 3), None, "three 1024-thread blocks never fit");
    }
}
