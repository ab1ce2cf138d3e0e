//! The guest's own tables of what the process created (contexts, device
//! allocations, pinned and registered host ranges, streams, events, modules,
//! functions, libraries) and each thread's context stack. The exports check
//! arguments here before sending anything, so invalid calls fail at once as
//! they do natively; the backend checks everything again.

use super::types::*;
use super::{id_of, CuRes};
use protocol::cuda::*;
use protocol::{NUM_FUNC_ATTRS, PRIMARY_CTX, STREAM_PER_THREAD};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CString};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// Called with (context, key, value) when a context that holds a
/// context-local value ends (destroyed, or the primary context reset or
/// released for the last time).
pub type LocalDestructor = unsafe extern "C" fn(CUcontext, *mut c_void, *mut c_void);

/// A value the runtime keeps with a context (the context-local storage
/// export table): the runtime's own per-context state, found again by key.
#[derive(Debug, Clone, Copy)]
pub struct LocalValue {
    pub key: usize,
    pub value: usize,
    pub destructor: Option<LocalDestructor>,
}

/// Per-context settings the guest answers itself.
#[derive(Debug, Clone)]
pub struct CtxInfo {
    pub flags: u32,
    pub limits: [usize; CU_LIMIT_MAX as usize],
    pub cache_config: u32,
    pub shmem_config: u32,
    pub local: Vec<LocalValue>,
}

impl CtxInfo {
    pub fn new(flags: u32) -> Self {
        // Hopper's defaults, as a fresh native context reports them.
        let mut limits = [0usize; CU_LIMIT_MAX as usize];
        limits[CU_LIMIT_STACK_SIZE as usize] = 1024;
        limits[CU_LIMIT_PRINTF_FIFO_SIZE as usize] = 1 << 20;
        limits[CU_LIMIT_MALLOC_HEAP_SIZE as usize] = 8 << 20;
        limits[CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH as usize] = 2;
        limits[CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT as usize] = 2048;
        limits[CU_LIMIT_MAX_L2_FETCH_GRANULARITY as usize] = 64;
        CtxInfo { flags, limits, cache_config: 0, shmem_config: 0, local: Vec::new() }
    }
}

