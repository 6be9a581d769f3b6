//! What one scrape of `fusetrace serve` shows, built from the kernel's
//! cells and in-flight table (pure: unit-tested with synthetic cells), and
//! its exposition through `prometheus-client` in both text formats.
//!
//! Histogram buckets: every exposed bound is the lower edge of one of the
//! kernel's log-linear cells (16 per power of two), so each exposed
//! bucket's count is exact, never split out of a cell; `le=B` counts the
//! latencies below B ns (a latency of exactly B ns, one nanosecond's
//! width, lands in the next bucket). `_sum` is exact: the cells carry it.
//!
//! The kernel maps' occupancy (entries in use against capacity) is
//! exported too: a table that fills loses counts (`fusetrace_kernel_losses`
//! says which), and one that never empties is a leak.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use anyhow::{Result, bail};
use fusetrace_common::{
    AGG_CELLS, AGG_IN_FLIGHT, AGG_MAX_GENERATIONS, AGG_OVERFLOW, AGG_TABLE_SLOTS, CellCounts,
    HistogramKey, agg_stage, bucket_bounds, latency_bucket,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    kernel::{cells::CellsInUse, probes::KernelCounters, slots::InFlight},
    pipeline::{lifecycle::LatencyStage, opcode},
    serve::mounts::{MountBook, MountLabels},
};

/// Smallest and largest exposed bounds: 2^11 ns (2 us) and 2^35 ns (34 s).
const LOWEST_LOG2: u32 = 11;
const HIGHEST_LOG2: u32 = 35;

/// The exposed histogram bounds (ns), each a kernel cell's lower edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    ns: Vec<u64>,
}

impl Bounds {
    /// `per_octave` bounds per power of two (1, 2, 4, 8 or 16; 16 is the
    /// kernel's own resolution) from 2 us to 34 s.
    pub fn per_octave(per_octave: u32) -> Result<Bounds> {
        if ![1, 2, 4, 8, 16].contains(&per_octave) {
            bail!("--buckets-per-octave takes 1, 2, 4, 8 or 16, not {per_octave}");
        }
        let mut ns = Vec::new();
        for log2 in LOWEST_LOG2..HIGHEST_LOG2 {
            for k in 0..per_octave {
                // 2^log2 * (1 + k/per_octave): a cell edge, since 16/per_octave is whole.
                ns.push((1u64 << log2) + (k as u64 * (1u64 << log2)) / per_octave as u64);
            }
        }
        ns.push(1u64 << HIGHEST_LOG2);
        Ok(Bounds { ns })
    }

    /// Bounds given as durations, each moved to the nearest cell edge.
    pub fn snapped(given: &[std::time::Duration]) -> Result<Bounds> {
        let mut ns: Vec<u64> = given
            .iter()
            .map(|d| {
                let v = d.as_nanos().min(u64::MAX as u128 / 2) as u64;
                let (low, high) = bucket_bounds(latency_bucket(v));
                if v - low <= high + 1 - v {
                    low
                } else {
                    high + 1
                }
            })
            .filter(|&v| v > 0)
            .collect();
        ns.sort_unstable();
        ns.dedup();
        if ns.is_empty() {
            bail!("--buckets needs at least one duration above 0");
        }
        Ok(Bounds { ns })
    }

    pub fn seconds(&self) -> impl Iterator<Item = f64> + '_ {
        self.ns.iter().map(|&ns| ns as f64 / 1e9)
    }

    /// The exposed bucket of a kernel cell: the first bound above the
    /// cell's lower edge (the whole cell lies below it); `len()`: +Inf.
    fn index(&self, cell: u16) -> usize {
        let (low, _) = bucket_bounds(cell);
        self.ns.partition_point(|&b| b <= low)
    }
}

/// One histogram series being summed up from cells.
#[derive(Debug, Clone, Default)]
struct Series {
    /// Per exposed bucket, the last one +Inf; not cumulative.
    buckets: Vec<u64>,
    count: u64,
    sum_ns: u64,
}

type Labels = Arc<MountLabels>;

