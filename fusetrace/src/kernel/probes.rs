//! Choosing and attaching hooks: one start-up path (`Startup`) reads the
//! kernel (BTF, kallsyms, tracefs) and loads the eBPF object, then each
//! point takes the first hook of the table ([`super::hooks`]) that the
//! kernel offers and that loads and attaches. Running (`Probes::attach`)
//! and `doctor`'s survey share it. Attached probes deliver events from the
//! ring buffer and counters from the kernel's maps.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint},
};
use fusetrace_common::{
    AGG_MAX_COMMS, AGG_MAX_CONNECTIONS, AGG_MAX_PIDS, AggSent, CellCounts, DevFuseFile, FuseEvent,
    HistogramKey, KernelLayout, counters,
};

use crate::kernel::decode::FileNames;
use crate::kernel::{
    btf::Btf,
    cells::{CellTables, CellsInUse, table_regions},
    daemons::DaemonMap,
    hooks::{
        AGGREGATE_HOOK_TABLE, AGGREGATE_STAGES_HOOK_TABLE, APP_WRITES_HOOKS, Attach, Backend,
        DIAGNOSE_PROGRAMS, DaemonSide, HOOK_TABLE, Hook, Point, PointChoice, Transport,
        URING_HOOK_TABLE, backend_of,
    },
    kallsyms::Kallsyms,
    kfunc::{self, KFunc, Resolved},
    layout::{diagnose_layout, kernel_layout},
    modfentry::{self, ModuleFEntry},
    privileges,
    slots::{InFlight, InFlightTables},
    tracefs::{RecordFormat, Tracefs},
};

/// The compiled eBPF object, built by build.rs from `fusetrace-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FUSETRACE_EBPF_OBJECT"));

/// Options for attaching.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Force this backend for every point it can serve.
    pub backend: Option<Backend>,
    /// See the daemon side only there (`--daemon-side`).
    pub daemon_side: Option<DaemonSide>,
    /// Only observe daemon syscalls of this process.
    pub daemon_tgid: Option<u32>,
    /// Also observe applications' writes to FUSE files (`fusetrace diagnose`).
    pub diagnose: bool,
    /// Read no file names (`--no-paths`): views show `node N`.
    pub no_paths: bool,
    /// Count latencies into histograms in the kernel (`stats`) instead of
    /// reporting every event: only these requests.
    pub aggregate: Option<KernelFilter>,
    /// `-c`: only sends from this cgroup v2 (its id), on either path.
    pub cgroup: Option<u64>,
    /// Keep the `/dev/fuse` file iterator loaded ([`Probes::dev_fuse_files`]):
    /// `serve` finds mounts' daemons with it, where a walk over
    /// `/proc/PID/fd` would need CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE.
    pub file_iterator: bool,
}

impl ProbeOptions {
    /// Writes what the options ask of the kernel programs into their layout.
    fn fill_layout(&self, layout: &mut KernelLayout, btf: &Btf) -> Result<()> {
        layout.daemon_tgid = self.daemon_tgid.unwrap_or(0);
        layout.filter_cgroup = self.cgroup.unwrap_or(0);
        if let Some(f) = &self.aggregate {
            f.fill_layout(layout);
        }
        layout.names_off = u32::from(self.no_paths);
        if self.diagnose {
            diagnose_layout(layout, btf).context("fusetrace diagnose cannot run on this kernel")?;
            layout.track_app_io = 1;
        }
        Ok(())
    }

    /// The points to observe and the hooks that may serve each.
    fn hook_table(&self) -> &'static [(Point, &'static [Hook])] {
        match &self.aggregate {
            Some(f) if f.stages || f.records || f.whole_min_ns.is_some() => {
                AGGREGATE_STAGES_HOOK_TABLE
            }
            Some(_) => AGGREGATE_HOOK_TABLE,
            None => HOOK_TABLE,
        }
    }

    /// The daemon side the hooks are chosen on, when one is forced.
    fn hooks_daemon_side(&self) -> Option<DaemonSide> {
        // diagnose reads applications' writes at the entry hook the
        // syscall side of replies has.
        if self.diagnose {
            Some(DaemonSide::Syscalls)
        } else {
            self.daemon_side
        }
    }
}

/// Which requests in-kernel aggregation counts.
#[derive(Debug, Clone, Default)]
pub struct KernelFilter {
    /// Requester threads or thread groups; empty means all.
    pub pids: Vec<u32>,
    /// Requesters' command names, NUL-padded; empty means all.
    pub comms: Vec<[u8; 16]>,
    /// Only these connections; empty means all.
    pub connections: Vec<u32>,
    /// Count the stages too (queue, daemon, completion): the daemon-side
    /// hooks stamp each request's slot.
    pub stages: bool,
    /// `trace --min`: count nothing, send each request at least this slow
    /// (ns, send to end) whole to the ring buffer; the stages are stamped.
    pub whole_min_ns: Option<u64>,
    /// `top`: count every request (the stages too) and also send each
    /// request at least as slow as the `AGG_RECORD_MIN` map says
    /// ([`Probes::set_record_min`]; none until it is set) whole to the
    /// ring buffer, and keep each request's sender in its slot.
    pub records: bool,
}

impl KernelFilter {
    /// The kernel side takes a few of each filter (compares against
    /// read-only data, no map): more is refused in one line.
    pub fn check(&self) -> Result<()> {
        let over = |what: &str, given: usize, most: usize| -> Result<()> {
            if given > most {
                bail!(
                    "counting in the kernel takes at most {most} {what} (got {given}); give fewer, or use `stats --from-events` or `trace`"
                );
            }
            Ok(())
        };
        over("--mount paths", self.connections.len(), AGG_MAX_CONNECTIONS)?;
        over("-p/--pid values", self.pids.len(), AGG_MAX_PIDS)?;
        over("--comm names", self.comms.len(), AGG_MAX_COMMS)
    }

