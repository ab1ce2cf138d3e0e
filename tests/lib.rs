//! Helpers for the integration tests: where the built pieces are, and how to
//! boot a VM with gpuvisor-vm and read what the guest printed.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// What a VM run left: gpuvisor-vm's exit code and the guest console.
pub struct VmRun {
    pub code: i32,
    pub console: String,
}

impl VmRun {
    /// The CHECK lines the guest printed, as (name, passed).
    pub fn checks(&self) -> Vec<(String, bool)> {
        self.console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("CHECK "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": ")?;
                Some((name.to_string(), rest.starts_with("PASS")))
            })
            .collect()
    }

    pub fn failed_checks(&self) -> Vec<String> {
        self.checks().into_iter().filter(|(_, ok)| !ok).map(|(n, _)| n).collect()
    }
}

/// Boots the test guest (built by `scripts/build.sh`) with a sim-engine vGPU
/// and runs `cmd` in it.
pub fn run_vm(name: &str, cmd: &str, quota_mib: u64) -> anyhow::Result<VmRun> {
    let root = workspace();
    let profile = std::env::var("GPUVISOR_PROFILE").unwrap_or_else(|_| "debug".into());
    let vm = root.join("target").join(&profile).join("gpuvisor-vm");
    let kernel = root.join("build/guest/vmlinuz");
    let initramfs = root.join("build/guest/initramfs.cpio.gz");
    for p in [&vm, &kernel, &initramfs] {
        anyhow::ensure!(p.exists(), "{} is missing: run scripts/build.sh (PROFILE={profile}) first", p.display());
    }
    let out = Command::new(&vm)
        .args(["run", "--name", name, "--engine", "sim", "--timeout-s", "600"])
        .arg("--quota-mib")
        .arg(quota_mib.to_string())
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .args(["--run", cmd])
        .output()?;
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{console}\n--- gpuvisor-vm stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    Ok(VmRun { code: out.status.code().unwrap_or(-1), console })
}
