//! `libcuda.so.1` for guests: the CUDA driver API, forwarded to the VM's
//! gpuvisor-backend. A call is encoded into the protocol's batch format
//! (`client.rs`), asynchronous calls are batched, and batches travel over a
//! transport: the virtio-gpu render node inside a VM, or vhost-user direct.

pub mod api;
pub mod client;
pub mod log;
pub mod transport;
pub mod unsupported_calls;
