//! CSV export of the latency histograms (`stats --csv`, `report --csv`).
//!
//! The file is written under a temporary name in the same directory and
//! renamed when the run finishes, so a CSV under the asked-for name is
//! always complete (`output::file::AtomicFile`: 0600, no link followed, an
//! existing file replaced only with `--force`).

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    rc::Rc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

use crate::{
    output::accumulate::StatsWriter,
    output::file::{AtomicFile, Target},
    pipeline::connections::ConnectionTable,
    pipeline::lifecycle::LatencyStage,
    pipeline::opcode,
    pipeline::stats::Stats,
    pipeline::summary::RunSummary,
};

/// What one CSV row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CsvLayout {
    /// One row per mount, opcode and stage: count, errors and percentiles.
    Summary,
    /// One row per histogram bucket: enough to redraw the histogram exactly.
    Buckets,
}

/// `--csv FILE` and `--csv-layout`, shared by `stats` and `report`.
#[derive(clap::Args, Debug, Clone)]
pub struct CsvOpts {
    /// Also write the histograms as CSV to this file (see README: CSV columns).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Rows of the CSV: percentiles per stage, or every histogram bucket.
    #[arg(long, value_enum, default_value = "summary", requires = "csv")]
    pub csv_layout: CsvLayout,
}

impl CsvOpts {
    /// The CSV sink, when `--csv` was given; `per_interval` writes one
    /// block per tick; `force` replaces an existing file.
    pub fn writer(
        &self,
        per_interval: bool,
        clock: Clock,
        force: bool,
    ) -> Result<Option<Box<dyn StatsWriter>>> {
        self.csv
            .as_deref()
            .map(|p| {
                CsvWriter::create(p, self.csv_layout, per_interval, clock, force)
                    .map(|w| Box::new(w) as Box<dyn StatsWriter>)
            })
            .transpose()
    }
}

/// Where interval timestamps come from.
pub enum Clock {
    /// The wall clock (live runs).
    Wall,
    /// A replay's recorded time, set by the replay before each tick.
    Replay(Rc<Cell<u64>>),
}

impl Clock {
    pub fn now_unix_ns(&self) -> u64 {
        match self {
            Clock::Wall => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            Clock::Replay(t) => t.get(),
        }
    }
}

pub const SUMMARY_COLUMNS: [&str; 13] = [
    "mount", "opcode", "stage", "count", "errors", "samples", "min_ns", "mean_ns", "p50_ns",
    "p90_ns", "p99_ns", "p99_9_ns", "max_ns",
];
pub const BUCKET_COLUMNS: [&str; 6] = ["mount", "opcode", "stage", "lower_ns", "upper_ns", "count"];
pub const TIMESTAMP_COLUMN: &str = "timestamp_unix_ns";

/// A stage as JSON output names it (`queue_wait`, `daemon_service`, ...).
fn stage_name(stage: LatencyStage) -> String {
    serde_json::to_value(stage)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| stage.name().to_string())
}

/// Writes the histograms as CSV: the whole run at the end, or with
/// `per_interval` one block per interval, each row led by its end time.
/// Into a temporary file (`tempfile`: an unpredictable name, removed if the
/// run fails) next to the target, renamed when complete.
pub struct CsvWriter {
    layout: CsvLayout,
    per_interval: bool,
    clock: Clock,
    path: PathBuf,
    out: Option<csv::Writer<AtomicFile>>,
}

impl CsvWriter {
    /// Opens the temporary file next to `path` and writes the column names,
    /// so a bad path fails before anything is traced.
    pub fn create(
        path: &Path,
        layout: CsvLayout,
        per_interval: bool,
        clock: Clock,
        force: bool,
    ) -> Result<CsvWriter> {
        let file = AtomicFile::create(Target {
            path,
            what: "--csv",
            force,
        })?;
        let mut sink = CsvWriter {
            layout,
            per_interval,
            clock,
            path: path.to_path_buf(),
            out: Some(csv::Writer::from_writer(file)),
        };
        let mut head: Vec<&str> = Vec::new();
        if per_interval {
            head.push(TIMESTAMP_COLUMN);
        }
        head.extend(match layout {
            CsvLayout::Summary => &SUMMARY_COLUMNS[..],
            CsvLayout::Buckets => &BUCKET_COLUMNS[..],
        });
        sink.writer()?
            .write_record(&head)
            .map_err(|e| sink.error(e))?;
        Ok(sink)
    }

