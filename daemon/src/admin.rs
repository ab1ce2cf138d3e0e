//! The daemon's side of the admin API: views assembled from the stored
//! settings, the schedulers' figures and the backends' last reports, and
//! changes that are stored, scheduled and sent to the backend at once.

use crate::driver::{GpuSnapshot, VmSnapshot};
use crate::history::HistoryError;
use crate::inventory::{self, GpuInfo};
use crate::registry::{self, FieldError, Registry, VmEntry};
use crate::store::GpuRecord;
use crate::telemetry::TelemetryView;
use crate::Shared;
use gpuvisor_admin::alerts::AlertsResponse;
use gpuvisor_admin::history::{HistoryMetrics, HistoryQuery, HistoryResponse};
use gpuvisor_admin::metrics::MetricsSnapshot;
use gpuvisor_admin::{
    AccessOverview, Admin, AdminError, GpuPatch, GpuView, SwapPoolView, VmAccess, VmPatch, VmState, VmView,
};
use std::collections::HashMap;
use std::sync::Arc;

/// The [`Admin`] the HTTP server serves.
#[derive(Clone)]
pub struct DaemonAdmin {
    shared: Arc<Shared>,
    /// The history and alerts; `None` with telemetry off (and for the
    /// sampler's own view, which only takes snapshots).
    telemetry: Option<Arc<TelemetryView>>,
}

impl DaemonAdmin {
    pub(crate) fn new(shared: Arc<Shared>, telemetry: Option<Arc<TelemetryView>>) -> DaemonAdmin {
        DaemonAdmin { shared, telemetry }
    }

    fn telemetry(&self) -> Result<&TelemetryView, AdminError> {
        self.telemetry.as_deref().ok_or_else(|| {
            AdminError::Unavailable("history is off: gpuvisord runs with --telemetry-interval-ms 0".to_owned())
        })
    }

    /// Each listed GPU's scheduler figures, asked for without holding the lock.
    fn snapshots(&self, gpus: &[String]) -> HashMap<String, GpuSnapshot> {
        let senders = self.shared.registry().gpu_senders();
        gpus.iter().filter_map(|id| Some((id.clone(), registry::query_gpu(senders.get(id)?)?))).collect()
    }

    fn vm_view_of(&self, name: &str) -> Result<VmView, AdminError> {
        let gpu = self.shared.registry().vm(name).map(|v| v.rec.gpu.clone()).ok_or_else(|| not_found_vm(name))?;
        let snaps = self.snapshots(&[gpu]);
        let reg = self.shared.registry();
        let v = reg.vm(name).ok_or_else(|| not_found_vm(name))?;
        Ok(vm_view(&reg, v, snaps.get(&v.rec.gpu)))
    }

    /// The swap pool's counts, taken under the pool's own lock (never with
    /// the registry's held).
    fn pool_view(&self) -> Option<SwapPoolView> {
        let pool = self.shared.swap_pool.as_ref()?;
        let s = pool.stats();
        let bytes = |n: usize| n as u64 * pool.chunk_bytes();
        Some(SwapPoolView {
            limit_bytes: pool.limit_bytes(),
            free_bytes: bytes(s.free),
            leased_bytes: bytes(s.leased),
            held_bytes: bytes(s.held),
        })
    }

    fn gpu_view_of(&self, id: &str) -> Result<GpuView, AdminError> {
        if self.shared.registry().gpu(id).is_none() {
            return Err(AdminError::NotFound { kind: "GPU", name: id.to_string() });
        }
        let snaps = self.snapshots(&[id.to_string()]);
        let pool = self.pool_view();
        let reg = self.shared.registry();
        gpu_view(&reg, id, snaps.get(id), pool)
            .ok_or_else(|| AdminError::NotFound { kind: "GPU", name: id.to_string() })
    }
}

fn history_error(e: HistoryError) -> AdminError {
    match e {
        HistoryError::UnknownMetric(name) => AdminError::NotFound { kind: "metric", name },
        other => AdminError::Internal(other.to_string()),
    }
}

fn not_found_vm(name: &str) -> AdminError {
    AdminError::NotFound { kind: "VM", name: name.to_string() }
}

fn invalid(e: FieldError) -> AdminError {
    AdminError::InvalidField { field: e.field.to_string(), message: e.message }
}

