//! The page-cache-bypassed finding: files opened with direct I/O (the
//! daemon answered OPEN/CREATE with `FOPEN_DIRECT_IO`) whose same ranges
//! are read again and again. Each repeat goes to the daemon; with the page
//! cache it would be served by the kernel. Direct I/O read once (streaming,
//! files others change) is not this: only repeated (node, offset, size)
//! ranges count.

use std::collections::{HashMap, HashSet};

use fusetrace_common::{
    FOPEN_DIRECT_IO,
    opcode::{CREATE as OP_CREATE, OPEN as OP_OPEN, READ as OP_READ},
};

use crate::diagnose::{
    analysis::bytes,
    finding::{Facts, Finding, FindingId, Rule, count, percent},
};
use crate::pipeline::lifecycle::RequestLifecycle;

/// Fewer READs of direct-io files than this say nothing.
const MIN_READS: u64 = 100;
/// Fewer repeated reads than this are not worth a finding.
const MIN_REPEATED: u64 = 50;
/// At least this share of the direct-io READs must be repeats: random
/// reads over a large file repeat some ranges by chance (250 random 4 KiB
/// reads of a 4 MiB file repeat about 11% of them).
const MIN_REPEATED_SHARE: f64 = 0.25;

/// Watches opens and the READs of the files opened with direct I/O.
#[derive(Debug, Default)]
pub struct PageCacheBypassed {
    direct_io_opens: u64,
    cached_opens: u64,
    /// Nodes opened with FOPEN_DIRECT_IO during the run.
    direct_nodes: HashSet<u64>,
    /// READs of those nodes, by range (node, offset, size): how many.
    ranges: HashMap<(u64, u64, u64), u64>,
    reads: u64,
    read_bytes: u64,
    repeated: u64,
    bytes_reread: u64,
}

