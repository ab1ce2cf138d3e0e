//! The guest side of a session: one per process. It owns the transport, the
//! control buffer the backend replies into, the batch being built, and the
//! shared buffers behind pinned host memory and staging. Asynchronous calls
//! are appended to the batch and return at once; synchronous calls flush the
//! batch and wait for the reply.

use crate::transport::{self, SharedBuf, Transport, TransportError};
use protocol::cuda::*;
use protocol::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Control buffer: reply header plus room for the largest inline reply.
const CONTROL_BYTES: usize = 4 << 20;
/// Largest DtoH copy answered inline in the reply.
pub const MAX_INLINE_REPLY: usize = CONTROL_BYTES - REPLY_PAYLOAD_OFFSET as usize;
/// A batch is sent once it holds this many bytes...
const FLUSH_BYTES: usize = 256 << 10;
/// ...or once its oldest command has waited this long.
const FLUSH_AGE: Duration = Duration::from_micros(200);
/// Each of the two staging buffers for pageable copies.
const STAGING_BYTES: usize = 16 << 20;
/// How long a synchronous call spins on the reply before it blocks.
const SPIN: Duration = Duration::from_micros(50);
/// How often a call waiting for its reply looks at the backend's heartbeat.
const HEARTBEAT_CHECK: Duration = Duration::from_millis(500);
/// How long the heartbeat may stand still before a waiting call fails,
/// unless GPUVISOR_HEARTBEAT_TIMEOUT_S says otherwise: ten of the backend's
/// longest periods.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Device facts from the Hello reply.
pub struct DeviceFacts {
    pub reply: HelloReply,
}

impl DeviceFacts {
    pub fn name(&self) -> &[u8] {
        let n = self.reply.name.iter().position(|&b| b == 0).unwrap_or(self.reply.name.len());
        &self.reply.name[..n]
    }
    pub fn attr(&self, a: usize) -> Option<i32> {
        self.reply.attrs.get(a).map(|v| v.get())
    }
    pub fn total_mem(&self) -> u64 {
        self.reply.total_mem.get()
    }
}

struct Inner {
    writer: BatchWriter,
    /// Sequence number the batch being built will carry.
    next_seq: u64,
    oldest: Option<Instant>,
    /// Error of an asynchronous call, reported by the next synchronizing call.
    pending_error: Option<CuResult>,
    /// Which staging buffer the next pageable chunk uses, and the batch that
    /// last used each.
    staging_turn: usize,
    staging_seq: [u64; 2],
}

pub struct Client {
    transport: Box<dyn Transport>,
    control: SharedBuf,
    staging: [SharedBuf; 2],
    inner: Mutex<Inner>,
    pub facts: DeviceFacts,
    /// Pinned host memory (cuMemAllocHost), keyed by address.
    pinned: Mutex<BTreeMap<usize, SharedBuf>>,
    next_id: AtomicU64,
    /// The sticky error the backend answered (`protocol::cuda::is_sticky`),
    /// 0 for none: a kernel fault lost the process's GPU context, and every
    /// later call returns it at once, as NVIDIA's driver does.
    sticky: AtomicU32,
    /// The backend beats in the control buffer (`CAPSET_F_HEARTBEAT`).
    heartbeat: bool,
    /// The backend runs cluster and cooperative launches (`CAPSET_F_LAUNCH_EX`).
    launch_ex: bool,
    /// How long the beat may stand still while a call waits.
    heartbeat_timeout: Duration,
}

static CLIENT: OnceLock<Result<Client, CuResult>> = OnceLock::new();

/// How long a new process waits for an unreachable backend before cuInit
/// fails, unless GPUVISOR_NEW_SESSION_TIMEOUT_S says otherwise: long enough
/// for a supervisor to start a new serving backend after one died (its
/// back-off is at most 2 s, and a CUDA engine takes a few seconds to start).
pub const DEFAULT_NEW_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// GPUVISOR_NEW_SESSION_TIMEOUT_S (seconds, fractions allowed; 0 fails at
/// once), else [`DEFAULT_NEW_SESSION_TIMEOUT`].
pub fn new_session_timeout() -> Duration {
    std::env::var("GPUVISOR_NEW_SESSION_TIMEOUT_S")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(DEFAULT_NEW_SESSION_TIMEOUT, Duration::from_secs_f64)
}

