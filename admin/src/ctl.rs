//! gpuvisorctl: its command line, and how it prints the admin API's answers
//! (aligned tables for lists, one field per line for a single GPU or VM).

mod telemetry;

pub use telemetry::{alerts_table, history_table, metrics_table, AlertsArgs, HistoryArgs};

use crate::client::{Client, ClientError};
use crate::model::{AccessOverview, GpuAccessMode, GpuPatch, GpuView, VmAccess, VmPatch, VmView, ANY_GPU};
use anyhow::{anyhow, Context};
use clap::{ArgGroup, Parser, Subcommand};
use protocol::control::QosClass;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where gpuvisord writes its admin token by default.
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/gpuvisor/admin.token";

const ABOUT: &str = "Inspect and tune gpuvisord, the daemon that shares this host's GPUs among VMs";

const LONG_ABOUT: &str = "\
Inspect and tune gpuvisord, the daemon that shares this host's GPUs among VMs.

Each VM on a GPU gets time slices: while it holds one, only its GPU work runs.
Who gets the next slice is decided by the VM's QoS class, then its weight and
priority. Changes made here take effect at once: the scheduler applies them
within one slice, and running VMs keep running.

Each VM also has a device memory quota. Where a GPU's overcommit ratio lets
the quotas add up to more than the GPU holds, gpuvisord moves the memory of
VMs that are not using the GPU to host RAM when another VM needs room, and
brings it back before their next GPU work.

The admin token is read from --token or GPUVISOR_TOKEN, else from --token-file,
else from /var/lib/gpuvisor/admin.token when that file exists.";

