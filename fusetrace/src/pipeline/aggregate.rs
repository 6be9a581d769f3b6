//! `fusetrace stats` with in-kernel aggregation: the kernel counts every
//! request's latency into log-linear histogram cells (see
//! `fusetrace_common::latency_bucket`); this reads the cells every interval
//! and hands the growth since the last read to the stats sinks.
//!
//! One direction still: kernel maps -> cells -> [`Stats`] -> sinks. No
//! request passes through the ring buffer or the tracker.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use anyhow::Result;
use fusetrace_common::{CellCounts, HistogramKey, agg_stage, bucket_bounds};

use crate::{
    kernel::{layout::major_minor, probes::Probes},
    pipeline::{
        connections::ConnectionTable,
        filter::Filter,
        lifecycle::LatencyStage,
        session::StopWhen,
        sink::Sink,
        stats::Stats,
        summary::{Counting, RunSummary},
    },
};

/// Cumulative cell counts, turned into the growth between two reads.
#[derive(Debug, Default)]
pub struct CellDeltas {
    seen: HashMap<HistogramKey, u64>,
}

impl CellDeltas {
    /// The cells that grew since the previous call, with their growth.
    pub fn update(&mut self, cells: &[(HistogramKey, u64)]) -> Vec<(HistogramKey, u64)> {
        let mut grown = Vec::new();
        for (key, count) in cells {
            let before = self.seen.insert(*key, *count).unwrap_or(0);
            // Counts only grow; a smaller value would be a reused map.
            if *count > before {
                grown.push((*key, count - before));
            }
        }
        grown
    }
}

/// The cells of the mounts `--mount` named: with names given, only
/// generation 0 (the mounts that existed when the probes were loaded, the
/// named ones among them; a later INIT on their number is a new mount that
/// took a freed number). Connections whose new mount showed up are added
/// to `gone`; the ones new there are returned, to be said once.
pub fn named_mount_cells(
    cells: Vec<(HistogramKey, CellCounts)>,
    named: &[u32],
    gone: &mut BTreeSet<u32>,
) -> (Vec<(HistogramKey, u64)>, Vec<u32>) {
    let mut newly_gone = Vec::new();
    let kept = cells
        .into_iter()
        .filter(|(key, _)| {
            if named.is_empty() || key.generation == 0 {
                return true;
            }
            if gone.insert(key.connection) {
                newly_gone.push(key.connection);
            }
            false
        })
        .map(|(key, c)| (key, c.count))
        .collect();
    (kept, newly_gone)
}

/// The stage a cell counts (`None`: a stage this version does not know).
pub fn cell_stage(key: &HistogramKey) -> Option<LatencyStage> {
    Some(match key.stage {
        agg_stage::TOTAL => LatencyStage::Total,
        agg_stage::QUEUE => LatencyStage::QueueWait,
        agg_stage::DAEMON => LatencyStage::DaemonService,
        agg_stage::COMPLETE => LatencyStage::Completion,
        _ => return None,
    })
}

/// The latency a cell's requests are taken to have: its bucket's middle
/// (within 1/32 of each request's own).
pub fn cell_latency(key: &HistogramKey) -> u64 {
    let (low, high) = bucket_bounds(key.bucket);
    low + (high - low) / 2
}

/// Stats of the given cells; `opcodes` (when not empty) keeps only those.
pub fn to_stats(cells: &[(HistogramKey, u64)], opcodes: &[u32]) -> Stats {
    let mut stats = Stats::default();
    for (key, n) in cells {
        if !opcodes.is_empty() && !opcodes.contains(&key.opcode) {
            continue;
        }
        let Some(stage) = cell_stage(key) else {
            continue;
        };
        // Counts and errors come from the total's cells only.
        stats
            .ops
            .entry((key.connection, key.opcode))
            .or_default()
            .record_n(stage, cell_latency(key), *n, key.error != 0);
    }
    stats
}

