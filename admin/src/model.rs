//! What the admin API shows and accepts. The daemon implements [`Admin`]; the
//! HTTP layer only translates between JSON and these calls.

use crate::alerts::AlertsResponse;
use crate::history::{HistoryMetrics, HistoryQuery, HistoryResponse};
use crate::metrics::MetricsSnapshot;
use protocol::control::QosClass;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Limits on a GPU's `overcommit_ratio`.
pub const MIN_OVERCOMMIT_RATIO: f64 = 1.0;
pub const MAX_OVERCOMMIT_RATIO: f64 = 100.0;
/// Limits on a GPU's `memory_limit_bytes`: 1 MiB to 1 PiB.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 1 << 20;
pub const MAX_MEMORY_LIMIT_BYTES: u64 = 1 << 50;

/// VM names: 1 to this many characters of `A-Z a-z 0-9 . _ -`.
pub const MAX_VM_NAME: usize = 64;
/// GPU ids (`GPU-<uuid>`, `MIG-<uuid>`, `sim`): 1 to this many characters of
/// `A-Z a-z 0-9 . _ - :`.
pub const MAX_GPU_ID: usize = 128;
/// The most entries a VM's GPU access list holds.
pub const MAX_ALLOWED_GPUS: usize = 64;
/// The access-list entry that allows every GPU.
pub const ANY_GPU: &str = "*";
/// What [`valid_vm_name`] accepts, as the OpenAPI document says it.
pub const VM_NAME_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// What [`valid_gpu_id`] accepts, as the OpenAPI document says it.
pub const GPU_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// Whether `name` can name a VM.
pub fn valid_vm_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !name.is_empty() && name.len() <= MAX_VM_NAME && name.chars().all(ok_char)
}

/// Whether `id` can name a GPU or MIG instance (its syntax only: the GPU
/// need not be present on this host).
pub fn valid_gpu_id(id: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    !id.is_empty() && id.len() <= MAX_GPU_ID && id.chars().all(ok_char)
}

/// Checks a VM's GPU access list as the admin gives it: at most
/// [`MAX_ALLOWED_GPUS`] GPU ids, each once, or `["*"]` alone. `Err` says
/// what is wrong (the field is `allowed_gpus`).
pub fn check_allowed_gpus(list: &[String]) -> Result<(), String> {
    if list.len() > MAX_ALLOWED_GPUS {
        return Err(format!("at most {MAX_ALLOWED_GPUS} entries, got {}", list.len()));
    }
    if list.iter().any(|g| g == ANY_GPU) {
        if list.len() > 1 {
            return Err(format!("{ANY_GPU:?} (any GPU) stands alone in the list"));
        }
        return Ok(());
    }
    for (i, id) in list.iter().enumerate() {
        if !valid_gpu_id(id) {
            return Err(format!(
                "{id:?} is not a GPU id (GPU-<uuid>, MIG-<uuid> or sim: 1 to {MAX_GPU_ID} characters of \
                 A-Z a-z 0-9 . _ - :), nor {ANY_GPU:?} for any GPU"
            ));
        }
        if list[..i].contains(id) {
            return Err(format!("{id:?} is listed twice"));
        }
    }
    Ok(())
}

/// Which GPUs a VM that the admin gave no access list may use
/// (`gpuvisord --gpu-access`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpuAccessMode {
    /// Any GPU (gpuvisor's behaviour before access lists).
    #[default]
    Open,
    /// None: every VM must be allowed its GPUs explicitly.
    Closed,
}

impl GpuAccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuAccessMode::Open => "open",
            GpuAccessMode::Closed => "closed",
        }
    }
}

impl std::str::FromStr for GpuAccessMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(GpuAccessMode::Open),
            "closed" => Ok(GpuAccessMode::Closed),
            _ => Err(format!("expected open or closed, got {s:?}")),
        }
    }
}

impl std::fmt::Display for GpuAccessMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a VM with access list `list` (`None`: the admin gave none) may
/// use the GPU `gpu` under `mode`. Ids match exactly: a MIG instance's UUID
/// allows that instance only, not its parent GPU or a sibling, and a GPU's
/// UUID does not allow its MIG instances.
pub fn gpu_allowed(list: Option<&[String]>, mode: GpuAccessMode, gpu: &str) -> bool {
    match list {
        None => mode == GpuAccessMode::Open,
        Some(l) => l.iter().any(|g| g == ANY_GPU || g == gpu),
    }
}

