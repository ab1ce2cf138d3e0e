//! Stream capture and graphs through the direct transport on a sim backend:
//! guest-tests/gv_graphs (built here with make) captures kernels, copies
//! and a memset across two streams with a fork and a join, instantiates the
//! graph and launches it a hundred times, builds and updates a graph node by
//! node, checks the errors invalid captures get, occupancy and peer
//! queries. Its PASS lines are the same natively.
//!
//! Needs GPUVISOR_BACKEND_BIN; without it the test skips.

#[path = "support/backend.rs"]
mod backend;

use backend::GpuvisorBackend;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("guest-driver has a parent").to_path_buf()
}

/// This build's guest driver (cargo builds the cdylib beside the test
/// binaries).
fn driver() -> PathBuf {
    let built = std::env::current_exe().expect("test binary path").with_file_name("libcuda.so");
    assert!(built.exists(), "{} is missing", built.display());
    built
}

#[test]
fn gv_graphs_passes_every_check_on_the_guest_driver() {
    let Some(b) = GpuvisorBackend::spawn("gv_graphs") else { return };
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gv-graphs");
    let prog = out_dir.join("gv_graphs");
    let made = Command::new("make")
        .args(["-s", "-C"])
        .arg(workspace().join("guest-tests"))
        .arg(format!("OUT={}", out_dir.display()))
        .arg(&prog)
        .output()
        .expect("run make");
    assert!(made.status.success(), "make gv_graphs failed:\n{}", String::from_utf8_lossy(&made.stderr));
    let out = Command::new(&prog)
        .env("GPUVISOR_TRANSPORT", format!("direct:{}", b.path()))
        .env("GPUVISOR_DIRECT_MEM_MIB", "64")
        .env("GV_LIBCUDA", driver())
        .output()
        .expect("run gv_graphs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{context}");
    assert!(!stdout.contains(": FAIL"), "{context}");
    for check in [
        "capture.fork_join",
        "graph.launch_100",
        "graph.reads_host_at_launch",
        "graph.exec_update",
        "invalid.unjoined",
        "invalid.legacy_stream",
        "occupancy.consistent",
        "peer.single_device",
    ] {
        assert!(stdout.contains(&format!("CHECK graphs.{check}: PASS")), "{check}\n{context}");
    }
    assert!(stdout.contains("SUMMARY graphs: 21/21 passed"), "{context}");
    // The simulated device's occupancy model: 32 registers per thread, so
    // two 1024-thread blocks per multiprocessor, on 8 of them.
    assert!(stdout.contains("8 SMs, 32 registers, best block 1024 (grid 16), 8 blocks/SM at 256"), "{context}");
}
