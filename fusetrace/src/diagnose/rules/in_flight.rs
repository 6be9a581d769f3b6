//! How many requests a connection had in flight (sent by the kernel, not
//! yet ended), over time: the overlap the concurrency rules read. Counted
//! from the raw send and end events as they arrive, so the memory is the
//! requests in flight, not the requests of the run (a finished
//! `RequestLifecycle` comes only after its end, when a request that started
//! earlier may still be running).

use std::collections::{BTreeMap, HashMap, HashSet};

use fusetrace_common::{EventKind, FLAG_BACKGROUND, FLAG_HAS_HEADER, FuseEvent};

/// Ends seen before their send (events of two CPUs arrive slightly out of
/// order) or of requests sent before tracing began; kept so that a late
/// send is not counted forever. Cleared when it grows past this.
const MAX_EARLY_ENDS: usize = 4096;

/// Time spent at each number of requests in flight.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct InFlight {
    /// Only background requests (readahead, async writes) count.
    background_only: bool,
    /// Requests in flight, by unique id: whether each is a background one.
    live: HashMap<u64, bool>,
    live_background: usize,
    early_ends: HashSet<u64>,
    last_ns: Option<u64>,
    /// Nanoseconds spent with N (N > 0) requests in flight.
    levels: BTreeMap<u32, u64>,
    /// Requests counted (sends seen; background-only: background sends).
    pub sent: u64,
}

impl InFlight {
    /// Counts every request.
    pub fn all() -> Self {
        InFlight::default()
    }

    /// Counts background requests only. On this kernel their send is seen
    /// when they leave the kernel's background queue, so at most
    /// `max_background` of them are in flight.
    pub fn background() -> Self {
        InFlight {
            background_only: true,
            ..InFlight::default()
        }
    }

    /// The count the levels are kept for.
    fn counted(&self) -> usize {
        if self.background_only {
            self.live_background
        } else {
            self.live.len()
        }
    }

    /// One event of the connection (others are ignored).
    pub fn event(&mut self, ev: &FuseEvent) {
        let sent = ev.kind == EventKind::Sent as u8;
        if !sent && ev.kind != EventKind::Ended as u8 {
            return;
        }
        // The time before this event was spent at the current level. An
        // event older than the last one (out of order) changes the level
        // without moving time back.
        let n = self.counted();
        if let Some(last) = self.last_ns
            && ev.ts_ns > last
            && n > 0
        {
            *self.levels.entry(n as u32).or_default() += ev.ts_ns - last;
        }
        self.last_ns = Some(self.last_ns.map_or(ev.ts_ns, |l| l.max(ev.ts_ns)));
        if sent {
            if self.early_ends.remove(&ev.unique) {
                return;
            }
            let background = ev.flags & FLAG_HAS_HEADER != 0 && ev.flags & FLAG_BACKGROUND != 0;
            if self.live.insert(ev.unique, background).is_none() {
                self.live_background += usize::from(background);
                if background || !self.background_only {
                    self.sent += 1;
                }
            }
        } else {
            match self.live.remove(&ev.unique) {
                Some(background) => self.live_background -= usize::from(background),
                None => {
                    if self.early_ends.len() >= MAX_EARLY_ENDS {
                        self.early_ends.clear();
                    }
                    self.early_ends.insert(ev.unique);
                }
            }
        }
    }

    /// Time with at least one request in flight.
    pub fn busy_ns(&self) -> u64 {
        self.levels.values().sum()
    }

    /// Time with at least `n` requests in flight.
    pub fn at_least_ns(&self, n: u32) -> u64 {
        self.levels.range(n.max(1)..).map(|(_, ns)| ns).sum()
    }

    /// The most requests in flight at once.
    pub fn peak(&self) -> u32 {
        self.levels.keys().next_back().copied().unwrap_or(0)
    }

    /// The mean number in flight while any was.
    pub fn mean_while_busy(&self) -> f64 {
        let busy = self.busy_ns();
        if busy == 0 {
            return 0.0;
        }
        let area: f64 = self
            .levels
            .iter()
            .map(|(&n, &ns)| f64::from(n) * ns as f64)
            .sum();
        area / busy as f64
    }
}

/// A send or end event, for the rules' tests.
#[cfg(test)]
pub fn point(kind: EventKind, unique: u64, ts_ns: u64, background: bool) -> FuseEvent {
    FuseEvent {
        kind: kind as u8,
        flags: FLAG_HAS_HEADER | if background { FLAG_BACKGROUND } else { 0 },
        connection: 50,
        unique,
        ts_ns,
        ..FuseEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_kept_per_level_and_out_of_order_points_are_joined() {
        let mut f = InFlight::all();
        // 1 in flight 0..10, 2 in flight 10..30, 1 in 30..40, 1 in 120..130;
        // the request of 100..110, its end seen first, is left out.
        for ev in [
            point(EventKind::Sent, 2, 0, false),
            point(EventKind::Sent, 4, 10, false),
            point(EventKind::Ended, 2, 30, false),
            point(EventKind::Ended, 4, 40, false),
            // An end seen before its send (another CPU's event late).
            point(EventKind::Ended, 6, 110, false),
            point(EventKind::Sent, 6, 100, false),
            point(EventKind::Sent, 8, 120, false),
            point(EventKind::Ended, 8, 130, false),
        ] {
            f.event(&ev);
        }
        assert_eq!(f.peak(), 2);
        assert_eq!(f.busy_ns(), 50);
        assert_eq!(f.at_least_ns(2), 20);
        assert!((f.mean_while_busy() - 70.0 / 50.0).abs() < 1e-9);
        assert!(f.live.is_empty(), "the late send is not left in flight");
        assert_eq!(f.sent, 3);
    }

    #[test]
    fn background_counts_only_background_requests() {
        let mut f = InFlight::background();
        for ev in [
            point(EventKind::Sent, 2, 0, true),
            point(EventKind::Sent, 4, 5, false),
            point(EventKind::Sent, 6, 10, true),
            point(EventKind::Ended, 4, 15, false),
            point(EventKind::Ended, 2, 20, true),
            point(EventKind::Ended, 6, 30, true),
        ] {
            f.event(&ev);
        }
        assert_eq!((f.peak(), f.busy_ns(), f.at_least_ns(2)), (2, 30, 10));
        assert!(f.early_ends.is_empty());
    }
}
