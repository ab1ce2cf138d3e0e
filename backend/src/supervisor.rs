//! The supervisor: by default `gpuvisor-backend` is a small parent process
//! that owns the listening socket and the frontend's connection, and runs
//! the serving backend as a child (the same binary, sandboxed as ever). It
//! relays vhost-user messages both ways and records the connection's
//! set-up; when the child dies (killed, crashed, or ended by a GPU fault) it
//! starts a new one, replays the set-up to it and relays on, so the
//! frontend's connection survives. QEMU 10 never reconnects a
//! vhost-user-gpu device, so this is what keeps a VM's GPU alive across a
//! backend's death. The supervisor never touches the GPU or guest memory.

use crate::fault_from_exit_code;
use crate::journal;
use crate::relay::{self, Msg};
use protocol::cuda::CUDA_ERROR_CONTEXT_IS_DESTROYED;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};
use vhost::vhost_user::Listener;

/// Hidden argument of a serving child: the listening socket to take the
/// supervisor's connection from.
pub const ARG_SERVE_FD: &str = "--serve-fd";
/// Hidden argument of a serving child: the journal's memfd.
pub const ARG_JOURNAL_FD: &str = "--journal-fd";
/// Hidden argument of a child that takes over from one that died: the error
/// the old sessions get.
pub const ARG_LOST_ERROR: &str = "--lost-error";

/// How long a replayed request may take to be answered.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child may take to end once its frontend left.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub struct Config {
    /// The arguments the serving child gets (the supervisor's own, as given).
    pub child_args: Vec<OsString>,
    /// Restarts allowed within a minute; one more death ends the supervisor.
    pub max_restarts_per_minute: u32,
    /// Serve one frontend, then exit.
    pub once: bool,
}

/// The exit status a child's end is reported with: its own code, or 128
/// plus the signal that killed it (as a shell reports it).
pub fn status_code(s: ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// The error the sessions of a child that ended with `s` get: the fault's
/// own sticky error after a fault exit, else 709 (the context is gone).
pub fn lost_error(s: ExitStatus) -> u32 {
    s.code().and_then(fault_from_exit_code).unwrap_or(CUDA_ERROR_CONTEXT_IS_DESTROYED)
}

struct Serving {
    proc: Child,
    conn: UnixStream,
}

/// One recorded set-up message.
struct Recorded {
    key: (u32, u32),
    msg: Msg,
}

/// The connection's set-up as recorded: what a new child needs to be told to
/// serve the same device state as the one that died.
#[derive(Default)]
struct SetUp {
    msgs: Vec<Recorded>,
    reply_ack: bool,
}

impl SetUp {
    /// Records `msg` once the backend has taken it (and answered it, if it
    /// answers). A message replaces the earlier one of its kind (and vring)
    /// in place, so the replay keeps the frontend's first order with the
    /// latest values.
    fn note(&mut self, msg: Msg) {
        use relay::*;
        let req = msg.request();
        let key = match req {
            SET_VRING_NUM | SET_VRING_ADDR | SET_VRING_BASE | SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR
            | SET_VRING_ENABLE => (req, msg.vring()),
            GET_FEATURES
            | SET_FEATURES
            | SET_OWNER
            | SET_MEM_TABLE
            | GET_PROTOCOL_FEATURES
            | SET_PROTOCOL_FEATURES
            | SET_BACKEND_REQ_FD
            | SET_CONFIG
            | SET_INFLIGHT_FD
            | GPU_SET_SOCKET
            | SET_STATUS => (req, 0),
            ADD_MEM_REG | REM_MEM_REG => (req, u32::MAX),
            GET_VRING_BASE => {
                // The ring stopped: a replay must not start it again until
                // the frontend does (with a new kick).
                let ring = msg.vring();
                self.msgs.retain(|r| r.key != (SET_VRING_KICK, ring));
                return;
            }
            RESET_OWNER | RESET_DEVICE => {
                self.msgs.retain(|r| {
                    matches!(r.key.0, GET_FEATURES | GET_PROTOCOL_FEATURES | SET_PROTOCOL_FEATURES | SET_OWNER)
                });
                return;
            }
            // Queries and anything else leave no state to replay.
            _ => return,
        };
        if req == SET_MEM_TABLE {
            self.msgs.retain(|r| !matches!(r.key.0, ADD_MEM_REG | REM_MEM_REG));
        }
        if let Some(ack) = msg.acks_replies() {
            self.reply_ack = ack;
        }
        match self.msgs.iter_mut().find(|r| r.key == key && key.1 != u32::MAX) {
            Some(r) => r.msg = msg,
            None => self.msgs.push(Recorded { key, msg }),
        }
    }
}

/// Why relaying to a child stopped.
enum Ended {
    /// The frontend closed its connection.
    Frontend,
    /// The child's connection ended: it died (or is dying).
    Child,
}

struct Supervisor<'a> {
    cfg: &'a Config,
    /// When each restart within the last minute happened.
    restarts: VecDeque<Instant>,
    total_restarts: u64,
}

