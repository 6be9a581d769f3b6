//! The release artifacts of `cargo xtask dist`, used as users get them
//! (issue 25): the x86_64 static binary alone in an empty chroot, and the
//! `.deb` installed into a clean Debian root made by debootstrap. In both,
//! `doctor` passes, and `trace` and the in-kernel `stats` on a bindfs
//! mount count exactly what bpftrace counts outside.
//!
//! `cargo xtask test` builds the artifacts and runs these with
//! `FUSETRACE_DIST` naming their folder.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn dist() -> PathBuf {
    let dir = std::env::var("FUSETRACE_DIST").expect(
        "FUSETRACE_DIST is not set: these tests check `cargo xtask dist`'s artifacts (`cargo xtask test` runs them)",
    );
    PathBuf::from(dir)
}

/// Mounts made for a chroot, undone in reverse order on drop.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// `/proc`, `/sys` (with tracefs, BTF and bpffs under it) and the FUSE
    /// mount `fuse` at `/mnt`: all a chroot gets from the host.
    fn for_chroot(root: &Path, fuse: &Path) -> Mounts {
        let mut m = Mounts(Vec::new());
        m.mount(&["-t", "proc", "proc"], &root.join("proc"));
        m.mount(&["--rbind", "/sys"], &root.join("sys"));
        // Unmounting the chroot's view must not unmount the host's.
        run_ok(
            Command::new("mount")
                .arg("--make-rslave")
                .arg(root.join("sys")),
        );
        m.mount(&["--bind", fuse.to_str().unwrap()], &root.join("mnt"));
        m
    }

    fn mount(&mut self, args: &[&str], at: &Path) {
        fs::create_dir_all(at).unwrap();
        run_ok(Command::new("mount").args(args).arg(at));
        self.0.push(at.to_path_buf());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for at in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-R").arg(at).status();
        }
    }
}

fn chroot(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin");
    cmd
}

