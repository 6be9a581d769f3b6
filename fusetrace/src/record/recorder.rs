//! The recorder: a sink that writes every decoded event (and the idle clock
//! advances) to a recording file, or to standard output (`-o -`), and with
//! `--max-size` goes on in a new file (`FILE.1`, `FILE.2`...) each time
//! the current one is full, as `perf record --switch-output` does. Every
//! file is a whole recording (its own header, naming every mount named so
//! far); `report` joins the parts of one run again (format.rs, `Part`).

use std::{
    collections::{HashSet, VecDeque},
    fs::File,
    hash::{BuildHasher, RandomState},
    io::{BufWriter, IsTerminal},
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use fusetrace_common::FuseEvent;

use super::format::{
    ConnectionInfo, EndCounters, Header, MAX_EVENT_RECORD, MAX_SMALL_RECORD, Part, Record,
    RecordedFilter, Writer, connection_record_len,
};
use crate::kernel::decode::FileNames;
use crate::{
    output::file::{Target, create_in_place},
    pipeline::connections::{ConnectionTable, MountEntry, fuse_mounts},
    pipeline::session::monotonic_ns,
    pipeline::sink::Sink,
    pipeline::{filter::Filter, summary::RunSummary},
    pipeline::{lifecycle::RequestLifecycle, tracker::TrackerConfig},
    units::format_bytes,
};

/// How messages name a recording's file.
const WHAT: &str = "recording";

/// `-o -`: the recording goes to standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// `--max-size` and `--max-files`.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_size: u64,
    /// Keep only this many files, the newest (older ones are removed).
    pub max_files: Option<usize>,
}

/// Where a recording goes, opened before the probes are attached so that
/// a bad path fails first.
pub struct Destination {
    file: File,
    /// The file's path; `-` for standard output.
    path: PathBuf,
    force: bool,
    rotation: Option<Rotation>,
}

/// `FILE.N`, the file of part `index` (`FILE` itself for the first).
pub fn part_path(base: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return base.to_path_buf();
    }
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The files `FILE.N` next to `base` (parts of an earlier recording).
fn parts_on_disk(base: &Path) -> Result<Vec<PathBuf>> {
    let Some(name) = base.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(Vec::new());
    };
    let dir = match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // The create names the missing directory.
        Err(_) => return Ok(Vec::new()),
    };
    let mut parts: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let index = n.strip_prefix(&name)?.strip_prefix('.')?;
            (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Some((index.parse().ok()?, dir.join(&n))))?
        })
        .collect();
    parts.sort();
    Ok(parts.into_iter().map(|(_, p)| p).collect())
}

impl Destination {
    /// Opens the recording's (first) file, or checks standard output.
    pub fn open(path: &Path, force: bool, rotation: Option<Rotation>) -> Result<Destination> {
        if is_stdout(path) {
            if rotation.is_some() {
                bail!("-o - writes one stream: --max-size needs a file name");
            }
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!(
                    "-o -: standard output is a terminal; pipe the recording on, e.g. fusetrace record -o - | ssh HOST 'cat > run.rec'"
                );
            }
            // A descriptor of its own: written unbuffered by std's line
            // buffer, and the same pipe.
            let fd = stdout
                .as_fd()
                .try_clone_to_owned()
                .context("-o -: cannot use standard output")?;
            return Ok(Destination {
                file: File::from(fd),
                path: path.to_path_buf(),
                force,
                rotation,
            });
        }
        if rotation.is_some() {
            // Parts of an earlier run would be taken for this run's.
            let stale = parts_on_disk(path)?;
            if let Some(first) = stale.first() {
                for p in &stale {
                    let target = Target {
                        path: p,
                        what: WHAT,
                        force,
                    };
                    target
                        .check()
                        .map_err(|e| anyhow::anyhow!("{e:#} (a part of an earlier recording)"))?;
                }
                for p in &stale {
                    std::fs::remove_file(p)
                        .with_context(|| format!("cannot replace {WHAT} {}", p.display()))?;
                }
                log::info!(
                    "removed {} of an earlier recording ({}; --force)",
                    match stale.len() {
                        1 => "1 file".to_string(),
                        n => format!("{n} files"),
                    },
                    match stale.last() {
                        Some(last) if stale.len() > 1 =>
                            format!("{} to {}", first.display(), last.display()),
                        _ => first.display().to_string(),
                    }
                );
            }
        }
        let file = create_in_place(Target {
            path,
            what: WHAT,
            force,
        })?;
        Ok(Destination {
            file,
            path: path.to_path_buf(),
            force,
            rotation,
        })
    }

    /// Removes the file again (the run failed before it began).
    pub fn discard(self) {
        if !is_stdout(&self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn info(m: &MountEntry) -> ConnectionInfo {
    ConnectionInfo {
        connection: m.connection,
        mount_point: m.mount_point.display().to_string(),
        fs_type: m.fs_type.clone(),
    }
}

pub fn current_fuse_mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| fuse_mounts(&t))
        .unwrap_or_default()
}

