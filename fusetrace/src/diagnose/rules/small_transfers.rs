//! The small-transfers finding: READ or WRITE requests cut into small
//! pieces by the connection's negotiated limits (`max_write`, `max_read`,
//! `max_pages`, read from the kernel's `fuse_conn`; or one page per
//! write-through WRITE when FUSE_BIG_WRITES was not negotiated), not by
//! what the application asked. Small requests the application chose
//! (4 KiB write(2) calls without the writeback cache, random 4 KiB reads)
//! are not this: a request is blamed on the limit only when it is exactly
//! at the limit and the bytes went on: a write(2) larger than the limit
//! split into several WRITEs, or a sequential stream (readahead,
//! page-cache writeback, a direct read) whose next request starts where
//! this one ended.

use std::collections::{HashMap, HashSet};

use fusetrace_common::{
    EventKind, FUSE_WRITE_CACHE, FuseEvent,
    opcode::{READ as OP_READ, WRITE as OP_WRITE},
};

use crate::diagnose::{
    analysis::bytes,
    finding::{Facts, Finding, FindingId, Limits, Rule, count, percent},
};
use crate::pipeline::lifecycle::RequestLifecycle;

const PAGE: u64 = 4096;
/// A limit below this is small: the kernel's own request size without
/// FUSE_MAX_PAGES is 32 pages (FUSE_DEFAULT_MAX_PAGES_PER_REQ, 128 KiB). A
/// mount at or above it is configured as most are; below it someone chose
/// (or kept) a small one.
pub const SMALL_LIMIT: u64 = 128 * 1024;
/// Fewer requests cut by the limit than this say nothing about throughput.
const MIN_CUT: u64 = 100;
/// At least this share of the opcode's requests must be cut by the limit:
/// otherwise the application's own sizes dominate.
const MIN_CUT_SHARE: f64 = 0.5;
/// What a request can grow to: 256 pages, the kernel's default
/// `fs.fuse.max_pages_limit`.
const REACHABLE: u64 = 256 * PAGE;
/// Below this factor (fewer requests once the limit is raised) the gain is
/// not worth a finding.
const MIN_GAIN: f64 = 2.0;

/// One READ or WRITE request, as much of it as the rule needs.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    node: u64,
    offset: u64,
    size: u64,
    sender_tid: u32,
    sent_ns: u64,
    /// A page-cache writeback WRITE (`FUSE_WRITE_CACHE`): gathered by the
    /// kernel, not one write(2).
    cached: bool,
}

/// An application's write(2) on the connection (an `AppWrite` event).
#[derive(Debug, Clone, Copy)]
struct AppWrite {
    tid: u32,
    node: u64,
    len: u64,
    enter_ns: u64,
    exit_ns: u64,
}

/// Applications' writes per (thread, node), by entry time.
type ByWriter = HashMap<(u32, u64), Vec<AppWrite>>;

/// Watches READ and WRITE sizes and applications' writes.
#[derive(Debug, Default)]
pub struct SmallTransfers {
    reads: Vec<Transfer>,
    writes: Vec<Transfer>,
    app_writes: Vec<AppWrite>,
}

/// The largest WRITE request the kernel sends on a connection, and the
/// name of the limit that sets it.
pub fn write_limit(l: &Limits) -> (u64, &'static str) {
    limit(l, u64::from(l.max_write), "max_write")
}

/// The largest READ request, and the name of the limit that sets it.
pub fn read_limit(l: &Limits) -> (u64, &'static str) {
    limit(l, u64::from(l.max_read), "max_read")
}

fn limit(l: &Limits, bytes: u64, name: &'static str) -> (u64, &'static str) {
    let pages = u64::from(l.max_pages) * PAGE;
    // The kernel caps each request by both (fuse_perform_write,
    // fuse_readahead, fuse_direct_io); 0 pages means not read.
    if l.max_pages != 0 && pages < bytes {
        (pages, "max_pages")
    } else {
        (bytes, name)
    }
}

/// What the rule found about one opcode's requests.
#[derive(Debug, Default, PartialEq)]
struct Cut {
    requests: u64,
    total_bytes: u64,
    at_limit: u64,
    /// At the limit, and the bytes went on (see the file's header).
    cut: u64,
    /// Of the cut ones: how many were pieces of a larger write(2), and the
    /// mean size of those writes.
    split_app_writes: u64,
    app_write_bytes: u64,
    /// Of the cut ones: how many were in sequential runs, and the mean
    /// bytes of those runs.
    in_runs: u64,
    run_bytes: u64,
    /// What the cut requests could have been, summed (each at most the
    /// ceiling the fix reaches).
    reachable_bytes: u64,
}

