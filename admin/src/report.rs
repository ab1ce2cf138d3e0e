//! `gpuvisorctl report`: the VMs' GPU shares, memory and request latency over
//! a time range, read from gpuvisord's history and drawn as one PNG or SVG
//! file of three panels on a shared time axis.
//!
//! Fetching (`fetch`) and drawing (`render`) are separate: `render` is a pure
//! function of already fetched answers, so it is tested without a daemon.
//! Text is drawn with a font compiled into the binary (DejaVu Sans), so the
//! report needs no fontconfig or system fonts on the host.

use crate::client::{Client, ClientError};
use crate::history::{HistoryQuery, HistoryResponse, HistorySeries};
use crate::time;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const LONG_ABOUT: &str = "\
Plot the VMs' GPU shares, memory and request latency over a time range into a
PNG or SVG file, from gpuvisord's history (GET /v1/history).

The file has three panels on one time axis (UTC), one colour per VM:
  GPU share     share of the GPU's time each VM used (solid) and the share the
                policy entitled it to (dashed), in %
  memory        each VM's device memory on the GPU (solid) and evicted to host
                RAM (dashed)
  latency       request latency, arrival at the backend to completion on the
                GPU: median (solid) and 99th percentile (dashed), in ms
A panel with nothing to show in the range says so. The format follows the
file's extension (.png or .svg).

Examples:
  gpuvisorctl report -o last-hour.png
  gpuvisorctl report --since 1d --vm web --vm batch -o day.svg
  gpuvisorctl report --from 2026-12-02T08:00Z --to 2026-12-02T09:00Z --step 10s";

/// The metrics a report reads.
pub const SHARE: &str = "gpuvisor_vm_gpu_share";
pub const SHARE_CONFIGURED: &str = "gpuvisor_vm_gpu_share_configured";
pub const RESIDENT: &str = "gpuvisor_vm_memory_resident_bytes";
pub const EVICTED: &str = "gpuvisor_vm_memory_evicted_bytes";
pub const LATENCY: &str = "gpuvisor_vm_request_latency_seconds";

/// `gpuvisorctl report`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Start of the range: Unix seconds or a UTC time such as 2026-12-02T08:00Z
    /// [default: --since before --to]
    #[arg(long, value_name = "TIME", value_parser = parse_time_now, conflicts_with = "since")]
    pub from: Option<f64>,

    /// End of the range, as --from [default: now]
    #[arg(long, value_name = "TIME", value_parser = parse_time_now)]
    pub to: Option<f64>,

    /// Length of the range that ends at --to: a number with s, m, h or d
    /// (90s, 15m, 1h, 7d)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub since: f64,

    /// Time between plotted points, as --since (10s, 5m) [default: the
    /// daemon's, about the range over 500]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub step: Option<f64>,

    /// Only this VM; repeat for more [default: every VM in the range]
    #[arg(long = "vm", value_name = "NAME")]
    pub vms: Vec<String>,

    /// The file to write; .png or .svg
    #[arg(short, long, value_name = "FILE", default_value = "gpuvisor-report.png")]
    pub output: PathBuf,

    /// Width of the image in pixels
    #[arg(long, value_name = "PX", default_value_t = 1200, value_parser = clap::value_parser!(u32).range(300..=10_000))]
    pub width: u32,

    /// Height of the image in pixels
    #[arg(long, value_name = "PX", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(300..=10_000))]
    pub height: u32,
}

/// Positive seconds from a duration as [`time::parse_duration`] reads it.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let secs = time::parse_duration(s).map_err(|e| e.to_string())?.as_secs_f64();
    if secs <= 0.0 {
        return Err(format!("expected a positive duration, got {s:?}"));
    }
    Ok(secs)
}

