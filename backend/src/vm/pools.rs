//! Stream-ordered allocation (cuMemAllocAsync, pools) for one guest
//! process. Each pool is a window of device addresses in which the guest
//! places its allocations itself, so that an allocation needs no reply; the
//! backend backs the window with physical memory in segments (whole
//! granules, charged to the VM's quota) when the guest asks, orders every
//! reuse of freed memory after its free with an event, and gives segments
//! back, zeroed, when the guest releases them (above the pool's release
//! threshold at a synchronization, or trimmed). The guest mirrors the
//! segments, so it knows which allocations need new memory (those wait for
//! the reply, and see CUDA_ERROR_OUT_OF_MEMORY past the quota) and which do
//! not; everything it sends is checked against the tables here.

use super::{Client, Reply, Vm};
use crate::engine::{EngineEvent, EnginePhys};
use crate::error::{Error, Result};
use crate::handles::Allocation;
use protocol::decode::Decoded;
use protocol::*;
use std::collections::{BTreeMap, HashMap};
use tracing::warn;
use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

/// `CU_EVENT_DISABLE_TIMING`: the events that order frees are never timed.
const EVENT_DISABLE_TIMING: u32 = 0x2;
/// Frees not yet known to be done that a pool keeps before it asks the
/// engine which are.
const PENDING_CHECK: usize = 64;
/// A pool's window is this many times the VM's quota: room for the guest's
/// placement to fragment without running out of addresses.
const WINDOW_PER_QUOTA: u64 = 4;

/// Physical memory backing part of a pool's window.
#[derive(Debug)]
struct Segment {
    len: u64,
    phys: EnginePhys,
}

/// A free that the device may not have reached yet: whatever reuses its
/// bytes first waits for `event`, recorded where the free was.
#[derive(Debug)]
struct PendingFree {
    start: u64,
    len: u64,
    event: EngineEvent,
    /// Guest context of the event: its events end with it.
    ctx: u64,
}

#[derive(Debug)]
struct Pool {
    base: u64,
    len: u64,
    /// Backed ranges, by base; they never overlap.
    segments: BTreeMap<u64, Segment>,
    /// Allocations in use: base → size.
    live: BTreeMap<u64, u64>,
    pending: Vec<PendingFree>,
}

impl Pool {
    /// Whether `[start, end)` overlaps an allocation in use.
    fn in_use(&self, start: u64, end: u64) -> bool {
        self.live.range(..end).next_back().is_some_and(|(b, s)| b + s > start)
    }

    /// The parts of `[start, end)` no segment backs.
    fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = start;
        if let Some((b, s)) = self.segments.range(..start).next_back() {
            at = at.max(b + s.len);
        }
        for (&b, s) in self.segments.range(start..end) {
            if b > at {
                gaps.push((at, b - at));
            }
            at = at.max(b + s.len);
        }
        if at < end {
            gaps.push((at, end - at));
        }
        gaps
    }
}

/// One client's pools, by guest id.
#[derive(Debug, Default)]
pub(super) struct ClientPools {
    pools: HashMap<u64, Pool>,
}

impl ClientPools {
    /// Context `ctx` was destroyed, with its events; its work is done, so
    /// the frees it recorded are too.
    pub(super) fn forget_ctx(&mut self, ctx: u64) {
        for p in self.pools.values_mut() {
            p.pending.retain(|f| f.ctx != ctx);
        }
    }
}

