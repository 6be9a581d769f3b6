//! `cargo xtask bench --soak DURATION`: fusetrace left running as on a
//! production host. `fusetrace serve` (scraped every 15 s, as Prometheus
//! would) and `fusetrace top --headless` run together for DURATION while
//! the mixed load runs on a reference daemon without pause and a second
//! mount comes and goes every minute (mounted, loaded for 20 s,
//! unmounted). Every minute each fusetrace process's RSS and CPU time and
//! the kernel maps' occupancy (serve's `fusetrace_kernel_map_entries`)
//! go into a CSV row, with the load average: other work on the machine
//! shows there. At the end: every mount's daemon count against serve's,
//! the maps once idle, and whether anything was left behind (programs,
//! pins, mounts, series).

use std::{
    collections::BTreeSet,
    io::Write as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use super::{soak_data::*, *};

/// How often serve is scraped (Prometheus' usual interval).
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// How often the processes and maps are sampled (a CSV row each).
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// A second mount comes this often, and lives under load this long.
const CHURN_EVERY: Duration = Duration::from_secs(60);
const CHURN_LOAD: Duration = Duration::from_secs(20);
/// serve's grace for an unmounted mount's series: the end waits it out
/// to see the series go.
const GRACE: Duration = Duration::from_secs(30);
/// serve answers a scrape within this long of the last from its cache;
/// a count read after something ended must be a fresh one.
const SERVE_REUSE: Duration = Duration::from_millis(250);

/// What the soak's threads share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    scrapes_ok: AtomicU64,
    scrapes_failed: AtomicU64,
    mounts_churned: AtomicU64,
    load_ops: AtomicU64,
    load_errors: AtomicU64,
    /// Churned mounts whose served and counted requests agreed, and the
    /// requests they served; the ones that did not, with the difference.
    churn_exact: AtomicU64,
    churn_requests: AtomicU64,
    /// (mount point, what went wrong) per churned mount not counted exactly.
    churn_gaps: Mutex<Vec<(String, String)>>,
    /// The first error of a load or churn thread (then the soak stops).
    failed: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        eprintln!("xtask: bench: soak: {e}");
        self.failed.lock().unwrap().get_or_insert(e);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps until `deadline`, or less if the soak stops.
    fn sleep_until(&self, deadline: Instant) {
        while !self.stopped() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200).min(deadline - Instant::now()));
        }
    }
}

/// One GET of serve's /metrics, timed.
fn scrape(addr: &str, shared: &Shared) -> Option<(Vec<Series>, Duration)> {
    let started = Instant::now();
    match http_get(addr, "/metrics") {
        Ok(body) => {
            shared.scrapes_ok.fetch_add(1, Ordering::SeqCst);
            Some((parse_metrics(&body), started.elapsed()))
        }
        Err(e) => {
            shared.scrapes_failed.fetch_add(1, Ordering::SeqCst);
            eprintln!("xtask: bench: soak: scrape failed: {e}");
            None
        }
    }
}

/// A fresh scrape (past serve's reuse of its last one), for a count.
fn fresh_scrape(addr: &str) -> Result<Vec<Series>> {
    thread::sleep(SERVE_REUSE);
    Ok(parse_metrics(&http_get(addr, "/metrics")?))
}

/// A reference daemon at `dir` that writes what it served to `counts`
/// when it exits.
fn counted_daemon(bench: &Bench, dir: &Path, counts: &Path) -> Result<Mount> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut cmd = Command::new(&bench.fusetrace);
    cmd.arg("daemon").arg(dir).arg("--counts-file").arg(counts);
    Mount::reference(cmd, dir)
}

/// Stops the daemon, then compares its counts with serve's for its
/// mount (serve keeps an unmounted mount's series for the grace).
fn stop_and_compare(
    mount: Mount,
    counts: &Path,
    addr: &str,
) -> Result<std::result::Result<u64, String>> {
    let dir = mount.dir.to_string_lossy().into_owned();
    mount.stop()?;
    let text = fs::read_to_string(counts)
        .map_err(|e| format!("the daemon's counts file {}: {e}", counts.display()))?;
    let served = parse_counts(&text)?;
    let (counted, enosys) = mount_counts(&fresh_scrape(addr)?, &dir);
    Ok(compare_counts(&served, &counted, &enosys))
}