/// The OpenAPI schema of an access list: null (none set), `["*"]` (any
/// GPU), or distinct GPU ids.
fn allowed_gpus_schema() -> Schema {
    let any = ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).enum_values(Some([ANY_GPU])))
        .min_items(Some(1))
        .max_items(Some(1))
        .description(Some("Any GPU"));
    let ids = ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(GPU_ID_PATTERN))
                .examples([serde_json::json!("MIG-11111111-0000-0000-0000-000000000000")]),
        )
        .max_items(Some(MAX_ALLOWED_GPUS))
        .unique_items(true)
        .description(Some("These GPUs (UUIDs `GPU-...`), MIG instances (`MIG-...`) or `sim`; empty: none"));
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new().schema_type(Type::Null).description(Some("No list: gpuvisord's --gpu-access decides")),
        )
        .item(any)
        .item(ids)
        .description(Some(
            "The GPUs a VM may use. null: no list, so gpuvisord's --gpu-access decides (open: any GPU, closed: \
             none). [\"*\"]: any GPU. Otherwise exactly these ids: a MIG instance's UUID allows that instance \
             only, not its parent GPU or a sibling; a GPU's UUID does not allow its MIG instances.",
        ))
        .into()
}

/// A GPU as the admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuView {
    /// The GPU's UUID (`GPU-...`), or `sim` for the simulated GPU that
    /// sim-engine backends share.
    pub id: String,
    pub name: String,
    /// NVML index; absent for GPUs NVML did not list (the simulated one).
    pub index: Option<u32>,
    pub memory_total_bytes: u64,
    /// MIG mode as NVML reports it; absent where unknown.
    pub mig_enabled: Option<bool>,
    /// Default time slice for VMs on this GPU.
    pub slice_us: u64,
    /// Default cap on GPU operations a VM may have queued while it holds a grant.
    pub max_queued_ops: u32,
    /// The VM holding the grant now, if any.
    pub holder: Option<String>,
    /// Fraction of the last measurement window during which some VM held a
    /// grant and had work on this GPU (0 to 1).
    pub busy_fraction: f64,
    /// VMs registered on this GPU (connected or not).
    pub vms: u32,
    /// The VMs' memory quotas may add up to this many times
    /// `memory_capacity_bytes`; a VM that would pass it is refused.
    pub overcommit_ratio: f64,
    /// The admin's cap on the device memory the VMs share; null: the GPU's
    /// own memory less the driver's reserve.
    pub memory_limit_bytes: Option<u64>,
    /// Device memory the VMs share: `memory_limit_bytes`, else the GPU's
    /// memory less 1 GiB and 512 MiB per connected VM for the driver. Null
    /// where memory is not managed (the simulated GPU without a limit, a GPU
    /// of unknown size): every VM may then use its whole quota.
    pub memory_capacity_bytes: Option<u64>,
    /// Device memory of the connected VMs on the GPU, as their backends last
    /// reported it.
    pub resident_bytes: u64,
    /// Device memory of the connected VMs evicted to host RAM.
    pub evicted_bytes: u64,
    /// Host RAM holding evicted GPU memory, all GPUs of the host together
    /// (evictions under way included).
    pub swap_used_bytes: u64,
    /// Host RAM that evicted GPU memory may take, all GPUs together
    /// (gpuvisord --swap-limit-mib).
    pub swap_limit_bytes: u64,
    /// gpuvisord's swap pool, all GPUs together; null where it has none
    /// (`--swap-pool-mib` 0, the default).
    #[serde(default)]
    pub swap_pool: Option<SwapPoolView>,
}

/// gpuvisord's swap pool (`--swap-pool-mib`): pinned host memory made once
/// and lent to the backends for their swap-outs. Its chunks stay pinned
/// whether or not they hold evicted memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SwapPoolView {
    /// The most the pool holds (`--swap-pool-mib`, cut to the swap limit).
    pub limit_bytes: u64,
    /// Free to lease.
    pub free_bytes: u64,
    /// Leased to backends: holding evicted memory, or about to.
    pub leased_bytes: u64,
    /// Leased on connections that closed while their process lives: out of
    /// the pool until that process exits.
    pub held_bytes: u64,
}

/// The state of a VM's vGPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Holds a grant.
    Running,
    /// Has work queued and waits for a grant.
    Waiting,
    /// Has no work queued.
    Idle,
    /// Drained by the admin: gets no grants.
    Drained,
    /// Its backend is not connected (stopped, or between daemon restarts).
    Disconnected,
}

