//! Developer tasks: `cargo xtask setup|build|dist|demo|test|fuzz|vmtest|bench`
//! (`cargo xtask --help`).
//!
//! `build`, `dist` and `demo` install what building needs on a fresh
//! Debian machine: FUSE user tools, the nightly toolchain's rust-src, and a
//! bpf-linker built against that toolchain's own LLVM, kept in `.tools/`
//! inside the repository and reused on later runs. `setup` and `test` add
//! what the tests use (Debian packages, cargo-fuzz, a Python venv).

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

type Result<T> = std::result::Result<T, String>;

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// How long `test` fuzzes the recording reader (FUSETRACE_FUZZ_SECONDS overrides).
const FUZZ_SECONDS: u32 = 60;
/// Debian packages building and running need: fusermount3, with which
/// the reference daemon of `demo` mounts.
const BUILD_PACKAGES: &[&str] = &["fuse3"];
/// Debian packages the tests use: bindfs as a daemon we did not write,
/// bpftool to check that probes detach, bpftrace as an independent counter,
/// g++ for libFuzzer (cargo-fuzz), tmux to run `fusetrace top` in a real
/// terminal, prometheus to scrape `fusetrace serve` as fleets do (openssl
/// makes the test CA and certificates of its TLS test);
/// debootstrap for a clean Debian root to install the `.deb` into,
/// qemu-user-static to run the arm64 build's unit tests, and `file` to say
/// that the release binaries are static.
const TEST_PACKAGES: &[&str] = &[
    "bindfs",
    "file",
    "bpftool",
    "bpftrace",
    "g++",
    "tmux",
    "prometheus",
    "openssl",
    "debootstrap",
    "qemu-user-static",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A package is there when its main program is.
fn program_of(package: &str) -> &str {
    match package {
        "fuse3" => "fusermount3",
        "qemu-user-static" => "qemu-aarch64-static",
        p => p,
    }
}

/// Installs with apt-get the `packages` whose program (`program_of`) is not
/// on PATH; a one-line error where there is no apt-get.
fn apt_install(packages: &[&str], program_of: impl Fn(&str) -> &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !have(program_of(p)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        return Err(format!(
            "missing {}: install them with your package manager",
            missing.join(", ")
        ));
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The pinned nightly (from .cargo/config.toml), so that bpf-linker and
/// the toolchain always share one LLVM.
fn nightly() -> String {
    env::var("FUSETRACE_NIGHTLY").unwrap_or_else(|_| "nightly-2026-05-19".into())
}

fn setup_toolchain() -> Result<()> {
    // A no-op when the toolchain and rust-src are already there.
    run(Command::new("rustup")
        .args(["toolchain", "install", &nightly()])
        .args(["--profile", "minimal", "--component", "rust-src"]))
}

/// Builds bpf-linker against the nightly toolchain's own LLVM (no system
/// LLVM needed), once.
fn setup_bpf_linker() -> Result<()> {
    let dir = root().join(".tools/bpf-linker");
    if dir.join("bin/bpf-linker").exists() {
        return Ok(());
    }
    let toolchain = format!("+{}", nightly());
    let sysroot = output(Command::new("rustc").args([&toolchain, "--print", "sysroot"]))?;
    let lib = Path::new(&sysroot).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .map_err(|e| format!("cannot list {}: {e}", lib.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .find_map(|name| {
            name.strip_prefix("lib")?
                .strip_suffix(".so")
                .filter(|n| n.starts_with("LLVM-"))
                .map(str::to_string)
        })
        .ok_or_else(|| {
            format!(
                "no libLLVM-*.so in {}: the nightly toolchain ships none",
                lib.display()
            )
        })?;
    // LLVM-22-rust-1.97.0-nightly -> llvm-22
    let major = llvm
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .unwrap_or_default()
        .to_string();
    let rustflags = format!(
        "-L {0} -l dylib={llvm} -C link-arg=-Wl,-rpath,{0}",
        lib.display()
    );
    run(Command::new("cargo")
        .args([
            &toolchain,
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .arg("--root")
        .arg(&dir)
        .env("RUSTFLAGS", rustflags))
}

/// cargo-fuzz, once, into .tools/ (it runs with the pinned nightly).
fn setup_cargo_fuzz() -> Result<()> {
    let dir = root().join(".tools/cargo-fuzz");
    if dir.join("bin/cargo-fuzz").exists() {
        return Ok(());
    }
    run(Command::new(rustup_cargo())
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .arg("--root")
        .arg(&dir))
}

/// rustup's `cargo` proxy, which understands `+toolchain` (the `CARGO`
/// cargo runs xtask with is the stable toolchain's own binary).
fn rustup_cargo() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    home.map(|h| h.join("bin/cargo"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

/// Fuzzes the recording reader (fusetrace/fuzz) for a bounded time.
fn fuzz(seconds: u32) -> Result<()> {
    let crate_dir = root().join("fusetrace");
    let corpus = crate_dir.join("fuzz/corpus/read_recording");
    std::fs::create_dir_all(&corpus)
        .map_err(|e| format!("cannot create {}: {e}", corpus.display()))?;
    let tools = root().join(".tools/cargo-fuzz/bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        env::var("PATH").unwrap_or_default()
    );
    run(Command::new(rustup_cargo())
        .current_dir(&crate_dir)
        .env("PATH", path)
        .args([&format!("+{}", nightly()), "fuzz", "run", "read_recording"])
        .args([
            "fuzz/corpus/read_recording",
            "fuzz/seeds/read_recording",
            "--",
        ])
        .arg(format!("-max_total_time={seconds}")))
}

fn fuzz_seconds() -> Result<u32> {
    match env::var("FUSETRACE_FUZZ_SECONDS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("FUSETRACE_FUZZ_SECONDS={v} is not a number of seconds")),
        Err(_) => Ok(FUZZ_SECONDS),
    }
}

/// What building and running need: fusermount3, the pinned nightly with
/// rust-src and bpf-linker.
fn setup_build() -> Result<()> {
    apt_install(BUILD_PACKAGES, program_of)?;
    setup_toolchain()?;
    setup_bpf_linker()
}

/// What the tests need besides: their Debian packages, cargo-fuzz and the
/// Python venv.
fn setup_test() -> Result<()> {
    apt_install(TEST_PACKAGES, program_of)?;
    setup_cargo_fuzz()?;
    setup_python()
}

fn setup() -> Result<()> {
    setup_build()?;
    setup_test()
}

/// Perfetto's compiled trace protos (PyPI `perfetto`), with which the
/// tests read `--perfetto` exports back.
const PERFETTO_VERSION: &str = "0.59.1";

/// A venv under .tools/py with the `perfetto` package (the system Python
/// stays clean); the tests run its python3. Only `setup` and `test` make
/// it: running fusetrace needs no Python.
fn setup_python() -> Result<()> {
    let venv = root().join(".tools/py");
    let marker = venv.join(format!(".perfetto-{PERFETTO_VERSION}"));
    if marker.exists() {
        return Ok(());
    }
    let make = || {
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv))
    };
    if make().is_err() {
        // Debian's python3 makes venvs only with python3-venv.
        apt_install(&["python3-venv"], |_| "/nonexistent")?;
        make()?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .arg(format!("perfetto=={PERFETTO_VERSION}")))?;
    std::fs::write(&marker, "").map_err(|e| format!("cannot write {}: {e}", marker.display()))
}

fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

fn cargo_with(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(args)
            .envs(envs.iter().copied()),
    )
}

/// The release artifacts, then their paths and sizes.
fn dist() -> Result<dist::Artifacts> {
    let started = std::time::Instant::now();
    let made = dist::dist()?;
    for file in &made.files {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        println!("{:>10}  {}", size, file.display());
    }
    eprintln!(
        "xtask: dist: {} files in {} ({:.0} s)",
        made.files.len(),
        made.dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(made)
}

/// The release artifacts used as users get them: the static binary alone
/// in a chroot, the `.deb` in a clean Debian root (fusetrace/tests/dist.rs),
/// and the arm64 build's unit tests under qemu-user.
fn dist_tests() -> Result<()> {
    let made = dist()?;
    let dir = made.dir.display().to_string();
    cargo_with(
        &[
            "test",
            "-p",
            "fusetrace",
            "--test",
            "dist",
            "--",
            "--ignored",
            "--test-threads=1",
        ],
        &[("FUSETRACE_DIST", &dir)],
    )?;
    let arm = &dist::ARCHES[1];
    let runner = format!(
        "CARGO_TARGET_{}_RUNNER",
        arm.triple.to_uppercase().replace('-', "_")
    );
    cargo_with(
        &[
            "test",
            "--target",
            arm.triple,
            "-p",
            "fusetrace",
            "-p",
            "fusetrace-common",
            "--lib",
        ],
        &[(&runner, "qemu-aarch64-static")],
    )
}

/// The arm64 guest (`xtask/arm64/run.sh`: its own initramfs, since the
/// host's file system, which the x86 guests boot from, is x86_64).
fn vmtest_arm64() -> Result<()> {
    let binary = dist::build(&dist::ARCHES[1])?;
    run(Command::new("sh")
        .arg(root().join("xtask/arm64/run.sh"))
        .arg(binary)
        .arg(root().join("target/vm/arm64")))
}

mod bench;
mod dist;
mod vmtest;

/// Developer tasks for fusetrace (`cargo xtask TASK`).
#[derive(clap::Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(clap::Subcommand)]
enum Task {
    /// Install what building and testing need: Debian packages, the pinned
    /// nightly with rust-src, bpf-linker and cargo-fuzz (into .tools/), and
    /// a Python venv with Perfetto's trace protos (.tools/py).
    Setup,
    /// Install what building needs (fuse3, the nightly, bpf-linker), then
    /// build the release binary (target/release/fusetrace).
    Build,
    /// Build the release artifacts into target/dist: static binaries for
    /// x86_64 and aarch64, a .deb and a tarball each, SHA256SUMS.
    Dist,
    /// Install what building needs, build, and run `fusetrace demo` with ARGS.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// README's test command: set up, then fmt --check, clippy -D warnings,
    /// cargo test, the release artifacts built and tried (a chroot, a
    /// debootstrapped Debian, qemu-user for arm64) and a bounded fuzz run of
    /// the recording reader.
    Test,
    /// Set up, then fuzz the recording reader (FUSETRACE_FUZZ_SECONDS, 60).
    Fuzz,
    /// The integration tests on Debian kernels (6.1, 6.12, 6.17, the newest), in VMs under
    /// software emulation.
    Vmtest {
        /// Only this guest (default: each in turn).
        #[arg(long, value_parser = vmtest::GUESTS.iter().map(|g| g.name).collect::<Vec<_>>())]
        kernel: Option<String>,
        /// `arm64`: the static aarch64 binary on Debian's newest arm64 kernel
        /// instead (qemu-system-aarch64, TCG): doctor, and `trace` and `stats`
        /// counting exactly what the reference daemon served.
        #[arg(long, value_parser = ["x86_64", "arm64"], default_value = "x86_64")]
        arch: String,
    },
    /// What tracing costs the traced system (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    let release = || cargo(&["build", "--release", "-p", "fusetrace"]);
    let result = match cli.task {
        Task::Setup => setup(),
        Task::Build => setup_build().and_then(|()| release()),
        Task::Dist => setup_build().and_then(|()| dist()).map(|_| ()),
        Task::Demo { args } => setup_build().and_then(|()| release()).and_then(|()| {
            run(Command::new(root().join("target/release/fusetrace"))
                .arg("demo")
                .args(&args))
        }),
        Task::Test => setup()
            .and_then(|()| cargo(&["fmt", "--all", "--check"]))
            .and_then(|()| cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]))
            .and_then(|()| cargo(&["test"]))
            .and_then(|()| dist_tests())
            .and_then(|()| fuzz(fuzz_seconds()?)),
        Task::Fuzz => setup().and_then(|()| fuzz(fuzz_seconds()?)),
        Task::Vmtest { arch, .. } if arch == "arm64" => setup_build().and_then(|()| vmtest_arm64()),
        Task::Vmtest { kernel, .. } => setup().and_then(|()| vmtest::vmtest(kernel.as_deref())),
        Task::Bench(args) => bench::main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
