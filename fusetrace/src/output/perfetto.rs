//! `report --perfetto` and `record --perfetto`: requests as a Perfetto
//! trace, for the timeline a table of percentiles cannot show (requests
//! queued behind one busy daemon thread, a burst of WRITEs at close()).
//!
//! Format: Perfetto's protobuf (`perfetto.protos.Trace`, a stream of
//! `TracePacket`s), not Chrome's JSON trace events. The protobuf is written
//! one packet at a time (a file is a concatenation of packets, so the
//! export streams), is about a third of the JSON's size and loads faster
//! (BENCHMARKS.md has the figures for a million requests); JSON has no
//! counter tracks nested under a mount, and its flow events bind by
//! enclosing slice, which breaks on overlapping requests. The messages are
//! declared here with prost's derive at the field numbers of Perfetto's
//! published `trace.proto` (only the fields we write), so no protoc is
//! needed to build; the tests read the output back with Perfetto's own
//! compiled protos (the `perfetto` package on PyPI).
//!
//! What is drawn:
//! - each request (sent and ended seen) a slice named after its opcode on
//!   its requester thread's track, with its stages `queue`, `daemon` and
//!   `complete` (virtio-fs: `virtqueue`, `device`, `complete`) as child
//!   slices, and arguments (mount, unique, node, error, sizes);
//! - the daemon's service of it a slice on the daemon thread's track
//!   (taken to replied);
//! - a flow from the request's queue stage to the daemon thread's slice to
//!   the completion;
//! - per mount, counter tracks of requests in flight and of requests ended
//!   per second;
//! - with `record --app-writes`, each application write(2) a slice on its
//!   thread's `write(2)` track, with a flow to every WRITE request that
//!   carried some of its bytes (same node, overlapping range, sent after
//!   the write began): inside the call when write-through, at close() or
//!   from a flusher thread with the writeback cache. A write is drawn once
//!   all its bytes went out (or at the end), since its flows must be known
//!   when its slice is written; a WRITE request waits 1 s of recorded time
//!   (`WRITE_HOLD_NS`), since a write-through WRITE ends before the event
//!   of the write(2) that carried it. The trace processor sorts by time.
//!
//! Slices on one track must nest; requests of one thread can overlap
//! (background READs and WRITEs), so a thread gets lanes: a request goes on
//! the first lane free since before it began, extra lanes as child tracks
//! of the thread. Memory is bounded by threads, lanes and requests in
//! flight, not by the recording's length: in-flight counts come from the
//! events (sent +1, ended -1) through a reorder buffer as long as the
//! tracker's reorder window.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    io::Write,
};

use anyhow::{Context, Result};
use fusetrace_common::{EventKind, FuseEvent, opcode as op};
use prost::Message;

use crate::kernel::decode::FileNames;
use crate::{
    pipeline::sink::Sink,
    pipeline::{
        connections::ConnectionTable,
        lifecycle::{Comm, ExtraStage, LatencyStage, RequestLifecycle},
        opcode,
        summary::RunSummary,
    },
};

#[derive(Clone, PartialEq, Message)]
struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    track_event: Option<TrackEvent>,
    #[prost(message, optional, tag = "12")]
    interned_data: Option<InternedData>,
    #[prost(uint32, optional, tag = "13")]
    sequence_flags: Option<u32>,
    #[prost(message, optional, tag = "60")]
    track_descriptor: Option<TrackDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
struct TrackEvent {
    #[prost(message, repeated, tag = "4")]
    debug_annotations: Vec<DebugAnnotation>,
    #[prost(int32, optional, tag = "9")]
    r#type: Option<i32>,
    #[prost(uint64, optional, tag = "10")]
    name_iid: Option<u64>,
    #[prost(uint64, optional, tag = "11")]
    track_uuid: Option<u64>,
    #[prost(string, optional, tag = "23")]
    name: Option<String>,
    #[prost(int64, optional, tag = "30")]
    counter_value: Option<i64>,
    #[prost(fixed64, repeated, packed = "false", tag = "47")]
    flow_ids: Vec<u64>,
    #[prost(fixed64, repeated, packed = "false", tag = "48")]
    terminating_flow_ids: Vec<u64>,
}

/// `TrackEvent.Type`.
const SLICE_BEGIN: i32 = 1;
const SLICE_END: i32 = 2;
const COUNTER: i32 = 4;
/// `TracePacket.SequenceFlags`: the first packet clears the interning
/// state; every packet may use interned strings.
const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
const SEQ_NEEDS_INCREMENTAL_STATE: u32 = 2;
/// `CounterDescriptor.Unit.UNIT_COUNT`.
const UNIT_COUNT: i32 = 2;
/// Every packet is ours: one sequence.
const SEQUENCE: u32 = 1;