impl Rule for PageCacheBypassed {
    fn request(&mut self, rec: &RequestLifecycle) {
        match rec.opcode {
            OP_OPEN | OP_CREATE => {
                let Some([new_node, open_flags]) = rec.end_args else {
                    return;
                };
                if rec.error != Some(0) {
                    return;
                }
                // CREATE's node is the directory; its reply names the file.
                let node = if rec.opcode == OP_CREATE {
                    new_node
                } else {
                    rec.nodeid.unwrap_or(0)
                };
                if open_flags as u32 & FOPEN_DIRECT_IO != 0 {
                    self.direct_io_opens += 1;
                    self.direct_nodes.insert(node);
                } else {
                    self.cached_opens += 1;
                }
            }
            OP_READ => {
                let Some((offset, size, _)) = rec.io_range() else {
                    return;
                };
                let node = rec.nodeid.unwrap_or(0);
                // The OPEN ends before any READ on its handle is sent, so
                // a direct-io node is known by its first READ.
                if rec.error.is_some_and(|e| e != 0) || !self.direct_nodes.contains(&node) {
                    return;
                }
                self.reads += 1;
                self.read_bytes += size;
                let seen = self.ranges.entry((node, offset, size)).or_default();
                if *seen > 0 {
                    self.repeated += 1;
                    self.bytes_reread += size;
                }
                *seen += 1;
            }
            _ => {}
        }
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        if self.direct_io_opens == 0
            || self.reads < MIN_READS
            || self.repeated < MIN_REPEATED
            || (self.repeated as f64) < MIN_REPEATED_SHARE * self.reads as f64
        {
            return Vec::new();
        }
        let most = self.ranges.values().copied().max().unwrap_or(0);
        let summary = format!(
            "direct I/O: {} READs of {} on {} opened FOPEN_DIRECT_IO; {} ({}) read a range already read ({} read again; one range {} times)",
            count(self.reads),
            bytes(self.read_bytes),
            match self.direct_nodes.len() {
                1 => "1 file".to_string(),
                n => format!("{} files", count(n as u64)),
            },
            count(self.repeated),
            percent(self.repeated, self.reads),
            bytes(self.bytes_reread),
            count(most),
        );
        vec![
            Finding::new(
                FindingId::PageCacheBypassed,
                self.repeated as f64 / facts.requests.max(1) as f64,
                summary,
            )
            .knob("the page cache: drop `-o direct_io` (libfuse) / FOPEN_DIRECT_IO from the open reply (reference daemon: no `--direct-io`), and keep it across opens with FOPEN_KEEP_CACHE (libfuse `-o kernel_cache` or `fi->keep_cache`); only for files no one changes behind the mount")
            .expect(format!(
                "repeated reads served from the page cache: about {} fewer READ requests ({} not read again from the daemon)",
                count(self.repeated),
                bytes(self.bytes_reread)
            ))
            .with("direct_io_opens", self.direct_io_opens)
            .with("cached_opens", self.cached_opens)
            .with("direct_io_files", self.direct_nodes.len() as u64)
            .with("reads", self.reads)
            .with("read_bytes", self.read_bytes)
            .with("distinct_ranges", self.ranges.len() as u64)
            .with("repeated_reads", self.repeated)
            .with("repeated_share", self.repeated as f64 / self.reads as f64)
            .with("bytes_reread", self.bytes_reread)
            .with("most_reads_of_one_range", most),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::analysis::request;

    const FILE: u64 = 5;

    fn open(unique: u64, direct: bool) -> RequestLifecycle {
        let flags = if direct { FOPEN_DIRECT_IO } else { 0 };
        let mut r = request(unique, OP_OPEN, 10, 1, [0, 0], [0, u64::from(flags)], false);
        r.nodeid = Some(FILE);
        r
    }

    /// `n` 4 KiB READs of FILE over `ranges` distinct ranges, in turn.
    fn reads(n: u64, ranges: u64) -> Vec<RequestLifecycle> {
        (0..n)
            .map(|i| {
                let offset = (i % ranges) * 4096;
                let mut r = request(
                    100 + 2 * i,
                    OP_READ,
                    1000 * (i + 1),
                    9,
                    [offset, 4096],
                    [0, 0],
                    false,
                );
                r.nodeid = Some(FILE);
                r
            })
            .collect()
    }

    fn conclude(recs: &[RequestLifecycle]) -> Vec<Finding> {
        let mut rule = PageCacheBypassed::default();
        let mut facts = Facts::default();
        for r in recs {
            facts.request(r);
            rule.request(r);
        }
        rule.conclude(&facts)
    }

    #[test]
    fn direct_io_reads_of_the_same_ranges_are_found() {
        let mut recs = vec![open(2, true)];
        recs.extend(reads(200, 10));
        let found = conclude(&recs);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.id, FindingId::PageCacheBypassed);
        let e = |k: &str| f.evidence[k].clone();
        assert_eq!(e("direct_io_opens"), 1);
        assert_eq!(e("reads"), 200);
        assert_eq!(e("distinct_ranges"), 10);
        assert_eq!(e("repeated_reads"), 190);
        assert_eq!(e("bytes_reread"), 190 * 4096);
        assert_eq!(e("most_reads_of_one_range"), 20);
        assert!((f.weight - 190.0 / 201.0).abs() < 1e-9, "{}", f.weight);
        assert!(
            f.summary.contains("190 (95%) read a range already read"),
            "{}",
            f.summary
        );
        assert!(f.knob.contains("FOPEN_KEEP_CACHE"), "{}", f.knob);
    }

    #[test]
    fn cached_opens_or_reads_of_new_ranges_are_not_a_finding() {
        let mut cached = vec![open(2, false)];
        cached.extend(reads(200, 10));
        assert_eq!(conclude(&cached), []);
        let mut streamed = vec![open(2, true)];
        streamed.extend(reads(200, 200));
        assert_eq!(conclude(&streamed), []);
        // A few repeats among many new ranges: chance, not a pattern.
        let mut random = vec![open(2, true)];
        random.extend(reads(200, 170));
        assert_eq!(conclude(&random), []);
    }

    #[test]
    fn a_created_file_is_known_by_the_node_in_the_reply() {
        let mut create = request(
            2,
            OP_CREATE,
            10,
            1,
            [0, 0],
            [FILE, u64::from(FOPEN_DIRECT_IO)],
            false,
        );
        create.nodeid = Some(1);
        let mut recs = vec![create];
        recs.extend(reads(200, 10));
        let found = conclude(&recs);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].evidence["direct_io_files"], 1);
    }
}