impl Cut {
    fn gain(&self, limit: u64) -> f64 {
        if self.cut == 0 || limit == 0 {
            return 0.0;
        }
        self.reachable_bytes as f64 / self.cut as f64 / limit as f64
    }
}

impl SmallTransfers {
    /// The bytes of the contiguous run (in arrival order, per node) each
    /// transfer belongs to.
    fn runs(transfers: &[Transfer]) -> Vec<u64> {
        let mut run_of = vec![0usize; transfers.len()];
        let mut run_bytes: Vec<u64> = Vec::new();
        let mut open: HashMap<u64, (u64, usize)> = HashMap::new();
        for (i, t) in transfers.iter().enumerate() {
            let run = match open.get(&t.node) {
                Some(&(end, run)) if end == t.offset => run,
                _ => {
                    run_bytes.push(0);
                    run_bytes.len() - 1
                }
            };
            run_bytes[run] += t.size;
            run_of[i] = run;
            open.insert(t.node, (t.offset + t.size, run));
        }
        run_of.iter().map(|&r| run_bytes[r]).collect()
    }

    /// The application write (its length) that `t` was sent from inside
    /// of, among `large`.
    fn split_from(large: &ByWriter, t: &Transfer) -> Option<u64> {
        let writes = large.get(&(t.sender_tid, t.node))?;
        let i = writes.partition_point(|w| w.enter_ns <= t.sent_ns);
        let w = writes.get(i.checked_sub(1)?)?;
        (t.sent_ns <= w.exit_ns).then_some(w.len)
    }

    /// The applications' writes longer than `than`.
    fn app_writes_longer(&self, than: u64) -> ByWriter {
        let mut large = ByWriter::new();
        for w in self.app_writes.iter().filter(|w| w.len > than) {
            large.entry((w.tid, w.node)).or_default().push(*w);
        }
        for v in large.values_mut() {
            v.sort_unstable_by_key(|w| w.enter_ns);
        }
        large
    }

    /// The kernel sent write(2) calls longer than a page as one-page
    /// WRITEs: FUSE_BIG_WRITES was not negotiated (libfuse 2 without `-o
    /// big_writes`), whatever max_write says. `fuse_conn.big_writes` is
    /// not among the limits read, so the pieces tell.
    fn one_page_writes(&self) -> bool {
        let large = self.app_writes_longer(PAGE);
        let mut pieces = 0;
        for t in self.writes.iter().filter(|t| !t.cached) {
            if Self::split_from(&large, t).is_some() {
                if t.size > PAGE {
                    return false;
                }
                pieces += 1;
            }
        }
        pieces >= MIN_CUT
    }

    fn cut(&self, transfers: &[Transfer], limit: u64, ceiling: u64, writes: bool) -> Cut {
        let mut c = Cut::default();
        let starts: HashSet<(u64, u64)> = transfers.iter().map(|t| (t.node, t.offset)).collect();
        let runs = Self::runs(transfers);
        let large = if writes {
            self.app_writes_longer(limit)
        } else {
            HashMap::new()
        };
        for (t, &run) in transfers.iter().zip(&runs) {
            c.requests += 1;
            c.total_bytes += t.size;
            // readahead counts the limit in whole pages.
            if t.size == 0 || (t.size != limit && t.size != limit / PAGE * PAGE) {
                continue;
            }
            c.at_limit += 1;
            // A write-through or direct WRITE is one write(2), or a piece
            // of one: only the application's write tells which. A READ or
            // a writeback WRITE is the kernel's, cut when its stream went on.
            let asked = if writes && !t.cached {
                let Some(len) = Self::split_from(&large, t) else {
                    continue;
                };
                c.split_app_writes += 1;
                c.app_write_bytes += len;
                len
            } else {
                if !starts.contains(&(t.node, t.offset + t.size)) {
                    continue;
                }
                c.in_runs += 1;
                c.run_bytes += run;
                run
            };
            c.cut += 1;
            c.reachable_bytes += asked.clamp(limit, ceiling);
        }
        c
    }

