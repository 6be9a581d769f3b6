//! The hooks, as data: for every point of a request's life, the hooks
//! that can observe it in order of preference across backends
//! ([`HOOK_TABLE`]; [`AGGREGATE_HOOK_TABLE`] for in-kernel `stats`). At
//! start-up each point takes the first hook the running kernel offers and
//! that loads (`super::probes`); the reasons for skipping the others are
//! kept for the user.

use crate::kernel::kfunc::{self, KFunc};

/// A *point*: a moment in a request's life that some hook observes. (A
/// *stage* is a span between two points: `pipeline::lifecycle`.) The same
/// names are the eBPF programs' (`<point>_<how>`), [`EventKind`]'s and the
/// lifecycle's `<point>_ns` fields.
///
/// [`EventKind`]: fusetrace_common::EventKind
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The caller entered `fuse_simple_request`/`fuse_simple_background`:
    /// with it, the time a background request waited before being sent.
    Submitted,
    /// The kernel queued the request for the daemon (or the virtqueue).
    Sent,
    /// A daemon thread took the request from `/dev/fuse`.
    Taken,
    /// A daemon thread wrote the reply to `/dev/fuse`.
    Replied,
    /// The kernel ended the request.
    Ended,
    /// virtio-fs: the request was placed on a virtqueue.
    Virtq,
    /// virtio-fs: the device's answer was taken off the virtqueue (with the
    /// interrupt that announced it).
    DeviceDone,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Submitted => "submitted",
            Point::Sent => "sent",
            Point::Taken => "taken",
            Point::Replied => "replied",
            Point::Ended => "ended",
            Point::Virtq => "virtq",
            Point::DeviceDone => "device-done",
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
    /// kprobe on a kernel function (resolved by name from kallsyms).
    KProbe(&'static KFunc),
    /// fentry (BPF trampoline) on a kernel function described in BTF.
    FEntry(&'static KFunc),
    /// fexit: the same, as the function returns (its value readable).
    FExit(&'static KFunc),
}

/// One way of observing a point: one or more programs attached together.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Short name for users (`--backend`, doctor output).
    pub backend: Backend,
    pub programs: &'static [(&'static str, Attach)],
    /// Whether this hook reads the request header (node id, requester).
    pub has_header: bool,
}

impl Hook {
    /// A daemon-side take that sees requests only, not FORGET,
    /// BATCH_FORGET or INTERRUPT (the kprobe on `fuse_copy_args`).
    pub fn requests_only(&self) -> bool {
        self.programs
            .iter()
            .any(|(_, a)| matches!(a, Attach::KProbe(f) if std::ptr::eq(*f, &kfunc::COPY_ARGS)))
    }
}

/// Families of hooks a user can force with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// BTF tracepoints on the FUSE tracepoints, syscall tracepoints for the daemon side.
    TpBtf,
    /// Classic tracepoints only (no BTF reads of `struct fuse_req`).
    Tracepoint,
    /// fentry on the FUSE functions (kernels without the FUSE tracepoints).
    Fentry,
    /// kprobes on the FUSE functions (kernels without tracepoints or fentry).
    Kprobe,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::TpBtf => "tp-btf",
            Backend::Tracepoint => "tracepoint",
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
        }
    }
}

const DAEMON_TAKE_SYSCALLS: &[(&str, Attach)] = &[
    (
        "taken_sys_read",
        Attach::TracePoint("syscalls", "sys_exit_read"),
    ),
    (
        "taken_sys_readv",
        Attach::TracePoint("syscalls", "sys_exit_readv"),
    ),
    (
        "taken_sys_splice",
        Attach::TracePoint("syscalls", "sys_enter_splice"),
    ),
];

const DAEMON_REPLY_SYSCALLS: &[(&str, Attach)] = &[
    (
        "replied_sys_write",
        Attach::TracePoint("syscalls", "sys_enter_write"),
    ),
    (
        "replied_sys_writev",
        Attach::TracePoint("syscalls", "sys_enter_writev"),
    ),
];

/// The daemon side hooked in the kernel's own `/dev/fuse` routines
/// (`fusetrace-ebpf/src/daemon.rs`): preferred wherever the kernel has
/// kprobes or fentry, whatever serves the send and the end, since they put
/// no tracepoint on every syscall of the machine and decode splice too.
/// The kprobe take sees requests only (not FORGET, BATCH_FORGET or
/// INTERRUPT): see `fusetrace-ebpf/src/daemon.rs`.
const KERNEL_TAKE: [Hook; 2] = [
    Hook {
        backend: Backend::Fentry,
        programs: &[
            ("taken_copy_fe", Attach::FEntry(&kfunc::COPY_ARGS)),
            ("taken_read_fx", Attach::FExit(&kfunc::DEV_READ)),
        ],
        has_header: true,
    },
    Hook {
        backend: Backend::Kprobe,
        programs: &[("taken_copy_kp", Attach::KProbe(&kfunc::COPY_ARGS))],
        has_header: true,
    },
];

