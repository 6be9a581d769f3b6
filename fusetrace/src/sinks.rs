//! Sinks for finished requests: the line trace and the stats table.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::{
    connections::ConnectionTable,
    opcode,
    session::{RunSummary, Sink},
    stats::Stats,
    tracker::{ExtraStage, LatencyStage, RequestLifecycle},
};

/// Output format of `trace` and `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    /// One JSON object per line.
    Json,
}

fn micros(ns: Option<u64>) -> String {
    match ns {
        Some(ns) => format!("{:.1}", ns as f64 / 1000.0),
        None => "-".to_string(),
    }
}

/// The closing summary: a `{"summary": ...}` line in JSON output, and the
/// human line on stderr either way (nothing lost goes unsaid).
fn write_summary(out: &mut impl Write, format: Format, summary: &RunSummary) -> Result<()> {
    if format == Format::Json {
        serde_json::to_writer(&mut *out, &serde_json::json!({ "summary": summary }))?;
        writeln!(out)?;
    }
    out.flush()?;
    eprintln!("fusetrace: {}", summary.render());
    Ok(())
}

/// A finished request as `trace --format json` prints it.
#[derive(Serialize)]
struct TraceRecord<'a> {
    mount: String,
    op: String,
    #[serde(flatten)]
    rec: &'a RequestLifecycle,
    queue_ns: Option<u64>,
    daemon_ns: Option<u64>,
    complete_ns: Option<u64>,
    total_ns: Option<u64>,
    /// Stages only some requests have (background wait, virtio-fs).
    bg_wait_ns: Option<u64>,
    virtqueue_ns: Option<u64>,
    device_ns: Option<u64>,
}

/// `fusetrace trace`: one line per finished request.
pub struct TraceSink<W: Write> {
    out: W,
    format: Format,
    start_ns: u64,
    header_done: bool,
}

impl<W: Write> TraceSink<W> {
    pub fn new(out: W, format: Format, start_ns: u64) -> Self {
        TraceSink {
            out,
            format,
            start_ns,
            header_done: false,
        }
    }
}

impl<W: Write> Sink for TraceSink<W> {
    fn request(&mut self, rec: &RequestLifecycle, names: &mut ConnectionTable) -> Result<()> {
        match self.format {
            Format::Json => {
                let line = TraceRecord {
                    mount: names.name(rec.connection),
                    op: opcode::name(rec.opcode),
                    rec,
                    queue_ns: rec.latency(LatencyStage::QueueWait),
                    daemon_ns: rec.latency(LatencyStage::DaemonService),
                    complete_ns: rec.latency(LatencyStage::Completion),
                    total_ns: rec.latency(LatencyStage::Total),
                    bg_wait_ns: rec.extra_latency(ExtraStage::BackgroundWait),
                    virtqueue_ns: rec.extra_latency(ExtraStage::Virtqueue),
                    device_ns: rec.extra_latency(ExtraStage::Device),
                };
                serde_json::to_writer(&mut self.out, &line)?;
                writeln!(self.out)?;
            }
            Format::Text => {
                if !self.header_done {
                    writeln!(
                        self.out,
                        "{:<12} {:<20} {:<12} {:>8} {:>8} {:>7} {:<15} {:>7} {:>10} {:>10} {:>10} {:>10} {:>6}",
                        "TIME(s)",
                        "MOUNT",
                        "OP",
                        "UNIQUE",
                        "NODE",
                        "PID",
                        "COMM",
                        "DAEMON",
                        "QUEUE_us",
                        "DAEMON_us",
                        "COMPL_us",
                        "TOTAL_us",
                        "ERR"
                    )?;
                    self.header_done = true;
                }
                let t = rec.first_seen_ns().saturating_sub(self.start_ns) as f64 / 1e9;
                let opt = |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
                let mut op = opcode::name(rec.opcode);
                if rec.interrupted {
                    op.push('!');
                }
                writeln!(
                    self.out,
                    "{:<12.6} {:<20} {:<12} {:>8} {:>8} {:>7} {:<15} {:>7} {:>10} {:>10} {:>10} {:>10} {:>6}",
                    t,
                    names.name(rec.connection),
                    op,
                    rec.unique,
                    rec.nodeid
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into()),
                    opt(rec.requester_pid.or(rec.requester_tid)),
                    rec.requester_comm.as_deref().unwrap_or("-"),
                    opt(rec.daemon_tid),
                    micros(rec.latency(LatencyStage::QueueWait)),
                    micros(rec.latency(LatencyStage::DaemonService)),
                    micros(rec.latency(LatencyStage::Completion)),
                    micros(rec.latency(LatencyStage::Total)),
                    rec.error
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "-".into()),
                )?;
            }
        }
        Ok(())
    }

    fn tick(&mut self, _names: &mut ConnectionTable) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }

    fn finish(&mut self, summary: &RunSummary, _names: &mut ConnectionTable) -> Result<()> {
        write_summary(&mut self.out, self.format, summary)
    }
}

/// `fusetrace stats`: per-opcode latency table every interval and at exit.
pub struct StatsSink<W: Write> {
    out: W,
    format: Format,
    /// Print a table for every interval (`tick`), not only at exit.
    pub per_interval: bool,
    interval: Stats,
    pub total: Stats,
}

impl<W: Write> StatsSink<W> {
    pub fn new(out: W, format: Format, per_interval: bool) -> Self {
        StatsSink {
            out,
            format,
            per_interval,
            interval: Stats::default(),
            total: Stats::default(),
        }
    }

    fn print(
        &mut self,
        which: &str,
        stats_is_total: bool,
        names: &mut ConnectionTable,
    ) -> Result<()> {
        let stats = if stats_is_total {
            &self.total
        } else {
            &self.interval
        };
        let mut name = |c| names.name(c);
        match self.format {
            Format::Json => {
                serde_json::to_writer(
                    &mut self.out,
                    &serde_json::json!({ "period": which, "ops": stats.summaries(&mut name) }),
                )?;
                writeln!(self.out)?;
            }
            Format::Text => {
                writeln!(self.out, "--- {which} ---")?;
                write!(self.out, "{}", stats.render_table(&mut name))?;
            }
        }
        self.out.flush()?;
        Ok(())
    }
}

impl<W: Write> Sink for StatsSink<W> {
    fn request(&mut self, rec: &RequestLifecycle, _names: &mut ConnectionTable) -> Result<()> {
        self.total.record(rec);
        if self.per_interval {
            self.interval.record(rec);
        }
        Ok(())
    }

    fn tick(&mut self, names: &mut ConnectionTable) -> Result<()> {
        if self.per_interval && !self.interval.is_empty() {
            self.print("interval", false, names)?;
            self.interval = Stats::default();
        }
        Ok(())
    }

    fn finish(&mut self, summary: &RunSummary, names: &mut ConnectionTable) -> Result<()> {
        self.print("whole run", true, names)?;
        write_summary(&mut self.out, self.format, summary)
    }
}
