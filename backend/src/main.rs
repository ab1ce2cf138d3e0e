//! gpuvisor-backend: the vhost-user vGPU of one VM. Parses arguments, picks
//! the engine, and serves the vhost-user socket; the logic lives in the
//! library.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gpuvisor_backend::device::GpuBackend;
use gpuvisor_backend::engine::cuda::CudaEngine;
use gpuvisor_backend::engine::host_swap::{Prefault, SwapConfig, MAX_THREADS};
use gpuvisor_backend::engine::sim::{SimEngine, SwapRates};
use gpuvisor_backend::engine::Engine;
use gpuvisor_backend::grants::{DaemonLink, Registration};
use gpuvisor_backend::heartbeat::Heartbeat;
use gpuvisor_backend::journal::Journal;
use gpuvisor_backend::sandbox::{fds, seccomp, user};
use gpuvisor_backend::supervisor;
use gpuvisor_backend::virtio_gpu::GpuDevice;
use gpuvisor_backend::vm::Vm;
use gpuvisor_backend::watchdog::Watchdog;
use gpuvisor_backend::{fault_exit_code, fault_from_exit_code};
use protocol::control::{QosClass, QosRequest};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use tracing::{error, info, info_span, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineChoice {
    /// cuda if an NVIDIA driver and GPU are present, else sim.
    Auto,
    /// The host GPU through the NVIDIA driver (libcuda.so.1, loaded at run time).
    Cuda,
    /// The CPU simulator: built-in kernels, device memory in host RAM.
    Sim,
}

/// The vGPU of one virtual machine: a vhost-user virtio-gpu device that runs the
/// guest's CUDA calls on the host GPU.
///
/// Start one per VM and point QEMU at its socket:
///   gpuvisor-backend --socket-path /run/gpuvisor/vm1.sock --quota-mib 8192 &
///   qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=4G,share=on -numa node,memdev=mem \
///     -chardev socket,id=vgpu,path=/run/gpuvisor/vm1.sock -device vhost-user-gpu-pci,chardev=vgpu
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=gpuvisor_backend=debug) for more.
///
/// A kernel fault (illegal address, trap, ...) makes NVIDIA's driver fail every later
/// call of the process, in every context. The guest gets the error as natively, every
/// session of the VM gets it afterwards, and the serving process then exits with a
/// status that names it (80 illegal address, 81 launch failure, 82 launch timeout,
/// 83 illegal instruction, 84 misaligned address, 85 invalid address space, 86 invalid
/// PC, 87 uncorrectable ECC, 88 unknown, 89 device assert, 90 hardware stack error); a
/// fresh process gets a working context. Other VMs, in their own backends, see nothing.
///
/// By default the process started is a small supervisor that keeps QEMU's connection
/// (QEMU never reconnects a vhost-user GPU) and runs the serving backend as its child:
/// when the child dies (a fault, the watchdog, a crash, SIGKILL) a new one takes over
/// within a second, the guest processes that had a session get an error for every
/// later call (709 CUDA_ERROR_CONTEXT_IS_DESTROYED, or the fault's own), and new ones
/// work. --no-restart serves in one process instead.
#[derive(Debug, Parser)]
#[command(name = "gpuvisor-backend", version, verbatim_doc_comment)]
struct Args {
    /// Listen on this Unix socket path (created; an existing socket file is replaced).
    #[arg(long, value_name = "PATH", conflicts_with = "fd", required_unless_present_any = ["fd", "print_capabilities", "print_engine"])]
    socket_path: Option<String>,

    /// Use this already-listening socket file descriptor (as libvirt passes it).
    #[arg(long, value_name = "FD")]
    fd: Option<i32>,

    /// Print the vhost-user capabilities as JSON and exit.
    #[arg(long)]
    print_capabilities: bool,

    /// Print the engine --engine would use and its device name, then exit.
    #[arg(long)]
    print_engine: bool,

    /// Which engine runs the guest's CUDA work.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,

