//! Stream-ordered allocation: cuMemAllocAsync, cuMemFreeAsync and memory
//! pools, the device's default pool (made on first use) and those the
//! program creates. The guest places each allocation in its pool's address
//! window itself (`mempool.rs`), so an allocation in memory the pool already
//! holds is queued like a launch; one that needs new memory waits for the
//! backend, which charges it to the VM's quota and answers
//! CUDA_ERROR_OUT_OF_MEMORY past it. Frees are queued; the backend orders a
//! reuse after its free on the device. At a stream or context
//! synchronization the guest gives back what its pools hold above their
//! release thresholds, as natively.

use super::device::check_device;
use super::mempool::{stream_key, PoolInfo};
use super::state::{self, Alloc, AllocKind};
use super::types::*;
use super::vmm::{check_location, current_or_primary, granularity};
use super::{ffi, handle, id_of, session, CuRes, Out};
use crate::client::Client;
use protocol::cuda::*;
use protocol::{
    Id, MemAllocAsync, MemFreeAsync, MemPoolCreateReply, MemPoolRelease, Opcode, PoolSegment, CMD_FLAG_ASYNC,
    DEFAULT_MEM_POOL,
};
use std::ffi::{c_int, c_void};
use std::sync::{Mutex, MutexGuard};
use zerocopy::little_endian::U64;
use zerocopy::FromBytes;

pub type CUmemoryPool = *mut c_void;

/// Held from a change of the pools' tables until the commands that carry it
/// are queued, so that the backend gets them in the order the tables had
/// them: another thread cannot, say, place an allocation in a segment this
/// one just took out to release, with its command ahead of the release.
static ORDER: Mutex<()> = Mutex::new(());

fn ordered() -> MutexGuard<'static, ()> {
    ORDER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks the backend for pool `id`'s window and records the pool.
fn create_pool(c: &Client, id: u64, max_size: u64) -> CuRes {
    let g = granularity(c)?;
    let reply = c.call(Opcode::MemPoolCreate, 0, current_or_primary(), &Id { id: U64::new(id) }, &[])?;
    let r = MemPoolCreateReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?.0;
    state::lock().pools.insert(id, PoolInfo::new(r.base.get(), r.len.get(), g, max_size));
    Ok(())
}

/// The default pool, made on first use.
fn default_pool(c: &Client) -> CuRes<u64> {
    // Two threads asking at once make it once.
    static MAKING: Mutex<()> = Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    if !state::lock().pools.contains_key(&DEFAULT_MEM_POOL) {
        create_pool(c, DEFAULT_MEM_POOL, 0)?;
    }
    Ok(DEFAULT_MEM_POOL)
}

/// The device's current pool.
fn current_pool(c: &Client) -> CuRes<u64> {
    let current = state::lock().current_pool;
    match current {
        0 => default_pool(c),
        id => Ok(id),
    }
}

/// A pool handle's id, if the pool exists and was not destroyed.
fn pool_id(pool: CUmemoryPool) -> CuRes<u64> {
    let id = id_of(pool);
    let st = state::lock();
    st.pools.get(&id).filter(|p| !p.destroyed).map(|_| id).ok_or(CUDA_ERROR_INVALID_VALUE)
}

/// Gives back every segment of every pool that holds nothing the device
/// may still use, whatever the thresholds: an allocation found the quota
/// full. Whether there was any.
pub fn release_idle(c: &Client, ctx: u64) -> CuRes<bool> {
    let _order = ordered();
    release_idle_ordered(c, ctx)
}

/// `release_idle`, with `ORDER` held.
fn release_idle_ordered(c: &Client, ctx: u64) -> CuRes<bool> {
    let releases: Vec<(u64, u64)> = state::lock()
        .pools
        .iter_mut()
        .flat_map(|(&id, p)| p.take_releasable(0).into_iter().map(move |va| (id, va)))
        .collect();
    send_releases(c, ctx, &releases)?;
    Ok(!releases.is_empty())
}

