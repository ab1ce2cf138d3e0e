//! A fleet: several VMs from one TOML file, started together and, optionally,
//! under a gpuvisord of their own that schedules their vGPUs. Each VM runs as
//! `gpuvisor-vm run` would run it (launch::run), on a thread of its own.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::warn;

use crate::accel::Accel;
use crate::launch::{self, Outcome, RunOptions};
use crate::process::{catch_termination_signals, signalled, ChildGuard};
use crate::spec::{
    absolute_path, find_beside_us_or_on_path, find_program, merge_tables, resolve_paths, slice_ms_error, VmConfig,
    VmSpec,
};
use crate::Error;

/// Name of the daemon binary looked up next to gpuvisor-vm and on PATH.
pub const DEFAULT_DAEMON: &str = "gpuvisord";
/// A fleet's daemon listens on a free port of the loopback address by default,
/// so that fleets and a host's own daemon (port 9400) do not collide.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";
/// Where a started daemon's backend socket goes, inside the fleet's run dir.
pub const DAEMON_SOCKET: &str = "gpuvisord.sock";

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSpec {
    /// gpuvisord binary; default: next to gpuvisor-vm, else on PATH.
    pub binary: Option<PathBuf>,
    /// Settings database and admin token; default: the fleet's run dir.
    pub state_dir: Option<PathBuf>,
    /// Admin API address; port 0 means a free port, picked at start.
    pub listen: Option<String>,
    /// Serve the admin API without a token.
    pub no_auth: bool,
    /// Default time slice of each GPU, in ms; default: the daemon's.
    pub slice_ms: Option<f64>,
    /// Arguments appended to gpuvisord's command line.
    pub extra_args: Vec<String>,
    /// Join the gpuvisord already listening on this backend socket instead of
    /// starting one.
    pub socket: Option<PathBuf>,
    /// How long to wait for gpuvisord to create its backend socket.
    pub start_timeout_s: u64,
}

impl Default for DaemonSpec {
    fn default() -> Self {
        DaemonSpec {
            binary: None,
            state_dir: None,
            listen: None,
            no_auth: false,
            slice_ms: None,
            extra_args: Vec::new(),
            socket: None,
            start_timeout_s: 10,
        }
    }
}

/// The file as written: VM tables stay raw until the defaults are laid under them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    daemon: Option<DaemonSpec>,
    #[serde(default)]
    defaults: toml::Table,
    #[serde(default)]
    vm: Vec<toml::Table>,
}

/// A fleet file, read: the daemon table and each VM's spec with the defaults
/// applied. Relative paths are resolved against the file that sets them.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    pub path: PathBuf,
    pub daemon: Option<DaemonSpec>,
    pub vms: Vec<VmSpec>,
}

