//! `-c CMD ARGS...`: trace exactly one command's run, its children
//! included, then exit with its exit status.
//!
//! Why a cgroup: the kernel has to pick out the command's requests at the
//! send point, where the requester is the running task, from the
//! command's first request on, for every process it forks. A list of pids
//! would miss a child's first requests (user space learns its pid too
//! late); a cgroup v2 directory holds the command and all its descendants
//! from birth, and one helper call (`bpf_get_current_cgroup_id`) names the
//! sender's. The child enters the directory between fork and exec (a
//! `pre_exec` write to `cgroup.procs`, so nothing it runs is ever outside),
//! and is spawned only once the probes are attached, so none of its
//! requests is missed. The directory is made under the tracer's own cgroup
//! (where it is sure to be allowed: the same owner, no controllers to
//! violate) and removed at the end, with any stragglers (descendants still
//! running when the command exited) moved back to that parent first: also
//! on Ctrl-C, SIGTERM and errors (`Drop`).
//!
//! A request is the command's when one of its processes sends it:
//! synchronous requests, and background ones a process of it queued
//! itself. A background request sent from another context (pages written
//! back by a flusher thread, a queued one released by an earlier one's end
//! in the daemon) is not.

use std::{
    os::{
        fd::{AsFd, AsRawFd},
        unix::{fs::MetadataExt, process::CommandExt, process::ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, ExitCode},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::pipeline::session::StopWhen;

/// After the command exits, how long the run waits at most for its
/// requests still in flight (a background RELEASE sent at its exit) to end.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long a command still running when the run stops (Ctrl-C, an error)
/// has to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// The cgroup v2 directory the command runs in.
pub struct CommandCgroup {
    dir: PathBuf,
    parent: PathBuf,
    id: u64,
}

/// Where the cgroup v2 file system is mounted and the tracer's cgroup in
/// it, from `/proc/self/mountinfo` and `/proc/self/cgroup` (`0::/path`).
fn own_cgroup_dir(mountinfo: &str, cgroup: &str) -> Option<PathBuf> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let (root, mount) = mountinfo.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (fields.get(dash + 1) == Some(&"cgroup2")).then(|| (fields[3], fields[4]))
    })?;
    // The mount shows the hierarchy from `root`; the path is the whole one.
    let rel = path.strip_prefix(root).unwrap_or(path);
    Some(Path::new(mount).join(rel.trim_start_matches('/')))
}

/// The program `argv[0]` names, as execvp would find it.
fn find_program(program: &str) -> Option<PathBuf> {
    let executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

impl CommandCgroup {
    /// Checks the command exists, then makes its cgroup. One line when
    /// there is no cgroup v2 or the tracer may not make one.
    pub fn create(argv: &[String]) -> Result<CommandCgroup> {
        let Some(program) = argv.first() else {
            bail!("-c needs a command to run, e.g. `-c ls -l /mnt`");
        };
        if find_program(program).is_none() {
            bail!("-c: command not found: {program}");
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let parent = own_cgroup_dir(&mountinfo, &cgroup).ok_or_else(|| {
            anyhow!(
                "-c needs cgroup v2 (no cgroup2 file system is mounted, or this process is in none)"
            )
        })?;
        let dir = parent.join(format!("fusetrace-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                // Another user's cgroup (root's, usually): the capability
                // that overrides its permissions, or a cgroup of one's own.
                anyhow!(
                    "-c: making the command's cgroup under {} needs CAP_DAC_OVERRIDE (it is not this user's); grant it, run as root, or start fusetrace in a cgroup delegated to you (`systemd-run --user --scope -p Delegate=yes fusetrace ...`)",
                    parent.display()
                )
            } else {
                anyhow!("-c: cannot create the cgroup {}: {e}", dir.display())
            }
        })?;
        // Owned from here: an error below removes it again.
        let mut cgroup = CommandCgroup { dir, parent, id: 0 };
        // On 64-bit kernels a cgroup's id is its directory's inode number.
        cgroup.id = std::fs::metadata(&cgroup.dir)
            .map(|m| m.ino())
            .with_context(|| format!("-c: reading the cgroup {}", cgroup.dir.display()))?;
        Ok(cgroup)
    }

    /// What `bpf_get_current_cgroup_id()` says in the command's processes.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Starts the command inside the cgroup; when it exits, `stop` hears
    /// of it (`command_exited`), and its `flag` is set [`SETTLE`] later at
    /// the latest. `stdout_to_stderr`: the command's output goes to the
    /// tracer's standard error (`record -o -` writes the recording to
    /// standard output).
    pub fn spawn(
        self,
        argv: &[String],
        stop: &StopWhen,
        stdout_to_stderr: bool,
    ) -> Result<RunningCommand> {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .with_context(|| format!("-c: opening {}/cgroup.procs", self.dir.display()))?;
        let fd = procs.as_raw_fd();
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        if stdout_to_stderr {
            let err = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .context("-c: duplicating standard error")?;
            cmd.stdout(err);
        }
        // SAFETY: only write(2) between fork and exec (async-signal-safe);
        // "0" moves the writing process.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            anyhow!(
                "-c: cannot run {} in the cgroup {}: {e}",
                argv[0],
                self.dir.display()
            )
        })?;
        drop(procs);
        let pid = child.id() as libc::pid_t;
        let exited = Arc::clone(&stop.command_exited);
        let flag = Arc::clone(&stop.flag);
        std::thread::spawn(move || {
            // WNOWAIT: the child stays a zombie until `finish` reaps it,
            // so its pid cannot be reused under a later kill(2).
            // SAFETY: plain waitid(2) on our child, into a zeroed siginfo.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            loop {
                let rc = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if rc == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
            exited.store(true, Ordering::Relaxed);
            std::thread::sleep(SETTLE);
            flag.store(true, Ordering::Relaxed);
        });
        Ok(RunningCommand {
            _cgroup: self,
            child: Some(child),
        })
    }
}

