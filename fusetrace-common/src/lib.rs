//! Types shared by the eBPF programs and the user-space decoder.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into
//! the ring buffer, user space reads it back byte for byte.
#![no_std]

pub mod opcode;

/// What a [`FuseEvent`] reports: the *point* of a request's life it
/// observed (named as the hook table's points and the lifecycle's `*_ns`
/// fields are), or an application's write.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The kernel queued a request for the daemon (`fuse_request_send`).
    Sent = 1,
    /// The kernel finished a request (`fuse_request_end`).
    Ended = 2,
    /// A daemon thread read a request from `/dev/fuse`.
    Taken = 3,
    /// A daemon thread wrote a reply (or a notification) to `/dev/fuse`.
    Replied = 4,
    /// virtio-fs: the request was placed on a virtqueue (`virtio_fs_enqueue_req`).
    Virtq = 5,
    /// virtio-fs: the device's answer was taken off the virtqueue
    /// (`virtio_fs_request_complete`); `aux_ns` is the queue's latest
    /// device interrupt (`virtio_fs_vq_done`) before it, when seen.
    DeviceDone = 6,
    /// An application's write(2)/pwrite64(2)/writev(2) on a file of a FUSE
    /// mount returned (diagnosis only). `ts_ns` is the return, `aux_ns` the
    /// entry, `arg0` the file position written at, `len` the bytes written
    /// (`error` the negative errno when it failed).
    AppWrite = 7,
    /// A whole request in one record (`trace --min`: only requests at
    /// least that slow leave the kernel), sent by the in-kernel
    /// aggregation's end. Fields: `ts_ns` the end, `aux_ns` the send,
    /// `arg0`/`arg1` the daemon's take and reply (0: not seen);
    /// `unique`, `nodeid`, `opcode`, `req_pid`, `req_uid` and `len` (the
    /// request's) from the request header, `error` from the reply's;
    /// `tgid` the requester's process when it sent the request itself
    /// (else 0); `tid` 0 and `comm` empty: neither the requester's name nor
    /// the daemon thread is known at the end.
    Whole = 8,
    /// A connection's negotiated limits from its `fuse_conn` (diagnosis
    /// only), sent with the connection's first request seen and again
    /// whenever they change: `arg0` max_write (low 32 bits) and max_read
    /// (high 32), `len` max_pages, `req_pid` max_background, `req_uid`
    /// congestion_threshold. Not a request: `unique` is 0.
    Limits = 9,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Sent),
            2 => Some(Self::Ended),
            3 => Some(Self::Taken),
            4 => Some(Self::Replied),
            5 => Some(Self::Virtq),
            6 => Some(Self::DeviceDone),
            7 => Some(Self::AppWrite),
            8 => Some(Self::Whole),
            9 => Some(Self::Limits),
            _ => None,
        }
    }
}

/// `flags` bit: the request was a background (asynchronous) one.
pub const FLAG_BACKGROUND: u8 = 1 << 0;
/// `flags` bit: node id, uid and requester pid are valid (the hook could read `req->in.h`).
pub const FLAG_HAS_HEADER: u8 = 1 << 1;
/// `flags` bit: the daemon moved the request with splice(2); the header was not visible.
pub const FLAG_SPLICE: u8 = 1 << 2;
/// `flags` bit (`Sent`): the connection has the writeback cache on (`fuse_conn.writeback_cache`).
pub const FLAG_WRITEBACK_CACHE: u8 = 1 << 3;

/// `flags` bit (`Sent`): the record is a [`NamedEvent`], the event followed
/// by the names its request carries (LOOKUP, CREATE, RENAME...).
pub const FLAG_NAMES: u8 = 1 << 4;

/// `flags` bit (`Taken`, `Replied`): the daemon took or answered the
/// request through FUSE over io_uring (a ring entry's completion, a
/// COMMIT_AND_FETCH submission) instead of read(2)/write(2) on
/// `/dev/fuse`. `Taken` then has the ring queue's id in `arg0`.
pub const FLAG_URING: u8 = 1 << 5;

/// `flags` bit (`Ended`): the daemon's reply that ended the request was
/// seen in the kernel (`fuse_dev_do_write`, the daemon side hooked there):
/// `aux_ns` is when the reply's write began, `tid` the thread that wrote
/// it. The replied point folded into the end: one record less per request.
pub const FLAG_REPLIED: u8 = 1 << 6;

/// Bytes kept of each name a request carries: `NAME_MAX` (255) and a NUL.
pub const NAME_BYTES: usize = 256;

/// A way to the connection with one pointer less (`KernelLayout::dev_chan_conn`):
/// the first pointer already leads to the `struct fuse_conn`.
pub const NO_HOP: u32 = u32::MAX;
/// Words of the one read that takes a `struct file`'s `f_op` and
/// `private_data` (`KernelLayout::file_ident_at`).
pub const FILE_IDENT_WORDS: usize = 4;