#[derive(Debug, Parser)]
#[command(name = "gpuvisorctl", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// gpuvisord's admin API
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "GPUVISOR_URL",
        default_value = "http://127.0.0.1:9400"
    )]
    pub url: String,

    /// Admin token. Prefer GPUVISOR_TOKEN or --token-file: other users can
    /// see a command line
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "GPUVISOR_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// File holding the admin token (used when no token is given)
    /// [default: /var/lib/gpuvisor/admin.token, when it exists]
    #[arg(long, global = true, help_heading = "Global options", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Print the API's JSON answer instead of a table
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List GPUs: their default slice, which VM holds each now, how busy it
    /// is, the memory its VMs share (CAPACITY, - where not managed) and the
    /// host RAM evicted memory takes (SWAP, used/limit, all GPUs together)
    Gpus,

    /// Show one GPU, one field per line
    Gpu {
        /// The GPU's id as `gpus` lists it (`GPU-<uuid>`, or `sim`)
        id: String,
    },

    /// Change a GPU's defaults, used by its VMs that have no setting of their
    /// own (they take effect within one slice), or its memory overcommit
    GpuSet {
        /// The GPU's id as `gpus` lists it
        id: String,

        /// Default time slice in milliseconds (0.5 to 10000). Longer slices
        /// cost less switching; shorter ones let other VMs in sooner
        #[arg(long, value_name = "MS", value_parser = parse_slice_ms)]
        slice_ms: Option<u64>,

        /// Most GPU operations a VM may have queued on the GPU while it holds
        /// a slice (1 to 4096). Bounds how long taking the GPU back from a VM
        /// takes, so lower means the slice boundary is kept more tightly
        #[arg(long, value_name = "N")]
        max_queued_ops: Option<u32>,

        /// How far the VMs' memory quotas may add up beyond the GPU's memory
        /// capacity (1 to 100; 1, the default, is no overcommit). A VM whose
        /// quota would pass it is refused when it registers
        #[arg(long, value_name = "R")]
        overcommit_ratio: Option<f64>,

        /// Device memory the GPU's VMs share, instead of the GPU's memory less
        /// the driver's reserve (1 GiB and 512 MiB per VM): bytes with an
        /// optional K, M, G or T suffix (powers of 1024, as 40G or 1.5T), or
        /// `none` to clear it. Lowering it moves VMs' memory to host RAM until
        /// it fits
        #[arg(long, value_name = "SIZE|none", value_parser = parse_memory_limit)]
        memory_limit: Option<MemoryLimit>,
    },

    /// List VMs, sorted by name, with their settings and measured shares
    #[command(long_about = "List VMs, sorted by name.\n\n\
        SHARE(cfg) is the share of the GPU the policy entitles the VM to now, among the busy VMs; \
        SHARE(used) is the share of GPU time it used over the last measurement window. \
        QUEUE is the batches waiting in its backend; P99 the 99th percentile request latency \
        (arrival at the backend to completion on the GPU). QUOTA is the device memory its guest sees; \
        RESIDENT what it holds on the GPU and EVICTED what gpuvisord moved to host RAM to make room for \
        other VMs; EVICTS how often that happened, and RESTORE(ms) how long its last return to the GPU took.")]
    Vms {
        /// Only VMs on this GPU (an id, or the start of one as the table shows it)
        #[arg(long, value_name = "ID")]
        gpu: Option<String>,
    },

    /// Show one VM, one field per line
    Vm {
        /// The VM's name
        name: String,
    },

    /// Change a VM's QoS settings; they take effect within one slice
    #[command(long_about = "Change a VM's QoS settings and print the VM. \
        They take effect within one slice; the VM keeps running.")]
    Set {
        /// The VM's name
        name: String,

        /// QoS class. guaranteed: a reserved share of GPU time, never lent
        /// away while the VM is busy. burstable: a share, plus whatever other
        /// VMs leave idle. best-effort: only time no guaranteed or burstable
        /// VM wants
        #[arg(long, value_name = "CLASS", value_parser = parse_class)]
        class: Option<QosClass>,

        /// Weight (1 to 10000). The busy VMs on a GPU share its time in
        /// proportion to their weights: 200 gets twice what 100 gets
        #[arg(long, value_name = "W")]
        weight: Option<u32>,

        /// Priority (-20 to 20). Higher gets the GPU sooner when it has work
        /// (lower latency), but never more than its weight's share
        #[arg(long, value_name = "P", allow_negative_numbers = true)]
        priority: Option<i32>,

        /// The VM's own time slice in milliseconds (0.5 to 10000), instead of
        /// its GPU's default
        #[arg(long, value_name = "MS", value_parser = parse_slice_ms, conflicts_with = "gpu_slice")]
        slice_ms: Option<u64>,

        /// Drop the VM's own slice: its GPU's default applies again
        #[arg(long)]
        gpu_slice: bool,
    },

    /// Drain a VM: it gets no more GPU time, and its guest's GPU work waits
    /// (without errors) until `resume`
    Drain {
        /// The VM's name
        name: String,
    },

    /// Resume a drained VM: it gets GPU time again
    Resume {
        /// The VM's name
        name: String,
    },

    /// Show which GPUs each VM may use, and gpuvisord's default for VMs
    /// without a list (--gpu-access)
    Access {
        /// Only this VM (it need not have registered)
        name: Option<String>,
    },

    /// Set which GPUs or MIG instances a VM may use, replacing its list
    #[command(
        long_about = "Set which GPUs or MIG instances a VM may use, replacing its list, and print the VM's access. \
        The VM need not have registered yet: with gpuvisord --gpu-access closed, a VM must be allowed a GPU \
        before its backend can register.\n\n\
        A backend whose GPU its VM may not use is refused when it registers, and holds its guest's GPU work \
        until it is allowed. A registered VM whose GPU the new list leaves out gets no more GPU time from now \
        on (its work waits, as when drained) and is refused at its next registration; allowing the GPU again \
        lets it run at once.\n\n\
        Ids match exactly: a MIG instance's UUID (MIG-...) allows that instance only, not its parent GPU or \
        another instance; a GPU's UUID (GPU-...) does not allow its MIG instances.",
        group(ArgGroup::new("list").required(true).args(["allow_gpu", "allow_any_gpu", "deny_all_gpus", "clear"]))
    )]
    AccessSet {
        /// The VM's name
        name: String,

        /// A GPU (GPU-<uuid>), MIG instance (MIG-<uuid>) or `sim` the VM may
        /// use; repeat for several
        #[arg(long, value_name = "ID")]
        allow_gpu: Vec<String>,

        /// The VM may use any GPU, whatever gpuvisord's --gpu-access
        #[arg(long)]
        allow_any_gpu: bool,

        /// The VM may use no GPU
        #[arg(long)]
        deny_all_gpus: bool,

        /// Remove the VM's list: gpuvisord's --gpu-access decides (open: any
        /// GPU, closed: none)
        #[arg(long)]
        clear: bool,
    },

    /// Show how a metric evolved, from gpuvisord's history; without
    /// --metric, list the stored metrics
    #[command(long_about = telemetry::HISTORY_ABOUT)]
    History(HistoryArgs),

    /// List the alerts gpuvisord's rules raised (firing, pending, and
    /// resolved in the last day) with when they fired and resolved
    Alerts(AlertsArgs),

    /// Check that gpuvisord answers (needs no token)
    Health,

    /// A live view of the GPUs and VMs, refreshed every second, that works
    /// over SSH
    #[command(long_about = "A live view of the GPUs and VMs in the terminal, refreshed every --interval \
        (1 s by default); it works in any terminal, over SSH too, and needs no mouse.\n\n\
        The GPU table shows how busy each GPU is, its VMs' memory on it against the memory they share, \
        and the host RAM evicted memory takes. The VM table shows each VM's state, class, weight and \
        priority, its share of GPU time used against the share it is entitled to, its GPU time, kernel \
        launches and bytes copied per second (between the last two refreshes), request latency, memory \
        and errors.\n\n\
        Keys: q (or Ctrl-C, Esc) quits; s and S sort the VM table by the next or previous column, \
        whose heading then ends in v (largest or Z first) or ^; r reverses the order; the arrow keys or \
        j and k select a VM, whose remaining figures show under the table; ? shows the keys and what \
        each column means.\n\n\
        When gpuvisord does not answer, top keeps the last figures on screen, says why on its bottom \
        line, and tries again every interval.")]
    Top(crate::top::TopArgs),

    /// Plot the VMs' GPU shares, memory and request latency over a time range
    /// into a PNG or SVG file
    #[command(long_about = crate::report::LONG_ABOUT)]
    Report(crate::report::ReportArgs),
}

