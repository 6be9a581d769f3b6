//! Replays recordings through the same tracker and sinks a live run uses,
//! so `report` prints the numbers the live `stats` printed.

use std::{
    cell::Cell,
    collections::HashMap,
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    rc::Rc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow};

use super::format::{ConnectionInfo, Header, Reader, Record};
use crate::pipeline::paths::PathBook;
use crate::{
    kernel::{hooks::APP_WRITES_HOOKS, layout::major_minor},
    output::sink::Sink,
    pipeline::connections::{ConnectionTable, MountEntry},
    pipeline::session::{self, Filter, RunSummary},
    pipeline::tracker::{Tracker, TrackerConfig},
};

/// Ticks during a replay: every `every` of recorded time, with `clock` set
/// to the tick's wall-clock time (Unix ns) for sinks that write timestamps.
pub struct ReplayTicks {
    pub every: Duration,
    pub clock: Rc<Cell<u64>>,
}

/// The connection names of several recordings in one table. A connection
/// id that two files use for different mounts gets a fresh id in the
/// second; the same mount point in two files is one connection.
pub struct MergedNames {
    pub names: ConnectionTable,
    by_mount: HashMap<String, u32>,
    next_fresh: u32,
}

impl Default for MergedNames {
    fn default() -> Self {
        MergedNames {
            names: ConnectionTable::frozen([]),
            by_mount: HashMap::new(),
            next_fresh: u32::MAX,
        }
    }
}

impl MergedNames {
    /// The merged id of a file's connection `info`.
    fn adopt(&mut self, info: &ConnectionInfo) -> u32 {
        if let Some(id) = self.by_mount.get(&info.mount_point) {
            return *id;
        }
        let id = if self.names.get(info.connection).is_none() {
            info.connection
        } else {
            while self.names.get(self.next_fresh).is_some() {
                self.next_fresh -= 1;
            }
            self.next_fresh
        };
        self.rename(id, info);
        id
    }

    /// Names `id` after `info`; for an id this file already uses (bind mounts
    /// share a connection) the last name wins, as in a live run's table.
    fn rename(&mut self, id: u32, info: &ConnectionInfo) {
        self.names.insert(MountEntry {
            mount_id: 0,
            connection: id,
            mount_point: PathBuf::from(&info.mount_point),
            fs_type: info.fs_type.clone(),
            source: String::new(),
        });
        self.by_mount.insert(info.mount_point.clone(), id);
    }

    /// The merged id of `info` for a file whose ids so far are `ids`.
    fn adopt_for(&mut self, ids: &mut HashMap<u32, u32>, info: &ConnectionInfo) {
        match ids.get(&info.connection) {
            Some(&id) => self.rename(id, info),
            None => {
                let id = self.adopt(info);
                ids.insert(info.connection, id);
            }
        }
    }

    /// A connection the file never named: it keeps the numeric name the
    /// live run gave it.
    fn adopt_unnamed(&mut self, connection: u32) -> u32 {
        self.adopt(&ConnectionInfo {
            connection,
            mount_point: format!("conn {}", major_minor(connection)),
            fs_type: String::new(),
        })
    }
}

/// What one replayed file contributed.
pub struct Replayed {
    pub header: Header,
    pub summary: RunSummary,
    /// Whole records read.
    pub records: u64,
    /// The file ends mid-record at this byte (cut off).
    pub cut_off_at: Option<u64>,
    /// The recording run finished cleanly (its kernel counters are known).
    pub ended: bool,
}

fn unix_ns(header: &Header, mono_ns: u64) -> u64 {
    header
        .start_unix_ns
        .saturating_add(mono_ns.saturating_sub(header.start_monotonic_ns))
}

