//! Each GPU's [`Scheduler`] and memory [`Broker`], fed events in the order
//! they arrive by the connections' reader tasks and the admin API under one
//! short-held mutex, with a timer thread for the scheduler's deadlines and
//! the broker's re-checks. Grants, revocations and memory answers go
//! straight to the backends' writer tasks: the grant path has no thread hop
//! in the daemon and touches no disk.

use crate::memory::{self, Broker, BrokerParams, MemAction, MemoryConfig, SchedInfo, VmMemory};
use protocol::control::{BackendStats, DaemonMsg, MemoryState, VmSettings, CONTROL_VERSION};
use sched::{Action, GpuPolicy, Scheduler, VmParams};
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// The daemon's monotonic clock: nanoseconds since it started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What a GPU's thread is told. `vm` is the connection id the VM registered
/// under; a reconnecting backend gets a new one.
#[derive(Debug)]
pub enum GpuEvent {
    Add {
        vm: u64,
        name: String,
        params: VmParams,
        tx: UnboundedSender<DaemonMsg>,
    },
    Remove {
        vm: u64,
    },
    Demand {
        vm: u64,
    },
    Release {
        vm: u64,
        grant: u64,
        used_ns: u64,
        more: bool,
    },
    Charge {
        vm: u64,
        used_ns: u64,
    },
    SetParams {
        vm: u64,
        params: VmParams,
    },
    SetPolicy {
        policy: GpuPolicy,
    },
    /// `MemNeed`: the VM needs to hold `bytes` resident in all.
    MemNeed {
        vm: u64,
        bytes: u64,
    },
    Evicted {
        vm: u64,
        state: MemoryState,
        moved_bytes: u64,
        ns: u64,
        /// Its smallest allocation that could still move, where it kept
        /// more than asked (0 otherwise).
        least_move_bytes: u64,
    },
    Restored {
        vm: u64,
        state: MemoryState,
        moved_bytes: u64,
        ns: u64,
    },
    /// The backend's periodic figures (the broker keeps their memory part).
    Stats {
        vm: u64,
        stats: Box<BackendStats>,
    },
    /// The GPU's capacity settings changed.
    SetMemory {
        config: MemoryConfig,
    },
    /// Answers with a snapshot of the figures after every earlier event.
    Query {
        reply: mpsc::Sender<GpuSnapshot>,
    },
    Stop,
}

/// One VM's figures from the scheduler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSnapshot {
    pub runnable: bool,
    pub holding: bool,
    pub share_configured: f64,
    pub share_used: f64,
    pub used_total_ns: u64,
    pub grants: u64,
    pub preemptions: u64,
    pub wait_total_ns: u64,
    pub memory: VmMemory,
}

/// A GPU's memory from the broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuMemory {
    /// `None` where memory is not managed.
    pub capacity_bytes: Option<u64>,
    pub resident_bytes: u64,
    pub evicted_bytes: u64,
}

/// A GPU's figures from the scheduler, by connection id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSnapshot {
    pub holder: Option<String>,
    pub busy_fraction: f64,
    pub vms: HashMap<u64, VmSnapshot>,
    pub memory: GpuMemory,
}

/// Window over which the admin's shares and busy fractions are measured:
/// short enough that a change shows within a few seconds.
pub const WINDOW_NS: u64 = 2_000_000_000;

/// Host RAM that evicted GPU memory takes, per GPU, against the one limit
/// all GPUs share. Each broker publishes its own figure after every event
/// and plans with the others' latest.
#[derive(Debug)]
pub struct SwapLedger {
    limit_bytes: u64,
    used: Mutex<HashMap<String, u64>>,
}

impl SwapLedger {
    pub fn new(limit_bytes: u64) -> SwapLedger {
        SwapLedger { limit_bytes, used: Mutex::new(HashMap::new()) }
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All GPUs together.
    pub fn used_bytes(&self) -> u64 {
        self.lock().values().fold(0, |a, &b| a.saturating_add(b))
    }

    fn others(&self, gpu: &str) -> u64 {
        self.lock().iter().filter(|(g, _)| g.as_str() != gpu).fold(0, |a, (_, &b)| a.saturating_add(b))
    }

    fn set(&self, gpu: &str, bytes: u64) {
        let mut used = self.lock();
        match used.get_mut(gpu) {
            Some(b) => *b = bytes,
            None => {
                used.insert(gpu.to_string(), bytes);
            }
        }
    }
}

/// How a GPU's broker starts.
#[derive(Debug, Clone)]
pub struct MemorySetup {
    pub config: MemoryConfig,
    pub params: BrokerParams,
    pub ledger: Arc<SwapLedger>,
}

impl MemorySetup {
    /// Memory not managed (the simulated GPU without a limit).
    pub fn unmanaged() -> MemorySetup {
        MemorySetup {
            config: MemoryConfig { limit_bytes: None, total_bytes: 0, simulated: true, overcommit_ratio: 1.0 },
            params: BrokerParams { min_residency_ns: memory::DEFAULT_MIN_RESIDENCY_NS, swap_limit_bytes: 0 },
            ledger: Arc::new(SwapLedger::new(0)),
        }
    }
}

/// Why a GPU did not take a VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the daemon is stopping")]
    Stopping,
    /// The VMs' quotas would pass the overcommit ratio; the reason says by
    /// how much and what the admin can do.
    #[error("{0}")]
    Overcommit(String),
}

/// A backend joining a GPU: what its scheduler and broker need.
#[derive(Debug)]
pub struct Join {
    pub vm: u64,
    pub name: String,
    pub params: VmParams,
    pub tx: UnboundedSender<DaemonMsg>,
    pub settings: VmSettings,
    pub quota_bytes: u64,
    pub memory: MemoryState,
    pub reconnect: bool,
}

/// The scheduling policy of a GPU whose default slice is `slice_us`.
pub fn policy(slice_us: u64) -> GpuPolicy {
    GpuPolicy { slice_ns: slice_us.saturating_mul(1000), window_ns: WINDOW_NS, ..GpuPolicy::default() }
}

/// A GPU's scheduler with the connections it sends to. Events are applied
/// by whoever sends them (a connection's reader task, the admin API), under
/// one mutex held for microseconds: the grant path has no thread hop in the
/// daemon. A timer thread calls `tick` at the scheduler's deadlines.
struct Core {
    gpu: String,
    sched: Scheduler,
    broker: Broker,
    ledger: Arc<SwapLedger>,
    /// This GPU's figure in the ledger.
    published_swap: Option<u64>,
    slots: HashMap<u64, Slot>,
    /// The deadline the timer thread sleeps until (None: until woken).
    timer_at: Option<u64>,
    stopped: bool,
}

