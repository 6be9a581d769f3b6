//! `fusetrace stats` counting in the kernel: real mounts, real programs.
//! Its counts must equal what the daemon served, its latencies (whole, and
//! per stage with `--stages`) agree with the event pipeline's (`stats
//! --stages --from-events`), other mounts stay out, and a request that
//! never ends is reported in flight.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;

#[test]
fn kernel_counts_equal_served_requests_and_other_mounts_stay_out() {
    let _alone = tracing_alone();
    // A long attribute timeout: the second tracer's `--mount` stat is
    // answered from the cache instead of sending a GETATTR that only the
    // first tracer would see.
    let ours = Daemon::start("agg-ours", &["--threads", "2", "--ttl", "600s"]);
    let other = Daemon::start("agg-other", &["--ttl", "0s"]);
    let mount = ours.path().to_str().unwrap().to_string();
    let in_kernel = Tracer::start(&["stats", "--format", "json", "--mount", &mount]);
    let staged = Tracer::start(&["stats", "--stages", "--format", "json", "--mount", &mount]);
    let pipeline = Tracer::start(&[
        "stats",
        "--stages",
        "--from-events",
        "--format",
        "json",
        "--mount",
        &mount,
    ]);
    // What was served until now is not the tracers' to see.
    let before = ours.snapshot();
    let load = |dir: &Path, workload: &str| {
        run_ok(Command::new(bin()).args([
            "load",
            dir.to_str().unwrap(),
            "--workload",
            workload,
            "--ops",
            "2000",
            "--jobs",
            "2",
        ]))
    };
    load(ours.path(), "mixed");
    load(other.path(), "metadata");
    let served = ours.stop_since(&before);
    other.stop();
    let counted = in_kernel.stop();
    let staged = staged.stop();
    let split = pipeline.stop();

    // Forgets are not queued requests: the kernel batches them on a list
    // of their own, which the send/end tracepoints never see.
    let expected: BTreeMap<String, u64> = served
        .into_iter()
        .filter(|(op, _)| !matches!(op.as_str(), "FORGET" | "BATCH_FORGET"))
        .collect();
    let by_op = whole_run_by_op(&counted);
    let got: BTreeMap<String, u64> = by_op
        .iter()
        .map(|(op, o)| (op.clone(), o["count"].as_u64().unwrap()))
        .collect();
    // A point the kernel skipped a program run for (said in the summary,
    // seen in the 7.x guests) is one request short at most.
    let skipped = |out: &TraceOutput| skipped_runs(&out.summary);
    assert_counts_equal(
        &got,
        &expected,
        0,
        skipped(&counted),
        "counted in the kernel",
    );
    let ours_name = by_op.values().next().unwrap()["mount"].clone();
    assert!(
        by_op.values().all(|o| o["mount"] == ours_name),
        "another mount's requests were counted: {by_op:?}"
    );
    let s = &counted.summary;
    assert!(
        s["kernel_aggregation"].is_object(),
        "plain stats counts in the kernel: {s}"
    );
    assert!(
        s["in_flight_at_exit"].as_u64().unwrap() + s["tracker"]["unmatched_ends"].as_u64().unwrap()
            <= skipped(&counted),
        "{s}"
    );
    assert_eq!(
        s["kernel_aggregation"]["in_flight_table_full"].as_u64(),
        Some(0)
    );
    assert_eq!(s["kernel_aggregation"]["histogram_full"].as_u64(), Some(0));

    // The same requests, timed by the event pipeline: equal counts, and
    // medians that agree within the kernel buckets' 1/16 plus the few
    // microseconds between the two tracers' programs on each hook.
    let split_by_op = whole_run_by_op(&split);
    for (op, o) in &by_op {
        let total = stage(o, "total");
        assert_eq!(total["samples"], o["count"], "{op}: every request timed");
        assert!(
            stage(o, "daemon_service")["samples"].as_u64() == Some(0),
            "{op}: in-kernel stats has no stage split"
        );
        let other = &split_by_op[op];
        // A skipped run loses one request, failed or not: its error too.
        for field in ["count", "errors"] {
            assert!(
                o[field]
                    .as_u64()
                    .unwrap()
                    .abs_diff(other[field].as_u64().unwrap())
                    <= skipped(&counted) + skipped(&split),
                "{op}: {field} {} vs {} from --stages --from-events, whose summary: {}",
                o[field],
                other[field],
                split.summary
            );
        }
        if o["count"].as_u64().unwrap() >= 100 {
            let a = total["p50_ns"].as_u64().unwrap() as f64;
            let b = stage(other, "total")["p50_ns"].as_u64().unwrap() as f64;
            assert!(
                (a - b).abs() <= 20_000.0 + 0.25 * b,
                "{op}: median {a} ns in the kernel vs {b} ns from events"
            );
        }
    }

    // `stats --stages` counts the stages in the kernel too: the same
    // counts, every request split, each stage's median agreeing with the
    // event pipeline's as the totals do.
    let s = &staged.summary;
    assert!(
        s["kernel_aggregation"]["stages"].as_u64().unwrap()
            + s["in_flight_at_exit"].as_u64().unwrap()
            <= skipped(&staged),
        "{s}"
    );
    let staged_by_op = whole_run_by_op(&staged);
    let staged_counts: BTreeMap<String, u64> = staged_by_op
        .iter()
        .map(|(op, o)| (op.clone(), o["count"].as_u64().unwrap()))
        .collect();
    assert_counts_equal(
        &staged_counts,
        &expected,
        0,
        skipped(&staged),
        "stats --stages (left) vs served (right)",
    );
    for (op, o) in &staged_by_op {
        let other = &split_by_op[op];
        // The three tracers' programs on each hook run one after another,
        // so each tracer stamps a point later than the one before it by
        // what those programs cost. On hardware that is well under the
        // 20 us allowed; under the VM guests' emulation one run of an end
        // program costs tens of us, which a short stage (a reply's
        // completion, from the write's entry to the end in the same call)
        // cannot absorb in its own relative margin: a tenth of the
        // request's whole time is allowed on top.
        let whole = stage(other, "total")["p50_ns"].as_u64().unwrap_or(0) as f64;
        for name in ["queue_wait", "daemon_service", "completion", "total"] {
            // A skipped run of a daemon-side program leaves a request in
            // the total only (checked against the summary above).
            assert!(
                o["count"]
                    .as_u64()
                    .unwrap()
                    .abs_diff(stage(o, name)["samples"].as_u64().unwrap())
                    <= skipped(&staged),
                "{op}: every request has its {name} counted: {} of {}",
                stage(o, name)["samples"],
                o["count"]
            );
            if o["count"].as_u64().unwrap() >= 100 {
                let a = stage(o, name)["p50_ns"].as_u64().unwrap() as f64;
                let b = stage(other, name)["p50_ns"].as_u64().unwrap() as f64;
                assert!(
                    (a - b).abs() <= 20_000.0 + 0.25 * b + 0.1 * whole,
                    "{op} {name}: median {a} ns in the kernel vs {b} ns from events (whole request {whole} ns)"
                );
            }
        }
    }
}

