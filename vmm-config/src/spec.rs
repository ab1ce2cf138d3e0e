//! The VM spec (TOML), the command-line overrides on top of it, and validation into a
//! `VmConfig` that names every file by absolute path and is ready to launch.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use protocol::control::{QosClass, MAX_PRIORITY, MAX_SLICE_US, MAX_WEIGHT, MIN_PRIORITY, MIN_SLICE_US, MIN_WEIGHT};
use serde::Deserialize;

use crate::cgroup::{self, CgroupConfig, Limits};
use crate::Error;

/// Kernel command line limit on x86-64 (COMMAND_LINE_SIZE), including the final NUL.
const MAX_CMDLINE: usize = 2047;
const MIN_MEMORY_MIB: u64 = 128;
const MAX_VCPUS: u32 = 255;
/// 9p mount tag of `share_dir`; the guest's /init mounts it at /mnt/host.
pub const SHARE_TAG: &str = "hostshare";
/// Most `host_paths` a VM may export (one virtio-9p-pci device each).
pub const MAX_HOST_PATHS: usize = 8;
/// The host's kernel file systems: never worth exporting, and in
/// gpuvisor-host-run's tree these are the guest's own.
const GUEST_OWNED_DIRS: &[&str] = &["/proc", "/sys", "/dev"];
/// Host directories whose export gives the guest host secrets or state to read.
const SENSITIVE_DIRS: &[&str] = &["/", "/etc", "/root", "/home", "/var", "/srv", "/boot"];
/// Name of the backend binary looked up next to gpuvisor-vm and on PATH.
pub const DEFAULT_BACKEND: &str = "gpuvisor-backend";
/// Longest path a Unix socket address holds (sun_path, without the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM if a quick boot probe shows a KVM guest runs, else TCG.
    #[default]
    Auto,
    /// KVM, no probe (-cpu host)
    Kvm,
    /// TCG emulation, multi-threaded (-cpu max)
    Tcg,
}

/// Which engine the gpuvisor backend runs guest work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The backend picks: cuda if a GPU is usable, else sim
    #[default]
    Auto,
    /// Run guest work on the host GPU
    Cuda,
    /// Simulate the GPU on the host CPU
    Sim,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Auto => "auto",
            Engine::Cuda => "cuda",
            Engine::Sim => "sim",
        })
    }
}

/// The `[backend]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendSpec {
    /// gpuvisor-backend binary; default: next to gpuvisor-vm, else on PATH.
    pub binary: Option<PathBuf>,
    pub engine: Engine,
    /// GPU memory quota the VM sees, in MiB; default: the backend's own.
    pub quota_mib: Option<u64>,
    /// Arguments appended to the backend's command line.
    pub extra_args: Vec<String>,
    /// Whole backend command line instead of the gpuvisor-backend one, for other
    /// vhost-user-gpu backends; `{socket}` and `{name}` are substituted.
    pub command: Option<Vec<String>>,
    /// How long to wait for the backend to create its socket.
    pub start_timeout_s: u64,
    /// gpuvisord's backend socket: the backend registers there (--daemon) and
    /// submits GPU work only under the daemon's grants. Unset: the VM runs alone.
    pub daemon: Option<PathBuf>,
    /// QoS class to ask gpuvisord for; unset: the daemon's stored setting, else burstable.
    pub class: Option<QosClass>,
    /// Weight to ask for (1 to 10000): the VM's share is its weight over the busy VMs' sum.
    pub weight: Option<u32>,
    /// Priority to ask for (-20 to 20): higher is served sooner, never beyond its share.
    pub priority: Option<i32>,
    /// Time slice to ask for, in milliseconds (0.5 to 10000); unset: the GPU's.
    pub slice_ms: Option<f64>,
    /// `[backend.cgroup]`: a cgroup of the backend's own with CPU and memory
    /// limits. Without the table the backend runs in gpuvisor-vm's cgroup.
    pub cgroup: Option<CgroupSpec>,
}

impl Default for BackendSpec {
    fn default() -> Self {
        BackendSpec {
            binary: None,
            engine: Engine::Auto,
            quota_mib: None,
            extra_args: Vec::new(),
            command: None,
            start_timeout_s: 10,
            daemon: None,
            class: None,
            weight: None,
            priority: None,
            slice_ms: None,
            cgroup: None,
        }
    }
}

/// The `[backend.cgroup]` table: the cgroup the backend runs in and its limits
/// (vmm-config/src/cgroup.rs). The backend's host memory (the sim engine's device
/// memory, the cuda engine's driver and staging buffers, what the guest's writes
/// fault in) and its CPU time are the guest's to drive, so they are bounded here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupSpec {
    /// CPU time the backend may use, in CPUs (0.01 to 1024; 1.5 = 150 ms every
    /// 100 ms): cpu.max on cgroup v2, cpu.cfs_quota_us on v1.
    pub cpus: Option<f64>,
    /// Share of contended CPU time against the other cgroups beside it (1 to
    /// 10000, 100 is everyone's default): cpu.weight on v2, cpu.shares on v1.
    pub cpu_weight: Option<u32>,
    /// Host memory the backend may use, RAM and swap together, in MiB (32 up to
    /// the host's RAM); past it the kernel's OOM killer ends the backend, and
    /// with it the VM. memory.max on v2, memory.limit_in_bytes on v1.
    pub memory_mib: Option<u64>,
    /// The cgroup the VM's cgroup `<parent>/<name>` goes in: from each
    /// hierarchy's root if it starts with `/`, else under the cgroup gpuvisor-vm
    /// itself runs in (a delegated one: systemd Delegate=yes, a container).
    pub parent: String,
    /// If the cgroup cannot be made (no permission, a read-only cgroup file
    /// system, no controller), warn and run the backend without it instead of
    /// failing the launch.
    pub optional: bool,
}

impl Default for CgroupSpec {
    fn default() -> Self {
        CgroupSpec {
            cpus: None,
            cpu_weight: None,
            memory_mib: None,
            parent: cgroup::DEFAULT_PARENT.to_string(),
            optional: false,
        }
    }
}

impl CgroupSpec {
    /// Checks the table field by field; the config it describes if it is valid.
    fn check(&self, errs: &mut FieldErrors, warnings: &mut Vec<String>) -> Option<CgroupConfig> {
        let before = errs.0.len();
        if let Some(c) = self.cpus {
            let (lo, hi) = (cgroup::MIN_CPUS, cgroup::MAX_CPUS);
            if !(c.is_finite() && (lo..=hi).contains(&c)) {
                errs.push("backend.cgroup.cpus", format!("{c} is not between {lo} and {hi}"));
            } else if let Some(n) = host_cpus().filter(|&n| c > n as f64) {
                warnings.push(format!(
                    "backend.cgroup.cpus: {c} is more than this host's {n} CPUs, so it does not limit the backend here"
                ));
            }
        }
        if let Some(w) = self.cpu_weight {
            let (lo, hi) = (cgroup::MIN_CPU_WEIGHT, cgroup::MAX_CPU_WEIGHT);
            if !(lo..=hi).contains(&w) {
                errs.push("backend.cgroup.cpu_weight", format!("{w} is not between {lo} and {hi}"));
            }
        }
        if let Some(m) = self.memory_mib {
            let lo = cgroup::MIN_MEMORY_MIB;
            if m < lo {
                errs.push(
                    "backend.cgroup.memory_mib",
                    format!("{m} MiB is below the minimum of {lo} MiB (an idle backend alone takes about 9 MiB)"),
                );
            } else if let Some(host) = host_memory_mib().filter(|&h| m > h) {
                errs.push("backend.cgroup.memory_mib", format!("{m} MiB exceeds this host's {host} MiB of RAM"));
            }
        }
        if self.cpus.is_none() && self.cpu_weight.is_none() && self.memory_mib.is_none() {
            errs.push(
                "backend.cgroup",
                "sets no limit; set cpus, cpu_weight or memory_mib, or remove the table".to_string(),
            );
        }
        if let Some(msg) = cgroup::parent_error(&self.parent) {
            errs.push("backend.cgroup.parent", msg);
        }
        (errs.0.len() == before).then(|| CgroupConfig {
            parent: self.parent.clone(),
            limits: Limits { cpus: self.cpus, cpu_weight: self.cpu_weight, memory_mib: self.memory_mib },
            optional: self.optional,
        })
    }
}

