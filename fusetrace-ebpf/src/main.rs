//! Kernel half of fusetrace: hooks on the FUSE request path that write one
//! [`FuseEvent`](fusetrace_common::FuseEvent) per observation into a ring
//! buffer.
//!
//! Struct offsets come from [`KernelLayout`](fusetrace_common::KernelLayout),
//! which user space fills from the running kernel's BTF before loading;
//! nothing here assumes a layout.
//!
//! This file holds the program entry points alone, each a call into the
//! module of its topic. User space attaches a program by its function's
//! name here, and finds a map by its static's name: both are interfaces.
//! The modules import downward, never in a loop:
//!
//! - topics: `daemon.rs` (the daemon side hooked in the kernel) and
//!   `syscalls.rs` (at the syscall boundary, for the processes
//!   `daemons.rs` knows hold `/dev/fuse`), `uring.rs` (FUSE over
//!   io_uring), `virtiofs.rs`; `request.rs` (send and end), `aggregate.rs`
//!   (in-kernel stats), `reply.rs` (when a reply began), `names.rs` and
//!   `diagnose.rs` (what a send or an end carries besides its header);
//! - below them: `maps.rs` (the maps several modules share), `report.rs`
//!   (events and counters), `fuse.rs` (FUSE's objects and connections),
//!   `filter.rs`, `args.rs` (a program's arguments), `memory.rs` (reads, at
//!   the offsets in `LAYOUT`).
#![no_std]
// BPF_CMPXCHG through `core::intrinsics::atomic_cxchg` (aggregate.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod aggregate;
mod args;
mod daemon;
mod daemons;
mod diagnose;
mod filter;
mod fuse;
mod maps;
mod memory;
mod names;
mod reply;
mod report;
mod request;
mod syscalls;
mod uring;
mod virtiofs;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, fexit, kprobe, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, TracePointContext,
    },
};
use fusetrace_common::EventKind;

use crate::{
    aggregate::{agg_end, agg_send},
    args::{fentry_arg, kprobe_arg},
    daemon::{on_copy_args, on_read_return},
    diagnose::app_write_exit,
    memory::layout,
    reply::on_dev_write,
    request::{on_ended, on_request, on_sent, on_submitted},
    syscalls::{on_read_exit, on_write_enter},
    virtiofs::{on_device_done, on_device_irq},
};

// ---- the request's path (request.rs, virtiofs.rs) ----

#[btf_tracepoint(function = "fuse_request_send")]
pub fn sent_btf(ctx: BtfTracePointContext) -> i32 {
    let req: u64 = ctx.arg(0);
    let l = layout();
    // Joins the caller's submission when kprobe/fentry call hooks run too.
    on_sent::<true>(Some(req), &l);
    0
}

#[btf_tracepoint(function = "fuse_request_end")]
pub fn ended_btf(ctx: BtfTracePointContext) -> i32 {
    let req: u64 = ctx.arg(0);
    let l = layout();
    on_ended(req, &l);
    0
}

// ---- kprobe and fentry backends (kernels without the FUSE tracepoints) ----
//
// The same hooks in two attach flavours. Which argument holds the pointer
// differs between kernel versions, so user space puts its index in LAYOUT
// (`arg_*`), read from the hooked function's BTF signature.

#[kprobe]
pub fn submitted_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_submitted(kprobe_arg(&ctx, &l, l.arg_submitted));
    0
}

#[kprobe]
pub fn submitted_bg_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_submitted(kprobe_arg(&ctx, &l, l.arg_submitted_bg));
    0
}

#[kprobe]
pub fn sent_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_sent::<false>(kprobe_arg(&ctx, &l, l.arg_sent), &l);
    0
}

#[kprobe]
pub fn ended_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_request::<false>(EventKind::Ended, kprobe_arg(&ctx, &l, l.arg_ended), &l, 0);
    0
}

#[kprobe]
pub fn virtq_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    let req = kprobe_arg(&ctx, &l, l.arg_virtq);
    on_request::<false>(EventKind::Virtq, req, &l, 0);
    0
}

#[kprobe]
pub fn device_irq_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_device_irq(kprobe_arg(&ctx, &l, 0));
    0
}

#[kprobe]
pub fn device_done_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    let req = kprobe_arg(&ctx, &l, l.arg_device_done_req);
    let fsvq = kprobe_arg(&ctx, &l, l.arg_device_done_fsvq);
    on_device_done(req, fsvq, &l);
    0
}

#[fentry]
pub fn submitted_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    on_submitted(fentry_arg(&ctx, l.arg_submitted));
    0
}

#[fentry]
pub fn submitted_bg_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    on_submitted(fentry_arg(&ctx, l.arg_submitted_bg));
    0
}

#[fentry]
pub fn sent_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    on_sent::<false>(fentry_arg(&ctx, l.arg_sent), &l);
    0
}

#[fentry]
pub fn ended_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    on_request::<false>(EventKind::Ended, fentry_arg(&ctx, l.arg_ended), &l, 0);
    0
}

#[fentry]
pub fn virtq_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    let req = fentry_arg(&ctx, l.arg_virtq);
    on_request::<false>(EventKind::Virtq, req, &l, 0);
    0
}

