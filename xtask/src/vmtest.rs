//! `cargo xtask vmtest [--kernel SERIES]`: the integration tests on more
//! kernels, booted with virtme-ng under software emulation (nested KVM does
//! not work on the CI machines), one after the other:
//!
//! - Debian's 6.1 (Debian 12): no FUSE tracepoints; kprobes and fentry;
//! - Debian's 6.12 (Debian 13, the long-term line of RHEL 10 too): FUSE
//!   tracepoints that fire before the request id is assigned; kprobes and
//!   fentry. Its default backend (tp-btf) runs the tests as well.
//!
//! Both with a virtio-fs root. The guest sees the host's file system
//! read-only (with a writable /tmp), so the test binaries built here run in
//! it unchanged.
//!
//! Everything it fetches stays in the repository: the kernel package in
//! `target/vm/`, virtme-ng in `.tools/vng/`, virtiofsd in `.tools/virtiofsd/`.
//! vng finds the package's modules next to its kernel image (`kroot/lib/
//! modules`) and mounts them in the guest, so nothing is written to the
//! host's /lib/modules.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{Result, have, output, root, run};

/// Debian packages the VM needs: qemu (TCG), what vng's initramfs uses,
/// what virtiofsd links against, a venv for virtme-ng, bpftrace for the
/// independent count of the virtio-fs test.
pub const VM_APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    "cpio",
    "libseccomp-dev",
    "libcap-ng-dev",
    "python3-venv",
    "bpftrace",
];

/// A kernel the tests run on, and the backends they run with there.
pub struct Guest {
    /// The kernel line, also `--kernel`'s value and the folder under target/vm.
    pub series: &'static str,
    /// `apt-cache search --names-only` pattern; the newest match is taken.
    package: &'static str,
    /// `default` runs without `--backend` (what a user gets).
    backends: &'static [&'static str],
}

pub const GUESTS: &[Guest] = &[
    Guest {
        series: "6.1",
        package: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
        backends: &["kprobe", "fentry"],
    },
    Guest {
        series: "6.12",
        package: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        backends: &["default", "kprobe", "fentry"],
    },
];
const VIRTME_NG_VERSION: &str = "1.42";
const VIRTIOFSD_VERSION: &str = "1.14.0";

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = VM_APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        return Err(format!("missing {}: install them", missing.join(", ")));
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// virtme-ng in its own venv under .tools/ (the system Python stays clean).
fn vng() -> Result<PathBuf> {
    let venv = root().join(".tools/vng");
    let bin = venv.join("bin/vng");
    if bin.exists() {
        return Ok(bin);
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")))?;
    Ok(bin)
}

/// virtiofsd, which vng uses to export the host's root as the guest's.
fn virtiofsd() -> Result<PathBuf> {
    let dir = root().join(".tools/virtiofsd");
    if !dir.join("bin/virtiofsd").exists() {
        run(Command::new("cargo")
            .args([
                "install",
                "virtiofsd",
                "--locked",
                "--version",
                VIRTIOFSD_VERSION,
            ])
            .arg("--root")
            .arg(&dir))?;
    }
    Ok(dir.join("bin"))
}

/// Downloads and unpacks the guest's kernel package once; returns its vmlinuz.
fn kernel(guest: &Guest) -> Result<PathBuf> {
    let vm = root().join("target/vm").join(guest.series);
    let kroot = vm.join("kroot");
    if let Some(img) = find_vmlinuz(&kroot) {
        return Ok(img);
    }
    std::fs::create_dir_all(&vm).map_err(|e| format!("cannot create {}: {e}", vm.display()))?;
    let list = output(Command::new("apt-cache").args(["search", "--names-only", guest.package]))?;
    let mut names: Vec<&str> = list.lines().filter_map(|l| l.split(' ').next()).collect();
    // Newest last: the numbers in the name, compared as numbers.
    names.sort_by_key(|n| version_key(n));
    let package = names.last().ok_or_else(|| {
        format!(
            "apt offers no package matching {}: add Debian bookworm to the apt sources",
            guest.package
        )
    })?;
    run(Command::new("apt-get")
        .current_dir(&vm)
        .args(["download", package]))?;
    let deb = std::fs::read_dir(&vm)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(package) && n.ends_with(".deb"))
        })
        .ok_or("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kroot))?;
    find_vmlinuz(&kroot).ok_or_else(|| format!("no boot/vmlinuz-* in {}", deb.display()))
}