/// The primary context's retain count and flags, kept in the guest.
#[derive(Debug, Default)]
pub struct Primary {
    pub refcount: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocKind {
    /// From cuMemAlloc: freeable.
    Device,
    /// A module global: lives as long as its module.
    Global { module: u64 },
    /// From a memory pool (cuMemAllocAsync): lives until freed, whatever
    /// happens to the context it was allocated in.
    Pool { pool: u64 },
    /// A mapping of the virtual-memory API (never in `State::allocs`; the
    /// mappings are in `State::vmm`).
    Mapped { handle: u64 },
}

#[derive(Debug, Clone, Copy)]
pub struct Alloc {
    pub size: u64,
    pub ctx: u64,
    pub kind: AllocKind,
}

/// Host memory CUDA knows about: pinned (cuMemAllocHost/cuMemHostAlloc,
/// backed by a shared buffer) or registered (cuMemHostRegister, copied
/// through staging).
#[derive(Debug, Clone, Copy)]
pub struct HostRange {
    pub len: usize,
    pub flags: u32,
    pub ctx: u64,
    pub pinned: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct StreamInfo {
    pub ctx: u64,
    pub flags: u32,
    pub priority: i32,
}

#[derive(Debug, Clone, Copy)]
pub struct EventInfo {
    pub ctx: u64,
    pub flags: u32,
    pub recorded: bool,
}

/// One kernel parameter in the packed buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub offset: u32,
    pub size: u32,
}

/// Bytes of the packed parameter buffer a layout needs.
pub fn param_bytes(params: &[Param]) -> usize {
    params.iter().map(|p| p.offset as usize + p.size as usize).max().unwrap_or(0)
}

#[derive(Debug, Default)]
pub struct ModuleInfo {
    pub ctx: u64,
    /// Kernel layouts read from the image's cubin (`.nv.info`), when it has one.
    pub guest_layouts: Option<HashMap<String, Vec<Param>>>,
    /// Every kernel name the image holds, where the guest could read them.
    pub kernel_names: Option<Vec<String>>,
    /// Functions already looked up, by name: cuModuleGetFunction returns the
    /// same handle each time, as natively.
    pub functions: HashMap<String, u64>,
    /// The library this module stands for, if any.
    pub library: Option<u64>,
}

/// A library (cuLibraryLoadData): context-independent, as natively. Its
/// image is kept so that every context that uses it gets its own module,
/// loaded on first use; a context reset loses the modules, not the library.
#[derive(Debug)]
pub struct LibraryInfo {
    pub image: Arc<[u8]>,
    /// The library's module in each context that has used it.
    pub modules: HashMap<u64, u64>,
    /// Kernel handles handed out, by name: the same name gives the same
    /// handle, as natively.
    pub kernels: HashMap<String, u64>,
    /// The device has no binary in the image (the load answered
    /// CUDA_ERROR_NO_BINARY_FOR_GPU): kept as natively under lazy loading,
    /// where a library loads only when a function is needed, so that error
    /// comes from the first use instead of the load.
    pub no_binary: bool,
}

/// A kernel of a library. In each context it stands for that context's
/// function of the same name.
#[derive(Debug)]
pub struct KernelInfo {
    pub library: u64,
    pub name: CString,
    /// Its function in each context that has used it.
    pub functions: HashMap<u64, u64>,
}

#[derive(Debug)]
pub struct FuncInfo {
    pub module: u64,
    pub ctx: u64,
    pub name: CString,
    pub attrs: [i32; NUM_FUNC_ATTRS],
    pub params: Vec<Param>,
    pub param_bytes: usize,
    pub cache_config: u32,
}

#[derive(Debug, Default)]
pub struct State {
    pub ctxs: HashMap<u64, CtxInfo>,
    pub primary: Primary,
    pub allocs: BTreeMap<u64, Alloc>,
    pub host: BTreeMap<usize, HostRange>,
    pub streams: HashMap<u64, StreamInfo>,
    pub events: HashMap<u64, EventInfo>,
    pub modules: HashMap<u64, ModuleInfo>,
    pub functions: HashMap<u64, FuncInfo>,
    pub libraries: HashMap<u64, LibraryInfo>,
    pub kernels: HashMap<u64, KernelInfo>,
    /// The virtual-memory API's reservations, handles and mappings.
    pub vmm: super::vmm::VmmState,
    /// Memory pools by id, the default pool among them once used.
    pub pools: HashMap<u64, super::mempool::PoolInfo>,
    /// The device's current pool (cuDeviceSetMemPool); 0 for the default.
    pub current_pool: u64,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| Mutex::new(State::default()));

/// The tables. Never held across a call that waits for the backend.
pub fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// The device allocation (module global, pool allocation or mapping)
    /// containing `addr`.
    pub fn alloc_containing(&self, addr: u64) -> Option<(u64, Alloc)> {
        let found = self.allocs.range(..=addr).next_back().filter(|(base, a)| addr - **base < a.size.max(1));
        match found {
            Some((base, a)) => Some((*base, *a)),
            None => super::vmm::as_alloc(&self.vmm, addr),
        }
    }

