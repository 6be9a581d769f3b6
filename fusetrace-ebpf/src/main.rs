//! Kernel half of fusetrace: hooks on the FUSE request path that write one
//! [`FuseEvent`] per observation into a ring buffer.
//!
//! Struct offsets come from [`KernelLayout`], which user space fills from the
//! running kernel's BTF before loading; nothing here assumes a layout.
#![no_std]
// BPF_CMPXCHG through `core::intrinsics::atomic_cxchg` (aggregate.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod aggregate;
mod daemon;
mod diagnose;
mod names;
mod uring;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use fusetrace_common::{
    EventKind, FLAG_BACKGROUND, FLAG_HAS_HEADER, FuseEvent, FuseInHeader, FuseOutHeader, IoVec,
    KernelLayout, NO_HOP, RING_BYTES, counters, fuse_req_hash,
};

/// `offsetof(struct fuse_in_header, unique)`: user ABI.
pub(crate) const UNIQUE_IN_HEADER: u32 = core::mem::offset_of!(FuseInHeader, unique) as u32;

#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout::zeroed();

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// `[0]`: 1 once every hook is attached. Until then nothing is reported: a
/// request sent while the end hook was not yet attached would otherwise
/// look in flight forever. `[1]`: 1 when the replied point is hooked in the
/// kernel (`daemon.rs`), whose time the end hooks then take.
#[map]
static GATE: Array<u32> = Array::with_max_entries(2, 0);

/// 1 once a send was seen before its request id was assigned (kernels 6.11
/// to 6.15): from then on the daemon's takes look their request up in the
/// connection's processing table, to name its `struct fuse_req *`.
#[map]
static ID_LATE: Array<u32> = Array::with_max_entries(1, 0);

/// Indexed by `counters::*`: ring buffer drops and transfers we could not decode.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// The offsets user space wrote into [`LAYOUT`]. The address goes through
/// a volatile stack slot so the compiler cannot fold reads of the zeroed
/// initialiser, and each field is then an ordinary load where it is used
/// (copying the whole struct cost every program a few hundred instructions).
/// The verifier still sees read-only map data and knows the values.
#[inline(always)]
fn layout() -> &'static KernelLayout {
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
        unsafe { core::ptr::read_volatile(&$crate::LAYOUT.$field) }
    };
}
pub(crate) use layout_field;

