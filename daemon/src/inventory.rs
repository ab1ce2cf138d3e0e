//! The GPUs this host has, as NVML reports them, plus the simulated GPU that
//! sim-engine backends share. NVML is optional: without it the daemon still
//! schedules backends, and learns GPUs from their registrations.

use crate::proc_util::{self, ProcessUtilBook};
use crate::xid::{self, XidBook};
use gpuvisor_admin::metrics::GpuReadings;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;

/// Id of the pseudo-GPU that backends running the `sim` engine report.
pub const SIM_GPU: &str = "sim";
const SIM_GPU_NAME: &str = "gpuvisor simulated GPU";

/// Where to find NVML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NvmlSource {
    /// The system's `libnvidia-ml.so`.
    #[default]
    System,
    /// A library at this path (`--nvml-lib`).
    Path(PathBuf),
    /// Do not load NVML (tests).
    Disabled,
}

/// One GPU's fixed facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// UUID (`GPU-...`), or [`SIM_GPU`].
    pub id: String,
    pub name: String,
    /// NVML index; `None` for GPUs NVML did not list.
    pub index: Option<u32>,
    pub memory_total_bytes: u64,
    /// `None` where MIG is not supported or NVML could not tell.
    pub mig_enabled: Option<bool>,
}

impl GpuInfo {
    fn sim() -> GpuInfo {
        GpuInfo { id: SIM_GPU.into(), name: SIM_GPU_NAME.into(), index: None, memory_total_bytes: 0, mig_enabled: None }
    }
}

/// The known GPUs, in discovery order (NVML's, then the simulated one, then
/// those learned later).
pub struct Inventory {
    nvml: Option<Arc<Nvml>>,
    gpus: Vec<GpuInfo>,
    /// XID errors of NVML's GPUs, where NVML can report them.
    xids: Option<Arc<XidBook>>,
    /// NVML's per-process utilisation samples of its GPUs.
    proc_util: Arc<ProcessUtilBook>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").field("nvml", &self.nvml.is_some()).field("gpus", &self.gpus).finish()
    }
}

impl Inventory {
    /// Lists the GPUs NVML sees. A missing or failing NVML is logged as a
    /// warning; the inventory then holds only the simulated GPU.
    pub fn discover(source: &NvmlSource) -> Inventory {
        let nvml = match source {
            NvmlSource::Disabled => None,
            NvmlSource::System => Nvml::init()
                .map_err(|e| {
                    tracing::warn!(
                        "NVML not available ({e}); only the simulated GPU and GPUs named by backends are known"
                    )
                })
                .ok(),
            NvmlSource::Path(p) => Nvml::builder()
                .lib_path(OsStr::new(p))
                .init()
                .map_err(|e| {
                    tracing::warn!(
                        "NVML at {} not available ({e}); only the simulated GPU and GPUs named by backends are known",
                        p.display()
                    )
                })
                .ok(),
        };
        let mut gpus = match &nvml {
            Some(nvml) => list_nvml(nvml),
            None => Vec::new(),
        };
        let nvml = nvml.map(Arc::new);
        let xids = nvml.as_ref().and_then(|n| {
            let uuids: Vec<String> = gpus.iter().map(|g| g.id.clone()).collect();
            (!uuids.is_empty()).then(|| xid::watch(n.clone(), uuids)).flatten()
        });
        gpus.push(GpuInfo::sim());
        Inventory { nvml, gpus, xids, proc_util: Arc::default() }
    }

    /// The loaded NVML, for readings taken without the registry's lock.
    pub fn nvml(&self) -> Option<Arc<Nvml>> {
        self.nvml.clone()
    }

    /// The XID error counts, for readings taken without the registry's lock.
    pub fn xids(&self) -> Option<Arc<XidBook>> {
        self.xids.clone()
    }

    /// The per-process utilisation samples, read with the readings.
    pub fn proc_util(&self) -> Arc<ProcessUtilBook> {
        self.proc_util.clone()
    }

    pub fn gpus(&self) -> &[GpuInfo] {
        &self.gpus
    }

    pub fn get(&self, id: &str) -> Option<&GpuInfo> {
        self.gpus.iter().find(|g| g.id == id)
    }

    /// The id gpuvisord knows a backend's device by. A backend on a MIG
    /// instance reports the instance's UUID with CUDA's `GPU-` prefix
    /// (`cuDeviceGetUuid_v2` gives the MIG UUID's bytes; the backend does
    /// not know it is on a MIG instance), while NVML, the admin and access
    /// lists name the instance `MIG-<uuid>`: where NVML knows no GPU by the
    /// `GPU-` id but knows a MIG instance by its `MIG-` twin, the latter is
    /// the id. Anything else is kept as it is.
    pub fn canonical_id(&self, id: &str) -> String {
        let Some(uuid) = id.strip_prefix("GPU-") else {
            return id.to_owned();
        };
        let Some(nvml) = self.nvml.as_ref().filter(|_| self.get(id).is_none()) else {
            return id.to_owned();
        };
        let mig = format!("MIG-{uuid}");
        if nvml.device_by_uuid(id).is_err() && nvml.device_by_uuid(mig.as_str()).is_ok() {
            tracing::debug!(reported = id, id = %mig, "a backend's GPU is a MIG instance");
            return mig;
        }
        id.to_owned()
    }