    fn writer(&mut self) -> Result<&mut csv::Writer<AtomicFile>> {
        self.out.as_mut().context("CSV file already finished")
    }

    fn error(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("cannot write --csv {}: {e}", self.path.display())
    }

    /// Writes one block of rows for `stats`.
    fn write_rows(
        &mut self,
        stats: &Stats,
        timestamp: Option<u64>,
        mounts: &mut ConnectionTable,
    ) -> Result<()> {
        let layout = self.layout;
        let path = self.path.clone();
        let out = self.writer()?;
        let mut row: Vec<String> = Vec::with_capacity(14);
        for ((conn, op), s) in &stats.ops {
            let mount = mounts.name(*conn);
            let op = opcode::name(*op);
            for stage in LatencyStage::ALL {
                let h = s.histogram(stage);
                let lead = |row: &mut Vec<String>| {
                    row.clear();
                    if let Some(t) = timestamp {
                        row.push(t.to_string());
                    }
                    row.extend([mount.clone(), op.clone(), stage_name(stage)]);
                };
                match layout {
                    CsvLayout::Summary => {
                        lead(&mut row);
                        row.extend([s.count, s.errors, h.len()].map(|v| v.to_string()));
                        if h.is_empty() {
                            // Never observed: empty cells, not a made-up 0.
                            row.extend(std::iter::repeat_n(String::new(), 7));
                        } else {
                            row.push(h.min().to_string());
                            row.push(format!("{:.1}", h.mean()));
                            for q in [0.50, 0.90, 0.99, 0.999] {
                                row.push(h.value_at_quantile(q).to_string());
                            }
                            row.push(h.max().to_string());
                        }
                        out.write_record(&row).map_err(|e| {
                            anyhow::anyhow!("cannot write --csv {}: {e}", path.display())
                        })?;
                    }
                    CsvLayout::Buckets => {
                        for v in h.iter_recorded() {
                            let value = v.value_iterated_to();
                            lead(&mut row);
                            row.push(h.lowest_equivalent(value).to_string());
                            row.push(h.highest_equivalent(value).to_string());
                            row.push(v.count_at_value().to_string());
                            out.write_record(&row).map_err(|e| {
                                anyhow::anyhow!("cannot write --csv {}: {e}", path.display())
                            })?;
                        }
                    }
                }
            }
        }
        out.flush()
            .map_err(|e| anyhow::anyhow!("cannot write --csv {}: {e}", path.display()))
    }

    /// Flushes to disk and gives the file its real name.
    fn complete(&mut self) -> Result<()> {
        let out = self.out.take().context("CSV file already finished")?;
        let file = out.into_inner().map_err(|e| self.error(e.error()))?;
        file.commit()?;
        log::info!("wrote {}", self.path.display());
        Ok(())
    }
}

impl StatsWriter for CsvWriter {
    fn per_interval(&self) -> bool {
        self.per_interval
    }

    fn interval(&mut self, stats: &Stats, mounts: &mut ConnectionTable) -> Result<()> {
        let now = self.clock.now_unix_ns();
        self.write_rows(stats, Some(now), mounts)
    }

    fn finish(
        &mut self,
        last: &Stats,
        total: &Stats,
        _summary: &RunSummary,
        mounts: &mut ConnectionTable,
    ) -> Result<()> {
        if !self.per_interval {
            self.write_rows(total, None, mounts)?;
        } else if !last.is_empty() {
            self.interval(last, mounts)?;
        }
        self.complete()
    }
}