fn vm_view(reg: &Registry, v: &VmEntry, snap: Option<&GpuSnapshot>) -> VmView {
    let settings = reg.settings_of(&v.rec);
    let sched: VmSnapshot =
        v.conn.as_ref().and_then(|c| snap.and_then(|s| s.vms.get(&c.id))).cloned().unwrap_or_default();
    let stats = v.conn.as_ref().and_then(|c| c.stats.clone()).unwrap_or_default();
    let gpu_allowed = reg.gpu_allowed(&v.rec.name, &v.rec.gpu);
    let state = match &v.conn {
        None => VmState::Disconnected,
        Some(_) if v.rec.drained || !gpu_allowed => VmState::Drained,
        Some(_) if sched.holding => VmState::Running,
        Some(_) if sched.runnable => VmState::Waiting,
        Some(_) => VmState::Idle,
    };
    let gpu_ns =
        v.conn.as_ref().map_or(0, |c| stats.gpu_ns_total.max(c.gpu_ns_at_hello.saturating_add(sched.used_total_ns)));
    VmView {
        name: v.rec.name.clone(),
        gpu: v.rec.gpu.clone(),
        state,
        connected: v.conn.is_some(),
        pid: v.conn.as_ref().map(|c| c.pid),
        engine: v.conn.as_ref().map(|c| c.engine.clone()),
        class: v.rec.class,
        weight: v.rec.weight,
        priority: v.rec.priority,
        slice_us: settings.slice_us,
        slice_us_override: v.rec.slice_us,
        max_queued_ops: settings.max_queued_ops,
        drained: v.rec.drained,
        share_configured: sched.share_configured,
        share_used: sched.share_used,
        gpu_time_s: gpu_ns as f64 / 1e9,
        queued: stats.queued,
        inflight_ops: stats.inflight_ops,
        ops_total: stats.ops_total,
        latency_p50_us: stats.latency_p50_ns as f64 / 1e3,
        latency_p99_us: stats.latency_p99_ns as f64 / 1e3,
        quota_bytes: v.conn.as_ref().map_or(0, |c| c.quota_bytes),
        used_bytes: stats.used_bytes,
        limit_bytes: sched.memory.limit_bytes,
        resident_bytes: sched.memory.resident_bytes,
        evicted_bytes: sched.memory.evicted_bytes,
        evictions: sched.memory.evictions,
        restores: sched.memory.restores,
        evict_ms_total: sched.memory.evict_ns_total as f64 / 1e6,
        restore_ms_total: sched.memory.restore_ns_total as f64 / 1e6,
        last_restore_ms: sched.memory.last_restore_ns.map(|ns| ns as f64 / 1e6),
        swapped_out_bytes: sched.memory.evicted_moved_bytes,
        swapped_in_bytes: sched.memory.restored_moved_bytes,
        launches: stats.calls.launches,
        copies_htod: stats.calls.copies_htod,
        copies_dtoh: stats.calls.copies_dtoh,
        copies_dtod: stats.calls.copies_dtod,
        bytes_htod: stats.calls.bytes_htod,
        bytes_dtoh: stats.calls.bytes_dtoh,
        bytes_dtod: stats.calls.bytes_dtod,
        api_errors: stats.calls.errors.clone(),
        faults: stats.calls.faults,
        // The backend's figure (since it started, daemon round trips
        // included) where it has reported more than the scheduler measured:
        // the larger of two growing figures keeps the counter growing.
        grant_wait_s: stats.wait_ns_total.max(sched.wait_total_ns) as f64 / 1e9,
        grants: sched.grants,
        preemptions: sched.preemptions,
        registrations: v.registrations,
        reconnects: v.reconnects,
        allowed_gpus: reg.access_list(&v.rec.name).map(<[String]>::to_vec),
        gpu_allowed,
    }
}

/// VM `name`'s access, registered or not.
fn vm_access(reg: &Registry, name: &str) -> VmAccess {
    let v = reg.vm(name);
    VmAccess {
        vm: name.to_owned(),
        allowed_gpus: reg.access_list(name).map(<[String]>::to_vec),
        mode: reg.access_mode(),
        gpu: v.map(|v| v.rec.gpu.clone()),
        gpu_allowed: v.map(|v| reg.gpu_allowed(name, &v.rec.gpu)),
        connected: v.is_some_and(|v| v.conn.is_some()),
    }
}

