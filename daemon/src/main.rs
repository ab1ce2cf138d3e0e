//! gpuvisord: parses its arguments and wires the daemon library, the token
//! and the admin HTTP server together.

use anyhow::Context;
use clap::Parser;
use gpuvisor_admin::{Admin, Auth, GpuAccessMode};
use gpuvisord::inventory::NvmlSource;
use gpuvisord::{Config, Daemon};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// The per-host gpuvisor daemon: schedules the GPU work of every VM's
/// gpuvisor-backend (weighted fair share, priorities, QoS classes), brokers
/// their device memory where a GPU is overcommitted (evicting idle VMs'
/// memory to host RAM when another needs room), and serves the admin API
/// that gpuvisorctl talks to.
///
/// It runs in the foreground and logs to stderr (filter with RUST_LOG, for
/// example RUST_LOG=gpuvisord=debug). SIGTERM or SIGINT stops it; running
/// backends then carry on alone and re-register when it is back, keeping
/// the settings stored in <state-dir>/gpuvisord.db.
///
/// Every --telemetry-interval-ms it also samples what GET /metrics shows
/// into <state-dir>/history.sqlite (gpuvisorctl history) and evaluates the
/// alert rules of --alert-rules on it (gpuvisorctl alerts).
#[derive(Debug, Parser)]
#[command(name = "gpuvisord", version)]
struct Args {
    /// Unix socket backends connect to (gpuvisor-backend --daemon PATH). Its
    /// directory is created; the socket is made group read/write (0660).
    #[arg(long, value_name = "PATH", default_value = protocol::control::DEFAULT_BACKEND_SOCKET)]
    backend_socket: PathBuf,

    /// Address of the admin HTTP API (gpuvisorctl --url http://ADDR).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9400")]
    listen: SocketAddr,

    /// Directory for the settings database (gpuvisord.db), the telemetry
    /// history (history.sqlite) and the admin token; created if missing.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/gpuvisor")]
    state_dir: PathBuf,

    /// File holding the admin API's bearer token; generated (32 random bytes
    /// as hex, mode 0600) when missing [default: <state-dir>/admin.token]
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Serve the admin API without authentication. Anyone who can reach
    /// --listen can then change every VM's settings.
    #[arg(long)]
    no_auth: bool,

    /// Default time slice of each GPU in milliseconds (0.5 to 10000); the
    /// admin can change it per GPU and per VM.
    #[arg(long, value_name = "MS", default_value_t = gpuvisord::DEFAULT_SLICE_MS)]
    slice_ms: f64,

    /// NVML library to load instead of the system's libnvidia-ml.so.
    #[arg(long, value_name = "PATH", env = "GPUVISOR_NVML_LIB")]
    nvml_lib: Option<PathBuf>,

    /// On an overcommitted GPU, a VM keeps device memory it was just given
    /// (or brought back from host RAM) at least this many milliseconds before
    /// its memory can be evicted for another VM. Longer means less moving
    /// memory back and forth, shorter that a VM waiting for memory waits less.
    #[arg(long, value_name = "MS", default_value_t = gpuvisord::memory::DEFAULT_MIN_RESIDENCY_NS / 1_000_000)]
    min_residency_ms: u64,

    /// Host RAM, in MiB, that GPU memory evicted from VMs may take, all GPUs
    /// together. A VM whose need could only be met by evicting beyond it gets
    /// an out-of-memory error instead (nobody is evicted)
    /// [default: half of this host's RAM, MemTotal in /proc/meminfo]
    #[arg(long, value_name = "MIB")]
    swap_limit_mib: Option<u64>,

    /// Pinned host RAM, in MiB, kept for backends' swap-outs across swaps and
    /// VMs: chunks the driver allocated pinned, which the backends make in
    /// the background and lease for each swap-out (at the backend socket's
    /// path with `.pool` appended). A swap-out into them copies at the full
    /// rate (55 GB/s on an H200 host) where one into memory pinned as it
    /// goes runs at about 25. The memory stays pinned once made. A chunk
    /// passes from one VM's backend to another's: a backend process taken
    /// over by its guest could read what later lands in a chunk it held, so
    /// use it where backend processes are trusted that far. At most
    /// --swap-limit-mib (a larger size is cut to it); evicted memory then
    /// lives in the pool, so its size is the swap limit. 0: no pool, each
    /// backend pins its own host memory
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    swap_pool_mib: u64,

