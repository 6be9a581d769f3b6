//! The io_uring transport of the reference daemon (`fusetrace daemon
//! --io-uring`, FUSE over io_uring, Linux 6.14+).
//!
//! fuser only mounts (its `Session` is never run); we speak the protocol
//! ourselves with the codec in `wire.rs`, because fuser 0.15 cannot
//! negotiate `FUSE_OVER_IO_URING` (an INIT `flags2` bit) nor serve requests
//! that arrive in ring buffers.
//!
//! How it runs:
//! * The session thread reads INIT from /dev/fuse with read(2) and answers
//!   it with FUSE_INIT_EXT | FUSE_OVER_IO_URING (the kernel refuses ring
//!   commands until INIT is answered: -EAGAIN).
//! * It then starts one thread per possible CPU (the kernel has one queue
//!   per CPU, and a request goes to the queue of the CPU its sender runs
//!   on; the ring only takes requests once every queue has an entry). Each
//!   queue thread owns an io_uring created with SQE128 and registers a few
//!   entries (FUSE_IO_URING_CMD_REGISTER): a header buffer and a payload
//!   buffer each. A completion with res 0 means the kernel put a request in
//!   the entry; the thread serves it inline (after the injected latency),
//!   writes the reply into the same buffers and submits
//!   FUSE_IO_URING_CMD_COMMIT_AND_FETCH, which hands the reply over and
//!   waits for the next request.
//! * FORGET, BATCH_FORGET and INTERRUPT keep coming by read(2) on
//!   /dev/fuse, so the session thread goes on reading it, and serves
//!   anything else that shows up there with the same codec (nothing is left
//!   unanswered should the kernel fall back to /dev/fuse).
//! * On unmount the kernel completes every pending ring command with
//!   -ENOTCONN and /dev/fuse reads fail with ENODEV: the queue threads end
//!   once none of their commands is in flight any more (only then are their
//!   buffers freed), the session thread joins them and returns.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Result, bail};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::dispatch::{Lifecycle, OPCODE_SLOTS, Phase, ServedCounts, Shared, op};
use super::wire::{self, IN_HEADER_LEN, InitIn, InitOut, OUT_HEADER_LEN, Reply};

use crate::kernel::hooks::URING_PARAMETER as ENABLE_URING;
/// Largest write fuser accepts, and its default max_write (kept the same).
const MAX_WRITE_SIZE: u32 = 16 << 20;
/// FUSE_MIN_READ_BUFFER: the kernel's floor for read and payload buffers.
const MIN_BUFFER: usize = 8192;
const PAGE: usize = 4096;
/// FUSE_DEFAULT_MAX_PAGES_PER_REQ.
const DEFAULT_MAX_PAGES: usize = 32;

/// `enum fuse_uring_cmd`.
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

// `struct fuse_uring_req_header`: in_out[128], op_in[128], then
// `struct fuse_uring_ent_in_out { u64 flags; u64 commit_id; u32 payload_sz;
// u32 padding; u64 reserved; }`.
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const COMMIT_ID: usize = ENT_IN_OUT + 8;
const PAYLOAD_SZ: usize = ENT_IN_OUT + 16;
const REQ_HEADER_LEN: usize = ENT_IN_OUT + 32;
/// Highest protocol minor we answer with: 7.42 introduced FUSE over
/// io_uring; our structs are the ones this minor defines.
const PROTO_MINOR: u32 = 42;
/// How long the session thread waits for the queues to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where requests were taken from. Cheap to clone; clones share counters.
#[derive(Clone, Debug, Default)]
pub struct TransportCounts {
    ring: ServedCounts,
    dev: ServedCounts,
}

impl TransportCounts {
    /// Requests taken from io_uring entries, by opcode, whether or not they
    /// count as served (e.g. STATX, answered ENOSYS, is here).
    pub fn ring(&self) -> ServedCounts {
        self.ring.clone()
    }

    /// Requests read from /dev/fuse, by opcode (INIT, FORGET, ...), whether
    /// or not they count as served.
    pub fn dev(&self) -> ServedCounts {
        self.dev.clone()
    }

