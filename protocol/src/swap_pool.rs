//! The swap pool's wire: how a backend leases pinned host memory for the GPU
//! memory it swaps out from gpuvisord, gives it back, and adds to it.
//! A pool chunk is host memory the CUDA driver allocated pinned (a
//! `cuMemCreate` allocation at a host NUMA node), shared as the POSIX file
//! descriptor the driver exports for it. Another process imports and maps
//! it at 69-90 GB/s on the H200 host, faster than the copy into it, where
//! pinning fresh memory runs at 25 GB/s a process
//! (bench/results/h100/host-share.json), so a swap-out into pool chunks
//! moves at the copy rate. gpuvisord only holds the descriptors: the
//! memory lives while any process holds a descriptor or an import of it.
//!
//! The socket is a Unix stream beside the backend socket
//! ([`pool_socket_path`]). Each message is a frame: a little-endian `u32`
//! length, then that many bytes of JSON. A [`Chunks`] answer carries one
//! descriptor per chunk (SCM_RIGHTS), in the order of its `ids`, and so
//! does a [`PoolRequest::Donate`].

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Version of the messages below; an answer of another version is refused.
pub const POOL_VERSION: u32 = 3;

/// Most chunks one lease or donation carries: the kernel passes at most 253
/// descriptors with one message (SCM_MAX_FD).
pub const MAX_CHUNKS_PER_MESSAGE: u32 = 240;

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 10;

/// Where the pool listens, given the daemon's backend socket: the same path
/// with `.pool` appended, so a backend that knows one knows the other.
pub fn pool_socket_path(backend_socket: &Path) -> PathBuf {
    let mut s = backend_socket.as_os_str().to_owned();
    s.push(".pool");
    PathBuf::from(s)
}

/// What a backend sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PoolRequest {
    /// Up to `count` free chunks (at most `MAX_CHUNKS_PER_MESSAGE`; 0 only
    /// asks how many the pool would take, `grow`); answered by one
    /// [`Chunks`], which may hold fewer, or none. With `fresh`, only chunks
    /// never leased on this connection before: a backend that keeps its
    /// chunks mapped maps the pool ahead with them.
    Lease {
        count: u32,
        #[serde(default)]
        fresh: bool,
    },
    /// Chunks the backend leased and holds no more (unmapped, import
    /// released); no answer.
    Return { ids: Vec<u32> },
    /// `count` chunks the backend made, one descriptor each with this
    /// message, given to the pool free (the backend keeps no import of
    /// them); no answer. Those beyond the pool's room are closed.
    Donate { count: u32 },
}

/// gpuvisord's answer to a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunks {
    pub version: u32,
    /// Bytes of every chunk.
    pub chunk_bytes: u64,
    pub ids: Vec<u32>,
    /// Chunks the pool would take as donations now: the backend may make
    /// that many in the background.
    pub grow: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("swap pool socket: {0}")]
    Io(#[from] io::Error),
    #[error("swap pool frame of {0} bytes (at most {MAX_FRAME})")]
    FrameTooLarge(usize),
    #[error("malformed swap pool message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("swap pool message carried {fds} descriptors for {chunks} chunks")]
    DescriptorCount { fds: usize, chunks: usize },
    #[error("swap pool speaks version {0}, this side {POOL_VERSION}")]
    Version(u32),
}

/// Sends `msg` as one frame, with `fds` attached to it.
pub fn send<T: Serialize>(sock: &UnixStream, msg: &T, fds: &[RawFd]) -> Result<(), PoolError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(PoolError::FrameTooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    let mut sent = sock.send_with_fds(&[&frame[..]], fds).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // The descriptors went with the first bytes; the rest is plain data.
    while sent < frame.len() {
        let n = io::Write::write(&mut &*sock, &frame[sent..])?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero).into());
        }
        sent += n;
    }
    Ok(())
}

/// Reads frames off one socket, keeping bytes and descriptors that came
/// ahead of the frame they belong to.
pub struct FrameReader {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<File>,
}