struct Inner {
    core: Mutex<Core>,
    timer: Condvar,
    clock: Clock,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cloneable handle to one GPU's scheduler.
#[derive(Clone)]
pub struct GpuHandle(Arc<Inner>);

impl std::fmt::Debug for GpuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GpuHandle")
    }
}

/// The GPU's scheduler has stopped (the daemon is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl GpuHandle {
    /// Applies one event and sends the grants, revocations and memory
    /// answers it causes.
    pub fn send(&self, ev: GpuEvent) -> Result<(), Stopped> {
        let mut core = self.0.lock();
        if core.stopped {
            return Err(Stopped);
        }
        if matches!(ev, GpuEvent::Stop) {
            core.stopped = true;
            self.0.timer.notify_all();
            return Ok(());
        }
        self.step(&mut core, ev);
        Ok(())
    }

    fn step(&self, core: &mut Core, ev: GpuEvent) {
        let now = self.0.clock.now_ns();
        let actions = apply(core, ev, now);
        let Core { sched, slots, .. } = &mut *core;
        dispatch(sched, slots, actions, now);
        pump(core, now);
        // Wake the timer only if it now has an earlier deadline to keep.
        if let Some(d) = next_deadline(core) {
            if core.timer_at.is_none_or(|t| d < t) {
                self.0.timer.notify_one();
            }
        }
    }

    /// Registers a backend on this GPU: admits it (the quotas must fit the
    /// overcommit ratio), takes it into the memory books, queues its
    /// `Welcome` on its `tx` and adds it to the scheduler, all under the
    /// GPU's lock so that no grant can overtake the Welcome. `Err` is the
    /// reason to refuse it with.
    pub fn join(&self, j: Join) -> Result<(), JoinError> {
        let mut core = self.0.lock();
        if core.stopped {
            return Err(JoinError::Stopping);
        }
        if let Err(reason) = core.broker.admit(j.quota_bytes) {
            if !j.reconnect {
                return Err(JoinError::Overcommit(reason));
            }
            // It was admitted before the daemon restarted and holds its
            // memory whatever the answer: refusing it would only lose track.
            tracing::warn!(vm = %j.name, "reconnecting over the overcommit ratio: {reason}");
        }
        let now = self.0.clock.now_ns();
        let limit = core.broker.add_vm(j.vm, j.quota_bytes, j.memory, j.reconnect, now);
        if let Some(capacity_bytes) = core.broker.capacity() {
            let limit_bytes = core.broker.vm(j.vm).map_or(0, |m| m.limit_bytes);
            tracing::info!(vm = %j.name, quota_bytes = j.quota_bytes, limit_bytes, capacity_bytes,
                "memory limit at registration");
        }
        let _ =
            j.tx.send(DaemonMsg::Welcome { version: CONTROL_VERSION, settings: j.settings, mem_limit_bytes: limit });
        self.step(&mut core, GpuEvent::Add { vm: j.vm, name: j.name, params: j.params, tx: j.tx });
        Ok(())
    }
}

/// The earlier of the scheduler's deadline and the broker's re-check.
fn next_deadline(core: &Core) -> Option<u64> {
    match (core.sched.next_deadline(), core.broker.next_check()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One GPU's scheduler and its timer thread.
#[derive(Debug)]
pub struct GpuDriver {
    handle: GpuHandle,
    thread: Option<JoinHandle<()>>,
}

impl GpuDriver {
    pub fn spawn(gpu: &str, policy: GpuPolicy, clock: Clock, memory: MemorySetup) -> std::io::Result<GpuDriver> {
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                gpu: gpu.to_string(),
                sched: Scheduler::new(policy),
                broker: Broker::new(gpu, memory.config, memory.params),
                ledger: memory.ledger,
                published_swap: None,
                slots: HashMap::new(),
                timer_at: None,
                stopped: false,
            }),
            timer: Condvar::new(),
            clock,
        });
        let name = format!("sched-{}", gpu.chars().take(9).collect::<String>());
        let gpu = gpu.to_string();
        let t = inner.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || timer(gpu, t))?;
        Ok(GpuDriver { handle: GpuHandle(inner), thread: Some(thread) })
    }

    /// A handle for this GPU's events (connections keep one each).
    pub fn sender(&self) -> GpuHandle {
        self.handle.clone()
    }

    pub fn send(&self, ev: GpuEvent) {
        // Fails only once the scheduler has stopped, at shutdown.
        let _ = self.handle.send(ev);
    }

    /// Stops the timer thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.handle.send(GpuEvent::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks a GPU's scheduler for its figures.
pub fn query(gpu: &GpuHandle, timeout: Duration) -> Option<GpuSnapshot> {
    let (reply, rx) = mpsc::channel();
    gpu.send(GpuEvent::Query { reply }).ok()?;
    rx.recv_timeout(timeout).ok()
}

struct Slot {
    name: String,
    tx: UnboundedSender<DaemonMsg>,
    /// When the VM last asked for or gave back the GPU.
    last_active: u64,
    /// The grant it holds was sent uncontended: the backend may keep it
    /// while idle (parked), so another VM's demand takes it back at once.
    uncontended: Option<u64>,
    /// When it was last granted the GPU (0: never).
    last_granted: u64,
    /// Its settings. The scheduler sees it drained while the broker keeps
    /// it off the GPU for an eviction.
    params: VmParams,
    held_off: bool,
    /// The broker wants it kept off the GPU while it holds a grant: it is,
    /// from the end of the first grant that ends after its turn (grants in a
    /// row, a slice long) is over or with no work left.
    off_after_grant: bool,
    /// When its current turn on the GPU began (its first grant after
    /// another VM's), and the slice of its last grant.
    turn_since: u64,
    slice_ns: u64,
    /// Asked to move memory to host RAM and not done yet: a grant now would
    /// find its backend busy swapping out, the GPU idle meanwhile.
    evicting: bool,
    /// Has memory in host RAM, to bring back before its next grant.
    swapped_out: bool,
    /// The grant (its `last_granted`) a `PrepareEviction` was last decided
    /// for, and the bytes its backend still has prepared: what the last one
    /// said less what evictions moved since.
    notice_for: u64,
    notice_bytes: u64,
}

impl Slot {
    fn sched_params(&self) -> VmParams {
        let off = self.held_off || self.evicting || self.swapped_out;
        VmParams { drained: self.params.drained || off, ..self.params }
    }
}

/// A VM that wanted the GPU this recently still counts as wanting it: the
/// gap between a guest's requests is usually shorter.
const CONTENDED_NS: u64 = 100_000_000;