#[inline(always)]
fn bump(counter: u32) {
    if let Some(v) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn kread<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

#[inline(always)]
fn uread<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user tolerates bad addresses.
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

/// Fills the fields every event has; false while the gate is closed.
#[inline(always)]
fn stamp(ev: &mut FuseEvent) -> bool {
    if GATE.get(0).copied() != Some(1) {
        return false;
    }
    // `-c`: only the command's sends (its other points are kept out in
    // user space, by the sends that came).
    if ev.kind == EventKind::Sent as u8 && !aggregate::wanted_cgroup() {
        return false;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    // Only the requester's command is shown (daemon threads go by tid).
    if ev.kind == EventKind::Sent as u8 || ev.kind == EventKind::AppWrite as u8 {
        ev.comm = bpf_get_current_comm().unwrap_or_default();
    }
    true
}

/// Fills the fields every event has and submits it; counts a drop when the
/// ring buffer is full.
#[inline(always)]
fn submit(mut ev: FuseEvent) {
    if !stamp(&mut ev) {
        return;
    }
    match EVENTS.reserve::<FuseEvent>(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(0);
        }
        None => bump(counters::RING_DROPS),
    }
}

/// An event carrying a request header (`struct fuse_in_header`, from the
/// kernel's request or the daemon's buffer).
#[inline(always)]
fn header_event(kind: EventKind, connection: u32, req: u64, h: &FuseInHeader) -> FuseEvent {
    FuseEvent {
        kind: kind as u8,
        flags: FLAG_HAS_HEADER,
        connection,
        req,
        unique: h.unique,
        opcode: h.opcode,
        nodeid: h.nodeid,
        req_pid: h.pid,
        req_uid: h.uid,
        len: h.len,
        ..FuseEvent::default()
    }
}

/// Reads what a `struct fuse_req *` says about itself.
#[inline(always)]
fn request_event(kind: EventKind, req: u64, l: &KernelLayout) -> Option<FuseEvent> {
    let h: FuseInHeader = kread(req, l.req_in_h)?;
    let flags: u64 = kread(req, l.req_flags)?;
    let chan: u64 = kread(req, l.req_chan)?;
    let fc: u64 = kread(chan, l.chan_conn)?;
    let connection: u32 = kread(fc, l.conn_dev)?;
    let mut ev = header_event(kind, connection, req, &h);
    if flags & (1u64 << (l.fr_background_bit & 63)) != 0 {
        ev.flags |= FLAG_BACKGROUND;
    }
    if kind == EventKind::Ended {
        let out: FuseOutHeader = kread(req, l.req_out_h)?;
        ev.error = out.error;
        ev.len = out.len;
    }
    diagnose::request_args(&mut ev, kind, req, fc, l);
    Some(ev)
}

#[btf_tracepoint(function = "fuse_request_send")]
pub fn sent_btf(ctx: BtfTracePointContext) -> i32 {
    let req: u64 = ctx.arg(0);
    let l = layout();
    // Joins the caller's submission when kprobe/fentry call hooks run too.
    on_sent(Some(req), &l);
    0
}

#[btf_tracepoint(function = "fuse_request_end")]
pub fn ended_btf(ctx: BtfTracePointContext) -> i32 {
    let req: u64 = ctx.arg(0);
    let l = layout();
    match request_event(EventKind::Ended, req, &l) {
        Some(ev) => daemon::submit_end(ev),
        None => bump(counters::READ_FAULTS),
    }
    0
}

// ---- kprobe and fentry backends (kernels without the FUSE tracepoints) ----
//
// The same hooks in two attach flavours. Which argument holds the pointer
// differs between kernel versions, so user space puts its index in LAYOUT
// (`arg_*`), read from the hooked function's BTF signature.

/// Submissions not yet sent, keyed by `struct fuse_args *` (the request is
/// allocated later, inside the submitting function): the submit time.
#[map]
static SUBMITTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Latest device interrupt (`virtio_fs_vq_done`) per `struct virtqueue *`.
#[map]
static VQ_DONE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(256, 0);

/// Argument `n` of a kprobed function, from the saved registers. Read with
/// a helper so the offset may be a runtime value.
#[inline(always)]
fn kprobe_arg(ctx: &ProbeContext, l: &KernelLayout, n: u32) -> Option<u64> {
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
fn fentry_arg(ctx: &impl EbpfContext, n: u32) -> Option<u64> {
    kread(ctx.as_ptr() as u64, n.min(5) * 8)
}

#[inline(always)]
fn on_submitted(args: Option<u64>) {
    if let Some(args) = args {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = SUBMITTED.insert(&args, &now, 0);
    }
}

#[inline(always)]
fn on_request(kind: EventKind, req: Option<u64>, l: &KernelLayout, aux_ns: u64) {
    match req.and_then(|req| request_event(kind, req, l)) {
        Some(mut ev) => {
            ev.aux_ns = aux_ns;
            if kind == EventKind::Sent {
                note_sent_id(ev.unique);
                if let Some(req) = req
                    && names::submit_sent(&mut ev, req, l)
                {
                    return;
                }
            } else if kind == EventKind::Ended {
                return daemon::submit_end(ev);
            }
            submit(ev)
        }
        None => bump(counters::READ_FAULTS),
    }
}

/// The request is queued for the daemon (or the virtqueue): joins the
/// submission that created it.
#[inline(always)]
fn on_sent(req: Option<u64>, l: &KernelLayout) {
    let mut submitted = 0;
    if let Some(args) = req.and_then(|r| kread::<u64>(r, l.req_args)) {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(ts) = unsafe { SUBMITTED.get(&args) } {
            submitted = *ts;
            let _ = SUBMITTED.remove(&args);
        }
    }
    on_request(EventKind::Sent, req, l, submitted);
}

/// Counts a send whose request id is not assigned yet, and turns on the
/// daemon takes' lookup of their request (see `taken_request`).
#[inline(always)]
fn note_sent_id(unique: u64) {
    if unique != 0 || GATE.get(0).copied() != Some(1) {
        return;
    }
    bump(counters::SENT_BEFORE_ID);
    if let Some(flag) = ID_LATE.get_ptr_mut(0) {
        // SAFETY: a map value; every writer stores the same 1.
        unsafe { *flag = 1 };
    }
}

#[inline(always)]
fn on_device_irq(vq: Option<u64>) {
    if let Some(vq) = vq {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = VQ_DONE.insert(&vq, &now, 0);
    }
}

#[inline(always)]
fn on_device_done(req: Option<u64>, fsvq: Option<u64>, l: &KernelLayout) {
    let irq = fsvq
        .and_then(|f| kread::<u64>(f, l.fsvq_vq))
        // SAFETY: plain copy of the map value.
        .and_then(|vq| unsafe { VQ_DONE.get(&vq) }.copied())
        .unwrap_or(0);
    on_request(EventKind::DeviceDone, req, l, irq);
}

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
    on_sent(kprobe_arg(&ctx, &l, l.arg_sent), &l);
    0
}

#[kprobe]
pub fn ended_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    on_request(EventKind::Ended, kprobe_arg(&ctx, &l, l.arg_ended), &l, 0);
    0
}

