//! `cargo xtask bench`: what tracing costs the traced system, measured.
//!
//! For every workload, on the reference daemon and on bindfs, runs the
//! load untraced and under each tracer, interleaved (A B C A B C ...) so
//! that drift in the machine's speed hits every variant alike. Reports
//! median ops/s and the ratio to the untraced median, the tracer's CPU
//! time per traced request and its peak RSS, ring buffer drops; then the
//! consumer micro-benchmark (`fusetrace bench-consumer`) and the tracer's
//! peak RSS with 100 000 requests in flight. The anchor is a bpftrace
//! script (`xtask/bench/fuse-latency.bt`) answering the same question
//! the way people do today.

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
const BENCH_APT_PACKAGES: &[&str] = &["bpftrace"];

/// Requests held in flight for the RSS measurement.
const IN_FLIGHT_TARGET: u64 = 100_000;
/// Blocked requester threads per helper process: each thread stack is a
/// mapping, and a process may have at most `vm.max_map_count` (65530).
const STALL_THREADS_PER_PROCESS: u64 = 25_000;

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    duration: Duration,
    workloads: Vec<String>,
    targets: Vec<Target>,
    in_flight: u64,
    consumer: bool,
    kernel_cost: bool,
    out: PathBuf,
}

fn usage() -> String {
    "usage: cargo xtask bench [--quick] [--rounds N] [--duration SECONDS] \
     [--workloads metadata,randread,seqwrite,smallfiles,metadata2|none] [--targets reference,bindfs] \
     [--in-flight N (0: skip)] [--no-consumer] [--no-kernel-cost] [--out FILE]"
        .to_string()
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        rounds: 3,
        duration: Duration::from_secs(2),
        workloads: ["metadata", "randread", "seqwrite", "smallfiles"]
            .map(str::to_string)
            .to_vec(),
        targets: vec![Target::Reference, Target::Bindfs],
        in_flight: IN_FLIGHT_TARGET,
        consumer: true,
        kernel_cost: true,
        out: root().join("target/bench/results.md"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value; {}", usage()))
        };
        match a.as_str() {
            "--quick" => {
                o.rounds = 1;
                o.duration = Duration::from_secs(1);
            }
            "--rounds" => {
                o.rounds = value(a)?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--rounds needs a positive number")?
            }
            "--duration" => {
                let s: f64 = value(a)?
                    .trim_end_matches('s')
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("--duration needs seconds, e.g. 2 or 2s")?;
                o.duration = Duration::from_secs_f64(s);
            }
            "--workloads" => {
                let list = value(a)?;
                o.workloads = list
                    .split(',')
                    .filter(|w| *w != "none")
                    .map(str::to_string)
                    .collect();
                for w in &o.workloads {
                    if !WORKLOADS.iter().any(|k| k.name == w) {
                        return Err(format!("unknown workload `{w}`; {}", usage()));
                    }
                }
            }
            "--targets" => {
                o.targets = value(a)?
                    .split(',')
                    .map(|t| match t {
                        "reference" => Ok(Target::Reference),
                        "bindfs" => Ok(Target::Bindfs),
                        _ => Err(format!("unknown target `{t}`; {}", usage())),
                    })
                    .collect::<Result<_>>()?
            }
            "--in-flight" => {
                o.in_flight = value(a)?
                    .parse()
                    .map_err(|_| "--in-flight needs a number (0 skips it)")?
            }
            "--no-consumer" => o.consumer = false,
            "--no-kernel-cost" => o.kernel_cost = false,
            "--out" => o.out = PathBuf::from(value(a)?),
            _ => return Err(format!("unknown argument `{a}`; {}", usage())),
        }
    }
    Ok(o)
}

/// `cargo xtask bench ...`, and the hidden helper it starts itself.
pub fn main(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("--stall-helper") {
        return stall_helper(&args[1..]);
    }
    let opts = parse_options(args)?;
    setup()?;
    install_bench_packages()?;
    cargo(&["build", "--release", "-p", "fusetrace"])?;
    let bench = Bench::new()?;
    bench.run(&opts)
}

fn install_bench_packages() -> Result<()> {
    apt_install(BENCH_APT_PACKAGES, |p| p)
}

// ---------------------------------------------------------------- model

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Reference,
    Bindfs,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Reference => "reference daemon",
            Target::Bindfs => "bindfs",
        }
    }
}

/// A load pattern and how each file system is mounted for it.
struct Workload {
    name: &'static str,
    what: &'static str,
    load: &'static [&'static str],
    daemon: &'static [&'static str],
    bindfs: &'static str,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "metadata",
        what: "metadata storm: stat() loop, zero attribute/entry timeouts",
        load: &["--workload", "metadata"],
        daemon: &["--ttl", "0s"],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
    Workload {
        name: "randread",
        what: "4 KiB direct-io reads at random offsets",
        load: &[
            "--workload",
            "randread",
            "--block-size",
            "4KiB",
            "--file-size",
            "16MiB",
        ],
        daemon: &["--direct-io"],
        bindfs: "attr_timeout=0,entry_timeout=0,direct_io",
    },
    Workload {
        name: "seqwrite",
        what: "sequential 128 KiB writes",
        load: &[
            "--workload",
            "seqwrite",
            "--block-size",
            "128KiB",
            "--file-size",
            "64MiB",
        ],
        daemon: &[],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
    Workload {
        name: "smallfiles",
        what: "small files: create, write 4 KiB, close, unlink",
        load: &["--workload", "smallfiles"],
        daemon: &[],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
    Workload {
        name: "metadata2",
        what: "metadata storm from 2 threads on a 2-thread daemon (not run by default)",
        load: &["--workload", "metadata", "--jobs", "2"],
        daemon: &["--ttl", "0s", "--threads", "2"],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Untraced,
    Stats,
    StatsStages,
    Trace,
    Top,
    Bpftrace,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::Stats => "fusetrace stats",
            Variant::StatsStages => "fusetrace stats --stages",
            Variant::Trace => "fusetrace trace >/dev/null",
            Variant::Top => "fusetrace top --headless",
            Variant::Bpftrace => "bpftrace script",
        }
    }
}

