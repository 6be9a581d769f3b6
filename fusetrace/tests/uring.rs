//! The reference daemon over FUSE over io_uring (`fusetrace daemon
//! --io-uring`): real mounts on the running kernel, as root. Every test
//! holds a `UringParam` guard, which switches the kernel's
//! `enable_uring` on (or off) and puts the old value back at the end.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Scratch, UringParam, count, cstring, eventually, is_mounted, line_channel,
    wait_for_line_within, xattr_get, xattr_remove, xattr_set,
};
use fusetrace::lab::daemon::{DaemonConfig, MountedDaemon, ServedCounts};
use fusetrace::lab::load::{self, LoadArgs, Workload};
use fusetrace::pipeline::opcode;

fn can_mount() -> bool {
    let ok = unsafe { libc::geteuid() } == 0 && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipped: needs root and /dev/fuse");
    }
    ok
}

fn ring_config() -> DaemonConfig {
    DaemonConfig {
        io_uring: true,
        ttl: Duration::ZERO,
        ..DaemonConfig::default()
    }
}

/// Our threads serving FUSE (by name) and our descriptors on /dev/fuse or
/// an io_uring.
fn fuse_threads_and_fds() -> (usize, usize) {
    let threads = fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .filter(|c| c.starts_with("fuse-uring") || c.trim() == "fuse-session")
        .count();
    let fds = fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|f| fs::read_link(f.path()).ok())
        .filter(|t| t == Path::new("/dev/fuse") || t == Path::new("anon_inode:[io_uring]"))
        .count();
    (threads, fds)
}

