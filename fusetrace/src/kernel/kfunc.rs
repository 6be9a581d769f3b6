//! Kernel functions the kprobe and fentry backends hook, and how to find
//! them in the running kernel: the name (it changes between versions) and
//! which argument holds the pointer we read, from the function's BTF
//! signature; the symbol a kprobe goes on (the compiler may rename a static
//! function) from kallsyms, read only when a kprobe is attached.

use anyhow::{Result, bail};
use fusetrace_common::KernelLayout;

use crate::{kernel::btf::Btf, kernel::kallsyms::Kallsyms};

/// Which `KernelLayout::arg_*` slot an argument index goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgSlot {
    Submitted,
    SubmittedBg,
    Sent,
    Ended,
    Virtq,
    /// Read at a fixed index (`virtio_fs_vq_done(struct virtqueue *)`).
    Fixed,
    DeviceDoneReq,
    DeviceDoneFsvq,
    CopyState,
    ReadFud,
    ReadCs,
}

/// A kernel function a program hooks, across kernel versions.
#[derive(Debug)]
pub struct KFunc {
    /// Names the function has had, newest first.
    pub names: &'static [&'static str],
    /// Arguments the program reads: slot, the struct the argument points to,
    /// and its index when the kernel's BTF does not describe the function.
    pub args: &'static [(ArgSlot, &'static str, u32)],
}

/// A [`KFunc`] as this kernel's BTF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The function's name as BTF knows it; the newest name it has had when
    /// BTF does not describe it.
    pub name: &'static str,
    /// The names a kprobe may find it under in kallsyms: `name` alone when
    /// BTF describes it (the argument indexes are that signature's).
    candidates: &'static [&'static str],
    /// Module whose BTF describes it (`None`: vmlinux, or not described).
    pub module: Option<String>,
    /// Argument index per slot.
    pub args: Vec<(ArgSlot, u32)>,
    /// Whether BTF describes the function under `name` (fentry needs it; the
    /// kernel itself refuses an fentry on a function without an address).
    pub in_btf: bool,
}

impl Resolved {
    /// The symbol to put a kprobe on (may carry a `.isra.0`-like suffix).
    /// The first call reads `/proc/kallsyms`.
    pub fn symbol<'k>(&self, kallsyms: &'k Kallsyms) -> Result<&'k str> {
        match kallsyms.first_of(self.candidates) {
            Some((_, symbol)) => Ok(symbol),
            None => bail!(
                "no {} in /proc/kallsyms (inlined or absent in this kernel version)",
                self.candidates.join(" or ")
            ),
        }
    }
}

/// Finds `f` in the running kernel's BTF. Kallsyms is not needed for this:
/// the argument indexes (which go into the layout before anything is
/// loaded) and fentry's name and module all come from BTF.
pub fn resolve(f: &KFunc, btf: &Btf) -> Result<Resolved> {
    let names: &'static [&'static str] = f.names;
    let described = names.iter().position(|n| btf.has_function(n));
    let (name, candidates) = match described {
        Some(i) => (names[i], &names[i..=i]),
        None => (names[0], names),
    };
    let mut args = Vec::new();
    for (slot, pointee, fallback) in f.args {
        let index = match btf.param_pointing_to(name, pointee) {
            Some(i) => i as u32,
            // Described, but no such argument: the signature changed.
            None if described.is_some() => bail!(
                "{name} takes no struct {pointee} * in this kernel's BTF (its signature changed)"
            ),
            None => *fallback,
        };
        args.push((*slot, index));
    }
    Ok(Resolved {
        name,
        candidates,
        module: btf.function_module(name).map(str::to_string),
        args,
        in_btf: described.is_some(),
    })
}

/// Puts a resolved function's argument indexes into the layout.
pub fn set_layout_args(l: &mut KernelLayout, r: &Resolved) {
    for (slot, index) in &r.args {
        let field = match slot {
            ArgSlot::Submitted => &mut l.arg_submitted,
            ArgSlot::SubmittedBg => &mut l.arg_submitted_bg,
            ArgSlot::Sent => &mut l.arg_sent,
            ArgSlot::Ended => &mut l.arg_ended,
            ArgSlot::Virtq => &mut l.arg_virtq,
            ArgSlot::DeviceDoneReq => &mut l.arg_device_done_req,
            ArgSlot::DeviceDoneFsvq => &mut l.arg_device_done_fsvq,
            ArgSlot::CopyState => &mut l.arg_copy_cs,
            ArgSlot::ReadFud => &mut l.arg_read_fud,
            ArgSlot::ReadCs => &mut l.arg_read_cs,
            ArgSlot::Fixed => continue,
        };
        *field = *index;
    }
}

/// The synchronous submission: the caller waits inside it for the answer.
/// 6.1: `fuse_simple_request(fm, args)`; since idmapped mounts (6.8?):
/// `__fuse_simple_request(idmap, fm, args)`.
pub static SUBMITTED: KFunc = KFunc {
    names: &["__fuse_simple_request", "fuse_simple_request"],
    args: &[(ArgSlot::Submitted, "fuse_args", 1)],
};

/// The asynchronous submission: the request may wait in the background
/// queue (`max_background`) before it is sent.
pub static SUBMITTED_BG: KFunc = KFunc {
    names: &["fuse_simple_background"],
    args: &[(ArgSlot::SubmittedBg, "fuse_args", 1)],
};

