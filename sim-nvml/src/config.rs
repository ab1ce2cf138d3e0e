//! The JSON description of the simulated host: its schema, the built-in default
//! host, and the checks that turn a parsed file into a [`Host`] the exports can trust.

use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Names the JSON file read at `nvmlInit`; unset or empty means [`Host::default_h100`].
pub const CONFIG_ENV: &str = "GPUVISOR_SIM_NVML_CONFIG";

/// The most MIG devices one GPU can hold (an H100 holds seven 1g instances);
/// also what `nvmlDeviceGetMaxMigDeviceCount` reports while MIG is enabled.
pub const MAX_MIG_DEVICES: usize = 7;

/// Keeps device handles, which pack the GPU index into 16 bits, unambiguous.
const MAX_GPUS: usize = 64;

/// Sizes NVML's callers allocate (nvml.h); longer strings could never be returned.
const MAX_NAME_LEN: usize = nvml_wrapper_sys::bindings::NVML_DEVICE_NAME_V2_BUFFER_SIZE as usize - 1;
const MAX_UUID_LEN: usize = nvml_wrapper_sys::bindings::NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize - 1;
const MAX_VERSION_LEN: usize = nvml_wrapper_sys::bindings::NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE as usize - 1;

/// Memory sizes above this (1 PiB) are typos, and would overflow once turned into bytes.
const MAX_MEMORY_MIB: u64 = 1 << 30;

/// The file as written: see the crate docs for every field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_driver_version")]
    pub driver_version: String,
    #[serde(default = "default_cuda_driver_version")]
    pub cuda_driver_version: i32,
    pub gpus: Vec<GpuConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    pub name: String,
    pub uuid: String,
    pub memory_total_mib: u64,
    /// Defaults to the sum of `processes[].used_mib`.
    #[serde(default)]
    pub memory_used_mib: Option<u64>,
    pub pci_bus_id: String,
    #[serde(default)]
    pub mig_enabled: bool,
    #[serde(default)]
    pub mig_instances: Vec<MigInstanceConfig>,
    #[serde(default)]
    pub utilization_gpu_pct: u32,
    #[serde(default)]
    pub utilization_memory_pct: u32,
    #[serde(default = "default_power_mw")]
    pub power_mw: u32,
    #[serde(default = "default_temperature_c")]
    pub temperature_c: u32,
    #[serde(default)]
    pub energy_mj: u64,
    #[serde(default)]
    pub processes: Vec<ProcessConfig>,
    /// XID errors that happened, oldest first; appending one delivers it to
    /// the event sets registered for critical XID errors.
    #[serde(default)]
    pub xid_errors: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigInstanceConfig {
    pub uuid: String,
    pub memory_mib: u64,
    pub sm_count: u32,
    pub profile: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    pub pid: u32,
    pub used_mib: u64,
    /// `nvmlDeviceGetProcessUtilization`'s SM figure for the process, 0 to
    /// 100; a process without it has no utilisation samples.
    #[serde(default)]
    pub sm_util_pct: Option<u32>,
    /// Its memory (bandwidth) figure, 0 to 100 (0 when only `sm_util_pct` is given).
    #[serde(default)]
    pub mem_util_pct: Option<u32>,
}

fn default_driver_version() -> String {
    "580.95.05".to_owned()
}

fn default_cuda_driver_version() -> i32 {
    13000
}

/// An idle H100 SXM draws about 70 W.
fn default_power_mw() -> u32 {
    70_000
}

fn default_temperature_c() -> u32 {
    35
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse {}: {source}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// The bytes of the config file at `path`.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

/// The validated host the exports answer from.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub driver_version: String,
    pub cuda_driver_version: i32,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub name: String,
    pub uuid: String,
    pub pci: PciAddress,
    pub memory_total_mib: u64,
    pub mig_enabled: bool,
    pub mig_instances: Vec<MigInstance>,
    /// What a test may change while the library is loaded.
    pub readings: Readings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigInstance {
    pub uuid: String,
    pub memory_mib: u64,
    pub sm_count: u32,
    pub profile: MigProfile,
}

/// The values re-read from the file whenever it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    pub memory_used_mib: u64,
    pub utilization_gpu_pct: u32,
    pub utilization_memory_pct: u32,
    pub power_mw: u32,
    pub temperature_c: u32,
    pub energy_mj: u64,
    pub processes: Vec<ProcessConfig>,
    pub xid_errors: Vec<u64>,
}