impl Vm {
    /// The stream-ordered allocator's commands.
    pub(super) fn pool_command(&mut self, client: &mut Client, d: &Decoded<'_>) -> Result<Option<Reply>> {
        let g = self.engine.vmm_granularity().ok_or(Error::NotSupported("memory pools"))?;
        match d.cmd {
            Command::MemPoolCreate(c) => {
                let id = c.id.get();
                if id == 0 || client.pools.pools.contains_key(&id) {
                    return Err(Error::HandleInUse { kind: "memory pool", id });
                }
                let len = self
                    .quota
                    .checked_mul(WINDOW_PER_QUOTA)
                    .and_then(|l| l.checked_next_multiple_of(g))
                    .ok_or(Error::InvalidArgument("pool window overflows"))?
                    .max(g);
                client.vmm.take_va(len)?;
                let base = match self.engine.va_reserve(len, g, 0) {
                    Ok(b) => b,
                    Err(e) => {
                        client.vmm.give_va(len);
                        return Err(e.into());
                    }
                };
                let pool = Pool { base, len, segments: BTreeMap::new(), live: BTreeMap::new(), pending: Vec::new() };
                client.pools.pools.insert(id, pool);
                let r = MemPoolCreateReply { base: U64::new(base), len: U64::new(len) };
                Ok(Some(Reply::ok(r.as_bytes().to_vec())))
            }
            Command::MemPoolDestroy(c) => {
                let id = c.id.get();
                let pool = client.pools.pools.remove(&id).ok_or(Error::HandleNotFound { kind: "memory pool", id })?;
                self.dispose_pool(client, pool, true);
                Ok(None)
            }
            Command::MemAllocAsync(m) => {
                let grow = d.flags & CMD_FLAG_ASYNC == 0;
                self.pool_alloc(client, &m, g, grow)
            }
            Command::MemFreeAsync(m) => {
                self.pool_free(client, m.dptr.get(), m.stream.get(), d.ctx)?;
                Ok(None)
            }
            Command::MemPoolRelease(r) => {
                let (id, va) = (r.pool_id.get(), r.va.get());
                let pool = client.pools.pools.get_mut(&id).ok_or(Error::HandleNotFound { kind: "memory pool", id })?;
                let seg_len = pool.segments.get(&va).ok_or(Error::InvalidArgument("not a segment of the pool"))?.len;
                if pool.in_use(va, va + seg_len) {
                    return Err(Error::InvalidArgument("segment holds allocations in use"));
                }
                // The guest releases only what it knows the device is done
                // with; wait anyway, so that nothing in flight can touch
                // memory on its way to another owner.
                let (done, keep): (Vec<PendingFree>, Vec<PendingFree>) = std::mem::take(&mut pool.pending)
                    .into_iter()
                    .partition(|f| f.start < va + seg_len && va < f.start + f.len);
                pool.pending = keep;
                let Some(seg) = pool.segments.remove(&va) else {
                    return Err(Error::InvalidArgument("not a segment of the pool"));
                };
                for f in done {
                    if let Err(e) = self.engine.event_synchronize(f.event) {
                        warn!(vm = %self.name, "waiting for a pool free: {e}");
                    }
                    let _ = self.engine.event_destroy(f.event);
                }
                if let Err(e) = self.give_back_phys(client, seg.phys, seg.len, Some(va)) {
                    // Still mapped: it stays the pool's.
                    if let Some(pool) = client.pools.pools.get_mut(&id) {
                        pool.segments.insert(va, seg);
                    }
                    return Err(e);
                }
                Ok(None)
            }
            _ => Err(Error::NotSupported("not a pool command")),
        }
    }

    fn pool_alloc(&mut self, client: &mut Client, m: &MemAllocAsync, g: u64, grow: bool) -> Result<Option<Reply>> {
        let (id, dptr, size) = (m.pool_id.get(), m.dptr.get(), m.size.get());
        let stream = Self::stream(client, m.stream.get())?;
        let pool = client.pools.pools.get(&id).ok_or(Error::HandleNotFound { kind: "memory pool", id })?;
        let bad = Error::BadDeviceRange { dptr, len: size };
        let end = dptr.checked_add(size).filter(|_| size > 0).ok_or(Error::BadDeviceRange { dptr, len: size })?;
        if dptr < pool.base || end > pool.base + pool.len {
            return Err(bad);
        }
        if pool.in_use(dptr, end) {
            return Err(Error::InvalidArgument("pool allocation overlaps one in use"));
        }
        // Whole granules around it; the window is granule-aligned, so they
        // stay inside it.
        let gaps = pool.gaps(dptr - dptr % g, end.next_multiple_of(g));
        if !gaps.is_empty() && !grow {
            return Err(Error::InvalidArgument("pool allocation is not backed"));
        }
        // Stream order: after every free of these bytes the device may not
        // have reached yet.
        let waits: Vec<EngineEvent> =
            pool.pending.iter().filter(|f| f.start < end && dptr < f.start + f.len).map(|f| f.event).collect();
        for ev in waits {
            self.engine.stream_wait_event(stream, ev, 0)?;
        }
        let mut added: Vec<(u64, Segment)> = Vec::new();
        for &(va, len) in &gaps {
            let made = self.new_phys(client, len).and_then(|phys| match self.engine.mem_map(va, len, phys) {
                Ok(()) => Ok(phys),
                Err(e) => {
                    let _ = self.engine.phys_release(phys);
                    self.uncharge(client, len);
                    Err(e.into())
                }
            });
            match made {
                Ok(phys) => added.push((va, Segment { len, phys })),
                Err(e) => {
                    // All or nothing, so the guest's mirror stays true. The
                    // memory never held this client's data.
                    for (va, s) in added {
                        let _ = self.engine.mem_unmap(va, s.len);
                        let _ = self.engine.phys_release(s.phys);
                        self.uncharge(client, s.len);
                    }
                    self.gate.note_residency(self.engine.residency());
                    return Err(e);
                }
            }
        }
        let Some(pool) = client.pools.pools.get_mut(&id) else {
            return Err(Error::HandleNotFound { kind: "memory pool", id });
        };
        let mut reply = Vec::new();
        for (va, s) in added {
            reply.extend_from_slice(PoolSegment { va: U64::new(va), len: U64::new(s.len) }.as_bytes());
            pool.segments.insert(va, s);
        }
        pool.live.insert(dptr, size);
        // Pool memory is the pool's, not a context's: ctx 0, and only
        // MemFreeAsync (not MemFree) gives it back.
        client.allocations.insert(dptr, Allocation { size, ctx: 0, freeable: false, charged: 0 });
        Ok(grow.then(|| Reply::ok(reply)))
    }

