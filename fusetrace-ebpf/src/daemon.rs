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
//!   end hooks take the kept time (`reply::reply_started`). A write that ends no
//!   request (a notification, an interrupt's answer, a stale id) leaves
//!   its time behind; the thread's next write replaces it, and a request
//!   ended by an abort in that thread is told apart by its error
//!   (`-ECONNABORTED`); one ended in a failed read still takes it, and the
//!   tracker drops a reply earlier than the take (counted as unmatched).

use aya_ebpf::programs::FExitContext;
use fusetrace_common::{EventKind, FuseInHeader, IoVec, KernelLayout, counters};

use crate::{
    aggregate,
    args::{current_tid, fentry_arg, syscall_args},
    filter::daemon_filtered_out,
    fuse::{connection_of, fud_connection, unique_of},
    memory::{kread, uread},
    report::{bump, header_event, submit},
    request::on_request,
};

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
pub(crate) fn on_copy_args(cs: Option<u64>, l: &KernelLayout) {
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
pub(crate) fn on_read_return(ctx: &FExitContext, l: &KernelLayout) {
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
        if let Some(connection) = connection_of::<false>(req) {
            let unique = unique_of::<false>(req);
            aggregate::agg_daemon_point(connection, unique, false, current_tid(), || req);
        }
        return;
    }
    on_request::<false>(EventKind::Taken, Some(req), l, 0);
}
