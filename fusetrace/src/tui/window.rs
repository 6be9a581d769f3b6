//! Per-opcode latency over a sliding window (`fusetrace top`'s summary and
//! detail): the window is a ring of equal time slots; each slot keeps the
//! histograms and slowest requests of the requests that finished in it, and
//! a running sum over the slots answers percentiles without merging.
//!
//! Requests come in whole from the event pipeline ([`Windows::record`]),
//! or, when the kernel counts them, as counted growth of its histogram
//! cells ([`Windows::count`]) plus the few slow requests it sends one by
//! one for the slowest lists ([`Windows::record_slowest`]).

use std::collections::{BTreeMap, HashMap, VecDeque};

use hdrhistogram::Histogram;

use crate::pipeline::lifecycle::{LatencyStage, RequestLifecycle};

/// (connection, opcode).
pub type OpKey = (u32, u32);

/// Slots per window: the window slides in steps of a tenth of its length.
const SLOTS: usize = 10;

/// How many of the slowest requests each slot keeps (and the detail view shows).
pub const SLOWEST_KEPT: usize = 10;

/// Upper bounds of the latency histogram bars, decades from 1us to 10s.
pub const BAR_BOUNDS_NS: [u64; 8] = [
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// Labels of the bars: the lower bound of each decade.
pub const BAR_LABELS: [&str; 9] = [
    "<1us", "1us", "10us", "100us", "1ms", "10ms", "100ms", "1s", "10s+",
];

fn new_histogram() -> Histogram<u32> {
    // 1 ns .. 1 hour at 2 significant digits: enough for a p99 on screen, and
    // small (about 18 KiB) because there is one per stage per slot per opcode.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("valid histogram bounds")
}

/// One stage's histogram per [`LatencyStage`], in `LatencyStage::ALL` order.
#[derive(Debug, Clone)]
pub struct StageHistograms([Histogram<u32>; 4]);

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms(std::array::from_fn(|_| new_histogram()))
    }
}

impl StageHistograms {
    fn record(&mut self, rec: &RequestLifecycle) {
        for (i, stage) in LatencyStage::ALL.iter().enumerate() {
            if let Some(ns) = rec.latency(*stage) {
                self.0[i].saturating_record(ns.max(1));
            }
        }
    }

    pub fn stage(&self, stage: LatencyStage) -> &Histogram<u32> {
        &self.0[stage_index(stage)]
    }
}

fn stage_index(stage: LatencyStage) -> usize {
    LatencyStage::ALL.iter().position(|s| *s == stage).unwrap()
}

/// A finished request kept for the "slowest requests" list.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowRequest {
    pub unique: u64,
    pub nodeid: Option<u64>,
    pub path: Option<std::sync::Arc<str>>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub daemon_tid: Option<u32>,
    pub error: Option<i32>,
    pub ended_ns: u64,
    /// Each stage, in `LatencyStage::ALL` order.
    pub stages: [Option<u64>; 4],
}

impl SlowRequest {
    fn of(rec: &RequestLifecycle) -> SlowRequest {
        SlowRequest {
            unique: rec.unique,
            nodeid: rec.nodeid,
            path: rec.path.clone(),
            pid: rec.requester_pid.or(rec.requester_tid),
            comm: rec.requester_comm.map(|c| c.to_string()),
            daemon_tid: rec.daemon_tid,
            error: rec.error,
            ended_ns: rec.ended_ns.unwrap_or_else(|| rec.first_seen_ns()),
            stages: LatencyStage::ALL.map(|s| rec.latency(s)),
        }
    }

    pub fn slowness(&self) -> u64 {
        slowness(&self.stages)
    }
}

/// What "slow" is measured by: the total, or the longest stage observed
/// when the total is unknown.
fn slowness(stages: &[Option<u64>; 4]) -> u64 {
    stages[3]
        .or_else(|| stages.iter().flatten().copied().max())
        .unwrap_or(0)
}

/// Counts and latencies of one opcode on one connection.
#[derive(Debug, Clone, Default)]
pub struct OpTotals {
    pub count: u64,
    pub errors: u64,
    pub histograms: StageHistograms,
}

impl OpTotals {
    fn record(&mut self, rec: &RequestLifecycle) {
        self.count += 1;
        if rec.error.is_some_and(|e| e != 0) {
            self.errors += 1;
        }
        self.histograms.record(rec);
    }
}