    /// All requests taken from io_uring entries.
    pub fn ring_total(&self) -> u64 {
        self.ring.by_opcode().values().sum()
    }
}

/// The fuser file system handed to `Session::new` only to mount: the
/// session is never run, so none of its methods is ever called.
pub(crate) struct MountOnly;

impl fuser::Filesystem for MountOnly {}

/// INIT and queue settings.
#[derive(Debug, Clone)]
pub(crate) struct RingSetup {
    pub writeback_cache: bool,
    pub max_write: Option<u32>,
    pub max_background: Option<u16>,
    /// Ring entries registered per queue.
    pub depth: usize,
}

/// Checks, before mounting, that this kernel has FUSE over io_uring and
/// that it is switched on. Never writes the parameter.
pub(crate) fn preflight() -> Result<()> {
    match std::fs::read_to_string(ENABLE_URING) {
        Ok(v) if v.trim() == "Y" || v.trim() == "1" => Ok(()),
        Ok(_) => bail!("FUSE over io_uring is off: write Y to {ENABLE_URING} (as root)"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "this kernel has no FUSE over io_uring (needs Linux 6.14+ with CONFIG_FUSE_IO_URING)"
        ),
        Err(e) => bail!("cannot read {ENABLE_URING}: {e}"),
    }
}

/// The number of possible CPUs, i.e. the kernel's number of ring queues
/// (`num_possible_cpus()`), from a list like "0-3,8-11".
fn possible_cpus() -> io::Result<u16> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse the possible CPUs {text:?}"),
        )
    })
}

fn parse_cpu_list(text: &str) -> Option<u16> {
    let mut n = 0u32;
    for part in text.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?),
            None => {
                let c = part.parse::<u32>().ok()?;
                (c, c)
            }
        };
        n += hi.checked_sub(lo)? + 1;
    }
    u16::try_from(n).ok().filter(|n| *n > 0)
}

fn read_dev(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Interrupted, or the request was taken back (interrupted
            // before we read it): read the next one.
            Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
            _ => return Err(e),
        }
    }
}

/// Writes one reply to /dev/fuse.
fn write_dev(fd: RawFd, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
    let header = wire::out_header(unique, error, body.len());
    let iov = [
        libc::iovec {
            iov_base: header.as_ptr() as *mut _,
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut _,
            iov_len: body.len(),
        },
    ];
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the request was interrupted and is gone; nothing to do.
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    Ok(())
}

fn send(fd: RawFd, unique: u64, reply: Reply) -> io::Result<()> {
    match reply {
        Reply::None => Ok(()),
        Reply::Error(e) => write_dev(fd, unique, -e, &[]),
        Reply::Data(body) => write_dev(fd, unique, 0, &body),
    }
}

/// The session thread: INIT, the queue threads, then /dev/fuse until the
/// connection goes away (Ok on unmount).
pub(crate) fn run_session(
    dev: OwnedFd,
    shared: Arc<Shared>,
    lifecycle: Arc<Lifecycle>,
    setup: RingSetup,
    transport: TransportCounts,
) -> io::Result<()> {
    let dev = Arc::new(dev);
    let fd = dev.as_raw_fd();
    let max_write = setup.max_write.unwrap_or(MAX_WRITE_SIZE);
    let mut buf = vec![0u8; max_write as usize + PAGE + IN_HEADER_LEN];
    let mut queues: Vec<JoinHandle<()>> = Vec::new();
    let result = loop {
        let n = match read_dev(fd, &mut buf) {
            Ok(n) => n,
            // Unmounted: the normal end.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => break Ok(()),
            Err(e) => break Err(e),
        };
        let Some(h) = wire::parse_in_header(&buf[..n]) else {
            continue;
        };
        transport.dev.add(h.opcode);
        // InHeader::parse saw IN_HEADER_LEN bytes; h.len is the kernel's.
        let body = &buf[IN_HEADER_LEN..(h.len as usize).clamp(IN_HEADER_LEN, n)];
        if h.opcode == op::INIT {
            let (reply, granted) = match init(&shared, &setup, max_write, body) {
                Ok(out) => (Reply::Data(out.encode()), Some(out)),
                Err(msg) => {
                    lifecycle.set(Phase::Failed(msg));
                    (Reply::Error(libc::EPROTO), None)
                }
            };
            if let Err(e) = send(fd, h.unique, reply) {
                lifecycle.set(Phase::Failed(format!("answering INIT: {e}")));
                break Err(e);
            }
            if let Some(out) = granted {
                match start_queues(&dev, &shared, &setup, &out, &transport) {
                    Ok(handles) => {
                        queues = handles;
                        lifecycle.set(Phase::Ready);
                    }
                    Err((handles, msg)) => {
                        queues = handles;
                        lifecycle.set(Phase::Failed(msg));
                    }
                }
            }
            continue;
        }
        let size = wire::fixed_size(h.opcode).unwrap_or(0).min(body.len());
        let (fixed, var) = body.split_at(size);
        if let Err(e) = send(fd, h.unique, wire::serve(&shared, &h, fixed, var)) {
            if e.raw_os_error() == Some(libc::ENODEV) {
                break Ok(());
            }
            break Err(e);
        }
    };
    for q in queues {
        let _ = q.join();
    }
    result
}

