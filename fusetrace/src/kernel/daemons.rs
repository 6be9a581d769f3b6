//! The daemon map's user-space half (`fusetrace-ebpf/src/daemons.rs`):
//! which processes hold `/dev/fuse`, so that the syscall-boundary programs
//! return at once for every other process.
//!
//! Filled from the `task_file` iterator before tracing begins, and again
//! every [`REFRESH`] while it runs: descriptors a process received later,
//! processes that exited (whose entries would otherwise fill the map over
//! a long run of mounts coming and going). A daemon that starts between
//! two refreshes is found by the kernel on its way (its mount's INIT opens
//! a window in which unknown processes get the full check). Where the
//! iterator cannot run, every process gets the full check, as before the
//! map.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use fusetrace_common::{DAEMON_FDS, DaemonFd, DaemonFiles, DevFuseFile, MAX_DAEMONS};

/// How often the map is brought up to date with the iterator.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The daemon map and its seek window, taken out of the loaded object.
pub struct DaemonMap {
    files: Array<MapData, DaemonFiles>,
    seek: Array<MapData, u64>,
    next_refresh: Instant,
}

impl DaemonMap {
    pub fn take(ebpf: &mut Ebpf) -> Result<DaemonMap> {
        let files = Array::try_from(
            ebpf.take_map("DAEMON_FILES")
                .context("DAEMON_FILES map missing")?,
        )?;
        let seek = Array::try_from(
            ebpf.take_map("DAEMON_SEEK")
                .context("DAEMON_SEEK map missing")?,
        )?;
        Ok(DaemonMap {
            files,
            seek,
            next_refresh: Instant::now() + REFRESH,
        })
    }

    /// No iterator: every process gets the full check.
    pub fn check_everyone(&mut self) -> Result<()> {
        self.seek.set(0, u64::MAX, 0)?;
        Ok(())
    }

    /// Whether a refresh is due (then the next one is scheduled).
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_refresh {
            return false;
        }
        self.next_refresh = now + REFRESH;
        true
    }

    /// The entries in use now (read before the iterator runs: an entry
    /// the kernel fills after it is kept for the next refresh).
    pub fn in_use(&self) -> BTreeSet<u32> {
        (0..MAX_DAEMONS)
            .filter(|&i| self.files.get(&i, 0).is_ok_and(|e| e.tgid != 0))
            .collect()
    }

    /// Puts what the iterator found (`files`) in the map, and empties the
    /// entries of `in_use` it no longer found a holder for.
    pub fn update(&mut self, in_use: &BTreeSet<u32>, files: &[DevFuseFile]) -> Result<()> {
        let entries = plan(files);
        for (index, value) in &entries {
            self.files
                .set(*index, value, 0)
                .context("filling the daemon map")?;
        }
        for index in in_use.iter().filter(|i| !entries.contains_key(i)) {
            self.files
                .set(*index, DaemonFiles::default(), 0)
                .context("emptying a daemon map entry")?;
        }
        Ok(())
    }
}

/// The map's entries for the `/dev/fuse` holders in `files`: each thread
/// group at its id modulo [`MAX_DAEMONS`], the first to fall on an entry
/// holding it, any other marking it `full` (their processes then get the
/// full check, as the kernel does when it finds one).
pub fn plan(files: &[DevFuseFile]) -> BTreeMap<u32, DaemonFiles> {
    let mut entries: BTreeMap<u32, DaemonFiles> = BTreeMap::new();
    for f in files {
        let entry = entries.entry(f.tgid % MAX_DAEMONS).or_default();
        if entry.tgid == 0 {
            entry.tgid = f.tgid;
        }
        if entry.tgid != f.tgid {
            entry.full = 1;
            continue;
        }
        entry.fops = f.fops;
        // Threads share a table: the iterator may list a file once per
        // thread.
        if entry.fds.iter().any(|d| d.file != 0 && d.fd == f.fd) {
            continue;
        }
        match entry.fds.iter_mut().find(|d| d.file == 0) {
            Some(slot) => {
                *slot = DaemonFd {
                    file: f.file,
                    fud: f.fud,
                    fd: f.fd,
                    connection: f.connection,
                }
            }
            None => entry.full = 1,
        }
    }
    entries
}

const _: () = assert!(DAEMON_FDS >= 1);

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tgid: u32, fd: u32, connection: u32) -> DevFuseFile {
        DevFuseFile {
            tgid,
            fd,
            connection,
            file: 0xffff_0000_0000_0000 | (u64::from(tgid) << 16) | u64::from(fd),
            fud: 0xffff_1000_0000_0000 | (u64::from(tgid) << 16) | u64::from(fd),
            fops: 0xffff_ffff_c000_0000,
            ..DevFuseFile::default()
        }
    }

    #[test]
    fn one_entry_per_process_with_each_descriptor_once() {
        let files = [
            file(10, 3, 52),
            file(10, 3, 52),
            file(10, 7, 52),
            file(20, 4, 60),
        ];
        let entries = plan(&files);
        assert_eq!(entries.len(), 2);
        let ten = entries[&10];
        assert_eq!(ten.tgid, 10);
        assert_eq!(
            ten.fds[..3].iter().map(|d| d.fd).collect::<Vec<_>>(),
            [3, 7, 0]
        );
        assert_eq!(ten.fds[0].connection, 52);
        // What the kernel compares with the fd table's file.
        assert_eq!(ten.fds[1].file, files[2].file);
        assert_eq!(ten.fds[1].fud, files[2].fud);
        assert_eq!(ten.fops, files[2].fops);
        assert_eq!(ten.full, 0);
    }

    #[test]
    fn a_process_with_more_descriptors_than_kept_is_marked_full() {
        let files: Vec<_> = (0..DAEMON_FDS as u32 + 1)
            .map(|fd| file(10, fd + 3, 52))
            .collect();
        let entries = plan(&files);
        assert_eq!(entries[&10].full, 1);
        assert!(entries[&10].fds.iter().all(|d| d.file != 0));
    }

    #[test]
    fn two_processes_on_one_entry_mark_it_full_and_the_first_keeps_it() {
        let other = 10 + MAX_DAEMONS;
        let entries = plan(&[file(10, 3, 52), file(other, 4, 60)]);
        assert_eq!(entries.len(), 1);
        let e = entries[&10];
        assert_eq!((e.tgid, e.full, e.fds[0].fd, e.fds[1].file), (10, 1, 3, 0));
    }
}
