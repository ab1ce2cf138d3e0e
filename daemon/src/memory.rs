//! The memory broker of one GPU: how much device memory each VM may hold
//! resident, which VMs to evict to host RAM when one needs more than is
//! free, and whether a new VM fits at all. Pure policy, as `sched` is for
//! time: no I/O, the clock is passed in, and the driver sends what it decides.
//!
//! Capacity `C`, the device memory the VMs share: the GPU's
//! `memory_limit_bytes` when the admin set one; otherwise, on a real GPU, its
//! memory less a reserve for each backend's driver overhead (CUDA context,
//! modules): [`RESERVE_BASE_BYTES`] plus [`RESERVE_PER_VM_BYTES`] per VM
//! registered. The simulated GPU has no overhead and no size of its own:
//! without `memory_limit_bytes` its memory is not managed (every need is
//! granted), nor is a GPU whose size NVML could not tell.
//!
//! The books keep the sum of the VMs' limits within `C`. A VM that needs
//! more than its limit gets room that is free, else room that evictions of
//! other VMs free (the idle before the busy, the least recently granted
//! first, never the VM holding the GPU nor one given memory less than
//! `min_residency` ago), as long as the evicted memory fits in the host RAM
//! set aside for it; needs are served in the order they came.

use protocol::control::{BackendStats, MemoryState};
use std::collections::{BTreeMap, HashSet, VecDeque};

/// A VM's id: the connection id it registered under, as in the scheduler.
pub type VmId = u64;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Device memory a real GPU keeps out of the VMs' reach for the driver: a
/// base, plus a share for every registered VM's backend process.
pub const RESERVE_BASE_BYTES: u64 = GIB;
pub const RESERVE_PER_VM_BYTES: u64 = 512 * MIB;

/// How long a VM keeps memory it was just given before it can be evicted.
pub const DEFAULT_MIN_RESIDENCY_NS: u64 = 1_000_000_000;

/// How often needs that wait on residency times or on the GPU's holder are
/// looked at again.
pub const RECHECK_NS: u64 = 20_000_000;
/// Least resident memory one eviction takes (or all the victim has), unless
/// that is more than a sixteenth of the GPU.
pub const MIN_EVICTION: u64 = GIB;

/// What decides a GPU's capacity and how far it may be overcommitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryConfig {
    /// The admin's `memory_limit_bytes`.
    pub limit_bytes: Option<u64>,
    /// The GPU's memory as NVML reports it (0: unknown).
    pub total_bytes: u64,
    /// The simulated GPU, shared by sim-engine backends.
    pub simulated: bool,
    /// The VMs' quotas may add up to this many times the capacity.
    pub overcommit_ratio: f64,
}

impl MemoryConfig {
    /// The capacity with `vms` VMs registered; `None` where memory is not
    /// managed.
    pub fn capacity(&self, vms: usize) -> Option<u64> {
        if let Some(limit) = self.limit_bytes {
            return Some(limit);
        }
        if self.simulated || self.total_bytes == 0 {
            return None;
        }
        let per_vm = RESERVE_PER_VM_BYTES.saturating_mul(u64::try_from(vms).unwrap_or(u64::MAX));
        Some(self.total_bytes.saturating_sub(RESERVE_BASE_BYTES.saturating_add(per_vm)))
    }
}

/// The daemon-wide settings of every broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerParams {
    /// A VM keeps memory it was given (or brought back) at least this long.
    pub min_residency_ns: u64,
    /// Host RAM that evicted GPU memory may take, all GPUs together.
    pub swap_limit_bytes: u64,
}

/// What the broker needs to know of a VM from the GPU's scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedInfo {
    /// Holds the GPU's grant now: its memory is in use.
    pub holding: bool,
    /// Wants the GPU now or did a moment ago.
    pub demanding: bool,
    /// When it was last granted the GPU (0: never).
    pub last_granted_ns: u64,
}

/// What the broker decided; the driver sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemAction {
    /// `MemLimit`: the VM may hold `bytes` resident.
    Limit { vm: VmId, bytes: u64 },
    /// `MemDenied`: its need cannot be met.
    Denied { vm: VmId, bytes: u64, reason: String },
    /// `Evict`: the VM is to keep at most `resident_max` on the GPU, which
    /// moves about `moves_bytes` to host RAM.
    Evict { vm: VmId, resident_max: u64, moves_bytes: u64 },
    /// The VM holds the GPU and is the one to evict: give it no more grants,
    /// once the one it holds ends, until its eviction is done.
    Deschedule { vm: VmId },
    /// The VM may be granted the GPU again.
    Reschedule { vm: VmId },
}

/// One VM's memory figures, for the admin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmMemory {
    pub quota_bytes: u64,
    /// What it may hold resident.
    pub limit_bytes: u64,
    /// As last reported by its backend.
    pub resident_bytes: u64,
    pub evicted_bytes: u64,
    pub evictions: u64,
    pub restores: u64,
    pub evict_ns_total: u64,
    pub restore_ns_total: u64,
    /// How long its last restore took, if it had one.
    pub last_restore_ns: Option<u64>,
    /// Bytes moved to host RAM and back, as its backend reported them.
    pub evicted_moved_bytes: u64,
    pub restored_moved_bytes: u64,
}

#[derive(Debug, Clone)]
struct Book {
    mem: VmMemory,
    /// The `resident_max` of an `Evict` not yet answered.
    evict_to: Option<u64>,
    /// What that eviction moves to host RAM (counted as used until answered).
    evict_moves: u64,
    /// When it last had its limit raised or its memory brought back.
    resident_since: u64,
    /// Kept off the GPU until it is evicted.
    descheduled: bool,
    /// Its smallest allocation that could move, as its last eviction that
    /// kept more than asked reported it: less moves nothing.
    least_move: u64,
}

impl Book {
    /// Resident memory that counts against its limit (or its eviction's target).
    fn held(&self) -> u64 {
        let cap = self.evict_to.unwrap_or(self.mem.limit_bytes);
        self.mem.resident_bytes.min(cap)
    }

    /// Its data, resident and in host RAM: a need of no more is a restore.
    fn own(&self) -> u64 {
        self.mem.resident_bytes.saturating_add(self.mem.evicted_bytes)
    }

    /// What it holds, or will once a restore under way lands: room its
    /// limit gives its data in host RAM is not unused allowance.
    fn spoken_for(&self) -> u64 {
        self.held().max(self.mem.limit_bytes.min(self.own()))
    }
}

#[derive(Debug, Clone, Copy)]
struct Need {
    vm: VmId,
    bytes: u64,
    /// The other VMs were asked what they really hold (a Stats report may be
    /// a second old) before this need was found to exceed host RAM.
    probed: bool,
}

/// The least an eviction moves (unless it takes all a VM holds): 1 GiB, at
/// most a sixteenth of a GPU of `cap` bytes.
fn eviction_step(cap: u64) -> u64 {
    MIN_EVICTION.min(cap / 16).max(1)
}

/// What an eviction of `t` of a VM's `held` bytes should take, with
/// `room` bytes of host RAM for it: all of them where less than `step`
/// would be left. The backend moves whole allocations and never more than
/// host RAM was set aside for, so a plan that leaves it a remainder smaller
/// than an allocation makes it stop one allocation short, and the VM waiting
/// gets its memory a round later (seen on the H200: after each 19.25 GiB
/// switch a 0.5 GiB eviction and a 0.25 GiB restore, at a fifth of the copy
/// rate). Never more than `room`.
fn take_all_below_step(held: u64, t: u64, room: u64, step: u64) -> u64 {
    let t = if held.saturating_sub(t) < step { held } else { t };
    t.min(room)
}

/// The memory broker of one GPU.
#[derive(Debug, Clone)]
pub struct Broker {
    gpu: String,
    config: MemoryConfig,
    params: BrokerParams,
    vms: BTreeMap<VmId, Book>,
    needs: VecDeque<Need>,
    recheck_at: Option<u64>,
}

impl Broker {
    pub fn new(gpu: &str, config: MemoryConfig, params: BrokerParams) -> Broker {
        Broker { gpu: gpu.to_string(), config, params, vms: BTreeMap::new(), needs: VecDeque::new(), recheck_at: None }
    }

    pub fn config(&self) -> MemoryConfig {
        self.config
    }

    /// A new capacity or ratio; call [`pump`](Self::pump) after it.
    pub fn set_config(&mut self, config: MemoryConfig) {
        self.config = config;
    }

    /// The capacity now; `None` where memory is not managed.
    pub fn capacity(&self) -> Option<u64> {
        self.config.capacity(self.vms.len())
    }

    /// Whether a VM with `quota` may register: the quotas of the VMs on the
    /// GPU, its own included, may add up to `overcommit_ratio` × capacity.
    /// `Err` is the reason to give.
    pub fn admit(&self, quota: u64) -> Result<(), String> {
        let Some(cap) = self.config.capacity(self.vms.len() + 1) else {
            return Ok(());
        };
        let sum = self.vms.values().map(|b| u128::from(b.mem.quota_bytes)).sum::<u128>() + u128::from(quota);
        let ratio = self.config.overcommit_ratio;
        let bound = ratio * cap as f64;
        if sum as f64 <= bound {
            return Ok(());
        }
        let gib = |b: f64| b / GIB as f64;
        Err(format!(
            "memory: the quotas of the VMs on GPU {gpu} would add up to {sum} bytes ({:.2} GiB, this VM's \
             {quota} included), more than overcommit_ratio {ratio} x its capacity of {cap} bytes ({:.2} GiB); \
             raise the GPU's overcommit_ratio or memory_limit_bytes (gpuvisorctl gpu-set {gpu} \
             --overcommit-ratio R or --memory-limit SIZE), or give the VM a smaller quota",
            gib(sum as f64),
            gib(cap as f64),
            gpu = self.gpu,
        ))
    }

