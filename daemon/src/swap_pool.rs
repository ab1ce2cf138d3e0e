//! The swap pool: pinned host memory for the GPU memory backends swap out,
//! kept across swaps and VMs. Backends lease chunks from it, give them back
//! once the data came back to the GPU, and make new ones in the background
//! while the pool is short (`protocol::swap_pool`).
//!
//! Why: a swap-out into memory a backend pins as it goes runs at the rate
//! one process pins memory (25 GB/s on the H200 host, however many threads
//! ask), half the copy rate. A chunk the driver allocated pinned and
//! exported as a descriptor is imported and mapped by another process at
//! 69-90 GB/s (bench/results/h100/host-share.json), so a swap-out into pool
//! chunks copies at the full rate. The pool itself only holds descriptors;
//! it never maps a chunk.
//!
//! Trust: a chunk goes from one VM's backend to another's. A backend process
//! taken over by its guest could keep an import of a chunk it gave back and
//! read what another backend writes into it later, so the pool is for hosts
//! that trust their backend processes that far; it is off unless the admin
//! sets a size. Within that, a chunk is never leased twice at once: one
//! whose backend's connection closed while the process lives stays with
//! that process until it exits.

use protocol::swap_pool::{self as wire, Chunks, FrameReader, PoolRequest, MAX_CHUNKS_PER_MESSAGE, POOL_VERSION};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tracing::{debug, info, warn};

/// Bytes of one chunk: the backends' swap chunk.
pub const CHUNK_BYTES: u64 = 64 << 20;

/// Where a chunk is.
#[derive(Debug)]
enum Holder {
    Free,
    /// Leased on connection `client`.
    Leased {
        client: u64,
    },
    /// Leased by a process whose connection closed while it lived: it may
    /// still use the chunk. Free once the process is gone.
    Held {
        process: Option<Arc<OwnedFd>>,
    },
}

struct Chunk {
    /// The pool's descriptor, which keeps the memory alive.
    fd: File,
    holder: Holder,
    /// Open connections this chunk was leased on, for fresh leases: a
    /// backend that keeps chunks mapped asks for those it has not mapped.
    leased_on: Vec<u64>,
}

/// Pool counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub chunks: usize,
    pub free: usize,
    pub leased: usize,
    pub held: usize,
    /// Chunks handed out and donated over the pool's life.
    pub leases: u64,
    pub donated: u64,
}

#[derive(Default)]
struct Inner {
    chunks: HashMap<u32, Chunk>,
    free: Vec<u32>,
    next_id: u32,
    leases: u64,
    donated: u64,
}

/// The pool's state, shared by its connection threads.
pub struct SwapPool {
    max_chunks: usize,
    chunk_bytes: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SwapPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapPool").field("limit_bytes", &self.limit_bytes()).field("stats", &self.stats()).finish()
    }
}

