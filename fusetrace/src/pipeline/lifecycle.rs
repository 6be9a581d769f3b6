//! One FUSE request's whole life as every output sees it
//! ([`RequestLifecycle`]), the latency stages it splits into, and the
//! requester's command name ([`Comm`]). The tracker (`super::tracker`)
//! builds these; the outputs, the TUI, recordings and the analyses read
//! them.

use serde::Serialize;

use crate::kernel::hooks::Transport;

/// How a request's life ended, as far as the tracer could see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ended by the kernel (normally after the daemon's reply).
    Ended,
    /// FORGET / BATCH_FORGET: the daemon takes it and never replies.
    NoReplyExpected,
    /// An INTERRUPT, finished when the daemon answered it or its target ended.
    Interrupt,
    /// Ended by the kernel without a daemon ever taking it (aborted
    /// connection, killed daemon, interrupted while queued).
    EndedWithoutDaemon,
    /// A new request with the same id appeared before this one ended: its
    /// end was never seen.
    NeverEnded,
}

/// One FUSE request's whole life. Times are monotonic nanoseconds; a stage
/// nobody observed is `None`, never zero. In JSON, a point's time is
/// `<point>_at_ns` (a duration is `<stage>_ns`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestLifecycle {
    pub connection: u32,
    pub unique: u64,
    /// 0 when no hook saw the opcode (request seen only at its end).
    /// Outputs show its name (`opcode`).
    #[serde(skip)]
    pub opcode: u32,
    pub nodeid: Option<u64>,
    /// Thread group of the requester, when the submitting task was seen.
    pub requester_pid: Option<u32>,
    /// Requester thread id from the request header.
    pub requester_tid: Option<u32>,
    pub requester_uid: Option<u32>,
    pub requester_comm: Option<Comm>,
    pub background: Option<bool>,
    /// Daemon thread that took the request.
    pub daemon_tid: Option<u32>,
    /// Daemon thread that wrote the reply.
    pub reply_tid: Option<u32>,
    #[serde(rename = "sent_at_ns")]
    pub sent_ns: Option<u64>,
    #[serde(rename = "taken_at_ns")]
    pub taken_ns: Option<u64>,
    #[serde(rename = "replied_at_ns")]
    pub replied_ns: Option<u64>,
    #[serde(rename = "ended_at_ns")]
    pub ended_ns: Option<u64>,
    pub error: Option<i32>,
    pub request_len: Option<u32>,
    pub reply_len: Option<u32>,
    pub interrupted: bool,
    pub outcome: Option<Outcome>,
    /// The caller entered `fuse_simple_request`/`fuse_simple_background`
    /// (kprobe/fentry backends): for a background request, the time it
    /// waited (the `max_background` limit) before being sent.
    #[serde(rename = "submitted_at_ns")]
    pub submitted_ns: Option<u64>,
    /// virtio-fs: placed on the virtqueue (no daemon takes it).
    #[serde(rename = "virtq_at_ns")]
    pub virtq_ns: Option<u64>,
    /// virtio-fs: the queue's device interrupt that announced the answer.
    #[serde(rename = "device_irq_at_ns")]
    pub device_irq_ns: Option<u64>,
    /// virtio-fs: the answer was taken off the virtqueue.
    #[serde(rename = "device_done_at_ns")]
    pub device_done_ns: Option<u64>,
    /// Task that handed the request to the daemon queue (for writeback
    /// WRITEs a flusher thread, not the writer).
    pub sender_tid: Option<u32>,
    pub sender_comm: Option<Comm>,
    /// The connection had the writeback cache on when this was sent.
    pub writeback_cache: Option<bool>,
    /// Opcode-specific values read at send and at end (see
    /// `FuseEvent::arg0`): READ/WRITE offset and size+flags; OPEN/CREATE/INIT
    /// reply flags.
    pub send_args: Option<[u64; 2]>,
    pub end_args: Option<[u64; 2]>,
    /// The file the request is about, as a path (the mount point joined
    /// with the names the run saw travel: LOOKUP, CREATE, RENAME...), in
    /// its display form: bytes that are not printable UTF-8 are escaped
    /// (`\n`, `\xff`), so it never breaks a line, a CSV row or the TUI.
    /// `None` when the node's name was not seen (looked up before tracing
    /// began): views show `node N` then. Set after tracking, from
    /// `pipeline::paths`.
    pub path: Option<std::sync::Arc<str>>,
    /// How the daemon took and answered it (`None`: no daemon-side point
    /// was seen, e.g. virtio-fs, or splice(2) on `/dev/fuse`).
    pub transport: Option<Transport>,
    /// io_uring: the ring queue (one per CPU) whose entry carried it.
    pub ring_queue: Option<u16>,
}

