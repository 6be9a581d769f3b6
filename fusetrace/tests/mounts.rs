//! A `--mount` names a mount by its connection number, which the kernel
//! hands to the next mount once the named one is unmounted. Alone in its
//! test binary: other tests' mounts would take the freed number first.

mod common;

use std::fs;

use common::*;

#[test]
fn a_named_mount_whose_number_a_new_mount_takes_is_no_longer_traced() {
    require_root();
    let first = Daemon::start("reused-first", &[]);
    let conn = connection_of(first.path());
    let mount = first.path().to_str().unwrap().to_string();
    let tracer = Tracer::start(&["trace", "--format", "json", "--mount", &mount]);
    // Counting in the kernel: the cells carry the mount's generation.
    let counter = Tracer::start(&["stats", "--format", "json", "--mount", &mount]);
    let before = first.snapshot();
    fs::write(first.path().join("a"), b"first mount").unwrap();
    let _ = fs::metadata(first.path().join("a")).unwrap();
    let served_first = first.stop_since(&before);

    let second = Daemon::start("reused-second", &[]);
    assert_eq!(
        connection_of(second.path()),
        conn,
        "precondition: the kernel gives a new mount the lowest free number, here the first mount's"
    );
    for i in 0..20 {
        fs::write(second.path().join(format!("f{i}")), b"second mount").unwrap();
        let _ = fs::read(second.path().join(format!("f{i}"))).unwrap();
    }
    let served_second = second.stop();
    let traced = tracer.stop();
    let counted = counter.stop();

    let seen = count_by_op(&traced.on(conn));
    assert_eq!(
        seen, served_first,
        "traced (left) is the first mount's traffic only (right); the second served {served_second:?}"
    );
    assert!(
        traced
            .stderr
            .contains("was unmounted and a new mount took its connection number"),
        "stderr: {}",
        traced.stderr
    );
    assert_eq!(traced.summary["mounts_gone"], 1, "{}", traced.summary);

    // The same from `stats`, which counts in the kernel. (Forgets do not
    // pass the request queue it hooks.)
    let expected: std::collections::BTreeMap<String, u64> = served_first
        .iter()
        .filter(|(op, _)| !matches!(op.as_str(), "FORGET" | "BATCH_FORGET"))
        .map(|(op, n)| (op.clone(), *n))
        .collect();
    let got: std::collections::BTreeMap<String, u64> = whole_run_by_op(&counted)
        .into_iter()
        .map(|(op, row)| (op, row["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got, expected,
        "counted in the kernel (left) vs the first mount's (right)"
    );
    assert!(
        counted
            .stderr
            .contains("was unmounted and a new mount took its connection number"),
        "stderr: {}",
        counted.stderr
    );
    assert_eq!(counted.summary["mounts_gone"], 1, "{}", counted.summary);
}
