//! Observations for `fusetrace diagnose` (writeback versus write-through,
//! the connection's limits) and for paths (the node id a LOOKUP-like reply
//! names): the arguments of READ/WRITE requests, the flags negotiated by
//! INIT and returned by OPEN/CREATE, the connection's negotiated limits,
//! and applications' writes to FUSE files.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::HashMap,
    programs::TracePointContext,
};
use fusetrace_common::{
    EventKind, FLAG_WRITEBACK_CACHE, FUSE_SUPER_MAGIC, FuseEvent, KernelLayout,
};

use crate::{
    args::tp_field,
    fuse::fd_file,
    maps::GATE,
    memory::{kread, layout},
    report::submit,
};

use fusetrace_common::opcode::{
    CREATE as FUSE_CREATE, GETATTR, INIT as FUSE_INIT, LINK, LOOKUP, MKDIR, MKNOD,
    OPEN as FUSE_OPEN, READ as FUSE_READ, STATX, SYMLINK, WRITE as FUSE_WRITE,
};

/// The first fields of `fuse_read_in` and `fuse_write_in` (uapi).
#[repr(C)]
#[derive(Clone, Copy)]
struct IoIn {
    fh: u64,
    offset: u64,
    size: u32,
    flags: u32,
}

/// `fuse_open_out` (uapi).
#[repr(C)]
#[derive(Clone, Copy)]
struct OpenOut {
    fh: u64,
    open_flags: u32,
    backing_id: i32,
}

/// `fuse_entry_out`'s validity times (uapi), at byte 16 (after `nodeid`
/// and `generation`).
#[repr(C)]
#[derive(Clone, Copy)]
struct EntryValid {
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
}

/// Where [`EntryValid`] begins in `fuse_entry_out`.
const ENTRY_VALID_AT: u64 = 16;

/// `fuse_attr_out` up to its validity time (uapi).
#[repr(C)]
#[derive(Clone, Copy)]
struct AttrOut {
    attr_valid: u64,
    attr_valid_nsec: u32,
}

/// A validity time the daemon gave (seconds and nanoseconds) in
/// milliseconds, at most `u32::MAX` (49 days: "for ever" in practice).
#[inline(always)]
fn valid_ms(sec: u64, nsec: u32) -> u64 {
    // No saturating_mul: it needs 128-bit arithmetic, which BPF lacks.
    let most = u64::from(u32::MAX);
    if sec >= most / 1000 {
        return most;
    }
    (sec * 1000 + u64::from(nsec) / 1_000_000).min(most)
}

/// `fuse_init_out` up to `flags2` (uapi; 4-byte words).
#[repr(C)]
#[derive(Clone, Copy)]
struct InitOut {
    words: [u32; 9],
}

/// Address of `args->in_args[i].value` or `args->out_args[i].value`.
#[inline(always)]
fn arg_value(args: u64, array: u32, index: u32, l: &KernelLayout) -> Option<u64> {
    kread(args, array + index * l.fuse_arg_stride + l.fuse_arg_value)
}

