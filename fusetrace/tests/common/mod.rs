//! Helpers for the integration tests: the real binary, real mounts, real
//! probes. Tests run as root and only look at their own mounts.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

/// Longest any step may take before the test fails instead of hanging.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a tracer may take to attach. Longer than a step: in the VM of
/// `cargo xtask vmtest` (software emulation) after a test dropped the page
/// cache, the tracer's own debug binary is paged in again over virtio-fs,
/// which took more than a minute on a busy machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(300);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fusetrace")
}

pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the integration tests mount FUSE file systems and load eBPF programs: run them as root"
    );
}

/// A fresh directory under /tmp, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fusetrace-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kernel's id of the FUSE connection mounted at `path`.
pub fn connection_of(path: &Path) -> u64 {
    let dev = std::fs::metadata(path).unwrap().dev();
    (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev))
}

pub fn is_mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Reads lines of a child's pipe on a thread, so waits can time out.
pub fn line_channel(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns every line read so far.
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, what: &str) -> Vec<String> {
    wait_for_line_within(rx, needle, what, STEP_TIMEOUT)
}

pub fn wait_for_line_within(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    what: &str,
    limit: Duration,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(limit) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!(
                "{what} never printed `{needle}`; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// `fusetrace daemon` on a scratch directory.
pub struct Daemon {
    pub child: Child,
    pub dir: Scratch,
    pub counts_file: PathBuf,
    stdout: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(name: &str, args: &[&str]) -> Daemon {
        let dir = Scratch::new(name);
        let counts_file = std::env::temp_dir().join(format!(
            "fusetrace-test-counts-{name}-{}.json",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&counts_file);
        let mut child = Command::new(bin())
            .arg("daemon")
            .arg(dir.path())
            .arg("--counts-file")
            .arg(&counts_file)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fusetrace daemon");
        let stdout = line_channel(child.stdout.take().unwrap());
        wait_for_line(&stdout, "mounted", "fusetrace daemon");
        assert!(
            is_mounted(dir.path()),
            "daemon said mounted but no mount is there"
        );
        // A mount's first statx() for more than the basic fields (std asks
        // for the birth time) is a STATX request, which the daemon's library
        // answers ENOSYS uncounted; the kernel then asks GETATTR instead for
        // good. Made here, as any first user of a mount would, so that no
        // test's window holds it (fusetrace itself names a mount without
        // asking its daemon).
        let _ = std::fs::metadata(dir.path());
        Daemon {
            child,
            dir,
            counts_file,
            stdout,
        }
    }

    /// The counts served so far (SIGUSR1, then the file it writes).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        signal(&self.child, libc::SIGUSR1);
        wait_for_line(&self.stdout, "counts written", "fusetrace daemon");
        self.read_counts()
    }

    fn read_counts(&self) -> BTreeMap<String, u64> {
        let text = std::fs::read_to_string(&self.counts_file).expect("counts file");
        serde_json::from_str(&text).expect("counts JSON")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// SIGTERM, wait for exit, and the counts it served, by opcode name.
    pub fn stop(mut self) -> BTreeMap<String, u64> {
        signal(&self.child, libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon exited with {status}");
        assert!(!is_mounted(self.dir.path()), "daemon left its mount behind");
        let counts = self.read_counts();
        let _ = std::fs::remove_file(&self.counts_file);
        counts
    }

    /// SIGTERM, and the counts served since `before` (a [`Daemon::snapshot`]).
    pub fn stop_since(self, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        let mut counts = self.stop();
        for (op, n) in before {
            let after = counts.get(op).copied().unwrap_or(0);
            assert!(after >= *n, "{op} count went down");
            counts.insert(op.clone(), after - n);
        }
        counts.retain(|_, n| *n > 0);
        counts
    }
}

/// What a stopped `fusetrace trace --format json` printed.
pub struct TraceOutput {
    pub records: Vec<Value>,
    pub summary: Value,
    pub stderr: String,
    /// Everything it printed (text output).
    pub stdout: String,
}

impl TraceOutput {
    /// What a `--format json` run printed: its request lines and summary
    /// (other lines, e.g. a `-c` command's own output, are skipped).
    pub fn parse(stdout: String, stderr: String) -> TraceOutput {
        let mut records = Vec::new();
        let mut summary = Value::Null;
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v.get("summary").is_some() {
                summary = v["summary"].clone();
            } else {
                records.push(v);
            }
        }
        TraceOutput {
            records,
            summary,
            stderr,
            stdout,
        }
    }

    /// Records of one connection.
    pub fn on(&self, connection: u64) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["connection"].as_u64() == Some(connection))
            .collect()
    }
}

/// Per-opcode counts of records.
pub fn count_by_op(records: &[&Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r["opcode"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

/// `fusetrace ARGS`, with the backend and daemon side the test run asks
/// for (`FUSETRACE_TEST_BACKEND`, `FUSETRACE_TEST_DAEMON_SIDE`: the VM test
/// runs the same tests once per backend its kernel offers).
pub fn tracing_command(args: &[&str]) -> Command {
    let mut args: Vec<&str> = args.to_vec();
    let forced = std::env::var("FUSETRACE_TEST_BACKEND").unwrap_or_default();
    let side = std::env::var("FUSETRACE_TEST_DAEMON_SIDE").unwrap_or_default();
    // Every tracer of a test alike: a recording made with another
    // backend than the live trace beside it would see other things.
    if matches!(args.first(), Some(&("trace" | "stats" | "record"))) {
        if !forced.is_empty() {
            args.extend(["--backend", forced.as_str()]);
        }
        if !side.is_empty() {
            args.extend(["--daemon-side", side.as_str()]);
        }
    }
    let mut cmd = Command::new(bin());
    cmd.args(&args);
    cmd
}

/// A running `fusetrace` tracing command.
pub struct Tracer {
    pub child: Child,
    /// What it printed up to its `tracing (...)` line, that line included.
    started: Vec<String>,
    stderr: mpsc::Receiver<String>,
    stdout: thread::JoinHandle<String>,
}

impl Tracer {
    /// Starts `fusetrace ARGS` ([`tracing_command`]) and waits until its
    /// probes are attached.
    pub fn start(args: &[&str]) -> Tracer {
        Tracer::spawn(tracing_command(args))
    }

    /// Starts a tracing command built elsewhere (another binary, in a
    /// chroot) and waits until its probes are attached.
    pub fn spawn(mut cmd: Command) -> Tracer {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fusetrace");
        let mut out = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).unwrap();
            s
        });
        let stderr = line_channel(child.stderr.take().unwrap());
        let started =
            wait_for_line_within(&stderr, "fusetrace: tracing", "fusetrace", START_TIMEOUT);
        Tracer {
            child,
            started,
            stderr,
            stdout,
        }
    }

    /// Ctrl-C, then everything it printed.
    pub fn stop(mut self) -> TraceOutput {
        signal(&self.child, libc::SIGINT);
        let status = self.child.wait().unwrap();
        let stdout = self.stdout.join().unwrap();
        let mut stderr = self.started;
        // To the pipe's end, which comes with the exit (unless a
        // descendant holds it): lines printed last, e.g. `--perfetto`'s
        // `wrote ...`, may still be on their way through the reader thread.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .stderr
            .recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
        {
            stderr.push(line);
        }
        let stderr = stderr.join("\n");
        assert!(status.success(), "fusetrace exited with {status}: {stderr}");
        TraceOutput::parse(stdout, stderr)
    }
}

/// Mounts `src` at `mnt` with bindfs, attribute and entry caches off (so
/// every access reaches the daemon), and checks it is mounted.
pub fn mount_bindfs(src: &Path, mnt: &Path) {
    run_ok(
        Command::new("bindfs")
            .args(["-o", "attr_timeout=0,entry_timeout=0"])
            .arg(src)
            .arg(mnt),
    );
    assert!(is_mounted(mnt), "bindfs did not mount {}", mnt.display());
}

/// One connection's diagnosis in a stopped `diagnose --json`'s output.
pub fn diagnosis_of(out: &TraceOutput, conn: u64) -> Value {
    out.records
        .iter()
        .find_map(|v| v.get("diagnoses"))
        .and_then(|d| d.as_array())
        .and_then(|d| d.iter().find(|d| d["connection"].as_u64() == Some(conn)))
        .unwrap_or_else(|| {
            panic!(
                "no diagnosis of connection {conn}: {:?}\nstderr: {}",
                out.records, out.stderr
            )
        })
        .clone()
}

/// `diagnose --json` on the mount while `work` runs: the mount's diagnosis.
pub fn diagnosis_while(mount: &Path, work: impl FnOnce()) -> Value {
    let conn = connection_of(mount);
    let tracer = Tracer::start(&["diagnose", "--json", "--mount", mount.to_str().unwrap()]);
    work();
    diagnosis_of(&tracer.stop(), conn)
}

/// `diagnose --json` on the mount while `work` runs: the mount's findings.
pub fn findings_while(mount: &Path, work: impl FnOnce()) -> Vec<Value> {
    findings_of(&diagnosis_while(mount, work)).to_vec()
}

/// A diagnosis' findings, worst first.
pub fn findings_of(diagnosis: &Value) -> &[Value] {
    diagnosis["findings"].as_array().expect("findings")
}

/// The finding with this id, if it is there.
pub fn finding<'a>(findings: &'a [Value], id: &str) -> Option<&'a Value> {
    findings.iter().find(|f| f["id"] == id)
}

