//! The tracing commands (`trace`, `stats`, `record`, `top`): each owns its
//! arguments and its `run`, as `report`, `daemon`, `load`, `demo`,
//! `diagnose` and `doctor` do in their own modules. The flags they share
//! are [`TracingFlags`]; their doc comments are the `--help` text.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use crate::{
    kernel::{
        hooks::Backend,
        probes::{KernelFilter, ProbeOptions, Probes},
    },
    output::{
        accumulate::StatsOutput,
        by::{ByOpts, GroupedPrinter},
        export::{Clock, CsvOpts},
        print::{Format, StatsPrinter, TraceSink},
        sink::{FanOut, Sink},
    },
    pipeline::{
        aggregate,
        connections::connection_of,
        opcode,
        session::{self, Filter, StopWhen},
    },
    record::recorder::{self, Recorder},
    units::parse_duration,
};

/// What every tracing command takes: which requests, for how long, how.
#[derive(clap::Args, Debug, Clone)]
pub struct TracingFlags {
    /// Only requests of the FUSE mount at this path (repeatable).
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<PathBuf>,
    /// Only requests made by this process or thread id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only this opcode, e.g. READ or LOOKUP (repeatable).
    #[arg(long = "op", value_name = "OPCODE", value_parser = opcode::parse)]
    pub ops: Vec<u32>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Force a probe backend instead of choosing per stage.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Read no file names: requests show `node N` instead of their path
    /// (for names that must not leave the machine, or the last bit of
    /// cost on a name-heavy load).
    #[arg(long)]
    pub no_paths: bool,
}

impl TracingFlags {
    pub(crate) fn filter(&self) -> Result<Filter> {
        Ok(Filter {
            connections: self
                .mounts
                .iter()
                .map(|m| connection_of(m))
                .collect::<Result<_>>()?,
            pid: self.pid,
            opcodes: self.ops.clone(),
            ..Filter::default()
        })
    }

    /// Options for counting in the kernel (`stats`, `serve`): `filter`'s
    /// pid and mounts applied there, the stages too with `stages`.
    pub(crate) fn in_kernel(&self, filter: &Filter, stages: bool) -> ProbeOptions {
        ProbeOptions {
            backend: self.backend,
            aggregate: Some(KernelFilter {
                pid: filter.pid,
                connections: filter.connections.clone(),
                stages,
            }),
            ..ProbeOptions::default()
        }
    }

    /// Attaches the event pipeline's hooks (`app_writes`: also
    /// applications' writes to FUSE files, for diagnose).
    fn attach(&self, app_writes: bool) -> Result<Probes> {
        self.attach_options(ProbeOptions {
            backend: self.backend,
            diagnose: app_writes,
            no_paths: self.no_paths,
            ..ProbeOptions::default()
        })
    }

    fn attach_options(&self, options: ProbeOptions) -> Result<Probes> {
        let probes = Probes::attach(&options)?;
        // Tests and scripts wait for this line before starting load.
        eprintln!(
            "fusetrace: tracing ({}); Ctrl-C to stop",
            probes.describe().join("; ")
        );
        Ok(probes)
    }
}

/// `fusetrace trace`: one line per finished request.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub flags: TracingFlags,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

impl TraceArgs {
    pub fn run(&self) -> Result<()> {
        let filter = self.flags.filter()?;
        let stop = StopWhen::on_signals(self.flags.duration)?;
        let mut probes = self.flags.attach(false)?;
        let mut sink = TraceSink::new(
            std::io::BufWriter::new(std::io::stdout().lock()),
            self.format,
            session::monotonic_ns(),
        );
        session::run(
            &mut probes,
            &filter,
            &mut sink,
            &stop,
            Duration::from_millis(200),
        )?;
        Ok(())
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
    pub by: ByOpts,
}

impl StatsArgs {
    pub fn run(&self) -> Result<()> {
        let flags = &self.flags;
        let filter = flags.filter()?;
        let stop = StopWhen::on_signals(flags.duration)?;
        // Before attaching, so a bad --csv path fails first.
        let csv = self.csv.writer(self.interval.is_some(), Clock::Wall)?;
        let grouping = self.by.grouping(self.stages);
        // The kernel counts per (mount, opcode): a pid, comm or path key
        // needs each request's events.
        let by_events = grouping.as_ref().is_some_and(|g| !g.keys.in_kernel());
        if by_events && !self.from_events {
            eprintln!(
                "fusetrace: --by {} counts from every request's events (as --from-events; costs the traced file system more than counting in the kernel)",
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
            flags.attach_options(flags.in_kernel(&filter, self.stages))?
        } else {
            flags.attach(false)?
        };
        let interval = self.interval.unwrap_or(Duration::from_secs(5));
        let stdout = std::io::stdout().lock();
        let mut sink: Box<dyn Sink> = match grouping {
            Some(g) => Box::new(GroupedPrinter::new(stdout, self.format, true, g)),
            None => Box::new(StatsOutput::printing(
                StatsPrinter::new(stdout, self.format, true).with_hist(self.hist),
                csv,
            )),
        };
        if in_kernel {
            aggregate::run(
                &mut probes,
                self.stages,
                &filter.connections,
                &filter.opcodes,
                &mut *sink,
                &stop,
                interval,
            )?;
        } else {
            session::run(&mut probes, &filter, &mut *sink, &stop, interval)?;
        }
        Ok(())
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
    /// The recording file (see README: recording file format).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Also record applications' writes to FUSE files, for `diagnose --from`.
    #[arg(long)]
    pub app_writes: bool,
    /// At the end, also convert the recording to a Perfetto trace at this
    /// file (as `report FILE --perfetto OUT` does).
    #[arg(long, value_name = "OUT")]
    pub perfetto: Option<PathBuf>,
}

impl RecordArgs {
    pub fn run(&self) -> Result<()> {
        let filter = self.flags.filter()?;
        let stop = StopWhen::on_signals(self.flags.duration)?;
        let file = recorder::create_file(&self.output)?;
        let mounts = recorder::current_fuse_mounts();
        let mut probes = self.flags.attach(self.app_writes).inspect_err(|_| {
            let _ = std::fs::remove_file(&self.output);
        })?;
        let header = recorder::header_now(probes.describe(), &filter, &mounts);
        let mut recorder = Recorder::new(file, &self.output, &header)?;
        let printer = StatsPrinter::new(std::io::stdout().lock(), self.format, false);
        let mut stats = StatsOutput::printing(printer, None);
        // The recorder flushes every tick: a cut-off file loses at most 200 ms.
        session::run(
            &mut probes,
            &filter,
            &mut FanOut {
                sinks: vec![&mut recorder, &mut stats],
            },
            &stop,
            Duration::from_millis(200),
        )?;
        drop(recorder);
        if let Some(out) = &self.perfetto {
            crate::record::report::to_perfetto(std::slice::from_ref(&self.output), out)?;
        }
        Ok(())
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
    pub fn run(&self) -> Result<()> {
        if !self.top.headless {
            // Before attaching: nothing to undo.
            crate::tui::require_terminal()?;
        }
        let filter = self.flags.filter()?;
        let stop = StopWhen::on_signals(self.flags.duration)?;
        let mut probes = self.flags.attach(false)?;
        crate::tui::run(&mut probes, &filter, &stop, &self.top.options()).map(drop)
    }
}
