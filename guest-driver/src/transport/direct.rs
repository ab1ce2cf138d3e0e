//! vhost-user direct: this process is its own virtio-gpu driver on the
//! backend's vhost-user socket. A memfd plays guest RAM: it holds the split
//! virtqueues, the requests in flight and every shared buffer, and the
//! backend maps it through SET_MEM_TABLE. The backend sees the same
//! virtio-gpu commands the Linux driver sends from inside a VM.
//!
//! `DirectDevice` (device.rs) is the generic part: handshake, memory,
//! control queue, request/response. `DirectTransport` adds what a gpuvisor
//! client needs on top: the capset, one 3D context, shared buffers as
//! resources with guest backing, batches as SUBMIT_3D.

mod device;
mod memory;
#[cfg(test)]
mod reference_backend;
#[cfg(test)]
#[path = "../../tests/support/backend.rs"]
mod test_backend;
mod vring;

pub use device::{check_response, cmd_name, DeviceOptions, DirectDevice, Region, MIN_MEM_BYTES};
pub use memory::GPA_BASE;

use super::{SharedBuf, Transport, TransportError};
use protocol::virtio_gpu::*;
use protocol::{CAPSET_ID, CAPSET_VERSION, MAX_BATCH_BYTES};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// The 3D context of the first DirectTransport on a device, as the Linux
/// driver numbers a process's first context; `new_context` numbers on.
const CTX_ID: u32 = 1;
const HDR: usize = core::mem::size_of::<CtrlHdr>();
const PAGE: u64 = 4096;
/// Shared buffers of this size or more are 2 MiB aligned (huge pages).
const HUGE: u64 = 2 << 20;
/// Largest MemEntry this driver writes: entries stay aligned and well under
/// the 4 GiB a MemEntry length can say.
const MAX_ENTRY: u64 = 1 << 30;
/// More than any capset blob should need.
const MAX_CAPSET_BYTES: usize = 64 << 10;
const DEFAULT_MEM_MIB: u64 = 1024;
const DEFAULT_SPIN_US: u64 = 50;

pub struct DirectTransport {
    dev: Arc<DirectDevice>,
    ctx_id: u32,
    capset: Vec<u8>,
    /// Resource ids are the device's, shared by every context on it.
    next_resource: Arc<AtomicU32>,
    next_ctx: Arc<AtomicU32>,
    /// The next fence id; held while a batch is queued so ids rise in queue
    /// order, as a context's fences do under the Linux driver.
    submit: Mutex<u64>,
}

fn env_u64(name: &str, default: u64) -> Result<u64, TransportError> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| TransportError::NoDevice(format!("{name}={v:?} is not a whole number"))),
        Err(_) => Ok(default),
    }
}

/// This process's name, as the Linux driver names a context after its task.
fn debug_name() -> Vec<u8> {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let name = comm.trim();
    let name = if name.is_empty() { "gpuvisor-direct" } else { name };
    name.as_bytes()[..name.len().min(63)].to_vec()
}

impl DirectTransport {
    /// Connects to a gpuvisor-backend socket and brings the device up as the
    /// Linux virtio-gpu driver would. `GPUVISOR_DIRECT_MEM_MIB` sizes the
    /// shared memory (default 1024), `GPUVISOR_DIRECT_SPIN_US` how long a
    /// waiter spins before it sleeps (default 50).
    pub fn connect(socket_path: &str) -> Result<DirectTransport, TransportError> {
        let mib = env_u64("GPUVISOR_DIRECT_MEM_MIB", DEFAULT_MEM_MIB)?;
        let spin = env_u64("GPUVISOR_DIRECT_SPIN_US", DEFAULT_SPIN_US)?;
        let opts = DeviceOptions {
            mem_bytes: mib.saturating_mul(1 << 20),
            required_features: 1 << F_VIRGL,
            optional_features: 1 << F_EDID,
            spin: Duration::from_micros(spin),
            display: None,
        };
        Self::on_device(DirectDevice::connect(socket_path, opts)?)
    }

