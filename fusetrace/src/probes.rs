//! Probe backends: which kernel hook observes which lifecycle stage.
//!
//! The choice is data: [`HOOK_TABLE`] lists, for every stage, the hooks that
//! can observe it in order of preference. At start-up each stage takes the
//! first hook the running kernel offers and that loads; the reasons for
//! skipping the others are kept for the user.

use std::{os::fd::AsRawFd, path::Path, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use fusetrace_common::{FuseEvent, KernelLayout, counters};

use crate::{btf::Btf, tracefs, tracefs::RecordFormat};

/// The compiled eBPF object, built by build.rs from `fusetrace-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FUSETRACE_EBPF_OBJECT"));

/// A stage of a request's life that some hook observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The kernel queues the request for the daemon.
    Submit,
    /// A daemon thread takes the request from `/dev/fuse`.
    DaemonTake,
    /// A daemon thread writes the reply to `/dev/fuse`.
    DaemonReply,
    /// The kernel finishes the request.
    End,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Submit => "submit",
            Stage::DaemonTake => "daemon-take",
            Stage::DaemonReply => "daemon-reply",
            Stage::End => "end",
        }
    }
}

/// How a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    /// BTF-typed tracepoint: `tp_btf/<event>` (needs `btf_trace_<event>` in BTF).
    TpBtf(&'static str),
    /// Classic tracepoint `category:name` under tracefs.
    TracePoint(&'static str, &'static str),
}

/// One way of observing a stage: one or more programs attached together.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Short name for users (`--backend`, doctor output).
    pub backend: Backend,
    pub programs: &'static [(&'static str, Attach)],
    /// Whether this hook reads the request header (node id, requester).
    pub has_header: bool,
}

/// Families of hooks a user can force with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// BTF tracepoints on the FUSE tracepoints, syscall tracepoints for the daemon side.
    TpBtf,
    /// Classic tracepoints only (no BTF reads of `struct fuse_req`).
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::TpBtf => "tp-btf",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

const DAEMON_TAKE_SYSCALLS: &[(&str, Attach)] = &[
    (
        "sys_exit_read",
        Attach::TracePoint("syscalls", "sys_exit_read"),
    ),
    (
        "sys_exit_readv",
        Attach::TracePoint("syscalls", "sys_exit_readv"),
    ),
    (
        "sys_enter_splice",
        Attach::TracePoint("syscalls", "sys_enter_splice"),
    ),
];

const DAEMON_REPLY_SYSCALLS: &[(&str, Attach)] = &[
    (
        "sys_enter_write",
        Attach::TracePoint("syscalls", "sys_enter_write"),
    ),
    (
        "sys_enter_writev",
        Attach::TracePoint("syscalls", "sys_enter_writev"),
    ),
];

/// For every stage, the hooks that observe it, best first.
pub const HOOK_TABLE: &[(Stage, &[Hook])] = &[
    (
        Stage::Submit,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: &[("fuse_request_send_btf", Attach::TpBtf("fuse_request_send"))],
                has_header: true,
            },
            Hook {
                backend: Backend::Tracepoint,
                programs: &[(
                    "fuse_request_send_tp",
                    Attach::TracePoint("fuse", "fuse_request_send"),
                )],
                has_header: false,
            },
        ],
    ),
    (
        Stage::DaemonTake,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: DAEMON_TAKE_SYSCALLS,
                has_header: true,
            },
            Hook {
                backend: Backend::Tracepoint,
                programs: DAEMON_TAKE_SYSCALLS,
                has_header: true,
            },
        ],
    ),
    (
        Stage::DaemonReply,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: DAEMON_REPLY_SYSCALLS,
                has_header: false,
            },
            Hook {
                backend: Backend::Tracepoint,
                programs: DAEMON_REPLY_SYSCALLS,
                has_header: false,
            },
        ],
    ),
    (
        Stage::End,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: &[("fuse_request_end_btf", Attach::TpBtf("fuse_request_end"))],
                has_header: true,
            },
            Hook {
                backend: Backend::Tracepoint,
                programs: &[(
                    "fuse_request_end_tp",
                    Attach::TracePoint("fuse", "fuse_request_end"),
                )],
                has_header: false,
            },
        ],
    ),
];