    /// GPU memory the VM may use, in MiB; the guest sees a device of this size.
    /// 0 means the whole device.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    quota_mib: u64,

    /// Round the GPU timings the guest reads (cuEventElapsedTime) down to
    /// multiples of this many microseconds, a side-channel mitigation
    /// (docs/threat-model.md): fine timings of its own kernels tell a guest
    /// about the other VMs' use of the GPU. 0 keeps them exact. Costs the
    /// guest's own profiling its precision; in-kernel clocks are not
    /// affected.
    #[arg(long, value_name = "US", default_value_t = 0)]
    timer_resolution_us: u64,

    /// Name of the VM, used in logs.
    #[arg(long, value_name = "NAME", default_value = "vm")]
    vm_name: String,

    /// CUDA device ordinal for the cuda engine.
    #[arg(long, value_name = "N", default_value_t = 0)]
    device: u32,

    /// Memory of the simulated device, in MiB (sim engine).
    #[arg(long, value_name = "MIB", default_value_t = 16384)]
    sim_memory_mib: u64,

    /// Share one simulated GPU with every sim backend that names the same
    /// file (created if missing, e.g. /dev/shm/gpuvisor-sim-gpu): their
    /// kernels take turns as on one real GPU, so time slicing between VMs
    /// shows in their throughput. Without it each backend simulates a GPU of
    /// its own (sim engine)
    #[arg(long, value_name = "PATH", env = "GPUVISOR_SIM_SHARED_GPU")]
    sim_shared_gpu: Option<std::path::PathBuf>,

    /// MiB per second the simulated GPU swaps memory out to host RAM at for
    /// gpuvisord's memory broker (0: at once), e.g. to try a schedule with
    /// an H200's slow swap-outs into fresh host pages (sim engine)
    #[arg(long, value_name = "MIB_PER_S", default_value_t = 0)]
    sim_swap_out_mib_s: u64,

    /// MiB per second the simulated GPU restores swapped-out memory at (0:
    /// at once) (sim engine)
    #[arg(long, value_name = "MIB_PER_S", default_value_t = 0)]
    sim_swap_in_mib_s: u64,

