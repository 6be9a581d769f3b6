//! The file systems the bench mounts and the kernel settings it changes, each undone on drop.

use super::*;

/// A mounted file system for one workload; unmounted by `stop`/`kill`,
/// or on drop.
pub(crate) struct Mount {
    pub(crate) dir: PathBuf,
    pub(crate) connection: u32,
    /// The process serving the mount (the four-point bpftrace script
    /// follows its reads and writes of /dev/fuse).
    pub(crate) daemon_pid: u32,
    pub(crate) daemon: Option<Child>,
    pub(crate) target: Target,
}

impl Mount {
    pub(crate) fn new(bench: &Bench, target: Target, w: &Workload) -> Result<Mount> {
        let dir = bench.scratch.join(format!("mnt-{}", w.name));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        match target {
            Target::Reference => {
                let mut cmd = Command::new(&bench.fusetrace);
                cmd.arg("daemon").arg(&dir).args(w.daemon);
                Mount::reference(cmd, &dir)
            }
            Target::ReferenceUring => {
                // Served on one thread per ring queue: --threads does not apply.
                let mut args = w.daemon.iter();
                let mut cmd = Command::new(&bench.fusetrace);
                cmd.arg("daemon").arg(&dir).arg("--io-uring");
                while let Some(a) = args.next() {
                    if *a == "--threads" {
                        args.next();
                    } else {
                        cmd.arg(a);
                    }
                }
                let mut m = Mount::reference(cmd, &dir)?;
                m.target = target;
                Ok(m)
            }
            Target::Bindfs => {
                let src = bench.scratch.join(format!("src-{}", w.name));
                fs::create_dir_all(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
                run(Command::new("bindfs")
                    .args(["-o", w.bindfs])
                    .arg(&src)
                    .arg(&dir))?;
                Ok(Mount {
                    connection: connection_of(&dir)?,
                    daemon_pid: bindfs_pid(&dir)?,
                    dir,
                    daemon: None,
                    target,
                })
            }
        }
    }

    /// Starts `fusetrace daemon` (in `cmd`) and waits for its "mounted" line.
    pub(crate) fn reference(mut cmd: Command, dir: &Path) -> Result<Mount> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the reference daemon: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line.starts_with("mounted") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the reference daemon did not mount {}",
                dir.display()
            ));
        }
        Ok(Mount {
            connection: connection_of(dir)?,
            daemon_pid: child.id(),
            dir: dir.to_path_buf(),
            daemon: Some(child),
            target: Target::Reference,
        })
    }

    pub(crate) fn stop(mut self) -> Result<()> {
        match self.daemon.take() {
            Some(child) => {
                signal(child.id(), libc::SIGTERM);
                reap_or_kill(child, Duration::from_secs(20));
            }
            None => {
                let _ = run(Command::new("fusermount3").arg("-u").arg(&self.dir));
            }
        }
        self.ensure_unmounted()
    }

    pub(crate) fn kill(mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.ensure_unmounted()
    }

    pub(crate) fn ensure_unmounted(&self) -> Result<()> {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if is_mounted(&self.dir) {
            return Err(format!(
                "{} ({}) is still mounted: `umount -l {}`",
                self.dir.display(),
                self.target.name(),
                self.dir.display()
            ));
        }
        Ok(())
    }
}

/// A run that fails between mount and `stop` (a tracer that would not
/// start, say) still leaves nothing mounted.
impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            signal(child.id(), libc::SIGTERM);
            let _ = child.wait();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.dir)
                .status();
            let _ = self.ensure_unmounted();
        }
    }
}

pub(crate) fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&want))
}

/// The bindfs process serving `dir`: bindfs forks into the background,
/// so found by its command line (`bindfs ... SOURCE DIR`).
pub(crate) fn bindfs_pid(dir: &Path) -> Result<u32> {
    let want = dir.as_os_str().as_encoded_bytes();
    let entries = fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            args.first().is_some_and(|a| a.ends_with(b"bindfs")) && args.last() == Some(&want)
        })
        .ok_or_else(|| format!("cannot find the bindfs process serving {}", dir.display()))
}

/// The FUSE connection id (`major << 20 | minor` of the mount's device).
pub(crate) fn connection_of(dir: &Path) -> Result<u32> {
    let dev = fs::metadata(dir)
        .map_err(|e| format!("cannot stat {}: {e}", dir.display()))?
        .dev();
    Ok((libc::major(dev) << 20) | libc::minor(dev))
}

/// The fuse control file system (`/sys/fs/fuse/connections`), mounted for
/// the run when it was not.
pub(crate) struct FuseCtl {
    pub(crate) mounted_by_us: bool,
}

pub(crate) const FUSECTL: &str = "/sys/fs/fuse/connections";

impl FuseCtl {
    pub(crate) fn mounted() -> Result<FuseCtl> {
        if is_mounted(Path::new(FUSECTL)) {
            return Ok(FuseCtl {
                mounted_by_us: false,
            });
        }
        run(Command::new("mount").args(["-t", "fusectl", "fusectl", FUSECTL]))?;
        Ok(FuseCtl {
            mounted_by_us: true,
        })
    }

    /// The count of requests waiting on a connection (fusectl names
    /// connections by their minor number).
    pub(crate) fn waiting_file(&self, connection: u32) -> PathBuf {
        Path::new(FUSECTL)
            .join((connection & 0xfffff).to_string())
            .join("waiting")
    }
}

impl Drop for FuseCtl {
    fn drop(&mut self) {
        if self.mounted_by_us {
            let _ = Command::new("umount").arg(FUSECTL).status();
        }
    }
}

/// FUSE over io_uring allowed for the run (`enable_uring`), put back
/// afterwards: the io_uring target needs it.
pub(crate) struct UringParam {
    old: Option<String>,
}

pub(crate) const URING_PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";

impl UringParam {
    pub(crate) fn enable() -> Result<UringParam> {
        let old = fs::read_to_string(URING_PARAMETER).map_err(|e| {
            format!(
                "the io_uring target needs FUSE over io_uring (Linux 6.14+): {URING_PARAMETER}: {e}"
            )
        })?;
        fs::write(URING_PARAMETER, "Y")
            .map_err(|e| format!("cannot set {URING_PARAMETER}: {e}"))?;
        Ok(UringParam {
            old: Some(old.trim().to_string()),
        })
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            let _ = fs::write(URING_PARAMETER, old);
        }
    }
}

/// A kernel limit raised for the run and put back afterwards.
pub(crate) struct Sysctl {
    pub(crate) path: &'static str,
    pub(crate) old: Option<u64>,
}

impl Sysctl {
    pub(crate) fn set(path: &'static str, value: u64) -> Result<Sysctl> {
        let old = read_u64(Path::new(path)).ok_or_else(|| format!("cannot read {path}"))?;
        fs::write(path, value.to_string()).map_err(|e| format!("cannot set {path}: {e}"))?;
        Ok(Sysctl {
            path,
            old: Some(old),
        })
    }

    pub(crate) fn at_least(path: &'static str, value: u64) -> Result<Sysctl> {
        let old = read_u64(Path::new(path)).ok_or_else(|| format!("cannot read {path}"))?;
        if old >= value {
            return Ok(Sysctl { path, old: None });
        }
        fs::write(path, value.to_string())
            .map_err(|e| format!("cannot raise {path} to {value}: {e}"))?;
        Ok(Sysctl {
            path,
            old: Some(old),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _ = fs::write(self.path, old.to_string());
        }
    }
}
