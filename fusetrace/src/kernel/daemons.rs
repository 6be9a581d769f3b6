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
    maps::{Array, HashMap, MapData},
};
use fusetrace_common::{DAEMON_FDS, DaemonFd, DaemonFiles, DevFuseFile};

/// How often the map is brought up to date with the iterator.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The daemon map and its seek window, taken out of the loaded object.
pub struct DaemonMap {
    files: HashMap<MapData, u32, DaemonFiles>,
    seek: Array<MapData, u64>,
    next_refresh: Instant,
}

impl DaemonMap {
    pub fn take(ebpf: &mut Ebpf) -> Result<DaemonMap> {
        let files = HashMap::try_from(
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

    /// The thread groups in the map now (read before the iterator runs:
    /// an entry the kernel adds after it is kept for the next refresh).
    pub fn known(&self) -> BTreeSet<u32> {
        self.files.keys().filter_map(|k| k.ok()).collect()
    }

    /// Puts what the iterator found (`files`) in the map, and removes the
    /// groups of `known` it no longer found.
    pub fn update(&mut self, known: &BTreeSet<u32>, files: &[DevFuseFile]) -> Result<()> {
        let (holders, gone) = plan(known, files);
        for (tgid, value) in &holders {
            self.files
                .insert(tgid, value, 0)
                .context("filling the daemon map")?;
        }
        for tgid in gone {
            // Gone already (the kernel does not remove entries): fine.
            let _ = self.files.remove(&tgid);
        }
        Ok(())
    }
}

/// The map's value for every thread group holding `/dev/fuse` in
/// `files`, and the groups of `known` that hold none any more.
pub fn plan(
    known: &BTreeSet<u32>,
    files: &[DevFuseFile],
) -> (BTreeMap<u32, DaemonFiles>, Vec<u32>) {
    let mut holders: BTreeMap<u32, DaemonFiles> = BTreeMap::new();
    for f in files {
        let value = holders.entry(f.tgid).or_default();
        // Threads share a table: the iterator may list a file once per
        // thread.
        if value.fds.iter().any(|d| d.file != 0 && d.fd == f.fd) {
            continue;
        }
        match value.fds.iter_mut().find(|d| d.file == 0) {
            Some(slot) => {
                *slot = DaemonFd {
                    file: f.file,
                    fd: f.fd,
                    connection: f.connection,
                }
            }
            None => value.full = 1,
        }
    }
    let gone = known
        .iter()
        .filter(|t| !holders.contains_key(t))
        .copied()
        .collect();
    (holders, gone)
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
            ..DevFuseFile::default()
        }
    }

    #[test]
    fn one_value_per_process_with_each_descriptor_once() {
        let files = [file(10, 3, 52), file(10, 3, 52), file(10, 7, 52), file(20, 4, 60)];
        let (holders, gone) = plan(&BTreeSet::new(), &files);
        assert_eq!(holders.len(), 2);
        let ten = holders[&10];
        assert_eq!(
            ten.fds[..3].iter().map(|d| d.fd).collect::<Vec<_>>(),
            [3, 7, 0]
        );
        assert_eq!(ten.fds[0].connection, 52);
        assert_eq!(ten.full, 0);
        assert!(gone.is_empty());
    }

    #[test]
    fn a_process_with_more_descriptors_than_kept_is_marked_full() {
        let files: Vec<_> = (0..DAEMON_FDS as u32 + 1)
            .map(|fd| file(10, fd + 3, 52))
            .collect();
        let (holders, _) = plan(&BTreeSet::new(), &files);
        assert_eq!(holders[&10].full, 1);
        assert!(holders[&10].fds.iter().all(|d| d.file != 0));
    }

    #[test]
    fn processes_no_longer_holding_dev_fuse_are_removed() {
        let known = BTreeSet::from([10, 30]);
        let (holders, gone) = plan(&known, &[file(10, 3, 52)]);
        assert!(holders.contains_key(&10));
        assert_eq!(gone, [30]);
    }
}