#[derive(Clone, PartialEq, Message)]
struct DebugAnnotation {
    #[prost(uint64, optional, tag = "1")]
    name_iid: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    uint_value: Option<u64>,
    #[prost(int64, optional, tag = "4")]
    int_value: Option<i64>,
    #[prost(string, optional, tag = "6")]
    string_value: Option<String>,
    #[prost(string, optional, tag = "10")]
    name: Option<String>,
    #[prost(uint64, optional, tag = "17")]
    string_value_iid: Option<u64>,
}

/// Strings sent once per trace and then named by number (`iid`): event
/// names, argument names, argument strings (mount points).
#[derive(Clone, PartialEq, Message)]
struct InternedData {
    #[prost(message, repeated, tag = "2")]
    event_names: Vec<Interned>,
    #[prost(message, repeated, tag = "3")]
    debug_annotation_names: Vec<Interned>,
    #[prost(message, repeated, tag = "29")]
    debug_annotation_string_values: Vec<Interned>,
}

/// `EventName`, `DebugAnnotationName` and `InternedString` share this
/// shape (iid 1, the text 2; `InternedString.str` is bytes, same wire type).
#[derive(Clone, PartialEq, Message)]
struct Interned {
    #[prost(uint64, optional, tag = "1")]
    iid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    name: Option<String>,
}

/// Which table of `InternedData` a string goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    EventName,
    ArgName,
    ArgString,
}

#[derive(Clone, PartialEq, Message)]
struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    uuid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    name: Option<String>,
    #[prost(message, optional, tag = "3")]
    process: Option<ProcessDescriptor>,
    #[prost(message, optional, tag = "4")]
    thread: Option<ThreadDescriptor>,
    #[prost(uint64, optional, tag = "5")]
    parent_uuid: Option<u64>,
    #[prost(message, optional, tag = "8")]
    counter: Option<CounterDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
struct ProcessDescriptor {
    #[prost(int32, optional, tag = "1")]
    pid: Option<i32>,
    #[prost(string, optional, tag = "6")]
    process_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ThreadDescriptor {
    #[prost(int32, optional, tag = "1")]
    pid: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    tid: Option<i32>,
    #[prost(string, optional, tag = "5")]
    thread_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct CounterDescriptor {
    #[prost(int32, optional, tag = "3")]
    unit: Option<i32>,
}

fn uint(name: &str, v: u64) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        uint_value: Some(v),
        ..DebugAnnotation::default()
    }
}

fn int(name: &str, v: i64) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        int_value: Some(v),
        ..DebugAnnotation::default()
    }
}

fn string(name: &str, v: String) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.into()),
        string_value: Some(v),
        ..DebugAnnotation::default()
    }
}

/// Track uuids: the kind in the low 4 bits, so ids of different kinds
/// never meet and common ones stay short varints.
mod uuid {
    fn of(kind: u64, id: u32) -> u64 {
        (u64::from(id) << 4) | kind
    }
    pub fn process(pid: u32) -> u64 {
        of(1, pid)
    }
    pub fn thread(tid: u32) -> u64 {
        of(2, tid)
    }
    pub fn lane(tid: u32, lane: usize) -> u64 {
        ((lane as u64) << 36) | of(3, tid)
    }
    pub fn in_flight(conn: u32) -> u64 {
        of(4, conn)
    }
    pub fn per_second(conn: u32) -> u64 {
        of(5, conn)
    }
    pub fn app_writes(tid: u32) -> u64 {
        of(6, tid)
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.rotate_left(17) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// An application's write(2) (recorded with `--app-writes`) waiting for
/// the WRITE requests that carry its bytes; drawn once they all went out.
struct PendingWrite {
    tid: u32,
    pos: u64,
    len: u64,
    enter_ns: u64,
    exit_ns: u64,
    /// Bytes of it that WRITE requests carried so far.
    carried: u64,
    /// One flow to each of those WRITE requests.
    flows: Vec<u64>,
}

/// Application writes waiting at once, beyond which the oldest are drawn
/// with the flows they have (bounded memory on a mount whose dirty pages
/// never go out while recorded).
const MAX_PENDING_WRITES: usize = 65_536;

/// How long (recorded time after its end) a WRITE request waits to be
/// drawn when application writes are recorded: a write-through WRITE ends
/// inside the write(2) that carries it, whose event comes at the call's
/// exit. A write(2) longer than this links only to its last WRITEs.
const WRITE_HOLD_NS: u64 = 1_000_000_000;

/// A finished WRITE request waiting ([`WRITE_HOLD_NS`]) for the
/// application writes whose bytes it carried.
struct HeldWrite {
    rec: RequestLifecycle,
    flow: u64,
    /// Flows from the application writes it carried, ending at its slice.
    carried: Vec<u64>,
}

/// Links application write `w` to WRITE request `rec` (flow `flow`) when
/// the request carried some of its bytes: same node (the caller's key), an
/// overlapping range, sent after the write began. The flow's id, or `None`.
fn link(w: &mut PendingWrite, rec: &RequestLifecycle, flow: u64) -> Option<u64> {
    let (offset, size, _) = rec.io_range()?;
    let overlap = (w.pos + w.len)
        .min(offset + size)
        .saturating_sub(w.pos.max(offset));
    if overlap == 0 || w.enter_ns > rec.sent_ns? {
        return None;
    }
    let id = mix(flow, w.enter_ns);
    w.flows.push(id);
    w.carried += overlap;
    Some(id)
}

/// One flow per request; ids are unique within the trace (a request id
/// repeats across mounts and remounts, so the send time goes in).
fn flow_id(rec: &RequestLifecycle, sent_ns: u64) -> u64 {
    mix(mix(u64::from(rec.connection), rec.unique), sent_ns)
}

/// Whose thread a track is: the requester's side or the daemon's.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Requester,
    Daemon,
}

/// An in-flight change waiting in the reorder buffer.
type Change = Reverse<(u64, u64, u32, i8)>;

/// What a finished export says about itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct PerfettoCounts {
    pub slices: u64,
    /// Applications' write(2)s drawn, and of those, linked to WRITE requests.
    pub app_writes: u64,
    pub app_writes_linked: u64,
    /// Requests without a seen send or end (begun before the recording,
    /// never ended, FORGET): not drawn.
    pub not_drawn: u64,
}