#[derive(Debug, Default)]
struct OpSlot {
    totals: OpTotals,
    /// The slowest requests of this slot, slowest first.
    slowest: Vec<SlowRequest>,
}

#[derive(Debug)]
struct Slot {
    start_ns: u64,
    ops: HashMap<OpKey, OpSlot>,
}

/// The last `window` of finished requests, per (connection, opcode).
#[derive(Debug)]
pub struct Windows {
    slot_ns: u64,
    slots: VecDeque<Slot>,
    sums: BTreeMap<OpKey, OpTotals>,
}

impl Windows {
    pub fn new(window_ns: u64) -> Windows {
        Windows {
            slot_ns: (window_ns / SLOTS as u64).max(1),
            slots: VecDeque::new(),
            sums: BTreeMap::new(),
        }
    }

    pub fn window_ns(&self) -> u64 {
        self.slot_ns * SLOTS as u64
    }

    /// Moves the window to end at `now_ns`, dropping slots that left it.
    pub fn advance(&mut self, now_ns: u64) {
        let Some(last) = self.slots.back() else {
            self.slots.push_back(Slot {
                start_ns: now_ns,
                ops: HashMap::new(),
            });
            return;
        };
        if now_ns < last.start_ns + self.slot_ns {
            return;
        }
        // Slots start on the grid of the first one; empty slots in between
        // are left out (they hold nothing).
        let steps = (now_ns - last.start_ns) / self.slot_ns;
        let start_ns = last.start_ns + steps * self.slot_ns;
        self.slots.push_back(Slot {
            start_ns,
            ops: HashMap::new(),
        });
        while self
            .slots
            .front()
            .is_some_and(|s| s.start_ns + self.window_ns() <= start_ns)
        {
            let gone = self.slots.pop_front().unwrap();
            self.forget(gone);
        }
    }

    fn forget(&mut self, slot: Slot) {
        for (key, op) in slot.ops {
            let Some(sum) = self.sums.get_mut(&key) else {
                continue;
            };
            sum.count -= op.totals.count;
            sum.errors -= op.totals.errors;
            for (s, o) in sum
                .histograms
                .0
                .iter_mut()
                .zip(op.totals.histograms.0.iter())
            {
                // Cannot fail: `s` holds everything `o` holds, same bounds.
                let _ = s.subtract(o);
            }
            if sum.count == 0 {
                self.sums.remove(&key);
            }
        }
    }

    /// Adds a finished request to the current slot.
    pub fn record(&mut self, rec: &RequestLifecycle) {
        if self.slots.is_empty() {
            self.advance(rec.ended_ns.unwrap_or_else(|| rec.first_seen_ns()));
        }
        let key = (rec.connection, rec.opcode);
        let slot = self.slots.back_mut().unwrap().ops.entry(key).or_default();
        slot.totals.record(rec);
        self.sums.entry(key).or_default().record(rec);
        self.record_slowest(rec);
    }

    /// Adds `n` requests of one opcode that took `ns` in `stage` (the
    /// growth of one of the kernel's histogram cells) to the current
    /// slot. Only the total's cells count requests and errors: each
    /// request is in one total cell, and in one cell of each stage whose
    /// points were both seen.
    pub fn count(&mut self, key: OpKey, stage: LatencyStage, ns: u64, n: u64, error: bool) {
        let Some(slot) = self.slots.back_mut() else {
            // Counts come after the first `advance`, which makes the slot.
            return;
        };
        let n32 = n.min(u32::MAX as u64) as u32;
        for totals in [
            &mut slot.ops.entry(key).or_default().totals,
            self.sums.entry(key).or_default(),
        ] {
            if stage == LatencyStage::Total {
                totals.count += n;
                if error {
                    totals.errors += n;
                }
            }
            totals.histograms.0[stage_index(stage)].saturating_record_n(ns.max(1), n32);
        }
    }