impl BackendSpec {
    /// The QoS fields as asked for in the spec.
    pub fn qos(&self) -> Qos {
        Qos { class: self.class, weight: self.weight, priority: self.priority, slice_ms: self.slice_ms }
    }
}

/// The QoS a backend asks gpuvisord for. Unset fields take the daemon's stored
/// setting for the VM, else its default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Qos {
    pub class: Option<QosClass>,
    pub weight: Option<u32>,
    pub priority: Option<i32>,
    pub slice_ms: Option<f64>,
}

impl Qos {
    pub fn is_empty(&self) -> bool {
        *self == Qos::default()
    }

    /// The spec fields that are set, by name (`backend.weight`, ...).
    fn set_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.class.is_some() {
            v.push("backend.class");
        }
        if self.weight.is_some() {
            v.push("backend.weight");
        }
        if self.priority.is_some() {
            v.push("backend.priority");
        }
        if self.slice_ms.is_some() {
            v.push("backend.slice_ms");
        }
        v
    }

    fn check(&self, errs: &mut FieldErrors) {
        if let Some(w) = self.weight {
            if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&w) {
                errs.push("backend.weight", format!("{w} is not between {MIN_WEIGHT} and {MAX_WEIGHT}"));
            }
        }
        if let Some(p) = self.priority {
            if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p) {
                errs.push("backend.priority", format!("{p} is not between {MIN_PRIORITY} and {MAX_PRIORITY}"));
            }
        }
        if let Some(msg) = self.slice_ms.and_then(slice_ms_error) {
            errs.push("backend.slice_ms", msg);
        }
    }

    /// gpuvisor-backend's flags for the fields that are set.
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(c) = self.class {
            a.extend(["--class".to_string(), c.to_string()]);
        }
        if let Some(w) = self.weight {
            a.extend(["--weight".to_string(), w.to_string()]);
        }
        if let Some(p) = self.priority {
            // `=` so that a negative value cannot be read as a flag.
            a.push(format!("--priority={p}"));
        }
        if let Some(ms) = self.slice_ms {
            a.extend(["--slice-ms".to_string(), ms.to_string()]);
        }
        a
    }
}

impl fmt::Display for Qos {
    /// `class burstable, weight 2, priority 0, slice 5 ms`, with `daemon's` for
    /// unset fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_daemon<T: fmt::Display>(v: Option<T>, unit: &str) -> String {
            v.map_or_else(|| "the daemon's".to_string(), |v| format!("{v}{unit}"))
        }
        write!(
            f,
            "class {}, weight {}, priority {}, slice {}",
            or_daemon(self.class, ""),
            or_daemon(self.weight, ""),
            or_daemon(self.priority, ""),
            or_daemon(self.slice_ms, " ms")
        )
    }
}

/// A VM spec as written in TOML. Relative paths are relative to the spec file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmSpec {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    /// Appended to the guest kernel command line.
    pub cmdline_extra: String,
    /// Host directory the guest sees read-only at /mnt/host (9p, tag `hostshare`).
    pub share_dir: Option<PathBuf>,
    /// Host directories exported read-only (9p, tags `hostfs0`, `hostfs1`, ...) that
    /// the guest mounts under /host at their own paths; `gpuvisor-host-run CMD` runs
    /// CMD in a tree made of them, with the guest driver as libcuda.so.1, so that the
    /// host's Python and frameworks run in the guest. Absolute paths, e.g.
    /// ["/usr", "/opt/venv"]; "/" exports everything QEMU's user can read.
    pub host_paths: Vec<PathBuf>,
    pub accel: AccelChoice,
    pub backend: BackendSpec,
    /// Wall-clock limit for the whole run; 0 means none.
    pub timeout_s: u64,
    /// Command the guest runs (gpuvisor.run); default: every test in /opt/gpuvisor/tests.
    pub run: Option<String>,
    /// Start a shell on the console instead of powering off (gpuvisor.shell=1).
    pub shell: bool,
    /// QEMU binary; default: qemu-system-x86_64 on PATH.
    pub qemu: Option<PathBuf>,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            name: "vm".to_string(),
            memory_mib: 1024,
            vcpus: 2,
            kernel: None,
            initramfs: None,
            cmdline_extra: String::new(),
            share_dir: None,
            host_paths: Vec::new(),
            accel: AccelChoice::Auto,
            backend: BackendSpec::default(),
            timeout_s: 300,
            run: None,
            shell: false,
            qemu: None,
        }
    }
}