/// bpftrace, outside the chroot: `fuse_request_end` hits on one connection.
struct EndCounter {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl EndCounter {
    fn start(conn: u64) -> EndCounter {
        assert!(
            Path::new("/sys/kernel/tracing/events/fuse/fuse_request_end").exists(),
            "this test counts with bpftrace at the fuse:fuse_request_end tracepoint, which this kernel lacks"
        );
        let mut child = Command::new("bpftrace")
            .args([
                "-e",
                &format!(
                    "BEGIN {{ printf(\"ready\\n\"); }} \
                     tracepoint:fuse:fuse_request_end /args->connection == {conn}/ {{ @ends = count(); }}"
                ),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace");
        let lines = line_channel(child.stdout.take().unwrap());
        wait_for_line_within(&lines, "ready", "bpftrace", START_TIMEOUT);
        EndCounter { child, lines }
    }

    fn stop(self) -> u64 {
        signal(&self.child, libc::SIGINT);
        let mut child = self.child;
        let counted = self
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("@ends: ").map(|n| n.trim().parse().unwrap()))
            .unwrap_or(0);
        assert!(child.wait().unwrap().success(), "bpftrace failed");
        counted
    }
}

/// In `root`, where `binary` is fusetrace: `doctor` exits 0, then `trace`
/// and in-kernel `stats` of the FUSE mount at `/mnt` (bindfs of the host's
/// `mnt`) count what bpftrace counts outside, over the same load.
fn exact_in_chroot(root: &Path, binary: &str, mnt: &Path) {
    // Before anything is counted: stat() asks the daemon (attr_timeout=0).
    let conn = connection_of(mnt);
    let fusectl = FuseCtl::new();
    let waiting = fusectl.file(conn, "waiting");
    let _mounts = Mounts::for_chroot(root, mnt);
    let doctor = chroot(root, &[binary, "doctor"]).output().unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.status.success() && said.contains("verdict: complete lifecycles can be traced"),
        "doctor in the chroot: {}\n{said}{}",
        doctor.status,
        String::from_utf8_lossy(&doctor.stderr)
    );
    let trace = Tracer::spawn(chroot(
        root,
        &[binary, "trace", "--format", "json", "--mount", "/mnt"],
    ));
    let stats = Tracer::spawn(chroot(
        root,
        &[binary, "stats", "--format", "json", "--mount", "/mnt"],
    ));
    let counter = EndCounter::start(conn);
    let out = run_ok(Command::new(bin()).args([
        "load",
        mnt.to_str().unwrap(),
        "--workload",
        "mixed",
        "--ops",
        "1000",
        "--jobs",
        "2",
    ]));
    assert!(out.contains("ops/s"), "load printed: {out}");
    // The load's last RELEASEs end in the background, after it exited:
    // the window closes once the connection has nothing in flight.
    assert!(
        eventually(|| fs::read_to_string(&waiting).is_ok_and(|w| w.trim() == "0")),
        "requests still in flight on the bindfs mount"
    );
    let counted = counter.stop();
    let traced = trace.stop();
    let stats = stats.stop();
    assert!(counted >= 1000, "bpftrace counted only {counted} ends");
    assert_nothing_lost(&traced.summary);
    let skipped = skipped_runs(&traced.summary) + skipped_runs(&stats.summary);
    let ended = traced
        .on(conn)
        .into_iter()
        .filter(|r| r["ended_at_ns"].as_u64().is_some())
        .count() as u64;
    let in_kernel: u64 = whole_run_by_op(&stats)
        .values()
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    eprintln!(
        "chroot {}: bpftrace {counted}, trace {ended}, stats {in_kernel}",
        root.display()
    );
    for (what, n) in [("trace", ended), ("stats", in_kernel)] {
        assert!(
            n <= counted && counted - n <= skipped,
            "{what} in the chroot counted {n} requests ended, bpftrace outside {counted} ({skipped} program runs skipped)"
        );
    }
}

/// A bindfs mount over a scratch folder, unmounted on drop.
struct Bindfs {
    mnt: PathBuf,
    _guard: MountGuard,
}

impl Bindfs {
    fn mount(scratch: &Scratch) -> Bindfs {
        let (src, mnt) = (scratch.path().join("src"), scratch.path().join("mnt"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&mnt).unwrap();
        mount_bindfs(&src, &mnt);
        Bindfs {
            _guard: MountGuard(mnt.clone()),
            mnt,
        }
    }
}

#[test]
#[ignore = "needs `cargo xtask dist`'s artifacts: run by `cargo xtask test`"]
fn static_binary_alone_in_an_empty_chroot_traces_exactly() {
    require_root();
    let binary = dist().join(format!("fusetrace-{VERSION}-x86_64-linux"));
    let file = run_ok(Command::new("file").arg(&binary));
    assert!(
        file.contains("static-pie linked") || file.contains("statically linked"),
        "{file}"
    );
    let scratch = Scratch::new("dist-chroot");
    let fuse = Bindfs::mount(&scratch);
    let root = scratch.path().join("root");
    fs::create_dir_all(&root).unwrap();
    fs::copy(&binary, root.join("fusetrace")).unwrap();
    let version = chroot(&root, &["/fusetrace", "--version"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains("x86_64-unknown-linux-musl")
            && version.contains("kernel programs embedded"),
        "{version}"
    );
    exact_in_chroot(&root, "/fusetrace", &fuse.mnt);
    // Nothing but what the test put there: no file the binary needed.
    let entries: BTreeSet<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        entries,
        ["fusetrace", "mnt", "proc", "sys"].map(String::from).into(),
        "the chroot holds only the binary and its mount points"
    );
}

/// Every path under `root` on its own file system.
fn tree(root: &Path) -> BTreeSet<String> {
    let out = run_ok(Command::new("find").arg(root).arg("-xdev"));
    out.lines()
        .map(|l| l.strip_prefix(root.to_str().unwrap()).unwrap().to_string())
        .collect()
}

/// The codename of the Debian this machine runs (debootstrap's suite).
fn codename() -> String {
    fs::read_to_string("/etc/os-release")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_string))
        .expect("no VERSION_CODENAME in /etc/os-release: debootstrap needs a Debian suite")
}

