//! Replays recordings through the same tracker and sinks a live run uses,
//! so `report` prints the numbers the live `stats` printed. A recording is
//! a file or standard input (`-`), and the parts of a recording split by
//! `record --max-size` replay as the one run they were ([`chains`]).

use std::{
    cell::Cell,
    collections::HashMap,
    fs::File,
    io::{BufReader, IsTerminal},
    os::fd::AsFd,
    path::{Path, PathBuf},
    rc::Rc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};

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

/// What one replayed recording (a file, or the parts of one run)
/// contributed.
pub struct Replayed {
    /// The (first) file's header.
    pub header: Header,
    pub summary: RunSummary,
    /// Whole records read.
    pub records: u64,
    /// Files that end mid-record (cut off): name, byte, whole records.
    pub cut_off: Vec<(String, u64, u64)>,
    /// The recording run finished cleanly (its kernel counters are known).
    pub ended: bool,
    /// The last file's name.
    pub last: String,
}

/// A recording to replay: a file, or `-` for standard input, which can be
/// read once only: its reader is kept from the header on.
pub struct Input {
    pub path: PathBuf,
    pub header: Header,
    stdin: Option<Reader<BufReader<File>>>,
}

impl Input {
    /// How messages name it.
    pub fn name(&self) -> String {
        if is_stdin(&self.path) {
            "standard input".to_string()
        } else {
            self.path.display().to_string()
        }
    }

    /// A reader at its first record.
    fn reader(&mut self) -> Result<Reader<BufReader<File>>> {
        match self.stdin.take() {
            Some(r) => Ok(r),
            None if is_stdin(&self.path) => bail!("standard input was read already"),
            None => open(&self.path),
        }
    }
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Opens every recording and reads its header (files are opened again to
/// replay, so that a thousand parts need no thousand descriptors).
pub fn open_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    if paths.iter().filter(|p| is_stdin(p)).count() > 1 {
        bail!("`-` (standard input) is given more than once: it holds one recording");
    }
    paths
        .iter()
        .map(|path| {
            if !is_stdin(path) {
                let header = open(path)?.header;
                return Ok(Input {
                    path: path.clone(),
                    header,
                    stdin: None,
                });
            }
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!(
                    "`-` reads a recording from standard input, which is a terminal: pipe one in, e.g. fusetrace record -o - | fusetrace report -"
                );
            }
            let fd = stdin
                .as_fd()
                .try_clone_to_owned()
                .context("cannot read standard input")?;
            let reader = Reader::new(BufReader::with_capacity(1 << 16, File::from(fd)))
                .map_err(|e| anyhow!("standard input: {e}"))?;
            Ok(Input {
                path: path.clone(),
                header: reader.header.clone(),
                stdin: Some(reader),
            })
        })
        .collect()
}

/// The recordings in replay order, the consecutive parts of one split run
/// together: its parts are put in order (a shell's glob lists FILE.10
/// before FILE.2) where the run's first-given file was. Anything else keeps
/// the order given.
pub fn chains(inputs: Vec<Input>) -> Vec<Vec<Input>> {
    let mut first_at: HashMap<u64, usize> = HashMap::new();
    let mut keyed: Vec<((usize, u32, usize), Input)> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let key = match input.header.part {
                Some(p) => (*first_at.entry(p.run).or_insert(i), p.index, i),
                None => (i, 0, i),
            };
            (key, input)
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    let mut out: Vec<Vec<Input>> = Vec::new();
    for (_, input) in keyed {
        let prev = out
            .last()
            .and_then(|c| c.last())
            .and_then(|l| l.header.part);
        let joins = match (prev, input.header.part) {
            (Some(a), Some(b)) => a.run == b.run && b.index == a.index + 1,
            _ => false,
        };
        match out.last_mut() {
            Some(chain) if joins => chain.push(input),
            _ => out.push(vec![input]),
        }
    }
    out
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

/// Feeds one recording's events (a file, or the consecutive parts of one
/// run, as [`chains`] groups them) through a fresh tracker into `sink`, the
/// way `session::run` feeds live ones. Does not call `sink.finish`.
pub fn replay_chain(
    chain: &mut [Input],
    sink: &mut dyn Sink,
    merged: &mut MergedNames,
    ticks: Option<&ReplayTicks>,
) -> Result<Replayed> {
    let Some(first) = chain.first() else {
        bail!("no recording to replay");
    };
    let header = first.header.clone();
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
    let mut config = TrackerConfig::default();
    if let Some(ns) = header.reorder_window_ns {
        config.reorder_window_ns = ns;
    }
    // The merged table is this recording's for the replay, and back after it.
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
    let (mut records, mut cut_off) = (0, Vec::new());
    let mut replayed = Ok(());
    'files: for input in chain.iter_mut() {
        let name = input.name();
        let mut reader = match input.reader() {
            Ok(r) => r,
            Err(e) => {
                replayed = Err(e);
                break;
            }
        };
        // A later part names every mount named before it, and maybe more.
        for c in &reader.header.connections {
            merged.ids.adopt_for(&mut ids, c, &mut run.mounts);
        }
        loop {
            let rec = match reader.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(e) => {
                    replayed = Err(anyhow!("{name}: {e}"));
                    break 'files;
                }
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
                replayed = Err(e);
                break 'files;
            }
        }
        records += reader.records;
        if let Some(at) = reader.truncated_at() {
            cut_off.push((name, at, reader.records));
        }
    }
    let kernel = end.map(|c| recorded_counters(&c)).unwrap_or_default();
    let undecodable = end.map_or(0, |c| c.undecodable);
    let summary = replayed.and_then(|()| run.finish(sink, &kernel, undecodable, Counting::Events));
    if let (Ok(_), Some(t)) = (&summary, ticks) {
        // Close this recording's last, partial interval.
        t.clock.set(unix_ns(&header, run.watermark_ns()));
        run.tick(sink)?;
    }
    merged.names = std::mem::replace(&mut run.mounts, ConnectionTable::frozen([]));
    let summary = summary?;
    Ok(Replayed {
        header,
        summary,
        records,
        cut_off,
        ended: end.is_some(),
        last: chain.last().map(Input::name).unwrap_or_default(),
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
