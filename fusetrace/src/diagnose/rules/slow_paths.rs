//! The slow-paths finding: the files and operations whose requests take
//! far longer than the mount's typical request, and which stage their time
//! goes to. The daemon stage (taken to replied) says the daemon or its
//! backend is the bottleneck; the queue (sent to taken) that requests wait
//! for a daemon thread; completion (replied to ended) that the kernel or
//! the scheduler is slow to hand the answer back.
//!
//! A row is one file's operation, or an operation slow on many files none
//! of which is asked often enough to make a row of its own (a CREATE per
//! new file).
//!
//! "Slow" is relative and absolute at once: a (path, opcode) group is slow
//! when its mean is many times the mount's median request and above a
//! floor no healthy in-memory request reaches (and at least half of its
//! requests are each above that floor: a stall is not a slow path), so that a mount under a
//! mixed load, whose opcodes naturally differ, does not get it. A group
//! slower than a second floor is slow whatever the mount's median (every
//! request of the mount may be slow).

use std::{collections::BTreeMap, sync::Arc};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::{
    diagnose::{
        analysis::duration,
        finding::{Facts, Finding, FindingId, Rule, count, percent},
    },
    pipeline::{
        FastMap,
        lifecycle::{LatencyStage, RequestLifecycle},
        opcode,
    },
};

/// Fewer requests than this in a group are anecdotes.
const MIN_REQUESTS: u64 = 20;
/// A group's mean must be this many times the mount's median...
const FACTOR: u64 = 10;
/// ... and above this (ns): a request to a healthy daemon that keeps its
/// files in memory takes tens of microseconds.
const FLOOR_NS: u64 = 1_000_000;
/// Above this mean (ns) a group is slow even if the whole mount is.
const SLOW_ANYWAY_NS: u64 = 50_000_000;
/// Rows in the evidence.
const ROWS: usize = 5;

/// The stages a request's time splits into, in the order they happen.
const STAGES: [LatencyStage; 3] = [
    LatencyStage::QueueWait,
    LatencyStage::DaemonService,
    LatencyStage::Completion,
];

/// A (node, opcode) group's sums.
#[derive(Default)]
struct Group {
    /// The node's path, the latest seen (none: its name was not seen).
    path: Option<Arc<str>>,
    count: u64,
    total_ns: u64,
    /// Requests that took at least `FLOOR_NS` each.
    over_floor: u64,
    /// Per stage (`STAGES`), over the requests whose three stages were seen.
    stage_ns: [u64; 3],
}

impl Group {
    fn mean(&self) -> u64 {
        self.total_ns.checked_div(self.count).unwrap_or(0)
    }

    /// The stage with the most time, and its share of the staged time.
    fn dominant(&self) -> Option<(LatencyStage, f64)> {
        let staged: u64 = self.stage_ns.iter().sum();
        let (i, &most) = self
            .stage_ns
            .iter()
            .enumerate()
            .max_by_key(|(_, ns)| **ns)?;
        (staged > 0).then(|| (STAGES[i], most as f64 / staged as f64))
    }
}

/// A group's node as views show it: its path, else `node N`.
fn place(node: u64, path: &Option<Arc<str>>) -> String {
    match path {
        Some(p) => p.to_string(),
        None => format!("node {node}"),
    }
}

pub struct SlowPaths {
    /// By (node, opcode): a node keeps its group when its name is first
    /// seen midway, or changes.
    groups: FastMap<(u64, u32), Group>,
    /// Every request's total latency, for the mount's median.
    all: Histogram<u64>,
    all_ns: u64,
}

impl Default for SlowPaths {
    fn default() -> Self {
        SlowPaths {
            groups: FastMap::default(),
            // 1 ns to an hour, 2 significant digits: a median within 1%.
            all: Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("valid bounds"),
            all_ns: 0,
        }
    }
}

