//! Transport: the kernel offers FUSE over io_uring but the daemon reads and
//! writes `/dev/fuse`, one read(2) and one write(2) per request, with a
//! wake-up of a sleeping reader each time. That costs most where requests
//! are many and small and their time goes to the queue (sent -> taken), so
//! the rule asks for all three, and for several requests in flight at
//! once (a storm from many requesters: one requester at a time waits for
//! a wake-up, not for the daemon, and gains little). It never fires when
//! the kernel has no io_uring transport or the daemon already uses it.

use fusetrace_common::FuseEvent;

use super::in_flight::InFlight;
use crate::diagnose::{
    analysis::duration,
    finding::{Facts, Finding, FindingId, Rule, UringOffer, count, percent},
};
use crate::kernel::hooks::Transport;
use crate::pipeline::lifecycle::{LatencyStage, RequestLifecycle};

/// Fewer /dev/fuse requests than this say nothing about the transport.
const MIN_REQUESTS: u64 = 1000;
/// Requests per second from which a round trip per request is a cost.
const MIN_RATE: f64 = 1000.0;
/// A request whose payload (either way) is at most this is small: its
/// transport round trip outweighs its copy.
const SMALL_PAYLOAD: u32 = 16 * 1024;
/// Share of small requests among those whose size is known.
const MIN_SMALL_SHARE: f64 = 0.8;
/// The queue's share of the latency from which the queue wait is high.
const MIN_QUEUE_SHARE: f64 = 0.3;
/// Mean requests in flight (while any is) that make a storm.
const MIN_MEAN_IN_FLIGHT: f64 = 2.0;

#[derive(Default)]
pub struct IoUringUnused {
    dev_fuse: u64,
    io_uring: u64,
    /// Requests whose size is known, and the small ones among them.
    sized: u64,
    small: u64,
    /// Requests with their queue wait and total seen, and their sums.
    timed: u64,
    queue_ns: u64,
    total_ns: u64,
    in_flight: InFlight,
}

impl Rule for IoUringUnused {
    fn request(&mut self, rec: &RequestLifecycle) {
        match rec.transport {
            Some(Transport::DevFuse) => self.dev_fuse += 1,
            Some(Transport::IoUring) => self.io_uring += 1,
            None => return,
        }
        if rec.request_len.is_some() || rec.reply_len.is_some() {
            self.sized += 1;
            let payload = rec.request_len.unwrap_or(0).max(rec.reply_len.unwrap_or(0));
            if payload <= SMALL_PAYLOAD {
                self.small += 1;
            }
        }
        if let (Some(q), Some(t)) = (
            rec.latency(LatencyStage::QueueWait),
            rec.latency(LatencyStage::Total),
        ) {
            self.timed += 1;
            self.queue_ns += q;
            self.total_ns += t;
        }
    }

