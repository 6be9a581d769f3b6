//! One tracing run: probes -> decoder -> tracker -> sinks, until stopped.
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
use fusetrace_common::{EventKind, FuseEvent, opcode};
use serde::Serialize;

use crate::{
    kernel::layout::major_minor,
    kernel::probes::{KernelCounters, Probes},
    output::sink::Sink,
    pipeline::connections::{ConnectionTable, MountEntry},
    pipeline::{
        lifecycle::{Comm, RequestLifecycle},
        paths::{PathBook, PathCounters},
        tracker::{Tracker, TrackerConfig, TrackerCounters},
    },
};

/// Which requests a run reports.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these connections (mounts); empty means all.
    pub connections: Vec<u32>,
    /// The mounts `--mount` named, as found at start: their names outlive
    /// an unmount that comes before the run reads the mount table.
    pub mounts: Vec<MountEntry>,
    /// Requester process or thread ids (`-p`); empty means all.
    pub pids: Vec<u32>,
    /// Requester command names (`--comm`, as the kernel truncates them);
    /// empty means all. A request without a known requester comm (sent
    /// from another context) is left out when given.
    pub comms: Vec<Comm>,
    pub opcodes: Vec<u32>,
    /// Named connections whose mount went away during the run (see
    /// [`Filter::admit`]): their numbers now belong to other mounts.
    pub gone: Vec<u32>,
    /// Named connections that have had a request other than INIT this run.
    pub active: Vec<u32>,
    /// `-c`: the kernel lets through only the command's sends; this keeps
    /// the other points of everybody else's requests out (instead of
    /// counting them as unmatched).
    pub command: Option<CommandRequests>,
}

/// `-c`: the requests whose send the kernel let through, by id and by
/// `struct fuse_req *` (a send may come before its id), until their end.
/// The ring buffer keeps each request's points in the order they happened
/// (the send is reserved before the request is queued, the reply before
/// the end), so a point of a wanted request always finds its send here.
#[derive(Debug, Clone, Default)]
pub struct CommandRequests {
    by_id: std::collections::HashSet<(u32, u64)>,
    by_req: std::collections::HashSet<u64>,
}

impl CommandRequests {
    fn admit(&mut self, ev: &FuseEvent) -> bool {
        // An INTERRUPT's points carry its target's id with the low bit set.
        let id = (
            ev.connection,
            ev.unique & !fusetrace_common::FUSE_INT_REQ_BIT,
        );
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::Sent) => {
                if ev.unique != 0 {
                    self.by_id.insert(id);
                }
                if ev.req != 0 {
                    self.by_req.insert(ev.req);
                }
                true
            }
            Some(EventKind::Ended) => {
                let by_id = ev.unique != 0 && self.by_id.remove(&id);
                let by_req = ev.req != 0 && self.by_req.remove(&ev.req);
                by_id || by_req
            }
            Some(
                EventKind::Taken | EventKind::Replied | EventKind::Virtq | EventKind::DeviceDone,
            ) => {
                if ev.unique != 0 && self.by_id.contains(&id) {
                    return true;
                }
                // A send before its id: the take names both.
                let known = ev.req != 0 && self.by_req.contains(&ev.req);
                if known && ev.unique != 0 {
                    self.by_id.insert(id);
                }
                known
            }
            // Joined and filtered in the kernel already; applications'
            // writes are not requests (not filtered).
            Some(EventKind::Whole | EventKind::AppWrite) => true,
            None => false,
        }
    }
}

impl Filter {
    fn wants_connection(&self, connection: u32) -> bool {
        (self.connections.is_empty() || self.connections.contains(&connection))
            && !self.gone.contains(&connection)
    }

