//! `--hist`: latency as log2 bar histograms in microseconds, in the shape
//! of bpftrace's `hist()` (bucket, count, bar), per opcode and stage;
//! percentiles hide bimodal latency (page-cache hits against daemon round
//! trips), a histogram shows both humps.
//!
//! Built from the stats' HDR histograms (3 significant digits), so a
//! latency within 0.1% of a power of two may fall in the neighbouring
//! bucket; the counts always add up to the stage's samples.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    pipeline::stats::Stats,
    pipeline::{lifecycle::LatencyStage, opcode},
};

/// Width of the longest bar, as bpftrace draws it.
const BAR_WIDTH: u64 = 52;

/// One bucket: latencies in `[low_us, high_us)` (`[0]` and `[1]`: exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub low_us: u64,
    pub high_us: u64,
    pub count: u64,
}

/// One histogram of one stage of one opcode on one mount.
#[derive(Debug, Clone, Serialize)]
pub struct StageHist {
    pub mount: String,
    pub opcode: String,
    pub stage: LatencyStage,
    pub buckets: Vec<Bucket>,
}

/// The log2 bucket of a latency in microseconds: 0, 1, then [2^k, 2^(k+1)).
fn bucket_of(us: u64) -> usize {
    if us < 2 {
        us as usize
    } else {
        (64 - us.leading_zeros()) as usize
    }
}

fn bounds(i: usize) -> (u64, u64) {
    match i {
        0 => (0, 1),
        1 => (1, 2),
        _ => (1 << (i - 1), 1 << i),
    }
}

/// The buckets of a histogram of ns, from the lowest to the highest
/// non-empty one (empty ones between are kept, as bpftrace does).
pub fn buckets(h: &Histogram<u64>) -> Vec<Bucket> {
    let mut counts = [0u64; 65];
    for v in h.iter_recorded() {
        let us = h.highest_equivalent(v.value_iterated_to()) / 1000;
        counts[bucket_of(us).min(64)] += v.count_at_value();
    }
    let Some(first) = counts.iter().position(|&c| c > 0) else {
        return Vec::new();
    };
    let last = counts.iter().rposition(|&c| c > 0).unwrap();
    (first..=last)
        .map(|i| {
            let (low_us, high_us) = bounds(i);
            Bucket {
                low_us,
                high_us,
                count: counts[i],
            }
        })
        .collect()
}

/// Every measured stage of every opcode, mounts named by `name`.
pub fn stage_hists(stats: &Stats, name: &mut impl FnMut(u32) -> String) -> Vec<StageHist> {
    let mut out = Vec::new();
    for ((conn, op), s) in &stats.ops {
        for stage in LatencyStage::ALL {
            let buckets = buckets(s.histogram(stage));
            if !buckets.is_empty() {
                out.push(StageHist {
                    mount: name(*conn),
                    opcode: opcode::name(*op),
                    stage,
                    buckets,
                });
            }
        }
    }
    out
}

/// bpftrace's short numbers: 1K, 2M (powers of 1024 as it prints them).
fn short(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (size, unit) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

/// The text: a heading per histogram, then a line per bucket.
pub fn render(hists: &[StageHist]) -> String {
    let mut out = String::new();
    for h in hists {
        let _ = writeln!(
            out,
            "\n@{}[{}, {}] (us):",
            h.opcode,
            h.mount,
            h.stage.name()
        );
        let top = h.buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1);
        for b in &h.buckets {
            let label = if b.high_us - b.low_us == 1 && b.low_us < 2 {
                format!("[{}]", b.low_us)
            } else {
                format!("[{}, {})", short(b.low_us), short(b.high_us))
            };
            let bar = "@".repeat((b.count * BAR_WIDTH / top) as usize);
            let _ = writeln!(
                out,
                "{label:<20}{:>8} |{bar:<width$}|",
                b.count,
                width = BAR_WIDTH as usize
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values_ns: &[(u64, u64)]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for (v, n) in values_ns {
            h.record_n(*v, *n).unwrap();
        }
        h
    }

    #[test]
    fn bimodal_latency_shows_both_humps_and_counts_add_up() {
        // 90 cache-speed requests at 12 us, 10 daemon round trips at 3 ms.
        let h = histogram(&[(12_000, 90), (3_000_000, 10)]);
        let b = buckets(&h);
        assert_eq!(
            b.first().unwrap(),
            &Bucket {
                low_us: 8,
                high_us: 16,
                count: 90
            }
        );
        assert_eq!(
            b.last().unwrap(),
            &Bucket {
                low_us: 2048,
                high_us: 4096,
                count: 10
            }
        );
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 100);
        // The empty buckets between are drawn.
        assert_eq!(b.len(), 9);
        let text = render(&[StageHist {
            mount: "/mnt".into(),
            opcode: "READ".into(),
            stage: LatencyStage::Total,
            buckets: b,
        }]);
        assert!(text.contains("@READ[/mnt, total] (us):"), "{text}");
        assert!(
            text.contains(&format!(
                "[8, 16)                   90 |{}|",
                "@".repeat(52)
            )),
            "{text}"
        );
        let line = format!("{:<20}{:>8} |{:<52}|", "[2K, 4K)", 10, "@".repeat(5));
        assert!(text.contains(&line), "{text}");
    }

    #[test]
    fn sub_microsecond_and_one_microsecond_get_their_own_rows() {
        let b = buckets(&histogram(&[(300, 2), (1_500, 3), (2_500, 1)]));
        assert_eq!(
            b,
            [
                Bucket {
                    low_us: 0,
                    high_us: 1,
                    count: 2
                },
                Bucket {
                    low_us: 1,
                    high_us: 2,
                    count: 3
                },
                Bucket {
                    low_us: 2,
                    high_us: 4,
                    count: 1
                },
            ]
        );
        assert!(buckets(&histogram(&[])).is_empty());
    }
}
