//! gpuvisor's VM launcher: turns a VM spec (TOML) into a QEMU VM whose virtio-gpu is
//! served by a vhost-user backend process, and supervises both until the guest is done.

pub mod accel;
pub mod cgroup;
pub mod console;
pub mod fleet;
pub mod launch;
pub mod process;
pub mod qemu;
pub mod spec;

use std::path::{Path, PathBuf};

pub use accel::{Accel, Decision, ProbeSettings};
pub use fleet::{FleetPlan, FleetSpec};
pub use launch::{Outcome, RunOptions};
pub use spec::{AccelChoice, Engine, Overrides, VmConfig, VmSpec};

/// Everything that can stop a VM from being described, started or finished.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse VM spec {path}: {message}")]
    SpecParse { path: PathBuf, message: String },
    #[error("invalid VM spec:\n  {}", .0.join("\n  "))]
    InvalidSpec(Vec<String>),
    #[error("socket path {0} is longer than a Unix socket address allows (107 bytes); use a shorter --run-dir")]
    SocketPathTooLong(PathBuf),
    #[error("{what} did not create {socket} within {secs} s; its log is {log}{tail}")]
    NoSocket { what: &'static str, socket: PathBuf, secs: u64, log: PathBuf, tail: String },
    /// The backend, or gpuvisord, exited while it was needed.
    #[error("{what} exited ({status}) {when}; its log is {log}{tail}")]
    Exited { what: &'static str, status: String, when: &'static str, log: PathBuf, tail: String },
    #[error("QEMU exited ({status}) before the guest printed `gpuvisor-guest: exit <rc>`; its log is {log}{tail}")]
    QemuExited { status: String, log: PathBuf, tail: String },
    #[error("timed out after {secs} s (timeout_s); stopped QEMU and the backend; console log: {}", console_log.display())]
    Timeout { secs: u64, console_log: PathBuf },
    #[error("interrupted by signal {0}; stopped QEMU and the backend")]
    Interrupted(i32),
    /// The backend's cgroup (`[backend.cgroup]`) could not be made. Not a
    /// `source`: its message already says everything, the OS error included.
    #[error("backend cgroup: {0}")]
    Cgroup(cgroup::CgroupError),
    #[error("cannot parse fleet spec {path}:\n  {}", .messages.join("\n  "))]
    FleetParse { path: PathBuf, messages: Vec<String> },
    #[error("invalid fleet spec {path}:\n  {}", .errors.join("\n  "))]
    InvalidFleet { path: PathBuf, errors: Vec<String> },
}

impl From<cgroup::CgroupError> for Error {
    fn from(e: cgroup::CgroupError) -> Error {
        Error::Cgroup(e)
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// The exit status gpuvisor-vm reports for this error: 124 for a timeout (as
    /// timeout(1) does), 128+N for signal N, 2 for a bad spec, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Timeout { .. } => 124,
            Error::Interrupted(sig) => u8::try_from(128 + sig).unwrap_or(1),
            Error::SpecParse { .. } | Error::InvalidSpec(_) | Error::FleetParse { .. } | Error::InvalidFleet { .. } => {
                2
            }
            _ => 1,
        }
    }
}

/// Per-user directory for run directories and the accel probe cache:
/// $XDG_RUNTIME_DIR/gpuvisor, else /tmp/gpuvisor-<uid>.
pub fn runtime_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_dir() => d.join("gpuvisor"),
        // SAFETY: getuid(2) has no preconditions and cannot fail.
        _ => PathBuf::from(format!("/tmp/gpuvisor-{}", unsafe { libc::getuid() })),
    }
}

/// Creates `dir` (and parents) with the last component private to the user.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
