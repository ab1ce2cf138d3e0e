//! The driver's half of a split virtqueue (virtio 1.2, 2.7): descriptor
//! table, available ring and used ring in memory shared with the device.
//! This side fills descriptors and publishes chain heads; the device returns
//! heads in the used ring. Nothing read back is trusted: every completion is
//! checked against the driver's own record of what it has in flight, and
//! descriptors are reclaimed from that record, never from shared memory.

use super::memory::GuestRam;
use crate::transport::TransportError;
use std::sync::atomic::{fence, Ordering};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Longest chain a request uses (command, out-of-line payload, response).
pub const MAX_CHAIN: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct Desc {
    addr: U64,
    len: U32,
    flags: U16,
    next: U16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct UsedElem {
    id: U32,
    len: U32,
}

/// One buffer of a chain, by guest-physical address.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub gpa: u64,
    pub len: u32,
    /// Device-writable (a response buffer) rather than device-readable.
    pub device_writes: bool,
}

/// A chain the device has returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub head: u16,
    /// Bytes the device says it wrote, already checked against the chain's
    /// writable capacity.
    pub len: u32,
}

#[derive(Clone, Copy)]
struct Chain {
    descs: [u16; MAX_CHAIN],
    n: usize,
    writable: u64,
}

/// Offsets of the three parts of a ring of `size` entries placed at `base`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Layout {
    pub fn new(base: u64, size: u16) -> Layout {
        let n = size as u64;
        let desc = base;
        let avail = desc + 16 * n;
        // The used ring must be 4-byte aligned; a page keeps the device's
        // writes off the driver's cache lines.
        let used = (avail + 6 + 2 * n).next_multiple_of(4096);
        Layout { size, desc, avail, used }
    }

    /// Bytes the whole ring spans from `base`.
    pub fn span(&self) -> u64 {
        self.used + 6 + 8 * self.size as u64 - self.desc
    }

    fn avail_idx_off(&self) -> u64 {
        self.avail + 2
    }

    fn avail_entry(&self, i: u16) -> u64 {
        self.avail + 4 + 2 * (i % self.size) as u64
    }

    fn used_flags_off(&self) -> u64 {
        self.used
    }

    fn used_idx_off(&self) -> u64 {
        self.used + 2
    }

    /// The device's used index as it is now (for spinning on without the
    /// queue's lock).
    pub fn used_idx(&self, ram: &GuestRam) -> Option<u16> {
        ram.load_u16(self.used_idx_off(), Ordering::Acquire).ok()
    }

    fn used_entry(&self, i: u16) -> u64 {
        self.used + 4 + 8 * (i % self.size) as u64
    }
}

pub struct SplitQueue {
    layout: Layout,
    free: Vec<u16>,
    /// What is in flight, by head descriptor.
    chains: Vec<Option<Chain>>,
    next_avail: u16,
    last_used: u16,
    in_flight: u16,
}

fn protocol(msg: String) -> TransportError {
    TransportError::Protocol(msg)
}

