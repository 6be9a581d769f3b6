//! `fusetrace serve`: the in-kernel counts (`stats`' path: no event per
//! request) as a Prometheus/OpenMetrics endpoint, for fleets that scrape.
//!
//! One direction: kernel maps -> [`mounts::MountBook`] (which mount each
//! cell is) -> [`metrics::Snapshot`] per scrape -> [`http`]. The main
//! thread owns the probes and answers scrapes the HTTP thread hands it;
//! between scrapes it follows the mount table and retires the mounts that
//! left it once their grace period is over.
//!
//! `--web.config.file` ([`web_config`]) adds TLS and basic auth; the main
//! thread reads the file again on SIGHUP and hands the HTTP thread the
//! new configuration, or keeps the old one when the new file is bad.

pub mod http;
pub mod metrics;
pub mod mounts;
pub mod web_config;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    flags::TracingFlags,
    kernel::{
        self,
        hooks::Backend,
        probes::{ProbeOptions, Probes},
    },
    pipeline::{
        connections::{MountEntry, fuse_mounts},
        session::{StopWhen, monotonic_ns},
    },
    units::parse_duration,
};
use metrics::{Bounds, Inputs, Snapshot};
use mounts::{MountBook, MountKey, fuse_holders, holders_from_files, pick_daemon};

/// `fusetrace serve`: request latency, errors and requests in flight per
/// mount and opcode, counted in the kernel, served at `/metrics` in the
/// Prometheus text format or OpenMetrics (as the client asks).
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub flags: TracingFlags,
    /// Address and port to serve on. Loopback unless you give another
    /// (e.g. 0.0.0.0:9464 for every interface). `--web.listen-address`
    /// is the same, under the exporters' name.
    #[arg(
        long,
        visible_alias = "web.listen-address",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9464"
    )]
    pub listen: SocketAddr,
    /// TLS and basic auth from a Prometheus exporter-toolkit web
    /// configuration file (`tls_server_config`, `basic_auth_users`), as
    /// node_exporter takes it; read again on SIGHUP.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Also count the stages (queue, daemon, complete) per mount and
    /// opcode; the daemon-side hooks run too, which costs more.
    #[arg(long)]
    pub stages: bool,
    /// Histogram buckets per power of two, from 2 us to 34 s: 1, 2, 4, 8
    /// or 16 (16: the kernel's own resolution, eight times the series of 2).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub buckets_per_octave: u32,
    /// Histogram bucket bounds instead, e.g. 100us,1ms,10ms,100ms,1s; each
    /// moves to the nearest edge of the kernel's buckets (printed at start).
    #[arg(long, value_name = "DURATIONS", value_delimiter = ',', value_parser = parse_duration)]
    pub buckets: Vec<Duration>,
    /// Most mounts with series of their own; the mounts above it are
    /// counted together under mountpoint="(other)".
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_mounts: usize,
    /// How long an unmounted mount's series stay before they go.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub grace: Duration,
    /// Have the kernel count each eBPF program's run time while serving
    /// (BPF_ENABLE_STATS, undone at exit), for fusetrace_bpf_program_*.
    #[arg(long)]
    pub bpf_stats: bool,
}

/// How often the mount table is read between scrapes.
const MOUNT_POLL: Duration = Duration::from_secs(1);
/// A scrape within this long of the last collection gets its results
/// again: a client polling in a loop costs no more kernel reads.
const REUSE: Duration = Duration::from_millis(200);
/// Mounts in namespaces we cannot list are looked for in the daemons'
/// mount tables at most this often.
const HOLDER_RESCAN: Duration = Duration::from_secs(10);
/// How long a new mount stays unnamed while no process holds its
/// `/dev/fuse` yet (fusermount3 handing the descriptor over).
const DAEMON_WAIT: Duration = Duration::from_secs(2);
/// How soon a mount waiting for its daemon is looked at again.
const DAEMON_POLL: Duration = Duration::from_millis(10);

