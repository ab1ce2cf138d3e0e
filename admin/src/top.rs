//! `gpuvisorctl top`: a live terminal view of gpuvisord's GPUs and VMs that
//! refreshes itself, sorts, and keeps running while the daemon is away.
//!
//! The pure part (counter rates between two refreshes, the rows and their
//! order, what a key does) is kept apart from the drawing and from the
//! terminal, so that tests can check it without a terminal; `draw` renders
//! into any ratatui backend, and `run` owns the real terminal.

use crate::client::{Client, ClientError};
use crate::ctl::{micros, size};
use crate::model::{GpuView, VmState, VmView};
use crate::time;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState};
use ratatui::{Frame, Terminal};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `gpuvisorctl top`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// Seconds between refreshes (0.2 to 3600). Launch and copy rates are
    /// averaged over this interval
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,

    /// Column to sort the VM table by at start: name, gpu, state, class,
    /// weight, share, cfg, gpu-time, launches, copies, p50, p99, used,
    /// resident, evicted, errors or faults. Names sort A to Z, figures
    /// largest first
    #[arg(long, value_name = "COLUMN", default_value = "name", value_parser = parse_column)]
    pub sort: VmColumn,

    /// Reverse the sort order
    #[arg(long)]
    pub reverse: bool,

    /// Only this GPU and its VMs (an id, or the start of one)
    #[arg(long, value_name = "ID")]
    pub gpu: Option<String>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("expected seconds, like 1 or 0.5, got {s:?}"))?;
    if !(0.2..=3600.0).contains(&secs) {
        return Err(format!("expected 0.2 to 3600 seconds, got {s}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_column(s: &str) -> Result<VmColumn, String> {
    VmColumn::ALL.into_iter().find(|c| c.option_name() == s.to_ascii_lowercase()).ok_or_else(|| {
        let names: Vec<&str> = VmColumn::ALL.iter().map(|c| c.option_name()).collect();
        format!("no column {s:?}; one of {}", names.join(", "))
    })
}

/// Why top could not run: no terminal to draw on, or the terminal failed.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("top draws on a terminal and standard output is not one (for text, use `gpuvisorctl vms`)")]
    NotATerminal,
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// One answer of the daemon and when it came.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub gpus: Vec<GpuView>,
    pub vms: Vec<VmView>,
}

/// A VM's counters as per-second rates between two samples; `None` on the
/// first sample, and where a counter went back (its backend restarted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VmRates {
    pub launches: Option<f64>,
    /// Bytes copied in all three directions.
    pub copy_bytes: Option<f64>,
}

fn copy_bytes(v: &VmView) -> u64 {
    v.bytes_htod.saturating_add(v.bytes_dtoh).saturating_add(v.bytes_dtod)
}

fn per_second(old: u64, new: u64, secs: f64) -> Option<f64> {
    (secs > 0.0 && new >= old).then(|| (new - old) as f64 / secs)
}

/// Each VM's rates from `prev` to `cur`, by name.
pub fn rates(prev: Option<&Sample>, cur: &Sample) -> HashMap<String, VmRates> {
    let Some(prev) = prev else {
        return HashMap::new();
    };
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    let before: HashMap<&str, &VmView> = prev.vms.iter().map(|v| (v.name.as_str(), v)).collect();
    cur.vms
        .iter()
        .filter_map(|v| {
            let old = before.get(v.name.as_str())?;
            let r = VmRates {
                launches: per_second(old.launches, v.launches, secs),
                copy_bytes: per_second(copy_bytes(old), copy_bytes(v), secs),
            };
            Some((v.name.clone(), r))
        })
        .collect()
}

/// The VM table's columns, in the order they are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmColumn {
    Name,
    Gpu,
    State,
    Class,
    Weight,
    Share,
    Configured,
    GpuTime,
    Launches,
    Copies,
    P50,
    P99,
    Used,
    Resident,
    Evicted,
    Errors,
    Faults,
}

/// What a column sorts by.
#[derive(Debug, Clone, PartialEq)]
enum SortKey {
    Text(String),
    Num(f64),
}

impl SortKey {
    fn cmp(&self, other: &SortKey) -> std::cmp::Ordering {
        match (self, other) {
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            (SortKey::Num(a), SortKey::Num(b)) => a.total_cmp(b),
            (SortKey::Text(_), SortKey::Num(_)) => std::cmp::Ordering::Less,
            (SortKey::Num(_), SortKey::Text(_)) => std::cmp::Ordering::Greater,
        }
    }
}

