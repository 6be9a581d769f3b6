//! `diagnose`'s cache findings against real daemons: the reference daemon
//! and bindfs with and without zero attribute/entry timeouts, and bindfs
//! with and without a negative cache. Each condition is made with the
//! daemon's own option; the same stat(2) loop runs on both sides.

mod common;

use std::{path::Path, process::Command};

use common::*;

/// Files the loop stats, and how many rounds over them.
const FILES: usize = 40;
const ROUNDS: usize = 25;

/// Creates the files the loop stats.
fn make_files(dir: &Path) {
    for i in 0..FILES {
        std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
    }
}

/// stat(2) of every file, round after round.
fn stat_loop(dir: &Path) {
    for _ in 0..ROUNDS {
        for i in 0..FILES {
            std::fs::metadata(dir.join(format!("f{i}"))).unwrap();
        }
    }
}

/// stat(2) of names that do not exist, round after round.
fn missing_loop(dir: &Path) {
    for _ in 0..ROUNDS {
        for i in 0..FILES {
            assert!(std::fs::metadata(dir.join(format!("missing{i}"))).is_err());
        }
    }
}

#[test]
fn zero_timeouts_on_the_reference_daemon_are_found_with_the_daemons_times() {
    require_root();
    let _alone = tracing_alone();
    let daemon = Daemon::start("cache-ttl0", &["--ttl", "0s"]);
    make_files(daemon.path());
    let found = findings_while(daemon.path(), || stat_loop(daemon.path()));
    daemon.stop();
    let attr = finding(&found, "attr_cache")
        .or_else(|| finding(&found, "entry_cache"))
        .unwrap_or_else(|| panic!("no cache finding: {found:?}"));
    // Every stat asks again: the daemon gives no time at all.
    assert_eq!(attr["evidence"]["validity_max_ms"], 0, "{attr}");
    assert!(
        attr["evidence"]["repeated_within_1s"].as_u64().unwrap() >= (FILES * (ROUNDS - 2)) as u64,
        "{attr}"
    );
    assert!(
        attr["knob"].as_str().unwrap().contains("_timeout=1"),
        "{attr}"
    );
    assert!(attr["summary"].as_str().unwrap().contains("0 s"), "{attr}");

    let daemon = Daemon::start("cache-ttl1", &[]);
    make_files(daemon.path());
    let found = findings_while(daemon.path(), || stat_loop(daemon.path()));
    daemon.stop();
    assert!(
        finding(&found, "attr_cache").is_none() && finding(&found, "entry_cache").is_none(),
        "a 1 s cache is working: {:?}",
        finding_ids(&found)
    );
}

#[test]
fn bindfs_with_zero_timeouts_gets_the_attribute_finding_and_without_them_none() {
    require_root();
    let _alone = tracing_alone();
    let src = Scratch::new("cache-bindfs-src");
    let mnt = Scratch::new("cache-bindfs");
    make_files(src.path());
    mount_bindfs(src.path(), mnt.path());
    let unmount = MountGuard(mnt.path().to_path_buf());
    let found = findings_while(mnt.path(), || stat_loop(mnt.path()));
    let attr = finding(&found, "attr_cache").unwrap_or_else(|| panic!("{found:?}"));
    assert_eq!(attr["evidence"]["validity_max_ms"], 0, "{attr}");
    drop(unmount);

    run_ok(Command::new("bindfs").arg(src.path()).arg(mnt.path()));
    let _unmount = MountGuard(mnt.path().to_path_buf());
    let found = findings_while(mnt.path(), || stat_loop(mnt.path()));
    assert!(
        !finding_ids(&found).iter().any(|id| id.ends_with("_cache")),
        "bindfs's default 1 s caches: {:?}",
        finding_ids(&found)
    );
}

#[test]
fn missing_names_asked_again_get_the_negative_cache_finding_unless_bindfs_caches_them() {
    require_root();
    let _alone = tracing_alone();
    let src = Scratch::new("negative-src");
    let mnt = Scratch::new("negative");
    run_ok(Command::new("bindfs").arg(src.path()).arg(mnt.path()));
    let unmount = MountGuard(mnt.path().to_path_buf());
    let found = findings_while(mnt.path(), || missing_loop(mnt.path()));
    let negative = finding(&found, "negative_cache").unwrap_or_else(|| panic!("{found:?}"));
    assert!(
        negative["evidence"]["repeated_within_1s"].as_u64().unwrap()
            >= (FILES * (ROUNDS - 2)) as u64,
        "{negative}"
    );
    assert!(
        negative["knob"]
            .as_str()
            .unwrap()
            .contains("negative_timeout")
    );
    drop(unmount);

    run_ok(
        Command::new("bindfs")
            .args(["-o", "negative_timeout=1"])
            .arg(src.path())
            .arg(mnt.path()),
    );
    let _unmount = MountGuard(mnt.path().to_path_buf());
    let found = findings_while(mnt.path(), || missing_loop(mnt.path()));
    assert!(
        finding(&found, "negative_cache").is_none(),
        "missing names cached for 1 s: {:?}",
        finding_ids(&found)
    );
}
