//! `fusetrace demo`: the whole thing in one command. Mounts the reference
//! daemon in a temporary directory, runs a load on it, traces it, prints
//! the per-opcode stats and cleans up.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    kernel::probes::{ProbeOptions, Probes},
    lab::daemon::{DaemonConfig, MountedDaemon, answered_uncounted},
    lab::load::{self, LoadArgs, Workload},
    output::accumulate::StatsOutput,
    output::export::Clock,
    output::print::{Format, StatsPrinter},
    pipeline::connections::ConnectionTable,
    pipeline::connections::connection_of,
    pipeline::lifecycle::RequestLifecycle,
    pipeline::opcode,
    pipeline::session::{self, StopWhen},
    pipeline::sink::{FanOut, Sink},
    pipeline::{filter::Filter, summary::RunSummary},
    units::parse_duration,
};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long the load runs.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Load threads.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Load pattern.
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,
    /// Daemon worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Output format of the stats.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Show the live view (`fusetrace top`) instead of printing the stats.
    #[arg(long)]
    pub tui: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    // Before the mount: a missing privilege fails here, with nothing to undo.
    // No deadline of its own: the trace ends when the load thread has
    // unmounted the daemon, so that both count the same window.
    let stop = StopWhen::on_signals(None)?;
    if args.tui {
        crate::tui::require_terminal()?;
    }
    // The mount point: an unpredictable name (we run as root), removed on
    // drop, after the daemon unmounted.
    let dir = tempfile::Builder::new()
        .prefix("fusetrace-demo-")
        .tempdir()
        .context("creating the demo's mount point")?;
    let mut probes = Probes::attach(&ProbeOptions::default())?;
    let daemon = MountedDaemon::mount(
        dir.path(),
        DaemonConfig {
            threads: args.threads,
            ..DaemonConfig::default()
        },
    )?;
    let filter = Filter {
        connections: vec![connection_of(dir.path())?],
        ..Filter::default()
    };
    eprintln!(
        "fusetrace demo: reference daemon mounted at {}; {} load with {} jobs for {:?}; tracing ({})",
        dir.path().display(),
        args.workload,
        args.jobs,
        args.duration,
        probes.describe().join("; ")
    );
    let load_args = LoadArgs {
        mountpoint: dir.path().to_path_buf(),
        workload: args.workload,
        duration: Some(args.duration),
        ops: None,
        jobs: args.jobs,
        file_size: 4 << 20,
        block_size: 4096,
    };
    let served = daemon.counts();
    let stop_flag = Arc::clone(&stop.flag);
    let window_closed = Arc::new(AtomicBool::new(false));
    let closed = Arc::clone(&window_closed);
    let loader = thread::spawn(move || {
        let report = load::run(&load_args);
        // The trace ends after the unmount: the daemon's last requests
        // (RELEASE, FORGET, DESTROY) are in both counts.
        let unmounted = daemon.unmount();
        closed.store(true, Ordering::SeqCst);
        stop_flag.store(true, Ordering::SeqCst);
        (report, unmounted)
    });
    let mut uncounted = Uncounted::default();
    let traced = if args.tui {
        let opts = crate::tui::TopOptions {
            config: crate::tui::state::TopConfig::default(),
            headless: false,
            view: crate::tui::StartView::default(),
            // The demo's probes are the event pipeline's.
            events: true,
        };
        crate::tui::run(&mut probes, &filter, &stop, &opts)
    } else {
        let printer =
            StatsPrinter::new(std::io::stdout().lock(), args.format, false).with_clock(Clock::Wall);
        let mut stats = StatsOutput::printing(printer, None);
        let mut sink = FanOut {
            sinks: vec![&mut stats, &mut uncounted],
        };
        session::run(
            &mut probes,
            &filter,
            &mut sink,
            &stop,
            Duration::from_secs(1),
        )
    };
    // Read before the join: a Ctrl-C that ended the trace early leaves the
    // window open (the load runs its course, unmounts, and is joined).
    let same_window = window_closed.load(Ordering::SeqCst);
    let (report, unmounted) = loader.join().expect("load thread panicked");
    unmounted?;
    let summary = traced?;
    let report = report?;
    eprintln!("fusetrace demo: {report}");
    let served = served.snapshot().values().sum::<u64>();
    let traced = summary.requests - uncounted.total;
    eprintln!(
        "fusetrace demo: {}{}",
        closing_line(served, traced, same_window),
        uncounted.describe()
    );
    Ok(())
}

/// Traced requests of the opcodes the daemon answers without counting
/// ([`answered_uncounted`]: fuser answers STATX and INTERRUPT itself): they
/// are left out of the comparison, and named.
#[derive(Default)]
struct Uncounted {
    by_opcode: BTreeMap<u32, u64>,
    total: u64,
}

impl Sink for Uncounted {
    fn request(&mut self, rec: &RequestLifecycle, _: &mut ConnectionTable) -> Result<()> {
        if answered_uncounted(rec.opcode) {
            *self.by_opcode.entry(rec.opcode).or_default() += 1;
            self.total += 1;
        }
        Ok(())
    }

    fn finish(&mut self, _: &RunSummary, _: &mut ConnectionTable) -> Result<()> {
        Ok(())
    }
}

impl Uncounted {
    fn describe(&self) -> String {
        if self.total == 0 {
            return String::new();
        }
        let ops: Vec<String> = self
            .by_opcode
            .iter()
            .map(|(op, n)| format!("{n} {}", opcode::name(*op)))
            .collect();
        format!(
            " (besides {}, which fuser answers itself and the daemon does not count)",
            ops.join(", ")
        )
    }
}

/// The demo's proof: the daemon's own count of what it served from mount
/// to unmount against what fusetrace traced over the same window.
fn closing_line(served: u64, traced: u64, same_window: bool) -> String {
    if !same_window {
        format!(
            "interrupted: the daemon served {served} requests from mount to unmount; fusetrace traced {traced} before it was stopped"
        )
    } else if served == traced {
        format!(
            "exact: the daemon served {served} requests from mount to unmount, and fusetrace traced {traced}"
        )
    } else {
        format!(
            "the daemon served {served} requests from mount to unmount, but fusetrace traced {traced}: {} differ (the summary above counts what was lost)",
            served.abs_diff(traced)
        )
    }
}