    /// Which GPUs a VM may use when the admin gave it no access list
    /// (gpuvisorctl access-set): open, any GPU (as before access lists
    /// existed); closed, none, so that every VM must be allowed its GPUs
    /// (or MIG instances) explicitly. A backend whose VM may not use its GPU
    /// is refused when it registers.
    #[arg(long, value_name = "open|closed", default_value = "open", value_parser = parse_gpu_access)]
    gpu_access: GpuAccessMode,

    /// Milliseconds between telemetry samples: each takes what GET /metrics
    /// shows, stores it in <state-dir>/history.sqlite and evaluates the alert
    /// rules on it. 0 turns history and alerts off.
    #[arg(long, value_name = "MS", default_value_t = 1000, help_heading = "Telemetry")]
    telemetry_interval_ms: u64,

    /// How long every sample is kept, like 90s, 6h or 7d. Older ranges are
    /// read from the one-minute and one-hour rollups.
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_duration,
        help_heading = "Telemetry")]
    history_raw_retention: Duration,

    /// How long one-minute rollups (mean, min, max; counters' increase) are
    /// kept; at least 1h and the raw retention.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration,
        help_heading = "Telemetry")]
    history_minute_retention: Duration,

    /// How long one-hour rollups are kept (and resolved alerts in the alert
    /// log); at least the minute retention.
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_duration,
        help_heading = "Telemetry")]
    history_hour_retention: Duration,

    /// TOML file of alert rules (see examples/alerts.toml and docs/alerts.md).
    /// A rule that does not parse stops gpuvisord at start, naming its line.
    #[arg(long, value_name = "PATH", help_heading = "Telemetry")]
    alert_rules: Option<PathBuf>,

    /// URL to POST firing and resolved alerts to, in Alertmanager's webhook
    /// format (version 4); overrides the rules file's webhook_url. Failed
    /// posts are retried with backoff, then logged.
    #[arg(long, value_name = "URL", help_heading = "Telemetry")]
    alert_webhook: Option<String>,
}

fn parse_gpu_access(s: &str) -> Result<GpuAccessMode, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gpuvisor_admin::time::parse_duration(s).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let (min_ms, max_ms) =
        (protocol::control::MIN_SLICE_US as f64 / 1000.0, protocol::control::MAX_SLICE_US as f64 / 1000.0);
    if !(args.slice_ms.is_finite() && (min_ms..=max_ms).contains(&args.slice_ms)) {
        anyhow::bail!("--slice-ms {}: expected {min_ms} to {max_ms} milliseconds", args.slice_ms);
    }
    let mut config = Config::new(&args.backend_socket, &args.state_dir);
    config.slice_us = (args.slice_ms * 1000.0).round() as u64;
    config.nvml = match &args.nvml_lib {
        Some(p) => NvmlSource::Path(p.clone()),
        None => NvmlSource::System,
    };
    config.min_residency_ns = args
        .min_residency_ms
        .checked_mul(1_000_000)
        .with_context(|| format!("--min-residency-ms {}: too large", args.min_residency_ms))?;
    if let Some(mib) = args.swap_limit_mib {
        config.swap_limit_bytes =
            mib.checked_mul(1 << 20).with_context(|| format!("--swap-limit-mib {mib}: too large"))?;
    }
    config.swap_pool_bytes = args
        .swap_pool_mib
        .checked_mul(1 << 20)
        .with_context(|| format!("--swap-pool-mib {}: too large", args.swap_pool_mib))?;
    config.telemetry = telemetry_config(&args)?;
    config.gpu_access = args.gpu_access;
    tracing::info!(
        min_residency_ms = args.min_residency_ms,
        swap_limit_mib = config.swap_limit_bytes >> 20,
        swap_pool_mib = args.swap_pool_mib,
        "memory broker settings"
    );

    let token_file = args.token_file.clone().unwrap_or_else(|| args.state_dir.join("admin.token"));
    let auth = if args.no_auth {
        if !args.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %args.listen,
                "the admin API listens beyond this host with --no-auth: anyone who can reach it can change every VM"
            );
        }
        Auth::None
    } else {
        std::fs::create_dir_all(&args.state_dir)
            .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;
        Auth::Token(gpuvisord::token::load_or_create(&token_file)?)
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("admin API: cannot listen on {}", args.listen))?;

    let listen = listener.local_addr().unwrap_or(args.listen);
    config.telemetry.external_url = format!("http://{listen}");

    let daemon = Daemon::start(config).await?;
    println!(
        "gpuvisord: backends at {}, admin API at http://{listen}, {}",
        args.backend_socket.display(),
        if args.no_auth {
            "no authentication (--no-auth)".to_string()
        } else {
            format!("token in {}", token_file.display())
        }
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let mut http = tokio::spawn(serve_admin(listener, daemon.admin(), auth, async move {
        let _ = http_stop.wait_for(|&s| s).await;
    }));

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let early = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); None }
        r = &mut http => Some(r),
    };
    let _ = stop_tx.send(true);
    daemon.stop().await;
    let result = match early {
        Some(r) => r,
        None => http.await,
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("admin API")),
        Err(e) => Err(anyhow::anyhow!("admin API task: {e}")),
    }
}

