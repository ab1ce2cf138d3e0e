//! gpuvisor-backend's sandbox: the seccomp filter the binary installs stops
//! what a backend never needs (a network socket, exec, ptrace) and lets its
//! own calls through; the binary under it keeps its daemon link and serves
//! frontend after frontend; it closes the descriptors it inherited.
//!
//! Each filter test runs the filter in a child process: this test binary
//! again, with only `seccomp_child` selected and GPUVISOR_SECCOMP_CHILD
//! naming the engine, the mode and the call to try. The child installs the
//! filter with the function gpuvisor-backend uses, writes a marker, makes the
//! call, and writes what it returned.

mod common;

use gpuvisor_backend::engine::EngineKind;
use gpuvisor_backend::sandbox::seccomp::{self, Mode};
use protocol::control::{read_msg, BackendMsg};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
            "open" => {
                let fd = libc::open(c"/proc/sys/vm/overcommit_memory".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
                } else {
                    fd as i64
                }
            }
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

/// What the child wrote its call returned.
fn returned(out: &str) -> Option<i64> {
    out.lines().find_map(|l| l.strip_prefix(RETURNED)).and_then(|rc| rc.trim().parse().ok())
}

#[test]
fn enforce_fails_a_file_open_of_the_sim_engine_with_eacces() {
    // glibc's malloc opens a /proc file when it first shrinks a thread's
    // heap (seen in a VM run), and does without it if the open fails.
    let (status, out) = child("sim", "enforce", "open");
    assert!(status.success(), "the child ended with {status}: {out}");
    assert_eq!(returned(&out), Some(-(libc::EACCES as i64)), "{out}");
    let (status, out) = child("cuda", "enforce", "open");
    assert!(status.success() && returned(&out).is_some_and(|fd| fd >= 0), "the cuda engine opens files: {out}");
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

/// gpuvisor-backend (sim engine) on a socket of its own, killed when dropped.
struct Backend {
    child: std::process::Child,
    socket: PathBuf,
}

impl Backend {
    /// Starts the binary with `extra` arguments; `prepare` adjusts the
    /// command (descriptors to pass) before it starts. Returns once the
    /// socket exists.
    fn start(tag: &str, extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Backend {
        let socket = std::env::temp_dir().join(format!("gv-sandbox-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuvisor-backend"));
        // One process, so that the process started is the sandboxed one
        // (under the supervisor it is the serving child: tests/supervisor.rs).
        cmd.args(["--no-restart", "--engine", "sim", "--sim-memory-mib", "64", "--vm-name", tag, "--socket-path"])
            .arg(&socket)
            .args(extra)
            .stderr(Stdio::null());
        prepare(&mut cmd);
        let child = cmd.spawn().expect("start gpuvisor-backend");
        let start = Instant::now();
        while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Backend { child, socket }
    }

    fn status_field(&self, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string()).unwrap_or_default()
    }

    /// Waits until start-up is done: the filter is in place.
    fn wait_sandboxed(&self) {
        let start = Instant::now();
        while self.status_field("Seccomp:") != "2" {
            assert!(start.elapsed() < Duration::from_secs(10), "the backend never installed its filter");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[test]
fn a_sandboxed_backend_keeps_its_daemon_link_and_takes_frontend_after_frontend() {
    let daemon = common::socket_path("sandbox");
    let listener = UnixListener::bind(&daemon).unwrap();
    let mut b = Backend::start("link", &["--seccomp", "enforce", "--daemon", daemon.to_str().unwrap()], |_| {});
    let (mut peer, hello) = common::Peer::accept(&listener, common::settings(64));
    assert!(matches!(hello, BackendMsg::Hello { reconnect: false, .. }), "{hello:?}");
    b.wait_sandboxed();
    // The link's stats thread reports under the filter.
    let stats: BackendMsg = read_msg(&mut peer.reader).unwrap();
    assert!(matches!(stats, BackendMsg::Stats(_)), "{stats:?}");
    // Frontends that connect and go: each ends one vhost-user daemon and the
    // backend starts the next (new threads, epoll, eventfds) under the filter.
    for _ in 0..3 {
        drop(UnixStream::connect(&b.socket).expect("connect to the backend"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The daemon goes away: the link reconnects (a new Unix socket).
    drop(peer);
    let (_peer, hello) = common::Peer::accept(&listener, common::settings(64));
    assert!(matches!(hello, BackendMsg::Hello { reconnect: true, .. }), "{hello:?}");
    assert!(b.running(), "the backend died under its filter");
    assert_eq!(b.status_field("Seccomp:"), "2");
}

#[test]
fn a_sandboxed_backend_stopped_and_continued_goes_on_serving() {
    // A stop (SIGSTOP, a debugger attaching, the cgroup freezer) interrupts
    // the threads' timed sleeps, which the kernel resumes through
    // restart_syscall once the process continues.
    let daemon = common::socket_path("sandbox-stop");
    let listener = UnixListener::bind(&daemon).unwrap();
    let mut b = Backend::start("stop", &["--seccomp", "enforce", "--daemon", daemon.to_str().unwrap()], |_| {});
    // The link's threads sleep with timeouts, the ones a stop interrupts.
    let (_peer, _) = common::Peer::accept(&listener, common::settings(64));
    b.wait_sandboxed();
    let pid = b.child.id() as libc::pid_t;
    for _ in 0..3 {
        // SAFETY: signals to the backend this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(b.running(), "the backend died after a stop: {:?}", b.child.try_wait());
    // Still serving: it takes a frontend. (Whether the link to this stand-in
    // daemon, which answers nothing, survives the stops is not the point.)
    drop(UnixStream::connect(&b.socket).expect("connect to the backend"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.running(), "the backend died after a stop: {:?}", b.child.try_wait());
}

#[test]
fn the_backend_closes_descriptors_it_inherited() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds`; both ends close on exec, so only the
    // descriptor the child dups below survives into it.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = (fds[0], fds[1]);
    const INHERITED: i32 = 9;
    let mut b = Backend::start("fds", &[], |cmd| {
        // SAFETY: dup2 is async-signal-safe and touches only descriptors;
        // the copy at INHERITED does not close on exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(w, INHERITED) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    // SAFETY: our write end; the child holds its own copy.
    unsafe { libc::close(w) };
    b.wait_sandboxed();
    // Once the backend closed its copy, the pipe has no writer left.
    let mut pfd = libc::pollfd { fd: r, events: libc::POLLIN, revents: 0 };
    // SAFETY: polls one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "the backend still holds the inherited pipe");
    assert_ne!(pfd.revents & libc::POLLHUP, 0);
    let pipe = std::fs::read_link(format!("/proc/self/fd/{r}")).unwrap();
    let fd_dir = format!("/proc/{}/fd", b.child.id());
    for fd in std::fs::read_dir(&fd_dir).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(target, pipe, "the backend still holds the inherited pipe");
    }
    assert_eq!(std::fs::read_link(format!("{fd_dir}/0")).unwrap(), PathBuf::from("/dev/null"), "stdin");
    assert!(b.running());
    // SAFETY: our read end.
    unsafe { libc::close(r) };
}

#[test]
fn a_backend_given_a_user_serves_as_that_user_with_no_other_groups() {
    if !running_as_root() {
        eprintln!("skipping: changing user needs root");
        return;
    }
    let mut b = Backend::start("user", &["--user", "65534:65534"], |_| {});
    b.wait_sandboxed();
    assert_eq!(b.status_field("Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(b.status_field("Gid:"), "65534\t65534\t65534\t65534");
    assert_eq!(b.status_field("Groups:"), "");
    drop(UnixStream::connect(&b.socket).expect("connect to the backend"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.running(), "the backend died after changing user");
}

/// Whether this test runs as root (it can then start a backend that drops to another user).
fn running_as_root() -> bool {
    // SAFETY: reads this process's effective uid.
    unsafe { libc::geteuid() == 0 }
}
