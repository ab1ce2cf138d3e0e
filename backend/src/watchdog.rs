//! The watchdog (`gpuvisor-backend --watchdog-ms N`): when GPU work the VM
//! submitted has made no progress for N ms (a kernel that runs that long, or
//! never ends), the backend ends. A kernel cannot be stopped inside the
//! process that runs it (on an H200 a `cuCtxDestroy` from another thread was
//! still stuck after 40 s: `scripts/h100/fault-probe.py`), but the driver
//! tears a process's contexts down when it exits, and the VM's backend is a
//! process of its own, so no other VM is touched.
//!
//! Progress is seen through marks (`Engine::mark`): one after every GPU
//! operation, checked from this module's thread, because the queue thread
//! may be the one blocked waiting for the kernel. Work counts as stuck only
//! while a mark is pending and none was reached for N ms, so a VM that is
//! idle, or waits for a grant from gpuvisord with nothing submitted, is
//! never ended, and a long queue of short kernels makes progress with each.
//! Before the process ends, the batch the guest is waiting for is answered
//! with CUDA_ERROR_LAUNCH_TIMEOUT, the error a display watchdog gives
//! natively.

use crate::engine::{EngineCtx, EngineStream, WorkMark};
use crate::guest_mem::{Extent, GuestMemory, GuestSpan};
use protocol::cuda::CUDA_ERROR_LAUNCH_TIMEOUT;
use protocol::ReplyHeader;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tracing::{error, warn};
use vm_memory::Bytes;
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

/// What the watchdog does once it has answered the batch in flight, given
/// how long the work made no progress: `main.rs` ends the process.
pub type OnFire = Box<dyn Fn(Duration) + Send + Sync>;

/// The batch the queue thread is running: where its reply goes, so that the
/// watchdog can answer it when the queue thread is stuck inside it.
pub struct InFlight {
    pub mem: GuestMemory,
    /// The control buffer's backing.
    pub control: Vec<Extent>,
    pub seq: u64,
}

struct State {
    /// Marks of submitted work not yet seen reached, per (context, stream),
    /// oldest first: a stream's marks are reached in order.
    pending: HashMap<(EngineCtx, EngineStream), VecDeque<Box<dyn WorkMark>>>,
    marks: usize,
    /// When the work last made progress: a mark reached, or work submitted
    /// while none was pending.
    progress: Instant,
    in_flight: Option<InFlight>,
    fired: bool,
}

struct Shared {
    vm: String,
    limit: Duration,
    state: Mutex<State>,
    on_fire: OnFire,
}

/// The queue thread's handle; the watchdog thread runs while one exists.
#[derive(Clone)]
pub struct Watchdog {
    shared: Arc<Shared>,
}

impl Watchdog {
    /// Starts the watchdog thread for VM `vm`: GPU work without progress for
    /// `limit` is answered and `on_fire` runs (once).
    pub fn start(vm: &str, limit: Duration, on_fire: OnFire) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            vm: vm.to_string(),
            limit,
            state: Mutex::new(State {
                pending: HashMap::new(),
                marks: 0,
                progress: Instant::now(),
                in_flight: None,
                fired: false,
            }),
            on_fire,
        });
        let weak = Arc::downgrade(&shared);
        // A few checks per limit, so that the process ends soon after it.
        let tick = (limit / 8).clamp(Duration::from_millis(1), Duration::from_millis(100));
        std::thread::Builder::new().name("gv-watchdog".into()).spawn(move || watch(weak, tick))?;
        Ok(Watchdog { shared })
    }

    pub fn limit(&self) -> Duration {
        self.shared.limit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A GPU operation was submitted on `stream` of `ctx`; `mark` follows it.
    pub fn submitted(&self, ctx: EngineCtx, stream: EngineStream, mark: Box<dyn WorkMark>) {
        let mut st = self.lock();
        if st.marks == 0 {
            st.progress = Instant::now();
        }
        st.marks += 1;
        st.pending.entry((ctx, stream)).or_default().push_back(mark);
    }

    /// Context `ctx` is about to be destroyed: its marks go first (a mark
    /// must not outlive its context).
    pub fn forget_ctx(&self, ctx: EngineCtx) {
        let mut st = self.lock();
        let gone: usize = st.pending.iter().filter(|((c, _), _)| *c == ctx).map(|(_, q)| q.len()).sum();
        st.pending.retain(|(c, _), _| *c != ctx);
        st.marks -= gone;
    }

    /// Every mark goes (the engine is about to end).
    pub fn forget_all(&self) {
        let mut st = self.lock();
        st.pending.clear();
        st.marks = 0;
    }

    /// The queue thread starts running a batch.
    pub fn batch_started(&self, batch: InFlight) {
        self.lock().in_flight = Some(batch);
    }

    /// The queue thread is about to write the batch's reply itself. Blocks
    /// for good if the watchdog has fired (it holds the lock until the
    /// process ends), so that two replies never mix.
    pub fn batch_done(&self) {
        self.lock().in_flight = None;
    }

    /// One check, as the watchdog's thread makes it: drops reached marks and
    /// returns how long the work has made no progress when that is past the
    /// limit.
    fn check(st: &mut State, limit: Duration) -> Option<Duration> {
        let mut reached = 0;
        for q in st.pending.values_mut() {
            while q.front().is_some_and(|m| m.reached()) {
                q.pop_front();
                reached += 1;
            }
        }
        if reached > 0 {
            st.pending.retain(|_, q| !q.is_empty());
            st.marks -= reached;
            st.progress = Instant::now();
        }
        let stuck = st.progress.elapsed();
        (st.marks > 0 && stuck > limit).then_some(stuck)
    }
}