/// The send of a request that carries names, as one ring buffer record
/// (so the name costs no second record), cut after the last name's bytes
/// (120 bytes and the name, for most): `N` is 1, or 2 for RENAME/RENAME2,
/// whose new name follows a whole first slot. `names[0]` is the entry's name (RENAME: the old one),
/// `names[1]` RENAME's new one; `len` is each name's length (older kernels
/// count a NUL). In `ev`, `nodeid` is the directory; `arg0` RENAME's new
/// directory or LINK's linked node, `arg1` RENAME2's flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NamedEvent<const N: usize> {
    pub ev: FuseEvent,
    pub len: [u16; 2],
    pub _pad: u32,
    pub names: [[u8; NAME_BYTES]; N],
}

/// `FUSE_WRITE_CACHE` in `fuse_write_in.write_flags`: delayed write from the page cache.
pub const FUSE_WRITE_CACHE: u32 = 1 << 0;
/// `FUSE_WRITEBACK_CACHE` in `fuse_init_out.flags`.
pub const FUSE_WRITEBACK_CACHE: u64 = 1 << 16;
/// `FOPEN_DIRECT_IO` in `fuse_open_out.open_flags`.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FUSE_SUPER_MAGIC` from `<linux/magic.h>`.
pub const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

/// One observation of one FUSE request. 112 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseEvent {
    /// Monotonic clock (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Request id, unique per connection while the request lives.
    pub unique: u64,
    /// Inode number the request is about (0 when unknown).
    pub nodeid: u64,
    /// Kernel `dev_t` of the connection (`MAJOR << 20 | MINOR`).
    pub connection: u32,
    /// FUSE opcode (0 when the hook does not see it).
    pub opcode: u32,
    /// Request length (send, read) or reply length (reply, end).
    pub len: u32,
    /// Error of the reply or of the end (negative errno, 0 on success).
    pub error: i32,
    /// Process (thread group) that was running when the hook fired.
    pub tgid: u32,
    /// Thread that was running when the hook fired.
    pub tid: u32,
    /// Requester thread id from the request header (`in.h.pid`).
    pub req_pid: u32,
    /// Requester uid from the request header.
    pub req_uid: u32,
    /// An [`EventKind`] as u8.
    pub kind: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub _pad: [u8; 6],
    /// Command name of the running task.
    pub comm: [u8; 16],
    /// A second time for the same observation, 0 when unknown. `Sent`: when
    /// the caller submitted the request (`fuse_simple_request` or
    /// `fuse_simple_background` entry; kprobe/fentry backends). `DeviceDone`:
    /// the device interrupt that announced the answer.
    pub aux_ns: u64,
    /// Opcode-specific values. `Sent` of READ/WRITE: `arg0` the file offset,
    /// `arg1` the size in the low 32 bits and the read/write flags in the
    /// high 32 (`FUSE_WRITE_CACHE`: a page-cache writeback). `Ended` of OPEN:
    /// `arg1` the open flags (`FOPEN_DIRECT_IO`); of CREATE: `arg0` the new
    /// node id, `arg1` the open flags; of LOOKUP, MKNOD, MKDIR, SYMLINK and
    /// LINK: `arg0` the entry's node id (0: none) and, when it succeeded,
    /// `arg1` the entry's and its attributes' validity in milliseconds
    /// (`entry_valid` low 32 bits, `attr_valid` high 32); of GETATTR and
    /// STATX: `arg1` the attributes' validity in milliseconds; of INIT: `arg0` the
    /// negotiated flags (`flags | flags2 << 32`), `arg1` max_write. `Sent`
    /// of a request with names: see [`NamedEvent`]. Read by the hooks that
    /// see the `struct fuse_req *` (tp-btf, kprobe, fentry).
    pub arg0: u64,
    pub arg1: u64,
    /// The kernel's `struct fuse_req *` (0 when the hook does not see it):
    /// `Sent`, `Ended` and the virtio-fs events from the request itself,
    /// `Taken` found by id in the connection's processing table. On
    /// kernels whose send point fires before the request id is assigned
    /// (6.12 to 6.17: the send carries unique 0), it is what joins the send
    /// to the rest of the request.
    pub req: u64,
}

/// `struct fuse_in_header` from `<linux/fuse.h>`: user ABI, the same on every kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseInHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

/// `struct fuse_out_header` from `<linux/fuse.h>`: user ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseOutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

/// `struct iovec` as user space lays it out on 64-bit kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IoVec {
    pub base: u64,
    pub len: u64,
}