impl FleetSpec {
    pub fn load(path: &Path) -> Result<FleetSpec, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(format!("read fleet spec {}", path.display()), e))?;
        FleetSpec::from_toml(&text, path)
    }

    /// Parses a fleet file's text; `path` is where it lives (for relative paths
    /// and messages). Reports every VM's problems at once.
    pub fn from_toml(text: &str, path: &Path) -> Result<FleetSpec, Error> {
        let parse_error = |messages: Vec<String>| Error::FleetParse { path: path.to_path_buf(), messages };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let file: FleetFile = toml::from_str(text).map_err(|e| parse_error(vec![e.to_string()]))?;
        if file.vm.is_empty() {
            return Err(parse_error(vec!["no VMs: add a [[vm]] table for each".to_string()]));
        }
        let mut daemon = file.daemon;
        if let Some(d) = &mut daemon {
            for p in [&mut d.binary, &mut d.state_dir, &mut d.socket].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        let mut defaults = file.defaults;
        resolve_paths(&mut defaults, &base);

        let mut vms = Vec::new();
        let mut messages = Vec::new();
        for (i, own) in file.vm.into_iter().enumerate() {
            match vm_spec(&defaults, own, &base) {
                Ok(spec) => vms.push(spec),
                Err(m) => messages.push(format!("vm[{i}]: {m}")),
            }
        }
        if !messages.is_empty() {
            return Err(parse_error(messages));
        }
        Ok(FleetSpec { path: path.to_path_buf(), daemon, vms })
    }

    /// Checks the daemon table and every VM as `check` would, with each VM's
    /// backend pointed at the fleet's daemon, and resolves what will run.
    pub fn plan(&self, run_dir: &Path) -> Result<FleetPlan, Error> {
        let mut errs = Vec::new();
        let daemon = self.daemon.as_ref().and_then(|d| daemon_plan(d, run_dir, &mut errs));
        // Known even when the daemon table has errors, so the VMs are checked too.
        let socket = self.daemon.as_ref().map(|d| match &d.socket {
            Some(s) => absolute_path(s),
            None => started_daemon_socket(run_dir),
        });

        let mut vms = Vec::new();
        let mut names = HashSet::new();
        for spec in &self.vms {
            let name = &spec.name;
            if !names.insert(name.clone()) {
                errs.push(format!("vm {name}: name: another VM of the fleet has it; names must differ"));
            }
            if spec.shell {
                errs.push(format!("vm {name}: shell: a fleet has no terminal to give a VM's shell"));
            }
            let mut spec = spec.clone();
            if let (Some(socket), None) = (&socket, &spec.backend.command) {
                match &spec.backend.daemon {
                    Some(own) if absolute_path(own) != *socket => errs.push(format!(
                        "vm {name}: backend.daemon: {} is not the fleet's daemon ({}); leave it out, [daemon] sets it",
                        own.display(),
                        socket.display()
                    )),
                    _ => spec.backend.daemon = Some(socket.clone()),
                }
            }
            match spec.validate() {
                Ok(vm) => vms.push(vm),
                Err(Error::InvalidSpec(list)) => errs.extend(list.into_iter().map(|e| format!("vm {name}: {e}"))),
                Err(e) => return Err(e),
            }
        }
        if !errs.is_empty() {
            return Err(Error::InvalidFleet { path: self.path.clone(), errors: errs });
        }
        Ok(FleetPlan { run_dir: run_dir.to_path_buf(), daemon, vms })
    }
}

/// One `[[vm]]`: the defaults, then the spec file it names, then its own fields.
fn vm_spec(defaults: &toml::Table, mut own: toml::Table, base: &Path) -> Result<VmSpec, String> {
    let mut table = defaults.clone();
    if let Some(file) = own.remove("spec") {
        let Some(file) = file.as_str() else {
            return Err("spec: expected the path of a VM spec file".to_string());
        };
        let file = base.join(file);
        let text = std::fs::read_to_string(&file).map_err(|e| format!("spec: cannot read {}: {e}", file.display()))?;
        let mut from_file: toml::Table =
            text.parse().map_err(|e: toml::de::Error| format!("{}: {e}", file.display()))?;
        resolve_paths(&mut from_file, file.parent().unwrap_or_else(|| Path::new("")));
        merge_tables(&mut table, from_file);
    }
    resolve_paths(&mut own, base);
    merge_tables(&mut table, own);
    let name = table.get("name").and_then(toml::Value::as_str).map(str::to_string);
    let spec = VmSpec::from_table(table).map_err(|e| match &name {
        Some(n) => format!("({n}) {e}"),
        None => e,
    })?;
    if name.is_none() {
        return Err("name: required in a fleet (each VM needs its own)".to_string());
    }
    Ok(spec)
}

/// What a fleet runs: validated VMs and its daemon.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub run_dir: PathBuf,
    pub daemon: Option<DaemonPlan>,
    pub vms: Vec<VmConfig>,
}

/// The fleet's daemon: one it starts, or one that already runs.
#[derive(Debug, Clone, PartialEq)]
pub enum DaemonPlan {
    Start(DaemonLaunch),
    Join(PathBuf),
}

impl DaemonPlan {
    /// The backend socket the VMs' backends register on.
    pub fn socket(&self) -> &Path {
        match self {
            DaemonPlan::Start(d) => &d.socket,
            DaemonPlan::Join(s) => s,
        }
    }
}