/// The Perfetto exporter: a sink fed by a replay.
pub struct PerfettoSink<W: Write> {
    out: W,
    buf: Vec<u8>,
    first: bool,
    /// Interned strings, and those new since the last packet.
    interned: [HashMap<String, u64>; 3],
    next_iid: u64,
    new_interned: InternedData,
    /// Tracks whose descriptor was written.
    described: HashSet<u64>,
    /// Per (side, thread): when each lane is free again.
    lanes: HashMap<(Side, u32), Vec<u64>>,
    /// Thread id -> (process id, command), from the events' current task.
    threads: HashMap<u32, (u32, Comm)>,
    /// Requests sent and not yet ended, by (connection, pointer or id).
    open: HashSet<(u32, u64)>,
    changes: BinaryHeap<Change>,
    order: u64,
    window_ns: u64,
    watermark_ns: u64,
    in_flight: HashMap<u32, i64>,
    /// Per connection: the second being counted and its ends so far.
    rate: HashMap<u32, (u64, i64)>,
    /// Per (connection, node): application writes not yet carried.
    pending_writes: HashMap<(u32, u64), Vec<PendingWrite>>,
    pending_count: usize,
    /// The recordings hold application writes: WRITE requests are held.
    app_writes: bool,
    /// Per (connection, node): finished WRITE requests not yet drawn, in
    /// the order they finished; and every one's (release time, key).
    held: HashMap<(u32, u64), VecDeque<HeldWrite>>,
    held_order: VecDeque<(u64, (u32, u64))>,
    pub counts: PerfettoCounts,
}

impl<W: Write> PerfettoSink<W> {
    /// `window_ns`: how far out of time order events may arrive (the
    /// recording's reorder window); `app_writes`: the recordings hold
    /// applications' writes (`record --app-writes`).
    pub fn new(out: W, window_ns: u64, app_writes: bool) -> Self {
        PerfettoSink {
            out,
            buf: Vec::with_capacity(256),
            first: true,
            interned: Default::default(),
            next_iid: 1,
            new_interned: InternedData::default(),
            described: HashSet::new(),
            lanes: HashMap::new(),
            threads: HashMap::new(),
            open: HashSet::new(),
            changes: BinaryHeap::new(),
            order: 0,
            window_ns,
            watermark_ns: 0,
            in_flight: HashMap::new(),
            rate: HashMap::new(),
            pending_writes: HashMap::new(),
            pending_count: 0,
            app_writes,
            held: HashMap::new(),
            held_order: VecDeque::new(),
            counts: PerfettoCounts::default(),
        }
    }

    /// The underlying writer (flushed by `finish`).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// The iid of `text` in `table`, interning it on first use.
    fn intern(&mut self, table: Table, text: String) -> u64 {
        if let Some(&iid) = self.interned[table as usize].get(text.as_str()) {
            return iid;
        }
        let iid = self.next_iid;
        self.next_iid += 1;
        let entry = Interned {
            iid: Some(iid),
            name: Some(text.clone()),
        };
        let n = &mut self.new_interned;
        match table {
            Table::EventName => n.event_names.push(entry),
            Table::ArgName => n.debug_annotation_names.push(entry),
            Table::ArgString => n.debug_annotation_string_values.push(entry),
        }
        self.interned[table as usize].insert(text, iid);
        iid
    }

