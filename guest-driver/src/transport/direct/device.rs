//! One vhost-user connection driven the way a guest's virtio-gpu driver
//! drives its device: the vhost-user handshake, a memfd as guest RAM, and the
//! control queue with request/response framing (a CtrlHdr and command in, a
//! CtrlHdr and payload out). It knows nothing of gpuvisor, so it can be
//! tested against any virtio-gpu vhost-user backend, QEMU's included.

use super::memory::{Arena, GuestRam, Heap, AREA_ALIGN};
use super::vring::{Buf, Layout, SplitQueue};
use crate::transport::TransportError;
use protocol::virtio_gpu::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{FrontendReq, VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

/// Control and cursor queue, as every virtio-gpu device has.
const NUM_QUEUES: usize = 2;
const CTRL: usize = 0;
const QUEUE_SIZE: u16 = 256;
/// Where things live in the memfd: the two rings, then the request arena,
/// then the heap that shared buffers and oversized payloads come from.
const RING_BASE: [u64; NUM_QUEUES] = [0, 64 << 10];
const ARENA_BASE: u64 = 2 << 20;
const ARENA_BYTES: u64 = 8 << 20;
const HEAP_BASE: u64 = ARENA_BASE + ARENA_BYTES;
/// Smallest memfd worth having: the fixed layout plus room for buffers.
pub const MIN_MEM_BYTES: u64 = 64 << 20;
/// Response room for requests whose answer is only a header.
const HEADER_RESPONSE: u32 = 64;
const HDR: usize = core::mem::size_of::<CtrlHdr>();
/// How long one blocking wait lasts before the state is looked at again;
/// a safety net, not a timing: the call eventfd and a hang-up end it first.
const BLOCK_SLICE: Duration = Duration::from_secs(1);

pub struct DeviceOptions {
    /// Size of the memfd that plays guest RAM.
    pub mem_bytes: u64,
    /// Device feature bits (beyond VIRTIO_F_VERSION_1) the device must offer.
    pub required_features: u64,
    /// Device feature bits acknowledged when offered.
    pub optional_features: u64,
    /// How long a waiter spins on the used ring before it sleeps on the
    /// call eventfd.
    pub spin: Duration,
    /// One end of a socket pair to hand the backend with
    /// VHOST_USER_GPU_SET_SOCKET, as QEMU does for its display. gpuvisor's
    /// backend needs none; QEMU's reference backend does.
    pub display: Option<UnixStream>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            mem_bytes: 1 << 30,
            required_features: 0,
            optional_features: 0,
            spin: Duration::from_micros(50),
            display: None,
        }
    }
}

/// A piece of the memfd handed out by `DirectDevice::alloc`.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// Offset in the memfd; `free` takes it back.
    pub offset: u64,
    pub len: u64,
    /// Guest-physical address, for MemEntry.
    pub gpa: u64,
    /// Where it is mapped in this process.
    pub ptr: *mut u8,
}

/// What to do with a request's response when it comes back.
#[derive(Clone, Copy)]
enum Reply {
    /// Keep its bytes for the thread waiting on it.
    Keep,
    /// Nobody waits: check its type and remember a rejection.
    Check { what: &'static str, want: u32 },
}

struct Pending {
    seq: u64,
    area: u64,
    payload: Option<u64>,
    resp: u64,
    reply: Reply,
}

struct Ctrl {
    vq: SplitQueue,
    arena: Arena,
    /// Requests in flight, by head descriptor.
    pending: Vec<Option<Pending>>,
    /// Sequence numbers in flight (requests are numbered as queued).
    in_flight: BTreeSet<u64>,
    next_seq: u64,
    /// Requests completed so far; waiters for room watch it move.
    completed: u64,
    replies: HashMap<u64, Vec<u8>>,
    /// Synchronous requests whose waiter gave up.
    abandoned: HashSet<u64>,
    /// The first rejected unwaited request since `wait_idle` last reported.
    rejected: Option<(&'static str, u32)>,
    /// Set once the backend broke the protocol or went away.
    broken: Option<String>,
    /// Whether a thread is blocked on the call eventfd; others wait on the
    /// condvar instead, so no completion signal is lost between two readers.
    poller: bool,
}

/// One virtio-gpu device behind a vhost-user socket, with this process as
/// its driver.
pub struct DirectDevice {
    // Dropping the frontend and `conn` closes the connection, which the
    // backend takes as the end of this client.
    _frontend: Frontend,
    /// A second handle on the connection, for VHOST_USER_GPU_SET_SOCKET
    /// (which the frontend has no method for) and to notice a hang-up.
    conn: UnixStream,
    ram: GuestRam,
    ctrl_layout: Layout,
    ctrl: Mutex<Ctrl>,
    progress: Condvar,
    heap: Mutex<Heap>,
    kick: EventFd,
    call: EventFd,
    /// The cursor queue's kick and call: set up as the device expects, unused.
    _cursor: (EventFd, EventFd),
    features: u64,
    config: Option<Config>,
    spin: Duration,
}

fn vhost_err(op: &'static str) -> impl FnOnce(vhost::Error) -> TransportError {
    move |e| TransportError::Io { op, source: std::io::Error::other(e.to_string()) }
}

fn connect_socket(path: &str) -> Result<UnixStream, TransportError> {
    // The backend may still be starting: give it a moment to listen.
    let mut tries = 0;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if tries < 20
                    && matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(TransportError::NoDevice(format!("{path}: {e}"))),
        }
    }
}

