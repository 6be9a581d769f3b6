//! `fusetrace diagnose`: why is a FUSE mount slow, and what to change?
//! For each mount, the findings that apply (`finding`, one rule per known
//! cause in `rules`), worst first, each with its numbers and its knob; and
//! the writeback-or-write-through verdict (`analysis`). Measured, not
//! guessed; the same from a recording as live.

pub mod analysis;
pub mod finding;
pub mod rules;
pub mod watch;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use fusetrace_common::{EventKind, FuseEvent};

use crate::kernel::decode::FileNames;
use crate::{
    kernel::hooks::{Backend, Point},
    kernel::probes::{ProbeOptions, Probes},
    output::print::Format,
    pipeline::connections::{ConnectionTable, connection_of},
    pipeline::lifecycle::RequestLifecycle,
    pipeline::session::{self, StopWhen},
    pipeline::sink::Sink,
    pipeline::{filter::Filter, summary::RunSummary},
    record::replay::{MergedNames, chains, has_app_writes, open_inputs, replay_chain},
    units::parse_duration,
};
use analysis::{Diagnosis, Evidence};
use finding::{UringOffer, sort_worst_first};
use watch::Watch;

#[derive(clap::Args, Debug, Clone)]
pub struct DiagnoseArgs {
    /// Only the FUSE mount at this path (repeatable; default: every FUSE mount).
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<PathBuf>,
    /// Observe this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Diagnose recordings (`fusetrace record --app-writes -o FILE`) instead
    /// of the live system.
    #[arg(long = "from", value_name = "FILE", conflicts_with_all = ["mounts", "duration"])]
    pub from: Vec<PathBuf>,
    /// Output format; json: one JSON object, `{"diagnoses": [one per
    /// connection]}`, each with its `findings` (stable `id`, `weight`,
    /// `summary`, `evidence`, `knob`, `expect`) and the write counts.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Same as `--format json`.
    #[arg(long, hide = true)]
    pub json: bool,
}

impl DiagnoseArgs {
    fn json(&self) -> bool {
        self.json || self.format == Format::Json
    }
}

/// Feeds finished requests and events to the writeback evidence and to
/// the rules.
struct DiagnoseSink {
    evidence: Evidence,
    watch: Watch,
    json: bool,
}

impl DiagnoseSink {
    fn new(io_uring: Option<UringOffer>, json: bool) -> Self {
        DiagnoseSink {
            evidence: Evidence::default(),
            watch: Watch::new(io_uring),
            json,
        }
    }

    /// One diagnosis per connection seen, each with its findings.
    fn conclude(&self, mounts: &mut ConnectionTable) -> Vec<Diagnosis> {
        let mut diagnoses = self.evidence.conclude(&mut |c| mounts.name(c));
        for d in &mut diagnoses {
            let Some(facts) = self.watch.facts(d.connection) else {
                continue;
            };
            d.limits = facts.limits;
            d.io_uring = facts.io_uring;
            d.findings = self.watch.conclude(&facts);
            d.findings.extend(rules::writeback::finding(d, &facts));
            sort_worst_first(&mut d.findings);
        }
        diagnoses
    }
}

impl Sink for DiagnoseSink {
    fn request(&mut self, rec: &RequestLifecycle, _mounts: &mut ConnectionTable) -> Result<()> {
        self.evidence.request(rec);
        self.watch.request(rec);
        Ok(())
    }

    fn event(&mut self, ev: &FuseEvent, _names: Option<&FileNames>) -> Result<()> {
        if ev.kind == EventKind::AppWrite as u8 {
            self.evidence.app_write(ev);
        }
        self.watch.event(ev);
        Ok(())
    }

    fn finish(&mut self, summary: &RunSummary, mounts: &mut ConnectionTable) -> Result<()> {
        let diagnoses = self.conclude(mounts);
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "type": "diagnosis", "diagnoses": diagnoses })
            )?;
        } else {
            write!(out, "{}", render(&diagnoses))?;
        }
        out.flush()?;
        summary.tell();
        Ok(())
    }
}