    fn finding(&self, facts: &Facts, writes: bool) -> Option<Finding> {
        let limits = facts.limits?;
        // What the requests can grow to once the limit is raised: the
        // largest request the kernel sends (REACHABLE), or with big writes
        // on, the max_write already negotiated.
        let (op, transfers, (limit, name), ceiling) = if writes {
            let (bytes, name) = write_limit(&limits);
            if bytes > PAGE && self.one_page_writes() {
                ("WRITE", &self.writes, (PAGE, "big_writes"), bytes)
            } else {
                ("WRITE", &self.writes, (bytes, name), REACHABLE)
            }
        } else {
            ("READ", &self.reads, read_limit(&limits), REACHABLE)
        };
        if limit == 0 || limit >= SMALL_LIMIT {
            return None;
        }
        let c = self.cut(transfers, limit, ceiling, writes);
        let gain = c.gain(limit);
        if c.cut < MIN_CUT || (c.cut as f64) < MIN_CUT_SHARE * c.requests as f64 || gain < MIN_GAIN
        {
            return None;
        }
        let mean = |total: u64, n: u64| total / n.max(1);
        let mut why = Vec::new();
        if c.split_app_writes > 0 {
            why.push(format!(
                "{} are pieces of write(2) calls of {} on average",
                count(c.split_app_writes),
                bytes(mean(c.app_write_bytes, c.split_app_writes))
            ));
        }
        if c.in_runs > 0 {
            why.push(format!(
                "{} are in sequential runs of {} on average",
                count(c.in_runs),
                bytes(mean(c.run_bytes, c.in_runs))
            ));
        }
        let at = if name == "big_writes" {
            format!(
                "one page: no FUSE_BIG_WRITES (max_write {} unused)",
                bytes(u64::from(limits.max_write))
            )
        } else {
            format!("{name} = {}", bytes(limit))
        };
        let summary = format!(
            "{op}: {} requests of {} on average, {} ({}) cut at {at}: {}",
            count(c.requests),
            bytes(mean(c.total_bytes, c.requests)),
            count(c.cut),
            percent(c.cut, c.requests),
            why.join("; "),
        );
        let knob = match name {
            "max_write" => {
                "raise max_write: libfuse `-o max_write=1048576` (libfuse 2 also `-o big_writes`, FUSE_BIG_WRITES; above 128 KiB the daemon also needs FUSE_MAX_PAGES in INIT, which libfuse 3 sets from max_write as `max_pages`), reference daemon `--max-write 1MiB`"
            }
            "max_read" => {
                "raise or drop max_read: libfuse `-o max_read=1048576` (the mount option; unset means no limit), with max_pages to match (FUSE_MAX_PAGES in INIT)"
            }
            "big_writes" => {
                "FUSE_BIG_WRITES in INIT: libfuse 2 `-o big_writes` (e.g. `bindfs -o big_writes`), or libfuse 3, which always asks it; without it the kernel sends one page per write-through WRITE whatever max_write is"
            }
            _ => {
                "raise max_pages: the daemon answers INIT with FUSE_MAX_PAGES and max_pages up to 256 (libfuse 3 `max_pages`, set from `-o max_write=`; the kernel caps it at fs.fuse.max_pages_limit)"
            }
        };
        let finding = Finding::new(
            FindingId::SmallTransfers,
            c.cut as f64 / facts.requests.max(1) as f64,
            summary,
        )
        .knob(knob)
        .expect(format!(
            "about {gain:.0} times fewer {op} requests for the same bytes (requests of {} on average)",
            bytes(mean(c.reachable_bytes, c.cut))
        ))
        .with("opcode", op)
        .with("requests", c.requests)
        .with("mean_bytes", mean(c.total_bytes, c.requests))
        .with("limit", name)
        .with("limit_bytes", limit)
        .with("max_write", limits.max_write)
        .with("max_read", limits.max_read)
        .with("max_pages", limits.max_pages)
        .with("at_limit", c.at_limit)
        .with("cut_by_limit", c.cut)
        .with("cut_share", c.cut as f64 / c.requests.max(1) as f64)
        .with("fewer_requests_factor", (gain * 10.0).round() / 10.0);
        let finding = if c.split_app_writes > 0 {
            finding.with("split_app_writes", c.split_app_writes).with(
                "app_write_mean_bytes",
                mean(c.app_write_bytes, c.split_app_writes),
            )
        } else {
            finding
        };
        Some(if c.in_runs > 0 {
            finding.with("run_mean_bytes", mean(c.run_bytes, c.in_runs))
        } else {
            finding
        })
    }
}

impl Rule for SmallTransfers {
    fn request(&mut self, rec: &RequestLifecycle) {
        if !matches!(rec.opcode, OP_READ | OP_WRITE) || rec.error.is_some_and(|e| e != 0) {
            return;
        }
        let Some((offset, size, flags)) = rec.io_range() else {
            return;
        };
        let t = Transfer {
            node: rec.nodeid.unwrap_or(0),
            offset,
            size,
            sender_tid: rec.sender_tid.unwrap_or(0),
            sent_ns: rec.sent_ns.unwrap_or(0),
            cached: rec.opcode == OP_WRITE && flags & FUSE_WRITE_CACHE != 0,
        };
        if rec.opcode == OP_WRITE {
            self.writes.push(t);
        } else {
            self.reads.push(t);
        }
    }

