//! What `fusetrace top` tracks, and what keys do to it. No terminal here:
//! the views draw from [`TopState`], and tests drive it with synthetic
//! requests and key events.
//!
//! Data comes in two ways: finished requests ([`TopState::record`]) and, on
//! every frame, the requests still in flight and the run's counters
//! ([`TopState::tick`]). Each tick freezes what is shown into a
//! [`Snapshot`] unless the view is paused; sorting, filtering and
//! selection work on that snapshot.
//!
//! When the kernel counts the requests (top's default), finished requests
//! come as the growth of its histogram cells ([`TopState::count_cells`])
//! and the few slow ones it sends one by one ([`TopState::record_slowest`]),
//! and the rows in flight are built from its slots ([`InFlightRow::from_slot`],
//! [`TopState::tick_rows`]).

use std::{
    cell::Cell,
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    groups::{GroupBy, GroupWindow},
    window::{OpKey, OpTotals, SLOWEST_KEPT, SlowRequest, Windows, bars},
};
use crate::{
    output::by::{GroupRow, Key},
    pipeline::lifecycle::{Comm, LatencyStage, RequestLifecycle},
    pipeline::opcode,
};

/// The view `top` starts in (`--view`); keys move on from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StartView {
    /// Every request in flight.
    #[default]
    InFlight,
    /// Per opcode over the window.
    Ops,
    /// Per file over the window (`b` in the second view).
    Files,
    /// Per process over the window.
    Processes,
}

/// Settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct TopConfig {
    /// In-flight requests at least this old are highlighted.
    pub stall_ns: u64,
    /// Length of the sliding window of the summary and detail views.
    pub window_ns: u64,
}

impl Default for TopConfig {
    fn default() -> Self {
        TopConfig {
            stall_ns: 1_000_000_000,
            window_ns: 10_000_000_000,
        }
    }
}

/// Counters of the run, as the header shows them. Everything that was
/// lost or could not be joined is here, so nothing is lost silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounters {
    /// Events the tracker has seen.
    pub events: u64,
    pub ring_drops: u64,
    /// Daemon reads whose header could not be read.
    pub read_faults: u64,
    pub undecodable: u64,
    pub unmatched_replies: u64,
    pub unmatched_ends: u64,
    pub never_ended: u64,
    pub splice_transfers: u64,
    /// The kernel counted the requests (top's default): the next three
    /// are its losses, and `events` are the records it sent one by one.
    pub in_kernel: bool,
    /// Sends not counted: the kernel's in-flight table was full.
    pub table_full: u64,
    /// Latencies not counted: the kernel's histogram map was full.
    pub histogram_full: u64,
    /// Requests counted in the total only (a daemon point not seen).
    pub stages_missing: u64,
}

/// The three views, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    InFlight,
    Summary,
    Detail,
}

impl View {
    pub const ALL: [View; 3] = [View::InFlight, View::Summary, View::Detail];

    pub fn title(self) -> &'static str {
        match self {
            View::InFlight => "in flight",
            View::Summary => "per opcode",
            View::Detail => "detail",
        }
    }

    fn step(self, forward: bool) -> View {
        let i = View::ALL.iter().position(|v| *v == self).unwrap();
        let n = View::ALL.len();
        View::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }
}

/// What the detail view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetailOf {
    /// One opcode on one connection.
    Op(OpKey),
    /// One request (and its opcode).
    Request { key: OpKey, unique: u64 },
}

impl DetailOf {
    pub fn key(self) -> OpKey {
        match self {
            DetailOf::Op(key) | DetailOf::Request { key, .. } => key,
        }
    }
}

/// Columns of the in-flight table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlightColumn {
    Age,
    Op,
    /// The file's path, or its node id when the path is unknown.
    File,
    Pid,
    Comm,
    Daemon,
    Stage,
    Mount,
}

impl InFlightColumn {
    pub const ALL: [InFlightColumn; 8] = [
        InFlightColumn::Age,
        InFlightColumn::Op,
        InFlightColumn::File,
        InFlightColumn::Pid,
        InFlightColumn::Comm,
        InFlightColumn::Daemon,
        InFlightColumn::Stage,
        InFlightColumn::Mount,
    ];

    pub fn title(self) -> &'static str {
        match self {
            InFlightColumn::Age => "AGE",
            InFlightColumn::Op => "OP",
            InFlightColumn::File => "FILE",
            InFlightColumn::Pid => "PID",
            InFlightColumn::Comm => "COMMAND",
            InFlightColumn::Daemon => "DAEMON",
            InFlightColumn::Stage => "STAGE",
            InFlightColumn::Mount => "MOUNT",
        }
    }
}

/// Columns of the per-opcode summary that it can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryColumn {
    Op,
    Rate,
    InFlight,
    Errors,
    /// p99 of one stage.
    P99(LatencyStage),
    Mount,
}

