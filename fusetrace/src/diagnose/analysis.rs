//! The evidence for writeback versus write-through, built from finished
//! requests and applications' writes. Pure: no I/O, tested with synthetic
//! inputs.

use std::collections::{BTreeMap, HashMap};

use fusetrace_common::{FOPEN_DIRECT_IO, FUSE_WRITE_CACHE, FUSE_WRITEBACK_CACHE, FuseEvent};
use serde::Serialize;

use crate::pipeline::lifecycle::RequestLifecycle;

use fusetrace_common::opcode::{
    CREATE as OP_CREATE, FLUSH as OP_FLUSH, FSYNC as OP_FSYNC, INIT as OP_INIT, OPEN as OP_OPEN,
    READ as OP_READ, WRITE as OP_WRITE,
};
const PAGE: u64 = 4096;

/// Where the writeback-cache answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeSource {
    /// The daemon's FUSE_INIT reply, seen because the mount happened under trace.
    InitReply,
    /// The kernel's connection state (`fuse_conn.writeback_cache`, via BTF).
    ConnectionState,
    /// Only the WRITE requests' `FUSE_WRITE_CACHE` flag.
    Evidence,
    /// Nothing seen that tells.
    Unknown,
}

/// An application's write(2) family call on a FUSE file.
#[derive(Debug, Clone, Copy)]
struct AppWrite {
    tid: u32,
    nodeid: u64,
    pos: u64,
    len: u64,
    enter_ns: u64,
    exit_ns: u64,
}

/// The facts gathered on one connection.
#[derive(Debug, Default)]
struct ConnectionEvidence {
    init_flags: Option<u64>,
    conn_state: Option<bool>,
    app_writes: Vec<AppWrite>,
    /// WRITE, READ, FLUSH, FSYNC, OPEN and CREATE requests, in arrival order.
    requests: Vec<RequestLifecycle>,
}

/// Collects evidence; [`Evidence::conclude`] turns it into diagnoses.
#[derive(Debug, Default)]
pub struct Evidence {
    connections: BTreeMap<u32, ConnectionEvidence>,
}

/// A distribution of byte sizes: count per power-of-two bucket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SizeDistribution {
    pub count: u64,
    pub total_bytes: u64,
    pub mean_bytes: u64,
    /// Bucket upper bound (a power of two) -> count.
    pub buckets: BTreeMap<u64, u64>,
}

impl SizeDistribution {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.total_bytes += bytes;
        *self
            .buckets
            .entry(bytes.max(1).next_power_of_two())
            .or_default() += 1;
        self.mean_bytes = self.total_bytes / self.count;
    }
}

/// WRITE requests to one file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileWrites {
    pub path: String,
    pub write_requests: u64,
    pub bytes: u64,
    /// Of those, page-cache writeback (`FUSE_WRITE_CACHE`).
    pub writeback_write_requests: u64,
}

/// Latency summary in nanoseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DelaySummary {
    pub samples: u64,
    pub mean_ns: u64,
    pub max_ns: u64,
}