impl SwapPool {
    /// A pool of at most `cap_bytes` of chunks of `chunk_bytes`.
    pub fn new(cap_bytes: u64, chunk_bytes: u64) -> Arc<SwapPool> {
        let max_chunks = usize::try_from(cap_bytes / chunk_bytes.max(1)).unwrap_or(usize::MAX);
        Arc::new(SwapPool { max_chunks, chunk_bytes, inner: Mutex::new(Inner::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most bytes of chunks the pool holds.
    pub fn limit_bytes(&self) -> u64 {
        self.max_chunks as u64 * self.chunk_bytes
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    pub fn stats(&self) -> PoolStats {
        let mut g = self.lock();
        free_exited(&mut g);
        let mut s = PoolStats { chunks: g.chunks.len(), leases: g.leases, donated: g.donated, ..PoolStats::default() };
        for c in g.chunks.values() {
            match c.holder {
                Holder::Free => s.free += 1,
                Holder::Leased { .. } => s.leased += 1,
                Holder::Held { .. } => s.held += 1,
            }
        }
        s
    }

    /// Up to `count` free chunks for `client` (with `fresh`, only chunks
    /// never leased on that connection): their ids and the pool's
    /// descriptors (sent as copies), and how many more the pool would take.
    /// The chunks given back last go out first.
    fn lease(&self, client: u64, count: u32, fresh: bool) -> (Vec<u32>, Vec<RawFd>, u32) {
        let mut guard = self.lock();
        free_exited(&mut guard);
        let g = &mut *guard;
        let n = (count.min(MAX_CHUNKS_PER_MESSAGE) as usize).min(g.free.len());
        let ids: Vec<u32> = if fresh {
            let chunks = &g.chunks;
            let picked: Vec<u32> = g
                .free
                .iter()
                .rev()
                .filter(|id| chunks.get(id).is_some_and(|c| !c.leased_on.contains(&client)))
                .take(n)
                .copied()
                .collect();
            let taken: std::collections::HashSet<u32> = picked.iter().copied().collect();
            g.free.retain(|id| !taken.contains(id));
            picked
        } else {
            let at = g.free.len() - n;
            g.free.drain(at..).collect()
        };
        let mut fds = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(c) = g.chunks.get_mut(id) {
                c.holder = Holder::Leased { client };
                if !c.leased_on.contains(&client) {
                    c.leased_on.push(client);
                }
                fds.push(c.fd.as_raw_fd());
            }
        }
        g.leases += ids.len() as u64;
        let grow = self.max_chunks.saturating_sub(g.chunks.len());
        (ids, fds, u32::try_from(grow).unwrap_or(u32::MAX))
    }

    /// Chunks `client` gives back; ids it does not hold are ignored.
    fn give_back(&self, client: u64, ids: &[u32]) -> usize {
        let mut g = self.lock();
        let mut back = 0;
        for &id in ids {
            let Some(c) = g.chunks.get_mut(&id) else {
                continue;
            };
            if matches!(c.holder, Holder::Leased { client: h } if h == client) {
                c.holder = Holder::Free;
                g.free.push(id);
                back += 1;
            }
        }
        back
    }

    /// New chunks, free at once; those beyond the pool's size are closed.
    fn donate(&self, files: Vec<File>) -> usize {
        let mut g = self.lock();
        let mut taken = 0;
        for fd in files {
            if g.chunks.len() >= self.max_chunks {
                break; // the rest close here
            }
            let id = g.next_id;
            g.next_id = g.next_id.wrapping_add(1);
            g.chunks.insert(id, Chunk { fd, holder: Holder::Free, leased_on: Vec::new() });
            g.free.push(id);
            taken += 1;
        }
        g.donated += taken as u64;
        taken
    }

    /// `client`'s connection closed: its chunks are free if its process is
    /// gone, else held until it is (`process`: a pidfd of it).
    fn disconnected(&self, client: u64, process: Option<OwnedFd>) {
        let mut g = self.lock();
        let process = process.map(Arc::new);
        let alive = process.as_ref().is_some_and(|p| !exited(p));
        let mut freed = Vec::new();
        for (&id, c) in g.chunks.iter_mut() {
            c.leased_on.retain(|&h| h != client);
            if matches!(c.holder, Holder::Leased { client: h } if h == client) {
                if alive {
                    c.holder = Holder::Held { process: process.clone() };
                } else if process.is_some() {
                    c.holder = Holder::Free;
                    freed.push(id);
                } else {
                    // No way to tell when the process lets go: the chunk
                    // leaves the pool (its memory goes once the process
                    // releases its import).
                    c.holder = Holder::Held { process: None };
                }
            }
        }
        g.free.extend(freed);
        g.chunks.retain(|_, c| !matches!(c.holder, Holder::Held { process: None }));
    }
}

/// Chunks held by processes that have exited come free.
fn free_exited(g: &mut Inner) {
    let mut freed = Vec::new();
    for (&id, c) in g.chunks.iter_mut() {
        if let Holder::Held { process: Some(p) } = &c.holder {
            if exited(p) {
                c.holder = Holder::Free;
                freed.push(id);
            }
        }
    }
    g.free.extend(freed);
}

/// Whether the process behind `pidfd` has exited: a pidfd polls readable
/// then.
fn exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// A pidfd of the process at the other end of `sock` (SO_PEERCRED), which
/// stays true to that process even if its pid is reused.
fn peer_process(sock: &UnixStream) -> Option<OwnedFd> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 || cred.pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, cred.pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: a descriptor the call above just opened, owned once here.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pool's listener and connection threads.
pub struct PoolServer {
    pool: Arc<SwapPool>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// A clone of each open connection's socket, to shut it at stop.
    conns: Arc<Mutex<HashMap<u64, UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl PoolServer {
    /// Listens at `path` (made ready as the backend socket is) and serves
    /// `pool` there until [`stop`](Self::stop).
    pub fn start(pool: Arc<SwapPool>, path: &Path) -> Result<PoolServer, crate::Error> {
        crate::server::prepare_socket_path(path)?;
        let listener =
            UnixListener::bind(path).map_err(|source| crate::Error::Socket { path: path.to_path_buf(), source })?;
        crate::server::set_socket_mode(path)?;
        raise_fd_limit();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(HashMap::new()));
        let (p, s, c) = (pool.clone(), stop.clone(), conns.clone());
        let accept = std::thread::Builder::new()
            .name("gv-swap-pool".into())
            .spawn(move || accept_loop(&listener, &p, &s, &c))
            .map_err(|source| crate::Error::Socket { path: path.to_path_buf(), source })?;
        info!(
            socket = %path.display(),
            cap_mib = pool.limit_bytes() >> 20,
            chunk_mib = pool.chunk_bytes >> 20,
            "swap pool listening"
        );
        Ok(PoolServer { pool, path: path.to_path_buf(), stop, conns, accept: Some(accept) })
    }

    /// Stops listening and closes every connection. The chunks' memory
    /// lives on in the backends that hold imports of it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, c) in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let s = self.pool.stats();
        info!(chunks = s.chunks, leased = s.leased, held = s.held, "swap pool closed");
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pool holds one descriptor per chunk: as many as its size allows
/// (1440 for 90 GiB), past the usual soft limit of 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            warn!("raising the descriptor limit for the swap pool failed");
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    pool: &Arc<SwapPool>,
    stop: &AtomicBool,
    conns: &Arc<Mutex<HashMap<u64, UnixStream>>>,
) {
    let mut next_client = 1u64;
    for sock in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let sock = match sock {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "swap pool accept");
                continue;
            }
        };
        let client = next_client;
        next_client += 1;
        if let Ok(c) = sock.try_clone() {
            conns.lock().unwrap_or_else(|p| p.into_inner()).insert(client, c);
        }
        let (pool, conns) = (pool.clone(), conns.clone());
        let spawned = std::thread::Builder::new().name(format!("gv-pool-{client}")).spawn(move || {
            let process = peer_process(&sock);
            if let Err(e) = serve(&pool, client, sock) {
                debug!(client, error = %e, "swap pool connection ended");
            }
            conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&client);
            pool.disconnected(client, process);
        });
        if let Err(e) = spawned {
            warn!(error = %e, "starting a swap pool connection thread");
        }
    }
}

