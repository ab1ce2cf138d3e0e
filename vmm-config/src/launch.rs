//! Runs one VM: starts the backend, waits for its socket, starts QEMU, streams the
//! console, and stops both processes however the run ends. The helpers that start
//! a logged process and wait for its socket serve gpuvisord in a fleet too.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::accel::Accel;
use crate::cgroup::{self, VmCgroup};
use crate::console::{self, Event};
use crate::process::{catch_termination_signals, detach, harden, signalled, ChildGuard};
use crate::qemu::{qemu_args, shell_quote};
use crate::spec::{VmConfig, MAX_SOCKET_PATH};
use crate::Error;

const POLL: Duration = Duration::from_millis(20);
/// How long the guest may take from its exit line to QEMU's exit.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where the socket and logs go; default: a fresh directory under runtime_base().
    pub run_dir: Option<PathBuf>,
    /// Prefix each console line (and QEMU's stderr) with `[name] `.
    pub console_prefix: bool,
}

/// How a run that reached the guest's exit line went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub guest_rc: i32,
    pub run_dir: PathBuf,
    /// From QEMU's start to the guest's "render node ready" line.
    pub render_ready: Option<Duration>,
    /// From QEMU's start to the guest's exit line.
    pub guest_done: Duration,
}

/// The run directory a VM gets when none is given.
pub fn default_run_dir(name: &str) -> PathBuf {
    crate::runtime_base().join(format!("{name}-{}", std::process::id()))
}