impl SummaryColumn {
    pub const ALL: [SummaryColumn; 9] = [
        SummaryColumn::Op,
        SummaryColumn::Rate,
        SummaryColumn::InFlight,
        SummaryColumn::Errors,
        SummaryColumn::P99(LatencyStage::QueueWait),
        SummaryColumn::P99(LatencyStage::DaemonService),
        SummaryColumn::P99(LatencyStage::Completion),
        SummaryColumn::P99(LatencyStage::Total),
        SummaryColumn::Mount,
    ];

    pub fn title(self) -> &'static str {
        match self {
            SummaryColumn::Op => "op",
            SummaryColumn::Rate => "rate",
            SummaryColumn::InFlight => "in flight",
            SummaryColumn::Errors => "errors",
            SummaryColumn::P99(LatencyStage::QueueWait) => "queue p99",
            SummaryColumn::P99(LatencyStage::DaemonService) => "daemon p99",
            SummaryColumn::P99(LatencyStage::Completion) => "complete p99",
            SummaryColumn::P99(LatencyStage::Total) => "total p99",
            SummaryColumn::Mount => "mount",
        }
    }
}

/// Sort order of a table: a column, and whether its natural order is reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SortState {
    pub column: usize,
    pub reversed: bool,
}

/// A parsed `/` filter: every term must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    pub text: String,
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Op(String),
    Pid(Option<u32>),
    Comm(String),
    Mount(String),
    /// Opcode, command, mount or pid.
    Any(String),
}

impl RowFilter {
    /// `op:READ pid:42 comm:cat mount:/mnt`, or bare words matching any of them.
    pub fn parse(text: &str) -> RowFilter {
        let terms = text
            .split_whitespace()
            .map(|word| {
                let lower = word.to_lowercase();
                match lower.split_once(':') {
                    Some(("op", v)) => Term::Op(v.to_string()),
                    Some(("pid", v)) => Term::Pid(v.parse().ok()),
                    Some(("comm", v)) => Term::Comm(v.to_string()),
                    Some(("mount", v)) => Term::Mount(v.to_string()),
                    _ => Term::Any(lower),
                }
            })
            .collect();
        RowFilter {
            text: text.trim().to_string(),
            terms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// `who` is the requester's pid and command, `None` for rows that are
    /// not one request (they are not filtered by pid or command).
    fn matches(&self, op: &str, mount: &str, who: Option<(Option<u32>, Option<&str>)>) -> bool {
        let has = |field: &str, v: &str| field.to_lowercase().contains(v);
        self.terms.iter().all(|t| match (t, who) {
            (Term::Op(v), _) => has(op, v),
            (Term::Mount(v), _) => has(mount, v),
            (Term::Pid(_) | Term::Comm(_), None) => true,
            (Term::Pid(v), Some((pid, _))) => v.is_some() && pid == *v,
            (Term::Comm(v), Some((_, comm))) => comm.is_some_and(|c| has(c, v)),
            (Term::Any(v), who) => {
                has(op, v)
                    || has(mount, v)
                    || who.is_some_and(|(pid, comm)| {
                        comm.is_some_and(|c| has(c, v)) || pid.is_some_and(|p| p.to_string() == *v)
                    })
            }
        })
    }
}

/// Percentiles and bars of one stage of one opcode over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageRow {
    pub samples: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Samples per decade, see [`super::window::BAR_LABELS`].
    pub bars: [u64; 9],
}

/// One row of the per-opcode summary.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRow {
    pub key: OpKey,
    /// Requests finished per second over the window.
    pub rate: f64,
    pub count: u64,
    pub errors: u64,
    pub in_flight: usize,
    /// In `LatencyStage::ALL` order.
    pub stages: [StageRow; 4],
    pub slowest: Vec<SlowRequest>,
}

impl OpRow {
    fn new(key: OpKey, totals: Option<&OpTotals>, covered_ns: u64) -> OpRow {
        let stages = LatencyStage::ALL.map(|stage| match totals {
            Some(t) => {
                let h = t.histograms.stage(stage);
                StageRow {
                    samples: h.len(),
                    p50_ns: h.value_at_quantile(0.50),
                    p99_ns: h.value_at_quantile(0.99),
                    max_ns: h.max(),
                    bars: bars(h),
                }
            }
            None => StageRow::default(),
        });
        let count = totals.map_or(0, |t| t.count);
        OpRow {
            key,
            // At least 100 ms, so the first requests do not show absurd rates.
            rate: count as f64 * 1e9 / covered_ns.max(100_000_000) as f64,
            count,
            errors: totals.map_or(0, |t| t.errors),
            in_flight: 0,
            stages,
            slowest: Vec::new(),
        }
    }

    pub fn stage(&self, stage: LatencyStage) -> &StageRow {
        &self.stages[LatencyStage::ALL.iter().position(|s| *s == stage).unwrap()]
    }
}

