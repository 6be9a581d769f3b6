//! The recorder: a sink that writes every decoded event (and the idle clock
//! advances) to a recording file.

use std::{
    collections::HashSet,
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use fusetrace_common::FuseEvent;

use super::format::{ConnectionInfo, EndCounters, Header, Record, RecordedFilter, Writer};
use crate::kernel::decode::FileNames;
use crate::{
    pipeline::connections::{ConnectionTable, MountEntry, fuse_mounts},
    pipeline::session::monotonic_ns,
    pipeline::sink::Sink,
    pipeline::{filter::Filter, summary::RunSummary},
    pipeline::{lifecycle::RequestLifecycle, tracker::TrackerConfig},
};

/// Creates the recording file before probes are attached, so a bad path
/// fails first.
pub fn create_file(path: &Path) -> Result<File> {
    if path.is_dir() {
        anyhow::bail!(
            "cannot record to {}: it is a directory; give a file name, e.g. {}/run.trace",
            path.display(),
            path.display()
        );
    }
    File::create(path).with_context(|| format!("cannot create recording {}", path.display()))
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
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
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
    }
}

/// `fusetrace record`'s sink.
pub struct Recorder {
    writer: Writer<BufWriter<File>>,
    path: PathBuf,
    /// Connections the file names (header or connection record).
    named: HashSet<u32>,
    /// Connections seen in events that mountinfo did not know yet.
    unnamed: HashSet<u32>,
    /// Consecutive idle advances collapse into the last one: advancing to
    /// t1 then t2 with no event between finishes the same requests as
    /// advancing to t2.
    pending_idle: Option<u64>,
}

impl Recorder {
    pub fn new(file: File, path: &Path, header: &Header) -> Result<Recorder> {
        let writer = Writer::new(BufWriter::with_capacity(1 << 16, file), header)
            .with_context(|| format!("cannot write recording {}", path.display()))?;
        Ok(Recorder {
            writer,
            path: path.to_path_buf(),
            named: header.connections.iter().map(|c| c.connection).collect(),
            unnamed: HashSet::new(),
            pending_idle: None,
        })
    }

    fn write(&mut self, rec: &Record) -> Result<()> {
        self.writer
            .write(rec)
            .with_context(|| format!("cannot write recording {}", self.path.display()))
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
                self.write(&Record::Connection(info(&m)))?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .with_context(|| format!("cannot write recording {}", self.path.display()))
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
        self.writer
            .write_event(ev, names)
            .with_context(|| format!("cannot write recording {}", self.path.display()))
    }

    fn idle(&mut self, now_ns: u64) -> Result<()> {
        self.pending_idle = Some(now_ns);
        Ok(())
    }

    /// Flushes about every tick, so a cut-off file loses at most a tick.
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
        self.writer
            .get_mut()
            .get_ref()
            .sync_data()
            .with_context(|| format!("cannot write recording {}", self.path.display()))
    }
}
