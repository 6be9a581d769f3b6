//! The embedded reference FUSE daemon (`fusetrace daemon`): an in-memory file
//! system on `fuser` that counts every request it serves, by opcode, so that
//! tests can compare its counts with what the tracer saw.
//!
//! See `dispatch.rs` for which opcodes reach (and are counted by) our code
//! and which ones fuser answers by itself.
//!
//! With `--io-uring` requests come by FUSE over io_uring instead: fuser
//! only mounts, `uring.rs` runs the rings and `wire.rs` is the codec.

mod dispatch;
mod fs;
mod uring;
mod wire;

pub use dispatch::{ServedCounts, answered_uncounted};
pub use uring::TransportCounts;

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use fuser::{MountOption, Session, SessionUnmounter};

use dispatch::{Dispatcher, Job, Lifecycle, OPCODE_SLOTS, Phase, Shared};

use crate::units::{format_duration, parse_bytes, parse_duration};

/// Largest write fuser can receive (its request buffer).
const MAX_WRITE_LIMIT: u32 = 16 << 20;
/// The kernel never uses less than one page per WRITE.
const MIN_MAX_WRITE: u32 = 4096;
const MAX_THREADS: usize = 1024;
const MAX_QUEUE_DEPTH: u16 = 64;
/// How long `mount` waits for the kernel's INIT.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `unmount` waits for the session loop to notice the unmount.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `fusetrace daemon` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Directory to mount the file system on
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Ask for FUSE_WRITEBACK_CACHE in INIT (the kernel buffers writes)
    #[arg(long)]
    pub writeback_cache: bool,
    /// Reply FOPEN_DIRECT_IO on open/create (bypass the page cache)
    #[arg(long)]
    pub direct_io: bool,
    /// Service requests on N worker threads
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_threads)]
    pub threads: usize,
    /// Sleep DURATION before answering every OP request, e.g. READ=5ms,
    /// LOOKUP=200us (repeatable)
    #[arg(long, value_name = "OP=DURATION", value_parser = parse_latency)]
    pub latency: Vec<(u32, Duration)>,
    /// Answer every OP request with the error ERRNO instead of serving
    /// it, after its --latency, e.g. STATFS=ENOSYS (an operation the daemon
    /// lacks), OPEN=EACCES (repeatable)
    #[arg(long, value_name = "OP=ERRNO", value_parser = parse_errno)]
    pub errno: Vec<(u32, i32)>,
    /// Largest WRITE request the kernel may send (4096..16MiB)
    #[arg(long, value_name = "BYTES", value_parser = parse_max_write)]
    pub max_write: Option<u32>,
    /// Most background requests (readahead, async writes) the kernel may queue
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_background: Option<u16>,
    /// Write the per-opcode counts as JSON here on SIGUSR1 and at exit
    #[arg(long, value_name = "PATH")]
    pub counts_file: Option<PathBuf>,
    /// Attribute and entry cache timeout given to the kernel (0s: no caching)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Serve requests by FUSE over io_uring (Linux 6.14+; needs Y in
    /// /sys/module/fuse/parameters/enable_uring): one queue thread per CPU
    #[arg(long, conflicts_with = "threads")]
    pub io_uring: bool,
    /// With --io-uring: ring entries (requests in service) per CPU queue
    #[arg(long, value_name = "N", default_value_t = 4, requires = "io_uring",
          value_parser = clap::value_parser!(u16).range(1..=MAX_QUEUE_DEPTH as i64))]
    pub queue_depth: u16,
}

fn parse_threads(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid thread count `{text}`: expected 1..={MAX_THREADS}"
        )),
    }
}

fn parse_max_write(text: &str) -> Result<u32, String> {
    let n = parse_bytes(text)?;
    if (u64::from(MIN_MAX_WRITE)..=u64::from(MAX_WRITE_LIMIT)).contains(&n) {
        Ok(n as u32)
    } else {
        Err(format!(
            "--max-write {text} out of range: expected {MIN_MAX_WRITE}..={MAX_WRITE_LIMIT} bytes"
        ))
    }
}

