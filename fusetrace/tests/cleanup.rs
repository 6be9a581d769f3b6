//! Ctrl-C leaves nothing behind. Alone in its test binary, so no other test's
//! probes are loaded while it counts programs in the kernel.

mod common;

use common::*;

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
    require_root();
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