    /// Writes the filter into the layout the kernel programs read.
    fn fill_layout(&self, layout: &mut KernelLayout) {
        layout.agg_pid_count = self.pids.len() as u32;
        layout.agg_pids[..self.pids.len()].copy_from_slice(&self.pids);
        layout.agg_comm_count = self.comms.len() as u32;
        for (slot, name) in layout.agg_comms.iter_mut().zip(&self.comms) {
            let (a, b) = name.split_at(8);
            *slot = [
                u64::from_ne_bytes(a.try_into().unwrap()),
                u64::from_ne_bytes(b.try_into().unwrap()),
            ];
        }
        layout.agg_connection_count = self.connections.len() as u32;
        layout.agg_stages = u32::from(self.stages || self.records || self.whole_min_ns.is_some());
        // Possible CPUs, as the kernel numbers them (1 if unknown: the
        // other CPUs then count in the hash).
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        (layout.agg_table_bits, layout.agg_table_cpus) = table_regions(cpus);
        if let Some(min) = self.whole_min_ns {
            layout.agg_whole = 1;
            layout.agg_min_ns = min;
            layout.agg_sender = 1;
        }
        if self.records {
            layout.agg_records = 1;
            layout.agg_sender = 1;
        }
        layout.agg_connections[..self.connections.len()].copy_from_slice(&self.connections);
    }
}

/// How long [`Probes::poll`] lets events gather once some have arrived.
/// The ring buffer ([`fusetrace_common::RING_BYTES`]) holds the events of
/// several hundred windows at the highest FUSE request rates seen.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Most events one drain hands on before returning to the caller.
const MAX_DRAIN: usize = 1 << 16;
/// Events that make a batch worth handing on without waiting.
const FULL_BATCH: usize = 4096;

/// Probes attached to the running kernel, and the ring buffer they feed.
/// Dropping it detaches every probe.
pub struct Probes {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// In-kernel aggregation: the latency histogram cells and the rest.
    aggregate: Option<AggregateMaps>,
    pub choices: Vec<PointChoice>,
    undecodable: u64,
    /// The diagnosis hooks on applications' writes are attached.
    app_writes: bool,
    /// `trace --min`: only requests at least this slow (ns) come, whole.
    whole_min_ns: Option<u64>,
    /// fentry programs on module functions, loaded outside aya.
    _module_fentry: Vec<ModuleFEntry>,
    /// The `/dev/fuse` file iterator is loaded (`file_iterator`, or for
    /// the daemon map).
    file_iterator: bool,
    /// The daemon side is at syscalls: which processes hold `/dev/fuse`.
    daemons: Option<DaemonMap>,
    /// Daemon threads that were waiting in `fuse_dev_do_read` before its
    /// fexit was attached and still were when tracing began: the message
    /// each returns with first is not seen ([`waiting_in_read`]).
    waiting_at_start: usize,
    // Owns the programs and links; kept last so maps above drop first.
    _ebpf: Ebpf,
}

/// The in-kernel aggregation's maps.
struct AggregateMaps {
    cells: CellTables,
    generations: aya::maps::HashMap<MapData, u32, u32>,
    /// Most connections' generations (`fusetrace-ebpf/src/aggregate.rs`).
    generation_fast: Array<MapData, u64>,
    in_flight: InFlightTables,
    /// `top`: the total latency (ns) from which a request is also sent
    /// whole (`AGG_RECORD_MIN`, one entry).
    record_min: Array<MapData, u64>,
}

impl AggregateMaps {
    /// Takes the in-kernel aggregation's maps out of the loaded object.
    fn take(ebpf: &mut Ebpf) -> Result<AggregateMaps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("{name} map missing"))
        };
        let histograms = PerCpuHashMap::try_from(take("AGG_HISTOGRAMS")?)?;
        let aya::maps::Map::Array(table) = take("AGG_CELL_TABLE")? else {
            bail!("AGG_CELL_TABLE is not an array");
        };
        let generations = aya::maps::HashMap::try_from(take("AGG_GENERATIONS")?)?;
        let generation_fast = Array::try_from(take("AGG_GENERATION_FAST")?)?;
        let overflow = aya::maps::HashMap::try_from(take("AGG_SENT")?)?;
        let record_min = Array::try_from(take("AGG_RECORD_MIN")?)?;
        let aya::maps::Map::Array(held) = take("AGG_SLOTS")? else {
            bail!("AGG_SLOTS is not an array");
        };
        let aya::maps::Map::Array(kept) = take("AGG_SLOT_SENT")? else {
            bail!("AGG_SLOT_SENT is not an array");
        };
        Ok(AggregateMaps {
            cells: CellTables::new(table, histograms)?,
            generations,
            generation_fast,
            in_flight: InFlightTables::new(held, kept, overflow)?,
            record_min,
        })
    }
}

/// Kernel-side counters of what could not be delivered or decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_drops: u64,
    pub read_faults: u64,
    pub splice_transfers: u64,
    /// io_uring commits whose connection was not found.
    pub uring_unresolved: u64,
    /// In-kernel aggregation (see `fusetrace_common::counters::AGG_*`).
    pub agg_started: u64,
    pub agg_ended: u64,
    pub agg_unmatched_ends: u64,
    pub agg_table_full: u64,
    pub agg_histogram_full: u64,
    /// Sends seen before their request id was assigned.
    pub sent_before_id: u64,
    /// Runs of our programs the kernel skipped (one was already running
    /// on that CPU): as many points unobserved.
    pub program_runs_skipped: u64,
    /// Daemon takes whose request the kernel side did not find.
    pub take_unresolved: u64,
    /// In-kernel stages: ends counted in the total only.
    pub agg_stages_missing: u64,
    /// In-kernel aggregation: INITs the generation table had no room for.
    pub agg_generations_full: u64,
}

