//! What confines gpuvisor-backend once it serves a VM: a seccomp allowlist
//! of system calls (`seccomp.rs`), no inherited descriptors (`fds.rs`) and
//! an unprivileged user (`user.rs`).
//! `main.rs` applies them after start-up, when the engine, the sockets and
//! the daemon link exist.

pub mod fds;
pub mod seccomp;
pub mod user;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the seccomp filter: {0}")]
    SeccompFilter(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    SeccompInstall(#[from] seccompiler::Error),
    #[error("no user {0} (give NAME, UID, NAME:GID or UID:GID)")]
    UnknownUser(String),
    #[error("group {0} is not a numeric GID")]
    BadGroup(String),
    #[error("changing user: {0}")]
    SetUser(std::io::Error),
}