/// The human report: per mount, the findings worst first (each with its
/// knob and what to expect), then the write mode and its numbers.
pub fn render(diagnoses: &[Diagnosis]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if diagnoses.is_empty() {
        out.push_str("no FUSE traffic seen: nothing to diagnose\n");
    }
    for d in diagnoses {
        let _ = writeln!(out, "mount {}", d.mount);
        if d.findings.is_empty() {
            let _ = writeln!(
                out,
                "  no finding: nothing known to slow a FUSE mount was seen"
            );
        }
        for (i, f) in d.findings.iter().enumerate() {
            let _ = writeln!(out, "  {}. [{}] {}", i + 1, f.id.name(), f.summary);
            let _ = writeln!(out, "     knob: {}", f.knob);
            let _ = writeln!(out, "     expect: {}", f.expect);
        }
        let _ = writeln!(out, "  {}", d.verdict);
        // The write counts, where there were writes to count.
        if d.app_writes.count == 0 && d.write_requests.count == 0 && d.read_requests == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "  app writes {} ({} bytes); WRITE requests {} ({} bytes, {} flagged page-cache writeback); READ requests {} ({} caused by writes); FLUSH {} FSYNC {}; opens direct-io {} cached {}; unmatched app writes {}",
            d.app_writes.count,
            d.app_writes.total_bytes,
            d.write_requests.count,
            d.write_requests.total_bytes,
            d.writeback_write_requests,
            d.read_requests,
            d.reads_caused_by_writes,
            d.flushes,
            d.fsyncs,
            d.direct_io_opens,
            d.cached_opens,
            d.app_writes_unmatched,
        );
    }
    out
}

pub fn run(args: &DiagnoseArgs) -> Result<()> {
    if !args.from.is_empty() {
        return run_from_recordings(args);
    }
    let filter = Filter {
        connections: args
            .mounts
            .iter()
            .map(|m| connection_of(m))
            .collect::<Result<_>>()?,
        ..Filter::default()
    };
    let stop = StopWhen::on_signals(args.duration)?;
    let mut probes = Probes::attach(&ProbeOptions {
        diagnose: true,
        ..ProbeOptions::default()
    })?;
    // Request arguments (sizes, offsets, reply flags) come from the BTF
    // tracepoints; other backends leave them out.
    let args_seen = probes
        .choices
        .iter()
        .filter(|c| matches!(c.point, Point::Sent | Point::Ended))
        .all(|c| c.hook.is_some_and(|h| h.backend == Backend::TpBtf));
    log::info!(
        "tracing for diagnosis ({}); Ctrl-C to stop",
        probes.describe().join("; ")
    );
    if !args_seen {
        log::warn!(
            "this kernel's hooks do not read request arguments: WRITE sizes, offsets and open flags will be missing"
        );
    }
    let mut sink = DiagnoseSink::new(Some(UringOffer::read()), args.json());
    session::run(
        &mut probes,
        &filter,
        &mut sink,
        &stop,
        Duration::from_secs(1),
    )?;
    Ok(())
}

/// The same diagnosis from recordings: their events replayed through the
/// tracker into the same evidence.
fn run_from_recordings(args: &DiagnoseArgs) -> Result<()> {
    // The io_uring offer of the recorded machine (the first file's), read
    // from the headers before the replay.
    let inputs = open_inputs(&args.from)?;
    let io_uring = inputs.iter().find_map(|i| i.header.fuse_io_uring);
    let mut sink = DiagnoseSink::new(io_uring, args.json());
    let mut merged = MergedNames::default();
    let mut total = RunSummary::default();
    for mut chain in chains(inputs) {
        let r = replay_chain(&mut chain, &mut sink, &mut merged, None)?;
        if !has_app_writes(&r.header) {
            log::warn!(
                "{} was recorded without --app-writes: the applications' side of the writes is missing",
                chain[0].name()
            );
        }
        total.add(&r.summary);
    }
    sink.finish(&total, &mut merged.names)
}