impl Probes {
    pub fn attach(opts: &ProbeOptions) -> Result<Probes> {
        let probes = Probes::load_and_attach(opts);
        // Reading BTF and kallsyms allocated tens of MiB that are garbage
        // now; give it back, so that a long run's RSS is what it uses.
        // (glibc only: musl's malloc returns freed memory by itself.)
        // SAFETY: malloc_trim only releases memory malloc holds free.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0)
        };
        probes
    }

    fn load_and_attach(opts: &ProbeOptions) -> Result<Probes> {
        if let Some(f) = &opts.aggregate {
            // Before reading the kernel: bad input fails first.
            f.check()?;
        }
        let Startup {
            tracefs,
            btf,
            kernel,
            mut layout,
        } = Startup::read_kernel()?;
        opts.fill_layout(&mut layout, &btf)?;
        log::debug!("struct offsets read from BTF: {layout:?}");
        let (mut ebpf, aya_btf) = load_object(&layout)?;
        let waiting_before = waiting_in_read();
        let choices = choose_all(
            &mut ebpf,
            opts.hook_table(),
            &layout,
            &kernel,
            &btf,
            &tracefs,
            &aya_btf,
            (opts.backend, opts.hooks_daemon_side()),
        );
        log_choices(&choices);
        if opts.diagnose {
            attach_app_writes(&mut ebpf, &aya_btf, &btf, &tracefs, &kernel)?;
        }
        let syscalls_side = choices
            .iter()
            .any(|c| c.hook.as_ref().and_then(DaemonSide::of) == Some(DaemonSide::Syscalls));
        // Without it (kernels before 5.8), `serve` walks /proc instead, and
        // the syscall programs check every process.
        let file_iterator = (opts.file_iterator || syscalls_side)
            && load_file_iterator(&mut ebpf, &aya_btf).is_ok();
        require_capabilities(&choices)?;
        let daemons = if syscalls_side {
            let mut map = DaemonMap::take(&mut ebpf)?;
            match file_iterator {
                true => map.update(&BTreeSet::new(), &iterate_files(&mut ebpf)?)?,
                false => map.check_everyone()?,
            }
            Some(map)
        } else {
            None
        };
        require_sent_and_ended(&choices, opts.backend)?;
        if let Some(side) = opts.daemon_side {
            require_daemon_side(&choices, side)?;
        }
        let aggregate = match &opts.aggregate {
            Some(f) => {
                let mut maps = AggregateMaps::take(&mut ebpf)?;
                // The map starts at 0, which would send every request
                // whole: none until user space chooses, before the gate
                // opens.
                if f.records {
                    maps.record_min.set(0, u64::MAX, 0)?;
                }
                Some(maps)
            }
            None => None,
        };
        open_gate(&mut ebpf, &choices, layout.agg_stages != 0)?;
        let waiting_at_start = still_waiting_in_read(&choices, &waiting_before);
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        Ok(Probes {
            ring,
            counters,
            aggregate,
            choices,
            undecodable: 0,
            app_writes: opts.diagnose,
            whole_min_ns: opts.aggregate.as_ref().and_then(|f| f.whole_min_ns),
            _module_fentry: kernel.module_fentry.take(),
            file_iterator,
            daemons,
            waiting_at_start,
            _ebpf: ebpf,
        })
    }

    /// Waits up to `timeout` for events, then hands every available one to
    /// `on_event`. Returns how many were delivered.
    ///
    /// Reads in batches: unless the ring buffer held a full batch, it waits
    /// [`BATCH_WINDOW`] for more events before returning. Waking on every
    /// event would cost the traced system a wakeup (and a context switch
    /// on its CPUs) per event; this costs at most one per window.
    pub fn poll(
        &mut self,
        timeout: Duration,
        mut on_event: impl FnMut(FuseEvent, Option<FileNames>),
    ) -> Result<usize> {
        self.refresh_daemons()?;
        let mut n = self.drain(&mut on_event);
        if n >= FULL_BATCH {
            return Ok(n);
        }
        if n == 0 {
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err.into());
                }
            }
            if rc <= 0 {
                return Ok(self.drain(&mut on_event));
            }
        }
        std::thread::sleep(BATCH_WINDOW.min(timeout));
        n += self.drain(&mut on_event);
        Ok(n)
    }

    fn drain(&mut self, on_event: &mut impl FnMut(FuseEvent, Option<FileNames>)) -> usize {
        let mut n = 0;
        // Bounded, so a ring buffer that never empties cannot starve the
        // caller's ticks (the TUI's frames, stats intervals, Ctrl-C).
        while n < MAX_DRAIN
            && let Some(item) = self.ring.next()
        {
            match crate::kernel::decode::decode(&item) {
                Some(ev) => on_event(ev, crate::kernel::decode::names(&item, &ev)),
                None => self.undecodable += 1,
            }
            n += 1;
        }
        n
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |slot: u32| -> u64 {
            self.counters
                .get(&slot, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            ring_drops: sum(counters::RING_DROPS),
            read_faults: sum(counters::READ_FAULTS),
            splice_transfers: sum(counters::SPLICE_TRANSFERS),
            uring_unresolved: sum(counters::URING_UNRESOLVED),
            agg_started: sum(counters::AGG_STARTED),
            agg_ended: sum(counters::AGG_ENDED),
            agg_unmatched_ends: sum(counters::AGG_UNMATCHED_ENDS),
            agg_table_full: sum(counters::AGG_TABLE_FULL),
            agg_histogram_full: sum(counters::AGG_HISTOGRAM_FULL),
            sent_before_id: sum(counters::SENT_BEFORE_ID),
            take_unresolved: sum(counters::TAKE_UNRESOLVED),
            agg_stages_missing: sum(counters::AGG_STAGES_MISSING),
            agg_generations_full: sum(counters::AGG_GENERATIONS_FULL),
            program_runs_skipped: self.program_runs_skipped(),
        }
    }

    /// The kernel's `recursion_misses` over every program of ours.
    fn program_runs_skipped(&self) -> u64 {
        let ours = self
            ._ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .map(|fd| modfentry::recursion_misses(fd.as_fd()));
        let module = self
            ._module_fentry
            .iter()
            .map(|m| modfentry::recursion_misses(m.fd()));
        ours.chain(module).sum()
    }

    fn aggregate(&self) -> Result<&AggregateMaps> {
        self.aggregate
            .as_ref()
            .context("the probes were attached without in-kernel aggregation")
    }

    /// In-kernel aggregation: every histogram cell with its counts summed
    /// over the CPUs (they only grow while the cell exists).
    pub fn histogram_cells(&self) -> Result<Vec<(HistogramKey, CellCounts)>> {
        Ok(self.histogram_cells_in_use()?.0)
    }

    /// [`Self::histogram_cells`], and how full the table and the hash
    /// that hold them are.
    pub fn histogram_cells_in_use(&self) -> Result<(Vec<(HistogramKey, CellCounts)>, CellsInUse)> {
        self.aggregate()?.cells.cells()
    }

    /// In-kernel aggregation: forgets cells (of a mount that is gone).
    pub fn remove_cells(&mut self, keys: &[HistogramKey]) -> Result<()> {
        let Some(maps) = self.aggregate.as_mut() else {
            bail!("the probes were attached without in-kernel aggregation");
        };
        maps.cells.remove(keys)
    }

    /// In-kernel aggregation: each connection number's mount generation
    /// (INITs sent on it since loading; absent: 0).
    pub fn generations(&self) -> Result<std::collections::HashMap<u32, u32>> {
        let maps = self.aggregate()?;
        let mut all: std::collections::HashMap<u32, u32> = maps
            .generations
            .iter()
            .map(|e| e.context("reading the kernel's mount generations"))
            .collect::<Result<_>>()?;
        // The array's entries: `connection << 32 | generation` (an entry
        // an end took for a mount whose INIT came before tracing holds
        // generation 0, as a connection the kernel never numbered).
        for v in maps.generation_fast.iter() {
            let v = v.context("reading the kernel's mount generations")?;
            if v as u32 != 0 {
                all.insert((v >> 32) as u32, v as u32);
            }
        }
        Ok(all)
    }

    /// The backend serving the send point (`tp-btf`, `kprobe`, ...).
    pub fn sent_backend(&self) -> &'static str {
        self.choices
            .iter()
            .find(|c| c.point == Point::Sent)
            .and_then(|c| c.hook.as_ref())
            .map_or("none", |h| h.backend.name())
    }

    /// Each loaded program's CPU time (seconds) and runs, as the kernel
    /// counts them while `kernel.bpf_stats_enabled` is on (else zeros).
    pub fn program_stats(&self) -> Vec<(String, f64, u64)> {
        self._ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((
                    name.to_string(),
                    info.run_time().as_secs_f64(),
                    info.run_count(),
                ))
            })
            .collect()
    }

    /// Every `/dev/fuse` file open in any process now (one per process
    /// and connection), by the task_file iterator: no capability beyond
    /// the programs' own. Err when it was not loaded (`file_iterator`).
    pub fn dev_fuse_files(&mut self) -> Result<Vec<DevFuseFile>> {
        if !self.file_iterator {
            bail!("the /dev/fuse file iterator is not loaded");
        }
        run_file_iterator(&mut self._ebpf)
    }

    /// Brings the daemon map up to date when a refresh is due
    /// ([`super::daemons::REFRESH`]); cheap otherwise. Every loop that
    /// runs while tracing calls it.
    pub fn refresh_daemons(&mut self) -> Result<()> {
        let Some(map) = self.daemons.as_mut() else {
            return Ok(());
        };
        if !self.file_iterator || !map.due() {
            return Ok(());
        }
        let in_use = map.in_use();
        let files = iterate_files(&mut self._ebpf)?;
        map.update(&in_use, &files)
    }

    /// In-kernel aggregation: the requests in flight now.
    pub fn in_flight(&self) -> Result<Vec<InFlight>> {
        Ok(self.aggregate()?.in_flight.scan())
    }

    /// In-kernel aggregation: the requests in flight now, each as its
    /// slot holds it, and whether it waits in the overflow hash (`top`).
    pub fn in_flight_sent(&self) -> Result<Vec<(AggSent, bool)>> {
        Ok(self.aggregate()?.in_flight.scan_sent())
    }

    /// `top` (`KernelFilter::records`): from now on, also send every
    /// request whose total latency is at least `ns` whole to the ring
    /// buffer (`u64::MAX`: none).
    pub fn set_record_min(&mut self, ns: u64) -> Result<()> {
        let Some(maps) = self.aggregate.as_mut() else {
            bail!("the probes were attached without in-kernel aggregation");
        };
        maps.record_min
            .set(0, ns, 0)
            .context("setting the kernel's record threshold")
    }

    /// `trace --min`: the least total (ns) a request needs to be sent.
    pub fn whole_min_ns(&self) -> Option<u64> {
        self.whole_min_ns
    }

    /// Ring buffer records the decoder rejected.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// One line per point: which hook and backend serve it. Optional
    /// points this kernel cannot observe are left out (`doctor` says why).
    pub fn describe(&self) -> Vec<String> {
        let optional = [Point::Submitted, Point::Virtq, Point::DeviceDone];
        let mut lines: Vec<String> = self
            .choices
            .iter()
            .filter(|c| {
                c.hook.is_some()
                    || (!optional.contains(&c.point) && c.transport == Transport::DevFuse)
            })
            .map(PointChoice::describe)
            .collect();
        if self.app_writes {
            lines.push(APP_WRITES_HOOKS.to_string());
        }
        if self.waiting_at_start > 0 {
            lines.push(format!(
                "{}: {} daemon thread(s) were waiting in fuse_dev_do_read before its fexit was attached: at most that many FORGET, BATCH_FORGET or INTERRUPT messages they return with are not seen",
                TAKES_UNSEEN_AT_START, self.waiting_at_start
            ));
        }
        lines
    }
}

