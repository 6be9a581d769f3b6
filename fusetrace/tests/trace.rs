//! End-to-end: real FUSE mounts, real eBPF probes in the running kernel.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    process::Command,
};

use common::*;

#[test]
fn traced_requests_equal_served_requests_opcode_by_opcode() {
    require_root();
    let daemon = Daemon::start("exact", &["--threads", "2"]);
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    // What the daemon served before the probes were attached (INIT, the
    // mount's first GETATTR) is not the tracer's to see.
    let before = daemon.snapshot();
    let out = run_ok(Command::new(bin()).args([
        "load",
        &mount,
        "--workload",
        "mixed",
        "--ops",
        "2000",
        "--jobs",
        "2",
    ]));
    assert!(out.contains("ops/s"), "load printed: {out}");
    let served = daemon.stop_since(&before);
    let traced = tracer.stop();

    let ours = traced.on(conn);
    let seen = count_by_op(&ours);
    // The daemon side hooked in the kernel sees requests only, and says so.
    let requests_only = traced.stderr.contains(
        "requests only: FORGET, BATCH_FORGET and INTERRUPT are seen with --daemon-side syscalls",
    );
    let served: BTreeMap<String, u64> = served
        .into_iter()
        .filter(|(op, _)| {
            !requests_only || !matches!(op.as_str(), "FORGET" | "BATCH_FORGET" | "INTERRUPT")
        })
        .collect();
    assert_counts_equal(
        &seen,
        &served,
        unseen_at_start(&traced.stderr),
        skipped_runs(&traced.summary),
        "exact accounting",
    );
    assert_nothing_lost(&traced.summary);
    let answered: Vec<_> = ours.iter().filter(|r| expects_reply(r)).collect();
    let complete = answered.iter().filter(|r| fully_observed(r)).count();
    eprintln!(
        "exact accounting: {} requests traced, {} answered, {} with all four stages",
        ours.len(),
        answered.len(),
        complete
    );
    // Each request missing a stage is one whose header read faulted.
    let incomplete: Vec<_> = answered
        .iter()
        .filter(|r| !fully_observed(r))
        .take(3)
        .collect();
    assert!(
        (answered.len() - complete) as u64 <= allowed_read_faults(&traced.summary),
        "every answered request has all four stages: {} of {}; the first without: {incomplete:?}",
        complete,
        answered.len()
    );
}

#[test]
fn injected_read_latency_shows_in_daemon_service_only() {
    require_root();
    let daemon = Daemon::start(
        "latency",
        &["--latency", "READ=5ms", "--direct-io", "--ttl", "0s"],
    );
    let conn = connection_of(daemon.path());
    let file = daemon.path().join("data");
    fs::write(&file, vec![7u8; 64 * 1024]).unwrap();
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        let mut f = fs::File::open(&file).unwrap();
        while f.read(&mut buf).unwrap() > 0 {}
        let _ = fs::metadata(&file).unwrap();
    }
    let served = daemon.stop();
    let traced = tracer.stop();
    let ours = traced.on(conn);
    let reads: Vec<_> = ours.iter().filter(|r| r["opcode"] == "READ").collect();
    assert_eq!(reads.len() as u64, served["READ"], "every READ is traced");
    assert!(reads.len() >= 48, "direct-io reads: {}", reads.len());
    for r in &reads {
        let daemon_ns = r["daemon_service_ns"]
            .as_u64()
            .expect("daemon stage observed");
        let total_ns = r["total_ns"].as_u64().expect("total observed");
        assert!(
            daemon_ns >= 5_000_000,
            "READ daemon service {daemon_ns} ns < 5 ms"
        );
        assert!(
            total_ns >= daemon_ns,
            "total {total_ns} < daemon {daemon_ns}"
        );
    }
    let mut others: Vec<u64> = ours
        .iter()
        .filter(|r| r["opcode"] != "READ")
        .filter_map(|r| r["daemon_service_ns"].as_u64())
        .collect();
    others.sort_unstable();
    assert!(others.len() >= 6, "other requests traced: {}", others.len());
    let median = others[others.len() / 2];
    assert!(
        median < 1_000_000,
        "other opcodes slowed: median daemon service {median} ns"
    );
}

#[test]
fn error_replies_carry_their_error() {
    require_root();
    let daemon = Daemon::start("enoent", &["--ttl", "0s"]);
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    for i in 0..5 {
        assert!(fs::metadata(daemon.path().join(format!("missing-{i}"))).is_err());
    }
    fs::write(daemon.path().join("present"), b"x").unwrap();
    fs::metadata(daemon.path().join("present")).unwrap();
    daemon.stop();
    let traced = tracer.stop();
    let ours = traced.on(conn);
    let failed: Vec<_> = ours
        .iter()
        .filter(|r| r["opcode"] == "LOOKUP" && r["error"] == -libc::ENOENT)
        .collect();
    assert!(failed.len() >= 5, "ENOENT lookups traced: {}", failed.len());
    assert!(failed.iter().all(|r| fully_observed(r)));
    assert!(
        ours.iter()
            .any(|r| r["opcode"] == "LOOKUP" && r["error"] == 0),
        "the successful LOOKUP carries error 0"
    );
}