/// Reads the kernel's cells every `tick` until `stop`, handing each
/// interval's growth to `sink`, then the summary.
/// `stages`: the probes count queue, daemon and completion as well.
pub fn run(
    probes: &mut Probes,
    stages: bool,
    filter: &Filter,
    sink: &mut dyn Sink,
    stop: &StopWhen,
    tick: Duration,
) -> Result<RunSummary> {
    let (named, opcodes) = (&filter.connections, &filter.opcodes);
    let mut mounts = ConnectionTable::load_with(&filter.mounts);
    let mut deltas = CellDeltas::default();
    let mut gone = BTreeSet::new();
    let mut requests = 0;
    let started = Instant::now();
    let mut next_tick = started + tick;
    loop {
        probes.refresh_daemons()?;
        let stopping = stop.due(started, || {
            let k = probes.counters();
            k.agg_started.saturating_sub(k.agg_ended)
        });
        let now = Instant::now();
        if stopping || now >= next_tick {
            let (cells, newly_gone) =
                named_mount_cells(probes.histogram_cells()?, named, &mut gone);
            for conn in newly_gone {
                log::warn!(
                    "{} was unmounted and a new mount took its connection number {}; the new mount is not traced",
                    mounts.name(conn),
                    major_minor(conn)
                );
            }
            let grown = to_stats(&deltas.update(&cells), opcodes);
            requests += grown.total_requests();
            sink.stats(&grown)?;
            if stopping {
                break;
            }
            next_tick += tick;
            sink.tick(&mut mounts)?;
            continue;
        }
        // Nothing arrives between reads: wait for the next read or a stop.
        std::thread::sleep((next_tick - now).min(Duration::from_millis(50)));
    }
    let mut summary = RunSummary {
        requests,
        mounts_gone: gone.len() as u64,
        ..RunSummary::default()
    };
    summary.count_kernel(
        &probes.counters(),
        probes.undecodable(),
        Counting::InKernel { stages },
    );
    sink.finish(&summary, &mut mounts)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fusetrace_common::latency_bucket;

    fn cell(opcode: u32, ns: u64, errored: bool) -> HistogramKey {
        HistogramKey {
            connection: 52,
            opcode,
            bucket: latency_bucket(ns),
            stage: agg_stage::TOTAL,
            error: if errored { libc::EIO as u8 } else { 0 },
            generation: 0,
        }
    }

    #[test]
    fn a_named_number_taken_by_a_new_mount_is_left_out_and_said_once() {
        let count = |n| CellCounts {
            count: n,
            sum_ns: 0,
        };
        let old = cell(1, 10_000, false);
        let new = HistogramKey {
            generation: 1,
            ..old
        };
        let mut gone = BTreeSet::new();
        let cells = vec![(old, count(5)), (new, count(3))];
        let (kept, said) = named_mount_cells(cells.clone(), &[52], &mut gone);
        assert_eq!((kept, said), (vec![(old, 5)], vec![52]));
        let (_, said) = named_mount_cells(cells.clone(), &[52], &mut gone);
        assert!(said.is_empty(), "said once");
        // Without --mount, every mount counts.
        let (kept, _) = named_mount_cells(cells, &[], &mut BTreeSet::new());
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn deltas_hand_on_growth_once() {
        let mut d = CellDeltas::default();
        let a = cell(1, 10_000, false);
        let b = cell(3, 50_000, true);
        assert_eq!(d.update(&[(a, 5)]), vec![(a, 5)]);
        let mut second = d.update(&[(a, 7), (b, 2)]);
        second.sort();
        assert_eq!(second, vec![(a, 2), (b, 2)]);
        assert!(d.update(&[(a, 7), (b, 2)]).is_empty());
    }

    #[test]
    fn cells_become_counts_errors_and_percentiles() {
        // 90 LOOKUPs at 10 us, 10 at 1 ms of which 4 failed; 3 GETATTRs.
        let cells = [
            (cell(1, 10_000, false), 90),
            (cell(1, 1_000_000, false), 6),
            (cell(1, 1_000_000, true), 4),
            (cell(3, 20_000, false), 3),
        ];
        let stats = to_stats(&cells, &[]);
        let lookup = &stats.ops[&(52, 1)];
        assert_eq!((lookup.count, lookup.errors), (100, 4));
        let total = lookup.histogram(LatencyStage::Total);
        let p50 = total.value_at_quantile(0.5);
        let p99 = total.value_at_quantile(0.99);
        // Within the bucket's 1/16 and the histogram's 3 digits.
        assert!((9_400..=10_700).contains(&p50), "p50 {p50}");
        assert!((940_000..=1_070_000).contains(&p99), "p99 {p99}");
        assert!(lookup.histogram(LatencyStage::QueueWait).is_empty());
        assert_eq!(stats.total_requests(), 103);
        let only_getattr = to_stats(&cells, &[3]);
        assert_eq!(only_getattr.total_requests(), 3);
        assert!(!only_getattr.ops.contains_key(&(52, 1)));
    }
}