impl DelaySummary {
    fn from(values: &[u64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        DelaySummary {
            samples: values.len() as u64,
            mean_ns: values.iter().sum::<u64>() / values.len() as u64,
            max_ns: values.iter().copied().max().unwrap_or(0),
        }
    }
}

/// Everything `diagnose` says about one connection.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub connection: u32,
    pub mount: String,
    /// `Some(true)`: writeback cache on; `None`: unknown.
    pub writeback_cache: Option<bool>,
    pub mode_source: ModeSource,
    /// File handles opened (OPEN/CREATE replies seen), direct-io or cached.
    pub direct_io_opens: u64,
    pub cached_opens: u64,
    pub app_writes: SizeDistribution,
    pub write_requests: SizeDistribution,
    pub read_requests: u64,
    /// WRITE requests flagged as page-cache writeback (`FUSE_WRITE_CACHE`).
    pub writeback_write_requests: u64,
    /// Who sent the WRITE requests: command name -> count. `writer` groups
    /// those sent by a thread while it was inside its own write(2).
    pub write_senders: BTreeMap<String, u64>,
    pub writes_sent_by_writer: u64,
    /// From an application's write(2) entry to the send of the first WRITE
    /// request carrying its bytes.
    pub write_to_request_delay: DelaySummary,
    /// Application writes whose bytes no WRITE request was seen carrying.
    pub app_writes_unmatched: u64,
    /// WRITE requests sent by a thread just before its FLUSH (close) or FSYNC
    /// of the same file: the dirty pages flushed then.
    pub writes_at_flush_or_fsync: u64,
    pub flushes: u64,
    pub fsyncs: u64,
    /// Application writes whose bytes reached the daemon only after the next
    /// FLUSH/FSYNC of the file had already ended (should never happen).
    pub writes_after_sync: u64,
    /// READ requests sent from inside an application's write(2) to the same
    /// file: partial-page writes into uncached pages.
    pub reads_caused_by_writes: u64,
    /// Application writes during which such a READ was sent.
    pub app_writes_with_reads: u64,
    /// Pages carried by more than one WRITE request.
    pub pages_written_more_than_once: u64,
    /// The files most WRITE requests went to (at most five, busiest
    /// first), by path where its name was seen (else `node N`).
    pub files_written: Vec<FileWrites>,
    pub verdict: String,
    pub advice: Vec<String>,
    /// Every finding on the connection, worst first (`super::finding`).
    pub findings: Vec<super::finding::Finding>,
    /// The connection's negotiated limits, when the kernel told.
    pub limits: Option<super::finding::Limits>,
    /// Whether the kernel offered FUSE over io_uring.
    pub io_uring: Option<super::finding::UringOffer>,
}

impl Evidence {
    /// A finished request of interest.
    pub fn request(&mut self, rec: &RequestLifecycle) {
        let conn = self.connections.entry(rec.connection).or_default();
        if let Some(wb) = rec.writeback_cache {
            conn.conn_state = Some(wb);
        }
        match rec.opcode {
            OP_INIT => {
                if let Some([flags, _]) = rec.end_args
                    && rec.error == Some(0)
                {
                    conn.init_flags = Some(flags);
                }
            }
            OP_WRITE | OP_READ | OP_FLUSH | OP_FSYNC | OP_OPEN | OP_CREATE => {
                conn.requests.push(rec.clone())
            }
            _ => {}
        }
    }