/// Fills `arg0`/`arg1` and the writeback flag of a request event.
#[inline(always)]
pub fn request_args(ev: &mut FuseEvent, kind: EventKind, req: u64, fc: u64, l: &KernelLayout) {
    if kind == EventKind::Sent {
        report_limits(ev.connection, fc, l);
        if let Some(byte) = kread::<u8>(fc, l.conn_wb_byte)
            && u32::from(byte) & l.conn_wb_mask != 0
        {
            ev.flags |= FLAG_WRITEBACK_CACHE;
        }
    }
    let wanted = match kind {
        EventKind::Sent => ev.opcode == FUSE_READ || ev.opcode == FUSE_WRITE,
        EventKind::Ended => {
            matches!(
                ev.opcode,
                FUSE_OPEN | FUSE_CREATE | FUSE_INIT | LOOKUP | MKNOD | MKDIR | SYMLINK | LINK
            ) || (l.track_app_io != 0 && matches!(ev.opcode, GETATTR | STATX))
        }
        _ => false,
    };
    if !wanted || l.fuse_arg_stride == 0 {
        return;
    }
    let Some(args) = kread::<u64>(req, l.req_args) else {
        return;
    };
    match (kind, ev.opcode) {
        (EventKind::Sent, _) => {
            if let Some(p) = arg_value(args, l.args_in_args, 0, l)
                && let Some(io) = kread::<IoIn>(p, 0)
            {
                ev.arg0 = io.offset;
                ev.arg1 = u64::from(io.size) | (u64::from(io.flags) << 32);
            }
        }
        (_, FUSE_OPEN) => {
            if let Some(p) = arg_value(args, l.args_out_args, 0, l)
                && let Some(open) = kread::<OpenOut>(p, 0)
            {
                ev.arg1 = u64::from(open.open_flags);
            }
        }
        (_, FUSE_CREATE) => {
            if let Some(p) = arg_value(args, l.args_out_args, 0, l)
                && let Some(nodeid) = kread::<u64>(p, 0)
            {
                ev.arg0 = nodeid;
            }
            if let Some(p) = arg_value(args, l.args_out_args, 1, l)
                && let Some(open) = kread::<OpenOut>(p, 0)
            {
                ev.arg1 = u64::from(open.open_flags);
            }
        }
        (_, FUSE_INIT) => {
            if let Some(p) = arg_value(args, l.args_out_args, 0, l)
                && let Some(init) = kread::<InitOut>(p, 0)
            {
                // flags at word 3, max_write at word 5, flags2 at word 8.
                ev.arg0 = u64::from(init.words[3]) | (u64::from(init.words[8]) << 32);
                ev.arg1 = u64::from(init.words[5]);
            }
        }
        // How long the attributes may be cached (`attr_timeout`;
        // `fuse_statx_out` begins as `fuse_attr_out` does).
        (_, GETATTR | STATX) => {
            // Diagnosis only (the other views do not show it).
            if ev.error == 0
                && let Some(p) = arg_value(args, l.args_out_args, 0, l)
                && let Some(attr) = kread::<AttrOut>(p, 0)
            {
                ev.arg1 = valid_ms(attr.attr_valid, attr.attr_valid_nsec);
            }
        }
        // The entry a name now stands for (`fuse_entry_out.nodeid`), for
        // user space's table of paths; and how long the entry and its
        // attributes may be cached (`entry_timeout`, `attr_timeout`; for
        // a negative entry, nodeid 0, `negative_timeout`).
        // The node id as every view needs it; the times only while
        // diagnosing.
        _ => {
            let Some(p) = arg_value(args, l.args_out_args, 0, l) else {
                return;
            };
            if let Some(nodeid) = kread::<u64>(p, 0) {
                ev.arg0 = nodeid;
            }
            if l.track_app_io != 0
                && ev.error == 0
                && let Some(v) = kread::<EntryValid>(p + ENTRY_VALID_AT, 0)
            {
                ev.arg1 = valid_ms(v.entry_valid, v.entry_valid_nsec)
                    | (valid_ms(v.attr_valid, v.attr_valid_nsec) << 32);
            }
        }
    }
}

/// Each connection's limits as last reported: `max_write`, `max_read`,
/// `max_pages`, `max_background`, `congestion_threshold`.
#[map]
static LIMITS: HashMap<u32, [u32; 5]> = HashMap::with_max_entries(256, 0);

