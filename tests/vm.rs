//! Integration tests that boot a real VM: QEMU 10 with `vhost-user-gpu-pci`
//! served by gpuvisor-backend (sim engine), the Debian kernel with its stock
//! virtio-gpu driver, and the guest driver loaded by ordinary CUDA programs.

use gpuvisor_tests::{descendants, run_vm, run_vm_watching, signal};
use std::time::{Duration, Instant};

#[test]
fn cuda_programs_in_the_guest_pass_their_checks() {
    let r = run_vm("t-checks", "env GV_EXPECT_QUOTA_MIB=768 /opt/gpuvisor/tests/run-all.sh", 768).unwrap();
    let summary = r.console.lines().find(|l| l.starts_with("GUEST-CHECKS ")).expect("guest printed a summary");
    assert!(r.failed_checks().is_empty(), "failed: {:?}", r.failed_checks());
    assert!(r.checks().len() >= 30, "only {} checks ran ({summary})", r.checks().len());
    assert_eq!(r.code, 0, "guest exit code");
}

#[test]
fn malformed_requests_from_the_guest_get_cuda_errors_and_the_backend_keeps_serving() {
    let r = run_vm("t-bad", "gpuvisor-probe bad-input", 512).unwrap();
    let checks = r.checks();
    for name in [
        "probe.garbage_buffer",
        "probe.command_length_past_end",
        "probe.buffer_length_past_end",
        "probe.device_range_past_allocation",
        "probe.unknown_stream",
        "probe.freed_event",
        "probe.alloc_past_quota",
    ] {
        assert!(checks.contains(&(name.to_string(), true)), "{name} did not pass: {checks:?}");
    }
    assert!(r.failed_checks().is_empty(), "failed: {:?}", r.failed_checks());
    assert_eq!(r.code, 0);
}

#[test]
fn a_guest_process_killed_mid_stream_leaves_nothing_behind() {
    let cmd = "gpuvisor-probe hog 384 & sleep 4; kill -9 $!; sleep 1; \
               gpuvisor-probe meminfo --expect-all-free && /opt/gpuvisor/tests/gv_vector_add";
    let r = run_vm("t-kill", cmd, 512).unwrap();
    assert!(r.console.contains("hog: holding 384 MiB"), "the hog never started");
    let checks = r.checks();
    assert!(checks.contains(&("probe.all_memory_free".to_string(), true)), "{checks:?}");
    assert!(checks.iter().any(|(n, ok)| n.starts_with("vector_add.") && *ok), "next process did not work: {checks:?}");
    assert!(r.failed_checks().is_empty(), "failed: {:?}", r.failed_checks());
    assert_eq!(r.code, 0);
}

/// The VM's serving backend killed with SIGKILL while a guest program runs
/// checked kernels: its supervisor keeps QEMU's connection and starts a new
/// one; the program's calls fail with 709 (CUDA_ERROR_CONTEXT_IS_DESTROYED)
/// within seconds instead of hanging, and the next program passes.
#[test]
fn a_backend_killed_mid_program_fails_that_program_with_709_and_the_next_passes() {
    let cmd = "/opt/gpuvisor/tests/gv_isolation steady --kernels 1000000000 --words 256; \
               echo KILLED-PROGRAM-EXIT=$?; /opt/gpuvisor/tests/gv_vector_add";
    let mut killed: Option<(u32, Instant)> = None;
    let mut failed_after = None;
    let r = run_vm_watching("t-reconnect", cmd, 512, |line, vm_pid| {
        if killed.is_none() && line.starts_with("CHECK gv_isolation.module_load: PASS") {
            // Let it run kernels for a while first.
            std::thread::sleep(Duration::from_secs(3));
            let serving = descendants(vm_pid).into_iter().find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"--serve-fd"))
            });
            let pid = serving.expect("the VM's serving backend (a child of its supervisor)");
            signal(pid as i32, libc::SIGKILL);
            killed = Some((pid, Instant::now()));
        }
        if line.starts_with("GVISO ") {
            if let Some((_, at)) = killed {
                failed_after.get_or_insert(at.elapsed());
            }
        }
    })
    .unwrap();
    assert!(killed.is_some(), "the program never started");
    let gviso = r.json_line("GVISO ").unwrap();
    assert_eq!(gviso["first_error"], "CUDA_ERROR_CONTEXT_IS_DESTROYED", "{gviso}");
    let ran = gviso["kernels"].as_u64().unwrap_or(0) - gviso["errors"].as_u64().unwrap_or(0);
    assert!(ran > 0, "no kernel passed before the kill: {gviso}");
    let after = failed_after.expect("the killed program ended");
    eprintln!("the killed program ended {after:?} after the kill, having run {ran} checked kernels");
    assert!(after < Duration::from_secs(30), "the program took {after:?} to fail");
    let checks = r.checks();
    assert!(checks.iter().any(|(n, ok)| n.starts_with("vector_add.") && *ok), "next program did not work: {checks:?}");
    assert!(r.failed_checks().iter().all(|n| n.starts_with("gv_isolation.")), "failed: {:?}", r.failed_checks());
    assert_eq!(r.code, 0, "the next program's exit code");
}
