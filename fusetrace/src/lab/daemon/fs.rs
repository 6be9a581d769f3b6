//! The in-memory file system tree behind the reference daemon.
//!
//! Everything lives in one `Mutex<Tree>`; operations are short (no sleeping
//! under the lock: injected latency happens before an operation starts).
//! Every method returns `Err(errno)` on failure so that the FUSE glue can
//! answer `reply.error(errno)`.
//!
//! Inode lifetime follows the FUSE rules: an inode number stays valid while
//! the file is linked somewhere, while the kernel still holds lookup
//! references on it (each successful entry reply adds one, FORGET removes
//! them) or while it is open; only then is it freed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use fuser::{FileAttr, FileType, TimeOrNow};
use libc::c_int;

pub(crate) type Res<T> = Result<T, c_int>;

pub(crate) const ROOT: u64 = fuser::FUSE_ROOT_ID;
const BLOCK: u32 = 4096;
/// Advertised capacity (statfs): 64 GiB and 16 Mi inodes.
const TOTAL_BLOCKS: u64 = 16 << 20;
const TOTAL_FILES: u64 = 16 << 20;
const NAME_MAX: usize = 255;

struct Node {
    attr: FileAttr,
    /// Regular files: contents.
    data: Vec<u8>,
    /// Directories: entries by name.
    children: BTreeMap<OsString, u64>,
    /// Directories: the parent directory (root: itself).
    parent: u64,
    /// Symbolic links: the target.
    target: PathBuf,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Lookup references the kernel holds (entries replied minus forgotten).
    lookups: u64,
    /// Open file/directory handles.
    open: u64,
}

impl Node {
    fn new(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32, rdev: u32) -> Node {
        let now = SystemTime::now();
        Node {
            attr: FileAttr {
                ino,
                size: if kind == FileType::Directory {
                    BLOCK as u64
                } else {
                    0
                },
                blocks: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                kind,
                perm,
                nlink: if kind == FileType::Directory { 2 } else { 1 },
                uid,
                gid,
                rdev,
                blksize: BLOCK,
                flags: 0,
            },
            data: Vec::new(),
            children: BTreeMap::new(),
            parent: ROOT,
            target: PathBuf::new(),
            xattrs: BTreeMap::new(),
            lookups: 0,
            open: 0,
        }
    }

    fn is_dir(&self) -> bool {
        self.attr.kind == FileType::Directory
    }

    fn set_size(&mut self, size: u64) -> Res<()> {
        let size = usize::try_from(size).map_err(|_| libc::EFBIG)?;
        self.data.resize(size, 0);
        self.sync_size();
        Ok(())
    }

    fn sync_size(&mut self) {
        self.attr.size = self.data.len() as u64;
        self.attr.blocks = self.attr.size.div_ceil(512);
    }
}

/// A directory listing captured at OPENDIR, so that READDIR continuations
/// see a consistent list while the directory changes.
struct DirHandle {
    entries: Vec<(u64, FileType, OsString)>,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    dirs: HashMap<u64, DirHandle>,
    next_ino: u64,
    next_fh: u64,
}

/// Who creates a node: the caller's uid/gid (from the FUSE request header).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// `struct statfs` answers.
pub(crate) struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// What SETATTR may change.
#[derive(Default)]
pub(crate) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub ctime: Option<SystemTime>,
}

pub(crate) struct MemFs {
    tree: Mutex<Tree>,
}

fn resolve(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn check_name(name: &OsStr) -> Res<()> {
    if name.len() > NAME_MAX {
        Err(libc::ENAMETOOLONG)
    } else if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
        Err(libc::EINVAL)
    } else {
        Ok(())
    }
}

fn kind_of_mode(mode: u32) -> Res<FileType> {
    Ok(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileType::RegularFile,
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => return Err(libc::EINVAL),
    })
}

