//! Device memory (cuMemAlloc, cuMemFree, cuMemGetInfo, address ranges,
//! pointer attributes) and host memory CUDA knows about: pinned allocations,
//! which live in buffers the backend can reach without a copy, and
//! registered ranges, which are recorded but still copied through staging
//! (the backend cannot see arbitrary guest pages yet).

use super::state::{self, Alloc, AllocKind, HostRange};
use super::types::*;
use super::{ffi, handle, session, set_opt, CuRes, Out};
use protocol::cuda::*;
use protocol::{Id, MemAlloc, MemAllocReply, MemGetInfoReply, Opcode};
use std::ffi::{c_uint, c_void};
use zerocopy::little_endian::U64;
use zerocopy::FromBytes;

/// Allocates device memory in the current context.
pub fn alloc(size: usize) -> CuRes<CUdeviceptr> {
    let c = session()?;
    let ctx = state::lock().current()?;
    super::capture::check_unsafe()?;
    if size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let m = MemAlloc { size: U64::new(size as u64) };
    let reply = match c.call(Opcode::MemAlloc, 0, ctx, &m, &[]) {
        // Memory pools may hold what the quota lacks, unused.
        Err(CUDA_ERROR_OUT_OF_MEMORY) if super::stream_alloc::release_idle(c, ctx)? => {
            c.call(Opcode::MemAlloc, 0, ctx, &m, &[])?
        }
        r => r?,
    };
    let r = MemAllocReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?.0;
    let dptr = r.dptr.get();
    state::lock().allocs.insert(dptr, Alloc { size: size as u64, ctx, kind: AllocKind::Device });
    Ok(dptr)
}

/// Frees an allocation by its base address. It runs in the allocation's own
/// context, so a free from another context works as it does natively.
pub fn free(dptr: CUdeviceptr) -> CuRes {
    let c = session()?;
    if dptr == 0 {
        return Ok(());
    }
    super::capture::check_unsafe()?;
    let ctx = {
        let mut st = state::lock();
        match st.allocs.get(&dptr) {
            Some(a) if a.kind == AllocKind::Device => {
                let ctx = a.ctx;
                st.allocs.remove(&dptr);
                ctx
            }
            Some(Alloc { kind: AllocKind::Pool { .. }, .. }) => {
                drop(st);
                return super::stream_alloc::free_synchronously(dptr);
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
    };
    c.enqueue(Opcode::MemFree, 0, ctx, &Id { id: U64::new(dptr) }, &[])
}

fn get_info() -> CuRes<(u64, u64)> {
    let c = session()?;
    let ctx = state::lock().current()?;
    let reply = c.call(Opcode::MemGetInfo, 0, ctx, &[0u8; 0], &[])?;
    let r = MemGetInfoReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?.0;
    Ok((r.free.get(), r.total.get()))
}

fn address_range(dptr: CUdeviceptr) -> CuRes<(u64, u64)> {
    session()?;
    let st = state::lock();
    st.current()?;
    let (base, a) = st.alloc_containing(dptr).ok_or(CUDA_ERROR_NOT_FOUND)?;
    Ok((base, a.size))
}

/// Saturates a value for the 32-bit outputs of the `_v1` entry points.
fn to_u32(v: u64) -> c_uint {
    v.min(c_uint::MAX as u64) as c_uint
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(dptr) }?;
        out.set(alloc(bytesize)?);
        Ok(())
    })
}

