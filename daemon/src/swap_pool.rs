//! The swap pool: host memory for GPU memory that backends swap out, made
//! once and kept. Backends lease it as memfd extents (`protocol::swap_pool`)
//! and give it back once the data came back to the GPU; the pool zeroes an
//! extent before anyone else gets it.
//!
//! Why: a swap-out is a copy from the GPU into pinned host pages, and pages
//! the kernel has to make first come far slower than the copy (5-6 GB/s on
//! the H200 test host, all threads together, against 55 GB/s for the copy:
//! bench/results/h100/host-pages.json). A backend's own pages die with its
//! swap-in; extents outlive it, so the next VM's swap-out, in another
//! process, writes into pages that exist.
//!
//! Isolation: a backend serves an untrusted guest, so it must never see
//! another VM's bytes. An extent goes to another backend only after it was
//! zeroed, and only once the process that gave it back maps it no more and
//! holds no descriptor of it (read in /proc/PID/maps and /proc/PID/fd).
//! One it still holds stays charged to it until that process is gone; where
//! /proc cannot be read, the extent is dropped, not reused.

use protocol::swap_pool::{self as wire, ExtentInfo, Extents, FrameReader, PoolRequest, POOL_VERSION};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Bytes of one extent: the backends' swap chunk, so one extent is one chunk.
pub const EXTENT_BYTES: u64 = 64 << 20;

/// Threads that zero returned extents: zeroing existing pages runs at about
/// 11 GB/s a thread on the H200 host, so four keep ahead of a swap-in.
pub const ZERO_THREADS: usize = 4;

/// How long a lease waits for extents being zeroed before it answers with
/// fewer (the backend makes the rest itself).
const ZEROING_WAIT: Duration = Duration::from_secs(2);

/// What the pool may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most host RAM the extents take, made or leased (0: no pool).
    pub cap_bytes: u64,
    pub extent_bytes: u64,
    pub zero_threads: usize,
}

impl PoolConfig {
    pub fn new(cap_bytes: u64) -> Self {
        PoolConfig { cap_bytes, extent_bytes: EXTENT_BYTES, zero_threads: ZERO_THREADS }
    }

    fn max_extents(&self) -> usize {
        usize::try_from(self.cap_bytes / self.extent_bytes.max(1)).unwrap_or(usize::MAX)
    }
}

/// Where an extent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Zeroed (or never touched), ready to lease.
    Free,
    /// Leased on connection `client`, from process `pid`.
    Leased { client: u64, pid: u32 },
    /// Given back, waiting for or under zeroing.
    Zeroing,
    /// Given back by `pid`, which still maps it or holds its descriptor.
    Held { pid: u32 },
}

struct Extent {
    file: File,
    /// The pool's own shared mapping, through which it zeroes the extent.
    addr: usize,
    /// Its pages exist (it was leased and given back, and zeroed since).
    made: bool,
    holder: Holder,
}

/// Pool counters, for logs and the admin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub extents: usize,
    pub free: usize,
    pub made_free: usize,
    pub leased: usize,
    pub zeroing: usize,
    pub held: usize,
    /// Extents handed out over the pool's life, and how many of them had
    /// their pages made already.
    pub leases: u64,
    pub leases_made: u64,
}

struct Inner {
    /// By id; `None`: dropped (its id is not reused).
    extents: Vec<Option<Extent>>,
    live: usize,
    /// Free ids, made ones preferred (taken from the end).
    free_made: Vec<u32>,
    free_new: Vec<u32>,
    zero_queue: VecDeque<u32>,
    zeroing: usize,
    stopping: bool,
    leases: u64,
    leases_made: u64,
}