/// Opens a recording and checks its header.
pub fn open(path: &Path) -> Result<Reader<BufReader<File>>> {
    if path.is_dir() {
        anyhow::bail!(
            "{} is a directory, not a recording: give a file from `fusetrace record -o FILE`",
            path.display()
        );
    }
    let file =
        File::open(path).with_context(|| format!("cannot open recording {}", path.display()))?;
    Reader::new(BufReader::with_capacity(1 << 16, file))
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Feeds one recording's events through a fresh tracker into `sink`, the
/// way `session::run` feeds live ones. Does not call `sink.finish`.
pub fn replay_file(
    path: &Path,
    sink: &mut dyn Sink,
    merged: &mut MergedNames,
    ticks: Option<&ReplayTicks>,
) -> Result<Replayed> {
    let mut reader = open(path)?;
    let header = reader.header.clone();
    // The connection filter was applied when recording; pid and opcode
    // filters apply to finished requests, here.
    let filter = Filter {
        connections: Vec::new(),
        pids: header.filter.pids_or_pid(),
        comms: header
            .filter
            .comms
            .iter()
            .map(|c| crate::pipeline::lifecycle::Comm::truncated(c))
            .collect(),
        opcodes: header.filter.opcodes.clone(),
        ..Filter::default()
    };
    let mut ids: HashMap<u32, u32> = HashMap::new();
    for c in &header.connections {
        merged.adopt_for(&mut ids, c);
    }
    let mut config = TrackerConfig::default();
    if let Some(ns) = header.reorder_window_ns {
        config.reorder_window_ns = ns;
    }
    let mut tracker = Tracker::new(config);
    let mut paths = PathBook::default();
    let mut finished = Vec::new();
    let mut summary = RunSummary::default();
    let mut end = None;
    let mut next_tick = ticks.map(|t| header.start_monotonic_ns + t.every.as_nanos() as u64);
    let mut tick_until = |now_ns: u64, sink: &mut dyn Sink, names: &mut ConnectionTable| {
        if let (Some(t), Some(next)) = (ticks, next_tick.as_mut()) {
            while now_ns >= *next {
                t.clock.set(unix_ns(&header, *next));
                sink.tick(names)?;
                *next += t.every.as_nanos().max(1) as u64;
            }
        }
        anyhow::Ok(())
    };
    loop {
        let rec = reader
            .next_record()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let Some(rec) = rec else { break };
        match rec {
            Record::Event(mut ev, ev_names) => {
                ev.connection = match ids.get(&ev.connection) {
                    Some(id) => *id,
                    None => {
                        let id = merged.adopt_unnamed(ev.connection);
                        ids.insert(ev.connection, id);
                        id
                    }
                };
                tick_until(ev.ts_ns, sink, &mut merged.names)?;
                // As live: sinks see every event before the tracker does.
                sink.event(&ev, ev_names.as_deref())?;
                paths.observe(&ev, ev_names.map(|n| *n), &mut merged.names);
                tracker.observe(&ev, &mut finished);
            }
            Record::Idle { now_ns } => {
                tick_until(now_ns, sink, &mut merged.names)?;
                tracker.advance(now_ns, &mut finished);
            }
            Record::Connection(c) => merged.adopt_for(&mut ids, &c),
            Record::End(c) => end = Some(c),
        }
        session::report(
            &mut finished,
            &filter,
            sink,
            &mut summary,
            &mut merged.names,
            &mut paths,
        )?;
    }
    tracker.flush(&mut finished);
    session::report(
        &mut finished,
        &filter,
        sink,
        &mut summary,
        &mut merged.names,
        &mut paths,
    )?;
    if let Some(t) = ticks {
        // Close this file's last, partial interval.
        t.clock.set(unix_ns(&header, tracker.watermark_ns()));
        sink.tick(&mut merged.names)?;
    }
    summary.in_flight_at_exit = tracker.in_flight().filter(|r| filter.wants(r)).count() as u64;
    summary.tracker = tracker.counters();
    summary.paths = paths.counters();
    if let Some(c) = end {
        summary.ring_drops = c.ring_drops;
        summary.read_faults = c.read_faults;
        summary.splice_transfers = c.splice_transfers;
        summary.undecodable = c.undecodable;
        summary.takes_unresolved = c.takes_unresolved;
    }
    Ok(Replayed {
        header,
        summary,
        records: reader.records,
        cut_off_at: reader.truncated_at(),
        ended: end.is_some(),
    })
}

/// Recorded with `--app-writes`: applications' writes are in the file.
/// (Not a `Header` method: format.rs is also built alone, into the fuzz
/// target, without the kernel module.)
pub fn has_app_writes(header: &Header) -> bool {
    header.hooks.iter().any(|h| h == APP_WRITES_HOOKS)
}

/// Adds `b`'s counts to `a` (merging the summaries of several recordings).
pub fn add_summary(a: &mut RunSummary, b: &RunSummary) {
    a.requests += b.requests;
    a.no_reply_expected += b.no_reply_expected;
    a.fully_observed += b.fully_observed;
    a.in_flight_at_exit += b.in_flight_at_exit;
    a.ring_drops += b.ring_drops;
    a.read_faults += b.read_faults;
    a.splice_transfers += b.splice_transfers;
    a.undecodable += b.undecodable;
    a.takes_unresolved += b.takes_unresolved;
    a.mounts_gone += b.mounts_gone;
    a.paths.add(&b.paths);
    let (t, u) = (&mut a.tracker, &b.tracker);
    t.events += u.events;
    t.finished += u.finished;
    t.unmatched_replies += u.unmatched_replies;
    t.unmatched_ends += u.unmatched_ends;
    t.never_ended += u.never_ended;
    t.sent_before_id += u.sent_before_id;
    t.sends_without_id += u.sends_without_id;
    t.notifications += u.notifications;
    t.interrupts += u.interrupts;
}