/// What the in-flight table and a request's detail show of one request:
/// the snapshot keeps this, not the whole [`RequestLifecycle`] (144 bytes
/// instead of 336: 100 000 requests in flight are 14 MB, not 34).
#[derive(Debug, Clone, PartialEq)]
pub struct InFlightRow {
    pub connection: u32,
    pub unique: u64,
    pub opcode: u32,
    pub interrupted: bool,
    pub nodeid: Option<u64>,
    /// Shared with the node table, not copied.
    pub path: Option<Arc<str>>,
    pub requester_pid: Option<u32>,
    pub requester_tid: Option<u32>,
    pub requester_comm: Option<Comm>,
    pub daemon_tid: Option<u32>,
    pub transport: Option<crate::kernel::hooks::Transport>,
    pub ring_queue: Option<u16>,
    stage: &'static str,
    first_seen_ns: u64,
    /// When it entered its current stage.
    pub stage_since_ns: u64,
    pub queue_wait_ns: Option<u64>,
}

impl InFlightRow {
    /// A request as the kernel's in-flight slot holds it (`comm`: the
    /// requesting thread's name, read by the caller). The slot does not
    /// say whether a queued request is a background one, nor its path.
    pub fn from_slot(sent: &fusetrace_common::AggSent, comm: Option<Comm>) -> InFlightRow {
        let nonzero = |v: u32| (v != 0).then_some(v);
        let taken = (sent.taken_ns >= sent.ts_ns && sent.taken_ns != 0).then_some(sent.taken_ns);
        let replied = taken.and(
            (sent.replied_ns != 0 && Some(sent.replied_ns) >= taken).then_some(sent.replied_ns),
        );
        InFlightRow {
            connection: sent.connection,
            unique: sent.unique,
            opcode: sent.opcode,
            interrupted: false,
            nodeid: (sent.nodeid != 0).then_some(sent.nodeid),
            path: None,
            requester_pid: nonzero(sent.requester_tgid),
            requester_tid: nonzero(sent.header_pid),
            requester_comm: comm,
            daemon_tid: nonzero(sent.daemon_tid),
            transport: None,
            ring_queue: None,
            stage: match (taken, replied) {
                (_, Some(_)) => "replying",
                (Some(_), None) => "in daemon",
                _ => "queued",
            },
            first_seen_ns: sent.ts_ns,
            stage_since_ns: replied.or(taken).unwrap_or(sent.ts_ns),
            queue_wait_ns: taken.map(|t| t - sent.ts_ns),
        }
    }

    fn of(rec: &RequestLifecycle) -> InFlightRow {
        InFlightRow {
            connection: rec.connection,
            unique: rec.unique,
            opcode: rec.opcode,
            interrupted: rec.interrupted,
            nodeid: rec.nodeid,
            path: rec.path.clone(),
            requester_pid: rec.requester_pid,
            requester_tid: rec.requester_tid,
            requester_comm: rec.requester_comm,
            transport: rec.transport,
            ring_queue: rec.ring_queue,
            daemon_tid: rec.daemon_tid,
            stage: rec.current_stage(),
            first_seen_ns: rec.first_seen_ns(),
            stage_since_ns: [rec.replied_ns, rec.taken_ns, rec.sent_ns]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_else(|| rec.first_seen_ns()),
            queue_wait_ns: rec.latency(LatencyStage::QueueWait),
        }
    }

    /// [`RequestLifecycle::current_stage`] at the snapshot.
    pub fn current_stage(&self) -> &'static str {
        self.stage
    }

    pub fn first_seen_ns(&self) -> u64 {
        self.first_seen_ns
    }

    /// The file as the views show it: its path, else `node N`.
    pub fn file(&self) -> String {
        match &self.path {
            Some(p) => p.to_string(),
            None => format!("node {}", self.nodeid.map_or("-".into(), |n| n.to_string())),
        }
    }
}

/// What is on screen: rebuilt every tick, kept while paused.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Monotonic time of the snapshot; ages are relative to it.
    pub now_ns: u64,
    pub in_flight: Vec<InFlightRow>,
    pub ops: Vec<OpRow>,
    /// Finished requests per second, one sample per tick, oldest first.
    pub throughput: Vec<u64>,
    pub request_rate: f64,
    pub event_rate: f64,
    pub counters: RunCounters,
    /// Connections seen, by id, with their mount points.
    pub connections: Vec<(u32, String)>,
    pub window_ns: u64,
    /// The window's busiest files or processes (largest total time
    /// first), each with the `(other)` row of keys over the cap; only the
    /// one on screen (empty otherwise, until the next frame).
    pub files: (Vec<GroupRow>, Option<GroupRow>),
    pub processes: (Vec<GroupRow>, Option<GroupRow>),
    /// How much time the window covered (for the rates of those rows).
    pub covered_ns: u64,
}

impl Snapshot {
    pub fn age_ns(&self, rec: &InFlightRow) -> u64 {
        self.now_ns.saturating_sub(rec.first_seen_ns())
    }

    pub fn mount(&self, connection: u32) -> &str {
        self.connections
            .iter()
            .find(|(c, _)| *c == connection)
            .map_or("?", |(_, n)| n.as_str())
    }

    /// 1-based number of a connection in the header's mount list.
    pub fn mount_number(&self, connection: u32) -> usize {
        self.connections
            .iter()
            .position(|(c, _)| *c == connection)
            .map_or(0, |i| i + 1)
    }
}

