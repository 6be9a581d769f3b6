use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use fusetrace::{
    kernel::hooks::Backend,
    kernel::probes::{KernelFilter, ProbeOptions, Probes},
    lab::daemon,
    lab::demo,
    lab::load,
    output::accumulate::{StatsOutput, StatsWriter},
    output::export::{Clock, CsvOpts},
    output::fanout::FanOut,
    output::sinks::{Format, StatsPrinter, TraceSink},
    pipeline::aggregate,
    pipeline::connections::connection_of,
    pipeline::opcode,
    pipeline::session::{self, Filter, StopWhen},
    record::{self, recorder::Recorder},
    units::parse_duration,
};

/// Where the time goes in FUSE file systems: every request's whole life,
/// traced with eBPF.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one line per finished FUSE request, with each stage's latency.
    Trace {
        #[command(flatten)]
        opts: TraceOpts,
    },
    /// Per-opcode count, errors and p50/p90/p99/max of each stage.
    Stats {
        #[command(flatten)]
        opts: TraceOpts,
        /// Print a table for every interval (default 5s) as well as at
        /// exit; given with --csv, the CSV gets one block per interval.
        #[arg(long, value_parser = parse_duration)]
        interval: Option<Duration>,
        /// Split each request's latency into queue wait, daemon service and
        /// completion. Without it the kernel counts whole latencies into
        /// histograms itself (send and end hooks only), which costs the
        /// traced file system several times less.
        #[arg(long)]
        stages: bool,
        #[command(flatten)]
        csv: CsvOpts,
    },
    /// Record the decoded event stream to a file for `fusetrace report`;
    /// prints the whole-run stats at exit. --mount filters what is recorded;
    /// --pid and --op are stored and applied by `report`.
    Record {
        #[command(flatten)]
        opts: TraceOpts,
        /// The recording file (see README: recording file format).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Also record applications' writes to FUSE files, for `diagnose --from`.
        #[arg(long)]
        app_writes: bool,
    },
    /// The `stats` tables (and CSV) of recordings; several files are merged.
    Report(record::report::ReportArgs),
    /// Run the embedded reference FUSE file system.
    Daemon(daemon::DaemonArgs),
    /// Generate file system load on a mount.
    Load(load::LoadArgs),
    /// Mount the reference daemon, put load on it, trace it, print the stats.
    Demo(demo::DemoArgs),
    /// Tell writeback from write-through, with the evidence in numbers.
    Diagnose(fusetrace::diagnose::DiagnoseArgs),
    /// What this kernel offers for tracing FUSE, and the hook each stage uses.
    Doctor(fusetrace::kernel::doctor::DoctorArgs),
    /// Live view of the requests in flight, per-opcode latency and stalls.
    Top {
        #[command(flatten)]
        opts: TraceOpts,
        #[command(flatten)]
        top: fusetrace::tui::TopArgs,
    },
    /// List the FUSE opcode names `--op` accepts.
    Ops,
    /// Events per second the decoder, tracker and sinks digest on one
    /// core (`cargo xtask bench` runs it).
    #[command(hide = true)]
    BenchConsumer(fusetrace::lab::bench_consumer::BenchConsumerArgs),
}

#[derive(Args, Clone)]
struct TraceOpts {
    /// Only requests of the FUSE mount at this path (repeatable).
    #[arg(long = "mount", value_name = "PATH")]
    mounts: Vec<PathBuf>,
    /// Only requests made by this process or thread id.
    #[arg(long)]
    pid: Option<u32>,
    /// Only this opcode, e.g. READ or LOOKUP (repeatable).
    #[arg(long = "op", value_name = "OPCODE", value_parser = opcode::parse)]
    ops: Vec<u32>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Force a probe backend instead of choosing per stage.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

impl TraceOpts {
    fn filter(&self) -> Result<Filter> {
        Ok(Filter {
            connections: self
                .mounts
                .iter()
                .map(|m| connection_of(m))
                .collect::<Result<_>>()?,
            pid: self.pid,
            opcodes: self.ops.clone(),
        })
    }

