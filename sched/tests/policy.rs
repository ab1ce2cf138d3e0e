//! The scheduling policy under simulated workloads. A small discrete-event
//! simulation plays the backends and the GPU: a granted VM runs on the GPU
//! until its slice ends or its work runs out, then releases with the time it
//! used; a grant reaches its backend `DELAY` after the scheduler issues it;
//! a revoked VM stops at once and releases. Only the holder's work runs.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use sched::{Action, GpuPolicy, Nanos, QosClass, Scheduler, VmId, VmParams};

const US: Nanos = 1_000;
const MS: Nanos = 1_000_000;
const S: Nanos = 1_000_000_000;
/// From the scheduler issuing a grant to the backend's first submission.
const DELAY: Nanos = 50 * US;
const SLICE: Nanos = 10 * MS;

/// What a simulated VM wants from the GPU.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Always has work.
    Saturating,
    /// Has work during `[start + k*(busy+idle), start + k*(busy+idle) + busy)`.
    OnOff { busy: Nanos, idle: Nanos, start: Nanos },
    /// Queues a request of `run` GPU time every `period`, from `period` on.
    Requests { run: Nanos, period: Nanos },
}

impl Load {
    fn on_off(busy: Nanos, idle: Nanos) -> Load {
        Load::OnOff { busy, idle, start: 0 }
    }
}

/// Why a VM was waiting when it got a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitKind {
    /// It had sent `demand`.
    Demand,
    /// It had released with `more` or been revoked with work left.
    Requeue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No work, nothing asked.
    Idle,
    /// Told the scheduler it has work (demand, release with more, revoked).
    Asking { since: Nanos, kind: WaitKind },
    /// A grant is on its way.
    Granted { grant: u64, slice: Nanos },
    /// Running on the GPU under `grant` since `start`.
    Running { grant: u64, start: Nanos },
}

#[derive(Debug, Clone)]
struct SimVm {
    id: VmId,
    load: Load,
    state: State,
    /// Queued GPU time of a `Requests` load.
    pending: Nanos,
    /// GPU busy intervals.
    runs: Vec<(Nanos, Nanos)>,
    /// (time of the grant, wait, why it waited).
    waits: Vec<(Nanos, Nanos, WaitKind)>,
    /// Every grant it got: (time, slice).
    grants: Vec<(Nanos, Nanos)>,
    /// `share_used` below `reserved_share` at each demand, parallel to the
    /// demand waits (guaranteed VMs only).
    under_reservation_at_demand: Vec<bool>,
    pending_under_reservation: Option<bool>,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Deliver { vm: VmId, grant: u64 },
    RunEnd { vm: VmId, grant: u64 },
    Release { vm: VmId, grant: u64, used: Nanos, more: bool },
    Arrival { vm: VmId },
    Phase { vm: VmId },
}

struct Timed {
    at: Nanos,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> Ordering {
        // Earliest first out of the max-heap.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Sim {
    sched: Scheduler,
    now: Nanos,
    vms: Vec<SimVm>,
    events: BinaryHeap<Timed>,
    /// Messages sent at `now`, handled before any later event.
    inbox: VecDeque<Ev>,
    seq: u64,
}

impl Sim {
    fn new(policy: GpuPolicy) -> Sim {
        Sim {
            sched: Scheduler::new(policy),
            now: 0,
            vms: Vec::new(),
            events: BinaryHeap::new(),
            inbox: VecDeque::new(),
            seq: 0,
        }
    }

    /// Adds a VM whose load starts now.
    fn add(&mut self, id: VmId, params: VmParams, load: Load) {
        let actions = self.sched.add_vm(id, params, self.now);
        self.vms.push(SimVm {
            id,
            load,
            state: State::Idle,
            pending: 0,
            runs: Vec::new(),
            waits: Vec::new(),
            grants: Vec::new(),
            under_reservation_at_demand: Vec::new(),
            pending_under_reservation: None,
        });
        self.apply(actions);
        match load {
            Load::Saturating => self.inbox.push_back(Ev::Phase { vm: id }),
            Load::OnOff { start, .. } => self.at(start.max(self.now), Ev::Phase { vm: id }),
            Load::Requests { period, .. } => self.at(self.now + period, Ev::Arrival { vm: id }),
        }
    }

    fn at(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        self.events.push(Timed { at, seq: self.seq, ev });
    }