impl Host {
    /// The host without a config file: one H100, MIG off, idle.
    pub fn default_h100() -> Self {
        Host {
            driver_version: default_driver_version(),
            cuda_driver_version: default_cuda_driver_version(),
            gpus: vec![Gpu {
                name: "NVIDIA H100 80GB HBM3 (simulated)".to_owned(),
                uuid: "GPU-00000000-5157-0000-0000-000000000001".to_owned(),
                pci: PciAddress { domain: 0, bus: 1, device: 0, function: 0 },
                memory_total_mib: 81559,
                mig_enabled: false,
                mig_instances: Vec::new(),
                readings: Readings {
                    memory_used_mib: 0,
                    utilization_gpu_pct: 0,
                    utilization_memory_pct: 0,
                    power_mw: default_power_mw(),
                    temperature_c: default_temperature_c(),
                    energy_mj: 0,
                    xid_errors: Vec::new(),
                    processes: Vec::new(),
                },
            }],
        }
    }

    /// Parses and validates `text`, the contents of the file at `path`.
    pub fn from_json(path: &Path, text: &[u8]) -> Result<Self, ConfigError> {
        let config: Config =
            serde_json::from_slice(text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        Host::try_from(config).map_err(|reason| ConfigError::Invalid { path: path.to_owned(), reason })
    }

    /// Takes the readings of `newer` for every GPU whose UUID both hosts share.
    /// Returns false when anything else differs: that needs a fresh `nvmlInit`.
    pub fn take_readings(&mut self, newer: &Host) -> bool {
        let mut same_topology = self.driver_version == newer.driver_version
            && self.cuda_driver_version == newer.cuda_driver_version
            && self.gpus.len() == newer.gpus.len();
        for gpu in &mut self.gpus {
            match newer.gpus.iter().find(|n| n.uuid == gpu.uuid) {
                Some(n) => {
                    gpu.readings = n.readings.clone();
                    same_topology &= *gpu == *n;
                }
                None => same_topology = false,
            }
        }
        same_topology
    }
}

impl TryFrom<Config> for Host {
    type Error = String;

    fn try_from(config: Config) -> Result<Self, String> {
        check_len("driver_version", &config.driver_version, MAX_VERSION_LEN)?;
        if config.cuda_driver_version <= 0 {
            return Err(format!(
                "cuda_driver_version {} is not a CUDA version such as 13000",
                config.cuda_driver_version
            ));
        }
        if config.gpus.len() > MAX_GPUS {
            return Err(format!("{} GPUs; at most {MAX_GPUS}", config.gpus.len()));
        }
        let mut uuids = HashSet::new();
        let mut buses = HashSet::new();
        let mut gpus = Vec::with_capacity(config.gpus.len());
        for (index, gpu) in config.gpus.into_iter().enumerate() {
            let gpu = Gpu::try_from(gpu).map_err(|reason| format!("gpus[{index}]: {reason}"))?;
            for uuid in std::iter::once(&gpu.uuid).chain(gpu.mig_instances.iter().map(|m| &m.uuid)) {
                if !uuids.insert(uuid.clone()) {
                    return Err(format!("gpus[{index}]: UUID {uuid} appears twice"));
                }
            }
            if !buses.insert(gpu.pci) {
                return Err(format!("gpus[{index}]: PCI bus id {} appears twice", gpu.pci));
            }
            gpus.push(gpu);
        }
        Ok(Host { driver_version: config.driver_version, cuda_driver_version: config.cuda_driver_version, gpus })
    }
}

impl TryFrom<GpuConfig> for Gpu {
    type Error = String;

