//! Names FUSE connections by their mount points.
//!
//! The tracepoints' `connection` is the superblock's `dev_t`, which is the
//! `major:minor` column of `/proc/self/mountinfo`.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::kernel::layout::{major_minor, parse_major_minor};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// mountinfo's mount id: a new mount gets a new one (0: unknown).
    pub mount_id: u32,
    /// Kernel `dev_t` of the superblock: for FUSE, the connection id.
    pub connection: u32,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

impl MountEntry {
    pub fn is_fuse(&self) -> bool {
        // virtio-fs is FUSE over a virtqueue: same connections, same requests.
        self.fs_type == "fuse"
            || self.fs_type == "fuseblk"
            || self.fs_type == "virtiofs"
            || self.fs_type.starts_with("fuse.")
    }
}

/// Parses mountinfo text, every mount in mount order.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source superoptions
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mount_id = fields.first()?.parse().ok()?;
            let connection = parse_major_minor(fields.get(2)?)?;
            let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.get(4)?)));
            let mut right = right.split(' ');
            let fs_type = right.next()?.to_string();
            let source =
                String::from_utf8_lossy(&unescape(right.next().unwrap_or(""))).into_owned();
            Some(MountEntry {
                mount_id,
                connection,
                mount_point,
                fs_type,
                source,
            })
        })
        .collect()
}

/// The FUSE mounts of mountinfo text.
pub fn fuse_mounts(text: &str) -> Vec<MountEntry> {
    parse_mountinfo(text)
        .into_iter()
        .filter(MountEntry::is_fuse)
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Connection id to mount, refreshed when an unknown connection shows up.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    mounts: HashMap<u32, MountEntry>,
    /// A recording's table: never refreshed from this machine's mounts.
    frozen: bool,
}

impl ConnectionTable {
    pub fn load() -> ConnectionTable {
        ConnectionTable::load_with(&[])
    }

    /// This machine's FUSE mounts, and `named` (`--mount`'s, as found when
    /// the command started): a named mount unmounted before a run reads the
    /// table keeps its name.
    pub fn load_with(named: &[MountEntry]) -> ConnectionTable {
        let mut t = ConnectionTable::default();
        for m in named {
            t.insert(m.clone());
        }
        t.refresh();
        t
    }

    /// A table of a recording's mounts only; unknown connections keep
    /// numeric names instead of picking up this machine's mounts.
    pub fn frozen(mounts: impl IntoIterator<Item = MountEntry>) -> ConnectionTable {
        ConnectionTable {
            mounts: mounts.into_iter().map(|m| (m.connection, m)).collect(),
            frozen: true,
        }
    }

    /// Adds or replaces a mount (a recording's later connection record).
    pub fn insert(&mut self, mount: MountEntry) {
        self.mounts.insert(mount.connection, mount);
    }

    pub fn get(&self, connection: u32) -> Option<&MountEntry> {
        self.mounts.get(&connection)
    }

    pub fn refresh(&mut self) {
        if self.frozen {
            return;
        }
        if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
            // Keep names of mounts that have gone: their last requests still
            // need a name.
            for m in fuse_mounts(&text) {
                self.mounts.insert(m.connection, m);
            }
        }
    }

    /// The mount point of a connection, or `conn MAJ:MIN` when unknown.
    pub fn name(&mut self, connection: u32) -> String {
        if !self.mounts.contains_key(&connection) {
            self.refresh();
        }
        match self.mounts.get(&connection) {
            Some(m) => m.mount_point.display().to_string(),
            None => format!("conn {}", major_minor(connection)),
        }
    }
}

/// The connection id of the FUSE mount at `path`, or a clear error.
pub fn connection_of(path: &Path) -> Result<u32> {
    Ok(fuse_mount_at(path)?.connection)
}

/// The FUSE mount holding `path` (its connection and mount point), or a
/// clear error.
pub fn fuse_mount_at(path: &Path) -> Result<MountEntry> {
    let (major, minor) = device_of(path)?;
    let connection = (major << 20) | minor;
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    fuse_mounts(&text)
        .into_iter()
        .find(|m| m.connection == connection)
        .with_context(|| format!("{} is not on a FUSE file system", path.display()))
}

/// The device (major, minor) of the file system holding `path`, without
/// asking that file system: statx with `AT_STATX_DONT_SYNC` takes FUSE's
/// cached attributes, so naming a mount sends its daemon no GETATTR (a
/// tracer must not add requests to what it traces; with `attr_timeout=0`
/// a plain stat would). It asks for no field at all: the device is
/// always given, and FUSE then answers even a user the mount does not
/// allow (no `allow_other`), as a tracer run by another user than the
/// mount's is.
fn device_of(path: &Path) -> Result<(u32, u32)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} holds a NUL byte", path.display()))?;
    // SAFETY: all-zero is a valid statx buffer.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer of the right type.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            0,
            &mut buf,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot stat {}", path.display()));
    }
    Ok((buf.stx_dev_major, buf.stx_dev_minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
95 30 0:52 / /tmp/my\\040mnt rw,nosuid,nodev,relatime shared:50 - fuse.bindfs /tmp/src rw,user_id=0
96 30 0:53 / /mnt/x rw - fuse /dev/fuse rw
97 30 8:1 / /boot rw - ext4 /dev/sda1 rw";

    #[test]
    fn keeps_fuse_mounts_with_kernel_dev_numbers() {
        assert_eq!(parse_mountinfo(SAMPLE).len(), 4);
        let m = fuse_mounts(SAMPLE);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].connection, 52);
        assert_eq!(m[0].mount_point, Path::new("/tmp/my mnt"));
        assert_eq!(m[0].fs_type, "fuse.bindfs");
        assert_eq!(m[1].connection, 53);
    }

    #[test]
    fn virtio_fs_mounts_are_fuse_connections() {
        let guest = "24 1 0:22 / / ro,relatime - virtiofs ROOTFS ro";
        let m = fuse_mounts(guest);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].connection, 22);
        assert_eq!(m[0].mount_point, Path::new("/"));
    }

    #[test]
    fn unknown_connection_gets_a_numeric_name() {
        let mut t = ConnectionTable::default();
        assert_eq!(t.name((300 << 20) | 7), "conn 300:7");
    }
}
