//! In-kernel aggregation for `fusetrace stats`: latency histograms per
//! (connection, opcode) counted where the request ends, so a request costs
//! two small programs and no ring buffer record, wakeup or user-space work.
//!
//! The send time waits in a slot chosen by the request's id (`unique`,
//! sequential per connection, mixed with the connection), so one
//! connection's requests in flight take distinct slots; a request whose
//! slot is taken waits in the `AGG_SENT` hash (keyed by `struct fuse_req *`)
//! instead. A slot is two entries of two arrays: `AGG_SLOTS` the request
//! it holds (one word), `AGG_SLOT_SENT` what its send kept (a cache line):
//! a scan from user space (`top`'s frames, `serve`'s scrapes) reads 2 MiB
//! of words to find the few slots in use, instead of 18 MiB of slots.
//! The end finds it by its `struct fuse_req *` and bumps one
//! histogram cell (four with `--stages`). Array slots cost no hashing,
//! locking or allocation, which is most of what a hash update and delete
//! cost per request.
//!
//! The cells, likewise, live in an array (`AGG_CELL_TABLE`), a small open
//! addressing table of our own per CPU, and only those it has no room for
//! in the per-CPU hash (`AGG_HISTOGRAMS`). Hand-rolled because each hash
//! lookup is a chain of kernel calls (hash, bucket walk, compare), which
//! measured ~75 ns a cell on the project's test host (an AMD machine whose
//! kernel returns through the SRSO "safe RET" thunk), four per request
//! with `--stages`; the table's are inlined loads.

use core::mem::offset_of;

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuHashMap},
};
use fusetrace_common::{
    AGG_CELLS, AGG_GENERATION_SLOTS, AGG_IN_FLIGHT, AGG_IN_FLIGHT_BITS, AGG_MAX_COMMS,
    AGG_MAX_GENERATIONS, AGG_OVERFLOW, AGG_SLOT_CLAIMED, AGG_TABLE_PROBES, AGG_TABLE_SLOTS,
    AggSent, CellCounts, CellSlot, EventKind, FLAG_BACKGROUND, FLAG_HAS_HEADER, FUSE_INIT,
    FuseEvent, FuseInHeader, FuseOutHeader, HistogramKey, agg_stage, cell_table_hash, counters,
    latency_bucket,
};

use crate::{
    daemons,
    filter::wanted_cgroup,
    fuse::{connection_of, unique_of},
    maps::{GATE, LAYOUT},
    memory::{layout_field, load},
    reply::reply_started,
    report::{bump, write_to_ring},
};

/// `BPF_F_MMAPABLE`: user space maps the array to read it in one pass.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Requests in flight, one per slot (`slot_of`): the `struct fuse_req *`
/// the slot holds (0: free; [`AGG_SLOT_CLAIMED`]: being filled). Written
/// last by the send, cleared first by the end. Mappable: `top` and `serve`
/// scan it for the slots in use without a syscall per slot.
#[map]
static AGG_SLOTS: Array<u64> = Array::with_max_entries(AGG_IN_FLIGHT, BPF_F_MMAPABLE);

/// What the send of the request in the same `AGG_SLOTS` entry kept, and
/// the daemon's points stamped since. Mappable: read where a slot is in use.
#[map]
static AGG_SLOT_SENT: Array<Sent> = Array::with_max_entries(AGG_IN_FLIGHT, BPF_F_MMAPABLE);

/// `top`: requests whose total is at least this (ns) are sent whole to
/// the ring buffer besides being counted (`agg_records`); user space moves
/// it while tracing (u64::MAX: none).
#[map]
static AGG_RECORD_MIN: Array<u64> = Array::with_max_entries(1, 0);

/// INITs sent per connection number since loading: the generation of the
/// mount that holds the number now (see `HistogramKey::generation`), for
/// the connections whose `AGG_GENERATION_FAST` entry another one had.
#[map]
static AGG_GENERATIONS: HashMap<u32, u32> = HashMap::with_max_entries(AGG_MAX_GENERATIONS, 0);

/// Most connections' generations (see `generation_slot`): an array, so
/// the lookup each end makes costs no call or hash.
#[map]
static AGG_GENERATION_FAST: Array<u64> = Array::with_max_entries(AGG_GENERATION_SLOTS, 0);

