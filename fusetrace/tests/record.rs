//! `fusetrace record`, `fusetrace report` and the CSV export: round trip
//! against a live run on the reference daemon, cut-off and corrupt files,
//! bad paths.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Output},
};

use common::*;
use fusetrace::record::format::{
    ConnectionInfo, EndCounters, Header, Reader, Record, RecordedFilter, Writer, read_all,
};
use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FuseEvent};
use hdrhistogram::Histogram;
use serde_json::Value;

fn fusetrace(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("spawn fusetrace")
}

/// Runs a command that must fail; returns its stderr, checked to be one line.
fn fails(args: &[&str]) -> String {
    let out = fusetrace(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn whole_run_of(out: &TraceOutput) -> Value {
    out.records
        .iter()
        .find(|v| v["period"] == "whole run")
        .expect("whole-run line")["ops"]
        .clone()
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut r = csv::Reader::from_path(path).expect("CSV parses");
    let head: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.expect("CSV row parses");
            head.iter()
                .cloned()
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect();
    (head, rows)
}

fn num(row: &BTreeMap<String, String>, col: &str) -> u64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?} is not a plain number", row[col]))
}

#[test]
fn report_of_a_recording_gives_the_live_numbers() {
    let _alone = tracing_alone();
    // A long attribute timeout: the second tracer's `--mount` stat is
    // answered from the cache instead of sending a GETATTR that only the
    // first tracer would see.
    let daemon = Daemon::start("record", &["--ttl", "600s"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let out = Scratch::new("record-out");
    let trace = out.path().join("run.trace");
    let live_buckets = out.path().join("live-buckets.csv");
    let trace_s = trace.to_str().unwrap();
    let recorder = Tracer::start(&[
        "record", "-o", trace_s, "--mount", &mount, "--format", "json",
    ]);
    // --from-events: the event pipeline the recorder shares (plain
    // `stats` and `stats --stages` count in the kernel).
    let stats = Tracer::start(&[
        "stats",
        "--stages",
        "--from-events",
        "--mount",
        &mount,
        "--format",
        "json",
        "--csv",
        live_buckets.to_str().unwrap(),
        "--csv-layout",
        "buckets",
    ]);
    run_ok(Command::new(bin()).args(["load", &mount, "--workload", "mixed", "--duration", "1s"]));
    // Unmounting first: nothing on this connection can start after it, so
    // both tracers have seen the same requests when they stop.
    daemon.stop();
    let recorded = recorder.stop();
    let live = stats.stop();
    let rec_ops = whole_run_of(&recorded);
    assert_nothing_lost(&recorded.summary);
    assert!(
        rec_ops.as_array().unwrap().len() >= 3,
        "too few opcodes recorded: {rec_ops}"
    );

    // 1. report prints exactly what the recording run printed live.
    let report = run_ok(Command::new(bin()).args(["report", trace_s, "--format", "json"]));
    let (rep_ops, rep_summary) = whole_run(&report);
    assert_eq!(rep_ops, rec_ops, "report differs from the live run");
    assert_eq!(rep_summary, recorded.summary);

    // 2. The concurrent `stats` saw the same requests: counts, errors and
    // samples equal. Its timestamps come from its own probes, which run
    // before or after the recorder's on each hook (microseconds apart), so
    // its percentiles agree only roughly; the exact check is 1. above.
    let live_ops = whole_run_of(&live);
    let key = |o: &Value| (o["mount"].to_string(), o["opcode"].to_string());
    let live_by: BTreeMap<_, _> = live_ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (key(o), o))
        .collect();
    assert_eq!(live_by.len(), rep_ops.as_array().unwrap().len());
    for op in rep_ops.as_array().unwrap() {
        let l = live_by[&key(op)];
        assert_eq!(op["count"], l["count"], "{op} vs {l}");
        assert_eq!(op["errors"], l["errors"], "{op} vs {l}");
        for st in op["stages"].as_array().unwrap() {
            let ls = stage(l, st["stage"].as_str().unwrap());
            assert_eq!(st["samples"], ls["samples"]);
            // The median only: one interrupt between the two tracers'
            // programs moves a single request, which can be a small
            // opcode's p99 or max.
            if st["samples"].as_u64().unwrap() >= 100 {
                let (a, b) = (
                    st["p50_ns"].as_u64().unwrap(),
                    ls["p50_ns"].as_u64().unwrap(),
                );
                assert!(
                    a.abs_diff(b) <= 20_000 + a / 4,
                    "{} {} p50: recorded {a}, live {b}",
                    op["opcode"],
                    st["stage"]
                );
            }
        }
    }

    // 3. The live buckets CSV: counts sum to each stage's samples, to the
    // request count for the total stage, and redraw the live histogram.
    let (head, rows) = csv_rows(&live_buckets);
    assert_eq!(
        head,
        ["mount", "opcode", "stage", "lower_ns", "upper_ns", "count"]
    );
    let mut hists: BTreeMap<(String, String, String), Histogram<u64>> = BTreeMap::new();
    for row in &rows {
        assert!(num(row, "lower_ns") <= num(row, "upper_ns"));
        hists
            .entry((
                row["mount"].clone(),
                row["opcode"].clone(),
                row["stage"].clone(),
            ))
            .or_insert_with(|| Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap())
            .record_n(num(row, "upper_ns"), num(row, "count"))
            .unwrap();
    }
    for op in live_ops.as_array().unwrap() {
        for st in op["stages"].as_array().unwrap() {
            let k = (
                op["mount"].as_str().unwrap().to_string(),
                op["opcode"].as_str().unwrap().to_string(),
                st["stage"].as_str().unwrap().to_string(),
            );
            let samples = st["samples"].as_u64().unwrap();
            let Some(h) = hists.get(&k) else {
                assert_eq!(samples, 0, "{k:?} has samples but no buckets");
                continue;
            };
            assert_eq!(h.len(), samples, "{k:?}: bucket counts vs samples");
            if k.2 == "total" && !matches!(k.1.as_str(), "FORGET" | "BATCH_FORGET" | "INTERRUPT") {
                assert_eq!(h.len(), op["count"].as_u64().unwrap(), "{k:?}: requests");
            }
            for (q, p) in [(0.5, "p50_ns"), (0.9, "p90_ns"), (0.99, "p99_ns")] {
                assert_eq!(h.value_at_quantile(q), st[p].as_u64().unwrap(), "{k:?} {p}");
            }
            assert_eq!(h.max(), st["max_ns"].as_u64().unwrap(), "{k:?} max");
        }
    }

    // 4. report --csv, summary layout: the same percentiles as report's JSON.
    let summary_csv = out.path().join("summary.csv");
    run_ok(Command::new(bin()).args(["report", trace_s, "--csv", summary_csv.to_str().unwrap()]));
    let (head, rows) = csv_rows(&summary_csv);
    assert_eq!(
        head[..6],
        ["mount", "opcode", "stage", "count", "errors", "samples"]
    );
    let stage_count: usize = rep_ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["stages"].as_array().unwrap().len())
        .sum();
    assert_eq!(rows.len(), stage_count);
    for op in rep_ops.as_array().unwrap() {
        for st in op["stages"].as_array().unwrap() {
            let row = rows
                .iter()
                .find(|r| r["opcode"] == op["opcode"] && r["stage"] == st["stage"])
                .unwrap();
            assert_eq!(row["mount"], op["mount"].as_str().unwrap());
            assert_eq!(num(row, "count"), op["count"].as_u64().unwrap());
            assert_eq!(num(row, "errors"), op["errors"].as_u64().unwrap());
            assert_eq!(num(row, "samples"), st["samples"].as_u64().unwrap());
            if st["samples"] == 0 {
                assert_eq!(row["p50_ns"], "");
                continue;
            }
            for p in ["p50_ns", "p90_ns", "p99_ns", "max_ns"] {
                assert_eq!(num(row, p), st[p].as_u64().unwrap(), "{row:?} {p}");
            }
            assert!(num(row, "min_ns") <= num(row, "p50_ns"));
            assert!(num(row, "p99_ns") <= num(row, "p99_9_ns"));
            assert!(num(row, "p99_9_ns") <= num(row, "max_ns"));
            let mean: f64 = row["mean_ns"].parse().unwrap();
            assert!(mean >= num(row, "min_ns") as f64 && mean <= num(row, "max_ns") as f64);
        }
    }

    // 5. --interval: a timestamp column, several blocks, adding up to the run.
    let series = out.path().join("series.csv");
    run_ok(Command::new(bin()).args([
        "report",
        trace_s,
        "--csv",
        series.to_str().unwrap(),
        "--interval",
        "200ms",
    ]));
    let (head, rows) = csv_rows(&series);
    assert_eq!(head[0], "timestamp_unix_ns");
    let stamps: Vec<u64> = rows.iter().map(|r| num(r, "timestamp_unix_ns")).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps go back"
    );
    let blocks = stamps
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        blocks >= 3,
        "a 1 s load in 200 ms intervals gave {blocks} blocks"
    );
    for op in rep_ops.as_array().unwrap() {
        let sum: u64 = rows
            .iter()
            .filter(|r| r["opcode"] == op["opcode"] && r["stage"] == "total")
            .map(|r| num(r, "count"))
            .sum();
        assert_eq!(sum, op["count"].as_u64().unwrap(), "{}", op["opcode"]);
    }

    // 6. Two recordings merge: every count doubles, percentiles stay.
    let twice = run_ok(Command::new(bin()).args(["report", trace_s, trace_s, "--format", "json"]));
    let (merged, merged_summary) = whole_run(&twice);
    for (m, o) in merged
        .as_array()
        .unwrap()
        .iter()
        .zip(rep_ops.as_array().unwrap())
    {
        assert_eq!(
            m["count"].as_u64().unwrap(),
            2 * o["count"].as_u64().unwrap()
        );
        assert_eq!(stage(m, "total")["p50_ns"], stage(o, "total")["p50_ns"]);
    }
    assert_eq!(
        merged_summary["requests"].as_u64().unwrap(),
        2 * rep_summary["requests"].as_u64().unwrap()
    );

    // 7. The real file cut at every byte of its last record reads back
    // every record before it.
    let bytes = std::fs::read(&trace).unwrap();
    let (_, all, cut) = read_all(&bytes).unwrap();
    assert_eq!(cut, None);
    assert!(matches!(all.last(), Some(Record::End(_))));
    let last_start = last_record_offset(&bytes);
    for len in last_start..bytes.len() as u64 {
        let (_, got, cut) = read_all(&bytes[..len as usize]).unwrap();
        assert_eq!(got.len(), all.len() - 1, "cut at {len}");
        assert_eq!(
            cut,
            (len > last_start).then_some(last_start),
            "cut at {len}"
        );
    }
}

