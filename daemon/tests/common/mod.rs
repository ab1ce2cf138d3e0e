//! Shared by the daemon's integration tests: a daemon running in-process on
//! its own runtime, over a real Unix socket and a real SQLite file, and fake
//! backends that are plain clients of the JSON-lines control protocol; the
//! real gpuvisord binary; a sim engine set up as a real backend's.
#![allow(dead_code)]

pub mod tmux;

use gpuvisor_backend::engine::sim::SimEngine;
use gpuvisor_backend::engine::{Engine, EngineCtx, EngineFunc, EngineStream};
use gpuvisord::inventory::NvmlSource;
use gpuvisord::{Config, Daemon, DaemonAdmin};
use protocol::control::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The simulated NVML library, built beside the tests as a dev-dependency's
/// cdylib.
pub fn sim_nvml() -> PathBuf {
    let path = std::env::current_exe().unwrap().with_file_name("libnvidia_ml.so");
    assert!(path.is_file(), "{} was not built (cargo build -p gpuvisor-sim-nvml)", path.display());
    path
}

/// Starts the real gpuvisord binary on `socket` and `state` with the
/// simulated NVML of `nvml_config` and `args`, its admin API on a free port;
/// returns it with the first line it printed (the admin API's URL and the
/// token file).
pub fn spawn_gpuvisord(socket: &Path, state: &Path, nvml_config: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpuvisord"))
        .arg("--backend-socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--nvml-lib")
        .arg(sim_nvml())
        .env("GPUVISOR_SIM_NVML_CONFIG", nvml_config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// The admin API's URL in the line gpuvisord prints when it starts.
pub fn admin_url(line: &str) -> &str {
    line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches(',')
}

/// A sim engine with a context, a stream and the spin kernel, as a real
/// backend's queue thread has them.
pub fn sim_with_spin() -> (SimEngine, EngineCtx, EngineStream, EngineFunc) {
    let mut e = SimEngine::new(1 << 30);
    let ctx = e.ctx_create(0).unwrap();
    e.ctx_set_current(ctx).unwrap();
    let m = e.module_load(include_str!("../../../guest-tests/kernels.ptx").as_bytes()).unwrap();
    let (f, _) = e.module_get_function(m, "gv_spin_us").unwrap();
    let s = e.stream_create(0, 0).unwrap();
    (e, ctx, s, f)
}

/// A fresh scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gvd-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A daemon on its own multi-threaded runtime, so tests can block.
pub struct TestDaemon {
    rt: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    pub admin: Arc<DaemonAdmin>,
    pub socket: PathBuf,
}

impl TestDaemon {
    /// Starts a daemon with its socket and state under `dir`.
    pub fn start(dir: &Path) -> TestDaemon {
        TestDaemon::start_with(dir, |_| {})
    }

    /// Starts a daemon as `start` does, with `tune` changing its config.
    pub fn start_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> TestDaemon {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let socket = dir.join("gpuvisord.sock");
        let mut config = Config::new(&socket, dir.join("state"));
        config.nvml = NvmlSource::Disabled;
        tune(&mut config);
        let daemon = rt.block_on(Daemon::start(config)).unwrap();
        let admin = daemon.admin();
        TestDaemon { rt, daemon: Some(daemon), admin, socket }
    }

    /// Serves the admin API over real HTTP on a loopback port, with `token`,
    /// until the daemon's runtime ends; returns its URL.
    pub fn serve_http(&self, token: &str) -> String {
        let admin: Arc<dyn gpuvisor_admin::Admin> = self.admin.clone();
        let auth = gpuvisor_admin::Auth::Token(token.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let _ = gpuvisor_admin::serve(listener, admin, auth, std::future::pending()).await;
        });
        format!("http://{}", rx.recv_timeout(Duration::from_secs(5)).unwrap())
    }

    pub fn stop(mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.stop());
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.stop());
        }
    }
}

/// What a fake backend asks for.
pub fn hello(vm: &str, requested: QosRequest, reconnect: bool) -> BackendMsg {
    BackendMsg::Hello {
        version: CONTROL_VERSION,
        vm: vm.into(),
        pid: std::process::id(),
        engine: "sim".into(),
        gpu: "sim".into(),
        quota_bytes: 1 << 30,
        requested,
        reconnect,
        gpu_ns_total: 0,
        memory: Default::default(),
    }
}

pub fn weight(w: u32) -> QosRequest {
    QosRequest { weight: Some(w), ..Default::default() }
}

/// Why no message came.
#[derive(Debug, PartialEq, Eq)]
pub enum NoMsg {
    Timeout,
    Closed,
    Other(String),
}

/// A backend's end of the control socket.
pub struct FakeBackend {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl FakeBackend {
    pub fn connect(socket: &Path) -> FakeBackend {
        let s = UnixStream::connect(socket).unwrap();
        FakeBackend { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }

    /// Connects, says `hello` and returns the answer (Welcome or Refused).
    pub fn hello(socket: &Path, msg: &BackendMsg) -> (FakeBackend, DaemonMsg) {
        let mut b = FakeBackend::connect(socket);
        b.send(msg);
        let answer = b.recv(Duration::from_secs(5)).unwrap();
        (b, answer)
    }

    /// Registers `vm`; panics unless welcomed.
    pub fn register(socket: &Path, vm: &str, requested: QosRequest) -> (FakeBackend, VmSettings) {
        match FakeBackend::hello(socket, &hello(vm, requested, false)) {
            (b, DaemonMsg::Welcome { version, settings, .. }) => {
                assert_eq!(version, CONTROL_VERSION);
                (b, settings)
            }
            (_, other) => panic!("{vm} not welcomed: {other:?}"),
        }
    }

    pub fn send(&mut self, msg: &BackendMsg) {
        write_msg(&mut self.writer, msg).unwrap();
    }

    /// Writes raw bytes, ignoring a connection the daemon already closed.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.writer.write_all(bytes);
        let _ = self.writer.flush();
    }