/// The findings' ids, worst first.
pub fn finding_ids(findings: &[Value]) -> Vec<&str> {
    findings.iter().filter_map(|f| f["id"].as_str()).collect()
}

/// `fusetrace load M --workload mixed` for 3 s: what a healthy mount
/// must take without a finding.
pub fn mixed_load(mount: &Path) {
    run_ok(std::process::Command::new(bin()).args([
        "load",
        mount.to_str().unwrap(),
        "--workload",
        "mixed",
        "--duration",
        "3s",
    ]));
}

/// Unmounts a third-party daemon's mount (bindfs) when dropped, also when
/// a test fails half-way.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
    }
}

/// `top --headless --view V` while `work` runs, then its last frame.
pub fn top_frame(view: &str, mount: &str, work: impl FnOnce()) -> String {
    top_frame_and_skips(view, mount, work).0
}

/// [`top_frame`], and the runs of top's programs the kernel skipped (as
/// its closing summary on stderr says; see [`skipped_runs`]), for a test
/// that runs again when a tracer's skipped run cost it a point
/// ([`again_if_runs_skipped`]).
pub fn top_frame_and_skips(view: &str, mount: &str, work: impl FnOnce()) -> (String, u64) {
    let mut top = Command::new(bin())
        .args(["top", "--headless", "--view", view, "--mount", mount])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn top");
    let stderr = line_channel(top.stderr.take().unwrap());
    wait_for_line_within(
        &stderr,
        "fusetrace: tracing",
        "fusetrace top",
        START_TIMEOUT,
    );
    work();
    signal(&top, libc::SIGINT);
    let out = top.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // "...; the kernel skipped N runs of fusetrace's programs (...", up to
    // the end of its stderr (the reader may lag the exit).
    let skipped = stderr
        .iter()
        .find_map(|l| {
            l.split_once("the kernel skipped ")?
                .1
                .split_once(" runs")?
                .0
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    (String::from_utf8_lossy(&out.stdout).into_owned(), skipped)
}

/// Runs a command to completion and returns its stdout; panics on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads of a daemon's buffer (user memory) that the daemon-side hooks
/// could not make. A BPF program cannot fault a page in, and a page that
/// is being moved at that instant (khugepaged collapsing the daemon's heap
/// into a huge page, compaction) reads as a fault: seen once in 7 415
/// requests in the 6.1 guest. Each is counted (`read_faults`) and costs
/// its request the daemon's stages, nothing else; a run may have one in a
/// thousand requests.
pub fn allowed_read_faults(summary: &Value) -> u64 {
    let faults = summary["read_faults"].as_u64().expect("read_faults");
    let requests = summary["requests"].as_u64().expect("requests");
    assert!(
        faults <= requests / 1000,
        "{faults} read faults in {requests} requests: {summary}"
    );
    faults + skipped_runs(summary)
}

/// `ours` (one mount's requests of `traced`) has a request of every one of
/// `ops`, and every answered one has all four stages but for the read
/// faults and skipped runs the summary counts.
pub fn assert_every_stage(traced: &TraceOutput, ours: &[&Value], ops: &[&str], what: &str) {
    let seen = count_by_op(ours);
    for op in ops {
        assert!(seen.contains_key(*op), "no {op} traced on {what}: {seen:?}");
    }
    let incomplete: Vec<_> = ours
        .iter()
        .filter(|r| expects_reply(r) && !fully_observed(r))
        .collect();
    assert!(
        incomplete.len() as u64 <= allowed_read_faults(&traced.summary),
        "{what}: requests missing stages: {incomplete:?}"
    );
}

/// Runs of the tracer's programs the kernel skipped, as the summary says
/// (`recursion_misses`: a task preempted inside one of them while another
/// on the same CPU reached it, seen in the 7.x guests): each is one point
/// unobserved, so one request short, unjoined or incomplete at most. A
/// tracer that said nothing of it skipped nothing.
pub fn skipped_runs(summary: &Value) -> u64 {
    summary["program_runs_skipped"].as_u64().unwrap_or(0)
}

/// Runs `body` again (three times in all at most) when it failed after the
/// kernel skipped runs of a tracer's programs (`recursion_misses`, seen in
/// the 7.x guests under emulation, counted and said by the tool): a skipped
/// run loses a point that an exact assertion on names or paths needs.
/// `body` adds the skipped runs its tracers reported to its argument before
/// it asserts; a failure without any is a failure at once.
pub fn again_if_runs_skipped(body: impl Fn(&std::cell::Cell<u64>)) {
    for attempt in 1.. {
        let skipped = std::cell::Cell::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&skipped)));
        match outcome {
            Ok(()) => return,
            Err(_) if skipped.get() > 0 && attempt < 3 => eprintln!(
                "attempt {attempt} failed after the kernel skipped {} runs of the tracers' programs: again",
                skipped.get()
            ),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

/// `bpftool WHAT show --json`, parsed.
pub fn bpftool_json(what: &str) -> Vec<Value> {
    let out = run_ok(Command::new("bpftool").args([what, "show", "--json"]));
    serde_json::from_str(&out).expect("bpftool JSON")
}

/// Asserts the run lost nothing: no drops, nothing unmatched, nothing left
/// in flight, no read fault beyond [`allowed_read_faults`].
pub fn assert_nothing_lost(summary: &Value) {
    allowed_read_faults(summary);
    for key in ["ring_drops", "undecodable", "takes_unresolved"] {
        assert_eq!(summary[key].as_u64(), Some(0), "{key} in {summary}");
    }
    assert_eq!(
        summary["tracker"]["sends_without_id"].as_u64(),
        Some(0),
        "{summary}"
    );
    // What a point the kernel did not run a program for leaves behind, one
    // each at most: nothing when it skipped nothing.
    let unjoined = summary["in_flight_at_exit"]
        .as_u64()
        .expect("in_flight_at_exit")
        + ["unmatched_replies", "unmatched_ends", "never_ended"]
            .iter()
            .map(|k| summary["tracker"][k].as_u64().expect(k))
            .sum::<u64>();
    assert!(
        unjoined <= skipped_runs(summary),
        "{unjoined} requests in flight at exit, unmatched or never ended, {} program runs skipped by the kernel: {summary}",
        skipped_runs(summary)
    );
}

/// Whether a record is one the daemon answers (not FORGET and friends).
pub fn expects_reply(r: &Value) -> bool {
    !matches!(
        r["opcode"].as_str(),
        Some("FORGET" | "BATCH_FORGET" | "INTERRUPT")
    )
}

/// All four points of a request observed, in their order: sent, taken by
/// the daemon, replied, ended.
pub fn fully_observed(r: &Value) -> bool {
    let points: Vec<Option<u64>> = ["sent_at_ns", "taken_at_ns", "replied_at_ns", "ended_at_ns"]
        .iter()
        .map(|k| r[*k].as_u64())
        .collect();
    points.iter().all(Option::is_some) && points.windows(2).all(|w| w[0] <= w[1])
}

/// The tests of one file that trace run one at a time: every tracer's
/// probes see every FUSE request on the machine (the mount filter is
/// applied after), so one test's load could overflow another's tables.
pub fn tracing_alone() -> std::sync::MutexGuard<'static, ()> {
    static TRACING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    require_root();
    TRACING.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stage's entry of a `stats --format json` opcode row.
pub fn stage<'a>(op: &'a Value, name: &str) -> &'a Value {
    op["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {op}"))
}