/// Answers INIT: the flags fuser would ask for, plus FUSE_INIT_EXT and
/// FUSE_OVER_IO_URING; or why not (replied EPROTO). Counted like
/// `Dispatcher::init`.
fn init(s: &Shared, setup: &RingSetup, max_write: u32, body: &[u8]) -> Result<InitOut, String> {
    s.counts.add(op::INIT);
    let delay = s.latency[op::INIT as usize % OPCODE_SLOTS];
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let Some(init) = InitIn::parse(body) else {
        return Err("the kernel's INIT request is truncated".to_string());
    };
    if init.major != 7 {
        return Err(format!(
            "unsupported FUSE protocol {}.{}",
            init.major, init.minor
        ));
    }
    if init.flags & wire::FUSE_OVER_IO_URING == 0 {
        return Err(format!(
            "the kernel did not offer FUSE_OVER_IO_URING in INIT (is {ENABLE_URING} Y?)"
        ));
    }
    let mut want = wire::FUSE_ASYNC_READ
        | wire::FUSE_BIG_WRITES
        | wire::FUSE_MAX_PAGES
        | wire::FUSE_INIT_EXT
        | wire::FUSE_OVER_IO_URING;
    if setup.writeback_cache {
        if init.flags & wire::FUSE_WRITEBACK_CACHE == 0 {
            return Err(
                "the kernel does not offer FUSE_WRITEBACK_CACHE (--writeback-cache)".to_string(),
            );
        }
        want |= wire::FUSE_WRITEBACK_CACHE;
    }
    Ok(InitOut {
        minor: init.minor.min(PROTO_MINOR),
        max_readahead: init.max_readahead,
        flags: init.flags & want,
        max_background: setup.max_background.unwrap_or(16),
        max_write,
        max_pages: max_pages(max_write, init.max_readahead),
    })
}

/// Pages per request we ask for (as fuser computes it).
fn max_pages(max_write: u32, max_readahead: u32) -> u16 {
    let bytes = max_write.max(max_readahead).max(1) as usize;
    ((bytes - 1) / PAGE + 1).min(u16::MAX as usize) as u16
}

