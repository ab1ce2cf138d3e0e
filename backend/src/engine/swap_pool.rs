//! The backend's side of gpuvisord's swap pool (`protocol::swap_pool`):
//! leasing pinned host chunks for swap-outs, importing and mapping them at
//! a device address, giving them back, and making new ones for the pool in
//! the background. The chunks are host memory the driver allocated pinned
//! (`cuMemCreate` at a host NUMA node) and exported as descriptors, so a
//! backend maps one another backend made without pinning it again.

use super::cuda::{check, pinned_prop};
use super::{CuError, EngineResult};
use cudarc::driver::sys;
use protocol::cuda::*;
use protocol::swap_pool::{self as wire, FrameReader, PoolRequest, MAX_CHUNKS_PER_MESSAGE};
use std::collections::HashMap;
use std::ffi::c_void;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A chunk leased from the pool and mapped here.
#[derive(Debug)]
pub(super) struct Pooled {
    pub id: u32,
    /// The connection it was leased on (`PoolLink::generation`): ids mean
    /// nothing to a pool gpuvisord started afresh.
    pub generation: u64,
    pub handle: sys::CUmemGenericAllocationHandle,
}

/// How long a broken connection waits before the next attempt.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);

/// A pool chunk's mapping here: its device address and the import's handle.
pub type Mapping = (u64, sys::CUmemGenericAllocationHandle);

/// Pool chunks this process gave back but still has mapped
/// (`--swap-pool-keep-maps`), by id, each with the connection it was leased
/// on: when the pool leases one again, the mapping is used as it is rather
/// than imported anew. Pure bookkeeping; the caller maps and unmaps.
#[derive(Debug, Default)]
struct KeptMaps {
    by_id: HashMap<u32, (u64, Mapping)>,
}

impl KeptMaps {
    /// Keeps chunk `id`'s mapping; a mapping it already had for that id
    /// (none should be) comes back for the caller to unmap.
    fn keep(&mut self, id: u32, generation: u64, mapping: Mapping) -> Option<Mapping> {
        self.by_id.insert(id, (generation, mapping)).map(|(_, m)| m)
    }

    /// The kept mapping of chunk `id` as leased on connection `generation`;
    /// one of another connection's chunk of that id stays (for `stale`).
    fn take(&mut self, id: u32, generation: u64) -> Option<Mapping> {
        match self.by_id.get(&id) {
            Some(&(g, _)) if g == generation => self.by_id.remove(&id).map(|(_, m)| m),
            _ => None,
        }
    }

    /// Removes and returns the mappings kept from connections other than
    /// `current` (`None`: every one): their ids mean nothing to the pool now.
    fn stale(&mut self, current: Option<u64>) -> Vec<Mapping> {
        let old: Vec<u32> = self.by_id.iter().filter(|(_, (g, _))| Some(*g) != current).map(|(id, _)| *id).collect();
        old.into_iter().filter_map(|id| self.by_id.remove(&id)).map(|(_, m)| m).collect()
    }
}

struct Conn {
    reader: FrameReader,
    generation: u64,
}

struct LinkState {
    conn: Option<Conn>,
    /// Connections made so far.
    generations: u64,
    /// When the connection broke, for `RECONNECT_AFTER`.
    broken_at: Option<Instant>,
}

/// The connection to the pool, shared by the store and its workers. When it
/// breaks (gpuvisord restarted, a protocol error) the store pins its own host
/// memory until a new connection succeeds, tried at most every
/// `RECONNECT_AFTER` when chunks are asked for. Chunks leased on a broken
/// connection are released here when they come free, not given back: their
/// ids belong to the old pool, and their memory goes with the last import.
pub struct PoolLink {
    path: PathBuf,
    chunk_bytes: u64,
    state: Mutex<LinkState>,
    /// Whether chunks given back stay mapped here (`give_back_mapped`).
    keep_maps: bool,
    kept: Mutex<KeptMaps>,
}

