//! The virtual-memory API: address reservations, physical allocations
//! (`CUmemGenericAllocationHandle`s the guest picks), mappings and access.
//! The guest checks every call against its own tables first, as natively;
//! creating memory and reserving addresses wait for the backend (it charges
//! the quota and picks the addresses, which are real device addresses on the
//! cuda engine), the rest is queued. Allocations are device memory on this
//! single device only: no shareable handles (cuMemExportToShareableHandle
//! stays unsupported; nothing leaves the VM).

use super::state::{self, Alloc, AllocKind};
use super::types::*;
use super::{ffi, session, CuRes, Out};
use crate::client::Client;
use protocol::cuda::*;
use protocol::{
    Id, MemAddressReserve, MemAllocReply, MemCreate, MemGranularityReply, MemMap, MemSetAccess, Opcode, VaRange,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_ulonglong, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};
use zerocopy::little_endian::{U32, U64};
use zerocopy::FromBytes;

#[derive(Debug, Clone, Copy)]
struct PhysInfo {
    size: u64,
    /// The usage flags it was created with; the rest of its properties are
    /// the same for every allocation (see `given_prop`).
    usage: u16,
    /// Handles the program holds: one from cuMemCreate, one per
    /// cuMemRetainAllocationHandle; cuMemRelease gives one back.
    refs: u32,
    maps: u32,
    /// The backend was told the program let go of it; it frees the memory
    /// once the last mapping goes.
    released: bool,
}

#[derive(Debug, Clone, Copy)]
struct MapInfo {
    size: u64,
    handle: u64,
    /// `CU_MEM_ACCESS_FLAGS_PROT_*`; none until cuMemSetAccess, as natively.
    access: c_int,
}

/// The process's reservations, physical allocations and mappings.
#[derive(Debug, Default)]
pub struct VmmState {
    reservations: BTreeMap<u64, u64>,
    handles: HashMap<u64, PhysInfo>,
    mappings: BTreeMap<u64, MapInfo>,
}

impl VmmState {
    /// The mapping containing `addr`: (base, size, handle, access).
    pub fn mapping_containing(&self, addr: u64) -> Option<(u64, u64, u64, c_int)> {
        let (&base, m) = self.mappings.range(..=addr).next_back()?;
        (addr - base < m.size).then_some((base, m.size, m.handle, m.access))
    }

    /// `[addr, addr + len)` lies in contiguous mappings the device may access.
    pub fn check_range(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        let mut at = addr;
        loop {
            match self.mapping_containing(at) {
                Some((base, size, _, access)) if access != CU_MEM_ACCESS_FLAGS_PROT_NONE => {
                    if end <= base + size {
                        return true;
                    }
                    at = base + size;
                }
                _ => return false,
            }
        }
    }

