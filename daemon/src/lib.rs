//! gpuvisord: the per-host daemon that decides which VM's backend may submit
//! GPU work when. Backends register over a Unix socket ([`server`]); each
//! GPU's scheduler runs on a thread of its own ([`driver`]); settings live in
//! SQLite ([`store`]) and the admin API changes them live ([`admin`]). A
//! sampler ([`telemetry`]) keeps the history of every metric ([`history`])
//! and evaluates alert rules on it ([`alerts`]).
//!
//! A restart does not disturb running VMs: backends run alone while the
//! daemon is away, reconnect with `reconnect: true`, and get back the
//! settings stored before the restart.

pub mod admin;
pub mod alerts;
pub mod driver;
pub mod history;
pub mod inventory;
pub mod lines;
pub mod memory;
pub mod proc_util;
pub mod registry;
pub mod server;
pub mod store;
pub mod swap_pool;
pub mod telemetry;
pub mod token;
pub mod xid;

use inventory::{Inventory, NvmlSource};
use registry::Registry;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use telemetry::{Telemetry, TelemetryConfig, TelemetryView};
use tokio::sync::watch;

pub use admin::DaemonAdmin;

/// Default time slice of a GPU, in ms.
pub const DEFAULT_SLICE_MS: f64 = 10.0;

/// What the daemon needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where backends connect.
    pub backend_socket: PathBuf,
    /// Holds `gpuvisord.db`; created if missing.
    pub state_dir: PathBuf,
    /// Default time slice of every GPU whose admin has not set one, in µs.
    pub slice_us: u64,
    pub nvml: NvmlSource,
    /// A VM keeps device memory it was given at least this long before the
    /// memory broker may evict it, in ns.
    pub min_residency_ns: u64,
    /// Host RAM that evicted GPU memory may take, all GPUs together.
    pub swap_limit_bytes: u64,
    /// Pinned host RAM the swap pool may keep for backends' swap-outs
    /// (`swap_pool`); 0: no pool, each backend pins its own.
    pub swap_pool_bytes: u64,
    /// The sampler behind the history and the alerts.
    pub telemetry: TelemetryConfig,
    /// Which GPUs a VM the admin gave no access list may use.
    pub gpu_access: gpuvisor_admin::GpuAccessMode,
}

impl Config {
    pub fn new(backend_socket: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Config {
        Config {
            backend_socket: backend_socket.into(),
            state_dir: state_dir.into(),
            slice_us: (DEFAULT_SLICE_MS * 1000.0) as u64,
            nvml: NvmlSource::System,
            min_residency_ns: memory::DEFAULT_MIN_RESIDENCY_NS,
            swap_limit_bytes: default_swap_limit_bytes(),
            swap_pool_bytes: 0,
            telemetry: TelemetryConfig::default(),
            gpu_access: gpuvisor_admin::GpuAccessMode::Open,
        }
    }
}

/// Host RAM set aside for evicted GPU memory when the admin does not say:
/// half of the host's (MemTotal in /proc/meminfo), or 4 GiB where that
/// cannot be read.
pub fn default_swap_limit_bytes() -> u64 {
    match std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(mem_total_bytes) {
        Some(total) => total / 2,
        None => {
            tracing::warn!("cannot read MemTotal in /proc/meminfo; host RAM for evicted GPU memory is 4 GiB");
            4 << 30
        }
    }
}

/// The kernel's host name; empty where it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

/// MemTotal of a /proc/meminfo text, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    History(#[from] history::HistoryError),
    #[error("backend socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("another gpuvisord is listening on {0}")]
    SocketInUse(PathBuf),
    #[error("slice: {0}")]
    Slice(registry::FieldError),
    #[error("cannot start the scheduler thread of GPU {gpu}: {source}")]
    Thread { gpu: String, source: std::io::Error },
    #[error("internal error: {0}")]
    Internal(String),
}

/// State shared by the connections and the admin API.
#[derive(Debug)]
pub struct Shared {
    registry: Mutex<Registry>,
    /// This host's name, read once at start (the metrics' `Hostname` label).
    hostname: String,
    /// The swap pool's state, for the admin's view; `None` without a pool.
    swap_pool: Option<Arc<swap_pool::SwapPool>>,
}

impl Shared {
    /// Never held across an await.
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere while holding the lock leaves consistent data:
        // every change is a single assignment after its checks.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    telemetry: Option<Telemetry>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    socket: PathBuf,
    pool: Option<swap_pool::PoolServer>,
}

