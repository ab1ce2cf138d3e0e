//! Initialization, versions, the (single) device and its attributes, the
//! error-name functions and the profiler controls. Device facts come from
//! the backend's Hello reply.

use super::types::*;
use super::{ffi, session, CuRes, Out};
use crate::client;
use protocol::cuda::*;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, CString};
use std::sync::OnceLock;

/// `cuDriverGetVersion`'s answer when the backend cannot be reached: the
/// CUDA version this driver implements.
const FALLBACK_DRIVER_VERSION: c_int = 13000;

/// Device attributes the guest driver answers itself, because it does not
/// offer the feature whatever the host GPU can do (mapped or managed memory,
/// IPC and shareable handles, cooperative and cluster launches, stream
/// memory operations, sparse and deferred-mapping arrays, decompression,
/// CIG), or offers one the host may not report (host registration).
/// cudaGetDeviceProperties reads most of these. Memory pools and the
/// virtual-memory API (115, 102) are the backend's to say: its engine offers
/// them or not.
const ATTR_OVERRIDES: &[(usize, c_int)] = &[
    (19, 0),  // CAN_MAP_HOST_MEMORY
    (83, 0),  // MANAGED_MEMORY
    (88, 0),  // PAGEABLE_MEMORY_ACCESS
    (89, 0),  // CONCURRENT_MANAGED_ACCESS
    (91, 0),  // CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM
    (92, 0),  // CAN_USE_STREAM_MEM_OPS_V1
    (93, 0),  // CAN_USE_64_BIT_STREAM_MEM_OPS_V1
    (94, 0),  // CAN_USE_STREAM_WAIT_VALUE_NOR_V1
    (95, 0),  // COOPERATIVE_LAUNCH
    (96, 0),  // COOPERATIVE_MULTI_DEVICE_LAUNCH
    (99, 1),  // HOST_REGISTER_SUPPORTED
    (100, 0), // PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES
    (101, 0), // DIRECT_MANAGED_MEM_ACCESS_FROM_HOST
    (103, 0), // HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
    (104, 0), // HANDLE_TYPE_WIN32_HANDLE_SUPPORTED
    (105, 0), // HANDLE_TYPE_WIN32_KMT_HANDLE_SUPPORTED
    (107, 0), // GENERIC_COMPRESSION_SUPPORTED
    (110, 0), // GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED
    (112, 0), // SPARSE_CUDA_ARRAY_SUPPORTED
    (114, 0), // TIMELINE_SEMAPHORE_INTEROP_SUPPORTED
    (116, 0), // GPU_DIRECT_RDMA_SUPPORTED
    (117, 0), // GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS
    (118, 0), // GPU_DIRECT_RDMA_WRITES_ORDERING
    (119, 0), // MEMPOOL_SUPPORTED_HANDLE_TYPES
    (120, 0), // CLUSTER_LAUNCH
    (121, 0), // DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED
    (122, 0), // CAN_USE_64_BIT_STREAM_MEM_OPS
    (123, 0), // CAN_USE_STREAM_WAIT_VALUE_NOR
    (124, 0), // DMA_BUF_SUPPORTED
    (125, 0), // IPC_EVENT_SUPPORTED
    (128, 0), // HANDLE_TYPE_FABRIC_SUPPORTED
    (132, 0), // MULTICAST_SUPPORTED
    (135, 0), // D3D12_CIG_SUPPORTED
    (136, 0), // MEM_DECOMPRESS_ALGORITHM_MASK
    (137, 0), // MEM_DECOMPRESS_MAXIMUM_LENGTH
    (138, 0), // VULKAN_CIG_SUPPORTED
    (141, 0), // HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
    (142, 0), // HOST_NUMA_MEMORY_POOLS_SUPPORTED
    (143, 0), // HOST_NUMA_MULTINODE_IPC_SUPPORTED
    (144, 0), // HOST_MEMORY_POOLS_SUPPORTED
    (145, 0), // HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
    (146, 0), // HOST_ALLOC_DMA_BUF_SUPPORTED
    (152, 0), // DMA_BUF_MMAP_SUPPORTED
];