/// A VM as the admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmView {
    pub name: String,
    /// The GPU it runs on (`GpuView::id`).
    pub gpu: String,
    pub state: VmState,
    pub connected: bool,
    /// Backend process id, while connected.
    pub pid: Option<u32>,
    /// `cuda` or `sim`.
    pub engine: Option<String>,
    #[schema(value_type = QosClassSchema)]
    pub class: QosClass,
    pub weight: u32,
    pub priority: i32,
    /// Time slice in effect (the VM's own or the GPU's).
    pub slice_us: u64,
    /// The VM's own slice, if it overrides the GPU's.
    pub slice_us_override: Option<u64>,
    pub max_queued_ops: u32,
    pub drained: bool,
    /// Share of the GPU the policy entitles it to now, among the busy VMs (0 to 1).
    pub share_configured: f64,
    /// Share of the GPU's time it used over the last measurement window (0 to 1).
    pub share_used: f64,
    /// GPU time used since the backend started, in seconds.
    pub gpu_time_s: f64,
    /// Batches waiting in the backend's queue.
    pub queued: u32,
    /// GPU operations in flight.
    pub inflight_ops: u32,
    pub ops_total: u64,
    /// Request latency (arrival at the backend to completion on the GPU) over
    /// the last report interval.
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    /// Device memory the guest sees (its quota); 0 while disconnected.
    pub quota_bytes: u64,
    /// Device memory the guest has allocated, on the GPU or in host RAM.
    pub used_bytes: u64,
    /// Device memory it may hold on the GPU before it must ask for more; its
    /// quota where the GPU's memory is not overcommitted.
    pub limit_bytes: u64,
    /// Its device memory on the GPU.
    pub resident_bytes: u64,
    /// Its device memory evicted to host RAM, to come back before its next
    /// GPU work.
    pub evicted_bytes: u64,
    /// Times its memory was evicted to host RAM since its backend started.
    pub evictions: u64,
    /// Times its evicted memory was brought back onto the GPU.
    pub restores: u64,
    /// Time its evictions took in all, in milliseconds.
    pub evict_ms_total: f64,
    /// Time its restores took in all, in milliseconds.
    pub restore_ms_total: f64,
    /// Time its last restore took, in milliseconds; null before its first.
    pub last_restore_ms: Option<f64>,
    /// Bytes of its device memory copied to host RAM since it registered.
    pub swapped_out_bytes: u64,
    /// Bytes of its evicted memory copied back onto the GPU since it registered.
    pub swapped_in_bytes: u64,
    /// Time it had GPU work waiting for a grant since it registered, in seconds.
    pub grant_wait_s: f64,
    /// Grants it got since it registered.
    pub grants: u64,
    /// Grants taken back from it before their slice ended since it registered.
    pub preemptions: u64,
    /// Times a backend registered for it since gpuvisord started, reconnects included.
    pub registrations: u64,
    /// Of those, registrations of a backend that was already running (after a
    /// gpuvisord restart or a lost connection).
    pub reconnects: u64,
    /// Kernel launches, copies and the bytes they moved (host to device,
    /// device to host, device to device) since the backend started.
    pub launches: u64,
    pub copies_htod: u64,
    pub copies_dtoh: u64,
    pub copies_dtod: u64,
    pub bytes_htod: u64,
    pub bytes_dtoh: u64,
    pub bytes_dtod: u64,
    /// Errors the guest got since the backend started, by CUDA result name.
    pub api_errors: std::collections::BTreeMap<String, u64>,
    /// Of those, kernel faults (illegal address, illegal instruction, a
    /// trap, a failed or timed-out launch): each loses a context.
    pub faults: u64,
    /// The admin's GPU access list (see `PUT /v1/vms/{name}/access`).
    /// Both access fields default as a daemon older than them behaves (no
    /// lists, any GPU), so that this client reads its answers.
    #[serde(default)]
    #[schema(schema_with = allowed_gpus_schema)]
    pub allowed_gpus: Option<Vec<String>>,
    /// Whether the VM may use `gpu` now. False after the admin took the GPU
    /// out of its list while it was registered: its GPU work is held (state
    /// `drained`) until the list allows the GPU again, and its backend is
    /// refused at its next registration.
    #[serde(default = "allowed")]
    pub gpu_allowed: bool,
}

fn allowed() -> bool {
    true
}

/// A VM's GPU access, as `GET|PUT /v1/vms/{name}/access` answer it; the VM
/// need not have registered yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmAccess {
    /// The VM's name.
    pub vm: String,
    #[schema(schema_with = allowed_gpus_schema)]
    pub allowed_gpus: Option<Vec<String>>,
    /// gpuvisord's default for VMs without a list.
    pub mode: GpuAccessMode,
    /// The GPU the VM's backend registered on last; null if it never did
    /// since it was first stored.
    pub gpu: Option<String>,
    /// Whether the VM may use `gpu`; null without `gpu`.
    pub gpu_allowed: Option<bool>,
    /// Whether its backend is connected now.
    pub connected: bool,
}

