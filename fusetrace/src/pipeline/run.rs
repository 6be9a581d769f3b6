//! The run loop's steps, written once and driven three ways: a live run
//! (`session`, events from the ring buffer), a replay (`record::replay`,
//! events from a file) and the consumer benchmark (`lab::bench_consumer`,
//! events from memory). Each event is admitted by the filter, shown to the
//! sink, named (`paths`) and joined (`tracker`); finished requests the
//! filter wants are counted and handed over; the run ends with one summary
//! ([`RunSummary::count_kernel`] for the kernel's part).
//!
//! The drivers differ only in where events and time come from, and in when
//! they report, tick and stop.

use anyhow::Result;
use fusetrace_common::FuseEvent;

use crate::{
    kernel::{decode::FileNames, hooks::Transport, layout::major_minor, probes::KernelCounters},
    pipeline::{
        connections::ConnectionTable,
        filter::Filter,
        lifecycle::RequestLifecycle,
        paths::PathBook,
        sink::{LiveView, Sink},
        summary::{Counting, RunSummary},
        tracker::{Tracker, TrackerConfig},
    },
};

/// One run's state between its events and its sink.
pub struct Run {
    pub filter: Filter,
    /// Connections named by their mount points.
    pub mounts: ConnectionTable,
    tracker: Tracker,
    paths: PathBook,
    /// Requests the tracker finished, not yet reported.
    finished: Vec<RequestLifecycle>,
    summary: RunSummary,
}

impl Run {
    pub fn new(filter: Filter, mounts: ConnectionTable, config: TrackerConfig) -> Run {
        Run {
            filter,
            mounts,
            tracker: Tracker::new(config),
            paths: PathBook::default(),
            finished: Vec::new(),
            summary: RunSummary::default(),
        }
    }

    /// One decoded event with the file names its send carried.
    pub fn event(
        &mut self,
        ev: &FuseEvent,
        names: Option<FileNames>,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        match self.filter.admit(ev) {
            (true, _) => {
                sink.event(ev, names.as_ref())?;
                self.paths.observe(ev, names, &mut self.mounts);
                self.tracker.observe(ev, &mut self.finished);
            }
            (false, Some(conn)) => {
                self.summary.mounts_gone += 1;
                log::warn!(
                    "{} was unmounted and a new mount took its connection number {}; the new mount is not traced",
                    self.mounts.name(conn),
                    major_minor(conn)
                );
            }
            (false, None) => {}
        }
        Ok(())
    }

    /// Nothing happened until `now_ns`: requests that waited their reorder
    /// window finish.
    pub fn idle(&mut self, now_ns: u64, sink: &mut dyn Sink) -> Result<()> {
        sink.idle(now_ns)?;
        self.tracker.advance(now_ns, &mut self.finished);
        Ok(())
    }

    /// Hands the finished requests the filter wants to the sink, counting them.
    pub fn report(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let summary = &mut self.summary;
        for mut rec in self.finished.drain(..) {
            // Every finished request, wanted or not: a FORGET drops its node.
            self.paths.name_finished(&mut rec, &mut self.mounts);
            if self.filter.wants(&rec) {
                summary.requests += 1;
                summary.fully_observed += u64::from(rec.fully_observed());
                summary.no_reply_expected += u64::from(!rec.expects_reply());
                if rec.transport == Some(Transport::IoUring) {
                    summary.io_uring.requests += 1;
                    if let Some(q) = rec.ring_queue {
                        *summary.io_uring.per_queue.entry(q).or_default() += 1;
                    }
                }
                sink.request(&rec, &mut self.mounts)?;
            }
        }
        Ok(())
    }

    /// Shows the live view what is in flight now.
    pub fn live(
        &mut self,
        sink: &mut dyn Sink,
        kernel: KernelCounters,
        undecodable: u64,
        last: bool,
    ) -> Result<()> {
        let live = LiveView {
            tracker: &self.tracker,
            paths: &self.paths,
            filter: &self.filter,
            kernel,
            undecodable,
            last,
        };
        sink.live(&live, &mut self.mounts)
    }

    /// An interval ended.
    pub fn tick(&mut self, sink: &mut dyn Sink) -> Result<()> {
        sink.tick(&mut self.mounts)
    }

    /// Requests in flight (all connections).
    pub fn in_flight(&self) -> u64 {
        self.tracker.in_flight_count() as u64
    }

    /// The latest event time the tracker has seen.
    pub fn watermark_ns(&self) -> u64 {
        self.tracker.watermark_ns()
    }

    /// No more events: finishes what can be, reports it, and returns the
    /// summary with the kernel's counters `k` in it. The caller hands it to
    /// `sink.finish` (a replay of several files adds theirs first).
    pub fn finish(
        &mut self,
        sink: &mut dyn Sink,
        k: &KernelCounters,
        undecodable: u64,
        counting: Counting,
    ) -> Result<RunSummary> {
        self.tracker.flush(&mut self.finished);
        self.report(sink)?;
        let mut summary = std::mem::take(&mut self.summary);
        summary.in_flight_at_exit = self
            .tracker
            .in_flight()
            .filter(|r| self.filter.wants(r))
            .count() as u64;
        summary.tracker = self.tracker.counters();
        summary.paths = self.paths.counters();
        summary.count_kernel(k, undecodable, counting);
        Ok(summary)
    }
}
