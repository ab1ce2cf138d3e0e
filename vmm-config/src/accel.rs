//! Chooses KVM or TCG. /dev/kvm existing is not enough: under nested KVM a QEMU guest
//! can crawl (no kernel output in 60 s) or QEMU can abort on an MSR the host refuses.
//! So `auto` boots the guest kernel once under KVM with no initramfs and no root
//! device: it panics as soon as it would mount root, `panic=-1` turns the panic into
//! a reboot and `-no-reboot` into QEMU's exit. A real KVM host does that in about a
//! second; the result is cached per boot of the host, QEMU and kernel.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::process::{harden, ChildGuard};
use crate::spec::AccelChoice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Which accelerator, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub accel: Accel,
    pub reason: String,
    pub cached: bool,
}

#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// A KVM boot that takes longer than this counts as too slow.
    pub timeout: Duration,
    /// Where results are cached; None disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings { timeout: Duration::from_secs(5), cache_dir: Some(crate::runtime_base()) }
    }
}

/// Decides the accelerator for `choice`, probing KVM (or reading the cache) for `auto`.
pub fn choose(choice: AccelChoice, qemu: &Path, kernel: &Path, settings: &ProbeSettings) -> Decision {
    let fixed =
        |accel| Decision { accel, reason: "requested in the spec or on the command line".into(), cached: false };
    match choice {
        AccelChoice::Kvm => return fixed(Accel::Kvm),
        AccelChoice::Tcg => return fixed(Accel::Tcg),
        AccelChoice::Auto => {}
    }
    if let Err(why) = kvm_openable() {
        return Decision { accel: Accel::Tcg, reason: why, cached: false };
    }
    let cache = settings.cache_dir.as_ref().map(|d| d.join(format!("accel-probe-{:016x}", cache_key(qemu, kernel))));
    if let Some(decision) = cache.as_deref().and_then(read_cache) {
        return decision;
    }
    let result = probe_kvm(qemu, kernel, settings.timeout);
    let decision = match result {
        Ok(why) => Decision { accel: Accel::Kvm, reason: why, cached: false },
        Err(why) => Decision { accel: Accel::Tcg, reason: why, cached: false },
    };
    if let Some(path) = cache {
        write_cache(&path, &decision);
    }
    decision
}

fn kvm_openable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened read-write ({e}), so TCG"))
}

/// QEMU arguments of the probe boot.
pub fn probe_args(kernel: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "-nodefaults",
        "-no-user-config",
        "-machine",
        "q35",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256M",
        "-smp",
        "1",
    ]
    .iter()
    .chain(crate::qemu::CONSOLE_ARGS)
    .map(OsString::from)
    .collect();
    a.push("-kernel".into());
    a.push(kernel.as_os_str().to_owned());
    a.push("-append".into());
    a.push("console=ttyS0 earlyprintk=ttyS0 loglevel=1 panic=-1 root=/dev/null rdinit=/gpuvisor-probe-none".into());
    a
}

/// Boots the probe; Ok(reason KVM works) or Err(reason it does not).
pub fn probe_kvm(qemu: &Path, kernel: &Path, timeout: Duration) -> Result<String, String> {
    let mut cmd = Command::new(qemu);
    cmd.args(probe_args(kernel)).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    harden(&mut cmd, true);
    debug!("KVM probe: {}", crate::qemu::shell_quote(qemu, &probe_args(kernel)));
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {} for the KVM probe: {e}", qemu.display()))?;
    let readers = [child.stdout.take().map(read_bounded), child.stderr.take().map(read_bounded)];
    let mut guard = ChildGuard::new("KVM probe QEMU", child);
    let status = guard.wait_for(timeout);
    let elapsed = start.elapsed();
    if status.is_none() {
        guard.stop(Duration::from_millis(500));
    }
    let [out, err] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    classify(status, elapsed, timeout, &out, &err)
}

fn read_bounded<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if kept.len() < 256 * 1024 {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        kept
    })
}

