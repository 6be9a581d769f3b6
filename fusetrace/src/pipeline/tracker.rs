//! The lifecycle tracker: joins the events of one request, by
//! (connection, unique), into one [`RequestLifecycle`].
//!
//! Kernels 6.12 to 6.17 fire the send point before the request has its id
//! (the send says unique 0). Such a send waits, keyed by its `struct
//! fuse_req *`, until an event names both the pointer and the id (the
//! daemon's take, a virtio-fs enqueue, or at the latest the end), and is
//! then joined to the request by id as if it had carried it.
//!
//! Pure state, no I/O: it is fed [`FuseEvent`]s and hands back finished
//! records, so it is tested with synthetic sequences.

use fusetrace_common::{
    EventKind, FLAG_BACKGROUND, FLAG_HAS_HEADER, FLAG_REPLIED, FLAG_URING, FLAG_WRITEBACK_CACHE,
    FuseEvent,
};
use serde::Serialize;

use crate::kernel::hooks::Transport;
use crate::pipeline::FastMap as HashMap;
use crate::pipeline::{
    lifecycle::{Comm, Outcome, RequestLifecycle},
    opcode,
};

pub use fusetrace_common::FUSE_INT_REQ_BIT;

/// Which of a [`Live`] record's values were seen: one bit per `Option` of
/// [`RequestLifecycle`] it stands for, and the two flags' values.
mod seen {
    pub const SENT: u32 = 1 << 0;
    pub const TAKEN: u32 = 1 << 1;
    pub const REPLIED: u32 = 1 << 2;
    pub const ENDED: u32 = 1 << 3;
    pub const SUBMITTED: u32 = 1 << 4;
    pub const NODEID: u32 = 1 << 5;
    pub const SEND_ARGS: u32 = 1 << 6;
    pub const REQUESTER_PID: u32 = 1 << 7;
    pub const REQUESTER_TID: u32 = 1 << 8;
    pub const REQUESTER_UID: u32 = 1 << 9;
    /// The requester's comm is the sender's (the submitting task was the
    /// requester): one copy kept.
    pub const REQUESTER_COMM: u32 = 1 << 10;
    pub const DAEMON_TID: u32 = 1 << 11;
    pub const REPLY_TID: u32 = 1 << 12;
    /// Sender tid and comm, always seen together.
    pub const SENDER: u32 = 1 << 13;
    pub const REQUEST_LEN: u32 = 1 << 14;
    pub const REPLY_LEN: u32 = 1 << 15;
    pub const ERROR: u32 = 1 << 16;
    pub const BACKGROUND_KNOWN: u32 = 1 << 17;
    pub const BACKGROUND: u32 = 1 << 18;
    pub const WRITEBACK_KNOWN: u32 = 1 << 19;
    pub const WRITEBACK: u32 = 1 << 20;
    pub const INTERRUPTED: u32 = 1 << 21;
    /// Taken or answered through FUSE over io_uring.
    pub const URING: u32 = 1 << 22;
    pub const RING_QUEUE: u32 = 1 << 23;
}

/// A request as the tracker keeps it until it is finished: the values of
/// [`RequestLifecycle`] without `Option` padding (a bit in `seen` says
/// which were observed), connection and id only in the table's key, one
/// comm, and what few requests have in a box allocated when present.
/// 136 bytes instead of 328 plus a `String`: a daemon that never replies
/// can leave 100 000 requests in flight.
#[derive(Debug, Clone, Default)]
struct Live {
    sent_ns: u64,
    taken_ns: u64,
    replied_ns: u64,
    ended_ns: u64,
    submitted_ns: u64,
    nodeid: u64,
    send_args: [u64; 2],
    opcode: u32,
    requester_pid: u32,
    requester_tid: u32,
    requester_uid: u32,
    daemon_tid: u32,
    reply_tid: u32,
    sender_tid: u32,
    request_len: u32,
    reply_len: u32,
    error: i32,
    sender_comm: Comm,
    seen: u32,
    /// io_uring: the ring queue that took it (in the padding before `rare`).
    ring_queue: u16,
    outcome: Option<Outcome>,
    rare: Option<Box<Rare>>,
}

/// Stages only virtio-fs requests have, and the end's arguments of an
/// ended request waiting for late events.
#[derive(Debug, Clone, Default)]
struct Rare {
    virtq_ns: Option<u64>,
    device_irq_ns: Option<u64>,
    device_done_ns: Option<u64>,
    end_args: Option<[u64; 2]>,
}

impl Live {
    fn has(&self, bits: u32) -> bool {
        self.seen & bits == bits
    }

    fn get<T>(&self, bit: u32, value: T) -> Option<T> {
        self.has(bit).then_some(value)
    }