fn parse_slice_ms(s: &str) -> Result<u64, String> {
    let ms: f64 = s.parse().map_err(|_| format!("expected milliseconds, like 2.5, got {s:?}"))?;
    if !ms.is_finite() || ms <= 0.0 {
        return Err(format!("expected a positive number of milliseconds, got {s}"));
    }
    // Saturates at u64::MAX for absurd values; the server reports the range.
    Ok((ms * 1000.0).round() as u64)
}

/// A GPU's memory limit as `gpu-set --memory-limit` takes it: a size, or
/// `none` to clear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit(pub Option<u64>);

fn parse_memory_limit(s: &str) -> Result<MemoryLimit, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(MemoryLimit(None));
    }
    parse_size(s).map(|b| MemoryLimit(Some(b)))
}

/// Bytes, with an optional K, M, G or T suffix (powers of 1024; `Ki`,
/// `KiB` and `KB` read the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.strip_suffix('B').unwrap_or(&unit);
    let unit = unit.strip_suffix('I').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("expected bytes with an optional K, M, G or T suffix (like 40G), or none; got {s:?}")),
    };
    let value: f64 = number.parse().map_err(|_| format!("expected a size like 40G or 512M, or none; got {s:?}"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("expected a positive size like 40G or 512M, got {s:?}"));
    }
    Ok(bytes.round() as u64)
}

fn parse_class(s: &str) -> Result<QosClass, String> {
    s.parse()
}

/// The admin token to send, and why none was found when that matters.
struct Token {
    token: Option<String>,
    /// Said after a 401, when no token was sent.
    missing_note: String,
}

