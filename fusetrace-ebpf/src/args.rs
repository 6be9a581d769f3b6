//! Where a program finds its arguments: in a kprobe's saved registers, an
//! fentry's or fexit's array, a tracepoint's record, or (at a syscall's
//! exit) the user registers the kernel saved at entry. Which argument
//! holds a pointer differs between kernel versions, so the indices and
//! offsets are runtime values from [`KernelLayout`] (`arg_*`, `regs_*`,
//! `tp_*`, `sys_*`), read from the hooked function's BTF signature or the
//! tracepoint's format file.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task_btf, generated::bpf_task_pt_regs},
    programs::{ProbeContext, TracePointContext},
};
use fusetrace_common::KernelLayout;

use crate::memory::kread;

/// Argument `n` of a kprobed function, from the saved registers. Read with
/// a helper so the offset may be a runtime value.
#[inline(always)]
pub(crate) fn kprobe_arg(ctx: &ProbeContext, l: &KernelLayout, n: u32) -> Option<u64> {
    let off = match n {
        0 => l.regs_arg0,
        1 => l.regs_arg1,
        _ => l.regs_arg2,
    };
    kread(ctx.as_ptr() as u64, off)
}

/// Argument `n` of an fentry- or fexit-traced function (the context is an
/// array of u64; fexit's return value follows the arguments).
#[inline(always)]
pub(crate) fn fentry_arg(ctx: &impl EbpfContext, n: u32) -> Option<u64> {
    kread(ctx.as_ptr() as u64, n.min(5) * 8)
}

#[inline(always)]
pub(crate) fn tp_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // Through a helper: the verifier takes context loads only at offsets
    // written in the instruction, and this one comes from user space.
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(offset as usize).ok() }
}

/// The user registers the kernel saved at the current syscall's entry
/// (`bpf_task_pt_regs` of `task`, the current one): its arguments at entry
/// and exit, its result at exit. A typed pointer, so each register is a
/// plain load at an offset the verifier knows (read-only data), where a
/// tracepoint record's field at an offset from user space takes a helper
/// call each. Works at syscall exit, so a read that began before
/// fusetrace attached is still decoded when it returns.
#[derive(Clone, Copy)]
pub(crate) struct SyscallRegs(u64);

impl SyscallRegs {
    #[inline(always)]
    pub(crate) fn of(task: u64) -> Option<SyscallRegs> {
        // SAFETY: the helper takes the BTF task pointer.
        let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as u64;
        (regs != 0).then_some(SyscallRegs(regs))
    }

    #[inline(always)]
    fn at(self, off: u32) -> u64 {
        // SAFETY: a typed pointer at an offset the verifier knows; a fault
        // reads as zero.
        unsafe { core::ptr::read_volatile((self.0 + off as u64) as *const u64) }
    }

    /// Arguments 0 to 2.
    #[inline(always)]
    pub(crate) fn args(self, l: &KernelLayout) -> [u64; 3] {
        [
            self.at(l.regs_syscall_arg0),
            self.at(l.regs_arg1),
            self.at(l.regs_arg2),
        ]
    }

    /// The result, at the syscall's exit.
    #[inline(always)]
    pub(crate) fn ret(self, l: &KernelLayout) -> i64 {
        self.at(l.regs_syscall_ret) as i64
    }
}

/// The current thread's id.
#[inline(always)]
pub(crate) fn current_tid() -> u32 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32
}

/// The current task (`struct task_struct *`, a typed pointer).
#[inline(always)]
pub(crate) fn current_task() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// The current syscall's number and first three arguments (see
/// [`SyscallRegs`]).
#[inline(always)]
pub(crate) fn syscall_args(l: &KernelLayout) -> Option<[u64; 4]> {
    // SAFETY: helpers take the BTF task pointer they return.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    // A typed pointer at offsets the verifier knows: plain loads, checked
    // against BTF, no helper calls.
    let arg = |off: u32| -> u64 {
        // SAFETY: see above; a fault reads as zero.
        unsafe { core::ptr::read_volatile((regs + off as u64) as *const u64) }
    };
    // The number as 32 bits: arm64's `syscallno` is an int, and the
    // verifier refuses a read past the member's end (x86_64's `orig_ax`
    // is 64 bits, its low half first).
    // SAFETY: as above.
    let nr = unsafe { core::ptr::read_volatile((regs + l.regs_syscall_nr as u64) as *const u32) };
    Some([
        arg(l.regs_syscall_arg0),
        arg(l.regs_arg1),
        arg(l.regs_arg2),
        u64::from(nr),
    ])
}