/// Checks a `CUdevice` argument: the VM sees one device, ordinal 0.
pub fn check_device(dev: CUdevice) -> CuRes {
    session()?;
    if dev != 0 {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

/// A device attribute as the guest reports it, `None` for numbers CUDA does
/// not define.
pub fn attribute(attrib: usize) -> CuRes<Option<c_int>> {
    let c = session()?;
    if attrib == 0 {
        return Ok(None);
    }
    if let Some((_, v)) = ATTR_OVERRIDES.iter().find(|(a, _)| *a == attrib) {
        return Ok(Some(*v));
    }
    Ok(c.facts.attr(attrib))
}

/// Attribute value for the driver's own checks; 0 where unknown.
pub fn attr_or_zero(attrib: usize) -> c_int {
    attribute(attrib).ok().flatten().unwrap_or(0)
}

/// The PCI address the device reports, "DDDD:BB:DD.0" as natively.
fn pci_bus_id() -> String {
    format!(
        "{:04X}:{:02X}:{:02X}.0",
        attr_or_zero(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
        attr_or_zero(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
        attr_or_zero(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)
    )
}

/// Parses "[domain:]bus:device.function" (hex) into (domain, bus, device).
fn parse_pci_bus_id(s: &str) -> Option<(u32, u32, u32)> {
    let (rest, _function) = s.trim().rsplit_once('.')?;
    let parts: Vec<&str> = rest.split(':').collect();
    let hex = |p: &str| u32::from_str_radix(p, 16).ok();
    match parts.as_slice() {
        [d, b, dev] => Some((hex(d)?, hex(b)?, hex(dev)?)),
        [b, dev] => Some((0, hex(b)?, hex(dev)?)),
        _ => None,
    }
}

/// Copies `s` into a C buffer of `len` bytes, truncating and NUL-terminating.
///
/// # Safety
/// `buf` is valid for `len` bytes of writes.
unsafe fn copy_c_string(buf: *mut c_char, len: c_int, s: &[u8]) -> CuRes {
    if buf.is_null() || len <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    // SAFETY: n + 1 <= len bytes, writable by the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
    Ok(())
}

// ---- init and versions -------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    ffi(|| {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        client::get()?;
        super::mark_initialized();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(driverVersion: *mut c_int) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(driverVersion) }?;
        // Natively this works without cuInit, so it may open the session.
        let v = match client::get() {
            Ok(c) => c.facts.reply.driver_version.get() as c_int,
            Err(_) => FALLBACK_DRIVER_VERSION,
        };
        out.set(v);
        Ok(())
    })
}

// ---- devices -----------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(count) }?;
        let c = session()?;
        out.set(c.facts.reply.device_count.get().min(1) as c_int);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(device) }?;
        check_device(ordinal)?;
        out.set(0);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        let c = session()?;
        // SAFETY: the caller gives a buffer of `len` bytes.
        unsafe { copy_c_string(name, len, c.facts.name()) }
    })
}

/// # Safety
/// `uuid` is NULL or writable.
unsafe fn device_uuid(uuid: *mut CUuuid, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(uuid) }?;
        check_device(dev)?;
        let c = session()?;
        out.set(CUuuid { bytes: c.facts.reply.uuid.map(|b| b as c_char) });
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut CUuuid, dev: CUdevice) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { device_uuid(uuid, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { device_uuid(uuid, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(pi: *mut c_int, attrib: c_int, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pi) }?;
        check_device(dev)?;
        let a = usize::try_from(attrib).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        out.set(attribute(a)?.ok_or(CUDA_ERROR_INVALID_VALUE)?);
        Ok(())
    })
}

fn total_mem() -> CuRes<u64> {
    Ok(session()?.facts.total_mem())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(bytes) }?;
        check_device(dev)?;
        out.set(total_mem()? as usize);
        Ok(())
    })
}

