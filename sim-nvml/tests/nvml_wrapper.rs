//! Loads the built `libnvidia_ml.so` through nvml-wrapper, as gpuvisord loads
//! NVML, and checks what it reports. The library's state is global and its
//! config comes from the environment, so each test runs its scenario in a
//! fresh process of this binary with its own `GPUVISOR_SIM_NVML_CONFIG`.

// bindgen names the return codes in lower case, and the tests match on them.
#![allow(non_upper_case_globals)]

use nvidia_ml::CONFIG_ENV;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::*;
use std::ffi::{c_char, c_uint, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1024 * 1024;

/// Set in the child process to the name of the scenario it runs.
const SCENARIO_ENV: &str = "GPUVISOR_SIM_NVML_TEST_SCENARIO";

/// Runs `body` in a child process of this test binary, with `config` written
/// to a file and named by `GPUVISOR_SIM_NVML_CONFIG` (unset when `None`), and
/// fails with the child's output if it fails. Returns the child's stderr in
/// the parent and `None` in the child, which has nothing more to check.
/// `name` must be the calling test's name: the child runs it with `--exact`.
fn scenario(name: &str, config: Option<&str>, body: fn()) -> Option<String> {
    if std::env::var(SCENARIO_ENV).as_deref() == Ok(name) {
        body();
        return None;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe);
    child.args([name, "--exact", "--nocapture", "--test-threads=1"]).env(SCENARIO_ENV, name).env_remove(CONFIG_ENV);
    if let Some(json) = config {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sim-nvml-{name}.json"));
        std::fs::write(&path, json).expect("write the scenario's config");
        child.env(CONFIG_ENV, &path);
    }
    let out = child.output().expect("run the scenario's process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "scenario {name} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    Some(stderr)
}

/// Where cargo leaves this package's cdylib: integration tests run from
/// `target/<profile>/deps/`, and the library is built there beside them.
fn library_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe.with_file_name("libnvidia_ml.so");
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn init() -> Result<Nvml, NvmlError> {
    let path = library_path();
    Nvml::builder().lib_path(path.as_os_str()).init()
}

/// The raw bindings over the same library, for the MIG calls nvml-wrapper
/// 0.11 does not wrap. Loading it again shares the loaded library's state.
fn raw_lib() -> NvmlLib {
    // SAFETY: the library is ours; loading it runs no initialisers beyond Rust's.
    unsafe { NvmlLib::new(library_path()) }.expect("load libnvidia_ml.so")
}

/// The config file the scenario's parent wrote.
fn config_path() -> PathBuf {
    std::env::var_os(CONFIG_ENV).map(PathBuf::from).expect("the scenario has a config")
}

/// Replaces the config the way the docs recommend: write aside, rename over.
fn rewrite_config(json: &str) {
    let path = config_path();
    let aside = path.with_extension("json.new");
    std::fs::write(&aside, json).expect("write the new config");
    std::fs::rename(&aside, &path).expect("rename it over the old one");
}

#[test]
fn default_inventory_is_one_simulated_h100() {
    scenario("default_inventory_is_one_simulated_h100", None, || {
        let nvml = init().expect("init without a config");
        assert_eq!(nvml.device_count().unwrap(), 1);
        assert_eq!(nvml.sys_driver_version().unwrap(), "580.95.05");
        assert_eq!(nvml.sys_cuda_driver_version().unwrap(), 13000);
        assert_eq!(nvml.sys_nvml_version().unwrap(), "13.580.95.05");

        let gpu = nvml.device_by_index(0).unwrap();
        assert_eq!(gpu.name().unwrap(), "NVIDIA H100 80GB HBM3 (simulated)");
        assert_eq!(gpu.uuid().unwrap(), "GPU-00000000-5157-0000-0000-000000000001");
        assert_eq!(gpu.index().unwrap(), 0);
        let memory = gpu.memory_info().unwrap();
        assert_eq!((memory.total, memory.used, memory.free), (81559 * MIB, 0, 81559 * MIB));
        let pci = gpu.pci_info().unwrap();
        assert_eq!(pci.bus_id, "00000000:01:00.0");
        assert_eq!((pci.domain, pci.bus, pci.device), (0, 1, 0));
        let mig = gpu.mig_mode().unwrap();
        assert_eq!((mig.current, mig.pending), (NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_DISABLE));
        let utilization = gpu.utilization_rates().unwrap();
        assert_eq!((utilization.gpu, utilization.memory), (0, 0));
        assert_eq!(gpu.power_usage().unwrap(), 70_000);
        assert_eq!(gpu.temperature(TemperatureSensor::Gpu).unwrap(), 35);
        assert_eq!(gpu.total_energy_consumption().unwrap(), 0);
        assert!(gpu.running_compute_processes().unwrap().is_empty());

        let by_uuid = nvml.device_by_uuid("GPU-00000000-5157-0000-0000-000000000001").unwrap();
        assert_eq!(by_uuid.index().unwrap(), 0);
        assert_eq!(nvml.device_by_pci_bus_id("0000:01:00.0").unwrap().index().unwrap(), 0);
        assert!(matches!(nvml.device_by_uuid("GPU-absent"), Err(NvmlError::NotFound)));
        assert!(matches!(nvml.device_by_index(1), Err(NvmlError::InvalidArg)));
    });
}

const TWO_GPUS: &str = r#"{
    "driver_version": "570.124.06",
    "cuda_driver_version": 12080,
    "gpus": [
        {
            "name": "NVIDIA A100-SXM4-40GB",
            "uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000",
            "memory_total_mib": 40960,
            "pci_bus_id": "00000000:07:00.0",
            "utilization_gpu_pct": 30,
            "processes": [ { "pid": 100, "used_mib": 1000 }, { "pid": 200, "used_mib": 500 } ]
        },
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-bbbbbbbb-0000-0000-0000-000000000000",
            "memory_total_mib": 81559,
            "pci_bus_id": "00000000:C1:00.0",
            "mig_enabled": true,
            "mig_instances": [
                { "uuid": "MIG-11111111-0000-0000-0000-000000000000", "memory_mib": 9856, "sm_count": 16, "profile": "1g.10gb" },
                { "uuid": "MIG-22222222-0000-0000-0000-000000000000", "memory_mib": 40192, "sm_count": 60, "profile": "4g.40gb" }
            ]
        }
    ]
}"#;

