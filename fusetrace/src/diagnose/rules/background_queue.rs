//! Background queue saturation: readahead and async writes are background
//! requests, of which the kernel lets at most `max_background` be in flight
//! (more wait in its background queue, or their submitter blocks), and
//! from `congestion_threshold` on it treats the connection as congested
//! (skipping async readahead). The rule measures the time the background
//! requests in flight were pinned at the limit. On this kernel a
//! background request's send is seen when it leaves the background queue,
//! so the in-flight count (sent -> ended) never passes the limit: the
//! wait itself is invisible, the ceiling is not.

use fusetrace_common::FuseEvent;

use super::in_flight::InFlight;
use crate::diagnose::finding::{Facts, Finding, FindingId, Rule, count, percent};
use crate::pipeline::lifecycle::RequestLifecycle;

/// Fewer background requests than this say nothing about their queue.
const MIN_BACKGROUND: u64 = 100;
/// The share of the traffic's span spent at the limit from which the
/// limit shapes the traffic rather than a passing burst touching it.
const MIN_PINNED_SHARE: f64 = 0.25;
/// The limits suggested: this many times the current ones.
const SUGGESTED_FACTOR: u32 = 4;

pub struct BackgroundQueue {
    /// Finished background requests.
    background: u64,
    in_flight: InFlight,
}

/// Counts background requests only (not derived: `InFlight`'s default
/// counts every request).
impl Default for BackgroundQueue {
    fn default() -> Self {
        BackgroundQueue {
            background: 0,
            in_flight: InFlight::background(),
        }
    }
}

impl Rule for BackgroundQueue {
    fn request(&mut self, rec: &RequestLifecycle) {
        if rec.background == Some(true) {
            self.background += 1;
        }
    }

