//! FUSE over io_uring (Linux 6.14+): the daemon side of requests that go
//! through a ring instead of read(2)/write(2) on `/dev/fuse`.
//!
//! The kernel has no FUSE tracepoint on that path and this host has no
//! kprobes or fentry, so the two daemon-side points are read off io_uring's
//! own tracepoints, through BTF offsets (`LAYOUT.uring_*`):
//!
//! * **taken**: `io_uring_complete` posting the completion of a FUSE
//!   `IORING_OP_URING_CMD` (REGISTER or COMMIT_AND_FETCH) with result 0:
//!   the kernel has just copied a request into that ring entry. The entry
//!   (`struct fuse_ring_ent`, which FUSE keeps in the command's `pdu`) names
//!   the `struct fuse_req *`, so the event carries the same header and
//!   pointer as a send.
//! * **replied**: `io_uring_submit_req` of a COMMIT_AND_FETCH: the daemon
//!   hands its reply over. The request id is the command's `commit_id`; the
//!   connection comes from the submission's file (by descriptor, or through
//!   the ring's registered files), which io_uring has not attached to the
//!   request yet at this point.
//!
//! Both tracepoints fire for every io_uring user on the machine; anything
//! that is not a FUSE ring command leaves after one or two loads.
//!
//! `transports` is a `task_file` iterator for `doctor`: every open
//! `/dev/fuse` file, with whether its connection serves requests through a
//! ring.

use aya_ebpf::helpers::generated::bpf_seq_write;
use fusetrace_common::{
    DevFuseFile, EventKind, FLAG_URING, FuseEvent, FuseInHeader, FuseOutHeader, IoVec,
    KernelLayout, counters,
};

use crate::{
    aggregate,
    args::current_tid,
    filter::daemon_filtered_out,
    fuse::{dev_fuse_connection, dev_fuse_open, fd_file},
    memory::{kread, layout, uread},
    report::{bump, header_event, submit},
};