impl Tree {
    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Res<&Node> {
        let n = self.node(ino)?;
        if n.is_dir() {
            Ok(n)
        } else {
            Err(libc::ENOTDIR)
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.dir(parent)?
            .children
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// Frees an inode nobody can reach any more.
    fn maybe_reap(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(n) = self.nodes.get(&ino)
            && n.attr.nlink == 0
            && n.lookups == 0
            && n.open == 0
        {
            self.nodes.remove(&ino);
        }
    }

    fn touch_dir(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            n.attr.mtime = now;
            n.attr.ctime = now;
        }
    }

    /// Links a new node under `parent/name` and returns its attributes, with
    /// one lookup reference taken for the entry reply.
    fn insert(&mut self, parent: u64, name: &OsStr, mut node: Node) -> Res<FileAttr> {
        check_name(name)?;
        if self.dir(parent)?.children.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        node.attr.ino = ino;
        node.parent = parent;
        node.lookups = 1;
        let is_dir = node.is_dir();
        let attr = node.attr;
        self.nodes.insert(ino, node);
        let p = self.node_mut(parent)?;
        p.children.insert(name.to_owned(), ino);
        if is_dir {
            p.attr.nlink += 1;
        }
        self.touch_dir(parent);
        Ok(attr)
    }

    /// Drops one link to `ino` (the entry was removed or replaced).
    fn drop_link(&mut self, parent: u64, ino: u64) {
        let mut was_dir = false;
        if let Some(n) = self.nodes.get_mut(&ino) {
            if n.is_dir() {
                was_dir = true;
                n.attr.nlink = 0;
            } else {
                n.attr.nlink = n.attr.nlink.saturating_sub(1);
            }
            n.attr.ctime = SystemTime::now();
        }
        if was_dir && let Some(p) = self.nodes.get_mut(&parent) {
            p.attr.nlink = p.attr.nlink.saturating_sub(1);
        }
        self.maybe_reap(ino);
    }
}

impl MemFs {
    pub(crate) fn new() -> MemFs {
        let uid = unsafe { libc::geteuid() };
        let gid = unsafe { libc::getegid() };
        let mut root = Node::new(ROOT, FileType::Directory, 0o755, uid, gid, 0);
        root.parent = ROOT;
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, root);
        MemFs {
            tree: Mutex::new(Tree {
                nodes,
                dirs: HashMap::new(),
                next_ino: ROOT + 1,
                next_fh: 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        // A panic while holding the lock cannot leave the tree half-updated in
        // a way that matters for a test file system: keep serving.
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        let mut t = self.lock();
        if name.len() > NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        let ino = t.child(parent, name)?;
        let n = t.node_mut(ino)?;
        n.lookups += 1;
        Ok(n.attr)
    }

    pub(crate) fn forget(&self, ino: u64, nlookup: u64) {
        let mut t = self.lock();
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(nlookup);
            t.maybe_reap(ino);
        }
    }

    pub(crate) fn getattr(&self, ino: u64) -> Res<FileAttr> {
        Ok(self.lock().node(ino)?.attr)
    }

    pub(crate) fn setattr(&self, ino: u64, s: SetAttr) -> Res<FileAttr> {
        let mut t = self.lock();
        let n = t.node_mut(ino)?;
        let now = SystemTime::now();
        if let Some(size) = s.size {
            match n.attr.kind {
                FileType::RegularFile => n.set_size(size)?,
                FileType::Directory => return Err(libc::EISDIR),
                _ => return Err(libc::EINVAL),
            }
            n.attr.mtime = now;
        }
        if let Some(mode) = s.mode {
            n.attr.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = s.uid {
            n.attr.uid = uid;
        }
        if let Some(gid) = s.gid {
            n.attr.gid = gid;
        }
        if let Some(a) = s.atime {
            n.attr.atime = resolve(a);
        }
        if let Some(m) = s.mtime {
            n.attr.mtime = resolve(m);
        }
        n.attr.ctime = s.ctime.unwrap_or(now);
        Ok(n.attr)
    }

    pub(crate) fn readlink(&self, ino: u64) -> Res<Vec<u8>> {
        let t = self.lock();
        let n = t.node(ino)?;
        if n.attr.kind != FileType::Symlink {
            return Err(libc::EINVAL);
        }
        Ok(n.target.as_os_str().as_bytes().to_vec())
    }

    pub(crate) fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        owner: Owner,
    ) -> Res<FileAttr> {
        let kind = kind_of_mode(mode)?;
        if kind == FileType::Directory || kind == FileType::Symlink {
            return Err(libc::EINVAL);
        }
        let perm = (mode & !umask & 0o7777) as u16;
        let node = Node::new(0, kind, perm, owner.uid, owner.gid, rdev);
        self.lock().insert(parent, name, node)
    }

    pub(crate) fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        owner: Owner,
    ) -> Res<FileAttr> {
        let perm = (mode & !umask & 0o7777) as u16;
        let node = Node::new(0, FileType::Directory, perm, owner.uid, owner.gid, 0);
        self.lock().insert(parent, name, node)
    }