/// Serves one backend until it closes the connection or breaks the protocol.
fn serve(pool: &SwapPool, client: u64, sock: UnixStream) -> Result<(), wire::PoolError> {
    let mut reader = FrameReader::new(sock);
    while let Some(req) = reader.read_msg::<PoolRequest>()? {
        match req {
            PoolRequest::Lease { count, fresh } => {
                reader.drop_fds();
                let (ids, fds, grow) = pool.lease(client, count, fresh);
                let ans = Chunks { version: POOL_VERSION, chunk_bytes: pool.chunk_bytes, ids, grow };
                wire::send(reader.socket(), &ans, &fds)?;
            }
            PoolRequest::Return { ids } => {
                reader.drop_fds();
                let back = pool.give_back(client, &ids);
                if back < ids.len() {
                    warn!(client, given = ids.len(), back, "a backend gave back chunks it did not hold");
                }
            }
            PoolRequest::Donate { count } => {
                let files = reader.take_fds(count.min(MAX_CHUNKS_PER_MESSAGE) as usize)?;
                reader.drop_fds();
                let taken = pool.donate(files);
                let s = pool.stats();
                debug!(client, count, taken, chunks = s.chunks, free = s.free, "chunks donated to the swap pool");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(tag: u8) -> File {
        use std::io::Write;
        let name = std::ffi::CString::new(format!("gv-pool-test-{tag}")).unwrap();
        // SAFETY: a valid name; a new descriptor owned once below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: just created.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(&[tag; 8]).unwrap();
        f
    }

    #[test]
    fn a_lease_takes_free_chunks_only_and_says_how_many_more_the_pool_would_take() {
        let pool = SwapPool::new(4 * CHUNK_BYTES, CHUNK_BYTES);
        assert_eq!(pool.lease(1, 8, false).2, 4, "an empty pool wants its whole size");
        assert_eq!(pool.donate(vec![memfd(1), memfd(2), memfd(3)]), 3);
        let (ids, fds, grow) = pool.lease(1, 2, false);
        assert_eq!((ids.len(), fds.len(), grow), (2, 2, 1));
        let (more, _, _) = pool.lease(2, 8, false);
        assert_eq!(more.len(), 1, "only the one chunk still free");
        assert!(ids.iter().all(|id| !more.contains(id)), "no chunk is leased twice");
        assert_eq!(pool.donate(vec![memfd(4), memfd(5)]), 1, "the pool takes no more than its size");
        assert_eq!(pool.stats().chunks, 4);
    }

    #[test]
    fn only_the_holder_gives_a_chunk_back() {
        let pool = SwapPool::new(4 * CHUNK_BYTES, CHUNK_BYTES);
        pool.donate(vec![memfd(1)]);
        let (ids, _, _) = pool.lease(1, 1, false);
        assert_eq!(pool.give_back(2, &ids), 0, "another connection cannot free it");
        assert_eq!(pool.lease(3, 1, false).0.len(), 0);
        assert_eq!(pool.give_back(1, &ids), 1);
        assert_eq!(pool.lease(3, 1, false).0, ids);
    }

    #[test]
    fn a_closed_connection_s_chunks_stay_with_its_process_while_it_lives() {
        let pool = SwapPool::new(4 * CHUNK_BYTES, CHUNK_BYTES);
        pool.donate(vec![memfd(1), memfd(2)]);
        pool.lease(1, 2, false);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // SAFETY: pidfd_open of a child this test owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        assert!(fd >= 0);
        // SAFETY: just opened.
        pool.disconnected(1, Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }));
        assert_eq!(pool.stats().held, 2);
        assert_eq!(pool.lease(2, 2, false).0.len(), 0, "held while the process lives");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(pool.lease(2, 2, false).0.len(), 2, "free once it is gone");
    }

    #[test]
    fn a_fresh_lease_gives_a_connection_only_chunks_it_never_had_until_it_closes() {
        let pool = SwapPool::new(4 * CHUNK_BYTES, CHUNK_BYTES);
        pool.donate(vec![memfd(1), memfd(2), memfd(3)]);
        let (first, _, _) = pool.lease(1, 2, false);
        assert_eq!(pool.give_back(1, &first), 2);
        let (fresh, _, _) = pool.lease(1, 8, true);
        assert_eq!(fresh.len(), 1, "only the chunk connection 1 never had");
        assert!(!first.contains(&fresh[0]));
        assert_eq!(pool.give_back(1, &fresh), 1);
        assert!(pool.lease(1, 8, true).0.is_empty(), "connection 1 has had every chunk");
        assert_eq!(pool.lease(2, 8, true).0.len(), 3, "another connection had none of them");
        let all: Vec<u32> = (0..3).collect();
        assert_eq!(pool.give_back(2, &all), 3);
        assert_eq!(pool.lease(1, 8, false).0.len(), 3, "a plain lease takes any free chunk");
        assert_eq!(pool.give_back(1, &all), 3);
        pool.disconnected(1, None);
        assert_eq!(pool.lease(1, 8, true).0.len(), 3, "a connection's id is forgotten once it closes");
    }

    #[test]
    fn a_closed_connection_whose_process_cannot_be_watched_takes_its_chunks_out_of_the_pool() {
        let pool = SwapPool::new(4 * CHUNK_BYTES, CHUNK_BYTES);
        pool.donate(vec![memfd(1), memfd(2)]);
        pool.lease(1, 1, false);
        pool.disconnected(1, None);
        let s = pool.stats();
        assert_eq!((s.chunks, s.free), (1, 1));
    }
}
