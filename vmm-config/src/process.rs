//! Child processes that never outlive gpuvisor-vm: each is killed when its guard is
//! dropped, and by the kernel (PR_SET_PDEATHSIG) if gpuvisor-vm itself dies.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// Makes `cmd`'s child die with us and, if `own_group`, puts it in its own process
/// group so that a terminal's Ctrl-C reaches only gpuvisor-vm, which then stops the
/// children in order.
pub fn harden(cmd: &mut Command, own_group: bool) {
    if own_group {
        cmd.process_group(0);
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // prctl(2), which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd`'s child independent of gpuvisor-vm: a session of its own (no
/// terminal signals, no hangup) and no death signal, so it outlives us.
pub fn detach(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setsid(2), which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running child that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ChildGuard {
    pub what: &'static str,
    pub child: Child,
    status: Option<ExitStatus>,
    /// Left running when dropped (see `release`).
    released: bool,
}

impl ChildGuard {
    pub fn new(what: &'static str, child: Child) -> ChildGuard {
        ChildGuard { what, child, status: None, released: false }
    }

    /// Leaves the child running: dropping the guard no longer stops it.
    pub fn release(mut self) -> u32 {
        self.released = true;
        self.pid()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(s) => self.status = s,
                Err(e) => warn!("waiting for {}: {e}", self.what),
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        debug!("stopping {} (pid {})", self.what, self.pid());
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_for(grace) {
            return Some(s);
        }
        warn!("{} (pid {}) ignored SIGTERM for {:?}; killing it", self.what, self.pid(), grace);
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(s) => {
                self.status = Some(s);
                Some(s)
            }
            Err(e) => {
                warn!("reaping {}: {e}", self.what);
                None
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet (its
        // status is unknown), so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.released {
            self.stop(Duration::from_secs(3));
        }
    }
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP so the run loop can clean up; see `signalled`.
pub fn catch_termination_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores to an atomic, which is
        // async-signal-safe; the sigaction struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The termination signal received since `catch_termination_signals`, if any.
pub fn signalled() -> Option<i32> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