/// Offsets into kernel structures and tracepoint records, filled in by user
/// space from the running kernel's BTF and tracefs before the programs load.
/// The eBPF side never assumes a layout of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelLayout {
    /// `offsetof(struct fuse_req, in.h)`.
    pub req_in_h: u32,
    /// `offsetof(struct fuse_req, flags)`.
    pub req_flags: u32,
    /// The way from a request to its connection, two pointers:
    /// `fuse_req.fm` then `fuse_mount.fc` up to Linux 7.1, `fuse_req.chan`
    /// then `fuse_chan.conn` from 7.2 (`kernel::layout::REQUEST_WAYS`).
    pub req_chan: u32,
    pub chan_conn: u32,
    /// `offsetof(struct fuse_conn, dev)`.
    pub conn_dev: u32,
    /// `offsetof(struct fuse_req, out.h)`.
    pub req_out_h: u32,
    /// Bit number of `FR_BACKGROUND` in `fuse_req.flags`.
    pub fr_background_bit: u32,
    /// `offsetof(struct task_struct, files)`.
    pub task_files: u32,
    /// `offsetof(struct files_struct, fdt)`.
    pub files_fdt: u32,
    /// `offsetof(struct fdtable, max_fds)`.
    pub fdtable_max_fds: u32,
    /// `offsetof(struct fdtable, fd)`.
    pub fdtable_fd: u32,
    /// `offsetof(struct file, f_inode)`.
    pub file_inode: u32,
    /// `offsetof(struct file, private_data)`.
    pub file_private_data: u32,
    /// `offsetof(struct file, f_op)`.
    pub file_f_op: u32,
    /// Where one read of [`FILE_IDENT_WORDS`] words takes both `f_op` and
    /// `private_data` of a `struct file` (the daemon map's check, one
    /// helper call instead of two), and their words in it; [`NO_HOP`]
    /// when they lie further apart (6.1 and other kernels before 6.13's
    /// `struct file`).
    pub file_ident_at: u32,
    pub file_ident_fop: u32,
    pub file_ident_fud: u32,
    /// `offsetof(struct inode, i_rdev)`.
    pub inode_rdev: u32,
    /// The way from a `struct fuse_dev` to its connection: `fuse_dev.fc`
    /// (`dev_chan_conn` is then [`NO_HOP`]) up to 7.1, `fuse_dev.chan` then
    /// `fuse_chan.conn` from 7.2.
    pub dev_chan: u32,
    pub dev_chan_conn: u32,
    /// Kernel `dev_t` of the `/dev/fuse` character device.
    pub fuse_rdev: u32,
    /// Offsets of the syscall tracepoint record fields (from tracefs formats).
    pub sys_enter_fd: u32,
    pub sys_enter_buf: u32,
    pub sys_enter_count: u32,
    pub sys_exit_ret: u32,
    /// Offsets of the plain `fuse:*` tracepoint record fields (from tracefs formats).
    pub tp_send_connection: u32,
    pub tp_send_unique: u32,
    pub tp_send_opcode: u32,
    pub tp_send_len: u32,
    pub tp_end_connection: u32,
    pub tp_end_unique: u32,
    pub tp_end_len: u32,
    pub tp_end_error: u32,
    /// Offsets in `struct pt_regs` of a function's first three arguments
    /// at its entry (kprobes); the second and third are a syscall's too.
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_arg2: u32,
    /// Only report daemon syscalls of this process (0: every process).
    pub daemon_tgid: u32,
    /// `offsetof(struct fuse_req, args)` (kprobe/fentry: joins a submission to its send).
    pub req_args: u32,
    /// `offsetof(struct virtio_fs_vq, vq)`.
    pub fsvq_vq: u32,
    /// Argument index of the pointer each kprobe/fentry hook reads, from the
    /// hooked function's BTF signature (it differs between kernel versions).
    pub arg_submitted: u32,
    pub arg_submitted_bg: u32,
    pub arg_sent: u32,
    pub arg_ended: u32,
    pub arg_virtq: u32,
    pub arg_device_done_req: u32,
    pub arg_device_done_fsvq: u32,
    /// `offsetof(struct fuse_args, in_args)` / `out_args`, the stride of
    /// those arrays and `offsetof(struct fuse_arg, value)`.
    pub args_in_args: u32,
    pub args_out_args: u32,
    pub fuse_arg_stride: u32,
    pub fuse_arg_value: u32,
    /// `fuse_conn.writeback_cache` bitfield: byte offset and bit mask.
    pub conn_wb_byte: u32,
    pub conn_wb_mask: u32,
    /// `fuse_conn`'s `max_write`, `max_read`, `max_pages`,
    /// `max_background` and `congestion_threshold` (diagnosis: a `Limits`
    /// event; 0: this kernel has no such member, and without `max_write`
    /// no limits are read).
    pub conn_max_write: u32,
    pub conn_max_read: u32,
    pub conn_max_pages: u32,
    pub conn_max_background: u32,
    pub conn_congestion_threshold: u32,
    /// `offsetof(struct inode, i_sb)`, `super_block.s_magic`, `.s_dev`.
    pub inode_sb: u32,
    pub sb_magic: u32,
    pub sb_dev: u32,
    /// `offsetof(struct fuse_inode, nodeid) - offsetof(struct fuse_inode, inode)`.
    pub inode_nodeid: u32,
    /// `offsetof(struct file, f_pos)`.
    pub file_pos: u32,
    /// Record offset of the fourth syscall argument (pwrite64's `pos`).
    pub sys_enter_arg3: u32,
    /// Report applications' writes to FUSE files (`AppWrite`, for diagnose).
    pub track_app_io: u32,
    /// In-kernel aggregation (`stats`, `serve`): only requests whose
    /// requester's thread or thread group is one of the first
    /// `agg_pid_count` of `agg_pids` (`-p`; 0: all).
    pub agg_pid_count: u32,
    pub agg_pids: [u32; AGG_MAX_PIDS],
    /// In-kernel aggregation: only these connections (the first
    /// `agg_connection_count`; 0: all).
    pub agg_connection_count: u32,
    pub agg_connections: [u32; AGG_MAX_CONNECTIONS],
    /// In-kernel aggregation: only requests their requester sent itself
    /// whose command name (`comm`, NUL-padded as the kernel keeps it) is
    /// one of the first `agg_comm_count` of `agg_comms` (`--comm`; 0: all),
    /// each name's 16 bytes as two native-endian u64s (compared so).
    pub agg_comm_count: u32,
    pub agg_comms: [[u64; 2]; AGG_MAX_COMMS],
    /// In-kernel aggregation of stages (`stats --stages`): the daemon-side
    /// hooks stamp the request's slot instead of reporting events, and the
    /// end counts queue, daemon and completion as well as the total.
    pub agg_stages: u32,
    /// The histogram cells' table (see [`CellSlot`]): CPU `c` below
    /// `agg_table_cpus` has the `1 << agg_table_bits` slots from
    /// `c << agg_table_bits`; other CPUs count in the hash.
    pub agg_table_bits: u32,
    pub agg_table_cpus: u32,
    /// `offsetof(struct fuse_dev, pq)` + `offsetof(struct fuse_pqueue,
    /// processing)`: the hash table of requests a daemon has taken.
    pub fuse_dev_processing: u32,
    /// `offsetof(struct fuse_req, list)`.
    pub req_list: u32,
    /// `sizeof(struct list_head)`: the stride of the processing table.
    pub list_head_size: u32,
    /// `offsetof(struct fuse_args, in_numargs)` and `offsetof(struct
    /// fuse_arg, size)`: where the names a request carries are found.
    pub args_in_numargs: u32,
    pub fuse_arg_size: u32,
    /// 1: read no names (`--no-paths`).
    pub names_off: u32,
    /// `trace --min` (1): the aggregation's end sends every request whose
    /// total (send to end) is at least `agg_min_ns` to the ring buffer as
    /// one [`EventKind::Whole`] record, and counts no histogram.
    pub agg_whole: u32,
    pub agg_min_ns: u64,
    /// `top` (1): the aggregation counts every request and also sends
    /// every request whose total is at least the ns in the `AGG_RECORD_MIN`
    /// map (which user space changes while tracing) as one
    /// [`EventKind::Whole`] record.
    pub agg_records: u32,
    /// 1: the send keeps its sender (tgid, header pid) in the slot (`top`,
    /// `trace --min`, the `-p`/`--comm` filters).
    pub agg_sender: u32,
    /// `-c`: only sends from tasks of this cgroup v2 (its id, as
    /// `bpf_get_current_cgroup_id` gives it; 0: every task), on the event
    /// pipeline and in-kernel aggregation alike.
    pub filter_cgroup: u64,
    /// FUSE over io_uring (6.14+): 1 when every offset below was found in
    /// BTF, so the io_uring hooks can follow the ring's requests.
    pub uring_on: u32,
    /// `IORING_OP_URING_CMD` (`enum io_uring_op`).
    pub uring_cmd_opcode: u32,
    /// `offsetof(struct io_kiocb, opcode)` and `ctx`.
    pub kiocb_opcode: u32,
    pub kiocb_ctx: u32,
    /// `struct io_uring_cmd` (which sits at the start of `struct
    /// io_kiocb`): `file`, `sqe`, `cmd_op`, `pdu` (FUSE keeps its ring
    /// entry there).
    pub ucmd_file: u32,
    pub ucmd_sqe: u32,
    pub ucmd_cmd_op: u32,
    pub ucmd_pdu: u32,
    /// `struct fuse_ring_ent`: `fuse_req`, `queue`; `struct
    /// fuse_ring_queue`: `qid`.
    pub ring_ent_req: u32,
    pub ring_ent_queue: u32,
    pub ring_queue_qid: u32,
    /// Registered files, for a commit submitted with `IOSQE_FIXED_FILE`:
    /// `io_ring_ctx.file_table.data.{nr,nodes}`, `io_rsrc_node.file_ptr`.
    pub ctx_files_nr: u32,
    pub ctx_files_nodes: u32,
    pub rsrc_node_file: u32,
    /// `ring` in the struct `dev_chan` points to (`fuse_conn` up to 7.1,
    /// `fuse_chan` from 7.2), `struct fuse_ring.{ready,nr_queues}`: what
    /// `doctor` reads of each connection (read when `uring_on`).
    pub chan_ring: u32,
    pub ring_ready: u32,
    pub ring_nr_queues: u32,
    /// `offsetof(struct task_struct, tgid)` and `comm` (the `doctor`
    /// iterator, the daemon map), `pid` (the daemon map).
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_pid: u32,
    pub _pad_task: u32,
    /// The daemon side hooked in the kernel (kprobe/fentry kernels):
    /// `struct fuse_copy_state`'s `write` (byte offset and bit mask: a bit
    /// field in newer kernels, an int before) and `req`, and the argument
    /// index of the copy state in `fuse_copy_args`.
    pub cs_write_byte: u32,
    pub cs_write_mask: u32,
    pub cs_req: u32,
    /// `struct fuse_copy_state`'s `is_uring` (6.14+: byte offset and bit
    /// mask; mask 0 where absent): FUSE over io_uring copies a request's
    /// arguments into the ring through `fuse_copy_args` too, and that copy
    /// is no `/dev/fuse` take (the io_uring take is seen at its own hook).
    pub cs_uring_byte: u32,
    pub cs_uring_mask: u32,
    pub arg_copy_cs: u32,
    /// `fuse_dev_do_read(fud, file, cs, nbytes)`: the argument indexes of
    /// `fud` and `cs`, and the index of its return value in an fexit
    /// program's context (its argument count).
    pub arg_read_fud: u32,
    pub arg_read_cs: u32,
    pub arg_read_ret: u32,
    /// Offset in `struct pt_regs` of a syscall's first argument at its
    /// exit (`di` on x86_64; `orig_x0` on arm64, whose `regs[0]` holds the
    /// result by then).
    pub regs_syscall_arg0: u32,
    /// Offset in `struct pt_regs` of the syscall number (`orig_ax`,
    /// `syscallno`), and the numbers of the read(2) family (the running
    /// architecture's).
    pub regs_syscall_nr: u32,
    pub nr_read: u32,
    pub nr_pread64: u32,
    pub nr_readv: u32,
    pub nr_preadv: u32,
    pub nr_preadv2: u32,
    /// Offset in `struct pt_regs` of a syscall's result at its exit (`ax`,
    /// `regs[0]`).
    pub regs_syscall_ret: u32,
    pub _pad_regs: u32,
}