fn last_record_offset(bytes: &[u8]) -> u64 {
    let mut r = Reader::new(bytes).unwrap();
    let mut last = r.offset();
    loop {
        let at = r.offset();
        match r.next_record().unwrap() {
            Some(_) => last = at,
            None => return last,
        }
    }
}

fn header() -> Header {
    Header {
        fusetrace_version: "test".into(),
        kernel_release: "6.18.0".into(),
        hooks: vec!["sent: tp_btf".into()],
        start_monotonic_ns: 1_000_000_000,
        start_unix_ns: 1_700_000_000_000_000_000,
        connections: vec![ConnectionInfo {
            connection: 52,
            mount_point: "/tmp/a mount".into(),
            fs_type: "fuse".into(),
        }],
        filter: RecordedFilter::default(),
        reorder_window_ns: Some(50_000_000),
        part: None,
        fuse_io_uring: None,
    }
}

fn event(kind: EventKind, unique: u64, ts_ns: u64, error: i32) -> FuseEvent {
    FuseEvent {
        kind: kind as u8,
        flags: FLAG_HAS_HEADER,
        connection: 52,
        unique,
        opcode: 15,
        ts_ns,
        error,
        tgid: 4242,
        tid: 4243,
        req_pid: 4243,
        comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
        len: 4096,
        ..Default::default()
    }
}

