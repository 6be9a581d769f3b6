//! `fusetrace diagnose`'s daemon-side findings on real mounts:
//! `daemon_concurrency` (one daemon thread under concurrent load),
//! `background_queue` (readahead pinned at `max_background`) and
//! `io_uring_unused` (a /dev/fuse daemon under a metadata storm while the
//! kernel offers io_uring). Each is created with the reference daemon and
//! must appear; the same load without the cause must not show it; and no
//! finding of these may fire on healthy mounts under the mixed load.

mod common;

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::AsRawFd,
    path::Path,
    process::Command,
};

use common::*;
use serde_json::Value;

/// The findings of this file.
const OURS: [&str; 3] = ["daemon_concurrency", "background_queue", "io_uring_unused"];

/// `fusetrace load MOUNT ARGS` to its end.
fn load(mount: &Path, args: &[&str]) {
    run_ok(Command::new(bin()).arg("load").arg(mount).args(args));
}

fn num(f: &Value, name: &str) -> f64 {
    f["evidence"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} in {f}"))
}

/// The reference daemon with `daemon_args` under `load_args`: the
/// diagnosis, and the requests the daemon served.
fn daemon_under(name: &str, daemon_args: &[&str], load_args: &[&str]) -> (Value, u64) {
    let daemon = Daemon::start(name, daemon_args);
    let d = diagnosis_while(daemon.path(), || load(daemon.path(), load_args));
    let served = daemon.stop().values().sum();
    (d, served)
}

/// 8 requesters stat()ing without caches, each answer taking 200 us in
/// the daemon: with one thread they wait for each other.
const CONCURRENT: [&str; 6] = ["--workload", "metadata", "--jobs", "8", "--ops", "4000"];

#[test]
fn one_daemon_thread_under_concurrent_load_is_daemon_concurrency() {
    let _alone = tracing_alone();
    let slow = [
        "--ttl",
        "0s",
        "--latency",
        "GETATTR=200us",
        "--latency",
        "LOOKUP=200us",
    ];
    let one = [&["--threads", "1"][..], &slow].concat();
    let (d, _) = daemon_under("dd-threads1", &one, &CONCURRENT);
    let f = finding(findings_of(&d), "daemon_concurrency")
        .unwrap_or_else(|| panic!("no daemon_concurrency with one thread: {d}"));
    assert_eq!(num(f, "daemon_threads"), 1.0, "{f}");
    assert!(num(f, "queue_share") >= 0.5, "{f}");
    assert!(num(f, "mean_in_flight") >= 2.0, "{f}");
    assert!(num(f, "peak_in_flight") >= 3.0, "{f}");
    // Each waits for several others' 200 us.
    assert!(num(f, "mean_queue_wait_ns") > 200_000.0, "{f}");
    assert!(f["knob"].as_str().unwrap().contains("--threads N"), "{f}");

    let eight = [&["--threads", "8"][..], &slow].concat();
    let (d, served) = daemon_under("dd-threads8", &eight, &CONCURRENT);
    assert!(served >= 4000, "the same load reached the daemon: {served}");
    assert!(
        finding(findings_of(&d), "daemon_concurrency").is_none(),
        "8 threads: {d}"
    );
}

/// Drops a file's pages from the page cache (its own pages only).
fn drop_cache(f: &File) {
    // SAFETY: valid fd.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

/// A 64 MiB file on the mount, written before tracing.
fn large_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("large");
    let mut f = File::create(&path).unwrap();
    let block = vec![3u8; 1 << 20];
    for _ in 0..64 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    path
}

/// Reads `path` sequentially from an empty page cache, `rounds` times:
/// the kernel's readahead sends background READs.
fn sequential_reads(path: &Path, rounds: usize) {
    let mut buf = vec![0u8; 128 << 10];
    for _ in 0..rounds {
        let mut f = File::open(path).unwrap();
        drop_cache(&f);
        let mut total = 0;
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 64 << 20);
    }
}

#[test]
fn readahead_at_max_background_one_is_background_queue() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("dd-bg1", &["--max-background", "1"]);
    let file = large_file(daemon.path());
    let d = diagnosis_while(daemon.path(), || sequential_reads(&file, 4));
    assert!(
        daemon.stop()["READ"] >= 4 * 512,
        "4 x 64 MiB in 128 KiB READs"
    );
    let f = finding(findings_of(&d), "background_queue")
        .unwrap_or_else(|| panic!("no background_queue at max_background 1: {d}"));
    assert_eq!(num(f, "max_background"), 1.0, "{f}");
    assert_eq!(num(f, "peak_background_in_flight"), 1.0, "{f}");
    assert!(num(f, "background_requests") >= 100.0, "{f}");
    assert!(num(f, "pinned_share") >= 0.25, "{f}");
    let conn = d["connection"].as_u64().unwrap();
    assert!(
        f["knob"].as_str().unwrap().contains(&format!(
            "echo 4 > /sys/fs/fuse/connections/{conn}/max_background"
        )),
        "{f}"
    );

    let daemon = Daemon::start("dd-bgdefault", &[]);
    let file = large_file(daemon.path());
    let d = diagnosis_while(daemon.path(), || sequential_reads(&file, 4));
    assert!(daemon.stop()["READ"] >= 4 * 512, "the same reads");
    assert!(
        finding(findings_of(&d), "background_queue").is_none(),
        "default: {d}"
    );
    assert!(d["limits"]["max_background"].as_u64().unwrap() > 1, "{d}");
}