/// `fusetrace load DIR --workload mixed --duration D`: its operations and errors.
fn mixed_load(bench: &Bench, dir: &Path, d: Duration) -> Result<(u64, u64)> {
    let out = crate::output(
        Command::new(&bench.fusetrace)
            .arg("load")
            .arg(dir)
            .args(["--workload", "mixed", "--duration"])
            .arg(format!("{}ms", d.as_millis())),
    )?;
    let line = out
        .lines()
        .find(|l| l.starts_with("load:"))
        .ok_or_else(|| format!("no result line from fusetrace load: {out}"))?;
    let ops = number_before(line, " ops in").ok_or_else(|| format!("cannot parse `{line}`"))?;
    let (_, _, errors) = parse_load(line)?;
    Ok((ops, errors))
}

/// The BPF programs the processes `pids` hold (a program's or a link's
/// descriptor: its fdinfo names the program). Read from /proc rather than
/// from `bpftool prog show`'s holders, which not every bpftool lists.
fn programs_of(pids: &[u32]) -> BTreeSet<u64> {
    pids.iter()
        .flat_map(|pid| {
            fs::read_dir(format!("/proc/{pid}/fdinfo"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter_map(|e| fdinfo_prog_id(&fs::read_to_string(e.path()).ok()?))
        .collect()
}

/// Every path under /sys/fs/bpf (pinned objects).
fn bpf_pins() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            }
            out.insert(p);
        }
    }
    let mut out = BTreeSet::new();
    walk(Path::new("/sys/fs/bpf"), &mut out);
    out
}

/// A process's RSS (KiB) and CPU time (s) now.
fn rss_and_cpu(pid: u32) -> Option<(u64, f64)> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some((
        status_kib(&status, "VmRSS:")?,
        stat_cpu_ticks(&stat)? as f64 / ticks,
    ))
}

/// The CSV, written a row at a time (flushed: a soak stopped early keeps
/// its rows).
struct Csv {
    file: fs::File,
    rows: Vec<Row>,
}

impl Csv {
    fn create(path: &Path) -> Result<Csv> {
        let mut file =
            fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        writeln!(file, "{}", csv_header()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Csv {
            file,
            rows: Vec::new(),
        })
    }

    fn push(&mut self, row: Row) -> Result<()> {
        writeln!(self.file, "{}", csv_row(&row))
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("writing the soak's CSV: {e}"))?;
        self.rows.push(row);
        Ok(())
    }
}

/// The soak's last scrape, for the sampler.
#[derive(Default)]
struct LastScrape {
    maps: BTreeMap<String, (u64, u64)>,
    requests: u64,
    wall: Vec<Duration>,
}

impl Bench {
    /// `--soak`: the soak alone; its section to `out`, its rows beside it
    /// (`out` with `.csv`).
    pub(crate) fn run_soak(&self, d: Duration, out: &Path) -> Result<()> {
        if let Some(dir) = out.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let csv = out.with_extension("csv");
        let result = self.soak(d, &csv);
        let _ = fs::remove_dir_all(&self.scratch);
        let report = format!("{}\n{}", machine_line(), result?);
        fs::write(out, &report).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        println!("{report}");
        eprintln!(
            "xtask: bench: soak results in {} and {}",
            out.display(),
            csv.display()
        );
        Ok(())
    }