/// [`RequestLifecycle::shown_path`]: formats without allocating.
pub struct ShownPath<'a>(&'a RequestLifecycle);

/// What the PATH column holds, before it is formatted.
pub enum PathShown<'a> {
    Path(&'a str),
    /// An unnamed node: `node N`.
    Node(u64),
    /// No node: `-`.
    None,
}

impl ShownPath<'_> {
    /// The one rule, for views that format without `core::fmt` (`trace`).
    pub fn parts(&self) -> PathShown<'_> {
        match (&self.0.path, self.0.nodeid) {
            (Some(p), _) => PathShown::Path(p),
            (None, Some(n)) if n != 0 => PathShown::Node(n),
            _ => PathShown::None,
        }
    }
}

impl std::fmt::Display for ShownPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parts() {
            PathShown::Path(p) => f.pad(p),
            PathShown::Node(n) => f.pad(&format!("node {n}")),
            PathShown::None => f.pad("-"),
        }
    }
}

/// A task's command name as the kernel keeps it (no allocation per request).
/// Ordered as its text is (NUL padding sorts first).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    /// A name as the kernel would keep it: at most 16 bytes, NUL-padded.
    pub fn new(name: &str) -> Comm {
        let mut c = [0u8; 16];
        let n = name.len().min(16);
        c[..n].copy_from_slice(&name.as_bytes()[..n]);
        Comm(c)
    }

    /// `name` as the kernel keeps a task's name: its first 15 bytes
    /// (`TASK_COMM_LEN` 16 with the NUL), so a longer name given to
    /// `--comm` matches the truncated one the kernel reports.
    pub fn truncated(name: &str) -> Comm {
        let mut c = [0u8; 16];
        let n = name.len().min(15);
        c[..n].copy_from_slice(&name.as_bytes()[..n]);
        Comm(c)
    }

    fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.bytes())
    }
}

/// Read as a `&str` (`rec.requester_comm.as_deref()`). A name that is not
/// UTF-8 (any bytes can be set with `prctl`) reads as its valid start;
/// printed (`Display`, JSON) it shows U+FFFD for the rest.
impl std::ops::Deref for Comm {
    type Target = str;

    fn deref(&self) -> &str {
        let bytes = self.bytes();
        match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

/// The stages a request's latency splits into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyStage {
    /// Sent by the kernel until a daemon thread took it.
    QueueWait,
    /// Taken by the daemon until its reply was written.
    DaemonService,
    /// Reply written until the kernel ended the request.
    Completion,
    /// Sent until ended.
    Total,
}

/// Stages only some requests have: on some kernels, transports or kinds
/// of request. Kept apart from [`LatencyStage`], whose four stages every
/// view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraStage {
    /// Background requests: submitted until sent (waiting for a
    /// `max_background` slot). Needs the kprobe/fentry call hooks.
    BackgroundWait,
    /// virtio-fs: sent until placed on the virtqueue.
    Virtqueue,
    /// virtio-fs: on the virtqueue until the device's answer was taken off it.
    Device,
}

impl ExtraStage {
    pub const ALL: [ExtraStage; 3] = [
        ExtraStage::BackgroundWait,
        ExtraStage::Virtqueue,
        ExtraStage::Device,
    ];

    /// Its name in every output (JSON, CSV, Prometheus, Perfetto): the
    /// serde name.
    pub fn name(self) -> &'static str {
        match self {
            ExtraStage::BackgroundWait => "background_wait",
            ExtraStage::Virtqueue => "virtqueue",
            ExtraStage::Device => "device",
        }
    }
}

impl LatencyStage {
    pub const ALL: [LatencyStage; 4] = [
        LatencyStage::QueueWait,
        LatencyStage::DaemonService,
        LatencyStage::Completion,
        LatencyStage::Total,
    ];

    /// Its name in every output (JSON, CSV, Prometheus, Perfetto, the
    /// tables): the serde name.
    pub fn name(self) -> &'static str {
        match self {
            LatencyStage::QueueWait => "queue_wait",
            LatencyStage::DaemonService => "daemon_service",
            LatencyStage::Completion => "completion",
            LatencyStage::Total => "total",
        }
    }

    /// A narrow column's heading (`top`).
    pub fn short(self) -> &'static str {
        match self {
            LatencyStage::QueueWait => "queue",
            LatencyStage::DaemonService => "daemon",
            LatencyStage::Completion => "compl",
            LatencyStage::Total => "total",
        }
    }
}

