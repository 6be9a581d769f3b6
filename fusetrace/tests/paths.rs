//! Paths for node ids, end to end: a bindfs tree with known names (nested
//! directories, a rename, an unlink, a name with a newline and one that is
//! not UTF-8), traced as text and JSON and recorded at once; every request
//! on a node named under trace carries its path, the same in all three.

mod common;

use std::{
    cell::Cell, collections::BTreeMap, ffi::OsStr, fs, io::Write, os::unix::ffi::OsStrExt,
    path::Path, process::Command,
};

use common::*;
use serde_json::Value;

fn path_of(r: &Value) -> Option<&str> {
    r["path"].as_str()
}

/// N from the closing "fusetrace: N requests (..." line on stderr.
fn requests_in_summary(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("fusetrace: ")?
                .split_once(" requests (")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no summary line: {stderr}"))
}

#[test]
fn every_request_carries_its_path_in_trace_json_and_a_recording() {
    require_root();
    again_if_runs_skipped(paths_in_trace_json_and_a_recording);
}

fn paths_in_trace_json_and_a_recording(skipped: &Cell<u64>) {
    let src = Scratch::new("paths-src");
    let mnt = Scratch::new("paths-mnt");
    let rec_dir = Scratch::new("paths-rec");
    fs::create_dir_all(src.path().join("a/b")).unwrap();
    fs::write(src.path().join("a/b/file.txt"), b"nested\n").unwrap();
    fs::write(src.path().join("a/old"), b"to be renamed\n").unwrap();
    fs::write(src.path().join("new\nline"), b"newline\n").unwrap();
    let bad = OsStr::from_bytes(b"bad\xffname");
    fs::write(src.path().join(bad), b"not utf-8\n").unwrap();
    mount_bindfs(src.path(), mnt.path());
    let conn = connection_of(mnt.path());
    let m = mnt.path().to_str().unwrap().to_string();
    let recording = rec_dir.path().join("paths.trace");
    let json = Tracer::start(&["trace", "--format", "json", "--mount", &m]);
    let text = Tracer::start(&["trace", "--mount", &m]);
    let recorder = Tracer::start(&[
        "record",
        "--format",
        "json",
        "--mount",
        &m,
        "-o",
        recording.to_str().unwrap(),
    ]);

    let at = |p: &str| mnt.path().join(p);
    // `top`'s per-file view runs alongside; its last frame is checked below.
    let (frame, top_skipped) = top_frame_and_skips("files", &m, || {
        assert_eq!(fs::read(at("a/b/file.txt")).unwrap(), b"nested\n");
        assert_eq!(fs::read(at("new\nline")).unwrap(), b"newline\n");
        assert_eq!(fs::read(mnt.path().join(bad)).unwrap(), b"not utf-8\n");
        fs::rename(at("a/old"), at("a/b/renamed")).unwrap();
        assert_eq!(fs::read(at("a/b/renamed")).unwrap(), b"to be renamed\n");
        fs::remove_file(at("a/b/renamed")).unwrap();
        fs::create_dir(at("a/c")).unwrap();
        let mut f = fs::File::create(at("a/c/made")).unwrap();
        f.write_all(b"made under trace").unwrap();
        drop(f);
        assert!(fs::metadata(at("a/absent")).is_err());
        run_ok(Command::new("fusermount3").arg("-u").arg(mnt.path()));
    });
    let json = json.stop();
    let text = text.stop();
    let recorded = recorder.stop();
    skipped.set(
        [&json, &text, &recorded]
            .map(|t| skipped_runs(&t.summary))
            .iter()
            .sum::<u64>()
            + top_skipped,
    );
    let ours = json.on(conn);
    assert_nothing_lost(&json.summary);

    // What each kind of request is about.
    let p = |rel: &str| format!("{m}/{rel}");
    let expect: BTreeMap<(&str, String), ()> = [
        ("READ", p("a/b/file.txt")),
        ("OPEN", p("a/b/file.txt")),
        ("LOOKUP", p("a")),
        ("LOOKUP", p("a/b")),
        ("LOOKUP", p("a/b/file.txt")),
        ("READ", p("new\\nline")),
        ("READ", p("bad\\xffname")),
        ("RENAME", format!("{} -> {}", p("a/old"), p("a/b/renamed"))),
        ("UNLINK", p("a/b/renamed")),
        ("MKDIR", p("a/c")),
        ("CREATE", p("a/c/made")),
        ("WRITE", p("a/c/made")),
        ("LOOKUP", p("a/absent")),
    ]
    .into_iter()
    .map(|k| (k, ()))
    .collect();
    for (op, path) in expect.keys() {
        assert!(
            ours.iter()
                .any(|r| r["opcode"] == *op && path_of(r) == Some(path.as_str())),
            "no {op} with path {path:?}: {:?}",
            ours.iter()
                .map(|r| (r["opcode"].as_str(), path_of(r)))
                .collect::<Vec<_>>()
        );
    }
    // Everything was named under trace: no request goes without a path,
    // and every path is one of the tree's (the renamed file's old name
    // while it was in `a`, `(deleted)` once unlinked but still open).
    let known: Vec<String> = [
        "",
        "/a",
        "/a/b",
        "/a/b/file.txt",
        "/a/old",
        "/a/b/renamed",
        "/new\\nline",
        "/bad\\xffname",
        "/a/c",
        "/a/c/made",
        "/a/absent",
    ]
    .iter()
    .map(|rel| format!("{m}{rel}"))
    .collect();
    for r in &ours {
        let Some(path) = path_of(r) else {
            panic!("a request without a path: {r}");
        };
        let plain = path.trim_end_matches(" (deleted)");
        assert!(
            known.iter().any(|k| k == plain) || r["opcode"] == "RENAME",
            "unexpected path {path:?} on {r}"
        );
    }
    assert_eq!(json.summary["paths"]["unnamed_requests"], 0);

    // The text lines end with the same paths, and a name with a newline
    // never breaks one: one line per request. (Each tracer began at its
    // own moment: a tracer's start stats the mount, which the tracers
    // already running see; so counts are compared with each tracer's own.)
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(lines[0].ends_with(" PATH"), "{}", lines[0]);
    assert_eq!(
        (lines.len() - 1) as u64,
        requests_in_summary(&text.stderr),
        "one line per request"
    );
    for (op, path) in expect.keys() {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!(" {op} ")) && l.ends_with(&format!(" {path}"))),
            "no text line for {op} {path}"
        );
    }

    // top's files view: a row per file, the file name kept when the path is
    // shortened, escaped like everywhere else.
    for name in ["file.txt", "made", "new\\nline", "bad\\xffname"] {
        assert!(frame.contains(name), "no row of {name} in top:\n{frame}");
    }
    assert!(!frame.contains("node "), "every file has a path:\n{frame}");

    // The recording's report gives every request the live path.
    assert_nothing_lost(&recorded.summary);
    let report = run_ok(Command::new(bin()).args([
        "report",
        recording.to_str().unwrap(),
        "--requests",
        "--format",
        "json",
    ]));
    let by_unique = |recs: Vec<&Value>| -> BTreeMap<u64, Option<String>> {
        recs.into_iter()
            .filter(|r| r["connection"].as_u64() == Some(conn))
            .map(|r| (r["unique"].as_u64().unwrap(), path_of(r).map(String::from)))
            .collect()
    };
    let reported: Vec<Value> = report
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v.get("summary").is_none())
        .collect();
    let (reported, live) = (
        by_unique(reported.iter().collect()),
        by_unique(ours.clone()),
    );
    assert!(reported.len() >= expect.len(), "{reported:?}");
    for (unique, path) in &reported {
        assert_eq!(
            live.get(unique),
            Some(path),
            "request {unique}: report's path differs from the live trace's"
        );
    }
    assert!(!Path::new(&m).join("a").exists(), "unmounted");
}