/// Runs the VM to the end. Ok means the guest printed its exit line; its rc is in
/// the outcome. Every error path stops QEMU and the backend first.
pub fn run(vm: &VmConfig, accel: Accel, opts: &RunOptions) -> Result<Outcome, Error> {
    let _span = tracing::info_span!("vm", name = %vm.name).entered();
    let run_dir = opts.run_dir.clone().unwrap_or_else(|| default_run_dir(&vm.name));
    crate::create_private_dir(&run_dir).map_err(|e| Error::io(format!("create run dir {}", run_dir.display()), e))?;
    let socket = run_dir.join("vgpu.sock");
    prepare_socket(&socket)?;
    catch_termination_signals();
    info!("run dir {}", run_dir.display());
    for w in &vm.warnings {
        warn!("{w}");
    }

    // Declared before the backend so that, on every way out, the backend is
    // stopped and reaped before its cgroup is removed.
    let mut backend_cgroup = match &vm.cgroup {
        Some(cfg) => cgroup::setup(cfg, &vm.name)?,
        None => None,
    };
    let mut backend = start_backend(vm, &socket, &run_dir, backend_cgroup.as_ref())?;
    let backend_log = run_dir.join("backend.log");
    wait_for_socket(&mut backend, &socket, Duration::from_secs(vm.backend_start_timeout_s), &backend_log).map_err(
        |e| match e {
            Error::Exited { what, status, when, log, tail } => {
                let status = match oom_note(vm, backend_cgroup.as_ref()) {
                    Some(note) => format!("{status}: {note}"),
                    None => status,
                };
                Error::Exited { what, status, when, log, tail }
            }
            e => e,
        },
    )?;

    let args = qemu_args(vm, accel, &socket);
    let cmdline = shell_quote(&vm.qemu, &args);
    let _ = std::fs::write(run_dir.join("qemu.cmdline"), format!("{cmdline}\n"));
    let console_log = run_dir.join("console.log");
    let qemu_log = run_dir.join("qemu.log");
    let console_file =
        File::create(&console_log).map_err(|e| Error::io(format!("create {}", console_log.display()), e))?;
    let qemu_err_file = File::create(&qemu_log).map_err(|e| Error::io(format!("create {}", qemu_log.display()), e))?;

    let mut cmd = Command::new(&vm.qemu);
    cmd.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
    // An interactive guest shell needs the terminal, and so QEMU must stay in our
    // process group (a background group reading the tty would be stopped).
    cmd.stdin(if vm.interactive { Stdio::inherit() } else { Stdio::null() });
    harden(&mut cmd, !vm.interactive);
    info!("starting QEMU ({accel}); console log {}", console_log.display());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| Error::io(format!("start {}", vm.qemu.display()), e))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let prefix = opts.console_prefix.then(|| format!("[{}] ", vm.name));
    let console_prefix = prefix.clone();
    let console_thread = stdout.map(|out| {
        std::thread::spawn(move || console::pump(out, std::io::stdout(), console_file, console_prefix.as_deref(), tx))
    });
    let stderr_prefix = prefix;
    let stderr_thread =
        stderr.map(|err| std::thread::spawn(move || tee_stderr(err, qemu_err_file, stderr_prefix.as_deref())));
    let mut qemu = ChildGuard::new("QEMU", child);
    info!("QEMU pid {}, backend pid {}", qemu.pid(), backend.pid());

    let deadline = (vm.timeout_s > 0).then(|| started + Duration::from_secs(vm.timeout_s));
    let mut guest_rc: Option<(i32, Instant)> = None;
    let mut render_ready: Option<Instant> = None;
    let mut note = |ev: Event, at: Instant, guest_rc: &mut Option<(i32, Instant)>| match ev {
        Event::RenderReady => {
            render_ready.get_or_insert(at);
        }
        Event::GuestExit(rc) => {
            guest_rc.get_or_insert((rc, at));
        }
    };

    let result: Result<(), Error> = loop {
        for (ev, at) in rx.try_iter() {
            note(ev, at, &mut guest_rc);
        }
        if let Some(sig) = signalled() {
            break Err(Error::Interrupted(sig));
        }
        if qemu.try_wait().is_some() {
            break Ok(());
        }
        if let Some(status) = backend.try_wait() {
            // Normal at power-off (QEMU disconnects, the backend exits); otherwise
            // QEMU follows soon, so give it a moment before calling this a failure.
            if guest_rc.is_none() && qemu.wait_for(Duration::from_secs(2)).is_none() {
                break Err(Error::Exited {
                    what: "backend",
                    status: backend_status(status, vm, backend_cgroup.as_ref()),
                    when: "before the guest finished",
                    log: backend_log.clone(),
                    tail: log_tail(&backend_log),
                });
            }
            continue;
        }
        if let Some((_, at)) = guest_rc {
            if !vm.interactive && at.elapsed() > POWEROFF_GRACE {
                warn!("guest printed its exit line {:?} ago but QEMU is still running; stopping it", POWEROFF_GRACE);
                break Ok(());
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Err(Error::Timeout { secs: vm.timeout_s, console_log: console_log.clone() });
        }
        std::thread::sleep(POLL);
    };

    let qemu_status = qemu.stop(Duration::from_secs(3));
    // The backend exits by itself once QEMU disconnects; otherwise stop it.
    if backend.wait_for(Duration::from_secs(2)).is_none() {
        backend.stop(Duration::from_secs(3));
    }
    if let Some(t) = console_thread {
        let _ = t.join();
    }
    if let Some(t) = stderr_thread {
        let _ = t.join();
    }
    for (ev, at) in rx.try_iter() {
        note(ev, at, &mut guest_rc);
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(cg) = &mut backend_cgroup {
        if let Err(e) = cg.remove() {
            warn!("backend cgroup: {e}");
        }
    }
    info!("logs: {}", run_dir.display());
    result?;

    match guest_rc {
        Some((rc, at)) => {
            if let Some(s) = qemu_status.filter(|s| !s.success()) {
                warn!("QEMU exited with {s} after the guest finished; see {}", qemu_log.display());
            }
            let outcome = Outcome {
                guest_rc: rc,
                run_dir,
                render_ready: render_ready.map(|r| r.duration_since(started)),
                guest_done: at.duration_since(started),
            };
            match outcome.render_ready {
                Some(r) => info!(
                    "guest exit {rc}: render node ready {:.1} s and guest done {:.1} s after QEMU start",
                    r.as_secs_f64(),
                    outcome.guest_done.as_secs_f64()
                ),
                None => info!(
                    "guest exit {rc} {:.1} s after QEMU start (no render node line)",
                    outcome.guest_done.as_secs_f64()
                ),
            }
            Ok(outcome)
        }
        None => Err(Error::QemuExited {
            status: qemu_status.map_or_else(|| "unknown status".to_string(), |s| s.to_string()),
            log: qemu_log.clone(),
            tail: log_tail(&qemu_log),
        }),
    }
}

/// How the backend ended, with what to do when its seccomp filter or its
/// cgroup's memory limit killed it. Under its supervisor (the default) the
/// serving child is the one killed, and the supervisor, once its restarts
/// are spent, exits with the child's status as a shell reports a signal
/// (128 + the signal's number).
fn backend_status(status: std::process::ExitStatus, vm: &VmConfig, cgroup: Option<&VmCgroup>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal().or_else(|| status.code().filter(|c| (129..=159).contains(c)).map(|c| c - 128));
    match signal {
        Some(libc::SIGSYS) => format!(
            "{status}: its seccomp filter stopped a system call; `dmesg | grep type=1326` names it, \
             and --backend-arg=--seccomp=log lets it through"
        ),
        Some(libc::SIGKILL) => match oom_note(vm, cgroup) {
            Some(note) => format!("{status}: {note}"),
            None => status.to_string(),
        },
        _ => status.to_string(),
    }
}

/// What to say when the backend's cgroup saw the OOM killer at work.
fn oom_note(vm: &VmConfig, cgroup: Option<&VmCgroup>) -> Option<String> {
    let mib = vm.cgroup.as_ref()?.limits.memory_mib?;
    (cgroup?.oom_kills() > 0).then(|| {
        format!(
            "the kernel's OOM killer ended it at its cgroup's memory limit (backend.cgroup.memory_mib = {mib}); \
             raise the limit or lower what the VM may make the backend hold (its quota, on the sim engine)"
        )
    })
}

fn start_backend(vm: &VmConfig, socket: &Path, run_dir: &Path, cgroup: Option<&VmCgroup>) -> Result<ChildGuard, Error> {
    let mut cmd = Command::new(&vm.backend.program);
    cmd.args(vm.backend.render(socket, &vm.name))
        .env("GPUVISOR_VM_NAME", &vm.name)
        // The daemon is the spec's to choose (backend.daemon, --daemon), and then it
        // is on the command line for `check` to show; not inherited unseen.
        .env_remove("GPUVISOR_DAEMON");
    if let Some(cg) = cgroup {
        cg.place(&mut cmd);
    }
    spawn_logged("backend", cmd, &run_dir.join("backend.log"), false)
}

/// Makes `socket` usable for a listener: short enough for a socket address, and
/// no stale file left from an earlier run.
pub fn prepare_socket(socket: &Path) -> Result<(), Error> {
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::SocketPathTooLong(socket.to_path_buf()));
    }
    match std::fs::remove_file(socket) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove stale socket {}", socket.display()), e)),
    }
}