    pub(crate) fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        owner: Owner,
    ) -> Res<FileAttr> {
        let mut node = Node::new(0, FileType::Symlink, 0o777, owner.uid, owner.gid, 0);
        node.target = target.to_owned();
        node.attr.size = target.as_os_str().len() as u64;
        self.lock().insert(parent, name, node)
    }

    pub(crate) fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Res<FileAttr> {
        check_name(newname)?;
        let mut t = self.lock();
        if t.node(ino)?.is_dir() {
            return Err(libc::EPERM);
        }
        if t.dir(newparent)?.children.contains_key(newname) {
            return Err(libc::EEXIST);
        }
        t.node_mut(newparent)?
            .children
            .insert(newname.to_owned(), ino);
        t.touch_dir(newparent);
        let n = t.node_mut(ino)?;
        n.attr.nlink += 1;
        n.attr.ctime = SystemTime::now();
        n.lookups += 1;
        Ok(n.attr)
    }

    pub(crate) fn unlink(&self, parent: u64, name: &OsStr) -> Res<()> {
        let mut t = self.lock();
        let ino = t.child(parent, name)?;
        if t.node(ino)?.is_dir() {
            return Err(libc::EISDIR);
        }
        t.node_mut(parent)?.children.remove(name);
        t.touch_dir(parent);
        t.drop_link(parent, ino);
        Ok(())
    }

    pub(crate) fn rmdir(&self, parent: u64, name: &OsStr) -> Res<()> {
        let mut t = self.lock();
        let ino = t.child(parent, name)?;
        let n = t.node(ino)?;
        if !n.is_dir() {
            return Err(libc::ENOTDIR);
        }
        if !n.children.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        t.node_mut(parent)?.children.remove(name);
        t.touch_dir(parent);
        t.drop_link(parent, ino);
        Ok(())
    }