    /// Threads that prepare (fault in and pin) host memory while device
    /// memory is swapped out to it for gpuvisord's memory broker (cuda
    /// engine). A swap-out into fresh pages runs at the rate these threads
    /// fault them in and the driver pins them (one registration at a time
    /// per process, about half the copy rate on an H200 host, where 16
    /// threads did no better than 8); 0 prepares on the serving thread.
    #[arg(long, value_name = "N", env = "GPUVISOR_SWAP_THREADS", default_value_t = SwapConfig::default().threads,
        value_parser = clap::value_parser!(u32).range(0..=MAX_THREADS as i64))]
    swap_threads: u32,

    /// Host memory, in MiB, kept pinned after a restore for the next
    /// swap-out, which then runs at the copy rate from the start (cuda
    /// engine). Beyond it a swap-out runs at the rate host memory can be
    /// pinned as it goes (at most ~26 GB/s a process on an H200 host, about
    /// half the copy rate); as much as the VM may have evicted makes every
    /// swap-out run at the copy rate, at that much host RAM held for good.
    #[arg(long, value_name = "MIB", env = "GPUVISOR_SWAP_CACHE_MIB", default_value_t = SwapConfig::default().cache_mib)]
    swap_cache_mib: u64,

    /// How the swap threads bring a chunk's fresh pages in before pinning
    /// it (cuda engine): a write to each page, or one
    /// madvise(MADV_POPULATE_WRITE) a chunk. On an H200 host writes were
    /// 4x faster with 8 threads (populating holds the memory map's lock);
    /// `scripts/h100/probe-evict.py prefault` measures both on a host.
    #[arg(long, value_enum, value_name = "HOW", env = "GPUVISOR_SWAP_PREFAULT", default_value = "touch")]
    swap_prefault: Prefault,

    /// Keep gpuvisord's swap pool chunks mapped here after giving them back
    /// (cuda engine, with `gpuvisord --swap-pool-mib`): when the pool leases
    /// one here again, the swap-out copies into it at once instead of
    /// importing and mapping it first. On an H200 host whole-VM swap-outs
    /// ran at 50 GB/s with it and 40 without, against the 55 GB/s copy rate
    /// (bench/results/h100/memory.json). Host RAM stays the pool's; what
    /// grows is this process's address space. The chunks' data is other
    /// VMs' while they are leased to other backends, so this process could
    /// read it (see the pool's trust note in docs/architecture.md); false
    /// unmaps each chunk as it goes back
    #[arg(long, env = "GPUVISOR_SWAP_POOL_KEEP_MAPS", value_name = "BOOL", default_value_t = true,
        action = clap::ArgAction::Set)]
    swap_pool_keep_maps: bool,

    /// Register with gpuvisord on this socket and submit GPU work only under
    /// its grants. Without it the VM runs alone (the GPU's own time slicing
    /// shares it with other processes). If the daemon is unreachable or goes
    /// away, the backend runs alone and keeps retrying.
    #[arg(long, value_name = "PATH", env = "GPUVISOR_DAEMON")]
    daemon: Option<std::path::PathBuf>,

    /// QoS class to ask gpuvisord for: guaranteed (a reserved share, never
    /// lent away while the VM is busy), burstable (a share plus idle
    /// capacity) or best-effort (idle capacity only). Default: the daemon's
    /// stored setting, else burstable.
    #[arg(long, value_name = "CLASS")]
    class: Option<QosClass>,

    /// Weight to ask for: the VM's share is its weight over the sum of the
    /// busy VMs' weights (1 to 10000).
    #[arg(long, value_name = "W")]
    weight: Option<u32>,

    /// Priority to ask for (-20 to 20): higher is served sooner, never beyond its share.
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    priority: Option<i32>,

    /// Time slice to ask for, in milliseconds (default: the GPU's).
    #[arg(long, value_name = "MS")]
    slice_ms: Option<f64>,

    /// With --daemon: GPU work, in microseconds of estimated GPU time, that
    /// the backend keeps queued on the GPU at most while it holds a grant.
    /// Kernels are not preempted, so a VM that preempts this one waits up to
    /// this long; smaller values cost throughput when kernels are short.
    #[arg(long, value_name = "US", default_value_t = 200)]
    max_queued_us: u64,

    /// With --daemon: swapped-out memory comes back at most this many MiB
    /// per step (each step asked of gpuvisord) when the VM's resident limit
    /// does not already cover all of it
    #[arg(long, value_name = "MIB", default_value_t = gpuvisor_backend::grants::RESTORE_STEP >> 20)]
    restore_step_mib: u64,

    /// End this backend when GPU work it submitted makes no progress for this
    /// many milliseconds: a kernel that runs that long, or never ends. Ending
    /// the process is the only way to stop a kernel; the driver then tears the
    /// VM's context down, and no other VM is touched. The guest gets
    /// CUDA_ERROR_LAUNCH_TIMEOUT, as natively under a display watchdog, and
    /// the backend exits with status 82. A VM that is idle, or waits for a
    /// grant from gpuvisord, is never ended. Trade-off: a legitimate kernel
    /// that runs longer is ended too (set it well above the VM's longest
    /// kernel), and the check costs an event per GPU operation (cuda
    /// engine). 0 turns it off.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    watchdog_ms: u64,

    /// Append each request's latency (arrival at the backend to completion on
    /// the GPU, of batches the guest waits for) in ns to this file.
    #[arg(long, value_name = "PATH")]
    latency_log: Option<std::path::PathBuf>,

    /// Add one to a word in every guest session's control buffer this often
    /// (in milliseconds, at most protocol::HEARTBEAT_PERIOD_MS, 500), from a
    /// thread of its own, and say so in the capset (CAPSET_F_HEARTBEAT): a
    /// guest waiting for a reply fails its call when the word stops moving
    /// for GPUVISOR_HEARTBEAT_TIMEOUT_S (a backend stopped, or hung outside
    /// the GPU), rather than waiting for ever; a long kernel keeps it moving.
    /// 0 turns it off.
    #[arg(long, value_name = "MS", default_value_t = 250,
        value_parser = clap::value_parser!(u64).range(0..=protocol::HEARTBEAT_PERIOD_MS))]
    heartbeat_ms: u64,

    /// Exit when the first frontend disconnects instead of waiting for the next.
    #[arg(long)]
    once: bool,

    /// Serve in this one process, as before the supervisor: a backend that
    /// dies takes the frontend's connection with it (QEMU does not
    /// reconnect a vhost-user-gpu device; the guest's GPU calls then hang),
    /// and a fault ends the process with its status for whoever restarts it.
    /// Default: a small supervisor process owns the socket and the
    /// frontend's connection and runs the serving backend as a child; when
    /// the child dies (killed, crashed, or ended by a GPU fault or the
    /// watchdog) it starts a new one within a second and the VM keeps its
    /// GPU: the guest processes that had a session get an error
    /// (CUDA_ERROR_CONTEXT_IS_DESTROYED, 709, or the fault's own error) for
    /// every later call, and new processes work. The supervisor never
    /// opens the GPU.
    #[arg(long)]
    no_restart: bool,

    /// Restarts of the serving child allowed within a minute; when the
    /// child dies once more, the supervisor exits with the child's status
    /// (128 + the signal's number for a signal).
    #[arg(long, value_name = "N", default_value_t = 5)]
    max_restarts_per_minute: u32,

    /// A serving child of the supervisor: the listening socket with the
    /// supervisor's connection queued.
    #[arg(long = "serve-fd", value_name = "FD", hide = true)]
    serve_fd: Option<i32>,

    /// A serving child of the supervisor: the journal's memfd.
    #[arg(long = "journal-fd", value_name = "FD", hide = true, requires = "serve_fd")]
    journal_fd: Option<i32>,

    /// A serving child that takes over from one that died: the error the
    /// old sessions get.
    #[arg(long = "lost-error", value_name = "CODE", hide = true, requires = "journal_fd")]
    lost_error: Option<u32>,

    /// The seccomp filter installed once start-up is done (engine ready,
    /// socket listening, daemon link started): enforce kills the backend
    /// (SIGSYS) on a system call outside its engine's allowlist; log lets
    /// such a call through and the kernel logs it (dmesg: "audit: type=1326
    /// ... syscall=N"); off installs none. Default: enforce (the cuda list
    /// was proven with NVIDIA driver 580; another driver version that makes
    /// a call outside it kills the backend with SIGSYS, and --seccomp log
    /// names the call).
    #[arg(long, value_enum, value_name = "MODE")]
    seccomp: Option<seccomp::Mode>,

    /// Run as this user once start-up is done (the engine has opened the
    /// GPU, the socket listens): NAME, UID, NAME:GID or UID:GID (default
    /// group: the user's own); supplementary groups are dropped. The daemon
    /// socket (--daemon) must then be connectable by that user, for the
    /// link reconnects. Without it a backend started as root stays root
    /// (with a warning).
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// Accepted for compatibility with the vhost-user-gpu conventions; gpuvisor
    /// always offers its 3D (VIRGL) contexts.
    #[arg(long, hide = true)]
    virgl: bool,

    /// Accepted for compatibility with the vhost-user-gpu conventions; ignored.
    #[arg(long, value_name = "PATH", hide = true)]
    render_node: Option<String>,
}