impl VmColumn {
    pub const ALL: [VmColumn; 17] = [
        VmColumn::Name,
        VmColumn::Gpu,
        VmColumn::State,
        VmColumn::Class,
        VmColumn::Weight,
        VmColumn::Share,
        VmColumn::Configured,
        VmColumn::GpuTime,
        VmColumn::Launches,
        VmColumn::Copies,
        VmColumn::P50,
        VmColumn::P99,
        VmColumn::Used,
        VmColumn::Resident,
        VmColumn::Evicted,
        VmColumn::Errors,
        VmColumn::Faults,
    ];

    /// The column's heading in the table.
    pub fn header(self) -> &'static str {
        match self {
            VmColumn::Name => "NAME",
            VmColumn::Gpu => "GPU",
            VmColumn::State => "STATE",
            VmColumn::Class => "CLASS",
            VmColumn::Weight => "W/PRIO",
            VmColumn::Share => "SHARE",
            VmColumn::Configured => "CFG",
            VmColumn::GpuTime => "GPU-TIME",
            VmColumn::Launches => "LAUNCH/s",
            VmColumn::Copies => "COPY B/s",
            VmColumn::P50 => "P50",
            VmColumn::P99 => "P99",
            VmColumn::Used => "USED",
            VmColumn::Resident => "RESIDENT",
            VmColumn::Evicted => "EVICTED",
            VmColumn::Errors => "ERRORS",
            VmColumn::Faults => "FAULTS",
        }
    }

    /// The column's name for `--sort`.
    pub fn option_name(self) -> &'static str {
        match self {
            VmColumn::Name => "name",
            VmColumn::Gpu => "gpu",
            VmColumn::State => "state",
            VmColumn::Class => "class",
            VmColumn::Weight => "weight",
            VmColumn::Share => "share",
            VmColumn::Configured => "cfg",
            VmColumn::GpuTime => "gpu-time",
            VmColumn::Launches => "launches",
            VmColumn::Copies => "copies",
            VmColumn::P50 => "p50",
            VmColumn::P99 => "p99",
            VmColumn::Used => "used",
            VmColumn::Resident => "resident",
            VmColumn::Evicted => "evicted",
            VmColumn::Errors => "errors",
            VmColumn::Faults => "faults",
        }
    }

    /// Whether the column first sorts largest first: figures do, since the
    /// VM that uses the most is the one an admin looks for; names do not.
    fn descending_first(self) -> bool {
        !matches!(self, VmColumn::Name | VmColumn::Gpu | VmColumn::State | VmColumn::Class)
    }

    fn index(self) -> usize {
        VmColumn::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The column after this one (`forward`) or before it, wrapping around.
    pub fn step(self, forward: bool) -> VmColumn {
        let n = VmColumn::ALL.len();
        let i = if forward { (self.index() + 1) % n } else { (self.index() + n - 1) % n };
        VmColumn::ALL[i]
    }

    fn key(self, v: &VmView, r: &VmRates) -> SortKey {
        let rate = |x: Option<f64>| SortKey::Num(x.unwrap_or(f64::NEG_INFINITY));
        match self {
            VmColumn::Name => SortKey::Text(v.name.clone()),
            VmColumn::Gpu => SortKey::Text(v.gpu.clone()),
            VmColumn::State => SortKey::Text(state_name(v.state).to_owned()),
            VmColumn::Class => SortKey::Text(v.class.as_str().to_owned()),
            VmColumn::Weight => SortKey::Num(f64::from(v.weight) + f64::from(v.priority) / 100.0),
            VmColumn::Share => SortKey::Num(v.share_used),
            VmColumn::Configured => SortKey::Num(v.share_configured),
            VmColumn::GpuTime => SortKey::Num(v.gpu_time_s),
            VmColumn::Launches => rate(r.launches),
            VmColumn::Copies => rate(r.copy_bytes),
            VmColumn::P50 => SortKey::Num(v.latency_p50_us),
            VmColumn::P99 => SortKey::Num(v.latency_p99_us),
            VmColumn::Used => SortKey::Num(v.used_bytes as f64),
            VmColumn::Resident => SortKey::Num(v.resident_bytes as f64),
            VmColumn::Evicted => SortKey::Num(v.evicted_bytes as f64),
            VmColumn::Errors => SortKey::Num(errors(v) as f64),
            VmColumn::Faults => SortKey::Num(v.faults as f64),
        }
    }

    fn cell(self, v: &VmView, r: &VmRates) -> String {
        let rate = |x: Option<f64>, f: fn(f64) -> String| x.map_or_else(|| "-".to_owned(), f);
        match self {
            VmColumn::Name => v.name.clone(),
            VmColumn::Gpu => short_gpu(&v.gpu).to_owned(),
            VmColumn::State => state_name(v.state).to_owned(),
            VmColumn::Class => v.class.as_str().to_owned(),
            VmColumn::Weight => format!("{}/{}", v.weight, v.priority),
            VmColumn::Share => percent(v.share_used),
            VmColumn::Configured => percent(v.share_configured),
            VmColumn::GpuTime => duration(v.gpu_time_s),
            VmColumn::Launches => rate(r.launches, count),
            VmColumn::Copies => rate(r.copy_bytes, |b| size(b.round() as u64)),
            VmColumn::P50 => micros(v.latency_p50_us),
            VmColumn::P99 => micros(v.latency_p99_us),
            VmColumn::Used => size(v.used_bytes),
            VmColumn::Resident => size(v.resident_bytes),
            VmColumn::Evicted => size(v.evicted_bytes),
            VmColumn::Errors => errors(v).to_string(),
            VmColumn::Faults => v.faults.to_string(),
        }
    }
}

