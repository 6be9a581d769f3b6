//! Our own codec for the FUSE wire protocol, used by the io_uring transport
//! (`uring.rs`) instead of fuser.
//!
//! Why hand-rolled: FUSE over io_uring is negotiated with INIT flag bit 41
//! (`FUSE_OVER_IO_URING`, carried in `flags2` next to `FUSE_INIT_EXT`), which
//! fuser 0.15 never sends, and fuser's request and reply types cannot be
//! built from outside the crate, so its `Filesystem` dispatch cannot be fed
//! requests that arrive in ring buffers. This file decodes the requests we
//! serve, calls the same `MemFs` methods as `dispatch.rs` with the same
//! arguments, counts them the same way, and encodes the replies byte for byte
//! as fuser would (layouts from `include/uapi/linux/fuse.h`, native endian).
//!
//! A request is handed over as the opcode's fixed argument struct (`fixed`,
//! the kernel's `in_args[0]`) and everything after it (`var`: names, write
//! data). From /dev/fuse both come in one buffer after the `fuse_in_header`;
//! on the ring `fixed` is the `op_in` area of the header buffer and `var` the
//! payload buffer. Since Linux 6.14 the name-only requests (LOOKUP, UNLINK,
//! RMDIR, SYMLINK, REMOVEXATTR, ...) carry an empty first argument, so their
//! fixed size is 0 on both paths and the names are in `var`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, TimeOrNow};
use libc::c_int;

use super::dispatch::{OPCODE_SLOTS, Shared, op};
use super::fs::{Owner, SetAttr};

/// `struct fuse_in_header`.
pub(crate) const IN_HEADER_LEN: usize = std::mem::size_of::<InHeader>();
/// `struct fuse_out_header`.
pub(crate) const OUT_HEADER_LEN: usize = 16;

// INIT flags (`flags | flags2 << 32` when FUSE_INIT_EXT is set).
pub(crate) const FUSE_ASYNC_READ: u64 = 1 << 0;
pub(crate) const FUSE_BIG_WRITES: u64 = 1 << 5;
pub(crate) const FUSE_WRITEBACK_CACHE: u64 = 1 << 16;
pub(crate) const FUSE_MAX_PAGES: u64 = 1 << 22;
pub(crate) const FUSE_INIT_EXT: u64 = 1 << 30;
pub(crate) const FUSE_OVER_IO_URING: u64 = 1 << 41;

const FOPEN_DIRECT_IO: u32 = 1 << 0;
const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;

// fuse_setattr_in.valid bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
const FATTR_CTIME: u32 = 1 << 10;

/// Native-endian field readers over a byte slice; `None` when truncated.
pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `struct fuse_in_header`: the ABI struct the eBPF side reads too.
pub(crate) use fusetrace_common::FuseInHeader as InHeader;

/// The header at the start of `b`, if `b` holds a whole one.
pub(crate) fn parse_in_header(b: &[u8]) -> Option<InHeader> {
    let b = b.get(..IN_HEADER_LEN)?;
    // SAFETY: `b` holds IN_HEADER_LEN bytes; the struct is plain integers
    // (any bit pattern is valid), read unaligned.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<InHeader>()) })
}

/// `struct fuse_out_header` for `unique` with `error` (0 or -errno) and
/// `body_len` bytes of reply arguments after it.
pub(crate) fn out_header(unique: u64, error: i32, body_len: usize) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&((OUT_HEADER_LEN + body_len) as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// What to send back for one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// FORGET and BATCH_FORGET: no reply at all.
    None,
    /// `-errno` in the out header, no arguments.
    Error(c_int),
    /// Success with these reply arguments (may be empty).
    Data(Vec<u8>),
}