/// Requests in flight whose slot was taken, keyed by `struct fuse_req *`.
/// A plain hash, not an LRU: a request is never forgotten silently; a full
/// table is counted (`AGG_TABLE_FULL`).
#[map]
static AGG_SENT: HashMap<u64, Sent> = HashMap::with_max_entries(AGG_OVERFLOW, 0);

type Sent = AggSent;

/// Slot `i`: its request word and its send's record (`None` past the
/// arrays, which the index never is).
#[inline(always)]
fn slot(i: u32) -> Option<(*mut u64, *mut Sent)> {
    Some((AGG_SLOTS.get_ptr_mut(i)?, AGG_SLOT_SENT.get_ptr_mut(i)?))
}

/// The slot of request `req` of `connection`: ids step by two, and the
/// connection's Fibonacci hash moves each connection's run of ids to its
/// own place. (The pointer itself cannot be hashed: the verifier allows no
/// arithmetic on a typed pointer but addition.)
#[inline(always)]
fn slot_of(unique: u64, connection: u32) -> u32 {
    let mix = (connection as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - AGG_IN_FLIGHT_BITS);
    ((unique >> 1) as u32 ^ mix as u32) & (AGG_IN_FLIGHT - 1)
}

/// Request counts and latency sums per histogram cell, each CPU's in its
/// own region (see `CellSlot`). Mappable: user space reads it in one pass
/// and frees a retired mount's slots in place.
#[map]
static AGG_CELL_TABLE: Array<CellSlot> = Array::with_max_entries(AGG_TABLE_SLOTS, BPF_F_MMAPABLE);

/// The cells the table has no room for: request counts and latency sums,
/// per CPU (no atomics on the hot path).
#[map]
static AGG_HISTOGRAMS: PerCpuHashMap<HistogramKey, CellCounts> =
    PerCpuHashMap::with_max_entries(AGG_CELLS, 0);

#[inline(always)]
fn open() -> bool {
    GATE.get(0).copied() == Some(1)
}

/// The task sending a request, and whether it is the request's
/// requester as user space decides it (the event pipeline's tracker): the
/// header names this thread, or names nobody and the request is not a
/// background one. So `stats -p/--comm` count what `trace -p/--comm` show.
#[derive(Clone, Copy, Default)]
struct Sender {
    tgid: u32,
    tid: u32,
    header_pid: u32,
    is_requester: bool,
}

#[inline(always)]
fn sender<const DIRECT: bool>(req: u64) -> Sender {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let header_pid = load::<u32, DIRECT>(
        req,
        layout_field!(req_in_h) + offset_of!(FuseInHeader, pid) as u32,
    )
    .unwrap_or(0);
    let is_requester = if header_pid != 0 {
        header_pid == tid
    } else {
        let flags = load::<u64, DIRECT>(req, layout_field!(req_flags)).unwrap_or(0);
        flags & (1u64 << (layout_field!(fr_background_bit) & 63)) == 0
    };
    Sender {
        tgid,
        tid,
        header_pid,
        is_requester,
    }
}

/// Whether `stats -p` wants the request being sent: one of the pids is
/// the requester named in the header, or the sending task (thread or
/// process) when that is the requester.
#[inline(always)]
fn wanted_requester(s: &Sender) -> bool {
    let n = layout_field!(agg_pid_count) as usize;
    if n == 0 {
        return true;
    }
    let pids = layout_field!(agg_pids);
    for (i, p) in pids.iter().enumerate() {
        if i < n && (*p == s.header_pid || (s.is_requester && (*p == s.tgid || *p == s.tid))) {
            return true;
        }
    }
    false
}

