//! `fusetrace serve` scraped by a real Prometheus server (Debian's
//! `prometheus`), asked through its HTTP query API: counts equal what the
//! daemons served, quantiles agree with `fusetrace stats`, a held READ
//! shows in flight with a growing age and fails when its daemon dies,
//! mounts added during the run appear and removed ones retire, the kernel
//! maps' occupancy and capacity are the kernel's. Plus bad
//! input and hostile clients, straight over TCP.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::*;
use serde_json::Value;

/// A running `fusetrace serve`.
struct Serve {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
    stopped: bool,
}

/// A failed assertion must not leave serve running (attached).
impl Drop for Serve {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        require_root();
        let mut args: Vec<&str> = args.to_vec();
        let forced = std::env::var("FUSETRACE_TEST_BACKEND").unwrap_or_default();
        if !forced.is_empty() {
            args.extend(["--backend", forced.as_str()]);
        }
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fusetrace serve");
        let stderr = line_channel(child.stderr.take().unwrap());
        let seen = wait_for_line_within(
            &stderr,
            "fusetrace: serving http://",
            "fusetrace serve",
            START_TIMEOUT,
        );
        let addr = seen
            .last()
            .and_then(|l| l.strip_prefix("fusetrace: serving http://"))
            .and_then(|rest| rest.split('/').next())
            .expect("an address in the serving line")
            .to_string();
        Serve {
            child,
            addr,
            stderr,
            stopped: false,
        }
    }

    /// SIGTERM: it must exit 0, free its port and leave no program of
    /// its own attached.
    fn stop(mut self) {
        signal(&self.child, libc::SIGTERM);
        let status = self.child.wait().unwrap();
        self.stopped = true;
        let rest: Vec<String> = self.stderr.try_iter().collect();
        assert!(status.success(), "serve exited with {status}: {rest:?}");
        TcpListener::bind(&self.addr).expect("serve's port is free after it exited");
        assert_eq!(in_kernel_links(), 0, "in-kernel counting left attached");
    }
}

/// BPF links of the in-kernel counting programs (`agg_*`): the tests of
/// this binary run one tracer at a time, so none once it stopped.
fn in_kernel_links() -> usize {
    let ours: Vec<u64> = bpftool_json("prog")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("agg_")))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    bpftool_json("link")
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ours.contains(&id)))
        .count()
}