/// The runs of digits in a package name, as numbers: `6.12.117+deb12`
/// sorts after `6.12.9+deb12`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

fn find_vmlinuz(kroot: &Path) -> Option<PathBuf> {
    std::fs::read_dir(kroot.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// Builds the test binaries and returns the executable of each named test
/// target, from cargo's JSON messages.
fn test_executables(targets: &[&str]) -> Result<Vec<PathBuf>> {
    let json = output(Command::new("cargo").current_dir(root()).args([
        "test",
        "--no-run",
        "--message-format=json",
        "-p",
        "fusetrace",
    ]))?;
    let built: Vec<cargo_metadata::Artifact> =
        cargo_metadata::Message::parse_stream(json.as_bytes())
            .filter_map(|m| match m {
                Ok(cargo_metadata::Message::CompilerArtifact(a)) => Some(a),
                _ => None,
            })
            .collect();
    targets
        .iter()
        .map(|t| {
            built
                .iter()
                .find(|a| {
                    a.target.name == *t && a.target.kind.contains(&cargo_metadata::TargetKind::Test)
                })
                .and_then(|a| a.executable.clone())
                .map(PathBuf::from)
                .ok_or_else(|| format!("cargo built no test executable `{t}`"))
        })
        .collect()
}

/// The script the guest runs: doctor, then per backend (each must be
/// offered) the exact-accounting tests, the call/background test, the
/// virtio-fs walk, the in-kernel stats tests, `serve` scraped by
/// Prometheus and paths for node ids, then the doctor tests.
fn guest_script(
    guest: &Guest,
    trace: &Path,
    coverage: &Path,
    aggregate: &Path,
    serve: &Path,
    paths: &Path,
) -> String {
    let bin = root().join("target/debug/fusetrace");
    format!(
        r#"cd {root}
status=0
# A test binary under a watchdog: one that hangs (seen once: the 6.1 guest
# went silent for the rest of its 30 minutes) is stopped after
# {deadline} s, after the kernel stacks of the tasks involved and of every
# blocked task are printed, and the guest goes on with the next binary.
watched() {{
    "$@" &
    pid=$!
    (
        sleep {deadline}
        if kill -0 $pid 2>/dev/null; then
            echo "vmtest: HUNG: $* still running after {deadline} s; kernel stacks:"
            for t in /proc/[0-9]*/task/[0-9]*; do
                comm=$(cat $t/comm 2>/dev/null) || continue
                state=$(cut -d' ' -f3 $t/stat 2>/dev/null)
                case "$comm" in
                    fusetrace*|bpftrace*|trace-*|kernel_cover*|aggregate-*|serve-*|paths-*|bindfs*) ;;
                    *) [ "$state" = D ] || continue ;;
                esac
                echo "--- $t $comm (state $state)"
                cat $t/stack 2>/dev/null
            done
            kill -TERM $pid
            sleep 10
            kill -KILL $pid 2>/dev/null
        fi
    ) &
    dog=$!
    wait $pid
    rc=$?
    kill $dog 2>/dev/null
    return $rc
}}
echo "vmtest: kernel $(uname -r)"
{bin} doctor || status=1
for backend in {backends}; do
    if [ $backend = default ]; then force=""; else force="--backend $backend"; fi
    if {bin} doctor $force > /tmp/doctor-$backend 2>&1; then
        echo "vmtest: === {series}: tests with backend $backend"
        if [ $backend != default ]; then export FUSETRACE_TEST_BACKEND=$backend; fi
        watched {trace} --test-threads=1 --nocapture \
            traced_requests_equal_served_requests injected_read_latency \
            bindfs_requests_have_all_four_stages || status=1
        # The daemon side at the syscalls too (FORGETs counted exactly).
        export FUSETRACE_TEST_DAEMON_SIDE=syscalls
        watched {trace} --test-threads=1 --nocapture \
            traced_requests_equal_served_requests \
            bindfs_requests_have_all_four_stages || status=1
        unset FUSETRACE_TEST_DAEMON_SIDE
        watched {coverage} --test-threads=1 --nocapture --include-ignored \
            calls_are_joined_to_their_requests \
            virtio_fs_walk_matches_an_independent_end_count || status=1
        watched {aggregate} --test-threads=1 --nocapture \
            kernel_counts_equal_served_requests a_request_that_never_ends || status=1
        watched {serve} --test-threads=1 --nocapture prometheus_scrapes || status=1
        watched {paths} --test-threads=1 --nocapture every_request_carries_its_path || status=1
        unset FUSETRACE_TEST_BACKEND
    else
        echo "vmtest: {series}: backend $backend NOT OFFERED by this kernel:"
        cat /tmp/doctor-$backend
        status=1
    fi
done
echo "vmtest: === {series}: doctor and backend choice"
watched {coverage} --test-threads=1 --nocapture doctor_ forcing_ \
    the_daemon_side_is_hooked_in_the_kernel || status=1
echo "vmtest: guest status $status"
"#,
        root = root().display(),
        bin = bin.display(),
        series = guest.series,
        backends = guest.backends.join(" "),
        trace = trace.display(),
        coverage = coverage.display(),
        aggregate = aggregate.display(),
        serve = serve.display(),
        paths = paths.display(),
        deadline = TEST_DEADLINE_SECS,
    )
}

