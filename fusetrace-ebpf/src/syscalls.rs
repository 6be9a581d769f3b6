//! The daemon side at the syscall boundary, on kernels without kprobes or
//! fentry (where `daemon.rs` hooks it in the kernel instead): `read(2)`
//! and `readv(2)` returning on a `/dev/fuse` file carry the request's
//! `fuse_in_header` (taken), `write(2)` and `writev(2)` entering carry the
//! reply's `fuse_out_header` (replied; for the in-kernel aggregation only
//! the time, which the request's end takes: `reply.rs`). The file is
//! recognised through the current task's fd table and its inode's device
//! number (`fuse.rs`), and only for a process that holds `/dev/fuse`
//! (`daemons.rs`): every other one's read or write costs a lookup.
//! `splice(2)` transfers are counted, not decoded.
//!
//! A write that is no daemon's reply may be an application's write to a
//! FUSE file, which `diagnose.rs` takes.

use aya_ebpf::programs::TracePointContext;
use fusetrace_common::{
    EventKind, FuseEvent, FuseInHeader, FuseOutHeader, IoVec, KernelLayout, counters, fuse_req_hash,
};

use crate::{
    aggregate,
    args::{SyscallRegs, current_task, tp_field},
    daemons::{daemon_file, known_daemon},
    diagnose,
    filter::daemon_filtered_out,
    fuse::{UNIQUE_IN_HEADER, fd_file, fd_file_of, fuse_fd_connection},
    maps::ID_LATE,
    memory::{kread, layout, uread},
    reply,
    report::{bump, header_event, submit},
};

/// Shared by read(2) and readv(2) exit: the daemon took a request whose
/// header is now at the start of its buffer.
#[inline(always)]
pub(crate) fn on_read_exit(_ctx: &TracePointContext, vectored: bool) -> u32 {
    let l = layout();
    if daemon_filtered_out(l) {
        return 0;
    }
    // Every other process leaves here (`daemons.rs`).
    let task = current_task();
    let Some((pid_tgid, known)) = known_daemon(task, l) else {
        return 0;
    };
    let Some(regs) = SyscallRegs::of(task) else {
        return 0;
    };
    if regs.ret(l) < core::mem::size_of::<FuseInHeader>() as i64 {
        return 0;
    }
    let [fd, arg, count] = regs.args(l);
    // Daemons read into buffers of at least FUSE_MIN_READ_BUFFER bytes: a
    // cheap test before walking the fd table.
    if !vectored && count < fusetrace_common::FUSE_MIN_READ_BUFFER {
        return 0;
    }
    let buf = if vectored {
        match uread::<IoVec>(arg) {
            Some(iov) if iov.len >= core::mem::size_of::<FuseInHeader>() as u64 => iov.base,
            _ => return 0,
        }
    } else {
        arg
    };
    let Some((file, connection)) = daemon_file(task, pid_tgid, known, fd, l) else {
        return 0;
    };
    let Some(h) = uread::<FuseInHeader>(buf) else {
        bump(counters::READ_FAULTS);
        return 0;
    };
    // FORGET and BATCH_FORGET are not requests the kernel keeps (no reply);
    // an INTERRUPT's id has FUSE_INT_REQ_BIT set.
    let kept = fusetrace_common::opcode::expects_reply(h.opcode);
    if l.agg_stages != 0 {
        if kept {
            aggregate::agg_daemon_point(connection, h.unique, false, pid_tgid as u32, || {
                taken_request(file, h.unique, l)
            });
        }
        return 0;
    }
    let req = if kept && ID_LATE.get(0).copied() == Some(1) {
        taken_request(file, h.unique, l)
    } else {
        0
    };
    submit(header_event(EventKind::Taken, connection, req, &h));
    0
}