/// Size of the opcode's fixed first argument (`in_args[0]`) as this kernel
/// sends it to a daemon that negotiated nothing beyond fuser's flags (no
/// SETXATTR_EXT, no security contexts); `None` for opcodes we do not serve.
pub(crate) fn fixed_size(opcode: u32) -> Option<usize> {
    Some(match opcode {
        op::LOOKUP | op::READLINK | op::SYMLINK | op::UNLINK | op::RMDIR => 0,
        op::REMOVEXATTR | op::STATFS | op::DESTROY => 0,
        op::FORGET | op::MKDIR | op::RENAME | op::LINK | op::OPEN | op::OPENDIR => 8,
        op::SETXATTR | op::GETXATTR | op::LISTXATTR | op::ACCESS | op::BATCH_FORGET => 8,
        op::INTERRUPT => 8,
        op::GETATTR | op::MKNOD | op::FSYNC | op::FSYNCDIR | op::CREATE | op::BMAP => 16,
        op::RENAME2 => 16,
        op::RELEASE | op::RELEASEDIR | op::FLUSH | op::POLL | op::LSEEK => 24,
        op::IOCTL | op::FALLOCATE => 32,
        op::READ | op::WRITE | op::READDIR | op::READDIRPLUS => 40,
        op::GETLK | op::SETLK | op::SETLKW => 48,
        op::COPY_FILE_RANGE => 56,
        op::SETATTR => 88,
        op::INIT => 64,
        _ => return None,
    })
}

/// NUL-terminated strings in the variable part, in order.
struct Names<'a>(&'a [u8]);

impl<'a> Names<'a> {
    fn next(&mut self) -> Option<&'a OsStr> {
        let end = self.0.iter().position(|b| *b == 0)?;
        let (name, rest) = self.0.split_at(end);
        self.0 = &rest[1..];
        Some(OsStr::from_bytes(name))
    }
}

