//! Host memory extents leased from gpuvisord's swap pool
//! (`protocol::swap_pool`): memfds whose pages outlive this process's swaps,
//! so that a swap-out copies into pages that exist. The host swap store maps
//! and pins each as one chunk and gives it back once it holds nothing.
//!
//! The pool is optional: without a daemon, with one that has no pool, or
//! while it is unreachable, the store makes its own pages as before.

use protocol::swap_pool::{self as wire, FrameReader, PoolRequest, MAX_EXTENTS_PER_LEASE};
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long after a failed connection the lender tries again.
const RETRY: Duration = Duration::from_secs(5);

/// One leased extent.
#[derive(Debug)]
pub struct Lease {
    pub id: u32,
    /// Its pages exist: mapping it takes no new host RAM.
    pub made: bool,
    pub file: File,
    /// The connection it came on; a give-back on a later one is not sent.
    pub generation: u64,
}

/// The writing half of the pool connection, shared with the threads that
/// release chunks.
#[derive(Debug, Default)]
struct Writer {
    sock: Option<UnixStream>,
    generation: u64,
}

/// Gives extents back; cheap to clone, usable from any thread.
#[derive(Debug, Clone, Default)]
pub struct Returner(Arc<Mutex<Writer>>);

impl Returner {
    /// Tells the pool the extents of `generation` named by `ids` are
    /// unmapped and closed. Best effort: extents of an older connection, or
    /// of a connection that broke, come back to the pool when it sees this
    /// process no longer maps them.
    pub fn give_back(&self, generation: u64, ids: &[u32]) {
        let w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if w.generation != generation {
            return;
        }
        if let Some(sock) = &w.sock {
            if let Err(e) = wire::send(sock, &PoolRequest::Return { ids: ids.to_vec() }, &[]) {
                debug!(error = %e, "giving swap extents back");
            }
        }
    }
}

/// Leases extents of `extent_bytes` from the pool at `path`.
pub struct Lender {
    path: PathBuf,
    extent_bytes: u64,
    reader: Option<FrameReader>,
    returner: Returner,
    retry_at: Option<Instant>,
    /// The pool answered with another extent size: not used again.
    unusable: bool,
}

impl Lender {
    pub fn new(path: PathBuf, extent_bytes: u64) -> Self {
        Lender { path, extent_bytes, reader: None, returner: Returner::default(), retry_at: None, unusable: false }
    }

    pub fn returner(&self) -> Returner {
        self.returner.clone()
    }

