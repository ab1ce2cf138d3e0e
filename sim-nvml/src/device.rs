//! The exported per-device calls: enumeration and lookup, identity, memory,
//! PCI, and the readings (utilisation, power, temperature, energy, processes).
//! MIG device handles answer what real MIG handles answer: identity, memory
//! and PCI; readings are `NVML_ERROR_NOT_SUPPORTED` on them.

use crate::error::{to_return, SimError};
use crate::handle::DeviceId;
use crate::out_param::{non_null, read_str, write, write_str};
use crate::session::{self, Device};
use nvml_wrapper_sys::bindings::*;
use std::ffi::{c_char, c_uint, c_ulonglong};

const MIB: u64 = 1024 * 1024;

/// What an H100 SXM5 80GB reports: device 0x2330 and subsystem 0x16c1, vendor 0x10de.
const PCI_DEVICE_ID: c_uint = 0x2330_10de;
const PCI_SUBSYSTEM_ID: c_uint = 0x16c1_10de;

/// `NVML_STRUCT_VERSION(Memory, 2)` from nvml.h: the version `nvmlMemory_v2_t` callers set.
const MEMORY_V2_VERSION: c_uint = (std::mem::size_of::<nvmlMemory_v2_t>() | (2 << 24)) as c_uint;

/// `nvmlProcessInfo_t` leaves the MIG ids at this when the process is not in a MIG instance.
const NO_INSTANCE: c_uint = 0xffff_ffff;

/// Counts physical GPUs; MIG instances are reached through their parent.
///
/// # Safety
/// `device_count` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        let count = c_uint::try_from(host.gpus.len()).map_err(|_| SimError::InvalidArgument)?;
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(device_count, count) }
    }))
}

/// The GPU at `index` (0-based, in config order).
///
/// # Safety
/// `device` is null or valid for writing one `nvmlDevice_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut nvmlDevice_t) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        let index = usize::try_from(index).map_err(|_| SimError::InvalidArgument)?;
        if index >= host.gpus.len() {
            return Err(SimError::InvalidArgument);
        }
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(device, DeviceId::Gpu(index).to_handle()) }
    }))
}

/// The GPU or MIG instance with this UUID (`GPU-...` or `MIG-...`).
///
/// # Safety
/// `uuid` is null or NUL-terminated; `device` is null or valid for writing one `nvmlDevice_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        // SAFETY: the caller's contract is `read_str`'s.
        let uuid = unsafe { read_str(uuid) }?;
        let device = non_null(device)?;
        let id = host.find_uuid(uuid).ok_or(SimError::NotFound)?;
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(device, id.to_handle()) }
    }))
}

/// The GPU at this PCI address, in either `00000000:01:00.0` or `0000:01:00.0` form.
///
/// # Safety
/// `pci_bus_id` is null or NUL-terminated; `device` is null or valid for writing one `nvmlDevice_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    pci_bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    to_return(session::with_host(|host| {
        // SAFETY: the caller's contract is `read_str`'s.
        let text = unsafe { read_str(pci_bus_id) }?;
        let device = non_null(device)?;
        let address: crate::config::PciAddress = text.parse().map_err(|_| SimError::InvalidArgument)?;
        let index = host.gpus.iter().position(|gpu| gpu.pci == address).ok_or(SimError::NotFound)?;
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(device, DeviceId::Gpu(index).to_handle()) }
    }))
}

/// The configured name; a MIG instance is `<GPU name> MIG <profile>`, as on real hardware.
///
/// # Safety
/// `name` is null or valid for writing `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(device: nvmlDevice_t, name: *mut c_char, length: c_uint) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let text = match dev {
            Device::Gpu { gpu, .. } => gpu.name.clone(),
            Device::Mig { gpu, instance, .. } => {
                format!("{} MIG {}", gpu.name, instance.profile.name)
            }
        };
        // SAFETY: the caller's contract is `write_str`'s.
        unsafe { write_str(name, length, &text) }
    }))
}

/// The configured `GPU-...` or `MIG-...` UUID.
///
/// # Safety
/// `uuid` is null or valid for writing `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(device: nvmlDevice_t, uuid: *mut c_char, length: c_uint) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let text = match dev {
            Device::Gpu { gpu, .. } => &gpu.uuid,
            Device::Mig { instance, .. } => &instance.uuid,
        };
        // SAFETY: the caller's contract is `write_str`'s.
        unsafe { write_str(uuid, length, text) }
    }))
}