fn errors(v: &VmView) -> u64 {
    v.api_errors.values().fold(0u64, |a, b| a.saturating_add(*b))
}

fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Running => "running",
        VmState::Waiting => "waiting",
        VmState::Idle => "idle",
        VmState::Drained => "drained",
        VmState::Disconnected => "disconnected",
    }
}

/// `GPU-<uuid>` cut to its first 8 hex digits, as `gpuvisorctl vms` shows it.
fn short_gpu(id: &str) -> &str {
    if id.starts_with("GPU-") {
        id.get(..12).unwrap_or(id)
    } else {
        id
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// A count per second, short: `7`, `12.5`, `3.4k`, `1.2M`.
fn count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 10.0 || x == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Seconds of GPU time, short: `12.5s`, `3m05s`, `2h07m`.
fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        let s = secs as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0) as u64;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// One VM's line of the table: its name (to keep the selection on it across
/// refreshes) and its cells in `VmColumn::ALL` order.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub name: String,
    pub cells: Vec<String>,
}

/// The VM table's rows in display order: by `column`, largest or Z first
/// when `descending`; ties in name order so rows do not jump about.
pub fn vm_rows(vms: &[VmView], rates: &HashMap<String, VmRates>, column: VmColumn, descending: bool) -> Vec<VmRow> {
    let none = VmRates::default();
    let mut keyed: Vec<(SortKey, &VmView, &VmRates)> = vms
        .iter()
        .map(|v| {
            let r = rates.get(&v.name).unwrap_or(&none);
            (column.key(v, r), v, r)
        })
        .collect();
    keyed.sort_by(|(ka, va, _), (kb, vb, _)| {
        let by_key = if descending { kb.cmp(ka) } else { ka.cmp(kb) };
        by_key.then_with(|| va.name.cmp(&vb.name))
    });
    keyed
        .into_iter()
        .map(|(_, v, r)| VmRow { name: v.name.clone(), cells: VmColumn::ALL.iter().map(|c| c.cell(v, r)).collect() })
        .collect()
}

const GPU_HEADER: [&str; 9] =
    ["ID", "NAME", "VMS", "HOLDER", "BUSY", "MEMORY res/cap", "EVICTED", "SWAP used/lim", "SLICE"];

/// The GPU table's rows, by NVML index then id, as `gpuvisorctl gpus` has them.
pub fn gpu_rows(gpus: &[GpuView]) -> Vec<Vec<String>> {
    let mut gpus: Vec<&GpuView> = gpus.iter().collect();
    gpus.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| a.id.cmp(&b.id)));
    gpus.into_iter()
        .map(|g| {
            vec![
                short_gpu(&g.id).to_owned(),
                g.name.clone(),
                g.vms.to_string(),
                g.holder.clone().unwrap_or_else(|| "-".to_owned()),
                percent(g.busy_fraction),
                format!("{}/{}", size(g.resident_bytes), g.memory_capacity_bytes.map_or_else(|| "-".to_owned(), size)),
                size(g.evicted_bytes),
                format!("{}/{}", size(g.swap_used_bytes), size(g.swap_limit_bytes)),
                micros(g.slice_us as f64),
            ]
        })
        .collect()
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// Everything top shows, and what the keys changed.
pub struct App {
    url: String,
    interval: Duration,
    gpu_filter: Option<String>,
    latest: Option<Sample>,
    rates: HashMap<String, VmRates>,
    /// The last refresh's error, cleared by the next good one.
    error: Option<String>,
    /// Wall-clock time of the last good refresh.
    updated: Option<f64>,
    pub sort: VmColumn,
    pub descending: bool,
    /// The selected VM by name, so it stays selected when rows move.
    pub selected: Option<String>,
    pub show_help: bool,
    table: TableState,
}

