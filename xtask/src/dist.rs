//! `cargo xtask dist`: the release artifacts, in `target/dist/`.
//!
//! - `fusetrace-VERSION-ARCH-linux`: a static musl executable per
//!   architecture (x86_64, aarch64), stripped, its eBPF object inside.
//! - `fusetrace_VERSION_DEBARCH.deb`: that binary, man pages and shell
//!   completions generated from the clap definitions (`fusetrace assets`),
//!   the systemd unit for `serve`, README and licenses.
//! - `fusetrace-VERSION-ARCH-linux.tar.gz`: the same files in one folder.
//! - `SHA256SUMS` of all of them.
//!
//! The `.deb` is laid out here and packed by `dpkg-deb`, Debian's own
//! packer, present on every Debian host: cargo-deb would be one more tool
//! built from source on every CI run, for a package with no maintainer
//! scripts and no dependencies (the binary is static).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Result, cargo_with, output, root, run};

pub struct Arch {
    /// As in the file names (`uname -m`).
    pub name: &'static str,
    pub triple: &'static str,
    /// Debian's name for it.
    pub deb: &'static str,
}

pub const ARCHES: [Arch; 2] = [
    Arch {
        name: "x86_64",
        triple: "x86_64-unknown-linux-musl",
        deb: "amd64",
    },
    Arch {
        name: "aarch64",
        triple: "aarch64-unknown-linux-musl",
        deb: "arm64",
    },
];

/// Debian's C compilers for the release targets: ring (rustls's crypto)
/// compiles C and assembly for the target it is built for.
const CROSS_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "musl-tools"];

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Files both the tarball and the package carry, from the repository root.
const DOCS: [&str; 4] = [
    "README.md",
    "LICENSE-MIT",
    "LICENSE-APACHE",
    "LICENSE-GPL-2.0",
];
const UNIT: &str = "packaging/fusetrace.service";

/// What `dist` made.
pub struct Artifacts {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

pub fn dir() -> PathBuf {
    root().join("target/dist")
}

/// `fusetrace-VERSION-ARCH-linux`: the binary's name, and the tarball's
/// folder.
pub fn stem(arch: &Arch) -> String {
    format!("fusetrace-{VERSION}-{}-linux", arch.name)
}

pub fn deb_name(arch: &Arch) -> String {
    format!("fusetrace_{VERSION}_{}.deb", arch.deb)
}

pub fn dist() -> Result<Artifacts> {
    for tool in ["dpkg-deb", "tar", "gzip", "sha256sum"] {
        if !crate::have(tool) {
            return Err(format!(
                "`cargo xtask dist` needs {tool} (Debian: dpkg, tar, gzip, coreutils)"
            ));
        }
    }
    let dir = dir();
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&dir);
    mkdir(&work)?;
    let mut files = Vec::new();
    for arch in &ARCHES {
        let out = dir.join(stem(arch));
        copy(&build(arch)?, &out)?;
        files.push(out);
    }
    // Man pages and completions: the same for every architecture, written
    // by the binary this machine runs.
    let host = ARCHES
        .iter()
        .find(|a| a.name == std::env::consts::ARCH)
        .ok_or("`cargo xtask dist` runs on x86_64 or aarch64 hosts")?;
    let assets = work.join("assets");
    run(Command::new(dir.join(stem(host)))
        .arg("assets")
        .arg(&assets))?;
    for arch in &ARCHES {
        files.push(tarball(arch, &dir, &work, &assets)?);
        files.push(deb(arch, &dir, &work, &assets)?);
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let sums = output(Command::new("sha256sum").current_dir(&dir).args(&names))?;
    let sums_file = dir.join("SHA256SUMS");
    write(&sums_file, &format!("{sums}\n"))?;
    files.push(sums_file);
    fs::remove_dir_all(&work).map_err(|e| format!("cannot remove {}: {e}", work.display()))?;
    Ok(Artifacts { dir, files })
}

/// The static release binary for `arch` (its Rust target added first);
/// returns its path.
pub fn build(arch: &Arch) -> Result<PathBuf> {
    // ring's C for the musl targets (.cargo/config.toml names them).
    crate::apt_install(CROSS_PACKAGES, |p| match p {
        "gcc-aarch64-linux-gnu" => "aarch64-linux-gnu-gcc",
        "musl-tools" => "x86_64-linux-musl-gcc",
        p => p,
    })?;
    run(Command::new("rustup").args(["target", "add", arch.triple]))?;
    // Refuse, rather than warn, to build without the kernel programs.
    cargo_with(
        &[
            "build",
            "--profile",
            "dist",
            "-p",
            "fusetrace",
            "--target",
            arch.triple,
        ],
        &[("FUSETRACE_REQUIRE_EBPF", "1")],
    )?;
    Ok(root().join(format!("target/{}/dist/fusetrace", arch.triple)))
}

/// The commit's time, so that archives of one commit are byte for byte
/// the same (`SOURCE_DATE_EPOCH`, as Debian's builds do).
fn source_date() -> String {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| {
            output(
                Command::new("git")
                    .current_dir(root())
                    .args(["log", "-1", "--format=%ct"]),
            )
            .ok()
        })
        .unwrap_or_else(|| "0".into())
}