    fn event(&mut self, ev: &FuseEvent) {
        self.in_flight.event(ev);
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        let offer = match facts.io_uring {
            Some(o @ (UringOffer::Off | UringOffer::On)) => o,
            _ => return Vec::new(),
        };
        let seconds = facts.seconds();
        let rate = if seconds > 0.0 {
            self.dev_fuse as f64 / seconds
        } else {
            0.0
        };
        let small_share = self.small as f64 / self.sized.max(1) as f64;
        let queue_share = self.queue_ns as f64 / self.total_ns.max(1) as f64;
        let mean_in_flight = self.in_flight.mean_while_busy();
        log::debug!(
            "io_uring_unused on {}: offer {offer:?}, /dev/fuse {} io_uring {}, {rate:.0}/s, small {small_share:.2}, queue share {queue_share:.2}, mean in flight {mean_in_flight:.2}",
            facts.connection,
            self.dev_fuse,
            self.io_uring
        );
        if self.io_uring > 0
            || mean_in_flight < MIN_MEAN_IN_FLIGHT
            || self.dev_fuse < MIN_REQUESTS
            || rate < MIN_RATE
            || small_share < MIN_SMALL_SHARE
            || queue_share < MIN_QUEUE_SHARE
        {
            return Vec::new();
        }
        let mean_queue = self.queue_ns / self.timed.max(1);
        let daemon = "a daemon that serves over io_uring (libfuse 3.18+ `-o io_uring`; the reference daemon `--io-uring`)";
        let knob = match offer {
            UringOffer::Off => format!(
                "`echo Y > /sys/module/fuse/parameters/enable_uring` (off now) and {daemon}"
            ),
            _ => format!("{daemon}; the kernel offers it (enable_uring is Y)"),
        };
        vec![
            Finding::new(
                FindingId::IoUringUnused,
                queue_share,
                format!(
                    "/dev/fuse: {} requests, {:.0}/s, {} of them small (<= 16 KiB), {mean_in_flight:.1} in flight on average; the queue wait is {} of the latency (mean {}); the kernel offers FUSE over io_uring ({})",
                    count(self.dev_fuse),
                    rate,
                    percent(self.small, self.sized),
                    percent(self.queue_ns, self.total_ns),
                    duration(mean_queue),
                    if offer == UringOffer::On { "on" } else { "built in, enable_uring off" },
                ),
            )
            .with("transport", "/dev/fuse")
            .with("io_uring_offer", if offer == UringOffer::On { "on" } else { "off" })
            .with("requests", self.dev_fuse)
            .with("requests_per_second", rate.round())
            .with("small_share", (small_share * 1000.0).round() / 1000.0)
            .with("queue_share", (queue_share * 1000.0).round() / 1000.0)
            .with("mean_queue_wait_ns", mean_queue)
            .with("mean_in_flight", (mean_in_flight * 100.0).round() / 100.0)
            .knob(knob)
            .expect(format!(
                "requests taken and answered through per-CPU rings, without a read(2) and a write(2) each: a shorter queue wait than {} and more requests per second",
                duration(mean_queue)
            )),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::rules::in_flight::point;
    use crate::pipeline::tracker::{Tracker, TrackerConfig};
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FLAG_URING};

    /// A request of `len` bytes sent at `sent`, waiting `queue` then 10 us
    /// in the daemon, taken from /dev/fuse or from a ring.
    fn request(unique: u64, sent: u64, queue: u64, len: u32, uring: bool) -> RequestLifecycle {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let base = FuseEvent {
            flags: FLAG_HAS_HEADER,
            connection: 50,
            unique,
            opcode: crate::pipeline::opcode::GETATTR,
            nodeid: 1,
            tid: 7,
            len,
            ..Default::default()
        };
        for (kind, ts, flags) in [
            (EventKind::Sent, sent, FLAG_HAS_HEADER),
            (
                EventKind::Taken,
                sent + queue,
                if uring { FLAG_URING } else { 0 },
            ),
            (EventKind::Replied, sent + queue + 10_000, 0),
            (EventKind::Ended, sent + queue + 11_000, FLAG_HAS_HEADER),
        ] {
            t.observe(
                &FuseEvent {
                    kind: kind as u8,
                    ts_ns: ts,
                    flags,
                    ..base
                },
                &mut out,
            );
        }
        out.pop().unwrap()
    }

    /// `n` requests of `len` bytes, `depth` sent together every `gap` ns,
    /// each waiting `queue` ns; the findings under `offer`.
    fn run_deep(
        n: u64,
        depth: u64,
        gap: u64,
        queue: u64,
        len: u32,
        uring: bool,
        offer: Option<UringOffer>,
    ) -> Vec<Finding> {
        let mut rule = IoUringUnused::default();
        let mut facts = Facts {
            io_uring: offer,
            ..Facts::default()
        };
        let mut recs = Vec::new();
        for i in 0..n {
            let r = request(2 + 2 * i, 1_000 + i / depth * gap, queue, len, uring);
            assert_eq!(
                r.transport,
                Some(if uring {
                    Transport::IoUring
                } else {
                    Transport::DevFuse
                })
            );
            recs.push(r);
        }
        let mut events: Vec<_> = recs
            .iter()
            .flat_map(|r| {
                [
                    point(EventKind::Sent, r.unique, r.sent_ns.unwrap(), false),
                    point(EventKind::Ended, r.unique, r.ended_ns.unwrap(), false),
                ]
            })
            .collect();
        events.sort_by_key(|e| e.ts_ns);
        for ev in &events {
            rule.event(ev);
        }
        for r in &recs {
            facts.request(r);
            rule.request(r);
        }
        rule.conclude(&facts)
    }

    /// 4 requests at a time.
    fn run(
        n: u64,
        gap: u64,
        queue: u64,
        len: u32,
        uring: bool,
        offer: Option<UringOffer>,
    ) -> Vec<Finding> {
        run_deep(n, 4, gap, queue, len, uring, offer)
    }

    #[test]
    fn many_small_queued_requests_on_dev_fuse_are_found_with_the_knob() {
        // 2000 requests in 25 ms (80 000/s), 4 at a time, 15 us of 26 us
        // in the queue.
        let found = run(2000, 50_000, 15_000, 80, false, Some(UringOffer::Off));
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::IoUringUnused);
        assert_eq!(f.evidence["requests"], 2000);
        assert_eq!(f.evidence["small_share"], 1.0);
        assert_eq!(f.evidence["mean_queue_wait_ns"], 15_000);
        assert_eq!(f.evidence["mean_in_flight"], 4.0);
        assert!(
            f.knob
                .contains("echo Y > /sys/module/fuse/parameters/enable_uring"),
            "{}",
            f.knob
        );
        assert!(f.knob.contains("--io-uring"), "{}", f.knob);
        let on = run(2000, 50_000, 15_000, 80, false, Some(UringOffer::On));
        assert!(!on[0].knob.contains("echo Y"), "{}", on[0].knob);
    }

    #[test]
    fn no_offer_or_io_uring_in_use_or_large_slow_or_unqueued_requests_find_nothing() {
        for offer in [None, Some(UringOffer::Absent)] {
            assert!(run(2000, 50_000, 15_000, 80, false, offer).is_empty());
        }
        let on = Some(UringOffer::On);
        assert!(run(2000, 50_000, 15_000, 80, true, on).is_empty(), "in use");
        assert!(
            run(2000, 50_000, 15_000, 128 * 1024, false, on).is_empty(),
            "large"
        );
        assert!(
            run(2000, 5_000_000, 15_000, 80, false, on).is_empty(),
            "200/s"
        );
        assert!(
            run(2000, 50_000, 1_000, 80, false, on).is_empty(),
            "no queue"
        );
        assert!(run(500, 50_000, 15_000, 80, false, on).is_empty(), "few");
        assert!(
            run_deep(2000, 1, 50_000, 15_000, 80, false, on).is_empty(),
            "one at a time"
        );
    }
}
