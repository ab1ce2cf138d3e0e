//! A cgroup of the backend's own with the CPU and memory limits of its VM spec
//! (`[backend.cgroup]`): found on cgroup v2 or v1, whichever holds the controllers
//! on this host; the backend starts inside it, and it is removed when the VM ends.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// The CFS period the CPU limit is a quota of: the kernel's default, 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses a quota under 1 ms, which is 0.01 of a 100 ms period.
pub const MIN_CPUS: f64 = 0.01;
pub const MAX_CPUS: f64 = 1024.0;
/// cgroup v2's cpu.weight range; v1's cpu.shares get weight × 1024 / 100.
pub const MIN_CPU_WEIGHT: u32 = 1;
pub const MAX_CPU_WEIGHT: u32 = 10_000;
/// An idle sim backend alone takes about 9 MiB; below this it cannot serve.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Where VM cgroups go unless the spec says otherwise: `/gpuvisor/<vm name>`
/// from the root of each hierarchy.
pub const DEFAULT_PARENT: &str = "/gpuvisor";
/// How long removal waits for a cgroup's last process to be gone.
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// What the backend may use; unset fields are not limited.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// CPU time per wall-clock time, in CPUs (1.5 = 150 ms every 100 ms).
    pub cpus: Option<f64>,
    /// Share of contended CPU time against sibling cgroups (100 is the default).
    pub cpu_weight: Option<u32>,
    /// RAM and swap together, in MiB; past it the kernel's OOM killer ends the backend.
    pub memory_mib: Option<u64>,
}

impl Limits {
    fn controllers(&self) -> Vec<Controller> {
        let mut v = Vec::new();
        if self.cpus.is_some() || self.cpu_weight.is_some() {
            v.push(Controller::Cpu);
        }
        if self.memory_mib.is_some() {
            v.push(Controller::Memory);
        }
        v
    }

    /// The files a cgroup of `version` gets for `controller`, in the order they
    /// must be written.
    fn writes(&self, version: Version, controller: Controller) -> Vec<LimitWrite> {
        let mut w = Vec::new();
        match (controller, version) {
            (Controller::Cpu, Version::V2) => {
                if let Some(quota) = self.cpus.map(quota_us) {
                    w.push(LimitWrite::new("cpu.max", format!("{quota} {CPU_PERIOD_US}")));
                }
                if let Some(weight) = self.cpu_weight {
                    w.push(LimitWrite::new("cpu.weight", weight.to_string()));
                }
            }
            (Controller::Cpu, Version::V1) => {
                if let Some(quota) = self.cpus.map(quota_us) {
                    w.push(LimitWrite::new("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                    w.push(LimitWrite::new("cpu.cfs_quota_us", quota.to_string()));
                }
                if let Some(weight) = self.cpu_weight {
                    // systemd's mapping: the default weight 100 is the default 1024 shares.
                    let shares = (u64::from(weight) * 1024 / 100).max(2);
                    w.push(LimitWrite::new("cpu.shares", shares.to_string()));
                }
            }
            (Controller::Memory, Version::V2) => {
                if let Some(bytes) = self.memory_bytes() {
                    w.push(LimitWrite::new("memory.max", bytes.to_string()));
                    // Swap would let the backend go past the limit instead of being
                    // stopped at it; the file exists only where swap is accounted.
                    w.push(LimitWrite { if_present: true, ..LimitWrite::new("memory.swap.max", "0".to_string()) });
                }
            }
            (Controller::Memory, Version::V1) => {
                if let Some(bytes) = self.memory_bytes() {
                    w.push(LimitWrite::new("memory.limit_in_bytes", bytes.to_string()));
                    // RAM + swap, so swap adds nothing; written after the RAM limit,
                    // which it may not be below.
                    w.push(LimitWrite {
                        if_present: true,
                        ..LimitWrite::new("memory.memsw.limit_in_bytes", bytes.to_string())
                    });
                }
            }
        }
        w
    }

    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory_mib.map(|m| m.saturating_mul(1 << 20))
    }
}

fn quota_us(cpus: f64) -> u64 {
    // Validation keeps cpus within MIN_CPUS..=MAX_CPUS, so this is 1000 or more.
    (cpus * CPU_PERIOD_US as f64).round() as u64
}

impl fmt::Display for Limits {
    /// `cpus 1.5, cpu weight 200, memory 512 MiB`, the set fields only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.cpus {
            parts.push(format!("cpus {c}"));
        }
        if let Some(w) = self.cpu_weight {
            parts.push(format!("cpu weight {w}"));
        }
        if let Some(m) = self.memory_mib {
            parts.push(format!("memory {m} MiB"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// A validated `[backend.cgroup]` table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CgroupConfig {
    /// The cgroup the VM's goes under: from each hierarchy's root if it starts
    /// with `/`, else from the cgroup gpuvisor-vm itself runs in.
    pub parent: String,
    pub limits: Limits,
    /// A cgroup that cannot be made is a warning, and the backend runs without one.
    pub optional: bool,
}

/// Why `parent` is not a cgroup path the launcher accepts, if it is not.
pub fn parent_error(parent: &str) -> Option<String> {
    let plain = parent.chars().all(|c| c.is_ascii_alphanumeric() || "/._-@:+".contains(c));
    let bad_part = Path::new(parent).components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || parent.split('/').any(|p| p == "." || p == "..");
    if !plain || bad_part {
        return Some(format!(
            "{parent:?} may contain only letters, digits, '/', '.', '_', '-', '@', ':' and '+', and no '.' or '..' part"
        ));
    }
    if parent.len() > 200 {
        return Some(format!("{parent:?} is longer than 200 bytes"));
    }
    None
}

/// Which cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (or group of them), cpu.cfs_quota_us and
    /// memory.limit_in_bytes.
    V1,
    /// The unified hierarchy: cpu.max, memory.max, controllers handed down
    /// through cgroup.subtree_control.
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Cpu,
    Memory,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Memory => "memory",
        }
    }
}

