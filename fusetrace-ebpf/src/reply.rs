//! When the reply that ends a request began, where the replied point is
//! hooked in the kernel (`daemon.rs`: `fuse_dev_do_write` entered): the
//! daemon thread's time is kept here, and the request it answers is
//! known only when the kernel ends it, inside the same call and thread.
//! The end hooks of both pipelines take the kept time: the event
//! pipeline's (`request.rs`, one record with [`FLAG_REPLIED`]) and the
//! in-kernel aggregation's (`aggregate.rs`, its replied stage).
//!
//! Its own module, below both the daemon side and the end hooks, so that
//! those import it and not each other.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::LruHashMap,
};
use fusetrace_common::{FLAG_REPLIED, FuseEvent, KernelLayout};

use crate::{filter::daemon_filtered_out, maps::GATE, report::submit};

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

/// A daemon thread entered `fuse_dev_do_write`: keep the time for the end
/// this write may bring.
#[inline(always)]
pub(crate) fn on_dev_write(l: &KernelLayout) {
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
