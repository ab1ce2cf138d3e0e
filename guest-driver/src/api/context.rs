//! Contexts: the primary context (guest id `PRIMARY_CTX`, created lazily by
//! the backend, retained and released in the guest), created contexts (a
//! fresh guest id each, `CtxCreate` on the backend), and each thread's
//! context stack. Limits, cache and shared-memory configuration are
//! remembered in the guest and not forwarded.

use super::device::check_device;
use super::state::{self, CtxInfo};
use super::types::*;
use super::{ffi, handle, id_of, session, set_opt, CuRes, Out};
use crate::client::Client;
use protocol::cuda::*;
use protocol::{CtxCreate, Id, Opcode, PRIMARY_CTX};
use std::ffi::{c_int, c_uint, c_ulonglong, c_void};
use zerocopy::little_endian::{U32, U64};

/// `cuCtxGetApiVersion`'s answer: the context API has been at 3.2's level
/// since CUDA 3.2.
const CTX_API_VERSION: c_uint = 3020;
/// Stream priorities as Hopper reports them: 0 is the least, -5 the greatest.
pub const LEAST_PRIORITY: c_int = 0;
pub const GREATEST_PRIORITY: c_int = -5;

/// The context a `CUcontext` argument names, NULL meaning the current one.
pub(crate) fn ctx_or_current(ctx: CUcontext) -> CuRes<u64> {
    session()?;
    let st = state::lock();
    match id_of(ctx) {
        0 => st.current(),
        id if st.ctx_valid(id) => Ok(id),
        _ => Err(CUDA_ERROR_INVALID_CONTEXT),
    }
}

/// Ends the backend's primary context and forgets what the guest knew of it.
/// The backend creates the primary context on first use, so it is touched
/// (synchronized) first: destroying one that was never created would leave
/// a spurious deferred error.
fn end_primary(c: &Client) -> CuRes {
    state::lock().purge_ctx(PRIMARY_CTX);
    c.enqueue(Opcode::CtxSynchronize, 0, PRIMARY_CTX, &[0u8; 0], &[])?;
    c.enqueue(Opcode::CtxDestroy, 0, PRIMARY_CTX, &Id { id: U64::new(PRIMARY_CTX) }, &[])
}

/// Calls the destructors of the values kept with context `ctx` (the
/// runtime frees its per-context state in them) and forgets the values. The
/// context is still valid while they run, and no lock is held: a destructor
/// may call back into the driver.
pub(crate) fn run_local_destructors(ctx: u64) {
    let values = match state::lock().ctxs.get_mut(&ctx) {
        Some(info) => std::mem::take(&mut info.local),
        None => return,
    };
    for v in values {
        if let Some(d) = v.destructor {
            // SAFETY: the runtime registered this destructor for this value
            // and context (context-local storage), to be called as the
            // context ends.
            unsafe { d(handle(ctx), v.key as *mut c_void, v.value as *mut c_void) };
        }
    }
}

// ---- primary context ---------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pctx) }?;
        check_device(dev)?;
        let mut st = state::lock();
        st.primary.refcount += 1;
        let flags = st.primary.flags;
        st.ctxs.entry(PRIMARY_CTX).or_insert_with(|| CtxInfo::new(flags));
        out.set(handle(PRIMARY_CTX));
        Ok(())
    })
}

