//! What confines gpuvisor-backend once it serves a VM: a seccomp allowlist
//! of system calls (`seccomp.rs`). `main.rs` applies it after start-up, when
//! the engine, the sockets and the daemon link exist.

pub mod seccomp;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the seccomp filter: {0}")]
    SeccompFilter(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    SeccompInstall(#[from] seccompiler::Error),
}
