//! The ENOSYS finding: an opcode the daemon keeps answering ENOSYS ("not
//! implemented"). For some opcodes (FLUSH, FSYNC, the xattrs, ACCESS,
//! CREATE, FALLOCATE, ...) the kernel remembers the first ENOSYS and stops
//! asking; for the others (STATFS, LINK, IOCTL, SETATTR, ...) every call
//! is a round trip to a daemon that only says no. One ENOSYS per opcode is
//! the protocol's way to probe; the same answer again and again is a cost.

use std::collections::BTreeMap;

use serde_json::json;

use crate::{
    diagnose::finding::{Facts, Finding, FindingId, Rule, count, percent, rate, span},
    pipeline::{lifecycle::RequestLifecycle, opcode},
};

/// Fewer ENOSYS answers than this for one opcode are probes (the kernel
/// asks once per connection for the opcodes it remembers; a few more come
/// from requests already in flight when the first answer came).
const MIN_ENOSYS: u64 = 20;
/// Below this share of the mount's requests the round trips cost nothing
/// worth a finding.
const MIN_SHARE: f64 = 0.001;
/// Opcodes listed in the evidence.
const ROWS: usize = 5;

/// Counts ENOSYS answers by opcode.
#[derive(Default)]
pub struct Enosys {
    by_opcode: BTreeMap<u32, u64>,
}

impl Rule for Enosys {
    fn request(&mut self, rec: &RequestLifecycle) {
        if rec.error == Some(-libc::ENOSYS) {
            *self.by_opcode.entry(rec.opcode).or_default() += 1;
        }
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        let requests = facts.requests.max(1);
        let mut repeated: Vec<(u32, u64)> = self
            .by_opcode
            .iter()
            .map(|(&op, &n)| (op, n))
            .filter(|&(_, n)| n >= MIN_ENOSYS && n as f64 / requests as f64 >= MIN_SHARE)
            .collect();
        repeated.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let Some(&(op, n)) = repeated.first() else {
            return Vec::new();
        };
        let seconds = facts.seconds();
        let per_second = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let name = opcode::name(op);
        let total: u64 = repeated.iter().map(|(_, n)| n).sum();
        let others = match repeated.len() {
            1 => String::new(),
            2 => format!(" (and 1 more opcode, {} in all)", count(total)),
            k => format!(" (and {} more opcodes, {} in all)", k - 1, count(total)),
        };
        let rows: Vec<_> = repeated
            .iter()
            .take(ROWS)
            .map(|&(op, n)| {
                json!({
                    "opcode": opcode::name(op),
                    "count": n,
                    "per_second": round(per_second(n)),
                    "share": round(n as f64 / requests as f64),
                })
            })
            .collect();
        vec![
            Finding::new(
                FindingId::Enosys,
                total as f64 / requests as f64,
                format!(
                    "{name}: answered ENOSYS {} times in {} ({}, {} of the requests){others}; the kernel asks again every time",
                    count(n),
                    span(seconds),
                    rate(n, seconds),
                    percent(n, facts.requests),
                ),
            )
            .with("opcode", name.clone())
            .with("count", n)
            .with("per_second", round(per_second(n)))
            .with("share", round(n as f64 / requests as f64))
            .with("opcodes", rows)
            .knob(format!(
                "implement {name} in the daemon (libfuse: the `{cb}` callback of `fuse_lowlevel_ops`/`fuse_operations`; fuser: `Filesystem::{cb}`), or stop the callers that ask for it",
                cb = callback(op),
            ))
            .expect(format!(
                "{name} served instead of refused; callers that only probe for it stop asking: up to {} fewer round trips ({} of the requests)",
                count(n),
                percent(n, facts.requests),
            )),
        ]
    }
}

/// The daemon callback (libfuse's and fuser's name) that serves an opcode.
fn callback(op: u32) -> String {
    match op {
        opcode::SETLKW => "setlk".into(),
        opcode::RENAME2 => "rename".into(),
        opcode::BATCH_FORGET => "forget_multi".into(),
        _ => opcode::name(op).to_ascii_lowercase(),
    }
}

/// Three decimals are enough for rates and shares in JSON.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::rules::synthetic::{Times, conclude, request};

    const MS: u64 = 1_000_000;

    fn run(recs: &[RequestLifecycle]) -> Vec<Finding> {
        conclude::<Enosys>(recs)
    }

    /// `n` requests of `op` over `n` ms, answered `error`.
    fn many(first: u64, n: u64, op: u32, error: i32) -> Vec<RequestLifecycle> {
        (0..n)
            .map(|i| {
                request(
                    2 * (first + i + 1),
                    op,
                    Times::staged((i + 1) * MS, 10_000, 20_000, 5_000),
                    error,
                    "/mnt",
                )
            })
            .collect()
    }

    #[test]
    fn repeated_enosys_names_the_opcode_and_its_callback() {
        let mut recs = many(0, 100, opcode::STATFS, -libc::ENOSYS);
        recs.extend(many(1000, 100, opcode::GETATTR, 0));
        let found = run(&recs);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::Enosys);
        assert_eq!(f.evidence["opcode"], "STATFS");
        assert_eq!(f.evidence["count"], 100);
        assert_eq!(f.evidence["share"], 0.5);
        // 100 in (almost) 0.1 s.
        let rate = f.evidence["per_second"].as_f64().unwrap();
        assert!((1000.0..1020.0).contains(&rate), "{rate}");
        assert!((f.weight - 0.5).abs() < 1e-9);
        assert!(
            f.summary.starts_with("STATFS: answered ENOSYS 100 times in 99 ms (1 010/s, 50% of the requests); the kernel asks again"),
            "{}",
            f.summary
        );
        assert!(f.knob.contains("`statfs` callback"), "{}", f.knob);
        assert!(
            f.expect.contains("up to 100 fewer round trips"),
            "{}",
            f.expect
        );
    }

    #[test]
    fn several_opcodes_are_rows_worst_first() {
        let mut recs = many(0, 30, opcode::LINK, -libc::ENOSYS);
        recs.extend(many(100, 60, opcode::SETLKW, -libc::ENOSYS));
        let found = run(&recs);
        let f = &found[0];
        assert_eq!(f.evidence["opcode"], "SETLKW");
        assert!(f.knob.contains("`setlk`"), "{}", f.knob);
        let rows = f.evidence["opcodes"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (&rows[1]["opcode"], &rows[1]["count"]),
            (&json!("LINK"), &json!(30))
        );
        assert!(
            f.summary.contains("and 1 more opcode, 90 in all"),
            "{}",
            f.summary
        );
        assert!((f.weight - 1.0).abs() < 1e-9);
    }

    #[test]
    fn probes_and_other_errors_are_not_a_finding() {
        // One ENOSYS per remembered opcode, a few for requests in flight.
        let mut recs = many(0, 3, opcode::FLUSH, -libc::ENOSYS);
        recs.extend(many(10, 1, opcode::STATX, -libc::ENOSYS));
        recs.extend(many(20, 19, opcode::STATFS, -libc::ENOSYS));
        recs.extend(many(100, 500, opcode::GETATTR, -libc::EIO));
        assert!(run(&recs).is_empty());
        // Enough answers, but a negligible share of a busy mount.
        let mut recs = many(0, 25, opcode::STATFS, -libc::ENOSYS);
        recs.extend(many(1000, 30_000, opcode::GETATTR, 0));
        assert!(run(&recs).is_empty());
    }
}
