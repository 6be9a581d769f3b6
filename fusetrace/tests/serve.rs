//! `fusetrace serve` scraped by a real Prometheus server (Debian's
//! `prometheus`), asked through its HTTP query API: counts equal what the
//! daemons served, quantiles agree with `fusetrace stats`, a held READ
//! shows in flight with a growing age and fails when its daemon dies,
//! mounts added during the run appear and removed ones retire, the kernel
//! maps' occupancy and capacity are the kernel's. Plus bad input and
//! hostile clients, straight over TCP. With README's web configuration:
//! TLS with client certificates and basic auth, scraped by Prometheus;
//! wrong passwords, clients without a certificate and plain HTTP refused;
//! SIGHUP's new password; bad files refused at start.

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
    /// `http` or `https`, as its serving line says.
    scheme: String,
    stderr: mpsc::Receiver<String>,
    stopped: bool,
    /// The in-kernel counting's links before it started: another tracer
    /// on a shared host (none in CI) may hold some.
    links_before: usize,
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
        let links_before = in_kernel_links();
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
        // Held before waiting: a serve that never says it serves is killed.
        let mut serve = Serve {
            child,
            addr: String::new(),
            scheme: String::new(),
            stderr,
            stopped: false,
            links_before,
        };
        let seen = wait_for_line_within(
            &serve.stderr,
            "fusetrace: serving http",
            "fusetrace serve",
            START_TIMEOUT,
        );
        let (scheme, rest) = seen
            .last()
            .and_then(|l| l.strip_prefix("fusetrace: serving "))
            .and_then(|rest| rest.split_once("://"))
            .expect("a URL in the serving line");
        serve.addr = rest.split('/').next().unwrap().to_string();
        serve.scheme = scheme.to_string();
        serve
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
        assert!(
            in_kernel_links() <= self.links_before,
            "in-kernel counting left attached"
        );
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
    let (status, _, body) = parse_response(&response);
    (status, body)
}