impl VmSpec {
    /// Reads a spec file; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<VmSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("read spec {}", path.display()), e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        VmSpec::from_toml(&text, &base).map_err(|message| Error::SpecParse { path: path.to_path_buf(), message })
    }

    /// Parses TOML text, resolving relative paths against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<VmSpec, String> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        resolve_paths(&mut table, base);
        VmSpec::from_table(table).map_err(|e| {
            // The same error again from the text, where it comes with a line number.
            toml::from_str::<VmSpec>(text).err().map_or(e, |e| e.to_string())
        })
    }

    /// A spec from a TOML table whose paths are already resolved.
    pub fn from_table(table: toml::Table) -> Result<VmSpec, String> {
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
    }

    /// Applies command-line flags on top of the spec (flags win).
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.name {
            self.name = v.clone();
        }
        if let Some(v) = o.memory_mib {
            self.memory_mib = v;
        }
        if let Some(v) = o.vcpus {
            self.vcpus = v;
        }
        if let Some(v) = &o.kernel {
            self.kernel = Some(v.clone());
        }
        if let Some(v) = &o.initramfs {
            self.initramfs = Some(v.clone());
        }
        if let Some(v) = &o.cmdline_extra {
            if self.cmdline_extra.is_empty() {
                self.cmdline_extra = v.clone();
            } else {
                self.cmdline_extra = format!("{} {}", self.cmdline_extra, v);
            }
        }
        if let Some(v) = &o.share_dir {
            self.share_dir = Some(v.clone());
        }
        if !o.host_path.is_empty() {
            self.host_paths = o.host_path.clone();
        }
        if let Some(v) = o.accel {
            self.accel = v;
        }
        if let Some(v) = o.timeout_s {
            self.timeout_s = v;
        }
        if let Some(v) = &o.run {
            self.run = Some(v.clone());
        }
        if o.shell {
            self.shell = true;
        }
        if let Some(v) = &o.qemu {
            self.qemu = Some(v.clone());
        }
        if let Some(v) = &o.backend {
            self.backend.binary = Some(v.clone());
        }
        if let Some(v) = o.engine {
            self.backend.engine = v;
        }
        if let Some(v) = o.quota_mib {
            self.backend.quota_mib = Some(v);
        }
        self.backend.extra_args.extend(o.backend_arg.iter().cloned());
        if let Some(v) = &o.backend_cmd {
            self.backend.command = Some(v.split_whitespace().map(str::to_string).collect());
        }
        if let Some(v) = &o.daemon {
            self.backend.daemon = Some(v.clone());
        }
        if let Some(v) = o.class {
            self.backend.class = Some(v);
        }
        if let Some(v) = o.weight {
            self.backend.weight = Some(v);
        }
        if let Some(v) = o.priority {
            self.backend.priority = Some(v);
        }
        if let Some(v) = o.slice_ms {
            self.backend.slice_ms = Some(v);
        }
        if let Some(v) = o.backend_cpus {
            self.backend.cgroup.get_or_insert_with(CgroupSpec::default).cpus = Some(v);
        }
        if let Some(v) = o.backend_memory_mib {
            self.backend.cgroup.get_or_insert_with(CgroupSpec::default).memory_mib = Some(v);
        }
    }

    /// Checks every field and resolves paths; reports all problems at once.
    pub fn validate(&self) -> Result<VmConfig, Error> {
        let mut errs = FieldErrors::default();

        // "." and ".." would name the run directory's (and cgroup's) parent.
        let name_ok = !self.name.is_empty()
            && self.name != "."
            && self.name != ".."
            && self.name.len() <= 40
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !name_ok {
            errs.push("name", format!("{:?} must be 1 to 40 characters of [A-Za-z0-9._-], not . or ..", self.name));
        }

        if self.memory_mib < MIN_MEMORY_MIB {
            errs.push("memory_mib", format!("{} MiB is below the minimum of {MIN_MEMORY_MIB} MiB", self.memory_mib));
        } else if let Some(host) = host_memory_mib() {
            if self.memory_mib > host {
                errs.push("memory_mib", format!("{} MiB exceeds this host's {host} MiB of RAM", self.memory_mib));
            }
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            errs.push("vcpus", format!("{} is not between 1 and {MAX_VCPUS}", self.vcpus));
        }

        let kernel = errs.file("kernel", self.kernel.as_deref());
        let initramfs = errs.file("initramfs", self.initramfs.as_deref());

        let share_dir = match &self.share_dir {
            None => None,
            Some(d) if d.is_dir() => Some(absolute(d)),
            Some(d) => {
                errs.push("share_dir", format!("{} is not a directory", d.display()));
                None
            }
        };

        let mut warnings = Vec::new();
        let host_paths = check_host_paths(&self.host_paths, &mut errs, &mut warnings);

        let qemu = match &self.qemu {
            Some(q) => match find_program(q) {
                Some(p) => Some(p),
                None => {
                    errs.push("qemu", format!("{} not found or not executable", q.display()));
                    None
                }
            },
            None => match find_program(Path::new(DEFAULT_QEMU)) {
                Some(p) => Some(p),
                None => {
                    errs.push(
                        "qemu",
                        format!("{DEFAULT_QEMU} not on PATH; install QEMU 10 (scripts/install-prereqs.sh) or set qemu"),
                    );
                    None
                }
            },
        };

        let backend = self.backend_command(&mut errs);

        if let Some(run) = &self.run {
            if run.trim().is_empty() {
                errs.push("run", "is empty".to_string());
            } else if run.contains(',') || run.contains('"') || run.chars().any(|c| c.is_control()) {
                errs.push("run", format!("{run:?} may not contain commas, double quotes or control characters (it travels on the kernel command line, spaces as commas)"));
            }
        }
        if self.cmdline_extra.contains('\n') {
            errs.push("cmdline_extra", "may not contain a newline".to_string());
        }
        let cmdline = self.guest_cmdline();
        if cmdline.len() > MAX_CMDLINE {
            errs.push(
                "cmdline_extra",
                format!("guest command line is {} bytes, the kernel takes at most {MAX_CMDLINE}", cmdline.len()),
            );
        }
        if self.backend.start_timeout_s == 0 {
            errs.push("backend.start_timeout_s", "must be at least 1".to_string());
        }
        let qos = self.backend.qos();
        qos.check(&mut errs);
        let daemon = self.backend.daemon.as_deref().map(absolute_path);
        if let Some(d) = &daemon {
            if d.as_os_str().len() > MAX_SOCKET_PATH {
                errs.push(
                    "backend.daemon",
                    format!("{} is longer than a Unix socket address allows ({MAX_SOCKET_PATH} bytes)", d.display()),
                );
            }
        }
        if daemon.is_none() && !qos.is_empty() && self.backend.command.is_none() {
            let fields = qos.set_fields();
            warnings.push(format!(
                "{} {} only with a daemon (backend.daemon or --daemon); without one the backend runs alone",
                fields.join(", "),
                if fields.len() == 1 { "applies" } else { "apply" }
            ));
        }

        let cgroup = self.backend.cgroup.as_ref().and_then(|c| c.check(&mut errs, &mut warnings));
        let cgroup_mib = cgroup.as_ref().and_then(|c| c.limits.memory_mib);
        if let (Engine::Sim, Some(quota), Some(limit)) = (self.backend.engine, self.backend.quota_mib, cgroup_mib) {
            if limit <= quota {
                warnings.push(format!(
                    "backend.cgroup.memory_mib: {limit} MiB is not above backend.quota_mib ({quota} MiB), and the sim \
                     engine keeps device memory in host RAM: a guest that fills its quota gets the backend OOM-killed"
                ));
            }
        }

        errs.finish()?;
        // Every None above pushed an error, and finish() returned it.
        match (kernel, initramfs, qemu, backend) {
            (Some(kernel), Some(initramfs), Some(qemu), Some(backend)) => Ok(VmConfig {
                name: self.name.clone(),
                memory_mib: self.memory_mib,
                vcpus: self.vcpus,
                kernel,
                initramfs,
                cmdline,
                share_dir,
                host_paths,
                accel: self.accel,
                backend,
                backend_start_timeout_s: self.backend.start_timeout_s,
                timeout_s: self.timeout_s,
                interactive: self.shell,
                qemu,
                vgpu: Vgpu {
                    engine: self.backend.command.is_none().then_some(self.backend.engine),
                    quota_mib: self.backend.quota_mib,
                    daemon,
                    qos,
                },
                cgroup,
                warnings,
            }),
            _ => Err(Error::InvalidSpec(vec!["internal: validation incomplete".to_string()])),
        }
    }

    /// The guest kernel command line: console, panic-to-poweroff, gpuvisor.* keys, extra.
    pub fn guest_cmdline(&self) -> String {
        // panic=-1 reboots at once on a guest panic; with -no-reboot QEMU then exits
        // instead of hanging until the timeout.
        let mut parts = vec!["console=ttyS0".to_string(), "quiet".to_string(), "panic=-1".to_string()];
        if self.share_dir.is_some() {
            parts.push(format!("gpuvisor.share={SHARE_TAG}"));
        }
        if !self.host_paths.is_empty() {
            // In order: the guest mounts tag hostfs<i> at /host<path i>.
            let paths: Vec<String> =
                self.host_paths.iter().map(|p| normalize(p).to_string_lossy().into_owned()).collect();
            parts.push(format!("gpuvisor.hostfs={}", paths.join(":")));
        }
        if let Some(run) = &self.run {
            let words: Vec<&str> = run.split_whitespace().collect();
            parts.push(format!("gpuvisor.run={}", words.join(",")));
        }
        if self.shell {
            parts.push("gpuvisor.shell=1".to_string());
        }
        let extra = self.cmdline_extra.trim();
        if !extra.is_empty() {
            parts.push(extra.to_string());
        }
        parts.join(" ")
    }

    fn backend_command(&self, errs: &mut FieldErrors) -> Option<BackendCommand> {
        if let Some(cmd) = &self.backend.command {
            let Some((program, args)) = cmd.split_first() else {
                errs.push("backend.command", "is empty".to_string());
                return None;
            };
            if !cmd.iter().any(|a| a.contains("{socket}")) {
                errs.push(
                    "backend.command",
                    "has no {socket} placeholder; the backend must be told where to listen".to_string(),
                );
            }
            let program = match find_program(Path::new(program)) {
                Some(p) => p,
                None => {
                    errs.push("backend.command", format!("program {program} not found or not executable"));
                    return None;
                }
            };
            let mut args: Vec<String> = args.to_vec();
            args.extend(self.backend.extra_args.iter().cloned());
            let daemon = self.backend.daemon.is_some().then_some("backend.daemon");
            for field in daemon.into_iter().chain(self.backend.qos().set_fields()) {
                errs.push(
                    field,
                    "applies only to gpuvisor-backend, not to backend.command (put the flag in the command instead)"
                        .to_string(),
                );
            }
            return Some(BackendCommand { program, args });
        }

        let program = match &self.backend.binary {
            Some(b) => match find_program(b) {
                Some(p) => p,
                None => {
                    errs.push("backend.binary", format!("{} not found or not executable", b.display()));
                    return None;
                }
            },
            None => match default_backend() {
                Some(p) => p,
                None => {
                    errs.push(
                        "backend.binary",
                        format!("{DEFAULT_BACKEND} is neither next to gpuvisor-vm nor on PATH; set backend.binary or backend.command (--backend / --backend-cmd)"),
                    );
                    return None;
                }
            },
        };
        let mut args = vec![
            "--socket-path".to_string(),
            "{socket}".to_string(),
            "--engine".to_string(),
            self.backend.engine.to_string(),
        ];
        if let Some(q) = self.backend.quota_mib {
            args.push("--quota-mib".to_string());
            args.push(q.to_string());
        }
        if let Some(d) = &self.backend.daemon {
            args.push("--daemon".to_string());
            args.push(absolute_path(d).to_string_lossy().into_owned());
        }
        args.extend(self.backend.qos().args());
        args.push("--vm-name".to_string());
        args.push("{name}".to_string());
        args.extend(self.backend.extra_args.iter().cloned());
        Some(BackendCommand { program, args })
    }
}

