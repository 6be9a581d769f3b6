//! The error-storm finding: one opcode failing with one errno again and
//! again, mostly on a few paths: each failure is a whole round trip to the
//! daemon for nothing. The answers a FUSE mount gives all day are left out:
//! ENOENT to LOOKUP (a name that is not there; repeated failed lookups are
//! the negative cache's finding), ENODATA and ERANGE to the xattr calls,
//! ENOSYS (`super::enosys`), and the INTERRUPTs' own answers
//! (`super::interrupt_storm`).

use std::{collections::BTreeMap, sync::Arc};

use serde_json::json;

use crate::{
    diagnose::finding::{Facts, Finding, FindingId, Rule, count, percent, rate, span},
    pipeline::{FastMap, errno, lifecycle::RequestLifecycle, opcode},
};

/// Fewer failures than this of one opcode and errno are incidents, not a
/// storm.
const MIN_ERRORS: u64 = 50;
/// ... and so is a smaller share of the mount's requests.
const MIN_SHARE: f64 = 0.01;
/// Distinct nodes kept per (opcode, errno); further ones count as others.
const MAX_PATHS: usize = 4096;
/// Paths and storms listed in the evidence.
const ROWS: usize = 5;

/// One opcode's failures with one errno.
#[derive(Default)]
struct Storm {
    count: u64,
    /// By node: the latest path seen (none: its name was not seen), and
    /// the failures.
    nodes: FastMap<u64, (Option<Arc<str>>, u64)>,
    other_paths: u64,
}

/// Counts failures by (opcode, errno) and path.
#[derive(Default)]
pub struct ErrorStorm {
    storms: BTreeMap<(u32, i32), Storm>,
}

/// Answers that are part of a healthy mount's life, or another rule's.
/// An attribute that is not there (ENODATA) or a size probe (ERANGE) is
/// the xattr calls' normal answer: the kernel asks for security.capability
/// before every write to a file, and a healthy daemon says ENODATA.
fn expected(op: u32, errno: i32) -> bool {
    errno == libc::ENOSYS
        || op == opcode::INTERRUPT
        || (op == opcode::LOOKUP && errno == libc::ENOENT)
        || (matches!(op, opcode::GETXATTR | opcode::LISTXATTR)
            && matches!(errno, libc::ENODATA | libc::ERANGE))
}

impl Rule for ErrorStorm {
    fn request(&mut self, rec: &RequestLifecycle) {
        let Some(e) = rec.error.filter(|&e| e < 0).map(|e| -e) else {
            return;
        };
        if expected(rec.opcode, e) {
            return;
        }
        let storm = self.storms.entry((rec.opcode, e)).or_default();
        storm.count += 1;
        let node = rec.nodeid.unwrap_or(0);
        if let Some((path, n)) = storm.nodes.get_mut(&node) {
            *n += 1;
            if rec.path.is_some() {
                path.clone_from(&rec.path);
            }
        } else if storm.nodes.len() < MAX_PATHS {
            storm.nodes.insert(node, (rec.path.clone(), 1));
        } else {
            storm.other_paths += 1;
        }
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        let requests = facts.requests.max(1);
        let mut storms: Vec<(&(u32, i32), &Storm)> = self
            .storms
            .iter()
            .filter(|(_, s)| s.count >= MIN_ERRORS && s.count as f64 / requests as f64 >= MIN_SHARE)
            .collect();
        storms.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let Some(&(&(op, e), worst)) = storms.first() else {
            return Vec::new();
        };
        let (name, errno_name) = (opcode::name(op), errno::name(e));
        let seconds = facts.seconds();
        let per_second = if seconds > 0.0 {
            worst.count as f64 / seconds
        } else {
            0.0
        };
        let mut paths: Vec<(String, u64)> = worst
            .nodes
            .iter()
            .map(|(node, (path, n))| match path {
                Some(p) => (p.to_string(), *n),
                None => (format!("node {node}"), *n),
            })
            .collect();
        paths.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let top: Vec<_> = paths
            .iter()
            .take(ROWS)
            .map(|(p, n)| json!({ "path": p, "count": n }))
            .collect();
        let in_all = match worst.other_paths {
            0 => count(paths.len() as u64),
            _ => format!("over {}", count(paths.len() as u64)),
        };
        let on = match paths.as_slice() {
            [(p, _)] if worst.other_paths == 0 => format!("all on {p}"),
            [(p, n), ..] => format!("{} on {p}, {in_all} paths in all", count(*n)),
            [] => String::new(),
        };
        let total: u64 = storms.iter().map(|(_, s)| s.count).sum();
        let rows: Vec<_> = storms
            .iter()
            .take(ROWS)
            .map(|&(&(op, e), s)| {
                json!({ "opcode": opcode::name(op), "errno": errno::name(e), "count": s.count })
            })
            .collect();
        let others = match storms.len() {
            1 => String::new(),
            2 => format!("; 1 more storm, {} failures in all", count(total)),
            k => format!("; {} more storms, {} failures in all", k - 1, count(total)),
        };
        let top_path = paths.first().map_or("-", |(p, _)| p.as_str());
        let (knob, expect) = advice(op, e, &name, &errno_name, top_path);
        vec![
            Finding::new(
                FindingId::ErrorStorm,
                total as f64 / requests as f64,
                format!(
                    "{name} failed {errno_name} {} times in {} ({}, {} of the requests), {on}{others}",
                    count(worst.count),
                    span(seconds),
                    rate(worst.count, seconds),
                    percent(worst.count, facts.requests),
                ),
            )
            .with("opcode", name.clone())
            .with("errno", errno_name.clone())
            .with("count", worst.count)
            .with("per_second", (per_second * 1000.0).round() / 1000.0)
            .with("share", (worst.count as f64 / requests as f64 * 1000.0).round() / 1000.0)
            .with("top_paths", top)
            .with("storms", rows)
            .knob(knob)
            .expect(format!(
                "{expect}: up to {} fewer failed {name} round trips ({} of the requests)",
                count(worst.count),
                percent(worst.count, facts.requests),
            )),
        ]
    }
}

