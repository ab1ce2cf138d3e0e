//! Programs built against the CUDA runtime run on the guest driver: the
//! runtime's export tables, its fatbin registration and kernel launches, and
//! the unsupported-call report, through the direct transport on a sim
//! backend.
//!
//! Needs GPUVISOR_BACKEND_BIN (as the transport's tests) and the CUDA
//! runtime that scripts/fetch-cudart.sh puts under build/cudart (or
//! GPUVISOR_CUDART_DIR); without them the tests skip, unless
//! GPUVISOR_REQUIRE_CUDART=1 makes a missing runtime a failure. The
//! programs (guest-tests/gv_cudart.c, against cudart 12 and 13 shared and 13
//! static) are built here with `make cudart`.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/programs.rs"]
mod programs;

use backend::GpuvisorBackend;
use programs::{driver_dir, workspace};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The VM's memory quota in these tests: what the programs must see as the
/// device's memory.
const QUOTA_MIB: &str = "2048";

fn require_cudart() -> bool {
    std::env::var("GPUVISOR_REQUIRE_CUDART").as_deref() == Ok("1")
}

/// Where scripts/fetch-cudart.sh put the runtime and cuBLAS.
fn cudart_dir() -> PathBuf {
    std::env::var_os("GPUVISOR_CUDART_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("build/cudart"))
}

/// `make TARGET` in guest-tests/, building into `out` against `cudart`.
fn make(target: &str, out: &Path, cudart: &Path) {
    let made = Command::new("make")
        .args(["-s", "-C"])
        .arg(workspace().join("guest-tests"))
        .arg(target)
        .arg(format!("OUT={}", out.display()))
        .arg(format!("CUDART_DIR={}", cudart.display()))
        .output()
        .expect("run make");
    assert!(made.status.success(), "make {target} failed:\n{}", String::from_utf8_lossy(&made.stderr));
}

/// The directory holding gv_cudart_12, gv_cudart_13 and gv_cudart_13s,
/// built once per test run; `None` (after saying why) without a runtime.
fn programs() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cudart = cudart_dir();
            if !cudart.join("13/lib/libcudart_static.a").exists() || !cudart.join("12/lib/libcudart.so.12").exists() {
                assert!(!require_cudart(), "no CUDA runtime under {}: run scripts/fetch-cudart.sh", cudart.display());
                eprintln!("skipping: no CUDA runtime under {} (scripts/fetch-cudart.sh)", cudart.display());
                return None;
            }
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gv-cudart");
            make("cudart", &out, &cudart);
            Some(out)
        })
        .as_deref()
}

/// `program` with the environment that points it at `backend`.
fn command(program: &Path, backend: &GpuvisorBackend) -> Command {
    let mut c = Command::new(program);
    c.env("GPUVISOR_TRANSPORT", format!("direct:{}", backend.path()))
        .env("GPUVISOR_DIRECT_MEM_MIB", "64")
        .env("LD_LIBRARY_PATH", driver_dir());
    c
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The value after `key=` on the line that starts with `prefix`.
fn field<'a>(stdout: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    let line = stdout.lines().find(|l| l.starts_with(prefix))?;
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

const FLAVOURS: [(&str, &str); 3] = [("gv_cudart_12", "12080"), ("gv_cudart_13", "13000"), ("gv_cudart_13s", "13000")];

#[test]
fn runtime_programs_pass_every_check_with_shared_and_static_cudart() {
    let Some(dir) = programs() else { return };
    let Some(b) = GpuvisorBackend::spawn_with("cudart_checks", &["--quota-mib", QUOTA_MIB]) else { return };
    for (prog, runtime) in FLAVOURS {
        let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prog}-unsupported.json"));
        let _ = std::fs::remove_file(&report);
        let out = command(&dir.join(prog), &b).env("GPUVISOR_UNSUPPORTED_REPORT", &report).output().expect("run");
        let (stdout, stderr) = text(&out);
        let context = format!("{prog}:\n{stdout}\n{stderr}");
        assert!(out.status.success(), "{context}");
        assert!(!stdout.contains(": FAIL"), "{context}");
        assert!(stdout.contains("SUMMARY gv_cudart: 14/14 passed"), "{context}");
        assert!(stdout.contains(&format!("runtime {runtime} driver 13000")), "{context}");
        // The device as the runtime describes it: the VM's quota as its
        // memory, the (simulated) GPU's name and attributes.
        assert_eq!(field(&stdout, "INFO gv_cudart: prop", "total_mib"), Some(QUOTA_MIB), "{context}");
        assert_eq!(field(&stdout, "INFO gv_cudart: prop", "cc"), Some("9.0"), "{context}");
        assert_eq!(field(&stdout, "INFO gv_cudart: prop", "sms"), Some("8"), "{context}");
        assert!(stdout.contains("name=\"gpuvisor simulated GPU\""), "{context}");
        let ms: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("INFO gv_cudart: 2 ms kernel timed at "))
            .and_then(|r| r.trim_end_matches(" ms").parse().ok())
            .expect("event timing line");
        assert!(ms >= 1.0, "a 2 ms kernel timed at {ms} ms\n{context}");
        // The program's one unsupported call (and, for CUDA 13, the export
        // table gpuvisor does not know) are in the report.
        let calls = cuda::unsupported_calls::from_json(&std::fs::read_to_string(&report).expect("report written"))
            .expect("report is JSON");
        assert!(calls.contains(&("cuMemAllocManaged".to_string(), 1)), "{calls:?}");
    }
}

