//! When the reply that ends a request began, where the replied point is
//! hooked in the kernel (`daemon.rs`: `fuse_dev_do_write` entered) or,
//! for the in-kernel aggregation, at the daemon's write(2) or writev(2)
//! on `/dev/fuse` (`syscalls.rs`): the daemon thread's time is kept here,
//! and the request it answers is known only when the kernel ends it,
//! inside the same call and thread. The end hooks of both pipelines take
//! the kept time: the event pipeline's (`request.rs`, one record with
//! [`FLAG_REPLIED`]) and the in-kernel aggregation's (`aggregate.rs`, its
//! replied stage). At the syscall, that spares reading the reply's header
//! from the daemon's memory and finding its request by id: the end has it.
//!
//! The times wait in an array indexed by thread id (`REPLY_AT`): a few
//! inlined instructions each side, where a hash's lookup is a chain of
//! kernel calls (~75 ns each on this project's test host, an AMD machine
//! whose kernel returns through the SRSO "safe RET" thunk). A thread whose
//! entry another thread's unfinished reply holds uses the LRU hash
//! instead, which the ends search only once it was ever used.
//!
//! Its own module, below both the daemon side and the end hooks, so that
//! those import it and not each other.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LruHashMap},
};
use fusetrace_common::{FLAG_REPLIED, FuseEvent, KernelLayout};

use crate::{filter::daemon_filtered_out, maps::GATE, report::submit};

/// `-ECONNABORTED`: what an aborted connection's requests end with.
const ECONNABORTED: i32 = -103;

/// Entries of [`REPLY_AT`]; a power of two.
const REPLY_THREADS: u32 = 4096;

/// A [`REPLY_AT`] entry is one word, so that two threads storing into
/// one entry at once leave one's whole value, never one's id with the
/// other's time: the thread id above `TS_BITS` (ids are below 2^22,
/// `PID_MAX_LIMIT`), the time's low `TS_BITS` bits below, from which the
/// end recovers the time (its reply began less than 2^42 ns, 73 minutes,
/// before). 0: free.
const TS_BITS: u32 = 42;
const TS_MASK: u64 = (1 << TS_BITS) - 1;

/// When each daemon thread began its reply, at `tid % REPLY_THREADS`
/// (`tid << TS_BITS | time's low bits`), until an end in that thread
/// takes it.
#[map]
static REPLY_AT: Array<u64> = Array::with_max_entries(REPLY_THREADS, 0);

/// The threads whose [`REPLY_AT`] entry another thread's unfinished reply
/// held: an entry per such thread, written in place; an LRU, so that
/// threads that exited give their entries up.
#[map]
static REPLY_STARTED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// `[0]`: 1 once a time went to [`REPLY_STARTED`] (ends look there only
/// then).
#[map]
static REPLY_OVERFLOWED: Array<u32> = Array::with_max_entries(1, 0);

/// `GATE[1]` is 1 when the replied point's time is kept here: the replied
/// point hooked in the kernel, or the in-kernel aggregation's at the
/// syscall. Only then do the end hooks look for a kept time.
#[inline(always)]
fn replies_in_kernel() -> bool {
    GATE.get(1).copied() == Some(1)
}

/// The time the current thread began the reply that ends a request now,
/// taken (an end outside a daemon's reply finds none). `error` is the
/// request's: an abort's end is not a reply. `now` gives the time now (the
/// caller's, if it has one), from which a kept time is recovered.
#[inline(always)]
pub(crate) fn reply_started(error: i32, now: impl FnOnce() -> u64) -> Option<u64> {
    if !replies_in_kernel() {
        return None;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // Taken in place (0: none): no delete, and the thread's next write
    // finds its entry to store into.
    let entry = REPLY_AT.get_ptr_mut(tid % REPLY_THREADS)?;
    // SAFETY: a map value. Another thread storing between the read and
    // the clearing loses its time (its stages are counted as missing).
    let ts = unsafe {
        let v = core::ptr::read_volatile(entry);
        if v != 0 && v >> TS_BITS == u64::from(tid) {
            core::ptr::write_volatile(entry, 0);
            let now = now();
            now - (now.wrapping_sub(v) & TS_MASK)
        } else if REPLY_OVERFLOWED.get(0).copied() == Some(1)
            && let Some(slot) = REPLY_STARTED.get_ptr_mut(&tid)
        {
            core::ptr::replace(slot, 0)
        } else {
            0
        }
    };
    (ts != 0 && error != ECONNABORTED).then_some(ts)
}

/// How the event pipeline's end hooks report an end: with the time the
/// reply that ended it began, when the replied point is in the kernel
/// (`FLAG_REPLIED`; one record, not a reply's and an end's).
#[inline(always)]
pub(crate) fn submit_end(mut end: FuseEvent) {
    // SAFETY (the closure): a helper without arguments.
    if let Some(ts) = reply_started(end.error, || unsafe { bpf_ktime_get_ns() }) {
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
    keep_reply_start(bpf_get_current_pid_tgid() as u32);
}

/// Daemon thread `tid` begins a reply now: keep the time for the end it
/// may bring.
#[inline(always)]
pub(crate) fn keep_reply_start(tid: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(entry) = REPLY_AT.get_ptr_mut(tid % REPLY_THREADS) else {
        return;
    };
    // SAFETY: a map value. Two threads that share an entry and begin
    // replies at once on two CPUs may both take it: the one whose value
    // is not left loses its time (its stages are counted as missing).
    unsafe {
        let v = core::ptr::read_volatile(entry);
        if v == 0 || v >> TS_BITS == u64::from(tid) {
            core::ptr::write_volatile(entry, (u64::from(tid) << TS_BITS) | (now & TS_MASK));
            return;
        }
    }
    // Another thread's reply, not yet ended (or one that ended no request).
    if let Some(flag) = REPLY_OVERFLOWED.get_ptr_mut(0) {
        // SAFETY: a map value; every writer stores 1.
        unsafe { *flag = 1 };
    }
    match REPLY_STARTED.get_ptr_mut(&tid) {
        // SAFETY: a map value; only this thread writes its entry.
        Some(slot) => unsafe { *slot = now },
        None => {
            let _ = REPLY_STARTED.insert(&tid, &now, 0);
        }
    }
}