impl PoolLink {
    /// Connects to the pool at `path` and checks that its chunks are
    /// `chunk_bytes`; `None` where there is no pool (gpuvisord runs without
    /// one) or it does not fit. With `keep_maps`, chunks given back through
    /// `give_back_mapped` stay mapped here for when they are leased again.
    pub fn connect(path: &Path, chunk_bytes: u64, keep_maps: bool) -> Option<Arc<PoolLink>> {
        let (reader, grow) = handshake(path, chunk_bytes)?;
        info!(socket = %path.display(), grow, keep_maps, "swap pool connected");
        Some(Arc::new(PoolLink {
            path: path.to_path_buf(),
            chunk_bytes,
            state: Mutex::new(LinkState {
                conn: Some(Conn { reader, generation: 1 }),
                generations: 1,
                broken_at: None,
            }),
            keep_maps,
            kept: Mutex::new(KeptMaps::default()),
        }))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, KeptMaps> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives chunk `id` (leased on connection `generation`, mapped here as
    /// `mapping`) back to the pool keeping it mapped, for the next lease of
    /// it here: `Ok` with what the caller must still unmap (an older
    /// mapping of that id, which should not exist). `Err(mapping)` where
    /// maps are not kept or that connection is gone: nothing was done, and
    /// the caller unmaps it and then calls `give_back`.
    pub fn give_back_mapped(&self, id: u32, generation: u64, mapping: Mapping) -> Result<Option<Mapping>, Mapping> {
        if !self.keep_maps || !self.current(generation) {
            return Err(mapping);
        }
        // Kept before it goes back, so that a lease of it that follows at
        // once finds the mapping.
        let displaced = self.kept().keep(id, generation, mapping);
        self.give_back(id, generation);
        Ok(displaced)
    }

    /// Gives chunk `id` (leased on connection `generation`, mapped here as
    /// `mapping`) back: still mapped where this link keeps maps, else
    /// unmapped first. A context must be current on the calling thread, and
    /// nothing may use the mapping any more.
    pub(super) fn release(&self, id: u32, generation: u64, mapping: Mapping) {
        match self.give_back_mapped(id, generation, mapping) {
            Ok(displaced) => {
                if let Some((va, handle)) = displaced {
                    unmap(va, self.chunk_bytes as usize, handle);
                }
            }
            Err((va, handle)) => {
                unmap(va, self.chunk_bytes as usize, handle);
                self.give_back(id, generation);
            }
        }
    }

    /// The mapping kept of chunk `id` as leased on connection `generation`,
    /// if this process still has one (`give_back_mapped`).
    pub fn take_kept(&self, id: u32, generation: u64) -> Option<Mapping> {
        if !self.keep_maps {
            return None;
        }
        self.kept().take(id, generation)
    }

    /// Kept mappings that no lease can use any more (their connection is
    /// gone), for the caller to unmap.
    pub fn stale_maps(&self) -> Vec<Mapping> {
        if !self.keep_maps {
            return Vec::new();
        }
        let current = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.conn.as_ref().map(|c| c.generation)
        };
        self.kept().stale(current)
    }

    /// Every kept mapping, for the caller to unmap (the store is closing).
    pub fn drain_kept(&self) -> Vec<Mapping> {
        self.kept().stale(None)
    }

    /// Unmaps the kept mappings no lease can use any more (`stale_maps`),
    /// or with `all` every one: the pool's memory goes when the last import
    /// of it does, so the memory of a pool whose gpuvisord went away is held
    /// until these are unmapped. A context must be current on the calling
    /// thread.
    pub(super) fn unmap_kept(&self, all: bool) {
        let maps = if all { self.drain_kept() } else { self.stale_maps() };
        if !maps.is_empty() {
            debug!(chunks = maps.len(), all, "unmapping kept swap pool chunks");
        }
        for (va, handle) in maps {
            unmap(va, self.chunk_bytes as usize, handle);
        }
    }

    /// Runs `f` on the connection, reconnecting first if it broke a while
    /// ago; with the connection's generation. On an error it is closed.
    fn with<T>(&self, f: impl FnOnce(&mut FrameReader) -> Result<T, wire::PoolError>) -> Option<(T, u64)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.conn.is_none() && st.broken_at.is_none_or(|t| t.elapsed() >= RECONNECT_AFTER) {
            st.broken_at = Some(Instant::now());
            if let Some((reader, grow)) = handshake(&self.path, self.chunk_bytes) {
                st.generations += 1;
                let generation = st.generations;
                info!(socket = %self.path.display(), grow, generation, "swap pool connected again");
                st.conn = Some(Conn { reader, generation });
                st.broken_at = None;
            }
        }
        let conn = st.conn.as_mut()?;
        let generation = conn.generation;
        match f(&mut conn.reader) {
            Ok(v) => Some((v, generation)),
            Err(e) => {
                warn!(error = %e, "swap pool connection failed; pinning host memory here until it is back");
                st.conn = None;
                st.broken_at = Some(Instant::now());
                None
            }
        }
    }