/// The header of a recording starting now. `mounts` are the FUSE mounts
/// read *before* the probes were attached: a mount unmounted right after
/// (its requests already in the ring buffer) must still be named, and one
/// mounted in between is named at its first event.
pub fn header_now(hooks: Vec<String>, filter: &Filter, mounts: &[MountEntry]) -> Header {
    let start_unix_ns = unix_now_ns();
    Header {
        fusetrace_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: crate::kernel::release().unwrap_or_default(),
        hooks,
        start_monotonic_ns: monotonic_ns(),
        start_unix_ns,
        connections: mounts.iter().map(info).collect(),
        filter: RecordedFilter {
            connections: filter.connections.clone(),
            pid: filter
                .pids
                .first()
                .copied()
                .filter(|_| filter.pids.len() == 1),
            pids: filter.pids.clone(),
            comms: filter.comms.iter().map(|c| c.to_string()).collect(),
            opcodes: filter.opcodes.clone(),
        },
        reorder_window_ns: Some(TrackerConfig::default().reorder_window_ns),
        part: None,
        fuse_io_uring: Some(crate::kernel::uring_offer::UringOffer::read()),
    }
}

/// `fusetrace record`'s sink.
pub struct Recorder {
    writer: Writer<BufWriter<File>>,
    /// The current file, or `-`.
    path: PathBuf,
    force: bool,
    rotating: Option<Rotating>,
    /// Connections the file names (header or connection record).
    named: HashSet<u32>,
    /// Every connection named so far, in order: the next part's header.
    infos: Vec<ConnectionInfo>,
    /// Connections seen in events that mountinfo did not know yet.
    unnamed: HashSet<u32>,
    /// Consecutive idle advances collapse into the last one: advancing to
    /// t1 then t2 with no event between finishes the same requests as
    /// advancing to t2.
    pending_idle: Option<u64>,
}

/// A recording split into parts.
struct Rotating {
    limits: Rotation,
    /// The first file's path; the others add `.N`.
    base: PathBuf,
    /// The first part's header, the model of the others'.
    header: Header,
    next_index: u32,
    /// The parts on disk, oldest first.
    files: VecDeque<PathBuf>,
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Recorder {
    pub fn new(dest: Destination, header: &Header) -> Result<Recorder> {
        let mut header = header.clone();
        let rotating = dest.rotation.map(|limits| {
            let run = RandomState::new().hash_one((unix_now_ns(), std::process::id()));
            header.part = Some(Part { run, index: 0 });
            log::info!(
                "recording to {}, then {}, {}... from each --max-size {}",
                dest.path.display(),
                part_path(&dest.path, 1).display(),
                part_path(&dest.path, 2).display(),
                format_bytes(limits.max_size)
            );
            Rotating {
                limits,
                base: dest.path.clone(),
                header: header.clone(),
                next_index: 1,
                files: VecDeque::from([dest.path.clone()]),
            }
        });
        let writer = Writer::new(BufWriter::with_capacity(1 << 16, dest.file), &header)
            .with_context(|| format!("cannot write recording {}", dest.path.display()))?;
        Ok(Recorder {
            writer,
            path: dest.path,
            force: dest.force,
            rotating,
            named: header.connections.iter().map(|c| c.connection).collect(),
            infos: header.connections.clone(),
            unnamed: HashSet::new(),
            pending_idle: None,
        })
    }

    /// The recording's files on disk, in order (none for `-o -`).
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.rotating {
            Some(r) => r.files.iter().cloned().collect(),
            None if is_stdout(&self.path) => Vec::new(),
            None => vec![self.path.clone()],
        }
    }

    fn context(&self) -> String {
        if is_stdout(&self.path) {
            "cannot write recording to standard output".to_string()
        } else {
            format!("cannot write recording {}", self.path.display())
        }
    }

    /// With `--max-size`: starts the next file first when a record of at
    /// most `bound` bytes would not fit in this one (which holds one record
    /// at least, so that a file is never left empty).
    fn room(&mut self, bound: u64) -> Result<()> {
        match &self.rotating {
            Some(r)
                if self.writer.records() > 0
                    && self.writer.written() + bound > r.limits.max_size =>
            {
                self.rotate()
            }
            _ => Ok(()),
        }
    }