/// Attaches `diagnose`'s hooks on applications' write(2) family
/// ([`DIAGNOSE_PROGRAMS`]).
/// `-v`: the hook each point got, and why the ones before it in its
/// table were passed over.
fn log_choices(choices: &[PointChoice]) {
    for c in choices {
        log::debug!("{}", c.describe());
        if c.hook.is_some() && !c.skipped.is_empty() {
            log::debug!("  passed over first: {}", c.skipped.join("; "));
        }
    }
}

fn attach_app_writes(
    ebpf: &mut Ebpf,
    aya_btf: &aya::Btf,
    btf: &Btf,
    tracefs: &Tracefs,
    kernel: &KernelFunctions,
) -> Result<()> {
    let hook = Hook {
        backend: Backend::Tracepoint,
        programs: DIAGNOSE_PROGRAMS,
        has_header: false,
    };
    offered(&hook, btf, tracefs, kernel)
        .and_then(|()| load_hook(ebpf, &hook, aya_btf, kernel))
        .context("attaching the write(2) hooks diagnose needs")
}

/// Fails, saying why, when the send or the end point has no hook.
fn require_sent_and_ended(choices: &[PointChoice], backend: Option<Backend>) -> Result<()> {
    for required in [Point::Sent, Point::Ended] {
        let choice = choices.iter().find(|c| c.point == required).unwrap();
        if choice.hook.is_none() {
            bail!(
                "{}cannot observe the {} point on this kernel ({}); `fusetrace doctor` shows what this kernel offers",
                backend
                    .map(|b| format!("--backend {}: ", b.name()))
                    .unwrap_or_default(),
                required.name(),
                if choice.skipped.is_empty() {
                    format!(
                        "backend {} has no hook for it",
                        backend.map(|b| b.name()).unwrap_or("auto")
                    )
                } else {
                    choice.skipped.join("; ")
                }
            );
        }
    }
    Ok(())
}