    /// Writes one packet, its strings replaced by interned ids (new ones
    /// sent along in the same packet).
    fn packet(&mut self, mut p: TracePacket) -> Result<()> {
        if let Some(e) = p.track_event.as_mut() {
            if let Some(n) = e.name.take() {
                e.name_iid = Some(self.intern(Table::EventName, n));
            }
            for a in &mut e.debug_annotations {
                if let Some(n) = a.name.take() {
                    a.name_iid = Some(self.intern(Table::ArgName, n));
                }
                if let Some(v) = a.string_value.take() {
                    a.string_value_iid = Some(self.intern(Table::ArgString, v));
                }
            }
        }
        let n = &self.new_interned;
        if !(n.event_names.is_empty()
            && n.debug_annotation_names.is_empty()
            && n.debug_annotation_string_values.is_empty())
        {
            p.interned_data = Some(std::mem::take(&mut self.new_interned));
        }
        p.trusted_packet_sequence_id = Some(SEQUENCE);
        p.sequence_flags = Some(if self.first {
            SEQ_INCREMENTAL_STATE_CLEARED | SEQ_NEEDS_INCREMENTAL_STATE
        } else {
            SEQ_NEEDS_INCREMENTAL_STATE
        });
        self.first = false;
        self.buf.clear();
        // `Trace.packet` is field 1, length-delimited.
        self.buf.push(0x0a);
        p.encode_length_delimited(&mut self.buf)?;
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    fn describe(&mut self, d: TrackDescriptor) -> Result<()> {
        let uuid = d.uuid.unwrap_or_default();
        if self.described.insert(uuid) {
            self.packet(TracePacket {
                track_descriptor: Some(d),
                ..TracePacket::default()
            })?;
        }
        Ok(())
    }

    /// Draws an application's write(2) on its thread's `write(2)` track,
    /// with a flow to each WRITE request that carried its bytes.
    fn draw_app_write(&mut self, w: PendingWrite) -> Result<()> {
        self.describe_thread(w.tid, None, None)?;
        let track = uuid::app_writes(w.tid);
        self.describe(TrackDescriptor {
            uuid: Some(track),
            parent_uuid: Some(uuid::thread(w.tid)),
            name: Some(format!("{} write(2)", w.tid)),
            ..TrackDescriptor::default()
        })?;
        self.counts.app_writes += 1;
        if !w.flows.is_empty() {
            self.counts.app_writes_linked += 1;
        }
        self.slice(SLICE_BEGIN, w.enter_ns, track, Some("write(2)"), |e| {
            e.debug_annotations.push(uint("pos", w.pos));
            e.debug_annotations.push(uint("len", w.len));
            e.flow_ids = w.flows;
        })?;
        self.slice(SLICE_END, w.exit_ns, track, None, |_| {})
    }

    /// The flows from the pending application writes whose bytes the WRITE
    /// request `rec` carries; those now wholly carried are drawn.
    fn carry(&mut self, rec: &RequestLifecycle, flow: u64) -> Result<Vec<u64>> {
        let Some(pending) = rec
            .nodeid
            .and_then(|node| self.pending_writes.get_mut(&(rec.connection, node)))
        else {
            return Ok(Vec::new());
        };
        let ids: Vec<u64> = pending
            .iter_mut()
            .filter_map(|w| link(w, rec, flow))
            .collect();
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(pending)
            .into_iter()
            .partition(|w| w.carried >= w.len);
        *pending = rest;
        self.pending_count -= done.len();
        for w in done {
            self.draw_app_write(w)?;
        }
        Ok(ids)
    }

    /// Draws every application write still waiting (in a fixed order, so
    /// that one recording always converts to the same bytes).
    fn draw_pending_writes(&mut self) -> Result<()> {
        let mut all: Vec<PendingWrite> = self.pending_writes.drain().flat_map(|(_, v)| v).collect();
        all.sort_by_key(|w| (w.enter_ns, w.tid));
        self.pending_count = 0;
        for w in all {
            self.draw_app_write(w)?;
        }
        Ok(())
    }

    /// Describes `tid`'s thread track and its process, once; the process
    /// and name default to what the events said of the thread.
    fn describe_thread(&mut self, tid: u32, pid: Option<u32>, name: Option<Comm>) -> Result<()> {
        if self.described.contains(&uuid::thread(tid)) {
            return Ok(());
        }
        let known = self.threads.get(&tid).copied();
        let pid = pid.or(known.map(|t| t.0)).unwrap_or(tid);
        let name = name.or(known.map(|t| t.1)).map(|c| c.to_string());
        self.describe(TrackDescriptor {
            uuid: Some(uuid::process(pid)),
            process: Some(ProcessDescriptor {
                pid: Some(pid as i32),
                process_name: if pid == tid { name.clone() } else { None },
            }),
            ..TrackDescriptor::default()
        })?;
        self.describe(TrackDescriptor {
            uuid: Some(uuid::thread(tid)),
            thread: Some(ThreadDescriptor {
                pid: Some(pid as i32),
                tid: Some(tid as i32),
                thread_name: name,
            }),
            ..TrackDescriptor::default()
        })
    }

    /// The track for a slice of `tid` over [start, end]: the thread's own
    /// or one of its lanes, described on first use.
    fn track(
        &mut self,
        side: Side,
        tid: u32,
        pid: Option<u32>,
        name: Option<Comm>,
        start: u64,
        end: u64,
    ) -> Result<u64> {
        self.describe_thread(tid, pid, name)?;
        let lanes = self.lanes.entry((side, tid)).or_default();
        let lane = match lanes.iter().position(|&free| free <= start) {
            Some(i) => {
                lanes[i] = end;
                i
            }
            None => {
                lanes.push(end);
                lanes.len() - 1
            }
        };
        // Lane numbers are per side; the daemon's lanes of a thread that
        // also requests (rare) come after the requester's.
        let lane = match side {
            Side::Requester => lane,
            Side::Daemon => lane + 1_000,
        };
        if lane == 0 {
            return Ok(uuid::thread(tid));
        }
        let u = uuid::lane(tid, lane);
        self.describe(TrackDescriptor {
            uuid: Some(u),
            parent_uuid: Some(uuid::thread(tid)),
            name: Some(match side {
                Side::Requester => format!("{tid} overlapping requests {lane}"),
                Side::Daemon => format!("{tid} daemon service {}", lane - 1_000),
            }),
            ..TrackDescriptor::default()
        })?;
        Ok(u)
    }

    fn slice(
        &mut self,
        kind: i32,
        ts: u64,
        track: u64,
        name: Option<&str>,
        fill: impl FnOnce(&mut TrackEvent),
    ) -> Result<()> {
        let mut e = TrackEvent {
            r#type: Some(kind),
            track_uuid: Some(track),
            name: name.map(str::to_string),
            ..TrackEvent::default()
        };
        fill(&mut e);
        self.packet(TracePacket {
            timestamp: Some(ts),
            track_event: Some(e),
            ..TracePacket::default()
        })
    }

    fn counter(&mut self, track: u64, ts: u64, value: i64) -> Result<()> {
        self.packet(TracePacket {
            timestamp: Some(ts),
            track_event: Some(TrackEvent {
                r#type: Some(COUNTER),
                track_uuid: Some(track),
                counter_value: Some(value),
                ..TrackEvent::default()
            }),
            ..TracePacket::default()
        })
    }

    fn counter_tracks(&mut self, conn: u32, mounts: &mut ConnectionTable) -> Result<()> {
        if self.described.contains(&uuid::in_flight(conn)) {
            return Ok(());
        }
        let mount = mounts.name(conn);
        for (u, what) in [
            (uuid::in_flight(conn), "requests in flight"),
            (uuid::per_second(conn), "requests ended per second"),
        ] {
            self.describe(TrackDescriptor {
                uuid: Some(u),
                name: Some(format!("{mount} {what}")),
                counter: Some(CounterDescriptor {
                    unit: Some(UNIT_COUNT),
                }),
                ..TrackDescriptor::default()
            })?;
        }
        Ok(())
    }

    /// Applies the buffered in-flight changes older than `until_ns`, in
    /// time order, writing a counter sample for each.
    fn drain(&mut self, until_ns: u64, mounts: &mut ConnectionTable) -> Result<()> {
        while let Some(Reverse((ts, ..))) = self.changes.peek().copied() {
            if ts > until_ns {
                break;
            }
            // Every change of this nanosecond first (requests on two CPUs
            // may begin or end in the same one): then one sample per
            // mount, the count after them all.
            let mut touched: Vec<u32> = Vec::new();
            while let Some(Reverse((t, _, conn, delta))) = self.changes.peek().copied() {
                if t != ts {
                    break;
                }
                self.changes.pop();
                self.counter_tracks(conn, mounts)?;
                *self.in_flight.entry(conn).or_default() += i64::from(delta);
                if delta < 0 {
                    self.count_end(conn, ts)?;
                }
                if !touched.contains(&conn) {
                    touched.push(conn);
                }
            }
            for conn in touched {
                let n = self.in_flight[&conn];
                self.counter(uuid::in_flight(conn), ts, n)?;
            }
        }
        Ok(())
    }

    /// Requests ended per second: a sample at each second's start, once
    /// the second is over (and a zero after a quiet gap).
    fn count_end(&mut self, conn: u32, ts: u64) -> Result<()> {
        let sec = ts / 1_000_000_000;
        let (cur, n) = *self.rate.entry(conn).or_insert((sec, 0));
        if sec != cur {
            self.close_second(conn, cur, n, Some(sec))?;
            self.rate.insert(conn, (sec, 1));
        } else {
            self.rate.insert(conn, (cur, n + 1));
        }
        Ok(())
    }

    fn close_second(&mut self, conn: u32, sec: u64, n: i64, next: Option<u64>) -> Result<()> {
        self.counter(uuid::per_second(conn), sec * 1_000_000_000, n)?;
        if next.is_none_or(|s| s > sec + 1) {
            self.counter(uuid::per_second(conn), (sec + 1) * 1_000_000_000, 0)?;
        }
        Ok(())
    }
}

/// The key an event names its request by: the `struct fuse_req *` where
/// the recording has it (a send may come before its id), else the id.
fn request_key(ev: &FuseEvent) -> (u32, u64) {
    if ev.req != 0 {
        (ev.connection, ev.req)
    } else {
        (ev.connection, ev.unique)
    }
}

impl<W: Write> Sink for PerfettoSink<W> {
    fn event(&mut self, ev: &FuseEvent, _names: Option<&FileNames>) -> Result<()> {
        let kind = EventKind::from_u8(ev.kind);
        if matches!(
            kind,
            Some(EventKind::Sent | EventKind::Taken | EventKind::Replied | EventKind::AppWrite)
        ) {
            self.threads.insert(ev.tid, (ev.tgid, Comm(ev.comm)));
        }
        if kind == Some(EventKind::AppWrite) && ev.error == 0 && ev.len > 0 {
            if self.pending_count >= MAX_PENDING_WRITES {
                self.draw_pending_writes()?;
            }
            let key = (ev.connection, ev.nodeid);
            let mut w = PendingWrite {
                tid: ev.tid,
                pos: ev.arg0,
                len: u64::from(ev.len),
                enter_ns: ev.aux_ns,
                exit_ns: ev.ts_ns,
                carried: 0,
                flows: Vec::new(),
            };
            // Write-through: the WRITEs it carried ended before its exit.
            for h in self.held.get_mut(&key).into_iter().flatten() {
                if let Some(id) = link(&mut w, &h.rec, h.flow) {
                    h.carried.push(id);
                }
            }
            if w.carried >= w.len {
                self.draw_app_write(w)?;
            } else {
                self.pending_count += 1;
                self.pending_writes.entry(key).or_default().push(w);
            }
        }
        let delta = match kind {
            Some(EventKind::Sent)
                if !matches!(ev.opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT) =>
            {
                self.open.insert(request_key(ev));
                1
            }
            Some(EventKind::Ended) if self.open.remove(&request_key(ev)) => -1,
            _ => 0,
        };
        if delta != 0 {
            self.order += 1;
            self.changes
                .push(Reverse((ev.ts_ns, self.order, ev.connection, delta)));
        }
        // Samples are written by `request` and `finish`, which have the
        // mount names for the counter tracks' descriptors.
        self.watermark_ns = self.watermark_ns.max(ev.ts_ns);
        Ok(())
    }

