//! The `fuser::Filesystem` glue: counts every request that reaches the trait,
//! then services it (after the injected latency) inline or on a worker pool.
//!
//! # What can be counted
//!
//! fuser 0.15.1 reads each request on its session thread and calls one trait
//! method per request, except for these, which it answers (or drops) itself:
//!
//! * `INTERRUPT` (36): fuser replies ENOSYS without calling the trait (the
//!   kernel then stops sending interrupts on this connection). Not counted.
//! * `NOTIFY_REPLY` (41) and `CUSE_INIT` (4096): replied ENOSYS by fuser.
//!   Not counted (we never send retrieve notifications; this is not CUSE).
//! * `IOCTL` (39) with `FUSE_IOCTL_UNRESTRICTED` (only CUSE sends it):
//!   replied ENOSYS by fuser. Not counted; restricted ioctls are counted.
//! * Opcodes fuser 0.15.1 does not know (`SETUPMAPPING` 48, `REMOVEMAPPING`
//!   49, `SYNCFS` 50, `TMPFILE` 51, `STATX` 52 and anything newer): fuser
//!   fails to parse them and replies ENOSYS. Not counted. For this mount
//!   type the kernel only sends `TMPFILE` (open with O_TMPFILE, once: ENOSYS
//!   disables it) and `STATX` (a statx() asking for more than the basic
//!   fields, e.g. btime, once: ENOSYS makes it fall back to GETATTR).
//!   SYNCFS and the mapping opcodes are only used by virtiofs.
//! * Requests arriving before INIT or after DESTROY, and requests whose
//!   arguments are truncated, are answered EIO/ENOSYS by fuser. Not counted.
//! * `DESTROY` (38): fuser calls `destroy()` both for a DESTROY request and
//!   when the session is dropped; we count it only while the session loop
//!   is still running, i.e. for a real request. The kernel sends DESTROY
//!   only to `fuseblk` (and virtiofs) mounts, so for this daemon it is
//!   normally 0.
//!
//! `FORGET` and `BATCH_FORGET` have no reply; one BATCH_FORGET is counted
//! per request (not per inode in the batch). `INIT` is counted in `init()`.
//! `RENAME` and `RENAME2` both arrive in `rename()`; the kernel sends RENAME2
//! only for non-zero flags (and RENAME always with flags 0), so the flags
//! tell them apart. `SETLK` and `SETLKW` both
//! arrive in `setlk()`, told apart by its `sleep` argument.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Filesystem, KernelConfig, PollHandle, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, consts,
    fuse_forget_one,
};
use libc::c_int;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use super::fs::{MemFs, Owner, SetAttr};

/// Kernel opcode numbers (`enum fuse_opcode`).
pub(crate) use fusetrace_common::opcode as op;

/// Requests of this opcode are answered by fuser (or, over io_uring, by
/// `wire::serve`) without being counted: see the list above.
pub fn answered_uncounted(opcode: u32) -> bool {
    matches!(opcode, op::INTERRUPT | op::NOTIFY_REPLY | op::CUSE_INIT) || opcode >= op::SETUPMAPPING
}

/// Size of the per-opcode tables (counts, latency); every opcode fuser can
/// hand to the trait is below it.
pub(crate) const OPCODE_SLOTS: usize = 64;

/// Where the mount is in its life, shared with `MountedDaemon`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Mounted, INIT not answered yet.
    Starting,
    /// INIT answered: the mount is usable.
    Ready,
    /// INIT refused by us (message for the user).
    Failed(String),
    /// The session loop has returned (unmounted).
    Ended,
}

#[derive(Debug)]
pub(crate) struct Lifecycle {
    pub phase: Mutex<Phase>,
    pub changed: Condvar,
    /// Set once the session loop has returned (before the session is dropped).
    pub loop_done: AtomicBool,
}

impl Lifecycle {
    pub(crate) fn new() -> Lifecycle {
        Lifecycle {
            phase: Mutex::new(Phase::Starting),
            changed: Condvar::new(),
            loop_done: AtomicBool::new(false),
        }
    }

    pub(crate) fn set(&self, phase: Phase) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        // Ended is final.
        if *p != Phase::Ended {
            *p = phase;
        }
        self.changed.notify_all();
    }

    /// Waits until `done(phase)` or the timeout; returns the phase then.
    pub(crate) fn wait_for(
        &self,
        timeout: Option<Duration>,
        done: impl Fn(&Phase) -> bool,
    ) -> Phase {
        let guard = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let guard = match timeout {
            Some(t) => {
                self.changed
                    .wait_timeout_while(guard, t, |p| !done(p))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self
                .changed
                .wait_while(guard, |p| !done(p))
                .unwrap_or_else(|e| e.into_inner()),
        };
        guard.clone()
    }
}