/// One `/dev/fuse` file a process holds, as the `transports` iterator
/// reports it to `doctor`: which transport the connection serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DevFuseFile {
    pub tgid: u32,
    pub fd: u32,
    /// Kernel `dev_t` of the connection.
    pub connection: u32,
    /// 1: the connection has a FUSE over io_uring ring whose every queue
    /// has a registered entry (requests go through io_uring).
    pub ring_ready: u32,
    /// Queues of the ring (0: no ring).
    pub ring_queues: u64,
    pub comm: [u8; 16],
    /// The `struct file *` (the daemon map compares it with the fd table's).
    pub file: u64,
    /// Its `private_data` and `f_op` (the daemon map compares them too).
    pub fud: u64,
    pub fops: u64,
}

/// Entries of the daemon map, an array indexed by thread group id modulo
/// its length (the syscall programs return at once for every other
/// process: an array lookup is a few inlined instructions, a hash lookup a
/// call and a hash).
pub const MAX_DAEMONS: u32 = 4096;
/// `/dev/fuse` descriptors kept per thread group (libfuse's `clone_fd`
/// opens one per worker thread); a group with more gets the full check
/// for the others.
pub const DAEMON_FDS: usize = 8;
/// How long after a mount's INIT is sent processes the daemon map does
/// not know get the full check (the new daemon reads it meanwhile).
pub const DAEMON_SEEK_NS: u64 = 10_000_000_000;