    /// Brings up a gpuvisor session on a connected device: finds the
    /// capset, creates the context.
    pub fn on_device(dev: DirectDevice) -> Result<DirectTransport, TransportError> {
        let capset = find_capset(&dev)?;
        let name = debug_name();
        let mut c = CtxCreate { nlen: U32::new(name.len() as u32), context_init: U32::new(0), ..Default::default() };
        c.debug_name[..name.len()].copy_from_slice(&name);
        dev.command(CMD_CTX_CREATE, CTX_ID, c.as_bytes(), RESP_OK_NODATA, HDR)?;
        Ok(DirectTransport {
            dev: Arc::new(dev),
            ctx_id: CTX_ID,
            capset,
            next_resource: Arc::new(AtomicU32::new(1)),
            next_ctx: Arc::new(AtomicU32::new(CTX_ID + 1)),
            submit: Mutex::new(1),
        })
    }

    /// Another session on the same device, with a 3D context of its own: what
    /// a second guest process of the same VM is (the Linux driver gives each
    /// DRM file its own context). `wait_idle` waits for every context's
    /// requests, since they share the device's queue.
    pub fn new_context(&self) -> Result<DirectTransport, TransportError> {
        let ctx_id = self.next_ctx.fetch_add(1, Ordering::Relaxed);
        let name = debug_name();
        let mut c = CtxCreate { nlen: U32::new(name.len() as u32), context_init: U32::new(0), ..Default::default() };
        c.debug_name[..name.len()].copy_from_slice(&name);
        self.dev.command(CMD_CTX_CREATE, ctx_id, c.as_bytes(), RESP_OK_NODATA, HDR)?;
        Ok(DirectTransport {
            dev: self.dev.clone(),
            ctx_id,
            capset: self.capset.clone(),
            next_resource: self.next_resource.clone(),
            next_ctx: self.next_ctx.clone(),
            submit: Mutex::new(1),
        })
    }

    /// The device underneath, for tests and measurements.
    pub fn device(&self) -> &DirectDevice {
        &self.dev
    }

    /// Creates resource `id` over `region` and attaches it to the context.
    fn create_resource(&self, id: u32, region: &Region) -> Result<(), TransportError> {
        let width = u32::try_from(region.len).map_err(|_| TransportError::OutOfMemory(region.len as usize))?;
        let create = ResourceCreate3d {
            resource_id: U32::new(id),
            target: U32::new(PIPE_BUFFER),
            format: U32::new(FORMAT_R8_UNORM),
            bind: U32::new(0),
            width: U32::new(width),
            height: U32::new(1),
            depth: U32::new(1),
            array_size: U32::new(1),
            ..Default::default()
        };
        self.dev.command(CMD_RESOURCE_CREATE_3D, 0, create.as_bytes(), RESP_OK_NODATA, HDR)?;
        let mut entries = Vec::new();
        let mut at = 0;
        while at < region.len {
            let n = (region.len - at).min(MAX_ENTRY);
            entries.push(MemEntry {
                addr: U64::new(region.gpa + at),
                length: U32::new(n as u32),
                padding: U32::new(0),
            });
            at += n;
        }
        let attach = ResourceAttachBacking { resource_id: U32::new(id), nr_entries: U32::new(entries.len() as u32) };
        let mut body = attach.as_bytes().to_vec();
        body.extend_from_slice(entries.as_bytes());
        let attached = self.dev.command(CMD_RESOURCE_ATTACH_BACKING, 0, &body, RESP_OK_NODATA, HDR).and_then(|_| {
            self.dev.command(
                CMD_CTX_ATTACH_RESOURCE,
                self.ctx_id,
                CtxResource { resource_id: U32::new(id), padding: U32::new(0) }.as_bytes(),
                RESP_OK_NODATA,
                HDR,
            )
        });
        if attached.is_err() {
            let unref = ResourceUnref { resource_id: U32::new(id), padding: U32::new(0) };
            let _ = self.dev.command(CMD_RESOURCE_UNREF, 0, unref.as_bytes(), RESP_OK_NODATA, HDR);
        }
        attached.map(|_| ())
    }
}