/// (status, header, body) of an HTTP response; status 0 when there is
/// none.
fn parse_response(response: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
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
        Prometheus::with_scrape_configs(
            &format!(
                "scrape_configs:\n  - job_name: fusetrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
            &[],
        )
    }

    /// `scrape_configs` (YAML, from the top level) scraped every 200 ms;
    /// `files` (name, from) copied beside the configuration, since
    /// Prometheus reads relative paths from there.
    fn with_scrape_configs(scrape_configs: &str, files: &[(&str, &Path)]) -> Prometheus {
        let dir = Scratch::new("prometheus");
        for (name, from) in files {
            fs::copy(from, dir.path().join(name)).unwrap();
        }
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!("global:\n  scrape_interval: 200ms\n  scrape_timeout: 190ms\n{scrape_configs}"),
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
        let target = format!("/api/v1/query?query={}", percent_encode(q));
        // A server that does not answer (starting, or busy under a guest's
        // emulation: no status, or 5xx) is asked again; any other refusal
        // is the query's fault. (An unanswered query read as "no series"
        // once failed a quantile check in the 6.1 guest.)
        let deadline = Instant::now() + STEP_TIMEOUT;
        let body = loop {
            let (status, body) = get(&self.addr, &target);
            match status {
                200 => break body,
                0 | 500.. if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => panic!("query {q}: HTTP {status}: {body}"),
            }
        };
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

/// Prometheus's `fusetrace_requests_total` on the mount `sel` equals what
/// its daemon `served`, opcode by opcode. (Forgets are not queued
/// requests: the send and end points never see them.)
fn assert_scraped_counts(prom: &Prometheus, served: &BTreeMap<String, u64>, sel: &str) {
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

    // Counts: equal to what each daemon served, opcode by opcode.
    for (served, sel) in [(&served_a, &sel_a), (&served_b, &sel_b)] {
        assert_scraped_counts(&prom, served, sel);
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
                .unwrap_or_else(|| {
                    panic!(
                        "no single {op} quantile; its bucket series: {:?}",
                        prom.query(&format!(
                            "fusetrace_request_duration_seconds_bucket{{{sel_a},opcode=\"{op}\"}}"
                        ))
                    )
                });
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
        map_entries(prom, "AGG_CELL_TABLE") + map_entries(prom, "AGG_HISTOGRAMS") >= series,
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
    for map in [
        "AGG_SLOTS",
        "AGG_SENT",
        "AGG_CELL_TABLE",
        "AGG_HISTOGRAMS",
        "AGG_GENERATIONS",
    ] {
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
    assert!(err.contains("needs CAP_BPF and CAP_PERFMON"), "{err}");
}

/// A test CA and what it signed, made with the openssl command: `ca.crt`,
/// `server.crt` (for 127.0.0.1) and `client.crt`, each with its `.key`.
struct Pki(Scratch);

impl Pki {
    fn new() -> Pki {
        let dir = Scratch::new("pki");
        let openssl = |args: &[&str]| {
            run_ok(Command::new("openssl").current_dir(dir.path()).args(args));
        };
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &p256,
                &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"],
                &["-subj", "/CN=fusetrace test CA"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign"],
            ]
            .concat(),
        );
        for (serial, name, extensions) in [
            (
                "1",
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("2", "client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            fs::write(dir.path().join(&ext), extensions).unwrap();
            let subject = format!("/CN=fusetrace test {name}");
            openssl(
                &[
                    &["req", "-new"][..],
                    &p256,
                    &["-keyout", &key, "-out", &csr, "-subj", &subject],
                ]
                .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ]);
        }
        Pki(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// README's first YAML block after the line holding `after`: the tests
/// run the configurations README shows.
fn readme_yaml(after: &str) -> String {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let rest = &readme[readme
        .find(after)
        .unwrap_or_else(|| panic!("README: {after}"))..];
    let start = rest.find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + rest[start..].find("```").unwrap();
    rest[start..end].to_string()
}

/// GET /metrics over TLS, trusting `pki`'s CA, with its client certificate
/// or none, and Basic credentials or none: (status, header, body), status
/// 0 when the server answered nothing (a refused handshake).
fn tls_get(
    addr: &str,
    pki: &Pki,
    client_cert: bool,
    user: Option<(&str, &str)>,
) -> (u16, String, String) {
    use base64::Engine;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use std::sync::Arc;
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.path().join("ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if client_cert {
        let chain = CertificateDer::pem_file_iter(pki.path().join("client.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(pki.path().join("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let mut request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some((user, password)) = user {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Authorization: Basic {encoded}\r\n"));
    }
    request.push_str("\r\n");
    let mut response = Vec::new();
    // A refused handshake fails the write or the read, with nothing read.
    if tls.write_all(request.as_bytes()).is_ok() {
        let _ = tls.read_to_end(&mut response);
    }
    parse_response(&response)
}

/// `web.yml` with another password for README's user.
fn with_password(web: &str, password: &str) -> String {
    let hash = bcrypt::hash(password, 4).unwrap();
    web.lines()
        .map(|l| {
            if l.trim_start().starts_with("prometheus:") {
                format!("  prometheus: '{hash}'\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

#[test]
fn tls_client_certificates_and_basic_auth_as_readme_shows() {
    let _alone = tracing_alone();
    let pki = Pki::new();
    let web_text = readme_yaml("With client certificates and a password");
    assert!(
        web_text.contains("RequireAndVerifyClientCert"),
        "{web_text}"
    );
    let web = pki.path().join("web.yml");
    fs::write(&web, &web_text).unwrap();
    let serve = Serve::start(&["--web.config.file", web.to_str().unwrap()]);
    let addr = serve.addr.clone();
    assert_eq!(serve.scheme, "https");
    let scrape_configs = readme_yaml("and Prometheus's scrape configuration for it")
        .replace("127.0.0.1:9464", &addr);
    assert!(scrape_configs.contains("scheme: https"), "{scrape_configs}");
    // Up only once a scrape over TLS, with the client certificate and the
    // password, succeeded.
    let files = ["ca.crt", "client.crt", "client.key"].map(|f| (f, pki.path().join(f)));
    let files: Vec<(&str, &Path)> = files.iter().map(|(f, p)| (*f, p.as_path())).collect();
    let prom = Prometheus::with_scrape_configs(&scrape_configs, &files);

    // Exact counts through TLS and basic auth.
    let d = Daemon::start("serve-tls", &[]);
    run_ok(Command::new(bin()).args([
        "load",
        d.path().to_str().unwrap(),
        "--workload",
        "mixed",
        "--ops",
        "1000",
    ]));
    let served = d.snapshot();
    let loaded = now_s();
    prom.scraped_after(loaded);
    assert_scraped_counts(&prom, &served, &mount_selector(&d));
    d.stop();

    let (status, _, body) = tls_get(&addr, &pki, true, Some(("prometheus", "scrape-secret")));
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE fusetrace_requests_total counter"),
        "{body}"
    );
    // Wrong password, unknown user, no credentials: 401, Basic, no body.
    for user in [
        Some(("prometheus", "scrape-secreT")),
        Some(("root", "scrape-secret")),
        None,
    ] {
        let (status, head, body) = tls_get(&addr, &pki, true, user);
        assert_eq!(status, 401, "{user:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nwww-authenticate: basic"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("\r\ncontent-length: 0"),
            "{head}"
        );
        assert_eq!(body, "", "{user:?}");
    }
    // No client certificate under RequireAndVerifyClientCert: no answer.
    let (status, head, _) = tls_get(&addr, &pki, false, Some(("prometheus", "scrape-secret")));
    assert_eq!(
        (status, head.as_str()),
        (0, ""),
        "answered without a client certificate"
    );
    // Plain HTTP to the TLS port: no HTTP answer.
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 0, "plain HTTP answered: {body}");
    assert!(!body.contains("fusetrace_"), "{body}");

    // Clients that connect and never begin, or never finish, the handshake
    // take every connection slot: a scrape gets through once their time is
    // up (the header time, 5 s), not before, and not never.
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    for s in idle.iter_mut().step_by(2) {
        // The first bytes of a ClientHello (a handshake record).
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff, 0x01]).unwrap();
    }
    let connected = Instant::now();
    let deadline = connected + STEP_TIMEOUT;
    while tls_get(&addr, &pki, true, Some(("prometheus", "scrape-secret"))).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "no scrape got through the idle clients"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        connected.elapsed() >= Duration::from_millis(4900),
        "a scrape got through after {:?}: the idle clients held no slots",
        connected.elapsed()
    );
    drop(idle);

    // SIGHUP with a new password: it works (polled, bounded), then the
    // old one does not.
    fs::write(&web, with_password(&web_text, "new-secret")).unwrap();
    signal(&serve.child, libc::SIGHUP);
    let deadline = Instant::now() + STEP_TIMEOUT;
    while tls_get(&addr, &pki, true, Some(("prometheus", "new-secret"))).0 != 200 {
        assert!(Instant::now() < deadline, "the new password never worked");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        tls_get(&addr, &pki, true, Some(("prometheus", "scrape-secret"))).0,
        401
    );
    wait_for_line_within(&serve.stderr, "fusetrace: reloaded", "serve", STEP_TIMEOUT);
    // A bad new file: one line, and the configuration in force stays.
    fs::write(
        &web,
        web_text.replace("min_version: TLS12", "min_version: TLS10"),
    )
    .unwrap();
    signal(&serve.child, libc::SIGHUP);
    let said = wait_for_line_within(
        &serve.stderr,
        "the previous web configuration stays",
        "serve",
        STEP_TIMEOUT,
    );
    let line = said.last().unwrap();
    assert!(
        line.starts_with("fusetrace: error: ") && line.contains("min_version TLS10 is too weak"),
        "{said:?}"
    );
    assert_eq!(
        tls_get(&addr, &pki, true, Some(("prometheus", "new-secret"))).0,
        200
    );
    drop(prom);
    serve.stop();
}

/// Programs of the in-kernel counting loaded now (`agg_*`).
fn in_kernel_programs() -> usize {
    bpftool_json("prog")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("agg_")))
        .count()
}

#[test]
fn bad_web_configs_are_refused_in_one_line_before_attaching() {
    let _alone = tracing_alone();
    require_root();
    let pki = Pki::new();
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let cases = [
        (
            format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            "unknown field `cipher_suites`",
        ),
        (
            format!("{tls}  min_version: TLS10\n"),
            "min_version TLS10 is too weak",
        ),
        (
            format!("{tls}  client_auth_type: Sometimes\n"),
            "unknown variant `Sometimes`",
        ),
        (
            format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
            "RequireAndVerifyClientCert needs client_ca_file",
        ),
        (
            tls.replace("server.crt", "missing.crt"),
            "missing.crt: No such file",
        ),
        // Another certificate's key.
        (tls.replace("server.key", "client.key"), "key_file"),
        (
            "basic_auth_users:\n  prometheus: scrape-secret\n".into(),
            "not a bcrypt hash",
        ),
        ("tls_server_config: [\n".into(), "bad.yml"),
    ];
    for (text, expected) in cases {
        // Another tracer on a shared host (none in CI) may hold some.
        let before = in_kernel_programs();
        let path = pki.path().join("bad.yml");
        fs::write(&path, &text).unwrap();
        let out = Command::new(bin())
            // The exporters' name for --listen.
            .args([
                "serve",
                "--web.listen-address",
                "127.0.0.1:0",
                "--web.config.file",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert_eq!(err.trim().lines().count(), 1, "{text}: {err}");
        assert!(
            err.starts_with("fusetrace: error: ") && err.contains(expected),
            "{text}: expected `{expected}` in {err}"
        );
        assert!(
            in_kernel_programs() <= before,
            "{text}: programs left loaded"
        );
    }
}