/// Whether `stats --comm` wants the request being sent: the sending task
/// is its requester and its command name is one of the names. A
/// background request sent from another context (a flusher writing back
/// pages, a daemon thread whose reply let a queued one go) has no
/// requester comm and is left out.
#[inline(always)]
fn wanted_comm(s: &Sender) -> bool {
    let n = layout_field!(agg_comm_count) as usize;
    if n == 0 {
        return true;
    }
    if !s.is_requester {
        return false;
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    // Two u64 compares per name instead of sixteen byte compares.
    // SAFETY: 16 bytes read as two u64s.
    let have: [u64; 2] = unsafe { core::ptr::read_unaligned(comm.as_ptr().cast()) };
    for i in 0..AGG_MAX_COMMS {
        if i >= n {
            break;
        }
        // One name at a time: the whole table would not fit the stack.
        // SAFETY: see `layout`; `i` is in bounds.
        let want = unsafe { core::ptr::read_volatile(&LAYOUT.agg_comms[i]) };
        if want == have {
            return true;
        }
    }
    false
}

/// Whether `stats --mount` wants the connection (a few compares against
/// read-only data, no map lookup).
#[inline(always)]
fn wanted_connection(connection: u32) -> bool {
    let n = layout_field!(agg_connection_count) as usize;
    if n == 0 {
        return true;
    }
    let wanted = layout_field!(agg_connections);
    for (i, c) in wanted.iter().enumerate() {
        if i < n && *c == connection {
            return true;
        }
    }
    false
}

/// The request is queued: remember when, if the filters want it.
#[inline(always)]
pub(crate) fn agg_send<const DIRECT: bool>(req: Option<u64>) {
    let Some(req) = req else { return };
    if !open() {
        return;
    }
    // Before the filters: a mount is numbered whoever mounts it.
    let opcode = load::<u32, DIRECT>(
        req,
        layout_field!(req_in_h) + offset_of!(FuseInHeader, opcode) as u32,
    );
    if opcode == Some(FUSE_INIT)
        && let Some(connection) = connection_of::<DIRECT>(req)
    {
        next_generation(connection);
        daemons::expect_daemon();
    }
    if !wanted_cgroup() {
        return;
    }
    // Read only when a filter or `trace --min` needs it.
    let who = if layout_field!(agg_pid_count) != 0
        || layout_field!(agg_comm_count) != 0
        || layout_field!(agg_sender) != 0
    {
        sender::<DIRECT>(req)
    } else {
        Sender::default()
    };
    if !wanted_requester(&who) || !wanted_comm(&who) {
        return;
    }
    let Some(connection) = connection_of::<DIRECT>(req) else {
        return;
    };
    if !wanted_connection(connection) {
        return;
    }
    let unique = unique_of::<DIRECT>(req);
    let sent = Sent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        taken_ns: 0,
        replied_ns: 0,
        connection,
        // Only `trace --min` and `top` show it (0: not the requester).
        requester_tgid: if who.is_requester { who.tgid } else { 0 },
        unique,
        nodeid: load::<u64, DIRECT>(
            req,
            layout_field!(req_in_h) + offset_of!(FuseInHeader, nodeid) as u32,
        )
        .unwrap_or(0),
        opcode: opcode.unwrap_or(0),
        header_pid: who.header_pid,
        daemon_tid: 0,
        _pad: 0,
    };
    if unique == 0 {
        bump(counters::SENT_BEFORE_ID);
    } else if let Some((held, kept)) = slot(slot_of(unique, connection)) {
        // Claimed with a compare-and-swap: two requests sent at once on
        // two CPUs may hash to one free slot, and a plain check-then-write
        // let the second overwrite the first, whose end then found nothing
        // (seen under the VM guests' emulation). The claimant's end cannot
        // come before its `sent` is written: the request is queued for the
        // daemon only after this program returns.
        // SAFETY: map values, `req` aligned; only the end of the request
        // stored here frees it again.
        unsafe {
            if claim(held, req) {
                *kept = sent;
                bump(counters::AGG_STARTED);
                return;
            }
        }
    }
    match AGG_SENT.insert(&req, &sent, 0) {
        Ok(()) => bump(counters::AGG_STARTED),
        Err(_) => bump(counters::AGG_TABLE_FULL),
    }
}

/// Takes a free slot for `req` (or [`AGG_SLOT_CLAIMED`]): whether it was
/// free. A compare-and-swap, since two CPUs may go for one slot at once.
/// The BPF target has no `AtomicU64::compare_exchange` (Rust marks it
/// without CAS); the intrinsic is BPF_CMPXCHG (Linux 5.12+).
///
/// # Safety
/// `held` is a value of `AGG_SLOTS`.
#[inline(always)]
unsafe fn claim(held: *mut u64, req: u64) -> bool {
    // SAFETY: a map value, `req` aligned.
    let (_, claimed) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(held, 0, req)
    };
    claimed
}

