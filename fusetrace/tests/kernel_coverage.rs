//! Backends and kernels: `fusetrace doctor`, forced backends, and (in the
//! Debian 6.1 VM of `cargo xtask vmtest`) virtio-fs.
//!
//! What the kernel offers is checked independently of fusetrace (tracefs,
//! the kprobe PMU), so each assertion holds on any kernel.

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
};

use common::*;

fn has_fuse_tracepoints() -> bool {
    // fusetrace mounts tracefs when it is missing; doctor runs first.
    Path::new("/sys/kernel/tracing/events/fuse/fuse_request_send").exists()
}

fn has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// The doctor's answer for one "offers" line, e.g. `offer(&out, "kprobes")`.
fn offer<'a>(doctor: &'a str, what: &str) -> &'a str {
    doctor
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(what).map(str::trim_start))
        .unwrap_or_else(|| panic!("doctor printed no `{what}` line:\n{doctor}"))
}

fn doctor() -> (bool, String, String) {
    let out = Command::new(bin()).arg("doctor").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn doctor_names_the_backend_and_what_is_unavailable() {
    require_root();
    let (ok, out, err) = doctor();
    assert!(ok, "doctor failed: {out}{err}");
    assert!(out.contains("kernel: "), "{out}");
    assert!(
        out.contains("verdict: complete lifecycles can be traced"),
        "{out}"
    );
    let backend = out
        .lines()
        .find_map(|l| l.strip_prefix("backend: "))
        .expect("a backend line");
    if has_fuse_tracepoints() {
        assert!(
            backend.starts_with("tp-btf") || backend.starts_with("tracepoint"),
            "the kernel has FUSE tracepoints but doctor chose {backend}:\n{out}"
        );
        assert_eq!(offer(&out, "FUSE tracepoints").get(..3), Some("yes"));
    } else {
        assert!(
            backend.starts_with("kprobe") || backend.starts_with("fentry"),
            "no FUSE tracepoints, yet doctor chose {backend}:\n{out}"
        );
    }
    let kprobes = offer(&out, "kprobes");
    if has_kprobes() {
        assert!(kprobes.starts_with("yes"), "{out}");
    } else {
        assert!(
            kprobes.starts_with("no (") && kprobes.contains("CONFIG_KPROBES"),
            "kprobes line: {kprobes}"
        );
    }
    // The same facts as JSON (`--format json`, and `--json` its alias).
    for flag in [&["--format", "json"][..], &["--json"][..]] {
        let json = Command::new(bin())
            .arg("doctor")
            .args(flag)
            .output()
            .unwrap();
        assert!(json.status.success());
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
        assert_eq!(v["complete"], true);
        assert_eq!(v["backend"].as_str(), Some(backend));
        let kprobes_json = v["offers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["what"] == "kprobes")
            .unwrap()
            .clone();
        assert_eq!(kprobes_json["available"], kprobes.starts_with("yes"));
        // One point per line of the text's `points:` block (skipped hooks
        // are indented further).
        let points = out
            .lines()
            .skip_while(|l| !l.starts_with("points"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter(|l| !l.starts_with("      "))
            .count();
        assert_eq!(v["points"].as_array().unwrap().len(), points, "{v}");
    }
    // Whatever doctor says of fentry, a forced fentry trace agrees.
    let fentry = offer(&out, "fentry");
    let forced = Command::new(bin())
        .args(["trace", "--backend", "fentry", "--duration", "1s"])
        .output()
        .unwrap();
    let forced_err = String::from_utf8_lossy(&forced.stderr);
    if fentry.starts_with("no (") {
        assert!(fentry.len() > "no ()".len(), "a reason is given: {fentry}");
        assert!(!forced.status.success(), "doctor said no, fentry traced");
        assert!(
            forced_err.contains("--backend fentry: cannot observe"),
            "{forced_err}"
        );
    } else {
        assert!(fentry.starts_with("yes"), "{fentry}");
        assert!(forced.status.success(), "doctor said yes: {forced_err}");
    }
}

/// `fusetrace ARGS` fails, printing one line that holds every needle.
fn refuses_in_one_line(args: &[&str], needles: &[&str]) {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} ran anyway");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn forcing_kprobes_without_them_fails_with_one_clear_line() {
    require_root();
    if has_kprobes() {
        // The VM runs the whole trace suite with --backend kprobe instead.
        eprintln!("this kernel has kprobes: nothing to refuse");
        return;
    }
    refuses_in_one_line(
        &["trace", "--backend", "kprobe", "--duration", "10s"],
        &["--backend kprobe", "no kprobes", "CONFIG_KPROBES", "doctor"],
    );
}

#[test]
fn forcing_the_kernel_daemon_side_without_kprobes_or_fentry_fails_with_one_clear_line() {
    require_root();
    if has_kprobes() {
        eprintln!("this kernel has kprobes: nothing to refuse");
        return;
    }
    refuses_in_one_line(
        &["trace", "--daemon-side", "kernel", "--duration", "10s"],
        &[
            "--daemon-side kernel",
            "taken point",
            "fuse_copy_args",
            "no kprobes",
            "doctor",
        ],
    );
}

/// With kprobes or fentry (the VM guests), the daemon side is seen in the
/// kernel's `/dev/fuse` routines by default, and at the syscalls when
/// asked; doctor says which, and what the kprobe take does not see.
#[test]
fn the_daemon_side_is_hooked_in_the_kernel_where_it_can_be() {
    require_root();
    if !has_kprobes() {
        eprintln!("no kprobes on this kernel: the syscall side only");
        return;
    }
    let point = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} point in:\n{text}"))
            .to_string()
    };
    // Both guests have fentry: requests taken at fuse_copy_args, other
    // messages at fuse_dev_do_read's return.
    let (ok, out, err) = doctor();
    assert!(ok, "{err}");
    let taken = point(&out, "taken");
    assert!(taken.contains("fentry/fuse_copy_args"), "{taken}");
    assert!(taken.contains("fexit/fuse_dev_do_read"), "{taken}");
    assert!(!taken.contains("requests only"), "{taken}");
    assert!(
        point(&out, "replied").contains("fentry/fuse_dev_do_write"),
        "{out}"
    );
    assert!(!out.contains("tracepoint/syscalls/sys_exit_read"), "{out}");
    // kprobes: at fuse_copy_args, requests only, and said so.
    let kp = Command::new(bin())
        .args(["doctor", "--backend", "kprobe"])
        .output()
        .unwrap();
    let kp = String::from_utf8_lossy(&kp.stdout).into_owned();
    let taken = point(&kp, "taken");
    assert!(taken.contains("kprobe/fuse_copy_args"), "{taken}");
    assert!(taken.contains("requests only"), "{taken}");
    assert!(
        point(&kp, "replied").contains("kprobe/fuse_dev_do_write"),
        "{kp}"
    );
    // And the syscalls when asked.
    let tracer = Tracer::start(&["trace", "--daemon-side", "syscalls", "--duration", "1s"]);
    let traced = tracer.stop();
    assert!(
        traced.stderr.contains("taken: ") && traced.stderr.contains("sys_exit_read"),
        "{}",
        traced.stderr
    );
    assert!(
        !traced.stderr.contains("fuse_dev_do_read"),
        "{}",
        traced.stderr
    );
}

/// Reads lines of a child's pipe on a thread, so waits can time out.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn read_tree(dir: &Path, budget: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = e.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => read_tree(&path, budget),
            Ok(m) if m.is_file() && m.len() < 64 * 1024 => {
                let _ = std::fs::read(&path);
            }
            _ => {}
        }
    }
}

