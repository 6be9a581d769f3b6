//! Starting and stopping a tracer (fusetrace or bpftrace), its CPU time and peak RSS, BPF program statistics.

use super::*;

/// A running tracer: its stdout/stderr lines are collected as they come.
pub(crate) struct Tracer {
    pub(crate) child: Child,
    pub(crate) lines: Arc<Mutex<Vec<String>>>,
    pub(crate) stdout: Arc<Mutex<String>>,
    pub(crate) readers: Vec<thread::JoinHandle<()>>,
}

/// What a tracer said and used by the time it exited.
#[derive(Debug, Default)]
pub(crate) struct TracerEnd {
    pub(crate) requests: Option<u64>,
    pub(crate) events: Option<u64>,
    pub(crate) ring_drops: Option<u64>,
    pub(crate) in_flight: Option<u64>,
    pub(crate) peak_rss_kib: u64,
}

impl Tracer {
    pub(crate) fn start(bench: &Bench, variant: Variant, mount: &Mount) -> Result<Tracer> {
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
            Variant::StatsEvents => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["stats", "--stages", "--from-events", "--format", "json"])
                    .arg("--mount")
                    .arg(&mount.dir)
                    .stdout(Stdio::piped());
            }
            Variant::Trace => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["trace", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::null());
            }
            Variant::TraceNoPaths => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["trace", "--no-paths", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::null());
            }
            Variant::Top => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["top", "--headless", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::null());
            }
            Variant::Serve => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["serve", "--listen", "127.0.0.1:0", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::null());
            }
            Variant::Diagnose => {
                cmd = Command::new(&bench.fusetrace);
                cmd.args(["diagnose", "--format", "json", "--mount"])
                    .arg(&mount.dir)
                    .stdout(Stdio::null());
            }
            Variant::Bpftrace => {
                cmd = Command::new("bpftrace");
                cmd.arg(&bench.script)
                    .arg(mount.connection.to_string())
                    .stdout(Stdio::piped());
            }
            Variant::Bpftrace4 => {
                cmd = Command::new("bpftrace");
                cmd.arg(&bench.stages_script)
                    .arg(mount.connection.to_string())
                    .arg(mount.daemon_pid.to_string())
                    .stdout(Stdio::piped());
            }
            Variant::SyscallFloor => {
                cmd = Command::new("bpftrace");
                cmd.arg(&bench.floor_script).stdout(Stdio::piped());
            }
        }
        let ready = match variant {
            // The scripts' BEGIN line: "Attaching N probes..." comes before
            // the probes are, and a load started then fills the start map
            // with sends whose ends were never seen.
            Variant::Bpftrace | Variant::Bpftrace4 | Variant::SyscallFloor => {
                "Tracing FUSE requests"
            }
            Variant::Serve => "fusetrace: serving",
            Variant::Diagnose => "tracing for diagnosis (",
            _ => "tracing (",
        };
        Tracer::spawn(cmd, ready)
    }

    /// Starts `cmd` and waits until it prints a line containing `ready`
    /// (on stdout or stderr).
    pub(crate) fn spawn(mut cmd: Command, ready: &'static str) -> Result<Tracer> {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `fusetrace serve`: one scrape of its `/metrics` (the address from
    /// its serving line).
    pub(crate) fn metrics(&self) -> Result<String> {
        http_get(&self.serving_address()?, "/metrics")
    }

    /// `fusetrace serve`: the ADDR:PORT its serving line names.
    pub(crate) fn serving_address(&self) -> Result<String> {
        Ok(self
            .lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("fusetrace: serving http://"))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_string)
            .ok_or("fusetrace serve did not say where it serves")?)
    }

    /// `fusetrace serve`: the requests its `/metrics` counts now (the sum
    /// of `fusetrace_requests_total`).
    pub(crate) fn scraped_requests(&self) -> Result<u64> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| l.starts_with("fusetrace_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    /// Ctrl-C, then collect its closing words and resource use.
    pub(crate) fn stop(self) -> Result<TracerEnd> {
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

/// One plain HTTP/1.0 GET: the body of a 200 answer.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    // A server that stops answering fails the GET rather than hanging the bench.
    let limit = Some(Duration::from_secs(30));
    s.set_read_timeout(limit)
        .and_then(|()| s.set_write_timeout(limit))
        .map_err(|e| format!("GET {path}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!(
            "GET {path}: {}",
            response.lines().next().unwrap_or("")
        )),
    }
}

pub(crate) fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Reaps `pid` if it exited: its wait status and resource use.
pub(crate) fn wait4_nohang(pid: u32) -> Result<Option<(i32, libc::rusage)>> {
    wait4(pid, libc::WNOHANG)
}

/// Waits for child `pid` to exit: its status and resource usage.
pub(crate) fn wait4_blocking(pid: u32) -> Result<(i32, libc::rusage)> {
    wait4(pid, 0)?.ok_or_else(|| format!("wait4({pid}) returned without the child"))
}

fn wait4(pid: u32, options: i32) -> Result<Option<(i32, libc::rusage)>> {
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, options, &mut ru) };
    match rc {
        0 => Ok(None),
        r if r == pid as i32 => Ok(Some((status, ru))),
        _ => Err(format!("wait4({pid}): {}", std::io::Error::last_os_error())),
    }
}

pub(crate) fn reap_or_kill(mut child: Child, grace: Duration) {
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
pub(crate) fn task_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let t = t.ok()?;
        let s = fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Loaded BPF programs: id -> (name, runs, run time in ns).
pub(crate) fn bpf_programs() -> Result<BTreeMap<u64, (String, u64, u64)>> {
    let text = crate::output(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let progs: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| format!("bpftool -j prog show: {e}"))?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let field = |k: &str| p.get(k).and_then(serde_json::Value::as_u64);
            let name = p.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            Some((
                field("id")?,
                (
                    name.to_string(),
                    field("run_cnt").unwrap_or(0),
                    field("run_time_ns").unwrap_or(0),
                ),
            ))
        })
        .collect())
}

/// The BPF programs process `pid` holds open (`prog_id:` in its fds'
/// fdinfo): on a shared machine, other tracers' programs load and run too.
pub(crate) fn held_programs(pid: u32) -> std::collections::BTreeSet<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Default::default();
    };
    fds.filter_map(|fd| fs::read_to_string(fd.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// "12.3 MiB (anon 4.0, file 8.3)" from /proc/PID/status.
pub(crate) fn rss_breakdown(pid: u32) -> String {
    let mib = |f: &str| vm_kib(pid, f).map_or(0.0, |k| k as f64 / 1024.0);
    format!(
        "{:.1} MiB (anon {:.1}, file {:.1}, shmem {:.1})",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:"),
        mib("RssShmem:")
    )
}

pub(crate) fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    super::soak_data::status_kib(&status, field)
}

pub(crate) fn wait_for<T>(limit: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
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

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
