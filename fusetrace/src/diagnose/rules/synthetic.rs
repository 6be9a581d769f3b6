//! Requests for the rules' unit tests, made by the real tracker from the
//! events of their lives (sent, taken, replied, ended), so that a rule sees
//! what it would see live.

use std::sync::Arc;

use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FUSE_INT_REQ_BIT, FuseEvent};

use crate::diagnose::finding::{Facts, Finding, Rule};
use crate::pipeline::{
    lifecycle::RequestLifecycle,
    opcode,
    tracker::{Tracker, TrackerConfig},
};

pub const CONN: u32 = 50;

/// One request's points in time (ns): sent, taken, replied, ended.
#[derive(Clone, Copy)]
pub struct Times(pub u64, pub u64, pub u64, pub u64);

impl Times {
    /// Sent at `at`; `queue`, `daemon` and `completion` ns in each stage.
    pub fn staged(at: u64, queue: u64, daemon: u64, completion: u64) -> Times {
        Times(
            at,
            at + queue,
            at + queue + daemon,
            at + queue + daemon + completion,
        )
    }
}

fn event(kind: EventKind, unique: u64, op: u32, node: u64, ts_ns: u64, error: i32) -> FuseEvent {
    FuseEvent {
        kind: kind as u8,
        flags: FLAG_HAS_HEADER,
        connection: CONN,
        unique,
        opcode: op,
        nodeid: node,
        ts_ns,
        error,
        tid: 900,
        ..FuseEvent::default()
    }
}

/// A node id for a path: the same path, the same node.
pub fn node_of(path: &str) -> u64 {
    2 + path
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 1_000_000
}

/// A request answered with `error` (0 or a negative errno), about `path`.
pub fn request(unique: u64, op: u32, t: Times, error: i32, path: &str) -> RequestLifecycle {
    request_on(unique, op, t, error, node_of(path), Some(path))
}

/// A request about a node, whose path is known or not.
pub fn request_on(
    unique: u64,
    op: u32,
    t: Times,
    error: i32,
    node: u64,
    path: Option<&str>,
) -> RequestLifecycle {
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut out = Vec::new();
    for (kind, ts) in [
        (EventKind::Sent, t.0),
        (EventKind::Taken, t.1),
        (EventKind::Replied, t.2),
        (EventKind::Ended, t.3),
    ] {
        tracker.observe(&event(kind, unique, op, node, ts, error), &mut out);
    }
    let mut rec = out.pop().expect("a finished request");
    rec.path = path.map(Arc::from);
    rec
}

/// A request interrupted while in the daemon (which never answered the
/// INTERRUPT): the INTERRUPT's own record, then the request's.
pub fn interrupted(unique: u64, op: u32, t: Times, path: &str) -> Vec<RequestLifecycle> {
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut out = Vec::new();
    let interrupt_at = (t.1 + t.2) / 2;
    let node = node_of(path);
    for ev in [
        event(EventKind::Sent, unique, op, node, t.0, 0),
        event(EventKind::Taken, unique, op, node, t.1, 0),
        event(
            EventKind::Taken,
            unique | FUSE_INT_REQ_BIT,
            opcode::INTERRUPT,
            node,
            interrupt_at,
            0,
        ),
        event(EventKind::Replied, unique, op, node, t.2, 0),
        event(EventKind::Ended, unique, op, node, t.3, 0),
    ] {
        tracker.observe(&ev, &mut out);
    }
    for rec in &mut out {
        rec.path = Some(Arc::from(path));
    }
    out
}

/// What a fresh rule `R` concludes from `recs` and the facts they make.
pub fn conclude<R: Rule + Default>(recs: &[RequestLifecycle]) -> Vec<Finding> {
    let mut rule = R::default();
    let mut facts = Facts::default();
    for r in recs {
        facts.request(r);
        rule.request(r);
    }
    rule.conclude(&facts)
}