    /// Whether the run takes `ev`. A `--mount` names a mount by its
    /// connection number, the superblock's dev_t, which the kernel hands to
    /// the next mount once that one is unmounted. Every mount begins with
    /// INIT, sent before any other request of it: an INIT on a named
    /// connection that already had other requests this run means its mount
    /// is gone and the number now names another, whose traffic stays out
    /// from that INIT on. (An INIT before any other request is the named
    /// mount's own, when it was mounted after tracing began, as the demo
    /// does.) Returns the connection when that happens, for the caller to
    /// say so.
    pub fn admit(&mut self, ev: &FuseEvent) -> (bool, Option<u32>) {
        if !self.wants_connection(ev.connection) {
            return (false, None);
        }
        if let Some(command) = &mut self.command
            && !command.admit(ev)
        {
            return (false, None);
        }
        if self.connections.is_empty() {
            return (true, None);
        }
        let init = ev.kind == EventKind::Sent as u8 && ev.opcode == opcode::INIT;
        let active = self.active.contains(&ev.connection);
        if init && active {
            self.gone.push(ev.connection);
            return (false, Some(ev.connection));
        }
        if !init && !active {
            self.active.push(ev.connection);
        }
        (true, None)
    }

    pub fn wants(&self, rec: &RequestLifecycle) -> bool {
        self.wants_connection(rec.connection)
            && (self.pids.is_empty()
                || [rec.requester_pid, rec.requester_tid]
                    .iter()
                    .any(|p| p.is_some_and(|p| self.pids.contains(&p))))
            && (self.comms.is_empty()
                || rec.requester_comm.is_some_and(|c| self.comms.contains(&c)))
            && (self.opcodes.is_empty() || self.opcodes.contains(&rec.opcode))
    }
}

/// Everything counted during a run, shown at the end so nothing is lost silently.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Requests reported (after filters).
    pub requests: u64,
    /// Of those, requests the daemon never answers by design (FORGET, BATCH_FORGET, INTERRUPT).
    pub no_reply_expected: u64,
    /// Of the answered ones, requests with all four stages observed.
    pub fully_observed: u64,
    /// Requests still in flight when the run stopped (on traced connections).
    pub in_flight_at_exit: u64,
    pub tracker: TrackerCounters,
    pub ring_drops: u64,
    pub read_faults: u64,
    pub splice_transfers: u64,
    /// Daemon takes whose `struct fuse_req *` the kernel side could not
    /// find (only looked for when sends come before their id): such a
    /// request's send joins it at its end instead.
    pub takes_unresolved: u64,
    /// Records the decoder rejected.
    pub undecodable: u64,
    /// Runs of fusetrace's programs the kernel skipped because one was
    /// already running on that CPU (its `recursion_misses`: a task
    /// preempted inside a program, seen on 7.x): as many points unseen.
    pub program_runs_skipped: u64,
    /// Named mounts (`--mount`) unmounted during the run whose connection
    /// number a new mount took: the new mount's traffic was left out.
    pub mounts_gone: u64,
    /// What the table of paths could not keep.
    pub paths: PathCounters,
    /// Requests the daemon took through FUSE over io_uring, per ring queue.
    pub io_uring: UringCounts,
    /// Set when latencies were counted in the kernel (`stats` without
    /// `--from-events`): what the kernel could not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_aggregation: Option<AggregationLosses>,
    /// Set for `trace --min`: the kernel timed every request and sent only
    /// the slow ones (`requests` counts those).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_only: Option<SlowOnly>,
}

/// What `trace --min` timed in the kernel and did not send.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SlowOnly {
    /// The minimum total latency (ns) of a request sent.
    pub min_ns: u64,
    /// Requests the kernel timed (sent to end), slow or not.
    pub timed: u64,
    /// Sends not timed: the kernel's in-flight table was full.
    pub in_flight_table_full: u64,
}

/// The io_uring transport's share of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UringCounts {
    /// Requests taken through a ring (the rest went through `/dev/fuse`).
    pub requests: u64,
    /// Of those, per ring queue (one per CPU; the queue of the CPU the
    /// requester ran on).
    pub per_queue: std::collections::BTreeMap<u16, u64>,
    /// COMMIT_AND_FETCH submissions whose connection the kernel side could
    /// not find: those replies are missing from their requests.
    pub replies_unresolved: u64,
}

/// What in-kernel aggregation could not count.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AggregationLosses {
    /// Sends not recorded: the kernel's in-flight table was full.
    pub in_flight_table_full: u64,
    /// Latencies not counted: the kernel's histogram map was full.
    pub histogram_full: u64,
    /// Stages counted too (`stats --stages`): the requests counted in the
    /// total only, their daemon points not both seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<u64>,
}