    fn rare(&self) -> Option<&Rare> {
        self.rare.as_deref()
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    fn is_virtio(&self) -> bool {
        self.rare()
            .is_some_and(|r| r.virtq_ns.is_some() || r.device_done_ns.is_some())
    }

    /// [`RequestLifecycle::fully_observed`], without building one.
    fn fully_observed(&self) -> bool {
        let middle = match self.rare() {
            Some(r) if self.is_virtio() => r.virtq_ns.is_some() && r.device_done_ns.is_some(),
            _ => self.has(seen::TAKEN | seen::REPLIED),
        };
        self.has(seen::SENT | seen::ENDED) && middle
    }

    /// Everything the tracer expects to see of this request has been seen.
    fn complete(&self) -> bool {
        self.outcome.is_some() || self.fully_observed()
    }

    fn fill_header(&mut self, ev: &FuseEvent) {
        if ev.flags & FLAG_HAS_HEADER == 0 {
            return;
        }
        if ev.opcode != 0 {
            self.opcode = ev.opcode;
        }
        if ev.nodeid != 0 || !self.has(seen::NODEID) {
            self.nodeid = ev.nodeid;
            self.seen |= seen::NODEID;
        }
        if ev.req_pid != 0 && !self.has(seen::REQUESTER_TID) {
            self.requester_tid = ev.req_pid;
            self.seen |= seen::REQUESTER_TID;
        }
        if !self.has(seen::REQUESTER_UID) {
            self.requester_uid = ev.req_uid;
            self.seen |= seen::REQUESTER_UID;
        }
        if !self.has(seen::REQUEST_LEN) {
            self.request_len = ev.len;
            self.seen |= seen::REQUEST_LEN;
        }
    }

    fn background(&self) -> Option<bool> {
        self.get(seen::BACKGROUND_KNOWN, self.has(seen::BACKGROUND))
    }

    fn set_background(&mut self, background: bool) {
        self.seen |= seen::BACKGROUND_KNOWN;
        if background {
            self.seen |= seen::BACKGROUND;
        } else {
            self.seen &= !seen::BACKGROUND;
        }
    }

    fn to_lifecycle(&self, (connection, unique): Key) -> RequestLifecycle {
        use seen::*;
        let rare = self.rare();
        let sender_comm = self.get(SENDER, self.sender_comm);
        RequestLifecycle {
            connection,
            unique,
            opcode: self.opcode,
            nodeid: self.get(NODEID, self.nodeid),
            requester_pid: self.get(REQUESTER_PID, self.requester_pid),
            requester_tid: self.get(REQUESTER_TID, self.requester_tid),
            requester_uid: self.get(REQUESTER_UID, self.requester_uid),
            requester_comm: self.get(REQUESTER_COMM, ()).and(sender_comm),
            background: self.background(),
            daemon_tid: self.get(DAEMON_TID, self.daemon_tid),
            reply_tid: self.get(REPLY_TID, self.reply_tid),
            sent_ns: self.get(SENT, self.sent_ns),
            taken_ns: self.get(TAKEN, self.taken_ns),
            replied_ns: self.get(REPLIED, self.replied_ns),
            ended_ns: self.get(ENDED, self.ended_ns),
            error: self.get(ERROR, self.error),
            request_len: self.get(REQUEST_LEN, self.request_len),
            reply_len: self.get(REPLY_LEN, self.reply_len),
            interrupted: self.has(INTERRUPTED),
            outcome: self.outcome,
            submitted_ns: self.get(SUBMITTED, self.submitted_ns),
            virtq_ns: rare.and_then(|r| r.virtq_ns),
            device_irq_ns: rare.and_then(|r| r.device_irq_ns),
            device_done_ns: rare.and_then(|r| r.device_done_ns),
            sender_tid: self.get(SENDER, self.sender_tid),
            sender_comm,
            writeback_cache: self.get(WRITEBACK_KNOWN, self.has(WRITEBACK)),
            send_args: self.get(SEND_ARGS, self.send_args),
            end_args: rare.and_then(|r| r.end_args),
            path: None,
            transport: if self.has(URING) {
                Some(Transport::IoUring)
            } else if self.seen & (TAKEN | REPLIED) != 0 {
                Some(Transport::DevFuse)
            } else {
                None
            },
            ring_queue: self.get(RING_QUEUE, self.ring_queue),
        }
    }
}

/// What the tracker could not join, counted so nothing is lost silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrackerCounters {
    pub events: u64,
    /// Requests finished (handed to sinks).
    pub finished: u64,
    /// Replies for a request the tracer never saw.
    pub unmatched_replies: u64,
    /// Ends of requests whose submission the tracer never saw (e.g. sent
    /// before tracing started).
    pub unmatched_ends: u64,
    /// A request id reused before its previous request was seen ending.
    pub never_ended: u64,
    /// Daemon notifications (unique 0), which are not requests.
    pub notifications: u64,
    /// Sends seen before the kernel assigned the request id (6.12 to 6.17),
    /// joined by their `struct fuse_req *` instead.
    pub sent_before_id: u64,
    /// Sends with neither id nor request pointer (the plain tracepoint
    /// backend on those kernels): they cannot be joined; their requests
    /// show as ends without submission.
    pub sends_without_id: u64,
    pub interrupts: u64,
}

impl TrackerCounters {
    /// Adds `b`'s counts (several recordings reported as one).
    pub fn add(&mut self, b: &TrackerCounters) {
        self.events += b.events;
        self.finished += b.finished;
        self.unmatched_replies += b.unmatched_replies;
        self.unmatched_ends += b.unmatched_ends;
        self.never_ended += b.never_ended;
        self.notifications += b.notifications;
        self.sent_before_id += b.sent_before_id;
        self.sends_without_id += b.sends_without_id;
        self.interrupts += b.interrupts;
    }
}

/// Tuning of the tracker.
#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    /// How long after its end a request with unobserved stages waits for
    /// late events (ring buffer records from other CPUs) before it is
    /// finished with those stages unknown.
    pub reorder_window_ns: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            reorder_window_ns: 50_000_000,
        }
    }
}

type Key = (u32, u64);