#[fentry]
pub fn device_irq_fe(ctx: FEntryContext) -> u32 {
    on_device_irq(fentry_arg(&ctx, 0));
    0
}

#[fentry]
pub fn device_done_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    let req = fentry_arg(&ctx, l.arg_device_done_req);
    let fsvq = fentry_arg(&ctx, l.arg_device_done_fsvq);
    on_device_done(req, fsvq, &l);
    0
}

/// Plain tracepoint fallback: no request header, only what the record carries.
#[tracepoint(category = "fuse", name = "fuse_request_send")]
pub fn sent_tp(ctx: TracePointContext) -> u32 {
    request::sent_from_record(&ctx);
    0
}

#[tracepoint(category = "fuse", name = "fuse_request_end")]
pub fn ended_tp(ctx: TracePointContext) -> u32 {
    request::ended_from_record(&ctx);
    0
}

// ---- the daemon side at the syscall boundary (syscalls.rs) ----

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn taken_sys_read(ctx: TracePointContext) -> u32 {
    on_read_exit(&ctx, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_readv")]
pub fn taken_sys_readv(ctx: TracePointContext) -> u32 {
    on_read_exit(&ctx, true)
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn replied_sys_write(ctx: TracePointContext) -> u32 {
    on_write_enter(&ctx, false)
}

#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn replied_sys_writev(ctx: TracePointContext) -> u32 {
    on_write_enter(&ctx, true)
}

/// splice(2) moves a request or reply without the header passing through
/// user memory we can read; count it so the gap is shown, not hidden.
#[tracepoint(category = "syscalls", name = "sys_enter_splice")]
pub fn taken_sys_splice(ctx: TracePointContext) -> u32 {
    syscalls::on_splice_enter(&ctx)
}

// ---- the daemon side hooked in the kernel (daemon.rs, reply.rs) ----

#[fentry]
pub fn taken_copy_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    on_copy_args(fentry_arg(&ctx, l.arg_copy_cs), &l);
    0
}

#[fexit]
pub fn taken_read_fx(ctx: FExitContext) -> u32 {
    on_read_return(&ctx, &layout());
    0
}

#[kprobe]
pub fn taken_copy_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_copy_args(kprobe_arg(&ctx, &l, l.arg_copy_cs), &l);
    0
}

#[fentry]
pub fn replied_write_fe(_ctx: FEntryContext) -> u32 {
    on_dev_write(&layout());
    0
}

#[kprobe]
pub fn replied_write_kp(_ctx: ProbeContext) -> u32 {
    on_dev_write(&layout());
    0
}

// ---- FUSE over io_uring (uring.rs) ----

#[btf_tracepoint(function = "io_uring_complete")]
pub fn taken_uring_btf(ctx: BtfTracePointContext) -> i32 {
    // (struct io_ring_ctx *ctx, void *req, struct io_uring_cqe *cqe)
    let req: u64 = ctx.arg(1);
    let cqe: u64 = ctx.arg(2);
    uring::on_complete(req, cqe);
    0
}

#[btf_tracepoint(function = "io_uring_submit_req")]
pub fn replied_uring_btf(ctx: BtfTracePointContext) -> i32 {
    let req: u64 = ctx.arg(0);
    uring::on_submit(req);
    0
}

/// `iter/task_file` for `doctor`: every open `/dev/fuse` file, with
/// whether its connection serves requests through a ring.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn transports(ctx: *mut core::ffi::c_void) -> i32 {
    uring::dev_fuse_file(ctx)
}

// ---- in-kernel aggregation for `stats` (aggregate.rs) ----

#[btf_tracepoint(function = "fuse_request_send")]
pub fn agg_sent_btf(ctx: BtfTracePointContext) -> i32 {
    agg_send::<true>(Some(ctx.arg(0)));
    0
}

#[btf_tracepoint(function = "fuse_request_end")]
pub fn agg_ended_btf(ctx: BtfTracePointContext) -> i32 {
    agg_end::<true>(Some(ctx.arg(0)));
    0
}

#[kprobe]
pub fn agg_sent_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    agg_send::<false>(kprobe_arg(&ctx, &l, l.arg_sent));
    0
}

#[kprobe]
pub fn agg_ended_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    agg_end::<false>(kprobe_arg(&ctx, &l, l.arg_ended));
    0
}

#[fentry]
pub fn agg_sent_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    // The argument was copied out of the context by a helper: a number.
    agg_send::<false>(fentry_arg(&ctx, l.arg_sent));
    0
}

#[fentry]
pub fn agg_ended_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    agg_end::<false>(fentry_arg(&ctx, l.arg_ended));
    0
}

// ---- applications' writes, for `diagnose` (diagnose.rs) ----

#[tracepoint(category = "syscalls", name = "sys_enter_pwrite64")]
pub fn app_write_enter_pwrite64(ctx: TracePointContext) -> u32 {
    diagnose::on_pwrite_enter(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn app_write_exit_write(ctx: TracePointContext) -> u32 {
    app_write_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_writev")]
pub fn app_write_exit_writev(ctx: TracePointContext) -> u32 {
    app_write_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_pwrite64")]
pub fn app_write_exit_pwrite64(ctx: TracePointContext) -> u32 {
    app_write_exit(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