/// State the workers share.
pub(crate) struct Shared {
    pub fs: MemFs,
    pub counts: ServedCounts,
    pub latency: [Duration; OPCODE_SLOTS],
    /// The error each opcode is answered with instead of being served
    /// (`--errno`; 0: served).
    pub errno: [c_int; OPCODE_SLOTS],
    pub ttl: Duration,
    pub direct_io: bool,
}

impl Shared {
    fn open_flags(&self) -> u32 {
        if self.direct_io {
            consts::FOPEN_DIRECT_IO
        } else {
            0
        }
    }
}

pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// A reply that can be an error: every fuser reply type (`()` for FORGET
/// and BATCH_FORGET, which have none), so that [`Dispatcher::serve`] can
/// answer any opcode's injected error.
pub(crate) trait Refuse {
    fn refuse(self, errno: c_int);
}

impl Refuse for () {
    fn refuse(self, _errno: c_int) {}
}

macro_rules! refuse_with_error {
    ($($reply:ty),*) => {
        $(impl Refuse for $reply {
            fn refuse(self, errno: c_int) {
                self.error(errno);
            }
        })*
    };
}

refuse_with_error!(
    ReplyAttr,
    ReplyBmap,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyIoctl,
    ReplyLock,
    ReplyLseek,
    ReplyOpen,
    ReplyPoll,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// The object fuser's session owns.
pub(crate) struct Dispatcher {
    pub shared: Arc<Shared>,
    /// `None`: serve inline on the session thread (one thread).
    pub pool: Option<Sender<Job>>,
    pub lifecycle: Arc<Lifecycle>,
    pub writeback_cache: bool,
    pub max_write: Option<u32>,
    pub max_background: Option<u16>,
}

fn owner(req: &Request<'_>) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Dispatcher {
    /// Counts the request, then runs `work` after the opcode's latency, or
    /// answers the opcode's injected error instead (`--errno`).
    fn serve<R: Refuse + Send + 'static>(
        &self,
        opcode: u32,
        reply: R,
        work: impl FnOnce(&Shared, R) + Send + 'static,
    ) {
        self.shared.counts.add(opcode);
        let shared = Arc::clone(&self.shared);
        let job = move || {
            let delay = shared.latency[opcode as usize % OPCODE_SLOTS];
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            match shared.errno[opcode as usize % OPCODE_SLOTS] {
                0 => work(&shared, reply),
                e => reply.refuse(e),
            }
        };
        match &self.pool {
            Some(tx) => {
                // The workers only go away with the session: if they are gone
                // anyway, serve here rather than leave the request unanswered.
                if let Err(e) = tx.send(Box::new(job)) {
                    (e.0)();
                }
            }
            None => {
                // A bug in one operation must not end the session; the
                // dropped reply answers EIO.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        }
    }

    fn configure(&self, config: &mut KernelConfig) -> Result<(), String> {
        if self.writeback_cache {
            config
                .add_capabilities(consts::FUSE_WRITEBACK_CACHE)
                .map_err(|_| {
                    "the kernel does not offer FUSE_WRITEBACK_CACHE (--writeback-cache)".to_string()
                })?;
        }
        if let Some(w) = self.max_write {
            config
                .set_max_write(w)
                .map_err(|n| format!("--max-write {w} refused (nearest allowed: {n})"))?;
        }
        if let Some(b) = self.max_background {
            config
                .set_max_background(b)
                .map_err(|n| format!("--max-background {b} refused (nearest allowed: {n})"))?;
        }
        Ok(())
    }
}

fn reply_entry(s: &Shared, reply: ReplyEntry, r: Result<fuser::FileAttr, c_int>) {
    match r {
        Ok(attr) => reply.entry(&s.ttl, &attr, 0),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), c_int>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, c_int>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(libc::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Dispatcher {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), c_int> {
        // Handled inline: fuser needs the KernelConfig answer right away.
        self.shared.counts.add(op::INIT);
        let delay = self.shared.latency[op::INIT as usize];
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match self.configure(config) {
            Ok(()) => {
                // fuser writes the INIT reply right after we return; the kernel
                // holds every other request until it has that reply, so the
                // mount is usable as soon as the waiter wakes up.
                self.lifecycle.set(Phase::Ready);
                Ok(())
            }
            Err(msg) => {
                self.lifecycle.set(Phase::Failed(msg));
                Err(libc::EPROTO)
            }
        }
    }

    fn destroy(&mut self) {
        // Called for a DESTROY request (loop running) and again from the
        // session's Drop (loop done) if no DESTROY came: count only the former.
        if !self.lifecycle.loop_done.load(Ordering::SeqCst) {
            self.shared.counts.add(op::DESTROY);
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.serve(op::LOOKUP, reply, move |s, reply| {
            reply_entry(s, reply, s.fs.lookup(parent, &name))
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.serve(op::FORGET, (), move |s, ()| s.fs.forget(ino, nlookup));
    }

    fn batch_forget(&mut self, _req: &Request<'_>, nodes: &[fuse_forget_one]) {
        let nodes: Vec<(u64, u64)> = nodes.iter().map(|n| (n.nodeid, n.nlookup)).collect();
        self.serve(op::BATCH_FORGET, (), move |s, ()| {
            for (ino, n) in nodes {
                s.fs.forget(ino, n);
            }
        });
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        self.serve(op::GETATTR, reply, move |s, reply| {
            match s.fs.getattr(ino) {
                Ok(attr) => reply.attr(&s.ttl, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ctime,
        };
        self.serve(op::SETATTR, reply, move |s, reply| {
            match s.fs.setattr(ino, set) {
                Ok(attr) => reply.attr(&s.ttl, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.serve(op::READLINK, reply, move |s, reply| {
            match s.fs.readlink(ino) {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (name, who) = (name.to_owned(), owner(req));
        self.serve(op::MKNOD, reply, move |s, reply| {
            reply_entry(s, reply, s.fs.mknod(parent, &name, mode, umask, rdev, who))
        });
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, who) = (name.to_owned(), owner(req));
        self.serve(op::MKDIR, reply, move |s, reply| {
            reply_entry(s, reply, s.fs.mkdir(parent, &name, mode, umask, who))
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.serve(op::UNLINK, reply, move |s, reply| {
            reply_empty(reply, s.fs.unlink(parent, &name))
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.serve(op::RMDIR, reply, move |s, reply| {
            reply_empty(reply, s.fs.rmdir(parent, &name))
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target, who) = (link_name.to_owned(), target.to_owned(), owner(req));
        self.serve(op::SYMLINK, reply, move |s, reply| {
            reply_entry(s, reply, s.fs.symlink(parent, &name, &target, who))
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        // fuser maps both RENAME and RENAME2 here; the kernel only uses RENAME2
        // for non-zero flags (RENAME_NOREPLACE/EXCHANGE/WHITEOUT).
        let opcode = if flags == 0 { op::RENAME } else { op::RENAME2 };
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.serve(opcode, reply, move |s, reply| {
            reply_empty(
                reply,
                s.fs.rename(parent, &name, newparent, &newname, flags),
            )
        });
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_owned();
        self.serve(op::LINK, reply, move |s, reply| {
            reply_entry(s, reply, s.fs.link(ino, newparent, &newname))
        });
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        self.serve(op::OPEN, reply, move |s, reply| {
            match s.fs.open(ino, flags) {
                Ok(fh) => reply.opened(fh, s.open_flags()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        self.serve(op::READ, reply, move |s, reply| {
            match s.fs.read(ino, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        // The request buffer is reused for the next request: copy the data
        // when it is serviced elsewhere.
        if self.pool.is_none() {
            self.shared.counts.add(op::WRITE);
            let delay = self.shared.latency[op::WRITE as usize];
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            if let e @ 1.. = self.shared.errno[op::WRITE as usize] {
                return reply.error(e);
            }
            match self.shared.fs.write(ino, offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
            return;
        }
        let data = data.to_vec();
        self.serve(op::WRITE, reply, move |s, reply| {
            match s.fs.write(ino, offset, &data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        self.serve(op::FLUSH, reply, move |s, reply| {
            reply_empty(reply, s.fs.exists(ino))
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(op::RELEASE, reply, move |s, reply| {
            s.fs.release(ino);
            reply.ok();
        });
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        self.serve(op::FSYNC, reply, move |s, reply| {
            reply_empty(reply, s.fs.exists(ino))
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.serve(op::OPENDIR, reply, move |s, reply| {
            match s.fs.opendir(ino) {
                Ok(fh) => reply.opened(fh, 0),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectory,
    ) {
        self.serve(op::READDIR, reply, move |s, mut reply| {
            match s.fs.readdir(ino, fh, offset) {
                Ok(entries) => {
                    for (child, next, kind, name) in entries {
                        if reply.add(child, next, kind, &name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectoryPlus,
    ) {
        self.serve(op::READDIRPLUS, reply, move |s, mut reply| {
            match s.fs.readdirplus(ino, fh, offset) {
                Ok(entries) => {
                    for (child, next, attr, name) in entries {
                        if reply.add(child, next, &name, &s.ttl, &attr, 0) {
                            break;
                        }
                        if name != "." && name != ".." {
                            s.fs.add_lookup(child);
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.serve(op::RELEASEDIR, reply, move |s, reply| {
            s.fs.releasedir(ino, fh);
            reply.ok();
        });
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        self.serve(op::FSYNCDIR, reply, move |s, reply| {
            reply_empty(reply, s.fs.exists(ino))
        });
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        self.serve(op::STATFS, reply, move |s, reply| {
            let st = s.fs.statfs();
            reply.statfs(
                st.blocks, st.bfree, st.bfree, st.files, st.ffree, st.bsize, st.namelen, st.bsize,
            );
        });
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.serve(op::SETXATTR, reply, move |s, reply| {
            reply_empty(reply, s.fs.setxattr(ino, &name, &value, flags))
        });
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let name = name.to_owned();
        self.serve(op::GETXATTR, reply, move |s, reply| {
            reply_xattr(reply, size, s.fs.getxattr(ino, &name))
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        self.serve(op::LISTXATTR, reply, move |s, reply| {
            reply_xattr(reply, size, s.fs.listxattr(ino))
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.serve(op::REMOVEXATTR, reply, move |s, reply| {
            reply_empty(reply, s.fs.removexattr(ino, &name))
        });
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); the kernel
        // does not even send ACCESS then, but answer sensibly if it does.
        self.serve(op::ACCESS, reply, move |s, reply| {
            reply_empty(reply, s.fs.exists(ino))
        });
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, who) = (name.to_owned(), owner(req));
        self.serve(op::CREATE, reply, move |s, reply| {
            match s.fs.create(parent, &name, mode, umask, who) {
                Ok((attr, fh)) => reply.created(&s.ttl, &attr, 0, fh, s.open_flags()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getlk(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        // POSIX locks are not negotiated (the kernel keeps them locally), so
        // this is not normally reached: report "no conflicting lock".
        self.serve(op::GETLK, reply, move |_, reply| {
            reply.locked(0, 0, libc::F_UNLCK, 0)
        });
    }

    fn setlk(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let opcode = if sleep { op::SETLKW } else { op::SETLK };
        self.serve(opcode, reply, move |_, reply| reply.ok());
    }

    fn bmap(&mut self, _req: &Request<'_>, _ino: u64, _bs: u32, _idx: u64, reply: ReplyBmap) {
        // Only meaningful for fuseblk (block-device backed) file systems.
        self.serve(op::BMAP, reply, move |_, reply| reply.error(libc::ENOSYS));
    }

    fn ioctl(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: u32,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        self.serve(op::IOCTL, reply, move |_, reply| reply.error(libc::ENOTTY));
    }

    fn poll(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _ph: PollHandle,
        events: u32,
        _flags: u32,
        reply: ReplyPoll,
    ) {
        // Memory files are always ready.
        let ready =
            events & (libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM) as u32;
        self.serve(op::POLL, reply, move |_, reply| reply.poll(ready));
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.serve(op::FALLOCATE, reply, move |s, reply| {
            reply_empty(reply, s.fs.fallocate(ino, offset, length, mode))
        });
    }

    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.serve(op::LSEEK, reply, move |s, reply| {
            match s.fs.lseek(ino, offset, whence) {
                Ok(o) => reply.offset(o),
                Err(e) => reply.error(e),
            }
        });
    }

    fn copy_file_range(
        &mut self,
        _req: &Request<'_>,
        ino_in: u64,
        _fh_in: u64,
        offset_in: i64,
        ino_out: u64,
        _fh_out: u64,
        offset_out: i64,
        len: u64,
        _flags: u32,
        reply: ReplyWrite,
    ) {
        self.serve(op::COPY_FILE_RANGE, reply, move |s, reply| {
            match s
                .fs
                .copy_file_range(ino_in, offset_in, ino_out, offset_out, len)
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }
}

/// Requests served, by kernel opcode. Cheap to clone; all clones share the counters.
#[derive(Clone, Debug)]
pub struct ServedCounts(Arc<[AtomicU64; OPCODE_SLOTS]>);

impl Default for ServedCounts {
    fn default() -> Self {
        ServedCounts(Arc::new(std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

impl ServedCounts {
    pub(crate) fn add(&self, opcode: u32) {
        if let Some(c) = self.0.get(opcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests of one opcode served so far.
    pub fn get(&self, opcode: u32) -> u64 {
        self.0
            .get(opcode as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Non-zero counts by opcode number.
    pub fn by_opcode(&self) -> BTreeMap<u32, u64> {
        (0..OPCODE_SLOTS as u32)
            .map(|op| (op, self.get(op)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Non-zero counts by opcode name (`crate::pipeline::opcode::name`).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_opcode()
            .into_iter()
            .map(|(op, n)| (crate::pipeline::opcode::name(op), n))
            .collect()
    }

    /// `{"GETATTR":40,"LOOKUP":12}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.snapshot()).unwrap_or_else(|_| "{}".to_string())
    }
}
