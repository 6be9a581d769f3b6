//! Which processes are FUSE daemons, for the daemon side at the syscall
//! boundary (`syscalls.rs`): its programs run at every read(2), readv(2),
//! write(2) and writev(2) of the machine, and all but the daemons' should
//! cost one lookup, not a walk of the caller's fd table and reads of its
//! memory.
//!
//! `DAEMON_FILES` holds, for a thread group, the `/dev/fuse` files it
//! holds (descriptor, `struct file *`, connection): an array indexed by
//! the group's id modulo its length, so the lookup every read and write of
//! the machine pays is a few inlined instructions (a hash map's costs a
//! call and a hash, ~50 ns here); an entry two holders fall on is marked
//! `full`, and processes falling on it get the full check. User space fills it from the
//! `task_file` iterator when tracing begins and refreshes it every second
//! (a process that received a descriptor later, one that exited); a daemon
//! that starts meanwhile is found on its way: a mount's INIT opens a
//! window (`DAEMON_SEEK`, a deadline) in which a process the map does not
//! know gets the full check, and is added when its descriptor is
//! `/dev/fuse`. User space sets the deadline to "always" when it cannot
//! run the iterator (the check then costs what it did before the map).
//!
//! A known descriptor is still checked against the caller's fd table: the
//! `struct file *` there must be the one recorded, with the recorded
//! `f_op` (`/dev/fuse`'s) and `private_data` (the same `struct fuse_dev`,
//! whose connection never changes). The pointer alone is not enough: a
//! daemon that closes `/dev/fuse` and opens another file gets the same
//! descriptor and, from the slab's free list, often the same `struct
//! file` (seen in the 7.3 guest: the reference daemon's closing
//! statistics, written to a file at the descriptor `/dev/fuse` had, were
//! taken for a reply). The connection is not read again. A `/dev/fuse`
//! opened again at the same descriptor, `struct file` and `struct
//! fuse_dev` for another mount is left: its points carry the old
//! connection until the next refresh (a second at most), where they are
//! counted as unmatched.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::Array};
use fusetrace_common::{
    DAEMON_FDS, DAEMON_SEEK_NS, DaemonFiles, FILE_IDENT_WORDS, KernelLayout, MAX_DAEMONS, NO_HOP,
    counters,
};

use crate::{
    fuse::{dev_fuse_open, fd_file_of},
    memory::kread,
    report::bump,
};

/// `/dev/fuse` files by holder's thread group, at `tgid % MAX_DAEMONS`.
#[map]
static DAEMON_FILES: Array<DaemonFiles> = Array::with_max_entries(MAX_DAEMONS, 0);

/// `[0]`: until when (`bpf_ktime_get_ns`) processes the map does not know
/// get the full check; `u64::MAX`: always (no iterator).
#[map]
static DAEMON_SEEK: Array<u64> = Array::with_max_entries(1, 0);

/// The current thread (as `bpf_get_current_pid_tgid` gives it), and the
/// `/dev/fuse` files of its group the map knows; `None` when it knows none
/// and no daemon is sought (the caller returns at once). `task` is the
/// current task: its ids are plain loads, no helper call.
#[inline(always)]
pub(crate) fn known_daemon(
    task: u64,
    l: &KernelLayout,
) -> Option<(u64, Option<&'static DaemonFiles>)> {
    // SAFETY: a typed pointer at offsets the verifier knows.
    let (tgid, pid) = unsafe {
        (
            core::ptr::read_volatile((task + l.task_tgid as u64) as *const u32),
            core::ptr::read_volatile((task + l.task_pid as u64) as *const u32),
        )
    };
    let pid_tgid = (u64::from(tgid) << 32) | u64::from(pid);
    match DAEMON_FILES.get(tgid % MAX_DAEMONS) {
        Some(files) if files.tgid == tgid || files.full != 0 => Some((pid_tgid, Some(files))),
        _ if seeking() => Some((pid_tgid, None)),
        _ => None,
    }
}

#[inline(always)]
fn seeking() -> bool {
    match DAEMON_SEEK.get(0).copied() {
        Some(0) | None => false,
        Some(u64::MAX) => true,
        // SAFETY: a helper without arguments.
        Some(until) => (unsafe { bpf_ktime_get_ns() }) < until,
    }
}

