//! What is measured: targets (reference daemon, bindfs), workloads, tracer variants, samples.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Reference,
    /// The reference daemon on FUSE over io_uring (`daemon --io-uring`).
    ReferenceUring,
    Bindfs,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Reference => "reference daemon",
            Target::ReferenceUring => "reference daemon over io_uring",
            Target::Bindfs => "bindfs",
        }
    }
}

/// A load pattern and how each file system is mounted for it.
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) load: &'static [&'static str],
    pub(crate) daemon: &'static [&'static str],
    pub(crate) bindfs: &'static str,
}

pub(crate) const WORKLOADS: &[Workload] = &[
    Workload {
        name: "metadata",
        what: "metadata storm: stat() loop, zero attribute/entry timeouts",
        load: &["--workload", "metadata"],
        daemon: &["--ttl", "0s"],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
    Workload {
        name: "randread",
        what: "4 KiB direct-io reads at random offsets",
        load: &[
            "--workload",
            "randread",
            "--block-size",
            "4KiB",
            "--file-size",
            "16MiB",
        ],
        daemon: &["--direct-io"],
        bindfs: "attr_timeout=0,entry_timeout=0,direct_io",
    },
    Workload {
        name: "seqwrite",
        what: "sequential 128 KiB writes",
        load: &[
            "--workload",
            "seqwrite",
            "--block-size",
            "128KiB",
            "--file-size",
            "64MiB",
        ],
        daemon: &[],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
    Workload {
        name: "smallfiles",
        what: "small files: create, write 4 KiB, close, unlink",
        load: &["--workload", "smallfiles"],
        daemon: &[],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
    Workload {
        name: "metadata2",
        what: "metadata storm from 2 threads on a 2-thread daemon (not run by default)",
        load: &["--workload", "metadata", "--jobs", "2"],
        daemon: &["--ttl", "0s", "--threads", "2"],
        bindfs: "attr_timeout=0,entry_timeout=0",
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Variant {
    Untraced,
    Stats,
    StatsStages,
    StatsEvents,
    Trace,
    /// `trace --no-paths`: what reading names costs, beside `Trace`.
    TraceNoPaths,
    Top,
    Serve,
    /// `diagnose`: the event pipeline with the rules behind it.
    Diagnose,
    Bpftrace,
    /// The four-point script (`xtask/bench/fuse-stages.bt`): per-stage
    /// latency from the tracepoints and the daemon's syscalls.
    Bpftrace4,
    /// `xtask/bench/syscall-floor.bt`: the four syscall tracepoints with
    /// programs that return at once, the floor under any tracer that
    /// observes the daemon at its syscalls.
    SyscallFloor,
}

impl Variant {
    /// The name `--variants` takes.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::Stats => "stats",
            Variant::StatsStages => "stages",
            Variant::StatsEvents => "from-events",
            Variant::Trace => "trace",
            Variant::TraceNoPaths => "trace-no-paths",
            Variant::Top => "top",
            Variant::Serve => "serve",
            Variant::Diagnose => "diagnose",
            Variant::Bpftrace => "bpftrace",
            Variant::Bpftrace4 => "bpftrace4",
            Variant::SyscallFloor => "syscall-floor",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::Stats => "fusetrace stats",
            Variant::StatsStages => "fusetrace stats --stages",
            Variant::StatsEvents => "fusetrace stats --stages --from-events",
            Variant::Trace => "fusetrace trace >/dev/null",
            Variant::TraceNoPaths => "fusetrace trace --no-paths >/dev/null",
            Variant::Top => "fusetrace top --headless",
            Variant::Serve => "fusetrace serve (scraped)",
            Variant::Diagnose => "fusetrace diagnose",
            Variant::Bpftrace => "bpftrace script",
            Variant::Bpftrace4 => "bpftrace four-point script",
            Variant::SyscallFloor => "bpftrace, syscall probes empty",
        }
    }
}

/// One load run, and what the tracer running alongside it cost.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) ops_per_sec: f64,
    pub(crate) load_errors: u64,
    /// From the tracer's closing summary (bpftrace: its request count).
    pub(crate) requests: Option<u64>,
    /// Events the tracker saw (`stats --format json` only).
    pub(crate) events: Option<u64>,
    pub(crate) ring_drops: Option<u64>,
    /// Tracer CPU time while the load ran (all its threads).
    pub(crate) cpu_ns: Option<u64>,
    pub(crate) load_secs: f64,
    pub(crate) peak_rss_kib: Option<u64>,
}