    fn event(&mut self, ev: &FuseEvent) {
        if ev.kind != EventKind::AppWrite as u8 || ev.error != 0 || ev.len == 0 {
            return;
        }
        self.app_writes.push(AppWrite {
            tid: ev.tid,
            node: ev.nodeid,
            len: u64::from(ev.len),
            enter_ns: ev.aux_ns,
            exit_ns: ev.ts_ns,
        });
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        [true, false]
            .into_iter()
            .filter_map(|writes| self.finding(facts, writes))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::analysis::{app_write, request};

    const MAX_WRITE_4K: Limits = Limits {
        max_read: u32::MAX,
        max_write: 4096,
        max_pages: 256,
        max_background: 12,
        congestion_threshold: 9,
    };

    /// Feeds requests and application writes to the rule; its findings.
    fn conclude(
        limits: Option<Limits>,
        recs: &[RequestLifecycle],
        app: &[FuseEvent],
    ) -> Vec<Finding> {
        let mut rule = SmallTransfers::default();
        let mut facts = Facts {
            limits,
            ..Facts::default()
        };
        for ev in app {
            rule.event(ev);
        }
        for r in recs {
            facts.request(r);
            rule.request(r);
        }
        rule.conclude(&facts)
    }

    /// `writes` write(2) calls of `len` bytes each by thread 7, each sent
    /// as WRITEs of `piece` bytes from inside the call (write-through).
    fn written(writes: u64, len: u64, piece: u64) -> (Vec<RequestLifecycle>, Vec<FuseEvent>) {
        let (mut recs, mut app) = (Vec::new(), Vec::new());
        let mut unique = 2;
        for w in 0..writes {
            let enter = 1_000_000 * (w + 1);
            for p in 0..len / piece {
                let offset = w * len + p * piece;
                recs.push(request(
                    unique,
                    OP_WRITE,
                    enter + 100 * (p + 1),
                    7,
                    [offset, piece],
                    [0, 0],
                    false,
                ));
                unique += 2;
            }
            app.push(app_write(7, w * len, len as u32, enter, enter + 900_000));
        }
        (recs, app)
    }

    fn evidence(f: &Finding, name: &str) -> serde_json::Value {
        f.evidence
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {f:?}"))
    }

    #[test]
    fn large_writes_cut_at_a_small_max_write_are_found() {
        let (recs, app) = written(10, 64 << 10, 4096);
        let found = conclude(Some(MAX_WRITE_4K), &recs, &app);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::SmallTransfers);
        assert_eq!(evidence(f, "opcode"), "WRITE");
        assert_eq!(evidence(f, "limit"), "max_write");
        assert_eq!(evidence(f, "requests"), 160);
        assert_eq!(evidence(f, "cut_by_limit"), 160);
        assert_eq!(evidence(f, "split_app_writes"), 160);
        assert_eq!(evidence(f, "app_write_mean_bytes"), 65536);
        assert_eq!(evidence(f, "fewer_requests_factor"), 16.0);
        assert!(f.weight > 0.99, "{f:?}");
        assert!(
            f.summary.starts_with(
                "WRITE: 160 requests of 4 KiB on average, 160 (100%) cut at max_write = 4 KiB"
            ),
            "{}",
            f.summary
        );
        assert!(
            f.summary.contains("write(2) calls of 64 KiB"),
            "{}",
            f.summary
        );
        assert!(f.knob.contains("max_write"), "{}", f.knob);
        assert!(
            f.expect.contains("about 16 times fewer WRITE"),
            "{}",
            f.expect
        );
    }

    #[test]
    fn small_application_writes_at_the_limit_are_the_applications() {
        // Each write(2) is 4 KiB: the limit cut nothing.
        let (recs, app) = written(160, 4096, 4096);
        assert_eq!(conclude(Some(MAX_WRITE_4K), &recs, &app), []);
        // Without the applications' side a write-through WRITE is not blamed.
        let (recs, _) = written(10, 64 << 10, 4096);
        assert_eq!(conclude(Some(MAX_WRITE_4K), &recs, &[]), []);
        // Nor without the limits, nor with a limit that is not small.
        let (recs, app) = written(10, 64 << 10, 4096);
        assert_eq!(conclude(None, &recs, &app), []);
        let roomy = Limits {
            max_write: 128 << 10,
            max_pages: 32,
            ..MAX_WRITE_4K
        };
        let (recs, app) = written(100, 256 << 10, 128 << 10);
        assert_eq!(conclude(Some(roomy), &recs, &app), []);
    }