/// stat() storms with no attribute cache, from 8 requesters.
const STORM: [&str; 6] = ["--workload", "metadata", "--jobs", "8", "--duration", "2s"];

#[test]
fn a_dev_fuse_daemon_under_a_metadata_storm_is_io_uring_unused() {
    let _alone = tracing_alone();
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    let (d, _) = daemon_under("dd-devfuse", &["--ttl", "0s"], &STORM);
    let f = finding(findings_of(&d), "io_uring_unused")
        .unwrap_or_else(|| panic!("no io_uring_unused on /dev/fuse: {d}"));
    assert_eq!(f["evidence"]["transport"], "/dev/fuse", "{f}");
    assert_eq!(f["evidence"]["io_uring_offer"], "on", "{f}");
    assert!(num(f, "requests_per_second") >= 1000.0, "{f}");
    assert!(num(f, "queue_share") >= 0.3, "{f}");
    assert!(f["knob"].as_str().unwrap().contains("--io-uring"), "{f}");

    let (d, served) = daemon_under("dd-uring", &["--ttl", "0s", "--io-uring"], &STORM);
    assert!(served >= 2000, "a storm on io_uring too: {served}");
    assert!(
        finding(findings_of(&d), "io_uring_unused").is_none(),
        "io_uring: {d}"
    );
}

#[test]
fn healthy_mounts_under_the_mixed_load_show_none_of_these() {
    let _alone = tracing_alone();
    // Four threads, and the default (one thread: one requester never
    // makes it wait).
    for args in [&["--threads", "4"][..], &[]] {
        let (d, _) = daemon_under("dd-healthy", args, &["--workload", "mixed"]);
        let found = finding_ids(findings_of(&d));
        assert!(
            !found.iter().any(|id| OURS.contains(id)),
            "reference daemon {args:?}: {d}"
        );
        // Something was diagnosed: the load reached the daemon.
        assert!(d["read_requests"].as_u64().unwrap() > 0, "{d}");
    }

    let src = Scratch::new("dd-bindfs-src");
    let mnt = Scratch::new("dd-bindfs-mnt");
    run_ok(Command::new("bindfs").arg(src.path()).arg(mnt.path()));
    assert!(is_mounted(mnt.path()));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("fusermount3").arg("-u").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let d = diagnosis_while(mnt.path(), || load(mnt.path(), &["--workload", "mixed"]));
    let found = finding_ids(findings_of(&d));
    assert!(!found.iter().any(|id| OURS.contains(id)), "bindfs: {d}");
    assert!(d["read_requests"].as_u64().unwrap() > 0, "{d}");
}

#[test]
fn a_recording_replayed_gives_the_same_daemon_findings() {
    let _alone = tracing_alone();
    let slow = [
        "--ttl",
        "0s",
        "--latency",
        "GETATTR=200us",
        "--latency",
        "LOOKUP=200us",
    ];
    let daemon = Daemon::start("dd-record", &slow);
    let file = std::env::temp_dir().join(format!("fusetrace-dd-{}.trace", std::process::id()));
    let file_arg = file.to_str().unwrap().to_string();
    let mount = daemon.path().to_str().unwrap().to_string();
    let recorder = Tracer::start(&["record", "--mount", &mount, "-o", &file_arg]);
    let live = diagnosis_while(daemon.path(), || load(daemon.path(), &CONCURRENT));
    recorder.stop();
    daemon.stop();
    let replayed = run_ok(Command::new(bin()).args(["diagnose", "--json", "--from", &file_arg]));
    let _ = std::fs::remove_file(&file);
    let replayed: Value =
        serde_json::from_str(replayed.lines().find(|l| l.contains("diagnoses")).unwrap()).unwrap();
    let replayed = &replayed["diagnoses"][0];
    let (a, b) = (
        finding(findings_of(&live), "daemon_concurrency").unwrap_or_else(|| panic!("live: {live}")),
        finding(findings_of(replayed), "daemon_concurrency")
            .unwrap_or_else(|| panic!("replayed: {replayed}")),
    );
    for name in ["daemon_threads", "replying_threads", "peak_in_flight"] {
        assert_eq!(
            a["evidence"][name], b["evidence"][name],
            "{name}: {a} vs {b}"
        );
    }
    // The recorder, started first, also saw the live tracer name its mount
    // (a stat: with --ttl 0s, a GETATTR or two); nothing else differs.
    let extra = num(b, "requests") - num(a, "requests");
    assert!((0.0..=2.0).contains(&extra), "requests: {a} vs {b}");
}
