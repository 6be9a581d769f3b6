//! The INTERRUPT-storm finding: applications whose file system calls keep
//! being hit by signals while the daemon is slow. The kernel sends an
//! INTERRUPT for a request in service when its caller gets any signal (a
//! timer, a profiler, a runtime's preemption signal); the daemon may end
//! the request early (EINTR) or ignore it. Many of them mean slow requests
//! and a busy signal source together; a daemon that answers ENOSYS to the
//! first INTERRUPT gets no more (the kernel stops sending them), so a
//! storm comes from daemons that take them (libfuse does).

use std::collections::BTreeMap;

use fusetrace_common::FUSE_INT_REQ_BIT;
use serde_json::json;

use crate::{
    diagnose::{
        analysis::duration,
        finding::{Facts, Finding, FindingId, Rule, count, percent, rate, span},
    },
    pipeline::{
        errno,
        lifecycle::{LatencyStage, RequestLifecycle},
        opcode,
    },
};

/// Fewer INTERRUPTs than this are a Ctrl-C or two, not a storm.
const MIN_INTERRUPTS: u64 = 20;
/// Below this share of the mount's requests they cost nothing worth a
/// finding.
const MIN_SHARE: f64 = 0.001;
/// Target opcodes listed in the evidence.
const ROWS: usize = 5;

/// Counts INTERRUPTs, their answers, and the requests they interrupted.
#[derive(Default)]
pub struct InterruptStorm {
    interrupts: u64,
    /// The daemon's answers to the INTERRUPTs, by errno name ("none": not
    /// answered, as libfuse does when nothing is registered to interrupt).
    answers: BTreeMap<String, u64>,
    /// Interrupted requests by opcode.
    targets: BTreeMap<u32, u64>,
    /// Their time in the daemon (those whose daemon stage was seen).
    target_daemon_ns: u64,
    target_daemon_seen: u64,
    /// Interrupted requests the daemon ended early with EINTR.
    ended_eintr: u64,
}

