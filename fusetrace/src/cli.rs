//! The tracing commands (`trace`, `stats`, `record`, `top`): each owns its
//! arguments and its `run`, as `report`, `daemon`, `load`, `demo`,
//! `diagnose` and `doctor` do in their own modules. The flags they share
//! are [`TracingFlags`]; their doc comments are the `--help` text.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};

use crate::{
    kernel::{
        hooks::{Backend, DaemonSide},
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
        command::{CommandCgroup, RunningCommand},
        connections::{MountEntry, fuse_mount_at},
        lifecycle::Comm,
        opcode,
        session::{self, CommandRequests, Filter, StopWhen},
    },
    record::recorder::{self, Recorder},
    units::parse_duration,
};

/// A `--comm` name as the kernel would keep it.
fn parse_comm(name: &str) -> std::result::Result<Comm, String> {
    if name.is_empty() {
        return Err("a command name is not empty".into());
    }
    Ok(Comm::truncated(name))
}

/// What every tracing command takes: which requests, for how long, how.
#[derive(clap::Args, Debug, Clone)]
pub struct TracingFlags {
    /// Only requests of the FUSE mount at this path (repeatable).
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<PathBuf>,
    /// Only requests made by this process or thread id (repeatable:
    /// -p 1 -p 2). Counting in the kernel (stats, serve, trace --min)
    /// takes at most 8.
    #[arg(short = 'p', long = "pid", value_name = "PID",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Only requests whose requester's command name is NAME (repeatable).
    /// The kernel keeps 15 bytes of a name: a longer NAME is compared
    /// truncated to those. Only requests the requester sent itself carry
    /// its name: a background request sent from another context (pages
    /// written back by a flusher) is left out. Counting in the kernel
    /// (stats, serve, trace --min) takes at most 8.
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<Comm>,
    /// Only this opcode, e.g. READ or LOOKUP (repeatable).
    #[arg(long = "op", value_name = "OPCODE", value_parser = opcode::parse)]
    pub ops: Vec<u32>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Force a probe backend instead of choosing per stage.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Where to see the daemon take and answer requests (default: in the
    /// kernel where it has kprobes or fentry, else at its syscalls).
    #[arg(long, value_enum, value_name = "WHERE")]
    pub daemon_side: Option<DaemonSide>,
    /// Read no file names: requests show `node N` instead of their path
    /// (for names that must not leave the machine, or the last bit of
    /// cost on a name-heavy load).
    #[arg(long)]
    pub no_paths: bool,
    /// Run CMD ARGS... and trace only its requests (its children's too),
    /// from its start to its exit; then exit with its exit status (128+N
    /// when signal N killed it). Everything after -c is the command
    /// (`-c ls -l /mnt`, or `-c -- CMD ...`): give the options before it.
    /// It runs in a cgroup v2 of its own, made under fusetrace's and
    /// removed at the end; only requests its processes send are its (not
    /// pages a flusher writes back for it). Needs cgroup v2. Ctrl-C or
    /// SIGTERM stops the command too.
    #[arg(
        short = 'c',
        long = "command",
        requires = "argv",
        conflicts_with = "duration"
    )]
    pub command: bool,
    /// The command -c runs, and its arguments.
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        requires = "command"
    )]
    pub argv: Vec<String>,
}

/// A run's start: its filter, when it stops, and `-c`'s cgroup (made
/// before the probes load: its id goes into them).
pub(crate) struct Start {
    pub filter: Filter,
    pub stop: StopWhen,
    cgroup: Option<CommandCgroup>,
}

impl Start {
    /// `-c`: starts the command, once the probes are attached.
    fn launch(&mut self, flags: &TracingFlags) -> Result<Option<RunningCommand>> {
        self.cgroup
            .take()
            .map(|c| c.spawn(&flags.argv, &self.stop))
            .transpose()
    }
}