impl Drop for CommandCgroup {
    fn drop(&mut self) {
        // Stragglers go back to the tracer's cgroup (a few rounds: one may
        // fork while being moved), then the directory can go.
        let procs = self.dir.join("cgroup.procs");
        let back = self.parent.join("cgroup.procs");
        for _ in 0..16 {
            let pids = std::fs::read_to_string(&procs).unwrap_or_default();
            if pids.trim().is_empty() {
                break;
            }
            for pid in pids.lines() {
                let _ = std::fs::write(&back, pid);
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            log::warn!("could not remove the cgroup {}: {e}", self.dir.display());
        }
    }
}

/// The command, running in its cgroup.
pub struct RunningCommand {
    /// Dropped after the child is waited for: stragglers out, directory gone.
    _cgroup: CommandCgroup,
    child: Option<Child>,
}

/// How a shell reports a status: the exit code, or 128 + the signal.
pub fn shell_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => 1,
    }
}

impl RunningCommand {
    /// Waits for the command (stopping it first when it still runs: the
    /// run was stopped by Ctrl-C or SIGTERM), removes its cgroup, and
    /// returns its exit status as a shell gives it.
    pub fn finish(mut self) -> Result<ExitCode> {
        let status = self.stop_child().context("-c: waiting for the command")?;
        Ok(ExitCode::from(shell_code(status)))
    }

    fn stop_child(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(std::io::Error::other("already waited for"));
        };
        if child.try_wait()?.is_none() {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + TERM_GRACE;
            while child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if child.try_wait()?.is_none() {
                let _ = child.kill();
            }
        }
        child.wait()
    }
}

impl Drop for RunningCommand {
    fn drop(&mut self) {
        // An error ended the run: the command does not outlive it.
        if self.child.is_some() {
            let _ = self.stop_child();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracers_cgroup_is_found_under_the_cgroup2_mount() {
        let mountinfo = "25 1 0:22 / /sys/fs/cgroup/unified rw,relatime shared:4 - cgroup2 cgroup2 rw\n\
                         30 1 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            own_cgroup_dir(mountinfo, "1:cpu:/\n0::/user.slice/s.scope\n"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice/s.scope"))
        );
        // A mount of a sub-tree (a container's view) shows paths below it.
        let sub = "25 1 0:22 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dir(sub, "0::/ctr/app\n"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(
            own_cgroup_dir("30 1 0:26 / /x rw - cgroup c rw\n", "0::/\n"),
            None
        );
        assert_eq!(own_cgroup_dir(mountinfo, "1:cpu:/\n"), None);
    }

    #[test]
    fn exit_statuses_read_as_a_shell_gives_them() {
        use std::process::ExitStatus;
        assert_eq!(shell_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(shell_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(shell_code(ExitStatus::from_raw(0)), 0);
    }

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("no-such-command-fusetrace").is_none());
        assert!(find_program("/etc/passwd").is_none(), "not executable");
    }
}