/// Joins events into request lifecycles.
#[derive(Debug, Default)]
pub struct Tracker {
    config: TrackerConfig,
    /// Boxed: a request in flight costs its compact record plus one pointer
    /// in the table, and growing the table (100 000 requests in flight and
    /// more) moves pointers, not records.
    live: HashMap<Key, Box<Live>>,
    /// Sends that came before their request id, by (connection, `struct
    /// fuse_req *`), until an event names the id.
    unnumbered: HashMap<(u32, u64), FuseEvent>,
    /// Ended requests waiting for late events: (deadline, key).
    lingering: Vec<(u64, Key)>,
    counters: TrackerCounters,
    /// Latest event time seen: the tracker's notion of "now".
    watermark_ns: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            ..Default::default()
        }
    }

    pub fn counters(&self) -> TrackerCounters {
        self.counters
    }

    /// Requests not yet ended, each built on the fly from the compact
    /// record the tracker keeps (so a view can hold them owned).
    pub fn in_flight(&self) -> impl Iterator<Item = RequestLifecycle> {
        let unnumbered = self.unnumbered.values().map(unnumbered);
        self.live
            .iter()
            .filter(|(_, r)| !r.has(seen::ENDED))
            .map(|(key, r)| r.to_lifecycle(*key))
            .chain(unnumbered)
    }

    pub fn in_flight_count(&self) -> usize {
        self.live.values().filter(|r| !r.has(seen::ENDED)).count() + self.unnumbered.len()
    }

    pub fn watermark_ns(&self) -> u64 {
        self.watermark_ns
    }

    /// Feeds one event; finished requests are pushed to `out`.
    pub fn observe(&mut self, ev: &FuseEvent, out: &mut Vec<RequestLifecycle>) {
        self.counters.events += 1;
        self.watermark_ns = self.watermark_ns.max(ev.ts_ns);
        let Some(kind) = EventKind::from_u8(ev.kind) else {
            return;
        };
        if ev.req != 0 && ev.unique != 0 && !self.unnumbered.is_empty() {
            self.number(ev, out);
        }
        match kind {
            EventKind::Sent => self.on_sent(ev, out),
            EventKind::Taken => self.on_taken(ev, out),
            EventKind::Replied => self.on_replied(ev, out),
            EventKind::Ended => self.on_ended(ev, out),
            EventKind::Virtq | EventKind::DeviceDone => self.on_virtio(ev, kind, out),
            // Not a request stage: application writes are for the diagnosis.
            EventKind::AppWrite | EventKind::Limits => {}
            // `trace --min`: the kernel joined it already.
            EventKind::Whole => out.push(RequestLifecycle::from_whole(ev)),
        }
        self.advance(self.watermark_ns, out);
    }

    /// Finishes ended requests whose reorder window has passed by `now_ns`
    /// (monotonic clock; callers pass the current time when idle).
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<RequestLifecycle>) {
        if self.lingering.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.lingering.len() {
            let (deadline, key) = self.lingering[i];
            if deadline <= now_ns {
                self.lingering.swap_remove(i);
                self.finish(key, out);
            } else {
                i += 1;
            }
        }
    }

    /// Finishes everything that has ended (end of a trace). Requests still
    /// in flight stay available through [`Tracker::in_flight`].
    pub fn flush(&mut self, out: &mut Vec<RequestLifecycle>) {
        self.advance(u64::MAX, out);
    }

    /// Gets the record for `key`, or starts one. An existing record that
    /// already has the stage being reported (`stage` bits), and is older
    /// than the event, belongs to an earlier request with the same id: it
    /// is finished first.
    fn record_for(
        &mut self,
        key: Key,
        stage: u32,
        ts: u64,
        out: &mut Vec<RequestLifecycle>,
    ) -> &mut Live {
        let stale = self.live.get(&key).is_some_and(|r| {
            (stage != 0 && r.has(stage)) || (r.has(seen::ENDED) && r.ended_ns < ts)
        });
        if stale {
            let old = self.live.get_mut(&key).unwrap();
            if !old.has(seen::ENDED) {
                old.outcome = Some(Outcome::NeverEnded);
                self.counters.never_ended += 1;
            }
            self.lingering.retain(|(_, k)| *k != key);
            self.finish(key, out);
        }
        self.live.entry(key).or_default()
    }

    fn on_sent(&mut self, ev: &FuseEvent, out: &mut Vec<RequestLifecycle>) {
        if ev.unique == 0 {
            if ev.req == 0 {
                self.counters.sends_without_id += 1;
                return;
            }
            self.counters.sent_before_id += 1;
            if let Some(old) = self.unnumbered.insert((ev.connection, ev.req), *ev) {
                // The pointer was freed and reused: the earlier request's
                // id and end were never seen.
                let mut rec = unnumbered(&old);
                rec.outcome = Some(Outcome::NeverEnded);
                self.counters.never_ended += 1;
                self.counters.finished += 1;
                out.push(rec);
            }
            return;
        }
        let key = (ev.connection, ev.unique);
        let rec = self.record_for(key, seen::SENT, ev.ts_ns, out);
        rec.apply_sent(ev);
        self.maybe_finish(key, out);
    }

    /// `ev` names a request's pointer and id: a send of that request that
    /// came before its id joins it now.
    fn number(&mut self, ev: &FuseEvent, out: &mut Vec<RequestLifecycle>) {
        if let Some(send) = self.unnumbered.remove(&(ev.connection, ev.req)) {
            let key = (ev.connection, ev.unique);
            self.record_for(key, seen::SENT, send.ts_ns, out)
                .apply_sent(&send);
        }
    }
}

/// A send still waiting for its id, as a request in flight (unique 0).
fn unnumbered(send: &FuseEvent) -> RequestLifecycle {
    let mut rec = Live::default();
    rec.apply_sent(send);
    rec.to_lifecycle((send.connection, 0))
}

impl Live {
    /// What a send says of its request.
    fn apply_sent(&mut self, ev: &FuseEvent) {
        let rec = self;
        rec.sent_ns = ev.ts_ns;
        rec.seen |= seen::SENT;
        if ev.aux_ns != 0 {
            rec.submitted_ns = ev.aux_ns;
            rec.seen |= seen::SUBMITTED;
        }
        rec.sender_tid = ev.tid;
        rec.sender_comm = Comm(ev.comm);
        rec.seen |= seen::SENDER;
        if ev.opcode != 0 {
            rec.opcode = ev.opcode;
        }
        if ev.flags & FLAG_HAS_HEADER != 0 {
            rec.fill_header(ev);
            rec.set_background(ev.flags & FLAG_BACKGROUND != 0);
            rec.seen |= seen::WRITEBACK_KNOWN;
            if ev.flags & FLAG_WRITEBACK_CACHE != 0 {
                rec.seen |= seen::WRITEBACK;
            } else {
                rec.seen &= !seen::WRITEBACK;
            }
            rec.send_args = [ev.arg0, ev.arg1];
            rec.seen |= seen::SEND_ARGS;
        }
        // The submitting task is the requester unless the request is a
        // background one flushed from another context.
        let submitter_is_requester = if rec.has(seen::REQUESTER_TID) {
            rec.requester_tid == ev.tid
        } else {
            rec.background() != Some(true)
        };
        if submitter_is_requester {
            rec.requester_pid = ev.tgid;
            if !rec.has(seen::REQUESTER_TID) {
                rec.requester_tid = ev.tid;
            }
            // The comm is the sender's, kept once.
            rec.seen |= seen::REQUESTER_PID | seen::REQUESTER_TID | seen::REQUESTER_COMM;
        }
    }
}

impl Tracker {
    /// The daemon took a request: its thread and time.
    fn take(&mut self, key: Key, ev: &FuseEvent, out: &mut Vec<RequestLifecycle>) -> &mut Live {
        let rec = self.record_for(key, seen::TAKEN, ev.ts_ns, out);
        rec.taken_ns = ev.ts_ns;
        rec.daemon_tid = ev.tid;
        rec.seen |= seen::TAKEN | seen::DAEMON_TID;
        if ev.flags & FLAG_URING != 0 {
            rec.seen |= seen::URING;
            if let Ok(q) = u16::try_from(ev.arg0) {
                rec.ring_queue = q;
                rec.seen |= seen::RING_QUEUE;
            }
        }
        rec.fill_header(ev);
        rec
    }

