//! How batches reach the backend. Two transports carry the same bytes:
//! `virtio` drives the stock Linux virtio-gpu driver through the DRM render
//! node inside a VM; `direct` is a host process acting as its own virtio
//! driver on the backend's vhost-user socket (tests, containers). Both end in
//! the same virtio-gpu control queue on the backend, so the backend cannot
//! tell them apart.

pub mod direct;
pub mod virtio;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("no gpuvisor device: {0}")]
    NoDevice(String),
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the backend rejected {0}")]
    Rejected(&'static str),
    #[error("out of shared memory for a {0}-byte buffer")]
    OutOfMemory(usize),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl TransportError {
    pub fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
        move |source| TransportError::Io { op, source }
    }
}

/// Memory that both this process and the backend can see: a virtio-gpu
/// resource with guest backing, mapped into this process.
#[derive(Debug)]
pub struct SharedBuf {
    /// The virtio-gpu resource id the backend knows it by.
    pub resource_id: u32,
    /// Where it is mapped in this process.
    pub ptr: *mut u8,
    pub len: usize,
    /// Transport-private handle (GEM handle, or offset in the direct
    /// transport's memory).
    pub handle: u64,
}

// SAFETY: a SharedBuf is a plain description of a mapping; the mapping itself
// stays valid until `Transport::free_shared`, and callers synchronise access
// to its bytes.
unsafe impl Send for SharedBuf {}
// SAFETY: as above.
unsafe impl Sync for SharedBuf {}

impl SharedBuf {
    /// Whether `[addr, addr + len)` lies inside this buffer; returns the offset.
    pub fn offset_of(&self, addr: usize, len: usize) -> Option<usize> {
        let start = self.ptr as usize;
        let end = addr.checked_add(len)?;
        if addr >= start && end <= start + self.len {
            Some(addr - start)
        } else {
            None
        }
    }
}

pub trait Transport: Send + Sync {
    /// Short name for logs ("virtio", "direct").
    fn name(&self) -> &'static str;
    /// The gpuvisor capset blob the device advertises.
    fn capset(&self) -> Result<Vec<u8>, TransportError>;
    /// Creates a shared buffer of at least `len` bytes.
    fn alloc_shared(&self, len: usize) -> Result<SharedBuf, TransportError>;
    /// Destroys a shared buffer; the backend forgets its resource.
    fn free_shared(&self, buf: &SharedBuf);
    /// Sends one batch (a virtio-gpu SUBMIT_3D in this client's context).
    /// `resources` are the shared buffers the batch touches.
    fn submit(&self, batch: &[u8], resources: &[&SharedBuf]) -> Result<(), TransportError>;
    /// Blocks until the backend has finished every submitted batch.
    fn wait_idle(&self) -> Result<(), TransportError>;
    /// `wait_idle`, giving up after about `limit` (a transport may wait
    /// longer when it cannot do better): `Ok(false)` when the backend had
    /// not finished by then. The caller looks at the backend's heartbeat
    /// between waits.
    fn wait_idle_for(&self, _limit: std::time::Duration) -> Result<bool, TransportError> {
        self.wait_idle().map(|()| true)
    }
    /// Names the buffer whose completion `wait_idle` may wait on (the
    /// session's control buffer). Transports that track completion
    /// themselves ignore it.
    fn set_fence_buffer(&self, _buf: &SharedBuf) {}
}

/// Opens the transport the environment asks for: `GPUVISOR_TRANSPORT=direct:<socket>`
/// for vhost-user direct, otherwise the virtio-gpu render node
/// (`GPUVISOR_RENDER_NODE` overrides which one).
pub fn open_from_env() -> Result<Box<dyn Transport>, TransportError> {
    match std::env::var("GPUVISOR_TRANSPORT") {
        Ok(v) if v.starts_with("direct:") => Ok(Box::new(direct::DirectTransport::connect(&v["direct:".len()..])?)),
        Ok(v) if v == "virtio" || v.is_empty() => Ok(Box::new(virtio::VirtioTransport::open_default()?)),
        Ok(v) => {
            Err(TransportError::NoDevice(format!("unknown GPUVISOR_TRANSPORT {v:?} (use virtio or direct:<socket>)")))
        }
        Err(_) => Ok(Box::new(virtio::VirtioTransport::open_default()?)),
    }
}