impl SplitQueue {
    /// Lays out an empty ring. `size` must be a power of two.
    pub fn new(ram: &GuestRam, layout: Layout) -> Result<SplitQueue, TransportError> {
        if !layout.size.is_power_of_two() {
            return Err(protocol(format!("queue size {} is not a power of two", layout.size)));
        }
        ram.zero(layout.desc, layout.span())?;
        Ok(SplitQueue {
            layout,
            free: (0..layout.size).rev().collect(),
            chains: vec![None; layout.size as usize],
            next_avail: 0,
            last_used: 0,
            in_flight: 0,
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether a chain of `n` buffers fits now.
    pub fn has_room(&self, n: usize) -> bool {
        self.free.len() >= n
    }

    /// Writes a chain and publishes its head. Returns None when there are
    /// not enough free descriptors.
    pub fn add(&mut self, ram: &GuestRam, bufs: &[Buf]) -> Result<Option<u16>, TransportError> {
        if bufs.is_empty() || bufs.len() > MAX_CHAIN {
            return Err(protocol(format!("a chain of {} buffers", bufs.len())));
        }
        if self.free.len() < bufs.len() {
            return Ok(None);
        }
        let mut chain = Chain { descs: [0; MAX_CHAIN], n: bufs.len(), writable: 0 };
        for slot in chain.descs.iter_mut().take(bufs.len()) {
            *slot = self.free.pop().unwrap_or_default();
        }
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = 0;
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            if b.device_writes {
                flags |= VRING_DESC_F_WRITE as u16;
                chain.writable += b.len as u64;
            }
            let d = Desc {
                addr: U64::new(b.gpa),
                len: U32::new(b.len),
                flags: U16::new(flags),
                next: U16::new(if last { 0 } else { chain.descs[i + 1] }),
            };
            ram.write(self.layout.desc + 16 * chain.descs[i] as u64, d.as_bytes())?;
        }
        let head = chain.descs[0];
        self.chains[head as usize] = Some(chain);
        ram.write(self.layout.avail_entry(self.next_avail), &head.to_le_bytes())?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The descriptors and the ring entry above become visible to the
        // device no later than the index that publishes them.
        ram.store_u16(self.layout.avail_idx_off(), self.next_avail, Ordering::Release)?;
        self.in_flight += 1;
        Ok(Some(head))
    }

    /// Whether the device wants a kick for what was just published.
    pub fn needs_kick(&self, ram: &GuestRam) -> bool {
        // Order the avail index store before reading the device's flags, or
        // both sides could decide the other will act.
        fence(Ordering::SeqCst);
        ram.load_u16(self.layout.used_flags_off(), Ordering::Relaxed)
            .map_or(true, |f| f & VRING_USED_F_NO_NOTIFY as u16 == 0)
    }

    /// How far this driver has consumed the used ring.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Takes the next chain the device returned, if any. An error means the
    /// device broke the protocol; the queue must not be used afterwards.
    pub fn pop_used(&mut self, ram: &GuestRam) -> Result<Option<Completion>, TransportError> {
        let idx = ram.load_u16(self.layout.used_idx_off(), Ordering::Acquire)?;
        if idx == self.last_used {
            return Ok(None);
        }
        let ready = idx.wrapping_sub(self.last_used);
        if ready > self.in_flight {
            return Err(protocol(format!(
                "used index {idx} is {ready} past {} with only {} requests in flight",
                self.last_used, self.in_flight
            )));
        }
        let mut e = UsedElem::default();
        ram.read(self.layout.used_entry(self.last_used), e.as_mut_bytes())?;
        self.last_used = self.last_used.wrapping_add(1);
        let (id, len) = (e.id.get(), e.len.get());
        let chain =
            usize::try_from(id).ok().and_then(|i| self.chains.get_mut(i)).and_then(Option::take).ok_or_else(|| {
                protocol(format!("the device returned descriptor {id}, which is not a chain in flight"))
            })?;
        self.free.extend_from_slice(&chain.descs[..chain.n]);
        self.in_flight -= 1;
        if len as u64 > chain.writable {
            return Err(protocol(format!(
                "the device wrote {len} bytes for descriptor {id}, which has room for {}",
                chain.writable
            )));
        }
        Ok(Some(Completion { head: id as u16, len }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::direct::memory::GPA_BASE;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

    const SIZE: u16 = 8;

    /// The same memfd, seen as guest memory by rust-vmm's device-side queue
    /// (the one gpuvisor-backend uses).
    struct Device {
        mem: GuestMemoryMmap<()>,
        q: Queue,
    }

    fn setup() -> (GuestRam, SplitQueue, Device) {
        let ram = GuestRam::new(1 << 20).unwrap();
        let layout = Layout::new(0, SIZE);
        let sq = SplitQueue::new(&ram, layout).unwrap();
        let fd = ram.region_info().unwrap().mmap_handle;
        // SAFETY: a dup of the memfd for the test's second mapping.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(libc::dup(fd)) };
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(GPA_BASE),
            1 << 20,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let mut q = Queue::new(SIZE).unwrap();
        q.set_desc_table_address(Some((GPA_BASE + layout.desc) as u32), Some((GPA_BASE >> 32) as u32));
        q.set_avail_ring_address(Some((GPA_BASE + layout.avail) as u32), Some((GPA_BASE >> 32) as u32));
        q.set_used_ring_address(Some((GPA_BASE + layout.used) as u32), Some((GPA_BASE >> 32) as u32));
        q.set_ready(true);
        assert!(q.is_valid(&mem));
        (ram, sq, Device { mem, q })
    }

    fn chain(cmd: u64, resp: u64) -> [Buf; 2] {
        [
            Buf { gpa: GPA_BASE + cmd, len: 32, device_writes: false },
            Buf { gpa: GPA_BASE + resp, len: 24, device_writes: true },
        ]
    }

    impl Device {
        /// Pops every available chain; returns (head, readable, writable bytes).
        fn pop_all(&mut self) -> Vec<(u16, u32, u32)> {
            let mut out = Vec::new();
            for c in self.q.iter(&self.mem).unwrap() {
                let head = c.head_index();
                let (mut r, mut w) = (0, 0);
                for d in c {
                    if d.is_write_only() {
                        w += d.len();
                    } else {
                        r += d.len();
                    }
                }
                out.push((head, r, w));
            }
            out
        }

        fn complete(&mut self, head: u16, len: u32) {
            self.q.add_used(&self.mem, head, len).unwrap();
        }
    }

    #[test]
    fn chains_round_trip_through_the_device_side_queue_and_wrap() {
        let (ram, mut sq, mut dev) = setup();
        // Several laps of the ring, more than its size, completing out of order.
        for lap in 0..5u64 {
            let mut heads = Vec::new();
            for i in 0..SIZE as u64 / 2 {
                heads.push(sq.add(&ram, &chain(8192 + i * 64, 16384 + i * 64)).unwrap().unwrap());
            }
            assert!(!sq.has_room(1), "lap {lap}: 4 chains of 2 fill 8 descriptors");
            assert_eq!(sq.add(&ram, &chain(0, 0)).unwrap(), None);
            let seen = dev.pop_all();
            assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), heads);
            assert!(seen.iter().all(|s| s.1 == 32 && s.2 == 24));
            for &h in heads.iter().rev() {
                dev.complete(h, 24);
            }
            let mut got = Vec::new();
            while let Some(c) = sq.pop_used(&ram).unwrap() {
                got.push(c.head);
                assert_eq!(c.len, 24);
            }
            heads.reverse();
            assert_eq!(got, heads);
            assert_eq!(sq.in_flight(), 0);
        }
    }

    #[test]
    fn a_device_that_returns_an_unknown_head_is_an_error() {
        let (ram, mut sq, mut dev) = setup();
        let h = sq.add(&ram, &chain(8192, 16384)).unwrap().unwrap();
        dev.pop_all();
        dev.complete(h + 1, 0);
        assert!(matches!(sq.pop_used(&ram), Err(TransportError::Protocol(_))));
    }

    #[test]
    fn a_device_that_returns_a_head_twice_is_an_error() {
        let (ram, mut sq, mut dev) = setup();
        let a = sq.add(&ram, &chain(8192, 16384)).unwrap().unwrap();
        sq.add(&ram, &chain(8192, 16384)).unwrap().unwrap();
        dev.pop_all();
        dev.complete(a, 0);
        dev.complete(a, 0);
        assert_eq!(sq.pop_used(&ram).unwrap().map(|c| c.head), Some(a));
        assert!(matches!(sq.pop_used(&ram), Err(TransportError::Protocol(_))));
    }

    #[test]
    fn a_device_that_claims_more_bytes_than_the_response_holds_is_an_error() {
        let (ram, mut sq, mut dev) = setup();
        let h = sq.add(&ram, &chain(8192, 16384)).unwrap().unwrap();
        dev.pop_all();
        dev.complete(h, 25);
        assert!(matches!(sq.pop_used(&ram), Err(TransportError::Protocol(_))));
    }

    #[test]
    fn a_used_index_past_what_is_in_flight_is_an_error() {
        let (ram, mut sq, _dev) = setup();
        sq.add(&ram, &chain(8192, 16384)).unwrap().unwrap();
        ram.store_u16(sq.layout().used_idx_off(), 3, Ordering::Release).unwrap();
        assert!(matches!(sq.pop_used(&ram), Err(TransportError::Protocol(_))));
    }

    #[test]
    fn kicks_are_skipped_while_the_device_says_so() {
        let (ram, mut sq, _dev) = setup();
        sq.add(&ram, &chain(8192, 16384)).unwrap().unwrap();
        assert!(sq.needs_kick(&ram));
        ram.store_u16(sq.layout().used_flags_off(), VRING_USED_F_NO_NOTIFY as u16, Ordering::Release).unwrap();
        assert!(!sq.needs_kick(&ram));
    }

    #[test]
    fn a_device_thread_sees_whole_chains() {
        // The device runs in another thread and reads each chain as soon as
        // the index moves: descriptors must be complete by then.
        let (ram, mut sq, mut dev) = setup();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            let mut n = 0u32;
            while n < 2000 && !s.load(Ordering::Relaxed) {
                for (head, r, w) in dev.pop_all() {
                    assert_eq!((r, w), (32, 24), "chain {head} seen half-written");
                    dev.complete(head, 24);
                    n += 1;
                }
            }
            n
        });
        let mut sent = 0;
        while sent < 2000 {
            while sq.pop_used(&ram).unwrap().is_some() {}
            if sq.add(&ram, &chain(8192, 16384)).unwrap().is_some() {
                sent += 1;
            }
        }
        while sq.in_flight() > 0 {
            while sq.pop_used(&ram).unwrap().is_some() {}
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), 2000);
    }
}