fn kind_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// Seconds and nanoseconds relative to the epoch, as fuser encodes them
/// (times before 1970 have negative seconds and positive nanoseconds).
fn epoch_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn time_from_parts(secs: i64, nsecs: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// `struct fuse_attr` (88 bytes).
fn put_attr(out: &mut Vec<u8>, a: &FileAttr) {
    let (at, atn) = epoch_parts(a.atime);
    let (mt, mtn) = epoch_parts(a.mtime);
    let (ct, ctn) = epoch_parts(a.ctime);
    put64(out, a.ino);
    put64(out, a.size);
    put64(out, a.blocks);
    put64(out, at as u64);
    put64(out, mt as u64);
    put64(out, ct as u64);
    put32(out, atn);
    put32(out, mtn);
    put32(out, ctn);
    put32(out, kind_bits(a.kind) | u32::from(a.perm));
    put32(out, a.nlink);
    put32(out, a.uid);
    put32(out, a.gid);
    put32(out, a.rdev);
    put32(out, a.blksize);
    put32(out, a.flags);
}

/// `struct fuse_entry_out` (128 bytes), generation 0 as dispatch.rs replies.
fn put_entry(out: &mut Vec<u8>, ttl: Duration, a: &FileAttr) {
    put64(out, a.ino);
    put64(out, 0);
    put64(out, ttl.as_secs());
    put64(out, ttl.as_secs());
    put32(out, ttl.subsec_nanos());
    put32(out, ttl.subsec_nanos());
    put_attr(out, a);
}

/// `struct fuse_attr_out` (104 bytes).
fn attr_reply(ttl: Duration, a: &FileAttr) -> Reply {
    let mut out = Vec::with_capacity(104);
    put64(&mut out, ttl.as_secs());
    put32(&mut out, ttl.subsec_nanos());
    put32(&mut out, 0);
    put_attr(&mut out, a);
    Reply::Data(out)
}

fn entry_reply(s: &Shared, r: Result<FileAttr, c_int>) -> Reply {
    match r {
        Ok(a) => {
            let mut out = Vec::with_capacity(128);
            put_entry(&mut out, s.ttl, &a);
            Reply::Data(out)
        }
        Err(e) => Reply::Error(e),
    }
}

fn empty_reply(r: Result<(), c_int>) -> Reply {
    match r {
        Ok(()) => Reply::Data(Vec::new()),
        Err(e) => Reply::Error(e),
    }
}

/// `struct fuse_open_out` (16 bytes).
fn put_open(out: &mut Vec<u8>, fh: u64, flags: u32) {
    put64(out, fh);
    put32(out, flags);
    put32(out, 0);
}

/// `struct fuse_write_out` (8 bytes).
fn written_reply(r: Result<u32, c_int>) -> Reply {
    match r {
        Ok(n) => {
            let mut out = Vec::with_capacity(8);
            put32(&mut out, n);
            put32(&mut out, 0);
            Reply::Data(out)
        }
        Err(e) => Reply::Error(e),
    }
}

/// GETXATTR/LISTXATTR: the size alone when asked with size 0, else the data.
fn xattr_reply(size: u32, r: Result<Vec<u8>, c_int>) -> Reply {
    match r {
        Ok(v) if size == 0 => {
            let mut out = Vec::with_capacity(8);
            put32(&mut out, v.len() as u32);
            put32(&mut out, 0);
            Reply::Data(out)
        }
        Ok(v) if v.len() > size as usize => Reply::Error(libc::ERANGE),
        Ok(v) => Reply::Data(v),
        Err(e) => Reply::Error(e),
    }
}

fn data_reply(r: Result<Vec<u8>, c_int>) -> Reply {
    match r {
        Ok(v) => Reply::Data(v),
        Err(e) => Reply::Error(e),
    }
}

/// Appends one `struct fuse_dirent` (8-byte aligned) if it fits in `max`.
fn put_dirent(out: &mut Vec<u8>, max: usize, ino: u64, off: i64, typ: u32, name: &OsStr) -> bool {
    let name = name.as_bytes();
    let len = (24 + name.len()).next_multiple_of(8);
    if out.len() + len > max {
        return false;
    }
    let start = out.len();
    put64(out, ino);
    put64(out, off as u64);
    put32(out, name.len() as u32);
    put32(out, typ);
    out.extend_from_slice(name);
    out.resize(start + len, 0);
    true
}

fn owner(h: &InHeader) -> Owner {
    Owner {
        uid: h.uid,
        gid: h.gid,
    }
}

/// A request decoded far enough to be counted: what `dispatch.rs` would
/// receive through fuser's trait. Decoding is separate from serving so that
/// malformed requests are answered EIO without being counted (as fuser).
enum Op<'a> {
    Lookup(&'a OsStr),
    Forget(u64),
    BatchForget(Vec<(u64, u64)>),
    Getattr,
    Setattr(SetAttr),
    Readlink,
    Mknod(&'a OsStr, u32, u32, u32),
    Mkdir(&'a OsStr, u32, u32),
    Unlink(&'a OsStr),
    Rmdir(&'a OsStr),
    Symlink(&'a OsStr, &'a OsStr),
    Rename(&'a OsStr, u64, &'a OsStr, u32),
    Link(u64, &'a OsStr),
    Open(i32),
    Read(i64, u32),
    Write(i64, &'a [u8]),
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir(u64, i64, u32),
    Readdirplus(u64, i64, u32),
    Releasedir(u64),
    Fsyncdir,
    Statfs,
    Setxattr(&'a OsStr, &'a [u8], i32),
    Getxattr(&'a OsStr, u32),
    Listxattr(u32),
    Removexattr(&'a OsStr),
    Access,
    Create(&'a OsStr, u32, u32),
    Getlk,
    Setlk,
    Bmap,
    Ioctl,
    Poll(u32),
    Fallocate(i64, i64, i32),
    Lseek(i64, i32),
    CopyFileRange(i64, u64, i64, u64),
    Destroy,
}

fn decode<'a>(opcode: u32, f: &'a [u8], var: &'a [u8]) -> Option<Op<'a>> {
    let mut names = Names(var);
    Some(match opcode {
        op::LOOKUP => Op::Lookup(names.next()?),
        op::FORGET => Op::Forget(u64_at(f, 0)?),
        op::BATCH_FORGET => {
            let count = u32_at(f, 0)? as usize;
            let mut nodes = Vec::with_capacity(count);
            for i in 0..count {
                nodes.push((u64_at(var, i * 16)?, u64_at(var, i * 16 + 8)?));
            }
            Op::BatchForget(nodes)
        }
        op::GETATTR => Op::Getattr,
        op::SETATTR => {
            let valid = u32_at(f, 0)?;
            let has = |bit: u32| valid & bit != 0;
            let time = |secs_at: usize, nsecs_at: usize| -> Option<SystemTime> {
                Some(time_from_parts(
                    u64_at(f, secs_at)? as i64,
                    u32_at(f, nsecs_at)?,
                ))
            };
            let set_time = |bit, now_bit, secs_at, nsecs_at| -> Option<Option<TimeOrNow>> {
                Some(match (has(bit), has(now_bit)) {
                    (false, _) => None,
                    (true, true) => Some(TimeOrNow::Now),
                    (true, false) => Some(TimeOrNow::SpecificTime(time(secs_at, nsecs_at)?)),
                })
            };
            Op::Setattr(SetAttr {
                mode: has(FATTR_MODE).then(|| u32_at(f, 68)).flatten(),
                uid: has(FATTR_UID).then(|| u32_at(f, 76)).flatten(),
                gid: has(FATTR_GID).then(|| u32_at(f, 80)).flatten(),
                size: has(FATTR_SIZE).then(|| u64_at(f, 16)).flatten(),
                atime: set_time(FATTR_ATIME, FATTR_ATIME_NOW, 32, 56)?,
                mtime: set_time(FATTR_MTIME, FATTR_MTIME_NOW, 40, 60)?,
                ctime: if has(FATTR_CTIME) {
                    Some(time(48, 64)?)
                } else {
                    None
                },
            })
        }
        op::READLINK => Op::Readlink,
        op::MKNOD => Op::Mknod(names.next()?, u32_at(f, 0)?, u32_at(f, 8)?, u32_at(f, 4)?),
        op::MKDIR => Op::Mkdir(names.next()?, u32_at(f, 0)?, u32_at(f, 4)?),
        op::UNLINK => Op::Unlink(names.next()?),
        op::RMDIR => Op::Rmdir(names.next()?),
        op::SYMLINK => Op::Symlink(names.next()?, names.next()?),
        op::RENAME => Op::Rename(names.next()?, u64_at(f, 0)?, names.next()?, 0),
        op::RENAME2 => Op::Rename(names.next()?, u64_at(f, 0)?, names.next()?, u32_at(f, 8)?),
        op::LINK => Op::Link(u64_at(f, 0)?, names.next()?),
        op::OPEN => Op::Open(u32_at(f, 0)? as i32),
        op::READ => Op::Read(u64_at(f, 8)? as i64, u32_at(f, 16)?),
        op::WRITE => {
            let size = u32_at(f, 16)? as usize;
            Op::Write(u64_at(f, 8)? as i64, var.get(..size)?)
        }
        op::FLUSH => Op::Flush,
        op::RELEASE => Op::Release,
        op::FSYNC => Op::Fsync,
        op::OPENDIR => Op::Opendir,
        op::READDIR => Op::Readdir(u64_at(f, 0)?, u64_at(f, 8)? as i64, u32_at(f, 16)?),
        op::READDIRPLUS => Op::Readdirplus(u64_at(f, 0)?, u64_at(f, 8)? as i64, u32_at(f, 16)?),
        op::RELEASEDIR => Op::Releasedir(u64_at(f, 0)?),
        op::FSYNCDIR => Op::Fsyncdir,
        op::STATFS => Op::Statfs,
        op::SETXATTR => {
            let size = u32_at(f, 0)? as usize;
            let flags = u32_at(f, 4)? as i32;
            let name = names.next()?;
            Op::Setxattr(name, names.0.get(..size)?, flags)
        }
        op::GETXATTR => Op::Getxattr(names.next()?, u32_at(f, 0)?),
        op::LISTXATTR => Op::Listxattr(u32_at(f, 0)?),
        op::REMOVEXATTR => Op::Removexattr(names.next()?),
        op::ACCESS => Op::Access,
        op::CREATE => Op::Create(names.next()?, u32_at(f, 4)?, u32_at(f, 8)?),
        op::GETLK => Op::Getlk,
        op::SETLK | op::SETLKW => Op::Setlk,
        op::BMAP => Op::Bmap,
        op::IOCTL => {
            // Only CUSE sends unrestricted ioctls; fuser refuses them unseen.
            if u32_at(f, 8)? & FUSE_IOCTL_UNRESTRICTED != 0 {
                return None;
            }
            Op::Ioctl
        }
        op::POLL => Op::Poll(u32_at(f, 20)?),
        op::FALLOCATE => Op::Fallocate(
            u64_at(f, 8)? as i64,
            u64_at(f, 16)? as i64,
            u32_at(f, 24)? as i32,
        ),
        op::LSEEK => Op::Lseek(u64_at(f, 8)? as i64, u32_at(f, 16)? as i32),
        op::COPY_FILE_RANGE => Op::CopyFileRange(
            u64_at(f, 8)? as i64,
            u64_at(f, 16)?,
            u64_at(f, 32)? as i64,
            u64_at(f, 40)?,
        ),
        op::DESTROY => Op::Destroy,
        _ => return None,
    })
}

/// Serves one request (any opcode but INIT) like `dispatch.rs` does: counts
/// it, sleeps the opcode's injected latency, calls `MemFs` (or answers the
/// injected error) and encodes the reply. INTERRUPT, NOTIFY_REPLY,
/// unrestricted IOCTL and unknown opcodes are answered ENOSYS uncounted; a
/// request whose arguments are truncated EIO, uncounted (fuser's
/// behaviour).
pub(crate) fn serve(s: &Shared, h: &InHeader, fixed: &[u8], var: &[u8]) -> Reply {
    let opcode = h.opcode;
    let Some(size) = fixed_size(opcode) else {
        return Reply::Error(libc::ENOSYS);
    };
    if opcode == op::INTERRUPT || opcode == op::INIT {
        return Reply::Error(libc::ENOSYS);
    }
    let f = fixed.get(..size).unwrap_or(fixed);
    let request = match decode(opcode, f, var) {
        Some(r) => r,
        None if opcode == op::IOCTL => return Reply::Error(libc::ENOSYS),
        None if opcode == op::FORGET || opcode == op::BATCH_FORGET => return Reply::None,
        None => return Reply::Error(libc::EIO),
    };
    s.counts.add(opcode);
    let delay = s.latency[opcode as usize % OPCODE_SLOTS];
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    if let e @ 1.. = s.errno[opcode as usize % OPCODE_SLOTS]
        && !matches!(request, Op::Forget(_) | Op::BatchForget(_))
    {
        return Reply::Error(e);
    }
    let ino = h.nodeid;
    let fs = &s.fs;
    match request {
        Op::Lookup(name) => entry_reply(s, fs.lookup(ino, name)),
        Op::Forget(n) => {
            fs.forget(ino, n);
            Reply::None
        }
        Op::BatchForget(nodes) => {
            for (node, n) in nodes {
                fs.forget(node, n);
            }
            Reply::None
        }
        Op::Getattr => match fs.getattr(ino) {
            Ok(a) => attr_reply(s.ttl, &a),
            Err(e) => Reply::Error(e),
        },
        Op::Setattr(set) => match fs.setattr(ino, set) {
            Ok(a) => attr_reply(s.ttl, &a),
            Err(e) => Reply::Error(e),
        },
        Op::Readlink => data_reply(fs.readlink(ino)),
        Op::Mknod(name, mode, umask, rdev) => {
            entry_reply(s, fs.mknod(ino, name, mode, umask, rdev, owner(h)))
        }
        Op::Mkdir(name, mode, umask) => entry_reply(s, fs.mkdir(ino, name, mode, umask, owner(h))),
        Op::Unlink(name) => empty_reply(fs.unlink(ino, name)),
        Op::Rmdir(name) => empty_reply(fs.rmdir(ino, name)),
        Op::Symlink(name, target) => {
            entry_reply(s, fs.symlink(ino, name, Path::new(target), owner(h)))
        }
        Op::Rename(name, newparent, newname, flags) => {
            empty_reply(fs.rename(ino, name, newparent, newname, flags))
        }
        Op::Link(old, newname) => entry_reply(s, fs.link(old, ino, newname)),
        Op::Open(flags) => match fs.open(ino, flags) {
            Ok(fh) => {
                let mut out = Vec::with_capacity(16);
                put_open(&mut out, fh, open_flags(s));
                Reply::Data(out)
            }
            Err(e) => Reply::Error(e),
        },
        Op::Read(offset, size) => data_reply(fs.read(ino, offset, size)),
        Op::Write(offset, data) => written_reply(fs.write(ino, offset, data)),
        Op::Flush | Op::Fsync | Op::Fsyncdir | Op::Access => empty_reply(fs.exists(ino)),
        Op::Release => {
            fs.release(ino);
            Reply::Data(Vec::new())
        }
        Op::Opendir => match fs.opendir(ino) {
            Ok(fh) => {
                let mut out = Vec::with_capacity(16);
                put_open(&mut out, fh, 0);
                Reply::Data(out)
            }
            Err(e) => Reply::Error(e),
        },
        Op::Readdir(fh, offset, size) => match fs.readdir(ino, fh, offset) {
            Ok(entries) => {
                let mut out = Vec::new();
                for (child, next, kind, name) in entries {
                    if !put_dirent(
                        &mut out,
                        size as usize,
                        child,
                        next,
                        kind_bits(kind) >> 12,
                        &name,
                    ) {
                        break;
                    }
                }
                Reply::Data(out)
            }
            Err(e) => Reply::Error(e),
        },
        Op::Readdirplus(fh, offset, size) => match fs.readdirplus(ino, fh, offset) {
            Ok(entries) => {
                let mut out = Vec::new();
                for (child, next, attr, name) in entries {
                    // fuse_direntplus: the entry, then the dirent.
                    let start = out.len();
                    put_entry(&mut out, s.ttl, &attr);
                    let typ = kind_bits(attr.kind) >> 12;
                    if !put_dirent(&mut out, size as usize, child, next, typ, &name) {
                        out.truncate(start);
                        break;
                    }
                    if name != "." && name != ".." {
                        fs.add_lookup(child);
                    }
                }
                Reply::Data(out)
            }
            Err(e) => Reply::Error(e),
        },
        Op::Releasedir(fh) => {
            fs.releasedir(ino, fh);
            Reply::Data(Vec::new())
        }
        Op::Statfs => {
            // struct fuse_statfs_out (struct fuse_kstatfs, 80 bytes).
            let st = fs.statfs();
            let mut out = Vec::with_capacity(80);
            for v in [st.blocks, st.bfree, st.bfree, st.files, st.ffree] {
                put64(&mut out, v);
            }
            for v in [st.bsize, st.namelen, st.bsize, 0] {
                put32(&mut out, v);
            }
            out.resize(80, 0);
            Reply::Data(out)
        }
        Op::Setxattr(name, value, flags) => empty_reply(fs.setxattr(ino, name, value, flags)),
        Op::Getxattr(name, size) => xattr_reply(size, fs.getxattr(ino, name)),
        Op::Listxattr(size) => xattr_reply(size, fs.listxattr(ino)),
        Op::Removexattr(name) => empty_reply(fs.removexattr(ino, name)),
        Op::Create(name, mode, umask) => match fs.create(ino, name, mode, umask, owner(h)) {
            Ok((attr, fh)) => {
                let mut out = Vec::with_capacity(144);
                put_entry(&mut out, s.ttl, &attr);
                put_open(&mut out, fh, open_flags(s));
                Reply::Data(out)
            }
            Err(e) => Reply::Error(e),
        },
        Op::Getlk => {
            // struct fuse_lk_out: "no conflicting lock".
            let mut out = Vec::with_capacity(24);
            put64(&mut out, 0);
            put64(&mut out, 0);
            put32(&mut out, libc::F_UNLCK as u32);
            put32(&mut out, 0);
            Reply::Data(out)
        }
        Op::Setlk => Reply::Data(Vec::new()),
        Op::Bmap => Reply::Error(libc::ENOSYS),
        Op::Ioctl => Reply::Error(libc::ENOTTY),
        Op::Poll(events) => {
            let ready = events
                & (libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM) as u32;
            let mut out = Vec::with_capacity(8);
            put32(&mut out, ready);
            put32(&mut out, 0);
            Reply::Data(out)
        }
        Op::Fallocate(offset, length, mode) => empty_reply(fs.fallocate(ino, offset, length, mode)),
        Op::Lseek(offset, whence) => match fs.lseek(ino, offset, whence) {
            Ok(o) => {
                let mut out = Vec::with_capacity(8);
                put64(&mut out, o as u64);
                Reply::Data(out)
            }
            Err(e) => Reply::Error(e),
        },
        Op::CopyFileRange(off_in, ino_out, off_out, len) => {
            written_reply(fs.copy_file_range(ino, off_in, ino_out, off_out, len))
        }
        Op::Destroy => Reply::Data(Vec::new()),
    }
}

fn open_flags(s: &Shared) -> u32 {
    if s.direct_io { FOPEN_DIRECT_IO } else { 0 }
}

/// The kernel's INIT request (`struct fuse_init_in`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32` (flags2 only with FUSE_INIT_EXT).
    pub flags: u64,
}

impl InitIn {
    pub(crate) fn parse(b: &[u8]) -> Option<InitIn> {
        let low = u64::from(u32_at(b, 12)?);
        let high = if low & FUSE_INIT_EXT != 0 {
            u64::from(u32_at(b, 16).unwrap_or(0))
        } else {
            0
        };
        Some(InitIn {
            major: u32_at(b, 0)?,
            minor: u32_at(b, 4)?,
            max_readahead: u32_at(b, 8)?,
            flags: low | high << 32,
        })
    }
}

/// Our INIT reply (`struct fuse_init_out`, 64 bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InitOut {
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u64,
    pub max_background: u16,
    pub max_write: u32,
    pub max_pages: u16,
}

impl InitOut {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        put32(&mut out, 7);
        put32(&mut out, self.minor);
        put32(&mut out, self.max_readahead);
        put32(&mut out, self.flags as u32);
        out.extend_from_slice(&self.max_background.to_ne_bytes());
        // congestion_threshold: fuser's default, 3/4 of max_background.
        let congestion = (u32::from(self.max_background) * 3 / 4) as u16;
        out.extend_from_slice(&congestion.to_ne_bytes());
        put32(&mut out, self.max_write);
        put32(&mut out, 1); // time_gran: 1ns
        out.extend_from_slice(&self.max_pages.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
        put32(&mut out, (self.flags >> 32) as u32);
        out.resize(64, 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    #[test]
    fn every_served_opcode_has_a_fixed_size() {
        let unserved = [op::NOTIFY_REPLY, op::CUSE_INIT];
        for (n, name) in fusetrace_common::opcode::OPCODES {
            let served = *n < op::SETUPMAPPING && !unserved.contains(n);
            assert_eq!(fixed_size(*n).is_some(), served, "{name}");
        }
    }

    #[test]
    fn layouts() {
        let attr = FileAttr {
            ino: 5,
            size: 10,
            blocks: 1,
            atime: UNIX_EPOCH + Duration::new(7, 9),
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: 2,
            gid: 3,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        let mut out = Vec::new();
        put_attr(&mut out, &attr);
        assert_eq!(out.len(), 88);
        assert_eq!(u32_at(&out, 60), Some(libc::S_IFREG | 0o644));
        assert_eq!(u64_at(&out, 24), Some(7));
        assert_eq!(u32_at(&out, 48), Some(9));
        out.clear();
        put_entry(&mut out, Duration::from_millis(1500), &attr);
        assert_eq!(out.len(), 128);
        assert_eq!(u64_at(&out, 16), Some(1));
        assert_eq!(u32_at(&out, 32), Some(500_000_000));
        let Reply::Data(a) = attr_reply(Duration::ZERO, &attr) else {
            panic!()
        };
        assert_eq!(a.len(), 104);
        let init = InitOut {
            minor: 36,
            max_readahead: 1 << 17,
            flags: FUSE_INIT_EXT | FUSE_OVER_IO_URING,
            max_background: 16,
            max_write: 1 << 20,
            max_pages: 256,
        }
        .encode();
        assert_eq!(init.len(), 64);
        assert_eq!(u32_at(&init, 12), Some(1 << 30));
        assert_eq!(u32_at(&init, 32), Some(1 << 9)); // flags2
        assert_eq!(u16_at(&init, 18), Some(12));
        let mut d = Vec::new();
        assert!(put_dirent(&mut d, 32, 1, 1, 4, OsStr::new("ab")));
        assert_eq!(d.len(), 32);
        assert!(!put_dirent(&mut d, 40, 1, 2, 4, OsStr::new("c")));
        assert_eq!(
            time_from_parts(-2, 500),
            UNIX_EPOCH - Duration::new(1, 999_999_500)
        );
        assert_eq!(
            epoch_parts(UNIX_EPOCH - Duration::new(1, 999_999_500)),
            (-2, 500)
        );
    }
}
