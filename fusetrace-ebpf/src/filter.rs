//! The filters that more than one topic module applies, from settings user
//! space put in `LAYOUT`: `-c` (the command's cgroup, at every send) and
//! the daemon's tgid (at every daemon-side point). The filters only
//! `stats` applies (`-p`, `--comm`, `--mount`) stay in `aggregate.rs`.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};
use fusetrace_common::KernelLayout;

use crate::memory::layout_field;

/// Whether `-c` wants a request the current task sends: it is in the
/// command's cgroup (or no command was given).
#[inline(always)]
pub(crate) fn wanted_cgroup() -> bool {
    let cgroup = layout_field!(filter_cgroup);
    // SAFETY: a helper without arguments.
    cgroup == 0 || unsafe { bpf_get_current_cgroup_id() } == cgroup
}

#[inline(always)]
pub(crate) fn daemon_filtered_out(l: &KernelLayout) -> bool {
    l.daemon_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 != l.daemon_tgid
}