/// A mount begins (its INIT is sent): its connection number's generation
/// steps on. Only at INITs, so a request costs a lookup, never an update.
#[inline(always)]
fn next_generation(connection: u32) {
    if let Some(slot) = generation_slot(connection) {
        // SAFETY: a map value; the connection's own (INITs of one
        // connection never race: one per mount).
        unsafe { *slot += 1 };
        return;
    }
    match AGG_GENERATIONS.get_ptr_mut(&connection) {
        // SAFETY: a map value; INITs of one connection never race (one per mount).
        Some(g) => unsafe { *g += 1 },
        None => {
            if AGG_GENERATIONS.insert(&connection, &1, 0).is_err() {
                bump(counters::AGG_GENERATIONS_FULL);
            }
        }
    }
}

/// The array entry of `connection`'s generation: its own, or a free one it
/// takes (with a compare-and-swap: two connections may go for one at
/// once); `None` when another connection has it (the hash holds this
/// one's). A connection whose generation is in the hash never takes an
/// entry: entries are never freed, so its entry was taken already when
/// its first INIT went to the hash.
#[inline(always)]
fn generation_slot(connection: u32) -> Option<*mut u64> {
    let slot = AGG_GENERATION_FAST.get_ptr_mut(connection % AGG_GENERATION_SLOTS)?;
    let mine = u64::from(connection) << 32;
    // SAFETY: a map value, aligned.
    unsafe {
        let v = core::ptr::read_volatile(slot);
        if v >> 32 == u64::from(connection) {
            return Some(slot);
        }
        if v != 0 {
            return None;
        }
        let (now, _) = atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            slot, 0, mine,
        );
        (now == 0 || now >> 32 == u64::from(connection)).then_some(slot)
    }
}

/// The generation a request of `connection` ending now was sent in: from
/// the array (an inlined lookup) for most connections, the hash for the
/// rest, 0 for a mount whose INIT came before tracing.
#[inline(always)]
fn generation_of(connection: u32) -> u32 {
    if let Some(slot) = generation_slot(connection) {
        // SAFETY: a map value.
        return unsafe { core::ptr::read_volatile(slot) } as u32;
    }
    // SAFETY: a map value, copied.
    unsafe { AGG_GENERATIONS.get(&connection) }
        .copied()
        .unwrap_or(0)
}

/// Where the send of `req` waited, emptied.
#[inline(always)]
fn take_sent<const DIRECT: bool>(req: u64, connection: u32) -> Option<Sent> {
    if let Some((held, kept)) = slot(slot_of(unique_of::<DIRECT>(req), connection)) {
        // SAFETY: map values; see `agg_send`.
        unsafe {
            if *held == req {
                let sent = *kept;
                *held = 0;
                return Some(sent);
            }
        }
    }
    // SAFETY: the value is copied before the entry is removed.
    let sent = unsafe { AGG_SENT.get(&req) }.copied()?;
    let _ = AGG_SENT.remove(&req);
    Some(sent)
}