fn resolve_token(cli: &Cli) -> anyhow::Result<Token> {
    if let Some(t) = &cli.token {
        return Ok(Token { token: Some(t.trim().to_owned()), missing_note: String::new() });
    }
    if let Some(path) = &cli.token_file {
        let t = read_token(path)?;
        return Ok(Token { token: Some(t), missing_note: String::new() });
    }
    let default = Path::new(DEFAULT_TOKEN_FILE);
    let missing_note = if default.exists() {
        match read_token(default) {
            Ok(t) => return Ok(Token { token: Some(t), missing_note: String::new() }),
            Err(e) => format!("{e:#}"),
        }
    } else {
        format!("{DEFAULT_TOKEN_FILE} does not exist")
    };
    Ok(Token { token: None, missing_note })
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(anyhow!("token file {} is empty", path.display()));
    }
    Ok(t.to_owned())
}

/// Runs `cli`, printing its answer to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let token = resolve_token(cli)?;
    let sent_token = token.token.is_some();
    let client = Client::new(cli.url.clone(), token.token);
    let result = execute(cli, &client, out);
    result.map_err(|e| explain(e, cli, sent_token, &token.missing_note))
}

/// Adds what the admin can do about an error, where that is clear.
fn explain(e: anyhow::Error, cli: &Cli, sent_token: bool, missing_note: &str) -> anyhow::Error {
    let hint = match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api { status: 401, .. }) if !sent_token => format!(
            "gpuvisord wants an admin token and none was given ({missing_note}): \
             set GPUVISOR_TOKEN, or pass --token-file PATH"
        ),
        Some(ClientError::Api { status: 401, .. }) => {
            "the admin token was refused: check it against the file gpuvisord was started with".to_owned()
        }
        Some(ClientError::Api { field: Some(f), .. }) if f == "slice_us" => {
            "--slice-ms takes milliseconds: 0.5 to 10000".to_owned()
        }
        Some(ClientError::Api { field: Some(f), .. }) if f == "memory_limit_bytes" => {
            "--memory-limit takes a size from 1M to 1024T (like 40G), or none".to_owned()
        }
        Some(ClientError::Api { field: Some(f), .. }) if f == "allowed_gpus" => {
            "--allow-gpu takes a GPU's UUID (GPU-...), a MIG instance's (MIG-...) or sim, each once".to_owned()
        }
        Some(ClientError::Api { field: Some(f), .. }) if f == "overcommit_ratio" => {
            "--overcommit-ratio takes 1 to 100".to_owned()
        }
        Some(ClientError::Api { field: Some(f), .. }) if f == "step" && matches!(cli.command, Command::History(_)) => {
            "--step takes a duration such as 10s; give a longer one, or a shorter range".to_owned()
        }
        Some(ClientError::Api { status: 404, .. }) if matches!(cli.command, Command::History(_)) => {
            "`gpuvisorctl history` without --metric lists the stored metrics".to_owned()
        }
        Some(ClientError::Unreachable { .. }) => {
            format!("is gpuvisord running and serving its admin API at {}? (--url, GPUVISOR_URL)", cli.url)
        }
        _ => return e,
    };
    anyhow!("{e}\n{hint}")
}

