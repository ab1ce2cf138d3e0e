//! The time-slicing policy of one GPU: which VM may submit GPU work, when,
//! and for how long. Pure logic: no I/O and no clock of its own, so
//! `gpuvisord` drives it with real time and the tests with a simulated one.
//!
//! # Model
//!
//! `gpuvisord` owns one [`Scheduler`] per GPU and feeds it what backends say:
//! [`demand`](Scheduler::demand) (work queued, no grant held),
//! [`release`](Scheduler::release) (a grant given back with the GPU time its
//! work took, and whether more work is queued) and
//! [`charge`](Scheduler::charge) (GPU time of work that completed after its
//! grant was released). Each call returns the [`Action`]s to send. A backend
//! stops submitting when its slice ends and releases by itself; the daemon
//! revokes only to preempt, to drain, or when a holder overstays. Time is
//! `u64` nanoseconds on any monotonic clock; a time earlier than one already
//! seen is taken as the latest one seen.
//!
//! A VM is *runnable* when it has work queued and holds no grant, and *busy*
//! when it is runnable and not drained, or holds the grant.
//!
//! # Policy
//!
//! - **One grant at a time.** At most one VM holds a grant on a GPU. A VM
//!   that holds a grant is never granted again, and a drained VM is never
//!   granted. Preemption, draining the holder and overstay revoke the old
//!   grant and grant the next VM in the same call: the revoked VM's queued
//!   work drains while the next VM starts, and the revoked VM's later
//!   `release` only charges its time (and, with `more = false`, says it has
//!   no work left). A preempted or drained VM stays runnable; a VM revoked for
//!   overstaying is not granted again until it releases that grant, so a hung
//!   backend cannot keep taking slices.
//! - **Fair share by virtual time.** Every release and charge advances the
//!   VM's virtual time by `used_ns * 1024 / weight`. A VM's *virtual slice* is
//!   `slice_ns * 1024 / weight`. Idle time banks no credit: a VM that becomes
//!   busy gets `vtime = max(vtime, reference - its virtual slice)`, where the
//!   reference is the lowest virtual time of the other busy VMs of its tier
//!   (guaranteed and burstable form one tier, best-effort the other), or,
//!   when none is busy, the tier's *virtual clock*. The virtual clock is the
//!   highest value the lowest busy virtual time of the tier has reached (like
//!   CFS's `min_vruntime`): it only moves forward, and it moves as fast as the
//!   least-served busy VM, so a VM waking on an empty GPU starts where fair
//!   sharing stood, less one slice, whatever it did before.
//! - **Eligibility and priorities.** Priorities buy latency, not share. Among
//!   the candidates of a tier, a VM is *eligible* while it is less than one
//!   of its own virtual slices ahead of the lowest virtual time among them
//!   (`vtime < min_vtime + virtual slice`). Selection picks the highest
//!   priority among eligible VMs, then the lowest virtual time, then the
//!   lowest id. The comparison is strict so that VMs tied at the minimum each
//!   get one slice in turn; with `<=`, the top-priority VM of a tie would take
//!   two slices in a row and the worst wait would double. A VM less than one
//!   slice ahead can be passed over only by VMs that are themselves less
//!   than one slice ahead of the minimum, each for about one slice, so a
//!   saturating high-priority VM cannot starve a low-priority one: with `n`
//!   saturating VMs of equal weight, each runs once per round of `n` slices,
//!   in priority order, and waits at most `n - 1` slices (up to about twice
//!   that in a round where VMs join or leave). A mostly idle high-priority
//!   VM, whose virtual time lags, is served at once.
//! - **Classes.** *Best-effort* VMs run only while no guaranteed or burstable
//!   VM is busy, and a guaranteed or burstable demand preempts a best-effort
//!   holder at once. Anti-starvation: a best-effort VM runnable for
//!   [`GpuPolicy::best_effort_max_wait_ns`] gets the next grant even if others
//!   are busy (a *rescue* grant, which nothing but a drain or removal
//!   preempts); it then waits that long again, so it gets at most one slice
//!   per wait. *Guaranteed* VMs have a reserved share: weight over the sum of
//!   weights of all registered guaranteed and burstable VMs. A guaranteed VM
//!   is *under its reservation* while its `share_used` (charged GPU time in
//!   the last window over the window) is below its reserved share. Because
//!   the reservation is measured over the window, a guaranteed VM that was
//!   idle can spend its unspent reservation in a burst. *Burstable* VMs
//!   compete by virtual time only. Guaranteed and burstable VMs both absorb
//!   idle capacity (the scheduler is work-conserving).
//! - **Selection** (on release, removal, tick and after a revocation), among
//!   runnable, non-drained VMs: (1) if a guaranteed or burstable VM is a
//!   candidate, the best-effort VM that has waited longest past its maximum
//!   wait; (2) guaranteed VMs under their reservation, by eligibility; (3)
//!   guaranteed and burstable VMs, by eligibility; (4) best-effort VMs, by
//!   eligibility among themselves.
//! - **Preemption** (on demand, and on a live change of the settings of a
//!   runnable VM or of the holder). A rescue grant is never preempted.
//!   Otherwise a runnable VM preempts the holder when (a) the holder is
//!   best-effort and it is not; or, unless the holder is a guaranteed VM
//!   under its reservation, (b) it is a guaranteed VM under its reservation,
//!   or (c) it is of the holder's tier, has a strictly higher priority and is
//!   eligible (the minimum taken over the busy VMs of the tier, holder
//!   included). The next grant then goes by selection, without the revoked
//!   VM.
//! - **Release.** With `more = true` the VM stays runnable and re-enters
//!   selection at once, so a VM alone gets its next grant in the same call.
//!   With `more = false` it becomes idle. A release of a grant that is not
//!   the current one only charges its time.
//! - **Overstay.** A holder that has not released [`GpuPolicy::grace_ns`]
//!   after its deadline (grant time plus slice) is revoked by
//!   [`tick`](Scheduler::tick); [`next_deadline`](Scheduler::next_deadline)
//!   says when to call it.
//! - **Live changes** apply at the next selection (within one slice), except
//!   that draining the holder revokes it at once and a change that makes a
//!   runnable VM outrank the holder preempts as a demand would. A VM that
//!   changes tier starts in the new tier one virtual slice behind its
//!   reference. Weights are clamped to [`protocol::control::MIN_WEIGHT`]..=
//!   [`protocol::control::MAX_WEIGHT`] and slices to the protocol's
//!   `MIN_SLICE_US..=MAX_SLICE_US`.
//! - **Measurement.** Charged GPU time is spread over the interval that ends
//!   at the report (`[now - used, now]`) and summed over the last
//!   [`GpuPolicy::window_ns`], resolved to 1/512 of the window.