    fn try_from(gpu: GpuConfig) -> Result<Self, String> {
        check_len("name", &gpu.name, MAX_NAME_LEN)?;
        check_uuid(&gpu.uuid, "GPU-")?;
        let pci: PciAddress = gpu.pci_bus_id.parse()?;
        if gpu.memory_total_mib == 0 || gpu.memory_total_mib > MAX_MEMORY_MIB {
            return Err(format!("memory_total_mib {} is out of range", gpu.memory_total_mib));
        }
        for (name, pct) in
            [("utilization_gpu_pct", gpu.utilization_gpu_pct), ("utilization_memory_pct", gpu.utilization_memory_pct)]
        {
            if pct > 100 {
                return Err(format!("{name} {pct} is above 100"));
            }
        }
        for p in &gpu.processes {
            for (name, pct) in [("sm_util_pct", p.sm_util_pct), ("mem_util_pct", p.mem_util_pct)] {
                if pct.is_some_and(|v| v > 100) {
                    return Err(format!("processes[pid {}].{name} is above 100", p.pid));
                }
            }
        }
        let processes_mib = gpu
            .processes
            .iter()
            .try_fold(0u64, |sum, p| sum.checked_add(p.used_mib))
            .ok_or("processes[].used_mib overflows")?;
        let memory_used_mib = gpu.memory_used_mib.unwrap_or(processes_mib);
        if memory_used_mib > gpu.memory_total_mib {
            return Err(format!("{memory_used_mib} MiB used is more than memory_total_mib {}", gpu.memory_total_mib));
        }
        if !gpu.mig_enabled && !gpu.mig_instances.is_empty() {
            return Err("mig_instances is set but mig_enabled is false".to_owned());
        }
        if gpu.mig_instances.len() > MAX_MIG_DEVICES {
            return Err(format!("{} MIG instances; a GPU holds at most {MAX_MIG_DEVICES}", gpu.mig_instances.len()));
        }
        let mut mig_instances = Vec::with_capacity(gpu.mig_instances.len());
        for (index, mig) in gpu.mig_instances.into_iter().enumerate() {
            let instance = MigInstance::try_from(mig).map_err(|reason| format!("mig_instances[{index}]: {reason}"))?;
            mig_instances.push(instance);
        }
        let mig_mib: u64 = mig_instances.iter().map(|m| m.memory_mib).sum();
        if mig_mib > gpu.memory_total_mib {
            return Err(format!(
                "MIG instances hold {mig_mib} MiB, more than memory_total_mib {}",
                gpu.memory_total_mib
            ));
        }
        Ok(Gpu {
            name: gpu.name,
            uuid: gpu.uuid,
            pci,
            memory_total_mib: gpu.memory_total_mib,
            mig_enabled: gpu.mig_enabled,
            mig_instances,
            readings: Readings {
                memory_used_mib,
                utilization_gpu_pct: gpu.utilization_gpu_pct,
                utilization_memory_pct: gpu.utilization_memory_pct,
                power_mw: gpu.power_mw,
                temperature_c: gpu.temperature_c,
                energy_mj: gpu.energy_mj,
                processes: gpu.processes,
                xid_errors: gpu.xid_errors,
            },
        })
    }
}

impl TryFrom<MigInstanceConfig> for MigInstance {
    type Error = String;

