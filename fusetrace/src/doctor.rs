//! `fusetrace doctor`: what the running kernel offers for tracing FUSE, and
//! which hook each lifecycle moment would use, with the reason.
//!
//! Every answer comes from trying: the hooks are loaded and attached as a
//! trace would (then detached), once in automatic mode and once per forced
//! kprobe/fentry backend, so "unavailable" always carries the kernel's own
//! reason.

use std::path::Path;

use anyhow::Result;

use fusetrace_common::DevFuseFile;

use crate::{
    kernel::{
        self,
        hooks::{Backend, DaemonSide, Point, PointChoice, Transport, URING_PARAMETER, backend_of},
        kfunc,
        probes::{self, KPROBE_PMU, KernelFunctions},
        tracefs,
    },
    output::print::Format,
    pipeline::lifecycle::Comm,
};

/// `fusetrace doctor` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Show the choice with this backend forced (as `trace --backend`).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Output format (json: one object with the same facts).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Same as `--format json`.
    #[arg(long, hide = true)]
    pub json: bool,
}

/// What `doctor` found, as data: printed as text lines or one JSON object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub kernel: String,
    /// What the kernel offers: (what, available, detail).
    pub offers: Vec<Offer>,
    /// `--backend`, when forced.
    pub forced_backend: Option<&'static str>,
    pub points: Vec<PointReport>,
    pub backend: &'static str,
    pub request_id_at_send: String,
    pub complete: bool,
    pub verdict: String,
    /// Every FUSE mount with its transport.
    pub mounts: Vec<MountReport>,
    /// Why the mounts could not be listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Offer {
    pub what: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PointReport {
    pub point: &'static str,
    pub observed: bool,
    /// The hook and backend chosen, or why none (as the text line).
    pub description: String,
    /// Better hooks skipped, and why.
    pub skipped: Vec<String>,
}

impl Report {
    /// The text lines `doctor` prints.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!("kernel: {}", self.kernel), "offers:".into()];
        for o in &self.offers {
            lines.push(format!(
                "  {:<20} {} ({})",
                o.what,
                if o.available { "yes" } else { "no" },
                o.detail
            ));
        }
        lines.push(match self.forced_backend {
            Some(b) => format!("points (--backend {b}):"),
            None => "points:".into(),
        });
        for p in &self.points {
            lines.push(format!("  {}", p.description));
            if p.observed {
                for s in &p.skipped {
                    lines.push(format!("      not {s}"));
                }
            }
        }
        lines.push(format!("backend: {}", self.backend));
        match (&self.mounts_error, &self.mounts) {
            (Some(e), _) => lines.push(format!("mounts: cannot be listed ({e})")),
            (None, mounts) if mounts.is_empty() => lines.push("mounts: no FUSE mount".into()),
            (None, mounts) => {
                lines.push("mounts:".into());
                for m in mounts {
                    let queues = m
                        .ring_queues
                        .map(|q| format!(", {q} queues"))
                        .unwrap_or_default();
                    let daemons = if m.daemons.is_empty() {
                        "no process holds its /dev/fuse".to_string()
                    } else {
                        format!("daemon {}", m.daemons.join(", "))
                    };
                    lines.push(format!(
                        "  {} ({}, connection {}): {}{queues}, {daemons}; traced: {}",
                        m.mount_point, m.fs_type, m.connection, m.transport, m.traced
                    ));
                }
            }
        }
        lines.push(format!("request id at send: {}", self.request_id_at_send));
        lines.push(format!(
            "verdict: {}: {}",
            if self.complete {
                "complete lifecycles can be traced"
            } else {
                "complete lifecycles cannot be traced"
            },
            self.verdict
        ));
        lines
    }
}

/// What the report concludes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Complete request lifecycles can be traced.
    pub complete: bool,
    pub reason: String,
}