/// How many throughput samples are kept (more than any screen is wide).
const THROUGHPUT_SAMPLES: usize = 400;

/// Everything `fusetrace top` knows and shows.
#[derive(Debug)]
pub struct TopState {
    pub config: TopConfig,
    windows: Windows,
    files: GroupWindow,
    processes: GroupWindow,
    finished: u64,
    /// (time, finished, events) of recent ticks, for the rates.
    rate_samples: VecDeque<(u64, u64, u64)>,
    throughput: VecDeque<u64>,
    names: BTreeMap<u32, String>,
    pub shown: Snapshot,

    pub view: View,
    /// Where Esc in the detail view goes back to.
    pub detail_from: View,
    pub detail: Option<DetailOf>,
    pub in_flight_sort: SortState,
    pub summary_sort: SortState,
    pub in_flight_selected: usize,
    /// First in-flight row on screen: the view keeps it between frames so
    /// the rows only scroll when the selection leaves the screen.
    pub in_flight_scroll: Cell<usize>,
    pub summary_selected: usize,
    pub filter: RowFilter,
    /// The filter being typed after `/`.
    pub input: Option<String>,
    pub help: bool,
    pub paused: bool,
    /// Only this connection; `None` means all.
    pub mount: Option<u32>,
    /// What the second view's table is keyed by (`b`).
    pub group: GroupBy,
    /// The kernel counts the requests: no paths, and no per-file or
    /// per-process view (`b` says how to get them).
    pub kernel_tables: bool,
    /// A one-line notice the footer shows until the next key.
    pub notice: Option<&'static str>,
    /// Kernel tables: the total latency from which the kernel sends a
    /// request one by one (the slowest lists hold only those).
    pub record_min_ns: Option<u64>,
}

/// What `b` says in kernel-table mode instead of showing files or
/// processes.
pub const EVENTS_NOTICE: &str = "per file and per process need every request: restart top with --view files, --view processes or --events";

impl TopState {
    pub fn new(config: TopConfig) -> TopState {
        TopState {
            config,
            windows: Windows::new(config.window_ns),
            files: GroupWindow::new(Key::Path, config.window_ns),
            processes: GroupWindow::new(Key::Pid, config.window_ns),
            finished: 0,
            rate_samples: VecDeque::new(),
            throughput: VecDeque::new(),
            names: BTreeMap::new(),
            shown: Snapshot {
                window_ns: config.window_ns,
                ..Snapshot::default()
            },
            view: View::InFlight,
            detail_from: View::InFlight,
            detail: None,
            in_flight_sort: SortState::default(),
            summary_sort: SortState {
                column: 1,
                reversed: false,
            },
            in_flight_selected: 0,
            in_flight_scroll: Cell::new(0),
            summary_selected: 0,
            filter: RowFilter::default(),
            input: None,
            help: false,
            paused: false,
            mount: None,
            group: GroupBy::Op,
            kernel_tables: false,
            notice: None,
            record_min_ns: None,
        }
    }

    /// The kernel counts the requests (top's default mode).
    pub fn with_kernel_tables(mut self) -> TopState {
        self.kernel_tables = true;
        self
    }

    /// Kernel tables: the growth of the kernel's histogram cells since
    /// the last call (read at `now_ns`), each cell's requests taken at its
    /// bucket's middle.
    pub fn count_cells(&mut self, now_ns: u64, grown: &[(fusetrace_common::HistogramKey, u64)]) {
        use crate::pipeline::aggregate::{cell_latency, cell_stage};
        self.windows.advance(now_ns);
        for (key, n) in grown {
            let Some(stage) = cell_stage(key) else {
                continue;
            };
            if stage == LatencyStage::Total {
                self.finished += n;
            }
            self.windows.count(
                (key.connection, key.opcode),
                stage,
                cell_latency(key),
                *n,
                key.error != 0,
            );
        }
    }

    /// Kernel tables: a slow request the kernel sent one by one (already
    /// counted in the cells), for the slowest lists.
    pub fn record_slowest(&mut self, rec: &RequestLifecycle) {
        self.windows.record_slowest(rec);
    }

    /// The per-opcode window.
    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Shows `start` first (`top --view`).
    pub fn start_in(&mut self, start: StartView) {
        (self.view, self.group) = match start {
            StartView::InFlight => (View::InFlight, GroupBy::Op),
            StartView::Ops => (View::Summary, GroupBy::Op),
            StartView::Files => (View::Summary, GroupBy::File),
            StartView::Processes => (View::Summary, GroupBy::Process),
        };
    }

    /// A finished request.
    pub fn record(&mut self, rec: &RequestLifecycle) {
        self.finished += 1;
        self.windows.record(rec);
        self.files.record(rec);
        self.processes.record(rec);
    }

    /// One frame: moves the window to `now_ns`, updates the rates and, unless
    /// paused, what is shown. `name` gives a connection's mount point.
    pub fn tick(
        &mut self,
        now_ns: u64,
        in_flight: impl Iterator<Item = RequestLifecycle>,
        counters: RunCounters,
        name: &mut dyn FnMut(u32) -> String,
    ) {
        self.tick_rows(
            now_ns,
            in_flight.map(|r| InFlightRow::of(&r)),
            counters,
            name,
        );
    }

