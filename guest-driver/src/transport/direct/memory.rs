//! The memfd that plays guest RAM for the direct transport, and how it is
//! carved up: a heap for shared buffers and a ring of request areas whose
//! pieces come back out of order.

use crate::transport::TransportError;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::Ordering;
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress, MmapRegion};

/// Guest-physical address of the memfd's first byte, as the backend sees it
/// in the mem table and in every descriptor and MemEntry.
pub const GPA_BASE: u64 = 0x1_0000_0000;
const PAGE: u64 = 4096;

/// One memfd, mapped shared in this process and registered with the backend
/// as a single region. Every access is bounds-checked through vm-memory.
pub struct GuestRam {
    region: GuestRegionMmap<()>,
}

fn ram_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> TransportError {
    move |e| TransportError::Protocol(format!("{what}: {e}"))
}

impl GuestRam {
    pub fn new(len: u64) -> Result<GuestRam, TransportError> {
        let size = usize::try_from(len).map_err(|_| TransportError::OutOfMemory(usize::MAX))?;
        // SAFETY: a static NUL-terminated name and plain flags.
        let raw = unsafe { libc::memfd_create(c"gpuvisor-direct".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(TransportError::Io { op: "memfd_create", source: std::io::Error::last_os_error() });
        }
        // SAFETY: `raw` is a descriptor we just created and own.
        let file = unsafe { File::from_raw_fd(raw) };
        file.set_len(len).map_err(TransportError::io("size the memfd"))?;
        let mapping = MmapRegion::from_file(FileOffset::new(file, 0), size)
            .map_err(|e| TransportError::Io { op: "mmap the memfd", source: std::io::Error::other(e.to_string()) })?;
        // Large shared buffers are 2 MiB aligned so the kernel can back them
        // with huge pages where shmem THP is enabled; a hint, so its result
        // does not matter.
        // SAFETY: advising on the mapping we just made, over its exact extent.
        unsafe { libc::madvise(mapping.as_ptr() as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
        let region = GuestRegionMmap::new(mapping, GuestAddress(GPA_BASE))
            .ok_or_else(|| TransportError::Protocol("guest memory does not fit the address space".into()))?;
        Ok(GuestRam { region })
    }

    pub fn len(&self) -> u64 {
        self.region.len()
    }

    pub fn gpa(&self, off: u64) -> u64 {
        GPA_BASE + off
    }

    /// Where `off` is mapped in this process.
    pub fn host_ptr(&self, off: u64) -> Result<*mut u8, TransportError> {
        self.region.get_host_address(MemoryRegionAddress(off)).map_err(ram_err("host address"))
    }

    /// The mem table entry that lets the backend map this memory and
    /// translate both guest-physical and our user addresses.
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo, TransportError> {
        Ok(VhostUserMemoryRegionInfo {
            guest_phys_addr: GPA_BASE,
            memory_size: self.len(),
            userspace_addr: self.host_ptr(0)? as u64,
            mmap_offset: 0,
            mmap_handle: self.fd(),
        })
    }

    fn fd(&self) -> RawFd {
        self.region.file_offset().map_or(-1, |f| f.file().as_raw_fd())
    }

    pub fn write(&self, off: u64, bytes: &[u8]) -> Result<(), TransportError> {
        self.region.write_slice(bytes, MemoryRegionAddress(off)).map_err(ram_err("write guest memory"))
    }

    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), TransportError> {
        self.region.read_slice(buf, MemoryRegionAddress(off)).map_err(ram_err("read guest memory"))
    }

    pub fn zero(&self, off: u64, len: u64) -> Result<(), TransportError> {
        let zeros = [0u8; 4096];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(zeros.len() as u64);
            self.write(off + at, &zeros[..n as usize])?;
            at += n;
        }
        Ok(())
    }

    pub fn load_u16(&self, off: u64, order: Ordering) -> Result<u16, TransportError> {
        self.region.load(MemoryRegionAddress(off), order).map_err(ram_err("load from a ring"))
    }

    pub fn store_u16(&self, off: u64, val: u16, order: Ordering) -> Result<(), TransportError> {
        self.region.store(val, MemoryRegionAddress(off), order).map_err(ram_err("store to a ring"))
    }
}

/// First-fit allocator over a range of the memfd. Remembers what it handed
/// out, so a stale or forged release cannot corrupt it.
pub struct Heap {
    free: BTreeMap<u64, u64>,
    live: BTreeMap<u64, u64>,
}

impl Heap {
    pub fn new(start: u64, len: u64) -> Heap {
        let mut free = BTreeMap::new();
        if len > 0 {
            free.insert(start, len);
        }
        Heap { free, live: BTreeMap::new() }
    }

