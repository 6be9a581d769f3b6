//! `stats --by` and `report --by`: the latency table grouped by what the
//! user asks (opcode, file, process, command, mount, or two of them)
//! instead of by (mount, opcode), sorted the way `top`-style tools sort
//! (total time by default) and cut to `--top N` rows.
//!
//! Rows are keyed by the values a request carries (or, in-kernel, by a
//! (mount, opcode) cell), so their number grows with the workload: a run
//! over a million files would grow a million rows. The table therefore
//! keeps at most `--max-rows` distinct rows; requests of any further key
//! are counted in one `(other)` row, which is always shown, so nothing is
//! dropped unsaid. Each row's latencies are sparse log-linear histograms
//! (the kernel's 16 buckets per power of two: 6%), a few hundred bytes for
//! a row that saw a few latencies, where the whole-run table's 256 KiB HDR
//! histograms per stage would make 10 000 rows gigabytes.

use crate::kernel::hooks::Transport;
use crate::pipeline::FastMap;
use std::{fmt::Write as _, io::Write, sync::Arc};

use anyhow::Result;
use fusetrace_common::{bucket_bounds, latency_bucket};

use crate::{
    output::{
        export::Clock,
        print::{Format, period_heading, write_summary},
    },
    pipeline::{
        connections::ConnectionTable,
        lifecycle::{Comm, LatencyStage, RequestLifecycle},
        opcode,
        sink::Sink,
        stats::{StageSummary, Stats},
        summary::RunSummary,
    },
};

/// What a row can be keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Op,
    Path,
    Pid,
    Comm,
    Mount,
    /// How the daemon took the request: `/dev/fuse` or `io_uring`.
    Transport,
    /// io_uring: the ring queue (one per CPU) that carried it.
    Queue,
}

impl Key {
    const ALL: [Key; 7] = [
        Key::Op,
        Key::Path,
        Key::Pid,
        Key::Comm,
        Key::Mount,
        Key::Transport,
        Key::Queue,
    ];

    /// Its name in `--by` and in JSON rows (the outputs' names: README,
    /// "Output names").
    pub fn name(self) -> &'static str {
        match self {
            Key::Op => "opcode",
            Key::Path => "path",
            Key::Pid => "pid",
            Key::Comm => "comm",
            Key::Mount => "mount",
            Key::Transport => "transport",
            Key::Queue => "ring_queue",
        }
    }

    /// The shorter names `--by` also takes.
    fn alias(self) -> Option<&'static str> {
        match self {
            Key::Op => Some("op"),
            Key::Queue => Some("queue"),
            _ => None,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Key::Op => "OP",
            Key::Path => "PATH",
            Key::Pid => "PID",
            Key::Comm => "COMM",
            Key::Mount => "MOUNT",
            Key::Transport => "TRANSPORT",
            Key::Queue => "QUEUE",
        }
    }
}

/// The keys of `--by`, in the order their columns are shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys(pub Vec<Key>);

impl Keys {
    /// `op`, `comm,op`, `mount,op`...: known keys, each at most once.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let choices = || {
            Key::ALL
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut keys = Vec::new();
        for word in text.split(',').map(str::trim) {
            let Some(key) = Key::ALL
                .iter()
                .find(|k| k.name() == word || k.alias() == Some(word))
            else {
                return Err(format!(
                    "unknown key '{word}': choose from {} (e.g. --by comm,opcode)",
                    choices()
                ));
            };
            if keys.contains(key) {
                return Err(format!("key '{word}' given twice"));
            }
            keys.push(*key);
        }
        Ok(Keys(keys))
    }

    /// The kernel counts per (mount, opcode) only: other keys need every
    /// request's events.
    pub fn in_kernel(&self) -> bool {
        self.0.iter().all(|k| matches!(k, Key::Op | Key::Mount))
    }

    fn has(&self, key: Key) -> bool {
        self.0.contains(&key)
    }
}

impl std::fmt::Display for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.0.iter().map(|k| k.name()).collect();
        f.write_str(&names.join(","))
    }
}

/// The order of the rows, largest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SortBy {
    /// Number of requests.
    Count,
    /// Time spent in the row's requests, summed (send to end).
    #[default]
    Total,
    /// 99th percentile of the whole latency.
    P99,
    /// Longest request.
    Max,
}

