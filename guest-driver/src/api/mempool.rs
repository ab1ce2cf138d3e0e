//! One memory pool as the guest keeps it: the window of device addresses the
//! backend reserved for it, where the guest places allocations itself (so
//! that cuMemAllocAsync needs no reply), a mirror of the segments of
//! physical memory backing the window (so that it knows which allocations
//! need new memory, and wait for the backend's answer, and which do not),
//! the frees the device may not have reached, and the pool's attributes.
//! Nothing here talks to the backend; `stream_alloc.rs` does.

use std::collections::BTreeMap;

/// Alignment of pool allocations: at least what cuMemAlloc guarantees (256).
pub const POOL_ALIGN: u64 = 512;

/// The stream a free was ordered on: (guest context, stream id), with the
/// legacy and per-thread default streams as one (the backend runs both as
/// the context's NULL stream).
pub type StreamKey = (u64, u64);

pub fn stream_key(ctx: u64, stream: u64) -> StreamKey {
    (ctx, if stream <= protocol::STREAM_PER_THREAD { 0 } else { stream })
}

#[derive(Debug, Clone, Copy)]
struct Live {
    size: u64,
    /// Addresses taken: `size` rounded up to `POOL_ALIGN`.
    span: u64,
}

/// A free the device may not have reached yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    start: u64,
    len: u64,
    stream: StreamKey,
}

/// `CUmemPool_attribute` values the program can set.
#[derive(Debug, Clone, Copy)]
pub struct PoolAttrs {
    pub follow_event_dependencies: bool,
    pub allow_opportunistic: bool,
    /// Reuse memory freed on another stream, ordering the allocation after
    /// the free on the device. Off, such memory waits until the guest knows
    /// the free is done (a synchronization).
    pub allow_internal_dependencies: bool,
    /// Backing memory kept over synchronizations.
    pub release_threshold: u64,
}

impl Default for PoolAttrs {
    fn default() -> Self {
        PoolAttrs {
            follow_event_dependencies: true,
            allow_opportunistic: true,
            allow_internal_dependencies: true,
            release_threshold: 0,
        }
    }
}

/// Where an allocation goes: its address, and the ranges of whole granules
/// around it that no segment backs yet (the backend backs them the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub dptr: u64,
    pub gaps: Vec<(u64, u64)>,
}

#[derive(Debug)]
pub struct PoolInfo {
    pub base: u64,
    pub len: u64,
    pub granularity: u64,
    /// Most backing memory the pool may hold; 0 for no limit of its own.
    pub max_size: u64,
    pub attrs: PoolAttrs,
    /// Destroyed by the program while allocations were still out: it ends
    /// with the last of them.
    pub destroyed: bool,
    /// Unused addresses: start → length, coalesced.
    free: BTreeMap<u64, u64>,
    /// Backed ranges: start → length, as the backend reported them.
    segments: BTreeMap<u64, u64>,
    live: BTreeMap<u64, Live>,
    pending: Vec<Pending>,
    reserved: u64,
    used: u64,
    pub reserved_high: u64,
    pub used_high: u64,
}

impl PoolInfo {
    /// A pool over window `[base, base + len)`, whose backing comes in
    /// multiples of `granularity`.
    pub fn new(base: u64, len: u64, granularity: u64, max_size: u64) -> Self {
        PoolInfo {
            base,
            len,
            granularity,
            max_size,
            attrs: PoolAttrs::default(),
            destroyed: false,
            free: BTreeMap::from([(base, len)]),
            segments: BTreeMap::new(),
            live: BTreeMap::new(),
            pending: Vec::new(),
            reserved: 0,
            used: 0,
            reserved_high: 0,
            used_high: 0,
        }
    }

