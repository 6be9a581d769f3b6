//! `fusetrace top`'s per-file and per-process tables: the requests that
//! finished over the last window, grouped as `stats --by path` and
//! `stats --by pid` group them (the same [`Grouped`] rows, so the same
//! cap and `(other)` row: a run over a million files keeps at most
//! [`ROWS_PER_SLOT`] rows per slot and tells how much fell over).

use std::collections::VecDeque;

use crate::{
    output::by::{GroupRow, Grouped, Key, Keys, Name, SortBy},
    pipeline::lifecycle::RequestLifecycle,
};

/// Slots per window, as the per-opcode window slides.
const SLOTS: u64 = 10;

/// Distinct rows one slot keeps; the window merges at most ten slots.
pub const ROWS_PER_SLOT: usize = 1_000;

/// What the grouped table of the second view is keyed by (`b` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupBy {
    #[default]
    Op,
    File,
    Process,
}

impl GroupBy {
    pub const ALL: [GroupBy; 3] = [GroupBy::Op, GroupBy::File, GroupBy::Process];

    pub fn title(self) -> &'static str {
        match self {
            GroupBy::Op => "per opcode",
            GroupBy::File => "per file",
            GroupBy::Process => "per process",
        }
    }

    pub fn next(self) -> GroupBy {
        let i = GroupBy::ALL.iter().position(|g| *g == self).unwrap();
        GroupBy::ALL[(i + 1) % GroupBy::ALL.len()]
    }
}

/// The last window of finished requests grouped by one set of keys.
#[derive(Debug)]
pub struct GroupWindow {
    keys: Keys,
    slot_ns: u64,
    slots: VecDeque<(u64, Grouped)>,
}

impl GroupWindow {
    pub fn new(key: Key, window_ns: u64) -> GroupWindow {
        GroupWindow {
            keys: Keys(vec![key]),
            slot_ns: (window_ns / SLOTS).max(1),
            slots: VecDeque::new(),
        }
    }

    fn empty(&self) -> Grouped {
        Grouped::new(self.keys.clone(), ROWS_PER_SLOT)
    }

    /// Moves the window to end at `now_ns` (slots on the grid of the
    /// first, as the per-opcode window's).
    pub fn advance(&mut self, now_ns: u64) {
        let start = match self.slots.back() {
            None => now_ns,
            Some((last, _)) if now_ns < last + self.slot_ns => return,
            Some((last, _)) => last + (now_ns - last) / self.slot_ns * self.slot_ns,
        };
        let slot = self.empty();
        self.slots.push_back((start, slot));
        let window = self.slot_ns * SLOTS;
        while self.slots.front().is_some_and(|(s, _)| s + window <= start) {
            self.slots.pop_front();
        }
    }

    pub fn record(&mut self, rec: &RequestLifecycle) {
        if self.slots.is_empty() {
            self.advance(rec.ended_ns.unwrap_or_else(|| rec.first_seen_ns()));
        }
        if let Some((_, slot)) = self.slots.back_mut() {
            slot.record(rec);
        }
    }

    /// The window's rows, largest total time first, and the `(other)` row.
    pub fn rows(&self, name: Name<'_>) -> (Vec<GroupRow>, Option<GroupRow>) {
        let mut all = Grouped::new(self.keys.clone(), ROWS_PER_SLOT * SLOTS as usize);
        for (_, slot) in &self.slots {
            all.merge(slot);
        }
        all.rows(SortBy::Total, name)
    }

    /// The key columns' titles (`PID`, `COMM` for a process).
    pub fn titles(&self) -> Vec<&'static str> {
        self.empty().columns().iter().map(|k| k.title()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tracker::{Tracker, TrackerConfig};
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FuseEvent};

    fn finished(unique: u64, end_ns: u64, total_ns: u64, path: &str) -> RequestLifecycle {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for (kind, ts) in [
            (EventKind::Sent, end_ns - total_ns),
            (EventKind::Ended, end_ns),
        ] {
            let ev = FuseEvent {
                kind: kind as u8,
                flags: FLAG_HAS_HEADER,
                connection: 52,
                unique,
                opcode: 15,
                ts_ns: ts,
                ..Default::default()
            };
            t.observe(&ev, &mut out);
        }
        t.flush(&mut out);
        let mut rec = out.pop().unwrap();
        rec.path = Some(path.into());
        rec
    }

    #[test]
    fn files_leave_the_window_and_the_slowest_comes_first() {
        let mut w = GroupWindow::new(Key::Path, 1_000_000_000);
        w.advance(1_000_000_000);
        w.record(&finished(2, 1_000_000_000, 1_000, "/m/old"));
        w.advance(1_500_000_000);
        w.record(&finished(4, 1_500_000_000, 5_000, "/m/slow"));
        w.record(&finished(6, 1_500_000_000, 1_000, "/m/fast"));
        w.record(&finished(8, 1_500_000_000, 1_000, "/m/fast"));
        let (rows, other) = w.rows(&mut |_| String::new());
        let keys: Vec<_> = rows.iter().map(|r| r.keys[0].as_str()).collect();
        assert_eq!(keys, ["/m/slow", "/m/fast", "/m/old"]);
        assert_eq!(rows[1].count, 2);
        assert!(other.is_none());
        // A window later, only the second slot's files are left.
        w.advance(2_100_000_000);
        let (rows, _) = w.rows(&mut |_| String::new());
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.iter().all(|r| r.keys[0] != "/m/old"));
        assert_eq!(
            GroupWindow::new(Key::Pid, 1).titles(),
            ["PID", "COMM"],
            "a process is its pid and command"
        );
    }
}
