//! The [`Scheduler`] of one GPU: per-VM state, selection and preemption, as
//! the crate's documentation describes them.

use std::collections::BTreeMap;

use protocol::control::{MAX_SLICE_US, MAX_WEIGHT, MIN_SLICE_US, MIN_WEIGHT};

use crate::usage::UsageWindow;
use crate::{Action, GpuPolicy, GpuStats, Nanos, QosClass, VmId, VmParams, VmStats};

/// Guaranteed and burstable VMs share one virtual time scale, best-effort VMs
/// another: they never compete with each other by virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Shared = 0,
    BestEffort = 1,
}

fn tier(class: QosClass) -> Tier {
    match class {
        QosClass::Guaranteed | QosClass::Burstable => Tier::Shared,
        QosClass::BestEffort => Tier::BestEffort,
    }
}

fn weight(p: &VmParams) -> u32 {
    p.weight.clamp(MIN_WEIGHT, MAX_WEIGHT)
}

#[derive(Debug, Clone)]
struct Vm {
    params: VmParams,
    /// Has work queued and holds no grant.
    runnable: bool,
    /// When `runnable` last became true.
    runnable_since: Nanos,
    vtime: u128,
    /// The VM's last revoked grant, until the VM releases it.
    revoked: Option<u64>,
    usage: UsageWindow,
    used_total_ns: Nanos,
    grants: u64,
    preemptions: u64,
    wait_total_ns: Nanos,
    last_wait_ns: Nanos,
}

#[derive(Debug, Clone, Copy)]
struct Holding {
    vm: VmId,
    grant: u64,
    deadline: Nanos,
    /// An anti-starvation grant to a best-effort VM: not preempted.
    rescue: bool,
}

/// The scheduling state of one GPU.
#[derive(Debug, Clone)]
pub struct Scheduler {
    policy: GpuPolicy,
    vms: BTreeMap<VmId, Vm>,
    holding: Option<Holding>,
    next_grant: u64,
    /// Per tier: the highest value the lowest busy virtual time has reached.
    vclock: [u128; 2],
    /// All VMs' charges, removed VMs' included.
    usage: UsageWindow,
    /// Latest time seen.
    now: Nanos,
}

impl Scheduler {
    pub fn new(policy: GpuPolicy) -> Self {
        Scheduler {
            policy,
            vms: BTreeMap::new(),
            holding: None,
            next_grant: 1,
            vclock: [0; 2],
            usage: UsageWindow::new(policy.window_ns),
            now: 0,
        }
    }

    pub fn policy(&self) -> GpuPolicy {
        self.policy
    }

    /// Changes the GPU's policy. A new slice applies from the next grant; a
    /// new window keeps the figures measured so far.
    pub fn set_policy(&mut self, policy: GpuPolicy, now: Nanos) -> Vec<Action> {
        let now = self.clock(now);
        if policy.window_ns != self.policy.window_ns {
            self.usage.set_window(policy.window_ns);
            for vm in self.vms.values_mut() {
                vm.usage.set_window(policy.window_ns);
            }
        }
        self.policy = policy;
        let mut out = Vec::new();
        self.fill(now, &mut out);
        out
    }

    /// Registers a VM, idle and holding nothing. Adding a VM that exists
    /// changes its settings, as [`set_params`](Self::set_params).
    pub fn add_vm(&mut self, vm: VmId, params: VmParams, now: Nanos) -> Vec<Action> {
        if self.vms.contains_key(&vm) {
            return self.set_params(vm, params, now);
        }
        let now = self.clock(now);
        let state = Vm {
            params,
            runnable: false,
            runnable_since: now,
            vtime: 0,
            revoked: None,
            usage: UsageWindow::new(self.policy.window_ns),
            used_total_ns: 0,
            grants: 0,
            preemptions: 0,
            wait_total_ns: 0,
            last_wait_ns: 0,
        };
        self.vms.insert(vm, state);
        Vec::new()
    }