/// A gpuvisord the fleet starts.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonLaunch {
    pub program: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Port 0: a free port, picked at start.
    pub listen: SocketAddr,
    /// None with no_auth.
    pub token_file: Option<PathBuf>,
    pub slice_ms: Option<f64>,
    pub extra_args: Vec<String>,
    pub start_timeout: Duration,
}

impl DaemonLaunch {
    /// gpuvisord's arguments, listening on `listen`.
    pub fn args(&self, listen: SocketAddr) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--backend-socket".into(),
            self.socket.clone().into(),
            "--listen".into(),
            listen.to_string().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
        ];
        if self.token_file.is_none() {
            a.push("--no-auth".into());
        }
        if let Some(ms) = self.slice_ms {
            a.push("--slice-ms".into());
            a.push(ms.to_string().into());
        }
        a.extend(self.extra_args.iter().map(OsString::from));
        a
    }
}

fn daemon_plan(d: &DaemonSpec, run_dir: &Path, errs: &mut Vec<String>) -> Option<DaemonPlan> {
    if let Some(socket) = &d.socket {
        let only_started = [
            ("binary", d.binary.is_some()),
            ("state_dir", d.state_dir.is_some()),
            ("listen", d.listen.is_some()),
            ("no_auth", d.no_auth),
            ("slice_ms", d.slice_ms.is_some()),
            ("extra_args", !d.extra_args.is_empty()),
        ];
        for (field, set) in only_started {
            if set {
                errs.push(format!(
                    "daemon.{field}: applies to a daemon the fleet starts, not to one it joins (daemon.socket)"
                ));
            }
        }
        return Some(DaemonPlan::Join(absolute_path(socket)));
    }
    let program = match &d.binary {
        Some(b) => find_program(b).or_else(|| {
            errs.push(format!("daemon.binary: {} not found or not executable", b.display()));
            None
        }),
        None => find_beside_us_or_on_path(DEFAULT_DAEMON).or_else(|| {
            errs.push(format!(
                "daemon.binary: {DEFAULT_DAEMON} is neither next to gpuvisor-vm nor on PATH; set daemon.binary"
            ));
            None
        }),
    };
    let listen_text = d.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
        errs.push(format!("daemon.listen: {listen_text:?} is not an address such as 127.0.0.1:9400"));
    });
    if let Some(msg) = d.slice_ms.and_then(slice_ms_error) {
        errs.push(format!("daemon.slice_ms: {msg}"));
    }
    if d.start_timeout_s == 0 {
        errs.push("daemon.start_timeout_s: must be at least 1".to_string());
    }
    let state_dir = absolute_path(d.state_dir.as_deref().unwrap_or(run_dir));
    let token_file = (!d.no_auth).then(|| {
        flag_value(&d.extra_args, "--token-file")
            .map(|f| absolute_path(Path::new(&f)))
            .unwrap_or_else(|| state_dir.join("admin.token"))
    });
    Some(DaemonPlan::Start(DaemonLaunch {
        program: program?,
        socket: started_daemon_socket(run_dir),
        state_dir,
        listen: listen.ok()?,
        token_file,
        slice_ms: d.slice_ms,
        extra_args: d.extra_args.clone(),
        start_timeout: Duration::from_secs(d.start_timeout_s),
    }))
}

fn started_daemon_socket(run_dir: &Path) -> PathBuf {
    absolute_path(&run_dir.join(DAEMON_SOCKET))
}

/// The value of `--flag V` or `--flag=V` in `args`, the last one if repeated.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            found = it.next().cloned();
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        }
    }
    found
}

/// The run directory a fleet gets when none is given.
pub fn default_run_dir(spec_path: &Path) -> PathBuf {
    let stem: String = spec_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(24)
        .collect();
    let name = if stem.starts_with("fleet") { stem } else { format!("fleet-{stem}") };
    crate::runtime_base().join(format!("{name}-{}", std::process::id()))
}

#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Leave a daemon the fleet started running when the fleet ends.
    pub keep_daemon: bool,
}

