//! The flags BCC and bpftrace users type (issue 15): `-p` twice,
//! `--comm`, `-c CMD`, `trace --min`. Real mounts of the reference daemon,
//! real probes; each filtered run is compared with an unfiltered one of
//! the same requests, filtered here by what the flag promises.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Child, Command, Stdio},
};

use common::*;
use serde_json::Value;

/// `sh -c 'read _; exec PROGRAM FILE'`: a process whose pid is known
/// before it touches the mount, which it does once a line arrives.
fn waiting(program: &Path, file: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read _; exec '{}' '{}'",
            program.display(),
            file.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

/// Lets a [`waiting`] process go and waits for it.
fn release(mut child: Child) {
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "reader exited with {status}");
}

/// The in-kernel `stats` whole-run counts by opcode.
fn stats_counts(out: &TraceOutput) -> BTreeMap<String, u64> {
    whole_run_by_op(out)
        .iter()
        .map(|(op, o)| (op.clone(), o["count"].as_u64().unwrap()))
        .collect()
}

fn requester_in(r: &Value, pids: &[u32]) -> bool {
    ["requester_pid", "requester_tid"]
        .iter()
        .any(|k| r[*k].as_u64().is_some_and(|p| pids.contains(&(p as u32))))
}

#[test]
fn pid_twice_keeps_both_processes_in_events_and_in_the_kernel() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("flags-pid", &["--ttl", "0s"]);
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    for name in ["a", "b", "c"] {
        fs::write(daemon.path().join(name), name.repeat(5000)).unwrap();
    }
    let cat = Path::new("/bin/cat");
    let readers: Vec<Child> = ["a", "b", "c"]
        .iter()
        .map(|n| waiting(cat, &daemon.path().join(n)))
        .collect();
    let pids: Vec<u32> = readers.iter().map(Child::id).collect();
    let (a, b, c) = (pids[0].to_string(), pids[1].to_string(), pids[2]);
    let all = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    let two = Tracer::start(&[
        "trace", "--format", "json", "--mount", &mount, "-p", &a, "-p", &b,
    ]);
    let counted = Tracer::start(&[
        "stats", "--format", "json", "--mount", &mount, "-p", &a, "--pid", &b,
    ]);
    for r in readers {
        release(r);
    }
    daemon.stop();
    let all = all.stop();
    let two = two.stop();
    let counted = counted.stop();

    let everyone = all.on(conn);
    let expected: Vec<&Value> = everyone
        .iter()
        .copied()
        .filter(|r| requester_in(r, &pids[..2]))
        .collect();
    let expected = count_by_op(&expected);
    assert!(
        expected.contains_key("READ"),
        "the readers read: {expected:?}"
    );
    assert_eq!(
        count_by_op(&two.on(conn)),
        expected,
        "trace -p A -p B (left) vs the unfiltered trace's requests of A and B (right)"
    );
    assert!(
        everyone.iter().any(|r| requester_in(r, &[c])),
        "the third reader's requests were traced unfiltered"
    );
    assert!(
        !two.on(conn).iter().any(|r| requester_in(r, &[c])),
        "the third reader is filtered out"
    );
    assert_nothing_lost(&two.summary);
    assert_eq!(
        stats_counts(&counted),
        expected,
        "stats -p A --pid B, counted in the kernel (left), vs the trace (right)"
    );
}

#[test]
fn comm_keeps_one_programs_requests_compared_as_the_kernel_truncates() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("flags-comm", &["--ttl", "0s"]);
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    fs::write(daemon.path().join("f"), b"x".repeat(10000)).unwrap();
    // The kernel names a task after the file it executes: two names for
    // cat, one longer than the 15 bytes the kernel keeps.
    let bin = Scratch::new("flags-comm-bin");
    let long = bin.path().join("fusetrace-reader-long");
    let other = bin.path().join("other-reader");
    for link in [&long, &other] {
        std::os::unix::fs::symlink("/bin/cat", link).unwrap();
    }
    let file = daemon.path().join("f");
    let readers = vec![
        waiting(&long, &file),
        waiting(&other, &file),
        waiting(&long, &file),
    ];
    let all = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    let named = Tracer::start(&[
        "trace",
        "--format",
        "json",
        "--mount",
        &mount,
        "--comm",
        "fusetrace-reader-long",
    ]);
    let counted = Tracer::start(&[
        "stats",
        "--format",
        "json",
        "--mount",
        &mount,
        "--comm",
        "fusetrace-reader-long",
    ]);
    for r in readers {
        release(r);
    }
    daemon.stop();
    let all = all.stop();
    let named = named.stop();
    let counted = counted.stop();

    let everyone = all.on(conn);
    let truncated = "fusetrace-reade";
    let expected: Vec<&Value> = everyone
        .iter()
        .copied()
        .filter(|r| r["requester_comm"] == truncated)
        .collect();
    let expected = count_by_op(&expected);
    assert!(expected.contains_key("READ"), "{expected:?}");
    let got = named.on(conn);
    assert!(got.iter().all(|r| r["requester_comm"] == truncated));
    assert_eq!(
        count_by_op(&got),
        expected,
        "trace --comm (left) vs the unfiltered trace's requests of that name (right)"
    );
    assert!(
        everyone
            .iter()
            .any(|r| r["requester_comm"] == "other-reader"),
        "the other program was traced unfiltered"
    );
    assert_eq!(
        stats_counts(&counted),
        expected,
        "stats --comm, counted in the kernel (left), vs the trace (right)"
    );
}