    /// An `AppWrite` event.
    pub fn app_write(&mut self, ev: &FuseEvent) {
        if ev.error != 0 || ev.len == 0 {
            return;
        }
        self.connections
            .entry(ev.connection)
            .or_default()
            .app_writes
            .push(AppWrite {
                tid: ev.tid,
                nodeid: ev.nodeid,
                pos: ev.arg0,
                len: u64::from(ev.len),
                enter_ns: ev.aux_ns,
                exit_ns: ev.ts_ns,
            });
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// One diagnosis per connection seen.
    pub fn conclude(&self, name: &mut impl FnMut(u32) -> String) -> Vec<Diagnosis> {
        self.connections
            .iter()
            .map(|(conn, ev)| diagnose(*conn, name(*conn), ev))
            .collect()
    }
}

/// [`Diagnosing::by_writer`].
fn by_writer(app_writes: &[AppWrite]) -> HashMap<(u32, u64), Vec<usize>> {
    let mut by: HashMap<(u32, u64), Vec<usize>> = HashMap::new();
    for (i, w) in app_writes.iter().enumerate() {
        by.entry((w.tid, w.nodeid)).or_default().push(i);
    }
    for own in by.values_mut() {
        own.sort_by_key(|&i| app_writes[i].enter_ns);
    }
    by
}

fn overlaps(a_start: u64, a_len: u64, b_start: u64, b_len: u64) -> bool {
    a_start < b_start + b_len && b_start < a_start + a_len
}

fn diagnose(connection: u32, mount: String, ev: &ConnectionEvidence) -> Diagnosis {
    let mut steps = Diagnosing::new(connection, mount, ev);
    steps.size_app_writes();
    steps.tally_requests();
    steps.sort_by_send();
    steps.sum_up_requests();
    steps.count_writes_flushed_at_sync();
    steps.follow_app_writes();
    steps.decide_writeback_mode();
    let mut d = steps.d;
    (d.verdict, d.advice) = verdict(&d);
    d
}

/// One connection's diagnosis in the making: each step of [`diagnose`]
/// reads the evidence and fills in its part of `d`.
struct Diagnosing<'a> {
    ev: &'a ConnectionEvidence,
    d: Diagnosis,
    /// WRITE requests whose range is known, per node, in order of their
    /// sends (after `sort_by_send`).
    writes_by_node: HashMap<u64, Vec<&'a RequestLifecycle>>,
    /// FLUSH and FSYNC requests per node, in order of their sends (after
    /// `sort_by_send`).
    syncs_by_node: HashMap<u64, Vec<&'a RequestLifecycle>>,
    /// Per node, for each of its syncs in that order: the earliest end of
    /// it and the syncs sent after it.
    sync_ends_from: HashMap<u64, Vec<Option<u64>>>,
    /// Each writer's (thread, file) application writes, as indices into
    /// `ev.app_writes` in order of entry. A thread's writes do not
    /// overlap, so their exits are in order too: every lookup is a binary
    /// search, and a long run stays linear (a scan per request was
    /// quadratic: minutes for a 30 s sequential write).
    by_writer: HashMap<(u32, u64), Vec<usize>>,
    /// How many WRITE requests carried each page (node, page number).
    page_hits: HashMap<(u64, u64), u32>,
    /// For each application write: a READ was sent from inside it.
    writes_with_reads: Vec<bool>,
    /// WRITE requests per node.
    files: HashMap<u64, FileWrites>,
}

impl<'a> Diagnosing<'a> {
    fn new(connection: u32, mount: String, ev: &'a ConnectionEvidence) -> Self {
        let d = Diagnosis {
            connection,
            mount,
            writeback_cache: None,
            mode_source: ModeSource::Unknown,
            direct_io_opens: 0,
            cached_opens: 0,
            app_writes: SizeDistribution::default(),
            write_requests: SizeDistribution::default(),
            read_requests: 0,
            writeback_write_requests: 0,
            write_senders: BTreeMap::new(),
            writes_sent_by_writer: 0,
            write_to_request_delay: DelaySummary::default(),
            app_writes_unmatched: 0,
            writes_at_flush_or_fsync: 0,
            flushes: 0,
            fsyncs: 0,
            writes_after_sync: 0,
            reads_caused_by_writes: 0,
            app_writes_with_reads: 0,
            pages_written_more_than_once: 0,
            files_written: Vec::new(),
            verdict: String::new(),
            advice: Vec::new(),
            findings: Vec::new(),
            limits: None,
            io_uring: None,
        };
        Diagnosing {
            ev,
            d,
            writes_by_node: HashMap::new(),
            syncs_by_node: HashMap::new(),
            sync_ends_from: HashMap::new(),
            by_writer: by_writer(&ev.app_writes),
            page_hits: HashMap::new(),
            writes_with_reads: vec![false; ev.app_writes.len()],
            files: HashMap::new(),
        }
    }

    /// The sizes of the applications' writes.
    fn size_app_writes(&mut self) {
        for w in &self.ev.app_writes {
            self.d.app_writes.add(w.len);
        }
    }

    /// Counts each request by its opcode, in arrival order.
    fn tally_requests(&mut self) {
        let ev = self.ev;
        for rec in &ev.requests {
            let node = rec.nodeid.unwrap_or(0);
            match rec.opcode {
                OP_WRITE => self.tally_write(rec, node),
                OP_READ => self.tally_read(rec),
                OP_FLUSH | OP_FSYNC => self.tally_sync(rec, node),
                OP_OPEN | OP_CREATE => self.tally_open(rec),
                _ => {}
            }
        }
    }