    fn try_from(mig: MigInstanceConfig) -> Result<Self, String> {
        check_uuid(&mig.uuid, "MIG-")?;
        if mig.memory_mib == 0 || mig.memory_mib > MAX_MEMORY_MIB {
            return Err(format!("memory_mib {} is out of range", mig.memory_mib));
        }
        if mig.sm_count == 0 {
            return Err("sm_count is 0".to_owned());
        }
        Ok(MigInstance {
            uuid: mig.uuid,
            memory_mib: mig.memory_mib,
            sm_count: mig.sm_count,
            profile: mig.profile.parse()?,
        })
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max || value.contains('\0') {
        return Err(format!("{field} {value:?} must be 1 to {max} bytes without NUL"));
    }
    Ok(())
}

fn check_uuid(uuid: &str, prefix: &str) -> Result<(), String> {
    check_len("uuid", uuid, MAX_UUID_LEN)?;
    if !uuid.starts_with(prefix) {
        return Err(format!("uuid {uuid:?} must start with {prefix:?}"));
    }
    Ok(())
}

/// A PCI address as NVML writes it: `00000000:01:00.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    /// The 4-digit-domain form NVML keeps in `busIdLegacy`.
    pub fn legacy(&self) -> String {
        format!("{:04X}:{:02X}:{:02X}.{:X}", self.domain, self.bus, self.device, self.function)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}:{:02X}:{:02X}.{:X}", self.domain, self.bus, self.device, self.function)
    }
}

impl std::str::FromStr for PciAddress {
    type Err = String;

    /// Accepts `DDDDDDDD:BB:DD.F` and `DDDD:BB:DD.F`, in either case.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("PCI bus id {s:?} is not of the form 00000000:01:00.0");
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (device, function) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |field: &str, digits: &[usize]| {
            if digits.contains(&field.len()) && field.bytes().all(|b| b.is_ascii_hexdigit()) {
                u32::from_str_radix(field, 16).map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let device = hex(device, &[2])?;
        let function = hex(function, &[1])?;
        if device > 0x1f || function > 7 {
            return Err(bad());
        }
        Ok(PciAddress {
            domain: hex(domain, &[4, 8])?,
            bus: u8::try_from(hex(bus, &[2])?).map_err(|_| bad())?,
            device: u8::try_from(device).map_err(|_| bad())?,
            function: u8::try_from(function).map_err(|_| bad())?,
        })
    }
}

/// A MIG profile name such as `1g.10gb` or `1c.2g.20gb`, with the slice counts
/// `nvmlDeviceGetAttributes_v2` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigProfile {
    pub name: String,
    pub gpu_slices: u32,
    pub compute_slices: u32,
}