fn execute(cli: &Cli, client: &Client, out: &mut dyn Write) -> anyhow::Result<()> {
    match &cli.command {
        Command::Top(args) => crate::top::run(client.clone(), args)?,
        Command::Report(args) => {
            // A fetch error goes up as the client's own, so that `explain`
            // can add what to do about it (a token, the URL).
            let written = crate::report::run(client, args).map_err(|e| match e {
                crate::report::ReportError::Fetch(c) => anyhow::Error::from(c),
                other => other.into(),
            })?;
            writeln!(out, "{written}")?;
        }
        Command::Health => {
            let h = client.health()?;
            if cli.json {
                return print_json(out, &h);
            }
            writeln!(out, "{} (gpuvisord {} at {})", h.status, h.version, client.base_url())?;
        }
        Command::Gpus => {
            let mut gpus = client.gpus()?;
            gpus.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| a.id.cmp(&b.id)));
            if cli.json {
                return print_json(out, &gpus);
            }
            out.write_all(gpu_table(&gpus).as_bytes())?;
        }
        Command::Gpu { id } => print_gpu(out, cli.json, &client.gpu(id)?)?,
        Command::GpuSet { id, slice_ms, max_queued_ops, overcommit_ratio, memory_limit } => {
            let patch = GpuPatch {
                slice_us: *slice_ms,
                max_queued_ops: *max_queued_ops,
                overcommit_ratio: *overcommit_ratio,
                memory_limit_bytes: memory_limit.map(|l| l.0),
            };
            print_gpu(out, cli.json, &client.update_gpu(id, &patch)?)?;
        }
        Command::Vms { gpu } => {
            let mut vms = client.vms()?;
            if let Some(g) = gpu {
                vms.retain(|vm| vm.gpu.starts_with(g.as_str()));
            }
            vms.sort_by(|a, b| a.name.cmp(&b.name));
            if cli.json {
                return print_json(out, &vms);
            }
            out.write_all(vm_table(&vms).as_bytes())?;
        }
        Command::Vm { name } => print_vm(out, cli.json, &client.vm(name)?)?,
        Command::Set { name, class, weight, priority, slice_ms, gpu_slice } => {
            let slice_us = if *gpu_slice { Some(None) } else { slice_ms.map(Some) };
            let patch = VmPatch { class: *class, weight: *weight, priority: *priority, slice_us };
            print_vm(out, cli.json, &client.update_vm(name, &patch)?)?;
        }
        Command::Access { name: Some(name) } => print_access(out, cli.json, &client.vm_access(name)?)?,
        Command::Access { name: None } => {
            let overview = client.access()?;
            if cli.json {
                return print_json(out, &overview);
            }
            out.write_all(access_table(&overview).as_bytes())?;
        }
        Command::AccessSet { name, allow_gpu, allow_any_gpu, deny_all_gpus, clear } => {
            let list = if *clear {
                None
            } else if *allow_any_gpu {
                Some(vec![ANY_GPU.to_owned()])
            } else if *deny_all_gpus {
                Some(Vec::new())
            } else {
                Some(allow_gpu.clone())
            };
            print_access(out, cli.json, &client.set_vm_access(name, list)?)?;
        }
        Command::History(args) => telemetry::history(client, cli.json, args, out)?,
        Command::Alerts(args) => telemetry::alerts(client, cli.json, args, out)?,
        Command::Drain { name } | Command::Resume { name } => {
            let drain = matches!(cli.command, Command::Drain { .. });
            let vm = client.set_drained(name, drain)?;
            if cli.json {
                return print_json(out, &vm);
            }
            if drain {
                writeln!(out, "{}: drained; it gets no GPU time until `gpuvisorctl resume {}`", vm.name, vm.name)?;
            } else {
                writeln!(out, "{}: resumed (state {})", vm.name, state_name(&vm))?;
            }
        }
    }
    Ok(())
}

