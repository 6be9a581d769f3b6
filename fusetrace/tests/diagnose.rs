//! `fusetrace diagnose` against the reference daemon in its three modes,
//! under the same workloads: the diagnosis must tell them apart and its
//! counts must equal the daemon's own.

mod common;

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::Path,
};

use common::*;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    WriteThrough,
    Writeback,
    DirectIo,
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    /// 64 sequential 4 KiB writes, then close.
    Sequential,
    /// 32 writes of 100 bytes into the middle of pages of an existing,
    /// uncached file, then close.
    Unaligned,
    /// 16 KiB of writes, then fsync, then close.
    WriteFsync,
}

const APP_WRITES: [(Workload, u64); 3] = [
    (Workload::Sequential, 64),
    (Workload::Unaligned, 32),
    (Workload::WriteFsync, 4),
];

/// Drops the file's clean pages from the page cache.
fn drop_cache(f: &File) {
    f.sync_all().unwrap();
    // SAFETY: valid fd.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

fn prepare(dir: &Path, workload: Workload) {
    if let Workload::Unaligned = workload {
        let f = File::create(dir.join("existing")).unwrap();
        f.write_all_at(&vec![1u8; 32 * 4096], 0).unwrap();
        drop_cache(&f);
    }
}

fn run(dir: &Path, workload: Workload) {
    match workload {
        Workload::Sequential => {
            let mut f = File::create(dir.join("seq")).unwrap();
            for _ in 0..64 {
                f.write_all(&[7u8; 4096]).unwrap();
            }
        }
        Workload::Unaligned => {
            let f = OpenOptions::new()
                .write(true)
                .open(dir.join("existing"))
                .unwrap();
            for page in 0..32u64 {
                f.write_all_at(&[9u8; 100], page * 4096 + 1000).unwrap();
            }
        }
        Workload::WriteFsync => {
            let mut f = File::create(dir.join("synced")).unwrap();
            for _ in 0..4 {
                f.write_all(&[5u8; 4096]).unwrap();
            }
            f.sync_all().unwrap();
        }
    }
}

fn diagnose(mode: Mode, workload: Workload) -> (Value, std::collections::BTreeMap<String, u64>) {
    let flags: &[&str] = match mode {
        Mode::WriteThrough => &[],
        Mode::Writeback => &["--writeback-cache"],
        Mode::DirectIo => &["--direct-io"],
    };
    let daemon = Daemon::start("diagnose", flags);
    prepare(daemon.path(), workload);
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["diagnose", "--json", "--mount", &mount]);
    let before = daemon.snapshot();
    run(daemon.path(), workload);
    let served = daemon.stop_since(&before);
    let out = tracer.stop();
    let report = out
        .records
        .iter()
        .find_map(|v| v.get("diagnoses"))
        .expect("diagnoses JSON")
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["connection"].as_u64() == Some(conn))
        .unwrap_or_else(|| panic!("no diagnosis of our mount: {:?}", out.records))
        .clone();
    (report, served)
}