impl std::str::FromStr for MigProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("MIG profile {s:?} is not of the form 1g.10gb or 1c.2g.20gb");
        // One digit, 1 to 8: a GPU has at most eight slices.
        let count = |part: &str, unit: char| -> Result<u32, String> {
            match part.strip_suffix(unit).map(str::as_bytes) {
                Some(&[digit @ b'1'..=b'8']) => Ok(u32::from(digit - b'0')),
                _ => Err(bad()),
            }
        };
        let parts: Vec<&str> = s.split('.').collect();
        let (compute, gpu, memory) = match parts.as_slice() {
            [gpu, memory] => (None, *gpu, *memory),
            [compute, gpu, memory] => (Some(*compute), *gpu, *memory),
            _ => return Err(bad()),
        };
        let gpu_slices = count(gpu, 'g')?;
        let compute_slices = match compute {
            Some(c) => count(c, 'c')?,
            None => gpu_slices,
        };
        let memory_ok =
            memory.strip_suffix("gb").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !memory_ok || compute_slices > gpu_slices {
            return Err(bad());
        }
        Ok(MigProfile { name: s.to_owned(), gpu_slices, compute_slices })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Host, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Host::try_from(config)
    }

    const ONE_GPU: &str = r#"{"gpus": [{"name": "G", "uuid": "GPU-1", "memory_total_mib": 1000,
        "pci_bus_id": "00000000:3b:00.0"}]}"#;

    #[test]
    fn minimal_gpu_takes_documented_defaults() {
        let host = parse(ONE_GPU).unwrap();
        assert_eq!(host.driver_version, "580.95.05");
        assert_eq!(host.cuda_driver_version, 13000);
        let gpu = &host.gpus[0];
        assert_eq!(gpu.pci.to_string(), "00000000:3B:00.0");
        assert!(!gpu.mig_enabled);
        assert_eq!(gpu.readings.power_mw, 70_000);
        assert_eq!(gpu.readings.temperature_c, 35);
        assert_eq!(gpu.readings.memory_used_mib, 0);
    }

    #[test]
    fn used_memory_defaults_to_the_processes_sum() {
        let json = ONE_GPU.replace(
            r#""pci_bus_id""#,
            r#""processes": [{"pid": 1, "used_mib": 100}, {"pid": 2, "used_mib": 50}], "pci_bus_id""#,
        );
        assert_eq!(parse(&json).unwrap().gpus[0].readings.memory_used_mib, 150);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = ONE_GPU.replace("memory_total_mib", "memory_totl_mib");
        assert!(parse(&json).unwrap_err().contains("unknown field `memory_totl_mib`"));
    }

    #[test]
    fn inconsistent_hosts_are_rejected() {
        let cases = [
            ONE_GPU.replace("GPU-1", "gpu-1"),
            ONE_GPU.replace("1000", "0"),
            ONE_GPU.replace("00000000:3b:00.0", "3b:00.0"),
            ONE_GPU.replace(r#""pci_bus_id""#, r#""utilization_gpu_pct": 101, "pci_bus_id""#),
            ONE_GPU.replace(r#""pci_bus_id""#, r#""memory_used_mib": 1001, "pci_bus_id""#),
            ONE_GPU.replace(
                r#""pci_bus_id""#,
                r#""mig_instances": [{"uuid": "MIG-1", "memory_mib": 10, "sm_count": 16, "profile": "1g.10gb"}], "pci_bus_id""#,
            ),
            ONE_GPU.replace(
                r#""pci_bus_id""#,
                r#""mig_enabled": true, "mig_instances": [{"uuid": "MIG-1", "memory_mib": 1001, "sm_count": 16, "profile": "1g.10gb"}], "pci_bus_id""#,
            ),
            format!(
                r#"{{"gpus": [{}, {}]}}"#,
                &ONE_GPU[10..ONE_GPU.len() - 2],
                &ONE_GPU[10..ONE_GPU.len() - 2]
            ),
        ];
        for json in cases {
            assert!(parse(&json).is_err(), "accepted {json}");
        }
    }

    #[test]
    fn pci_addresses_parse_in_both_widths() {
        let long: PciAddress = "00000001:c1:1f.7".parse().unwrap();
        assert_eq!((long.domain, long.bus, long.device, long.function), (1, 0xc1, 0x1f, 7));
        assert_eq!(long.legacy(), "0001:C1:1F.7");
        assert_eq!("0001:C1:1F.7".parse::<PciAddress>().unwrap(), long);
        for bad in ["", "0000:01:00", "0000:1:00.0", "0000:01:20.0", "0000:01:00.8", "000:01:00.0"] {
            assert!(bad.parse::<PciAddress>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn mig_profiles_give_slice_counts() {
        let p: MigProfile = "3g.40gb".parse().unwrap();
        assert_eq!((p.gpu_slices, p.compute_slices), (3, 3));
        let p: MigProfile = "1c.3g.40gb".parse().unwrap();
        assert_eq!((p.gpu_slices, p.compute_slices), (3, 1));
        for bad in ["", "1g", "g.10gb", "01g.10gb", "1g.10", "4c.3g.40gb", "1x.10gb"] {
            assert!(bad.parse::<MigProfile>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn readings_follow_uuids_and_report_topology_changes() {
        let mut host = parse(ONE_GPU).unwrap();
        let hotter = parse(&ONE_GPU.replace(r#""pci_bus_id""#, r#""temperature_c": 80, "pci_bus_id""#)).unwrap();
        assert!(host.take_readings(&hotter));
        assert_eq!(host.gpus[0].readings.temperature_c, 80);
        let renamed = parse(&ONE_GPU.replace(r#""G""#, r#""H""#)).unwrap();
        assert!(!host.take_readings(&renamed));
        assert_eq!(host.gpus[0].name, "G");
    }
}