/// The guest of `cargo xtask vmtest` boots from virtio-fs: a file walk's
/// requests show their virtio stages, and the requests the tracer saw end
/// equal bpftrace's count of `fuse_request_end` over the same window.
#[test]
#[ignore = "needs a virtio-fs root file system and bpftrace: run by `cargo xtask vmtest`"]
fn virtio_fs_walk_matches_an_independent_end_count() {
    require_root();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some("/") && l.split(' ').nth(2) == Some("virtiofs")),
        "the root file system is not virtio-fs:\n{mounts}"
    );
    let root_dev = std::fs::metadata("/").unwrap().dev();
    let conn = (u64::from(libc::major(root_dev)) << 20) | u64::from(libc::minor(root_dev));
    let tracer = Tracer::start(&["trace", "--format", "json"]);
    // bpftrace prints the window's edges on the same clock as our events.
    let mut bt = Command::new("bpftrace")
        .args([
            "-e",
            "BEGIN { printf(\"begin %llu\\n\", nsecs); } \
             kprobe:fuse_request_end { @ends = count(); } \
             END { printf(\"end %llu\\n\", nsecs); }",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bpftrace");
    let bt_out = lines_of(bt.stdout.take().unwrap());
    let begin: u64 = loop {
        let line = bt_out.recv_timeout(STEP_TIMEOUT).expect("bpftrace BEGIN");
        if let Some(ns) = line.strip_prefix("begin ") {
            break ns.trim().parse().unwrap();
        }
    };
    let mut budget = 400;
    read_tree(Path::new("/usr/share/doc"), &mut budget);
    assert_eq!(budget, 0, "the walk found fewer than 400 entries");
    signal(&bt, libc::SIGINT);
    let mut end = None;
    let mut counted = None;
    for line in bt_out.iter() {
        if let Some(ns) = line.strip_prefix("end ") {
            end = Some(ns.trim().parse::<u64>().unwrap());
        }
        if let Some(n) = line.strip_prefix("@ends: ") {
            counted = Some(n.trim().parse::<u64>().unwrap());
        }
    }
    assert!(bt.wait().unwrap().success());
    let (end, counted) = (end.expect("bpftrace END"), counted.expect("@ends"));
    let traced = tracer.stop();
    // Requests in flight when the probes attached (the tracer's own binary
    // is paged in over virtio-fs) may end unmatched: only losses count here.
    for key in ["ring_drops", "read_faults", "undecodable"] {
        assert_eq!(traced.summary[key].as_u64(), Some(0), "{key}");
    }
    let in_window = traced
        .records
        .iter()
        .filter(|r| {
            r["ended_at_ns"]
                .as_u64()
                .is_some_and(|t| t >= begin && t <= end)
        })
        .count() as u64;
    eprintln!("virtio-fs: {in_window} requests ended in the window, bpftrace counted {counted}");
    assert!(counted >= 100, "the walk made {counted} requests");
    assert_eq!(
        in_window, counted,
        "traced ends vs bpftrace's fuse_request_end hits"
    );
    let ours: Vec<_> = traced
        .on(conn)
        .into_iter()
        .filter(|r| r["sent_at_ns"].as_u64().is_some_and(|t| t >= begin))
        .filter(|r| r["ended_at_ns"].as_u64().is_some_and(|t| t <= end))
        .collect();
    assert!(
        ours.len() as u64 >= counted / 2,
        "most requests are the root's"
    );
    let lacking: Vec<_> = ours
        .iter()
        .filter(|r| {
            ![
                "sent_at_ns",
                "virtq_at_ns",
                "device_done_at_ns",
                "ended_at_ns",
            ]
            .iter()
            .all(|k| r[*k].is_u64())
        })
        .collect();
    assert!(
        lacking.is_empty(),
        "virtio-fs requests without all their stages: {lacking:?}"
    );
    for r in &ours {
        let t = |k: &str| r[k].as_u64().unwrap();
        assert!(
            t("sent_at_ns") <= t("virtq_at_ns")
                && t("virtq_at_ns") <= t("device_done_at_ns")
                && t("device_done_at_ns") <= t("ended_at_ns"),
            "stages out of order: {r}"
        );
    }
    // The device interrupt that announced an answer lies between the
    // request going onto the virtqueue and the answer being taken off it.
    let with_irq: Vec<_> = ours
        .iter()
        .filter(|r| r["device_irq_at_ns"].is_u64())
        .collect();
    eprintln!(
        "virtio-fs: {} of {} requests with their device interrupt",
        with_irq.len(),
        ours.len()
    );
    assert!(
        with_irq.len() * 10 >= ours.len() * 9,
        "device interrupts seen"
    );
    for r in with_irq {
        let t = |k: &str| r[k].as_u64().unwrap();
        assert!(
            t("virtq_at_ns") <= t("device_irq_at_ns")
                && t("device_irq_at_ns") <= t("device_done_at_ns"),
            "interrupt outside its request's device stage: {r}"
        );
    }
}

/// With kprobe or fentry hooks on the submitting functions, every request
/// the kernel created through them knows when its caller submitted it, and
/// background requests (readahead here, with one background slot) show how
/// long they waited for a slot. Kernels without those hooks say so.
#[test]
fn calls_are_joined_to_their_requests() {
    require_root();
    let (_, out, _) = doctor();
    let call = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("submitted: "))
        .unwrap_or_else(|| panic!("no call stage in:\n{out}"));
    let forced = std::env::var("FUSETRACE_TEST_BACKEND").unwrap_or_default();
    if call.starts_with("no hook") {
        assert!(
            !has_kprobes() && forced.is_empty(),
            "kprobes exist but the call stage has no hook: {call}"
        );
        return;
    }
    let daemon = Daemon::start("calls", &["--max-background", "1"]);
    let conn = connection_of(daemon.path());
    let file = daemon.path().join("big");
    std::fs::write(&file, vec![3u8; 1 << 20]).unwrap();
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    // Dropping the page cache makes the next read go to the daemon, with readahead.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), 1 << 20);
    daemon.stop();
    let traced = tracer.stop();
    let ours = traced.on(conn);
    let created: Vec<_> = ours
        .iter()
        .filter(|r| {
            r["sent_at_ns"].is_u64() && r["opcode"] != "FORGET" && r["opcode"] != "BATCH_FORGET"
        })
        .collect();
    assert!(created.len() >= 4, "requests traced: {}", created.len());
    let joined = created
        .iter()
        .filter(|r| r["submitted_at_ns"].is_u64())
        .count();
    eprintln!("calls joined to requests: {joined} of {}", created.len());
    assert_eq!(
        joined,
        created.len(),
        "every request has its call: {created:?}"
    );
    for r in &created {
        assert!(
            r["submitted_at_ns"].as_u64() <= r["sent_at_ns"].as_u64(),
            "{r}"
        );
    }
    let background: Vec<_> = created.iter().filter(|r| r["background"] == true).collect();
    assert!(
        !background.is_empty(),
        "readahead made no background READ: {created:?}"
    );
    for r in &background {
        assert!(
            r["background_wait_ns"].is_u64(),
            "background wait shown: {r}"
        );
    }
    assert!(
        created
            .iter()
            .filter(|r| r["background"] == false)
            .all(|r| r["background_wait_ns"].is_null()),
        "only background requests wait for a background slot"
    );
}