#[test]
fn a_request_that_never_ends_is_reported_in_flight() {
    let _alone = tracing_alone();
    let fusectl = FuseCtl::new();
    let mut daemon = Daemon::start("agg-stuck", &["--direct-io", "--latency", "READ=1h"]);
    let conn = connection_of(daemon.path());
    // Declared after the daemon, so dropped before it: a failing assertion
    // releases the held READ instead of hanging the suite.
    let _release = AbortOnDrop(fusectl.file(conn, "abort"));
    let file = daemon.path().join("stuck");
    fs::write(&file, b"x").unwrap();
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["stats", "--format", "json", "--mount", &mount]);
    let waiting = fusectl.file(conn, "waiting");
    let reader = std::thread::spawn({
        let file = file.clone();
        move || fs::read(&file).map(|_| ()).map_err(|e| e.to_string())
    });
    // The READ is in the daemon once the connection counts it waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_to_string(&waiting).unwrap().trim() == "0" {
        assert!(
            Instant::now() < deadline,
            "the READ never reached the daemon"
        );
        std::thread::yield_now();
    }
    let out = tracer.stop();
    assert_eq!(
        out.summary["in_flight_at_exit"].as_u64(),
        Some(1),
        "{}",
        out.summary
    );
    assert!(
        out.stderr.contains("1 in flight at exit"),
        "the closing line says it: {}",
        out.stderr
    );
    // Abort the connection: the reader returns with an error, the daemon
    // ends; then nothing may stay mounted.
    fs::write(fusectl.file(conn, "abort"), "1").unwrap();
    assert!(reader.join().unwrap().is_err(), "the stuck read failed");
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    // The daemon's auto-unmount helper removes the mount once it is gone;
    // if it has not within a few seconds, do it here.
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_mounted(daemon.path()) && Instant::now() < deadline {
        std::thread::yield_now();
    }
    if is_mounted(daemon.path()) {
        let _ = Command::new("umount").arg("-l").arg(daemon.path()).status();
    }
    assert!(
        !is_mounted(daemon.path()),
        "the stuck mount was left behind"
    );
}