/// One mounted cgroup hierarchy and where this process sits in it.
#[derive(Debug, Clone, PartialEq)]
struct Hierarchy {
    version: Version,
    mount: PathBuf,
    /// This process's cgroup, relative to the mount point; None where it lies
    /// outside what the mount shows.
    own: Option<PathBuf>,
    /// The controllers it holds: a v1 mount's options, a v2 mount's cgroup.controllers.
    controllers: Vec<String>,
}

/// The cgroup hierarchies this host has mounted, as this process sees them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layout {
    hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Reads /proc/self/mountinfo, /proc/self/cgroup and each cgroup2 mount's
    /// cgroup.controllers.
    pub fn detect() -> Result<Layout, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|e| CgroupError::Io {
                action: "read",
                path: p.into(),
                source: e,
                hint: String::new(),
            })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let own = read("/proc/self/cgroup")?;
        Ok(Layout::parse(&mountinfo, &own, |mount| std::fs::read_to_string(mount.join("cgroup.controllers")).ok()))
    }

    /// The layout that `mountinfo` and `proc_cgroup` (the two /proc files' text)
    /// describe; `controllers_of` reads a cgroup2 mount's cgroup.controllers.
    fn parse(mountinfo: &str, proc_cgroup: &str, controllers_of: impl Fn(&Path) -> Option<String>) -> Layout {
        // /proc/self/cgroup: `id:controllers:path`, `0::path` for v2.
        let own_paths: Vec<(Vec<&str>, &str)> = proc_cgroup
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                Some((ctrls.split(',').filter(|c| !c.is_empty()).collect(), path))
            })
            .collect();
        let mut hierarchies = Vec::new();
        for line in mountinfo.lines() {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
            let (Some(root), Some(mount), Some(fstype)) = (fields.get(3), fields.get(4), fields.get(sep + 1)) else {
                continue;
            };
            let mount = PathBuf::from(unescape(mount));
            let root = unescape(root);
            let (version, controllers, own) = match *fstype {
                "cgroup2" => {
                    let ctrls = controllers_of(&mount).unwrap_or_default();
                    let own = own_paths.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| *p);
                    (Version::V2, ctrls.split_whitespace().map(str::to_string).collect::<Vec<_>>(), own)
                }
                "cgroup" => {
                    let opts = fields.get(sep + 3).copied().unwrap_or("");
                    let ctrls: Vec<String> = opts
                        .split(',')
                        .filter(|o| !o.is_empty() && !o.contains('=') && *o != "rw" && *o != "ro")
                        .map(str::to_string)
                        .collect();
                    let own =
                        own_paths.iter().find(|(c, _)| c.iter().any(|c| ctrls.iter().any(|m| m == c))).map(|(_, p)| *p);
                    (Version::V1, ctrls, own)
                }
                _ => continue,
            };
            // The mount shows the hierarchy from `root` down; our path is relative to it.
            let own = own.and_then(|p| {
                let rel = Path::new(p).strip_prefix(&root).ok()?;
                Some(rel.to_path_buf())
            });
            hierarchies.push(Hierarchy { version, mount, own, controllers });
        }
        Layout { hierarchies }
    }

    /// The hierarchy that holds `c`: a v1 mount of it, else a v2 mount that
    /// lists it. The first mount wins (a bind mount repeats a hierarchy).
    fn find(&self, c: Controller) -> Option<&Hierarchy> {
        let has = |h: &&Hierarchy| h.controllers.iter().any(|x| x == c.name());
        let v1 = self.hierarchies.iter().filter(|h| h.version == Version::V1).find(has);
        v1.or_else(|| self.hierarchies.iter().filter(|h| h.version == Version::V2).find(has))
    }

    /// Where the VM named `name` gets its cgroup, and what is written there;
    /// nothing is touched.
    pub fn plan(&self, cfg: &CgroupConfig, name: &str) -> Result<Plan, CgroupError> {
        let mut dirs: Vec<DirPlan> = Vec::new();
        for c in cfg.limits.controllers() {
            let h = self.find(c).ok_or(CgroupError::NoController(c.name()))?;
            let writes = cfg.limits.writes(h.version, c);
            // Controllers in one hierarchy (v2, or co-mounted v1 ones) share a cgroup.
            if let Some(d) = dirs.iter_mut().find(|d| d.mount == h.mount) {
                d.controllers.push(c.name());
                d.writes.extend(writes);
                continue;
            }
            let mut rel = if cfg.parent.starts_with('/') {
                parts(&cfg.parent)
            } else {
                let own = h
                    .own
                    .as_ref()
                    .ok_or_else(|| CgroupError::OwnCgroupUnknown { controller: c.name(), mount: h.mount.clone() })?;
                parts(&own.to_string_lossy()).into_iter().chain(parts(&cfg.parent)).collect()
            };
            rel.push(name.to_string());
            dirs.push(DirPlan {
                version: h.version,
                mount: h.mount.clone(),
                parts: rel,
                controllers: vec![c.name()],
                writes,
            });
        }
        Ok(Plan { name: name.to_string(), dirs })
    }
}

/// The non-empty `/`-separated parts of a cgroup path.
fn parts(p: &str) -> Vec<String> {
    p.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Undoes mountinfo's octal escapes (space, tab, newline, backslash).
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Where a VM's cgroup goes and what it gets, in every hierarchy it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    name: String,
    dirs: Vec<DirPlan>,
}

/// The VM's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq)]
struct DirPlan {
    version: Version,
    mount: PathBuf,
    /// The path from the mount point: the parent's parts, then the VM's name.
    parts: Vec<String>,
    /// Controllers used here; on v2 they are enabled in every cgroup above it.
    controllers: Vec<&'static str>,
    writes: Vec<LimitWrite>,
}

