//! `GET /metrics`: the daemon's figures in Prometheus' text exposition
//! format (0.0.4). Per-VM and per-GPU series are named `gpuvisor_*`; NVML's
//! readings keep dcgm-exporter's names and labels (`DCGM_FI_DEV_*`), so
//! dashboards built for dcgm-exporter work on them unchanged.
//! docs/metrics.md describes every series.

use crate::model::{GpuView, VmState, VmView};
use std::fmt::Write;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One NVML GPU's readings at scrape time. A reading NVML could not give is
/// `None`, and its series is left out rather than reported as 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReadings {
    /// NVML index: dcgm-exporter's `gpu` label.
    pub index: u32,
    pub uuid: String,
    pub model_name: String,
    pub gpu_util_pct: Option<u32>,
    pub mem_copy_util_pct: Option<u32>,
    pub power_mw: Option<u32>,
    pub temperature_c: Option<u32>,
    pub fb_used_bytes: Option<u64>,
    pub fb_free_bytes: Option<u64>,
    /// Energy since the driver loaded, in millijoules.
    pub energy_mj: Option<u64>,
    /// XID errors NVML reported for the GPU since gpuvisord started, by XID.
    /// `None` where gpuvisord cannot watch the GPU's events.
    pub xid_counts: Option<std::collections::BTreeMap<u64, u64>>,
    /// The last XID NVML reported (0 before the first).
    pub xid_last: Option<u64>,
    /// NVML's per-process utilisation over its last 2 s, by process id: (SM,
    /// memory bandwidth), each 0 to 1. `None` where NVML gives no samples.
    pub process_util: Option<std::collections::BTreeMap<u32, (f64, f64)>>,
}

/// Everything one scrape shows, taken at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// dcgm-exporter's `Hostname` label; empty leaves it out.
    pub hostname: String,
    pub gpus: Vec<GpuView>,
    pub vms: Vec<VmView>,
    pub readings: Vec<GpuReadings>,
    /// Registrations gpuvisord refused since it started, by reason
    /// (`protocol::control::RefusalCode`); the daemon lists every reason,
    /// 0 included.
    pub registrations_refused: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    /// As the `# TYPE` line writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }

    /// The kind a `# TYPE` line names.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "counter" => Some(Kind::Counter),
            "gauge" => Some(Kind::Gauge),
            "summary" => Some(Kind::Summary),
            _ => None,
        }
    }
}

/// A sample's value: integers are written exactly (bytes pass 2^53).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Signed(i64),
    Float(f64),
}

impl Value {
    /// As a float, as Prometheus reads every sample (integers past 2^53
    /// round).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Signed(v) => v as f64,
            Value::Float(v) => v,
        }
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Signed(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Signed(v) => write!(f, "{v}"),
            // Go's ParseFloat, which Prometheus uses, spells these so.
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

pub type Labels = Vec<(&'static str, String)>;

/// One metric: its HELP and TYPE lines and its samples, written together as
/// the format requires.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family { name, kind, help, samples: Vec::new() }
    }

    pub fn sample(&mut self, labels: Labels, value: impl Into<Value>) {
        self.samples.push((labels, value.into()));
    }

    /// Its samples, in the order a scrape writes them (the daemon's history
    /// and alerts read the same figures).
    pub fn samples(&self) -> &[(Labels, Value)] {
        &self.samples
    }

    /// Writes the family; one with no samples keeps its HELP and TYPE, so
    /// that its name is known before the first VM registers.
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The text of a scrape.
pub fn render(families: &[Family]) -> String {
    let mut out = String::with_capacity(families.len() * 256);
    for f in families {
        f.render(&mut out);
    }
    out
}

/// Every metric name `GET /metrics` exports (the dashboard's queries may use
/// only these).
pub fn metric_names() -> Vec<&'static str> {
    families(&MetricsSnapshot::default()).iter().map(|f| f.name).collect()
}

fn vm_labels(v: &VmView) -> Labels {
    vec![("vm", v.name.clone()), ("gpu", v.gpu.clone()), ("class", v.class.as_str().to_owned())]
}

fn with(mut labels: Labels, key: &'static str, value: &str) -> Labels {
    labels.push((key, value.to_owned()));
    labels
}

/// A family with one sample per VM.
fn per_vm<V: Into<Value>>(
    vms: &[VmView],
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: impl Fn(&VmView) -> V,
) -> Family {
    let mut f = Family::new(name, kind, help);
    for v in vms {
        f.sample(vm_labels(v), value(v));
    }
    f
}