    /// The bases of the mappings covering `[ptr, ptr + size)` exactly.
    fn covering(&self, ptr: u64, size: u64) -> CuRes<Vec<u64>> {
        let end = ptr.checked_add(size).filter(|_| size > 0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut bases = Vec::new();
        let mut at = ptr;
        while at < end {
            let m = self.mappings.get(&at).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            bases.push(at);
            at += m.size;
        }
        if at != end {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(bases)
    }
}

/// Held from a change of the tables until the command that carries it is
/// queued, so that the backend gets commands in the order the tables had
/// them (an unmap and a map of the same range on two threads, say).
static ORDER: Mutex<()> = Mutex::new(());

fn ordered() -> MutexGuard<'static, ()> {
    ORDER.lock().unwrap_or_else(|p| p.into_inner())
}

/// The context the backend runs a command in that belongs to no context:
/// the current one, else the primary.
pub fn current_or_primary() -> u64 {
    state::lock().current().unwrap_or(protocol::PRIMARY_CTX)
}

/// The backend's granularity, asked once.
pub fn granularity(c: &Client) -> CuRes<u64> {
    static G: OnceLock<u64> = OnceLock::new();
    if let Some(g) = G.get() {
        return Ok(*g);
    }
    let ctx = current_or_primary();
    let reply = c.call(Opcode::MemGetGranularity, 0, ctx, &[0u8; 0], &[])?;
    let g = MemGranularityReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?.0.granularity.get();
    if !g.is_power_of_two() {
        return Err(CUDA_ERROR_UNKNOWN);
    }
    Ok(*G.get_or_init(|| g))
}

/// Checks a location: this device, or a kind of memory the VM does not offer.
pub fn check_location(loc: &CUmemLocation) -> CuRes {
    match loc.type_ {
        CU_MEM_LOCATION_TYPE_DEVICE if loc.id == 0 => Ok(()),
        CU_MEM_LOCATION_TYPE_DEVICE => Err(CUDA_ERROR_INVALID_DEVICE),
        CU_MEM_LOCATION_TYPE_HOST | CU_MEM_LOCATION_TYPE_HOST_NUMA | CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT => {
            crate::log::unsupported("host memory through the virtual-memory API or pools");
            Err(CUDA_ERROR_NOT_SUPPORTED)
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// The properties of every allocation this driver makes: pinned memory of
/// device 0, no shareable handle, no compression, no RDMA.
fn given_prop(usage: u16) -> CUmemAllocationProp {
    CUmemAllocationProp {
        type_: CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: CU_MEM_HANDLE_TYPE_NONE,
        location: CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: 0 },
        win32HandleMetaData: std::ptr::null_mut(),
        compressionType: 0,
        gpuDirectRDMACapable: 0,
        usage,
        reserved: [0; 4],
    }
}

/// Checks allocation properties; returns their usage flags.
fn check_prop(prop: *const CUmemAllocationProp) -> CuRes<u16> {
    if prop.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL, a CUmemAllocationProp per the CUDA API.
    let p = unsafe { prop.read_unaligned() };
    match p.type_ {
        CU_MEM_ALLOCATION_TYPE_PINNED => {}
        CU_MEM_ALLOCATION_TYPE_MANAGED => {
            crate::log::unsupported("managed memory through the virtual-memory API");
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    check_location(&p.location)?;
    if p.requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE {
        crate::log::unsupported("shareable handles of device memory");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    if p.usage & CU_MEM_CREATE_USAGE_TILE_POOL != 0 {
        crate::log::unsupported("tile pools for sparse arrays");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    Ok(p.usage)
}

fn address_reserve(size: usize, alignment: usize, addr: CUdeviceptr, flags: c_ulonglong) -> CuRes<u64> {
    let c = session()?;
    let g = granularity(c)?;
    let size = size as u64;
    if flags != 0 || size == 0 || !size.is_multiple_of(g) || (alignment != 0 && !alignment.is_power_of_two()) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = MemAddressReserve { size: U64::new(size), alignment: U64::new(alignment as u64), addr: U64::new(addr) };
    let reply = c.call(Opcode::MemAddressReserve, 0, current_or_primary(), &r, &[])?;
    let va = MemAllocReply::read_from_prefix(&reply).map_err(|_| CUDA_ERROR_UNKNOWN)?.0.dptr.get();
    state::lock().vmm.reservations.insert(va, size);
    Ok(va)
}

fn address_free(ptr: CUdeviceptr, size: usize) -> CuRes {
    let c = session()?;
    let _order = ordered();
    let size = size as u64;
    {
        let mut st = state::lock();
        let vmm = &mut st.vmm;
        if vmm.reservations.get(&ptr) != Some(&size) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if vmm.mappings.range(ptr..ptr + size).next().is_some() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        vmm.reservations.remove(&ptr);
    }
    c.enqueue(
        Opcode::MemAddressFree,
        0,
        current_or_primary(),
        &VaRange { va: U64::new(ptr), size: U64::new(size) },
        &[],
    )
}

fn create(size: usize, prop: *const CUmemAllocationProp, flags: c_ulonglong) -> CuRes<u64> {
    let c = session()?;
    let usage = check_prop(prop)?;
    let g = granularity(c)?;
    let size = size as u64;
    if flags != 0 || size == 0 || !size.is_multiple_of(g) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let id = c.new_id();
    c.call(Opcode::MemCreate, 0, current_or_primary(), &MemCreate { handle: U64::new(id), size: U64::new(size) }, &[])?;
    let info = PhysInfo { size, usage, refs: 1, maps: 0, released: false };
    state::lock().vmm.handles.insert(id, info);
    Ok(id)
}

fn release(handle: u64) -> CuRes {
    let c = session()?;
    let _order = ordered();
    let tell_backend = {
        let mut st = state::lock();
        let vmm = &mut st.vmm;
        let h = vmm.handles.get_mut(&handle).filter(|h| h.refs > 0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        h.refs -= 1;
        let tell = h.refs == 0 && !h.released;
        if tell {
            h.released = true;
        }
        if h.refs == 0 && h.maps == 0 {
            vmm.handles.remove(&handle);
        }
        tell
    };
    if tell_backend {
        c.enqueue(Opcode::MemRelease, 0, current_or_primary(), &Id { id: U64::new(handle) }, &[])?;
    }
    Ok(())
}

fn map(ptr: CUdeviceptr, size: usize, offset: usize, handle: u64, flags: c_ulonglong) -> CuRes {
    let c = session()?;
    let g = granularity(c)?;
    let size = size as u64;
    if flags != 0 || offset != 0 || size == 0 || !size.is_multiple_of(g) || !ptr.is_multiple_of(g) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let end = ptr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let _order = ordered();
    {
        let mut st = state::lock();
        let vmm = &mut st.vmm;
        if vmm.reservations.range(..=ptr).next_back().is_none_or(|(b, s)| end > b + s) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if vmm.mappings.range(..end).next_back().is_some_and(|(b, m)| b + m.size > ptr) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A handle released to the backend cannot be mapped again, even if
        // retained since through a mapping that is now gone (natively it can).
        let h = vmm.handles.get_mut(&handle).filter(|h| h.refs > 0 && !h.released).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if size > h.size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        h.maps += 1;
        vmm.mappings.insert(ptr, MapInfo { size, handle, access: CU_MEM_ACCESS_FLAGS_PROT_NONE });
    }
    let m = MemMap { va: U64::new(ptr), size: U64::new(size), offset: U64::new(0), handle: U64::new(handle) };
    c.enqueue(Opcode::MemMap, 0, current_or_primary(), &m, &[])
}

fn unmap(ptr: CUdeviceptr, size: usize) -> CuRes {
    let c = session()?;
    let _order = ordered();
    {
        let mut st = state::lock();
        let vmm = &mut st.vmm;
        for base in vmm.covering(ptr, size as u64)? {
            let Some(m) = vmm.mappings.remove(&base) else { continue };
            if let Some(h) = vmm.handles.get_mut(&m.handle) {
                h.maps = h.maps.saturating_sub(1);
                if h.maps == 0 && h.refs == 0 {
                    vmm.handles.remove(&m.handle);
                }
            }
        }
    }
    c.enqueue(
        Opcode::MemUnmap,
        0,
        current_or_primary(),
        &VaRange { va: U64::new(ptr), size: U64::new(size as u64) },
        &[],
    )
}

fn set_access(ptr: CUdeviceptr, size: usize, desc: *const CUmemAccessDesc, count: usize) -> CuRes {
    let c = session()?;
    if desc.is_null() || count == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `count` descriptors per the CUDA API.
    let descs = unsafe { std::slice::from_raw_parts(desc, count) };
    let mut flags = None;
    for d in descs {
        check_location(&d.location)?;
        if !matches!(
            d.flags,
            CU_MEM_ACCESS_FLAGS_PROT_NONE | CU_MEM_ACCESS_FLAGS_PROT_READ | CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        ) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        flags = Some(d.flags);
    }
    let Some(flags) = flags else { return Err(CUDA_ERROR_INVALID_VALUE) };
    let _order = ordered();
    {
        let mut st = state::lock();
        let vmm = &mut st.vmm;
        for base in vmm.covering(ptr, size as u64)? {
            if let Some(m) = vmm.mappings.get_mut(&base) {
                m.access = flags;
            }
        }
    }
    let a = MemSetAccess {
        va: U64::new(ptr),
        size: U64::new(size as u64),
        flags: U32::new(flags as u32),
        _pad: U32::new(0),
    };
    c.enqueue(Opcode::MemSetAccess, 0, current_or_primary(), &a, &[])
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity_out: *mut usize,
    prop: *const CUmemAllocationProp,
    option: c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(granularity_out) }?;
        check_prop(prop)?;
        if !matches!(option, CU_MEM_ALLOC_GRANULARITY_MINIMUM | CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let g = granularity(session()?)?;
        out.set(usize::try_from(g).map_err(|_| CUDA_ERROR_UNKNOWN)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    addr: CUdeviceptr,
    flags: c_ulonglong,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(ptr) }?;
        out.set(address_reserve(size, alignment, addr, flags)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    ffi(|| address_free(ptr, size))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut c_ulonglong,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: c_ulonglong,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(handle) }?;
        out.set(create(size, prop, flags)?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: c_ulonglong) -> CUresult {
    ffi(|| release(handle))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: c_ulonglong,
    flags: c_ulonglong,
) -> CUresult {
    ffi(|| map(ptr, size, offset, handle, flags))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    ffi(|| unmap(ptr, size))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: CUdeviceptr,
    size: usize,
    desc: *const CUmemAccessDesc,
    count: usize,
) -> CUresult {
    ffi(|| set_access(ptr, size, desc, count))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAccess(
    flags: *mut c_ulonglong,
    location: *const CUmemLocation,
    ptr: CUdeviceptr,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(flags) }?;
        session()?;
        if location.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL, a CUmemLocation per the CUDA API.
        check_location(&unsafe { location.read_unaligned() })?;
        let (_, _, _, access) = state::lock().vmm.mapping_containing(ptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        out.set(access as c_ulonglong);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetAllocationPropertiesFromHandle(
    prop: *mut CUmemAllocationProp,
    handle: c_ulonglong,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(prop) }?;
        session()?;
        let h = state::lock().vmm.handles.get(&handle).filter(|h| h.refs > 0).copied();
        out.set(given_prop(h.ok_or(CUDA_ERROR_INVALID_VALUE)?.usage));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(handle: *mut c_ulonglong, addr: *mut c_void) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(handle) }?;
        session()?;
        let mut st = state::lock();
        let (_, _, h, _) = st.vmm.mapping_containing(addr as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let info = st.vmm.handles.get_mut(&h).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        info.refs += 1;
        out.set(h);
        Ok(())
    })
}

/// A mapped address as the guest's allocation table reports it: the
/// mapping, in no context (virtual memory belongs to the process).
pub fn as_alloc(vmm: &VmmState, addr: u64) -> Option<(u64, Alloc)> {
    let (base, size, handle, _) = vmm.mapping_containing(addr)?;
    Some((base, Alloc { size, ctx: 0, kind: AllocKind::Mapped { handle } }))
}