    fn vm(&mut self, id: VmId) -> &mut SimVm {
        self.vms.iter_mut().find(|v| v.id == id).expect("simulated VM")
    }

    fn get(&self, id: VmId) -> &SimVm {
        self.vms.iter().find(|v| v.id == id).expect("simulated VM")
    }

    /// When the VM's queued work runs out if it runs from `now`
    /// (`now` itself: no work).
    fn work_end(&self, id: VmId) -> Nanos {
        let v = self.get(id);
        match v.load {
            Load::Saturating => Nanos::MAX,
            Load::OnOff { busy, idle, start } => {
                if self.now < start {
                    return self.now;
                }
                let period = busy + idle;
                let k = (self.now - start) / period;
                let end = start + k * period + busy;
                end.max(self.now)
            }
            Load::Requests { .. } => self.now + v.pending,
        }
    }

    fn has_work(&self, id: VmId) -> bool {
        self.work_end(id) > self.now
    }

    /// Runs the simulation until `end`, calling `tick` at the scheduler's deadlines.
    fn run_until(&mut self, end: Nanos) {
        loop {
            if let Some(ev) = self.inbox.pop_front() {
                self.handle(ev);
                continue;
            }
            let next_ev = self.events.peek().map(|t| t.at);
            let next_tick = self.sched.next_deadline();
            let next = match (next_ev, next_tick) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(Nanos::MAX),
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            if next_tick == Some(next) && next_ev.is_none_or(|e| e > next) {
                let actions = self.sched.tick(self.now);
                assert!(!actions.is_empty(), "tick at the deadline did nothing");
                self.apply(actions);
            } else if let Some(t) = self.events.pop() {
                self.handle(t.ev);
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Phase { vm } => {
                if let Load::OnOff { busy, idle, start } = self.get(vm).load {
                    let k = (now - start) / (busy + idle);
                    let period_start = start + k * (busy + idle);
                    // Next change: end of busy, or start of the next period.
                    let next = if now < period_start + busy { period_start + busy } else { period_start + busy + idle };
                    self.at(next, Ev::Phase { vm });
                }
                if self.get(vm).state == State::Idle && self.has_work(vm) {
                    self.send_demand(vm);
                }
            }
            Ev::Arrival { vm } => {
                if let Load::Requests { run, period } = self.get(vm).load {
                    self.vm(vm).pending += run;
                    self.at(now + period, Ev::Arrival { vm });
                }
                if self.get(vm).state == State::Idle {
                    self.send_demand(vm);
                }
            }
            Ev::Deliver { vm, grant } => {
                let State::Granted { grant: g, slice } = self.get(vm).state else {
                    return;
                };
                if g != grant {
                    return;
                }
                for o in &self.vms {
                    assert!(!matches!(o.state, State::Running { .. }), "two VMs on the GPU at {now}");
                }
                let end = self.work_end(vm).min(now + slice);
                self.vm(vm).state = State::Running { grant, start: now };
                if end <= now {
                    self.inbox.push_back(Ev::RunEnd { vm, grant });
                } else {
                    self.at(end, Ev::RunEnd { vm, grant });
                }
            }
            Ev::RunEnd { vm, grant } => {
                let State::Running { grant: g, .. } = self.get(vm).state else {
                    return;
                };
                if g != grant {
                    return;
                }
                let (used, more) = self.stop(vm);
                let actions = self.sched.release(vm, grant, used, more, now);
                self.apply(actions);
            }
            Ev::Release { vm, grant, used, more } => {
                let actions = self.sched.release(vm, grant, used, more, now);
                self.apply(actions);
            }
        }
    }

    fn send_demand(&mut self, vm: VmId) {
        let now = self.now;
        self.vm(vm).state = State::Asking { since: now, kind: WaitKind::Demand };
        let under = self.sched.vm_stats(vm, now).map(|s| s.reserved_share > 0.0 && s.share_used < s.reserved_share);
        self.vm(vm).pending_under_reservation = under;
        let actions = self.sched.demand(vm, now);
        self.apply(actions);
    }

    /// Stops the VM's run: records it and returns (used, more).
    fn stop(&mut self, vm: VmId) -> (Nanos, bool) {
        let now = self.now;
        let used = match self.get(vm).state {
            State::Running { start, .. } => now - start,
            _ => 0,
        };
        let v = self.vm(vm);
        if used > 0 {
            v.runs.push((now - used, now));
        }
        v.pending = v.pending.saturating_sub(used);
        let more = self.has_work(vm);
        self.vm(vm).state = if more { State::Asking { since: now, kind: WaitKind::Requeue } } else { State::Idle };
        (used, more)
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let now = self.now;
        for a in actions {
            match a {
                Action::Grant { vm, grant, slice_ns } => {
                    let Some(v) = self.vms.iter_mut().find(|v| v.id == vm) else {
                        continue;
                    };
                    match v.state {
                        State::Granted { .. } | State::Running { .. } => {
                            panic!("VM {vm} granted twice at {now}")
                        }
                        State::Asking { since, kind } => {
                            v.waits.push((now, now - since, kind));
                            if kind == WaitKind::Demand {
                                let under = v.pending_under_reservation.take().unwrap_or(false);
                                v.under_reservation_at_demand.push(under);
                            }
                        }
                        State::Idle => {}
                    }
                    v.grants.push((now, slice_ns));
                    v.state = State::Granted { grant, slice: slice_ns };
                    self.at(now + DELAY, Ev::Deliver { vm, grant });
                }
                Action::Revoke { vm, grant } => {
                    let holds = match self.vms.iter().find(|v| v.id == vm).map(|v| v.state) {
                        Some(State::Granted { grant: g, .. }) | Some(State::Running { grant: g, .. }) => g == grant,
                        _ => false,
                    };
                    assert!(holds, "revoke of grant {grant} that VM {vm} does not hold");
                    let (used, more) = self.stop(vm);
                    self.inbox.push_back(Ev::Release { vm, grant, used, more });
                }
            }
        }
    }

    /// GPU time `vm` used within `[a, b)`.
    fn used(&self, vm: VmId, a: Nanos, b: Nanos) -> Nanos {
        self.get(vm).runs.iter().map(|&(s, e)| e.min(b).saturating_sub(s.max(a))).sum()
    }

    fn share(&self, vm: VmId, a: Nanos, b: Nanos) -> f64 {
        self.used(vm, a, b) as f64 / (b - a) as f64
    }

    fn busy(&self, a: Nanos, b: Nanos) -> f64 {
        self.vms.iter().map(|v| self.used(v.id, a, b)).sum::<Nanos>() as f64 / (b - a) as f64
    }

    fn waits(&self, vm: VmId, kind: Option<WaitKind>) -> Vec<Nanos> {
        self.get(vm).waits.iter().filter(|w| kind.is_none_or(|k| w.2 == k)).map(|w| w.1).collect()
    }

    fn share_used(&self, vm: VmId) -> f64 {
        self.sched.vm_stats(vm, self.now).expect("registered VM").share_used
    }
}

fn params(weight: u32, priority: i32) -> VmParams {
    VmParams { weight, priority, ..VmParams::default() }
}

fn class(class: QosClass, weight: u32) -> VmParams {
    VmParams { class, weight, ..VmParams::default() }
}

/// The `p`-th percentile (0 to 100) of `xs`.
fn percentile(mut xs: Vec<Nanos>, p: f64) -> Nanos {
    assert!(!xs.is_empty(), "no samples");
    xs.sort_unstable();
    let i = ((xs.len() - 1) as f64 * p / 100.0).round() as usize;
    xs[i]
}

fn assert_near(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!((got - want).abs() <= tolerance, "{what}: {got:.4}, expected {want:.4} +- {tolerance}");
}

// ---- 1. fair share ----

#[test]
fn saturating_vms_share_the_gpu_by_weight() {
    let mut sim = Sim::new(GpuPolicy::default());
    for (id, w) in [(1, 1), (2, 1), (3, 2)] {
        sim.add(id, params(w, 0), Load::Saturating);
    }
    sim.run_until(20 * S);
    for (id, want) in [(1, 0.25), (2, 0.25), (3, 0.5)] {
        assert_near(&format!("VM {id} share over 20 s"), sim.share(id, 0, 20 * S), want, 0.01);
        assert_near(&format!("VM {id} share_used"), sim.share_used(id), want, 0.01);
        assert_near(
            &format!("VM {id} share_used vs measured"),
            sim.share_used(id),
            sim.share(id, 15 * S, 20 * S),
            0.01,
        );
    }
}

// ---- 2. work conservation ----

#[test]
fn an_idle_vms_share_goes_to_the_busy_one() {
    let mut sim = Sim::new(GpuPolicy::default());
    sim.add(1, params(1, 0), Load::on_off(10 * S, 1000 * S));
    sim.add(2, params(1, 0), Load::Saturating);
    sim.run_until(20 * S);
    assert_near("VM 1 share while both busy", sim.share(1, 0, 10 * S), 0.5, 0.01);
    assert!(sim.busy(10 * S, 20 * S) >= 0.99, "GPU busy {:.4} while VM 1 idles", sim.busy(10 * S, 20 * S));
    assert!(sim.share(2, 10 * S, 20 * S) >= 0.99, "VM 2 alone got {:.4}", sim.share(2, 10 * S, 20 * S));
    let gpu = sim.sched.gpu_stats(sim.now);
    assert!(gpu.busy_fraction >= 0.99, "gpu_stats busy {:.4}", gpu.busy_fraction);
}

#[test]
fn a_vm_banks_no_credit_while_idle() {
    let mut sim = Sim::new(GpuPolicy::default());
    sim.add(1, params(1, 0), Load::Saturating);
    // Idle for 10 s while VM 1 runs alone, then saturating.
    sim.add(2, params(1, 0), Load::OnOff { busy: 1000 * S, idle: 0, start: 10 * S });
    sim.run_until(12 * S);
    assert!(sim.share(1, 0, 10 * S) >= 0.99);
    // Sharing resumes at once: VM 2 does not take the GPU for the 10 s it missed.
    assert_near("VM 2 share after waking", sim.share(2, 10 * S, 12 * S), 0.5, 0.01);
    let longest = sim.waits(1, None).into_iter().max().unwrap_or(0);
    assert!(longest <= 2 * SLICE + MS, "VM 1 waited {longest} ns");
}

// ---- 3. priorities buy latency ----

/// A latency-critical VM (200 µs every 5 ms) beside a saturating one.
fn latency_critical_beside_a_hog(lc_priority: i32) -> Sim {
    let mut sim = Sim::new(GpuPolicy::default());
    sim.add(1, params(1, 0), Load::Saturating);
    sim.add(2, params(1, lc_priority), Load::Requests { run: 200 * US, period: 5 * MS });
    sim.run_until(10 * S);
    sim
}

#[test]
fn a_high_priority_latency_critical_vm_preempts_at_once() {
    let sim = latency_critical_beside_a_hog(10);
    let waits = sim.waits(2, Some(WaitKind::Demand));
    assert!(waits.len() > 1500, "{} demands", waits.len());
    assert_eq!(percentile(waits, 99.0), 0, "p99 wait from demand to grant");
    let hog = sim.share(1, 0, 10 * S);
    assert!(hog >= 0.9, "the hog got {hog:.4}");
}

#[test]
fn at_equal_priority_a_latency_critical_vm_waits_up_to_a_slice() {
    let sim = latency_critical_beside_a_hog(0);
    let waits = sim.waits(2, Some(WaitKind::Demand));
    let p99 = percentile(waits.clone(), 99.0);
    let max = waits.iter().copied().max().unwrap_or(0);
    assert!(p99 >= SLICE / 2, "p99 wait {p99} ns: no slice-long waits without priority");
    assert!(max <= SLICE + 2 * DELAY, "longest wait {max} ns exceeds a slice");
    let hog = sim.share(1, 0, 10 * S);
    assert!(hog >= 0.9, "the hog got {hog:.4}");
}

// ---- 4. starvation freedom ----

#[test]
fn a_saturating_high_priority_vm_does_not_starve_a_low_priority_one() {
    let mut sim = Sim::new(GpuPolicy::default());
    sim.add(1, params(1, 20), Load::Saturating);
    sim.add(2, params(1, -20), Load::Saturating);
    sim.run_until(10 * S);
    assert_near("high priority share", sim.share(1, 0, 10 * S), 0.5, 0.02);
    assert_near("low priority share", sim.share(2, 0, 10 * S), 0.5, 0.02);
}

#[test]
fn with_mixed_priorities_every_vm_waits_at_most_n_minus_one_slices() {
    let mut sim = Sim::new(GpuPolicy::default());
    let prios = [0, 5, -3, 10, 2];
    for (i, &p) in prios.iter().enumerate() {
        sim.add(i as VmId + 1, params(1, p), Load::Saturating);
    }
    sim.run_until(10 * S);
    let bound = (prios.len() as Nanos - 1) * SLICE + MS;
    for id in 1..=prios.len() as VmId {
        let longest = sim.waits(id, None).into_iter().max().unwrap_or(0);
        assert!(longest <= bound, "VM {id} waited {longest} ns (bound {bound})");
        assert_near(&format!("VM {id} share"), sim.share(id, 0, 10 * S), 0.2, 0.01);
    }
}

// ---- 5. guaranteed ----

#[test]
fn a_guaranteed_vm_gets_its_reservation_at_once_and_lends_it_when_idle() {
    let mut sim = Sim::new(GpuPolicy::default());
    let (busy, idle) = (700 * MS, 1300 * MS);
    sim.add(1, class(QosClass::Guaranteed, 1), Load::on_off(busy, idle));
    sim.add(2, class(QosClass::Burstable, 1), Load::Saturating);
    sim.add(3, class(QosClass::Burstable, 1), Load::Saturating);
    let end = 20 * S;
    sim.run_until(end);
    assert_near("reserved share", sim.sched.vm_stats(1, end).map_or(0.0, |s| s.reserved_share), 1.0 / 3.0, 1e-9);

    let g = sim.get(1);
    let demand_waits: Vec<(Nanos, bool)> = g
        .waits
        .iter()
        .filter(|w| w.2 == WaitKind::Demand)
        .zip(&g.under_reservation_at_demand)
        .map(|(w, &under)| (w.1, under))
        .collect();
    let under: Vec<Nanos> = demand_waits.iter().filter(|w| w.1).map(|w| w.0).collect();
    assert!(under.len() >= 5, "only {} demands under reservation", under.len());
    assert!(under.iter().all(|&w| w == 0), "waits under reservation: {under:?}");

    // Share over its busy periods, and the others' while it idles.
    let (mut g_used, mut g_time, mut others_used, mut idle_time) = (0, 0, 0, 0);
    let mut t = 0;
    while t + busy + idle <= end {
        g_used += sim.used(1, t, t + busy);
        g_time += busy;
        others_used += sim.used(2, t + busy, t + busy + idle) + sim.used(3, t + busy, t + busy + idle);
        idle_time += idle;
        t += busy + idle;
    }
    let g_share = g_used as f64 / g_time as f64;
    assert!(g_share >= 1.0 / 3.0 - 0.02, "guaranteed share while busy {g_share:.4}");
    let lent = others_used as f64 / idle_time as f64;
    assert!(lent >= 0.98, "the others got {lent:.4} while the guaranteed VM idled");

    // The reservation is measured over the window, so work that comes in
    // bursts still gets it: by the end of each busy period the VM has used
    // its reserved share of the window (fair share alone gives it a third of
    // each burst, about 0.12 of the window).
    let window = GpuPolicy::default().window_ns;
    let mut t = busy;
    while t <= end {
        if t >= window {
            let used = sim.share(1, t - window, t);
            assert!(used >= 1.0 / 3.0 - 0.01, "used {used:.4} of the window ending at {t}");
        }
        t += busy + idle;
    }
}

// ---- 6. best-effort ----

#[test]
fn best_effort_gets_only_anti_starvation_slices_beside_a_saturating_burstable() {
    let policy = GpuPolicy::default();
    let mut sim = Sim::new(policy);
    sim.add(1, class(QosClass::Burstable, 1), Load::Saturating);
    sim.add(2, class(QosClass::BestEffort, 100), Load::Saturating);
    // A burstable VM that demands every 5 ms, often during the rescue slices.
    sim.add(3, class(QosClass::Burstable, 1), Load::Requests { run: 100 * US, period: 5 * MS });
    sim.run_until(20 * S);
    let share = sim.share(2, 0, 20 * S);
    let cap = SLICE as f64 / policy.best_effort_max_wait_ns as f64 + 0.001;
    assert!(share <= cap, "best-effort share {share:.4} above {cap:.4}");
    let grants = sim.get(2).grants.len();
    assert!((3..=4).contains(&grants), "{grants} anti-starvation grants in 20 s");
    let longest = sim.waits(2, None).into_iter().max().unwrap_or(0);
    assert!(longest <= policy.best_effort_max_wait_ns + SLICE + MS, "best-effort waited {longest} ns");
    // Each anti-starvation slice is whole: demands do not preempt it.
    let runs = &sim.get(2).runs;
    assert!(runs.iter().all(|r| r.1 - r.0 == SLICE), "best-effort runs {runs:?}");
}

#[test]
fn best_effort_absorbs_idle_capacity_and_yields_at_once() {
    let mut sim = Sim::new(GpuPolicy::default());
    let (busy, idle) = (100 * MS, 400 * MS);
    sim.add(1, class(QosClass::Burstable, 1), Load::on_off(busy, idle));
    sim.add(2, class(QosClass::BestEffort, 1), Load::Saturating);
    sim.run_until(10 * S);
    let (mut be_used, mut idle_time) = (0, 0);
    let mut t = 0;
    while t + busy + idle <= 10 * S {
        be_used += sim.used(2, t + busy, t + busy + idle);
        idle_time += idle;
        t += busy + idle;
    }
    let be_share = be_used as f64 / idle_time as f64;
    assert!(be_share >= 0.98, "best-effort got {be_share:.4} of the idle time");
    let waits = sim.waits(1, Some(WaitKind::Demand));
    assert!(waits.len() >= 19, "{} demands", waits.len());
    assert!(waits.iter().all(|&w| w == 0), "burstable demand waits {waits:?}");
    assert!(sim.sched.vm_stats(2, sim.now).is_some_and(|s| s.preemptions >= 19));
}

// ---- 7. live changes ----

#[test]
fn a_weight_change_moves_shares_within_a_window() {
    let mut sim = Sim::new(GpuPolicy::default());
    sim.add(1, params(1, 0), Load::Saturating);
    sim.add(2, params(1, 0), Load::Saturating);
    sim.run_until(10 * S);
    assert_near("VM 2 share before", sim.share(2, 5 * S, 10 * S), 0.5, 0.01);
    let actions = sim.sched.set_params(2, params(3, 0), sim.now);
    sim.apply(actions);
    sim.run_until(15 * S);
    assert_near("VM 1 share in the next window", sim.share(1, 10 * S, 15 * S), 0.25, 0.01);
    assert_near("VM 2 share in the next window", sim.share(2, 10 * S, 15 * S), 0.75, 0.01);
    assert_near("VM 2 share_used", sim.share_used(2), 0.75, 0.01);
    let configured = sim.sched.vm_stats(2, sim.now).map_or(0.0, |s| s.share_configured);
    assert_near("VM 2 share_configured", configured, 0.75, 1e-9);
}

#[test]
fn draining_the_holder_revokes_it_at_once_until_resumed() {
    let mut sim = Sim::new(GpuPolicy::default());
    sim.add(1, params(1, 0), Load::Saturating);
    sim.add(2, params(1, 0), Load::Saturating);
    sim.run_until(S);
    let holder = sim.sched.holder().expect("a holder");
    let other = 3 - holder;
    let (_, g) = sim.sched.current_grant().expect("a grant");
    let drained = VmParams { drained: true, ..params(1, 0) };
    let actions = sim.sched.set_params(holder, drained, sim.now);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0], Action::Revoke { vm: holder, grant: g });
    assert!(matches!(actions[1], Action::Grant { vm, .. } if vm == other), "{actions:?}");
    sim.apply(actions);
    let grants_before = sim.get(holder).grants.len();
    let drained_at = sim.now;
    sim.run_until(2 * S);
    assert_eq!(sim.get(holder).grants.len(), grants_before, "a drained VM was granted");
    assert_eq!(sim.used(holder, drained_at, 2 * S), 0);
    assert!(sim.share(other, drained_at, 2 * S) >= 0.99);
    let actions = sim.sched.set_params(holder, params(1, 0), sim.now);
    sim.apply(actions);
    sim.run_until(4 * S);
    assert_near("resumed VM share", sim.share(holder, 2 * S, 4 * S), 0.5, 0.02);
}