fn span(from: Option<u64>, to: Option<u64>) -> Option<u64> {
    Some(to?.saturating_sub(from?))
}

impl RequestLifecycle {
    /// Duration of one stage, `None` when either end was not observed.
    pub fn latency(&self, stage: LatencyStage) -> Option<u64> {
        match stage {
            LatencyStage::QueueWait => span(self.sent_ns, self.taken_ns),
            LatencyStage::DaemonService => span(self.taken_ns, self.replied_ns),
            // virtio-fs: from the answer leaving the virtqueue.
            LatencyStage::Completion => {
                span(self.replied_ns.or(self.device_done_ns), self.ended_ns)
            }
            LatencyStage::Total => span(self.sent_ns, self.ended_ns),
        }
    }

    /// Duration of a stage only some requests have.
    pub fn extra_latency(&self, stage: ExtraStage) -> Option<u64> {
        match stage {
            ExtraStage::BackgroundWait if self.background == Some(true) => {
                span(self.submitted_ns, self.sent_ns)
            }
            ExtraStage::BackgroundWait => None,
            ExtraStage::Virtqueue => span(self.sent_ns, self.virtq_ns),
            ExtraStage::Device => span(self.virtq_ns, self.device_done_ns),
        }
    }

    /// A READ's or WRITE's (offset, size, flags), from its send arguments
    /// (`send_args`: offset, then size in the low and flags in the high 32
    /// bits); `None` when the hooks read no arguments.
    pub fn io_range(&self) -> Option<(u64, u64, u32)> {
        let [offset, size_flags] = self.send_args?;
        Some((offset, size_flags & 0xffff_ffff, (size_flags >> 32) as u32))
    }

    /// A virtio-fs request (served by a device, not a `/dev/fuse` daemon).
    pub fn is_virtio(&self) -> bool {
        self.virtq_ns.is_some() || self.device_done_ns.is_some()
    }

    /// All four stage boundaries were observed (for virtio-fs: sent, on the
    /// virtqueue, answered by the device, ended).
    pub fn fully_observed(&self) -> bool {
        let middle = if self.is_virtio() {
            self.virtq_ns.is_some() && self.device_done_ns.is_some()
        } else {
            self.taken_ns.is_some() && self.replied_ns.is_some()
        };
        self.sent_ns.is_some() && middle && self.ended_ns.is_some()
    }

    /// Whether the daemon is meant to answer it (not FORGET, BATCH_FORGET or INTERRUPT).
    pub fn expects_reply(&self) -> bool {
        !matches!(
            self.outcome,
            Some(Outcome::NoReplyExpected | Outcome::Interrupt)
        )
    }