    /// Takes a registered VM into the books and returns the `mem_limit_bytes`
    /// of its Welcome (`None`: its whole quota). A VM gets what is free, up
    /// to its quota; one that reconnects keeps the limit it reports where
    /// that fits, and at least the memory it holds.
    pub fn add_vm(&mut self, vm: VmId, quota: u64, reported: MemoryState, reconnect: bool, now: u64) -> Option<u64> {
        self.remove_vm(vm);
        let limit = match self.config.capacity(self.vms.len() + 1) {
            None => quota,
            Some(cap) => {
                let free = cap.saturating_sub(self.limits());
                if reconnect && reported.limit_bytes > 0 {
                    let want = reported.limit_bytes;
                    if want <= free {
                        want
                    } else {
                        // What it holds is on the GPU whatever the books say;
                        // an overshoot is evicted by the next pump.
                        free.max(reported.resident_bytes.min(want))
                    }
                } else {
                    quota.min(free)
                }
            }
        };
        self.vms.insert(
            vm,
            Book {
                mem: VmMemory {
                    quota_bytes: quota,
                    limit_bytes: limit,
                    resident_bytes: reported.resident_bytes,
                    evicted_bytes: reported.evicted_bytes,
                    ..VmMemory::default()
                },
                evict_to: None,
                evict_moves: 0,
                resident_since: now,
                descheduled: false,
                least_move: 0,
            },
        );
        (limit < quota).then_some(limit)
    }

    /// The VM is gone: its memory and its host RAM are free.
    pub fn remove_vm(&mut self, vm: VmId) {
        self.vms.remove(&vm);
        self.needs.retain(|n| n.vm != vm);
    }

    /// `MemNeed`: `vm` needs to hold `bytes` resident in all. A newer need
    /// of the same VM replaces its older one (its backend waits on one at a
    /// time). Answered by [`pump`](Self::pump).
    pub fn mem_need(&mut self, vm: VmId, bytes: u64) {
        if !self.vms.contains_key(&vm) {
            return;
        }
        match self.needs.iter_mut().find(|n| n.vm == vm) {
            Some(n) => n.bytes = bytes,
            None => self.needs.push_back(Need { vm, bytes, probed: false }),
        }
    }

    /// The least an eviction moves on this GPU (see [`MIN_EVICTION`]).
    pub fn eviction_step(&self) -> u64 {
        eviction_step(self.capacity().unwrap_or(0))
    }

    /// What the VM's backend said with its last `Evicted`: the least an
    /// eviction of it must be allowed to move (its smallest allocation that
    /// could move; 0 when it moved all it was asked). Call it before
    /// [`evicted`](Self::evicted).
    pub fn least_move(&mut self, vm: VmId, bytes: u64) {
        if let Some(b) = self.vms.get_mut(&vm) {
            b.least_move = bytes;
        }
    }

    /// `Evicted`: the VM's limit is now what it kept resident. Returns the
    /// `resident_max` that was asked, if an eviction that was to move memory
    /// was under way (not one that only takes back allowance the books
    /// thought unused).
    pub fn evicted(&mut self, vm: VmId, state: MemoryState, moved_bytes: u64, ns: u64, now: u64) -> Option<u64> {
        let step = self.eviction_step();
        let b = self.vms.get_mut(&vm)?;
        let asked = b.evict_to.take();
        let moving = std::mem::take(&mut b.evict_moves) > 0;
        b.mem.resident_bytes = state.resident_bytes;
        b.mem.evicted_bytes = state.evicted_bytes;
        b.mem.limit_bytes = b.mem.limit_bytes.min(state.resident_bytes);
        if moved_bytes > 0 {
            b.mem.evictions += 1;
        }
        b.mem.evict_ns_total = b.mem.evict_ns_total.saturating_add(ns);
        b.mem.evicted_moved_bytes = b.mem.evicted_moved_bytes.saturating_add(moved_bytes);
        let kept = asked.map_or(0, |t| state.resident_bytes.saturating_sub(t));
        if kept > 0 && (moved_bytes == 0 || kept >= step) {
            // It could not give as much as asked: leave it alone a while
            // rather than ask again at once. Less than a step short, having
            // moved what host RAM was set aside for, is an allocation that
            // would have passed that bound, not memory it cannot give (seen
            // on the H200: 768 bytes short, and the VM restoring waited a
            // second for each 8 GiB step).
            b.resident_since = now;
        }
        asked.filter(|_| moving)
    }

    /// `Restored`: the VM brought its evicted memory back.
    pub fn restored(&mut self, vm: VmId, state: MemoryState, moved_bytes: u64, ns: u64, now: u64) {
        let Some(b) = self.vms.get_mut(&vm) else {
            return;
        };
        b.mem.resident_bytes = state.resident_bytes;
        b.mem.evicted_bytes = state.evicted_bytes;
        b.mem.restores += 1;
        b.mem.restore_ns_total = b.mem.restore_ns_total.saturating_add(ns);
        b.mem.last_restore_ns = Some(ns);
        b.mem.restored_moved_bytes = b.mem.restored_moved_bytes.saturating_add(moved_bytes);
        b.resident_since = now;
    }

    /// The backend's periodic figures: where its memory stands, and its
    /// counters (which cover its whole life, not only this connection).
    pub fn stats(&mut self, vm: VmId, stats: &BackendStats) {
        let Some(b) = self.vms.get_mut(&vm) else {
            return;
        };
        b.mem.resident_bytes = stats.memory.resident_bytes;
        b.mem.evicted_bytes = stats.memory.evicted_bytes;
        b.mem.evictions = b.mem.evictions.max(stats.evictions);
        b.mem.restores = b.mem.restores.max(stats.restores);
        b.mem.evict_ns_total = b.mem.evict_ns_total.max(stats.evict_ns_total);
        b.mem.restore_ns_total = b.mem.restore_ns_total.max(stats.restore_ns_total);
    }

    pub fn vm(&self, vm: VmId) -> Option<&VmMemory> {
        self.vms.get(&vm).map(|b| &b.mem)
    }

    /// How much of `vm`'s memory is likely to be evicted when its grant
    /// ends: what the VM with the most in host RAM would need back beyond
    /// the free room (all `vm` holds where less than an eviction step would
    /// be left, as `plan` takes it), as far as `vm` holds it and host RAM
    /// can take it besides what other VMs' backends hold `prepared` for
    /// evictions of their own ((VM, bytes) each). Prepared memory that an
    /// eviction under way is filling is counted once, as that eviction's.
    /// 0 when the GPU is not overcommitted, nobody waits, or it is less than
    /// an eviction step.
    pub fn likely_eviction(&self, vm: VmId, prepared: &[(VmId, u64)]) -> u64 {
        let (Some(cap), Some(b)) = (self.capacity(), self.vms.get(&vm)) else {
            return 0;
        };
        let prepared_elsewhere = self.prepared_elsewhere(vm, prepared);
        let waiting = self.vms.iter().filter(|(&w, _)| w != vm).map(|(_, o)| o.mem.evicted_bytes).max().unwrap_or(0);
        let free = cap.saturating_sub(self.limits());
        let room = self.params.swap_limit_bytes.saturating_sub(self.swap_used().saturating_add(prepared_elsewhere));
        let held = b.held();
        let bytes = take_all_below_step(held, waiting.saturating_sub(free).min(held), room, self.eviction_step());
        if bytes < self.eviction_step() {
            0
        } else {
            bytes
        }
    }

    /// Host RAM that VMs other than `vm` hold `prepared` for likely
    /// evictions, less what their evictions under way already count in
    /// [`swap_used`](Self::swap_used) (the memory they prepared is what those
    /// fill).
    pub fn prepared_elsewhere(&self, vm: VmId, prepared: &[(VmId, u64)]) -> u64 {
        prepared
            .iter()
            .filter(|&&(w, _)| w != vm)
            .map(|&(w, p)| p.saturating_sub(self.vms.get(&w).map_or(0, |o| o.evict_moves)))
            .fold(0, u64::saturating_add)
    }

    /// Host RAM that evicted memory may take, on all GPUs together.
    pub fn swap_limit_bytes(&self) -> u64 {
        self.params.swap_limit_bytes
    }

    /// Host RAM this GPU's VMs take for evicted memory, evictions under way
    /// included.
    pub fn swap_used(&self) -> u64 {
        self.vms.values().map(|b| b.mem.evicted_bytes.saturating_add(b.evict_moves)).fold(0, u64::saturating_add)
    }

    pub fn resident_total(&self) -> u64 {
        self.vms.values().map(|b| b.mem.resident_bytes).fold(0, u64::saturating_add)
    }