#[test]
fn too_many_mounts_for_the_kernel_filter_get_one_line() {
    require_root();
    let mut args = vec!["stats", "--duration", "1s"];
    for _ in 0..9 {
        args.extend(["--mount", "/"]);
    }
    // `/` is not a FUSE mount: that error comes first. Use a real one.
    let daemon = Daemon::start("agg-many", &[]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let args: Vec<&str> = args
        .into_iter()
        .map(|a| if a == "/" { mount.as_str() } else { a })
        .collect();
    let out = Command::new(bin()).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("at most 8 --mount") && stderr.contains("--from-events"),
        "{stderr}"
    );
    daemon.stop();
}

#[test]
fn hist_buckets_add_up_to_each_stage_and_show_the_injected_latency() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("agg-hist", &["--direct-io", "--latency", "READ=3ms"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["stats", "--hist", "--format", "json", "--mount", &mount]);
    run_ok(Command::new(bin()).args(["load", &mount, "--workload", "mixed", "--ops", "600"]));
    daemon.stop();
    let out = tracer.stop();
    let whole = out
        .records
        .iter()
        .find(|v| v["period"] == "whole run")
        .expect("whole-run object");
    let by_op = whole_run_by_op(&out);
    let hists = whole["hist"].as_array().expect("a hist list with --hist");
    assert!(!hists.is_empty());
    for h in hists {
        let op = h["opcode"].as_str().unwrap();
        let sum: u64 = h["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        let samples = stage(&by_op[op], h["stage"].as_str().unwrap())["samples"]
            .as_u64()
            .unwrap();
        assert_eq!(sum, samples, "{op}: bucket counts vs samples");
    }
    // Every READ took at least the injected 3 ms: none below the
    // [2048, 4096) us bucket, and the buckets hold every READ. How far
    // above 3 ms each lands is the scheduler's business: the daemon's
    // sleep oversleeps on a busy machine (CI saw 19 of 150 READs past
    // 4.096 ms while the rest of the suite ran), so the test asserts the
    // ceiling only of the fastest READ: the lowest non-empty bucket is
    // the one holding 3 ms. A histogram shifted by a bucket either way
    // fails one of the two.
    let read = hists.iter().find(|h| h["opcode"] == "READ").expect("READ");
    let buckets = read["buckets"].as_array().unwrap();
    let count_where = |f: &dyn Fn(u64) -> bool| -> u64 {
        buckets
            .iter()
            .filter(|b| f(b["low_us"].as_u64().unwrap()))
            .map(|b| b["count"].as_u64().unwrap())
            .sum()
    };
    let reads = by_op["READ"]["count"].as_u64().unwrap();
    assert!(reads > 0, "{read}");
    assert_eq!(count_where(&|low| low < 2048), 0, "{read}");
    assert_eq!(count_where(&|_| true), reads, "{read}");
    let lowest = buckets
        .iter()
        .filter(|b| b["count"].as_u64().unwrap() > 0)
        .map(|b| b["low_us"].as_u64().unwrap())
        .min();
    assert_eq!(lowest, Some(2048), "{read}");
}
