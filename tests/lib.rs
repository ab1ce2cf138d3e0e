//! Helpers for the integration tests: where the built pieces are, how to boot
//! VMs with gpuvisor-vm (one with `run`, several with `fleet`), how to read what
//! the guests printed, and how to ask gpuvisord's admin API.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A program that `scripts/build.sh` built (target/<profile>/<name>, or under
/// $CARGO_TARGET_DIR), where GPUVISOR_PROFILE picks the profile (default debug).
pub fn built(name: &str) -> anyhow::Result<PathBuf> {
    let profile = std::env::var("GPUVISOR_PROFILE").unwrap_or_else(|_| "debug".into());
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), |t| workspace().join(t));
    let p = target.join(&profile).join(name);
    ensure!(p.exists(), "{} is missing: run scripts/build.sh (PROFILE={profile}) first", p.display());
    Ok(p)
}

/// The test guest's kernel and initramfs, built by `scripts/build.sh`.
pub fn guest_image() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = workspace().join("build/guest");
    let (kernel, initramfs) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    for p in [&kernel, &initramfs] {
        ensure!(p.exists(), "{} is missing: run scripts/build.sh first", p.display());
    }
    Ok((kernel, initramfs))
}

/// What a VM run left: gpuvisor-vm's exit code (or, in a fleet, the VM's) and
/// the guest console.
pub struct VmRun {
    pub code: i32,
    pub console: String,
}

impl VmRun {
    /// The CHECK lines the guest printed, as (name, passed).
    pub fn checks(&self) -> Vec<(String, bool)> {
        self.console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix("CHECK "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": ")?;
                Some((name.to_string(), rest.starts_with("PASS")))
            })
            .collect()
    }

    pub fn failed_checks(&self) -> Vec<String> {
        self.checks().into_iter().filter(|(_, ok)| !ok).map(|(n, _)| n).collect()
    }

    /// The figures gv_load printed (`GVLOAD {json}`), the last such line.
    pub fn gvload(&self) -> anyhow::Result<Value> {
        self.json_line("GVLOAD ")
    }

    /// The figures gv_mem printed (`GVMEM {json}`), the last such line.
    pub fn gvmem(&self) -> anyhow::Result<Value> {
        self.json_line("GVMEM ")
    }

    /// The JSON after `prefix` on the last line that starts with it.
    pub fn json_line(&self, prefix: &str) -> anyhow::Result<Value> {
        let line = self
            .console
            .lines()
            .rev()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
            .with_context(|| format!("the guest printed no {} line", prefix.trim()))?;
        serde_json::from_str(line).with_context(|| format!("{} line is not JSON: {line}", prefix.trim()))
    }
}

/// Boots the test guest (built by `scripts/build.sh`) with a sim-engine vGPU
/// and runs `cmd` in it.
pub fn run_vm(name: &str, cmd: &str, quota_mib: u64) -> anyhow::Result<VmRun> {
    run_vm_with(name, cmd, quota_mib, &[])
}

/// `gpuvisor-vm run` of the guest image on the sim engine, running `cmd`.
fn vm_command(name: &str, cmd: &str, quota_mib: u64) -> anyhow::Result<Command> {
    let (kernel, initramfs) = guest_image()?;
    let mut c = Command::new(built("gpuvisor-vm")?);
    c.args(["run", "--name", name, "--engine", "sim", "--timeout-s", "600"])
        .arg("--quota-mib")
        .arg(quota_mib.to_string())
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .args(["--run", cmd]);
    Ok(c)
}

/// `run_vm` with more gpuvisor-vm flags (`--share-dir`, `--host-path`, ...).
pub fn run_vm_with(name: &str, cmd: &str, quota_mib: u64, flags: &[OsString]) -> anyhow::Result<VmRun> {
    let out = vm_command(name, cmd, quota_mib)?.args(flags).output()?;
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{console}\n--- gpuvisor-vm stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    Ok(VmRun { code: out.status.code().unwrap_or(-1), console })
}

/// `run_vm`, calling `on_line` with each console line as the guest prints
/// it and gpuvisor-vm's pid (to act on the VM's processes mid-run).
pub fn run_vm_watching(
    name: &str,
    cmd: &str,
    quota_mib: u64,
    mut on_line: impl FnMut(&str, u32),
) -> anyhow::Result<VmRun> {
    let mut child = vm_command(name, cmd, quota_mib)?.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    let mut stderr = child.stderr.take().context("gpuvisor-vm's stderr")?;
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut console = String::new();
    for line in BufReader::new(child.stdout.take().context("gpuvisor-vm's stdout")?).lines() {
        let line = line?;
        on_line(line.trim_end_matches('\r'), pid);
        console.push_str(&line);
        console.push('\n');
    }
    let status = child.wait()?;
    eprintln!("{console}\n--- gpuvisor-vm stderr ---\n{}", err.join().unwrap_or_default());
    Ok(VmRun { code: status.code().unwrap_or(-1), console })
}