fn primary_release(dev: CUdevice) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        let c = session()?;
        {
            let mut st = state::lock();
            if st.primary.refcount == 0 {
                return Err(CUDA_ERROR_INVALID_CONTEXT);
            }
            st.primary.refcount -= 1;
            if st.primary.refcount > 0 {
                return Ok(());
            }
        }
        run_local_destructors(PRIMARY_CTX);
        {
            let mut st = state::lock();
            // A destructor may have retained it again.
            if st.primary.refcount > 0 {
                return Ok(());
            }
            st.ctxs.remove(&PRIMARY_CTX);
        }
        end_primary(c)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    primary_release(dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    primary_release(dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) -> CUresult {
    ffi(|| {
        // SAFETY: output arguments per the CUDA API.
        let (f, a) = unsafe { (Out::new(flags)?, Out::new(active)?) };
        check_device(dev)?;
        let st = state::lock();
        f.set(st.primary.flags);
        a.set((st.primary.refcount > 0) as c_int);
        Ok(())
    })
}

/// The scheduling and other flags are remembered and reported; the backend
/// creates the primary context with its own defaults.
fn primary_set_flags(dev: CUdevice, flags: c_uint) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        if flags & !CU_CTX_FLAGS_MASK != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut st = state::lock();
        st.primary.flags = flags;
        if let Some(c) = st.ctxs.get_mut(&PRIMARY_CTX) {
            c.flags = flags;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags(dev: CUdevice, flags: c_uint) -> CUresult {
    primary_set_flags(dev, flags)
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, flags: c_uint) -> CUresult {
    primary_set_flags(dev, flags)
}

/// Destroys the primary context's state (allocations, modules, streams,
/// events). Its retain count stays, so the handle keeps working: the backend
/// makes a fresh primary context on next use.
fn primary_reset(dev: CUdevice) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        let c = session()?;
        run_local_destructors(PRIMARY_CTX);
        {
            let mut st = state::lock();
            let flags = st.primary.flags;
            if let Some(info) = st.ctxs.get_mut(&PRIMARY_CTX) {
                *info = CtxInfo::new(flags);
            }
        }
        end_primary(c)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    primary_reset(dev)
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    primary_reset(dev)
}

// ---- created contexts --------------------------------------------------

/// Creates a context on the backend and pushes it, as cuCtxCreate does.
fn ctx_create(out: Out<CUcontext>, flags: c_uint, dev: CUdevice) -> CuRes {
    check_device(dev)?;
    if flags & !CU_CTX_FLAGS_MASK != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let c = session()?;
    let id = c.new_id();
    let p = CtxCreate { ctx_id: U64::new(id), flags: U32::new(flags), _pad: U32::new(0) };
    c.call(Opcode::CtxCreate, 0, id, &p, &[])?;
    state::lock().ctxs.insert(id, CtxInfo::new(flags));
    state::push_ctx(id);
    out.set(handle(id));
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v2(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pctx) }?;
        ctx_create(out, flags, dev)
    })
}

/// The pre-3.2 name; same arguments.
#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { cuCtxCreate_v2(pctx, flags, dev) }
}

/// With execution-affinity parameters (CUDA 11.4): none are supported.
#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut CUcontext,
    paramsArray: *mut c_void,
    numParams: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pctx) }?;
        if numParams < 0 || (numParams > 0 && paramsArray.is_null()) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if numParams > 0 {
            crate::log::unsupported("cuCtxCreate with execution affinity");
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        ctx_create(out, flags, dev)
    })
}

/// With `CUctxCreateParams` (CUDA 12.5; `cuCtxCreate` in CUDA 13's cuda.h):
/// NULL params, or params asking for neither execution affinity nor CIG.
#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut CUcontext,
    ctxCreateParams: *mut CUctxCreateParams,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pctx) }?;
        if !ctxCreateParams.is_null() {
            // SAFETY: non-NULL, so a CUctxCreateParams per the CUDA API.
            let p = unsafe { ctxCreateParams.read_unaligned() };
            if p.numExecAffinityParams < 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if p.numExecAffinityParams > 0 || !p.cigParams.is_null() {
                crate::log::unsupported("cuCtxCreate with execution affinity or CIG parameters");
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        ctx_create(out, flags, dev)
    })
}