fn possible_cpus() -> usize {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// LOOKUPs and GETATTRs served for 10 stat() calls of `path`.
fn stat_deltas(counts: &ServedCounts, path: &Path) -> (u64, u64) {
    let (l, g) = (count(counts, "LOOKUP"), count(counts, "GETATTR"));
    for _ in 0..10 {
        fs::metadata(path).unwrap();
    }
    (count(counts, "LOOKUP") - l, count(counts, "GETATTR") - g)
}

/// `stat_deltas` on the reference daemon's /dev/fuse transport.
fn fuser_stat_deltas() -> (u64, u64) {
    let dir = Scratch::new("uring-fuser");
    let config = DaemonConfig {
        io_uring: false,
        ..ring_config()
    };
    let daemon = MountedDaemon::mount(dir.path(), config).unwrap();
    let f = dir.path().join("f");
    fs::write(&f, b"x").unwrap();
    fs::metadata(&f).unwrap(); // the first statx() may be tried (ENOSYS) once
    let deltas = stat_deltas(&daemon.counts(), &f);
    daemon.unmount().unwrap();
    deltas
}

#[test]
fn workload_through_the_ring() {
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("uring-workload");
    let daemon = MountedDaemon::mount(dir.path(), ring_config()).expect("mount --io-uring");
    let root = dir.path().to_path_buf();
    let counts = daemon.counts();
    let transport = daemon.transport().expect("io_uring transport");
    assert_eq!(count(&counts, "INIT"), 1);

    // Contents round-trip, small and large (a 1 MiB write and read go
    // through the payload buffers in several requests).
    let f = root.join("f");
    fs::write(&f, b"hello ring").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello ring");
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let bigpath = root.join("big");
    File::create(&bigpath).unwrap().write_all(&big).unwrap();
    let mut back = Vec::new();
    File::open(&bigpath)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big, "1 MiB file read back differently");
    assert_eq!(fs::metadata(&bigpath).unwrap().len(), 1 << 20);

    // With ttl 0 every stat() of a path looks its name up again and asks
    // for fresh attributes: one LOOKUP each, and as many GETATTRs as the
    // fuser transport gets for the same calls.
    let (lookups, getattrs) = stat_deltas(&counts, &f);
    assert_eq!(lookups, 10);
    assert_eq!(
        (lookups, getattrs),
        fuser_stat_deltas(),
        "ring vs /dev/fuse transport"
    );
    assert!(getattrs >= 10 && getattrs % 10 == 0, "{getattrs}");

    // Directories, rename, links, xattrs.
    let d = root.join("d");
    fs::create_dir(&d).unwrap();
    let g = d.join("g");
    fs::rename(&f, &g).unwrap();
    assert!(!f.exists());
    assert_eq!(fs::read(&g).unwrap(), b"hello ring");
    fs::hard_link(&g, d.join("h")).unwrap();
    assert_eq!(fs::metadata(&g).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("d/g", root.join("s")).unwrap();
    for _ in 0..2 {
        assert_eq!(fs::read_link(root.join("s")).unwrap(), Path::new("d/g"));
    }
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big", "d", "s"]);
    xattr_set(&g, "user.color", b"blue").unwrap();
    assert_eq!(xattr_get(&g, "user.color").unwrap(), b"blue");
    xattr_remove(&g, "user.color").unwrap();
    assert_eq!(
        xattr_get(&g, "user.color").unwrap_err().raw_os_error(),
        Some(libc::ENODATA)
    );
    File::options()
        .write(true)
        .open(&g)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(fs::read(&g).unwrap(), b"hello");
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(cstring(&root).as_ptr(), &mut st) },
        0
    );
    assert!(st.f_blocks > 0 && st.f_bfree > 0);

    // Errors come back through the ring too.
    assert_eq!(
        fs::remove_dir(&d).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        fs::metadata(root.join("missing"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    for p in [g.clone(), d.join("h"), root.join("s"), bigpath.clone()] {
        fs::remove_file(p).unwrap();
    }
    fs::remove_dir(&d).unwrap();
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);

    let snap = counts.snapshot();
    for (op, n) in [
        ("CREATE", 2),
        ("MKDIR", 1),
        ("RENAME", 1),
        ("LINK", 1),
        ("SYMLINK", 1),
        ("READLINK", 2),
        ("SETXATTR", 1),
        ("REMOVEXATTR", 1),
        ("UNLINK", 4),
        ("RMDIR", 2), // one ENOTEMPTY, one success
        ("STATFS", 1),
    ] {
        assert_eq!(snap.get(op).copied(), Some(n), "{op} in {snap:?}");
    }
    for op in [
        "OPEN", "READ", "WRITE", "FLUSH", "SETATTR", "OPENDIR", "READDIR",
    ] {
        assert!(snap.get(op).copied().unwrap_or(0) > 0, "{op} in {snap:?}");
    }
    assert!(eventually(
        || count(&counts, "RELEASE") == count(&counts, "OPEN") + count(&counts, "CREATE")
    ));
    assert!(eventually(
        || count(&counts, "RELEASEDIR") == count(&counts, "OPENDIR")
    ));

    // Everything but INIT and the forgets came from the ring.
    let (ring, dev) = (transport.ring(), transport.dev());
    let by_dev = [opcode::INIT, opcode::FORGET, opcode::BATCH_FORGET];
    for (op, n) in dev.by_opcode() {
        assert!(
            by_dev.contains(&op) || op == opcode::INTERRUPT,
            "{} ({n}) was read from /dev/fuse: {:?}",
            opcode::name(op),
            dev.snapshot()
        );
    }
    assert_eq!(dev.get(opcode::INIT), 1);
    for (op, n) in counts.by_opcode() {
        if by_dev.contains(&op) {
            assert_eq!(dev.get(op), n, "{}", opcode::name(op));
            assert_eq!(ring.get(op), 0, "{}", opcode::name(op));
        } else {
            assert_eq!(
                ring.get(op),
                n,
                "{}: ring {:?}",
                opcode::name(op),
                ring.snapshot()
            );
        }
    }
    // The ring also carried requests answered uncounted (STATX: ENOSYS).
    let counted: u64 = counts
        .by_opcode()
        .into_iter()
        .filter(|(op, _)| !by_dev.contains(op))
        .map(|(_, n)| n)
        .sum();
    assert!(counted > 50, "{counted}");
    assert!(daemon.served_by_ring() >= counted);

    daemon.unmount().unwrap();
    assert!(!is_mounted(&root), "still mounted");
}

#[test]
fn latency_applies_on_the_ring() {
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("uring-latency");
    let config = DaemonConfig {
        latency: vec![(opcode::GETATTR, Duration::from_millis(20))],
        ..ring_config()
    };
    let daemon = MountedDaemon::mount(dir.path(), config).unwrap();
    let ring = daemon.transport().unwrap().ring();
    fs::write(dir.path().join("x"), b"1").unwrap();
    for _ in 0..3 {
        let before = ring.get(opcode::GETATTR);
        let t = Instant::now();
        fs::metadata(dir.path().join("x")).unwrap();
        let took = t.elapsed();
        let n = ring.get(opcode::GETATTR) - before;
        assert!(n >= 1, "no GETATTR through the ring");
        assert!(
            took >= Duration::from_millis(20) * n as u32,
            "stat ({n} GETATTR) took {took:?}"
        );
    }
    daemon.unmount().unwrap();
}

#[test]
fn refused_when_the_kernel_switch_is_off() {
    let Some(_off) = UringParam::exclusive("N") else {
        return;
    };
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("uring-off");
    let err = MountedDaemon::mount(dir.path(), ring_config()).unwrap_err();
    assert!(
        err.to_string().contains("FUSE over io_uring is off"),
        "{err:#}"
    );
    let out = Command::new(common::bin())
        .arg("daemon")
        .arg(dir.path())
        .arg("--io-uring")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "FUSE over io_uring is off: write Y to /sys/module/fuse/parameters/enable_uring"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(!is_mounted(dir.path()));
    // The daemon never writes the switch.
    assert_eq!(
        fs::read_to_string(common::ENABLE_URING).unwrap().trim(),
        "N"
    );
}

#[test]
fn teardown_leaves_no_mount_and_no_thread() {
    // Exclusive: no other mount of this test binary may add threads or
    // descriptors while we count ours.
    let Some(_uring) = UringParam::exclusive("Y") else {
        return;
    };
    if !can_mount() {
        return;
    }
    let baseline = fuse_threads_and_fds();
    let queues = possible_cpus();

    // 1. MountedDaemon::unmount.
    let dir = Scratch::new("uring-teardown");
    let daemon = MountedDaemon::mount(dir.path(), ring_config()).unwrap();
    let (threads, fds) = fuse_threads_and_fds();
    // The session thread and one per CPU queue; /dev/fuse (ours and
    // fuser's) and one io_uring per queue.
    assert_eq!(threads, baseline.0 + 1 + queues);
    assert_eq!(fds, baseline.1 + 2 + queues);
    fs::write(dir.path().join("a"), b"x").unwrap();
    let end = daemon.session_end();
    daemon.unmount().unwrap();
    assert!(end.wait_timeout(Duration::ZERO));
    assert!(!is_mounted(dir.path()));
    assert_eq!(fuse_threads_and_fds(), baseline);

    // 2. Unmounted by somebody else, with a file still open (lazy detach):
    //    the session ends at the last close.
    let daemon = MountedDaemon::mount(dir.path(), ring_config()).unwrap();
    let open = File::create(dir.path().join("b")).unwrap();
    let end = daemon.session_end();
    assert_eq!(
        unsafe { libc::umount2(cstring(dir.path()).as_ptr(), libc::MNT_DETACH) },
        0
    );
    assert!(!is_mounted(dir.path()));
    assert!(!end.wait_timeout(Duration::from_millis(200)));
    drop(open);
    assert!(
        end.wait_timeout(Duration::from_secs(10)),
        "session never ended"
    );
    daemon.unmount().unwrap();
    assert_eq!(fuse_threads_and_fds(), baseline);

    // 3. The binary: Ctrl-C unmounts and exits 0.
    let mut child = Command::new(common::bin())
        .arg("daemon")
        .arg(dir.path())
        .arg("--io-uring")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    wait_for_line_within(
        &lines,
        "mounted",
        "fusetrace daemon --io-uring",
        common::STEP_TIMEOUT,
    );
    fs::write(dir.path().join("c"), b"y").unwrap();
    assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"y");
    let tasks = fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .filter(|c| c.starts_with("fuse-uring"))
        .count();
    assert_eq!(tasks, queues);
    common::signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "{err}");
    assert!(!is_mounted(dir.path()));
}

