//! The seccomp-bpf allowlist of gpuvisor-backend: the system calls a backend
//! makes while it serves a VM, per engine, installed on every thread of the
//! process once start-up is done.
//!
//! The sim engine's list is what the backend's tests make it call (derived
//! with strace, checked by running them under `enforce`). The cuda engine's
//! list adds, broadly, what the NVIDIA user-mode driver is known to call
//! (ioctls on /dev/nvidia*, files, NUMA policy, pinning); it has not yet run
//! on a GPU under the filter, and `--seccomp log` is its fallback.

use super::Error;
use crate::engine::EngineKind;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;

/// What a system call outside the list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The kernel kills the backend with SIGSYS.
    Enforce,
    /// The call goes ahead and the kernel logs it (SECCOMP_RET_LOG: dmesg,
    /// or the audit log); for finding what a list lacks.
    Log,
    /// No filter.
    Off,
}

impl Mode {
    /// The mode a backend runs in unless told: enforce, on both engines.
    /// The cuda list ran in log mode through every H200 script (memory
    /// overcommit, the runtime samples, PyTorch and CuPy, kernel faults and
    /// the watchdog) with driver 580.159 and the kernel logged no call
    /// outside it, beside a control that showed such calls would be logged
    /// (bench/results/h100/seccomp.md). The NVIDIA driver's calls vary by
    /// version: where a new one kills a backend with SIGSYS, `--seccomp log`
    /// names the call.
    pub fn default_for(engine: EngineKind) -> Mode {
        match engine {
            EngineKind::Sim | EngineKind::Cuda => Mode::Enforce,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Log => "log",
            Mode::Off => "off",
        }
    }
}

/// System calls by number, each allowed always or only with given arguments.
struct Allowlist(BTreeMap<i64, Vec<SeccompRule>>);

impl Allowlist {
    fn allow(&mut self, calls: &[libc::c_long]) {
        for &nr in calls {
            // An empty rule chain matches the call whatever its arguments.
            self.0.insert(nr, Vec::new());
        }
    }

    /// Allows `nr` when its argument `arg` is one of `values` (unless it is
    /// already allowed whatever its arguments).
    fn allow_arg(&mut self, nr: libc::c_long, arg: u8, values: &[u64]) -> Result<(), Error> {
        let mut rules = Vec::with_capacity(values.len());
        for &v in values {
            rules.push(SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                v,
            )?])?);
        }
        self.add(nr, rules);
        Ok(())
    }

    /// Adds `rules` (any of which lets `nr` through) to those of `nr`, unless
    /// `nr` is already allowed whatever its arguments (no rules).
    fn add(&mut self, nr: libc::c_long, rules: Vec<SeccompRule>) {
        match self.0.get_mut(&nr) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) => existing.extend(rules),
            None => {
                self.0.insert(nr, rules);
            }
        }
    }

    /// Allows `nr` when its argument `a` is `va` and its argument `b` one of
    /// `vbs` (unless it is already allowed whatever its arguments).
    fn allow_args2(&mut self, nr: libc::c_long, (a, va): (u8, u64), (b, vbs): (u8, &[u64])) -> Result<(), Error> {
        let eq = |arg, v| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v);
        let mut rules = Vec::with_capacity(vbs.len());
        for &vb in vbs {
            rules.push(SeccompRule::new(vec![eq(a, va)?, eq(b, vb)?])?);
        }
        self.add(nr, rules);
        Ok(())
    }

    /// Allows `nr` when none of `bits` is set in its argument `arg`.
    fn allow_without_bits(&mut self, nr: libc::c_long, arg: u8, bits: u64) -> Result<(), Error> {
        let rule = SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(bits),
            0,
        )?])?;
        self.0.insert(nr, vec![rule]);
        Ok(())
    }
}