    /// The soak (see the file's header): its Markdown section; the CSV
    /// goes to `csv`.
    pub(crate) fn soak(&self, d: Duration, csv: &Path) -> Result<String> {
        eprintln!(
            "xtask: bench: soak for {} s: rows to {}",
            d.as_secs(),
            csv.display()
        );
        let pins_before = bpf_pins();
        let mut csv = Csv::create(csv)?;
        let mut cmd = Command::new(&self.fusetrace);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--grace"])
            .arg(format!("{}s", GRACE.as_secs()))
            .stdout(Stdio::null());
        let serve = Tracer::spawn(cmd, "fusetrace: serving")?;
        let top = {
            let mut cmd = Command::new(&self.fusetrace);
            cmd.args(["top", "--headless"]).stdout(Stdio::null());
            Tracer::spawn(cmd, "tracing (")
        };
        let top = match top {
            Ok(t) => t,
            Err(e) => {
                let _ = serve.stop();
                return Err(e);
            }
        };
        let ours = programs_of(&[serve.pid(), top.pid()]);
        let result = self.soak_with(d, &serve, &top, &mut csv);
        let (serve_end, top_end) = (serve.stop(), top.stop());
        let (mut out, mine) = result?;
        let (serve_end, top_end) = (serve_end?, top_end?);
        // Left behind: programs serve and top held, pins, mounts.
        let left = bpf_programs()?
            .keys()
            .filter(|id| ours.contains(id))
            .count();
        let pins_after = bpf_pins();
        let new_pins: Vec<_> = pins_after.difference(&pins_before).collect();
        let mounted: Vec<_> = mine.iter().filter(|p| is_mounted(p)).collect();
        let _ = write!(
            out,
            "- Left behind once serve and top exited: {left} of the {} programs they held \
             (`bpftool prog show`); {} new entries under /sys/fs/bpf{}; {} of the soak's {} mounts \
             still mounted.\n\
             - top's own count at exit: {} requests (every FUSE mount on the machine, others' tests \
             included); peak RSS (wait4): serve {:.1} MiB, top {:.1} MiB.\n",
            ours.len(),
            new_pins.len(),
            if new_pins.is_empty() {
                String::new()
            } else {
                format!(" ({new_pins:?})")
            },
            mounted.len(),
            mine.len(),
            top_end.requests.map_or("?".to_string(), |n| n.to_string()),
            serve_end.peak_rss_kib as f64 / 1024.0,
            top_end.peak_rss_kib as f64 / 1024.0,
        );
        Ok(out)
    }

    /// The soak proper, serve and top running: its section so far, and
    /// the mount points it made.
    fn soak_with(
        &self,
        d: Duration,
        serve: &Tracer,
        top: &Tracer,
        csv: &mut Csv,
    ) -> Result<(String, Vec<PathBuf>)> {
        let addr = serve.serving_address()?;
        let main_dir = self.scratch.join("soak-main");
        let main_counts = self.scratch.join("soak-main.counts.json");
        let main = counted_daemon(self, &main_dir, &main_counts)?;
        let main_pid = main.daemon.as_ref().map_or(0, |c| c.id());
        let shared = Arc::new(Shared::default());
        let mut mine = vec![main_dir.clone()];
        let churned = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (mut last, result) = thread::scope(|scope| {
            // The mixed load on the main mount, without pause.
            let load = scope.spawn(|| {
                while !shared.stopped() {
                    match mixed_load(self, &main_dir, Duration::from_secs(10)) {
                        Ok((ops, errors)) => {
                            shared.load_ops.fetch_add(ops, Ordering::SeqCst);
                            shared.load_errors.fetch_add(errors, Ordering::SeqCst);
                        }
                        Err(e) => shared.fail(format!("the load on the main mount: {e}")),
                    }
                }
            });
            // A mount coming and going.
            let churn = scope.spawn(|| {
                let mut next = Instant::now() + Duration::from_secs(5);
                let mut i = 0;
                loop {
                    shared.sleep_until(next);
                    if shared.stopped() {
                        break;
                    }
                    next += CHURN_EVERY;
                    let dir = self.scratch.join(format!("soak-churn-{i}"));
                    let counts = self.scratch.join(format!("soak-churn-{i}.counts.json"));
                    i += 1;
                    churned.lock().unwrap().push(dir.clone());
                    let cycle = counted_daemon(self, &dir, &counts).and_then(|m| {
                        let loaded = mixed_load(self, &dir, CHURN_LOAD);
                        let compared = stop_and_compare(m, &counts, &addr);
                        loaded?;
                        compared
                    });
                    shared.mounts_churned.fetch_add(1, Ordering::SeqCst);
                    match cycle {
                        Ok(Ok(n)) => {
                            shared.churn_exact.fetch_add(1, Ordering::SeqCst);
                            shared.churn_requests.fetch_add(n, Ordering::SeqCst);
                        }
                        Ok(Err(gap)) => shared
                            .churn_gaps
                            .lock()
                            .unwrap()
                            .push((dir.display().to_string(), format!("counts differ: {gap}"))),
                        // Noted, and the soak goes on: a mount that would
                        // not come up under load is a finding, not the end.
                        Err(e) => {
                            eprintln!("xtask: bench: soak: {}: {e}", dir.display());
                            shared
                                .churn_gaps
                                .lock()
                                .unwrap()
                                .push((dir.display().to_string(), format!("failed: {e}")))
                        }
                    }
                }
            });
            // Scrapes every 15 s; a row per process every minute.
            let mut last = LastScrape::default();
            let result = (|| -> Result<()> {
                let mut next_scrape = started;
                let mut next_sample = started;
                while !shared.stopped() {
                    let now = Instant::now();
                    if now >= next_scrape {
                        next_scrape += SCRAPE_EVERY;
                        if let Some((series, wall)) = scrape(&addr, &shared) {
                            last.maps = map_occupancy(&series);
                            last.requests = requests_counted(&series);
                            last.wall.push(wall);
                        }
                    }
                    if now >= next_sample {
                        next_sample += SAMPLE_EVERY;
                        let elapsed_s = started.elapsed().as_secs();
                        self.sample(csv, elapsed_s, &shared, &last, serve, top, main_pid)?;
                        if started.elapsed() >= d {
                            break;
                        }
                    }
                    thread::sleep(
                        next_scrape
                            .min(next_sample)
                            .saturating_duration_since(Instant::now()),
                    );
                }
                Ok(())
            })();
            shared.stop.store(true, Ordering::SeqCst);
            let _ = load.join();
            let _ = churn.join();
            (last, result)
        });
        mine.extend(churned.lock().unwrap().iter().cloned());
        let main_result = stop_and_compare(main, &main_counts, &addr);
        result?;
        if let Some(e) = shared.failed.lock().unwrap().take() {
            return Err(e);
        }
        let main_result = main_result?;
        // Idle: every mount of the soak gone, their grace over.
        eprintln!("xtask: bench: soak: idle for serve's grace");
        thread::sleep(GRACE + Duration::from_secs(5));
        let idle = fresh_scrape(&addr)?;
        last.maps = map_occupancy(&idle);
        last.requests = requests_counted(&idle);
        let series_left = idle
            .iter()
            .filter(|s| {
                s.labels
                    .get("mountpoint")
                    .is_some_and(|m| mine.iter().any(|p| Path::new(m) == p))
            })
            .count();
        let elapsed_s = started.elapsed().as_secs();
        self.sample(csv, elapsed_s, &shared, &last, serve, top, 0)?;
        Ok((
            self.soak_summary(d, &shared, &csv.rows, &last, main_result, series_left),
            mine,
        ))
    }