/// One load run, and what the tracer running alongside it cost.
#[derive(Debug, Clone, Default)]
struct Sample {
    ops_per_sec: f64,
    load_errors: u64,
    /// From the tracer's closing summary (bpftrace: its request count).
    requests: Option<u64>,
    /// Events the tracker saw (`stats --format json` only).
    events: Option<u64>,
    ring_drops: Option<u64>,
    /// Tracer CPU time while the load ran (all its threads).
    cpu_ns: Option<u64>,
    load_secs: f64,
    peak_rss_kib: Option<u64>,
}

// ---------------------------------------------------------------- harness

struct Bench {
    fusetrace: PathBuf,
    script: PathBuf,
    has_top: bool,
    /// `stats --stages` exists (then plain `stats` counts in the kernel).
    has_stages: bool,
    scratch: PathBuf,
}

impl Bench {
    fn new() -> Result<Bench> {
        let fusetrace = root().join("target/release/fusetrace");
        let help = Command::new(&fusetrace)
            .args(["top", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let stats_help = Command::new(&fusetrace)
            .args(["stats", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let scratch = std::env::temp_dir().join(format!("fusetrace-bench-{}", std::process::id()));
        fs::create_dir_all(&scratch)
            .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        Ok(Bench {
            fusetrace,
            script: root().join("xtask/bench/fuse-latency.bt"),
            has_top: help.contains("--headless"),
            has_stages: stats_help.contains("--stages"),
            scratch,
        })
    }

    fn variants(&self) -> Vec<Variant> {
        let mut v = vec![Variant::Untraced, Variant::Stats];
        if self.has_stages {
            v.push(Variant::StatsStages);
        }
        v.push(Variant::Trace);
        if self.has_top {
            v.push(Variant::Top);
        }
        v.push(Variant::Bpftrace);
        v
    }

    fn run(&self, opts: &Options) -> Result<()> {
        let started = Instant::now();
        let mut report = String::new();
        let _ = writeln!(report, "{}", machine_line());
        let _ = writeln!(
            report,
            "\n{} round(s) of {:.1} s per variant, interleaved; medians.\n",
            opts.rounds,
            opts.duration.as_secs_f64()
        );
        if !self.has_top {
            eprintln!("xtask: bench: `fusetrace top --headless` does not exist yet: skipped");
        }
        let result = (|| -> Result<()> {
            for &target in &opts.targets {
                for name in &opts.workloads {
                    let w = WORKLOADS.iter().find(|w| w.name == name).unwrap();
                    let samples = self.workload(target, w, opts)?;
                    report.push_str(&render_workload(target, w, &samples));
                    eprint!("{}", render_workload(target, w, &samples));
                }
            }
            if opts.kernel_cost {
                let k = self.kernel_cost(opts)?;
                eprint!("{k}");
                report.push_str(&k);
            }
            if opts.consumer {
                let c = self.consumer()?;
                eprint!("{c}");
                report.push_str(&c);
            }
            if opts.in_flight > 0 {
                let f = self.in_flight(opts.in_flight)?;
                eprint!("{f}");
                report.push_str(&f);
            }
            Ok(())
        })();
        let _ = fs::remove_dir_all(&self.scratch);
        result?;
        let _ = writeln!(
            report,
            "\n(bench took {:.0} s)",
            started.elapsed().as_secs_f64()
        );
        if let Some(dir) = opts.out.parent() {
            let _ = fs::create_dir_all(dir);
        }
        fs::write(&opts.out, &report)
            .map_err(|e| format!("cannot write {}: {e}", opts.out.display()))?;
        println!("{report}");
        eprintln!("xtask: bench: results in {}", opts.out.display());
        Ok(())
    }

    /// All rounds of one workload on one target: every variant per round.
    fn workload(
        &self,
        target: Target,
        w: &Workload,
        opts: &Options,
    ) -> Result<BTreeMap<Variant, Vec<Sample>>> {
        eprintln!("xtask: bench: {} on the {}", w.name, target.name());
        let mount = Mount::new(self, target, w)?;
        let mut samples: BTreeMap<Variant, Vec<Sample>> = BTreeMap::new();
        for round in 0..opts.rounds {
            for variant in self.variants() {
                let s = self.one(variant, &mount, w, opts.duration).map_err(|e| {
                    format!("{} / {} / {}: {e}", target.name(), w.name, variant.name())
                })?;
                eprintln!(
                    "xtask: bench:   round {} {:<28} {:>10.0} ops/s{}",
                    round + 1,
                    variant.name(),
                    s.ops_per_sec,
                    s.ring_drops
                        .filter(|d| *d > 0)
                        .map(|d| format!(" ({d} ring buffer drops)"))
                        .unwrap_or_default()
                );
                samples.entry(variant).or_default().push(s);
            }
        }
        mount.stop()?;
        Ok(samples)
    }

    /// One load run under `variant`.
    fn one(&self, variant: Variant, mount: &Mount, w: &Workload, d: Duration) -> Result<Sample> {
        let tracer = match variant {
            Variant::Untraced => None,
            _ => Some(Tracer::start(self, variant, mount)?),
        };
        let cpu_before = tracer.as_ref().and_then(|t| task_cpu_ns(t.pid()));
        let load = Command::new(&self.fusetrace)
            .arg("load")
            .arg(&mount.dir)
            .args(w.load)
            .arg("--duration")
            .arg(format!("{}ms", d.as_millis()))
            .stderr(Stdio::inherit())
            .output();
        let cpu_after = tracer.as_ref().and_then(|t| task_cpu_ns(t.pid()));
        let load = match load {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => {
                if let Some(t) = tracer {
                    let _ = t.stop();
                }
                return Err(format!("fusetrace load failed with {}", o.status));
            }
            Err(e) => return Err(format!("cannot run fusetrace load: {e}")),
        };
        let (ops_per_sec, load_secs, load_errors) = parse_load(&load)?;
        let mut s = Sample {
            ops_per_sec,
            load_secs,
            load_errors,
            ..Sample::default()
        };
        if let Some(t) = tracer {
            let end = t.stop()?;
            s.requests = end.requests;
            s.events = end.events;
            s.ring_drops = end.ring_drops;
            s.peak_rss_kib = Some(end.peak_rss_kib);
            s.cpu_ns = cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a));
        }
        Ok(s)
    }

    /// The consumer micro-benchmark, synthetic and on a recording of the
    /// metadata storm.
    /// Where the traced system's time goes: the kernel's own accounting of
    /// each BPF program (`kernel.bpf_stats_enabled`), for `stats` and the
    /// bpftrace script on the metadata storm. A separate run: the
    /// accounting itself costs two clock reads per program run.
    fn kernel_cost(&self, opts: &Options) -> Result<String> {
        eprintln!("xtask: bench: BPF program run time (kernel.bpf_stats_enabled)");
        let w = WORKLOADS.iter().find(|w| w.name == "metadata").unwrap();
        let mut out = String::from(
            "\n### Kernel side: BPF run time per traced request (reference daemon, metadata storm)\n\n\
             Measured in a separate run with `kernel.bpf_stats_enabled=1` (which itself adds two clock reads \
             per program run), from `bpftool prog show`.\n\n\
             | tracer | program | runs per request | ns per run | ns per request |\n| --- | --- | ---: | ---: | ---: |\n",
        );
        let mount = Mount::new(self, Target::Reference, w)?;
        let result = (|| -> Result<()> {
            let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", 1)?;
            let mut variants = vec![Variant::Stats];
            if self.has_stages {
                variants.push(Variant::StatsStages);
            }
            variants.push(Variant::Bpftrace);
            for variant in variants {
                let before = bpf_programs()?;
                let tracer = Tracer::start(self, variant, &mount)?;
                let load = Command::new(&self.fusetrace)
                    .arg("load")
                    .arg(&mount.dir)
                    .args(w.load)
                    .arg("--duration")
                    .arg(format!("{}ms", opts.duration.as_millis()))
                    .output();
                let after = bpf_programs();
                let end = tracer.stop()?;
                load.map_err(|e| format!("fusetrace load: {e}"))?;
                let requests = end.requests.unwrap_or(0).max(1) as f64;
                let mut total = 0.0;
                for (id, (name, runs, ns)) in after? {
                    if before.contains_key(&id) || runs == 0 {
                        continue;
                    }
                    let per_request = ns as f64 / requests;
                    total += per_request;
                    let _ = writeln!(
                        out,
                        "| {} | {name} | {:.2} | {:.0} | {per_request:.0} |",
                        variant.name(),
                        runs as f64 / requests,
                        ns as f64 / runs as f64
                    );
                }
                let _ = writeln!(out, "| {} | **all** | | | **{total:.0}** |", variant.name());
            }
            drop(_stats);
            out.push_str(&self.syscall_tax(&mount, w, opts)?);
            Ok(())
        })();
        mount.stop()?;
        result.map(|()| out)
    }

    /// What any syscall tracepoint costs by being enabled: every task then
    /// takes the traced syscall path, for every syscall. Measured with a
    /// bpftrace program on a syscall nobody makes, interleaved with
    /// untraced runs.
    fn syscall_tax(&self, mount: &Mount, w: &Workload, opts: &Options) -> Result<String> {
        let (mut plain, mut taxed) = (Vec::new(), Vec::new());
        for _ in 0..opts.rounds.max(3) {
            plain.push(
                self.one(Variant::Untraced, mount, w, opts.duration)?
                    .ops_per_sec,
            );
            let mut cmd = Command::new("bpftrace");
            cmd.args([
                "-e",
                "tracepoint:syscalls:sys_enter_getppid { @calls = count(); }",
            ])
            .stdout(Stdio::piped());
            let idle = Tracer::spawn(cmd, "Attaching")?;
            let load = self.one(Variant::Untraced, mount, w, opts.duration);
            idle.stop()?;
            taxed.push(load?.ops_per_sec);
        }
        let (p, t) = (median(plain).unwrap_or(0.0), median(taxed).unwrap_or(0.0));
        Ok(format!(
            "\nAn enabled syscall tracepoint whose program never runs (`sys_enter_getppid`): metadata storm \
             {t:.0} ops/s against {p:.0} untraced ({:.3}), interleaved, medians. fusetrace's daemon-side hooks \
             are syscall tracepoints (this kernel has no kprobes and refuses fentry), so it pays this before \
             any of its programs run.\n",
            if p > 0.0 { t / p } else { 0.0 }
        ))
    }

    fn consumer(&self) -> Result<String> {
        eprintln!("xtask: bench: consumer (decode + tracker + sink, one core)");
        let mut out = String::from(
            "\n### Consumer: decode + tracker + sink on one core (`fusetrace bench-consumer`)\n\n\
             | events | sink | M events/s (median of 5) | ns/event |\n| --- | --- | ---: | ---: |\n",
        );
        let recording = self.scratch.join("metadata.ftr");
        self.record_metadata(&recording)?;
        for source in [None, Some(&recording)] {
            for sink in ["stats", "trace"] {
                let mut cmd = Command::new(&self.fusetrace);
                cmd.args(["bench-consumer", "--json", "--sink", sink]);
                if let Some(r) = source {
                    cmd.arg("--recording").arg(r);
                }
                let text = crate::output(&mut cmd)?;
                let events = json_u64(&text, "events").unwrap_or(0);
                let rate = json_f64(&text, "median_events_per_sec").unwrap_or(0.0);
                let ns = json_f64(&text, "ns_per_event").unwrap_or(0.0);
                let what = match source {
                    None => format!("{events} synthetic (4 stages per request)"),
                    Some(_) => format!("{events} replayed from a recording of the metadata storm"),
                };
                let _ = writeln!(out, "| {what} | {sink} | {:.2} | {ns:.0} |", rate / 1e6);
            }
        }
        Ok(out)
    }

    /// Records one second of the metadata storm on the reference daemon.
    fn record_metadata(&self, file: &Path) -> Result<()> {
        let w = WORKLOADS.iter().find(|w| w.name == "metadata").unwrap();
        let mount = Mount::new(self, Target::Reference, w)?;
        let result = (|| -> Result<()> {
            let mut cmd = Command::new(&self.fusetrace);
            cmd.arg("record")
                .arg("--mount")
                .arg(&mount.dir)
                .arg("--output")
                .arg(file)
                .stdout(Stdio::null());
            let t = Tracer::spawn(cmd, "tracing (")?;
            let load = Command::new(&self.fusetrace)
                .arg("load")
                .arg(&mount.dir)
                .args(w.load)
                .args(["--duration", "1s"])
                .output();
            t.stop()?;
            match load {
                Ok(o) if o.status.success() => Ok(()),
                _ => Err("fusetrace load failed while recording".to_string()),
            }
        })();
        mount.stop()?;
        result
    }

    /// Peak RSS of `fusetrace stats` holding `n` requests in flight: a
    /// daemon that takes one request and never answers, and `n` threads
    /// blocked in stat() on its mount.
    fn in_flight(&self, n: u64) -> Result<String> {
        let mut out = String::new();
        let mut tracers: Vec<&[&str]> = vec![&["stats", "--format", "json"]];
        if self.has_stages {
            tracers.push(&["stats", "--stages", "--format", "json"]);
        }
        tracers.push(&["trace"]);
        if self.has_top {
            tracers.push(&["top", "--headless"]);
        }
        for (i, args) in tracers.into_iter().enumerate() {
            let section = self.in_flight_with(n, args)?;
            if i == 0 {
                out.push_str(&section);
            } else if let Some(row) = section.lines().last() {
                out.push_str(row);
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// One tracer (`fusetrace ARGS`) through [`Bench::in_flight`]: its
    /// section, whose last line is its table row.
    fn in_flight_with(&self, n: u64, args: &[&str]) -> Result<String> {
        eprintln!(
            "xtask: bench: {n} requests in flight, fusetrace {}",
            args.join(" ")
        );
        let _pid_max = Sysctl::at_least("/proc/sys/kernel/pid_max", n + 65_536)?;
        let _threads_max = Sysctl::at_least("/proc/sys/kernel/threads-max", n + 65_536)?;
        let fusectl = FuseCtl::mounted()?;
        let dir = self.scratch.join("inflight");
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // One daemon thread that sleeps an hour in the first READ it takes:
        // every later READ stays queued in the kernel, in flight. Direct-io
        // reads are synchronous requests, each with its own caller, and are
        // not limited by max_background.
        let mut daemon = Command::new(&self.fusetrace);
        daemon.arg("daemon").arg(&dir).args([
            "--threads",
            "1",
            "--direct-io",
            "--latency",
            "READ=1h",
        ]);
        let mount = Mount::reference(daemon, &dir)?;
        let waiting = fusectl.waiting_file(mount.connection);
        // Started before the shared file is opened: a tracer that inherited
        // it would hang at exit in the FLUSH of its close.
        let mut stats = Command::new(&self.fusetrace);
        stats
            .args(args)
            .arg("--mount")
            .arg(&dir)
            .stdout(Stdio::piped());
        let tracer = match Tracer::spawn(stats, "tracing (") {
            Ok(t) => t,
            Err(e) => {
                mount.stop()?;
                return Err(e);
            }
        };
        // Opened here, before anything blocks the daemon, and inherited by
        // the helpers: an open() after the first READ would never return.
        let file = dir.join("stall");
        let shared = (|| {
            fs::write(&file, b"x")?;
            let f = fs::File::open(&file)?;
            // SAFETY: clears close-on-exec on a descriptor we own.
            if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f)
        })()
        .map_err(|e: std::io::Error| format!("preparing {}: {e}", file.display()));
        let shared = match shared {
            Ok(f) => f,
            Err(e) => {
                let _ = tracer.stop();
                mount.stop()?;
                return Err(e);
            }
        };
        let mut helpers = Vec::new();
        let before = rss_breakdown(tracer.pid());
        let held = (|| -> Result<(u64, Duration, String)> {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            let started = Instant::now();
            let mut left = n;
            while left > 0 {
                let k = left.min(STALL_THREADS_PER_PROCESS);
                let child = Command::new(&exe)
                    .args(["bench", "--stall-helper"])
                    .arg(shared.as_raw_fd().to_string())
                    .arg(k.to_string())
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start the stall helper: {e}"))?;
                helpers.push(child);
                left -= k;
            }
            // Every requester blocked (the one READ the daemon holds included).
            let seen = wait_for(Duration::from_secs(300), || {
                let w = read_u64(&waiting).unwrap_or(0);
                (w >= n).then_some(w)
            })
            .ok_or_else(|| {
                format!(
                    "fewer than {n} requests in flight after 300 s ({} waiting)",
                    read_u64(&waiting).unwrap_or(0)
                )
            })?;
            let blocked_after = started.elapsed();
            // Until the tracer has read every event: its CPU time stops growing.
            let mut last = task_cpu_ns(tracer.pid()).unwrap_or(0);
            wait_for(Duration::from_secs(60), || {
                thread::sleep(Duration::from_millis(500));
                let now = task_cpu_ns(tracer.pid()).unwrap_or(0);
                let idle = now.saturating_sub(last) < 20_000_000;
                last = now;
                idle.then_some(())
            });
            Ok((seen, blocked_after, rss_breakdown(tracer.pid())))
        })();
        let end = tracer.stop();
        let result = held.and_then(|(seen, blocked_after, rss_now)| {
            let end = end?;
            Ok(format!(
                "\n### Peak RSS with requests in flight\n\n\
                 {seen} requests waiting on the connection ({n} threads blocked in a 1-byte pread() in {} processes, \
                 all blocked after {:.1} s); daemon: `fusetrace daemon --threads 1 --direct-io --latency READ=1h`.\n\n\
                 | tracer | in flight at exit (its own count) | RSS before the requests | RSS while holding them | peak RSS (whole run, wait4) |\n\
                 | --- | ---: | ---: | ---: | ---: |\n\
                 | `fusetrace {}` | {} | {before} | {rss_now} | {:.1} MiB |\n",
                helpers.len(),
                blocked_after.as_secs_f64(),
                args.iter()
                    .filter(|a| !matches!(**a, "--format" | "json"))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                end.in_flight.map(|x| x.to_string()).unwrap_or("?".into()),
                end.peak_rss_kib as f64 / 1024.0,
            ))
        });
        // Killing the daemon aborts the connection: every blocked caller
        // returns (ECONNABORTED) and the helpers exit.
        mount.kill()?;
        for mut h in helpers {
            let _ = h.wait();
        }
        drop(shared);
        result
    }
}

// ---------------------------------------------------------------- mounts

/// A mounted file system for one workload; unmounted by `stop`/`kill`.
struct Mount {
    dir: PathBuf,
    connection: u32,
    daemon: Option<Child>,
    target: Target,
}

impl Mount {
    fn new(bench: &Bench, target: Target, w: &Workload) -> Result<Mount> {
        let dir = bench.scratch.join(format!("mnt-{}", w.name));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        match target {
            Target::Reference => {
                let mut cmd = Command::new(&bench.fusetrace);
                cmd.arg("daemon").arg(&dir).args(w.daemon);
                Mount::reference(cmd, &dir)
            }
            Target::Bindfs => {
                let src = bench.scratch.join(format!("src-{}", w.name));
                fs::create_dir_all(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
                run(Command::new("bindfs")
                    .args(["-o", w.bindfs])
                    .arg(&src)
                    .arg(&dir))?;
                Ok(Mount {
                    connection: connection_of(&dir)?,
                    dir,
                    daemon: None,
                    target,
                })
            }
        }
    }

    /// Starts `fusetrace daemon` (in `cmd`) and waits for its "mounted" line.
    fn reference(mut cmd: Command, dir: &Path) -> Result<Mount> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the reference daemon: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("mounted") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the reference daemon did not mount {}",
                dir.display()
            ));
        }
        Ok(Mount {
            connection: connection_of(dir)?,
            dir: dir.to_path_buf(),
            daemon: Some(child),
            target: Target::Reference,
        })
    }

    fn stop(mut self) -> Result<()> {
        match self.daemon.take() {
            Some(child) => {
                signal(child.id(), libc::SIGTERM);
                reap_or_kill(child, Duration::from_secs(20));
            }
            None => {
                let _ = run(Command::new("fusermount3").arg("-u").arg(&self.dir));
            }
        }
        self.ensure_unmounted()
    }

    fn kill(mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.ensure_unmounted()
    }

    fn ensure_unmounted(&self) -> Result<()> {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if is_mounted(&self.dir) {
            return Err(format!(
                "{} ({}) is still mounted: `umount -l {}`",
                self.dir.display(),
                self.target.name(),
                self.dir.display()
            ));
        }
        Ok(())
    }
}

fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&want))
}

