//! gpuvisor-vm: runs a QEMU VM with a gpuvisor vGPU from a spec file and flags.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gpuvisor_vmm_config::fleet::{self, DaemonPlan, FleetOptions};
use gpuvisor_vmm_config::{
    accel, cgroup, launch, qemu, Accel, AccelChoice, Decision, FleetSpec, Overrides, ProbeSettings, VmConfig, VmSpec,
};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "gpuvisor-vm",
    version,
    about = "Run a QEMU VM whose virtio-gpu is served by a gpuvisor vhost-user backend",
    long_about = "Run a QEMU VM whose virtio-gpu is served by a gpuvisor vhost-user backend.\n\n\
        A VM is described by a TOML spec (see vmm-config/examples/demo.toml); flags override \
        its fields. The guest image comes from images/build-guest.sh. The guest's serial \
        console is copied to stdout and to console.log in the run directory; gpuvisor-vm \
        exits with the guest's exit code (the `gpuvisor-guest: exit <rc>` line), 124 on \
        timeout, 2 on an invalid spec, 1 on other failures.\n\n\
        Host frameworks in the guest: `host_paths` (--host-path) exports host directories \
        read-only over 9p; in the guest, `gpuvisor-host-run CMD` runs CMD in a tree made of \
        them (changes go to guest RAM), with the guest driver as libcuda.so.1, e.g. \
        --host-path /usr --host-path /opt/venv --run 'gpuvisor-host-run python3 /mnt/host/train.py'. \
        The guest can read everything under those directories that QEMU's user can: export \
        /usr and the Python environment, not /.\n\n\
        Backend limits: a spec's [backend.cgroup] table (--backend-cpus, --backend-memory-mib) \
        puts the backend in a cgroup of its own, /gpuvisor/<name> by default, with a CPU quota \
        (cpus), a CPU weight (cpu_weight) and a memory limit (memory_mib), on cgroup v2 or v1, \
        whichever this host has; it is removed when the VM ends. It needs root or a delegated \
        cgroup; a cgroup that cannot be made fails the launch unless the table has \
        optional = true. `check` shows the files it would write.",
    after_help = "Examples:\n  \
        gpuvisor-vm run --spec vmm-config/examples/demo.toml\n  \
        gpuvisor-vm run --kernel build/guest/vmlinuz --initramfs build/guest/initramfs.cpio.gz \\\n      \
        --backend-cmd '/usr/lib/qemu/vhost-user-gpu --socket-path={socket}' --run 'cat /proc/cpuinfo'\n  \
        gpuvisor-vm run --spec vm.toml --daemon /run/gpuvisor/gpuvisord.sock --weight 2\n  \
        gpuvisor-vm run --spec vm.toml --host-path /usr --share-dir . --run 'gpuvisor-host-run python3 /mnt/host/t.py'\n  \
        gpuvisor-vm run --spec vm.toml --backend-cpus 2 --backend-memory-mib 8192\n  \
        gpuvisor-vm check --spec vm.toml\n  \
        gpuvisor-vm fleet --spec vmm-config/examples/fleet-demo.toml\n  \
        gpuvisor-vm probe-accel"
)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the backend and QEMU, stream the console, exit with the guest's code
    Run(RunArgs),
    /// Validate a spec and print the vGPU, its QoS, the backend's cgroup, and the backend and QEMU command lines
    Check(SpecArgs),
    /// Start several VMs from one fleet file, optionally under a gpuvisord of their own
    #[command(long_about = "Start several VMs from one fleet file at once, optionally under a gpuvisord \
        of their own that schedules their vGPUs.\n\n\
        The file has an optional [daemon] table (start gpuvisord, or join one with `socket`), a \
        [defaults] table (any VM spec field, for every VM that does not set its own) and one [[vm]] \
        table per VM (VM spec fields, or `spec = \"file.toml\"` for a whole spec file); see \
        vmm-config/examples/fleet-demo.toml. Everything is validated before anything starts. Each VM \
        gets its own run directory under the fleet's, and its console is copied to stdout with \
        \"[name] \" before each line. At the end one line per VM (`fleet: a exit 0 (12.3 s)`); the \
        exit code is 0 only if every VM's guest exited 0, else the first failing VM's. Ctrl-C or \
        SIGTERM stops every VM and the daemon.")]
    Fleet(FleetArgs),
    /// Print which accelerator (KVM or TCG) `accel = "auto"` would use, and why
    ProbeAccel(ProbeArgs),
}