/// `--daemon-side`: fails, saying why, when the `/dev/fuse` take or reply
/// point has no hook on that side.
fn require_daemon_side(choices: &[PointChoice], side: DaemonSide) -> Result<()> {
    for c in choices {
        if matches!(c.point, Point::Taken | Point::Replied)
            && c.transport == Transport::DevFuse
            && c.hook.is_none()
        {
            bail!(
                "--daemon-side {}: cannot observe the {} point there on this kernel ({}); `fusetrace doctor` shows what this kernel offers",
                side.name(),
                c.point.name(),
                c.skipped.join("; ")
            );
        }
    }
    Ok(())
}

/// Tells the programs whether the ends take the time their reply began
/// (`reply.rs`) and whether the sends have submissions to join
/// (`request.rs`), then lets every point report.
fn open_gate(ebpf: &mut Ebpf, choices: &[PointChoice], agg_stages: bool) -> Result<()> {
    // Every point's hook is attached: open the gate, so all points
    // start reporting at once.
    let mut gate: Array<_, u32> =
        Array::try_from(ebpf.map_mut("GATE").context("GATE map missing")?)?;
    // Replies seen in the kernel, or at the syscall for the in-kernel
    // aggregation: both keep the thread's time for the end.
    let replies_kept = choices.iter().any(|c| {
        c.point == Point::Replied
            && match c.hook.as_ref().and_then(DaemonSide::of) {
                Some(DaemonSide::Kernel) => true,
                Some(DaemonSide::Syscalls) => agg_stages,
                None => false,
            }
    });
    gate.set(1, u32::from(replies_kept), 0)?;
    // Submissions hooked: the sends look their time up.
    let submissions = choices
        .iter()
        .any(|c| c.point == Point::Submitted && c.hook.is_some());
    gate.set(2, u32::from(submissions), 0)?;
    gate.set(0, 1, 0)?;
    Ok(())
}

/// Of the daemon threads `waiting_before` the hooks were attached, how many
/// still wait in `fuse_dev_do_read`, when an fexit on it serves the take
/// point (else 0): [`Probes::waiting_at_start`].
fn still_waiting_in_read(choices: &[PointChoice], waiting_before: &BTreeSet<u32>) -> usize {
    let fexit_take = choices.iter().any(|c| {
        c.point == Point::Taken
            && c.hook.is_some_and(|h| {
                h.programs.iter().any(
                    |(_, a)| matches!(a, Attach::FExit(f) if std::ptr::eq(*f, &kfunc::DEV_READ)),
                )
            })
    });
    if fexit_take {
        waiting_before.intersection(&waiting_in_read()).count()
    } else {
        0
    }
}

/// How the tracing line names the messages an fexit take may miss.
pub const TAKES_UNSEEN_AT_START: &str = "takes unseen at start";

/// The threads sleeping in `fuse_dev_do_read` (`/proc/*/task/*/wchan`):
/// daemon threads waiting for a message. An fexit attached during such a
/// call does not run when it returns.
fn waiting_in_read() -> BTreeSet<u32> {
    let mut tids = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return tids;
    };
    for p in procs.filter_map(|e| e.ok()) {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.filter_map(|e| e.ok()) {
            if std::fs::read_to_string(t.path().join("wchan"))
                .is_ok_and(|w| w == "fuse_dev_do_read")
                && let Ok(tid) = t.file_name().to_string_lossy().parse()
            {
                tids.insert(tid);
            }
        }
    }
    tids
}