/// One `/dev/fuse` descriptor of a daemon (`file` 0: unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonFd {
    /// The `struct file *`, compared with the fd table's.
    pub file: u64,
    /// Its `private_data` (the `struct fuse_dev *`): a `struct file` freed
    /// and reused for another open at the same address and descriptor
    /// has another (see `daemons.rs` in the eBPF crate).
    pub fud: u64,
    pub fd: u32,
    /// Kernel `dev_t` of the connection.
    pub connection: u32,
}

/// The `/dev/fuse` descriptors of one thread group, used from the first:
/// one entry of the daemon map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonFiles {
    pub fds: [DaemonFd; DAEMON_FDS],
    /// The `f_op` of its `/dev/fuse` files (`fuse_dev_operations`): a
    /// reused `struct file` that is no `/dev/fuse` has another.
    pub fops: u64,
    /// The thread group (0: a free entry).
    pub tgid: u32,
    /// 1: it holds more than [`DAEMON_FDS`], or another holder's id falls
    /// on this entry too: every process that falls here gets the full
    /// check for a descriptor not listed.
    pub full: u32,
}

/// Most `--mount` filters in-kernel aggregation takes.
pub const AGG_MAX_CONNECTIONS: usize = 8;
/// Most `-p`/`--pid` filters in-kernel aggregation takes (each costs the
/// send program two compares).
pub const AGG_MAX_PIDS: usize = 8;
/// Most `--comm` filters in-kernel aggregation takes.
pub const AGG_MAX_COMMS: usize = 8;

