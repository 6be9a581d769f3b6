//! `record --perfetto` / `report --perfetto` and `report --requests`: a
//! recording of the reference daemon under load, its Perfetto export read
//! back by Perfetto's own compiled protos (tests/perfetto_read.py, in the
//! venv `cargo xtask setup` makes), compared with the recording's requests
//! one by one.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use common::*;
use serde_json::Value;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/py/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (it installs Perfetto's protos)",
        p.display()
    );
    p
}

/// The trace at `pf` as Perfetto's own protos read it
/// (tests/perfetto_read.py): `{"slices": [...], "counters": {...}}`.
fn read_back(pf: &Path) -> Value {
    let read = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/perfetto_read.py"))
        .arg(pf)
        .output()
        .expect("run python");
    assert!(
        read.status.success(),
        "Perfetto's reader rejected the trace: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    serde_json::from_slice(&read.stdout).unwrap()
}

/// `report FILE --requests --format json ARGS`: the request records.
fn requests(trace: &str, args: &[&str]) -> Vec<Value> {
    let out = run_ok(
        Command::new(bin())
            .args(["report", trace, "--requests", "--format", "json"])
            .args(args),
    );
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v.get("summary").is_none())
        .collect()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn perfetto_export_matches_the_recording_request_by_request() {
    require_root();
    let daemon = Daemon::start("perfetto", &["--threads", "2", "--latency", "READ=2ms"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let out = Scratch::new("perfetto-out");
    let trace = out.path().join("run.trace");
    let pf = out.path().join("run.pftrace");
    let (trace_s, pf_s) = (trace.to_str().unwrap(), pf.to_str().unwrap());
    let recorder = Tracer::start(&[
        "record",
        "-o",
        trace_s,
        "--mount",
        &mount,
        "--perfetto",
        pf_s,
        "--format",
        "json",
    ]);
    run_ok(Command::new(bin()).args([
        "load",
        &mount,
        "--workload",
        "mixed",
        "--ops",
        "1500",
        "--jobs",
        "2",
    ]));
    // Nothing can start on the mount once it is gone: nothing in flight
    // when the recorder stops.
    daemon.stop();
    let recorded = recorder.stop();
    assert_nothing_lost(&recorded.summary);
    assert!(
        recorded.stderr.contains("requests as slices to"),
        "{}",
        recorded.stderr
    );

    let recs = requests(trace_s, &[]);
    let drawn: Vec<&Value> = recs
        .iter()
        .filter(|r| !r["sent_at_ns"].is_null() && !r["ended_at_ns"].is_null())
        .collect();
    assert!(drawn.len() > 1000, "too few requests: {}", drawn.len());

    let pft = read_back(&pf);
    let slices = pft["slices"].as_array().unwrap();

    // Top-level slices by (unique, start): the request's on its requester
    // thread (it has stage children), the daemon's on the daemon thread.
    let mut req_slices: HashMap<(u64, u64), &Value> = HashMap::new();
    let mut daemon_slices: HashMap<(u64, u64), &Value> = HashMap::new();
    for s in slices.iter().filter(|s| s["name"] != "write(2)") {
        let key = (u(&s["args"]["unique"]), u(&s["ts"]));
        let map = if s["children"].as_array().unwrap().is_empty() {
            &mut daemon_slices
        } else {
            &mut req_slices
        };
        assert!(map.insert(key, s).is_none(), "two slices for {key:?}");
    }
    assert_eq!(req_slices.len(), drawn.len(), "one slice per request");

    let mut per_op: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &drawn {
        let key = (u(&r["unique"]), u(&r["sent_at_ns"]));
        let s = req_slices
            .get(&key)
            .unwrap_or_else(|| panic!("no slice for request {r}"));
        per_op
            .entry(r["opcode"].as_str().unwrap().into())
            .or_default()
            .0 += 1;
        per_op
            .entry(s["name"].as_str().unwrap().into())
            .or_default()
            .1 += 1;
        assert_eq!(u(&s["dur"]), u(&r["total_ns"]), "total of {r}");
        // Background requests (RELEASE, writeback) have no requester: the
        // thread that sent them stands in.
        let thread = if r["requester_tid"].is_null() {
            &r["sender_tid"]
        } else {
            &r["requester_tid"]
        };
        assert_eq!(&s["tid"], thread, "requester thread of {r}");
        assert_eq!(s["args"]["mount"], r["mount"]);
        let children: HashMap<&str, &Value> = s["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c))
            .collect();
        for (stage, field) in [
            ("queue_wait", "queue_wait_ns"),
            ("daemon_service", "daemon_service_ns"),
            ("completion", "completion_ns"),
        ] {
            assert_eq!(
                children.get(stage).map(|c| u(&c["dur"])),
                r[field].as_u64(),
                "{stage} of {r}"
            );
        }
        // The daemon thread's slice, and the flow requester -> daemon ->
        // completion through it.
        let d = daemon_slices
            .get(&(u(&r["unique"]), u(&r["taken_at_ns"])))
            .unwrap_or_else(|| panic!("no daemon slice for {r}"));
        assert_eq!(d["tid"], r["daemon_tid"], "daemon thread of {r}");
        assert_eq!(u(&d["dur"]), u(&r["daemon_service_ns"]));
        let flow = &children["queue_wait"]["flow_ids"];
        assert_eq!(flow.as_array().unwrap().len(), 1, "{r}");
        assert_eq!(&d["flow_ids"], flow, "flow into the daemon of {r}");
        assert_eq!(
            &children["completion"]["terminating_flow_ids"], flow,
            "flow back to the requester of {r}"
        );
        if r["opcode"] == "READ" {
            assert!(
                u(&r["daemon_service_ns"]) >= 2_000_000,
                "injected latency: {r}"
            );
        }
    }
    for (op, (recorded, exported)) in &per_op {
        assert_eq!(recorded, exported, "{op}: recorded vs exported slices");
    }

    // Counters: at every sample, requests in flight equal the request
    // slices open then (begun at or before it, not yet ended); the
    // per-second counts add up to every request.
    let mut starts: Vec<u64> = drawn.iter().map(|r| u(&r["sent_at_ns"])).collect();
    let mut ends: Vec<u64> = drawn.iter().map(|r| u(&r["ended_at_ns"])).collect();
    starts.sort_unstable();
    ends.sort_unstable();
    let counters = pft["counters"].as_object().unwrap();
    let in_flight = counters[&format!("{mount} requests in flight")]
        .as_array()
        .unwrap();
    // A sample per change, but changes at the same nanosecond (a request
    // ending as the next begins) make one: at least one per request.
    assert!(in_flight.len() >= drawn.len(), "{}", in_flight.len());
    for sample in in_flight {
        let (t, v) = (u(&sample[0]), sample[1].as_i64().unwrap());
        let open = starts.partition_point(|&s| s <= t) - ends.partition_point(|&e| e <= t);
        assert_eq!(v, open as i64, "in flight at {t}");
    }
    let per_second: i64 = counters[&format!("{mount} requests ended per second")]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1].as_i64().unwrap())
        .sum();
    assert_eq!(per_second, drawn.len() as i64);

    // report --perfetto writes the same trace as record --perfetto.
    let again = out.path().join("again.pftrace");
    run_ok(Command::new(bin()).args(["report", trace_s, "--perfetto", again.to_str().unwrap()]));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&pf).unwrap());
}

