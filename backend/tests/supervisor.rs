//! The supervisor (issue 8, vhost-user reconnection), against the real
//! binary with the sim engine and a vhost-user frontend of our own: a
//! serving child killed with SIGKILL is replaced within a second while the
//! frontend's connection stays and answers; restarts are bounded per
//! minute; `--no-restart` serves in one process that takes the connection
//! with it when it dies; the child, not the supervisor, is sandboxed.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;

struct Backend {
    proc: Child,
    socket: PathBuf,
}

impl Backend {
    fn start(tag: &str, extra: &[&str]) -> Backend {
        let socket = std::env::temp_dir().join(format!("gv-sup-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let proc = Command::new(env!("CARGO_BIN_EXE_gpuvisor-backend"))
            .args(["--engine", "sim", "--sim-memory-mib", "64", "--vm-name", tag, "--socket-path"])
            .arg(&socket)
            .args(extra)
            .stderr(if std::env::var_os("GPUVISOR_BACKEND_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("start gpuvisor-backend");
        let start = Instant::now();
        while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        Backend { proc, socket }
    }

    fn frontend(&self) -> Frontend {
        let fe = Frontend::connect(&self.socket, 2).expect("connect to the backend");
        fe.set_owner().expect("SET_OWNER");
        fe
    }

    /// The serving child's pid, once it has one that is not `old` (within
    /// `timeout`).
    fn child_other_than(&self, old: Option<u32>, timeout: Duration) -> Option<u32> {
        let until = Instant::now() + timeout;
        loop {
            let pid = self.proc.id();
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            if let Some(k) = kids.split_whitespace().filter_map(|k| k.parse().ok()).find(|&k| Some(k) != old) {
                if seccomp_mode(k) == "2" {
                    return Some(k);
                }
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.proc.try_wait() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn seccomp_mode(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|v| v.trim().to_string()).unwrap_or_default()
}

fn kill(pid: u32) {
    // SAFETY: sends SIGKILL to a child process of the backend under test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

#[test]
fn a_killed_child_is_replaced_within_a_second_and_the_frontend_keeps_its_connection() {
    let b = Backend::start("kill", &[]);
    let fe = b.frontend();
    let features = fe.get_features().expect("GET_FEATURES");
    let first = b.child_other_than(None, Duration::from_secs(10)).expect("a sandboxed serving child");
    assert_eq!(seccomp_mode(b.proc.id()), "0", "the supervisor itself runs no filter: it is not the sandboxed part");
    // The child kept what the supervisor gave it on purpose (its
    // connection's socket, the journal) when it closed what it inherited.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{first}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(fds.iter().filter(|p| p.contains("memfd:gpuvisor-journal")).count(), 1, "{fds:?}");
    for round in 1..=3 {
        let old = b.child_other_than(None, Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        kill(old);
        let new = b.child_other_than(Some(old), Duration::from_secs(1));
        let took = t.elapsed();
        assert!(new.is_some(), "round {round}: no new child within a second of the kill");
        eprintln!("round {round}: a new sandboxed child in {took:?}");
        // The same connection answers, from the new child.
        assert_eq!(fe.get_features().expect("GET_FEATURES after the restart"), features, "round {round}");
    }
    assert_ne!(first, b.child_other_than(None, Duration::from_secs(1)).unwrap());
}

#[test]
fn restarts_are_bounded_per_minute_and_then_the_supervisor_exits_with_the_childs_status() {
    let mut b = Backend::start("bound", &["--max-restarts-per-minute", "2"]);
    let fe = b.frontend();
    fe.get_features().unwrap();
    let mut old = None;
    for _ in 0..2 {
        let pid = b.child_other_than(old, Duration::from_secs(5)).expect("a serving child");
        kill(pid);
        old = Some(pid);
    }
    let pid = b.child_other_than(old, Duration::from_secs(5)).expect("the child of the second restart");
    assert!(b.exit_within(Duration::from_millis(300)).is_none(), "two restarts are within the budget");
    kill(pid);
    let s = b.exit_within(Duration::from_secs(5)).expect("the supervisor exits once the budget is spent");
    assert_eq!(s.code(), Some(128 + libc::SIGKILL), "the child's status, as a shell reports a signal: {s}");
}

#[test]
fn with_no_restart_one_process_serves_and_its_death_ends_the_connection() {
    let mut b = Backend::start("no-restart", &["--no-restart"]);
    let fe = b.frontend();
    fe.get_features().unwrap();
    let pid = b.proc.id();
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    assert_eq!(kids.trim(), "", "no serving child: the process serves itself");
    assert_eq!(seccomp_mode(pid), "2", "and is itself sandboxed");
    kill(pid);
    let s = b.exit_within(Duration::from_secs(5)).expect("it ends");
    assert_eq!(s.signal(), Some(libc::SIGKILL));
    assert!(fe.get_features().is_err(), "the frontend's connection went with it");
}

#[test]
fn a_child_that_fails_its_start_up_ends_the_supervisor_at_once_with_its_status() {
    let mut b = Backend::start("bad-start", &["--user", "no-such-user-gpuvisor"]);
    let s = b.exit_within(Duration::from_secs(10)).expect("the supervisor exits");
    assert_eq!(s.code(), Some(1), "{s}");
}

#[test]
fn when_the_frontend_leaves_the_supervisor_serves_the_next_one_with_a_fresh_child() {
    let b = Backend::start("next", &[]);
    let fe = b.frontend();
    fe.get_features().unwrap();
    let first = b.child_other_than(None, Duration::from_secs(5)).unwrap();
    drop(fe);
    let second = b.child_other_than(Some(first), Duration::from_secs(5)).expect("a fresh child for the next frontend");
    let fe = b.frontend();
    fe.get_features().expect("the next frontend is served");
    assert_eq!(b.child_other_than(None, Duration::from_secs(1)), Some(second));
}

#[test]
fn a_request_the_dead_child_never_answered_is_answered_by_the_next() {
    let b = Backend::start("pending", &[]);
    let fe = b.frontend();
    let features = fe.get_features().unwrap();
    let child = b.child_other_than(None, Duration::from_secs(10)).unwrap();
    // SAFETY: stops the backend's own child; it is killed below.
    assert_eq!(unsafe { libc::kill(child as i32, libc::SIGSTOP) }, 0);
    // A stop lands when each thread next passes through the kernel, which a
    // loaded machine can delay past the request below: wait until it has.
    assert!(wait_stopped(child, Duration::from_secs(5)), "the child stops");
    let asked = std::thread::spawn(move || (fe.get_features(), fe));
    std::thread::sleep(Duration::from_millis(200));
    if asked.is_finished() {
        let (answer, _) = asked.join().unwrap();
        panic!("a stopped child answered: {answer:?}");
    }
    kill(child);
    let (answer, _fe) = asked.join().unwrap();
    assert_eq!(answer.expect("the frontend's request in flight is answered"), features);
    assert!(b.child_other_than(Some(child), Duration::from_secs(1)).is_some());
}

/// Whether every thread of `pid` is stopped (state T) within `timeout`.
fn wait_stopped(pid: u32, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        let states: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.filter_map(|t| t.ok())
                    .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                    // The state follows the command name's closing parenthesis.
                    .filter_map(|st| {
                        st.rsplit_once(") ").map(|(_, rest)| rest.chars().next().unwrap_or('?').to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !states.is_empty() && states.iter().all(|s| s == "T") {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