/// The spec fields that hold paths, as (table, key); a relative one is relative
/// to the file that sets it.
const PATH_FIELDS: &[(Option<&str>, &str)] = &[
    (None, "kernel"),
    (None, "initramfs"),
    (None, "share_dir"),
    (None, "qemu"),
    (Some("backend"), "binary"),
    (Some("backend"), "daemon"),
];

/// Makes the relative paths in a spec table (or a part of one, such as a fleet's
/// defaults) relative to `base`. A bare qemu name ("qemu-system-x86_64") stays a
/// PATH lookup.
pub fn resolve_paths(table: &mut toml::Table, base: &Path) {
    for (sub, key) in PATH_FIELDS {
        let t = match sub {
            None => Some(&mut *table),
            Some(s) => table.get_mut(*s).and_then(toml::Value::as_table_mut),
        };
        let Some(toml::Value::String(v)) = t.and_then(|t| t.get_mut(*key)) else {
            continue;
        };
        let p = Path::new(v.as_str());
        let bare_program = *key == "qemu" && p.components().count() <= 1;
        if p.is_relative() && !bare_program {
            *v = base.join(p).to_string_lossy().into_owned();
        }
    }
}

/// Lays `over` on `base`: tables merge key by key, anything else in `over`
/// replaces what `base` has.
pub fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Command-line flags that override spec fields.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// VM name (used for the run directory, logs and the backend's --vm-name)
    #[arg(long)]
    pub name: Option<String>,
    /// Guest RAM in MiB [spec default: 1024]
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// Number of vCPUs [spec default: 2]
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Guest kernel (e.g. build/guest/vmlinuz from images/build-guest.sh)
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (e.g. build/guest/initramfs.cpio.gz)
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Extra guest kernel command line, appended to the spec's
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline_extra: Option<String>,
    /// Host directory the guest mounts read-only at /mnt/host (9p)
    #[arg(long, value_name = "DIR")]
    pub share_dir: Option<PathBuf>,
    /// Host directory exported read-only for the guest's gpuvisor-host-run, seen at
    /// the same path in the tree it runs commands in (repeatable; replaces the spec's
    /// host_paths). E.g. --host-path /usr --host-path /opt/venv
    #[arg(long = "host-path", value_name = "DIR")]
    pub host_path: Vec<PathBuf>,
    /// Accelerator: auto probes KVM and falls back to TCG
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
    /// Give up (and kill the VM) after this many seconds; 0 means never [spec default: 300]
    #[arg(long, value_name = "SECS")]
    pub timeout_s: Option<u64>,
    /// Command the guest runs instead of its test programs, e.g. "cat /mnt/host/hello.txt"
    #[arg(long, value_name = "CMD")]
    pub run: Option<String>,
    /// Give a shell on the console after the guest command, instead of powering off
    #[arg(long)]
    pub shell: bool,
    /// QEMU binary or wrapper (e.g. a bundle's bin/qemu-system-x86_64)
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// gpuvisor-backend binary [default: next to gpuvisor-vm, else on PATH]
    #[arg(long, value_name = "PATH")]
    pub backend: Option<PathBuf>,
    /// Backend engine
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// GPU memory quota the VM sees, in MiB
    #[arg(long, value_name = "MIB")]
    pub quota_mib: Option<u64>,
    /// Extra argument for the backend (repeatable)
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub backend_arg: Vec<String>,
    /// Whole backend command instead of gpuvisor-backend's, split on whitespace, with
    /// {socket} and {name} substituted; e.g. "/usr/lib/qemu/vhost-user-gpu --socket-path={socket}"
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub backend_cmd: Option<String>,
    /// gpuvisord's backend socket: the backend registers there and submits GPU work
    /// only under its grants (e.g. /run/gpuvisor/gpuvisord.sock)
    #[arg(long, value_name = "SOCKET", env = "GPUVISOR_DAEMON")]
    pub daemon: Option<PathBuf>,
    /// QoS class to ask gpuvisord for: guaranteed, burstable or best-effort
    #[arg(long, value_name = "CLASS", value_parser = parse_class)]
    pub class: Option<QosClass>,
    /// Weight to ask gpuvisord for (1 to 10000): the VM's share is its weight over the busy VMs' sum
    #[arg(long, value_name = "W")]
    pub weight: Option<u32>,
    /// Priority to ask gpuvisord for (-20 to 20): higher is served sooner, within its share
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Time slice to ask gpuvisord for, in milliseconds (0.5 to 10000)
    #[arg(long, value_name = "MS")]
    pub slice_ms: Option<f64>,
    /// Run the backend in a cgroup of its own limited to this much CPU time, in
    /// CPUs (e.g. 1.5); sets backend.cgroup.cpus (the cgroup goes under
    /// /gpuvisor/<name> unless the spec's backend.cgroup.parent says otherwise;
    /// needs root or a delegated cgroup)
    #[arg(long, value_name = "CPUS")]
    pub backend_cpus: Option<f64>,
    /// Run the backend in a cgroup of its own limited to this much host memory,
    /// in MiB (RAM and swap; past it the kernel's OOM killer ends the backend and
    /// the VM); sets backend.cgroup.memory_mib
    #[arg(long, value_name = "MIB")]
    pub backend_memory_mib: Option<u64>,
}