    /// Forgets a VM (its backend is gone). If it held the grant, the next VM
    /// is granted; no revocation is sent to a backend that is gone.
    pub fn remove_vm(&mut self, vm: VmId, now: Nanos) -> Vec<Action> {
        let now = self.clock(now);
        if self.vms.remove(&vm).is_none() {
            return Vec::new();
        }
        if self.holder() == Some(vm) {
            self.holding = None;
        }
        let mut out = Vec::new();
        self.fill(now, &mut out);
        self.update_vclock();
        out
    }

    /// Changes a VM's settings live. Draining the holder revokes it at once;
    /// a change that makes a runnable VM outrank the holder preempts it as a
    /// demand would; anything else applies from the next selection.
    pub fn set_params(&mut self, vm: VmId, params: VmParams, now: Nanos) -> Vec<Action> {
        let now = self.clock(now);
        let Some(old) = self.vms.get(&vm).map(|v| v.params) else {
            return Vec::new();
        };
        let was_busy = self.is_busy(vm);
        if tier(old.class) != tier(params.class) {
            // Virtual times of the two tiers are not comparable: start over in
            // the new one, one slice behind where it stands.
            let reference = self.reference_vtime(tier(params.class), vm);
            let vslice = self.vslice_of(&params);
            if let Some(v) = self.vms.get_mut(&vm) {
                v.vtime = reference.saturating_sub(vslice);
            }
        }
        if let Some(v) = self.vms.get_mut(&vm) {
            v.params = params;
        }
        if !was_busy && self.is_busy(vm) {
            self.wake(vm);
        }
        let mut out = Vec::new();
        if let Some(h) = self.holding {
            if h.vm == vm {
                let outranked = self.candidates().any(|c| self.should_preempt(h, c, now));
                if params.drained || outranked {
                    self.revoke(now, true, &mut out);
                }
            } else if self.is_candidate(vm) && self.should_preempt(h, vm, now) {
                self.revoke(now, true, &mut out);
            }
        }
        self.fill(now, &mut out);
        self.update_vclock();
        out
    }

    /// `vm` has GPU work queued and holds no grant.
    pub fn demand(&mut self, vm: VmId, now: Nanos) -> Vec<Action> {
        let now = self.clock(now);
        let mut out = Vec::new();
        let Some(v) = self.vms.get_mut(&vm) else {
            return out;
        };
        let holding = self.holding;
        // A holder's demand and a repeated demand change nothing.
        if holding.is_some_and(|h| h.vm == vm) || v.runnable {
            self.fill(now, &mut out);
            return out;
        }
        v.runnable = true;
        v.runnable_since = now;
        if self.is_busy(vm) {
            self.wake(vm);
        }
        if let Some(h) = holding {
            if self.is_candidate(vm) && self.should_preempt(h, vm, now) {
                self.revoke(now, true, &mut out);
            }
        }
        self.fill(now, &mut out);
        self.update_vclock();
        out
    }

    /// `vm` gives back `grant`; its work took `used_ns` of GPU time during the
    /// grant, and `more` says whether it still has work queued. A release of
    /// a grant that is not `vm`'s current one only charges `used_ns` (and a
    /// release of its last revoked grant also says whether it has work left).
    pub fn release(&mut self, vm: VmId, grant: u64, used_ns: Nanos, more: bool, now: Nanos) -> Vec<Action> {
        let now = self.clock(now);
        let mut out = Vec::new();
        if !self.vms.contains_key(&vm) {
            return out;
        }
        self.charge_vm(vm, used_ns, now);
        // While the releasing VM still counts as busy, so that the virtual
        // clock reaches what a VM running alone has used.
        self.update_vclock();
        let holds_it = self.holding.is_some_and(|h| h.vm == vm && h.grant == grant);
        let holds_other = self.holding.is_some_and(|h| h.vm == vm && h.grant != grant);
        if holds_other {
            // A revoked grant given back after the VM got its next one: none
            // of its work is out any more.
            if let Some(v) = self.vms.get_mut(&vm).filter(|v| v.revoked == Some(grant)) {
                v.revoked = None;
            }
        }
        if holds_it {
            self.holding = None;
            if let Some(v) = self.vms.get_mut(&vm) {
                v.runnable = more;
                v.runnable_since = now;
            }
        } else if !holds_other && self.vms.get(&vm).is_some_and(|v| v.revoked == Some(grant)) {
            let was_busy = self.is_busy(vm);
            if let Some(v) = self.vms.get_mut(&vm) {
                v.revoked = None;
                if !more {
                    v.runnable = false;
                } else if !v.runnable {
                    v.runnable = true;
                    v.runnable_since = now;
                }
            }
            if !was_busy && self.is_busy(vm) {
                self.wake(vm);
            }
        }
        self.fill(now, &mut out);
        self.update_vclock();
        out
    }