    /// [`TopState::tick`] with the rows in flight already built.
    pub fn tick_rows(
        &mut self,
        now_ns: u64,
        in_flight: impl Iterator<Item = InFlightRow>,
        counters: RunCounters,
        name: &mut dyn FnMut(u32) -> String,
    ) {
        self.windows.advance(now_ns);
        self.files.advance(now_ns);
        self.processes.advance(now_ns);

        // Rates over the last second of ticks.
        self.rate_samples
            .push_back((now_ns, self.finished, counters.events));
        while self.rate_samples.len() > 2
            && now_ns.saturating_sub(self.rate_samples[1].0) >= 1_000_000_000
        {
            self.rate_samples.pop_front();
        }
        let (t0, f0, e0) = self.rate_samples[0];
        let per_second = |from: u64, to: u64| {
            if now_ns > t0 {
                to.saturating_sub(from) as f64 * 1e9 / (now_ns - t0) as f64
            } else {
                0.0
            }
        };
        let request_rate = per_second(f0, self.finished);
        let event_rate = per_second(e0, counters.events);
        // The newest sample is the throughput since the previous tick.
        let n = self.rate_samples.len();
        let recent = if n >= 2 {
            let (tp, fp, _) = self.rate_samples[n - 2];
            if now_ns > tp {
                ((self.finished - fp) as f64 * 1e9 / (now_ns - tp) as f64) as u64
            } else {
                0
            }
        } else {
            0
        };
        self.throughput.push_back(recent);
        if self.throughput.len() > THROUGHPUT_SAMPLES {
            self.throughput.pop_front();
        }

        if self.paused {
            return;
        }
        // The previous frame's copy goes first, and the new one is allocated
        // once, not grown: one copy of the requests in flight at a time
        // (100 000 of them are 13 MB), no freed growth steps left resident.
        self.shown.in_flight = Vec::new();
        let mut kept = Vec::with_capacity(in_flight.size_hint().1.unwrap_or(0));
        kept.extend(in_flight);
        let in_flight = kept;
        for c in in_flight
            .iter()
            .map(|r| r.connection)
            .chain(self.windows.ops().map(|(k, _)| k.0))
        {
            self.names.entry(c).or_insert_with(|| name(c));
        }
        let covered = self.windows.covered_ns(now_ns);
        let mut ops: BTreeMap<OpKey, OpRow> = self
            .windows
            .ops()
            .map(|(key, totals)| {
                let mut row = OpRow::new(*key, Some(totals), covered);
                row.slowest = self.windows.slowest(*key, SLOWEST_KEPT);
                (*key, row)
            })
            .collect();
        for rec in &in_flight {
            let key = (rec.connection, rec.opcode);
            ops.entry(key)
                .or_insert_with(|| OpRow::new(key, None, covered))
                .in_flight += 1;
        }
        // Nodes without a path are named with their mount, as seen once.
        // Only the table on screen is built: the windows' slots are merged
        // per frame, which the other views need not pay for.
        let names = &mut self.names;
        let mut mount = |c: u32| names.entry(c).or_insert_with(|| name(c)).clone();
        let (mut files, mut processes) = Default::default();
        match (self.view, self.group) {
            (View::Summary, GroupBy::File) => files = self.files.rows(&mut mount),
            (View::Summary, GroupBy::Process) => processes = self.processes.rows(&mut mount),
            _ => {}
        }
        self.shown = Snapshot {
            now_ns,
            in_flight,
            ops: ops.into_values().collect(),
            throughput: self.throughput.iter().copied().collect(),
            request_rate,
            event_rate,
            counters,
            connections: self.names.iter().map(|(c, n)| (*c, n.clone())).collect(),
            window_ns: self.windows.window_ns(),
            files,
            processes,
            covered_ns: covered,
        };
    }

    fn in_flight_wanted(&self, rec: &InFlightRow) -> bool {
        self.mount.is_none_or(|m| m == rec.connection)
            && (self.filter.is_empty()
                || self.filter.matches(
                    &opcode::name(rec.opcode),
                    self.shown.mount(rec.connection),
                    Some((
                        rec.requester_pid.or(rec.requester_tid),
                        rec.requester_comm.as_deref(),
                    )),
                ))
    }

