//! vhost-user direct: this process is its own virtio-gpu driver on the
//! backend's vhost-user socket. A memfd plays guest RAM: it holds the split
//! virtqueues, the request slots, the batches in flight and every shared
//! buffer, and the backend maps it through SET_MEM_TABLE. The backend sees
//! the same virtio-gpu commands the Linux driver sends from inside a VM.

use super::{SharedBuf, Transport, TransportError};
use protocol::virtio_gpu::*;
use protocol::{CAPSET_ID, CAPSET_VERSION};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Guest-physical address the memfd is placed at.
const GPA_BASE: u64 = 0x1_0000_0000;
const QUEUE_SIZE: u16 = 1024;
/// Descriptors per request: command, optional payload, response.
const DESCS_PER_SLOT: u16 = 3;
const SLOTS: usize = (QUEUE_SIZE / DESCS_PER_SLOT) as usize;
const SLOT_BYTES: u64 = 4096;
/// Response half of a slot.
const RESP_OFFSET: u64 = 2048;
/// Layout of the memfd's head: two rings, then the request slots.
const RING_BYTES: u64 = 64 << 10;
const SLOTS_OFFSET: u64 = 2 * RING_BYTES;
const HEAP_OFFSET: u64 = SLOTS_OFFSET + SLOTS as u64 * SLOT_BYTES;
const DESC_BYTES: u64 = 16 * QUEUE_SIZE as u64;
const AVAIL_OFFSET: u64 = DESC_BYTES;
const USED_OFFSET: u64 = DESC_BYTES + 8192;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// How long `wait_idle` spins before it sleeps on the call eventfd.
const SPIN: Duration = Duration::from_micros(50);
const CTX_ID: u32 = 1;

/// The memfd mapping.
struct Memory {
    fd: OwnedFd,
    base: *mut u8,
    len: u64,
}

// SAFETY: the mapping is shared memory whose accesses are synchronised by the
// queue protocol (and the Mutex around the queue state).
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Memory {
    fn new(len: u64) -> Result<Memory, TransportError> {
        // SAFETY: a static NUL-terminated name and plain flags.
        let raw = unsafe { libc::memfd_create(c"gpuvisor-direct".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(TransportError::Io { op: "memfd_create", source: std::io::Error::last_os_error() });
        }
        // SAFETY: `raw` is a descriptor we just created and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: resizing our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(TransportError::Io { op: "ftruncate memfd", source: std::io::Error::last_os_error() });
        }
        // SAFETY: mapping the whole memfd shared; checked for failure below.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
        };
        if base == libc::MAP_FAILED {
            return Err(TransportError::Io { op: "mmap memfd", source: std::io::Error::last_os_error() });
        }
        Ok(Memory { fd, base: base as *mut u8, len })
    }

    fn ptr(&self, off: u64) -> *mut u8 {
        debug_assert!(off < self.len);
        // SAFETY: offsets come from our own layout, all inside the mapping.
        unsafe { self.base.add(off as usize) }
    }

    fn write(&self, off: u64, bytes: &[u8]) {
        assert!(off + bytes.len() as u64 <= self.len);
        // SAFETY: bounds checked above; the backend does not touch this range
        // until we publish it in the avail ring.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(off), bytes.len()) };
    }

    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        assert!(off + len as u64 <= self.len);
        let mut v = vec![0u8; len];
        // SAFETY: bounds checked above; the backend finished with this range
        // (its descriptor came back in the used ring).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(off), v.as_mut_ptr(), len) };
        v
    }

    fn atomic_u16(&self, off: u64) -> &AtomicU16 {
        assert!(off % 2 == 0 && off + 2 <= self.len);
        // SAFETY: aligned, inside the mapping, and shared with the backend
        // only through atomic accesses.
        unsafe { &*(self.ptr(off) as *const AtomicU16) }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len as usize) };
    }
}

/// First-fit allocator over the memfd's heap.
struct Heap {
    free: BTreeMap<u64, u64>,
}

impl Heap {
    fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let (start, size, at) = self.free.iter().find_map(|(&s, &n)| {
            let at = s.next_multiple_of(align);
            (at + len <= s + n).then_some((s, n, at))
        })?;
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        if at + len < start + size {
            self.free.insert(at + len, start + size - at - len);
        }
        Some(at)
    }

    fn release(&mut self, off: u64, len: u64) {
        let (mut start, mut size) = (off, len);
        if let Some((&s, &n)) = self.free.range(..off).next_back() {
            if s + n == off {
                self.free.remove(&s);
                start = s;
                size += n;
            }
        }
        if let Some(&n) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            size += n;
        }
        self.free.insert(start, size);
    }
}