impl App {
    pub fn new(url: &str, args: &TopArgs) -> App {
        App {
            url: url.to_owned(),
            interval: args.interval,
            gpu_filter: args.gpu.clone(),
            latest: None,
            rates: HashMap::new(),
            error: None,
            updated: None,
            sort: args.sort,
            descending: args.sort.descending_first() != args.reverse,
            selected: None,
            show_help: false,
            table: TableState::default(),
        }
    }

    /// Takes in one refresh: a sample, or why there is none. The previous
    /// sample stays on screen after an error, marked stale by the status line.
    pub fn update(&mut self, fetched: Result<Sample, String>, wall: f64) {
        match fetched {
            Ok(mut s) => {
                if let Some(g) = &self.gpu_filter {
                    s.gpus.retain(|x| x.id.starts_with(g.as_str()));
                    s.vms.retain(|x| x.gpu.starts_with(g.as_str()));
                }
                self.rates = rates(self.latest.as_ref(), &s);
                self.latest = Some(s);
                self.error = None;
                self.updated = Some(wall);
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The VM rows as shown now.
    pub fn rows(&self) -> Vec<VmRow> {
        match &self.latest {
            Some(s) => vm_rows(&s.vms, &self.rates, self.sort, self.descending),
            None => Vec::new(),
        }
    }

    fn selected_index(&self, rows: &[VmRow]) -> Option<usize> {
        let name = self.selected.as_ref()?;
        rows.iter().position(|r| &r.name == name)
    }

    fn move_selection(&mut self, to: impl Fn(Option<usize>, usize) -> usize) {
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        let i = to(self.selected_index(&rows), rows.len()).min(rows.len() - 1);
        self.selected = Some(rows[i].name.clone());
    }

    /// Acts on one key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Flow {
        if key.kind != KeyEventKind::Press {
            return Flow::Continue;
        }
        // Raw mode turns Ctrl-C into a key; it still means quit.
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Flow::Quit;
        }
        match key.code {
            KeyCode::Char('q') => return Flow::Quit,
            KeyCode::Esc if self.show_help => self.show_help = false,
            KeyCode::Esc => return Flow::Quit,
            KeyCode::Char('?') | KeyCode::Char('h') => self.show_help = !self.show_help,
            KeyCode::Char('s') | KeyCode::Right => self.set_sort(self.sort.step(true)),
            KeyCode::Char('S') | KeyCode::Left => self.set_sort(self.sort.step(false)),
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(|i, _| i.map_or(0, |i| i + 1)),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(|i, _| i.map_or(0, |i| i.saturating_sub(1))),
            KeyCode::PageDown => self.move_selection(|i, _| i.map_or(0, |i| i + 10)),
            KeyCode::PageUp => self.move_selection(|i, _| i.map_or(0, |i| i.saturating_sub(10))),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(|_, _| 0),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(|_, n| n - 1),
            _ => {}
        }
        Flow::Continue
    }

    fn set_sort(&mut self, column: VmColumn) {
        self.sort = column;
        self.descending = column.descending_first();
    }

    /// The status line's sort note, as `sort: SHARE (largest first)`.
    pub fn sort_note(&self) -> String {
        let order = match (self.sort.descending_first(), self.descending) {
            (false, false) => "A to Z",
            (false, true) => "Z to A",
            (true, true) => "largest first",
            (true, false) => "smallest first",
        };
        format!("sort: {} ({order})", self.sort.header())
    }
}

/// The mark after the sorted column's heading: ASCII, so that it shows on
/// any terminal an SSH session lands on.
fn sort_mark(descending: bool) -> &'static str {
    if descending {
        " v"
    } else {
        " ^"
    }
}

/// Column widths, each as wide as its widest cell or heading, for the
/// columns that fit in `room` cells. Columns that do not fit are left out
/// from the right, as in top(1): squeezing them all would cut every VM's name.
fn widths(header: &[String], rows: &[Vec<String>], room: u16) -> Vec<Constraint> {
    let mut used = 0usize;
    header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).fold(h.chars().count(), usize::max).min(40)
        })
        .take_while(|w| {
            // One cell of spacing between columns.
            used += w + usize::from(used > 0);
            used <= usize::from(room)
        })
        .map(|w| Constraint::Length(w as u16))
        .collect()
}

/// `cells` cut to the first `n` columns.
fn first(cells: &[String], n: usize) -> Vec<String> {
    cells.iter().take(n).cloned().collect()
}

