//! Daemon concurrency: requests wait in the kernel's queue (sent -> taken)
//! because one daemon thread serves them one at a time while several are
//! in flight. The cure is more threads (or io_uring's queue per CPU); a
//! single-threaded daemon that is never handed two requests at once loses
//! nothing, so the rule also needs the overlap, not only the one thread.

use std::collections::HashSet;

use fusetrace_common::FuseEvent;

use super::in_flight::InFlight;
use crate::diagnose::{
    analysis::duration,
    finding::{Facts, Finding, FindingId, Rule, count, percent},
};
use crate::pipeline::lifecycle::{LatencyStage, RequestLifecycle};

/// Fewer timed requests than this say nothing about the daemon.
const MIN_REQUESTS: u64 = 200;
/// The queue's share of the requests' latency from which it dominates.
const MIN_QUEUE_SHARE: f64 = 0.5;
/// Mean requests in flight (while any is) from which a second thread
/// would have had work: one request at a time never waits for a thread.
const MIN_MEAN_IN_FLIGHT: f64 = 2.0;
/// The thread count the expectation speaks of is capped here.
const MAX_SUGGESTED_THREADS: f64 = 16.0;

#[derive(Default)]
pub struct DaemonConcurrency {
    /// Threads that took requests, and that replied.
    takers: HashSet<u32>,
    repliers: HashSet<u32>,
    /// Requests with every stage seen, and their stages' sums.
    timed: u64,
    queue_ns: u64,
    daemon_ns: u64,
    total_ns: u64,
    in_flight: InFlight,
}

impl Rule for DaemonConcurrency {
    fn request(&mut self, rec: &RequestLifecycle) {
        if !rec.expects_reply() || rec.is_virtio() {
            return;
        }
        self.takers.extend(rec.daemon_tid);
        self.repliers.extend(rec.reply_tid);
        let stage = |s| rec.latency(s);
        if let (Some(q), Some(d), Some(t)) = (
            stage(LatencyStage::QueueWait),
            stage(LatencyStage::DaemonService),
            stage(LatencyStage::Total),
        ) {
            self.timed += 1;
            self.queue_ns += q;
            self.daemon_ns += d;
            self.total_ns += t;
        }
    }

    fn event(&mut self, ev: &FuseEvent) {
        self.in_flight.event(ev);
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        // One thread takes and answers everything (a daemon that reads on
        // one thread and answers on workers is not single-threaded).
        let single = self.takers.len() == 1 && self.repliers.len() <= 1;
        let share = self.queue_ns as f64 / self.total_ns.max(1) as f64;
        let mean_in_flight = self.in_flight.mean_while_busy();
        log::debug!(
            "daemon_concurrency on {}: {} taking and {} replying threads, {} timed requests, queue share {share:.2}, mean in flight {mean_in_flight:.2} (peak {})",
            facts.connection,
            self.takers.len(),
            self.repliers.len(),
            self.timed,
            self.in_flight.peak()
        );
        if !single
            || self.timed < MIN_REQUESTS
            || share < MIN_QUEUE_SHARE
            || mean_in_flight < MIN_MEAN_IN_FLIGHT
        {
            return Vec::new();
        }
        let mean_queue = self.queue_ns / self.timed;
        let mean_daemon = self.daemon_ns / self.timed;
        let n = mean_in_flight.ceil().min(MAX_SUGGESTED_THREADS) as u64;
        // The one thread's time per request while requests were waiting
        // for it: its code (the daemon stage) plus the /dev/fuse round
        // trip and its wake-ups.
        let per_request = self.in_flight.busy_ns() / self.timed;
        vec![
            Finding::new(
                FindingId::DaemonConcurrency,
                share,
                format!(
                    "1 daemon thread, {mean_in_flight:.1} requests in flight on average (peak {}): the queue wait is {} of the latency ({} requests; mean wait {}, mean daemon time {})",
                    self.in_flight.peak(),
                    percent(self.queue_ns, self.total_ns),
                    count(self.timed),
                    duration(mean_queue),
                    duration(mean_daemon),
                ),
            )
            .with("daemon_threads", self.takers.len() as u64)
            .with("replying_threads", self.repliers.len() as u64)
            .with("requests", self.timed)
            .with("queue_share", (share * 1000.0).round() / 1000.0)
            .with("mean_queue_wait_ns", mean_queue)
            .with("mean_daemon_ns", mean_daemon)
            .with("thread_ns_per_request", per_request)
            .with("mean_in_flight", (mean_in_flight * 100.0).round() / 100.0)
            .with("peak_in_flight", self.in_flight.peak())
            .knob("multithreaded mode: libfuse without `-s` (`-o max_threads=N`, libfuse 3.12+); the reference daemon `--threads N`; or FUSE over io_uring (a queue per CPU)")
            .expect(format!(
                "with N threads the queue wait drops to about the thread's time per request / N: {} with N = {n} (the requests in flight), from {} now, as far as the daemon's work runs in parallel and there are CPUs for N threads",
                fine(per_request / n),
                duration(mean_queue),
            )),
        ]
    }
}