    fn connect(&mut self) -> bool {
        if self.reader.is_some() {
            return true;
        }
        if self.unusable || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let conn = UnixStream::connect(&self.path).and_then(|s| Ok((s.try_clone()?, s)));
        match conn {
            Ok((read, write)) => {
                let mut w = self.returner.0.lock().unwrap_or_else(|p| p.into_inner());
                w.sock = Some(write);
                w.generation += 1;
                drop(w);
                self.reader = Some(FrameReader::new(read));
                self.retry_at = None;
                info!(socket = %self.path.display(), "swap-outs use gpuvisord's swap pool");
                true
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    info!(socket = %self.path.display(), error = %e, "no swap pool; swap-outs make their own host memory");
                }
                self.retry_at = Some(Instant::now() + RETRY);
                false
            }
        }
    }

    fn disconnect(&mut self) {
        self.reader = None;
        self.returner.0.lock().unwrap_or_else(|p| p.into_inner()).sock = None;
        self.retry_at = Some(Instant::now() + RETRY);
    }

    /// Up to `n` extents; fewer (or none) when the pool has no more or cannot
    /// be reached.
    pub fn lease(&mut self, n: usize) -> Vec<Lease> {
        let mut out = Vec::new();
        while out.len() < n && self.connect() {
            let ask = (n - out.len()).min(MAX_EXTENTS_PER_LEASE as usize) as u32;
            let generation = self.returner.0.lock().unwrap_or_else(|p| p.into_inner()).generation;
            let sent = match self.returner.0.lock().unwrap_or_else(|p| p.into_inner()).sock.as_ref() {
                Some(sock) => wire::send(sock, &PoolRequest::Lease { count: ask }, &[]),
                None => break,
            };
            let answer = sent.and_then(|()| match self.reader.as_mut() {
                Some(r) => wire::recv_extents(r),
                None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected).into()),
            });
            let (ans, files) = match answer {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "leasing swap extents; without the pool until it answers again");
                    self.disconnect();
                    break;
                }
            };
            let got = ans.extents.len();
            if ans.extent_bytes != self.extent_bytes {
                warn!(
                    pool_bytes = ans.extent_bytes,
                    chunk_bytes = self.extent_bytes,
                    "the swap pool's extents are not this backend's chunk size; not using it"
                );
                let ids: Vec<u32> = ans.extents.iter().map(|e| e.id).collect();
                drop(files);
                self.returner.give_back(generation, &ids);
                self.unusable = true;
                self.disconnect();
                break;
            }
            for (e, file) in ans.extents.into_iter().zip(files) {
                out.push(Lease { id: e.id, made: e.made, file, generation });
            }
            if got < ask as usize {
                break; // the pool has no more now
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::swap_pool::{ExtentInfo, Extents, POOL_VERSION};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;

    /// A pool that answers each lease with `per_lease` extents of `bytes`
    /// (temporary files) and records what it was asked.
    fn pool(bytes: u64, per_lease: u32) -> (PathBuf, std::thread::JoinHandle<Vec<PoolRequest>>) {
        let dir = std::env::temp_dir().join(format!("gv-lease-{}-{bytes}-{per_lease}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let mut r = FrameReader::new(sock.try_clone().unwrap());
            let mut seen = Vec::new();
            let mut next = 0;
            while let Ok(Some(req)) = r.read_msg::<PoolRequest>() {
                if let PoolRequest::Lease { count } = req {
                    let k = count.min(per_lease);
                    let files: Vec<File> = (0..k).map(|_| File::open("/dev/null").unwrap()).collect();
                    let fds: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
                    let extents = (0..k).map(|i| ExtentInfo { id: next + i, made: i % 2 == 0 }).collect();
                    next += k;
                    wire::send(&sock, &Extents { version: POOL_VERSION, extent_bytes: bytes, extents }, &fds).unwrap();
                }
                seen.push(req);
            }
            seen
        });
        (path, t)
    }

    #[test]
    fn a_lease_asks_until_it_has_enough_or_the_pool_runs_short() {
        let (path, t) = pool(64, 3);
        let mut lender = Lender::new(path, 64);
        let got = lender.lease(5);
        assert_eq!(got.iter().map(|l| l.id).collect::<Vec<_>>(), vec![0, 1, 2], "the pool gave 3 of 5: no second ask");
        assert!(got[0].made && !got[1].made);
        lender.returner().give_back(got[0].generation, &[0, 1]);
        lender.returner().give_back(got[0].generation + 1, &[2]);
        drop(lender);
        let seen = t.join().unwrap();
        assert_eq!(seen, vec![PoolRequest::Lease { count: 5 }, PoolRequest::Return { ids: vec![0, 1] }]);
    }

    #[test]
    fn extents_of_another_size_are_given_back_and_the_pool_is_left_alone() {
        let (path, t) = pool(128, 2);
        let mut lender = Lender::new(path, 64);
        assert!(lender.lease(2).is_empty());
        assert!(lender.lease(2).is_empty(), "not asked again");
        drop(lender);
        let seen = t.join().unwrap();
        assert_eq!(seen, vec![PoolRequest::Lease { count: 2 }, PoolRequest::Return { ids: vec![0, 1] }]);
    }

    #[test]
    fn without_a_pool_a_lease_is_empty_and_quick() {
        let mut lender = Lender::new(PathBuf::from("/nonexistent/gv.sock.pool"), 64);
        let t = Instant::now();
        assert!(lender.lease(4).is_empty());
        assert!(lender.lease(4).is_empty());
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
