//! Backend limits (issue 8): `gpuvisor-vm run` with a spec's `[backend.cgroup]`
//! starts the real gpuvisor-backend (sim engine) inside a cgroup of its own with
//! the spec's CPU and memory limits, on this host's cgroup v2 or v1, and removes
//! the cgroup when the VM ends.
//!
//! QEMU is played by a script that looks at the cgroups while the VM runs and
//! then prints the guest's exit line: what is checked is the backend's placement,
//! not the guest (tests/vm.rs boots real guests). It makes real cgroups, so it
//! needs root (CI runs as root) or a delegated cgroup, and fails saying so
//! without, unless GPUVISOR_SKIP_CGROUP_TESTS=1.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use gpuvisor_tests::{built, Scratch};

#[test]
fn gpuvisor_vm_starts_the_backend_inside_the_specs_cgroup_and_removes_it_after() {
    if std::env::var("GPUVISOR_SKIP_CGROUP_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: GPUVISOR_SKIP_CGROUP_TESTS=1");
        return;
    }
    let (vm, backend) = (built("gpuvisor-vm").unwrap(), built("gpuvisor-backend").unwrap());
    let s = Scratch::new("cgroup");
    for f in ["vmlinuz", "initramfs"] {
        std::fs::write(s.path(f), "not booted").unwrap();
    }
    // A parent relative to the cgroup this test runs in, so that a harness's own
    // memory cgroup still holds the backend.
    let parent = format!("gvt-cgroup-{}", std::process::id());
    let spec = s.path("vm.toml");
    let write_spec = |qemu: &str| {
        let text = format!(
            "name = \"t-cgroup\"\nkernel = \"vmlinuz\"\ninitramfs = \"initramfs\"\naccel = \"tcg\"\n\
             timeout_s = 60\nqemu = {qemu:?}\n\n[backend]\nbinary = {backend:?}\nengine = \"sim\"\n\n\
             [backend.cgroup]\ncpus = 1.25\nmemory_mib = 256\nparent = {parent:?}\n"
        );
        std::fs::write(&spec, text).unwrap();
    };
    write_spec("/bin/true");

    // `check` says where the cgroup goes and what it gets, touching nothing.
    let out = Command::new(&vm).args(["check", "--spec"]).arg(&spec).output().unwrap();
    let check = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "check failed: {check}{}", String::from_utf8_lossy(&out.stderr));
    assert!(check.contains("# backend cgroup: cpus 1.25, memory 256 MiB"), "{check}");
    let cgroups: Vec<PathBuf> = check
        .lines()
        .filter_map(|l| l.strip_prefix("#   cgroup v"))
        .filter_map(|l| Some(PathBuf::from(l.split_once(' ')?.1.split_once(": ")?.0)))
        .collect();
    assert!(!cgroups.is_empty(), "check named no cgroup: {check}");
    for c in &cgroups {
        assert!(c.ends_with(format!("{parent}/t-cgroup")), "{}", c.display());
        assert!(!c.exists(), "check made {}", c.display());
    }

    // "QEMU": record each cgroup's processes, their command lines and limits.
    let seen = s.path("seen");
    let mut body = String::from("#!/bin/sh\n");
    for c in &cgroups {
        let c = c.display();
        body.push_str(&format!(
            "for p in $(cat {c}/cgroup.procs); do echo \"proc {c} $(tr '\\0' ' ' < /proc/$p/cmdline)\"; done >> {seen}\n\
             for f in cpu.max cpu.cfs_quota_us memory.max memory.limit_in_bytes; do \
             [ -e {c}/$f ] && echo \"limit $f $(cat {c}/$f)\"; done >> {seen}\n",
            seen = seen.display()
        ));
    }
    body.push_str("echo 'gpuvisor-guest: exit 0'\n");
    let qemu = s.path("qemu");
    std::fs::write(&qemu, body).unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_spec(&qemu.to_string_lossy());

    let out =
        Command::new(&vm).args(["run", "--spec"]).arg(&spec).arg("--run-dir").arg(s.path("run")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "gpuvisor-vm run failed (it needs root or a delegated cgroup; GPUVISOR_SKIP_CGROUP_TESTS=1 skips): {stderr}"
    );
    let seen = std::fs::read_to_string(&seen).unwrap();
    for c in &cgroups {
        let procs: Vec<&str> = seen.lines().filter_map(|l| l.strip_prefix(&format!("proc {} ", c.display()))).collect();
        // The backend: its supervisor and the serving child it started.
        assert_eq!(procs.len(), 2, "{} held {procs:?}", c.display());
        for p in &procs {
            assert!(
                p.starts_with(&format!("{} --socket-path", backend.display())) && p.contains("--engine sim"),
                "not the backend: {p}"
            );
        }
        assert_eq!(procs.iter().filter(|p| p.contains("--serve-fd")).count(), 1, "{procs:?}");
    }
    let limits: Vec<&str> = seen.lines().filter_map(|l| l.strip_prefix("limit ")).collect();
    let cpu = ["cpu.max 125000 100000", "cpu.cfs_quota_us 125000"];
    let mem = ["memory.max 268435456", "memory.limit_in_bytes 268435456"];
    assert!(limits.iter().any(|l| cpu.contains(l)), "no CPU limit in {limits:?}");
    assert!(limits.iter().any(|l| mem.contains(l)), "no memory limit in {limits:?}");
    for c in &cgroups {
        assert!(!c.exists(), "{} outlived the VM", c.display());
        assert!(!c.parent().unwrap().exists(), "{} outlived the VM", c.parent().unwrap().display());
    }
}