impl ServeArgs {
    pub fn run(&self) -> Result<()> {
        let flags = &self.flags;
        if flags.command {
            bail!("serve runs until stopped: -c is for trace, stats, record and top");
        }
        if flags.backend == Some(Backend::Tracepoint) {
            bail!(
                "serve counts in the kernel, which the plain tracepoints cannot (they carry no request pointer); use another --backend"
            );
        }
        let bounds = if self.buckets.is_empty() {
            Bounds::per_octave(self.buckets_per_octave)?
        } else {
            let b = Bounds::snapped(&self.buckets)?;
            log::info!(
                "histogram bounds (s): {}",
                b.seconds()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            b
        };
        let filter = flags.filter()?;
        // Before the port and the probes: a bad file fails first.
        let web = web_config::shared(match &self.web_config_file {
            Some(path) => web_config::WebConfig::load(path)?,
            None => web_config::WebConfig::open(),
        });
        let scheme = if web_config::current(&web).tls.is_some() {
            "https"
        } else {
            "http"
        };
        let stop = StopWhen::on_signals(flags.duration)?;
        let reload = Arc::new(AtomicBool::new(false));
        if self.web_config_file.is_some() {
            signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
                .context("handling SIGHUP")?;
        }
        // Before attaching: a taken port or a bad address fails first.
        let listener = std::net::TcpListener::bind(self.listen)
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        // The port the kernel chose, for `--listen ADDR:0`.
        let address = listener.local_addr().context("the listening address")?;
        let mut probes = Probes::attach(&ProbeOptions {
            file_iterator: true,
            ..flags.in_kernel(&filter, self.stages)
        })?;
        let _stats_fd = if self.bpf_stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .context("--bpf-stats: the kernel refused BPF_ENABLE_STATS")?,
            )
        } else {
            None
        };
        let (to_main, messages) = mpsc::channel();
        watch_mounts(to_main.clone())?;
        let mut server = http::Server::spawn(listener, to_main, web.clone())?;
        // Tests and scripts wait for this line before scraping.
        log::info!(
            "serving {scheme}://{address}/metrics ({}); Ctrl-C to stop",
            probes.describe().join("; ")
        );
        let mut collector = Collector {
            book: MountBook::new(self.max_mounts, self.grace).waiting_for_daemons(DAEMON_WAIT),
            bounds,
            stages: self.stages,
            opcodes: filter.opcodes.clone(),
            bpf_stats: self.bpf_stats,
            build: vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                (
                    "kernel",
                    kernel::release().unwrap_or_else(|| "unknown".into()),
                ),
                ("backend", probes.sent_backend().to_string()),
            ],
            last_holder_scan: None,
            holders: Vec::new(),
            reread: true,
            cached: [None, None],
        };
        let started = Instant::now();
        let mut next_poll = started;
        let result = loop {
            if stop.flag.load(Ordering::Relaxed)
                || stop.after.is_some_and(|d| started.elapsed() >= d)
            {
                break Ok(());
            }
            if reload.swap(false, Ordering::Relaxed)
                && let Some(path) = &self.web_config_file
            {
                reload_web_config(path, &web);
            }
            if let Err(e) = probes.refresh_daemons() {
                break Err(e);
            }
            if Instant::now() >= next_poll || collector.reread {
                if let Err(e) = collector.follow_mounts(&mut probes, false) {
                    break Err(e);
                }
                next_poll = Instant::now() + MOUNT_POLL;
            }
            // A mount waiting for its daemon is looked at again soon: it
            // may live only a moment.
            let wait = if collector.reread {
                DAEMON_POLL
            } else {
                Duration::from_millis(100)
            };
            match messages.recv_timeout(wait) {
                Ok(Message::MountsChanged) => collector.reread = true,
                Ok(Message::Scrape(scrape)) => {
                    match collector.scrape(&mut probes, scrape.openmetrics) {
                        Ok(body) => {
                            let _ = scrape.reply.send(body);
                        }
                        Err(e) => break Err(e),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(anyhow::anyhow!("the HTTP server stopped"));
                }
            }
        };
        server.stop();
        drop(probes);
        result
    }
}

/// SIGHUP: the file again; a bad one keeps the configuration in force.
fn reload_web_config(path: &Path, web: &web_config::Shared) {
    match web_config::WebConfig::load(path) {
        Ok(config) => {
            *web.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
            log::info!("reloaded {}", path.display());
        }
        Err(e) => log::error!("{e:#}; the previous web configuration stays"),
    }
}

