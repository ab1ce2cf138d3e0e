//! The journal: a memfd the supervisor creates and every serving child of
//! one frontend connection inherits, where the child records what the
//! guest's kernel believes exists on the device (virtio-gpu resources with
//! their backing, 3D contexts, gpuvisor sessions). A child started after
//! another one died reads it back, so the guest's resources and mappings go
//! on working, and marks every old session lost.
//!
//! Layout: a header page, then two areas of records. Records are appended to
//! the active area and become visible when the area's length is stored
//! after them; when the active area is full the state is written compactly
//! into the other area and the header switches to it. A process that dies at
//! any point leaves a journal that reads back as it was before the record it
//! was writing. The journal was written by a process that handled untrusted
//! input, so reading it checks every count and length and never panics.

use crate::guest_mem::Extent;
use crate::resources::{Resource, ResourceTable, MAX_BACKING_ENTRIES};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use vm_memory::GuestAddress;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "GVJ1".
const MAGIC: u32 = u32::from_le_bytes(*b"GVJ1");
const HEADER_BYTES: usize = 4096;
/// Each of the two record areas. The memfd's pages are allocated only as
/// they are written, so the size costs nothing up front.
const AREA_BYTES: usize = 32 << 20;
/// The memfd's size.
pub const JOURNAL_BYTES: usize = HEADER_BYTES + 2 * AREA_BYTES;
/// Offset of the header's `ready` word, which the supervisor reads.
pub const READY_OFFSET: u64 = 8;
/// Most resources, contexts or sessions a journal may name; more is a
/// journal to reject.
const MAX_OBJECTS: usize = 1 << 20;

// Header words (u32 unless said): magic 0, version 4, ready 8, active 12,
// len[0] 16 (u64), len[1] 24 (u64).
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_READY: usize = READY_OFFSET as usize;
const OFF_ACTIVE: usize = 12;
const OFF_LEN: [usize; 2] = [16, 24];

const TAG_RESOURCE: u32 = 1;
const TAG_BACKING: u32 = 2;
const TAG_DETACH_BACKING: u32 = 3;
const TAG_UNREF: u32 = 4;
const TAG_CTX_CREATE: u32 = 5;
const TAG_CTX_DESTROY: u32 = 6;
const TAG_ATTACH: u32 = 7;
const TAG_DETACH: u32 = 8;
const TAG_SESSION: u32 = 9;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct RecHeader {
    tag: U32,
    /// Bytes of the payload that follows.
    len: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct RecResource {
    id: U32,
    width: U32,
    height: U32,
    format: U32,
    size: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct RecPair {
    a: U32,
    b: U32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct RecEntry {
    addr: U64,
    len: U64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct RecSession {
    ctx_id: U32,
    control: U32,
    /// The error the session gets, 0 while it lives.
    lost: U32,
    _pad: U32,
}

/// One change to what the guest's kernel believes exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Resource {
        id: u32,
        width: u32,
        height: u32,
        format: u32,
        size: u64,
    },
    Backing {
        id: u32,
        entries: &'a [Extent],
    },
    DetachBacking {
        id: u32,
    },
    Unref {
        id: u32,
    },
    CtxCreate {
        ctx_id: u32,
        capset: u32,
    },
    CtxDestroy {
        ctx_id: u32,
    },
    Attach {
        ctx_id: u32,
        resource: u32,
    },
    Detach {
        ctx_id: u32,
        resource: u32,
    },
    /// A gpuvisor session opened on context `ctx_id` (its Hello), with its
    /// control buffer; `lost` is its error once it is lost, else 0.
    Session {
        ctx_id: u32,
        control: u32,
        lost: u32,
    },
}

/// A 3D context as the journal knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub capset: u32,
    /// (control buffer, lost error or 0) once a session opened on it.
    pub session: Option<(u32, u32)>,
}

/// What a journal read back says exists.
#[derive(Debug, Default)]
pub struct State {
    pub resources: ResourceTable,
    pub contexts: BTreeMap<u32, Context>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("the journal's header is not a gpuvisor journal's")]
    BadHeader,
    #[error("record at {0} runs past the area or is malformed")]
    BadRecord(usize),
    #[error("record at {0} names an unknown object or repeats one")]
    Inconsistent(usize),
    #[error("the journal names more than {MAX_OBJECTS} objects")]
    TooMany,
}