/// `/sys/fs/fuse/connections`, mounted for the test when it is not.
pub struct FuseCtl {
    mounted_here: bool,
}

impl FuseCtl {
    pub fn new() -> FuseCtl {
        let dir = Path::new("/sys/fs/fuse/connections");
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let mounted = mounts
            .lines()
            .any(|l| l.contains(" /sys/fs/fuse/connections "));
        if !mounted {
            run_ok(
                Command::new("mount")
                    .args(["-t", "fusectl", "fusectl"])
                    .arg(dir),
            );
        }
        FuseCtl {
            mounted_here: !mounted,
        }
    }

    pub fn file(&self, connection: u64, name: &str) -> PathBuf {
        // Named by the kernel's dev_t, which is how fusetrace names connections.
        Path::new("/sys/fs/fuse/connections")
            .join(connection.to_string())
            .join(name)
    }
}

impl Drop for FuseCtl {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount")
                .arg("/sys/fs/fuse/connections")
                .status();
        }
    }
}

/// Aborts a FUSE connection when dropped (its fusectl `abort` file): every
/// request it holds fails, its daemon exits, its mount can go.
pub struct AbortOnDrop(pub PathBuf);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "1");
    }
}

/// The whole-run table of a stopped `stats --format json`, by opcode.
pub fn whole_run_by_op(out: &TraceOutput) -> BTreeMap<String, Value> {
    let whole = out
        .records
        .iter()
        .find(|v| v["period"] == "whole run")
        .unwrap_or_else(|| panic!("no whole-run table; stderr: {}", out.stderr));
    whole["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["opcode"].as_str().unwrap().to_string(), o.clone()))
        .collect()
}

/// The kernel's FUSE-over-io_uring switch.
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Process-wide state of `UringParam`: tests in one binary run in
/// parallel, so the parameter is set by the first shared guard and restored
/// by the last one; an exclusive guard (a different value, or a test that
/// needs no other mount of this binary around) waits for all of them.
static URING_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
static URING_SHARED: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

/// Holds `/sys/module/fuse/parameters/enable_uring` at a value while alive.
pub struct UringParam {
    _shared: Option<std::sync::RwLockReadGuard<'static, ()>>,
    _exclusive: Option<std::sync::RwLockWriteGuard<'static, ()>>,
    /// Exclusive guards: the value to put back.
    restore: Option<String>,
}

impl UringParam {
    /// `Y` while any shared guard lives; `None` (test skipped) when this
    /// kernel has no FUSE over io_uring.
    pub fn enable() -> Option<UringParam> {
        if !Path::new(ENABLE_URING).exists() {
            eprintln!("skipped: this kernel has no FUSE over io_uring ({ENABLE_URING})");
            return None;
        }
        let read = URING_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let mut shared = URING_SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if shared.0 == 0 {
            let before = std::fs::read_to_string(ENABLE_URING).unwrap();
            std::fs::write(ENABLE_URING, "Y").unwrap();
            shared.1 = Some(before.trim().to_string());
        }
        shared.0 += 1;
        Some(UringParam {
            _shared: Some(read),
            _exclusive: None,
            restore: None,
        })
    }

    /// `value` (`Y` or `N`) with no other guard of this process alive.
    pub fn exclusive(value: &str) -> Option<UringParam> {
        if !Path::new(ENABLE_URING).exists() {
            eprintln!("skipped: this kernel has no FUSE over io_uring ({ENABLE_URING})");
            return None;
        }
        let write = URING_LOCK.write().unwrap_or_else(|e| e.into_inner());
        let before = std::fs::read_to_string(ENABLE_URING).unwrap();
        std::fs::write(ENABLE_URING, value).unwrap();
        Some(UringParam {
            _shared: None,
            _exclusive: Some(write),
            restore: Some(before.trim().to_string()),
        })
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        // Runs before the lock guards (fields) are released.
        if let Some(before) = self.restore.take() {
            let _ = std::fs::write(ENABLE_URING, before);
            return;
        }
        let mut shared = URING_SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.0 -= 1;
        if shared.0 == 0
            && let Some(before) = shared.1.take()
        {
            let _ = std::fs::write(ENABLE_URING, before);
        }
    }
}

/// A daemon's count of one opcode, by name.
pub fn count(c: &fusetrace::lab::daemon::ServedCounts, name: &str) -> u64 {
    c.get(fusetrace::pipeline::opcode::parse(name).unwrap())
}

/// Waits (briefly) for asynchronous requests such as RELEASE to be counted.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub fn cstring(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn errno_result(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn xattr_set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    errno_result(unsafe {
        libc::setxattr(
            cstring(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

pub fn xattr_get(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: as above.
    let rc = unsafe {
        libc::getxattr(
            cstring(path).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

pub fn xattr_remove(path: &Path, name: &str) -> std::io::Result<()> {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: as above.
    errno_result(unsafe { libc::removexattr(cstring(path).as_ptr(), n.as_ptr()) })
}

/// How many messages the tracer said it may miss as it started: daemon
/// threads already waiting in `fuse_dev_do_read` when the fexit take was
/// attached (its `takes unseen at start` line; 0 without one).
pub fn unseen_at_start(stderr: &str) -> u64 {
    const SAID: &str = "takes unseen at start: ";
    stderr
        .find(SAID)
        .map(|i| {
            stderr[i + SAID.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Traced counts by opcode equal the served ones, except that at most
/// `unseen` FORGET, BATCH_FORGET and INTERRUPT messages may be missing
/// ([`unseen_at_start`]); never more traced than served.
pub fn assert_counts_equal(
    traced: &BTreeMap<String, u64>,
    served: &BTreeMap<String, u64>,
    unseen: u64,
    skipped: u64,
    what: &str,
) {
    let unrequested = |op: &str| matches!(op, "FORGET" | "BATCH_FORGET" | "INTERRUPT");
    let (mut requests_missing, mut messages_missing) = (0, 0);
    let ops: std::collections::BTreeSet<&String> = traced.keys().chain(served.keys()).collect();
    for op in ops {
        let (t, s) = (
            traced.get(op).copied().unwrap_or(0),
            served.get(op).copied().unwrap_or(0),
        );
        assert!(
            t <= s,
            "{what}: {op} traced {t} > served {s}: traced {traced:?} vs served {served:?}"
        );
        if unrequested(op.as_str()) {
            messages_missing += s - t;
        } else {
            requests_missing += s - t;
        }
    }
    assert!(
        requests_missing <= skipped && messages_missing <= unseen + skipped - requests_missing,
        "{what}: {requests_missing} requests and {messages_missing} FORGET/BATCH_FORGET/INTERRUPT not traced; the tracer said at most {unseen} unseen at start and {skipped} program runs skipped: traced (left) {traced:?} vs served (right) {served:?}"
    );
}

/// The `{"period": "whole run"}` and `{"summary"}` lines of a stats-style output.
pub fn whole_run(stdout: &str) -> (Value, Value) {
    let mut ops = Value::Null;
    let mut summary = Value::Null;
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).expect("JSON line");
        if v["period"] == "whole run" {
            ops = v["ops"].clone();
        } else if v.get("summary").is_some() {
            summary = v["summary"].clone();
        }
    }
    assert!(ops.is_array(), "no whole-run line in:\n{stdout}");
    (ops, summary)
}
