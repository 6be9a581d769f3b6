//! The one place a run's latency statistics are counted: per interval and
//! for the whole run, from finished requests (event pipeline) or from the
//! kernel's histogram growth (in-kernel `stats`). The writers on top (the
//! table or JSON printer, the CSV file) only write what it hands them, so
//! `stats --csv` builds every histogram once.

use anyhow::Result;

use crate::{
    pipeline::{connections::ConnectionTable, lifecycle::RequestLifecycle, summary::RunSummary},
    pipeline::{sink::Sink, stats::Stats},
};

/// Writes the statistics [`StatsOutput`] counted.
pub trait StatsWriter {
    /// Whether it writes a block per interval (then intervals are counted).
    fn per_interval(&self) -> bool;
    /// An interval ended with requests in it.
    fn interval(&mut self, stats: &Stats, mounts: &mut ConnectionTable) -> Result<()>;
    /// The run ended: `last` is the interval it cut short (maybe empty),
    /// `total` the whole run.
    fn finish(
        &mut self,
        last: &Stats,
        total: &Stats,
        summary: &RunSummary,
        mounts: &mut ConnectionTable,
    ) -> Result<()>;
}

/// A sink that counts once and hands the counts to every writer.
pub struct StatsOutput<'a> {
    interval: Stats,
    total: Stats,
    intervals: bool,
    writers: Vec<Box<dyn StatsWriter + 'a>>,
}

impl<'a> StatsOutput<'a> {
    /// What every command writes: a printer (table or JSON), and the CSV
    /// file when one was asked for (`export::CsvOpts::writer`).
    pub fn printing(printer: impl StatsWriter + 'a, csv: Option<Box<dyn StatsWriter>>) -> Self {
        let mut writers: Vec<Box<dyn StatsWriter + 'a>> = vec![Box::new(printer)];
        writers.extend(csv);
        StatsOutput::new(writers)
    }

    pub fn new(writers: Vec<Box<dyn StatsWriter + 'a>>) -> Self {
        StatsOutput {
            interval: Stats::default(),
            total: Stats::default(),
            intervals: writers.iter().any(|w| w.per_interval()),
            writers,
        }
    }
}

impl Sink for StatsOutput<'_> {
    fn request(&mut self, rec: &RequestLifecycle, _mounts: &mut ConnectionTable) -> Result<()> {
        self.total.record(rec);
        if self.intervals {
            self.interval.record(rec);
        }
        Ok(())
    }

    fn stats(&mut self, delta: &Stats) -> Result<()> {
        self.total.merge(delta);
        if self.intervals {
            self.interval.merge(delta);
        }
        Ok(())
    }

    fn tick(&mut self, mounts: &mut ConnectionTable) -> Result<()> {
        if self.interval.is_empty() {
            return Ok(());
        }
        for w in self.writers.iter_mut().filter(|w| w.per_interval()) {
            w.interval(&self.interval, mounts)?;
        }
        self.interval = Stats::default();
        Ok(())
    }

    fn finish(&mut self, summary: &RunSummary, mounts: &mut ConnectionTable) -> Result<()> {
        for w in &mut self.writers {
            w.finish(&self.interval, &self.total, summary, mounts)?;
        }
        Ok(())
    }
}