impl DirPlan {
    fn path(&self) -> PathBuf {
        self.parts.iter().fold(self.mount.clone(), |p, c| p.join(c))
    }
}

/// One limit file and the value it gets.
#[derive(Debug, Clone, PartialEq)]
struct LimitWrite {
    file: &'static str,
    value: String,
    /// Written only if the kernel offers the file (swap accounting).
    if_present: bool,
}

impl LimitWrite {
    fn new(file: &'static str, value: String) -> LimitWrite {
        LimitWrite { file, value, if_present: false }
    }
}

impl Plan {
    /// One line per hierarchy, for `gpuvisor-vm check`:
    /// `cgroup v1 /sys/fs/cgroup/cpu/gpuvisor/demo: cpu.cfs_period_us=100000 cpu.cfs_quota_us=150000`.
    pub fn describe(&self) -> Vec<String> {
        self.dirs
            .iter()
            .map(|d| {
                let writes: Vec<String> = d
                    .writes
                    .iter()
                    .map(|w| format!("{}={}{}", w.file, w.value, if w.if_present { " (if present)" } else { "" }))
                    .collect();
                format!("{} {}: {}", d.version, d.path().display(), writes.join(" "))
            })
            .collect()
    }

    /// The VM's cgroup directory in each hierarchy.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(DirPlan::path).collect()
    }
}

/// Everything that stops a VM's cgroup from being made, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup hierarchy here holds the {0} controller (no cgroup v1 mount of it, no cgroup2 mount listing \
         it in cgroup.controllers); mount one, drop the limit that needs it, or set backend.cgroup.optional = true \
         to run the backend without limits"
    )]
    NoController(&'static str),
    #[error(
        "gpuvisor-vm's own {controller} cgroup is outside what {} shows (/proc/self/cgroup), so a relative \
         backend.cgroup.parent has nothing to start from; give an absolute one, e.g. {DEFAULT_PARENT:?}",
        mount.display()
    )]
    OwnCgroupUnknown { controller: &'static str, mount: PathBuf },
    #[error("cannot {action} {}: {source}{hint}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
        hint: String,
    },
    #[error(
        "{} already holds processes {pids:?}: another VM named {name:?} is running, or a backend of an earlier \
         run of it is still alive; stop it, or give this VM another name",
        path.display()
    )]
    InUse { path: PathBuf, pids: Vec<u32>, name: String },
}