const KERNEL_REPLY: [Hook; 2] = [
    Hook {
        backend: Backend::Fentry,
        programs: &[("replied_write_fe", Attach::FEntry(&kfunc::DEV_WRITE))],
        has_header: false,
    },
    Hook {
        backend: Backend::Kprobe,
        programs: &[("replied_write_kp", Attach::KProbe(&kfunc::DEV_WRITE))],
        has_header: false,
    },
];

/// The kernel-side hooks first, then the syscall ones of every backend.
const fn daemon_hooks(kernel: [Hook; 2], syscalls: [Hook; 4]) -> [Hook; 6] {
    [
        kernel[0],
        kernel[1],
        syscalls[0],
        syscalls[1],
        syscalls[2],
        syscalls[3],
    ]
}

/// In-kernel stages count requests only: the take at `fuse_copy_args`.
const KERNEL_TAKE_REQUESTS: [Hook; 2] = [
    Hook {
        backend: Backend::Fentry,
        programs: &[("taken_copy_fe", Attach::FEntry(&kfunc::COPY_ARGS))],
        has_header: true,
    },
    KERNEL_TAKE[1],
];

const TAKE_HOOKS: [Hook; 6] = daemon_hooks(KERNEL_TAKE, every_backend(DAEMON_TAKE_SYSCALLS, true));
const AGG_TAKE_HOOKS: [Hook; 6] = daemon_hooks(
    KERNEL_TAKE_REQUESTS,
    every_backend(DAEMON_TAKE_SYSCALLS, true),
);
const REPLY_HOOKS: [Hook; 6] =
    daemon_hooks(KERNEL_REPLY, every_backend(DAEMON_REPLY_SYSCALLS, false));

/// Where the daemon side is seen: `--daemon-side`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DaemonSide {
    /// In the kernel's `/dev/fuse` routines (kprobe or fentry): requests
    /// only, read or spliced, at no cost to other syscalls.
    Kernel,
    /// At the daemon's read/write syscalls: FORGET, BATCH_FORGET and
    /// INTERRUPT too, but spliced requests only counted, and every
    /// syscall on the machine pays for the tracepoints.
    Syscalls,
}

impl DaemonSide {
    pub fn name(self) -> &'static str {
        match self {
            DaemonSide::Kernel => "kernel",
            DaemonSide::Syscalls => "syscalls",
        }
    }

    /// Which side a daemon-side hook is on (`None`: not a daemon-side hook).
    pub fn of(hook: &Hook) -> Option<DaemonSide> {
        hook.programs.iter().find_map(|(_, a)| match a {
            Attach::TracePoint("syscalls", _) => Some(DaemonSide::Syscalls),
            Attach::KProbe(f) | Attach::FEntry(f) | Attach::FExit(f)
                if [&kfunc::DEV_READ, &kfunc::COPY_ARGS, &kfunc::DEV_WRITE]
                    .iter()
                    .any(|g| std::ptr::eq(*f, *g)) =>
            {
                Some(DaemonSide::Kernel)
            }
            _ => None,
        })
    }
}

/// A hook every backend uses alike: the daemon's syscalls (the syscall
/// tracepoints exist wherever kprobes or fentry do, and they carry the
/// FORGET and INTERRUPT headers no request-carrying function sees), and
/// io_uring's tracepoints.
const fn every_backend(programs: &'static [(&'static str, Attach)], has_header: bool) -> [Hook; 4] {
    [
        Hook {
            backend: Backend::TpBtf,
            programs,
            has_header,
        },
        Hook {
            backend: Backend::Tracepoint,
            programs,
            has_header,
        },
        Hook {
            backend: Backend::Fentry,
            programs,
            has_header,
        },
        Hook {
            backend: Backend::Kprobe,
            programs,
            has_header,
        },
    ]
}