/// The FUSE connection id (`major << 20 | minor` of the mount's device).
fn connection_of(dir: &Path) -> Result<u32> {
    let dev = fs::metadata(dir)
        .map_err(|e| format!("cannot stat {}: {e}", dir.display()))?
        .dev();
    Ok((libc::major(dev) << 20) | libc::minor(dev))
}

/// The fuse control file system (`/sys/fs/fuse/connections`), mounted for
/// the run when it was not.
struct FuseCtl {
    mounted_by_us: bool,
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

impl FuseCtl {
    fn mounted() -> Result<FuseCtl> {
        if is_mounted(Path::new(FUSECTL)) {
            return Ok(FuseCtl {
                mounted_by_us: false,
            });
        }
        run(Command::new("mount").args(["-t", "fusectl", "fusectl", FUSECTL]))?;
        Ok(FuseCtl {
            mounted_by_us: true,
        })
    }

    /// The count of requests waiting on a connection (fusectl names
    /// connections by their minor number).
    fn waiting_file(&self, connection: u32) -> PathBuf {
        Path::new(FUSECTL)
            .join((connection & 0xfffff).to_string())
            .join("waiting")
    }
}

impl Drop for FuseCtl {
    fn drop(&mut self) {
        if self.mounted_by_us {
            let _ = Command::new("umount").arg(FUSECTL).status();
        }
    }
}

/// A kernel limit raised for the run and put back afterwards.
struct Sysctl {
    path: &'static str,
    old: Option<u64>,
}

impl Sysctl {
    fn set(path: &'static str, value: u64) -> Result<Sysctl> {
        let old = read_u64(Path::new(path)).ok_or_else(|| format!("cannot read {path}"))?;
        fs::write(path, value.to_string()).map_err(|e| format!("cannot set {path}: {e}"))?;
        Ok(Sysctl {
            path,
            old: Some(old),
        })
    }

