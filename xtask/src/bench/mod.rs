//! `cargo xtask bench`: what tracing costs the traced system, measured.
//!
//! For every workload, on the reference daemon and on bindfs, runs the
//! load untraced and under each tracer, interleaved (A B C A B C ...) so
//! that drift in the machine's speed hits every variant alike. Reports
//! median ops/s and the ratio to the untraced median, the tracer's CPU
//! time per traced request and its peak RSS, ring buffer drops; then the
//! consumer micro-benchmark (`fusetrace bench-consumer`) and the tracer's
//! peak RSS with 100 000 requests in flight. The anchors are bpftrace
//! scripts answering the same questions the way people do today:
//! `xtask/bench/fuse-latency.bt` (send -> end per opcode) and
//! `xtask/bench/fuse-stages.bt` (the four points, per stage).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::{Result, apt_install, cargo, root, run, setup};

/// What the bench needs beyond `cargo xtask setup`: the anchor tracer.
/// Not installed by the test path (`cargo xtask test`, `.ci/run`).
pub(crate) const BENCH_APT_PACKAGES: &[&str] = &["bpftrace"];

/// Requests held in flight for the RSS measurement.
pub(crate) const IN_FLIGHT_TARGET: u64 = 100_000;
/// Blocked requester threads per helper process: each thread stack is a
/// mapping, and a process may have at most `vm.max_map_count` (65530).
pub(crate) const STALL_THREADS_PER_PROCESS: u64 = 25_000;

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) rounds: usize,
    pub(crate) duration: Duration,
    pub(crate) workloads: Vec<String>,
    pub(crate) targets: Vec<Target>,
    pub(crate) in_flight: u64,
    pub(crate) consumer: bool,
    pub(crate) export: Duration,
    pub(crate) kernel_cost: bool,
    pub(crate) serve_mounts: usize,
    pub(crate) serve_churn: Duration,
    /// Only these variants in the workload rounds (empty: all).
    pub(crate) variants: Vec<String>,
    pub(crate) out: PathBuf,
}

/// `cargo xtask bench` options. Every run writes its tables to `--out`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// One round of 1 s per variant (a smoke run, not figures).
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds per variant.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Seconds of load per variant and round (`2` or `2s`).
    #[arg(long, default_value = "2", value_parser = seconds)]
    duration: Duration,
    /// Workloads, comma-separated (`none`: only the other measurements).
    #[arg(long, value_delimiter = ',', default_value = "metadata,randread,seqwrite,smallfiles",
          value_parser = ["metadata", "randread", "seqwrite", "smallfiles", "metadata2", "none"])]
    workloads: Vec<String>,
    /// File systems to load, comma-separated.
    /// (`reference-uring`: the reference daemon on FUSE over io_uring,
    /// with the kernel's `enable_uring` set for the run and put back.)
    #[arg(long, value_delimiter = ',', default_value = "reference,bindfs",
          value_parser = ["reference", "reference-uring", "bindfs"])]
    targets: Vec<String>,
    /// Requests to hold in flight for the RSS measurement (0 skips it).
    #[arg(long, default_value_t = IN_FLIGHT_TARGET)]
    in_flight: u64,
    /// Skip the consumer micro-benchmark.
    #[arg(long)]
    no_consumer: bool,
    /// Seconds of the metadata storm to record for the export benchmark
    /// (`report --perfetto` on that recording and on one a tenth as long:
    /// time, peak RSS, size); 0 skips it.
    #[arg(long, default_value = "0", value_parser = seconds_or_zero)]
    export: Duration,
    /// Skip the BPF run-time measurement (kernel.bpf_stats_enabled).
    #[arg(long)]
    no_kernel_cost: bool,
    /// Only these variants in the workload rounds, comma-separated (default:
    /// all; untraced is the baseline, keep it).
    #[arg(long, value_delimiter = ',', value_parser = ["untraced", "stats", "stages", "from-events", "trace", "trace-no-paths", "top", "serve", "diagnose", "bpftrace", "bpftrace4", "syscall-floor"])]
    variants: Vec<String>,
    /// Mounts for the `fusetrace serve` scrape-cost measurement (CPU per
    /// scrape with that many loaded mounts); 0 skips it.
    #[arg(long, default_value_t = 0)]
    serve_mounts: usize,
    /// Seconds of mount churn under `fusetrace serve` (its RSS over time);
    /// 0 skips it.
    #[arg(long, default_value = "0", value_parser = seconds_or_zero)]
    serve_churn: Duration,
    /// Run only the soak, for this long (e.g. 3m or 1h): `fusetrace serve`
    /// scraped every 15 s and `fusetrace top --headless` under the mixed
    /// load, a second mount coming and going every minute; RSS, CPU and
    /// the kernel maps' occupancy sampled every minute into a CSV beside
    /// `--out` (same name, `.csv`).
    #[arg(long, value_name = "DURATION", value_parser = soak_duration)]
    soak: Option<Duration>,
    /// Where the Markdown tables go (default target/bench/results.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: the in-flight helper process the bench starts itself.
    #[arg(long, hide = true, num_args = 2, value_names = ["FD", "THREADS"])]
    stall_helper: Option<Vec<String>>,
}