/// Where a request is queued for the daemon (or the virtqueue). Up to 6.8
/// `queue_request_and_unlock(fiq, req)`, after the id was assigned
/// (`__fuse_request_send`, `flush_bg_queue`); since 6.9 `fuse_send_one(fiq,
/// req)`, which every request passes through (`/dev/fuse`, virtio-fs and
/// the background queue), before the transport assigns the id: there the
/// send carries unique 0 and is joined by its pointer (see the tracker).
/// From 7.2 (`struct fuse_chan`) `fuse_send_one` is gone (inlined into
/// `fuse_chan_send`): the `/dev/fuse` transport's `fuse_dev_queue_req(fiq,
/// req)` is the send there, which io_uring and virtio-fs requests do not
/// pass ([`SENT_DEV_FUSE_ONLY`]; the FUSE tracepoints see them all).
pub static SENT: KFunc = KFunc {
    names: &[
        "fuse_send_one",
        "queue_request_and_unlock",
        "fuse_dev_queue_req",
    ],
    args: &[(ArgSlot::Sent, "fuse_req", 1)],
};

/// The [`SENT`] function that only `/dev/fuse` requests pass.
pub const SENT_DEV_FUSE_ONLY: &str = "fuse_dev_queue_req";

/// The request's end: `fuse_request_end(req)` on every version.
pub static ENDED: KFunc = KFunc {
    names: &["fuse_request_end"],
    args: &[(ArgSlot::Ended, "fuse_req", 0)],
};

/// `virtio_fs_enqueue_req(fsvq, req, in_flight)`.
pub static VIRTQ: KFunc = KFunc {
    names: &["virtio_fs_enqueue_req"],
    args: &[(ArgSlot::Virtq, "fuse_req", 1)],
};

/// `virtio_fs_vq_done(vq)`: the device's interrupt.
pub static DEVICE_IRQ: KFunc = KFunc {
    names: &["virtio_fs_vq_done"],
    args: &[(ArgSlot::Fixed, "virtqueue", 0)],
};

/// `virtio_fs_request_complete(req, fsvq)`: the answer taken off the queue.
pub static DEVICE_DONE: KFunc = KFunc {
    names: &["virtio_fs_request_complete"],
    args: &[
        (ArgSlot::DeviceDoneReq, "fuse_req", 0),
        (ArgSlot::DeviceDoneFsvq, "virtio_fs_vq", 1),
    ],
};

/// `fuse_copy_args(cs, numargs, argpages, args, zeroing)`: copies a
/// request's arguments to the daemon (`cs->write`) or its reply's from it.
pub static COPY_ARGS: KFunc = KFunc {
    names: &["fuse_copy_args"],
    args: &[(ArgSlot::CopyState, "fuse_copy_state", 0)],
};

/// `fuse_dev_do_read(fud, file, cs, nbytes)`: what a daemon's read(2),
/// readv(2) or splice(2) of `/dev/fuse` gets (its return value is read
/// at fexit, after the arguments).
pub static DEV_READ: KFunc = KFunc {
    names: &["fuse_dev_do_read"],
    args: &[
        (ArgSlot::ReadFud, "fuse_dev", 0),
        (ArgSlot::ReadCs, "fuse_copy_state", 2),
    ],
};

/// `fuse_dev_do_write(fud, cs, nbytes)`: a daemon's reply (write, writev
/// or splice), which ends its request before returning.
pub static DEV_WRITE: KFunc = KFunc {
    names: &["fuse_dev_do_write"],
    args: &[(ArgSlot::Fixed, "fuse_copy_state", 1)],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_btf_signature_the_fallback_index_is_used() {
        let k = Kallsyms::parse(
            "0 T fuse_simple_request\t[fuse]\n0 t queue_request_and_unlock\t[fuse]\n",
        );
        let btf = Btf::default();
        let r = resolve(&SUBMITTED, &btf).unwrap();
        assert_eq!(r.symbol(&k).unwrap(), "fuse_simple_request");
        assert_eq!(r.args, vec![(ArgSlot::Submitted, 1)]);
        assert!(!r.in_btf);
        let mut l = KernelLayout::zeroed();
        set_layout_args(&mut l, &resolve(&SENT, &btf).unwrap());
        assert_eq!(l.arg_sent, 1);
        let err = resolve(&ENDED, &btf)
            .unwrap()
            .symbol(&k)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no fuse_request_end in /proc/kallsyms"),
            "{err}"
        );
    }

    /// Resolving every hooked function reads nothing but BTF: on a kernel
    /// without kprobes, kallsyms (megabytes) is never read. The running
    /// kernel's BTF: FUSE is built in or a module with split BTF.
    #[test]
    fn resolving_reads_btf_only() {
        let btf = Btf::from_running_kernel(&["fuse", "virtiofs"]).unwrap();
        let k = Kallsyms::from_running_kernel();
        let all = [
            &SUBMITTED,
            &SUBMITTED_BG,
            &SENT,
            &ENDED,
            &VIRTQ,
            &DEVICE_IRQ,
            &DEVICE_DONE,
        ];
        let resolved: Vec<_> = all.iter().map(|f| resolve(f, &btf)).collect();
        assert!(!k.is_loaded());
        let end = resolved[3].as_ref().unwrap();
        assert!(end.in_btf, "fuse_request_end is in every FUSE kernel's BTF");
        assert_eq!(end.args, vec![(ArgSlot::Ended, 0)]);
        assert_eq!(end.symbol(&k).unwrap(), "fuse_request_end");
        assert!(k.is_loaded());
        // BTF and kallsyms agree on where it lives.
        assert_eq!(end.module.as_deref(), k.module_of("fuse_request_end"));
    }
}