/// Reports `fc`'s negotiated limits (a `Limits` event) the first time a
/// request of the connection is sent, and again when they have changed
/// (root writes `max_background` in `/sys/fs/fuse/connections/N/`): one
/// map lookup per request, and only while `diagnose` or `record
/// --app-writes` runs (the offsets are read only then).
#[inline(always)]
fn report_limits(connection: u32, fc: u64, l: &KernelLayout) {
    if l.track_app_io == 0 || l.conn_max_write == 0 || GATE.get(0).copied() != Some(1) {
        return;
    }
    // Offset 0: this kernel's `fuse_conn` has no such member (0: unknown).
    let read = |offset: u32| {
        if offset == 0 {
            0
        } else {
            kread::<u32>(fc, offset).unwrap_or(0)
        }
    };
    let now = [
        read(l.conn_max_write),
        read(l.conn_max_read),
        read(l.conn_max_pages),
        read(l.conn_max_background),
        read(l.conn_congestion_threshold),
    ];
    // SAFETY: copied out at once.
    if unsafe { LIMITS.get(&connection) }.copied() == Some(now) {
        return;
    }
    let _ = LIMITS.insert(&connection, &now, 0);
    submit(FuseEvent {
        kind: EventKind::Limits as u8,
        connection,
        arg0: u64::from(now[0]) | (u64::from(now[1]) << 32),
        len: now[2],
        req_pid: now[3],
        req_uid: now[4],
        ..FuseEvent::default()
    });
}

/// An application's write to a FUSE file, between syscall entry and exit.
#[derive(Clone, Copy)]
#[repr(C)]
struct PendingAppWrite {
    enter_ns: u64,
    nodeid: u64,
    pos: u64,
    connection: u32,
    _pad: u32,
}

#[map]
static APP_WRITES: HashMap<u64, PendingAppWrite> = HashMap::with_max_entries(8192, 0);

/// Remembers a write(2)-family call on `file` if it is a FUSE file.
/// `pos` is pwrite64's offset; otherwise the file position is used.
#[inline(always)]
pub fn app_write_enter(file: u64, pos: Option<u64>, l: &KernelLayout) {
    let Some(inode) = kread::<u64>(file, l.file_inode) else {
        return;
    };
    let Some(sb) = kread::<u64>(inode, l.inode_sb) else {
        return;
    };
    if kread::<u64>(sb, l.sb_magic) != Some(FUSE_SUPER_MAGIC) {
        return;
    }
    let Some(connection) = kread::<u32>(sb, l.sb_dev) else {
        return;
    };
    let nodeid = kread::<u64>(inode, l.inode_nodeid).unwrap_or(0);
    let pos = match pos {
        Some(p) => p,
        None => kread::<u64>(file, l.file_pos).unwrap_or(0),
    };
    let pending = PendingAppWrite {
        // SAFETY: no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        nodeid,
        pos,
        connection,
        _pad: 0,
    };
    let _ = APP_WRITES.insert(&bpf_get_current_pid_tgid(), &pending, 0);
}

/// pwrite64(2) entered, with its offset (write(2) and writev(2) reach
/// `app_write_enter` from `syscalls::on_write_enter`, which looks at their
/// file first).
#[inline(always)]
pub(crate) fn on_pwrite_enter(ctx: &TracePointContext) -> u32 {
    let l = layout();
    if l.track_app_io == 0 {
        return 0;
    }
    let (Some(fd), Some(pos)) = (
        tp_field::<u64>(ctx, l.sys_enter_fd),
        tp_field::<u64>(ctx, l.sys_enter_arg3),
    ) else {
        return 0;
    };
    if let Some(file) = fd_file(fd, &l) {
        app_write_enter(file, Some(pos), &l);
    }
    0
}

/// Shared by the write(2)-family exits: reports the finished write.
#[inline(always)]
pub(crate) fn app_write_exit(ctx: &TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let Some(pending) = (unsafe { APP_WRITES.get(&key) }).copied() else {
        return 0;
    };
    let _ = APP_WRITES.remove(&key);
    let l = layout();
    let ret: i64 = tp_field(ctx, l.sys_exit_ret).unwrap_or(0);
    submit(FuseEvent {
        kind: EventKind::AppWrite as u8,
        connection: pending.connection,
        nodeid: pending.nodeid,
        aux_ns: pending.enter_ns,
        arg0: pending.pos,
        len: if ret > 0 { ret as u32 } else { 0 },
        error: if ret < 0 { ret as i32 } else { 0 },
        ..FuseEvent::default()
    });
    0
}