#[derive(Clone, Copy)]
struct InFlight {
    /// Heap range holding a batch payload, freed on completion.
    payload: Option<(u64, u64)>,
}

struct Queue {
    avail_idx: u16,
    last_used: u16,
    free_slots: Vec<usize>,
    in_flight: Vec<Option<InFlight>>,
    heap: Heap,
    /// First error response since the last `wait_idle`.
    failed: Option<u32>,
}

pub struct DirectTransport {
    frontend: Mutex<Frontend>,
    mem: Memory,
    q: Mutex<Queue>,
    kick: EventFd,
    call: EventFd,
    /// The cursor queue's eventfds; the queue is set up but never used.
    _cursor: (EventFd, EventFd),
    capset: Vec<u8>,
    next_resource: AtomicU32,
    next_fence: AtomicU64,
}

fn vhost_err(op: &'static str) -> impl FnOnce(vhost::Error) -> TransportError {
    move |e| TransportError::Io { op, source: std::io::Error::other(e.to_string()) }
}

impl DirectTransport {
    /// Connects to a gpuvisor-backend socket and brings the device up as the
    /// Linux virtio-gpu driver would.
    pub fn connect(socket: &str) -> Result<DirectTransport, TransportError> {
        let mib: u64 = std::env::var("GPUVISOR_DIRECT_MEM_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
        let mem = Memory::new(mib.max(64) << 20)?;
        let mut fe = Frontend::connect(socket, 2).map_err(vhost_err("connect to the backend socket"))?;
        fe.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let virgl = 1u64 << F_VIRGL;
        if offered & VIRTIO_F_VERSION_1 == 0 || offered & virgl == 0 {
            return Err(TransportError::NoDevice(format!("{socket}: device offers no 3D contexts ({offered:#x})")));
        }
        let acked = VIRTIO_F_VERSION_1 | virgl | (offered & VHOST_USER_F_PROTOCOL_FEATURES);
        fe.set_features(acked).map_err(vhost_err("SET_FEATURES"))?;
        if offered & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(TransportError::NoDevice(format!("{socket}: backend speaks no vhost-user protocol features")));
        }
        let pf = fe.get_protocol_features().map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
        if !pf.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(TransportError::NoDevice(format!("{socket}: backend has no config space")));
        }
        fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG).map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
        let size = core::mem::size_of::<Config>() as u32;
        let (_, cfg) = fe
            .get_config(0, size, VhostUserConfigFlags::WRITABLE, &vec![0u8; size as usize])
            .map_err(vhost_err("GET_CONFIG"))?;
        let config = Config::read_from_bytes(&cfg).map_err(|_| TransportError::Protocol("short config space".into()))?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: GPA_BASE,
            memory_size: mem.len,
            userspace_addr: mem.base as u64,
            mmap_offset: 0,
            mmap_handle: mem.fd.as_raw_fd(),
        };
        fe.set_mem_table(&[region]).map_err(vhost_err("SET_MEM_TABLE"))?;
        // One kick and one call eventfd per queue: the backend reads each
        // queue's kick separately, and a shared one would be read twice.
        let mut fds = Vec::new();
        for _ in 0..4 {
            fds.push(EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).map_err(TransportError::io("eventfd"))?);
        }
        let (kick, call) = (fds.remove(0), fds.remove(0));
        let (cursor_kick, cursor_call) = (fds.remove(0), fds.remove(0));
        for q in 0..2usize {
            let (kick, call) = if q == 0 { (&kick, &call) } else { (&cursor_kick, &cursor_call) };
            let ring = mem.base as u64 + q as u64 * RING_BYTES;
            let cfg = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: ring,
                used_ring_addr: ring + USED_OFFSET,
                avail_ring_addr: ring + AVAIL_OFFSET,
                log_addr: None,
            };
            fe.set_vring_num(q, QUEUE_SIZE).map_err(vhost_err("SET_VRING_NUM"))?;
            fe.set_vring_addr(q, &cfg).map_err(vhost_err("SET_VRING_ADDR"))?;
            fe.set_vring_base(q, 0).map_err(vhost_err("SET_VRING_BASE"))?;
            fe.set_vring_call(q, call).map_err(vhost_err("SET_VRING_CALL"))?;
            fe.set_vring_kick(q, kick).map_err(vhost_err("SET_VRING_KICK"))?;
            fe.set_vring_enable(q, true).map_err(vhost_err("SET_VRING_ENABLE"))?;
        }
        let mut heap = Heap { free: BTreeMap::new() };
        heap.free.insert(HEAP_OFFSET, mem.len - HEAP_OFFSET);
        let mut t = DirectTransport {
            frontend: Mutex::new(fe),
            mem,
            q: Mutex::new(Queue {
                avail_idx: 0,
                last_used: 0,
                free_slots: (0..SLOTS).rev().collect(),
                in_flight: vec![None; SLOTS],
                heap,
                failed: None,
            }),
            kick,
            call,
            _cursor: (cursor_kick, cursor_call),
            capset: Vec::new(),
            next_resource: AtomicU32::new(1),
            next_fence: AtomicU64::new(1),
        };
        t.capset = t.find_capset(config.num_capsets.get())?;
        let name = b"gpuvisor-direct";
        let mut c = CtxCreate { nlen: U32::new(name.len() as u32), ..Default::default() };
        c.debug_name[..name.len()].copy_from_slice(name);
        t.command(CMD_CTX_CREATE, CTX_ID, c.as_bytes(), RESP_OK_NODATA)?;
        Ok(t)
    }

    fn find_capset(&self, num_capsets: u32) -> Result<Vec<u8>, TransportError> {
        for i in 0..num_capsets.min(16) {
            let info = GetCapsetInfo { capset_index: U32::new(i), padding: U32::new(0) };
            let r = self.command(CMD_GET_CAPSET_INFO, 0, info.as_bytes(), RESP_OK_CAPSET_INFO)?;
            let r = RespCapsetInfo::read_from_prefix(&r).map_err(|_| TransportError::Protocol("short capset info".into()))?.0;
            if r.capset_id.get() != CAPSET_ID {
                continue;
            }
            let get = GetCapset { capset_id: U32::new(CAPSET_ID), capset_version: U32::new(CAPSET_VERSION) };
            let resp = self.command(CMD_GET_CAPSET, 0, get.as_bytes(), RESP_OK_CAPSET)?;
            let hdr = core::mem::size_of::<CtrlHdr>();
            let end = (hdr + r.capset_max_size.get() as usize).min(resp.len());
            return Ok(resp[hdr..end].to_vec());
        }
        Err(TransportError::NoDevice("the device offers no gpuvisor capset".into()))
    }

    fn slot_off(slot: usize) -> u64 {
        SLOTS_OFFSET + slot as u64 * SLOT_BYTES
    }

    /// Writes a descriptor of queue 0.
    fn set_desc(&self, idx: u16, gpa: u64, len: u32, flags: u16, next: u16) {
        let off = idx as u64 * 16;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&gpa.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(off, &d);
    }

    /// Reaps finished requests from the used ring.
    fn reap(&self, q: &mut Queue) -> Result<(), TransportError> {
        let used_idx = self.mem.atomic_u16(USED_OFFSET + 2).load(Ordering::Acquire);
        while q.last_used != used_idx {
            let e = USED_OFFSET + 4 + (q.last_used % QUEUE_SIZE) as u64 * 8;
            let b = self.mem.read(e, 8);
            let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            q.last_used = q.last_used.wrapping_add(1);
            let slot = (id / DESCS_PER_SLOT as u32) as usize;
            if id % DESCS_PER_SLOT as u32 != 0 || slot >= SLOTS {
                return Err(TransportError::Protocol(format!("backend returned descriptor {id}")));
            }
            let Some(f) = q.in_flight[slot].take() else {
                return Err(TransportError::Protocol(format!("backend returned idle slot {slot} twice")));
            };
            if let Some((off, n)) = f.payload {
                q.heap.release(off, n);
            }
            if (len as usize) < core::mem::size_of::<CtrlHdr>() {
                q.failed.get_or_insert(RESP_ERR_UNSPEC);
            } else {
                let t = u32::from_le_bytes(self.mem.read(Self::slot_off(slot) + RESP_OFFSET, 4).try_into().unwrap_or([0; 4]));
                if t >= RESP_ERR_UNSPEC {
                    q.failed.get_or_insert(t);
                }
            }
            q.free_slots.push(slot);
        }
        Ok(())
    }

    /// Blocks until the backend signals the call eventfd (or a short timeout,
    /// so a missed wakeup costs little).
    fn sleep_on_call(&self) {
        let mut p = libc::pollfd { fd: self.call.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, 100) };
        if r > 0 {
            let _ = self.call.read();
        }
    }

    /// Queues one request: `cmd` (header and command), an optional heap
    /// payload, and a response buffer. Returns its slot.
    fn push(&self, q: &mut std::sync::MutexGuard<'_, Queue>, cmd: &[u8], payload: Option<(u64, u64)>) -> Result<usize, TransportError> {
        let slot = loop {
            if let Some(s) = q.free_slots.pop() {
                break s;
            }
            self.reap(q)?;
            if q.free_slots.is_empty() {
                self.sleep_on_call();
            }
        };
        let base = Self::slot_off(slot);
        assert!(cmd.len() as u64 <= RESP_OFFSET);
        self.mem.write(base, cmd);
        // Clear the response type so a short answer reads as an error.
        self.mem.write(base + RESP_OFFSET, &[0u8; 4]);
        let head = slot as u16 * DESCS_PER_SLOT;
        let resp_desc = head + 2;
        match payload {
            Some((off, n)) => {
                self.set_desc(head, GPA_BASE + base, cmd.len() as u32, VRING_DESC_F_NEXT, head + 1);
                self.set_desc(head + 1, GPA_BASE + off, n as u32, VRING_DESC_F_NEXT, resp_desc);
            }
            None => self.set_desc(head, GPA_BASE + base, cmd.len() as u32, VRING_DESC_F_NEXT, resp_desc),
        }
        self.set_desc(resp_desc, GPA_BASE + base + RESP_OFFSET, (SLOT_BYTES - RESP_OFFSET) as u32, VRING_DESC_F_WRITE, 0);
        q.in_flight[slot] = Some(InFlight { payload });
        let ring_entry = AVAIL_OFFSET + 4 + (q.avail_idx % QUEUE_SIZE) as u64 * 2;
        self.mem.write(ring_entry, &head.to_le_bytes());
        q.avail_idx = q.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        self.mem.atomic_u16(AVAIL_OFFSET + 2).store(q.avail_idx, Ordering::Release);
        fence(Ordering::SeqCst);
        self.kick.write(1).map_err(TransportError::io("kick"))?;
        Ok(slot)
    }

    /// Sends a command and waits for its response, which must be of type `want`.
    fn command(&self, ty: u32, ctx: u32, body: &[u8], want: u32) -> Result<Vec<u8>, TransportError> {
        let hdr = CtrlHdr { type_: U32::new(ty), ctx_id: U32::new(ctx), ..Default::default() };
        let mut cmd = hdr.as_bytes().to_vec();
        cmd.extend_from_slice(body);
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let slot = self.push(&mut q, &cmd, None)?;
        let start = Instant::now();
        while q.in_flight[slot].is_some() {
            let failed = q.failed;
            self.reap(&mut q)?;
            if q.in_flight[slot].is_none() {
                q.failed = failed;
                break;
            }
            if start.elapsed() > SPIN {
                self.sleep_on_call();
            }
        }
        let resp = self.mem.read(Self::slot_off(slot) + RESP_OFFSET, (SLOT_BYTES - RESP_OFFSET) as usize);
        let t = u32::from_le_bytes([resp[0], resp[1], resp[2], resp[3]]);
        if t != want {
            return Err(TransportError::Protocol(format!("virtio-gpu command {ty:#x} answered {t:#x}")));
        }
        Ok(resp)
    }
}