    /// Whether chunks of connection `generation` go back to the pool now
    /// connected.
    fn current(&self, generation: u64) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.conn.as_ref().is_some_and(|c| c.generation == generation)
    }

    /// Up to `n` free chunks (ids and descriptors), how many chunks the
    /// pool would take as donations, and the connection's generation (for
    /// `give_back`).
    pub fn lease(&self, n: usize) -> (Vec<(u32, File)>, usize, u64) {
        self.lease_some(n, false)
    }

    /// As `lease`, but only chunks never leased on this connection before:
    /// for mapping the pool ahead (`keeps_maps`).
    pub fn lease_fresh(&self, n: usize) -> (Vec<(u32, File)>, usize, u64) {
        self.lease_some(n, true)
    }

    /// Whether chunks given back stay mapped here.
    pub fn keeps_maps(&self) -> bool {
        self.keep_maps
    }

    fn lease_some(&self, n: usize, fresh: bool) -> (Vec<(u32, File)>, usize, u64) {
        let mut got = Vec::new();
        let mut grow = 0;
        let mut generation = 0;
        let mut left = n;
        loop {
            let count = left.min(MAX_CHUNKS_PER_MESSAGE as usize) as u32;
            let Some(((ans, files), g)) = self.with(|r| {
                wire::send(r.socket(), &PoolRequest::Lease { count, fresh }, &[])?;
                wire::recv_chunks(r)
            }) else {
                break;
            };
            if generation != 0 && g != generation {
                break; // reconnected between two parts: keep what came before
            }
            generation = g;
            grow = ans.grow as usize;
            let k = ans.ids.len();
            got.extend(ans.ids.into_iter().zip(files));
            left -= k.min(left);
            if k < count as usize || left == 0 {
                break;
            }
        }
        (got, grow, generation)
    }

    /// Gives chunk `id`, leased on connection `generation`, back: this
    /// process maps and imports it no more. Nothing if that connection is
    /// gone (the chunk was the old pool's).
    pub fn give_back(&self, id: u32, generation: u64) {
        if self.current(generation) {
            self.with(|r| wire::send(r.socket(), &PoolRequest::Return { ids: vec![id] }, &[]));
        }
    }

    /// Gives the pool new chunks (their descriptors; this process keeps no
    /// import of them).
    pub fn donate(&self, files: &[File]) {
        for part in files.chunks(MAX_CHUNKS_PER_MESSAGE as usize) {
            let fds: Vec<RawFd> = part.iter().map(|f| f.as_raw_fd()).collect();
            let count = fds.len() as u32;
            self.with(|r| wire::send(r.socket(), &PoolRequest::Donate { count }, &fds));
        }
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }
}

/// Connects to the pool at `path` and asks it nothing (a lease of 0): the
/// connection and how many chunks the pool would take, if its chunks are
/// `chunk_bytes`.
fn handshake(path: &Path, chunk_bytes: u64) -> Option<(FrameReader, u32)> {
    let sock = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            debug!(socket = %path.display(), error = %e, "no swap pool: pinning host memory here");
            return None;
        }
    };
    let mut reader = FrameReader::new(sock);
    let first = wire::send(reader.socket(), &PoolRequest::Lease { count: 0, fresh: false }, &[])
        .and_then(|()| wire::recv_chunks(&mut reader));
    match first {
        Ok((ans, _)) if ans.chunk_bytes == chunk_bytes => Some((reader, ans.grow)),
        Ok((ans, _)) => {
            warn!(
                pool = ans.chunk_bytes,
                here = chunk_bytes,
                "the swap pool's chunks are of another size; not using it"
            );
            None
        }
        Err(e) => {
            warn!(error = %e, "swap pool handshake failed; pinning host memory here");
            None
        }
    }
}