/// `--by`, `--top`, `--sort`, `--max-rows`: shared by `stats` and `report`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ByOpts {
    /// Group the table by these keys instead of (mount, opcode): op,
    /// path, pid (with its comm), comm, mount, transport (/dev/fuse or
    /// io_uring), queue (the io_uring queue), or several, e.g. `path`,
    /// `comm,op`, `mount,op`, `transport,queue`. Keys other than op and
    /// mount need every request's events (as --from-events).
    #[arg(long, value_name = "KEY[,KEY]", value_parser = Keys::parse, conflicts_with_all = ["hist", "csv"])]
    pub by: Option<Keys>,
    /// Only the first N rows in --sort order (the rest are counted in a
    /// closing line).
    #[arg(long, value_name = "N", conflicts_with_all = ["hist", "csv"])]
    pub top: Option<usize>,
    /// Order of the rows of --by/--top, largest first [default: total].
    #[arg(long, value_enum, conflicts_with_all = ["hist", "csv"])]
    pub sort: Option<SortBy>,
    /// With --by: distinct rows kept at most; requests of further keys are
    /// counted in one "(other)" row, so memory stays bounded.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows: u64,
}

/// How a grouped table is built and shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    pub keys: Keys,
    pub top: Option<usize>,
    pub sort: SortBy,
    pub max_rows: usize,
    /// Queue, daemon and completion rows under each row's total.
    pub stages: bool,
}

impl ByOpts {
    /// The grouping asked for: `None` without --by, --top and --sort (the
    /// per-(mount, opcode) table); --top or --sort alone group by mount,op.
    pub fn grouping(&self, stages: bool) -> Option<Grouping> {
        if self.by.is_none() && self.top.is_none() && self.sort.is_none() {
            return None;
        }
        Some(Grouping {
            keys: self.by.clone().unwrap_or(Keys(vec![Key::Mount, Key::Op])),
            top: self.top,
            sort: self.sort.unwrap_or_default(),
            max_rows: self.max_rows.try_into().unwrap_or(usize::MAX),
            stages,
        })
    }
}

/// One latency stage of one row: counts per log-linear bucket (sorted by
/// bucket, only the buckets seen), with the exact sum and maximum.
#[derive(Debug, Clone, Default)]
struct Cells {
    buckets: Vec<(u16, u64)>,
    samples: u64,
    sum_ns: u64,
    max_ns: u64,
}

impl Cells {
    fn add_to_bucket(&mut self, bucket: u16, n: u64) {
        match self.buckets.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(i) => self.buckets[i].1 += n,
            Err(i) => self.buckets.insert(i, (bucket, n)),
        }
        self.samples += n;
    }

    fn record_n(&mut self, ns: u64, n: u64) {
        self.add_to_bucket(latency_bucket(ns), n);
        self.sum_ns = self.sum_ns.saturating_add(ns.saturating_mul(n));
        self.max_ns = self.max_ns.max(ns);
    }

    fn merge(&mut self, other: &Cells) {
        for (bucket, n) in &other.buckets {
            self.add_to_bucket(*bucket, *n);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The bucket's upper bound (at most the maximum seen) holding the
    /// `q` quantile, as HDR histograms report their highest equivalent.
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.samples as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return bucket_bounds(*b).1.min(self.max_ns);
            }
        }
        self.max_ns
    }

    fn summary(&self, stage: LatencyStage) -> StageSummary {
        StageSummary {
            stage,
            samples: self.samples,
            p50_ns: self.quantile(0.50),
            p90_ns: self.quantile(0.90),
            p99_ns: self.quantile(0.99),
            max_ns: self.max_ns,
        }
    }
}

/// The requests of one row.
#[derive(Debug, Clone, Default)]
struct Row {
    count: u64,
    errors: u64,
    /// The requester's command last seen (shown beside a pid).
    comm: Option<Comm>,
    /// Indexed as [`LatencyStage::ALL`].
    stages: [Cells; 4],
}

impl Row {
    fn total(&self) -> &Cells {
        &self.stages[3]
    }

    fn metric(&self, sort: SortBy) -> u64 {
        match sort {
            SortBy::Count => self.count,
            SortBy::Total => self.total().sum_ns,
            SortBy::P99 => self.total().quantile(0.99),
            SortBy::Max => self.total().max_ns,
        }
    }
}

/// Names a connection (its mount point).
pub type Name<'a> = &'a mut dyn FnMut(u32) -> String;

/// One row as the live view shows it: its keys' texts and the whole
/// latency's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// In [`Grouped::columns`] order (a pid with its comm).
    pub keys: Vec<String>,
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl GroupRow {
    fn of(keys: Vec<String>, row: &Row) -> GroupRow {
        let t = row.total();
        GroupRow {
            keys,
            count: row.count,
            errors: row.errors,
            total_ns: t.sum_ns,
            p50_ns: t.quantile(0.5),
            p99_ns: t.quantile(0.99),
            max_ns: t.max_ns,
        }
    }
}