    pub fn evicted_total(&self) -> u64 {
        self.vms.values().map(|b| b.mem.evicted_bytes).fold(0, u64::saturating_add)
    }

    /// When [`pump`](Self::pump) must run again although nothing happens:
    /// a need waits on residency times or on the GPU's holder.
    pub fn next_check(&self) -> Option<u64> {
        self.recheck_at
    }

    /// Nothing to do: no need waits, nobody is kept off the GPU and the
    /// limits fit.
    pub fn quiet(&self) -> bool {
        self.needs.is_empty()
            && !self.vms.values().any(|b| b.descheduled)
            && self.capacity().is_none_or(|c| self.limits() <= c)
    }

    fn limits(&self) -> u64 {
        self.vms.values().map(|b| b.mem.limit_bytes).fold(0, u64::saturating_add)
    }

    /// Answers the needs that can be answered and asks for the evictions the
    /// others wait on. Call it after every event. `sched` tells each VM's
    /// standing with the scheduler; `swap_others` is the host RAM the other
    /// GPUs' evicted memory takes.
    pub fn pump(&mut self, now: u64, sched: &dyn Fn(VmId) -> SchedInfo, swap_others: u64) -> Vec<MemAction> {
        let mut out = Vec::new();
        self.recheck_at = None;
        if self.quiet() {
            return out;
        }
        let Some(cap) = self.capacity() else {
            // Not managed: every need is met at once.
            while let Some(need) = self.needs.pop_front() {
                if let Some(b) = self.vms.get_mut(&need.vm) {
                    let bytes = need.bytes.max(b.mem.limit_bytes).max(b.mem.quota_bytes);
                    b.mem.limit_bytes = bytes;
                    b.resident_since = now;
                    out.push(MemAction::Limit { vm: need.vm, bytes });
                }
            }
            self.reschedule(&HashSet::new(), &mut out);
            return out;
        };
        let limits = self.limits();
        let mut avail = cap.saturating_sub(limits);
        // Room that evictions under way will free; it first pays for an
        // overshoot (a smaller capacity, a reconnect over the top).
        let mut in_flight = self
            .vms
            .values()
            .filter_map(|b| Some(b.mem.limit_bytes.saturating_sub(b.evict_to?)))
            .fold(0, u64::saturating_add);
        let overshoot = limits.saturating_sub(cap);
        let paid = overshoot.min(in_flight);
        in_flight -= paid;
        let overshoot = overshoot - paid;
        let mut swap_room = self.params.swap_limit_bytes.saturating_sub(swap_others.saturating_add(self.swap_used()));
        let mut wanted = HashSet::new();
        let mut blocked = false;
        let needy: HashSet<VmId> = self.needs.iter().map(|n| n.vm).collect();
        let next_restore = self.order_restores(sched);
        if overshoot > 0 {
            let mut plan = Plan {
                asker: None,
                ahead: &[],
                needy: &needy,
                now,
                sched,
                swap_room: &mut swap_room,
                wanted: &mut wanted,
            };
            blocked |= self.plan(overshoot, &mut plan, &mut out) > 0;
        }
        let needs: Vec<Need> = self.needs.drain(..).collect();
        let mut ahead: Vec<VmId> = Vec::new();
        for need in needs {
            let Some(b) = self.vms.get_mut(&need.vm) else {
                continue;
            };
            if b.evict_to.is_some() {
                // Its limit is about to change: decide once it has answered.
                self.needs.push_back(need);
                ahead.push(need.vm);
                continue;
            }
            let limit = b.mem.limit_bytes;
            if need.bytes <= limit {
                out.push(MemAction::Limit { vm: need.vm, bytes: limit });
                continue;
            }
            if need.bytes > cap {
                out.push(MemAction::Denied {
                    vm: need.vm,
                    bytes: need.bytes,
                    reason: format!(
                        "{} bytes is more than GPU {} holds for its VMs ({cap} bytes)",
                        need.bytes, self.gpu
                    ),
                });
                continue;
            }
            // A VM bringing its memory back a step at a time is given room
            // for all of it at once where host RAM can take what that
            // evicts: each step evicting a step of another VM leaves every
            // VM part evicted, each restoring in turn (seen on the sim at
            // the H200's swap rates: a quarter of the GPU's time lost to
            // VMs taken off it for a step of another's restore).
            let own = b.own();
            let whole = b.mem.evicted_bytes > 0 && need.bytes <= own && own <= cap;
            let bytes = if whole && self.must_move(need.vm, own, cap) <= swap_room { own } else { need.bytes };
            let Some(b) = self.vms.get_mut(&need.vm) else {
                continue;
            };
            let extra = bytes - limit;
            if extra <= avail {
                // A restore takes all the free room its data fits in, not
                // only the step it asked for: room left free after evictions
                // made for a need since made a step went to a VM whose turn
                // was over, evicted of it again a second later (seen on the
                // H200: 23 GiB evicted, 15 taken back at once, every turn).
                let bytes = if whole { bytes.max(limit.saturating_add(avail).min(own)) } else { bytes };
                let extra = bytes - limit;
                avail -= extra;
                b.mem.limit_bytes = bytes;
                b.resident_since = now;
                out.push(MemAction::Limit { vm: need.vm, bytes });
                continue;
            }
            // Not room enough yet: this need claims what is free and what
            // evictions under way free, so that later needs cannot take it.
            let from_avail = avail;
            let from_flight = (extra - from_avail).min(in_flight);
            let short = extra - from_avail - from_flight;
            if short > 0 {
                let must_move = self.must_move(need.vm, bytes, cap);
                let asker_evicted = self.vms.get(&need.vm).map_or(0, |b| b.mem.evicted_bytes);
                // A VM asking for no more than the data it has (resident and
                // in host RAM) is bringing its own memory back.
                let restore = need.bytes <= self.vms.get(&need.vm).map_or(0, Book::own);
                if restore && asker_evicted > 0 && Some(need.vm) != next_restore {
                    // Restores come back in turn order: a VM whose turn is
                    // not next takes only memory that is free (a step at
                    // least), evicts nobody and holds nobody back. With
                    // every evicted VM bringing its memory back step by step
                    // at once, each step evicting as much of another, the
                    // VMs would otherwise evict each other piecemeal, and a
                    // need that came first would keep the next VM's victim
                    // out of its reach (seen on the sim at the H200's swap
                    // rates: the rotation stalled until the holder's slice
                    // ended).
                    if avail >= eviction_step(cap).min(asker_evicted) {
                        avail -= self.restore_part(need.vm, avail.min(asker_evicted), now, &mut out);
                    }
                    self.needs.push_back(need);
                    continue;
                }
                // Evictions move at least a step (less may fit no allocation
                // and move nothing): host RAM that cannot take one is full.
                let step = eviction_step(cap);
                let over = must_move > swap_room || (must_move > 0 && swap_room < step);
                // A restore also takes what is free at once rather than wait
                // for evictions of the rest, which may not come soon (seen on
                // the H200: 24 GiB free kept for minutes for a need 0.1 GiB
                // short). Less than a step is not worth a round while
                // evictions can still make room.
                let worth = if swap_room >= step { step } else { 1 };
                if (over || restore) && asker_evicted > 0 && avail >= worth {
                    // A VM bringing its memory back frees host RAM as it
                    // goes: let it restore what fits now, and the room that
                    // frees pays for the evictions the rest needs. Denying
                    // it instead would keep it off the GPU for good, its
                    // data out of reach (seen on the H200: three VMs each
                    // part evicted, host RAM full, a quarter of the GPU free).
                    avail -= self.restore_part(need.vm, avail.min(asker_evicted), now, &mut out);
                    self.needs.push_back(need);
                    ahead.push(need.vm);
                    continue;
                }
                if over && !need.probed {
                    // The books may be a Stats report behind (memory freed,
                    // or a guest gone): before saying no, ask every other VM
                    // what it holds. Nothing moves (max_move 0); unused
                    // allowance comes back with the answers.
                    for (&w, b) in self.vms.iter_mut() {
                        if w != need.vm && b.evict_to.is_none() && b.mem.limit_bytes > 0 {
                            b.evict_to = Some(b.mem.limit_bytes);
                            b.evict_moves = 0;
                            out.push(MemAction::Evict { vm: w, resident_max: b.mem.limit_bytes, moves_bytes: 0 });
                        }
                    }
                    self.needs.push_back(Need { probed: true, ..need });
                    ahead.push(need.vm);
                    continue;
                }
                if over && self.vms.iter().any(|(&w, b)| w != need.vm && b.evict_to.is_some()) {
                    // Answers still to come.
                    self.needs.push_back(need);
                    ahead.push(need.vm);
                    continue;
                }
                // A restore is never refused, or the VM's data would be out
                // of its reach for good. Host RAM frees as other restores
                // land and as this one gets room; meanwhile evict what host
                // RAM can take and wait.
                if over && !restore {
                    let used = swap_others.saturating_add(self.swap_used());
                    out.push(MemAction::Denied {
                        vm: need.vm,
                        bytes: need.bytes,
                        reason: format!(
                            "host RAM for evicted GPU memory is used up ({used} of {} bytes; {must_move} more \
                             would be needed to make room)",
                            self.params.swap_limit_bytes
                        ),
                    });
                    continue;
                }
                let mut plan = Plan {
                    asker: Some(need.vm),
                    ahead: &ahead,
                    needy: &needy,
                    now,
                    sched,
                    swap_room: &mut swap_room,
                    wanted: &mut wanted,
                };
                blocked |= self.plan(short, &mut plan, &mut out) > 0;
            }
            avail = 0;
            in_flight -= from_flight;
            self.needs.push_back(need);
            ahead.push(need.vm);
        }
        self.reschedule(&wanted, &mut out);
        if blocked {
            self.recheck_at = Some(now.saturating_add(RECHECK_NS));
        }
        out
    }