    fn on_taken(&mut self, ev: &FuseEvent, out: &mut Vec<RequestLifecycle>) {
        let key = (ev.connection, ev.unique);
        match ev.opcode {
            opcode::INTERRUPT => {
                self.counters.interrupts += 1;
                let target = (ev.connection, ev.unique & !FUSE_INT_REQ_BIT);
                if let Some(t) = self.live.get_mut(&target) {
                    t.seen |= seen::INTERRUPTED;
                }
                self.take(key, ev, out);
                // Finished when answered or when its target ends.
                if !self.live.contains_key(&target) {
                    self.live.get_mut(&key).unwrap().outcome = Some(Outcome::Interrupt);
                    self.finish(key, out);
                }
            }
            opcode::FORGET | opcode::BATCH_FORGET => {
                self.take(key, ev, out).outcome = Some(Outcome::NoReplyExpected);
                self.finish(key, out);
            }
            _ => {
                self.take(key, ev, out);
                self.maybe_finish(key, out);
            }
        }
    }

    fn on_replied(&mut self, ev: &FuseEvent, out: &mut Vec<RequestLifecycle>) {
        if ev.unique == 0 {
            self.counters.notifications += 1;
            return;
        }
        let key = (ev.connection, ev.unique);
        let Some(rec) = self.live.get_mut(&key) else {
            self.counters.unmatched_replies += 1;
            return;
        };
        // A reply before the take is not this request's (the kernel-side
        // hook's time of a write that ended no request, left to an end in
        // a failed read of the same thread).
        if rec.has(seen::TAKEN) && ev.ts_ns < rec.taken_ns {
            self.counters.unmatched_replies += 1;
            return;
        }
        rec.replied_ns = ev.ts_ns;
        rec.reply_tid = ev.tid;
        rec.reply_len = ev.len;
        if !rec.has(seen::ERROR) {
            rec.error = ev.error;
        }
        rec.seen |= seen::REPLIED | seen::REPLY_TID | seen::REPLY_LEN | seen::ERROR;
        if ev.flags & FLAG_URING != 0 {
            rec.seen |= seen::URING;
        }
        if ev.unique & FUSE_INT_REQ_BIT != 0 {
            rec.outcome = Some(Outcome::Interrupt);
        }
        self.maybe_finish(key, out);
    }

    /// virtio-fs stages. A request the device had no room for is enqueued
    /// again later: the last enqueue counts, it is not a new request.
    fn on_virtio(&mut self, ev: &FuseEvent, kind: EventKind, out: &mut Vec<RequestLifecycle>) {
        let key = (ev.connection, ev.unique);
        let rec = self.record_for(key, 0, ev.ts_ns, out);
        rec.fill_header(ev);
        let rare = rec.rare_mut();
        if kind == EventKind::Virtq {
            rare.virtq_ns = Some(ev.ts_ns);
        } else {
            rare.device_done_ns = Some(ev.ts_ns);
            // The queue's latest interrupt before the answer was taken
            // off counts only if it came after the request was queued: a
            // completion pass an earlier interrupt started also collects
            // answers that came in meanwhile, without an interrupt of
            // their own (then there is none to show).
            let queued = rare.virtq_ns.unwrap_or(0);
            if ev.aux_ns != 0 && queued <= ev.aux_ns && ev.aux_ns <= ev.ts_ns {
                rare.device_irq_ns = Some(ev.aux_ns);
            }
        }
        self.maybe_finish(key, out);
    }

    fn on_ended(&mut self, ev: &FuseEvent, out: &mut Vec<RequestLifecycle>) {
        let key = (ev.connection, ev.unique);
        let rec = self.record_for(key, seen::ENDED, ev.ts_ns, out);
        rec.ended_ns = ev.ts_ns;
        // The reply folded into the end (the daemon side in the kernel),
        // unless it began before the take (see `on_replied`).
        let mut stale_reply = false;
        if ev.flags & FLAG_REPLIED != 0 {
            if rec.has(seen::TAKEN) && ev.aux_ns < rec.taken_ns {
                stale_reply = true;
            } else {
                rec.replied_ns = ev.aux_ns;
                rec.reply_tid = ev.tid;
                rec.seen |= seen::REPLIED | seen::REPLY_TID;
            }
        }
        // The kernel's verdict wins over what the daemon wrote (an aborted
        // connection ends requests with ECONNABORTED).
        rec.error = ev.error;
        if ev.len != 0 || !rec.has(seen::REPLY_LEN) {
            rec.reply_len = ev.len;
        }
        rec.seen |= seen::ENDED | seen::ERROR | seen::REPLY_LEN;
        let mut end_args = None;
        if ev.flags & FLAG_HAS_HEADER != 0 {
            rec.fill_header(ev);
            if rec.background().is_none() {
                rec.set_background(ev.flags & FLAG_BACKGROUND != 0);
            }
            end_args = Some([ev.arg0, ev.arg1]);
        }
        if key.1 & FUSE_INT_REQ_BIT != 0 {
            // An interrupt's own end: it is over.
            rec.outcome = Some(Outcome::Interrupt);
        } else {
            // An interrupt for this request is over too.
            let int_key = (key.0, key.1 | FUSE_INT_REQ_BIT);
            if let Some(int) = self.live.get_mut(&int_key) {
                int.outcome = Some(Outcome::Interrupt);
                self.lingering.retain(|(_, k)| *k != int_key);
                self.finish(int_key, out);
            }
        }
        if stale_reply {
            self.counters.unmatched_replies += 1;
        }
        if self.live.get(&key).is_some_and(|r| r.complete()) {
            // Most requests: finished at once, the end's arguments go
            // straight into the record handed out (no box for them).
            self.lingering.retain(|(_, k)| *k != key);
            self.finish(key, out);
            if let (Some(args), Some(done)) = (end_args, out.last_mut()) {
                done.end_args = Some(args);
            }
        } else {
            if let (Some(args), Some(rec)) = (end_args, self.live.get_mut(&key)) {
                rec.rare_mut().end_args = Some(args);
            }
            let deadline = ev.ts_ns.saturating_add(self.config.reorder_window_ns);
            self.lingering.push((deadline, key));
        }
    }

    /// Finishes the request if nothing more is expected of it.
    fn maybe_finish(&mut self, key: Key, out: &mut Vec<RequestLifecycle>) {
        if self.live.get(&key).is_some_and(|r| r.complete()) {
            self.lingering.retain(|(_, k)| *k != key);
            self.finish(key, out);
        }
    }