impl KernelLayout {
    pub const fn zeroed() -> Self {
        // SAFETY: all fields are integers.
        unsafe { core::mem::zeroed() }
    }
}

/// Slots of the per-CPU `COUNTERS` array.
pub mod counters {
    /// Events lost because the ring buffer was full.
    pub const RING_DROPS: u32 = 0;
    /// Kernel or user memory a hook could not read.
    pub const READ_FAULTS: u32 = 1;
    /// splice(2) transfers on `/dev/fuse`, whose headers are not decoded.
    pub const SPLICE_TRANSFERS: u32 = 2;
    /// In-kernel aggregation: requests whose send was recorded.
    pub const AGG_STARTED: u32 = 3;
    /// In-kernel aggregation: requests whose end met their send (counted
    /// in a histogram).
    pub const AGG_ENDED: u32 = 4;
    /// In-kernel aggregation: ends of requests sent before tracing began.
    pub const AGG_UNMATCHED_ENDS: u32 = 5;
    /// In-kernel aggregation: sends not recorded because the in-flight
    /// table was full.
    pub const AGG_TABLE_FULL: u32 = 6;
    /// In-kernel aggregation: latencies not counted because the histogram
    /// map was full.
    pub const AGG_HISTOGRAM_FULL: u32 = 7;
    /// Sends whose request id was still 0 (the kernel assigns it after the
    /// send point on 6.12 to 6.17): joined by `struct fuse_req *` instead.
    pub const SENT_BEFORE_ID: u32 = 8;
    /// Daemon takes whose request was not found in the connection's
    /// processing table (joined at the request's end instead).
    pub const TAKE_UNRESOLVED: u32 = 9;
    /// In-kernel stages: requests that ended without both daemon points
    /// seen (taken before tracing began, aborted, or their take or reply
    /// not found): counted in the total only.
    pub const AGG_STAGES_MISSING: u32 = 10;
    /// In-kernel aggregation: INITs of connections the generation table
    /// had no room for (their later mounts share generation 0).
    pub const AGG_GENERATIONS_FULL: u32 = 11;
    /// io_uring COMMIT_AND_FETCH submissions on a FUSE ring whose
    /// connection could not be found (not a FUSE file, or a registered
    /// file the table walk did not resolve).
    pub const URING_UNRESOLVED: u32 = 12;
    /// Daemon map entries two `/dev/fuse` holders fell on (the kernel
    /// found the second): their processes' reads and writes get the full
    /// check, as without the map.
    pub const DAEMONS_FULL: u32 = 13;
    pub const COUNT: u32 = 14;
}

/// Requests the in-kernel aggregation can hold in flight at once: each in
/// the array slot its id selects, or in the overflow hash when that slot is
/// taken (two connections' ids meeting, or a request outliving 262 144
/// newer ones of its connection).
pub const AGG_IN_FLIGHT_BITS: u32 = 18;
pub const AGG_IN_FLIGHT: u32 = 1 << AGG_IN_FLIGHT_BITS;
/// Requests the overflow hash holds (preallocated kernel memory, ~70 bytes
/// each).
pub const AGG_OVERFLOW: u32 = 1 << 16;
/// Distinct (connection, opcode, stage, bucket, error) histogram cells
/// the overflow hash (`AGG_HISTOGRAMS`) holds, for those the table has no
/// room for (see [`CellSlot`]).
pub const AGG_CELLS: u32 = 1 << 16;
/// Slots of the histogram cells' table (`AGG_CELL_TABLE`, 2 MiB): each
/// CPU has its own power-of-two region (`KernelLayout::agg_table_bits`).
pub const AGG_TABLE_SLOTS: u32 = 1 << 16;
/// A CPU's region is never smaller than this (log2): past the CPUs that
/// leaves room for, cells go to the hash.
pub const AGG_TABLE_MIN_REGION_BITS: u32 = 6;
/// Slots a cell is looked for in, from its hash's, before the hash.
pub const AGG_TABLE_PROBES: u32 = 8;
/// Connections whose mounts the generation table numbers (see
/// [`HistogramKey::generation`]).
pub const AGG_MAX_GENERATIONS: u32 = 4096;
/// Entries of the generation array that most connections' generations
/// live in (`connection % AGG_GENERATION_SLOTS`; the hash holds those
/// whose entry another connection had): each `connection << 32 |
/// generation`, 0 free.
pub const AGG_GENERATION_SLOTS: u32 = 1024;
/// `FUSE_INIT`: the first request of every mount.
pub const FUSE_INIT: u32 = 26;