/// The GPU's enumeration index; not supported on MIG handles.
///
/// # Safety
/// `index` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: nvmlDevice_t, index: *mut c_uint) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| match dev {
        Device::Gpu { index: i, .. } => {
            let i = c_uint::try_from(i).map_err(|_| SimError::InvalidArgument)?;
            // SAFETY: the caller's contract is `write`'s.
            unsafe { write(index, i) }
        }
        Device::Mig { .. } => Err(SimError::NotSupported),
    }))
}

/// Total, used and free memory in bytes (reserved is 0). A GPU's used memory
/// is `memory_used_mib`, or its processes' sum; a MIG instance reports none used.
///
/// # Safety
/// `memory` is null or valid for reading and writing one `nvmlMemory_v2_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let memory = non_null(memory)?;
        // SAFETY: not null, and the caller vouches that it points to an `nvmlMemory_v2_t`.
        let version = unsafe { std::ptr::addr_of!((*memory).version).read() };
        if version != MEMORY_V2_VERSION {
            return Err(SimError::ArgumentVersionMismatch);
        }
        let (total_mib, used_mib) = match dev {
            Device::Gpu { gpu, .. } => (gpu.memory_total_mib, gpu.readings.memory_used_mib),
            Device::Mig { instance, .. } => (instance.memory_mib, 0),
        };
        // Config validation bounds both by 1 PiB and keeps used <= total.
        let (total, used) = (total_mib * MIB, used_mib * MIB);
        let info = nvmlMemory_v2_t { version, total, reserved: 0, free: total - used, used };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(memory, info) }
    }))
}

/// The configured bus id, with an H100's device and subsystem ids; a MIG
/// instance reports its parent's.
///
/// # Safety
/// `pci` is null or valid for writing one `nvmlPciInfo_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(device: nvmlDevice_t, pci: *mut nvmlPciInfo_t) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let gpu = match dev {
            Device::Gpu { gpu, .. } | Device::Mig { gpu, .. } => gpu,
        };
        let info = nvmlPciInfo_t {
            busIdLegacy: c_chars(&gpu.pci.legacy()),
            domain: gpu.pci.domain,
            bus: gpu.pci.bus.into(),
            device: gpu.pci.device.into(),
            pciDeviceId: PCI_DEVICE_ID,
            pciSubSystemId: PCI_SUBSYSTEM_ID,
            busId: c_chars(&gpu.pci.to_string()),
        };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(pci, info) }
    }))
}

/// A NUL-padded C array; `text` is a bus id, always shorter than `N`.
fn c_chars<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0; N];
    for (slot, byte) in out.iter_mut().take(N - 1).zip(text.bytes()) {
        *slot = byte as c_char;
    }
    out
}

/// Runs `read` on the GPU's readings; MIG handles have none, as on real hardware.
fn with_readings<T>(
    device: nvmlDevice_t,
    read: impl FnOnce(&crate::config::Readings) -> Result<T, SimError>,
) -> Result<T, SimError> {
    session::with_device(device, |dev| match dev {
        Device::Gpu { gpu, .. } => read(&gpu.readings),
        Device::Mig { .. } => Err(SimError::NotSupported),
    })
}

/// `utilization_gpu_pct` and `utilization_memory_pct`.
///
/// # Safety
/// `utilization` is null or valid for writing one `nvmlUtilization_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    to_return(with_readings(device, |r| {
        let rates = nvmlUtilization_t { gpu: r.utilization_gpu_pct, memory: r.utilization_memory_pct };
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(utilization, rates) }
    }))
}

/// `power_mw`, in milliwatts.
///
/// # Safety
/// `power` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(device: nvmlDevice_t, power: *mut c_uint) -> nvmlReturn_t {
    // SAFETY: the caller's contract is `write`'s.
    to_return(with_readings(device, |r| unsafe { write(power, r.power_mw) }))
}