/// One key's value in a row: numbers and pointers, named when printed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Part {
    Op(u32),
    Mount(u32),
    Pid(Option<u32>),
    Comm(Option<Comm>),
    Transport(Option<Transport>),
    Queue(Option<u16>),
    /// The path when known, otherwise the node on its connection.
    Path {
        path: Option<Arc<str>>,
        connection: u32,
        node: Option<u64>,
    },
}

/// Latency statistics grouped by [`Keys`], at most `max_rows` rows.
#[derive(Debug, Clone)]
pub struct Grouped {
    keys: Keys,
    max_rows: usize,
    /// Hashed, not ordered: `top` records every request into two of
    /// these, and a B-tree's key comparisons (paths among them) were a
    /// sixth of its CPU on the metadata storm. Rows are ordered when shown.
    rows: FastMap<Vec<Part>, Row>,
    /// Requests whose key found the table full.
    other: Row,
    /// The key being looked up, its buffer reused: a request allocates
    /// only when it opens a new row.
    scratch: Vec<Part>,
    /// Whether the queue, daemon and completion stages are counted too
    /// (not where only totals are shown: `top`'s tables).
    stages: bool,
}

/// A row as printed: the key columns' texts, then its numbers.
#[derive(Debug)]
struct Shown<'a> {
    cells: Vec<(Key, String)>,
    json: serde_json::Map<String, serde_json::Value>,
    row: &'a Row,
}

impl Grouped {
    pub fn new(keys: Keys, max_rows: usize) -> Grouped {
        Grouped {
            keys,
            max_rows,
            rows: FastMap::default(),
            other: Row::default(),
            scratch: Vec::new(),
            stages: true,
        }
    }

    /// Counts only the total stage: each stage costs a bucket search per
    /// request and row, and [`GroupRow`]s show only totals.
    pub fn totals_only(mut self) -> Grouped {
        self.stages = false;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.other.count == 0
    }

    fn row(&mut self, key: &[Part]) -> &mut Row {
        if !self.rows.contains_key(key) {
            if self.rows.len() >= self.max_rows {
                return &mut self.other;
            }
            return self.rows.entry(key.to_vec()).or_default();
        }
        self.rows.get_mut(key).expect("the row was found above")
    }

    /// One finished request (event pipeline, recordings).
    pub fn record(&mut self, rec: &RequestLifecycle) {
        let mut key = std::mem::take(&mut self.scratch);
        key.clear();
        key.extend(self.keys.0.iter().map(|k| match k {
            Key::Op => Part::Op(rec.opcode),
            Key::Mount => Part::Mount(rec.connection),
            Key::Pid => Part::Pid(rec.requester_pid.or(rec.requester_tid)),
            Key::Comm => Part::Comm(rec.requester_comm),
            Key::Transport => Part::Transport(rec.transport),
            Key::Queue => Part::Queue(rec.ring_queue),
            Key::Path => Part::Path {
                connection: rec.connection,
                node: rec.nodeid.filter(|_| rec.path.is_none()),
                path: rec.path.clone(),
            },
        }));
        // Every stage, or the total alone (the last).
        let skip = if self.stages { 0 } else { 3 };
        let row = self.row(&key);
        row.count += 1;
        if rec.error.is_some_and(|e| e != 0) {
            row.errors += 1;
        }
        if rec.requester_comm.is_some() {
            row.comm = rec.requester_comm;
        }
        for (cells, stage) in row.stages.iter_mut().zip(LatencyStage::ALL).skip(skip) {
            if let Some(ns) = rec.latency(stage) {
                cells.record_n(ns, 1);
            }
        }
        self.scratch = key;
    }

    /// Latencies counted in the kernel per (mount, opcode): only for keys
    /// [`Keys::in_kernel`] accepts (others read as unknown).
    pub fn merge_stats(&mut self, stats: &Stats) {
        for ((connection, op), s) in &stats.ops {
            let key = self
                .keys
                .0
                .iter()
                .map(|k| match k {
                    Key::Op => Part::Op(*op),
                    Key::Mount => Part::Mount(*connection),
                    Key::Pid => Part::Pid(None),
                    Key::Comm => Part::Comm(None),
                    Key::Transport => Part::Transport(None),
                    Key::Queue => Part::Queue(None),
                    Key::Path => Part::Path {
                        path: None,
                        connection: *connection,
                        node: None,
                    },
                })
                .collect::<Vec<_>>();
            let row = self.row(&key);
            row.count += s.count;
            row.errors += s.errors;
            for (cells, stage) in row.stages.iter_mut().zip(LatencyStage::ALL) {
                for v in s.histogram(stage).iter_recorded() {
                    cells.record_n(v.value_iterated_to(), v.count_at_value());
                }
            }
        }
    }

