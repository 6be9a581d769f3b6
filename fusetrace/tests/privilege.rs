//! Least privilege, for real: the tracing commands run as `nobody` through
//! `setpriv` holding only the capabilities README's "Requirements" table
//! gives them, against the reference daemon (run as root, as a system's
//! daemons are), and count exactly what it served; without CAP_BPF, or
//! without the daemon side's CAP_DAC_READ_SEARCH, they stop with one line
//! naming it; nothing stays attached. The `serve` unit (README's text is
//! packaging/fusetrace.service) grants exactly serve's set and passes
//! `systemd-analyze verify`.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::*;

/// The capabilities README's table gives each command.
const IN_KERNEL: &str = "+bpf,+perfmon";
/// The daemon side, on kernels without kprobes or fentry (this CI host):
/// its syscall tracepoints' ids are in tracefs, root's alone.
const EVENTS: &str = "+bpf,+perfmon,+dac_read_search";

/// `fusetrace ARGS` as nobody holding `caps` (setpriv's syntax), from a
/// copy of the binary nobody can reach.
fn as_nobody(bin: &Path, caps: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    if !caps.is_empty() {
        cmd.arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"));
    }
    cmd.arg(bin).args(args);
    cmd
}

/// A directory nobody may enter and write (the recording goes there),
/// holding a copy of the binary (the build tree may be closed to nobody).
fn nobody_dir() -> (Scratch, PathBuf) {
    let dir = Scratch::new("privilege");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let copy = dir.path().join("fusetrace");
    std::fs::copy(bin(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

/// The BPF links process `pid` holds (its fds' `link_id`): what it
/// attached. Other tools (and other tests' tracers) may hold links of the
/// same programs, so a run is judged by its own.
fn links_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(fd.path())
            && let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("link_id:"))
                .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    assert!(!ids.is_empty(), "process {pid} holds no BPF link");
    ids
}

/// Asserts none of `ids` is left in the kernel.
fn assert_detached(ids: &[u64], what: &str) {
    let left: Vec<u64> = bpftool_json("link")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .filter(|id| ids.contains(id))
        .collect();
    assert!(left.is_empty(), "{what} left links {left:?} attached");
}

/// Served counts without FORGET/BATCH_FORGET (the kernel never queues them
/// as requests: in-kernel counting does not see them).
fn requests_only(served: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    served
        .iter()
        .filter(|(op, _)| !matches!(op.as_str(), "FORGET" | "BATCH_FORGET"))
        .map(|(op, n)| (op.clone(), *n))
        .collect()
}

#[test]
fn as_nobody_with_the_documented_capabilities_trace_stats_and_record_count_exactly() {
    let _alone = tracing_alone();
    require_root();
    let (dir, copy) = nobody_dir();
    let daemon = Daemon::start("privilege", &["--threads", "2", "--ttl", "600s"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let recording = dir.path().join("run.trace");
    let trace = Tracer::spawn(as_nobody(
        &copy,
        EVENTS,
        &["trace", "--format", "json", "--mount", &mount],
    ));
    let stats = Tracer::spawn(as_nobody(
        &copy,
        IN_KERNEL,
        &["stats", "--format", "json", "--mount", &mount],
    ));
    let record = Tracer::spawn(as_nobody(
        &copy,
        EVENTS,
        &[
            "record",
            "-o",
            recording.to_str().unwrap(),
            "--mount",
            &mount,
            "--format",
            "json",
        ],
    ));
    let links: Vec<Vec<u64>> = [&trace, &stats, &record]
        .iter()
        .map(|t| links_of(t.child.id()))
        .collect();
    let before = daemon.snapshot();
    run_ok(Command::new(bin()).args(["load", &mount, "--workload", "mixed", "--ops", "1500"]));
    let connection = connection_of(daemon.path());
    // Unmounted first: every tracer has seen the same requests.
    let served = daemon.stop_since(&before);
    let traced = trace.stop();
    let counted = stats.stop();
    let recorded = record.stop();
    for (ids, what) in links.iter().zip(["trace", "stats", "record"]) {
        assert_detached(ids, what);
    }

    assert_nothing_lost(&traced.summary);
    assert_counts_equal(
        &count_by_op(&traced.on(connection)),
        &served,
        unseen_at_start(&traced.stderr),
        skipped_runs(&traced.summary),
        "trace as nobody",
    );
    let in_kernel: BTreeMap<String, u64> = whole_run_by_op(&counted)
        .iter()
        .map(|(op, o)| (op.clone(), o["count"].as_u64().unwrap()))
        .collect();
    assert_counts_equal(
        &in_kernel,
        &requests_only(&served),
        0,
        skipped_runs(&counted.summary),
        "stats as nobody",
    );
    // `report` needs no capability at all.
    assert_nothing_lost(&recorded.summary);
    let report = run_ok(&mut as_nobody(
        &copy,
        "",
        &[
            "report",
            recording.to_str().unwrap(),
            "--requests",
            "--format",
            "json",
        ],
    ));
    let reported = TraceOutput::parse(report, String::new());
    assert_counts_equal(
        &count_by_op(&reported.on(connection)),
        &served,
        unseen_at_start(&recorded.stderr),
        skipped_runs(&recorded.summary),
        "record as nobody, then report",
    );
}

/// `fusetrace ARGS` as nobody with `caps`: it fails, and its one line.
fn refused(copy: &Path, caps: &str, args: &[&str]) -> String {
    let out = as_nobody(copy, caps, args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} ran: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("fusetrace: error: "), "{err}");
    err
}

#[test]
fn a_missing_capability_is_named_in_one_line() {
    let _alone = tracing_alone();
    require_root();
    let (_dir, copy) = nobody_dir();
    for args in [
        &["trace", "--duration", "5s"][..],
        &["stats", "--duration", "5s"],
        &["serve", "--listen", "127.0.0.1:0"],
        &["doctor"],
    ] {
        let err = refused(&copy, "+perfmon,+dac_read_search", args);
        assert!(
            err.contains("needs CAP_BPF and CAP_PERFMON (missing: CAP_BPF)"),
            "{args:?}: {err}"
        );
        let err = refused(&copy, "", args);
        assert!(err.contains("(missing: CAP_BPF, CAP_PERFMON)"), "{err}");
    }
    // The daemon side: where this kernel sees it at syscall tracepoints,
    // their tracefs ids need CAP_DAC_READ_SEARCH, and the line says so
    // (not that tracefs is missing); where it is seen in the kernel, the
    // two capabilities do.
    let out = as_nobody(&copy, IN_KERNEL, &["trace", "--duration", "1s"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        assert!(!err.contains("tracepoint/syscalls"), "{err}");
    } else {
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("the daemon side is seen at its syscall tracepoints")
                && err.contains("need CAP_DAC_READ_SEARCH")
                && !err.contains("not mounted"),
            "{err}"
        );
    }
}

/// `GET /metrics`: the body.
fn metrics(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"));
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// `fusetrace_requests_total` per opcode of the series with `mountpoint`,
/// and the `daemon` label they carry.
fn requests_of(body: &str, mountpoint: &str) -> (BTreeMap<String, u64>, Vec<String>) {
    let (mut counts, mut daemons) = (BTreeMap::new(), Vec::new());
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        Some(line[start..].split('"').next()?.to_string())
    };
    let ours = |line: &str| label(line, "mountpoint").as_deref() == Some(mountpoint);
    let value = |line: &str| -> u64 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    for line in body
        .lines()
        .filter(|l| l.starts_with("fusetrace_requests_total{"))
    {
        if ours(line) {
            counts.insert(label(line, "opcode").unwrap(), value(line));
            daemons.push(label(line, "daemon").unwrap());
        }
    }
    // Opcodes the daemon's library answers ENOSYS itself (STATX) are not
    // in its counts: left out when every one of them failed so.
    for line in body.lines().filter(|l| {
        l.starts_with("fusetrace_request_errors_total{")
            && l.contains("errno=\"ENOSYS\"")
            && ours(l)
    }) {
        let op = label(line, "opcode").unwrap();
        if counts.get(&op) == Some(&value(line)) {
            counts.remove(&op);
        }
    }
    (counts, daemons)
}

#[test]
fn serve_as_nobody_with_its_unit_capabilities_counts_exactly_and_names_the_daemon() {
    let _alone = tracing_alone();
    require_root();
    let (_dir, copy) = nobody_dir();
    // The unit's set: what the test grants is what the unit grants.
    let unit = std::fs::read_to_string(repo().join("packaging/fusetrace.service")).unwrap();
    assert!(unit.contains("\nAmbientCapabilities=CAP_BPF CAP_PERFMON\n"));
    let mut child = as_nobody(&copy, IN_KERNEL, &["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = line_channel(child.stderr.take().unwrap());
    let seen = wait_for_line_within(
        &stderr,
        "fusetrace: serving http://",
        "serve as nobody",
        START_TIMEOUT,
    );
    let addr = seen
        .last()
        .and_then(|l| l.strip_prefix("fusetrace: serving http://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let links = links_of(child.id());
    let _kill = KillOnDrop(child);
    // Mounted after serve began: all its requests are counted.
    let daemon = Daemon::start("privilege-serve", &["--ttl", "600s"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    run_ok(Command::new(bin()).args(["load", &mount, "--workload", "mixed", "--ops", "1000"]));
    let mut served = requests_only(&daemon.snapshot());
    served.retain(|_, n| *n > 0);
    // Scraped until every served request has ended in the kernel's counts
    // (the last replies end just after the load returns).
    let mut last = (BTreeMap::new(), Vec::new());
    let complete = eventually(|| {
        last = requests_of(&metrics(&addr), &mount);
        last.0 == served
    });
    assert!(
        complete,
        "scraped {:?}, served {served:?}; /metrics as nobody",
        last.0
    );
    // Named through the kernel's list of /dev/fuse files: no /proc/PID/fd.
    assert!(
        last.1.iter().all(|d| d == "fusetrace"),
        "daemon labels {:?}",
        last.1
    );
    daemon.stop();
    drop(_kill);
    assert_detached(&links, "serve");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal(&self.0, libc::SIGTERM);
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

#[test]
fn the_unit_in_readme_is_the_shipped_one_and_systemd_accepts_it() {
    let unit = std::fs::read_to_string(repo().join("packaging/fusetrace.service")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let block = readme
        .split("```ini\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an ini block in README");
    assert_eq!(
        block, unit,
        "README's unit and packaging/fusetrace.service differ"
    );
    let key = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}="))
            .to_string()
    };
    assert_eq!(key("DynamicUser"), "yes");
    assert_eq!(key("NoNewPrivileges"), "yes");
    assert_eq!(key("ProtectSystem"), "strict");
    assert_eq!(key("AmbientCapabilities"), "CAP_BPF CAP_PERFMON");
    assert_eq!(key("CapabilityBoundingSet"), key("AmbientCapabilities"));
    // Verified with the binary at hand (the packaged path is checked in
    // the installed .deb by dist.rs) and without man pages.
    let dir = Scratch::new("unit");
    let path = dir.path().join("fusetrace.service");
    std::fs::write(&path, unit.replace("/usr/bin/fusetrace", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
