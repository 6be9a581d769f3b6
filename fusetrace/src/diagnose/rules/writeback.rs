//! The writeback-cache finding: what the mode (`super::super::analysis`,
//! which follows each application write to the WRITE requests that carry
//! it) did to the writes. It fires when the mode costs something: small
//! write-through WRITEs, READs caused by partial-page writes into the
//! writeback cache, or writes that reached the daemon after their sync.

use crate::diagnose::{
    analysis::{Diagnosis, bytes},
    finding::{Facts, Finding, FindingId, count, percent},
};

/// Below this mean size, write-through WRITE requests are small.
const SMALL_WRITE: u64 = 32 * 1024;
/// Fewer WRITE requests than this say nothing about throughput.
const MIN_WRITES: u64 = 1000;
/// Small write-through WRITEs matter when they are most of the traffic.
const MIN_WRITE_SHARE: f64 = 0.5;

/// The finding, when the mode costs something.
pub fn finding(d: &Diagnosis, facts: &Facts) -> Option<Finding> {
    let writes = &d.write_requests;
    let small_write_through = d.writeback_cache == Some(false)
        && d.direct_io_opens == 0
        && writes.count >= MIN_WRITES
        && writes.mean_bytes < SMALL_WRITE
        && writes.count as f64 >= MIN_WRITE_SHARE * facts.requests as f64;
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
