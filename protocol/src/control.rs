//! The control channel between a `gpuvisor-backend` and `gpuvisord`: one JSON
//! object per line over a Unix stream socket. The backend registers its VM,
//! asks for grants when it has GPU work queued and gives them back with the
//! GPU time it measured; the daemon answers with the VM's settings, grants,
//! revocations and live setting changes.
//!
//! Backends are as untrusted as the guests behind them, so the daemon reads
//! at most [`MAX_LINE`] bytes per message and rejects unknown fields.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};

/// Version of this channel; both sides send it in their first message.
pub const CONTROL_VERSION: u32 = 1;

/// Longest message either side accepts, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Where `gpuvisord` listens for backends by default.
pub const DEFAULT_BACKEND_SOCKET: &str = "/run/gpuvisor/gpuvisord.sock";

/// A VM's QoS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QosClass {
    /// A reserved share of GPU time that is never lent away while the VM is busy.
    Guaranteed,
    /// A share of GPU time, plus whatever capacity other VMs leave idle.
    Burstable,
    /// Only capacity that no guaranteed or burstable VM wants.
    BestEffort,
}

impl QosClass {
    pub const ALL: [QosClass; 3] = [QosClass::Guaranteed, QosClass::Burstable, QosClass::BestEffort];

    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "guaranteed",
            QosClass::Burstable => "burstable",
            QosClass::BestEffort => "best-effort",
        }
    }
}

impl std::str::FromStr for QosClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        QosClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown QoS class {s:?} (expected guaranteed, burstable or best-effort)"))
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Weight limits: a VM's fair share is its weight over the sum of the busy
/// VMs' weights.
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 10_000;
/// Priority limits: higher runs sooner (latency), but never beyond its share.
pub const MIN_PRIORITY: i32 = -20;
pub const MAX_PRIORITY: i32 = 20;
/// Time slice limits, in microseconds.
pub const MIN_SLICE_US: u64 = 500;
pub const MAX_SLICE_US: u64 = 10_000_000;
/// Limits on the GPU operations a backend may have queued on the GPU while
/// it holds a grant.
pub const MIN_QUEUED_OPS: u32 = 1;
pub const MAX_QUEUED_OPS: u32 = 4096;

/// What a backend asks for when it registers (from its command line or VM
/// spec). Absent fields take the daemon's stored or default values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<QosClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_us: Option<u64>,
}

/// The settings a backend runs under, decided by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    pub class: QosClass,
    pub weight: u32,
    pub priority: i32,
    /// Length of this VM's grants.
    pub slice_us: u64,
    /// GPU operations the backend may have submitted and not yet seen
    /// complete while it holds a grant; bounds how long a revocation takes.
    pub max_queued_ops: u32,
    /// A drained VM gets no grants; its guest's work waits (no error).
    pub drained: bool,
}