/// Every descendant of process `pid` (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

/// A scratch directory, removed at the end unless the test failed (then its
/// logs stay for a look). Short, because VM sockets live under it.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("gvt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create scratch dir");
        Scratch(d)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; its files stay in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A guest command that waits until the host creates `go` in the shared
/// directory (`share_dir`, at /mnt/host in the guest), then runs `cmd`: VMs that
/// boot at different speeds start their work together.
pub fn after_go(cmd: &str) -> String {
    format!("while [ ! -e /mnt/host/go ]; do usleep 50000; done; {cmd}")
}

/// Writes a fleet file `fleet.toml` in `dir` for sim-engine VMs of 512 MiB and
/// one vCPU that each run `run`, with a gpuvisord of the fleet's own (state in
/// `dir`/state, admin API on a free port). `vms` are (name, weight);
/// `defaults_extra` is more TOML for the [defaults] table.
pub fn sim_fleet_spec(dir: &Path, run: &str, vms: &[(&str, u32)], defaults_extra: &str) -> anyhow::Result<PathBuf> {
    let (kernel, initramfs) = guest_image()?;
    let mut text = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\nslice_ms = 10\n\n\
         [defaults]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\nmemory_mib = 512\nvcpus = 1\n\
         timeout_s = 240\nrun = {run:?}\n{defaults_extra}\n\
         [defaults.backend]\nengine = \"sim\"\nquota_mib = 256\n"
    );
    for (name, weight) in vms {
        text.push_str(&format!("\n[[vm]]\nname = {name:?}\n[vm.backend]\nweight = {weight}\n"));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Lines of a child's stdout as they arrive, for waiting on one.
#[derive(Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    arrived: Condvar,
}

/// `gpuvisor-vm fleet` running in the background. Dropping it stops the fleet
/// (SIGTERM, which stops its VMs and daemon; then SIGKILL).
pub struct Fleet {
    child: Child,
    out: Arc<Lines>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// The gpuvisord a fleet started, as the fleet reported it.
#[derive(Debug, Clone)]
pub struct FleetDaemon {
    pub pid: i32,
    pub socket: PathBuf,
    /// `127.0.0.1:port`
    pub addr: String,
    pub token_file: Option<PathBuf>,
}

impl Fleet {
    /// Starts `gpuvisor-vm fleet --spec spec --run-dir run_dir`.
    pub fn start(spec: &Path, run_dir: &Path) -> anyhow::Result<Fleet> {
        let mut child = Command::new(built("gpuvisor-vm")?)
            .args(["fleet", "--spec"])
            .arg(spec)
            .arg("--run-dir")
            .arg(run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start gpuvisor-vm fleet")?;
        let out = Arc::new(Lines::default());
        let stdout = child.stdout.take().context("fleet stdout")?;
        let stderr = child.stderr.take().context("fleet stderr")?;
        let lines = out.clone();
        let started = Instant::now();
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{:7.1} {line}", started.elapsed().as_secs_f64());
                    lines.lines.lock().expect("lines").0.push(line.trim_end_matches('\r').to_string());
                    lines.arrived.notify_all();
                }
                lines.lines.lock().expect("lines").1 = true;
                lines.arrived.notify_all();
            }),
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{:7.1} stderr: {line}", started.elapsed().as_secs_f64());
                }
            }),
        ];
        Ok(Fleet { child, out, readers })
    }

    /// Waits up to `timeout` for a stdout line that `pred` accepts, and returns it.
    pub fn wait_for_line(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let end = Instant::now() + timeout;
        let mut guard = self.out.lines.lock().map_err(|_| anyhow!("lines poisoned"))?;
        loop {
            if let Some(l) = guard.0.iter().find(|l| pred(l)) {
                return Ok(l.clone());
            }
            let now = Instant::now();
            if guard.1 {
                bail!("the fleet ended before {what}");
            }
            if now >= end {
                bail!("no {what} within {timeout:?}");
            }
            guard = self.out.arrived.wait_timeout(guard, end - now).map_err(|_| anyhow!("lines poisoned"))?.0;
        }
    }

    /// Waits until every VM in `names` has printed the guest's `run:` line (it
    /// is then running its command).
    pub fn wait_until_running(&self, names: &[&str], timeout: Duration) -> anyhow::Result<()> {
        for n in names {
            let prefix = format!("[{n}] gpuvisor-guest: run: ");
            self.wait_for_line(timeout, &format!("run line of VM {n}"), |l| l.starts_with(&prefix))?;
        }
        Ok(())
    }

    /// The daemon the fleet started, once it has reported it.
    pub fn daemon(&self) -> anyhow::Result<FleetDaemon> {
        let t = Duration::from_secs(30);
        let pid_line = self.wait_for_line(t, "gpuvisord pid line", |l| l.starts_with("fleet: gpuvisord pid "))?;
        let sock_line = self.wait_for_line(t, "backend socket line", |l| l.starts_with("fleet: backend socket "))?;
        let api_line = self.wait_for_line(t, "admin API line", |l| l.starts_with("fleet: admin API http://"))?;
        let pid = pid_line["fleet: gpuvisord pid ".len()..]
            .split(',')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("no pid in {pid_line:?}"))?;
        let api = &api_line["fleet: admin API http://".len()..];
        let (addr, auth) = api.split_once(' ').with_context(|| format!("odd line {api_line:?}"))?;
        let token_file = auth.strip_prefix("(token in ").and_then(|t| t.strip_suffix(')')).map(PathBuf::from);
        Ok(FleetDaemon {
            pid,
            socket: PathBuf::from(&sock_line["fleet: backend socket ".len()..]),
            addr: addr.to_string(),
            token_file,
        })
    }

    /// Waits up to `timeout` for the fleet to end; returns what it printed.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<FleetRun> {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            ensure!(Instant::now() < end, "the fleet did not end within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let lines = self.out.lines.lock().map_err(|_| anyhow!("lines poisoned"))?.0.clone();
        Ok(FleetRun { code: status.code().unwrap_or(-1), lines })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        signal(self.child.id() as i32, libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pids here are of
    // processes the test started (directly or through the fleet).
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether a process with this pid exists (and is not a zombie of ours).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// What a fleet printed, and its exit code.
pub struct FleetRun {
    pub code: i32,
    pub lines: Vec<String>,
}

impl FleetRun {
    /// One VM of the fleet: its console (the lines prefixed `[name] `, without
    /// the prefix) and its exit code from the fleet's summary line (-1 if none).
    pub fn vm(&self, name: &str) -> VmRun {
        let prefix = format!("[{name}] ");
        let console: Vec<&str> = self.lines.iter().filter_map(|l| l.strip_prefix(&prefix)).collect();
        let summary = format!("fleet: {name} exit ");
        let code = self
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix(&summary))
            .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(-1);
        VmRun { code, console: console.join("\n") }
    }
}