impl RunSummary {
    pub fn render(&self) -> String {
        let mut s = self.render_counts();
        if self.tracker.sent_before_id > 0 {
            s.push_str(&format!(
                "; {} sends came before their request id (the send point comes before the kernel assigns the id): joined by their struct fuse_req pointer",
                self.tracker.sent_before_id
            ));
            if self.takes_unresolved > 0 {
                s.push_str(&format!(
                    ", {} of them only at their end (their daemon take was not found in the kernel's table)",
                    self.takes_unresolved
                ));
            }
        }
        let p = &self.paths;
        if p.unnamed_requests > 0 {
            s.push_str(&format!(
                "; {} requests were on files whose names were not seen (looked up before tracing began), shown as `node N`: their paths appear once the kernel looks them up again",
                p.unnamed_requests
            ));
        }
        if p.nodes_forgotten + p.pending_dropped > 0 {
            s.push_str(&format!(
                "; the path table forgot {} nodes (full) and {} names (too many requests in flight)",
                p.nodes_forgotten, p.pending_dropped
            ));
        }
        if self.mounts_gone > 0 {
            s.push_str(&format!(
                "; {} traced mounts were unmounted during the run and their connection numbers taken by new mounts, left out",
                self.mounts_gone
            ));
        }
        if self.program_runs_skipped > 0 {
            s.push_str(&format!(
                "; the kernel skipped {} runs of fusetrace's programs (one was already running on that CPU: recursion_misses), so as many points were not observed",
                self.program_runs_skipped
            ));
        }
        if self.tracker.sends_without_id > 0 {
            s.push_str(&format!(
                "; {} sends carried neither request id nor pointer and could not be joined (this kernel assigns the id after the send point: use the tp-btf, fentry or kprobe backend)",
                self.tracker.sends_without_id
            ));
        }
        s
    }

