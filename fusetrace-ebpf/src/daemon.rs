//! The daemon side hooked in the kernel, on kernels with kprobes or fentry
//! (Debian's 6.1 and 6.12, most distributions): no syscall tracepoint, so
//! no tax on every syscall of the machine, no walk of the daemon's fd
//! table, and `splice(2)` transfers decoded like `read(2)`.
//!
//! - **taken**, a request: `fuse_copy_args` entered with a copy state
//!   that writes to the daemon (`cs->write`), which `fuse_dev_do_read`
//!   calls for a request's arguments after its header, for read, readv and
//!   splice alike, with the request in `cs->req`. Not at the read's return
//!   (fexit): a daemon thread already waiting in the read when the hook was
//!   attached returns without passing through it, and its first request
//!   would have no take.
//! - **taken**, FORGET, BATCH_FORGET and INTERRUPT (fentry kernels): they
//!   carry no request and copy no arguments; `fuse_dev_do_read` returning
//!   (fexit) with no request in the copy state gave one, whose header is read
//!   where read(2) or readv(2) put it in the daemon's memory (a spliced one
//!   is counted, not decoded). Such a message that a thread was already
//!   waiting for when tracing began is not seen (see above). With kprobes
//!   a kretprobe would cost a second, slower program on every take: they
//!   are not seen there at all (the tracer says so).
//! - **replied**: `fuse_dev_do_write` entered (write, writev or splice
//!   of a reply): the thread's time is kept, and the request it answers
//!   is known when the kernel ends it, inside the same call and thread
//!   (`fuse_request_end`, with the reply's header in `req->out.h`). The
//!   end hooks take the kept time (`reply_started`). A write that ends no
//!   request (a notification, an interrupt's answer, a stale id) leaves
//!   its time behind; the thread's next write replaces it, and a request
//!   ended by an abort in that thread is told apart by its error
//!   (`-ECONNABORTED`); one ended in a failed read still takes it, and the
//!   tracker drops a reply earlier than the take (counted as unmatched).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext, ProbeContext},
};
use fusetrace_common::{
    EventKind, FLAG_REPLIED, FuseEvent, FuseInHeader, IoVec, KernelLayout, counters,
};

use crate::{
    GATE, aggregate, bump, daemon_filtered_out, fentry_arg, fud_connection, header_event,
    kprobe_arg, kread, layout, on_request, submit, syscall_args, uread,
};

/// `-ECONNABORTED`: what an aborted connection's requests end with.
const ECONNABORTED: i32 = -103;

/// When each daemon thread entered `fuse_dev_do_write`, until an end in
/// that thread takes it (0: taken). An entry per daemon thread, written in
/// place; an LRU, so that threads that exited give their entries up.
#[map]
static REPLY_STARTED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// `GATE[1]` is 1 when the replied point is `replied_write_*`: only then
/// do the end hooks look for a kept time.
#[inline(always)]
fn replies_in_kernel() -> bool {
    GATE.get(1).copied() == Some(1)
}

