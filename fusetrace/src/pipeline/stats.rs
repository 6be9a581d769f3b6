//! Per-connection, per-opcode latency statistics (HDR histograms, ns).

use std::{collections::BTreeMap, fmt::Write as _};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    pipeline::lifecycle::{ExtraStage, LatencyStage, RequestLifecycle},
    pipeline::opcode,
};

/// Latencies of one opcode on one connection.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    /// Requests with all four stages observed.
    pub complete: u64,
    /// Created at a stage's first sample: a histogram over 1 ns .. 1 h at
    /// 3 digits is 256 KiB, and in-kernel stats or a kernel without the
    /// virtio-fs hooks never fill most stages.
    histograms: BTreeMap<LatencyStage, Histogram<u64>>,
    /// Stages only some requests have (background wait, virtio-fs).
    extra: BTreeMap<ExtraStage, Histogram<u64>>,
}

/// What an unmeasured stage reads as.
fn empty_histogram() -> &'static Histogram<u64> {
    static EMPTY: std::sync::OnceLock<Histogram<u64>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(new_histogram)
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

impl OpStats {
    pub fn record(&mut self, rec: &RequestLifecycle) {
        self.count += 1;
        if rec.error.is_some_and(|e| e != 0) {
            self.errors += 1;
        }
        if rec.fully_observed() {
            self.complete += 1;
        }
        for stage in LatencyStage::ALL {
            if let Some(ns) = rec.latency(stage) {
                // Saturate instead of failing on absurd values.
                self.histograms
                    .entry(stage)
                    .or_insert_with(new_histogram)
                    .saturating_record(ns.max(1));
            }
        }
        for stage in ExtraStage::ALL {
            if let Some(ns) = rec.extra_latency(stage) {
                self.extra
                    .entry(stage)
                    .or_insert_with(new_histogram)
                    .saturating_record(ns.max(1));
            }
        }
    }

    /// `n` requests whose `stage` took `ns` (a kernel histogram bucket's
    /// middle); whole-request cells (`Total`) also count the requests.
    pub fn record_n(&mut self, stage: LatencyStage, ns: u64, n: u64, errored: bool) {
        if stage == LatencyStage::Total {
            self.count += n;
            if errored {
                self.errors += n;
            }
        }
        self.histograms
            .entry(stage)
            .or_insert_with(new_histogram)
            .saturating_record_n(ns.max(1), n);
    }

    pub fn histogram(&self, stage: LatencyStage) -> &Histogram<u64> {
        self.histograms
            .get(&stage)
            .unwrap_or_else(|| empty_histogram())
    }

    pub fn extra_histogram(&self, stage: ExtraStage) -> &Histogram<u64> {
        self.extra.get(&stage).unwrap_or_else(|| empty_histogram())
    }

    pub fn merge(&mut self, other: &OpStats) {
        self.count += other.count;
        self.errors += other.errors;
        self.complete += other.complete;
        for (stage, h) in &other.histograms {
            self.histograms
                .entry(*stage)
                .or_insert_with(new_histogram)
                .add(h)
                .expect("same histogram bounds");
        }
        for (stage, h) in &other.extra {
            self.extra
                .entry(*stage)
                .or_insert_with(new_histogram)
                .add(h)
                .expect("same histogram bounds");
        }
    }
}

/// Statistics keyed by (connection, opcode).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: BTreeMap<(u32, u32), OpStats>,
}

/// Percentiles of one stage, in nanoseconds, for machine-readable output.
#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub stage: LatencyStage,
    pub samples: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub mount: String,
    pub opcode: String,
    pub count: u64,
    pub errors: u64,
    pub complete: u64,
    pub stages: Vec<StageSummary>,
    /// Stages only some requests have, listed when observed.
    pub extra_stages: Vec<ExtraStageSummary>,
}

