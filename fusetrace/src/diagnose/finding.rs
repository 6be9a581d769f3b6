//! What `diagnose` tells about a mount: a [`Finding`] is one known cause of
//! slowness (or a mode worth knowing), with the run's numbers that show it,
//! the knob that changes it and what to expect. Each rule (`super::rules`)
//! watches one connection's finished requests and, at the end, states its
//! findings or none. Pure: no I/O, so a recording replayed through the same
//! rules gives the same findings as the live run.

use std::collections::BTreeMap;

use fusetrace_common::{EventKind, FuseEvent};
use serde::Serialize;

pub use crate::kernel::hooks::UringOffer;
use crate::pipeline::lifecycle::RequestLifecycle;

/// Every finding's stable id (JSON `id`): scripts match on these, so an id
/// is never renamed or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingId {
    /// GETATTR repeated on a node whose attributes nothing changed: the
    /// attribute cache is off or short (`attr_timeout`).
    AttrCache,
    /// LOOKUP repeated for the same name: the entry cache is off or short
    /// (`entry_timeout`).
    EntryCache,
    /// A failed LOOKUP repeated for the same name: no negative cache
    /// (`negative_timeout`).
    NegativeCache,
    /// READ/WRITE requests far below the connection's negotiated limits.
    SmallTransfers,
    /// Requests wait in the queue while one daemon thread serves them.
    DaemonConcurrency,
    /// Background requests pinned at `max_background`.
    BackgroundQueue,
    /// The writeback cache's mode and what it did to the writes.
    WritebackCache,
    /// Direct I/O with the same ranges read again and again.
    PageCacheBypassed,
    /// An opcode the daemon answers ENOSYS again and again.
    Enosys,
    /// Many errors for one opcode (and path).
    ErrorStorm,
    /// Many INTERRUPT requests.
    InterruptStorm,
    /// The files and operations whose time goes to one stage: the daemon,
    /// or the kernel's queue or completion.
    SlowPaths,
    /// FUSE over io_uring offered by the kernel but not used by a daemon
    /// that would gain from it.
    IoUringUnused,
}

impl FindingId {
    /// The id as JSON spells it.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// One cause, its evidence and its knob.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub id: FindingId,
    /// How much of the mount's traffic this cause accounts for, 0 to 1 (a
    /// share of its requests or of their time, as the rule says): findings
    /// are listed worst first by it.
    pub weight: f64,
    /// One line: what was seen, with its numbers.
    pub summary: String,
    /// The numbers behind the summary, by name.
    pub evidence: BTreeMap<String, serde_json::Value>,
    /// What to change: a mount option, a daemon option, a
    /// `/sys/fs/fuse/connections/N/` value or an INIT flag.
    pub knob: String,
    /// What to expect once it is changed.
    pub expect: String,
}

impl Finding {
    /// A finding with no evidence yet ([`Finding::with`] adds it).
    pub fn new(id: FindingId, weight: f64, summary: String) -> Self {
        Finding {
            id,
            weight: if weight.is_finite() {
                weight.clamp(0.0, 1.0)
            } else {
                0.0
            },
            summary,
            evidence: BTreeMap::new(),
            knob: String::new(),
            expect: String::new(),
        }
    }

    /// Adds one number (or any JSON value) to the evidence.
    pub fn with(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.evidence.insert(name.to_string(), value.into());
        self
    }

    pub fn knob(mut self, knob: impl Into<String>) -> Self {
        self.knob = knob.into();
        self
    }

    pub fn expect(mut self, expect: impl Into<String>) -> Self {
        self.expect = expect.into();
        self
    }
}

/// A connection's negotiated limits, read from the kernel's `fuse_conn`
/// through BTF (a `Limits` event: see `EventKind::Limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_read: u32,
    pub max_write: u32,
    pub max_pages: u32,
    pub max_background: u32,
    pub congestion_threshold: u32,
}

impl Limits {
    /// The limits a `Limits` event carries.
    pub fn from_event(ev: &FuseEvent) -> Option<Limits> {
        (ev.kind == EventKind::Limits as u8).then_some(Limits {
            max_write: ev.arg0 as u32,
            max_read: (ev.arg0 >> 32) as u32,
            max_pages: ev.len,
            max_background: ev.req_pid,
            congestion_threshold: ev.req_uid,
        })
    }
}

