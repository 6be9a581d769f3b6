//! `cargo xtask vmtest [--kernel GUEST]`: the integration tests on more
//! kernels, booted with virtme-ng under software emulation (nested KVM does
//! not work on the CI machines), one after the other ([`GUESTS`]):
//!
//! - Debian's 6.1 (Debian 12): no FUSE tracepoints; kprobes and fentry;
//! - Debian's 6.12 (Debian 13, the long-term line of RHEL 10 too): FUSE
//!   tracepoints that fire before the request id is assigned;
//! - Debian's 6.17 (backports): FUSE over io_uring with kprobes and fentry;
//! - the newest line Debian ships at all, whatever its number (7.3 as this
//!   is written): a new kernel that breaks us turns CI red.
//!
//! `--arch arm64` runs `xtask/arm64/run.sh` instead (main.rs): the static
//! aarch64 binary on Debian's newest arm64 kernel, from an initramfs of its
//! own.
//!
//! No kernel version is written here: each guest boots the newest package
//! of its line that apt finds, with a sources list of its own (the host's
//! plus backports and unstable). All with a virtio-fs root. The guest sees
//! the host's file system read-only (with a writable /tmp), so the test
//! binaries built here run in it unchanged.
//!
//! Everything it fetches stays in the repository: apt's state in
//! `target/vm/apt/`, each kernel package in `target/vm/<guest>/`, virtme-ng
//! in `.tools/vng/`, virtiofsd in `.tools/virtiofsd/`. vng finds a
//! package's modules next to its kernel image and mounts them in the guest,
//! so nothing is written to the host's /lib/modules.

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
    /// `--kernel`'s value and the folder under target/vm: a kernel line
    /// (`6.1`) or `newest`.
    pub name: &'static str,
    /// The line whose newest package is booted; `None`: the newest line
    /// Debian ships at all, whatever its number.
    series: Option<&'static str>,
    /// `default` runs without `--backend` (what a user gets).
    backends: &'static [&'static str],
    /// Which tests run per backend.
    tests: Tests,
}

/// How many of the guest tests run per backend: `.ci/run` must stay under
/// an hour on two cores, so the extra guests run a core set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tests {
    /// Everything below, plus injected latency, the call/background join,
    /// the never-ending request and Prometheus.
    Full,
    /// Exact counts (reference daemon on both transports, bindfs) with each
    /// daemon side, in-kernel stats, paths, doctor.
    Core,
}

pub const GUESTS: &[Guest] = &[
    // Debian 12: no FUSE tracepoints; kprobes and fentry; FUSE a module.
    Guest {
        name: "6.1",
        series: Some("6.1"),
        backends: &["kprobe", "fentry"],
        tests: Tests::Full,
    },
    // Debian 13 and RHEL 10's line: sends before the request id.
    Guest {
        name: "6.12",
        series: Some("6.12"),
        backends: &["default", "kprobe", "fentry"],
        tests: Tests::Full,
    },
    // FUSE over io_uring with kprobes and fentry, sends before the id.
    Guest {
        name: "6.17",
        series: Some("6.17"),
        backends: &["default", "kprobe", "fentry"],
        tests: Tests::Core,
    },
    // Whatever Debian shipped last: a new kernel that breaks us turns CI red.
    Guest {
        name: "newest",
        series: None,
        backends: &["default", "kprobe", "fentry"],
        tests: Tests::Core,
    },
];
const VIRTME_NG_VERSION: &str = "1.42";
const VIRTIOFSD_VERSION: &str = "1.14.0";

/// Suites searched for kernels besides the host's own sources: Debian's
/// backports of its stable release and unstable carry the newest lines.
const EXTRA_SUITES: &[&str] = &["trixie-backports", "sid"];

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

/// apt with a state of its own under target/vm/apt: the host's sources
/// plus [`EXTRA_SUITES`] of the host's archive, so that the host's apt
/// stays as it is. Updated once per run.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new() -> Result<Apt> {
        let dir = root().join("target/vm/apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        // The host's Debian archive (not its security mirror).
        let uris =
            output(Command::new("apt-get").args(["indextargets", "--format", "$(REPO_URI)"]))?;
        let archive = uris
            .lines()
            .find(|u| u.contains("debian") && !u.contains("security"))
            .ok_or("the host's apt sources name no Debian archive")?;
        let mut list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        for suite in EXTRA_SUITES {
            list.push_str(&format!("\ndeb {archive} {suite} main\n"));
        }
        let sources = dir.join("sources.list");
        std::fs::write(&sources, list)
            .map_err(|e| format!("cannot write {}: {e}", sources.display()))?;
        let options = vec![
            format!("Dir::Etc::sourcelist={}", sources.display()),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
        ];
        let apt = Apt { options };
        run(apt.command("apt-get").args(["update", "-q"]))?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        c
    }
}