/// The run's exit status: `-c`'s command's, else success.
fn exit_code(command: Option<RunningCommand>) -> Result<ExitCode> {
    command.map_or(Ok(ExitCode::SUCCESS), RunningCommand::finish)
}

impl TracingFlags {
    /// The filter, the stop conditions and (`-c`) the command's cgroup.
    pub(crate) fn start(&self) -> Result<Start> {
        let mut filter = self.filter()?;
        let cgroup = if self.command {
            filter.command = Some(CommandRequests::default());
            Some(CommandCgroup::create(&self.argv)?)
        } else {
            None
        };
        let stop = StopWhen::on_signals(self.duration)?;
        Ok(Start {
            filter,
            stop,
            cgroup,
        })
    }

    pub(crate) fn filter(&self) -> Result<Filter> {
        let mounts: Vec<MountEntry> = self
            .mounts
            .iter()
            .map(|m| fuse_mount_at(m))
            .collect::<Result<_>>()?;
        Ok(Filter {
            connections: mounts.iter().map(|m| m.connection).collect(),
            mounts,
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            opcodes: self.ops.clone(),
            ..Filter::default()
        })
    }

    /// Options for counting in the kernel (`stats`, `serve`): `filter`'s
    /// pid and mounts applied there, the stages too with `stages`.
    pub(crate) fn in_kernel(&self, filter: &Filter, stages: bool) -> ProbeOptions {
        ProbeOptions {
            backend: self.backend,
            daemon_side: self.daemon_side,
            aggregate: Some(KernelFilter {
                pids: filter.pids.clone(),
                comms: filter.comms.iter().map(|c| c.0).collect(),
                connections: filter.connections.clone(),
                stages,
                whole_min_ns: None,
            }),
            ..ProbeOptions::default()
        }
    }

    /// Attaches the event pipeline's hooks (`app_writes`: also
    /// applications' writes to FUSE files, for diagnose).
    fn attach(&self, app_writes: bool, start: &Start) -> Result<Probes> {
        self.attach_options(
            ProbeOptions {
                backend: self.backend,
                daemon_side: self.daemon_side,
                diagnose: app_writes,
                no_paths: self.no_paths,
                ..ProbeOptions::default()
            },
            start,
        )
    }

    /// Attaches with `options`, and `-c`'s cgroup filter when given.
    fn attach_options(&self, mut options: ProbeOptions, start: &Start) -> Result<Probes> {
        options.cgroup = start.cgroup.as_ref().map(CommandCgroup::id);
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
    pub by: ByOpts,
}

impl StatsArgs {
    pub fn run(&self) -> Result<ExitCode> {
        let flags = &self.flags;
        let mut start = flags.start()?;
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
            flags.attach_options(flags.in_kernel(&start.filter, self.stages), &start)?
        } else {
            flags.attach(false, &start)?
        };
        let command = start.launch(flags)?;
        let (filter, stop) = (&start.filter, &start.stop);
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
    pub fn run(&self) -> Result<ExitCode> {
        let mut start = self.flags.start()?;
        let file = recorder::create_file(&self.output)?;
        let mounts = recorder::current_fuse_mounts();
        let mut probes = self
            .flags
            .attach(self.app_writes, &start)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&self.output);
            })?;
        let header = recorder::header_now(probes.describe(), &start.filter, &mounts);
        let mut recorder = Recorder::new(file, &self.output, &header)?;
        let printer = StatsPrinter::new(std::io::stdout().lock(), self.format, false);
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
        drop(recorder);
        drop(probes);
        if let Some(out) = &self.perfetto {
            crate::record::report::to_perfetto(std::slice::from_ref(&self.output), out)?;
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
        let mut start = self.flags.start()?;
        let mut probes = self.flags.attach(false, &start)?;
        let command = start.launch(&self.flags)?;
        crate::tui::run(&mut probes, &start.filter, &start.stop, &self.top.options())?;
        drop(probes);
        exit_code(command)
    }
}