fn find_capset(dev: &DirectDevice) -> Result<Vec<u8>, TransportError> {
    let config = dev.config().ok_or_else(|| {
        TransportError::NoDevice(
            "the backend has no config space (VHOST_USER_PROTOCOL_F_CONFIG), so its capsets cannot be counted".into(),
        )
    })?;
    let n = config.num_capsets.get();
    for i in 0..n.min(64) {
        let q = GetCapsetInfo { capset_index: U32::new(i), padding: U32::new(0) };
        let r = dev.command(
            CMD_GET_CAPSET_INFO,
            0,
            q.as_bytes(),
            RESP_OK_CAPSET_INFO,
            core::mem::size_of::<RespCapsetInfo>(),
        )?;
        let info = RespCapsetInfo::read_from_prefix(&r)
            .map_err(|_| TransportError::Protocol("short GET_CAPSET_INFO response".into()))?
            .0;
        if info.capset_id.get() != CAPSET_ID {
            continue;
        }
        let max = info.capset_max_size.get() as usize;
        if max > MAX_CAPSET_BYTES {
            return Err(TransportError::Protocol(format!("a {max}-byte gpuvisor capset")));
        }
        let q = GetCapset { capset_id: U32::new(CAPSET_ID), capset_version: U32::new(CAPSET_VERSION) };
        let r = dev.command(CMD_GET_CAPSET, 0, q.as_bytes(), RESP_OK_CAPSET, HDR + max)?;
        return Ok(r[HDR..].to_vec());
    }
    Err(TransportError::NoDevice(format!("none of the device's {n} capsets is gpuvisor's")))
}

impl Transport for DirectTransport {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn capset(&self) -> Result<Vec<u8>, TransportError> {
        Ok(self.capset.clone())
    }

    fn alloc_shared(&self, len: usize) -> Result<SharedBuf, TransportError> {
        let size = (len.max(1) as u64).checked_next_multiple_of(PAGE).ok_or(TransportError::OutOfMemory(len))?;
        if size > u32::MAX as u64 {
            // A PIPE_BUFFER's width is 32 bits.
            return Err(TransportError::OutOfMemory(len));
        }
        let region = self
            .dev
            .alloc(size, if size >= HUGE { HUGE } else { PAGE })
            .map_err(|_| TransportError::OutOfMemory(len))?;
        let id = self.next_resource.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.create_resource(id, &region) {
            self.dev.free(region.offset);
            return Err(e);
        }
        Ok(SharedBuf { resource_id: id, ptr: region.ptr, len: region.len as usize, handle: region.offset })
    }

    fn free_shared(&self, buf: &SharedBuf) {
        if self.dev.allocated_len(buf.handle) != Some(buf.len as u64) {
            crate::log::warn(&format!(
                "free of shared buffer {} that this transport did not hand out",
                buf.resource_id
            ));
            return;
        }
        let res = CtxResource { resource_id: U32::new(buf.resource_id), padding: U32::new(0) };
        let _ = self.dev.command(CMD_CTX_DETACH_RESOURCE, self.ctx_id, res.as_bytes(), RESP_OK_NODATA, HDR);
        let unref = ResourceUnref { resource_id: U32::new(buf.resource_id), padding: U32::new(0) };
        let _ = self.dev.command(CMD_RESOURCE_UNREF, 0, unref.as_bytes(), RESP_OK_NODATA, HDR);
        // The backend answered UNREF, so it no longer reads or writes the
        // range (or it is gone); the memory can be handed out again.
        self.dev.free(buf.handle);
    }

    fn submit(&self, batch: &[u8], _resources: &[&SharedBuf]) -> Result<(), TransportError> {
        if batch.len() > MAX_BATCH_BYTES as usize {
            return Err(TransportError::Rejected("batch too large"));
        }
        let mut fence = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        let hdr = CtrlHdr {
            type_: U32::new(CMD_SUBMIT_3D),
            flags: U32::new(FLAG_FENCE),
            fence_id: U64::new(*fence),
            ctx_id: U32::new(self.ctx_id),
            ..Default::default()
        };
        let cmd = CmdSubmit { size: U32::new(batch.len() as u32), padding: U32::new(0) };
        self.dev.post(&hdr, cmd.as_bytes(), batch, "SUBMIT_3D")?;
        *fence += 1;
        Ok(())
    }

    fn wait_idle(&self) -> Result<(), TransportError> {
        self.dev.wait_idle()
    }

    fn wait_idle_for(&self, limit: Duration) -> Result<bool, TransportError> {
        self.dev.wait_idle_within(Instant::now() + limit)
    }
}

