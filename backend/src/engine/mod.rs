//! The one trait every engine implements: the CUDA work of one VM, with
//! guest handles already resolved to engine handles and every range already
//! checked by the caller (`vm.rs`). `cuda` runs it on the host GPU through
//! cudarc; `sim` runs it on the CPU so every path but the GPU is testable
//! anywhere.

pub mod cuda;
pub mod host_swap;
pub mod sim;
pub mod sim_timeline;
pub mod swap_pool;

use crate::guest_mem::{GuestSpan, HostDst, HostSrc};
use protocol::cuda::CuResult;
use protocol::{OccupancyItem, ParamLayout, NUM_DEVICE_ATTRS, NUM_FUNC_ATTRS};

/// An error from an engine: the CUDA result the guest will see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("CUDA error {0} ({name})", name = protocol::cuda::error_name(*.0).unwrap_or("unknown"))]
pub struct CuError(pub CuResult);

pub type EngineResult<T> = Result<T, CuError>;

/// Opaque engine handles. For `cuda` they hold the driver's pointers, which
/// never leave the backend; the guest only ever sees its own ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineCtx(pub u64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineModule(pub u64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineFunc(pub u64);
/// `EngineStream(0)` is the context's legacy NULL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineStream(pub u64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineEvent(pub u64);
/// An instantiated graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineGraphExec(pub u64);
/// Physical device memory of the virtual-memory API (`cuMemCreate`), which
/// is mapped at reserved addresses and not tied to any context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnginePhys(pub u64);

impl EngineStream {
    pub const NULL: EngineStream = EngineStream(0);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Sim,
    Cuda,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Sim => "sim",
            EngineKind::Cuda => "cuda",
        }
    }
}

/// What the guest learns about its device. `total_mem` here is the physical
/// device's; the VM layer replaces it with the VM's quota.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub uuid: [u8; 16],
    pub total_mem: u64,
    pub driver_version: u32,
    /// `CUdevice_attribute` values indexed by attribute number.
    pub attrs: [i32; NUM_DEVICE_ATTRS],
}

/// A kernel's parameter layout and attributes.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    pub params: Vec<ParamLayout>,
    /// `protocol::PARAMS_FROM_HOST_DRIVER` or `protocol::PARAMS_FROM_IMAGE`.
    pub param_source: u32,
    /// `CUfunction_attribute` values indexed by attribute number.
    pub attrs: [i32; NUM_FUNC_ATTRS],
}

/// A launch, as the guest asked for it.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
    pub stream: EngineStream,
    /// Parameters packed at the offsets of `FunctionInfo::params`.
    pub params: &'a [u8],
    /// Thread block cluster dimensions, every one at least 1 and the grid a
    /// multiple of them (the VM layer checks); `[1, 1, 1]` for a plain
    /// launch.
    pub cluster: [u32; 3],
    /// A cooperative launch: all blocks resident at once.
    pub cooperative: bool,
}

impl<'a> Launch<'a> {
    /// A launch as `cuLaunchKernel` makes it, with no dynamic shared memory.
    pub fn plain(grid: [u32; 3], block: [u32; 3], stream: EngineStream, params: &'a [u8]) -> Self {
        Launch { grid, block, shared_mem: 0, stream, params, cluster: [1, 1, 1], cooperative: false }
    }

    /// No cluster and not cooperative: what `cuLaunchKernel` does.
    pub fn is_plain(&self) -> bool {
        self.cluster == [1, 1, 1] && !self.cooperative
    }
}

/// One node of a graph to instantiate, its handles resolved and its device
/// ranges checked by the VM layer. Host memory is named by an index into the
/// spans passed beside the graph (at instantiation and at every launch).
#[derive(Debug, Clone, Copy)]
pub enum GraphNode<'a> {
    Kernel {
        func: EngineFunc,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        params: &'a [u8],
        /// As in [`Launch`].
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
    /// `height` rows of `width` elements of `elem_size` bytes, `pitch` apart.
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

/// A graph to instantiate: a DAG the VM layer has checked.
#[derive(Debug, Clone)]
pub struct GraphSpec<'a> {
    pub nodes: Vec<GraphNode<'a>>,
    /// `deps[i]`: the nodes node `i` runs after.
    pub deps: Vec<Vec<u32>>,
    /// Every node once, each after its dependencies.
    pub order: Vec<u32>,
}

/// Where guest RAM lives in this process, for engines that register it with
/// the driver so copies from it need no host copy.
#[derive(Debug, Clone, Copy)]
pub struct HostRegion {
    pub addr: *mut u8,
    pub len: usize,
}

// SAFETY: a HostRegion only describes a mapping owned by the vhost-user
// memory table; engines use it to register or unregister that mapping.
unsafe impl Send for HostRegion {}

/// A VM's device memory as the engine holds it: the allocations the guest
/// made, each counted at its footprint on the device (`alloc_footprint`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residency {
    /// Bytes on the GPU.
    pub resident: u64,
    /// Bytes swapped out to host RAM (`swap_out`), their device addresses
    /// still reserved.
    pub evicted: u64,
}