    /// A WRITE request: its file, size, flags, sender and pages.
    fn tally_write(&mut self, rec: &'a RequestLifecycle, node: u64) {
        let file = self.files.entry(node).or_insert_with(|| FileWrites {
            path: rec.shown_path().to_string(),
            ..FileWrites::default()
        });
        file.write_requests += 1;
        if let Some((_, size, flags)) = rec.io_range() {
            file.bytes += size;
            file.writeback_write_requests += u64::from(flags & FUSE_WRITE_CACHE != 0);
        }
        let Some((offset, size, flags)) = rec.io_range() else {
            self.d
                .write_requests
                .add(u64::from(rec.request_len.unwrap_or(0)));
            return;
        };
        self.d.write_requests.add(size);
        if flags & FUSE_WRITE_CACHE != 0 {
            self.d.writeback_write_requests += 1;
        }
        self.count_sender(rec);
        if size > 0 {
            for page in offset / PAGE..=(offset + size - 1) / PAGE {
                *self.page_hits.entry((node, page)).or_default() += 1;
            }
        }
        self.writes_by_node.entry(node).or_default().push(rec);
    }

    /// Who sent a WRITE request: the writing thread inside its write(2),
    /// or a kind of sender by command name.
    fn count_sender(&mut self, rec: &RequestLifecycle) {
        let by_writer = self
            .inside_write(rec.sender_tid, rec.nodeid, rec.sent_ns)
            .is_some();
        let d = &mut self.d;
        if by_writer {
            d.writes_sent_by_writer += 1;
            *d.write_senders.entry("writer".into()).or_default() += 1;
        } else {
            let comm = rec
                .sender_comm
                .map(|c| c.to_string())
                .unwrap_or_else(|| "?".into());
            // kworker/u8:2 and kworker/1:0 are one kind of sender.
            let kind = comm.split('/').next().unwrap_or(&comm).to_string();
            *d.write_senders.entry(kind).or_default() += 1;
        }
    }

    /// A READ request, and the application write it was sent from inside.
    fn tally_read(&mut self, rec: &RequestLifecycle) {
        self.d.read_requests += 1;
        if let Some(i) = self.inside_write(rec.sender_tid, rec.nodeid, rec.sent_ns) {
            self.d.reads_caused_by_writes += 1;
            self.writes_with_reads[i] = true;
        }
    }

    /// A FLUSH or FSYNC request.
    fn tally_sync(&mut self, rec: &'a RequestLifecycle, node: u64) {
        if rec.opcode == OP_FLUSH {
            self.d.flushes += 1;
        } else {
            self.d.fsyncs += 1;
        }
        self.syncs_by_node.entry(node).or_default().push(rec);
    }

    /// Counts an opened file handle as direct-io or cached.
    fn tally_open(&mut self, rec: &RequestLifecycle) {
        if let Some([_, open_flags]) = rec.end_args
            && rec.error == Some(0)
        {
            if open_flags as u32 & FOPEN_DIRECT_IO != 0 {
                self.d.direct_io_opens += 1;
            } else {
                self.d.cached_opens += 1;
            }
        }
    }

    /// The counts the tally leaves to the end: writes with reads, pages
    /// written more than once, the files written most.
    fn sum_up_requests(&mut self) {
        let d = &mut self.d;
        d.app_writes_with_reads = self.writes_with_reads.iter().filter(|b| **b).count() as u64;
        d.pages_written_more_than_once = self.page_hits.values().filter(|n| **n > 1).count() as u64;
        d.files_written = std::mem::take(&mut self.files).into_values().collect();
        d.files_written
            .sort_by(|a, b| (b.write_requests, &a.path).cmp(&(a.write_requests, &b.path)));
        d.files_written.truncate(5);
    }