/// `temperature_c` for `NVML_TEMPERATURE_GPU`, the only sensor NVML defines.
///
/// # Safety
/// `temp` is null or valid for writing one `unsigned int`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor_type: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    to_return(with_readings(device, |r| {
        if sensor_type != nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU {
            return Err(SimError::InvalidArgument);
        }
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(temp, r.temperature_c) }
    }))
}

/// `energy_mj`, in millijoules.
///
/// # Safety
/// `energy` is null or valid for writing one `unsigned long long`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    // SAFETY: the caller's contract is `write`'s.
    to_return(with_readings(device, |r| unsafe { write(energy, r.energy_mj) }))
}

/// `processes`, with NVML's sizing protocol: `*info_count` is the capacity of
/// `infos` on entry and the number of processes on return; too small a
/// capacity returns `NVML_ERROR_INSUFFICIENT_SIZE` with the count needed, and
/// `infos` may be null when the capacity is 0. MIG handles list no processes.
///
/// # Safety
/// `info_count` is null or valid for reading and writing one `unsigned int`;
/// `infos` is null or valid for writing `*info_count` `nvmlProcessInfo_t`s.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let info_count = non_null(info_count)?;
        let processes = match dev {
            Device::Gpu { gpu, .. } => gpu.readings.processes.as_slice(),
            Device::Mig { .. } => &[],
        };
        let needed = c_uint::try_from(processes.len()).map_err(|_| SimError::InvalidArgument)?;
        // SAFETY: not null, and the caller vouches that it is readable.
        let capacity = unsafe { info_count.read() };
        if capacity < needed {
            // SAFETY: the caller's contract is `write`'s.
            unsafe { write(info_count, needed) }?;
            return Err(SimError::InsufficientSize);
        }
        if needed > 0 {
            let infos = non_null(infos)?;
            for (i, process) in processes.iter().enumerate() {
                let info = nvmlProcessInfo_t {
                    pid: process.pid,
                    usedGpuMemory: process.used_mib.saturating_mul(MIB),
                    gpuInstanceId: NO_INSTANCE,
                    computeInstanceId: NO_INSTANCE,
                };
                // SAFETY: `i < needed <= capacity`, and the caller vouches that
                // `infos` holds `capacity` entries.
                unsafe { infos.add(i).write(info) };
            }
        }
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(info_count, needed) }
    }))
}

/// One utilisation sample per process that has `sm_util_pct`, stamped now
/// (so every call newer than `last_seen` gets them); none is
/// `NVML_ERROR_NOT_FOUND`, as NVML answers when it has no samples. A null
/// `utilization` asks for the count (`NVML_ERROR_INSUFFICIENT_SIZE`).
///
/// # Safety
/// `count` is null or valid for reading and writing one `unsigned int`;
/// `utilization` is null or holds `*count` entries.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    count: *mut c_uint,
    last_seen: c_ulonglong,
) -> nvmlReturn_t {
    to_return(session::with_device(device, |dev| {
        let count = non_null(count)?;
        let Device::Gpu { gpu, .. } = dev else { return Err(SimError::NotSupported) };
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let samples: Vec<nvmlProcessUtilizationSample_t> = gpu
            .readings
            .processes
            .iter()
            .filter(|_| now_us > last_seen)
            .filter_map(|p| {
                Some(nvmlProcessUtilizationSample_t {
                    pid: p.pid,
                    timeStamp: now_us,
                    smUtil: p.sm_util_pct?,
                    memUtil: p.mem_util_pct.unwrap_or(0),
                    encUtil: 0,
                    decUtil: 0,
                })
            })
            .collect();
        if samples.is_empty() {
            return Err(SimError::NotFound);
        }
        let needed = c_uint::try_from(samples.len()).map_err(|_| SimError::InvalidArgument)?;
        // SAFETY: not null, and the caller vouches that it is readable.
        let capacity = unsafe { count.read() };
        if utilization.is_null() || capacity < needed {
            // SAFETY: the caller's contract is `write`'s.
            unsafe { write(count, needed) }?;
            return Err(SimError::InsufficientSize);
        }
        for (i, sample) in samples.into_iter().enumerate() {
            // SAFETY: `i < needed <= capacity`, and the caller vouches that
            // `utilization` holds `capacity` entries.
            unsafe { utilization.add(i).write(sample) };
        }
        // SAFETY: the caller's contract is `write`'s.
        unsafe { write(count, needed) }
    }))
}
