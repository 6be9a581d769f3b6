//! The daemon map (`fusetrace-ebpf/src/daemons.rs`): on kernels where the
//! daemon side is seen at syscalls, the programs return at once for every
//! process that holds no `/dev/fuse`, and a daemon that starts while
//! tracing runs must still be found from its first request on. bindfs is
//! the hard case: it mounts, then forks into the background, so the
//! process reading `/dev/fuse` did not exist when tracing began.

mod common;

use std::{fs, io::Write, process::Command};

use common::*;

#[test]
fn a_daemon_started_while_tracing_has_every_stage_from_its_init_on() {
    require_root();
    let src = Scratch::new("daemon-map-src");
    let mnt = Scratch::new("daemon-map-mnt");
    fs::write(src.path().join("hello"), b"hello\n").unwrap();
    // Every mount: this one does not exist yet.
    let tracer = Tracer::start(&["trace", "--format", "json"]);
    mount_bindfs(src.path(), mnt.path());
    let conn = connection_of(mnt.path());
    assert_eq!(fs::read(mnt.path().join("hello")).unwrap(), b"hello\n");
    let mut f = fs::File::create(mnt.path().join("new")).unwrap();
    f.write_all(b"data").unwrap();
    drop(f);
    assert_eq!(fs::read_dir(mnt.path()).unwrap().count(), 2);
    run_ok(Command::new("fusermount3").arg("-u").arg(mnt.path()));
    let traced = tracer.stop();
    assert_every_stage(
        &traced,
        &traced.on(conn),
        &[
            "INIT", "LOOKUP", "OPEN", "READ", "CREATE", "WRITE", "READDIR",
        ],
        "a bindfs started while tracing",
    );
    assert_nothing_lost(&traced.summary);
}