/// What every backend calls while it serves: its threads (the vhost-user
/// daemon starts new ones for each frontend), memory, the vhost-user socket
/// with the memfds and eventfds it carries, epoll, time, the daemon link
/// (which reconnects over a Unix socket) and its logs.
fn serving(list: &mut Allowlist) -> Result<(), Error> {
    use libc::*;
    list.allow(&[
        // Threads and their synchronisation.
        SYS_clone,
        SYS_clone3,
        SYS_set_robust_list,
        SYS_rseq,
        SYS_futex,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_gettid,
        SYS_getpid,
        SYS_sigaltstack,
        SYS_rt_sigprocmask,
        // glibc's handler for its own real-time signals, set at the first
        // pthread_create.
        SYS_rt_sigaction,
        SYS_rt_sigreturn,
        SYS_exit,
        SYS_exit_group,
        // Memory: the allocator, thread stacks, the guest RAM the frontend
        // shares (mmap of its memfds).
        SYS_munmap,
        SYS_madvise,
        SYS_mremap,
        SYS_brk,
        // Time and sleeping (clock_gettime is normally answered by the vDSO).
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        // The kernel resumes a timed sleep or wait that a stop interrupted
        // (SIGSTOP, a debugger attaching, the cgroup freezer) through this
        // call once the process continues.
        SYS_restart_syscall,
        // Descriptors: the vhost-user socket and the fds it passes, eventfds,
        // epoll, the daemon link, stderr.
        SYS_read,
        SYS_readv,
        SYS_write,
        SYS_writev,
        SYS_close,
        SYS_fcntl,
        SYS_recvmsg,
        SYS_sendmsg,
        SYS_recvfrom,
        SYS_sendto,
        SYS_accept4,
        SYS_connect,
        SYS_shutdown,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_eventfd2,
        SYS_getrandom,
    ]);
    #[cfg(target_arch = "x86_64")]
    list.allow(&[SYS_epoll_wait]);
    // Unix sockets only: the daemon link. No network.
    list.allow_arg(SYS_socket, 0, &[AF_UNIX as u64])?;
    // Signals to this process only (abort raises SIGABRT; glibc signals its
    // own threads).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { getpid() } as u64;
    list.allow_arg(SYS_tgkill, 0, &[pid])?;
    // Read and write timeouts on the daemon link's socket.
    list.allow_args2(SYS_setsockopt, (1, SOL_SOCKET as u64), (2, &[SO_RCVTIMEO as u64, SO_SNDTIMEO as u64]))?;
    // vhost-user checks that the display socket QEMU passes
    // (SET_GPU_SOCKET) is a Unix stream socket.
    list.allow_args2(SYS_getsockopt, (1, SOL_SOCKET as u64), (2, &[SO_DOMAIN as u64, SO_TYPE as u64]))?;
    // Thread names (std names each thread it starts).
    list.allow_arg(SYS_prctl, 0, &[PR_SET_NAME as u64, PR_GET_NAME as u64])?;
    // Non-blocking and close-on-exec flags on sockets.
    list.allow_arg(SYS_ioctl, 1, &[FIONBIO, FIOCLEX])?;
    Ok(())
}

/// The sim engine computes in host memory: no new executable mappings.
fn sim(list: &mut Allowlist) -> Result<(), Error> {
    list.allow_without_bits(libc::SYS_mmap, 2, libc::PROT_EXEC as u64)?;
    list.allow_without_bits(libc::SYS_mprotect, 2, libc::PROT_EXEC as u64)?;
    Ok(())
}

