//! Each GPU's [`Scheduler`], fed events in the order they arrive by the
//! connections' reader tasks and the admin API under one short-held mutex,
//! with a timer thread for the scheduler's deadlines. Grants and revocations
//! go straight to the backends' writer tasks: the grant path has no thread
//! hop in the daemon and touches no disk.

use protocol::control::DaemonMsg;
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
}

/// A GPU's figures from the scheduler, by connection id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSnapshot {
    pub holder: Option<String>,
    pub busy_fraction: f64,
    pub vms: HashMap<u64, VmSnapshot>,
}

/// Window over which the admin's shares and busy fractions are measured:
/// short enough that a change shows within a few seconds.
pub const WINDOW_NS: u64 = 2_000_000_000;

/// The scheduling policy of a GPU whose default slice is `slice_us`.
pub fn policy(slice_us: u64) -> GpuPolicy {
    GpuPolicy { slice_ns: slice_us.saturating_mul(1000), window_ns: WINDOW_NS, ..GpuPolicy::default() }
}

/// A GPU's scheduler with the connections it sends to. Events are applied
/// by whoever sends them (a connection's reader task, the admin API), under
/// one mutex held for microseconds: the grant path has no thread hop in the
/// daemon. A timer thread calls `tick` at the scheduler's deadlines.
struct Core {
    sched: Scheduler,
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
    /// Applies one event and sends the grants and revocations it causes.
    pub fn send(&self, ev: GpuEvent) -> Result<(), Stopped> {
        let mut core = self.0.lock();
        if core.stopped {
            return Err(Stopped);
        }
        let now = self.0.clock.now_ns();
        if matches!(ev, GpuEvent::Stop) {
            core.stopped = true;
            self.0.timer.notify_all();
            return Ok(());
        }
        let actions = apply(&mut core, ev, now);
        let Core { sched, slots, .. } = &mut *core;
        dispatch(sched, slots, actions, now);
        // Wake the timer only if it now has an earlier deadline to keep.
        if let Some(d) = core.sched.next_deadline() {
            if core.timer_at.is_none_or(|t| d < t) {
                self.0.timer.notify_one();
            }
        }
        Ok(())
    }
}

/// One GPU's scheduler and its timer thread.
#[derive(Debug)]
pub struct GpuDriver {
    handle: GpuHandle,
    thread: Option<JoinHandle<()>>,
}

impl GpuDriver {
    pub fn spawn(gpu: &str, policy: GpuPolicy, clock: Clock) -> std::io::Result<GpuDriver> {
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                sched: Scheduler::new(policy),
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
}

/// A VM that wanted the GPU this recently still counts as wanting it: the
/// gap between a guest's requests is usually shorter.
const CONTENDED_NS: u64 = 100_000_000;

/// Calls `tick` at each of the scheduler's deadlines (overstaying holders,
/// anti-starvation), until the GPU stops.
fn timer(gpu: String, inner: Arc<Inner>) {
    let _span = tracing::info_span!("gpu", gpu = %gpu).entered();
    let mut core = inner.lock();
    while !core.stopped {
        let now = inner.clock.now_ns();
        match core.sched.next_deadline() {
            Some(d) if d <= now => {
                let actions = core.sched.tick(now);
                let Core { sched, slots, .. } = &mut *core;
                dispatch(sched, slots, actions, now);
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
    let Core { sched, slots, .. } = core;
    if let GpuEvent::Demand { vm } | GpuEvent::Release { vm, .. } = ev {
        if let Some(s) = slots.get_mut(&vm) {
            s.last_active = now;
        }
    }
    match ev {
        GpuEvent::Demand { vm } => {
            let actions = sched.demand(vm, now);
            // A holder granted while alone may be sitting idle on it: ask for
            // it back rather than make this VM wait for the slice to end.
            if let Some((holder, grant)) = sched.current_grant() {
                if holder != vm {
                    if let Some(s) = slots.get_mut(&holder).filter(|s| s.uncontended == Some(grant)) {
                        s.uncontended = None;
                        tracing::trace!(vm = %s.name, grant, "revoke an uncontended grant");
                        let _ = s.tx.send(DaemonMsg::Revoke { grant });
                    }
                }
            }
            actions
        }
        GpuEvent::Release { vm, grant, used_ns, more } => sched.release(vm, grant, used_ns, more, now),
        GpuEvent::Charge { vm, used_ns } => {
            sched.charge(vm, used_ns, now);
            Vec::new()
        }
        GpuEvent::Add { vm, name, params, tx } => {
            slots.insert(vm, Slot { name, tx, last_active: 0, uncontended: None });
            sched.add_vm(vm, params, now)
        }
        GpuEvent::Remove { vm } => {
            let actions = sched.remove_vm(vm, now);
            slots.remove(&vm);
            actions
        }
        GpuEvent::SetParams { vm, params } => sched.set_params(vm, params, now),
        GpuEvent::SetPolicy { policy } => sched.set_policy(policy, now),
        GpuEvent::Query { reply } => {
            let _ = reply.send(snapshot(sched, slots, now));
            Vec::new()
        }
        GpuEvent::Stop => Vec::new(),
    }
}

/// Whether another VM on this GPU wants it now or did a moment ago.
fn contended(sched: &Scheduler, slots: &HashMap<u64, Slot>, vm: u64, now: u64) -> bool {
    slots.iter().filter(|(&other, _)| other != vm).any(|(&other, s)| {
        now.saturating_sub(s.last_active) < CONTENDED_NS
            || sched.vm_stats(other, now).is_some_and(|st| st.runnable || st.holding)
    })
}

fn dispatch(sched: &Scheduler, slots: &mut HashMap<u64, Slot>, actions: Vec<Action>, now: u64) {
    for action in actions {
        match action {
            Action::Grant { vm, grant, slice_ns } => {
                let contended = contended(sched, slots, vm, now);
                if let Some(s) = slots.get_mut(&vm) {
                    s.uncontended = (!contended).then_some(grant);
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

fn snapshot(sched: &Scheduler, slots: &HashMap<u64, Slot>, now: u64) -> GpuSnapshot {
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
                },
            ))
        })
        .collect();
    GpuSnapshot {
        holder: g.holder.and_then(|vm| slots.get(&vm)).map(|s| s.name.clone()),
        busy_fraction: g.busy_fraction,
        vms,
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
        let d = GpuDriver::spawn("sim", policy(slice_us), Clock::new()).unwrap();
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
        let d = GpuDriver::spawn("sim", policy(1000), Clock::new()).unwrap();
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
}