/// Parses one `--latency` spec: `OP=DURATION`, e.g. `READ=5ms`.
pub fn parse_latency(text: &str) -> Result<(u32, Duration), String> {
    let (op, delay) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid latency `{text}`: expected OP=DURATION, e.g. READ=5ms"))?;
    let opcode = crate::pipeline::opcode::parse(op)?;
    if opcode as usize >= OPCODE_SLOTS {
        return Err(format!("latency cannot be injected for opcode `{op}`"));
    }
    let delay = parse_duration(delay)?;
    Ok((opcode, delay))
}

/// Parses one `--errno` spec: `OP=ERRNO`, e.g. `STATFS=ENOSYS`.
pub fn parse_errno(text: &str) -> Result<(u32, i32), String> {
    let (op, errno) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid errno `{text}`: expected OP=ERRNO, e.g. STATFS=ENOSYS"))?;
    let opcode = crate::pipeline::opcode::parse(op)?;
    refusable(opcode)?;
    Ok((opcode, crate::pipeline::errno::parse(errno)?))
}

/// Whether `--errno` can answer the opcode: not INIT (no mount), not
/// DESTROY, nor requests without a reply, nor those fuser answers itself.
fn refusable(opcode: u32) -> Result<(), String> {
    use dispatch::op;
    if opcode as usize >= OPCODE_SLOTS
        || answered_uncounted(opcode)
        || matches!(
            opcode,
            op::INIT | op::DESTROY | op::FORGET | op::BATCH_FORGET
        )
    {
        return Err(format!(
            "no error can be injected for opcode {}",
            crate::pipeline::opcode::name(opcode)
        ));
    }
    Ok(())
}

/// How the daemon behaves; `DaemonConfig::default()` is a plain daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub writeback_cache: bool,
    pub direct_io: bool,
    /// Worker threads (1: serve on the session thread).
    pub threads: usize,
    /// Delay before answering each request of an opcode (last one wins).
    pub latency: Vec<(u32, Duration)>,
    /// The error each listed opcode is answered with instead (last one wins).
    pub errno: Vec<(u32, i32)>,
    pub max_write: Option<u32>,
    pub max_background: Option<u16>,
    /// Attribute/entry cache timeout in replies.
    pub ttl: Duration,
    /// Serve by FUSE over io_uring instead of read/write on /dev/fuse
    /// (`threads` must then be 1: each CPU queue has its own thread).
    pub io_uring: bool,
    /// Ring entries per queue (io_uring only).
    pub queue_depth: u16,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            writeback_cache: false,
            direct_io: false,
            threads: 1,
            latency: Vec::new(),
            errno: Vec::new(),
            max_write: None,
            max_background: None,
            ttl: Duration::from_secs(1),
            io_uring: false,
            queue_depth: 4,
        }
    }
}

impl From<&DaemonArgs> for DaemonConfig {
    fn from(a: &DaemonArgs) -> Self {
        DaemonConfig {
            writeback_cache: a.writeback_cache,
            direct_io: a.direct_io,
            threads: a.threads,
            latency: a.latency.clone(),
            errno: a.errno.clone(),
            max_write: a.max_write,
            max_background: a.max_background,
            ttl: a.ttl,
            io_uring: a.io_uring,
            queue_depth: a.queue_depth,
        }
    }
}

impl DaemonConfig {
    fn validate(&self) -> Result<()> {
        if !(1..=MAX_THREADS).contains(&self.threads) {
            bail!("threads must be 1..={MAX_THREADS}, not {}", self.threads);
        }
        if let Some(w) = self.max_write
            && !(MIN_MAX_WRITE..=MAX_WRITE_LIMIT).contains(&w)
        {
            bail!("max-write must be {MIN_MAX_WRITE}..={MAX_WRITE_LIMIT} bytes, not {w}");
        }
        if self.max_background == Some(0) {
            bail!("max-background must be at least 1");
        }
        if self.io_uring && self.threads != 1 {
            bail!("--threads cannot be combined with --io-uring (one thread per CPU queue)");
        }
        if !(1..=MAX_QUEUE_DEPTH).contains(&self.queue_depth) {
            bail!(
                "queue depth must be 1..={MAX_QUEUE_DEPTH}, not {}",
                self.queue_depth
            );
        }
        for (op, _) in &self.latency {
            if *op as usize >= OPCODE_SLOTS {
                bail!(
                    "latency cannot be injected for opcode {}",
                    crate::pipeline::opcode::name(*op)
                );
            }
        }
        for (op, errno) in &self.errno {
            refusable(*op).map_err(|e| anyhow!(e))?;
            if !(1..4096).contains(errno) {
                bail!("errno must be a positive error number, not {errno}");
            }
        }
        Ok(())
    }

