//! A simulated NVML: `libnvidia_ml.so` exports the NVML C functions that
//! gpuvisord calls through nvml-wrapper, and answers them from a JSON
//! description of the host, so CI without a GPU loads it with
//! `Nvml::builder().lib_path(path).init()` exactly as it loads the real
//! `libnvidia-ml.so.1`.
//!
//! # Loading
//!
//! `cargo build -p gpuvisor-sim-nvml` leaves the library at
//! `$CARGO_TARGET_DIR/<profile>/libnvidia_ml.so`. nvml-wrapper resolves each
//! symbol when it is first called, so a call this library does not export
//! fails with `NvmlError::FailedToLoadSymbol` naming the missing function,
//! rather than pretending the GPU lacks the feature.
//!
//! # Configuration
//!
//! `nvmlInit` reads the file named by `GPUVISOR_SIM_NVML_CONFIG`. Without it
//! there is one GPU: "NVIDIA H100 80GB HBM3 (simulated)", 81559 MiB, UUID
//! `GPU-00000000-5157-0000-0000-000000000001`, PCI `00000000:01:00.0`, MIG
//! off, driver 580.95.05, CUDA 13000, idle (0 %, 70 W, 35 °C).
//!
//! ```json
//! {
//!   "driver_version": "580.95.05",
//!   "cuda_driver_version": 13000,
//!   "gpus": [
//!     {
//!       "name": "NVIDIA H100 80GB HBM3",
//!       "uuid": "GPU-...",
//!       "memory_total_mib": 81559,
//!       "memory_used_mib": 1024,
//!       "pci_bus_id": "00000000:01:00.0",
//!       "mig_enabled": true,
//!       "mig_instances": [
//!         { "uuid": "MIG-...", "memory_mib": 9856, "sm_count": 16, "profile": "1g.10gb" }
//!       ],
//!       "utilization_gpu_pct": 40,
//!       "utilization_memory_pct": 10,
//!       "power_mw": 250000,
//!       "temperature_c": 55,
//!       "energy_mj": 123456,
//!       "processes": [ { "pid": 4242, "used_mib": 1024 } ],
//!       "xid_errors": [ 79 ]
//!     }
//!   ]
//! }
//! ```
//!
//! | field | required | default | meaning |
//! |---|---|---|---|
//! | `driver_version` | no | `580.95.05` | `nvmlSystemGetDriverVersion` |
//! | `cuda_driver_version` | no | `13000` | `nvmlSystemGetCudaDriverVersion_v2` (major × 1000 + minor × 10) |
//! | `gpus` | yes | | in enumeration order; may be empty |
//! | `gpus[].name` | yes | | `nvmlDeviceGetName` |
//! | `gpus[].uuid` | yes | | starts with `GPU-`; unique |
//! | `gpus[].memory_total_mib` | yes | | |
//! | `gpus[].memory_used_mib` | no | sum of `processes[].used_mib` | at most the total |
//! | `gpus[].pci_bus_id` | yes | | `00000000:01:00.0` or `0000:01:00.0`; unique |
//! | `gpus[].mig_enabled` | no | `false` | |
//! | `gpus[].mig_instances` | no | `[]` | at most 7, only with MIG enabled, memory summing to at most the total |
//! | `mig_instances[].uuid` | yes | | starts with `MIG-`; unique |
//! | `mig_instances[].memory_mib` | yes | | |
//! | `mig_instances[].sm_count` | yes | | `nvmlDeviceGetAttributes_v2` |
//! | `mig_instances[].profile` | yes | | `1g.10gb` or `1c.2g.20gb`; gives the slice counts |
//! | `gpus[].utilization_gpu_pct` | no | `0` | 0 to 100 |
//! | `gpus[].utilization_memory_pct` | no | `0` | 0 to 100 |
//! | `gpus[].power_mw` | no | `70000` | milliwatts |
//! | `gpus[].temperature_c` | no | `35` | |
//! | `gpus[].energy_mj` | no | `0` | millijoules since "driver load" |
//! | `gpus[].processes` | no | `[]` | `{pid, used_mib}`, both required; `sm_util_pct`, `mem_util_pct` (0 to 100) give the process utilisation samples |
//! | `gpus[].xid_errors` | no | `[]` | XIDs that happened, oldest first: append to raise one |
//!
//! Unknown fields are errors. A file that cannot be read, parsed or
//! validated makes `nvmlInit` return `NVML_ERROR_UNKNOWN`, and the reason is
//! printed to stderr once.
//!
//! The readings (utilisation, power, temperature, energy, used memory,
//! processes, XID errors) are taken again on the first call after the file's contents
//! change, so a test can change them under a running daemon. Contents, not
//! mtimes, are compared, so two rewrites within one tick of the filesystem
//! clock are both seen. Writing a new file and renaming it over the old one
//! keeps any call from seeing it half-written; a call that does (or any
//! broken rewrite) keeps the last readings and warns once. Changes to
//! anything else wait for the next first `nvmlInit` (after the last
//! `nvmlShutdown`).
//!
//! # Exported functions
//!
//! Library: `nvmlInit_v2`, `nvmlInitWithFlags`, `nvmlShutdown`,
//! `nvmlErrorString`, `nvmlSystemGetDriverVersion`,
//! `nvmlSystemGetNVMLVersion`, `nvmlSystemGetCudaDriverVersion`,
//! `nvmlSystemGetCudaDriverVersion_v2`.
//! Devices: `nvmlDeviceGetCount_v2`, `nvmlDeviceGetHandleByIndex_v2`,
//! `nvmlDeviceGetHandleByUUID`, `nvmlDeviceGetHandleByPciBusId_v2`,
//! `nvmlDeviceGetName`, `nvmlDeviceGetUUID`, `nvmlDeviceGetIndex`,
//! `nvmlDeviceGetMemoryInfo_v2`, `nvmlDeviceGetPciInfo_v3`,
//! `nvmlDeviceGetUtilizationRates`, `nvmlDeviceGetPowerUsage`,
//! `nvmlDeviceGetTemperature`, `nvmlDeviceGetTotalEnergyConsumption`,
//! `nvmlDeviceGetComputeRunningProcesses_v3`, `nvmlDeviceGetProcessUtilization`
//! (one sample per process with `sm_util_pct`, stamped at the call).
//! MIG: `nvmlDeviceGetMigMode`, `nvmlDeviceGetMaxMigDeviceCount`,
//! `nvmlDeviceGetMigDeviceHandleByIndex`, `nvmlDeviceIsMigDeviceHandle`,
//! `nvmlDeviceGetDeviceHandleFromMigDeviceHandle`,
//! `nvmlDeviceGetGpuInstanceId`, `nvmlDeviceGetComputeInstanceId`,
//! `nvmlDeviceGetAttributes_v2`.
//! Events: `nvmlEventSetCreate`, `nvmlDeviceGetSupportedEventTypes`,
//! `nvmlDeviceRegisterEvents` (critical XID errors only), `nvmlEventSetWait_v2`,
//! `nvmlEventSetFree`. A set gets the `xid_errors` appended after it
//! registered, each once.
//!
//! Every call but `nvmlErrorString` returns `NVML_ERROR_UNINITIALIZED` outside
//! an init/shutdown pair, `NVML_ERROR_INVALID_ARGUMENT` for a null pointer or
//! a handle it did not give out, and `NVML_ERROR_INSUFFICIENT_SIZE` for a
//! string buffer too short for the string and its NUL.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod config;
mod device;
mod error;
mod event;
mod handle;
mod mig;
mod out_param;
mod session;
mod system;