fn gpu_view(reg: &Registry, id: &str, snap: Option<&GpuSnapshot>, pool: Option<SwapPoolView>) -> Option<GpuView> {
    let info = reg.gpu_info(id)?;
    let g = reg.gpu(id)?;
    Some(GpuView {
        id: info.id.clone(),
        name: info.name.clone(),
        index: info.index,
        memory_total_bytes: info.memory_total_bytes,
        mig_enabled: info.mig_enabled,
        slice_us: g.settings.slice_us,
        max_queued_ops: g.settings.max_queued_ops,
        holder: snap.and_then(|s| s.holder.clone()),
        busy_fraction: snap.map_or(0.0, |s| s.busy_fraction),
        vms: u32::try_from(reg.vms_on(id).count()).unwrap_or(u32::MAX),
        overcommit_ratio: g.settings.overcommit_ratio,
        memory_limit_bytes: g.settings.memory_limit_bytes,
        memory_capacity_bytes: snap.and_then(|s| s.memory.capacity_bytes),
        resident_bytes: snap.map_or(0, |s| s.memory.resident_bytes),
        evicted_bytes: snap.map_or(0, |s| s.memory.evicted_bytes),
        swap_used_bytes: reg.swap_ledger().used_bytes(),
        swap_limit_bytes: reg.swap_ledger().limit_bytes(),
        swap_pool: pool,
    })
}

impl Admin for DaemonAdmin {
    fn gpus(&self) -> Vec<GpuView> {
        let ids: Vec<String> = self.shared.registry().gpu_infos().iter().map(|g| g.id.clone()).collect();
        let snaps = self.snapshots(&ids);
        let pool = self.pool_view();
        let reg = self.shared.registry();
        ids.iter().filter_map(|id| gpu_view(&reg, id, snaps.get(id), pool)).collect()
    }

    fn gpu(&self, id: &str) -> Result<GpuView, AdminError> {
        self.gpu_view_of(id)
    }

    fn update_gpu(&self, id: &str, patch: GpuPatch) -> Result<GpuView, AdminError> {
        {
            let mut reg = self.shared.registry();
            let current = reg.gpu(id).ok_or_else(|| AdminError::NotFound { kind: "GPU", name: id.to_string() })?;
            let mut next: GpuRecord = current.settings.clone();
            if let Some(s) = patch.slice_us {
                next.slice_us = registry::check_slice_us(s).map_err(invalid)?;
            }
            if let Some(n) = patch.max_queued_ops {
                next.max_queued_ops = registry::check_max_queued_ops(n).map_err(invalid)?;
            }
            if let Some(r) = patch.overcommit_ratio {
                next.overcommit_ratio = registry::check_overcommit_ratio(r).map_err(invalid)?;
            }
            if let Some(l) = patch.memory_limit_bytes {
                next.memory_limit_bytes = l.map(registry::check_memory_limit).transpose().map_err(invalid)?;
            }
            reg.change_gpu(next).map_err(|e| AdminError::Internal(e.to_string()))?;
        }
        self.gpu_view_of(id)
    }

    /// One query per GPU scheduler (answered between grant events), one
    /// short hold of the registry's lock, then NVML without any lock.
    fn metrics(&self) -> MetricsSnapshot {
        let ids: Vec<String> = self.shared.registry().gpu_infos().iter().map(|g| g.id.clone()).collect();
        let snaps = self.snapshots(&ids);
        let pool = self.pool_view();
        let (gpus, vms, nvml, nvml_gpus, xids, procs, registrations_refused) = {
            let reg = self.shared.registry();
            let gpus: Vec<GpuView> = ids.iter().filter_map(|id| gpu_view(&reg, id, snaps.get(id), pool)).collect();
            let vms: Vec<VmView> =
                reg.vm_names().filter_map(|n| reg.vm(n)).map(|v| vm_view(&reg, v, snaps.get(&v.rec.gpu))).collect();
            let nvml_gpus: Vec<GpuInfo> = reg.gpu_infos().iter().filter(|g| g.index.is_some()).cloned().collect();
            let refused = reg.refusals().iter().map(|(code, n)| (code.as_str().to_owned(), *n)).collect();
            (gpus, vms, reg.nvml(), nvml_gpus, reg.xids(), reg.proc_util(), refused)
        };
        let readings = match nvml {
            Some(nvml) => inventory::readings(&nvml, &nvml_gpus.iter().collect::<Vec<_>>(), xids.as_deref(), &procs),
            None => Vec::new(),
        };
        MetricsSnapshot { hostname: self.shared.hostname.clone(), gpus, vms, readings, registrations_refused }
    }