    fn part_text(&self, part: &Part, name: Name<'_>) -> (String, serde_json::Value) {
        match part {
            Part::Op(op) => {
                let name = opcode::name(*op);
                (name.clone(), name.into())
            }
            Part::Mount(c) => {
                let name = name(*c);
                (name.clone(), name.into())
            }
            Part::Pid(pid) => match pid {
                Some(p) => (p.to_string(), (*p).into()),
                None => ("-".into(), serde_json::Value::Null),
            },
            Part::Comm(comm) => match comm {
                Some(c) => (c.to_string(), c.to_string().into()),
                None => ("-".into(), serde_json::Value::Null),
            },
            Part::Transport(t) => match t {
                Some(t) => (t.name().into(), t.name().into()),
                None => ("-".into(), serde_json::Value::Null),
            },
            Part::Queue(q) => match q {
                Some(q) => (q.to_string(), (*q).into()),
                None => ("-".into(), serde_json::Value::Null),
            },
            Part::Path {
                path,
                connection,
                node,
            } => {
                let text = match path {
                    Some(p) => p.to_string(),
                    None => {
                        let node = node.map_or_else(|| "-".to_string(), |n| n.to_string());
                        if self.keys.has(Key::Mount) {
                            format!("node {node}")
                        } else {
                            format!("node {node} ({})", name(*connection))
                        }
                    }
                };
                (text.clone(), text.into())
            }
        }
    }

    /// The rows in `sort` order (largest first, then by key), with their
    /// key texts; a pid gets its comm beside it.
    fn shown(&self, sort: SortBy, name: Name<'_>) -> Vec<Shown<'_>> {
        let mut rows: Vec<(&Vec<Part>, &Row)> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1.metric(sort).cmp(&a.1.metric(sort)).then(a.0.cmp(b.0)));
        let comm_beside = self.keys.has(Key::Pid) && !self.keys.has(Key::Comm);
        rows.into_iter()
            .map(|(key, row)| {
                let mut cells = Vec::new();
                let mut json = serde_json::Map::new();
                for (k, part) in self.keys.0.iter().zip(key) {
                    let (text, value) = self.part_text(part, &mut *name);
                    cells.push((*k, text));
                    json.insert(k.name().into(), value);
                    if *k == Key::Pid && comm_beside {
                        let comm = row.comm.map(|c| c.to_string());
                        cells.push((Key::Comm, comm.clone().unwrap_or_else(|| "-".into())));
                        json.insert("comm".into(), comm.into());
                    }
                }
                Shown { cells, json, row }
            })
            .collect()
    }

    /// Every row in `sort` order, and the `(other)` row when the cap was
    /// reached.
    pub fn rows(&self, sort: SortBy, name: Name<'_>) -> (Vec<GroupRow>, Option<GroupRow>) {
        let rows = self
            .shown(sort, name)
            .into_iter()
            .map(|r| GroupRow::of(r.cells.into_iter().map(|(_, t)| t).collect(), r.row))
            .collect();
        let other = (self.other.count > 0)
            .then(|| GroupRow::of(vec!["(other)".into(); self.columns().len()], &self.other));
        (rows, other)
    }

    /// Adds `other`'s rows (a live view's time slots into its window).
    pub fn merge(&mut self, other: &Grouped) {
        for (key, row) in other
            .rows
            .iter()
            .map(|(k, r)| (Some(k), r))
            .chain([(None, &other.other)])
        {
            if row.count == 0 {
                continue;
            }
            let into = match key {
                Some(k) => self.row(k),
                None => &mut self.other,
            };
            into.count += row.count;
            into.errors += row.errors;
            if row.comm.is_some() {
                into.comm = row.comm;
            }
            for (a, b) in into.stages.iter_mut().zip(&row.stages) {
                a.merge(b);
            }
        }
    }

    /// The key columns: the keys, a pid followed by its comm.
    pub fn columns(&self) -> Vec<Key> {
        let mut cols = Vec::new();
        for k in &self.keys.0 {
            cols.push(*k);
            if *k == Key::Pid && !self.keys.has(Key::Comm) {
                cols.push(Key::Comm);
            }
        }
        cols
    }

    /// The stages shown for each row (indexes into [`LatencyStage::ALL`]):
    /// the total first, then the others when
    /// asked for and measured somewhere.
    fn stages(&self, grouping: &Grouping) -> Vec<usize> {
        [3, 0, 1, 2]
            .into_iter()
            .filter(|&i| {
                i == 3
                    || grouping.stages
                        && self
                            .rows
                            .values()
                            .chain([&self.other])
                            .any(|r| r.stages[i].samples > 0)
            })
            .collect()
    }