#[test]
fn report_requests_filters_by_op_latency_pid_and_time() {
    require_root();
    let daemon = Daemon::start("requests", &["--latency", "READ=3ms"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let out = Scratch::new("requests-out");
    let trace = out.path().join("run.trace");
    let trace_s = trace.to_str().unwrap();
    let recorder = Tracer::start(&["record", "-o", trace_s, "--mount", &mount]);
    run_ok(Command::new(bin()).args(["load", &mount, "--workload", "mixed", "--ops", "600"]));
    daemon.stop();
    recorder.stop();

    let all = requests(trace_s, &[]);
    let reads: Vec<&Value> = all.iter().filter(|r| r["opcode"] == "READ").collect();
    assert!(!reads.is_empty());
    // --op and --min: the READs (3 ms in the daemon) and nothing faster.
    let slow = requests(trace_s, &["--op", "READ", "--min", "3ms"]);
    assert_eq!(slow.len(), reads.len());
    assert!(slow.iter().all(|r| r["opcode"] == "READ"));
    assert!(requests(trace_s, &["--min", "1h"]).is_empty());
    // --pid: the load's requests, by the pid the recording gives them.
    let pid = all
        .iter()
        .find_map(|r| r["requester_pid"].as_u64())
        .unwrap();
    let of_pid = requests(trace_s, &["--pid", &pid.to_string()]);
    let expected = all
        .iter()
        .filter(|r| {
            r["requester_pid"].as_u64() == Some(pid) || r["requester_tid"].as_u64() == Some(pid)
        })
        .count();
    assert_eq!(of_pid.len(), expected);
    // --since and --until split the recording without loss or overlap.
    // (FORGETs have no send: the middle request that has one.)
    let sent: Vec<u64> = all
        .iter()
        .filter_map(|r| r["sent_at_ns"].as_u64())
        .collect();
    let mid = sent[sent.len() / 2];
    let header_start = recording_start(&trace);
    let cut = format!("{}ns", mid - header_start);
    let before = requests(trace_s, &["--until", &cut]);
    let after = requests(trace_s, &["--since", &cut]);
    assert_eq!(before.len() + after.len(), all.len());
    assert!(!before.is_empty() && !after.is_empty());
    // Text lines, one per request (plus the header line).
    let text = run_ok(Command::new(bin()).args(["report", trace_s, "--requests", "--op", "READ"]));
    assert_eq!(text.lines().count(), reads.len() + 1, "{text}");
    // --pid without --requests is refused in one line.
    let bad = Command::new(bin())
        .args(["report", trace_s, "--pid", "1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--requests"), "{err}");
}

/// Recorded with `--app-writes`: on a writeback-cache mount, 32 small
/// write(2)s of one file go out in the WRITE requests of close(); each
/// write's slice has a flow to a WRITE request slice of the same file whose
/// byte range covers it.
#[test]
fn application_writes_link_to_the_write_requests_that_carried_them() {
    app_writes_link_to_their_write_requests("perfetto-wb", &["--writeback-cache"]);
}

/// The same write-through: each write(2) sends its WRITE inside the call,
/// which ends before the write(2)'s own event arrives.
#[test]
fn write_through_application_writes_link_to_their_write_requests() {
    app_writes_link_to_their_write_requests("perfetto-wt", &[]);
}

fn app_writes_link_to_their_write_requests(name: &str, daemon_args: &[&str]) {
    use std::{io::Write, os::unix::fs::MetadataExt};
    require_root();
    let daemon = Daemon::start(name, daemon_args);
    let mount = daemon.path().to_str().unwrap().to_string();
    let out = Scratch::new(&format!("{name}-out"));
    let trace = out.path().join("run.trace");
    let pf = out.path().join("run.pftrace");
    let recorder = Tracer::start(&[
        "record",
        "-o",
        trace.to_str().unwrap(),
        "--app-writes",
        "--mount",
        &mount,
        "--perfetto",
        pf.to_str().unwrap(),
    ]);
    let path = daemon.path().join("written");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..32u8 {
        f.write_all(&[i; 128]).unwrap();
    }
    let node = f.metadata().unwrap().ino();
    drop(f);
    daemon.stop();
    let recorded = recorder.stop();
    assert!(
        recorded
            .stderr
            .contains("32 application writes drawn, 32 of them linked"),
        "{}",
        recorded.stderr
    );
    let pft = read_back(&pf);
    let slices = pft["slices"].as_array().unwrap();
    let writes: Vec<&Value> = slices.iter().filter(|s| s["name"] == "write(2)").collect();
    assert_eq!(writes.len(), 32);
    let requests: Vec<&Value> = slices.iter().filter(|s| s["name"] == "WRITE").collect();
    for w in &writes {
        let (pos, len) = (u(&w["args"]["pos"]), u(&w["args"]["len"]));
        let flows = w["flow_ids"].as_array().unwrap();
        assert!(!flows.is_empty(), "{w}");
        for id in flows {
            let to = requests
                .iter()
                .find(|r| r["terminating_flow_ids"].as_array().unwrap().contains(id))
                .unwrap_or_else(|| panic!("flow {id} of {w} ends at no WRITE"));
            assert_eq!(u(&to["args"]["node"]), node, "{to}");
            let (off, size) = (u(&to["args"]["offset"]), u(&to["args"]["size"]));
            assert!(off <= pos && pos + len <= off + size, "{w} not in {to}");
            assert!(
                u(&to["ts"]) >= u(&w["ts"]),
                "WRITE before the write(2): {to}"
            );
        }
    }
    // One recording always converts to the same bytes.
    let again = out.path().join("again.pftrace");
    run_ok(Command::new(bin()).args([
        "report",
        trace.to_str().unwrap(),
        "--perfetto",
        again.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&pf).unwrap());
}

/// The recording's start (its header), for `--since` / `--until`.
fn recording_start(path: &Path) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    fusetrace::record::format::Reader::new(std::io::BufReader::new(file))
        .unwrap()
        .header
        .start_monotonic_ns
}

#[test]
fn bad_input_to_the_export_is_one_line_and_leaves_no_file() {
    let dir = Scratch::new("perfetto-bad");
    let garbage = dir.path().join("garbage.trace");
    std::fs::write(&garbage, b"not a recording at all, just text").unwrap();
    let out = dir.path().join("out.pftrace");
    for (args, says) in [
        (
            vec![
                "report",
                garbage.to_str().unwrap(),
                "--perfetto",
                out.to_str().unwrap(),
            ],
            "garbage.trace",
        ),
        (
            vec![
                "report",
                "/nonexistent/run.trace",
                "--perfetto",
                out.to_str().unwrap(),
            ],
            "/nonexistent/run.trace",
        ),
        (
            vec![
                "report",
                garbage.to_str().unwrap(),
                "--perfetto",
                out.to_str().unwrap(),
                "--requests",
            ],
            "--requests",
        ),
    ] {
        let o = Command::new(bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
}
