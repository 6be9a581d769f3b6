//! `fusetrace report`: one or more recordings (files, or `-` for standard
//! input), offline: the `stats` tables (and CSV; or grouped `--by` file,
//! process...), one line per request (`--requests`, with report-time
//! filters), or a Perfetto trace (`--perfetto`).

use std::{
    cell::Cell,
    io::BufWriter,
    path::{Path, PathBuf},
    rc::Rc,
    time::Duration,
};

use anyhow::{Context, Result};

use super::replay::{self, Input, MergedNames, ReplayTicks, replay_chain};
use crate::{
    output::accumulate::StatsOutput,
    output::by::{ByOpts, GroupedPrinter},
    output::export::{Clock, CsvOpts},
    output::file::{AtomicFile, Force, Target},
    output::perfetto::PerfettoSink,
    output::print::{Format, StatsPrinter},
    output::trace::TraceSink,
    pipeline::sink::Sink,
    pipeline::{
        connections::ConnectionTable, lifecycle::RequestLifecycle, opcode, summary::RunSummary,
        tracker::TrackerConfig,
    },
    units::parse_duration,
};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Recordings from `fusetrace record`; several are merged into one
    /// table, and the files of one split recording (`record --max-size`)
    /// are joined into the run they were. `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub csv: CsvOpts,
    /// With --csv: one block of rows per interval of recorded time.
    #[arg(long, value_parser = parse_duration, requires = "csv")]
    pub interval: Option<Duration>,
    /// Also print log2 histograms of each opcode's latency per stage, in
    /// microseconds, as bpftrace's hist() draws them.
    #[arg(long, conflicts_with_all = ["requests", "perfetto"])]
    pub hist: bool,
    /// One line per request, as `trace` prints them (`perf script` for
    /// recordings), instead of the tables; narrowed by the options below.
    #[arg(long, conflicts_with_all = ["csv", "interval", "by", "top", "sort"])]
    pub requests: bool,
    #[command(flatten)]
    pub select: Selection,
    /// Write the recordings as a Perfetto trace (protobuf) to this file,
    /// for ui.perfetto.dev: requests as slices on their threads' tracks
    /// with their stages, the daemon's service on its threads' tracks,
    /// flows between them, and per mount requests in flight and per second.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["csv", "interval", "requests", "by", "top", "sort"])]
    pub perfetto: Option<PathBuf>,
    #[command(flatten)]
    pub by: ByOpts,
    #[command(flatten)]
    pub force: Force,
}

/// `report --requests`' filters, applied to finished requests.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Selection {
    /// Only requests made by this process or thread id (repeatable).
    #[arg(long = "pid", requires = "requests")]
    pub pids: Vec<u32>,
    /// Only this opcode, e.g. READ (repeatable).
    #[arg(long = "op", value_name = "OPCODE", value_parser = opcode::parse, requires = "requests")]
    pub ops: Vec<u32>,
    /// Only requests of the mount recorded at this path (repeatable).
    #[arg(long = "mount", value_name = "PATH", requires = "requests")]
    pub mounts: Vec<PathBuf>,
    /// Only requests that took at least this long (send to end), e.g. 10ms.
    #[arg(long, value_parser = parse_duration, requires = "requests")]
    pub min: Option<Duration>,
    /// Only requests that began at least this far into their recording, e.g. 2.5s.
    #[arg(long, value_parser = parse_duration, requires = "requests")]
    pub since: Option<Duration>,
    /// Only requests that began before this far into their recording.
    #[arg(long, value_parser = parse_duration, requires = "requests")]
    pub until: Option<Duration>,
}

impl Selection {
    /// Whether `rec`, of a recording that started at `origin_ns`, is wanted.
    pub fn wants(&self, rec: &RequestLifecycle, origin_ns: u64, mounts: &ConnectionTable) -> bool {
        let began = rec.first_seen_ns().saturating_sub(origin_ns);
        (self.pids.is_empty()
            || [rec.requester_pid, rec.requester_tid]
                .iter()
                .any(|p| p.is_some_and(|p| self.pids.contains(&p))))
            && (self.ops.is_empty() || self.ops.contains(&rec.opcode))
            && (self.mounts.is_empty()
                || mounts
                    .get(rec.connection)
                    .is_some_and(|m| self.mounts.contains(&m.mount_point)))
            && self.min.is_none_or(|min| {
                rec.latency(crate::pipeline::lifecycle::LatencyStage::Total)
                    .is_some_and(|t| t >= min.as_nanos() as u64)
            })
            && self.since.is_none_or(|s| began >= s.as_nanos() as u64)
            && self.until.is_none_or(|u| began < u.as_nanos() as u64)
    }
}

/// A sink that hands on only the requests a [`Selection`] wants.
struct Selected<'a, S> {
    inner: S,
    select: &'a Selection,
    /// The start of the recording being replayed.
    origin_ns: &'a Cell<u64>,
}

impl<S: Sink> Sink for Selected<'_, S> {
    fn request(&mut self, rec: &RequestLifecycle, mounts: &mut ConnectionTable) -> Result<()> {
        if self.select.wants(rec, self.origin_ns.get(), mounts) {
            self.inner.request(rec, mounts)?;
        }
        Ok(())
    }

    fn finish(&mut self, summary: &RunSummary, mounts: &mut ConnectionTable) -> Result<()> {
        self.inner.finish(summary, mounts)
    }
}