    fn render_counts(&self) -> String {
        if let Some(slow) = &self.slow_only {
            return format!(
                "{} requests took at least {} of {} timed in the kernel (the faster ones never left it), {} in flight at exit; lost or unmatched: {} ring buffer drops, {} ends without submission, {} sends not timed (in-flight table full), {} undecodable",
                self.requests,
                crate::units::format_duration(Duration::from_nanos(slow.min_ns)),
                slow.timed,
                self.in_flight_at_exit,
                self.ring_drops,
                self.tracker.unmatched_ends,
                slow.in_flight_table_full,
                self.undecodable,
            );
        }
        if let Some(losses) = &self.kernel_aggregation {
            let (what, stages_missing) = match losses.stages {
                Some(n) => (
                    "stages and total",
                    format!(
                        ", {n} counted in the total only (their daemon take or reply not seen)"
                    ),
                ),
                None => (
                    "whole latency, send to end; `stats --stages` splits it into queue, daemon and completion",
                    String::new(),
                ),
            };
            return format!(
                "{} requests counted in the kernel ({what}), {} in flight at exit; lost or unmatched: {} ring buffer drops, {} ends without submission, {} sends not counted (in-flight table full), {} latencies not counted (histogram map full){stages_missing}",
                self.requests,
                self.in_flight_at_exit,
                self.ring_drops,
                self.tracker.unmatched_ends,
                losses.in_flight_table_full,
                losses.histogram_full,
            );
        }
        let answered = self.requests - self.no_reply_expected;
        let pct = if answered == 0 {
            0.0
        } else {
            100.0 * self.fully_observed as f64 / answered as f64
        };
        let mut s = format!(
            "{} requests ({} answered, {:.1}% of those with all four stages), {} in flight at exit; lost or unmatched: {} ring buffer drops, {} replies without request, {} ends without submission, {} never ended, {} undecodable, {} unreadable headers",
            self.requests,
            answered,
            pct,
            self.in_flight_at_exit,
            self.ring_drops,
            self.tracker.unmatched_replies,
            self.tracker.unmatched_ends,
            self.tracker.never_ended,
            self.undecodable,
            self.read_faults,
        );
        if self.splice_transfers > 0 {
            s.push_str(&format!(
                "; {} splice(2) transfers on /dev/fuse were not decoded (their daemon stages show as unknown)",
                self.splice_transfers
            ));
        }
        let u = &self.io_uring;
        if u.requests > 0 {
            let queues: Vec<String> = u
                .per_queue
                .iter()
                .map(|(q, n)| format!("queue {q}: {n}"))
                .collect();
            s.push_str(&format!(
                "; {} requests went through io_uring ({})",
                u.requests,
                queues.join(", ")
            ));
        }
        if u.replies_unresolved > 0 {
            s.push_str(&format!(
                "; {} io_uring replies whose connection was not found (their daemon stage shows as unknown)",
                u.replies_unresolved
            ));
        }
        s
    }
}

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
    let mut filter = filter.clone();
    let filter = &mut filter;
    let mut names = ConnectionTable::load_with(&filter.mounts);
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut paths = PathBook::default();
    let mut finished = Vec::new();
    let mut summary = RunSummary::default();
    let started = Instant::now();
    let mut next_tick = started + tick;
    // When the stop was requested, and the latest event time seen.
    let mut stop_ns: Option<u64> = None;
    let mut latest_ns = 0;

    loop {
        let stopping = stop.due(started, || match probes.whole_min_ns() {
            // `trace --min`: the requests in flight are in the kernel's table.
            Some(_) => {
                let k = probes.counters();
                k.agg_started.saturating_sub(k.agg_ended)
            }
            None => tracker.in_flight_count() as u64,
        });
        let mut event_err = None;
        if stopping && stop_ns.is_none() {
            stop_ns = Some(monotonic_ns());
        }
        let got = probes.poll(Duration::from_millis(50), |ev, ev_names| {
            latest_ns = latest_ns.max(ev.ts_ns);
            match filter.admit(&ev) {
                (true, _) => {
                    if event_err.is_none() {
                        event_err = sink.event(&ev, ev_names.as_ref()).err();
                    }
                    paths.observe(&ev, ev_names, &mut names);
                    tracker.observe(&ev, &mut finished);
                }
                (false, Some(conn)) => {
                    summary.mounts_gone += 1;
                    eprintln!(
                        "fusetrace: {} was unmounted and a new mount took its connection number {}; the new mount is not traced",
                        names.name(conn),
                        major_minor(conn)
                    );
                }
                (false, None) => {}
            }
        })?;
        if let Some(e) = event_err {
            return Err(e);
        }
        if got == 0 {
            let now = monotonic_ns();
            sink.idle(now)?;
            tracker.advance(now, &mut finished);
        }
        report(
            &mut finished,
            filter,
            sink,
            &mut summary,
            &mut names,
            &mut paths,
        )?;
        if Instant::now() >= next_tick {
            next_tick += tick;
            let live = LiveView {
                tracker: &tracker,
                paths: &paths,
                filter,
                kernel: probes.counters(),
                undecodable: probes.undecodable(),
                last: false,
            };
            sink.live(&live, &mut names)?;
            sink.tick(&mut names)?;
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
    tracker.flush(&mut finished);
    report(
        &mut finished,
        filter,
        sink,
        &mut summary,
        &mut names,
        &mut paths,
    )?;
    let live = LiveView {
        tracker: &tracker,
        paths: &paths,
        filter,
        kernel: probes.counters(),
        undecodable: probes.undecodable(),
        last: true,
    };
    sink.live(&live, &mut names)?;
    let k: KernelCounters = probes.counters();
    summary.in_flight_at_exit = tracker.in_flight().filter(|r| filter.wants(r)).count() as u64;
    summary.tracker = tracker.counters();
    summary.ring_drops = k.ring_drops;
    summary.read_faults = k.read_faults;
    summary.splice_transfers = k.splice_transfers;
    summary.takes_unresolved = k.take_unresolved;
    summary.io_uring.replies_unresolved = k.uring_unresolved;
    summary.undecodable = probes.undecodable();
    summary.program_runs_skipped = k.program_runs_skipped;
    summary.paths = paths.counters();
    if let Some(min_ns) = probes.whole_min_ns() {
        // The kernel joined the requests: its counts are the run's.
        summary.in_flight_at_exit = k.agg_started.saturating_sub(k.agg_ended);
        summary.tracker.unmatched_ends = k.agg_unmatched_ends;
        summary.tracker.sent_before_id = k.sent_before_id;
        summary.slow_only = Some(SlowOnly {
            min_ns,
            timed: k.agg_ended,
            in_flight_table_full: k.agg_table_full,
        });
    }
    sink.finish(&summary, &mut names)?;
    Ok(summary)
}

/// Hands the finished requests the filter wants to the sink, counting them.
pub(crate) fn report(
    finished: &mut Vec<RequestLifecycle>,
    filter: &Filter,
    sink: &mut dyn Sink,
    summary: &mut RunSummary,
    names: &mut ConnectionTable,
    paths: &mut PathBook,
) -> Result<()> {
    for mut rec in finished.drain(..) {
        // Every finished request, wanted or not: a FORGET drops its node.
        paths.name_finished(&mut rec, names);
        if filter.wants(&rec) {
            summary.requests += 1;
            summary.fully_observed += u64::from(rec.fully_observed());
            summary.no_reply_expected += u64::from(!rec.expects_reply());
            if rec.transport == Some(crate::kernel::hooks::Transport::IoUring) {
                summary.io_uring.requests += 1;
                if let Some(q) = rec.ring_queue {
                    *summary.io_uring.per_queue.entry(q).or_default() += 1;
                }
            }
            sink.request(&rec, names)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(connection: u32, opcode: u32) -> FuseEvent {
        FuseEvent {
            connection,
            opcode,
            kind: EventKind::Sent as u8,
            ..FuseEvent::default()
        }
    }

    #[test]
    fn an_init_on_a_named_connection_retires_it() {
        let mut f = Filter {
            connections: vec![7],
            ..Filter::default()
        };
        // The named mount's own INIT (mounted after tracing began) is its.
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (true, None));
        assert_eq!(f.admit(&sent(7, opcode::GETATTR)), (true, None));
        assert_eq!(f.admit(&sent(8, opcode::GETATTR)), (false, None));
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (false, Some(7)));
        // The number now names another mount: none of its traffic comes in,
        // and the retirement is announced once.
        assert_eq!(f.admit(&sent(7, opcode::GETATTR)), (false, None));
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (false, None));
    }

    #[test]
    fn with_a_command_only_the_points_of_its_sends_come_in() {
        let mut f = Filter {
            command: Some(CommandRequests::default()),
            ..Filter::default()
        };
        let point = |kind: EventKind, unique: u64, req: u64| FuseEvent {
            connection: 7,
            unique,
            req,
            kind: kind as u8,
            ..FuseEvent::default()
        };
        // The kernel let the send of request 10 through; 12 is someone else's.
        assert!(f.admit(&point(EventKind::Sent, 10, 0xa0)).0);
        assert!(f.admit(&point(EventKind::Taken, 10, 0)).0);
        assert!(!f.admit(&point(EventKind::Taken, 12, 0)).0);
        // Its INTERRUPT (id | 1) is its too.
        assert!(f.admit(&point(EventKind::Taken, 11, 0)).0);
        assert!(f.admit(&point(EventKind::Replied, 10, 0)).0);
        assert!(!f.admit(&point(EventKind::Replied, 12, 0)).0);
        assert!(f.admit(&point(EventKind::Ended, 10, 0xa0)).0);
        assert!(!f.admit(&point(EventKind::Ended, 12, 0xb0)).0);
        // Ended: forgotten, so a reused id of someone else stays out.
        assert!(!f.admit(&point(EventKind::Taken, 10, 0)).0);
        // A send before its id is known by its pointer until the take.
        assert!(f.admit(&point(EventKind::Sent, 0, 0xc0)).0);
        assert!(f.admit(&point(EventKind::Taken, 14, 0xc0)).0);
        assert!(f.admit(&point(EventKind::Replied, 14, 0)).0);
        assert!(f.admit(&point(EventKind::Ended, 14, 0xc0)).0);
    }

    #[test]
    fn without_named_mounts_a_new_mount_is_traced() {
        let mut f = Filter::default();
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (true, None));
        assert_eq!(f.admit(&sent(7, opcode::GETATTR)), (true, None));
    }
}