    fn event(&mut self, ev: &FuseEvent) {
        self.in_flight.event(ev);
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        let Some(limits) = facts.limits.filter(|l| l.max_background > 0) else {
            return Vec::new();
        };
        let span = (facts.seconds() * 1e9) as u64;
        let max = limits.max_background;
        let pinned = self.in_flight.at_least_ns(max);
        let congested = self.in_flight.at_least_ns(limits.congestion_threshold);
        let share = pinned as f64 / span.max(1) as f64;
        log::debug!(
            "background_queue on {}: {} background requests, max_background {max}, peak {} in flight, pinned {pinned} ns of {span} ns ({share:.2}), busy {} ns",
            facts.connection,
            self.background,
            self.in_flight.peak(),
            self.in_flight.busy_ns()
        );
        if self.background < MIN_BACKGROUND || share < MIN_PINNED_SHARE {
            return Vec::new();
        }
        let busy = self.in_flight.busy_ns();
        let new_max = max.saturating_mul(SUGGESTED_FACTOR);
        // The kernel's own default threshold is 3/4 of the limit.
        let new_threshold = new_max / 4 * 3;
        let dir = format!("/sys/fs/fuse/connections/{}", facts.connection);
        vec![
            Finding::new(
                FindingId::BackgroundQueue,
                share,
                format!(
                    "background requests pinned at max_background = {max} for {} of the traffic's time ({} of the time any was in flight; {} background requests); {}",
                    percent(pinned, span),
                    percent(pinned, busy),
                    count(self.background),
                    if limits.congestion_threshold > max {
                        format!(
                            "congestion_threshold = {} is above it",
                            limits.congestion_threshold
                        )
                    } else {
                        format!(
                            "congestion_threshold = {} reached {} of the time",
                            limits.congestion_threshold,
                            percent(congested, span)
                        )
                    },
                ),
            )
            .with("max_background", max)
            .with("congestion_threshold", limits.congestion_threshold)
            .with("background_requests", self.background)
            .with("peak_background_in_flight", self.in_flight.peak())
            .with("pinned_share", (share * 1000.0).round() / 1000.0)
            .with("pinned_ns", pinned)
            .with("congested_ns", congested)
            .with("background_busy_ns", busy)
            .with("span_ns", span)
            .knob(format!(
                "`echo {new_max} > {dir}/max_background; echo {new_threshold} > {dir}/congestion_threshold`, or the daemon's INIT max_background (libfuse `-o max_background={new_max},congestion_threshold={new_threshold}`; the reference daemon `--max-background {new_max}`)"
            ))
            .expect(format!(
                "up to {new_max} readahead and async-write requests in flight instead of {max}: fewer waits for a slot and no readahead skipped as congested, if the daemon serves them in parallel"
            )),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::finding::Limits;
    use crate::diagnose::rules::in_flight::point;
    use crate::pipeline::tracker::{Tracker, TrackerConfig};
    use fusetrace_common::{EventKind, FLAG_BACKGROUND, FLAG_HAS_HEADER};

    fn read(unique: u64, sent: u64, ended: u64, background: bool) -> RequestLifecycle {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let base = FuseEvent {
            flags: FLAG_HAS_HEADER | if background { FLAG_BACKGROUND } else { 0 },
            connection: 50,
            unique,
            opcode: crate::pipeline::opcode::READ,
            nodeid: 2,
            tid: 7,
            ..Default::default()
        };
        for (kind, ts) in [
            (EventKind::Sent, sent),
            (EventKind::Taken, sent + 100),
            (EventKind::Replied, ended - 100),
            (EventKind::Ended, ended),
        ] {
            t.observe(
                &FuseEvent {
                    kind: kind as u8,
                    ts_ns: ts,
                    ..base
                },
                &mut out,
            );
        }
        out.pop().unwrap()
    }

    /// `n` background READs kept `depth` at a time in flight back to back
    /// (each 100 us), then as long again with no traffic but one
    /// synchronous request at the end.
    fn run(n: u64, depth: u64, max_background: u32) -> Vec<Finding> {
        let mut rule = BackgroundQueue::default();
        let mut facts = Facts {
            connection: 50,
            limits: Some(Limits {
                max_background,
                congestion_threshold: max_background * 3 / 4,
                ..Limits::default()
            }),
            ..Facts::default()
        };
        let mut recs = Vec::new();
        for i in 0..n {
            let sent = (i / depth) * 100_000;
            recs.push(read(2 + 2 * i, sent, sent + 100_000, true));
        }
        let end = recs.last().unwrap().ended_ns.unwrap();
        recs.push(read(2 + 2 * n, 2 * end, 2 * end + 1_000, false));
        let mut events: Vec<_> = recs
            .iter()
            .flat_map(|r| {
                let bg = r.background == Some(true);
                [
                    point(EventKind::Sent, r.unique, r.sent_ns.unwrap(), bg),
                    point(EventKind::Ended, r.unique, r.ended_ns.unwrap(), bg),
                ]
            })
            .collect();
        // Ends before sends at the same instant, as the kernel orders them.
        events.sort_by_key(|e| (e.ts_ns, e.kind != EventKind::Ended as u8));
        for ev in &events {
            rule.event(ev);
        }
        for r in &recs {
            facts.request(r);
            rule.request(r);
        }
        rule.conclude(&facts)
    }

    #[test]
    fn background_requests_at_the_limit_are_found_with_the_knob() {
        let found = run(400, 1, 1);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::BackgroundQueue);
        assert_eq!(f.evidence["max_background"], 1);
        assert_eq!(f.evidence["background_requests"], 400);
        assert_eq!(f.evidence["peak_background_in_flight"], 1);
        // Pinned for the first half of the span.
        assert!((f.weight - 0.5).abs() < 0.01, "{f:?}");
        assert!(
            f.summary.contains("50% of the traffic's time"),
            "{}",
            f.summary
        );
        assert!(
            f.knob
                .contains("echo 4 > /sys/fs/fuse/connections/50/max_background"),
            "{}",
            f.knob
        );
    }

    #[test]
    fn below_the_limit_or_few_requests_or_no_limits_find_nothing() {
        assert!(run(400, 2, 12).is_empty(), "2 in flight of 12");
        assert!(run(50, 1, 1).is_empty(), "too few to tell");
        let mut rule = BackgroundQueue::default();
        rule.request(&read(2, 0, 10_000, true));
        assert!(rule.conclude(&Facts::default()).is_empty(), "no limits");
    }
}