fn n(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for part in path.split('.') {
        cur = &cur[part];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn diagnosis_tells_the_three_modes_apart_and_counts_match_the_daemon() {
    require_root();
    let _alone = tracing_alone();
    for mode in [Mode::WriteThrough, Mode::Writeback, Mode::DirectIo] {
        for (workload, app_writes) in APP_WRITES {
            let (d, served) = diagnose(mode, workload);
            let what = format!("{mode:?}/{workload:?}: {d}");
            let verdict = d["verdict"].as_str().unwrap();
            // Counts equal the daemon's.
            assert_eq!(
                n(&d, "write_requests.count"),
                served.get("WRITE").copied().unwrap_or(0),
                "{what}"
            );
            assert_eq!(
                n(&d, "read_requests"),
                served.get("READ").copied().unwrap_or(0),
                "{what}"
            );
            assert_eq!(n(&d, "app_writes.count"), app_writes, "{what}");
            assert_eq!(n(&d, "app_writes_unmatched"), 0, "{what}");
            assert_eq!(n(&d, "writes_after_sync"), 0, "{what}");
            assert!(
                verdict.contains(&format!("{app_writes} writes of")),
                "{what}"
            );
            match mode {
                Mode::WriteThrough | Mode::DirectIo => {
                    assert_eq!(d["writeback_cache"], false, "{what}");
                    assert!(verdict.contains("writeback cache is OFF"), "{what}");
                    assert_eq!(n(&d, "reads_caused_by_writes"), 0, "{what}");
                    assert_eq!(
                        n(&d, "writes_sent_by_writer"),
                        n(&d, "write_requests.count"),
                        "every WRITE comes from the writer: {what}"
                    );
                    assert!(n(&d, "write_requests.count") >= app_writes, "{what}");
                    let direct = n(&d, "direct_io_opens");
                    if mode == Mode::DirectIo {
                        assert!(direct > 0 && n(&d, "cached_opens") == 0, "{what}");
                        assert!(verdict.contains("direct-io"), "{what}");
                    } else {
                        assert_eq!(direct, 0, "{what}");
                    }
                }
                Mode::Writeback => {
                    assert_eq!(d["writeback_cache"], true, "{what}");
                    assert!(verdict.contains("writeback cache is ON"), "{what}");
                    assert_eq!(
                        n(&d, "writes_sent_by_writer"),
                        0,
                        "no WRITE during write(2): {what}"
                    );
                    assert!(
                        n(&d, "write_requests.count") < app_writes,
                        "fewer WRITEs: {what}"
                    );
                    assert!(
                        n(&d, "write_requests.mean_bytes") > n(&d, "app_writes.mean_bytes"),
                        "larger WRITEs: {what}"
                    );
                    assert_eq!(
                        n(&d, "writes_at_flush_or_fsync"),
                        n(&d, "write_requests.count"),
                        "dirty pages flushed by close/fsync: {what}"
                    );
                    if let Workload::Unaligned = workload {
                        assert_eq!(n(&d, "reads_caused_by_writes"), 32, "{what}");
                        assert!(verdict.contains("caused 32 READ requests"), "{what}");
                    }
                }
            }
            // The mode costs something only where writes caused READs.
            let findings = d["findings"].as_array().unwrap();
            let wb = finding(findings, "writeback_cache");
            match (mode, workload) {
                (Mode::Writeback, Workload::Unaligned) => {
                    let wb = wb.unwrap_or_else(|| panic!("{what}: {findings:?}"));
                    assert_eq!(wb["evidence"]["reads_caused_by_writes"], 32, "{what}");
                    assert!(wb["knob"].as_str().unwrap().contains("page-aligned"));
                }
                _ => assert!(wb.is_none(), "{what}: {wb:?}"),
            }
        }
    }
}

#[test]
fn diagnosis_from_a_recording_equals_the_live_one() {
    require_root();
    let _alone = tracing_alone();
    let daemon = Daemon::start("diagnose-rec", &["--writeback-cache"]);
    prepare(daemon.path(), Workload::Unaligned);
    let mount = daemon.path().to_str().unwrap().to_string();
    let file = std::env::temp_dir().join(format!("fusetrace-diag-{}.trace", std::process::id()));
    let file_arg = file.to_str().unwrap().to_string();
    let live = Tracer::start(&["diagnose", "--format", "json", "--mount", &mount]);
    let recorder = Tracer::start(&["record", "--app-writes", "--mount", &mount, "-o", &file_arg]);
    run(daemon.path(), Workload::Unaligned);
    daemon.stop();
    let live = live.stop();
    recorder.stop();
    let replayed =
        run_ok(std::process::Command::new(bin()).args(["diagnose", "--json", "--from", &file_arg]));
    let _ = std::fs::remove_file(&file);
    let pick = |v: &Value| -> Value {
        let d = &v["diagnoses"][0];
        serde_json::json!([
            d["writeback_cache"],
            d["app_writes"]["count"],
            d["write_requests"],
            d["read_requests"],
            d["reads_caused_by_writes"],
            d["writes_at_flush_or_fsync"],
        ])
    };
    let live_v = live
        .records
        .iter()
        .find(|v| v.get("diagnoses").is_some())
        .unwrap();
    let replayed_v: Value =
        serde_json::from_str(replayed.lines().find(|l| l.contains("diagnoses")).unwrap()).unwrap();
    assert_eq!(pick(live_v), pick(&replayed_v));
    assert_eq!(live_v["diagnoses"][0]["reads_caused_by_writes"], 32);
}

#[test]
fn healthy_default_mounts_under_mixed_load_get_no_finding() {
    require_root();
    let _alone = tracing_alone();
    let daemon = Daemon::start("healthy", &[]);
    let found = findings_while(daemon.path(), || mixed_load(daemon.path()));
    daemon.stop();
    assert!(found.is_empty(), "reference daemon, defaults: {found:#?}");

    // bindfs on Debian is built on libfuse 2, which asks no
    // FUSE_BIG_WRITES unless told: its write-through WRITEs are one page
    // each, a real finding (`small_transfers`, tests/diagnose_transfers.rs).
    // Healthy bindfs is bindfs with big writes.
    let src = Scratch::new("healthy-bindfs-src");
    let mnt = Scratch::new("healthy-bindfs");
    run_ok(
        std::process::Command::new("bindfs")
            .args(["-o", "big_writes"])
            .arg(src.path())
            .arg(mnt.path()),
    );
    let _unmount = MountGuard(mnt.path().to_path_buf());
    let found = findings_while(mnt.path(), || mixed_load(mnt.path()));
    assert!(found.is_empty(), "bindfs -o big_writes: {found:#?}");
}

#[test]
fn findings_from_a_recording_equal_the_live_ones() {
    require_root();
    let _alone = tracing_alone();
    // Short caches and the writeback cache with unaligned writes: several
    // findings at once.
    let daemon = Daemon::start(
        "diagnose-rec-findings",
        &["--ttl", "0s", "--writeback-cache"],
    );
    prepare(daemon.path(), Workload::Unaligned);
    for i in 0..20 {
        std::fs::write(daemon.path().join(format!("f{i}")), b"x").unwrap();
    }
    let mount = daemon.path().to_str().unwrap().to_string();
    let file = std::env::temp_dir().join(format!("fusetrace-diag-f-{}.trace", std::process::id()));
    let file_arg = file.to_str().unwrap().to_string();
    let live = Tracer::start(&["diagnose", "--format", "json", "--mount", &mount]);
    let recorder = Tracer::start(&["record", "--app-writes", "--mount", &mount, "-o", &file_arg]);
    run(daemon.path(), Workload::Unaligned);
    for _ in 0..30 {
        for i in 0..20 {
            std::fs::metadata(daemon.path().join(format!("f{i}"))).unwrap();
        }
    }
    daemon.stop();
    let live = live.stop();
    recorder.stop();
    let replayed =
        run_ok(std::process::Command::new(bin()).args(["diagnose", "--json", "--from", &file_arg]));
    let _ = std::fs::remove_file(&file);
    let live_v = live
        .records
        .iter()
        .find(|v| v.get("diagnoses").is_some())
        .unwrap();
    let replayed_v: Value =
        serde_json::from_str(replayed.lines().find(|l| l.contains("diagnoses")).unwrap()).unwrap();
    let (live_d, replayed_d) = (&live_v["diagnoses"][0], &replayed_v["diagnoses"][0]);
    let live_f = live_d["findings"].as_array().unwrap();
    let replayed_f = replayed_d["findings"].as_array().unwrap();
    assert!(
        finding(live_f, "attr_cache").is_some() && finding(live_f, "writeback_cache").is_some(),
        "{live_f:#?}"
    );
    assert_eq!(finding_ids(live_f), finding_ids(replayed_f));
    assert_eq!(live_d["limits"], replayed_d["limits"]);
    assert_eq!(live_d["io_uring"], replayed_d["io_uring"]);
    // The counts behind each finding are the same requests; only times
    // (each tracer stamps its own events) may differ.
    for (l, r) in live_f.iter().zip(replayed_f) {
        for key in ["requests", "write_requests", "reads_caused_by_writes"] {
            assert_eq!(l["evidence"][key], r["evidence"][key], "{key}: {l} vs {r}");
        }
    }
}