    fn errno_table(&self) -> [libc::c_int; OPCODE_SLOTS] {
        let mut table = [0; OPCODE_SLOTS];
        for (op, e) in &self.errno {
            table[*op as usize] = *e;
        }
        table
    }

    fn latency_table(&self) -> [Duration; OPCODE_SLOTS] {
        let mut table = [Duration::ZERO; OPCODE_SLOTS];
        for (op, d) in &self.latency {
            table[*op as usize] = *d;
        }
        table
    }
}

/// Writes the counts as JSON through a temporary file and a rename, so a
/// reader never sees a partial file.
pub fn write_counts_file(path: &Path, counts: &ServedCounts) -> Result<()> {
    if path.file_name().is_none() {
        bail!("counts file {} has no file name", path.display());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // An unpredictable name in the same directory, removed on failure.
    let write = || -> io::Result<()> {
        let mut f = tempfile::NamedTempFile::new_in(dir)?;
        f.write_all(counts.to_json().as_bytes())?;
        f.write_all(b"\n")?;
        f.as_file().sync_all()?;
        f.persist(path).map(drop).map_err(|e| e.error)
    };
    write().map_err(|e| anyhow!("writing counts file {}: {e}", path.display()))
}

/// Waits for a mounted daemon's session to end (unmounted by us or anybody).
#[derive(Clone, Debug)]
pub struct SessionEnd(Arc<Lifecycle>);

impl SessionEnd {
    /// Blocks until the session loop has stopped.
    pub fn wait(&self) {
        self.0.wait_for(None, |p| *p == Phase::Ended);
    }

    /// Like `wait` with a limit; true if the session has ended.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.0.wait_for(Some(timeout), |p| *p == Phase::Ended) == Phase::Ended
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detach {
    /// Unmounted (or no longer there): the session loop will end.
    Done,
    /// Still mounted, but something else is mounted over it.
    Covered,
}

/// A mounted file system served by background threads of this process.
/// Dropping it unmounts.
pub struct MountedDaemon {
    mountpoint: PathBuf,
    counts: ServedCounts,
    lifecycle: Arc<Lifecycle>,
    session: Option<JoinHandle<io::Result<()>>>,
    workers: Vec<JoinHandle<()>>,
    unmounter: Option<SessionUnmounter>,
    /// The FUSE connection number (minor device of the mount).
    connection: Option<u32>,
    /// The `fusermount3 ... auto_unmount` helper fuser started (and never reaps).
    helper: Option<i32>,
    /// io_uring transport: where requests were taken from.
    transport: Option<TransportCounts>,
}

impl std::fmt::Debug for MountedDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedDaemon")
            .field("mountpoint", &self.mountpoint)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl MountedDaemon {
    /// Mounts the file system at `mountpoint` and returns once the kernel's
    /// INIT has been answered, i.e. the mount is usable.
    pub fn mount(mountpoint: &Path, config: DaemonConfig) -> Result<MountedDaemon> {
        config.validate()?;
        let mountpoint = preflight(mountpoint)?;
        if config.io_uring {
            uring::preflight()?;
        }
        let lifecycle = Arc::new(Lifecycle::new());
        let counts = ServedCounts::default();
        let shared = Arc::new(Shared {
            fs: fs::MemFs::new(),
            counts: counts.clone(),
            latency: config.latency_table(),
            errno: config.errno_table(),
            ttl: config.ttl,
            direct_io: config.direct_io,
        });
        let options = [
            MountOption::FSName("fusetrace".to_string()),
            MountOption::Subtype("fusetrace".to_string()),
            MountOption::DefaultPermissions,
            MountOption::AllowOther,
            // fusermount3 stays behind and unmounts if this process dies.
            MountOption::AutoUnmount,
        ];
        let mount_error = |e: io::Error| {
            anyhow!(
                "cannot mount FUSE file system at {}: {e} (is fusermount3 from fuse3 working?)",
                mountpoint.display()
            )
        };
        let (session, unmounter, workers, transport) = if config.io_uring {
            // fuser only mounts; the session thread speaks the protocol.
            let mut session =
                Session::new(uring::MountOnly, &mountpoint, &options).map_err(mount_error)?;
            let unmounter = session.unmount_callable();
            let dev = session
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating the /dev/fuse descriptor")?;
            let transport = TransportCounts::default();
            let setup = uring::RingSetup {
                writeback_cache: config.writeback_cache,
                max_write: config.max_write,
                max_background: config.max_background,
                depth: usize::from(config.queue_depth),
            };
            let (lc, counts) = (Arc::clone(&lifecycle), transport.clone());
            let handle = thread::Builder::new()
                .name("fuse-session".to_string())
                .spawn(move || {
                    let result = uring::run_session(dev, shared, Arc::clone(&lc), setup, counts);
                    lc.loop_done.store(true, Ordering::SeqCst);
                    drop(session);
                    lc.set(Phase::Ended);
                    result
                })
                .context("spawning the FUSE session thread")?;
            (handle, unmounter, Vec::new(), Some(transport))
        } else {
            let (pool, workers) = if config.threads > 1 {
                let (tx, workers) = spawn_workers(config.threads)?;
                (Some(tx), workers)
            } else {
                (None, Vec::new())
            };
            let dispatcher = Dispatcher {
                shared,
                pool,
                lifecycle: Arc::clone(&lifecycle),
                writeback_cache: config.writeback_cache,
                max_write: config.max_write,
                max_background: config.max_background,
            };
            let mut session = match Session::new(dispatcher, &mountpoint, &options) {
                Ok(s) => s,
                Err(e) => {
                    // The dispatcher (and the workers' channel) went with the error.
                    join_all(workers);
                    return Err(mount_error(e));
                }
            };
            let unmounter = session.unmount_callable();
            let lc = Arc::clone(&lifecycle);
            let handle = thread::Builder::new()
                .name("fuse-session".to_string())
                .spawn(move || {
                    let result = session.run();
                    lc.loop_done.store(true, Ordering::SeqCst);
                    // Drops the dispatcher (the workers then drain and stop) and
                    // the mount handle (fusermount3 cleans up if still mounted).
                    drop(session);
                    lc.set(Phase::Ended);
                    result
                })
                .context("spawning the FUSE session thread")?;
            (handle, unmounter, workers, None)
        };
        let mut daemon = MountedDaemon {
            mountpoint,
            counts,
            lifecycle,
            session: Some(session),
            workers,
            unmounter: Some(unmounter),
            connection: None,
            helper: None,
            transport,
        };
        daemon.helper = find_helper(&daemon.mountpoint);
        match daemon
            .lifecycle
            .wait_for(Some(INIT_TIMEOUT), |p| *p != Phase::Starting)
        {
            Phase::Ready => {
                daemon.connection = find_fuse_mount(&daemon.mountpoint);
                Ok(daemon)
            }
            Phase::Failed(msg) => {
                let _ = daemon.teardown();
                Err(anyhow!("mounting {}: {msg}", daemon.mountpoint.display()))
            }
            Phase::Ended => {
                let err = daemon.teardown().err();
                Err(anyhow!(
                    "the FUSE session at {} ended before INIT{}",
                    daemon.mountpoint.display(),
                    err.map(|e| format!(": {e:#}")).unwrap_or_default()
                ))
            }
            Phase::Starting => {
                let _ = daemon.teardown();
                Err(anyhow!(
                    "the kernel sent no FUSE INIT for {} within {}",
                    daemon.mountpoint.display(),
                    format_duration(INIT_TIMEOUT)
                ))
            }
        }
    }

    /// The (canonical) mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The live per-opcode counters.
    pub fn counts(&self) -> ServedCounts {
        self.counts.clone()
    }

    /// With `io_uring`: how many requests were taken from the ring and which
    /// ones were read from /dev/fuse. `None` for the /dev/fuse transport.
    pub fn transport(&self) -> Option<TransportCounts> {
        self.transport.clone()
    }

    /// Requests taken from io_uring entries (0 for the /dev/fuse transport).
    pub fn served_by_ring(&self) -> u64 {
        self.transport
            .as_ref()
            .map_or(0, TransportCounts::ring_total)
    }

    /// A handle that waits for the session to end (e.g. `fusermount3 -u`).
    pub fn session_end(&self) -> SessionEnd {
        SessionEnd(Arc::clone(&self.lifecycle))
    }

    /// Unmounts and joins the service threads.
    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let end = self.session_end();
        let started = Instant::now();
        let (mut problem, mut state, mut aborted) = (None, Detach::Covered, false);
        let mut step = Duration::ZERO;
        while !end.wait_timeout(step) {
            step = Duration::from_millis(50);
            if state == Detach::Covered {
                // Retried: whatever covers our mount may go away.
                state = self.detach().unwrap_or_else(|e| {
                    problem = Some(e);
                    Detach::Done
                });
            }
            let waited = started.elapsed();
            if waited >= STOP_TIMEOUT && !aborted {
                // Still in use (lazily detached) or stuck: cut the connection.
                self.abort_connection();
                aborted = true;
            }
            if waited >= 2 * STOP_TIMEOUT {
                let shown = self.mountpoint.display();
                return Err(match (problem, state) {
                    (Some(e), _) => e,
                    (None, Detach::Covered) => anyhow!(
                        "cannot unmount {shown}: another file system is mounted on top of it"
                    ),
                    (None, Detach::Done) => {
                        anyhow!("the FUSE session at {shown} did not stop after unmounting")
                    }
                });
            }
        }
        let result = session
            .join()
            .map_err(|_| anyhow!("the FUSE session thread panicked"))?;
        join_all(std::mem::take(&mut self.workers));
        if let Some(pid) = self.helper.take() {
            reap(pid);
        }
        if let Some(e) = problem {
            return Err(e);
        }
        // ENODEV (unmounted) ends the loop with Ok. ECONNABORTED ends it too
        // when the connection shuts down: after we cut it (still in use
        // after STOP_TIMEOUT), and also on a plain unmount when a daemon
        // thread had just taken a request as the kernel shut the queue
        // (`fuse_dev_do_read`: "!fpq->connected" -> -ECONNABORTED; seen
        // about once in 15 runs of the daemon tests). We are stopping the
        // session either way. Anything else is worth a word.
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            r => {
                r.with_context(|| format!("serving FUSE requests at {}", self.mountpoint.display()))
            }
        }
    }

    /// Removes the mount from the tree (synchronously when possible).
    fn detach(&mut self) -> Result<Detach> {
        // Only unmount the mount point while our connection is what is mounted
        // on top there: never unmount something mounted over it later.
        let stack = fuse_mount_stack(&self.mountpoint);
        let ours =
            |c: &Option<u32>| c.is_some() && (self.connection.is_none() || *c == self.connection);
        match stack.last() {
            Some(top) if ours(top) => {}
            _ if stack.iter().any(ours) => return Ok(Detach::Covered),
            _ => return Ok(Detach::Done), // gone already
        }
        let path = CString::new(self.mountpoint.as_os_str().as_bytes())
            .context("mount point contains a NUL byte")?;
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            return Ok(Detach::Done);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) => {
                // Files still open: detach now; the session ends at the last
                // close, or `teardown` cuts the connection after
                // STOP_TIMEOUT. Not cut here: once the last file closes the
                // connection's number can go to a new mount at once, and an
                // abort written to it then would cut somebody else's.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    let e = io::Error::last_os_error();
                    bail!("unmounting {}: {e}", self.mountpoint.display());
                }
                Ok(Detach::Done)
            }
            Some(libc::EPERM) => {
                // Not root: let fusermount3 (auto_unmount) do it.
                if let Some(mut u) = self.unmounter.take() {
                    u.unmount()
                        .with_context(|| format!("unmounting {}", self.mountpoint.display()))?;
                }
                Ok(Detach::Done)
            }
            Some(libc::EINVAL) => Ok(Detach::Done), // no longer mounted
            _ => bail!("unmounting {}: {err}", self.mountpoint.display()),
        }
    }

    /// Best effort: `echo 1 > /sys/fs/fuse/connections/N/abort` (needs fusectl).
    fn abort_connection(&self) {
        if let Some(conn) = self.connection {
            let _ = std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), b"1");
        }
    }
}