mod scheduler;
mod usage;

pub use protocol::control::QosClass;
pub use scheduler::Scheduler;

/// A VM on this GPU, as the daemon numbers them.
pub type VmId = u64;
/// Nanoseconds on the caller's clock.
pub type Nanos = u64;

const MS: Nanos = 1_000_000;
const S: Nanos = 1_000_000_000;

/// Scheduling settings of one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuPolicy {
    /// Length of a grant for VMs without their own slice.
    pub slice_ns: Nanos,
    /// A runnable best-effort VM that has waited this long gets one slice even
    /// while guaranteed or burstable VMs are busy (anti-starvation).
    pub best_effort_max_wait_ns: Nanos,
    /// Window over which shares and the GPU's busy fraction are measured.
    pub window_ns: Nanos,
    /// A holder that has not released this long after its deadline is revoked.
    pub grace_ns: Nanos,
}

impl Default for GpuPolicy {
    fn default() -> Self {
        GpuPolicy { slice_ns: 10 * MS, best_effort_max_wait_ns: 5 * S, window_ns: 5 * S, grace_ns: 2 * MS }
    }
}

/// One VM's scheduling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmParams {
    pub class: QosClass,
    pub weight: u32,
    pub priority: i32,
    /// The VM's own slice; `None` takes the GPU's.
    pub slice_ns: Option<Nanos>,
    /// A drained VM gets no grants; its work waits.
    pub drained: bool,
}

impl Default for VmParams {
    fn default() -> Self {
        VmParams { class: QosClass::Burstable, weight: 1, priority: 0, slice_ns: None, drained: false }
    }
}

/// What the daemon must tell a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `vm` may submit GPU work for `slice_ns` from now under grant `grant`.
    Grant { vm: VmId, grant: u64, slice_ns: Nanos },
    /// `vm` must stop submitting and release `grant`.
    Revoke { vm: VmId, grant: u64 },
}

impl Action {
    /// The VM the action is for.
    pub fn vm(&self) -> VmId {
        match *self {
            Action::Grant { vm, .. } | Action::Revoke { vm, .. } => vm,
        }
    }
}

/// One VM's scheduling figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmStats {
    /// Has work queued and holds no grant (drained VMs included).
    pub runnable: bool,
    pub holding: bool,
    /// The share the policy entitles the VM to now. Guaranteed and burstable:
    /// weight over the sum of weights of the busy guaranteed and burstable
    /// VMs (itself counted even if idle). Best-effort: its weight share among
    /// the busy best-effort VMs while no guaranteed or burstable VM is busy
    /// (all capacity is idle then), 0 otherwise. Drained: 0.
    pub share_configured: f64,
    /// Guaranteed only: weight over the sum of weights of all registered
    /// guaranteed and burstable VMs; 0 for other classes.
    pub reserved_share: f64,
    /// GPU time charged within the last window, over the window.
    pub share_used: f64,
    pub used_total_ns: Nanos,
    pub grants: u64,
    /// Grants revoked before the VM released them (preemption, drain,
    /// overstay).
    pub preemptions: u64,
    /// Time spent runnable without a grant, the current wait included.
    pub wait_total_ns: Nanos,
    /// Length of the last completed wait (runnable until granted).
    pub last_wait_ns: Nanos,
}

/// One GPU's scheduling figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuStats {
    pub holder: Option<VmId>,
    /// GPU time charged by all VMs within the last window, over the window,
    /// capped at 1.
    pub busy_fraction: f64,
    /// VMs waiting for a grant that could get one (runnable, not drained).
    pub runnable: usize,
}
