//! gpuvisor's command stream: the bytes a guest sends to its backend inside a
//! virtio-gpu `SUBMIT_3D` (or the same bytes over vhost-user direct), and the
//! replies the backend writes back into guest-visible memory.
//!
//! Every struct here is `repr(C)`, little-endian and alignment 1 (zerocopy's
//! byte-order types), so decoding is a checked cast and never pointer
//! arithmetic. The decoder trusts no length, count or offset from the guest.

pub mod control;
pub mod cuda;
pub mod decode;
pub mod encode;
pub mod graph;
pub mod module_image;
pub mod swap_pool;
pub mod virtio_gpu;
pub mod wire;

pub use decode::{decode_batch, Batch, Command, DecodeError};
pub use encode::BatchWriter;
pub use wire::*;