fn watch(shared: Weak<Shared>, tick: Duration) {
    loop {
        std::thread::sleep(tick);
        let Some(shared) = shared.upgrade() else { return };
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.fired {
            return;
        }
        let Some(stuck) = Watchdog::check(&mut st, shared.limit) else { continue };
        st.fired = true;
        error!(
            vm = %shared.vm, stuck_ms = stuck.as_millis() as u64, limit_ms = shared.limit.as_millis() as u64,
            pending_ops = st.marks,
            "GPU work made no progress past the watchdog's limit (a kernel running that long, or for ever): \
             ending this backend, the only way to stop it; the guest gets CUDA_ERROR_LAUNCH_TIMEOUT"
        );
        if let Some(b) = st.in_flight.take() {
            if let Err(e) = answer(&b, CUDA_ERROR_LAUNCH_TIMEOUT) {
                warn!(vm = %shared.vm, "answering the batch in flight: {e}");
            }
        }
        // The lock stays held: the queue thread must not write a reply of
        // its own now (`batch_done`).
        (shared.on_fire)(stuck);
        return;
    }
}

/// Writes reply `status` for batch `b` as `Vm::write_reply` does: header,
/// then the sequence number, which the guest waits on, last.
fn answer(b: &InFlight, status: u32) -> Result<(), crate::guest_mem::SpanError> {
    let header = ReplyHeader {
        completed_seq: U64::new(0),
        reply_seq: U64::new(b.seq),
        status: U32::new(status),
        deferred: U32::new(status),
        deferred_opcode: U32::new(0),
        payload_len: U32::new(0),
        ..Default::default()
    };
    let bytes = header.as_bytes();
    GuestSpan::new(&b.mem, &b.control, 8, (bytes.len() - 8) as u64)?.write_from(&bytes[8..]);
    let first = GuestSpan::new(&b.mem, &b.control, 0, 8)?;
    if let Some(e) = first.extents().first() {
        std::sync::atomic::fence(Ordering::Release);
        if b.mem.store(b.seq, e.addr, Ordering::Release).is_err() {
            warn!("control buffer unaligned");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct At(Instant);
    impl WorkMark for At {
        fn reached(&self) -> bool {
            Instant::now() >= self.0
        }
    }

    fn start(limit_ms: u64) -> (Watchdog, Arc<AtomicU64>) {
        let fired = Arc::new(AtomicU64::new(0));
        let f = fired.clone();
        let on_fire: OnFire = Box::new(move |stuck| f.store(stuck.as_millis().max(1) as u64, Ordering::SeqCst));
        (Watchdog::start("wd-test", Duration::from_millis(limit_ms), on_fire).unwrap(), fired)
    }

    const CTX: EngineCtx = EngineCtx(1);
    const S: EngineStream = EngineStream(7);

    #[test]
    fn work_that_never_ends_fires_it_past_the_limit() {
        let (wd, fired) = start(100);
        wd.submitted(CTX, S, Box::new(At(Instant::now() + Duration::from_secs(3600))));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fired.load(Ordering::SeqCst), 0, "fired before the limit");
        std::thread::sleep(Duration::from_millis(300));
        assert!(fired.load(Ordering::SeqCst) >= 100, "did not fire");
    }

    #[test]
    fn idle_and_steady_progress_never_fire_it() {
        let (wd, fired) = start(100);
        // Idle: nothing pending, for three limits.
        std::thread::sleep(Duration::from_millis(300));
        // A queue of 40 ms kernels, 400 ms in all: progress at every one.
        let now = Instant::now();
        for i in 1..=10 {
            wd.submitted(CTX, S, Box::new(At(now + Duration::from_millis(40 * i))));
        }
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        // A destroyed context's marks go with it.
        wd.submitted(CTX, S, Box::new(At(Instant::now() + Duration::from_secs(3600))));
        wd.forget_ctx(CTX);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fired.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_thread_lets_go_with_the_last_handle() {
        let (wd, _) = start(8);
        let weak = Arc::downgrade(&wd.shared);
        drop(wd);
        std::thread::sleep(Duration::from_millis(50));
        assert!(weak.upgrade().is_none());
    }
}
