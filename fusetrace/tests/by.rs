//! `fusetrace stats --by` / `report --by` on a real mount: each process's
//! and command's rows count exactly what that process asked for (what the
//! daemon served, what `dd` wrote), `--top N` keeps N rows largest first,
//! keys other than op and mount say they count from events, and a bad key
//! is refused in one line.

mod common;

use std::{collections::BTreeMap, fs, process::Command};

use common::*;
use serde_json::Value;

/// The whole-run rows of a stopped `stats --by ... --format json`.
fn whole_run_rows(out: &TraceOutput) -> Vec<Value> {
    let whole = out
        .records
        .iter()
        .find(|v| v["period"] == "whole run")
        .unwrap_or_else(|| panic!("no whole-run table; stderr: {}", out.stderr));
    whole["rows"].as_array().unwrap().clone()
}

/// Counts per (comm, op) of `--by comm,op` rows.
fn by_comm_op(rows: &[Value]) -> BTreeMap<(String, String), u64> {
    rows.iter()
        .map(|r| {
            let comm = r["comm"].as_str().unwrap_or("-").to_string();
            let op = r["opcode"].as_str().unwrap().to_string();
            ((comm, op), r["count"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn per_process_and_per_command_rows_count_what_each_asked() {
    let _alone = tracing_alone();
    // A long attribute timeout: the later tracers' `--mount` stat is
    // answered from the cache instead of a GETATTR the first one would see.
    let ours = Daemon::start("by-ours", &["--ttl", "600s"]);
    let mount = ours.path().to_str().unwrap().to_string();
    let trace = Scratch::new("by-record");
    let recording = trace.path().join("run.trace");
    let by_pid = Tracer::start(&[
        "stats", "--by", "pid", "--format", "json", "--mount", &mount,
    ]);
    let by_comm = Tracer::start(&[
        "stats", "--by", "comm,op", "--format", "json", "--mount", &mount,
    ]);
    // Far more files than rows: the rest is one (other) row.
    let capped = Tracer::start(&[
        "stats",
        "--by",
        "path",
        "--max-rows",
        "3",
        "--format",
        "json",
        "--mount",
        &mount,
    ]);
    let top = Tracer::start(&[
        "stats", "--by", "op", "--top", "2", "--format", "json", "--mount", &mount,
    ]);
    let recorder = Tracer::start(&[
        "record",
        "-o",
        recording.to_str().unwrap(),
        "--mount",
        &mount,
        "--format",
        "json",
    ]);
    let before = ours.snapshot();

    // Two processes: `fusetrace load` (comm "fusetrace", one pid for its
    // threads) and `dd` writing 25 blocks, each one WRITE (no writeback
    // cache: a write(2) of one page is one request).
    let mut load = Command::new(bin())
        .args([
            "load",
            &mount,
            "--workload",
            "mixed",
            "--ops",
            "500",
            "--jobs",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn load");
    let load_pid = load.id() as u64;
    assert!(load.wait().unwrap().success(), "load failed");
    let mut dd = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={mount}/by-dd"),
            "bs=4096",
            "count=25",
            "status=none",
        ])
        .spawn()
        .expect("spawn dd");
    let dd_pid = dd.id() as u64;
    assert!(dd.wait().unwrap().success(), "dd failed");

    let served = ours.stop_since(&before);
    let pid_out = by_pid.stop();
    let comm_out = by_comm.stop();
    let top_out = top.stop();
    let capped_out = capped.stop();
    let recorded = recorder.stop();
    assert_nothing_lost(&pid_out.summary);
    assert_nothing_lost(&comm_out.summary);

    // Per opcode, the commands' rows add up to what the daemon served
    // (FORGETs are sent when the kernel drops inodes, by whoever that is;
    // the kernel queues them apart, as the other tests leave them out).
    let comm_rows = whole_run_rows(&comm_out);
    let counts = by_comm_op(&comm_rows);
    let mut per_op: BTreeMap<String, u64> = BTreeMap::new();
    for ((_, op), n) in &counts {
        *per_op.entry(op.clone()).or_default() += n;
    }
    let forget = |op: &str| matches!(op, "FORGET" | "BATCH_FORGET");
    per_op.retain(|op, _| !forget(op));
    let expected: BTreeMap<String, u64> = served
        .iter()
        .filter(|(op, _)| !forget(op))
        .map(|(op, n)| (op.clone(), *n))
        .collect();
    assert_eq!(
        per_op, expected,
        "--by comm,op per opcode (left) vs served (right)"
    );
    assert_eq!(
        counts.get(&("dd".to_string(), "WRITE".to_string())),
        Some(&25),
        "dd wrote 25 blocks: {counts:?}"
    );
    assert!(
        counts.keys().any(|(c, _)| c == "fusetrace"),
        "the load's rows: {counts:?}"
    );

    // Per process: the same requests, split by pid, each with its comm;
    // dd's pid row is every dd row, the load's every row of its command.
    let pid_rows = whole_run_rows(&pid_out);
    let pid_count = |pid: u64| {
        pid_rows
            .iter()
            .find(|r| r["pid"].as_u64() == Some(pid))
            .unwrap_or_else(|| panic!("no row of pid {pid}: {pid_rows:?}"))
    };
    let comm_total = |comm: &str| -> u64 {
        counts
            .iter()
            .filter(|((c, _), _)| c == comm)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(pid_count(dd_pid)["comm"], "dd");
    assert_eq!(pid_count(dd_pid)["count"].as_u64(), Some(comm_total("dd")));
    assert_eq!(pid_count(load_pid)["comm"], "fusetrace");
    assert_eq!(
        pid_count(load_pid)["count"].as_u64(),
        Some(comm_total("fusetrace")),
        "the load's pid vs its command's rows"
    );
    let total = |rows: &[Value]| -> u64 { rows.iter().map(|r| r["count"].as_u64().unwrap()).sum() };
    assert_eq!(
        total(&pid_rows),
        total(&comm_rows),
        "every request in a row"
    );

    // --max-rows 3: three files (named: the load creates them under
    // trace), and every other request in the (other) row, said in JSON;
    // none lost.
    let capped_whole = capped_out
        .records
        .iter()
        .find(|v| v["period"] == "whole run")
        .unwrap();
    let files = capped_whole["rows"].as_array().unwrap();
    assert_eq!(files.len(), 3, "{capped_whole}");
    assert!(
        files
            .iter()
            .all(|r| r["path"].as_str().unwrap().starts_with(&mount)),
        "{capped_whole}"
    );
    let other = &capped_whole["other"];
    assert_eq!(other["path"], "(other)", "{capped_whole}");
    assert_eq!(
        total(files) + other["count"].as_u64().unwrap(),
        total(&pid_rows),
        "the capped table counts every request"
    );

    // --top 2 by op: two rows, largest total time first, the rest counted;
    // counted in the kernel, so no line about events.
    let top_whole = top_out
        .records
        .iter()
        .find(|v| v["period"] == "whole run")
        .unwrap();
    let rows = top_whole["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{top_whole}");
    assert!(rows[0]["total_ns"].as_u64() >= rows[1]["total_ns"].as_u64());
    assert_eq!(
        top_whole["rows_not_shown"].as_u64().unwrap() + 2,
        per_op.len() as u64,
        "every other opcode left out and counted: {top_whole}"
    );
    assert!(top_out.summary["kernel_aggregation"].is_object());
    assert!(
        pid_out.summary["kernel_aggregation"].is_null(),
        "--by pid counts from events"
    );

    // `report --by comm,op` on the recording made meanwhile: the same rows.
    assert_nothing_lost(&recorded.summary);
    let out = run_ok(Command::new(bin()).args([
        "report",
        recording.to_str().unwrap(),
        "--by",
        "comm,op",
        "--format",
        "json",
    ]));
    let report: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["by"], serde_json::json!(["comm", "opcode"]));
    assert_eq!(by_comm_op(report["rows"].as_array().unwrap()), counts);
    let _ = fs::remove_file(&recording);
}

#[test]
fn keys_other_than_op_and_mount_say_they_count_from_events() {
    let _alone = tracing_alone();
    let ours = Daemon::start("by-events", &[]);
    let mount = ours.path().to_str().unwrap().to_string();
    let run = |by: &str| {
        let out = Command::new(bin())
            .args(["stats", "--by", by, "--duration", "1", "--mount", &mount])
            .output()
            .expect("spawn stats");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let events = run("comm,op");
    let line: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("counts from every request's events"))
        .collect();
    assert_eq!(line.len(), 1, "{events}");
    assert!(
        line[0].starts_with("fusetrace: --by comm,opcode"),
        "{events}"
    );
    let kernel = run("mount,op");
    assert!(
        !kernel.contains("events"),
        "mount,op is counted in the kernel: {kernel}"
    );
    ours.stop();
}

#[test]
fn a_bad_key_is_refused_in_one_line() {
    for verb in [&["stats"][..], &["report", "/nonexistent.trace"][..]] {
        let out = Command::new(bin())
            .args(verb)
            .args(["--by", "comm,bogus"])
            .output()
            .expect("spawn fusetrace");
        assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(
                "unknown key 'bogus': choose from opcode, path, pid, comm, mount, transport, ring_queue (e.g. --by comm,opcode)"
            ),
            "{stderr}"
        );
    }
}

#[test]
fn headless_top_shows_the_busiest_processes_and_files() {
    let _alone = tracing_alone();
    let ours = Daemon::start("by-top", &["--ttl", "600s"]);
    let mount = ours.path().to_str().unwrap().to_string();
    let dd = || {
        let status = Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={mount}/by-top"),
                "bs=4096",
                "count=25",
                "status=none",
            ])
            .status()
            .expect("spawn dd");
        assert!(status.success());
    };
    let frame = top_frame("processes", &mount, dd);
    assert!(frame.contains("per process, last 10s"), "{frame}");
    let header = frame
        .lines()
        .find(|l| l.contains("PID"))
        .unwrap_or_default();
    assert!(
        header.contains("COMMAND") && header.contains("TIME"),
        "{frame}"
    );
    let row = frame
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("dd"))
        .unwrap_or_else(|| panic!("no row of dd:\n{frame}"));
    assert!(
        row.trim_start().starts_with(|c: char| c.is_ascii_digit()),
        "pid first: {row}"
    );

    // Per file: until the tracer fills paths in, the files dd touched
    // show as node numbers on their mount.
    let frame = top_frame("files", &mount, dd);
    assert!(frame.contains("per file, last 10s"), "{frame}");
    assert!(
        frame
            .lines()
            .any(|l| l.trim_start().starts_with("node ") || l.contains(&mount)),
        "{frame}"
    );
    ours.stop();
}