/// Draws the whole screen for `app` at wall-clock time `now`.
pub fn draw(frame: &mut Frame, app: &mut App, now: f64) {
    let gpu_rows = app.latest.as_ref().map(|s| gpu_rows(&s.gpus)).unwrap_or_default();
    let area = frame.area();
    // The GPU table takes what its rows need (borders and heading: 3 lines)
    // but no more than a third of the screen; the VMs get the rest.
    let gpu_height = (gpu_rows.len() as u16 + 3).min(area.height / 3).max(4);
    let [head, gpus, vms, detail, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(gpu_height),
        Constraint::Min(4),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);

    let counts =
        app.latest.as_ref().map_or_else(String::new, |s| format!("{} GPUs, {} VMs", s.gpus.len(), s.vms.len()));
    let title = Line::from(vec![
        Span::styled(" gpuvisorctl top ", Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)),
        Span::raw(format!("  {}  {} UTC  {counts}", app.url, time::datetime(now))),
        Span::styled("   q quit  s/S sort  r reverse  ↑↓ select  ? help", Style::new().fg(Color::DarkGray)),
    ]);
    frame.render_widget(Paragraph::new(title), head);

    let header: Vec<String> = GPU_HEADER.iter().map(|h| h.to_string()).collect();
    // Inside the borders.
    let room = area.width.saturating_sub(2);
    let gpu_widths = widths(&header, &gpu_rows, room);
    let n = gpu_widths.len();
    let gpu_table = Table::new(gpu_rows.iter().map(|r| Row::new(first(r, n))), gpu_widths)
        .header(Row::new(first(&header, n)).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(" GPUs "));
    frame.render_widget(gpu_table, gpus);

    let rows = app.rows();
    let header: Vec<String> = VmColumn::ALL
        .iter()
        .map(|c| {
            if *c == app.sort {
                format!("{}{}", c.header(), sort_mark(app.descending))
            } else {
                c.header().to_owned()
            }
        })
        .collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells.clone()).collect();
    let sorted = app.sort.index();
    let vm_widths = widths(&header, &cells, room);
    let n = vm_widths.len();
    let header_row = Row::new(header.iter().take(n).enumerate().map(|(i, h)| {
        let style = if i == sorted { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
        Cell::from(h.clone()).style(style)
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let vm_table = Table::new(cells.iter().map(|r| Row::new(first(r, n))), vm_widths)
        .header(header_row)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(Block::bordered().title(format!(" VMs ({}) ", app.sort_note())));
    let selected = app.selected_index(&rows);
    app.table.select(selected);
    frame.render_stateful_widget(vm_table, vms, &mut app.table);

    let detail_text = selected
        .and_then(|i| app.latest.as_ref()?.vms.iter().find(|v| v.name == rows[i].name))
        .map_or_else(|| "select a VM with ↑↓ or j/k for its details".to_owned(), vm_detail);
    frame.render_widget(Paragraph::new(detail_text).style(Style::new().fg(Color::Cyan)), detail);

    let status_line = match (&app.error, app.updated) {
        (Some(e), updated) => {
            let shown =
                updated.map_or_else(|| "nothing yet".to_owned(), |t| format!("data of {} UTC", time::clock(t, true)));
            Line::styled(
                format!("error (retrying every {:.1} s, showing {shown}): {e}", app.interval.as_secs_f64()),
                Style::new().fg(Color::White).bg(Color::Red),
            )
        }
        (None, Some(t)) => Line::raw(format!(
            "updated {} UTC, every {:.1} s; {}",
            time::clock(t, true),
            app.interval.as_secs_f64(),
            app.sort_note()
        )),
        (None, None) => Line::raw(format!("connecting to {}...", app.url)),
    };
    frame.render_widget(Paragraph::new(status_line), status);

    if app.show_help {
        draw_help(frame, area);
    }
}

/// The selected VM's figures that have no column.
fn vm_detail(v: &VmView) -> String {
    let mut s = format!(
        "{}: pid {} {}  quota {} limit {}  grants {} preempted {} waited {:.1}s  registered {} (reconnects {})  \
         evictions {} restores {}",
        v.name,
        v.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        v.engine.as_deref().unwrap_or("-"),
        size(v.quota_bytes),
        size(v.limit_bytes),
        v.grants,
        v.preemptions,
        v.grant_wait_s,
        v.registrations,
        v.reconnects,
        v.evictions,
        v.restores,
    );
    if !v.api_errors.is_empty() {
        let errs: Vec<String> = v.api_errors.iter().map(|(code, n)| format!("{code} {n}")).collect();
        s.push_str(&format!("  errors: {}", errs.join(", ")));
    }
    s
}

const HELP: &[&str] = &[
    "Keys",
    "  q, Ctrl-C      quit (Esc quits too, or closes this help)",
    "  s / S, → / ←   sort the VM table by the next / previous column",
    "  r              reverse the order",
    "  ↑ ↓, j k       select a VM: its other figures show under the table",
    "  PgUp PgDn, g G move by 10 rows, to the first or last",
    "  ?              show or hide this help",
    "Columns that do not fit the terminal are left out from the right.",
    "",
    "VM columns",
    "  SHARE     share of the GPU's time used over the last 2 s window",
    "  CFG       share the policy entitles the VM to now, among busy VMs",
    "  W/PRIO    weight / priority",
    "  LAUNCH/s  kernel launches, COPY B/s bytes copied (all directions),",
    "            per second between the last two refreshes",
    "  P50 P99   request latency, arrival at the backend to completion",
    "  USED      memory allocated; RESIDENT on the GPU; EVICTED in host RAM",
    "  ERRORS    CUDA errors the guest got; FAULTS kernel faults among them",
    "",
    "GPU columns",
    "  BUSY      time some VM held the GPU with work, last 2 s",
    "  MEMORY    VMs' memory on the GPU / memory they share (- unmanaged)",
    "  SWAP      host RAM holding evicted memory / its limit (all GPUs)",
];

fn draw_help(frame: &mut Frame, area: Rect) {
    let width = (HELP.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4).min(area.width);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height };
    frame.render_widget(Clear, popup);
    let text: Vec<Line> = HELP.iter().map(|l| Line::raw(*l)).collect();
    frame.render_widget(Paragraph::new(text).block(Block::bordered().title(" help (? or Esc to close) ")), popup);
}

/// Takes the terminal over (raw mode, the alternate screen, no cursor) and
/// gives it back when dropped, so that every way out, an error included,
/// leaves the shell usable.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard, TopError> {
        // A panic prints its message after the terminal is back to normal;
        // otherwise raw mode would garble it and the alternate screen hide it.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        // From here on, the guard's drop undoes whatever part succeeded.
        let guard = TerminalGuard;
        terminal::enable_raw_mode()?;
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    // Errors are ignored: there is no better place to report them, and each
    // step is worth trying even when another failed.
    let _ = terminal::disable_raw_mode();
    let _ = execute!(std::io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

fn fetch(client: &Client) -> Result<Sample, ClientError> {
    let gpus = client.gpus()?;
    let vms = client.vms()?;
    Ok(Sample { at: Instant::now(), gpus, vms })
}

/// Runs `top` on the terminal until the user quits.
pub fn run(client: Client, args: &TopArgs) -> Result<(), TopError> {
    if !std::io::stdout().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    let url = client.base_url().to_owned();
    let interval = args.interval;
    // Requests run on their own thread: a daemon that is slow to answer
    // must not keep the keys from working.
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("top-fetch".into()).spawn(move || loop {
        let started = Instant::now();
        let result = fetch(&client).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::debug!(error = %e, "refresh failed");
        }
        if tx.send((result, time::now_unix())).is_err() {
            return;
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    })?;

    let _guard = TerminalGuard::enter()?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    term.clear()?;
    let mut app = App::new(&url, args);
    loop {
        while let Ok((result, wall)) = rx.try_recv() {
            app.update(result, wall);
        }
        // Drawing checks the terminal's size first, so a resize is taken
        // care of by the next draw.
        term.draw(|f| draw(f, &mut app, time::now_unix()))?;
        if event::poll(Duration::from_millis(100))? {
            if let Event::Key(key) = event::read()? {
                if app.on_key(key) == Flow::Quit {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::control::QosClass;
    use ratatui::backend::TestBackend;

    fn vm(name: &str, share_used: f64, launches: u64) -> VmView {
        VmView {
            name: name.to_owned(),
            gpu: "GPU-8a3f21c0-1111-2222-3333-444455556666".to_owned(),
            state: VmState::Running,
            connected: true,
            pid: Some(42),
            engine: Some("cuda".to_owned()),
            class: QosClass::Burstable,
            weight: 100,
            priority: 0,
            slice_us: 10_000,
            slice_us_override: None,
            max_queued_ops: 64,
            drained: false,
            share_configured: 0.5,
            share_used,
            gpu_time_s: 75.0,
            queued: 0,
            inflight_ops: 0,
            ops_total: 0,
            latency_p50_us: 120.0,
            latency_p99_us: 2500.0,
            quota_bytes: 4 << 30,
            used_bytes: 1 << 30,
            limit_bytes: 4 << 30,
            resident_bytes: 1 << 30,
            evicted_bytes: 0,
            evictions: 0,
            restores: 0,
            evict_ms_total: 0.0,
            restore_ms_total: 0.0,
            last_restore_ms: None,
            swapped_out_bytes: 0,
            swapped_in_bytes: 0,
            grant_wait_s: 0.0,
            grants: 0,
            preemptions: 0,
            registrations: 1,
            reconnects: 0,
            launches,
            copies_htod: 0,
            copies_dtoh: 0,
            copies_dtod: 0,
            bytes_htod: launches * 1024,
            bytes_dtoh: 0,
            bytes_dtod: 0,
            api_errors: Default::default(),
            faults: 0,
            allowed_gpus: None,
            gpu_allowed: true,
        }
    }

    fn gpu() -> GpuView {
        GpuView {
            id: "GPU-8a3f21c0-1111-2222-3333-444455556666".to_owned(),
            name: "NVIDIA H100 80GB HBM3".to_owned(),
            index: Some(0),
            memory_total_bytes: 80 << 30,
            mig_enabled: Some(false),
            slice_us: 10_000,
            max_queued_ops: 64,
            holder: Some("alpha".to_owned()),
            busy_fraction: 0.75,
            vms: 3,
            overcommit_ratio: 1.0,
            memory_limit_bytes: None,
            memory_capacity_bytes: Some(78 << 30),
            resident_bytes: 3 << 30,
            evicted_bytes: 0,
            swap_used_bytes: 0,
            swap_limit_bytes: 64 << 30,
            swap_pool: None,
        }
    }

    fn args() -> TopArgs {
        TopArgs { interval: Duration::from_secs(1), sort: VmColumn::Name, reverse: false, gpu: None }
    }

    fn sample(at: Instant, vms: Vec<VmView>) -> Sample {
        Sample { at, gpus: vec![gpu()], vms }
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn names(rows: &[VmRow]) -> Vec<&str> {
        rows.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn rates_are_counter_deltas_over_the_time_between_refreshes() {
        let t0 = Instant::now();
        let a = sample(t0, vec![vm("alpha", 0.2, 1000)]);
        let b = sample(t0 + Duration::from_secs(2), vec![vm("alpha", 0.2, 1600)]);
        let r = rates(Some(&a), &b)["alpha"];
        assert_eq!(r.launches, Some(300.0));
        assert_eq!(r.copy_bytes, Some(300.0 * 1024.0));
    }

    #[test]
    fn no_rate_before_the_second_refresh_or_after_a_counter_reset() {
        let t0 = Instant::now();
        let a = sample(t0, vec![vm("alpha", 0.2, 1000)]);
        assert!(rates(None, &a).is_empty());
        // The backend restarted: its counters start again from 0.
        let b = sample(t0 + Duration::from_secs(1), vec![vm("alpha", 0.2, 10)]);
        assert_eq!(rates(Some(&a), &b)["alpha"], VmRates { launches: None, copy_bytes: None });
        let rows = vm_rows(&b.vms, &rates(Some(&a), &b), VmColumn::Name, false);
        assert_eq!(rows[0].cells[VmColumn::Launches.index()], "-");
    }

    #[test]
    fn figures_sort_largest_first_and_names_a_to_z() {
        let vms = vec![vm("beta", 0.1, 0), vm("alpha", 0.6, 0), vm("gamma", 0.3, 0)];
        let none = HashMap::new();
        assert_eq!(names(&vm_rows(&vms, &none, VmColumn::Name, false)), ["alpha", "beta", "gamma"]);
        assert_eq!(names(&vm_rows(&vms, &none, VmColumn::Share, true)), ["alpha", "gamma", "beta"]);
        assert_eq!(names(&vm_rows(&vms, &none, VmColumn::Share, false)), ["beta", "gamma", "alpha"]);
    }

    #[test]
    fn s_moves_the_sort_to_the_next_column_and_r_reverses_it() {
        let mut app = App::new("http://x", &args());
        app.on_key(key('s'));
        assert_eq!((app.sort, app.descending), (VmColumn::Gpu, false));
        app.on_key(key('S'));
        app.on_key(key('S'));
        assert_eq!(app.sort, VmColumn::Faults, "S wraps around to the last column");
        assert!(app.descending);
        app.on_key(key('r'));
        assert!(!app.descending);
        assert_eq!(app.sort_note(), "sort: FAULTS (smallest first)");
    }

    #[test]
    fn the_selection_follows_its_vm_when_the_order_changes() {
        let mut app = App::new("http://x", &args());
        app.update(Ok(sample(Instant::now(), vec![vm("beta", 0.1, 0), vm("alpha", 0.6, 0)])), 0.0);
        app.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        app.on_key(key('j'));
        assert_eq!(app.selected.as_deref(), Some("beta"));
        app.on_key(key('j'));
        assert_eq!(app.selected.as_deref(), Some("beta"), "stops at the last row");
        app.set_sort(VmColumn::Share);
        assert_eq!(app.selected.as_deref(), Some("beta"));
        app.on_key(key('k'));
        assert_eq!(app.selected.as_deref(), Some("alpha"));
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_and_esc_first_closes_the_help() {
        let mut app = App::new("http://x", &args());
        assert_eq!(app.on_key(key('q')), Flow::Quit);
        assert_eq!(app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Flow::Quit);
        app.on_key(key('?'));
        assert!(app.show_help);
        assert_eq!(app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)), Flow::Continue);
        assert!(!app.show_help);
        assert_eq!(app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)), Flow::Quit);
    }

    #[test]
    fn columns_are_chosen_by_name_on_the_command_line() {
        assert_eq!(parse_column("P99"), Ok(VmColumn::P99));
        assert!(parse_column("speed").unwrap_err().contains("gpu-time"));
        assert!(parse_interval("0.05").is_err());
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
    }

    fn screen(app: &mut App, width: u16, height: u16) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(width, height)).unwrap();
        term.draw(|f| draw(f, app, 1_764_638_403.0)).unwrap();
        let buf = term.backend().buffer();
        buf.content()
            .chunks(usize::from(buf.area.width))
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect()
    }

    #[test]
    fn the_screen_shows_gpus_vms_rates_and_the_sorted_column() {
        let t0 = Instant::now();
        let mut app = App::new("http://127.0.0.1:9400", &TopArgs { sort: VmColumn::Share, ..args() });
        app.update(Ok(sample(t0, vec![vm("alpha", 0.6, 0), vm("beta", 0.1, 0)])), 0.0);
        app.update(Ok(sample(t0 + Duration::from_secs(1), vec![vm("alpha", 0.6, 500), vm("beta", 0.1, 7)])), 0.0);
        let lines = screen(&mut app, 160, 30);
        let text = lines.join("\n");
        assert!(lines[0].contains("http://127.0.0.1:9400") && lines[0].contains("2025-12-02 01:20:03 UTC"), "{text}");
        assert!(text.contains("NVIDIA H100 80GB HBM3") && text.contains("3.0G/78.0G"), "{text}");
        assert!(text.contains("SHARE v"), "{text}");
        let alpha = lines.iter().position(|l| l.starts_with("│alpha ")).unwrap();
        let beta = lines.iter().position(|l| l.starts_with("│beta ")).unwrap();
        assert!(alpha < beta, "largest share first:\n{text}");
        let header = lines.iter().find(|l| l.contains("LAUNCH/s")).unwrap();
        let col = header.find("LAUNCH/s").unwrap();
        assert_eq!(lines[alpha][col..].split_whitespace().next(), Some("500"), "{text}");
    }

    #[test]
    fn an_unreachable_daemon_is_reported_on_the_status_line_and_the_last_data_stays() {
        let mut app = App::new("http://127.0.0.1:9", &args());
        app.update(Ok(sample(Instant::now(), vec![vm("alpha", 0.6, 0)])), 1_764_638_400.0);
        app.update(Err("could not reach http://127.0.0.1:9/v1/gpus: connection refused".to_owned()), 0.0);
        let lines = screen(&mut app, 120, 24);
        let last = &lines[23];
        assert!(last.starts_with("error (retrying every 1.0 s, showing data of 01:20:00 UTC): "), "{last}");
        assert!(last.contains("could not reach http://127.0.0.1:9/v1/gpus"), "{last}");
        assert!(lines.iter().any(|l| l.contains("alpha")), "{}", lines.join("\n"));
    }

    #[test]
    fn a_narrow_terminal_keeps_whole_names_and_drops_columns_from_the_right() {
        let mut app = App::new("http://x", &args());
        app.update(Ok(sample(Instant::now(), vec![vm("a-rather-long-vm-name", 0.6, 0)])), 0.0);
        let lines = screen(&mut app, 60, 20);
        let text = lines.join("\n");
        assert!(text.contains("│a-rather-long-vm-name "), "{text}");
        let header = lines.iter().find(|l| l.contains("NAME ^")).unwrap();
        assert!(header.contains("STATE") && !header.contains("FAULTS"), "{text}");
    }

    #[test]
    fn help_lists_the_keys() {
        let mut app = App::new("http://x", &args());
        app.on_key(key('?'));
        let text = screen(&mut app, 100, 30).join("\n");
        assert!(text.contains("reverse the order") && text.contains("quit"), "{text}");
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        let mut app = App::new("http://x", &args());
        app.update(Ok(sample(Instant::now(), vec![vm("alpha", 0.6, 0)])), 0.0);
        app.on_key(key('?'));
        screen(&mut app, 10, 3);
    }
}
