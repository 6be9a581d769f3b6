//! Every file fusetrace writes (recordings, Perfetto traces, CSV, the man
//! pages of `assets`) is made here, one way: mode 0600 whatever the umask
//! (they hold the paths, uids and command names of everyone's requests, as
//! perf.data does), never through a symbolic link at the output path (a
//! dangling one too: O_NOFOLLOW and O_EXCL), and an existing file is
//! replaced only with `--force`. Each refusal is one line naming the path
//! and the flag.
//!
//! Two ways to write: [`create_in_place`] for a recording, which grows
//! under its own name so that a killed recorder leaves a readable file;
//! [`AtomicFile`] for the outputs written at the end, which are made under
//! a temporary name in the same directory and renamed over the target when
//! complete, so that a reader never sees half a file.

use std::{
    fs::{File, Permissions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};
use tempfile::NamedTempFile;

/// The mode of every file fusetrace writes.
pub const MODE: u32 = 0o600;

/// `--force`, for every command that writes a file.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Force {
    /// Replace output files that exist (a regular file only: a symbolic
    /// link at the output path is refused even so). Without it an existing
    /// file is left alone and the command stops first.
    #[arg(long)]
    pub force: bool,
}

/// An output path and how to name it in messages (`what` is the option or
/// the kind of file: "recording", "--csv", "Perfetto trace").
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub path: &'a Path,
    pub what: &'a str,
    pub force: bool,
}

impl Target<'_> {
    fn refused_link(&self) -> anyhow::Error {
        let to = std::fs::read_link(self.path)
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default();
        anyhow!(
            "{} {} is a symbolic link{to}: fusetrace never writes through one, not even with --force; remove it or give another path",
            self.what,
            self.path.display()
        )
    }

    fn refused_existing(&self) -> anyhow::Error {
        anyhow!(
            "{} {} exists: add --force to replace it",
            self.what,
            self.path.display()
        )
    }

    /// Whether the path may be written: free, or (with `--force`) a
    /// regular file. Returns whether something is there to replace.
    pub fn check(&self) -> Result<bool> {
        let meta = match std::fs::symlink_metadata(self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => bail!("cannot write {} {}: {e}", self.what, self.path.display()),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(self.refused_link());
        }
        if kind.is_dir() {
            bail!(
                "{} {} is a directory: give a file name, e.g. {}",
                self.what,
                self.path.display(),
                self.path.join("out").display()
            );
        }
        if !self.force {
            return Err(self.refused_existing());
        }
        if !kind.is_file() {
            bail!(
                "{} {} is not a regular file: --force replaces regular files only",
                self.what,
                self.path.display()
            );
        }
        Ok(true)
    }

    /// The error for a create that found something at the path after all
    /// (made between the check and the create).
    fn explain_exists(&self, e: io::Error) -> anyhow::Error {
        match std::fs::symlink_metadata(self.path) {
            Ok(m) if m.file_type().is_symlink() => self.refused_link(),
            Ok(_) => self.refused_existing(),
            Err(_) => anyhow!("cannot create {} {}: {e}", self.what, self.path.display()),
        }
    }
}

/// Makes an open file 0600 exactly: the mode given to open(2) is reduced
/// by the umask, and a umask could take the owner's bits too.
fn private(file: &File) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(MODE))
}