/// The knob for a kind of failure, and what changing it does.
fn advice(op: u32, e: i32, name: &str, errno_name: &str, path: &str) -> (String, String) {
    match e {
        libc::EACCES | libc::EPERM => (
            format!(
                "the callers' access to {path} (the most refused path), or the daemon's {name} permission check; if it is about mode bits, `-o default_permissions` makes the kernel refuse without asking the daemon"
            ),
            format!("{name} refused in the kernel or not asked for"),
        ),
        libc::EOPNOTSUPP
            if matches!(
                op,
                opcode::GETXATTR | opcode::LISTXATTR | opcode::SETXATTR | opcode::REMOVEXATTR
            ) =>
        {
            (
                format!(
                    "a daemon without extended attributes answers {name} ENOSYS, not EOPNOTSUPP: the kernel then remembers and stops asking (the callers still get EOPNOTSUPP)"
                ),
                format!("one {name} per mount instead of one per call"),
            )
        }
        libc::ENOENT => (
            format!(
                "names the kernel still caches but the daemon no longer has (changed behind the mount): a shorter `entry_timeout`, or the daemon's `fuse_lowlevel_notify_inval_entry` when it removes them; else the callers asking for {name} of missing files"
            ),
            "stale names dropped from the kernel's cache".into(),
        ),
        libc::EIO => (
            format!("the daemon's backend for {path} (its log says why {name} fails)"),
            format!("{name} served instead of failing"),
        ),
        _ => (
            format!(
                "the callers that keep asking for {name} on {path} although it fails {errno_name}, or the daemon's {name} handler"
            ),
            format!("{name} no longer failing"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::rules::synthetic::{Times, conclude, request};

    const MS: u64 = 1_000_000;

    fn run(recs: &[RequestLifecycle]) -> Vec<Finding> {
        conclude::<ErrorStorm>(recs)
    }

    fn many(first: u64, n: u64, op: u32, error: i32, path: &str) -> Vec<RequestLifecycle> {
        (0..n)
            .map(|i| {
                request(
                    2 * (first + i + 1),
                    op,
                    Times::staged((i + 1) * MS, 10_000, 20_000, 5_000),
                    error,
                    path,
                )
            })
            .collect()
    }

    #[test]
    fn a_storm_names_opcode_errno_and_paths() {
        let mut recs = many(0, 80, opcode::OPEN, -libc::EACCES, "/mnt/secret");
        recs.extend(many(100, 20, opcode::OPEN, -libc::EACCES, "/mnt/other"));
        recs.extend(many(200, 100, opcode::GETATTR, 0, "/mnt/a"));
        let found = run(&recs);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::ErrorStorm);
        assert_eq!(
            (
                &f.evidence["opcode"],
                &f.evidence["errno"],
                &f.evidence["count"]
            ),
            (&json!("OPEN"), &json!("EACCES"), &json!(100))
        );
        assert_eq!(
            f.evidence["top_paths"],
            json!([{"path": "/mnt/secret", "count": 80}, {"path": "/mnt/other", "count": 20}])
        );
        assert!((f.weight - 0.5).abs() < 1e-9);
        assert!(
            f.summary.starts_with(
                "OPEN failed EACCES 100 times in 99 ms (1 010/s, 50% of the requests)"
            ) && f.summary.contains("80 on /mnt/secret, 2 paths in all"),
            "{}",
            f.summary
        );
        assert!(f.knob.contains("default_permissions"), "{}", f.knob);
        assert!(
            f.expect
                .contains("up to 100 fewer failed OPEN round trips (50%"),
            "{}",
            f.expect
        );
    }

    #[test]
    fn normal_answers_and_small_counts_are_no_storm() {
        let mut recs = many(0, 500, opcode::LOOKUP, -libc::ENOENT, "/mnt/missing");
        recs.extend(many(1000, 500, opcode::STATFS, -libc::ENOSYS, "/mnt"));
        recs.extend(many(2000, 49, opcode::GETATTR, -libc::EIO, "/mnt/bad"));
        assert!(run(&recs).is_empty());
        // 60 failures among 10 000 requests: under 1%.
        let mut recs = many(0, 60, opcode::GETATTR, -libc::EIO, "/mnt/bad");
        recs.extend(many(1000, 9_940, opcode::GETATTR, 0, "/mnt/a"));
        assert!(run(&recs).is_empty());
    }

    #[test]
    fn the_worst_storm_leads_the_others_are_rows() {
        let mut recs = many(0, 60, opcode::UNLINK, -libc::ENOENT, "/mnt/gone");
        recs.extend(many(100, 90, opcode::GETXATTR, -libc::EOPNOTSUPP, "/mnt/f"));
        // Missing attributes are normal, however many.
        recs.extend(many(200, 80, opcode::GETXATTR, -libc::ENODATA, "/mnt/f"));
        let f = &run(&recs)[0];
        assert_eq!(f.evidence["opcode"], "GETXATTR");
        assert_eq!(f.evidence["errno"], "EOPNOTSUPP");
        assert!(
            f.summary
                .contains("all on /mnt/f; 1 more storm, 150 failures in all"),
            "{}",
            f.summary
        );
        assert!(f.knob.contains("ENOSYS, not EOPNOTSUPP"), "{}", f.knob);
        assert_eq!(
            f.evidence["storms"][1],
            json!({"opcode": "UNLINK", "errno": "ENOENT", "count": 60})
        );
    }
}