/// Where the kprobe PMU registers; absent when the kernel has no kprobes.
pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// The kernel functions the kprobe/fentry hooks need, as found in the
/// running kernel (kallsyms names, BTF signatures), and whether kprobes exist.
#[derive(Debug, Default)]
pub struct KernelFunctions {
    pub kallsyms: Kallsyms,
    resolved: Vec<(&'static KFunc, std::result::Result<Resolved, String>)>,
    /// The kprobe PMU is registered (`CONFIG_KPROBES`).
    pub kprobe_pmu: bool,
    /// fentry programs attached to module functions (their owner keeps them).
    pub module_fentry: std::cell::RefCell<Vec<ModuleFEntry>>,
}

impl KernelFunctions {
    pub fn find(btf: &Btf) -> KernelFunctions {
        let kallsyms = Kallsyms::from_running_kernel();
        let mut resolved: Vec<(&'static KFunc, _)> = Vec::new();
        for (_, hooks) in HOOK_TABLE {
            for hook in hooks.iter() {
                for (_, attach) in hook.programs {
                    if let Attach::KProbe(f) | Attach::FEntry(f) | Attach::FExit(f) = attach
                        && !resolved.iter().any(|(g, _)| std::ptr::eq(*g, *f))
                    {
                        let r = kfunc::resolve(f, btf).map_err(|e| format!("{e:#}"));
                        resolved.push((*f, r));
                    }
                }
            }
        }
        KernelFunctions {
            kallsyms,
            resolved,
            kprobe_pmu: Path::new(KPROBE_PMU).exists(),
            module_fentry: Default::default(),
        }
    }

    /// Where `f` is in this kernel, or why it cannot be hooked.
    pub fn get(&self, f: &KFunc) -> Result<&Resolved> {
        match self.resolved.iter().find(|(g, _)| std::ptr::eq(*g, f)) {
            Some((_, Ok(r))) => Ok(r),
            Some((_, Err(e))) => Err(anyhow!("{e}")),
            None => Err(anyhow!("{} was not looked up", f.names.join("|"))),
        }
    }

    /// Offsets and argument indexes the kprobe/fentry programs read.
    pub fn fill_layout(&self, l: &mut KernelLayout, btf: &Btf) {
        if let Ok(off) = btf.offset_of("fuse_req", "args") {
            l.req_args = off;
        }
        if let Ok(off) = btf.offset_of("virtio_fs_vq", "vq") {
            l.fsvq_vq = off;
        }
        if let Some(n) = btf.param_count(kfunc::DEV_READ.names[0]) {
            l.arg_read_ret = n as u32;
        }
        for (_, r) in &self.resolved {
            if let Ok(r) = r {
                kfunc::set_layout_args(l, r);
            }
        }
    }
}

/// `choose_hooks` for `table`, and where it traces the daemon side, for
/// the io_uring transport's daemon side too ([`URING_HOOK_TABLE`]): each
/// point of it skipped, with the reason, on kernels without FUSE over
/// io_uring.
#[allow(clippy::too_many_arguments)]
fn choose_all(
    ebpf: &mut Ebpf,
    table: &[(Point, &[Hook])],
    layout: &KernelLayout,
    kernel: &KernelFunctions,
    btf: &Btf,
    tracefs: &Tracefs,
    aya_btf: &aya::Btf,
    (backend, daemon_side): (Option<Backend>, Option<DaemonSide>),
) -> Vec<PointChoice> {
    let mut choices = choose_hooks(
        ebpf,
        table,
        Transport::DevFuse,
        kernel,
        btf,
        tracefs,
        aya_btf,
        (backend, daemon_side),
    );
    if !table.iter().any(|(p, _)| *p == Point::Taken) {
        return choices;
    }
    if layout.uring_on == 0 {
        let why = crate::kernel::layout::uring_layout(&mut KernelLayout::zeroed(), btf)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_else(|| "FUSE over io_uring offsets missing".into());
        choices.extend(URING_HOOK_TABLE.iter().map(|(point, _)| PointChoice {
            point: *point,
            transport: Transport::IoUring,
            hook: None,
            skipped: vec![why.clone()],
        }));
        return choices;
    }
    let backend = backend.or_else(|| backend_of(&choices));
    let uring = choose_hooks(
        ebpf,
        URING_HOOK_TABLE,
        Transport::IoUring,
        kernel,
        btf,
        tracefs,
        aya_btf,
        (backend, None),
    );
    choices.extend(uring);
    choices
}

/// For each point, the first hook (of `backend` and on `daemon_side`,
/// when forced) that the kernel offers and that loads and attaches; the
/// reasons for the others.
#[allow(clippy::too_many_arguments)]
fn choose_hooks(
    ebpf: &mut Ebpf,
    table: &[(Point, &[Hook])],
    transport: Transport,
    kernel: &KernelFunctions,
    btf: &Btf,
    tracefs: &Tracefs,
    aya_btf: &aya::Btf,
    (backend, daemon_side): (Option<Backend>, Option<DaemonSide>),
) -> Vec<PointChoice> {
    let mut choices: Vec<PointChoice> = Vec::new();
    for (point, hooks) in table {
        let mut choice = PointChoice {
            point: *point,
            transport,
            hook: None,
            skipped: Vec::new(),
        };
        let submit_backend = backend_of(&choices);
        // Only send hooks that see the request (not the plain tracepoint's
        // record) join a call to it.
        if *point == Point::Submitted
            && !matches!(
                submit_backend,
                Some(Backend::TpBtf | Backend::Kprobe | Backend::Fentry)
            )
        {
            choice
                .skipped
                .push("needs a submit hook that sees the request to join calls to it".into());
            choices.push(choice);
            continue;
        }
        // Hooks shared by several backends (the syscall ones) are named
        // after the backend that serves the submission; the others keep
        // the table's order.
        let shared = |h: &Hook| {
            hooks
                .iter()
                .any(|g| g.programs[0].0 == h.programs[0].0 && g.backend != h.backend)
        };
        let mut ordered: Vec<&Hook> = hooks.iter().collect();
        ordered.sort_by_key(|h| shared(h) && submit_backend.is_some_and(|b| b != h.backend));
        for hook in ordered {
            if backend.is_some_and(|b| b != hook.backend) {
                continue;
            }
            if let (Some(want), Some(side)) = (daemon_side, DaemonSide::of(hook))
                && want != side
            {
                continue;
            }
            match offered(hook, btf, tracefs, kernel)
                .and_then(|()| load_hook(ebpf, hook, aya_btf, kernel))
            {
                Ok(()) => {
                    choice.hook = Some(*hook);
                    break;
                }
                Err(e) => choice
                    .skipped
                    .push(format!("{}: {e:#}", hook.backend.name())),
            }
        }
        choices.push(choice);
    }
    choices
}

/// What the kernel is read for before anything loads: the same for a run
/// and for `doctor`'s survey.
struct Startup {
    tracefs: Tracefs,
    btf: Btf,
    kernel: KernelFunctions,
    layout: KernelLayout,
}

impl Startup {
    fn read_kernel() -> Result<Startup> {
        privileges::require_bpf()?;
        let tracefs = Tracefs::find();
        let btf = Btf::from_running_kernel(&["fuse", "virtiofs"])?;
        if !btf.has_type("fuse_req") {
            bail!(
                "this kernel's BTF has no struct fuse_req: load the fuse module (`modprobe fuse`) and retry"
            );
        }
        let kernel = KernelFunctions::find(&btf);
        let mut layout = kernel_layout(&btf, &tracefs)?;
        kernel.fill_layout(&mut layout, &btf);
        Ok(Startup {
            tracefs,
            btf,
            kernel,
            layout,
        })
    }
}

/// What `fusetrace doctor` reports: every point's choice, made by really
/// loading and attaching (then detaching) the hooks.
pub struct Survey {
    pub choices: Vec<PointChoice>,
    pub kernel: KernelFunctions,
    /// Every open `/dev/fuse` file with its connection's transport, or why
    /// they could not be listed.
    pub dev_fuse_files: std::result::Result<Vec<DevFuseFile>, String>,
}

pub fn survey(backend: Option<Backend>) -> Result<Survey> {
    let Startup {
        tracefs,
        btf,
        kernel,
        layout,
    } = Startup::read_kernel()?;
    let (mut ebpf, aya_btf) = load_object(&layout)?;
    let choices = choose_all(
        &mut ebpf,
        HOOK_TABLE,
        &layout,
        &kernel,
        &btf,
        &tracefs,
        &aya_btf,
        (backend, None),
    );
    let dev_fuse_files = dev_fuse_files(&mut ebpf, &aya_btf).map_err(|e| format!("{e:#}"));
    Ok(Survey {
        choices,
        kernel,
        dev_fuse_files,
    })
}

/// Runs the `transports` iterator (`iter/task_file`) once: every
/// `/dev/fuse` file open in any process, one per process and connection.
fn dev_fuse_files(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<Vec<DevFuseFile>> {
    load_file_iterator(ebpf, btf)?;
    run_file_iterator(ebpf)
}

/// Loads the `transports` iterator (`iter/task_file`).
fn load_file_iterator(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<()> {
    let prog: &mut aya::programs::Iter = ebpf
        .program_mut("transports")
        .context("program transports missing from the eBPF object")?
        .try_into()?;
    prog.load("task_file", btf)
        .context("loading the task_file iterator")
}

/// One pass of the loaded `transports` iterator, one per process and
/// connection.
fn run_file_iterator(ebpf: &mut Ebpf) -> Result<Vec<DevFuseFile>> {
    let mut files = iterate_files(ebpf)?;
    files.sort_by_key(|f| (f.connection, f.tgid, f.fd));
    files.dedup_by_key(|f| (f.connection, f.tgid));
    Ok(files)
}

/// One pass of the loaded `transports` iterator: every `/dev/fuse`
/// descriptor of every task. Its link is closed after.
fn iterate_files(ebpf: &mut Ebpf) -> Result<Vec<DevFuseFile>> {
    use std::io::Read;
    let prog: &mut aya::programs::Iter = ebpf
        .program_mut("transports")
        .context("program transports missing from the eBPF object")?
        .try_into()?;
    let link = prog.attach().context("attaching the task_file iterator")?;
    let link = prog.take_link(link)?;
    let mut bytes = Vec::new();
    link.into_file()
        .context("opening the task_file iterator")?
        .read_to_end(&mut bytes)
        .context("reading the task_file iterator")?;
    let size = std::mem::size_of::<DevFuseFile>();
    Ok(bytes
        .chunks_exact(size)
        // SAFETY: the iterator writes whole `DevFuseFile` records (plain
        // integers); read unaligned from the byte buffer.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const DevFuseFile) })
        .collect())
}

/// The eBPF object loaded with `layout`, and aya's parse of the kernel BTF
/// for attaching. Parsed after the load on purpose: handing the loader this
/// copy (`EbpfLoader::btf`) raised the start-up peak from 47 to 56 MB.
fn load_object(layout: &KernelLayout) -> Result<(Ebpf, aya::Btf)> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this fusetrace was built without its eBPF programs (no bpf-linker at build time): run `cargo xtask setup`, then `cargo xtask build`"
        );
    }
    let memlock = privileges::raise_memlock_if_needed(crate::kernel::release().as_deref());
    let ebpf = EbpfLoader::new()
        .override_global("LAYOUT", layout, true)
        .load(EBPF_OBJECT)
        .map_err(|e| {
            if refused_for_permission(&e) {
                anyhow!("{}", privileges::bpf_refused(memlock.as_deref()))
            } else {
                anyhow!("loading the eBPF object failed: {e}")
            }
        })?;
    let aya_btf =
        aya::Btf::from_sys_fs().map_err(|e| anyhow!("reading kernel BTF for tp_btf: {e}"))?;
    Ok((ebpf, aya_btf))
}

/// Whether loading failed with EPERM from bpf(2) (a map or a program).
fn refused_for_permission(e: &aya::EbpfError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        source = err.source();
    }
    // aya's errors do not all chain their io::Error as a source.
    e.to_string().contains("Operation not permitted")
}