/// How one VM of the fleet ended.
#[derive(Debug)]
pub struct VmResult {
    pub name: String,
    pub result: Result<Outcome, Error>,
    /// From the VM's start (its backend's) to its end.
    pub elapsed: Duration,
}

impl VmResult {
    /// The exit code gpuvisor-vm run would have given for this VM.
    pub fn exit_code(&self) -> u8 {
        match &self.result {
            Ok(o) => u8::try_from(o.guest_rc).unwrap_or(1),
            Err(e) => e.exit_code(),
        }
    }

    /// `a exit 0 (12.3 s)`, or `b failed (4.0 s): why`.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        match &self.result {
            Ok(o) => format!("{} exit {} ({secs:.1} s)", self.name, o.guest_rc),
            Err(e) => format!("{} failed ({secs:.1} s): {e}", self.name),
        }
    }
}

/// How the fleet ended.
#[derive(Debug)]
pub struct FleetOutcome {
    pub vms: Vec<VmResult>,
    /// 0 if every VM exited 0; 128+N after signal N; else the first failing
    /// VM's code (in fleet order).
    pub exit_code: u8,
}

/// Prints a fleet status line on stdout, in one write (VM consoles share it).
fn say(msg: &str) {
    crate::console::write_line(std::io::stdout(), "fleet: ", msg.as_bytes());
}

/// Runs the fleet: starts its daemon (if it has one to start), then every VM at
/// once, each with `accels[i]`; waits for all of them and stops the daemon
/// unless `keep_daemon`. A VM's failure does not stop the others; a termination
/// signal stops them all.
pub fn run(plan: &FleetPlan, accels: &[Accel], opts: &FleetOptions) -> Result<FleetOutcome, Error> {
    assert_eq!(accels.len(), plan.vms.len(), "one accelerator per VM");
    catch_termination_signals();
    crate::create_private_dir(&plan.run_dir)
        .map_err(|e| Error::io(format!("create run dir {}", plan.run_dir.display()), e))?;
    say(&format!("run dir {}", plan.run_dir.display()));

    let mut daemon = match &plan.daemon {
        Some(DaemonPlan::Start(d)) => Some(start_daemon(d, &plan.run_dir, opts.keep_daemon)?),
        Some(DaemonPlan::Join(socket)) => {
            say(&format!("joining the gpuvisord at {}", socket.display()));
            if !socket.exists() {
                warn!("no daemon listens at {} yet; the backends run alone until one does", socket.display());
            }
            None
        }
        None => None,
    };

    let names: Vec<&str> = plan.vms.iter().map(|v| v.name.as_str()).collect();
    say(&format!("starting {} VM{}: {}", names.len(), if names.len() == 1 { "" } else { "s" }, names.join(", ")));
    let mut results: Vec<Option<VmResult>> = plan.vms.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for (i, (vm, &accel)) in plan.vms.iter().zip(accels).enumerate() {
            let tx = tx.clone();
            let opts = RunOptions { run_dir: Some(plan.run_dir.join(&vm.name)), console_prefix: true };
            let spawned = std::thread::Builder::new().name(format!("vm-{}", vm.name)).spawn_scoped(scope, move || {
                let start = Instant::now();
                let result = launch::run(vm, accel, &opts);
                let r = VmResult { name: vm.name.clone(), result, elapsed: start.elapsed() };
                let _ = tx.send((i, r));
            });
            if let Err(e) = spawned {
                results[i] = Some(VmResult {
                    name: vm.name.clone(),
                    result: Err(Error::io("start a VM thread", e)),
                    elapsed: Duration::ZERO,
                });
            }
        }
        drop(tx);
        let mut daemon_gone = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok((i, r)) => results[i] = Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if let Some((d, _)) = daemon.as_mut().filter(|_| !daemon_gone) {
                if let Some(status) = d.try_wait() {
                    daemon_gone = true;
                    say(&format!(
                        "gpuvisord (pid {}) exited ({status}); the backends run alone until a daemon listens on {} again",
                        d.pid(),
                        plan.daemon.as_ref().map_or(Path::new(""), DaemonPlan::socket).display()
                    ));
                }
            }
        }
    });

    let vms: Vec<VmResult> = results.into_iter().flatten().collect();
    for r in &vms {
        say(&r.summary());
    }
    if let Some((mut d, _)) = daemon.take() {
        if opts.keep_daemon {
            let pid = d.release();
            say(&format!("gpuvisord (pid {pid}) left running (--keep-daemon)"));
        } else {
            d.stop(Duration::from_secs(5));
            say("gpuvisord stopped");
        }
    }
    let exit_code = match signalled() {
        Some(sig) => u8::try_from(128 + sig).unwrap_or(1),
        None => vms.iter().map(VmResult::exit_code).find(|&c| c != 0).unwrap_or(0),
    };
    Ok(FleetOutcome { vms, exit_code })
}

