//! Ctrl-C leaves nothing behind. Alone in its test binary, so no other test's
//! probes are loaded while it counts programs in the kernel.

mod common;

use common::*;
use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// BPF links in the kernel that attach one of our programs. (Links go away
/// when the tracer's file descriptors close; the programs themselves are
/// freed a little later, after an RCU grace period, so they are not counted.)
fn our_links() -> usize {
    let ours = [
        "sent_btf",
        "ended_btf",
        "taken_sys_read",
        "taken_sys_readv",
        "replied_sys_write",
        "replied_sys_writev",
        "taken_sys_splice",
    ];
    let our_prog_ids: Vec<u64> = bpftool_json("prog")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| ours.contains(&n)))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    bpftool_json("link")
        .iter()
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|id| our_prog_ids.contains(&id))
        })
        .count()
}

#[test]
fn ctrl_c_detaches_every_probe_and_unmounts() {
    let _alone = tracing_alone();
    let before = our_links();
    let daemon = Daemon::start("cleanup", &[]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--mount", &mount]);
    let during = our_links();
    assert!(
        during >= before + 7,
        "probes attached while tracing: {before} -> {during}"
    );
    std::fs::write(daemon.path().join("f"), b"x").unwrap();
    let out = tracer.stop();
    assert!(
        out.stderr.contains("requests"),
        "closing summary printed: {}",
        out.stderr
    );
    assert_eq!(our_links(), before, "probes left attached after Ctrl-C");

    // Ctrl-C of the daemon unmounts.
    let path = daemon.path().to_path_buf();
    let mut daemon = daemon;
    signal(&daemon.child, libc::SIGINT);
    assert!(daemon.child.wait().unwrap().success());
    assert!(!is_mounted(&path), "daemon left its mount after Ctrl-C");
}

/// Runs `fusetrace ARGS` on a mount under load, reads `lines` lines of its
/// stdout and closes the pipe, as `| head` does; returns its exit status
/// and stderr once it has ended (it notices at its next write).
fn with_stdout_closed_after(
    daemon: &Daemon,
    args: &[&str],
    lines: usize,
) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (done, dir) = (done.clone(), daemon.path().to_path_buf());
        thread::spawn(move || {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                std::fs::write(dir.join(format!("f{}", i % 16)), b"x").unwrap();
                i += 1;
            }
        })
    };
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..lines {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "stdout ended early");
    }
    drop(out);
    let (tx, exited) = std::sync::mpsc::channel();
    thread::spawn(move || tx.send(child.wait().unwrap()));
    let status = exited
        .recv_timeout(Duration::from_secs(60))
        .expect("still running a minute after its stdout closed");
    done.store(true, Ordering::Relaxed);
    load.join().unwrap();
    (status, stderr.join().unwrap())
}

/// `fusetrace trace | head -1`: ends quietly with exit 0, as bpftrace and
/// perf do, and detaches everything on its way out.
#[test]
fn a_closed_stdout_ends_a_run_quietly() {
    let _alone = tracing_alone();
    let before = our_links();
    let daemon = Daemon::start("epipe", &[]);
    let mount = daemon.path().to_str().unwrap().to_string();

    // Header and one request.
    let (status, stderr) = with_stdout_closed_after(&daemon, &["trace", "--mount", &mount], 2);
    assert!(status.success(), "trace exited with {status}: {stderr}");
    for line in stderr.lines() {
        assert!(
            line.starts_with("fusetrace: tracing ("),
            "trace said more than its start: {stderr}"
        );
    }
    assert_eq!(our_links(), before, "probes left attached");

    // -q: not a word.
    let (status, stderr) =
        with_stdout_closed_after(&daemon, &["-q", "trace", "--mount", &mount], 2);
    assert!(status.success(), "trace -q exited with {status}: {stderr}");
    assert_eq!(stderr, "", "trace -q wrote to stderr");

    // stats, one interval's first line.
    let (status, stderr) = with_stdout_closed_after(
        &daemon,
        &["-q", "stats", "--mount", &mount, "--interval", "1s"],
        1,
    );
    assert!(status.success(), "stats exited with {status}: {stderr}");
    assert_eq!(stderr, "", "stats -q wrote to stderr");
    assert_eq!(our_links(), before, "probes left attached");
    drop(daemon);
}