    /// One row per process: serve, top, the main mount's daemon (`0`: gone).
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        csv: &mut Csv,
        elapsed_s: u64,
        shared: &Shared,
        last: &LastScrape,
        serve: &Tracer,
        top: &Tracer,
        daemon: u32,
    ) -> Result<()> {
        let load1 =
            loadavg1(&fs::read_to_string("/proc/loadavg").unwrap_or_default()).unwrap_or(0.0);
        let maps = MAPS.map(|m| last.maps.get(m).map(|e| e.0));
        for (process, pid) in [
            ("serve", serve.pid()),
            ("top", top.pid()),
            ("daemon", daemon),
        ] {
            let Some((rss_kib, cpu_s)) = (pid != 0).then(|| rss_and_cpu(pid)).flatten() else {
                continue;
            };
            let row = Row {
                elapsed_s,
                process: process.into(),
                pid,
                rss_kib,
                cpu_s,
                load1,
                requests_counted: last.requests,
                scrapes_ok: shared.scrapes_ok.load(Ordering::SeqCst),
                scrapes_failed: shared.scrapes_failed.load(Ordering::SeqCst),
                mounts_churned: shared.mounts_churned.load(Ordering::SeqCst),
                maps,
            };
            eprintln!("xtask: bench: soak: {}", csv_row(&row));
            csv.push(row)?;
        }
        Ok(())
    }

    fn soak_summary(
        &self,
        d: Duration,
        shared: &Shared,
        rows: &[Row],
        idle: &LastScrape,
        main: std::result::Result<u64, String>,
        series_left: usize,
    ) -> String {
        let mut out = format!(
            "\n### Soak: serve and top for {} min, the mixed load, a mount coming and going every minute\n\n\
             `fusetrace serve --grace {}s` scraped every {} s and `fusetrace top --headless` (every mount), \
             started before the mounts; the mixed workload without pause on a reference daemon \
             ({} operations, {} errors); every {} s a second reference daemon mounted, loaded with the \
             mixed workload for {} s and unmounted ({} mounts). Sampled every minute (CSV: one row per \
             process and minute).\n\n\
             | process | RSS at start | at end | max | growth per hour (whole run) | (second half) | CPU | CPU per request |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            d.as_secs() / 60,
            GRACE.as_secs(),
            SCRAPE_EVERY.as_secs(),
            shared.load_ops.load(Ordering::SeqCst),
            shared.load_errors.load(Ordering::SeqCst),
            CHURN_EVERY.as_secs(),
            CHURN_LOAD.as_secs(),
            shared.mounts_churned.load(Ordering::SeqCst),
        );
        // The soak's own requests (each mount's daemon count, which serve
        // matched); serve and top also see other mounts on the machine.
        let counted = rows.iter().map(|r| r.requests_counted).max().unwrap_or(0);
        let requests = main.as_ref().map_or(counted, |n| {
            n + shared.churn_requests.load(Ordering::SeqCst)
        });
        let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        let rate = |g: Option<f64>| g.map_or("?".into(), |g| format!("{:+.0} KiB", g));
        for p in summarize(rows) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.1} s | {} |",
                p.process,
                mib(p.rss_start_kib),
                mib(p.rss_end_kib),
                mib(p.rss_max_kib),
                rate(p.growth_kib_per_hour),
                rate(p.growth_second_half_kib_per_hour),
                p.cpu_s,
                if requests > 0 {
                    format!("{:.2} us", p.cpu_s * 1e6 / requests as f64)
                } else {
                    "?".into()
                }
            );
        }
        let _ = write!(
            out,
            "\nCPU per request: each process's CPU time over the {requests} requests the soak's daemons \
             served (serve's largest count over every mount on the machine, others' tests included: \
             {counted}).\n\n\
             | kernel map | most entries (minute samples) | at the end, idle | capacity |\n\
             | --- | ---: | ---: | ---: |\n"
        );
        let most = max_entries(rows);
        for (i, m) in MAPS.iter().enumerate() {
            let (at_end, cap) = idle.maps.get(*m).copied().unwrap_or((0, 0));
            let _ = writeln!(
                out,
                "| {m} | {} | {at_end} | {cap} |",
                most[i].map_or("?".into(), |v| v.to_string())
            );
        }
        out.push_str(
            "\nAGG_GENERATIONS is never emptied, by design: one entry per connection number used since \
             loading, and the kernel gives a new mount the lowest free number, so it stays at the most \
             mounts that were ever up at once, however many come and go.\n",
        );
        let mut walls: Vec<f64> = idle.wall.iter().map(|w| w.as_secs_f64() * 1e3).collect();
        walls.sort_by(f64::total_cmp);
        let churn_gaps = shared.churn_gaps.lock().unwrap();
        let _ = write!(
            out,
            "\n- Scrapes: {} answered, {} failed; wall per scrape median {:.1} ms, max {:.1} ms.\n\
             - Main mount: {}.\n\
             - Churned mounts: {} of {} counted exactly ({} requests){}.\n\
             - Series of the soak's mounts left after the grace: {series_left}.\n",
            shared.scrapes_ok.load(Ordering::SeqCst),
            shared.scrapes_failed.load(Ordering::SeqCst),
            walls.get(walls.len() / 2).copied().unwrap_or(0.0),
            walls.last().copied().unwrap_or(0.0),
            match main {
                Ok(n) => format!("the daemon served {n} requests, serve counted {n}: exact"),
                Err(gap) => format!("served and counted differ: {gap}"),
            },
            shared.churn_exact.load(Ordering::SeqCst),
            shared.mounts_churned.load(Ordering::SeqCst),
            shared.churn_requests.load(Ordering::SeqCst),
            if churn_gaps.is_empty() {
                String::new()
            } else {
                format!("; the others: {}", group_failures(&churn_gaps).join("; "))
            },
        );
        if let Some((lo, med, hi)) = load_range(rows) {
            let _ = writeln!(
                out,
                "- Load average (1 min) over the samples: min {lo:.2}, median {med:.2}, max {hi:.2} \
                 (2 cores; other work on the machine included)."
            );
        }
        out
    }
}