fn encode(rec: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(RecHeader::default().as_bytes());
    let tag = match rec {
        Record::Resource { id, width, height, format, size } => {
            let r = RecResource {
                id: U32::new(*id),
                width: U32::new(*width),
                height: U32::new(*height),
                format: U32::new(*format),
                size: U64::new(*size),
            };
            out.extend_from_slice(r.as_bytes());
            TAG_RESOURCE
        }
        Record::Backing { id, entries } => {
            out.extend_from_slice(RecPair { a: U32::new(*id), b: U32::new(entries.len() as u32) }.as_bytes());
            for e in *entries {
                out.extend_from_slice(RecEntry { addr: U64::new(e.addr.0), len: U64::new(e.len as u64) }.as_bytes());
            }
            TAG_BACKING
        }
        Record::DetachBacking { id } => pair(out, *id, 0, TAG_DETACH_BACKING),
        Record::Unref { id } => pair(out, *id, 0, TAG_UNREF),
        Record::CtxCreate { ctx_id, capset } => pair(out, *ctx_id, *capset, TAG_CTX_CREATE),
        Record::CtxDestroy { ctx_id } => pair(out, *ctx_id, 0, TAG_CTX_DESTROY),
        Record::Attach { ctx_id, resource } => pair(out, *ctx_id, *resource, TAG_ATTACH),
        Record::Detach { ctx_id, resource } => pair(out, *ctx_id, *resource, TAG_DETACH),
        Record::Session { ctx_id, control, lost } => {
            let s = RecSession {
                ctx_id: U32::new(*ctx_id),
                control: U32::new(*control),
                lost: U32::new(*lost),
                _pad: U32::new(0),
            };
            out.extend_from_slice(s.as_bytes());
            TAG_SESSION
        }
    };
    let len = (out.len() - start - core::mem::size_of::<RecHeader>()) as u32;
    let h = RecHeader { tag: U32::new(tag), len: U32::new(len) };
    out[start..start + core::mem::size_of::<RecHeader>()].copy_from_slice(h.as_bytes());
}

fn pair(out: &mut Vec<u8>, a: u32, b: u32, tag: u32) -> u32 {
    out.extend_from_slice(RecPair { a: U32::new(a), b: U32::new(b) }.as_bytes());
    tag
}

/// Applies the records in `area` to `st`, checking each.
fn apply(area: &[u8], st: &mut State) -> Result<(), JournalError> {
    let mut off = 0usize;
    while off < area.len() {
        let (h, rest) = RecHeader::read_from_prefix(&area[off..]).map_err(|_| JournalError::BadRecord(off))?;
        let len = h.len.get() as usize;
        let body = rest.get(..len).ok_or(JournalError::BadRecord(off))?;
        let bad = || JournalError::BadRecord(off);
        let inconsistent = || JournalError::Inconsistent(off);
        match h.tag.get() {
            TAG_RESOURCE => {
                let r = RecResource::read_from_bytes(body).map_err(|_| bad())?;
                if st.resources.len() >= MAX_OBJECTS {
                    return Err(JournalError::TooMany);
                }
                let res = Resource {
                    width: r.width.get(),
                    height: r.height.get(),
                    format: r.format.get(),
                    size: r.size.get(),
                    ..Default::default()
                };
                st.resources.create(r.id.get(), res).map_err(|_| inconsistent())?;
            }
            TAG_BACKING => {
                let (p, entries) = RecPair::read_from_prefix(body).map_err(|_| bad())?;
                let n = p.b.get();
                let want = (n as usize).checked_mul(core::mem::size_of::<RecEntry>()).ok_or_else(bad)?;
                if n == 0 || n > MAX_BACKING_ENTRIES || entries.len() != want {
                    return Err(bad());
                }
                let mut backing = Vec::with_capacity(n as usize);
                for e in entries.chunks_exact(core::mem::size_of::<RecEntry>()) {
                    let e = RecEntry::read_from_bytes(e).map_err(|_| bad())?;
                    let len = usize::try_from(e.len.get()).map_err(|_| bad())?;
                    e.addr.get().checked_add(e.len.get()).ok_or_else(bad)?;
                    backing.push(Extent { addr: GuestAddress(e.addr.get()), len });
                }
                st.resources.get_mut(p.a.get()).map_err(|_| inconsistent())?.backing = backing;
            }
            TAG_DETACH_BACKING => {
                let p = RecPair::read_from_bytes(body).map_err(|_| bad())?;
                st.resources.get_mut(p.a.get()).map_err(|_| inconsistent())?.backing.clear();
            }
            TAG_UNREF => {
                let p = RecPair::read_from_bytes(body).map_err(|_| bad())?;
                st.resources.remove(p.a.get()).map_err(|_| inconsistent())?;
            }
            TAG_CTX_CREATE => {
                let p = RecPair::read_from_bytes(body).map_err(|_| bad())?;
                if st.contexts.len() >= MAX_OBJECTS {
                    return Err(JournalError::TooMany);
                }
                if st.contexts.insert(p.a.get(), Context { capset: p.b.get(), session: None }).is_some() {
                    return Err(inconsistent());
                }
            }
            TAG_CTX_DESTROY => {
                let p = RecPair::read_from_bytes(body).map_err(|_| bad())?;
                st.contexts.remove(&p.a.get()).ok_or_else(inconsistent)?;
                st.resources.detach_all(p.a.get());
            }
            TAG_ATTACH | TAG_DETACH => {
                let p = RecPair::read_from_bytes(body).map_err(|_| bad())?;
                let (ctx, res) = (p.a.get(), p.b.get());
                if !st.contexts.contains_key(&ctx) {
                    return Err(inconsistent());
                }
                let r = st.resources.get_mut(res).map_err(|_| inconsistent())?;
                if h.tag.get() == TAG_ATTACH {
                    r.attached.insert(ctx);
                } else {
                    r.attached.remove(&ctx);
                }
            }
            TAG_SESSION => {
                let s = RecSession::read_from_bytes(body).map_err(|_| bad())?;
                let c = st.contexts.get_mut(&s.ctx_id.get()).ok_or_else(inconsistent)?;
                c.session = Some((s.control.get(), s.lost.get()));
            }
            _ => return Err(bad()),
        }
        off = off.checked_add(core::mem::size_of::<RecHeader>() + len).ok_or(JournalError::BadRecord(off))?;
    }
    Ok(())
}