    pub(crate) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        check_name(newname)?;
        let mut t = self.lock();
        let src = t.child(parent, name)?;
        let dst = match t.child(newparent, newname) {
            Ok(ino) => Some(ino),
            Err(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        let src_dir = t.node(src)?.is_dir();
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(libc::EINVAL);
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(libc::ENOENT)?;
            let dst_dir = t.node(dst)?.is_dir();
            t.node_mut(parent)?.children.insert(name.to_owned(), dst);
            t.node_mut(newparent)?
                .children
                .insert(newname.to_owned(), src);
            if parent != newparent {
                if src_dir {
                    t.node_mut(src)?.parent = newparent;
                }
                if dst_dir {
                    t.node_mut(dst)?.parent = parent;
                }
                let delta = i64::from(dst_dir) - i64::from(src_dir);
                let p = t.node_mut(parent)?;
                p.attr.nlink = (i64::from(p.attr.nlink) + delta) as u32;
                let np = t.node_mut(newparent)?;
                np.attr.nlink = (i64::from(np.attr.nlink) - delta) as u32;
            }
            t.touch_dir(parent);
            t.touch_dir(newparent);
            return Ok(());
        }
        if let Some(dst) = dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            if dst == src {
                return Ok(());
            }
            let d = t.node(dst)?;
            match (src_dir, d.is_dir()) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !d.children.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            t.node_mut(newparent)?.children.remove(newname);
            t.drop_link(newparent, dst);
        }
        t.node_mut(parent)?.children.remove(name);
        t.node_mut(newparent)?
            .children
            .insert(newname.to_owned(), src);
        if src_dir && parent != newparent {
            t.node_mut(src)?.parent = newparent;
            let p = t.node_mut(parent)?;
            p.attr.nlink = p.attr.nlink.saturating_sub(1);
            t.node_mut(newparent)?.attr.nlink += 1;
        }
        t.node_mut(src)?.attr.ctime = SystemTime::now();
        t.touch_dir(parent);
        t.touch_dir(newparent);
        Ok(())
    }

    /// OPEN: counts the handle so an unlinked file survives until RELEASE.
    pub(crate) fn open(&self, ino: u64, flags: i32) -> Res<u64> {
        let mut t = self.lock();
        let fh = t.next_fh;
        t.next_fh += 1;
        let n = t.node_mut(ino)?;
        if n.is_dir() && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(libc::EISDIR);
        }
        n.open += 1;
        if flags & libc::O_TRUNC != 0 && n.attr.kind == FileType::RegularFile {
            n.set_size(0)?;
            let now = SystemTime::now();
            n.attr.mtime = now;
            n.attr.ctime = now;
        }
        Ok(fh)
    }

    pub(crate) fn release(&self, ino: u64) {
        let mut t = self.lock();
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
            t.maybe_reap(ino);
        }
    }

    pub(crate) fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        owner: Owner,
    ) -> Res<(FileAttr, u64)> {
        let kind = kind_of_mode(mode)?;
        if kind != FileType::RegularFile {
            return Err(libc::EINVAL);
        }
        let perm = (mode & !umask & 0o7777) as u16;
        let mut node = Node::new(0, kind, perm, owner.uid, owner.gid, 0);
        node.open = 1;
        let mut t = self.lock();
        let attr = t.insert(parent, name, node)?;
        let fh = t.next_fh;
        t.next_fh += 1;
        Ok((attr, fh))
    }

    pub(crate) fn read(&self, ino: u64, offset: i64, size: u32) -> Res<Vec<u8>> {
        let mut t = self.lock();
        let n = t.node_mut(ino)?;
        if n.is_dir() {
            return Err(libc::EISDIR);
        }
        let start = usize::try_from(offset).map_err(|_| libc::EINVAL)?;
        let start = start.min(n.data.len());
        let end = start.saturating_add(size as usize).min(n.data.len());
        n.attr.atime = SystemTime::now();
        Ok(n.data[start..end].to_vec())
    }

    pub(crate) fn write(&self, ino: u64, offset: i64, data: &[u8]) -> Res<u32> {
        let mut t = self.lock();
        let n = t.node_mut(ino)?;
        if n.is_dir() {
            return Err(libc::EISDIR);
        }
        let start = usize::try_from(offset).map_err(|_| libc::EINVAL)?;
        let end = start.checked_add(data.len()).ok_or(libc::EFBIG)?;
        if end > n.data.len() {
            n.data.resize(end, 0);
        }
        n.data[start..end].copy_from_slice(data);
        n.sync_size();
        let now = SystemTime::now();
        n.attr.mtime = now;
        n.attr.ctime = now;
        Ok(data.len() as u32)
    }

    pub(crate) fn opendir(&self, ino: u64) -> Res<u64> {
        let mut t = self.lock();
        let n = t.dir(ino)?;
        let parent = n.parent;
        let mut entries = Vec::with_capacity(n.children.len() + 2);
        entries.push((ino, FileType::Directory, OsString::from(".")));
        entries.push((parent, FileType::Directory, OsString::from("..")));
        for (name, child) in &n.children {
            let kind = t
                .nodes
                .get(child)
                .map_or(FileType::RegularFile, |c| c.attr.kind);
            entries.push((*child, kind, name.clone()));
        }
        let fh = t.next_fh;
        t.next_fh += 1;
        t.dirs.insert(fh, DirHandle { entries });
        t.node_mut(ino)?.open += 1;
        Ok(fh)
    }

    /// The listing of handle `fh` from `offset` on: (ino, next offset, kind, name).
    pub(crate) fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: i64,
    ) -> Res<Vec<(u64, i64, FileType, OsString)>> {
        let t = self.lock();
        let start = usize::try_from(offset).map_err(|_| libc::EINVAL)?;
        let list: Vec<_> = match t.dirs.get(&fh) {
            Some(h) => h.entries.iter().skip(start).cloned().collect(),
            None => {
                // No handle (should not happen): list the live directory.
                let n = t.dir(ino)?;
                let mut v = vec![
                    (ino, FileType::Directory, OsString::from(".")),
                    (n.parent, FileType::Directory, OsString::from("..")),
                ];
                for (name, child) in &n.children {
                    let kind = t
                        .nodes
                        .get(child)
                        .map_or(FileType::RegularFile, |c| c.attr.kind);
                    v.push((*child, kind, name.clone()));
                }
                v.into_iter().skip(start).collect()
            }
        };
        Ok(list
            .into_iter()
            .enumerate()
            .map(|(i, (ino, kind, name))| (ino, (start + i + 1) as i64, kind, name))
            .collect())
    }

    /// READDIRPLUS: like `readdir` but with attributes; every entry except
    /// `.` and `..` takes a lookup reference (the kernel instantiates it).
    pub(crate) fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: i64,
    ) -> Res<Vec<(u64, i64, FileAttr, OsString)>> {
        let list = self.readdir(ino, fh, offset)?;
        let t = self.lock();
        Ok(list
            .into_iter()
            .filter_map(|(ino, off, _, name)| t.nodes.get(&ino).map(|n| (ino, off, n.attr, name)))
            .collect())
    }

    /// Takes the lookup reference for an entry READDIRPLUS actually replied.
    pub(crate) fn add_lookup(&self, ino: u64) {
        if let Some(n) = self.lock().nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    pub(crate) fn releasedir(&self, ino: u64, fh: u64) {
        let mut t = self.lock();
        t.dirs.remove(&fh);
        if let Some(n) = t.nodes.get_mut(&ino) {
            n.open = n.open.saturating_sub(1);
            t.maybe_reap(ino);
        }
    }

    pub(crate) fn exists(&self, ino: u64) -> Res<()> {
        self.lock().node(ino).map(|_| ())
    }

    pub(crate) fn statfs(&self) -> StatFs {
        let t = self.lock();
        let used_blocks: u64 = t
            .nodes
            .values()
            .map(|n| (n.data.len() as u64).div_ceil(BLOCK as u64))
            .sum();
        let files = t.nodes.len() as u64;
        StatFs {
            blocks: TOTAL_BLOCKS,
            bfree: TOTAL_BLOCKS.saturating_sub(used_blocks),
            files: TOTAL_FILES,
            ffree: TOTAL_FILES.saturating_sub(files),
            bsize: BLOCK,
            namelen: NAME_MAX as u32,
        }
    }

    pub(crate) fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        let mut t = self.lock();
        let n = t.node_mut(ino)?;
        let exists = n.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(libc::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(libc::ENODATA);
        }
        n.xattrs.insert(name.to_owned(), value.to_vec());
        n.attr.ctime = SystemTime::now();
        Ok(())
    }

    pub(crate) fn getxattr(&self, ino: u64, name: &OsStr) -> Res<Vec<u8>> {
        let t = self.lock();
        t.node(ino)?.xattrs.get(name).cloned().ok_or(libc::ENODATA)
    }

    /// The NUL-separated list of attribute names.
    pub(crate) fn listxattr(&self, ino: u64) -> Res<Vec<u8>> {
        let t = self.lock();
        let mut out = Vec::new();
        for name in t.node(ino)?.xattrs.keys() {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub(crate) fn removexattr(&self, ino: u64, name: &OsStr) -> Res<()> {
        let mut t = self.lock();
        let n = t.node_mut(ino)?;
        n.xattrs.remove(name).ok_or(libc::ENODATA)?;
        n.attr.ctime = SystemTime::now();
        Ok(())
    }

    /// FALLOCATE: plain allocation extends the file; KEEP_SIZE is a no-op;
    /// PUNCH_HOLE zeroes the range.
    pub(crate) fn fallocate(&self, ino: u64, offset: i64, length: i64, mode: i32) -> Res<()> {
        let mut t = self.lock();
        let n = t.node_mut(ino)?;
        if n.attr.kind != FileType::RegularFile {
            return Err(libc::ENODEV);
        }
        if offset < 0 || length <= 0 {
            return Err(libc::EINVAL);
        }
        let end = (offset as u64)
            .checked_add(length as u64)
            .ok_or(libc::EFBIG)?;
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match mode {
            0 => {
                if end > n.attr.size {
                    n.set_size(end)?;
                }
            }
            KEEP => {}
            PUNCH => {
                let len = n.data.len() as u64;
                let (s, e) = ((offset as u64).min(len) as usize, end.min(len) as usize);
                n.data[s..e].fill(0);
            }
            _ => return Err(libc::EOPNOTSUPP),
        }
        let now = SystemTime::now();
        n.attr.mtime = now;
        n.attr.ctime = now;
        Ok(())
    }

    /// LSEEK: only SEEK_DATA / SEEK_HOLE reach the file system (the kernel
    /// answers the others itself). The file is all data.
    pub(crate) fn lseek(&self, ino: u64, offset: i64, whence: i32) -> Res<i64> {
        let t = self.lock();
        let size = t.node(ino)?.attr.size as i64;
        match whence {
            libc::SEEK_DATA if offset < size => Ok(offset.max(0)),
            libc::SEEK_HOLE if offset < size => Ok(size),
            libc::SEEK_DATA | libc::SEEK_HOLE => Err(libc::ENXIO),
            libc::SEEK_SET => Ok(offset),
            libc::SEEK_END => Ok(size + offset),
            _ => Err(libc::EINVAL),
        }
    }

    pub(crate) fn copy_file_range(
        &self,
        ino_in: u64,
        offset_in: i64,
        ino_out: u64,
        offset_out: i64,
        len: u64,
    ) -> Res<u32> {
        let data = self.read(ino_in, offset_in, len.min(u32::MAX as u64) as u32)?;
        self.write(ino_out, offset_out, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Owner = Owner { uid: 0, gid: 0 };

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn create_write_read_unlink() {
        let fs = MemFs::new();
        let (attr, fh) = fs.create(ROOT, os("a"), 0o100644, 0o022, ME).unwrap();
        assert!(fh > 0);
        assert_eq!(attr.perm, 0o644);
        assert_eq!(fs.write(attr.ino, 0, b"hello").unwrap(), 5);
        assert_eq!(fs.write(attr.ino, 10, b"!").unwrap(), 1);
        assert_eq!(fs.getattr(attr.ino).unwrap().size, 11);
        assert_eq!(fs.read(attr.ino, 0, 100).unwrap(), b"hello\0\0\0\0\0!");
        assert_eq!(fs.read(attr.ino, 100, 10).unwrap(), b"");
        assert_eq!(fs.lookup(ROOT, os("a")).unwrap().ino, attr.ino);
        fs.unlink(ROOT, os("a")).unwrap();
        assert_eq!(fs.lookup(ROOT, os("a")).unwrap_err(), libc::ENOENT);
        // Still open and referenced: the inode survives until release + forget.
        assert!(fs.getattr(attr.ino).is_ok());
        fs.release(attr.ino);
        assert!(fs.getattr(attr.ino).is_ok());
        fs.forget(attr.ino, 2);
        assert_eq!(fs.getattr(attr.ino).unwrap_err(), libc::ENOENT);
    }

    #[test]
    fn directories_and_rename() {
        let fs = MemFs::new();
        let d = fs.mkdir(ROOT, os("d"), 0o755, 0, ME).unwrap();
        assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
        let e = fs.mkdir(ROOT, os("e"), 0o755, 0, ME).unwrap();
        let f = fs
            .mknod(d.ino, os("f"), libc::S_IFREG | 0o600, 0, 0, ME)
            .unwrap();
        assert_eq!(fs.rmdir(ROOT, os("d")).unwrap_err(), libc::ENOTEMPTY);
        assert_eq!(
            fs.rename(d.ino, os("f"), ROOT, os("e"), 0).unwrap_err(),
            libc::EISDIR
        );
        fs.rename(d.ino, os("f"), e.ino, os("g"), 0).unwrap();
        assert_eq!(fs.lookup(e.ino, os("g")).unwrap().ino, f.ino);
        assert_eq!(
            fs.rename(e.ino, os("g"), ROOT, os("d"), libc::RENAME_NOREPLACE)
                .unwrap_err(),
            libc::EEXIST
        );
        fs.rename(ROOT, os("e"), ROOT, os("d"), libc::RENAME_EXCHANGE)
            .unwrap();
        assert_eq!(fs.lookup(ROOT, os("d")).unwrap().ino, e.ino);
        fs.rmdir(ROOT, os("e")).unwrap();
        assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
        let list = fs.readdir(ROOT, 0, 0).unwrap();
        let names: Vec<_> = list
            .iter()
            .map(|e| e.3.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, [".", "..", "d"]);
        assert_eq!(fs.readdir(ROOT, 0, 2).unwrap().len(), 1);
        // Moving a directory updates both parents' link counts.
        let sub = fs.mkdir(ROOT, os("sub"), 0o755, 0, ME).unwrap();
        fs.rename(ROOT, os("sub"), e.ino, os("sub"), 0).unwrap();
        assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
        assert_eq!(fs.getattr(e.ino).unwrap().nlink, 3);
        assert_eq!(fs.lookup(e.ino, os("sub")).unwrap().ino, sub.ino);
    }

    #[test]
    fn setattr_links_xattrs() {
        let fs = MemFs::new();
        let (a, _) = fs.create(ROOT, os("a"), 0o100644, 0, ME).unwrap();
        fs.write(a.ino, 0, b"0123456789").unwrap();
        let s = SetAttr {
            size: Some(4),
            mode: Some(0o100600),
            ..SetAttr::default()
        };
        let attr = fs.setattr(a.ino, s).unwrap();
        assert_eq!((attr.size, attr.perm), (4, 0o600));
        let l = fs.link(a.ino, ROOT, os("b")).unwrap();
        assert_eq!(l.nlink, 2);
        let s = fs.symlink(ROOT, os("s"), Path::new("a"), ME).unwrap();
        assert_eq!(fs.readlink(s.ino).unwrap(), b"a");
        fs.setxattr(a.ino, os("user.x"), b"1", 0).unwrap();
        assert_eq!(
            fs.setxattr(a.ino, os("user.x"), b"2", libc::XATTR_CREATE)
                .unwrap_err(),
            libc::EEXIST
        );
        assert_eq!(fs.getxattr(a.ino, os("user.x")).unwrap(), b"1");
        assert_eq!(fs.listxattr(a.ino).unwrap(), b"user.x\0");
        fs.removexattr(a.ino, os("user.x")).unwrap();
        assert_eq!(fs.getxattr(a.ino, os("user.x")).unwrap_err(), libc::ENODATA);
        fs.fallocate(a.ino, 0, 100, 0).unwrap();
        assert_eq!(fs.getattr(a.ino).unwrap().size, 100);
        assert_eq!(fs.lseek(a.ino, 5, libc::SEEK_HOLE).unwrap(), 100);
        assert_eq!(
            fs.lseek(a.ino, 200, libc::SEEK_DATA).unwrap_err(),
            libc::ENXIO
        );
        assert!(fs.statfs().bfree < TOTAL_BLOCKS);
        assert_eq!(
            fs.mkdir(ROOT, os("a"), 0o755, 0, ME).unwrap_err(),
            libc::EEXIST
        );
        assert_eq!(
            fs.mkdir(ROOT, os("x/y"), 0o755, 0, ME).unwrap_err(),
            libc::EINVAL
        );
    }
}