    fn finish(&mut self, key: Key, out: &mut Vec<RequestLifecycle>) {
        let Some(rec) = self.live.remove(&key) else {
            return;
        };
        let mut done = rec.to_lifecycle(key);
        debug_assert_eq!(rec.fully_observed(), done.fully_observed());
        if done.outcome.is_none() {
            if done.sent_ns.is_none() && done.taken_ns.is_none() {
                self.counters.unmatched_ends += 1;
            }
            // A virtio-fs request never has a daemon: its device answered.
            let daemonless = done.taken_ns.is_none() && done.replied_ns.is_none();
            done.outcome = Some(if daemonless && !done.is_virtio() {
                Outcome::EndedWithoutDaemon
            } else {
                Outcome::Ended
            });
        }
        self.counters.finished += 1;
        out.push(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::lifecycle::{ExtraStage, LatencyStage};

    const CONN: u32 = 52;

    fn ev(kind: EventKind, unique: u64, opcode: u32, ts: u64) -> FuseEvent {
        FuseEvent {
            kind: kind as u8,
            flags: FLAG_HAS_HEADER,
            connection: CONN,
            unique,
            opcode,
            ts_ns: ts,
            nodeid: 7,
            tgid: 100,
            tid: 101,
            req_pid: 101,
            ..Default::default()
        }
    }

    fn run(events: &[FuseEvent]) -> (Tracker, Vec<RequestLifecycle>) {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for e in events {
            t.observe(e, &mut out);
        }
        (t, out)
    }

    fn daemon(mut e: FuseEvent, tid: u32) -> FuseEvent {
        e.tgid = 500;
        e.tid = tid;
        e
    }

    #[test]
    fn full_lifecycle_has_four_stages() {
        let (t, out) = run(&[
            ev(EventKind::Sent, 2, 15, 1_000),
            daemon(ev(EventKind::Taken, 2, 15, 3_000), 501),
            daemon(ev(EventKind::Replied, 2, 0, 10_000), 502),
            daemon(ev(EventKind::Ended, 2, 15, 10_500), 502),
        ]);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert!(r.fully_observed());
        assert_eq!(r.latency(LatencyStage::QueueWait), Some(2_000));
        assert_eq!(r.latency(LatencyStage::DaemonService), Some(7_000));
        assert_eq!(r.latency(LatencyStage::Completion), Some(500));
        assert_eq!(r.latency(LatencyStage::Total), Some(9_500));
        assert_eq!(r.daemon_tid, Some(501));
        assert_eq!(r.reply_tid, Some(502));
        assert_eq!(r.requester_pid, Some(100));
        assert_eq!(r.outcome, Some(Outcome::Ended));
        assert_eq!(t.in_flight_count(), 0);
        assert_eq!(
            t.counters().unmatched_ends + t.counters().unmatched_replies,
            0
        );
    }

    #[test]
    fn reordered_events_join_the_same_request() {
        // End first, then the send and the daemon's events (other CPUs).
        let (t, out) = run(&[
            ev(EventKind::Ended, 4, 3, 9_000),
            daemon(ev(EventKind::Replied, 4, 0, 8_000), 501),
            ev(EventKind::Sent, 4, 3, 1_000),
            daemon(ev(EventKind::Taken, 4, 3, 2_000), 501),
        ]);
        assert_eq!(out.len(), 1);
        assert!(out[0].fully_observed());
        assert_eq!(out[0].latency(LatencyStage::Total), Some(8_000));
        assert_eq!(t.counters().unmatched_ends, 0);
    }

    #[test]
    fn unobserved_stage_is_unknown_not_zero() {
        // No daemon-side events (e.g. the daemon used splice).
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        t.observe(&ev(EventKind::Sent, 6, 3, 1_000), &mut out);
        t.observe(&ev(EventKind::Ended, 6, 3, 5_000), &mut out);
        assert!(out.is_empty(), "waits for late events within the window");
        t.advance(5_000 + TrackerConfig::default().reorder_window_ns, &mut out);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(r.latency(LatencyStage::Total), Some(4_000));
        assert_eq!(r.latency(LatencyStage::QueueWait), None);
        assert_eq!(r.latency(LatencyStage::DaemonService), None);
        assert_eq!(r.latency(LatencyStage::Completion), None);
        assert_eq!(r.outcome, Some(Outcome::EndedWithoutDaemon));
    }

    #[test]
    fn forget_needs_no_reply() {
        let (t, out) = run(&[daemon(ev(EventKind::Taken, 8, opcode::FORGET, 1_000), 501)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Some(Outcome::NoReplyExpected));
        assert_eq!(out[0].opcode, opcode::FORGET);
        assert_eq!(out[0].latency(LatencyStage::Total), None);
        assert_eq!(t.in_flight_count(), 0);
    }

    #[test]
    fn interrupt_marks_its_target_and_ends_with_it() {
        let (t, out) = run(&[
            ev(EventKind::Sent, 10, 15, 1_000),
            daemon(ev(EventKind::Taken, 10, 15, 2_000), 501),
            daemon(ev(EventKind::Taken, 11, opcode::INTERRUPT, 3_000), 502),
            daemon(ev(EventKind::Replied, 10, 0, 4_000), 501),
            daemon(ev(EventKind::Ended, 10, 15, 4_100), 501),
        ]);
        assert_eq!(out.len(), 2);
        let target = out.iter().find(|r| r.unique == 10).unwrap();
        let int = out.iter().find(|r| r.unique == 11).unwrap();
        assert!(target.interrupted);
        assert!(target.fully_observed());
        assert_eq!(int.outcome, Some(Outcome::Interrupt));
        assert_eq!(int.opcode, opcode::INTERRUPT);
        assert_eq!(t.counters().interrupts, 1);
        assert_eq!(t.in_flight_count(), 0);
    }

    #[test]
    fn aborted_request_ends_without_daemon() {
        let mut end = ev(EventKind::Ended, 12, 1, 2_000);
        end.error = -103; // ECONNABORTED
        let (mut t, mut out) = run(&[ev(EventKind::Sent, 12, 1, 1_000), end]);
        t.flush(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Some(Outcome::EndedWithoutDaemon));
        assert_eq!(out[0].error, Some(-103));
        assert_eq!(out[0].latency(LatencyStage::Total), Some(1_000));
        assert_eq!(out[0].latency(LatencyStage::DaemonService), None);
    }

    /// Kernels 6.12 to 6.17: the send has no id yet. The daemon's take
    /// names the request's pointer and id; from then on the request is one.
    fn with_req(mut e: FuseEvent, req: u64) -> FuseEvent {
        e.req = req;
        e
    }

    #[test]
    fn send_before_its_id_is_joined_at_the_daemon_take() {
        const P: u64 = 0xffff_8880_0000_1000;
        const Q: u64 = 0xffff_8880_0000_2000;
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        // Two requests queued at once, taken in the other order.
        t.observe(&with_req(ev(EventKind::Sent, 0, 3, 1_000), P), &mut out);
        t.observe(&with_req(ev(EventKind::Sent, 0, 1, 1_100), Q), &mut out);
        assert_eq!(t.in_flight_count(), 2);
        assert!(t.in_flight().all(|r| r.unique == 0 && r.sent_ns.is_some()));
        t.observe(
            &with_req(daemon(ev(EventKind::Taken, 4, 1, 1_500), 7), Q),
            &mut out,
        );
        t.observe(
            &with_req(daemon(ev(EventKind::Taken, 6, 3, 1_600), 7), P),
            &mut out,
        );
        assert_eq!(t.in_flight_count(), 2, "each request once");
        for (u, req, ts) in [(6, P, 1_900), (4, Q, 2_000)] {
            t.observe(&daemon(ev(EventKind::Replied, u, 0, ts), 7), &mut out);
            t.observe(
                &with_req(ev(EventKind::Ended, u, 0, ts + 50), req),
                &mut out,
            );
        }
        assert_eq!(out.len(), 2);
        let getattr = out.iter().find(|r| r.unique == 6).unwrap();
        assert_eq!(getattr.opcode, 3);
        assert_eq!(getattr.sent_ns, Some(1_000));
        assert_eq!(getattr.taken_ns, Some(1_600));
        let lookup = out.iter().find(|r| r.unique == 4).unwrap();
        assert_eq!(lookup.sent_ns, Some(1_100));
        assert!(out.iter().all(|r| r.fully_observed()));
        assert_eq!(t.counters().sent_before_id, 2);
        assert_eq!(t.counters().unmatched_ends, 0);
        assert_eq!(t.in_flight_count(), 0);
    }

    #[test]
    fn send_before_its_id_is_joined_at_its_end_when_the_take_did_not_name_it() {
        const P: u64 = 0xffff_8880_0000_1000;
        let (t, out) = run(&[
            with_req(ev(EventKind::Sent, 0, 3, 1_000), P),
            daemon(ev(EventKind::Taken, 8, 3, 1_500), 7),
            daemon(ev(EventKind::Replied, 8, 0, 1_900), 7),
            with_req(ev(EventKind::Ended, 8, 0, 2_000), P),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].unique, 8);
        assert!(out[0].fully_observed(), "{:?}", out[0]);
        assert_eq!(out[0].latency(LatencyStage::QueueWait), Some(500));
        assert_eq!(t.counters().unmatched_ends, 0);
    }

    #[test]
    fn send_without_id_or_pointer_is_counted_not_joined() {
        let (mut t, mut out) = run(&[
            ev(EventKind::Sent, 0, 3, 1_000),
            ev(EventKind::Ended, 8, 0, 2_000),
        ]);
        t.flush(&mut out);
        assert_eq!(t.counters().sends_without_id, 1);
        assert_eq!(t.counters().unmatched_ends, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sent_ns, None);
    }

    #[test]
    fn a_reused_pointer_finishes_the_unnumbered_send_as_never_ended() {
        const P: u64 = 0xffff_8880_0000_1000;
        let (t, out) = run(&[
            with_req(ev(EventKind::Sent, 0, 3, 1_000), P),
            with_req(ev(EventKind::Sent, 0, 1, 5_000), P),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Some(Outcome::NeverEnded));
        assert_eq!(out[0].opcode, 3);
        assert_eq!(t.counters().never_ended, 1);
        assert_eq!(t.in_flight_count(), 1);
    }

    #[test]
    fn reused_unique_finishes_the_old_request_as_never_ended() {
        let (t, out) = run(&[
            ev(EventKind::Sent, 14, 3, 1_000),
            ev(EventKind::Sent, 14, 1, 5_000),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Some(Outcome::NeverEnded));
        assert_eq!(out[0].opcode, 3);
        assert_eq!(t.counters().never_ended, 1);
        let live: Vec<_> = t.in_flight().collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].opcode, 1);
    }

    #[test]
    fn reuse_after_an_end_starts_a_new_request() {
        // A request ended without its daemon side, then the id comes back.
        let (mut t, mut out) = run(&[
            ev(EventKind::Sent, 16, 3, 1_000),
            ev(EventKind::Ended, 16, 3, 2_000),
            ev(EventKind::Sent, 16, 1, 3_000),
        ]);
        assert_eq!(out.len(), 1, "the first request is finished by the reuse");
        assert_eq!(out[0].opcode, 3);
        t.flush(&mut out);
        assert_eq!(t.in_flight_count(), 1);
    }

    #[test]
    fn errors_and_in_flight_are_kept() {
        let mut reply = daemon(ev(EventKind::Replied, 18, 0, 3_000), 501);
        reply.error = -2;
        let mut end = ev(EventKind::Ended, 18, 1, 3_100);
        end.error = -2;
        let (t, out) = run(&[
            ev(EventKind::Sent, 18, 1, 1_000),
            daemon(ev(EventKind::Taken, 18, 1, 2_000), 501),
            reply,
            end,
            ev(EventKind::Sent, 20, 15, 4_000),
            daemon(ev(EventKind::Taken, 20, 15, 5_000), 501),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].error, Some(-2));
        let live: Vec<_> = t.in_flight().collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].current_stage(), "in daemon");
    }

    #[test]
    fn replies_and_ends_without_requests_are_counted() {
        let (mut t, mut out) = run(&[
            daemon(ev(EventKind::Replied, 30, 0, 1_000), 501),
            ev(EventKind::Ended, 32, 0, 2_000),
            daemon(ev(EventKind::Replied, 0, 0, 2_500), 501),
        ]);
        t.flush(&mut out);
        let c = t.counters();
        assert_eq!(c.unmatched_replies, 1);
        assert_eq!(c.unmatched_ends, 1);
        assert_eq!(c.notifications, 1);
    }

    /// The kernel-side reply hook's time of a write that ended no request,
    /// taken by an end in a failed read: earlier than the take, dropped
    /// and counted; the request ends without a reply stage.
    #[test]
    fn a_reply_before_the_take_is_not_the_requests() {
        let (t, out) = run(&[
            ev(EventKind::Sent, 34, 3, 1_000),
            daemon(ev(EventKind::Taken, 34, 3, 3_000), 501),
            daemon(ev(EventKind::Replied, 34, 0, 2_000), 501),
            ev(EventKind::Ended, 34, 3, 4_000),
        ]);
        // Without a reply it waits out the reorder window.
        let (mut t, mut out) = (t, out);
        t.advance(u64::MAX, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].replied_ns, None);
        assert_eq!(out[0].taken_ns, Some(3_000));
        assert_eq!(t.counters().unmatched_replies, 1);
    }