/// What every rule may read besides its own observations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub connection: u32,
    /// Finished requests seen on the connection.
    pub requests: u64,
    /// The earliest send and the latest end seen (monotonic ns).
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    /// The connection's limits (the latest seen), when the kernel told.
    pub limits: Option<Limits>,
    /// The kernel's FUSE over io_uring, when known.
    pub io_uring: Option<UringOffer>,
}

impl Facts {
    /// The span of the traffic seen, in seconds (0 when nothing was seen).
    pub fn seconds(&self) -> f64 {
        match (self.first_ns, self.last_ns) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => 0.0,
        }
    }

    /// Counts a finished request and widens the span.
    pub fn request(&mut self, rec: &RequestLifecycle) {
        self.requests += 1;
        let start = rec.first_seen_ns();
        if start != 0 {
            self.first_ns = Some(self.first_ns.map_or(start, |f| f.min(start)));
        }
        if let Some(end) = rec.ended_ns.or(rec.replied_ns) {
            self.last_ns = Some(self.last_ns.map_or(end, |l| l.max(end)));
        }
    }
}

/// One rule: it watches one connection's finished requests (and raw events,
/// for rules that need them) and at the end says what it found.
pub trait Rule {
    /// A finished request on the rule's connection.
    fn request(&mut self, rec: &RequestLifecycle);
    /// Any event of the rule's connection (most rules need none).
    fn event(&mut self, _ev: &FuseEvent) {}
    /// The findings, from what was watched and the connection's facts.
    fn conclude(&self, facts: &Facts) -> Vec<Finding>;
}

/// Worst first; ties by id.
pub fn sort_worst_first(found: &mut [Finding]) {
    found.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id)));
}

/// Numbers as the text shows them: `41 000`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A share as a whole percentage: `37%`.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".into();
    }
    format!("{:.0}%", 100.0 * part as f64 / whole as f64)
}

/// A span of traffic as the text shows it: `12.3 s`, `850 ms`.
pub fn span(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{:.0} ms", seconds * 1000.0)
    }
}

/// `n` events in `seconds` as a rate: `41 000/s`, `2.5/s` (0 when no time
/// passed).
pub fn rate(n: u64, seconds: f64) -> String {
    let r = if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    };
    if r >= 100.0 {
        format!("{}/s", count(r.round() as u64))
    } else {
        format!("{r:.1}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(41_000), "41 000");
        assert_eq!(count(1_234_567), "1 234 567");
    }

    #[test]
    fn spans_and_rates_read_well() {
        assert_eq!(span(12.34), "12.3 s");
        assert_eq!(span(0.0086), "9 ms");
        assert_eq!(rate(500, 0.0086), "58 140/s");
        assert_eq!(rate(5, 2.0), "2.5/s");
        assert_eq!(rate(5, 0.0), "0.0/s");
    }

    #[test]
    fn findings_sort_worst_first_then_by_id() {
        let mut f = vec![
            Finding::new(FindingId::SlowPaths, 0.2, "a".into()),
            Finding::new(FindingId::AttrCache, 0.9, "b".into()),
            Finding::new(FindingId::Enosys, 0.2, "c".into()),
        ];
        sort_worst_first(&mut f);
        let ids: Vec<_> = f.iter().map(|f| f.id).collect();
        assert_eq!(
            ids,
            [
                FindingId::AttrCache,
                FindingId::Enosys,
                FindingId::SlowPaths
            ]
        );
    }

    #[test]
    fn weights_stay_between_zero_and_one() {
        assert_eq!(
            Finding::new(FindingId::Enosys, 3.0, String::new()).weight,
            1.0
        );
        assert_eq!(
            Finding::new(FindingId::Enosys, f64::NAN, String::new()).weight,
            0.0
        );
        assert_eq!(FindingId::IoUringUnused.name(), "io_uring_unused");
    }

    #[test]
    fn limits_come_from_their_event_only() {
        let ev = FuseEvent {
            kind: EventKind::Limits as u8,
            arg0: 131072 | (65536 << 32),
            len: 32,
            req_pid: 12,
            req_uid: 9,
            ..FuseEvent::default()
        };
        let l = Limits::from_event(&ev).unwrap();
        assert_eq!(
            (
                l.max_write,
                l.max_read,
                l.max_pages,
                l.max_background,
                l.congestion_threshold
            ),
            (131072, 65536, 32, 12, 9)
        );
        let other = FuseEvent {
            kind: EventKind::Sent as u8,
            ..ev
        };
        assert_eq!(Limits::from_event(&other), None);
    }
}
