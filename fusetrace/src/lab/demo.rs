//! `fusetrace demo`: the whole thing in one command. Mounts the reference
//! daemon in a temporary directory, runs a load on it, traces it, prints
//! the per-opcode stats and cleans up.

use std::{
    sync::{Arc, atomic::Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    kernel::probes::{ProbeOptions, Probes},
    lab::daemon::{DaemonConfig, MountedDaemon},
    lab::load::{self, LoadArgs, Workload},
    output::accumulate::StatsOutput,
    output::print::{Format, StatsPrinter},
    pipeline::connections::connection_of,
    pipeline::session::{self, Filter, StopWhen},
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
    let stop = StopWhen::on_signals(Some(args.duration))?;
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
    let stop_flag = Arc::clone(&stop.flag);
    let loader = thread::spawn(move || {
        let report = load::run(&load_args);
        // The trace ends with the load.
        stop_flag.store(true, Ordering::Relaxed);
        report
    });
    let traced = if args.tui {
        let opts = crate::tui::TopOptions {
            config: crate::tui::state::TopConfig::default(),
            headless: false,
            view: crate::tui::StartView::default(),
        };
        crate::tui::run(&mut probes, &filter, &stop, &opts)
    } else {
        let printer = StatsPrinter::new(std::io::stdout().lock(), args.format, false);
        let mut sink = StatsOutput::printing(printer, None);
        session::run(
            &mut probes,
            &filter,
            &mut sink,
            &stop,
            Duration::from_secs(1),
        )
    };
    let report = loader.join().expect("load thread panicked");
    let served = daemon.counts();
    daemon.unmount()?;
    let summary = traced?;
    let report = report?;
    eprintln!("fusetrace demo: {report}");
    eprintln!(
        "fusetrace demo: the daemon counted {} requests it served; fusetrace traced {} (requests fuser answers by itself, such as STATX, are not in the daemon's count)",
        served.snapshot().values().sum::<u64>(),
        summary.requests
    );
    Ok(())
}