impl Daemon {
    /// Opens the state, finds the GPUs and starts accepting backends. Must be
    /// called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Daemon, Error> {
        registry::check_slice_us(config.slice_us).map_err(Error::Slice)?;
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|source| Error::StateDir { path: config.state_dir.clone(), source })?;
        let store = store::Store::open(&config.state_dir)?;
        let nvml = config.nvml.clone();
        let inventory = tokio::task::spawn_blocking(move || Inventory::discover(&nvml))
            .await
            .map_err(|e| Error::Internal(format!("GPU discovery: {e}")))?;
        // Pool chunks hold evicted memory: beyond the swap limit they would
        // only pin host RAM that no eviction may use.
        let pool_bytes = config.swap_pool_bytes.min(config.swap_limit_bytes);
        if pool_bytes < config.swap_pool_bytes {
            tracing::warn!(
                swap_pool_mib = config.swap_pool_bytes >> 20,
                swap_limit_mib = config.swap_limit_bytes >> 20,
                "the swap pool is cut to the swap limit"
            );
        }
        // And with a pool, evicted memory lives in its chunks (backends pin
        // none of their own once it is full): its size is the limit.
        let swap_limit_bytes = if pool_bytes > 0 { pool_bytes } else { config.swap_limit_bytes };
        if swap_limit_bytes < config.swap_limit_bytes {
            tracing::info!(
                swap_limit_mib = swap_limit_bytes >> 20,
                "evicted memory lives in the swap pool: the swap limit is its size"
            );
        }
        let memory = memory::BrokerParams { min_residency_ns: config.min_residency_ns, swap_limit_bytes };
        let registry =
            Registry::new(store, inventory, config.slice_us, driver::Clock::new(), memory, config.gpu_access)?;
        let pool_state = (pool_bytes > 0).then(|| swap_pool::SwapPool::new(pool_bytes, swap_pool::CHUNK_BYTES));
        let shared =
            Arc::new(Shared { registry: Mutex::new(registry), hostname: hostname(), swap_pool: pool_state.clone() });
        let telemetry = if config.telemetry.interval.is_zero() {
            tracing::info!("telemetry off (--telemetry-interval-ms 0): no history, no alerts");
            None
        } else {
            let sampled = DaemonAdmin::new(shared.clone(), None);
            match Telemetry::start(config.telemetry.clone(), &config.state_dir, sampled) {
                Ok(t) => Some(t),
                Err(e) => {
                    stop_drivers(&shared).await;
                    return Err(e.into());
                }
            }
        };
        let listener = match server::bind(&config.backend_socket) {
            Ok(l) => l,
            Err(e) => {
                stop_telemetry(telemetry).await;
                stop_drivers(&shared).await;
                return Err(e);
            }
        };
        let pool = match pool_state {
            None => None,
            Some(pool) => {
                let path = protocol::swap_pool::pool_socket_path(&config.backend_socket);
                match swap_pool::PoolServer::start(pool, &path) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        drop(listener);
                        let _ = std::fs::remove_file(&config.backend_socket);
                        stop_telemetry(telemetry).await;
                        stop_drivers(&shared).await;
                        return Err(e);
                    }
                }
            }
        };
        let (shutdown, rx) = watch::channel(false);
        let server = tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(Daemon { shared, telemetry, shutdown, server, socket: config.backend_socket, pool })
    }

    /// The admin API over this daemon.
    pub fn admin(&self) -> Arc<DaemonAdmin> {
        let view: Option<Arc<TelemetryView>> = self.telemetry.as_ref().map(Telemetry::view);
        Arc::new(DaemonAdmin::new(self.shared.clone(), view))
    }

    pub fn backend_socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Stops accepting, closes every backend connection (the backends run
    /// alone until a daemon is back) and stops the schedulers.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        if let Some(pool) = self.pool {
            let _ = tokio::task::spawn_blocking(move || pool.stop()).await;
        }
        stop_telemetry(self.telemetry).await;
        stop_drivers(&self.shared).await;
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("stopped");
    }
}

async fn stop_telemetry(telemetry: Option<Telemetry>) {
    if let Some(t) = telemetry {
        let _ = tokio::task::spawn_blocking(move || t.stop()).await;
    }
}

async fn stop_drivers(shared: &Shared) {
    let drivers = shared.registry().take_drivers();
    let _ = tokio::task::spawn_blocking(move || drivers.into_iter().for_each(driver::GpuDriver::stop)).await;
}

/// Runs a daemon until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let daemon = Daemon::start(config).await?;
    shutdown.await;
    daemon.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       263846260 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(263846260 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 5 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
        let real = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert!(mem_total_bytes(&real).unwrap() > 1 << 20);
    }
}