/// Fails with one line naming the capability when a point the run needs
/// has no hook only because the run lacks it (tracefs readable by root
/// only: the syscall tracepoints the daemon side takes on kernels without
/// kprobes or fentry); a point the kernel cannot offer at all is left to
/// the other checks.
fn require_capabilities(choices: &[PointChoice]) -> Result<()> {
    for c in choices {
        let needed = matches!(
            c.point,
            Point::Sent | Point::Ended | Point::Taken | Point::Replied
        ) && c.transport == Transport::DevFuse;
        if !needed || c.hook.is_some() {
            continue;
        }
        if let Some(why) = c.skipped.iter().find(|s| Tracefs::lacks_capability(s)) {
            // `backend: reason`: the reason alone.
            let why = why.split_once(": ").map_or(why.as_str(), |(_, r)| r);
            let at = match c.point {
                Point::Taken | Point::Replied => {
                    "the daemon side is seen at its syscall tracepoints on this kernel (no kprobes or fentry on /dev/fuse's routines)"
                }
                _ => "the send and end are seen at the classic FUSE tracepoints",
            };
            bail!(
                "{at}, and {why}; grant CAP_DAC_READ_SEARCH too, or run as root (README \"Requirements\")"
            );
        }
    }
    Ok(())
}

/// Whether the running kernel offers what `hook` needs, before trying to load it.
fn offered(hook: &Hook, btf: &Btf, tracefs: &Tracefs, kernel: &KernelFunctions) -> Result<()> {
    for (_, attach) in hook.programs {
        match attach {
            Attach::KProbe(f) => {
                if !kernel.kprobe_pmu {
                    bail!("this kernel has no kprobes (no {KPROBE_PMU}: CONFIG_KPROBES is off)");
                }
                kernel.get(f)?;
            }
            Attach::FEntry(f) | Attach::FExit(f) => {
                let r = kernel.get(f)?;
                if !r.in_btf {
                    bail!("{} is not described in this kernel's BTF", r.name);
                }
            }
            Attach::TpBtf(event) => {
                if !btf.has_type(&format!("btf_trace_{event}")) {
                    bail!("no BTF tracepoint {event} in this kernel");
                }
            }
            Attach::TracePoint(category, name) => {
                if !RecordFormat::exists(tracefs.root()?, category, name) {
                    bail!("no tracepoint {category}:{name} in this kernel");
                }
            }
        }
    }
    Ok(())
}

