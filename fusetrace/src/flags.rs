//! What every tracing command takes ([`TracingFlags`]: which requests, for
//! how long, how), and how a run starts from it: the filter, the stop
//! conditions, `-c`'s cgroup, the probes attached. Shared by the tracing
//! commands in `cli` and by `serve`; their doc comments are the `--help`
//! text.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;

use crate::{
    kernel::{
        hooks::{Backend, DaemonSide},
        probes::{KernelFilter, ProbeOptions, Probes},
    },
    pipeline::{
        command::{CommandCgroup, RunningCommand},
        connections::{MountEntry, fuse_mount_at},
        filter::{CommandRequests, Filter},
        lifecycle::Comm,
        opcode,
        session::StopWhen,
    },
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
    /// `-c`'s command writes to standard error (`record -o -`).
    pub command_stdout_to_stderr: bool,
}

impl Start {
    /// `-c`: starts the command, once the probes are attached.
    pub(crate) fn launch(&mut self, flags: &TracingFlags) -> Result<Option<RunningCommand>> {
        self.cgroup
            .take()
            .map(|c| c.spawn(&flags.argv, &self.stop, self.command_stdout_to_stderr))
            .transpose()
    }
}

/// The run's exit status: `-c`'s command's, else success.
pub(crate) fn exit_code(command: Option<RunningCommand>) -> Result<ExitCode> {
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
            command_stdout_to_stderr: false,
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
                records: false,
            }),
            ..ProbeOptions::default()
        }
    }

    /// Attaches the event pipeline's hooks (`app_writes`: also
    /// applications' writes to FUSE files, for diagnose).
    pub(crate) fn attach(&self, app_writes: bool, start: &Start) -> Result<Probes> {
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
    pub(crate) fn attach_options(
        &self,
        mut options: ProbeOptions,
        start: &Start,
    ) -> Result<Probes> {
        options.cgroup = start.cgroup.as_ref().map(CommandCgroup::id);
        let probes = Probes::attach(&options)?;
        // Tests and scripts wait for this line before starting load.
        log::info!("tracing ({}); Ctrl-C to stop", probes.describe().join("; "));
        Ok(probes)
    }
}
