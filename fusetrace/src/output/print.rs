//! The stats table's printer, the output formats and the closing summary
//! every printing sink writes (`trace`'s lines are in `output::trace`).

use std::io::Write;

use anyhow::Result;

use crate::{
    output::{accumulate::StatsWriter, export::Clock, hist},
    pipeline::connections::ConnectionTable,
    pipeline::stats::Stats,
    pipeline::summary::RunSummary,
};

/// Output format of `trace` and `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    /// One JSON object per line.
    Json,
}

/// The closing summary: a `{"type": "summary", "summary": ...}` line in
/// JSON output, and the human line on stderr either way (nothing lost goes
/// unsaid).
pub(crate) fn write_summary(
    out: &mut impl Write,
    format: Format,
    summary: &RunSummary,
) -> Result<()> {
    if format == Format::Json {
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({ "type": "summary", "summary": summary }),
        )?;
        writeln!(out)?;
    }
    out.flush()?;
    summary.tell();
    Ok(())
}

/// The heading of a stats period in a text table: `--- interval
/// 2026-12-07T04:31:07Z ---` (the wall-clock time it was written, when a
/// clock says it).
pub(crate) fn period_heading(which: &str, at_unix_ns: Option<u64>) -> String {
    let at = at_unix_ns
        .and_then(|ns| time::OffsetDateTime::from_unix_timestamp_nanos(ns.into()).ok())
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    match at {
        Some(at) => format!("--- {which} {at} ---"),
        None => format!("--- {which} ---"),
    }
}

/// `fusetrace stats`: per-opcode latency table every interval and at exit.
/// Prints the statistics as tables or JSON lines: every interval (when
/// `per_interval`) and the whole run with the closing summary.
pub struct StatsPrinter<W: Write> {
    out: W,
    format: Format,
    per_interval: bool,
    /// Also the log2 histograms (`--hist`).
    hist: bool,
    /// Where a JSON line's `timestamp_unix_ns` comes from (none: a
    /// replay's whole run, whose time is the recording's).
    clock: Option<Clock>,
}

impl<W: Write> StatsPrinter<W> {
    pub fn new(out: W, format: Format, per_interval: bool) -> Self {
        StatsPrinter {
            out,
            format,
            per_interval,
            hist: false,
            clock: None,
        }
    }

    /// JSON lines carry the time `clock` reads when they are written.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// With `--hist`: the log2 histograms after each table (in JSON, a
    /// `hist` list beside `ops`).
    pub fn with_hist(mut self, hist: bool) -> Self {
        self.hist = hist;
        self
    }

    fn print(&mut self, which: &str, stats: &Stats, mounts: &mut ConnectionTable) -> Result<()> {
        let mut name = |c| mounts.name(c);
        match self.format {
            Format::Json => {
                let mut v = serde_json::json!({
                    "type": "stats",
                    "period": which,
                    "timestamp_unix_ns": self.clock.as_ref().map(Clock::now_unix_ns),
                    "ops": stats.summaries(&mut name),
                });
                if self.hist {
                    v["hist"] = serde_json::to_value(hist::stage_hists(stats, &mut name))?;
                }
                serde_json::to_writer(&mut self.out, &v)?;
                writeln!(self.out)?;
            }
            Format::Text => {
                let at = self.clock.as_ref().map(Clock::now_unix_ns);
                writeln!(self.out, "{}", period_heading(which, at))?;
                write!(self.out, "{}", stats.render_table(&mut name))?;
                if self.hist {
                    write!(
                        self.out,
                        "{}",
                        hist::render(&hist::stage_hists(stats, &mut name))
                    )?;
                }
            }
        }
        self.out.flush()?;
        Ok(())
    }
}

impl<W: Write> StatsWriter for StatsPrinter<W> {
    fn per_interval(&self) -> bool {
        self.per_interval
    }

    fn interval(&mut self, stats: &Stats, mounts: &mut ConnectionTable) -> Result<()> {
        self.print("interval", stats, mounts)
    }

    fn finish(
        &mut self,
        _last: &Stats,
        total: &Stats,
        summary: &RunSummary,
        mounts: &mut ConnectionTable,
    ) -> Result<()> {
        self.print("whole run", total, mounts)?;
        write_summary(&mut self.out, self.format, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_heading_carries_its_time_when_known() {
        assert_eq!(
            period_heading("interval", Some(1_796_617_867_123_456_789)),
            "--- interval 2026-12-07T04:31:07Z ---"
        );
        assert_eq!(period_heading("whole run", None), "--- whole run ---");
    }
}