fn parse_class(s: &str) -> Result<QosClass, String> {
    s.parse()
}

/// The backend's command line before `{socket}` and `{name}` are substituted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl BackendCommand {
    pub fn render(&self, socket: &Path, name: &str) -> Vec<OsString> {
        let socket = socket.to_string_lossy();
        self.args.iter().map(|a| OsString::from(a.replace("{socket}", &socket).replace("{name}", name))).collect()
    }
}

/// A validated VM: everything a launch needs, with absolute paths.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmConfig {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub share_dir: Option<PathBuf>,
    /// Host directories exported read-only as 9p tags hostfs0, hostfs1, ... in order.
    pub host_paths: Vec<PathBuf>,
    pub accel: AccelChoice,
    pub backend: BackendCommand,
    pub backend_start_timeout_s: u64,
    pub timeout_s: u64,
    /// The guest gives a shell: QEMU gets the terminal as its stdin.
    pub interactive: bool,
    pub qemu: PathBuf,
    /// What the vGPU is and the QoS it asks for (for `check`; the backend
    /// command above already carries it).
    pub vgpu: Vgpu,
    /// The backend's cgroup and its limits; None: it runs in gpuvisor-vm's.
    pub cgroup: Option<CgroupConfig>,
    /// What is odd but does not stop a launch; `check` prints them, `run` logs them.
    pub warnings: Vec<String>,
}

/// The VM's vGPU as the spec describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vgpu {
    /// gpuvisor-backend's engine; None for another backend (backend.command).
    pub engine: Option<Engine>,
    pub quota_mib: Option<u64>,
    /// gpuvisord's backend socket, absolute.
    pub daemon: Option<PathBuf>,
    pub qos: Qos,
}

impl Vgpu {
    /// Two lines for `check`: the device, and the QoS it gets.
    pub fn describe(&self) -> [String; 2] {
        let Some(engine) = self.engine else {
            return [
                "vGPU: backend.command (not gpuvisor-backend)".to_string(),
                "vGPU QoS: none (gpuvisord schedules only gpuvisor-backend)".to_string(),
            ];
        };
        let quota = self.quota_mib.map_or_else(|| "the backend's default".to_string(), |q| format!("{q} MiB"));
        let device = format!("vGPU: gpuvisor-backend, engine {engine}, memory quota {quota}");
        let qos = match &self.daemon {
            Some(d) => format!("vGPU QoS: scheduled by gpuvisord at {}; asks for {}", d.display(), self.qos),
            None => "vGPU QoS: none; no daemon, so the backend runs alone on the GPU".to_string(),
        };
        [device, qos]
    }
}

#[derive(Default)]
struct FieldErrors(Vec<String>);

impl FieldErrors {
    fn push(&mut self, field: &str, msg: String) {
        self.0.push(format!("{field}: {msg}"));
    }

    fn file(&mut self, field: &str, path: Option<&Path>) -> Option<PathBuf> {
        match path {
            None => {
                self.push(field, format!("required (set `{field}` in the spec or --{field})"));
                None
            }
            Some(p) if p.is_file() => Some(absolute(p)),
            Some(p) => {
                self.push(field, format!("{} does not exist or is not a file", p.display()));
                None
            }
        }
    }

    fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidSpec(self.0))
        }
    }
}

/// The 9p mount tag of the i-th `host_paths` entry.
pub fn host_path_tag(i: usize) -> String {
    format!("hostfs{i}")
}

/// Checks `host_paths`: absolute directories the guest can mount at the same path,
/// none inside another, none where the guest's own file systems go. Warns about
/// exports that show the guest host secrets. Returns the paths normalized but
/// not resolved: QEMU follows symlinks itself, and the guest sees the tree where
/// the host's programs expect it.
fn check_host_paths(paths: &[PathBuf], errs: &mut FieldErrors, warnings: &mut Vec<String>) -> Vec<PathBuf> {
    const FIELD: &str = "host_paths";
    if paths.len() > MAX_HOST_PATHS {
        errs.push(FIELD, format!("{} directories; at most {MAX_HOST_PATHS}", paths.len()));
    }
    let mut ok: Vec<(PathBuf, PathBuf)> = Vec::new();
    for p in paths {
        let text = p.to_string_lossy();
        if !p.is_absolute() {
            errs.push(FIELD, format!("{text:?} is not absolute; the guest sees it at the same path"));
            continue;
        }
        // It travels on the kernel command line (':' separates entries) and becomes
        // a mount point in a shell script: a plain path only.
        let plain = text.chars().all(|c| c.is_ascii_alphanumeric() || "/._+-@".contains(c));
        if !plain || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            errs.push(
                FIELD,
                format!("{text:?} may contain only letters, digits, '/', '.', '_', '+', '-' and '@', and no '..'"),
            );
            continue;
        }
        let p = normalize(p);
        if let Some(d) = GUEST_OWNED_DIRS.iter().find(|d| p.starts_with(d)) {
            errs.push(
                FIELD,
                format!(
                    "{}: {d} holds the host kernel's state; in gpuvisor-host-run's tree it is the guest's own",
                    p.display()
                ),
            );
            continue;
        }
        if !p.is_dir() {
            errs.push(FIELD, format!("{} is not a directory", p.display()));
            continue;
        }
        let real = absolute(&p);
        if let Some((other, _)) = ok
            .iter()
            .find(|(q, r)| p.starts_with(q) || q.starts_with(&p) || real.starts_with(r) || r.starts_with(&real))
        {
            errs.push(
                FIELD,
                format!(
                    "{} and {} overlap; export each directory once, the outer one or the inner ones",
                    p.display(),
                    other.display()
                ),
            );
            continue;
        }
        if SENSITIVE_DIRS.iter().any(|d| Path::new(d) == p) {
            warnings.push(format!(
                "host_paths: {} lets the guest read every file under it that QEMU's user can (host secrets \
                 included); export only what the programs need, e.g. /usr and the Python environment",
                p.display()
            ));
        }
        let below = mounts_below(&real);
        if !below.is_empty() {
            let shown: Vec<String> = below.iter().take(6).map(|m| m.display().to_string()).collect();
            warnings.push(format!(
                "host_paths: the guest can also read the file systems mounted under {}: {}{}",
                p.display(),
                shown.join(", "),
                if below.len() > shown.len() {
                    format!(" and {} more", below.len() - shown.len())
                } else {
                    String::new()
                }
            ));
        }
        ok.push((p, real));
    }
    ok.into_iter().map(|(p, _)| p).collect()
}

/// `p` without `.` components, repeated or trailing slashes.
fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