fn ctx_destroy(ctx: CUcontext) -> CUresult {
    ffi(|| {
        let c = session()?;
        let id = id_of(ctx);
        if id == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if state::is_primary(id) || !state::lock().ctx_valid(id) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        run_local_destructors(id);
        {
            let mut st = state::lock();
            if st.ctxs.remove(&id).is_none() {
                return Err(CUDA_ERROR_INVALID_CONTEXT);
            }
            st.purge_ctx(id);
        }
        state::drop_from_stack(id);
        c.enqueue(Opcode::CtxDestroy, 0, id, &Id { id: U64::new(id) }, &[])
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy(ctx: CUcontext) -> CUresult {
    ctx_destroy(ctx)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    ctx_destroy(ctx)
}

// ---- the context stack -------------------------------------------------

fn ctx_push(ctx: CUcontext) -> CUresult {
    ffi(|| {
        session()?;
        let id = id_of(ctx);
        if id == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if !state::lock().ctx_valid(id) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        state::push_ctx(id);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent(ctx: CUcontext) -> CUresult {
    ctx_push(ctx)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    ctx_push(ctx)
}

/// # Safety
/// `pctx` is NULL or writable.
unsafe fn ctx_pop(pctx: *mut CUcontext) -> CUresult {
    ffi(|| {
        // SAFETY: optional output argument per the CUDA API.
        let out = unsafe { Out::optional(pctx) };
        session()?;
        let id = state::pop_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        set_opt(out, handle(id));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent(pctx: *mut CUcontext) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { ctx_pop(pctx) }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { ctx_pop(pctx) }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pctx) }?;
        session()?;
        out.set(handle(state::current_id().unwrap_or(0)));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    ffi(|| {
        session()?;
        match id_of(ctx) {
            0 => state::set_current(None),
            id => {
                if !state::lock().ctx_valid(id) {
                    return Err(CUDA_ERROR_INVALID_CONTEXT);
                }
                state::set_current(Some(id));
            }
        }
        Ok(())
    })
}

// ---- queries and settings of the current context -----------------------

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(device) }?;
        ctx_or_current(std::ptr::null_mut())?;
        out.set(0);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice_v2(device: *mut CUdevice, ctx: CUcontext) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(device) }?;
        ctx_or_current(ctx)?;
        out.set(0);
        Ok(())
    })
}

fn ctx_synchronize(ctx: CUcontext) -> CUresult {
    ffi(|| {
        let id = ctx_or_current(ctx)?;
        super::capture::check_ctx_sync(id)?;
        let c = session()?;
        c.sync_call(Opcode::CtxSynchronize, 0, id, &[0u8; 0])?;
        super::stream_alloc::synchronized(c, id, None);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    ctx_synchronize(std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize_v2(ctx: CUcontext) -> CUresult {
    ctx_synchronize(ctx)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetApiVersion(ctx: CUcontext, version: *mut c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(version) }?;
        ctx_or_current(ctx)?;
        out.set(CTX_API_VERSION);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetId(ctx: CUcontext, ctxId: *mut c_ulonglong) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(ctxId) }?;
        out.set(ctx_or_current(ctx)?);
        Ok(())
    })
}

/// Runs `f` on the current context's settings.
fn with_current<T>(f: impl FnOnce(&mut CtxInfo) -> CuRes<T>) -> CuRes<T> {
    session()?;
    let mut st = state::lock();
    let id = st.current()?;
    let info = st.ctxs.get_mut(&id).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    f(info)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(flags) }?;
        out.set(with_current(|c| Ok(c.flags))?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetFlags(flags: c_uint) -> CUresult {
    ffi(|| {
        if flags & !CU_CTX_FLAGS_MASK != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        with_current(|c| {
            c.flags = flags;
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    leastPriority: *mut c_int,
    greatestPriority: *mut c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: optional output arguments per the CUDA API.
        let (l, g) = unsafe { (Out::optional(leastPriority), Out::optional(greatestPriority)) };
        session()?;
        set_opt(l, LEAST_PRIORITY);
        set_opt(g, GREATEST_PRIORITY);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetLimit(pvalue: *mut usize, limit: c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pvalue) }?;
        let v = with_current(|c| c.limits.get(limit as usize).copied().ok_or(CUDA_ERROR_INVALID_VALUE))?;
        out.set(v);
        Ok(())
    })
}

/// Remembered and reported back; the backend's context keeps its own limits.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSetLimit(limit: c_uint, value: usize) -> CUresult {
    ffi(|| {
        with_current(|c| {
            *c.limits.get_mut(limit as usize).ok_or(CUDA_ERROR_INVALID_VALUE)? = value;
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCacheConfig(pconfig: *mut c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pconfig) }?;
        out.set(with_current(|c| Ok(c.cache_config))?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCacheConfig(config: c_uint) -> CUresult {
    ffi(|| {
        if config > CU_FUNC_CACHE_MAX {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        with_current(|c| {
            c.cache_config = config;
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetSharedMemConfig(pConfig: *mut c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pConfig) }?;
        out.set(with_current(|c| Ok(c.shmem_config))?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetSharedMemConfig(config: c_uint) -> CUresult {
    ffi(|| {
        if config > CU_SHARED_MEM_CONFIG_MAX {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        with_current(|c| {
            c.shmem_config = config;
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxResetPersistingL2Cache() -> CUresult {
    ffi(|| with_current(|_| Ok(())))
}