fn print_json<T: Serialize>(out: &mut dyn Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn print_gpu(out: &mut dyn Write, json: bool, gpu: &GpuView) -> anyhow::Result<()> {
    if json {
        return print_json(out, gpu);
    }
    out.write_all(gpu_detail(gpu).as_bytes())?;
    Ok(())
}

fn print_vm(out: &mut dyn Write, json: bool, vm: &VmView) -> anyhow::Result<()> {
    if json {
        return print_json(out, vm);
    }
    out.write_all(vm_detail(vm).as_bytes())?;
    Ok(())
}

fn print_access(out: &mut dyn Write, json: bool, a: &VmAccess) -> anyhow::Result<()> {
    if json {
        return print_json(out, a);
    }
    let lines = [
        ("vm", a.vm.clone()),
        ("allowed_gpus", allowed_gpus(a.allowed_gpus.as_deref(), a.mode)),
        ("gpu", a.gpu.clone().unwrap_or_else(|| "- (never registered)".to_owned())),
        ("gpu_allowed", a.gpu_allowed.map_or("-", yes_no).to_owned()),
        ("connected", yes_no(a.connected).to_owned()),
    ];
    out.write_all(key_values(&lines).as_bytes())?;
    Ok(())
}

/// A VM's access list as people read it, with what no list means under `mode`.
pub fn allowed_gpus(list: Option<&[String]>, mode: GpuAccessMode) -> String {
    match list {
        None => match mode {
            GpuAccessMode::Open => "default: any GPU (--gpu-access open)".to_owned(),
            GpuAccessMode::Closed => "default: none (--gpu-access closed)".to_owned(),
        },
        Some([]) => "none".to_owned(),
        Some([any]) if any == ANY_GPU => "any GPU".to_owned(),
        Some(ids) => ids.join(", "),
    }
}

pub fn access_table(a: &AccessOverview) -> String {
    let rows: Vec<Vec<String>> = a
        .vms
        .iter()
        .map(|v| {
            vec![
                v.vm.clone(),
                allowed_gpus(v.allowed_gpus.as_deref(), a.mode),
                v.gpu.clone().unwrap_or_else(|| "-".to_owned()),
                v.gpu_allowed.map_or("-", yes_no).to_owned(),
                yes_no(v.connected).to_owned(),
            ]
        })
        .collect();
    let mode = match a.mode {
        GpuAccessMode::Open => "open: a VM without a list may use any GPU",
        GpuAccessMode::Closed => "closed: a VM without a list may use no GPU",
    };
    format!("gpu access {mode}\n{}", table(&["VM", "ALLOWED", "GPU", "GPU ALLOWED", "CONNECTED"], &rows))
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

pub fn gpu_table(gpus: &[GpuView]) -> String {
    let rows: Vec<Vec<String>> = gpus
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.name.clone(),
                bytes(g.memory_total_bytes),
                g.memory_capacity_bytes.map_or_else(|| "-".to_owned(), size),
                format!("{}/{}", size(g.swap_used_bytes), size(g.swap_limit_bytes)),
                micros(g.slice_us as f64),
                g.holder.clone().unwrap_or_else(|| "-".to_owned()),
                percent(g.busy_fraction),
                g.vms.to_string(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "MEMORY", "CAPACITY", "SWAP", "SLICE", "HOLDER", "BUSY", "VMS"], &rows)
}

pub fn vm_table(vms: &[VmView]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                short_gpu(&v.gpu).to_owned(),
                state_name(v).to_owned(),
                v.class.to_string(),
                v.weight.to_string(),
                v.priority.to_string(),
                micros(v.slice_us as f64),
                percent(v.share_configured),
                percent(v.share_used),
                v.queued.to_string(),
                micros(v.latency_p99_us),
                size(v.quota_bytes),
                size(v.resident_bytes),
                size(v.evicted_bytes),
                v.evictions.to_string(),
                v.last_restore_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "GPU",
            "STATE",
            "CLASS",
            "WEIGHT",
            "PRIO",
            "SLICE",
            "SHARE(cfg)",
            "SHARE(used)",
            "QUEUE",
            "P99",
            "QUOTA",
            "RESIDENT",
            "EVICTED",
            "EVICTS",
            "RESTORE(ms)",
        ],
        &rows,
    )
}

pub fn gpu_detail(g: &GpuView) -> String {
    let lines = [
        ("id", g.id.clone()),
        ("name", g.name.clone()),
        ("index", opt(g.index)),
        ("memory_total", bytes(g.memory_total_bytes)),
        ("mig_enabled", g.mig_enabled.map(yes_no).unwrap_or("unknown").to_owned()),
        ("slice", micros(g.slice_us as f64)),
        ("max_queued_ops", g.max_queued_ops.to_string()),
        ("holder", g.holder.clone().unwrap_or_else(|| "-".to_owned())),
        ("busy", percent(g.busy_fraction)),
        ("vms", g.vms.to_string()),
        ("overcommit_ratio", g.overcommit_ratio.to_string()),
        ("memory_limit", g.memory_limit_bytes.map_or_else(|| "none (the GPU's own)".to_owned(), bytes)),
        ("memory_capacity", g.memory_capacity_bytes.map_or_else(|| "not managed".to_owned(), bytes)),
        ("memory_resident", bytes(g.resident_bytes)),
        ("memory_evicted", bytes(g.evicted_bytes)),
        ("swap", format!("{} of {} (host RAM, all GPUs)", bytes(g.swap_used_bytes), bytes(g.swap_limit_bytes))),
        (
            "swap_pool",
            g.swap_pool.map_or_else(
                || "none (each backend pins its own)".to_owned(),
                |p| {
                    format!(
                        "{} pinned of {}: {} free, {} leased, {} held by closed connections",
                        bytes(p.free_bytes + p.leased_bytes + p.held_bytes),
                        bytes(p.limit_bytes),
                        bytes(p.free_bytes),
                        bytes(p.leased_bytes),
                        bytes(p.held_bytes)
                    )
                },
            ),
        ),
    ];
    key_values(&lines)
}

