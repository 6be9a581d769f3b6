//! Finding FUSE's kernel objects and the connection they belong to: a
//! `struct fuse_req *`'s id and connection, the `struct file *` behind a
//! descriptor of the current task, and whether it is `/dev/fuse` (and
//! then its connection's dev_t, the number every event names its mount by).

use aya_ebpf::helpers::bpf_get_current_task_btf;
use fusetrace_common::{FuseInHeader, KernelLayout, NO_HOP};

use crate::memory::{kread, layout_field, load};

/// `offsetof(struct fuse_in_header, unique)`: user ABI.
pub(crate) const UNIQUE_IN_HEADER: u32 = core::mem::offset_of!(FuseInHeader, unique) as u32;

/// The request's id (0 while the kernel has not assigned it).
#[inline(always)]
pub(crate) fn unique_of<const DIRECT: bool>(req: u64) -> u64 {
    load::<u64, DIRECT>(req, layout_field!(req_in_h) + UNIQUE_IN_HEADER).unwrap_or(0)
}

#[inline(always)]
pub(crate) fn connection_of<const DIRECT: bool>(req: u64) -> Option<u32> {
    let chan: u64 = load::<_, DIRECT>(req, layout_field!(req_chan))?;
    let fc: u64 = load::<_, DIRECT>(chan, layout_field!(chan_conn))?;
    load::<_, DIRECT>(fc, layout_field!(conn_dev))
}

/// If `fd` of the current task is a `/dev/fuse` file, the connection's dev_t.
#[inline(always)]
pub(crate) fn fuse_fd_connection(fd: u64, l: &KernelLayout) -> Option<u32> {
    dev_fuse_connection(fd_file(fd, l)?, l)
}

/// The `struct file *` behind `fd` in the current task's fd table.
#[inline(always)]
pub(crate) fn fd_file(fd: u64, l: &KernelLayout) -> Option<u64> {
    fd_file_of(unsafe { bpf_get_current_task_btf() } as u64, fd, l)
}

/// The `struct file *` behind `fd` in the fd table of `task` (the current
/// task, as `bpf_get_current_task_btf` gave it).
#[inline(always)]
pub(crate) fn fd_file_of(task: u64, fd: u64, l: &KernelLayout) -> Option<u64> {
    // Typed pointers down to the fd array: plain loads the verifier checks
    // against BTF (offsets it knows from read-only data). The array's slot
    // is at a variable index, which only a helper may read.
    // SAFETY: a fault reads as zero; every pointer is checked before use.
    let direct = |base: u64, off: u32| -> u64 {
        unsafe { core::ptr::read_volatile((base + off as u64) as *const u64) }
    };
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
pub(crate) fn dev_fuse_connection(file: u64, l: &KernelLayout) -> Option<u32> {
    dev_fuse_open(file, l).map(|(connection, _)| connection)
}

/// If `file` is `/dev/fuse`, its connection's dev_t and its `struct
/// fuse_dev *` (`private_data`, which the daemon map keeps).
#[inline(always)]
pub(crate) fn dev_fuse_open(file: u64, l: &KernelLayout) -> Option<(u32, u64)> {
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
    Some((fud_connection(fud, l)?, fud))
}

/// The connection's dev_t of a `struct fuse_dev *` (through its channel
/// where the kernel has one: `KernelLayout::dev_chan`).
#[inline(always)]
pub(crate) fn fud_connection(fud: u64, l: &KernelLayout) -> Option<u32> {
    let chan: u64 = kread(fud, l.dev_chan)?;
    let fc: u64 = if l.dev_chan_conn == NO_HOP {
        chan
    } else {
        kread(chan, l.dev_chan_conn)?
    };
    kread(fc, l.conn_dev)
}