    /// The daemon side in the kernel: the reply comes folded into the end.
    #[test]
    fn a_reply_folded_into_the_end_is_the_replied_point() {
        let mut end = daemon(ev(EventKind::Ended, 36, 3, 4_000), 502);
        end.flags |= FLAG_REPLIED;
        end.aux_ns = 3_500;
        let (t, out) = run(&[
            ev(EventKind::Sent, 36, 3, 1_000),
            daemon(ev(EventKind::Taken, 36, 3, 2_000), 501),
            end,
        ]);
        assert_eq!(out.len(), 1, "finished at its end");
        assert_eq!(out[0].replied_ns, Some(3_500));
        assert_eq!(out[0].reply_tid, Some(502));
        assert!(out[0].fully_observed());
        // Before the take: not this request's reply.
        let mut stale = daemon(ev(EventKind::Ended, 38, 3, 4_000), 501);
        stale.flags |= FLAG_REPLIED;
        stale.aux_ns = 1_500;
        let (t2, mut out2) = run(&[
            ev(EventKind::Sent, 38, 3, 1_000),
            daemon(ev(EventKind::Taken, 38, 3, 2_000), 501),
            stale,
        ]);
        let mut t2 = t2;
        t2.advance(u64::MAX, &mut out2);
        assert_eq!(out2[0].replied_ns, None);
        assert_eq!(t2.counters().unmatched_replies, 1);
        assert_eq!(t.counters().unmatched_replies, 0);
    }

