//! `fusetrace diagnose`'s transfer findings against real mounts:
//! `small_transfers` (the reference daemon with `--max-write 4096` under
//! large sequential writes, against its default), `page_cache_bypassed`
//! (`--direct-io` with the same ranges read again and again, against the
//! page cache), and neither on healthy mounts under the mixed load.

mod common;

use std::{fs::File, io::Write, os::unix::fs::FileExt, path::Path, process::Command};

use common::*;
use serde_json::Value;

/// The diagnosis of the daemon's mount while `work` runs on it, and the
/// daemon's counts of what it served meanwhile.
fn diagnose(
    flags: &[&str],
    work: impl FnOnce(&Path),
) -> (Value, std::collections::BTreeMap<String, u64>) {
    let _alone = tracing_alone();
    let daemon = Daemon::start("diag-transfers", flags);
    let conn = connection_of(daemon.path());
    let mount = daemon.path().to_str().unwrap().to_string();
    prepare(daemon.path());
    let tracer = Tracer::start(&["diagnose", "--format", "json", "--mount", &mount]);
    let before = daemon.snapshot();
    work(daemon.path());
    let after = daemon.snapshot();
    // The tracer stops while the mount is still ours: once it is gone, a
    // mount elsewhere on the machine may get its connection number.
    let out = tracer.stop();
    daemon.stop();
    let served = after
        .into_iter()
        .map(|(op, n)| {
            let was = before.get(&op).copied().unwrap_or(0);
            (op, n - was)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    (diagnosis_of(&out, conn), served)
}

/// A 64 KiB file to read, written before the tracer starts.
fn prepare(dir: &Path) {
    let f = File::create(dir.join("data")).unwrap();
    f.write_all_at(&[3u8; 64 << 10], 0).unwrap();
}

/// 4 MiB written sequentially in write(2) calls of 64 KiB.
fn write_large(dir: &Path) {
    let mut f = File::create(dir.join("big")).unwrap();
    for _ in 0..64 {
        f.write_all(&[7u8; 64 << 10]).unwrap();
    }
}

#[test]
fn a_small_max_write_cutting_large_writes_is_found_and_the_default_is_not() {
    require_root();
    let (d, served) = diagnose(&["--max-write", "4096"], write_large);
    let what = d.to_string();
    let f = finding(findings_of(&d), "small_transfers")
        .unwrap_or_else(|| panic!("no small_transfers: {what}"));
    let e = &f["evidence"];
    assert_eq!(e["opcode"], "WRITE", "{what}");
    assert_eq!(e["limit"], "max_write", "{what}");
    assert_eq!(e["limit_bytes"], 4096, "{what}");
    assert_eq!(e["max_write"], 4096, "{what}");
    // 4 MiB in WRITEs of 4 KiB (a page the copy from the writer faulted
    // on comes in two pieces: a few more).
    let writes = served["WRITE"];
    assert_eq!(e["requests"], writes, "{what}");
    assert!((1024..1100).contains(&writes), "{what}");
    let cut = e["cut_by_limit"].as_u64().unwrap();
    assert!(cut * 10 >= writes * 9, "{what}");
    assert_eq!(e["app_write_mean_bytes"], 65536, "{what}");
    assert_eq!(e["fewer_requests_factor"], 16.0, "{what}");
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains("cut at max_write = 4 KiB"),
        "{what}"
    );
    assert!(f["knob"].as_str().unwrap().contains("max_write"), "{what}");
    // The small WRITEs are named once, by their cause.
    assert!(
        finding(findings_of(&d), "writeback_cache").is_none(),
        "{what}"
    );

    let (d, served) = diagnose(&[], write_large);
    let what = d.to_string();
    assert!(
        finding(findings_of(&d), "small_transfers").is_none(),
        "{what}"
    );
    // The same writes, about a WRITE each: the limit cut nothing.
    assert!(served["WRITE"] < 128, "{served:?}: {what}");
    assert!(
        d["limits"]["max_write"].as_u64().unwrap() > 64 << 10,
        "{what}"
    );
}

/// The same 16 ranges of 4 KiB of `data` read 20 times each.
fn read_again(dir: &Path) {
    let f = File::open(dir.join("data")).unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..20 {
        for range in 0..16u64 {
            f.read_exact_at(&mut buf, range * 4096).unwrap();
            assert_eq!(buf[0], 3);
        }
    }
}

#[test]
fn direct_io_reading_the_same_ranges_is_found_and_the_page_cache_is_not() {
    require_root();
    let (d, served) = diagnose(&["--direct-io"], read_again);
    let what = d.to_string();
    let f = finding(findings_of(&d), "page_cache_bypassed")
        .unwrap_or_else(|| panic!("no page_cache_bypassed: {what}"));
    let e = &f["evidence"];
    assert_eq!(e["direct_io_opens"], 1, "{what}");
    assert_eq!(served["READ"], 320, "one READ per read(2): {what}");
    assert_eq!(e["reads"], 320, "{what}");
    assert_eq!(e["distinct_ranges"], 16, "{what}");
    assert_eq!(e["repeated_reads"], 320 - 16, "{what}");
    assert_eq!(e["bytes_reread"], (320 - 16) * 4096, "{what}");
    assert_eq!(e["most_reads_of_one_range"], 20, "{what}");
    assert!(
        f["knob"].as_str().unwrap().contains("FOPEN_DIRECT_IO"),
        "{what}"
    );

    let (d, served) = diagnose(&[], read_again);
    let what = d.to_string();
    assert!(
        finding(findings_of(&d), "page_cache_bypassed").is_none(),
        "{what}"
    );
    // The page cache served the repeats.
    assert!(served.get("READ").copied().unwrap_or(0) < 32, "{served:?}");
}

/// A bindfs mount, unmounted on drop.
struct Bindfs {
    mnt: Scratch,
    _src: Scratch,
}

impl Bindfs {
    fn mount(options: &[&str]) -> Bindfs {
        let (src, mnt) = (Scratch::new("bindfs-src"), Scratch::new("bindfs-mnt"));
        run_ok(
            Command::new("bindfs")
                .args(options)
                .arg(src.path())
                .arg(mnt.path()),
        );
        assert!(is_mounted(mnt.path()));
        Bindfs { mnt, _src: src }
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(self.mnt.path())
            .status();
    }
}

/// The diagnosis of `mount` while `work` runs on it.
fn diagnose_mount(mount: &Path, work: impl FnOnce(&Path)) -> Value {
    let _alone = tracing_alone();
    let conn = connection_of(mount);
    let m = mount.to_str().unwrap();
    let tracer = Tracer::start(&["diagnose", "--format", "json", "--mount", m]);
    work(mount);
    diagnosis_of(&tracer.stop(), conn)
}

/// `fusetrace load --workload mixed` on `mount`.
fn mixed_load(mount: &Path) {
    let m = mount.to_str().unwrap();
    run_ok(Command::new(bin()).args([
        "load",
        m,
        "--workload",
        "mixed",
        "--jobs",
        "4",
        "--ops",
        "4000",
    ]));
}

#[test]
fn libfuse2_without_big_writes_is_found_and_with_big_writes_is_not() {
    require_root();
    // bindfs is built on libfuse 2 here: without `-o big_writes` the
    // kernel sends one page per WRITE whatever max_write is.
    let libfuse2 = run_ok(Command::new("sh").args(["-c", "ldd \"$(command -v bindfs)\""]));
    if !libfuse2.contains("libfuse.so.2") {
        eprintln!("skipped: bindfs is not built on libfuse 2: {libfuse2}");
        return;
    }
    let bindfs = Bindfs::mount(&[]);
    let d = diagnose_mount(bindfs.mnt.path(), write_large);
    drop(bindfs);
    let what = d.to_string();
    let f = finding(findings_of(&d), "small_transfers")
        .unwrap_or_else(|| panic!("no small_transfers: {what}"));
    let e = &f["evidence"];
    assert_eq!(e["limit"], "big_writes", "{what}");
    assert_eq!(e["limit_bytes"], 4096, "{what}");
    assert!(e["max_write"].as_u64().unwrap() > 64 << 10, "{what}");
    let writes = e["requests"].as_u64().unwrap();
    assert!(
        (1024..1100).contains(&writes),
        "4 MiB in 4 KiB WRITEs: {what}"
    );
    assert!(
        e["cut_by_limit"].as_u64().unwrap() * 10 >= writes * 9,
        "{what}"
    );
    assert_eq!(e["app_write_mean_bytes"], 65536, "{what}");
    assert!(
        f["knob"].as_str().unwrap().contains("-o big_writes"),
        "{what}"
    );
    assert!(
        finding(findings_of(&d), "writeback_cache").is_none(),
        "{what}"
    );

    let bindfs = Bindfs::mount(&["-o", "big_writes"]);
    let d = diagnose_mount(bindfs.mnt.path(), write_large);
    drop(bindfs);
    let what = d.to_string();
    assert!(
        finding(findings_of(&d), "small_transfers").is_none(),
        "{what}"
    );
    let writes = d["write_requests"]["count"].as_u64().unwrap();
    assert!(
        (64..128).contains(&writes),
        "about a WRITE per write(2): {what}"
    );
}

#[test]
fn healthy_mounts_under_the_mixed_load_have_no_transfer_finding() {
    require_root();
    let daemon = Daemon::start("diag-transfers-mixed", &["--threads", "4"]);
    let on_daemon = diagnose_mount(daemon.path(), mixed_load);
    daemon.stop();
    // bindfs on libfuse 2 is healthy with big writes (without them,
    // `small_transfers` rightly names the load's 1 MiB writes cut into
    // pages: the test above).
    let bindfs = Bindfs::mount(&["-o", "big_writes"]);
    let on_bindfs = diagnose_mount(bindfs.mnt.path(), mixed_load);
    drop(bindfs);
    for d in [on_daemon, on_bindfs] {
        let what = d.to_string();
        // The rules had what they judge by.
        assert!(d["limits"]["max_write"].as_u64().unwrap() > 0, "{what}");
        assert!(
            d["write_requests"]["count"].as_u64().unwrap() > 100,
            "{what}"
        );
        let found = finding_ids(findings_of(&d));
        for id in ["small_transfers", "page_cache_bypassed"] {
            assert!(
                !found.iter().any(|f| f == &id),
                "{id} on a healthy mount: {what}"
            );
        }
    }
}