/// Requests served by opcode for one 1 MiB pwrite() and one 1 MiB pread()
/// with FOPEN_DIRECT_IO and a 64 KiB max_write.
fn direct_io_deltas(io_uring: bool) -> BTreeMap<u32, u64> {
    let dir = Scratch::new("uring-direct");
    let config = DaemonConfig {
        io_uring,
        direct_io: true,
        max_write: Some(64 << 10),
        ..ring_config()
    };
    let daemon = MountedDaemon::mount(dir.path(), config).unwrap();
    let c = daemon.counts();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 241) as u8).collect();
    let f = File::options()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let before = c.by_opcode();
    f.write_all_at(&data, 0).unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    let after = c.by_opcode();
    assert!(back == data, "read back differently (io_uring {io_uring})");
    drop(f);
    daemon.unmount().unwrap();
    after
        .into_iter()
        .map(|(op, n)| (op, n - before.get(&op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn direct_io_and_max_write_as_on_dev_fuse() {
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    if !can_mount() {
        return;
    }
    let ring = direct_io_deltas(true);
    // 1 MiB in WRITEs of max_write (64 KiB) each.
    assert_eq!(ring.get(&opcode::WRITE), Some(&16), "{ring:?}");
    assert!(ring.get(&opcode::READ).is_some_and(|n| *n >= 1), "{ring:?}");
    assert_eq!(ring, direct_io_deltas(false), "ring vs /dev/fuse transport");
}

#[test]
fn writeback_cache_on_the_ring() {
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("uring-writeback");
    let config = DaemonConfig {
        writeback_cache: true,
        max_write: Some(64 << 10),
        max_background: Some(8),
        ttl: Duration::from_secs(1),
        ..ring_config()
    };
    let daemon = MountedDaemon::mount(dir.path(), config).unwrap();
    let path = dir.path().join("big");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 239) as u8).collect();
    let mut f = File::create(&path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(&path).unwrap() == data);
    let c = daemon.counts();
    assert!(count(&c, "WRITE") >= 16, "{:?}", c.snapshot());
    assert!(count(&c, "FSYNC") >= 1, "{:?}", c.snapshot());
    let ring = daemon.transport().unwrap().ring();
    assert_eq!(ring.get(opcode::WRITE), count(&c, "WRITE"));
    fs::remove_file(&path).unwrap();
    daemon.unmount().unwrap();
}

#[test]
fn load_generator_on_both_queues() {
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("uring-load");
    let daemon = MountedDaemon::mount(dir.path(), ring_config()).unwrap();
    let report = load::run(&LoadArgs {
        mountpoint: dir.path().to_path_buf(),
        workload: Workload::Mixed,
        duration: None,
        ops: Some(600),
        jobs: 4,
        file_size: 256 << 10,
        block_size: 4096,
    })
    .unwrap();
    assert_eq!((report.ops, report.errors), (600, 0), "{report}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    let c = daemon.counts();
    let transport = daemon.transport().unwrap();
    for op in [
        "CREATE", "UNLINK", "WRITE", "READ", "LOOKUP", "MKDIR", "RMDIR",
    ] {
        let n = count(&c, op);
        assert!(n > 0, "{op}: {:?}", c.snapshot());
        assert_eq!(transport.ring().get(opcode::parse(op).unwrap()), n, "{op}");
    }
    daemon.unmount().unwrap();
    assert!(!is_mounted(dir.path()));
}

#[test]
fn interrupts_come_by_dev_fuse() {
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("uring-interrupt");
    let config = DaemonConfig {
        latency: vec![(opcode::GETATTR, Duration::from_millis(300))],
        ..ring_config()
    };
    let daemon = MountedDaemon::mount(dir.path(), config).unwrap();
    let (c, transport) = (daemon.counts(), daemon.transport().unwrap());
    let path = dir.path().join("x");
    fs::write(&path, b"1").unwrap();

    // A signal (handled) while a GETATTR is in service: the kernel sends an
    // INTERRUPT by /dev/fuse, which we answer ENOSYS (as fuser); the stat
    // still gets its answer from the ring.
    let script = "import os, signal, sys\n\
                  signal.signal(signal.SIGUSR1, lambda *a: None)\n\
                  print('ready', flush=True)\n\
                  os.stat(sys.argv[1])\n";
    // Nothing else touches the mount from here on.
    let getattrs = transport.ring().get(opcode::GETATTR);
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    wait_for_line_within(&lines, "ready", "python3", common::STEP_TIMEOUT);
    assert!(eventually(
        || transport.ring().get(opcode::GETATTR) > getattrs
    ));
    common::signal(&child, libc::SIGUSR1);
    assert!(child.wait().unwrap().success());
    let dev = transport.dev();
    assert_eq!(dev.get(opcode::INTERRUPT), 1, "{:?}", dev.snapshot());
    assert_eq!(count(&c, "INTERRUPT"), 0, "INTERRUPT is never counted");
    daemon.unmount().unwrap();
}

#[test]
fn forgets_come_by_dev_fuse() {
    let Some(_uring) = UringParam::enable() else {
        return;
    };
    if !can_mount() {
        return;
    }
    let dir = Scratch::new("uring-forget");
    let daemon = MountedDaemon::mount(dir.path(), ring_config()).unwrap();
    let (c, transport) = (daemon.counts(), daemon.transport().unwrap());
    let dev = transport.dev();
    // Unlinked and evicted inodes are forgotten by /dev/fuse.
    for i in 0..5 {
        fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        fs::remove_file(dir.path().join(format!("f{i}"))).unwrap();
    }
    let forgets = || dev.get(opcode::FORGET) + dev.get(opcode::BATCH_FORGET);
    assert!(eventually(|| forgets() > 0), "{:?}", dev.snapshot());
    assert_eq!(
        count(&c, "FORGET") + count(&c, "BATCH_FORGET"),
        forgets(),
        "{:?}",
        c.snapshot()
    );
    let ring = transport.ring();
    assert_eq!(ring.get(opcode::FORGET) + ring.get(opcode::BATCH_FORGET), 0);
    daemon.unmount().unwrap();
}