    fn request(&mut self, rec: &RequestLifecycle, mounts: &mut ConnectionTable) -> Result<()> {
        let until = self.watermark_ns.saturating_sub(self.window_ns);
        self.drain(until, mounts)?;
        self.release_held(self.watermark_ns.saturating_sub(WRITE_HOLD_NS), mounts)?;
        let (Some(start), Some(end)) = (rec.sent_ns, rec.ended_ns) else {
            self.counts.not_drawn += 1;
            return Ok(());
        };
        let flow = flow_id(rec, start);
        if rec.opcode != op::WRITE {
            return self.draw(rec, start, end, flow, Vec::new(), mounts);
        }
        // Writeback: the application writes it carries came before it.
        let carried = self.carry(rec, flow)?;
        match rec.nodeid {
            Some(node) if self.app_writes => {
                let key = (rec.connection, node);
                self.held.entry(key).or_default().push_back(HeldWrite {
                    rec: rec.clone(),
                    flow,
                    carried,
                });
                self.held_order
                    .push_back((end.saturating_add(WRITE_HOLD_NS), key));
                Ok(())
            }
            _ => self.draw(rec, start, end, flow, carried, mounts),
        }
    }

    fn finish(&mut self, _summary: &RunSummary, mounts: &mut ConnectionTable) -> Result<()> {
        self.drain(u64::MAX, mounts)?;
        self.release_held(u64::MAX, mounts)?;
        self.draw_pending_writes()?;
        let mut rates: Vec<(u32, (u64, i64))> = self.rate.drain().collect();
        rates.sort_unstable();
        for (conn, (sec, n)) in rates {
            self.close_second(conn, sec, n, None)?;
        }
        self.out.flush().context("cannot write the Perfetto trace")
    }
}

impl<W: Write> PerfettoSink<W> {
    /// Draws the held WRITE requests due by `until_ns` (recorded time).
    fn release_held(&mut self, until_ns: u64, mounts: &mut ConnectionTable) -> Result<()> {
        while let Some(&(due, key)) = self.held_order.front() {
            if due > until_ns {
                break;
            }
            self.held_order.pop_front();
            let Some(h) = self.held.get_mut(&key).and_then(VecDeque::pop_front) else {
                continue;
            };
            if self.held.get(&key).is_some_and(VecDeque::is_empty) {
                self.held.remove(&key);
            }
            let (Some(start), Some(end)) = (h.rec.sent_ns, h.rec.ended_ns) else {
                continue;
            };
            self.draw(&h.rec, start, end, h.flow, h.carried, mounts)?;
        }
        Ok(())
    }

