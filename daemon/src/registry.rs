//! The daemon's shared state: every GPU and VM it knows, their stored
//! settings and GPU access lists, which backends are connected, and each
//! GPU's scheduler thread. Registration and admin changes go through here
//! (under one lock, written through to the database); the grant path does
//! not.

use crate::driver::{self, Clock, GpuDriver, GpuEvent, GpuSnapshot, Join, MemorySetup, SwapLedger};
use crate::inventory::{GpuInfo, Inventory, SIM_GPU};
use crate::memory::{BrokerParams, MemoryConfig};
use crate::store::{GpuRecord, Store, VmRecord};
use gpuvisor_admin::{
    GpuAccessMode, MAX_GPU_ID, MAX_MEMORY_LIMIT_BYTES, MAX_OVERCOMMIT_RATIO, MAX_VM_NAME, MIN_MEMORY_LIMIT_BYTES,
    MIN_OVERCOMMIT_RATIO,
};
use protocol::control::{
    self, BackendStats, DaemonMsg, MemoryState, QosClass, QosRequest, RefusalCode, VmSettings, CONTROL_VERSION,
};
use sched::VmParams;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// Settings a VM gets when neither its backend nor the store says otherwise.
pub const DEFAULT_CLASS: QosClass = QosClass::Burstable;
/// As cgroup v2's `cpu.weight`, whose range (1 to 10000) the weights share.
pub const DEFAULT_WEIGHT: u32 = 100;
pub const DEFAULT_PRIORITY: i32 = 0;
pub const DEFAULT_MAX_QUEUED_OPS: u32 = 16;

/// A value out of range, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn field(field: &'static str, message: String) -> FieldError {
    FieldError { field, message }
}

pub fn check_weight(w: u32) -> Result<u32, FieldError> {
    if (control::MIN_WEIGHT..=control::MAX_WEIGHT).contains(&w) {
        Ok(w)
    } else {
        Err(field("weight", format!("{w} is out of range {}..={}", control::MIN_WEIGHT, control::MAX_WEIGHT)))
    }
}

pub fn check_priority(p: i32) -> Result<i32, FieldError> {
    if (control::MIN_PRIORITY..=control::MAX_PRIORITY).contains(&p) {
        Ok(p)
    } else {
        Err(field("priority", format!("{p} is out of range {}..={}", control::MIN_PRIORITY, control::MAX_PRIORITY)))
    }
}

pub fn check_slice_us(s: u64) -> Result<u64, FieldError> {
    if (control::MIN_SLICE_US..=control::MAX_SLICE_US).contains(&s) {
        Ok(s)
    } else {
        Err(field("slice_us", format!("{s} is out of range {}..={}", control::MIN_SLICE_US, control::MAX_SLICE_US)))
    }
}

pub fn check_max_queued_ops(n: u32) -> Result<u32, FieldError> {
    if (control::MIN_QUEUED_OPS..=control::MAX_QUEUED_OPS).contains(&n) {
        Ok(n)
    } else {
        Err(field(
            "max_queued_ops",
            format!("{n} is out of range {}..={}", control::MIN_QUEUED_OPS, control::MAX_QUEUED_OPS),
        ))
    }
}

/// How far a GPU's memory may be overcommitted: the VMs' quotas may add up
/// to this many times its capacity.
pub fn check_overcommit_ratio(r: f64) -> Result<f64, FieldError> {
    if r.is_finite() && (MIN_OVERCOMMIT_RATIO..=MAX_OVERCOMMIT_RATIO).contains(&r) {
        Ok(r)
    } else {
        Err(field("overcommit_ratio", format!("{r} is out of range {MIN_OVERCOMMIT_RATIO}..={MAX_OVERCOMMIT_RATIO}")))
    }
}

/// The admin's cap on the device memory a GPU's VMs share.
pub fn check_memory_limit(b: u64) -> Result<u64, FieldError> {
    if (MIN_MEMORY_LIMIT_BYTES..=MAX_MEMORY_LIMIT_BYTES).contains(&b) {
        Ok(b)
    } else {
        Err(field(
            "memory_limit_bytes",
            format!("{b} is out of range {MIN_MEMORY_LIMIT_BYTES}..={MAX_MEMORY_LIMIT_BYTES}"),
        ))
    }
}