    #[test]
    fn one_page_pieces_under_a_large_max_write_are_no_big_writes() {
        let libfuse2 = Limits {
            max_write: 128 << 10,
            max_pages: 32,
            ..MAX_WRITE_4K
        };
        let (recs, app) = written(10, 64 << 10, 4096);
        let found = conclude(Some(libfuse2), &recs, &app);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(evidence(f, "limit"), "big_writes");
        assert_eq!(evidence(f, "limit_bytes"), 4096);
        assert_eq!(evidence(f, "max_write"), 131072);
        assert_eq!(evidence(f, "fewer_requests_factor"), 16.0);
        assert!(
            f.summary
                .contains("cut at one page: no FUSE_BIG_WRITES (max_write 128 KiB unused)"),
            "{}",
            f.summary
        );
        assert!(f.knob.contains("-o big_writes"), "{}", f.knob);
        // Writes of 1 MiB could become WRITEs of max_write (128 KiB), no more.
        let (recs, app) = written(2, 1 << 20, 4096);
        let found = conclude(Some(libfuse2), &recs, &app);
        assert_eq!(evidence(&found[0], "fewer_requests_factor"), 32.0);
        // One WRITE larger than a page among the pieces: big writes are on.
        let (mut recs, app) = written(10, 64 << 10, 4096);
        let (more, more_app) = written(1, 64 << 10, 8192);
        let last = recs.last().unwrap().sent_ns.unwrap();
        recs.extend(more.into_iter().map(|mut r| {
            r.sent_ns = r.sent_ns.map(|s| s + last);
            r
        }));
        let app: Vec<_> = app
            .into_iter()
            .chain(more_app.into_iter().map(|mut w| {
                (w.aux_ns, w.ts_ns) = (w.aux_ns + last, w.ts_ns + last);
                w
            }))
            .collect();
        assert_eq!(conclude(Some(libfuse2), &recs, &app), []);
    }

    #[test]
    fn few_cut_requests_are_not_a_finding() {
        let (recs, app) = written(6, 64 << 10, 4096);
        assert_eq!(recs.len(), 96);
        assert_eq!(conclude(Some(MAX_WRITE_4K), &recs, &app), []);
    }

    /// `n` READs of `size` on node 3, sequential or scattered.
    fn reads(n: u64, size: u64, sequential: bool) -> Vec<RequestLifecycle> {
        (0..n)
            .map(|i| {
                let offset = if sequential { i * size } else { i * 7 * size };
                let mut r = request(
                    2 * i + 2,
                    OP_READ,
                    1000 * i,
                    9,
                    [offset, size],
                    [0, 0],
                    false,
                );
                r.nodeid = Some(3);
                r
            })
            .collect()
    }

    #[test]
    fn sequential_reads_cut_by_max_pages_are_found() {
        let two_pages = Limits {
            max_pages: 2,
            ..MAX_WRITE_4K
        };
        assert_eq!(read_limit(&two_pages), (8192, "max_pages"));
        assert_eq!(write_limit(&two_pages), (4096, "max_write"));
        let found = conclude(Some(two_pages), &reads(200, 8192, true), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(evidence(f, "opcode"), "READ");
        assert_eq!(evidence(f, "limit"), "max_pages");
        assert_eq!(evidence(f, "limit_bytes"), 8192);
        // The last READ of the run has no successor: not counted as cut.
        assert_eq!(evidence(f, "cut_by_limit"), 199);
        assert_eq!(evidence(f, "run_mean_bytes"), 200 * 8192);
        // Runs of 1.6 MB could be READs of 1 MiB: 128 times fewer.
        assert_eq!(evidence(f, "fewer_requests_factor"), 128.0);
        assert!(f.knob.contains("FUSE_MAX_PAGES"), "{}", f.knob);
        // Scattered READs at the limit are the application's.
        assert_eq!(conclude(Some(two_pages), &reads(200, 8192, false), &[]), []);
    }

    #[test]
    fn writeback_writes_in_a_run_at_the_limit_are_found() {
        let recs: Vec<_> = (0..150u64)
            .map(|i| {
                request(
                    2 * i + 2,
                    OP_WRITE,
                    1000 * i,
                    99,
                    [i * 4096, 4096 | (u64::from(FUSE_WRITE_CACHE) << 32)],
                    [0, 0],
                    true,
                )
            })
            .collect();
        let found = conclude(Some(MAX_WRITE_4K), &recs, &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(evidence(&found[0], "cut_by_limit"), 149);
        assert_eq!(evidence(&found[0], "run_mean_bytes"), 150 * 4096);
    }
}