#[test]
fn bindfs_requests_have_all_four_stages() {
    require_root();
    let src = Scratch::new("bindfs-src");
    let mnt = Scratch::new("bindfs-mnt");
    fs::write(src.path().join("hello"), b"hello from bindfs\n").unwrap();
    mount_bindfs(src.path(), mnt.path());
    let conn = connection_of(mnt.path());
    let mount = mnt.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    let text = fs::read_to_string(mnt.path().join("hello")).unwrap();
    assert_eq!(text, "hello from bindfs\n");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.path().join("new"))
        .unwrap();
    f.write_all(b"data").unwrap();
    drop(f);
    assert!(fs::metadata(mnt.path().join("absent")).is_err());
    assert_eq!(fs::read_dir(mnt.path()).unwrap().count(), 2);
    run_ok(Command::new("fusermount3").arg("-u").arg(mnt.path()));
    let traced = tracer.stop();
    let ours = traced.on(conn);
    assert_every_stage(
        &traced,
        &ours,
        &[
            "LOOKUP", "GETATTR", "OPEN", "READ", "CREATE", "WRITE", "READDIR",
        ],
        "bindfs",
    );
    let answered: Vec<_> = ours.iter().filter(|r| expects_reply(r)).collect();
    assert!(
        ours.iter()
            .any(|r| r["opcode"] == "LOOKUP" && r["error"] == -libc::ENOENT),
        "the failed lookup of `absent` carries ENOENT"
    );
    assert!(
        answered
            .iter()
            .all(|r| r["daemon_tid"].as_u64().is_some_and(|t| t > 0)),
        "daemon thread known for every request"
    );
    assert_nothing_lost(&traced.summary);
}

#[test]
fn stats_prints_percentiles_per_opcode() {
    require_root();
    let daemon = Daemon::start("stats", &["--latency", "GETATTR=2ms", "--ttl", "0s"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&[
        "stats",
        "--stages",
        "--format",
        "json",
        "--mount",
        &mount,
        "--interval",
        "1h",
    ]);
    let before = daemon.snapshot();
    fs::write(daemon.path().join("f"), b"abc").unwrap();
    for _ in 0..20 {
        fs::metadata(daemon.path().join("f")).unwrap();
    }
    let served = daemon.stop_since(&before);
    let out = tracer.stop();
    // `stats --format json` prints a {"period", "ops"} object, then the summary.
    let whole = out
        .records
        .iter()
        .find(|v| v["period"] == "whole run")
        .expect("whole-run table");
    let ops = whole["ops"].as_array().unwrap();
    let getattr = ops
        .iter()
        .find(|o| o["opcode"] == "GETATTR")
        .expect("GETATTR row");
    assert_eq!(getattr["count"].as_u64(), Some(served["GETATTR"]));
    let daemon_stage = getattr["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "daemon_service")
        .unwrap();
    assert!(daemon_stage["p50_ns"].as_u64().unwrap() >= 2_000_000);
    assert!(daemon_stage["max_ns"].as_u64().unwrap() >= daemon_stage["p99_ns"].as_u64().unwrap());
}

#[test]
fn without_privileges_the_error_names_the_fix() {
    use std::os::unix::process::CommandExt;
    require_root();
    let out = Command::new(bin())
        .args(["trace", "--duration", "10s"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("needs CAP_BPF and CAP_PERFMON"), "{stderr}");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        // --duration bounds the run should the error ever not happen.
        (&["trace", "--op", "REED"], "unknown FUSE opcode `REED`"),
        (
            &["trace", "--duration", "10s", "--mount", "/"],
            "is not on a FUSE file system",
        ),
        (
            &["trace", "--duration", "10s", "--mount", "/nonexistent/path"],
            "cannot stat /nonexistent/path",
        ),
        (&["trace", "--duration", "5 parsecs"], "invalid duration"),
        (&["daemon", "/nonexistent/mnt"], "/nonexistent/mnt"),
    ];
    for (args, needle) in cases {
        let out = Command::new(bin()).args(*args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{args:?}: expected `{needle}` in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

#[test]
fn a_bare_number_duration_is_seconds() {
    require_root();
    let started = std::time::Instant::now();
    let out = Command::new(bin())
        .args(["stats", "--duration", "0.5", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = started.elapsed();
    // Half a second of tracing, not half a millisecond or 500 s; the
    // attach takes its own time before it.
    assert!(took >= std::time::Duration::from_millis(500), "{took:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"summary\""));
}
