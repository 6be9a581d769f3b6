//! The interleaved rounds: mounts a target, runs each variant in turn under load, collects samples; the kernel-cost, consumer and in-flight runs.

use super::*;

pub(crate) struct Bench {
    pub(crate) fusetrace: PathBuf,
    pub(crate) script: PathBuf,
    /// The four-point script (per-stage latency).
    pub(crate) stages_script: PathBuf,
    /// The syscall tracepoints' floor (`Variant::SyscallFloor`).
    pub(crate) floor_script: PathBuf,
    pub(crate) has_top: bool,
    /// `stats --stages` exists (then plain `stats` counts in the kernel).
    pub(crate) has_stages: bool,
    pub(crate) has_from_events: bool,
    pub(crate) has_serve: bool,
    /// `--no-paths` exists (then `trace` reads file names).
    pub(crate) has_no_paths: bool,
    pub(crate) scratch: PathBuf,
}

impl Bench {
    pub(crate) fn new() -> Result<Bench> {
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
        let has_serve = Command::new(&fusetrace)
            .args(["serve", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        let scratch = std::env::temp_dir().join(format!("fusetrace-bench-{}", std::process::id()));
        fs::create_dir_all(&scratch)
            .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
        Ok(Bench {
            fusetrace,
            script: root().join("xtask/bench/fuse-latency.bt"),
            stages_script: root().join("xtask/bench/fuse-stages.bt"),
            floor_script: root().join("xtask/bench/syscall-floor.bt"),
            has_top: help.contains("--headless"),
            has_stages: stats_help.contains("--stages"),
            has_from_events: stats_help.contains("--from-events"),
            has_serve,
            has_no_paths: stats_help.contains("--no-paths"),
            scratch,
        })
    }

    pub(crate) fn variants(&self) -> Vec<Variant> {
        let mut v = vec![Variant::Untraced, Variant::Stats];
        if self.has_stages {
            v.push(Variant::StatsStages);
        }
        if self.has_from_events {
            v.push(Variant::StatsEvents);
        }
        v.push(Variant::Trace);
        if self.has_no_paths {
            v.push(Variant::TraceNoPaths);
        }
        if self.has_top {
            v.push(Variant::Top);
        }
        if self.has_serve {
            v.push(Variant::Serve);
        }
        v.push(Variant::Diagnose);
        v.push(Variant::Bpftrace);
        v.push(Variant::Bpftrace4);
        v.push(Variant::SyscallFloor);
        v
    }

    pub(crate) fn run(&self, opts: &Options) -> Result<()> {
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
            if !opts.export.is_zero() {
                let e = self.export(opts.export)?;
                eprint!("{e}");
                report.push_str(&e);
            }
            if opts.serve_mounts > 0 {
                let s = self.serve_scale(opts.serve_mounts)?;
                eprint!("{s}");
                report.push_str(&s);
            }
            if !opts.serve_churn.is_zero() {
                let s = self.serve_churn(opts.serve_churn)?;
                eprint!("{s}");
                report.push_str(&s);
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
    pub(crate) fn workload(
        &self,
        target: Target,
        w: &Workload,
        opts: &Options,
    ) -> Result<BTreeMap<Variant, Vec<Sample>>> {
        eprintln!("xtask: bench: {} on the {}", w.name, target.name());
        let _uring = match target {
            Target::ReferenceUring => Some(UringParam::enable()?),
            _ => None,
        };
        let mount = Mount::new(self, target, w)?;
        let mut samples: BTreeMap<Variant, Vec<Sample>> = BTreeMap::new();
        for round in 0..opts.rounds {
            for variant in self
                .variants()
                .into_iter()
                .filter(|v| opts.variants.is_empty() || opts.variants.iter().any(|k| k == v.key()))
            {
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
    pub(crate) fn one(
        &self,
        variant: Variant,
        mount: &Mount,
        w: &Workload,
        d: Duration,
    ) -> Result<Sample> {
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
        // serve: one scrape, as Prometheus would make, for its count.
        let scraped = match (&tracer, variant) {
            (Some(t), Variant::Serve) => Some(t.scraped_requests()?),
            _ => None,
        };
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
            s.requests = end.requests.or(scraped);
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
    /// each BPF program (`kernel.bpf_stats_enabled`), for every tracer
    /// with a request count (the `stats` family, `trace`, `top`, both
    /// bpftrace scripts) on the metadata storm. A separate run: the
    /// accounting itself costs two clock reads per program run.
    pub(crate) fn kernel_cost(&self, opts: &Options) -> Result<String> {
        // The reference daemon on each transport asked for (bindfs runs the
        // same programs as the reference daemon on /dev/fuse).
        let mut targets: Vec<Target> = opts
            .targets
            .iter()
            .copied()
            .filter(|t| *t != Target::Bindfs)
            .collect();
        if targets.is_empty() {
            targets.push(Target::Reference);
        }
        let mut out = String::new();
        for (i, target) in targets.into_iter().enumerate() {
            out.push_str(&self.kernel_cost_on(target, opts, i == 0)?);
        }
        Ok(out)
    }

    fn kernel_cost_on(&self, target: Target, opts: &Options, with_tax: bool) -> Result<String> {
        eprintln!(
            "xtask: bench: BPF program run time (kernel.bpf_stats_enabled), {}",
            target.name()
        );
        let w = WORKLOADS.iter().find(|w| w.name == "metadata").unwrap();
        let mut out = format!(
            "\n### Kernel side: BPF run time per traced request ({}, metadata storm)\n\n\
             Measured in a separate run with `kernel.bpf_stats_enabled=1` (which itself adds two clock reads \
             per program run), from `bpftool prog show`, {} interleaved rounds, medians.\n\n\
             | tracer | program | runs per request | ns per run | ns per request |\n| --- | --- | ---: | ---: | ---: |\n",
            target.name(),
            opts.rounds
        );
        let _uring = match target {
            Target::ReferenceUring => Some(UringParam::enable()?),
            _ => None,
        };
        let mount = Mount::new(self, target, w)?;
        let result = (|| -> Result<()> {
            let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", 1)?;
            let mut variants = vec![Variant::Stats];
            if self.has_stages {
                variants.push(Variant::StatsStages);
            }
            if self.has_from_events {
                variants.push(Variant::StatsEvents);
            }
            variants.push(Variant::Trace);
            if self.has_top {
                variants.push(Variant::Top);
            }
            variants.push(Variant::Bpftrace);
            variants.push(Variant::Bpftrace4);
            // Interleaved rounds, like the throughput runs: the machine's
            // drift hits every tracer alike; each figure is the median of
            // the rounds.
            // (runs per request, ns per run, ns per request) per round.
            type Rounds = Vec<(f64, f64, f64)>;
            let mut samples: BTreeMap<(usize, String), Rounds> = BTreeMap::new();
            let mut totals: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            for _ in 0..opts.rounds {
                for (v, &variant) in variants.iter().enumerate() {
                    let before = bpf_programs()?;
                    let tracer = Tracer::start(self, variant, &mount)?;
                    let load = Command::new(&self.fusetrace)
                        .arg("load")
                        .arg(&mount.dir)
                        .args(w.load)
                        .arg("--duration")
                        .arg(format!("{}ms", opts.duration.as_millis()))
                        .output();
                    let held = held_programs(tracer.pid());
                    let after = bpf_programs();
                    let end = tracer.stop()?;
                    load.map_err(|e| format!("fusetrace load: {e}"))?;
                    let requests = end.requests.unwrap_or(0).max(1) as f64;
                    let mut total = 0.0;
                    for (id, (name, runs, ns)) in after? {
                        // Only the tracer's own (when its fds could be read).
                        let foreign = !held.is_empty() && !held.contains(&id);
                        if before.contains_key(&id) || runs == 0 || foreign {
                            continue;
                        }
                        let per_request = ns as f64 / requests;
                        total += per_request;
                        samples.entry((v, name)).or_default().push((
                            runs as f64 / requests,
                            ns as f64 / runs as f64,
                            per_request,
                        ));
                    }
                    totals.entry(v).or_default().push(total);
                }
            }
            let med = |xs: Vec<f64>| median(xs).unwrap_or(0.0);
            for (v, &variant) in variants.iter().enumerate() {
                for ((_, name), runs) in samples.range((v, String::new())..(v + 1, String::new())) {
                    let _ = writeln!(
                        out,
                        "| {} | {name} | {:.2} | {:.0} | {:.0} |",
                        variant.name(),
                        med(runs.iter().map(|r| r.0).collect()),
                        med(runs.iter().map(|r| r.1).collect()),
                        med(runs.iter().map(|r| r.2).collect()),
                    );
                }
                let total = med(totals.get(&v).cloned().unwrap_or_default());
                let _ = writeln!(out, "| {} | **all** | | | **{total:.0}** |", variant.name());
            }
            // Each tracer against the send/end script, round by round.
            if let Some(anchor) = variants.iter().position(|v| *v == Variant::Bpftrace) {
                let _ = writeln!(
                    out,
                    "\nBPF time per request against the bpftrace send/end script's in the same round (median of {} rounds):\n",
                    opts.rounds
                );
                for (v, &variant) in variants.iter().enumerate() {
                    let ratios: Vec<f64> = totals[&v]
                        .iter()
                        .zip(&totals[&anchor])
                        .filter(|(_, a)| **a > 0.0)
                        .map(|(t, a)| t / a)
                        .collect();
                    let _ = writeln!(out, "- {}: {:.2}x", variant.name(), med(ratios));
                }
            }
            drop(_stats);
            if with_tax {
                out.push_str(&self.syscall_tax(&mount, w, opts)?);
            }
            Ok(())
        })();
        mount.stop()?;
        result.map(|()| out)
    }

    /// What any syscall tracepoint costs by being enabled: every task then
    /// takes the traced syscall path, for every syscall. Measured with a
    /// bpftrace program on a syscall nobody makes, interleaved with
    /// untraced runs.
    pub(crate) fn syscall_tax(
        &self,
        mount: &Mount,
        w: &Workload,
        opts: &Options,
    ) -> Result<String> {
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

    pub(crate) fn consumer(&self) -> Result<String> {
        eprintln!("xtask: bench: consumer (decode + tracker + sink, one core)");
        let mut out = String::from(
            "\n### Consumer: decode + tracker + sink on one core (`fusetrace bench-consumer`)\n\n\
             | events | sink | M events/s (median of 5) | ns/event |\n| --- | --- | ---: | ---: |\n",
        );
        let recording = self.scratch.join("metadata.ftr");
        self.record_metadata(&recording, Duration::from_secs(1))?;
        for source in [None, Some(&recording)] {
            for sink in ["stats", "trace", "trace-json"] {
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

    /// Records `duration` of the metadata storm on the reference daemon.
    pub(crate) fn record_metadata(&self, file: &Path, duration: Duration) -> Result<()> {
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
                .arg("--duration")
                .arg(format!("{}ms", duration.as_millis()))
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
    pub(crate) fn in_flight(&self, n: u64) -> Result<String> {
        let mut out = String::new();
        let mut tracers: Vec<&[&str]> = vec![&["stats", "--format", "json"]];
        if self.has_stages {
            tracers.push(&["stats", "--stages", "--format", "json"]);
        }
        if self.has_from_events {
            tracers.push(&["stats", "--stages", "--from-events", "--format", "json"]);
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
    pub(crate) fn in_flight_with(&self, n: u64, args: &[&str]) -> Result<String> {
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