/// The `struct fuse_req *` a daemon thread just took from `file`, found
/// by its id in the connection's processing table (`fud->pq.processing`,
/// a hash of lists the kernel moved it to before the read returned; only
/// this thread knows the id yet, so it is still there). Only on kernels
/// whose send carried no id: there it joins the send to the daemon side
/// before the request ends. 0 when not found (counted).
#[inline(always)]
fn taken_request(file: u64, unique: u64, l: &KernelLayout) -> u64 {
    // FORGET/BATCH_FORGET/INTERRUPT are not in the table; a kernel whose
    // BTF lacks it left `list_head_size` 0.
    if unique == 0 || unique & fusetrace_common::FUSE_INT_REQ_BIT != 0 || l.list_head_size == 0 {
        return 0;
    }
    let found = (|| -> Option<u64> {
        let fud: u64 = kread(file, l.file_private_data)?;
        let table: u64 = kread(fud, l.fuse_dev_processing)?;
        if table == 0 {
            return None;
        }
        let head = table + fuse_req_hash(unique) * l.list_head_size as u64;
        let mut node: u64 = kread(head, 0)?;
        // A bucket holds the requests in service whose ids share a hash:
        // a few at most (ids are sequential, 256 buckets).
        for _ in 0..8 {
            if node == head || node == 0 {
                return None;
            }
            let req = node - l.req_list as u64;
            if kread::<u64>(req, l.req_in_h + UNIQUE_IN_HEADER) == Some(unique) {
                return Some(req);
            }
            node = kread(node, 0)?;
        }
        None
    })();
    match found {
        Some(req) => req,
        None => {
            bump(counters::TAKE_UNRESOLVED);
            0
        }
    }
}

/// Shared by write(2) and writev(2) entry: the reply header is already in
/// user memory, and the kernel ends the request inside this very syscall.
#[inline(always)]
pub(crate) fn on_write_enter(ctx: &TracePointContext, vectored: bool) -> u32 {
    let l = layout();
    if daemon_filtered_out(l) {
        return 0;
    }
    let task = current_task();
    let Some((pid_tgid, known)) = known_daemon(task, l) else {
        // Not a daemon: maybe an application writing a FUSE file.
        if l.track_app_io != 0
            && let Some(fd) = tp_field::<u64>(ctx, l.sys_enter_fd)
            && let Some(file) = fd_file_of(task, fd, l)
        {
            diagnose::app_write_enter(file, None, l);
        }
        return 0;
    };
    let Some(regs) = SyscallRegs::of(task) else {
        return 0;
    };
    let [fd, arg, count] = regs.args(l);
    let Some((_, connection)) = daemon_file(task, pid_tgid, known, fd, l) else {
        // A daemon writing another file (bindfs its backing files), or an
        // application that holds `/dev/fuse`.
        if l.track_app_io != 0
            && let Some(file) = fd_file_of(task, fd, l)
        {
            diagnose::app_write_enter(file, None, l);
        }
        return 0;
    };
    // In-kernel aggregation: the end, in this very syscall, takes the
    // time with its request (`reply.rs`); the header is not needed.
    if l.agg_stages != 0 {
        reply::keep_reply_start(pid_tgid as u32);
        return 0;
    }
    let header_addr = if vectored {
        if count == 0 {
            return 0;
        }
        let Some(iov) = uread::<IoVec>(arg) else {
            return 0;
        };
        if iov.len < core::mem::size_of::<FuseOutHeader>() as u64 {
            return 0;
        }
        iov.base
    } else {
        if count < core::mem::size_of::<FuseOutHeader>() as u64 {
            return 0;
        }
        arg
    };
    let Some(h) = uread::<FuseOutHeader>(header_addr) else {
        bump(counters::READ_FAULTS);
        return 0;
    };
    submit(FuseEvent {
        kind: EventKind::Replied as u8,
        connection,
        unique: h.unique,
        // A notification carries its code in `error` and unique 0.
        error: h.error,
        len: h.len,
        ..FuseEvent::default()
    });
    0
}

/// splice(2) entered with a `/dev/fuse` file at either end: counted (see
/// `taken_sys_splice`).
#[inline(always)]
pub(crate) fn on_splice_enter(ctx: &TracePointContext) -> u32 {
    let l = layout();
    if daemon_filtered_out(l) {
        return 0;
    }
    // splice(fd_in, off_in, fd_out, off_out, len, flags): fd_in is the
    // first argument, fd_out the third (two slots after `buf`).
    let fd_in: u64 = tp_field(ctx, l.sys_enter_fd).unwrap_or(u64::MAX);
    let fd_out: u64 = tp_field(ctx, l.sys_enter_count).unwrap_or(u64::MAX);
    if fuse_fd_connection(fd_in, l).is_some() || fuse_fd_connection(fd_out, l).is_some() {
        bump(counters::SPLICE_TRANSFERS);
    }
    0
}