    fn at_least(path: &'static str, value: u64) -> Result<Sysctl> {
        let old = read_u64(Path::new(path)).ok_or_else(|| format!("cannot read {path}"))?;
        if old >= value {
            return Ok(Sysctl { path, old: None });
        }
        fs::write(path, value.to_string())
            .map_err(|e| format!("cannot raise {path} to {value}: {e}"))?;
        Ok(Sysctl {
            path,
            old: Some(old),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = fs::write(self.path, old.to_string());
        }
    }
}

// ---------------------------------------------------------------- tracers

/// A running tracer: its stdout/stderr lines are collected as they come.
struct Tracer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a tracer said and used by the time it exited.
#[derive(Debug, Default)]
struct TracerEnd {
    requests: Option<u64>,
    events: Option<u64>,
    ring_drops: Option<u64>,
    in_flight: Option<u64>,
    peak_rss_kib: u64,
}

impl Tracer {
    fn start(bench: &Bench, variant: Variant, mount: &Mount) -> Result<Tracer> {
        let mut cmd;
        match variant {
            Variant::Untraced => unreachable!(),
            Variant::Stats => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["stats", "--format", "json", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::piped());
            }
            Variant::StatsStages => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["stats", "--stages", "--format", "json", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::piped());
            }
            Variant::Trace => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["trace", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::null());
            }
            Variant::Top => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["top", "--headless", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::null());
            }
            Variant::Bpftrace => {
                cmd = Command::new("bpftrace");
                cmd.arg(&bench.script)
                    .arg(mount.connection.to_string())
                    .stdout(Stdio::piped());
            }
        }
        let ready = if variant == Variant::Bpftrace {
            "Attaching"
        } else {
            "tracing ("
        };
        Tracer::spawn(cmd, ready)
    }

    /// Starts `cmd` and waits until it prints a line containing `ready`
    /// (on stdout or stderr).
    fn spawn(mut cmd: Command, ready: &'static str) -> Result<Tracer> {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let mut readers = Vec::new();
        let stderr = child.stderr.take().unwrap();
        {
            let (lines, tx) = (Arc::clone(&lines), tx.clone());
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    if line.contains(ready) {
                        let _ = tx.send(());
                    }
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        if let Some(stdout) = child.stdout.take() {
            let text = Arc::clone(&stdout_text);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                    if line.contains(ready) {
                        let _ = tx.send(());
                    }
                    let mut t = text.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            }));
        }
        let t = Tracer {
            child,
            lines,
            stdout: stdout_text,
            readers,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let said = t.lines.lock().unwrap().join("\n");
            let _ = t.stop();
            return Err(format!("{cmd:?} did not start tracing: {said}"));
        }
        Ok(t)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ctrl-C, then collect its closing words and resource use.
    fn stop(self) -> Result<TracerEnd> {
        let pid = self.child.id();
        signal(pid, libc::SIGINT);
        let started = Instant::now();
        let (status, rusage) = loop {
            if let Some(r) = wait4_nohang(pid)? {
                break r;
            }
            if started.elapsed() > Duration::from_secs(60) {
                signal(pid, libc::SIGKILL);
            }
            if started.elapsed() > Duration::from_secs(90) {
                return Err(format!(
                    "tracer {pid} does not exit, even after SIGKILL (blocked in the kernel?)"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The child is reaped by wait4; keep std from waiting on it again.
        std::mem::forget(self.child);
        for r in self.readers {
            let _ = r.join();
        }
        let lines = self.lines.lock().unwrap().clone();
        let stdout = self.stdout.lock().unwrap().clone();
        if status != 0 && !(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGINT) {
            return Err(format!(
                "tracer exited with status {status:#x}: {}",
                lines.join("\n")
            ));
        }
        let mut end = TracerEnd {
            peak_rss_kib: rusage.ru_maxrss as u64,
            ..TracerEnd::default()
        };
        // fusetrace: "fusetrace: N requests (...), M in flight at exit; lost
        // or unmatched: D ring buffer drops, ...".
        if let Some(l) = lines.iter().rev().find(|l| l.contains("ring buffer drops")) {
            end.requests = number_after(l, "fusetrace: ");
            end.ring_drops = number_before(l, " ring buffer drops");
            end.in_flight = number_before(l, " in flight at exit");
        }
        // `stats --format json` ends with {"summary": {..., "tracker": {"events": N}}}.
        if let Some(s) = stdout.lines().rev().find(|l| l.starts_with("{\"summary\"")) {
            end.events = json_u64(s, "events");
        }
        // bpftrace: "@requests: N".
        if let Some(l) = stdout.lines().find(|l| l.starts_with("@requests:")) {
            end.requests = number_after(l, "@requests: ");
        }
        Ok(end)
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Reaps `pid` if it exited: its wait status and resource use.
fn wait4_nohang(pid: u32) -> Result<Option<(i32, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut ru) };
    match rc {
        0 => Ok(None),
        r if r == pid as i32 => Ok(Some((status, ru))),
        _ => Err(format!("wait4({pid}): {}", std::io::Error::last_os_error())),
    }
}

fn reap_or_kill(mut child: Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// CPU time of all threads of `pid` so far, in ns (schedstat: nanosecond
/// resolution, unlike the clock ticks of /proc/PID/stat).
fn task_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let t = t.ok()?;
        let s = fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Loaded BPF programs: id -> (name, runs, run time in ns).
fn bpf_programs() -> Result<BTreeMap<u64, (String, u64, u64)>> {
    let text = crate::output(Command::new("bpftool").args(["prog", "show"]))?;
    // "123: tracepoint  name sys_exit_read  tag ... run_time_ns 85146727 run_cnt 73563"
    let mut progs = BTreeMap::new();
    for line in text.lines() {
        let Some((id, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(id) = id.trim().parse::<u64>() else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let name = after("name").unwrap_or("?").to_string();
        let ns = after("run_time_ns")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let runs = after("run_cnt").and_then(|v| v.parse().ok()).unwrap_or(0);
        progs.insert(id, (name, runs, ns));
    }
    Ok(progs)
}

/// "12.3 MiB (anon 4.0, file 8.3)" from /proc/PID/status.
fn rss_breakdown(pid: u32) -> String {
    let mib = |f: &str| vm_kib(pid, f).map_or(0.0, |k| k as f64 / 1024.0);
    format!(
        "{:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1})",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:"),
        mib("RssShmem:")
    )
}

fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn wait_for<T>(limit: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------- parsing

/// "load: metadata 8863 ops in 1.000 s: 8861.0 ops/s (0 errors)"
fn parse_load(text: &str) -> Result<(f64, f64, u64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("load:"))
        .ok_or_else(|| format!("no result line from fusetrace load: {text}"))?;
    let rate = line
        .split(": ")
        .nth(2)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot parse `{line}`"))?;
    let secs = line
        .split(" ops in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let errors = number_after(line, "(").unwrap_or(0);
    Ok((rate, secs, errors))
}

fn number_after(text: &str, marker: &str) -> Option<u64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn number_before(text: &str, marker: &str) -> Option<u64> {
    let head = &text[..text.find(marker)?];
    let digits: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// The number after `"key":` in a JSON text (first occurrence).
fn json_f64(text: &str, key: &str) -> Option<f64> {
    let marker = format!("\"{key}\":");
    let rest = &text[text.find(&marker)? + marker.len()..];
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
        .collect();
    num.parse().ok()
}

fn json_u64(text: &str, key: &str) -> Option<u64> {
    json_f64(text, key).map(|v| v as u64)
}

// ---------------------------------------------------------------- report

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn render_workload(
    target: Target,
    w: &Workload,
    samples: &BTreeMap<Variant, Vec<Sample>>,
) -> String {
    let mut out = String::new();
    let base = samples
        .get(&Variant::Untraced)
        .and_then(|s| median(s.iter().map(|x| x.ops_per_sec).collect()))
        .unwrap_or(0.0);
    let _ = writeln!(out, "\n### {}: {} ({})\n", target.name(), w.name, w.what);
    let _ = writeln!(
        out,
        "| variant | ops/s (median) | vs untraced | traced req/s | events/s | ring buffer drops | tracer CPU per request | tracer CPU share | tracer peak RSS |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (variant, runs) in samples {
        let ops = median(runs.iter().map(|s| s.ops_per_sec).collect()).unwrap_or(0.0);
        let ratio = if base > 0.0 { ops / base } else { 0.0 };
        let per_sec = |f: &dyn Fn(&Sample) -> Option<u64>| {
            median(
                runs.iter()
                    .filter_map(|s| f(s).map(|v| v as f64 / s.load_secs.max(1e-3)))
                    .collect(),
            )
        };
        let req_s = per_sec(&|s| s.requests);
        // In-kernel `stats` passes no events to user space.
        let ev_s = per_sec(&|s| s.events).filter(|v| *v > 0.0);
        let drops: Option<u64> = runs.iter().map(|s| s.ring_drops).sum();
        let cpu_per_req = median(
            runs.iter()
                .filter_map(|s| match (s.cpu_ns, s.requests) {
                    (Some(c), Some(r)) if r > 0 => Some(c as f64 / r as f64),
                    _ => None,
                })
                .collect(),
        );
        let cpu_share = median(
            runs.iter()
                .filter_map(|s| s.cpu_ns.map(|c| c as f64 / 1e9 / s.load_secs.max(1e-3)))
                .collect(),
        );
        let rss = median(
            runs.iter()
                .filter_map(|s| s.peak_rss_kib.map(|k| k as f64))
                .collect(),
        );
        let errors: u64 = runs.iter().map(|s| s.load_errors).sum();
        let dash = || "-".to_string();
        let _ = writeln!(
            out,
            "| {}{} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            variant.name(),
            if errors > 0 {
                format!(" ({errors} load errors)")
            } else {
                String::new()
            },
            ops,
            if *variant == Variant::Untraced {
                "1".to_string()
            } else {
                format!("{ratio:.3}")
            },
            req_s.map(|v| format!("{v:.0}")).unwrap_or_else(dash),
            ev_s.map(|v| format!("{v:.0}")).unwrap_or_else(dash),
            drops.map(|v| v.to_string()).unwrap_or_else(dash),
            cpu_per_req
                .map(|v| format!("{:.2} µs", v / 1000.0))
                .unwrap_or_else(dash),
            cpu_share
                .map(|v| format!("{:.1}%", v * 100.0))
                .unwrap_or_else(dash),
            rss.map(|v| format!("{:.1} MiB", v / 1024.0))
                .unwrap_or_else(dash),
        );
    }
    let overhead = |v: Variant| {
        samples
            .get(&v)
            .and_then(|s| median(s.iter().map(|x| x.ops_per_sec).collect()))
            .map(|ops| 1.0 - ops / base)
    };
    if let (Some(stats), Some(bpf)) = (overhead(Variant::Stats), overhead(Variant::Bpftrace)) {
        let _ = write!(
            out,
            "\noverhead: `stats` {:.1}%, bpftrace {:.1}%",
            stats * 100.0,
            bpf * 100.0
        );
        if let Some(stages) = overhead(Variant::StatsStages) {
            let _ = write!(out, ", `stats --stages` {:.1}%", stages * 100.0);
        }
        out.push('\n');
    }
    out
}

fn machine_line() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = crate::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let date =
        crate::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let bpftrace = crate::output(Command::new("bpftrace").arg("--version")).unwrap_or_default();
    format!(
        "Machine: {cpu}, {cpus} CPUs, {mem_gib:.0} GiB; kernel {kernel}; {date}; load average at start {}; {bpftrace}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

// ---------------------------------------------------------------- stall helper

/// `xtask bench --stall-helper FD N`: N threads, each blocked in one
/// 1-byte pread() of the inherited FUSE file FD until the connection
/// answers or aborts. Threads get 16 KiB stacks and no guard page (one
/// mapping each), so a process can hold tens of thousands of them.
fn stall_helper(args: &[String]) -> Result<()> {
    let [fd, n] = args else {
        return Err("usage: xtask bench --stall-helper FD THREADS".into());
    };
    let fd: libc::c_int = fd.parse().map_err(|_| "FD must be a number")?;
    let n: usize = n.parse().map_err(|_| "THREADS must be a number")?;
    extern "C" fn blocked_read(arg: *mut libc::c_void) -> *mut libc::c_void {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local buffer.
        unsafe { libc::pread(arg as libc::c_int, (&mut byte as *mut u8).cast(), 1, 0) };
        std::ptr::null_mut()
    }
    let mut threads = Vec::with_capacity(n);
    // SAFETY: plain pthread calls with a valid, initialised attribute.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 16 * 1024);
        libc::pthread_attr_setguardsize(&mut attr, 0);
        for i in 0..n {
            let mut t: libc::pthread_t = 0;
            let rc = libc::pthread_create(
                &mut t,
                &attr,
                blocked_read,
                fd as usize as *mut libc::c_void,
            );
            if rc != 0 {
                return Err(format!(
                    "pthread_create failed after {i} threads: {}",
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
            threads.push(t);
        }
        libc::pthread_attr_destroy(&mut attr);
        for t in threads {
            libc::pthread_join(t, std::ptr::null_mut());
        }
    }
    Ok(())
}

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