    fn count_writes_flushed_at_sync(&mut self) {
        // WRITEs a thread sent right before its own FLUSH/FSYNC of the file,
        // outside any write(2) of its own: flushed dirty pages (each counted once
        // even when both an FSYNC and the FLUSH of close follow it).
        let mut flushed = std::collections::HashSet::new();
        for (node, syncs) in &self.syncs_by_node {
            let Some(writes) = self.writes_by_node.get(node) else {
                continue;
            };
            for sync in syncs {
                let (Some(tid), Some(at)) = (sync.sender_tid, sync.sent_ns) else {
                    continue;
                };
                // The thread's last write(2) of the file that had returned.
                let since = self
                    .by_writer
                    .get(&(tid, *node))
                    .and_then(|own| {
                        let before = own.partition_point(|&i| self.ev.app_writes[i].exit_ns <= at);
                        own.get(before.checked_sub(1)?)
                    })
                    .map_or(0, |&i| self.ev.app_writes[i].exit_ns);
                let from = writes.partition_point(|w| w.sent_ns < Some(since));
                let to = writes.partition_point(|w| w.sent_ns <= Some(at));
                flushed.extend(
                    writes[from..to.max(from)]
                        .iter()
                        .filter(|w| w.sender_tid == Some(tid))
                        .map(|w| w.unique),
                );
            }
        }
        self.d.writes_at_flush_or_fsync = flushed.len() as u64;
    }

    fn follow_app_writes(&mut self) {
        // Each application write: the first WRITE sent after it began that
        // carries its bytes; and whether that happened before the next sync ended.
        let mut delays = Vec::new();
        for w in &self.ev.app_writes {
            let Some(carrier) = self.carrier(w) else {
                self.d.app_writes_unmatched += 1;
                continue;
            };
            let sent = carrier.sent_ns.unwrap_or(w.enter_ns);
            delays.push(sent.saturating_sub(w.enter_ns));
            if let (Some(sync_end), Some(write_end)) = (self.next_sync_end(w), carrier.ended_ns)
                && write_end > sync_end
            {
                self.d.writes_after_sync += 1;
            }
        }
        self.d.write_to_request_delay = DelaySummary::from(&delays);
    }

    /// The first WRITE request sent after `w` began that carries its bytes.
    fn carrier(&self, w: &AppWrite) -> Option<&'a RequestLifecycle> {
        let writes = self.writes_by_node.get(&w.nodeid)?;
        let from = writes.partition_point(|r| r.sent_ns < Some(w.enter_ns));
        writes[from..]
            .iter()
            .find(|r| {
                r.io_range()
                    .is_some_and(|(o, s, _)| overlaps(o, s, w.pos, w.len))
            })
            .copied()
    }

    /// When the first FLUSH/FSYNC of `w`'s file sent after `w` ended, ended.
    fn next_sync_end(&self, w: &AppWrite) -> Option<u64> {
        let syncs = self.syncs_by_node.get(&w.nodeid)?;
        let from = syncs.partition_point(|s| s.sent_ns < Some(w.exit_ns));
        *self.sync_ends_from.get(&w.nodeid)?.get(from)?
    }

    /// Which application write (its index) thread `tid` was inside, on
    /// file `node`, at time `at`.
    fn inside_write(&self, tid: Option<u32>, node: Option<u64>, at: Option<u64>) -> Option<usize> {
        let (tid, node, at) = (tid?, node?, at?);
        let own = self.by_writer.get(&(tid, node))?;
        let entered = own.partition_point(|&i| self.ev.app_writes[i].enter_ns <= at);
        let &i = own.get(entered.checked_sub(1)?)?;
        (at <= self.ev.app_writes[i].exit_ns).then_some(i)
    }

    /// Puts each node's WRITEs and syncs in the order of their sends (a
    /// request without a send first), and notes each sync's earliest end
    /// from it on.
    fn sort_by_send(&mut self) {
        for writes in self.writes_by_node.values_mut() {
            writes.sort_by_key(|r| r.sent_ns);
        }
        for (node, syncs) in &mut self.syncs_by_node {
            syncs.sort_by_key(|r| r.sent_ns);
            let mut ends = vec![None; syncs.len() + 1];
            for i in (0..syncs.len()).rev() {
                ends[i] = match (syncs[i].ended_ns, ends[i + 1]) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            self.sync_ends_from.insert(*node, ends);
        }
    }

    /// Writeback cache or not, and what told.
    fn decide_writeback_mode(&mut self) {
        let d = &mut self.d;
        (d.writeback_cache, d.mode_source) = if let Some(flags) = self.ev.init_flags {
            (
                Some(flags & FUSE_WRITEBACK_CACHE != 0),
                ModeSource::InitReply,
            )
        } else if let Some(wb) = self.ev.conn_state {
            (Some(wb), ModeSource::ConnectionState)
        } else if d.writeback_write_requests > 0 {
            (Some(true), ModeSource::Evidence)
        } else {
            (None, ModeSource::Unknown)
        };
    }
}