/// Creates `target` under its own name, for a file that grows while it is
/// written. An existing regular file is removed first (with `--force`);
/// the create itself never follows a link and never opens an existing
/// file (O_EXCL), so a link or file planted in between is refused too.
pub fn create_in_place(target: Target<'_>) -> Result<File> {
    if target.check()? {
        std::fs::remove_file(target.path).map_err(|e| {
            anyhow!(
                "cannot replace {} {}: {e}",
                target.what,
                target.path.display()
            )
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(target.path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => target.explain_exists(e),
            _ => anyhow!(
                "cannot create {} {}: {e}",
                target.what,
                target.path.display()
            ),
        })?;
    private(&file).map_err(|e| {
        anyhow!(
            "cannot create {} {}: {e}",
            target.what,
            target.path.display()
        )
    })?;
    Ok(file)
}

/// A file written under a temporary name next to its target (removed if
/// it is dropped unfinished) and renamed over the target by
/// [`AtomicFile::commit`]. rename(2) replaces a link at the target rather
/// than following it, and without `--force` the rename refuses to replace
/// anything (RENAME_NOREPLACE, or link and unlink).
pub struct AtomicFile {
    file: NamedTempFile,
    path: PathBuf,
    what: String,
    force: bool,
}

impl AtomicFile {
    /// Checks the target and opens the temporary file, so that a bad path
    /// fails before any work is done.
    pub fn create(target: Target<'_>) -> Result<AtomicFile> {
        target.check()?;
        let Some(name) = target.path.file_name() else {
            bail!(
                "{} {} names no file: give a file name",
                target.what,
                target.path.display()
            );
        };
        let dir = match target.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file = tempfile::Builder::new()
            .prefix(&format!(".{}.partial-", name.to_string_lossy()))
            .permissions(Permissions::from_mode(MODE))
            .tempfile_in(dir)
            .map_err(|e| {
                anyhow!(
                    "cannot write {} {}: {e}",
                    target.what,
                    target.path.display()
                )
            })?;
        private(file.as_file()).map_err(|e| {
            anyhow!(
                "cannot write {} {}: {e}",
                target.what,
                target.path.display()
            )
        })?;
        Ok(AtomicFile {
            file,
            path: target.path.to_path_buf(),
            what: target.what.to_string(),
            force: target.force,
        })
    }

    fn target(&self) -> Target<'_> {
        Target {
            path: &self.path,
            what: &self.what,
            force: self.force,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes to disk and gives the file its name.
    pub fn commit(self) -> Result<()> {
        let fail =
            |e: io::Error| anyhow!("cannot write {} {}: {e}", self.what, self.path.display());
        self.file.as_file().sync_all().map_err(fail)?;
        if self.force {
            // Checked again: what is there now is what gets replaced.
            self.target().check()?;
            self.file.persist(&self.path).map_err(|e| fail(e.error))?;
        } else {
            let target = Target {
                path: &self.path,
                what: &self.what,
                force: false,
            };
            self.file.persist_noclobber(&self.path).map_err(|e| {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    target.explain_exists(e.error)
                } else {
                    fail(e.error)
                }
            })?;
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &Path, force: bool) -> Target<'_> {
        Target {
            path,
            what: "--out",
            force,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    /// Both ways. (The umask is the integration tests': it is the whole
    /// process's, and these tests share one with others.)
    #[test]
    fn private_files_links_refused_and_force() {
        let dir = tempfile::tempdir().unwrap();
        let owned = dir.path().join("owned");
        std::fs::write(&owned, "mine").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&owned, &link).unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();

        let fresh = dir.path().join("fresh");
        drop(create_in_place(target(&fresh, false)).unwrap());
        assert_eq!(mode(&fresh), 0o600);
        let mut a = AtomicFile::create(target(&dir.path().join("atomic"), false)).unwrap();
        a.write_all(b"x").unwrap();
        a.commit().unwrap();
        assert_eq!(mode(&dir.path().join("atomic")), 0o600);

        for force in [false, true] {
            for l in [&link, &dangling] {
                let e = create_in_place(target(l, force)).unwrap_err().to_string();
                assert!(
                    e.contains("is a symbolic link") && e.contains("--force"),
                    "{e}"
                );
                let e = AtomicFile::create(target(l, force))
                    .err()
                    .unwrap()
                    .to_string();
                assert!(e.contains("is a symbolic link"), "{e}");
            }
        }
        assert_eq!(std::fs::read_to_string(&owned).unwrap(), "mine");
        assert!(std::fs::symlink_metadata(&dangling).is_ok());
        assert!(!dir.path().join("nothing").exists());

        let e = create_in_place(target(&owned, false))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "--out {} exists: add --force to replace it",
                owned.display()
            )
        );
        drop(create_in_place(target(&owned, true)).unwrap());
        assert_eq!(std::fs::read(&owned).unwrap(), b"");
        assert_eq!(mode(&owned), 0o600);

        // A file that appears while the atomic one is written is not
        // replaced without --force, and is with it.
        let later = dir.path().join("later");
        let mut a = AtomicFile::create(target(&later, false)).unwrap();
        std::fs::write(&later, "theirs").unwrap();
        a.write_all(b"ours").unwrap();
        let e = a.commit().unwrap_err().to_string();
        assert!(e.contains("exists: add --force"), "{e}");
        assert_eq!(std::fs::read_to_string(&later).unwrap(), "theirs");
        let mut a = AtomicFile::create(target(&later, true)).unwrap();
        a.write_all(b"ours").unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&later).unwrap(), "ours");
        // Nothing but the named files is left (no temporary ones).
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["atomic", "dangling", "fresh", "later", "link", "owned"]
        );
    }
}
