//! guest-tests/gv_pools through the guest driver on a sim backend with a
//! 64 MiB quota: its checks of stream-ordered allocation and mapped memory,
//! and, run as two processes one after the other (two clients of the VM),
//! that the pool and mapped memory one gives back, or leaves behind when it
//! exits, reaches the next zeroed.
//!
//! Needs GPUVISOR_BACKEND_BIN (the tests skip without it), make and a C
//! compiler.

#[path = "support/backend.rs"]
#[allow(dead_code)] // spawn: the test needs a quota
mod backend;
#[path = "support/programs.rs"]
mod programs;

use backend::GpuvisorBackend;
use programs::{driver_dir, workspace};
use std::path::{Path, PathBuf};
use std::process::Command;

/// gv_pools, built into the test's temporary directory.
fn program() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gv-pools");
    let made = Command::new("make")
        .args(["-s", "-C"])
        .arg(workspace().join("guest-tests"))
        .arg(format!("OUT={}", out.display()))
        .arg(out.join("gv_pools"))
        .output()
        .expect("run make");
    assert!(made.status.success(), "make gv_pools failed:\n{}", String::from_utf8_lossy(&made.stderr));
    out.join("gv_pools")
}

/// Runs gv_pools with `args` against `backend`; its output, after checking
/// that every check passed.
fn run(prog: &Path, backend: &GpuvisorBackend, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("GPUVISOR_TRANSPORT", format!("direct:{}", backend.path()))
        .env("GPUVISOR_DIRECT_MEM_MIB", "64")
        .env("LD_LIBRARY_PATH", driver_dir())
        .output()
        .expect("run gv_pools");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!("gv_pools {args:?}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{context}");
    assert!(!stdout.contains(": FAIL"), "{context}");
    stdout
}

#[test]
fn pool_and_mapped_memory_pass_the_checks_and_reach_the_next_process_zeroed() {
    let Some(b) = GpuvisorBackend::spawn_with("pool_programs", &["--quota-mib", "64"]) else { return };
    let prog = program();
    let checks = run(&prog, &b, &[]);
    assert!(checks.contains("SUMMARY pools: 8/8 passed"), "{checks}");
    // Given back, then left behind by a process that exits holding it.
    for write in [&["scrub-write"][..], &["scrub-write", "--leak"]] {
        let w = run(&prog, &b, write);
        assert!(w.contains("CHECK pools.scrub_write: PASS"), "{w}");
        let c = run(&prog, &b, &["scrub-check"]);
        assert!(c.contains("CHECK pools.scrub_check: PASS"), "{c}");
        assert!(c.contains(", 0 marker words"), "{c}");
    }
}