    fn vms(&self) -> Vec<VmView> {
        let ids: Vec<String> = self.shared.registry().gpu_infos().iter().map(|g| g.id.clone()).collect();
        let snaps = self.snapshots(&ids);
        let reg = self.shared.registry();
        reg.vm_names().filter_map(|n| reg.vm(n)).map(|v| vm_view(&reg, v, snaps.get(&v.rec.gpu))).collect()
    }

    fn vm(&self, name: &str) -> Result<VmView, AdminError> {
        self.vm_view_of(name)
    }

    fn update_vm(&self, name: &str, patch: VmPatch) -> Result<VmView, AdminError> {
        {
            let mut reg = self.shared.registry();
            let mut next = reg.vm(name).ok_or_else(|| not_found_vm(name))?.rec.clone();
            if let Some(c) = patch.class {
                next.class = c;
            }
            if let Some(w) = patch.weight {
                next.weight = registry::check_weight(w).map_err(invalid)?;
            }
            if let Some(p) = patch.priority {
                next.priority = registry::check_priority(p).map_err(invalid)?;
            }
            if let Some(s) = patch.slice_us {
                next.slice_us = s.map(registry::check_slice_us).transpose().map_err(invalid)?;
            }
            reg.change_vm(next).map_err(|e| AdminError::Internal(e.to_string()))?;
        }
        self.vm_view_of(name)
    }

    /// Reads through the API's own connection: the sampler keeps writing.
    fn history(&self, q: &HistoryQuery) -> Result<HistoryResponse, AdminError> {
        let view = self.telemetry()?;
        let now = gpuvisor_admin::time::now_unix();
        let r =
            q.resolve(now).map_err(|e| AdminError::InvalidField { field: e.field.to_owned(), message: e.message })?;
        view.history().query(&r, now).map_err(history_error)
    }

    fn history_metrics(&self) -> Result<HistoryMetrics, AdminError> {
        self.telemetry()?.history().metrics().map_err(history_error)
    }

    fn alerts(&self) -> Result<AlertsResponse, AdminError> {
        Ok(self.telemetry.as_ref().map(|t| t.alerts()).unwrap_or_default())
    }

    fn access(&self) -> Result<AccessOverview, AdminError> {
        let reg = self.shared.registry();
        let mut names: Vec<&String> = reg.vm_names().chain(reg.access_names()).collect();
        names.sort();
        names.dedup();
        Ok(AccessOverview { mode: reg.access_mode(), vms: names.into_iter().map(|n| vm_access(&reg, n)).collect() })
    }

    fn vm_access(&self, name: &str) -> Result<VmAccess, AdminError> {
        registry::check_vm_name(name).map_err(|e| invalid(FieldError { field: "name", ..e }))?;
        Ok(vm_access(&self.shared.registry(), name))
    }

    /// Checks again what the HTTP layer checked: the trait is the daemon's
    /// boundary, and its other callers (tests, the sampler) are not HTTP.
    fn set_vm_access(&self, name: &str, allowed_gpus: Option<Vec<String>>) -> Result<VmAccess, AdminError> {
        registry::check_vm_name(name).map_err(|e| invalid(FieldError { field: "name", ..e }))?;
        if let Some(list) = &allowed_gpus {
            gpuvisor_admin::check_allowed_gpus(list)
                .map_err(|message| AdminError::InvalidField { field: "allowed_gpus".to_owned(), message })?;
        }
        let mut reg = self.shared.registry();
        reg.set_access(name, allowed_gpus).map_err(|e| AdminError::Internal(e.to_string()))?;
        Ok(vm_access(&reg, name))
    }

    fn set_drained(&self, name: &str, drained: bool) -> Result<VmView, AdminError> {
        {
            let mut reg = self.shared.registry();
            let mut next = reg.vm(name).ok_or_else(|| not_found_vm(name))?.rec.clone();
            next.drained = drained;
            reg.change_vm(next).map_err(|e| AdminError::Internal(e.to_string()))?;
        }
        self.vm_view_of(name)
    }
}
