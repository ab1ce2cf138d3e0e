//! What confines gpuvisor-backend once it serves a VM: a seccomp allowlist
//! of system calls (`seccomp.rs`) and no inherited descriptors (`fds.rs`).
//! `main.rs` applies them after start-up, when the engine, the sockets and
//! the daemon link exist.

pub mod fds;
pub mod seccomp;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the seccomp filter: {0}")]
    SeccompFilter(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    SeccompInstall(#[from] seccompiler::Error),
}