/// The name of a control command, for errors.
pub fn cmd_name(ty: u32) -> &'static str {
    match ty {
        CMD_GET_DISPLAY_INFO => "GET_DISPLAY_INFO",
        CMD_RESOURCE_CREATE_2D => "RESOURCE_CREATE_2D",
        CMD_RESOURCE_UNREF => "RESOURCE_UNREF",
        CMD_SET_SCANOUT => "SET_SCANOUT",
        CMD_RESOURCE_FLUSH => "RESOURCE_FLUSH",
        CMD_TRANSFER_TO_HOST_2D => "TRANSFER_TO_HOST_2D",
        CMD_RESOURCE_ATTACH_BACKING => "RESOURCE_ATTACH_BACKING",
        CMD_RESOURCE_DETACH_BACKING => "RESOURCE_DETACH_BACKING",
        CMD_GET_CAPSET_INFO => "GET_CAPSET_INFO",
        CMD_GET_CAPSET => "GET_CAPSET",
        CMD_GET_EDID => "GET_EDID",
        CMD_CTX_CREATE => "CTX_CREATE",
        CMD_CTX_DESTROY => "CTX_DESTROY",
        CMD_CTX_ATTACH_RESOURCE => "CTX_ATTACH_RESOURCE",
        CMD_CTX_DETACH_RESOURCE => "CTX_DETACH_RESOURCE",
        CMD_RESOURCE_CREATE_3D => "RESOURCE_CREATE_3D",
        CMD_TRANSFER_TO_HOST_3D => "TRANSFER_TO_HOST_3D",
        CMD_TRANSFER_FROM_HOST_3D => "TRANSFER_FROM_HOST_3D",
        CMD_SUBMIT_3D => "SUBMIT_3D",
        _ => "virtio-gpu command",
    }
}

fn align(n: u64) -> u64 {
    n.next_multiple_of(AREA_ALIGN)
}