pub use config::CONFIG_ENV;
pub use device::*;
pub use event::*;
pub use mig::*;
pub use system::*;

/// Fails to compile if an export's signature drifts from the prototype
/// nvml-wrapper-sys gives the same symbol; never called.
#[allow(dead_code)]
fn signatures_match_nvml_wrapper_sys(lib: &nvml_wrapper_sys::bindings::NvmlLib) {
    fn same<T, E>(_: &Result<T, E>, _: T) {}
    same(&lib.nvmlInit_v2, nvmlInit_v2);
    same(&lib.nvmlInitWithFlags, nvmlInitWithFlags);
    same(&lib.nvmlShutdown, nvmlShutdown);
    same(&lib.nvmlErrorString, nvmlErrorString);
    same(&lib.nvmlSystemGetDriverVersion, nvmlSystemGetDriverVersion);
    same(&lib.nvmlSystemGetNVMLVersion, nvmlSystemGetNVMLVersion);
    same(&lib.nvmlSystemGetCudaDriverVersion, nvmlSystemGetCudaDriverVersion);
    same(&lib.nvmlSystemGetCudaDriverVersion_v2, nvmlSystemGetCudaDriverVersion_v2);
    same(&lib.nvmlDeviceGetCount_v2, nvmlDeviceGetCount_v2);
    same(&lib.nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetHandleByIndex_v2);
    same(&lib.nvmlDeviceGetHandleByUUID, nvmlDeviceGetHandleByUUID);
    same(&lib.nvmlDeviceGetHandleByPciBusId_v2, nvmlDeviceGetHandleByPciBusId_v2);
    same(&lib.nvmlDeviceGetName, nvmlDeviceGetName);
    same(&lib.nvmlDeviceGetUUID, nvmlDeviceGetUUID);
    same(&lib.nvmlDeviceGetIndex, nvmlDeviceGetIndex);
    same(&lib.nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetMemoryInfo_v2);
    same(&lib.nvmlDeviceGetPciInfo_v3, nvmlDeviceGetPciInfo_v3);
    same(&lib.nvmlDeviceGetUtilizationRates, nvmlDeviceGetUtilizationRates);
    same(&lib.nvmlDeviceGetPowerUsage, nvmlDeviceGetPowerUsage);
    same(&lib.nvmlDeviceGetTemperature, nvmlDeviceGetTemperature);
    same(&lib.nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetTotalEnergyConsumption);
    same(&lib.nvmlDeviceGetComputeRunningProcesses_v3, nvmlDeviceGetComputeRunningProcesses_v3);
    same(&lib.nvmlDeviceGetMigMode, nvmlDeviceGetMigMode);
    same(&lib.nvmlDeviceGetMaxMigDeviceCount, nvmlDeviceGetMaxMigDeviceCount);
    same(&lib.nvmlDeviceGetMigDeviceHandleByIndex, nvmlDeviceGetMigDeviceHandleByIndex);
    same(&lib.nvmlDeviceIsMigDeviceHandle, nvmlDeviceIsMigDeviceHandle);
    same(&lib.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, nvmlDeviceGetDeviceHandleFromMigDeviceHandle);
    same(&lib.nvmlDeviceGetGpuInstanceId, nvmlDeviceGetGpuInstanceId);
    same(&lib.nvmlDeviceGetComputeInstanceId, nvmlDeviceGetComputeInstanceId);
    same(&lib.nvmlDeviceGetAttributes_v2, nvmlDeviceGetAttributes_v2);
    same(&lib.nvmlDeviceGetProcessUtilization, nvmlDeviceGetProcessUtilization);
    same(&lib.nvmlEventSetCreate, nvmlEventSetCreate);
    same(&lib.nvmlDeviceGetSupportedEventTypes, nvmlDeviceGetSupportedEventTypes);
    same(&lib.nvmlDeviceRegisterEvents, nvmlDeviceRegisterEvents);
    same(&lib.nvmlEventSetWait_v2, nvmlEventSetWait_v2);
    same(&lib.nvmlEventSetFree, nvmlEventSetFree);
}