impl FrameReader {
    pub fn new(sock: UnixStream) -> Self {
        FrameReader { sock, buf: Vec::new(), fds: VecDeque::new() }
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The next frame's body; `None` at the end of the stream (between
    /// frames). Descriptors received on the way wait in `take_fds`.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, PoolError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if len > MAX_FRAME {
                    return Err(PoolError::FrameTooLarge(len));
                }
                if self.buf.len() >= 4 + len {
                    let body = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Ok(Some(body));
                }
            }
            let mut chunk = vec![0u8; MAX_FRAME + 4];
            let mut raw = [-1 as RawFd; MAX_CHUNKS_PER_MESSAGE as usize + 13];
            let mut iov = [libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: chunk.len() }];
            // SAFETY: the iovec points at `chunk`, owned and writable for its
            // whole length while the call runs.
            let (n, nfds) = unsafe { self.sock.recv_with_fds(&mut iov, &mut raw) }
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            for &fd in &raw[..nfds] {
                // SAFETY: recvmsg gave this process these descriptors; each is
                // owned once, here.
                self.fds.push_back(unsafe { File::from_raw_fd(fd) });
            }
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message, parsed; `None` at the end of the stream.
    pub fn read_msg<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, PoolError> {
        match self.next_frame()? {
            Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
            None => Ok(None),
        }
    }

    /// The descriptors received so far, oldest first.
    pub fn take_fds(&mut self, n: usize) -> Result<Vec<File>, PoolError> {
        if self.fds.len() < n {
            return Err(PoolError::DescriptorCount { fds: self.fds.len(), chunks: n });
        }
        Ok(self.fds.drain(..n).collect())
    }

    /// Descriptors nobody asked for are closed.
    pub fn drop_fds(&mut self) -> usize {
        let n = self.fds.len();
        self.fds.clear();
        n
    }
}

/// Reads a [`Chunks`] answer and the descriptors that came with it,
/// checking its version and that every chunk has its descriptor.
pub fn recv_chunks(reader: &mut FrameReader) -> Result<(Chunks, Vec<File>), PoolError> {
    let Some(ans) = reader.read_msg::<Chunks>()? else {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    };
    if ans.version != POOL_VERSION {
        reader.drop_fds();
        return Err(PoolError::Version(ans.version));
    }
    let files = reader.take_fds(ans.ids.len())?;
    let extra = reader.drop_fds();
    if extra > 0 {
        return Err(PoolError::DescriptorCount { fds: ans.ids.len() + extra, chunks: ans.ids.len() });
    }
    Ok((ans, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn the_pool_socket_sits_beside_the_backend_socket() {
        assert_eq!(
            pool_socket_path(Path::new("/run/gpuvisor/gpuvisord.sock")),
            Path::new("/run/gpuvisor/gpuvisord.sock.pool")
        );
    }

    #[test]
    fn frames_carry_messages_and_descriptors_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut files = Vec::new();
        for i in 0..3u8 {
            let mut f = tempfile_with(&[i; 4]);
            f.seek(SeekFrom::Start(0)).unwrap();
            files.push(f);
        }
        send(&a, &PoolRequest::Lease { count: 3, fresh: true }, &[]).unwrap();
        send(&a, &PoolRequest::Return { ids: vec![1, 2] }, &[]).unwrap();
        let ans = Chunks { version: POOL_VERSION, chunk_bytes: 4, ids: vec![0, 1, 2], grow: 5 };
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send(&a, &ans, &raw).unwrap();
        let mut r = FrameReader::new(b);
        assert_eq!(r.read_msg::<PoolRequest>().unwrap(), Some(PoolRequest::Lease { count: 3, fresh: true }));
        assert_eq!(r.read_msg::<PoolRequest>().unwrap(), Some(PoolRequest::Return { ids: vec![1, 2] }));
        let (got, mut fds) = recv_chunks(&mut r).unwrap();
        assert_eq!(got, ans);
        for (i, f) in fds.iter_mut().enumerate() {
            let mut s = [0u8; 4];
            f.read_exact(&mut s).unwrap();
            assert_eq!(s, [i as u8; 4], "descriptor {i} is the file sent in its place");
        }
        drop(a);
        assert_eq!(r.read_msg::<PoolRequest>().unwrap(), None, "end of stream between frames");
    }

    #[test]
    fn an_answer_short_of_descriptors_or_of_another_version_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut r = FrameReader::new(b);
        let ans = Chunks { version: POOL_VERSION, chunk_bytes: 4, ids: vec![0], grow: 0 };
        send(&a, &ans, &[]).unwrap();
        assert!(matches!(recv_chunks(&mut r), Err(PoolError::DescriptorCount { fds: 0, chunks: 1 })));
        send(&a, &Chunks { version: 99, ..ans }, &[]).unwrap();
        assert!(matches!(recv_chunks(&mut r), Err(PoolError::Version(99))));
    }

    #[test]
    fn an_oversized_or_cut_frame_is_an_error_not_a_wait() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = FrameReader::new(b);
        a.write_all(&((MAX_FRAME as u32) + 1).to_le_bytes()).unwrap();
        assert!(matches!(r.next_frame(), Err(PoolError::FrameTooLarge(_))));
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = FrameReader::new(b);
        a.write_all(&10u32.to_le_bytes()).unwrap();
        a.write_all(b"{\"op\"").unwrap();
        drop(a);
        assert!(matches!(r.next_frame(), Err(PoolError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!("gv-pool-test-{}-{}", std::process::id(), bytes[0]));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }
}