/// Which latency an in-kernel histogram cell counts.
pub mod agg_stage {
    /// From `fuse_request_send` to `fuse_request_end`.
    pub const TOTAL: u8 = 0;
    /// Sent until a daemon thread took it.
    pub const QUEUE: u8 = 1;
    /// Taken until the daemon's reply.
    pub const DAEMON: u8 = 2;
    /// Reply until the end.
    pub const COMPLETE: u8 = 3;
}

/// One cell of the in-kernel latency histograms: how many requests of this
/// opcode on this connection took a latency in `bucket` (see
/// [`latency_bucket`]), and their latencies' sum ([`CellCounts`]).
/// 16 bytes, no implicit padding (it is a hash key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistogramKey {
    pub connection: u32,
    pub opcode: u32,
    pub bucket: u16,
    /// One of [`agg_stage`].
    pub stage: u8,
    /// The reply's errno (0: success; 255: 255 or above).
    pub error: u8,
    /// Which mount of this connection number: the INITs sent on it since
    /// the probes were loaded. The kernel gives a freed number to the
    /// next mount, so without it a new mount's requests would add to the
    /// old one's cells (`fusetrace serve` retires a generation with its
    /// mount).
    pub generation: u32,
}

/// A request in flight in the in-kernel aggregation's tables: what its end
/// needs of its send, and (`stats --stages`) the daemon's points the
/// daemon-side hooks stamp in (0: not seen). Shared with user space,
/// which reads the table of them (`fusetrace serve`: requests in flight
/// and the oldest one's age).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AggSent {
    pub ts_ns: u64,
    pub taken_ns: u64,
    pub replied_ns: u64,
    pub connection: u32,
    /// The requester's process when it sent the request itself (0: sent
    /// from another context), for `trace --min`'s records and `top`.
    pub requester_tgid: u32,
    /// The request's id, opcode, node and requesting thread (the
    /// header's), so that a daemon's point finds its slot without reading
    /// the request, and `top` shows what is in flight.
    pub unique: u64,
    pub nodeid: u64,
    pub opcode: u32,
    pub header_pid: u32,
    /// The daemon thread that took it (0: not taken, or not seen).
    pub daemon_tid: u32,
    pub _pad: u32,
}

/// An `AGG_SLOTS` entry while a take moves a request into its slot:
/// claimed, not yet filled (no `struct fuse_req *` is 1).
pub const AGG_SLOT_CLAIMED: u64 = 1;

/// One slot of the histogram cells' table (`AGG_CELL_TABLE`): a cell of
/// one CPU, which alone writes it (its region of the table), so counting
/// takes no atomics, and a cell is found by a few inlined loads instead
/// of a hash map's chain of kernel calls. User space maps the table and
/// sums a key's slots over the CPUs (and the hash's cell, if any).
/// `count` 0 is a free slot: the CPU writes `key` and `sum_ns` first, then
/// `count` (an atomic exchange, which orders the stores); user space frees
/// a retired mount's slots by storing 0 into `count` alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellSlot {
    pub key: HistogramKey,
    pub count: u64,
    pub sum_ns: u64,
}

// The sizes the docs give (`AGG_CELL_TABLE` 2 MiB; `AGG_SLOT_SENT` 16 MiB,
// a cache line a request).
const _: () = assert!(core::mem::size_of::<CellSlot>() == 32);
const _: () = assert!(core::mem::size_of::<AggSent>() == 64);

