//! Integration tests that boot a real VM: QEMU 10 with `vhost-user-gpu-pci`
//! served by gpuvisor-backend (sim engine), the Debian kernel with its stock
//! virtio-gpu driver, and the guest driver loaded by ordinary CUDA programs.

use gpuvisor_tests::run_vm;

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