/// The pool's state, shared by its connection and zeroing threads.
pub struct SwapPool {
    config: PoolConfig,
    /// Part of every extent's memfd name ("PID.N"), so that extents of an
    /// earlier daemon (or of another pool in this process), still mapped
    /// somewhere, never pass for this pool's.
    tag: String,
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// The memfd name of an extent: what /proc shows for a mapping or a
/// descriptor of it ("/memfd:NAME (deleted)").
fn extent_name(tag: &str, id: u32) -> String {
    format!("gv-swap-{tag}-{id}")
}

/// The extent ids of pool `tag` named in /proc link targets or maps lines.
fn named_extents<'a>(tag: &str, texts: impl Iterator<Item = &'a str>) -> HashSet<u32> {
    let prefix = format!("/memfd:gv-swap-{tag}-");
    let mut ids = HashSet::new();
    for t in texts {
        let mut rest = t;
        while let Some(at) = rest.find(&prefix) {
            rest = &rest[at + prefix.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let ends_name = rest[digits.len()..].chars().next().is_none_or(|c| c == ' ' || c == '\n');
            if let (Ok(id), true) = (digits.parse(), ends_name) {
                ids.insert(id);
            }
        }
    }
    ids
}

/// Extents of pool `tag` that process `pid` maps or holds a descriptor of;
/// an empty set once the process is gone. An error where /proc cannot say
/// (another user's process without the right to look).
fn still_held(tag: &str, pid: u32) -> std::io::Result<HashSet<u32>> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let maps = match std::fs::read_to_string(dir.join("maps")) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    let mut links = Vec::new();
    match std::fs::read_dir(dir.join("fd")) {
        Ok(entries) => {
            for e in entries.flatten() {
                if let Ok(target) = std::fs::read_link(e.path()) {
                    links.push(target.to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    }
    let mut held = named_extents(tag, maps.lines());
    held.extend(named_extents(tag, links.iter().map(String::as_str)));
    Ok(held)
}

/// A new memfd extent of `len` bytes, and the pool's mapping of it.
fn make_extent(name: &str, len: u64) -> std::io::Result<(File, usize)> {
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string; the new descriptor is owned by the File below.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    let n = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a new shared mapping of the whole memfd at an address the
    // kernel chooses; nothing else is touched.
    let addr =
        unsafe { libc::mmap(std::ptr::null_mut(), n, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok((file, addr as usize))
}

impl SwapPool {
    pub fn new(config: PoolConfig) -> Arc<SwapPool> {
        static POOLS: AtomicU32 = AtomicU32::new(0);
        Arc::new(SwapPool {
            config,
            tag: format!("{}.{}", std::process::id(), POOLS.fetch_add(1, Ordering::Relaxed)),
            inner: Mutex::new(Inner {
                extents: Vec::new(),
                live: 0,
                free_made: Vec::new(),
                free_new: Vec::new(),
                zero_queue: VecDeque::new(),
                zeroing: 0,
                stopping: false,
                leases: 0,
                leases_made: 0,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> PoolConfig {
        self.config
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let mut s = PoolStats {
            extents: inner.live,
            free: inner.free_made.len() + inner.free_new.len(),
            made_free: inner.free_made.len(),
            zeroing: inner.zero_queue.len() + inner.zeroing,
            leases: inner.leases,
            leases_made: inner.leases_made,
            ..PoolStats::default()
        };
        for e in inner.extents.iter().flatten() {
            match e.holder {
                Holder::Leased { .. } => s.leased += 1,
                Holder::Held { .. } => s.held += 1,
                _ => {}
            }
        }
        s
    }

    /// Up to `count` extents for connection `client` of process `pid`, with
    /// a duplicate of each memfd to send. Extents whose pages exist come
    /// first, then new ones while the cap allows; if that is still short and
    /// extents are being zeroed, waits for them a while.
    pub fn lease(&self, client: u64, pid: u32, count: usize) -> Vec<(ExtentInfo, File)> {
        let count = count.min(wire::MAX_EXTENTS_PER_LEASE as usize);
        let mut inner = self.lock();
        self.release_held_of_gone(&mut inner);
        let deadline = Instant::now() + ZEROING_WAIT;
        let mut out = Vec::with_capacity(count);
        loop {
            while out.len() < count {
                let Some(id) = inner.free_made.pop().or_else(|| inner.free_new.pop()).or_else(|| self.grow(&mut inner))
                else {
                    break;
                };
                let Some(e) = inner.extents.get_mut(id as usize).and_then(Option::as_mut) else {
                    continue;
                };
                match e.file.try_clone() {
                    Ok(dup) => {
                        e.holder = Holder::Leased { client, pid };
                        out.push((ExtentInfo { id, made: e.made }, dup));
                    }
                    Err(err) => {
                        warn!(error = %err, "duplicating a swap pool extent's descriptor");
                        inner.free_new.push(id);
                        break;
                    }
                }
            }
            let pending = inner.zero_queue.len() + inner.zeroing;
            let now = Instant::now();
            if out.len() >= count || pending == 0 || inner.stopping || now >= deadline {
                break;
            }
            inner = self.changed.wait_timeout(inner, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        inner.leases += out.len() as u64;
        inner.leases_made += out.iter().filter(|(i, _)| i.made).count() as u64;
        out
    }

    /// A new extent if the cap allows.
    fn grow(&self, inner: &mut Inner) -> Option<u32> {
        if inner.live >= self.config.max_extents() {
            return None;
        }
        let id = u32::try_from(inner.extents.len()).ok()?;
        match make_extent(&extent_name(&self.tag, id), self.config.extent_bytes) {
            Ok((file, addr)) => {
                inner.extents.push(Some(Extent { file, addr, made: false, holder: Holder::Free }));
                inner.live += 1;
                Some(id)
            }
            Err(e) => {
                warn!(error = %e, "making a swap pool extent");
                None
            }
        }
    }

    /// Extents that connection `client` of `pid` gives back: zeroed and
    /// reused once the process holds them no more. Ids it does not lease are
    /// ignored (a confused or hostile backend cannot free another's).
    pub fn give_back(&self, client: u64, pid: u32, ids: &[u32]) {
        let mut inner = self.lock();
        let mine: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| {
                matches!(inner.extents.get(id as usize), Some(Some(e)) if e.holder == Holder::Leased { client, pid })
            })
            .collect();
        if mine.len() < ids.len() {
            warn!(pid, given = ids.len(), leased = mine.len(), "a backend gave back swap extents it does not lease");
        }
        self.settle(&mut inner, pid, &mine);
    }

    /// Connection `client` of `pid` closed: every extent it leased comes
    /// back (the process may live on, so it is checked like a give-back).
    pub fn client_gone(&self, client: u64, pid: u32) {
        let mut inner = self.lock();
        let ids: Vec<u32> = inner
            .extents
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Some(e) if e.holder == Holder::Leased { client, pid }))
            .map(|(id, _)| id as u32)
            .collect();
        if !ids.is_empty() {
            info!(pid, extents = ids.len(), "a backend's swap pool connection closed; its extents come back");
        }
        self.settle(&mut inner, pid, &ids);
    }

    /// Queues `ids` (given back by `pid`) for zeroing, keeps those `pid`
    /// still holds, drops all of them where /proc cannot tell.
    fn settle(&self, inner: &mut Inner, pid: u32, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        match still_held(&self.tag, pid) {
            Ok(held) => {
                for &id in ids {
                    let Some(Some(e)) = inner.extents.get_mut(id as usize) else { continue };
                    if held.contains(&id) {
                        e.holder = Holder::Held { pid };
                    } else {
                        e.holder = Holder::Zeroing;
                        inner.zero_queue.push_back(id);
                    }
                }
                let kept = ids.iter().filter(|id| held.contains(id)).count();
                if kept > 0 {
                    warn!(
                        pid,
                        extents = kept,
                        "a backend gave back swap extents it still maps; kept from others until it exits"
                    );
                }
            }
            Err(e) => {
                warn!(pid, error = %e, extents = ids.len(), "cannot tell from /proc whether a backend still maps the swap extents it gave back; dropping them");
                for &id in ids {
                    Self::drop_extent(inner, id, self.config.extent_bytes);
                }
            }
        }
        self.changed.notify_all();
    }

    /// Held extents whose process is gone or holds them no more go to be
    /// zeroed.
    fn release_held_of_gone(&self, inner: &mut Inner) {
        let pids: HashSet<u32> = inner
            .extents
            .iter()
            .flatten()
            .filter_map(|e| match e.holder {
                Holder::Held { pid } => Some(pid),
                _ => None,
            })
            .collect();
        for pid in pids {
            let Ok(held) = still_held(&self.tag, pid) else { continue };
            for id in 0..inner.extents.len() {
                let Some(e) = inner.extents[id].as_mut() else { continue };
                if e.holder == (Holder::Held { pid }) && !held.contains(&(id as u32)) {
                    e.holder = Holder::Zeroing;
                    inner.zero_queue.push_back(id as u32);
                }
            }
        }
        if !inner.zero_queue.is_empty() {
            self.changed.notify_all();
        }
    }

    fn drop_extent(inner: &mut Inner, id: u32, len: u64) {
        if let Some(e) = inner.extents.get_mut(id as usize).and_then(Option::take) {
            // SAFETY: the pool's own mapping of this extent, made in
            // `make_extent` with this length; nothing uses it any more.
            unsafe { libc::munmap(e.addr as *mut libc::c_void, len as usize) };
            inner.live -= 1;
        }
    }

    /// One zeroing thread: zeroes queued extents until the pool stops.
    fn zero_loop(&self) {
        let len = self.config.extent_bytes as usize;
        let mut inner = self.lock();
        loop {
            if inner.stopping {
                return;
            }
            let Some(id) = inner.zero_queue.pop_front() else {
                inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let Some((addr, fd)) =
                inner.extents.get(id as usize).and_then(Option::as_ref).map(|e| (e.addr, e.file.as_raw_fd()))
            else {
                continue;
            };
            inner.zeroing += 1;
            drop(inner);
            // An extent whose pages never came into being (leased, given back
            // unused) holds only zeros; writing it would make its pages now.
            // SAFETY: lseek on the extent's own descriptor, open while it is
            // zeroing (it is not dropped meanwhile).
            let has_pages = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) } >= 0;
            if has_pages {
                // SAFETY: the pool's own mapping of the extent, `len` bytes; no
                // backend holds the extent now (checked before it was queued),
                // and the extent is not dropped while it is zeroing.
                unsafe { std::ptr::write_bytes(addr as *mut u8, 0, len) };
            }
            inner = self.lock();
            inner.zeroing -= 1;
            if let Some(Some(e)) = inner.extents.get_mut(id as usize) {
                e.made |= has_pages;
                e.holder = Holder::Free;
                inner.free_made.push(id);
            }
            self.changed.notify_all();
        }
    }

    fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }
}

impl Drop for SwapPool {
    fn drop(&mut self) {
        let len = self.config.extent_bytes;
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        for id in 0..inner.extents.len() {
            Self::drop_extent(inner, id as u32, len);
        }
    }
}

/// The pid of the process at the other end of `sock` (SO_PEERCRED).
fn peer_pid(sock: &UnixStream) -> std::io::Result<u32> {
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
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(cred.pid).map_err(std::io::Error::other)
}

/// The pool's socket and threads; `stop` ends them.
pub struct PoolServer {
    pool: Arc<SwapPool>,
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    threads: Vec<JoinHandle<()>>,
}

impl PoolServer {
    /// Listens at `path` (a stale socket there is replaced) and starts the
    /// zeroing threads.
    pub fn start(pool: Arc<SwapPool>, path: &Path) -> Result<PoolServer, crate::Error> {
        crate::server::prepare_socket_path(path)?;
        let err = |source| crate::Error::Socket { path: path.to_path_buf(), source };
        let listener = UnixListener::bind(path).map_err(err)?;
        crate::server::set_socket_mode(path)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..pool.config.zero_threads.max(1) {
            let p = pool.clone();
            let t = std::thread::Builder::new()
                .name(format!("gv-pool-zero-{i}"))
                .spawn(move || p.zero_loop())
                .map_err(err)?;
            threads.push(t);
        }
        let (p, s, c) = (pool.clone(), stopping.clone(), conns.clone());
        let t = std::thread::Builder::new()
            .name("gv-pool-accept".into())
            .spawn(move || accept_loop(&p, &listener, &s, &c))
            .map_err(err)?;
        threads.push(t);
        info!(
            socket = %path.display(),
            cap_mib = pool.config.cap_bytes >> 20,
            extent_mib = pool.config.extent_bytes >> 20,
            "swap pool ready"
        );
        Ok(PoolServer { pool, path: path.to_path_buf(), stopping, conns, threads })
    }

    pub fn pool(&self) -> &Arc<SwapPool> {
        &self.pool
    }

    /// Closes the socket and every connection, and joins the threads.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes the accepting thread, which then sees `stopping`.
        let _ = UnixStream::connect(&self.path);
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.pool.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(pool: &Arc<SwapPool>, listener: &UnixListener, stopping: &AtomicBool, conns: &Mutex<Vec<UnixStream>>) {
    let mut next_client = 0u64;
    let mut serving: Vec<JoinHandle<()>> = Vec::new();
    for conn in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            break;
        }
        let sock = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accepting on the swap pool socket");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let pid = match peer_pid(&sock) {
            Ok(pid) => pid,
            Err(e) => {
                warn!(error = %e, "a swap pool connection without a peer process; closed");
                continue;
            }
        };
        if let Ok(c) = sock.try_clone() {
            conns.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
        next_client += 1;
        let (p, client) = (pool.clone(), next_client);
        match std::thread::Builder::new().name(format!("gv-pool-{pid}")).spawn(move || serve(&p, sock, client, pid)) {
            Ok(t) => serving.push(t),
            Err(e) => warn!(error = %e, "starting a swap pool connection thread"),
        }
        serving.retain(|t| !t.is_finished());
    }
    for t in serving {
        let _ = t.join();
    }
}

/// Serves one backend's connection until it closes or breaks the protocol;
/// then whatever it leased comes back.
fn serve(pool: &SwapPool, sock: UnixStream, client: u64, pid: u32) {
    debug!(pid, "swap pool connection");
    let mut reader = match sock.try_clone() {
        Ok(s) => FrameReader::new(s),
        Err(e) => {
            warn!(error = %e, "swap pool connection");
            return;
        }
    };
    loop {
        let req = match reader.read_msg::<PoolRequest>() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                warn!(pid, error = %e, "swap pool connection broke the protocol; closed");
                break;
            }
        };
        if reader.drop_fds() > 0 {
            warn!(pid, "a backend sent descriptors to the swap pool; closed them");
        }
        match req {
            PoolRequest::Lease { count } => {
                let got = pool.lease(client, pid, count as usize);
                let (infos, files): (Vec<ExtentInfo>, Vec<File>) = got.into_iter().unzip();
                let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
                let ids: Vec<u32> = infos.iter().map(|i| i.id).collect();
                let ans = Extents { version: POOL_VERSION, extent_bytes: pool.config.extent_bytes, extents: infos };
                debug!(pid, asked = count, given = ids.len(), "swap pool lease");
                if let Err(e) = wire::send(&sock, &ans, &fds) {
                    warn!(pid, error = %e, "answering a swap pool lease; the extents come back");
                    pool.give_back(client, pid, &ids);
                    break;
                }
            }
            PoolRequest::Return { ids } => pool.give_back(client, pid, &ids),
        }
    }
    pool.client_gone(client, pid);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_names_in_proc_are_matched_whole_and_by_pool() {
        let maps = "7f00-7f10 rw-s 00000000 00:01 5 /memfd:gv-swap-7.0-12 (deleted)\n\
                    7f20-7f30 rw-s 00000000 00:01 6 /memfd:gv-swap-7.0-1 (deleted)\n\
                    7f40-7f50 rw-s 00000000 00:01 7 /memfd:gv-swap-7.1-3 (deleted)\n\
                    7f60-7f70 rw-s 00000000 00:01 8 /memfd:gv-swap-7.0-4x (deleted)";
        let got = named_extents("7.0", maps.lines());
        assert_eq!(
            got,
            HashSet::from([12, 1]),
            "another pool's extent 3 and a name that only starts alike are not ours"
        );
        assert_eq!(named_extents("7.0", ["/memfd:gv-swap-7.0-5 (deleted)"].into_iter()), HashSet::from([5]));
        assert_eq!(named_extents("7.0", ["/memfd:gv-swap-7.0-5"].into_iter()), HashSet::from([5]));
    }

    #[test]
    fn the_cap_bounds_the_extents_made() {
        let pool = SwapPool::new(PoolConfig { cap_bytes: 3 << 20, extent_bytes: 1 << 20, zero_threads: 1 });
        let got = pool.lease(1, std::process::id(), 5);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(i, _)| !i.made), "new extents have no pages yet");
        assert!(pool.lease(2, std::process::id(), 1).is_empty(), "nothing is zeroing: no wait, no extent");
        assert_eq!(pool.stats().leased, 3);
    }
}