/// Backend to daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendMsg {
    /// First message on a connection.
    Hello {
        version: u32,
        /// The VM's name, unique per host.
        vm: String,
        pid: u32,
        /// `cuda` or `sim`.
        engine: String,
        /// The device the backend runs on: the GPU's UUID (`GPU-...`) for
        /// `cuda`, `sim` for the simulator. On a MIG instance, the
        /// instance's UUID in the same `GPU-` form (CUDA's); gpuvisord
        /// knows it as `MIG-...`, as NVML does. Checked against the VM's
        /// GPU access list at every registration.
        gpu: String,
        quota_bytes: u64,
        requested: QosRequest,
        /// True when this backend was registered before and lost the daemon
        /// (a daemon restart): the daemon keeps the stored settings.
        reconnect: bool,
        /// GPU time this backend has used since it started, in ns.
        gpu_ns_total: u64,
        /// Where the VM's device memory stands, so that a restarted daemon
        /// takes over the memory broker's books.
        #[serde(default)]
        memory: MemoryState,
    },
    /// The backend has GPU work queued and holds no grant.
    Demand,
    /// The backend gives back grant `grant`. `gpu_ns` is the GPU time its
    /// work took during the grant, measured with events; `more` says whether
    /// it still has work queued (and so wants another grant).
    Release { grant: u64, gpu_ns: u64, ops: u64, more: bool },
    /// GPU time of work that completed after its grant was released.
    Charge { gpu_ns: u64 },
    /// Periodic figures for the admin API.
    Stats(BackendStats),
    /// The backend needs to hold `bytes` of device memory resident in all
    /// (an allocation, or bringing evicted memory back), more than its
    /// current limit. Answered by `MemLimit` or `MemDenied`.
    MemNeed { bytes: u64 },
    /// Answer to `Evict`: the backend now holds `state.resident_bytes`, at
    /// most what was asked, and that is its new limit. Where it kept more
    /// than asked, `least_move_bytes` is its smallest allocation that could
    /// still move: an eviction allowed to move less than that moves nothing
    /// (allocations move whole). 0 otherwise.
    Evicted {
        state: MemoryState,
        moved_bytes: u64,
        ns: u64,
        #[serde(default)]
        least_move_bytes: u64,
    },
    /// The backend brought its evicted memory back onto the GPU (within a
    /// limit it was given).
    Restored { state: MemoryState, moved_bytes: u64, ns: u64 },
}

/// A VM's device memory as its backend counts it: allocations the guest made
/// (rounded to the device's allocation granularity), on the GPU or swapped
/// out to host RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryState {
    /// Bytes on the GPU.
    pub resident_bytes: u64,
    /// Bytes held in host RAM for the VM while it is evicted.
    pub evicted_bytes: u64,
    /// The resident limit the daemon last gave (0: none, as when the backend
    /// has never had a daemon).
    pub limit_bytes: u64,
}

/// A backend's counters, sent about once a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendStats {
    /// Batches waiting in the virtqueue behind the one being served (0 or 1
    /// where unknown).
    pub queued: u32,
    /// GPU operations submitted and not yet complete.
    pub inflight_ops: u32,
    pub ops_total: u64,
    pub gpu_ns_total: u64,
    /// Time spent waiting for grants, in ns.
    pub wait_ns_total: u64,
    pub used_bytes: u64,
    pub clients: u32,
    /// Request latency from arrival at the backend to completion on the GPU,
    /// over the last interval: count, p50 and p99 in ns.
    pub requests: u64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    #[serde(default)]
    pub memory: MemoryState,
    /// Evictions and restores since the backend started, and their time.
    #[serde(default)]
    pub evictions: u64,
    #[serde(default)]
    pub restores: u64,
    #[serde(default)]
    pub evict_ns_total: u64,
    #[serde(default)]
    pub restore_ns_total: u64,
    /// What the guest asked of the GPU since the backend started.
    #[serde(default)]
    pub calls: CallCounts,
}

/// A backend's count of the guest's GPU calls, by kind, and of the errors
/// it answered them with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallCounts {
    pub launches: u64,
    /// Copies and the bytes they moved, host to device, device to host,
    /// device to device.
    pub copies_htod: u64,
    pub copies_dtoh: u64,
    pub copies_dtod: u64,
    pub bytes_htod: u64,
    pub bytes_dtoh: u64,
    pub bytes_dtod: u64,
    /// Errors the guest got, by CUDA result name (a few dozen names at most).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Those of the errors that mean a kernel faulted (illegal address,
    /// illegal instruction, misaligned address, a trap or assert, a launch
    /// that failed or timed out): the context is lost.
    pub faults: u64,
}

/// Why gpuvisord refused a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The Hello is malformed: a version, VM name, engine, GPU id or setting
    /// the daemon does not accept.
    Invalid,
    /// A backend for the VM is already connected.
    AlreadyConnected,
    /// The VM may not use the GPU (or MIG instance) it named: the admin's
    /// access list does not hold it, or the VM has none and gpuvisord runs
    /// with `--gpu-access closed`. The backend holds its guest's GPU work
    /// until a registration succeeds.
    GpuNotAllowed,
    /// The VM's memory quota would pass the GPU's overcommit ratio.
    Overcommit,
    /// The daemon cannot take VMs now (it is stopping).
    Unavailable,
    /// A code this side does not know (a newer daemon's).
    #[serde(other)]
    Other,
}