/// A family with one sample per GPU that `value` has a figure for.
fn per_gpu<V: Into<Value>>(
    gpus: &[GpuView],
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: impl Fn(&GpuView) -> Option<V>,
) -> Family {
    let mut f = Family::new(name, kind, help);
    for g in gpus {
        if let Some(x) = value(g) {
            f.sample(vec![("gpu", g.id.clone()), ("modelName", g.name.clone())], x);
        }
    }
    f
}

/// A dcgm-exporter family: one sample per NVML GPU that has the reading.
fn dcgm<V: Into<Value>>(
    m: &MetricsSnapshot,
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: impl Fn(&GpuReadings) -> Option<V>,
) -> Family {
    let mut f = Family::new(name, kind, help);
    for r in &m.readings {
        if let Some(x) = value(r) {
            let mut labels = vec![
                ("gpu", r.index.to_string()),
                ("UUID", r.uuid.clone()),
                ("device", format!("nvidia{}", r.index)),
                ("modelName", r.model_name.clone()),
            ];
            if !m.hostname.is_empty() {
                labels.push(("Hostname", m.hostname.clone()));
            }
            f.sample(labels, x);
        }
    }
    f
}

/// The families of one scrape, in a fixed order.
pub fn families(m: &MetricsSnapshot) -> Vec<Family> {
    use Kind::{Counter, Gauge, Summary};
    let vms = &m.vms;
    let gpus = &m.gpus;
    let mut build = Family::new("gpuvisor_build_info", Gauge, "Always 1; the version label is gpuvisord's version.");
    build.sample(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1u64);

    let mut latency = Family::new(
        "gpuvisor_vm_request_latency_seconds",
        Summary,
        "Request latency from arrival at the backend to completion on the GPU, over the backend's last \
         report interval (about 1 s). Quantiles only: no _sum or _count.",
    );
    let mut registrations = Family::new(
        "gpuvisor_vm_backend_registrations_total",
        Counter,
        "Times a backend registered for the VM since gpuvisord started: kind=\"start\" for a fresh backend \
         (a first start or a restart), kind=\"reconnect\" for one that was already running (after a \
         gpuvisord restart or a lost connection).",
    );
    let mut swapped = Family::new(
        "gpuvisor_vm_memory_swapped_bytes_total",
        Counter,
        "Bytes of the VM's device memory copied to host RAM (direction=\"to_host\") and back onto the GPU \
         (direction=\"to_gpu\") since it registered, as its backend reported them.",
    );
    let mut copies = Family::new(
        "gpuvisor_vm_copies_total",
        Counter,
        "Copies the guest asked for since its backend started, by direction (htod: host to device, dtoh: \
         device to host, dtod: device to device).",
    );
    let mut copy_bytes = Family::new(
        "gpuvisor_vm_copy_bytes_total",
        Counter,
        "Bytes those copies moved since the VM's backend started, by direction (htod, dtoh, dtod).",
    );
    let mut api_errors = Family::new(
        "gpuvisor_vm_api_errors_total",
        Counter,
        "Errors the guest got for its CUDA calls since its backend started, by CUDA result name (code).",
    );
    for v in vms {
        let labels = vm_labels(v);
        for (dir, n, bytes) in [
            ("htod", v.copies_htod, v.bytes_htod),
            ("dtoh", v.copies_dtoh, v.bytes_dtoh),
            ("dtod", v.copies_dtod, v.bytes_dtod),
        ] {
            copies.sample(with(labels.clone(), "direction", dir), n);
            copy_bytes.sample(with(labels.clone(), "direction", dir), bytes);
        }
        for (code, n) in &v.api_errors {
            api_errors.sample(with(labels.clone(), "code", code), *n);
        }
        latency.sample(with(labels.clone(), "quantile", "0.5"), v.latency_p50_us / 1e6);
        latency.sample(with(labels.clone(), "quantile", "0.99"), v.latency_p99_us / 1e6);
        registrations.sample(with(labels.clone(), "kind", "start"), v.registrations.saturating_sub(v.reconnects));
        registrations.sample(with(labels.clone(), "kind", "reconnect"), v.reconnects);
        swapped.sample(with(labels.clone(), "direction", "to_host"), v.swapped_out_bytes);
        swapped.sample(with(labels, "direction", "to_gpu"), v.swapped_in_bytes);
    }

    let mut swap_used = Family::new(
        "gpuvisor_host_swap_used_bytes",
        Gauge,
        "Host RAM holding evicted GPU memory, all GPUs together (evictions under way included).",
    );
    let mut swap_limit = Family::new(
        "gpuvisor_host_swap_limit_bytes",
        Gauge,
        "Host RAM that evicted GPU memory may take, all GPUs together (gpuvisord --swap-limit-mib).",
    );
    let mut pool_bytes = Family::new(
        "gpuvisor_host_swap_pool_bytes",
        Gauge,
        "Pinned host RAM in gpuvisord's swap pool (--swap-pool-mib), all GPUs together, by state: free, leased \
         (to backends, for their evicted memory), held (leased on connections that closed while their process \
         lives). Absent without a pool.",
    );
    let mut pool_limit = Family::new(
        "gpuvisor_host_swap_pool_limit_bytes",
        Gauge,
        "The most pinned host RAM gpuvisord's swap pool holds (--swap-pool-mib, cut to the swap limit). Absent \
         without a pool.",
    );
    // Host-wide, and without a `vm` label: a refused backend's VM name is
    // whatever it claimed, and labels must not grow with what backends send.
    let mut refused = Family::new(
        "gpuvisor_registrations_refused_total",
        Counter,
        "Backend registrations gpuvisord refused since it started, by reason: gpu_not_allowed (the VM may \
         not use the GPU it named), overcommit (its memory quota would pass the GPU's overcommit ratio), \
         invalid (a malformed Hello), already_connected, unavailable (stopping).",
    );
    for (reason, n) in &m.registrations_refused {
        refused.sample(vec![("reason", reason.clone())], *n);
    }
    // The figures are host-wide: every GPU's view repeats them.
    if let Some(g) = gpus.first() {
        swap_used.sample(Vec::new(), g.swap_used_bytes);
        swap_limit.sample(Vec::new(), g.swap_limit_bytes);
        if let Some(p) = g.swap_pool {
            for (state, n) in [("free", p.free_bytes), ("leased", p.leased_bytes), ("held", p.held_bytes)] {
                pool_bytes.sample(vec![("state", state.to_owned())], n);
            }
            pool_limit.sample(Vec::new(), p.limit_bytes);
        }
    }

    vec![
        build,
        // Scheduling.
        per_vm(vms, "gpuvisor_vm_connected", Gauge, "1 while the VM's backend is connected, else 0.", |v| v.connected),
        per_vm(vms, "gpuvisor_vm_drained", Gauge, "1 while the admin has drained the VM (it gets no grants).", |v| {
            v.drained
        }),
        per_vm(
            vms,
            "gpuvisor_vm_busy",
            Gauge,
            "1 while the VM holds the GPU or has work waiting for it (state running or waiting), else 0.",
            |v| matches!(v.state, VmState::Running | VmState::Waiting),
        ),
        per_vm(vms, "gpuvisor_vm_weight", Gauge, "The VM's fair-share weight (1 to 10000).", |v| v.weight),
        per_vm(vms, "gpuvisor_vm_priority", Gauge, "The VM's priority (-20 to 20; higher runs sooner).", |v| {
            v.priority
        }),
        per_vm(
            vms,
            "gpuvisor_vm_gpu_seconds_total",
            Counter,
            "GPU time the VM used since its backend started, in seconds (measured with CUDA events).",
            |v| v.gpu_time_s,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_gpu_share",
            Gauge,
            "Share of the GPU's time the VM used over the scheduler's last 2 s window (0 to 1).",
            |v| v.share_used,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_gpu_share_configured",
            Gauge,
            "Share of the GPU the policy entitles the VM to now, among the busy VMs (0 to 1).",
            |v| v.share_configured,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_grant_wait_seconds_total",
            Counter,
            "Time the VM had GPU work waiting for a grant since it registered, in seconds.",
            |v| v.grant_wait_s,
        ),
        per_vm(vms, "gpuvisor_vm_grants_total", Counter, "Grants the VM got since it registered.", |v| v.grants),
        per_vm(
            vms,
            "gpuvisor_vm_preemptions_total",
            Counter,
            "Grants taken back from the VM before its slice ended since it registered.",
            |v| v.preemptions,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_queued_batches",
            Gauge,
            "Batches waiting in the backend's virtqueue, as last reported.",
            |v| v.queued,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_inflight_ops",
            Gauge,
            "GPU operations submitted and not yet complete, as last reported.",
            |v| v.inflight_ops,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_gpu_ops_total",
            Counter,
            "GPU operations (launches, copies, memsets) the backend submitted since it started.",
            |v| v.ops_total,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_launches_total",
            Counter,
            "Kernel launches the guest submitted since its backend started.",
            |v| v.launches,
        ),
        copies,
        copy_bytes,
        api_errors,
        per_vm(
            vms,
            "gpuvisor_vm_faults_total",
            Counter,
            "Kernel faults the guest got since its backend started (illegal address or instruction, a trap, \
             a failed or timed-out launch); each loses the faulting context.",
            |v| v.faults,
        ),
        latency,
        registrations,
        refused,
        per_vm(
            vms,
            "gpuvisor_vm_gpu_allowed",
            Gauge,
            "1 while the VM may use its GPU under its access list and gpuvisord's --gpu-access, else 0 (its \
             GPU work is then held and its next registration refused).",
            |v| v.gpu_allowed,
        ),
        // Memory.
        per_vm(
            vms,
            "gpuvisor_vm_memory_quota_bytes",
            Gauge,
            "Device memory the guest sees (its quota); 0 while disconnected.",
            |v| v.quota_bytes,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_memory_used_bytes",
            Gauge,
            "Device memory the guest has allocated, on the GPU or in host RAM.",
            |v| v.used_bytes,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_memory_limit_bytes",
            Gauge,
            "Device memory the VM may hold on the GPU before it must ask gpuvisord for more.",
            |v| v.limit_bytes,
        ),
        per_vm(vms, "gpuvisor_vm_memory_resident_bytes", Gauge, "The VM's device memory on the GPU.", |v| {
            v.resident_bytes
        }),
        per_vm(
            vms,
            "gpuvisor_vm_memory_evicted_bytes",
            Gauge,
            "The VM's device memory evicted to host RAM, to come back before its next GPU work.",
            |v| v.evicted_bytes,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_memory_evictions_total",
            Counter,
            "Times the VM's memory was evicted to host RAM since its backend started.",
            |v| v.evictions,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_memory_restores_total",
            Counter,
            "Times the VM's evicted memory was brought back onto the GPU since its backend started.",
            |v| v.restores,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_memory_evict_seconds_total",
            Counter,
            "Time the VM's evictions took in all, in seconds.",
            |v| v.evict_ms_total / 1e3,
        ),
        per_vm(
            vms,
            "gpuvisor_vm_memory_restore_seconds_total",
            Counter,
            "Time the VM's restores took in all, in seconds.",
            |v| v.restore_ms_total / 1e3,
        ),
        swapped,
        // NVML's view of each VM's backend process.
        nvml_process_util(
            m,
            "gpuvisor_vm_sm_utilization_ratio",
            "Fraction of the last 2 s during which a kernel of the VM's backend process ran on the GPU, from \
             NVML's per-process utilisation samples (0 to 1); absent where NVML gives none.",
            |u| u.0,
        ),
        nvml_process_util(
            m,
            "gpuvisor_vm_memory_bandwidth_utilization_ratio",
            "Fraction of the last 2 s during which the VM's backend process read or wrote device memory, from \
             NVML's per-process utilisation samples (0 to 1); absent where NVML gives none.",
            |u| u.1,
        ),
        // gpuvisord's view of each GPU.
        per_gpu(gpus, "gpuvisor_gpu_vms", Gauge, "VMs registered on the GPU, connected or not.", |g| Some(g.vms)),
        per_gpu(
            gpus,
            "gpuvisor_gpu_busy_ratio",
            Gauge,
            "Fraction of the scheduler's last 2 s window during which some VM held a grant and had work on \
             the GPU (0 to 1).",
            |g| Some(g.busy_fraction),
        ),
        per_gpu(gpus, "gpuvisor_gpu_memory_total_bytes", Gauge, "The GPU's memory, as NVML reports it.", |g| {
            (g.memory_total_bytes > 0).then_some(g.memory_total_bytes)
        }),
        per_gpu(
            gpus,
            "gpuvisor_gpu_memory_capacity_bytes",
            Gauge,
            "Device memory the GPU's VMs share (the admin's limit, else the GPU's memory less the driver's \
             reserve); absent where memory is not managed.",
            |g| g.memory_capacity_bytes,
        ),
        per_gpu(
            gpus,
            "gpuvisor_gpu_memory_resident_bytes",
            Gauge,
            "Device memory of the connected VMs on the GPU.",
            |g| Some(g.resident_bytes),
        ),
        per_gpu(
            gpus,
            "gpuvisor_gpu_memory_evicted_bytes",
            Gauge,
            "Device memory of the GPU's connected VMs evicted to host RAM.",
            |g| Some(g.evicted_bytes),
        ),
        per_gpu(
            gpus,
            "gpuvisor_gpu_overcommit_ratio",
            Gauge,
            "The VMs' memory quotas may add up to this many times the GPU's memory capacity.",
            |g| Some(g.overcommit_ratio),
        ),
        swap_used,
        swap_limit,
        pool_bytes,
        pool_limit,
        // NVML's readings, as dcgm-exporter names them.
        dcgm(m, "DCGM_FI_DEV_GPU_UTIL", Gauge, "GPU utilization (in %).", |r| r.gpu_util_pct),
        dcgm(m, "DCGM_FI_DEV_MEM_COPY_UTIL", Gauge, "Memory utilization (in %).", |r| r.mem_copy_util_pct),
        dcgm(m, "DCGM_FI_DEV_POWER_USAGE", Gauge, "Power draw (in W).", |r| r.power_mw.map(|mw| f64::from(mw) / 1e3)),
        dcgm(m, "DCGM_FI_DEV_GPU_TEMP", Gauge, "GPU temperature (in C).", |r| r.temperature_c),
        dcgm(m, "DCGM_FI_DEV_FB_USED", Gauge, "Framebuffer memory used (in MiB).", |r| {
            r.fb_used_bytes.map(|b| b >> 20)
        }),
        dcgm(m, "DCGM_FI_DEV_FB_FREE", Gauge, "Framebuffer memory free (in MiB).", |r| {
            r.fb_free_bytes.map(|b| b >> 20)
        }),
        dcgm(m, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", Counter, "Total energy consumption since boot (in mJ).", |r| {
            r.energy_mj
        }),
        dcgm(m, "DCGM_FI_DEV_XID_ERRORS", Gauge, "Value of the last XID error encountered.", |r| r.xid_last),
        xid_errors(m),
    ]
}