    pub fn recv(&mut self, timeout: Duration) -> Result<DaemonMsg, NoMsg> {
        self.writer.set_read_timeout(Some(timeout.max(Duration::from_micros(1)))).unwrap();
        match read_msg(&mut self.reader) {
            Ok(m) => Ok(m),
            Err(ControlError::Closed) => Err(NoMsg::Closed),
            Err(ControlError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Err(NoMsg::Timeout)
            }
            Err(ControlError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Err(NoMsg::Closed),
            Err(e) => Err(NoMsg::Other(e.to_string())),
        }
    }

    /// The next message within `timeout` that `skip` does not pass over.
    pub fn next_except(&mut self, timeout: Duration, skip: impl Fn(&DaemonMsg) -> bool) -> Result<DaemonMsg, NoMsg> {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoMsg::Timeout);
            }
            let m = self.recv(left)?;
            if !skip(&m) {
                return Ok(m);
            }
        }
    }

    /// The next Grant within `timeout`, skipping settings and stale revokes.
    pub fn grant(&mut self, timeout: Duration) -> Result<(u64, u64), NoMsg> {
        match self.next_except(timeout, |m| matches!(m, DaemonMsg::Settings { .. } | DaemonMsg::Revoke { .. }))? {
            DaemonMsg::Grant { grant, slice_us, .. } => Ok((grant, slice_us)),
            other => Err(NoMsg::Other(format!("unexpected {other:?}"))),
        }
    }

    /// The next memory message (MemLimit, MemDenied or Evict) within
    /// `timeout`, skipping grants, revokes and settings.
    pub fn memory_msg(&mut self, timeout: Duration) -> Result<DaemonMsg, NoMsg> {
        self.next_except(timeout, |m| {
            matches!(m, DaemonMsg::Grant { .. } | DaemonMsg::Revoke { .. } | DaemonMsg::Settings { .. })
        })
    }

    /// Waits until the daemon closes the connection.
    pub fn expect_closed(&mut self, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the daemon did not close the connection");
            match self.recv(left) {
                Err(NoMsg::Closed) => return,
                Err(NoMsg::Timeout) => panic!("the daemon did not close the connection"),
                _ => continue,
            }
        }
    }
}

/// Runs a saturating backend until `stop`: it holds each grant for its
/// slice (less a margin, or until revoked) and releases it with the wall
/// time it held it, always wanting more. Returns the grants it got.
pub fn saturate(mut b: FakeBackend, stop: Instant) -> u64 {
    b.send(&BackendMsg::Demand);
    let mut grants = 0;
    while Instant::now() < stop {
        let Ok((grant, slice_us)) = b.grant(Duration::from_secs(2)) else {
            break;
        };
        grants += 1;
        let t0 = Instant::now();
        let hold = Duration::from_micros(slice_us.saturating_sub(100));
        loop {
            let left = hold.saturating_sub(t0.elapsed());
            if left.is_zero() {
                break;
            }
            match b.recv(left) {
                Ok(DaemonMsg::Revoke { grant: g }) if g == grant => break,
                Ok(_) | Err(NoMsg::Timeout) => continue,
                Err(_) => return grants,
            }
        }
        let used = t0.elapsed().as_nanos() as u64;
        b.send(&BackendMsg::Release { grant, gpu_ns: used, ops: 1, more: true });
    }
    grants
}

/// A real backend's daemon link running 1 ms sim kernels through its gate
/// until `stop`, as a guest busy on the GPU would; returns the kernels it ran.
pub fn sim_load(
    link: &gpuvisor_backend::grants::DaemonLink,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    sim_load_on(link, stop, None, 4)
}

/// [`sim_load`] on a simulated GPU shared (through the file `shared_gpu`)
/// with every other engine that names it, waiting for its results every
/// `sync_every` kernels; returns the kernels it ran.
pub fn sim_load_on(
    link: &gpuvisor_backend::grants::DaemonLink,
    stop: Arc<std::sync::atomic::AtomicBool>,
    shared_gpu: Option<PathBuf>,
    sync_every: u64,
) -> std::thread::JoinHandle<u64> {
    let mut gate = link.gate();
    std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim_with_spin();
        if let Some(path) = &shared_gpu {
            e.share_gpu(path).unwrap();
        }
        let params = 1000u64.to_le_bytes();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            gate.before_op(&mut e, ctx, s).unwrap();
            let l = gpuvisor_backend::engine::Launch::plain([1, 1, 1], [1, 1, 1], s, &params);
            e.launch(f, &l).unwrap();
            gate.after_op(&mut e, ctx, s);
            n += 1;
            if n.is_multiple_of(sync_every) {
                e.stream_synchronize(s).unwrap();
            }
        }
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
        n
    })
}