/// For every point, the hooks that observe it, best first.
pub const HOOK_TABLE: &[(Point, &[Hook])] = &[
    (
        Point::Sent,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: &[("sent_btf", Attach::TpBtf("fuse_request_send"))],
                has_header: true,
            },
            Hook {
                backend: Backend::Tracepoint,
                programs: &[("sent_tp", Attach::TracePoint("fuse", "fuse_request_send"))],
                has_header: false,
            },
            Hook {
                backend: Backend::Fentry,
                programs: &[("sent_fe", Attach::FEntry(&kfunc::SENT))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("sent_kp", Attach::KProbe(&kfunc::SENT))],
                has_header: true,
            },
        ],
    ),
    (Point::Taken, &TAKE_HOOKS),
    (Point::Replied, &REPLY_HOOKS),
    (
        Point::Ended,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: &[("ended_btf", Attach::TpBtf("fuse_request_end"))],
                has_header: true,
            },
            Hook {
                backend: Backend::Tracepoint,
                programs: &[("ended_tp", Attach::TracePoint("fuse", "fuse_request_end"))],
                has_header: false,
            },
            Hook {
                backend: Backend::Fentry,
                programs: &[("ended_fe", Attach::FEntry(&kfunc::ENDED))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("ended_kp", Attach::KProbe(&kfunc::ENDED))],
                has_header: true,
            },
        ],
    ),
    (
        Point::Submitted,
        &[
            Hook {
                backend: Backend::Fentry,
                programs: &[
                    ("submitted_fe", Attach::FEntry(&kfunc::SUBMITTED)),
                    ("submitted_bg_fe", Attach::FEntry(&kfunc::SUBMITTED_BG)),
                ],
                has_header: false,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[
                    ("submitted_kp", Attach::KProbe(&kfunc::SUBMITTED)),
                    ("submitted_bg_kp", Attach::KProbe(&kfunc::SUBMITTED_BG)),
                ],
                has_header: false,
            },
        ],
    ),
    (
        Point::Virtq,
        &[
            Hook {
                backend: Backend::Fentry,
                programs: &[("virtq_fe", Attach::FEntry(&kfunc::VIRTQ))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("virtq_kp", Attach::KProbe(&kfunc::VIRTQ))],
                has_header: true,
            },
        ],
    ),
    (
        Point::DeviceDone,
        &[
            Hook {
                backend: Backend::Fentry,
                programs: &[
                    ("device_irq_fe", Attach::FEntry(&kfunc::DEVICE_IRQ)),
                    ("device_done_fe", Attach::FEntry(&kfunc::DEVICE_DONE)),
                ],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[
                    ("device_irq_kp", Attach::KProbe(&kfunc::DEVICE_IRQ)),
                    ("device_done_kp", Attach::KProbe(&kfunc::DEVICE_DONE)),
                ],
                has_header: true,
            },
        ],
    ),
];

/// In-kernel aggregation's send and end hooks: each counts into kernel
/// maps instead of the ring buffer.
const AGG_SENT_HOOKS: &[Hook] = &[
    Hook {
        backend: Backend::TpBtf,
        programs: &[("agg_sent_btf", Attach::TpBtf("fuse_request_send"))],
        has_header: true,
    },
    Hook {
        backend: Backend::Fentry,
        programs: &[("agg_sent_fe", Attach::FEntry(&kfunc::SENT))],
        has_header: true,
    },
    Hook {
        backend: Backend::Kprobe,
        programs: &[("agg_sent_kp", Attach::KProbe(&kfunc::SENT))],
        has_header: true,
    },
];

const AGG_ENDED_HOOKS: &[Hook] = &[
    Hook {
        backend: Backend::TpBtf,
        programs: &[("agg_ended_btf", Attach::TpBtf("fuse_request_end"))],
        has_header: true,
    },
    Hook {
        backend: Backend::Fentry,
        programs: &[("agg_ended_fe", Attach::FEntry(&kfunc::ENDED))],
        has_header: true,
    },
    Hook {
        backend: Backend::Kprobe,
        programs: &[("agg_ended_kp", Attach::KProbe(&kfunc::ENDED))],
        has_header: true,
    },
];

/// The hooks of in-kernel aggregation (`stats`): send and end only.
pub const AGGREGATE_HOOK_TABLE: &[(Point, &[Hook])] = &[
    (Point::Sent, AGG_SENT_HOOKS),
    (Point::Ended, AGG_ENDED_HOOKS),
];

/// In-kernel aggregation of stages (`stats --stages`): the daemon-side
/// hooks as well, which then stamp the request's slot (`agg_stages` in the
/// layout) instead of reporting events.
pub const AGGREGATE_STAGES_HOOK_TABLE: &[(Point, &[Hook])] = &[
    (Point::Sent, AGG_SENT_HOOKS),
    (Point::Taken, &AGG_TAKE_HOOKS),
    (Point::Replied, &REPLY_HOOKS),
    (Point::Ended, AGG_ENDED_HOOKS),
];

/// How a daemon takes requests and answers them: the daemon-side points
/// are observed per transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Transport {
    /// read(2)/write(2) (or splice) on `/dev/fuse`.
    #[serde(rename = "/dev/fuse")]
    DevFuse,
    /// FUSE over io_uring (Linux 6.14+): ring entries per CPU queue.
    #[serde(rename = "io_uring")]
    IoUring,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::DevFuse => "/dev/fuse",
            Transport::IoUring => "io_uring",
        }
    }
}