    /// Raises `vm`'s limit by `grant` bytes of free memory, part of what it
    /// brings back; returns `grant`.
    fn restore_part(&mut self, vm: VmId, grant: u64, now: u64, out: &mut Vec<MemAction>) -> u64 {
        if let Some(b) = self.vms.get_mut(&vm) {
            b.mem.limit_bytes = b.mem.limit_bytes.saturating_add(grant);
            b.resident_since = now;
            out.push(MemAction::Limit { vm, bytes: b.mem.limit_bytes });
        }
        grant
    }

    /// Puts the need of the VM whose turn comes first among those bringing
    /// memory back (granted least recently) ahead of the other restores, and
    /// returns that VM. A VM counted as on the GPU comes last: it was taken
    /// off to be evicted, and waits for the others only while they restore.
    fn order_restores(&mut self, sched: &dyn Fn(VmId) -> SchedInfo) -> Option<VmId> {
        let restoring = |n: &Need| self.vms.get(&n.vm).is_some_and(|b| b.mem.evicted_bytes > 0 && n.bytes <= b.own());
        let first = self.needs.iter().position(restoring)?;
        let next = self
            .needs
            .iter()
            .enumerate()
            .filter(|(_, n)| restoring(n))
            .min_by_key(|(_, n)| {
                let i = sched(n.vm);
                (i.holding, i.last_granted_ns, n.vm)
            })
            .map(|(i, _)| i)?;
        if next > first {
            if let Some(n) = self.needs.remove(next) {
                self.needs.insert(first, n);
            }
        }
        self.needs.get(first).map(|n| n.vm)
    }

    /// Resident bytes of the other VMs that must go to host RAM for `vm` to
    /// hold `bytes`, were every other VM evicted as far as it takes.
    fn must_move(&self, vm: VmId, bytes: u64, cap: u64) -> u64 {
        let others = self.vms.iter().filter(|(&w, _)| w != vm).map(|(_, b)| b.held()).fold(0, u64::saturating_add);
        others.saturating_sub(cap.saturating_sub(bytes))
    }

    /// Asks evictions that free `short` bytes, as far as eligible victims
    /// allow; returns what is still missing.
    fn plan(&mut self, mut short: u64, p: &mut Plan<'_>, out: &mut Vec<MemAction>) -> u64 {
        let mut victims = Vec::new();
        let mut holders = Vec::new();
        let asker_granted = p.asker.map(|a| (p.sched)(a).last_granted_ns);
        let step = self.eviction_step();
        // Another VM than the holder wants the GPU: the holder's slice ends
        // on its own and it can be evicted then, like any other.
        let others_busy = self.vms.keys().any(|&w| {
            let i = (p.sched)(w);
            Some(w) != p.asker && i.demanding && !i.holding
        });
        for (&w, b) in &self.vms {
            if Some(w) == p.asker
                || p.ahead.contains(&w)
                || b.evict_to.is_some()
                || b.mem.limit_bytes == 0
                // Memory given in this very round (its restore or allocation
                // not yet under way) is kept whatever the minimum residency.
                || p.now.saturating_sub(b.resident_since) < self.params.min_residency_ns.max(1)
            {
                continue;
            }
            let info = (p.sched)(w);
            // A busy VM whose turn comes before the asker's keeps its
            // memory: in a rotation the VM granted longer ago runs sooner,
            // and evicting it would only bring it back before the asker
            // runs (each would evict the other in turn, moving whole VMs
            // to and fro while neither runs).
            if info.demanding && !info.holding && asker_granted.is_some_and(|g| info.last_granted_ns <= g) {
                continue;
            }
            // VMs waiting for memory themselves last, then the busy ones.
            // Idle ones least recently granted first; busy ones most
            // recently granted first (their next turn is the furthest).
            let order = if info.demanding { u64::MAX - info.last_granted_ns } else { info.last_granted_ns };
            let key = (p.needy.contains(&w), info.demanding, order, w);
            if info.holding {
                holders.push(key);
            } else {
                victims.push(key);
            }
        }
        victims.sort_unstable();
        holders.sort_unstable();
        // Unused allowance first (it moves nothing), then resident memory as
        // far as host RAM allows.
        let mut takes: Vec<(VmId, u64)> = Vec::new();
        for &(_, _, _, w) in &victims {
            if short == 0 {
                break;
            }
            let b = &self.vms[&w];
            let t = (b.mem.limit_bytes - b.spoken_for()).min(short);
            if t > 0 {
                takes.push((w, t));
                short -= t;
            }
        }
        for &(_, _, _, w) in &victims {
            if short == 0 || *p.swap_room == 0 {
                break;
            }
            // At least MIN_EVICTION at a time: a VM growing allocation by
            // allocation would otherwise evict its neighbour piece by piece.
            // And at least its smallest allocation that can move, where it
            // said so: less would move nothing, asked again and again (seen
            // on the sim: 256 MiB allocations, a 128 MiB step, a VM waiting
            // for memory for good).
            let b = &self.vms[&w];
            let held = b.spoken_for();
            let least = step.max(b.least_move);
            let t = take_all_below_step(held, held.min(short.max(least)), *p.swap_room, step);
            // Less than a step, short of all it holds, may be smaller than
            // any of its allocations: it would move nothing, asked again and
            // again.
            if t > 0 && (t >= least || t == held) {
                match takes.iter_mut().find(|(v, _)| *v == w) {
                    Some((_, taken)) => *taken += t,
                    None => takes.push((w, t)),
                }
                short = short.saturating_sub(t);
                *p.swap_room -= t;
            }
        }
        for (w, t) in takes {
            let Some(b) = self.vms.get_mut(&w) else {
                continue;
            };
            let target = b.mem.limit_bytes - t;
            // A restore under way lands before the eviction is served: host
            // RAM is set aside for what it brings back too (sized from the
            // last report alone, the victim kept a restore's worth more than
            // asked; seen on the sim).
            let moves = b.spoken_for().saturating_sub(target);
            b.evict_to = Some(target);
            b.evict_moves = moves;
            tracing::debug!(vm = w, asker = ?p.asker, taken = t, short_after = short, "eviction planned");
            out.push(MemAction::Evict { vm: w, resident_max: target, moves_bytes: moves });
        }
        if short > 0 && !others_busy {
            // Only the VM on the GPU has the rest, and nobody else would
            // take the GPU from it: keep it off the GPU once it lets go, so
            // that it can be evicted.
            for &(_, _, _, w) in &holders {
                let Some(b) = self.vms.get_mut(&w) else {
                    continue;
                };
                p.wanted.insert(w);
                if !b.descheduled {
                    b.descheduled = true;
                    out.push(MemAction::Deschedule { vm: w });
                }
            }
        }
        short
    }

    /// Lets back onto the GPU the VMs kept off it that no need wants evicted
    /// any more (once their eviction is done).
    fn reschedule(&mut self, wanted: &HashSet<VmId>, out: &mut Vec<MemAction>) {
        for (&vm, b) in self.vms.iter_mut() {
            if b.descheduled && b.evict_to.is_none() && !wanted.contains(&vm) {
                b.descheduled = false;
                out.push(MemAction::Reschedule { vm });
            }
        }
    }
}