/// A point in time as [`time::parse_time`] reads it, `now` being now.
fn parse_time_now(s: &str) -> Result<f64, String> {
    time::parse_time(s, time::now_unix()).map_err(|e| e.to_string())
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: the report's format follows the file's extension, .png or .svg", .0.display())]
    UnsupportedFormat(PathBuf),
    #[error("the range is empty: --from ({from}) must come before --to ({to})")]
    EmptyRange { from: String, to: String },
    #[error("gpuvisord at {url} keeps no history (GET /v1/history answered 404 for every metric): {reason}")]
    NoHistory { url: String, reason: String },
    #[error(transparent)]
    Fetch(#[from] ClientError),
    #[error("the bundled font could not be loaded")]
    Font,
    #[error("drawing the report: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Encode(#[from] png::EncodingError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file formats `render` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// The format a file name asks for by its extension.
    pub fn from_path(path: &Path) -> Result<Format, ReportError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(ReportError::UnsupportedFormat(path.to_owned())),
        }
    }
}

/// One metric's answer, or why the daemon has none (it answered 404: a
/// daemon that does not keep this metric).
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    Series(HistoryResponse),
    Missing(String),
}

impl Fetched {
    fn series(&self) -> &[HistorySeries] {
        match self {
            Fetched::Series(r) => &r.series,
            Fetched::Missing(_) => &[],
        }
    }

    fn step(&self) -> Option<f64> {
        match self {
            Fetched::Series(r) if r.step > 0.0 => Some(r.step),
            _ => None,
        }
    }
}

/// Everything a report draws, fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportData {
    /// What the report is of, for its title (the daemon's URL).
    pub source: String,
    pub from: f64,
    pub to: f64,
    pub share: Fetched,
    pub share_configured: Fetched,
    pub resident: Fetched,
    pub evicted: Fetched,
    pub latency: Fetched,
}

/// Asks `client` for the report's five metrics over the range `args` gives,
/// keeping only the VMs it names.
pub fn fetch(client: &Client, args: &ReportArgs, now: f64) -> Result<ReportData, ReportError> {
    let to = args.to.unwrap_or(now);
    let from = args.from.unwrap_or(to - args.since);
    if from >= to {
        return Err(ReportError::EmptyRange { from: time::datetime(from), to: time::datetime(to) });
    }
    // With one VM the daemon can filter; with several it sends all and the
    // unwanted ones are dropped here.
    let vm = match args.vms.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let get = |metric: &str| -> Result<Fetched, ReportError> {
        let q = HistoryQuery {
            metric: metric.to_owned(),
            vm: vm.clone(),
            gpu: None,
            from: Some(from),
            to: Some(to),
            step: args.step,
        };
        match client.history(&q) {
            Ok(mut r) => {
                if !args.vms.is_empty() {
                    r.series.retain(|s| s.labels.get("vm").is_some_and(|v| args.vms.contains(v)));
                }
                Ok(Fetched::Series(r))
            }
            Err(e @ ClientError::Api { status: 404, .. }) => Ok(Fetched::Missing(e.to_string())),
            Err(e) => Err(e.into()),
        }
    };
    let data = ReportData {
        source: client.base_url().to_owned(),
        from,
        to,
        share: get(SHARE)?,
        share_configured: get(SHARE_CONFIGURED)?,
        resident: get(RESIDENT)?,
        evicted: get(EVICTED)?,
        latency: get(LATENCY)?,
    };
    let all = [&data.share, &data.share_configured, &data.resident, &data.evicted, &data.latency];
    if let [Fetched::Missing(reason), ..] = all {
        if all.iter().all(|f| matches!(f, Fetched::Missing(_))) {
            return Err(ReportError::NoHistory { url: data.source.clone(), reason: reason.clone() });
        }
    }
    Ok(data)
}

/// Fetches and writes the report `args` asks for; returns what was written,
/// for the command to print.
pub fn run(client: &Client, args: &ReportArgs) -> Result<String, ReportError> {
    let format = Format::from_path(&args.output)?;
    // Whole seconds: the range shows in the title to the minute anyway.
    let data = fetch(client, args, time::now_unix().floor())?;
    let bytes = render(&data, format, (args.width, args.height))?;
    std::fs::write(&args.output, bytes).map_err(|source| ReportError::Write { path: args.output.clone(), source })?;
    let vms = vm_names(&data).len();
    Ok(format!(
        "wrote {} ({}x{}, {vms} VM{}, {} to {} UTC)",
        args.output.display(),
        args.width,
        args.height,
        if vms == 1 { "" } else { "s" },
        time::date_minute(data.from),
        time::date_minute(data.to)
    ))
}

