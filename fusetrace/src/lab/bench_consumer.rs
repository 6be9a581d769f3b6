//! `fusetrace bench-consumer` (hidden): how many events per second the
//! user-space half of the pipeline digests on one core.
//!
//! Events are laid out in memory as ring buffer records (the bytes the
//! kernel writes), then pushed through the same code a live run uses:
//! [`decode::decode`], the run loop's steps ([`Run`]) and a
//! sink ([`StatsOutput`] with a [`StatsPrinter`] as `fusetrace stats` builds it, or [`TraceSink`]
//! writing text or JSON lines to nowhere). Only the ring buffer itself and the kernel are
//! left out; `cargo xtask bench` measures those on real mounts.

use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FuseEvent};
use serde::Serialize;

use crate::{
    kernel::{decode, probes::KernelCounters},
    output::accumulate::StatsOutput,
    output::print::{Format, StatsPrinter},
    output::trace::TraceSink,
    pipeline::{
        connections::{ConnectionTable, MountEntry},
        filter::Filter,
        lifecycle::RequestLifecycle,
        run::Run,
        sink::Sink,
        summary::Counting,
        tracker::TrackerConfig,
    },
    record::{format::Record, replay},
};

/// Which sink finished requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSink {
    /// Per-opcode histograms, as `fusetrace stats`.
    Stats,
    /// One text line per request, written to nowhere, as `fusetrace trace > /dev/null`.
    Trace,
    /// One JSON object per request, as `fusetrace trace --format json > /dev/null`.
    TraceJson,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchConsumerArgs {
    /// Events to push through the pipeline (synthetic, or the recording
    /// replayed as often as needed).
    #[arg(long, default_value_t = 8_000_000)]
    pub events: u64,
    /// Replay the events of this recording (`fusetrace record`) instead of
    /// synthetic ones.
    #[arg(long, value_name = "FILE")]
    pub recording: Option<PathBuf>,
    /// Where finished requests go.
    #[arg(long, value_enum, default_value = "stats")]
    pub sink: BenchSink,
    /// Timed repetitions; the best and the median are reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: u32,
    /// Pin the benchmark to this CPU.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// What one benchmark run measured.
#[derive(Debug, Serialize)]
pub struct ConsumerReport {
    pub source: String,
    pub sink: String,
    pub events: u64,
    pub requests: u64,
    /// Median and best of the repetitions.
    pub median_events_per_sec: f64,
    pub best_events_per_sec: f64,
    pub ns_per_event: f64,
    /// Bytes of one request's record (each request in flight holds one).
    pub record_bytes: usize,
}

/// Bytes of one ring buffer record: a `FuseEvent` as the kernel writes it.
fn record_bytes(ev: &FuseEvent) -> [u8; std::mem::size_of::<FuseEvent>()] {
    // SAFETY: FuseEvent is plain old data; copying its bytes is what the
    // kernel side does when it writes the record.
    unsafe { std::mem::transmute_copy(ev) }
}

/// A metadata-storm-like stream: requests of a few opcodes from two
/// requesters, four stages each, with a few requests in flight at once
/// (their events interleave as they do on two CPUs).
fn synthetic(events: u64) -> Vec<FuseEvent> {
    const CONN: u32 = 52;
    const IN_FLIGHT: u64 = 4;
    // LOOKUP, GETATTR twice, READ.
    let ops = [1, 3, 3, 15];
    let requests = events.div_ceil(4);
    let mut out = Vec::with_capacity((requests * 4) as usize);
    let mut ts = 1_000_000_000u64;
    let mut unique = 2u64;
    let base = |kind: EventKind, unique: u64, op: u32, ts: u64, tid: u32| FuseEvent {
        kind: kind as u8,
        flags: FLAG_HAS_HEADER,
        connection: CONN,
        unique,
        opcode: op,
        nodeid: unique % 17 + 1,
        ts_ns: ts,
        tgid: tid,
        tid,
        req_pid: 4000 + (unique % 2) as u32,
        comm: *b"load\0\0\0\0\0\0\0\0\0\0\0\0",
        len: 64,
        ..FuseEvent::default()
    };
    let mut left = requests;
    while left > 0 {
        let batch = left.min(IN_FLIGHT);
        let group: Vec<(u64, u32)> = (0..batch)
            .map(|i| (unique + 2 * i, ops[((unique / 2 + i) % 4) as usize]))
            .collect();
        unique += 2 * batch;
        left -= batch;
        for (stage, kind) in [
            EventKind::Sent,
            EventKind::Taken,
            EventKind::Replied,
            EventKind::Ended,
        ]
        .into_iter()
        .enumerate()
        {
            for &(u, op) in &group {
                ts += 700;
                let requester = 4000 + (u % 2) as u32;
                let daemon = 3000 + (u % 2) as u32;
                let tid = if stage == 0 { requester } else { daemon };
                let mut ev = base(kind, u, op, ts, tid);
                if kind == EventKind::Replied {
                    ev.flags = 0;
                    ev.opcode = 0;
                }
                out.push(ev);
            }
        }
    }
    out
}

/// The events of a recording, repeated (with shifted ids and times) until
/// there are `events` of them.
fn from_recording(path: &std::path::Path, events: u64) -> Result<Vec<FuseEvent>> {
    let mut reader = replay::open(path)?;
    let mut once = Vec::new();
    while let Some(rec) = reader
        .next_record()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    {
        if let Record::Event(ev, _) = rec {
            once.push(ev);
        }
    }
    if once.is_empty() {
        bail!("{} holds no events to replay", path.display());
    }
    let first = once.iter().map(|e| e.ts_ns).min().unwrap_or(0);
    let last = once.iter().map(|e| e.ts_ns).max().unwrap_or(0);
    let span = last - first + 1_000_000_000;
    let max_unique = once.iter().map(|e| e.unique).max().unwrap_or(0);
    // Keep the interrupt bit (bit 0) of ids intact: shift by an even amount.
    let id_shift = (max_unique + 2) & !1;
    let mut out = Vec::with_capacity(events as usize);
    let mut round = 0u64;
    while (out.len() as u64) < events {
        for ev in &once {
            let mut ev = *ev;
            ev.ts_ns += round * span;
            if ev.unique != 0 {
                ev.unique += round * id_shift;
            }
            out.push(ev);
        }
        round += 1;
    }
    out.truncate(events as usize);
    Ok(out)
}

/// Pins the calling thread to `cpu`, so "one core" means one core.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin to CPU {cpu}: {}; pick one of this machine's CPUs with --cpu",
                io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// One pass: every record through decode, tracker, report and the sink.
fn pass(
    records: &[u8],
    record_len: usize,
    connections: &[u32],
    sink: &mut dyn Sink,
) -> Result<(Duration, u64)> {
    // Every connection named, as a live run's mounts are: an unknown
    // connection makes the table re-read mountinfo on every lookup.
    let mounts = ConnectionTable::frozen(connections.iter().map(|&c| MountEntry {
        mount_id: 0,
        connection: c,
        mount_point: PathBuf::from(format!("/tmp/bench-{c}")),
        fs_type: "fuse.bench".into(),
        source: "bench".into(),
    }));
    let mut run = Run::new(Filter::default(), mounts, TrackerConfig::default());
    let started = Instant::now();
    for (i, bytes) in records.chunks_exact(record_len).enumerate() {
        if let Some(ev) = decode::decode(bytes) {
            run.event(&ev, decode::names(bytes, &ev), sink)?;
        }
        // The live loop reports after every ring buffer drain; drains
        // hold a few hundred events when the consumer is busy.
        if i % 256 == 255 {
            run.report(sink)?;
        }
    }
    let summary = run.finish(sink, &KernelCounters::default(), 0, Counting::Events)?;
    Ok((started.elapsed(), summary.requests))
}

pub fn run(args: &BenchConsumerArgs) -> Result<ConsumerReport> {
    if args.events == 0 || args.repeat == 0 {
        bail!("--events and --repeat must be at least 1");
    }
    let (source, events) = match &args.recording {
        Some(path) => (
            format!("recording {}", path.display()),
            from_recording(path, args.events)?,
        ),
        None => ("synthetic".to_string(), synthetic(args.events)),
    };
    let mut connections: Vec<u32> = events.iter().map(|e| e.connection).collect();
    connections.sort_unstable();
    connections.dedup();
    let record_len = std::mem::size_of::<FuseEvent>();
    let records: Vec<u8> = events.iter().flat_map(record_bytes).collect();
    drop(events);
    pin_to(args.cpu)?;
    let mut rates = Vec::new();
    let mut requests = 0;
    for _ in 0..args.repeat {
        let (elapsed, n) = match args.sink {
            BenchSink::Stats => {
                let printer = StatsPrinter::new(io::sink(), Format::Text, true);
                let mut sink = StatsOutput::printing(printer, None);
                pass(&records, record_len, &connections, &mut sink)?
            }
            BenchSink::Trace | BenchSink::TraceJson => {
                let format = match args.sink {
                    BenchSink::TraceJson => Format::Json,
                    _ => Format::Text,
                };
                let mut sink = TraceSink::new(io::BufWriter::new(io::sink()), format, 0);
                pass(&records, record_len, &connections, &mut sink)?
            }
        };
        requests = n;
        let events = (records.len() / record_len) as f64;
        rates.push(events / elapsed.as_secs_f64().max(1e-9));
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    Ok(ConsumerReport {
        source,
        sink: args
            .sink
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string()),
        events: (records.len() / record_len) as u64,
        requests,
        median_events_per_sec: median,
        best_events_per_sec: *rates.last().unwrap(),
        ns_per_event: 1e9 / median,
        record_bytes: std::mem::size_of::<RequestLifecycle>(),
    })
}

/// Runs the benchmark and prints its report.
pub fn main(args: &BenchConsumerArgs) -> Result<()> {
    let report = run(args).context("consumer benchmark")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench-consumer: {} events ({} requests, {}) into {}: {:.2} M events/s median, {:.2} M best, {:.0} ns/event, one core",
            report.events,
            report.requests,
            report.source,
            report.sink,
            report.median_events_per_sec / 1e6,
            report.best_events_per_sec / 1e6,
            report.ns_per_event
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_stream_makes_whole_requests() {
        let args = BenchConsumerArgs {
            events: 4_000,
            recording: None,
            sink: BenchSink::Stats,
            repeat: 1,
            cpu: 0,
            json: false,
        };
        let report = run(&args).unwrap();
        assert_eq!(report.events, 4_000);
        assert_eq!(report.requests, 1_000, "every request finishes once");
        assert!(report.median_events_per_sec > 0.0);
    }
}