/// The pre-3.2 entry point: a 32-bit device pointer, which a device address
/// above 4 GiB cannot fill, so it fails as out of memory.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc(dptr: *mut CUdeviceptr_v1, bytesize: c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(dptr) }?;
        let p = alloc(bytesize as usize)?;
        match CUdeviceptr_v1::try_from(p) {
            Ok(v) => {
                out.set(v);
                Ok(())
            }
            Err(_) => {
                free(p)?;
                Err(CUDA_ERROR_OUT_OF_MEMORY)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    ffi(|| free(dptr))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree(dptr: CUdeviceptr_v1) -> CUresult {
    ffi(|| free(dptr as u64))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    ffi(|| {
        // SAFETY: output arguments per the CUDA API.
        let (f, t) = unsafe { (Out::new(free)?, Out::new(total)?) };
        let (fv, tv) = get_info()?;
        f.set(fv as usize);
        t.set(tv as usize);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output arguments per the CUDA API.
        let (f, t) = unsafe { (Out::new(free)?, Out::new(total)?) };
        let (fv, tv) = get_info()?;
        f.set(to_u32(fv));
        t.set(to_u32(tv));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAddressRange_v2(
    pbase: *mut CUdeviceptr,
    psize: *mut usize,
    dptr: CUdeviceptr,
) -> CUresult {
    ffi(|| {
        // SAFETY: optional output arguments per the CUDA API.
        let (b, s) = unsafe { (Out::optional(pbase), Out::optional(psize)) };
        let (base, size) = address_range(dptr)?;
        set_opt(b, base);
        set_opt(s, size as usize);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAddressRange(
    pbase: *mut CUdeviceptr_v1,
    psize: *mut c_uint,
    dptr: CUdeviceptr_v1,
) -> CUresult {
    ffi(|| {
        // SAFETY: optional output arguments per the CUDA API.
        let (b, s) = unsafe { (Out::optional(pbase), Out::optional(psize)) };
        let (base, size) = address_range(dptr as u64)?;
        set_opt(b, CUdeviceptr_v1::try_from(base).map_err(|_| CUDA_ERROR_INVALID_VALUE)?);
        set_opt(s, to_u32(size));
        Ok(())
    })
}

// ---- pinned and registered host memory --------------------------------

fn host_alloc(size: usize, flags: c_uint) -> CuRes<*mut c_void> {
    let c = session()?;
    let ctx = state::lock().current()?;
    super::capture::check_unsafe()?;
    if size == 0 || flags & !CU_MEMHOSTALLOC_FLAGS_MASK != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = c.alloc_pinned(size)?;
    state::lock().host.insert(p as usize, HostRange { len: size, flags, ctx, pinned: true });
    Ok(p as *mut c_void)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytesize: usize) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pp) }?;
        out.set(host_alloc(bytesize, 0)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost(pp: *mut *mut c_void, bytesize: c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pp) }?;
        out.set(host_alloc(bytesize as usize, 0)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(pp: *mut *mut c_void, bytesize: usize, Flags: c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pp) }?;
        out.set(host_alloc(bytesize, Flags)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    ffi(|| {
        let c = session()?;
        let addr = p as usize;
        super::capture::check_unsafe()?;
        {
            let mut st = state::lock();
            match st.host.get(&addr) {
                Some(h) if h.pinned => {
                    st.host.remove(&addr);
                }
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        c.free_pinned(p as *mut u8)
    })
}

/// Records the range and returns success. Copies from or to it go through
/// staging like pageable memory: the backend does not yet map arbitrary
/// guest pages, so registration brings no speed-up (a known limitation).
fn host_register(p: *mut c_void, bytesize: usize, flags: c_uint) -> CuRes {
    session()?;
    super::capture::check_unsafe()?;
    let addr = p as usize;
    if p.is_null() || bytesize == 0 || flags & !CU_MEMHOSTREGISTER_FLAGS_MASK != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let end = addr.checked_add(bytesize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let mut st = state::lock();
    let ctx = st.current()?;
    let overlaps = st.host_containing(addr).is_some() || st.host.range(addr..end).next().is_some();
    if overlaps {
        return Err(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
    }
    st.host.insert(addr, HostRange { len: bytesize, flags, ctx, pinned: false });
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostRegister_v2(p: *mut c_void, bytesize: usize, Flags: c_uint) -> CUresult {
    ffi(|| host_register(p, bytesize, Flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostRegister(p: *mut c_void, bytesize: usize, Flags: c_uint) -> CUresult {
    ffi(|| host_register(p, bytesize, Flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostUnregister(p: *mut c_void) -> CUresult {
    ffi(|| {
        session()?;
        let mut st = state::lock();
        match st.host.get(&(p as usize)) {
            Some(h) if !h.pinned => {
                st.host.remove(&(p as usize));
                Ok(())
            }
            _ => Err(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetFlags(pFlags: *mut c_uint, p: *mut c_void) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pFlags) }?;
        session()?;
        let (_, h) = state::lock().host_containing(p as usize).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        out.set(h.flags);
        Ok(())
    })
}

/// Device aliases of host memory need the backend to map guest pages into
/// the device's address space, which it does not do.
#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer_v2(
    _pdptr: *mut CUdeviceptr,
    _p: *mut c_void,
    _Flags: c_uint,
) -> CUresult {
    crate::log::unsupported("cuMemHostGetDevicePointer");
    CUDA_ERROR_NOT_SUPPORTED
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostGetDevicePointer(
    _pdptr: *mut CUdeviceptr_v1,
    _p: *mut c_void,
    _Flags: c_uint,
) -> CUresult {
    crate::log::unsupported("cuMemHostGetDevicePointer");
    CUDA_ERROR_NOT_SUPPORTED
}

// ---- pointer attributes ------------------------------------------------

/// What the guest knows about an address.
enum PtrKind {
    Device { base: u64, alloc: Alloc },
    Host { base: usize, range: HostRange },
}

fn classify(ptr: CUdeviceptr) -> CuRes<PtrKind> {
    session()?;
    let st = state::lock();
    if let Some((base, alloc)) = st.alloc_containing(ptr) {
        return Ok(PtrKind::Device { base, alloc });
    }
    let addr = usize::try_from(ptr).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    match st.host_containing(addr) {
        Some((base, range)) => Ok(PtrKind::Host { base, range }),
        None => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// An attribute value, in the C type its attribute documents.
enum AttrValue {
    Ptr(*mut c_void),
    U32(c_uint),
    I32(std::ffi::c_int),
    U64(u64),
    Size(usize),
}

/// The value of one attribute of `ptr`.
fn pointer_attribute(attribute: c_uint, ptr: CUdeviceptr) -> CuRes<AttrValue> {
    let kind = classify(ptr)?;
    let (base, size, ctx) = match kind {
        PtrKind::Device { base, alloc } => (base, alloc.size, alloc.ctx),
        PtrKind::Host { base, range } => (base as u64, range.len as u64, range.ctx),
    };
    let device = matches!(kind, PtrKind::Device { .. });
    let alloc_kind = match kind {
        PtrKind::Device { alloc, .. } => Some(alloc.kind),
        PtrKind::Host { .. } => None,
    };
    Ok(match attribute {
        CU_POINTER_ATTRIBUTE_CONTEXT => AttrValue::Ptr(handle(ctx)),
        CU_POINTER_ATTRIBUTE_MEMORY_TYPE => {
            AttrValue::U32(if device { CU_MEMORYTYPE_DEVICE } else { CU_MEMORYTYPE_HOST })
        }
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER if device => AttrValue::U64(ptr),
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER => {
            crate::log::unsupported("device pointers of host memory");
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        CU_POINTER_ATTRIBUTE_HOST_POINTER if !device => AttrValue::Ptr(ptr as usize as *mut c_void),
        CU_POINTER_ATTRIBUTE_HOST_POINTER => return Err(CUDA_ERROR_INVALID_VALUE),
        CU_POINTER_ATTRIBUTE_BUFFER_ID => AttrValue::U64(base),
        CU_POINTER_ATTRIBUTE_IS_MANAGED => AttrValue::U32(0),
        CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => AttrValue::I32(0),
        CU_POINTER_ATTRIBUTE_RANGE_START_ADDR => AttrValue::U64(base),
        CU_POINTER_ATTRIBUTE_RANGE_SIZE => AttrValue::Size(size as usize),
        CU_POINTER_ATTRIBUTE_MAPPED => AttrValue::U32(1),
        // No IPC, shareable handles or RDMA: nothing leaves the VM.
        CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE
        | CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES
        | CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE => AttrValue::U32(0),
        CU_POINTER_ATTRIBUTE_ACCESS_FLAGS => AttrValue::U32(match alloc_kind {
            Some(AllocKind::Mapped { .. }) => {
                let access = state::lock().vmm.mapping_containing(ptr).map_or(0, |m| m.3);
                access as c_uint
            }
            _ => CU_MEM_ACCESS_FLAGS_PROT_READWRITE as c_uint,
        }),
        CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE => AttrValue::Ptr(match alloc_kind {
            Some(AllocKind::Pool { pool }) => handle(pool),
            _ => std::ptr::null_mut(),
        }),
        CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR => AttrValue::U64(base),
        CU_POINTER_ATTRIBUTE_MAPPING_SIZE => AttrValue::Size(size as usize),
        _ => {
            crate::log::unsupported(&format!("cuPointerGetAttribute for attribute {attribute}"));
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
    })
}

/// What cuPointerGetAttributes reports for an attribute of a pointer CUDA
/// does not know (it does not fail for those, unlike cuPointerGetAttribute).
fn default_attribute(attribute: c_uint) -> CuRes<AttrValue> {
    Ok(match attribute {
        CU_POINTER_ATTRIBUTE_CONTEXT | CU_POINTER_ATTRIBUTE_HOST_POINTER => AttrValue::Ptr(std::ptr::null_mut()),
        CU_POINTER_ATTRIBUTE_MEMORY_TYPE | CU_POINTER_ATTRIBUTE_IS_MANAGED | CU_POINTER_ATTRIBUTE_MAPPED => {
            AttrValue::U32(0)
        }
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER
        | CU_POINTER_ATTRIBUTE_BUFFER_ID
        | CU_POINTER_ATTRIBUTE_RANGE_START_ADDR => AttrValue::U64(0),
        // cudart's cudaInvalidDeviceId.
        CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => AttrValue::I32(-2),
        CU_POINTER_ATTRIBUTE_RANGE_SIZE | CU_POINTER_ATTRIBUTE_MAPPING_SIZE => AttrValue::Size(0),
        CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE
        | CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES
        | CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE
        | CU_POINTER_ATTRIBUTE_ACCESS_FLAGS => AttrValue::U32(0),
        CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE => AttrValue::Ptr(std::ptr::null_mut()),
        CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR => AttrValue::U64(0),
        _ => {
            crate::log::unsupported(&format!("cuPointerGetAttributes for attribute {attribute}"));
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
    })
}

/// # Safety
/// `data` is non-NULL and points at the type the attribute documents, which
/// `AttrValue` mirrors.
unsafe fn write_attr(data: *mut c_void, v: AttrValue) {
    // SAFETY: per this function's contract.
    unsafe {
        match v {
            AttrValue::Ptr(p) => (data as *mut *mut c_void).write_unaligned(p),
            AttrValue::U32(x) => (data as *mut c_uint).write_unaligned(x),
            AttrValue::I32(x) => (data as *mut std::ffi::c_int).write_unaligned(x),
            AttrValue::U64(x) => (data as *mut u64).write_unaligned(x),
            AttrValue::Size(x) => (data as *mut usize).write_unaligned(x),
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttribute(data: *mut c_void, attribute: c_uint, ptr: CUdeviceptr) -> CUresult {
    ffi(|| {
        if data.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let v = pointer_attribute(attribute, ptr)?;
        // SAFETY: non-NULL, of the attribute's type per the CUDA API.
        unsafe { write_attr(data, v) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttributes(
    numAttributes: c_uint,
    attributes: *mut c_uint,
    data: *mut *mut c_void,
    ptr: CUdeviceptr,
) -> CUresult {
    ffi(|| {
        if numAttributes == 0 || attributes.is_null() || data.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        session()?;
        // SAFETY: two arrays of `numAttributes` entries per the CUDA API.
        let (attrs, slots) = unsafe {
            (
                std::slice::from_raw_parts(attributes, numAttributes as usize),
                std::slice::from_raw_parts(data, numAttributes as usize),
            )
        };
        for (&a, &slot) in attrs.iter().zip(slots) {
            if slot.is_null() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let v = match pointer_attribute(a, ptr) {
                Ok(v) => v,
                Err(_) => default_attribute(a)?,
            };
            // SAFETY: non-NULL, of the attribute's type per the CUDA API.
            unsafe { write_attr(slot, v) };
        }
        Ok(())
    })
}
