//! Which mount each in-kernel cell belongs to, for `fusetrace serve`'s
//! labels: mount point, file system type, daemon command, device.
//!
//! The kernel keys cells by connection number and mount generation (the
//! INITs sent on that number, `HistogramKey::generation`), because a freed
//! number goes to the next mount. A mount is visible in mountinfo only
//! after its INIT was sent, so reading the generations before and after
//! mountinfo, and finding them equal, ties each listed mount to its
//! generation. A generation whose mount left mountinfo retires after a
//! grace period: its series go, and its cells leave the kernel's map.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use fusetrace_common::DevFuseFile;

use crate::{kernel::layout::major_minor, pipeline::connections::MountEntry};

/// The labels a mount's series carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountLabels {
    pub mountpoint: String,
    pub fstype: String,
    pub daemon: String,
    pub device: String,
}

impl MountLabels {
    /// A connection seen in the kernel but in no mount table we can read.
    pub fn unknown(connection: u32) -> MountLabels {
        MountLabels {
            mountpoint: String::new(),
            fstype: String::new(),
            daemon: String::new(),
            device: major_minor(connection),
        }
    }

    /// Where the mounts above `--max-mounts` are counted together.
    pub fn over_cap() -> MountLabels {
        MountLabels {
            mountpoint: "(other)".into(),
            fstype: String::new(),
            daemon: String::new(),
            device: String::new(),
        }
    }

    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("mountpoint", &self.mountpoint),
            ("fstype", &self.fstype),
            ("daemon", &self.daemon),
            ("device", &self.device),
        ]
    }
}

/// One mount generation of a connection number.
#[derive(Debug)]
struct Generation {
    labels: Arc<MountLabels>,
    /// Seen in a mount table (else known only from its cells).
    listed: bool,
    /// When it left the mount table (None: still mounted).
    gone_since: Option<Instant>,
}

/// (connection, generation): one mount's cells.
pub type MountKey = (u32, u32);

/// The mounts of the cells, live and retiring.
#[derive(Debug)]
pub struct MountBook {
    generations: HashMap<MountKey, Generation>,
    max_mounts: usize,
    grace: Duration,
    /// How long a new mount whose daemon is not found stays unnamed (see
    /// [`MountBook::waiting_for_daemons`]), and since when each has.
    daemon_wait: Duration,
    /// The mounts waiting, with what was listed of them.
    unnamed_since: HashMap<MountKey, (Instant, MountLabels)>,
}

impl MountBook {
    pub fn new(max_mounts: usize, grace: Duration) -> MountBook {
        MountBook {
            generations: HashMap::new(),
            max_mounts,
            grace,
            daemon_wait: Duration::ZERO,
            unnamed_since: HashMap::new(),
        }
    }

    /// A mount appears (and its INIT is sent) while `fusermount3` still
    /// hands the `/dev/fuse` descriptor to the daemon through a socket:
    /// a scan of `/proc` then finds no holder, and the mount's labels,
    /// fixed for its life, would name no daemon. Such a mount is left
    /// unnamed for up to `wait` and looked at again
    /// ([`MountBook::observe`] says so); after that it is named without.
    pub fn waiting_for_daemons(mut self, wait: Duration) -> MountBook {
        self.daemon_wait = wait;
        self
    }

    /// Takes a consistent view: the FUSE mounts listed now, and the
    /// kernel's generations read both before and after listing them
    /// (equal). `daemon_of` names a new mount's daemon. True when a new
    /// mount waits for its daemon to be found: look again soon.
    pub fn observe(
        &mut self,
        mounts: &[MountEntry],
        generations: &HashMap<u32, u32>,
        now: Instant,
        mut daemon_of: impl FnMut(&MountEntry) -> String,
    ) -> bool {
        let mut waiting = false;
        let generation_of = |c: u32| generations.get(&c).copied().unwrap_or(0);
        let mut current = HashSet::new();
        for m in mounts {
            let key = (m.connection, generation_of(m.connection));
            current.insert(key);
            if let Some(g) = self.generations.get_mut(&key) {
                g.listed = true;
                continue;
            }
            let labels = if self.live() >= self.max_mounts {
                MountLabels::over_cap()
            } else {
                let daemon = daemon_of(m);
                let labels = MountLabels {
                    mountpoint: m.mount_point.to_string_lossy().into_owned(),
                    fstype: m.fs_type.clone(),
                    daemon,
                    device: major_minor(m.connection),
                };
                let since = self
                    .unnamed_since
                    .entry(key)
                    .or_insert_with(|| (now, labels.clone()))
                    .0;
                if labels.daemon.is_empty() && now.duration_since(since) < self.daemon_wait {
                    waiting = true;
                    continue;
                }
                self.unnamed_since.remove(&key);
                labels
            };
            self.generations.insert(
                key,
                Generation {
                    labels: Arc::new(labels),
                    listed: true,
                    gone_since: None,
                },
            );
        }
        for (key, g) in &mut self.generations {
            // A listed mount is gone when it leaves the list; one never
            // listed, when a newer mount took its number.
            let here = if g.listed {
                current.contains(key)
            } else {
                generation_of(key.0) == key.1
            };
            if here {
                g.gone_since = None;
            } else if g.gone_since.is_none() {
                g.gone_since = Some(now);
            }
        }
        // Mounts gone while they waited for their daemon (they lived a
        // moment): named with what their listing said, and retiring.
        let gone: Vec<MountKey> = self
            .unnamed_since
            .keys()
            .filter(|key| !current.contains(key))
            .copied()
            .collect();
        for key in gone {
            let (_, labels) = self.unnamed_since.remove(&key).expect("listed above");
            self.generations.insert(
                key,
                Generation {
                    labels: Arc::new(labels),
                    listed: true,
                    gone_since: Some(now),
                },
            );
        }
        waiting
    }