    /// The in-flight rows shown, filtered and sorted.
    pub fn visible_in_flight(&self) -> Vec<&InFlightRow> {
        let mut rows: Vec<&InFlightRow> = self
            .shown
            .in_flight
            .iter()
            .filter(|r| self.in_flight_wanted(r))
            .collect();
        let column = InFlightColumn::ALL[self.in_flight_sort.column];
        let shown = &self.shown;
        let pid = |r: &InFlightRow| r.requester_pid.or(r.requester_tid);
        rows.sort_by(|a, b| {
            let natural = match column {
                // Oldest first.
                InFlightColumn::Age => a.first_seen_ns().cmp(&b.first_seen_ns()),
                InFlightColumn::Op => opcode::name(a.opcode).cmp(&opcode::name(b.opcode)),
                InFlightColumn::File => (&a.path, a.nodeid).cmp(&(&b.path, b.nodeid)),
                InFlightColumn::Pid => pid(a).cmp(&pid(b)),
                InFlightColumn::Comm => a.requester_comm.cmp(&b.requester_comm),
                InFlightColumn::Daemon => a.daemon_tid.cmp(&b.daemon_tid),
                InFlightColumn::Stage => a.current_stage().cmp(b.current_stage()),
                InFlightColumn::Mount => shown.mount(a.connection).cmp(shown.mount(b.connection)),
            }
            // Ties: oldest first, then by id, so rows do not jump around.
            .then(a.first_seen_ns().cmp(&b.first_seen_ns()))
            .then(a.unique.cmp(&b.unique));
            if self.in_flight_sort.reversed {
                natural.reverse()
            } else {
                natural
            }
        });
        rows
    }

    /// The per-opcode rows shown, filtered and sorted.
    pub fn visible_ops(&self) -> Vec<&OpRow> {
        let mut rows: Vec<&OpRow> = self
            .shown
            .ops
            .iter()
            .filter(|r| {
                self.mount.is_none_or(|m| m == r.key.0)
                    && self
                        .filter
                        .matches(&opcode::name(r.key.1), self.shown.mount(r.key.0), None)
            })
            .collect();
        let column = SummaryColumn::ALL[self.summary_sort.column];
        let shown = &self.shown;
        rows.sort_by(|a, b| {
            let natural = match column {
                SummaryColumn::Op => opcode::name(a.key.1).cmp(&opcode::name(b.key.1)),
                // Busiest, most in flight, most errors, slowest first.
                SummaryColumn::Rate => b.rate.total_cmp(&a.rate),
                SummaryColumn::InFlight => b.in_flight.cmp(&a.in_flight),
                SummaryColumn::Errors => b.errors.cmp(&a.errors),
                SummaryColumn::P99(stage) => b.stage(stage).p99_ns.cmp(&a.stage(stage).p99_ns),
                SummaryColumn::Mount => shown.mount(a.key.0).cmp(shown.mount(b.key.0)),
            }
            .then(a.key.cmp(&b.key));
            if self.summary_sort.reversed {
                natural.reverse()
            } else {
                natural
            }
        });
        rows
    }

    /// The per-file or per-process rows shown (with the `(other)` row),
    /// filtered: bare words and `mount:` match a file's path, `pid:` and
    /// `comm:` a process.
    pub fn visible_groups(&self) -> (Vec<&GroupRow>, Option<&GroupRow>) {
        let (rows, other) = match self.group {
            GroupBy::Op | GroupBy::File => &self.shown.files,
            GroupBy::Process => &self.shown.processes,
        };
        let wanted = |r: &&GroupRow| match self.group {
            GroupBy::Process => self.filter.matches(
                "",
                "",
                Some((r.keys[0].parse().ok(), r.keys.get(1).map(String::as_str))),
            ),
            _ => self.filter.matches("", &r.keys[0], None),
        };
        (rows.iter().filter(wanted).collect(), other.as_ref())
    }