    /// Where a request not yet ended is now.
    pub fn current_stage(&self) -> &'static str {
        if self.device_done_ns.is_some() {
            "completing"
        } else if self.virtq_ns.is_some() {
            "on device"
        } else if self.replied_ns.is_some() {
            "replying"
        } else if self.taken_ns.is_some() {
            "in daemon"
        } else if self.background == Some(true) {
            "background-queued"
        } else {
            "queued"
        }
    }

    /// The path as views print it: `rec.path`, else `node N` (its name was
    /// not seen this run), else `-` (no node).
    pub fn shown_path(&self) -> ShownPath<'_> {
        ShownPath(self)
    }

    /// A request the in-kernel aggregation sent whole (`trace --min`,
    /// `EventKind::Whole`): its points and header, no requester name and
    /// no daemon thread (the kernel side does not keep them).
    pub fn from_whole(ev: &fusetrace_common::FuseEvent) -> RequestLifecycle {
        use fusetrace_common::FLAG_BACKGROUND;
        let nonzero = |v: u64| (v != 0).then_some(v);
        RequestLifecycle {
            connection: ev.connection,
            unique: ev.unique,
            opcode: ev.opcode,
            nodeid: Some(ev.nodeid),
            requester_pid: (ev.tgid != 0).then_some(ev.tgid),
            requester_tid: (ev.req_pid != 0).then_some(ev.req_pid),
            requester_uid: Some(ev.req_uid),
            requester_comm: None,
            background: Some(ev.flags & FLAG_BACKGROUND != 0),
            daemon_tid: None,
            reply_tid: None,
            sent_ns: nonzero(ev.aux_ns),
            // A point seen out of order (a take racing the send's stamp)
            // is not shown rather than shown as a negative stage.
            taken_ns: nonzero(ev.arg0).filter(|&t| t >= ev.aux_ns && t <= ev.ts_ns),
            replied_ns: nonzero(ev.arg1).filter(|&r| ev.arg0 != 0 && r >= ev.arg0 && r <= ev.ts_ns),
            ended_ns: Some(ev.ts_ns),
            error: Some(ev.error),
            request_len: Some(ev.len),
            reply_len: None,
            interrupted: false,
            outcome: Some(Outcome::Ended),
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

    /// Earliest time seen for this request.
    pub fn first_seen_ns(&self) -> u64 {
        // Pairwise, not through an array's iterator: `trace` asks once per
        // line, and the array's copy stalled on the stores just made.
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        };
        min(
            min(self.sent_ns, self.taken_ns),
            min(self.replied_ns, self.ended_ns),
        )
        .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_seen_is_the_earliest_point_seen() {
        let times = [None, Some(5), Some(3), Some(9)];
        for (i, sent) in times.into_iter().enumerate() {
            for (j, ended) in times.into_iter().enumerate() {
                let rec = RequestLifecycle {
                    sent_ns: sent,
                    taken_ns: times[(i + 1) % 4],
                    replied_ns: times[(j + 2) % 4],
                    ended_ns: ended,
                    ..RequestLifecycle::from_whole(&Default::default())
                };
                let points = [rec.sent_ns, rec.taken_ns, rec.replied_ns, rec.ended_ns];
                let want = points.into_iter().flatten().min().unwrap_or(0);
                assert_eq!(rec.first_seen_ns(), want, "{points:?}");
            }
        }
        let none = RequestLifecycle {
            sent_ns: None,
            taken_ns: None,
            replied_ns: None,
            ended_ns: None,
            ..RequestLifecycle::from_whole(&Default::default())
        };
        assert_eq!(none.first_seen_ns(), 0);
    }

    #[test]
    fn a_whole_record_becomes_a_lifecycle_with_its_stages() {
        use fusetrace_common::{EventKind, FLAG_BACKGROUND, FLAG_HAS_HEADER, FuseEvent};
        let ev = FuseEvent {
            kind: EventKind::Whole as u8,
            flags: FLAG_HAS_HEADER,
            connection: 52,
            unique: 8,
            opcode: 15,
            nodeid: 2,
            req_pid: 4242,
            tgid: 4240,
            aux_ns: 1_000,
            arg0: 1_500,
            arg1: 9_500,
            ts_ns: 10_000,
            error: -5,
            ..FuseEvent::default()
        };
        let r = RequestLifecycle::from_whole(&ev);
        assert_eq!(r.latency(LatencyStage::Total), Some(9_000));
        assert_eq!(r.latency(LatencyStage::QueueWait), Some(500));
        assert_eq!(r.latency(LatencyStage::DaemonService), Some(8_000));
        assert_eq!(r.latency(LatencyStage::Completion), Some(500));
        assert_eq!((r.requester_pid, r.requester_tid), (Some(4240), Some(4242)));
        assert_eq!((r.error, r.background), (Some(-5), Some(false)));
        assert!(r.fully_observed() && r.requester_comm.is_none());
        // Daemon points not seen (0) are unknown, not zero-length stages.
        let r = RequestLifecycle::from_whole(&FuseEvent {
            arg0: 0,
            arg1: 0,
            tgid: 0,
            flags: FLAG_HAS_HEADER | FLAG_BACKGROUND,
            ..ev
        });
        assert_eq!(r.latency(LatencyStage::QueueWait), None);
        assert_eq!(r.latency(LatencyStage::Total), Some(9_000));
        assert_eq!((r.requester_pid, r.background), (None, Some(true)));
    }

    #[test]
    fn comm_reads_prints_and_sorts_as_its_text() {
        let short = Comm::new("ab");
        let long = Comm::new("abc");
        assert_eq!(&*long, "abc");
        assert!(short < long, "NUL padding sorts first, as the text does");
        assert_eq!(serde_json::to_string(&Some(long)).unwrap(), "\"abc\"");
        let mut raw = Comm::new("ok").0;
        raw[2] = 0xff;
        raw[3] = b'x';
        let odd = Comm(raw);
        assert_eq!(&*odd, "ok", "read: the valid start");
        assert_eq!(odd.to_string(), "ok\u{fffd}x", "printed: lossy");
        assert_eq!(&*Comm([b'a'; 16]), "a".repeat(16), "no NUL: all 16 bytes");
        // --comm names compare as the kernel truncates them.
        assert_eq!(
            Comm::truncated("fusetrace-reader-long"),
            Comm::new("fusetrace-reade")
        );
        assert_eq!(Comm::truncated("cat"), Comm::new("cat"));
    }
}