pub fn bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n >> 10)
    } else if n >= 10 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

pub fn duration(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{} ms", ns / 1_000_000)
    } else if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{} us", ns / 1_000)
    }
}

fn senders(d: &Diagnosis) -> String {
    let mut list: Vec<(&String, &u64)> = d.write_senders.iter().collect();
    list.sort_by(|a, b| b.1.cmp(a.1));
    list.iter()
        .map(|(who, n)| {
            if who.as_str() == "writer" {
                format!("{n} by the writing thread during its write(2)")
            } else {
                format!("{n} by {who}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plain-words verdict and advice.
fn verdict(d: &Diagnosis) -> (String, Vec<String>) {
    let mut text = mode_line(d);
    if d.direct_io_opens > 0 {
        text.push_str(&format!(
            "; {} of {} opens are direct-io (FOPEN_DIRECT_IO: the page cache is bypassed)",
            d.direct_io_opens,
            d.direct_io_opens + d.cached_opens
        ));
    }
    if d.app_writes.count > 0 || d.write_requests.count > 0 {
        text.push_str(&writes_line(d));
    }
    (text, advice(d))
}

/// Which mode the connection is in, and what said so.
fn mode_line(d: &Diagnosis) -> String {
    let source = match d.mode_source {
        ModeSource::InitReply => "from the FUSE_INIT reply",
        ModeSource::ConnectionState => "from the connection's state in the kernel",
        ModeSource::Evidence => "from the WRITE requests' page-cache flag",
        ModeSource::Unknown => "no request told",
    };
    match d.writeback_cache {
        Some(true) => format!("writeback cache is ON ({source})"),
        Some(false) => format!("writeback cache is OFF: write-through ({source})"),
        None => "writeback cache mode is unknown (no request seen that tells)".to_string(),
    }
}

/// What the applications' writes became.
fn writes_line(d: &Diagnosis) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        ": {} writes of {} on average ({}) became {} WRITE requests of {} on average",
        d.app_writes.count,
        bytes(d.app_writes.mean_bytes),
        bytes(d.app_writes.total_bytes),
        d.write_requests.count,
        bytes(d.write_requests.mean_bytes),
    ));
    if d.write_requests.count > 0 {
        text.push_str(&format!(", sent {}", senders(d)));
    }
    if d.write_to_request_delay.samples > 0 {
        text.push_str(&format!(
            ", on average {} after the application's write began",
            duration(d.write_to_request_delay.mean_ns)
        ));
    }
    if d.writes_at_flush_or_fsync > 0 {
        text.push_str(&format!(
            "; {} WRITE requests were flushed at close/fsync",
            d.writes_at_flush_or_fsync
        ));
    }
    let pct = if d.app_writes.count == 0 {
        0.0
    } else {
        100.0 * d.app_writes_with_reads as f64 / d.app_writes.count as f64
    };
    text.push_str(&format!(
        "; {pct:.0}% of writes touched uncached partial pages and caused {} READ requests",
        d.reads_caused_by_writes
    ));
    if d.pages_written_more_than_once > 0 {
        text.push_str(&format!(
            "; {} pages were written more than once",
            d.pages_written_more_than_once
        ));
    }
    if !d.files_written.is_empty() {
        let list: Vec<String> = d
            .files_written
            .iter()
            .map(|f| format!("{} ({} WRITE requests)", f.path, f.write_requests))
            .collect();
        text.push_str(&format!("; written most: {}", list.join(", ")));
    }
    text
}

/// What to change, when the evidence says something should.
fn advice(d: &Diagnosis) -> Vec<String> {
    let mut advice = Vec::new();
    if d.writeback_cache == Some(false)
        && d.direct_io_opens == 0
        && d.write_requests.count >= 100
        && d.write_requests.mean_bytes < 32 * 1024
    {
        advice.push(format!(
            "write-through with small writes: {} WRITE requests of {} on average; consider the writeback_cache mount option (FUSE_WRITEBACK_CACHE) or larger application writes",
            d.write_requests.count,
            bytes(d.write_requests.mean_bytes)
        ));
    }
    if d.writeback_cache == Some(true) {
        advice.push(
            "with the writeback cache the kernel keeps file size and mtime itself: unsuitable for a network file system whose files others change".to_string(),
        );
        if d.reads_caused_by_writes > 0 {
            advice.push(format!(
                "{} READ requests came from partial-page writes into uncached pages: page-aligned writes avoid them",
                d.reads_caused_by_writes
            ));
        }
    }
    if d.writes_after_sync > 0 {
        advice.push(format!(
            "{} writes reached the daemon only after the next close/fsync had returned: report this, the kernel should never do that",
            d.writes_after_sync
        ));
    }
    advice
}

/// The tests' builders, for the rules' tests too.
#[cfg(test)]
pub(crate) use tests::{app_write, request};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tracker::{Tracker, TrackerConfig};
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FLAG_WRITEBACK_CACHE};

    const CONN: u32 = 50;
    const NODE: u64 = 2;

    /// A finished request built through the real tracker (also for the
    /// rules' tests).
    pub(crate) fn request(
        unique: u64,
        op: u32,
        sent: u64,
        sender_tid: u32,
        args: [u64; 2],
        end_args: [u64; 2],
        wb: bool,
    ) -> RequestLifecycle {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let base = FuseEvent {
            flags: FLAG_HAS_HEADER | if wb { FLAG_WRITEBACK_CACHE } else { 0 },
            connection: CONN,
            unique,
            opcode: op,
            nodeid: NODE,
            tid: sender_tid,
            ..Default::default()
        };
        for (kind, ts, a) in [
            (EventKind::Sent, sent, args),
            (EventKind::Taken, sent + 10, [0, 0]),
            (EventKind::Replied, sent + 20, [0, 0]),
            (EventKind::Ended, sent + 30, end_args),
        ] {
            let ev = FuseEvent {
                kind: kind as u8,
                ts_ns: ts,
                arg0: a[0],
                arg1: a[1],
                ..base
            };
            t.observe(&ev, &mut out);
        }
        out.pop().unwrap()
    }

    pub(crate) fn app_write(tid: u32, pos: u64, len: u32, enter: u64, exit: u64) -> FuseEvent {
        FuseEvent {
            kind: EventKind::AppWrite as u8,
            connection: CONN,
            nodeid: NODE,
            tid,
            arg0: pos,
            len,
            aux_ns: enter,
            ts_ns: exit,
            ..Default::default()
        }
    }

    fn conclude(e: &Evidence) -> Diagnosis {
        e.conclude(&mut |_| "/mnt".into()).pop().unwrap()
    }

    #[test]
    fn write_through_writes_are_sent_by_the_writer() {
        let mut e = Evidence::default();
        for i in 0..4u64 {
            let t0 = 1_000_000 * (i + 1);
            e.app_write(&app_write(7, i * 4096, 4096, t0, t0 + 500));
            e.request(&request(
                10 + 2 * i,
                OP_WRITE,
                t0 + 100,
                7,
                [i * 4096, 4096],
                [0, 0],
                false,
            ));
        }
        e.request(&request(40, OP_FLUSH, 9_000_000, 7, [0, 0], [0, 0], false));
        let d = conclude(&e);
        assert_eq!(d.writeback_cache, Some(false));
        assert_eq!(d.mode_source, ModeSource::ConnectionState);
        assert_eq!(d.app_writes.count, 4);
        assert_eq!(d.write_requests.count, 4);
        assert_eq!(d.writes_sent_by_writer, 4);
        assert_eq!(d.write_to_request_delay.mean_ns, 100);
        assert_eq!(d.writes_at_flush_or_fsync, 0);
        assert_eq!(d.reads_caused_by_writes, 0);
        assert!(
            d.verdict.contains("writeback cache is OFF"),
            "{}",
            d.verdict
        );
        assert!(d.verdict.contains("4 writes of 4 KiB"), "{}", d.verdict);
    }

    #[test]
    fn writeback_writes_are_batched_flushed_and_partial_pages_read() {
        let mut e = Evidence::default();
        // INIT under trace says writeback.
        e.request(&request(
            2,
            OP_INIT,
            10,
            1,
            [0, 0],
            [FUSE_WRITEBACK_CACHE, 131072],
            true,
        ));
        // Two partial-page writes; the second one reads its page first.
        e.app_write(&app_write(7, 100, 200, 1_000, 2_000));
        e.request(&request(4, OP_READ, 1_500, 7, [0, 4096], [0, 0], true));
        e.app_write(&app_write(7, 5000, 100, 3_000, 4_000));
        // One batched WRITE from the closing thread, then FLUSH.
        e.request(&request(
            6,
            OP_WRITE,
            5_000,
            7,
            [0, 8192 | (1 << 32)],
            [0, 0],
            true,
        ));
        e.request(&request(7, OP_FSYNC, 5_900, 7, [0, 0], [0, 0], true));
        e.request(&request(8, OP_FLUSH, 6_000, 7, [0, 0], [0, 0], true));
        // A flusher thread writes page 0 again later.
        e.request(&request(
            10,
            OP_WRITE,
            9_000,
            99,
            [0, 4096 | (1 << 32)],
            [0, 0],
            true,
        ));
        let d = conclude(&e);
        assert_eq!(d.writeback_cache, Some(true));
        assert_eq!(d.mode_source, ModeSource::InitReply);
        assert_eq!(d.write_requests.count, 2);
        assert_eq!(d.writeback_write_requests, 2);
        assert_eq!(d.writes_at_flush_or_fsync, 1);
        assert_eq!(d.reads_caused_by_writes, 1);
        // The file written is named by its node (no name was seen).
        assert_eq!(d.files_written.len(), 1);
        assert_eq!(d.files_written[0].path, format!("node {NODE}"));
        assert_eq!(d.files_written[0].write_requests, 2);
        assert_eq!(d.files_written[0].bytes, 8192 + 4096);
        assert!(d.verdict.contains("written most: node"), "{}", d.verdict);
        assert_eq!(d.app_writes_with_reads, 1);
        assert_eq!(d.pages_written_more_than_once, 1);
        assert_eq!(d.write_to_request_delay.samples, 2);
        assert_eq!(d.writes_after_sync, 0);
        assert!(
            d.verdict
                .contains("writeback cache is ON (from the FUSE_INIT reply)")
        );
        assert!(d.verdict.contains("50% of writes"), "{}", d.verdict);
        assert!(d.advice.iter().any(|a| a.contains("size and mtime")));
    }

    #[test]
    fn direct_io_opens_are_counted_and_unknown_mode_is_said() {
        let mut e = Evidence::default();
        let mut open = request(
            2,
            OP_OPEN,
            10,
            1,
            [0, 0],
            [0, u64::from(FOPEN_DIRECT_IO)],
            false,
        );
        open.writeback_cache = None;
        e.request(&open);
        let d = conclude(&e);
        assert_eq!(d.direct_io_opens, 1);
        assert_eq!(d.writeback_cache, None);
        assert!(d.verdict.contains("unknown"));
        assert!(d.verdict.contains("1 of 1 opens are direct-io"));
    }

    #[test]
    fn small_write_through_requests_get_advice() {
        let mut e = Evidence::default();
        for i in 0..120u64 {
            e.request(&request(
                2 * i + 2,
                OP_WRITE,
                100 * i,
                7,
                [i * 512, 512],
                [0, 0],
                false,
            ));
        }
        let d = conclude(&e);
        assert!(
            d.advice
                .iter()
                .any(|a| a.contains("consider the writeback_cache"))
        );
    }
}