/// Loads and attaches every program of `hook` (once: a hook shared by
/// two points is loaded by the first), or none: when one fails, those
/// this call loaded are unloaded again. Left attached, they would run
/// beside the next hook tried for the point (arm64 7.3 with fexit refused:
/// fentry/fuse_copy_args stayed, the kprobe fallback took every request
/// a second time, and the tracker split each in two records).
fn load_hook(ebpf: &mut Ebpf, hook: &Hook, btf: &aya::Btf, kernel: &KernelFunctions) -> Result<()> {
    let modules = kernel.module_fentry.borrow().len();
    let mut loaded = Vec::new();
    let result = load_programs(ebpf, hook, btf, kernel, &mut loaded);
    if result.is_err() {
        for program in loaded {
            unload(ebpf, program);
        }
        // Dropping them closes their links.
        kernel.module_fentry.borrow_mut().truncate(modules);
    }
    result
}

/// Detaches and unloads `program`; it can be loaded again later.
fn unload(ebpf: &mut Ebpf, program: &str) {
    use aya::programs::Program;
    let _ = match ebpf.program_mut(program) {
        Some(Program::KProbe(p)) => p.unload(),
        Some(Program::TracePoint(p)) => p.unload(),
        Some(Program::BtfTracePoint(p)) => p.unload(),
        Some(Program::FEntry(p)) => p.unload(),
        Some(Program::FExit(p)) => p.unload(),
        _ => Ok(()),
    };
}

/// [`load_hook`]'s work; the programs it loads go into `loaded`.
fn load_programs(
    ebpf: &mut Ebpf,
    hook: &Hook,
    btf: &aya::Btf,
    kernel: &KernelFunctions,
    loaded: &mut Vec<&'static str>,
) -> Result<()> {
    for (program, attach) in hook.programs {
        let prog = ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the eBPF object"))?;
        match attach {
            Attach::TpBtf(event) => {
                let p: &mut BtfTracePoint = prog.try_into()?;
                // A hook shared by two points is loaded once.
                if p.fd().is_err() {
                    loaded.push(*program);
                    p.load(event, btf)
                        .with_context(|| format!("loading tp_btf/{event}"))?;
                    p.attach()
                        .with_context(|| format!("attaching tp_btf/{event}"))?;
                }
            }
            Attach::TracePoint(category, name) => {
                let p: &mut TracePoint = prog.try_into()?;
                if p.fd().is_err() {
                    loaded.push(*program);
                    p.load()
                        .with_context(|| format!("loading tracepoint {category}:{name}"))?;
                    p.attach(category, name)
                        .with_context(|| format!("attaching tracepoint {category}:{name}"))?;
                }
            }
            Attach::KProbe(f) => {
                let symbol = kernel.get(f)?.symbol(&kernel.kallsyms)?;
                let p: &mut KProbe = prog.try_into()?;
                if p.fd().is_err() {
                    loaded.push(*program);
                    p.load().context("loading a kprobe program")?;
                    p.attach(symbol, 0)
                        .with_context(|| format!("attaching a kprobe to {symbol}"))?;
                }
            }
            Attach::FEntry(f) | Attach::FExit(f) => {
                let r = kernel.get(f)?;
                let exit = matches!(attach, Attach::FExit(_));
                let kind = if exit { "fexit" } else { "fentry" };
                if let Some(module) = &r.module {
                    let mut attached = kernel.module_fentry.borrow_mut();
                    if !attached.iter().any(|m| m.program == *program) {
                        attached.push(modfentry::attach(
                            ebpf,
                            EBPF_OBJECT,
                            program,
                            (module, r.name),
                            exit,
                        )?);
                    }
                    continue;
                }
                let refused = |e: aya::programs::ProgramError| match &e {
                    aya::programs::ProgramError::LoadError { io_error, .. }
                        if io_error.raw_os_error() == Some(libc::EPERM) =>
                    {
                        anyhow!(
                            "loading {kind}/{}: the kernel refuses BPF trampoline programs (BPF_PROG_LOAD: EPERM)",
                            r.name
                        )
                    }
                    _ => anyhow!("loading {kind}/{}: {e}", r.name),
                };
                if exit {
                    let p: &mut FExit = prog.try_into()?;
                    if p.fd().is_err() {
                        loaded.push(*program);
                        p.load(r.name, btf).map_err(refused)?;
                        p.attach()
                            .with_context(|| format!("attaching fexit/{}", r.name))?;
                    }
                } else {
                    let p: &mut FEntry = prog.try_into()?;
                    if p.fd().is_err() {
                        loaded.push(*program);
                        p.load(r.name, btf).map_err(refused)?;
                        p.attach()
                            .with_context(|| format!("attaching fentry/{}", r.name))?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_filters_take_at_most_eight_of_each() {
        let eight = KernelFilter {
            pids: (1..=8).collect(),
            comms: vec![[b'a'; 16]; 8],
            connections: (1..=8).collect(),
            ..KernelFilter::default()
        };
        assert!(eight.check().is_ok());
        let nine_pids = KernelFilter {
            pids: (1..=9).collect(),
            ..eight.clone()
        };
        let err = nine_pids.check().unwrap_err().to_string();
        assert!(err.contains("at most 8 -p/--pid values (got 9)"), "{err}");
        let nine_comms = KernelFilter {
            comms: vec![[b'a'; 16]; 9],
            ..eight
        };
        let err = nine_comms.check().unwrap_err().to_string();
        assert!(err.contains("at most 8 --comm names"), "{err}");
    }
}
