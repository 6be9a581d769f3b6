//! Messages go through `log`: `-v` adds fusetrace's debug lines, RUST_LOG
//! overrides the flags (aya's own lines among what it can turn on), and
//! `-q` leaves only what was lost and errors. Real probes on a real mount.

mod common;

use std::process::Command;

use common::*;

/// A short `trace` of `mount` with `flags` before the command, one request
/// made while it runs; returns its stderr.
fn stderr_of(daemon: &Daemon, flags: &[&str], env: Option<(&str, &str)>) -> String {
    let mount = daemon.path().to_str().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(flags).args(["trace", "--mount", mount]);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let tracer = Tracer::spawn(cmd);
    std::fs::write(daemon.path().join("f"), b"x").unwrap();
    tracer.stop().stderr
}

#[test]
fn verbosity_flags_and_rust_log() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("logging", &[]);

    let plain = stderr_of(&daemon, &[], None);
    assert!(!plain.contains("debug:"), "debug lines without -v: {plain}");

    let verbose = stderr_of(&daemon, &["-v"], None);
    assert!(
        verbose.contains("fusetrace: debug: fusetrace::kernel::probes: sent: "),
        "-v names the hook chosen for each point: {verbose}"
    );
    assert!(
        verbose.contains("struct offsets read from BTF"),
        "-v shows the offsets read from BTF: {verbose}"
    );
    assert!(
        !verbose.contains("aya::"),
        "aya's lines only with -vv: {verbose}"
    );

    let aya = stderr_of(&daemon, &[], Some(("RUST_LOG", "aya=debug")));
    assert!(
        aya.contains(": aya::"),
        "RUST_LOG=aya=debug routes aya's own log lines: {aya}"
    );
    assert!(
        !aya.contains("fusetrace: debug: fusetrace::"),
        "RUST_LOG names aya only: {aya}"
    );
}

#[test]
fn quiet_keeps_errors() {
    // No root needed: a bad mount fails before anything is loaded.
    let out = Command::new(bin())
        .args(["-q", "trace", "--mount", "/proc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("fusetrace: error: "), "{stderr}");
}
