//! Grants from gpuvisord: a backend submits its VM's GPU work only while it
//! holds a grant. A link thread keeps the connection to the daemon (and
//! reconnects to a restarted one); the [`Gate`], called by the queue thread
//! around every GPU operation, waits for a grant, caps the work queued on the
//! GPU, measures the GPU time each grant used with events, and gives the
//! grant back when its slice ends or the VM runs out of work.
//!
//! Memory is granted the same way when the GPU is overcommitted: the VM may
//! hold up to a limit resident on the GPU, asks gpuvisord for more
//! (`MemNeed`) before an allocation or a restore would pass it, and swaps
//! its allocations out to host RAM when the daemon's memory broker asks
//! (`Evict`). Swapped-out memory comes back before the VM's next GPU work.
//! All engine calls stay on the queue thread: the link wakes it through an
//! eventfd when it is idle.
//!
//! Without a daemon (none configured, or the daemon is gone) the gate lets
//! every operation through at once: the VM runs alone, as before. A VM that
//! gpuvisord refused its GPU (`RefusalCode::GpuNotAllowed`: the admin's
//! access list) is different: its GPU work and allocations wait until a
//! registration succeeds, daemon or no daemon, so that the admin's list
//! holds while the link retries.

use crate::engine::{CuError, Engine, EngineCtx, EngineEvent, EngineStream, Residency};
use protocol::control::{
    self, BackendMsg, BackendStats, DaemonMsg, MemoryState, QosRequest, RefusalCode, VmSettings, CONTROL_VERSION,
};
use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};
use vmm_sys_util::eventfd::EventFd;

/// How long the queue thread spins on the oldest queued operation before it
/// blocks on it: the next operation should follow it closely, as CUDA's own
/// synchronization spins while the GPU is busy.
const MARKER_SPIN: Duration = Duration::from_micros(200);

/// How long the queue thread spins for a grant before it sleeps.
const GRANT_SPIN: Duration = Duration::from_micros(100);

/// Swapped-out memory comes back at most this much per step when the VM's
/// limit does not already cover all of it (see `Gate::ensure_resident`).
pub const RESTORE_STEP: u64 = 8 << 30;

/// What a wait for memory settles for when the daemon gives less than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enough {
    /// All that was asked.
    Total,
    /// Room above what the VM holds resident for the next swapped-out
    /// allocation (a restore in part).
    NextSwapIn,
}

/// How long a `MemNeed` goes unanswered before the backend says it again (a
/// safety net: the daemon keeps pending needs and answers when it can).
const MEM_ASK_AGAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Swap {
    Out,
    In,
}

/// Why the VM cannot have the device memory it needs: the guest gets
/// CUDA_ERROR_OUT_OF_MEMORY.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("gpuvisord cannot give {bytes} bytes of device memory: {reason}")]
    Denied { bytes: u64, reason: String },
    #[error("bringing swapped-out memory back: {0}")]
    Engine(CuError),
}

/// Operations a backend alone on its GPU may keep queued.
const UNCONTENDED_MAX_OPS: usize = 1024;

/// How the backend introduces itself to the daemon.
#[derive(Debug, Clone)]
pub struct Registration {
    pub socket: PathBuf,
    pub vm: String,
    pub engine: String,
    pub gpu: String,
    pub quota_bytes: u64,
    pub requested: QosRequest,
    /// GPU work (estimated time) the backend keeps queued on the GPU at most
    /// while it holds a grant: a preempting VM waits for no more than this.
    pub max_queued: Duration,
}

/// Counters the queue thread keeps and the link thread reports.
#[derive(Debug, Default)]
pub struct Counters {
    pub ops_total: AtomicU64,
    pub gpu_ns_total: AtomicU64,
    pub wait_ns_total: AtomicU64,
    pub inflight_ops: AtomicU32,
    pub used_bytes: AtomicU64,
    pub clients: AtomicU32,
    pub queued: AtomicU32,
    /// Device memory of the guest's allocations, on the GPU and in host RAM.
    pub resident_bytes: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub evictions: AtomicU64,
    pub restores: AtomicU64,
    pub evict_ns_total: AtomicU64,
    pub restore_ns_total: AtomicU64,
    /// The guest's calls, counted on the queue thread (see `CallCounts`).
    pub launches: AtomicU64,
    pub copies: [AtomicU64; 3],
    pub copy_bytes: [AtomicU64; 3],
    pub faults: AtomicU64,
    errors: Mutex<std::collections::BTreeMap<u32, u64>>,
    latencies: Mutex<Vec<u64>>,
    latency_log: Mutex<Option<std::fs::File>>,
}

/// Directions of a copy, indexing `Counters::copies` and `copy_bytes`.
#[derive(Debug, Clone, Copy)]
pub enum CopyDir {
    HtoD = 0,
    DtoH = 1,
    DtoD = 2,
}