    /// Bytes of backing memory the pool holds.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Bytes of its allocations in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn has_live(&self) -> bool {
        !self.live.is_empty()
    }

    pub fn live_size(&self, dptr: u64) -> Option<u64> {
        self.live.get(&dptr).map(|l| l.size)
    }

    /// The parts of `[start, end)` no segment backs.
    fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = start;
        if let Some((b, l)) = self.segments.range(..start).next_back() {
            at = at.max(b + l);
        }
        for (&b, &l) in self.segments.range(start..end) {
            if b > at {
                gaps.push((at, b - at));
            }
            at = at.max(b + l);
        }
        if at < end {
            gaps.push((at, end - at));
        }
        gaps
    }

    /// Whole granules around `[dptr, dptr + size)` that need backing.
    fn gaps_around(&self, dptr: u64, size: u64) -> Vec<(u64, u64)> {
        let g = self.granularity;
        // Inside the window, which is granule-aligned: no overflow.
        self.gaps(dptr - dptr % g, (dptr + size).next_multiple_of(g))
    }

    /// A free of another stream than `stream` that the device may not have
    /// reached and that overlaps `[start, end)`: its end, if there is one.
    fn foreign_pending(&self, start: u64, end: u64, stream: StreamKey) -> Option<u64> {
        self.pending
            .iter()
            .filter(|p| p.stream != stream && p.start < end && start < p.start + p.len)
            .map(|p| p.start + p.len)
            .max()
    }

    /// Where `size` bytes for work on `stream` go: the lowest address that
    /// needs no new memory, else the lowest address at all; `None` when the
    /// window has no room (or the pool's maximum size would be passed).
    pub fn place(&self, size: u64, stream: StreamKey) -> Option<Placement> {
        let span = size.checked_next_multiple_of(POOL_ALIGN)?;
        if size == 0 || span > self.len {
            return None;
        }
        // Candidate starts in each free range: its start, and the start of
        // every segment inside it (so that backed memory is found first).
        let mut fallback = None;
        for (&start, &len) in &self.free {
            let end = start + len;
            let seg_starts = self.segments.range(start..end).map(|(&b, _)| b);
            for cand in std::iter::once(start).chain(seg_starts) {
                let Some(dptr) = self.fit(cand, end, span, stream) else { continue };
                let gaps = self.gaps_around(dptr, size);
                if gaps.is_empty() {
                    return Some(Placement { dptr, gaps });
                }
                if fallback.is_none() {
                    fallback = Some(Placement { dptr, gaps });
                }
            }
        }
        let p = fallback?;
        let grow: u64 = p.gaps.iter().map(|g| g.1).sum();
        if self.max_size != 0 && self.reserved.saturating_add(grow) > self.max_size {
            return None;
        }
        Some(p)
    }

    /// The first aligned address from `from` where `span` bytes fit before
    /// `end`, skipping memory freed on other streams the device may not be
    /// done with when the pool may not order the reuse after the free.
    fn fit(&self, from: u64, end: u64, span: u64, stream: StreamKey) -> Option<u64> {
        let mut at = from.checked_next_multiple_of(POOL_ALIGN)?;
        loop {
            let stop = at.checked_add(span).filter(|&s| s <= end)?;
            if self.attrs.allow_internal_dependencies {
                return Some(at);
            }
            match self.foreign_pending(at, stop, stream) {
                None => return Some(at),
                Some(past) => at = past.checked_next_multiple_of(POOL_ALIGN)?,
            }
        }
    }

    /// Records an allocation at a placement's address, with the segments
    /// the backend added for it (none when it needed no new memory).
    pub fn commit(&mut self, dptr: u64, size: u64) {
        let span = size.next_multiple_of(POOL_ALIGN);
        if let Some((&fs, &fl)) = self.free.range(..=dptr).next_back() {
            if dptr + span <= fs + fl {
                self.free.remove(&fs);
                if dptr > fs {
                    self.free.insert(fs, dptr - fs);
                }
                if fs + fl > dptr + span {
                    self.free.insert(dptr + span, fs + fl - dptr - span);
                }
            }
        }
        self.live.insert(dptr, Live { size, span });
        self.used += size;
        self.used_high = self.used_high.max(self.used);
    }

    /// Adds segments the backend backed the window with.
    pub fn add_segments(&mut self, segments: &[(u64, u64)]) {
        for &(va, len) in segments {
            if self.segments.insert(va, len).is_none() {
                self.reserved += len;
            }
        }
        self.reserved_high = self.reserved_high.max(self.reserved);
    }

    /// Gives an allocation's addresses back, as `free` or after a failed
    /// allocation. With `stream`, the free is ordered there and counts as
    /// pending until the guest knows the device reached it.
    pub fn release_addresses(&mut self, dptr: u64, stream: Option<StreamKey>) -> Option<u64> {
        let l = self.live.remove(&dptr)?;
        self.used -= l.size;
        if let Some(stream) = stream {
            self.pending.push(Pending { start: dptr, len: l.span, stream });
        }
        let (mut start, mut len) = (dptr, l.span);
        if let Some((&ps, &pl)) = self.free.range(..dptr).next_back() {
            if ps + pl == dptr {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(nl) = self.free.remove(&(dptr + l.span)) {
            len += nl;
        }
        self.free.insert(start, len);
        Some(l.size)
    }

    /// The device finished the work of the streams `done` selects.
    pub fn completed(&mut self, done: impl Fn(StreamKey) -> bool) {
        self.pending.retain(|p| !done(p.stream));
    }

    /// Takes segments out of the mirror, highest address first, until at
    /// most `keep` bytes stay: those holding no allocation and no free the
    /// device may not have reached. Their addresses, for the backend.
    pub fn take_releasable(&mut self, keep: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let idle: Vec<(u64, u64)> = self
            .segments
            .iter()
            .rev()
            .filter(|(&b, &l)| {
                let end = b + l;
                let in_use = self.live.range(..end).next_back().is_some_and(|(d, a)| d + a.span > b);
                let pending = self.pending.iter().any(|p| p.start < end && b < p.start + p.len);
                !in_use && !pending
            })
            .map(|(&b, &l)| (b, l))
            .collect();
        for (b, l) in idle {
            if self.reserved <= keep {
                break;
            }
            self.segments.remove(&b);
            self.reserved -= l;
            out.push(b);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 2 << 20;
    const BASE: u64 = 0x7f00_0000_0000;
    const A: StreamKey = (1, 0);
    const B: StreamKey = (1, 0x1000);

    fn pool() -> PoolInfo {
        PoolInfo::new(BASE, 16 * G, G, 0)
    }

    /// Places and commits `size` bytes, backing what it needed as the
    /// backend would: the placement.
    fn alloc(p: &mut PoolInfo, size: u64, stream: StreamKey) -> Placement {
        let pl = p.place(size, stream).expect("room");
        p.add_segments(&pl.gaps);
        p.commit(pl.dptr, size);
        pl
    }

    #[test]
    fn small_allocations_share_a_granule_and_only_the_first_needs_memory() {
        let mut p = pool();
        let a = alloc(&mut p, 100, A);
        assert_eq!(a, Placement { dptr: BASE, gaps: vec![(BASE, G)] });
        let b = alloc(&mut p, 1000, A);
        assert_eq!(b, Placement { dptr: BASE + POOL_ALIGN, gaps: vec![] });
        assert_eq!((p.reserved(), p.used()), (G, 1100));
        // One that runs past the granule needs only the next one.
        let c = alloc(&mut p, G, A);
        assert_eq!(c.dptr, BASE + 3 * POOL_ALIGN);
        assert_eq!(c.gaps, vec![(BASE + G, G)]);
    }

    #[test]
    fn freed_memory_is_reused_at_once_and_backed_memory_is_preferred() {
        let mut p = pool();
        let a = alloc(&mut p, 3 * G, A);
        p.release_addresses(a.dptr, Some(A));
        // The same stream, or another one with an internal dependency.
        assert_eq!(p.place(G, B), Some(Placement { dptr: BASE, gaps: vec![] }));
        p.attrs.allow_internal_dependencies = false;
        let fresh = p.place(G, B).unwrap();
        assert_eq!(fresh.dptr, BASE + 3 * G, "not over a free stream A may not have reached");
        assert_eq!(p.place(G, A).unwrap().dptr, BASE);
        p.completed(|s| s == A);
        assert_eq!(p.place(G, B).unwrap().dptr, BASE, "once stream A is known done");
        // Lower addresses that need memory lose to higher ones that have it.
        let mut p = pool();
        let low = alloc(&mut p, G, A);
        let high = alloc(&mut p, G, A);
        p.release_addresses(low.dptr, None);
        assert_eq!(p.take_releasable(G), vec![low.dptr]);
        p.release_addresses(high.dptr, None);
        assert_eq!(p.place(G / 2, A), Some(Placement { dptr: high.dptr, gaps: vec![] }));
    }

    #[test]
    fn only_idle_segments_are_released_down_to_what_is_kept() {
        let mut p = pool();
        let a = alloc(&mut p, G, A);
        let b = alloc(&mut p, G, A);
        let c = alloc(&mut p, G, A);
        assert_eq!(p.reserved(), 3 * G);
        p.release_addresses(a.dptr, Some(A));
        p.release_addresses(c.dptr, Some(B));
        assert!(p.take_releasable(0).is_empty(), "frees the device may not have reached");
        p.completed(|s| s == B);
        assert_eq!(p.take_releasable(0), vec![c.dptr]);
        p.completed(|_| true);
        assert_eq!(p.take_releasable(2 * G), Vec::<u64>::new(), "already at what is kept");
        assert_eq!(p.take_releasable(0), vec![a.dptr], "b holds an allocation");
        assert_eq!((p.reserved(), p.reserved_high), (G, 3 * G));
        assert_eq!(p.live_size(b.dptr), Some(G));
        // Released memory is backed again when it is used again.
        p.release_addresses(b.dptr, None);
        assert_eq!(p.place(2 * G, A), Some(Placement { dptr: BASE, gaps: vec![(BASE, G)] }));
    }

    #[test]
    fn the_window_and_the_maximum_size_bound_a_pool() {
        let mut p = PoolInfo::new(BASE, 4 * G, G, 2 * G);
        assert_eq!(p.place(0, A), None);
        assert_eq!(p.place(4 * G + 1, A), None, "larger than the window");
        assert_eq!(p.place(u64::MAX, A), None);
        assert_eq!(p.place(3 * G, A), None, "past the pool's maximum size");
        alloc(&mut p, 2 * G, A);
        assert_eq!(p.place(G, A), None);
        // Freed addresses coalesce again.
        let mut p = PoolInfo::new(BASE, 4 * G, G, 0);
        let xs: Vec<u64> = (0..4).map(|_| alloc(&mut p, G, A).dptr).collect();
        assert_eq!(p.place(G, A), None, "window full");
        for x in [xs[1], xs[3], xs[2], xs[0]] {
            p.release_addresses(x, None);
        }
        assert_eq!(p.place(4 * G, A).map(|pl| pl.dptr), Some(BASE));
    }
}