    pub fn is_empty(&self) -> bool {
        self.generations.is_empty()
    }

    /// Whether a mount's cells have labels yet.
    pub fn knows(&self, key: MountKey) -> bool {
        self.generations.contains_key(&key)
    }

    /// Cells of mounts never listed (too short-lived to be seen, or in a
    /// mount namespace we cannot read): known by their device number.
    pub fn observe_cells(
        &mut self,
        keys: &HashSet<MountKey>,
        generations: &HashMap<u32, u32>,
        now: Instant,
    ) {
        for key in keys {
            let current = generations.get(&key.0).copied().unwrap_or(0) == key.1;
            self.generations.entry(*key).or_insert_with(|| Generation {
                labels: Arc::new(MountLabels::unknown(key.0)),
                listed: false,
                gone_since: (!current).then_some(now),
            });
        }
    }

    /// Mounts with their own labels now (not retiring, not over the cap).
    fn live(&self) -> usize {
        self.generations
            .values()
            .filter(|g| g.gone_since.is_none() && *g.labels != MountLabels::over_cap())
            .count()
    }

    /// The labels of every mount still listed.
    pub fn listed(&self) -> impl Iterator<Item = &Arc<MountLabels>> {
        self.generations
            .values()
            .filter(|g| g.listed && g.gone_since.is_none())
            .map(|g| &g.labels)
    }

    /// Mounts counted under `(other)` now.
    pub fn over_cap(&self) -> usize {
        self.generations
            .values()
            .filter(|g| *g.labels == MountLabels::over_cap())
            .count()
    }

    /// The labels of a mount's cells (unknown ones by device number).
    pub fn labels(&self, key: MountKey) -> Arc<MountLabels> {
        match self.generations.get(&key) {
            Some(g) => g.labels.clone(),
            None => Arc::new(MountLabels::unknown(key.0)),
        }
    }

    /// Generations gone for the grace period: forgotten here and returned,
    /// for their cells to leave the kernel's map.
    pub fn retire(&mut self, now: Instant) -> Vec<MountKey> {
        let grace = self.grace;
        let gone: Vec<MountKey> = self
            .generations
            .iter()
            .filter(|(_, g)| g.gone_since.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            self.generations.remove(k);
        }
        gone
    }
}

/// A process holding `/dev/fuse` open: a FUSE daemon.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    /// Its command-line arguments, relative ones resolved against its
    /// working directory.
    pub args: Vec<PathBuf>,
    /// It lives in another mount namespace than ours (its mounts are not
    /// in our mountinfo).
    pub other_namespace: bool,
    /// The connections of the `/dev/fuse` files it holds, when the kernel
    /// listed them (`holders_from_files`); empty from the walk over /proc.
    pub connections: Vec<u32>,
}

/// The daemon serving `mount`: the holder of `/dev/fuse` whose command
/// line names the mount point (daemons take it as an argument: bindfs,
/// sshfs, rclone, s3fs, fuse-overlayfs), else the one named after the
/// file system's subtype (`fuse.sshfs`: sshfs); its command name, or ""
/// when none fits.
pub fn pick_daemon(mount: &MountEntry, holders: &[Holder]) -> String {
    // The holder of the mount's own connection, where the kernel said.
    if let Some(h) = holders
        .iter()
        .find(|h| h.connections.contains(&mount.connection))
    {
        return h.comm.clone();
    }
    if let Some(h) = holders
        .iter()
        .find(|h| h.args.iter().any(|a| same_path(a, &mount.mount_point)))
    {
        return h.comm.clone();
    }
    let subtype = mount.fs_type.strip_prefix("fuse.").unwrap_or("");
    holders
        .iter()
        .find(|h| !subtype.is_empty() && h.comm == subtype)
        .map(|h| h.comm.clone())
        .unwrap_or_default()
}