/// The request ended: count its latency in its histogram cell.
#[inline(always)]
pub(crate) fn agg_end<const DIRECT: bool>(req: Option<u64>) {
    let Some(req) = req else { return };
    if !open() {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let connection = connection_of::<DIRECT>(req).unwrap_or(0);
    let Some(mut sent) = take_sent::<DIRECT>(req, connection) else {
        // Sent before tracing began, or filtered out at send. Only the
        // first is a loss, and only a wanted connection's.
        if layout_field!(agg_pid_count) == 0
            && layout_field!(agg_comm_count) == 0
            && layout_field!(filter_cgroup) == 0
            && wanted_connection(connection)
        {
            bump(counters::AGG_UNMATCHED_ENDS);
        }
        return;
    };
    let opcode = load::<u32, DIRECT>(
        req,
        layout_field!(req_in_h) + offset_of!(FuseInHeader, opcode) as u32,
    );
    let error = load::<i32, DIRECT>(
        req,
        layout_field!(req_out_h) + offset_of!(FuseOutHeader, error) as u32,
    );
    // The daemon side hooked in the kernel, or its writes at the syscall:
    // the reply ending it began when its thread's time says. Not where a
    // daemon point stamped the reply (io_uring's commit).
    if layout_field!(agg_stages) != 0
        && sent.replied_ns == 0
        && let Some(ts) = reply_started(error.unwrap_or(0), || now)
    {
        sent.replied_ns = ts;
    }
    // The number is freed only once every request of its mount ended, so
    // the generation now is the one the request was sent in.
    let generation = generation_of(sent.connection);
    let latency = now.saturating_sub(sent.ts_ns);
    if layout_field!(agg_whole) != 0 {
        bump(counters::AGG_ENDED);
        if latency >= layout_field!(agg_min_ns) {
            submit_whole::<DIRECT>(req, &sent, now, error.unwrap_or(0));
        }
        return;
    }
    // `top`: the requests it shows one by one, besides the counts.
    if layout_field!(agg_records) != 0
        && latency >= AGG_RECORD_MIN.get(0).copied().unwrap_or(u64::MAX)
    {
        submit_whole::<DIRECT>(req, &sent, now, error.unwrap_or(0));
    }
    let errno = error.unwrap_or(0).unsigned_abs();
    let key = HistogramKey {
        connection: sent.connection,
        opcode: opcode.unwrap_or(0),
        bucket: latency_bucket(latency),
        stage: agg_stage::TOTAL,
        error: if errno > 255 { 255 } else { errno as u8 },
        generation,
    };
    // This CPU's region of the cell table, once for the end's cells.
    let region = table_region();
    if !count(&key, latency, region) {
        return;
    }
    bump(counters::AGG_ENDED);
    if layout_field!(agg_stages) != 0 {
        let (taken, replied) = (sent.taken_ns, sent.replied_ns);
        // An unseen point is 0, before the send: out of order either way.
        if taken < sent.ts_ns || replied < taken || now < replied {
            bump(counters::AGG_STAGES_MISSING);
            return;
        }
        for (stage, from, to) in [
            (agg_stage::QUEUE, sent.ts_ns, taken),
            (agg_stage::DAEMON, taken, replied),
            (agg_stage::COMPLETE, replied, now),
        ] {
            let key = HistogramKey {
                bucket: latency_bucket(to - from),
                stage,
                ..key
            };
            count(&key, to - from, region);
        }
    }
}

/// `trace --min`: a request at least that slow, whole, to the ring
/// buffer (see `EventKind::Whole` for which field holds what).
#[inline(always)]
fn submit_whole<const DIRECT: bool>(req: u64, sent: &Sent, now: u64, error: i32) {
    let h = layout_field!(req_in_h);
    let field = |offset: usize| h + offset as u32;
    let flags = load::<u64, DIRECT>(req, layout_field!(req_flags)).unwrap_or(0);
    let background = flags & (1u64 << (layout_field!(fr_background_bit) & 63)) != 0;
    let ev = FuseEvent {
        ts_ns: now,
        unique: load::<u64, DIRECT>(req, field(offset_of!(FuseInHeader, unique))).unwrap_or(0),
        nodeid: load::<u64, DIRECT>(req, field(offset_of!(FuseInHeader, nodeid))).unwrap_or(0),
        connection: sent.connection,
        opcode: load::<u32, DIRECT>(req, field(offset_of!(FuseInHeader, opcode))).unwrap_or(0),
        len: load::<u32, DIRECT>(req, field(offset_of!(FuseInHeader, len))).unwrap_or(0),
        error,
        tgid: sent.requester_tgid,
        req_pid: load::<u32, DIRECT>(req, field(offset_of!(FuseInHeader, pid))).unwrap_or(0),
        req_uid: load::<u32, DIRECT>(req, field(offset_of!(FuseInHeader, uid))).unwrap_or(0),
        kind: EventKind::Whole as u8,
        flags: FLAG_HAS_HEADER | if background { FLAG_BACKGROUND } else { 0 },
        aux_ns: sent.ts_ns,
        arg0: sent.taken_ns,
        arg1: sent.replied_ns,
        req,
        ..FuseEvent::default()
    };
    write_to_ring(ev);
}

/// Adds one request of `ns` to a histogram cell: in this CPU's region of
/// the table, else the hash; false (counted) when both are full.
#[inline(always)]
fn count(key: &HistogramKey, ns: u64, region: Option<(u32, u32)>) -> bool {
    if let Some(region) = region
        && count_in_table(key, ns, region)
    {
        return true;
    }
    match AGG_HISTOGRAMS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot; programs on one CPU do not interleave.
        Some(cell) => unsafe {
            (*cell).count += 1;
            (*cell).sum_ns += ns;
        },
        None => {
            let cell = CellCounts {
                count: 1,
                sum_ns: ns,
            };
            if AGG_HISTOGRAMS.insert(key, &cell, 0).is_err() {
                bump(counters::AGG_HISTOGRAM_FULL);
                return false;
            }
        }
    }
    true
}