impl Rule for InterruptStorm {
    fn request(&mut self, rec: &RequestLifecycle) {
        if rec.opcode == opcode::INTERRUPT || rec.unique & FUSE_INT_REQ_BIT != 0 {
            self.interrupts += 1;
            let answer = match (rec.replied_ns, rec.error) {
                (Some(_), Some(e)) if e < 0 => errno::name(e),
                (Some(_), _) => "ok".into(),
                (None, _) => "none".into(),
            };
            *self.answers.entry(answer).or_default() += 1;
            return;
        }
        if !rec.interrupted {
            return;
        }
        *self.targets.entry(rec.opcode).or_default() += 1;
        if let Some(ns) = rec.latency(LatencyStage::DaemonService) {
            self.target_daemon_ns += ns;
            self.target_daemon_seen += 1;
        }
        if rec.error == Some(-libc::EINTR) {
            self.ended_eintr += 1;
        }
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        let requests = facts.requests.max(1);
        let share = self.interrupts as f64 / requests as f64;
        if self.interrupts < MIN_INTERRUPTS || share < MIN_SHARE {
            return Vec::new();
        }
        let seconds = facts.seconds();
        let per_second = if seconds > 0.0 {
            self.interrupts as f64 / seconds
        } else {
            0.0
        };
        let mut targets: Vec<(u32, u64)> = self.targets.iter().map(|(&o, &n)| (o, n)).collect();
        targets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let shown: Vec<String> = targets
            .iter()
            .take(3)
            .map(|&(op, n)| format!("{} {}", opcode::name(op), count(n)))
            .collect();
        let rows: Vec<_> = targets
            .iter()
            .take(ROWS)
            .map(|&(op, n)| json!({ "opcode": opcode::name(op), "count": n }))
            .collect();
        let daemon_mean = self
            .target_daemon_ns
            .checked_div(self.target_daemon_seen)
            .unwrap_or(0);
        let interrupted: u64 = targets.iter().map(|(_, n)| n).sum();
        let in_daemon = if self.target_daemon_seen > 0 {
            format!(
                "; the interrupted requests spent {} on average in the daemon, {} ended EINTR",
                duration(daemon_mean),
                count(self.ended_eintr)
            )
        } else {
            String::new()
        };
        let targeted = if shown.is_empty() {
            String::new()
        } else {
            format!(", for {}", shown.join(", "))
        };
        vec![
            Finding::new(
                FindingId::InterruptStorm,
                share,
                format!(
                    "INTERRUPT: {} in {} ({}, {} of the requests){targeted}{in_daemon}",
                    count(self.interrupts),
                    span(seconds),
                    rate(self.interrupts, seconds),
                    percent(self.interrupts, facts.requests),
                ),
            )
            .with("count", self.interrupts)
            .with("per_second", (per_second * 1000.0).round() / 1000.0)
            .with("share", (share * 1000.0).round() / 1000.0)
            .with("targets", rows)
            .with("interrupted_requests", interrupted)
            .with("interrupted_daemon_mean_ns", daemon_mean)
            .with("ended_eintr", self.ended_eintr)
            .with("answers", serde_json::to_value(&self.answers).unwrap_or_default())
            .knob("the signal source: the callers' timers (SIGALRM, SIGPROF, setitimer), a profiler, Go's preemption signal (GODEBUG=asyncpreemptoff=1); or the daemon: serve the targeted operations faster, or end an interrupted request at once with EINTR (libfuse: `fuse_req_interrupt_func`, `-o intr` in the high-level API)")
            .expect(format!(
                "no INTERRUPT requests without the signals; with a daemon that honours them, interrupted calls return EINTR (or restart, SA_RESTART) instead of waiting {} in the daemon",
                duration(daemon_mean)
            )),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::rules::synthetic::{Times, conclude, interrupted, request};

    const MS: u64 = 1_000_000;

    fn run(recs: &[RequestLifecycle]) -> Vec<Finding> {
        conclude::<InterruptStorm>(recs)
    }

    /// `n` STATFS requests, 20 ms each in the daemon, each interrupted.
    fn storm(n: u64) -> Vec<RequestLifecycle> {
        (0..n)
            .flat_map(|i| {
                interrupted(
                    2 * i + 2,
                    opcode::STATFS,
                    Times::staged((i + 1) * 25 * MS, 10_000, 20 * MS, 5_000),
                    "/mnt",
                )
            })
            .collect()
    }

    #[test]
    fn interrupts_their_targets_and_daemon_time() {
        let recs = storm(40);
        assert_eq!(recs.len(), 80, "an INTERRUPT and its target each");
        let found = run(&recs);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::InterruptStorm);
        assert_eq!(f.evidence["count"], 40);
        assert_eq!(
            f.evidence["targets"],
            json!([{"opcode": "STATFS", "count": 40}])
        );
        assert_eq!(f.evidence["interrupted_daemon_mean_ns"], 20 * MS);
        assert_eq!(f.evidence["answers"], json!({"none": 40}));
        assert_eq!(f.evidence["share"], 0.5);
        assert!(
            f.summary.starts_with("INTERRUPT: 40 in 995 ms (40.2/s, 50% of the requests)") && f.summary.contains("for STATFS 40; the interrupted requests spent 20 ms on average in the daemon, 0 ended EINTR"),
            "{}",
            f.summary
        );
        assert!(
            f.knob.contains("SIGALRM") && f.expect.contains("waiting 20 ms"),
            "{f:?}"
        );
    }

    #[test]
    fn a_few_interrupts_or_a_tiny_share_are_no_storm() {
        assert!(run(&storm(19)).is_empty());
        let mut recs = storm(25);
        recs.extend((0..30_000).map(|i| {
            request(
                1000 + 2 * i,
                opcode::GETATTR,
                Times::staged((i + 1) * 1000, 10, 20, 5),
                0,
                "/mnt",
            )
        }));
        assert!(run(&recs).is_empty(), "25 in 30 050 requests");
    }
}