/// Pinned host memory of `len` bytes that another process can import: its
/// descriptor. This process keeps nothing of it.
pub(super) fn make_shareable(len: usize, numa: i32) -> EngineResult<File> {
    let prop = host_prop(numa);
    let mut handle: sys::CUmemGenericAllocationHandle = 0;
    // SAFETY: valid out-pointer and property struct.
    check(unsafe { sys::cuMemCreate(&mut handle, len, &prop, 0) })?;
    let mut fd: i32 = -1;
    // SAFETY: for a POSIX descriptor the out-pointer is to an int.
    let exported = check(unsafe {
        sys::cuMemExportToShareableHandle(
            (&mut fd as *mut i32).cast::<c_void>(),
            handle,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    });
    // The descriptor keeps the memory; this handle is not needed.
    // SAFETY: the handle made above, released once.
    let released = check(unsafe { sys::cuMemRelease(handle) });
    exported?;
    if fd < 0 {
        return Err(CuError(CUDA_ERROR_UNKNOWN));
    }
    // SAFETY: a descriptor the driver just made for this process.
    let file = unsafe { File::from_raw_fd(fd) };
    released?;
    Ok(file)
}

/// Imports pool chunk `file` and maps its `len` bytes at a new device
/// address, readable and writable by device `ordinal`: the address and the
/// import's handle. Refused unless it is pinned host memory of at least
/// `len` bytes (a chunk from the pool, not device memory or anything else).
pub(super) fn import(file: File, len: usize, ordinal: i32) -> EngineResult<(u64, sys::CUmemGenericAllocationHandle)> {
    let mut handle: sys::CUmemGenericAllocationHandle = 0;
    // SAFETY: valid out-pointer; for a POSIX descriptor the handle argument
    // is the descriptor's number.
    check(unsafe {
        sys::cuMemImportFromShareableHandle(
            &mut handle,
            file.as_raw_fd() as isize as *mut c_void,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        )
    })?;
    drop(file); // the import holds the memory now
    let release = |h| {
        // SAFETY: the import made above, released once.
        if let Err(e) = check(unsafe { sys::cuMemRelease(h) }) {
            warn!(error = %e, "releasing a pool chunk's import");
        }
    };
    // SAFETY: a zeroed struct is a valid out-value; the handle is live.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    let is_host = check(unsafe { sys::cuMemGetAllocationPropertiesFromHandle(&mut prop, handle) }).is_ok()
        && matches!(
            prop.location.type_,
            sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA | sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST
        );
    if !is_host {
        release(handle);
        warn!("a swap pool chunk is not pinned host memory; refused");
        return Err(CuError(CUDA_ERROR_INVALID_VALUE));
    }
    let mut va: sys::CUdeviceptr = 0;
    // SAFETY: valid out-pointer; any address, default alignment.
    if let Err(e) = check(unsafe { sys::cuMemAddressReserve(&mut va, len, 0, 0, 0) }) {
        release(handle);
        return Err(e);
    }
    let unreserve = |va| {
        // SAFETY: the range reserved above, unmapped, freed once.
        if let Err(e) = check(unsafe { sys::cuMemAddressFree(va, len) }) {
            warn!(error = %e, "freeing a pool chunk's address range");
        }
    };
    // SAFETY: the range reserved above; the import holds at least `len`
    // bytes or the driver refuses.
    if let Err(e) = check(unsafe { sys::cuMemMap(va, len, 0, handle, 0) }) {
        unreserve(va);
        release(handle);
        return Err(e);
    }
    let access = sys::CUmemAccessDesc {
        location: sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: ordinal },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: the range mapped above; one descriptor.
    if let Err(e) = check(unsafe { sys::cuMemSetAccess(va, len, &access, 1) }) {
        unmap(va, len, handle);
        return Err(e);
    }
    Ok((va, handle))
}

/// Imports and maps up to `n` pool chunks this connection never had
/// (`lease_fresh`) and gives them back mapped, so that the swap-outs that
/// get them later need no import: how many. Only for a link that keeps its
/// maps; a context must be current on the calling thread.
pub(super) fn map_ahead(link: &PoolLink, n: usize, ordinal: i32) -> EngineResult<usize> {
    if !link.keeps_maps() {
        return Ok(0);
    }
    let len = link.chunk_bytes() as usize;
    let (got, _, generation) = link.lease_fresh(n);
    let mut mapped = 0;
    let mut failed = None;
    for (id, file) in got {
        if failed.is_some() {
            link.give_back(id, generation);
            continue;
        }
        match import(file, len, ordinal) {
            Ok(mapping) => {
                link.release(id, generation, mapping);
                mapped += 1;
            }
            Err(e) => {
                link.give_back(id, generation);
                failed = Some(e);
            }
        }
    }
    failed.map_or(Ok(mapped), Err)
}

/// Unmaps an imported chunk and releases the import.
pub(super) fn unmap(va: u64, len: usize, handle: sys::CUmemGenericAllocationHandle) {
    // SAFETY: a range `import` mapped; no copy uses it any more (callers
    // synchronize first).
    if let Err(e) = check(unsafe { sys::cuMemUnmap(va, len) }) {
        warn!(error = %e, "unmapping a pool chunk");
    }
    // SAFETY: the range `import` reserved, freed once.
    if let Err(e) = check(unsafe { sys::cuMemAddressFree(va, len) }) {
        warn!(error = %e, "freeing a pool chunk's address range");
    }
    // SAFETY: the import `import` made, released once.
    if let Err(e) = check(unsafe { sys::cuMemRelease(handle) }) {
        warn!(error = %e, "releasing a pool chunk's import");
    }
}

/// Pinned host memory on host NUMA node `numa`, exportable as a descriptor.
/// (Memory at the plain host location cannot be shared between processes.)
fn host_prop(numa: i32) -> sys::CUmemAllocationProp {
    pinned_prop(
        sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA, id: numa },
        sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
    )
}

