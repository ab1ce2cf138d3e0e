//! The guest driver's diagnostics: to stderr, each distinct message once, so
//! a program that calls an unsupported function in a loop is not flooded.
//! `GPUVISOR_LOG=0` silences them; `GPUVISOR_LOG=debug` adds debug lines.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

fn level() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("GPUVISOR_LOG").as_deref() {
        Ok("0") | Ok("off") => 0,
        Ok("debug") => 2,
        _ => 1,
    })
}

fn once(msg: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(|| Mutex::new(HashSet::new())).lock().unwrap_or_else(|p| p.into_inner());
    seen.insert(msg.to_string())
}

/// A warning, printed the first time it occurs.
pub fn warn(msg: &str) {
    if level() >= 1 && once(msg) {
        eprintln!("gpuvisor libcuda: {msg}");
    }
}

/// A debug line, printed each time when GPUVISOR_LOG=debug.
pub fn debug(msg: &str) {
    if level() >= 2 {
        eprintln!("gpuvisor libcuda: {msg}");
    }
}

/// Logs, once per name, that a CUDA entry point (or an option of one) is not
/// implemented, and counts the call for the unsupported-call report.
pub fn unsupported(name: &str) {
    crate::unsupported_calls::record(name);
    warn(&format!("{name} is not supported yet; returning CUDA_ERROR_NOT_SUPPORTED"));
}

/// Logs, once per name, that a private entry point whose meaning is not
/// known was answered the way NVIDIA's driver answered it in a native trace,
/// and counts it in the unsupported-call report so the imitation stays
/// visible.
pub fn imitated(name: &str) {
    crate::unsupported_calls::record(name);
    warn(&format!("{name}: answered as NVIDIA's driver does in a native trace (its meaning is not known)"));
}