/// A small recording: two complete READs, an idle tick, a late connection, the end.
fn synthetic() -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &header()).unwrap();
    let mut t = 1_000_500_000;
    for unique in [2, 4] {
        for kind in [
            EventKind::Sent,
            EventKind::Taken,
            EventKind::Replied,
            EventKind::Ended,
        ] {
            t += 7_000;
            w.write(&Record::Event(
                event(kind, unique, t, -(unique as i32)),
                None,
            ))
            .unwrap();
        }
    }
    w.write(&Record::Idle {
        now_ns: t + 99_000_000,
    })
    .unwrap();
    w.write(&Record::Connection(ConnectionInfo {
        connection: 53,
        mount_point: "/mnt/late".into(),
        fs_type: "fuse.bindfs".into(),
    }))
    .unwrap();
    w.write(&Record::Event(event(EventKind::Sent, 6, t + 1, 0), None))
        .unwrap();
    w.write(&Record::End(EndCounters {
        ring_drops: 1,
        read_faults: 2,
        splice_transfers: 3,
        undecodable: 4,
        takes_unresolved: 5,
    }))
    .unwrap();
    w.get_mut().clone()
}

#[test]
fn every_record_reads_back() {
    let bytes = synthetic();
    let (h, recs, cut) = read_all(&bytes).unwrap();
    assert_eq!(h, header());
    assert_eq!(cut, None);
    assert_eq!(recs.len(), 12);
    let Record::Event(ev, _) = &recs[3] else {
        panic!()
    };
    assert_eq!(
        (ev.unique, ev.kind, ev.error),
        (2, EventKind::Ended as u8, -2)
    );
    assert_eq!(ev.ts_ns, 1_000_500_000 + 4 * 7_000);
    assert_eq!(&ev.comm[..4], b"cat\0");
    assert!(matches!(&recs[9], Record::Connection(c) if c.mount_point == "/mnt/late"));
    assert!(matches!(
        recs[11],
        Record::End(EndCounters { undecodable: 4, .. })
    ));
    // Compact: well under half the ring buffer's 88+ bytes per event.
    let body = bytes.len() as u64 - Reader::new(&bytes[..]).unwrap().offset();
    assert!(
        body < 9 * 44,
        "{body} bytes for 9 events and 3 other records"
    );
}

