//! Guest memory as the engines see it: a list of guest-physical extents (a
//! resource's backing pages) read and written through vm-memory, or, for the
//! `cuda` engine, handed to the driver as host addresses of registered memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub type GuestMemory = GuestMemoryMmap<()>;

/// One contiguous run of guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub addr: GuestAddress,
    pub len: usize,
}

/// A byte range made of guest-physical extents, every one of which has been
/// checked to lie inside guest RAM.
#[derive(Debug, Clone)]
pub struct GuestSpan<'a> {
    mem: &'a GuestMemory,
    extents: Vec<Extent>,
    len: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    #[error("guest range {addr:#x}+{len:#x} is not inside guest RAM")]
    OutsideRam { addr: u64, len: usize },
    #[error("range {offset:#x}+{len:#x} runs past the end of a {size:#x}-byte buffer")]
    PastEnd { offset: u64, len: u64, size: u64 },
}

impl<'a> GuestSpan<'a> {
    /// The bytes `[offset, offset + len)` of a buffer backed by `backing`.
    pub fn new(mem: &'a GuestMemory, backing: &[Extent], offset: u64, len: u64) -> Result<Self, SpanError> {
        let size: u64 = backing.iter().map(|e| e.len as u64).sum();
        let end = offset.checked_add(len).filter(|&e| e <= size);
        if end.is_none() {
            return Err(SpanError::PastEnd { offset, len, size });
        }
        let mut extents = Vec::new();
        let mut skip = offset;
        let mut want = len;
        for e in backing {
            if want == 0 {
                break;
            }
            let elen = e.len as u64;
            if skip >= elen {
                skip -= elen;
                continue;
            }
            let take = (elen - skip).min(want);
            let addr = GuestAddress(e.addr.0 + skip);
            if !contiguous_in_ram(mem, addr, take as usize) {
                return Err(SpanError::OutsideRam { addr: addr.0, len: take as usize });
            }
            extents.push(Extent { addr, len: take as usize });
            want -= take;
            skip = 0;
        }
        Ok(GuestSpan { mem, extents, len: len as usize })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Copies the span into `buf` (which must be `len()` bytes).
    pub fn read_into(&self, buf: &mut [u8]) {
        let mut at = 0;
        for e in &self.extents {
            // Ranges were checked in `new`; the memory map cannot change while
            // the span borrows it.
            let _ = self.mem.read_slice(&mut buf[at..at + e.len], e.addr);
            at += e.len;
        }
    }

    /// Copies `buf` (which must be `len()` bytes) into the span.
    pub fn write_from(&self, buf: &[u8]) {
        let mut at = 0;
        for e in &self.extents {
            let _ = self.mem.write_slice(&buf[at..at + e.len], e.addr);
            at += e.len;
        }
    }

    /// Host addresses of the extents, for engines that hand them to a driver.
    pub fn host_extents(&self) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        self.extents.iter().filter_map(|e| self.mem.get_host_address(e.addr).ok().map(|p| (p, e.len)))
    }
}

/// Whether `[addr, addr + len)` lies inside one region of guest RAM.
fn contiguous_in_ram(mem: &GuestMemory, addr: GuestAddress, len: usize) -> bool {
    use vm_memory::{Address, GuestMemoryRegion};
    let Some(region) = mem.find_region(addr) else {
        return false;
    };
    let Some(last) = addr.checked_add(len.saturating_sub(1) as u64) else {
        return false;
    };
    len == 0 || last <= region.last_addr()
}

/// The host side of a host-to-device copy.
pub enum HostSrc<'a> {
    /// Bytes that came inline in the batch.
    Bytes(&'a [u8]),
    /// A range of a guest-memory resource.
    Guest(GuestSpan<'a>),
}

impl HostSrc<'_> {
    pub fn len(&self) -> usize {
        match self {
            HostSrc::Bytes(b) => b.len(),
            HostSrc::Guest(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The host side of a device-to-host copy.
pub enum HostDst<'a> {
    /// The reply payload.
    Bytes(&'a mut [u8]),
    Guest(GuestSpan<'a>),
}

impl HostDst<'_> {
    pub fn len(&self) -> usize {
        match self {
            HostDst::Bytes(b) => b.len(),
            HostDst::Guest(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x10000)]).unwrap()
    }

    #[test]
    fn span_walks_extents() {
        let m = mem();
        let backing =
            [Extent { addr: GuestAddress(0x8000), len: 0x100 }, Extent { addr: GuestAddress(0x2000), len: 0x100 }];
        let s = GuestSpan::new(&m, &backing, 0xf0, 0x20).unwrap();
        assert_eq!(
            s.extents(),
            &[Extent { addr: GuestAddress(0x80f0), len: 0x10 }, Extent { addr: GuestAddress(0x2000), len: 0x10 }]
        );
        let data: Vec<u8> = (0..0x20).collect();
        s.write_from(&data);
        let mut back = vec![0; 0x20];
        s.read_into(&mut back);
        assert_eq!(back, data);
    }

    #[test]
    fn ranges_past_the_end_or_outside_ram_are_rejected() {
        let m = mem();
        let backing = [Extent { addr: GuestAddress(0x2000), len: 0x100 }];
        assert!(matches!(GuestSpan::new(&m, &backing, 0x80, 0x81), Err(SpanError::PastEnd { .. })));
        assert!(matches!(GuestSpan::new(&m, &backing, u64::MAX, 2), Err(SpanError::PastEnd { .. })));
        let outside = [Extent { addr: GuestAddress(0x10f00), len: 0x200 }];
        assert!(matches!(GuestSpan::new(&m, &outside, 0, 0x200), Err(SpanError::OutsideRam { .. })));
    }
}
