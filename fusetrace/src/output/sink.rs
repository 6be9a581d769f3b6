//! What the run loop hands its results to: the [`Sink`] trait every output
//! implements, and [`FanOut`], one sink that hands everything to several
//! (the stats table and a recording, say).

use anyhow::Result;
use fusetrace_common::FuseEvent;

use crate::{
    output::stats::Stats,
    pipeline::{
        connections::ConnectionTable,
        lifecycle::RequestLifecycle,
        session::{LiveView, RunSummary},
    },
    record::format::Names,
};

/// A consumer of finished requests.
pub trait Sink {
    fn request(&mut self, rec: &RequestLifecycle, names: &mut ConnectionTable) -> Result<()>;
    /// Called about every `tick` with the time since start.
    fn tick(&mut self, _names: &mut ConnectionTable) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self, summary: &RunSummary, names: &mut ConnectionTable) -> Result<()>;
    /// Called just before every `tick` with what is still going on, for
    /// live views (`fusetrace top`).
    fn live(&mut self, _live: &LiveView, _names: &mut ConnectionTable) -> Result<()> {
        Ok(())
    }
    /// Every decoded event of a wanted connection, with the names its send
    /// carried, before the tracker sees it (the recorder writes these).
    fn event(&mut self, _ev: &FuseEvent, _names: Option<&Names>) -> Result<()> {
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
    fn request(&mut self, rec: &RequestLifecycle, names: &mut ConnectionTable) -> Result<()> {
        self.sinks
            .iter_mut()
            .try_for_each(|s| s.request(rec, names))
    }

    fn tick(&mut self, names: &mut ConnectionTable) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.tick(names))
    }

    fn finish(&mut self, summary: &RunSummary, names: &mut ConnectionTable) -> Result<()> {
        self.sinks
            .iter_mut()
            .try_for_each(|s| s.finish(summary, names))
    }

    fn live(&mut self, live: &LiveView, names: &mut ConnectionTable) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.live(live, names))
    }

    fn event(&mut self, ev: &FuseEvent, names: Option<&Names>) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.event(ev, names))
    }

    fn idle(&mut self, now_ns: u64) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.idle(now_ns))
    }

    fn stats(&mut self, delta: &Stats) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.stats(delta))
    }
}