#[test]
fn a_file_cut_anywhere_in_its_last_records_keeps_the_whole_ones() {
    let bytes = synthetic();
    let (_, all, _) = read_all(&bytes).unwrap();
    // Cut inside each of the last three records (end, event, connection).
    let mut ends = vec![bytes.len() as u64];
    let mut r = Reader::new(&bytes[..]).unwrap();
    let mut starts = Vec::new();
    loop {
        let at = r.offset();
        if r.next_record().unwrap().is_none() {
            break;
        }
        starts.push(at);
    }
    ends.extend(starts.iter().rev().take(2));
    for (i, (&start, &end)) in starts.iter().rev().zip(&ends).take(3).enumerate() {
        for len in start..end {
            let (_, got, cut) = read_all(&bytes[..len as usize]).unwrap();
            assert_eq!(got.len(), all.len() - 1 - i, "cut at {len}");
            assert_eq!(cut, (len > start).then_some(start), "cut at {len}");
        }
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn broken_recordings_get_one_clear_line() {
    let dir = Scratch::new("record-bad");
    let good = synthetic();

    let missing = dir.path().join("missing.trace");
    let e = fails(&["report", missing.to_str().unwrap()]);
    assert!(
        e.contains("cannot open recording") && e.contains("No such file"),
        "{e}"
    );

    let e = fails(&["report", dir.path().to_str().unwrap()]);
    assert!(e.contains("is a directory, not a recording"), "{e}");

    let e = fails(&["report", &write_file(dir.path(), "text", b"hello, world\n")]);
    assert!(e.contains("not a fusetrace recording"), "{e}");

    let e = fails(&["report", &write_file(dir.path(), "empty", b"")]);
    assert!(e.contains("inside the header"), "{e}");

    let e = fails(&["report", &write_file(dir.path(), "cut-header", &good[..30])]);
    assert!(e.contains("file ends at byte 30, inside the header"), "{e}");

    let mut future = good.clone();
    future[8] = 3;
    let e = fails(&["report", &write_file(dir.path(), "future", &future)]);
    assert!(
        e.contains("format version 3 at byte 8") && e.contains("newer fusetrace"),
        "{e}"
    );
    // Version 1 (before names) still reads: the same records, no names.
    let mut v1 = good.clone();
    v1[8] = 1;
    let out = fusetrace(&["report", &write_file(dir.path(), "v1", &v1)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A flipped bit in the header JSON: the checksum catches it.
    let mut bad_header = good.clone();
    bad_header[20] ^= 0x01;
    let e = fails(&["report", &write_file(dir.path(), "bad-header", &bad_header)]);
    assert!(
        e.contains("corrupt header at byte 14: checksum mismatch"),
        "{e}"
    );

    // A flipped bit inside the third record: reported at that record's offset.
    let mut r = Reader::new(&good[..]).unwrap();
    r.next_record().unwrap();
    r.next_record().unwrap();
    let third = r.offset();
    let mut bad_record = good.clone();
    bad_record[third as usize + 3] ^= 0x10;
    let e = fails(&["report", &write_file(dir.path(), "bad-record", &bad_record)]);
    assert!(
        e.contains(&format!("corrupt record at byte {third}")),
        "{e}"
    );

    // A cut-off file is reported, with a warning naming the cut.
    let cut = write_file(dir.path(), "cut", &good[..good.len() - 3]);
    let out = fusetrace(&["report", &cut, "--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ends mid-record at byte"), "{stderr}");
    let (ops, summary) = whole_run(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(ops[0]["count"], 2);
    assert_eq!(ops[0]["errors"], 2);
    assert_eq!(ops[0]["mount"], "/tmp/a mount");
    assert_eq!(summary["ring_drops"], 0, "no end record: counters unknown");
    // The whole file has the end record's counters.
    let whole = write_file(dir.path(), "whole", &good);
    let (_, summary) = whole_run(&run_ok(
        Command::new(bin()).args(["report", &whole, "--format", "json"]),
    ));
    assert_eq!(summary["ring_drops"], 1);
    assert_eq!(summary["undecodable"], 4);
}

#[test]
fn bad_output_paths_fail_first_and_leave_nothing() {
    let dir = Scratch::new("record-paths");
    let trace = write_file(dir.path(), "ok.trace", &synthetic());
    let d = dir.path().to_str().unwrap();

    let e = fails(&["report", &trace, "--csv", d]);
    assert!(e.contains("is a directory"), "{e}");
    let nowhere = dir.path().join("no/such/dir/out.csv");
    let e = fails(&["report", &trace, "--csv", nowhere.to_str().unwrap()]);
    assert!(
        e.contains("cannot write --csv") && e.contains("No such file"),
        "{e}"
    );
    // A run that fails after the CSV was opened leaves no CSV behind.
    let csv = dir.path().join("out.csv");
    let missing = dir.path().join("missing.trace");
    fails(&[
        "report",
        &trace,
        missing.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["ok.trace"], "left behind: {left:?}");

    let e = fails(&["record", "-o", d]);
    assert!(e.contains("is a directory"), "{e}");
    let e = fails(&[
        "record",
        "-o",
        dir.path().join("no/such/x.trace").to_str().unwrap(),
    ]);
    assert!(
        e.contains("cannot create recording") && e.contains("No such file"),
        "{e}"
    );
}

/// Deterministic mutations of a valid file (flipped bits, cuts, inserted
/// bytes): the reader returns records or an error, never panics or loops.
/// The cargo-fuzz target (`fusetrace/fuzz`) explores further in CI.
#[test]
fn mutated_files_never_panic_the_reader() {
    let good = synthetic();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            match next() % 3 {
                0 => b[at] ^= 1 << (next() % 8),
                1 => b.insert(at, next() as u8),
                _ => b.truncate(at.max(1)),
            }
        }
        let _ = read_all(&b);
    }
}

/// `fusetrace record ARGS` with stderr read on a thread; returns once its
/// probes are attached.
fn start_recorder(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .arg("record")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fusetrace record");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        match rx.recv_timeout(STEP_TIMEOUT) {
            Ok(line) if line.contains("fusetrace: tracing") => return (child, rx),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fusetrace record never said it was tracing");
            }
        }
    }
}

/// Report on a recording that has no end record: it must succeed, count
/// the requests of its whole records and say what is missing.
fn report_cut_off(trace: &str) -> u64 {
    let out = fusetrace(&["report", trace, "--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "report failed: {stderr}");
    assert!(stderr.contains("has no end record"), "{stderr}");
    let (_, summary) = whole_run(&String::from_utf8_lossy(&out.stdout));
    summary["requests"].as_u64().unwrap()
}

#[test]
fn a_killed_recorder_leaves_a_readable_file() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("record-kill", &[]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let out = Scratch::new("record-kill-out");
    let trace = out.path().join("killed.trace");
    let trace_s = trace.to_str().unwrap();
    let (mut child, _stderr) = start_recorder(&["-o", trace_s, "--mount", &mount]);
    let header_only = std::fs::metadata(&trace).unwrap().len();
    // Load until the recorder has flushed events to the file (it flushes
    // every 200 ms), then kill it without warning.
    let started = std::time::Instant::now();
    while std::fs::metadata(&trace).unwrap().len() < header_only + 10_000 {
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "the recorder never flushed"
        );
        run_ok(Command::new(bin()).args([
            "load",
            &mount,
            "--workload",
            "metadata",
            "--ops",
            "500",
        ]));
    }
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    daemon.stop();
    assert!(report_cut_off(trace_s) > 0);
}

/// Unmounts a scratch tmpfs on drop.
struct Tmpfs<'a>(&'a Path);

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_recorder_with_a_readable_file() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("record-full", &[]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let out = Scratch::new("record-full-out");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(out.path()),
    );
    let _tmpfs = Tmpfs(out.path());
    let trace = out.path().join("full.trace");
    let trace_s = trace.to_str().unwrap();
    let (mut child, stderr) = start_recorder(&["-o", trace_s, "--mount", &mount]);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "the recorder never filled 256 KiB"
        );
        run_ok(Command::new(bin()).args([
            "load",
            &mount,
            "--workload",
            "metadata",
            "--ops",
            "2000",
        ]));
    };
    assert!(!status.success());
    let errors: Vec<String> = stderr.try_iter().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("cannot write recording") && errors[0].contains("No space left"),
        "{errors:?}"
    );
    daemon.stop();
    assert!(report_cut_off(trace_s) > 0);
}
