//! Reading kernel and user memory, at the offsets user space put in
//! [`LAYOUT`]: nothing in this crate assumes a struct layout.
//!
//! Two ways to read the kernel: through `bpf_probe_read_kernel`
//! ([`kread`]), which takes any address, or as a plain load through a
//! typed pointer that the verifier checks against BTF ([`load`] with
//! `DIRECT`), which costs no helper call but only works where the pointer
//! came from a `tp_btf` argument.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_user};
use fusetrace_common::KernelLayout;

use crate::maps::LAYOUT;

/// The offsets user space wrote into [`LAYOUT`]. The address goes through
/// a volatile stack slot so the compiler cannot fold reads of the zeroed
/// initialiser, and each field is then an ordinary load where it is used
/// (copying the whole struct cost every program a few hundred instructions).
/// The verifier still sees read-only map data and knows the values.
#[inline(always)]
pub(crate) fn layout() -> &'static KernelLayout {
    let mut at: *const KernelLayout = &LAYOUT;
    // SAFETY: a stack local; the pointer stays the global's address.
    unsafe {
        core::ptr::write_volatile(&mut at, at);
        &*core::ptr::read_volatile(&at)
    }
}

/// One field of [`LAYOUT`], without copying the whole struct onto the
/// stack (hot programs read two or three fields).
macro_rules! layout_field {
    ($field:ident) => {
        // SAFETY: see `layout`.
        unsafe { core::ptr::read_volatile(&$crate::maps::LAYOUT.$field) }
    };
}
pub(crate) use layout_field;

#[inline(always)]
pub(crate) fn kread<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

#[inline(always)]
pub(crate) fn uread<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user tolerates bad addresses.
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

/// Reads a `T` at `base + offset`. `DIRECT`: `base` is a typed pointer
/// (a `tp_btf` argument, and what is loaded through it), which
/// the verifier lets a program load through (offsets are read-only data it
/// knows), no helper call; otherwise (kprobe and fentry arguments, read
/// out of their context by a helper) `bpf_probe_read_kernel`.
#[inline(always)]
pub(crate) fn load<T: Copy, const DIRECT: bool>(base: u64, offset: u32) -> Option<T> {
    if DIRECT {
        // SAFETY: the verifier checks the access against BTF and turns a
        // fault into a zero.
        Some(unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) })
    } else {
        kread(base, offset)
    }
}
