//! The files fusetrace writes: 0600 whatever the umask, a symbolic link at
//! the output path refused (its target untouched), an existing file
//! replaced only with `--force`; `record --max-size` split into parts that
//! `report` joins into the unsplit recording's numbers; `record -o - |
//! report -`. Against the reference daemon, with real probes.

mod common;

use std::{
    collections::BTreeMap,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use common::*;
use fusetrace::record::format::{EndCounters, Header, Reader, Record, Writer};
use fusetrace_common::{EventKind, FuseEvent};
use serde_json::Value;

/// `fusetrace ARGS` under `umask`.
fn fusetrace_umask(umask: u32, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    cmd.output().expect("spawn fusetrace")
}

fn fusetrace(args: &[&str]) -> Output {
    fusetrace_umask(0o022, args)
}

/// Runs a command that must fail; its stderr, checked to be one line.
fn fails(args: &[&str]) -> String {
    let out = fusetrace(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(stderr.starts_with("fusetrace: error: "), "{stderr}");
    stderr
}

fn succeeds(umask: u32, args: &[&str]) -> Output {
    let out = fusetrace_umask(umask, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A small valid recording: two whole requests on one mount.
fn synthetic_recording(path: &Path) {
    let header = Header {
        start_monotonic_ns: 1_000_000_000,
        start_unix_ns: 1_700_000_000_000_000_000,
        reorder_window_ns: Some(50_000_000),
        ..Header::default()
    };
    let mut w = Writer::new(Vec::new(), &header).unwrap();
    let mut t = 1_000_500_000;
    for unique in [2, 4] {
        for kind in [
            EventKind::Sent,
            EventKind::Taken,
            EventKind::Replied,
            EventKind::Ended,
        ] {
            t += 7_000;
            let ev = FuseEvent {
                ts_ns: t,
                unique,
                connection: 52,
                opcode: 3,
                kind: kind as u8,
                tgid: 100,
                tid: 100,
                ..FuseEvent::default()
            };
            w.write(&Record::Event(ev, None)).unwrap();
        }
    }
    w.write(&Record::End(EndCounters::default())).unwrap();
    std::fs::write(path, w.get_mut()).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every way to write a file, with the path it writes (`{}` in an argument
/// is the output path).
fn writers(dir: &Path, trace: &Path) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = [
        vec!["report", s(trace), "--csv", "{}"],
        vec!["report", s(trace), "--csv", "{}", "--interval", "1ms"],
        vec!["report", s(trace), "--perfetto", "{}"],
        vec!["stats", "--duration", "1s", "--csv", "{}"],
        vec!["record", "--duration", "1s", "-o", "{}"],
        vec!["record", "--duration", "1s", "-o", "{}", "--max-size", "1M"],
    ]
    .iter()
    .map(|a| a.iter().map(|s| s.to_string()).collect())
    .collect();
    // `record --perfetto OUT` refuses OUT before it records.
    let rec = dir.join("never.rec");
    all.push(
        [
            "record",
            "--duration",
            "1s",
            "-o",
            s(&rec),
            "--perfetto",
            "{}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    all
}

fn with_path(args: &[String], path: &Path) -> Vec<String> {
    args.iter().map(|a| a.replace("{}", s(path))).collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn links_are_refused_files_need_force_and_everything_is_private() {
    require_root();
    let dir = Scratch::new("outputs");
    let trace = dir.path().join("in.rec");
    synthetic_recording(&trace);
    // The file a planted link points at, which the test owns.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "mine").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let dangling = dir.path().join("dangling");
    let nowhere = dir.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    let existing = dir.path().join("existing");

    for args in writers(dir.path(), &trace) {
        for force in [false, true] {
            for l in [&link, &dangling] {
                let mut a = with_path(&args, l);
                if force {
                    a.push("--force".into());
                }
                let e = fails(&strs(&a));
                assert!(
                    e.contains(s(l)) && e.contains("symbolic link") && e.contains("--force"),
                    "{a:?}: {e}"
                );
            }
        }
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "mine",
            "{args:?}"
        );
        assert_eq!(mode(&victim), 0o644, "{args:?}");
        assert!(!nowhere.exists(), "{args:?} created the link's target");
        assert!(!dir.path().join("never.rec").exists(), "{args:?}");

        // An existing file: left alone without --force.
        std::fs::write(&existing, "theirs").unwrap();
        let a = with_path(&args, &existing);
        let e = fails(&strs(&a));
        assert_eq!(
            e,
            format!(
                "fusetrace: error: {} {} exists: add --force to replace it",
                match args
                    .iter()
                    .position(|x| x == "{}")
                    .map(|i| args[i - 1].as_str())
                {
                    Some("--csv") => "--csv",
                    Some("--perfetto") if args[0] == "record" => "--perfetto",
                    Some("--perfetto") => "Perfetto trace",
                    _ => "recording",
                },
                existing.display()
            ),
            "{a:?}"
        );
        assert_eq!(std::fs::read_to_string(&existing).unwrap(), "theirs");
        std::fs::remove_file(&existing).unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 4, "left behind: {left:?}");

    // The report outputs: created 0600 under any umask (0 would give 0666
    // to a plain create), and replaced (0600 again) with --force.
    let csv = dir.path().join("out.csv");
    let perfetto = dir.path().join("out.pftrace");
    for umask in [0o000, 0o022, 0o077] {
        for (flag, out) in [("--csv", &csv), ("--perfetto", &perfetto)] {
            let _ = std::fs::remove_file(out);
            succeeds(umask, &["report", s(&trace), flag, s(out)]);
            assert_eq!(mode(out), 0o600, "{flag} under umask {umask:o}");
            std::fs::write(out, "theirs").unwrap();
            std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644)).unwrap();
            succeeds(umask, &["report", s(&trace), flag, s(out), "--force"]);
            assert_ne!(std::fs::read(out).unwrap(), b"theirs");
            assert_eq!(mode(out), 0o600, "{flag} --force under umask {umask:o}");
        }
    }
    let (head, _) = std::fs::read_to_string(&csv)
        .unwrap()
        .split_once('\n')
        .map(|(h, r)| (h.to_string(), r.to_string()))
        .unwrap();
    assert!(head.starts_with("mount,opcode,stage"), "{head}");

    // The man pages and completions of `assets`.
    let assets = dir.path().join("assets");
    succeeds(0, &["assets", s(&assets)]);
    let mut files = 0;
    for sub in ["man", "completions"] {
        for f in std::fs::read_dir(assets.join(sub)).unwrap() {
            let f = f.unwrap().path();
            assert_eq!(mode(&f), 0o600, "{}", f.display());
            files += 1;
        }
    }
    assert!(files > 10, "{files} asset files");
    let e = fails(&["assets", s(&assets)]);
    assert!(e.contains("exists: add --force"), "{e}");
    succeeds(0o022, &["assets", s(&assets), "--force"]);

    // -o - takes no rotation and no --perfetto; report reads `-` once.
    let e = fails(&["record", "-o", "-", "--max-size", "1M", "--duration", "1s"]);
    assert!(e.contains("--max-size"), "{e}");
    let e = fails(&[
        "record",
        "-o",
        "-",
        "--perfetto",
        s(&perfetto),
        "--duration",
        "1s",
    ]);
    assert!(e.contains("--perfetto") && e.contains("report -"), "{e}");
    let e = fails(&["report", "-", "-"]);
    assert!(e.contains("more than once"), "{e}");
    let out = fusetrace(&["record", "-o", s(&dir.path().join("x")), "--max-size", "1K"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("less than 64K"));
}

#[test]
fn record_with_force_replaces_a_file_and_makes_it_private() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("outputs-force", &[]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let dir = Scratch::new("outputs-force-out");
    let rec = dir.path().join("run.rec");
    std::fs::write(&rec, "an earlier recording").unwrap();
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        "record",
        "-o",
        s(&rec),
        "--mount",
        &mount,
        "--duration",
        "100ms",
    ];
    let e = fails(&args);
    assert!(e.contains("exists: add --force"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&rec).unwrap(),
        "an earlier recording"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    let mut cmd = tracing_command(&forced);
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    run_ok(&mut cmd);
    assert_eq!(mode(&rec), 0o600);
    let bytes = std::fs::read(&rec).unwrap();
    let mut r = Reader::new(&bytes[..]).expect("a recording");
    while r.next_record().unwrap().is_some() {}
    assert_eq!(r.truncated_at(), None);
    daemon.stop();
}

/// Count and errors per opcode of a whole-run table.
fn counts(ops: &Value) -> BTreeMap<String, (u64, u64)> {
    ops.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["opcode"].as_str().unwrap().to_string(),
                (o["count"].as_u64().unwrap(), o["errors"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn report_json(files: &[&str]) -> (Value, Value, String) {
    let mut args = vec!["report"];
    args.extend(files);
    args.extend(["--format", "json"]);
    let out = succeeds(0o022, &args);
    let (ops, summary) = whole_run(&String::from_utf8_lossy(&out.stdout));
    (
        ops,
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_split_recording_reports_as_the_unsplit_one() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("outputs-split", &["--ttl", "600s"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let dir = Scratch::new("outputs-split-out");
    // An earlier run's part: removed with --force, never joined to this run.
    let split = dir.path().join("split.rec");
    let stale = dir.path().join("split.rec.7");
    std::fs::write(&stale, "stale").unwrap();
    let e = fails(&[
        "record",
        "-o",
        s(&split),
        "--max-size",
        "64K",
        "--duration",
        "1s",
    ]);
    assert!(
        e.contains("split.rec.7 exists") && e.contains("--force"),
        "{e}"
    );
    let whole = dir.path().join("whole.rec");
    let ring = dir.path().join("ring.rec");
    let max = 64 << 10;
    let splitting = Recording::start(&[
        "record",
        "-o",
        s(&split),
        "--max-size",
        "64K",
        "--force",
        "--mount",
        &mount,
        "--format",
        "json",
    ]);
    let unsplit = Recording::start(&[
        "record",
        "-o",
        s(&whole),
        "--mount",
        &mount,
        "--format",
        "json",
    ]);
    let ringed = Recording::start(&[
        "record",
        "-o",
        s(&ring),
        "--max-size",
        "64K",
        "--max-files",
        "2",
        "--mount",
        &mount,
    ]);
    run_ok(Command::new(bin()).args(["load", &mount, "--workload", "mixed", "--duration", "1s"]));
    // Unmounted first: every tracer has seen the same requests when it stops.
    daemon.stop();
    let (split_out, split_said) = splitting.stop();
    let (whole_out, _) = unsplit.stop();
    let (_, ring_said) = ringed.stop();
    assert!(
        split_said.contains("removed 1 file of an earlier recording"),
        "{split_said}"
    );
    let (split_ops, split_summary) = whole_run(&split_out);
    assert_nothing_lost(&split_summary);
    let whole_summary = whole_run(&whole_out).1;
    assert_nothing_lost(&whole_summary);
    // (split.rec.7 may be this run's own part by now: every split.rec*
    // is read below as a part of one run.)
    assert_ne!(std::fs::read(&stale).ok(), Some(b"stale".to_vec()));

    // The parts: FILE, FILE.1... each at most --max-size, each a recording
    // with one run's id and its index; one line each on stderr.
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("split.rec")
        })
        .collect();
    parts.sort(); // as a shell's glob: split.rec.10 before split.rec.2
    assert!(parts.len() >= 12, "only {} parts", parts.len());
    let mut runs = std::collections::BTreeSet::new();
    let mut indices = Vec::new();
    for p in &parts {
        let bytes = std::fs::read(p).unwrap();
        assert!(
            bytes.len() as u64 <= max,
            "{} is {} bytes",
            p.display(),
            bytes.len()
        );
        assert_eq!(mode(p), 0o600);
        let part = Reader::new(&bytes[..])
            .unwrap()
            .header
            .part
            .expect("a part");
        runs.insert(part.run);
        indices.push(part.index);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let expected = if part.index == 0 {
            "split.rec".to_string()
        } else {
            format!("split.rec.{}", part.index)
        };
        assert_eq!(name, expected);
    }
    assert_eq!(runs.len(), 1);
    indices.sort();
    assert_eq!(indices, (0..parts.len() as u32).collect::<Vec<_>>());
    let switched = split_said
        .lines()
        .filter(|l| l.starts_with("fusetrace: recording to "))
        .count();
    assert_eq!(switched, parts.len(), "{split_said}");

    // Together (in the glob's order): exactly what the splitting recorder
    // printed live, and the unsplit recording's counts.
    let names: Vec<&str> = parts.iter().map(|p| s(p)).collect();
    let (ops, summary, stderr) = report_json(&names);
    assert_eq!(ops, split_ops, "joined parts vs the live run");
    assert_eq!(summary, split_summary);
    assert!(!stderr.contains("no end record"), "{stderr}");
    let (whole_ops, whole_reported, _) = report_json(&[s(&whole)]);
    assert_eq!(counts(&ops), counts(&whole_ops));
    assert_eq!(summary["requests"], whole_reported["requests"]);
    // Requests crossed from part to part (a request in flight at some
    // switch is all but certain under this load): alone, no part sees all
    // four points of them; together they are whole.
    let mut alone = 0;
    for p in &parts {
        let (_, part_summary, stderr) = report_json(&[s(p)]);
        alone += part_summary["fully_observed"].as_u64().unwrap();
        assert!(
            !stderr.contains("corrupt") && !stderr.contains("mid-record"),
            "{}: {stderr}",
            p.display()
        );
    }
    assert!(
        alone < summary["fully_observed"].as_u64().unwrap(),
        "fully observed in the parts alone {alone} vs together {summary}"
    );

    // --max-files 2: the newest two parts are left, and said so.
    let rings: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ring.rec")
        })
        .collect();
    assert_eq!(rings.len(), 2, "{rings:?}");
    assert!(ring_said.contains("(--max-files)"), "{ring_said}");
    let names: Vec<&str> = rings.iter().map(|p| s(p)).collect();
    let (_, _, stderr) = report_json(&names);
    assert!(stderr.contains("without the part before it"), "{stderr}");
}

/// A `fusetrace record` run whose stdout and stderr are read to their
/// end (the rotation lines come after the `tracing` line).
struct Recording {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: std::sync::mpsc::Receiver<String>,
    said: Vec<String>,
}

impl Recording {
    /// Starts `fusetrace ARGS`, its stdout read here or (`-o -`) handed
    /// to the caller; returns once its probes are attached.
    fn start(args: &[&str]) -> Recording {
        let mut child = tracing_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fusetrace record");
        let stdout = (!args.contains(&"-")).then(|| {
            let mut out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut out, &mut s).unwrap();
                s
            })
        });
        let stderr = line_channel(child.stderr.take().unwrap());
        let said = wait_for_line_within(&stderr, "fusetrace: tracing", "record", START_TIMEOUT);
        Recording {
            child,
            stdout,
            stderr,
            said,
        }
    }

    /// Ctrl-C; what it printed on stdout (unless `-o -`) and stderr.
    fn stop(mut self) -> (String, String) {
        signal(&self.child, libc::SIGINT);
        let status = self.child.wait().unwrap();
        // Until the pipes close: the recorder alone holds them.
        self.said.extend(self.stderr.iter());
        let said = self.said.join("\n");
        assert!(status.success(), "record exited with {status}: {said}");
        let stdout = self.stdout.map(|t| t.join().unwrap()).unwrap_or_default();
        (stdout, said)
    }
}

#[test]
fn record_to_stdout_piped_into_report_from_stdin() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("outputs-pipe", &["--ttl", "600s"]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let dir = Scratch::new("outputs-pipe-out");
    let file = dir.path().join("file.rec");
    let mut piped = Recording::start(&["record", "-o", "-", "--mount", &mount, "--format", "json"]);
    let report = Command::new(bin())
        .args(["report", "-", "--format", "json"])
        .stdin(Stdio::from(piped.child.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn report -");
    let beside = Recording::start(&[
        "record",
        "-o",
        s(&file),
        "--mount",
        &mount,
        "--format",
        "json",
    ]);
    run_ok(Command::new(bin()).args(["load", &mount, "--workload", "mixed", "--duration", "1s"]));
    daemon.stop();
    let (_, said) = piped.stop();
    let reported = report.wait_with_output().unwrap();
    assert!(
        reported.status.success(),
        "report -: {}",
        String::from_utf8_lossy(&reported.stderr)
    );
    let beside = whole_run(&beside.stop().0).1;

    // The whole-run stats went to stderr, out of the stream: report -
    // read a clean recording and prints exactly them.
    let (live_ops, live_summary) = whole_run(&said);
    assert_nothing_lost(&live_summary);
    let (ops, summary) = whole_run(&String::from_utf8_lossy(&reported.stdout));
    assert_eq!(ops, live_ops);
    assert_eq!(summary, live_summary);
    // The file recording beside it: the same requests.
    assert_nothing_lost(&beside);
    let (file_ops, file_summary, _) = report_json(&[s(&file)]);
    assert_eq!(counts(&ops), counts(&file_ops));
    assert_eq!(summary["requests"], file_summary["requests"]);
}