    /// The human table: key columns, count, errors, summed time, then a
    /// line per stage with its percentiles.
    pub fn render_table(&self, grouping: &Grouping, name: Name<'_>) -> String {
        if self.is_empty() {
            return "no FUSE requests finished\n".into();
        }
        let rows = self.shown(grouping.sort, name);
        let shown = grouping.top.unwrap_or(usize::MAX).min(rows.len());
        let columns = self.columns();
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(i, k)| {
                rows[..shown]
                    .iter()
                    .map(|r| r.cells[i].1.chars().count())
                    .chain([k.title().len(), if self.other.count > 0 { 7 } else { 0 }])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let stages = self.stages(grouping);
        let mut out = String::new();
        let mut line = |keys: &[String], numbers: [String; 3], stage: &str, p: [String; 4]| {
            for (text, w) in keys.iter().zip(&widths) {
                let _ = write!(out, "  {text:<w$}");
            }
            let _ = writeln!(
                out,
                " {:>8} {:>6} {:>10}  {:<15} {:>10} {:>10} {:>10} {:>10}",
                numbers[0], numbers[1], numbers[2], stage, p[0], p[1], p[2], p[3]
            );
        };
        let titles: Vec<String> = columns.iter().map(|k| k.title().to_string()).collect();
        line(
            &titles,
            ["COUNT".into(), "ERRORS".into(), "TIME(ms)".into()],
            "STAGE",
            ["p50(us)", "p90(us)", "p99(us)", "max(us)"].map(String::from),
        );
        let blank = vec![String::new(); columns.len()];
        let mut row_lines = |keys: Vec<String>, row: &Row| {
            for (n, &i) in stages.iter().enumerate() {
                let c = &row.stages[i];
                let us = |ns: u64| {
                    if c.samples == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.1}", ns as f64 / 1000.0)
                    }
                };
                let s = c.summary(LatencyStage::ALL[i]);
                let numbers = if n == 0 {
                    [
                        row.count.to_string(),
                        row.errors.to_string(),
                        format!("{:.2}", row.total().sum_ns as f64 / 1e6),
                    ]
                } else {
                    Default::default()
                };
                line(
                    if n == 0 { &keys } else { &blank },
                    numbers,
                    LatencyStage::ALL[i].name(),
                    [us(s.p50_ns), us(s.p90_ns), us(s.p99_ns), us(s.max_ns)],
                );
            }
        };
        for r in &rows[..shown] {
            row_lines(r.cells.iter().map(|(_, t)| t.clone()).collect(), r.row);
        }
        if self.other.count > 0 {
            row_lines(vec!["(other)".to_string(); columns.len()], &self.other);
        }
        if shown < rows.len() {
            let _ = writeln!(
                out,
                "  ... {} more rows (--top {shown}, by {})",
                rows.len() - shown,
                sort_name(grouping.sort)
            );
        }
        if self.other.count > 0 {
            let _ = writeln!(
                out,
                "  (other): {} requests whose {} found the table full (--max-rows {})",
                self.other.count, self.keys, self.max_rows
            );
        }
        out
    }

    /// The JSON object of a period: `rows` with the keys as fields (the
    /// top N when --top), `other` (null or the over-cap row) and how many
    /// rows --top left out.
    pub fn to_json(
        &self,
        period: &str,
        timestamp_unix_ns: Option<u64>,
        grouping: &Grouping,
        name: Name<'_>,
    ) -> serde_json::Value {
        let row_json = |mut fields: serde_json::Map<String, serde_json::Value>, row: &Row| {
            fields.insert("count".into(), row.count.into());
            fields.insert("errors".into(), row.errors.into());
            fields.insert("total_ns".into(), row.total().sum_ns.into());
            let stages: Vec<StageSummary> = LatencyStage::ALL
                .iter()
                .zip(&row.stages)
                .filter(|(_, c)| c.samples > 0)
                .map(|(stage, c)| c.summary(*stage))
                .collect();
            fields.insert(
                "stages".into(),
                serde_json::to_value(stages).unwrap_or_default(),
            );
            serde_json::Value::Object(fields)
        };
        let rows = self.shown(grouping.sort, name);
        let shown = grouping.top.unwrap_or(usize::MAX).min(rows.len());
        let not_shown = rows.len() - shown;
        let out: Vec<_> = rows
            .into_iter()
            .take(shown)
            .map(|r| row_json(r.json, r.row))
            .collect();
        let other = (self.other.count > 0).then(|| {
            let fields = self
                .columns()
                .iter()
                .map(|k| (k.name().to_string(), "(other)".into()))
                .collect();
            row_json(fields, &self.other)
        });
        serde_json::json!({
            "type": "stats_by",
            "period": period,
            "timestamp_unix_ns": timestamp_unix_ns,
            "by": self.keys.0.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "sort": sort_name(grouping.sort),
            "rows": out,
            "rows_not_shown": not_shown,
            "other": other,
        })
    }
}