#[test]
fn every_name_the_runtime_looks_up_is_exported() {
    let Some(dir) = programs() else { return };
    let Some(b) = GpuvisorBackend::spawn("cudart_lookups") else { return };
    for (prog, _) in FLAVOURS {
        let out = command(&dir.join(prog), &b).env("GPUVISOR_LOG", "debug").output().expect("run");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{prog}:\n{stdout}\n{stderr}");
        let lookups = stderr.lines().filter(|l| l.contains("cuGetProcAddress(")).count();
        assert!(lookups > 400, "{prog} resolved only {lookups} names");
        // The runtime's first lookup is of the empty name, a probe of the
        // call itself; every other name must be there.
        let missing: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("cuGetProcAddress(") && l.contains("): ") && !l.contains("cuGetProcAddress(, "))
            .collect();
        assert!(missing.is_empty(), "{prog} looked up names the driver lacks:\n{}", missing.join("\n"));
    }
}

#[test]
fn the_probe_lists_the_unimplemented_entry_points_a_program_called() {
    let Some(dir) = programs() else { return };
    let Some(b) = GpuvisorBackend::spawn("cudart_probe") else { return };
    let prog = dir.join("gv_cudart_13");
    let out = command(Path::new(env!("CARGO_BIN_EXE_gpuvisor-probe")), &b)
        .args(["unsupported", "--"])
        .arg(&prog)
        .env("GPUVISOR_LOG", "0")
        .output()
        .expect("run the probe");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let listed: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("gpuvisor-probe: ")).collect();
    assert!(listed[0].contains("called 2 unimplemented entry point(s)"), "{stdout}");
    assert!(listed.iter().any(|l| l.split_whitespace().eq(["1", "cuMemAllocManaged"])), "{stdout}");
    // cudart 13.0 calls slot 1 of {f8cff951-...} once (a table served as
    // NVIDIA's driver serves it, its functions unknown) and carries on.
    assert!(listed.iter().any(|l| l.trim() == "1  cuGetExportTable {f8cff951}[1]"), "{stdout}");
}

/// cuBLAS's host side runs on the guest driver up to its first kernel: the
/// handle comes up (cuBLAS probes cluster sizes and reads its globals), and
/// an HGEMM passes cuBLASLt's half-precision heuristics, which call into the
/// driver's private table {1734dc26-...} (refused, that crashed PyTorch's
/// HGEMM on the H200), and launches its kernel in clusters of blocks
/// (`LaunchKernelEx`; refused before clusters travelled, which cuBLAS
/// answered with CUBLAS_STATUS_EXECUTION_FAILED, 13). On the sim the
/// kernels themselves cannot run: each GEMM's launch error comes at the
/// next synchronize (801).
#[test]
fn cublas_creates_its_handle_and_reaches_its_kernels_without_crashing() {
    let Some(dir) = programs() else { return };
    let cudart = cudart_dir();
    if !cudart.join("cublas13/lib/libcublas.so.13").exists() {
        assert!(!require_cudart(), "no cuBLAS under {}: run scripts/fetch-cudart.sh", cudart.display());
        eprintln!("skipping: no cuBLAS under {} (scripts/fetch-cudart.sh)", cudart.display());
        return;
    }
    make("cublas", dir, &cudart);
    let prog = dir.join("gv_cublas_13");
    let Some(b) = GpuvisorBackend::spawn("cublas") else { return };
    let out = command(&prog, &b).env("GPUVISOR_LOG", "0").output().expect("run gv_cublas_13");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "gv_cublas_13 ended with {}:\n{stdout}\n{stderr}", out.status);
    let got = |key| field(&stdout, "CUBLAS ", key).unwrap_or_else(|| panic!("no {key} in:\n{stdout}"));
    assert_eq!(got("create"), "0", "cublasCreate: {stdout}");
    assert_eq!(got("sgemm"), "0", "{stdout}");
    assert_eq!(got("sgemm_sync"), "801", "the sim cannot run cuBLAS's kernels: {stdout}");
    assert_eq!(got("hgemm"), "0", "the cluster launch goes out: {stdout}");
    assert_eq!(got("hgemm_sync"), "801", "{stdout}");
}