#[test]
#[ignore = "needs `cargo xtask dist`'s artifacts and debootstrap: run by `cargo xtask test`"]
fn deb_installs_into_a_clean_debian_traces_exactly_and_leaves_nothing() {
    require_root();
    let deb = dist().join(format!("fusetrace_{VERSION}_amd64.deb"));
    assert!(deb.exists(), "{} is missing", deb.display());
    let scratch = Scratch::new("dist-deb");
    let root = scratch.path().join("root");
    // No Rust, no .tools/: Debian's minimal base, with man and bash's
    // completion to try the package's pages and completions, systemd to
    // check its unit.
    run_ok(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=man-db,bash-completion,systemd",
            ])
            .arg(codename())
            .arg(&root)
            .arg("http://deb.debian.org/debian"),
    );
    for absent in ["usr/bin/cargo", "usr/bin/rustc", "root/.cargo"] {
        assert!(!root.join(absent).exists(), "{absent} in a clean root");
    }
    let before = tree(&root);
    fs::copy(&deb, root.join("tmp/fusetrace.deb")).unwrap();
    run_ok(&mut chroot(&root, &["dpkg", "-i", "/tmp/fusetrace.deb"]));
    let version = run_ok(&mut chroot(&root, &["fusetrace", "--version"]));
    assert!(version.contains("kernel programs embedded"), "{version}");
    let mode = fs::metadata(root.join("usr/bin/fusetrace"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "/usr/bin/fusetrace mode {mode:o}");

    // The man pages, generated from the same definitions as --help.
    for page in ["fusetrace", "fusetrace-stats"] {
        let text = run_ok(chroot(&root, &["man", "-P", "cat", page]).env("MANWIDTH", "80"));
        assert!(
            text.contains("SYNOPSIS") && text.contains("fusetrace"),
            "man {page}: {text}"
        );
    }
    let stats_page =
        run_ok(chroot(&root, &["man", "-P", "cat", "fusetrace-stats"]).env("MANWIDTH", "80"));
    assert!(
        stats_page.contains("--stages"),
        "man fusetrace-stats lacks --stages"
    );
    // bash completes a command name and a flag, as a user's Tab would.
    for (line, word, expected) in [
        ("fusetrace st", "st", "stats"),
        ("fusetrace stats --sta", "--sta", "--stages"),
    ] {
        let script = format!(
            ". /usr/share/bash-completion/bash_completion; _comp_load fusetrace 2>/dev/null || _completion_loader fusetrace; \
             COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; read -ra COMP_WORDS <<< \"$COMP_LINE\"; \
             COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             f=$(complete -p fusetrace | sed 's/.*-F \\([^ ]*\\) .*/\\1/'); \
             $f fusetrace {word} \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let offered = run_ok(&mut chroot(&root, &["bash", "-c", &script]));
        assert!(
            offered.lines().any(|l| l.trim() == expected),
            "completing `{line}` offered: {offered:?}"
        );
    }
    // The unit for `serve` is one systemd accepts, with the binary and the
    // man page it names installed.
    {
        let mut proc = Mounts(Vec::new());
        proc.mount(&["-t", "proc", "proc"], &root.join("proc"));
        let unit = "/usr/lib/systemd/system/fusetrace.service";
        let verify = chroot(&root, &["systemd-analyze", "verify", unit])
            .output()
            .unwrap();
        assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }

    let scratch_fuse = Scratch::new("dist-deb-fuse");
    let fuse = Bindfs::mount(&scratch_fuse);
    exact_in_chroot(&root, "/usr/bin/fusetrace", &fuse.mnt);

    run_ok(&mut chroot(&root, &["dpkg", "-r", "fusetrace"]));
    fs::remove_file(root.join("tmp/fusetrace.deb")).unwrap();
    // What is new after removal: dpkg's own books, and man-db's index and
    // the pages it formatted for this test's `man` runs (man-db's, as for
    // every package), and the runtime state of this test's
    // `systemd-analyze`.
    let books = [
        "/var/lib/dpkg/",
        "/var/log/",
        "/var/cache/man/",
        "/var/cache/debconf/",
        "/run/systemd/",
    ];
    let left: Vec<String> = tree(&root)
        .difference(&before)
        .filter(|p| !books.iter().any(|b| p.starts_with(b)))
        .cloned()
        .collect();
    assert!(left.is_empty(), "dpkg -r left {left:?}");
    let info: Vec<String> = tree(&root)
        .into_iter()
        .filter(|p| p.contains("fusetrace"))
        .filter(|p| !p.starts_with("/var/log/") && !p.starts_with("/var/cache/man/"))
        .collect();
    assert!(info.is_empty(), "dpkg -r left {info:?}");
}

/// Both architectures' binaries, packages and tarballs are there, the
/// arm64 binary is static and for aarch64, the packages hold what they
/// should, and SHA256SUMS checks.
#[test]
#[ignore = "needs `cargo xtask dist`'s artifacts: run by `cargo xtask test`"]
fn every_artifact_is_there_and_its_sum_matches() {
    let dir = dist();
    let arm = dir.join(format!("fusetrace-{VERSION}-aarch64-linux"));
    let file = run_ok(Command::new("file").arg(&arm));
    assert!(
        file.contains("ARM aarch64") && file.contains("statically linked"),
        "{file}"
    );
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let named: BTreeSet<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    for arch in ["x86_64", "aarch64"] {
        for name in [
            format!("fusetrace-{VERSION}-{arch}-linux"),
            format!("fusetrace-{VERSION}-{arch}-linux.tar.gz"),
        ] {
            assert!(named.contains(name.as_str()), "SHA256SUMS lacks {name}");
        }
    }
    for deb in ["amd64", "arm64"] {
        let name = format!("fusetrace_{VERSION}_{deb}.deb");
        assert!(named.contains(name.as_str()), "SHA256SUMS lacks {name}");
        let contents = run_ok(
            Command::new("dpkg-deb")
                .arg("--contents")
                .arg(dir.join(&name)),
        );
        for path in [
            "./usr/bin/fusetrace",
            "./usr/share/man/man1/fusetrace.1.gz",
            "./usr/share/man/man1/fusetrace-serve.1.gz",
            "./usr/share/bash-completion/completions/fusetrace",
            "./usr/share/zsh/vendor-completions/_fusetrace",
            "./usr/share/fish/vendor_completions.d/fusetrace.fish",
            "./usr/lib/systemd/system/fusetrace.service",
            "./usr/share/doc/fusetrace/copyright",
            "./usr/share/doc/fusetrace/LICENSE-APACHE",
        ] {
            assert!(contents.contains(path), "{name} lacks {path}");
        }
    }
    let check = run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(&dir),
    );
    assert_eq!(
        check.lines().filter(|l| l.ends_with(": OK")).count(),
        named.len(),
        "{check}"
    );
}