fn seconds(text: &str) -> std::result::Result<Duration, String> {
    text.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds, e.g. 2 or 2s"))
}

fn seconds_or_zero(text: &str) -> std::result::Result<Duration, String> {
    if text.trim_end_matches('s') == "0" {
        return Ok(Duration::ZERO);
    }
    seconds(text)
}

impl BenchArgs {
    fn options(&self) -> Options {
        let (rounds, duration) = if self.quick {
            (1, Duration::from_secs(1))
        } else {
            (self.rounds as usize, self.duration)
        };
        Options {
            rounds,
            duration,
            workloads: self
                .workloads
                .iter()
                .filter(|w| *w != "none")
                .cloned()
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|t| match t.as_str() {
                    "bindfs" => Target::Bindfs,
                    "reference-uring" => Target::ReferenceUring,
                    _ => Target::Reference,
                })
                .collect(),
            in_flight: self.in_flight,
            consumer: !self.no_consumer,
            export: self.export,
            kernel_cost: !self.no_kernel_cost,
            serve_mounts: self.serve_mounts,
            variants: self.variants.clone(),
            serve_churn: self.serve_churn,
            out: self
                .out
                .clone()
                .unwrap_or_else(|| root().join("target/bench/results.md")),
        }
    }
}

/// `cargo xtask bench ...`, and the hidden helper it starts itself.
pub fn main(args: &BenchArgs) -> Result<()> {
    if let Some(helper) = &args.stall_helper {
        return stall_helper(helper);
    }
    let opts = args.options();
    setup()?;
    install_bench_packages()?;
    cargo(&["build", "--release", "-p", "fusetrace"])?;
    let bench = Bench::new()?;
    match args.soak {
        Some(d) => bench.run_soak(d, &opts.out),
        None => bench.run(&opts),
    }
}

pub(crate) fn install_bench_packages() -> Result<()> {
    apt_install(BENCH_APT_PACKAGES, |p| p)
}

mod export;
mod harness;
mod model;
mod mounts;
mod parsing;
mod report;
mod serve;
mod soak;
mod soak_data;
mod stall;
mod tracers;

use self::{
    harness::*, model::*, mounts::*, parsing::*, report::*, soak_data::soak_duration, stall::*,
    tracers::*,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lines_it_reads() {
        let (rate, secs, errors) =
            parse_load("load: metadata 8863 ops in 1.000 s: 8861.0 ops/s (3 errors)").unwrap();
        assert_eq!((rate, secs, errors), (8861.0, 1.0, 3));
        let l = "fusetrace: 19 requests (19 answered, 100.0% of those with all four stages), 7 in flight at exit; lost or unmatched: 4 ring buffer drops, 0 replies";
        assert_eq!(number_after(l, "fusetrace: "), Some(19));
        assert_eq!(number_before(l, " ring buffer drops"), Some(4));
        assert_eq!(number_before(l, " in flight at exit"), Some(7));
        let j = r#"{"summary":{"requests":5,"tracker":{"events":20,"finished":5}}}"#;
        assert_eq!(json_u64(j, "events"), Some(20));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