impl Transport for DirectTransport {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn capset(&self) -> Result<Vec<u8>, TransportError> {
        Ok(self.capset.clone())
    }

    fn alloc_shared(&self, len: usize) -> Result<SharedBuf, TransportError> {
        let size = (len.max(1) as u64).next_multiple_of(4096);
        let align = if size >= (2 << 20) { 2 << 20 } else { 4096 };
        let off = self.q.lock().unwrap_or_else(|p| p.into_inner()).heap.alloc(size, align).ok_or(TransportError::OutOfMemory(len))?;
        let id = self.next_resource.fetch_add(1, Ordering::Relaxed);
        let release = |e| {
            self.q.lock().unwrap_or_else(|p| p.into_inner()).heap.release(off, size);
            e
        };
        let create = ResourceCreate3d {
            resource_id: U32::new(id),
            target: U32::new(PIPE_BUFFER),
            format: U32::new(FORMAT_R8_UNORM),
            width: U32::new(size as u32),
            height: U32::new(1),
            depth: U32::new(1),
            array_size: U32::new(1),
            ..Default::default()
        };
        self.command(CMD_RESOURCE_CREATE_3D, CTX_ID, create.as_bytes(), RESP_OK_NODATA).map_err(release)?;
        // The backing as the kernel would describe it: entries of at most 1 GiB.
        let mut entries = Vec::new();
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(1 << 30);
            entries.extend_from_slice(MemEntry { addr: U64::new(GPA_BASE + off + at), length: U32::new(n as u32), padding: U32::new(0) }.as_bytes());
            at += n;
        }
        let attach = ResourceAttachBacking { resource_id: U32::new(id), nr_entries: U32::new((entries.len() / 16) as u32) };
        let mut body = attach.as_bytes().to_vec();
        body.extend_from_slice(&entries);
        self.command(CMD_RESOURCE_ATTACH_BACKING, CTX_ID, &body, RESP_OK_NODATA).map_err(release)?;
        let ctx_res = CtxResource { resource_id: U32::new(id), padding: U32::new(0) };
        self.command(CMD_CTX_ATTACH_RESOURCE, CTX_ID, ctx_res.as_bytes(), RESP_OK_NODATA).map_err(release)?;
        Ok(SharedBuf { resource_id: id, ptr: self.mem.ptr(off), len: size as usize, handle: off })
    }

    fn free_shared(&self, buf: &SharedBuf) {
        let ctx_res = CtxResource { resource_id: U32::new(buf.resource_id), padding: U32::new(0) };
        let _ = self.command(CMD_CTX_DETACH_RESOURCE, CTX_ID, ctx_res.as_bytes(), RESP_OK_NODATA);
        let unref = ResourceUnref { resource_id: U32::new(buf.resource_id), padding: U32::new(0) };
        let _ = self.command(CMD_RESOURCE_UNREF, CTX_ID, unref.as_bytes(), RESP_OK_NODATA);
        self.q.lock().unwrap_or_else(|p| p.into_inner()).heap.release(buf.handle, buf.len as u64);
    }

    fn submit(&self, batch: &[u8], _resources: &[&SharedBuf]) -> Result<(), TransportError> {
        let n = (batch.len() as u64).max(8).next_multiple_of(64);
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let off = loop {
            if let Some(off) = q.heap.alloc(n, 64) {
                break off;
            }
            // Wait for batches in flight to give their space back.
            if q.free_slots.len() == SLOTS {
                return Err(TransportError::OutOfMemory(batch.len()));
            }
            self.reap(&mut q)?;
            self.sleep_on_call();
        };
        self.mem.write(off, batch);
        let hdr = CtrlHdr {
            type_: U32::new(CMD_SUBMIT_3D),
            flags: U32::new(FLAG_FENCE),
            fence_id: U64::new(self.next_fence.fetch_add(1, Ordering::Relaxed)),
            ctx_id: U32::new(CTX_ID),
            ..Default::default()
        };
        let mut cmd = hdr.as_bytes().to_vec();
        cmd.extend_from_slice(CmdSubmit { size: U32::new(batch.len() as u32), padding: U32::new(0) }.as_bytes());
        self.push(&mut q, &cmd, Some((off, n)))?;
        Ok(())
    }

    fn wait_idle(&self) -> Result<(), TransportError> {
        let start = Instant::now();
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            self.reap(&mut q)?;
            if q.free_slots.len() == SLOTS {
                break;
            }
            if start.elapsed() > SPIN {
                self.sleep_on_call();
            } else {
                std::hint::spin_loop();
            }
        }
        match q.failed.take() {
            Some(t) => Err(TransportError::Protocol(format!("backend answered a submission with {t:#x}"))),
            None => Ok(()),
        }
    }
}

impl Drop for DirectTransport {
    fn drop(&mut self) {
        let _ = self.command(CMD_CTX_DESTROY, CTX_ID, &[], RESP_OK_NODATA);
        let _ = self.frontend.lock().map(|_f| ());
    }
}

#[cfg(test)]
mod tests {
    use super::Heap;
    use std::collections::BTreeMap;

    #[test]
    fn heap_allocates_aligned_and_coalesces() {
        let mut h = Heap { free: BTreeMap::new() };
        h.free.insert(4096, 1 << 24);
        let a = h.alloc(100, 64).unwrap();
        let b = h.alloc(2 << 20, 2 << 20).unwrap();
        assert_eq!(b % (2 << 20), 0);
        assert!(a + 100 <= b);
        h.release(a, 100);
        h.release(b, 2 << 20);
        assert_eq!(h.free.len(), 1, "freed ranges merge back into one");
        assert_eq!(h.free.get(&4096), Some(&(1 << 24)));
        assert!(h.alloc(1 << 25, 64).is_none());
    }
}
