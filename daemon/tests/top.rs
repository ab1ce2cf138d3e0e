//! `gpuvisorctl top` on a real terminal (tmux) against a real gpuvisord
//! with a simulated NVML GPU and two registered VMs: the screen shows them,
//! `s` moves the sort, a resize is redrawn, `q` quits and leaves the
//! terminal as it found it.

mod common;

use common::tmux::{gpuvisorctl, Tmux};
use common::*;
use protocol::control::*;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

const H100: &str = "GPU-00000000-5157-0000-0000-0000000070b1";

/// A child process killed (and reaped) when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nvml_config(dir: &Path) -> PathBuf {
    let path = dir.join("nvml.json");
    let json = format!(
        r#"{{"gpus": [{{"name": "NVIDIA H100 80GB HBM3", "uuid": "{H100}", "memory_total_mib": 81559,
            "memory_used_mib": 2048, "pci_bus_id": "00000000:01:00.0"}}]}}"#
    );
    std::fs::write(&path, json).unwrap();
    path
}

/// Registers `vm` on the H100 and reports `launches` kernel launches.
fn register(socket: &Path, vm: &str, launches: u64) -> FakeBackend {
    let hello = BackendMsg::Hello {
        version: CONTROL_VERSION,
        vm: vm.into(),
        pid: std::process::id(),
        engine: "cuda".into(),
        gpu: H100.into(),
        quota_bytes: 2 << 30,
        requested: QosRequest::default(),
        reconnect: false,
        gpu_ns_total: 0,
        memory: Default::default(),
    };
    let (mut backend, answer) = FakeBackend::hello(socket, &hello);
    assert!(matches!(answer, DaemonMsg::Welcome { .. }), "{vm}: {answer:?}");
    let calls = CallCounts { launches, ..Default::default() };
    backend.send(&BackendMsg::Stats(BackendStats { calls, ..Default::default() }));
    backend
}

/// The line of the VM table's headings on `screen`.
fn vm_header(screen: &str) -> &str {
    screen.lines().find(|l| l.contains("NAME") && l.contains("LAUNCH/s")).unwrap_or("")
}

#[test]
fn top_shows_the_vms_sorts_on_s_and_gives_the_terminal_back_on_q() {
    let Some(tmux) = Tmux::available("top") else {
        eprintln!("SKIPPED: tmux is not installed (scripts/install-prereqs.sh installs it)");
        return;
    };
    let ctl = gpuvisorctl();
    let dir = scratch("top");
    let socket = dir.join("gpuvisord.sock");
    let state = dir.join("state");
    let (daemon, line) = spawn_gpuvisord(&socket, &state, &nvml_config(&dir), &[]);
    let _daemon = Killed(daemon);
    let url = admin_url(&line);
    let _alpha = register(&socket, "top-alpha", 7);
    let _beta = register(&socket, "top-beta", 3);

    // After top exits, the shell says how, then how the terminal is set,
    // and stays on so the screen can still be read.
    let command = format!(
        "'{}' --url '{url}' --token-file '{}' top --interval 0.5; echo \"top exited $?\"; stty -a; exec sleep 600",
        ctl.display(),
        state.join("admin.token").display()
    );
    tmux.start(160, 40, &command);

    let screen =
        tmux.wait_for("both VMs", Duration::from_secs(20), |s| s.contains("top-alpha") && s.contains("top-beta"));
    assert!(screen.contains("GPU-00000000") && screen.contains("NVIDIA H100 80GB HBM3"), "no GPU row:\n{screen}");
    assert!(screen.contains(url), "the header names the daemon:\n{screen}");
    assert!(vm_header(&screen).contains("NAME ^"), "sorted by name at start:\n{screen}");
    let alpha = screen.find("top-alpha").unwrap_or(0);
    let beta = screen.find("top-beta").unwrap_or(0);
    assert!(alpha < beta, "A to Z:\n{screen}");

    tmux.send_keys(&["s"]);
    let screen = tmux.wait_for("the sort to move to GPU", Duration::from_secs(5), |s| vm_header(s).contains("GPU ^"));
    assert!(!vm_header(&screen).contains("NAME ^"), "one sorted column:\n{screen}");
    assert!(screen.contains("sort: GPU (A to Z)"), "{screen}");

    // A smaller terminal: the next refresh draws to its size, status line
    // on its last row.
    // tmux passes a resize on to the program a little later (it batches
    // them); on a busy machine that has taken over 5 s, so the wait is long.
    tmux.resize(110, 24);
    assert_eq!(tmux.pane_format("#{pane_width}x#{pane_height}"), "110x24");
    let screen = tmux.wait_for("a redraw at 110x24", Duration::from_secs(30), |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.len() == 24 && lines[23].contains("sort: GPU") && lines.iter().all(|l| l.chars().count() <= 110)
    });
    assert!(screen.contains("top-alpha"), "{screen}");

    tmux.send_keys(&["q"]);
    let screen = tmux.wait_for("top to exit", Duration::from_secs(5), |s| s.contains("top exited"));
    assert!(screen.contains("top exited 0"), "{screen}");
    // The alternate screen is left (top's tables are gone) and raw mode is
    // off: the line discipline echoes and edits lines again.
    assert_eq!(tmux.pane_format("#{alternate_on}"), "0");
    assert!(!screen.contains("LAUNCH/s"), "top's screen is still shown:\n{screen}");
    let screen = tmux.wait_for("stty's report", Duration::from_secs(5), |s| s.contains("icanon"));
    let flags: Vec<&str> = screen.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig"] {
        assert!(flags.contains(&flag), "{flag} is off after top exited:\n{screen}");
    }
}
