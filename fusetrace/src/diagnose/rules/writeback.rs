//! The writeback-cache finding: what the mode (`super::super::analysis`,
//! which follows each application write to the WRITE requests that carry
//! it) did to the writes. It fires when the mode costs something: small
//! write-through WRITEs (unless a limit cut them: `small_transfers` names
//! that cause), READs caused by partial-page writes into the writeback
//! cache, or writes that reached the daemon after their sync.

use crate::diagnose::{
    analysis::{Diagnosis, bytes},
    finding::{Facts, Finding, FindingId, count, percent},
};

/// Below this mean size, write-through WRITE requests are small.
const SMALL_WRITE: u64 = 32 * 1024;
/// Fewer WRITE requests than this say nothing about throughput.
const MIN_WRITES: u64 = 1000;
/// Small write-through WRITEs matter when they are much of the traffic:
/// 40%, not half, because the kernel asks a GETXATTR (security.capability)
/// before each write(2) to most daemons, so a pure stream of small writes
/// is WRITEs for only half of its requests.
const MIN_WRITE_SHARE: f64 = 0.4;

/// The WRITEs are small because a limit cut the applications' larger
/// writes (max_write, max_pages, no FUSE_BIG_WRITES): `small_transfers`
/// already names that cause, and the writeback cache is not it. `d.findings`
/// holds the rules' findings (`DiagnoseSink::conclude` asks this after them).
fn cut_by_a_limit(d: &Diagnosis) -> bool {
    d.findings.iter().any(|f| {
        f.id == FindingId::SmallTransfers && f.evidence.get("opcode").is_some_and(|o| o == "WRITE")
    })
}

/// The finding, when the mode costs something.
pub fn finding(d: &Diagnosis, facts: &Facts) -> Option<Finding> {
    let writes = &d.write_requests;
    let small_write_through = d.writeback_cache == Some(false)
        && d.direct_io_opens == 0
        && writes.count >= MIN_WRITES
        && writes.mean_bytes < SMALL_WRITE
        && writes.count as f64 >= MIN_WRITE_SHARE * facts.requests as f64
        && !cut_by_a_limit(d);
    let reads = d.writeback_cache == Some(true) && d.reads_caused_by_writes > 0;
    if !small_write_through && !reads && d.writes_after_sync == 0 {
        return None;
    }
    let share = |n: u64| n as f64 / facts.requests.max(1) as f64;
    let f = if d.writes_after_sync > 0 {
        Finding::new(
            FindingId::WritebackCache,
            1.0,
            format!(
                "{} writes reached the daemon only after the next close/fsync had returned",
                count(d.writes_after_sync)
            ),
        )
        .knob("none: the kernel should never do that; report it with this output")
        .expect("every write reaches the daemon before its close/fsync returns")
    } else if small_write_through {
        Finding::new(
            FindingId::WritebackCache,
            share(writes.count),
            format!(
                "write-through: {} writes of {} on average became {} WRITE requests of {} on average ({} of the requests)",
                count(d.app_writes.count),
                bytes(d.app_writes.mean_bytes),
                count(writes.count),
                bytes(writes.mean_bytes),
                percent(writes.count, facts.requests),
            ),
        )
        .knob("the writeback cache: `-o writeback_cache` (libfuse 3; the daemon asks FUSE_WRITEBACK_CACHE in INIT), or larger application writes")
        .expect("the kernel gathers small writes into WRITE requests up to max_write; only for files no one else changes behind the mount")
    } else {
        Finding::new(
            FindingId::WritebackCache,
            share(d.reads_caused_by_writes),
            format!(
                "writeback cache: {} of {} writes went into uncached partial pages and caused {} READ requests",
                count(d.app_writes_with_reads),
                count(d.app_writes.count),
                count(d.reads_caused_by_writes),
            ),
        )
        .knob("page-aligned application writes (appends in whole pages), or no writeback cache for this workload")
        .expect("no READ before a write: the page is either cached or wholly overwritten")
    };
    Some(
        f.with("writeback_cache", d.writeback_cache)
            .with("app_writes", d.app_writes.count)
            .with("app_write_mean_bytes", d.app_writes.mean_bytes)
            .with("write_requests", writes.count)
            .with("write_request_mean_bytes", writes.mean_bytes)
            .with("reads_caused_by_writes", d.reads_caused_by_writes)
            .with("writes_after_sync", d.writes_after_sync),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::analysis::{Evidence, app_write, request};
    use crate::diagnose::finding::{Limits, Rule};
    use crate::diagnose::rules::small_transfers::SmallTransfers;
    use fusetrace_common::opcode::WRITE as OP_WRITE;

    /// 80 write-through write(2) calls of 64 KiB, each cut into 16 WRITEs of
    /// 4 KiB, on a connection with these limits: the diagnosis with the
    /// rules' findings in it (as `DiagnoseSink::conclude` makes it), and
    /// the facts.
    fn cut_writes(limits: Option<Limits>) -> (Diagnosis, Facts) {
        let mut e = Evidence::default();
        let mut rule = SmallTransfers::default();
        let mut facts = Facts {
            limits,
            ..Facts::default()
        };
        let mut unique = 2;
        for w in 0..80u64 {
            let enter = 1_000_000 * (w + 1);
            for p in 0..16u64 {
                let rec = request(
                    unique,
                    OP_WRITE,
                    enter + 100 * (p + 1),
                    7,
                    [w * 65536 + p * 4096, 4096],
                    [0, 0],
                    false,
                );
                e.request(&rec);
                rule.request(&rec);
                facts.request(&rec);
                unique += 2;
            }
            let ev = app_write(7, w * 65536, 65536, enter, enter + 900_000);
            e.app_write(&ev);
            rule.event(&ev);
        }
        let mut d = e.conclude(&mut |_| "/mnt".into()).pop().unwrap();
        d.findings = rule.conclude(&facts);
        (d, facts)
    }

    #[test]
    fn small_write_through_writes_are_this_finding_unless_a_limit_cut_them() {
        // Limits unknown: nothing says the WRITEs were cut.
        let (d, facts) = cut_writes(None);
        assert_eq!(d.findings, []);
        let f = finding(&d, &facts).expect("small write-through WRITEs");
        assert_eq!(f.id, FindingId::WritebackCache);
        assert!(
            f.summary.starts_with("write-through: 80 writes of 64 KiB"),
            "{}",
            f.summary
        );
        // A 4 KiB max_write cut them: `small_transfers` says so, alone.
        let small = Limits {
            max_read: u32::MAX,
            max_write: 4096,
            max_pages: 256,
            ..Limits::default()
        };
        let (d, facts) = cut_writes(Some(small));
        assert_eq!(d.findings.len(), 1);
        assert_eq!(d.findings[0].id, FindingId::SmallTransfers);
        assert_eq!(finding(&d, &facts), None);
    }
}