/// Starts and registers every queue; on failure returns the threads
/// started (they end by themselves) and a message.
#[allow(clippy::type_complexity)]
fn start_queues(
    dev: &Arc<OwnedFd>,
    shared: &Arc<Shared>,
    setup: &RingSetup,
    init: &InitOut,
    transport: &TransportCounts,
) -> Result<Vec<JoinHandle<()>>, (Vec<JoinHandle<()>>, String)> {
    let nr = possible_cpus().map_err(|e| (Vec::new(), format!("counting CPUs: {e}")))?;
    // Entries smaller than the kernel's ring->max_payload_sz are refused
    // (EINVAL). It is max(8192, max_write, max_pages * PAGE_SIZE), its
    // max_pages being ours clamped to fs.fuse.max_pages_limit, or 32
    // (FUSE_DEFAULT_MAX_PAGES_PER_REQ) should FUSE_MAX_PAGES not be granted.
    let pages = usize::from(init.max_pages).max(DEFAULT_MAX_PAGES);
    let payload = MIN_BUFFER.max(init.max_write as usize).max(pages * PAGE);
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::new();
    for qid in 0..nr {
        let queue = Queue {
            dev: Arc::clone(dev),
            shared: Arc::clone(shared),
            transport: transport.clone(),
            qid,
            depth: setup.depth,
            payload,
        };
        let tx = tx.clone();
        let spawned = thread::Builder::new()
            .name(format!("fuse-uring-{qid}"))
            .spawn(move || queue.run(tx));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => return Err((handles, format!("spawning ring queue threads: {e}"))),
        }
    }
    drop(tx);
    for _ in 0..nr {
        match rx.recv_timeout(REGISTER_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err((handles, msg)),
            Err(_) => {
                return Err((
                    handles,
                    "the io_uring queues did not register in time".to_string(),
                ));
            }
        }
    }
    Ok(handles)
}

/// One ring entry's memory: the request header (`fuse_uring_req_header`)
/// on the first page, the payload after it, and the two iovecs the
/// REGISTER command points at. Anonymous mmap: a 16 MiB payload costs
/// nothing until the kernel writes into it, and the memory never moves.
struct EntryMem {
    base: *mut u8,
    len: usize,
    payload_len: usize,
    iov: Box<[libc::iovec; 2]>,
}

impl EntryMem {
    fn new(payload_len: usize) -> io::Result<EntryMem> {
        let len = PAGE + payload_len;
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        let iov = Box::new([
            libc::iovec {
                iov_base: base.cast(),
                iov_len: REQ_HEADER_LEN,
            },
            libc::iovec {
                iov_base: unsafe { base.add(PAGE) }.cast(),
                iov_len: payload_len,
            },
        ]);
        Ok(EntryMem {
            base,
            len,
            payload_len,
            iov,
        })
    }

    /// The header and the payload. Only called while the entry is ours
    /// (between a completion and the next command), when the kernel does
    /// not touch this memory.
    fn buffers(&mut self) -> (&mut [u8], &mut [u8]) {
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.base, REQ_HEADER_LEN),
                std::slice::from_raw_parts_mut(self.base.add(PAGE), self.payload_len),
            )
        }
    }
}