    #[test]
    fn background_flag_and_requester() {
        let mut send = ev(EventKind::Sent, 40, 16, 1_000);
        send.flags |= FLAG_BACKGROUND;
        send.tid = 900; // flushed by another task
        send.tgid = 900;
        let (t, _) = run(&[send]);
        let r = t.in_flight().next().unwrap();
        assert_eq!(r.background, Some(true));
        assert_eq!(r.requester_tid, Some(101));
        assert_eq!(
            r.requester_pid, None,
            "the flushing task is not the requester"
        );
        assert_eq!(r.current_stage(), "background-queued");
    }

    #[test]
    fn virtio_requests_have_device_stages_instead_of_daemon_ones() {
        let mut done = ev(EventKind::DeviceDone, 50, 15, 7_000);
        done.aux_ns = 6_500;
        let (t, out) = run(&[
            ev(EventKind::Sent, 50, 15, 1_000),
            ev(EventKind::Virtq, 50, 15, 1_500),
            // The device had no room: enqueued again, same request.
            ev(EventKind::Virtq, 50, 15, 2_000),
            done,
            ev(EventKind::Ended, 50, 15, 7_200),
        ]);
        assert_eq!(out.len(), 1, "finished at its end, no reorder wait");
        let r = &out[0];
        assert!(r.is_virtio());
        assert!(r.fully_observed());
        assert_eq!(r.extra_latency(ExtraStage::Virtqueue), Some(1_000));
        assert_eq!(r.extra_latency(ExtraStage::Device), Some(5_000));
        assert_eq!(r.latency(LatencyStage::Completion), Some(200));
        assert_eq!(r.latency(LatencyStage::Total), Some(6_200));
        assert_eq!(r.latency(LatencyStage::QueueWait), None);
        assert_eq!(r.device_irq_ns, Some(6_500));
        assert_eq!(r.outcome, Some(Outcome::Ended));
        assert_eq!(t.counters().never_ended, 0);
        assert_eq!(ExtraStage::Device.name(), "device");
    }

    #[test]
    fn in_flight_virtio_request_is_on_the_device() {
        let (t, _) = run(&[
            ev(EventKind::Sent, 52, 15, 1_000),
            ev(EventKind::Virtq, 52, 15, 1_500),
        ]);
        assert_eq!(t.in_flight().next().unwrap().current_stage(), "on device");
    }

    #[test]
    fn background_wait_is_submission_to_send() {
        let mut bg = ev(EventKind::Sent, 54, 16, 9_000);
        bg.flags |= FLAG_BACKGROUND;
        bg.aux_ns = 4_000;
        let mut sync = ev(EventKind::Sent, 56, 3, 9_500);
        sync.aux_ns = 9_400;
        let (mut t, mut out) = run(&[
            bg,
            sync,
            daemon(ev(EventKind::Taken, 54, 16, 10_000), 501),
            daemon(ev(EventKind::Replied, 54, 0, 11_000), 501),
            ev(EventKind::Ended, 54, 16, 11_500),
        ]);
        t.flush(&mut out);
        let r = out.iter().find(|r| r.unique == 54).unwrap();
        assert_eq!(r.submitted_ns, Some(4_000));
        assert_eq!(r.extra_latency(ExtraStage::BackgroundWait), Some(5_000));
        assert_eq!(r.latency(LatencyStage::QueueWait), Some(1_000));
        let s = t.in_flight().find(|r| r.unique == 56).unwrap();
        assert_eq!(s.submitted_ns, Some(9_400));
        assert_eq!(
            s.extra_latency(ExtraStage::BackgroundWait),
            None,
            "a synchronous request does not wait for a background slot"
        );
    }

    fn comm16(name: &str) -> [u8; 16] {
        Comm::new(name).0
    }