/// One colour per VM, the same in every panel: Tableau's ten, which stay
/// apart for most kinds of colour blindness.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Every VM with a series in `data`, in name order: the order of colours.
pub fn vm_names(data: &ReportData) -> Vec<String> {
    let all = [&data.share, &data.share_configured, &data.resident, &data.evicted, &data.latency];
    let names: BTreeSet<&String> = all.iter().flat_map(|f| f.series()).filter_map(|s| s.labels.get("vm")).collect();
    names.into_iter().cloned().collect()
}

/// The colour `vm` is drawn in.
pub fn colour_of(data: &ReportData, vm: &str) -> RGBColor {
    let i = vm_names(data).iter().position(|v| v == vm).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

/// One line of a panel.
struct Curve {
    vm: String,
    dashed: bool,
    /// Runs of points; a step with no sample splits the line, so that a gap
    /// (the VM was down, the daemon restarted) is not drawn over.
    runs: Vec<Vec<(f64, f64)>>,
}

/// One panel: its lines and how to label it.
struct Panel {
    title: String,
    y_desc: String,
    /// Fixed top of the y axis (shares: 100 %); else from the data.
    y_max: Option<f64>,
    curves: Vec<Curve>,
    /// Why a metric of the panel is absent, when it is.
    missing: Vec<String>,
}

/// Splits `points` where the time to the next point is over twice the step.
fn runs(points: &[(f64, f64)], step: Option<f64>, scale: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut last_t = f64::NEG_INFINITY;
    for &(t, v) in points.iter().filter(|(t, v)| t.is_finite() && v.is_finite()) {
        let gap = step.is_some_and(|s| t - last_t > 2.0 * s);
        match out.last_mut() {
            Some(run) if !gap => run.push((t, v * scale)),
            _ => out.push(vec![(t, v * scale)]),
        }
        last_t = t;
    }
    out
}

fn curves(f: &Fetched, dashed: bool, scale: f64, keep: impl Fn(&HistorySeries) -> bool) -> Vec<Curve> {
    f.series()
        .iter()
        .filter(|s| keep(s))
        .filter_map(|s| {
            let vm = s.labels.get("vm")?.clone();
            Some(Curve { vm, dashed, runs: runs(&s.points, f.step(), scale) })
        })
        .filter(|c| !c.runs.is_empty())
        .collect()
}

fn missing(fetched: &[&Fetched]) -> Vec<String> {
    fetched
        .iter()
        .filter_map(|f| match f {
            Fetched::Missing(why) => Some(why.clone()),
            Fetched::Series(_) => None,
        })
        .collect()
}

fn max_value(fetched: &[&Fetched]) -> f64 {
    fetched
        .iter()
        .flat_map(|f| f.series())
        .flat_map(|s| &s.points)
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

fn panels(data: &ReportData) -> [Panel; 3] {
    let all = |_: &HistorySeries| true;
    let quantile = |q: &'static str| move |s: &HistorySeries| s.labels.get("quantile").map(String::as_str) == Some(q);

    let mut share = curves(&data.share, false, 100.0, all);
    share.extend(curves(&data.share_configured, true, 100.0, all));

    // The largest binary unit the largest value reaches, so the ticks stay readable.
    let top = max_value(&[&data.resident, &data.evicted]);
    let (unit, scale) = [("GiB", 30), ("MiB", 20), ("KiB", 10)]
        .into_iter()
        .find(|&(_, shift)| top >= (1u64 << shift) as f64)
        .map_or(("bytes", 1.0), |(unit, shift)| (unit, 1.0 / (1u64 << shift) as f64));
    let mut memory = curves(&data.resident, false, scale, all);
    memory.extend(curves(&data.evicted, true, scale, all));

    let mut latency = curves(&data.latency, false, 1000.0, quantile("0.5"));
    latency.extend(curves(&data.latency, true, 1000.0, quantile("0.99")));

    [
        Panel {
            title: "GPU share per VM (solid: used, dashed: configured)".to_owned(),
            y_desc: "share of GPU time (%)".to_owned(),
            y_max: Some(100.0),
            curves: share,
            missing: missing(&[&data.share, &data.share_configured]),
        },
        Panel {
            title: "Device memory per VM (solid: on the GPU, dashed: evicted to host RAM)".to_owned(),
            y_desc: format!("memory ({unit})"),
            y_max: None,
            curves: memory,
            missing: missing(&[&data.resident, &data.evicted]),
        },
        Panel {
            title: "Request latency per VM (solid: p50, dashed: p99)".to_owned(),
            y_desc: "latency (ms)".to_owned(),
            y_max: None,
            curves: latency,
            missing: missing(&[&data.latency]),
        },
    ]
}

/// Times for the axis ticks: multiples of the first round step (10 s, 5 min,
/// 1 h, 1 day...) that puts at most `most` ticks on the range, so that they
/// land on round clock times rather than wherever plain numbers would.
fn time_ticks(from: f64, to: f64, most: usize) -> Vec<f64> {
    const STEPS: [f64; 21] = [
        1.0,
        2.0,
        5.0,
        10.0,
        15.0,
        30.0,
        60.0,
        120.0,
        300.0,
        600.0,
        900.0,
        1800.0,
        3600.0,
        7200.0,
        10_800.0,
        21_600.0,
        43_200.0,
        86_400.0,
        172_800.0,
        604_800.0,
        2_592_000.0,
    ];
    let span = to - from;
    let step = STEPS.into_iter().find(|s| span / s <= most as f64).unwrap_or(span / most as f64);
    let first = (from / step).ceil() as i64;
    let last = (to / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// The time axis: Unix seconds, mapped linearly, with its ticks and grid
/// lines on `time_ticks` and labelled by `tick_label`. (plotters' own f64
/// axis puts ticks on round numbers of seconds, which are odd clock times.)
struct TimeAxis {
    from: f64,
    to: f64,
    ticks: Vec<f64>,
}

impl TimeAxis {
    fn new(from: f64, to: f64) -> TimeAxis {
        TimeAxis { from, to, ticks: time_ticks(from, to, 8) }
    }
}

impl Ranged for TimeAxis {
    type ValueType = f64;
    type FormatOption = NoDefaultFormatting;

    fn range(&self) -> std::ops::Range<f64> {
        self.from..self.to
    }

    fn map(&self, t: &f64, (lo, hi): (i32, i32)) -> i32 {
        let f = (t - self.from) / (self.to - self.from);
        lo + (f * f64::from(hi - lo)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Only the labelled ticks get grid lines; finer ones would crowd
        // the time axis.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }
}

impl ValueFormatter<f64> for TimeAxis {
    fn format(t: &f64) -> String {
        time::clock(*t, false)
    }

    fn format_ext(&self, t: &f64) -> String {
        tick_label(*t, self.to - self.from)
    }
}

/// A time tick: the clock, with seconds on short ranges and the date on long ones.
fn tick_label(t: f64, span: f64) -> String {
    if span > 86_400.0 {
        time::month_day_clock(t)
    } else {
        time::clock(t, span <= 600.0)
    }
}

/// A y tick with as many decimals as the axis' scale needs.
fn axis_number(v: f64, top: f64) -> String {
    match top {
        t if t >= 10.0 => format!("{v:.0}"),
        t if t >= 1.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

const FONT: &str = "sans-serif";

/// Registers the bundled font under the family name the drawing asks for.
fn load_font() -> Result<(), ReportError> {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    ok.then_some(()).ok_or(ReportError::Font)
}

/// Draws `data` as a `format` file of `size` pixels and returns its bytes.
pub fn render(data: &ReportData, format: Format, size: (u32, u32)) -> Result<Vec<u8>, ReportError> {
    load_font()?;
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw(&root, data)?;
            }
            Ok(svg.into_bytes())
        }
        Format::Png => {
            let (w, h) = size;
            let mut pixels = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
                draw(&root, data)?;
            }
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, w, h);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&pixels)?;
            writer.finish()?;
            Ok(out)
        }
    }
}

fn draw_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Draw(e.to_string())
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, data: &ReportData) -> Result<(), ReportError> {
    root.fill(&WHITE).map_err(draw_err)?;
    let title =
        format!("gpuvisord at {}: {} to {} UTC", data.source, time::date_minute(data.from), time::date_minute(data.to));
    let body = root.titled(&title, (FONT, 22).into_font().style(FontStyle::Bold)).map_err(draw_err)?;
    let vms = vm_names(data);
    for (panel, area) in panels(data).iter().zip(body.split_evenly((3, 1))) {
        draw_panel(&area, panel, data, &vms)?;
    }
    root.present().map_err(draw_err)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    data: &ReportData,
    vms: &[String],
) -> Result<(), ReportError> {
    let (from, to) = (data.from, data.to);
    let highest = panel.curves.iter().flat_map(|c| c.runs.iter().flatten()).map(|p| p.1).fold(0.0, f64::max);
    let y_max = panel.y_max.unwrap_or(if highest > 0.0 { highest * 1.1 } else { 1.0 });
    let span = to - from;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 16))
        .margin(8)
        .margin_right(20)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(TimeAxis::new(from, to), 0.0..y_max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .y_labels(6)
        .y_label_formatter(&|v| axis_number(*v, y_max))
        .x_desc("time (UTC)")
        .y_desc(panel.y_desc.as_str())
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(draw_err)?;

    for curve in &panel.curves {
        let colour = PALETTE[vms.iter().position(|v| *v == curve.vm).unwrap_or(0) % PALETTE.len()];
        let style = colour.stroke_width(2);
        for run in &curve.runs {
            if curve.dashed {
                chart.draw_series(DashedLineSeries::new(run.iter().copied(), 8, 5, style)).map_err(draw_err)?;
            } else if run.len() == 1 {
                // A lone point has no line to show it.
                chart.draw_series(std::iter::once(Circle::new(run[0], 2, style.filled()))).map_err(draw_err)?;
            } else {
                chart.draw_series(LineSeries::new(run.iter().copied(), style)).map_err(draw_err)?;
            }
        }
    }

    let shown: BTreeSet<&str> = panel.curves.iter().map(|c| c.vm.as_str()).collect();
    if shown.is_empty() {
        let note = if panel.missing.is_empty() {
            "no data in range".to_owned()
        } else {
            format!("no data: {}", panel.missing.join("; "))
        };
        let style = (FONT, 18).into_font().color(&RGBColor(120, 120, 120)).pos(Pos::new(HPos::Center, VPos::Center));
        chart.plotting_area().draw(&Text::new(note, (from + span / 2.0, y_max / 2.0), style)).map_err(draw_err)?;
        return Ok(());
    }
    // One legend entry per VM (the line style is told by the panel title):
    // an empty series carries it, whatever lines the VM has.
    for vm in vms.iter().filter(|v| shown.contains(v.as_str())) {
        let colour = PALETTE[vms.iter().position(|v| v == vm).unwrap_or(0) % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(std::iter::empty::<(f64, f64)>(), colour.stroke_width(2)))
            .map_err(draw_err)?
            .label(vm.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FONT, 12))
        .draw()
        .map_err(draw_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const FROM: f64 = 1_764_636_000.0;
    const TO: f64 = FROM + 3600.0;
    const STEP: f64 = 60.0;

    fn response(metric: &str, series: Vec<HistorySeries>) -> Fetched {
        Fetched::Series(HistoryResponse {
            metric: metric.to_owned(),
            kind: "gauge".to_owned(),
            rate: false,
            from: FROM,
            to: TO,
            step: STEP,
            resolution: 1.0,
            series,
        })
    }

    fn series(vm: &str, extra: Option<(&str, &str)>, value: impl Fn(f64) -> f64) -> HistorySeries {
        let mut labels = BTreeMap::from([("vm".to_owned(), vm.to_owned()), ("gpu".to_owned(), "sim".to_owned())]);
        if let Some((k, v)) = extra {
            labels.insert(k.to_owned(), v.to_owned());
        }
        let points = (0..60).map(|i| (FROM + f64::from(i) * STEP, value(f64::from(i)))).collect();
        HistorySeries { labels, points }
    }

    /// Two VMs over an hour: one busy and growing, one light.
    fn two_vms() -> ReportData {
        let per_vm = |f: &dyn Fn(&str, f64) -> f64, extra: Option<(&str, &str)>| {
            ["alpha", "beta"].map(|vm| series(vm, extra, |i| f(vm, i))).to_vec()
        };
        let big = |vm: &str| vm == "alpha";
        ReportData {
            source: "http://127.0.0.1:9400".to_owned(),
            from: FROM,
            to: TO,
            share: response(SHARE, per_vm(&|vm, i| if big(vm) { 0.6 + 0.002 * i } else { 0.2 }, None)),
            share_configured: response(SHARE_CONFIGURED, per_vm(&|vm, _| if big(vm) { 0.7 } else { 0.3 }, None)),
            resident: response(RESIDENT, per_vm(&|vm, i| if big(vm) { 2e9 + 1e7 * i } else { 5e8 }, None)),
            evicted: response(EVICTED, per_vm(&|vm, i| if big(vm) { 0.0 } else { 1e6 * i }, None)),
            latency: response(LATENCY, {
                let mut s = per_vm(&|vm, _| if big(vm) { 0.002 } else { 0.001 }, Some(("quantile", "0.5")));
                s.extend(per_vm(&|vm, _| if big(vm) { 0.02 } else { 0.008 }, Some(("quantile", "0.99"))));
                s
            }),
        }
    }

    fn empty() -> ReportData {
        ReportData {
            source: "http://127.0.0.1:9400".to_owned(),
            from: FROM,
            to: TO,
            share: response(SHARE, vec![]),
            share_configured: response(SHARE_CONFIGURED, vec![]),
            resident: response(RESIDENT, vec![]),
            evicted: response(EVICTED, vec![]),
            latency: Fetched::Missing("no metric gpuvisor_vm_request_latency_seconds (HTTP 404)".to_owned()),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gpuvisor-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Renders into a file and reads it back, as a user would open it.
    fn written(data: &ReportData, name: &str, size: (u32, u32)) -> Vec<u8> {
        let path = scratch(name);
        let bytes = render(data, Format::from_path(&path).unwrap(), size).unwrap();
        std::fs::write(&path, bytes).unwrap();
        std::fs::read(&path).unwrap()
    }

    struct Image {
        width: usize,
        height: usize,
        rgb: Vec<u8>,
    }

    impl Image {
        fn decode(bytes: &[u8]) -> Image {
            let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
            let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut rgb).unwrap();
            assert_eq!(info.color_type, png::ColorType::Rgb);
            Image { width: info.width as usize, height: info.height as usize, rgb }
        }

        fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
            let i = (y * self.width + x) * 3;
            [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
        }

        /// Pixels in rows `ys` and columns `xs` that `f` picks.
        fn count(&self, xs: std::ops::Range<usize>, ys: std::ops::Range<usize>, f: impl Fn([u8; 3]) -> bool) -> usize {
            ys.flat_map(|y| xs.clone().map(move |x| (x, y))).filter(|&(x, y)| f(self.pixel(x, y))).count()
        }
    }

    /// The vertical band of panel `i` of three, below the title.
    fn band(img: &Image, i: usize) -> std::ops::Range<usize> {
        let top = 40;
        let h = (img.height - top) / 3;
        top + i * h..top + (i + 1) * h
    }

    #[test]
    fn a_png_has_the_asked_size_and_draws_in_every_panel() {
        let img = Image::decode(&written(&two_vms(), "size.png", (900, 700)));
        assert_eq!((img.width, img.height), (900, 700));
        assert_eq!(img.pixel(0, 0), [255, 255, 255], "white background");
        for i in 0..3 {
            let inked = img.count(0..img.width, band(&img, i), |p| p != [255, 255, 255]);
            assert!(inked > 2000, "panel {i} is almost blank ({inked} pixels)");
        }
    }

    #[test]
    fn each_vm_is_drawn_in_its_colour_in_every_panel() {
        let data = two_vms();
        let img = Image::decode(&written(&data, "colours.png", (1200, 1000)));
        for vm in ["alpha", "beta"] {
            let RGBColor(r, g, b) = colour_of(&data, vm);
            for i in 0..3 {
                // The left half: the legend sits in the upper right, so
                // colour there comes from the lines themselves.
                let n = img.count(0..img.width / 2, band(&img, i), |p| p == [r, g, b]);
                assert!(n > 100, "{vm} has {n} pixels of its colour in panel {i}");
            }
        }
        assert_ne!(colour_of(&data, "alpha"), colour_of(&data, "beta"));
    }

    /// The text of every `<text>` element, trimmed.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn an_svg_names_the_vms_and_the_panels() {
        let svg = String::from_utf8(written(&two_vms(), "named.svg", (1200, 1000))).unwrap();
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg:.200}");
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count(), "unbalanced text elements");
        let texts = svg_texts(&svg);
        let has = |t: &str| texts.iter().any(|x| x == t);
        // Each VM appears in the legend of each of the three panels.
        assert_eq!(texts.iter().filter(|t| *t == "alpha").count(), 3, "{texts:?}");
        assert_eq!(texts.iter().filter(|t| *t == "beta").count(), 3, "{texts:?}");
        for t in [
            "GPU share per VM (solid: used, dashed: configured)",
            "Device memory per VM (solid: on the GPU, dashed: evicted to host RAM)",
            "Request latency per VM (solid: p50, dashed: p99)",
            "share of GPU time (%)",
            "memory (GiB)",
            "latency (ms)",
            "time (UTC)",
        ] {
            assert!(has(t), "{t:?} missing from {texts:?}");
        }
        assert!(has("00:40") && has("01:00") && has("01:40"), "no clock ticks in {texts:?}");
    }

    #[test]
    fn an_empty_range_draws_a_valid_file_that_says_so() {
        let svg = String::from_utf8(written(&empty(), "empty.svg", (800, 600))).unwrap();
        let texts = svg_texts(&svg);
        assert_eq!(texts.iter().filter(|t| *t == "no data in range").count(), 2, "{texts:?}");
        assert!(
            texts.iter().any(|t| t.starts_with("no data: no metric gpuvisor_vm_request_latency_seconds")),
            "{texts:?}"
        );
        let img = Image::decode(&written(&empty(), "empty.png", (800, 600)));
        assert_eq!((img.width, img.height), (800, 600));
    }

    #[test]
    fn time_ticks_fall_on_round_clock_times() {
        // 00:40 to 01:40: every 10 minutes.
        let ticks = time_ticks(FROM, TO, 8);
        let labels: Vec<String> = ticks.iter().map(|t| tick_label(*t, TO - FROM)).collect();
        assert_eq!(labels, ["00:40", "00:50", "01:00", "01:10", "01:20", "01:30", "01:40"]);
        // A week: one tick a day, dated.
        let ticks = time_ticks(FROM, FROM + 7.0 * 86_400.0, 8);
        assert_eq!(ticks.len(), 7);
        assert_eq!(tick_label(ticks[0], 7.0 * 86_400.0), "12-03 00:00");
    }

    #[test]
    fn a_gap_in_the_data_breaks_the_line() {
        let points = [(0.0, 1.0), (60.0, 1.0), (300.0, 1.0), (360.0, 1.0)];
        let r = runs(&points, Some(60.0), 1.0);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], vec![(300.0, 1.0), (360.0, 1.0)]);
    }

    #[test]
    fn the_format_follows_the_extension_and_durations_take_units() {
        assert_eq!(Format::from_path(Path::new("a.PNG")).unwrap(), Format::Png);
        assert_eq!(Format::from_path(Path::new("dir/a.svg")).unwrap(), Format::Svg);
        let err = Format::from_path(Path::new("a.jpg")).unwrap_err();
        assert!(err.to_string().contains(".png or .svg"), "{err}");
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("15m"), Ok(900.0));
        assert_eq!(parse_duration("2d"), Ok(172_800.0));
        assert_eq!(parse_duration("1h30m"), Ok(5400.0));
        assert!(parse_duration("0").is_err() && parse_duration("-1h").is_err() && parse_duration("h").is_err());
    }
}