/// The NVIDIA user-mode driver: ioctls on /dev/nvidia* and /dev/nvidia-uvm
/// (any request), device files opened as contexts are created, libraries
/// loaded late (the PTX JIT), the JIT cache under ~/.nv, pinned host memory,
/// NUMA policy, its helper threads and their eventfds and pipes. Broad on
/// purpose until it is verified on a GPU; still no exec, no ptrace, no
/// network sockets, no mounts or namespaces.
fn cuda(list: &mut Allowlist) -> Result<(), Error> {
    use libc::*;
    list.allow(&[
        SYS_ioctl,
        SYS_mmap,
        SYS_mprotect,
        SYS_mlock,
        SYS_mlock2,
        SYS_munlock,
        SYS_mlockall,
        SYS_munlockall,
        SYS_get_mempolicy,
        SYS_set_mempolicy,
        SYS_mbind,
        SYS_membarrier,
        SYS_openat,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_readlinkat,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_getdents64,
        SYS_lseek,
        SYS_pread64,
        SYS_pwrite64,
        SYS_fsync,
        SYS_fdatasync,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_flock,
        SYS_fchmod,
        SYS_mkdirat,
        SYS_renameat,
        SYS_renameat2,
        SYS_unlinkat,
        SYS_getcwd,
        SYS_umask,
        SYS_memfd_create,
        SYS_pipe2,
        SYS_dup,
        SYS_dup3,
        SYS_ppoll,
        SYS_pselect6,
        SYS_timerfd_create,
        SYS_timerfd_settime,
        SYS_timerfd_gettime,
        SYS_bind,
        SYS_getsockname,
        SYS_getpeername,
        SYS_getsockopt,
        SYS_setsockopt,
        SYS_sched_setaffinity,
        SYS_sched_getparam,
        SYS_sched_getscheduler,
        SYS_sched_get_priority_max,
        SYS_sched_get_priority_min,
        SYS_getpriority,
        SYS_clock_getres,
        SYS_gettimeofday,
        SYS_uname,
        SYS_sysinfo,
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_getppid,
        SYS_getrlimit,
        SYS_prlimit64,
        SYS_prctl,
    ]);
    #[cfg(target_arch = "x86_64")]
    list.allow(&[
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_readlink,
        SYS_access,
        SYS_mkdir,
        SYS_rename,
        SYS_unlink,
        SYS_pipe,
        SYS_dup2,
        SYS_poll,
        SYS_select,
    ]);
    // Netlink besides Unix sockets (device and topology queries).
    list.allow_arg(SYS_socket, 0, &[AF_NETLINK as u64])?;
    Ok(())
}

/// Calls answered with an error instead: allowed by the list (so the kill
/// does not take precedence) and refused by a second filter. The sim engine
/// opens no file; glibc's malloc opens /proc/sys/vm/overcommit_memory once
/// when it first shrinks a thread's heap, and does without it when the open
/// fails.
fn refused(engine: EngineKind) -> Vec<libc::c_long> {
    match engine {
        EngineKind::Sim => vec![libc::SYS_openat],
        EngineKind::Cuda => Vec::new(),
    }
}

/// The filters for a backend running `engine`, in `mode`, in the order to
/// install them: where the engine has calls to refuse, a filter that fails
/// them with EACCES, then the allowlist. None for `Off`.
pub fn filters(engine: EngineKind, mode: Mode) -> Result<Vec<BpfProgram>, Error> {
    let mismatch = match mode {
        Mode::Enforce => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(Vec::new()),
    };
    let mut list = Allowlist(BTreeMap::new());
    serving(&mut list)?;
    match engine {
        EngineKind::Sim => sim(&mut list)?,
        EngineKind::Cuda => cuda(&mut list)?,
    }
    let refused = refused(engine);
    list.allow(&refused);
    let arch: seccompiler::TargetArch = std::env::consts::ARCH.try_into()?;
    let mut programs = Vec::new();
    // The refusals first: the allowlist, once installed, allows no seccomp(2).
    if !refused.is_empty() {
        let rules = refused.into_iter().map(|nr| (nr, Vec::new())).collect();
        let errno = SeccompAction::Errno(libc::EACCES as u32);
        programs.push(SeccompFilter::new(rules, SeccompAction::Allow, errno, arch)?.try_into()?);
    }
    programs.push(SeccompFilter::new(list.0, mismatch, SeccompAction::Allow, arch)?.try_into()?);
    Ok(programs)
}

/// Installs the filters for `engine` on every thread of the process
/// (TSYNC), so threads started before them (the daemon link's, the
/// driver's) are confined as well as those started after, which inherit
/// them. Where two filters answer one call, the kernel takes the stricter
/// answer (kill, then error, then log, then allow).
pub fn install(engine: EngineKind, mode: Mode) -> Result<(), Error> {
    for program in filters(engine, mode)? {
        seccompiler::apply_filter_all_threads(&program)?;
    }
    Ok(())
}