struct Collector {
    book: MountBook,
    bounds: Bounds,
    stages: bool,
    opcodes: Vec<u32>,
    bpf_stats: bool,
    /// `fusetrace_build_info`'s labels: fixed for the run.
    build: Vec<(&'static str, String)>,
    last_holder_scan: Option<Instant>,
    /// The processes holding `/dev/fuse` at the last walk over `/proc`.
    holders: Vec<mounts::Holder>,
    /// The mount table must be read again (it changed, or a race).
    reread: bool,
    /// The last body per format (text, OpenMetrics) and when it was made.
    cached: [Option<(Instant, String)>; 2],
}

impl Collector {
    /// Ties the mounts listed now to their kernel generations and retires
    /// the ones gone for the grace period. `unknown_cells`: the cells hold
    /// mounts the book does not know (look in the daemons' namespaces).
    fn follow_mounts(&mut self, probes: &mut Probes, unknown_cells: bool) -> Result<()> {
        // Mounts in other namespaces change unseen: look every round.
        let changed =
            std::mem::take(&mut self.reread) || self.holders.iter().any(|h| h.other_namespace);
        let rescan = unknown_cells
            && self
                .last_holder_scan
                .is_none_or(|t| t.elapsed() >= HOLDER_RESCAN);
        let now = Instant::now();
        if changed || rescan {
            // Generations before and after the listing: equal, or try later.
            let before = probes.generations()?;
            let text = std::fs::read_to_string("/proc/self/mountinfo")
                .context("cannot read /proc/self/mountinfo")?;
            let mut mounts = fuse_mounts(&text);
            let new = mounts.iter().any(|m| {
                let generation = before.get(&m.connection).copied().unwrap_or(0);
                !self.book.knows((m.connection, generation))
            });
            // The walk over /proc only for a mount to name, or cells of an
            // unknown one.
            if new || rescan {
                // The kernel's list of /dev/fuse files needs no capability
                // beyond the programs'; /proc's fd links need two more.
                let listed: HashSet<u32> = mounts.iter().map(|m| m.connection).collect();
                self.holders = match probes.dev_fuse_files() {
                    Ok(files) => holders_from_files(&files, &listed),
                    Err(_) => fuse_holders(),
                };
                self.last_holder_scan = Some(now);
            }
            // Mounts in other mount namespaces (rootless containers), as
            // their daemons see them.
            let mut seen: HashSet<u32> = mounts.iter().map(|m| m.connection).collect();
            for h in self.holders.iter().filter(|h| h.other_namespace) {
                if let Ok(t) = std::fs::read_to_string(format!("/proc/{}/mountinfo", h.pid)) {
                    for m in fuse_mounts(&t) {
                        if seen.insert(m.connection) {
                            mounts.push(m);
                        }
                    }
                }
            }
            let after = probes.generations()?;
            if before == after {
                let holders = &self.holders;
                let waiting = self.book.observe(&mounts, &after, now, |m: &MountEntry| {
                    pick_daemon(m, holders)
                });
                // A daemon not holding its descriptor yet: look again.
                self.reread |= waiting;
            } else {
                // A mount came or went meanwhile: read again next round.
                self.reread = true;
            }
        }
        let gone = self.book.retire(now);
        if !gone.is_empty() {
            let gone: HashSet<MountKey> = gone.into_iter().collect();
            let keys: Vec<_> = probes
                .histogram_cells()?
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| gone.contains(&(k.connection, k.generation)))
                .collect();
            probes.remove_cells(&keys)?;
        }
        Ok(())
    }

    fn scrape(&mut self, probes: &mut Probes, openmetrics: bool) -> Result<String> {
        let slot = openmetrics as usize;
        if let Some((at, body)) = &self.cached[slot]
            && at.elapsed() < REUSE
        {
            return Ok(body.clone());
        }
        let (mut cells, cells_in_kernel) = probes.histogram_cells_in_use()?;
        let keys: HashSet<MountKey> = cells
            .iter()
            .map(|(k, _)| (k.connection, k.generation))
            .collect();
        let generations: HashMap<u32, u32> = probes.generations()?;
        if !keys.iter().all(|k| self.book.knows(*k)) {
            self.follow_mounts(probes, true)?;
            self.book.observe_cells(&keys, &generations, Instant::now());
        }
        if !self.opcodes.is_empty() {
            cells.retain(|(k, _)| self.opcodes.contains(&k.opcode));
        }
        let in_flight = probes.in_flight()?;
        let counters = probes.counters();
        let programs = if self.bpf_stats || bpf_stats_enabled() {
            probes.program_stats()
        } else {
            Vec::new()
        };
        let snapshot = Snapshot::build(
            Inputs {
                cells: &cells,
                cells_in_kernel,
                generations: &generations,
                in_flight: &in_flight,
                now_ns: monotonic_ns(),
                counters: &counters,
                stages: self.stages,
                build: self.build.clone(),
                programs,
            },
            &self.book,
            &self.bounds,
        );
        let body = snapshot.encode(openmetrics);
        self.cached[slot] = Some((Instant::now(), body.clone()));
        Ok(body)
    }
}

/// What the main thread waits for.
pub enum Message {
    /// The HTTP thread asks for the metrics.
    Scrape(http::Scrape),
    /// The mount table changed: read it now, so that a mount that lives
    /// briefly still gets its name.
    MountsChanged,
}

impl From<http::Scrape> for Message {
    fn from(scrape: http::Scrape) -> Message {
        Message::Scrape(scrape)
    }
}

/// A thread that says when the mount table changes: poll(2) on mountinfo
/// reports POLLPRI then. It ends when the main thread is gone.
fn watch_mounts(to_main: mpsc::Sender<Message>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mountinfo =
        std::fs::File::open("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    std::thread::Builder::new()
        .name("fusetrace-mounts".into())
        .spawn(move || {
            loop {
                let mut fd = libc::pollfd {
                    fd: mountinfo.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(&mut fd, 1, 1000) };
                let changed = n > 0 && fd.revents & (libc::POLLPRI | libc::POLLERR) != 0;
                if changed && to_main.send(Message::MountsChanged).is_err() {
                    return;
                }
            }
        })
        .context("starting the mount watcher")?;
    Ok(())
}

fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}