    /// Keeps a finished request for the slowest lists only (its counts
    /// and latencies come through [`Windows::count`]).
    pub fn record_slowest(&mut self, rec: &RequestLifecycle) {
        if self.slots.is_empty() {
            self.advance(rec.ended_ns.unwrap_or_else(|| rec.first_seen_ns()));
        }
        let key = (rec.connection, rec.opcode);
        let slot = self.slots.back_mut().unwrap().ops.entry(key).or_default();
        // Most requests are not among the slowest: only those are copied.
        let slow = slowness(&LatencyStage::ALL.map(|s| rec.latency(s)));
        let pos = slot
            .slowest
            .iter()
            .position(|s| s.slowness() < slow)
            .unwrap_or(slot.slowest.len());
        if pos < SLOWEST_KEPT {
            slot.slowest.insert(pos, SlowRequest::of(rec));
            slot.slowest.truncate(SLOWEST_KEPT);
        }
    }

    /// The smallest total latency that at most `n` of the window's
    /// requests (all opcodes) reached, to the resolution of the
    /// histograms; 0 when the window holds `n` requests or fewer.
    pub fn latency_above(&self, n: u64) -> u64 {
        let mut values: Vec<(u64, u64)> = self
            .sums
            .values()
            .flat_map(|t| {
                t.histograms
                    .stage(LatencyStage::Total)
                    .iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value() as u64))
            })
            .collect();
        values.sort_unstable_by_key(|v| std::cmp::Reverse(v.0));
        let mut above = 0;
        for (value, count) in values {
            if above + count > n {
                // This value's requests would make too many: from above it.
                return value + 1;
            }
            above += count;
        }
        0
    }

    /// How much time the window covers at `now_ns` (less than the window
    /// length right after the start).
    pub fn covered_ns(&self, now_ns: u64) -> u64 {
        match self.slots.front() {
            Some(first) => now_ns.saturating_sub(first.start_ns).min(self.window_ns()),
            None => 0,
        }
    }

    /// Every opcode with requests in the window.
    pub fn ops(&self) -> impl Iterator<Item = (&OpKey, &OpTotals)> {
        self.sums.iter()
    }

    /// The `n` slowest requests of one opcode in the window, slowest first.
    pub fn slowest(&self, key: OpKey, n: usize) -> Vec<SlowRequest> {
        let mut all: Vec<SlowRequest> = self
            .slots
            .iter()
            .filter_map(|s| s.ops.get(&key))
            .flat_map(|o| o.slowest.iter().cloned())
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.slowness()));
        all.truncate(n);
        all
    }
}