/// Where `-c` makes its cgroups: fusetrace's own cgroup v2 directory.
fn leftover_cgroups() -> Vec<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            (f[dash + 1] == "cgroup2").then(|| f[4].to_string())
        })
        .expect("a cgroup2 mount");
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    fs::read_dir(Path::new(&mount).join(rel))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.starts_with("fusetrace-").then_some(name)
        })
        .collect()
}

#[test]
fn command_traces_exactly_its_own_requests_and_passes_its_exit_status() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("flags-cmd", &["--ttl", "0s"]);
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    fs::write(daemon.path().join("f"), b"y".repeat(20000)).unwrap();
    let scratch = Scratch::new("flags-cmd");
    // Someone else works on the same mount all along (paced, so the
    // unfiltered tracer keeps up in a debug build).
    let mut bystander = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while :; do stat {mount}/f > /dev/null; ls {mount} > /dev/null; sleep 0.01; done"
        ))
        .spawn()
        .unwrap();
    let all = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    // The command: a shell whose two children read and list the mount;
    // each child writes its pid first (`$!` is the pid that execs cat).
    // Run under `trace -c`, then under in-kernel `stats -c`.
    let run = |verb: &str, pids_file: &Path| {
        let script = format!(
            "cat {m}/f > /dev/null & echo $! >> {p}; ls -l {m} > /dev/null & echo $! >> {p}; wait; exit 7",
            m = mount,
            p = pids_file.display()
        );
        let out = Command::new(bin())
            .args([verb, "--format", "json", "--mount", &mount, "-c"])
            .args(["sh", "-c", &script])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(7), "the command's status: {stderr}");
        let parsed = TraceOutput::parse(String::from_utf8_lossy(&out.stdout).into_owned(), stderr);
        let pids: Vec<u32> = fs::read_to_string(pids_file)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "two children ran");
        (parsed, pids)
    };
    let (traced, pids) = run("trace", &scratch.path().join("trace-pids"));
    let (counted, stats_pids) = run("stats", &scratch.path().join("stats-pids"));
    // Its work is not checked: it only has to have been there.
    let _ = bystander.kill();
    let _ = bystander.wait();
    daemon.stop();
    let all = all.stop();

    // The independent count: the unfiltered trace's requests sent by the
    // command's children (single-threaded: thread id = pid; the shell
    // itself does not touch the mount), background ones they sent too.
    let sent_by = |pids: &[u32]| {
        let theirs: Vec<&Value> = all
            .on(conn)
            .into_iter()
            .filter(|r| {
                r["sender_tid"]
                    .as_u64()
                    .is_some_and(|p| pids.contains(&(p as u32)))
            })
            .collect();
        count_by_op(&theirs)
    };
    let expected = sent_by(&pids);
    for op in ["READ", "READDIR", "OPEN"] {
        assert!(expected.contains_key(op), "no {op}: {expected:?}");
    }
    assert_eq!(
        count_by_op(&traced.on(conn)),
        expected,
        "trace -c (left) vs the unfiltered trace's requests of the command's processes (right)"
    );
    assert_nothing_lost(&traced.summary);
    assert_eq!(
        stats_counts(&counted),
        sent_by(&stats_pids),
        "stats -c, counted in the kernel (left), vs the unfiltered trace (right)"
    );
    let theirs: u64 = expected.values().sum();
    assert!(
        all.on(conn).len() as u64 > theirs + 100,
        "the bystander's requests were there to leave out"
    );
    assert!(leftover_cgroups().is_empty(), "{:?}", leftover_cgroups());
}

#[test]
fn command_killed_by_a_signal_exits_as_a_shell_says_and_stats_takes_it() {
    let _alone = tracing_alone();
    let out = Command::new(bin())
        .args([
            "stats",
            "--format",
            "json",
            "-c",
            "sh",
            "-c",
            "kill -TERM $$",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"summary\""));
    assert!(leftover_cgroups().is_empty(), "{:?}", leftover_cgroups());
}