/// What was chosen for one stage, and why the better hooks were not.
#[derive(Debug, Clone)]
pub struct StageChoice {
    pub stage: Stage,
    pub hook: Option<Hook>,
    pub skipped: Vec<String>,
}

impl StageChoice {
    pub fn describe(&self) -> String {
        match &self.hook {
            Some(h) => {
                let programs: Vec<String> =
                    h.programs.iter().map(|(_, a)| attach_name(a)).collect();
                format!(
                    "{}: {} via {}",
                    self.stage.name(),
                    h.backend.name(),
                    programs.join(", ")
                )
            }
            None => format!(
                "{}: no hook ({})",
                self.stage.name(),
                self.skipped.join("; ")
            ),
        }
    }
}

fn attach_name(a: &Attach) -> String {
    match a {
        Attach::TpBtf(e) => format!("tp_btf/{e}"),
        Attach::TracePoint(c, n) => format!("tracepoint/{c}/{n}"),
    }
}

/// Offsets and constants for the eBPF side, read from the running kernel.
pub fn kernel_layout(btf: &Btf, tracefs: &Path) -> Result<KernelLayout> {
    let mut l = KernelLayout::zeroed();
    l.req_in_h = btf.offset_of("fuse_req", "in.h")?;
    l.req_out_h = btf.offset_of("fuse_req", "out.h")?;
    l.req_flags = btf.offset_of("fuse_req", "flags")?;
    l.req_fm = btf.offset_of("fuse_req", "fm")?;
    l.mount_fc = btf.offset_of("fuse_mount", "fc")?;
    l.conn_dev = btf.offset_of("fuse_conn", "dev")?;
    l.fr_background_bit = btf.enum_value("fuse_req_flag", "FR_BACKGROUND")? as u32;
    l.task_files = btf.offset_of("task_struct", "files")?;
    l.files_fdt = btf.offset_of("files_struct", "fdt")?;
    l.fdtable_max_fds = btf.offset_of("fdtable", "max_fds")?;
    l.fdtable_fd = btf.offset_of("fdtable", "fd")?;
    l.file_inode = btf.offset_of("file", "f_inode")?;
    l.file_private_data = btf.offset_of("file", "private_data")?;
    l.inode_rdev = btf.offset_of("inode", "i_rdev")?;
    l.fuse_dev_fc = btf.offset_of("fuse_dev", "fc")?;
    l.fuse_rdev = fuse_char_device()?;
    let [a0, a1, a2] = SYSCALL_ARG_REGS;
    l.regs_arg0 = btf.offset_of("pt_regs", a0)?;
    l.regs_arg1 = btf.offset_of("pt_regs", a1)?;
    l.regs_arg2 = btf.offset_of("pt_regs", a2)?;

    let read = RecordFormat::read(tracefs, "syscalls", "sys_enter_read")?;
    l.sys_enter_fd = read.nth_argument(0)?;
    l.sys_enter_buf = read.nth_argument(1)?;
    l.sys_enter_count = read.nth_argument(2)?;
    l.sys_exit_ret = RecordFormat::read(tracefs, "syscalls", "sys_exit_read")?.offset("ret")?;
    // The generic syscall record puts every argument in the same slot; make
    // sure the other syscalls we share offsets with agree.
    for name in [
        "sys_enter_readv",
        "sys_enter_write",
        "sys_enter_writev",
        "sys_enter_splice",
    ] {
        let f = RecordFormat::read(tracefs, "syscalls", name)?;
        if f.nth_argument(0)? != l.sys_enter_fd || f.nth_argument(2)? != l.sys_enter_count {
            bail!("syscalls:{name} has an unexpected record layout; please report this kernel");
        }
    }
    if let Ok(send) = RecordFormat::read(tracefs, "fuse", "fuse_request_send") {
        l.tp_send_connection = send.offset("connection")?;
        l.tp_send_unique = send.offset("unique")?;
        l.tp_send_opcode = send.offset("opcode")?;
        l.tp_send_len = send.offset("len")?;
    }
    if let Ok(end) = RecordFormat::read(tracefs, "fuse", "fuse_request_end") {
        l.tp_end_connection = end.offset("connection")?;
        l.tp_end_unique = end.offset("unique")?;
        l.tp_end_len = end.offset("len")?;
        l.tp_end_error = end.offset("error")?;
    }
    Ok(l)
}

