//! The kernel's struct layout and record offsets, read from the running
//! kernel's BTF and tracefs formats into the [`KernelLayout`] the eBPF
//! programs load with: nothing on the kernel side assumes a layout.

use std::path::Path;

use anyhow::{Context, Result, bail};
use fusetrace_common::{FILE_IDENT_WORDS, KernelLayout, NO_HOP};

use crate::kernel::{
    btf::Btf,
    tracefs::{RecordFormat, Tracefs},
};

/// Where one read of [`FILE_IDENT_WORDS`] words takes the words at byte
/// offsets `a` and `b` (8-byte aligned), and their indexes in it; all
/// [`NO_HOP`] when no such read does.
pub fn one_read(a: u32, b: u32) -> [u32; 3] {
    let at = a.min(b);
    let span = (FILE_IDENT_WORDS * 8) as u32;
    if !a.is_multiple_of(8) || !b.is_multiple_of(8) || a.max(b) - at >= span {
        return [NO_HOP; 3];
    }
    [at, (a - at) / 8, (b - at) / 8]
}

/// Offsets and constants for the eBPF side, read from the running kernel.
pub fn kernel_layout(btf: &Btf, tracefs: &Tracefs) -> Result<KernelLayout> {
    let mut l = KernelLayout::zeroed();
    l.req_in_h = btf.offset_of("fuse_req", "in.h")?;
    l.req_out_h = btf.offset_of("fuse_req", "out.h")?;
    l.req_flags = btf.offset_of("fuse_req", "flags")?;
    [l.req_chan, l.chan_conn] = way_to_connection(btf, REQUEST_WAYS)?;
    l.conn_dev = btf.offset_of("fuse_conn", "dev")?;
    l.fr_background_bit = btf.enum_value("fuse_req_flag", "FR_BACKGROUND")? as u32;
    l.task_files = btf.offset_of("task_struct", "files")?;
    l.task_tgid = btf.offset_of("task_struct", "tgid")?;
    l.task_pid = btf.offset_of("task_struct", "pid")?;
    l.files_fdt = btf.offset_of("files_struct", "fdt")?;
    l.fdtable_max_fds = btf.offset_of("fdtable", "max_fds")?;
    l.fdtable_fd = btf.offset_of("fdtable", "fd")?;
    l.file_inode = btf.offset_of("file", "f_inode")?;
    l.file_private_data = btf.offset_of("file", "private_data")?;
    l.file_f_op = btf.offset_of("file", "f_op")?;
    [l.file_ident_at, l.file_ident_fop, l.file_ident_fud] =
        one_read(l.file_f_op, l.file_private_data);
    l.inode_rdev = btf.offset_of("inode", "i_rdev")?;
    [l.dev_chan, l.dev_chan_conn] = way_to_connection(btf, DEV_WAYS)?;
    l.fuse_rdev = fuse_char_device()?;
    let reg =
        |(member, index): Reg| -> Result<u32> { Ok(btf.offset_of("pt_regs", member)? + index * 8) };
    [l.regs_arg0, l.regs_arg1, l.regs_arg2] = [
        reg(REGS.call_args[0])?,
        reg(REGS.call_args[1])?,
        reg(REGS.call_args[2])?,
    ];
    l.regs_syscall_arg0 = reg(REGS.syscall_arg0)?;
    l.regs_syscall_nr = reg(REGS.syscall_nr)?;
    l.regs_syscall_ret = reg(REGS.syscall_ret)?;
    // The read(2) family, by this architecture's numbers: how the kernel-
    // side take finds a FORGET's header in the daemon's memory.
    l.nr_read = libc::SYS_read as u32;
    l.nr_pread64 = libc::SYS_pread64 as u32;
    l.nr_readv = libc::SYS_readv as u32;
    l.nr_preadv = libc::SYS_preadv as u32;
    l.nr_preadv2 = libc::SYS_preadv2 as u32;
    // Optional: without it, on kernels whose sends carry no id, a request
    // is joined to its send only when it ends.
    if let (Ok(pq), Ok(list), Ok(size)) = (
        btf.offset_of("fuse_dev", "pq.processing"),
        btf.offset_of("fuse_req", "list"),
        btf.size_of("list_head"),
    ) {
        l.fuse_dev_processing = pq;
        l.req_list = list;
        l.list_head_size = size;
    }
    // Optional: the daemon side hooked in the kernel (`taken_copy_*`);
    // without it those hooks say why they cannot load.
    if let (Ok(write), Ok(req)) = (
        btf.bit_offset_of("fuse_copy_state", "write"),
        btf.offset_of("fuse_copy_state", "req"),
    ) {
        l.cs_write_byte = write / 8;
        l.cs_write_mask = 1 << (write % 8);
        l.cs_req = req;
        // 6.14+: the ring's own copy of a request's arguments is no take.
        if let Ok(uring) = btf.bit_offset_of("fuse_copy_state", "is_uring") {
            l.cs_uring_byte = uring / 8;
            l.cs_uring_mask = 1 << (uring % 8);
        }
    }
    // Optional: FUSE over io_uring (6.14+); without it the io_uring hooks
    // say why they cannot load.
    if uring_layout(&mut l, btf).is_err() {
        l.uring_on = 0;
    }
    // Optional: without these only `diagnose` is affected (checked there).
    if diagnose_layout(&mut l, btf).is_err() {
        l.fuse_arg_stride = 0;
    }

    // The classic tracepoints' record offsets: without tracefs those hooks
    // say why they cannot load, and every other hook runs without them.
    if let Ok(tracefs) = tracefs.root() {
        tracepoint_layout(&mut l, tracefs)?;
    }
    Ok(l)
}