/// How many samples of a histogram fall in each bar of [`BAR_LABELS`].
pub fn bars(h: &Histogram<u32>) -> [u64; 9] {
    let mut out = [0u64; 9];
    for v in h.iter_recorded() {
        let value = v.value_iterated_to();
        let i = BAR_BOUNDS_NS
            .iter()
            .position(|b| value < *b)
            .unwrap_or(BAR_BOUNDS_NS.len());
        out[i] += v.count_at_value() as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(unique: u64, op: u32, end_ns: u64, total_ns: u64) -> RequestLifecycle {
        let mut t = crate::pipeline::tracker::Tracker::new(
            crate::pipeline::tracker::TrackerConfig::default(),
        );
        let mut out = Vec::new();
        let sent = end_ns - total_ns;
        for (kind, ts) in [
            (fusetrace_common::EventKind::Sent, sent),
            (fusetrace_common::EventKind::Taken, sent + 1),
            (fusetrace_common::EventKind::Replied, end_ns - 1),
            (fusetrace_common::EventKind::Ended, end_ns),
        ] {
            let ev = fusetrace_common::FuseEvent {
                kind: kind as u8,
                flags: fusetrace_common::FLAG_HAS_HEADER,
                connection: 7,
                unique,
                opcode: op,
                ts_ns: ts,
                ..Default::default()
            };
            t.observe(&ev, &mut out);
        }
        out.pop().unwrap()
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn requests_leave_the_window_after_its_length() {
        let mut w = Windows::new(10 * S);
        w.advance(100 * S);
        w.record(&finished(2, 15, 100 * S, 5_000));
        w.advance(105 * S);
        w.record(&finished(4, 15, 105 * S, 9_000_000));
        assert_eq!(w.ops().next().unwrap().1.count, 2);
        w.advance(110 * S);
        let (_, read) = w.ops().next().unwrap();
        assert_eq!(read.count, 1, "the first request left the window");
        let total = read.histograms.stage(LatencyStage::Total);
        assert_eq!(total.len(), 1);
        assert!(total.max() >= 8_900_000);
        w.advance(116 * S);
        assert_eq!(w.ops().count(), 0);
    }

    #[test]
    fn slowest_are_kept_across_slots_in_order() {
        let mut w = Windows::new(10 * S);
        w.advance(0);
        for i in 1..=30u64 {
            w.advance(i * S / 4);
            w.record(&finished(2 * i, 15, 10 * S, i * 1_000));
        }
        let slow = w.slowest((7, 15), 5);
        assert_eq!(
            slow.iter().map(|s| s.unique).collect::<Vec<_>>(),
            vec![60, 58, 56, 54, 52]
        );
        assert_eq!(slow[0].stages[3], Some(30_000));
    }

    #[test]
    fn counted_cells_fill_the_window_like_requests() {
        let mut w = Windows::new(10 * S);
        w.advance(100 * S);
        // 90 READs of 10us (3 failed), 10 of 2ms; their daemon stage.
        w.count((7, 15), LatencyStage::Total, 10_000, 87, false);
        w.count((7, 15), LatencyStage::Total, 10_000, 3, true);
        w.count((7, 15), LatencyStage::Total, 2_000_000, 10, false);
        w.count((7, 15), LatencyStage::DaemonService, 1_500_000, 10, false);
        w.count((7, 1), LatencyStage::Total, 50_000, 4, false);
        let ops: Vec<_> = w.ops().collect();
        let (_, read) = ops.iter().find(|(k, _)| **k == (7, 15)).unwrap();
        assert_eq!((read.count, read.errors), (100, 3));
        let total = read.histograms.stage(LatencyStage::Total);
        assert_eq!(total.len(), 100);
        let p50 = total.value_at_quantile(0.5);
        assert!((9_900..=10_100).contains(&p50), "p50 {p50}");
        assert!(total.value_at_quantile(0.99) >= 1_990_000);
        let daemon = read.histograms.stage(LatencyStage::DaemonService);
        assert_eq!(daemon.len(), 10, "a stage's cells count no requests");
        // The counts leave the window with their slot.
        w.advance(105 * S);
        w.count((7, 15), LatencyStage::Total, 10_000, 5, false);
        w.advance(110 * S);
        let ops: Vec<_> = w.ops().collect();
        assert_eq!(ops.len(), 1, "LOOKUP left: {ops:?}");
        assert_eq!(ops[0].1.count, 5);
        assert_eq!(ops[0].1.errors, 0);
    }

    #[test]
    fn slow_records_fill_the_slowest_list_without_counting() {
        let mut w = Windows::new(10 * S);
        w.advance(100 * S);
        w.count((7, 15), LatencyStage::Total, 10_000, 3, false);
        w.record_slowest(&finished(8, 15, 100 * S, 9_000_000));
        let (_, read) = w.ops().next().unwrap();
        assert_eq!(read.count, 3, "the record is one of the counted");
        assert_eq!(w.slowest((7, 15), 5)[0].unique, 8);
    }

    #[test]
    fn latency_above_leaves_at_most_n_requests_over_it() {
        let mut w = Windows::new(10 * S);
        w.advance(100 * S);
        assert_eq!(w.latency_above(10), 0, "empty");
        w.count((7, 15), LatencyStage::Total, 10_000, 1000, false);
        w.count((7, 15), LatencyStage::Total, 1_000_000, 8, false);
        w.count((7, 1), LatencyStage::Total, 5_000_000, 2, false);
        // 10 requests at 1 ms and above: a threshold above the 10us ones.
        let t = w.latency_above(10);
        assert!((10_001..=1_000_000).contains(&t), "{t}");
        // 5: only the two at 5 ms.
        let t = w.latency_above(5);
        assert!((1_000_001..=5_000_000).contains(&t), "{t}");
        // 1: above every request.
        assert!(w.latency_above(1) > 5_000_000);
        assert_eq!(w.latency_above(2000), 0, "all fit");
    }

    #[test]
    fn bars_split_by_decade() {
        let mut h = new_histogram();
        h.saturating_record(500); // <1us
        h.saturating_record(50_000); // 10us
        h.saturating_record(51_000);
        h.saturating_record(2_000_000_000); // 1s
        h.saturating_record(20_000_000_000); // 10s+
        assert_eq!(bars(&h), [1, 0, 2, 0, 0, 0, 0, 1, 1]);
    }
}