impl RefusalCode {
    /// Every code a daemon sends, in a fixed order.
    pub const ALL: [RefusalCode; 5] = [
        RefusalCode::Invalid,
        RefusalCode::AlreadyConnected,
        RefusalCode::GpuNotAllowed,
        RefusalCode::Overcommit,
        RefusalCode::Unavailable,
    ];

    /// As the wire and the metrics' `reason` label write it.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Invalid => "invalid",
            RefusalCode::AlreadyConnected => "already_connected",
            RefusalCode::GpuNotAllowed => "gpu_not_allowed",
            RefusalCode::Overcommit => "overcommit",
            RefusalCode::Unavailable => "unavailable",
            RefusalCode::Other => "other",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Daemon to backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DaemonMsg {
    /// Answer to `Hello`. `mem_limit_bytes` is how much device memory the
    /// VM may hold resident before it asks for more (`MemNeed`); absent, the
    /// VM's whole quota.
    Welcome {
        version: u32,
        settings: VmSettings,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mem_limit_bytes: Option<u64>,
    },
    /// The registration was refused; the daemon closes the connection.
    /// `code` says why in a form a backend can act on (absent from daemons
    /// older than it).
    Refused {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<RefusalCode>,
    },
    /// New settings, effective at once.
    Settings { settings: VmSettings },
    /// The backend may submit GPU work for `slice_us` from now, or until
    /// revoked. `contended` says that other VMs on the GPU have used it or
    /// asked for it recently: the backend then keeps its queued work short,
    /// so that they are not kept waiting behind it.
    Grant {
        grant: u64,
        slice_us: u64,
        #[serde(default)]
        contended: bool,
    },
    /// Stop submitting and release `grant` now.
    Revoke { grant: u64 },
    /// The VM may now hold up to `bytes` resident (an answer to `MemNeed`,
    /// or more room given unasked).
    MemLimit { bytes: u64 },
    /// The memory asked for with `MemNeed` cannot be had (host RAM for
    /// evicted state is used up, or it is more than the GPU holds): the
    /// guest's allocation fails with CUDA_ERROR_OUT_OF_MEMORY.
    MemDenied { bytes: u64, reason: String },
    /// Swap device memory out to host RAM until at most `resident_max`
    /// bytes stay on the GPU, but move no more than `max_move_bytes` (the
    /// host RAM the daemon set aside for it: its view of what the VM holds
    /// may be a Stats report old), then answer `Evicted` with what it holds,
    /// its new limit. The VM is descheduled; its data comes back before its
    /// next GPU work.
    Evict {
        resident_max: u64,
        #[serde(default = "unbounded")]
        max_move_bytes: u64,
    },
    /// A hint, sent with a grant: other VMs wait with memory in host RAM, so
    /// an eviction of about `bytes` is likely when this grant ends. The
    /// backend may pin host memory for it meanwhile, so that the eviction
    /// copies at the full rate instead of pinning as it goes. Nothing to
    /// answer; `bytes` 0 withdraws an earlier hint.
    PrepareEviction { bytes: u64 },
}

fn unbounded() -> u64 {
    u64::MAX
}

/// Errors reading a control message.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("connection closed")]
    Closed,
    #[error("message longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes one message as a line.
pub fn write_msg<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one message, never buffering more than [`MAX_LINE`] bytes of it.
pub fn read_msg<R: BufRead, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, ControlError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(ControlError::Closed);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if line.len() + chunk.len() > MAX_LINE {
            return Err(ControlError::TooLong);
        }
        line.extend_from_slice(chunk);
        let n = chunk.len();
        r.consume(n);
        if done {
            return Ok(serde_json::from_slice(&line)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_lines() {
        let msgs = vec![
            BackendMsg::Hello {
                version: CONTROL_VERSION,
                vm: "vm1".into(),
                pid: 7,
                engine: "sim".into(),
                gpu: "sim".into(),
                quota_bytes: 1 << 30,
                requested: QosRequest { class: Some(QosClass::BestEffort), weight: Some(3), ..Default::default() },
                reconnect: false,
                gpu_ns_total: 0,
                memory: MemoryState::default(),
            },
            BackendMsg::Demand,
            BackendMsg::MemNeed { bytes: 3 << 20 },
            BackendMsg::Evicted {
                state: MemoryState { resident_bytes: 0, evicted_bytes: 1 << 30, limit_bytes: 0 },
                moved_bytes: 1 << 30,
                ns: 9,
                least_move_bytes: 0,
            },
            BackendMsg::Release { grant: 4, gpu_ns: 1000, ops: 3, more: true },
            BackendMsg::Stats(BackendStats { ops_total: 9, ..Default::default() }),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write_msg(&mut buf, m).unwrap();
        }
        assert!(String::from_utf8_lossy(&buf).contains("\"class\":\"best-effort\""));
        let mut r = io::BufReader::new(&buf[..]);
        for m in &msgs {
            let got: BackendMsg = read_msg(&mut r).unwrap();
            assert_eq!(&got, m);
        }
        assert!(matches!(read_msg::<_, BackendMsg>(&mut r), Err(ControlError::Closed)));
    }

    #[test]
    fn oversized_and_unknown_messages_are_rejected() {
        let long = vec![b'x'; MAX_LINE + 1];
        let mut r = io::BufReader::with_capacity(1024, &long[..]);
        assert!(matches!(read_msg::<_, BackendMsg>(&mut r), Err(ControlError::TooLong)));
        let mut r = io::BufReader::new(&b"{\"type\":\"charge\",\"gpu_ns\":1,\"extra\":1}\n"[..]);
        assert!(matches!(read_msg::<_, BackendMsg>(&mut r), Err(ControlError::Malformed(_))));
        let mut r = io::BufReader::new(&b"{\"type\":\"grant\",\"grant\":1}\n"[..]);
        assert!(matches!(read_msg::<_, DaemonMsg>(&mut r), Err(ControlError::Malformed(_))));
    }

    #[test]
    fn refusals_carry_a_code_that_older_and_newer_peers_can_read() {
        let msg = DaemonMsg::Refused { reason: "gpu: no".into(), code: Some(RefusalCode::GpuNotAllowed) };
        let mut buf = Vec::new();
        write_msg(&mut buf, &msg).unwrap();
        assert!(String::from_utf8_lossy(&buf).contains("\"code\":\"gpu_not_allowed\""));
        assert_eq!(read_msg::<_, DaemonMsg>(&mut io::BufReader::new(&buf[..])).unwrap(), msg);
        // From an older daemon: no code.
        let mut r = io::BufReader::new(&b"{\"type\":\"refused\",\"reason\":\"x\"}\n"[..]);
        assert_eq!(read_msg::<_, DaemonMsg>(&mut r).unwrap(), DaemonMsg::Refused { reason: "x".into(), code: None });
        // From a newer one: a code this side does not know.
        let mut r = io::BufReader::new(&b"{\"type\":\"refused\",\"reason\":\"x\",\"code\":\"later\"}\n"[..]);
        let got = read_msg::<_, DaemonMsg>(&mut r).unwrap();
        assert_eq!(got, DaemonMsg::Refused { reason: "x".into(), code: Some(RefusalCode::Other) });
        for c in RefusalCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }

    #[test]
    fn classes_parse_from_their_names() {
        for c in QosClass::ALL {
            assert_eq!(c.as_str().parse::<QosClass>().unwrap(), c);
        }
        assert!("gold".parse::<QosClass>().unwrap_err().contains("gold"));
    }
}