/// A Debian kernel package that holds a `vmlinuz`: `linux-image-*`
/// (signed or `-unsigned`) up to 6.x, `linux-binary-*` from 7.x, where
/// `linux-image-*` became a metapackage.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelPackage {
    name: String,
    /// `6.12.117`, `6.1.0-50`: its numbers, for ordering.
    version: Vec<u64>,
    /// `6.12`.
    series: String,
    /// 2: `linux-binary-*`, 1: `-unsigned`, 0: the signed image (all boot).
    preference: u8,
}

/// The generic amd64 kernels among `apt-cache search` lines (no cloud,
/// rt or debug flavour).
fn kernel_packages(search: &str) -> Vec<KernelPackage> {
    search
        .lines()
        .filter_map(|l| l.split(' ').next())
        .filter_map(|name| {
            let (rest, preference) = if let Some(r) = name.strip_prefix("linux-binary-") {
                (r.strip_prefix("unsigned-").unwrap_or(r), 2)
            } else if let Some(r) = name.strip_prefix("linux-image-") {
                match r.strip_suffix("-unsigned") {
                    Some(r) => (r, 1),
                    None => (r, 0),
                }
            } else {
                return None;
            };
            let version = rest.strip_suffix("-amd64")?;
            // Flavours have a word before -amd64 (`-cloud-amd64`); the
            // generic one ends in the ABI or Debian revision.
            let last = version.rsplit(['-', '+']).next()?;
            if !last.starts_with(|c: char| c.is_ascii_digit()) && !last.starts_with("deb") {
                return None;
            }
            let numbers = version_key(version);
            if numbers.len() < 2 || !version.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            Some(KernelPackage {
                name: name.to_string(),
                series: format!("{}.{}", numbers[0], numbers[1]),
                version: numbers,
                preference,
            })
        })
        .collect()
}

/// The package to boot for `series` (`None`: the newest line of all): the
/// newest version, then the package that holds its image.
fn pick(packages: &[KernelPackage], series: Option<&str>) -> Option<KernelPackage> {
    let newest_line = packages.iter().map(|p| version_key(&p.series)).max()?;
    let line: Vec<&KernelPackage> = packages
        .iter()
        .filter(|p| match series {
            Some(s) => p.series == s,
            None => version_key(&p.series) == newest_line,
        })
        .collect();
    // Where the line is split, `linux-image-*` is an empty metapackage
    // (and may outlive its `linux-binary-*`).
    let split = line.iter().any(|p| p.preference == 2);
    line.into_iter()
        .filter(|p| !split || p.preference == 2)
        .max_by(|a, b| (&a.version, a.preference).cmp(&(&b.version, b.preference)))
        .cloned()
}

/// Downloads and unpacks the guest's kernel package once per version;
/// returns its vmlinuz.
fn kernel(guest: &Guest, apt: &Apt) -> Result<PathBuf> {
    let search = output(apt.command("apt-cache").args([
        "search",
        "--names-only",
        "^linux-(image|binary)-[0-9]",
    ]))?;
    let package = pick(&kernel_packages(&search), guest.series).ok_or_else(|| {
        format!(
            "apt offers no amd64 kernel of the {} line (sources: the host's and {})",
            guest.series.unwrap_or("newest"),
            EXTRA_SUITES.join(", ")
        )
    })?;
    eprintln!("xtask: the {} guest boots {}", guest.name, package.name);
    let vm = root().join("target/vm").join(guest.name);
    let kroot = vm.join(&package.name);
    if let Some(img) = find_vmlinuz(&kroot) {
        return Ok(img);
    }
    // An older version's files go: one unpacked kernel per guest.
    let _ = std::fs::remove_dir_all(&vm);
    std::fs::create_dir_all(&vm).map_err(|e| format!("cannot create {}: {e}", vm.display()))?;
    run(apt
        .command("apt-get")
        .current_dir(&vm)
        .args(["download", &package.name]))?;
    let deb = std::fs::read_dir(&vm)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&package.name) && n.ends_with(".deb"))
        })
        .ok_or("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kroot))?;
    let _ = std::fs::remove_file(&deb);
    find_vmlinuz(&kroot).ok_or_else(|| format!("no vmlinuz in {}", deb.display()))
}

/// The runs of digits in a package name, as numbers: `6.12.117+deb12`
/// sorts after `6.12.9+deb12`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

