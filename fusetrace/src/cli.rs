//! The tracing commands (`trace`, `stats`, `record`, `top`): each owns its
//! arguments and its `run`, as `report`, `daemon`, `load`, `demo`,
//! `diagnose`, `doctor` and `serve` do in their own modules. The flags
//! they share are `crate::flags::TracingFlags`; their doc comments are the
//! `--help` text.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};

use crate::{
    flags::{TracingFlags, exit_code},
    kernel::hooks::Backend,
    output::{
        accumulate::StatsOutput,
        by::{ByOpts, GroupedPrinter},
        export::{Clock, CsvOpts},
        file::{self, Force},
        print::{Format, StatsPrinter},
        trace::TraceSink,
    },
    pipeline::{
        aggregate, session,
        sink::{FanOut, Sink},
    },
    record::recorder::{self, Destination, Recorder, Rotation},
    units::{parse_bytes, parse_duration},
};

/// `fusetrace trace`: one line per finished request.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub flags: TracingFlags,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Only requests that took at least this long, send to end (e.g. 10ms;
    /// a bare number is seconds). Timed in the kernel: a faster request
    /// costs no ring buffer record. Its lines show every stage, the
    /// requester's pid and uid, but neither the requester's command name
    /// nor the daemon thread (COMM and DAEMON are `-`), and no FORGETs
    /// (never ended) or INTERRUPTs.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min: Option<Duration>,
}

impl TraceArgs {
    pub fn run(&self) -> Result<ExitCode> {
        let mut start = self.flags.start()?;
        let filter = &mut start.filter;
        let mut probes = match self.min {
            Some(min) => {
                if self.flags.backend == Some(Backend::Tracepoint) {
                    bail!(
                        "--min times requests in the kernel, which the plain tracepoints cannot (they carry no request pointer); use another --backend"
                    );
                }
                let mut options = self.flags.in_kernel(filter, true);
                if let Some(f) = options.aggregate.as_mut() {
                    f.whole_min_ns = Some(min.as_nanos().min(u64::MAX as u128) as u64);
                }
                // The kernel applied the requester filters at the send
                // (where the requester's name is known, which the records
                // do not carry).
                filter.pids.clear();
                filter.comms.clear();
                self.flags.attach_options(options, &start)?
            }
            None => self.flags.attach(false, &start)?,
        };
        let command = start.launch(&self.flags)?;
        let mut sink = TraceSink::new(
            std::io::BufWriter::new(std::io::stdout().lock()),
            self.format,
            session::monotonic_ns(),
        );
        session::run(
            &mut probes,
            &start.filter,
            &mut sink,
            &start.stop,
            Duration::from_millis(200),
        )?;
        drop(probes);
        exit_code(command)
    }
}

/// `fusetrace stats`: per-opcode latency statistics (or per file,
/// process, command or mount with `--by`).
#[derive(clap::Args, Debug, Clone)]
pub struct StatsArgs {
    #[command(flatten)]
    pub flags: TracingFlags,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Print a table for every interval (default 5s) as well as at
    /// exit; given with --csv, the CSV gets one block per interval.
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Split each request's latency into queue wait, daemon service and
    /// completion (the daemon-side hooks run too). Counted in the kernel
    /// like the whole latency, with no event per request.
    #[arg(long)]
    pub stages: bool,
    /// Join every request's events in user space instead of counting in
    /// the kernel (what `trace` and `top` do; it costs the traced file
    /// system more, and adds the background-wait and virtio-fs stages).
    #[arg(long)]
    pub from_events: bool,
    /// Also print log2 histograms of each opcode's latency per stage, in
    /// microseconds, as bpftrace's hist() draws them.
    #[arg(long)]
    pub hist: bool,
    #[command(flatten)]
    pub csv: CsvOpts,
    #[command(flatten)]
    pub force: Force,
    #[command(flatten)]
    pub by: ByOpts,
}

impl StatsArgs {
    pub fn run(&self) -> Result<ExitCode> {
        let flags = &self.flags;
        let mut start = flags.start()?;
        // Before attaching, so a bad --csv path fails first.
        let csv = self
            .csv
            .writer(self.interval.is_some(), Clock::Wall, self.force.force)?;
        let grouping = self.by.grouping(self.stages);
        // The kernel counts per (mount, opcode): a pid, comm or path key
        // needs each request's events.
        let by_events = grouping.as_ref().is_some_and(|g| !g.keys.in_kernel());
        if by_events && !self.from_events {
            log::info!(
                "--by {} counts from every request's events (as --from-events; costs the traced file system more than counting in the kernel)",
                grouping
                    .as_ref()
                    .map(|g| g.keys.to_string())
                    .unwrap_or_default()
            );
        }
        // The plain tracepoints carry no request pointer to key a
        // kernel-side table by: that backend splits stages or nothing.
        let in_kernel =
            !self.from_events && !by_events && flags.backend != Some(Backend::Tracepoint);
        let mut probes = if in_kernel {
            flags.attach_options(flags.in_kernel(&start.filter, self.stages), &start)?
        } else {
            flags.attach(false, &start)?
        };
        let command = start.launch(flags)?;
        let (filter, stop) = (&start.filter, &start.stop);
        let interval = self.interval.unwrap_or(Duration::from_secs(5));
        let stdout = std::io::stdout().lock();
        let mut sink: Box<dyn Sink> = match grouping {
            Some(g) => {
                Box::new(GroupedPrinter::new(stdout, self.format, true, g).with_clock(Clock::Wall))
            }
            None => Box::new(StatsOutput::printing(
                StatsPrinter::new(stdout, self.format, true)
                    .with_hist(self.hist)
                    .with_clock(Clock::Wall),
                csv,
            )),
        };
        if in_kernel {
            aggregate::run(&mut probes, self.stages, filter, &mut *sink, stop, interval)?;
        } else {
            session::run(&mut probes, filter, &mut *sink, stop, interval)?;
        }
        drop(probes);
        exit_code(command)
    }
}