/// gpuvisord's admin API over plain HTTP/1.1 (std TcpStream).
pub struct AdminApi {
    addr: String,
    token: Option<String>,
}

impl AdminApi {
    /// The API at `addr` (host:port), with the bearer token read from `token_file`.
    pub fn new(addr: &str, token_file: Option<&Path>) -> anyhow::Result<AdminApi> {
        let token = match token_file {
            Some(f) => Some(
                std::fs::read_to_string(f).with_context(|| format!("read token {}", f.display()))?.trim().to_string(),
            ),
            None => None,
        };
        Ok(AdminApi { addr: addr.to_string(), token })
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None)
    }

    pub fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("PATCH", path, Some(body))
    }

    /// `GET /v1/vms`.
    pub fn vms(&self) -> anyhow::Result<Vec<Value>> {
        match self.get("/v1/vms")? {
            Value::Array(v) => Ok(v),
            other => bail!("GET /v1/vms: expected an array, got {other}"),
        }
    }

    /// A request whose answer must be 2xx with a JSON body.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, text) = self.request(method, path, body)?;
        ensure!((200..300).contains(&status), "{method} {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr).with_context(|| format!("connect to {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).with_context(|| format!("{method} {path}: read the answer"))?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, rest) = raw.split_once("\r\n\r\n").with_context(|| format!("{method} {path}: no header end"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{method} {path}: odd status line in {head:?}"))?;
        let chunked = head.lines().any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
        let body = if chunked { dechunk(rest)? } else { rest.to_string() };
        Ok((status, body))
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("short chunk")?);
        rest = after.get(size + 2..).context("chunk end")?;
    }
}

/// A gpuvisord started by a test (to stand in for one that was killed);
/// killed when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    /// Starts target/<profile>/gpuvisord with these flags, logging to `log`, and
    /// waits for its backend socket.
    pub fn start(socket: &Path, addr: &str, state_dir: &Path, log: &Path) -> anyhow::Result<Daemon> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(built("gpuvisord")?)
            .arg("--backend-socket")
            .arg(socket)
            .args(["--listen", addr, "--state-dir"])
            .arg(state_dir)
            .args(["--slice-ms", "10"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start gpuvisord")?;
        let mut d = Daemon(child);
        let end = Instant::now() + Duration::from_secs(15);
        // The admin API answers only once the backend socket is bound.
        let health = AdminApi::new(addr, None)?;
        while health.get("/v1/health").is_err() {
            if let Some(s) = d.0.try_wait()? {
                bail!("gpuvisord exited ({s}); see {}", log.display());
            }
            ensure!(Instant::now() < end, "gpuvisord did not answer on {addr} in 15 s; see {}", log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        ensure!(socket.exists(), "gpuvisord answers but {} is missing", socket.display());
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        signal(self.0.id() as i32, libc::SIGTERM);
        for _ in 0..50 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
