//! `fusetrace diagnose`'s error and latency findings against real daemons
//! (issue 28): `enosys`, `error_storm`, `interrupt_storm` and `slow_paths`.
//! For each, one run that creates the condition (the reference daemon
//! answering an opcode with an errno, or slow; signals hitting calls to a
//! slow bindfs) and one that does not; and none of them on healthy mounts
//! (the reference daemon with 4 threads, bindfs) under the mixed load.

mod common;

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
};

use common::*;
use serde_json::Value;

/// The finding ids this file is about.
const IDS: [&str; 4] = ["enosys", "error_storm", "interrupt_storm", "slow_paths"];

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn statfs(path: &Path) -> std::io::Result<()> {
    let p = cstring(path);
    // SAFETY: a valid C string and a zeroed out-struct.
    let rc = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(p.as_ptr(), &mut st)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn an_opcode_answered_enosys_again_and_again_is_found() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("enosys", &["--errno", "STATFS=ENOSYS"]);
    let before = daemon.snapshot();
    let d = findings_while(daemon.path(), || {
        for _ in 0..100 {
            let e = statfs(daemon.path()).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSYS));
        }
    });
    let served = daemon.stop_since(&before);
    assert_eq!(served.get("STATFS"), Some(&100), "{served:?}");
    let f = finding(&d, "enosys").unwrap_or_else(|| panic!("no enosys finding: {d:?}"));
    assert_eq!(f["evidence"]["opcode"], "STATFS", "{f}");
    assert!(n(&f["evidence"]["count"]) >= 100, "{f}");
    assert!(f["evidence"]["per_second"].as_f64().unwrap() > 0.0, "{f}");
    assert!(
        f["knob"].as_str().unwrap().contains("`statfs` callback"),
        "{f}"
    );
    for other in ["error_storm", "interrupt_storm", "slow_paths"] {
        assert!(finding(&d, other).is_none(), "{other}: {d:?}");
    }
}

#[test]
fn enosys_the_kernel_remembers_is_not_found() {
    let _alone = tracing_alone();
    // FSYNC answered ENOSYS once: the kernel stops sending it (no_fsync).
    let daemon = Daemon::start("enosys-once", &["--errno", "FSYNC=ENOSYS"]);
    let file = daemon.path().join("synced");
    fs::write(&file, b"data").unwrap();
    let before = daemon.snapshot();
    let d = findings_while(daemon.path(), || {
        let f = File::options().write(true).open(&file).unwrap();
        for _ in 0..100 {
            f.sync_all().unwrap();
            statfs(daemon.path()).unwrap();
        }
    });
    let served = daemon.stop_since(&before);
    assert_eq!(served.get("FSYNC"), Some(&1), "remembered: {served:?}");
    assert_eq!(served.get("STATFS"), Some(&100), "{served:?}");
    assert!(finding(&d, "enosys").is_none(), "{d:?}");
}

#[test]
fn an_error_storm_names_opcode_errno_and_path() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("storm", &["--errno", "OPEN=EACCES"]);
    let file = daemon.path().join("locked");
    let d = findings_while(daemon.path(), || {
        // CREATE is not OPEN: the file comes into being (and the tracer
        // learns its name).
        File::create(&file).unwrap();
        for _ in 0..100 {
            let e = File::open(&file).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        }
    });
    daemon.stop();
    let f = finding(&d, "error_storm").unwrap_or_else(|| panic!("no error_storm finding: {d:?}"));
    let e = &f["evidence"];
    assert_eq!(
        (&e["opcode"], &e["errno"]),
        (&"OPEN".into(), &"EACCES".into()),
        "{f}"
    );
    assert!(n(&e["count"]) >= 100, "{f}");
    let top = &e["top_paths"][0];
    assert!(
        top["path"].as_str().unwrap().ends_with("/locked") && n(&top["count"]) >= 100,
        "{f}"
    );
    assert!(
        f["knob"].as_str().unwrap().contains("default_permissions"),
        "{f}"
    );
    for other in ["enosys", "interrupt_storm", "slow_paths"] {
        assert!(finding(&d, other).is_none(), "{other}: {d:?}");
    }
}

#[test]
fn successes_and_failed_lookups_are_no_error_storm() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("no-storm", &[]);
    let file = daemon.path().join("open");
    File::create(&file).unwrap();
    let missing = daemon.path().join("missing");
    let d = findings_while(daemon.path(), || {
        for _ in 0..100 {
            File::open(&file).unwrap();
            // LOOKUP answered ENOENT: normal (the negative cache's business).
            assert!(fs::metadata(&missing).is_err());
        }
    });
    daemon.stop();
    assert!(finding(&d, "error_storm").is_none(), "{d:?}");
}

/// A bindfs mount of `src` at `mnt` (with `args`), unmounted on drop.
fn bindfs(args: &[&str], src: &Path, mnt: &Path) -> MountGuard {
    fs::create_dir_all(mnt).unwrap();
    run_ok(Command::new("bindfs").args(args).arg(src).arg(mnt));
    assert!(is_mounted(mnt), "bindfs did not mount {}", mnt.display());
    MountGuard(mnt.to_path_buf())
}