/// Why a `/dev/fuse` daemon-side point had no hook when the reason is a
/// capability the run lacks (tracefs root's alone), the backend left out.
fn lacked_capability(choices: &[PointChoice]) -> Option<String> {
    choices
        .iter()
        .filter(|c| matches!(c.point, Point::Taken | Point::Replied))
        .filter(|c| c.transport == Transport::DevFuse && c.hook.is_none())
        .flat_map(|c| c.skipped.iter())
        .find(|s| tracefs::Tracefs::lacks_capability(s))
        .map(|s| {
            s.split_once(": ")
                .map_or(s.as_str(), |(_, r)| r)
                .to_string()
        })
}

/// Whether the chosen hooks cover a whole lifecycle: submission and end,
/// plus either the daemon's two points or the virtio-fs device's; then,
/// per transport, whether its requests can be joined into one lifecycle
/// on this kernel: `send_function` is the kprobe/fentry send chosen
/// (`fuse_dev_queue_req` sees `/dev/fuse` requests only);
/// `unsent_ring_background`: the kernel queues an io_uring daemon's
/// background requests on the ring without the send point (6.14 to 6.17:
/// they skip `fuse_send_one`, where every send hook but the virtio-fs
/// one is).
pub fn verdict(
    choices: &[PointChoice],
    send_function: Option<&str>,
    unsent_ring_background: bool,
) -> Verdict {
    let has = |s: Point, t: Transport| {
        choices
            .iter()
            .any(|c| c.point == s && c.transport == t && c.hook.is_some())
    };
    let missing: Vec<&str> = [Point::Sent, Point::Ended]
        .into_iter()
        .filter(|s| !has(*s, Transport::DevFuse))
        .map(Point::name)
        .collect();
    if !missing.is_empty() {
        return Verdict {
            complete: false,
            reason: format!("no hook for the {} point", missing.join(" and ")),
        };
    }
    let call_send = matches!(backend_of(choices), Some(Backend::Fentry | Backend::Kprobe));
    let dev_fuse_only = call_send && send_function == Some(kfunc::SENT_DEV_FUSE_ONLY);
    let daemon = has(Point::Taken, Transport::DevFuse) && has(Point::Replied, Transport::DevFuse);
    let virtio =
        has(Point::Virtq, Transport::DevFuse) && has(Point::DeviceDone, Transport::DevFuse);
    let mut said = Vec::new();
    if daemon {
        said.push("/dev/fuse daemons: every point is observed".to_string());
    }
    let ring_points =
        has(Point::Taken, Transport::IoUring) && has(Point::Replied, Transport::IoUring);
    if daemon && ring_points {
        said.push(if dev_fuse_only {
            format!(
                "io_uring daemons: not joined, their requests are not sent through {} (the send this backend has here); use the default backend",
                kfunc::SENT_DEV_FUSE_ONLY
            )
        } else if unsent_ring_background {
            "io_uring daemons: every point is observed, but background requests (READ, WRITE with writeback) have no send point: this kernel queues them on the ring without fuse_send_one (6.14 to 6.17)".to_string()
        } else {
            "io_uring daemons: every point is observed".to_string()
        });
    }
    if virtio {
        said.push(if dev_fuse_only {
            format!(
                "virtio-fs: requests have no send point (not sent through {}); use the default backend",
                kfunc::SENT_DEV_FUSE_ONLY
            )
        } else if daemon {
            "virtio-fs: every point is observed".to_string()
        } else {
            "virtio-fs only: the daemon-side points are not observed".to_string()
        });
    }
    if said.is_empty()
        && let Some(cap) = lacked_capability(choices)
    {
        // Not the kernel's lack: this run's.
        return Verdict {
            complete: false,
            reason: format!(
                "the daemon-side points are not observed because this run lacks a capability: {cap}; run doctor with it too, or as root"
            ),
        };
    }
    if said.is_empty() {
        return Verdict {
            complete: false,
            reason: "neither the daemon-side nor the virtio-fs points can be observed".into(),
        };
    }
    Verdict {
        complete: true,
        reason: said.join("; "),
    }
}