fn send_releases(c: &Client, ctx: u64, releases: &[(u64, u64)]) -> CuRes {
    for &(id, va) in releases {
        c.enqueue(Opcode::MemPoolRelease, 0, ctx, &MemPoolRelease { pool_id: U64::new(id), va: U64::new(va) }, &[])?;
    }
    Ok(())
}

/// `size` bytes from pool `pool`, ordered on `stream`.
/// Graphs have no allocation nodes yet: stream-ordered allocation on a
/// capturing stream fails, and the capture with it.
fn refuse_in_capture(sid: u64, ctx: u64) -> CuRes {
    super::capture::intercept(sid, ctx, false, || Err(CUDA_ERROR_NOT_SUPPORTED)).map(|_| ())
}

fn alloc(pool: u64, size: usize, stream: CUstream, ptsz: bool) -> CuRes<u64> {
    let c = session()?;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let size = size as u64;
    let (sid, ctx) = state::lock().resolve_stream(stream, ptsz)?;
    refuse_in_capture(sid, ctx)?;
    let key = stream_key(ctx, sid);
    let _order = ordered();
    let record = Alloc { size, ctx, kind: AllocKind::Pool { pool } };
    for retry in [false, true] {
        let placed = {
            let mut st = state::lock();
            let p = st.pools.get_mut(&pool).filter(|p| !p.destroyed).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            let placed = p.place(size, key);
            if let Some(pl) = &placed {
                p.commit(pl.dptr, size);
                if pl.gaps.is_empty() {
                    st.allocs.insert(pl.dptr, record);
                }
            }
            placed
        };
        let Some(pl) = placed else {
            if retry {
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            release_idle_ordered(c, ctx)?;
            continue;
        };
        let m = MemAllocAsync {
            pool_id: U64::new(pool),
            dptr: U64::new(pl.dptr),
            size: U64::new(size),
            stream: U64::new(sid),
        };
        if pl.gaps.is_empty() {
            c.enqueue(Opcode::MemAllocAsync, CMD_FLAG_ASYNC, ctx, &m, &[])?;
            return Ok(pl.dptr);
        }
        // New memory: wait for the backend, which may be out of quota.
        match c.call(Opcode::MemAllocAsync, 0, ctx, &m, &[]) {
            Ok(reply) => {
                let segments: Vec<(u64, u64)> = reply
                    .chunks_exact(core::mem::size_of::<PoolSegment>())
                    .filter_map(|b| PoolSegment::read_from_bytes(b).ok())
                    .map(|s| (s.va.get(), s.len.get()))
                    .collect();
                let mut st = state::lock();
                if let Some(p) = st.pools.get_mut(&pool) {
                    p.add_segments(&segments);
                }
                st.allocs.insert(pl.dptr, record);
                return Ok(pl.dptr);
            }
            Err(e) => {
                if let Some(p) = state::lock().pools.get_mut(&pool) {
                    p.release_addresses(pl.dptr, None);
                }
                if e != CUDA_ERROR_OUT_OF_MEMORY || retry {
                    return Err(e);
                }
                release_idle_ordered(c, ctx)?;
            }
        }
    }
    Err(CUDA_ERROR_OUT_OF_MEMORY)
}

/// Frees pool memory in stream order.
fn free(dptr: CUdeviceptr, stream: CUstream, ptsz: bool) -> CuRes {
    let c = session()?;
    if dptr == 0 {
        return Ok(());
    }
    let (sid, ctx) = state::lock().resolve_stream(stream, ptsz)?;
    refuse_in_capture(sid, ctx)?;
    let _order = ordered();
    let (pool, ends) = {
        let mut st = state::lock();
        match st.allocs.get(&dptr).map(|a| a.kind) {
            Some(AllocKind::Pool { pool }) => {
                st.allocs.remove(&dptr);
                let p = st.pools.get_mut(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
                p.release_addresses(dptr, Some(stream_key(ctx, sid)));
                let ends = p.destroyed && !p.has_live();
                if ends {
                    st.pools.remove(&pool);
                }
                (pool, ends)
            }
            Some(AllocKind::Device) => {
                // cuMemAlloc memory: freed once the stream reaches this point.
                drop(st);
                c.sync_call(Opcode::StreamSynchronize, 0, ctx, &Id { id: U64::new(sid) })?;
                return super::memory::free(dptr);
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
    };
    c.enqueue(Opcode::MemFreeAsync, 0, ctx, &MemFreeAsync { dptr: U64::new(dptr), stream: U64::new(sid) }, &[])?;
    if ends {
        c.enqueue(Opcode::MemPoolDestroy, 0, ctx, &Id { id: U64::new(pool) }, &[])?;
    }
    Ok(())
}

/// cuMemFree of pool memory: the context's work finishes first, as
/// cuMemFree waits for the device, then it goes back to its pool.
pub fn free_synchronously(dptr: CUdeviceptr) -> CuRes {
    let c = session()?;
    c.sync_call(Opcode::CtxSynchronize, 0, current_or_primary(), &[0u8; 0])?;
    free(dptr, std::ptr::null_mut(), false)
}

/// After a synchronization of `stream` (or, for `None`, of all of context
/// `ctx`): the frees ordered there are done, and each pool gives back what
/// it holds above its release threshold.
pub fn synchronized(c: &Client, ctx: u64, stream: Option<u64>) {
    let _order = ordered();
    let releases: Vec<(u64, u64)> = {
        let mut st = state::lock();
        if st.pools.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for (&id, p) in st.pools.iter_mut() {
            match stream {
                Some(s) => {
                    let k = stream_key(ctx, s);
                    p.completed(|x| x == k);
                }
                None => p.completed(|(c, _)| c == ctx),
            }
            let keep = p.attrs.release_threshold;
            if p.reserved() > keep {
                out.extend(p.take_releasable(keep).into_iter().map(|va| (id, va)));
            }
        }
        out
    };
    // Queued: the synchronization already succeeded, and a failure to send
    // shows up at the next call that waits.
    let _ = send_releases(c, ctx, &releases);
}

fn pool_create(props: *const CUmemPoolProps) -> CuRes<u64> {
    let c = session()?;
    if props.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, a CUmemPoolProps per the CUDA API.
    let p = unsafe { props.read_unaligned() };
    if p.allocType != CU_MEM_ALLOCATION_TYPE_PINNED {
        return Err(if p.allocType == CU_MEM_ALLOCATION_TYPE_MANAGED {
            crate::log::unsupported("managed memory pools");
            CUDA_ERROR_NOT_SUPPORTED
        } else {
            CUDA_ERROR_INVALID_VALUE
        });
    }
    check_location(&p.location)?;
    if p.handleTypes != CU_MEM_HANDLE_TYPE_NONE {
        crate::log::unsupported("shareable handles of memory pools");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    if p.usage != 0 {
        crate::log::unsupported("memory pools for hardware decompression");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let id = c.new_id();
    create_pool(c, id, p.maxSize as u64)?;
    Ok(id)
}

fn pool_destroy(pool: CUmemoryPool) -> CuRes {
    let c = session()?;
    let id = pool_id(pool)?;
    let _order = ordered();
    if id == DEFAULT_MEM_POOL {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let now = {
        let mut st = state::lock();
        if st.current_pool == id {
            st.current_pool = 0;
        }
        let p = st.pools.get_mut(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // With allocations out, it ends with the last of them.
        p.destroyed = true;
        let now = !p.has_live();
        if now {
            st.pools.remove(&id);
        }
        now
    };
    if now {
        c.enqueue(Opcode::MemPoolDestroy, 0, current_or_primary(), &Id { id: U64::new(id) }, &[])?;
    }
    Ok(())
}

fn trim_to(pool: CUmemoryPool, keep: usize) -> CuRes {
    let c = session()?;
    let id = pool_id(pool)?;
    let _order = ordered();
    let vas = state::lock().pools.get_mut(&id).map(|p| p.take_releasable(keep as u64)).unwrap_or_default();
    let releases: Vec<(u64, u64)> = vas.into_iter().map(|va| (id, va)).collect();
    send_releases(c, current_or_primary(), &releases)
}

/// # Safety
/// `value` is NULL or points at the attribute's type (int or cuuint64_t).
unsafe fn set_attribute(pool: CUmemoryPool, attr: c_int, value: *mut c_void) -> CuRes {
    session()?;
    let id = pool_id(pool)?;
    if value.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY (both): non-NULL and of the attribute's type per the CUDA API,
    // which says which of the two each attribute takes.
    let int = || unsafe { (value as *const c_int).read_unaligned() } != 0;
    let u64v = || unsafe { (value as *const u64).read_unaligned() };
    let mut st = state::lock();
    let p = st.pools.get_mut(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    match attr {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES => p.attrs.follow_event_dependencies = int(),
        CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC => p.attrs.allow_opportunistic = int(),
        CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => p.attrs.allow_internal_dependencies = int(),
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => p.attrs.release_threshold = u64v(),
        // High watermarks can only be reset: to what is held now.
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH if u64v() == 0 => p.reserved_high = p.reserved(),
        CU_MEMPOOL_ATTR_USED_MEM_HIGH if u64v() == 0 => p.used_high = p.used(),
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    Ok(())
}

/// # Safety
/// `value` is NULL or writable for the attribute's type.
unsafe fn get_attribute(pool: CUmemoryPool, attr: c_int, value: *mut c_void) -> CuRes {
    session()?;
    let id = pool_id(pool)?;
    if value.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let st = state::lock();
    let p = st.pools.get(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let int = |b: bool| Some(b as c_int);
    let (i, u) = match attr {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES => (int(p.attrs.follow_event_dependencies), None),
        CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC => (int(p.attrs.allow_opportunistic), None),
        CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => (int(p.attrs.allow_internal_dependencies), None),
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => (None, Some(p.attrs.release_threshold)),
        CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT => (None, Some(p.reserved())),
        CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH => (None, Some(p.reserved_high)),
        CU_MEMPOOL_ATTR_USED_MEM_CURRENT => (None, Some(p.used())),
        CU_MEMPOOL_ATTR_USED_MEM_HIGH => (None, Some(p.used_high)),
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    // SAFETY: non-NULL and of the attribute's type per the CUDA API.
    unsafe {
        match (i, u) {
            (Some(v), _) => (value as *mut c_int).write_unaligned(v),
            (_, Some(v)) => (value as *mut u64).write_unaligned(v),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a pool access descriptor list: this device, read-write (a pool's
/// own device always has it, and there is no other).
fn check_pool_access(map: *const CUmemAccessDesc, count: usize) -> CuRes {
    if map.is_null() && count > 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if count == 0 {
        return Ok(());
    }
    // SAFETY: `count` descriptors per the CUDA API.
    for d in unsafe { std::slice::from_raw_parts(map, count) } {
        check_location(&d.location)?;
        if d.flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    Ok(())
}

/// Checks the CUDA 13 (location, allocation type) pair that names a
/// device's pools: pinned memory of this device.
///
/// # Safety
/// `location` is NULL or a CUmemLocation.
unsafe fn check_pool_location(location: *const CUmemLocation, type_: c_int) -> CuRes {
    session()?;
    if location.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match type_ {
        CU_MEM_ALLOCATION_TYPE_PINNED => {}
        CU_MEM_ALLOCATION_TYPE_MANAGED => {
            crate::log::unsupported("managed memory pools");
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    // SAFETY: non-NULL, a CUmemLocation per the caller.
    check_location(&unsafe { location.read_unaligned() })
}

fn set_current_pool(pool: CUmemoryPool) -> CuRes {
    let id = pool_id(pool)?;
    state::lock().current_pool = id;
    Ok(())
}

// ---- exports --------------------------------------------------------------

macro_rules! alloc_exports {
    ($($name:ident, $ptsz:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(dptr: *mut CUdeviceptr, bytesize: usize, hStream: CUstream) -> CUresult {
            ffi(|| {
                // SAFETY: output argument per the CUDA API.
                let out = unsafe { Out::new(dptr) }?;
                let pool = current_pool(session()?)?;
                out.set(alloc(pool, bytesize, hStream, $ptsz)?);
                Ok(())
            })
        }
    )*};
}

alloc_exports! {
    cuMemAllocAsync, false;
    cuMemAllocAsync_ptsz, true;
}

macro_rules! pool_alloc_exports {
    ($($name:ident, $ptsz:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dptr: *mut CUdeviceptr,
            bytesize: usize,
            pool: CUmemoryPool,
            hStream: CUstream,
        ) -> CUresult {
            ffi(|| {
                // SAFETY: output argument per the CUDA API.
                let out = unsafe { Out::new(dptr) }?;
                session()?;
                out.set(alloc(pool_id(pool)?, bytesize, hStream, $ptsz)?);
                Ok(())
            })
        }
    )*};
}

pool_alloc_exports! {
    cuMemAllocFromPoolAsync, false;
    cuMemAllocFromPoolAsync_ptsz, true;
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, hStream: CUstream) -> CUresult {
    ffi(|| free(dptr, hStream, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, hStream: CUstream) -> CUresult {
    ffi(|| free(dptr, hStream, true))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolCreate(pool: *mut CUmemoryPool, poolProps: *const CUmemPoolProps) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pool) }?;
        out.set(handle(pool_create(poolProps)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult {
    ffi(|| pool_destroy(pool))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: CUmemoryPool, minBytesToKeep: usize) -> CUresult {
    ffi(|| trim_to(pool, minBytesToKeep))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAttribute(pool: CUmemoryPool, attr: c_int, value: *mut c_void) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { set_attribute(pool, attr, value) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAttribute(pool: CUmemoryPool, attr: c_int, value: *mut c_void) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_attribute(pool, attr, value) })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAccess(pool: CUmemoryPool, map: *const CUmemAccessDesc, count: usize) -> CUresult {
    ffi(|| {
        session()?;
        pool_id(pool)?;
        check_pool_access(map, count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAccess(
    flags: *mut c_int,
    memPool: CUmemoryPool,
    location: *mut CUmemLocation,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(flags) }?;
        session()?;
        pool_id(memPool)?;
        if location.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL, a CUmemLocation per the CUDA API.
        check_location(&unsafe { location.read_unaligned() })?;
        out.set(CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool_out: *mut CUmemoryPool, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pool_out) }?;
        check_device(dev)?;
        out.set(handle(default_pool(session()?)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pool) }?;
        check_device(dev)?;
        out.set(handle(current_pool(session()?)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceSetMemPool(dev: CUdevice, pool: CUmemoryPool) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        set_current_pool(pool)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetDefaultMemPool(
    pool_out: *mut CUmemoryPool,
    location: *mut CUmemLocation,
    type_: c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API; the location is checked.
        let out = unsafe { Out::new(pool_out) }?;
        // SAFETY: NULL or a CUmemLocation per the CUDA API.
        unsafe { check_pool_location(location, type_) }?;
        out.set(handle(default_pool(session()?)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetMemPool(
    pool: *mut CUmemoryPool,
    location: *mut CUmemLocation,
    type_: c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pool) }?;
        // SAFETY: NULL or a CUmemLocation per the CUDA API.
        unsafe { check_pool_location(location, type_) }?;
        out.set(handle(current_pool(session()?)?));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemSetMemPool(location: *mut CUmemLocation, type_: c_int, pool: CUmemoryPool) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUmemLocation per the CUDA API.
        unsafe { check_pool_location(location, type_) }?;
        set_current_pool(pool)
    })
}