impl Counters {
    /// A copy of `bytes` the guest asked for went to the GPU.
    pub fn record_copy(&self, dir: CopyDir, bytes: u64) {
        self.copies[dir as usize].fetch_add(1, Ordering::Relaxed);
        self.copy_bytes[dir as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// The guest got error `code` for a call. A kernel fault is counted
    /// here unless it is sticky: that one fails every later call of the VM,
    /// and `record_fault` counts it once.
    pub fn record_error(&self, code: protocol::cuda::CuResult) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(code).or_default() += 1;
        }
        if protocol::cuda::is_fault(code) && !protocol::cuda::is_sticky(code) {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A kernel fault lost the VM's GPU context (a sticky error).
    pub fn record_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn calls(&self) -> protocol::control::CallCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let errors = self
            .errors
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(&c, &n)| {
                        let name =
                            protocol::cuda::error_name(c).map_or_else(|| format!("CUDA_ERROR_{c}"), str::to_string);
                        (name, n)
                    })
                    .collect()
            })
            .unwrap_or_default();
        protocol::control::CallCounts {
            launches: load(&self.launches),
            copies_htod: load(&self.copies[0]),
            copies_dtoh: load(&self.copies[1]),
            copies_dtod: load(&self.copies[2]),
            bytes_htod: load(&self.copy_bytes[0]),
            bytes_dtoh: load(&self.copy_bytes[1]),
            bytes_dtod: load(&self.copy_bytes[2]),
            errors,
            faults: load(&self.faults),
        }
    }

    /// One request (a batch the guest waits for) took `ns` from its arrival
    /// at the backend to its completion.
    pub fn record_latency(&self, ns: u64) {
        if let Ok(mut v) = self.latencies.lock() {
            if v.len() < 1 << 20 {
                v.push(ns);
            }
        }
        if let Ok(mut f) = self.latency_log.lock() {
            if let Some(f) = f.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{ns}");
            }
        }
    }

    /// Appends every request latency, in ns, one per line, to this file.
    pub fn set_latency_log(&self, file: std::fs::File) {
        if let Ok(mut f) = self.latency_log.lock() {
            *f = Some(file);
        }
    }

    fn memory(&self, limit: u64) -> MemoryState {
        MemoryState {
            resident_bytes: self.resident_bytes.load(Ordering::Relaxed),
            evicted_bytes: self.evicted_bytes.load(Ordering::Relaxed),
            limit_bytes: limit,
        }
    }

    fn take_stats(&self, limit: u64) -> BackendStats {
        let mut lat = self.latencies.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize]
            }
        };
        BackendStats {
            queued: self.queued.load(Ordering::Relaxed),
            inflight_ops: self.inflight_ops.load(Ordering::Relaxed),
            ops_total: self.ops_total.load(Ordering::Relaxed),
            gpu_ns_total: self.gpu_ns_total.load(Ordering::Relaxed),
            wait_ns_total: self.wait_ns_total.load(Ordering::Relaxed),
            used_bytes: self.used_bytes.load(Ordering::Relaxed),
            clients: self.clients.load(Ordering::Relaxed),
            requests: lat.len() as u64,
            latency_p50_ns: pct(0.5),
            latency_p99_ns: pct(0.99),
            memory: self.memory(limit),
            evictions: self.evictions.load(Ordering::Relaxed),
            restores: self.restores.load(Ordering::Relaxed),
            evict_ns_total: self.evict_ns_total.load(Ordering::Relaxed),
            restore_ns_total: self.restore_ns_total.load(Ordering::Relaxed),
            calls: self.calls(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct HeldGrant {
    id: u64,
    deadline: Instant,
    /// The connection it came from; a grant from a lost connection is void.
    generation: u64,
    /// Other VMs want the GPU: keep queued work short.
    contended: bool,
}

#[derive(Debug, Default)]
struct LinkState {
    /// The daemon answered our Hello on this connection and it is alive.
    connected: bool,
    generation: u64,
    settings: Option<VmSettings>,
    /// A grant the link received and the queue thread has not taken yet.
    offered: Option<HeldGrant>,
    writer: Option<UnixStream>,
    /// We told the daemon we want a grant and have not had one since.
    demanding: bool,
    /// The queue thread went idle holding this (uncontended) grant: the
    /// link gives it back at once if the daemon revokes it.
    parked: Option<u64>,
    /// A parked grant the link gave back; the queue thread still has to
    /// account its GPU time.
    released_parked: Option<u64>,
    /// Device memory the daemon lets the VM hold resident; `None`: no limit
    /// (no daemon, or a GPU it does not overcommit).
    mem_limit: Option<u64>,
    /// The limit last given, kept across reconnects for the Hello.
    last_limit: u64,
    /// Bytes the queue thread holds or was allowed to allocate and may be
    /// allocating right now: the link must not promise the daemon less.
    mem_reserved: u64,
    /// What we asked for with `MemNeed` and have no answer to.
    mem_asked: Option<u64>,
    mem_denied: Option<String>,
    /// The daemon asked us to swap out down to this many resident bytes.
    /// (resident_max, max_move_bytes) of an `Evict` not yet carried out.
    evict_to: Option<(u64, u64)>,
    /// Bytes of host memory to pin ahead of a likely eviction
    /// (`PrepareEviction`), not yet passed to the engine.
    prepare_eviction: Option<u64>,
    /// Why gpuvisord last refused this VM its GPU; until a registration
    /// succeeds, the VM's GPU work and allocations wait. Kept while the
    /// daemon is unreachable: its absence allows nothing.
    refused: Option<String>,
}

impl LinkState {
    /// The resident limit the daemon gave, while connected.
    fn limit(&self) -> Option<u64> {
        self.mem_limit.filter(|_| self.connected)
    }

    /// Forgets the connection and every grant state that came with it.
    fn disconnect(&mut self) {
        self.connected = false;
        self.writer = None;
        self.clear_grants();
        // Alone, the VM grows only into memory the GPU has free (an
        // allocation past that fails as it would natively); what it has
        // swapped out stays in host RAM until it next runs.
        self.mem_limit = None;
        self.mem_asked = None;
        self.mem_denied = None;
        self.evict_to = None;
        self.prepare_eviction = Some(0);
    }

    fn clear_grants(&mut self) {
        self.offered = None;
        self.demanding = false;
        self.parked = None;
        self.released_parked = None;
    }
}

struct Shared {
    state: Mutex<LinkState>,
    cond: Condvar,
    /// Set by the link when the daemon revokes the grant the queue thread holds.
    revoked: AtomicU64,
    /// Counts grants offered, so the queue thread can spin on it briefly
    /// instead of sleeping on the condvar (a grant usually comes within tens
    /// of microseconds, and a sleeping thread takes as long to wake).
    offers: AtomicU64,
    stop: AtomicBool,
    counters: Arc<Counters>,
    /// Wakes the queue thread when it is idle and has memory to swap out.
    waker: Mutex<Option<EventFd>>,
}

impl Shared {
    /// Wakes the queue thread (its eventfd), which then calls
    /// `service_memory`.
    fn wake_queue(&self) {
        if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = w.write(1);
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a message if connected; a failed send drops the connection (the
    /// link thread notices and reconnects).
    fn send(&self, st: &mut LinkState, msg: &BackendMsg) {
        if let Some(w) = st.writer.as_mut() {
            if let Err(e) = control::write_msg(w, msg) {
                debug!("sending to gpuvisord: {e}");
                let _ = w.shutdown(std::net::Shutdown::Both);
                st.disconnect();
                self.cond.notify_all();
            }
        }
    }
}

/// The connection to gpuvisord, kept by a thread of its own.
pub struct DaemonLink {
    shared: Arc<Shared>,
    max_queued: Duration,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DaemonLink {
    /// Starts the link thread. The backend serves its VM at once; until the
    /// daemon answers, it runs alone.
    pub fn start(reg: Registration, counters: Arc<Counters>) -> DaemonLink {
        let shared = Arc::new(Shared {
            state: Mutex::new(LinkState::default()),
            cond: Condvar::new(),
            revoked: AtomicU64::new(0),
            offers: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            counters,
            waker: Mutex::new(None),
        });
        let s = shared.clone();
        let max_queued = reg.max_queued;
        let thread = std::thread::Builder::new().name("gpuvisord-link".into()).spawn(move || link_thread(reg, s)).ok();
        DaemonLink { shared, max_queued, thread }
    }

    /// A gate that follows this link's grants.
    pub fn gate(&self) -> Gate {
        let mut g = Gate::new(Some(self.shared.clone()), self.shared.counters.clone());
        g.max_queued_ns = self.max_queued.as_nanos() as f64;
        g
    }

    /// The queue thread's idle wake-up: written when the daemon asks for
    /// memory to be swapped out (see `Gate::service_memory`).
    pub fn set_waker(&self, waker: EventFd) {
        *self.shared.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker);
    }

    /// Whether the daemon has accepted the registration and is connected.
    pub fn connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Why gpuvisord refused this VM its GPU, while it does: the guest's GPU
    /// work waits until a registration succeeds.
    pub fn refused(&self) -> Option<String> {
        self.shared.lock().refused.clone()
    }
}

impl Drop for DaemonLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(w) = self.shared.lock().writer.take() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a connection to the daemon ended before it was registered.
#[derive(Debug)]
enum LinkError {
    Io(std::io::Error),
    Refused { reason: String, code: Option<RefusalCode> },
}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> LinkError {
        LinkError::Io(e)
    }
}

fn link_thread(reg: Registration, shared: Arc<Shared>) {
    let mut registered_before = false;
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    let mut last_refusal: Option<String> = None;
    while !shared.stop.load(Ordering::Acquire) {
        match connect_once(&reg, &shared, registered_before) {
            Ok(()) => {
                registered_before = true;
                backoff = Duration::from_millis(50);
                warned = false;
                last_refusal = None;
                info!(vm = %reg.vm, "gpuvisord went away; running alone until it is back");
            }
            Err(LinkError::Refused { reason, code }) => {
                let holds = code == Some(RefusalCode::GpuNotAllowed);
                // Said again only when the reason changes: the link retries
                // every second.
                if last_refusal.as_deref() != Some(reason.as_str()) {
                    if holds {
                        error!(vm = %reg.vm, gpu = %reg.gpu, "gpuvisord refused this VM its GPU: {reason}; the \
                            guest's GPU work waits until the admin allows it (retrying)");
                    } else {
                        warn!(vm = %reg.vm, "gpuvisord refused the registration: {reason}; running alone and retrying");
                    }
                    last_refusal = Some(reason.clone());
                }
                let mut st = shared.lock();
                st.refused = holds.then_some(reason);
                shared.cond.notify_all();
            }
            Err(LinkError::Io(e)) => {
                if !warned {
                    let alone = if shared.lock().refused.is_some() {
                        "its GPU work still waits (gpuvisord refused it its GPU)"
                    } else {
                        "running alone"
                    };
                    warn!(vm = %reg.vm, socket = %reg.socket.display(), "gpuvisord not reachable ({e}); {alone} and retrying");
                    warned = true;
                }
            }
        }
        {
            shared.lock().disconnect();
            shared.cond.notify_all();
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !shared.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One connection's life: Hello, Welcome, then messages until it breaks.
fn connect_once(reg: &Registration, shared: &Arc<Shared>, reconnect: bool) -> Result<(), LinkError> {
    let stream = UnixStream::connect(&reg.socket)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let hello = BackendMsg::Hello {
        version: CONTROL_VERSION,
        vm: reg.vm.clone(),
        pid: std::process::id(),
        engine: reg.engine.clone(),
        gpu: reg.gpu.clone(),
        quota_bytes: reg.quota_bytes,
        requested: reg.requested.clone(),
        reconnect,
        gpu_ns_total: shared.counters.gpu_ns_total.load(Ordering::Relaxed),
        memory: {
            let limit = shared.lock().last_limit;
            shared.counters.memory(limit)
        },
    };
    control::write_msg(&mut writer, &hello)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (settings, mem_limit) = match control::read_msg::<_, DaemonMsg>(&mut reader) {
        Ok(DaemonMsg::Welcome { version, settings, mem_limit_bytes }) if version == CONTROL_VERSION => {
            (settings, mem_limit_bytes)
        }
        Ok(DaemonMsg::Refused { reason, code }) => return Err(LinkError::Refused { reason, code }),
        Ok(other) => return Err(std::io::Error::other(format!("unexpected first message {other:?}")).into()),
        Err(e) => return Err(std::io::Error::other(e.to_string()).into()),
    };
    stream.set_read_timeout(None)?;
    info!(vm = %reg.vm, class = %settings.class, weight = settings.weight, priority = settings.priority,
        slice_us = settings.slice_us, "registered with gpuvisord");
    let generation = {
        let mut st = shared.lock();
        st.generation += 1;
        st.connected = true;
        if st.refused.take().is_some() {
            info!(vm = %reg.vm, "gpuvisord now allows this VM its GPU; its GPU work goes on");
        }
        st.settings = Some(settings);
        st.mem_limit = mem_limit;
        if let Some(l) = mem_limit {
            st.last_limit = l;
        }
        st.writer = Some(writer);
        st.clear_grants();
        shared.cond.notify_all();
        st.generation
    };
    // Stats once a second, from a helper thread that ends with the connection.
    let stats_shared = shared.clone();
    let stats_thread = std::thread::Builder::new().name("gpuvisord-stats".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let mut st = stats_shared.lock();
        if !st.connected || st.generation != generation || stats_shared.stop.load(Ordering::Acquire) {
            return;
        }
        let limit = st.mem_limit.unwrap_or(0);
        let stats = stats_shared.counters.take_stats(limit);
        stats_shared.send(&mut st, &BackendMsg::Stats(stats));
    })?;
    loop {
        match control::read_msg::<_, DaemonMsg>(&mut reader) {
            Ok(msg) => handle_daemon_msg(shared, generation, msg),
            Err(control::ControlError::Closed) => break,
            Err(e) => {
                warn!(vm = %reg.vm, "bad message from gpuvisord: {e}");
                break;
            }
        }
    }
    shared.lock().disconnect();
    shared.cond.notify_all();
    let _ = stats_thread.join();
    Ok(())
}

fn handle_daemon_msg(shared: &Shared, generation: u64, msg: DaemonMsg) {
    let mut st = shared.lock();
    match msg {
        DaemonMsg::Grant { grant, slice_us, contended } => {
            tracing::trace!(grant, slice_us, contended, "grant");
            st.offered = Some(HeldGrant {
                id: grant,
                deadline: Instant::now() + Duration::from_micros(slice_us),
                generation,
                contended,
            });
            st.demanding = false;
            shared.offers.fetch_add(1, Ordering::Release);
            shared.cond.notify_all();
        }
        DaemonMsg::Revoke { grant } => {
            tracing::trace!(grant, "revoke");
            if st.offered.map(|g| g.id) == Some(grant) {
                // Not taken yet: give it straight back. The queue thread is
                // waiting for a grant, so it still wants one.
                st.offered = None;
                st.demanding = true;
                shared.send(&mut st, &BackendMsg::Release { grant, gpu_ns: 0, ops: 0, more: true });
            } else if st.parked == Some(grant) {
                // The VM is idle: the grant goes back now, not at its next work.
                st.parked = None;
                st.released_parked = Some(grant);
                shared.send(&mut st, &BackendMsg::Release { grant, gpu_ns: 0, ops: 0, more: false });
            } else {
                shared.revoked.store(grant, Ordering::Release);
            }
        }
        DaemonMsg::Settings { settings } => {
            info!(class = %settings.class, weight = settings.weight, priority = settings.priority,
                slice_us = settings.slice_us, drained = settings.drained, "new settings from gpuvisord");
            st.settings = Some(settings);
            shared.cond.notify_all();
        }
        DaemonMsg::MemLimit { bytes } => {
            debug!(bytes, "memory limit");
            st.mem_limit = Some(bytes);
            st.last_limit = bytes;
            if st.mem_asked.is_some_and(|a| a <= bytes) {
                st.mem_asked = None;
            }
            shared.cond.notify_all();
        }
        DaemonMsg::MemDenied { bytes, reason } => {
            if st.mem_asked == Some(bytes) {
                st.mem_asked = None;
                st.mem_denied = Some(reason);
                shared.cond.notify_all();
            }
        }
        DaemonMsg::Evict { resident_max, max_move_bytes } => {
            let resident = shared.counters.resident_bytes.load(Ordering::Acquire);
            let keep = st.mem_reserved.max(resident);
            if keep <= resident_max || max_move_bytes == 0 {
                // Nothing has to move, or nothing may (the daemon thought
                // the memory unused): answer at once, without the queue
                // thread, which may be busy or have no VM to serve.
                st.mem_limit = Some(keep);
                st.last_limit = keep;
                let state = shared.counters.memory(keep);
                let state = MemoryState { resident_bytes: keep, ..state };
                shared.send(&mut st, &BackendMsg::Evicted { state, moved_bytes: 0, ns: 0, least_move_bytes: 0 });
            } else {
                debug!(resident_max, resident, "swap-out asked");
                st.evict_to = Some((resident_max, max_move_bytes));
                shared.cond.notify_all();
                shared.wake_queue();
            }
        }
        DaemonMsg::PrepareEviction { bytes } => {
            debug!(bytes, "eviction likely: preparing host memory");
            st.prepare_eviction = Some(bytes);
            shared.wake_queue();
        }
        DaemonMsg::Welcome { .. } | DaemonMsg::Refused { .. } => {
            warn!("unexpected message from gpuvisord after registration");
        }
    }
}

/// How a grant ends: given back by the queue thread, or already given back
/// by the link (parked) so that only its GPU time remains to report.
#[derive(Debug, Clone, Copy)]
enum Finish {
    Release { more: bool },
    ChargeOnly,
}

/// GPU time of one grant in one engine context: `start` was recorded before
/// the grant's first operation there; the span up to each completed marker
/// is the time the grant's work took.
#[derive(Debug)]
struct GrantSpan {
    id: u64,
    grant: u64,
    ctx: EngineCtx,
    start: EngineEvent,
    span_ns: u64,
    reported_ns: u64,
    released: bool,
    pending: u32,
    /// No more markers join it: the VM went idle holding the grant (parked),
    /// and the idle time must not count as GPU time.
    closed: bool,
}

#[derive(Debug)]
struct Marker {
    ctx: EngineCtx,
    event: EngineEvent,
    /// The `GrantSpan` it measures.
    span: u64,
    /// Queued behind the previous marker (the stream had work): the time
    /// between the two is its operation's GPU time, with no idle gap in it.
    chained: bool,
    /// Recorded just before the operation when nothing was queued: the time
    /// from it to the marker is the operation's GPU time.
    pre: Option<EngineEvent>,
}

/// The queue thread's side: waits for grants, caps queued work, measures
/// GPU time. With no link it does nothing.
pub struct Gate {
    shared: Option<Arc<Shared>>,
    counters: Arc<Counters>,
    held: Option<HeldGrant>,
    held_ops: u64,
    outstanding: VecDeque<Marker>,
    spans: Vec<GrantSpan>,
    free_events: HashMap<EngineCtx, Vec<EngineEvent>>,
    /// The last retired marker, kept to time the next one against it.
    prev_done: Option<Marker>,
    /// The event recorded before the operation being submitted, if any.
    pre: Option<(EngineCtx, EngineEvent)>,
    /// The held grant is parked (see `idle`).
    parked: bool,
    next_span: u64,
    /// Moving estimate of one operation's GPU time, ns (0: none yet).
    op_ns: f64,
    max_queued_ns: f64,
    /// See `RESTORE_STEP`.
    restore_step: u64,
}

impl Gate {
    fn new(shared: Option<Arc<Shared>>, counters: Arc<Counters>) -> Gate {
        Gate {
            shared,
            counters,
            held: None,
            held_ops: 0,
            outstanding: VecDeque::new(),
            spans: Vec::new(),
            free_events: HashMap::new(),
            prev_done: None,
            pre: None,
            parked: false,
            next_span: 0,
            op_ns: 0.0,
            max_queued_ns: f64::INFINITY,
            restore_step: RESTORE_STEP,
        }
    }

    /// Brings swapped-out memory back `bytes` at a time when the VM's limit
    /// does not cover all of it (default `RESTORE_STEP`).
    pub fn set_restore_step(&mut self, bytes: u64) {
        self.restore_step = bytes.max(1);
    }

    /// A gate for a backend without a daemon.
    pub fn standalone(counters: Arc<Counters>) -> Gate {
        Gate::new(None, counters)
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Called before each GPU operation on `stream` of engine context `ctx`
    /// (current): returns once the VM may submit it.
    pub fn before_op(
        &mut self,
        engine: &mut dyn Engine,
        ctx: EngineCtx,
        stream: EngineStream,
    ) -> Result<(), MemoryError> {
        let Some(shared) = self.shared.clone() else {
            return self.ensure_resident(engine);
        };
        self.reap(engine, false);
        loop {
            if engine.residency().evicted > 0 {
                // Swapped out (while waiting, or before): the data comes back
                // first, and not on the GPU time of a grant.
                if self.held.is_some() && !self.parked {
                    self.release(&shared, engine, false);
                }
                self.ensure_resident(engine)?;
            }
            if let Some(g) = self.held.filter(|_| self.parked) {
                self.parked = false;
                let mut st = shared.lock();
                if st.parked == Some(g.id) {
                    // Still ours: carry on under it.
                    st.parked = None;
                } else {
                    // The link gave it back while we were idle.
                    if st.released_parked == Some(g.id) {
                        st.released_parked = None;
                    }
                    drop(st);
                    self.finish(&shared, engine, Finish::ChargeOnly);
                    continue;
                }
            }
            if let Some(g) = self.held {
                let revoked = shared.revoked.load(Ordering::Acquire) == g.id;
                let (alive, max_queued) = {
                    let st = shared.lock();
                    let s = st.settings.as_ref();
                    (
                        st.connected && st.generation == g.generation && !s.is_some_and(|s| s.drained),
                        s.map_or(control::MIN_QUEUED_OPS, |s| s.max_queued_ops).max(1) as usize,
                    )
                };
                if !alive {
                    // Daemon gone (run alone) or drained (wait below).
                    self.release(&shared, engine, true);
                    continue;
                }
                if !revoked && Instant::now() < g.deadline {
                    if self.outstanding.len() >= self.queue_cap(max_queued, g.contended) {
                        // Wait for the oldest, then look again: the grant may
                        // have been revoked or run out meanwhile.
                        self.reap(engine, true);
                        continue;
                    }
                    self.start_span(engine, g.id, ctx, stream);
                    self.record_pre(engine, ctx, stream);
                    return Ok(());
                }
                // Slice over or revoked: give it back, still wanting more.
                self.release(&shared, engine, true);
                continue;
            }
            let wait_start = Instant::now();
            let mut st = shared.lock();
            if !st.connected {
                if st.refused.is_none() || shared.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                // Refused its GPU: nothing goes to the GPU until gpuvisord
                // takes the VM (the link retries).
                let _ = shared.cond.wait_timeout(st, Duration::from_millis(100));
                continue;
            }
            if !st.demanding && st.offered.is_none() {
                st.demanding = true;
                shared.send(&mut st, &BackendMsg::Demand);
            }
            if st.offered.is_none() {
                let offers = shared.offers.load(Ordering::Acquire);
                drop(st);
                let spin = Instant::now();
                while shared.offers.load(Ordering::Acquire) == offers && spin.elapsed() < GRANT_SPIN {
                    std::hint::spin_loop();
                }
                st = shared.lock();
            }
            while st.connected {
                if st.evict_to.is_some() {
                    // Descheduled and asked for memory: swap out now.
                    drop(st);
                    self.service_memory(engine);
                    st = shared.lock();
                    if engine.residency().evicted > 0 {
                        // Its memory comes back before it is granted again
                        // (gpuvisord grants no VM with memory in host RAM):
                        // restore first, at the top of the loop.
                        break;
                    }
                    continue;
                }
                if let Some(g) = st.offered.take() {
                    if g.generation == st.generation && !st.settings.as_ref().is_some_and(|s| s.drained) {
                        // Whatever was said before, the daemon now knows
                        // this VM holds a grant: the next wait needs a Demand.
                        st.demanding = false;
                        self.held = Some(g);
                        self.held_ops = 0;
                        break;
                    }
                    // A grant that arrived as we were drained: hand it back.
                    shared.send(&mut st, &BackendMsg::Release { grant: g.id, gpu_ns: 0, ops: 0, more: true });
                    st.demanding = true;
                }
                let (next, timeout) =
                    shared.cond.wait_timeout(st, Duration::from_millis(500)).unwrap_or_else(|p| p.into_inner());
                st = next;
                if timeout.timed_out() && st.connected && st.offered.is_none() {
                    // A safety net: say again that we are waiting.
                    debug!("no grant after 500 ms; asking gpuvisord again");
                    shared.send(&mut st, &BackendMsg::Demand);
                }
            }
            drop(st);
            self.counters.wait_ns_total.fetch_add(wait_start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if self.held.is_none() {
                let st = shared.lock();
                if !st.connected && st.refused.is_none() {
                    return Ok(());
                }
            }
        }
    }

    /// Called after a GPU operation was submitted on `stream` of context `ctx`.
    pub fn after_op(&mut self, engine: &mut dyn Engine, ctx: EngineCtx, stream: EngineStream) {
        self.counters.ops_total.fetch_add(1, Ordering::Relaxed);
        let pre = match self.pre.take() {
            Some((c, e)) if c == ctx => Some(e),
            Some((c, e)) => {
                self.give_event(c, e);
                None
            }
            None => None,
        };
        let open = |s: &GrantSpan, g: &HeldGrant| s.grant == g.id && s.ctx == ctx && !s.closed;
        let Some(span) = self.held.and_then(|g| self.spans.iter().find(|s| open(s, &g)).map(|s| s.id)) else {
            if let Some(e) = pre {
                self.give_event(ctx, e);
            }
            return;
        };
        self.held_ops += 1;
        let Some(event) = self.event(engine, ctx) else {
            return;
        };
        if engine.event_record(event, stream).is_err() {
            self.give_event(ctx, event);
            return;
        }
        if let Some(s) = self.spans.iter_mut().find(|s| s.id == span) {
            s.pending += 1;
        }
        let chained = self.outstanding.back().is_some_and(|m| m.ctx == ctx);
        self.outstanding.push_back(Marker { ctx, event, span, chained, pre });
        self.counters.inflight_ops.store(self.outstanding.len() as u32, Ordering::Relaxed);
    }

    /// The VM's queue is empty: give back the grant, if held, once its work
    /// is accounted.
    ///
    /// A grant no other VM wants (not `contended`) is kept instead, parked:
    /// a VM that alternates short bursts of work with waits (launch, then
    /// synchronize) then pays no daemon round trip per burst. If another VM
    /// asks for the GPU, the daemon revokes it and the link gives it back at
    /// once; at the latest it goes back when its slice ends.
    pub fn idle(&mut self, engine: &mut dyn Engine) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if let Some(g) = self.held.filter(|_| !self.parked) {
            let mut st = shared.lock();
            let keep = !g.contended
                && Instant::now() < g.deadline
                && shared.revoked.load(Ordering::Acquire) != g.id
                && st.connected
                && st.generation == g.generation;
            if keep {
                st.parked = Some(g.id);
                self.parked = true;
                for s in self.spans.iter_mut().filter(|s| s.grant == g.id) {
                    s.closed = true;
                }
            }
            drop(st);
            if !keep {
                self.release(&shared, engine, false);
            }
        }
        self.reap(engine, false);
        self.service_memory(engine);
    }

    /// Swaps memory out to host RAM if gpuvisord asked for it, and answers.
    /// Runs on the queue thread: when it waits (for a grant or for memory),
    /// when the VM's queue goes empty, and when the link wakes it.
    pub fn service_memory(&mut self, engine: &mut dyn Engine) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let (prepare, evict) = {
            let mut st = shared.lock();
            (st.prepare_eviction.take(), st.evict_to.take())
        };
        if let Some(bytes) = prepare {
            engine.prepare_swap_out(bytes);
        }
        let Some((resident_max, max_move)) = evict else {
            return;
        };
        // No more than the daemon set host RAM aside for.
        let start = Instant::now();
        let moved = match engine.swap_out(resident_max, max_move) {
            Ok(m) => m,
            Err(e) => {
                warn!("swapping device memory out: {e}");
                0
            }
        };
        let ns = start.elapsed().as_nanos() as u64;
        let r = engine.residency();
        self.record_swap(Swap::Out, moved, ns, r);
        let mut st = shared.lock();
        st.mem_limit = Some(r.resident);
        st.last_limit = r.resident;
        let state = MemoryState { resident_bytes: r.resident, evicted_bytes: r.evicted, limit_bytes: r.resident };
        // Short of what was asked: what the next eviction must be allowed.
        let least_move_bytes = if r.resident > resident_max { engine.least_swap_out() } else { 0 };
        shared.send(&mut st, &BackendMsg::Evicted { state, moved_bytes: moved, ns, least_move_bytes });
    }

    /// Counts and logs a swap that moved `moved` bytes in `ns`, leaving `r`.
    fn record_swap(&self, dir: Swap, moved: u64, ns: u64, r: Residency) {
        self.note_residency(r);
        let (count, total, what) = match dir {
            Swap::Out => {
                (&self.counters.evictions, &self.counters.evict_ns_total, "swapped out to host RAM for gpuvisord")
            }
            Swap::In => (&self.counters.restores, &self.counters.restore_ns_total, "restored from host RAM"),
        };
        if moved > 0 {
            count.fetch_add(1, Ordering::Relaxed);
            total.fetch_add(ns, Ordering::Relaxed);
        }
        info!(
            moved,
            ms = ns as f64 / 1e6,
            gbps = moved as f64 / ns.max(1) as f64,
            resident = r.resident,
            evicted = r.evicted,
            "device memory {what}"
        );
    }

    /// Records the engine's residency for the daemon (after an allocation,
    /// a free or a swap).
    pub fn note_residency(&self, r: Residency) {
        self.counters.resident_bytes.store(r.resident, Ordering::Release);
        self.counters.evicted_bytes.store(r.evicted, Ordering::Release);
        if let Some(shared) = &self.shared {
            shared.lock().mem_reserved = r.resident;
        }
    }

    /// Makes room for an allocation of `footprint` bytes: brings swapped-out
    /// memory back, then makes sure the VM may hold its resident bytes plus
    /// `footprint`, asking gpuvisord and waiting if it may not yet.
    pub fn reserve_memory(&mut self, engine: &mut dyn Engine, footprint: u64) -> Result<(), MemoryError> {
        self.ensure_resident(engine)?;
        let total = engine.residency().resident.saturating_add(footprint);
        self.ensure_memory(engine, total)
    }

    /// Brings the VM's swapped-out memory back onto the GPU. When its limit
    /// does not already cover all of it, it comes back RESTORE_STEP at a
    /// time, each step asked of the daemon: the VMs evicted to make room then
    /// leave the GPU step by step too, and host RAM holds at most one step
    /// more than the evicted memory it held before, not both VMs' memory.
    fn ensure_resident(&mut self, engine: &mut dyn Engine) -> Result<(), MemoryError> {
        loop {
            let r = engine.residency();
            if r.evicted == 0 {
                return Ok(());
            }
            let all = r.resident.saturating_add(r.evicted);
            // A step brings back one allocation at least, however large.
            let least = engine.next_swap_in();
            let step = if self.limit().is_none_or(|l| all <= l) {
                all
            } else {
                r.resident.saturating_add(r.evicted.min(self.restore_step.max(least)))
            };
            // The daemon may let a restore come back in part first (what
            // comes back frees host RAM for the evictions the rest needs):
            // any limit with room for the next allocation is worth taking.
            self.ensure_memory_from(engine, step, Enough::NextSwapIn)?;
            // Waiting, it may have swapped out more at the daemon's request.
            let r = engine.residency();
            // Take all the limit allows: `step`, or the part given first.
            // What it may bring back is held at once, under the same lock as
            // the limit is read: the link answers an eviction that moves
            // nothing with what is held, and that answer sets the limit on
            // both sides (holding only the step asked for, a limit raised
            // for all of it was cut to the step while the rest came back
            // anyway; seen on the H200: 8 GiB more resident than the
            // daemon's books).
            let mut st = self.shared.as_ref().map(|shared| shared.lock());
            let limit = st.as_ref().and_then(|st| st.limit());
            let budget = limit.map_or(u64::MAX, |l| l.saturating_sub(r.resident));
            if let Some(st) = st.as_mut() {
                st.mem_reserved = st.mem_reserved.max(r.resident.saturating_add(r.evicted.min(budget)));
            }
            drop(st);
            let partial = limit.is_some_and(|l| l < step);
            let start = Instant::now();
            let result = engine.swap_in(budget);
            let ns = start.elapsed().as_nanos() as u64;
            let after = engine.residency();
            let moved = r.evicted - after.evicted.min(r.evicted);
            self.record_swap(Swap::In, moved, ns, after);
            if let Some(shared) = self.shared.clone() {
                let mut st = shared.lock();
                let limit = st.mem_limit.unwrap_or(0);
                let state =
                    MemoryState { resident_bytes: after.resident, evicted_bytes: after.evicted, limit_bytes: limit };
                shared.send(&mut st, &BackendMsg::Restored { state, moved_bytes: moved, ns });
            }
            if partial && (result.is_err() || moved == 0) {
                // The part given first was too small for the allocation that
                // came next and the device had no room past it: wait for the
                // whole step instead.
                self.ensure_memory(engine, step)?;
                continue;
            }
            result.map_err(MemoryError::Engine)?;
            if moved == 0 {
                // Nothing came back and nothing failed: do not spin.
                return Err(MemoryError::Engine(CuError(protocol::cuda::CUDA_ERROR_OUT_OF_MEMORY)));
            }
        }
    }

    /// The resident limit the daemon gave; `None` when there is none.
    fn limit(&self) -> Option<u64> {
        self.shared.as_ref()?.lock().limit()
    }

    /// Waits until the VM may hold `total` bytes resident, asking gpuvisord
    /// for them if its limit is lower. Meanwhile it swaps out when asked and
    /// gives back a grant whose slice is over, so that the VMs it waits for
    /// are not kept waiting in turn.
    fn ensure_memory(&mut self, engine: &mut dyn Engine, total: u64) -> Result<(), MemoryError> {
        self.ensure_memory_from(engine, total, Enough::Total)
    }

    /// [`ensure_memory`](Self::ensure_memory), content with less than
    /// `total` when `enough` says so and the daemon gives that much first.
    fn ensure_memory_from(&mut self, engine: &mut dyn Engine, total: u64, enough: Enough) -> Result<(), MemoryError> {
        let Some(shared) = self.shared.clone() else {
            return Ok(());
        };
        let mut asked_at: Option<Instant> = None;
        let wait_start = Instant::now();
        loop {
            self.service_memory(engine);
            if let Some(g) = self.held.filter(|_| !self.parked) {
                if shared.revoked.load(Ordering::Acquire) == g.id || Instant::now() >= g.deadline {
                    self.release(&shared, engine, false);
                }
            }
            let mut st = shared.lock();
            if !st.connected && st.refused.is_some() && !shared.stop.load(Ordering::Acquire) {
                // Refused its GPU: no device memory either, until it is allowed.
                let _ = shared.cond.wait_timeout(st, Duration::from_millis(100));
                continue;
            }
            let limit = match st.mem_limit {
                _ if !st.connected => return Ok(()),
                None => return Ok(()),
                Some(l) => l,
            };
            // Read again on every round: a restore waiting here may have
            // been evicted further meanwhile, and then takes less than what
            // was resident when it began waiting (seen on the H200: a VM
            // evicted in the middle of its last restore step waited a minute
            // with 24 GiB of room given, for more than it had left resident).
            let enough = match enough {
                Enough::Total => total,
                Enough::NextSwapIn => engine.residency().resident.saturating_add(engine.next_swap_in().max(1)),
            };
            if total <= limit || enough <= limit {
                st.mem_reserved = st.mem_reserved.max(total.min(limit));
                if asked_at.is_some() {
                    debug!(total, limit, waited_ms = wait_start.elapsed().as_secs_f64() * 1e3, "memory granted");
                }
                return Ok(());
            }
            if let Some(reason) = st.mem_denied.take() {
                return Err(MemoryError::Denied { bytes: total, reason });
            }
            if st.evict_to.is_some() {
                continue;
            }
            let stale = asked_at.is_none_or(|t| t.elapsed() > MEM_ASK_AGAIN);
            if st.mem_asked.is_none_or(|a| a < total) || stale {
                st.mem_asked = Some(total);
                asked_at = Some(Instant::now());
                shared.send(&mut st, &BackendMsg::MemNeed { bytes: total });
            }
            let _ = shared.cond.wait_timeout(st, Duration::from_millis(100));
        }
    }

    /// Engine context `ctx` is being destroyed, with every event in it.
    pub fn forget_ctx(&mut self, ctx: EngineCtx) {
        self.free_events.remove(&ctx);
        self.outstanding.retain(|m| m.ctx != ctx);
        if self.prev_done.as_ref().is_some_and(|m| m.ctx == ctx) {
            self.prev_done = None;
        }
        if self.pre.is_some_and(|(c, _)| c == ctx) {
            self.pre = None;
        }
        self.spans.retain(|s| s.ctx != ctx);
        self.counters.inflight_ops.store(self.outstanding.len() as u32, Ordering::Relaxed);
    }

    /// Operations that may be queued. While other VMs want the GPU: the
    /// daemon's cap, and no more than `max_queued` of estimated GPU time, so
    /// that a VM preempting this one waits no longer than that. Alone on the
    /// GPU, a hundred times more (the queue a newcomer waits behind once).
    fn queue_cap(&self, max_ops: usize, contended: bool) -> usize {
        let (max_ops, max_ns) =
            if contended { (max_ops, self.max_queued_ns) } else { (UNCONTENDED_MAX_OPS, self.max_queued_ns * 100.0) };
        if self.op_ns > 0.0 && max_ns.is_finite() {
            ((max_ns / self.op_ns) as usize).clamp(1, max_ops)
        } else {
            max_ops
        }
    }

    /// With nothing queued in `ctx`, records an event just before the next
    /// operation so that its GPU time can be measured on its own.
    fn record_pre(&mut self, engine: &mut dyn Engine, ctx: EngineCtx, stream: EngineStream) {
        if let Some((c, e)) = self.pre.take() {
            self.give_event(c, e);
        }
        if self.outstanding.iter().any(|m| m.ctx == ctx) {
            return;
        }
        let Some(e) = self.event(engine, ctx) else {
            return;
        };
        if engine.event_record(e, stream).is_err() {
            self.give_event(ctx, e);
            return;
        }
        self.pre = Some((ctx, e));
    }

    /// Records the event the held grant's GPU time in `ctx` is measured
    /// from, before the grant's first operation there. If the stream is still
    /// busy with earlier work, the span starts when that work is done.
    fn start_span(&mut self, engine: &mut dyn Engine, grant: u64, ctx: EngineCtx, stream: EngineStream) {
        if self.spans.iter().any(|s| s.grant == grant && s.ctx == ctx && !s.closed) {
            return;
        }
        let Some(start) = self.event(engine, ctx) else {
            return;
        };
        if engine.event_record(start, stream).is_err() {
            self.give_event(ctx, start);
            return;
        }
        let id = self.next_span;
        self.next_span += 1;
        self.spans.push(GrantSpan {
            id,
            grant,
            ctx,
            start,
            span_ns: 0,
            reported_ns: 0,
            released: false,
            pending: 0,
            closed: false,
        });
    }

    /// Ends the held grant: reports the GPU time measured so far (the rest
    /// follows as `Charge` when its markers complete).
    fn release(&mut self, shared: &Arc<Shared>, engine: &mut dyn Engine, more: bool) {
        self.finish(shared, engine, Finish::Release { more });
    }

    fn finish(&mut self, shared: &Arc<Shared>, engine: &mut dyn Engine, how: Finish) {
        let Some(g) = self.held.take() else { return };
        self.parked = false;
        self.reap(engine, false);
        let mut gpu_ns = 0;
        for s in self.spans.iter_mut().filter(|s| s.grant == g.id) {
            gpu_ns += s.span_ns - s.reported_ns;
            s.reported_ns = s.span_ns;
            s.released = true;
        }
        self.counters.gpu_ns_total.fetch_add(gpu_ns, Ordering::Relaxed);
        tracing::trace!(grant = g.id, gpu_ns, ops = self.held_ops, ?how, "release");
        let mut st = shared.lock();
        if st.parked == Some(g.id) {
            st.parked = None;
        }
        if st.generation == g.generation {
            match how {
                Finish::Release { more } => {
                    shared.send(&mut st, &BackendMsg::Release { grant: g.id, gpu_ns, ops: self.held_ops, more });
                    // A release with `more` is a demand; one without ends any.
                    st.demanding = more;
                }
                Finish::ChargeOnly if gpu_ns > 0 => shared.send(&mut st, &BackendMsg::Charge { gpu_ns }),
                Finish::ChargeOnly => {}
            }
        }
        if shared.revoked.load(Ordering::Acquire) == g.id {
            shared.revoked.store(0, Ordering::Release);
        }
        drop(st);
        self.drop_finished_spans(engine);
    }

    /// Retires completed markers (waiting for the oldest if `wait`) and
    /// charges released grants for work that finished late.
    fn reap(&mut self, engine: &mut dyn Engine, wait: bool) {
        let mut late_ns = 0u64;
        let mut first = true;
        while let Some(m) = self.outstanding.front() {
            let done = if wait && first {
                // Spin (the next operation should follow the last one
                // closely), then block. An error (a faulted context) retires
                // the marker too.
                let t = Instant::now();
                loop {
                    match engine.event_query(m.event) {
                        Err(e) if e.0 == protocol::cuda::CUDA_ERROR_NOT_READY => {}
                        _ => break,
                    }
                    if t.elapsed() > MARKER_SPIN {
                        let _ = engine.event_synchronize(m.event);
                        break;
                    }
                    std::hint::spin_loop();
                }
                true
            } else {
                engine.event_query(m.event).is_ok()
            };
            first = false;
            if !done {
                break;
            }
            let Some(m) = self.outstanding.pop_front() else {
                break;
            };
            if let Some(s) = self.spans.iter_mut().find(|s| s.id == m.span) {
                if let Ok(ms) = engine.event_elapsed_ms(s.start, m.event) {
                    let ns = (ms.max(0.0) as f64 * 1e6) as u64;
                    s.span_ns = s.span_ns.max(ns);
                }
                s.pending = s.pending.saturating_sub(1);
                if s.released && s.span_ns > s.reported_ns {
                    late_ns += s.span_ns - s.reported_ns;
                    s.reported_ns = s.span_ns;
                }
            }
            let mut m = m;
            let timed_from = match (m.pre.take(), &self.prev_done) {
                (Some(pre), _) => Some((pre, true)),
                (None, Some(prev)) if prev.ctx == m.ctx && m.chained => Some((prev.event, false)),
                _ => None,
            };
            if let Some((from, own)) = timed_from {
                if let Ok(ms) = engine.event_elapsed_ms(from, m.event) {
                    let ns = ms as f64 * 1e6;
                    if ns > 0.0 {
                        self.op_ns = if self.op_ns == 0.0 { ns } else { 0.8 * self.op_ns + 0.2 * ns };
                    }
                }
                if own {
                    self.give_event(m.ctx, from);
                }
            }
            if let Some(prev) = self.prev_done.take() {
                self.give_event(prev.ctx, prev.event);
            }
            self.prev_done = Some(m);
        }
        self.counters.inflight_ops.store(self.outstanding.len() as u32, Ordering::Relaxed);
        if late_ns > 0 {
            self.counters.gpu_ns_total.fetch_add(late_ns, Ordering::Relaxed);
            if let Some(shared) = &self.shared {
                let mut st = shared.lock();
                shared.send(&mut st, &BackendMsg::Charge { gpu_ns: late_ns });
            }
        }
        self.drop_finished_spans(engine);
    }

    fn drop_finished_spans(&mut self, _engine: &mut dyn Engine) {
        let mut i = 0;
        while i < self.spans.len() {
            if self.spans[i].released && self.spans[i].pending == 0 {
                let s = self.spans.swap_remove(i);
                self.give_event(s.ctx, s.start);
            } else {
                i += 1;
            }
        }
    }

    fn event(&mut self, engine: &mut dyn Engine, ctx: EngineCtx) -> Option<EngineEvent> {
        if let Some(e) = self.free_events.get_mut(&ctx).and_then(|v| v.pop()) {
            return Some(e);
        }
        engine.event_create(0).ok()
    }

    fn give_event(&mut self, ctx: EngineCtx, event: EngineEvent) {
        self.free_events.entry(ctx).or_default().push(event);
    }
}