/// Starts gpuvisord and waits for its backend socket. Returns the child and the
/// admin API's address.
fn start_daemon(d: &DaemonLaunch, run_dir: &Path, detached: bool) -> Result<(ChildGuard, SocketAddr), Error> {
    launch::prepare_socket(&d.socket)?;
    let listen = concrete_listen(d.listen)?;
    let mut cmd = Command::new(&d.program);
    cmd.args(d.args(listen));
    let log = run_dir.join("gpuvisord.log");
    let mut child = launch::spawn_logged("gpuvisord", cmd, &log, detached)?;
    launch::wait_for_socket(&mut child, &d.socket, d.start_timeout, &log)?;
    say(&format!("gpuvisord pid {}, log {}", child.pid(), log.display()));
    say(&format!("backend socket {}", d.socket.display()));
    let auth = match &d.token_file {
        Some(t) => format!("token in {}", t.display()),
        None => "no authentication".to_string(),
    };
    say(&format!("admin API http://{listen} ({auth})"));
    Ok((child, listen))
}

/// `addr`, with port 0 replaced by a port that is free now. gpuvisord reports
/// the address it was given, so the fleet picks the port to know it.
fn concrete_listen(addr: SocketAddr) -> Result<SocketAddr, Error> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io(format!("find a free port on {}", addr.ip()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpuvisor-fleet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn exe(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn defaults_apply_unless_a_vm_sets_its_own() {
        let text = r#"
            [defaults]
            kernel = "guest/vmlinuz"
            memory_mib = 512
            [defaults.backend]
            engine = "sim"
            weight = 3
            [[vm]]
            name = "a"
            [vm.backend]
            weight = 1
            [[vm]]
            name = "b"
            memory_mib = 256
            kernel = "/abs/k"
        "#;
        let f = FleetSpec::from_toml(text, Path::new("/fleets/f.toml")).unwrap();
        let (a, b) = (&f.vms[0], &f.vms[1]);
        assert_eq!(a.kernel.as_deref(), Some(Path::new("/fleets/guest/vmlinuz")));
        assert_eq!((a.memory_mib, a.backend.weight), (512, Some(1)));
        assert_eq!(a.backend.engine, crate::Engine::Sim);
        assert_eq!((b.memory_mib, b.backend.weight), (256, Some(3)));
        assert_eq!(b.kernel.as_deref(), Some(Path::new("/abs/k")));
        assert_eq!(f.daemon, None);
    }

    #[test]
    fn a_vm_can_come_from_a_spec_file_with_its_own_relative_paths() {
        let d = scratch("specfile");
        std::fs::create_dir_all(d.join("vms")).unwrap();
        std::fs::write(d.join("vms/x.toml"), "name = \"x\"\nkernel = \"k\"\nvcpus = 3\n").unwrap();
        let text = "[defaults]\nvcpus = 1\nmemory_mib = 300\n[[vm]]\nspec = \"vms/x.toml\"\nmemory_mib = 400\n";
        let f = FleetSpec::from_toml(text, &d.join("fleet.toml")).unwrap();
        let x = &f.vms[0];
        assert_eq!(x.name, "x");
        assert_eq!(x.kernel.as_deref(), Some(d.join("vms/k").as_path()));
        assert_eq!((x.vcpus, x.memory_mib), (3, 400), "file over defaults, own fields over file");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn typos_and_nameless_vms_are_reported_per_vm() {
        let text = "[[vm]]\nname = \"a\"\nmemory_mb = 1\n[[vm]]\nrun = \"x\"\n";
        let Err(Error::FleetParse { messages, .. }) = FleetSpec::from_toml(text, Path::new("/f.toml")) else {
            panic!("expected FleetParse")
        };
        assert!(messages[0].starts_with("vm[0]: (a)") && messages[0].contains("memory_mb"), "{messages:?}");
        assert!(messages[1].starts_with("vm[1]: name: required"), "{messages:?}");
        let e = FleetSpec::from_toml("[daemon]\nlisten_on = \"x\"\n[[vm]]\nname = \"a\"\n", Path::new("/f.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
        let e = FleetSpec::from_toml("[daemon]\n", Path::new("/f.toml")).unwrap_err();
        assert!(e.to_string().contains("no VMs"), "{e}");
    }

    /// A fleet file whose VMs would validate on this machine: fake kernel,
    /// initramfs, QEMU and backend in `d`.
    fn valid_fleet(d: &Path, daemon: &str, vms: &str) -> FleetSpec {
        std::fs::write(d.join("k"), "k").unwrap();
        std::fs::write(d.join("i"), "i").unwrap();
        exe(d, "qemu", "exit 0");
        exe(d, "be", "exit 0");
        exe(d, "gpuvisord", "exit 0");
        let text = format!(
            "{daemon}\n[defaults]\nkernel = \"k\"\ninitramfs = \"i\"\nqemu = \"./qemu\"\nmemory_mib = 128\n\
             [defaults.backend]\nbinary = \"be\"\nengine = \"sim\"\n{vms}"
        );
        FleetSpec::from_toml(&text, &d.join("fleet.toml")).unwrap()
    }

    #[test]
    fn a_started_daemon_gets_every_backend_and_defaults_under_the_run_dir() {
        let d = scratch("plan");
        let f = valid_fleet(
            &d,
            "[daemon]\nbinary = \"gpuvisord\"\nslice_ms = 5",
            "[[vm]]\nname = \"a\"\n[vm.backend]\nweight = 2\n[[vm]]\nname = \"b\"\n",
        );
        let plan = f.plan(&d.join("run")).unwrap();
        let Some(DaemonPlan::Start(daemon)) = &plan.daemon else { panic!("{:?}", plan.daemon) };
        assert_eq!(daemon.socket, d.join("run/gpuvisord.sock"));
        assert_eq!(daemon.state_dir, d.join("run"));
        assert_eq!(daemon.token_file, Some(d.join("run/admin.token")));
        assert_eq!(daemon.listen.port(), 0);
        let args = daemon.args("127.0.0.1:5000".parse().unwrap());
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            format!(
                "--backend-socket {0}/run/gpuvisord.sock --listen 127.0.0.1:5000 --state-dir {0}/run --slice-ms 5",
                d.display()
            )
        );
        for vm in &plan.vms {
            let args = vm.backend.render(Path::new("/s"), &vm.name);
            let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
            let sock = d.join("run/gpuvisord.sock");
            assert!(args.windows(2).any(|w| w == ["--daemon", sock.to_str().unwrap()]), "{args:?}");
        }
        let a = plan.vms[0].backend.render(Path::new("/s"), "a");
        assert!(a.windows(2).any(|w| w == ["--weight", "2"]), "{a:?}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn fleet_problems_are_reported_together() {
        let d = scratch("bad");
        let f = valid_fleet(
            &d,
            "[daemon]\nbinary = \"/nonexistent/gpuvisord\"\nlisten = \"localhost\"\nslice_ms = 0.1",
            "[[vm]]\nname = \"a\"\nshell = true\n[[vm]]\nname = \"a\"\n[vm.backend]\nweight = 0\ndaemon = \"/elsewhere.sock\"\n",
        );
        let Err(Error::InvalidFleet { errors, .. }) = f.plan(&d.join("run")) else { panic!() };
        for want in [
            "daemon.binary:",
            "daemon.listen:",
            "daemon.slice_ms:",
            "vm a: shell:",
            "vm a: name:",
            "vm a: backend.weight:",
            "vm a: backend.daemon:",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(want)), "no {want}: {errors:?}");
        }
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn joining_a_running_daemon_takes_no_start_settings() {
        let d = scratch("join");
        let f = valid_fleet(&d, "[daemon]\nsocket = \"/run/g.sock\"", "[[vm]]\nname = \"a\"\n");
        let plan = f.plan(&d.join("run")).unwrap();
        assert_eq!(plan.daemon, Some(DaemonPlan::Join("/run/g.sock".into())));
        let f = valid_fleet(&d, "[daemon]\nsocket = \"/run/g.sock\"\nno_auth = true", "[[vm]]\nname = \"a\"\n");
        let e = f.plan(&d.join("run")).unwrap_err();
        assert!(e.to_string().contains("daemon.no_auth:"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn token_file_follows_extra_args() {
        assert_eq!(flag_value(&["--token-file".into(), "/t".into()], "--token-file"), Some("/t".into()));
        assert_eq!(flag_value(&["--token-file=/u".into()], "--token-file"), Some("/u".into()));
        assert_eq!(flag_value(&["--token-filex=/u".into()], "--token-file"), None);
    }

    #[test]
    fn every_vm_runs_and_the_exit_code_is_the_first_failure() {
        let d = scratch("run");
        let f = valid_fleet(&d, "", "[[vm]]\nname = \"ok\"\n[[vm]]\nname = \"bad\"\n");
        let mut plan = f.plan(&d.join("run")).unwrap();
        let listen = exe(&d, "listen", "touch \"$2\"; exec sleep 30");
        for vm in &mut plan.vms {
            vm.backend.program = listen.clone();
            vm.qemu = exe(
                &d,
                &format!("qemu-{}", vm.name),
                &format!("echo 'gpuvisor-guest: exit {}'", if vm.name == "ok" { 0 } else { 3 }),
            );
        }
        let out = run(&plan, &[Accel::Tcg, Accel::Tcg], &FleetOptions::default()).unwrap();
        assert_eq!(out.exit_code, 3);
        let summaries: Vec<_> = out.vms.iter().map(VmResult::summary).collect();
        assert!(summaries[0].starts_with("ok exit 0 ("), "{summaries:?}");
        assert!(summaries[1].starts_with("bad exit 3 ("), "{summaries:?}");
        assert!(d.join("run/ok/console.log").is_file() && d.join("run/bad/console.log").is_file());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_started_daemon_is_stopped_at_the_end() {
        let d = scratch("daemon");
        let f = valid_fleet(&d, "[daemon]\nbinary = \"gpuvisord\"", "[[vm]]\nname = \"a\"\n");
        let mut plan = f.plan(&d.join("run")).unwrap();
        // A fake gpuvisord: creates its socket, notes its pid, waits.
        let fake = exe(&d, "fake-daemon", "touch \"$2\"; echo $$ > \"$6/pid\"; exec sleep 30");
        let Some(DaemonPlan::Start(daemon)) = &mut plan.daemon else { panic!() };
        daemon.program = fake;
        let listen = exe(&d, "listen", "touch \"$2\"; exec sleep 30");
        plan.vms[0].backend.program = listen;
        plan.vms[0].qemu = exe(&d, "qemu-a", "echo 'gpuvisor-guest: exit 0'");
        let out = run(&plan, &[Accel::Tcg], &FleetOptions::default()).unwrap();
        assert_eq!(out.exit_code, 0);
        let pid: i32 = std::fs::read_to_string(d.join("run/pid")).unwrap().trim().parse().unwrap();
        // SAFETY: signal 0 only checks whether the pid exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "gpuvisord {pid} still runs");
        let _ = std::fs::remove_dir_all(d);
    }
}
