//! The command line: one subcommand per verb, dispatched to the module that
//! owns its arguments and its `run`.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use fusetrace::{
    cli, diagnose, doctor, lab,
    output::file::{AtomicFile, Target},
    pipeline::opcode,
    record, serve,
};

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
    /// More messages on stderr: -v adds fusetrace's debug lines (hooks
    /// chosen, offsets read from BTF, maps), -vv aya's own and every
    /// crate's. RUST_LOG (env_logger's syntax, e.g. `fusetrace=debug,aya=info`)
    /// overrides both -v and -q.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Fewer messages on stderr: -q leaves warnings and errors (whatever a
    /// run lost is still told), -qq errors only.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    quiet: u8,
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
    /// Why a FUSE mount is slow: each known cause seen, worst first, with
    /// its numbers, the knob that changes it and what to expect.
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
    /// Write the man pages (`man/fusetrace.1` and one per command) and the
    /// bash, zsh and fish completions into DIR (`cargo xtask dist` packs them).
    #[command(hide = true)]
    Assets {
        /// The folder to write `man/` and `completions/` into.
        dir: PathBuf,
        #[command(flatten)]
        force: fusetrace::output::file::Force,
    },
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
        Command::Load(args) => {
            lab::load::run(&args).and_then(|report| Ok(writeln!(io::stdout(), "{report}")?))
        }
        Command::Demo(args) => lab::demo::run(&args),
        Command::Diagnose(args) => diagnose::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Serve(args) => args.run(),
        Command::BenchConsumer(args) => lab::bench_consumer::main(&args),
        Command::Assets { dir, force } => write_assets(&dir, force.force),
        Command::Ops => {
            let mut out = io::stdout().lock();
            for (n, name) in opcode::OPCODES {
                writeln!(out, "{n:>5} {name}")?;
            }
            Ok(out.flush()?)
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Man pages and shell completions, generated from the definitions above so
/// that they never disagree with `--help`. Written as every output is
/// (`output::file`: 0600; `cargo xtask dist` gives the packaged copies
/// their modes).
fn write_assets(dir: &std::path::Path, force: bool) -> Result<()> {
    let create = |path: PathBuf| {
        std::fs::create_dir_all(path.parent().unwrap())
            .with_context(|| format!("cannot write {}", path.display()))?;
        AtomicFile::create(Target {
            path: &path,
            what: "assets",
            force,
        })
    };
    let mut cli = Cli::command().name("fusetrace");
    cli.build();
    let mut pages = vec![("fusetrace".to_string(), cli.clone())];
    for sub in cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("fusetrace-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let mut out = create(dir.join(format!("man/{name}.1")))?;
        clap_mangen::Man::new(page)
            .render(&mut out)
            .with_context(|| format!("cannot write the man page {name}.1"))?;
        out.commit()?;
    }
    for (shell, file) in [
        (Shell::Bash, "fusetrace.bash"),
        (Shell::Zsh, "_fusetrace"),
        (Shell::Fish, "fusetrace.fish"),
    ] {
        let mut out = create(dir.join("completions").join(file))?;
        clap_complete::generate(shell, &mut cli, "fusetrace", &mut out);
        out.commit()?;
    }
    Ok(())
}

/// Messages go through `log` (ours, aya's, every crate's) to stderr, one
/// line each in the shape fusetrace always printed: `fusetrace: ...` for
/// what a run tells and warns of, `fusetrace: error: ...`, and
/// `fusetrace: debug: TARGET: ...` below. env_logger because it reads
/// RUST_LOG as every Rust tool does; without its default features (no
/// colours, no timestamps, no regex): a line per message is what scripts
/// and journald want.
fn init_logging(verbose: u8, quiet: u8) {
    use std::io::Write;
    let ours = match (verbose, quiet) {
        (0, 0) => "info",
        (0, 1) => "warn",
        (0, _) => "error",
        (1, _) => "debug",
        _ => "trace",
    };
    // aya (and hyper, rustls...) say little worth reading unless asked.
    let others = if verbose >= 2 { "debug" } else { "warn" };
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&format!("{others},fusetrace={ours}"));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder
        .format(|out, record| {
            use log::Level;
            match record.level() {
                Level::Info | Level::Warn => writeln!(out, "fusetrace: {}", record.args()),
                Level::Error => writeln!(out, "fusetrace: error: {}", record.args()),
                level => writeln!(
                    out,
                    "fusetrace: {}: {}: {}",
                    level.as_str().to_ascii_lowercase(),
                    record.target(),
                    record.args()
                ),
            }
        })
        .init();
}

/// Whether a failure is only stdout's reader going away (`trace | head`):
/// the run has already ended and detached everything on its way out, and,
/// as bpftrace and perf do, it ends quietly and successfully. (Rust ignores
/// SIGPIPE, so the write fails with EPIPE instead of killing us before
/// `-c`'s cgroup and the probes are cleaned up.)
fn reader_went_away(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) if reader_went_away(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Not through `log`: the one line a failed run always prints.
            eprintln!("fusetrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