/// Empty handler: the signal only has to interrupt (SA_RESTART: calls
/// that return EINTR are restarted, none fails).
extern "C" fn ignore_signal(_: libc::c_int) {}

/// A POSIX timer, deleted on drop (also when the work under it panics).
struct Timer(libc::timer_t);

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: a timer this process created and has not deleted.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// Runs `work` on this thread while a timer sends it SIGUSR2 every 2 ms
/// (the kernel's timer, to this thread only).
fn with_timer_signals(work: impl FnOnce()) {
    // SAFETY: sigaction with a valid handler; the timer targets this
    // thread (SIGEV_THREAD_ID) and is deleted when `Timer` drops.
    let _timer = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        let mut ev: libc::sigevent = std::mem::zeroed();
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = libc::SIGUSR2;
        ev.sigev_notify_thread_id = libc::gettid();
        let mut timer: libc::timer_t = std::mem::zeroed();
        assert_eq!(
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer),
            0
        );
        let timer = Timer(timer);
        let every = libc::timespec {
            tv_sec: 0,
            tv_nsec: 2_000_000,
        };
        let spec = libc::itimerspec {
            it_interval: every,
            it_value: every,
        };
        assert_eq!(
            libc::timer_settime(timer.0, 0, &spec, std::ptr::null_mut()),
            0
        );
        timer
    };
    work();
}

/// bindfs over the reference daemon whose STATFS takes 20 ms: a statfs(2)
/// on the bindfs mount waits 20 ms for bindfs's own statfs below. `work`
/// gets the bindfs mount; the diagnosis is bindfs's. Multithreaded: a
/// single-threaded daemon reads nothing while it serves, and the kernel
/// drops an INTERRUPT whose request has ended.
fn slow_bindfs(name: &str, work: impl FnOnce(&Path)) -> Vec<Value> {
    let daemon = Daemon::start(name, &["--latency", "STATFS=20ms"]);
    let scratch = Scratch::new(name);
    let mnt = scratch.path().join("mnt");
    let bindfs = bindfs(&["--multithreaded"], daemon.path(), &mnt);
    assert_ne!(
        fs::metadata(&mnt).unwrap().dev(),
        fs::metadata(daemon.path()).unwrap().dev()
    );
    let d = findings_while(&mnt, || work(&mnt));
    drop(bindfs);
    daemon.stop();
    d
}

#[test]
fn signals_during_slow_calls_are_an_interrupt_storm() {
    let _alone = tracing_alone();
    let d = slow_bindfs("interrupts", |mnt| {
        with_timer_signals(|| {
            for _ in 0..60 {
                statfs(mnt).unwrap();
            }
        })
    });
    let f = finding(&d, "interrupt_storm").unwrap_or_else(|| panic!("no interrupt_storm: {d:?}"));
    let e = &f["evidence"];
    // Every call lasts 20 ms and a signal comes every 2 ms: each one is
    // interrupted once (the kernel then waits for the answer unless killed).
    assert!((50..=60).contains(&n(&e["count"])), "{f}");
    assert_eq!(e["targets"][0]["opcode"], "STATFS", "{f}");
    assert!(n(&e["targets"][0]["count"]) >= 50, "{f}");
    assert!(n(&e["interrupted_daemon_mean_ns"]) >= 20_000_000, "{f}");
    // libfuse takes INTERRUPTs without answering them.
    assert!(n(&e["answers"]["none"]) >= 50, "{f}");
    assert!(f["knob"].as_str().unwrap().contains("signal source"), "{f}");
}

#[test]
fn slow_calls_without_signals_are_no_interrupt_storm() {
    let _alone = tracing_alone();
    let d = slow_bindfs("no-interrupts", |mnt| {
        for _ in 0..60 {
            statfs(mnt).unwrap();
        }
    });
    assert!(finding(&d, "interrupt_storm").is_none(), "{d:?}");
}

/// 60 open+close of one file on the reference daemon with these flags,
/// among twice as many statfs(2): OPEN is a minority of the requests.
fn opens(name: &str, flags: &[&str]) -> Vec<Value> {
    let daemon = Daemon::start(name, flags);
    let file = daemon.path().join("slowfile");
    let d = findings_while(daemon.path(), || {
        File::create(&file).unwrap();
        for _ in 0..60 {
            drop(File::open(&file).unwrap());
            statfs(daemon.path()).unwrap();
            statfs(daemon.path()).unwrap();
        }
    });
    daemon.stop();
    d
}

