//! Mounts the reference daemon for real (needs root, /dev/fuse and
//! fusermount3; skipped otherwise) and checks file semantics and counts.

mod common;

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{count, eventually, xattr_get, xattr_set};
use fusetrace::lab::daemon::{DaemonConfig, MountedDaemon};
use fusetrace::lab::load::{self, LoadArgs, Workload};
use fusetrace::pipeline::opcode;

fn can_mount() -> bool {
    let ok = unsafe { libc::geteuid() } == 0
        && Path::new("/dev/fuse").exists()
        && [
            "/usr/bin/fusermount3",
            "/bin/fusermount3",
            "/usr/local/bin/fusermount3",
        ]
        .iter()
        .any(|p| Path::new(p).exists());
    if !ok {
        eprintln!("skipped: needs root, /dev/fuse and fusermount3");
    }
    ok
}

/// A fresh empty directory under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fusetrace-it-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn mount(name: &str, config: DaemonConfig) -> (Scratch, MountedDaemon) {
    let dir = Scratch::new(name);
    let daemon = MountedDaemon::mount(&dir.0, config).expect("mount");
    (dir, daemon)
}

fn mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| {
            l.split(' ')
                .nth(1)
                .map(|m| m.replace("\\040", " "))
                .as_deref()
                == path.to_str()
        })
}

#[test]
fn file_semantics_and_counts() {
    if !can_mount() {
        return;
    }
    let (dir, daemon) = mount("semantics", DaemonConfig::default());
    let root = dir.0.clone();
    let counts = daemon.counts();
    assert_eq!(count(&counts, "INIT"), 1);
    assert!(mounted(&root));

    // Contents round-trip.
    let a = root.join("a.txt");
    fs::write(&a, b"hello fuse").unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"hello fuse");
    let mut f = File::options().append(true).open(&a).unwrap();
    f.write_all(b", again").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(&a).unwrap(), "hello fuse, again");

    // Directories, rename, links.
    let d = root.join("d");
    fs::create_dir(&d).unwrap();
    let b = d.join("b.txt");
    fs::rename(&a, &b).unwrap();
    assert!(!a.exists());
    assert_eq!(fs::read_to_string(&b).unwrap(), "hello fuse, again");
    fs::hard_link(&b, d.join("hard")).unwrap();
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("b.txt", d.join("sym")).unwrap();
    assert_eq!(fs::read_link(d.join("sym")).unwrap(), Path::new("b.txt"));
    assert_eq!(
        fs::read_to_string(d.join("sym")).unwrap(),
        "hello fuse, again"
    );
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b.txt", "hard", "sym"]);

    // Attributes.
    fs::set_permissions(&b, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&b).unwrap().mode() & 0o7777, 0o600);
    File::options()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"hello");
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&b)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(fs::metadata(&b).unwrap().modified().unwrap(), old);
    xattr_set(&b, "user.color", b"blue").unwrap();
    assert_eq!(xattr_get(&b, "user.color").unwrap(), b"blue");
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = CString::new(root.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bfree > 0);

    // Removal.
    assert_eq!(
        fs::remove_dir(&d).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    for name in ["b.txt", "hard", "sym"] {
        fs::remove_file(d.join(name)).unwrap();
    }
    fs::remove_dir(&d).unwrap();
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);

    let snap = counts.snapshot();
    for (op, at_least) in [
        ("LOOKUP", 1),
        ("GETATTR", 1),
        ("SETATTR", 3),
        ("CREATE", 1),
        ("OPEN", 1),
        ("WRITE", 2),
        ("READ", 1),
        ("FLUSH", 1),
        ("MKDIR", 1),
        ("RENAME", 1),
        ("LINK", 1),
        ("SYMLINK", 1),
        ("READLINK", 1),
        ("OPENDIR", 2),
        ("READDIR", 2),
        ("SETXATTR", 1),
        ("GETXATTR", 1),
        ("STATFS", 1),
        ("UNLINK", 3),
        ("RMDIR", 1),
    ] {
        assert!(
            snap.get(op).copied().unwrap_or(0) >= at_least,
            "{op}: expected at least {at_least} in {snap:?}"
        );
    }
    // Exactly as many as the program made.
    assert_eq!(snap["MKDIR"], 1, "{snap:?}");
    assert_eq!(snap["RENAME"], 1, "{snap:?}");
    assert_eq!(snap["LINK"], 1, "{snap:?}");
    assert_eq!(snap["SYMLINK"], 1, "{snap:?}");
    assert_eq!(snap["UNLINK"], 3, "{snap:?}");
    assert_eq!(snap["RMDIR"], 2, "{snap:?}"); // one ENOTEMPTY, one success
    assert_eq!(snap["CREATE"], 1, "{snap:?}");
    assert_eq!(snap["SETXATTR"], 1, "{snap:?}");
    // RELEASE and RELEASEDIR are sent asynchronously after close().
    assert!(eventually(
        || count(&counts, "RELEASE") == count(&counts, "OPEN") + 1
    ));
    assert!(eventually(
        || count(&counts, "RELEASEDIR") == count(&counts, "OPENDIR")
    ));

    daemon.unmount().unwrap();
    assert!(!mounted(&root), "still in /proc/mounts");
    // Counters stay readable after unmount.
    assert_eq!(counts.snapshot()["INIT"], 1);
}

