//! gpuvisor-backend: one process per VM that presents a virtio-gpu device
//! over vhost-user, decodes the guest's CUDA command stream, and runs it on
//! an engine (the host GPU through cudarc, or the CPU simulator).
//!
//! Data path, top to bottom: `device.rs` (virtqueues) → `virtio_gpu.rs`
//! (virtio-gpu commands, SUBMIT_3D) → `vm.rs` (decode, per-VM handle tables,
//! quota, replies) → `engine/` (cuda | sim).

pub mod device;
pub mod engine;
pub mod error;
pub mod grants;
pub mod graph;
pub mod guest_mem;
pub mod handles;
pub mod resources;
pub mod sandbox;
pub mod virtio_gpu;
pub mod vm;