impl Drop for MountedDaemon {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::error!("daemon: {e:#}");
        }
    }
}

fn spawn_workers(n: usize) -> Result<(mpsc::Sender<Job>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let rx = Arc::clone(&rx);
        let worker = thread::Builder::new()
            .name(format!("fuse-worker-{i}"))
            .spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        // A bug in one operation must not take the worker down;
                        // its reply, dropped, answers EIO.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => break, // the session is gone
                    }
                }
            })
            .context("spawning FUSE worker threads")?;
        workers.push(worker);
    }
    Ok((tx, workers))
}

/// The pid of our `fusermount3` child serving `mountpoint`, if any.
fn find_helper(mountpoint: &Path) -> Option<i32> {
    let me = std::process::id();
    let want = mountpoint.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
            let (head, tail) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1;
            let ppid: u32 = tail.split(' ').nth(1)?.parse().ok()?;
            if ppid != me || !comm.starts_with("fusermount") {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let last = cmdline
                .strip_suffix(&[0])
                .unwrap_or(&cmdline)
                .rsplit(|b| *b == 0)
                .next()?;
            (last == want).then_some(pid)
        })
}

/// Collects the exit status of `pid` (it exits once the session is gone),
/// so that a long-lived process does not accumulate zombies.
fn reap(pid: i32) {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 || Instant::now() >= until {
            return; // reaped, not our child (-1), or still running: leave it
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn join_all(workers: Vec<JoinHandle<()>>) {
    for w in workers {
        let _ = w.join();
    }
}

/// Checks what a mount needs, with one clear message per problem; returns
/// the canonical mount point.
fn preflight(mountpoint: &Path) -> Result<PathBuf> {
    let shown = mountpoint.display();
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("mountpoint {shown} is not a directory"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("mountpoint {shown} does not exist")
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mountpoint {shown} is a dead FUSE mount ({e}): run `fusermount3 -u {shown}` first"
        ),
        Err(e) => bail!("cannot access mountpoint {shown}: {e}"),
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: install fuse3 and load the fuse module (modprobe fuse)");
    }
    if find_in_path("fusermount3").is_none() && find_in_path("fusermount").is_none() {
        bail!("fusermount3 is not in PATH: install fuse3");
    }
    if unsafe { libc::geteuid() } != 0 && !user_allow_other() {
        bail!(
            "the daemon must run as root (it mounts with allow_other; \
             or enable user_allow_other in /etc/fuse.conf)"
        );
    }
    mountpoint
        .canonicalize()
        .with_context(|| format!("resolving mountpoint {shown}"))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/bin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|conf| {
        conf.lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
    })
}