    fn pool_free(&mut self, client: &mut Client, dptr: u64, stream_id: u64, ctx: u64) -> Result<()> {
        let stream = Self::stream(client, stream_id)?;
        let Some((&id, _)) = client.pools.pools.iter().find(|(_, p)| p.live.contains_key(&dptr)) else {
            return Err(Error::NotAnAllocation(dptr));
        };
        let event = self.engine.event_create(EVENT_DISABLE_TIMING)?;
        if let Err(e) = self.engine.event_record(event, stream) {
            let _ = self.engine.event_destroy(event);
            return Err(e.into());
        }
        client.allocations.remove_range(dptr);
        let Some(pool) = client.pools.pools.get_mut(&id) else {
            return Err(Error::NotAnAllocation(dptr));
        };
        let len = pool.live.remove(&dptr).unwrap_or(0);
        pool.pending.push(PendingFree { start: dptr, len, event, ctx });
        if pool.pending.len() > PENDING_CHECK {
            let pending = std::mem::take(&mut pool.pending);
            let mut keep = Vec::with_capacity(pending.len());
            for f in pending {
                if self.engine.event_query(f.event).is_ok() {
                    let _ = self.engine.event_destroy(f.event);
                } else {
                    keep.push(f);
                }
            }
            if let Some(pool) = client.pools.pools.get_mut(&id) {
                pool.pending = keep;
            }
        }
        Ok(())
    }

    /// Gives a pool's memory and addresses back. `events_live`: its
    /// pending frees' events still exist (their contexts do) and are
    /// waited for and destroyed; otherwise their contexts are gone, with
    /// the work.
    fn dispose_pool(&mut self, client: &mut Client, pool: Pool, events_live: bool) {
        if events_live {
            for f in &pool.pending {
                if let Err(e) = self.engine.event_synchronize(f.event) {
                    warn!(vm = %self.name, "waiting for a pool free: {e}");
                }
                let _ = self.engine.event_destroy(f.event);
            }
        }
        for dptr in pool.live.keys() {
            client.allocations.remove_range(*dptr);
        }
        let mut all_unmapped = true;
        for (va, s) in pool.segments {
            if let Err(e) = self.give_back_phys(client, s.phys, s.len, Some(va)) {
                warn!(vm = %self.name, va, "unmapping pool memory: {e}");
                all_unmapped = false;
            }
        }
        // A range that could not be unmapped keeps its addresses reserved.
        if all_unmapped {
            if let Err(e) = self.engine.va_free(pool.base, pool.len) {
                warn!(vm = %self.name, "freeing a pool's addresses: {e}");
            }
            client.vmm.give_va(pool.len);
        }
    }

    /// Every pool of a client that went away (its contexts are gone).
    pub(super) fn release_client_pools(&mut self, client: &mut Client) {
        let pools: Vec<Pool> = client.pools.pools.drain().map(|(_, p)| p).collect();
        for p in pools {
            self.dispose_pool(client, p, false);
        }
    }
}