/// The records that rebuild `resources` and `contexts` from nothing.
pub fn snapshot(resources: &ResourceTable, contexts: &BTreeMap<u32, Context>) -> Vec<u8> {
    let mut out = Vec::new();
    for (&ctx_id, c) in contexts {
        encode(&Record::CtxCreate { ctx_id, capset: c.capset }, &mut out);
        if let Some((control, lost)) = c.session {
            encode(&Record::Session { ctx_id, control, lost }, &mut out);
        }
    }
    for (id, r) in resources.iter() {
        encode(&Record::Resource { id, width: r.width, height: r.height, format: r.format, size: r.size }, &mut out);
        if !r.backing.is_empty() {
            encode(&Record::Backing { id, entries: &r.backing }, &mut out);
        }
        for &ctx_id in &r.attached {
            if contexts.contains_key(&ctx_id) {
                encode(&Record::Attach { ctx_id, resource: id }, &mut out);
            }
        }
    }
    out
}

/// Creates an empty journal: a memfd of [`JOURNAL_BYTES`] (the supervisor's
/// part; it never maps it).
pub fn create() -> std::io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; memfd_create returns a new descriptor
    // or -1.
    let fd = unsafe { libc::memfd_create(c"gpuvisor-journal".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a memfd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), JOURNAL_BYTES as libc::off_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Whether the child that owns the journal in `fd` finished its start-up
/// (engine made, sandbox in place), read without mapping it.
pub fn child_ready(fd: &OwnedFd) -> bool {
    let mut w = [0u8; 4];
    let f = std::mem::ManuallyDrop::new(
        // SAFETY: a File view of a descriptor `fd` keeps owning; never closed here.
        unsafe { std::fs::File::from_raw_fd(fd.as_raw_fd()) },
    );
    std::os::unix::fs::FileExt::read_exact_at(&*f, &mut w, READY_OFFSET).is_ok() && u32::from_le_bytes(w) == 1
}

/// The child's view: the journal mapped shared.
pub struct Journal {
    base: *mut u8,
    _fd: OwnedFd,
    /// Records that could not be written (no room even after compaction).
    dropped: u64,
}

// SAFETY: the mapping is owned by this value and only written through
// `&mut self`; the pointer is not shared with another thread by it.
unsafe impl Send for Journal {}

impl Journal {
    /// Maps the journal in `fd` (a memfd of [`JOURNAL_BYTES`], zeroed or
    /// written by an earlier child).
    pub fn open(fd: OwnedFd) -> std::io::Result<Journal> {
        // SAFETY: fstat writes into `st`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open; fstat fills `st`.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if st.st_size as u64 != JOURNAL_BYTES as u64 {
            return Err(std::io::Error::other("the journal has the wrong size"));
        }
        // SAFETY: a new shared read-write mapping of the whole memfd; the
        // kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                JOURNAL_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Journal { base: p as *mut u8, _fd: fd, dropped: 0 })
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= HEADER_BYTES);
        // SAFETY: `off` is an aligned offset inside the mapped header page,
        // which lives as long as `self`.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= HEADER_BYTES);
        // SAFETY: as in `u32_at`, 8-aligned (the mapping is page-aligned).
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn area(&self, which: usize) -> &[u8] {
        // SAFETY: area `which` (0 or 1) lies inside the mapping.
        unsafe { std::slice::from_raw_parts(self.base.add(HEADER_BYTES + which * AREA_BYTES), AREA_BYTES) }
    }

    fn area_mut(&mut self, which: usize) -> &mut [u8] {
        // SAFETY: as in `area`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(HEADER_BYTES + which * AREA_BYTES), AREA_BYTES) }
    }

    /// Tells the supervisor that start-up is done.
    pub fn set_ready(&self) {
        self.u32_at(OFF_READY).store(1, Ordering::Release);
    }

    /// Whether an earlier child wrote anything (this child is a restart).
    pub fn is_empty(&self) -> bool {
        self.u32_at(OFF_MAGIC).load(Ordering::Acquire) == 0
    }

    /// What the journal says exists. An empty journal is an empty state.
    pub fn read(&self) -> Result<State, JournalError> {
        let mut st = State::default();
        if self.is_empty() {
            return Ok(st);
        }
        if self.u32_at(OFF_MAGIC).load(Ordering::Acquire) != MAGIC
            || self.u32_at(OFF_VERSION).load(Ordering::Acquire) != 1
        {
            return Err(JournalError::BadHeader);
        }
        let active = self.u32_at(OFF_ACTIVE).load(Ordering::Acquire);
        if active > 1 {
            return Err(JournalError::BadHeader);
        }
        let len = self.u64_at(OFF_LEN[active as usize]).load(Ordering::Acquire);
        if len > AREA_BYTES as u64 {
            return Err(JournalError::BadHeader);
        }
        apply(&self.area(active as usize)[..len as usize], &mut st)?;
        Ok(st)
    }

    /// Replaces the journal's content with `records` (a snapshot), written
    /// into the inactive area and then switched to.
    pub fn rewrite(&mut self, records: &[u8]) -> bool {
        if records.len() > AREA_BYTES {
            return false;
        }
        let fresh = self.is_empty();
        let next = if fresh { 0 } else { 1 - self.u32_at(OFF_ACTIVE).load(Ordering::Acquire).min(1) as usize };
        self.area_mut(next)[..records.len()].copy_from_slice(records);
        self.u64_at(OFF_LEN[next]).store(records.len() as u64, Ordering::Release);
        self.u32_at(OFF_ACTIVE).store(next as u32, Ordering::Release);
        if fresh {
            self.u32_at(OFF_VERSION).store(1, Ordering::Release);
            self.u32_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
        }
        true
    }

    /// Appends `rec`; when the active area is full, `compact` gives the
    /// snapshot to start the other area with (the state after `rec`).
    pub fn append(&mut self, rec: &Record<'_>, compact: impl FnOnce() -> Vec<u8>) {
        if self.is_empty() && !self.rewrite(&[]) {
            return;
        }
        let mut bytes = Vec::new();
        encode(rec, &mut bytes);
        let active = self.u32_at(OFF_ACTIVE).load(Ordering::Acquire).min(1) as usize;
        let len = self.u64_at(OFF_LEN[active]).load(Ordering::Acquire) as usize;
        match len.checked_add(bytes.len()) {
            Some(end) if end <= AREA_BYTES => {
                self.area_mut(active)[len..end].copy_from_slice(&bytes);
                self.u64_at(OFF_LEN[active]).store(end as u64, Ordering::Release);
            }
            _ => {
                if !self.rewrite(&compact()) {
                    self.dropped += 1;
                    tracing::warn!(
                        dropped = self.dropped,
                        "the journal is full; a restart will not know of everything"
                    );
                }
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, JOURNAL_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        Journal::open(create().unwrap()).unwrap()
    }

    #[test]
    fn a_journal_reads_back_what_was_recorded() {
        let mut j = journal();
        assert!(j.is_empty());
        let none = Vec::new;
        let ext = [Extent { addr: GuestAddress(0x1000), len: 4096 }];
        j.append(&Record::Resource { id: 5, width: 4096, height: 1, format: 0, size: 4096 }, none);
        j.append(&Record::Backing { id: 5, entries: &ext }, none);
        j.append(&Record::CtxCreate { ctx_id: 2, capset: 29 }, none);
        j.append(&Record::Attach { ctx_id: 2, resource: 5 }, none);
        j.append(&Record::Session { ctx_id: 2, control: 5, lost: 0 }, none);
        j.append(&Record::Resource { id: 6, width: 1, height: 1, format: 0, size: 1 }, none);
        j.append(&Record::Unref { id: 6 }, none);
        let st = j.read().unwrap();
        assert_eq!(st.resources.len(), 1);
        let r = st.resources.get(5).unwrap();
        assert_eq!((r.size, r.backing.len(), r.attached.contains(&2)), (4096, 1, true));
        assert_eq!(st.contexts[&2], Context { capset: 29, session: Some((5, 0)) });
        // A snapshot of the state reads back the same.
        let snap = snapshot(&st.resources, &st.contexts);
        assert!(j.rewrite(&snap));
        let again = j.read().unwrap();
        assert_eq!(again.contexts, st.contexts);
        assert_eq!(again.resources.get(5).unwrap().backing, r.backing);
    }

    #[test]
    fn a_corrupt_journal_is_an_error_not_a_panic() {
        let mut j = journal();
        j.append(&Record::CtxCreate { ctx_id: 1, capset: 29 }, Vec::new);
        // Scribble over the record area and the lengths, as a compromised
        // child could.
        let mut seed = 0x1234_5678u32;
        for round in 0..200 {
            let area = j.area_mut(0);
            for b in area[..64].iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (seed >> 24) as u8;
            }
            j.u64_at(OFF_LEN[0]).store((seed as u64) % 80, Ordering::Release);
            let _ = j.read();
            if round % 50 == 0 {
                j.u64_at(OFF_LEN[0]).store(u64::MAX, Ordering::Release);
                assert_eq!(j.read().err(), Some(JournalError::BadHeader));
            }
        }
        // A backing record that claims more entries than it carries.
        let mut bad = Vec::new();
        encode(&Record::Resource { id: 1, width: 1, height: 1, format: 0, size: 1 }, &mut bad);
        let at = bad.len();
        bad.extend_from_slice(RecHeader { tag: U32::new(TAG_BACKING), len: U32::new(8) }.as_bytes());
        bad.extend_from_slice(RecPair { a: U32::new(1), b: U32::new(u32::MAX) }.as_bytes());
        assert!(j.rewrite(&bad));
        assert_eq!(j.read().err(), Some(JournalError::BadRecord(at)));
        // A session on a context that does not exist.
        let mut bad = Vec::new();
        encode(&Record::Session { ctx_id: 9, control: 1, lost: 0 }, &mut bad);
        assert!(j.rewrite(&bad));
        assert_eq!(j.read().err(), Some(JournalError::Inconsistent(0)));
    }

    #[test]
    fn a_full_area_is_compacted_into_the_other() {
        let mut j = journal();
        // Create and drop one resource over and over: far more records than
        // an area holds, little state.
        let per = 8 + core::mem::size_of::<RecResource>() + 8 + 8;
        let rounds = AREA_BYTES / per + 10;
        for i in 0..rounds {
            let id = (i % 1000) as u32 + 1;
            let snap = |with: bool| {
                let mut out = Vec::new();
                encode(&Record::CtxCreate { ctx_id: 7, capset: 29 }, &mut out);
                if with {
                    encode(&Record::Resource { id, width: 1, height: 1, format: 0, size: 1 }, &mut out);
                }
                out
            };
            j.append(&Record::Resource { id, width: 1, height: 1, format: 0, size: 1 }, || snap(true));
            j.append(&Record::Unref { id }, || snap(false));
        }
        assert_eq!(j.dropped, 0);
        let st = j.read().unwrap();
        assert!(st.contexts.contains_key(&7), "the compacted snapshot is active");
    }
}