fn same_path(a: &Path, b: &Path) -> bool {
    a.components().eq(b.components())
}

/// Programs that hold `/dev/fuse` only while they mount it and hand the
/// descriptor to the daemon (their command line names the mount point
/// too): never a mount's daemon. While one holds it, the mount waits for
/// its daemon (`MountBook::waiting_for_daemons`).
const MOUNT_HELPERS: &[&str] = &["fusermount", "fusermount3", "mount.fuse", "mount.fuse3"];

/// The processes holding `/dev/fuse` open now (a pass over `/proc`), mount
/// helpers left out.
pub fn fuse_holders() -> Vec<Holder> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let our_namespace = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let proc = entry.path();
        let Ok(fds) = std::fs::read_dir(proc.join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new("/dev/fuse"))
        });
        if !holds {
            continue;
        }
        let comm = std::fs::read_to_string(proc.join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        if MOUNT_HELPERS.contains(&comm.as_str()) {
            continue;
        }
        let args = command_line(&proc);
        let other_namespace = std::fs::read_link(proc.join("ns/mnt")).ok() != our_namespace;
        out.push(Holder {
            pid,
            comm,
            args,
            other_namespace,
            connections: Vec::new(),
        });
    }
    out
}

/// A process's arguments as paths, relative ones resolved against its
/// working directory (readable with CAP_SYS_PTRACE or as the same user
/// only: without, relative arguments stay relative), to be compared with
/// mount points.
fn command_line(proc: &Path) -> Vec<PathBuf> {
    let cwd = std::fs::read_link(proc.join("cwd")).unwrap_or_default();
    std::fs::read(proc.join("cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| {
            cwd.join(std::ffi::OsStr::new(
                &String::from_utf8_lossy(a).into_owned(),
            ))
        })
        .collect()
}

