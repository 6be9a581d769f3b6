//! The request's own path in the kernel, for the event pipeline: the
//! caller's submission (`submitted`), its send to the daemon or the
//! virtqueue (`sent`, `virtq`) and its end (`ended`), each read off the
//! `struct fuse_req *` (header, flags, connection) the hook is given; or,
//! with the plain `fuse:*` tracepoints, off the record they carry.
//!
//! A send also carries the request's names (`names.rs`) and READ/WRITE
//! arguments (`diagnose.rs`); an end, the time its reply began where the
//! replied point is in the kernel (`reply.rs`).
//!
//! `DIRECT` (the `tp_btf` hooks): the request's header, flags, connection
//! and reply header are plain loads through the typed pointer the
//! tracepoint gives, as the in-kernel aggregation reads them, instead of
//! a `bpf_probe_read_kernel` call each: eleven calls a request fewer on a
//! kernel whose every call and return is dear (see `aggregate.rs`).

use core::mem::offset_of;

use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap, programs::TracePointContext,
};
use fusetrace_common::{
    EventKind, FLAG_BACKGROUND, FUSE_INIT, FuseEvent, FuseInHeader, FuseOutHeader, KernelLayout,
    counters,
};

use crate::{
    args::tp_field,
    daemons, diagnose,
    maps::{GATE, ID_LATE},
    memory::{kread, layout, load},
    names,
    reply::submit_end,
    report::{bump, header_event, submit},
};

/// Submissions not yet sent, keyed by `struct fuse_args *` (the request is
/// allocated later, inside the submitting function): the submit time.
#[map]
static SUBMITTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Reads what a `struct fuse_req *` says about itself.
#[inline(always)]
fn request_event<const DIRECT: bool>(
    kind: EventKind,
    req: u64,
    l: &KernelLayout,
) -> Option<FuseEvent> {
    let h: FuseInHeader = if DIRECT {
        // Field by field: each load is checked against its member's type.
        let field = |offset: usize| l.req_in_h + offset as u32;
        FuseInHeader {
            len: load::<u32, true>(req, field(offset_of!(FuseInHeader, len)))?,
            opcode: load::<u32, true>(req, field(offset_of!(FuseInHeader, opcode)))?,
            unique: load::<u64, true>(req, field(offset_of!(FuseInHeader, unique)))?,
            nodeid: load::<u64, true>(req, field(offset_of!(FuseInHeader, nodeid)))?,
            uid: load::<u32, true>(req, field(offset_of!(FuseInHeader, uid)))?,
            pid: load::<u32, true>(req, field(offset_of!(FuseInHeader, pid)))?,
            ..FuseInHeader::default()
        }
    } else {
        kread(req, l.req_in_h)?
    };
    let flags: u64 = load::<_, DIRECT>(req, l.req_flags)?;
    let chan: u64 = load::<_, DIRECT>(req, l.req_chan)?;
    let fc: u64 = load::<_, DIRECT>(chan, l.chan_conn)?;
    let connection: u32 = load::<_, DIRECT>(fc, l.conn_dev)?;
    let mut ev = header_event(kind, connection, req, &h);
    if flags & (1u64 << (l.fr_background_bit & 63)) != 0 {
        ev.flags |= FLAG_BACKGROUND;
    }
    if kind == EventKind::Ended {
        let out: FuseOutHeader = if DIRECT {
            let field = |offset: usize| l.req_out_h + offset as u32;
            FuseOutHeader {
                len: load::<u32, true>(req, field(offset_of!(FuseOutHeader, len)))?,
                error: load::<i32, true>(req, field(offset_of!(FuseOutHeader, error)))?,
                ..FuseOutHeader::default()
            }
        } else {
            kread(req, l.req_out_h)?
        };
        ev.error = out.error;
        ev.len = out.len;
    }
    diagnose::request_args(&mut ev, kind, req, fc, l);
    Some(ev)
}

