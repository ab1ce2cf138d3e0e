//! The exported library-wide calls: init and shutdown, error strings, and
//! the driver, NVML and CUDA versions.

use crate::error::{describe, to_return};
use crate::out_param::{write, write_str};
use crate::session;
use nvml_wrapper_sys::bindings::nvmlReturn_t;
use std::ffi::{c_char, c_int, c_uint};

/// Starts (or counts another) session; the first reads `GPUVISOR_SIM_NVML_CONFIG`.
/// A config that cannot be read or is invalid fails with `NVML_ERROR_UNKNOWN`
/// and says why on stderr, once per distinct reason.
///
/// # Safety
/// None beyond the C ABI; `unsafe` only to match the NVML prototype.
#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    to_return(session::init())
}

/// Same as [`nvmlInit_v2`]; the flags (no GPUs, no attach) change nothing here.
///
/// # Safety
/// None beyond the C ABI.
#[no_mangle]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    to_return(session::init())
}

/// Balances one init; `NVML_ERROR_UNINITIALIZED` when none is outstanding.
///
/// # Safety
/// None beyond the C ABI.
#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    to_return(session::shutdown())
}

/// A static description of `result`; works without init, like NVML's.
///
/// # Safety
/// None beyond the C ABI; the returned string must not be freed or written.
#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    describe(result)
}

/// The configured driver version, e.g. `580.95.05`.
///
/// # Safety
/// `version` is null or valid for writing `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        // SAFETY: the caller's contract is `write_str`'s.
        unsafe { write_str(version, length, &host.driver_version) }
    }))
}

/// `<CUDA major>.<driver version>`, e.g. `13.580.95.05`, as NVML numbers itself.
///
/// # Safety
/// `version` is null or valid for writing `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        let text = format!("{}.{}", host.cuda_driver_version / 1000, host.driver_version);
        // SAFETY: the caller's contract is `write_str`'s.
        unsafe { write_str(version, length, &text) }
    }))
}

/// The configured CUDA driver version, e.g. 13000 for CUDA 13.0.
///
/// # Safety
/// `cuda_driver_version` is null or valid for writing one `int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(cuda_driver_version: *mut c_int) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(cuda_driver_version, host.cuda_driver_version) }
    }))
}

/// Same as [`nvmlSystemGetCudaDriverVersion`], the entry point nvml-wrapper calls.
///
/// # Safety
/// `cuda_driver_version` is null or valid for writing one `int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(cuda_driver_version: *mut c_int) -> nvmlReturn_t {
    // SAFETY: same contract.
    unsafe { nvmlSystemGetCudaDriverVersion(cuda_driver_version) }
}