/// The pre-3.2 entry point, with a 32-bit size (saturated).
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(bytes) }?;
        check_device(dev)?;
        out.set(total_mem()?.min(c_uint::MAX as u64) as c_uint);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output arguments per the CUDA API.
        let (ma, mi) = unsafe { (Out::new(major)?, Out::new(minor)?) };
        check_device(dev)?;
        ma.set(attr_or_zero(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR));
        mi.set(attr_or_zero(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(pciBusId: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        // SAFETY: the caller gives a buffer of `len` bytes.
        unsafe { copy_c_string(pciBusId, len, pci_bus_id().as_bytes()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetByPCIBusId(dev: *mut CUdevice, pciBusId: *const c_char) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(dev) }?;
        // SAFETY: a NUL-terminated string per the CUDA API.
        let s = unsafe { super::c_name(pciBusId) }?;
        session()?;
        let want = parse_pci_bus_id(&s.to_string_lossy()).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if parse_pci_bus_id(&pci_bus_id()) != Some(want) {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        out.set(0);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetLuid(_luid: *mut c_char, _deviceNodeMask: *mut c_uint, dev: CUdevice) -> CUresult {
    ffi(|| {
        check_device(dev)?;
        // LUIDs exist on Windows only.
        Err(CUDA_ERROR_NOT_SUPPORTED)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceCanAccessPeer(
    canAccessPeer: *mut c_int,
    dev: CUdevice,
    peerDev: CUdevice,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(canAccessPeer) }?;
        check_device(dev)?;
        check_device(peerDev)?;
        // One device: it has no peer.
        out.set(0);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetExecAffinitySupport(pi: *mut c_int, _type: c_int, dev: CUdevice) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pi) }?;
        check_device(dev)?;
        out.set(0);
        Ok(())
    })
}

// ---- profiler controls -------------------------------------------------

/// No profiler runs in a gpuvisor guest, so starting, stopping or
/// configuring one has nothing to do; natively these also succeed when no
/// profiler is attached (cudaProfilerStart/Stop in programs that mark the
/// region they want profiled).
#[no_mangle]
pub unsafe extern "C" fn cuProfilerStart() -> CUresult {
    ffi(|| session().map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuProfilerStop() -> CUresult {
    ffi(|| session().map(|_| ()))
}

/// Deprecated since CUDA 11: the configuration is not read.
#[no_mangle]
pub unsafe extern "C" fn cuProfilerInitialize(
    _configFile: *const c_char,
    _outputFile: *const c_char,
    _outputMode: c_int,
) -> CUresult {
    ffi(|| session().map(|_| ()))
}

// ---- errors ------------------------------------------------------------

/// NUL-terminated copies of protocol::cuda's names and descriptions, built
/// once and never freed, so the pointers handed out stay valid.
fn error_strings() -> &'static HashMap<CUresult, (CString, CString)> {
    static TABLE: OnceLock<HashMap<CUresult, (CString, CString)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=1000u32)
            .filter_map(|code| {
                let name = CString::new(error_name(code)?).ok()?;
                let desc = CString::new(error_string(code)?).ok()?;
                Some((code, (name, desc)))
            })
            .collect()
    })
}

/// # Safety
/// `pStr` is NULL or writable.
unsafe fn error_text(error: CUresult, pStr: *mut *const c_char, pick: fn(&(CString, CString)) -> &CString) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(pStr) }?;
        match error_strings().get(&error) {
            Some(e) => {
                out.set(pick(e).as_ptr());
                Ok(())
            }
            None => {
                out.set(std::ptr::null());
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, pStr: *mut *const c_char) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { error_text(error, pStr, |e| &e.0) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, pStr: *mut *const c_char) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    unsafe { error_text(error, pStr, |e| &e.1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn name_of(code: CUresult) -> (CUresult, Option<String>) {
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: p is a valid output slot.
        let r = unsafe { cuGetErrorName(code, &mut p) };
        // SAFETY: a non-NULL answer is a static NUL-terminated string.
        (r, (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()))
    }

    #[test]
    fn error_names_and_strings_are_static_c_strings() {
        assert_eq!(name_of(CUDA_SUCCESS), (CUDA_SUCCESS, Some("CUDA_SUCCESS".into())));
        assert_eq!(name_of(CUDA_ERROR_NOT_READY), (CUDA_SUCCESS, Some("CUDA_ERROR_NOT_READY".into())));
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: p is a valid output slot.
        assert_eq!(unsafe { cuGetErrorString(CUDA_ERROR_INVALID_VALUE, &mut p) }, CUDA_SUCCESS);
        // SAFETY: static NUL-terminated string.
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_str().unwrap(), "invalid argument");
    }

    #[test]
    fn unknown_error_codes_give_invalid_value_and_null() {
        assert_eq!(name_of(123_456), (CUDA_ERROR_INVALID_VALUE, None));
        let mut p: *const c_char = std::ptr::dangling();
        // SAFETY: p is a valid output slot.
        assert_eq!(unsafe { cuGetErrorString(77_777, &mut p) }, CUDA_ERROR_INVALID_VALUE);
        assert!(p.is_null());
        // SAFETY: NULL output is rejected, not written.
        assert_eq!(unsafe { cuGetErrorName(0, std::ptr::null_mut()) }, CUDA_ERROR_INVALID_VALUE);
    }

    #[test]
    fn calls_before_cuinit_are_not_initialized() {
        let mut n = 0;
        // SAFETY: valid output slot.
        assert_eq!(unsafe { cuDeviceGetCount(&mut n) }, CUDA_ERROR_NOT_INITIALIZED);
        // SAFETY: NULL output.
        assert_eq!(unsafe { cuDeviceGetCount(std::ptr::null_mut()) }, CUDA_ERROR_INVALID_VALUE);
    }

    #[test]
    fn pci_bus_ids_parse_with_or_without_domain() {
        assert_eq!(parse_pci_bus_id("0000:3B:00.0"), Some((0, 0x3b, 0)));
        assert_eq!(parse_pci_bus_id("00000001:3b:1f.0"), Some((1, 0x3b, 0x1f)));
        assert_eq!(parse_pci_bus_id("3b:00.0"), Some((0, 0x3b, 0)));
        assert_eq!(parse_pci_bus_id("nonsense"), None);
    }
}