fn sort_name(sort: SortBy) -> &'static str {
    match sort {
        SortBy::Count => "count",
        SortBy::Total => "total",
        SortBy::P99 => "p99",
        SortBy::Max => "max",
    }
}

/// The sink of `stats --by` / `report --by`: counts every interval and the
/// whole run, prints a table or JSON line per interval (when
/// `per_interval`) and the whole run at the end with the closing summary.
pub struct GroupedPrinter<W: Write> {
    out: W,
    format: Format,
    per_interval: bool,
    grouping: Grouping,
    interval: Grouped,
    total: Grouped,
    /// Where a JSON line's `timestamp_unix_ns` comes from (none: a
    /// replay's whole run).
    clock: Option<Clock>,
}

impl<W: Write> GroupedPrinter<W> {
    pub fn new(out: W, format: Format, per_interval: bool, grouping: Grouping) -> Self {
        let empty = Grouped::new(grouping.keys.clone(), grouping.max_rows);
        GroupedPrinter {
            out,
            format,
            per_interval,
            interval: empty.clone(),
            total: empty,
            grouping,
            clock: None,
        }
    }

    /// JSON lines carry the time `clock` reads when they are written.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    fn print(&mut self, interval: bool, mounts: &mut ConnectionTable) -> Result<()> {
        let (which, stats) = if interval {
            ("interval", &self.interval)
        } else {
            ("whole run", &self.total)
        };
        match self.format {
            Format::Json => {
                let at = self.clock.as_ref().map(Clock::now_unix_ns);
                let json = stats.to_json(which, at, &self.grouping, &mut |c| mounts.name(c));
                serde_json::to_writer(&mut self.out, &json)?;
                writeln!(self.out)?;
            }
            Format::Text => {
                let at = self.clock.as_ref().map(Clock::now_unix_ns);
                writeln!(self.out, "{}", period_heading(which, at))?;
                let table = stats.render_table(&self.grouping, &mut |c| mounts.name(c));
                write!(self.out, "{table}")?;
            }
        }
        self.out.flush()?;
        Ok(())
    }
}

impl<W: Write> Sink for GroupedPrinter<W> {
    fn request(&mut self, rec: &RequestLifecycle, _mounts: &mut ConnectionTable) -> Result<()> {
        self.total.record(rec);
        if self.per_interval {
            self.interval.record(rec);
        }
        Ok(())
    }

    fn stats(&mut self, delta: &Stats) -> Result<()> {
        self.total.merge_stats(delta);
        if self.per_interval {
            self.interval.merge_stats(delta);
        }
        Ok(())
    }

    fn tick(&mut self, mounts: &mut ConnectionTable) -> Result<()> {
        if self.per_interval && !self.interval.is_empty() {
            self.print(true, mounts)?;
            self.interval = Grouped::new(self.grouping.keys.clone(), self.grouping.max_rows);
        }
        Ok(())
    }