/// Whether a forced backend can observe the end point, and why not.
fn backend_works(backend: Backend) -> (bool, String) {
    match probes::survey(Some(backend)) {
        Err(e) => (false, format!("{e:#}")),
        Ok(survey) => {
            let end = survey.choices.iter().find(|c| c.point == Point::Ended);
            match end {
                Some(c) if c.hook.is_some() => (true, c.describe()),
                Some(c) => (
                    false,
                    c.skipped
                        .iter()
                        .map(|s| s.trim_start_matches(&format!("{}: ", backend.name())))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                None => (false, "no end point".into()),
            }
        }
    }
}

/// The report; `Err` only when nothing could be examined.
pub fn report(args: &DoctorArgs) -> Result<Report> {
    let probes::Survey {
        choices,
        kernel,
        dev_fuse_files,
    } = probes::survey(args.backend)?;
    let mut offers = Vec::new();
    let mut offer = |what: &'static str, (available, detail): (bool, String)| {
        offers.push(Offer {
            what,
            available,
            detail,
        })
    };
    offer(
        "BTF",
        (
            Path::new("/sys/kernel/btf/vmlinux").exists(),
            "/sys/kernel/btf/vmlinux; struct fuse_req found".into(),
        ),
    );
    offer(
        "FUSE",
        (
            kernel.kallsyms.resolve("fuse_request_end").is_some(),
            fuse_where(&kernel),
        ),
    );
    // Read in tracefs where this run may; else (tracefs root's alone)
    // the BTF tracepoints on them, which need no tracefs, tell.
    let tp = match tracefs::Tracefs::find().root() {
        Ok(root) => ["fuse_request_send", "fuse_request_end"]
            .iter()
            .all(|e| tracefs::RecordFormat::exists(root, "fuse", e)),
        Err(_) => choices
            .iter()
            .any(|c| c.point == Point::Sent && c.hook.is_some_and(|h| h.backend == Backend::TpBtf)),
    };
    offer(
        "FUSE tracepoints",
        (tp, "fuse:fuse_request_send, fuse:fuse_request_end".into()),
    );
    let kprobes = if kernel.kprobe_pmu {
        backend_works(Backend::Kprobe)
    } else {
        (
            false,
            format!("no {KPROBE_PMU}: the kernel is built without CONFIG_KPROBES"),
        )
    };
    offer("kprobes", kprobes);
    offer("fentry", backend_works(Backend::Fentry));
    let virtio = kernel.kallsyms.resolve("virtio_fs_vq_done").is_some();
    offer(
        "virtio-fs",
        (
            virtio,
            if virtio {
                "virtio_fs_vq_done present".into()
            } else {
                "no virtio_fs_* functions: CONFIG_VIRTIO_FS off or virtiofs not loaded".into()
            },
        ),
    );
    let uring = kernel.kallsyms.resolve("fuse_uring_cmd").is_some();
    offer("io_uring transport", (uring, uring_offer(uring, &choices)));
    let send_function = kernel.get(&crate::kernel::kfunc::SENT).ok().map(|r| r.name);
    let assigns_first = kernel
        .kallsyms
        .resolve("fuse_request_assign_unique")
        .is_some();
    let v = verdict(&choices, send_function, uring && !assigns_first);
    let (mounts, mounts_error) = match mount_reports(dev_fuse_files, &choices) {
        Ok(m) => (m, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Ok(Report {
        kernel: kernel::release().unwrap_or_else(|| "unknown".into()),
        offers,
        forced_backend: args.backend.map(|b| b.name()),
        points: choices
            .iter()
            .map(|c| PointReport {
                point: c.point.name(),
                observed: c.hook.is_some(),
                description: c.describe(),
                skipped: c.skipped.clone(),
            })
            .collect(),
        backend: backend_of(&choices).map(|b| b.name()).unwrap_or("none"),
        request_id_at_send: id_at_send(backend_of(&choices), send_function, assigns_first),
        complete: v.complete,
        verdict: v.reason,
        mounts,
        mounts_error,
    })
}

/// Whether this kernel has FUSE over io_uring, whether daemons may use it,
/// and what of it is traced.
fn uring_offer(present: bool, choices: &[PointChoice]) -> String {
    if !present {
        return "no fuse_uring_cmd: this kernel has no FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)".into();
    }
    let param = std::fs::read_to_string(URING_PARAMETER)
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let allowed = if param == "Y" {
        "enable_uring=Y: daemons may register rings".to_string()
    } else {
        format!(
            "enable_uring={param}: new daemons cannot use it until root writes Y to {URING_PARAMETER}"
        )
    };
    let traced = daemon_side_traced(choices, Transport::IoUring);
    format!(
        "fuse_uring_cmd present; {allowed}; {}",
        if traced {
            "its daemon side is traced"
        } else {
            "its daemon side cannot be traced (see the io_uring points)"
        }
    )
}

/// Both daemon-side points of `transport` have a hook.
fn daemon_side_traced(choices: &[PointChoice], transport: Transport) -> bool {
    [Point::Taken, Point::Replied].iter().all(|p| {
        choices
            .iter()
            .any(|c| c.point == *p && c.transport == transport && c.hook.is_some())
    })
}

/// One FUSE mount: which transport its daemon uses, and what is traced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MountReport {
    pub mount_point: String,
    pub fs_type: String,
    /// `major:minor` of the connection.
    pub connection: String,
    /// `/dev/fuse`, `io_uring`, `virtio-fs` (a virtqueue to the host, no
    /// daemon here), or `unknown` (no process holds its `/dev/fuse`: the
    /// daemon died, or passed its descriptor on and closed it).
    pub transport: String,
    /// io_uring: the ring's queues (one per possible CPU).
    pub ring_queues: Option<u64>,
    /// `comm[pid]` of the processes holding the connection's `/dev/fuse`.
    pub daemons: Vec<String>,
    /// What of its daemon side is traced, in words.
    pub traced: String,
}

fn mount_reports(
    files: std::result::Result<Vec<DevFuseFile>, String>,
    choices: &[PointChoice],
) -> Result<Vec<MountReport>, String> {
    let files = files?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mounts = crate::pipeline::connections::fuse_mounts(&mountinfo);
    Ok(mounts
        .into_iter()
        .map(|m| {
            let held: Vec<&DevFuseFile> =
                files.iter().filter(|f| f.connection == m.connection).collect();
            let ring = held.iter().find(|f| f.ring_queues > 0);
            let (transport, ring_queues) = match ring {
                _ if m.fs_type == "virtiofs" => ("virtio-fs", None),
                Some(f) if f.ring_ready != 0 => (Transport::IoUring.name(), Some(f.ring_queues)),
                // Registering, or a queue has no entry: requests still
                // go through /dev/fuse until every queue has one.
                Some(f) => (Transport::DevFuse.name(), Some(f.ring_queues)),
                None if held.is_empty() => ("unknown", None),
                None => (Transport::DevFuse.name(), None),
            };
            let traced = if m.fs_type == "virtiofs" {
                "virtio-fs: no daemon in this kernel (see the virtq and device-done points)".to_string()
            } else if transport == Transport::IoUring.name() {
                if daemon_side_traced(choices, Transport::IoUring) {
                    "every point: taken and replied through io_uring's tracepoints".into()
                } else {
                    "sent and ended only: the io_uring points cannot be observed here".into()
                }
            } else if daemon_side_traced(choices, Transport::DevFuse) {
                let take = choices
                    .iter()
                    .find(|c| c.point == Point::Taken && c.transport == Transport::DevFuse);
                match take.and_then(|c| c.hook.as_ref()) {
                    Some(h) if DaemonSide::of(h) == Some(DaemonSide::Kernel) => format!(
                        "every point: taken and replied in the kernel's /dev/fuse routines (read or spliced{})",
                        if h.requests_only() {
                            "; FORGET, BATCH_FORGET and INTERRUPT not seen"
                        } else {
                            ""
                        }
                    ),
                    _ => "every point: taken and replied at /dev/fuse (splice(2) transfers counted, not decoded)".into(),
                }
            } else {
                "sent and ended only".into()
            };
            MountReport {
                mount_point: m.mount_point.display().to_string(),
                fs_type: m.fs_type.clone(),
                connection: crate::kernel::layout::major_minor(m.connection),
                transport: transport.into(),
                ring_queues,
                daemons: held
                    .iter()
                    .map(|f| format!("{}[{}]", Comm(f.comm), f.tgid))
                    .collect(),
                traced,
            }
        })
        .collect())
}

/// Whether the send point sees the request's id, and how requests are
/// joined when it does not. Since 6.18 the kernel assigns the id and fires
/// `fuse_request_send` together (`fuse_request_assign_unique`); 6.12 to
/// 6.17 fire it in `fuse_send_one`, before the transport assigns the id;
/// `queue_request_and_unlock` (up to 6.11) runs after. Every run also counts
/// the sends it saw without an id, in its closing summary.
fn id_at_send(backend: Option<Backend>, function: Option<&str>, assigns_first: bool) -> String {
    let late = "no: the send point comes before the kernel assigns the id";
    let joined = "requests are joined by their struct fuse_req pointer (each run counts these sends in its summary)";
    match backend {
        None => "no send hook".into(),
        Some(Backend::TpBtf | Backend::Tracepoint) if assigns_first => {
            "yes (fuse_request_send fires once the id is assigned: fuse_request_assign_unique, 6.18+)"
                .into()
        }
        Some(Backend::TpBtf) => format!("{late} (fuse_request_send in fuse_send_one, 6.12 to 6.17); {joined}"),
        Some(Backend::Tracepoint) => format!(
            "{late} (fuse_request_send in fuse_send_one, 6.12 to 6.17), and the plain tracepoint's record has no request pointer: sends cannot be joined, use --backend tp-btf, fentry or kprobe"
        ),
        Some(Backend::Fentry | Backend::Kprobe) => match function {
            Some("queue_request_and_unlock") => {
                "yes (queue_request_and_unlock runs after the id is assigned)".into()
            }
            Some(f) => format!("{late} ({f} runs before the transport assigns it); {joined}"),
            None => "no send hook".into(),
        },
    }
}

fn fuse_where(kernel: &KernelFunctions) -> String {
    match kernel.kallsyms.resolve("fuse_request_end") {
        None => "not found in /proc/kallsyms (modprobe fuse)".into(),
        Some(_) => match kernel.kallsyms.module_of("fuse_request_end") {
            Some(m) => format!("module {m} (struct offsets from /sys/kernel/btf/{m})"),
            None => "built in".into(),
        },
    }
}

/// Prints the report; fails (non-zero exit) when no complete lifecycle can be traced.
pub fn run(args: &DoctorArgs) -> Result<()> {
    let r = report(args)?;
    // Not println!: a reader gone away (`doctor | head`) is an error to
    // return, not a panic.
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if args.json || args.format == Format::Json {
        let mut v = serde_json::to_value(&r)?;
        v["type"] = "doctor".into();
        writeln!(out, "{v}")?;
    } else {
        for l in r.lines() {
            writeln!(out, "{l}")?;
        }
    }
    out.flush()?;
    if !r.complete {
        anyhow::bail!(
            "no complete FUSE request lifecycle can be traced here: {}",
            r.verdict
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::hooks::HOOK_TABLE;

    fn choices(with: &[Point]) -> Vec<PointChoice> {
        HOOK_TABLE
            .iter()
            .map(|(point, hooks)| PointChoice {
                transport: crate::kernel::hooks::Transport::DevFuse,
                point: *point,
                hook: with.contains(point).then(|| hooks[0]),
                skipped: vec![],
            })
            .collect()
    }

    #[test]
    fn id_at_send_names_the_kernel_lines() {
        let tp = id_at_send(Some(Backend::TpBtf), None, false);
        assert!(
            tp.starts_with("no:") && tp.contains("6.12 to 6.17") && tp.contains("pointer"),
            "{tp}"
        );
        assert!(id_at_send(Some(Backend::TpBtf), None, true).starts_with("yes"));
        let plain = id_at_send(Some(Backend::Tracepoint), None, false);
        assert!(plain.contains("cannot be joined"), "{plain}");
        let old = id_at_send(
            Some(Backend::Kprobe),
            Some("queue_request_and_unlock"),
            false,
        );
        assert!(old.starts_with("yes"), "{old}");
        let new = id_at_send(Some(Backend::Fentry), Some("fuse_send_one"), true);
        assert!(
            new.starts_with("no:") && new.contains("fuse_send_one"),
            "{new}"
        );
    }

    /// 7.2+ with kprobe/fentry: the send at `fuse_dev_queue_req` sees no
    /// io_uring or virtio-fs request, whatever hooks attached.
    #[test]
    fn verdict_says_which_transports_can_be_joined() {
        use Point::*;
        let mut all = choices(&[Sent, Taken, Replied, Ended, Virtq, DeviceDone]);
        for (point, hooks) in crate::kernel::hooks::URING_HOOK_TABLE {
            all.push(PointChoice {
                transport: Transport::IoUring,
                point: *point,
                hook: Some(hooks[0]),
                skipped: vec![],
            });
        }
        let tp = verdict(&all, Some("fuse_dev_queue_req"), false);
        assert!(tp.complete);
        assert!(
            tp.reason
                .contains("io_uring daemons: every point is observed"),
            "{}",
            tp.reason
        );
        // The same hooks, the send forced to a call hook at the /dev/fuse queue.
        for c in all.iter_mut().filter(|c| c.point == Sent) {
            c.hook = Some(crate::kernel::hooks::HOOK_TABLE[0].1[3]);
        }
        let kp = verdict(&all, Some("fuse_dev_queue_req"), false);
        assert!(kp.complete, "{}", kp.reason);
        assert!(
            kp.reason
                .contains("/dev/fuse daemons: every point is observed"),
            "{}",
            kp.reason
        );
        assert!(
            kp.reason.contains("io_uring daemons: not joined"),
            "{}",
            kp.reason
        );
        assert!(
            kp.reason.contains("virtio-fs: requests have no send point"),
            "{}",
            kp.reason
        );
        let kp_old = verdict(&all, Some("fuse_send_one"), false);
        assert!(
            kp_old
                .reason
                .contains("io_uring daemons: every point is observed"),
            "{}",
            kp_old.reason
        );
        // 6.14 to 6.17: an io_uring daemon's background requests skip the send.
        let early = verdict(&all, Some("fuse_send_one"), true);
        assert!(
            early
                .reason
                .contains("background requests (READ, WRITE with writeback) have no send point"),
            "{}",
            early.reason
        );
    }

    #[test]
    fn verdict_needs_sent_ended_and_one_side() {
        use Point::*;
        assert!(verdict(&choices(&[Sent, Taken, Replied, Ended]), None, false).complete);
        assert!(verdict(&choices(&[Sent, Virtq, DeviceDone, Ended]), None, false).complete);
        let v = verdict(&choices(&[Sent, Taken, Replied]), None, false);
        assert!(!v.complete);
        assert!(v.reason.contains("ended"), "{}", v.reason);
        assert!(!verdict(&choices(&[Sent, Ended, Taken]), None, false).complete);
        assert_eq!(
            backend_of(&choices(&[Sent, Ended])),
            Some(HOOK_TABLE[0].1[0].backend)
        );
    }
}