    /// The second view's title: per opcode, per file or per process.
    pub fn view_title(&self, view: View) -> &'static str {
        match view {
            View::Summary => self.group.title(),
            v => v.title(),
        }
    }

    /// The opcode row the detail view shows, if it has one.
    pub fn detail_op(&self) -> Option<&OpRow> {
        let key = self.detail?.key();
        self.shown.ops.iter().find(|r| r.key == key)
    }

    /// The request the detail view shows, while it is still in flight.
    pub fn detail_request(&self) -> Option<&InFlightRow> {
        match self.detail? {
            DetailOf::Request { key, unique } => self
                .shown
                .in_flight
                .iter()
                .find(|r| r.connection == key.0 && r.unique == unique),
            DetailOf::Op(_) => None,
        }
    }

    /// Requests in flight at least the stall threshold old.
    pub fn stalled(&self) -> usize {
        self.shown
            .in_flight
            .iter()
            .filter(|r| self.shown.age_ns(r) >= self.config.stall_ns)
            .count()
    }

    pub fn is_stalled(&self, rec: &InFlightRow) -> bool {
        self.shown.age_ns(rec) >= self.config.stall_ns
    }

    /// Applies one key. Returns true when the user asked to quit.
    pub fn handle_key(&mut self, key: KeyEvent) -> bool {
        if key.kind == KeyEventKind::Release {
            return false;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c')) {
            return true;
        }
        if let Some(text) = &mut self.input {
            match key.code {
                KeyCode::Enter => {
                    self.filter = RowFilter::parse(text);
                    self.input = None;
                    self.reset_selection();
                }
                KeyCode::Esc => self.input = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !ctrl => text.push(c),
                _ => {}
            }
            return false;
        }
        self.notice = None;
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return matches!(key.code, KeyCode::Char('q'));
        }
        match key.code {
            KeyCode::Char('q') => return true,
            KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => self.help = true,
            KeyCode::Tab => self.switch_view(true),
            KeyCode::BackTab => self.switch_view(false),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            KeyCode::Char('s') => self.cycle_sort(),
            KeyCode::Char('r') => {
                if let Some(sort) = self.sort_mut() {
                    sort.reversed = !sort.reversed;
                }
            }
            KeyCode::Char(c @ '1'..='9') => self.sort_by(c as usize - '1' as usize),
            KeyCode::Char('/') => self.input = Some(self.filter.text.clone()),
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('m') => self.cycle_mount(),
            KeyCode::Char('b') => {
                // To the second view, or on to its next grouping.
                if self.view == View::Summary {
                    let next = self.group.next();
                    // Files and processes need each request's path and
                    // requester, which the kernel's counts do not keep.
                    if self.kernel_tables && next != GroupBy::Op {
                        self.notice = Some(EVENTS_NOTICE);
                        return false;
                    }
                    self.group = next;
                } else {
                    self.view = View::Summary;
                }
                self.summary_selected = 0;
            }
            KeyCode::Enter => self.open_detail(),
            KeyCode::Esc => {
                if self.view == View::Detail {
                    self.view = self.detail_from;
                } else if !self.filter.is_empty() {
                    self.filter = RowFilter::default();
                    self.reset_selection();
                }
            }
            _ => {}
        }
        false
    }

    fn reset_selection(&mut self) {
        self.in_flight_selected = 0;
        self.summary_selected = 0;
    }

    fn switch_view(&mut self, forward: bool) {
        let next = self.view.step(forward);
        if next == View::Detail {
            self.detail_from = self.view;
            if self.detail.is_none() || self.view == View::Summary {
                self.detail = self.selected_detail(View::Summary);
            }
        }
        self.view = next;
    }

    /// What Enter on `view`'s selected row would show.
    fn selected_detail(&self, view: View) -> Option<DetailOf> {
        match view {
            View::InFlight => {
                let rows = self.visible_in_flight();
                let r = rows.get(self.in_flight_selected.min(rows.len().saturating_sub(1)))?;
                Some(DetailOf::Request {
                    key: (r.connection, r.opcode),
                    unique: r.unique,
                })
            }
            // Files and processes have no detail view (yet).
            View::Summary if self.group != GroupBy::Op => None,
            View::Summary => {
                let rows = self.visible_ops();
                let r = rows.get(self.summary_selected.min(rows.len().saturating_sub(1)))?;
                Some(DetailOf::Op(r.key))
            }
            View::Detail => self.detail,
        }
    }

    fn open_detail(&mut self) {
        if self.view == View::Detail {
            return;
        }
        if let Some(d) = self.selected_detail(self.view) {
            self.detail = Some(d);
            self.detail_from = self.view;
            self.view = View::Detail;
        }
    }

    fn move_selection(&mut self, by: isize) {
        let (len, sel) = match self.view {
            View::InFlight => (self.visible_in_flight().len(), &mut self.in_flight_selected),
            View::Summary if self.group != GroupBy::Op => {
                (self.visible_groups().0.len(), &mut self.summary_selected)
            }
            View::Summary => (self.visible_ops().len(), &mut self.summary_selected),
            View::Detail => return,
        };
        let max = len.saturating_sub(1) as isize;
        *sel = ((*sel).min(max as usize) as isize)
            .saturating_add(by)
            .clamp(0, max) as usize;
    }

    fn sort_mut(&mut self) -> Option<&mut SortState> {
        match self.view {
            // Files and processes: by total time only.
            View::Summary if self.group != GroupBy::Op => None,
            View::InFlight => Some(&mut self.in_flight_sort),
            View::Summary => Some(&mut self.summary_sort),
            View::Detail => None,
        }
    }

    fn columns(&self) -> usize {
        match self.view {
            View::InFlight => InFlightColumn::ALL.len(),
            View::Summary => SummaryColumn::ALL.len(),
            View::Detail => 0,
        }
    }

    fn cycle_sort(&mut self) {
        let n = self.columns();
        if let Some(sort) = self.sort_mut() {
            *sort = SortState {
                column: (sort.column + 1) % n,
                reversed: false,
            };
        }
    }

    fn sort_by(&mut self, column: usize) {
        if column >= self.columns() {
            return;
        }
        if let Some(sort) = self.sort_mut() {
            // The same column again reverses it.
            *sort = SortState {
                column,
                reversed: sort.column == column && !sort.reversed,
            };
        }
    }

    fn cycle_mount(&mut self) {
        let conns = &self.shown.connections;
        self.mount = match self.mount {
            None => conns.first().map(|(c, _)| *c),
            Some(m) => conns
                .iter()
                .position(|(c, _)| *c == m)
                .and_then(|i| conns.get(i + 1))
                .map(|(c, _)| *c),
        };
        self.reset_selection();
    }

    /// A one-line description of the current sort, for the table title.
    pub fn sort_label(&self) -> String {
        let (title, reversed) = match self.view {
            View::InFlight => (
                match InFlightColumn::ALL[self.in_flight_sort.column] {
                    InFlightColumn::Age => "age, oldest first",
                    c => c.title(),
                }
                .to_lowercase(),
                self.in_flight_sort.reversed,
            ),
            View::Summary if self.group != GroupBy::Op => {
                return "sort: total time".to_string();
            }
            View::Summary => (
                SummaryColumn::ALL[self.summary_sort.column]
                    .title()
                    .to_string(),
                self.summary_sort.reversed,
            ),
            View::Detail => return String::new(),
        };
        if reversed {
            format!("sort: {title}, reversed")
        } else {
            format!("sort: {title}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snapshot holds one row per request in flight (100 000 and more).
    #[test]
    fn in_flight_rows_stay_small() {
        assert!(std::mem::size_of::<InFlightRow>() <= 144);
    }

    fn press(state: &mut TopState, c: char) {
        let key = KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        assert!(!state.handle_key(key));
    }

    #[test]
    fn the_files_key_in_kernel_mode_says_how_to_get_them() {
        let mut state = TopState::new(TopConfig::default()).with_kernel_tables();
        press(&mut state, 'b');
        assert_eq!((state.view, state.group), (View::Summary, GroupBy::Op));
        assert_eq!(state.notice, None);
        press(&mut state, 'b');
        assert_eq!(state.group, GroupBy::Op, "no per-file view from counts");
        let notice = state.notice.unwrap();
        assert!(
            notice.contains("--view files") && notice.contains("--events"),
            "{notice}"
        );
        // The next key clears it.
        press(&mut state, 's');
        assert_eq!(state.notice, None);
        // The event pipeline's top goes on to files.
        let mut events = TopState::new(TopConfig::default());
        press(&mut events, 'b');
        press(&mut events, 'b');
        assert_eq!(events.group, GroupBy::File);
        assert_eq!(events.notice, None);
    }

    #[test]
    fn a_slot_becomes_a_row_in_its_stage() {
        let sent = fusetrace_common::AggSent {
            ts_ns: 1_000,
            connection: 40,
            unique: 12,
            nodeid: 5,
            opcode: 15,
            requester_tgid: 300,
            header_pid: 301,
            ..Default::default()
        };
        let row = InFlightRow::from_slot(&sent, Some(Comm::new("cat")));
        assert_eq!(row.current_stage(), "queued");
        assert_eq!(
            (row.requester_pid, row.requester_tid),
            (Some(300), Some(301))
        );
        assert_eq!(row.file(), "node 5");
        assert_eq!(row.daemon_tid, None);
        let taken = fusetrace_common::AggSent {
            taken_ns: 1_500,
            daemon_tid: 77,
            ..sent
        };
        let row = InFlightRow::from_slot(&taken, None);
        assert_eq!(row.current_stage(), "in daemon");
        assert_eq!((row.daemon_tid, row.queue_wait_ns), (Some(77), Some(500)));
        assert_eq!(row.stage_since_ns, 1_500);
        let replied = fusetrace_common::AggSent {
            replied_ns: 2_000,
            ..taken
        };
        assert_eq!(
            InFlightRow::from_slot(&replied, None).current_stage(),
            "replying"
        );
        // A reply stamp without a take (out of order) is not a stage.
        let odd = fusetrace_common::AggSent {
            replied_ns: 2_000,
            ..sent
        };
        assert_eq!(InFlightRow::from_slot(&odd, None).current_stage(), "queued");
    }

    #[test]
    fn counted_cells_make_the_opcode_rows() {
        use fusetrace_common::{HistogramKey, agg_stage, latency_bucket};
        let cell = |opcode, ns, stage, error| HistogramKey {
            connection: 40,
            opcode,
            bucket: latency_bucket(ns),
            stage,
            error,
            generation: 0,
        };
        let mut state = TopState::new(TopConfig::default()).with_kernel_tables();
        let mut name = |c: u32| format!("/mnt/{c}");
        state.tick_rows(0, std::iter::empty(), RunCounters::default(), &mut name);
        state.count_cells(
            500_000_000,
            &[
                (cell(15, 20_000, agg_stage::TOTAL, 0), 40),
                (cell(15, 20_000, agg_stage::TOTAL, 5), 2),
                (cell(15, 12_000, agg_stage::DAEMON, 0), 42),
                (cell(1, 8_000, agg_stage::TOTAL, 0), 7),
            ],
        );
        state.tick_rows(
            1_000_000_000,
            std::iter::empty(),
            RunCounters::default(),
            &mut name,
        );
        let read = state.shown.ops.iter().find(|r| r.key == (40, 15)).unwrap();
        assert_eq!((read.count, read.errors), (42, 2));
        assert_eq!(read.stage(LatencyStage::DaemonService).samples, 42);
        let p50 = read.stage(LatencyStage::Total).p50_ns;
        assert!((19_000..=21_000).contains(&p50), "{p50}");
        assert_eq!(state.shown.ops.len(), 2);
        assert!(state.shown.request_rate > 0.0);
    }
}