#[kprobe]
pub fn virtq_kp(ctx: ProbeContext) -> u32 {
    let l = layout();
    let req = kprobe_arg(&ctx, &l, l.arg_virtq);
    on_request(EventKind::Virtq, req, &l, 0);
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
    on_sent(fentry_arg(&ctx, l.arg_sent), &l);
    0
}

#[fentry]
pub fn ended_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    on_request(EventKind::Ended, fentry_arg(&ctx, l.arg_ended), &l, 0);
    0
}

#[fentry]
pub fn virtq_fe(ctx: FEntryContext) -> u32 {
    let l = layout();
    let req = fentry_arg(&ctx, l.arg_virtq);
    on_request(EventKind::Virtq, req, &l, 0);
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

#[inline(always)]
fn tp_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // Through a helper: the verifier takes context loads only at offsets
    // written in the instruction, and this one comes from user space.
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(offset as usize).ok() }
}

/// Plain tracepoint fallback: no request header, only what the record carries.
#[tracepoint(category = "fuse", name = "fuse_request_send")]
pub fn sent_tp(ctx: TracePointContext) -> u32 {
    let l = layout();
    let ev = FuseEvent {
        kind: EventKind::Sent as u8,
        connection: tp_field(&ctx, l.tp_send_connection).unwrap_or(0),
        unique: tp_field(&ctx, l.tp_send_unique).unwrap_or(0),
        opcode: tp_field(&ctx, l.tp_send_opcode).unwrap_or(0),
        len: tp_field(&ctx, l.tp_send_len).unwrap_or(0),
        ..FuseEvent::default()
    };
    note_sent_id(ev.unique);
    submit(ev);
    0
}

#[tracepoint(category = "fuse", name = "fuse_request_end")]
pub fn ended_tp(ctx: TracePointContext) -> u32 {
    let l = layout();
    let ev = FuseEvent {
        kind: EventKind::Ended as u8,
        connection: tp_field(&ctx, l.tp_end_connection).unwrap_or(0),
        unique: tp_field(&ctx, l.tp_end_unique).unwrap_or(0),
        len: tp_field(&ctx, l.tp_end_len).unwrap_or(0),
        error: tp_field(&ctx, l.tp_end_error).unwrap_or(0),
        ..FuseEvent::default()
    };
    daemon::submit_end(ev);
    0
}

/// If `fd` of the current task is a `/dev/fuse` file, the connection's dev_t.
#[inline(always)]
fn fuse_fd_connection(fd: u64, l: &KernelLayout) -> Option<u32> {
    dev_fuse_connection(fd_file(fd, l)?, l)
}

/// The `struct file *` behind `fd` in the current task's fd table.
#[inline(always)]
fn fd_file(fd: u64, l: &KernelLayout) -> Option<u64> {
    // Typed pointers down to the fd array: plain loads the verifier checks
    // against BTF (offsets it knows from read-only data). The array's slot
    // is at a variable index, which only a helper may read.
    // SAFETY: a fault reads as zero; every pointer is checked before use.
    let direct = |base: u64, off: u32| -> u64 {
        unsafe { core::ptr::read_volatile((base + off as u64) as *const u64) }
    };
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let files = direct(task, l.task_files);
    if files == 0 {
        return None;
    }
    let fdt = direct(files, l.files_fdt);
    if fdt == 0 {
        return None;
    }
    // SAFETY: as above.
    let max_fds =
        unsafe { core::ptr::read_volatile((fdt + l.fdtable_max_fds as u64) as *const u32) };
    if fd >= max_fds as u64 {
        return None;
    }
    let fd_array = direct(fdt, l.fdtable_fd);
    if fd_array == 0 {
        return None;
    }
    let file: u64 = kread(fd_array, (fd * 8) as u32)?;
    if file == 0 {
        return None;
    }
    Some(file)
}

