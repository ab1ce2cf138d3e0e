//! The history of every series `GET /metrics` shows, and the alert log, in
//! `<state-dir>/history.sqlite` (WAL): a file of its own, so that a sample a
//! second never competes with settings changes in `gpuvisord.db`.
//!
//! Three levels, each with its retention: `raw` holds every sample; `minute`
//! and `hour` hold rollups of completed minutes and hours (count, sum, min,
//! max and last value, and for counters the increase). A counter's increase
//! is kept per sample (`d`, its rise since the previous sample, a drop being
//! a reset that counts the new value, as Prometheus counts it), so rates read
//! from any level add up to the same increase. Every call takes `now`, so
//! tests drive the clock.

use crate::alerts::Transition;
use crate::telemetry::Sample;
use gpuvisor_admin::alerts::{AlertState, AlertView};
use gpuvisor_admin::history::{
    HistoryMetric, HistoryMetrics, HistoryResponse, HistorySeries, HistoryTier, ResolvedQuery, DEFAULT_POINTS,
};
use gpuvisor_admin::metrics::Kind;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the history inside the state directory.
pub const HISTORY_FILE: &str = "history.sqlite";

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    metric TEXT NOT NULL,
    labels TEXT NOT NULL,          -- canonical JSON: keys sorted, no spaces
    kind TEXT NOT NULL,            -- counter, gauge or summary
    UNIQUE (metric, labels)
);
CREATE TABLE raw (
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,            -- Unix milliseconds
    v REAL NOT NULL,
    d REAL,                        -- counters: increase since the previous sample
    PRIMARY KEY (series, t)
) WITHOUT ROWID;
CREATE TABLE minute (
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,            -- start of the minute, Unix milliseconds
    n INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    last REAL NOT NULL,
    inc REAL,                      -- counters: increase over the minute
    PRIMARY KEY (series, t)
) WITHOUT ROWID;
CREATE TABLE hour (
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    n INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    last REAL NOT NULL,
    inc REAL,
    PRIMARY KEY (series, t)
) WITHOUT ROWID;
-- How far each rollup has got (Unix ms, exclusive).
CREATE TABLE rollup_done (tier TEXT PRIMARY KEY, t INTEGER NOT NULL);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL,
    summary TEXT,
    description TEXT,
    started_at REAL NOT NULL,
    fired_at REAL NOT NULL,
    resolved_at REAL
);
CREATE INDEX alerts_open ON alerts (rule, fingerprint) WHERE resolved_at IS NULL;
";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open the history database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error(
        "the history database {path} has schema version {found}, newer than the {SCHEMA_VERSION} this gpuvisord knows"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("history database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("no metric named {0:?} in the history (GET /v1/history/metrics lists them)")]
    UnknownMetric(String),
    #[error("cannot start the telemetry thread: {0}")]
    Thread(String),
}

/// How long each level is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw: Duration,
    pub minute: Duration,
    pub hour: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            raw: Duration::from_secs(6 * 3600),
            minute: Duration::from_secs(7 * 86_400),
            hour: Duration::from_secs(90 * 86_400),
        }
    }
}