impl DirectDevice {
    /// Connects to a virtio-gpu vhost-user backend and starts the device:
    /// features, memory, both queues. The order is QEMU's, so a backend
    /// cannot tell this driver from a VM's.
    pub fn connect(path: &str, opts: DeviceOptions) -> Result<DirectDevice, TransportError> {
        let mem_bytes = opts
            .mem_bytes
            .max(MIN_MEM_BYTES)
            .checked_next_multiple_of(2 << 20)
            .ok_or(TransportError::OutOfMemory(usize::MAX))?;
        let ram = GuestRam::new(mem_bytes)?;
        let sock = connect_socket(path)?;
        let conn = sock.try_clone().map_err(TransportError::io("duplicate the vhost-user socket"))?;
        let mut fe = Frontend::from_stream(sock, NUM_QUEUES as u64);

        let offered = fe.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let required = (1u64 << VIRTIO_F_VERSION_1) | opts.required_features;
        if offered & required != required {
            return Err(TransportError::NoDevice(format!(
                "{path}: the device lacks feature bits {:#x} (it offers {offered:#x})",
                required & !offered
            )));
        }
        let protocol_features = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let acked = required | (offered & (opts.optional_features | protocol_features));
        let mut config = None;
        let mut want_config = false;
        if offered & protocol_features != 0 {
            let pf = fe.get_protocol_features().map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            let ack = pf & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK);
            fe.set_protocol_features(ack).map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
            if ack.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every later message is acknowledged once the backend has
                // acted on it, so the queues are live before the first kick.
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            want_config = ack.contains(VhostUserProtocolFeatures::CONFIG);
        }
        fe.set_owner().map_err(vhost_err("SET_OWNER"))?;
        if want_config {
            let size = core::mem::size_of::<Config>();
            let (_, bytes) = fe
                .get_config(0, size as u32, VhostUserConfigFlags::empty(), &vec![0u8; size])
                .map_err(vhost_err("GET_CONFIG"))?;
            config = Some(
                Config::read_from_bytes(&bytes)
                    .map_err(|_| TransportError::Protocol("config space of the wrong size".into()))?,
            );
        }
        if let Some(display) = &opts.display {
            // VHOST_USER_GPU_SET_SOCKET: a bare header (request, version 1,
            // no payload) carrying the socket. No reply is asked for.
            let mut msg = [0u8; 12];
            msg[0..4].copy_from_slice(&u32::from(FrontendReq::GPU_SET_SOCKET).to_le_bytes());
            msg[4..8].copy_from_slice(&1u32.to_le_bytes());
            conn.send_with_fd(&msg[..], display.as_raw_fd()).map_err(|e| TransportError::Io {
                op: "VHOST_USER_GPU_SET_SOCKET",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
        }
        fe.set_features(acked).map_err(vhost_err("SET_FEATURES"))?;
        fe.set_mem_table(&[ram.region_info()?]).map_err(vhost_err("SET_MEM_TABLE"))?;

        let new_eventfd =
            || EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).map_err(TransportError::io("eventfd"));
        // One kick and one call per queue: the backend reads each kick
        // separately, and a shared call would wake us for cursor traffic.
        let (kick, call) = (new_eventfd()?, new_eventfd()?);
        let cursor = (new_eventfd()?, new_eventfd()?);
        let mut queues = Vec::new();
        for (q, (k, c)) in [(&kick, &call), (&cursor.0, &cursor.1)].into_iter().enumerate() {
            let layout = Layout::new(RING_BASE[q], QUEUE_SIZE);
            let vq = SplitQueue::new(&ram, layout)?;
            let addr = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: ram.host_ptr(layout.desc)? as u64,
                used_ring_addr: ram.host_ptr(layout.used)? as u64,
                avail_ring_addr: ram.host_ptr(layout.avail)? as u64,
                log_addr: None,
            };
            fe.set_vring_num(q, QUEUE_SIZE).map_err(vhost_err("SET_VRING_NUM"))?;
            fe.set_vring_base(q, 0).map_err(vhost_err("SET_VRING_BASE"))?;
            fe.set_vring_addr(q, &addr).map_err(vhost_err("SET_VRING_ADDR"))?;
            fe.set_vring_kick(q, k).map_err(vhost_err("SET_VRING_KICK"))?;
            fe.set_vring_call(q, c).map_err(vhost_err("SET_VRING_CALL"))?;
            queues.push(vq);
        }
        if acked & protocol_features != 0 {
            // With protocol features, rings start disabled.
            for q in 0..NUM_QUEUES {
                fe.set_vring_enable(q, true).map_err(vhost_err("SET_VRING_ENABLE"))?;
            }
        }
        let vq = queues.swap_remove(CTRL);
        let ctrl_layout = vq.layout();
        Ok(DirectDevice {
            _frontend: fe,
            conn,
            ctrl_layout,
            ctrl: Mutex::new(Ctrl {
                pending: (0..QUEUE_SIZE).map(|_| None).collect(),
                vq,
                arena: Arena::new(ARENA_BASE, ARENA_BYTES),
                in_flight: BTreeSet::new(),
                next_seq: 0,
                completed: 0,
                replies: HashMap::new(),
                abandoned: HashSet::new(),
                rejected: None,
                broken: None,
                poller: false,
            }),
            progress: Condvar::new(),
            heap: Mutex::new(Heap::new(HEAP_BASE, ram.len() - HEAP_BASE)),
            ram,
            kick,
            call,
            _cursor: cursor,
            features: acked,
            config,
            spin: opts.spin,
        })
    }

    /// The virtio feature bits this driver acknowledged.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The device's config space, if the backend exposes it (CONFIG).
    pub fn config(&self) -> Option<Config> {
        self.config
    }

    /// Carves `len` bytes (rounded up to pages) aligned to `align` out of the
    /// memfd.
    pub fn alloc(&self, len: u64, align: u64) -> Result<Region, TransportError> {
        let too_big = || TransportError::OutOfMemory(usize::try_from(len).unwrap_or(usize::MAX));
        let (offset, len) = self.lock_heap().alloc(len, align).ok_or_else(too_big)?;
        match self.ram.host_ptr(offset) {
            Ok(ptr) => Ok(Region { offset, len, gpa: self.ram.gpa(offset), ptr }),
            Err(e) => {
                self.lock_heap().release(offset);
                Err(e)
            }
        }
    }

    /// Gives a region back; false if `offset` is not a live allocation.
    pub fn free(&self, offset: u64) -> bool {
        self.lock_heap().release(offset)
    }

    /// The length of the live allocation at `offset`.
    pub fn allocated_len(&self, offset: u64) -> Option<u64> {
        self.lock_heap().len_of(offset)
    }

    /// Sends a request and waits for its response; returns the bytes the
    /// device wrote (at most `resp_cap`).
    pub fn request(&self, hdr: &CtrlHdr, body: &[u8], resp_cap: usize) -> Result<Vec<u8>, TransportError> {
        self.request_within(hdr, body, resp_cap, None)
    }

    /// As `request`, giving up after `timeout`.
    pub fn request_within(
        &self,
        hdr: &CtrlHdr,
        body: &[u8],
        resp_cap: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, TransportError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let resp_cap = u32::try_from(resp_cap.max(HDR)).map_err(|_| TransportError::OutOfMemory(resp_cap))?;
        let (st, seq) = self.enqueue(self.lock(), &[hdr.as_bytes(), body], &[], resp_cap, Reply::Keep)?;
        match self.wait_until(st, deadline, |c| c.replies.contains_key(&seq)) {
            Ok(mut st) => Ok(st.replies.remove(&seq).unwrap_or_default()),
            Err(e) => {
                let mut st = self.lock();
                if st.replies.remove(&seq).is_none() {
                    st.abandoned.insert(seq);
                }
                Err(e)
            }
        }
    }

    /// Sends a command of type `ty` and checks that its response is of type
    /// `want`: an error response is `Rejected`, anything else a protocol
    /// error.
    pub fn command(
        &self,
        ty: u32,
        ctx_id: u32,
        body: &[u8],
        want: u32,
        resp_cap: usize,
    ) -> Result<Vec<u8>, TransportError> {
        let hdr = CtrlHdr { type_: U32::new(ty), ctx_id: U32::new(ctx_id), ..Default::default() };
        let resp = self.request(&hdr, body, resp_cap)?;
        check_response(ty, &resp, want)?;
        Ok(resp)
    }

    /// Queues a request nobody waits for: `hdr` and `body`, then `payload`
    /// (copied into the memfd). Returns once it is published; its response
    /// is checked when it comes back, and a rejection is reported by the
    /// next `wait_idle`. Waits only while the queue or the arena is full.
    pub fn post(&self, hdr: &CtrlHdr, body: &[u8], payload: &[u8], what: &'static str) -> Result<(), TransportError> {
        let reply = Reply::Check { what, want: RESP_OK_NODATA };
        self.enqueue(self.lock(), &[hdr.as_bytes(), body], payload, HEADER_RESPONSE, reply).map(|_| ())
    }

    /// Returns when every request queued before the call has come back;
    /// `Rejected` if an unwaited one was refused since the last call.
    pub fn wait_idle(&self) -> Result<(), TransportError> {
        let st = self.lock();
        let target = st.next_seq;
        let mut st = self.wait_until(st, None, |c| c.in_flight.first().is_none_or(|&s| s >= target))?;
        match st.rejected.take() {
            Some((what, code)) => {
                crate::log::warn(&format!("the backend answered a {what} with error {code:#x}"));
                Err(TransportError::Rejected(what))
            }
            None => Ok(()),
        }
    }

    /// `wait_idle` until `deadline`: `Ok(false)` when requests were still
    /// out then.
    pub fn wait_idle_within(&self, deadline: Instant) -> Result<bool, TransportError> {
        let st = self.lock();
        let target = st.next_seq;
        match self.wait_until(st, Some(deadline), |c| c.in_flight.first().is_none_or(|&s| s >= target)) {
            Ok(mut st) => match st.rejected.take() {
                Some((what, code)) => {
                    crate::log::warn(&format!("the backend answered a {what} with error {code:#x}"));
                    Err(TransportError::Rejected(what))
                }
                None => Ok(true),
            },
            Err(TransportError::Io { source, .. }) if source.kind() == std::io::ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ctrl> {
        self.ctrl.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_heap(&self) -> MutexGuard<'_, Heap> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies a request into the arena (and an oversized payload into the
    /// heap), links its descriptors and publishes it. Waits for completions
    /// while there is no room.
    fn enqueue<'a>(
        &'a self,
        mut st: MutexGuard<'a, Ctrl>,
        cmd: &[&[u8]],
        payload: &[u8],
        resp_cap: u32,
        reply: Reply,
    ) -> Result<(MutexGuard<'a, Ctrl>, u64), TransportError> {
        let cmd_len: u64 = cmd.iter().map(|c| c.len() as u64).sum();
        let payload_len = payload.len() as u64;
        let payload_len32 = u32::try_from(payload.len()).map_err(|_| TransportError::OutOfMemory(payload.len()))?;
        let inline_len = cmd_len + payload_len;
        // A payload travels in the command's own area when both fit the
        // arena; a larger one gets a heap range and a descriptor of its own.
        let inline = align(inline_len) + resp_cap as u64 <= st.arena.capacity();
        let readable = if inline { inline_len } else { cmd_len };
        let area_len = align(readable) + resp_cap as u64;
        let ndesc = if inline { 2 } else { 3 };
        let (area, off, payload_at) = loop {
            if let Some(b) = &st.broken {
                return Err(TransportError::Protocol(b.clone()));
            }
            if st.vq.has_room(ndesc) {
                if let Some((area, off)) = st.arena.alloc(area_len) {
                    if inline {
                        break (area, off, None);
                    }
                    if let Some((p, _)) = self.lock_heap().alloc(payload_len, 4096) {
                        break (area, off, Some(p));
                    }
                    st.arena.release(area);
                }
            }
            if st.vq.in_flight() == 0 {
                // Nothing will come back to make room.
                return Err(TransportError::OutOfMemory(payload.len()));
            }
            let seen = st.completed;
            st = self.wait_until(st, None, |c| c.completed != seen)?;
        };
        let written = (|| {
            let mut at = off;
            for part in cmd {
                self.ram.write(at, part)?;
                at += part.len() as u64;
            }
            match payload_at {
                None => self.ram.write(at, payload),
                Some(p) => self.ram.write(p, payload),
            }
        })();
        let resp = off + align(readable);
        let mut bufs = vec![Buf { gpa: self.ram.gpa(off), len: readable as u32, device_writes: false }];
        if let Some(p) = payload_at {
            bufs.push(Buf { gpa: self.ram.gpa(p), len: payload_len32, device_writes: false });
        }
        bufs.push(Buf { gpa: self.ram.gpa(resp), len: resp_cap, device_writes: true });
        let added = written.and_then(|()| st.vq.add(&self.ram, &bufs));
        let head = match added {
            Ok(Some(head)) => head,
            other => {
                st.arena.release(area);
                if let Some(p) = payload_at {
                    self.lock_heap().release(p);
                }
                return Err(other
                    .err()
                    .unwrap_or_else(|| TransportError::Protocol("no free descriptors after all".into())));
            }
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        st.in_flight.insert(seq);
        st.pending[head as usize] = Some(Pending { seq, area, payload: payload_at, resp, reply });
        if st.vq.needs_kick(&self.ram) {
            self.kick.write(1).map_err(TransportError::io("kick the control queue"))?;
        }
        Ok((st, seq))
    }

    /// Collects completed requests from the used ring.
    fn reap(&self, st: &mut Ctrl) -> Result<(), TransportError> {
        if let Some(b) = &st.broken {
            return Err(TransportError::Protocol(b.clone()));
        }
        let mut progressed = false;
        let result = loop {
            let c = match st.vq.pop_used(&self.ram) {
                Ok(Some(c)) => c,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let Some(p) = st.pending.get_mut(c.head as usize).and_then(Option::take) else {
                break Err(TransportError::Protocol(format!(
                    "descriptor {} completed with no request behind it",
                    c.head
                )));
            };
            progressed = true;
            st.arena.release(p.area);
            if let Some(off) = p.payload {
                self.lock_heap().release(off);
            }
            st.in_flight.remove(&p.seq);
            st.completed += 1;
            match p.reply {
                Reply::Keep => {
                    let mut bytes = vec![0u8; c.len as usize];
                    if let Err(e) = self.ram.read(p.resp, &mut bytes) {
                        break Err(e);
                    }
                    if !st.abandoned.remove(&p.seq) {
                        st.replies.insert(p.seq, bytes);
                    }
                }
                Reply::Check { what, want } => {
                    let mut ty = [0u8; 4];
                    if c.len as usize >= HDR {
                        if let Err(e) = self.ram.read(p.resp, &mut ty) {
                            break Err(e);
                        }
                    }
                    let ty = u32::from_le_bytes(ty);
                    if ty != want && st.rejected.is_none() {
                        st.rejected = Some((what, ty));
                    }
                }
            }
        };
        if progressed {
            self.progress.notify_all();
        }
        if let Err(e) = &result {
            st.broken = Some(e.to_string());
            self.progress.notify_all();
        }
        result
    }

    /// Waits until `done` holds: spins on the used index for `spin`, then
    /// sleeps on the call eventfd (one thread at a time; others on the
    /// condvar). A hang-up of the backend ends the wait with an error.
    fn wait_until<'a>(
        &'a self,
        mut st: MutexGuard<'a, Ctrl>,
        deadline: Option<Instant>,
        mut done: impl FnMut(&Ctrl) -> bool,
    ) -> Result<MutexGuard<'a, Ctrl>, TransportError> {
        let spin_until = Instant::now() + self.spin;
        loop {
            self.reap(&mut st)?;
            if done(&st) {
                return Ok(st);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(TransportError::Io {
                    op: "wait for the backend",
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
            if now < spin_until {
                let seen = st.vq.last_used();
                drop(st);
                while self.ctrl_layout.used_idx(&self.ram) == Some(seen) && Instant::now() < spin_until {
                    std::hint::spin_loop();
                }
                st = self.lock();
                continue;
            }
            if st.poller {
                st = match self.progress.wait_timeout(st, Duration::from_millis(10)) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
                continue;
            }
            st.poller = true;
            drop(st);
            let slice = deadline.map_or(BLOCK_SLICE, |d| d.saturating_duration_since(now).min(BLOCK_SLICE));
            let hung_up = self.block(slice);
            st = self.lock();
            st.poller = false;
            self.progress.notify_all();
            match hung_up {
                Ok(false) => {}
                Ok(true) => {
                    // Whatever the backend finished before it went counts.
                    self.reap(&mut st)?;
                    if done(&st) {
                        return Ok(st);
                    }
                    let msg = "the backend closed the vhost-user connection";
                    st.broken = Some(msg.into());
                    self.progress.notify_all();
                    return Err(TransportError::Io {
                        op: "wait for the backend",
                        source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, msg),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sleeps until the backend signals the control queue's call eventfd,
    /// hangs up, or `timeout` passes. Returns whether it hung up.
    fn block(&self, timeout: Duration) -> Result<bool, TransportError> {
        let mut fds = [
            libc::pollfd { fd: self.call.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.conn.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 },
        ];
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: two initialised pollfds that outlive the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(TransportError::Io { op: "poll the call eventfd", source: e })
            };
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // Non-blocking: another signal may already have been consumed.
            let _ = self.call.read();
        }
        Ok(fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
    }
}

/// Checks a response's type: `want`, or `Rejected` for an error type.
pub fn check_response(ty: u32, resp: &[u8], want: u32) -> Result<(), TransportError> {
    let name = cmd_name(ty);
    let Ok((hdr, _)) = CtrlHdr::read_from_prefix(resp) else {
        return Err(TransportError::Protocol(format!("{name}: a {}-byte response", resp.len())));
    };
    match hdr.type_.get() {
        t if t == want => Ok(()),
        t if t >= RESP_ERR_UNSPEC => {
            crate::log::debug(&format!("the backend answered {name} with error {t:#x}"));
            Err(TransportError::Rejected(name))
        }
        t => Err(TransportError::Protocol(format!("{name} answered {t:#x}, expected {want:#x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference_backend::{
        percentiles, round_trips, FakeDisplay, ReferenceBackend, DISPLAY_HEIGHT, DISPLAY_WIDTH,
    };
    use super::*;
    use std::sync::atomic::Ordering;
    use zerocopy::little_endian::U64;

    /// B8G8R8A8_UNORM, a format QEMU's 2D backend takes.
    const FORMAT_BGRA: u32 = 1;

    fn connect(b: &ReferenceBackend, spin: Duration) -> (DirectDevice, FakeDisplay) {
        let (display, end) = FakeDisplay::start();
        let opts = DeviceOptions {
            mem_bytes: MIN_MEM_BYTES,
            optional_features: 1 << F_EDID,
            spin,
            display: Some(end),
            ..Default::default()
        };
        (DirectDevice::connect(b.path(), opts).expect("vhost-user handshake"), display)
    }

    fn hdr(ty: u32) -> CtrlHdr {
        CtrlHdr { type_: U32::new(ty), ..Default::default() }
    }

    fn create_2d(dev: &DirectDevice, id: u32, w: u32, h: u32) {
        let c = ResourceCreate2d {
            resource_id: U32::new(id),
            format: U32::new(FORMAT_BGRA),
            width: U32::new(w),
            height: U32::new(h),
        };
        dev.command(CMD_RESOURCE_CREATE_2D, 0, c.as_bytes(), RESP_OK_NODATA, HDR).expect("RESOURCE_CREATE_2D");
    }

    fn rect(w: u32, h: u32) -> Rect {
        Rect { x: U32::new(0), y: U32::new(0), width: U32::new(w), height: U32::new(h) }
    }

    #[test]
    fn handshake_then_display_info_comes_back_through_the_control_queue() {
        let Some(b) = ReferenceBackend::spawn("handshake_then_display_info") else {
            return;
        };
        let (dev, _display) = connect(&b, Duration::from_micros(50));
        assert_ne!(dev.features() & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(dev.features() & (1 << F_EDID), 0, "EDID is acknowledged when offered");
        assert_eq!(dev.features() & (1 << F_VIRGL), 0, "VIRGL is not offered without --virgl");
        // QEMU fills in num_scanouts itself; its backend says only that it
        // has no capsets without virgl.
        let config = dev.config().expect("QEMU's backend has a config space");
        assert_eq!(config.num_capsets.get(), 0);
        let r = dev
            .command(CMD_GET_DISPLAY_INFO, 0, &[], RESP_OK_DISPLAY_INFO, core::mem::size_of::<RespDisplayInfo>())
            .unwrap();
        let info = RespDisplayInfo::read_from_bytes(&r).expect("a whole RespDisplayInfo");
        assert_eq!((info.pmodes[0].r.width.get(), info.pmodes[0].r.height.get()), (DISPLAY_WIDTH, DISPLAY_HEIGHT));
        assert_eq!(info.pmodes[0].enabled.get(), 1);
    }

    #[test]
    fn a_resource_backed_by_our_memory_shows_our_pixels() {
        let Some(b) = ReferenceBackend::spawn("a_resource_backed_by_our_memory_shows_our_pixels") else {
            return;
        };
        let (dev, display) = connect(&b, Duration::from_micros(50));
        let (w, h) = (64u32, 48u32);
        create_2d(&dev, 7, w, h);
        let region = dev.alloc((w * h * 4) as u64, 4096).unwrap();
        let pixels: Vec<u8> = (0..w * h * 4).map(|i| (i * 7 % 251) as u8).collect();
        // SAFETY: the region is ours, mapped, and at least this long.
        unsafe { std::ptr::copy_nonoverlapping(pixels.as_ptr(), region.ptr, pixels.len()) };
        let mut body = ResourceAttachBacking { resource_id: U32::new(7), nr_entries: U32::new(1) }.as_bytes().to_vec();
        body.extend_from_slice(
            MemEntry { addr: U64::new(region.gpa), length: U32::new(w * h * 4), padding: U32::new(0) }.as_bytes(),
        );
        dev.command(CMD_RESOURCE_ATTACH_BACKING, 0, &body, RESP_OK_NODATA, HDR).unwrap();
        let t = TransferToHost2d { r: rect(w, h), offset: U64::new(0), resource_id: U32::new(7), padding: U32::new(0) };
        dev.command(CMD_TRANSFER_TO_HOST_2D, 0, t.as_bytes(), RESP_OK_NODATA, HDR).unwrap();
        let s = SetScanout { r: rect(w, h), scanout_id: U32::new(0), resource_id: U32::new(7) };
        dev.command(CMD_SET_SCANOUT, 0, s.as_bytes(), RESP_OK_NODATA, HDR).unwrap();
        let f = ResourceFlush { r: rect(w, h), resource_id: U32::new(7), padding: U32::new(0) };
        dev.command(CMD_RESOURCE_FLUSH, 0, f.as_bytes(), RESP_OK_NODATA, HDR).unwrap();
        // The backend copied the pixels out of the memfd by guest-physical
        // address and sent them to the display.
        let (fw, fh, got) = display.frames.recv_timeout(Duration::from_secs(5)).expect("a frame on the display socket");
        assert_eq!((fw, fh), (w, h));
        assert!(got == pixels, "the display shows what we wrote into guest memory");
        let d = ResourceDetachBacking { resource_id: U32::new(7), padding: U32::new(0) };
        dev.command(CMD_RESOURCE_DETACH_BACKING, 0, d.as_bytes(), RESP_OK_NODATA, HDR).unwrap();
        let u = ResourceUnref { resource_id: U32::new(7), padding: U32::new(0) };
        dev.command(CMD_RESOURCE_UNREF, 0, u.as_bytes(), RESP_OK_NODATA, HDR).unwrap();
        assert!(dev.free(region.offset));
        // Its id is gone now: the backend's error comes back as Rejected.
        match dev.command(CMD_RESOURCE_UNREF, 0, u.as_bytes(), RESP_OK_NODATA, HDR) {
            Err(TransportError::Rejected("RESOURCE_UNREF")) => {}
            other => panic!("expected the backend to reject a second unref, got {other:?}"),
        }
    }

    #[test]
    fn unwaited_requests_wrap_the_rings_and_rejections_surface_in_wait_idle() {
        let Some(b) = ReferenceBackend::spawn("unwaited_requests_wrap_the_rings") else {
            return;
        };
        let (dev, _display) = connect(&b, Duration::from_micros(50));
        create_2d(&dev, 1, 16, 16);
        let flush = ResourceFlush { r: rect(16, 16), resource_id: U32::new(1), padding: U32::new(0) };
        // Trailing bytes ride along (the device reads only the command), so
        // the arena wraps several times; every 500th carries more than the
        // arena holds and goes through the heap.
        let small = vec![0x5au8; 16 << 10];
        let big = vec![0xa5u8; (ARENA_BYTES + (1 << 20)) as usize];
        for i in 0..3000 {
            let payload = if i % 500 == 499 { &big[..] } else { &small[..] };
            dev.post(&hdr(CMD_RESOURCE_FLUSH), flush.as_bytes(), payload, "RESOURCE_FLUSH").unwrap();
        }
        dev.wait_idle().expect("3000 flushes of a live resource all succeed");
        assert_eq!(dev.lock().completed, 3000 + 1);
        let unref = ResourceUnref { resource_id: U32::new(99), padding: U32::new(0) };
        dev.post(&hdr(CMD_RESOURCE_UNREF), unref.as_bytes(), &[], "RESOURCE_UNREF").unwrap();
        dev.post(&hdr(CMD_RESOURCE_FLUSH), flush.as_bytes(), &[], "RESOURCE_FLUSH").unwrap();
        assert!(matches!(dev.wait_idle(), Err(TransportError::Rejected("RESOURCE_UNREF"))));
        assert!(dev.wait_idle().is_ok(), "reported once");
        // Everything came back: the heap is whole again.
        let all = dev.alloc(MIN_MEM_BYTES - HEAP_BASE, 4096).expect("the whole heap");
        assert!(dev.free(all.offset));
    }

    #[test]
    fn a_backend_that_dies_mid_request_ends_the_wait_with_an_error() {
        let Some(mut b) = ReferenceBackend::spawn("a_backend_that_dies_mid_request") else {
            return;
        };
        let (dev, display) = connect(&b, Duration::from_micros(50));
        // The display never answers, so the backend holds the request.
        display.mute.store(true, Ordering::Relaxed);
        dev.post(&hdr(CMD_GET_DISPLAY_INFO), &[], &[], "GET_DISPLAY_INFO").unwrap();
        let start = Instant::now();
        let r = std::thread::scope(|s| {
            let waiter = s.spawn(|| dev.wait_idle());
            std::thread::sleep(Duration::from_millis(300));
            assert!(!waiter.is_finished(), "the request is still in flight");
            b.kill();
            waiter.join().unwrap()
        });
        assert!(matches!(r, Err(TransportError::Io { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(3), "noticed within one poll, not a timeout");
        assert!(dev.request(&hdr(CMD_GET_DISPLAY_INFO), &[], 512).is_err(), "a dead device stays dead");
    }

    #[test]
    fn threads_share_the_queue() {
        let Some(b) = ReferenceBackend::spawn("threads_share_the_queue") else {
            return;
        };
        let (dev, _display) = connect(&b, Duration::from_micros(20));
        create_2d(&dev, 1, 16, 16);
        let flush = ResourceFlush { r: rect(16, 16), resource_id: U32::new(1), padding: U32::new(0) };
        std::thread::scope(|s| {
            for t in 0..4 {
                let (dev, flush) = (&dev, &flush);
                s.spawn(move || {
                    for i in 0..500 {
                        if (i + t) % 3 == 0 {
                            dev.command(CMD_RESOURCE_FLUSH, 0, flush.as_bytes(), RESP_OK_NODATA, HDR).unwrap();
                        } else {
                            dev.post(&hdr(CMD_RESOURCE_FLUSH), flush.as_bytes(), &[], "RESOURCE_FLUSH").unwrap();
                        }
                        if i % 100 == 99 {
                            dev.wait_idle().unwrap();
                        }
                    }
                });
            }
        });
        dev.wait_idle().unwrap();
        assert_eq!(dev.lock().completed, 2000 + 1);
    }

    /// Round trip of a trivial request, spin-then-block against block-only.
    /// Run with `--release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn round_trip_time() {
        for spin in [Duration::from_micros(50), Duration::ZERO] {
            // QEMU's backend serves one connection, then exits.
            let Some(b) = ReferenceBackend::spawn("round_trip_time") else {
                return;
            };
            let (dev, _display) = connect(&b, spin);
            create_2d(&dev, 1, 16, 16);
            let flush = ResourceFlush { r: rect(16, 16), resource_id: U32::new(1), padding: U32::new(0) };
            let t = round_trips(&dev, &hdr(CMD_RESOURCE_FLUSH), flush.as_bytes(), HDR, 20000);
            println!("QEMU vhost-user-gpu, spin {spin:?}: RESOURCE_FLUSH {}", percentiles(&t));
            let t = round_trips(&dev, &hdr(CMD_GET_DISPLAY_INFO), &[], core::mem::size_of::<RespDisplayInfo>(), 5000);
            println!(
                "QEMU vhost-user-gpu, spin {spin:?}: GET_DISPLAY_INFO (via its display socket) {}",
                percentiles(&t)
            );
        }
    }
}