#[cfg(test)]
mod tests {
    use super::KeptMaps;

    #[test]
    fn a_kept_mapping_is_used_only_for_the_same_chunk_of_the_same_connection() {
        let mut k = KeptMaps::default();
        assert_eq!(k.keep(7, 1, (0x1000, 70)), None);
        assert_eq!(k.take(8, 1), None, "another chunk");
        assert_eq!(k.take(7, 2), None, "the same id from another connection is another chunk");
        assert_eq!(k.take(7, 1), Some((0x1000, 70)));
        assert_eq!(k.take(7, 1), None, "taken once");
    }

    #[test]
    fn mappings_of_a_connection_that_is_gone_come_back_to_be_unmapped() {
        let mut k = KeptMaps::default();
        k.keep(1, 1, (0x1000, 10));
        k.keep(2, 1, (0x2000, 20));
        k.keep(3, 2, (0x3000, 30));
        let mut old = k.stale(Some(2));
        old.sort_unstable();
        assert_eq!(old, vec![(0x1000, 10), (0x2000, 20)]);
        assert_eq!(k.take(3, 2), Some((0x3000, 30)), "the current connection's stay");
        k.keep(4, 2, (0x4000, 40));
        assert_eq!(k.stale(None), vec![(0x4000, 40)], "no connection: every one is stale");
        assert!(k.by_id.is_empty());
    }

    #[test]
    fn keeping_an_id_twice_hands_the_older_mapping_back() {
        let mut k = KeptMaps::default();
        k.keep(5, 1, (0x1000, 10));
        assert_eq!(k.keep(5, 1, (0x2000, 20)), Some((0x1000, 10)));
        assert_eq!(k.take(5, 1), Some((0x2000, 20)));
    }
}
