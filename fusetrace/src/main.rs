use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use fusetrace::{
    connections::connection_of,
    daemon, demo, load, opcode,
    probes::{Backend, ProbeOptions, Probes},
    session::{self, Filter, StopWhen},
    sinks::{Format, StatsSink, TraceSink},
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
        /// Print a table for every interval as well as at exit.
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        interval: Duration,
    },
    /// Run the embedded reference FUSE file system.
    Daemon(daemon::DaemonArgs),
    /// Generate file system load on a mount.
    Load(load::LoadArgs),
    /// Mount the reference daemon, put load on it, trace it, print the stats.
    Demo(demo::DemoArgs),
    /// List the FUSE opcode names `--op` accepts.
    Ops,
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
        let probes = Probes::attach(&ProbeOptions {
            backend: self.backend,
            daemon_tgid: None,
        })?;
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
        Command::Stats { opts, interval } => {
            let filter = opts.filter()?;
            let stop = StopWhen::on_signals(opts.duration)?;
            let mut probes = opts.attach()?;
            let mut sink = StatsSink::new(std::io::stdout().lock(), opts.format, true);
            session::run(&mut probes, &filter, &mut sink, &stop, interval)?;
        }
        Command::Daemon(args) => daemon::run(&args)?,
        Command::Load(args) => {
            let report = load::run(&args)?;
            println!("{report}");
        }
        Command::Demo(args) => demo::run(&args)?,
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