    fn attach(&self) -> Result<Probes> {
        self.attach_with(false)
    }

    /// `app_writes`: also hook applications' writes to FUSE files (diagnose).
    fn attach_with(&self, app_writes: bool) -> Result<Probes> {
        self.attach_options(ProbeOptions {
            backend: self.backend,
            diagnose: app_writes,
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Trace { opts } => {
            let filter = opts.filter()?;
            let stop = StopWhen::on_signals(opts.duration)?;
            let mut probes = opts.attach()?;
            let mut sink = TraceSink::new(
                std::io::BufWriter::new(std::io::stdout().lock()),
                opts.format,
                session::monotonic_ns(),
            );
            session::run(
                &mut probes,
                &filter,
                &mut sink,
                &stop,
                Duration::from_millis(200),
            )?;
        }
        Command::Stats {
            opts,
            interval,
            stages,
            csv,
        } => {
            let filter = opts.filter()?;
            let stop = StopWhen::on_signals(opts.duration)?;
            // Before attaching, so a bad --csv path fails first.
            let csv = csv.writer(interval.is_some(), Clock::Wall)?;
            // The plain tracepoints carry no request pointer to key a
            // kernel-side table by: that backend splits stages or nothing.
            let in_kernel = !stages && opts.backend != Some(Backend::Tracepoint);
            let mut probes = if in_kernel {
                opts.attach_options(ProbeOptions {
                    backend: opts.backend,
                    aggregate: Some(KernelFilter {
                        pid: filter.pid,
                        connections: filter.connections.clone(),
                    }),
                    ..ProbeOptions::default()
                })?
            } else {
                opts.attach()?
            };
            let mut writers: Vec<Box<dyn StatsWriter>> = vec![Box::new(StatsPrinter::new(
                std::io::stdout().lock(),
                opts.format,
                true,
            ))];
            writers.extend(csv.map(|c| Box::new(c) as Box<dyn StatsWriter>));
            let interval = interval.unwrap_or(Duration::from_secs(5));
            let mut sink = StatsOutput::new(writers);
            if in_kernel {
                aggregate::run(&mut probes, &filter.opcodes, &mut sink, &stop, interval)?;
            } else {
                session::run(&mut probes, &filter, &mut sink, &stop, interval)?;
            }
        }
        Command::Record {
            opts,
            output,
            app_writes,
        } => {
            let filter = opts.filter()?;
            let stop = StopWhen::on_signals(opts.duration)?;
            let file = record::recorder::create_file(&output)?;
            let mut probes = opts.attach_with(app_writes).inspect_err(|_| {
                let _ = std::fs::remove_file(&output);
            })?;
            let header = record::recorder::header_now(probes.describe(), &filter);
            let mut recorder = Recorder::new(file, &output, &header)?;
            let mut stats = StatsOutput::new(vec![Box::new(StatsPrinter::new(
                std::io::stdout().lock(),
                opts.format,
                false,
            ))]);
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
        }
        Command::Report(args) => record::report::run(&args)?,
        Command::Daemon(args) => daemon::run(&args)?,
        Command::Load(args) => {
            let report = load::run(&args)?;
            println!("{report}");
        }
        Command::Demo(args) => demo::run(&args)?,
        Command::Diagnose(args) => fusetrace::diagnose::run(&args)?,
        Command::Doctor(args) => fusetrace::kernel::doctor::run(&args)?,
        Command::Top { opts, top } => {
            if opts.format != Format::Text {
                anyhow::bail!("fusetrace top draws a screen; --format applies to trace and stats");
            }
            if !top.headless {
                // Before attaching: nothing to undo.
                fusetrace::tui::require_terminal()?;
            }
            let filter = opts.filter()?;
            let stop = StopWhen::on_signals(opts.duration)?;
            let mut probes = opts.attach()?;
            fusetrace::tui::run(&mut probes, &filter, &stop, &top.options())?;
        }
        Command::BenchConsumer(args) => fusetrace::lab::bench_consumer::main(&args)?,
        Command::Ops => {
            for (n, name) in opcode::OPCODES {
                println!("{n:>5} {name}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusetrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