/// A point in one stream's submitted work, which the watchdog's own thread
/// checks while the engine's thread may be blocked waiting for that very work
/// (`watchdog.rs`): so it needs nothing from the engine.
pub trait WorkMark: Send {
    /// The GPU got past the mark: the work before it is done, or ended in
    /// an error.
    fn reached(&self) -> bool;
}

/// Every call happens on the thread that serves the VM's queues, with the
/// context that `ctx_set_current` chose current. Copies are synchronous with
/// respect to the host memory unless `async_` is set, in which case the engine
/// may return before the copy is done (the guest owns that memory's
/// lifetime, as with pinned memory natively).
pub trait Engine: Send {
    fn kind(&self) -> EngineKind;
    fn device_info(&self) -> &DeviceInfo;

    /// Guest RAM was (re)mapped: make these regions fast to copy from/to.
    fn register_host_memory(&mut self, regions: &[HostRegion]) -> EngineResult<()>;
    /// Guest RAM is about to be unmapped.
    fn unregister_host_memory(&mut self, regions: &[HostRegion]) -> EngineResult<()>;

    fn ctx_create(&mut self, flags: u32) -> EngineResult<EngineCtx>;
    /// Destroys a context and everything created in it.
    fn ctx_destroy(&mut self, ctx: EngineCtx) -> EngineResult<()>;
    fn ctx_set_current(&mut self, ctx: EngineCtx) -> EngineResult<()>;
    fn ctx_synchronize(&mut self) -> EngineResult<()>;

    /// The sticky error (`protocol::cuda::is_sticky`) that has made every
    /// context of this engine unusable, if one has: a kernel faulted, and
    /// the driver now fails every call of the process with that error. The
    /// VM layer asks after a call failed and before each batch, so it must
    /// be cheap when nothing happened.
    fn lost(&mut self) -> Option<CuResult>;
    /// A mark after the work submitted so far on `stream` of the current
    /// context, for the watchdog.
    fn mark(&mut self, stream: EngineStream) -> EngineResult<Box<dyn WorkMark>>;

