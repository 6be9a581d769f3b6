//! A live tracing run: the ring buffer's events through the run loop's
//! steps (`run`) into the sink, until stopped.
//!
//! Data flows one way; sinks see finished requests and counters, never the
//! probes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    kernel::probes::Probes,
    pipeline::{
        connections::ConnectionTable,
        filter::Filter,
        run::Run,
        sink::Sink,
        summary::{Counting, RunSummary},
        tracker::TrackerConfig,
    },
};

/// When a run stops.
#[derive(Debug, Clone)]
pub struct StopWhen {
    pub flag: Arc<AtomicBool>,
    pub after: Option<Duration>,
    /// `-c`: set when the command exited. Runs that know their requests
    /// in flight stop once none is left ([`StopWhen::due`]); `flag`
    /// follows `command::SETTLE` later for the others.
    pub command_exited: Arc<AtomicBool>,
}

impl StopWhen {
    /// Stops on SIGINT or SIGTERM (or `after`).
    pub fn on_signals(after: Option<Duration>) -> Result<StopWhen> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        Ok(StopWhen {
            flag,
            after,
            command_exited: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether a run that began at `started` stops now: stopped, out of
    /// time, or (`-c`) the command exited and `in_flight` (its requests
    /// not yet ended) is 0.
    pub fn due(&self, started: Instant, in_flight: impl FnOnce() -> u64) -> bool {
        self.flag.load(Ordering::Relaxed)
            || self.after.is_some_and(|d| started.elapsed() >= d)
            || (self.command_exited.load(Ordering::Relaxed) && in_flight() == 0)
    }
}

/// How far past the stop request a busy ring buffer's events must be
/// before a run stops without having emptied it.
const STOP_MARGIN_NS: u64 = 20_000_000;

/// Monotonic clock, the same one `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the pipeline until `stop`, then drains what the kernel already
/// produced and hands the summary to the sink.
pub fn run(
    probes: &mut Probes,
    filter: &Filter,
    sink: &mut dyn Sink,
    stop: &StopWhen,
    tick: Duration,
) -> Result<RunSummary> {
    let mounts = ConnectionTable::load_with(&filter.mounts);
    let mut run = Run::new(filter.clone(), mounts, TrackerConfig::default());
    let started = Instant::now();
    let mut next_tick = started + tick;
    // When the stop was requested, and the latest event time seen.
    let mut stop_ns: Option<u64> = None;
    let mut latest_ns = 0;
    loop {
        let stopping = stop.due(started, || in_flight(probes, &run));
        if stopping && stop_ns.is_none() {
            stop_ns = Some(monotonic_ns());
        }
        let got = drain(probes, &mut run, sink, &mut latest_ns)?;
        if got == 0 {
            run.idle(monotonic_ns(), sink)?;
        }
        run.report(sink)?;
        if Instant::now() >= next_tick {
            next_tick += tick;
            run.live(sink, probes.counters(), probes.undecodable(), false)?;
            run.tick(sink)?;
        }
        // Stop once the ring buffer is empty, or (a busy machine's never
        // is) once its events are from well after the stop request: events
        // emitted before it are all reported. (The ring buffer keeps the
        // order events were reserved in, which can differ from their
        // timestamps' by the time a hook takes between the two: hence the
        // margin.)
        if stopping && (got == 0 || stop_ns.is_some_and(|t| latest_ns >= t + STOP_MARGIN_NS)) {
            break;
        }
    }
    let counting = match probes.whole_min_ns() {
        Some(min_ns) => Counting::SlowOnly { min_ns },
        None => Counting::Events,
    };
    // The kernel's counters once, after the last drain: the summary and
    // the live view's last frame show the same.
    let (kernel, undecodable) = (probes.counters(), probes.undecodable());
    let summary = run.finish(sink, &kernel, undecodable, counting)?;
    run.live(sink, kernel, undecodable, true)?;
    sink.finish(&summary, &mut run.mounts)?;
    Ok(summary)
}

/// The requests in flight, for a `-c` run waiting for its command's.
fn in_flight(probes: &Probes, run: &Run) -> u64 {
    match probes.whole_min_ns() {
        // `trace --min`: the requests in flight are in the kernel's table.
        Some(_) => {
            let k = probes.counters();
            k.agg_started.saturating_sub(k.agg_ended)
        }
        None => run.in_flight(),
    }
}

/// Hands what the ring buffer holds (waiting up to 50 ms for it) to the
/// run; returns how many events there were.
fn drain(
    probes: &mut Probes,
    run: &mut Run,
    sink: &mut dyn Sink,
    latest_ns: &mut u64,
) -> Result<usize> {
    let mut failed = None;
    let got = probes.poll(Duration::from_millis(50), |ev, names| {
        *latest_ns = (*latest_ns).max(ev.ts_ns);
        if failed.is_none() {
            failed = run.event(&ev, names, sink).err();
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(got),
    }
}