/// Runs the supervisor on `listener` until it ends; returns the exit status
/// for the process.
pub fn run(cfg: &Config, listener: &mut Listener) -> i32 {
    let mut sup = Supervisor { cfg, restarts: VecDeque::new(), total_restarts: 0 };
    loop {
        match sup.serve_frontend(listener) {
            Ok(()) if cfg.once => return 0,
            Ok(()) => {}
            Err(code) => return code,
        }
    }
}

/// Builds a private listening socket with one connection queued from us:
/// the child accepts it as its frontend. The socket file lives in a
/// directory only this user can enter, and goes once connected.
fn private_pair() -> std::io::Result<(UnixListener, UnixStream)> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gpuvisor-sup-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("s");
    let r = (|| {
        let l = UnixListener::bind(&path)?;
        let c = UnixStream::connect(&path)?;
        Ok((l, c))
    })();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    r
}

fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; async-signal-safe.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> std::io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid slice of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

impl Supervisor<'_> {
    fn spawn(&self, journal: &OwnedFd, lost: Option<u32>) -> Result<Serving, i32> {
        let (listener, conn) = private_pair().map_err(|e| {
            error!("creating the serving child's socket: {e}");
            1
        })?;
        let (lfd, jfd) = (listener.as_raw_fd(), journal.as_raw_fd());
        let mut cmd = Command::new("/proc/self/exe");
        // The name it was started by, so that ps and /proc/PID/cmdline name
        // the child as they name the supervisor.
        if let Some(name) = std::env::args_os().next() {
            cmd.arg0(name);
        }
        cmd.args(&self.cfg.child_args).arg(ARG_SERVE_FD).arg(lfd.to_string()).arg(ARG_JOURNAL_FD).arg(jfd.to_string());
        if let Some(code) = lost {
            cmd.arg(ARG_LOST_ERROR).arg(code.to_string());
        }
        // SAFETY: the closure only calls async-signal-safe functions (fcntl,
        // prctl) on descriptor numbers and this process's own state.
        unsafe {
            cmd.pre_exec(move || {
                clear_cloexec(lfd)?;
                clear_cloexec(jfd)?;
                // The child must not outlive us (it serves our connection).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = cmd.spawn().map_err(|e| {
            error!("starting the serving child: {e}");
            1
        })?;
        info!(pid = proc.id(), restarted = lost.is_some(), "serving child started");
        Ok(Serving { proc, conn })
    }

    /// Serves one frontend from accept to disconnect, restarting children
    /// as they die. `Err` carries the status to exit with.
    fn serve_frontend(&mut self, listener: &mut Listener) -> Result<(), i32> {
        let journal = journal::create().map_err(|e| {
            error!("creating the journal: {e}");
            1
        })?;
        let mut child = self.spawn(&journal, None)?;
        let mut setup = SetUp::default();
        // Frontend requests sent to the child and not yet answered.
        let mut pending: VecDeque<Msg> = VecDeque::new();
        let mut frontend: Option<UnixStream> = None;
        loop {
            let ended = match &frontend {
                None => {
                    let mut fds = [pollfd(listener.as_raw_fd()), pollfd(child.conn.as_raw_fd())];
                    poll(&mut fds, -1).map_err(|e| {
                        error!("poll: {e}");
                        1
                    })?;
                    if fds[1].revents != 0 {
                        Ended::Child
                    } else {
                        match listener.accept() {
                            Ok(Some(s)) => {
                                info!("frontend connected");
                                frontend = Some(s);
                            }
                            Ok(None) => {}
                            Err(e) => warn!("accepting a frontend: {e}"),
                        }
                        continue;
                    }
                }
                Some(f) => match relay_until_end(f, &child.conn, &mut setup, &mut pending) {
                    Ok(e) => e,
                    Err(e) => {
                        error!("relay: {e}");
                        Ended::Frontend
                    }
                },
            };
            match ended {
                Ended::Frontend => {
                    info!("frontend disconnected; ending its serving child");
                    let _ = child.conn.shutdown(std::net::Shutdown::Both);
                    drop(frontend.take());
                    self.reap(&mut child.proc);
                    return Ok(());
                }
                Ended::Child => {
                    child = self.restart(child, &journal, &setup, &mut pending)?;
                }
            }
        }
    }

    /// Waits for a child whose frontend left, ending it if it lingers.
    fn reap(&self, proc: &mut Child) {
        let until = Instant::now() + EXIT_GRACE;
        loop {
            match proc.try_wait() {
                Ok(Some(s)) => {
                    info!(status = %s, "serving child ended");
                    return;
                }
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    warn!("the serving child did not end with its frontend; killing it");
                    let _ = proc.kill();
                    let _ = proc.wait();
                    return;
                }
            }
        }
    }

    /// The child's connection ended: collect its status, and start the next
    /// child with the set-up replayed, unless the restart budget is spent
    /// or the child never finished its start-up (`Err`: the status to exit
    /// with, the child's).
    fn restart(
        &mut self,
        mut dead: Serving,
        journal: &OwnedFd,
        setup: &SetUp,
        pending: &mut VecDeque<Msg>,
    ) -> Result<Serving, i32> {
        let _ = dead.conn.shutdown(std::net::Shutdown::Both);
        // A child whose connection ended is dying, or (one that broke the
        // protocol) ends on the connection's shutdown; one that lingers is
        // ended, so that a confused child cannot hold the VM's restart.
        let until = Instant::now() + EXIT_GRACE;
        let status = loop {
            match dead.proc.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    warn!(pid = dead.proc.id(), "the serving child left its connection but lingers; killing it");
                    let _ = dead.proc.kill();
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => {
                    error!("waiting for the serving child: {e}");
                    return Err(1);
                }
            }
        };
        let code = status_code(status);
        if !journal::child_ready(journal) {
            error!(status = code, "the serving child ended during its start-up; exiting with its status");
            return Err(code);
        }
        let now = Instant::now();
        while self.restarts.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.restarts.pop_front();
        }
        let kind = match fault_from_exit_code(code) {
            Some(cu) => format!("fault (CUDA error {cu})"),
            None if status.signal().is_some() => format!("killed by signal {}", status.signal().unwrap_or(0)),
            None => "crash".to_string(),
        };
        if self.restarts.len() >= self.cfg.max_restarts_per_minute as usize {
            error!(
                status = code, %kind, restarts_last_minute = self.restarts.len(),
                "the serving child died again; --max-restarts-per-minute is spent, exiting with its status"
            );
            return Err(code);
        }
        let backoff = match self.restarts.len() {
            0 => Duration::ZERO,
            n => (Duration::from_millis(100) * (1u32 << (n - 1).min(16) as u32)).min(MAX_BACKOFF),
        };
        std::thread::sleep(backoff);
        self.restarts.push_back(Instant::now());
        self.total_restarts += 1;
        let lost = lost_error(status);
        warn!(
            status = code, %kind, restart = self.total_restarts, restarts_last_minute = self.restarts.len(),
            backoff_ms = backoff.as_millis() as u64, lost_error = lost,
            "the serving child died; starting a new one (the frontend's connection stays)"
        );
        let started = Instant::now();
        let child = self.spawn(journal, Some(lost))?;
        match replay(&child.conn, setup, pending) {
            Ok(()) => {
                info!(
                    restart = self.total_restarts,
                    replayed = setup.msgs.len(),
                    resent = pending.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "set-up replayed to the new child"
                );
                Ok(child)
            }
            Err(e) => {
                warn!("replaying the set-up failed: {e}");
                // It died (or hangs) during the replay: treat as another death.
                let _ = child.conn.shutdown(std::net::Shutdown::Both);
                self.restart(child, journal, setup, pending)
            }
        }
    }
}