    /// Free and total memory of the physical device.
    fn mem_get_info(&mut self) -> EngineResult<(u64, u64)>;
    fn mem_alloc(&mut self, size: u64) -> EngineResult<u64>;
    fn mem_free(&mut self, dptr: u64) -> EngineResult<()>;
    /// Bytes an allocation of `size` takes on the device.
    fn alloc_footprint(&self, size: u64) -> u64;
    fn residency(&self) -> Residency;
    /// Whether allocation `dptr` is on the GPU (not swapped out).
    fn mem_is_resident(&self, _dptr: u64) -> bool {
        true
    }
    /// Waits for all work, then copies allocations to host RAM and gives
    /// their device memory back (zeroed first, as any freed memory), largest
    /// first, until at most `keep` bytes stay resident, moving no more than
    /// `max_bytes` in all (an allocation that would pass it is passed over,
    /// so `keep` may not be reached). Their device addresses stay
    /// reserved, so pointers the guest holds (also inside its own data) stay
    /// valid. Returns the bytes moved; on an error, what was moved stays
    /// moved and the rest stays resident, nothing is lost.
    fn swap_out(&mut self, keep: u64, max_bytes: u64) -> EngineResult<u64>;
    /// The bytes that the smallest allocation `swap_out` could move takes
    /// (what a `max_bytes` below it would pass over); 0 when none could move.
    fn least_swap_out(&self) -> u64 {
        0
    }
    /// A hint that a `swap_out` of about `bytes` is likely soon: the engine
    /// may make host memory ready for it meanwhile, so that the swap-out only
    /// copies. 0 withdraws the hint. Never blocks on the preparation.
    fn prepare_swap_out(&mut self, _bytes: u64) {}
    /// Brings swapped-out allocations back at their addresses, in address
    /// order, no more than `max_bytes` in all (`u64::MAX`: all of them): the
    /// first that would pass it stays out with the rest, so less than
    /// [`next_swap_in`](Self::next_swap_in) moves nothing. Returns the bytes
    /// moved; on an error (device memory full), what did not come back stays
    /// in host RAM, intact, for a later try.
    fn swap_in(&mut self, max_bytes: u64) -> EngineResult<u64>;
    /// The device bytes of the allocation [`swap_in`](Self::swap_in) brings
    /// back first (0: none is swapped out): the least room a restore needs.
    fn next_swap_in(&self) -> u64;
    fn memcpy_htod(&mut self, dst: u64, src: HostSrc<'_>, stream: EngineStream, async_: bool) -> EngineResult<()>;
    fn memcpy_dtoh(&mut self, dst: HostDst<'_>, src: u64, stream: EngineStream, async_: bool) -> EngineResult<()>;
    fn memcpy_dtod(&mut self, dst: u64, src: u64, len: u64, stream: EngineStream, async_: bool) -> EngineResult<()>;
    /// Sets `count` elements of `elem_size` (1, 2 or 4) bytes to `value`.
    fn memset(
        &mut self,
        dst: u64,
        value: u32,
        elem_size: u32,
        count: u64,
        stream: EngineStream,
        async_: bool,
    ) -> EngineResult<()>;

    fn module_load(&mut self, image: &[u8]) -> EngineResult<EngineModule>;
    fn module_unload(&mut self, module: EngineModule) -> EngineResult<()>;
    fn module_get_function(&mut self, module: EngineModule, name: &str) -> EngineResult<(EngineFunc, FunctionInfo)>;
    /// Device address and size of a module global.
    fn module_get_global(&mut self, module: EngineModule, name: &str) -> EngineResult<(u64, u64)>;
    fn func_set_attribute(&mut self, func: EngineFunc, attr: u32, value: i32) -> EngineResult<()>;
    fn launch(&mut self, func: EngineFunc, launch: &Launch<'_>) -> EngineResult<()>;

    fn stream_create(&mut self, flags: u32, priority: i32) -> EngineResult<EngineStream>;
    fn stream_destroy(&mut self, stream: EngineStream) -> EngineResult<()>;
    fn stream_synchronize(&mut self, stream: EngineStream) -> EngineResult<()>;
    /// `Err(CuError(CUDA_ERROR_NOT_READY))` while work is pending.
    fn stream_query(&mut self, stream: EngineStream) -> EngineResult<()>;
    fn stream_wait_event(&mut self, stream: EngineStream, event: EngineEvent, flags: u32) -> EngineResult<()>;

    fn event_create(&mut self, flags: u32) -> EngineResult<EngineEvent>;
    fn event_destroy(&mut self, event: EngineEvent) -> EngineResult<()>;
    fn event_record(&mut self, event: EngineEvent, stream: EngineStream) -> EngineResult<()>;
    fn event_query(&mut self, event: EngineEvent) -> EngineResult<()>;
    fn event_synchronize(&mut self, event: EngineEvent) -> EngineResult<()>;
    fn event_elapsed_ms(&mut self, start: EngineEvent, end: EngineEvent) -> EngineResult<f32>;

    /// Instantiates `graph` in the current context. `host[i]` is the guest
    /// memory of the host copies that name index `i`.
    fn graph_instantiate(&mut self, graph: &GraphSpec<'_>, host: &[GuestSpan<'_>]) -> EngineResult<EngineGraphExec>;
    fn graph_exec_destroy(&mut self, exec: EngineGraphExec) -> EngineResult<()>;
    /// Launches an instantiated graph on `stream` of the current context.
    /// `host` is the guest memory of its host copies as it is now: the same
    /// ranges as at instantiation, resolved again.
    fn graph_launch(&mut self, exec: EngineGraphExec, stream: EngineStream, host: &[GuestSpan<'_>])
        -> EngineResult<()>;
    /// Gives node `index` new parameters; `node` is of the same kind and
    /// not a host copy.
    fn graph_exec_update_node(&mut self, exec: EngineGraphExec, index: u32, node: &GraphNode<'_>) -> EngineResult<()>;
    /// One occupancy answer (`protocol::OCCUPANCY_*`) for `func`.
    fn occupancy(&mut self, func: EngineFunc, kind: u32, flags: u32, item: &OccupancyItem) -> EngineResult<u64>;
    // The virtual-memory API, on which the guest's own use of it and the
    // stream-ordered pools are built (`vm/vmm.rs`, `vm/pools.rs`). Its
    // memory is pinned: `swap_out` never moves it, and it counts as
    // resident in `residency` (and as used in `mem_get_info`). The VM layer
    // checks every range and handle first, unmaps before it releases, and
    // zeroes physical memory (`phys_zero`) before it releases it.

    /// The size and alignment every range of this API is a multiple of, or
    /// `None` where the engine cannot offer the API.
    fn vmm_granularity(&self) -> Option<u64> {
        None
    }
    /// Reserves `size` device addresses at a multiple of `align` (a power
    /// of two, at least the granularity), near `hint` if it is not 0.
    fn va_reserve(&mut self, _size: u64, _align: u64, _hint: u64) -> EngineResult<u64> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
    /// Gives back a whole reservation, with nothing mapped in it.
    fn va_free(&mut self, _va: u64, _size: u64) -> EngineResult<()> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
    /// `size` bytes (a multiple of the granularity) of device memory.
    fn phys_create(&mut self, _size: u64) -> EngineResult<EnginePhys> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
    /// Zeroes all of `phys` once the device's work is done; `mapped_at` is
    /// an address where all of it is mapped, if there is one.
    fn phys_zero(&mut self, _phys: EnginePhys, _mapped_at: Option<u64>) -> EngineResult<()> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
    /// Gives back physical memory that is mapped nowhere.
    fn phys_release(&mut self, _phys: EnginePhys) -> EngineResult<()> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
    /// Maps the first `size` bytes of `phys` at `va`, inside a reservation
    /// and over nothing mapped, readable and writable by the device from
    /// every context.
    fn mem_map(&mut self, _va: u64, _size: u64, _phys: EnginePhys) -> EngineResult<()> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
    /// Unmaps one whole mapping, once the device's work is done; the range
    /// stays reserved.
    fn mem_unmap(&mut self, _va: u64, _size: u64) -> EngineResult<()> {
        Err(CuError(protocol::cuda::CUDA_ERROR_NOT_SUPPORTED))
    }
}
