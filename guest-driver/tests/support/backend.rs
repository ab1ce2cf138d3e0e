//! gpuvisor-backend (sim engine) as a child process, for the tests that
//! drive it through the direct transport: the transport's unit tests
//! (`src/transport/direct.rs` includes this file) and the integration tests
//! in `tests/`. GPUVISOR_BACKEND_BIN names the binary (e.g.
//! target/debug/gpuvisor-backend); without it the tests skip.
//! GPUVISOR_BACKEND_LOG=1 passes the backends' logs through.

use std::path::PathBuf;
use std::time::Duration;

pub struct GpuvisorBackend {
    child: std::process::Child,
    socket: PathBuf,
}

impl GpuvisorBackend {
    /// A backend for `test` (which names its socket), with `extra` arguments
    /// after the defaults; `None`, after saying so, when GPUVISOR_BACKEND_BIN
    /// is not set.
    pub fn spawn_with(test: &str, extra: &[&str]) -> Option<GpuvisorBackend> {
        let Ok(bin) = std::env::var("GPUVISOR_BACKEND_BIN") else {
            eprintln!("skipping {test}: GPUVISOR_BACKEND_BIN is not set");
            return None;
        };
        let socket = std::env::temp_dir().join(format!("gv-direct-{test}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let child = std::process::Command::new(bin)
            .args(["--engine", "sim", "--vm-name", "direct-test", "--socket-path"])
            .arg(&socket)
            .args(extra)
            // GPUVISOR_BACKEND_LOG=1 shows the backend's log, for debugging a test.
            .stderr(if std::env::var_os("GPUVISOR_BACKEND_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .spawn()
            .expect("start gpuvisor-backend");
        let start = std::time::Instant::now();
        while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(GpuvisorBackend { child, socket })
    }

    pub fn spawn(test: &str) -> Option<GpuvisorBackend> {
        Self::spawn_with(test, &[])
    }

    /// How the backend ended, once it has within `timeout`; `None` while it
    /// still runs.
    #[allow(dead_code)] // the fault tests'
    pub fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The backend's process id, for reading /proc/<pid>.
    #[allow(dead_code)] // the sandbox test's
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the backend is still running.
    #[allow(dead_code)] // the sandbox test's
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The serving child of the backend's supervisor, once it has one other
    /// than `old` that finished its start-up (runs its seccomp filter),
    /// within `timeout`.
    #[allow(dead_code)] // the reconnection tests'
    pub fn serving_child(&self, old: Option<u32>, timeout: Duration) -> Option<u32> {
        let until = std::time::Instant::now() + timeout;
        let pid = self.child.id();
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            let ready = |k: u32| {
                let status = std::fs::read_to_string(format!("/proc/{k}/status")).unwrap_or_default();
                status.lines().any(|l| l.strip_prefix("Seccomp:").is_some_and(|v| v.trim() == "2"))
            };
            if let Some(k) =
                kids.split_whitespace().filter_map(|k| k.parse().ok()).find(|&k| Some(k) != old && ready(k))
            {
                return Some(k);
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the serving child with SIGKILL; returns its pid.
    #[allow(dead_code)] // the reconnection tests'
    pub fn kill_serving_child(&self) -> u32 {
        let pid = self.serving_child(None, Duration::from_secs(10)).expect("a serving child");
        // SAFETY: sends SIGKILL to the backend's own child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        pid
    }

    pub fn path(&self) -> &str {
        self.socket.to_str().expect("utf-8 temp path")
    }
}

impl Drop for GpuvisorBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
