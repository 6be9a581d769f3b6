//! One sink that hands everything to several (e.g. the stats table and a
//! CSV file, or the stats table and a recording).

use anyhow::Result;
use fusetrace_common::FuseEvent;

use crate::{
    output::stats::Stats,
    pipeline::connections::ConnectionTable,
    pipeline::lifecycle::RequestLifecycle,
    pipeline::session::{LiveView, RunSummary, Sink},
};

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

    fn event(&mut self, ev: &FuseEvent) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.event(ev))
    }

    fn idle(&mut self, now_ns: u64) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.idle(now_ns))
    }

    fn stats(&mut self, delta: &Stats) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.stats(delta))
    }
}
