//! gpuvisor-backend's sandbox: the seccomp filter the binary installs stops
//! what a backend never needs (a network socket, exec, ptrace) and lets its
//! own calls through.
//!
//! Each filter test runs the filter in a child process: this test binary
//! again, with only `seccomp_child` selected and GPUVISOR_SECCOMP_CHILD
//! naming the engine, the mode and the call to try. The child installs the
//! filter with the function gpuvisor-backend uses, writes a marker, makes the
//! call, and writes what it returned.

use gpuvisor_backend::engine::EngineKind;
use gpuvisor_backend::sandbox::seccomp::{self, Mode};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

const CHILD_ENV: &str = "GPUVISOR_SECCOMP_CHILD";
const INSTALLED: &str = "filter installed";
const RETURNED: &str = "call returned";

fn say(s: &str) {
    // SAFETY: writes `s`'s bytes to stdout; a raw write, so that nothing
    // but the call under test runs between the marker and the call.
    unsafe { libc::write(1, s.as_ptr().cast(), s.len()) };
}

/// The call named `call`, made directly; its raw return value.
fn try_call(call: &str) -> i64 {
    // SAFETY: each call gets valid arguments (NUL-terminated strings, null
    // argument vectors where allowed); the child exits right after.
    unsafe {
        match call {
            "socket-inet" => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
            "socket-unix" => libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64,
            "execve" => {
                let prog = c"/bin/true";
                let argv = [prog.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) as i64
            }
            "ptrace" => libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0),
            other => panic!("unknown call {other}"),
        }
    }
}

/// Not a test of its own: the body of the child processes the tests below
/// start. Without GPUVISOR_SECCOMP_CHILD it does nothing.
#[test]
fn seccomp_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split(':').collect();
    let [engine, mode, call] = parts[..] else { panic!("bad {CHILD_ENV}={spec}") };
    let engine = match engine {
        "sim" => EngineKind::Sim,
        "cuda" => EngineKind::Cuda,
        other => panic!("unknown engine {other}"),
    };
    let mode = <Mode as clap::ValueEnum>::from_str(mode, false).expect("a --seccomp mode");
    // A killed child dumps no core into the source tree.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: sets this process's core size limit from a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    seccomp::install(engine, mode).expect("install the filter");
    say(&format!("{INSTALLED}\n"));
    let rc = try_call(call);
    say(&format!("{RETURNED} {rc}\n"));
    // Straight out, past the test harness, whose calls are not the backend's.
    // SAFETY: ends the process.
    unsafe { libc::_exit(0) };
}

/// Runs `call` in a child under the `engine` filter in `mode`: how the child
/// ended and what it wrote.
fn child(engine: &str, mode: &str, call: &str) -> (ExitStatus, String) {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "seccomp_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{engine}:{mode}:{call}"))
        .output()
        .expect("start the child");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn assert_killed(engine: &str, call: &str) {
    let (status, out) = child(engine, "enforce", call);
    assert!(out.contains(INSTALLED), "{engine} {call}: the child did not get past the filter's installation: {out}");
    assert!(!out.contains(RETURNED), "{engine} {call}: the forbidden call returned: {out}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{engine} {call}: the child ended with {status}, not SIGSYS: {out}"
    );
}

#[test]
fn enforce_kills_a_backend_that_opens_a_network_socket() {
    assert_killed("sim", "socket-inet");
    assert_killed("cuda", "socket-inet");
}

#[test]
fn enforce_kills_a_backend_that_execs_a_program() {
    assert_killed("sim", "execve");
    assert_killed("cuda", "execve");
}

#[test]
fn enforce_kills_a_backend_that_asks_to_be_traced() {
    assert_killed("sim", "ptrace");
    assert_killed("cuda", "ptrace");
}

#[test]
fn enforce_lets_a_unix_socket_through() {
    // The daemon link reconnects over a Unix socket.
    for engine in ["sim", "cuda"] {
        let (status, out) = child(engine, "enforce", "socket-unix");
        assert!(status.success(), "{engine}: the child ended with {status}: {out}");
        let rc: i64 = out
            .lines()
            .find_map(|l| l.strip_prefix(RETURNED))
            .and_then(|rc| rc.trim().parse().ok())
            .unwrap_or_else(|| panic!("{engine}: no return value: {out}"));
        assert!(rc >= 0, "{engine}: socket(AF_UNIX) failed under the filter: {out}");
    }
}

#[test]
fn log_lets_a_forbidden_call_through() {
    let (status, out) = child("sim", "log", "socket-inet");
    assert!(status.success(), "the child ended with {status}: {out}");
    assert!(out.contains(INSTALLED) && out.contains(RETURNED), "{out}");
    let (status, out) = child("sim", "off", "execve");
    // exec replaces the child with /bin/true, which says nothing.
    assert!(status.success() && !out.contains(RETURNED), "without a filter: {status}: {out}");
}
