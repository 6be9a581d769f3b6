//! Compiles `fusetrace-ebpf` for the BPF target and hands its object to the
//! binary (`include_bytes!`). Needs the nightly toolchain with rust-src and a
//! `bpf-linker`; `cargo xtask setup` provides both (see README.md).
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
    if !linker_dir.join("bpf-linker").exists() {
        panic!(
            "bpf-linker is missing from {}: run `cargo xtask setup` once (README.md)",
            linker_dir.display()
        );
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
