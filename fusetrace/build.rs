//! Compiles `fusetrace-ebpf` for the BPF target and hands its object to the
//! binary (`include_bytes!`). Needs the nightly toolchain with rust-src and a
//! `bpf-linker`: the one `cargo xtask setup` builds into `.tools/`, or else
//! the first on PATH (`cargo install bpf-linker`).
//!
//! Without a linker (a fresh clone before setup), or with
//! `FUSETRACE_SKIP_EBPF=1`, it hands over an empty object instead and says
//! so in a cargo warning and in `--version`: `cargo check`, `clippy` and
//! `doc` work anywhere, and a binary built so refuses to trace with one line
//! naming the fix. (aya-build, which has a skip switch of its own, needs a
//! newer rustc than this project's toolchain: aya-build 0.2.1 wants 1.98.)
//!
//! Also hands `--version` the git commit (`FUSETRACE_COMMIT` overrides, for
//! builds from a source tarball) and the target triple.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("fusetrace-ebpf");
    let common_dir = root.join("fusetrace-common");
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    version_facts(&root);
    let tools_dir = root.join(".tools/bpf-linker/bin");
    println!("cargo:rerun-if-changed={}", tools_dir.display());
    println!("cargo:rerun-if-env-changed=FUSETRACE_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=FUSETRACE_REQUIRE_EBPF");
    let skip = env::var_os("FUSETRACE_SKIP_EBPF").is_some_and(|v| v == "1");
    let linker_dir = std::iter::once(tools_dir.clone())
        .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default()))
        .find(|dir| dir.join("bpf-linker").is_file());
    let linker_dir = match linker_dir {
        Some(dir) if !skip => {
            println!(
                "cargo:rerun-if-changed={}",
                dir.join("bpf-linker").display()
            );
            dir
        }
        _ => {
            // Release builds (`cargo xtask dist`) refuse instead.
            if env::var_os("FUSETRACE_REQUIRE_EBPF").is_some_and(|v| v == "1") {
                panic!(
                    "FUSETRACE_REQUIRE_EBPF=1, but no bpf-linker in {} or on PATH: run `cargo xtask setup`",
                    tools_dir.display()
                );
            }
            // One installed later, on PATH, is found by the next build.
            println!("cargo:rerun-if-env-changed=PATH");
            let why = if skip {
                "FUSETRACE_SKIP_EBPF=1".to_string()
            } else {
                format!(
                    "no bpf-linker in {} or on PATH (`cargo xtask setup` builds it)",
                    tools_dir.display()
                )
            };
            println!(
                "cargo:warning=building fusetrace without its eBPF programs ({why}): it will not trace"
            );
            println!(
                "cargo:rustc-env=FUSETRACE_EBPF_STATE=built without its kernel programs ({why})"
            );
            let empty = PathBuf::from(env::var("OUT_DIR").unwrap()).join("no-ebpf-object");
            std::fs::write(&empty, b"").expect("writing the empty eBPF object");
            println!("cargo:rustc-env=FUSETRACE_EBPF_OBJECT={}", empty.display());
            return;
        }
    };
    // aya-ebpf's pt_regs accessors follow `bpf_target_arch`, which would
    // default to the build host's: name the target's (one object per
    // architecture, each in its own directory).
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let target_dir = root.join("target/ebpf").join(&arch);
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        env::var("PATH").unwrap_or_default()
    );
    println!("cargo:rerun-if-env-changed=FUSETRACE_NIGHTLY");
    let toolchain = format!(
        "+{}",
        env::var("FUSETRACE_NIGHTLY").unwrap_or_else(|_| "nightly".into())
    );
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&ebpf_dir)
        .arg(&toolchain)
        .args(["build", "--release", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .env("PATH", path)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f--cfg\x1fbpf_target_arch=\"{arch}\""),
        );
    // The outer cargo's settings must not leak into the nested BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars() {
        let outer = [
            "CARGO_FEATURE_",
            "CARGO_CFG_",
            "CARGO_PROFILE_",
            "CARGO_ENCODED_",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if outer && key != "CARGO_ENCODED_RUSTFLAGS" {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .expect("cannot run cargo +nightly for the eBPF crate");
    if !status.success() {
        panic!("building fusetrace-ebpf failed (see the output above)");
    }
    let object = target_dir.join("bpfel-unknown-none/release/fusetrace");
    println!("cargo:rustc-env=FUSETRACE_EBPF_OBJECT={}", object.display());
    println!("cargo:rustc-env=FUSETRACE_EBPF_STATE=kernel programs embedded");
}

/// The commit and target `--version` prints.
fn version_facts(root: &Path) {
    println!("cargo:rerun-if-env-changed=FUSETRACE_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // A new commit or checkout changes HEAD or the branch it names.
    for path in ["HEAD", "refs/heads", "packed-refs"] {
        // (Only existing paths: cargo reruns for a missing one every time.)
        if let Some(p) = git(&["rev-parse", "--git-path", path]).map(|p| root.join(p))
            && p.exists()
        {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    let commit = env::var("FUSETRACE_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FUSETRACE_COMMIT={commit}");
    println!(
        "cargo:rustc-env=FUSETRACE_TARGET={}",
        env::var("TARGET").unwrap()
    );
}