/// `boot/vmlinuz-*` (6.x packages) or `usr/lib/modules/*/vmlinuz` (7.x's
/// `linux-binary-*`).
fn find_vmlinuz(kroot: &Path) -> Option<PathBuf> {
    let entries = |dir: PathBuf| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
    };
    entries(kroot.join("boot"))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .or_else(|| {
            entries(kroot.join("usr/lib/modules"))
                .map(|d| d.join("vmlinuz"))
                .find(|p| p.exists())
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
/// offered) the exact-accounting tests with each daemon side, in-kernel
/// stats and paths, FUSE over io_uring where the kernel has it (both
/// daemon sides, in-kernel stages), and for [`Tests::Full`] the injected
/// latency, the call/background join, the virtio-fs walk, the request that
/// never ends and `serve` scraped by Prometheus; then the doctor tests.
fn guest_script(guest: &Guest, exes: &TestExes) -> String {
    let bin = root().join("target/debug/fusetrace");
    let full = guest.tests == Tests::Full;
    // The Full set's extra tests, per binary (empty: not run).
    let only_full = |names: &str| {
        if full {
            names.to_string()
        } else {
            String::new()
        }
    };
    format!(
        r#"cd {root}
# 7.0-like guests load overlayfs as a module virtme cannot: without it
# /tmp is the read-only host's; a tmpfs makes it writable.
touch /tmp/.vmtest 2>/dev/null || mount -t tmpfs tmpfs /tmp
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
                    fusetrace*|bpftrace*|trace-*|kernel_cover*|aggregate-*|serve-*|paths-*|uring_tr*|bindfs*) ;;
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
# Runs test binary $1 with the named tests, when any are named.
some() {{
    exe=$1; shift
    [ -n "$*" ] || return 0
    watched $exe --test-threads=1 --nocapture --include-ignored "$@"
}}
echo "vmtest: kernel $(uname -r)"
{bin} doctor || status=1
uring=no
[ -e /sys/module/fuse/parameters/enable_uring ] && uring=yes
echo "vmtest: {name}: FUSE over io_uring: $uring"
for backend in {backends}; do
    if [ $backend = default ]; then force=""; else force="--backend $backend"; fi
    if {bin} doctor $force > /tmp/doctor-$backend 2>&1; then
        echo "vmtest: === {name}: tests with backend $backend"
        if [ $backend != default ]; then export FUSETRACE_TEST_BACKEND=$backend; fi
        some {trace} traced_requests_equal_served_requests bindfs_requests_have_all_four_stages \
            {full_trace} || status=1
        # FUSE over io_uring where this backend joins its requests (doctor
        # says which; where it cannot, it must say so).
        ring=no
        if [ $uring = yes ]; then
            if grep -q "io_uring daemons: every point is observed" /tmp/doctor-$backend; then
                ring=yes
            else
                echo "vmtest: {name}: io_uring daemons cannot be joined with backend $backend, as doctor says:"
                grep "^verdict" /tmp/doctor-$backend
                grep -q "io_uring daemons: not joined" /tmp/doctor-$backend || status=1
            fi
        fi
        if [ $ring = yes ]; then
            some {uring_trace} ring_requests_are_counted_exactly in_kernel_stages_count_the_ring_daemon_exactly || status=1
        fi
        # The daemon side at the syscalls too (FORGETs counted exactly).
        export FUSETRACE_TEST_DAEMON_SIDE=syscalls
        some {trace} traced_requests_equal_served_requests bindfs_requests_have_all_four_stages || status=1
        if [ $ring = yes ]; then
            some {uring_trace} ring_requests_are_counted_exactly || status=1
        fi
        unset FUSETRACE_TEST_DAEMON_SIDE
        some {coverage} {full_coverage} || status=1
        some {aggregate} kernel_counts_equal_served_requests {full_aggregate} || status=1
        some {serve} {full_serve} || status=1
        some {paths} every_request_carries_its_path || status=1
        unset FUSETRACE_TEST_BACKEND
    else
        echo "vmtest: {name}: backend $backend NOT OFFERED by this kernel:"
        cat /tmp/doctor-$backend
        status=1
    fi
done
echo "vmtest: === {name}: doctor and backend choice"
watched {coverage} --test-threads=1 --nocapture doctor_ forcing_ \
    the_daemon_side_is_hooked_in_the_kernel || status=1
if [ $uring = yes ]; then
    some {uring_trace} doctor_names_each_mounts_transport || status=1
fi
echo "vmtest: guest status $status"
"#,
        root = root().display(),
        bin = bin.display(),
        name = guest.name,
        backends = guest.backends.join(" "),
        trace = exes.trace.display(),
        coverage = exes.coverage.display(),
        aggregate = exes.aggregate.display(),
        serve = exes.serve.display(),
        paths = exes.paths.display(),
        uring_trace = exes.uring_trace.display(),
        full_trace = only_full("injected_read_latency"),
        full_coverage = only_full(
            "calls_are_joined_to_their_requests virtio_fs_walk_matches_an_independent_end_count"
        ),
        full_aggregate = only_full("a_request_that_never_ends"),
        full_serve = only_full("prometheus_scrapes"),
        deadline = TEST_DEADLINE_SECS,
    )
}

/// The test executables the guests run.
struct TestExes {
    trace: PathBuf,
    coverage: PathBuf,
    aggregate: PathBuf,
    serve: PathBuf,
    paths: PathBuf,
    uring_trace: PathBuf,
}

/// How long one test binary may run in a guest before the watchdog prints
/// the kernel stacks and stops it: the slowest binary takes about two
/// minutes under TCG.
const TEST_DEADLINE_SECS: u32 = 600;

/// Runs the guest of kernel line `only` (all by default), one after the other.
pub fn vmtest(only: Option<&str>) -> Result<()> {
    let wanted: Vec<&Guest> = GUESTS
        .iter()
        .filter(|g| only.is_none_or(|s| s == g.name))
        .collect();
    apt_packages()?;
    let vng = vng()?;
    let virtiofsd = virtiofsd()?;
    let apt = Apt::new()?;
    let [trace, coverage, aggregate, serve, paths, uring_trace] =
        <[PathBuf; 6]>::try_from(test_executables(&[
            "trace",
            "kernel_coverage",
            "aggregate",
            "serve",
            "paths",
            "uring_trace",
        ])?)
        .map_err(|_| "cargo built the wrong number of test executables")?;
    let exes = TestExes {
        trace,
        coverage,
        aggregate,
        serve,
        paths,
        uring_trace,
    };
    // vng starts `virtme-run` through PATH: the venv's bin/ goes first.
    let path = format!(
        "{}:{}:{}",
        vng.parent().expect("vng lives in a bin/").display(),
        virtiofsd.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failed = Vec::new();
    for guest in wanted {
        if let Err(e) = run_guest(guest, &apt, &vng, &path, &exes) {
            eprintln!("xtask: {e}");
            failed.push(guest.name);
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

fn run_guest(guest: &Guest, apt: &Apt, vng: &Path, path: &str, exes: &TestExes) -> Result<()> {
    let kernel = kernel(guest, apt)?;
    let script = root().join("target/vm").join(guest.name).join("guest.sh");
    std::fs::write(&script, guest_script(guest, exes))
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
        guest.name,
        started.elapsed().as_secs_f64()
    );
    if text.contains("vmtest: guest status 0") {
        Ok(())
    } else if text.contains("vmtest: guest status") {
        Err(format!("tests failed in the {} guest", guest.name))
    } else {
        Err(format!(
            "the {} guest never finished its script (vng exited with {})",
            guest.name, status
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-47-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-50-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-50-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.17.8+deb13-amd64 - Linux 6.17.8 for 64-bit PCs (signed)
linux-image-6.17.13+deb13-amd64 - Linux 6.17.13 for 64-bit PCs (signed)
linux-image-6.17.13+deb13-rt-amd64 - Linux 6.17.13 for 64-bit PCs (signed), PREEMPT_RT
linux-image-7.3.4+deb13-amd64 - Linux 7.3.4 for 64-bit PCs
linux-image-7.3.9+deb13-amd64 - Linux 7.3.9 for 64-bit PCs
linux-binary-7.3.4+deb13-amd64 - Linux 7.3.4 for 64-bit PCs
linux-binary-7.2.13+deb14-amd64 - Linux 7.2.13 for 64-bit PCs
linux-image-6.1.0-50-amd64-dbg - debug symbols
";

    #[test]
    fn each_line_boots_its_newest_package_that_holds_an_image() {
        let all = kernel_packages(SEARCH);
        let name = |s| pick(&all, s).map(|p| p.name);
        assert_eq!(
            name(Some("6.1")).as_deref(),
            Some("linux-image-6.1.0-50-amd64-unsigned")
        );
        assert_eq!(
            name(Some("6.17")).as_deref(),
            Some("linux-image-6.17.13+deb13-amd64")
        );
        // 7.3.9's image is a metapackage whose linux-binary is gone.
        assert_eq!(
            name(None).as_deref(),
            Some("linux-binary-7.3.4+deb13-amd64")
        );
        assert_eq!(name(Some("6.19")), None);
        assert!(
            all.iter()
                .all(|p| !p.name.contains("cloud") && !p.name.contains("rt-"))
        );
    }
}