pub fn vm_detail(v: &VmView) -> String {
    let slice_source = if v.slice_us_override.is_some() { "the VM's own" } else { "the GPU's default" };
    let lines = [
        ("name", v.name.clone()),
        ("gpu", v.gpu.clone()),
        ("state", state_name(v).to_owned()),
        ("connected", yes_no(v.connected).to_owned()),
        ("pid", opt(v.pid)),
        ("engine", v.engine.clone().unwrap_or_else(|| "-".to_owned())),
        ("class", v.class.to_string()),
        ("weight", v.weight.to_string()),
        ("priority", v.priority.to_string()),
        ("slice", format!("{} ({slice_source})", micros(v.slice_us as f64))),
        ("max_queued_ops", v.max_queued_ops.to_string()),
        ("drained", yes_no(v.drained).to_owned()),
        (
            "allowed_gpus",
            v.allowed_gpus.as_ref().map_or_else(
                || "default (gpuvisord --gpu-access)".to_owned(),
                |l| allowed_gpus(Some(l), GpuAccessMode::Open),
            ),
        ),
        ("gpu_allowed", yes_no(v.gpu_allowed).to_owned()),
        ("share_configured", percent(v.share_configured)),
        ("share_used", percent(v.share_used)),
        ("gpu_time", format!("{:.3} s", v.gpu_time_s)),
        ("queued", v.queued.to_string()),
        ("inflight_ops", v.inflight_ops.to_string()),
        ("ops_total", v.ops_total.to_string()),
        ("latency_p50", micros(v.latency_p50_us)),
        ("latency_p99", micros(v.latency_p99_us)),
        ("memory_used", bytes(v.used_bytes)),
        ("memory_quota", bytes(v.quota_bytes)),
        ("memory_limit", bytes(v.limit_bytes)),
        ("memory_resident", bytes(v.resident_bytes)),
        ("memory_evicted", bytes(v.evicted_bytes)),
        ("evictions", format!("{} ({:.1} ms in all)", v.evictions, v.evict_ms_total)),
        ("restores", format!("{} ({:.1} ms in all)", v.restores, v.restore_ms_total)),
        ("last_restore", v.last_restore_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))),
    ];
    key_values(&lines)
}

fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    lines.iter().map(|(k, v)| format!("{:width$} {v}\n", format!("{k}:"))).collect()
}

fn state_name(v: &VmView) -> &'static str {
    use crate::model::VmState::*;
    match v.state {
        Running => "running",
        Waiting => "waiting",
        Idle => "idle",
        Drained => "drained",
        Disconnected => "disconnected",
    }
}