/// A per-VM family from NVML's per-process samples: a connected VM whose
/// GPU NVML samples gets its backend's figure, 0 when its process had none.
fn nvml_process_util(
    m: &MetricsSnapshot,
    name: &'static str,
    help: &'static str,
    value: impl Fn((f64, f64)) -> f64,
) -> Family {
    let mut f = Family::new(name, Kind::Gauge, help);
    for v in &m.vms {
        let Some(pid) = v.pid else { continue };
        let Some(procs) = m.readings.iter().find(|r| r.uuid == v.gpu).and_then(|r| r.process_util.as_ref()) else {
            continue;
        };
        let u = procs.get(&pid).copied().unwrap_or((0.0, 0.0));
        f.sample(vm_labels(v), value(u));
    }
    f
}

/// `gpuvisor_gpu_xid_errors_total`: one series per GPU and XID seen, plus
/// `xid="none"` at 0 for a watched GPU with none yet, so that `increase()`
/// sees the first error as a change.
fn xid_errors(m: &MetricsSnapshot) -> Family {
    let mut f = Family::new(
        "gpuvisor_gpu_xid_errors_total",
        Kind::Counter,
        "XID errors NVML reported for the GPU since gpuvisord started, by XID (xid=\"none\" stays 0).",
    );
    for r in &m.readings {
        let Some(counts) = &r.xid_counts else { continue };
        let labels = vec![("gpu", r.uuid.clone()), ("modelName", r.model_name.clone())];
        f.sample(with(labels.clone(), "xid", "none"), 0u64);
        for (xid, n) in counts {
            f.sample(with(labels.clone(), "xid", &xid.to_string()), *n);
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut f = Family::new("x_total", Kind::Counter, "a \\ b\nc");
        f.sample(vec![("vm", "a\"b\\c\nd".to_owned()), ("gpu", "sim".to_owned())], 3u64);
        let text = render(&[f]);
        assert_eq!(
            text,
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{vm=\"a\\\"b\\\\c\\nd\",gpu=\"sim\"} 3\n"
        );
    }

    #[test]
    fn values_are_written_as_prometheus_parses_them() {
        let text = |v: Value| v.to_string();
        assert_eq!(text(Value::Int(u64::MAX)), "18446744073709551615");
        assert_eq!(text(Value::Signed(-20)), "-20");
        assert_eq!(text(Value::Float(0.25)), "0.25");
        assert_eq!(text(Value::Float(f64::INFINITY)), "+Inf");
        assert_eq!(text(Value::Float(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(text(Value::Float(f64::NAN)), "NaN");
        assert_eq!(text(Value::Float(1e-7)).parse::<f64>().unwrap(), 1e-7);
    }

    #[test]
    fn names_are_unique_and_valid() {
        let names = metric_names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a metric name appears twice");
        for n in names {
            assert!(
                n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !n.starts_with(|c: char| c.is_ascii_digit()),
                "{n}"
            );
        }
    }
}