pub use super::uring_offer::{URING_PARAMETER, UringOffer};

/// The daemon side of FUSE over io_uring, observed on io_uring's own
/// tracepoints (`fusetrace-ebpf/src/uring.rs`): the same programs serve
/// the event pipeline and in-kernel stages. Chosen besides the
/// `/dev/fuse` hooks wherever the daemon side is traced, and only on
/// kernels with FUSE over io_uring.
pub const URING_HOOK_TABLE: &[(Point, &[Hook])] = &[
    (
        Point::Taken,
        &every_backend(
            &[("taken_uring_btf", Attach::TpBtf("io_uring_complete"))],
            true,
        ),
    ),
    (
        Point::Replied,
        &every_backend(
            &[("replied_uring_btf", Attach::TpBtf("io_uring_submit_req"))],
            false,
        ),
    ),
];

/// What was chosen for one point, and why the better hooks were not.
#[derive(Debug, Clone)]
pub struct PointChoice {
    pub point: Point,
    /// Which transport's daemon side (`/dev/fuse` for the kernel-side points).
    pub transport: Transport,
    pub hook: Option<Hook>,
    pub skipped: Vec<String>,
}

impl PointChoice {
    pub fn describe(&self) -> String {
        let point = match self.transport {
            Transport::DevFuse => self.point.name().to_string(),
            t => format!("{} ({})", self.point.name(), t.name()),
        };
        match &self.hook {
            Some(h) => {
                let programs: Vec<String> =
                    h.programs.iter().map(|(_, a)| attach_name(a)).collect();
                // What the kprobe take cannot see, said where it is chosen.
                let unseen = if h.requests_only() {
                    " (requests only: FORGET, BATCH_FORGET and INTERRUPT are seen with --daemon-side syscalls)"
                } else {
                    ""
                };
                format!(
                    "{point}: {} via {}{unseen}",
                    h.backend.name(),
                    programs.join(", ")
                )
            }
            None => format!("{point}: no hook ({})", self.skipped.join("; ")),
        }
    }
}

/// The backend named for a user: the one serving the sent point.
pub fn backend_of(choices: &[PointChoice]) -> Option<Backend> {
    choices
        .iter()
        .find(|c| c.point == Point::Sent && c.transport == Transport::DevFuse)
        .and_then(|c| c.hook)
        .map(|h| h.backend)
}

fn attach_name(a: &Attach) -> String {
    match a {
        Attach::TpBtf(e) => format!("tp_btf/{e}"),
        Attach::TracePoint(c, n) => format!("tracepoint/{c}/{n}"),
        Attach::KProbe(f) => format!("kprobe/{}", f.names.join("|")),
        Attach::FEntry(f) => format!("fentry/{}", f.names.join("|")),
        Attach::FExit(f) => format!("fexit/{}", f.names.join("|")),
    }
}

/// How `describe` (and so a recording's header) names the diagnosis hooks.
pub const APP_WRITES_HOOKS: &str = "app-writes: tracepoint/syscalls/sys_exit_write, sys_exit_writev, sys_enter_pwrite64, sys_exit_pwrite64";

/// Programs `fusetrace diagnose` adds: applications' write(2) family on
/// FUSE files (the entry side of write/writev is the daemon-reply hook).
pub(crate) const DIAGNOSE_PROGRAMS: &[(&str, Attach)] = &[
    (
        "app_write_enter_pwrite64",
        Attach::TracePoint("syscalls", "sys_enter_pwrite64"),
    ),
    (
        "app_write_exit_write",
        Attach::TracePoint("syscalls", "sys_exit_write"),
    ),
    (
        "app_write_exit_writev",
        Attach::TracePoint("syscalls", "sys_exit_writev"),
    ),
    (
        "app_write_exit_pwrite64",
        Attach::TracePoint("syscalls", "sys_exit_pwrite64"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_has_a_hook_per_backend() {
        for (point, hooks) in HOOK_TABLE {
            // The tracepoints have no counterpart of the calls and the
            // virtio-fs functions; every backend has the four core points.
            let backends: &[Backend] = match point {
                Point::Submitted | Point::Virtq | Point::DeviceDone => {
                    &[Backend::Fentry, Backend::Kprobe]
                }
                _ => &[
                    Backend::TpBtf,
                    Backend::Tracepoint,
                    Backend::Fentry,
                    Backend::Kprobe,
                ],
            };
            for &backend in backends {
                assert!(
                    hooks.iter().any(|h| h.backend == backend),
                    "{point:?} lacks a {backend:?} hook"
                );
            }
        }
    }
}