/// One HTTP/1.0 exchange: (status, body); `raw` is sent as it is.
fn exchange(addr: &str, raw: &[u8]) -> (u16, String) {
    // Refused (a server still starting): status 0.
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    s.write_all(raw).unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: &str, target: &str) -> (u16, String) {
    exchange(
        addr,
        format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Prometheus server on loopback, scraping `target` every 200 ms, with
/// its own configuration and storage in a scratch directory.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: Scratch,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = Scratch::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 190ms\n\
                 scrape_configs:\n  - job_name: fusetrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port: bound, then released for Prometheus to take.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus (Debian's `prometheus` package)");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        p.until("Prometheus scraping fusetrace", || {
            let r = p.query("up{job=\"fusetrace\"} == 1");
            (!r.is_empty()).then_some(())
        });
        p
    }

    /// An instant query: (labels, value) per series.
    fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let (status, body) = get(
            &self.addr,
            &format!("/api/v1/query?query={}", percent_encode(q)),
        );
        if status != 200 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&body).expect("query API JSON");
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let labels = r["metric"]
                            .as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                            .collect();
                        let value = r["value"][1].as_str().unwrap().parse().unwrap();
                        (labels, value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single value of a query, if there is one.
    fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        (r.len() == 1).then(|| r[0].1)
    }

    /// Polls `check` until it gives an answer; fails after STEP_TIMEOUT.
    fn until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(t) = check() {
                return t;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a scrape that began after `t` (wall clock, s): every
    /// count up to `t` is in Prometheus then.
    fn scraped_after(&self, t: f64) {
        // fusetrace reuses a collection for 200 ms; a scrape after t + 0.25 s is fresh.
        self.until("a scrape after the load", || {
            self.value("max(timestamp(fusetrace_build_info))")
                .filter(|ts| *ts > t + 0.25)
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount_selector(daemon: &Daemon) -> String {
    format!("mountpoint=\"{}\"", daemon.path().display())
}

#[test]
fn prometheus_scrapes_exact_counts_quantiles_in_flight_and_mount_churn() {
    let _alone = tracing_alone();
    let serve = Serve::start(&["--grace", "1s"]);
    let prom = Prometheus::start(&serve.addr);

    // Mounted after serve began: every request of theirs is counted.
    let a = Daemon::start("serve-a", &["--threads", "2", "--latency", "READ=2ms"]);
    let b = Daemon::start("serve-b", &[]);
    let sel_a = mount_selector(&a);
    let sel_b = mount_selector(&b);
    let stats = Tracer::start(&[
        "stats",
        "--format",
        "json",
        "--mount",
        a.path().to_str().unwrap(),
    ]);
    for (d, workload) in [(&a, "mixed"), (&b, "metadata")] {
        run_ok(Command::new(bin()).args([
            "load",
            d.path().to_str().unwrap(),
            "--workload",
            workload,
            "--ops",
            "3000",
            "--jobs",
            "2",
        ]));
    }
    let served_a = a.snapshot();
    let served_b = b.snapshot();
    let loaded = now_s();
    let stats = stats.stop();
    prom.scraped_after(loaded);

    // Counts: equal to what each daemon served, opcode by opcode. (Forgets
    // are not queued requests: the send and end points never see them.)
    for (served, sel) in [(&served_a, &sel_a), (&served_b, &sel_b)] {
        let expected: BTreeMap<String, f64> = served
            .iter()
            .filter(|(op, n)| !matches!(op.as_str(), "FORGET" | "BATCH_FORGET") && **n > 0)
            .map(|(op, n)| (op.clone(), *n as f64))
            .collect();
        let mut got: BTreeMap<String, f64> = prom
            .query(&format!("fusetrace_requests_total{{{sel}}}"))
            .into_iter()
            .map(|(l, v)| (l["opcode"].clone(), v))
            .collect();
        // Opcodes the daemon does not implement (STATX) are answered ENOSYS
        // by its library and not counted by it: each must have failed so.
        for (op, n) in got.clone() {
            if !expected.contains_key(&op) {
                let enosys = prom.value(&format!(
                    "fusetrace_request_errors_total{{{sel},opcode=\"{op}\",errno=\"ENOSYS\"}}"
                ));
                assert_eq!(enosys, Some(n), "{op}: counted but not served");
                got.remove(&op);
            }
        }
        assert_eq!(got, expected, "scraped (left) vs served (right) on {sel}");
        // The histogram's count is the same number.
        let counts = prom.value(&format!(
            "sum(fusetrace_request_duration_seconds_count{{{sel}}}) - sum(fusetrace_request_errors_total{{{sel},errno=\"ENOSYS\"}} or vector(0))"
        ));
        assert_eq!(counts, Some(expected.values().sum()), "{sel}");
    }
    let labels = &prom.query(&format!(
        "fusetrace_requests_total{{{sel_a},opcode=\"READ\"}}"
    ))[0]
        .0;
    assert_eq!(labels["fstype"], "fuse.fusetrace", "{labels:?}");
    assert_eq!(labels["daemon"], "fusetrace", "{labels:?}");

    // Quantiles: histogram_quantile over the exposed buckets agrees with
    // `fusetrace stats` on the same traffic within one bucket (bounds
    // 1.5x or 1.33x apart by default) plus the few microseconds between
    // the two tracers' programs on each hook.
    let by_op = whole_run_by_op(&stats);
    let mut compared = 0;
    for (op, row) in &by_op {
        if row["count"].as_u64().unwrap() < 300 {
            continue;
        }
        for (q, field) in [(0.5, "p50_ns"), (0.99, "p99_ns")] {
            let ours = stage(row, "total")[field].as_u64().unwrap() as f64 / 1e9;
            let scraped = prom
                .value(&format!(
                    "histogram_quantile({q}, fusetrace_request_duration_seconds_bucket{{{sel_a},opcode=\"{op}\"}})"
                ))
                .unwrap_or_else(|| panic!("no {op} histogram"));
            assert!(
                scraped <= ours * 1.5 + 20e-6 && ours <= scraped * 1.5 + 20e-6,
                "{op} q{q}: histogram_quantile {scraped} s vs stats {ours} s"
            );
            compared += 1;
        }
    }
    assert!(compared >= 4, "too few opcodes to compare: {by_op:?}");
    // The injected 2 ms shows in READ's median.
    let read_p50 = prom
        .value(&format!(
            "histogram_quantile(0.5, fusetrace_request_duration_seconds_bucket{{{sel_a},opcode=\"READ\"}})"
        ))
        .unwrap();
    assert!(
        read_p50 >= 0.0015,
        "READ median {read_p50} s with 2 ms injected"
    );

    // A mount removed during the run retires after the grace period; the
    // others stay.
    b.stop();
    prom.until("the removed mount's series to retire", || {
        prom.query(&format!("fusetrace_requests_total{{{sel_b}}}"))
            .is_empty()
            .then_some(())
    });
    assert!(
        !prom
            .query(&format!("fusetrace_requests_total{{{sel_a}}}"))
            .is_empty()
    );

    kernel_maps_capacity(&prom);

    // A READ held in the daemon: in flight, with an age that grows; when
    // its daemon dies, it fails (ECONNABORTED) and leaves the gauge.
    let fusectl = FuseCtl::new();
    let mut c = Daemon::start("serve-c", &["--direct-io", "--latency", "READ=1h"]);
    let sel_c = mount_selector(&c);
    let conn = connection_of(c.path());
    let _release = AbortOnDrop(fusectl.file(conn, "abort"));
    let file = c.path().join("held");
    fs::write(&file, b"x").unwrap();
    let reader = std::thread::spawn({
        let file = file.clone();
        move || fs::read(&file).map(|_| ()).map_err(|e| e.to_string())
    });
    let age = prom.until("the held READ in flight", || {
        let n = prom.value(&format!("fusetrace_requests_in_flight{{{sel_c}}}"))?;
        let age = prom.value(&format!("fusetrace_oldest_request_age_seconds{{{sel_c}}}"))?;
        (n == 1.0 && age > 0.0).then_some(age)
    });
    prom.until("the held READ's age to grow", || {
        prom.value(&format!("fusetrace_oldest_request_age_seconds{{{sel_c}}}"))
            .filter(|later| *later > age + 0.3)
    });
    kernel_maps_occupancy(&prom);
    let _ = c.child.kill();
    let _ = c.child.wait();
    assert!(reader.join().unwrap().is_err(), "the held read failed");
    prom.until("the aborted READ counted as failed", || {
        let failed = prom.value(&format!(
            "fusetrace_request_errors_total{{{sel_c},opcode=\"READ\",errno=\"ECONNABORTED\"}}"
        ))?;
        let n = prom.value(&format!("fusetrace_requests_in_flight{{{sel_c}}}"));
        (failed == 1.0 && n.is_none_or(|n| n == 0.0)).then_some(())
    });
    unmount_gone(c.path());
    let served_a_after = a.stop();
    assert_eq!(served_a_after.get("READ"), served_a.get("READ"));

    // Nothing lost on the way.
    let lost = prom.query("fusetrace_kernel_losses_total{reason!=\"unmatched_end\"} > 0");
    assert!(lost.is_empty(), "losses: {lost:?}");
    serve.stop();
}

/// The maps' occupancy gauges while a READ is held: the in-flight tables
/// hold every request in flight (the same scan as the per-mount gauges,
/// whatever else the machine's mounts are doing), the cells at least one
/// per series, a generation per mount seen. Nothing may be started here:
/// a child's exec closes its copy of the held file's descriptor, and that
/// FLUSH waits behind the held READ with the child's exec lock taken
/// (every reader of its /proc files, serve's walk too, would wait).
fn kernel_maps_occupancy(prom: &Prometheus) {
    let gap = prom
        .value(
            "sum(fusetrace_kernel_map_entries{map=~\"AGG_SLOTS|AGG_SENT\"}) - sum(fusetrace_requests_in_flight)",
        )
        .unwrap();
    assert_eq!(gap, 0.0, "in-flight tables against the in-flight gauges");
    assert!(map_entries(prom, "AGG_SLOTS") + map_entries(prom, "AGG_SENT") >= 1.0);
    let series = prom.value("count(fusetrace_requests_total)").unwrap();
    assert!(
        map_entries(prom, "AGG_HISTOGRAMS") >= series,
        "fewer cells than series"
    );
    // Mounts a, b and c were mounted while serve ran (b's number may be c's).
    assert!(map_entries(prom, "AGG_GENERATIONS") >= 2.0);
}

fn map_entries(prom: &Prometheus, map: &str) -> f64 {
    prom.value(&format!("fusetrace_kernel_map_entries{{map=\"{map}\"}}"))
        .unwrap_or_else(|| panic!("no fusetrace_kernel_map_entries for {map}"))
}

/// Each map's exported capacity is the one the kernel gives it
/// (`bpftool map show`).
fn kernel_maps_capacity(prom: &Prometheus) {
    let kernel: BTreeMap<String, f64> = bpftool_json("map")
        .iter()
        .filter_map(|m| Some((m["name"].as_str()?.to_string(), m["max_entries"].as_f64()?)))
        .collect();
    for map in ["AGG_SLOTS", "AGG_SENT", "AGG_HISTOGRAMS", "AGG_GENERATIONS"] {
        let max = prom
            .value(&format!(
                "fusetrace_kernel_map_max_entries{{map=\"{map}\"}}"
            ))
            .unwrap_or_else(|| panic!("no fusetrace_kernel_map_max_entries for {map}"));
        assert_eq!(kernel.get(map), Some(&max), "{map}'s capacity");
    }
}

/// A dead daemon's mount: its auto-unmount helper removes it; if not
/// within a few seconds, do it here. Nothing may stay mounted.
fn unmount_gone(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_mounted(path) && Instant::now() < deadline {
        std::thread::yield_now();
    }
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
    assert!(!is_mounted(path), "the dead daemon's mount was left behind");
}

#[test]
fn refuses_bad_requests_and_outlasts_idle_clients() {
    let _alone = tracing_alone();
    // --bpf-stats: the kernel counts each program's run time while serving
    // (BPF_ENABLE_STATS: undone when serve's descriptor closes; the sysctl
    // shows only its own setting).
    let serve = Serve::start(&["--bpf-stats"]);
    let addr = serve.addr.clone();
    assert_eq!(get(&addr, "/nope").0, 404);
    assert_eq!(
        exchange(
            &addr,
            b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(
        exchange(
            &addr,
            b"GET /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello"
        )
        .0,
        413
    );
    assert_eq!(exchange(&addr, b"HELLO THERE\r\n\r\n").0, 400);
    let huge = format!(
        "GET /metrics HTTP/1.0\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(exchange(&addr, huge.as_bytes()).0, 431, "oversized header");

    // Content negotiation: OpenMetrics when asked for, else text 0.0.4.
    let om = exchange(
        &addr,
        b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(om.0, 200);
    assert!(om.1.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let text = get(&addr, "/metrics");
    assert_eq!(text.0, 200);
    assert!(text.1.contains("# TYPE fusetrace_requests_total counter"));
    assert!(!text.1.contains("# EOF"));

    // Clients that connect and say nothing take every connection slot;
    // counting goes on, and once their header time is up a scrape gets
    // through with every request counted.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let d = Daemon::start("serve-idle", &[]);
    let mountpoint = format!("mountpoint=\"{}\"", d.path().display());
    run_ok(Command::new(bin()).args(["load", d.path().to_str().unwrap(), "--ops", "500"]));
    let served = d.stop();
    let deadline = Instant::now() + STEP_TIMEOUT;
    let body = loop {
        let (status, body) = get(&addr, "/metrics");
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape got through the idle clients"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let getattr = served.get("GETATTR").copied().unwrap_or(0);
    assert!(
        body.lines()
            .any(|l| l.starts_with("fusetrace_requests_total{")
                && l.contains(&mountpoint)
                && l.contains("opcode=\"GETATTR\"")
                && l.ends_with(&format!(" {getattr}"))),
        "GETATTR {getattr} not in\n{body}"
    );
    let runs: u64 = body
        .lines()
        .filter(|l| l.starts_with("fusetrace_bpf_program_runs_total{program=\"agg_ended"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // Every request of the daemon's that passed the request queue (all but
    // forgets) ran it once; other FUSE traffic may add runs.
    let ended: u64 = served
        .iter()
        .filter(|(op, _)| !matches!(op.as_str(), "FORGET" | "BATCH_FORGET"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        runs >= ended,
        "the end program ran {runs} times for {ended} requests"
    );
    drop(idle);
    serve.stop();
}

#[test]
fn bad_flags_a_taken_port_and_no_privileges_get_one_line() {
    require_root();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = run(Command::new(bin()).args(["serve", "--listen", &addr]));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
    let err = run(Command::new(bin()).args(["serve", "--listen", "localhost"]));
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains("invalid value 'localhost' for '--listen"),
        "{err}"
    );
    let err = run(Command::new(bin()).args(["serve", "--buckets-per-octave", "3"]));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("1, 2, 4, 8 or 16"), "{err}");
    let err = run(Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin()])
        .args(["serve", "--listen", "127.0.0.1:0"]));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
}