/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (`enum fuse_uring_cmd`, user ABI).
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct io_uring_sqe` (user ABI): `flags`, `fd`, `addr`, and the
/// command area (`cmd`) where `struct fuse_uring_cmd_req` puts `commit_id`
/// after its `u64 flags`.
const SQE_FLAGS: u32 = 1;
const SQE_FD: u32 = 4;
const SQE_ADDR: u32 = 16;
const SQE_CMD_COMMIT_ID: u32 = 48 + 8;
/// `IOSQE_FIXED_FILE`: `fd` indexes the ring's registered files.
const IOSQE_FIXED_FILE: u8 = 1 << 0;
/// `offsetof(struct io_uring_cqe, res)` (user ABI).
const CQE_RES: u32 = 8;
/// Flag bits io_uring keeps in the low bits of a registered file pointer
/// (`FFS_NOWAIT`, `FFS_ISREG`).
const FFS_FLAGS: u64 = 0x3;

/// Whether `req` (a `struct io_kiocb *`) is an io_uring command (on any
/// file: callers check it is `/dev/fuse`).
#[inline(always)]
fn is_fuse_cmd(req: u64, l: &KernelLayout) -> bool {
    l.uring_on != 0
        && req != 0
        && kread::<u8>(req, l.kiocb_opcode).map(u32::from) == Some(l.uring_cmd_opcode)
}

#[inline(always)]
pub(crate) fn on_complete(req: u64, cqe: u64) {
    let l = layout();
    if !is_fuse_cmd(req, l) || daemon_filtered_out(l) {
        return;
    }
    // An error completion hands no request over (teardown, cancel).
    if kread::<i32>(cqe, CQE_RES) != Some(0) {
        return;
    }
    let Some(file) = kread::<u64>(req, l.ucmd_file) else {
        return;
    };
    let Some(connection) = dev_fuse_connection(file, l) else {
        return;
    };
    let Some(ent) = kread::<u64>(req, l.ucmd_pdu) else {
        return;
    };
    let freq: u64 = kread(ent, l.ring_ent_req).unwrap_or(0);
    if freq == 0 {
        return;
    }
    let Some(h) = kread::<FuseInHeader>(freq, l.req_in_h) else {
        bump(counters::READ_FAULTS);
        return;
    };
    if l.agg_stages != 0 {
        aggregate::agg_daemon_point(connection, h.unique, false, current_tid(), || freq);
        return;
    }
    let qid: u32 = kread::<u64>(ent, l.ring_ent_queue)
        .and_then(|q| kread(q, l.ring_queue_qid))
        .unwrap_or(u32::MAX);
    let mut ev = header_event(EventKind::Taken, connection, freq, &h);
    ev.flags |= FLAG_URING;
    ev.arg0 = u64::from(qid);
    submit(ev);
}

#[inline(always)]
pub(crate) fn on_submit(req: u64) {
    let l = layout();
    if !is_fuse_cmd(req, l) || daemon_filtered_out(l) {
        return;
    }
    if kread::<u32>(req, l.ucmd_cmd_op) != Some(CMD_COMMIT_AND_FETCH) {
        return;
    }
    let sqe: u64 = kread(req, l.ucmd_sqe).unwrap_or(0);
    if sqe == 0 {
        return;
    }
    let (Some(flags), Some(fd), Some(unique)) = (
        kread::<u8>(sqe, SQE_FLAGS),
        kread::<i32>(sqe, SQE_FD),
        kread::<u64>(sqe, SQE_CMD_COMMIT_ID),
    ) else {
        bump(counters::READ_FAULTS);
        return;
    };
    let file = if flags & IOSQE_FIXED_FILE != 0 {
        registered_file(req, fd as u32, l)
    } else {
        fd_file(fd as u64, l)
    };
    let Some(connection) = file.and_then(|f| dev_fuse_connection(f, l)) else {
        bump(counters::URING_UNRESOLVED);
        return;
    };
    if l.agg_stages != 0 {
        aggregate::agg_daemon_point(connection, unique, true, current_tid(), || 0);
        return;
    }
    // The reply header the daemon wrote at the start of the entry's header
    // buffer (`fuse_uring_req_header.in_out`), the first of the two iovecs
    // the command's `addr` points to.
    let header = kread::<u64>(sqe, SQE_ADDR)
        .and_then(uread::<IoVec>)
        .and_then(|iov| uread::<FuseOutHeader>(iov.base));
    let (error, len) = header.map_or((0, 0), |h| (h.error, h.len));
    submit(FuseEvent {
        kind: EventKind::Replied as u8,
        flags: FLAG_URING,
        connection,
        unique,
        error,
        len,
        ..FuseEvent::default()
    });
}

/// The `struct file *` registered at `index` in the ring of `req`.
#[inline(always)]
fn registered_file(req: u64, index: u32, l: &KernelLayout) -> Option<u64> {
    let ctx: u64 = kread(req, l.kiocb_ctx)?;
    let nr: u32 = kread(ctx, l.ctx_files_nr)?;
    if index >= nr {
        return None;
    }
    let nodes: u64 = kread(ctx, l.ctx_files_nodes)?;
    let node: u64 = kread(nodes, index * 8)?;
    if node == 0 {
        return None;
    }
    let ptr: u64 = kread(node, l.rsrc_node_file)?;
    match ptr & !FFS_FLAGS {
        0 => None,
        file => Some(file),
    }
}

/// `iter/task_file` (`transports`): one [`DevFuseFile`] per open
/// `/dev/fuse` file of any task (threads share the table; user space keeps
/// one per process).
/// The context is `struct bpf_iter__task_file { meta; task; u32 fd; file; }`.
#[inline(always)]
pub(crate) fn dev_fuse_file(ctx: *mut core::ffi::c_void) -> i32 {
    let l = layout();
    // SAFETY: context loads at constant offsets, which the verifier checks
    // against the iterator's BTF; the pointers are checked before use.
    let (meta, task, fd, file) = unsafe {
        let base = ctx as *const u64;
        (
            core::ptr::read_volatile(base),
            core::ptr::read_volatile(base.add(1)),
            core::ptr::read_volatile(base.add(2) as *const u32),
            core::ptr::read_volatile(base.add(3)),
        )
    };
    if meta == 0 || task == 0 || file == 0 {
        return 0;
    }
    let Some((connection, fud)) = dev_fuse_open(file, l) else {
        return 0;
    };
    let mut out = DevFuseFile {
        tgid: kread(task, l.task_tgid).unwrap_or(0),
        fd,
        connection,
        comm: kread(task, l.task_comm).unwrap_or_default(),
        file,
        fud,
        fops: kread(file, l.file_f_op).unwrap_or(0),
        ..DevFuseFile::default()
    };
    if l.uring_on != 0 {
        let ring: u64 = kread::<u64>(fud, l.dev_chan)
            .and_then(|chan: u64| kread(chan, l.chan_ring))
            .unwrap_or(0);
        if ring != 0 {
            out.ring_ready = u32::from(kread::<u8>(ring, l.ring_ready).unwrap_or(0) != 0);
            out.ring_queues = kread(ring, l.ring_nr_queues).unwrap_or(0);
        }
    }
    // SAFETY: `meta` is the iterator's `struct bpf_iter_meta *`, whose
    // first field is the `struct seq_file *` the helper writes to.
    unsafe {
        let seq = core::ptr::read_volatile(meta as *const u64);
        bpf_seq_write(
            seq as *mut _,
            &out as *const DevFuseFile as *const core::ffi::c_void,
            core::mem::size_of::<DevFuseFile>() as u32,
        );
    }
    0
}