/// The syscall and FUSE tracepoints' record offsets, from their formats.
fn tracepoint_layout(l: &mut KernelLayout, tracefs: &Path) -> Result<()> {
    let read = RecordFormat::read(tracefs, "syscalls", "sys_enter_read")?;
    l.sys_enter_fd = read.nth_argument(0)?;
    l.sys_enter_buf = read.nth_argument(1)?;
    l.sys_enter_count = read.nth_argument(2)?;
    l.sys_enter_arg3 =
        RecordFormat::read(tracefs, "syscalls", "sys_enter_pwrite64")?.nth_argument(3)?;
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
    Ok(())
}

/// One pointer of a way to the connection: `from.member` points to a `to`.
#[derive(Debug)]
pub struct Hop {
    pub from: &'static str,
    pub member: &'static str,
    pub to: &'static str,
}

const fn hop(from: &'static str, member: &'static str, to: &'static str) -> Hop {
    Hop { from, member, to }
}

/// The ways from a `struct fuse_req` to its `struct fuse_conn`, newest
/// first: Linux 7.2 put a channel (`struct fuse_chan`: the queue, the
/// background limits, the ring) between a request and its connection,
/// where up to 7.1 the request pointed to its mount. Each way is two
/// pointers; the first whose members this kernel's BTF has is taken.
pub const REQUEST_WAYS: &[&[Hop]] = &[
    &[
        hop("fuse_req", "chan", "fuse_chan"),
        hop("fuse_chan", "conn", "fuse_conn"),
    ],
    &[
        hop("fuse_req", "fm", "fuse_mount"),
        hop("fuse_mount", "fc", "fuse_conn"),
    ],
];

/// The ways from a `/dev/fuse` file's `struct fuse_dev` to its connection,
/// newest first: through the channel from 7.2, directly up to 7.1.
pub const DEV_WAYS: &[&[Hop]] = &[
    &[
        hop("fuse_dev", "chan", "fuse_chan"),
        hop("fuse_chan", "conn", "fuse_conn"),
    ],
    &[hop("fuse_dev", "fc", "fuse_conn")],
];

/// The first of `ways` whose members this kernel's BTF has, or the one
/// line saying none fits.
fn known_way(btf: &Btf, ways: &'static [&'static [Hop]]) -> Result<&'static [Hop]> {
    ways.iter()
        .copied()
        .find(|way| way.iter().all(|h| btf.offset_of(h.from, h.member).is_ok()))
        .ok_or_else(|| unknown_way(ways))
}

