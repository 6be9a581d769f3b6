//! The command line: one subcommand per verb, dispatched to the module that
//! owns its arguments and its `run`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fusetrace::{cli, diagnose, kernel::doctor, lab, pipeline::opcode, record, serve};

/// `--version`: what was built, from where, for which machine, and whether
/// it can trace at all.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FUSETRACE_COMMIT"),
    ", ",
    env!("FUSETRACE_TARGET"),
    ", ",
    env!("FUSETRACE_EBPF_STATE"),
    ")"
);

/// Where the time goes in FUSE file systems: every request's whole life,
/// traced with eBPF.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one line per finished FUSE request, with each stage's latency.
    Trace(cli::TraceArgs),
    /// Per-opcode count, errors and p50/p90/p99/max of each stage.
    Stats(cli::StatsArgs),
    /// Record the decoded event stream to a file for `fusetrace report`;
    /// prints the whole-run stats at exit. --mount filters what is recorded;
    /// -p/--pid, --comm and --op are stored and applied by `report`.
    Record(cli::RecordArgs),
    /// Recordings offline: the `stats` tables (and CSV), one line per request
    /// (`--requests`), or a Perfetto trace (`--perfetto`); several files are merged.
    Report(record::report::ReportArgs),
    /// Run the embedded reference FUSE file system.
    Daemon(lab::daemon::DaemonArgs),
    /// Generate file system load on a mount.
    Load(lab::load::LoadArgs),
    /// Mount the reference daemon, put load on it, trace it, print the stats.
    Demo(lab::demo::DemoArgs),
    /// Tell writeback from write-through, with the evidence in numbers.
    Diagnose(diagnose::DiagnoseArgs),
    /// What this kernel offers for tracing FUSE, and the hook each stage uses.
    Doctor(doctor::DoctorArgs),
    /// Live view of the requests in flight, per-opcode latency and stalls.
    Top(cli::TopCommandArgs),
    /// Serve the in-kernel counts at /metrics for Prometheus: latency
    /// histograms, errors and requests in flight per mount and opcode.
    Serve(serve::ServeArgs),
    /// List the FUSE opcode names `--op` accepts.
    Ops,
    /// Events per second the decoder, tracker and sinks digest on one
    /// core (`cargo xtask bench` runs it).
    #[command(hide = true)]
    BenchConsumer(lab::bench_consumer::BenchConsumerArgs),
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        // The tracing verbs exit as `-c`'s command did.
        Command::Trace(args) => return args.run(),
        Command::Stats(args) => return args.run(),
        Command::Record(args) => return args.run(),
        Command::Top(args) => return args.run(),
        Command::Report(args) => record::report::run(&args),
        Command::Daemon(args) => lab::daemon::run(&args),
        Command::Load(args) => lab::load::run(&args).map(|report| println!("{report}")),
        Command::Demo(args) => lab::demo::run(&args),
        Command::Diagnose(args) => diagnose::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Serve(args) => args.run(),
        Command::BenchConsumer(args) => lab::bench_consumer::main(&args),
        Command::Ops => {
            for (n, name) in opcode::OPCODES {
                println!("{n:>5} {name}");
            }
            Ok(())
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fusetrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
