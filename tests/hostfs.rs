//! Host programs in the guest (issue 7): the VM exports host directories
//! read-only over 9p (`gpuvisor-vm --host-path`), and the guest's
//! `gpuvisor-host-run` runs the host's own Python and CUDA-runtime programs
//! from them, unmodified, on the guest driver (sim engine here).
//!
//! Which host Python: GPUVISOR_TEST_HOST_PYTHON with the directories in
//! GPUVISOR_TEST_HOST_PATHS (colon-separated; default /usr) if set, else
//! /usr/bin/python3 with /usr, else python3 on PATH with /usr and its prefix.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpuvisor_tests::{run_vm_with, workspace, Scratch, VmRun};

/// A host Python and the host directories the guest needs to run it.
struct HostPython {
    python: String,
    paths: Vec<PathBuf>,
}

fn host_python() -> HostPython {
    if let Ok(python) = std::env::var("GPUVISOR_TEST_HOST_PYTHON") {
        let paths = std::env::var("GPUVISOR_TEST_HOST_PATHS").unwrap_or_else(|_| "/usr".into());
        return HostPython { python, paths: std::env::split_paths(&paths).collect() };
    }
    if Path::new("/usr/bin/python3").exists() {
        return HostPython { python: "/usr/bin/python3".into(), paths: vec!["/usr".into()] };
    }
    let out = Command::new("python3")
        .args(["-c", "import os, sys; print(os.path.realpath(sys.executable)); print(sys.base_prefix)"])
        .output()
        .expect("no /usr/bin/python3 and no python3 on PATH: set GPUVISOR_TEST_HOST_PYTHON");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(python), Some(prefix)) = (lines.next(), lines.next()) else { panic!("python3 said {text:?}") };
    HostPython { python: python.to_string(), paths: vec!["/usr".into(), prefix.into()] }
}

/// gpuvisor-vm flags: `share` at /mnt/host and each of `paths` exported.
fn flags(share: &Path, paths: &[PathBuf]) -> Vec<OsString> {
    let mut f: Vec<OsString> = vec!["--share-dir".into(), share.into()];
    for p in paths {
        f.push("--host-path".into());
        f.push(p.into());
    }
    f
}

/// Boots a VM with `paths` exported that runs the shell script `script`
/// (written to the share as run.sh) in the guest.
fn run_script(name: &str, s: &Scratch, paths: &[PathBuf], script: &str) -> VmRun {
    std::fs::write(s.path("run.sh"), script).unwrap();
    run_vm_with(name, "sh /mnt/host/run.sh", 512, &flags(&s.0, paths)).unwrap()
}

#[test]
fn the_hosts_python_drives_the_vgpu_through_the_guest_driver() {
    let host = host_python();
    let s = Scratch::new("hostfs-py");
    std::fs::copy(workspace().join("tests/guest/hostfs_check.py"), s.path("hostfs_check.py")).unwrap();
    let script = format!(
        "sum=$(sha256sum /usr/lib/gpuvisor/libcuda.so.1 | cut -c1-64)\n\
         gpuvisor-host-run --status\n\
         gpuvisor-host-run {} /mnt/host/hostfs_check.py \"$sum\"\n",
        host.python
    );
    let r = run_script("t-hostfs-py", &s, &host.paths, &script);
    let res = r.json_line("HOSTFS ").unwrap();
    assert!(r.failed_checks().is_empty(), "failed: {:?}", r.failed_checks());
    // The host's interpreter ran (not one from the image, which has none).
    assert_eq!(res["python"].as_str(), Some(host.python.as_str()), "{res}");
    assert_eq!(res["libcuda_mapped"], serde_json::json!(["/run/gpuvisor/lib/libcuda.so.1"]), "{res}");
    assert_eq!(res["device_count"], 1, "{res}");
    assert_eq!(res["device_name"], "gpuvisor simulated GPU", "{res}");
    assert_eq!(res["copy_round_trip"], true, "{res}");
    assert!(r.checks().len() >= 12, "only {} checks: {:?}", r.checks().len(), r.checks());
    assert_eq!(r.code, 0);
}

#[test]
fn a_static_cuda_runtime_program_runs_from_the_host_tree() {
    let dir = workspace().join("build/guest-tests");
    if !dir.join("gv_cudart_13s").exists() {
        let required = std::env::var("GPUVISOR_REQUIRE_CUDART").is_ok_and(|v| v == "1");
        assert!(!required, "{} is missing: run scripts/build.sh", dir.join("gv_cudart_13s").display());
        eprintln!("skipping: no gv_cudart_13s (scripts/build.sh builds it where the CUDA runtime was fetched)");
        return;
    }
    let host = host_python();
    let mut paths = host.paths.clone();
    paths.push(dir.clone());
    let s = Scratch::new("hostfs-rt");
    let r = run_script("t-hostfs-rt", &s, &paths, &format!("gpuvisor-host-run {}/gv_cudart_13s\n", dir.display()));
    let summary = r
        .console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("SUMMARY gv_cudart: "))
        .expect("gv_cudart printed its summary");
    let (passed, total) = summary.split_once(" passed").and_then(|(n, _)| n.split_once('/')).expect("N/M passed");
    assert_eq!(passed, total, "{summary}");
    assert!(total.parse::<u32>().unwrap() > 0);
    assert!(r.failed_checks().is_empty(), "failed: {:?}", r.failed_checks());
    assert_eq!(r.code, 0);
}

#[test]
fn the_guest_cannot_write_to_the_exported_tree() {
    let s = Scratch::new("hostfs-ro");
    let name = format!("gvt-hostfs-{}", std::process::id());
    let script = format!(
        "name={name}\n\
         try() {{\n\
             if touch \"$2\" 2>/tmp/err; then echo \"CHECK ro.$1: FAIL created $2\"\n\
             elif grep -q 'Read-only file system' /tmp/err; then echo \"CHECK ro.$1: PASS EROFS\"\n\
             else echo \"CHECK ro.$1: FAIL $(cat /tmp/err)\"; fi\n\
         }}\n\
         # In gpuvisor-host-run's tree the path is writable, in guest RAM.\n\
         if gpuvisor-host-run sh -c \"echo hello > /usr/$name\" && [ \"$(gpuvisor-host-run cat /usr/$name)\" = hello ]; then\n\
             echo 'CHECK ro.tree_is_writable_in_ram: PASS'\n\
         else echo 'CHECK ro.tree_is_writable_in_ram: FAIL'; fi\n\
         try guest_mount /host/usr/$name\n\
         # A guest that makes its mount writable still meets QEMU's readonly=on.\n\
         mount -o remount,rw /host/usr\n\
         if grep -q '^hostfs0 /host/usr 9p rw' /proc/mounts; then echo 'CHECK ro.remounted_rw: PASS'\n\
         else echo 'CHECK ro.remounted_rw: FAIL'; fi\n\
         try qemu_export /host/usr/$name\n"
    );
    let r = run_script("t-hostfs-ro", &s, &["/usr".into()], &script);
    let checks = r.checks();
    for c in ["ro.tree_is_writable_in_ram", "ro.guest_mount", "ro.remounted_rw", "ro.qemu_export"] {
        assert!(checks.contains(&(c.to_string(), true)), "{c} did not pass: {checks:?}");
    }
    assert!(!Path::new("/usr").join(&name).exists(), "the guest's write reached the host's /usr/{name}");
    assert_eq!(r.code, 0);
}