/// Tells a new child the recorded set-up (consuming its answers), sends the
/// requests the old one never answered (their answers go to the frontend as
/// usual), and kicks every started queue so that the child looks at the
/// requests the guest already queued.
fn replay(conn: &UnixStream, setup: &SetUp, pending: &VecDeque<Msg>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(REPLAY_TIMEOUT))?;
    let mut reply_ack = false;
    for r in &setup.msgs {
        if let Some(ack) = r.msg.acks_replies() {
            reply_ack = ack;
        }
        relay::send(conn, &r.msg)?;
        if r.msg.answered(reply_ack) {
            match relay::recv(conn)? {
                Some(m) if m.flags() & relay::FLAG_REPLY != 0 => {}
                Some(m) => {
                    return Err(std::io::Error::other(format!(
                        "the child sent request {} during the replay",
                        m.request()
                    )))
                }
                None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }
    conn.set_read_timeout(None)?;
    for m in pending {
        relay::send(conn, m)?;
    }
    for r in setup.msgs.iter().filter(|r| r.key.0 == relay::SET_VRING_KICK) {
        if let Some(fd) = r.msg.fds.first() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes to the queue's kick eventfd we hold.
            unsafe { libc::write(fd.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
        }
    }
    Ok(())
}

/// Relays between the frontend and the child until one of them ends.
fn relay_until_end(
    frontend: &UnixStream,
    child: &UnixStream,
    setup: &mut SetUp,
    pending: &mut VecDeque<Msg>,
) -> std::io::Result<Ended> {
    loop {
        let mut fds = [pollfd(frontend.as_raw_fd()), pollfd(child.as_raw_fd())];
        poll(&mut fds, -1)?;
        if fds[1].revents != 0 {
            match relay::recv(child) {
                Ok(Some(m)) => {
                    if m.flags() & relay::FLAG_REPLY == 0 {
                        warn!(request = m.request(), "the serving child sent a request on the frontend's connection");
                        return Ok(Ended::Child);
                    }
                    if let Err(e) = relay::send(frontend, &m) {
                        info!("writing to the frontend: {e}");
                        return Ok(Ended::Frontend);
                    }
                    if let Some(req) = pending.pop_front() {
                        setup.note(req);
                    }
                }
                Ok(None) | Err(_) => return Ok(Ended::Child),
            }
            continue;
        }
        if fds[0].revents != 0 {
            let m = match relay::recv(frontend) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(Ended::Frontend),
                Err(e) => {
                    warn!("reading from the frontend: {e}");
                    return Ok(Ended::Frontend);
                }
            };
            if let Some(ack) = m.acks_replies() {
                setup.reply_ack = ack;
            }
            let answered = m.answered(setup.reply_ack);
            let sent = relay::send(child, &m);
            if answered {
                pending.push_back(m);
            } else {
                setup.note(m);
            }
            if sent.is_err() {
                return Ok(Ended::Child);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(req: u32, payload: &[u8]) -> Msg {
        let mut hdr = [0u8; relay::HDR_BYTES];
        hdr[0..4].copy_from_slice(&req.to_le_bytes());
        hdr[4..8].copy_from_slice(&1u32.to_le_bytes());
        hdr[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        Msg { hdr, payload: payload.to_vec(), fds: Vec::new() }
    }

    #[test]
    fn the_set_up_keeps_the_first_order_with_the_latest_values() {
        use relay::*;
        let mut s = SetUp::default();
        s.note(msg(SET_FEATURES, &1u64.to_le_bytes()));
        s.note(msg(SET_VRING_NUM, &[0, 0, 0, 0, 0, 1, 0, 0]));
        s.note(msg(SET_VRING_KICK, &0u64.to_le_bytes()));
        s.note(msg(SET_VRING_NUM, &[1, 0, 0, 0, 0, 1, 0, 0]));
        s.note(msg(SET_FEATURES, &3u64.to_le_bytes()));
        s.note(msg(GET_VRING_BASE, &[0, 0, 0, 0, 0, 0, 0, 0]));
        s.note(msg(17, &[])); // GET_QUEUE_NUM: nothing to replay
        let keys: Vec<_> = s.msgs.iter().map(|r| r.key).collect();
        assert_eq!(keys, vec![(SET_FEATURES, 0), (SET_VRING_NUM, 0), (SET_VRING_NUM, 1)]);
        assert_eq!(s.msgs[0].msg.u64(), 3);
        s.note(msg(SET_PROTOCOL_FEATURES, &(1u64 << 3).to_le_bytes()));
        assert!(s.reply_ack);
    }

    #[test]
    fn a_fault_status_names_its_error_and_anything_else_is_709() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(lost_error(ExitStatus::from_raw(80 << 8)), 700);
        assert_eq!(lost_error(ExitStatus::from_raw(81 << 8)), 719);
        assert_eq!(lost_error(ExitStatus::from_raw(9)), 709, "SIGKILL");
        assert_eq!(lost_error(ExitStatus::from_raw(1 << 8)), 709);
        assert_eq!(status_code(ExitStatus::from_raw(9)), 137);
    }
}