#[test]
fn no_paths_reads_no_names_and_says_node_n() {
    require_root();
    let src = Scratch::new("nopaths-src");
    let mnt = Scratch::new("nopaths-mnt");
    fs::create_dir_all(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/f"), b"x").unwrap();
    mount_bindfs(src.path(), mnt.path());
    let conn = connection_of(mnt.path());
    let m = mnt.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--no-paths", "--format", "json", "--mount", &m]);
    assert_eq!(fs::read(mnt.path().join("d/f")).unwrap(), b"x");
    run_ok(Command::new("fusermount3").arg("-u").arg(mnt.path()));
    let out = tracer.stop();
    let ours = out.on(conn);
    let read = ours
        .iter()
        .find(|r| r["opcode"] == "READ")
        .expect("the READ was traced");
    assert!(read["path"].is_null(), "{read}");
    assert_eq!(out.summary["paths"]["named_requests"], 0);
    assert!(out.summary["paths"]["unnamed_requests"].as_u64().unwrap() > 0);
    assert!(
        out.stderr.contains("shown as `node N`"),
        "the closing line says why: {}",
        out.stderr
    );
    // The mount's root needs no name.
    assert!(
        ours.iter()
            .any(|r| r["nodeid"] == 1 && path_of(r) == Some(m.as_str())),
        "{ours:?}"
    );
}