/// Where a cell's search begins in its CPU's region of the table (the
/// kernel keeps the bits its region's size allows): a multiplicative hash
/// of the key's words.
#[inline(always)]
pub fn cell_table_hash(key: &HistogramKey) -> u32 {
    let a = (u64::from(key.connection) << 32) | u64::from(key.opcode);
    let b = (u64::from(key.bucket) << 48)
        | (u64::from(key.stage) << 40)
        | (u64::from(key.error) << 32)
        | u64::from(key.generation);
    ((a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// What a histogram cell holds, per CPU: requests counted and the sum of
/// their latencies (ns), so that a histogram's `_sum` is exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellCounts {
    pub count: u64,
    pub sum_ns: u64,
}

/// Sub-buckets per power of two: latencies are counted to 1/16 of their
/// magnitude (6.25%), like an HDR histogram with about 1.2 significant digits.
const SUB_BUCKETS: u64 = 16;

/// Log-linear bucket of a latency in ns: exact below 16 ns, then 16 buckets
/// per power of two. Branches only, no loops, so the eBPF verifier takes it.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> u16 {
    if ns < SUB_BUCKETS {
        return ns as u16;
    }
    let mut log2 = 0u64;
    let mut x = ns;
    if x >> 32 != 0 {
        x >>= 32;
        log2 += 32;
    }
    if x >> 16 != 0 {
        x >>= 16;
        log2 += 16;
    }
    if x >> 8 != 0 {
        x >>= 8;
        log2 += 8;
    }
    if x >> 4 != 0 {
        x >>= 4;
        log2 += 4;
    }
    if x >> 2 != 0 {
        x >>= 2;
        log2 += 2;
    }
    if x >> 1 != 0 {
        log2 += 1;
    }
    // log2 >= 4 here; the top five bits of ns, less the leading one.
    let sub = (ns >> (log2 - 4)) & (SUB_BUCKETS - 1);
    (SUB_BUCKETS + (log2 - 4) * SUB_BUCKETS + sub) as u16
}

/// The latencies (ns) bucket `b` holds: `low..=high`.
pub fn bucket_bounds(b: u16) -> (u64, u64) {
    let b = b as u64;
    if b < SUB_BUCKETS {
        return (b, b);
    }
    let log2 = (b - SUB_BUCKETS) / SUB_BUCKETS + 4;
    let sub = (b - SUB_BUCKETS) % SUB_BUCKETS;
    let width = 1u64 << (log2 - 4);
    let low = (SUB_BUCKETS + sub) << (log2 - 4);
    (low, low.saturating_add(width - 1))
}

/// Ring buffer size in bytes (a power of two, a multiple of the page size).
/// 4 MiB holds ~37 000 events: 185 ms at 200 000 events/s, against a
/// consumer that drains every 5 ms. User space maps the data twice, so
/// every MiB here is two of the tracer's RSS once written.
pub const RING_BYTES: u32 = 1 << 22;

/// `FUSE_PQ_HASH_BITS` (fs/fuse/fuse_i.h, 8 since 4.20): the size of the
/// hash table a connection keeps the requests its daemon has taken in. A
/// macro, so not in BTF; used only on kernels whose send point fires before
/// the request id is assigned, and a miss is counted (`TAKE_UNRESOLVED`).
pub const FUSE_PQ_HASH_BITS: u32 = 8;

/// `FUSE_INT_REQ_BIT`: an INTERRUPT carries its target's id with this bit
/// set (ids step by two).
pub const FUSE_INT_REQ_BIT: u64 = 1;

/// The kernel's `fuse_req_hash(unique)`: `hash_long(unique &
/// ~FUSE_INT_REQ_BIT, FUSE_PQ_HASH_BITS)`, i.e. `hash_64` on 64-bit kernels.
#[inline(always)]
pub fn fuse_req_hash(unique: u64) -> u64 {
    const GOLDEN_RATIO_64: u64 = 0x61C8_8646_80B5_83EB;
    (unique & !FUSE_INT_REQ_BIT).wrapping_mul(GOLDEN_RATIO_64) >> (64 - FUSE_PQ_HASH_BITS)
}

/// Smallest buffer a FUSE daemon may read requests into (`FUSE_MIN_READ_BUFFER`).
pub const FUSE_MIN_READ_BUFFER: u64 = 8192;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::FuseEvent {}
    unsafe impl aya::Pod for super::HistogramKey {}
    unsafe impl aya::Pod for super::CellCounts {}
    unsafe impl aya::Pod for super::AggSent {}
    unsafe impl aya::Pod for super::DaemonFiles {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn every_latency_falls_inside_its_bucket() {
        let mut samples = vec![0u64, 1, 15, 16, 17, 31, 32, 33, 1000, 123_456_789, u64::MAX];
        for shift in 0..64 {
            let p = 1u64 << shift;
            samples.extend([p - 1, p, p + 1, p + p / 3]);
        }
        for ns in samples {
            let (low, high) = bucket_bounds(latency_bucket(ns));
            assert!(low <= ns && ns <= high, "{ns} outside {low}..={high}");
        }
    }

    #[test]
    fn buckets_are_contiguous_and_fine() {
        let last = latency_bucket(u64::MAX);
        let mut next = 0;
        for b in 0..=last {
            let (low, high) = bucket_bounds(b);
            assert_eq!(low, next, "gap before bucket {b}");
            assert!(
                high - low <= low / 16,
                "bucket {b} wider than 1/16 of its start"
            );
            next = high.wrapping_add(1);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
    }
}