    fn rotate(&mut self) -> Result<()> {
        let Some(r) = self.rotating.as_mut() else {
            return Ok(());
        };
        let next = part_path(&r.base, r.next_index);
        let file = create_in_place(Target {
            path: &next,
            what: WHAT,
            force: self.force,
        })?;
        let mut header = r.header.clone();
        header.start_monotonic_ns = monotonic_ns();
        header.start_unix_ns = unix_now_ns();
        header.connections = self.infos.clone();
        header.part = header.part.map(|p| Part {
            index: r.next_index,
            ..p
        });
        let old = self
            .writer
            .restart(BufWriter::with_capacity(1 << 16, file), &header)
            .with_context(|| format!("cannot write recording {}", next.display()))?;
        let done = std::mem::replace(&mut self.path, next.clone());
        // Written out, not synced: an fsync per file on the thread that
        // drains the ring buffer cost 190 000 drops in a 2 s load split
        // into 64K files. The last file is synced at the end.
        old.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write recording {}", done.display()))?;
        r.next_index += 1;
        r.files.push_back(next.clone());
        let mut removed = Vec::new();
        while r.limits.max_files.is_some_and(|n| r.files.len() > n) {
            let Some(oldest) = r.files.pop_front() else {
                break;
            };
            std::fs::remove_file(&oldest)
                .with_context(|| format!("--max-files: cannot remove {}", oldest.display()))?;
            removed.push(oldest.display().to_string());
        }
        log::info!(
            "recording to {} ({} reached --max-size {}){}",
            next.display(),
            done.display(),
            format_bytes(r.limits.max_size),
            if removed.is_empty() {
                String::new()
            } else {
                format!("; removed {} (--max-files)", removed.join(", "))
            }
        );
        Ok(())
    }

    fn write(&mut self, rec: &Record) -> Result<()> {
        self.room(match rec {
            Record::Event(..) => MAX_EVENT_RECORD,
            Record::Connection(c) => connection_record_len(c),
            Record::Idle { .. } | Record::End(_) => MAX_SMALL_RECORD,
        })?;
        let context = self.context();
        self.writer.write(rec).context(context)
    }

    fn write_pending_idle(&mut self) -> Result<()> {
        if let Some(now_ns) = self.pending_idle.take() {
            self.write(&Record::Idle { now_ns })?;
        }
        Ok(())
    }

    /// Writes connection records for the mounts of `wanted` that mountinfo knows now.
    fn name_connections(&mut self, wanted: &[u32]) -> Result<()> {
        for m in current_fuse_mounts() {
            if wanted.contains(&m.connection) && self.named.insert(m.connection) {
                self.unnamed.remove(&m.connection);
                let c = info(&m);
                self.write(&Record::Connection(c.clone()))?;
                self.infos.push(c);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let context = self.context();
        self.writer.flush().context(context)
    }
}

impl Sink for Recorder {
    fn request(&mut self, _rec: &RequestLifecycle, _mounts: &mut ConnectionTable) -> Result<()> {
        Ok(())
    }

    fn event(&mut self, ev: &FuseEvent, names: Option<&FileNames>) -> Result<()> {
        self.write_pending_idle()?;
        if !self.named.contains(&ev.connection) && self.unnamed.insert(ev.connection) {
            // A mount that appeared after the start: name it before its first event.
            self.name_connections(&[ev.connection])?;
        }
        self.room(MAX_EVENT_RECORD)?;
        let context = self.context();
        self.writer.write_event(ev, names).context(context)
    }

    fn idle(&mut self, now_ns: u64) -> Result<()> {
        self.pending_idle = Some(now_ns);
        Ok(())
    }

    /// Flushes about every tick, so a cut-off file loses at most a tick
    /// (and a pipe reader gets the stream as it comes).
    fn tick(&mut self, _mounts: &mut ConnectionTable) -> Result<()> {
        self.write_pending_idle()?;
        self.flush()
    }

    fn finish(&mut self, summary: &RunSummary, _mounts: &mut ConnectionTable) -> Result<()> {
        self.write_pending_idle()?;
        let unnamed: Vec<u32> = self.unnamed.iter().copied().collect();
        self.name_connections(&unnamed)?;
        self.write(&Record::End(EndCounters {
            ring_drops: summary.ring_drops,
            read_faults: summary.read_faults,
            splice_transfers: summary.splice_transfers,
            undecodable: summary.undecodable,
            takes_unresolved: summary.takes_unresolved,
        }))?;
        self.flush()?;
        if is_stdout(&self.path) {
            // A pipe has nothing to sync.
            return Ok(());
        }
        let context = self.context();
        self.writer.get_mut().get_ref().sync_data().context(context)
    }
}