#[test]
fn removing_the_holder_grants_the_next_vm() {
    let mut s = Scheduler::new(GpuPolicy::default());
    s.add_vm(1, params(1, 0), 0);
    s.add_vm(2, params(1, 0), 0);
    let a = s.demand(1, 0);
    assert!(matches!(a[..], [Action::Grant { vm: 1, .. }]), "{a:?}");
    assert!(s.demand(2, 1000).is_empty());
    let a = s.remove_vm(1, 2000);
    assert!(matches!(a[..], [Action::Grant { vm: 2, .. }]), "{a:?}");
    assert_eq!(s.holder(), Some(2));
    assert!(s.vm_stats(1, 2000).is_none());
}

// ---- 8. robustness, slice overrides, overstay ----

#[test]
fn stale_duplicate_and_unknown_releases_are_harmless() {
    let mut s = Scheduler::new(GpuPolicy::default());
    s.add_vm(1, params(1, 0), 0);
    s.add_vm(2, params(1, 0), 0);
    let g1 = match s.demand(1, 0)[..] {
        [Action::Grant { grant, .. }] => grant,
        ref a => panic!("{a:?}"),
    };
    assert!(s.demand(2, 10).is_empty());
    // A release of a grant VM 1 never had, from VM 2 for VM 1's grant, from
    // a VM nobody registered, and a charge from nobody: nothing changes
    // hands, the senders are only charged.
    assert!(s.release(1, g1 + 100, 5 * MS, true, 20).is_empty());
    assert!(s.release(2, g1, 5 * MS, true, 30).is_empty());
    assert!(s.release(99, g1, 5 * MS, true, 40).is_empty());
    s.charge(99, 5 * MS, 50);
    assert!(s.demand(99, 60).is_empty());
    assert_eq!(s.holder(), Some(1));
    assert_eq!(s.vm_stats(1, 60).map(|v| v.used_total_ns), Some(5 * MS));
    assert_eq!(s.vm_stats(2, 60).map(|v| v.used_total_ns), Some(5 * MS));
    // The real release hands over once; its duplicate only charges again.
    let a = s.release(1, g1, MS, true, 70);
    assert!(matches!(a[..], [Action::Grant { vm: 2, .. }]), "{a:?}");
    assert!(s.release(1, g1, MS, true, 80).is_empty());
    assert_eq!(s.holder(), Some(2));
    assert_eq!(s.vm_stats(1, 80).map(|v| v.used_total_ns), Some(7 * MS));
    // A demand from the holder grants nothing.
    assert!(s.demand(2, 90).is_empty());
}