impl Drop for EntryMem {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

struct Queue {
    dev: Arc<OwnedFd>,
    shared: Arc<Shared>,
    transport: TransportCounts,
    qid: u16,
    depth: usize,
    payload: usize,
}

impl Queue {
    /// An SQE128 ring command on /dev/fuse for entry `idx`.
    fn command(&self, cmd_op: u32, commit_id: u64, ent: &EntryMem, idx: usize) -> squeue::Entry128 {
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), cmd_op)
            .cmd(cmd)
            .addr(Some(ent.iov.as_ptr() as u64))
            .build()
            .user_data(idx as u64);
        // The kernel wants sqe->len = 2 (the iovec count), which the crate
        // has no setter for: patch `len` (offset 24 of struct io_uring_sqe).
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    }

    fn run(self, ready: mpsc::Sender<Result<(), String>>) {
        let setup = || -> io::Result<(IoUring<squeue::Entry128, cqueue::Entry>, Vec<EntryMem>)> {
            let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .build(self.depth.next_power_of_two() as u32)?;
            let ents = (0..self.depth)
                .map(|_| EntryMem::new(self.payload))
                .collect::<io::Result<Vec<_>>>()?;
            Ok((ring, ents))
        };
        let (mut ring, mut ents) = match setup() {
            Ok(x) => x,
            Err(e) => {
                let _ = ready.send(Err(format!(
                    "queue {}: creating the io_uring: {e}",
                    self.qid
                )));
                return;
            }
        };
        for (idx, ent) in ents.iter().enumerate() {
            let sqe = self.command(FUSE_IO_URING_CMD_REGISTER, 0, ent, idx);
            // The ring has room for `depth` entries: cannot fail.
            let _ = unsafe { ring.submission().push(&sqe) };
        }
        let mut inflight = self.depth;
        if let Err(e) = ring.submit() {
            let _ = ready.send(Err(format!("queue {}: registering: {e}", self.qid)));
            // Whether the kernel took some of the entries is unknown: keep
            // their memory rather than risk it being written after a free.
            std::mem::forget(ents);
            return;
        }
        // REGISTER is handled while submitting: a failure has completed by now.
        let mut pending: Vec<(usize, i32)> = Vec::new();
        let mut failure = None;
        for cqe in ring.completion() {
            if cqe.result() < 0 {
                inflight -= 1;
                failure.get_or_insert(-cqe.result());
            } else {
                pending.push((cqe.user_data() as usize, cqe.result()));
            }
        }
        if let Some(errno) = failure {
            let _ = ready.send(Err(register_error(self.qid, errno)));
            // Entries that did register end with the connection.
        } else {
            let _ = ready.send(Ok(()));
        }
        drop(ready);
        loop {
            for (idx, _) in pending.drain(..) {
                let Some(ent) = ents.get_mut(idx) else {
                    continue;
                };
                let commit_id = self.serve(ent);
                let sqe = self.command(FUSE_IO_URING_CMD_COMMIT_AND_FETCH, commit_id, ent, idx);
                if unsafe { ring.submission().push(&sqe) }.is_err() {
                    // Cannot happen (one SQE per entry, depth slots); do
                    // not wait for an entry we could not hand back.
                    inflight -= 1;
                }
            }
            if inflight == 0 {
                break;
            }
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    log::error!("daemon: io_uring queue {}: {e}", self.qid);
                    // The ring is unusable; leaving would free buffers the
                    // kernel may still write: wait for the connection to go.
                    thread::sleep(Duration::from_millis(100));
                }
            }
            for cqe in ring.completion() {
                if cqe.result() < 0 {
                    // -ENOTCONN/-ECANCELED: unmounted, the entry is done.
                    inflight -= 1;
                } else {
                    pending.push((cqe.user_data() as usize, cqe.result()));
                }
            }
        }
        // Nothing in flight any more: the kernel no longer uses `ents`.
        drop(ring);
        drop(ents);
    }

    /// Serves the request in `ent` and writes the reply into it; returns
    /// the commit id (the request's unique).
    fn serve(&self, ent: &mut EntryMem) -> u64 {
        let (header, payload) = ent.buffers();
        let commit_id = wire::u64_at(header, COMMIT_ID).unwrap_or(0);
        let payload_sz =
            (wire::u32_at(header, PAYLOAD_SZ).unwrap_or(0) as usize).min(payload.len());
        let reply = match wire::parse_in_header(&header[..IN_HEADER_LEN]) {
            Some(h) => {
                self.transport.ring.add(h.opcode);
                let size = wire::fixed_size(h.opcode).unwrap_or(0);
                let fixed = &header[OP_IN..OP_IN + size.min(OP_IN)];
                wire::serve(&self.shared, &h, fixed, &payload[..payload_sz])
            }
            None => Reply::Error(libc::EIO),
        };
        let (error, len) = match reply {
            Reply::Data(body) if body.len() <= payload.len() => {
                payload[..body.len()].copy_from_slice(&body);
                (0, body.len())
            }
            Reply::Data(_) => (-libc::EIO, 0),
            Reply::Error(e) => (-e, 0),
            // FORGETs never come through the ring; every ring request needs
            // a commit, so answer an empty success.
            Reply::None => (0, 0),
        };
        header[..OUT_HEADER_LEN].copy_from_slice(&wire::out_header(commit_id, error, len));
        header[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        commit_id
    }
}

fn register_error(qid: u16, errno: i32) -> String {
    match errno {
        libc::EOPNOTSUPP => {
            format!("FUSE over io_uring is off: write Y to {ENABLE_URING} (as root)")
        }
        _ => format!(
            "registering io_uring queue {qid} with /dev/fuse: {}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
    }

    #[test]
    fn page_counts() {
        assert_eq!(max_pages(16 << 20, 128 << 10), 4096);
        assert_eq!(max_pages(4096, 0), 1);
        assert_eq!(max_pages(4097, 0), 2);
    }
}
