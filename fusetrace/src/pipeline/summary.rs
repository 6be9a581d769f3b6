//! What a run counted, shown at its end so nothing is lost silently: the
//! requests reported and every loss on the way, from the tracker, the path
//! table and the kernel side. [`RunSummary::count_kernel`] is the one place
//! the kernel's counters become the summary's, for every kind of run.

use std::time::Duration;

use serde::Serialize;

use crate::{
    kernel::probes::KernelCounters,
    pipeline::{paths::PathCounters, tracker::TrackerCounters},
};

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

/// How a run's requests were counted, which decides what of the kernel's
/// counters its summary takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Every point through the ring buffer, joined by the tracker.
    Events,
    /// `trace --min`: the kernel timed every request and sent only those
    /// that took at least `min_ns`.
    SlowOnly { min_ns: u64 },
    /// In-kernel `stats`: latencies counted in the kernel's histograms
    /// (`stages`: queue, daemon and completion too).
    InKernel { stages: bool },
}

impl RunSummary {
    /// Takes what the kernel side counted: `k` (a recording's end record
    /// holds the part of it a replay knows) and the records the decoder
    /// rejected. The one place the kernel's counters enter a summary.
    pub fn count_kernel(&mut self, k: &KernelCounters, undecodable: u64, counting: Counting) {
        self.ring_drops = k.ring_drops;
        self.read_faults = k.read_faults;
        self.splice_transfers = k.splice_transfers;
        self.takes_unresolved = k.take_unresolved;
        self.io_uring.replies_unresolved = k.uring_unresolved;
        self.undecodable = undecodable;
        self.program_runs_skipped = k.program_runs_skipped;
        let joined_in_kernel = |s: &mut RunSummary| {
            s.in_flight_at_exit = k.agg_started.saturating_sub(k.agg_ended);
            s.tracker.unmatched_ends = k.agg_unmatched_ends;
            s.tracker.sent_before_id = k.sent_before_id;
        };
        match counting {
            Counting::Events => {}
            // The kernel joined the requests: its counts are the run's.
            Counting::SlowOnly { min_ns } => {
                joined_in_kernel(self);
                self.slow_only = Some(SlowOnly {
                    min_ns,
                    timed: k.agg_ended,
                    in_flight_table_full: k.agg_table_full,
                });
            }
            Counting::InKernel { stages } => {
                joined_in_kernel(self);
                self.kernel_aggregation = Some(AggregationLosses {
                    in_flight_table_full: k.agg_table_full,
                    histogram_full: k.agg_histogram_full,
                    stages: stages.then_some(k.agg_stages_missing),
                });
            }
        }
    }

    /// Adds `b`'s counts (several recordings reported as one).
    pub fn add(&mut self, b: &RunSummary) {
        self.requests += b.requests;
        self.no_reply_expected += b.no_reply_expected;
        self.fully_observed += b.fully_observed;
        self.in_flight_at_exit += b.in_flight_at_exit;
        self.ring_drops += b.ring_drops;
        self.read_faults += b.read_faults;
        self.splice_transfers += b.splice_transfers;
        self.undecodable += b.undecodable;
        self.takes_unresolved += b.takes_unresolved;
        self.mounts_gone += b.mounts_gone;
        self.program_runs_skipped += b.program_runs_skipped;
        self.paths.add(&b.paths);
        self.tracker.add(&b.tracker);
    }

    /// Whether the run lost or could not join anything: then its summary
    /// is a warning, shown even under `-q`.
    pub fn lost_anything(&self) -> bool {
        let t = &self.tracker;
        let aggregation = self.kernel_aggregation.map_or(0, |a| {
            a.in_flight_table_full + a.histogram_full + a.stages.unwrap_or(0)
        });
        let slow = self.slow_only.map_or(0, |s| s.in_flight_table_full);
        self.ring_drops
            + self.read_faults
            + self.undecodable
            + self.program_runs_skipped
            + self.mounts_gone
            + self.paths.nodes_forgotten
            + self.paths.pending_dropped
            + self.io_uring.replies_unresolved
            + t.unmatched_ends
            + t.unmatched_replies
            + t.sends_without_id
            + aggregation
            + slow
            > 0
    }

    /// Tells the summary on stderr at the end of a run (through `log`:
    /// `-q` hides it unless something was lost).
    pub fn tell(&self) {
        if self.lost_anything() {
            log::warn!("{}", self.render());
        } else {
            log::info!("{}", self.render());
        }
    }

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