    /// GPU time of `vm`'s work that completed after its grant was released.
    pub fn charge(&mut self, vm: VmId, used_ns: Nanos, now: Nanos) {
        let now = self.clock(now);
        if self.vms.contains_key(&vm) {
            self.charge_vm(vm, used_ns, now);
            self.update_vclock();
        }
    }

    /// Revokes a holder that overstayed its deadline by more than the grace
    /// time and grants the next VM. Call it at [`next_deadline`](Self::next_deadline).
    pub fn tick(&mut self, now: Nanos) -> Vec<Action> {
        let now = self.clock(now);
        let mut out = Vec::new();
        if let Some(h) = self.holding {
            if now >= h.deadline.saturating_add(self.policy.grace_ns) {
                self.revoke(now, false, &mut out);
            }
        }
        self.fill(now, &mut out);
        self.update_vclock();
        out
    }

    /// When [`tick`](Self::tick) must run next: the holder's deadline plus
    /// the grace time.
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.holding.map(|h| h.deadline.saturating_add(self.policy.grace_ns))
    }

    pub fn holder(&self) -> Option<VmId> {
        self.holding.map(|h| h.vm)
    }

    /// The current grant: holder and grant id.
    pub fn current_grant(&self) -> Option<(VmId, u64)> {
        self.holding.map(|h| (h.vm, h.grant))
    }

    pub fn params(&self, vm: VmId) -> Option<VmParams> {
        self.vms.get(&vm).map(|v| v.params)
    }

    /// Whether `vm` holds a grant or has not yet released one it was asked
    /// to give back: either way its work may still be on the GPU.
    pub fn has_grant_out(&self, vm: VmId) -> bool {
        self.holder() == Some(vm) || self.vms.get(&vm).is_some_and(|v| v.revoked.is_some())
    }

    /// The registered VMs, in id order.
    pub fn vm_ids(&self) -> impl Iterator<Item = VmId> + '_ {
        self.vms.keys().copied()
    }

    pub fn vm_stats(&self, vm: VmId, now: Nanos) -> Option<VmStats> {
        let now = now.max(self.now);
        let v = self.vms.get(&vm)?;
        let holding = self.holder() == Some(vm);
        let w = f64::from(weight(&v.params));
        let busy_weight = |t: Tier| -> f64 {
            self.vms
                .iter()
                .filter(|&(&id, o)| tier(o.params.class) == t && (id == vm || self.is_busy(id)))
                .map(|(_, o)| f64::from(weight(&o.params)))
                .sum()
        };
        let share_configured = if v.params.drained {
            0.0
        } else {
            match tier(v.params.class) {
                Tier::Shared => w / busy_weight(Tier::Shared),
                Tier::BestEffort if self.tier_busy(Tier::Shared) => 0.0,
                Tier::BestEffort => w / busy_weight(Tier::BestEffort),
            }
        };
        let waiting = if v.runnable { now.saturating_sub(v.runnable_since) } else { 0 };
        Some(VmStats {
            runnable: v.runnable,
            holding,
            share_configured,
            reserved_share: self.reserved_share(vm),
            share_used: self.share_used(v, now),
            used_total_ns: v.used_total_ns,
            grants: v.grants,
            preemptions: v.preemptions,
            wait_total_ns: v.wait_total_ns.saturating_add(waiting),
            last_wait_ns: v.last_wait_ns,
        })
    }

    pub fn gpu_stats(&self, now: Nanos) -> GpuStats {
        let now = now.max(self.now);
        let window = self.policy.window_ns.max(1);
        let busy = self.usage.sum(now, window) as f64 / window as f64;
        GpuStats { holder: self.holder(), busy_fraction: busy.min(1.0), runnable: self.candidates().count() }
    }

    // ---- state helpers ----

    fn clock(&mut self, now: Nanos) -> Nanos {
        self.now = self.now.max(now);
        self.now
    }

    fn slice_of(&self, p: &VmParams) -> Nanos {
        p.slice_ns.unwrap_or(self.policy.slice_ns).clamp(MIN_SLICE_US * 1000, MAX_SLICE_US * 1000)
    }

    fn vslice_of(&self, p: &VmParams) -> u128 {
        u128::from(self.slice_of(p)) * 1024 / u128::from(weight(p))
    }

    /// Runnable and allowed a grant.
    fn is_candidate(&self, vm: VmId) -> bool {
        self.vms.get(&vm).is_some_and(|v| v.runnable && !v.params.drained)
    }

    fn candidates(&self) -> impl Iterator<Item = VmId> + '_ {
        self.vms.iter().filter(|(_, v)| v.runnable && !v.params.drained).map(|(&id, _)| id)
    }

    fn is_busy(&self, vm: VmId) -> bool {
        self.holder() == Some(vm) || self.is_candidate(vm)
    }

    fn tier_busy(&self, t: Tier) -> bool {
        self.vms.iter().any(|(&id, v)| tier(v.params.class) == t && self.is_busy(id))
    }

    /// Lowest virtual time of the busy VMs of tier `t` other than `except`.
    fn min_busy_vtime(&self, t: Tier, except: Option<VmId>) -> Option<u128> {
        self.vms
            .iter()
            .filter(|&(&id, v)| Some(id) != except && tier(v.params.class) == t && self.is_busy(id))
            .map(|(_, v)| v.vtime)
            .min()
    }

    /// Where fair sharing stands in tier `t`, as seen by `vm`.
    fn reference_vtime(&self, t: Tier, vm: VmId) -> u128 {
        self.min_busy_vtime(t, Some(vm)).unwrap_or(self.vclock[t as usize])
    }

    /// `vm` became busy: it keeps no credit from its idle time beyond one slice.
    fn wake(&mut self, vm: VmId) {
        let Some(p) = self.vms.get(&vm).map(|v| v.params) else {
            return;
        };
        let floor = self.reference_vtime(tier(p.class), vm).saturating_sub(self.vslice_of(&p));
        if let Some(v) = self.vms.get_mut(&vm) {
            v.vtime = v.vtime.max(floor);
        }
    }

    fn update_vclock(&mut self) {
        for t in [Tier::Shared, Tier::BestEffort] {
            if let Some(m) = self.min_busy_vtime(t, None) {
                let c = &mut self.vclock[t as usize];
                *c = (*c).max(m);
            }
        }
    }

    fn charge_vm(&mut self, vm: VmId, used_ns: Nanos, now: Nanos) {
        let window = self.policy.window_ns.max(1);
        self.usage.add(now, used_ns, window);
        if let Some(v) = self.vms.get_mut(&vm) {
            let w = u128::from(weight(&v.params));
            v.vtime = v.vtime.saturating_add(u128::from(used_ns) * 1024 / w);
            v.used_total_ns = v.used_total_ns.saturating_add(used_ns);
            v.usage.add(now, used_ns, window);
        }
    }

    fn share_used(&self, v: &Vm, now: Nanos) -> f64 {
        let window = self.policy.window_ns.max(1);
        v.usage.sum(now, window) as f64 / window as f64
    }

    fn reserved_share(&self, vm: VmId) -> f64 {
        let Some(v) = self.vms.get(&vm) else {
            return 0.0;
        };
        if v.params.class != QosClass::Guaranteed {
            return 0.0;
        }
        let total: f64 = self
            .vms
            .values()
            .filter(|o| tier(o.params.class) == Tier::Shared)
            .map(|o| f64::from(weight(&o.params)))
            .sum();
        f64::from(weight(&v.params)) / total
    }

    fn under_reservation(&self, vm: VmId, now: Nanos) -> bool {
        self.vms.get(&vm).is_some_and(|v| {
            v.params.class == QosClass::Guaranteed && self.share_used(v, now) < self.reserved_share(vm)
        })
    }

    fn eligible(&self, vm: VmId, min_vtime: u128) -> bool {
        self.vms.get(&vm).is_some_and(|v| v.vtime < min_vtime.saturating_add(self.vslice_of(&v.params)))
    }

    // ---- decisions ----

    /// Whether candidate `c`, runnable now, should take the GPU from holding `h`.
    fn should_preempt(&self, h: Holding, c: VmId, now: Nanos) -> bool {
        if h.rescue || h.vm == c {
            return false;
        }
        let (Some(hv), Some(cv)) = (self.vms.get(&h.vm), self.vms.get(&c)) else {
            return false;
        };
        let (ht, ct) = (tier(hv.params.class), tier(cv.params.class));
        if ht != ct {
            return ct == Tier::Shared;
        }
        if self.under_reservation(h.vm, now) {
            return false;
        }
        if self.under_reservation(c, now) {
            return true;
        }
        cv.params.priority > hv.params.priority && self.min_busy_vtime(ct, None).is_some_and(|m| self.eligible(c, m))
    }

    /// The VM to grant next, and whether it is a rescue grant.
    fn select(&self, now: Nanos) -> Option<(VmId, bool)> {
        let cands: Vec<VmId> = self.candidates().collect();
        let in_tier = |t: Tier| -> Vec<VmId> {
            cands.iter().copied().filter(|id| self.vms.get(id).is_some_and(|v| tier(v.params.class) == t)).collect()
        };
        let shared = in_tier(Tier::Shared);
        if shared.is_empty() {
            return self.pick(&in_tier(Tier::BestEffort)).map(|id| (id, false));
        }
        let max_wait = self.policy.best_effort_max_wait_ns;
        let starved = in_tier(Tier::BestEffort)
            .into_iter()
            .filter_map(|id| self.vms.get(&id).map(|v| (v.runnable_since, id)))
            .filter(|&(since, _)| now.saturating_sub(since) >= max_wait)
            .min();
        if let Some((_, id)) = starved {
            return Some((id, true));
        }
        let reserved: Vec<VmId> = shared.iter().copied().filter(|&id| self.under_reservation(id, now)).collect();
        if let Some(id) = self.pick(&reserved) {
            return Some((id, false));
        }
        self.pick(&shared).map(|id| (id, false))
    }

    /// Among `set`: the highest priority of the eligible VMs, then the lowest
    /// virtual time, then the lowest id.
    fn pick(&self, set: &[VmId]) -> Option<VmId> {
        let min = set.iter().filter_map(|id| self.vms.get(id)).map(|v| v.vtime).min()?;
        set.iter()
            .filter(|&&id| self.eligible(id, min))
            .filter_map(|&id| self.vms.get(&id).map(|v| (v, id)))
            .min_by_key(|&(v, id)| (std::cmp::Reverse(v.params.priority), v.vtime, id))
            .map(|(_, id)| id)
    }

    /// Grants the next VM if nobody holds the grant.
    fn fill(&mut self, now: Nanos, out: &mut Vec<Action>) {
        if self.holding.is_some() {
            return;
        }
        let Some((vm, rescue)) = self.select(now) else {
            return;
        };
        let Some(p) = self.vms.get(&vm).map(|v| v.params) else {
            return;
        };
        let slice_ns = self.slice_of(&p);
        let grant = self.next_grant;
        self.next_grant += 1;
        if let Some(v) = self.vms.get_mut(&vm) {
            let wait = now.saturating_sub(v.runnable_since);
            v.runnable = false;
            v.grants += 1;
            v.last_wait_ns = wait;
            v.wait_total_ns = v.wait_total_ns.saturating_add(wait);
        }
        self.holding = Some(Holding { vm, grant, deadline: now.saturating_add(slice_ns), rescue });
        out.push(Action::Grant { vm, grant, slice_ns });
    }

    /// Revokes the current grant. `still_runnable`: the VM keeps its place
    /// among the runnable VMs (preemption, drain); otherwise it waits for its
    /// own release (overstay).
    fn revoke(&mut self, now: Nanos, still_runnable: bool, out: &mut Vec<Action>) {
        let Some(h) = self.holding.take() else {
            return;
        };
        if let Some(v) = self.vms.get_mut(&h.vm) {
            v.revoked = Some(h.grant);
            v.preemptions += 1;
            v.runnable = still_runnable;
            v.runnable_since = now;
        }
        out.push(Action::Revoke { vm: h.vm, grant: h.grant });
        // The revoked VM is not a candidate for this grant: a preemption
        // means someone else should run, and an overstayer is not runnable.
        let revoked = self.vms.get_mut(&h.vm).map(|v| std::mem::replace(&mut v.runnable, false));
        self.fill(now, out);
        if let (Some(was), Some(v)) = (revoked, self.vms.get_mut(&h.vm)) {
            v.runnable = was;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const S: Nanos = 1_000_000_000;

    fn vm(class: QosClass, weight: u32, priority: i32) -> VmParams {
        VmParams { class, weight, priority, ..VmParams::default() }
    }

    fn burstable() -> VmParams {
        VmParams::default()
    }

    fn granted(actions: &[Action]) -> Option<(VmId, u64)> {
        actions.iter().find_map(|a| match *a {
            Action::Grant { vm, grant, .. } => Some((vm, grant)),
            Action::Revoke { .. } => None,
        })
    }

    /// A small deterministic generator, so the test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn random_operations_never_break_the_grant_rules() {
        let classes = QosClass::ALL;
        let mut rng = Lcg(7);
        let mut s = Scheduler::new(GpuPolicy::default());
        let mut now: Nanos = 0;
        let mut last_grant = 0;
        let mut issued: Vec<u64> = Vec::new();
        for step in 0..20_000 {
            now += rng.next(3 * MS);
            let id = rng.next(6);
            let before = s.current_grant();
            let params = VmParams {
                class: classes[rng.next(3) as usize],
                weight: rng.next(5) as u32,
                priority: rng.next(5) as i32 - 2,
                slice_ns: if rng.next(4) == 0 { Some(rng.next(20 * MS)) } else { None },
                drained: rng.next(8) == 0,
            };
            let mut holding = before;
            let actions = match rng.next(10) {
                0 => s.add_vm(id, params, now),
                1 => s.set_params(id, params, now),
                2 => {
                    if before.is_some_and(|h| h.0 == id) {
                        holding = None;
                    }
                    s.remove_vm(id, now)
                }
                3 | 4 => s.demand(id, now),
                5 | 6 => {
                    // The holder's real release, mostly; otherwise some grant.
                    let (vm, grant) = match s.current_grant() {
                        Some(g) if rng.next(3) > 0 => g,
                        _ => (id, issued.get(rng.next(issued.len() as u64 + 1) as usize).copied().unwrap_or(999)),
                    };
                    if before == Some((vm, grant)) {
                        holding = None;
                    }
                    s.release(vm, grant, rng.next(15 * MS), rng.next(2) == 0, now)
                }
                7 => {
                    s.charge(id, rng.next(5 * MS), now);
                    Vec::new()
                }
                8 => s.tick(s.next_deadline().unwrap_or(now).max(now)),
                _ => s.tick(now),
            };
            // Revocations name the grant that was current; grants come only
            // when nobody holds one, with fresh increasing ids, to VMs that
            // are registered and not drained, never to the VM just revoked.
            let mut revoked = None;
            for a in &actions {
                match *a {
                    Action::Revoke { vm, grant } => {
                        assert_eq!(holding, Some((vm, grant)), "step {step}: {actions:?}");
                        holding = None;
                        revoked = Some(vm);
                    }
                    Action::Grant { vm, grant, slice_ns } => {
                        assert!(holding.is_none(), "step {step}: grant while {holding:?} holds: {actions:?}");
                        assert!(grant > last_grant, "step {step}");
                        assert_ne!(revoked, Some(vm), "step {step}: {actions:?}");
                        assert!(slice_ns >= MIN_SLICE_US * 1000);
                        let p = s.params(vm).expect("granted VM is registered");
                        assert!(!p.drained, "step {step}: drained VM {vm} granted");
                        last_grant = grant;
                        issued.push(grant);
                        holding = Some((vm, grant));
                    }
                }
            }
            assert_eq!(holding, s.current_grant(), "step {step}");
            // Work-conserving: nobody holds only when nobody can run.
            let gpu = s.gpu_stats(now);
            if s.holder().is_none() {
                assert_eq!(gpu.runnable, 0, "step {step}: idle GPU with runnable VMs");
            }
            assert!((0.0..=1.0).contains(&gpu.busy_fraction));
            for v in s.vm_ids().collect::<Vec<_>>() {
                let st = s.vm_stats(v, now).expect("registered");
                for x in [st.share_configured, st.reserved_share] {
                    assert!((0.0..=1.0).contains(&x), "step {step}: {st:?}");
                }
                assert!(st.share_used >= 0.0 && st.share_used.is_finite());
                assert!(!(st.holding && st.runnable), "step {step}: {st:?}");
            }
        }
        assert!(issued.len() > 1000, "only {} grants", issued.len());
    }

    #[test]
    fn a_vm_waking_on_an_idle_gpu_starts_at_the_virtual_clock() {
        let mut s = Scheduler::new(GpuPolicy::default());
        s.add_vm(1, burstable(), 0);
        s.add_vm(2, burstable(), 0);
        // VM 1 ran alone for 10 s, then went idle.
        let (_, g) = granted(&s.demand(1, 0)).expect("grant");
        assert!(s.release(1, g, 10 * S, false, 10 * S).is_empty());
        // VM 2, which never ran, wakes on the idle GPU; then VM 1 wakes.
        let (_, g) = granted(&s.demand(2, 11 * S)).expect("grant");
        assert!(s.demand(1, 11 * S + MS).is_empty());
        // VM 2 did not bank VM 1's 10 s: they alternate at once.
        let a = s.release(2, g, 10 * MS, true, 11 * S + 10 * MS);
        assert_eq!(granted(&a).map(|g| g.0), Some(1), "{a:?}");
    }

    #[test]
    fn a_revoked_grant_is_out_until_its_release() {
        let mut s = Scheduler::new(GpuPolicy::default());
        s.add_vm(1, burstable(), 0);
        s.add_vm(2, vm(QosClass::Burstable, 1, 5), 0);
        let (_, g1) = granted(&s.demand(1, 0)).expect("grant");
        assert!(s.has_grant_out(1) && !s.has_grant_out(2));
        // Preempted: VM 2 holds the GPU, VM 1's work is still on it.
        let (_, g2) = granted(&s.demand(2, MS)).expect("grant");
        assert!(s.has_grant_out(1) && s.has_grant_out(2));
        s.release(1, g1, MS, true, 2 * MS);
        assert!(!s.has_grant_out(1));
        // Given back late, after the next grant: out no more either.
        let a = s.release(2, g2, MS, false, 3 * MS);
        let (_, g3) = granted(&a).expect("grant");
        let (_, g4) = granted(&s.demand(2, 4 * MS)).expect("grant");
        assert!(s.has_grant_out(1));
        let a = s.release(2, g4, MS, false, 5 * MS);
        let (_, g5) = granted(&a).expect("grant");
        assert_eq!(s.current_grant(), Some((1, g5)));
        s.release(1, g3, MS, true, 6 * MS);
        s.release(1, g5, MS, false, 7 * MS);
        assert!(!s.has_grant_out(1));
    }

    #[test]
    fn a_preempted_vm_that_reports_no_work_left_becomes_idle() {
        let mut s = Scheduler::new(GpuPolicy::default());
        s.add_vm(1, burstable(), 0);
        s.add_vm(2, vm(QosClass::Burstable, 1, 5), 0);
        let (_, g1) = granted(&s.demand(1, 0)).expect("grant");
        let a = s.demand(2, MS);
        assert_eq!(a[0], Action::Revoke { vm: 1, grant: g1 });
        let (_, g2) = granted(&a).expect("grant");
        // Until VM 1 says otherwise it is runnable: its queued work waits.
        assert!(s.vm_stats(1, MS).is_some_and(|v| v.runnable && v.preemptions == 1));
        assert!(s.release(1, g1, MS, false, 2 * MS).is_empty());
        assert!(s.vm_stats(1, 2 * MS).is_some_and(|v| !v.runnable));
        assert!(s.release(2, g2, MS, false, 3 * MS).is_empty());
        assert_eq!(s.holder(), None);
    }

    #[test]
    fn a_holder_that_becomes_best_effort_yields_to_waiting_vms() {
        let mut s = Scheduler::new(GpuPolicy::default());
        s.add_vm(1, burstable(), 0);
        s.add_vm(2, burstable(), 0);
        let (_, g1) = granted(&s.demand(1, 0)).expect("grant");
        assert!(s.demand(2, 0).is_empty());
        let a = s.set_params(1, vm(QosClass::BestEffort, 1, 0), MS);
        assert_eq!(
            a,
            vec![Action::Revoke { vm: 1, grant: g1 }, Action::Grant { vm: 2, grant: g1 + 1, slice_ns: 10 * MS }]
        );
        // A priority change alone waits for the next selection.
        let a = s.set_params(1, vm(QosClass::Burstable, 1, 0), 2 * MS);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn stats_report_configured_and_reserved_shares() {
        let mut s = Scheduler::new(GpuPolicy::default());
        s.add_vm(1, vm(QosClass::Guaranteed, 2, 0), 0);
        s.add_vm(2, burstable(), 0);
        s.add_vm(3, burstable(), 0);
        s.add_vm(4, vm(QosClass::BestEffort, 1, 0), 0);
        s.demand(1, 0);
        s.demand(2, 0);
        s.demand(4, 0);
        let st = |s: &Scheduler, v| s.vm_stats(v, MS).expect("registered");
        assert!((st(&s, 1).share_configured - 2.0 / 3.0).abs() < 1e-9);
        assert!((st(&s, 1).reserved_share - 0.5).abs() < 1e-9);
        assert_eq!(st(&s, 2).reserved_share, 0.0);
        // An idle VM is shown the share it would get if it woke.
        assert!((st(&s, 3).share_configured - 0.25).abs() < 1e-9);
        assert_eq!(st(&s, 4).share_configured, 0.0);
        s.remove_vm(1, MS);
        s.remove_vm(2, MS);
        assert_eq!(s.holder(), Some(4));
        assert_eq!(st(&s, 4).share_configured, 1.0);
        let drained = VmParams { drained: true, ..vm(QosClass::BestEffort, 1, 0) };
        s.set_params(4, drained, MS);
        assert_eq!(st(&s, 4).share_configured, 0.0);
        assert_eq!(s.holder(), None);
    }

    #[test]
    fn time_that_goes_backwards_is_taken_as_the_latest_time() {
        let mut s = Scheduler::new(GpuPolicy::default());
        s.add_vm(1, burstable(), 0);
        let (_, g) = granted(&s.demand(1, 10 * S)).expect("grant");
        assert_eq!(s.next_deadline(), Some(10 * S + 12 * MS));
        assert!(s.tick(0).is_empty());
        s.release(1, g, MS, false, 5 * S);
        assert!(s.vm_stats(1, 0).is_some_and(|v| v.share_used > 0.0));
    }

    #[test]
    fn absurd_reports_neither_overflow_nor_panic() {
        let mut s = Scheduler::new(GpuPolicy { slice_ns: 0, window_ns: 0, ..GpuPolicy::default() });
        s.add_vm(1, VmParams { weight: 0, slice_ns: Some(Nanos::MAX), ..burstable() }, Nanos::MAX - 1);
        s.add_vm(2, burstable(), 0);
        let (_, g) = granted(&s.demand(1, Nanos::MAX)).expect("grant");
        assert_eq!(s.next_deadline(), Some(Nanos::MAX));
        s.charge(1, Nanos::MAX, Nanos::MAX);
        s.demand(2, Nanos::MAX);
        s.release(1, g, Nanos::MAX, true, Nanos::MAX);
        let gpu = s.gpu_stats(Nanos::MAX);
        assert!(gpu.busy_fraction <= 1.0);
        assert!(s.vm_stats(1, Nanos::MAX).is_some_and(|v| v.used_total_ns == Nanos::MAX));
    }
}