/// Calls `tick` at each of the scheduler's deadlines (overstaying holders,
/// anti-starvation) and pumps the broker at its re-checks, until the GPU
/// stops.
fn timer(gpu: String, inner: Arc<Inner>) {
    let _span = tracing::info_span!("gpu", gpu = %gpu).entered();
    let mut core = inner.lock();
    while !core.stopped {
        let now = inner.clock.now_ns();
        match next_deadline(&core) {
            Some(d) if d <= now => {
                if core.sched.next_deadline().is_some_and(|d| d <= now) {
                    let actions = core.sched.tick(now);
                    let Core { sched, slots, .. } = &mut *core;
                    dispatch(sched, slots, actions, now);
                }
                pump(&mut core, now);
            }
            Some(d) => {
                core.timer_at = Some(d);
                core =
                    inner.timer.wait_timeout(core, Duration::from_nanos(d - now)).unwrap_or_else(|p| p.into_inner()).0;
            }
            None => {
                core.timer_at = None;
                core = inner.timer.wait(core).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
    tracing::debug!("scheduler stopped");
}

fn apply(core: &mut Core, ev: GpuEvent, now: u64) -> Vec<Action> {
    let Core { sched, slots, broker, .. } = core;
    if let GpuEvent::Demand { vm } | GpuEvent::Release { vm, .. } = ev {
        if let Some(s) = slots.get_mut(&vm) {
            s.last_active = now;
        }
    }
    let memory_of = match &ev {
        GpuEvent::Evicted { vm, .. } | GpuEvent::Restored { vm, .. } | GpuEvent::Stats { vm, .. } => Some(*vm),
        _ => None,
    };
    let answered = matches!(ev, GpuEvent::Evicted { .. });
    let moved = if let GpuEvent::Evicted { moved_bytes, .. } = &ev { *moved_bytes } else { 0 };
    let mut actions = apply_event(sched, slots, broker, ev, now);
    if let Some(vm) = memory_of {
        // A VM with memory in host RAM brings it back before it uses the
        // GPU: granted meanwhile, it would give the grant straight back (and
        // its demand would take the GPU from a holder with work to do).
        let out = broker.vm(vm).is_some_and(|m| m.evicted_bytes > 0);
        if let Some(s) = slots.get_mut(&vm) {
            let was_off = s.sched_params().drained;
            s.swapped_out = out;
            if answered {
                s.evicting = false;
                // The host memory its backend prepared went into this
                // eviction, as far as it moved.
                s.notice_bytes = s.notice_bytes.saturating_sub(moved);
            }
            let off = s.sched_params().drained;
            if off != was_off {
                actions.extend(sched.set_params(vm, s.sched_params(), now));
                if !off && sched.vm_stats(vm, now).is_some_and(|st| st.runnable) {
                    reclaim_parked(sched, slots, vm);
                }
            }
        }
    }
    actions
}

fn apply_event(
    sched: &mut Scheduler,
    slots: &mut HashMap<u64, Slot>,
    broker: &mut Broker,
    ev: GpuEvent,
    now: u64,
) -> Vec<Action> {
    match ev {
        GpuEvent::Demand { vm } => {
            let actions = sched.demand(vm, now);
            reclaim_parked(sched, slots, vm);
            actions
        }
        GpuEvent::Release { vm, grant, used_ns, more } => {
            let mut actions = Vec::new();
            // A backend gives back a contended grant whenever its queue runs
            // dry and asks again a moment later: its turn is the grants in a
            // row that add up to its slice.
            let turn_over = |s: &Slot| !more || now.saturating_sub(s.turn_since) >= s.slice_ns;
            if let Some(s) = slots.get_mut(&vm).filter(|s| s.off_after_grant && turn_over(s)) {
                // Off the GPU from now on, before the release could grant it
                // again; the revoke that draining the holder sends is moot.
                s.off_after_grant = false;
                s.held_off = true;
                tracing::info!(vm = %s.name, "off the GPU until it is evicted: its grant ended");
                actions = sched.set_params(vm, s.sched_params(), now);
                actions.retain(|a| !matches!(a, Action::Revoke { vm: v, .. } if *v == vm));
            }
            actions.extend(sched.release(vm, grant, used_ns, more, now));
            actions
        }
        GpuEvent::Charge { vm, used_ns } => {
            sched.charge(vm, used_ns, now);
            Vec::new()
        }
        GpuEvent::Add { vm, name, params, tx } => {
            let slot = Slot {
                name,
                tx,
                last_active: 0,
                uncontended: None,
                last_granted: 0,
                params,
                held_off: false,
                off_after_grant: false,
                turn_since: 0,
                slice_ns: 0,
                evicting: false,
                swapped_out: false,
                notice_for: 0,
                notice_bytes: 0,
            };
            slots.insert(vm, slot);
            sched.add_vm(vm, params, now)
        }
        GpuEvent::Remove { vm } => {
            let actions = sched.remove_vm(vm, now);
            slots.remove(&vm);
            broker.remove_vm(vm);
            actions
        }
        GpuEvent::SetParams { vm, params } => match slots.get_mut(&vm) {
            Some(s) => {
                s.params = params;
                sched.set_params(vm, s.sched_params(), now)
            }
            None => sched.set_params(vm, params, now),
        },
        GpuEvent::SetPolicy { policy } => sched.set_policy(policy, now),
        GpuEvent::MemNeed { vm, bytes } => {
            if let Some(s) = slots.get(&vm) {
                tracing::debug!(vm = %s.name, bytes, "memory needed");
            }
            broker.mem_need(vm, bytes);
            Vec::new()
        }
        GpuEvent::Evicted { vm, state, moved_bytes, ns, least_move_bytes } => {
            // (Its `evicting` ends in `apply`, with its memory in host RAM.)
            broker.least_move(vm, least_move_bytes);
            let asked = broker.evicted(vm, state, moved_bytes, ns, now);
            if let Some(s) = slots.get(&vm) {
                if let Some(asked) = asked.filter(|&t| state.resident_bytes > t) {
                    // Less than a step over is an allocation that would have
                    // passed what host RAM was set aside for: routine (the
                    // broker asks again at once).
                    if state.resident_bytes - asked >= broker.eviction_step() {
                        tracing::warn!(vm = %s.name, asked, resident_bytes = state.resident_bytes,
                            "the backend kept more memory resident than it was asked to");
                    } else {
                        tracing::debug!(vm = %s.name, asked, resident_bytes = state.resident_bytes,
                            "the backend kept a little more memory resident than it was asked to");
                    }
                }
                tracing::info!(vm = %s.name, resident_bytes = state.resident_bytes, evicted_bytes = state.evicted_bytes,
                    moved_bytes, ms = ns as f64 / 1e6, "evicted");
            }
            Vec::new()
        }
        GpuEvent::Restored { vm, state, moved_bytes, ns } => {
            broker.restored(vm, state, moved_bytes, ns, now);
            if let Some(s) = slots.get(&vm) {
                let limit = broker.vm(vm).map_or(u64::MAX, |m| m.limit_bytes);
                if state.resident_bytes > limit {
                    tracing::warn!(vm = %s.name, limit_bytes = limit, resident_bytes = state.resident_bytes,
                        "the backend brought back more memory than its limit");
                }
                tracing::debug!(vm = %s.name, resident_bytes = state.resident_bytes, evicted_bytes = state.evicted_bytes,
                    moved_bytes, ms = ns as f64 / 1e6, "restored");
            }
            Vec::new()
        }
        GpuEvent::Stats { vm, stats } => {
            broker.stats(vm, &stats);
            Vec::new()
        }
        GpuEvent::SetMemory { config } => {
            broker.set_config(config);
            tracing::info!(capacity_bytes = ?broker.capacity(), memory_limit_bytes = ?config.limit_bytes,
                overcommit_ratio = config.overcommit_ratio, "memory settings changed");
            Vec::new()
        }
        GpuEvent::Query { reply } => {
            let _ = reply.send(snapshot(sched, slots, broker, now));
            Vec::new()
        }
        GpuEvent::Stop => Vec::new(),
    }
}

/// A holder granted while alone may be sitting idle on its grant (parked):
/// asks for it back, so that `vm`, which wants the GPU, need not wait for
/// the slice to end.
fn reclaim_parked(sched: &Scheduler, slots: &mut HashMap<u64, Slot>, vm: u64) {
    if slots.get(&vm).is_none_or(|s| s.sched_params().drained) {
        return;
    }
    if let Some((holder, grant)) = sched.current_grant() {
        if holder != vm {
            if let Some(s) = slots.get_mut(&holder).filter(|s| s.uncontended == Some(grant)) {
                s.uncontended = None;
                tracing::trace!(vm = %s.name, grant, "revoke an uncontended grant");
                let _ = s.tx.send(DaemonMsg::Revoke { grant });
            }
        }
    }
}

/// Whether another VM on this GPU that may be granted it wants it now or did
/// a moment ago. A VM drained, or kept off the GPU for an eviction or during
/// one, does not count: were it counted, the holder would give back its grant each time
/// its queue ran dry and ask again a moment later, a grant every few
/// milliseconds for nobody's benefit (seen on the sim: thousands of grants a
/// second while a VM was kept off, the holder's throughput halved).
fn contended(sched: &Scheduler, slots: &HashMap<u64, Slot>, vm: u64, now: u64) -> bool {
    slots.iter().filter(|(&other, s)| other != vm && !s.sched_params().drained).any(|(&other, s)| {
        now.saturating_sub(s.last_active) < CONTENDED_NS
            || sched.vm_stats(other, now).is_some_and(|st| st.runnable || st.holding)
    })
}

fn dispatch(sched: &Scheduler, slots: &mut HashMap<u64, Slot>, actions: Vec<Action>, now: u64) {
    for action in actions {
        match action {
            Action::Grant { vm, grant, slice_ns } => {
                let contended = contended(sched, slots, vm, now);
                let previous = slots.iter().max_by_key(|(_, s)| s.last_granted).map(|(&v, _)| v);
                if let Some(s) = slots.get_mut(&vm) {
                    s.uncontended = (!contended).then_some(grant);
                    if previous != Some(vm) || s.last_granted == 0 {
                        s.turn_since = now;
                    }
                    s.slice_ns = slice_ns;
                    s.last_granted = now;
                    tracing::trace!(vm = %s.name, grant, slice_ns, contended, "grant");
                    let _ = s.tx.send(DaemonMsg::Grant { grant, slice_us: slice_ns.div_ceil(1000), contended });
                }
            }
            Action::Revoke { vm, grant } => {
                if let Some(s) = slots.get(&vm) {
                    tracing::trace!(vm = %s.name, grant, "revoke");
                    let _ = s.tx.send(DaemonMsg::Revoke { grant });
                }
            }
        }
    }
}

/// Lets the broker answer what it can after an event, and sends what it
/// decided.
fn pump(core: &mut Core, now: u64) {
    let Core { gpu, sched, broker, ledger, published_swap, slots, .. } = core;
    let actions = {
        let sched: &Scheduler = sched;
        let slots: &HashMap<u64, Slot> = slots;
        // The VM granted last, while it still wants the GPU: a backend with
        // no work queued gives its grant back and asks again a moment later
        // (contended grants come and go every few milliseconds), and in such
        // a gap it must not look like a VM whose turn is over, the first to
        // evict (seen on the sim at the H200's swap rates: the running VM
        // evicted in the middle of its slice, every slice).
        let turn =
            slots.iter().filter(|(_, s)| s.last_granted > 0).max_by_key(|(_, s)| s.last_granted).map(|(&vm, _)| vm);
        let demanding = |vm| {
            slots.get(&vm).is_some_and(|s| s.last_active > 0 && now.saturating_sub(s.last_active) < CONTENDED_NS)
                || sched.vm_stats(vm, now).is_some_and(|st| st.runnable)
        };
        let info = |vm| SchedInfo {
            holding: sched.has_grant_out(vm)
                || (Some(vm) == turn && demanding(vm) && slots.get(&vm).is_some_and(|s| !s.sched_params().drained)),
            demanding: demanding(vm),
            last_granted_ns: slots.get(&vm).map_or(0, |s| s.last_granted),
        };
        let others = if broker.quiet() { 0 } else { ledger.others(gpu) };
        broker.pump(now, &info, others)
    };
    let swap = broker.swap_used();
    if *published_swap != Some(swap) {
        ledger.set(gpu, swap);
        *published_swap = Some(swap);
    }
    for action in actions {
        match action {
            MemAction::Limit { vm, bytes } => {
                if let Some(s) = slots.get(&vm) {
                    tracing::debug!(vm = %s.name, bytes, "memory limit");
                    let _ = s.tx.send(DaemonMsg::MemLimit { bytes });
                }
            }
            MemAction::Denied { vm, bytes, reason } => {
                if let Some(s) = slots.get(&vm) {
                    tracing::info!(vm = %s.name, bytes, "memory denied: {reason}");
                    let _ = s.tx.send(DaemonMsg::MemDenied { bytes, reason });
                }
            }
            MemAction::Evict { vm, resident_max, moves_bytes } => {
                if let Some(s) = slots.get(&vm) {
                    let m = broker.vm(vm).cloned().unwrap_or_default();
                    tracing::info!(vm = %s.name, resident_max, moves_bytes, limit_bytes = m.limit_bytes,
                        resident_bytes = m.resident_bytes, "eviction asked");
                    // Capped at what the plan set host RAM aside for: the
                    // books may be a Stats report behind the backend.
                    let _ = s.tx.send(DaemonMsg::Evict { resident_max, max_move_bytes: moves_bytes });
                }
                if moves_bytes > 0 {
                    withdraw_notices(broker, slots, vm, ledger.others(gpu));
                }
                if let Some(s) = slots.get_mut(&vm).filter(|s| moves_bytes > 0 && !s.evicting) {
                    // Off the GPU until the eviction is done (seen on the
                    // sim: a VM granted as its 3 s swap-out began, nobody
                    // on the GPU meanwhile).
                    s.evicting = true;
                    let acts = sched.set_params(vm, s.sched_params(), now);
                    dispatch(sched, slots, acts, now);
                }
            }
            MemAction::Deschedule { vm } | MemAction::Reschedule { vm } => {
                let off = matches!(action, MemAction::Deschedule { .. });
                let Some(s) = slots.get_mut(&vm) else {
                    continue;
                };
                if off && sched.holder() == Some(vm) {
                    // Its slice is not taken from it: revoked now, the GPU
                    // would sit idle while it is evicted, the VMs waiting for
                    // its memory being unable to run before that either
                    // (seen on the sim: the holder revoked as soon as it was
                    // granted, a third of the time with nobody on the GPU).
                    if !s.off_after_grant {
                        s.off_after_grant = true;
                        tracing::info!(vm = %s.name, "to be kept off the GPU once its grant ends: it holds memory \
                            another VM waits for");
                    }
                    continue;
                }
                s.off_after_grant = false;
                if s.held_off == off {
                    continue;
                }
                s.held_off = off;
                tracing::info!(vm = %s.name, "{}", if off {
                    "kept off the GPU until it is evicted: it holds memory another VM waits for"
                } else {
                    "back on the GPU"
                });
                let params = s.sched_params();
                let acts = sched.set_params(vm, params, now);
                dispatch(sched, slots, acts, now);
                if !off && sched.vm_stats(vm, now).is_some_and(|st| st.runnable) {
                    reclaim_parked(sched, slots, vm);
                }
            }
        }
    }
    notice_likely_eviction(sched, broker, slots);
}

/// Tells the VM just granted the GPU how much of its memory is likely to be
/// evicted when its grant ends (other VMs wait with memory in host RAM), so
/// that its backend pins host memory for it during the grant: an eviction
/// into memory pinned beforehand copies at the full rate, one that pins as
/// it goes at half of it at best (registration is serialized within a
/// process: bench/results/h100/prefault.json, register-procs.json).
/// Decided once per grant, sent only when it changes what the backend was
/// last told (a backend's grants come and go every few milliseconds while
/// its queue runs dry); a VM told before and not now is told 0.
fn notice_likely_eviction(sched: &Scheduler, broker: &Broker, slots: &mut HashMap<u64, Slot>) {
    let Some(vm) = sched.holder() else {
        return;
    };
    // Most pumps come within a grant already decided on.
    if slots.get(&vm).is_none_or(|s| s.notice_for == s.last_granted) {
        return;
    }
    // What other backends still hold prepared (a VM told before whose
    // eviction did not come or is under way) counts against host RAM too.
    let prepared = prepared_notices(slots);
    let Some(s) = slots.get_mut(&vm) else {
        return;
    };
    s.notice_for = s.last_granted;
    let bytes = broker.likely_eviction(vm, &prepared);
    if bytes == s.notice_bytes {
        return;
    }
    s.notice_bytes = bytes;
    tracing::debug!(vm = %s.name, bytes, "eviction likely when this grant ends");
    let _ = s.tx.send(DaemonMsg::PrepareEviction { bytes });
}

/// Host RAM that other backends hold for likely evictions goes to an
/// eviction that comes instead, where both would not fit the swap limit:
/// they are told 0 and let it go (on the H200 host with the swap pool, a VM
/// told during the fill held 40 GiB of the pool for a minute, and the VM
/// evicted meanwhile found the pool short and moved only part).
fn withdraw_notices(broker: &Broker, slots: &mut HashMap<u64, Slot>, evicted: u64, swap_others: u64) {
    let prepared = broker.prepared_elsewhere(evicted, &prepared_notices(slots));
    let used = broker.swap_used().saturating_add(swap_others);
    if prepared == 0 || used.saturating_add(prepared) <= broker.swap_limit_bytes() {
        return;
    }
    for (_, s) in slots.iter_mut().filter(|(&v, s)| v != evicted && s.notice_bytes > 0) {
        tracing::info!(vm = %s.name, bytes = s.notice_bytes, "host RAM held for a likely eviction withdrawn: another \
            VM's eviction needs it");
        s.notice_bytes = 0;
        let _ = s.tx.send(DaemonMsg::PrepareEviction { bytes: 0 });
    }
}

/// Each VM still told to prepare for a likely eviction, with the bytes.
fn prepared_notices(slots: &HashMap<u64, Slot>) -> Vec<(u64, u64)> {
    slots.iter().filter(|(_, s)| s.notice_bytes > 0).map(|(&v, s)| (v, s.notice_bytes)).collect()
}

fn snapshot(sched: &Scheduler, slots: &HashMap<u64, Slot>, broker: &Broker, now: u64) -> GpuSnapshot {
    let g = sched.gpu_stats(now);
    let vms = slots
        .keys()
        .filter_map(|&vm| {
            let s = sched.vm_stats(vm, now)?;
            Some((
                vm,
                VmSnapshot {
                    runnable: s.runnable,
                    holding: s.holding,
                    share_configured: s.share_configured,
                    share_used: s.share_used,
                    used_total_ns: s.used_total_ns,
                    grants: s.grants,
                    preemptions: s.preemptions,
                    wait_total_ns: s.wait_total_ns,
                    memory: broker.vm(vm).cloned().unwrap_or_default(),
                },
            ))
        })
        .collect();
    GpuSnapshot {
        holder: g.holder.and_then(|vm| slots.get(&vm)).map(|s| s.name.clone()),
        busy_fraction: g.busy_fraction,
        vms,
        memory: GpuMemory {
            capacity_bytes: broker.capacity(),
            resident_bytes: broker.resident_total(),
            evicted_bytes: broker.evicted_total(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn next(rx: &mut UnboundedReceiver<DaemonMsg>) -> DaemonMsg {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            if let Ok(m) = rx.try_recv() {
                return m;
            }
            assert!(Instant::now() < until, "no message from the scheduler thread");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// A GPU with default slice `slice_us` and two VMs, 1 "a" and 2 "b".
    fn two_vms(slice_us: u64) -> (GpuDriver, UnboundedReceiver<DaemonMsg>, UnboundedReceiver<DaemonMsg>) {
        let d = GpuDriver::spawn("sim", policy(slice_us), Clock::new(), MemorySetup::unmanaged()).unwrap();
        let (tx1, rx1) = unbounded_channel();
        let (tx2, rx2) = unbounded_channel();
        d.send(GpuEvent::Add { vm: 1, name: "a".into(), params: VmParams::default(), tx: tx1 });
        d.send(GpuEvent::Add { vm: 2, name: "b".into(), params: VmParams::default(), tx: tx2 });
        (d, rx1, rx2)
    }

    #[test]
    fn grants_follow_demands_and_releases_in_order() {
        let (d, mut rx1, mut rx2) = two_vms(10_000);
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, slice_us, .. } = next(&mut rx1) else { panic!() };
        assert_eq!(slice_us, 10_000);
        d.send(GpuEvent::Demand { vm: 2 });
        let snap = query(&d.sender(), Duration::from_secs(2)).unwrap();
        assert_eq!(snap.holder.as_deref(), Some("a"));
        assert!(snap.vms[&2].runnable && snap.vms[&1].holding);
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: false });
        assert!(matches!(next(&mut rx2), DaemonMsg::Grant { .. }));
        // Removing the holder frees the GPU for the others.
        d.send(GpuEvent::Demand { vm: 1 });
        d.send(GpuEvent::Remove { vm: 2 });
        assert!(matches!(next(&mut rx1), DaemonMsg::Grant { .. }));
        d.stop();
    }

    #[test]
    fn a_holder_that_overstays_is_revoked_by_the_timer() {
        let d = GpuDriver::spawn("sim", policy(1000), Clock::new(), MemorySetup::unmanaged()).unwrap();
        let (tx, mut rx) = unbounded_channel();
        d.send(GpuEvent::Add { vm: 7, name: "slow".into(), params: VmParams::default(), tx });
        d.send(GpuEvent::Demand { vm: 7 });
        let DaemonMsg::Grant { grant, .. } = next(&mut rx) else { panic!() };
        // Nothing else happens: only the deadline timer can send this.
        assert_eq!(next(&mut rx), DaemonMsg::Revoke { grant });
        d.stop();
    }

    #[test]
    fn grants_are_contended_only_while_another_vm_wants_the_gpu() {
        let (d, mut rx1, mut rx2) = two_vms(1_000_000);
        std::thread::sleep(Duration::from_nanos(CONTENDED_NS));
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, contended, .. } = next(&mut rx1) else { panic!() };
        assert!(!contended, "b has never asked for the GPU");
        d.send(GpuEvent::Demand { vm: 2 });
        assert_eq!(next(&mut rx1), DaemonMsg::Revoke { grant });
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: true });
        let DaemonMsg::Grant { grant, contended, .. } = next(&mut rx2) else { panic!() };
        assert!(contended, "a still has work");
        d.send(GpuEvent::Release { vm: 2, grant, used_ns: 1000, more: false });
        let DaemonMsg::Grant { grant, contended, .. } = next(&mut rx1) else { panic!() };
        assert!(contended, "b wanted the GPU a moment ago");
        // Once b has been quiet for a while, a has the GPU to itself.
        std::thread::sleep(Duration::from_nanos(CONTENDED_NS));
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: true });
        let DaemonMsg::Grant { contended, .. } = next(&mut rx1) else { panic!() };
        assert!(!contended);
        d.stop();
    }

    #[test]
    fn a_demand_takes_back_a_grant_given_while_its_holder_was_alone() {
        let (d, mut rx1, mut rx2) = two_vms(1_000_000);
        std::thread::sleep(Duration::from_nanos(CONTENDED_NS));
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, contended: false, .. } = next(&mut rx1) else { panic!() };
        // a may be sitting idle on its grant (parked): b's demand asks for it
        // back at once instead of waiting out a's one-second slice.
        d.send(GpuEvent::Demand { vm: 2 });
        assert_eq!(next(&mut rx1), DaemonMsg::Revoke { grant });
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 0, more: false });
        let DaemonMsg::Grant { contended, .. } = next(&mut rx2) else { panic!() };
        assert!(contended);
        d.stop();
    }

    /// A GPU whose VMs share `cap` bytes, with no residency time, and VMs
    /// "a" (1) and "b" (2) of `quota` each; returns them with their Welcome
    /// limits.
    fn managed(
        cap: u64,
        quota: u64,
    ) -> (GpuDriver, UnboundedReceiver<DaemonMsg>, UnboundedReceiver<DaemonMsg>, Vec<Option<u64>>) {
        let (d, mut rxs, limits) = managed_vms(cap, quota, 2);
        let rx2 = rxs.pop().unwrap();
        (d, rxs.pop().unwrap(), rx2, limits)
    }

    /// A GPU of `cap` bytes overcommitted twice, with `n` VMs 1, 2, ... of
    /// `quota` bytes each: their message channels and welcome limits.
    fn managed_vms(cap: u64, quota: u64, n: u64) -> (GpuDriver, Vec<UnboundedReceiver<DaemonMsg>>, Vec<Option<u64>>) {
        managed_vms_swapping(cap, quota, n, 1 << 40)
    }

    /// As `managed_vms`, with `swap` bytes of host RAM for evicted memory.
    fn managed_vms_swapping(
        cap: u64,
        quota: u64,
        n: u64,
        swap: u64,
    ) -> (GpuDriver, Vec<UnboundedReceiver<DaemonMsg>>, Vec<Option<u64>>) {
        let memory = MemorySetup {
            config: MemoryConfig { limit_bytes: Some(cap), total_bytes: 0, simulated: true, overcommit_ratio: 2.0 },
            params: BrokerParams { min_residency_ns: 0, swap_limit_bytes: swap },
            ledger: Arc::new(SwapLedger::new(swap)),
        };
        let d = GpuDriver::spawn("sim", policy(1_000_000), Clock::new(), memory).unwrap();
        let mut rxs = Vec::new();
        let mut limits = Vec::new();
        for vm in 1..=n {
            let name = format!("vm{vm}");
            let (tx, mut rx) = unbounded_channel();
            let settings = VmSettings {
                class: protocol::control::QosClass::Burstable,
                weight: 100,
                priority: 0,
                slice_us: 1_000_000,
                max_queued_ops: 16,
                drained: false,
            };
            let j = Join {
                vm,
                name,
                params: VmParams::default(),
                tx,
                settings,
                quota_bytes: quota,
                memory: MemoryState::default(),
                reconnect: false,
            };
            d.sender().join(j).unwrap();
            let DaemonMsg::Welcome { mem_limit_bytes, .. } = next(&mut rx) else { panic!() };
            limits.push(mem_limit_bytes);
            rxs.push(rx);
        }
        (d, rxs, limits)
    }

    fn resident(d: &GpuDriver, vm: u64, bytes: u64) {
        let memory = MemoryState { resident_bytes: bytes, evicted_bytes: 0, limit_bytes: bytes };
        d.send(GpuEvent::Stats { vm, stats: Box::new(BackendStats { memory, ..Default::default() }) });
    }

    /// VMs 1 and 2 hold `one` and `two` bytes on the GPU, 3 has `out` in
    /// host RAM.
    fn two_resident_one_out(d: &GpuDriver, one: u64, two: u64, out: u64) {
        resident(d, 1, one);
        resident(d, 2, two);
        let memory = MemoryState { resident_bytes: 0, evicted_bytes: out, limit_bytes: 0 };
        d.send(GpuEvent::Stats { vm: 3, stats: Box::new(BackendStats { memory, ..Default::default() }) });
    }

    /// Room for two of three VMs: 2 ran, then 1 (each giving its grant back
    /// for a moment, out of work, more to come), and 3 wants its memory.
    fn two_ran_and_a_third_needs_memory() -> (GpuDriver, Vec<UnboundedReceiver<DaemonMsg>>) {
        let (d, mut rxs, _) = managed_vms(2000, 1000, 3);
        resident(&d, 1, 1000);
        resident(&d, 2, 1000);
        for vm in [2, 1] {
            d.send(GpuEvent::Demand { vm });
            let DaemonMsg::Grant { grant, .. } = next(&mut rxs[vm as usize - 1]) else { panic!() };
            d.send(GpuEvent::Release { vm, grant, used_ns: 1000, more: false });
        }
        d.send(GpuEvent::MemNeed { vm: 3, bytes: 1000 });
        (d, rxs)
    }

    #[test]
    fn a_vm_granted_while_another_waits_in_host_ram_is_told_to_prepare_its_eviction() {
        let (d, mut rx1, mut rx2, _) = managed(1000, 1000);
        resident(&d, 1, 600);
        let memory = MemoryState { resident_bytes: 0, evicted_bytes: 600, limit_bytes: 0 };
        d.send(GpuEvent::Stats { vm: 2, stats: Box::new(BackendStats { memory, ..Default::default() }) });
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, .. } = next(&mut rx1) else { panic!() };
        assert_eq!(next(&mut rx1), DaemonMsg::PrepareEviction { bytes: 600 }, "2's memory will want 1's");
        // Told once a grant, not again while it holds it.
        d.send(GpuEvent::Demand { vm: 1 });
        std::thread::sleep(Duration::from_millis(30));
        assert!(rx1.try_recv().is_err());
        // 2's memory back in the GPU's room (its guest freed it): the next
        // grant withdraws the hint.
        d.send(GpuEvent::Stats { vm: 2, stats: Box::new(BackendStats::default()) });
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: false });
        d.send(GpuEvent::Demand { vm: 1 });
        assert!(matches!(next(&mut rx1), DaemonMsg::Grant { .. }));
        assert_eq!(next(&mut rx1), DaemonMsg::PrepareEviction { bytes: 0 });
        assert!(rx2.try_recv().is_err(), "2 was told nothing");
        d.stop();
    }

    #[test]
    fn host_ram_another_backend_still_holds_prepared_bounds_the_next_notice() {
        // 1000 bytes of GPU, 1500 of host RAM: 1 and 2 resident (600, 400),
        // 3 with 600 in host RAM.
        let (d, mut rxs, _) = managed_vms_swapping(1000, 600, 3, 1500);
        two_resident_one_out(&d, 600, 400, 600);
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, .. } = next(&mut rxs[0]) else { panic!() };
        assert_eq!(next(&mut rxs[0]), DaemonMsg::PrepareEviction { bytes: 600 });
        // 1 lets go before it is evicted; 2 is granted. All 400 of 2 would
        // go for 3, but 1 still holds 600 prepared: 300 are left.
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: false });
        d.send(GpuEvent::Demand { vm: 2 });
        assert!(matches!(next(&mut rxs[1]), DaemonMsg::Grant { .. }));
        assert_eq!(next(&mut rxs[1]), DaemonMsg::PrepareEviction { bytes: 300 });
        d.stop();
    }

    #[test]
    fn an_eviction_that_comes_instead_takes_back_host_ram_held_for_a_likely_one() {
        // 1000 bytes of GPU, 1200 of host RAM: 1 and 2 resident (500 each),
        // 3 with 500 in host RAM. 1 is granted and told to prepare 500; then
        // 2 is evicted for 3. Its 500 and 1's would not fit beside 3's.
        let (d, mut rxs, _) = managed_vms_swapping(1000, 500, 3, 1200);
        two_resident_one_out(&d, 500, 500, 500);
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, .. } = next(&mut rxs[0]) else { panic!() };
        assert_eq!(next(&mut rxs[0]), DaemonMsg::PrepareEviction { bytes: 500 });
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: false });
        d.send(GpuEvent::MemNeed { vm: 3, bytes: 500 });
        assert_eq!(next(&mut rxs[1]), DaemonMsg::Evict { resident_max: 0, max_move_bytes: 500 });
        assert_eq!(next(&mut rxs[0]), DaemonMsg::PrepareEviction { bytes: 0 }, "1 lets its 500 go");
        d.stop();
    }

    #[test]
    fn memory_prepared_for_an_eviction_under_way_counts_once_against_the_next_notice() {
        // 1000 bytes of GPU, 1500 of host RAM: 1 and 2 resident (500 each),
        // 3 with 500 in host RAM. 2, then 1 are told to prepare 500 each;
        // then 2 is evicted for 3. Its prepared memory is what that eviction
        // fills: 1, granted again meanwhile, keeps its 500 (counted twice,
        // host RAM looked full and 1 was told 0).
        let (d, mut rxs, _) = managed_vms_swapping(1000, 500, 3, 1500);
        two_resident_one_out(&d, 500, 500, 500);
        for (vm, rx) in [(2, 1), (1, 0)] {
            d.send(GpuEvent::Demand { vm });
            let DaemonMsg::Grant { grant, .. } = next(&mut rxs[rx]) else { panic!() };
            assert_eq!(next(&mut rxs[rx]), DaemonMsg::PrepareEviction { bytes: 500 });
            d.send(GpuEvent::Release { vm, grant, used_ns: 1000, more: false });
        }
        d.send(GpuEvent::MemNeed { vm: 3, bytes: 500 });
        assert_eq!(next(&mut rxs[1]), DaemonMsg::Evict { resident_max: 0, max_move_bytes: 500 });
        d.send(GpuEvent::Demand { vm: 1 });
        assert!(matches!(next(&mut rxs[0]), DaemonMsg::Grant { .. }));
        std::thread::sleep(Duration::from_millis(50));
        assert!(rxs[0].try_recv().is_err(), "1's notice was withdrawn");
        d.stop();
    }

    #[test]
    fn the_vm_granted_last_is_not_evicted_in_a_gap_between_its_grants() {
        let (d, mut rxs) = two_ran_and_a_third_needs_memory();
        // 1 is on its turn, between two grants: 2, whose turn is over, goes.
        assert_eq!(next(&mut rxs[1]), DaemonMsg::Evict { resident_max: 0, max_move_bytes: 1000 });
        std::thread::sleep(Duration::from_millis(20));
        assert!(rxs[0].try_recv().is_err(), "1 was asked to give memory on its turn");
        d.stop();
    }

    #[test]
    fn a_vm_is_not_granted_while_it_is_evicted_nor_while_its_memory_is_in_host_ram() {
        let (d, mut rxs) = two_ran_and_a_third_needs_memory();
        assert_eq!(next(&mut rxs[1]), DaemonMsg::Evict { resident_max: 0, max_move_bytes: 1000 });
        // 2 wants the GPU again while its backend swaps out: a grant would
        // only wait for the swap-out, the GPU idle meanwhile.
        d.send(GpuEvent::Demand { vm: 2 });
        std::thread::sleep(Duration::from_millis(50));
        assert!(rxs[1].try_recv().is_err(), "2 was granted while it was evicted");
        let state = MemoryState { resident_bytes: 0, evicted_bytes: 1000, limit_bytes: 0 };
        d.send(GpuEvent::Evicted { vm: 2, state, moved_bytes: 1000, ns: 1000, least_move_bytes: 0 });
        assert_eq!(next(&mut rxs[2]), DaemonMsg::MemLimit { bytes: 1000 });
        // Its memory in host RAM comes back before it may run.
        std::thread::sleep(Duration::from_millis(50));
        assert!(rxs[1].try_recv().is_err(), "2 was granted with its memory in host RAM");
        // With nothing left in host RAM (its guest freed it), it may.
        let memory = MemoryState::default();
        d.send(GpuEvent::Stats { vm: 2, stats: Box::new(BackendStats { memory, ..Default::default() }) });
        assert!(matches!(next(&mut rxs[1]), DaemonMsg::Grant { .. }), "2 is granted once nothing is out");
        d.stop();
    }

    #[test]
    fn a_vm_kept_off_the_gpu_leaves_the_holder_uncontended_until_it_comes_back() {
        let (d, mut rx1, mut rx2, _) = managed(1000, 1000);
        resident(&d, 1, 1000);
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, .. } = next(&mut rx1) else { panic!() };
        d.send(GpuEvent::MemNeed { vm: 2, bytes: 600 });
        assert_eq!(next(&mut rx1), DaemonMsg::Revoke { grant }, "the slice's deadline");
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: true });
        assert_eq!(next(&mut rx1), DaemonMsg::Evict { resident_max: 400, max_move_bytes: 600 });
        // a still wants the GPU but cannot have it: b's grant is its own to
        // keep while idle, not given back each time its queue runs dry.
        d.send(GpuEvent::Demand { vm: 2 });
        let DaemonMsg::Grant { grant, contended, .. } = next(&mut rx2) else { panic!() };
        assert!(!contended, "a is kept off the GPU");
        // Evicted, a still cannot run: its memory in host RAM comes back
        // first, and b keeps its grant meanwhile.
        let state = MemoryState { resident_bytes: 400, evicted_bytes: 600, limit_bytes: 400 };
        d.send(GpuEvent::Evicted { vm: 1, state, moved_bytes: 600, ns: 1000, least_move_bytes: 0 });
        assert_eq!(next(&mut rx2), DaemonMsg::MemLimit { bytes: 600 });
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx2.try_recv().is_err(), "b's grant was taken back for a VM that cannot run");
        // a has nothing left in host RAM (its guest freed it): it can run,
        // and b's idle grant is asked back.
        let memory = MemoryState { resident_bytes: 400, evicted_bytes: 0, limit_bytes: 400 };
        d.send(GpuEvent::Stats { vm: 1, stats: Box::new(BackendStats { memory, ..Default::default() }) });
        assert_eq!(next(&mut rx2), DaemonMsg::Revoke { grant });
        d.stop();
    }

    #[test]
    fn the_vm_on_the_gpu_is_taken_off_it_to_be_evicted_and_comes_back_after() {
        let (d, mut rx1, mut rx2, limits) = managed(1000, 1000);
        assert_eq!(limits, vec![None, Some(0)]);
        let stats = BackendStats {
            memory: MemoryState { resident_bytes: 1000, evicted_bytes: 0, limit_bytes: 1000 },
            ..Default::default()
        };
        d.send(GpuEvent::Stats { vm: 1, stats: Box::new(stats) });
        // a works on the GPU with a long slice: its memory is in use.
        d.send(GpuEvent::Demand { vm: 1 });
        let DaemonMsg::Grant { grant, .. } = next(&mut rx1) else { panic!() };
        d.send(GpuEvent::MemNeed { vm: 2, bytes: 600 });
        // Neither evicted while it holds the GPU nor made to give it back:
        // its slice ends first (b could not run before the eviction anyway)...
        std::thread::sleep(Duration::from_millis(50));
        let (m1, m2) = (rx1.try_recv(), rx2.try_recv());
        assert!(m1.is_err() && m2.is_err(), "nothing before a lets go: {m1:?} {m2:?}");
        // ...and a grant given back in the middle of it (a backend does when
        // its queue runs dry) is not its end.
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: true });
        let DaemonMsg::Grant { grant, .. } = next(&mut rx1) else { panic!("a's turn was cut short") };
        assert_eq!(next(&mut rx1), DaemonMsg::Revoke { grant }, "the slice's deadline");
        d.send(GpuEvent::Release { vm: 1, grant, used_ns: 1000, more: true });
        // Then a is evicted, and not granted again although it has work.
        assert_eq!(next(&mut rx1), DaemonMsg::Evict { resident_max: 400, max_move_bytes: 600 });
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx1.try_recv().is_err(), "a was granted before its eviction");
        let state = MemoryState { resident_bytes: 400, evicted_bytes: 600, limit_bytes: 400 };
        d.send(GpuEvent::Evicted { vm: 1, state, moved_bytes: 600, ns: 1000, least_move_bytes: 0 });
        assert_eq!(next(&mut rx2), DaemonMsg::MemLimit { bytes: 600 });
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx1.try_recv().is_err(), "a was granted with its memory in host RAM");
        let snap = query(&d.sender(), Duration::from_secs(2)).unwrap();
        assert_eq!((snap.vms[&1].memory.evicted_bytes, snap.vms[&2].memory.limit_bytes), (600, 600));
        assert_eq!((snap.memory.capacity_bytes, snap.memory.evicted_bytes), (Some(1000), 600));
        d.stop();
    }
}
