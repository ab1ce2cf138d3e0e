//! The exported MIG calls. nvml-wrapper 0.11 wraps only `mig_mode`; a caller
//! reaches the rest through nvml-wrapper-sys's `NvmlLib` and wraps the MIG
//! handles it gets with `Device::new`.
//!
//! A GPU with MIG enabled has [`MAX_MIG_DEVICES`] slots; the configured
//! instances fill the first ones and the rest answer `NVML_ERROR_NOT_FOUND`,
//! as unpopulated slots do on real hardware.

use crate::config::MAX_MIG_DEVICES;
use crate::error::{to_return, SimError};
use crate::handle::DeviceId;
use crate::out_param::{non_null, write};
use crate::session::{self, Device};
use nvml_wrapper_sys::bindings::*;
use std::ffi::c_uint;

/// Current and pending mode are both `mig_enabled`; MIG handles have no mode.
///
/// # Safety
/// `current_mode` and `pending_mode` are each null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current_mode: *mut c_uint,
    pending_mode: *mut c_uint,
) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let (current_mode, pending_mode) = (non_null(current_mode)?, non_null(pending_mode)?);
        let Device::Gpu { gpu, .. } = dev else {
            return Err(SimError::NotSupported);
        };
        let mode = if gpu.mig_enabled { NVML_DEVICE_MIG_ENABLE } else { NVML_DEVICE_MIG_DISABLE };
        // SAFETY: the caller's contract is `write`'s, for both pointers.
        unsafe {
            write(current_mode, mode)?;
            write(pending_mode, mode)
        }
    }))
}

/// [`MAX_MIG_DEVICES`] with MIG enabled, 0 without.
///
/// # Safety
/// `count` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(device: nvmlDevice_t, count: *mut c_uint) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let Device::Gpu { gpu, .. } = dev else {
            return Err(SimError::InvalidArgument);
        };
        let max = if gpu.mig_enabled { MAX_MIG_DEVICES as c_uint } else { 0 };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(count, max) }
    }))
}

/// The MIG instance in slot `index`: configured instances fill slots from 0;
/// an empty slot is `NVML_ERROR_NOT_FOUND`, an index past the maximum (or any
/// index with MIG off) `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `mig_device` is null or valid for writing one `nvmlDevice_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig_device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let mig_device = non_null(mig_device)?;
        let Device::Gpu { index: gpu_index, gpu } = dev else {
            return Err(SimError::InvalidArgument);
        };
        let slot = usize::try_from(index).map_err(|_| SimError::InvalidArgument)?;
        if !gpu.mig_enabled || slot >= MAX_MIG_DEVICES {
            return Err(SimError::InvalidArgument);
        }
        if slot >= gpu.mig_instances.len() {
            return Err(SimError::NotFound);
        }
        let handle = DeviceId::Mig { gpu: gpu_index, instance: slot }.to_handle();
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(mig_device, handle) }
    }))
}

/// 1 for a MIG handle, 0 for a GPU.
///
/// # Safety
/// `is_mig_device` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(device: nvmlDevice_t, is_mig_device: *mut c_uint) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let is_mig = c_uint::from(matches!(dev, Device::Mig { .. }));
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(is_mig_device, is_mig) }
    }))
}

/// The GPU a MIG handle belongs to.
///
/// # Safety
/// `device` is null or valid for writing one `nvmlDevice_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig_device: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    to_return(session::with_device(mig_device, |dev| {
        let Device::Mig { gpu_index, .. } = dev else {
            return Err(SimError::InvalidArgument);
        };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(device, DeviceId::Gpu(gpu_index).to_handle()) }
    }))
}

/// A MIG instance's GPU instance id: its slot.
///
/// # Safety
/// `id` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let Device::Mig { instance_index, .. } = dev else {
            return Err(SimError::NotSupported);
        };
        let slot = c_uint::try_from(instance_index).map_err(|_| SimError::InvalidArgument)?;
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(id, slot) }
    }))
}

/// A MIG instance's compute instance id: 0, the one compute instance each GPU instance holds here.
///
/// # Safety
/// `id` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(device: nvmlDevice_t, id: *mut c_uint) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let Device::Mig { .. } = dev else {
            return Err(SimError::NotSupported);
        };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(id, 0) }
    }))
}

/// A MIG instance's `sm_count`, `memory_mib` and the slice counts its profile
/// names (shared engine counts are 0). Like NVML, only MIG handles have attributes.
///
/// # Safety
/// `attributes` is null or valid for writing one `nvmlDeviceAttributes_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetAttributes_v2(
    device: nvmlDevice_t,
    attributes: *mut nvmlDeviceAttributes_t,
) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let Device::Mig { instance, .. } = dev else {
            return Err(SimError::NotSupported);
        };
        let attrs = nvmlDeviceAttributes_t {
            multiprocessorCount: instance.sm_count,
            sharedCopyEngineCount: 0,
            sharedDecoderCount: 0,
            sharedEncoderCount: 0,
            sharedJpegCount: 0,
            sharedOfaCount: 0,
            gpuInstanceSliceCount: instance.profile.gpu_slices,
            computeInstanceSliceCount: instance.profile.compute_slices,
            memorySizeMB: instance.memory_mib,
        };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(attributes, attrs) }
    }))
}