#[test]
fn ctrl_c_stops_the_command_and_removes_its_cgroup() {
    let _alone = tracing_alone();
    // Not `Tracer::start`: a backend it appends would go to the command.
    let mut child = Command::new(bin())
        .args(["trace", "-c", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = line_channel(child.stderr.take().unwrap());
    wait_for_line_within(&stderr, "fusetrace: tracing", "fusetrace", START_TIMEOUT);
    assert_eq!(leftover_cgroups().len(), 1, "the command's cgroup exists");
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    // The command got SIGTERM from the tracer.
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    assert!(status.signal().is_none());
    assert!(leftover_cgroups().is_empty(), "{:?}", leftover_cgroups());
}

#[test]
fn min_keeps_the_slow_requests_only_and_drops_every_fast_one() {
    let _alone = tracing_alone();
    let daemon = Daemon::start(
        "flags-min",
        &["--latency", "READ=20ms", "--direct-io", "--ttl", "0s"],
    );
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    fs::write(daemon.path().join("f"), vec![1u8; 16 * 4096]).unwrap();
    let all = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    let slow = Tracer::start(&[
        "trace", "--format", "json", "--mount", &mount, "--min", "10ms",
    ]);
    let before = daemon.snapshot();
    for _ in 0..2 {
        let data = fs::read(daemon.path().join("f")).unwrap();
        assert_eq!(data.len(), 16 * 4096);
        for _ in 0..20 {
            fs::metadata(daemon.path().join("f")).unwrap();
        }
    }
    let served = daemon.stop_since(&before);
    let all = all.stop();
    let slow = slow.stop();

    let reads = served["READ"];
    assert!(reads >= 2, "READs served: {served:?}");
    let got = slow.on(conn);
    assert_eq!(
        count_by_op(&got),
        BTreeMap::from([("READ".to_string(), reads)]),
        "exactly the served READs, no fast request: {got:?}"
    );
    let expected: BTreeSet<u64> = all
        .on(conn)
        .iter()
        .filter(|r| r["total_ns"].as_u64().unwrap_or(0) >= 10_000_000)
        .map(|r| r["unique"].as_u64().unwrap())
        .collect();
    let seen: BTreeSet<u64> = got.iter().map(|r| r["unique"].as_u64().unwrap()).collect();
    assert_eq!(
        seen, expected,
        "the same requests as the unfiltered trace's slow ones"
    );
    for r in &got {
        assert!(fully_observed(r), "every stage of a slow request: {r}");
        assert!(
            r["daemon_service_ns"].as_u64().unwrap() >= 20_000_000,
            "{r}"
        );
        assert!(r["requester_pid"].as_u64().is_some(), "{r}");
    }
    let fast = all
        .on(conn)
        .iter()
        .filter(|r| r["total_ns"].as_u64().is_some_and(|t| t < 10_000_000))
        .count() as u64;
    assert!(fast >= 40, "fast requests there to drop: {fast}");
    let s = &slow.summary;
    assert_eq!(s["slow_only"]["min_ns"].as_u64(), Some(10_000_000), "{s}");
    // Timed in the kernel, machine-wide: at least our 40 stats' requests.
    assert!(
        s["slow_only"]["timed"].as_u64().unwrap() >= reads + 40,
        "{s}"
    );
    assert_eq!(s["ring_drops"].as_u64(), Some(0), "{s}");
}

#[test]
fn bad_flag_values_get_one_clear_line() {
    // Alone: it looks for cgroups left behind.
    let _alone = tracing_alone();
    let many: Vec<String> = (1..=9)
        .flat_map(|p| ["-p".to_string(), p.to_string()])
        .collect();
    let mut over_cap = vec!["stats".to_string(), "--duration".into(), "5s".into()];
    over_cap.extend(many);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (over_cap, "at most 8 -p/--pid values"),
        (
            ["trace", "--min", "fast"].map(String::from).to_vec(),
            "invalid value 'fast' for '--min <DURATION>'",
        ),
        (
            ["trace", "-c", "no-such-command-here"]
                .map(String::from)
                .to_vec(),
            "-c: command not found: no-such-command-here",
        ),
        (
            ["trace", "--comm", ""].map(String::from).to_vec(),
            "a command name is not empty",
        ),
        (
            ["trace", "-p", "0"].map(String::from).to_vec(),
            "invalid value '0' for '--pid <PID>'",
        ),
        (
            ["serve", "-c", "true"].map(String::from).to_vec(),
            "-c is for trace, stats, record and top",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        if !stderr.starts_with("error:") {
            // Ours (clap's errors have their usage lines).
            assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        }
    }
    assert!(leftover_cgroups().is_empty(), "{:?}", leftover_cgroups());
}