/// Reads the probe's outcome.
pub fn classify(
    status: Option<ExitStatus>,
    elapsed: Duration,
    timeout: Duration,
    console: &[u8],
    stderr: &[u8],
) -> Result<String, String> {
    let Some(status) = status else {
        return Err(format!(
            "a KVM guest did not finish a {:.0} s boot probe ({} bytes of console output): nested or slow KVM, so TCG",
            timeout.as_secs_f64(),
            console.len()
        ));
    };
    if !status.success() {
        let err = String::from_utf8_lossy(stderr);
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(format!("QEMU with KVM failed ({status}): {first}; so TCG"));
    }
    let text = String::from_utf8_lossy(console);
    if text.contains("Kernel panic") || text.contains("Linux version") {
        Ok(format!("a KVM guest booted to its probe panic in {:.2} s", elapsed.as_secs_f64()))
    } else {
        Err("the KVM probe exited without kernel console output, so TCG".to_string())
    }
}

/// FNV-1a over what decides the outcome: the host boot, QEMU and the kernel file.
fn cache_key(qemu: &Path, kernel: &Path) -> u64 {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        let mtime =
            m.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        format!("{}|{:?}|{:?}", p.display(), m.map(|m| m.len()), mtime)
    };
    let key = format!("{}|{}|{}", boot_id.trim(), stamp(qemu), stamp(kernel));
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn read_cache(path: &Path) -> Option<Decision> {
    let text = std::fs::read_to_string(path).ok()?;
    let (accel, reason) = text.split_once('\n')?;
    let accel = match accel {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some(Decision { accel, reason: format!("{} (cached in {})", reason.trim(), path.display()), cached: true })
}

fn write_cache(path: &Path, d: &Decision) {
    if let Some(dir) = path.parent() {
        let _ = crate::create_private_dir(dir);
    }
    if let Err(e) = std::fs::write(path, format!("{}\n{}\n", d.accel, d.reason)) {
        debug!("cannot cache the accel probe in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn quick_panic_means_kvm() {
        let ok = classify(
            Some(ExitStatus::from_raw(0)),
            Duration::from_millis(900),
            T,
            b"[0.5] Kernel panic - not syncing",
            b"",
        );
        assert!(ok.unwrap().contains("0.90 s"));
    }

    #[test]
    fn slow_boot_means_tcg() {
        let e = classify(None, T, T, b"Probing EDD", b"").unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
    }

    #[test]
    fn qemu_abort_means_tcg_with_its_message() {
        let e = classify(
            Some(ExitStatus::from_raw(134 << 8)),
            Duration::from_millis(40),
            T,
            b"",
            b"qemu: error: failed to set MSR 0x10a\n",
        )
        .unwrap_err();
        assert!(e.contains("failed to set MSR 0x10a"), "{e}");
    }

    #[test]
    fn silent_exit_means_tcg() {
        assert!(classify(Some(ExitStatus::from_raw(0)), Duration::from_millis(100), T, b"", b"").is_err());
    }

    #[test]
    fn fixed_choice_does_not_probe() {
        let d =
            choose(AccelChoice::Tcg, Path::new("/nonexistent"), Path::new("/nonexistent"), &ProbeSettings::default());
        assert_eq!(d.accel, Accel::Tcg);
    }

    #[test]
    fn cache_round_trips() {
        let dir = std::env::temp_dir().join(format!("gpuvisor-accel-test-{}", std::process::id()));
        let path = dir.join("accel-probe-x");
        write_cache(&path, &Decision { accel: Accel::Kvm, reason: "fast".into(), cached: false });
        let d = read_cache(&path).unwrap();
        assert_eq!(d.accel, Accel::Kvm);
        assert!(d.cached && d.reason.starts_with("fast"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn cache_key_depends_on_kernel() {
        assert_ne!(cache_key(Path::new("/q"), Path::new("/k1")), cache_key(Path::new("/q"), Path::new("/k2")));
    }
}