/// The processes holding `/dev/fuse` open, from the kernel's list of those
/// files (`Probes::dev_fuse_files`), mount helpers left out. Unlike
/// [`fuse_holders`] it needs neither CAP_DAC_READ_SEARCH (listing another
/// user's /proc/PID/fd) nor CAP_SYS_PTRACE (reading its links): the
/// command line is world-readable, and a holder of a connection missing
/// from our mount table (`listed`) lives in another mount namespace.
pub fn holders_from_files(files: &[DevFuseFile], listed: &HashSet<u32>) -> Vec<Holder> {
    let our_namespace = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut out: Vec<Holder> = Vec::new();
    for f in files {
        if let Some(h) = out.iter_mut().find(|h| h.pid == f.tgid) {
            h.connections.push(f.connection);
            continue;
        }
        let comm = String::from_utf8_lossy(&f.comm)
            .trim_end_matches('\0')
            .to_string();
        let proc = PathBuf::from(format!("/proc/{}", f.tgid));
        let args = command_line(&proc);
        out.push(Holder {
            pid: f.tgid,
            comm,
            args,
            other_namespace: false,
            connections: vec![f.connection],
        });
    }
    out.retain(|h| !MOUNT_HELPERS.contains(&h.comm.as_str()));
    for h in &mut out {
        h.other_namespace = match std::fs::read_link(format!("/proc/{}/ns/mnt", h.pid)) {
            Ok(ns) => Some(ns) != our_namespace,
            Err(_) => h.connections.iter().any(|c| !listed.contains(c)),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: u32, connection: u32, path: &str, fs_type: &str) -> MountEntry {
        MountEntry {
            mount_id: id,
            connection,
            mount_point: PathBuf::from(path),
            fs_type: fs_type.into(),
            source: String::new(),
        }
    }

    #[test]
    fn a_reused_number_is_a_new_mount_and_the_old_one_retires_after_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut book = MountBook::new(10, grace);
        let a = mount(1, 39, "/mnt/a", "fuse.bindfs");
        let gens = HashMap::from([(39, 1)]);
        book.observe(&[a], &gens, t0, |_| "bindfs".into());
        assert_eq!(book.labels((39, 1)).mountpoint, "/mnt/a");
        assert_eq!(book.labels((39, 1)).daemon, "bindfs");
        // /mnt/a unmounted, /mnt/b mounted on the same number.
        let b = mount(2, 39, "/mnt/b", "fuse");
        let gens = HashMap::from([(39, 2)]);
        let t1 = t0 + Duration::from_secs(1);
        book.observe(&[b], &gens, t1, |_| "fusetrace".into());
        assert_eq!(book.labels((39, 1)).mountpoint, "/mnt/a");
        assert_eq!(book.labels((39, 2)).mountpoint, "/mnt/b");
        assert!(book.retire(t1 + grace / 2).is_empty());
        assert_eq!(book.retire(t1 + grace), vec![(39, 1)]);
        assert_eq!(book.labels((39, 2)).mountpoint, "/mnt/b");
        assert_eq!(book.labels((39, 1)), Arc::new(MountLabels::unknown(39)));
    }

    #[test]
    fn mounts_above_the_cap_share_one_label_set_and_unlisted_cells_get_their_device() {
        let t0 = Instant::now();
        let mut book = MountBook::new(2, Duration::from_secs(1));
        let mounts: Vec<_> = (0..4)
            .map(|i| mount(i, 40 + i, &format!("/m/{i}"), "fuse"))
            .collect();
        book.observe(&mounts, &HashMap::new(), t0, |_| String::new());
        // Cells of two mounts never listed: 77's first mount, superseded by
        // its second (generation 1), which is live.
        let gens = HashMap::from([(77, 1)]);
        book.observe_cells(&HashSet::from([(77, 0), (77, 1)]), &gens, t0);
        let over = (0..4)
            .filter(|i| *book.labels((40 + i, 0)) == MountLabels::over_cap())
            .count();
        assert_eq!((over, book.over_cap()), (2, 2));
        assert_eq!(book.labels((77, 0)).device, "0:77");
        assert!(book.knows((77, 1)));
        book.observe(&mounts, &gens, t0, |_| String::new());
        assert_eq!(book.retire(t0 + Duration::from_secs(1)), vec![(77, 0)]);
        assert!(book.knows((77, 1)));
    }

    #[test]
    fn a_new_mount_whose_daemon_is_not_found_yet_waits_to_be_named() {
        let m = mount(1, 39, "/mnt/x", "fuse.fusetrace");
        let gens = HashMap::from([(39, 1)]);
        let wait = Duration::from_secs(2);
        let mut book = MountBook::new(10, Duration::from_secs(60)).waiting_for_daemons(wait);
        let t0 = Instant::now();
        assert!(book.observe(std::slice::from_ref(&m), &gens, t0, |_| String::new()));
        assert!(!book.knows((39, 1)), "named before its daemon was found");
        // Found on a later look: named with it.
        let t1 = t0 + Duration::from_millis(100);
        assert!(!book.observe(std::slice::from_ref(&m), &gens, t1, |_| "fusetrace".into()));
        assert_eq!(book.labels((39, 1)).daemon, "fusetrace");
        // Never found: named without one once the wait is over.
        let n = mount(2, 40, "/mnt/y", "fuse.fusetrace");
        let gens = HashMap::from([(40, 1)]);
        assert!(book.observe(std::slice::from_ref(&n), &gens, t1, |_| String::new()));
        assert!(
            !book.observe(std::slice::from_ref(&n), &gens, t1 + wait, |_| String::new(
            ))
        );
        assert_eq!(book.labels((40, 1)).daemon, "");
        // Unmounted while it waited (it lived a moment): named with what
        // its listing said, and retiring.
        let o = mount(3, 41, "/mnt/z", "fuse.fusetrace");
        let gens = HashMap::from([(39, 1), (40, 1), (41, 1)]);
        let all = [m.clone(), n.clone(), o];
        assert!(book.observe(&all, &gens, t1, |_| String::new()));
        assert!(!book.observe(&all[..2], &gens, t1, |_| String::new()));
        let z = book.labels((41, 1));
        assert_eq!((z.mountpoint.as_str(), z.daemon.as_str()), ("/mnt/z", ""));
        assert_eq!(book.retire(t1 + Duration::from_secs(60)), vec![(41, 1)]);
    }

    #[test]
    fn the_daemon_is_the_holder_naming_the_mount_point_else_the_subtype() {
        let holders = vec![
            Holder {
                pid: 10,
                comm: "sshfs".into(),
                args: vec!["/usr/bin/sshfs".into(), "/home/u/remote".into()],
                other_namespace: false,
                connections: Vec::new(),
            },
            Holder {
                pid: 11,
                comm: "bindfs".into(),
                args: vec!["/src".into(), "/mnt/x/".into()],
                other_namespace: false,
                connections: Vec::new(),
            },
        ];
        let x = mount(1, 1, "/mnt/x", "fuse.bindfs");
        assert_eq!(pick_daemon(&x, &holders), "bindfs");
        let s = mount(2, 2, "/elsewhere", "fuse.sshfs");
        assert_eq!(pick_daemon(&s, &holders), "sshfs");
        let none = mount(3, 3, "/nowhere", "fuse");
        assert_eq!(pick_daemon(&none, &holders), "");
    }
}