/// The time the current thread began the reply that ends a request now,
/// taken (an end outside a daemon's reply finds none). `error` is the
/// request's: an abort's end is not a reply.
#[inline(always)]
pub(crate) fn reply_started(error: i32) -> Option<u64> {
    if !replies_in_kernel() {
        return None;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // Taken in place (0: none): a lookup, no delete, and the thread's
    // next write finds its entry to store into.
    let slot = REPLY_STARTED.get_ptr_mut(&tid)?;
    // SAFETY: a map value; only this thread writes its entry.
    let ts = unsafe { core::ptr::replace(slot, 0) };
    (ts != 0 && error != ECONNABORTED).then_some(ts)
}

/// How the event pipeline's end hooks report an end: with the time the
/// reply that ended it began, when the replied point is in the kernel
/// (`FLAG_REPLIED`; one record, not a reply's and an end's).
#[inline(always)]
pub(crate) fn submit_end(mut end: FuseEvent) {
    if let Some(ts) = reply_started(end.error) {
        end.aux_ns = ts;
        end.flags |= FLAG_REPLIED;
    }
    submit(end);
}

/// The copy state's `write` flag: true when copying to the daemon through
/// `/dev/fuse` (not into an io_uring entry's buffer: `is_uring`).
#[inline(always)]
fn copying_to_daemon(cs: u64, l: &KernelLayout) -> bool {
    let to_daemon =
        kread::<u8>(cs, l.cs_write_byte).is_some_and(|b| u32::from(b) & l.cs_write_mask != 0);
    to_daemon
        && (l.cs_uring_mask == 0
            || kread::<u8>(cs, l.cs_uring_byte)
                .is_some_and(|b| u32::from(b) & l.cs_uring_mask == 0))
}

#[inline(always)]
fn on_copy_args(cs: Option<u64>, l: &KernelLayout) {
    let Some(cs) = cs else { return };
    if !copying_to_daemon(cs, l) || daemon_filtered_out(l) {
        return;
    }
    if let Some(req) = kread::<u64>(cs, l.cs_req).filter(|r| *r != 0) {
        on_taken_request(req, l);
    }
}

/// `fuse_dev_do_read` gave the daemon `ret` bytes: with no request in the
/// copy state, a FORGET, BATCH_FORGET or INTERRUPT (in the daemon's buffer).
#[inline(always)]
fn on_read_return(ctx: &FExitContext, l: &KernelLayout) {
    let ret = fentry_arg(ctx, l.arg_read_ret).unwrap_or(0) as i64;
    if ret < core::mem::size_of::<FuseInHeader>() as i64 || daemon_filtered_out(l) {
        return;
    }
    let Some(cs) = fentry_arg(ctx, l.arg_read_cs) else {
        return;
    };
    // A request: taken at `fuse_copy_args`. Other messages are not
    // counted in the kernel.
    if kread::<u64>(cs, l.cs_req).is_none_or(|r| r != 0) || l.agg_stages != 0 {
        return;
    }
    let Some([_, arg, _, nr]) = syscall_args(l) else {
        return;
    };
    let nr = nr as u32;
    let buf = if nr == l.nr_read || nr == l.nr_pread64 {
        arg
    } else if nr == l.nr_readv || nr == l.nr_preadv || nr == l.nr_preadv2 {
        match uread::<IoVec>(arg) {
            Some(iov) => iov.base,
            None => return,
        }
    } else {
        // splice(2): the message went to a pipe's pages.
        bump(counters::SPLICE_TRANSFERS);
        return;
    };
    let connection = fentry_arg(ctx, l.arg_read_fud).and_then(|fud| fud_connection(fud, l));
    match (connection, uread::<FuseInHeader>(buf)) {
        (Some(connection), Some(h)) => submit(header_event(EventKind::Taken, connection, 0, &h)),
        _ => bump(counters::READ_FAULTS),
    }
}

/// A daemon took request `req`.
#[inline(always)]
fn on_taken_request(req: u64, l: &KernelLayout) {
    if l.agg_stages != 0 {
        if let Some(connection) = aggregate::connection_of::<false>(req) {
            let unique = aggregate::unique_of::<false>(req);
            aggregate::agg_daemon_point(connection, unique, false, || req);
        }
        return;
    }
    on_request(EventKind::Taken, Some(req), l, 0);
}

#[inline(always)]
fn on_dev_write(l: &KernelLayout) {
    if GATE.get(0).copied() != Some(1) || daemon_filtered_out(l) {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    match REPLY_STARTED.get_ptr_mut(&tid) {
        // SAFETY: a map value; only this thread writes its entry.
        Some(slot) => unsafe { *slot = now },
        None => {
            let _ = REPLY_STARTED.insert(&tid, &now, 0);
        }
    }
}

#[fentry]
pub fn taken_copy_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    on_copy_args(fentry_arg(&ctx, l.arg_copy_cs), &l);
    0
}

#[fexit]
pub fn taken_read_fx(ctx: FExitContext) -> u32 {
    on_read_return(&ctx, &layout());
    0
}

#[kprobe]
pub fn taken_copy_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_copy_args(kprobe_arg(&ctx, &l, l.arg_copy_cs), &l);
    0
}

#[fentry]
pub fn replied_write_fe(_ctx: FEntryContext) -> u32 {
    on_dev_write(&layout());
    0
}

#[kprobe]
pub fn replied_write_kp(_ctx: ProbeContext) -> u32 {
    on_dev_write(&layout());
    0
}