/// Starts `cmd` with stdout and stderr in the file `log` and no stdin. The child
/// dies with gpuvisor-vm unless `detached`, in which case it outlives it.
pub fn spawn_logged(what: &'static str, mut cmd: Command, log: &Path, detached: bool) -> Result<ChildGuard, Error> {
    let out = File::create(log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io(format!("duplicate the fd of {}", log.display()), e))?;
    // A log file, not a terminal: no colour codes (tracing-subscriber honours NO_COLOR).
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).env("NO_COLOR", "1");
    if detached {
        detach(&mut cmd);
    } else {
        harden(&mut cmd, true);
    }
    let program = PathBuf::from(cmd.get_program());
    let args: Vec<OsString> = cmd.get_args().map(OsString::from).collect();
    info!("starting {what}: {}", shell_quote(&program, &args));
    info!("{what} log: {}", log.display());
    let child = cmd.spawn().map_err(|e| Error::io(format!("start {what} {}", program.display()), e))?;
    Ok(ChildGuard::new(what, child))
}

/// Waits until `child` has created `socket`; fails if it exits first, if the
/// time is up or on a termination signal.
pub fn wait_for_socket(child: &mut ChildGuard, socket: &Path, timeout: Duration, log: &Path) -> Result<(), Error> {
    let start = Instant::now();
    // Only existence is checked: connecting to test it would count as the one
    // frontend connection of backends that serve a single client and then exit.
    while !socket.exists() {
        if let Some(sig) = signalled() {
            return Err(Error::Interrupted(sig));
        }
        if let Some(status) = child.try_wait() {
            return Err(Error::Exited {
                what: child.what,
                status: status.to_string(),
                when: "before creating its socket",
                log: log.to_path_buf(),
                tail: log_tail(log),
            });
        }
        if start.elapsed() >= timeout {
            return Err(Error::NoSocket {
                what: child.what,
                socket: socket.to_path_buf(),
                secs: timeout.as_secs(),
                log: log.to_path_buf(),
                tail: log_tail(log),
            });
        }
        std::thread::sleep(POLL);
    }
    info!("{} socket ready after {} ms", child.what, start.elapsed().as_millis());
    Ok(())
}