/// `GET /v1/access`: gpuvisord's default and every VM it knows or holds a
/// list for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccessOverview {
    /// gpuvisord's default for VMs without a list (`--gpu-access`).
    pub mode: GpuAccessMode,
    /// By name.
    pub vms: Vec<VmAccess>,
}

/// The body of `PUT /v1/vms/{name}/access`: the VM's whole list, replacing
/// the one it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmAccessUpdate {
    /// Required; `null` removes the VM's list (gpuvisord's --gpu-access
    /// decides again).
    #[serde(deserialize_with = "Option::deserialize")]
    #[schema(schema_with = allowed_gpus_schema, required = true)]
    pub allowed_gpus: Option<Vec<String>>,
}

/// A change to a VM's settings. Absent fields stay as they are;
/// `slice_us: null` clears the VM's own slice (the GPU's applies).
///
/// A serialized patch leaves absent fields out, so that an absent
/// `slice_us` is never sent as `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmPatch {
    /// The VM's QoS class.
    #[serde(default, deserialize_with = "integral::non_null", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = QosClassSchema, required = false)]
    pub class: Option<QosClass>,
    /// The VM's fair share is its weight over the sum of the busy VMs' weights.
    #[serde(default, deserialize_with = "integral::some", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000, nullable = false)]
    pub weight: Option<u32>,
    /// Higher runs sooner (lower latency), but never beyond its share.
    #[serde(default, deserialize_with = "integral::some", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -20, maximum = 20, nullable = false)]
    pub priority: Option<i32>,
    /// The VM's own time slice in microseconds; `null` clears it (the GPU's applies).
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, nullable, minimum = 500, maximum = 10000000)]
    pub slice_us: Option<Option<u64>>,
}

/// A change to a GPU's scheduling defaults and memory settings. Absent
/// fields stay as they are; `memory_limit_bytes: null` clears the limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuPatch {
    /// Default time slice in microseconds for VMs without their own.
    #[serde(default, deserialize_with = "integral::some", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 500, maximum = 10000000, nullable = false)]
    pub slice_us: Option<u64>,
    /// Default cap on GPU operations a VM may have queued while it holds a
    /// grant; bounds how long taking the GPU back from a VM takes.
    #[serde(default, deserialize_with = "integral::some", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4096, nullable = false)]
    pub max_queued_ops: Option<u32>,
    /// The VMs' memory quotas may add up to this many times the GPU's
    /// memory capacity (1: no overcommit). Applies to VMs that register
    /// from now on.
    #[serde(default, deserialize_with = "integral::non_null", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100, nullable = false)]
    pub overcommit_ratio: Option<f64>,
    /// Device memory the GPU's VMs share, in bytes, instead of the GPU's own
    /// memory less the driver's reserve; `null` clears it. Lowering it
    /// evicts VMs' memory to host RAM until their limits fit.
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, nullable, minimum = 1048576, maximum = 1125899906842624_u64)]
    pub memory_limit_bytes: Option<Option<u64>>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, starting with the field's name where one is at fault.
    #[schema(example = "weight: must be between 1 and 10000, got 0")]
    pub error: String,
    /// The request field at fault, if any.
    #[schema(example = "weight", required = true)]
    pub field: Option<String>,
}

/// The answer to `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    #[schema(example = "ok")]
    pub status: String,
    /// The daemon's version.
    pub version: String,
}

/// How [`QosClass`] (from the protocol crate) appears in the OpenAPI document:
/// its names, taken from [`QosClass::ALL`] so the two cannot drift apart.
pub struct QosClassSchema;

impl PartialSchema for QosClassSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(QosClass::ALL.map(QosClass::as_str)))
            .description(Some(
                "A VM's QoS class. `guaranteed`: a reserved share of GPU time that is never lent away \
                 while the VM is busy. `burstable`: a share of GPU time plus whatever capacity other \
                 VMs leave idle. `best-effort`: only capacity that no guaranteed or burstable VM wants.",
            ))
            .examples([serde_json::json!("burstable")])
            .into()
    }
}

impl ToSchema for QosClassSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("QosClass")
    }
}