/// The mounts stacked at `mountpoint`, bottom first, from mountinfo (no
/// request to the file system): the FUSE connection number (device minor)
/// for FUSE mounts, `None` for others.
fn fuse_mount_stack(mountpoint: &Path) -> Vec<Option<u32>> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| fuse_mount_stack_in(&info, mountpoint))
        .unwrap_or_default()
}

fn fuse_mount_stack_in(info: &str, mountpoint: &Path) -> Vec<Option<u32>> {
    crate::pipeline::connections::parse_mountinfo(info)
        .into_iter()
        .filter(|m| m.mount_point == mountpoint)
        .map(|m| m.is_fuse().then_some(m.connection))
        .collect()
}

/// The connection number of the topmost mount at `mountpoint` if it is FUSE.
fn find_fuse_mount(mountpoint: &Path) -> Option<u32> {
    fuse_mount_stack(mountpoint).last().copied().flatten()
}

/// `fusetrace daemon MOUNTPOINT ...`: mounts, prints
/// `mounted <MOUNTPOINT> pid <PID>` once usable, serves until SIGINT/SIGTERM,
/// the death of the parent process, or an external unmount; then unmounts,
/// writes the counts file and returns.
pub fn run(args: &DaemonArgs) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::iterator::Signals;

    // Handlers first: a signal that arrives while mounting is kept for later.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("installing signal handlers")?;
    let parent = unsafe { libc::getppid() };
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_PDEATHSIG)");
    }
    if unsafe { libc::getppid() } != parent {
        // The parent died before prctl took effect.
        unsafe { libc::raise(libc::SIGTERM) };
    }
    let daemon = MountedDaemon::mount(&args.mountpoint, DaemonConfig::from(args))?;
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "mounted {} pid {}",
            args.mountpoint.display(),
            std::process::id()
        )
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
    }
    // An external unmount ends the signal loop too.
    let handle = signals.handle();
    let end = daemon.session_end();
    thread::Builder::new()
        .name("fuse-watch".to_string())
        .spawn(move || {
            end.wait();
            handle.close();
        })
        .context("spawning the session watcher")?;
    for signal in signals.forever() {
        if signal != SIGUSR1 {
            break;
        }
        if let Some(path) = &args.counts_file {
            match write_counts_file(path, &daemon.counts()) {
                // Tests wait for this line to know the snapshot is on disk.
                Ok(()) => {
                    let mut out = io::stdout().lock();
                    let _ = writeln!(out, "counts written to {}", path.display());
                    let _ = out.flush();
                }
                Err(e) => log::error!("daemon: {e:#}"),
            }
        }
    }
    let counts = daemon.counts();
    let unmounted = daemon.unmount();
    if let Some(path) = &args.counts_file {
        write_counts_file(path, &counts)?;
    }
    unmounted
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeMap;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        daemon: DaemonArgs,
    }

    #[test]
    fn every_fuse_opcode_has_a_slot() {
        // CUSE_INIT (4096) is a character-device opcode fuser never hands on.
        for (n, name) in crate::pipeline::opcode::OPCODES {
            if *n != crate::pipeline::opcode::CUSE_INIT {
                assert!((*n as usize) < OPCODE_SLOTS, "{name} ({n}) has no slot");
            }
        }
    }

    #[test]
    fn latency_specs() {
        assert_eq!(
            parse_latency("READ=5ms").unwrap(),
            (15, Duration::from_millis(5))
        );
        assert_eq!(
            parse_latency("lookup=200us").unwrap(),
            (1, Duration::from_micros(200))
        );
        assert_eq!(
            parse_latency("FUSE_WRITE=1s").unwrap(),
            (16, Duration::from_secs(1))
        );
        assert!(parse_latency("READ").unwrap_err().contains("OP=DURATION"));
        // A bare number is seconds.
        assert_eq!(
            parse_latency("READ=5").unwrap(),
            (15, Duration::from_secs(5))
        );
        assert!(
            parse_latency("READ=5 parsecs")
                .unwrap_err()
                .contains("invalid duration")
        );
        assert!(
            parse_latency("REED=5ms")
                .unwrap_err()
                .contains("unknown FUSE opcode")
        );
        assert!(
            parse_latency("CUSE_INIT=5ms")
                .unwrap_err()
                .contains("cannot be injected")
        );
    }

    #[test]
    fn errno_specs() {
        assert_eq!(parse_errno("STATFS=ENOSYS").unwrap(), (17, 38));
        assert_eq!(parse_errno("open=eacces").unwrap(), (14, 13));
        assert_eq!(parse_errno("GETATTR=5").unwrap(), (3, 5));
        assert!(parse_errno("OPEN").unwrap_err().contains("OP=ERRNO"));
        assert!(
            parse_errno("OPEN=EWHAT")
                .unwrap_err()
                .contains("unknown errno")
        );
        assert!(
            parse_errno("REED=EIO")
                .unwrap_err()
                .contains("unknown FUSE opcode")
        );
        for no_reply in [
            "FORGET",
            "BATCH_FORGET",
            "INIT",
            "DESTROY",
            "INTERRUPT",
            "STATX",
        ] {
            assert!(
                parse_errno(&format!("{no_reply}=EIO"))
                    .unwrap_err()
                    .contains("no error can be injected"),
                "{no_reply}"
            );
        }
        let config = DaemonConfig {
            errno: vec![(17, 38), (14, 13), (17, 5)],
            ..DaemonConfig::default()
        };
        assert!(config.validate().is_ok());
        let table = config.errno_table();
        assert_eq!(
            (table[17], table[14], table[3]),
            (5, 13, 0),
            "last one wins"
        );
        let bad = DaemonConfig {
            errno: vec![(dispatch::op::INIT, 5)],
            ..DaemonConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn cli_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "/mnt",
            "--writeback-cache",
            "--direct-io",
            "--threads",
            "4",
            "--latency",
            "READ=5ms",
            "--latency",
            "LOOKUP=200us",
            "--errno",
            "STATFS=ENOSYS",
            "--max-write",
            "128K",
            "--max-background",
            "32",
            "--counts-file",
            "/tmp/c.json",
        ])
        .unwrap();
        let config = DaemonConfig::from(&cli.daemon);
        assert!(config.writeback_cache && config.direct_io);
        assert_eq!(config.threads, 4);
        assert_eq!(
            config.latency,
            [
                (15, Duration::from_millis(5)),
                (1, Duration::from_micros(200))
            ]
        );
        assert_eq!(config.errno, [(17, 38)]);
        assert_eq!(config.max_write, Some(128 << 10));
        assert_eq!(config.max_background, Some(32));
        assert_eq!(config.ttl, Duration::from_secs(1));
        assert_eq!(
            cli.daemon.counts_file.as_deref(),
            Some(Path::new("/tmp/c.json"))
        );
        let table = config.latency_table();
        assert_eq!(table[15], Duration::from_millis(5));
        assert_eq!(table[16], Duration::ZERO);

        let ring = Cli::try_parse_from(["x", "/mnt", "--io-uring", "--queue-depth", "8"]).unwrap();
        let config = DaemonConfig::from(&ring.daemon);
        assert!(config.io_uring);
        assert_eq!((config.threads, config.queue_depth), (1, 8));
        assert!(config.validate().is_ok());
        let both = DaemonConfig {
            threads: 2,
            ..config
        };
        assert!(
            both.validate()
                .unwrap_err()
                .to_string()
                .contains("--io-uring")
        );

        let plain = Cli::try_parse_from(["x", "/mnt"]).unwrap();
        assert_eq!(plain.daemon.threads, 1);
        assert!(!plain.daemon.io_uring);
        assert!(plain.daemon.latency.is_empty());
        for bad in [
            &["x", "/mnt", "--threads", "0"][..],
            &["x", "/mnt", "--latency", "READ=5x"],
            &["x", "/mnt", "--max-write", "100"],
            &["x", "/mnt", "--max-background", "0"],
            &["x", "/mnt", "--queue-depth", "8"],
            &["x", "/mnt", "--io-uring", "--threads", "2"],
            &["x", "/mnt", "--io-uring", "--queue-depth", "0"],
            &["x"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_snapshot_and_file() {
        let counts = ServedCounts::default();
        counts.add(1);
        counts.add(1);
        counts.add(3);
        counts.add(4096); // out of range: ignored
        let clone = counts.clone();
        clone.add(15);
        assert_eq!(counts.get(1), 2);
        let snap = counts.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!(snap["LOOKUP"], 2);
        assert_eq!(snap["GETATTR"], 1);
        assert_eq!(snap["READ"], 1);
        assert_eq!(counts.to_json(), r#"{"GETATTR":1,"LOOKUP":2,"READ":1}"#);

        let dir = std::env::temp_dir().join(format!("fusetrace-counts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("counts.json");
        write_counts_file(&path, &counts).unwrap();
        let back: BTreeMap<String, u64> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, snap);
        // Only the final file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mountinfo_parsing() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:45 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse.fusetrace fusetrace rw,user_id=0
41 22 0:46 / /tmp/c rw - fuse fusetrace rw
42 41 0:47 / /tmp/c rw - tmpfs tmpfs rw
";
        assert_eq!(fuse_mount_stack_in(info, Path::new("/tmp/a b")), [Some(45)]);
        assert_eq!(
            fuse_mount_stack_in(info, Path::new("/tmp/c")),
            [Some(46), None]
        );
        assert_eq!(fuse_mount_stack_in(info, Path::new("/")), [None]);
        assert!(fuse_mount_stack_in(info, Path::new("/tmp/x")).is_empty());
    }

    #[test]
    fn preflight_errors() {
        let missing = Path::new("/nonexistent/fusetrace/mnt");
        let err = MountedDaemon::mount(missing, DaemonConfig::default()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let file = std::env::current_exe().unwrap();
        let err = MountedDaemon::mount(&file, DaemonConfig::default()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let config = DaemonConfig {
            threads: 0,
            ..DaemonConfig::default()
        };
        let err = MountedDaemon::mount(Path::new("/tmp"), config).unwrap_err();
        assert!(err.to_string().contains("threads"), "{err}");
    }
}