/// How long one test binary may run in a guest before the watchdog prints
/// the kernel stacks and stops it: the slowest binary takes about two
/// minutes under TCG.
const TEST_DEADLINE_SECS: u32 = 600;

/// Runs the guest of kernel line `only` (all by default), one after the other.
pub fn vmtest(only: Option<&str>) -> Result<()> {
    let wanted: Vec<&Guest> = GUESTS
        .iter()
        .filter(|g| only.is_none_or(|s| s == g.series))
        .collect();
    apt_packages()?;
    let vng = vng()?;
    let virtiofsd = virtiofsd()?;
    let exes = test_executables(&["trace", "kernel_coverage", "aggregate", "serve", "paths"])?;
    // vng starts `virtme-run` through PATH: the venv's bin/ goes first.
    let path = format!(
        "{}:{}:{}",
        vng.parent().expect("vng lives in a bin/").display(),
        virtiofsd.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failed = Vec::new();
    for guest in wanted {
        if let Err(e) = run_guest(guest, &vng, &path, &exes) {
            eprintln!("xtask: {e}");
            failed.push(guest.series);
        }
    }
    if failed.is_empty() {
        eprintln!("xtask: vmtest passed");
        Ok(())
    } else {
        Err(format!(
            "vmtest failed on {} (see `vmtest:` lines above)",
            failed.join(", ")
        ))
    }
}

fn run_guest(guest: &Guest, vng: &Path, path: &str, exes: &[PathBuf]) -> Result<()> {
    let kernel = kernel(guest)?;
    let script = root().join("target/vm").join(guest.series).join("guest.sh");
    std::fs::write(
        &script,
        guest_script(guest, &exes[0], &exes[1], &exes[2], &exes[3], &exes[4]),
    )
    .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    eprintln!("xtask: booting {} under TCG", kernel.display());
    let started = std::time::Instant::now();
    let mut child = Command::new("timeout")
        .arg("1800")
        .arg(vng)
        .arg("--run")
        .arg(&kernel)
        .args([
            "--disable-kvm",
            "--cpus",
            "2",
            "--memory",
            "2G",
            "--verbose",
        ])
        .arg("--exec")
        .arg(format!("sh {}", script.display()))
        .current_dir(root())
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run vng: {e}"))?;
    // The script's output arrives on the console, which vng may put on
    // either stream: both are shown as they come (a guest runs for many
    // minutes) and kept for the verdict.
    let echo = |pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut kept = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe))
                .map_while(std::result::Result::ok)
            {
                println!("{line}");
                kept.push_str(&line);
                kept.push('\n');
            }
            kept
        })
    };
    let out = echo(Box::new(child.stdout.take().expect("piped")));
    let err = echo(Box::new(child.stderr.take().expect("piped")));
    let status = child.wait().map_err(|e| format!("waiting for vng: {e}"))?;
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    eprintln!(
        "xtask: the {} guest ran for {:.0} s",
        guest.series,
        started.elapsed().as_secs_f64()
    );
    if text.contains("vmtest: guest status 0") {
        Ok(())
    } else if text.contains("vmtest: guest status") {
        Err(format!("tests failed in the {} guest", guest.series))
    } else {
        Err(format!(
            "the {} guest never finished its script (vng exited with {})",
            guest.series, status
        ))
    }
}