/// Calls one of the raw `(device, *mut c_uint)` getters.
fn raw_uint<E: std::fmt::Debug>(
    getter: &Result<unsafe extern "C" fn(nvmlDevice_t, *mut c_uint) -> nvmlReturn_t, E>,
    device: nvmlDevice_t,
) -> Result<c_uint, nvmlReturn_t> {
    let getter = getter.as_ref().expect("symbol exported");
    let mut value = 0;
    // SAFETY: `value` is a valid out-pointer; the library checks the handle.
    match unsafe { getter(device, &mut value) } {
        nvmlReturn_enum_NVML_SUCCESS => Ok(value),
        code => Err(code),
    }
}

#[test]
fn two_gpus_one_with_mig_instances() {
    scenario("two_gpus_one_with_mig_instances", Some(TWO_GPUS), || {
        let nvml = init().expect("init with two GPUs");
        assert_eq!(nvml.device_count().unwrap(), 2);
        assert_eq!(nvml.sys_driver_version().unwrap(), "570.124.06");
        assert_eq!(nvml.sys_cuda_driver_version().unwrap(), 12080);

        let a100 = nvml.device_by_index(0).unwrap();
        assert_eq!(a100.name().unwrap(), "NVIDIA A100-SXM4-40GB");
        assert_eq!(a100.mig_mode().unwrap().current, NVML_DEVICE_MIG_DISABLE);
        assert_eq!(a100.utilization_rates().unwrap().gpu, 30);
        let processes = a100.running_compute_processes().unwrap();
        let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [100, 200]);
        assert_eq!(a100.memory_info().unwrap().used, 1500 * MIB, "used memory defaults to the processes' sum");

        let h100 = nvml.device_by_index(1).unwrap();
        assert_eq!(h100.pci_info().unwrap().bus_id, "00000000:C1:00.0");
        let mode = h100.mig_mode().unwrap();
        assert_eq!((mode.current, mode.pending), (NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_ENABLE));

        let lib = raw_lib();
        // SAFETY: handles are opaque to the caller; reading them out is not unsafe in itself.
        let (a100_handle, h100_handle) = unsafe { (a100.handle(), h100.handle()) };
        assert_eq!(raw_uint(&lib.nvmlDeviceGetMaxMigDeviceCount, a100_handle), Ok(0));
        assert_eq!(raw_uint(&lib.nvmlDeviceGetMaxMigDeviceCount, h100_handle), Ok(7));
        assert_eq!(raw_uint(&lib.nvmlDeviceIsMigDeviceHandle, h100_handle), Ok(0));

        let by_index = lib.nvmlDeviceGetMigDeviceHandleByIndex.as_ref().unwrap();
        let mig_handle = |index| {
            let mut handle = std::ptr::null_mut();
            // SAFETY: `handle` is a valid out-pointer; the library checks the parent handle.
            match unsafe { by_index(h100_handle, index, &mut handle) } {
                nvmlReturn_enum_NVML_SUCCESS => Ok(handle),
                code => Err(code),
            }
        };
        let expected = [
            ("MIG-11111111-0000-0000-0000-000000000000", 9856, 16, 1, "1g.10gb"),
            ("MIG-22222222-0000-0000-0000-000000000000", 40192, 60, 4, "4g.40gb"),
        ];
        for (index, (uuid, memory_mib, sm_count, slices, profile)) in expected.into_iter().enumerate() {
            let handle = mig_handle(index as c_uint).expect("a configured MIG slot");
            // SAFETY: the handle came from the library this `nvml` loaded.
            let mig = unsafe { Device::new(handle, &nvml) };
            assert_eq!(mig.uuid().unwrap(), uuid);
            assert_eq!(mig.name().unwrap(), format!("NVIDIA H100 80GB HBM3 MIG {profile}"));
            assert_eq!(mig.memory_info().unwrap().total, memory_mib * MIB);
            let attributes = mig.attributes().unwrap();
            assert_eq!(attributes.multiprocessor_count, sm_count);
            assert_eq!(attributes.memory_size_mb, memory_mib);
            assert_eq!(attributes.gpu_instance_slice_count, slices);
            assert_eq!(raw_uint(&lib.nvmlDeviceIsMigDeviceHandle, handle), Ok(1));
            assert!(matches!(mig.utilization_rates(), Err(NvmlError::NotSupported)));
            // SAFETY: as above.
            let by_uuid = unsafe { nvml.device_by_uuid(uuid).unwrap().handle() };
            assert_eq!(by_uuid, handle);

            let mut parent = std::ptr::null_mut();
            let from_mig = lib.nvmlDeviceGetDeviceHandleFromMigDeviceHandle.as_ref().unwrap();
            // SAFETY: `parent` is a valid out-pointer.
            assert_eq!(unsafe { from_mig(handle, &mut parent) }, nvmlReturn_enum_NVML_SUCCESS);
            assert_eq!(parent, h100_handle);
        }
        assert_eq!(mig_handle(2), Err(nvmlReturn_enum_NVML_ERROR_NOT_FOUND), "an empty slot");
        assert_eq!(mig_handle(7), Err(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT), "past the last slot");
        assert!(matches!(h100.attributes(), Err(NvmlError::NotSupported)), "only MIG handles have attributes");
    });
}