#[derive(Args)]
struct SpecArgs {
    /// VM spec (TOML); without it, flags alone describe the VM
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(flatten)]
    probe: ProbeFlags,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Directory for the backend socket and the logs [default: $XDG_RUNTIME_DIR/gpuvisor/<name>-<pid>, else /tmp/gpuvisor-<uid>/<name>-<pid>]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Prefix each console line with "[<name>] "
    #[arg(long)]
    prefix: bool,
}

#[derive(Args)]
struct FleetArgs {
    /// Fleet file (TOML)
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Directory for the daemon's socket and log and each VM's run directory [default: $XDG_RUNTIME_DIR/gpuvisor/fleet-<file>-<pid>, else /tmp/gpuvisor-<uid>/fleet-<file>-<pid>]
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Leave the gpuvisord the fleet started running when the fleet ends
    #[arg(long)]
    keep_daemon: bool,
    /// Validate and print what would start (as `check` does for each VM), then exit
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    probe: ProbeFlags,
}

#[derive(Args)]
struct ProbeFlags {
    /// A KVM probe boot slower than this means TCG
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    probe_timeout_s: f64,
    /// Probe again instead of using the cached result
    #[arg(long)]
    reprobe: bool,
}

#[derive(Args)]
struct ProbeArgs {
    /// Take the kernel and QEMU from this spec
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// Kernel to boot [default: the spec's, else build/guest/vmlinuz, else the newest /boot/vmlinuz-*]
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// QEMU binary or wrapper [default: the spec's, else qemu-system-x86_64 on PATH]
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    #[command(flatten)]
    probe: ProbeFlags,
}

impl ProbeFlags {
    fn settings(&self) -> anyhow::Result<ProbeSettings> {
        let timeout = Duration::try_from_secs_f64(self.probe_timeout_s).context("--probe-timeout-s")?;
        let s = ProbeSettings { timeout, ..Default::default() };
        if self.reprobe {
            // The fresh probe's result is cached again for later runs.
            if let Some(dir) = &s.cache_dir {
                remove_cached_probes(dir);
            }
        }
        Ok(s)
    }
}