/// `struct pt_regs` members holding the first three syscall arguments.
#[cfg(target_arch = "x86_64")]
const SYSCALL_ARG_REGS: [&str; 3] = ["di", "si", "dx"];
#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "fusetrace reads syscall arguments from x86_64 pt_regs; other architectures need their register names here"
);

/// Kernel `dev_t` of `/dev/fuse`, from sysfs ("10:229").
fn fuse_char_device() -> Result<u32> {
    let text = std::fs::read_to_string("/sys/class/misc/fuse/dev")
        .context("the fuse device is not registered (no /sys/class/misc/fuse): load the fuse module (`modprobe fuse`)")?;
    parse_major_minor(text.trim()).context("unreadable /sys/class/misc/fuse/dev")
}

/// `"0:52"` to the kernel's `dev_t` encoding (`MAJOR << 20 | MINOR`).
pub fn parse_major_minor(text: &str) -> Option<u32> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?)
}

/// Options for attaching.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Force this backend for every stage it can serve.
    pub backend: Option<Backend>,
    /// Only observe daemon syscalls of this process.
    pub daemon_tgid: Option<u32>,
}

/// Probes attached to the running kernel, and the ring buffer they feed.
/// Dropping it detaches every probe.
pub struct Probes {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    pub choices: Vec<StageChoice>,
    undecodable: u64,
    // Owns the programs and links; kept last so maps above drop first.
    _ebpf: Ebpf,
}

/// Kernel-side counters of what could not be delivered or decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ring_drops: u64,
    pub read_faults: u64,
    pub splice_transfers: u64,
}

impl Probes {
    pub fn attach(opts: &ProbeOptions) -> Result<Probes> {
        check_privileges()?;
        let tracefs = tracefs::ensure_mounted()?;
        let btf = Btf::from_running_kernel(&["fuse"])?;
        if !btf.has_type("fuse_req") {
            bail!(
                "this kernel's BTF has no struct fuse_req: load the fuse module (`modprobe fuse`) and retry"
            );
        }
        let mut layout = kernel_layout(&btf, &tracefs)?;
        layout.daemon_tgid = opts.daemon_tgid.unwrap_or(0);
        let mut ebpf = EbpfLoader::new()
            .override_global("LAYOUT", &layout, true)
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!("loading the eBPF object failed: {e}"))?;
        let aya_btf =
            aya::Btf::from_sys_fs().map_err(|e| anyhow!("reading kernel BTF for tp_btf: {e}"))?;

