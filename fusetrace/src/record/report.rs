//! `fusetrace report`: the `stats` tables (and CSV) of one or more
//! recordings, offline.

use std::{cell::Cell, path::PathBuf, rc::Rc, time::Duration};

use anyhow::Result;

use super::replay::{MergedNames, ReplayTicks, add_summary, replay_file};
use crate::{
    output::accumulate::StatsOutput,
    output::export::{Clock, CsvOpts},
    output::print::{Format, StatsPrinter},
    output::sink::Sink,
    pipeline::session::RunSummary,
    units::parse_duration,
};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Recordings from `fusetrace record`; several are merged into one table.
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
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let clock = Rc::new(Cell::new(0));
    let csv = args
        .csv
        .writer(args.interval.is_some(), Clock::Replay(Rc::clone(&clock)))?;
    let ticks = args
        .interval
        .filter(|_| csv.is_some())
        .map(|every| ReplayTicks { every, clock });
    let printer = StatsPrinter::new(std::io::stdout().lock(), args.format, false);
    let mut sink = StatsOutput::printing(printer, csv);
    let mut merged = MergedNames::default();
    let mut total = RunSummary::default();
    for path in &args.files {
        let r = replay_file(path, &mut sink, &mut merged, ticks.as_ref())?;
        if let Some(at) = r.cut_off_at {
            eprintln!(
                "fusetrace: {} ends mid-record at byte {at} (cut off while recording): reporting its {} whole records",
                path.display(),
                r.records
            );
        }
        if !r.ended {
            eprintln!(
                "fusetrace: {} has no end record (the recording did not finish): its ring buffer drop and fault counts are unknown, shown as 0",
                path.display()
            );
        }
        add_summary(&mut total, &r.summary);
    }
    sink.finish(&total, &mut merged.names)
}