impl Retention {
    /// Each level must reach at least one of its points back, and no finer
    /// level may be kept longer than a coarser one (a query reads the finest
    /// level that reaches back far enough).
    pub fn check(&self) -> Result<(), String> {
        let (raw, minute, hour) = (self.raw.as_secs_f64(), self.minute.as_secs_f64(), self.hour.as_secs_f64());
        if raw < 60.0 {
            return Err(format!("--history-raw-retention must be at least 1m, got {raw} s"));
        }
        if minute < 3600.0 || minute < raw {
            return Err(format!(
                "--history-minute-retention must be at least 1h and the raw retention, got {minute} s"
            ));
        }
        if hour < minute {
            return Err(format!("--history-hour-retention must be at least the minute retention, got {hour} s"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Raw,
    Minute,
    Hour,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "minute",
            Tier::Hour => "hour",
        }
    }

    /// Bucket size of a rollup, in ms.
    fn bucket_ms(self) -> i64 {
        match self {
            Tier::Raw => 0,
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
        }
    }
}

/// A series the writer has seen: its id and, for counters, its last value.
#[derive(Debug, Clone)]
struct SeriesState {
    id: i64,
    counter: bool,
    last: Option<f64>,
}

/// A stored series: its id, labels and kind.
type StoredSeries = (i64, BTreeMap<String, String>, String);

/// One connection to the history file.
pub struct History {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
    /// Seconds between raw samples (the sampler's interval).
    raw_resolution: f64,
    /// Series by `metric \x01 labels-json`, filled as they are first written.
    series: HashMap<String, SeriesState>,
    /// Whether this connection has recorded a tick: a counter series first
    /// seen after that started counting while we watched, so its first value
    /// is all increase; one seen on the first tick may have counted for long.
    recorded: bool,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish()
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    // A BTreeMap serializes with its keys sorted: one text per label set.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

/// The increase a counter sample brings: its rise, or after a drop (a
/// reset) its whole value.
fn counter_delta(previous: Option<f64>, value: f64) -> f64 {
    match previous {
        Some(p) if value >= p => value - p,
        Some(_) => value,
        None => 0.0,
    }
}

impl History {
    /// Opens (or creates) `<state_dir>/history.sqlite`.
    pub fn open(state_dir: &Path, retention: Retention, raw_resolution: f64) -> Result<History, HistoryError> {
        let path = state_dir.join(HISTORY_FILE);
        let open_err = |source| HistoryError::Open { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(open_err)?;
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err)?;
        // NORMAL: a crash may lose the last ticks, never corrupt the file;
        // no fsync per tick.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;").map_err(open_err)?;
        let history = History { conn, path, retention, raw_resolution, series: HashMap::new(), recorded: false };
        history.migrate()?;
        Ok(history)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sqlite { path: self.path.clone(), source }
    }

    fn migrate(&self) -> Result<(), HistoryError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        match version {
            0 => {
                let sql = format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;");
                self.conn.execute_batch(&sql).map_err(|e| self.err(e))?;
                tracing::info!(path = %self.path.display(), "created the telemetry history");
                Ok(())
            }
            SCHEMA_VERSION => Ok(()),
            found => Err(HistoryError::NewerSchema { path: self.path.clone(), found }),
        }
    }

    /// Writes one tick: every sample at `now_ms`, and the alerts that fired
    /// or resolved, in one transaction.
    pub fn record(&mut self, now_ms: i64, samples: &[Sample], alerts: &[Transition]) -> Result<(), HistoryError> {
        let result = self.record_tx(now_ms, samples, alerts);
        if result.is_err() {
            // The transaction rolled back: ids and last values cached during
            // it may not exist; they are read again as needed.
            self.series.clear();
        } else {
            self.recorded = true;
        }
        result
    }

    fn record_tx(&mut self, now_ms: i64, samples: &[Sample], alerts: &[Transition]) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let err = |source| HistoryError::Sqlite { path: path.clone(), source };
        let counts_from_zero = self.recorded;
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT OR REPLACE INTO raw (series, t, v, d) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            let mut key = String::new();
            for s in samples {
                if !s.value.is_finite() {
                    continue;
                }
                let labels = labels_json(&s.labels);
                key.clear();
                key.push_str(&s.metric);
                key.push('\x01');
                key.push_str(&labels);
                if !self.series.contains_key(&key) {
                    let state = series_state(&tx, s, &labels, counts_from_zero).map_err(err)?;
                    self.series.insert(key.clone(), state);
                }
                let Some(state) = self.series.get_mut(&key) else { continue };
                let d = state.counter.then(|| counter_delta(state.last, s.value));
                if state.counter {
                    state.last = Some(s.value);
                }
                insert.execute(params![state.id, now_ms, s.value, d]).map_err(err)?;
            }
            for t in alerts {
                match t {
                    Transition::Fired(a) => {
                        tx.prepare_cached(
                            "INSERT INTO alerts (rule, fingerprint, labels, value, summary, description, started_at,
                                 fired_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )
                        .and_then(|mut st| {
                            st.execute(params![
                                a.rule,
                                a.fingerprint,
                                labels_json(&a.labels),
                                a.value,
                                a.summary,
                                a.description,
                                a.started_at,
                                a.fired_at.unwrap_or(a.started_at)
                            ])
                        })
                        .map_err(err)?;
                    }
                    Transition::Resolved(a) => {
                        tx.prepare_cached(
                            "UPDATE alerts SET resolved_at = ?1, value = ?2
                             WHERE rule = ?3 AND fingerprint = ?4 AND resolved_at IS NULL",
                        )
                        .and_then(|mut st| {
                            st.execute(params![
                                a.resolved_at.unwrap_or(now_ms as f64 / 1e3),
                                a.value,
                                a.rule,
                                a.fingerprint
                            ])
                        })
                        .map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }

    /// Rolls completed minutes and hours up, then drops what each level
    /// keeps no longer (and series left with nothing, and resolved alerts as
    /// old as the hour level's retention).
    pub fn maintain(&mut self, now_ms: i64) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let err = |source| HistoryError::Sqlite { path: path.clone(), source };
        let retention = self.retention;
        let tx = self.conn.transaction().map_err(err)?;
        let ids: Vec<i64> = {
            let mut st = tx.prepare_cached("SELECT id FROM series").map_err(err)?;
            let rows = st.query_map([], |r| r.get(0)).map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        rollup(&tx, Tier::Minute, now_ms, &ids).map_err(err)?;
        rollup(&tx, Tier::Hour, now_ms, &ids).map_err(err)?;
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let mut gone = Vec::new();
        for &id in &ids {
            for (table, keep) in [("raw", retention.raw), ("minute", retention.minute), ("hour", retention.hour)] {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE series = ?1 AND t < ?2"))
                    .and_then(|mut st| st.execute(params![id, now_ms.saturating_sub(ms(keep))]))
                    .map_err(err)?;
            }
            let deleted = tx
                .prepare_cached(
                    "DELETE FROM series WHERE id = ?1
                       AND NOT EXISTS (SELECT 1 FROM raw WHERE series = ?1)
                       AND NOT EXISTS (SELECT 1 FROM minute WHERE series = ?1)
                       AND NOT EXISTS (SELECT 1 FROM hour WHERE series = ?1)",
                )
                .and_then(|mut st| st.execute([id]))
                .map_err(err)?;
            if deleted > 0 {
                gone.push(id);
            }
        }
        tx.execute(
            "DELETE FROM alerts WHERE resolved_at IS NOT NULL AND resolved_at < ?1",
            [(now_ms.saturating_sub(ms(retention.hour))) as f64 / 1e3],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        if !gone.is_empty() {
            self.series.retain(|_, s| !gone.contains(&s.id));
        }
        Ok(())
    }

    /// The alerts fired (all still open, and those resolved since `since`,
    /// Unix seconds), oldest first.
    pub fn alert_log(&self, since: f64) -> Result<Vec<AlertView>, HistoryError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT rule, fingerprint, labels, value, summary, description, started_at, fired_at, resolved_at
                 FROM alerts WHERE resolved_at IS NULL OR resolved_at >= ?1 ORDER BY fired_at, id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([since], |r| {
                let labels: String = r.get(2)?;
                let resolved_at: Option<f64> = r.get(8)?;
                Ok(AlertView {
                    rule: r.get(0)?,
                    state: if resolved_at.is_some() { AlertState::Resolved } else { AlertState::Firing },
                    fingerprint: r.get(1)?,
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    value: r.get(3)?,
                    summary: r.get(4)?,
                    description: r.get(5)?,
                    started_at: r.get(6)?,
                    fired_at: Some(r.get(7)?),
                    resolved_at,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The stored metrics and the levels.
    pub fn metrics(&self) -> Result<HistoryMetrics, HistoryError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT metric, min(kind), count(*) FROM series GROUP BY metric ORDER BY metric")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok(HistoryMetric { name: r.get(0)?, kind: r.get(1)?, series: r.get(2)? }))
            .map_err(|e| self.err(e))?;
        let metrics = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        let tier = |t: Tier, resolution: f64, keep: Duration| HistoryTier {
            name: t.name().to_owned(),
            resolution,
            retention: keep.as_secs_f64(),
        };
        Ok(HistoryMetrics {
            metrics,
            tiers: vec![
                tier(Tier::Raw, self.raw_resolution, self.retention.raw),
                tier(Tier::Minute, 60.0, self.retention.minute),
                tier(Tier::Hour, 3600.0, self.retention.hour),
            ],
        })
    }

    /// Answers a query at `now` (Unix seconds): the finest level that
    /// reaches back to `from` (then finer ones for what it has not rolled up
    /// yet), in steps of at least that level's resolution starting at `from`.
    pub fn query(&self, q: &ResolvedQuery, now: f64) -> Result<HistoryResponse, HistoryError> {
        let mut series = self.series_of(&q.metric)?;
        if series.is_empty() {
            return Err(HistoryError::UnknownMetric(q.metric.clone()));
        }
        let kind = Kind::parse(&series[0].2).unwrap_or(Kind::Gauge);
        let matches = |labels: &BTreeMap<String, String>, key: &str, want: &Option<String>| {
            want.as_ref().is_none_or(|w| labels.get(key) == Some(w))
        };
        series.retain(|(_, labels, _)| matches(labels, "vm", &q.vm) && matches(labels, "gpu", &q.gpu));

        let to_ms = |s: f64| (s * 1000.0).floor() as i64;
        let (now_ms, from_ms, to_ms) = (to_ms(now), to_ms(q.from), to_ms(q.to));
        let reaches = |keep: Duration| from_ms >= now_ms.saturating_sub(keep.as_millis() as i64);
        let (tier, resolution) = if reaches(self.retention.raw) {
            (Tier::Raw, self.raw_resolution)
        } else if reaches(self.retention.minute) {
            (Tier::Minute, 60.0)
        } else {
            (Tier::Hour, 3600.0)
        };
        let step = match q.step {
            Some(s) => s.max(resolution),
            None => ((q.to - q.from) / DEFAULT_POINTS).max(resolution),
        };
        // The chosen level up to where it is rolled up, then the finer ones.
        let mut segments = Vec::new();
        let mut lower = from_ms;
        let chain: &[Tier] = match tier {
            Tier::Hour => &[Tier::Hour, Tier::Minute, Tier::Raw],
            Tier::Minute => &[Tier::Minute, Tier::Raw],
            Tier::Raw => &[Tier::Raw],
        };
        for &t in chain {
            let upper = match t {
                Tier::Raw => to_ms + 1,
                rolled => (to_ms + 1).min(self.rolled_up_to(rolled)?),
            };
            if upper > lower {
                segments.push((t, lower, upper));
                lower = upper;
            }
        }

        let counter = kind == Kind::Counter;
        let mut out = Vec::new();
        for (id, labels, _) in series {
            // Per step: samples, sum of values, increase.
            let mut steps: BTreeMap<i64, (i64, f64, f64)> = BTreeMap::new();
            for &(t, lo, hi) in &segments {
                self.read_rows(t, id, lo, hi, |t_ms, n, sum, inc| {
                    let idx = ((t_ms as f64 / 1e3 - q.from) / step).floor() as i64;
                    let e = steps.entry(idx).or_insert((0, 0.0, 0.0));
                    e.0 += n;
                    e.1 += sum;
                    e.2 += inc.unwrap_or(0.0);
                })?;
            }
            let points: Vec<(f64, f64)> = steps
                .into_iter()
                .filter(|(_, (n, _, _))| *n > 0)
                .map(|(idx, (n, sum, inc))| {
                    let t = q.from + idx as f64 * step;
                    (t, if counter { inc / step } else { sum / n as f64 })
                })
                .collect();
            if !points.is_empty() {
                out.push(HistorySeries { labels, points });
            }
        }
        Ok(HistoryResponse {
            metric: q.metric.clone(),
            kind: kind.as_str().to_owned(),
            rate: counter,
            from: q.from,
            to: q.to,
            step,
            resolution,
            series: out,
        })
    }

    /// The series of `metric`: id, labels, kind; sorted by labels.
    fn series_of(&self, metric: &str) -> Result<Vec<StoredSeries>, HistoryError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, labels, kind FROM series WHERE metric = ?1 ORDER BY labels")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([metric], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, labels, kind) = row.map_err(|e| self.err(e))?;
            match serde_json::from_str(&labels) {
                Ok(labels) => out.push((id, labels, kind)),
                Err(e) => tracing::warn!(metric, labels, "stored labels do not decode ({e}); series skipped"),
            }
        }
        Ok(out)
    }

    /// Where `tier`'s rollup has got to (Unix ms, exclusive); 0 before its first.
    fn rolled_up_to(&self, tier: Tier) -> Result<i64, HistoryError> {
        self.conn
            .query_row("SELECT t FROM rollup_done WHERE tier = ?1", [tier.name()], |r| r.get(0))
            .optional()
            .map(|t| t.unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Calls `each(t_ms, samples, sum, increase)` for `series`' rows of
    /// `tier` in `[lo, hi)`.
    fn read_rows(
        &self,
        tier: Tier,
        series: i64,
        lo: i64,
        hi: i64,
        mut each: impl FnMut(i64, i64, f64, Option<f64>),
    ) -> Result<(), HistoryError> {
        let sql = match tier {
            Tier::Raw => "SELECT t, 1, v, d FROM raw WHERE series = ?1 AND t >= ?2 AND t < ?3",
            Tier::Minute => "SELECT t, n, sum, inc FROM minute WHERE series = ?1 AND t >= ?2 AND t < ?3",
            Tier::Hour => "SELECT t, n, sum, inc FROM hour WHERE series = ?1 AND t >= ?2 AND t < ?3",
        };
        let mut st = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let mut rows = st.query(params![series, lo, hi]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let row = (|| Ok::<_, rusqlite::Error>((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))();
            let (t, n, sum, inc) = row.map_err(|e| self.err(e))?;
            each(t, n, sum, inc);
        }
        Ok(())
    }
}

/// The id of a sample's series, created if new, with the counter's last
/// stored value (none for a new series: its first value then counts from 0
/// if `counts_from_zero`, else not at all).
fn series_state(
    tx: &Transaction<'_>,
    s: &Sample,
    labels: &str,
    counts_from_zero: bool,
) -> Result<SeriesState, rusqlite::Error> {
    let counter = s.kind == Kind::Counter;
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM series WHERE metric = ?1 AND labels = ?2")?
        .query_row([&s.metric, labels], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        let last = if counter {
            tx.prepare_cached("SELECT v FROM raw WHERE series = ?1 ORDER BY t DESC LIMIT 1")?
                .query_row([id], |r| r.get(0))
                .optional()?
        } else {
            None
        };
        return Ok(SeriesState { id, counter, last });
    }
    tx.prepare_cached("INSERT INTO series (metric, labels, kind) VALUES (?1, ?2, ?3)")?.execute(params![
        s.metric,
        labels,
        s.kind.as_str()
    ])?;
    let last = (counter && counts_from_zero).then_some(0.0);
    Ok(SeriesState { id: tx.last_insert_rowid(), counter, last })
}

/// Rolls `tier`'s completed buckets up from the level below, from where it
/// got to last time up to the start of the current bucket.
fn rollup(tx: &Transaction<'_>, tier: Tier, now_ms: i64, ids: &[i64]) -> Result<(), rusqlite::Error> {
    let size = tier.bucket_ms();
    let end = now_ms.div_euclid(size) * size;
    let start: i64 =
        tx.query_row("SELECT t FROM rollup_done WHERE tier = ?1", [tier.name()], |r| r.get(0)).optional()?.unwrap_or(0);
    if end <= start {
        return Ok(());
    }
    // The bucket of a row is t / size * size; `last` is the value of the
    // bucket's latest row.
    let sql = match tier {
        Tier::Minute => {
            "INSERT OR REPLACE INTO minute (series, t, n, sum, min, max, last, inc)
             SELECT ?1, t / ?4 * ?4, count(*), sum(v), min(v), max(v),
                    (SELECT r.v FROM raw r WHERE r.series = ?1 AND r.t >= raw.t / ?4 * ?4
                        AND r.t < raw.t / ?4 * ?4 + ?4 ORDER BY r.t DESC LIMIT 1),
                    sum(d)
             FROM raw WHERE series = ?1 AND t >= ?2 AND t < ?3 GROUP BY t / ?4"
        }
        Tier::Hour => {
            "INSERT OR REPLACE INTO hour (series, t, n, sum, min, max, last, inc)
             SELECT ?1, t / ?4 * ?4, sum(n), sum(sum), min(min), max(max),
                    (SELECT m.last FROM minute m WHERE m.series = ?1 AND m.t >= minute.t / ?4 * ?4
                        AND m.t < minute.t / ?4 * ?4 + ?4 ORDER BY m.t DESC LIMIT 1),
                    sum(inc)
             FROM minute WHERE series = ?1 AND t >= ?2 AND t < ?3 GROUP BY t / ?4"
        }
        Tier::Raw => return Ok(()),
    };
    let mut st = tx.prepare_cached(sql)?;
    for &id in ids {
        st.execute(params![id, start, end, size])?;
    }
    tx.execute(
        "INSERT INTO rollup_done (tier, t) VALUES (?1, ?2) ON CONFLICT(tier) DO UPDATE SET t = ?2",
        params![tier.name(), end],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    /// A round start time: 2025-05-01T00:00:00Z, in ms.
    const T0: i64 = 1_746_057_600_000;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gpuvisord-history-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn retention(raw_h: u64, minute_h: u64, hour_h: u64) -> Retention {
        Retention {
            raw: Duration::from_secs(raw_h * 3600),
            minute: Duration::from_secs(minute_h * 3600),
            hour: Duration::from_secs(hour_h * 3600),
        }
    }

    fn gauge(vm: &str, v: f64) -> Sample {
        Sample::new("g", Kind::Gauge, &[("vm", vm), ("gpu", "sim")], v)
    }

    fn counter(v: f64) -> Sample {
        Sample::new("c_total", Kind::Counter, &[("vm", "a")], v)
    }

    fn query(h: &History, metric: &str, from_ms: i64, to_ms: i64, step: Option<f64>, now_ms: i64) -> HistoryResponse {
        let q = ResolvedQuery {
            metric: metric.into(),
            vm: None,
            gpu: None,
            from: from_ms as f64 / 1e3,
            to: to_ms as f64 / 1e3,
            step,
        };
        h.query(&q, now_ms as f64 / 1e3).unwrap()
    }

    /// The gauge written at second `i`: varies within each minute.
    fn gauge_at(i: i64) -> f64 {
        (i % 7) as f64 + (i % 60) as f64 / 10.0
    }

    /// A counter rising 2 per second that resets to 0 at second `reset`.
    fn counter_at(i: i64, reset: i64) -> f64 {
        if i < reset {
            (2 * i) as f64
        } else {
            (2 * (i - reset)) as f64
        }
    }

    /// Three hours of one sample a second, maintained each minute as the
    /// sampler does; returns the history and the time of the last sample.
    fn three_hours(dir: &Path, keep: Retention, reset: i64) -> (History, i64) {
        let mut h = History::open(dir, keep, 1.0).unwrap();
        let mut now = T0;
        for i in 0..3 * 3600 {
            now = T0 + i * 1000;
            h.record(now, &[gauge("a", gauge_at(i)), counter(counter_at(i, reset))], &[]).unwrap();
            if i % 60 == 59 {
                h.maintain(now).unwrap();
            }
        }
        (h, now)
    }

    #[test]
    fn raw_samples_older_than_their_retention_are_pruned_and_their_minutes_kept() {
        let dir = scratch("prune");
        let (mut h, now) = three_hours(&dir, retention(1, 24, 48), i64::MAX);
        h.maintain(now).unwrap();
        let (oldest, rows): (i64, i64) =
            h.conn.query_row("SELECT min(t), count(*) FROM raw", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert!(oldest >= now - H, "a raw sample {} s older than the retention survived", (now - H - oldest) / 1000);
        // Two series, an hour of them (the hour boundary itself included).
        assert_eq!(rows, 2 * 3601);
        let minutes: i64 = h.conn.query_row("SELECT count(*) FROM minute WHERE series = 1", [], |r| r.get(0)).unwrap();
        assert_eq!(minutes, 179, "every completed minute of the three hours is rolled up");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn minute_means_equal_the_means_of_what_was_written() {
        let dir = scratch("means");
        let (h, now) = three_hours(&dir, retention(1, 24, 48), i64::MAX);
        // From the start: past the raw retention, so the minute level answers.
        let r = query(&h, "g", T0, T0 + 2 * H, Some(60.0), now);
        assert_eq!((r.resolution, r.step, r.rate), (60.0, 60.0, false));
        let points = &r.series[0].points;
        assert_eq!(points.len(), 121);
        for (k, &(t, mean)) in points.iter().take(120).enumerate() {
            let written: Vec<f64> = (k as i64 * 60..(k as i64 + 1) * 60).map(gauge_at).collect();
            let want = written.iter().sum::<f64>() / written.len() as f64;
            assert_eq!(t, (T0 / 1000 + k as i64 * 60) as f64);
            assert!((mean - want).abs() < 1e-9, "minute {k}: {mean} != {want}");
        }
        let (min, max): (f64, f64) = h
            .conn
            .query_row("SELECT min, max FROM minute WHERE series = 1 AND t = ?1", [T0], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((min, max), (0.0, 11.5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn counter_rates_agree_across_levels_and_a_reset_counts_the_new_value() {
        let dir = scratch("rates");
        let reset = 3600 + 1800; // halfway through the second hour
        let (mut h, now) = three_hours(&dir, retention(4, 24, 48), reset);
        // All raw still: rates from every sample.
        let from = T0 + H;
        let raw = query(&h, "c_total", from, from + H - 1000, Some(600.0), now);
        assert_eq!(raw.resolution, 1.0);
        // The same range once the raw samples are gone: from the minutes.
        let later = now + 3 * H;
        h.maintain(later).unwrap();
        let minutes = query(&h, "c_total", from, from + H - 1000, Some(600.0), later);
        assert_eq!(minutes.resolution, 60.0);
        assert_eq!(raw.series[0].points, minutes.series[0].points);
        // 2 per second, except at the reset: the drop from 10798 to 0 counts 0.
        for &(t, rate) in &raw.series[0].points {
            let has_reset = ((t * 1000.0) as i64..(t * 1000.0) as i64 + 600_000).contains(&(T0 + reset * 1000));
            let want = if has_reset { 2.0 * 599.0 / 600.0 } else { 2.0 };
            assert!((rate - want).abs() < 1e-9, "at {t}: {rate} != {want}");
        }
        // And from the hours, once the minutes are gone too.
        let much_later = now + 30 * H;
        h.maintain(much_later).unwrap();
        let hours = query(&h, "c_total", T0, T0 + 3 * H, Some(3600.0), much_later);
        assert_eq!(hours.resolution, 3600.0);
        let increases: Vec<f64> = hours.series[0].points.iter().map(|p| p.1 * 3600.0).collect();
        // The first sample has nothing before it; the reset loses one rise.
        assert_eq!(increases, vec![2.0 * 3599.0, 2.0 * 3599.0, 2.0 * 3600.0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_query_averages_gauges_over_each_step_and_filters_by_vm() {
        let dir = scratch("steps");
        let mut h = History::open(&dir, Retention::default(), 1.0).unwrap();
        for i in 0..10 {
            h.record(T0 + i * 1000, &[gauge("a", i as f64), gauge("b", 100.0)], &[]).unwrap();
        }
        let now = T0 + 10_000;
        let r = query(&h, "g", T0, T0 + 9000, Some(5.0), now);
        assert_eq!(r.series.len(), 2);
        let a = r.series.iter().find(|s| s.labels["vm"] == "a").unwrap();
        let t0 = T0 as f64 / 1e3;
        assert_eq!(a.points, vec![(t0, 2.0), (t0 + 5.0, 7.0)]);
        let q = ResolvedQuery {
            metric: "g".into(),
            vm: Some("b".into()),
            gpu: Some("sim".into()),
            from: t0,
            to: t0 + 9.0,
            step: Some(0.1),
        };
        let b = h.query(&q, now as f64 / 1e3).unwrap();
        // A step finer than the samples is raised to their interval.
        assert_eq!((b.series.len(), b.step, b.series[0].points.len()), (1, 1.0, 10));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unknown_metric_is_an_error_naming_it() {
        let dir = scratch("unknown");
        let h = History::open(&dir, Retention::default(), 1.0).unwrap();
        let q = ResolvedQuery { metric: "nope".into(), vm: None, gpu: None, from: 0.0, to: 1.0, step: None };
        let e = h.query(&q, 1.0).unwrap_err();
        assert!(matches!(&e, HistoryError::UnknownMetric(m) if m == "nope"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn counters_continue_across_a_reopening_and_new_series_count_from_zero() {
        let dir = scratch("reopen");
        {
            let mut h = History::open(&dir, Retention::default(), 1.0).unwrap();
            h.record(T0, &[counter(100.0)], &[]).unwrap();
            h.record(T0 + 1000, &[counter(103.0)], &[]).unwrap();
        }
        let mut h = History::open(&dir, Retention::default(), 1.0).unwrap();
        let xid = |v| Sample::new("x_total", Kind::Counter, &[("xid", "13")], v);
        h.record(T0 + 2000, &[counter(110.0)], &[]).unwrap();
        // A series that appears once the history is running started at 0.
        h.record(T0 + 3000, &[counter(111.0), xid(1.0)], &[]).unwrap();
        let r = query(&h, "c_total", T0, T0 + 3000, Some(1.0), T0 + 3000);
        let rates: Vec<f64> = r.series[0].points.iter().map(|p| p.1).collect();
        assert_eq!(rates, vec![0.0, 3.0, 7.0, 1.0]);
        let r = query(&h, "x_total", T0, T0 + 3000, Some(1.0), T0 + 3000);
        assert_eq!(r.series[0].points, vec![(T0 as f64 / 1e3 + 3.0, 1.0)]);
        let m = h.metrics().unwrap();
        let names: Vec<(&str, &str, u64)> =
            m.metrics.iter().map(|m| (m.name.as_str(), m.kind.as_str(), m.series)).collect();
        assert_eq!(names, vec![("c_total", "counter", 1), ("x_total", "counter", 1)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_alert_log_keeps_fired_and_resolved_times_across_a_reopening() {
        let dir = scratch("alerts");
        let alert = AlertView {
            rule: "Hot".into(),
            state: AlertState::Firing,
            labels: BTreeMap::from([("vm".to_owned(), "a".to_owned())]),
            value: Some(0.5),
            started_at: 100.0,
            fired_at: Some(130.0),
            resolved_at: None,
            summary: Some("a is hot".into()),
            description: None,
            fingerprint: "f".into(),
        };
        {
            let mut h = History::open(&dir, Retention::default(), 1.0).unwrap();
            h.record(130_000, &[], &[Transition::Fired(alert.clone())]).unwrap();
            let open = History::open(&dir, Retention::default(), 1.0).unwrap().alert_log(0.0).unwrap();
            assert_eq!(open, vec![alert.clone()]);
            let resolved =
                AlertView { state: AlertState::Resolved, resolved_at: Some(160.0), value: Some(0.25), ..alert.clone() };
            h.record(160_000, &[], &[Transition::Resolved(resolved)]).unwrap();
        }
        let log = History::open(&dir, Retention::default(), 1.0).unwrap().alert_log(0.0).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].state, log[0].fired_at, log[0].resolved_at),
            (AlertState::Resolved, Some(130.0), Some(160.0))
        );
        assert_eq!(log[0].summary.as_deref(), Some("a is hot"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retentions_must_nest() {
        assert!(Retention::default().check().is_ok());
        assert!(retention(8, 4, 48).check().is_err());
        assert!(retention(1, 24, 12).check().is_err());
        assert!(Retention { raw: Duration::from_secs(30), ..Retention::default() }.check().is_err());
    }
}