/// The process's session, opened on first use (cuInit). A backend that
/// cannot be reached (being restarted) is waited for up to
/// [`new_session_timeout`]; a machine with no gpuvisor device at all (no
/// such render node) fails at once.
pub fn get() -> Result<&'static Client, CuResult> {
    CLIENT
        .get_or_init(|| {
            let deadline = Instant::now() + new_session_timeout();
            let direct = std::env::var("GPUVISOR_TRANSPORT").is_ok_and(|v| v.starts_with("direct:"));
            loop {
                match Client::open() {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        let absent = matches!(e, OpenError::Transport(TransportError::NoDevice(_))) && !direct;
                        if absent || matches!(e, OpenError::BadCapset) || Instant::now() >= deadline {
                            crate::log::warn(&format!("cannot reach the gpuvisor backend: {e}"));
                            return Err(CUDA_ERROR_NO_DEVICE);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .as_ref()
        .map_err(|e| *e)
}

/// The session if it is already open.
pub fn try_get() -> Option<&'static Client> {
    CLIENT.get().and_then(|r| r.as_ref().ok())
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("backend refused the session: CUDA error {0}")]
    Refused(CuResult),
    #[error("capset is not gpuvisor's or speaks another protocol version")]
    BadCapset,
}

impl Client {
    fn open() -> Result<Client, OpenError> {
        let transport = transport::open_from_env()?;
        Self::with_transport(transport)
    }

    /// Opens a session over a given transport.
    pub fn with_transport(transport: Box<dyn Transport>) -> Result<Client, OpenError> {
        let capset = transport.capset()?;
        let cap = Capset::read_from_prefix(&capset).map_err(|_| OpenError::BadCapset)?.0;
        if cap.magic.get() != CAPSET_MAGIC
            || cap.protocol_min.get() > PROTOCOL_VERSION
            || cap.protocol_max.get() < PROTOCOL_VERSION
        {
            return Err(OpenError::BadCapset);
        }
        let control = transport.alloc_shared(CONTROL_BYTES)?;
        transport.set_fence_buffer(&control);
        let staging = [transport.alloc_shared(STAGING_BYTES)?, transport.alloc_shared(STAGING_BYTES)?];
        let mut c = Client {
            transport,
            control,
            staging,
            inner: Mutex::new(Inner {
                writer: BatchWriter::new(),
                next_seq: 1,
                oldest: None,
                pending_error: None,
                staging_turn: 0,
                staging_seq: [0; 2],
            }),
            facts: DeviceFacts { reply: HelloReply::default() },
            pinned: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0x1000),
            sticky: AtomicU32::new(0),
            // Off until the Hello is answered: the backend beats only for
            // sessions it knows, and the Hello may wait behind other work
            // (another process's teardown).
            heartbeat: false,
            launch_ex: cap.flags.get() & CAPSET_F_LAUNCH_EX != 0,
            heartbeat_timeout: std::env::var("GPUVISOR_HEARTBEAT_TIMEOUT_S")
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map_or(DEFAULT_HEARTBEAT_TIMEOUT, Duration::from_secs_f64),
        };
        let hello = Hello {
            control_resource: U32::new(c.control.resource_id),
            protocol_version: U16::new(PROTOCOL_VERSION),
            _pad: U16::new(0),
            pid: U32::new(std::process::id()),
            _pad2: U32::new(0),
        };
        let reply = c.call(Opcode::Hello, 0, 0, &hello, &[]).map_err(OpenError::Refused)?;
        c.facts.reply = HelloReply::read_from_prefix(&reply).map_err(|_| OpenError::BadCapset)?.0;
        c.heartbeat = cap.flags.get() & CAPSET_F_HEARTBEAT != 0;
        Ok(c)
    }

    pub fn transport_name(&self) -> &'static str {
        self.transport.name()
    }

    /// A fresh guest-chosen id for a new object.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sticky error, if the process's GPU context is lost: every call
    /// that would reach the backend returns it instead.
    pub fn lost(&self) -> Result<(), CuResult> {
        match self.sticky.load(Ordering::Relaxed) {
            0 => Ok(()),
            code => Err(code),
        }
    }

    /// The backend says the session is gone (`REPLY_F_SESSION_LOST`): the
    /// backend process that held it ended and another took its place.
    /// `code` is returned for every later call of the process, as a sticky
    /// error is.
    fn lose_session(&self, code: CuResult) {
        if self.sticky.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            crate::log::warn(&format!(
                "the GPU session is lost ({}): the VM's GPU backend was restarted and this process's GPU state \
                 went with the old one; every later CUDA call of this process returns this error, and a new \
                 process gets a working session",
                error_name(code).unwrap_or("unknown error")
            ));
        }
    }

    /// Notes a reply's error: a sticky one loses the session for good.
    fn note(&self, code: CuResult) {
        if is_sticky(code) && self.sticky.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            crate::log::warn(&format!(
                "the GPU context is lost ({}): every later CUDA call of this process returns it, as NVIDIA's \
                 driver does; a new process gets a working one",
                error_name(code).unwrap_or("unknown error")
            ));
        }
    }

    /// Whether the backend runs `LaunchKernelEx` and kernel graph nodes with
    /// a cluster or as cooperative launches (`CAPSET_F_LAUNCH_EX`).
    pub fn has_launch_ex(&self) -> bool {
        self.launch_ex
    }

    /// Whether the backend beats (`CAPSET_F_HEARTBEAT`).
    pub fn has_heartbeat(&self) -> bool {
        self.heartbeat
    }

    /// Sets how long the heartbeat may stand still while a call waits
    /// (GPUVISOR_HEARTBEAT_TIMEOUT_S otherwise; tests).
    pub fn set_heartbeat_timeout(&mut self, timeout: Duration) {
        self.heartbeat_timeout = timeout;
    }

    fn heartbeat_word(&self) -> u64 {
        // SAFETY: the control buffer is mapped for the session's lifetime;
        // HEARTBEAT_OFFSET is 8-aligned inside its first page, and the
        // backend writes the word while we read it (any value will do: we
        // only compare it with the last one).
        let a = unsafe { &*(self.control.ptr.add(HEARTBEAT_OFFSET as usize) as *const AtomicU64) };
        a.load(Ordering::Relaxed)
    }

    /// Waits for the backend once: until it has finished what was sent
    /// (`Ok(true)`), or, with a heartbeat, until HEARTBEAT_CHECK passed
    /// (`Ok(false)`).
    fn wait_backend(&self) -> Result<bool, TransportError> {
        if self.heartbeat {
            self.transport.wait_idle_for(HEARTBEAT_CHECK)
        } else {
            self.transport.wait_idle().map(|()| true)
        }
    }

    fn completed_seq(&self) -> u64 {
        // SAFETY: the control buffer is mapped for the session's lifetime and
        // its first 8 bytes are an aligned u64 the backend stores atomically.
        let a = unsafe { &*(self.control.ptr as *const AtomicU64) };
        a.load(Ordering::Acquire)
    }

    /// Sends the batch being built, if any. Returns its sequence number.
    fn flush_locked(&self, inner: &mut Inner) -> Result<u64, CuResult> {
        if inner.writer.is_empty() {
            return Ok(inner.next_seq - 1);
        }
        let seq = inner.next_seq;
        inner.writer.set_seq(seq);
        let bytes = inner.writer.finish();
        self.transport.submit(bytes, &[]).map_err(|e| {
            crate::log::warn(&format!("submit failed: {e}"));
            CUDA_ERROR_UNKNOWN
        })?;
        inner.next_seq += 1;
        inner.writer.begin(inner.next_seq);
        inner.oldest = None;
        Ok(seq)
    }

    fn wait_seq(&self, seq: u64) -> Result<(), CuResult> {
        let start = Instant::now();
        let mut beat = (self.heartbeat_word(), Instant::now());
        while self.completed_seq() < seq {
            if start.elapsed() > SPIN {
                match self.wait_backend() {
                    Ok(false) => {
                        let word = self.heartbeat_word();
                        if word != beat.0 {
                            beat = (word, Instant::now());
                        } else if beat.1.elapsed() >= self.heartbeat_timeout {
                            // The reply may still come one day, but the
                            // batch sequence is out of step from here on.
                            let code = CUDA_ERROR_UNKNOWN;
                            if self.sticky.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                                crate::log::warn(&format!(
                                    "the gpuvisor backend's heartbeat stood still for {:.1} s while this call \
                                     waited: the backend is frozen (stopped, or hung outside the GPU); every \
                                     later CUDA call of this process returns CUDA_ERROR_UNKNOWN",
                                    beat.1.elapsed().as_secs_f64()
                                ));
                            }
                            return Err(code);
                        }
                        continue;
                    }
                    Ok(true) => {}
                    Err(e) => {
                        // A backend that ended (its GPU context lost, or its
                        // watchdog) may have answered first.
                        if self.completed_seq() >= seq {
                            break;
                        }
                        crate::log::warn(&format!("waiting for the backend failed: {e}"));
                        return Err(CUDA_ERROR_UNKNOWN);
                    }
                }
                if self.completed_seq() < seq {
                    crate::log::warn("backend finished a batch without answering it");
                    return Err(CUDA_ERROR_UNKNOWN);
                }
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    fn push<T: IntoBytes + Immutable>(inner: &mut Inner, op: Opcode, flags: u16, ctx: u64, p: &T, trailing: &[u8]) {
        if inner.writer.byte_len() == 0 {
            inner.writer.begin(inner.next_seq);
        }
        inner.writer.push(op, flags, ctx, p, trailing);
    }

    /// Queues an asynchronous command.
    pub fn enqueue<T: IntoBytes + Immutable>(
        &self,
        op: Opcode,
        flags: u16,
        ctx: u64,
        p: &T,
        trailing: &[u8],
    ) -> Result<(), CuResult> {
        self.lost()?;
        let mut inner = self.lock();
        Self::push(&mut inner, op, flags, ctx, p, trailing);
        let now = Instant::now();
        let oldest = *inner.oldest.get_or_insert(now);
        if inner.writer.byte_len() >= FLUSH_BYTES || now.duration_since(oldest) >= FLUSH_AGE {
            self.flush_locked(&mut inner)?;
        }
        Ok(())
    }

    /// Sends whatever is queued, without waiting.
    pub fn flush(&self) -> Result<(), CuResult> {
        self.lost()?;
        let mut inner = self.lock();
        self.flush_locked(&mut inner).map(|_| ())
    }

    /// Runs a synchronous command and returns its reply payload.
    pub fn call<T: IntoBytes + Immutable>(
        &self,
        op: Opcode,
        flags: u16,
        ctx: u64,
        p: &T,
        trailing: &[u8],
    ) -> Result<Vec<u8>, CuResult> {
        self.lost()?;
        let mut inner = self.lock();
        Self::push(&mut inner, op, flags, ctx, p, trailing);
        self.call_locked(&mut inner)
    }

    fn call_locked(&self, inner: &mut Inner) -> Result<Vec<u8>, CuResult> {
        let seq = self.flush_locked(inner)?;
        self.wait_seq(seq)?;
        let hdr = self.reply_header();
        if hdr.reply_seq.get() != seq {
            crate::log::warn("reply does not answer the last batch");
            return Err(CUDA_ERROR_UNKNOWN);
        }
        if hdr.flags.get() & REPLY_F_SESSION_LOST != 0 {
            let code = match hdr.status.get() {
                CUDA_SUCCESS => CUDA_ERROR_CONTEXT_IS_DESTROYED,
                c => c,
            };
            self.lose_session(code);
            return Err(code);
        }
        self.note(hdr.deferred.get());
        self.note(hdr.status.get());
        if hdr.deferred.get() != 0 && inner.pending_error.is_none() {
            inner.pending_error = Some(hdr.deferred.get());
        }
        if hdr.status.get() != CUDA_SUCCESS {
            return Err(hdr.status.get());
        }
        let len = (hdr.payload_len.get() as usize).min(MAX_INLINE_REPLY);
        // SAFETY: the payload lies inside the mapped control buffer (bounded
        // above) and the backend finished writing it before completed_seq.
        let payload = unsafe { std::slice::from_raw_parts(self.control.ptr.add(REPLY_PAYLOAD_OFFSET as usize), len) };
        Ok(payload.to_vec())
    }

    fn reply_header(&self) -> ReplyHeader {
        // SAFETY: the header lies at the start of the mapped control buffer.
        let bytes = unsafe { std::slice::from_raw_parts(self.control.ptr, core::mem::size_of::<ReplyHeader>()) };
        ReplyHeader::read_from_bytes(bytes).unwrap_or_default()
    }

    /// Runs a synchronizing call: its own error first, then any error an
    /// earlier asynchronous call left behind.
    pub fn sync_call<T: IntoBytes + Immutable>(
        &self,
        op: Opcode,
        flags: u16,
        ctx: u64,
        p: &T,
    ) -> Result<Vec<u8>, CuResult> {
        self.lost()?;
        let mut inner = self.lock();
        Self::push(&mut inner, op, flags, ctx, p, &[]);
        let r = self.call_locked(&mut inner)?;
        match inner.pending_error.take() {
            Some(e) => Err(e),
            None => Ok(r),
        }
    }

    /// Takes the error an asynchronous call left behind, if any.
    pub fn take_pending_error(&self) -> Option<CuResult> {
        self.lock().pending_error.take()
    }

    /// Sends `bytes` as one batch exactly as given (it takes the next sequence
    /// number's place) and returns the reply's status. For probing the
    /// backend with malformed input.
    pub fn submit_raw(&self, bytes: &[u8]) -> Result<CuResult, CuResult> {
        let mut inner = self.lock();
        self.flush_locked(&mut inner)?;
        let seq = inner.next_seq;
        self.transport.submit(bytes, &[]).map_err(|_| CUDA_ERROR_UNKNOWN)?;
        inner.next_seq += 1;
        let next = inner.next_seq;
        inner.writer.begin(next);
        self.wait_seq(seq)?;
        Ok(self.reply_header().status.get())
    }

    /// The sequence number the next batch will carry (for probes).
    pub fn next_seq(&self) -> u64 {
        let mut inner = self.lock();
        let _ = self.flush_locked(&mut inner);
        inner.next_seq
    }

    /// The resource id and size of the control buffer (for probes).
    pub fn control_buffer(&self) -> (u32, usize) {
        (self.control.resource_id, self.control.len)
    }

    // ---- host memory -----------------------------------------------------

    /// Pinned host memory the backend can reach without a copy.
    pub fn alloc_pinned(&self, len: usize) -> Result<*mut u8, CuResult> {
        self.lost()?;
        let buf = self.transport.alloc_shared(len.max(1)).map_err(|e| {
            crate::log::warn(&format!("pinned allocation of {len} bytes failed: {e}"));
            CUDA_ERROR_OUT_OF_MEMORY
        })?;
        let p = buf.ptr;
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).insert(p as usize, buf);
        Ok(p)
    }

    pub fn free_pinned(&self, p: *mut u8) -> Result<(), CuResult> {
        // Queued copies may still read it.
        self.synchronize_transport()?;
        let buf = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(p as usize))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.transport.free_shared(&buf);
        Ok(())
    }

    /// The shared buffer holding `[addr, addr + len)`, as (resource, offset).
    pub fn find_pinned(&self, addr: usize, len: usize) -> Option<(u32, u64)> {
        let map = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        let (_, buf) = map.range(..=addr).next_back()?;
        buf.offset_of(addr, len).map(|off| (buf.resource_id, off as u64))
    }

    /// Base and size of the pinned allocation containing `addr`.
    pub fn pinned_range(&self, addr: usize) -> Option<(usize, usize)> {
        let map = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        let (base, buf) = map.range(..=addr).next_back()?;
        (addr < base + buf.len).then_some((*base, buf.len))
    }

    /// Waits until the backend has run everything sent so far.
    pub fn synchronize_transport(&self) -> Result<(), CuResult> {
        self.lost()?;
        let mut inner = self.lock();
        let seq = self.flush_locked(&mut inner)?;
        self.wait_seq(seq)
    }

    /// Host-to-device copy from memory the backend cannot see: in chunks
    /// through the two staging buffers, each reused only once the backend has
    /// finished with the batch that last used it.
    pub fn htod_staged(&self, ctx: u64, dst: u64, src: &[u8], stream: u64, flags: u16) -> Result<(), CuResult> {
        self.lost()?;
        let mut inner = self.lock();
        let mut done = 0usize;
        while done < src.len() {
            let n = (src.len() - done).min(STAGING_BYTES);
            let turn = inner.staging_turn;
            let last = inner.staging_seq[turn];
            if last != 0 && self.completed_seq() < last {
                // Make sure that batch was sent, then wait for it.
                self.flush_locked(&mut inner)?;
                self.wait_seq(last)?;
            }
            let buf = &self.staging[turn];
            // SAFETY: n <= STAGING_BYTES = buf.len, and the backend is done
            // with this staging buffer (waited above).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), buf.ptr, n) };
            let m = MemcpyHtoD {
                dst: U64::new(dst + done as u64),
                len: U64::new(n as u64),
                stream: U64::new(stream),
                src: HostRef {
                    kind: U32::new(HOST_RESOURCE),
                    resource: U32::new(buf.resource_id),
                    offset: U64::new(0),
                },
            };
            Self::push(&mut inner, Opcode::MemcpyHtoD, flags | CMD_FLAG_STAGING, ctx, &m, &[]);
            let seq = self.flush_locked(&mut inner)?;
            inner.staging_seq[turn] = seq;
            inner.staging_turn = 1 - turn;
            done += n;
        }
        Ok(())
    }

    /// Device-to-host copy into memory the backend cannot see, through
    /// staging. Synchronous.
    pub fn dtoh_staged(&self, ctx: u64, dst: &mut [u8], src: u64, stream: u64) -> Result<(), CuResult> {
        self.lost()?;
        let mut inner = self.lock();
        let mut done = 0usize;
        while done < dst.len() {
            let n = (dst.len() - done).min(STAGING_BYTES);
            let buf = &self.staging[0];
            let m = MemcpyDtoH {
                src: U64::new(src + done as u64),
                len: U64::new(n as u64),
                stream: U64::new(stream),
                dst: HostRef {
                    kind: U32::new(HOST_RESOURCE),
                    resource: U32::new(buf.resource_id),
                    offset: U64::new(0),
                },
            };
            Self::push(&mut inner, Opcode::MemcpyDtoH, CMD_FLAG_STAGING, ctx, &m, &[]);
            self.call_locked(&mut inner)?;
            // SAFETY: the backend wrote n <= buf.len bytes and finished the batch.
            unsafe { std::ptr::copy_nonoverlapping(buf.ptr, dst.as_mut_ptr().add(done), n) };
            done += n;
        }
        inner.staging_seq = [0; 2];
        match inner.pending_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