/// A duration as the text shows it, below a microsecond too.
fn fine(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else {
        duration(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::rules::in_flight::point;
    use crate::pipeline::tracker::{Tracker, TrackerConfig};
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER};

    /// A GETATTR sent at `sent`, taken `queue` later by `daemon` (which
    /// replies after `service`), ended 1 us after that.
    fn getattr(unique: u64, sent: u64, queue: u64, service: u64, daemon: u32) -> RequestLifecycle {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let base = FuseEvent {
            flags: FLAG_HAS_HEADER,
            connection: 50,
            unique,
            opcode: crate::pipeline::opcode::GETATTR,
            nodeid: 1,
            tid: 7,
            ..Default::default()
        };
        for (kind, ts, tid) in [
            (EventKind::Sent, sent, 7),
            (EventKind::Taken, sent + queue, daemon),
            (EventKind::Replied, sent + queue + service, daemon),
            (EventKind::Ended, sent + queue + service + 1_000, 7),
        ] {
            t.observe(
                &FuseEvent {
                    kind: kind as u8,
                    ts_ns: ts,
                    tid,
                    ..base
                },
                &mut out,
            );
        }
        out.pop().unwrap()
    }

    /// `n` requests by `jobs` requesters served one at a time by a daemon
    /// with `threads` threads, 10 us each: with more requesters than
    /// threads they queue.
    fn served(n: u64, jobs: u64, threads: u64) -> DaemonConcurrency {
        let mut rule = DaemonConcurrency::default();
        let service = 10_000;
        // Rounds of `jobs` requests sent together; each thread serves its
        // share back to back.
        let mut unique = 2;
        let mut sends = Vec::new();
        let mut ends = Vec::new();
        let mut recs = Vec::new();
        for round in 0..n / jobs {
            let start = round * (jobs.div_ceil(threads) * service + 5_000);
            for j in 0..jobs {
                let queue = (j / threads) * service + 500;
                let rec = getattr(unique, start, queue, service, 100 + (j % threads) as u32);
                sends.push(point(EventKind::Sent, unique, start, false));
                ends.push(point(
                    EventKind::Ended,
                    unique,
                    rec.ended_ns.unwrap(),
                    false,
                ));
                recs.push(rec);
                unique += 2;
            }
        }
        let mut events: Vec<_> = sends.into_iter().chain(ends).collect();
        events.sort_by_key(|e| (e.ts_ns, e.kind));
        for ev in &events {
            rule.event(ev);
        }
        for rec in &recs {
            rule.request(rec);
        }
        rule
    }

    #[test]
    fn one_thread_under_overlapping_requests_is_found_with_its_numbers() {
        let found = served(400, 8, 1).conclude(&Facts::default());
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::DaemonConcurrency);
        assert_eq!(f.evidence["daemon_threads"], 1);
        assert_eq!(f.evidence["requests"], 400);
        assert_eq!(f.evidence["peak_in_flight"], 8);
        // Mean wait: (0..8) * 10 us + 0.5 us = 35.5 us; daemon 10 us.
        assert_eq!(f.evidence["mean_queue_wait_ns"], 35_500);
        assert_eq!(f.evidence["mean_daemon_ns"], 10_000);
        assert!(f.weight > 0.7, "{f:?}");
        assert!(f.summary.contains("1 daemon thread"), "{}", f.summary);
        assert!(f.knob.contains("--threads N"), "{}", f.knob);
        // Busy 81.5 us of every round of 8 requests: 10.2 us each; 4.5 in
        // flight on average, so N = 5.
        assert_eq!(f.evidence["thread_ns_per_request"], 10_187);
        assert!(f.expect.contains("2 us with N = 5"), "{}", f.expect);
    }

    #[test]
    fn many_threads_or_no_overlap_or_few_requests_find_nothing() {
        assert!(served(400, 8, 8).conclude(&Facts::default()).is_empty());
        // One requester: one request at a time, whatever its queue wait.
        assert!(served(400, 1, 1).conclude(&Facts::default()).is_empty());
        assert!(served(96, 8, 1).conclude(&Facts::default()).is_empty());
    }
}
