//! `cargo xtask vmtest`: the integration tests on a second kernel, Debian's
//! 6.1 (no FUSE tracepoints; kprobes, fentry and a virtio-fs root), booted
//! with virtme-ng under software emulation (nested KVM does not work on the
//! CI machines). The guest sees the host's file system read-only (with a
//! writable /tmp), so the test binaries built here run in it unchanged.
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

/// The guest's kernel: the newest Debian 6.1 package apt offers.
const KERNEL_PACKAGE_PATTERN: &str = r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$";
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

/// Downloads and unpacks the kernel package once; returns its vmlinuz.
fn kernel() -> Result<PathBuf> {
    let vm = root().join("target/vm");
    let kroot = vm.join("kroot");
    if let Some(img) = find_vmlinuz(&kroot) {
        return Ok(img);
    }
    std::fs::create_dir_all(&vm).map_err(|e| format!("cannot create {}: {e}", vm.display()))?;
    let list =
        output(Command::new("apt-cache").args(["search", "--names-only", KERNEL_PACKAGE_PATTERN]))?;
    let mut names: Vec<&str> = list.lines().filter_map(|l| l.split(' ').next()).collect();
    // linux-image-6.1.0-N-...: newest ABI number last.
    names.sort_by_key(|n| {
        n.trim_start_matches("linux-image-6.1.0-")
            .split('-')
            .next()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    let package = names.last().ok_or_else(|| {
        "apt offers no linux-image-6.1.0-*-amd64-unsigned: add Debian bookworm to the apt sources"
            .to_string()
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

/// Builds the test binaries and returns the executable of each named test target.
fn test_executables(targets: &[&str]) -> Result<Vec<PathBuf>> {
    let json = output(Command::new("cargo").current_dir(root()).args([
        "test",
        "--no-run",
        "--message-format=json",
        "-p",
        "fusetrace",
    ]))?;
    targets
        .iter()
        .map(|t| {
            json.lines()
                .filter(|l| {
                    l.contains(&format!("\"name\":\"{t}\"")) && l.contains("\"kind\":[\"test\"]")
                })
                .find_map(|l| {
                    let (_, rest) = l.split_once("\"executable\":\"")?;
                    Some(PathBuf::from(rest.split('"').next()?))
                })
                .ok_or_else(|| format!("cargo built no test executable `{t}`"))
        })
        .collect()
}

/// The script the guest runs: doctor, then per backend (both must be
/// offered) the trace tests, the call/background test and the virtio-fs
/// walk, then the doctor tests.
fn guest_script(trace: &Path, coverage: &Path, aggregate: &Path) -> String {
    let bin = root().join("target/debug/fusetrace");
    format!(
        r#"cd {root}
status=0
echo "vmtest: kernel $(uname -r)"
{bin} doctor || status=1
for backend in kprobe fentry; do
    if {bin} doctor --backend $backend > /tmp/doctor-$backend 2>&1; then
        echo "vmtest: === tests with --backend $backend"
        export FUSETRACE_TEST_BACKEND=$backend
        {trace} --test-threads=1 --nocapture \
            traced_requests_equal_served_requests injected_read_latency \
            bindfs_requests_have_all_four_stages || status=1
        {coverage} --test-threads=1 --nocapture --include-ignored \
            calls_are_joined_to_their_requests \
            virtio_fs_walk_matches_an_independent_end_count || status=1
        {aggregate} --test-threads=1 --nocapture \
            kernel_counts_equal_served_requests a_request_that_never_ends || status=1
        unset FUSETRACE_TEST_BACKEND
    else
        echo "vmtest: backend $backend NOT OFFERED by this kernel:"
        grep -E '^  (fentry|kprobes) ' /tmp/doctor-$backend
        status=1
    fi
done
echo "vmtest: === doctor and backend choice"
{coverage} --test-threads=1 --nocapture doctor_ forcing_ || status=1
echo "vmtest: guest status $status"
"#,
        root = root().display(),
        bin = bin.display(),
        trace = trace.display(),
        coverage = coverage.display(),
        aggregate = aggregate.display(),
    )
}

pub fn vmtest() -> Result<()> {
    apt_packages()?;
    let vng = vng()?;
    let virtiofsd = virtiofsd()?;
    let kernel = kernel()?;
    let exes = test_executables(&["trace", "kernel_coverage", "aggregate"])?;
    let script = root().join("target/vm/guest.sh");
    std::fs::write(&script, guest_script(&exes[0], &exes[1], &exes[2]))
        .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    let path = format!(
        "{}:{}",
        virtiofsd.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    eprintln!("xtask: booting {} under TCG", kernel.display());
    let out = Command::new("timeout")
        .arg("1800")
        .arg(&vng)
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
        .output()
        .map_err(|e| format!("cannot run vng: {e}"))?;
    // The script's output arrives on the console, which vng may put on
    // either stream.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    if text.contains("vmtest: guest status 0") {
        eprintln!("xtask: vmtest passed");
        Ok(())
    } else if text.contains("vmtest: guest status") {
        Err("tests failed in the 6.1 guest (see `vmtest:` lines above)".into())
    } else {
        Err(format!(
            "the guest never finished its script (vng exited with {})",
            out.status
        ))
    }
}