/// A mount's INIT is being sent: its daemon will read it soon.
#[inline(always)]
pub(crate) fn expect_daemon() {
    if let Some(until) = DAEMON_SEEK.get_ptr_mut(0) {
        // SAFETY: a map value; a racing INIT stores a deadline as late.
        unsafe {
            if *until != u64::MAX {
                *until = bpf_ktime_get_ns() + DAEMON_SEEK_NS;
            }
        }
    }
}

/// If `fd` of the current task (`task`) is `/dev/fuse`: its `struct file
/// *` and connection. `known` is what [`known_daemon`] gave.
#[inline(always)]
pub(crate) fn daemon_file(
    task: u64,
    pid_tgid: u64,
    known: Option<&DaemonFiles>,
    fd: u64,
    l: &KernelLayout,
) -> Option<(u64, u32)> {
    let file = fd_file_of(task, fd, l)?;
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(files) = known {
        for i in 0..DAEMON_FDS {
            let f = &files.fds[i];
            if f.file == 0 {
                break;
            }
            if f.fd as u64 == fd {
                if f.file == file && same_open(file, f.fud, files.fops, l) {
                    return Some((file, f.connection));
                }
                // Closed and reused: checked again below.
                return found(tgid, fd, file, l);
            }
        }
        // Not among its known files: a new one (a clone_fd, a passed
        // descriptor) only while a daemon is sought or the table is full.
        if files.full == 0 && !seeking() {
            return None;
        }
    }
    found(tgid, fd, file, l)
}

// `same_open` picks its words out of a read of four.
const _: () = assert!(FILE_IDENT_WORDS == 4);

/// Whether `file`, at a descriptor recorded with it, is still the open
/// recorded: `/dev/fuse`'s `f_op` and the same `struct fuse_dev`. One
/// read where the kernel keeps both near (`file_ident_at`).
#[inline(always)]
fn same_open(file: u64, fud: u64, fops: u64, l: &KernelLayout) -> bool {
    if l.file_ident_at != NO_HOP {
        let Some(words) = kread::<[u64; FILE_IDENT_WORDS]>(file, l.file_ident_at) else {
            return false;
        };
        let word = |i: u32| match i {
            0 => words[0],
            1 => words[1],
            2 => words[2],
            _ => words[3],
        };
        return word(l.file_ident_fop) == fops && word(l.file_ident_fud) == fud;
    }
    // Where they are far apart (`file_ident_at` is NO_HOP): two reads.
    kread::<u64>(file, l.file_f_op) == Some(fops)
        && kread::<u64>(file, l.file_private_data) == Some(fud)
}

/// The full check of `file`, remembered when it is `/dev/fuse`.
#[inline(always)]
fn found(tgid: u32, fd: u64, file: u64, l: &KernelLayout) -> Option<(u64, u32)> {
    let (connection, fud) = dev_fuse_open(file, l)?;
    if let Some(fops) = kread::<u64>(file, l.file_f_op) {
        remember(tgid, fd as u32, file, fud, fops, connection);
    }
    Some((file, connection))
}

/// Adds a found `/dev/fuse` file to the map: to its group's entry, or a
/// free one; an entry another group holds is marked `full` (counted: the
/// file is then checked in full every time).
#[inline(always)]
fn remember(tgid: u32, fd: u32, file: u64, fud: u64, fops: u64, connection: u32) {
    let Some(entry) = DAEMON_FILES.get_ptr_mut(tgid % MAX_DAEMONS) else {
        return;
    };
    // SAFETY: a map value; user space's refresh may replace it meanwhile,
    // and then lists the file itself. Two CPUs adding at once may lose
    // one of two files, which the next check finds again.
    unsafe {
        if (*entry).tgid == 0 {
            (*entry).tgid = tgid;
            (*entry).fops = fops;
        }
        if (*entry).tgid != tgid {
            if (*entry).full == 0 {
                bump(counters::DAEMONS_FULL);
            }
            (*entry).full = 1;
            return;
        }
        for i in 0..DAEMON_FDS {
            let f = &mut (*entry).fds[i];
            if f.file == 0 || f.fd == fd {
                f.fd = fd;
                f.connection = connection;
                f.fud = fud;
                f.file = file;
                return;
            }
        }
        (*entry).full = 1;
    }
}