fn remove_cached_probes(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("accel-probe-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn load_spec(args: &SpecArgs) -> anyhow::Result<VmSpec> {
    let mut spec = match &args.spec {
        Some(path) => VmSpec::load(path)?,
        None => VmSpec::default(),
    };
    spec.apply(&args.overrides);
    Ok(spec)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("gpuvisor_vmm_config={default_level},gpuvisor_vm={default_level}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();

    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gpuvisor-vm: error: {e:#}");
            let code = e.downcast_ref::<gpuvisor_vmm_config::Error>().map_or(1, |e| e.exit_code());
            ExitCode::from(code)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Run(args) => {
            let vm = load_spec(&args.spec)?.validate()?;
            let d = accel::choose(vm.accel, &vm.qemu, &vm.kernel, &args.spec.probe.settings()?);
            info!("accel {}: {}", d.accel, d.reason);
            let opts = launch::RunOptions { run_dir: args.run_dir, console_prefix: args.prefix };
            let outcome = launch::run(&vm, d.accel, &opts)?;
            Ok(ExitCode::from(u8::try_from(outcome.guest_rc).unwrap_or(1)))
        }
        Cmd::Check(args) => {
            let vm = load_spec(&args)?.validate()?;
            let d = accel::choose(vm.accel, &vm.qemu, &vm.kernel, &args.probe.settings()?);
            print_check(&vm, &d, &launch::default_run_dir(&vm.name));
            if let Some(socket) = &vm.vgpu.daemon {
                if !socket.exists() {
                    println!(
                        "# warning: no gpuvisord listens at {} now; the backend runs alone until one does",
                        socket.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fleet(args) => {
            let spec = FleetSpec::load(&args.spec)?;
            let run_dir = args.run_dir.clone().unwrap_or_else(|| fleet::default_run_dir(&args.spec));
            let plan = spec.plan(&run_dir)?;
            let settings = args.probe.settings()?;
            let decisions: Vec<Decision> =
                plan.vms.iter().map(|vm| accel::choose(vm.accel, &vm.qemu, &vm.kernel, &settings)).collect();
            if args.check {
                println!("# fleet spec OK: {} VMs, run dir {}", plan.vms.len(), run_dir.display());
                match &plan.daemon {
                    Some(DaemonPlan::Start(d)) => {
                        println!("# gpuvisord (started by the fleet):");
                        println!("{}", qemu::shell_quote(&d.program, &d.args(d.listen)));
                    }
                    Some(DaemonPlan::Join(s)) => {
                        println!("# gpuvisord: joins the one at {}", s.display())
                    }
                    None => println!("# gpuvisord: none; every backend runs alone"),
                }
                for (vm, d) in plan.vms.iter().zip(&decisions) {
                    println!();
                    print_check(vm, d, &run_dir.join(&vm.name));
                }
                return Ok(ExitCode::SUCCESS);
            }
            for (vm, d) in plan.vms.iter().zip(&decisions) {
                info!("{}: accel {}: {}", vm.name, d.accel, d.reason);
            }
            let accels: Vec<Accel> = decisions.iter().map(|d| d.accel).collect();
            let outcome = fleet::run(&plan, &accels, &FleetOptions { keep_daemon: args.keep_daemon })?;
            Ok(ExitCode::from(outcome.exit_code))
        }
        Cmd::ProbeAccel(args) => {
            let spec = match &args.spec {
                Some(p) => VmSpec::load(p)?,
                None => VmSpec::default(),
            };
            let kernel = args.kernel.clone().or(spec.kernel.clone()).or_else(default_kernel).context(
                "no kernel to probe with: pass --kernel or --spec (or build one with images/build-guest.sh)",
            )?;
            let qemu_arg = args
                .qemu
                .clone()
                .or(spec.qemu.clone())
                .unwrap_or_else(|| gpuvisor_vmm_config::spec::DEFAULT_QEMU.into());
            let qemu = gpuvisor_vmm_config::spec::find_program(&qemu_arg)
                .with_context(|| format!("QEMU {} not found", qemu_arg.display()))?;
            let d = accel::choose(AccelChoice::Auto, &qemu, &kernel, &args.probe.settings()?);
            println!("{}: {}", d.accel, d.reason);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `check` prints for one VM: the spec summary, its vGPU and QoS, warnings,
/// and the two command lines.
fn print_check(vm: &VmConfig, d: &Decision, run_dir: &Path) {
    let (socket, accel) = (run_dir.join("vgpu.sock"), d.accel);
    println!("# spec OK: {} ({} MiB, {} vCPUs)", vm.name, vm.memory_mib, vm.vcpus);
    println!("# accel {accel}: {}", d.reason);
    for line in vm.vgpu.describe() {
        println!("# {line}");
    }
    if !vm.host_paths.is_empty() {
        let paths: Vec<String> = vm.host_paths.iter().map(|p| p.display().to_string()).collect();
        println!("# host tree (read-only, for gpuvisor-host-run in the guest): {}", paths.join(", "));
    }
    if let Some(cfg) = &vm.cgroup {
        let optional = if cfg.optional { ", optional" } else { "" };
        println!("# backend cgroup: {}{optional}", cfg.limits);
        match cgroup::Layout::detect().and_then(|l| l.plan(cfg, &vm.name)) {
            Ok(plan) => plan.describe().iter().for_each(|l| println!("#   {l}")),
            Err(e) => println!("# warning: backend cgroup: {e}"),
        }
    }
    for w in &vm.warnings {
        println!("# warning: {w}");
    }
    println!("# backend:");
    println!("{}", qemu::shell_quote(&vm.backend.program, &vm.backend.render(&socket, &vm.name)));
    println!("# qemu:");
    println!("{}", qemu::shell_quote(&vm.qemu, &qemu::qemu_args(vm, accel, &socket)));
}

fn default_kernel() -> Option<PathBuf> {
    let built = PathBuf::from("build/guest/vmlinuz");
    if built.is_file() {
        return Some(built);
    }
    let mut boot: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .collect();
    boot.sort();
    boot.pop()
}