/// The sampler's settings from the command line, the rules file read and
/// checked.
fn telemetry_config(args: &Args) -> anyhow::Result<gpuvisord::telemetry::TelemetryConfig> {
    use gpuvisord::history::Retention;
    let interval = Duration::from_millis(args.telemetry_interval_ms);
    if !interval.is_zero() && !(10..=3_600_000).contains(&args.telemetry_interval_ms) {
        anyhow::bail!("--telemetry-interval-ms {}: expected 10 to 3600000, or 0 for off", args.telemetry_interval_ms);
    }
    let retention = Retention {
        raw: args.history_raw_retention,
        minute: args.history_minute_retention,
        hour: args.history_hour_retention,
    };
    retention.check().map_err(|e| anyhow::anyhow!(e))?;
    let rules = match &args.alert_rules {
        Some(path) => gpuvisord::alerts::load(path)?,
        None => Default::default(),
    };
    if let Some(url) = &args.alert_webhook {
        gpuvisord::alerts::check_webhook_url(url).map_err(|e| anyhow::anyhow!("--alert-webhook: {e}"))?;
    }
    if interval.is_zero() && (!rules.rules.is_empty() || args.alert_webhook.is_some()) {
        tracing::warn!("--telemetry-interval-ms 0: the alert rules are not evaluated");
    }
    Ok(gpuvisord::telemetry::TelemetryConfig {
        interval,
        retention,
        rules,
        webhook_url: args.alert_webhook.clone(),
        external_url: String::new(),
    })
}

/// The admin HTTP server, until `shutdown`.
fn serve_admin(
    listener: tokio::net::TcpListener,
    admin: Arc<dyn Admin>,
    auth: Auth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = std::io::Result<()>> {
    gpuvisor_admin::http::serve(listener, admin, auth, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    fn telemetry(extra: &[&str]) -> anyhow::Result<gpuvisord::telemetry::TelemetryConfig> {
        telemetry_config(&Args::try_parse_from(["gpuvisord"].iter().chain(extra))?)
    }

    #[test]
    fn telemetry_flags_take_durations_and_refuse_retentions_that_do_not_nest() {
        let c = telemetry(&[]).unwrap();
        assert_eq!((c.interval, c.retention.raw), (Duration::from_secs(1), Duration::from_secs(6 * 3600)));
        let c = telemetry(&["--telemetry-interval-ms", "0", "--history-raw-retention", "90m"]).unwrap();
        assert_eq!((c.interval, c.retention.raw), (Duration::ZERO, Duration::from_secs(5400)));
        let e = telemetry(&["--history-raw-retention", "8d"]).unwrap_err().to_string();
        assert!(e.contains("--history-minute-retention"), "{e}");
        assert!(telemetry(&["--history-raw-retention", "6 hours"]).is_err());
        assert!(telemetry(&["--telemetry-interval-ms", "5"]).is_err());
        assert!(telemetry(&["--alert-webhook", "localhost:5001"]).is_err());
    }
}