/// The one line a kernel whose layout no way fits gets: the struct and
/// members looked for, and what still works.
fn unknown_way(ways: &[&[Hop]]) -> anyhow::Error {
    let tried: Vec<String> = ways
        .iter()
        .map(|way| {
            way.iter()
                .map(|h| format!("{}.{}", h.from, h.member))
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .collect();
    anyhow::anyhow!(
        "this kernel's FUSE layout is unknown to fusetrace: struct {} reaches its struct fuse_conn by none of {} in the kernel's BTF; \
         no tracing command can start here (`report` on a recording and `daemon` still work): please report this kernel",
        ways[0][0].from,
        tried.join(", ")
    )
}

/// The offsets of the first way this kernel has; [`NO_HOP`] in place of a
/// second pointer the way does not need.
pub fn way_to_connection(btf: &Btf, ways: &'static [&'static [Hop]]) -> Result<[u32; 2]> {
    let way = known_way(btf, ways)?;
    let mut offsets = [NO_HOP; 2];
    for (slot, h) in offsets.iter_mut().zip(way) {
        *slot = btf.offset_of(h.from, h.member)?;
    }
    Ok(offsets)
}

/// Offsets the diagnosis hooks read: request arguments, the connection's
/// writeback bit, and the way from a file to its FUSE node.
pub(crate) fn diagnose_layout(l: &mut KernelLayout, btf: &Btf) -> Result<()> {
    l.req_args = btf.offset_of("fuse_req", "args")?;
    l.args_in_args = btf.offset_of("fuse_args", "in_args")?;
    l.args_out_args = btf.offset_of("fuse_args", "out_args")?;
    l.fuse_arg_stride = btf.size_of("fuse_arg")?;
    l.fuse_arg_value = btf.offset_of("fuse_arg", "value")?;
    l.fuse_arg_size = btf.offset_of("fuse_arg", "size")?;
    l.args_in_numargs = btf.offset_of("fuse_args", "in_numargs")?;
    let wb = btf.bit_offset_of("fuse_conn", "writeback_cache")?;
    l.conn_wb_byte = wb / 8;
    l.conn_wb_mask = 1 << (wb % 8);
    // The limits serve only diagnose's findings: a kernel whose
    // `fuse_conn` lacks one (7.3 has moved some) leaves that one unread
    // (offset 0: no limit lives at the connection's start, its lock does),
    // never the request arguments and names the rest of this layout reads.
    let limit = |member| btf.offset_of("fuse_conn", member).unwrap_or(0);
    l.conn_max_write = limit("max_write");
    l.conn_max_read = limit("max_read");
    l.conn_max_pages = limit("max_pages");
    l.conn_max_background = limit("max_background");
    l.conn_congestion_threshold = limit("congestion_threshold");
    l.inode_sb = btf.offset_of("inode", "i_sb")?;
    l.sb_magic = btf.offset_of("super_block", "s_magic")?;
    l.sb_dev = btf.offset_of("super_block", "s_dev")?;
    l.inode_nodeid =
        btf.offset_of("fuse_inode", "nodeid")? - btf.offset_of("fuse_inode", "inode")?;
    l.file_pos = btf.offset_of("file", "f_pos")?;
    Ok(())
}

/// A register in `struct pt_regs`: a member, and the index of a 64-bit
/// element in it (arm64 keeps its registers in an array).
type Reg = (&'static str, u32);

/// Where this architecture's `struct pt_regs` keeps what the probes read;
/// the offsets themselves come from BTF.
struct Regs {
    /// A function's first three arguments at its entry (kprobes); the
    /// second and third are also a syscall's.
    call_args: [Reg; 3],
    /// A syscall's first argument at its exit: arm64 returns the result in
    /// the register that carried it, and keeps the argument in `orig_x0`.
    syscall_arg0: Reg,
    /// The syscall number (read as its low 32 bits).
    syscall_nr: Reg,
    /// A syscall's result at its exit.
    syscall_ret: Reg,
}

#[cfg(target_arch = "x86_64")]
const REGS: Regs = Regs {
    call_args: [("di", 0), ("si", 0), ("dx", 0)],
    syscall_arg0: ("di", 0),
    syscall_nr: ("orig_ax", 0),
    syscall_ret: ("ax", 0),
};
#[cfg(target_arch = "aarch64")]
const REGS: Regs = Regs {
    call_args: [("regs", 0), ("regs", 1), ("regs", 2)],
    syscall_arg0: ("orig_x0", 0),
    syscall_nr: ("syscallno", 0),
    syscall_ret: ("regs", 0),
};
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "fusetrace reads arguments from x86_64 and arm64 pt_regs; other architectures need their registers in `REGS`"
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

/// The kernel's `dev_t` encoding as `"major:minor"` ([`parse_major_minor`]'s inverse).
pub fn major_minor(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xfffff)
}

/// The offsets the io_uring hooks and `doctor`'s `/dev/fuse` iterator read
/// (`uring_on` 1 when the kernel has FUSE over io_uring).
pub fn uring_layout(l: &mut KernelLayout, btf: &Btf) -> Result<()> {
    l.task_tgid = btf.offset_of("task_struct", "tgid")?;
    l.task_comm = btf.offset_of("task_struct", "comm")?;
    if !btf.has_type("fuse_ring_ent") {
        bail!("this kernel has no FUSE over io_uring (struct fuse_ring_ent is not in its BTF)");
    }
    // The ring hangs where the `/dev/fuse` file's way to its connection
    // first leads: the connection up to 7.1, the channel from 7.2.
    let dev_way = known_way(btf, DEV_WAYS)?;
    l.chan_ring = btf.offset_of(dev_way[0].to, "ring")?;
    l.ring_ready = btf.offset_of("fuse_ring", "ready")?;
    l.ring_nr_queues = btf.offset_of("fuse_ring", "nr_queues")?;
    l.uring_cmd_opcode = btf.enum_value("io_uring_op", "IORING_OP_URING_CMD")? as u32;
    l.kiocb_opcode = btf.offset_of("io_kiocb", "opcode")?;
    l.kiocb_ctx = btf.offset_of("io_kiocb", "ctx")?;
    // The command lives in the request's first bytes (`io_kiocb_to_cmd`).
    let cmd = btf.offset_of("io_kiocb", "cmd")?;
    l.ucmd_file = cmd + btf.offset_of("io_uring_cmd", "file")?;
    l.ucmd_sqe = cmd + btf.offset_of("io_uring_cmd", "sqe")?;
    l.ucmd_cmd_op = cmd + btf.offset_of("io_uring_cmd", "cmd_op")?;
    l.ucmd_pdu = cmd + btf.offset_of("io_uring_cmd", "pdu")?;
    l.ring_ent_req = btf.offset_of("fuse_ring_ent", "fuse_req")?;
    l.ring_ent_queue = btf.offset_of("fuse_ring_ent", "queue")?;
    l.ring_queue_qid = btf.offset_of("fuse_ring_queue", "qid")?;
    l.ctx_files_nr = btf.offset_of("io_ring_ctx", "file_table.data.nr")?;
    l.ctx_files_nodes = btf.offset_of("io_ring_ctx", "file_table.data.nodes")?;
    l.rsrc_node_file = btf.offset_of("io_rsrc_node", "file_ptr")?;
    l.uring_on = 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 6.13's `struct file` has `f_op` at 8 and `private_data` at 24: one
    /// read; 6.1's has them 160 bytes apart: two.
    #[test]
    fn f_op_and_private_data_are_read_at_once_where_they_are_near() {
        assert_eq!(one_read(8, 24), [8, 0, 2]);
        assert_eq!(one_read(24, 8), [8, 2, 0]);
        assert_eq!(one_read(40, 40 + 24), [40, 0, 3]);
        assert_eq!(one_read(40, 40 + 32), [NO_HOP; 3]);
        assert_eq!(one_read(40, 200), [NO_HOP; 3]);
        assert_eq!(one_read(8, 20), [NO_HOP; 3]);
    }

    /// Up to 7.1 a request reaches its connection through its mount, from
    /// 7.2 through its channel; a kernel with neither gets one line naming
    /// what was looked for.
    #[test]
    fn the_way_to_the_connection_is_the_kernels() {
        use crate::kernel::btf::tests::Builder;
        let old = {
            let mut b = Builder::new();
            b.int("u64", 8); // 1
            b.strukt("fuse_req", 64, &[("fm", 1, 320)], false);
            b.strukt("fuse_mount", 16, &[("fc", 1, 0)], false);
            b.strukt("fuse_dev", 32, &[("fc", 1, 64)], false);
            Btf::parse(&b.finish()).unwrap()
        };
        assert_eq!(way_to_connection(&old, REQUEST_WAYS).unwrap(), [40, 0]);
        assert_eq!(way_to_connection(&old, DEV_WAYS).unwrap(), [8, NO_HOP]);
        let new = {
            let mut b = Builder::new();
            b.int("u64", 8); // 1
            b.strukt("fuse_req", 64, &[("chan", 1, 448)], false);
            b.strukt("fuse_chan", 64, &[("lock", 1, 0), ("conn", 1, 64)], false);
            b.strukt("fuse_dev", 32, &[("chan", 1, 64)], false);
            Btf::parse(&b.finish()).unwrap()
        };
        assert_eq!(way_to_connection(&new, REQUEST_WAYS).unwrap(), [56, 8]);
        assert_eq!(way_to_connection(&new, DEV_WAYS).unwrap(), [8, 8]);
        let neither = {
            let mut b = Builder::new();
            b.int("u64", 8);
            b.strukt("fuse_req", 64, &[("owner", 1, 0)], false);
            Btf::parse(&b.finish()).unwrap()
        };
        let e = way_to_connection(&neither, REQUEST_WAYS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("struct fuse_req")
                && e.contains("fuse_req.chan -> fuse_chan.conn")
                && e.contains("fuse_req.fm -> fuse_mount.fc")
                && e.contains("`report` on a recording and `daemon` still work")
                && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn major_minor_uses_kernel_encoding() {
        assert_eq!(parse_major_minor("0:52"), Some(52));
        assert_eq!(major_minor((10 << 20) | 229), "10:229");
        assert_eq!(parse_major_minor("10:229"), Some((10 << 20) | 229));
        assert_eq!(parse_major_minor("x"), None);
    }
}