/// `GPU-<uuid>` cut to its first 8 hex digits, as nvidia-smi's short form.
fn short_gpu(id: &str) -> &str {
    if id.starts_with("GPU-") && id.len() > 12 {
        id.get(..12).unwrap_or(id)
    } else {
        id
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// A duration in microseconds, in the unit that reads best.
pub fn micros(us: f64) -> String {
    let trim = |x: f64| {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    if us >= 1_000_000.0 {
        format!("{} s", trim(us / 1_000_000.0))
    } else if us >= 1000.0 {
        format!("{} ms", trim(us / 1000.0))
    } else {
        format!("{} us", trim(us))
    }
}

pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A size in the short form tables use: `40.0G`, `512.0M`, `0`.
pub fn size(b: u64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        b.to_string()
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(micros(10_000.0), "10 ms");
        assert_eq!(micros(2_500.0), "2.5 ms");
        assert_eq!(micros(850.0), "850 us");
        assert_eq!(micros(1_200_000.0), "1.2 s");
        assert_eq!(micros(0.0), "0 us");
        assert_eq!(bytes(80 << 30), "80.0 GiB");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(size(40 << 30), "40.0G");
        assert_eq!(size(1536 << 20), "1.5G");
        assert_eq!(size(0), "0");
    }

    #[test]
    fn memory_limits_take_sizes_or_none() {
        assert_eq!(parse_memory_limit("40G"), Ok(MemoryLimit(Some(40 << 30))));
        assert_eq!(parse_memory_limit("512M"), Ok(MemoryLimit(Some(512 << 20))));
        assert_eq!(parse_memory_limit("1.5GiB"), Ok(MemoryLimit(Some(1536 << 20))));
        assert_eq!(parse_memory_limit("64k"), Ok(MemoryLimit(Some(64 << 10))));
        assert_eq!(parse_memory_limit("1048576"), Ok(MemoryLimit(Some(1 << 20))));
        assert_eq!(parse_memory_limit("none"), Ok(MemoryLimit(None)));
        for bad in ["", "G", "-1G", "40X", "0", "lots"] {
            assert!(parse_memory_limit(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["gpuvisorctl", "gpu-set", "sim", "--memory-limit", "none"]).unwrap();
        assert!(matches!(cli.command, Command::GpuSet { memory_limit: Some(MemoryLimit(None)), .. }));
    }

    #[test]
    fn slices_are_given_in_milliseconds() {
        assert_eq!(parse_slice_ms("2.5"), Ok(2500));
        assert_eq!(parse_slice_ms("10"), Ok(10_000));
        assert!(parse_slice_ms("-1").is_err());
        assert!(parse_slice_ms("fast").is_err());
        assert!(parse_slice_ms("NaN").is_err());
    }

    #[test]
    fn columns_line_up() {
        let t = table(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()], vec!["y".into(), "z".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A          LONGER");
        assert_eq!(lines[1], "wide cell  x");
        assert_eq!(lines[2], "y          z");
    }

    #[test]
    fn access_set_takes_exactly_one_kind_of_list() {
        let cli =
            Cli::try_parse_from(["gpuvisorctl", "access-set", "vm1", "--allow-gpu", "sim", "--allow-gpu", "MIG-1"])
                .unwrap();
        assert!(matches!(cli.command, Command::AccessSet { ref allow_gpu, .. } if allow_gpu == &["sim", "MIG-1"]));
        for bad in [
            &["gpuvisorctl", "access-set", "vm1"][..],
            &["gpuvisorctl", "access-set", "vm1", "--allow-gpu", "sim", "--clear"],
            &["gpuvisorctl", "access-set", "vm1", "--allow-any-gpu", "--deny-all-gpus"],
        ] {
            assert_eq!(Cli::try_parse_from(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
        assert_eq!(allowed_gpus(None, GpuAccessMode::Closed), "default: none (--gpu-access closed)");
        assert_eq!(allowed_gpus(Some(&[ANY_GPU.to_owned()]), GpuAccessMode::Closed), "any GPU");
        assert_eq!(allowed_gpus(Some(&[]), GpuAccessMode::Open), "none");
    }

    #[test]
    fn negative_priorities_and_slice_choices_parse() {
        let cli = Cli::try_parse_from(["gpuvisorctl", "set", "vm1", "--priority", "-5"]).unwrap();
        assert!(matches!(cli.command, Command::Set { priority: Some(-5), .. }));
        let err = Cli::try_parse_from(["gpuvisorctl", "set", "vm1", "--slice-ms", "2", "--gpu-slice"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["gpuvisorctl", "set", "vm1", "--class", "gold"]).unwrap_err();
        assert!(err.to_string().contains("best-effort"), "{err}");
    }
}