/// `fusetrace record`: the decoded event stream to a file.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    #[command(flatten)]
    pub flags: TracingFlags,
    /// Format of the whole-run stats printed at exit (the recording itself
    /// is always fusetrace's own binary format).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// The recording file (see README: recording file format), created
    /// 0600. `-` writes the recording to standard output, for a pipe
    /// (`record -o - | ssh HOST 'cat > run.rec'`, `report -` reads it); the
    /// whole-run stats then go to standard error.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Go on in a new file before this one would grow past SIZE (e.g.
    /// 100M, 1G; at least 64K): FILE, then FILE.1, FILE.2... Each is a
    /// whole recording that `report` reads alone; given together, `report`
    /// joins them into the run they were.
    #[arg(long, value_name = "SIZE", value_parser = parse_max_size)]
    pub max_size: Option<u64>,
    /// With --max-size: keep only the newest N files, removing the oldest
    /// as a new one begins.
    #[arg(long, value_name = "N", requires = "max_size", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_files: Option<u32>,
    #[command(flatten)]
    pub force: Force,
    /// Also record applications' writes to FUSE files, for `diagnose --from`.
    #[arg(long)]
    pub app_writes: bool,
    /// At the end, also convert the recording to a Perfetto trace at this
    /// file (as `report FILE --perfetto OUT` does).
    #[arg(long, value_name = "OUT")]
    pub perfetto: Option<PathBuf>,
}

/// The smallest `--max-size`: a file holds its header and whole records,
/// and a tiny size would make a file per record.
const MIN_MAX_SIZE: u64 = 64 << 10;

fn parse_max_size(text: &str) -> std::result::Result<u64, String> {
    let n = parse_bytes(text)?;
    if n < MIN_MAX_SIZE {
        return Err(format!(
            "{text} is less than 64K, the smallest file size (a file holds its header and whole records)"
        ));
    }
    Ok(n)
}

impl RecordArgs {
    pub fn run(&self) -> Result<ExitCode> {
        let to_stdout = recorder::is_stdout(&self.output);
        if to_stdout && self.perfetto.is_some() {
            bail!(
                "--perfetto converts the recording file at the end, and -o - writes none: run `fusetrace report - --perfetto OUT` where the recording is read"
            );
        }
        let force = self.force.force;
        if let Some(out) = &self.perfetto {
            // Refused now rather than after the run.
            file::Target {
                path: out,
                what: "--perfetto",
                force,
            }
            .check()?;
        }
        let mut start = self.flags.start()?;
        let rotation = self.max_size.map(|max_size| Rotation {
            max_size,
            max_files: self.max_files.map(|n| n as usize),
        });
        let dest = Destination::open(&self.output, force, rotation)?;
        start.command_stdout_to_stderr = to_stdout;
        let mounts = recorder::current_fuse_mounts();
        let mut probes = match self.flags.attach(self.app_writes, &start) {
            Ok(p) => p,
            Err(e) => {
                dest.discard();
                return Err(e);
            }
        };
        let header = recorder::header_now(probes.describe(), &start.filter, &mounts);
        let mut recorder = Recorder::new(dest, &header)?;
        // With -o - standard output is the recording's.
        let out: Box<dyn std::io::Write> = if to_stdout {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout().lock())
        };
        let printer = StatsPrinter::new(out, self.format, false).with_clock(Clock::Wall);
        let mut stats = StatsOutput::printing(printer, None);
        let command = start.launch(&self.flags)?;
        // The recorder flushes every tick: a cut-off file loses at most 200 ms.
        session::run(
            &mut probes,
            &start.filter,
            &mut FanOut {
                sinks: vec![&mut recorder, &mut stats],
            },
            &start.stop,
            Duration::from_millis(200),
        )?;
        let files = recorder.files();
        drop(recorder);
        drop(probes);
        if let Some(out) = &self.perfetto {
            crate::record::report::to_perfetto(&files, out, force)?;
        }
        exit_code(command)
    }
}

/// `fusetrace top`: the live view. It draws a screen, so it takes no
/// `--format`.
#[derive(clap::Args, Debug, Clone)]
pub struct TopCommandArgs {
    #[command(flatten)]
    pub flags: TracingFlags,
    #[command(flatten)]
    pub top: crate::tui::TopArgs,
}

impl TopCommandArgs {
    pub fn run(&self) -> Result<ExitCode> {
        if !self.top.headless {
            // Before attaching: nothing to undo.
            crate::tui::require_terminal()?;
        }
        let mut options = self.top.options();
        // The plain tracepoints carry no request pointer to key the
        // kernel's tables by: that backend runs the event pipeline.
        if self.flags.backend == Some(Backend::Tracepoint) {
            options.events = true;
        }
        let mut start = self.flags.start()?;
        let mut probes = if options.events {
            self.flags.attach(false, &start)?
        } else {
            // Counted in the kernel as `stats --stages` counts (the
            // requester filters applied there), plus the slow requests
            // one by one.
            let mut kernel = self.flags.in_kernel(&start.filter, true);
            if let Some(f) = kernel.aggregate.as_mut() {
                f.records = true;
            }
            self.flags.attach_options(kernel, &start)?
        };
        let command = start.launch(&self.flags)?;
        crate::tui::run(&mut probes, &start.filter, &start.stop, &options)?;
        drop(probes);
        exit_code(command)
    }
}