fn main() {
    // Before anything is opened: what was inherited, to close after start-up.
    let inherited = fds::Inherited::note();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let supervised = args.serve_fd.is_none() && !args.no_restart && !args.print_capabilities && !args.print_engine;
    let r = if supervised { supervise(&args, inherited) } else { run(args, inherited).map(|()| 0) };
    match r {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            error!("{e:#}");
            eprintln!("gpuvisor-backend: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The frontend's listening socket, from --socket-path or --fd.
fn listen(args: &Args) -> Result<Listener> {
    Ok(match (&args.socket_path, args.fd) {
        (Some(path), None) => Listener::new(path, true).with_context(|| format!("listening on {path}"))?,
        (None, Some(fd)) => {
            if fd < 0 {
                bail!("--fd {fd} is not a file descriptor");
            }
            // SAFETY: the caller passed us this listening socket's descriptor
            // (libvirt convention); we take ownership of it here, once.
            unsafe { Listener::from_raw_fd(fd) }
        }
        _ => bail!("give exactly one of --socket-path and --fd"),
    })
}

/// The default: a supervisor that owns the socket and the frontend's
/// connection, with the serving backend as its child (`supervisor.rs`).
/// Returns the status to exit with.
fn supervise(args: &Args, inherited: fds::Inherited) -> Result<i32> {
    let span = info_span!("vm", name = %args.vm_name);
    let _enter = span.enter();
    let mut listener = listen(args)?;
    inherited.close(&args.fd.into_iter().collect::<Vec<_>>()).context("closing inherited descriptors")?;
    let cfg = supervisor::Config {
        child_args: std::env::args_os().skip(1).collect(),
        max_restarts_per_minute: args.max_restarts_per_minute,
        once: args.once,
    };
    info!(
        socket = args.socket_path.as_deref().unwrap_or("(fd)"),
        max_restarts_per_minute = args.max_restarts_per_minute,
        "supervising the serving backend"
    );
    Ok(supervisor::run(&cfg, &mut listener))
}

fn make_engine(args: &Args) -> Result<Box<dyn Engine>> {
    let sim = || -> Result<Box<dyn Engine>> {
        let mut e = SimEngine::new(args.sim_memory_mib << 20);
        if let Some(path) = &args.sim_shared_gpu {
            e.share_gpu(path).with_context(|| format!("--sim-shared-gpu {}", path.display()))?;
        }
        e.set_swap_rates(SwapRates {
            out_bytes_per_s: args.sim_swap_out_mib_s.saturating_mul(1 << 20),
            in_bytes_per_s: args.sim_swap_in_mib_s.saturating_mul(1 << 20),
        });
        Ok(Box::new(e))
    };
    let cuda = || -> Result<Box<dyn Engine>> {
        let mut e = CudaEngine::new(args.device).map_err(|e| anyhow::anyhow!("cuda engine: {e}"))?;
        e.set_swap_config(SwapConfig {
            threads: args.swap_threads,
            cache_mib: args.swap_cache_mib,
            prefault: args.swap_prefault,
            keep_pool_maps: args.swap_pool_keep_maps,
        });
        // gpuvisord started with --swap-pool-mib listens beside its backend
        // socket; without one there the backend pins its own host memory.
        e.set_swap_pool(args.daemon.as_deref().map(protocol::swap_pool::pool_socket_path));
        e.open_swap_store();
        Ok(Box::new(e))
    };
    match args.engine {
        EngineChoice::Sim => sim(),
        EngineChoice::Cuda => cuda(),
        EngineChoice::Auto => match CudaEngine::probe() {
            Ok(name) => {
                info!("NVIDIA GPU found ({name}); using the cuda engine");
                cuda()
            }
            Err(why) => {
                info!("no usable NVIDIA GPU ({why}); using the sim engine");
                sim()
            }
        },
    }
}

/// How gpuvisord names the device: the GPU's UUID, or `sim`.
fn gpu_id(engine: &dyn Engine) -> String {
    match engine.kind() {
        gpuvisor_backend::engine::EngineKind::Sim => "sim".to_string(),
        gpuvisor_backend::engine::EngineKind::Cuda => {
            let u = engine.device_info().uuid;
            let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
            format!("GPU-{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
        }
    }
}

fn run(args: Args, inherited: fds::Inherited) -> Result<()> {
    if args.print_capabilities {
        println!("{{\n  \"type\": \"gpu\",\n  \"features\": []\n}}");
        return Ok(());
    }
    if args.print_engine {
        let engine = make_engine(&args)?;
        println!("{} {}", engine.kind().as_str(), engine.device_info().name);
        return Ok(());
    }
    if args.render_node.is_some() {
        warn!("--render-node is ignored: gpuvisor does not render graphics");
    }
    let span = info_span!("vm", name = %args.vm_name);
    let _enter = span.enter();
    let run_as = args.user.as_deref().map(user::User::resolve).transpose().context("--user")?;
    let engine = make_engine(&args)?;
    let gpu = gpu_id(engine.as_ref());
    let kind = engine.kind();
    let engine_kind = kind.as_str();
    let mut vm = Vm::new(&args.vm_name, engine, args.quota_mib << 20);
    vm.set_timer_resolution_ns(args.timer_resolution_us.saturating_mul(1000));
    if let Some(path) = &args.latency_log {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        vm.counters().set_latency_log(f);
    }
    if args.watchdog_ms > 0 {
        let name = args.vm_name.clone();
        let limit = std::time::Duration::from_millis(args.watchdog_ms);
        let wd = Watchdog::start(
            &args.vm_name,
            limit,
            Box::new(move |stuck| {
                let code = fault_exit_code(protocol::cuda::CUDA_ERROR_LAUNCH_TIMEOUT);
                error!(vm = %name, stuck_ms = stuck.as_millis() as u64, status = code, "watchdog: exiting");
                exit_now(code)
            }),
        )
        .context("starting the watchdog thread")?;
        vm.set_watchdog(wd);
        info!(limit_ms = args.watchdog_ms, "watchdog on");
    }
    // Kept alive for the life of the process; its thread reconnects as needed.
    let _link = match &args.daemon {
        Some(socket) => {
            let slice_us = match args.slice_ms {
                Some(ms) if !(ms.is_finite() && ms > 0.0) => {
                    bail!("--slice-ms must be a positive number of milliseconds")
                }
                Some(ms) => Some((ms * 1000.0).round() as u64),
                None => None,
            };
            let reg = Registration {
                socket: socket.clone(),
                vm: args.vm_name.clone(),
                engine: engine_kind.to_string(),
                gpu,
                quota_bytes: vm.usage().quota,
                requested: QosRequest { class: args.class, weight: args.weight, priority: args.priority, slice_us },
                max_queued: std::time::Duration::from_micros(args.max_queued_us.max(1)),
            };
            let link = DaemonLink::start(reg, vm.counters());
            let mut gate = link.gate();
            gate.set_restore_step(args.restore_step_mib.max(1) << 20);
            vm.set_gate(gate);
            Some(link)
        }
        None => {
            if args.class.is_some() || args.weight.is_some() || args.priority.is_some() || args.slice_ms.is_some() {
                warn!("--class, --weight, --priority and --slice-ms apply only with --daemon; running alone");
            }
            None
        }
    };
    if args.heartbeat_ms > 0 {
        let hb = Heartbeat::start(&args.vm_name, std::time::Duration::from_millis(args.heartbeat_ms))
            .context("starting the heartbeat thread")?;
        vm.set_heartbeat(hb);
    }
    if let Some(fd) = args.journal_fd {
        // SAFETY: the supervisor passed us the journal's memfd; we take
        // ownership of it here, once.
        let journal = Journal::open(unsafe { OwnedFd::from_raw_fd(fd) }).context("mapping the journal")?;
        let state = journal.read();
        vm.set_journal(journal);
        if let Some(code) = args.lost_error {
            match state {
                Ok(state) => {
                    vm.recover(state, code);
                }
                Err(e) => error!("the journal of the backend that died is unusable ({e}); starting with no state"),
            }
        }
    }
    let backend = Arc::new(GpuBackend::new(GpuDevice::new(vm)));
    if args.lost_error.is_some() {
        backend.resume_after_restart();
    }
    let name = args.vm_name.clone();
    backend.on_context_lost(Box::new(move |cu| {
        let code = fault_exit_code(cu);
        debug_assert_eq!(fault_from_exit_code(code), Some(cu));
        error!(vm = %name, cu, status = code, "the GPU context is lost; exiting, for a fresh process and context");
        exit_now(code)
    }));
    if let Some(link) = &_link {
        let ev = EventFd::new(libc::EFD_NONBLOCK).context("creating the memory wake-up eventfd")?;
        link.set_waker(ev.try_clone().context("cloning an eventfd")?);
        backend.set_memory_event(ev);
    }

    let (mut listener, keep): (Listener, Vec<i32>) = match args.serve_fd {
        // A child of the supervisor: its connection is queued on this socket.
        // SAFETY: the supervisor passed us this listening socket; we take
        // ownership of it here, once.
        Some(fd) => (unsafe { Listener::from_raw_fd(fd) }, std::iter::once(fd).chain(args.journal_fd).collect()),
        None => (listen(&args)?, args.fd.into_iter().collect()),
    };
    // Start-up is done: the engine, the listening socket and the daemon link
    // exist. From here on the backend holds only what it opened itself (and
    // what the supervisor gave it: its connection's socket and the journal,
    // which stays mapped).
    let closed = inherited.close(&keep).context("closing inherited descriptors")?;
    if !closed.is_empty() {
        info!(?closed, "closed inherited descriptors");
    }
    match &run_as {
        Some(u) => {
            u.become_user().context("--user")?;
            info!(uid = u.uid, gid = u.gid, "running as an unprivileged user");
        }
        None if user::is_root() => warn!("running as root: pass --user to serve as an unprivileged user"),
        None => {}
    }
    let mode = args.seccomp.unwrap_or(seccomp::Mode::default_for(kind));
    seccomp::install(kind, mode).context("--seccomp")?;
    info!(mode = mode.as_str(), engine = engine_kind, "seccomp filter installed");
    backend.with_device(|d| d.vm.journal_ready());
    info!(socket = args.socket_path.as_deref().unwrap_or("(fd)"), "waiting for the VMM");
    let served = serve(&args, &backend, &mut listener);
    if mode != seccomp::Mode::Off {
        // Dropping the listener unlinks its socket file, a call the filter
        // does not allow; the next start (or gpuvisor-vm) replaces the file.
        std::mem::forget(listener);
    }
    served
}

/// Ends the process at once with `code`. The driver's own exit handlers are
/// skipped: they would tear down contexts that are lost, or wait for a
/// kernel that never ends; the kernel releases the process's GPU state.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; nothing after it runs.
    unsafe { libc::_exit(code) }
}

/// Serves one frontend after another (only the first with --once).
fn serve(args: &Args, backend: &Arc<GpuBackend>, listener: &mut Listener) -> Result<()> {
    loop {
        let mut daemon =
            VhostUserDaemon::new("gpuvisor-vgpu".into(), backend.clone(), GuestMemoryAtomic::new(Default::default()))
                .map_err(|e| anyhow::anyhow!("creating the vhost-user daemon: {e:?}"))?;
        for handler in daemon.get_epoll_handlers() {
            backend.register_memory_event(&handler).context("watching the memory wake-up")?;
        }
        daemon.start(listener).map_err(|e| anyhow::anyhow!("accepting a frontend: {e:?}"))?;
        info!("frontend connected");
        let r = daemon.wait();
        backend.disconnected();
        // A plain disconnect was logged with the state it released.
        match r {
            Ok(()) | Err(vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::Disconnected)) => {}
            Err(e) => warn!("connection ended: {e:?}"),
        }
        // A supervisor's child serves the one connection it was given.
        if args.once || args.serve_fd.is_some() {
            return Ok(());
        }
    }
}
