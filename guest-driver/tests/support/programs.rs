//! What the tests that run programs against the guest driver share: the
//! workspace (for guest-tests/ and build/), and a directory where
//! `libcuda.so.1` is this build's guest driver, for LD_LIBRARY_PATH (the
//! CUDA runtime and the guest test programs load the driver by that name).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("guest-driver has a parent").to_path_buf()
}

pub fn driver_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Cargo builds the cdylib beside the test binaries (target/*/deps)
        // and copies it up a level only on `cargo build`.
        let exe = std::env::current_exe().expect("test binary path");
        let built = exe.with_file_name("libcuda.so");
        assert!(built.exists(), "{} is missing", built.display());
        // One directory per test binary: they may run at once.
        let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("tests");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gv-driver-{stem}"));
        std::fs::create_dir_all(&dir).expect("driver dir");
        let link = dir.join("libcuda.so.1");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&built, &link).expect("libcuda.so.1 link");
        dir
    })
}