    /// `[addr, addr + len)` lies inside one device allocation, or in
    /// contiguous mappings the device was given access to.
    pub fn check_device_range(&self, addr: u64, len: u64) -> CuRes<(u64, Alloc)> {
        let (base, a) = self.alloc_containing(addr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if let AllocKind::Mapped { .. } = a.kind {
            return if self.vmm.check_range(addr, len) { Ok((base, a)) } else { Err(CUDA_ERROR_INVALID_VALUE) };
        }
        let end = addr.checked_add(len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if end > base + a.size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok((base, a))
    }

    /// The pinned or registered host range containing `addr`.
    pub fn host_containing(&self, addr: usize) -> Option<(usize, HostRange)> {
        let (base, h) = self.host.range(..=addr).next_back()?;
        (addr - base < h.len).then_some((*base, *h))
    }

    pub fn ctx_valid(&self, id: u64) -> bool {
        self.ctxs.contains_key(&id)
    }

    /// The calling thread's current context, checked against the table.
    pub fn current(&self) -> CuRes<u64> {
        match current_id() {
            Some(id) if self.ctx_valid(id) => Ok(id),
            _ => Err(CUDA_ERROR_INVALID_CONTEXT),
        }
    }

    /// A `CUstream` argument as (stream id, context the command runs in).
    /// NULL, `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` run in the current
    /// context; a created stream runs in its own. `ptsz`: the entry point is
    /// a `_ptsz`/`_ptds` one, where NULL means the per-thread stream.
    pub fn resolve_stream(&self, h: CUstream, ptsz: bool) -> CuRes<(u64, u64)> {
        match id_of(h) {
            0 if ptsz => Ok((STREAM_PER_THREAD, self.current()?)),
            id @ (0 | CU_STREAM_LEGACY | CU_STREAM_PER_THREAD) => Ok((id, self.current()?)),
            id => {
                let s = self.streams.get(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
                Ok((id, s.ctx))
            }
        }
    }

    /// Forgets everything created in context `ctx` (it was destroyed or
    /// reset). Host ranges stay: their buffers belong to the session, as
    /// pool and virtual memory belong to the process; the frees the
    /// context's streams ordered are done (its work was waited for).
    pub fn purge_ctx(&mut self, ctx: u64) {
        self.allocs.retain(|_, a| a.ctx != ctx || matches!(a.kind, AllocKind::Pool { .. }));
        for p in self.pools.values_mut() {
            p.completed(|(c, _)| c == ctx);
        }
        self.streams.retain(|_, s| s.ctx != ctx);
        self.events.retain(|_, e| e.ctx != ctx);
        let dead: Vec<u64> = self.modules.iter().filter(|(_, m)| m.ctx == ctx).map(|(k, _)| *k).collect();
        for m in dead {
            self.forget_module(m);
        }
        super::graph::purge_ctx(ctx);
    }

    /// Forgets a module with its functions and globals. A library it
    /// belonged to stays, and loads again where it is used next.
    pub fn forget_module(&mut self, id: u64) -> Option<ModuleInfo> {
        let m = self.modules.remove(&id)?;
        self.functions.retain(|_, f| f.module != id);
        self.allocs.retain(|_, a| a.kind != AllocKind::Global { module: id });
        let State { libraries, kernels, functions, .. } = self;
        if let Some(lib) = m.library.and_then(|l| libraries.get_mut(&l)) {
            lib.modules.retain(|_, module| *module != id);
            for k in lib.kernels.values() {
                if let Some(k) = kernels.get_mut(k) {
                    k.functions.retain(|_, f| functions.contains_key(f));
                }
            }
        }
        Some(m)
    }

    /// The function a launch of `f` in context `ctx` runs: `f` itself, or,
    /// where `f` is a library kernel (CUDA lets a `CUkernel` stand in for a
    /// `CUfunction`), its function in `ctx`; `None` while that is not known.
    pub fn launchable(&self, f: u64, ctx: u64) -> Option<u64> {
        if self.functions.contains_key(&f) {
            return Some(f);
        }
        self.kernels.get(&f)?.functions.get(&ctx).copied()
    }
}

thread_local! {
    /// This thread's context stack; the top is the current context.
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

pub fn current_id() -> Option<u64> {
    STACK.with(|s| s.borrow().last().copied())
}

pub fn push_ctx(id: u64) {
    STACK.with(|s| s.borrow_mut().push(id));
}

pub fn pop_ctx() -> Option<u64> {
    STACK.with(|s| s.borrow_mut().pop())
}

/// cuCtxSetCurrent: replaces the top (pushes onto an empty stack); `None`
/// pops.
pub fn set_current(id: Option<u64>) {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        match id {
            Some(id) => match s.last_mut() {
                Some(top) => *top = id,
                None => s.push(id),
            },
            None => {
                s.pop();
            }
        }
    });
}

/// Removes a destroyed context from this thread's stack.
pub fn drop_from_stack(id: u64) {
    STACK.with(|s| s.borrow_mut().retain(|&c| c != id));
}

/// Whether `id` is the primary context.
pub fn is_primary(id: u64) -> bool {
    id == PRIMARY_CTX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ranges_are_checked_against_allocations() {
        let mut st = State::default();
        st.allocs.insert(0x1000, Alloc { size: 0x100, ctx: 1, kind: AllocKind::Device });
        assert!(st.check_device_range(0x1000, 0x100).is_ok());
        assert!(st.check_device_range(0x10f0, 0x10).is_ok());
        assert_eq!(st.check_device_range(0x10f0, 0x11).unwrap_err(), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(st.check_device_range(0x0fff, 1).unwrap_err(), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(st.check_device_range(0x1100, 1).unwrap_err(), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(st.check_device_range(u64::MAX, 2).unwrap_err(), CUDA_ERROR_INVALID_VALUE);
    }

    #[test]
    fn context_stack_push_pop_and_set() {
        assert_eq!(current_id(), None);
        set_current(Some(5));
        assert_eq!(current_id(), Some(5));
        push_ctx(7);
        set_current(Some(9));
        assert_eq!(pop_ctx(), Some(9));
        assert_eq!(current_id(), Some(5));
        set_current(None);
        assert_eq!(current_id(), None);
        set_current(None);
        assert_eq!(pop_ctx(), None);
    }
}