    /// Allocates `len` bytes (rounded up to pages) aligned to `align`.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<(u64, u64)> {
        let len = len.max(1).checked_next_multiple_of(PAGE)?;
        let align = align.max(PAGE);
        let (start, size, at) = self.free.iter().find_map(|(&s, &n)| {
            let at = s.checked_next_multiple_of(align)?;
            (at.checked_add(len)? <= s + n).then_some((s, n, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        if at + len < start + size {
            self.free.insert(at + len, start + size - at - len);
        }
        self.live.insert(at, len);
        Some((at, len))
    }

    /// Returns an allocation; false if `off` is not one.
    pub fn release(&mut self, off: u64) -> bool {
        let Some(len) = self.live.remove(&off) else {
            return false;
        };
        let (mut start, mut size) = (off, len);
        if let Some((&s, &n)) = self.free.range(..off).next_back() {
            if s + n == off {
                self.free.remove(&s);
                start = s;
                size += n;
            }
        }
        if let Some(n) = self.free.remove(&(off + len)) {
            size += n;
        }
        self.free.insert(start, size);
        true
    }

    /// The length of a live allocation.
    pub fn len_of(&self, off: u64) -> Option<u64> {
        self.live.get(&off).copied()
    }
}

/// A ring of request areas: allocation always moves forward, areas are
/// returned in any order, and space is reused once everything older than it
/// came back. An area never wraps; the tail end of the ring is skipped when
/// an area does not fit there.
pub struct Arena {
    base: u64,
    cap: u64,
    /// Positions count bytes ever allocated; `pos % cap` is the offset.
    head: u64,
    tail: u64,
    /// Areas in allocation order: (start position, end position, returned).
    live: VecDeque<(u64, u64, bool)>,
}

/// Areas start on this boundary, so responses and batches stay aligned.
pub const AREA_ALIGN: u64 = 64;

impl Arena {
    pub fn new(base: u64, cap: u64) -> Arena {
        Arena { base, cap, head: 0, tail: 0, live: VecDeque::new() }
    }

    pub fn capacity(&self) -> u64 {
        self.cap
    }

    /// Allocates `len` bytes; returns (area id, offset in the memfd).
    pub fn alloc(&mut self, len: u64) -> Option<(u64, u64)> {
        let len = len.max(1).checked_next_multiple_of(AREA_ALIGN)?;
        if len > self.cap {
            return None;
        }
        let at = self.head % self.cap;
        let skip = if at + len > self.cap { self.cap - at } else { 0 };
        if self.head - self.tail + skip + len > self.cap {
            return None;
        }
        let id = self.head;
        let start = self.head + skip;
        self.head = start + len;
        self.live.push_back((id, self.head, false));
        Some((id, self.base + start % self.cap))
    }

    /// Returns the area `id`; false if it is not live.
    pub fn release(&mut self, id: u64) -> bool {
        let Ok(i) = self.live.binary_search_by_key(&id, |a| a.0) else {
            return false;
        };
        if self.live[i].2 {
            return false;
        }
        self.live[i].2 = true;
        while let Some(&(_, end, true)) = self.live.front() {
            self.tail = end;
            self.live.pop_front();
        }
        if self.live.is_empty() {
            // Start over at the ring's beginning: the next area, however
            // large, then fits without skipping.
            self.head = self.head.next_multiple_of(self.cap);
            self.tail = self.head;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_allocates_aligned_and_coalesces() {
        let mut h = Heap::new(4096, 1 << 24);
        let (a, alen) = h.alloc(100, 64).unwrap();
        assert_eq!(alen, 4096);
        let (b, _) = h.alloc(2 << 20, 2 << 20).unwrap();
        assert_eq!(b % (2 << 20), 0);
        assert!(a + alen <= b);
        assert!(!h.release(a + 1), "a release of something never allocated is refused");
        assert!(h.release(a));
        assert!(!h.release(a), "a double release is refused");
        assert!(h.release(b));
        assert_eq!(h.free.len(), 1, "freed ranges merge back into one");
        assert_eq!(h.free.get(&4096), Some(&(1 << 24)));
        assert!(h.alloc(1 << 25, 64).is_none());
    }

    #[test]
    fn arena_reuses_space_only_after_older_areas_return() {
        let mut a = Arena::new(1 << 20, 4096);
        let (x, xo) = a.alloc(1000).unwrap();
        let (y, yo) = a.alloc(1000).unwrap();
        let (z, _) = a.alloc(1000).unwrap();
        assert_eq!(xo, 1 << 20);
        assert_eq!(yo, (1 << 20) + 1024);
        assert!(a.alloc(2000).is_none(), "full: 3 KiB of 4 KiB in use");
        // Returning a younger area frees nothing.
        assert!(a.release(y));
        assert!(a.alloc(1100).is_none());
        // Returning the oldest frees it and the younger one behind it; the
        // next area skips the ring's tail end and starts at the beginning.
        assert!(a.release(x));
        let (w, wo) = a.alloc(1100).unwrap();
        assert_eq!(wo, 1 << 20);
        assert!(!a.release(x), "released twice");
        assert!(a.release(z));
        assert!(a.release(w));
        // Empty again: a full-size area fits.
        let (_, fo) = a.alloc(4096).unwrap();
        assert_eq!(fo, 1 << 20);
        assert!(a.alloc(4097).is_none());
    }
}
