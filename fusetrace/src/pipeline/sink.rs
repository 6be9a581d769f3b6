//! What the run loop hands its results to: the [`Sink`] trait every output
//! implements (outputs depend on the pipeline, never the other way), what a
//! live view is shown ([`LiveView`]), and [`FanOut`], one sink that hands
//! everything to several (the stats table and a recording, say).

use anyhow::Result;
use fusetrace_common::FuseEvent;

use crate::{
    kernel::{decode::FileNames, probes::KernelCounters},
    pipeline::{
        connections::ConnectionTable, filter::Filter, lifecycle::RequestLifecycle, paths::PathBook,
        stats::Stats, summary::RunSummary, tracker::Tracker,
    },
};

/// The run as it is now: requests still in flight and the loss counters.
pub struct LiveView<'a> {
    pub tracker: &'a Tracker,
    /// Paths of the requests in flight.
    pub paths: &'a PathBook,
    pub filter: &'a Filter,
    pub kernel: KernelCounters,
    /// Records the decoder rejected so far.
    pub undecodable: u64,
    /// The last call, after everything was drained (a view draws it even
    /// when a frame is not due).
    pub last: bool,
}

impl LiveView<'_> {
    /// Requests not yet ended that the filter wants, with their paths.
    pub fn in_flight(&self) -> impl Iterator<Item = RequestLifecycle> {
        let paths = self.paths;
        self.tracker
            .in_flight()
            .filter(|r| self.filter.wants(r))
            .map(|mut r| {
                r.path = paths.path_of(&r);
                r
            })
    }
}

/// A consumer of a run's results: every output (trace lines, stats, CSV,
/// Perfetto, a recording, the live view, diagnosis) is one.
///
/// The run loop calls, in this order over a run: [`Sink::event`] for each
/// decoded event it takes (before the tracker sees it), [`Sink::request`]
/// for each finished request the filter wants, [`Sink::stats`] with the
/// latencies the kernel counted itself (in-kernel `stats`, instead of
/// requests), [`Sink::idle`] when the ring buffer was empty,
/// [`Sink::live`] then [`Sink::tick`] every interval, and [`Sink::finish`]
/// once with the summary. `mounts` names connections by their mount
/// points; a sink may look new ones up in it.
pub trait Sink {
    /// A finished request the filter wants.
    fn request(&mut self, rec: &RequestLifecycle, mounts: &mut ConnectionTable) -> Result<()>;
    /// An interval ended (every `--interval`, or the replay's recorded time).
    fn tick(&mut self, _mounts: &mut ConnectionTable) -> Result<()> {
        Ok(())
    }
    /// The run ended; nothing follows.
    fn finish(&mut self, summary: &RunSummary, mounts: &mut ConnectionTable) -> Result<()>;
    /// Called just before every `tick` with what is still going on, for
    /// live views (`fusetrace top`), and once more at the end.
    fn live(&mut self, _live: &LiveView, _mounts: &mut ConnectionTable) -> Result<()> {
        Ok(())
    }
    /// Every decoded event of a wanted connection, with the file names its
    /// send carried, before the tracker sees it (the recorder writes these).
    fn event(&mut self, _ev: &FuseEvent, _names: Option<&FileNames>) -> Result<()> {
        Ok(())
    }
    /// The pipeline was idle and advanced the tracker's clock to `now_ns`.
    fn idle(&mut self, _now_ns: u64) -> Result<()> {
        Ok(())
    }
    /// Latencies counted in the kernel since the last call (in-kernel
    /// aggregation: no requests are handed over one by one).
    fn stats(&mut self, _delta: &Stats) -> Result<()> {
        Ok(())
    }
}

/// Calls every sink in order; the first error stops the call.
pub struct FanOut<'a> {
    pub sinks: Vec<&'a mut dyn Sink>,
}

impl Sink for FanOut<'_> {
    fn request(&mut self, rec: &RequestLifecycle, mounts: &mut ConnectionTable) -> Result<()> {
        self.sinks
            .iter_mut()
            .try_for_each(|s| s.request(rec, mounts))
    }

    fn tick(&mut self, mounts: &mut ConnectionTable) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.tick(mounts))
    }

    fn finish(&mut self, summary: &RunSummary, mounts: &mut ConnectionTable) -> Result<()> {
        self.sinks
            .iter_mut()
            .try_for_each(|s| s.finish(summary, mounts))
    }

    fn live(&mut self, live: &LiveView, mounts: &mut ConnectionTable) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.live(live, mounts))
    }

    fn event(&mut self, ev: &FuseEvent, names: Option<&FileNames>) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.event(ev, names))
    }

    fn idle(&mut self, now_ns: u64) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.idle(now_ns))
    }

    fn stats(&mut self, delta: &Stats) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.stats(delta))
    }
}