    /// The GPU `id`, adding it when it is new: NVML is asked for its facts by
    /// UUID, and where it cannot say, the GPU is named by its id.
    pub fn get_or_add(&mut self, id: &str) -> &GpuInfo {
        if let Some(i) = self.gpus.iter().position(|g| g.id == id) {
            return &self.gpus[i];
        }
        let info = self
            .nvml
            .as_ref()
            .and_then(|nvml| nvml.device_by_uuid(id).ok().map(|d| device_info(id.to_string(), &d)))
            .unwrap_or_else(|| GpuInfo {
                id: id.into(),
                name: id.into(),
                index: None,
                memory_total_bytes: 0,
                mig_enabled: None,
            });
        tracing::info!(gpu = id, name = %info.name, "new GPU");
        self.gpus.push(info);
        let last = self.gpus.len() - 1;
        &self.gpus[last]
    }
}

fn list_nvml(nvml: &Nvml) -> Vec<GpuInfo> {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("NVML cannot count GPUs: {e}");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("NVML GPU {index}: {e}; skipped");
                continue;
            }
        };
        let uuid = match device.uuid() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("NVML GPU {index} has no UUID ({e}); skipped");
                continue;
            }
        };
        let mut info = device_info(uuid, &device);
        info.index = Some(index);
        tracing::info!(gpu = %info.id, index, name = %info.name, memory_bytes = info.memory_total_bytes, "GPU found");
        gpus.push(info);
    }
    gpus
}

/// NVML's readings of the GPUs listed by NVML index, taken now: a handful of
/// NVML calls per GPU, no disk. A reading NVML refuses is left out.
pub fn readings(nvml: &Nvml, gpus: &[&GpuInfo], xids: Option<&XidBook>, procs: &ProcessUtilBook) -> Vec<GpuReadings> {
    let now_us = proc_util::now_us();
    gpus.iter()
        .filter_map(|g| {
            let index = g.index?;
            let device = nvml.device_by_uuid(g.id.as_str()).ok()?;
            let util = device.utilization_rates().ok();
            let memory = device.memory_info().ok();
            let xid = xids.and_then(|b| b.get(&g.id));
            let process_util = procs
                .read(&g.id, &device, now_us)
                .map(|m| m.into_iter().map(|(pid, u)| (pid, (u.sm, u.mem))).collect());
            Some(GpuReadings {
                index,
                uuid: g.id.clone(),
                model_name: g.name.clone(),
                gpu_util_pct: util.as_ref().map(|u| u.gpu),
                mem_copy_util_pct: util.as_ref().map(|u| u.memory),
                power_mw: device.power_usage().ok(),
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                fb_used_bytes: memory.as_ref().map(|m| m.used),
                fb_free_bytes: memory.as_ref().map(|m| m.free),
                energy_mj: device.total_energy_consumption().ok(),
                xid_last: xid.as_ref().map(|x| x.last),
                xid_counts: xid.map(|x| x.counts),
                process_util,
            })
        })
        .collect()
}

fn device_info(id: String, device: &nvml_wrapper::Device<'_>) -> GpuInfo {
    GpuInfo {
        name: device.name().unwrap_or_else(|_| id.clone()),
        index: device.index().ok(),
        memory_total_bytes: device.memory_info().map(|m| m.total).unwrap_or(0),
        // NVML_DEVICE_MIG_ENABLE is 1; "not supported" (and any other error)
        // leaves the mode unknown.
        mig_enabled: device.mig_mode().ok().map(|m| m.current == 1),
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nvml_only_the_simulated_gpu_is_known() {
        let inv = Inventory::discover(&NvmlSource::Disabled);
        assert_eq!(inv.gpus().len(), 1);
        let sim = inv.get(SIM_GPU).unwrap();
        assert_eq!(sim.name, "gpuvisor simulated GPU");
        assert_eq!(sim.index, None);
    }

    #[test]
    fn a_missing_nvml_library_is_not_an_error() {
        let inv = Inventory::discover(&NvmlSource::Path("/nonexistent/libnvidia-ml.so".into()));
        assert_eq!(inv.gpus().iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), vec![SIM_GPU]);
    }

    #[test]
    fn without_nvml_ids_are_kept_as_they_are() {
        let inv = Inventory::discover(&NvmlSource::Disabled);
        let id = "GPU-01234567-89ab-cdef-0123-456789abcdef";
        assert_eq!(inv.canonical_id(id), id);
        assert_eq!(inv.canonical_id("sim"), "sim");
    }

    #[test]
    fn unknown_gpus_are_added_under_their_id() {
        let mut inv = Inventory::discover(&NvmlSource::Disabled);
        let id = "GPU-01234567-89ab-cdef-0123-456789abcdef";
        assert_eq!(inv.get_or_add(id).name, id);
        inv.get_or_add(id);
        assert_eq!(inv.gpus().len(), 2);
        assert_eq!(inv.gpus()[1].id, id);
    }
}