#[test]
fn a_vms_own_slice_is_honoured_without_changing_its_share() {
    let mut sim = Sim::new(GpuPolicy::default());
    let short = VmParams { slice_ns: Some(2 * MS), ..params(1, 0) };
    sim.add(1, short, Load::Saturating);
    sim.add(2, params(1, 0), Load::Saturating);
    sim.run_until(10 * S);
    assert!(sim.get(1).grants.iter().all(|g| g.1 == 2 * MS));
    assert!(sim.get(2).grants.iter().all(|g| g.1 == SLICE));
    assert_near("short-slice VM share", sim.share(1, 0, 10 * S), 0.5, 0.02);
    // Its grants last 2 ms: the deadline tick says so.
    let mut s = Scheduler::new(GpuPolicy::default());
    s.add_vm(1, short, 0);
    s.demand(1, 1000);
    assert_eq!(s.next_deadline(), Some(1000 + 2 * MS + GpuPolicy::default().grace_ns));
}

#[test]
fn an_overstaying_holder_is_revoked_at_deadline_plus_grace() {
    let policy = GpuPolicy::default();
    let mut s = Scheduler::new(policy);
    s.add_vm(1, params(1, 0), 0);
    s.add_vm(2, params(1, 0), 0);
    let t0 = 1000;
    let g1 = match s.demand(1, t0)[..] {
        [Action::Grant { grant, .. }] => grant,
        ref a => panic!("{a:?}"),
    };
    assert!(s.demand(2, t0 + 10).is_empty());
    let due = t0 + policy.slice_ns + policy.grace_ns;
    assert_eq!(s.next_deadline(), Some(due));
    assert!(s.tick(t0 + policy.slice_ns).is_empty(), "revoked within the grace time");
    assert!(s.tick(due - 1).is_empty());
    let a = s.tick(due);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0], Action::Revoke { vm: 1, grant: g1 });
    let g2 = match a[1] {
        Action::Grant { vm: 2, grant, .. } => grant,
        other => panic!("{other:?}"),
    };
    assert!(g2 > g1);
    // The overstayer gets nothing until it releases the revoked grant.
    assert!(s.release(2, g2, 5 * MS, false, due + 5 * MS).is_empty());
    assert_eq!(s.holder(), None);
    assert_eq!(s.next_deadline(), None);
    let a = s.release(1, g1, 20 * MS, true, due + 6 * MS);
    assert!(matches!(a[..], [Action::Grant { vm: 1, .. }]), "{a:?}");
    assert_eq!(s.vm_stats(1, due + 6 * MS).map(|v| v.preemptions), Some(1));
}