/// `stats --stages`: daemon thread `tid` took (`replied` false) or answered
/// request `unique` of `connection`: stamp the time in the request's slot,
/// found by its id (the slot holds the `struct fuse_req *` whose id is
/// checked), or for a request waiting in the overflow hash (its slot was
/// taken, or its send came before its id) by its pointer, which
/// `find_req` gives (`/dev/fuse`: looked up in the connection's
/// processing table; io_uring: the ring entry's request; 0: not known).
#[inline(always)]
pub fn agg_daemon_point(
    connection: u32,
    unique: u64,
    replied: bool,
    tid: u32,
    find_req: impl FnOnce() -> u64,
) {
    if !open() || !wanted_connection(connection) {
        return;
    }
    // Notifications (id 0) and INTERRUPTs are not requests in the table.
    if unique == 0 || unique & fusetrace_common::FUSE_INT_REQ_BIT != 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let stamp = |sent: *mut Sent| {
        // SAFETY: a map value; a racing end at worst loses this stamp.
        unsafe {
            if replied {
                (*sent).replied_ns = now;
            } else {
                (*sent).taken_ns = now;
                (*sent).daemon_tid = tid;
                (*sent).unique = unique;
            }
        }
    };
    if let Some((held, kept)) = slot(slot_of(unique, connection)) {
        // SAFETY: map values; see `agg_send`. The id the send kept (a
        // request's id does not change once assigned) and the connection
        // tell its request apart from another in the slot.
        let req = unsafe { *held };
        if req != 0
            && unsafe { (*kept).unique } == unique
            && unsafe { (*kept).connection } == connection
        {
            stamp(kept);
            return;
        }
    }
    let req = find_req();
    if req != 0
        && let Some(sent) = AGG_SENT.get_ptr_mut(&req)
    {
        stamp(sent);
        // A take names the id its send did not have: the request moves to
        // its slot, where a reply that knows only the id finds it (io_uring
        // commits carry no request pointer). The slot is claimed with a
        // placeholder, filled, then published; the request's end may run
        // meanwhile on another CPU (an io_uring daemon can answer as soon
        // as the completion is posted): it then finds the request in the
        // hash, and the slot is given back.
        if !replied && let Some((held, kept)) = slot(slot_of(unique, connection)) {
            // SAFETY: map values, `req` aligned.
            unsafe {
                if claim(held, AGG_SLOT_CLAIMED) {
                    *kept = *sent;
                    core::ptr::write_volatile(held, req);
                    if AGG_SENT.remove(&req).is_err() {
                        // Ended meanwhile, from the hash.
                        core::ptr::write_volatile(held, 0);
                    }
                }
            }
        }
    }
}

/// This CPU's region of `AGG_CELL_TABLE`: its first slot and its size
/// less one; `None` for a CPU past the regions.
#[inline(always)]
fn table_region() -> Option<(u32, u32)> {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if cpu >= layout_field!(agg_table_cpus) {
        return None;
    }
    let bits = layout_field!(agg_table_bits) & 31;
    Some((cpu << bits, (1u32 << bits).wrapping_sub(1)))
}

/// Adds one request of `ns` to `key`'s cell in this CPU's region of
/// `AGG_CELL_TABLE` (`table_region`), taking a free slot for a new cell:
/// false when `AGG_TABLE_PROBES` slots from the key's hash are other
/// cells'. A key may hold two slots of a region (user space freed one
/// before the other): user space adds them up.
#[inline(always)]
fn count_in_table(key: &HistogramKey, ns: u64, (base, mask): (u32, u32)) -> bool {
    let start = cell_table_hash(key);
    for i in 0..AGG_TABLE_PROBES {
        let Some(slot) = AGG_CELL_TABLE.get_ptr_mut(base | (start.wrapping_add(i) & mask)) else {
            return false;
        };
        // SAFETY: a map value in this CPU's region, which only programs on
        // this CPU write (they do not interleave); user space only frees
        // slots of retired mounts, whose cells no request adds to.
        unsafe {
            let count = core::ptr::read_volatile(&raw const (*slot).count);
            if count == 0 {
                (*slot).key = *key;
                (*slot).sum_ns = ns;
                // Published last: user space reads `count` first.
                atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).count, 1);
                return true;
            }
            if (*slot).key == *key {
                (*slot).count = count + 1;
                (*slot).sum_ns += ns;
                return true;
            }
        }
    }
    false
}