    /// The compact record the tracker keeps hands back every field of
    /// [`RequestLifecycle`], in flight and finished: a request with every
    /// stage (daemon and virtio-fs, interrupted, background, writeback,
    /// submission time), each value distinct.
    #[test]
    fn compact_record_round_trips_every_field() {
        let mut send = ev(EventKind::Sent, 60, 16, 1_000);
        send.flags |= FLAG_BACKGROUND | FLAG_WRITEBACK_CACHE;
        send.aux_ns = 400;
        send.req_uid = 1_000;
        send.len = 4_176;
        send.arg0 = 8_192;
        send.arg1 = 4_096;
        send.comm = comm16("writer");
        let mut done = ev(EventKind::DeviceDone, 60, 16, 2_500);
        done.aux_ns = 2_400;
        let mut reply = daemon(ev(EventKind::Replied, 60, 0, 3_000), 502);
        reply.len = 24;
        let mut end = ev(EventKind::Ended, 60, 16, 3_500);
        end.error = -4;
        end.len = 24;
        end.arg0 = 0x55;
        end.arg1 = 0x66;
        // Taken through io_uring queue 3 (a ring daemon; the virtio-fs
        // events only fill the other fields).
        let mut take = daemon(ev(EventKind::Taken, 60, 16, 2_000), 501);
        take.flags |= FLAG_URING;
        take.arg0 = 3;
        let (mut t, mut out) = run(&[
            send,
            ev(EventKind::Virtq, 60, 16, 1_500),
            take,
            daemon(ev(EventKind::Taken, 61, opcode::INTERRUPT, 2_100), 503),
            done,
        ]);
        let mut expected = RequestLifecycle {
            connection: CONN,
            unique: 60,
            opcode: 16,
            nodeid: Some(7),
            requester_pid: Some(100),
            requester_tid: Some(101),
            requester_uid: Some(1_000),
            requester_comm: Some(Comm(comm16("writer"))),
            background: Some(true),
            daemon_tid: Some(501),
            reply_tid: None,
            sent_ns: Some(1_000),
            taken_ns: Some(2_000),
            replied_ns: None,
            ended_ns: None,
            error: None,
            request_len: Some(4_176),
            reply_len: None,
            interrupted: true,
            outcome: None,
            submitted_ns: Some(400),
            virtq_ns: Some(1_500),
            device_irq_ns: Some(2_400),
            device_done_ns: Some(2_500),
            sender_tid: Some(101),
            sender_comm: Some(Comm(comm16("writer"))),
            writeback_cache: Some(true),
            send_args: Some([8_192, 4_096]),
            end_args: None,
            path: None,
            transport: Some(Transport::IoUring),
            ring_queue: Some(3),
        };
        assert!(out.is_empty());
        let live: Vec<_> = t.in_flight().filter(|r| r.unique == 60).collect();
        assert_eq!(live, [expected.clone()]);

        t.observe(&reply, &mut out);
        t.observe(&end, &mut out);
        expected.reply_tid = Some(502);
        expected.replied_ns = Some(3_000);
        expected.ended_ns = Some(3_500);
        expected.error = Some(-4);
        expected.reply_len = Some(24);
        expected.outcome = Some(Outcome::Ended);
        expected.end_args = Some([0x55, 0x66]);
        assert_eq!(out.len(), 2, "the request and its interrupt: {out:?}");
        assert_eq!(out[0].unique, 61);
        assert_eq!(out[0].outcome, Some(Outcome::Interrupt));
        assert_eq!(out[1], expected);
        t.flush(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(t.in_flight_count(), 0);
    }

    /// An end seen before the daemon's events (other CPUs) waits for them
    /// with its arguments; flags seen false stay known, not unknown.
    #[test]
    fn end_waiting_for_late_events_keeps_its_arguments() {
        let mut send = ev(EventKind::Sent, 62, 15, 1_000);
        send.comm = comm16("reader");
        let mut end = ev(EventKind::Ended, 62, 15, 5_000);
        end.arg0 = 77;
        end.arg1 = 88;
        let (mut t, mut out) = run(&[send, end]);
        assert!(out.is_empty(), "waits for the daemon's events");
        assert_eq!(t.in_flight_count(), 0, "ended: no longer in flight");
        t.observe(&daemon(ev(EventKind::Taken, 62, 15, 2_000), 501), &mut out);
        t.observe(&daemon(ev(EventKind::Replied, 62, 0, 4_000), 501), &mut out);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert!(r.fully_observed());
        assert_eq!(r.end_args, Some([77, 88]));
        assert_eq!(r.background, Some(false));
        assert_eq!(r.writeback_cache, Some(false));
        assert_eq!(r.requester_comm.as_deref(), Some("reader"));
        assert_eq!(r.submitted_ns, None);
        assert_eq!(
            (r.virtq_ns, r.device_done_ns, r.device_irq_ns),
            (None, None, None)
        );
        assert_eq!(
            r.error,
            Some(0),
            "the daemon's reply, then the kernel's end"
        );
    }

    /// A request seen only at its daemon side has no sender, no requester
    /// comm, and unknown flags: absent stays `None`, not a zero.
    #[test]
    fn compact_record_keeps_unseen_values_unknown() {
        let mut take = daemon(ev(EventKind::Taken, 64, 1, 2_000), 501);
        take.nodeid = 0;
        let (t, _) = run(&[take]);
        let r = t.in_flight().next().unwrap();
        assert_eq!(r.nodeid, Some(0), "a header's node 0 is a value");
        assert_eq!((r.sent_ns, r.sender_tid, r.sender_comm), (None, None, None));
        assert_eq!((r.requester_pid, r.requester_comm), (None, None));
        assert_eq!(r.requester_tid, Some(101));
        assert_eq!((r.background, r.writeback_cache), (None, None));
        assert_eq!((r.send_args, r.end_args, r.error), (None, None, None));
        assert!(!r.interrupted);
    }
}

#[cfg(test)]
mod memory {
    use super::*;

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// With glibc's 8-byte chunk header, one 144-byte chunk per request;
    /// a field more moves it to the next size (see `bytes_per_request_in_flight`).
    #[test]
    fn in_flight_record_stays_compact() {
        assert!(std::mem::size_of::<Live>() <= 136);
    }

    /// Resident bytes per request in flight, for BENCHMARKS.md: run alone
    /// (`cargo test -p fusetrace --lib --release -- --ignored --exact
    /// tracker::memory::bytes_per_request_in_flight --nocapture`).
    #[test]
    #[ignore]
    fn bytes_per_request_in_flight() {
        const N: u64 = 100_000;
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let mut comm = [0u8; 16];
        comm[..12].copy_from_slice(b"stall-helper");
        let before = rss_bytes();
        for i in 0..N {
            let ev = FuseEvent {
                kind: EventKind::Sent as u8,
                flags: FLAG_HAS_HEADER,
                connection: 52,
                unique: 2 * (i + 1),
                opcode: 15, // READ
                ts_ns: 1_000 + i,
                nodeid: 7,
                tgid: 1_000 + (i / 25_000) as u32,
                tid: 2_000 + i as u32,
                req_pid: 2_000 + i as u32,
                len: 80,
                comm,
                ..Default::default()
            };
            t.observe(&ev, &mut out);
        }
        let after = rss_bytes();
        assert!(out.is_empty());
        assert_eq!(t.in_flight_count(), N as usize);
        let per = (after - before) as f64 / N as f64;
        println!(
            "{N} requests in flight: {:.1} MiB resident, {per:.0} bytes each \
             (record {} bytes, {} as a RequestLifecycle)",
            (after - before) as f64 / (1 << 20) as f64,
            std::mem::size_of::<Live>(),
            std::mem::size_of::<RequestLifecycle>(),
        );
    }
}