/// `fuse_request_end` (`tp_btf`): the request ends.
#[inline(always)]
pub(crate) fn on_ended(req: u64, l: &KernelLayout) {
    match request_event::<true>(EventKind::Ended, req, l) {
        Some(ev) => submit_end(ev),
        None => bump(counters::READ_FAULTS),
    }
}

#[inline(always)]
pub(crate) fn on_submitted(args: Option<u64>) {
    if let Some(args) = args {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = SUBMITTED.insert(&args, &now, 0);
    }
}

#[inline(always)]
pub(crate) fn on_request<const DIRECT: bool>(
    kind: EventKind,
    req: Option<u64>,
    l: &KernelLayout,
    aux_ns: u64,
) {
    match req.and_then(|req| request_event::<DIRECT>(kind, req, l)) {
        Some(mut ev) => {
            ev.aux_ns = aux_ns;
            if kind == EventKind::Sent {
                note_sent_id(ev.unique);
                if ev.opcode == FUSE_INIT {
                    daemons::expect_daemon();
                }
                if let Some(req) = req
                    && names::submit_sent(&mut ev, req, l)
                {
                    return;
                }
            } else if kind == EventKind::Ended {
                return submit_end(ev);
            }
            submit(ev)
        }
        None => bump(counters::READ_FAULTS),
    }
}

/// The request is queued for the daemon (or the virtqueue): joins the
/// submission that created it, where the submissions are hooked.
#[inline(always)]
pub(crate) fn on_sent<const DIRECT: bool>(req: Option<u64>, l: &KernelLayout) {
    let mut submitted = 0;
    if GATE.get(2).copied() == Some(1)
        && let Some(args) = req.and_then(|r| kread::<u64>(r, l.req_args))
    {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(ts) = unsafe { SUBMITTED.get(&args) } {
            submitted = *ts;
            let _ = SUBMITTED.remove(&args);
        }
    }
    on_request::<DIRECT>(EventKind::Sent, req, l, submitted);
}

/// Counts a send whose request id is not assigned yet, and turns on the
/// daemon takes' lookup of their request (see `syscalls::taken_request`).
#[inline(always)]
fn note_sent_id(unique: u64) {
    if unique != 0 || GATE.get(0).copied() != Some(1) {
        return;
    }
    bump(counters::SENT_BEFORE_ID);
    if let Some(flag) = ID_LATE.get_ptr_mut(0) {
        // SAFETY: a map value; every writer stores the same 1.
        unsafe { *flag = 1 };
    }
}

/// The send as the plain `fuse:fuse_request_send` tracepoint's record
/// tells it: no request header.
#[inline(always)]
pub(crate) fn sent_from_record(ctx: &TracePointContext) {
    let l = layout();
    let ev = FuseEvent {
        kind: EventKind::Sent as u8,
        connection: tp_field(ctx, l.tp_send_connection).unwrap_or(0),
        unique: tp_field(ctx, l.tp_send_unique).unwrap_or(0),
        opcode: tp_field(ctx, l.tp_send_opcode).unwrap_or(0),
        len: tp_field(ctx, l.tp_send_len).unwrap_or(0),
        ..FuseEvent::default()
    };
    note_sent_id(ev.unique);
    if ev.opcode == FUSE_INIT {
        daemons::expect_daemon();
    }
    submit(ev);
}

/// The end as the plain `fuse:fuse_request_end` tracepoint's record tells it.
#[inline(always)]
pub(crate) fn ended_from_record(ctx: &TracePointContext) {
    let l = layout();
    let ev = FuseEvent {
        kind: EventKind::Ended as u8,
        connection: tp_field(ctx, l.tp_end_connection).unwrap_or(0),
        unique: tp_field(ctx, l.tp_end_unique).unwrap_or(0),
        len: tp_field(ctx, l.tp_end_len).unwrap_or(0),
        error: tp_field(ctx, l.tp_end_error).unwrap_or(0),
        ..FuseEvent::default()
    };
    submit_end(ev);
}
