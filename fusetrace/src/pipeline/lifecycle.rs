//! One FUSE request's whole life as every output sees it
//! ([`RequestLifecycle`]), the latency stages it splits into, and the
//! requester's command name ([`Comm`]). The tracker (`super::tracker`)
//! builds these; the outputs, the TUI, recordings and the analyses read
//! them.

use serde::Serialize;

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
/// nobody observed is `None`, never zero.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestLifecycle {
    pub connection: u32,
    pub unique: u64,
    /// 0 when no hook saw the opcode (request seen only at its end).
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
    pub sent_ns: Option<u64>,
    pub taken_ns: Option<u64>,
    pub replied_ns: Option<u64>,
    pub ended_ns: Option<u64>,
    pub error: Option<i32>,
    pub request_len: Option<u32>,
    pub reply_len: Option<u32>,
    pub interrupted: bool,
    pub outcome: Option<Outcome>,
    /// The caller entered `fuse_simple_request`/`fuse_simple_background`
    /// (kprobe/fentry backends): for a background request, the time it
    /// waited (the `max_background` limit) before being sent.
    pub submitted_ns: Option<u64>,
    /// virtio-fs: placed on the virtqueue (no daemon takes it).
    pub virtq_ns: Option<u64>,
    /// virtio-fs: the queue's device interrupt that announced the answer.
    pub device_irq_ns: Option<u64>,
    /// virtio-fs: the answer was taken off the virtqueue.
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
}

/// [`RequestLifecycle::shown_path`]: formats without allocating.
pub struct ShownPath<'a>(&'a RequestLifecycle);

impl std::fmt::Display for ShownPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.0.path, self.0.nodeid) {
            (Some(p), _) => f.pad(p),
            (None, Some(n)) if n != 0 => f.pad(&format!("node {n}")),
            _ => f.pad("-"),
        }
    }
}

/// A task's command name as the kernel keeps it (no allocation per request).
/// Ordered as its text is (NUL padding sorts first).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    /// A name as the kernel would keep it: at most 16 bytes, NUL-padded.
    pub fn new(name: &str) -> Comm {
        let mut c = [0u8; 16];
        let n = name.len().min(16);
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

    pub fn name(self) -> &'static str {
        match self {
            ExtraStage::BackgroundWait => "bg-wait",
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

    pub fn name(self) -> &'static str {
        match self {
            LatencyStage::QueueWait => "queue",
            LatencyStage::DaemonService => "daemon",
            LatencyStage::Completion => "complete",
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

    /// Earliest time seen for this request.
    pub fn first_seen_ns(&self) -> u64 {
        [self.sent_ns, self.taken_ns, self.replied_ns, self.ended_ns]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