#[test]
fn a_slow_operation_is_a_slow_path_in_the_daemon() {
    let _alone = tracing_alone();
    let d = opens("slow-open", &["--latency", "OPEN=20ms"]);
    let f = finding(&d, "slow_paths").unwrap_or_else(|| panic!("no slow_paths finding: {d:?}"));
    let row = &f["evidence"]["rows"][0];
    assert!(row["path"].as_str().unwrap().ends_with("/slowfile"), "{f}");
    assert_eq!(row["opcode"], "OPEN", "{f}");
    assert!(n(&row["count"]) >= 60, "{f}");
    assert!(n(&row["mean_ns"]) >= 20_000_000, "{f}");
    assert_eq!(row["stage"], "daemon_service", "{f}");
    assert!(
        f["knob"]
            .as_str()
            .unwrap()
            .contains("daemon is the bottleneck"),
        "{f}"
    );
}

#[test]
fn fast_operations_are_no_slow_path() {
    let _alone = tracing_alone();
    let d = opens("fast-open", &[]);
    assert!(finding(&d, "slow_paths").is_none(), "{d:?}");
}

/// The mixed load's findings on `mount`.
fn mixed_load_findings(mount: &Path) -> Vec<Value> {
    findings_while(mount, || mixed_load(mount))
}

#[test]
fn healthy_mounts_under_mixed_load_have_none_of_these_findings() {
    let _alone = tracing_alone();
    let daemon = Daemon::start("healthy-threads", &["--threads", "4"]);
    let d = mixed_load_findings(daemon.path());
    daemon.stop();
    // Default bindfs is in tests/diagnose.rs; the multithreaded one takes
    // INTERRUPTs (see `slow_bindfs`).
    let scratch = Scratch::new("healthy-bindfs-mt");
    let src = scratch.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let guard = bindfs(&["--multithreaded"], &src, &scratch.path().join("mnt"));
    let b = mixed_load_findings(&guard.0);
    drop(guard);
    for (what, d) in [
        ("reference daemon --threads 4", &d),
        ("bindfs --multithreaded", &b),
    ] {
        for id in IDS {
            assert!(finding(d, id).is_none(), "{what}: {id}: {d:?}");
        }
    }
}

#[test]
fn a_recording_gives_the_same_findings_as_the_live_run() {
    let _alone = tracing_alone();
    // OPEN refused after 20 ms: an error storm and a slow path at once.
    let daemon = Daemon::start(
        "errors-rec",
        &["--errno", "OPEN=EACCES", "--latency", "OPEN=20ms"],
    );
    let mount = daemon.path().to_str().unwrap().to_string();
    let file = std::env::temp_dir().join(format!(
        "fusetrace-diag-errors-{}.trace",
        std::process::id()
    ));
    let file_arg = file.to_str().unwrap().to_string();
    let live = Tracer::start(&["diagnose", "--json", "--mount", &mount]);
    let recorder = Tracer::start(&["record", "--app-writes", "--mount", &mount, "-o", &file_arg]);
    let target = daemon.path().join("refused");
    File::create(&target).unwrap();
    for _ in 0..60 {
        assert!(File::open(&target).is_err());
        statfs(daemon.path()).unwrap();
        statfs(daemon.path()).unwrap();
    }
    daemon.stop();
    let live = live.stop();
    recorder.stop();
    let replayed = run_ok(Command::new(bin()).args(["diagnose", "--json", "--from", &file_arg]));
    let _ = fs::remove_file(&file);
    let live: Value = live
        .records
        .into_iter()
        .find(|v| v.get("diagnoses").is_some())
        .expect("live diagnoses");
    let replayed: Value = serde_json::from_str(
        replayed
            .lines()
            .find(|l| l.contains("diagnoses"))
            .expect("replayed diagnoses"),
    )
    .unwrap();
    let ours = |v: &Value| -> Vec<Value> {
        let d = &v["diagnoses"][0];
        d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| IDS.contains(&f["id"].as_str().unwrap()))
            .cloned()
            .collect()
    };
    let (live, replayed) = (ours(&live), ours(&replayed));
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&live), ["slow_paths", "error_storm"], "{live:?}");
    assert_eq!(ids(&replayed), ids(&live), "{replayed:?}");
    // The same requests, so the same counts and paths. Each tracer stamps
    // the events with its own programs: times differ by nanoseconds.
    let storm = |v: &Value| {
        let e = &v["evidence"];
        [
            &e["opcode"],
            &e["errno"],
            &e["count"],
            &e["top_paths"],
            &e["storms"],
        ]
        .map(Value::clone)
    };
    assert_eq!(storm(&live[1]), storm(&replayed[1]));
    let row = |v: &Value| {
        let r = &v["evidence"]["rows"][0];
        [&r["path"], &r["opcode"], &r["count"], &r["stage"]].map(Value::clone)
    };
    assert_eq!(row(&live[0]), row(&replayed[0]));
    let mean = |v: &Value| n(&v["evidence"]["rows"][0]["mean_ns"]) as f64;
    assert!(
        (mean(&live[0]) / mean(&replayed[0]) - 1.0).abs() < 0.01,
        "{live:?} {replayed:?}"
    );
    let storm = &live[1]["evidence"];
    assert!(n(&storm["count"]) >= 60, "{storm}");
    assert!(
        storm["top_paths"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("/refused"),
        "{storm}"
    );
}