/// If `file` is `/dev/fuse`, its connection's dev_t.
#[inline(always)]
fn dev_fuse_connection(file: u64, l: &KernelLayout) -> Option<u32> {
    let inode: u64 = kread(file, l.file_inode)?;
    let rdev: u32 = kread(inode, l.inode_rdev)?;
    if rdev != l.fuse_rdev {
        return None;
    }
    let fud: u64 = kread(file, l.file_private_data)?;
    if fud == 0 {
        // Opened but not mounted yet: no connection.
        return None;
    }
    fud_connection(fud, l)
}

/// The connection's dev_t of a `struct fuse_dev *` (through its channel
/// where the kernel has one: `KernelLayout::dev_chan`).
#[inline(always)]
fn fud_connection(fud: u64, l: &KernelLayout) -> Option<u32> {
    let chan: u64 = kread(fud, l.dev_chan)?;
    let fc: u64 = if l.dev_chan_conn == NO_HOP {
        chan
    } else {
        kread(chan, l.dev_chan_conn)?
    };
    kread(fc, l.conn_dev)
}

#[inline(always)]
fn daemon_filtered_out(l: &KernelLayout) -> bool {
    l.daemon_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 != l.daemon_tgid
}

/// The current syscall's number and first three arguments, from the user
/// registers the kernel saved at entry (`bpf_task_pt_regs`). Works at
/// syscall exit, so a read that began before fusetrace attached is still
/// decoded when it returns.
#[inline(always)]
fn syscall_args(l: &KernelLayout) -> Option<[u64; 4]> {
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

/// Shared by read(2) and readv(2) exit: the daemon took a request whose
/// header is now at the start of its buffer.
#[inline(always)]
fn on_read_exit(ctx: &TracePointContext, vectored: bool) -> u32 {
    let l = layout();
    let ret: i64 = tp_field(ctx, l.sys_exit_ret).unwrap_or(-1);
    if ret < core::mem::size_of::<FuseInHeader>() as i64 || daemon_filtered_out(&l) {
        return 0;
    }
    let Some([fd, arg, count, _]) = syscall_args(l) else {
        return 0;
    };
    // Daemons read into buffers of at least FUSE_MIN_READ_BUFFER bytes: a
    // cheap test before walking the fd table.
    if !vectored && count < fusetrace_common::FUSE_MIN_READ_BUFFER {
        return 0;
    }
    let buf = if vectored {
        match uread::<IoVec>(arg) {
            Some(iov) if iov.len >= core::mem::size_of::<FuseInHeader>() as u64 => iov.base,
            _ => return 0,
        }
    } else {
        arg
    };
    let Some(file) = fd_file(fd, &l) else {
        return 0;
    };
    let Some(connection) = dev_fuse_connection(file, &l) else {
        return 0;
    };
    let Some(h) = uread::<FuseInHeader>(buf) else {
        bump(counters::READ_FAULTS);
        return 0;
    };
    // FORGET and BATCH_FORGET are not requests the kernel keeps (no reply);
    // an INTERRUPT's id has FUSE_INT_REQ_BIT set.
    let kept = fusetrace_common::opcode::expects_reply(h.opcode);
    if l.agg_stages != 0 {
        if kept {
            aggregate::agg_daemon_point(connection, h.unique, false, || {
                taken_request(file, h.unique, l)
            });
        }
        return 0;
    }
    let req = if kept && ID_LATE.get(0).copied() == Some(1) {
        taken_request(file, h.unique, &l)
    } else {
        0
    };
    submit(header_event(EventKind::Taken, connection, req, &h));
    0
}

/// The `struct fuse_req *` a daemon thread just took from `file`, found
/// by its id in the connection's processing table (`fud->pq.processing`,
/// a hash of lists the kernel moved it to before the read returned; only
/// this thread knows the id yet, so it is still there). Only on kernels
/// whose send carried no id: there it joins the send to the daemon side
/// before the request ends. 0 when not found (counted).
#[inline(always)]
fn taken_request(file: u64, unique: u64, l: &KernelLayout) -> u64 {
    // FORGET/BATCH_FORGET/INTERRUPT are not in the table; a kernel whose
    // BTF lacks it left `list_head_size` 0.
    if unique == 0 || unique & fusetrace_common::FUSE_INT_REQ_BIT != 0 || l.list_head_size == 0 {
        return 0;
    }
    let found = (|| -> Option<u64> {
        let fud: u64 = kread(file, l.file_private_data)?;
        let table: u64 = kread(fud, l.fuse_dev_processing)?;
        if table == 0 {
            return None;
        }
        let head = table + fuse_req_hash(unique) * l.list_head_size as u64;
        let mut node: u64 = kread(head, 0)?;
        // A bucket holds the requests in service whose ids share a hash:
        // a few at most (ids are sequential, 256 buckets).
        for _ in 0..8 {
            if node == head || node == 0 {
                return None;
            }
            let req = node - l.req_list as u64;
            if kread::<u64>(req, l.req_in_h + UNIQUE_IN_HEADER) == Some(unique) {
                return Some(req);
            }
            node = kread(node, 0)?;
        }
        None
    })();
    match found {
        Some(req) => req,
        None => {
            bump(counters::TAKE_UNRESOLVED);
            0
        }
    }
}

/// Shared by write(2) and writev(2) entry: the reply header is already in
/// user memory, and the kernel ends the request inside this very syscall.
#[inline(always)]
fn on_write_enter(ctx: &TracePointContext, vectored: bool) -> u32 {
    let l = layout();
    if daemon_filtered_out(&l) {
        return 0;
    }
    let Some(fd) = tp_field::<u64>(ctx, l.sys_enter_fd) else {
        return 0;
    };
    let Some(arg) = tp_field::<u64>(ctx, l.sys_enter_buf) else {
        return 0;
    };
    let Some(count) = tp_field::<u64>(ctx, l.sys_enter_count) else {
        return 0;
    };
    let Some(file) = fd_file(fd, &l) else {
        return 0;
    };
    let Some(connection) = dev_fuse_connection(file, &l) else {
        // Not a daemon reply: maybe an application writing a FUSE file.
        if l.track_app_io != 0 {
            diagnose::app_write_enter(file, None, &l);
        }
        return 0;
    };
    let header_addr = if vectored {
        if count == 0 {
            return 0;
        }
        let Some(iov) = uread::<IoVec>(arg) else {
            return 0;
        };
        if iov.len < core::mem::size_of::<FuseOutHeader>() as u64 {
            return 0;
        }
        iov.base
    } else {
        if count < core::mem::size_of::<FuseOutHeader>() as u64 {
            return 0;
        }
        arg
    };
    let Some(h) = uread::<FuseOutHeader>(header_addr) else {
        bump(counters::READ_FAULTS);
        return 0;
    };
    if l.agg_stages != 0 {
        aggregate::agg_daemon_point(connection, h.unique, true, || {
            taken_request(file, h.unique, l)
        });
        return 0;
    }
    submit(FuseEvent {
        kind: EventKind::Replied as u8,
        connection,
        unique: h.unique,
        // A notification carries its code in `error` and unique 0.
        error: h.error,
        len: h.len,
        ..FuseEvent::default()
    });
    0
}

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
    let l = layout();
    if daemon_filtered_out(&l) {
        return 0;
    }
    // splice(fd_in, off_in, fd_out, off_out, len, flags): fd_in is the
    // first argument, fd_out the third (two slots after `buf`).
    let fd_in: u64 = tp_field(&ctx, l.sys_enter_fd).unwrap_or(u64::MAX);
    let fd_out: u64 = tp_field(&ctx, l.sys_enter_count).unwrap_or(u64::MAX);
    if fuse_fd_connection(fd_in, &l).is_some() || fuse_fd_connection(fd_out, &l).is_some() {
        bump(counters::SPLICE_TRANSFERS);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