fn tarball(arch: &Arch, dir: &Path, work: &Path, assets: &Path) -> Result<PathBuf> {
    let folder = work.join(stem(arch));
    mkdir(&folder)?;
    copy(&dir.join(stem(arch)), &folder.join("fusetrace"))?;
    for doc in DOCS {
        copy(&root().join(doc), &folder.join(doc))?;
    }
    copy(&root().join(UNIT), &folder.join("fusetrace.service"))?;
    copy_tree(&assets.join("man"), &folder.join("man"))?;
    copy_tree(&assets.join("completions"), &folder.join("completions"))?;
    let out = dir.join(format!("{}.tar.gz", stem(arch)));
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{}", source_date()))
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(work)
        .arg(stem(arch)))?;
    Ok(out)
}

fn deb(arch: &Arch, dir: &Path, work: &Path, assets: &Path) -> Result<PathBuf> {
    let tree = work.join(format!("deb-{}", arch.deb));
    let usr = tree.join("usr");
    copy(&dir.join(stem(arch)), &usr.join("bin/fusetrace"))?;
    let man1 = usr.join("share/man/man1");
    for page in list(&assets.join("man"))? {
        let to = man1.join(page.file_name().unwrap());
        copy(&page, &to)?;
        run(Command::new("gzip").args(["-9n"]).arg(&to))?;
    }
    let completions = assets.join("completions");
    for (from, to) in [
        (
            "fusetrace.bash",
            "share/bash-completion/completions/fusetrace",
        ),
        ("_fusetrace", "share/zsh/vendor-completions/_fusetrace"),
        (
            "fusetrace.fish",
            "share/fish/vendor_completions.d/fusetrace.fish",
        ),
    ] {
        copy(&completions.join(from), &usr.join(to))?;
    }
    copy(
        &root().join(UNIT),
        &usr.join("lib/systemd/system/fusetrace.service"),
    )?;
    let doc = usr.join("share/doc/fusetrace");
    for name in DOCS {
        copy(&root().join(name), &doc.join(name))?;
    }
    write(&doc.join("copyright"), COPYRIGHT)?;
    // The control files: what dpkg lists, and the sums `debsums` checks.
    let mut sums = String::new();
    let mut bytes = 0;
    for file in walk(&usr)? {
        bytes += fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let relative = file.strip_prefix(&tree).unwrap().display().to_string();
        let md5 = output(Command::new("md5sum").arg(&file))?;
        let md5 = md5.split_whitespace().next().unwrap_or_default();
        sums.push_str(&format!("{md5}  {relative}\n"));
    }
    let control = tree.join("DEBIAN");
    mkdir(&control)?;
    write(&control.join("md5sums"), &sums)?;
    write(
        &control.join("control"),
        &format!(
            "Package: fusetrace\n\
             Version: {VERSION}\n\
             Architecture: {}\n\
             Maintainer: The fusetrace developers <fusetrace@users.noreply.github.com>\n\
             Installed-Size: {}\n\
             Section: utils\n\
             Priority: optional\n\
             Description: where the time goes in FUSE file systems\n \
             fusetrace follows every FUSE request through its whole life with eBPF:\n \
             when the kernel sent it, when a daemon thread took it, when the daemon\n \
             replied and when the kernel ended it, per opcode, mount, process and\n \
             file. It needs a kernel with BTF; `fusetrace doctor` says what the\n \
             running kernel offers.\n",
            arch.deb,
            bytes.div_ceil(1024)
        ),
    )?;
    let out = dir.join(deb_name(arch));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&out)
        .env("SOURCE_DATE_EPOCH", source_date()))?;
    Ok(out)
}

/// Debian's machine-readable copyright file.
const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fusetrace

Files: *
Copyright: 2026 The fusetrace developers
License: MIT or Apache-2.0
 The user-space program. See /usr/share/doc/fusetrace/LICENSE-MIT and
 /usr/share/common-licenses/Apache-2.0.

Files: fusetrace-ebpf/*
Copyright: 2026 The fusetrace developers
License: MIT or GPL-2.0-only
 The kernel programs embedded in the binary. See
 /usr/share/doc/fusetrace/LICENSE-MIT and /usr/share/common-licenses/GPL-2.
";

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Copies a file, making the folders on the way. The packaged modes are
/// set, not copied: 0755 for an executable, else 0644 (`fusetrace assets`
/// writes its man pages 0600, as every file fusetrace writes, and a
/// builder's umask must not change a package).
fn copy(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    mkdir(to.parent().unwrap())?;
    let fail =
        |e: std::io::Error| format!("cannot copy {} to {}: {e}", from.display(), to.display());
    fs::copy(from, to).map_err(fail)?;
    let executable = fs::metadata(from).map_err(fail)?.permissions().mode() & 0o111 != 0;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(fail)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for file in list(from)? {
        copy(&file, &to.join(file.file_name().unwrap()))?;
    }
    Ok(())
}

/// The entries of a folder, sorted.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in list(dir)? {
        if entry.is_dir() {
            files.extend(walk(&entry)?);
        } else {
            files.push(entry);
        }
    }
    Ok(files)
}