/// What one scrape shows.
#[derive(Debug, Default)]
pub struct Snapshot {
    bounds_s: Vec<f64>,
    stages: bool,
    /// (mount, opcode, stage) -> latency histogram.
    histograms: BTreeMap<(Labels, u32, u8), Series>,
    /// (mount, opcode, errno) -> failed requests.
    errors: BTreeMap<(Labels, u32, u8), u64>,
    /// mount -> (requests in flight, the oldest one's age in seconds).
    in_flight: BTreeMap<Labels, (u64, f64)>,
    losses: Vec<(&'static str, u64)>,
    mounts_over_cap: u64,
    build: Vec<(&'static str, String)>,
    /// (program, run time in seconds, runs), when the kernel counts them.
    programs: Vec<(String, f64, u64)>,
    /// (kernel map, entries in use, capacity).
    maps: Vec<(&'static str, u64, u64)>,
}

/// What [`Snapshot::build`] reads.
pub struct Inputs<'a> {
    pub cells: &'a [(HistogramKey, CellCounts)],
    /// Slots and hash entries the kernel's cells take, before `--op`
    /// kept some of `cells` (a cell has a slot per CPU that counted it).
    pub cells_in_kernel: CellsInUse,
    pub generations: &'a HashMap<u32, u32>,
    pub in_flight: &'a [InFlight],
    /// `CLOCK_MONOTONIC` now, ns (the clock of `InFlight::sent_ns`).
    pub now_ns: u64,
    pub counters: &'a KernelCounters,
    pub stages: bool,
    pub build: Vec<(&'static str, String)>,
    pub programs: Vec<(String, f64, u64)>,
}

impl Snapshot {
    pub fn build(inputs: Inputs<'_>, book: &MountBook, bounds: &Bounds) -> Snapshot {
        let mut s = Snapshot {
            bounds_s: bounds.seconds().collect(),
            stages: inputs.stages,
            build: inputs.build,
            programs: inputs.programs,
            mounts_over_cap: book.over_cap() as u64,
            ..Snapshot::default()
        };
        let current = |connection: u32| {
            (
                connection,
                inputs.generations.get(&connection).copied().unwrap_or(0),
            )
        };
        for (key, cell) in inputs.cells {
            let labels = book.labels((key.connection, key.generation));
            let series = s
                .histograms
                .entry((labels.clone(), key.opcode, key.stage))
                .or_insert_with(|| Series {
                    buckets: vec![0; bounds.ns.len() + 1],
                    ..Series::default()
                });
            series.buckets[bounds.index(key.bucket)] += cell.count;
            series.count += cell.count;
            series.sum_ns += cell.sum_ns;
            if key.stage == agg_stage::TOTAL && key.error != 0 {
                *s.errors.entry((labels, key.opcode, key.error)).or_default() += cell.count;
            }
        }
        // Every mount shows its in-flight gauges, 0 when idle.
        for labels in book
            .listed()
            .cloned()
            .chain(s.histograms.keys().map(|k| k.0.clone()))
        {
            s.in_flight.entry(labels).or_insert((0, 0.0));
        }
        for r in inputs.in_flight {
            let labels = book.labels(current(r.connection));
            let age = inputs.now_ns.saturating_sub(r.sent_ns) as f64 / 1e9;
            let e = s.in_flight.entry(labels).or_insert((0, 0.0));
            e.0 += 1;
            e.1 = e.1.max(age);
        }
        // The names are the maps' own (`bpftool map show` lists them so).
        let overflow = inputs.in_flight.iter().filter(|r| r.in_overflow).count() as u64;
        s.maps = vec![
            (
                "AGG_SLOTS",
                inputs.in_flight.len() as u64 - overflow,
                AGG_IN_FLIGHT.into(),
            ),
            ("AGG_SENT", overflow, AGG_OVERFLOW.into()),
            (
                "AGG_CELL_TABLE",
                inputs.cells_in_kernel.table as u64,
                AGG_TABLE_SLOTS.into(),
            ),
            (
                "AGG_HISTOGRAMS",
                inputs.cells_in_kernel.hash as u64,
                AGG_CELLS.into(),
            ),
            (
                "AGG_GENERATIONS",
                inputs.generations.len() as u64,
                AGG_MAX_GENERATIONS.into(),
            ),
        ];
        let k = inputs.counters;
        s.losses = vec![
            ("unmatched_end", k.agg_unmatched_ends),
            ("in_flight_table_full", k.agg_table_full),
            ("histogram_full", k.agg_histogram_full),
            ("generations_full", k.agg_generations_full),
        ];
        if inputs.stages {
            s.losses.push(("stages_missing", k.agg_stages_missing));
        }
        s
    }

    /// The OpenMetrics text (`openmetrics`) or Prometheus text 0.0.4.
    pub fn encode(self, openmetrics: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        };
        // Writing to a String cannot fail.
        encoded.expect("encoding metrics to a String");
        out
    }
}

/// The `stage` label: the stage's name in every output.
fn stage_name(stage: u8) -> &'static str {
    match stage {
        agg_stage::QUEUE => LatencyStage::QueueWait,
        agg_stage::DAEMON => LatencyStage::DaemonService,
        agg_stage::COMPLETE => LatencyStage::Completion,
        _ => LatencyStage::Total,
    }
    .name()
}

/// The errno's name (`ENOENT`), or its number.
fn errno_name(errno: u8) -> String {
    crate::pipeline::errno::name(i32::from(errno))
}

fn with<'a>(labels: &'a MountLabels, extra: &[(&'static str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    labels
        .pairs()
        .into_iter()
        .chain(extra.iter().copied())
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let seconds = Unit::Seconds;
        let mut m = enc.encode_descriptor(
            "fusetrace_requests",
            "FUSE requests ended, per mount and opcode (errors included)",
            None,
            MetricType::Counter,
        )?;
        for ((labels, op, stage), series) in &self.histograms {
            if *stage != agg_stage::TOTAL {
                continue;
            }
            let name = opcode::name(*op);
            ConstCounter::new(series.count)
                .encode(m.encode_family(&with(labels, &[("opcode", &name)]))?)?;
        }
        let mut m = enc.encode_descriptor(
            "fusetrace_request_errors",
            "FUSE requests whose reply carried an error, per mount, opcode and errno",
            None,
            MetricType::Counter,
        )?;
        for ((labels, op, errno), n) in &self.errors {
            let (name, errno) = (opcode::name(*op), errno_name(*errno));
            ConstCounter::new(*n)
                .encode(m.encode_family(&with(labels, &[("opcode", &name), ("errno", &errno)]))?)?;
        }
        let mut m = enc.encode_descriptor(
            "fusetrace_request_duration",
            "FUSE request latency, from the kernel queueing it to its end",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for ((labels, op, stage), series) in &self.histograms {
            if *stage == agg_stage::TOTAL {
                let name = opcode::name(*op);
                self.encode_series(&mut m, &with(labels, &[("opcode", &name)]), series)?;
            }
        }
        if self.stages {
            let mut m = enc.encode_descriptor(
                "fusetrace_request_stage_duration",
                "FUSE request latency per stage: queue_wait (sent until a daemon thread took it), daemon_service (taken until the reply), completion (reply until the end)",
                Some(&seconds),
                MetricType::Histogram,
            )?;
            for ((labels, op, stage), series) in &self.histograms {
                if *stage != agg_stage::TOTAL {
                    let name = opcode::name(*op);
                    let extra = [("opcode", name.as_str()), ("stage", stage_name(*stage))];
                    self.encode_series(&mut m, &with(labels, &extra), series)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "fusetrace_requests_in_flight",
            "FUSE requests sent and not ended yet (sent since fusetrace started)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, (n, _)) in &self.in_flight {
            ConstGauge::new(*n as i64).encode(m.encode_family(&with(labels, &[]))?)?;
        }
        let mut m = enc.encode_descriptor(
            "fusetrace_oldest_request_age",
            "How long the oldest FUSE request in flight has waited (0: none): a stuck daemon shows as a growing age",
            Some(&seconds),
            MetricType::Gauge,
        )?;
        for (labels, (_, age)) in &self.in_flight {
            ConstGauge::new(*age).encode(m.encode_family(&with(labels, &[]))?)?;
        }
        let mut m = enc.encode_descriptor(
            "fusetrace_kernel_losses",
            "Requests the in-kernel counting could not count, by reason (unmatched_end: sent before fusetrace started)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &self.losses {
            ConstCounter::new(*n).encode(m.encode_family(&[("reason", *reason)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "fusetrace_kernel_map_entries",
            "Entries in use in fusetrace's eBPF maps: AGG_SLOTS (requests in flight), AGG_SENT (in flight, their slot taken), AGG_CELL_TABLE (latency cells, a slot per CPU that counted one), AGG_HISTOGRAMS (latency cells the table had no room for), AGG_GENERATIONS (connection numbers seen)",
            None,
            MetricType::Gauge,
        )?;
        for (map, entries, _) in &self.maps {
            ConstGauge::new(*entries as i64).encode(m.encode_family(&[("map", *map)])?)?;
        }
        let mut m = enc.encode_descriptor(
            "fusetrace_kernel_map_max_entries",
            "Capacity of each of fusetrace's eBPF maps (see fusetrace_kernel_map_entries)",
            None,
            MetricType::Gauge,
        )?;
        for (map, _, max) in &self.maps {
            ConstGauge::new(*max as i64).encode(m.encode_family(&[("map", *map)])?)?;
        }
        let m = enc.encode_descriptor(
            "fusetrace_mounts_over_cap",
            "Mounts counted under mountpoint=\"(other)\" because of --max-mounts",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.mounts_over_cap as i64).encode(m)?;
        let mut m = enc.encode_descriptor(
            "fusetrace_build",
            "fusetrace's build and the kernel it runs on",
            None,
            MetricType::Info,
        )?;
        let build: Vec<(&str, &str)> = self.build.iter().map(|(k, v)| (*k, v.as_str())).collect();
        m.encode_info(&build)?;
        if !self.programs.is_empty() {
            let mut m = enc.encode_descriptor(
                "fusetrace_bpf_program_run",
                "CPU time fusetrace's eBPF programs ran (kernel.bpf_stats_enabled)",
                Some(&seconds),
                MetricType::Counter,
            )?;
            for (name, secs, _) in &self.programs {
                ConstCounter::new(*secs).encode(m.encode_family(&[("program", name.as_str())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "fusetrace_bpf_program_runs",
                "Runs of fusetrace's eBPF programs (kernel.bpf_stats_enabled)",
                None,
                MetricType::Counter,
            )?;
            for (name, _, runs) in &self.programs {
                ConstCounter::new(*runs).encode(m.encode_family(&[("program", name.as_str())])?)?;
            }
        }
        Ok(())
    }
}

impl Snapshot {
    fn encode_series(
        &self,
        m: &mut prometheus_client::encoding::MetricEncoder,
        labels: &Vec<(&str, &str)>,
        series: &Series,
    ) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = self
            .bounds_s
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(series.buckets.iter().copied())
            .collect();
        m.encode_family(labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                series.sum_ns as f64 / 1e9,
                series.count,
                &buckets,
                None,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::connections::MountEntry;
    use std::{
        path::PathBuf,
        time::{Duration, Instant},
    };

    fn key(opcode: u32, ns: u64, error: u8, stage: u8) -> HistogramKey {
        HistogramKey {
            connection: 39,
            opcode,
            bucket: latency_bucket(ns),
            stage,
            error,
            generation: 1,
        }
    }

    fn book() -> MountBook {
        let mut book = MountBook::new(10, Duration::from_secs(60));
        let m = MountEntry {
            mount_id: 5,
            connection: 39,
            mount_point: PathBuf::from("/mnt/a b"),
            fs_type: "fuse.bindfs".into(),
            source: String::new(),
        };
        book.observe(&[m], &HashMap::from([(39, 1)]), Instant::now(), |_| {
            "bindfs".into()
        });
        book
    }

    #[test]
    fn bounds_are_cell_edges_and_cells_land_wholly_below_their_bound() {
        let b = Bounds::per_octave(2).unwrap();
        assert_eq!(b.ns[..3], [2048, 3072, 4096]);
        assert_eq!(*b.ns.last().unwrap(), 1 << 35);
        for &edge in &b.ns {
            assert_eq!(bucket_bounds(latency_bucket(edge)).0, edge);
        }
        // 2047 ns is below 2048; 2048 is not.
        assert_eq!(b.index(latency_bucket(2047)), 0);
        assert_eq!(b.index(latency_bucket(2048)), 1);
        assert_eq!(b.index(latency_bucket(u64::MAX / 4)), b.ns.len());
        assert!(Bounds::per_octave(3).is_err());
        let s = Bounds::snapped(&[Duration::from_millis(1), Duration::from_micros(10)]).unwrap();
        // 1 ms = 1 000 000 ns lies in the cell 983 040..1 015 807: nearer its top.
        assert_eq!(s.ns, [10_240, 1_015_808]);
    }

    #[test]
    fn a_snapshot_counts_sums_errors_and_in_flight_and_encodes_both_formats() {
        let cells = [
            (
                key(15, 10_000, 0, 0),
                CellCounts {
                    count: 90,
                    sum_ns: 900_000,
                },
            ),
            (
                key(15, 1_000_000, 0, 0),
                CellCounts {
                    count: 6,
                    sum_ns: 6_000_000,
                },
            ),
            (
                key(15, 1_000_000, 2, 0),
                CellCounts {
                    count: 4,
                    sum_ns: 4_000_000,
                },
            ),
            (
                key(15, 3_000, 0, agg_stage::QUEUE),
                CellCounts {
                    count: 100,
                    sum_ns: 300_000,
                },
            ),
        ];
        let counters = KernelCounters {
            agg_unmatched_ends: 3,
            ..KernelCounters::default()
        };
        let in_flight = [
            InFlight {
                connection: 39,
                sent_ns: 1_000_000_000,
                in_overflow: false,
            },
            InFlight {
                connection: 39,
                sent_ns: 4_000_000_000,
                in_overflow: true,
            },
        ];
        let snap = Snapshot::build(
            Inputs {
                cells: &cells,
                cells_in_kernel: CellsInUse { table: 4, hash: 1 },
                generations: &HashMap::from([(39, 1)]),
                in_flight: &in_flight,
                now_ns: 6_000_000_000,
                counters: &counters,
                stages: true,
                build: vec![("version", "0.1.0".into())],
                programs: vec![],
            },
            &book(),
            &Bounds::per_octave(1).unwrap(),
        );
        let om = snap.encode(true);
        let labels = r#"mountpoint="/mnt/a b",fstype="fuse.bindfs",daemon="bindfs",device="0:39""#;
        for line in [
            format!("fusetrace_requests_total{{{labels},opcode=\"READ\"}} 100"),
            format!(
                "fusetrace_request_errors_total{{{labels},opcode=\"READ\",errno=\"ENOENT\"}} 4"
            ),
            format!("fusetrace_request_duration_seconds_count{{{labels},opcode=\"READ\"}} 100"),
            format!("fusetrace_request_duration_seconds_sum{{{labels},opcode=\"READ\"}} 0.0109"),
            // 10 us lies below 16 384 ns; 1 ms below 1 048 576 ns.
            format!(
                "fusetrace_request_duration_seconds_bucket{{le=\"0.000016384\",{labels},opcode=\"READ\"}} 90"
            ),
            format!(
                "fusetrace_request_duration_seconds_bucket{{le=\"0.000524288\",{labels},opcode=\"READ\"}} 90"
            ),
            format!(
                "fusetrace_request_duration_seconds_bucket{{le=\"0.001048576\",{labels},opcode=\"READ\"}} 100"
            ),
            format!(
                "fusetrace_request_duration_seconds_bucket{{le=\"+Inf\",{labels},opcode=\"READ\"}} 100"
            ),
            format!(
                "fusetrace_request_stage_duration_seconds_count{{{labels},opcode=\"READ\",stage=\"queue_wait\"}} 100"
            ),
            format!("fusetrace_requests_in_flight{{{labels}}} 2"),
            format!("fusetrace_oldest_request_age_seconds{{{labels}}} 5.0"),
            "fusetrace_kernel_losses_total{reason=\"unmatched_end\"} 3".to_string(),
            "fusetrace_build_info{version=\"0.1.0\"} 1".to_string(),
            // One request in a slot, one in the overflow hash; the cells
            // the kernel holds (one more than `--op` kept), one generation.
            "fusetrace_kernel_map_entries{map=\"AGG_SLOTS\"} 1".to_string(),
            "fusetrace_kernel_map_entries{map=\"AGG_SENT\"} 1".to_string(),
            "fusetrace_kernel_map_entries{map=\"AGG_CELL_TABLE\"} 4".to_string(),
            "fusetrace_kernel_map_entries{map=\"AGG_HISTOGRAMS\"} 1".to_string(),
            "fusetrace_kernel_map_entries{map=\"AGG_GENERATIONS\"} 1".to_string(),
            "fusetrace_kernel_map_max_entries{map=\"AGG_SLOTS\"} 262144".to_string(),
            "fusetrace_kernel_map_max_entries{map=\"AGG_SENT\"} 65536".to_string(),
            "# EOF".to_string(),
        ] {
            assert!(om.lines().any(|l| l == line), "missing {line} in\n{om}");
        }
        assert!(om.contains("# TYPE fusetrace_requests counter"));
        let text = Snapshot::build(
            Inputs {
                cells: &cells,
                cells_in_kernel: CellsInUse {
                    table: cells.len(),
                    hash: 0,
                },
                generations: &HashMap::new(),
                in_flight: &[],
                now_ns: 0,
                counters: &counters,
                stages: false,
                build: vec![],
                programs: vec![("agg_ended_btf".into(), 0.5, 7)],
            },
            &book(),
            &Bounds::per_octave(1).unwrap(),
        )
        .encode(false);
        assert!(
            text.contains("# TYPE fusetrace_requests_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("stage_duration"));
        assert!(text.contains("fusetrace_bpf_program_runs_total{program=\"agg_ended_btf\"} 7"));
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(103), "ECONNABORTED");
        assert_eq!(errno_name(250), "250");
    }
}