pub fn run(args: &ReportArgs) -> Result<()> {
    if args.requests {
        return run_requests(args);
    }
    if let Some(out) = &args.perfetto {
        return to_perfetto(&args.files, out, args.force.force);
    }
    let inputs = replay::chains(replay::open_inputs(&args.files)?);
    if let Some(grouping) = args.by.grouping(false) {
        let mut sink = GroupedPrinter::new(std::io::stdout().lock(), args.format, false, grouping);
        let (mut merged, total) = replay_all(inputs, &mut sink, None, &Cell::new(0))?;
        return sink.finish(&total, &mut merged.names);
    }
    let clock = Rc::new(Cell::new(0));
    let csv = args.csv.writer(
        args.interval.is_some(),
        Clock::Replay(Rc::clone(&clock)),
        args.force.force,
    )?;
    let ticks = args
        .interval
        .filter(|_| csv.is_some())
        .map(|every| ReplayTicks { every, clock });
    let printer =
        StatsPrinter::new(std::io::stdout().lock(), args.format, false).with_hist(args.hist);
    let mut sink = StatsOutput::printing(printer, csv);
    let (mut merged, total) = replay_all(inputs, &mut sink, ticks.as_ref(), &Cell::new(0))?;
    sink.finish(&total, &mut merged.names)
}

/// Replays every recording ([`replay::chains`]) into `sink`, saying what each one lacks, and
/// returns the merged names and summary (`sink.finish` is the caller's).
/// `origin` is set to each recording's start before it is replayed.
fn replay_all(
    inputs: Vec<Vec<Input>>,
    sink: &mut dyn Sink,
    ticks: Option<&ReplayTicks>,
    origin: &Cell<u64>,
) -> Result<(MergedNames, RunSummary)> {
    let mut merged = MergedNames::default();
    let mut total = RunSummary::default();
    for mut chain in inputs {
        origin.set(chain[0].header.start_monotonic_ns);
        warn_later_part(&chain[0]);
        let r = replay_chain(&mut chain, sink, &mut merged, ticks)?;
        warn_incomplete(&r);
        total.add(&r.summary);
    }
    Ok((merged, total))
}

/// A split recording given from a later part on.
fn warn_later_part(first: &Input) {
    if let Some(p) = first.header.part.filter(|p| p.index > 0) {
        log::warn!(
            "{} is part {} of a split recording (record --max-size) given without the part before it: requests begun there are incomplete here",
            first.name(),
            p.index
        );
    }
}

fn warn_incomplete(r: &replay::Replayed) {
    for (name, at, records) in &r.cut_off {
        log::warn!(
            "{name} ends mid-record at byte {at} (cut off while recording): reporting its {records} whole records"
        );
    }
    if !r.ended {
        log::warn!(
            "{} has no end record (the recording did not finish{}): its ring buffer drop and fault counts are unknown, shown as 0",
            r.last,
            if r.header.part.is_some() {
                ", or went on in a later part not given"
            } else {
                ""
            }
        );
    }
}

/// `report --requests`: the selected requests, one line each.
fn run_requests(args: &ReportArgs) -> Result<()> {
    // Text lines give seconds since the first recording's start.
    let inputs = replay::chains(replay::open_inputs(&args.files)?);
    let first = inputs[0][0].header.start_monotonic_ns;
    let origin = Cell::new(first);
    let out = BufWriter::new(std::io::stdout().lock());
    let mut sink = Selected {
        inner: TraceSink::new(out, args.format, first),
        select: &args.select,
        origin_ns: &origin,
    };
    let (mut merged, total) = replay_all(inputs, &mut sink, None, &origin)?;
    sink.finish(&total, &mut merged.names)
}

/// Converts recordings to a Perfetto trace at `out` (replaced only with
/// `force`); says what it wrote.
pub fn to_perfetto(files: &[PathBuf], out: &Path, force: bool) -> Result<()> {
    // Every input is checked before the output is created, and the output
    // gets its name only when complete: a bad file leaves nothing behind.
    let inputs = replay::chains(replay::open_inputs(files)?);
    let app_writes = inputs
        .iter()
        .flatten()
        .any(|i| replay::has_app_writes(&i.header));
    let file = AtomicFile::create(Target {
        path: out,
        what: "Perfetto trace",
        force,
    })?;
    let mut sink = PerfettoSink::new(
        BufWriter::with_capacity(1 << 16, file),
        TrackerConfig::default().reorder_window_ns,
        app_writes,
    );
    let (mut merged, total) = replay_all(inputs, &mut sink, None, &Cell::new(0))?;
    sink.finish(&total, &mut merged.names)
        .with_context(|| format!("cannot write Perfetto trace {}", out.display()))?;
    let c = sink.counts;
    sink.into_inner()
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write Perfetto trace {}", out.display()))?
        .commit()?;
    log::info!(
        "wrote {} requests as slices to {}{}",
        c.slices,
        out.display(),
        if c.not_drawn > 0 {
            format!(
                "; {} not drawn (their send or end is not in the recording: begun before it, never ended, or FORGET)",
                c.not_drawn
            )
        } else {
            String::new()
        }
    );
    if c.app_writes > 0 {
        log::info!(
            "{} application writes drawn, {} of them linked to the WRITE requests that carried their bytes",
            c.app_writes,
            c.app_writes_linked
        );
    }
    total.tell();
    Ok(())
}