        let mut choices = Vec::new();
        for (stage, hooks) in HOOK_TABLE {
            let mut choice = StageChoice {
                stage: *stage,
                hook: None,
                skipped: Vec::new(),
            };
            for hook in hooks.iter() {
                if opts.backend.is_some_and(|b| b != hook.backend) {
                    continue;
                }
                match offered(hook, &btf, &tracefs)
                    .and_then(|()| load_hook(&mut ebpf, hook, &aya_btf))
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
        for required in [Stage::Submit, Stage::End] {
            let choice = choices.iter().find(|c| c.stage == required).unwrap();
            if choice.hook.is_none() {
                bail!(
                    "cannot observe the {} stage on this kernel ({}); the tracepoint backends need the FUSE tracepoints fuse:fuse_request_send/end, and the kprobe/fentry backends for kernels without them are not built yet",
                    required.name(),
                    if choice.skipped.is_empty() {
                        format!(
                            "backend {} has no hook for it",
                            opts.backend.map(|b| b.name()).unwrap_or("auto")
                        )
                    } else {
                        choice.skipped.join("; ")
                    }
                );
            }
        }
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
        Ok(Probes {
            ring,
            counters,
            choices,
            undecodable: 0,
            _ebpf: ebpf,
        })
    }

    /// Waits up to `timeout` for events, then hands every available one to
    /// `sink`. Returns how many were delivered.
    pub fn poll(&mut self, timeout: Duration, mut sink: impl FnMut(FuseEvent)) -> Result<usize> {
        let mut n = self.drain(&mut sink);
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
            n = self.drain(&mut sink);
        }
        Ok(n)
    }

    fn drain(&mut self, sink: &mut impl FnMut(FuseEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            match crate::decode::decode(&item) {
                Some(ev) => sink(ev),
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
        }
    }

    /// Ring buffer records the decoder rejected.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// One line per stage: which hook and backend serve it.
    pub fn describe(&self) -> Vec<String> {
        self.choices.iter().map(StageChoice::describe).collect()
    }
}

/// Whether the running kernel offers what `hook` needs, before trying to load it.
fn offered(hook: &Hook, btf: &Btf, tracefs: &Path) -> Result<()> {
    for (_, attach) in hook.programs {
        match attach {
            Attach::TpBtf(event) => {
                if !btf.has_type(&format!("btf_trace_{event}")) {
                    bail!("no BTF tracepoint {event} in this kernel");
                }
            }
            Attach::TracePoint(category, name) => {
                if !RecordFormat::exists(tracefs, category, name) {
                    bail!("no tracepoint {category}:{name} in this kernel");
                }
            }
        }
    }
    Ok(())
}

fn load_hook(ebpf: &mut Ebpf, hook: &Hook, btf: &aya::Btf) -> Result<()> {
    for (program, attach) in hook.programs {
        let prog = ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the eBPF object"))?;
        match attach {
            Attach::TpBtf(event) => {
                let p: &mut BtfTracePoint = prog.try_into()?;
                // A hook shared by two stages is loaded once.
                if p.fd().is_err() {
                    p.load(event, btf)
                        .with_context(|| format!("loading tp_btf/{event}"))?;
                    p.attach()
                        .with_context(|| format!("attaching tp_btf/{event}"))?;
                }
            }
            Attach::TracePoint(category, name) => {
                let p: &mut TracePoint = prog.try_into()?;
                if p.fd().is_err() {
                    p.load()
                        .with_context(|| format!("loading tracepoint {category}:{name}"))?;
                    p.attach(category, name)
                        .with_context(|| format!("attaching tracepoint {category}:{name}"))?;
                }
            }
        }
    }
    Ok(())
}

/// A clear message instead of EPERM from the first bpf(2) call.
fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |cap: u64| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!("fusetrace needs root (or CAP_BPF and CAP_PERFMON): run it with sudo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_has_a_hook_per_backend() {
        for (stage, hooks) in HOOK_TABLE {
            for backend in [Backend::TpBtf, Backend::Tracepoint] {
                assert!(
                    hooks.iter().any(|h| h.backend == backend),
                    "{stage:?} lacks a {backend:?} hook"
                );
            }
        }
    }

    #[test]
    fn major_minor_uses_kernel_encoding() {
        assert_eq!(parse_major_minor("0:52"), Some(52));
        assert_eq!(parse_major_minor("10:229"), Some((10 << 20) | 229));
        assert_eq!(parse_major_minor("x"), None);
    }
}