#[test]
fn direct_io_exact_counts() {
    if !can_mount() {
        return;
    }
    let config = DaemonConfig {
        direct_io: true,
        ttl: Duration::ZERO,
        ..DaemonConfig::default()
    };
    let (dir, daemon) = mount("exact", config);
    let c = daemon.counts();
    let path = dir.0.join("f");
    fs::write(&path, vec![7u8; 10_000]).unwrap();
    // Let the asynchronous RELEASE of that file arrive first.
    assert!(eventually(|| count(&c, "RELEASE") == count(&c, "CREATE")));

    let before = c.by_opcode();
    let f = File::open(&path).unwrap();
    let mut buf = [0u8; 100];
    for i in 0..5 {
        assert_eq!(f.read_at(&mut buf, i * 1000).unwrap(), 100);
    }
    assert_eq!(f.read_at(&mut buf, 20_000).unwrap(), 0);
    let w = File::options().write(true).open(&path).unwrap();
    w.write_all_at(b"xyz", 0).unwrap();
    w.write_all_at(b"xyz", 9_998).unwrap();
    drop(w);
    drop(f);
    let delta = |name: &str| {
        let op = opcode::parse(name).unwrap();
        c.get(op) - before.get(&op).copied().unwrap_or(0)
    };
    // With FOPEN_DIRECT_IO every read()/write() is one request.
    assert_eq!(delta("READ"), 6);
    assert_eq!(delta("WRITE"), 2);
    assert_eq!(delta("OPEN"), 2);
    assert_eq!(delta("FLUSH"), 2);
    assert!(
        eventually(|| delta("RELEASE") == 2),
        "RELEASE {}",
        delta("RELEASE")
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), 10_001);

    // With no attribute/entry caching, each stat() asks the daemon again.
    let lookups = c.get(1);
    for _ in 0..10 {
        fs::metadata(&path).unwrap();
    }
    assert!(c.get(1) - lookups >= 10, "LOOKUP {}", c.get(1) - lookups);

    fs::remove_file(&path).unwrap();
    daemon.unmount().unwrap();
    assert!(!mounted(&dir.0));
}

#[test]
fn latency_applies_to_its_opcode_only() {
    if !can_mount() {
        return;
    }
    let config = DaemonConfig {
        direct_io: true,
        latency: vec![(opcode::parse("READ").unwrap(), Duration::from_millis(50))],
        ..DaemonConfig::default()
    };
    let (dir, daemon) = mount("latency", config);
    let path = dir.0.join("slow");
    fs::write(&path, b"data").unwrap();

    let t = Instant::now();
    fs::metadata(&path).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "stat took {:?}",
        t.elapsed()
    );

    let mut f = File::open(&path).unwrap();
    let t = Instant::now();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    // data + EOF: two READs.
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "read took {:?}",
        t.elapsed()
    );
    assert_eq!(s, "data");
    drop(f);
    fs::remove_file(&path).unwrap();
    daemon.unmount().unwrap();
}

/// Two reads of 200ms each, issued at once from two threads.
fn concurrent_reads(threads: usize) -> Duration {
    let config = DaemonConfig {
        direct_io: true,
        threads,
        latency: vec![(opcode::parse("READ").unwrap(), Duration::from_millis(200))],
        ..DaemonConfig::default()
    };
    let (dir, daemon) = mount("threads", config);
    let files: Vec<PathBuf> = (0..2).map(|i| dir.0.join(format!("f{i}"))).collect();
    for f in &files {
        fs::write(f, b"x").unwrap();
    }
    let opened: Vec<File> = files.iter().map(|f| File::open(f).unwrap()).collect();
    let barrier = std::sync::Barrier::new(2);
    let t = Instant::now();
    std::thread::scope(|s| {
        for f in &opened {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                let mut b = [0u8; 1];
                assert_eq!(f.read_at(&mut b, 0).unwrap(), 1);
            });
        }
    });
    let elapsed = t.elapsed();
    drop(opened);
    for f in &files {
        fs::remove_file(f).unwrap();
    }
    daemon.unmount().unwrap();
    elapsed
}

