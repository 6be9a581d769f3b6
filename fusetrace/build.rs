//! Compiles `fusetrace-ebpf` for the BPF target and hands its object to the
//! binary (`include_bytes!`). Needs the nightly toolchain with rust-src and a
//! `bpf-linker`; `cargo xtask setup` provides both (see README.md).
//!
//! Without the linker (a fresh clone before setup), or with
//! `FUSETRACE_SKIP_EBPF=1`, it hands over an empty object instead and says
//! so in a cargo warning: `cargo check`, `clippy` and `doc` work anywhere,
//! and a binary built so refuses to trace with one line naming the fix.
//! (aya-build, which has a skip switch of its own, needs a newer rustc than
//! this project's toolchain: aya-build 0.2.1 wants 1.98.)
use std::{env, path::PathBuf, process::Command};

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
    let linker_dir = root.join(".tools/bpf-linker/bin");
    println!("cargo:rerun-if-changed={}", linker_dir.display());
    println!("cargo:rerun-if-env-changed=FUSETRACE_SKIP_EBPF");
    let skip = env::var_os("FUSETRACE_SKIP_EBPF").is_some_and(|v| v == "1");
    if skip || !linker_dir.join("bpf-linker").exists() {
        let why = if skip {
            "FUSETRACE_SKIP_EBPF=1".to_string()
        } else {
            format!(
                "no bpf-linker in {} (`cargo xtask setup` builds it)",
                linker_dir.display()
            )
        };
        println!(
            "cargo:warning=building fusetrace without its eBPF programs ({why}): it will not trace"
        );
        let empty = PathBuf::from(env::var("OUT_DIR").unwrap()).join("no-ebpf-object");
        std::fs::write(&empty, b"").expect("writing the empty eBPF object");
        println!("cargo:rustc-env=FUSETRACE_EBPF_OBJECT={}", empty.display());
        return;
    }
    let target_dir = root.join("target/ebpf");
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
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
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
}