/// VM names: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_vm_name(name: &str) -> Result<(), FieldError> {
    if !gpuvisor_admin::valid_vm_name(name) {
        return Err(field(
            "vm",
            format!("{name:?} is not a VM name (1 to {MAX_VM_NAME} characters of A-Z a-z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

fn check_gpu_id(id: &str) -> Result<(), FieldError> {
    if !gpuvisor_admin::valid_gpu_id(id) {
        return Err(field(
            "gpu",
            format!(
                "{id:?} is not a GPU id (a UUID such as GPU-... or MIG-..., or sim; at most {MAX_GPU_ID} characters)"
            ),
        ));
    }
    Ok(())
}

/// Why a registration was refused: the code the backend acts on and the
/// metrics count, and the reason it logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    fn new(code: RefusalCode, reason: impl Into<String>) -> Refusal {
        Refusal { code, reason: reason.into() }
    }

    fn invalid(e: FieldError) -> Refusal {
        Refusal::new(RefusalCode::Invalid, e.to_string())
    }
}

/// The fields of a backend's `Hello`.
#[derive(Debug, Clone)]
pub struct Hello {
    pub version: u32,
    pub vm: String,
    pub pid: u32,
    pub engine: String,
    pub gpu: String,
    pub quota_bytes: u64,
    pub requested: QosRequest,
    pub reconnect: bool,
    pub gpu_ns_total: u64,
    /// Where its device memory stands (a reconnecting backend's books).
    pub memory: MemoryState,
}

/// Applies a backend's request on top of `base`, checking each field used.
fn apply_request(mut rec: VmRecord, req: &QosRequest) -> Result<VmRecord, FieldError> {
    if let Some(c) = req.class {
        rec.class = c;
    }
    if let Some(w) = req.weight {
        rec.weight = check_weight(w)?;
    }
    if let Some(p) = req.priority {
        rec.priority = check_priority(p)?;
    }
    if let Some(s) = req.slice_us {
        rec.slice_us = Some(check_slice_us(s)?);
    }
    Ok(rec)
}

/// A connected backend.
#[derive(Debug)]
pub struct Conn {
    /// Connection id, also the VM's id in its GPU's scheduler.
    pub id: u64,
    pub pid: u32,
    pub engine: String,
    pub quota_bytes: u64,
    /// GPU time the backend reported at registration.
    pub gpu_ns_at_hello: u64,
    pub stats: Option<BackendStats>,
    pub tx: UnboundedSender<DaemonMsg>,
}

#[derive(Debug)]
pub struct VmEntry {
    pub rec: VmRecord,
    pub conn: Option<Conn>,
    /// Backends registered for it since the daemon started, and how many of
    /// them were reconnecting.
    pub registrations: u64,
    pub reconnects: u64,
}

#[derive(Debug)]
pub struct GpuEntry {
    pub settings: GpuRecord,
    pub driver: GpuDriver,
}

/// What a successful registration hands the connection.
#[derive(Debug)]
pub struct Registered {
    pub conn: u64,
    pub gpu: driver::GpuHandle,
    /// The GPU it was registered on: the Hello's id, or the MIG instance's
    /// `MIG-` UUID where the backend named one by CUDA's `GPU-` form.
    pub gpu_id: String,
    pub settings: VmSettings,
}

#[derive(Debug)]
pub struct Registry {
    store: Store,
    inventory: Inventory,
    clock: Clock,
    default_slice_us: u64,
    memory: BrokerParams,
    ledger: Arc<SwapLedger>,
    gpus: HashMap<String, GpuEntry>,
    vms: BTreeMap<String, VmEntry>,
    next_conn: u64,
    /// Which GPUs a VM without an access list may use.
    access_mode: GpuAccessMode,
    /// The admin's GPU access lists, by VM name; a VM need not be in `vms`.
    access: BTreeMap<String, Vec<String>>,
    /// Registrations refused since the daemon started, by reason.
    refusals: BTreeMap<RefusalCode, u64>,
}

impl Registry {
    /// Loads the stored GPUs, VMs and access lists and starts a scheduler
    /// thread for every GPU known. `memory` holds the memory brokers'
    /// daemon-wide settings; `access_mode` says which GPUs a VM without an
    /// access list may use.
    pub fn new(
        store: Store,
        inventory: Inventory,
        default_slice_us: u64,
        clock: Clock,
        memory: BrokerParams,
        access_mode: GpuAccessMode,
    ) -> Result<Registry, crate::Error> {
        let mut reg = Registry {
            store,
            inventory,
            clock,
            default_slice_us,
            memory,
            ledger: Arc::new(SwapLedger::new(memory.swap_limit_bytes)),
            gpus: HashMap::new(),
            vms: BTreeMap::new(),
            next_conn: 1,
            access_mode,
            access: BTreeMap::new(),
            refusals: RefusalCode::ALL.into_iter().map(|c| (c, 0)).collect(),
        };
        reg.access = reg.store.access_lists()?;
        let stored_gpus = reg.store.gpus()?;
        let stored_vms = reg.store.vms()?;
        let ids: Vec<String> = reg.inventory.gpus().iter().map(|g| g.id.clone()).collect();
        for id in ids {
            reg.ensure_gpu(&id)?;
        }
        for g in stored_gpus {
            let id = g.id.clone();
            let settings = GpuRecord {
                slice_us: check_slice_us(g.slice_us).unwrap_or(default_slice_us),
                max_queued_ops: check_max_queued_ops(g.max_queued_ops).unwrap_or(DEFAULT_MAX_QUEUED_OPS),
                overcommit_ratio: check_overcommit_ratio(g.overcommit_ratio).unwrap_or(1.0),
                memory_limit_bytes: g.memory_limit_bytes.and_then(|b| check_memory_limit(b).ok()),
                ..g
            };
            reg.ensure_gpu(&id)?;
            let config = reg.memory_config(&settings);
            if let Some(e) = reg.gpus.get_mut(&id) {
                e.driver.send(GpuEvent::SetPolicy { policy: driver::policy(settings.slice_us) });
                e.driver.send(GpuEvent::SetMemory { config });
                e.settings = settings;
            }
        }
        for v in stored_vms {
            reg.ensure_gpu(&v.gpu)?;
            reg.vms.insert(v.name.clone(), VmEntry { rec: v, conn: None, registrations: 0, reconnects: 0 });
        }
        tracing::info!(gpus = reg.gpus.len(), vms = reg.vms.len(), access_lists = reg.access.len(),
            gpu_access = %access_mode, db = %reg.store.path().display(), "state loaded");
        Ok(reg)
    }

    /// The GPU `id`, learning it (and starting its scheduler) if new.
    fn ensure_gpu(&mut self, id: &str) -> Result<&GpuEntry, crate::Error> {
        if !self.gpus.contains_key(id) {
            self.inventory.get_or_add(id);
            let settings = GpuRecord {
                id: id.to_string(),
                slice_us: self.default_slice_us,
                max_queued_ops: DEFAULT_MAX_QUEUED_OPS,
                overcommit_ratio: 1.0,
                memory_limit_bytes: None,
            };
            let memory =
                MemorySetup { config: self.memory_config(&settings), params: self.memory, ledger: self.ledger.clone() };
            let driver = GpuDriver::spawn(id, driver::policy(settings.slice_us), self.clock, memory)
                .map_err(|source| crate::Error::Thread { gpu: id.to_string(), source })?;
            self.gpus.insert(id.to_string(), GpuEntry { settings, driver });
        }
        self.gpus.get(id).ok_or_else(|| crate::Error::Internal(format!("GPU {id} vanished")))
    }

    /// What a GPU's memory broker works with: the admin's settings and the
    /// GPU's size.
    fn memory_config(&self, settings: &GpuRecord) -> MemoryConfig {
        MemoryConfig {
            limit_bytes: settings.memory_limit_bytes,
            total_bytes: self.inventory.get(&settings.id).map_or(0, |g| g.memory_total_bytes),
            simulated: settings.id == SIM_GPU,
            overcommit_ratio: settings.overcommit_ratio,
        }
    }

    fn vm_settings(&self, rec: &VmRecord) -> VmSettings {
        let gpu = self.gpus.get(&rec.gpu).map(|g| &g.settings);
        VmSettings {
            class: rec.class,
            weight: rec.weight,
            priority: rec.priority,
            slice_us: rec.slice_us.unwrap_or(gpu.map_or(self.default_slice_us, |g| g.slice_us)),
            max_queued_ops: gpu.map_or(DEFAULT_MAX_QUEUED_OPS, |g| g.max_queued_ops),
            drained: self.held(rec),
        }
    }

    /// Whether VM `vm` may use GPU `gpu` under its access list and the
    /// daemon's mode.
    pub fn gpu_allowed(&self, vm: &str, gpu: &str) -> bool {
        gpuvisor_admin::gpu_allowed(self.access.get(vm).map(Vec::as_slice), self.access_mode, gpu)
    }

    /// Whether the VM gets no grants: drained by the admin, or registered on
    /// a GPU its access list no longer allows. The second is not stored as
    /// `drained`, so that allowing the GPU again lets the VM run without a
    /// `resume`.
    fn held(&self, rec: &VmRecord) -> bool {
        rec.drained || !self.gpu_allowed(&rec.name, &rec.gpu)
    }

    /// What the scheduler needs of a VM's settings, its access included.
    fn sched_params(&self, rec: &VmRecord) -> VmParams {
        VmParams { drained: self.held(rec), ..params(rec) }
    }

    /// Which GPUs a VM without an access list may use.
    pub fn access_mode(&self) -> GpuAccessMode {
        self.access_mode
    }

    /// The admin's access list of VM `vm`; `None` where it has none.
    pub fn access_list(&self, vm: &str) -> Option<&[String]> {
        self.access.get(vm).map(Vec::as_slice)
    }

    /// The VMs that have an access list, registered or not.
    pub fn access_names(&self) -> impl Iterator<Item = &String> {
        self.access.keys()
    }

    /// Registrations refused since the daemon started, by reason (every
    /// reason, 0 included).
    pub fn refusals(&self) -> &BTreeMap<RefusalCode, u64> {
        &self.refusals
    }

    /// Stores VM `vm`'s new access list (`None`: removes it) and applies it
    /// at once: a connected VM whose GPU it no longer allows gets no more
    /// grants (its backend and scheduler see it drained) until a list allows
    /// it again, and its next registration is refused.
    pub fn set_access(&mut self, vm: &str, list: Option<Vec<String>>) -> Result<(), crate::store::StoreError> {
        self.store.put_access(vm, list.as_deref())?;
        let before = self.vms.get(vm).map(|v| self.held(&v.rec));
        match &list {
            Some(l) => self.access.insert(vm.to_owned(), l.clone()),
            None => self.access.remove(vm),
        };
        tracing::info!(vm, allowed_gpus = ?list, "GPU access list changed");
        let Some(v) = self.vms.get(vm) else {
            return Ok(());
        };
        let allowed = self.gpu_allowed(vm, &v.rec.gpu);
        if !allowed {
            tracing::warn!(vm, gpu = %v.rec.gpu, connected = v.conn.is_some(),
                "the VM's GPU access list no longer allows its GPU: it gets no grants, and its backend is \
                 refused at its next registration");
        }
        if let (Some(c), true) = (&v.conn, before != Some(self.held(&v.rec))) {
            let _ = c.tx.send(DaemonMsg::Settings { settings: self.vm_settings(&v.rec) });
            if let Some(g) = self.gpus.get(&v.rec.gpu) {
                g.driver.send(GpuEvent::SetParams { vm: c.id, params: self.sched_params(&v.rec) });
            }
        }
        Ok(())
    }

    /// Registers a backend: checks its Hello and that its VM may use the
    /// GPU it names, settles its settings (the stored ones on a reconnect,
    /// the requested ones on a fresh start), has its GPU admit it (its
    /// memory quota must fit), queues `Welcome` on `tx`, adds the VM to its
    /// GPU's scheduler and stores its settings. `Err` is what to send back in
    /// `Refused`; it is counted.
    pub fn register(&mut self, hello: &Hello, tx: UnboundedSender<DaemonMsg>) -> Result<Registered, Refusal> {
        let result = self.try_register(hello, tx);
        if let Err(r) = &result {
            *self.refusals.entry(r.code).or_default() += 1;
        }
        result
    }

    fn try_register(&mut self, hello: &Hello, tx: UnboundedSender<DaemonMsg>) -> Result<Registered, Refusal> {
        if hello.version != CONTROL_VERSION {
            return Err(Refusal::new(
                RefusalCode::Invalid,
                format!(
                    "version: control protocol version {} is not supported (this gpuvisord speaks {CONTROL_VERSION})",
                    hello.version
                ),
            ));
        }
        check_vm_name(&hello.vm).map_err(Refusal::invalid)?;
        if hello.engine != "cuda" && hello.engine != "sim" {
            return Err(Refusal::new(
                RefusalCode::Invalid,
                format!("engine: {:?} is not an engine (cuda or sim)", hello.engine),
            ));
        }
        check_gpu_id(&hello.gpu).map_err(Refusal::invalid)?;
        let gpu_id = self.inventory.canonical_id(&hello.gpu);
        // Checked on every registration, reconnects included: a VM whose GPU
        // was taken out of its list while the daemon was away must not get
        // it back by reconnecting.
        if !self.gpu_allowed(&hello.vm, &gpu_id) {
            return Err(Refusal::new(RefusalCode::GpuNotAllowed, self.not_allowed_reason(&hello.vm, &gpu_id)));
        }
        let stored = self.vms.get(&hello.vm).map(|v| (v.rec.clone(), v.conn.is_some()));
        if stored.as_ref().is_some_and(|(_, connected)| *connected) {
            return Err(Refusal::new(
                RefusalCode::AlreadyConnected,
                format!("vm: a backend for VM {:?} is already connected", hello.vm),
            ));
        }
        let stored = stored.map(|(rec, _)| rec);
        let rec = match &stored {
            Some(v) if hello.reconnect => VmRecord { gpu: gpu_id.clone(), ..v.clone() },
            Some(v) => apply_request(VmRecord { gpu: gpu_id.clone(), ..v.clone() }, &hello.requested)
                .map_err(Refusal::invalid)?,
            None => apply_request(
                VmRecord {
                    name: hello.vm.clone(),
                    gpu: gpu_id.clone(),
                    class: DEFAULT_CLASS,
                    weight: DEFAULT_WEIGHT,
                    priority: DEFAULT_PRIORITY,
                    slice_us: None,
                    drained: false,
                },
                &hello.requested,
            )
            .map_err(Refusal::invalid)?,
        };
        let gpu = self
            .ensure_gpu(&gpu_id)
            .map_err(|e| Refusal::new(RefusalCode::Unavailable, format!("internal: {e}")))?
            .driver
            .sender();
        let settings = self.vm_settings(&rec);
        let conn = self.next_conn;
        self.next_conn += 1;
        gpu.join(Join {
            vm: conn,
            name: rec.name.clone(),
            params: self.sched_params(&rec),
            tx: tx.clone(),
            settings: settings.clone(),
            quota_bytes: hello.quota_bytes,
            memory: hello.memory,
            reconnect: hello.reconnect,
        })
        .map_err(|e| match e {
            driver::JoinError::Stopping => Refusal::new(RefusalCode::Unavailable, e.to_string()),
            driver::JoinError::Overcommit(reason) => Refusal::new(RefusalCode::Overcommit, reason),
        })?;
        if stored.as_ref() != Some(&rec) {
            // A VM whose settings cannot be stored still runs; they are
            // stored again at its next change.
            if let Err(e) = self.store.put_vm(&rec) {
                tracing::error!(vm = %rec.name, "storing settings: {e}");
            }
        }
        let (registrations, reconnects) = self.vms.get(&hello.vm).map_or((0, 0), |v| (v.registrations, v.reconnects));
        self.vms.insert(
            rec.name.clone(),
            VmEntry {
                registrations: registrations.saturating_add(1),
                reconnects: reconnects.saturating_add(hello.reconnect.into()),
                rec,
                conn: Some(Conn {
                    id: conn,
                    pid: hello.pid,
                    engine: hello.engine.clone(),
                    quota_bytes: hello.quota_bytes,
                    gpu_ns_at_hello: hello.gpu_ns_total,
                    stats: None,
                    tx,
                }),
            },
        );
        Ok(Registered { conn, gpu, gpu_id, settings })
    }

    /// Why VM `vm` may not use GPU `gpu`, saying what the admin can do.
    fn not_allowed_reason(&self, vm: &str, gpu: &str) -> String {
        let fix = format!("gpuvisorctl access-set {vm} --allow-gpu {gpu}, or PUT /v1/vms/{vm}/access");
        match self.access.get(vm) {
            None => format!(
                "gpu: VM {vm:?} has no GPU access list and gpuvisord runs with --gpu-access closed, so it may not \
                 use GPU {gpu:?}; the admin allows it with {fix}"
            ),
            Some(l) if l.is_empty() => {
                format!("gpu: VM {vm:?} may use no GPU (its access list is empty), not {gpu:?}; the admin allows it with {fix}")
            }
            Some(l) => format!(
                "gpu: VM {vm:?} may not use GPU {gpu:?}: its access list allows only {}; the admin allows it with {fix}",
                l.join(", ")
            ),
        }
    }

    /// The backend on connection `conn` is gone: its VM leaves the
    /// scheduler; its settings stay.
    pub fn disconnect(&mut self, vm: &str, conn: u64) {
        if let Some(v) = self.vms.get_mut(vm) {
            if v.conn.as_ref().is_some_and(|c| c.id == conn) {
                v.conn = None;
                if let Some(g) = self.gpus.get(&v.rec.gpu) {
                    g.driver.send(GpuEvent::Remove { vm: conn });
                }
            }
        }
    }

    pub fn record_stats(&mut self, vm: &str, conn: u64, stats: BackendStats) {
        if let Some(c) = self.vms.get_mut(vm).and_then(|v| v.conn.as_mut()).filter(|c| c.id == conn) {
            c.stats = Some(stats);
        }
    }

    pub fn vm(&self, name: &str) -> Option<&VmEntry> {
        self.vms.get(name)
    }

    pub fn vm_names(&self) -> impl Iterator<Item = &String> {
        self.vms.keys()
    }

    pub fn vms_on(&self, gpu: &str) -> impl Iterator<Item = &VmEntry> + '_ {
        let gpu = gpu.to_string();
        self.vms.values().filter(move |v| v.rec.gpu == gpu)
    }

    /// GPUs in inventory order: NVML's, the simulated one, then those learned.
    pub fn gpu_infos(&self) -> &[GpuInfo] {
        self.inventory.gpus()
    }

    /// The loaded NVML, to take readings with after the lock is released.
    pub fn nvml(&self) -> Option<Arc<nvml_wrapper::Nvml>> {
        self.inventory.nvml()
    }

    /// NVML's per-process utilisation samples, read with the readings.
    pub fn proc_util(&self) -> Arc<crate::proc_util::ProcessUtilBook> {
        self.inventory.proc_util()
    }

    /// NVML's XID error counts, read with the readings.
    pub fn xids(&self) -> Option<Arc<crate::xid::XidBook>> {
        self.inventory.xids()
    }

    pub fn gpu_info(&self, id: &str) -> Option<&GpuInfo> {
        self.inventory.get(id)
    }

    pub fn gpu(&self, id: &str) -> Option<&GpuEntry> {
        self.gpus.get(id)
    }

    /// Settings in effect for a VM (its own, with the GPU's defaults).
    pub fn settings_of(&self, rec: &VmRecord) -> VmSettings {
        self.vm_settings(rec)
    }

    /// Stores a VM's new settings and applies them at once: its GPU's
    /// scheduler and its backend, if connected, get them.
    pub fn change_vm(&mut self, rec: VmRecord) -> Result<(), crate::store::StoreError> {
        self.store.put_vm(&rec)?;
        let settings = self.vm_settings(&rec);
        let sched = self.sched_params(&rec);
        let Some(v) = self.vms.get_mut(&rec.name) else {
            return Ok(());
        };
        if let Some(c) = &v.conn {
            // Settings first: a grant the change brings must find the
            // backend already undrained.
            let _ = c.tx.send(DaemonMsg::Settings { settings });
            if let Some(g) = self.gpus.get(&rec.gpu) {
                g.driver.send(GpuEvent::SetParams { vm: c.id, params: sched });
            }
        }
        tracing::info!(vm = %rec.name, class = %rec.class, weight = rec.weight, priority = rec.priority,
            slice_us = ?rec.slice_us, drained = rec.drained, "VM settings changed");
        v.rec = rec;
        Ok(())
    }

    /// Stores a GPU's new defaults and applies them at once: its scheduler
    /// and every backend connected on it get them.
    pub fn change_gpu(&mut self, settings: GpuRecord) -> Result<(), crate::store::StoreError> {
        self.store.put_gpu(&settings)?;
        let Some(g) = self.gpus.get_mut(&settings.id) else {
            return Ok(());
        };
        tracing::info!(gpu = %settings.id, slice_us = settings.slice_us, max_queued_ops = settings.max_queued_ops,
            overcommit_ratio = settings.overcommit_ratio, memory_limit_bytes = ?settings.memory_limit_bytes,
            "GPU settings changed");
        let id = settings.id.clone();
        let policy = driver::policy(settings.slice_us);
        let memory_changed = g.settings.overcommit_ratio != settings.overcommit_ratio
            || g.settings.memory_limit_bytes != settings.memory_limit_bytes;
        g.settings = settings;
        for v in self.vms.values().filter(|v| v.rec.gpu == id) {
            if let Some(c) = &v.conn {
                let _ = c.tx.send(DaemonMsg::Settings { settings: self.vm_settings(&v.rec) });
            }
        }
        if let Some(g) = self.gpus.get(&id) {
            g.driver.send(GpuEvent::SetPolicy { policy });
            if memory_changed {
                g.driver.send(GpuEvent::SetMemory { config: self.memory_config(&g.settings) });
            }
        }
        Ok(())
    }

    /// Host RAM that evicted GPU memory takes, across GPUs.
    pub fn swap_ledger(&self) -> &SwapLedger {
        &self.ledger
    }

    /// Stops every scheduler thread (at shutdown).
    pub fn take_drivers(&mut self) -> Vec<GpuDriver> {
        self.gpus.drain().map(|(_, g)| g.driver).collect()
    }

    /// Senders for querying each GPU's scheduler.
    pub fn gpu_senders(&self) -> HashMap<String, driver::GpuHandle> {
        self.gpus.iter().map(|(id, g)| (id.clone(), g.driver.sender())).collect()
    }
}

/// What the scheduler needs of a VM's stored settings (access aside: see
/// `Registry::sched_params`).
pub fn params(rec: &VmRecord) -> VmParams {
    VmParams {
        class: rec.class,
        weight: rec.weight,
        priority: rec.priority,
        slice_ns: rec.slice_us.map(|s| s.saturating_mul(1000)),
        drained: rec.drained,
    }
}

/// Ask a GPU's scheduler for its figures, without holding any lock.
pub fn query_gpu(tx: &driver::GpuHandle) -> Option<GpuSnapshot> {
    driver::query(tx, std::time::Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_short_and_plain() {
        for ok in ["a", "vm-1", "db.prod_2", &"x".repeat(64)] {
            assert!(check_vm_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "../x", "ü", &"x".repeat(65), "a/b", "a\n"] {
            assert_eq!(check_vm_name(bad).unwrap_err().field, "vm", "{bad:?}");
        }
    }

    #[test]
    fn a_request_overrides_only_the_fields_it_names_and_checks_them() {
        let base = VmRecord {
            name: "v".into(),
            gpu: "sim".into(),
            class: QosClass::Burstable,
            weight: 100,
            priority: 0,
            slice_us: Some(3000),
            drained: true,
        };
        let r = apply_request(base.clone(), &QosRequest { weight: Some(7), ..Default::default() }).unwrap();
        assert_eq!(r, VmRecord { weight: 7, ..base.clone() });
        let e = apply_request(base.clone(), &QosRequest { slice_us: Some(1), ..Default::default() }).unwrap_err();
        assert_eq!(e.field, "slice_us");
        let e = apply_request(base, &QosRequest { priority: Some(-21), ..Default::default() }).unwrap_err();
        assert_eq!(e.field, "priority");
    }
}
