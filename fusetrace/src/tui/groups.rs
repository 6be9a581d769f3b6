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
        Grouped::new(self.keys.clone(), ROWS_PER_SLOT).totals_only()
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
        let mut all = Grouped::new(self.keys.clone(), ROWS_PER_SLOT * SLOTS as usize).totals_only();
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

#[cfg(test)]
mod view_tests {
    use super::*;
    use crate::tui::{
        buffer_text,
        state::{RunCounters, TopConfig, TopState, View},
        view,
    };
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FuseEvent};
    use ratatui::{Terminal, backend::TestBackend};

    const LONG: &str =
        "/mnt/ref/projects/fusetrace/target/debug/deps/libfusetrace_common-0123.rlib";

    /// A READ of `path` by `cat` (pid 42): finished after `total_ns`, or
    /// still in the daemon when `total_ns` is `None`.
    fn read(unique: u64, path: Option<&str>, total_ns: Option<u64>) -> RequestLifecycle {
        let mut t = crate::pipeline::tracker::Tracker::new(Default::default());
        let mut out = Vec::new();
        let mut events = vec![(EventKind::Sent, 1_000), (EventKind::Taken, 2_000)];
        if let Some(total) = total_ns {
            events.extend([
                (EventKind::Replied, total),
                (EventKind::Ended, 1_000 + total),
            ]);
        }
        for (kind, ts) in events {
            let ev = FuseEvent {
                kind: kind as u8,
                flags: FLAG_HAS_HEADER,
                connection: 52,
                unique,
                opcode: 15,
                ts_ns: ts,
                tgid: 42,
                tid: 42,
                req_pid: 42,
                nodeid: 9,
                comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
                ..Default::default()
            };
            t.observe(&ev, &mut out);
        }
        let mut rec = match total_ns {
            Some(_) => out.pop().unwrap(),
            None => t.in_flight().next().unwrap(),
        };
        rec.path = path.map(Into::into);
        rec
    }

    fn frame(state: &TopState, width: u16) -> String {
        let mut term = Terminal::new(TestBackend::new(width, 24)).unwrap();
        term.draw(|f| view::draw(f, state)).unwrap();
        buffer_text(term.backend().buffer())
    }

    fn key(state: &mut TopState, c: char) {
        state.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
    }

    #[test]
    fn b_switches_between_opcodes_files_and_processes() {
        let mut state = TopState::new(TopConfig::default());
        state.record(&read(2, Some(LONG), Some(50_000)));
        state.record(&read(4, Some("/mnt/ref/small"), Some(5_000)));
        state.record(&read(6, None, Some(5_000)));
        let in_flight = read(8, Some(LONG), None);
        let tick = |state: &mut TopState| {
            state.tick(
                1_000_000_000,
                std::iter::once(in_flight.clone()),
                RunCounters::default(),
                &mut |_| "/mnt/ref".into(),
            )
        };
        tick(&mut state);
        // In flight: the file, shortened to its column keeping its name.
        let text = frame(&state, 120);
        assert!(text.contains("FILE"), "{text}");
        let row = text.lines().find(|l| l.contains("in daemon")).unwrap();
        assert!(row.contains("…/libfusetrace_common-0123.rlib"), "{text}");
        assert!(text.contains("b by op/file/process"), "footer: {text}");

        key(&mut state, 'b');
        assert_eq!((state.view, state.group), (View::Summary, GroupBy::Op));
        key(&mut state, 'b');
        assert_eq!(state.group, GroupBy::File);
        assert!(state.shown.files.0.is_empty(), "built for the screen only");
        tick(&mut state);
        let text = frame(&state, 80);
        assert!(text.contains("per file, last 10s: 3 of 3"), "{text}");
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("FILE"))
            .skip(1)
            .take(3)
            .collect();
        // Slowest total first; the long path keeps its file name at 80
        // columns; a node without a path names its mount.
        assert!(
            rows[0].contains("…/libfusetrace_common-0123.rlib"),
            "{text}"
        );
        assert!(rows[0].starts_with("/mnt/re…/"), "{text}");
        // (Equal times: by key, an unknown path first.)
        assert!(rows[1].starts_with("node 9 (/mnt/ref)"), "{text}");
        assert!(rows[2].starts_with("/mnt/ref/small"), "{text}");

        key(&mut state, 'b');
        assert_eq!(state.group, GroupBy::Process);
        tick(&mut state);
        let text = frame(&state, 80);
        assert!(text.contains("per process"), "{text}");
        let row = text.lines().find(|l| l.contains("cat")).unwrap();
        assert!(row.trim_start().starts_with("42"), "{text}");
        // A filter that matches no process empties the table.
        key(&mut state, '/');
        for c in "comm:dd".chars() {
            key(&mut state, c);
        }
        state.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert!(state.visible_groups().0.is_empty());
        key(&mut state, 'b');
        assert_eq!(state.group, GroupBy::Op, "and round again");
    }
}