/// Why an admin request failed. The HTTP layer maps each variant to one status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    /// 404.
    #[error("no {kind} named {name:?}")]
    NotFound { kind: &'static str, name: String },
    /// 400/422: a field's value is out of range or invalid.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    /// 500: the daemon could not do it (for example, the database write failed).
    #[error("{0}")]
    Internal(String),
    /// 503: the server does not offer this (for example, history is off).
    #[error("{0}")]
    Unavailable(String),
}

/// What the daemon offers the admin API. Changes take effect at once: a
/// running VM's backend gets its new settings and the scheduler applies them
/// within one slice.
pub trait Admin: Send + Sync + 'static {
    fn gpus(&self) -> Vec<GpuView>;
    fn gpu(&self, id: &str) -> Result<GpuView, AdminError>;
    fn update_gpu(&self, id: &str, patch: GpuPatch) -> Result<GpuView, AdminError>;
    fn vms(&self) -> Vec<VmView>;
    fn vm(&self, name: &str) -> Result<VmView, AdminError>;
    fn update_vm(&self, name: &str, patch: VmPatch) -> Result<VmView, AdminError>;
    /// Drain (no more grants; queued work waits) or resume a VM.
    fn set_drained(&self, name: &str, drained: bool) -> Result<VmView, AdminError>;
    /// What `GET /metrics` shows. The default has the GPUs and VMs and no
    /// NVML readings; the daemon takes everything at once and reads NVML.
    fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot { gpus: self.gpus(), vms: self.vms(), ..Default::default() }
    }
    /// One metric's stored history. The HTTP layer has checked the query and
    /// filled in its range. The default keeps none.
    fn history(&self, q: &HistoryQuery) -> Result<HistoryResponse, AdminError> {
        let _ = q;
        Err(AdminError::Unavailable("this server keeps no history".to_owned()))
    }
    /// The metrics the history holds. The default keeps none.
    fn history_metrics(&self) -> Result<HistoryMetrics, AdminError> {
        Err(AdminError::Unavailable("this server keeps no history".to_owned()))
    }
    /// The alert rules and their alerts. The default evaluates none.
    fn alerts(&self) -> Result<AlertsResponse, AdminError> {
        Ok(AlertsResponse::default())
    }
    /// gpuvisord's access mode and every VM's GPU access list. The default
    /// keeps none.
    fn access(&self) -> Result<AccessOverview, AdminError> {
        Err(AdminError::Unavailable("this server keeps no GPU access lists".to_owned()))
    }
    /// One VM's GPU access (`name` checked by the HTTP layer); the VM need
    /// not have registered.
    fn vm_access(&self, name: &str) -> Result<VmAccess, AdminError> {
        let _ = name;
        Err(AdminError::Unavailable("this server keeps no GPU access lists".to_owned()))
    }
    /// Replaces one VM's GPU access list (`None`: removes it). The HTTP
    /// layer has checked the name and the list. A registered VM whose GPU
    /// the new list leaves out gets no more grants at once.
    fn set_vm_access(&self, name: &str, allowed_gpus: Option<Vec<String>>) -> Result<VmAccess, AdminError> {
        let _ = (name, allowed_gpus);
        Err(AdminError::Unavailable("this server keeps no GPU access lists".to_owned()))
    }
}

/// `Option<Option<T>>` that tells an absent field (None) from `null` (Some(None)).
mod double_option {
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(inner) => inner.serialize(s),
        }
    }

    /// Whole numbers only (see `integral`): this is used for `slice_us`.
    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Ok(Some(super::integral::opt(d)?))
    }
}

/// JSON numbers with no fractional part, as JSON Schema's `integer` (the
/// OpenAPI document's type for these fields) allows: `5.0` is 5, `5.5` is an
/// error naming the value.
mod integral {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    /// A nullable field: `null` is `None`.
    pub fn opt<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            Some(n) => whole(n).map(Some),
            None => Ok(None),
        }
    }

    /// An optional field that may be absent but not `null`.
    pub fn some<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
        whole(serde_json::Number::deserialize(d)?).map(Some)
    }

    /// Any optional field that may be absent but not `null`.
    pub fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
        T::deserialize(d).map(Some)
    }

    fn whole<T: TryFrom<i128>, E: Error>(n: serde_json::Number) -> Result<T, E> {
        let whole = if let Some(i) = n.as_i64() {
            Some(i as i128)
        } else if let Some(u) = n.as_u64() {
            Some(u as i128)
        } else {
            n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e30).map(|f| f as i128)
        };
        let Some(v) = whole else {
            return Err(E::custom(format!("expected a whole number, got {n}")));
        };
        T::try_from(v).map_err(|_| E::custom(format!("{n} is out of range")))
    }
}