    fn finish(&mut self, summary: &RunSummary, mounts: &mut ConnectionTable) -> Result<()> {
        self.print(false, mounts)?;
        write_summary(&mut self.out, self.format, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tracker::{Tracker, TrackerConfig};
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FuseEvent};

    /// A finished request through the real tracker, then given the
    /// requester, node and path a run would have filled in.
    fn req(op: u32, total_ns: u64, pid: u32, comm: &str, path: Option<&str>) -> RequestLifecycle {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for (kind, ts) in [
            (EventKind::Sent, 1_000),
            (EventKind::Taken, 2_000),
            (EventKind::Replied, total_ns),
            (EventKind::Ended, 1_000 + total_ns),
        ] {
            let ev = FuseEvent {
                kind: kind as u8,
                flags: FLAG_HAS_HEADER,
                connection: 52,
                unique: 2,
                opcode: op,
                ts_ns: ts,
                ..Default::default()
            };
            t.observe(&ev, &mut out);
        }
        let mut rec = out.pop().expect("a finished request");
        rec.requester_pid = Some(pid);
        rec.requester_comm = Some(Comm::new(comm));
        rec.nodeid = Some(7);
        rec.path = path.map(Arc::from);
        rec
    }

    fn name(c: u32) -> String {
        if c == 52 {
            "/mnt/ref".into()
        } else {
            format!("conn {c}")
        }
    }

    fn grouping(by: &str) -> Grouping {
        ByOpts {
            by: Some(Keys::parse(by).unwrap()),
            ..ByOpts::default()
        }
        .grouping(false)
        .unwrap()
    }

    const READ: u32 = 15;
    const WRITE: u32 = 16;
    const LOOKUP: u32 = 1;

    /// cat: 3 fast READs (30 us); dd: 1 slow WRITE (1 ms) and 2 LOOKUPs.
    fn workload(g: &mut Grouped) {
        for _ in 0..3 {
            g.record(&req(READ, 10_000, 100, "cat", Some("/mnt/ref/a")));
        }
        g.record(&req(WRITE, 1_000_000, 200, "dd", Some("/mnt/ref/b")));
        g.record(&req(LOOKUP, 5_000, 200, "dd", None));
        g.record(&req(LOOKUP, 5_000, 200, "dd", None));
    }

    #[test]
    fn rows_are_grouped_by_the_keys_and_sorted_by_total_time() {
        let g_opts = grouping("comm,op");
        let mut g = Grouped::new(g_opts.keys.clone(), 100);
        workload(&mut g);
        let json = g.to_json("whole run", None, &g_opts, &mut name);
        let rows = json["rows"].as_array().unwrap();
        let pairs: Vec<(&str, &str, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r["comm"].as_str().unwrap(),
                    r["opcode"].as_str().unwrap(),
                    r["count"].as_u64().unwrap(),
                )
            })
            .collect();
        // dd's one WRITE took longer than cat's three READs together.
        assert_eq!(
            pairs,
            [("dd", "WRITE", 1), ("cat", "READ", 3), ("dd", "LOOKUP", 2)]
        );
        assert_eq!(json["by"], serde_json::json!(["comm", "opcode"]));
        assert!(json["other"].is_null());
        let write_total = rows[0]["total_ns"].as_u64().unwrap();
        assert_eq!(write_total, 1_000_000, "sent to ended, summed exactly");
        // By count the READs come first.
        let by_count = Grouping {
            sort: SortBy::Count,
            ..g_opts
        };
        let json = g.to_json("whole run", None, &by_count, &mut name);
        assert_eq!(json["rows"][0]["opcode"], "READ");
        assert_eq!(json["sort"], "count");
    }

    #[test]
    fn pid_rows_carry_their_comm_and_path_rows_name_unknown_nodes() {
        let by_pid = grouping("pid");
        let mut g = Grouped::new(by_pid.keys.clone(), 100);
        workload(&mut g);
        let json = g.to_json("whole run", None, &by_pid, &mut name);
        let rows = json["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0]["pid"].as_u64(), rows[0]["comm"].as_str()),
            (Some(200), Some("dd"))
        );
        assert_eq!(rows[0]["count"], 3);
        assert_eq!(
            (rows[1]["pid"].as_u64(), rows[1]["count"].as_u64()),
            (Some(100), Some(3))
        );
        let table = g.render_table(&by_pid, &mut name);
        let header = table.lines().next().unwrap();
        assert!(header.starts_with("  PID  COMM  "), "{table}");
        assert!(table.contains("  200  dd  "), "{table}");

        let by_path = grouping("path");
        let mut g = Grouped::new(by_path.keys.clone(), 100);
        workload(&mut g);
        let json = g.to_json("whole run", None, &by_path, &mut name);
        let paths: Vec<&str> = json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/mnt/ref/b", "/mnt/ref/a", "node 7 (/mnt/ref)"]);
        // With the mount as a column of its own, the node needs no mount.
        let with_mount = grouping("mount,path");
        let mut g = Grouped::new(with_mount.keys.clone(), 100);
        workload(&mut g);
        let table = g.render_table(&with_mount, &mut name);
        assert!(table.contains("/mnt/ref  node 7  "), "{table}");
    }

    #[test]
    fn top_keeps_the_first_rows_and_says_how_many_it_left_out() {
        let mut by = grouping("comm,op");
        by.top = Some(2);
        let mut g = Grouped::new(by.keys.clone(), 100);
        workload(&mut g);
        let json = g.to_json("whole run", None, &by, &mut name);
        assert_eq!(json["rows"].as_array().unwrap().len(), 2);
        assert_eq!(json["rows_not_shown"], 1);
        let table = g.render_table(&by, &mut name);
        assert!(table.contains("WRITE") && table.contains("READ"), "{table}");
        assert!(!table.contains("LOOKUP"), "{table}");
        assert!(
            table.contains("... 1 more rows (--top 2, by total)"),
            "{table}"
        );
    }

    #[test]
    fn keys_over_the_cap_are_counted_in_the_other_row() {
        let by = grouping("path");
        let mut g = Grouped::new(by.keys.clone(), 2);
        for i in 0..5 {
            let path = format!("/mnt/ref/f{i}");
            g.record(&req(READ, 10_000 * (i + 1), 100, "cat", Some(&path)));
            g.record(&req(READ, 10_000 * (i + 1), 100, "cat", Some(&path)));
        }
        assert_eq!(g.rows.len(), 2, "the cap holds");
        let json = g.to_json("whole run", None, &by, &mut name);
        let rows = json["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        // The first two keys keep their rows, with every later request.
        assert_eq!(rows[0]["path"], "/mnt/ref/f1");
        assert_eq!(rows[0]["count"], 2);
        assert_eq!(json["other"]["path"], "(other)");
        assert_eq!(json["other"]["count"], 6);
        let counted: u64 = rows
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>()
            + json["other"]["count"].as_u64().unwrap();
        assert_eq!(counted, 10, "no request lost");
        let table = g.render_table(&by, &mut name);
        assert!(table.contains("(other)"), "{table}");
        assert!(
            table.contains("(other): 6 requests whose path found the table full (--max-rows 2)"),
            "{table}"
        );
    }

    #[test]
    fn totals_only_rows_are_the_full_rows_without_stage_cells() {
        let by = grouping("path");
        let mut full = Grouped::new(by.keys.clone(), 100);
        let mut totals = Grouped::new(by.keys.clone(), 100).totals_only();
        for (i, total) in [10_000, 2_000_000, 30_000, 5_000].into_iter().enumerate() {
            let r = req(READ, total, 1, "cat", Some(["/a", "/b"][i % 2]));
            full.record(&r);
            totals.record(&r);
        }
        let (a, _) = full.rows(SortBy::Total, &mut name);
        let (b, _) = totals.rows(SortBy::Total, &mut name);
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        let stage_samples =
            |g: &Grouped, i: usize| -> u64 { g.rows.values().map(|r| r.stages[i].samples).sum() };
        assert_eq!(stage_samples(&full, 1), 4);
        assert_eq!(stage_samples(&totals, 1), 0, "no daemon-stage cells");
        assert_eq!(stage_samples(&totals, 3), 4);
    }

    #[test]
    fn in_kernel_cells_group_by_opcode_across_mounts() {
        let mut stats = Stats::default();
        let mut read = req(READ, 10_000, 1, "x", None);
        stats.record(&read);
        read.connection = 53;
        stats.record(&read);
        stats.record(&req(LOOKUP, 2_000_000, 1, "x", None));
        let by = grouping("op");
        let mut g = Grouped::new(by.keys.clone(), 100);
        g.merge_stats(&stats);
        let json = g.to_json("whole run", None, &by, &mut name);
        let rows = json["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0]["opcode"].as_str(), rows[0]["count"].as_u64()),
            (Some("LOOKUP"), Some(1))
        );
        assert_eq!(
            (rows[1]["opcode"].as_str(), rows[1]["count"].as_u64()),
            (Some("READ"), Some(2))
        );
        let p99 = rows[0]["stages"][3]["p99_ns"].as_u64().unwrap();
        assert!((1_900_000..=2_130_000).contains(&p99), "within 1/16: {p99}");
    }

    #[test]
    fn merged_tables_add_rows_and_the_other_row() {
        let by = grouping("path");
        let mut a = Grouped::new(by.keys.clone(), 1);
        a.record(&req(READ, 10_000, 1, "cat", Some("/mnt/ref/a")));
        a.record(&req(READ, 20_000, 1, "cat", Some("/mnt/ref/b")));
        let mut b = Grouped::new(by.keys.clone(), 1);
        b.record(&req(READ, 30_000, 1, "cat", Some("/mnt/ref/a")));
        let mut all = Grouped::new(by.keys.clone(), 10);
        all.merge(&a);
        all.merge(&b);
        let (rows, other) = all.rows(SortBy::Total, &mut name);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].count, rows[0].max_ns), (2, 30_000));
        assert_eq!(rows[0].total_ns, 40_000);
        assert_eq!(other.map(|o| o.count), Some(1), "b's over-cap row kept");
    }

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut c = Cells::default();
        for us in 1..=100 {
            c.record_n(us * 1_000, 1);
        }
        let p50 = c.quantile(0.5);
        assert!((50_000..=50_000 + 50_000 / 16).contains(&p50), "{p50}");
        assert_eq!(c.quantile(1.0), 100_000, "the top bucket stops at the max");
        assert_eq!(c.sum_ns, 5_050_000);
        assert!(c.buckets.len() < 100, "sparse: {}", c.buckets.len());
    }

    #[test]
    fn bad_keys_are_refused_in_one_line() {
        assert_eq!(
            Keys::parse("comm,bogus").unwrap_err(),
            "unknown key 'bogus': choose from opcode, path, pid, comm, mount, transport, ring_queue (e.g. --by comm,opcode)"
        );
        assert_eq!(
            Keys::parse("op,opcode").unwrap_err(),
            "key 'opcode' given twice"
        );
        assert!(Keys::parse("mount,op").unwrap().in_kernel());
        assert!(!Keys::parse("comm,op").unwrap().in_kernel());
        assert_eq!(Keys::parse("path").unwrap().to_string(), "path");
    }
}