impl Drop for DirectTransport {
    fn drop(&mut self) {
        // Best effort, and bounded: a backend that no longer answers must not
        // hang the process on its way out. Closing the connection (when the
        // device drops) ends the client in any case.
        let hdr = CtrlHdr { type_: U32::new(CMD_CTX_DESTROY), ctx_id: U32::new(self.ctx_id), ..Default::default() };
        let _ = self.dev.request_within(&hdr, &[], HDR, Some(Duration::from_secs(2)));
    }
}

#[cfg(test)]
mod tests {
    use super::reference_backend::ReferenceBackend;
    use super::test_backend::GpuvisorBackend;
    use super::*;

    #[test]
    fn a_device_without_3d_contexts_is_not_a_gpuvisor_device() {
        let Some(b) = ReferenceBackend::spawn("a_device_without_3d_contexts_is_not_a_gpuvisor_device") else {
            return;
        };
        match DirectTransport::connect(b.path()) {
            Err(TransportError::NoDevice(why)) => {
                assert!(why.contains("lacks feature bits"), "{why}")
            }
            Err(e) => panic!("expected NoDevice, got {e}"),
            Ok(_) => panic!("QEMU's 2D backend accepted as gpuvisor"),
        }
    }

    #[test]
    fn a_missing_socket_is_no_device() {
        assert!(matches!(DirectTransport::connect("/nonexistent/gpuvisor.sock"), Err(TransportError::NoDevice(_))));
    }

    #[test]
    fn gpuvisor_backend_session() {
        let Some(b) = GpuvisorBackend::spawn("gpuvisor_backend_session") else {
            return;
        };
        let t = DirectTransport::connect(b.path()).expect("connect");
        let cap = protocol::Capset::read_from_prefix(&t.capset().unwrap()).expect("a whole capset").0;
        assert_eq!(cap.magic.get(), protocol::CAPSET_MAGIC);
        let small = t.alloc_shared(100).unwrap();
        assert_eq!(small.len, 4096);
        let big = t.alloc_shared(3 << 20).unwrap();
        assert_eq!(big.ptr as usize % (2 << 20), 0, "large buffers are 2 MiB aligned");
        // SAFETY: the buffer is mapped and ours.
        unsafe { std::ptr::write_bytes(big.ptr, 0xa5, big.len) };
        // Not a batch: the backend rejects it, and wait_idle says so.
        t.submit(&[0u8; 64], &[]).unwrap();
        assert!(matches!(t.wait_idle(), Err(TransportError::Rejected("SUBMIT_3D"))));
        assert!(t.wait_idle().is_ok(), "a rejection is reported once");
        t.free_shared(&small);
        t.free_shared(&big);
        let again = t.alloc_shared(3 << 20).unwrap();
        assert_eq!(again.handle, small.handle, "freed memory is reused, first fit from the start");
        t.free_shared(&again);
    }

    /// Round trip of a trivial request to gpuvisor-backend, spin-then-block
    /// against block-only. Run with `--release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gpuvisor_backend_round_trip_time() {
        use super::reference_backend::{percentiles, round_trips};
        for spin in [Duration::from_micros(50), Duration::ZERO] {
            let Some(b) = GpuvisorBackend::spawn("gpuvisor_backend_round_trip_time") else {
                return;
            };
            let opts =
                DeviceOptions { mem_bytes: MIN_MEM_BYTES, required_features: 1 << F_VIRGL, spin, ..Default::default() };
            let dev = DirectDevice::connect(b.path(), opts).expect("connect");
            let hdr = CtrlHdr { type_: U32::new(CMD_GET_DISPLAY_INFO), ..Default::default() };
            let t = round_trips(&dev, &hdr, &[], core::mem::size_of::<RespDisplayInfo>(), 20000);
            println!("gpuvisor-backend, spin {spin:?}: GET_DISPLAY_INFO {}", percentiles(&t));
            let t = DirectTransport::on_device(dev).expect("gpuvisor bring-up");
            // An unwaited SUBMIT_3D and wait_idle: the asynchronous path.
            let mut times: Vec<Duration> = (0..20000)
                .map(|_| {
                    let s = std::time::Instant::now();
                    t.submit(&[0u8; 64], &[]).unwrap();
                    let _ = t.wait_idle();
                    s.elapsed()
                })
                .collect();
            times.sort();
            println!("gpuvisor-backend, spin {spin:?}: SUBMIT_3D + wait_idle {}", percentiles(&times));
        }
    }
}
