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

use super::format::{ConnectionInfo, EndCounters, Header, Reader, Record};
use crate::{
    kernel::{hooks::APP_WRITES_HOOKS, layout::major_minor, probes::KernelCounters},
    pipeline::{
        connections::{ConnectionTable, MountEntry},
        filter::Filter,
        lifecycle::Comm,
        run::Run,
        sink::Sink,
        summary::{Counting, RunSummary},
        tracker::TrackerConfig,
    },
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
    ids: MergedIds,
}

impl Default for MergedNames {
    fn default() -> Self {
        MergedNames {
            names: ConnectionTable::frozen([]),
            ids: MergedIds {
                by_mount: HashMap::new(),
                next_fresh: u32::MAX,
            },
        }
    }
}

/// How [`MergedNames`] hands out merged ids (apart from its table, which a
/// replay lends to its run).
struct MergedIds {
    by_mount: HashMap<String, u32>,
    next_fresh: u32,
}

impl MergedIds {
    /// The merged id of a file's connection `info`.
    fn adopt(&mut self, info: &ConnectionInfo, mounts: &mut ConnectionTable) -> u32 {
        if let Some(id) = self.by_mount.get(&info.mount_point) {
            return *id;
        }
        let id = if mounts.get(info.connection).is_none() {
            info.connection
        } else {
            while mounts.get(self.next_fresh).is_some() {
                self.next_fresh -= 1;
            }
            self.next_fresh
        };
        self.rename(id, info, mounts);
        id
    }

    /// Names `id` after `info`; for an id this file already uses (bind mounts
    /// share a connection) the last name wins, as in a live run's table.
    fn rename(&mut self, id: u32, info: &ConnectionInfo, mounts: &mut ConnectionTable) {
        mounts.insert(MountEntry {
            mount_id: 0,
            connection: id,
            mount_point: PathBuf::from(&info.mount_point),
            fs_type: info.fs_type.clone(),
            source: String::new(),
        });
        self.by_mount.insert(info.mount_point.clone(), id);
    }

    /// The merged id of `info` for a file whose ids so far are `ids`.
    fn adopt_for(
        &mut self,
        ids: &mut HashMap<u32, u32>,
        info: &ConnectionInfo,
        mounts: &mut ConnectionTable,
    ) {
        match ids.get(&info.connection) {
            Some(&id) => self.rename(id, info, mounts),
            None => {
                let id = self.adopt(info, mounts);
                ids.insert(info.connection, id);
            }
        }
    }

    /// The merged id of a file's `connection`; one the file never named
    /// keeps the numeric name the live run gave it.
    fn merged_id(
        &mut self,
        ids: &mut HashMap<u32, u32>,
        connection: u32,
        mounts: &mut ConnectionTable,
    ) -> u32 {
        if let Some(id) = ids.get(&connection) {
            return *id;
        }
        let info = ConnectionInfo {
            connection,
            mount_point: format!("conn {}", major_minor(connection)),
            fs_type: String::new(),
        };
        let id = self.adopt(&info, mounts);
        ids.insert(connection, id);
        id
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
            .map(|c| Comm::truncated(c))
            .collect(),
        opcodes: header.filter.opcodes.clone(),
        ..Filter::default()
    };
    let mut ids: HashMap<u32, u32> = HashMap::new();
    for c in &header.connections {
        merged.ids.adopt_for(&mut ids, c, &mut merged.names);
    }
    let mut config = TrackerConfig::default();
    if let Some(ns) = header.reorder_window_ns {
        config.reorder_window_ns = ns;
    }
    // The merged table is this file's for the replay, and back after it.
    let mounts = std::mem::replace(&mut merged.names, ConnectionTable::frozen([]));
    let mut run = Run::new(filter, mounts, config);
    let mut end = None;
    let mut next_tick = ticks.map(|t| header.start_monotonic_ns + t.every.as_nanos() as u64);
    let mut tick_until = |now_ns: u64, sink: &mut dyn Sink, run: &mut Run| {
        if let (Some(t), Some(next)) = (ticks, next_tick.as_mut()) {
            while now_ns >= *next {
                t.clock.set(unix_ns(&header, *next));
                run.tick(sink)?;
                *next += t.every.as_nanos().max(1) as u64;
            }
        }
        anyhow::Ok(())
    };
    let replayed = loop {
        let rec = match reader.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break Ok(()),
            Err(e) => break Err(anyhow!("{}: {e}", path.display())),
        };
        let step = match rec {
            Record::Event(mut ev, names) => {
                ev.connection = merged
                    .ids
                    .merged_id(&mut ids, ev.connection, &mut run.mounts);
                tick_until(ev.ts_ns, sink, &mut run)
                    .and_then(|()| run.event(&ev, names.map(|n| *n), sink))
            }
            Record::Idle { now_ns } => {
                tick_until(now_ns, sink, &mut run).and_then(|()| run.idle(now_ns, sink))
            }
            Record::Connection(c) => {
                merged.ids.adopt_for(&mut ids, &c, &mut run.mounts);
                Ok(())
            }
            Record::End(c) => {
                end = Some(c);
                Ok(())
            }
        };
        if let Err(e) = step.and_then(|()| run.report(sink)) {
            break Err(e);
        }
    };
    let kernel = end.map(|c| recorded_counters(&c)).unwrap_or_default();
    let undecodable = end.map_or(0, |c| c.undecodable);
    let summary = replayed.and_then(|()| run.finish(sink, &kernel, undecodable, Counting::Events));
    if let (Ok(_), Some(t)) = (&summary, ticks) {
        // Close this file's last, partial interval.
        t.clock.set(unix_ns(&header, run.watermark_ns()));
        run.tick(sink)?;
    }
    merged.names = std::mem::replace(&mut run.mounts, ConnectionTable::frozen([]));
    let summary = summary?;
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

/// The kernel's counters a recording's end record kept.
fn recorded_counters(c: &EndCounters) -> KernelCounters {
    KernelCounters {
        ring_drops: c.ring_drops,
        read_faults: c.read_faults,
        splice_transfers: c.splice_transfers,
        take_unresolved: c.takes_unresolved,
        ..KernelCounters::default()
    }
}