const READINGS: &str = r#"{"gpus": [{
    "name": "G", "uuid": "GPU-1", "memory_total_mib": 1000, "pci_bus_id": "00000000:01:00.0",
    "utilization_gpu_pct": 10, "utilization_memory_pct": 5, "power_mw": 100000,
    "temperature_c": 40, "energy_mj": 1000, "memory_used_mib": 100
}]}"#;

#[test]
fn xid_errors_appended_to_the_config_reach_registered_event_sets_once() {
    use nvml_wrapper::bitmasks::event::EventTypes;
    use nvml_wrapper::enums::event::XidError;
    let config = READINGS.replace(r#""memory_used_mib": 100"#, r#""memory_used_mib": 100, "xid_errors": [13]"#);
    scenario("xid_errors_appended_to_the_config_reach_registered_event_sets_once", Some(&config), || {
        let nvml = init().expect("init");
        let gpu = nvml.device_by_index(0).unwrap();
        assert!(gpu.supported_event_types().unwrap().contains(EventTypes::CRITICAL_XID_ERROR));
        let set = gpu.register_events(EventTypes::CRITICAL_XID_ERROR, nvml.create_event_set().unwrap()).unwrap();
        // The error from before registration is history, not an event.
        assert!(matches!(set.wait(50), Err(NvmlError::Timeout)));
        let initial = config_path();
        let text = std::fs::read_to_string(&initial).unwrap();
        rewrite_config(&text.replace(r#""xid_errors": [13]"#, r#""xid_errors": [13, 79, 48]"#));
        let mut got = Vec::new();
        for _ in 0..2 {
            let event = set.wait(2000).expect("an XID event");
            assert_eq!(event.event_type, EventTypes::CRITICAL_XID_ERROR);
            assert_eq!(event.device.uuid().unwrap(), "GPU-1");
            match event.event_data {
                Some(XidError::Value(x)) => got.push(x),
                other => panic!("no XID in the event: {other:?}"),
            }
        }
        assert_eq!(got, [79, 48]);
        assert!(matches!(set.wait(50), Err(NvmlError::Timeout)), "an error was delivered twice");
        // Registering for an event type the GPU does not report is refused.
        let refused = gpu.register_events(EventTypes::CLOCK_CHANGE, nvml.create_event_set().unwrap());
        assert!(matches!(refused.map_err(|e| e.error), Err(NvmlError::NotSupported)));
    });
}

#[test]
fn processes_with_utilisation_give_one_sample_each_per_call() {
    let config = READINGS.replace(
        r#""memory_used_mib": 100"#,
        r#""processes": [{"pid": 7, "used_mib": 10, "sm_util_pct": 37, "mem_util_pct": 12},
                         {"pid": 8, "used_mib": 10}]"#,
    );
    scenario("processes_with_utilisation_give_one_sample_each_per_call", Some(&config), || {
        let nvml = init().expect("init");
        let gpu = nvml.device_by_index(0).unwrap();
        let samples = gpu.process_utilization_stats(0).unwrap();
        assert_eq!(samples.len(), 1, "pid 8 has no utilisation: {samples:?}");
        assert_eq!((samples[0].pid, samples[0].sm_util, samples[0].mem_util), (7, 37, 12));
        // Nothing newer than the newest sample seen yet... until time moves on.
        let seen = samples[0].timestamp;
        assert!(matches!(gpu.process_utilization_stats(seen + 60_000_000), Err(NvmlError::NotFound)));
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(gpu.process_utilization_stats(seen).unwrap().len(), 1);
    });
}

#[test]
fn readings_follow_rewrites_of_the_config() {
    scenario("readings_follow_rewrites_of_the_config", Some(READINGS), || {
        let nvml = init().expect("init");
        let gpu = nvml.device_by_index(0).unwrap();
        let read = || {
            let utilization = gpu.utilization_rates().unwrap();
            (
                utilization.gpu,
                utilization.memory,
                gpu.power_usage().unwrap(),
                gpu.temperature(TemperatureSensor::Gpu).unwrap(),
                gpu.total_energy_consumption().unwrap(),
                gpu.memory_info().unwrap().used / MIB,
                gpu.running_compute_processes().unwrap().len(),
            )
        };
        assert_eq!(read(), (10, 5, 100_000, 40, 1000, 100, 0));

        let busy = READINGS
            .replace(r#""utilization_gpu_pct": 10"#, r#""utilization_gpu_pct": 90"#)
            .replace(r#""power_mw": 100000"#, r#""power_mw": 350000"#)
            .replace(r#""temperature_c": 40"#, r#""temperature_c": 71"#)
            .replace(r#""energy_mj": 1000"#, r#""energy_mj": 5000"#)
            .replace(r#""memory_used_mib": 100"#, r#""processes": [{"pid": 7, "used_mib": 600}]"#);
        rewrite_config(&busy);
        assert_eq!(read(), (90, 5, 350_000, 71, 5000, 600, 1));

        // Rewritten in place, to the same length, straight after the last read.
        std::fs::write(config_path(), busy.replace(r#""temperature_c": 71"#, r#""temperature_c": 72"#))
            .expect("rewrite in place");
        assert_eq!(read().3, 72);

        // A broken file keeps the last readings rather than failing queries.
        rewrite_config("{ not json");
        assert_eq!(read().3, 72);
    });
}

#[test]
fn malformed_config_fails_init_and_says_why_once() {
    let typo = READINGS.replace("memory_total_mib", "memory_totl_mib");
    let stderr = scenario("malformed_config_fails_init_and_says_why_once", Some(&typo), || {
        assert!(matches!(init(), Err(NvmlError::Unknown)));
        assert!(matches!(init(), Err(NvmlError::Unknown)), "a retry fails the same way");
    });
    let Some(stderr) = stderr else { return };
    assert_eq!(stderr.matches("unknown field `memory_totl_mib`").count(), 1, "the reason is printed once:\n{stderr}");
}

#[test]
fn calls_before_init_or_after_the_last_shutdown_are_uninitialized() {
    scenario("calls_before_init_or_after_the_last_shutdown_are_uninitialized", None, || {
        let count = || {
            let mut count = 0;
            // SAFETY: `count` is a valid out-pointer.
            let code = unsafe { nvidia_ml::nvmlDeviceGetCount_v2(&mut count) };
            (code, count)
        };
        // SAFETY (all calls below): the exports take no pointers or valid ones.
        unsafe {
            assert_eq!(count().0, nvmlReturn_enum_NVML_ERROR_UNINITIALIZED);
            let mut version = [0 as c_char; 80];
            assert_eq!(
                nvidia_ml::nvmlSystemGetDriverVersion(version.as_mut_ptr(), 80),
                nvmlReturn_enum_NVML_ERROR_UNINITIALIZED
            );
            assert_eq!(nvidia_ml::nvmlShutdown(), nvmlReturn_enum_NVML_ERROR_UNINITIALIZED);
            let text = CStr::from_ptr(nvidia_ml::nvmlErrorString(nvmlReturn_enum_NVML_ERROR_UNINITIALIZED));
            assert_eq!(text.to_str().unwrap(), "Uninitialized", "error strings need no init");

            // Inits are counted: the second shutdown ends the session.
            assert_eq!(nvidia_ml::nvmlInit_v2(), nvmlReturn_enum_NVML_SUCCESS);
            assert_eq!(nvidia_ml::nvmlInitWithFlags(0), nvmlReturn_enum_NVML_SUCCESS);
            assert_eq!(nvidia_ml::nvmlShutdown(), nvmlReturn_enum_NVML_SUCCESS);
            assert_eq!(count(), (nvmlReturn_enum_NVML_SUCCESS, 1));
            assert_eq!(nvidia_ml::nvmlShutdown(), nvmlReturn_enum_NVML_SUCCESS);
            assert_eq!(count().0, nvmlReturn_enum_NVML_ERROR_UNINITIALIZED);
            assert_eq!(nvidia_ml::nvmlShutdown(), nvmlReturn_enum_NVML_ERROR_UNINITIALIZED);
        }
    });
}

#[test]
fn bad_arguments_are_refused_like_nvml_does() {
    scenario("bad_arguments_are_refused_like_nvml_does", Some(TWO_GPUS), || {
        use nvidia_ml::*;
        // SAFETY (all calls below): every pointer passed is null or valid for
        // the length given; the point is what the library does with them.
        unsafe {
            assert_eq!(nvmlInit_v2(), nvmlReturn_enum_NVML_SUCCESS);
            assert_eq!(nvmlDeviceGetCount_v2(std::ptr::null_mut()), nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);
            let mut gpu = std::ptr::null_mut();
            assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut gpu), nvmlReturn_enum_NVML_SUCCESS);

            // A string buffer must hold the string and its NUL.
            let name = "NVIDIA A100-SXM4-40GB";
            let mut buf = [0x7f as c_char; 64];
            let exact = name.len() as c_uint + 1;
            assert_eq!(
                nvmlDeviceGetName(gpu, buf.as_mut_ptr(), exact - 1),
                nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
            );
            assert_eq!(nvmlDeviceGetName(gpu, buf.as_mut_ptr(), exact), nvmlReturn_enum_NVML_SUCCESS);
            assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), name);
            assert_eq!(buf[exact as usize], 0x7f, "nothing written past the length");
            assert_eq!(nvmlDeviceGetName(gpu, std::ptr::null_mut(), 64), nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);

            // Handles the library did not give out.
            let mut power = 0;
            let mut local = 0u8;
            let stray = std::ptr::from_mut(&mut local).cast::<nvmlDevice_st>();
            for handle in [std::ptr::null_mut(), stray] {
                assert_eq!(nvmlDeviceGetPowerUsage(handle, &mut power), nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);
            }

            // Versioned structs must carry the version this library fills.
            let mut memory: nvmlMemory_v2_t = std::mem::zeroed();
            assert_eq!(
                nvmlDeviceGetMemoryInfo_v2(gpu, &mut memory),
                nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH
            );

            let mut temperature = 0;
            assert_eq!(nvmlDeviceGetTemperature(gpu, 1, &mut temperature), nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);

            // The process list's sizing protocol: too small reports the size needed.
            let mut count = 1;
            let mut infos: [nvmlProcessInfo_t; 2] = std::mem::zeroed();
            assert_eq!(
                nvmlDeviceGetComputeRunningProcesses_v3(gpu, &mut count, infos.as_mut_ptr()),
                nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
            );
            assert_eq!(count, 2);
            assert_eq!(
                nvmlDeviceGetComputeRunningProcesses_v3(gpu, &mut count, std::ptr::null_mut()),
                nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT
            );
            assert_eq!(
                nvmlDeviceGetComputeRunningProcesses_v3(gpu, &mut count, infos.as_mut_ptr()),
                nvmlReturn_enum_NVML_SUCCESS
            );
            assert_eq!((infos[1].pid, infos[1].usedGpuMemory), (200, 500 * MIB));

            assert_eq!(nvmlShutdown(), nvmlReturn_enum_NVML_SUCCESS);
        }
    });
}