impl Rule for SlowPaths {
    fn request(&mut self, rec: &RequestLifecycle) {
        // Requests that wait by design (a lock) say nothing of speed.
        if !rec.expects_reply() || rec.opcode == opcode::SETLKW {
            return;
        }
        let Some(total) = rec.latency(LatencyStage::Total) else {
            return;
        };
        let _ = self.all.record(total.max(1));
        self.all_ns += total;
        // Nobody waits for a RELEASE (close(2) returns before it is sent):
        // part of the mount's typical request, never a slow path.
        if matches!(rec.opcode, opcode::RELEASE | opcode::RELEASEDIR) {
            return;
        }
        let g = self
            .groups
            .entry((rec.nodeid.unwrap_or(0), rec.opcode))
            .or_default();
        if rec.path.is_some() {
            g.path.clone_from(&rec.path);
        }
        g.count += 1;
        g.total_ns += total;
        g.over_floor += u64::from(total >= FLOOR_NS);
        if let [Some(q), Some(d), Some(c)] = STAGES.map(|s| rec.latency(s)) {
            for (sum, ns) in g.stage_ns.iter_mut().zip([q, d, c]) {
                *sum += ns;
            }
        }
    }

    fn conclude(&self, _facts: &Facts) -> Vec<Finding> {
        if self.all.is_empty() {
            return Vec::new();
        }
        let median = self.all.value_at_quantile(0.5);
        let bar = FLOOR_NS.max(median.saturating_mul(FACTOR));
        // Slow as a rule, not by a few outliers: one stall of the machine
        // (a 50 ms scheduling delay) lifts a small group's mean past any
        // bar, so half its requests must each be past the floor too.
        let is_slow = |g: &Group| {
            g.count >= MIN_REQUESTS
                && g.over_floor * 2 >= g.count
                && (g.mean() >= bar || g.mean() >= SLOW_ANYWAY_NS)
        };
        // One file's slow operation...
        let mut rows: Vec<(String, u32, &Group)> = Vec::new();
        let mut covered: BTreeMap<u32, u64> = BTreeMap::new();
        for ((node, op), g) in &self.groups {
            if is_slow(g) {
                rows.push((place(*node, &g.path), *op, g));
                *covered.entry(*op).or_default() += g.count;
            }
        }
        // ... or an operation slow on many files, each too rarely asked
        // for a group of its own (a CREATE per new file).
        let by_opcode = self.by_opcode();
        for (op, (g, nodes)) in &by_opcode {
            if is_slow(g) && covered.get(op).copied().unwrap_or(0) * 2 < g.count {
                rows.push((format!("{} paths", count(*nodes)), *op, g));
            }
        }
        if let Some((op, (g, _))) = by_opcode
            .iter()
            .filter(|(_, (g, _))| g.count >= MIN_REQUESTS)
            .max_by_key(|(_, (g, _))| g.mean())
        {
            log::debug!(
                "slow paths: the mount's median request {}, the slowest operation {} {} on average over {} requests (slow from {})",
                duration(median),
                opcode::name(*op),
                duration(g.mean()),
                g.count,
                duration(bar.min(SLOW_ANYWAY_NS)),
            );
        }
        // Worst first: the most time lost.
        rows.sort_by(|a, b| {
            b.2.total_ns
                .cmp(&a.2.total_ns)
                .then(a.1.cmp(&b.1))
                .then(a.0.cmp(&b.0))
        });
        let Some((place, op, worst)) = rows.first() else {
            return Vec::new();
        };
        let slow_ns: u64 = rows.iter().map(|(_, _, g)| g.total_ns).sum();
        let slow_requests: u64 = rows.iter().map(|(_, _, g)| g.count).sum();
        let share = slow_ns as f64 / self.all_ns.max(1) as f64;
        let evidence: Vec<_> = rows
            .iter()
            .take(ROWS)
            .map(|(place, op, g)| {
                let (stage, stage_share) = g
                    .dominant()
                    .map_or((None, 0.0), |(s, x)| (Some(s.name()), x));
                json!({
                    "path": place,
                    "opcode": opcode::name(*op),
                    "count": g.count,
                    "mean_ns": g.mean(),
                    "stage": stage,
                    "stage_share": (stage_share * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        let name = opcode::name(*op);
        let dominant = worst.dominant();
        let stage_text = dominant.map_or(String::new(), |(s, x)| {
            format!(
                ", {} in {}",
                percent((x * 1000.0).round() as u64, 1000),
                stage_words(s)
            )
        });
        let more = match rows.len() {
            1 => String::new(),
            k => format!("; {k} slow groups in all"),
        };
        let (knob, expect) = advice(dominant.map(|(s, _)| s), &name);
        vec![
            Finding::new(
                FindingId::SlowPaths,
                share,
                format!(
                    "{name} {place}: {} requests of {} on average{stage_text} (the mount's median request: {}){more}; {} of the request time",
                    count(worst.count),
                    duration(worst.mean()),
                    duration(median),
                    percent((share * 1000.0).round() as u64, 1000),
                ),
            )
            .with("rows", evidence)
            .with("median_ns", median)
            .with("slow_requests", slow_requests)
            .with("time_share", (share * 1000.0).round() / 1000.0)
            .knob(knob)
            .expect(format!(
                "{expect}: these requests near the mount's median ({}) instead of {} on average",
                duration(median),
                duration(worst.mean())
            )),
        ]
    }
}

impl SlowPaths {
    /// Every node's groups summed by opcode, with the number of nodes.
    fn by_opcode(&self) -> BTreeMap<u32, (Group, u64)> {
        let mut out: BTreeMap<u32, (Group, u64)> = BTreeMap::new();
        for ((_, op), g) in &self.groups {
            let (sum, nodes) = out.entry(*op).or_default();
            sum.count += g.count;
            sum.total_ns += g.total_ns;
            sum.over_floor += g.over_floor;
            for (a, b) in sum.stage_ns.iter_mut().zip(g.stage_ns) {
                *a += b;
            }
            *nodes += 1;
        }
        out
    }
}

fn stage_words(stage: LatencyStage) -> &'static str {
    match stage {
        LatencyStage::QueueWait => "the queue (waiting for a daemon thread)",
        LatencyStage::DaemonService => "the daemon",
        LatencyStage::Completion => "completion (the kernel handing the answer back)",
        LatencyStage::Total => "all",
    }
}

/// The knob for the stage the time goes to, and what changing it does.
fn advice(stage: Option<LatencyStage>, name: &str) -> (String, String) {
    match stage {
        Some(LatencyStage::QueueWait) => (
            "more daemon threads taking requests (libfuse: multithreaded loop, `-o max_threads=N`; `fusetrace daemon --threads N`), or FUSE over io_uring, or a daemon thread that does not block while others wait".into(),
            "requests taken as soon as they are sent".into(),
        ),
        Some(LatencyStage::Completion) => (
            "the callers' CPU time (a busy or throttled machine runs them late: `top`, cgroup CPU limits), or the kernel's work on the answer (page-cache copies of large READs)".into(),
            "answers delivered as soon as the daemon writes them".into(),
        ),
        _ => (
            format!("the daemon's {name} on these paths: its backend (storage, network, locks) or its own work; the daemon is the bottleneck, not the kernel"),
            format!("{name} served faster by the daemon"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::rules::synthetic::{Times, conclude, request, request_on};

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;

    fn run(recs: &[RequestLifecycle]) -> Vec<Finding> {
        conclude::<SlowPaths>(recs)
    }

    /// `n` requests of `op` on `path`, each with these stage times.
    fn many(first: u64, n: u64, op: u32, path: &str, stages: [u64; 3]) -> Vec<RequestLifecycle> {
        (0..n)
            .map(|i| {
                let [q, d, c] = stages;
                request(
                    2 * (first + i + 1),
                    op,
                    Times::staged((i + 1) * 100 * MS, q, d, c),
                    0,
                    path,
                )
            })
            .collect()
    }

    /// A healthy mix: 300 fast requests of several opcodes and paths.
    fn healthy() -> Vec<RequestLifecycle> {
        let mut recs = many(
            10_000,
            100,
            opcode::GETATTR,
            "/mnt/a",
            [5 * US, 20 * US, 3 * US],
        );
        recs.extend(many(
            20_000,
            100,
            opcode::LOOKUP,
            "/mnt/b",
            [5 * US, 30 * US, 3 * US],
        ));
        recs.extend(many(
            30_000,
            100,
            opcode::WRITE,
            "/mnt/c",
            [10 * US, 200 * US, 5 * US],
        ));
        recs
    }

    #[test]
    fn a_slow_path_in_the_daemon_is_named_with_its_stage() {
        let mut recs = healthy();
        recs.extend(many(
            0,
            40,
            opcode::READ,
            "/mnt/slow",
            [10 * US, 5 * MS, 5 * US],
        ));
        let found = run(&recs);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::SlowPaths);
        let row = &f.evidence["rows"][0];
        assert_eq!(row["path"], "/mnt/slow");
        assert_eq!(row["opcode"], "READ");
        assert_eq!(row["count"], 40);
        assert_eq!(row["mean_ns"], 5 * MS + 15 * US);
        assert_eq!(row["stage"], "daemon_service");
        assert!(row["stage_share"].as_f64().unwrap() > 0.99);
        assert_eq!(f.evidence["rows"].as_array().unwrap().len(), 1);
        assert!(f.weight > 0.8, "most of the time: {}", f.weight);
        assert!(
            f.summary.starts_with(
                "READ /mnt/slow: 40 requests of 5.0 ms on average, 100% in the daemon"
            ),
            "{}",
            f.summary
        );
        assert!(
            f.knob.contains("the daemon is the bottleneck"),
            "{}",
            f.knob
        );
    }

    #[test]
    fn a_node_named_midway_stays_one_group_under_its_path() {
        let mut recs = healthy();
        let node = 77;
        let slow = Times::staged(MS, 10 * US, 5 * MS, 5 * US);
        recs.extend((0..10).map(|i| request_on(2 * i + 2, opcode::OPEN, slow, 0, node, None)));
        recs.extend(
            (10..30)
                .map(|i| request_on(2 * i + 2, opcode::OPEN, slow, 0, node, Some("/mnt/named"))),
        );
        let f = &run(&recs)[0];
        let rows = f.evidence["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (&rows[0]["path"], &rows[0]["count"]),
            (&json!("/mnt/named"), &json!(30))
        );
        // Never named: shown by its node.
        let mut recs = healthy();
        recs.extend((0..30).map(|i| request_on(2 * i + 2, opcode::OPEN, slow, 0, node, None)));
        let f = &run(&recs)[0];
        assert_eq!(f.evidence["rows"][0]["path"], "node 77");
        assert!(
            f.summary.starts_with("OPEN node 77: 30 requests"),
            "{}",
            f.summary
        );
    }

    #[test]
    fn an_operation_slow_on_many_files_is_one_row() {
        let mut recs = healthy();
        // 50 CREATEs of 5 ms, each of another file.
        recs.extend((0..50).map(|i| {
            request(
                2 * i + 2,
                opcode::CREATE,
                Times::staged(MS, 10 * US, 5 * MS, 5 * US),
                0,
                &format!("/mnt/new-{i}"),
            )
        }));
        let f = &run(&recs)[0];
        let rows = f.evidence["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (&rows[0]["path"], &rows[0]["opcode"], &rows[0]["count"]),
            (&json!("50 paths"), &json!("CREATE"), &json!(50))
        );
        assert!(
            f.summary
                .starts_with("CREATE 50 paths: 50 requests of 5.0 ms"),
            "{}",
            f.summary
        );
        // A file that gathers most of the slow requests is its own row, and
        // the operation is not repeated.
        let mut recs = healthy();
        recs.extend(many(
            0,
            40,
            opcode::READ,
            "/mnt/slow",
            [10 * US, 5 * MS, 5 * US],
        ));
        recs.extend((0..10).map(|i| {
            request(
                1000 + 2 * i,
                opcode::READ,
                Times::staged(MS, 10 * US, 5 * MS, 5 * US),
                0,
                &format!("/mnt/other-{i}"),
            )
        }));
        let rows = run(&recs)[0].evidence["rows"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["path"], "/mnt/slow");
    }

    #[test]
    fn queue_and_completion_dominated_groups_say_so() {
        let mut recs = healthy();
        recs.extend(many(
            0,
            30,
            opcode::GETATTR,
            "/mnt/q",
            [4 * MS, 50 * US, 5 * US],
        ));
        let f = &run(&recs)[0];
        assert_eq!(f.evidence["rows"][0]["stage"], "queue_wait");
        assert!(f.knob.contains("more daemon threads"), "{}", f.knob);
        let mut recs = healthy();
        recs.extend(many(
            0,
            30,
            opcode::READ,
            "/mnt/c",
            [5 * US, 50 * US, 3 * MS],
        ));
        let f = &run(&recs)[0];
        assert_eq!(f.evidence["rows"][0]["stage"], "completion");
        assert!(f.knob.contains("CPU time"), "{}", f.knob);
    }

    #[test]
    fn a_healthy_mix_or_few_or_mildly_slow_requests_are_not_slow_paths() {
        assert!(run(&healthy()).is_empty());
        // Slow, but only 19 of them.
        let mut recs = healthy();
        recs.extend(many(
            0,
            19,
            opcode::READ,
            "/mnt/slow",
            [10 * US, 5 * MS, 5 * US],
        ));
        assert!(run(&recs).is_empty());
        // A fast file's operation with one stall of the machine among
        // them: its mean is past the bar, but one request is no rule.
        let mut recs = healthy();
        recs.extend(many(
            0,
            30,
            opcode::READ,
            "/mnt/stalled",
            [10 * US, 20 * US, 5 * US],
        ));
        recs.extend(many(
            1000,
            1,
            opcode::READ,
            "/mnt/stalled",
            [10 * US, 100 * MS, 5 * US],
        ));
        assert!(run(&recs).is_empty());
        // Ten times the median, but under the 1 ms floor.
        let mut recs = healthy();
        recs.extend(many(
            0,
            40,
            opcode::READ,
            "/mnt/slow",
            [10 * US, 800 * US, 5 * US],
        ));
        assert!(run(&recs).is_empty());
        // Slow RELEASEs (nobody waits for them) and lock waits.
        let mut recs = healthy();
        recs.extend(many(
            0,
            40,
            opcode::RELEASE,
            "/mnt/slow",
            [10 * US, 5 * MS, 5 * US],
        ));
        recs.extend(many(
            100,
            40,
            opcode::SETLKW,
            "/mnt/slow",
            [10 * US, 5 * MS, 5 * US],
        ));
        assert!(run(&recs).is_empty());
        // Above the floor, but the whole mount is that slow.
        let recs = many(0, 200, opcode::GETATTR, "/mnt/a", [5 * US, 2 * MS, 5 * US]);
        assert!(run(&recs).is_empty());
    }

    #[test]
    fn a_mount_slow_everywhere_is_still_slow_past_the_second_floor() {
        let recs = many(0, 30, opcode::GETATTR, "/mnt/a", [5 * US, 60 * MS, 5 * US]);
        let f = &run(&recs)[0];
        assert_eq!(f.evidence["rows"][0]["stage"], "daemon_service");
    }
}