/// Copies QEMU's stderr to its log file and to our stderr, there a line at a
/// time after `prefix` if one is given.
fn tee_stderr(mut input: impl Read, mut log: File, prefix: Option<&str>) {
    let mut lines = console::LineSplitter::default();
    let mut buf = [0u8; 4096];
    while let Ok(n) = input.read(&mut buf) {
        if n == 0 {
            break;
        }
        let _ = log.write_all(&buf[..n]);
        match prefix {
            None => {
                let _ = std::io::stderr().write_all(&buf[..n]);
            }
            Some(p) => lines.feed(&buf[..n], |l| console::write_line(std::io::stderr(), p, l)),
        }
    }
    if let Some(p) = prefix {
        if !lines.rest().is_empty() {
            console::write_line(std::io::stderr(), p, lines.rest());
        }
    }
}

/// The last lines of a log, indented, for error messages.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].iter().map(|l| format!("\n    | {l}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AccelChoice, BackendCommand};

    /// Runs `vm` under TCG with its run directory inside the scratch dir `d`.
    fn run_in(d: &Path, vm: &VmConfig) -> Result<Outcome, Error> {
        run(vm, Accel::Tcg, &RunOptions { run_dir: Some(d.join("run")), ..Default::default() })
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpuvisor-launch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A VM whose "QEMU" and "backend" are shell scripts playing their parts.
    fn fake_vm(dir: &Path, qemu_body: &str, backend_body: &str, timeout_s: u64) -> VmConfig {
        VmConfig {
            name: "fake".into(),
            memory_mib: 128,
            vcpus: 1,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: String::new(),
            share_dir: None,
            accel: AccelChoice::Tcg,
            backend: BackendCommand { program: script(dir, "backend", backend_body), args: vec!["{socket}".into()] },
            backend_start_timeout_s: 2,
            timeout_s,
            interactive: false,
            qemu: script(dir, "qemu", qemu_body),
            ..Default::default()
        }
    }

    const LISTEN: &str = "touch \"$1\"; exec sleep 30";

    #[test]
    fn guest_exit_line_gives_the_rc() {
        let d = scratch("rc");
        let vm = fake_vm(
            &d,
            "echo 'gpuvisor-guest: render node ready after 1 ms'; echo 'gpuvisor-guest: exit 7'",
            LISTEN,
            20,
        );
        let out = run_in(&d, &vm).unwrap();
        assert_eq!(out.guest_rc, 7);
        assert!(out.render_ready.is_some());
        let console = std::fs::read_to_string(d.join("run/console.log")).unwrap();
        assert!(console.contains("gpuvisor-guest: exit 7"));
        assert!(!d.join("run/vgpu.sock").exists(), "socket left behind");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn qemu_dying_without_exit_line_is_an_error() {
        let d = scratch("die");
        let vm = fake_vm(&d, "echo 'qemu: boom' >&2; exit 1", LISTEN, 20);
        let e = run_in(&d, &vm).unwrap_err();
        assert!(matches!(e, Error::QemuExited { .. }), "{e}");
        assert!(e.to_string().contains("boom"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn timeout_kills_and_reports() {
        let d = scratch("timeout");
        let vm = fake_vm(&d, "exec sleep 30", LISTEN, 1);
        let start = Instant::now();
        let e = run_in(&d, &vm).unwrap_err();
        assert!(matches!(e, Error::Timeout { secs: 1, .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn backend_without_socket_is_reported_with_its_log() {
        let d = scratch("nosock");
        let vm = fake_vm(&d, "exit 0", "echo 'no GPU here' >&2; exit 3", 20);
        let e = run_in(&d, &vm).unwrap_err();
        assert!(matches!(e, Error::Exited { what: "backend", .. }), "{e}");
        assert!(e.to_string().contains("no GPU here"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn socket_path_length_is_checked() {
        let d = scratch("long");
        let vm = fake_vm(&d, "exit 0", LISTEN, 20);
        let long = d.join("x".repeat(120));
        let e = run(&vm, Accel::Tcg, &RunOptions { run_dir: Some(long), ..Default::default() }).unwrap_err();
        assert!(matches!(e, Error::SocketPathTooLong(_)), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    /// A fake VM whose backend runs in a cgroup under a parent of this test's
    /// own (relative, so under the cgroup the test runs in).
    fn cgroup_vm(d: &Path, tag: &str, qemu_body: &str, backend_body: &str, memory_mib: u64) -> VmConfig {
        let mut vm = fake_vm(d, qemu_body, backend_body, 20);
        vm.name = format!("vm-{tag}");
        vm.cgroup = Some(crate::cgroup::CgroupConfig {
            parent: format!("gpuvisor-launch-test-{}", std::process::id()),
            limits: crate::cgroup::Limits { cpus: Some(0.5), memory_mib: Some(memory_mib), ..Default::default() },
            optional: false,
        });
        vm
    }

    fn skip_cgroup(test: &str) -> bool {
        let skip = std::env::var("GPUVISOR_SKIP_CGROUP_TESTS").as_deref() == Ok("1");
        if skip {
            eprintln!("skipping {test}: GPUVISOR_SKIP_CGROUP_TESTS=1");
        }
        skip
    }

    #[test]
    fn the_backend_runs_in_its_cgroup_and_the_cgroup_ends_with_the_vm() {
        if skip_cgroup("the_backend_runs_in_its_cgroup") {
            return;
        }
        let d = scratch("cgroup");
        // QEMU's stand-in looks at the cgroups while the VM runs.
        let mut vm =
            cgroup_vm(&d, "cg", "", "echo $$ > \"$(dirname \"$1\")/backend.pid\"; touch \"$1\"; exec sleep 30", 64);
        let plan = crate::cgroup::Layout::detect()
            .and_then(|l| l.plan(vm.cgroup.as_ref().unwrap(), &vm.name))
            .expect("this host has cpu and memory cgroup controllers");
        let paths = plan.paths();
        let look: String =
            paths.iter().map(|p| format!("cat {}/cgroup.procs >> {}/in-cgroup; ", p.display(), d.display())).collect();
        vm.qemu = script(&d, "qemu", &format!("{look}echo 'gpuvisor-guest: exit 0'"));
        let out = run_in(&d, &vm).unwrap_or_else(|e| panic!("needs root (GPUVISOR_SKIP_CGROUP_TESTS=1 skips): {e}"));
        assert_eq!(out.guest_rc, 0);
        let pid = std::fs::read_to_string(d.join("run/backend.pid")).unwrap().trim().to_string();
        let seen = std::fs::read_to_string(d.join("in-cgroup")).unwrap();
        // The backend, alone, in each hierarchy's cgroup.
        assert_eq!(seen.lines().collect::<Vec<_>>(), vec![pid.as_str(); paths.len()], "{paths:?}");
        for p in &paths {
            assert!(!p.exists(), "{} outlived the VM", p.display());
        }
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_backend_killed_at_its_memory_limit_is_reported_as_such() {
        if skip_cgroup("a_backend_killed_at_its_memory_limit") {
            return;
        }
        let d = scratch("cgroup-oom");
        // The shell holds 200 MB of output in memory, past the 48 MiB limit.
        let hog = "touch \"$1\"; x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived; sleep 30";
        let vm = cgroup_vm(&d, "oom", "sleep 15", hog, 48);
        let e = run_in(&d, &vm).unwrap_err();
        assert!(matches!(e, Error::Exited { what: "backend", .. }), "{e}");
        assert!(e.to_string().contains("OOM killer") && e.to_string().contains("memory_mib = 48"), "{e}");
        assert!(!std::fs::read_to_string(d.join("run/backend.log")).unwrap().contains("survived"));
        let _ = std::fs::remove_dir_all(d);
    }
}