/// The outermost mount points strictly below `dir`, from /proc/self/mountinfo.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|m| {
            PathBuf::from(m.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\"))
        })
        .filter(|m| m != dir && m.starts_with(dir))
        .collect();
    v.sort();
    v.dedup();
    // The outermost ones: /dev says enough without /dev/pts and /dev/shm.
    let mut outer: Vec<PathBuf> = Vec::new();
    for m in v {
        if !outer.iter().any(|o| m.starts_with(o)) {
            outer.push(m);
        }
    }
    outer
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `p` made absolute against the working directory without touching the file
/// system beyond that (a socket need not exist yet).
pub fn absolute_path(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Resolves a program like the shell does: a path with a slash is taken as is,
/// a bare name is looked up on PATH. The result is absolute.
pub fn find_program(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 || p.is_absolute() {
        return is_executable(p).then(|| absolute(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(p)).find(|c| is_executable(c)).map(|c| absolute(&c))
}

fn default_backend() -> Option<PathBuf> {
    find_beside_us_or_on_path(DEFAULT_BACKEND)
}

/// A gpuvisor program next to gpuvisor-vm (an install or a cargo target dir),
/// else on PATH.
pub fn find_beside_us_or_on_path(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(name)));
    match beside {
        Some(b) if is_executable(&b) => Some(b),
        _ => find_program(Path::new(name)),
    }
}

/// Why `ms` is not a time slice gpuvisord accepts, if it is not.
pub fn slice_ms_error(ms: f64) -> Option<String> {
    let (lo, hi) = (MIN_SLICE_US as f64 / 1000.0, MAX_SLICE_US as f64 / 1000.0);
    (!(ms.is_finite() && (lo..=hi).contains(&ms))).then(|| format!("{ms} ms is not between {lo} and {hi} ms"))
}

/// The CPUs this host has online.
fn host_cpus() -> Option<u64> {
    // SAFETY: sysconf(3) has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).ok().filter(|&n| n > 0)
}

fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("gpuvisor-spec-test-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        fn file(&self, name: &str, mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let p = self.0.join(name);
            std::fs::File::create(&p).unwrap().write_all(b"x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let s = VmSpec::from_toml("name = \"a\"\nkernel = \"k\"\n", Path::new("/specs")).unwrap();
        assert_eq!(s.memory_mib, 1024);
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.accel, AccelChoice::Auto);
        assert_eq!(s.backend.engine, Engine::Auto);
        assert_eq!(s.kernel.as_deref(), Some(Path::new("/specs/k")));
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let e = VmSpec::from_toml("memory_mb = 512\n", Path::new("/")).unwrap_err();
        assert!(e.contains("memory_mb"), "{e}");
        let e = VmSpec::from_toml("[backend]\nengin = \"sim\"\n", Path::new("/")).unwrap_err();
        assert!(e.contains("engin"), "{e}");
    }

    #[test]
    fn bare_qemu_name_stays_a_path_lookup() {
        let s = VmSpec::from_toml("qemu = \"qemu-system-x86_64\"\n", Path::new("/specs")).unwrap();
        assert_eq!(s.qemu.as_deref(), Some(Path::new("qemu-system-x86_64")));
        let s = VmSpec::from_toml("qemu = \"bundle/bin/qemu\"\n", Path::new("/specs")).unwrap();
        assert_eq!(s.qemu.as_deref(), Some(Path::new("/specs/bundle/bin/qemu")));
    }

    #[test]
    fn flags_override_spec() {
        let mut s = VmSpec::from_toml("vcpus = 4\ncmdline_extra = \"a=1\"\n", Path::new("/")).unwrap();
        s.apply(&Overrides {
            vcpus: Some(1),
            cmdline_extra: Some("b=2".into()),
            backend_cmd: Some("/bin/x --s={socket}  -v".into()),
            ..Default::default()
        });
        assert_eq!(s.vcpus, 1);
        assert_eq!(s.cmdline_extra, "a=1 b=2");
        assert_eq!(s.backend.command, Some(vec!["/bin/x".into(), "--s={socket}".into(), "-v".into()]));
    }

    #[test]
    fn validation_names_each_bad_field() {
        let spec = VmSpec {
            name: "bad name".into(),
            memory_mib: 64,
            vcpus: 0,
            kernel: Some("/nonexistent/vmlinuz".into()),
            initramfs: None,
            run: Some("a,b".into()),
            backend: BackendSpec { binary: Some("/nonexistent/backend".into()), ..Default::default() },
            ..Default::default()
        };
        let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!("expected InvalidSpec") };
        for field in ["name:", "memory_mib:", "vcpus:", "kernel:", "initramfs:", "run:", "backend.binary:"] {
            assert!(errs.iter().any(|e| e.starts_with(field)), "no error for {field}: {errs:?}");
        }
    }

    #[test]
    fn valid_spec_resolves_backend_command() {
        let d = Scratch::new("valid");
        let kernel = d.file("vmlinuz", 0o644);
        let initramfs = d.file("initramfs", 0o644);
        let backend = d.file("be", 0o755);
        let qemu = d.file("qemu", 0o755);
        let spec = VmSpec {
            kernel: Some(kernel.clone()),
            initramfs: Some(initramfs),
            qemu: Some(qemu),
            share_dir: Some(d.0.clone()),
            backend: BackendSpec {
                binary: Some(backend.clone()),
                engine: Engine::Sim,
                quota_mib: Some(512),
                ..Default::default()
            },
            ..Default::default()
        };
        let vm = spec.validate().unwrap();
        assert_eq!(vm.kernel, kernel);
        assert_eq!(vm.backend.program, backend);
        let args = vm.backend.render(Path::new("/run/x/vgpu.sock"), "vm");
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            ["--socket-path", "/run/x/vgpu.sock", "--engine", "sim", "--quota-mib", "512", "--vm-name", "vm"]
        );
        assert!(vm.cmdline.contains("gpuvisor.share=hostshare"));
    }

    #[test]
    fn backend_command_needs_socket_placeholder() {
        let d = Scratch::new("placeholder");
        let be = d.file("be", 0o755);
        let spec = VmSpec {
            backend: BackendSpec {
                command: Some(vec![be.to_string_lossy().into_owned(), "--x".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!() };
        assert!(errs.iter().any(|e| e.starts_with("backend.command:") && e.contains("{socket}")), "{errs:?}");
    }

    #[test]
    fn guest_cmdline_encodes_run_spaces_as_commas() {
        let spec = VmSpec {
            run: Some("cat  /mnt/host/hello.txt".into()),
            shell: true,
            cmdline_extra: "loglevel=7".into(),
            ..Default::default()
        };
        assert_eq!(
            spec.guest_cmdline(),
            "console=ttyS0 quiet panic=-1 gpuvisor.run=cat,/mnt/host/hello.txt gpuvisor.shell=1 loglevel=7"
        );
    }

    /// A spec that validates on any machine, with files in `d`.
    fn valid_spec(d: &Scratch) -> VmSpec {
        VmSpec {
            kernel: Some(d.file("vmlinuz", 0o644)),
            initramfs: Some(d.file("initramfs", 0o644)),
            qemu: Some(d.file("qemu", 0o755)),
            backend: BackendSpec { binary: Some(d.file("be", 0o755)), engine: Engine::Sim, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn qos_fields_become_backend_flags_with_the_daemon() {
        let s = VmSpec::from_toml(
            "[backend]\ndaemon = \"run/gd.sock\"\nclass = \"best-effort\"\nweight = 3\npriority = -5\nslice_ms = 2.5\n",
            Path::new("/specs"),
        )
        .unwrap();
        assert_eq!(s.backend.daemon.as_deref(), Some(Path::new("/specs/run/gd.sock")));
        assert_eq!(s.backend.class, Some(QosClass::BestEffort));
        let d = Scratch::new("qos");
        let mut spec = valid_spec(&d);
        let b = &s.backend;
        spec.backend.daemon = b.daemon.clone();
        (spec.backend.class, spec.backend.weight) = (b.class, b.weight);
        (spec.backend.priority, spec.backend.slice_ms) = (b.priority, b.slice_ms);
        let vm = spec.validate().unwrap();
        let args = vm.backend.render(Path::new("/s"), "vm");
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            "--socket-path /s --engine sim --daemon /specs/run/gd.sock --class best-effort \
             --weight 3 --priority=-5 --slice-ms 2.5 --vm-name vm"
        );
        assert!(vm.warnings.is_empty(), "{:?}", vm.warnings);
        let [device, qos] = vm.vgpu.describe();
        assert!(device.contains("engine sim"), "{device}");
        assert_eq!(
            qos,
            "vGPU QoS: scheduled by gpuvisord at /specs/run/gd.sock; asks for class best-effort, \
             weight 3, priority -5, slice 2.5 ms"
        );
    }

    #[test]
    fn unset_qos_fields_are_left_to_the_daemon() {
        let d = Scratch::new("qos-unset");
        let mut spec = valid_spec(&d);
        spec.backend.daemon = Some("/run/gpuvisor/gpuvisord.sock".into());
        spec.backend.weight = Some(2);
        let vm = spec.validate().unwrap();
        let args = vm.backend.render(Path::new("/s"), "vm");
        assert!(!args.iter().any(|a| a == "--class" || a == "--slice-ms"), "{args:?}");
        assert!(
            vm.vgpu.describe()[1].ends_with("class the daemon's, weight 2, priority the daemon's, slice the daemon's")
        );
    }

    #[test]
    fn qos_without_a_daemon_is_a_warning() {
        let d = Scratch::new("qos-nodaemon");
        let mut spec = valid_spec(&d);
        spec.backend.weight = Some(2);
        spec.backend.class = Some(QosClass::Guaranteed);
        let vm = spec.validate().unwrap();
        assert_eq!(vm.warnings.len(), 1);
        assert!(
            vm.warnings[0].starts_with("backend.class, backend.weight apply only with a daemon"),
            "{:?}",
            vm.warnings
        );
        assert!(vm.vgpu.describe()[1].contains("no daemon"));
        // The backend still gets them, and warns the same way.
        assert!(vm.backend.args.iter().any(|a| a == "--weight"));
    }

    #[test]
    fn qos_ranges_are_checked_by_field() {
        let d = Scratch::new("qos-range");
        for (weight, priority, slice_ms, field) in [
            (Some(0), None, None, "backend.weight:"),
            (Some(10_001), None, None, "backend.weight:"),
            (None, Some(-21), None, "backend.priority:"),
            (None, Some(21), None, "backend.priority:"),
            (None, None, Some(0.4), "backend.slice_ms:"),
            (None, None, Some(10_000.5), "backend.slice_ms:"),
            (None, None, Some(f64::NAN), "backend.slice_ms:"),
        ] {
            let mut spec = valid_spec(&d);
            spec.backend.daemon = Some("/run/g.sock".into());
            (spec.backend.weight, spec.backend.priority, spec.backend.slice_ms) = (weight, priority, slice_ms);
            let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!("{field} accepted") };
            assert!(errs.len() == 1 && errs[0].starts_with(field), "{errs:?}");
        }
        let mut spec = valid_spec(&d);
        (spec.backend.weight, spec.backend.priority, spec.backend.slice_ms) = (Some(10_000), Some(-20), Some(0.5));
        spec.validate().unwrap();
        let e = VmSpec::from_toml("[backend]\nclass = \"gold\"\n", Path::new("/")).unwrap_err();
        assert!(e.contains("gold"), "{e}");
    }

    #[test]
    fn qos_does_not_apply_to_another_backend() {
        let d = Scratch::new("qos-command");
        let mut spec = valid_spec(&d);
        spec.backend.command =
            Some(vec![d.file("vhost-user-gpu", 0o755).to_string_lossy().into_owned(), "--socket-path={socket}".into()]);
        spec.backend.daemon = Some("/run/g.sock".into());
        spec.backend.priority = Some(1);
        let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!() };
        assert!(errs.iter().any(|e| e.starts_with("backend.daemon:")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("backend.priority:")), "{errs:?}");
    }

    #[test]
    fn qos_flags_override_the_spec() {
        let mut s = VmSpec::from_toml("[backend]\nweight = 5\npriority = 1\n", Path::new("/")).unwrap();
        s.apply(&Overrides {
            daemon: Some("/run/g.sock".into()),
            class: Some(QosClass::Guaranteed),
            weight: Some(7),
            ..Default::default()
        });
        assert_eq!(s.backend.daemon.as_deref(), Some(Path::new("/run/g.sock")));
        assert_eq!(s.backend.class, Some(QosClass::Guaranteed));
        assert_eq!((s.backend.weight, s.backend.priority), (Some(7), Some(1)));
    }

    #[test]
    fn defaults_merge_under_a_table_and_paths_follow_their_file() {
        let mut base: toml::Table =
            "kernel = \"k\"\nqemu = \"qemu-system-x86_64\"\n[backend]\nengine = \"sim\"\nweight = 1\n".parse().unwrap();
        resolve_paths(&mut base, Path::new("/a"));
        let mut over: toml::Table = "[backend]\nweight = 2\nbinary = \"bin/be\"\n".parse().unwrap();
        resolve_paths(&mut over, Path::new("/b"));
        merge_tables(&mut base, over);
        let s = VmSpec::from_table(base).unwrap();
        assert_eq!(s.kernel.as_deref(), Some(Path::new("/a/k")));
        assert_eq!(s.qemu.as_deref(), Some(Path::new("qemu-system-x86_64")));
        assert_eq!(s.backend.binary.as_deref(), Some(Path::new("/b/bin/be")));
        assert_eq!((s.backend.engine, s.backend.weight), (Engine::Sim, Some(2)));
    }

    #[test]
    fn host_paths_reach_qemu_and_the_guest_in_order() {
        let d = Scratch::new("hostfs");
        std::fs::create_dir_all(d.0.join("venv/bin")).unwrap();
        let mut spec = valid_spec(&d);
        spec.host_paths = vec!["/usr/".into(), d.0.join("./venv")];
        let vm = spec.validate().unwrap();
        assert_eq!(vm.host_paths, vec![PathBuf::from("/usr"), d.0.join("venv")]);
        assert!(
            vm.cmdline.ends_with(&format!("gpuvisor.hostfs=/usr:{}", d.0.join("venv").display())),
            "{}",
            vm.cmdline
        );
        let s = VmSpec::from_toml("host_paths = [\"/usr\", \"/opt/venv\"]\n", Path::new("/specs")).unwrap();
        assert_eq!(s.host_paths, vec![PathBuf::from("/usr"), PathBuf::from("/opt/venv")]);
        let mut s = s;
        s.apply(&Overrides { host_path: vec!["/srv/py".into()], ..Default::default() });
        assert_eq!(s.host_paths, vec![PathBuf::from("/srv/py")]);
    }

    #[test]
    fn host_paths_that_cannot_be_exported_are_errors() {
        let d = Scratch::new("hostfs-bad");
        std::fs::create_dir_all(d.0.join("a/b")).unwrap();
        let file = d.file("f", 0o644);
        let dir = |rel: &str| d.0.join(rel).to_string_lossy().into_owned();
        for (path, why) in [
            ("usr".to_string(), "not absolute"),
            (dir("nope"), "not a directory"),
            (file.to_string_lossy().into_owned(), "not a directory"),
            (format!("{}/a b", d.0.display()), "may contain only"),
            (format!("{}/a:b", d.0.display()), "may contain only"),
            (format!("{}/a/../a", d.0.display()), "no '..'"),
            ("/proc".to_string(), "the guest's own"),
            ("/dev/shm".to_string(), "the guest's own"),
            ("/sys/kernel".to_string(), "the guest's own"),
        ] {
            let mut spec = valid_spec(&d);
            spec.host_paths = vec![path.clone().into()];
            let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!("{path} accepted") };
            assert!(errs.len() == 1 && errs[0].starts_with("host_paths:") && errs[0].contains(why), "{path}: {errs:?}");
        }
        let mut spec = valid_spec(&d);
        spec.host_paths = vec![dir("a").into(), dir("a/b").into()];
        let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!("nested paths accepted") };
        assert!(errs[0].contains("overlap"), "{errs:?}");
        spec.host_paths = (0..=MAX_HOST_PATHS).map(|_| PathBuf::from("/usr")).collect();
        let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!("too many accepted") };
        assert!(errs[0].contains("at most"), "{errs:?}");
    }

    #[test]
    fn exporting_the_whole_host_is_a_warning() {
        let d = Scratch::new("hostfs-root");
        let mut spec = valid_spec(&d);
        spec.host_paths = vec!["/".into()];
        let vm = spec.validate().unwrap();
        assert!(vm.warnings.iter().any(|w| w.starts_with("host_paths: / lets the guest read")), "{:?}", vm.warnings);
        // /proc at least is mounted under / on any Linux host.
        assert!(vm.warnings.iter().any(|w| w.contains("mounted under /: /")), "{:?}", vm.warnings);
        assert!(vm.cmdline.contains("gpuvisor.hostfs=/"), "{}", vm.cmdline);
    }

    #[test]
    fn cgroup_table_becomes_the_backend_cgroup() {
        let s = VmSpec::from_toml(
            "[backend.cgroup]\ncpus = 1.5\ncpu_weight = 50\nmemory_mib = 512\nparent = \"vms\"\noptional = true\n",
            Path::new("/specs"),
        )
        .unwrap();
        let d = Scratch::new("cgroup");
        let mut spec = valid_spec(&d);
        spec.backend.cgroup = s.backend.cgroup;
        let vm = spec.validate().unwrap();
        let want = CgroupConfig {
            parent: "vms".into(),
            limits: Limits { cpus: Some(1.5), cpu_weight: Some(50), memory_mib: Some(512) },
            optional: true,
        };
        assert_eq!(vm.cgroup, Some(want));
        // Unset: no cgroup; a table without parent: the default one.
        assert_eq!(valid_spec(&d).validate().unwrap().cgroup, None);
        let s = VmSpec::from_toml("[backend.cgroup]\nmemory_mib = 64\n", Path::new("/")).unwrap();
        let c = s.backend.cgroup.unwrap();
        assert_eq!((c.parent.as_str(), c.optional), (cgroup::DEFAULT_PARENT, false));
        let e = VmSpec::from_toml("[backend.cgroup]\nmemory_mb = 64\n", Path::new("/")).unwrap_err();
        assert!(e.contains("memory_mb"), "{e}");
    }

    #[test]
    fn cgroup_limits_are_checked_by_field() {
        let d = Scratch::new("cgroup-range");
        let table = |cpus, cpu_weight, memory_mib| CgroupSpec { cpus, cpu_weight, memory_mib, ..Default::default() };
        for (c, field) in [
            (table(Some(0.0), None, None), "backend.cgroup.cpus:"),
            (table(Some(0.001), None, None), "backend.cgroup.cpus:"),
            (table(Some(-1.0), None, None), "backend.cgroup.cpus:"),
            (table(Some(f64::NAN), None, None), "backend.cgroup.cpus:"),
            (table(Some(5000.0), None, None), "backend.cgroup.cpus:"),
            (table(None, Some(0), None), "backend.cgroup.cpu_weight:"),
            (table(None, Some(10_001), None), "backend.cgroup.cpu_weight:"),
            (table(None, None, Some(0)), "backend.cgroup.memory_mib:"),
            (table(None, None, Some(16)), "backend.cgroup.memory_mib:"),
            (table(None, None, Some(u64::MAX)), "backend.cgroup.memory_mib:"),
            (table(None, None, None), "backend.cgroup:"),
            (CgroupSpec { parent: "../up".into(), ..table(Some(1.0), None, None) }, "backend.cgroup.parent:"),
            (CgroupSpec { parent: "a b".into(), ..table(Some(1.0), None, None) }, "backend.cgroup.parent:"),
        ] {
            let mut spec = valid_spec(&d);
            spec.backend.cgroup = Some(c.clone());
            let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!("{c:?} accepted") };
            assert!(errs.len() == 1 && errs[0].starts_with(field), "{c:?}: {errs:?}");
        }
        let mut spec = valid_spec(&d);
        spec.backend.cgroup = Some(table(Some(0.01), Some(10_000), Some(cgroup::MIN_MEMORY_MIB)));
        spec.validate().unwrap();
        // A sim VM whose quota cannot fit in the limit.
        spec.backend.quota_mib = Some(512);
        spec.backend.cgroup = Some(table(None, None, Some(256)));
        let vm = spec.validate().unwrap();
        assert!(vm.warnings.iter().any(|w| w.contains("OOM-killed")), "{:?}", vm.warnings);
        // More CPUs than the host has limits nothing: a warning, not an error.
        spec.backend.cgroup = Some(table(Some(1024.0), None, None));
        let vm = spec.validate().unwrap();
        assert!(
            vm.warnings.iter().any(|w| w.starts_with("backend.cgroup.cpus: 1024 is more than")),
            "{:?}",
            vm.warnings
        );
    }

    #[test]
    fn cgroup_flags_make_or_override_the_table() {
        let mut s = VmSpec::default();
        s.apply(&Overrides { backend_memory_mib: Some(256), ..Default::default() });
        let c = s.backend.cgroup.clone().unwrap();
        assert_eq!((c.cpus, c.memory_mib, c.parent.as_str()), (None, Some(256), cgroup::DEFAULT_PARENT));
        let mut s = VmSpec::from_toml("[backend.cgroup]\ncpus = 2\nparent = \"p\"\n", Path::new("/")).unwrap();
        s.apply(&Overrides { backend_cpus: Some(0.5), ..Default::default() });
        let c = s.backend.cgroup.unwrap();
        assert_eq!((c.cpus, c.parent.as_str()), (Some(0.5), "p"));
    }

    #[test]
    fn dot_names_are_not_vm_names() {
        for name in [".", ".."] {
            let spec = VmSpec { name: name.into(), ..Default::default() };
            let Err(Error::InvalidSpec(errs)) = spec.validate() else { panic!("{name} accepted") };
            assert!(errs.iter().any(|e| e.starts_with("name:")), "{errs:?}");
        }
    }
}