/// What to do about an error of `action` on a cgroup file, by its cause.
fn hint(action: &str, path: &Path, e: &io::Error) -> String {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => "; gpuvisor-vm must be able to write the cgroup tree: run it as root, \
            or give its user a delegated cgroup (systemd: Delegate=yes) and set backend.cgroup.parent to a path \
            inside it, or set backend.cgroup.optional = true to run the backend without limits"
            .to_string(),
        Some(libc::EROFS) => "; the cgroup file system is mounted read-only here (a container without cgroup \
            delegation?): mount it read-write, or set backend.cgroup.optional = true to run the backend without limits"
            .to_string(),
        Some(libc::EBUSY) if file == "cgroup.subtree_control" => format!(
            "; on cgroup v2 a cgroup that holds processes cannot hand controllers to its children, and {} does: \
             set backend.cgroup.parent to a cgroup without processes, such as the default {DEFAULT_PARENT:?}",
            path.parent().unwrap_or(path).display()
        ),
        Some(libc::ENOENT) if action == "write" => format!(
            "; the kernel offers no {file} here (is its controller enabled for this cgroup?); drop the limit \
             that needs it or set backend.cgroup.optional = true"
        ),
        Some(libc::EINVAL) if file == "cpu.cfs_quota_us" => {
            "; a cgroup above it has a \
            lower CPU limit, which cgroup v1 does not let a child exceed: lower backend.cgroup.cpus or raise that limit"
                .to_string()
        }
        _ => String::new(),
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> CgroupError {
    let hint = hint(action, path, &source);
    CgroupError::Io { action, path: path.to_path_buf(), source, hint }
}

/// Makes the VM's cgroup for a launch: an error if it cannot be made, unless
/// the spec marked it optional, in which case the backend runs without one.
pub fn setup(cfg: &CgroupConfig, name: &str) -> Result<Option<VmCgroup>, CgroupError> {
    let made = Layout::detect().and_then(|l| l.plan(cfg, name)).and_then(|p| VmCgroup::create(&p));
    match made {
        Ok(cg) => {
            info!("backend cgroup {}: {}", cg.describe_paths(), cfg.limits);
            Ok(Some(cg))
        }
        Err(e) if cfg.optional => {
            warn!("backend.cgroup is optional, so the backend runs without limits: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The VM's cgroup in each hierarchy it needs, made and limited; removed on drop.
#[derive(Debug)]
pub struct VmCgroup {
    dirs: Vec<Made>,
    /// Each cgroup's cgroup.procs, ready for the child to write before exec.
    procs: Vec<CString>,
    removed: bool,
}

#[derive(Debug)]
struct Made {
    version: Version,
    path: PathBuf,
    /// The directories this launch created, outermost first; the VM's cgroup is last.
    created: Vec<PathBuf>,
}

impl VmCgroup {
    /// Creates the cgroups of `plan` and writes their limits. A cgroup of the
    /// same name left empty by an earlier run is made afresh; one that holds
    /// processes is an error. What was created is removed again on failure.
    pub fn create(plan: &Plan) -> Result<VmCgroup, CgroupError> {
        let mut cg = VmCgroup { dirs: Vec::new(), procs: Vec::new(), removed: false };
        for d in &plan.dirs {
            // On error, dropping `cg` removes what the dirs before made.
            let made = make_dir(d, &plan.name)?;
            let path = made.path.clone();
            cg.dirs.push(made);
            if d.version == Version::V2 {
                enable_controllers(d)?;
            }
            for w in &d.writes {
                let file = path.join(w.file);
                if w.if_present && !file.exists() {
                    debug!("no {}: not written", file.display());
                    continue;
                }
                std::fs::write(&file, &w.value).map_err(|e| io_err("write", &file, e))?;
                debug!("{} = {}", file.display(), w.value);
            }
            let procs = path.join("cgroup.procs");
            let c = CString::new(procs.as_os_str().as_bytes())
                .map_err(|_| io_err("use", &procs, io::ErrorKind::InvalidInput.into()))?;
            cg.procs.push(c);
        }
        Ok(cg)
    }

    /// Makes `cmd`'s child join the cgroups before it execs, so that the program
    /// runs its first instruction already limited.
    pub fn place(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: the closure runs in the forked child before exec. It allocates
        // nothing (the paths were made before the fork, the pid is formatted on
        // the stack) and calls only getpid, open, write and close, which are
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 20];
                let pid = format_pid(libc::getpid(), &mut buf);
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let n = libc::write(fd, pid.as_ptr().cast(), pid.len());
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if n < 0 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
    }

    /// The VM's cgroup directory in each hierarchy.
    pub fn paths(&self) -> Vec<&Path> {
        self.dirs.iter().map(|d| d.path.as_path()).collect()
    }

    fn describe_paths(&self) -> String {
        let v: Vec<String> = self.dirs.iter().map(|d| format!("{} ({})", d.path.display(), d.version)).collect();
        v.join(", ")
    }

    /// How often the kernel's OOM killer has killed in the memory cgroup
    /// (memory.events on v2, memory.oom_control on v1); 0 without one.
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .filter_map(|d| {
                let file = match d.version {
                    Version::V2 => "memory.events",
                    Version::V1 => "memory.oom_control",
                };
                let text = std::fs::read_to_string(d.path.join(file)).ok()?;
                text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// Removes the VM's cgroups once their processes are gone (any left are
    /// killed: they were the backend's), then the parents this launch created
    /// if no other VM's cgroup is in them.
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let mut first_err = None;
        for d in self.dirs.iter().rev() {
            let Some((leaf, parents)) = d.created.split_last() else { continue };
            if let Err(e) = remove_leaf(leaf) {
                first_err.get_or_insert(e);
                continue;
            }
            for p in parents.iter().rev() {
                // Busy or not empty: another VM's cgroup is in it now; it stays.
                if let Err(e) = std::fs::remove_dir(p) {
                    debug!("left {}: {e}", p.display());
                    break;
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            warn!("backend cgroup: {e}");
        }
    }
}

/// Creates `d`'s directories, returning which were created. A parent removed by
/// another VM's cleanup between two steps is made again.
fn make_dir(d: &DirPlan, name: &str) -> Result<Made, CgroupError> {
    let leaf = d.path();
    for _attempt in 0..3 {
        let mut created = Vec::new();
        let mut p = d.mount.clone();
        let mut gone = false;
        for (i, part) in d.parts.iter().enumerate() {
            p.push(part);
            let is_leaf = i + 1 == d.parts.len();
            if is_leaf && p.is_dir() {
                clear_stale(&p, name)?;
            }
            match std::fs::create_dir(&p) {
                Ok(()) => created.push(p.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !is_leaf => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    gone = true;
                    break;
                }
                Err(e) => {
                    undo(&created);
                    return Err(io_err("create", &p, e));
                }
            }
        }
        if !gone {
            return Ok(Made { version: d.version, path: leaf, created });
        }
        undo(&created);
    }
    Err(io_err("create", &leaf, io::ErrorKind::NotFound.into()))
}

/// Removes a cgroup left by an earlier run of this VM, if it is empty.
fn clear_stale(path: &Path, name: &str) -> Result<(), CgroupError> {
    let pids = procs_of(path).map_err(|e| io_err("read", &path.join("cgroup.procs"), e))?;
    if !pids.is_empty() {
        return Err(CgroupError::InUse { path: path.to_path_buf(), pids, name: name.to_string() });
    }
    info!("removing {}, left empty by an earlier run", path.display());
    std::fs::remove_dir(path).map_err(|e| io_err("remove", path, e))
}

fn undo(created: &[PathBuf]) {
    for p in created.iter().rev() {
        let _ = std::fs::remove_dir(p);
    }
}

/// On v2, makes `d`'s controllers available to its cgroup: each is enabled in
/// cgroup.subtree_control of every cgroup from the root down to the VM's parent
/// that does not have it yet.
fn enable_controllers(d: &DirPlan) -> Result<(), CgroupError> {
    // The VM's own cgroup is a leaf: nothing to hand down from it.
    for depth in 0..d.parts.len() {
        let dir = d.parts[..depth].iter().fold(d.mount.clone(), |p, c| p.join(c));
        let file = dir.join("cgroup.subtree_control");
        let on = std::fs::read_to_string(&file).map_err(|e| io_err("read", &file, e))?;
        for c in &d.controllers {
            if !on.split_whitespace().any(|x| x == *c) {
                std::fs::write(&file, format!("+{c}")).map_err(|e| io_err("write", &file, e))?;
                debug!("enabled {c} in {}", file.display());
            }
        }
    }
    Ok(())
}

/// The pids in a cgroup (cgroup.procs).
fn procs_of(path: &Path) -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(path.join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Removes a VM's cgroup: waits for its processes to go (the backend has been
/// reaped, but a process it started may remain; those are killed).
fn remove_leaf(path: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        let e = match std::fs::remove_dir(path) {
            Ok(()) => {
                debug!("removed {}", path.display());
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() >= REMOVE_WAIT {
            return Err(io_err("remove", path, e));
        }
        for pid in procs_of(path).unwrap_or_default() {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                warn!("killing pid {pid}, left in {} after the backend ended", path.display());
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is in
                // this VM's cgroup, which only the backend and what it started joined.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pid` in decimal, in `buf`, without allocating.
fn format_pid(pid: libc::pid_t, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = u64::try_from(pid).unwrap_or(0);
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    //! The parsing and planning tests read /proc texts of real hosts. The tests
    //! named `real_*` make cgroups on this host's cgroup file system and run
    //! processes in them; they need root (CI runs as root) or a delegated cgroup,
    //! and fail saying so without, unless GPUVISOR_SKIP_CGROUP_TESTS=1.

    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    const PURE_V2_MOUNTINFO: &str = "\
24 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// systemd's hybrid layout with cpu and cpuacct mounted together, and the
    /// memory hierarchy nested as on the machine these tests were written on.
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/66dc
3:cpuset:/
1:cpu,cpuacct:/
0::/
";

    fn cfg(parent: &str, limits: Limits) -> CgroupConfig {
        CgroupConfig { parent: parent.to_string(), limits, optional: false }
    }

    const ALL: Limits = Limits { cpus: Some(1.5), cpu_weight: Some(200), memory_mib: Some(512) };

    fn writes(d: &DirPlan) -> Vec<String> {
        d.writes.iter().map(|w| format!("{}={}", w.file, w.value)).collect()
    }

    #[test]
    fn pure_v2_gets_one_cgroup_with_cpu_max_and_memory_max() {
        let l = Layout::parse(PURE_V2_MOUNTINFO, "0::/user.slice/session-2.scope\n", |m| {
            assert_eq!(m, Path::new("/sys/fs/cgroup"));
            Some("cpuset cpu io memory hugetlb pids\n".to_string())
        });
        let plan = l.plan(&cfg(DEFAULT_PARENT, ALL), "demo").unwrap();
        assert_eq!(plan.paths(), [PathBuf::from("/sys/fs/cgroup/gpuvisor/demo")]);
        let d = &plan.dirs[0];
        assert_eq!((d.version, d.controllers.clone()), (Version::V2, vec!["cpu", "memory"]));
        assert_eq!(writes(d), ["cpu.max=150000 100000", "cpu.weight=200", "memory.max=536870912", "memory.swap.max=0"]);
        assert!(d.writes[3].if_present);
        // A relative parent goes under gpuvisor-vm's own cgroup.
        let plan = l.plan(&cfg("vms", ALL), "demo").unwrap();
        assert_eq!(plan.paths(), [PathBuf::from("/sys/fs/cgroup/user.slice/session-2.scope/vms/demo")]);
    }

    #[test]
    fn v1_gets_a_cgroup_per_hierarchy_with_cfs_quota_and_limit_in_bytes() {
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP, |_| Some(String::new()));
        let plan = l.plan(&cfg(DEFAULT_PARENT, ALL), "demo").unwrap();
        assert_eq!(
            plan.paths(),
            [
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/gpuvisor/demo"),
                PathBuf::from("/sys/fs/cgroup/memory/gpuvisor/demo")
            ]
        );
        assert!(plan.dirs.iter().all(|d| d.version == Version::V1));
        assert_eq!(writes(&plan.dirs[0]), ["cpu.cfs_period_us=100000", "cpu.cfs_quota_us=150000", "cpu.shares=2048"]);
        assert_eq!(writes(&plan.dirs[1]), ["memory.limit_in_bytes=536870912", "memory.memsw.limit_in_bytes=536870912"]);
        // Relative: each hierarchy from where this process is in it.
        let plan = l.plan(&cfg("t", ALL), "demo").unwrap();
        assert_eq!(
            plan.paths(),
            [
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/t/demo"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api/66dc/t/demo")
            ]
        );
        let lines = plan.describe();
        assert!(
            lines[0].starts_with("cgroup v1 /sys/fs/cgroup/cpu,cpuacct/t/demo: cpu.cfs_period_us=100000"),
            "{lines:?}"
        );
    }

    #[test]
    fn only_the_controllers_of_the_set_limits_are_used() {
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP, |_| None);
        let plan = l.plan(&cfg("/g", Limits { memory_mib: Some(64), ..Default::default() }), "a").unwrap();
        assert_eq!(plan.paths(), [PathBuf::from("/sys/fs/cgroup/memory/g/a")]);
        let plan = l.plan(&cfg("/g", Limits { cpu_weight: Some(1), ..Default::default() }), "a").unwrap();
        assert_eq!(writes(&plan.dirs[0]), ["cpu.shares=10"]);
    }

    #[test]
    fn a_missing_controller_is_an_error_that_says_what_to_do() {
        // A hybrid host whose unified hierarchy holds no controller, and no memory mount.
        let mountinfo: String =
            HYBRID_MOUNTINFO.lines().filter(|l| !l.contains("memory")).map(|l| l.to_string() + "\n").collect();
        let l = Layout::parse(&mountinfo, HYBRID_CGROUP, |_| Some(String::new()));
        let e = l.plan(&cfg(DEFAULT_PARENT, ALL), "demo").unwrap_err();
        assert!(matches!(e, CgroupError::NoController("memory")), "{e}");
        assert!(e.to_string().contains("optional = true"), "{e}");
    }

    #[test]
    fn a_container_mount_shows_its_own_cgroup_as_the_root() {
        // No cgroup namespace: /proc/self/cgroup gives the full path, the mount's
        // root field the part of the hierarchy it shows.
        let mountinfo = "500 400 0:26 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n";
        let l = Layout::parse(mountinfo, "0::/docker/abc\n", |_| Some("cpu memory".to_string()));
        let plan = l.plan(&cfg("vms", ALL), "x").unwrap();
        assert_eq!(plan.paths(), [PathBuf::from("/sys/fs/cgroup/vms/x")]);
        // Where this process is outside what the mount shows, only absolute parents work.
        let l = Layout::parse(mountinfo, "0::/elsewhere\n", |_| Some("cpu memory".to_string()));
        assert!(matches!(l.plan(&cfg("vms", ALL), "x"), Err(CgroupError::OwnCgroupUnknown { .. })));
        assert_eq!(l.plan(&cfg("/vms", ALL), "x").unwrap().paths(), [PathBuf::from("/sys/fs/cgroup/vms/x")]);
    }

    #[test]
    fn parent_paths_are_plain() {
        for ok in ["/gpuvisor", "gpuvisor", "/", "", "a/b-c_d.e@f:g+h", "machine.slice/gpuvisor"] {
            assert_eq!(parent_error(ok), None, "{ok}");
        }
        for bad in ["../x", "/a/../b", "a/./b", "a b", "a\nb", "$(x)", "."] {
            assert!(parent_error(bad).is_some(), "{bad} accepted");
        }
    }

    #[test]
    fn errors_say_what_to_do_by_cause() {
        let e = |errno, path: &str| io_err("write", Path::new(path), io::Error::from_raw_os_error(errno)).to_string();
        let denied = e(libc::EACCES, "/sys/fs/cgroup/gpuvisor/cgroup.procs");
        assert!(denied.contains("Delegate=yes") && denied.contains("optional = true"), "{denied}");
        assert!(e(libc::EROFS, "/sys/fs/cgroup/memory/gpuvisor").contains("read-only"));
        let busy = e(libc::EBUSY, "/sys/fs/cgroup/user.slice/cgroup.subtree_control");
        assert!(busy.contains("and /sys/fs/cgroup/user.slice does"), "{busy}");
        assert!(e(libc::EINVAL, "/sys/fs/cgroup/cpu/g/v/cpu.cfs_quota_us").contains("lower backend.cgroup.cpus"));
        assert!(e(libc::ENOENT, "/sys/fs/cgroup/g/v/cpu.max").contains("no cpu.max here"));
    }

    #[test]
    fn pids_format_without_allocating() {
        let mut buf = [0u8; 20];
        assert_eq!(format_pid(1, &mut buf), b"1");
        assert_eq!(format_pid(4_194_304, &mut buf), b"4194304");
        assert_eq!(format_pid(0, &mut buf), b"0");
    }

    // --- on this host's cgroup file system ---

    const SKIP_ENV: &str = "GPUVISOR_SKIP_CGROUP_TESTS";
    /// Set in a child of this test binary: allocate and touch this many MiB, or
    /// spin on the CPU for this many ms, then exit.
    const ALLOC_ENV: &str = "GPUVISOR_CGROUP_TEST_ALLOC_MIB";
    const SPIN_ENV: &str = "GPUVISOR_CGROUP_TEST_SPIN_MS";

    fn skip(test: &str) -> bool {
        let skip = std::env::var(SKIP_ENV).as_deref() == Ok("1");
        if skip {
            eprintln!("skipping {test}: {SKIP_ENV}=1");
        }
        skip
    }

    /// The VM cgroup `name` with `limits` under a parent of this test's own
    /// (relative: under the cgroup this test runs in, which a test harness may
    /// hold in a memory cgroup of its own).
    fn real_cgroup(test: &str, name: &str, limits: Limits) -> (Plan, VmCgroup) {
        let parent = format!("gpuvisor-test-{}-{test}", std::process::id());
        let layout = Layout::detect().expect("read /proc/self/mountinfo and /proc/self/cgroup");
        let plan = layout
            .plan(&cfg(&parent, limits), name)
            .unwrap_or_else(|e| panic!("{test} needs the cpu and memory cgroup controllers: {e}"));
        let cg = VmCgroup::create(&plan).unwrap_or_else(|e| {
            panic!("{test} makes real cgroups and needs root (as CI runs it) or a delegated cgroup ({SKIP_ENV}=1 skips it): {e}")
        });
        (plan, cg)
    }

    /// This test binary again, running only `child_work` with `env` set.
    fn child(cg: &VmCgroup, env: (&str, String)) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args(["--exact", "cgroup::tests::child_work", "--nocapture", "--test-threads=1"])
            .env(env.0, env.1)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cg.place(&mut cmd);
        cmd
    }

    /// Does what ALLOC_ENV or SPIN_ENV asks in a child; nothing in a plain run.
    #[test]
    fn child_work() {
        if let Some(mib) = std::env::var(ALLOC_ENV).ok().and_then(|v| v.parse::<usize>().ok()) {
            let mut v: Vec<u8> = Vec::with_capacity(mib << 20);
            // Touch every page, so that each is really charged to the cgroup.
            for _ in 0..(mib << 20) / 4096 {
                v.extend_from_slice(&[1u8; 4096]);
            }
            println!("allocated {} MiB", std::hint::black_box(&v).len() >> 20);
        }
        if let Some(ms) = std::env::var(SPIN_ENV).ok().and_then(|v| v.parse::<u64>().ok()) {
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(ms) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            // SAFETY: getrusage fills the struct it is given; zeroed is a valid start.
            let cpu = unsafe {
                let mut ru: libc::rusage = std::mem::zeroed();
                libc::getrusage(libc::RUSAGE_SELF, &mut ru);
                Duration::new(ru.ru_utime.tv_sec as u64, ru.ru_utime.tv_usec as u32 * 1000)
                    + Duration::new(ru.ru_stime.tv_sec as u64, ru.ru_stime.tv_usec as u32 * 1000)
            };
            println!("spun {} ms wall, cpu {} ms", start.elapsed().as_millis(), cpu.as_millis());
        }
    }

    /// The cgroup path `/proc/<pid>/cgroup` shows for the hierarchy of `dir`.
    fn proc_cgroup_lines(pid: u32) -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn real_a_child_starts_inside_with_its_limits_and_the_cgroup_goes_away() {
        if skip("real_a_child_starts_inside") {
            return;
        }
        let limits = Limits { cpus: Some(0.5), cpu_weight: Some(200), memory_mib: Some(64) };
        let (plan, mut cg) = real_cgroup("inside", "vm-a", limits);
        let paths: Vec<PathBuf> = cg.paths().iter().map(|p| p.to_path_buf()).collect();
        assert_eq!(paths, plan.paths());
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cg.place(&mut cmd);
        let mut sleeper = cmd.spawn().expect("start sleep in the cgroup");
        let pid = sleeper.id();

        // The kernel's view from both sides: the cgroup lists the process, and the
        // process's /proc/<pid>/cgroup names the cgroup, in each hierarchy.
        let lines = proc_cgroup_lines(pid);
        for d in &plan.dirs {
            let procs = procs_of(&d.path()).unwrap();
            assert_eq!(procs, [pid], "{} holds {procs:?}", d.path().display());
            let rel = format!("/{}", d.parts.join("/"));
            let line = match d.version {
                Version::V2 => lines.iter().find(|l| l.starts_with("0::")),
                Version::V1 => lines
                    .iter()
                    .find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| d.controllers.contains(&c)))),
            };
            let line = line.unwrap_or_else(|| panic!("no line for {} in {lines:?}", d.path().display()));
            assert!(line.ends_with(&rel), "{line} is not in {rel}");
            // Every limit reads back as written.
            for w in &d.writes {
                let f = d.path().join(w.file);
                if w.if_present && !f.exists() {
                    continue;
                }
                assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), w.value, "{}", f.display());
            }
        }
        // The values themselves, whichever version this host has.
        let all: Vec<String> = plan.dirs.iter().flat_map(writes).collect();
        let v1 =
            ["cpu.cfs_quota_us=50000", "cpu.cfs_period_us=100000", "cpu.shares=2048", "memory.limit_in_bytes=67108864"];
        let v2 = ["cpu.max=50000 100000", "cpu.weight=200", "memory.max=67108864"];
        let want: &[&str] = if plan.dirs[0].version == Version::V1 { &v1 } else { &v2 };
        for w in want {
            assert!(all.iter().any(|a| a == w), "{w} not in {all:?}");
        }

        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        cg.remove().unwrap();
        for p in &paths {
            assert!(!p.exists(), "{} is still there", p.display());
            // The parent this test made is gone too.
            assert!(!p.parent().unwrap().exists(), "{} is still there", p.parent().unwrap().display());
        }
    }

    #[test]
    fn real_the_kernel_kills_a_backend_past_its_memory_limit() {
        if skip("real_memory_limit") {
            return;
        }
        let limits = Limits { memory_mib: Some(48), ..Default::default() };
        let (_, cg) = real_cgroup("oom", "vm-m", limits);
        // Within the limit: finishes.
        let out = child(&cg, (ALLOC_ENV, "16".into())).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains("allocated 16 MiB"), "{:?}: {stdout}", out.status);
        assert_eq!(cg.oom_kills(), 0);
        // Past it: killed by the OOM killer, never finishing.
        let out = child(&cg, (ALLOC_ENV, "160".into())).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{:?}: {stdout}", out.status);
        assert!(!stdout.contains("allocated"), "{stdout}");
        assert!(cg.oom_kills() >= 1, "the cgroup counted no OOM kill");
    }

    #[test]
    fn real_the_cpu_quota_throttles_a_busy_backend() {
        if skip("real_cpu_quota") {
            return;
        }
        let limits = Limits { cpus: Some(0.05), ..Default::default() };
        let (plan, cg) = real_cgroup("cpu", "vm-c", limits);
        let out = child(&cg, (SPIN_ENV, "600".into())).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?}: {stdout}", out.status);
        let (wall, cpu) = stdout
            .lines()
            .find_map(|l| {
                // The harness prints its own words before the child's on the line.
                let (_, rest) = l.split_once("spun ")?;
                let (wall, cpu) = rest.split_once(" ms wall, cpu ")?;
                Some((wall.parse::<u64>().ok()?, cpu.strip_suffix(" ms")?.parse::<u64>().ok()?))
            })
            .unwrap_or_else(|| panic!("no spin line in {stdout}"));
        // 5% of a CPU, with room for start-up and one period's overrun.
        assert!(cpu * 5 < wall, "used {cpu} ms of CPU in {wall} ms under a 0.05-CPU quota");
        let stat = std::fs::read_to_string(plan.dirs[0].path().join("cpu.stat")).unwrap();
        let throttled: u64 = stat.lines().find_map(|l| l.strip_prefix("nr_throttled ")?.parse().ok()).unwrap_or(0);
        assert!(throttled > 0, "never throttled: {stat}");
    }

    #[test]
    fn real_a_cgroup_that_cannot_be_made_fails_unless_optional() {
        if skip("real_optional") {
            return;
        }
        // A parent named like a cgroup's own file: the VM's cgroup cannot go below it.
        let mut c = cfg("cgroup.procs", Limits { memory_mib: Some(64), ..Default::default() });
        let e = setup(&c, "vm-o").unwrap_err();
        assert!(matches!(e, CgroupError::Io { action: "create", .. }), "{e}");
        c.optional = true;
        assert!(setup(&c, "vm-o").unwrap().is_none());
    }

    #[test]
    fn real_a_running_vm_keeps_its_cgroup_and_an_empty_leftover_is_replaced() {
        if skip("real_in_use") {
            return;
        }
        let limits = Limits { memory_mib: Some(64), ..Default::default() };
        let (plan, cg) = real_cgroup("reuse", "vm-r", limits);
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cg.place(&mut cmd);
        let mut sleeper = cmd.spawn().unwrap();
        // A second VM of the same name while the first runs.
        let e = VmCgroup::create(&plan).unwrap_err();
        assert!(matches!(&e, CgroupError::InUse { pids, .. } if *pids == [sleeper.id()]), "{e}");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        // gpuvisor-vm killed before its cleanup: the empty cgroup stays behind.
        std::mem::forget(cg);
        let mut again = VmCgroup::create(&plan).expect("an empty leftover is made afresh");
        again.remove().unwrap();
        for p in plan.paths() {
            assert!(!p.exists(), "{} is still there", p.display());
            // The parent was the first launch's to remove; it left it behind.
            std::fs::remove_dir(p.parent().unwrap()).unwrap();
        }
    }

    #[test]
    fn real_v2_hands_controllers_down_and_places_the_child() {
        if skip("real_v2") {
            return;
        }
        // This host's unified hierarchy, whatever controllers it has (on a v1 host
        // with a hybrid mount, maybe none): the v2 steps on a real cgroup2 file system.
        let layout = Layout::detect().unwrap();
        let Some(h) = layout.hierarchies.iter().find(|h| h.version == Version::V2).cloned() else {
            eprintln!("no cgroup2 mount on this host; the v2 steps are not tried");
            return;
        };
        let Some(own) = &h.own else { panic!("own cgroup not under {}", h.mount.display()) };
        let parent = format!("gpuvisor-test-{}-v2", std::process::id());
        let mut parts = parts(&own.to_string_lossy());
        parts.extend([parent, "vm-2".to_string()]);
        // hugetlb is the controller a hybrid host leaves to v2, if any is; a host
        // with none here still checks creation, placement and removal.
        let controllers: Vec<&'static str> =
            ["hugetlb", "pids"].into_iter().filter(|c| h.controllers.iter().any(|x| x == c)).take(1).collect();
        let root_control = h.mount.join("cgroup.subtree_control");
        let before = std::fs::read_to_string(&root_control).unwrap_or_default();
        let plan = Plan {
            name: "vm-2".into(),
            dirs: vec![DirPlan {
                version: Version::V2,
                mount: h.mount.clone(),
                parts,
                controllers: controllers.clone(),
                writes: vec![],
            }],
        };
        let mut cg = VmCgroup::create(&plan).unwrap_or_else(|e| panic!("needs root ({SKIP_ENV}=1 skips): {e}"));
        let leaf = plan.dirs[0].path();
        let available = std::fs::read_to_string(leaf.join("cgroup.controllers")).unwrap();
        for c in &controllers {
            assert!(available.split_whitespace().any(|x| x == *c), "{c} not handed down: {available:?}");
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cg.place(&mut cmd);
        let mut sleeper = cmd.spawn().unwrap();
        let rel = format!("/{}", plan.dirs[0].parts.join("/"));
        let lines = proc_cgroup_lines(sleeper.id());
        assert!(lines.iter().any(|l| l.starts_with("0::") && l.ends_with(&rel)), "{rel} not in {lines:?}");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        cg.remove().unwrap();
        assert!(!leaf.exists() && !leaf.parent().unwrap().exists());
        // Leave the root as it was (the launcher itself never takes a controller back).
        for c in &controllers {
            if !before.split_whitespace().any(|x| x == *c) {
                let _ = std::fs::write(&root_control, format!("-{c}"));
            }
        }
    }

    #[test]
    fn real_v2_refuses_a_parent_that_holds_processes_and_says_why() {
        if skip("real_v2_busy") {
            return;
        }
        let layout = Layout::detect().unwrap();
        let Some(h) = layout.hierarchies.iter().find(|h| h.version == Version::V2).cloned() else {
            eprintln!("no cgroup2 mount on this host; the v2 rule is not tried");
            return;
        };
        let Some(c) = ["hugetlb", "pids", "memory", "cpu"].into_iter().find(|c| h.controllers.iter().any(|x| x == c))
        else {
            eprintln!("the cgroup2 mount holds no controller; the v2 rule is not tried");
            return;
        };
        let own = parts(&h.own.clone().unwrap().to_string_lossy());
        let busy_parts: Vec<String> =
            own.iter().cloned().chain([format!("gpuvisor-test-{}-busy", std::process::id())]).collect();
        let root_control = h.mount.join("cgroup.subtree_control");
        let before = std::fs::read_to_string(&root_control).unwrap_or_default();
        // A cgroup with a process in it, as gpuvisor-vm's own is.
        let busy = Plan {
            name: "busy".into(),
            dirs: vec![DirPlan {
                version: Version::V2,
                mount: h.mount.clone(),
                parts: busy_parts.clone(),
                controllers: vec![],
                writes: vec![],
            }],
        };
        let mut holder = VmCgroup::create(&busy).unwrap_or_else(|e| panic!("needs root ({SKIP_ENV}=1 skips): {e}"));
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        holder.place(&mut cmd);
        let mut sleeper = cmd.spawn().unwrap();
        // A VM cgroup below it that needs a controller handed down through it.
        let mut parts = busy_parts;
        parts.extend(["p".to_string(), "vm".to_string()]);
        let plan = Plan {
            name: "vm".into(),
            dirs: vec![DirPlan {
                version: Version::V2,
                mount: h.mount.clone(),
                parts,
                controllers: vec![c],
                writes: vec![],
            }],
        };
        let e = VmCgroup::create(&plan).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
                && text.contains("cannot hand controllers to its children"),
            "{text}"
        );
        // What the failed launch made is gone again.
        let p = plan.dirs[0].path();
        assert!(!p.exists() && !p.parent().unwrap().exists(), "{} left behind", p.display());
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        holder.remove().unwrap();
        if !before.split_whitespace().any(|x| x == c) {
            let _ = std::fs::write(&root_control, format!("-{c}"));
        }
    }
}