#[test]
fn worker_threads_overlap_slow_requests() {
    if !can_mount() {
        return;
    }
    let pooled = concurrent_reads(4);
    assert!(pooled < Duration::from_millis(390), "4 threads: {pooled:?}");
    let serial = concurrent_reads(1);
    assert!(serial >= Duration::from_millis(400), "1 thread: {serial:?}");
}

#[test]
fn writeback_cache_and_max_write() {
    if !can_mount() {
        return;
    }
    let config = DaemonConfig {
        writeback_cache: true,
        threads: 3,
        max_write: Some(64 << 10),
        max_background: Some(8),
        ..DaemonConfig::default()
    };
    let (dir, daemon) = mount("writeback", config);
    let path = dir.0.join("big");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 241) as u8).collect();
    let mut f = File::create(&path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), data);
    let c = daemon.counts();
    // 1 MiB in requests of at most 64 KiB.
    assert!(count(&c, "WRITE") >= 16, "{:?}", c.snapshot());
    assert!(count(&c, "FSYNC") >= 1, "{:?}", c.snapshot());
    fs::remove_file(&path).unwrap();
    daemon.unmount().unwrap();
    assert!(!mounted(&dir.0));
}

#[test]
fn load_generator_on_the_mount() {
    if !can_mount() {
        return;
    }
    let (dir, daemon) = mount(
        "load",
        DaemonConfig {
            threads: 2,
            ..DaemonConfig::default()
        },
    );
    let report = load::run(&LoadArgs {
        mountpoint: dir.0.clone(),
        workload: Workload::Mixed,
        duration: None,
        ops: Some(400),
        jobs: 2,
        file_size: 256 << 10,
        block_size: 4096,
    })
    .unwrap();
    assert_eq!((report.ops, report.errors), (400, 0), "{report}");
    assert!(report.to_string().starts_with("load: mixed 400 ops in "));
    assert_eq!(
        fs::read_dir(&dir.0).unwrap().count(),
        0,
        "load left files behind"
    );
    let c = daemon.counts();
    for op in ["CREATE", "UNLINK", "WRITE", "LOOKUP", "MKDIR", "RMDIR"] {
        assert!(count(&c, op) > 0, "{op}: {:?}", c.snapshot());
    }
    daemon.unmount().unwrap();
}

#[test]
fn unmount_with_a_file_still_open() {
    if !can_mount() {
        return;
    }
    let (dir, daemon) = mount("busy", DaemonConfig::default());
    let path = dir.0.join("held");
    let held = File::create(&path).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    // EBUSY: detached at once; the session ends once the file is closed.
    daemon.unmount().unwrap();
    assert!(!mounted(&dir.0));
    closer.join().unwrap();
}

#[test]
fn drop_unmounts() {
    if !can_mount() {
        return;
    }
    let (dir, daemon) = mount("drop", DaemonConfig::default());
    fs::write(dir.0.join("x"), b"1").unwrap();
    drop(daemon);
    assert!(!mounted(&dir.0));
    assert!(!dir.0.join("x").exists());
}

#[test]
fn mount_errors_are_one_line() {
    let err = MountedDaemon::mount(Path::new("/nonexistent/fusetrace"), DaemonConfig::default())
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "mountpoint /nonexistent/fusetrace does not exist"
    );
}

#[test]
fn stacked_mounts_unmount_in_any_order() {
    if !can_mount() {
        return;
    }
    let (dir, lower) = mount("stacked", DaemonConfig::default());
    fs::write(dir.0.join("lower"), b"1").unwrap();
    let upper = MountedDaemon::mount(&dir.0, DaemonConfig::default()).unwrap();
    assert!(
        !dir.0.join("lower").exists(),
        "upper mount should hide lower"
    );
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        upper.unmount().unwrap();
    });
    // Covered at first: waits for the upper mount to go, then unmounts.
    lower.unmount().unwrap();
    t.join().unwrap();
    assert!(!mounted(&dir.0));
}