    /// Writes request `rec`'s slices (sent at `start`, ended at `end`, flow
    /// `flow`); `carried`: flows from the application writes it carried.
    fn draw(
        &mut self,
        rec: &RequestLifecycle,
        start: u64,
        end: u64,
        flow: u64,
        carried: Vec<u64>,
        mounts: &mut ConnectionTable,
    ) -> Result<()> {
        let name = opcode::name(rec.opcode);
        // Background requests (RELEASE, writeback) have no requester: the
        // thread that sent them stands in.
        let (tid, pid, comm) = match rec.requester_tid {
            Some(tid) => (tid, rec.requester_pid, rec.requester_comm),
            None => (rec.sender_tid.unwrap_or(0), None, rec.sender_comm),
        };
        let track = self.track(Side::Requester, tid, pid, comm, start, end)?;
        let mount = mounts.name(rec.connection);
        self.slice(SLICE_BEGIN, start, track, Some(&name), |e| {
            e.terminating_flow_ids = carried;
            let a = &mut e.debug_annotations;
            a.push(string("mount", mount));
            a.push(uint("unique", rec.unique));
            if let Some(n) = rec.nodeid {
                a.push(uint("node", n));
            }
            if let Some(p) = &rec.path {
                a.push(string("path", p.to_string()));
            }
            if let Some(t) = rec.transport {
                a.push(string("transport", t.name().to_string()));
            }
            if let Some(q) = rec.ring_queue {
                a.push(uint("ring_queue", u64::from(q)));
            }
            if let Some(err) = rec.error {
                a.push(int("error", i64::from(err)));
            }
            if let Some(l) = rec.request_len {
                a.push(uint("request_len", u64::from(l)));
            }
            if let Some(l) = rec.reply_len {
                a.push(uint("reply_len", u64::from(l)));
            }
            if let (op::READ | op::WRITE, Some((offset, size, _))) = (rec.opcode, rec.io_range()) {
                a.push(uint("offset", offset));
                a.push(uint("size", size));
            }
            if let Some(b) = rec.background {
                a.push(uint("background", u64::from(b)));
            }
        })?;
        // The stages as child slices; a flow runs from the first through
        // the daemon thread's slice to the last when the daemon was seen.
        let served = rec.taken_ns.zip(rec.replied_ns);
        let stages = if rec.is_virtio() {
            [
                (ExtraStage::Virtqueue.name(), Some(start), rec.virtq_ns),
                (ExtraStage::Device.name(), rec.virtq_ns, rec.device_done_ns),
                (
                    LatencyStage::Completion.name(),
                    rec.device_done_ns,
                    Some(end),
                ),
            ]
        } else {
            [
                (LatencyStage::QueueWait.name(), Some(start), rec.taken_ns),
                (
                    LatencyStage::DaemonService.name(),
                    rec.taken_ns,
                    rec.replied_ns,
                ),
                (LatencyStage::Completion.name(), rec.replied_ns, Some(end)),
            ]
        };
        for (i, (stage, from, to)) in stages.into_iter().enumerate() {
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            self.slice(SLICE_BEGIN, from, track, Some(stage), |e| match i {
                0 if served.is_some() => e.flow_ids.push(flow),
                2 if served.is_some() => e.terminating_flow_ids.push(flow),
                _ => {}
            })?;
            self.slice(SLICE_END, to, track, None, |_| {})?;
            if let (1, Some((taken, replied)), Some(dtid)) = (i, served, rec.daemon_tid) {
                let dtrack = self.track(Side::Daemon, dtid, None, None, taken, replied)?;
                self.slice(SLICE_BEGIN, taken, dtrack, Some(&name), |e| {
                    e.flow_ids.push(flow);
                    e.debug_annotations.push(uint("unique", rec.unique));
                })?;
                self.slice(SLICE_END, replied, dtrack, None, |_| {})?;
            }
        }
        self.slice(SLICE_END, end, track, None, |_| {})?;
        self.counts.slices += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(unique: u64, tid: u32, sent: u64, ended: u64) -> RequestLifecycle {
        RequestLifecycle {
            connection: 1,
            unique,
            opcode: op::READ,
            nodeid: Some(2),
            requester_pid: Some(tid),
            requester_tid: Some(tid),
            requester_uid: None,
            requester_comm: None,
            background: None,
            daemon_tid: None,
            reply_tid: None,
            sent_ns: Some(sent),
            taken_ns: None,
            replied_ns: None,
            ended_ns: Some(ended),
            error: Some(0),
            request_len: None,
            reply_len: None,
            interrupted: false,
            outcome: None,
            submitted_ns: None,
            virtq_ns: None,
            device_irq_ns: None,
            device_done_ns: None,
            sender_tid: None,
            sender_comm: None,
            writeback_cache: None,
            send_args: None,
            end_args: None,
            path: None,
            transport: None,
            ring_queue: None,
        }
    }

    /// (track uuid, name) of every slice begun, interned names resolved.
    fn begins(out: &[u8]) -> Vec<(u64, String)> {
        let mut buf = out;
        let mut names = HashMap::new();
        let mut begins = Vec::new();
        while !buf.is_empty() {
            assert_eq!(buf[0], 0x0a);
            buf = &buf[1..];
            let p = TracePacket::decode_length_delimited(&mut buf).unwrap();
            if let Some(i) = p.interned_data {
                for n in i.event_names {
                    names.insert(n.iid.unwrap(), n.name.unwrap());
                }
            }
            if let Some(e) = p.track_event
                && e.r#type == Some(SLICE_BEGIN)
            {
                begins.push((e.track_uuid.unwrap(), names[&e.name_iid.unwrap()].clone()));
            }
        }
        begins
    }

    /// The track uuid each request's slice was written on.
    fn tracks_of(out: &[u8]) -> Vec<u64> {
        begins(out).into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn virtio_requests_show_their_virtqueue_and_device_stages() {
        let mut sink = PerfettoSink::new(Vec::new(), 0, false);
        let mut names = ConnectionTable::frozen([]);
        let mut r = rec(1, 7, 10, 50);
        r.virtq_ns = Some(12);
        r.device_done_ns = Some(40);
        sink.request(&r, &mut names).unwrap();
        let got: Vec<String> = begins(&sink.into_inner())
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(got, ["READ", "virtqueue", "device", "completion"]);
    }

    #[test]
    fn overlapping_requests_of_one_thread_take_lanes_and_free_ones_are_reused() {
        let mut sink = PerfettoSink::new(Vec::new(), 0, false);
        let mut names = ConnectionTable::frozen([]);
        // Finished in end order: [10,20], [5,25] overlaps it, [21,30] fits
        // after the first, [26,40] after the second.
        for r in [
            rec(1, 7, 10, 20),
            rec(2, 7, 5, 25),
            rec(3, 7, 21, 30),
            rec(4, 7, 26, 40),
        ] {
            sink.request(&r, &mut names).unwrap();
        }
        let t = tracks_of(&sink.into_inner());
        assert_eq!(
            t,
            vec![
                uuid::thread(7),
                uuid::lane(7, 1),
                uuid::thread(7),
                uuid::lane(7, 1)
            ]
        );
    }

    #[test]
    fn changes_in_one_nanosecond_make_one_sample() {
        let mut sink = PerfettoSink::new(Vec::new(), 0, false);
        let mut names = ConnectionTable::frozen([]);
        let ev = |kind: EventKind, req: u64, ts_ns: u64| FuseEvent {
            kind: kind as u8,
            connection: 1,
            req,
            unique: req,
            opcode: op::READ,
            ts_ns,
            ..FuseEvent::default()
        };
        // B is sent in the nanosecond A ends (two CPUs).
        for e in [
            ev(EventKind::Sent, 2, 10),
            ev(EventKind::Sent, 4, 20),
            ev(EventKind::Ended, 2, 20),
            ev(EventKind::Ended, 4, 30),
        ] {
            sink.event(&e, None).unwrap();
        }
        sink.finish(&RunSummary::default(), &mut names).unwrap();
        let out = sink.into_inner();
        let mut buf = &out[..];
        let mut samples = Vec::new();
        while !buf.is_empty() {
            buf = &buf[1..];
            let p = TracePacket::decode_length_delimited(&mut buf).unwrap();
            if let Some(e) = p.track_event
                && e.r#type == Some(COUNTER)
                && e.track_uuid == Some(uuid::in_flight(1))
            {
                samples.push((p.timestamp.unwrap(), e.counter_value.unwrap()));
            }
        }
        assert_eq!(samples, [(10, 1), (20, 1), (30, 0)]);
    }
}
