//! `fusetrace serve` at fleet scale: the CPU one scrape costs with many
//! mounts carrying every opcode the load generator makes, and serve's RSS
//! while mounts come and go for minutes.

use super::*;

/// `fusetrace serve` started for a measurement (loopback, a free port).
fn start_serve(bench: &Bench, extra: &[&str]) -> Result<Tracer> {
    let mut cmd = Command::new(&bench.fusetrace);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null());
    Tracer::spawn(cmd, "fusetrace: serving")
}

/// A reference daemon on a fresh directory under the bench's scratch.
fn daemon(bench: &Bench, name: &str) -> Result<Mount> {
    let dir = bench.scratch.join(name);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut cmd = Command::new(&bench.fusetrace);
    cmd.arg("daemon").arg(&dir).args(["--ttl", "0s"]);
    Mount::reference(cmd, &dir)
}

fn load(bench: &Bench, dir: &Path, ops: u64) -> Result<()> {
    run(Command::new(&bench.fusetrace)
        .arg("load")
        .arg(dir)
        .args(["--workload", "mixed", "--ops", &ops.to_string()])
        .stdout(Stdio::null()))
}

fn rss_kib(pid: u32) -> u64 {
    vm_kib(pid, "VmRSS:").unwrap_or(0)
}

impl Bench {
    /// `mounts` reference daemons, each loaded with the mixed workload
    /// (every opcode it makes), then `SCRAPES` scrapes: serve's CPU time
    /// and wall time per scrape, the body's size and series.
    pub(crate) fn serve_scale(&self, mounts: usize) -> Result<String> {
        const SCRAPES: u32 = 10;
        eprintln!("xtask: bench: serve with {mounts} mounts");
        let serve = start_serve(self, &["--max-mounts", "1000"])?;
        let result = (|| -> Result<String> {
            let mut daemons = Vec::new();
            for i in 0..mounts {
                let m = daemon(self, &format!("scale-{i}"))?;
                load(self, &m.dir, 300)?;
                daemons.push(m);
            }
            let requests = serve.scraped_requests()?;
            let cpu_before = task_cpu_ns(serve.pid()).ok_or("serve's CPU time")?;
            let started = Instant::now();
            let mut body = String::new();
            for _ in 0..SCRAPES {
                // Past serve's 200 ms reuse of a collection: every scrape reads the kernel.
                thread::sleep(Duration::from_millis(250));
                body = serve.metrics()?;
            }
            let wall = started.elapsed().as_secs_f64() - 0.25 * SCRAPES as f64;
            let cpu = task_cpu_ns(serve.pid()).ok_or("serve's CPU time")? - cpu_before;
            let series = body.lines().filter(|l| !l.starts_with('#')).count();
            let rss = rss_kib(serve.pid());
            for m in daemons {
                m.stop()?;
            }
            Ok(format!(
                "\n### fusetrace serve: one scrape with {mounts} mounts\n\n\
                 Each mount a reference daemon that served 300 operations of the mixed workload \
                 ({requests} requests in all, every opcode it makes); default buckets (2 per power of two). \
                 {SCRAPES} scrapes, each past the 200 ms reuse, so each reads the kernel's maps.\n\n\
                 | CPU per scrape | wall per scrape | body | series | serve RSS |\n| ---: | ---: | ---: | ---: | ---: |\n\
                 | {:.1} ms | {:.1} ms | {:.0} KiB | {series} | {:.1} MiB |\n",
                cpu as f64 / 1e6 / SCRAPES as f64,
                wall * 1e3 / SCRAPES as f64,
                body.len() as f64 / 1024.0,
                rss as f64 / 1024.0,
            ))
        })();
        let end = serve.stop();
        let out = result?;
        end?;
        Ok(out)
    }

    /// Mount, load, unmount, again and again for `d`, with serve scraped
    /// every 15 s as Prometheus would and a 10 s grace: its RSS over time
    /// must stay flat (unmounted mounts retire, their cells leave the map).
    pub(crate) fn serve_churn(&self, d: Duration) -> Result<String> {
        const SCRAPE_EVERY: Duration = Duration::from_secs(15);
        eprintln!(
            "xtask: bench: serve under mount churn for {} s",
            d.as_secs()
        );
        let serve = start_serve(self, &["--grace", "10s"])?;
        let result = (|| -> Result<String> {
            let started = Instant::now();
            let mut rows = Vec::new();
            let mut next_scrape = started;
            let mut mounts = 0u64;
            while started.elapsed() < d {
                let m = daemon(self, "churn")?;
                load(self, &m.dir, 200)?;
                m.stop()?;
                mounts += 1;
                if Instant::now() >= next_scrape {
                    let size = serve.metrics()?.len();
                    rows.push((
                        started.elapsed().as_secs(),
                        mounts,
                        rss_kib(serve.pid()),
                        size,
                    ));
                    next_scrape += SCRAPE_EVERY;
                }
            }
            let mut out = format!(
                "\n### fusetrace serve under mount churn ({} s)\n\n\
                 A reference daemon mounted, loaded with 200 mixed operations and unmounted, over and \
                 over ({mounts} mounts); serve with `--grace 10s`, scraped every 15 s.\n\n\
                 | time (s) | mounts so far | serve RSS | scrape body |\n| ---: | ---: | ---: | ---: |\n",
                d.as_secs()
            );
            let step = (rows.len() / 10).max(1);
            for (i, (t, n, rss, size)) in rows.iter().enumerate() {
                if i % step == 0 || i + 1 == rows.len() {
                    let _ = writeln!(
                        out,
                        "| {t} | {n} | {:.1} MiB | {:.0} KiB |",
                        *rss as f64 / 1024.0,
                        *size as f64 / 1024.0
                    );
                }
            }
            Ok(out)
        })();
        let end = serve.stop();
        let out = result?;
        end?;
        Ok(out)
    }
}