/// Percentiles of an [`ExtraStage`], in nanoseconds.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraStageSummary {
    pub stage: ExtraStage,
    pub samples: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Stats {
    pub fn record(&mut self, rec: &RequestLifecycle) {
        self.ops
            .entry((rec.connection, rec.opcode))
            .or_default()
            .record(rec);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn merge(&mut self, other: &Stats) {
        for (key, op) in &other.ops {
            self.ops.entry(*key).or_default().merge(op);
        }
    }

    pub fn total_requests(&self) -> u64 {
        self.ops.values().map(|o| o.count).sum()
    }

    pub fn summaries(&self, name: &mut impl FnMut(u32) -> String) -> Vec<OpSummary> {
        self.ops
            .iter()
            .map(|((conn, op), s)| OpSummary {
                mount: name(*conn),
                opcode: opcode::name(*op),
                count: s.count,
                errors: s.errors,
                complete: s.complete,
                stages: LatencyStage::ALL
                    .iter()
                    .map(|stage| {
                        let h = s.histogram(*stage);
                        StageSummary {
                            stage: *stage,
                            samples: h.len(),
                            p50_ns: h.value_at_quantile(0.50),
                            p90_ns: h.value_at_quantile(0.90),
                            p99_ns: h.value_at_quantile(0.99),
                            max_ns: h.max(),
                        }
                    })
                    .collect(),
                extra_stages: ExtraStage::ALL
                    .iter()
                    .map(|stage| (*stage, s.extra_histogram(*stage)))
                    .filter(|(_, h)| !h.is_empty())
                    .map(|(stage, h)| ExtraStageSummary {
                        stage,
                        samples: h.len(),
                        p50_ns: h.value_at_quantile(0.50),
                        p90_ns: h.value_at_quantile(0.90),
                        p99_ns: h.value_at_quantile(0.99),
                        max_ns: h.max(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The human table: one block per mount, a row per opcode and stage.
    pub fn render_table(&self, name: &mut impl FnMut(u32) -> String) -> String {
        let mut out = String::new();
        let mut current_mount = None;
        let summaries = self.summaries(name);
        // Stages no hook measured in this run (in-kernel aggregation counts
        // whole latencies only) get no rows rather than rows of dashes.
        let measured: Vec<LatencyStage> = LatencyStage::ALL
            .into_iter()
            .filter(|stage| {
                summaries.iter().any(|s| {
                    s.stages
                        .iter()
                        .any(|st| st.stage == *stage && st.samples > 0)
                })
            })
            .collect();
        for summary in summaries {
            if current_mount.as_ref() != Some(&summary.mount) {
                let _ = writeln!(out, "mount {}", summary.mount);
                let _ = writeln!(
                    out,
                    "  {:<14} {:>8} {:>6}  {:<15} {:>10} {:>10} {:>10} {:>10}",
                    "OPCODE",
                    "COUNT",
                    "ERRORS",
                    "STAGE",
                    "p50(us)",
                    "p90(us)",
                    "p99(us)",
                    "max(us)"
                );
                current_mount = Some(summary.mount.clone());
            }
            let rows = summary
                .stages
                .iter()
                .filter(|st| measured.is_empty() || measured.contains(&st.stage));
            for (i, st) in rows.enumerate() {
                let (op, count, errors) = if i == 0 {
                    (
                        summary.opcode.clone(),
                        summary.count.to_string(),
                        summary.errors.to_string(),
                    )
                } else {
                    (String::new(), String::new(), String::new())
                };
                let cell = |ns: u64| {
                    if st.samples == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.1}", ns as f64 / 1000.0)
                    }
                };
                let _ = writeln!(
                    out,
                    "  {:<14} {:>8} {:>6}  {:<15} {:>10} {:>10} {:>10} {:>10}",
                    op,
                    count,
                    errors,
                    st.stage.name(),
                    cell(st.p50_ns),
                    cell(st.p90_ns),
                    cell(st.p99_ns),
                    cell(st.max_ns)
                );
            }
            for st in &summary.extra_stages {
                let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
                let _ = writeln!(
                    out,
                    "  {:<14} {:>8} {:>6}  {:<15} {:>10} {:>10} {:>10} {:>10}",
                    "",
                    "",
                    "",
                    st.stage.name(),
                    us(st.p50_ns),
                    us(st.p90_ns),
                    us(st.p99_ns),
                    us(st.max_ns)
                );
            }
        }
        if out.is_empty() {
            out.push_str("no FUSE requests finished\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tracker::{Tracker, TrackerConfig};
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FuseEvent};

    fn lifecycle(unique: u64, op: u32, daemon_ns: u64, error: i32) -> RequestLifecycle {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let base = unique * 1_000_000;
        for (kind, ts) in [
            (EventKind::Sent, base),
            (EventKind::Taken, base + 1_000),
            (EventKind::Replied, base + 1_000 + daemon_ns),
            (EventKind::Ended, base + 2_000 + daemon_ns),
        ] {
            let ev = FuseEvent {
                kind: kind as u8,
                flags: FLAG_HAS_HEADER,
                connection: 9,
                unique,
                opcode: op,
                ts_ns: ts,
                error: if kind == EventKind::Ended { error } else { 0 },
                ..Default::default()
            };
            t.observe(&ev, &mut out);
        }
        out.pop().unwrap()
    }

    #[test]
    fn percentiles_and_errors_per_opcode() {
        let mut s = Stats::default();
        for i in 1..=100 {
            s.record(&lifecycle(i * 2, 15, i * 10_000, 0));
        }
        s.record(&lifecycle(1000, 1, 5_000, -2));
        let sum = s.summaries(&mut |_| "/mnt".into());
        let read = sum.iter().find(|o| o.opcode == "READ").unwrap();
        assert_eq!(read.count, 100);
        assert_eq!(read.errors, 0);
        assert_eq!(read.complete, 100);
        let daemon = read
            .stages
            .iter()
            .find(|s| s.stage == LatencyStage::DaemonService)
            .unwrap();
        // p50 of 10us..1000us in steps of 10us is 500us (3 significant digits).
        assert!(
            (499_000..=501_000).contains(&daemon.p50_ns),
            "{}",
            daemon.p50_ns
        );
        assert!((999_000..=1_001_000).contains(&daemon.max_ns));
        let lookup = sum.iter().find(|o| o.opcode == "LOOKUP").unwrap();
        assert_eq!(lookup.errors, 1);
        let table = s.render_table(&mut |_| "/mnt".into());
        assert!(table.contains("mount /mnt"));
        assert!(table.contains("READ"));
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = OpStats::default();
        a.record(&lifecycle(2, 3, 1000, 0));
        let mut b = OpStats::default();
        b.record(&lifecycle(4, 3, 3000, -5));
        a.merge(&b);
        assert_eq!(a.count, 2);
        assert_eq!(a.errors, 1);
        assert_eq!(a.histogram(LatencyStage::DaemonService).len(), 2);
    }

    #[test]
    fn virtio_stages_are_shown_by_name_only_where_observed() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for (kind, ts) in [
            (EventKind::Sent, 1_000),
            (EventKind::Virtq, 3_000),
            (EventKind::DeviceDone, 53_000),
            (EventKind::Ended, 54_000),
        ] {
            let ev = FuseEvent {
                kind: kind as u8,
                flags: FLAG_HAS_HEADER,
                connection: 7,
                unique: 2,
                opcode: 3,
                ts_ns: ts,
                ..Default::default()
            };
            t.observe(&ev, &mut out);
        }
        let mut stats = Stats::default();
        stats.record(&out.pop().unwrap());
        stats.record(&lifecycle(4, 3, 5_000, 0));
        let table = stats.render_table(&mut |c| format!("conn{c}"));
        let virtio = table.split("mount conn9").next().unwrap();
        assert!(virtio.contains("virtqueue"), "{table}");
        assert!(virtio.contains("device"), "{table}");
        assert!(!table.contains("bg-wait"), "nothing waited: {table}");
        let daemon_block = table.split("mount conn9").nth(1).unwrap();
        assert!(!daemon_block.contains("virtqueue"), "{table}");
        let s = &stats.summaries(&mut |c| c.to_string())[0];
        let device = s
            .extra_stages
            .iter()
            .find(|e| e.stage == ExtraStage::Device)
            .unwrap();
        assert_eq!(device.samples, 1);
        assert!((49_000..=51_000).contains(&device.p50_ns), "{device:?}");
    }
}
