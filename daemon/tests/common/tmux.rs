//! Drives a terminal program in tmux, as a user at a terminal would: a
//! detached session of a fixed size on a private tmux server, keys sent to
//! it and its screen read back as text. Also finds the gpuvisorctl binary
//! that such tests run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The gpuvisorctl binary beside gpuvisord. Cargo builds only this
/// package's binaries for its tests, so the admin crate's is built here
/// (a no-op when `cargo test --workspace` or scripts/build.sh built it).
pub fn gpuvisorctl() -> PathBuf {
    let gpuvisord = Path::new(env!("CARGO_BIN_EXE_gpuvisord"));
    let profile_dir = gpuvisord.parent().expect("gpuvisord lies in a target profile directory");
    let target_dir = profile_dir.parent().expect("the profile directory lies in the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "gpuvisor-admin", "--bin", "gpuvisorctl", "--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Cargo gives the test the package's variables; build scripts that
    // watch them (ring's does) would see them changed and rebuild, here
    // and again in the next plain `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_package =
            ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"]
                .iter()
                .any(|p| name.starts_with(p));
        if per_package || name == "OUT_DIR" || name == "CARGO_TARGET_TMPDIR" || name == "CARGO_RUSTC_CURRENT_DIR" {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building gpuvisorctl failed");
    let ctl = profile_dir.join("gpuvisorctl");
    assert!(ctl.is_file(), "{} was not built", ctl.display());
    ctl
}

/// A tmux server of this test's own (its own socket), so that the user's
/// sessions are never touched; killed when dropped.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A private server's handle, or `None` where tmux is not installed.
    pub fn available(tag: &str) -> Option<Tmux> {
        let found = Command::new("tmux").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        found.is_ok_and(|s| s.success()).then(|| Tmux { socket: format!("gvtest-{}-{tag}", std::process::id()) })
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Starts `command` (a shell command line) in a detached session of
    /// `width` x `height` cells, with a UTF-8 client so that line drawing
    /// reads back as drawn.
    pub fn start(&self, width: u16, height: u16, command: &str) {
        let (w, h) = (width.to_string(), height.to_string());
        self.run(&["-u", "new-session", "-d", "-s", "t", "-x", &w, "-y", &h, command]);
    }

    /// The visible screen, one string per line.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Keys as tmux names them (`s`, `q`, `Down`, `Escape`).
    pub fn send_keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Resizes the session's window, as a user dragging the terminal's edge.
    pub fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        self.run(&["resize-window", "-t", "t", "-x", &w, "-y", &h]);
    }

    /// A format of the session's pane, as `#{alternate_on}`.
    pub fn pane_format(&self, format: &str) -> String {
        String::from_utf8_lossy(&self.run(&["display-message", "-p", "-t", "t", format]).stdout).trim().to_owned()
    }

    /// Waits up to `timeout` for the screen to satisfy `ok`; returns the
    /// screen, and panics with it when it never does.
    pub fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(Instant::now() < until, "waited {timeout:?} for {what}; the screen shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).stderr(Stdio::null()).status();
    }
}