/// One need's view while its evictions are planned.
struct Plan<'a> {
    asker: Option<VmId>,
    /// VMs whose needs came earlier: not evicted for a later one.
    ahead: &'a [VmId],
    /// VMs waiting for memory: evicted last.
    needy: &'a HashSet<VmId>,
    now: u64,
    sched: &'a dyn Fn(VmId) -> SchedInfo,
    swap_room: &'a mut u64,
    wanted: &'a mut HashSet<VmId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MS: u64 = 1_000_000;
    const G: u64 = GIB;

    fn params() -> BrokerParams {
        BrokerParams { min_residency_ns: 1000 * MS, swap_limit_bytes: 64 * G }
    }

    /// A GPU whose capacity the admin set to `cap` bytes.
    fn broker(cap: u64, ratio: f64) -> Broker {
        Broker::new(
            "sim",
            MemoryConfig { limit_bytes: Some(cap), total_bytes: 0, simulated: true, overcommit_ratio: ratio },
            params(),
        )
    }

    /// A GPU whose capacity the admin set to `cap` bytes, host RAM for
    /// evictions `swap` bytes, and no minimum residency.
    fn broker_swapping(cap: u64, ratio: f64, swap: u64) -> Broker {
        Broker::new(
            "sim",
            MemoryConfig { limit_bytes: Some(cap), total_bytes: 0, simulated: true, overcommit_ratio: ratio },
            BrokerParams { min_residency_ns: 0, swap_limit_bytes: swap },
        )
    }

    /// The scheduler's view, as a test sets it.
    #[derive(Default)]
    struct Sched(HashMap<VmId, SchedInfo>);

    impl Sched {
        fn f(&self) -> impl Fn(VmId) -> SchedInfo + '_ {
            |vm| self.0.get(&vm).copied().unwrap_or_default()
        }
        fn granted(mut self, vm: VmId, at: u64) -> Sched {
            self.0.entry(vm).or_default().last_granted_ns = at;
            self
        }
        fn holding(mut self, vm: VmId) -> Sched {
            self.0.entry(vm).or_default().holding = true;
            self
        }
        fn demanding(mut self, vm: VmId) -> Sched {
            self.0.entry(vm).or_default().demanding = true;
            self
        }
    }

    fn state(resident: u64, evicted: u64) -> MemoryState {
        MemoryState { resident_bytes: resident, evicted_bytes: evicted, limit_bytes: resident }
    }

    /// Adds `vm` and reports `resident` bytes on the GPU.
    fn add(b: &mut Broker, vm: VmId, quota: u64, resident: u64) -> Option<u64> {
        let welcome = b.add_vm(vm, quota, MemoryState::default(), false, 0);
        b.stats(vm, &BackendStats { memory: state(resident, 0), ..Default::default() });
        welcome
    }

    fn evicts(out: &[MemAction]) -> Vec<(VmId, u64)> {
        out.iter()
            .filter_map(|a| match a {
                MemAction::Evict { vm, resident_max, .. } => Some((*vm, *resident_max)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn capacity_is_the_admins_limit_or_the_gpu_less_the_driver_reserve() {
        let real = MemoryConfig { limit_bytes: None, total_bytes: 80 * G, simulated: false, overcommit_ratio: 1.0 };
        assert_eq!(real.capacity(2), Some(80 * G - G - 2 * 512 * MIB));
        assert_eq!(MemoryConfig { limit_bytes: Some(10 * G), ..real }.capacity(2), Some(10 * G));
        let sim = MemoryConfig { total_bytes: 0, simulated: true, ..real };
        assert_eq!(sim.capacity(3), None);
        assert_eq!(MemoryConfig { total_bytes: 0, ..real }.capacity(1), None, "a GPU of unknown size is not managed");
    }

    #[test]
    fn unmanaged_memory_grants_every_need_and_welcomes_with_the_whole_quota() {
        let mut b = Broker::new(
            "sim",
            MemoryConfig { limit_bytes: None, total_bytes: 0, simulated: true, overcommit_ratio: 1.0 },
            params(),
        );
        assert_eq!(b.admit(1000 * G), Ok(()));
        assert_eq!(add(&mut b, 1, 1000 * G, 0), None);
        assert_eq!(add(&mut b, 2, 1000 * G, 0), None);
        b.mem_need(2, 1500 * G);
        let out = b.pump(0, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Limit { vm: 2, bytes: 1500 * G }]);
    }

    #[test]
    fn a_gpu_that_is_not_overcommitted_welcomes_with_the_whole_quota() {
        let mut b = broker(10 * G, 1.0);
        assert_eq!(add(&mut b, 1, 4 * G, 0), None);
        assert_eq!(add(&mut b, 2, 6 * G, 0), None);
    }

    #[test]
    fn admission_is_refused_over_the_overcommit_ratio() {
        let mut b = broker(10 * G, 2.0);
        b.admit(8 * G).unwrap();
        add(&mut b, 1, 8 * G, 0);
        b.admit(12 * G).unwrap();
        add(&mut b, 2, 12 * G, 0);
        let reason = b.admit(1).unwrap_err();
        assert!(reason.contains("overcommit_ratio 2"), "{reason}");
        assert!(reason.contains(&(20 * G + 1).to_string()), "{reason}");
        assert!(reason.contains(&(10 * G).to_string()), "{reason}");
        assert!(reason.contains("memory_limit_bytes"), "{reason}");
    }

    #[test]
    fn a_need_that_fits_in_free_memory_is_granted_without_eviction() {
        let mut b = broker(10 * G, 3.0);
        assert_eq!(add(&mut b, 1, 4 * G, 4 * G), None);
        assert_eq!(add(&mut b, 2, 8 * G, 0), Some(6 * G));
        b.mem_need(2, 6 * G);
        assert_eq!(
            b.pump(0, &Sched::default().f(), 0),
            vec![MemAction::Limit { vm: 2, bytes: 6 * G }],
            "within its limit"
        );
        // Free the room: vm 1 goes away.
        b.remove_vm(1);
        b.mem_need(2, 8 * G);
        assert_eq!(b.pump(0, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 2, bytes: 8 * G }]);
        assert_eq!(b.vm(2).unwrap().limit_bytes, 8 * G);
    }

    #[test]
    fn after_an_eviction_that_moved_nothing_the_next_is_allowed_the_smallest_allocation() {
        let mut b = broker_swapping(16 * G, 2.0, 64 * G);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 10 * G, 8 * G);
        b.mem_need(2, 9 * G);
        assert_eq!(evicts(&b.pump(10 * MS, &Sched::default().f(), 0)), vec![(1, 7 * G)], "a step");
        // Its allocations are 4 GiB each: none fits 1 GiB, nothing moved.
        b.least_move(1, 4 * G);
        b.evicted(1, state(8 * G, 0), 0, 0, 11 * MS);
        assert_eq!(evicts(&b.pump(20 * MS, &Sched::default().f(), 0)), vec![(1, 4 * G)], "one allocation");
    }

    #[test]
    fn the_least_recently_granted_idle_vm_is_evicted() {
        let mut b = broker(12 * G, 3.0);
        add(&mut b, 1, 4 * G, 4 * G);
        add(&mut b, 2, 4 * G, 4 * G);
        add(&mut b, 3, 4 * G, 4 * G);
        add(&mut b, 4, 4 * G, 0);
        let now = 5000 * MS;
        // 1 is busy (wants the GPU), 2 was granted long ago, 3 recently.
        let s = Sched::default().granted(1, 100 * MS).demanding(1).granted(2, 1000 * MS).granted(3, 4000 * MS);
        b.mem_need(4, 4 * G);
        let out = b.pump(now, &s.f(), 0);
        assert_eq!(evicts(&out), vec![(2, 0)], "{out:?}");
        assert!(!out.iter().any(|a| matches!(a, MemAction::Limit { .. })));
    }

    #[test]
    fn vms_taking_turns_evict_the_one_whose_turn_is_furthest() {
        // Room for two of three 4 GiB VMs; all busy, taking turns in 5 s slices.
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 4 * G, 4 * G);
        add(&mut b, 2, 4 * G, 4 * G);
        add(&mut b, 3, 4 * G, 0);
        let now = 5500 * MS;
        // 1 holds the GPU since 5 s; 2 ran before it, 3 (swapped out) before 2.
        let turns = |s: Sched| s.holding(1).demanding(2);
        let s = turns(Sched::default().granted(1, 5000 * MS).granted(2, 3000 * MS).granted(3, 1000 * MS));
        b.mem_need(3, 4 * G);
        let out = b.pump(now, &s.f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 2, resident_max: 0, moves_bytes: 4 * G }], "3 runs before 2");
        b.evicted(2, state(0, 4 * G), 4 * G, 80 * MS, now + 80 * MS);
        let out = b.pump(now + 80 * MS, &s.f(), 0);
        assert_eq!(out, vec![MemAction::Limit { vm: 3, bytes: 4 * G }]);
        b.restored(3, state(4 * G, 0), 4 * G, 80 * MS, now + 160 * MS);

        // Now 2 wants its memory back. 3 runs before it: it keeps its memory,
        // and 1's slice ends on its own (3 waits for the GPU), so 1 is not
        // taken off early either.
        let later = now + 2000 * MS;
        let s = Sched::default().holding(1).demanding(3).granted(1, 5000 * MS).granted(2, 3000 * MS);
        let s = s.granted(3, 1000 * MS);
        b.mem_need(2, 4 * G);
        let out = b.pump(later, &s.f(), 0);
        assert!(out.is_empty(), "nothing to do until 1's slice ends: {out:?}");
        // 1's slice ended and 3 runs: 1 goes, for 2.
        let s = Sched::default().holding(3).demanding(1).granted(1, 5000 * MS).granted(2, 3000 * MS);
        let s = s.granted(3, 10_000 * MS);
        let out = b.pump(10_010 * MS, &s.f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 1, resident_max: 0, moves_bytes: 4 * G }]);
    }

    /// Room for two of three VMs of 4 GiB on `b`: 1 and 2 resident, 3 all in
    /// host RAM. 1 runs, 3's turn is next, 2 ran before 1.
    fn two_of_three_resident(b: &mut Broker) -> Sched {
        add(b, 1, 4 * G, 4 * G);
        add(b, 2, 4 * G, 4 * G);
        add(b, 3, 4 * G, 0);
        b.evicted(3, state(0, 4 * G), 4 * G, MS, 0);
        Sched::default().holding(1).granted(1, 5000 * MS).granted(2, 3000 * MS).granted(3, 1000 * MS)
    }

    /// [`two_of_three_resident`] on a GPU of 8 GiB with host RAM for 6 GiB
    /// of evicted memory: 3, with 4 GiB there, brings it back in steps.
    fn two_of_three_resident_host_ram_for_6g() -> (Broker, Sched) {
        let mut b = Broker::new(
            "sim",
            MemoryConfig { limit_bytes: Some(8 * G), total_bytes: 0, simulated: true, overcommit_ratio: 3.0 },
            BrokerParams { swap_limit_bytes: 6 * G, ..params() },
        );
        let s = two_of_three_resident(&mut b);
        (b, s)
    }

    #[test]
    fn a_restore_is_given_room_for_all_its_memory_where_host_ram_can_take_the_evictions() {
        // Room for two of three VMs. 1 runs; 3 (swapped out) is next; 2 ran
        // before 1. 3 asks for a first step of its memory: it gets room for
        // all of it, 2 leaving the GPU whole rather than a step at a time.
        let mut b = broker(8 * G, 3.0);
        let s = two_of_three_resident(&mut b);
        let now = 5500 * MS;
        b.mem_need(3, G);
        assert_eq!(b.pump(now, &s.f(), 0), vec![MemAction::Evict { vm: 2, resident_max: 0, moves_bytes: 4 * G }]);
        b.evicted(2, state(0, 4 * G), 4 * G, MS, now);
        assert_eq!(b.pump(now, &s.f(), 0), vec![MemAction::Limit { vm: 3, bytes: 4 * G }]);
    }

    #[test]
    fn restores_come_back_in_turn_order_the_next_vm_evicting_the_one_whose_turn_is_over() {
        // Room for two of three VMs. 1 runs; 3 (swapped out) is next; 2 ran
        // before 1. Host RAM can take only part of a VM more: 3 brings its
        // memory back a step at a time.
        let (mut b, s) = two_of_three_resident_host_ram_for_6g();
        let now = 5500 * MS;
        b.mem_need(3, G);
        assert_eq!(b.pump(now, &s.f(), 0), vec![MemAction::Evict { vm: 2, resident_max: 3 * G, moves_bytes: G }]);
        b.evicted(2, state(3 * G, G), G, MS, now);
        assert_eq!(b.pump(now, &s.f(), 0), vec![MemAction::Limit { vm: 3, bytes: G }]);
        b.restored(3, state(G, 3 * G), G, MS, now);
        // 2 asks its memory back at once, before 3 asks for its next step:
        // 3 goes first and takes it from 2; 2 waits and nobody is taken off
        // the GPU for it.
        b.mem_need(2, 4 * G);
        b.mem_need(3, 2 * G);
        let out = b.pump(now + 10 * MS, &s.f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 2, resident_max: 2 * G, moves_bytes: G }]);
        b.evicted(2, state(2 * G, 2 * G), G, MS, now + 20 * MS);
        assert_eq!(b.pump(now + 20 * MS, &s.f(), 0), vec![MemAction::Limit { vm: 3, bytes: 2 * G }]);
    }

    #[test]
    fn a_restore_takes_all_the_free_room_its_data_fits_in() {
        // Room for two of three VMs, host RAM for 6 GiB: 3 (next) brings its
        // memory back in steps. Its need for all of it, since made a step,
        // had 2 evicted of 2 GiB.
        let (mut b, s) = two_of_three_resident_host_ram_for_6g();
        let now = 5500 * MS;
        b.mem_need(3, 4 * G);
        // (Host RAM looks too small for all of it: the others are asked what
        // they hold first.)
        assert_eq!(evicts(&b.pump(now, &s.f(), 0)), vec![(1, 4 * G), (2, 4 * G)]);
        b.evicted(1, state(4 * G, 0), 0, 0, now);
        b.evicted(2, state(4 * G, 0), 0, 0, now);
        assert_eq!(evicts(&b.pump(now, &s.f(), 0)), vec![(2, 2 * G)]);
        b.mem_need(3, G);
        b.evicted(2, state(2 * G, 2 * G), 2 * G, MS, now + 10 * MS);
        // 2 wants its memory back too. 3 takes both free GiB, not only its
        // step (2 took the other and was evicted of it again for 3's next
        // step).
        b.mem_need(2, 4 * G);
        let limits: Vec<MemAction> =
            b.pump(now + 10 * MS, &s.f(), 0).into_iter().filter(|a| matches!(a, MemAction::Limit { .. })).collect();
        assert_eq!(limits, vec![MemAction::Limit { vm: 3, bytes: 2 * G }]);
    }

    #[test]
    fn an_eviction_sets_host_ram_aside_for_a_restore_still_landing() {
        // 1 was given room to bring back 3 GiB; its last report still shows
        // 1 GiB resident. 2 needs the GPU's last 3 GiB: 1 is asked to give
        // them, with host RAM for all 3 (the restore lands first), not for
        // the 1 GiB reported (it kept 2 GiB more than asked; seen on the sim).
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 4 * G, G);
        add(&mut b, 2, 7 * G, 0);
        b.evicted(1, state(G, 3 * G), 3 * G, MS, 0);
        b.mem_need(1, 4 * G);
        assert_eq!(b.pump(0, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 1, bytes: 4 * G }]);
        b.stats(2, &BackendStats { memory: state(4 * G, 0), ..Default::default() });
        b.mem_need(2, 7 * G);
        let out = b.pump(2000 * MS, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 1, resident_max: G, moves_bytes: 3 * G }]);
    }

    #[test]
    fn a_vm_taken_off_the_gpu_to_be_evicted_brings_its_memory_back_when_it_alone_restores() {
        // 1 was granted last and still counts as on the GPU (it wants it);
        // it was evicted for 2, which then sat idle holding its memory.
        let mut b = broker(4 * G, 2.0);
        add(&mut b, 1, 4 * G, 0);
        add(&mut b, 2, 4 * G, 0);
        b.evicted(1, state(0, 4 * G), 4 * G, MS, 0);
        b.stats(2, &BackendStats { memory: state(4 * G, 0), ..Default::default() });
        b.mem_need(2, 4 * G);
        assert_eq!(b.pump(0, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 2, bytes: 4 * G }]);
        let s = Sched::default().holding(1).demanding(1).granted(1, 5000 * MS).granted(2, 1000 * MS);
        b.mem_need(1, 4 * G);
        let out = b.pump(5500 * MS, &s.f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 2, resident_max: 0, moves_bytes: 4 * G }]);
    }

    #[test]
    fn the_vm_on_the_gpu_is_told_what_the_next_restore_will_take_from_it() {
        // 8 GiB shared by two VMs of 6: 1 holds 6, 2 holds 2 with 4 in host
        // RAM. 2's restore needs 4 beyond the free room (none): the likely
        // eviction of 1 when its grant ends.
        let mut b = broker_swapping(8 * G, 2.0, 9 * G);
        add(&mut b, 1, 6 * G, 6 * G);
        add(&mut b, 2, 6 * G, 0);
        b.stats(2, &BackendStats { memory: state(2 * G, 4 * G), ..Default::default() });
        assert_eq!(b.likely_eviction(1, &[]), 4 * G);
        assert_eq!(b.likely_eviction(2, &[]), 0, "nobody else has memory in host RAM");
        // Host RAM left for 1.5 GiB more bounds it.
        let mut tight = broker_swapping(8 * G, 2.0, 5 * G + 512 * MIB);
        add(&mut tight, 1, 6 * G, 6 * G);
        add(&mut tight, 2, 6 * G, 0);
        tight.stats(2, &BackendStats { memory: state(2 * G, 4 * G), ..Default::default() });
        assert_eq!(tight.likely_eviction(1, &[]), G + 512 * MIB);
        // Another backend holding 512 MiB prepared leaves 1 GiB of it.
        assert_eq!(tight.likely_eviction(1, &[(3, 512 * MIB)]), G);
        // Less than an eviction step is not worth preparing for.
        tight.stats(2, &BackendStats { memory: state(2 * G, 256 * MIB), ..Default::default() });
        assert_eq!(tight.likely_eviction(1, &[]), 0);
    }

    #[test]
    fn an_eviction_that_would_leave_less_than_a_step_takes_all_the_vm_holds() {
        // 20 GiB shared by two VMs of 20: 1 holds 19.75 GiB and 256 bytes,
        // 2 has as much in host RAM and wants it back. Leaving 1 the last
        // quarter GiB would have its backend stop an allocation short, and
        // 2 wait another round for the rest.
        let data = 19 * G + 768 * MIB + 256;
        let two = |swap| {
            let mut b = broker_swapping(20 * G, 2.0, swap);
            add(&mut b, 1, 20 * G, data);
            add(&mut b, 2, 20 * G, 0);
            b.stats(2, &BackendStats { memory: state(0, data), ..Default::default() });
            b
        };
        let mut b = two(64 * G);
        assert_eq!(b.likely_eviction(1, &[]), data, "1 is told to prepare for all of it");
        b.mem_need(2, data);
        let out = b.pump(2000 * MS, &Sched::default().granted(1, MS).f(), 0);
        assert_eq!(evicts(&out), vec![(1, 0)]);
        // Host RAM for less than all of it bounds the eviction as before.
        let mut tight = two(data + 19 * G);
        assert_eq!(tight.likely_eviction(1, &[]), 19 * G);
        tight.mem_need(2, data);
        let s = Sched::default().granted(1, MS);
        // (Host RAM looks too small: 1 is asked what it holds first.)
        assert_eq!(evicts(&tight.pump(2000 * MS, &s.f(), 0)), vec![(1, 20 * G)]);
        tight.evicted(1, state(data, 0), 0, 0, 2000 * MS);
        assert_eq!(evicts(&tight.pump(2000 * MS, &s.f(), 0)), vec![(1, data - 19 * G)]);
    }

    #[test]
    fn a_growing_vm_evicts_its_neighbour_a_gibibyte_at_a_time() {
        let mut b = broker(32 * G, 3.0);
        add(&mut b, 1, 30 * G, 30 * G);
        add(&mut b, 2, 30 * G, 0);
        assert_eq!(b.vm(2).unwrap().limit_bytes, 2 * G);
        b.mem_need(2, 2 * G + 256 * MIB);
        let out = b.pump(2000 * MS, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 1, resident_max: 29 * G, moves_bytes: G }]);
    }

    #[test]
    fn an_eviction_takes_only_what_is_missing() {
        let mut b = broker(12 * G, 3.0);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 6 * G, 0);
        assert_eq!(b.vm(2).unwrap().limit_bytes, 4 * G);
        b.mem_need(2, 5 * G);
        let out = b.pump(2000 * MS, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 1, resident_max: 7 * G, moves_bytes: G }]);
        assert_eq!(b.swap_used(), G, "the eviction under way counts");
    }

    #[test]
    fn unused_allowance_is_taken_before_resident_memory() {
        let mut b = broker(12 * G, 3.0);
        add(&mut b, 1, 6 * G, 6 * G);
        add(&mut b, 2, 6 * G, G);
        add(&mut b, 3, 6 * G, 0);
        b.mem_need(3, 4 * G);
        // 1 is the better victim by grant order, but 2 has 5 GiB it does
        // not use: taking it moves nothing.
        let s = Sched::default().granted(1, 0).granted(2, 1500 * MS);
        let out = b.pump(2000 * MS, &s.f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 2, resident_max: 2 * G, moves_bytes: 0 }]);
    }

    #[test]
    fn neither_the_grant_holder_nor_the_asker_is_evicted() {
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 4 * G, 4 * G);
        add(&mut b, 2, 4 * G, 4 * G);
        add(&mut b, 3, 4 * G, 0);
        b.mem_need(2, 6 * G);
        // 1 holds the GPU; 2 asks; 3 holds nothing: nobody can give.
        let s = Sched::default().holding(1);
        let out = b.pump(2000 * MS, &s.f(), 0);
        assert!(evicts(&out).is_empty(), "{out:?}");
        // The holder is kept off the GPU once it lets go...
        assert_eq!(out, vec![MemAction::Deschedule { vm: 1 }]);
        assert_eq!(b.next_check(), Some(2000 * MS + RECHECK_NS));
        // ...and evicted once it has.
        let out = b.pump(2010 * MS, &Sched::default().f(), 0);
        assert_eq!(evicts(&out), vec![(1, 2 * G)]);
        b.evicted(1, state(2 * G, 2 * G), 2 * G, 5 * MS, 2020 * MS);
        let out = b.pump(2020 * MS, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Limit { vm: 2, bytes: 6 * G }, MemAction::Reschedule { vm: 1 }]);
    }

    #[test]
    fn a_vm_that_kept_less_than_a_step_over_is_asked_again_at_once_one_that_moved_nothing_is_left_alone() {
        let run = |kept_over: u64, moved: u64| {
            let mut b = broker(8 * G, 3.0);
            add(&mut b, 1, 8 * G, 8 * G);
            add(&mut b, 2, 8 * G, 0);
            b.mem_need(2, 4 * G);
            assert_eq!(evicts(&b.pump(2000 * MS, &Sched::default().f(), 0)), vec![(1, 4 * G)]);
            b.evicted(1, state(4 * G + kept_over, 4 * G - kept_over), moved, 5 * MS, 2005 * MS);
            evicts(&b.pump(2005 * MS, &Sched::default().f(), 0))
        };
        // Host RAM was set aside for 4 GiB and an allocation 768 bytes past
        // that stayed: the rest is asked for at once (a step at least), not
        // a second later (seen on the H200: a second lost per restore step).
        assert_eq!(run(768, 4 * G - 768), vec![(1, 4 * G + 768 - G / 2)]);
        // Nothing moved: it cannot give, and is left alone a while.
        assert_eq!(run(4 * G, 0), vec![]);
    }

    #[test]
    fn memory_given_less_than_min_residency_ago_is_kept() {
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 8 * G, 0);
        add(&mut b, 2, 8 * G, 0);
        b.mem_need(2, 8 * G);
        assert_eq!(
            b.pump(2000 * MS, &Sched::default().f(), 0),
            vec![MemAction::Evict { vm: 1, resident_max: 0, moves_bytes: 0 }]
        );
        b.evicted(1, state(0, 0), 0, 0, 2001 * MS);
        assert_eq!(b.pump(2001 * MS, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 2, bytes: 8 * G }]);
        b.stats(2, &BackendStats { memory: state(8 * G, 0), ..Default::default() });
        // 1 wants memory back at once: 2 keeps what it was just given...
        b.mem_need(1, 4 * G);
        assert_eq!(b.pump(2500 * MS, &Sched::default().f(), 0), vec![]);
        assert_eq!(b.next_check(), Some(2500 * MS + RECHECK_NS));
        assert_eq!(b.pump(2999 * MS, &Sched::default().f(), 0), vec![]);
        // ...for a second.
        assert_eq!(evicts(&b.pump(3002 * MS, &Sched::default().f(), 0)), vec![(2, 4 * G)]);
    }

    #[test]
    fn a_need_beyond_host_ram_for_evictions_is_denied_and_nobody_is_evicted() {
        let mut b = broker_swapping(8 * G, 3.0, 4 * G);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 8 * G, 0);
        // 1 GiB of the host RAM is another GPU's: 3 are left, 6 would move.
        b.mem_need(2, 6 * G);
        // First 1 is asked what it really holds; nothing may move.
        let out = b.pump(MS, &Sched::default().f(), G);
        assert_eq!(out, vec![MemAction::Evict { vm: 1, resident_max: 8 * G, moves_bytes: 0 }]);
        b.evicted(1, state(8 * G, 0), 0, 0, MS);
        let out = b.pump(MS, &Sched::default().f(), G);
        assert_eq!(out.len(), 1, "{out:?}");
        let MemAction::Denied { vm: 2, bytes, reason } = &out[0] else { panic!("{out:?}") };
        assert_eq!(*bytes, 6 * G);
        assert!(
            reason.starts_with(&format!("host RAM for evicted GPU memory is used up ({} of {} bytes", G, 4 * G)),
            "{reason}"
        );
        assert_eq!(b.swap_used(), 0);
        // What host RAM can take is granted.
        b.mem_need(2, 3 * G);
        assert_eq!(evicts(&b.pump(MS, &Sched::default().f(), G)), vec![(1, 5 * G)]);
    }

    #[test]
    fn a_restore_comes_back_in_part_first_when_host_ram_is_full() {
        // The state an H200 run stuck in, in round numbers: three VMs of
        // 40 GiB on 80, each part evicted, host RAM for evictions full, 24
        // GiB of the GPU free. 3 wants 25 GiB back.
        let mut b = broker_swapping(80 * G, 2.0, 64 * G);
        for (vm, resident, evicted) in [(1, 32 * G, 8 * G), (2, 16 * G, 24 * G), (3, 8 * G, 32 * G)] {
            b.add_vm(vm, 40 * G, state(resident, evicted), true, 0);
        }
        assert_eq!(b.swap_used(), 64 * G);
        b.mem_need(3, 33 * G);
        // What fits comes back first: that frees host RAM...
        assert_eq!(b.pump(MS, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 3, bytes: 32 * G }]);
        b.restored(3, state(32 * G, 8 * G), 24 * G, 500 * MS, 2 * MS);
        assert_eq!(b.swap_used(), 40 * G);
        // ...for the eviction that makes room for the rest: all of it, now
        // that host RAM can take what that moves.
        assert_eq!(evicts(&b.pump(2 * MS, &Sched::default().f(), 0)), vec![(1, 24 * G)]);
        b.evicted(1, state(24 * G, 16 * G), 8 * G, 20 * MS, 22 * MS);
        assert_eq!(b.pump(22 * MS, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 3, bytes: 40 * G }]);
    }

    /// Backends that do at once what the broker asks: evict down to
    /// `resident_max`, restore up to a new limit from what they hold in host
    /// RAM. Runs the broker until nothing changes; returns every action.
    /// Memory moves in whole allocations of `gran` bytes, never more than
    /// asked (as the cuda engine's swap does).
    fn settle(b: &mut Broker, held: &mut HashMap<VmId, (u64, u64)>, mut now: u64, gran: u64) -> Vec<MemAction> {
        let mut all = Vec::new();
        for _ in 0..200 {
            now += 100 * MS;
            let out = b.pump(now, &Sched::default().f(), 0);
            if out.is_empty() && b.next_check().is_none() {
                break;
            }
            for a in &out {
                match *a {
                    MemAction::Evict { vm, resident_max, .. } => {
                        let (res, ev) = held[&vm];
                        let moved = res.saturating_sub(resident_max) / gran * gran;
                        held.insert(vm, (res - moved, ev + moved));
                        b.evicted(vm, state(res - moved, ev + moved), moved, MS, now);
                    }
                    MemAction::Limit { vm, bytes } => {
                        let (res, ev) = held[&vm];
                        let back = bytes.saturating_sub(res).min(ev);
                        let back = if back == ev { back } else { back / gran * gran };
                        if back > 0 {
                            held.insert(vm, (res + back, ev - back));
                            b.restored(vm, state(res + back, ev - back), back, MS, now);
                            if ev - back > 0 {
                                // Still short of its data: it asks again.
                                b.mem_need(vm, res + ev);
                            }
                        }
                    }
                    _ => {}
                }
            }
            all.extend(out);
        }
        all
    }

    #[test]
    fn restores_of_two_part_evicted_vms_are_never_denied_when_host_ram_is_full() {
        // Seen on the H200: two VMs each mostly evicted, host RAM for
        // evictions all but full, a third VM resident. Both want their
        // memory back; the first took the free GPU memory as a partial
        // restore, and the second was told OUT_OF_MEMORY, though the first
        // one's restore was about to free the host RAM it needed.
        let mut b = broker_swapping(80 * G, 2.0, 64 * G);
        let mut held = HashMap::from([(1, (40 * G, 0)), (2, (9 * G, 31 * G)), (3, (8 * G, 32 * G))]);
        for (&vm, &(resident, evicted)) in &held {
            b.add_vm(vm, 40 * G, state(resident, evicted), true, 0);
        }
        assert_eq!(b.swap_used(), 63 * G);
        b.mem_need(2, 40 * G);
        b.mem_need(3, 40 * G);
        let out = settle(&mut b, &mut held, MS, 1);
        assert!(!out.iter().any(|a| matches!(a, MemAction::Denied { .. })), "{out:#?}");
        assert_eq!(held[&2], (40 * G, 0), "{out:#?}");
        assert_eq!(held[&3], (40 * G, 0), "{out:#?}");
        assert_eq!(held[&1], (0, 40 * G));
        // Nothing was lost on the way, and host RAM stayed within bounds.
        assert!(b.swap_used() <= 64 * G);
    }

    #[test]
    fn a_restore_a_little_short_of_room_comes_back_in_part_rather_than_wait_for_a_tiny_eviction() {
        // Seen on the H200 after the fix above: VM 3 wanted 24.1 GiB back,
        // 24 were free, and host RAM had 0.1 GiB left. The broker asked the
        // others for the missing 0.1 GiB, which nobody could move (memory
        // moves in 256 MiB allocations), and kept the free 24 GiB for the
        // need meanwhile: nothing moved for two minutes.
        let m = MIB;
        let mut b = broker_swapping(80 * G, 2.0, 64 * G + 200 * m);
        let mut held = HashMap::from([(1, (32 * G, 8 * G)), (2, (8 * G, 32 * G)), (3, (16 * G, 24 * G + 100 * m))]);
        for (&vm, &(resident, evicted)) in &held {
            b.add_vm(vm, 41 * G, state(resident, evicted), true, 0);
        }
        b.mem_need(3, 40 * G + 100 * m);
        let out = settle(&mut b, &mut held, MS, 256 * m);
        assert!(!out.iter().any(|a| matches!(a, MemAction::Denied { .. })), "{out:#?}");
        assert_eq!(held[&3], (40 * G + 100 * m, 0), "{out:#?}");
        assert!(b.swap_used() <= 64 * G + 200 * m);
    }

    #[test]
    fn new_memory_is_denied_rather_than_wait_on_evictions_smaller_than_a_step() {
        // Host RAM for 100 MiB more: less than an eviction step (512 MiB on
        // an 8 GiB GPU), which may be less than any allocation of VM 1.
        let mut b = broker_swapping(8 * G, 3.0, 100 * MIB);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 8 * G, 0);
        b.mem_need(2, 50 * MIB);
        let out = b.pump(MS, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 1, resident_max: 8 * G, moves_bytes: 0 }], "only asked, not moved");
        b.evicted(1, state(8 * G, 0), 0, 0, MS);
        let out = b.pump(2 * MS, &Sched::default().f(), 0);
        assert!(matches!(out.as_slice(), [MemAction::Denied { vm: 2, .. }]), "{out:?}");
    }

    #[test]
    fn books_a_report_behind_are_checked_before_a_need_is_denied() {
        let mut b = broker_swapping(8 * G, 3.0, 0);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 8 * G, 0);
        // 1's guest has freed its memory since its last report.
        b.mem_need(2, 6 * G);
        let out = b.pump(MS, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 1, resident_max: 8 * G, moves_bytes: 0 }]);
        b.evicted(1, state(0, 0), 0, 0, 2 * MS);
        assert_eq!(b.pump(2 * MS, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 2, bytes: 6 * G }]);
        assert_eq!(b.vm(1).unwrap().evictions, 0, "a question is not an eviction");
    }

    #[test]
    fn a_need_larger_than_the_gpu_is_denied() {
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 16 * G, 0);
        b.mem_need(1, 9 * G);
        let out = b.pump(0, &Sched::default().f(), 0);
        assert!(
            matches!(&out[..], [MemAction::Denied { vm: 1, bytes, reason }]
                if *bytes == 9 * G && reason.contains("more than GPU sim holds")),
            "{out:?}"
        );
    }

    #[test]
    fn an_answered_eviction_frees_room_for_the_waiting_need() {
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 8 * G, 0);
        b.mem_need(2, 3 * G);
        assert_eq!(evicts(&b.pump(2000 * MS, &Sched::default().f(), 0)), vec![(1, 5 * G)]);
        // Nothing more is asked while the eviction is under way.
        assert_eq!(b.pump(2005 * MS, &Sched::default().f(), 0), vec![]);
        assert_eq!(b.next_check(), None, "the answer is an event");
        assert_eq!(b.evicted(1, state(5 * G, 3 * G), 3 * G, 7 * MS, 2010 * MS), Some(5 * G));
        assert_eq!(b.pump(2010 * MS, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 2, bytes: 3 * G }]);
        let m = b.vm(1).unwrap();
        assert_eq!(
            (m.limit_bytes, m.resident_bytes, m.evicted_bytes, m.evictions, m.evict_ns_total),
            (5 * G, 5 * G, 3 * G, 1, 7 * MS)
        );
        assert_eq!(b.swap_used(), 3 * G);
    }

    #[test]
    fn needs_are_served_in_the_order_they_came() {
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 8 * G, 0);
        add(&mut b, 3, 8 * G, 0);
        b.mem_need(2, 4 * G);
        assert_eq!(evicts(&b.pump(2000 * MS, &Sched::default().f(), 0)), vec![(1, 4 * G)]);
        b.evicted(1, state(4 * G, 4 * G), 4 * G, 0, 2001 * MS);
        // 3 asks before the pump: the room is 2's, who asked first.
        b.mem_need(3, G);
        let out = b.pump(2001 * MS, &Sched::default().f(), 0);
        assert_eq!(out[0], MemAction::Limit { vm: 2, bytes: 4 * G });
        assert_eq!(evicts(&out), vec![(1, 3 * G)], "{out:?}");
    }

    #[test]
    fn a_disconnect_frees_room_for_the_waiting_need() {
        let mut b = broker(8 * G, 3.0);
        add(&mut b, 1, 8 * G, 8 * G);
        add(&mut b, 2, 8 * G, 0);
        b.mem_need(2, 4 * G);
        // 1 holds the GPU: 2 waits.
        let out = b.pump(2000 * MS, &Sched::default().holding(1).f(), 0);
        assert!(evicts(&out).is_empty());
        b.remove_vm(1);
        assert_eq!(b.pump(2001 * MS, &Sched::default().f(), 0), vec![MemAction::Limit { vm: 2, bytes: 4 * G }]);
    }

    #[test]
    fn a_reconnecting_backend_keeps_the_limit_it_reports() {
        let mut b = broker(8 * G, 3.0);
        let held = MemoryState { resident_bytes: 5 * G, evicted_bytes: 2 * G, limit_bytes: 6 * G };
        assert_eq!(b.add_vm(1, 8 * G, held, true, 0), Some(6 * G));
        assert_eq!(b.vm(1).unwrap().evicted_bytes, 2 * G);
        // A fresh VM gets only what is left.
        assert_eq!(b.add_vm(2, 8 * G, MemoryState::default(), false, 0), Some(2 * G));
        // A reconnect that does not fit keeps at least what it holds; the
        // overshoot is taken back from the others (unused allowance first:
        // 2's, not the room 1's limit gives its data in host RAM).
        let held3 = MemoryState { resident_bytes: G, evicted_bytes: 0, limit_bytes: 4 * G };
        assert_eq!(b.add_vm(3, 8 * G, held3, true, 0), Some(G));
        let out = b.pump(2000 * MS, &Sched::default().f(), 0);
        assert_eq!(out, vec![MemAction::Evict { vm: 2, resident_max: G, moves_bytes: 0 }]);
    }
}
