//! The hooks, as data: for every point of a request's life, the hooks
//! that can observe it in order of preference across backends
//! ([`HOOK_TABLE`]; [`AGGREGATE_HOOK_TABLE`] for in-kernel `stats`). At
//! start-up each stage takes the first hook the running kernel offers and
//! that loads (`super::probes`); the reasons for skipping the others are
//! kept for the user.

use crate::kernel::kfunc::{self, KFunc};

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
    /// The caller enters `fuse_simple_request`/`fuse_simple_background`:
    /// with it, the time a background request waited before being sent.
    Call,
    /// virtio-fs: the request is placed on a virtqueue.
    VirtioQueue,
    /// virtio-fs: the device answered (interrupt, then completion).
    VirtioDone,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Submit => "submit",
            Stage::DaemonTake => "daemon-take",
            Stage::DaemonReply => "daemon-reply",
            Stage::End => "end",
            Stage::Call => "call",
            Stage::VirtioQueue => "virtio-queue",
            Stage::VirtioDone => "virtio-done",
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

/// The daemon side is seen at the syscall boundary by every backend: the
/// syscall tracepoints exist wherever kprobes or fentry do, and they carry
/// FORGET and INTERRUPT headers that no request-carrying function sees.
const fn syscall_hooks(programs: &'static [(&'static str, Attach)], has_header: bool) -> [Hook; 4] {
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
            Hook {
                backend: Backend::Fentry,
                programs: &[("fe_send", Attach::FEntry(&kfunc::SEND))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("kp_send", Attach::KProbe(&kfunc::SEND))],
                has_header: true,
            },
        ],
    ),
    (
        Stage::DaemonTake,
        &syscall_hooks(DAEMON_TAKE_SYSCALLS, true),
    ),
    (
        Stage::DaemonReply,
        &syscall_hooks(DAEMON_REPLY_SYSCALLS, false),
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
            Hook {
                backend: Backend::Fentry,
                programs: &[("fe_end", Attach::FEntry(&kfunc::END))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("kp_end", Attach::KProbe(&kfunc::END))],
                has_header: true,
            },
        ],
    ),
    (
        Stage::Call,
        &[
            Hook {
                backend: Backend::Fentry,
                programs: &[
                    ("fe_submit", Attach::FEntry(&kfunc::SUBMIT)),
                    ("fe_submit_bg", Attach::FEntry(&kfunc::SUBMIT_BG)),
                ],
                has_header: false,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[
                    ("kp_submit", Attach::KProbe(&kfunc::SUBMIT)),
                    ("kp_submit_bg", Attach::KProbe(&kfunc::SUBMIT_BG)),
                ],
                has_header: false,
            },
        ],
    ),
    (
        Stage::VirtioQueue,
        &[
            Hook {
                backend: Backend::Fentry,
                programs: &[("fe_vq_enqueue", Attach::FEntry(&kfunc::VQ_ENQUEUE))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("kp_vq_enqueue", Attach::KProbe(&kfunc::VQ_ENQUEUE))],
                has_header: true,
            },
        ],
    ),
    (
        Stage::VirtioDone,
        &[
            Hook {
                backend: Backend::Fentry,
                programs: &[
                    ("fe_vq_done", Attach::FEntry(&kfunc::VQ_DONE)),
                    ("fe_vreq_done", Attach::FEntry(&kfunc::VREQ_DONE)),
                ],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[
                    ("kp_vq_done", Attach::KProbe(&kfunc::VQ_DONE)),
                    ("kp_vreq_done", Attach::KProbe(&kfunc::VREQ_DONE)),
                ],
                has_header: true,
            },
        ],
    ),
];

/// The hooks of in-kernel aggregation (`stats`): send and end only, each
/// counting into kernel maps instead of the ring buffer.
pub const AGGREGATE_HOOK_TABLE: &[(Stage, &[Hook])] = &[
    (
        Stage::Submit,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: &[("agg_send_btf", Attach::TpBtf("fuse_request_send"))],
                has_header: true,
            },
            Hook {
                backend: Backend::Fentry,
                programs: &[("fe_agg_send", Attach::FEntry(&kfunc::SEND))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("kp_agg_send", Attach::KProbe(&kfunc::SEND))],
                has_header: true,
            },
        ],
    ),
    (
        Stage::End,
        &[
            Hook {
                backend: Backend::TpBtf,
                programs: &[("agg_end_btf", Attach::TpBtf("fuse_request_end"))],
                has_header: true,
            },
            Hook {
                backend: Backend::Fentry,
                programs: &[("fe_agg_end", Attach::FEntry(&kfunc::END))],
                has_header: true,
            },
            Hook {
                backend: Backend::Kprobe,
                programs: &[("kp_agg_end", Attach::KProbe(&kfunc::END))],
                has_header: true,
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
        Attach::KProbe(f) => format!("kprobe/{}", f.names.join("|")),
        Attach::FEntry(f) => format!("fentry/{}", f.names.join("|")),
    }
}

/// How `describe` (and so a recording's header) names the diagnosis hooks.
pub const APP_WRITES_HOOKS: &str = "app-writes: tracepoint/syscalls/sys_exit_write, sys_exit_writev, sys_enter_pwrite64, sys_exit_pwrite64";

/// Programs `fusetrace diagnose` adds: applications' write(2) family on
/// FUSE files (the entry side of write/writev is the daemon-reply hook).
pub(crate) const DIAGNOSE_PROGRAMS: &[(&str, Attach)] = &[
    (
        "sys_enter_pwrite64",
        Attach::TracePoint("syscalls", "sys_enter_pwrite64"),
    ),
    (
        "sys_exit_write",
        Attach::TracePoint("syscalls", "sys_exit_write"),
    ),
    (
        "sys_exit_writev",
        Attach::TracePoint("syscalls", "sys_exit_writev"),
    ),
    (
        "sys_exit_pwrite64",
        Attach::TracePoint("syscalls", "sys_exit_pwrite64"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_has_a_hook_per_backend() {
        for (stage, hooks) in HOOK_TABLE {
            // The tracepoints have no counterpart of the calls and the
            // virtio-fs functions; every backend has the four core stages.
            let backends: &[Backend] = match stage {
                Stage::Call | Stage::VirtioQueue | Stage::VirtioDone => {
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
                    "{stage:?} lacks a {backend:?} hook"
                );
            }
        }
    }
}
