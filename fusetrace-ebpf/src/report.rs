//! How programs report: one [`FuseEvent`] per observation into the
//! `EVENTS` ring buffer, stamped with the time and the current task, and
//! counts of what could not be reported or decoded into `COUNTERS`.
//! Nothing is reported while `GATE[0]` is closed (see `maps.rs`).

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FuseEvent, FuseInHeader, counters};

use crate::{
    filter::wanted_cgroup,
    maps::{COUNTERS, EVENTS, GATE},
};

#[inline(always)]
pub(crate) fn bump(counter: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
}

/// Fills the fields every event has; false while the gate is closed.
#[inline(always)]
pub(crate) fn stamp(ev: &mut FuseEvent) -> bool {
    if GATE.get(0).copied() != Some(1) {
        return false;
    }
    // `-c`: only the command's sends (its other points are kept out in
    // user space, by the sends that came).
    if ev.kind == EventKind::Sent as u8 && !wanted_cgroup() {
        return false;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    // Only the requester's command is shown (daemon threads go by tid).
    if ev.kind == EventKind::Sent as u8 || ev.kind == EventKind::AppWrite as u8 {
        ev.comm = bpf_get_current_comm().unwrap_or_default();
    }
    true
}

/// Fills the fields every event has and submits it; counts a drop when the
/// ring buffer is full.
#[inline(always)]
pub(crate) fn submit(mut ev: FuseEvent) {
    if !stamp(&mut ev) {
        return;
    }
    write_to_ring(ev);
}

/// Writes `ev` as it is (stamped already) into the ring buffer; a full
/// ring buffer is counted.
#[inline(always)]
pub(crate) fn write_to_ring(ev: FuseEvent) {
    match EVENTS.reserve::<FuseEvent>(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(0);
        }
        None => bump(counters::RING_DROPS),
    }
}

/// An event carrying a request header (`struct fuse_in_header`, from the
/// kernel's request or the daemon's buffer).
#[inline(always)]
pub(crate) fn header_event(
    kind: EventKind,
    connection: u32,
    req: u64,
    h: &FuseInHeader,
) -> FuseEvent {
    FuseEvent {
        kind: kind as u8,
        flags: FLAG_HAS_HEADER,
        connection,
        req,
        unique: h.unique,
        opcode: h.opcode,
        nodeid: h.nodeid,
        req_pid: h.pid,
        req_uid: h.uid,
        len: h.len,
        ..FuseEvent::default()
    }
}
